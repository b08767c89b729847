//! The PostgreSQL store's changes: ingest and settles in group commits, claims with lease and
//! fence, endpoint changes, dead letters, retention. Lock order everywhere: endpoint rows (by num),
//! then delivery rows (by seq), so two transactions never wait on each other in a circle.

use super::{db_error, rows, sql, PgStore};
use crate::model::{
    Attempt, DeadReason, Delivery, DeliveryStatus, Endpoint, EndpointHealth, Event,
};
use crate::store::{
    admit, Audience, Claim, ClaimAsk, ClaimRound, Claimed, DeliveryKey, DeliveryRefused,
    IngestOutcome, NewEvent, Redriven, SettleOutcome, Settlement, StoreError, OPERATOR_PARTNER,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Tx<'a> = deadpool_postgres::Transaction<'a>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn query(tx: &Tx<'_>, q: &str, p: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let st = tx.prepare_cached(q).await.map_err(db_error)?;
    tx.query(&st, p).await.map_err(db_error)
}

async fn query_opt(tx: &Tx<'_>, q: &str, p: Params<'_>) -> Result<Option<Row>, StoreError> {
    let st = tx.prepare_cached(q).await.map_err(db_error)?;
    tx.query_opt(&st, p).await.map_err(db_error)
}

async fn execute(tx: &Tx<'_>, q: &str, p: Params<'_>) -> Result<u64, StoreError> {
    let st = tx.prepare_cached(q).await.map_err(db_error)?;
    tx.execute(&st, p).await.map_err(db_error)
}

async fn notify(tx: &Tx<'_>, channel: &str) -> Result<(), StoreError> {
    query(tx, sql::NOTIFY, &[&channel]).await.map(|_| ())
}

/// Changes to the running totals, applied to this node's `counters` row in the same transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    events: i64,
    deliveries_created: i64,
    deliveries_succeeded: i64,
    deliveries_dead: i64,
    deliveries_cancelled: i64,
    attempts_failed: i64,
    attempts_succeeded: i64,
    pending: i64,
    retrying: i64,
    dead_letters: i64,
}

impl Delta {
    async fn apply(&self, tx: &Tx<'_>, node: &str) -> Result<(), StoreError> {
        let d = self;
        if [
            d.events,
            d.deliveries_created,
            d.deliveries_succeeded,
            d.deliveries_dead,
            d.deliveries_cancelled,
            d.attempts_failed,
            d.attempts_succeeded,
            d.pending,
            d.retrying,
            d.dead_letters,
        ]
        .iter()
        .all(|v| *v == 0)
        {
            return Ok(());
        }
        execute(
            tx,
            sql::COUNTERS_ADD,
            &[
                &node,
                &d.events,
                &d.deliveries_created,
                &d.deliveries_succeeded,
                &d.deliveries_dead,
                &d.deliveries_cancelled,
                &d.attempts_failed,
                &d.attempts_succeeded,
                &d.pending,
                &d.retrying,
                &d.dead_letters,
            ],
        )
        .await
        .map(|_| ())
    }
}

pub(super) struct IngestJob {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>,
}

pub(super) struct SettleJob {
    s: Settlement,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Most events one ingest transaction carries.
const INGEST_GROUP: usize = 2000;
/// Most settles one transaction carries.
const SETTLE_GROUP: usize = 512;
/// Rows a claim reads beyond its room, so first attempts behind retries the slots refuse are found.
const SKIP_READ: i64 = 16;

/// What ingest decided for one event before writing.
enum Plan {
    Done(IngestOutcome),
    /// The same id came earlier in this group: answer as that one's duplicate (or conflict).
    Repeat(usize),
    New(Vec<u64>),
}

impl PgStore {
    // Ingest.

    /// Stores new events with one pending delivery per matching endpoint; answers once committed.
    /// Concurrent calls share one transaction.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<IngestOutcome>, StoreError> {
        if let Some(e) = self.fault_error() {
            return Err(e);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .ingest
            .send(IngestJob { events, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn ingest_loop(self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<IngestJob>>>) {
        loop {
            let mut jobs = Vec::new();
            {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                let mut n = first.events.len();
                jobs.push(first);
                while n < INGEST_GROUP {
                    match rx.try_recv() {
                        Ok(job) => {
                            n += job.events.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
            }
            let events: Vec<&NewEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
            let mut result = self.timed(self.commit_ingest(&events)).await;
            for _ in 0..3 {
                if !matches!(&result, Err(StoreError::Unavailable(why)) if is_conflict(why)) {
                    break;
                }
                result = self.timed(self.commit_ingest(&events)).await;
            }
            match result {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for job in jobs {
                        let mine = outcomes.by_ref().take(job.events.len()).collect();
                        let _ = job.reply.send(Ok(mine));
                    }
                    self.inner.wake.notify_one();
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(clone_error(&e)));
                    }
                }
            }
        }
    }

    async fn commit_ingest(&self, events: &[&NewEvent]) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let mut known: HashMap<String, (Vec<u8>, u32)> = HashMap::new();
        for row in query(&tx, sql::EVENTS_KNOWN, &[&ids]).await? {
            known.insert(row.get(0), (row.get(1), row.get::<_, i32>(2).max(0) as u32));
        }
        let mut plans = Vec::with_capacity(events.len());
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        for (idx, ev) in events.iter().enumerate() {
            if let Some((hash, n)) = known.get(&ev.id) {
                plans.push(Plan::Done(same_or_conflict(hash, ev, *n)));
                continue;
            }
            if let Some(&first) = first_of.get(ev.id.as_str()) {
                plans.push(Plan::Repeat(first));
                continue;
            }
            let audience = Audience {
                event_id: &ev.id,
                partner_id: &ev.partner_id,
                environment: ev.environment,
            };
            if let Some(ep) = ev.only_endpoint.and_then(|num| self.endpoint(num)) {
                if let Err(refused) = admit(audience, &ep) {
                    plans.push(Plan::Done(IngestOutcome::Refused(refused)));
                    continue;
                }
            }
            let targets: Vec<u64> = self
                .read_endpoints()
                .values()
                .filter(|ep| match ev.only_endpoint {
                    Some(num) => ep.num == num,
                    None => ep.matches(&ev.partner_id, ev.environment, &ev.event_type),
                })
                .filter(|ep| admit(audience, ep).is_ok())
                .map(|ep| ep.num)
                .collect();
            first_of.insert(&ev.id, idx);
            plans.push(Plan::New(targets));
        }
        // Insert the new ones; an id another node committed meanwhile is not inserted.
        let new: Vec<(usize, &NewEvent, Vec<u64>)> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Plan::New(t) => Some((i, events[i], t.clone())),
                _ => None,
            })
            .collect();
        let mut inserted: HashMap<String, i64> = HashMap::new();
        let mut delta = Delta::default();
        if !new.is_empty() {
            let c_id: Vec<&str> = new.iter().map(|(_, e, _)| e.id.as_str()).collect();
            let c_partner: Vec<&str> = new.iter().map(|(_, e, _)| e.partner_id.as_str()).collect();
            let c_env: Vec<&str> = new.iter().map(|(_, e, _)| e.environment.as_str()).collect();
            let c_type: Vec<&str> = new.iter().map(|(_, e, _)| e.event_type.as_str()).collect();
            let c_created: Vec<&str> = new.iter().map(|(_, e, _)| e.created_at.as_str()).collect();
            let c_received: Vec<i64> = new
                .iter()
                .map(|(_, e, _)| rows::i(e.received_at_ms))
                .collect();
            let c_payload: Vec<&[u8]> = new.iter().map(|(_, e, _)| e.payload.as_slice()).collect();
            let c_hash: Vec<&[u8]> = new
                .iter()
                .map(|(_, e, _)| e.content_hash.as_slice())
                .collect();
            let c_n: Vec<i32> = new.iter().map(|(_, _, t)| t.len() as i32).collect();
            query(&tx, sql::EVENT_IDS_LOCK, &[&c_id]).await?;
            for row in query(
                &tx,
                sql::EVENTS_INSERT,
                &[
                    &c_id,
                    &c_partner,
                    &c_env,
                    &c_type,
                    &c_created,
                    &c_received,
                    &c_payload,
                    &c_hash,
                    &c_n,
                ],
            )
            .await?
            {
                inserted.insert(row.get(0), row.get(1));
            }
            let raced: Vec<&str> = c_id
                .iter()
                .copied()
                .filter(|id| !inserted.contains_key(*id))
                .collect();
            if !raced.is_empty() {
                for row in query(&tx, sql::EVENTS_KNOWN, &[&raced]).await? {
                    known.insert(row.get(0), (row.get(1), row.get::<_, i32>(2).max(0) as u32));
                }
            }
            let (mut d_event, mut d_ep, mut d_due) = (Vec::new(), Vec::new(), Vec::new());
            for (i, ev, targets) in &new {
                match inserted.get(&ev.id) {
                    Some(&seq) => {
                        delta.events += 1;
                        for &num in targets.iter() {
                            d_event.push(seq);
                            d_ep.push(rows::i(num));
                            d_due.push(rows::i(ev.received_at_ms));
                        }
                    }
                    None => {
                        let outcome = match known.get(&ev.id) {
                            Some((hash, n)) => same_or_conflict(hash, ev, *n),
                            // Stored and purged within this instant: it is not ours to answer.
                            None => {
                                return Err(StoreError::Unavailable(
                                    "an event id was stored and removed concurrently".into(),
                                ))
                            }
                        };
                        plans[*i] = Plan::Done(outcome);
                    }
                }
            }
            if !d_event.is_empty() {
                execute(&tx, sql::DELIVERIES_INSERT, &[&d_event, &d_ep, &d_due]).await?;
                delta.deliveries_created += d_event.len() as i64;
                delta.pending += d_event.len() as i64;
                notify(&tx, sql::CHANNEL_DUE).await?;
            }
        }
        delta.apply(&tx, &self.inner.node).await?;
        tx.commit().await.map_err(db_error)?;
        // Answers, in request order.
        let mut out: Vec<IngestOutcome> = Vec::with_capacity(events.len());
        for (idx, plan) in plans.iter().enumerate() {
            let outcome = match plan {
                Plan::Done(o) => o.clone(),
                Plan::New(t) => IngestOutcome::Accepted {
                    deliveries: t.len() as u32,
                },
                Plan::Repeat(first) => match &out[*first] {
                    IngestOutcome::Accepted { deliveries } => {
                        if events[*first].content_hash == events[idx].content_hash {
                            IngestOutcome::Duplicate {
                                deliveries: *deliveries,
                            }
                        } else {
                            IngestOutcome::Conflict
                        }
                    }
                    IngestOutcome::Refused(r) => IngestOutcome::Refused(r.clone()),
                    IngestOutcome::Duplicate { .. } | IngestOutcome::Conflict => {
                        match known.get(&events[idx].id) {
                            Some((hash, n)) => same_or_conflict(hash, events[idx], *n),
                            None => IngestOutcome::Conflict,
                        }
                    }
                },
            };
            out.push(outcome);
        }
        Ok(out)
    }

    // Endpoints.

    pub async fn create_endpoint(&self, mut endpoint: Endpoint) -> Result<Endpoint, StoreError> {
        let ep = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                let num: i64 = query(&tx, sql::ENDPOINT_NEXT_NUM, &[]).await?[0].get(0);
                endpoint.num = rows::u(num);
                write_endpoint(&tx, sql::ENDPOINT_INSERT, &endpoint, &self.inner.keys).await?;
                notify(&tx, sql::CHANNEL_ENDPOINTS).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(endpoint)
            })
            .await?;
        self.cache_endpoint(ep.clone());
        Ok(ep)
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
        let updated = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                let Some(row) = query_opt(&tx, sql::ENDPOINT_LOCK, &[&rows::i(num)]).await? else {
                    return Ok(None);
                };
                let (old, _) = rows::endpoint(&row, &self.inner.keys)?;
                let mut ep = old.clone();
                change(&mut ep);
                ep.num = num;
                if ep.enabled && !old.enabled {
                    execute(&tx, sql::ENDPOINT_HEALTH_RESET, &[&rows::i(num)]).await?;
                }
                write_endpoint(&tx, sql::ENDPOINT_UPDATE, &ep, &self.inner.keys).await?;
                notify(&tx, sql::CHANNEL_ENDPOINTS).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(Some(ep))
            })
            .await?;
        if let Some(ep) = &updated {
            self.cache_endpoint(ep.clone());
            self.inner.wake.notify_one();
        }
        Ok(updated)
    }

    /// Deletes an endpoint and cancels its pending deliveries; false when it does not exist.
    pub async fn delete_endpoint(&self, num: u64) -> Result<bool, StoreError> {
        let existed = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                if query_opt(&tx, sql::ENDPOINT_LOCK, &[&rows::i(num)])
                    .await?
                    .is_none()
                {
                    return Ok(false);
                }
                execute(&tx, sql::ENDPOINT_DELETE, &[&rows::i(num)]).await?;
                let cancelled =
                    query(&tx, sql::DELIVERIES_CANCEL_ENDPOINT, &[&rows::i(num)]).await?;
                let retrying = cancelled.iter().filter(|r| r.get::<_, bool>(0)).count() as i64;
                let n = cancelled.len() as i64;
                Delta {
                    pending: -n,
                    retrying: -retrying,
                    deliveries_cancelled: n,
                    ..Delta::default()
                }
                .apply(&tx, &self.inner.node)
                .await?;
                notify(&tx, sql::CHANNEL_ENDPOINTS).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(true)
            })
            .await?;
        if existed {
            self.uncache_endpoint(num);
        }
        Ok(existed)
    }

    /// Cancels one pending delivery (its event or endpoint is gone).
    pub async fn cancel_delivery(&self, seq: u64) -> Result<(), StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            if let Some(row) = query_opt(&tx, sql::DELIVERY_CANCEL, &[&rows::i(seq)]).await? {
                Delta {
                    pending: -1,
                    retrying: -i64::from(row.get::<_, bool>(0)),
                    deliveries_cancelled: 1,
                    ..Delta::default()
                }
                .apply(&tx, &self.inner.node)
                .await?;
            }
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    // Claims.

    /// Claims up to `ask.room` due deliveries of `ep` for this node, within the endpoint's
    /// cluster-wide limits: `ordered` (the head alone, and only when no unexpired lease of the
    /// endpoint exists), `max_in_flight` (unexpired leases count) and `rate_limit_per_second` (a
    /// token bucket in the endpoint's row), and what `ask` admits. One transaction under the
    /// endpoint's row lock, so nodes take turns per endpoint.
    pub async fn claim(&self, ep: &Endpoint, ask: ClaimAsk<'_>) -> Result<ClaimRound, StoreError> {
        if ask.room == 0 {
            return Ok(ClaimRound {
                wants_more: true,
                ..ClaimRound::default()
            });
        }
        let num = ep.num;
        let now_ms = ask.now_ms;
        let round = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                let Some(row) = query_opt(&tx, sql::CLAIM_ENDPOINT, &[&rows::i(num)]).await? else {
                    return Ok(ClaimRound::default());
                };
                let enabled: bool = row.get(0);
                let ordered: bool = row.get(1);
                let max_in_flight = i64::from(row.get::<_, i32>(2).max(0));
                let rate: Option<i32> = row.get(3);
                let mut tokens: f64 = row.get(4);
                let refilled: i64 = row.get(5);
                if !enabled {
                    return Ok(ClaimRound::default());
                }
                let now = rows::i(now_ms);
                let leased: i64 =
                    query(&tx, sql::CLAIM_LEASED, &[&rows::i(num), &now]).await?[0].get(0);
                let mut limit = (ask.room as i64).min(max_in_flight - leased).max(0);
                let mut round = ClaimRound::default();
                let mut note = |at: u64| {
                    round.next_due_ms = Some(round.next_due_ms.map_or(at, |n| n.min(at)));
                };
                let rate = rate.filter(|r| *r > 0).map(f64::from);
                if let Some(rate) = rate {
                    let elapsed = (now - refilled).max(0) as f64 / 1000.0;
                    tokens = (tokens + elapsed * rate).min(rate);
                    let whole = tokens.floor() as i64;
                    if whole < limit {
                        limit = whole;
                        if whole == 0 {
                            let wait = ((1.0 - tokens) / rate * 1000.0).ceil().max(1.0) as u64;
                            note(now_ms + wait);
                        }
                    }
                }
                if limit == 0 || (ordered && leased > 0) {
                    if rate.is_some() {
                        execute(&tx, sql::CLAIM_BUCKET, &[&rows::i(num), &tokens, &now]).await?;
                    }
                    tx.commit().await.map_err(db_error)?;
                    round.wants_more = !ordered && leased < max_in_flight;
                    return Ok(round);
                }
                let candidates = if ordered {
                    // The head, waiting for a settle of it under way rather than skipping it.
                    query(&tx, sql::CLAIM_HEAD, &[&rows::i(num)]).await?
                } else {
                    // A dead node's claims first, once their lease has run out: behind a backlog
                    // they would otherwise wait for every delivery due before their lease's end.
                    let mut rows = query(
                        &tx,
                        sql::CLAIM_TAKEOVER,
                        &[&rows::i(num), &now, &(limit + SKIP_READ)],
                    )
                    .await?;
                    rows.extend(
                        query(
                            &tx,
                            sql::CLAIM_DUE,
                            &[&rows::i(num), &now, &(limit + SKIP_READ)],
                        )
                        .await?,
                    );
                    rows
                };
                let mut take: Vec<(Delivery, bool)> = Vec::new();
                let mut left_waiting = false;
                for row in &candidates {
                    let d = rows::delivery(row)?;
                    let retry: bool = row.get(8);
                    let due = d.next_attempt_at_ms.unwrap_or(0);
                    if due > now_ms {
                        note(due);
                        break;
                    }
                    if let Some(until) = (ask.held_until)(d.seq).filter(|&u| u > now_ms) {
                        note(until);
                        if ordered {
                            break;
                        }
                        continue;
                    }
                    if take.len() as i64 >= limit {
                        left_waiting = true;
                        break;
                    }
                    if (ask.admits)(take.len(), retry) {
                        take.push((d, retry));
                    } else {
                        left_waiting = true;
                        if ordered {
                            break;
                        }
                    }
                }
                if !take.is_empty() {
                    let seqs: Vec<i64> = take.iter().map(|(d, _)| rows::i(d.seq)).collect();
                    let until = rows::i(now_ms + self.inner.lease_ms);
                    let fences: HashMap<u64, u64> =
                        query(&tx, sql::CLAIM_TAKE, &[&seqs, &self.inner.node, &until])
                            .await?
                            .iter()
                            .map(|r| (rows::u(r.get(0)), rows::u(r.get(1))))
                            .collect();
                    let event_seqs: Vec<i64> =
                        take.iter().map(|(d, _)| rows::i(d.event_seq)).collect();
                    let mut events: HashMap<u64, Event> = HashMap::new();
                    for row in query(&tx, sql::CLAIM_EVENTS, &[&event_seqs]).await? {
                        let e = rows::event(&row)?;
                        events.insert(e.seq, e);
                    }
                    for (d, retry) in take {
                        let (Some(&fence), Some(event)) =
                            (fences.get(&d.seq), events.get(&d.event_seq))
                        else {
                            continue;
                        };
                        round.claimed.push(Claimed {
                            claim: Claim {
                                delivery: DeliveryKey {
                                    event_seq: d.event_seq,
                                    seq: d.seq,
                                },
                                endpoint_num: num,
                                fence,
                            },
                            retry,
                            event: event.clone(),
                            delivery: d,
                        });
                    }
                }
                if rate.is_some() {
                    tokens -= round.claimed.len() as f64;
                    execute(&tx, sql::CLAIM_BUCKET, &[&rows::i(num), &tokens, &now]).await?;
                }
                if !left_waiting && !ordered && round.claimed.len() as i64 >= limit {
                    // More may be due than were read.
                    left_waiting = candidates.len() as i64 > round.claimed.len() as i64;
                }
                if !ordered {
                    let row = query(&tx, sql::CLAIM_NEXT_DUE, &[&rows::i(num), &now]).await?;
                    if let Some(due) = row[0].get::<_, Option<i64>>(0) {
                        note(rows::u(due));
                    }
                }
                tx.commit().await.map_err(db_error)?;
                round.wants_more = left_waiting;
                round.only_retries =
                    round.claimed.is_empty() && left_waiting && !(ask.admits)(0, true);
                Ok(round)
            })
            .await?;
        let mut claims = self.claims();
        for c in &round.claimed {
            claims.insert(c.claim.delivery.seq, c.claim.fence);
        }
        Ok(round)
    }

    /// Ends a claim: after its settle, nothing more; an unsettled one (an attempt cut off, or a
    /// settle that failed) gives its lease back so the delivery is due again at once (if the
    /// database cannot be reached, the lease runs out by itself).
    pub fn release(&self, claim: Claim) {
        let Some(fence) = self.claims().remove(&claim.delivery.seq) else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            let released = store
                .timed(async {
                    store
                        .client()
                        .await?
                        .execute(
                            sql::CLAIM_RELEASE,
                            &[
                                &rows::i(claim.delivery.seq),
                                &rows::i(fence),
                                &rows::i(crate::api::now_ms()),
                                &store.inner.node,
                            ],
                        )
                        .await
                        .map_err(db_error)
                })
                .await;
            if released.is_ok_and(|n| n > 0) {
                store.inner.wake.notify_one();
            }
        });
    }

    // Settles.

    /// Records an attempt's outcome if the claim's fence is still the delivery's, else
    /// [`StoreError::Fenced`]. Settles of one node share transactions.
    pub async fn settle(&self, s: Settlement) -> Result<(), StoreError> {
        if let Some(e) = self.fault_error() {
            return Err(e);
        }
        let seq = s.claim.delivery.seq;
        let (reply, answer) = oneshot::channel();
        self.inner
            .settles
            .send(SettleJob { s, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        let answer = answer.await.map_err(|_| StoreError::Closed)?;
        if matches!(answer, Ok(()) | Err(StoreError::Fenced)) {
            // Settled (or no longer ours): nothing for release to give back.
            self.claims().remove(&seq);
        }
        answer
    }

    pub(super) async fn settle_loop(self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<SettleJob>>>) {
        loop {
            let mut jobs = Vec::new();
            {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                jobs.push(first);
                while jobs.len() < SETTLE_GROUP {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            let mut result = self.timed(self.commit_settles(&jobs)).await;
            for _ in 0..3 {
                if !matches!(&result, Err(StoreError::Unavailable(why)) if is_conflict(why)) {
                    break;
                }
                result = self.timed(self.commit_settles(&jobs)).await;
            }
            match result {
                Ok(answers) => {
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        let _ = job.reply.send(answer);
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(clone_error(&e)));
                    }
                }
            }
        }
    }

    async fn commit_settles(
        &self,
        jobs: &[SettleJob],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // Like sled's settles, not waited for on disk: one lost in a crash of the database leaves
        // its delivery leased and due at the lease's end, so it is attempted again (at least once).
        // Claims stay synchronous: a fence must never be handed out twice.
        tx.batch_execute(sql::SETTLE_ASYNC_COMMIT)
            .await
            .map_err(db_error)?;
        let seqs: Vec<i64> = jobs
            .iter()
            .map(|j| rows::i(j.s.claim.delivery.seq))
            .collect();
        let nums: Vec<i64> = query(&tx, sql::DELIVERY_ENDPOINTS, &[&seqs])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Endpoints first, then deliveries: the lock order of every transaction here.
        let mut eps: BTreeMap<u64, EpState> = BTreeMap::new();
        for row in query(&tx, sql::ENDPOINTS_LOCK_HEALTH, &[&nums]).await? {
            eps.insert(
                rows::u(row.get(0)),
                EpState {
                    enabled: row.get(1),
                    partner_id: row.get(2),
                    health: rows::health(&row, 3),
                    touched: false,
                    disabled: None,
                },
            );
        }
        let mut found: HashMap<u64, (Delivery, u64, bool)> = HashMap::new();
        for row in query(&tx, sql::DELIVERIES_LOCK, &[&seqs]).await? {
            let d = rows::delivery(&row)?;
            found.insert(d.seq, (d, rows::u(row.get(8)), row.get(9)));
        }
        let mut answers = Vec::with_capacity(jobs.len());
        let mut stats = super::partners::StatsRows::default();
        let mut upd = SettleRows::default();
        let mut dead = DeadRows::default();
        let mut delta = Delta::default();
        let mut notes = super::notices::SettleNotices::default();
        for job in jobs {
            let s = &job.s;
            let Some((mut d, fence, was_retrying)) = found.remove(&s.claim.delivery.seq) else {
                // Gone (its event purged): nothing to record.
                answers.push(Ok(()));
                continue;
            };
            if fence != s.claim.fence {
                answers.push(Err(StoreError::Fenced));
                continue;
            }
            answers.push(Ok(()));
            let attempt = serde_json::to_string(&s.attempt).expect("attempts serialize");
            if d.status != DeliveryStatus::Pending {
                // Cancelled while the attempt ran: keep the log, change nothing else.
                upd.push(&d, rows::status_code(d.status), None, false, attempt);
                continue;
            }
            let Some(ep) = eps.get_mut(&d.endpoint_num) else {
                // The endpoint is gone: the delivery is cancelled.
                upd.push(
                    &d,
                    rows::status_code(DeliveryStatus::Cancelled),
                    None,
                    false,
                    attempt,
                );
                delta.pending -= 1;
                delta.retrying -= i64::from(was_retrying);
                delta.deliveries_cancelled += 1;
                continue;
            };
            ep.touched = true;
            stats.add(
                d.endpoint_num,
                s.attempt.at_ms,
                s.outcome == SettleOutcome::Succeeded,
                s.attempt.duration_ms,
            );
            let now = s.attempt.at_ms;
            let was_failing = ep.health.failing_since_ms.is_some();
            let disable = s.apply_to_health(&mut ep.health);
            match s.outcome {
                SettleOutcome::Succeeded => {
                    upd.push(&d, 1, None, false, attempt);
                    if was_failing {
                        notes.successes.push((d.endpoint_num, now));
                    }
                    delta.pending -= 1;
                    delta.retrying -= i64::from(was_retrying);
                    delta.deliveries_succeeded += 1;
                    delta.attempts_succeeded += 1;
                }
                SettleOutcome::Retry { at_ms } => {
                    upd.push(&d, 0, Some(at_ms), true, attempt);
                    delta.retrying += i64::from(!was_retrying);
                    delta.attempts_failed += 1;
                }
                SettleOutcome::Dead { reason } => {
                    upd.push(&d, 2, None, false, attempt);
                    d.attempts.push(s.attempt.clone());
                    let round =
                        &d.attempts[(d.attempts_before_redrive as usize).min(d.attempts.len())..];
                    dead.push(&d, round, &s.attempt, now, reason);
                    delta.pending -= 1;
                    delta.retrying -= i64::from(was_retrying);
                    delta.attempts_failed += 1;
                    delta.deliveries_dead += 1;
                    delta.dead_letters += 1;
                }
            }
            if let Some(reason) = disable {
                // The operator endpoint is never disabled by the daemon.
                if ep.enabled && ep.partner_id != OPERATOR_PARTNER {
                    tracing::info!(endpoint_id = %crate::model::endpoint_id(d.endpoint_num), %reason, "endpoint disabled");
                    ep.enabled = false;
                    notes.disabled.push((
                        d.endpoint_num,
                        reason.clone(),
                        ep.health.last_status_code,
                        now,
                    ));
                    ep.disabled = Some(reason);
                }
            }
        }
        if !upd.seq.is_empty() {
            execute(
                &tx,
                sql::DELIVERIES_SETTLE,
                &[&upd.seq, &upd.status, &upd.due, &upd.retry, &upd.attempt],
            )
            .await?;
        }
        let touched: Vec<(&u64, &EpState)> = eps.iter().filter(|(_, e)| e.touched).collect();
        let mut disabled = Vec::new();
        if !touched.is_empty() {
            let c_num: Vec<i64> = touched.iter().map(|(n, _)| rows::i(**n)).collect();
            let c_cf: Vec<i32> = touched
                .iter()
                .map(|(_, e)| e.health.consecutive_failures as i32)
                .collect();
            let c_code: Vec<Option<i32>> = touched
                .iter()
                .map(|(_, e)| e.health.last_status_code.map(i32::from))
                .collect();
            let opt = |v: Option<u64>| v.map(rows::i);
            let c_ok: Vec<Option<i64>> = touched
                .iter()
                .map(|(_, e)| opt(e.health.last_success_at_ms))
                .collect();
            let c_fail: Vec<Option<i64>> = touched
                .iter()
                .map(|(_, e)| opt(e.health.last_failure_at_ms))
                .collect();
            let c_since: Vec<Option<i64>> = touched
                .iter()
                .map(|(_, e)| opt(e.health.failing_since_ms))
                .collect();
            let c_err: Vec<Option<&str>> = touched
                .iter()
                .map(|(_, e)| e.health.last_error.as_deref())
                .collect();
            let c_enabled: Vec<bool> = touched.iter().map(|(_, e)| e.enabled).collect();
            let c_reason: Vec<Option<&str>> =
                touched.iter().map(|(_, e)| e.disabled.as_deref()).collect();
            execute(
                &tx,
                sql::ENDPOINTS_HEALTH_UPDATE,
                &[
                    &c_num, &c_cf, &c_code, &c_ok, &c_fail, &c_since, &c_err, &c_enabled, &c_reason,
                ],
            )
            .await?;
            for (n, e) in &touched {
                if let Some(reason) = &e.disabled {
                    disabled.push((**n, reason.clone()));
                }
            }
        }
        if !dead.delivery.is_empty() {
            let written = query(
                &tx,
                sql::DEAD_LETTERS_INSERT,
                &[
                    &dead.delivery,
                    &dead.event,
                    &dead.endpoint,
                    &dead.attempts,
                    &dead.code,
                    &dead.error,
                    &dead.first_at,
                    &dead.dead_at,
                    &dead.reason,
                ],
            )
            .await?;
            notes.dead_letters = written.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        self.settle_notices(&tx, notes).await?;
        stats.apply(&tx).await?;
        delta.apply(&tx, &self.inner.node).await?;
        if !disabled.is_empty() {
            notify(&tx, sql::CHANNEL_ENDPOINTS).await?;
        }
        tx.commit().await.map_err(db_error)?;
        for (num, reason) in disabled {
            if let Some(ep) = self.endpoint(num) {
                let mut ep = (*ep).clone();
                ep.enabled = false;
                ep.disabled_reason = Some(reason);
                self.cache_endpoint(ep);
            }
        }
        Ok(answers)
    }

    // Redeliveries and dead letters.

    /// New deliveries of stored events to endpoints (redeliver, recover). Returns how many, or,
    /// when any pair would cross partners or environments, why, with nothing created.
    pub async fn add_deliveries(
        &self,
        pairs: Vec<(u64, u64)>,
        now_ms: u64,
    ) -> Result<Result<u32, DeliveryRefused>, StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let mut admitted = Vec::with_capacity(pairs.len());
            for &(event_seq, endpoint_num) in &pairs {
                let Some(row) =
                    query_opt(&tx, sql::ENDPOINT_SHARE, &[&rows::i(endpoint_num)]).await?
                else {
                    continue;
                };
                let (ep, _) = rows::endpoint(&row, &self.inner.keys)?;
                let Some(head) =
                    query_opt(&tx, sql::EVENT_HEAD_LOCK, &[&rows::i(event_seq)]).await?
                else {
                    continue;
                };
                let partner: String = head.get(0);
                let env = rows::environment(head.get(1))?;
                let id: String = head.get(2);
                let audience = Audience {
                    event_id: &id,
                    partner_id: &partner,
                    environment: env,
                };
                if let Err(refused) = admit(audience, &ep) {
                    return Ok(Err(refused));
                }
                admitted.push((event_seq, endpoint_num));
            }
            let now = rows::i(now_ms);
            for &(event_seq, endpoint_num) in &admitted {
                execute(
                    &tx,
                    sql::DELIVERY_INSERT_ONE,
                    &[&rows::i(event_seq), &rows::i(endpoint_num), &now],
                )
                .await?;
                execute(&tx, sql::EVENT_REDELIVERED, &[&rows::i(event_seq), &now]).await?;
            }
            let n = admitted.len() as i64;
            Delta {
                deliveries_created: n,
                pending: n,
                ..Delta::default()
            }
            .apply(&tx, &self.inner.node)
            .await?;
            if n > 0 {
                notify(&tx, sql::CHANNEL_DUE).await?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(Ok(n as u32))
        })
        .await
    }

    /// Gives dead-lettered deliveries a fresh set of attempts. A dead letter whose endpoint may not
    /// get its event stays where it is and is reported.
    pub async fn retry_dead_letters(
        &self,
        seqs: Vec<u64>,
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let mut out = Redriven::default();
            let mut delta = Delta::default();
            for &seq in &seqs {
                let Some(row) = query_opt(&tx, sql::DEAD_LETTER_LOCK, &[&rows::i(seq)]).await?
                else {
                    continue;
                };
                let dl = rows::dead_letter(&row)?;
                let ep = match query_opt(&tx, sql::ENDPOINT_SHARE, &[&rows::i(dl.endpoint_num)])
                    .await?
                {
                    Some(row) => Some(rows::endpoint(&row, &self.inner.keys)?.0),
                    None => None,
                };
                let head = query_opt(&tx, sql::EVENT_HEAD_LOCK, &[&rows::i(dl.event_seq)]).await?;
                let delivery =
                    query_opt(&tx, sql::DELIVERY_LOCK_ONE, &[&rows::i(dl.delivery_seq)]).await?;
                let (Some(ep), Some(head), Some(delivery)) = (ep, head, delivery) else {
                    // Nothing left to deliver: the dead letter just goes.
                    execute(&tx, sql::DEAD_LETTER_DELETE, &[&rows::i(seq)]).await?;
                    delta.dead_letters -= 1;
                    out.requeued += 1;
                    continue;
                };
                let partner: String = head.get(0);
                let env = rows::environment(head.get(1))?;
                let id: String = head.get(2);
                let audience = Audience {
                    event_id: &id,
                    partner_id: &partner,
                    environment: env,
                };
                if let Err(refused) = admit(audience, &ep) {
                    out.refused.push(refused);
                    continue;
                }
                execute(&tx, sql::DEAD_LETTER_DELETE, &[&rows::i(seq)]).await?;
                delta.dead_letters -= 1;
                out.requeued += 1;
                if delivery.get::<_, i16>(0) != rows::status_code(DeliveryStatus::Dead) {
                    continue;
                }
                execute(
                    &tx,
                    sql::DELIVERY_REDRIVE,
                    &[&rows::i(dl.delivery_seq), &rows::i(now_ms)],
                )
                .await?;
                delta.pending += 1;
            }
            delta.apply(&tx, &self.inner.node).await?;
            if delta.pending > 0 {
                notify(&tx, sql::CHANNEL_DUE).await?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(out)
        })
        .await
    }

    pub async fn delete_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let n = execute(&tx, sql::DEAD_LETTER_DELETE, &[&rows::i(seq)]).await?;
            Delta {
                dead_letters: -(n as i64),
                ..Delta::default()
            }
            .apply(&tx, &self.inner.node)
            .await?;
            tx.commit().await.map_err(db_error)?;
            Ok(n > 0)
        })
        .await
    }

    /// Removes final events received before `before_ms` and dead letters that died before
    /// `dead_before_ms`, at most `limit` of each; only on the leader node (others answer (0, 0)).
    pub async fn purge(
        &self,
        before_ms: u64,
        dead_before_ms: u64,
        limit: usize,
    ) -> Result<(u32, u32), StoreError> {
        if !self.is_leader() {
            return Ok((0, 0));
        }
        let scanned_at = rows::i(crate::api::now_ms());
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let events = execute(
                &tx,
                sql::PURGE_EVENTS,
                &[&rows::i(before_ms), &(limit as i64), &scanned_at],
            )
            .await?;
            let dead = execute(
                &tx,
                sql::PURGE_DEAD_LETTERS,
                &[&rows::i(dead_before_ms), &(limit as i64)],
            )
            .await?;
            Delta {
                dead_letters: -(dead as i64),
                ..Delta::default()
            }
            .apply(&tx, &self.inner.node)
            .await?;
            tx.commit().await.map_err(db_error)?;
            Ok((events as u32, dead as u32))
        })
        .await
    }
}

/// An endpoint as a settle group sees and changes it.
struct EpState {
    enabled: bool,
    partner_id: String,
    health: EndpointHealth,
    touched: bool,
    disabled: Option<String>,
}

/// Column arrays of the deliveries a settle group changes.
#[derive(Default)]
struct SettleRows {
    seq: Vec<i64>,
    status: Vec<i16>,
    due: Vec<Option<i64>>,
    retry: Vec<bool>,
    attempt: Vec<String>,
}

impl SettleRows {
    fn push(&mut self, d: &Delivery, status: i16, due: Option<u64>, retry: bool, attempt: String) {
        self.seq.push(rows::i(d.seq));
        self.status.push(status);
        self.due.push(due.map(rows::i));
        self.retry.push(retry);
        self.attempt.push(attempt);
    }
}

/// Column arrays of the dead letters a settle group writes.
#[derive(Default)]
struct DeadRows {
    delivery: Vec<i64>,
    event: Vec<i64>,
    endpoint: Vec<i64>,
    attempts: Vec<i32>,
    code: Vec<Option<i32>>,
    error: Vec<Option<String>>,
    first_at: Vec<Option<i64>>,
    dead_at: Vec<i64>,
    reason: Vec<&'static str>,
}

impl DeadRows {
    fn push(
        &mut self,
        d: &Delivery,
        round: &[Attempt],
        last: &Attempt,
        now: u64,
        reason: DeadReason,
    ) {
        self.delivery.push(rows::i(d.seq));
        self.event.push(rows::i(d.event_seq));
        self.endpoint.push(rows::i(d.endpoint_num));
        self.attempts.push(round.len() as i32);
        self.code.push(last.status_code.map(i32::from));
        self.error.push(last.error.clone());
        self.first_at.push(round.first().map(|a| rows::i(a.at_ms)));
        self.dead_at.push(rows::i(now));
        self.reason.push(rows::reason_text(reason));
    }
}

fn same_or_conflict(stored_hash: &[u8], ev: &NewEvent, deliveries: u32) -> IngestOutcome {
    if stored_hash == ev.content_hash.as_slice() {
        IngestOutcome::Duplicate { deliveries }
    } else {
        IngestOutcome::Conflict
    }
}

async fn write_endpoint(
    tx: &Tx<'_>,
    statement: &str,
    ep: &Endpoint,
    keys: &crate::store::MasterKeys,
) -> Result<(), StoreError> {
    let json = rows::endpoint_json(ep, keys);
    execute(
        tx,
        statement,
        &[
            &rows::i(ep.num),
            &ep.partner_id,
            &ep.environment.as_str(),
            &ep.url,
            &json.event_types,
            &ep.description,
            &json.headers,
            &ep.ordered,
            &(ep.max_in_flight.min(i32::MAX as u32) as i32),
            &ep.rate_limit_per_second
                .map(|r| r.min(i32::MAX as u32) as i32),
            &ep.enabled,
            &ep.disabled_reason,
            &rows::i(ep.created_at_ms),
            &json.secrets,
        ],
    )
    .await
    .map(|_| ())
}

/// A deadlock or serialization failure: the transaction was rolled back and may simply run again.
fn is_conflict(why: &str) -> bool {
    why.contains(super::CONFLICT_MARK)
}

/// The same answer for every request of a failed group.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Database(s) => StoreError::Database(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        other => StoreError::Database(other.to_string()),
    }
}
