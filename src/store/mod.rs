//! The storage seam: the one interface the API, the scheduler and housekeeping use, whichever backend is behind it.
//!
//! [`Store`] is an enum with one variant per backend; each method is one operation of this daemon
//! (ingest a group of events, claim due deliveries, settle an attempt, list dead letters, ...) and
//! dispatches with a `match`. No backend's types appear in a signature here: only the types of
//! this module and of [`crate::model`]. The backends:
//!
//! - [`sled`]: the embedded default, one process; the only module that imports sled.
//!
//! Reads the API makes many times per request and that every backend serves from a node-local
//! cache are sync ([`Store::endpoints`], [`Store::endpoint`], [`Store::writable`], [`Store::fault`],
//! [`Store::wake_handle`], [`Store::is_claimed`]); everything else is `async`, even where sled
//! answers at once, so a backend over the network fits behind the same methods. What only means
//! something for one backend (sled's directory, its size on disk, the damage mark) answers `None`
//! or does nothing on the others.
//!
//! ## Claims
//!
//! The scheduler never reads a queue. For each endpoint with work it asks [`Store::claim`] for up to
//! `room` due deliveries that its node-local budget admits ([`ClaimAsk`]); the backend applies the
//! per-endpoint rules that must hold wherever the delivery is attempted from (`ordered`: only the
//! head, and only when nothing of the endpoint is under way) and hands back, per delivery, what the
//! attempt needs ([`Claimed`]). The attempt's outcome goes to [`Store::settle`] with its [`Claim`];
//! then (or when the attempt is cut off at the end of the shutdown grace) [`Store::release`] ends
//! the claim. `fence` is the claim's token: a backend whose claims can be taken over by another
//! node answers a settle whose claim is no longer its own with [`StoreError::Fenced`], and the
//! scheduler drops that outcome. On sled claims live in memory, `fence` is 0 and settle never
//! answers `Fenced`.

mod partners;
pub mod postgres;
pub mod sled;
pub mod transfer;

#[doc(hidden)]
pub mod contract;

pub use self::sled::sealing::{MasterKey, MasterKeys};
pub use self::sled::watermark::DamageMark;
pub use self::sled::{check, compact, CheckReport, Compacted};

use crate::config::Config;
use crate::model::{
    Attempt, DeadLetter, DeadReason, Delivery, Endpoint, EndpointHealth, Environment, Event,
    PartnerScope,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled's own error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::SledError),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    /// The endpoint secrets cannot be opened with the master keys given (none, or the wrong one).
    #[error("{0}")]
    MasterKey(#[from] sled::sealing::SealError),
    /// The filesystem is full, or the store is at `storage.max_bytes`; retry later.
    #[error("the store is full: {0}")]
    Full(String),
    /// A write or sync failed and the store is being reopened; retry shortly.
    #[error("the store cannot be written now: {0}")]
    Unavailable(String),
    /// The store holds less than its watermark says it did (see [`sled::watermark`]).
    #[error("the store in {} is damaged: {}", dir.display(), missing.join("; "))]
    Damaged { dir: PathBuf, missing: Vec<String> },
    /// A settle whose claim is no longer this node's (its lease ran out and another node took the
    /// delivery over): the outcome is dropped. Never on sled.
    #[error("the claim on this delivery is no longer this node's")]
    Fenced,
    /// The PostgreSQL database has a newer schema than this binary knows: it refuses to start.
    #[error("{0}")]
    SchemaTooNew(String),
    /// PostgreSQL refused a statement for another reason than being unreachable.
    #[error("{0}")]
    Database(String),
    /// TLS to PostgreSQL as configured cannot work (certificate refused, `sslrootcert` unreadable,
    /// TLS asked for and not offered, or demanded by the server under `sslmode=disable`): a
    /// setting to change, said in the message.
    #[error("{0}")]
    Tls(String),
}

impl StoreError {
    /// True when the stored data itself is damaged or unreadable (as opposed to the store being
    /// busy, closed or the disk failing): the daemon refuses to start on it with exit code 65.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Damaged { .. } | StoreError::Corrupt(_) => true,
            StoreError::Sled(e) => e.is_corruption(),
            _ => false,
        }
    }
}

/// How [`Store::open`] treats a damaged store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Start with what survives instead of refusing (`serve --accept-data-loss`): the loss is
    /// logged at error level, recorded in `damaged.json` (shown by `/status`), and the watermark is
    /// reset to what the store holds.
    pub accept_data_loss: bool,
}

/// Running totals kept in the same transactions as the changes they count, so they never drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events: u64,
    pub deliveries_created: u64,
    pub deliveries_succeeded: u64,
    pub deliveries_dead: u64,
    pub deliveries_cancelled: u64,
    pub attempts_failed: u64,
    pub attempts_succeeded: u64,
    /// Deliveries with status pending (including those with an attempt under way).
    pub pending: u64,
    /// Pending deliveries that have failed at least once in their current round.
    pub retrying: u64,
    pub dead_letters: u64,
}

/// Why the store cannot be written now (see [`Store::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No space left (the filesystem, or a quota).
    Full,
    /// Any other write or sync failure: the store is being reopened.
    Unavailable,
}

/// Where a delivery is: its event and its own number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub event_seq: u64,
    pub seq: u64,
}

/// An event ready to store: validated, with its delivery body built and its content hashed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub partner_id: String,
    pub environment: Environment,
    pub event_type: String,
    pub created_at: String,
    pub received_at_ms: u64,
    pub payload: Vec<u8>,
    pub content_hash: [u8; 32],
    /// Deliver to this endpoint alone (test events), instead of every matching one.
    pub only_endpoint: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted {
        deliveries: u32,
    },
    Duplicate {
        deliveries: u32,
    },
    Conflict,
    /// The event was for one endpoint alone (a test event) and that endpoint may not get it.
    Refused(DeliveryRefused),
}

/// Why a delivery was not created: the endpoint belongs to another partner, or to the same
/// partner's other environment (contract section 7). An answer, not a storage error: the rest of
/// the group commits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryRefused(String);

/// Who an event is for: all [`admit`] looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Audience<'a> {
    pub event_id: &'a str,
    pub partner_id: &'a str,
    pub environment: Environment,
}

/// The one gate of contract section 7, for every backend: an event's deliveries go to its own
/// partner's endpoints of its own environment, whatever path asks for them. Every path that creates
/// a delivery (ingest, test events, redeliver, recover) or gives a dead one a new round (dead-letter
/// retry) passes here, inside the transaction that writes the delivery, against the endpoint as
/// that transaction sees it.
pub(crate) fn admit(event: Audience<'_>, ep: &Endpoint) -> Result<(), DeliveryRefused> {
    if ep.partner_id != event.partner_id {
        return Err(DeliveryRefused(format!(
            "endpoint {} belongs to another partner than event `{}` (partner `{}`): an event is \
             delivered only to its own partner's endpoints",
            ep.id(),
            event.event_id,
            event.partner_id
        )));
    }
    if ep.environment != event.environment {
        return Err(DeliveryRefused(format!(
            "endpoint {} is a {} endpoint and event `{}` is a {} event: sandbox and production \
             never mix",
            ep.id(),
            ep.environment.as_str(),
            event.event_id,
            event.environment.as_str()
        )));
    }
    Ok(())
}

/// One node's claim on one delivery, for [`Store::settle`] and [`Store::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub delivery: DeliveryKey,
    pub endpoint_num: u64,
    /// The claim's token, which settle checks; 0 on sled.
    pub fence: u64,
}

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub claim: Claim,
    /// It was attempted before and waits for its next attempt: the scheduler's reserve of slots is
    /// for first attempts only, and [`ClaimAsk::admits`] is asked with this.
    pub retry: bool,
    pub event: Event,
    /// The delivery as it stands before this attempt.
    pub delivery: Delivery,
}

/// What the scheduler lets one endpoint start in one [`Store::claim`].
#[derive(Clone, Copy)]
pub struct ClaimAsk<'a> {
    pub now_ms: u64,
    /// Claim at most this many.
    pub room: usize,
    /// Whether the n-th delivery claimed in this call (0-based) may start, given whether it is a
    /// retry (the node's slot rules). A delivery it refuses is left waiting, and so is everything
    /// behind it on an ordered endpoint.
    pub admits: &'a (dyn Fn(usize, bool) -> bool + Sync),
    /// Until when the node holds a delivery (by seq) back after its outcome could not be stored,
    /// if it does: such a delivery waits like one not yet due.
    pub held_until: &'a (dyn Fn(u64) -> Option<u64> + Sync),
}

/// What one [`Store::claim`] found.
#[derive(Debug, Default)]
pub struct ClaimRound {
    /// Claimed, in queue order.
    pub claimed: Vec<Claimed>,
    /// The earliest time something not claimed now becomes due (or stops being held back).
    pub next_due_ms: Option<u64>,
    /// Due deliveries were left that the room or the slot rules did not let start: the endpoint
    /// still has work (it takes part in the fair share while it has attempts under way).
    pub wants_more: bool,
    /// Nothing was claimed because the due deliveries found were all retries that
    /// [`ClaimAsk::admits`] refused: the scheduler waits a moment before it asks again.
    pub only_retries: bool,
}

/// The head of an endpoint's queue (see [`Store::queue_head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueHead {
    pub due_ms: u64,
    /// Nothing of the endpoint is due before `due_ms`. False when the queue's order does not say
    /// (on sled: entries still in the ordered form after `ordered` was switched off).
    pub earliest: bool,
}

/// How one attempt ended, as the scheduler decided it.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub claim: Claim,
    /// The delivery as read before the attempt. While a delivery has no record it is still in its
    /// initial state, so this stands for it and the commit need not read its event.
    pub as_read: Delivery,
    pub attempt: Attempt,
    pub outcome: SettleOutcome,
    /// Disable the endpoint when it has failed without a success for this long.
    pub disable_after_ms: u64,
}

impl Settlement {
    /// How this attempt changes its endpoint's health, and the reason to disable the endpoint if it
    /// must be (a 410, or failing without a success for `disable_after_ms`): the one rule both
    /// backends apply inside their settle transaction.
    pub fn apply_to_health(&self, health: &mut EndpointHealth) -> Option<String> {
        let now = self.attempt.at_ms;
        health.last_status_code = self.attempt.status_code;
        if self.outcome == SettleOutcome::Succeeded {
            health.consecutive_failures = 0;
            health.last_success_at_ms = Some(now);
            health.failing_since_ms = None;
            return None;
        }
        health.last_error = Some(match (&self.attempt.error, self.attempt.status_code) {
            (Some(error), _) => error.clone(),
            (None, Some(code)) => format!("HTTP {code}"),
            (None, None) => "no response".to_string(),
        });
        health.consecutive_failures += 1;
        health.last_failure_at_ms = Some(now);
        let since = *health.failing_since_ms.get_or_insert(now);
        if self.outcome
            == (SettleOutcome::Dead {
                reason: DeadReason::EndpointGone,
            })
        {
            return Some("the endpoint answered 410 Gone".to_string());
        }
        (now.saturating_sub(since) >= self.disable_after_ms).then(|| {
            format!(
                "failing without a success since {}",
                crate::model::format_time(since)
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOutcome {
    Succeeded,
    Retry { at_ms: u64 },
    Dead { reason: DeadReason },
}

/// What [`Store::retry_dead_letters`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Dead letters that left the queue (their delivery requeued, or gone with its endpoint).
    pub requeued: u32,
    /// Dead letters kept because their endpoint may not get their event.
    pub refused: Vec<DeliveryRefused>,
}

/// Which dead letters a listing keeps; `None` keeps any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this partner's (and environment's, when set) dead letters: a partner token's scope.
    /// A dead letter belongs to its endpoint's partner and environment (the section 7 gate made them
    /// its event's too), or to its event's once the endpoint is gone.
    pub scope: Option<PartnerScope>,
    pub endpoint_num: Option<u64>,
    /// The type of the dead letter's event.
    pub event_type: Option<String>,
}

/// Which events [`Store::events_matching`] keeps; `None` keeps any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this partner's (and environment's, when set) events: a partner token's scope.
    pub scope: Option<PartnerScope>,
    /// Only events with a delivery (of any status) to this endpoint.
    pub endpoint_num: Option<u64>,
    pub event_type: Option<String>,
}

/// The partner id of the operator endpoint; no partner can have it.
pub const OPERATOR_PARTNER: &str = "@operator";

impl NewEvent {
    /// A notification to the operator (contract section 10) with the id `id`: its body is the
    /// same JSON envelope as a partner event's, `{"created_at","id","type","data"}`. Both backends
    /// make their notifications with it.
    pub fn notice(id: String, event_type: &str, data: &serde_json::Value, now_ms: u64) -> NewEvent {
        use sha2::{Digest, Sha256};
        let created_at = crate::api::time_seconds(now_ms);
        let data_bytes = serde_json::to_vec(data).expect("a JSON value serializes");
        let mut payload = serde_json::to_vec(&serde_json::json!({
            "id": id, "type": event_type, "created_at": created_at,
        }))
        .expect("a JSON value serializes");
        // {"created_at":..,"id":..,"type":..} + ,"data":{...}}
        payload.pop();
        payload.extend_from_slice(b",\"data\":");
        payload.extend_from_slice(&data_bytes);
        payload.push(b'}');
        let mut hash = Sha256::new();
        hash.update(id.as_bytes());
        hash.update(&data_bytes);
        NewEvent {
            id,
            partner_id: OPERATOR_PARTNER.to_string(),
            environment: Environment::Production,
            event_type: event_type.to_string(),
            created_at,
            received_at_ms: now_ms,
            payload,
            content_hash: hash.finalize().into(),
            only_endpoint: None,
        }
    }
}

/// What a notification round is told from outside the store.
#[derive(Debug, Clone, Copy)]
pub struct NoticeRound {
    pub now_ms: u64,
    /// `endpoint.failing` after an endpoint has failed this long without a success.
    pub failing_after_ms: u64,
    /// At most one `delivery.dead_lettered` per this window.
    pub dead_letter_window_ms: u64,
    /// `queue.stalled` past this age of the oldest pending delivery.
    pub stalled_after_ms: u64,
}

/// A node of a PostgreSQL cluster, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Its last heartbeat (every 2 s while it runs).
    pub last_seen_ms: u64,
    /// Attempts it had under way at that heartbeat.
    pub in_flight: u64,
}

/// Handle to the open store, whichever backend; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sled(sled::SledStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the backend `config.storage` names. Blocking work runs off the runtime's threads.
    pub async fn open(
        config: &Config,
        keys: MasterKeys,
        options: OpenOptions,
    ) -> Result<Store, StoreError> {
        let dir = config.storage.dir.clone();
        tokio::task::spawn_blocking(move || {
            sled::SledStore::open_checked(&dir, sled::CACHE_BYTES, keys, options)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("opening it failed: {e}")))?
        .map(Store::Sled)
    }

    /// Opens the PostgreSQL backend: connects, migrates the schema (or refuses a newer one),
    /// loads the endpoints and starts its background tasks.
    pub async fn open_postgres(options: postgres::PgOptions) -> Result<Store, StoreError> {
        postgres::PgStore::open(options).await.map(Store::Postgres)
    }

    /// A value every node of a cluster shares (the admin token, the notification secret): the one
    /// in the database, made by `generate` by the first node that asks. `None` on sled.
    pub async fn shared_setting(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sled(_) => Ok(None),
            Store::Postgres(s) => s.shared_setting(name, generate).await.map(Some),
        }
    }

    /// The nodes sharing the database, for `/status`; `None` on sled.
    pub async fn nodes(&self) -> Result<Option<Vec<NodeInfo>>, StoreError> {
        match self {
            Store::Sled(_) => Ok(None),
            Store::Postgres(s) => s.nodes().await.map(Some),
        }
    }

    /// Attempts under way in the whole cluster and how many of them are retries; `None` on sled,
    /// where the scheduler's own counts are the store's.
    pub async fn cluster_in_flight(&self, now_ms: u64) -> Result<Option<(u64, u64)>, StoreError> {
        match self {
            Store::Sled(_) => Ok(None),
            Store::Postgres(s) => s.in_flight_split(now_ms).await.map(Some),
        }
    }

    /// `"sled"` or `"postgres"`, for `/status`.
    /// This node's name in a PostgreSQL cluster; `None` on sled.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Store::Sled(_) => None,
            Store::Postgres(s) => Some(s.node_name()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sled(_) => "sled",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Makes everything written so far durable and closes the store.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.close_async().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    // Node-local reads (sync).

    /// Every endpoint, from the node's cache.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        match self {
            Store::Sled(s) => s.endpoints(),
            Store::Postgres(s) => s.endpoints(),
        }
    }

    pub fn endpoint(&self, num: u64) -> Option<Arc<Endpoint>> {
        match self {
            Store::Sled(s) => s.endpoint(num),
            Store::Postgres(s) => s.endpoint(num),
        }
    }

    /// False while the store cannot be written: the scheduler claims nothing then.
    pub fn writable(&self) -> bool {
        match self {
            Store::Sled(s) => s.writable(),
            Store::Postgres(s) => s.writable(),
        }
    }

    /// Why the store cannot be written now, if it cannot.
    pub fn fault(&self) -> Option<(Fault, String)> {
        match self {
            Store::Sled(s) => s.fault(),
            Store::Postgres(s) => s.fault(),
        }
    }

    /// Notified after every commit that may have made a delivery due or changed endpoints.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        match self {
            Store::Sled(s) => s.wake_handle(),
            Store::Postgres(s) => s.wake_handle(),
        }
    }

    /// Whether new events may be stored now (no fault, under `max_bytes`, 0: no limit, and enough
    /// free space); the refusal is the error the ingest answers with.
    pub fn admit_ingest(&self, max_bytes: u64) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.admit_ingest(max_bytes),
            Store::Postgres(s) => s.admit_ingest(max_bytes),
        }
    }

    // Backend-specific operations: answers `None` (or does nothing) where they mean nothing.

    /// sled's directory.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Store::Sled(s) => Some(s.dir()),
            Store::Postgres(_) => None,
        }
    }

    /// Set when the store was started damaged with `--accept-data-loss`, until the operator clears it.
    pub fn damage_mark(&self) -> Option<&DamageMark> {
        match self {
            Store::Sled(s) => s.damage_mark(),
            Store::Postgres(_) => None,
        }
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Option<u64> {
        match self {
            Store::Sled(s) => Some(s.size_on_disk()),
            Store::Postgres(_) => None,
        }
    }

    /// Measures the store's size and the free space again (housekeeping does, once a second).
    pub fn measure(&self) {
        match self {
            Store::Sled(s) => s.measure(),
            Store::Postgres(_) => {}
        }
    }

    /// The store's size as estimated from the last measure and what each commit added since.
    pub fn estimated_bytes(&self) -> Option<u64> {
        match self {
            Store::Sled(s) => Some(s.estimated_bytes()),
            Store::Postgres(_) => None,
        }
    }

    // Reads.

    pub async fn counters(&self) -> Result<Counters, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.counters()),
            Store::Postgres(s) => s.counters().await,
        }
    }

    /// Pending deliveries (including those under way) of one endpoint.
    pub async fn endpoint_pending(&self, num: u64) -> Result<u64, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.endpoint_pending(num)),
            Store::Postgres(s) => s.endpoint_pending(num).await,
        }
    }

    pub async fn health(&self, num: u64) -> Result<EndpointHealth, StoreError> {
        match self {
            Store::Sled(s) => s.health(num),
            Store::Postgres(s) => s.health(num).await,
        }
    }

    pub async fn event_by_id(&self, id: &str) -> Result<Option<Event>, StoreError> {
        match self {
            Store::Sled(s) => s.event_by_id(id),
            Store::Postgres(s) => s.event_by_id(id).await,
        }
    }

    pub async fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        match self {
            Store::Sled(s) => s.event(seq),
            Store::Postgres(s) => s.event(seq).await,
        }
    }

    /// The deliveries of one event, oldest first.
    pub async fn event_deliveries(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        match self {
            Store::Sled(s) => s.event_deliveries(event),
            Store::Postgres(s) => s.event_deliveries(event).await,
        }
    }

    /// Up to `limit` events in reception order, starting after event seq `after`.
    pub async fn events_from(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        match self {
            Store::Sled(s) => s.events_from(after, limit),
            Store::Postgres(s) => s.events_from(after, limit).await,
        }
    }

    pub async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self {
            Store::Sled(s) => s.dead_letter(seq),
            Store::Postgres(s) => s.dead_letter(seq).await,
        }
    }

    /// Dead letters after seq `after`, oldest first, that `filter` keeps, up to `limit`.
    pub async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        match self {
            Store::Sled(s) => s.dead_letters_matching(after, limit, filter),
            Store::Postgres(s) => s.dead_letters(after, limit, filter).await,
        }
    }

    /// The head of an endpoint's queue: when its next delivery is due (the only one that may go,
    /// when it is `ordered`); `None` when nothing of it is pending. Claimed deliveries count.
    pub async fn queue_head(&self, ep: &Endpoint) -> Result<Option<QueueHead>, StoreError> {
        match self {
            Store::Sled(s) => s.queue_head(ep),
            Store::Postgres(s) => s.queue_head(ep).await,
        }
    }

    /// When the oldest pending delivery became pending (unix ms), as of the last
    /// [`Store::refresh_oldest_pending`]; `None` when nothing was pending.
    pub async fn oldest_pending_since(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sled(s) => Ok(s.oldest_pending_since()),
            Store::Postgres(s) => Ok(s.oldest_pending_since()),
        }
    }

    /// Brings [`Store::oldest_pending_since`] up to date (housekeeping, once a second).
    pub async fn refresh_oldest_pending(&self) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.refresh_oldest_pending())
                    .await
                    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
            }
            Store::Postgres(s) => s.refresh_oldest_pending().await,
        }
    }

    // Claims (see the module's notes).

    /// Claims up to `ask.room` due deliveries of `ep` in queue order, within the endpoint's own
    /// rules and what `ask` admits, and reads what their attempts need.
    pub async fn claim(&self, ep: &Endpoint, ask: ClaimAsk<'_>) -> Result<ClaimRound, StoreError> {
        match self {
            Store::Sled(s) => s.claim(ep, ask).await,
            Store::Postgres(s) => s.claim(ep, ask).await,
        }
    }

    /// Ends a claim, after its settle or when its attempt was cut off; the delivery may be claimed
    /// again (at once if its settle did not take it out of the queue).
    pub fn release(&self, claim: Claim) {
        match self {
            Store::Sled(s) => s.release(claim),
            Store::Postgres(s) => s.release(claim),
        }
    }

    /// Whether this node has an attempt of the delivery `delivery_seq` under way.
    pub fn is_claimed(&self, delivery_seq: u64) -> bool {
        match self {
            Store::Sled(s) => s.is_claimed(delivery_seq),
            Store::Postgres(s) => s.is_claimed(delivery_seq),
        }
    }

    /// Records an attempt's outcome: attempt log, status, queue, dead letter and endpoint health,
    /// atomically; [`StoreError::Fenced`] when the claim is no longer this node's.
    pub async fn settle(&self, s: Settlement) -> Result<(), StoreError> {
        match self {
            Store::Sled(store) => store.settle(s).await,
            Store::Postgres(store) => store.settle(s).await,
        }
    }

    // Changes.

    /// Stores new events with one pending delivery per matching endpoint, durably.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<IngestOutcome>, StoreError> {
        match self {
            Store::Sled(s) => s.ingest(events).await,
            Store::Postgres(s) => s.ingest(events).await,
        }
    }

    pub async fn create_endpoint(&self, endpoint: Endpoint) -> Result<Endpoint, StoreError> {
        match self {
            Store::Sled(s) => s.create_endpoint(endpoint).await,
            Store::Postgres(s) => s.create_endpoint(endpoint).await,
        }
    }

    /// Changes an endpoint with `change`; `None` when it does not exist.
    pub async fn update_endpoint<F>(
        &self,
        num: u64,
        change: F,
    ) -> Result<Option<Endpoint>, StoreError>
    where
        F: Fn(&mut Endpoint) + Send + 'static,
    {
        match self {
            Store::Sled(s) => s.update_endpoint(num, change).await,
            Store::Postgres(s) => s.update_endpoint(num, change).await,
        }
    }

    /// Deletes an endpoint and cancels its pending deliveries; false when it does not exist.
    pub async fn delete_endpoint(&self, num: u64) -> Result<bool, StoreError> {
        match self {
            Store::Sled(s) => s.delete_endpoint(num).await,
            Store::Postgres(s) => s.delete_endpoint(num).await,
        }
    }

    /// New deliveries of stored events to endpoints (redeliver, recover). Returns how many, or,
    /// when any pair would cross partners or environments, why, with nothing created.
    pub async fn add_deliveries(
        &self,
        pairs: Vec<(u64, u64)>,
        now_ms: u64,
    ) -> Result<Result<u32, DeliveryRefused>, StoreError> {
        match self {
            Store::Sled(s) => s.add_deliveries(pairs, now_ms).await,
            Store::Postgres(s) => s.add_deliveries(pairs, now_ms).await,
        }
    }

    /// Gives dead-lettered deliveries a fresh set of attempts. A dead letter whose endpoint may not
    /// get its event stays where it is and is reported.
    pub async fn retry_dead_letters(
        &self,
        seqs: Vec<u64>,
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        match self {
            Store::Sled(s) => s.retry_dead_letters(seqs, now_ms).await,
            Store::Postgres(s) => s.retry_dead_letters(seqs, now_ms).await,
        }
    }

    pub async fn delete_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        match self {
            Store::Sled(s) => s.delete_dead_letter(seq).await,
            Store::Postgres(s) => s.delete_dead_letter(seq).await,
        }
    }

    /// Removes final events received before `before_ms` and dead letters that died before `dead_before_ms`,
    /// at most `limit` of each. Returns (events, dead letters) removed.
    pub async fn purge(
        &self,
        before_ms: u64,
        dead_before_ms: u64,
        limit: usize,
    ) -> Result<(u32, u32), StoreError> {
        match self {
            Store::Sled(s) => s.purge(before_ms, dead_before_ms, limit).await,
            Store::Postgres(s) => s.purge(before_ms, dead_before_ms, limit).await,
        }
    }

    /// On PostgreSQL, starts renewing the leases of this node's attempts under way (every third
    /// of `storage.postgres.lease`); sled has no leases.
    pub fn spawn_lease_renewal(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Store::Sled(_) => None,
            Store::Postgres(s) => Some(tokio::spawn(s.clone().renew_loop())),
        }
    }

    /// One round of the operator notifications decided by time rather than by an attempt.
    pub async fn notice_round(&self, round: NoticeRound) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.notice_round(round).await,
            Store::Postgres(s) => s.notice_round(round).await,
        }
    }
}
