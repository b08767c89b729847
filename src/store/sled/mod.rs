//! The sled backend: the only module that imports sled. Trees, reads, claims, and the single writer that commits in groups.
//!
//! Trees (keys are big-endian numbers so they sort):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `events` | event seq | [`Event`] |
//! | `event_ids` | event id text | [`EventIdRecord`] (idempotency) |
//! | `endpoints` | endpoint num | [`codec::EndpointRecord`]: the [`Endpoint`], its secrets sealed with the master key when one is given ([`sealing`]) |
//! | `health` | endpoint num | [`EndpointHealth`] |
//! | `deliveries` | event seq, delivery seq | [`Delivery`], once attempted (see below) |
//! | `queue` | endpoint num, sort, delivery seq | due time (unix ms), event seq: the due-time index |
//! | `dead_letters` | dead letter seq | [`DeadLetter`] |
//! | `meta` | name | [`Counters`], schema version, id counter, per-endpoint pending counts |
//!
//! A delivery created with its event is stored as its queue entry and its place in the event's
//! `initial_deliveries`; its own record is written when its first attempt settles (or it is
//! cancelled). That keeps ingest at three writes per event and delivery: the event, its id record
//! and the queue entry. Deliveries added later (redeliver, recover) get a record at once. Keying
//! deliveries under their event lists an event's deliveries with one prefix scan.
//!
//! Every change goes through [`SledStore::write`]: one writer thread applies all queued changes in one sled
//! transaction, and a syncer thread makes them durable (`flush` then `fdatasync`) before answering the
//! ones that asked for durability. Reads go straight to the trees from any thread, through the open
//! database in [`State`], which only the writer replaces (it reopens sled after a write fault; see
//! [`health`] and ARCHITECTURE.md, "Storage faults and limits").

mod check;
mod claims;
pub mod codec;
mod compact;
pub mod export;
mod files;
pub mod health;
mod idfilter;
mod migrate;
mod notices;
mod oldest;
mod ops;
mod scoped;
pub mod sealing;
mod stats;
mod tokens;
pub mod watermark;
mod writer;

pub use compact::{compact, Compacted};
use files::{keep_private, make_private_dir, prepare_private_files, remove_snapshots};
use migrate::migrate_from_1;

pub use check::{check, CheckReport};

pub use sealing::{MasterKey, MasterKeys};
pub use writer::{Tx, TxResult};

pub(crate) use crate::store::{
    Counters, DeliveryKey, DeliveryRefused, IngestOutcome, NewEvent, NoticeRound, OpenOptions,
    Redriven, SettleOutcome, Settlement, StoreError, OPERATOR_PARTNER,
};

use crate::model::{DeadLetter, Delivery, Endpoint, EndpointHealth, Event, EventIdRecord};
use codec::Record;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// sled's segment size. Fixed: sled refuses to reopen a database with a different one.
/// Values up to a quarter of it (minus a header) are written inline in the log that `fdatasync` covers;
/// larger ones become blob files, which the syncer fsyncs too.
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;
/// 2: deliveries keyed by (event, delivery), queue values carry the event, no `event_deliveries`
/// tree, initial deliveries without records. A version 1 store is migrated when opened.
const SCHEMA_VERSION: u64 = 2;

/// sled's own error, as the seam carries it ([`StoreError::Sled`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SledError(pub(crate) sled::Error);

impl SledError {
    /// sled found its files damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self.0, sled::Error::Corruption { .. })
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Sled(SledError(e))
    }
}

/// Memory sled may use for its page cache. Small on purpose: with a million pending deliveries the
/// process stays under 300 MiB (sled's own overhead comes on top); see BENCHMARKS.md.
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The `meta` key counting committed groups (see [`watermark`]).
pub(crate) const COMMITS_KEY: &str = "commits";
/// The `meta` key counting stored events (see [`watermark`]).
pub(crate) const STORED_EVENTS_KEY: &str = "stored_events";

/// The `meta` key prefix of an endpoint's pending count.
const PENDING_PREFIX: &[u8] = b"pending/";

/// The `meta` key holding an endpoint's count of pending deliveries.
pub(crate) fn pending_key(endpoint_num: u64) -> Vec<u8> {
    let mut key = PENDING_PREFIX.to_vec();
    key.extend_from_slice(&endpoint_num.to_be_bytes());
    key
}

/// Handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    dir: PathBuf,
    writer: writer::WriterHandle,
    /// The thread filling the id filter with the ids stored before this start.
    id_scan: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop_id_scan: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the operator started this store damaged; kept until `check --clear-damage-mark`.
    damage: Option<watermark::DamageMark>,
    /// The oldest pending delivery, as of the last refresh; see [`oldest`].
    oldest: oldest::Tracker,
    /// Deliveries with an attempt under way; see [`claims`].
    claims: claims::Claims,
}

/// What the writer thread shares with readers. Lives as long as the store: when a write fails, the
/// writer reopens sled's database and swaps it in here, reloading the in-memory copies from it.
pub(crate) struct State {
    /// sled's database and trees; `None` only while the writer reopens them after a fault.
    /// **Only the writer replaces it**; readers take a clone of the `Arc` for one read.
    sled: RwLock<Option<Arc<Sled>>>,
    pub dir: PathBuf,
    pub cache_bytes: u64,
    /// Every endpoint, kept in memory: ingest matches against it on every event.
    pub endpoints: RwLock<BTreeMap<u64, Arc<Endpoint>>>,
    /// The committed counters.
    pub counters: Mutex<Counters>,
    /// The last id number committed; see [`Tx::generate_id`].
    pub next_id: std::sync::atomic::AtomicU64,
    /// Pending deliveries per endpoint, counted from the queue at open and kept by each commit.
    pub endpoint_pending: Mutex<std::collections::HashMap<u64, u64>>,
    /// Woken after a commit that made deliveries due or changed endpoints: the scheduler waits on it.
    pub wake: Arc<tokio::sync::Notify>,
    /// Which event ids may be stored; see [`idfilter`].
    pub ids: Arc<idfilter::IdFilter>,
    /// Write faults and size accounting; see [`health`].
    pub health: health::StoreHealth,
    /// What endpoint secrets are sealed with when written; see [`sealing`].
    pub keys: MasterKeys,
    /// Groups committed (`meta` `commits`), for the watermark.
    pub commits: std::sync::atomic::AtomicU64,
    /// Events stored (`meta` `stored_events`), for the watermark.
    pub stored_events: std::sync::atomic::AtomicU64,
    /// The watermark file, written by the syncer after each durable commit and at close.
    watermark: Mutex<watermark::Watermark>,
}

/// sled's database and its trees, as one open of the store directory.
pub(crate) struct Sled {
    pub db: sled::Db,
    pub trees: Trees,
}

/// What the in-memory copies hold, as read from the store at open.
struct Loaded {
    endpoints: BTreeMap<u64, Arc<Endpoint>>,
    counters: Counters,
    next_id: u64,
    endpoint_pending: std::collections::HashMap<u64, u64>,
    commits: u64,
    stored_events: u64,
}

impl State {
    /// The open database, for one read or one commit.
    pub(crate) fn sled(&self) -> Result<Arc<Sled>, StoreError> {
        self.sled
            .read()
            .expect("sled slot lock is never poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is being reopened".into()))
    }

    /// Puts a freshly opened database in place, with the in-memory copies read from it.
    fn install(&self, sled: Sled, loaded: Loaded) {
        *self
            .endpoints
            .write()
            .expect("endpoint cache lock is never poisoned") = loaded.endpoints;
        *self
            .counters
            .lock()
            .expect("counters lock is never poisoned") = loaded.counters;
        self.next_id
            .store(loaded.next_id, std::sync::atomic::Ordering::Relaxed);
        self.commits
            .store(loaded.commits, std::sync::atomic::Ordering::Relaxed);
        self.stored_events
            .store(loaded.stored_events, std::sync::atomic::Ordering::Relaxed);
        *self
            .endpoint_pending
            .lock()
            .expect("pending lock is never poisoned") = loaded.endpoint_pending;
        *self.sled.write().expect("sled slot lock is never poisoned") = Some(Arc::new(sled));
    }

    /// Takes the database out (readers get [`StoreError::Unavailable`] until [`State::install`]).
    fn take_sled(&self) -> Option<Arc<Sled>> {
        self.sled
            .write()
            .expect("sled slot lock is never poisoned")
            .take()
    }

    /// The figures the watermark keeps, as of the last commit.
    pub(crate) fn mark(&self) -> watermark::Mark {
        use std::sync::atomic::Ordering::Relaxed;
        watermark::Mark {
            commits: self.commits.load(Relaxed),
            next_id: self.next_id.load(Relaxed),
            events: self.stored_events.load(Relaxed),
        }
    }

    /// Records `mark` in the watermark file, durably.
    pub(crate) fn write_watermark(&self, mark: watermark::Mark) -> Result<(), StoreError> {
        let mut wm = self
            .watermark
            .lock()
            .expect("watermark lock is never poisoned");
        wm.write(mark).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("writing {}: {e}", wm.path().display()),
            ))
        })
    }

    /// Measures the store's size and the filesystem's free space for [`health`].
    pub(crate) fn measure(&self) {
        let bytes = self
            .sled()
            .ok()
            .and_then(|s| s.db.size_on_disk().ok())
            .unwrap_or_else(|| self.health.estimated_bytes());
        self.health.measure(bytes, health::free_space(&self.dir));
    }
}

pub(crate) struct Trees {
    pub events: sled::Tree,
    pub event_ids: sled::Tree,
    pub endpoints: sled::Tree,
    pub health: sled::Tree,
    pub deliveries: sled::Tree,
    pub queue: sled::Tree,
    pub dead_letters: sled::Tree,
    pub meta: sled::Tree,
}

impl Trees {
    pub(crate) fn all(&self) -> [&sled::Tree; 8] {
        [
            &self.events,
            &self.event_ids,
            &self.endpoints,
            &self.health,
            &self.deliveries,
            &self.queue,
            &self.dead_letters,
            &self.meta,
        ]
    }
}

/// One entry of an endpoint's queue, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    pub delivery: DeliveryKey,
    pub due_ms: u64,
    /// The entry's sort position: with the delivery seq, where it stands in the queue.
    pub sort: u64,
    /// The delivery was attempted and is waiting for its next attempt (the scheduler's reserve of
    /// slots is for first attempts only). False for entries written before the mark existed.
    pub retry: bool,
}

/// Opens sled's database in `dir`, brings its layout to this version and reads what is kept in memory.
fn open_sled(
    dir: &Path,
    cache_bytes: u64,
    keys: &MasterKeys,
) -> Result<(Sled, Loaded), StoreError> {
    load_sled(trees_of(open_db(dir, cache_bytes)?)?, dir, keys)
}

/// The trees of an open database.
fn trees_of(db: sled::Db) -> Result<Sled, StoreError> {
    let open = |name: &str| db.open_tree(name);
    let trees = Trees {
        events: open("events")?,
        event_ids: open("event_ids")?,
        endpoints: open("endpoints")?,
        health: open("health")?,
        deliveries: open("deliveries")?,
        queue: open("queue")?,
        dead_letters: open("dead_letters")?,
        meta: open("meta")?,
    };
    Ok(Sled { db, trees })
}

/// Brings the layout of an open database to this version and reads what is kept in memory.
fn load_sled(sled: Sled, dir: &Path, keys: &MasterKeys) -> Result<(Sled, Loaded), StoreError> {
    let Sled { db, trees } = sled;
    match trees.meta.get("schema")? {
        None => {
            trees
                .meta
                .insert("schema", &codec::u64_key(SCHEMA_VERSION))?;
        }
        Some(v) if codec::read_u64(&v) == SCHEMA_VERSION => {}
        Some(v) if codec::read_u64(&v) == 1 => migrate_from_1(&db, &trees, dir)?,
        Some(v) => {
            return Err(StoreError::Corrupt(format!(
                "the store in {} has schema version {}; this daemon reads version {SCHEMA_VERSION}",
                dir.display(),
                codec::read_u64(&v)
            )))
        }
    }
    let endpoints = open_endpoints(&trees, keys, dir)?;
    let counters = match trees.meta.get("counters")? {
        Some(v) => Counters::decode(&v)?,
        None => Counters::default(),
    };
    let next_id = trees
        .meta
        .get("next_id")?
        .map_or(0, |v| codec::read_u64(&v));
    let mut endpoint_pending = std::collections::HashMap::new();
    for item in trees.meta.scan_prefix(PENDING_PREFIX) {
        let (key, value) = item?;
        let num = codec::read_u64(&key[PENDING_PREFIX.len()..]);
        endpoint_pending.insert(num, codec::read_u64(&value));
    }
    let commits = trees
        .meta
        .get(COMMITS_KEY)?
        .map_or(0, |v| codec::read_u64(&v));
    let stored_events = match trees.meta.get(STORED_EVENTS_KEY)? {
        Some(v) => codec::read_u64(&v),
        None => {
            // A store from before the watermark (or one that never stored an event): count once.
            let n = trees.events.len() as u64;
            if n > 0 {
                trees.meta.insert(STORED_EVENTS_KEY, &codec::u64_key(n))?;
            }
            n
        }
    };
    let loaded = Loaded {
        endpoints,
        counters,
        next_id,
        endpoint_pending,
        commits,
        stored_events,
    };
    Ok((Sled { db, trees }, loaded))
}

/// Reopens the store's database after a write fault, in place: the old one is dropped first
/// (sled's lock on its data file allows one open at a time), and while it is closed reads answer
/// [`StoreError::Unavailable`]. What sled had not yet written is lost, which is only ever what
/// nobody was told is durable; the in-memory copies are read again so they match the disk.
pub(crate) fn reopen(state: &State) -> Result<(), StoreError> {
    if let Some(old) = state.take_sled() {
        // Whatever can still be written is; after a failed write sled refuses, which is fine.
        let _ = old.db.flush();
        drop(old);
    }
    let (sled, loaded) = open_sled(&state.dir, state.cache_bytes, &state.keys)?;
    state.install(sled, loaded);
    state.measure();
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a cache of `cache_bytes`, endpoint secrets in the clear.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        SledStore::open_with_keys(dir, cache_bytes, MasterKeys::default())
    }

    /// Opens (or creates) the store in `dir`, its endpoint secrets sealed with `keys.current` (in
    /// the clear without one). Secrets not in that form are rewritten in it before anything else
    /// runs: clear ones sealed, ones sealed with `keys.previous` sealed again. Secrets that no key
    /// given opens stop the opening: the daemon never starts signing with secrets it cannot read.
    pub fn open_with_keys(
        dir: &Path,
        cache_bytes: u64,
        keys: MasterKeys,
    ) -> Result<SledStore, StoreError> {
        SledStore::open_checked(dir, cache_bytes, keys, OpenOptions::default())
    }

    /// [`SledStore::open`], with a choice of how a damaged store is treated.
    pub fn open_with(
        dir: &Path,
        cache_bytes: u64,
        options: OpenOptions,
    ) -> Result<SledStore, StoreError> {
        SledStore::open_checked(dir, cache_bytes, MasterKeys::default(), options)
    }

    /// [`SledStore::open_with_keys`], checking the store against its watermark (see [`watermark`]):
    /// a damaged store is refused with [`StoreError::Damaged`] unless `options` accept the loss. A
    /// panic inside sled while reading the store becomes [`StoreError::Corrupt`] naming it.
    pub fn open_checked(
        dir: &Path,
        cache_bytes: u64,
        keys: MasterKeys,
        options: OpenOptions,
    ) -> Result<SledStore, StoreError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(dir, cache_bytes, keys, options).map_err(|e| match e {
                StoreError::Sled(SledError(sled::Error::Corruption { .. })) => StoreError::Corrupt(
                    format!("sled's data file in {} is damaged ({e})", dir.display()),
                ),
                e => e,
            })
        }))
        .unwrap_or_else(|panic| {
            Err(StoreError::Corrupt(format!(
                "sled failed while reading the store in {}: {}",
                dir.display(),
                panic_text(&*panic)
            )))
        })
    }

    fn open_inner(
        dir: &Path,
        cache_bytes: u64,
        keys: MasterKeys,
        options: OpenOptions,
    ) -> Result<SledStore, StoreError> {
        make_private_dir(dir)?;
        let db_len = match std::fs::metadata(dir.join("db")) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        prepare_private_files(dir)?;
        let db = if options.accept_data_loss {
            match std::panic::catch_unwind(|| open_db(dir, cache_bytes)) {
                Ok(Ok(db)) => db,
                Ok(Err(e)) if !e.is_data_error() => return Err(e),
                failed => {
                    // sled's snapshot is an index of its log, written at open; after damage it
                    // may point at what is gone. Without it sled rebuilds the index from the log.
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(panic) => panic_text(&*panic),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    tracing::error!(dir = %dir.display(), error = %why, "sled cannot read the damaged store; dropping its snapshot and reading its log again (--accept-data-loss)");
                    remove_snapshots(dir)?;
                    open_db(dir, cache_bytes)?
                }
            }
        } else {
            open_db(dir, cache_bytes)?
        };
        keep_private(dir);
        let sled = trees_of(db)?;
        let schema = sled.trees.meta.get("schema")?;
        let read_meta = |key: &str| -> Result<Option<u64>, StoreError> {
            Ok(sled.trees.meta.get(key)?.map(|v| codec::read_u64(&v)))
        };
        let found = watermark::Mark {
            commits: read_meta(COMMITS_KEY)?.unwrap_or(0),
            next_id: read_meta("next_id")?.unwrap_or(0),
            events: read_meta(STORED_EVENTS_KEY)?.unwrap_or(0),
        };
        let kept = watermark::read(dir);
        let mut missing = Vec::new();
        if schema.is_none() && db_len > 0 {
            missing.push(format!(
                "sled's data file is {db_len} bytes but holds no schema record (erased or overwritten)"
            ));
        }
        match &kept {
            Ok(Some(kept)) => missing.extend(found.missing_against(kept)),
            Ok(None) => {}
            Err(e) => missing.push(e.to_string()),
        }
        if !missing.is_empty() && !options.accept_data_loss {
            // sled wrote a snapshot (an index of its log) of the damaged state while opening; a
            // later open with --accept-data-loss reads the log again instead.
            drop(sled);
            let _ = remove_snapshots(dir);
            return Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        let upgraded = schema.is_some() && matches!(kept, Ok(None));
        let (sled, loaded) = load_sled(sled, dir, &keys)?;
        let mark = watermark::Mark {
            commits: loaded.commits,
            next_id: loaded.next_id,
            events: loaded.stored_events,
        };
        let damage = if missing.is_empty() {
            watermark::read_damage_mark(dir)?
        } else {
            let detail = missing.join("; ");
            tracing::error!(
                dir = %dir.display(),
                "STARTING A DAMAGED STORE (--accept-data-loss): {detail}; continuing with what survives: {} events, ids up to {}",
                mark.events,
                mark.next_id
            );
            let since = crate::model::format_time(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            );
            Some(watermark::write_damage_mark(
                dir,
                &watermark::DamageMark { since, detail },
            )?)
        };
        let watermark = match kept {
            Ok(Some(kept)) if missing.is_empty() => watermark::Watermark::open(dir, kept)?,
            _ => {
                // New, upgraded or accepted as damaged: the watermark starts from what is stored,
                // once that is on stable storage.
                sled.db.flush()?;
                File::open(dir.join("db"))?.sync_all()?;
                if upgraded {
                    tracing::warn!(
                        dir = %dir.display(),
                        events = mark.events,
                        "this store has no watermark (written by an older version): created one from the store as it is; damage done before this start cannot be detected"
                    );
                }
                watermark::Watermark::create(dir, mark)?
            }
        };
        let state = Arc::new(State {
            sled: RwLock::new(Some(Arc::new(sled))),
            dir: dir.to_path_buf(),
            cache_bytes,
            endpoints: RwLock::new(loaded.endpoints),
            counters: Mutex::new(loaded.counters),
            endpoint_pending: Mutex::new(loaded.endpoint_pending),
            next_id: std::sync::atomic::AtomicU64::new(loaded.next_id),
            wake: Arc::new(tokio::sync::Notify::new()),
            ids: Arc::new(idfilter::IdFilter::new()),
            health: health::StoreHealth::new(),
            keys,
            commits: std::sync::atomic::AtomicU64::new(loaded.commits),
            stored_events: std::sync::atomic::AtomicU64::new(loaded.stored_events),
            watermark: Mutex::new(watermark),
        });
        state.measure();
        let writer = writer::start(state.clone(), dir)?;
        let stop_id_scan = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id_scan = {
            let (scan_state, stop) = (state.clone(), stop_id_scan.clone());
            std::thread::Builder::new()
                .name("store-idscan".into())
                .spawn(move || scan_ids(&scan_state, &stop))?
        };
        Ok(SledStore {
            inner: Arc::new(Inner {
                state,
                dir: dir.to_path_buf(),
                writer,
                id_scan: Mutex::new(Some(id_scan)),
                stop_id_scan,
                damage,
                oldest: oldest::Tracker::default(),
                claims: claims::Claims::default(),
            }),
        })
    }

    /// Set when the store was started damaged with `--accept-data-loss`, until the operator clears it.
    pub fn damage_mark(&self) -> Option<&watermark::DamageMark> {
        self.inner.damage.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes the store occupies on disk (the last estimate while it is being reopened).
    pub fn size_on_disk(&self) -> u64 {
        self.inner
            .state
            .sled()
            .ok()
            .and_then(|s| s.db.size_on_disk().ok())
            .unwrap_or_else(|| self.inner.state.health.estimated_bytes())
    }

    /// Measures the store's size and the free space again (housekeeping does, once a second).
    pub fn measure(&self) {
        self.inner.state.measure();
    }

    /// The store's size as estimated from the last measure and what each commit added since.
    pub fn estimated_bytes(&self) -> u64 {
        self.inner.state.health.estimated_bytes()
    }

    /// Whether new events may be stored: no write fault, under `max_bytes` (0: no limit) less its
    /// headroom, and enough free space on the filesystem. See [`health`].
    pub fn admit_ingest(&self, max_bytes: u64) -> Result<(), StoreError> {
        self.inner.state.health.admit_ingest(max_bytes)
    }

    /// The write fault, if the store cannot be written now, and what caused it.
    pub fn fault(&self) -> Option<(health::Fault, String)> {
        self.inner.state.health.fault_detail()
    }

    /// False while a write fault lasts: the scheduler claims nothing then.
    pub fn writable(&self) -> bool {
        self.inner.state.health.fault().is_none()
    }

    /// Notified after every commit that may have made a delivery due.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.inner.state.wake.clone()
    }

    pub fn counters(&self) -> Counters {
        *self
            .inner
            .state
            .counters
            .lock()
            .expect("counters lock is never poisoned")
    }

    /// Runs `op` inside the next group transaction; with `durable`, answers only once it is on stable storage.
    ///
    /// The closure may run more than once (sled retries conflicting transactions), so it must only
    /// change the store through `tx`.
    pub async fn write<R, F>(&self, durable: bool, op: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Tx<'_>) -> TxResult<R> + Send + 'static,
    {
        self.inner.writer.submit(durable, op).await
    }

    /// Makes everything written so far durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.write(true, |_| Ok(())).await
    }

    /// [`SledStore::close`] on a blocking thread.
    pub async fn close_async(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Stops the writer after the queued changes and flushes to disk.
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner
            .stop_id_scan
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let scan = self
            .inner
            .id_scan
            .lock()
            .expect("id scan lock is never poisoned")
            .take();
        if let Some(scan) = scan {
            let _ = scan.join();
        }
        self.inner.writer.stop();
        self.inner.state.sled()?.db.flush()?;
        File::open(self.inner.dir.join("db"))?.sync_data()?;
        self.inner.state.write_watermark(self.inner.state.mark())?;
        keep_private(&self.inner.dir);
        Ok(())
    }

    // Reads.

    /// Pending deliveries (including those in flight) of one endpoint.
    pub fn endpoint_pending(&self, num: u64) -> u64 {
        let pending = self
            .inner
            .state
            .endpoint_pending
            .lock()
            .expect("pending lock is never poisoned");
        pending.get(&num).copied().unwrap_or(0)
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.read_endpoints().values().cloned().collect()
    }

    pub fn endpoint(&self, num: u64) -> Option<Arc<Endpoint>> {
        self.read_endpoints().get(&num).cloned()
    }

    pub fn health(&self, num: u64) -> Result<EndpointHealth, StoreError> {
        match self
            .inner
            .state
            .sled()?
            .trees
            .health
            .get(codec::u64_key(num))?
        {
            Some(v) => EndpointHealth::decode(&v),
            None => Ok(EndpointHealth::default()),
        }
    }

    pub fn event_by_id(&self, id: &str) -> Result<Option<Event>, StoreError> {
        let Some(rec) = self
            .inner
            .state
            .sled()?
            .trees
            .event_ids
            .get(id.as_bytes())?
        else {
            return Ok(None);
        };
        let rec = EventIdRecord::decode(&rec)?;
        self.event(rec.event_seq)
    }

    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        get(&self.inner.state.sled()?.trees.events, seq)
    }

    /// One delivery of an event already read: its record, or its entry in `event`.
    pub fn delivery_of(&self, event: &Event, seq: u64) -> Result<Option<Delivery>, StoreError> {
        match self
            .inner
            .state
            .sled()?
            .trees
            .deliveries
            .get(codec::pair_key(event.seq, seq))?
        {
            Some(v) => Ok(Some(Delivery::decode(&v)?)),
            None => Ok(initial_delivery(event, seq)),
        }
    }

    /// The deliveries of one event, oldest first.
    pub fn event_deliveries(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        let mut recorded = BTreeMap::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .deliveries
            .scan_prefix(codec::u64_key(event.seq))
        {
            let (_, v) = item?;
            let d = Delivery::decode(&v)?;
            recorded.insert(d.seq, d);
        }
        for &(seq, endpoint_num) in &event.initial_deliveries {
            recorded.entry(seq).or_insert_with(|| {
                Delivery::initial(event.seq, event.received_at_ms, seq, endpoint_num)
            });
        }
        Ok(recorded.into_values().collect())
    }

    /// Up to `limit` events in reception order, starting after event seq `after`.
    pub fn events_from(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .events
            .range(codec::u64_key(after.saturating_add(1))..)
        {
            let (_, v) = item?;
            out.push(Event::decode(&v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        get(&self.inner.state.sled()?.trees.dead_letters, seq)
    }

    /// Dead letters after seq `after`, oldest first, that pass `keep`, up to `limit`.
    pub fn dead_letters(
        &self,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .dead_letters
            .range(codec::u64_key(after.saturating_add(1))..)
        {
            let (_, v) = item?;
            let dl = DeadLetter::decode(&v)?;
            if keep(&dl) {
                out.push(dl);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries of an endpoint's queue in queue order, with a sort position at or below `max_sort`.
    pub fn queue_entries(
        &self,
        endpoint_num: u64,
        max_sort: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.queue_entries_after(endpoint_num, None, max_sort, limit)
    }

    /// Like [`SledStore::queue_entries`], starting after the entry at `after` (sort, delivery seq).
    pub fn queue_entries_after(
        &self,
        endpoint_num: u64,
        after: Option<(u64, u64)>,
        max_sort: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some((sort, seq)) => Bound::Excluded(codec::queue_key(endpoint_num, sort, seq)),
            None => Bound::Included(codec::queue_key(endpoint_num, 0, 0)),
        };
        let end = Bound::Included(codec::queue_key(endpoint_num, max_sort, u64::MAX));
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .queue
            .range::<[u8; 24], _>((start, end))
        {
            let (key, value) = item?;
            out.push(queue_entry(&key, &value));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` queue entries of an endpoint, from its head.
    pub(crate) fn queue_entries_raw(
        &self,
        endpoint_num: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .queue
            .scan_prefix(codec::u64_key(endpoint_num))
            .take(limit)
        {
            let (key, value) = item?;
            out.push(queue_entry(&key, &value));
        }
        Ok(out)
    }

    /// The first queue entry of an endpoint with a sort position of at least `min_sort`.
    pub fn first_queue_entry(
        &self,
        endpoint_num: u64,
        min_sort: u64,
    ) -> Result<Option<QueueEntry>, StoreError> {
        let start = codec::queue_key(endpoint_num, min_sort, 0);
        let end = codec::queue_key(endpoint_num, u64::MAX, u64::MAX);
        match self
            .inner
            .state
            .sled()?
            .trees
            .queue
            .range(start..=end)
            .next()
        {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some(queue_entry(&key, &value)))
            }
            None => Ok(None),
        }
    }

    fn read_endpoints(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Endpoint>>> {
        self.inner
            .state
            .endpoints
            .read()
            .expect("endpoint cache lock is never poisoned")
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Reads every endpoint, opening its secrets with `keys`, and rewrites in place (durably, before the
/// writer starts) those whose secrets are not in the form `keys.current` asks for.
fn open_endpoints(
    trees: &Trees,
    keys: &MasterKeys,
    dir: &Path,
) -> Result<BTreeMap<u64, Arc<Endpoint>>, StoreError> {
    let mut endpoints = BTreeMap::new();
    let mut stale = Vec::new();
    for item in trees.endpoints.iter() {
        let (_, value) = item?;
        let (ep, is_stale) = keys.open(codec::EndpointRecord::decode(&value)?)?;
        if is_stale {
            stale.push(ep.num);
        }
        endpoints.insert(ep.num, Arc::new(ep));
    }
    if !stale.is_empty() {
        for num in &stale {
            let record = keys.seal(&endpoints[num]);
            trees
                .endpoints
                .insert(codec::u64_key(*num), record.encode())?;
        }
        trees.endpoints.flush()?;
        File::open(dir.join("db"))?.sync_all()?;
        match &keys.current {
            Some(key) => tracing::info!(
                endpoints = stale.len(),
                key = %key.source().display(),
                "endpoint secrets encrypted with the master key; run `preflix-webhookd compact` \
                 while stopped to drop older copies from the store's files"
            ),
            None => tracing::warn!(
                endpoints = stale.len(),
                "endpoint secrets decrypted and stored in the clear: no master key is configured"
            ),
        }
    }
    Ok(endpoints)
}

/// How long opening waits for sled's lock on the data file to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled's database in `dir`. When the lock on its data file is held, waits up to
/// [`LOCK_WAIT`] before failing: after a store closes in this process, sled lets go of the file
/// only once its background threads and deferred frees have dropped their last reference, which
/// can take a moment (a daemon restarted in the same process, the tests). Another process that
/// keeps the store open still makes this fail, after the wait.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(Some(500))
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Adds every stored event id to the filter, then lets ingest consult it. On a read error, a write
/// fault (the database is about to be reopened, and this scan must let go of it) or when the store
/// closes first, the filter is never consulted, which only costs speed.
fn scan_ids(state: &State, stop: &std::sync::atomic::AtomicBool) {
    let Ok(sled) = state.sled() else { return };
    let tree = sled.trees.event_ids.clone();
    drop(sled);
    let mut last: Option<sled::IVec> = None;
    for key in tree.iter().keys() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) || state.health.fault().is_some() {
            return;
        }
        match key {
            Ok(key) if last.as_ref().is_some_and(|l| *l >= key) => {
                // A damaged tree can send sled's iterator round in circles.
                tracing::error!("the store's event ids come out of order: it is damaged (run `preflix-webhookd check`); ingest looks every id up");
                return;
            }
            Ok(key) => {
                state.ids.insert(&key);
                last = Some(key);
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %state.dir.display(), "reading the event ids failed: the store may be damaged (stop the daemon and run `preflix-webhookd check`); ingest looks every id up");
                return;
            }
        }
    }
    state.ids.set_ready();
}

fn queue_entry(key: &[u8], value: &[u8]) -> QueueEntry {
    let (_, sort, seq) = codec::split_queue_key(key);
    let (due_ms, event_seq) = codec::split_queue_value(value);
    QueueEntry {
        delivery: DeliveryKey { event_seq, seq },
        due_ms,
        sort,
        retry: codec::queue_value_is_retry(value),
    }
}

/// The delivery `seq` as it stands before its first attempt, if the event created it.
pub(crate) fn initial_delivery(event: &Event, seq: u64) -> Option<Delivery> {
    event
        .initial_deliveries
        .iter()
        .find(|(s, _)| *s == seq)
        .map(|&(seq, endpoint_num)| {
            Delivery::initial(event.seq, event.received_at_ms, seq, endpoint_num)
        })
}

fn get<T: Record>(tree: &sled::Tree, seq: u64) -> Result<Option<T>, StoreError> {
    match tree.get(codec::u64_key(seq))? {
        Some(v) => Ok(Some(T::decode(&v)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
