//! Claims on sled: which deliveries have an attempt under way, kept in memory only, and the queue reads that find due ones.
//!
//! A claim is never written: if the process dies, the delivery is still in the queue, due, and is
//! claimed again after the restart. The claims lock is held from before the queue is read until
//! the new claims are in: a claim is released only after its settle is committed, so an entry read
//! here is either still claimed or already settled, and a delivery is never handed out twice.
//!
//! Each endpoint keeps a read cursor (the queue position of the last entry handed out): the next
//! read starts after it instead of re-reading every claimed entry. It restarts from the head when
//! nothing of the endpoint is claimed and at least once a second ([`CURSOR_LIFETIME`]), so an entry
//! that lands behind it (clock step, `ordered` switched off) waits at most that long. It never
//! moves past an entry left waiting.

use super::{QueueEntry, SledStore, StoreError};
use crate::model::Endpoint;
use crate::store::{Claim, ClaimAsk, ClaimRound, Claimed, QueueHead};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// When part of an endpoint's room is only for first attempts, retries in the way are read and
/// skipped: this many more entries are read to find first attempts behind them.
const SKIP_READ: usize = 32;

/// How long a queue cursor is trusted before the next read starts from the head again.
const CURSOR_LIFETIME: Duration = Duration::from_secs(1);

/// The claims of this process.
#[derive(Default)]
pub(crate) struct Claims {
    state: Mutex<ClaimState>,
}

#[derive(Default)]
struct ClaimState {
    /// Deliveries with an attempt under way (or a cancel being committed).
    seqs: HashSet<u64>,
    per_endpoint: HashMap<u64, EndpointClaims>,
}

#[derive(Default)]
struct EndpointClaims {
    /// Its deliveries in `seqs`.
    claimed: usize,
    /// The queue position (sort, delivery) of the last entry handed out, and since when the cursor runs.
    cursor: Option<((u64, u64), Instant)>,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, ClaimState> {
        self.state.lock().expect("claims lock is never poisoned")
    }
}

impl ClaimState {
    fn insert(&mut self, endpoint_num: u64, seq: u64) {
        if self.seqs.insert(seq) {
            self.per_endpoint.entry(endpoint_num).or_default().claimed += 1;
        }
    }

    fn remove(&mut self, endpoint_num: u64, seq: u64) {
        if self.seqs.remove(&seq) {
            if let Some(ep) = self.per_endpoint.get_mut(&endpoint_num) {
                ep.claimed = ep.claimed.saturating_sub(1);
            }
        }
    }
}

impl SledStore {
    /// See [`crate::store::Store::claim`].
    pub async fn claim(&self, ep: &Endpoint, ask: ClaimAsk<'_>) -> Result<ClaimRound, StoreError> {
        let (entries, mut round) = self.claim_entries(ep, ask)?;
        // The entries are claimed: read what their attempts need, outside the lock.
        let mut missing = Vec::new();
        let mut failed = None;
        for entry in entries {
            match self.load_claimed(entry) {
                Ok(Some((event, delivery))) => round.claimed.push(Claimed {
                    claim: Claim {
                        delivery: entry.delivery,
                        endpoint_num: ep.num,
                        fence: 0,
                    },
                    retry: entry.retry,
                    event,
                    delivery,
                }),
                Ok(None) => missing.push(entry),
                Err(e) => {
                    self.release_seq(ep.num, entry.delivery.seq);
                    failed.get_or_insert(e);
                }
            }
        }
        // Nothing to send (the event or the delivery is gone): the entry leaves the queue, and is
        // claimed until that is committed.
        for entry in missing {
            let (store, num) = (self.clone(), ep.num);
            tokio::spawn(async move {
                if let Err(e) = store.cancel_delivery(num, entry).await {
                    tracing::error!(error = %e, delivery_id = %crate::model::delivery_id(entry.delivery.seq), "cancelling a delivery whose event is gone failed");
                }
                store.release_seq(num, entry.delivery.seq);
            });
        }
        if let Some(e) = failed {
            for c in round.claimed.drain(..) {
                self.release(c.claim);
            }
            return Err(e);
        }
        Ok(round)
    }

    /// See [`crate::store::Store::release`].
    pub fn release(&self, claim: Claim) {
        self.release_seq(claim.endpoint_num, claim.delivery.seq);
    }

    /// See [`crate::store::Store::is_claimed`].
    pub fn is_claimed(&self, delivery_seq: u64) -> bool {
        self.inner.claims.lock().seqs.contains(&delivery_seq)
    }

    /// See [`crate::store::Store::queue_head`].
    pub fn queue_head(&self, ep: &Endpoint) -> Result<Option<QueueHead>, StoreError> {
        Ok(self.first_queue_entry(ep.num, 0)?.map(|head| QueueHead {
            due_ms: head.due_ms,
            // Unordered, the head is the earliest due, unless it is still in the ordered form
            // (`ordered` just switched off).
            earliest: ep.ordered || head.sort != 0,
        }))
    }

    fn release_seq(&self, endpoint_num: u64, seq: u64) {
        self.inner.claims.lock().remove(endpoint_num, seq);
    }

    /// The event and the delivery of a claimed entry; `None` when either is gone.
    fn load_claimed(
        &self,
        entry: QueueEntry,
    ) -> Result<Option<(crate::model::Event, crate::model::Delivery)>, StoreError> {
        let Some(event) = self.event(entry.delivery.event_seq)? else {
            return Ok(None);
        };
        Ok(self
            .delivery_of(&event, entry.delivery.seq)?
            .map(|delivery| (event, delivery)))
    }

    /// Finds and claims the due entries `ask` admits, in queue order.
    fn claim_entries(
        &self,
        ep: &Endpoint,
        ask: ClaimAsk<'_>,
    ) -> Result<(Vec<QueueEntry>, ClaimRound), StoreError> {
        let (now, room, admits) = (ask.now_ms, ask.room, ask.admits);
        let mut round = ClaimRound::default();
        let note = |round: &mut ClaimRound, t: u64| {
            round.next_due_ms = Some(round.next_due_ms.map_or(t, |n| n.min(t)));
        };
        // Until when a delivery is held back, if that is after `now`.
        let held = |seq: u64| (ask.held_until)(seq).filter(|&until| until > now);
        // Held from before the queue is read until the new claims are in (see the module's notes).
        let mut claims = self.inner.claims.lock();
        let (mine, cursor) = {
            let run = claims.per_endpoint.entry(ep.num).or_default();
            if run.claimed == 0
                || run
                    .cursor
                    .is_some_and(|(_, at)| at.elapsed() > CURSOR_LIFETIME)
            {
                run.cursor = None;
            }
            (run.claimed, run.cursor.map(|(position, _)| position))
        };
        if ep.ordered {
            // Only the head may go, and only when nothing of this endpoint is under way.
            let Some(head) = self.first_queue_entry(ep.num, 0)? else {
                return Ok((vec![], round));
            };
            if claims.seqs.contains(&head.delivery.seq) {
                return Ok((vec![], round));
            }
            if let Some(until) = held(head.delivery.seq) {
                note(&mut round, until);
                return Ok((vec![], round));
            }
            if head.due_ms > now {
                note(&mut round, head.due_ms);
                return Ok((vec![], round));
            }
            if !admits(0, head.retry) {
                round.wants_more = true;
                return Ok((vec![], round));
            }
            claims.insert(ep.num, head.delivery.seq);
            return Ok((vec![head], round));
        }
        // From the cursor on, entries are not claimed (claims sit before it), so `room` entries
        // suffice; from the head, the endpoint's claimed ones are read and skipped. When some of the
        // room is only for first attempts, a few more are read, so that first attempts behind
        // retries are found.
        let mut limit = if cursor.is_some() { room } else { room + mine };
        if !admits(0, true) || !admits(room - 1, true) {
            limit += SKIP_READ;
        }
        let entries = self.queue_entries_after(ep.num, cursor, now, limit)?;
        let mut due: Vec<QueueEntry> = Vec::new();
        // The cursor moves past what is taken or under way, never past an entry left waiting.
        let mut passed: Option<&QueueEntry> = None;
        let mut left_waiting = false;
        for e in &entries {
            if due.len() == room {
                break;
            }
            if claims.seqs.contains(&e.delivery.seq) {
                if !left_waiting {
                    passed = Some(e);
                }
                continue;
            }
            // A delivery whose last outcome could not be stored waits (`held`) like one not due.
            if e.due_ms <= now && admits(due.len(), e.retry) && {
                let until = held(e.delivery.seq);
                if let Some(until) = until {
                    note(&mut round, until);
                }
                until.is_none()
            } {
                due.push(*e);
                if !left_waiting {
                    passed = Some(e);
                }
            } else {
                left_waiting = true;
            }
        }
        for e in &due {
            claims.insert(ep.num, e.delivery.seq);
        }
        let run = claims.per_endpoint.entry(ep.num).or_default();
        if let Some(last) = passed.filter(|_| !due.is_empty()) {
            let since = run.cursor.map_or_else(Instant::now, |(_, at)| at);
            run.cursor = Some(((last.sort, last.delivery.seq), since));
        }
        drop(claims);
        round.wants_more = left_waiting || entries.len() >= limit;
        round.only_retries = due.is_empty() && left_waiting && !admits(0, true);
        if due.len() < room {
            if let Some(next) = self.first_queue_entry(ep.num, now + 1)? {
                note(&mut round, next.due_ms);
            }
        }
        Ok((due, round))
    }
}
