//! Group commit: one writer thread applies queued changes in one sled transaction; a syncer thread makes them durable.
//!
//! The writer drains everything queued, runs each change's closure inside a single transaction, commits,
//! and answers the changes that did not ask for durability. The durable ones wait until the writer calls
//! sled's `flush` (which on Linux ends in `sync_file_range` and does not empty the drive cache): it does
//! so when nothing more is queued, or when the oldest has waited `MAX_UNFLUSHED`, because `flush` holds
//! sled's global lock in shared mode and a transaction needs it alone, so one flush after several
//! commits costs less than one after each. The syncer thread then `fdatasync`s sled's data file and any
//! new blob file, then records the store's figures in the watermark (`pwrite` + `fdatasync`, see
//! [`super::watermark`]), and only then answers; meanwhile the writer already commits the next group.
//! Every group also counts itself in `meta` (`commits`), and the events it stores or removes
//! (`stored_events`), in the same transaction.

use super::codec::Record;
use super::health::{self, Fault};
use super::watermark::Mark;
use super::{Counters, State, StoreError};
use crate::model::Endpoint;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::any::Any;
use std::cell::{RefCell, RefMut};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// The result type of a change's closure; `Err` aborts the whole group (storage errors only).
pub type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Which tree a [`Tx`] call addresses; the order of [`super::Trees::all`].
#[derive(Debug, Clone, Copy)]
pub enum TreeId {
    Events = 0,
    EventIds = 1,
    Endpoints = 2,
    Health = 3,
    Deliveries = 4,
    Queue = 5,
    DeadLetters = 6,
    Meta = 7,
}

/// A change's view of the group transaction.
///
/// sled holds its global write lock while the transaction's closure runs, so a change must not call
/// anything on the trees directly (reads, scans, `generate_id`): that would deadlock. Everything goes
/// through this type; scans happen before the change is submitted.
pub struct Tx<'a> {
    trees: &'a [TransactionalTree],
    state: &'a State,
    effects: &'a RefCell<Effects>,
}

impl Tx<'_> {
    pub fn get<T: Record>(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<T>> {
        match self.trees[tree as usize].get(key)? {
            Some(v) => T::decode(&v)
                .map(Some)
                .map_err(ConflictableTransactionError::Abort),
            None => Ok(None),
        }
    }

    pub fn put<T: Record>(&self, tree: TreeId, key: &[u8], value: &T) -> TxResult<()> {
        let value = value.encode();
        self.count(key.len() + value.len());
        self.trees[tree as usize].insert(key, value)?;
        Ok(())
    }

    /// Counts what a write adds to the log, for the store's size estimate.
    fn count(&self, bytes: usize) {
        self.effects.borrow_mut().bytes += bytes as u64 + health::RECORD_OVERHEAD;
    }

    pub fn get_raw(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.trees[tree as usize].get(key)?)
    }

    pub fn put_raw(&self, tree: TreeId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.count(key.len() + value.len());
        self.trees[tree as usize].insert(key, value)?;
        Ok(())
    }

    /// Removes the record; true if there was one.
    pub fn remove_existing(&self, tree: TreeId, key: &[u8]) -> TxResult<bool> {
        self.count(key.len());
        Ok(self.trees[tree as usize].remove(key)?.is_some())
    }

    /// Notes that this change stores `delta` more events (negative: fewer), for the count the
    /// watermark keeps (see [`super::watermark`]).
    pub fn events_stored_delta(&self, delta: i64) {
        self.effects.borrow_mut().events_delta += delta;
    }

    pub fn remove(&self, tree: TreeId, key: &[u8]) -> TxResult<()> {
        self.count(key.len());
        self.trees[tree as usize].remove(key)?;
        Ok(())
    }

    /// A new number, unique for the life of the database.
    ///
    /// sled's own `generate_id` may write while the transaction holds sled's lock and deadlock, so
    /// numbers come from a counter that each group stores in `meta` with its other changes.
    pub fn generate_id(&self) -> TxResult<u64> {
        let mut fx = self.effects.borrow_mut();
        fx.next_id += 1;
        Ok(fx.next_id)
    }

    /// The counters as this group leaves them; changes are kept only if the group commits.
    pub fn counters(&self) -> RefMut<'_, Counters> {
        RefMut::map(self.effects.borrow_mut(), |e| &mut e.counters)
    }

    /// The endpoint as this group sees it (its own earlier changes included).
    pub fn endpoint(&self, num: u64) -> Option<Arc<Endpoint>> {
        let fx = self.effects.borrow();
        if fx.removed_endpoints.contains(&num) {
            return None;
        }
        if let Some(ep) = fx.upserted_endpoints.iter().rev().find(|e| e.num == num) {
            return Some(ep.clone());
        }
        drop(fx);
        self.state
            .endpoints
            .read()
            .expect("endpoint cache lock is never poisoned")
            .get(&num)
            .cloned()
    }

    /// Every endpoint as this group sees it.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let cache = self
            .state
            .endpoints
            .read()
            .expect("endpoint cache lock is never poisoned");
        let fx = self.effects.borrow();
        let mut out: Vec<Arc<Endpoint>> = cache
            .values()
            .filter(|e| !fx.removed_endpoints.contains(&e.num))
            .filter(|e| !fx.upserted_endpoints.iter().any(|u| u.num == e.num))
            .cloned()
            .collect();
        let mut seen = HashSet::new();
        for ep in fx.upserted_endpoints.iter().rev() {
            if seen.insert(ep.num) && !fx.removed_endpoints.contains(&ep.num) {
                out.push(ep.clone());
            }
        }
        out
    }

    /// Calls `f` for each endpoint that matches, without cloning the list.
    pub fn for_matching_endpoints(
        &self,
        mut f: impl FnMut(&Endpoint) -> TxResult<()>,
        keep: impl Fn(&Endpoint) -> bool,
    ) -> TxResult<()> {
        let fx_empty = {
            let fx = self.effects.borrow();
            fx.upserted_endpoints.is_empty() && fx.removed_endpoints.is_empty()
        };
        if fx_empty {
            let cache = self
                .state
                .endpoints
                .read()
                .expect("endpoint cache lock is never poisoned");
            for ep in cache.values() {
                if keep(ep) {
                    f(ep)?;
                }
            }
            return Ok(());
        }
        for ep in self.endpoints() {
            if keep(&ep) {
                f(&ep)?;
            }
        }
        Ok(())
    }

    /// Stores the endpoint and updates the in-memory copy once the group commits.
    pub fn put_endpoint(&self, ep: Endpoint) -> TxResult<()> {
        let record = self.state.keys.seal(&ep);
        self.put(TreeId::Endpoints, &super::codec::u64_key(ep.num), &record)?;
        let mut fx = self.effects.borrow_mut();
        fx.removed_endpoints.remove(&ep.num);
        fx.upserted_endpoints.push(Arc::new(ep));
        fx.wake = true;
        Ok(())
    }

    pub fn remove_endpoint(&self, num: u64) -> TxResult<()> {
        self.remove(TreeId::Endpoints, &super::codec::u64_key(num))?;
        self.remove(TreeId::Health, &super::codec::u64_key(num))?;
        self.effects.borrow_mut().removed_endpoints.insert(num);
        Ok(())
    }

    /// Notes that an endpoint's queue grew or shrank by `delta` deliveries.
    pub fn pending_delta(&self, endpoint_num: u64, delta: i64) {
        *self
            .effects
            .borrow_mut()
            .pending
            .entry(endpoint_num)
            .or_insert(0) += delta;
    }

    /// False when no event with this id can be stored (the id filter says so).
    pub fn event_id_may_exist(&self, id: &str) -> bool {
        self.state.ids.may_contain(id.as_bytes())
    }

    /// Adds a stored event's id to the id filter (harmless if the group then fails).
    pub fn note_event_id(&self, id: &str) {
        self.state.ids.insert(id.as_bytes());
    }

    /// Wakes the scheduler once the group commits.
    pub fn wake_scheduler(&self) {
        self.effects.borrow_mut().wake = true;
    }
}

pub(super) struct WriterHandle {
    state: Arc<State>,
    sender: Mutex<Option<mpsc::Sender<Op>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl WriterHandle {
    pub async fn submit<R, F>(&self, durable: bool, mut op: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Tx<'_>) -> TxResult<R> + Send + 'static,
    {
        // While a write fault lasts every change fails at once; the writer is reopening the store.
        if let Some(e) = self.state.health.fault_error() {
            return Err(e);
        }
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let op = Op {
            durable,
            run: Box::new(move |tx| op(tx).map(|r| Box::new(r) as Box<dyn Any + Send>)),
            reply: Box::new(move |result| {
                let result = result.map(|b| {
                    *b.downcast::<R>()
                        .expect("a change's result has its own type")
                });
                let _ = reply_tx.send(result);
            }),
        };
        {
            let sender = self.sender.lock().expect("writer lock is never poisoned");
            let sender = sender.as_ref().ok_or(StoreError::Closed)?;
            sender.send(op).map_err(|_| StoreError::Closed)?;
        }
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the writer finish what is queued, then waits for both threads.
    pub fn stop(&self) {
        self.sender
            .lock()
            .expect("writer lock is never poisoned")
            .take();
        let threads =
            std::mem::take(&mut *self.threads.lock().expect("writer lock is never poisoned"));
        for t in threads {
            let _ = t.join();
        }
    }
}

type Reply = Box<dyn FnOnce(Result<Box<dyn Any + Send>, StoreError>) + Send>;
type Run = Box<dyn FnMut(&Tx<'_>) -> TxResult<Box<dyn Any + Send>> + Send>;

struct Op {
    durable: bool,
    run: Run,
    reply: Reply,
}

/// What a group changes besides the trees, applied after it commits.
struct Effects {
    counters: Counters,
    upserted_endpoints: Vec<Arc<Endpoint>>,
    removed_endpoints: HashSet<u64>,
    pending: std::collections::HashMap<u64, i64>,
    /// The last number handed out by [`Tx::generate_id`].
    next_id: u64,
    /// Events stored minus events removed by this group.
    events_delta: i64,
    wake: bool,
    /// Logical bytes written (keys, values, framing), for the size estimate.
    bytes: u64,
}

/// The most changes one group takes; more wait for the next group.
const MAX_GROUP: usize = 1024;
/// How long committed durable changes may wait for the flush while the writer commits more.
const MAX_UNFLUSHED: std::time::Duration = std::time::Duration::from_millis(1);

pub(super) fn start(state: Arc<State>, dir: &Path) -> Result<WriterHandle, StoreError> {
    let data_file = File::open(dir.join("db"))?;
    // The directory entries of the database files must be durable too.
    File::open(dir)?.sync_all()?;
    let (sender, receiver) = mpsc::channel::<Op>();
    let (sync_tx, sync_rx) = mpsc::channel::<Flushed>();
    let blobs = dir.join("blobs");
    let syncer_state = state.clone();
    let syncer = std::thread::Builder::new()
        .name("store-syncer".into())
        .spawn(move || syncer_loop(&syncer_state, &data_file, &blobs, &sync_rx))?;
    let writer_state = state.clone();
    let writer = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer_loop(&writer_state, &receiver, &sync_tx))?;
    Ok(WriterHandle {
        state,
        sender: Mutex::new(Some(sender)),
        threads: Mutex::new(vec![writer, syncer]),
    })
}

/// Committed durable changes waiting for their answer, and whether sled's `flush` of them worked.
struct Flushed {
    flush: Result<(), StoreError>,
    /// The store's figures as of the last commit the flush covers: the watermark once synced.
    mark: Mark,
    waiting: Vec<(Reply, Box<dyn Any + Send>)>,
}

/// How often an idle writer looks whether the syncer reported a fault.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

fn writer_loop(state: &State, receiver: &mpsc::Receiver<Op>, sync_tx: &mpsc::Sender<Flushed>) {
    let mut last_commit_end = std::time::Instant::now();
    // Durable changes committed but not yet flushed, and since when the oldest waits.
    let mut unflushed: Vec<(Reply, Box<dyn Any + Send>)> = Vec::new();
    let mut unflushed_since = std::time::Instant::now();
    let mut next: Option<Op> = None;
    loop {
        // A fault seen here (the syncer's, or this thread's below): reopen before anything else.
        if state.health.fault().is_some() {
            fail_all(&mut unflushed, state);
            if let Some(op) = next.take() {
                fail(op, state);
            }
            if !recover(state, receiver) {
                break;
            }
        }
        let first = match next.take() {
            Some(op) => op,
            None => match receiver.recv_timeout(IDLE_CHECK) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut group = vec![first];
        drain(receiver, &mut group);
        // Changes that need no sync (settled attempts) arriving in a steady trickle are gathered for
        // a moment so that one commit carries many: each commit has a fixed cost and blocks every
        // reader of the store while it runs. Only when the writer was busy just before (no delay
        // for an idle daemon) and no durable change waits for a flush, in short slices, and a
        // durable change ends the wait.
        if unflushed.is_empty() && last_commit_end.elapsed() < GATHER_FOR {
            let until = std::time::Instant::now() + GATHER_FOR;
            while group.len() < SMALL_GROUP
                && group.iter().all(|op| !op.durable)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(GATHER_SLICE);
                drain(receiver, &mut group);
            }
        }
        let mut runs = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for op in group {
            runs.push(op.run);
            replies.push((op.durable, op.reply));
        }
        if unflushed.is_empty() {
            unflushed_since = std::time::Instant::now();
        }
        match commit_guarded(state, &mut runs) {
            Ok(results) => finish(replies, results, &mut unflushed),
            Err(e) if note_fault(state, &e) => {
                // The store cannot be written: nothing of this group is stored. The loop reopens it.
                for (_, reply) in replies {
                    reply(Err(fault_error(state)));
                }
            }
            Err(_) if runs.len() > 1 => {
                // One change spoiled the group: commit each alone so the others still land.
                for (mut run, reply) in runs.into_iter().zip(replies) {
                    if state.health.fault().is_some() {
                        (reply.1)(Err(fault_error(state)));
                        continue;
                    }
                    match commit_guarded(state, std::slice::from_mut(&mut run)) {
                        Ok(results) => finish(vec![reply], results, &mut unflushed),
                        Err(e) => {
                            note_fault(state, &e);
                            (reply.1)(Err(e));
                        }
                    }
                }
            }
            Err(e) => {
                for (_, reply) in replies {
                    reply(Err(StoreError::Corrupt(e.to_string())));
                }
            }
        }
        last_commit_end = std::time::Instant::now();
        if unflushed.is_empty() {
            continue;
        }
        // sled's `flush` holds sled's lock in shared mode while it writes, and a transaction needs
        // it alone, so flushing and committing take turns. While more changes wait (and the oldest
        // unflushed one has not waited long), commit them first: one flush then covers them all.
        if state.health.fault().is_none() {
            if let Ok(op) = receiver.try_recv() {
                next = Some(op);
                if unflushed_since.elapsed() < MAX_UNFLUSHED {
                    continue;
                }
            }
        }
        let mark = state.mark();
        let flush = state.sled().and_then(|s| Ok(s.db.flush().map(drop)?));
        if let Err(e) = &flush {
            note_fault(state, e);
        }
        let waiting = std::mem::take(&mut unflushed);
        if let Err(mpsc::SendError(lost)) = sync_tx.send(Flushed {
            flush,
            mark,
            waiting,
        }) {
            for (reply, _) in lost.waiting {
                reply(Err(StoreError::Closed));
            }
        }
    }
}

/// If `e` is a write fault, records it (the first one stays) and says so.
fn note_fault(state: &State, e: &StoreError) -> bool {
    let Some(fault) = health::classify(e) else {
        return false;
    };
    if state.health.fault().is_none() {
        match fault {
            Fault::Full => {
                tracing::error!(error = %e, dir = %state.dir.display(), "the filesystem holding the store is full; ingest and deliveries pause until space is freed")
            }
            Fault::Unavailable => {
                tracing::error!(error = %e, dir = %state.dir.display(), "writing the store failed; ingest and deliveries pause while it is reopened")
            }
        }
        state.health.set_fault(fault, e.to_string());
    }
    true
}

/// The error changes get while the current fault lasts.
fn fault_error(state: &State) -> StoreError {
    state
        .health
        .fault_error()
        .unwrap_or_else(|| StoreError::Unavailable("the store is being reopened".into()))
}

fn fail(op: Op, state: &State) {
    (op.reply)(Err(fault_error(state)));
}

/// Committed but unflushed durable changes are not durable: they are answered with the fault.
fn fail_all(unflushed: &mut Vec<(Reply, Box<dyn Any + Send>)>, state: &State) {
    for (reply, _) in unflushed.drain(..) {
        reply(Err(fault_error(state)));
    }
}

/// The first wait before reopening after a fault, and the longest (it doubles in between).
const RECOVER_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RECOVER_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Free space needed before reopening after the disk was full: sled may start a new segment.
const RECOVER_FREE_BYTES: u64 = 2 * super::SEGMENT_SIZE as u64;
/// Bytes written (and fsynced, then removed) to prove the filesystem takes writes again.
const PROBE_BYTES: usize = 64 * 1024;

/// Waits, answering every change with the fault, until the filesystem takes writes again, then
/// reopens the database and clears the fault. False when the store is closing instead.
fn recover(state: &State, receiver: &mpsc::Receiver<Op>) -> bool {
    let mut delay = RECOVER_FIRST;
    let mut attempts = 0u32;
    loop {
        let until = std::time::Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match receiver.recv_timeout(left) {
                Ok(op) => fail(op, state),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        attempts += 1;
        // A panic while opening (sled on a damaged file) must not end this thread: nothing would
        // ever write again. It counts as a failed attempt.
        let result = probe(&state.dir).and_then(|()| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::reopen(state)))
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "reopening the store panicked".into(),
                    ))
                })
        });
        match result {
            Ok(()) => {
                state.health.clear_fault();
                tracing::info!(
                    attempts,
                    "the store takes writes again; ingest and deliveries resume"
                );
                state.wake.notify_one();
                return true;
            }
            Err(e) => {
                let fault = health::classify(&e).unwrap_or(Fault::Unavailable);
                state.health.set_fault(fault, e.to_string());
                if attempts % 10 == 1 {
                    tracing::warn!(error = %e, attempts, "the store cannot be reopened yet");
                }
            }
        }
        delay = (delay * 2).min(RECOVER_MAX);
    }
}

/// Checks that the filesystem holding `dir` has room for sled and takes a synced write.
fn probe(dir: &Path) -> Result<(), StoreError> {
    if let Some(free) = health::free_space(dir) {
        if free < RECOVER_FREE_BYTES {
            return Err(StoreError::Full(format!(
                "{free} bytes free where the store is, {RECOVER_FREE_BYTES} needed to reopen it"
            )));
        }
    }
    let path = dir.join("write-probe.tmp");
    let written = (|| {
        use std::io::Write;
        let mut f = File::create(&path)?;
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    Ok(written?)
}

/// Gathering changes that need no sync stops at this many.
const SMALL_GROUP: usize = 64;
/// How long changes that need no sync are gathered at most, and how recent the last commit must be.
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(1);
/// The gathering sleeps in slices this long, looking for a durable change after each.
const GATHER_SLICE: std::time::Duration = std::time::Duration::from_micros(250);

fn drain(receiver: &mpsc::Receiver<Op>, group: &mut Vec<Op>) {
    while group.len() < MAX_GROUP {
        match receiver.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
}

/// Answers the committed changes that need no sync; the durable ones wait in `unflushed`.
fn finish(
    replies: Vec<(bool, Reply)>,
    results: Vec<Box<dyn Any + Send>>,
    unflushed: &mut Vec<(Reply, Box<dyn Any + Send>)>,
) {
    for ((needs_sync, reply), result) in replies.into_iter().zip(results) {
        if needs_sync {
            unflushed.push((reply, result));
        } else {
            reply(Ok(result));
        }
    }
}

/// [`commit`], turning a panic inside a change into an error for that group, so the writer lives on.
fn commit_guarded(state: &State, runs: &mut [Run]) -> Result<Vec<Box<dyn Any + Send>>, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(state, runs))).unwrap_or_else(
        |_| {
            tracing::error!("a store change panicked; its group was not committed");
            Err(StoreError::Corrupt("a store change panicked".into()))
        },
    )
}

/// Runs the changes in one transaction and, once it commits, applies their effects.
fn commit(state: &State, runs: &mut [Run]) -> Result<Vec<Box<dyn Any + Send>>, StoreError> {
    let committed = *state
        .counters
        .lock()
        .expect("counters lock is never poisoned");
    let committed_id = state.next_id.load(std::sync::atomic::Ordering::Relaxed);
    let committed_commits = state.commits.load(std::sync::atomic::Ordering::Relaxed);
    let committed_events = state
        .stored_events
        .load(std::sync::atomic::Ordering::Relaxed);
    let effects = RefCell::new(Effects {
        counters: committed,
        upserted_endpoints: Vec::new(),
        removed_endpoints: HashSet::new(),
        pending: std::collections::HashMap::new(),
        next_id: committed_id,
        events_delta: 0,
        wake: false,
        bytes: 0,
    });
    let runs = RefCell::new(runs);
    let sled = state.sled()?;
    let trees = sled.trees.all();
    let result = trees.as_slice().transaction(|t| {
        {
            let mut fx = effects.borrow_mut();
            fx.counters = committed;
            fx.upserted_endpoints.clear();
            fx.removed_endpoints.clear();
            fx.pending.clear();
            fx.next_id = committed_id;
            fx.events_delta = 0;
            fx.wake = false;
            fx.bytes = 0;
        }
        let tx = Tx {
            trees: t,
            state,
            effects: &effects,
        };
        let mut runs = runs.borrow_mut();
        let mut out = Vec::with_capacity(runs.len());
        for run in runs.iter_mut() {
            out.push(run(&tx)?);
        }
        let (counters, next_id) = {
            let fx = effects.borrow();
            (fx.counters, fx.next_id)
        };
        if counters != committed {
            t[TreeId::Meta as usize].insert("counters", counters.encode())?;
        }
        // Per-endpoint pending counts live in `meta` too, so opening the store needs no queue scan.
        let deltas: Vec<(u64, i64)> = effects
            .borrow()
            .pending
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        if !deltas.is_empty() {
            let known = state
                .endpoint_pending
                .lock()
                .expect("pending lock is never poisoned");
            for (num, delta) in deltas {
                let count = known
                    .get(&num)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add_signed(delta);
                t[TreeId::Meta as usize]
                    .insert(super::pending_key(num), &super::codec::u64_key(count))?;
            }
        }
        if next_id != committed_id {
            t[TreeId::Meta as usize].insert("next_id", &super::codec::u64_key(next_id))?;
        }
        // The figures the watermark checks: every group counts, and the events stored.
        let meta = &t[TreeId::Meta as usize];
        meta.insert(
            super::COMMITS_KEY,
            &super::codec::u64_key(committed_commits + 1),
        )?;
        let events_delta = effects.borrow().events_delta;
        if events_delta != 0 {
            meta.insert(
                super::STORED_EVENTS_KEY,
                &super::codec::u64_key(committed_events.saturating_add_signed(events_delta)),
            )?;
        }
        Ok(out)
    });
    let results = match result {
        Ok(r) => r,
        Err(TransactionError::Abort(e)) => return Err(e),
        Err(TransactionError::Storage(e)) => return Err(e.into()),
    };
    let fx = effects.into_inner();
    // The counters, pending counts and id counter in `meta` come on top of what the changes wrote.
    state.health.add(fx.bytes + 256);
    *state
        .counters
        .lock()
        .expect("counters lock is never poisoned") = fx.counters;
    state
        .next_id
        .store(fx.next_id, std::sync::atomic::Ordering::Relaxed);
    state
        .commits
        .store(committed_commits + 1, std::sync::atomic::Ordering::Relaxed);
    state.stored_events.store(
        committed_events.saturating_add_signed(fx.events_delta),
        std::sync::atomic::Ordering::Relaxed,
    );
    if !fx.upserted_endpoints.is_empty() || !fx.removed_endpoints.is_empty() {
        let mut cache = state
            .endpoints
            .write()
            .expect("endpoint cache lock is never poisoned");
        for ep in fx.upserted_endpoints {
            cache.insert(ep.num, ep);
        }
        for num in &fx.removed_endpoints {
            cache.remove(num);
        }
    }
    if !fx.pending.is_empty() {
        let mut pending = state
            .endpoint_pending
            .lock()
            .expect("pending lock is never poisoned");
        for (num, delta) in fx.pending {
            let n = pending.entry(num).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
    }
    for num in &fx.removed_endpoints {
        state
            .endpoint_pending
            .lock()
            .expect("pending lock is never poisoned")
            .remove(num);
    }
    if fx.wake {
        state.wake.notify_one();
    }
    Ok(results)
}

fn syncer_loop(state: &State, data_file: &File, blobs: &Path, receiver: &mpsc::Receiver<Flushed>) {
    let mut synced_blobs = HashSet::new();
    while let Ok(first) = receiver.recv() {
        let mut batches = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batches.push(more);
        }
        let mut outcome = sync(data_file, blobs, &mut synced_blobs);
        // Only once sled's files are on stable storage may the watermark say so; and only once the
        // watermark says so is the change acknowledged. The newest flush that worked counts.
        if outcome.is_ok() {
            let newest = batches
                .iter()
                .filter(|b| b.flush.is_ok())
                .map(|b| b.mark)
                .max_by_key(|m| m.commits);
            if let Some(mark) = newest {
                outcome = state.write_watermark(mark);
            }
        }
        if let Err(e) = &outcome {
            // After a failed fsync the kernel may have dropped the pages: only a reopen tells.
            note_fault(state, e);
        }
        for batch in batches {
            let outcome = match (&batch.flush, &outcome) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(_), _) | (_, Err(_)) => Err(fault_error(state)),
            };
            for (reply, result) in batch.waiting {
                match &outcome {
                    Ok(()) => reply(Ok(result)),
                    Err(e) => reply(Err(clone_error(e))),
                }
            }
        }
    }
}

/// A copy of a fault error for each change that waited on the same flush.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(m) => StoreError::Full(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Everything the writer flushed onto stable storage: sled's data file and any new blob file.
fn sync(
    data_file: &File,
    blobs: &Path,
    synced_blobs: &mut HashSet<PathBuf>,
) -> Result<(), StoreError> {
    data_file.sync_data()?;
    // Values too large for the log go to blob files, which sled writes but never fsyncs.
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut present = HashSet::new();
    let mut new_files = false;
    for entry in entries {
        let path = entry?.path();
        if !synced_blobs.contains(&path) {
            match File::open(&path) {
                Ok(f) => {
                    // sled creates blobs with the process umask; they hold payloads and secrets.
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.sync_data()?;
                }
                // sled removes blobs that are no longer referenced; a vanished one needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            new_files = true;
        }
        present.insert(path);
    }
    if new_files {
        File::open(blobs)?.sync_all()?;
    }
    *synced_blobs = present;
    Ok(())
}
