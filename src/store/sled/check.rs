//! `preflix-webhookd check`: reads a stopped store through and says what is missing or unreadable.
//!
//! Opening the store (what `serve` does) compares only the watermark's figures with `meta`, which
//! costs nothing however large the store. `check` also reads and decodes every record of every
//! tree and counts the events, so it finds records lost or damaged in the middle of the data file
//! too. It writes nothing of its own (sled may tidy its log when opened).

use super::codec::{self, Record};
use super::watermark::{self, Mark};
use super::{open_db, panic_text, StoreError, COMMITS_KEY, SCHEMA_VERSION, STORED_EVENTS_KEY};
use crate::model::{DeadLetter, Delivery, EndpointHealth, Event, EventIdRecord};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub dir: PathBuf,
    /// What is missing or unreadable; empty when the store is healthy.
    pub problems: Vec<String>,
    /// What was found, for the operator (counts, watermark, damage mark).
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How many unreadable records of one tree are named before the rest are only counted.
const NAMED_ERRORS: usize = 3;

/// How long the check waits for sled to read one more record before declaring the store damaged:
/// on some damaged logs sled's tree traversal loops for ever.
const STALL: std::time::Duration = std::time::Duration::from_secs(20);

/// How far a check got, watched by [`check`] from outside the thread that reads.
#[derive(Default)]
struct Progress {
    records: AtomicU64,
    step: Mutex<String>,
}

impl Progress {
    fn step(&self, step: impl Into<String>) {
        *self.step.lock().expect("progress lock is never poisoned") = step.into();
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    fn tick(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks the stopped store in `dir`. `Err` only when it could not be checked at all (no store
/// there, or another process holds it).
///
/// The reading runs on its own thread: when sled stops making progress (it can loop for ever on a
/// damaged log) for [`STALL`], the store is reported damaged and that thread is left behind (the
/// caller is a command that exits).
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let progress = Arc::new(Progress::default());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (dir, progress) = (dir.to_path_buf(), progress.clone());
        std::thread::Builder::new()
            .name("store-check".into())
            .spawn(move || {
                let _ = tx.send(check_here(&dir, &progress));
            })?;
    }
    let mut seen = 0;
    let mut since = std::time::Instant::now();
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(250)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StoreError::Corrupt(
                    "the check stopped without a result".into(),
                ))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = progress.records.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= STALL {
            let step = progress
                .step
                .lock()
                .expect("progress lock is never poisoned")
                .clone();
            return Ok(CheckReport {
                dir: dir.to_path_buf(),
                problems: vec![format!(
                    "sled made no progress for {} s while {step}: its data file is damaged",
                    STALL.as_secs()
                )],
                notes: Vec::new(),
            });
        }
    }
}

fn check_here(dir: &Path, progress: &Progress) -> Result<CheckReport, StoreError> {
    let db_path = dir.join("db");
    let kept = watermark::read(dir);
    if !db_path.exists() && matches!(kept, Ok(None)) {
        return Err(StoreError::Corrupt(format!(
            "{} holds no store",
            dir.display()
        )));
    }
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        ..CheckReport::default()
    };
    let db_len = std::fs::metadata(&db_path).map_or(0, |m| m.len());
    if !db_path.exists() {
        report
            .problems
            .push(format!("sled's data file {} is gone", db_path.display()));
    }
    progress.step("opening the store");
    let opened = std::panic::catch_unwind(|| open_db(dir, 16 * 1024 * 1024));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) if !e.is_data_error() && !matches!(e, StoreError::Sled(_)) => return Err(e),
        Ok(Err(e)) => {
            report
                .problems
                .push(format!("sled cannot open the data file: {e}"));
            return Ok(report);
        }
        Err(panic) => {
            report.problems.push(format!(
                "sled fails reading the data file: {}",
                panic_text(&*panic)
            ));
            return Ok(report);
        }
    };
    let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scan(&db, db_len, &kept, &mut report, progress)
    }));
    match scanned {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report
            .problems
            .push(format!("reading the store failed: {e}")),
        Err(panic) => report.problems.push(format!(
            "sled fails reading a record: {}",
            panic_text(&*panic)
        )),
    }
    match watermark::read_damage_mark(dir) {
        Ok(Some(mark)) => report.notes.push(format!(
            "started damaged with --accept-data-loss since {}: {} (clear with `check --clear-damage-mark`)",
            mark.since, mark.detail
        )),
        Ok(None) => {}
        Err(e) => report.problems.push(e.to_string()),
    }
    Ok(report)
}

fn scan(
    db: &sled::Db,
    db_len: u64,
    kept: &Result<Option<Mark>, StoreError>,
    report: &mut CheckReport,
    progress: &Progress,
) -> Result<(), StoreError> {
    progress.step("reading `meta`");
    let meta = db.open_tree("meta")?;
    let read_meta = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta.get(key)?.map(|v| codec::read_u64(&v)))
    };
    match read_meta("schema")? {
        None if db_len > 0 => report.problems.push(format!(
            "sled's data file is {db_len} bytes but holds no schema record (erased or overwritten)"
        )),
        None => report.problems.push("the store is empty".into()),
        Some(SCHEMA_VERSION) | Some(1) => {}
        Some(v) => report.problems.push(format!(
            "schema version {v}: this daemon reads version {SCHEMA_VERSION}"
        )),
    }
    let stored_events = read_meta(STORED_EVENTS_KEY)?;
    let mark = Mark {
        commits: read_meta(COMMITS_KEY)?.unwrap_or(0),
        next_id: read_meta("next_id")?.unwrap_or(0),
        events: stored_events.unwrap_or(0),
    };
    match kept {
        Ok(Some(kept)) => {
            report.notes.push(format!(
                "watermark: {} commits, ids up to {}, {} events; store: {} commits, ids up to {}, {} events",
                kept.commits, kept.next_id, kept.events, mark.commits, mark.next_id, mark.events
            ));
            report.problems.extend(mark.missing_against(kept));
        }
        Ok(None) => report.notes.push(
            "no watermark (a store from an older version, or never started by this one): only the records themselves can be checked".into(),
        ),
        Err(e) => report.problems.push(e.to_string()),
    }
    let events = read_tree::<Event>(db, "events", report, progress)?;
    let ids = read_tree::<EventIdRecord>(db, "event_ids", report, progress)?;
    read_tree::<codec::EndpointRecord>(db, "endpoints", report, progress)?;
    read_tree::<EndpointHealth>(db, "health", report, progress)?;
    read_tree::<Delivery>(db, "deliveries", report, progress)?;
    read_tree::<DeadLetter>(db, "dead_letters", report, progress)?;
    let queue = count_keys(db, "queue", report, progress)?;
    report.notes.push(format!(
        "{events} events, {ids} event ids, {queue} queue entries readable"
    ));
    if let Some(stored) = stored_events {
        if stored != events {
            report.problems.push(format!(
                "the store counts {stored} stored events but {events} are readable"
            ));
        }
    }
    if ids != events {
        report.problems.push(format!(
            "{events} events but {ids} event id records: idempotency cannot be trusted"
        ));
    }
    Ok(())
}

/// Reads and decodes every record of a tree; returns how many were readable.
fn read_tree<T: Record>(
    db: &sled::Db,
    name: &str,
    report: &mut CheckReport,
    progress: &Progress,
) -> Result<u64, StoreError> {
    progress.step(format!("reading `{name}`"));
    let tree = db.open_tree(name)?;
    let (mut good, mut bad) = (0u64, 0usize);
    let mut last: Option<sled::IVec> = None;
    for item in tree.iter() {
        progress.tick();
        let problem = match item {
            // A damaged tree can send sled's iterator round in circles.
            Ok((key, _)) if last.as_ref().is_some_and(|l| *l >= key) => {
                report.problems.push(format!(
                    "`{name}` is damaged: its records come out of order after {good}"
                ));
                break;
            }
            Ok((key, value)) => match T::decode(&value) {
                Ok(_) => {
                    good += 1;
                    last = Some(key);
                    continue;
                }
                Err(e) => {
                    last = Some(key);
                    e.to_string()
                }
            },
            Err(e) => {
                // sled's iterator does not move past a read error.
                report
                    .problems
                    .push(format!("`{name}` is unreadable after {good} records: {e}"));
                break;
            }
        };
        bad += 1;
        if bad <= NAMED_ERRORS {
            report
                .problems
                .push(format!("an unreadable record in `{name}`: {problem}"));
        }
    }
    if bad > NAMED_ERRORS {
        report
            .problems
            .push(format!("{bad} unreadable records in `{name}` in all"));
    }
    Ok(good)
}

fn count_keys(
    db: &sled::Db,
    name: &str,
    report: &mut CheckReport,
    progress: &Progress,
) -> Result<u64, StoreError> {
    progress.step(format!("reading `{name}`"));
    let mut good = 0u64;
    let mut last: Option<sled::IVec> = None;
    for item in db.open_tree(name)?.iter().keys() {
        progress.tick();
        match item {
            Ok(key) if last.as_ref().is_some_and(|l| *l >= key) => {
                report.problems.push(format!(
                    "`{name}` is damaged: its keys come out of order after {good}"
                ));
                break;
            }
            Ok(key) => {
                good += 1;
                last = Some(key);
            }
            Err(e) => {
                report
                    .problems
                    .push(format!("an unreadable key in `{name}`: {e}"));
                break;
            }
        }
    }
    Ok(good)
}
