//! Whether the store can be written, and how full it is: the write fault the writer reports, the size estimate kept from what each commit adds, and the free space of the filesystem.
//!
//! **Architecture Invariant:** ingest is admitted here and nowhere else. A storage fault (the disk
//! is full, a write or fsync failed) makes every change fail fast until the writer has reopened the
//! database; the size limit and the free-space floor only refuse new work (ingest), never settles,
//! so that deliveries, retries and dead letters go on in the headroom left for them.

use super::{SledError, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// sled's on-disk bytes per logical byte written (key + value + [`RECORD_OVERHEAD`]), rounded up
/// from what a real store measured (see ARCHITECTURE.md, "Storage limits"): sled logs each write as
/// a page fragment and rewrites whole pages when it consolidates them and when it cleans segments.
pub const DISK_RATIO: u64 = 3;
/// Bytes of sled's own framing counted per record written, on top of its key and value.
pub const RECORD_OVERHEAD: u64 = 32;
/// Ingest is refused when the filesystem has less than this free (estimated between measures):
/// sled writes in segments and needs free ones to go on logging settles and to clean.
pub const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;
/// The part of `storage.max_bytes` kept for deliveries, settles and dead letters: ingest stops at
/// `max_bytes - headroom`, with a headroom of a quarter of the limit and at least this.
pub const MIN_HEADROOM_BYTES: u64 = 8 * 1024 * 1024;

/// What is wrong with writing, as the API and `/healthz` tell it.
pub use crate::store::Fault;

/// Shared by the writer (which sets and clears the fault), the scheduler (which pauses while it is
/// set) and the API (which refuses ingest).
#[derive(Default)]
pub struct StoreHealth {
    /// 0: writable; 1: [`Fault::Full`]; 2: [`Fault::Unavailable`].
    fault: AtomicU8,
    /// The failure as a person should read it (no payloads: an I/O error's text).
    detail: Mutex<String>,
    /// Size of the store when last measured.
    measured_bytes: AtomicU64,
    /// Free bytes of the filesystem when last measured (`u64::MAX`: unknown).
    measured_free: AtomicU64,
    /// Logical bytes committed since the measure before the last one (see [`StoreHealth::measure`]).
    added_before: AtomicU64,
    /// Logical bytes committed since the last measure.
    added_since: AtomicU64,
}

impl StoreHealth {
    pub fn new() -> StoreHealth {
        StoreHealth {
            measured_free: AtomicU64::new(u64::MAX),
            ..StoreHealth::default()
        }
    }

    /// The current write fault, if any.
    pub fn fault(&self) -> Option<Fault> {
        match self.fault.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Fault::Full),
            _ => Some(Fault::Unavailable),
        }
    }

    /// The fault and what caused it.
    pub fn fault_detail(&self) -> Option<(Fault, String)> {
        let fault = self.fault()?;
        let detail = self.detail.lock().expect("health lock is never poisoned");
        Some((fault, detail.clone()))
    }

    /// The error every change gets while the fault lasts.
    pub fn fault_error(&self) -> Option<StoreError> {
        self.fault_detail().map(|(fault, detail)| match fault {
            Fault::Full => StoreError::Full(detail),
            Fault::Unavailable => StoreError::Unavailable(detail),
        })
    }

    pub(super) fn set_fault(&self, fault: Fault, detail: String) {
        *self.detail.lock().expect("health lock is never poisoned") = detail;
        let code = match fault {
            Fault::Full => 1,
            Fault::Unavailable => 2,
        };
        self.fault.store(code, Ordering::Release);
    }

    pub(super) fn clear_fault(&self) {
        self.fault.store(0, Ordering::Release);
    }

    /// Notes what a commit wrote (logical bytes).
    pub(super) fn add(&self, bytes: u64) {
        self.added_since.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records a fresh measure of the store's size and of the free space.
    ///
    /// What was committed during the last two periods stays counted on top of the measure: sled
    /// writes its log behind the commits (up to its flush interval), so part of it may not be in
    /// the file yet. That over-counts a little, never under.
    pub(super) fn measure(&self, bytes: u64, free: Option<u64>) {
        self.measured_bytes.store(bytes, Ordering::Relaxed);
        self.measured_free
            .store(free.unwrap_or(u64::MAX), Ordering::Relaxed);
        let recent = self.added_since.swap(0, Ordering::Relaxed);
        self.added_before.store(recent, Ordering::Relaxed);
    }

    /// On-disk bytes the recent commits are expected to take.
    fn recent_disk_bytes(&self) -> u64 {
        let logical =
            self.added_before.load(Ordering::Relaxed) + self.added_since.load(Ordering::Relaxed);
        logical.saturating_mul(DISK_RATIO)
    }

    /// The store's size: the last measure plus what commits added since, on disk.
    pub fn estimated_bytes(&self) -> u64 {
        self.measured_bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.recent_disk_bytes())
    }

    /// The filesystem's free space, less what commits added since it was measured; `None` if unknown.
    pub fn estimated_free(&self) -> Option<u64> {
        match self.measured_free.load(Ordering::Relaxed) {
            u64::MAX => None,
            free => Some(free.saturating_sub(self.recent_disk_bytes())),
        }
    }

    /// Whether new events may be stored now, given `storage.max_bytes` (0: no limit).
    pub fn admit_ingest(&self, max_bytes: u64) -> Result<(), StoreError> {
        if let Some(e) = self.fault_error() {
            return Err(e);
        }
        if max_bytes > 0 {
            let size = self.estimated_bytes();
            let limit = ingest_limit(max_bytes);
            if size >= limit {
                return Err(StoreError::Full(format!(
                    "the store is at {size} bytes, past the {limit} bytes at which storage.max_bytes ({max_bytes}) stops ingest"
                )));
            }
        }
        if let Some(free) = self.estimated_free() {
            if free < MIN_FREE_BYTES {
                return Err(StoreError::Full(format!(
                    "the filesystem holding the store has {free} bytes free, under the {MIN_FREE_BYTES} kept for deliveries"
                )));
            }
        }
        Ok(())
    }
}

/// The estimated size at which ingest stops under `storage.max_bytes`: the limit less its headroom.
pub fn ingest_limit(max_bytes: u64) -> u64 {
    let headroom = (max_bytes / 4).max(MIN_HEADROOM_BYTES);
    max_bytes.saturating_sub(headroom)
}

/// What kind of fault a failed write or sync is, if it is one (a record that does not decode is not).
pub fn classify(e: &StoreError) -> Option<Fault> {
    let io = match e {
        StoreError::Full(_) => return Some(Fault::Full),
        StoreError::Unavailable(_) => return Some(Fault::Unavailable),
        StoreError::Io(io) => io,
        StoreError::Sled(SledError(sled::Error::Io(io))) => io,
        StoreError::Sled(SledError(
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_),
        )) => return Some(Fault::Unavailable),
        StoreError::Sled(_)
        | StoreError::Fenced
        | StoreError::Corrupt(_)
        | StoreError::Closed
        | StoreError::MasterKey(_)
        | StoreError::Damaged { .. }
        | StoreError::SchemaTooNew(_)
        | StoreError::Tls(_)
        | StoreError::Database(_) => return None,
    };
    Some(if is_no_space(io) {
        Fault::Full
    } else {
        Fault::Unavailable
    })
}

/// ENOSPC or EDQUOT. sled passes I/O errors on as new errors of the same kind with the original in
/// their text, so the text is looked at too.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
        || {
            let text = e.to_string();
            text.contains("No space left") || text.contains("os error 28")
        }
}

/// Free bytes for unprivileged use on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    fs2::available_space(dir).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_limit_keeps_a_quarter_and_at_least_8_mib() {
        assert_eq!(ingest_limit(16 << 20), 8 << 20);
        assert_eq!(ingest_limit(1 << 30), 768 << 20);
        assert_eq!(ingest_limit(4 << 20), 0);
    }

    #[test]
    fn estimate_counts_recent_commits_on_top_of_the_measure() {
        let h = StoreHealth::new();
        h.measure(1000, Some(100 << 20));
        h.add(10);
        assert_eq!(h.estimated_bytes(), 1000 + 10 * DISK_RATIO);
        h.measure(2000, Some(100 << 20));
        h.add(5);
        // The previous period is still counted (it may not be in the file yet).
        assert_eq!(h.estimated_bytes(), 2000 + 15 * DISK_RATIO);
        h.measure(3000, None);
        assert_eq!(h.estimated_bytes(), 3000 + 5 * DISK_RATIO);
        assert_eq!(h.estimated_free(), None);
    }

    #[test]
    fn admission_refuses_past_the_limit_low_space_and_faults() {
        let h = StoreHealth::new();
        h.measure(0, Some(1 << 30));
        assert!(h.admit_ingest(32 << 20).is_ok());
        h.add((24 << 20) / DISK_RATIO + 1);
        assert!(matches!(h.admit_ingest(32 << 20), Err(StoreError::Full(_))));
        assert!(h.admit_ingest(0).is_ok());
        h.measure(0, Some(MIN_FREE_BYTES - 1));
        h.measure(0, Some(MIN_FREE_BYTES - 1));
        assert!(matches!(h.admit_ingest(0), Err(StoreError::Full(_))));
        h.measure(0, Some(1 << 30));
        h.set_fault(Fault::Unavailable, "fsync failed".into());
        assert!(matches!(h.admit_ingest(0), Err(StoreError::Unavailable(_))));
        h.clear_fault();
        assert!(h.admit_ingest(0).is_ok());
    }

    #[test]
    fn no_space_is_recognised_through_sleds_copies() {
        let raw = std::io::Error::from_raw_os_error(28);
        assert!(is_no_space(&raw));
        let copied = std::io::Error::new(raw.kind(), format!("{raw:?}"));
        assert!(is_no_space(&copied));
        let e = StoreError::Sled(SledError(sled::Error::Io(copied)));
        assert_eq!(classify(&e), Some(Fault::Full));
        let eio = StoreError::Io(std::io::Error::from_raw_os_error(5));
        assert_eq!(classify(&eio), Some(Fault::Unavailable));
        assert_eq!(classify(&StoreError::Corrupt("x".into())), None);
    }
}
