//! The watermark: what the store held at its last durable commit, kept outside sled's files and checked at every open.
//!
//! sled recovers the longest valid prefix of its log and cannot know what came after it, so a
//! damaged data file (truncated, zeroed, a flipped byte) opens as an older, smaller store. The
//! watermark file remembers, for the last commit the syncer made durable, three figures that the
//! store keeps in `meta` inside every transaction: the number of committed groups (`commits`,
//! grows on every commit), the id counter (`next_id`, grows on every new event, delivery, endpoint
//! or dead letter) and how many events are stored (`events`, kept right across retention purges).
//! The syncer writes it after `fdatasync` of sled's files and before answering, so a durable answer
//! implies the watermark covers that commit, and the watermark is never ahead of what sled has on
//! stable storage. At open the store's figures must be at least the watermark's.
//!
//! The file `watermark` holds two slots of [`SLOT`] bytes, each with a magic, the figures and a
//! SHA-256 checksum; writes alternate between the slots and the newest valid one counts, so a torn
//! write leaves the previous mark readable.
//!
//! Next to it, `damaged.json` records that the operator started a damaged store with
//! `--accept-data-loss` (since when, what was missing); `/status` shows it until
//! `preflix-webhookd check --clear-damage-mark` removes it.

use super::StoreError;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The watermark's file name inside the store directory.
pub const FILE: &str = "watermark";
/// The damage mark's file name inside the store directory.
pub const DAMAGE_FILE: &str = "damaged.json";
/// Bytes per slot.
const SLOT: usize = 64;
const MAGIC: &[u8; 4] = b"PXWM";
const VERSION: u8 = 1;

/// The store's figures that only grow (`commits`, `next_id`) or are kept exact (`events`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Groups committed since the store was created (or since this was first kept).
    pub commits: u64,
    /// The last id number handed out.
    pub next_id: u64,
    /// Events stored.
    pub events: u64,
}

impl Mark {
    fn encode(&self) -> [u8; SLOT] {
        let mut slot = [0u8; SLOT];
        slot[..4].copy_from_slice(MAGIC);
        slot[4] = VERSION;
        slot[8..16].copy_from_slice(&self.commits.to_be_bytes());
        slot[16..24].copy_from_slice(&self.next_id.to_be_bytes());
        slot[24..32].copy_from_slice(&self.events.to_be_bytes());
        let sum = Sha256::digest(&slot[..32]);
        slot[32..48].copy_from_slice(&sum[..16]);
        slot
    }

    fn decode(slot: &[u8]) -> Option<Mark> {
        if slot.len() < 48 || &slot[..4] != MAGIC || slot[4] != VERSION {
            return None;
        }
        if Sha256::digest(&slot[..32])[..16] != slot[32..48] {
            return None;
        }
        let n = |at: usize| u64::from_be_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
        Some(Mark {
            commits: n(8),
            next_id: n(16),
            events: n(24),
        })
    }

    /// What the store (`self`) lacks compared with the watermark `mark`, one sentence each; empty
    /// when the store is at or past it.
    pub fn missing_against(&self, mark: &Mark) -> Vec<String> {
        let mut missing = Vec::new();
        if self.commits < mark.commits {
            missing.push(format!(
                "the last {} of {} durable commits are missing",
                mark.commits - self.commits,
                mark.commits
            ));
        }
        if self.next_id < mark.next_id {
            missing.push(format!(
                "ids {} to {} were handed out (events, deliveries, endpoints, dead letters) but the store's counter is at {}",
                self.next_id + 1,
                mark.next_id,
                self.next_id
            ));
        }
        if self.commits == mark.commits && self.events != mark.events {
            missing.push(format!(
                "it counts {} stored events where {} were stored at its last durable commit",
                self.events, mark.events
            ));
        } else if !missing.is_empty() && self.events < mark.events {
            missing.push(format!(
                "it counts {} stored events; {} were stored at the last durable commit (retention may have removed some since)",
                self.events, mark.events
            ));
        }
        missing
    }
}

/// Reads the newest valid mark. `Ok(None)`: no watermark file. A file with no valid slot is an error.
pub fn read(dir: &Path) -> Result<Option<Mark>, StoreError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let newest = bytes
        .chunks(SLOT)
        .take(2)
        .filter_map(Mark::decode)
        .max_by_key(|m| m.commits);
    match newest {
        Some(mark) => Ok(Some(mark)),
        None => Err(StoreError::Corrupt(format!(
            "{} is unreadable ({} bytes, no valid slot)",
            path.display(),
            bytes.len()
        ))),
    }
}

/// The open watermark file, written by the syncer after each durable commit.
pub struct Watermark {
    file: File,
    path: PathBuf,
    /// The slot the next write goes to: never the one holding the newest mark.
    next_slot: u64,
    last: Mark,
}

impl Watermark {
    /// Writes `mark` to both slots of a new (or replaced) watermark file and makes it durable,
    /// directory entry included.
    pub fn create(dir: &Path, mark: Mark) -> Result<Watermark, StoreError> {
        let path = dir.join(FILE);
        let tmp = dir.join("watermark.new");
        {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let slot = mark.encode();
            file.write_all_at(&slot, 0)?;
            file.write_all_at(&slot, SLOT as u64)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Self::open(dir, mark)
    }

    /// Opens the existing file for writing; `current` is the newest mark it holds.
    pub fn open(dir: &Path, current: Mark) -> Result<Watermark, StoreError> {
        let path = dir.join(FILE);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        // Write first to the slot that does not hold the newest mark.
        let bytes = std::fs::read(&path)?;
        let newest = (0..2)
            .filter_map(|i| {
                let mark = Mark::decode(bytes.get(i * SLOT..(i + 1) * SLOT)?)?;
                Some((i, mark))
            })
            .max_by_key(|(_, m)| m.commits)
            .map(|(i, _)| i);
        Ok(Watermark {
            file,
            path,
            next_slot: if newest == Some(0) { 1 } else { 0 },
            last: current,
        })
    }

    /// Records `mark` durably (one `pwrite` and one `fdatasync`); a mark no newer than the last is skipped.
    pub fn write(&mut self, mark: Mark) -> std::io::Result<()> {
        if mark == self.last {
            return Ok(());
        }
        self.file
            .write_all_at(&mark.encode(), self.next_slot * SLOT as u64)?;
        self.file.sync_data()?;
        self.next_slot = 1 - self.next_slot;
        self.last = mark;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The operator's acceptance of a damaged store, shown in `/status` until removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DamageMark {
    /// When the daemon was started with `--accept-data-loss` on the damaged store (RFC 3339).
    pub since: String,
    /// What was missing.
    pub detail: String,
}

/// The damage mark, if the store carries one.
pub fn read_damage_mark(dir: &Path) -> Result<Option<DamageMark>, StoreError> {
    let path = dir.join(DAMAGE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{} is unreadable: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records (durably) that the store was started damaged. An earlier mark keeps its `since`; the
/// details are joined.
pub fn write_damage_mark(dir: &Path, mark: &DamageMark) -> Result<DamageMark, StoreError> {
    let mark = match read_damage_mark(dir).ok().flatten() {
        Some(old) => DamageMark {
            since: old.since,
            detail: format!("{}; then, at {}: {}", old.detail, mark.since, mark.detail),
        },
        None => mark.clone(),
    };
    let tmp = dir.join("damaged.json.new");
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(
            &mut file,
            &serde_json::to_vec_pretty(&mark).expect("a damage mark serializes"),
        )?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(DAMAGE_FILE))?;
    File::open(dir)?.sync_all()?;
    Ok(mark)
}

/// Removes the damage mark; true if there was one.
pub fn clear_damage_mark(dir: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(dir.join(DAMAGE_FILE)) {
        Ok(()) => {
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_counts_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = |commits| Mark {
            commits,
            next_id: commits * 3,
            events: commits,
        };
        let mut wm = Watermark::create(dir.path(), m(1)).unwrap();
        for c in 2..=5 {
            wm.write(m(c)).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(m(c)));
        }
        // Tear the slot written last (commits 5): the previous mark remains.
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        let last_slot = (0..2)
            .find(|i| Mark::decode(&bytes[i * SLOT..(i + 1) * SLOT]) == Some(m(5)))
            .unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all_at(&[0xff; 7], (last_slot * SLOT + 10) as u64)
            .unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m(4)));
        // Reopened, the next write does not overwrite the surviving mark.
        let mut wm = Watermark::open(dir.path(), m(4)).unwrap();
        wm.write(m(6)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m(6)));
        f.write_all_at(&[0; 64], 0).unwrap();
        f.write_all_at(&[0; 64], 64).unwrap();
        assert!(read(dir.path()).is_err(), "no valid slot is an error");
    }

    #[test]
    fn missing_names_what_the_store_lacks() {
        let mark = Mark {
            commits: 10,
            next_id: 100,
            events: 50,
        };
        assert!(mark.missing_against(&mark).is_empty());
        let ahead = Mark {
            commits: 11,
            next_id: 101,
            events: 40,
        };
        assert!(
            ahead.missing_against(&mark).is_empty(),
            "a purge after the mark is fine"
        );
        let behind = Mark {
            commits: 6,
            next_id: 61,
            events: 30,
        };
        let missing = behind.missing_against(&mark).join("; ");
        assert!(missing.contains("last 4 of 10"), "{missing}");
        assert!(missing.contains("ids 62 to 100"), "{missing}");
        assert!(missing.contains("30 stored events"), "{missing}");
        let same_commit = Mark { events: 49, ..mark };
        assert_eq!(same_commit.missing_against(&mark).len(), 1);
    }
}
