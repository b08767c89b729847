//! The PostgreSQL backend: several daemons ("nodes") sharing one database (contract section 8).
//!
//! - `schema`: numbered migrations compiled in, applied under an advisory lock.
//! - `sql`: every statement (plain SQL, no ORM); `rows`: rows to model types and back.
//! - `ops`: ingest (group commit), endpoint changes, settles (group commit, fenced), claims
//!   (`FOR UPDATE SKIP LOCKED` under the endpoint's row lock, with a lease and a fence),
//!   dead letters, retention.
//! - here: opening, the connection pool, the endpoint cache, and the background tasks: the
//!   `LISTEN` connection (wakes the scheduler, reloads endpoints), the probe (marks the store
//!   unavailable within a second of the database going away, clears it when it is back) with the
//!   node heartbeat, and the leader session (`pg_try_advisory_lock`, lost with its connection).

pub mod import;
mod leases;
mod nodes;
mod notices;
mod ops;
mod partners;
mod rows;
pub mod schema;
pub mod setting;
pub mod sql;
pub mod tls;

use crate::model::{DeadLetter, Delivery, Endpoint, EndpointHealth, Event};
use crate::store::{
    Counters, DeadLetterFilter, Fault, MasterKeys, NodeInfo, QueueHead, StoreError,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How long an operation waits for a connection, a connect, or the database's answer before it
/// is answered [`StoreError::Unavailable`]: a few seconds, not a TCP timeout.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the probe checks the database (and how soon a recovery is noticed).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Ingest groups committing at once: each waits for its commit's flush, so several overlap it.
const INGEST_COMMITTERS: usize = 4;
/// The node heartbeat, in probe ticks.
const HEARTBEAT_TICKS: u32 = 2;
/// Probe ticks between the leader's removals of nodes not seen for a day.
const FORGET_TICKS: u32 = 10;
/// The endpoint cache is reloaded this often, in probe ticks, besides every `NOTIFY`.
const REFRESH_TICKS: u32 = 5;

/// What opening needs: the `[storage.postgres]` settings, resolved.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string. Never logged (it may hold a password).
    pub url: String,
    pub pool_size: usize,
    pub lease: Duration,
    pub node_name: String,
    pub keys: MasterKeys,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// Handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    config: tokio_postgres::Config,
    /// TLS as `sslmode`/`sslrootcert` ask, for every connection made here.
    tls: tls::MakeRustls,
    node: String,
    lease_ms: u64,
    keys: MasterKeys,
    endpoints: RwLock<BTreeMap<u64, Arc<Endpoint>>>,
    /// Why the database cannot be reached, while it cannot; see [`PgStore::note`].
    fault: Mutex<Option<String>>,
    wake: Arc<Notify>,
    leader: AtomicBool,
    /// This node's open claims (delivery seq → fence): claimed, not yet settled or released.
    claims: Mutex<HashMap<u64, u64>>,
    oldest_pending: Mutex<Option<u64>>,
    ingest: mpsc::Sender<ops::IngestJob>,
    settles: mpsc::Sender<ops::SettleJob>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

/// Marks a rolled-back conflict (deadlock, serialization failure) in an `Unavailable` message.
pub(crate) const CONFLICT_MARK: &str = "transaction conflict, retried";

/// A database error as the daemon answers it: connection trouble (and a deadlock or serialization
/// failure, which a retry resolves) is [`StoreError::Unavailable`]; anything else is
/// [`StoreError::Database`]. The message is PostgreSQL's, never a statement's parameters.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if code == "40P01" || code == "40001" {
                return StoreError::Unavailable(format!(
                    "PostgreSQL: {} ({CONFLICT_MARK})",
                    db.message()
                ));
            }
            let transient = ["08", "53", "57P", "40001", "40P01", "55"]
                .iter()
                .any(|p| code.starts_with(p));
            if transient {
                StoreError::Unavailable(format!("PostgreSQL: {}", db.message()))
            } else {
                StoreError::Database(format!("PostgreSQL: {} (SQLSTATE {code})", db.message()))
            }
        }
        None => StoreError::Unavailable(format!("PostgreSQL cannot be reached: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(format!("PostgreSQL cannot be reached: {other}")),
    }
}

impl PgStore {
    /// Connects, brings the schema up to date (or refuses a newer one), loads the endpoints and
    /// starts the background tasks. Needs a tokio runtime.
    pub async fn open(opts: PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, tls) = tls::connect_config(&opts.url, "storage.postgres.url")?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("preflix-webhookd");
        let (mut client, connection) =
            tokio::time::timeout(OP_TIMEOUT, config.connect(tls.clone()))
                .await
                .map_err(|_| StoreError::Unavailable("connecting to PostgreSQL timed out".into()))?
                .map_err(|e| tls::connect_error(e, "storage.postgres.url"))?;
        let driver = tokio::spawn(connection);
        schema::migrate(&mut client).await?;
        drop(client);
        let _ = driver.await;

        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(opts.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("PostgreSQL pool: {e}")))?;
        let (ingest, ingest_rx) = mpsc::channel(4096);
        let (settles, settle_rx) = mpsc::channel(4096);
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                config,
                tls,
                node: opts.node_name.clone(),
                lease_ms: opts.lease.as_millis() as u64,
                keys: opts.keys,
                endpoints: RwLock::new(BTreeMap::new()),
                fault: Mutex::new(None),
                wake: Arc::new(Notify::new()),
                leader: AtomicBool::new(false),
                claims: Mutex::new(HashMap::new()),
                oldest_pending: Mutex::new(None),
                ingest,
                settles,
                tasks: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        };
        {
            let client = store.client().await?;
            client
                .execute(sql::COUNTERS_ROW, &[&store.inner.node])
                .await
                .map_err(db_error)?;
        }
        store.load_endpoints(true).await?;
        store.heartbeat().await?;
        let ingest_rx = Arc::new(tokio::sync::Mutex::new(ingest_rx));
        let settle_rx = Arc::new(tokio::sync::Mutex::new(settle_rx));
        let mut tasks = vec![
            tokio::spawn(store.clone().listen_loop()),
            tokio::spawn(store.clone().probe_loop()),
            tokio::spawn(store.clone().leader_loop()),
        ];
        for _ in 0..INGEST_COMMITTERS {
            tasks.push(tokio::spawn(store.clone().ingest_loop(ingest_rx.clone())));
        }
        for _ in 0..2 {
            tasks.push(tokio::spawn(store.clone().settle_loop(settle_rx.clone())));
        }
        *store.inner.tasks.lock().expect("tasks lock") = tasks;
        tracing::info!(node = %store.inner.node, schema = schema::VERSION, "PostgreSQL store open");
        Ok(store)
    }

    /// Stops the background tasks, removes this node's row from `nodes` (its `counters` row
    /// stays) and closes the pool; its claims, if any are left, are taken over when their lease
    /// runs out.
    pub async fn close(&self) -> Result<(), StoreError> {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for t in tasks {
            t.abort();
        }
        // The heartbeat has stopped: leave `/status`'s list of nodes at once.
        if let Err(e) = self.leave().await {
            tracing::debug!(error = %e, "could not remove this node's row");
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pool.close();
        Ok(())
    }

    /// A pooled connection, or [`StoreError::Unavailable`] within [`OP_TIMEOUT`] (and the store
    /// marked unavailable).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let got = self.inner.pool.get().await.map_err(pool_error);
        self.note(got)
    }

    /// Marks the store unavailable when `r` says the database cannot be reached.
    pub(crate) fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unavailable(why)) = &r {
            if why.contains(CONFLICT_MARK) {
                // A deadlock or serialization failure says nothing about the database being there.
                return r;
            }
            let mut fault = self.inner.fault.lock().expect("fault lock");
            if fault.is_none() {
                tracing::warn!(error = %why, "PostgreSQL unavailable");
            }
            *fault = Some(why.clone());
        }
        r
    }

    /// The error every change gets while the database cannot be reached.
    pub(crate) fn fault_error(&self) -> Option<StoreError> {
        self.inner
            .fault
            .lock()
            .expect("fault lock")
            .clone()
            .map(StoreError::Unavailable)
    }

    /// The claims table of this node.
    pub(crate) fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.inner.claims.lock().expect("claims lock")
    }

    /// Whether this node has an attempt of the delivery under way.
    pub fn is_claimed(&self, delivery_seq: u64) -> bool {
        self.claims().contains_key(&delivery_seq)
    }

    /// Runs `op` with a deadline of [`OP_TIMEOUT`].
    pub(crate) async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            )),
        };
        self.note(r)
    }

    pub fn node_name(&self) -> &str {
        &self.inner.node
    }

    pub fn lease_ms(&self) -> u64 {
        self.inner.lease_ms
    }

    /// True while this node holds the leader lock (retention and endpoint auto-disable).
    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::Acquire)
    }

    /// The store's fault, if the database cannot be reached now.
    pub fn fault(&self) -> Option<(Fault, String)> {
        self.inner
            .fault
            .lock()
            .expect("fault lock")
            .clone()
            .map(|why| (Fault::Unavailable, why))
    }

    /// False while the database cannot be reached: the scheduler claims nothing, ingest gets 503.
    pub fn writable(&self) -> bool {
        self.inner.fault.lock().expect("fault lock").is_none()
    }

    /// Refuses ingest while the database cannot be reached (no size limit on this backend).
    pub fn admit_ingest(&self, _max_bytes: u64) -> Result<(), StoreError> {
        match self.fault_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Notified when deliveries may have become due, on this node or (through `NOTIFY`) another.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.read_endpoints().values().cloned().collect()
    }

    pub fn endpoint(&self, num: u64) -> Option<Arc<Endpoint>> {
        self.read_endpoints().get(&num).cloned()
    }

    fn read_endpoints(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Endpoint>>> {
        self.inner
            .endpoints
            .read()
            .expect("endpoint cache lock is never poisoned")
    }

    pub(crate) fn cache_endpoint(&self, ep: Endpoint) {
        self.inner
            .endpoints
            .write()
            .expect("endpoint cache lock is never poisoned")
            .insert(ep.num, Arc::new(ep));
    }

    pub(crate) fn uncache_endpoint(&self, num: u64) {
        self.inner
            .endpoints
            .write()
            .expect("endpoint cache lock is never poisoned")
            .remove(&num);
    }

    /// Reads every endpoint into the cache. At open (`reseal`), endpoints whose secrets are not in
    /// the form the current master key asks for are written again in it.
    async fn load_endpoints(&self, reseal: bool) -> Result<(), StoreError> {
        let loaded = self
            .timed(async {
                let client = self.client().await?;
                let rows = client
                    .query(sql::ENDPOINTS_ALL, &[])
                    .await
                    .map_err(db_error)?;
                let mut map = BTreeMap::new();
                let mut stale = Vec::new();
                for row in &rows {
                    let (ep, is_stale) = rows::endpoint(row, &self.inner.keys)?;
                    if is_stale {
                        stale.push(ep.num);
                    }
                    map.insert(ep.num, Arc::new(ep));
                }
                if reseal && !stale.is_empty() {
                    for num in &stale {
                        let json = rows::endpoint_json(&map[num], &self.inner.keys);
                        client
                            .execute(
                                sql::ENDPOINT_SECRETS_UPDATE,
                                &[&rows::i(*num), &json.secrets],
                            )
                            .await
                            .map_err(db_error)?;
                    }
                    tracing::info!(
                        endpoints = stale.len(),
                        "endpoint secrets rewritten in the form the master key setting asks for"
                    );
                }
                Ok(map)
            })
            .await?;
        let changed = {
            let mut cache = self
                .inner
                .endpoints
                .write()
                .expect("endpoint cache lock is never poisoned");
            let changed = *cache != loaded;
            *cache = loaded;
            changed
        };
        if changed {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Reloads the endpoint cache now (it also follows `NOTIFY` and reloads every few seconds).
    pub async fn refresh_endpoints_now(&self) -> Result<(), StoreError> {
        self.load_endpoints(false).await
    }

    /// The value of a cluster-wide setting, made by `generate` and stored by the first node that
    /// asks (every node then reads the same one): the admin token, the notification secret.
    pub async fn shared_setting(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        let value = generate();
        self.timed(async {
            let client = self.client().await?;
            client
                .execute(sql::SETTING_INSERT, &[&name, &value])
                .await
                .map_err(db_error)?;
            let row = client
                .query_one(sql::SETTING_GET, &[&name])
                .await
                .map_err(db_error)?;
            Ok(row.get(0))
        })
        .await
    }

    // Reads (statements prepared once per connection).

    async fn read_all(
        &self,
        q: &str,
        p: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let st = client.prepare_cached(q).await.map_err(db_error)?;
        client.query(&st, p).await.map_err(db_error)
    }

    async fn read_opt(
        &self,
        q: &str,
        p: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        Ok(self.read_all(q, p).await?.into_iter().next())
    }

    async fn read_one(
        &self,
        q: &str,
        p: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, StoreError> {
        self.read_opt(q, p)
            .await?
            .ok_or_else(|| StoreError::Database("PostgreSQL returned no row".into()))
    }

    pub async fn counters(&self) -> Result<Counters, StoreError> {
        self.timed(async {
            let row = self.read_one(sql::COUNTERS_SUM, &[]).await?;
            let g = |i: usize| rows::u(row.get::<_, i64>(i));
            Ok(Counters {
                events: g(0),
                deliveries_created: g(1),
                deliveries_succeeded: g(2),
                deliveries_dead: g(3),
                deliveries_cancelled: g(4),
                attempts_failed: g(5),
                attempts_succeeded: g(6),
                pending: g(7),
                retrying: g(8),
                dead_letters: g(9),
            })
        })
        .await
    }

    /// Attempts under way in the whole cluster: deliveries with an unexpired lease.
    pub async fn in_flight(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.count(sql::IN_FLIGHT, rows::i(now_ms)).await
    }

    /// Attempts under way in the whole cluster, and how many of them are retries.
    pub async fn in_flight_split(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        self.timed(async {
            let row = self
                .read_one(sql::IN_FLIGHT_SPLIT, &[&rows::i(now_ms)])
                .await?;
            Ok((rows::u(row.get(0)), rows::u(row.get(1))))
        })
        .await
    }

    /// Pending deliveries of one endpoint: those under way on this node included (the scheduler
    /// takes its own off), those under way on another node not.
    pub async fn endpoint_pending(&self, num: u64) -> Result<u64, StoreError> {
        let now = rows::i(crate::api::now_ms());
        self.timed(async {
            let row = self
                .client()
                .await?
                .query_one(
                    sql::ENDPOINT_PENDING,
                    &[&rows::i(num), &now, &self.inner.node],
                )
                .await
                .map_err(db_error)?;
            Ok(rows::u(row.get(0)))
        })
        .await
    }

    async fn count(&self, query: &str, arg: i64) -> Result<u64, StoreError> {
        self.timed(async {
            let row = self.read_one(query, &[&arg]).await?;
            Ok(rows::u(row.get(0)))
        })
        .await
    }

    /// The nodes that have ever run on this database, with their last heartbeat.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.timed(async {
            let rows = self
                .read_all(nodes::RECENT, &[&self.seen_since_ms()])
                .await?;
            Ok(rows
                .iter()
                .map(|r| NodeInfo {
                    name: r.get(0),
                    last_seen_ms: rows::u(r.get(1)),
                    in_flight: r.get::<_, i32>(2).max(0) as u64,
                })
                .collect())
        })
        .await
    }

    pub async fn health(&self, num: u64) -> Result<EndpointHealth, StoreError> {
        self.timed(async {
            let row = self
                .read_opt(sql::ENDPOINT_HEALTH, &[&rows::i(num)])
                .await?;
            Ok(row.map(|r| rows::health(&r, 0)).unwrap_or_default())
        })
        .await
    }

    pub async fn event_by_id(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.timed(async {
            let row = self.read_opt(sql::EVENT_BY_ID, &[&id]).await?;
            row.as_ref().map(rows::event).transpose()
        })
        .await
    }

    pub async fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.timed(async {
            let row = self.read_opt(sql::EVENT_BY_SEQ, &[&rows::i(seq)]).await?;
            row.as_ref().map(rows::event).transpose()
        })
        .await
    }

    pub async fn delivery_of(
        &self,
        event: &Event,
        seq: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        self.timed(async {
            let row = self
                .read_opt(
                    sql::DELIVERY_OF_EVENT,
                    &[&rows::i(event.seq), &rows::i(seq)],
                )
                .await?;
            row.as_ref().map(rows::delivery).transpose()
        })
        .await
    }

    /// The deliveries of one event, oldest first.
    pub async fn event_deliveries(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        self.timed(async {
            let rows = self
                .read_all(sql::DELIVERIES_OF_EVENT, &[&rows::i(event.seq)])
                .await?;
            rows.iter().map(rows::delivery).collect()
        })
        .await
    }

    /// Events in reception order, starting after event seq `after`.
    pub async fn events_from(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.timed(async {
            let rows = self
                .read_all(sql::EVENTS_FROM, &[&rows::i(after), &(limit as i64)])
                .await?;
            rows.iter().map(rows::event).collect()
        })
        .await
    }

    pub async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.timed(async {
            let row = self.read_opt(sql::DEAD_LETTER, &[&rows::i(seq)]).await?;
            row.as_ref().map(rows::dead_letter).transpose()
        })
        .await
    }

    /// Dead letters after seq `after`, oldest first, that `filter` keeps, up to `limit`.
    pub async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        if filter.scope.is_some() {
            return self.dead_letters_scoped(after, limit, filter).await;
        }
        let endpoint = filter.endpoint_num.map(rows::i);
        let event_type = filter.event_type.as_deref();
        self.timed(async {
            let rows = self
                .read_all(
                    sql::DEAD_LETTERS_MATCHING,
                    &[&rows::i(after), &endpoint, &event_type, &(limit as i64)],
                )
                .await?;
            rows.iter().map(rows::dead_letter).collect()
        })
        .await
    }

    /// The head of an endpoint's queue: its earliest due time (its first delivery's, when
    /// ordered). A delivery claimed by some node counts as due at its lease's end.
    pub async fn queue_head(&self, ep: &Endpoint) -> Result<Option<QueueHead>, StoreError> {
        let query = if ep.ordered {
            sql::QUEUE_HEAD_ORDERED
        } else {
            sql::QUEUE_HEAD
        };
        self.timed(async {
            let row = self.read_opt(query, &[&rows::i(ep.num)]).await?;
            Ok(row
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .map(|due| QueueHead {
                    due_ms: rows::u(due),
                    earliest: true,
                }))
        })
        .await
    }

    /// When the oldest pending delivery was created, as of the last refresh.
    pub fn oldest_pending_since(&self) -> Option<u64> {
        *self.inner.oldest_pending.lock().expect("oldest lock")
    }

    /// Reads the oldest pending delivery's creation again (housekeeping, once a second).
    pub async fn refresh_oldest_pending(&self) -> Result<(), StoreError> {
        let oldest = self
            .timed(async {
                let row = self.read_one(sql::OLDEST_PENDING, &[]).await?;
                Ok(row.get::<_, Option<i64>>(0).map(rows::u))
            })
            .await?;
        *self.inner.oldest_pending.lock().expect("oldest lock") = oldest;
        Ok(())
    }

    // Background tasks.

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let in_flight = self.claims().len() as i32;
        let now = rows::i(crate::api::now_ms());
        self.timed(async {
            self.client()
                .await?
                .execute(sql::NODE_HEARTBEAT, &[&self.inner.node, &now, &in_flight])
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    /// Once a second: is the database there? Sets or clears the fault; heartbeats; reloads endpoints.
    async fn probe_loop(self) {
        let mut tick: u32 = 0;
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            tick = tick.wrapping_add(1);
            let probe = self
                .timed(async {
                    self.client()
                        .await?
                        .simple_query("SELECT 1")
                        .await
                        .map_err(db_error)?;
                    Ok(())
                })
                .await;
            if probe.is_err() {
                continue;
            }
            if self
                .inner
                .fault
                .lock()
                .expect("fault lock")
                .take()
                .is_some()
            {
                tracing::info!("PostgreSQL reachable again");
                let _ = self.load_endpoints(false).await;
                self.inner.wake.notify_one();
            }
            if tick % HEARTBEAT_TICKS == 0 {
                let _ = self.heartbeat().await;
            }
            if tick % FORGET_TICKS == 0 {
                let _ = self.forget_stale_nodes().await;
            }
            if tick % REFRESH_TICKS == 0 {
                let _ = self.load_endpoints(false).await;
            }
        }
    }

    /// The `LISTEN` connection, reconnected in a loop: `webhookd_due` wakes the scheduler,
    /// `webhookd_endpoints` reloads the endpoint cache.
    async fn listen_loop(self) {
        loop {
            if let Err(e) = self.listen_once().await {
                tracing::debug!(error = %e, "PostgreSQL LISTEN connection lost");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn listen_once(&self) -> Result<(), StoreError> {
        let (client, mut connection) = tokio::time::timeout(
            OP_TIMEOUT,
            self.inner.config.connect(self.inner.tls.clone()),
        )
        .await
        .map_err(|_| StoreError::Unavailable("connect timed out".into()))?
        .map_err(db_error)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.channel().to_string()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        let listening = client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                sql::CHANNEL_DUE,
                sql::CHANNEL_ENDPOINTS
            ))
            .await
            .map_err(db_error);
        if let Err(e) = listening {
            driver.abort();
            return Err(e);
        }
        // Whatever was notified while not listening: catch up.
        let _ = self.load_endpoints(false).await;
        self.inner.wake.notify_one();
        while let Some(channel) = rx.recv().await {
            if channel == sql::CHANNEL_DUE {
                self.inner.wake.notify_one();
            } else {
                let _ = self.load_endpoints(false).await;
            }
        }
        drop(client);
        Ok(())
    }

    /// Tries to become the leader on a session of its own; the lock is PostgreSQL's, so it goes
    /// with the session when this node dies or loses its connection, and another node takes it.
    async fn leader_loop(self) {
        loop {
            let _ = self.lead_once().await;
            self.inner.leader.store(false, Ordering::Release);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn lead_once(&self) -> Result<(), StoreError> {
        let (client, connection) = tokio::time::timeout(
            OP_TIMEOUT,
            self.inner.config.connect(self.inner.tls.clone()),
        )
        .await
        .map_err(|_| StoreError::Unavailable("connect timed out".into()))?
        .map_err(db_error)?;
        let mut driver = tokio::spawn(connection);
        loop {
            let asked = tokio::time::timeout(OP_TIMEOUT, async {
                if self.is_leader() {
                    client.simple_query("SELECT 1").await.map(|_| true)
                } else {
                    client
                        .query_one(sql::LEADER_TRY, &[&sql::LOCK_LEADER])
                        .await
                        .map(|r| r.get::<_, bool>(0))
                }
            })
            .await;
            match asked {
                Ok(Ok(leads)) => {
                    if leads && !self.is_leader() {
                        tracing::info!(node = %self.inner.node, "this node is now the leader (retention, endpoint auto-disable)");
                    }
                    self.inner.leader.store(leads, Ordering::Release);
                }
                _ => {
                    driver.abort();
                    return Err(StoreError::Unavailable("leader session lost".into()));
                }
            }
            tokio::select! {
                _ = &mut driver => return Err(StoreError::Unavailable("leader session lost".into())),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}
