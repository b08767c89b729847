//! The scheduler: claims due deliveries from the store's queue, runs attempts within the limits, settles outcomes.
//!
//! It keeps in memory only this node's budget: attempts under way per endpoint, rate buckets, and
//! deliveries held back after a failed settle. It never reads a queue and does not know the backend:
//! [`Store::claim`] hands it due deliveries with what their attempts need, [`Store::settle`] records
//! the outcomes, [`Store::release`] ends each claim (see `store`'s notes on claims).

use super::attempt::{Client, Outcome};
use super::fairness::Slots;
use super::retry::{self, AttemptResult, Decision, RetryPolicy};
use crate::config::Config;
use crate::model::{Attempt, DeadReason, Endpoint};
use crate::shutdown::Shutdown;
use crate::store::{ClaimAsk, Claimed, SettleOutcome, Settlement, Store, StoreError};
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What the rest of the daemon may ask the scheduler; cheap to clone.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    /// Attempts under way per endpoint.
    per_endpoint: Mutex<HashMap<u64, EndpointRun>>,
    /// Woken when an attempt finishes, so the freed slot is used at once.
    done: Notify,
    /// Unix ms of the scheduler's last loop: the watchdog proves the scheduler is alive with it.
    heartbeat_ms: AtomicU64,
    /// The store, for the queue figures a status request asks for and the claims under way.
    store: std::sync::OnceLock<Store>,
    /// Attempts under way for deliveries that have failed before in their round (`retrying`).
    retrying_in_flight: AtomicUsize,
    /// Deliveries whose last outcome could not be stored, and when each may be attempted again.
    /// A storage failure must never make a partner receive more: such a delivery is still due in
    /// the store, so without this it would be claimed again at once.
    held: Mutex<HashMap<u64, Held>>,
}

/// A delivery held back in memory after its settle failed.
#[derive(Debug, Clone, Copy)]
struct Held {
    not_before_ms: u64,
    failures: u32,
}

/// The wait after a first failed settle; it doubles with each further failure of the same delivery.
const HOLD_FIRST_MS: u64 = 1_000;
/// The longest wait after failed settles.
const HOLD_MAX_MS: u64 = 60_000;

#[derive(Default)]
struct EndpointRun {
    in_flight: u32,
    /// Token bucket for `rate_limit_per_second`: tokens and when they were last topped up.
    tokens: f64,
    refilled: Option<Instant>,
    /// At its last claim, the endpoint had due deliveries it was not allowed to start: with
    /// attempts under way, this makes it one of the endpoints with work that share the slots.
    wants_more: bool,
    /// Its last claim, with only first-attempt slots open to it, found only retries: until then it
    /// asks again only once retries may start, so blocked retries are not re-read every round.
    only_retries_until: Option<Instant>,
}

/// What one endpoint may start in this round.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Attempts it may start at most (slots and rate tokens); retries may get fewer.
    room: usize,
    /// Its cap: its own limit held to its fair share.
    cap: usize,
    /// Its attempts under way.
    mine: usize,
    /// All attempts under way.
    total: usize,
}

/// How long an endpoint whose due deliveries are all retries waits before it looks for first
/// attempts again while retries may not start.
const ONLY_RETRIES_PAUSE: Duration = Duration::from_millis(20);

impl Shared {
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, EndpointRun>> {
        self.per_endpoint
            .lock()
            .expect("endpoint lock is never poisoned")
    }
}

impl SchedulerHandle {
    /// Whether an attempt of this delivery is under way (asked of the store's claims).
    pub fn is_in_flight(&self, delivery_seq: u64) -> bool {
        self.shared
            .store
            .get()
            .is_some_and(|s| s.is_claimed(delivery_seq))
    }

    pub fn in_flight_count(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts under way whose delivery has failed before in its round.
    pub fn retrying_in_flight_count(&self) -> usize {
        self.shared.retrying_in_flight.load(Ordering::Relaxed)
    }

    /// Pending deliveries of an endpoint that are not under way.
    pub async fn endpoint_pending(&self, num: u64) -> Result<u64, StoreError> {
        let pending = match self.shared.store.get() {
            Some(store) => store.endpoint_pending(num).await?,
            None => 0,
        };
        let running = self.shared.runs().get(&num).map_or(0, |r| r.in_flight);
        Ok(pending.saturating_sub(u64::from(running)))
    }

    /// When the scheduler last went round its loop, unix ms.
    pub fn heartbeat_ms(&self) -> u64 {
        self.shared.heartbeat_ms.load(Ordering::Relaxed)
    }
}

/// Which endpoints a scheduler serves. Operator notifications have a scheduler of their own, with
/// its own slots: a slow notification URL holds none of the partners' slots, and a partner
/// scheduler that stalls does not stop the notification that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every endpoint but the operator endpoint, within `delivery.max_in_flight`.
    Partners,
    /// The operator endpoint alone, within its own `max_in_flight`.
    Operator,
}

/// The scheduler task's state.
pub struct Scheduler {
    scope: Scope,
    store: Store,
    config: Arc<Config>,
    client: Client,
    metrics: Arc<Metrics>,
    handle: SchedulerHandle,
    policy: Arc<RetryPolicy>,
    /// Rounds so far: where the next round starts among the endpoints.
    round: AtomicU64,
}

impl Scheduler {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, String> {
        Scheduler::with_scope(Scope::Partners, store, config, metrics)
    }

    pub fn with_scope(
        scope: Scope,
        store: Store,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, String> {
        let client = Client::new(&config.delivery)?;
        let policy = Arc::new(RetryPolicy {
            schedule: config.retry.schedule.clone(),
            jitter: config.retry.jitter,
            max_retry_after: config.retry.max_retry_after,
        });
        let handle = SchedulerHandle::default();
        let _ = handle.shared.store.set(store.clone());
        Ok(Scheduler {
            scope,
            store,
            config,
            client,
            metrics,
            handle,
            policy,
            round: AtomicU64::new(0),
        })
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown`, then lets attempts under way finish within `server.shutdown_grace`.
    pub async fn run(self, shutdown: Shutdown) {
        let wake = self.store.wake_handle();
        let mut tasks = JoinSet::new();
        let this = Arc::new(self);
        // The store wakes one waiter: the partners' scheduler. The operator's looks every 200 ms.
        let own_pace = this.scope == Scope::Operator;
        loop {
            // The test hook stalls the partners' scheduler, as a stalled scheduler would be.
            if !own_pace
                && this
                    .config
                    .test_hooks
                    .pause_scheduler
                    .load(Ordering::Relaxed)
            {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = shutdown.wait() => break,
                }
            }
            this.handle
                .shared
                .heartbeat_ms
                .store(now_ms(), Ordering::Relaxed);
            let next_due = this.dispatch(&mut tasks).await;
            while tasks.try_join_next().is_some() {}
            let sleep = match next_due {
                Some(due) => {
                    Duration::from_millis(due.saturating_sub(now_ms())).min(Duration::from_secs(1))
                }
                None => Duration::from_secs(1),
            };
            let sleep = if own_pace {
                sleep.min(Duration::from_millis(200))
            } else {
                sleep
            };
            tokio::select! {
                _ = wake.notified(), if !own_pace => {}
                _ = this.handle.shared.done.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.wait() => break,
            }
        }
        let grace = this.config.server.shutdown_grace;
        let running = tasks.len();
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        match drained {
            Ok(()) => tracing::info!(
                attempts = running,
                "scheduler stopped; attempts under way finished"
            ),
            Err(_) => {
                tracing::warn!(
                    cut_off = tasks.len(),
                    "shutdown grace over; attempts cut off will be made again after restart"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
    }

    /// Claims what is due within the limits and starts its attempts. Returns the next due time it saw.
    async fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Option<u64> {
        let now = now_ms();
        // While the store cannot be written no outcome could be recorded: claim nothing. The
        // store wakes the scheduler when it takes writes again; until then look once a second.
        if !self.store.writable() {
            return Some(now + 1_000);
        }
        let slots = Slots::new(match self.scope {
            Scope::Partners => self.config.delivery.max_in_flight,
            Scope::Operator => crate::notifications::OPERATOR_MAX_IN_FLIGHT as usize,
        });
        let mut next_due: Option<u64> = None;
        let mut note = |t: u64| next_due = Some(next_due.map_or(t, |n| n.min(t)));
        // Start each round at a different endpoint so none is always served last.
        let mut endpoints = self.store.endpoints();
        let operator = self.scope == Scope::Operator;
        endpoints.retain(|ep| ep.enabled && crate::notifications::is_operator(ep) == operator);
        if !endpoints.is_empty() {
            let start = self.round.fetch_add(1, Ordering::Relaxed) as usize % endpoints.len();
            endpoints.rotate_left(start);
        }
        let (share, busy) = self.fair_share(&slots, &endpoints, now, &mut note).await;
        for (ep, busy) in endpoints.into_iter().zip(busy) {
            if !busy {
                continue;
            }
            let total = self.handle.in_flight_count();
            if total >= slots.max_total {
                break;
            }
            let (budget, wait_until) = self.budget(&ep, now, &slots, share, total);
            if let Some(t) = wait_until {
                note(t);
            }
            if budget.room == 0 {
                continue;
            }
            let claimed = match self.claim_due(&ep, now, &slots, budget, &mut note).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "claiming due deliveries failed");
                    continue;
                }
            };
            for claimed in claimed {
                self.count_claim(&ep);
                let this = self.clone();
                let ep = ep.clone();
                tasks.spawn(async move { this.run_attempt(ep, claimed).await });
            }
        }
        next_due
    }

    /// The fair share of the slots in this round, among the endpoints with work: attempts under way,
    /// due deliveries left at their last read, or a due delivery at the head of their queue (looked
    /// at here for the others, so that endpoints starting together share from the first round).
    /// Also returns, for each endpoint, whether it may have due work (when not, its queue is not
    /// read this round).
    async fn fair_share(
        &self,
        slots: &Slots,
        endpoints: &[Arc<Endpoint>],
        now: u64,
        note: &mut impl FnMut(u64),
    ) -> (usize, Vec<bool>) {
        let known: Vec<bool> = {
            let runs = self.handle.shared.runs();
            endpoints
                .iter()
                .map(|ep| {
                    runs.get(&ep.num)
                        .is_some_and(|r| r.in_flight > 0 || r.wants_more)
                })
                .collect()
        };
        let mut needs = Vec::new();
        let mut busy = Vec::with_capacity(endpoints.len());
        for (ep, known) in endpoints.iter().zip(known) {
            let working = known
                || match self.store.queue_head(ep).await {
                    Ok(Some(head)) if head.due_ms > now && head.earliest => {
                        note(head.due_ms);
                        false
                    }
                    Ok(Some(_)) => true,
                    Ok(None) => false,
                    // Asked again, and the error logged, when it claims.
                    Err(_) => true,
                };
            if working {
                needs.push(need(ep));
            }
            busy.push(working);
        }
        (slots.share(&mut needs), busy)
    }

    /// How many attempts this endpoint may start now, and when it may start more if none.
    fn budget(
        &self,
        ep: &Endpoint,
        now: u64,
        slots: &Slots,
        share: usize,
        total: usize,
    ) -> (Budget, Option<u64>) {
        let mut runs = self.handle.shared.runs();
        let run = runs.entry(ep.num).or_default();
        let cap = slots.cap(own_limit(ep), share);
        let mine = run.in_flight as usize;
        let mut budget = Budget {
            room: slots.room(total, mine, cap),
            cap,
            mine,
            total,
        };
        if let Some(until) = run.only_retries_until {
            let at = Instant::now();
            if at < until && !slots.admits(total, mine, cap, true) {
                let wait_ms = (until - at).as_millis() as u64 + 1;
                budget.room = 0;
                return (budget, Some(now + wait_ms));
            }
            run.only_retries_until = None;
        }
        if let Some(rate) = ep.rate_limit_per_second {
            let rate = f64::from(rate.max(1));
            let at = Instant::now();
            let elapsed = run
                .refilled
                .map_or(1.0, |t| at.duration_since(t).as_secs_f64());
            run.tokens = (run.tokens + elapsed * rate).min(rate);
            run.refilled = Some(at);
            let whole = run.tokens.floor() as usize;
            if whole == 0 {
                let wait_ms = ((1.0 - run.tokens) / rate * 1000.0).ceil() as u64;
                budget.room = 0;
                return (budget, Some(now + wait_ms.max(1)));
            }
            budget.room = budget.room.min(whole);
        }
        (budget, None)
    }

    /// Claims up to `budget.room` due deliveries of this endpoint that the slot rules admit, in
    /// queue order, and notes what the store says of the rest.
    async fn claim_due(
        &self,
        ep: &Endpoint,
        now: u64,
        slots: &Slots,
        budget: Budget,
        note: &mut impl FnMut(u64),
    ) -> Result<Vec<Claimed>, StoreError> {
        // Whether the n-th delivery taken in this round (0-based) may start.
        let admits = |n: usize, retry: bool| {
            slots.admits(budget.total + n, budget.mine + n, budget.cap, retry)
        };
        let held_until = |seq: u64| self.held_until(seq);
        let round = self
            .store
            .claim(
                ep,
                ClaimAsk {
                    now_ms: now,
                    room: budget.room,
                    admits: &admits,
                    held_until: &held_until,
                },
            )
            .await?;
        if let Some(t) = round.next_due_ms {
            note(t);
        }
        let mut runs = self.handle.shared.runs();
        let run = runs.entry(ep.num).or_default();
        run.wants_more = round.wants_more;
        if round.only_retries {
            run.only_retries_until = Some(Instant::now() + ONLY_RETRIES_PAUSE);
        }
        Ok(round.claimed)
    }

    /// When a delivery held back after a failed settle may go again (the store compares it with now).
    fn held_until(&self, seq: u64) -> Option<u64> {
        let held = self
            .handle
            .shared
            .held
            .lock()
            .expect("held lock is never poisoned");
        if held.is_empty() {
            return None;
        }
        held.get(&seq).map(|h| h.not_before_ms)
    }

    /// Holds a delivery back after its outcome could not be stored, longer after each failure.
    fn hold(&self, seq: u64) {
        let now = now_ms();
        let mut held = self
            .handle
            .shared
            .held
            .lock()
            .expect("held lock is never poisoned");
        if held.len() >= 100_000 {
            // Deliveries settled or gone since leave entries behind; long-passed ones go.
            held.retain(|_, h| h.not_before_ms + HOLD_MAX_MS > now);
        }
        let failures = held.get(&seq).map_or(0, |h| h.failures) + 1;
        let wait = HOLD_FIRST_MS
            .saturating_mul(1 << (failures - 1).min(16))
            .min(HOLD_MAX_MS);
        held.insert(
            seq,
            Held {
                not_before_ms: now + wait,
                failures,
            },
        );
    }

    /// Counts a claimed delivery against this node's budget.
    fn count_claim(&self, ep: &Endpoint) {
        self.handle.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut runs = self.handle.shared.runs();
        let run = runs.entry(ep.num).or_default();
        run.in_flight += 1;
        if ep.rate_limit_per_second.is_some() {
            run.tokens -= 1.0;
        }
    }

    /// Ends a claim in the store and gives its slot back.
    fn release(&self, claim: crate::store::Claim) {
        self.store.release(claim);
        let endpoint_num = claim.endpoint_num;
        self.handle.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut runs = self.handle.shared.runs();
        if let Some(run) = runs.get_mut(&endpoint_num) {
            run.in_flight = run.in_flight.saturating_sub(1);
        }
        drop(runs);
        self.handle.shared.done.notify_one();
    }

    async fn run_attempt(self: Arc<Self>, ep: Arc<Endpoint>, claimed: Claimed) {
        // Released on every path out, including an abort at the end of the shutdown grace.
        struct Release<'a>(&'a Scheduler, crate::store::Claim);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.release(self.1);
            }
        }
        let claim = claimed.claim;
        let seq = claim.delivery.seq;
        let _release = Release(&self, claim);
        match self.attempt_and_settle(&ep, claimed).await {
            Ok(()) => {
                let mut held = self
                    .handle
                    .shared
                    .held
                    .lock()
                    .expect("held lock is never poisoned");
                if !held.is_empty() {
                    held.remove(&seq);
                }
            }
            Err(StoreError::Fenced) => {
                // Another node holds the delivery now: its result stands, this one is dropped.
                tracing::warn!(delivery_id = %crate::model::delivery_id(seq), "an attempt's outcome was dropped: its claim had passed to another node");
            }
            Err(e) => {
                // Held back before the claim is released, so it is not claimed again at once.
                self.hold(seq);
                tracing::error!(error = %e, delivery_id = %crate::model::delivery_id(seq), "storing an attempt's outcome failed; the delivery waits before it is attempted again");
            }
        }
    }

    async fn attempt_and_settle(&self, ep: &Endpoint, claimed: Claimed) -> Result<(), StoreError> {
        let Claimed {
            claim,
            event,
            delivery,
            ..
        } = claimed;
        // Counted while under way, so `/status` can tell waiting retries from running ones.
        struct Retrying<'a>(&'a AtomicUsize);
        impl Drop for Retrying<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _retrying = (delivery.attempts_in_round() > 0).then(|| {
            self.handle
                .shared
                .retrying_in_flight
                .fetch_add(1, Ordering::Relaxed);
            Retrying(&self.handle.shared.retrying_in_flight)
        });
        let n = delivery.attempts.len() as u32 + 1;
        let span = tracing::debug_span!("attempt", event_id = %event.id, endpoint_id = %ep.id(), attempt = n);
        let started_ms = now_ms();
        let outcome: Outcome = self
            .client
            .attempt(ep, &event, n, (started_ms / 1000) as i64)
            .instrument(span.clone())
            .await;
        let secs = outcome.duration.as_secs_f64();
        self.metrics.record_attempt(outcome.status_code, secs);
        span.in_scope(|| {
            tracing::debug!(status = ?outcome.status_code, error = ?outcome.error, ms = outcome.duration.as_millis() as u64, "attempt finished")
        });
        let result = match outcome.status_code {
            Some(code) => AttemptResult::Status {
                code,
                retry_after: outcome.retry_after.clone(),
            },
            None => AttemptResult::Failed,
        };
        let in_round = delivery.attempts_in_round() + 1;
        let decision = retry::decide(
            &self.policy,
            in_round,
            &result,
            now_ms(),
            rand::random::<f64>(),
        );
        let outcome_kind = match decision {
            Decision::Succeeded => SettleOutcome::Succeeded,
            Decision::Retry { at_ms } => SettleOutcome::Retry { at_ms },
            Decision::Dead { reason } => {
                let reason = match reason {
                    retry::DeadReason::EndpointGone => DeadReason::EndpointGone,
                    retry::DeadReason::RetriesExhausted => DeadReason::RetriesExhausted,
                };
                tracing::info!(event_id = %event.id, endpoint_id = %ep.id(), reason = reason.as_str(), "delivery dead-lettered");
                SettleOutcome::Dead { reason }
            }
        };
        let attempt = Attempt {
            n,
            at_ms: started_ms,
            status_code: outcome.status_code,
            duration_ms: outcome.duration.as_millis().min(u128::from(u32::MAX)) as u32,
            error: outcome.error,
            response_snippet: outcome.response_snippet,
        };
        let disable_after_ms = self.config.endpoints.disable_after.as_millis() as u64;
        self.store
            .settle(Settlement {
                claim,
                as_read: delivery,
                attempt,
                outcome: outcome_kind,
                disable_after_ms,
            })
            .await
    }
}

fn now_ms() -> u64 {
    crate::api::now_ms()
}

/// How many slots an endpoint with work can use, for the fair share: its own limit, and no more
/// than its rate limit per second (attempts of one second).
fn need(ep: &Endpoint) -> usize {
    let limit = own_limit(ep);
    match ep.rate_limit_per_second {
        Some(rate) => limit.min(rate.max(1) as usize),
        None => limit,
    }
}

/// An endpoint's own limit on attempts under way: 1 when `ordered`, else its `max_in_flight`.
fn own_limit(ep: &Endpoint) -> usize {
    if ep.ordered {
        1
    } else {
        ep.max_in_flight.max(1) as usize
    }
}
