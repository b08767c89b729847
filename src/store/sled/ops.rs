//! sled's transactions: every state change of the daemon, each one atomic.

use super::codec::{
    decode_event_head, pair_key, queue_key, queue_value, retry_queue_value, u64_key, EventHead,
};
use super::writer::{TreeId, Tx, TxResult};
use super::{
    DeliveryKey, DeliveryRefused, IngestOutcome, NewEvent, QueueEntry, Redriven, SettleOutcome,
    Settlement, SledStore, StoreError,
};
use crate::model::{
    DeadLetter, Delivery, DeliveryStatus, Endpoint, EndpointHealth, Event, EventIdRecord,
};
use crate::store::{admit, Audience};

/// The `meta` key that records when deliveries were last added to a stored event.
fn redelivered_key(event_seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'r';
    key[1..].copy_from_slice(&event_seq.to_be_bytes());
    key
}

/// How many queue entries one transaction of a chunked change handles.
const CHUNK: usize = 1000;

impl<'a> Audience<'a> {
    fn of(event: &'a EventHead) -> Audience<'a> {
        Audience {
            event_id: &event.id,
            partner_id: &event.partner_id,
            environment: event.environment,
        }
    }
}

/// Who a stored event is for, read without its payload; `None` when it is gone.
fn event_head(tx: &Tx<'_>, event_seq: u64) -> TxResult<Option<EventHead>> {
    match tx.get_raw(TreeId::Events, &u64_key(event_seq))? {
        Some(bytes) => decode_event_head(&bytes)
            .map(Some)
            .map_err(sled::transaction::ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

/// Creates a pending delivery of `key` to `ep`, due at `due_ms`, once [`admit`] lets it through.
/// The only way a new delivery enters a queue.
fn create_delivery(
    tx: &Tx<'_>,
    event: Audience<'_>,
    ep: &Endpoint,
    key: DeliveryKey,
    due_ms: u64,
) -> TxResult<Result<(), DeliveryRefused>> {
    if let Err(refused) = admit(event, ep) {
        return Ok(Err(refused));
    }
    enqueue(tx, ep, key, due_ms, false)?;
    count_new_delivery(tx, ep.num);
    Ok(Ok(()))
}

/// What became of one dead letter asked to be retried.
enum Redrive {
    Missing,
    Done,
    Refused(DeliveryRefused),
}

impl SledStore {
    /// Stores new events with one pending delivery per matching endpoint, durably.
    pub async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<IngestOutcome>, StoreError> {
        self.write(true, move |tx| {
            events.iter().map(|ev| ingest_one(tx, ev)).collect()
        })
        .await
    }

    pub async fn create_endpoint(&self, mut endpoint: Endpoint) -> Result<Endpoint, StoreError> {
        self.write(true, move |tx| {
            endpoint.num = tx.generate_id()?;
            tx.put(
                TreeId::Health,
                &u64_key(endpoint.num),
                &EndpointHealth::default(),
            )?;
            tx.put_endpoint(endpoint.clone())?;
            Ok(endpoint.clone())
        })
        .await
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
            .write(true, move |tx| {
                let Some(old) = tx.endpoint(num) else {
                    return Ok(None);
                };
                let mut ep = (*old).clone();
                change(&mut ep);
                if ep.enabled && !old.enabled {
                    tx.put(TreeId::Health, &u64_key(num), &EndpointHealth::default())?;
                }
                tx.put_endpoint(ep.clone())?;
                Ok(Some((ep, old.ordered)))
            })
            .await?;
        let Some((ep, was_ordered)) = updated else {
            return Ok(None);
        };
        if ep.ordered != was_ordered {
            self.requeue_endpoint(num).await?;
        }
        Ok(Some(ep))
    }

    /// Rewrites an endpoint's queue entries into the form its `ordered` setting asks for, in chunks.
    /// New entries already take the new form, so this ends.
    async fn requeue_endpoint(&self, num: u64) -> Result<(), StoreError> {
        loop {
            let Some(ep) = self.endpoint(num) else {
                return Ok(());
            };
            let wrong: Vec<QueueEntry> = self
                .queue_entries_raw(num, CHUNK)?
                .into_iter()
                .filter(|e| {
                    if ep.ordered {
                        e.sort != 0
                    } else {
                        e.sort != e.due_ms
                    }
                })
                .collect();
            if wrong.is_empty() {
                return Ok(());
            }
            self.write(true, move |tx| {
                let Some(ep) = tx.endpoint(num) else {
                    return Ok(());
                };
                for e in &wrong {
                    let key = queue_key(num, e.sort, e.delivery.seq);
                    if tx.get_raw(TreeId::Queue, &key)?.is_some() {
                        tx.remove(TreeId::Queue, &key)?;
                        enqueue(tx, &ep, e.delivery, e.due_ms, e.retry)?;
                    }
                }
                Ok(())
            })
            .await?;
        }
    }

    /// Deletes an endpoint and cancels its pending deliveries; false when it does not exist.
    pub async fn delete_endpoint(&self, num: u64) -> Result<bool, StoreError> {
        let existed = self
            .write(true, move |tx| {
                if tx.endpoint(num).is_none() {
                    return Ok(false);
                }
                tx.remove_endpoint(num)?;
                Ok(true)
            })
            .await?;
        // With the endpoint gone no new entries join its queue: cancel what is there, in chunks.
        loop {
            let entries = self.queue_entries_raw(num, CHUNK)?;
            if entries.is_empty() {
                return Ok(existed);
            }
            self.write(true, move |tx| {
                for e in &entries {
                    tx.remove(TreeId::Queue, &queue_key(num, e.sort, e.delivery.seq))?;
                    cancel(tx, e.delivery)?;
                }
                Ok(())
            })
            .await?;
        }
    }

    /// Records an attempt's outcome: attempt log, status, queue, dead letter and endpoint health, atomically.
    pub async fn settle(&self, s: Settlement) -> Result<(), StoreError> {
        self.write(false, move |tx| settle(tx, &s)).await
    }

    /// New deliveries of stored events to endpoints (redeliver, recover). Returns how many, or,
    /// when any pair would cross partners or environments, why, with nothing created.
    pub async fn add_deliveries(
        &self,
        pairs: Vec<(u64, u64)>,
        now_ms: u64,
    ) -> Result<Result<u32, DeliveryRefused>, StoreError> {
        self.write(true, move |tx| {
            let mut admitted = Vec::with_capacity(pairs.len());
            for &(event_seq, endpoint_num) in &pairs {
                let Some(ep) = tx.endpoint(endpoint_num) else {
                    continue;
                };
                let Some(event) = event_head(tx, event_seq)? else {
                    continue;
                };
                if let Err(refused) = admit(Audience::of(&event), &ep) {
                    return Ok(Err(refused));
                }
                admitted.push((event, ep));
            }
            let mut n = 0;
            for (event, ep) in &admitted {
                let d = Delivery {
                    seq: tx.generate_id()?,
                    ..Delivery::initial(event.seq, now_ms, 0, ep.num)
                };
                if create_delivery(tx, Audience::of(event), ep, delivery_key(&d), now_ms)?.is_err()
                {
                    continue;
                }
                tx.put(TreeId::Deliveries, &pair_key(event.seq, d.seq), &d)?;
                // Tells a retention pass that scanned this event earlier to leave it alone.
                tx.put_raw(TreeId::Meta, &redelivered_key(event.seq), &u64_key(now_ms))?;
                n += 1;
            }
            Ok(Ok(n))
        })
        .await
    }

    /// Gives dead-lettered deliveries a fresh set of attempts. A dead letter whose endpoint may not
    /// get its event (see [`admit`]) stays where it is and is reported.
    pub async fn retry_dead_letters(
        &self,
        seqs: Vec<u64>,
        now_ms: u64,
    ) -> Result<Redriven, StoreError> {
        self.write(true, move |tx| {
            let mut out = Redriven::default();
            for &seq in &seqs {
                match retry_dead_letter(tx, seq, now_ms)? {
                    Redrive::Missing => {}
                    Redrive::Done => out.requeued += 1,
                    Redrive::Refused(r) => out.refused.push(r),
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn delete_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        self.write(true, move |tx| {
            if tx.get_raw(TreeId::DeadLetters, &u64_key(seq))?.is_none() {
                return Ok(false);
            }
            tx.remove(TreeId::DeadLetters, &u64_key(seq))?;
            tx.counters().dead_letters -= 1;
            Ok(true)
        })
        .await
    }

    /// Removes final events received before `before_ms` and dead letters that died before `dead_before_ms`,
    /// at most `limit` of each. Returns (events, dead letters) removed.
    pub async fn purge(
        &self,
        before_ms: u64,
        dead_before_ms: u64,
        limit: usize,
    ) -> Result<(u32, u32), StoreError> {
        // Candidates are read outside the transaction (sled cannot scan inside one) and checked again inside.
        let scanned_at = crate::api::now_ms();
        let mut events = Vec::new();
        for ev in self.events_from(0, limit * 4)? {
            if ev.received_at_ms >= before_ms || events.len() >= limit {
                break;
            }
            let deliveries = self.event_deliveries(&ev)?;
            if deliveries.iter().all(|d| d.status.is_final()) {
                events.push((
                    ev.seq,
                    ev.id,
                    deliveries.iter().map(|d| d.seq).collect::<Vec<_>>(),
                ));
            }
        }
        let dead: Vec<u64> = self
            .dead_letters(0, limit, |dl| dl.dead_at_ms < dead_before_ms)?
            .into_iter()
            .take_while(|dl| dl.dead_at_ms < dead_before_ms)
            .map(|dl| dl.seq)
            .collect();
        if events.is_empty() && dead.is_empty() {
            return Ok((0, 0));
        }
        self.write(false, move |tx| purge(tx, &events, &dead, scanned_at))
            .await
    }

    /// Cancels the pending delivery of a queue entry of endpoint `endpoint_num` whose event or
    /// delivery is gone. An entry whose delivery cannot be read at all is removed on its own (and no
    /// longer counted), so it cannot come back forever.
    pub async fn cancel_delivery(
        &self,
        endpoint_num: u64,
        entry: QueueEntry,
    ) -> Result<(), StoreError> {
        self.write(false, move |tx| {
            if load_delivery(tx, entry.delivery)?.is_some() {
                return cancel(tx, entry.delivery);
            }
            let key = queue_key(endpoint_num, entry.sort, entry.delivery.seq);
            if tx.get_raw(TreeId::Queue, &key)?.is_some() {
                tracing::warn!(
                    delivery_id = %crate::model::delivery_id(entry.delivery.seq),
                    "a queue entry without its delivery was removed"
                );
                tx.remove(TreeId::Queue, &key)?;
                tx.pending_delta(endpoint_num, -1);
                let mut c = tx.counters();
                c.pending = c.pending.saturating_sub(1);
            }
            Ok(())
        })
        .await
    }
}

pub(super) fn ingest_one(tx: &Tx<'_>, ev: &NewEvent) -> TxResult<IngestOutcome> {
    let stored = if tx.event_id_may_exist(&ev.id) {
        tx.get::<EventIdRecord>(TreeId::EventIds, ev.id.as_bytes())?
    } else {
        None
    };
    if let Some(rec) = stored {
        return Ok(if rec.content_hash == ev.content_hash {
            IngestOutcome::Duplicate {
                deliveries: rec.deliveries,
            }
        } else {
            IngestOutcome::Conflict
        });
    }
    let audience = Audience {
        event_id: &ev.id,
        partner_id: &ev.partner_id,
        environment: ev.environment,
    };
    // A test event names its endpoint: refuse it whole, before anything is written.
    if let Some(ep) = ev.only_endpoint.and_then(|num| tx.endpoint(num)) {
        if let Err(refused) = admit(audience, &ep) {
            return Ok(IngestOutcome::Refused(refused));
        }
    }
    let seq = tx.generate_id()?;
    let mut initial_deliveries = Vec::new();
    tx.for_matching_endpoints(
        |ep| {
            // No delivery record yet: the queue entry and the event's list stand for it.
            let key = DeliveryKey {
                event_seq: seq,
                seq: tx.generate_id()?,
            };
            if create_delivery(tx, audience, ep, key, ev.received_at_ms)?.is_ok() {
                initial_deliveries.push((key.seq, ep.num));
            }
            Ok(())
        },
        |ep| match ev.only_endpoint {
            Some(num) => ep.num == num,
            None => ep.matches(&ev.partner_id, ev.environment, &ev.event_type),
        },
    )?;
    let event = Event {
        seq,
        id: ev.id.clone(),
        partner_id: ev.partner_id.clone(),
        environment: ev.environment,
        event_type: ev.event_type.clone(),
        created_at: ev.created_at.clone(),
        received_at_ms: ev.received_at_ms,
        payload: ev.payload.clone(),
        content_hash: ev.content_hash,
        initial_deliveries,
    };
    let deliveries = event.initial_deliveries.len() as u32;
    tx.put(TreeId::Events, &u64_key(seq), &event)?;
    let rec = EventIdRecord {
        event_seq: seq,
        content_hash: ev.content_hash,
        deliveries,
    };
    tx.put(TreeId::EventIds, ev.id.as_bytes(), &rec)?;
    tx.note_event_id(&ev.id);
    tx.counters().events += 1;
    tx.events_stored_delta(1);
    Ok(IngestOutcome::Accepted { deliveries })
}

/// Counts a new pending delivery to endpoint `endpoint_num`.
fn count_new_delivery(tx: &Tx<'_>, endpoint_num: u64) {
    tx.pending_delta(endpoint_num, 1);
    let mut c = tx.counters();
    c.deliveries_created += 1;
    c.pending += 1;
}

fn delivery_key(d: &Delivery) -> DeliveryKey {
    DeliveryKey {
        event_seq: d.event_seq,
        seq: d.seq,
    }
}

/// A delivery as the group sees it: its record, or before its first attempt, its event's entry.
fn load_delivery(tx: &Tx<'_>, key: DeliveryKey) -> TxResult<Option<Delivery>> {
    if let Some(d) = tx.get::<Delivery>(TreeId::Deliveries, &pair_key(key.event_seq, key.seq))? {
        return Ok(Some(d));
    }
    let Some(event) = tx.get::<Event>(TreeId::Events, &u64_key(key.event_seq))? else {
        return Ok(None);
    };
    Ok(super::initial_delivery(&event, key.seq))
}

fn put_delivery(tx: &Tx<'_>, d: &Delivery) -> TxResult<()> {
    tx.put(TreeId::Deliveries, &pair_key(d.event_seq, d.seq), d)
}

/// Puts a delivery in its endpoint's queue; `retry` marks a delivery already attempted. New
/// deliveries come here only through [`create_delivery`], and redriven ones after [`admit`]; the
/// others are already in the queue's care (a retry after a failed attempt, a rewrite after `ordered`
/// changed).
fn enqueue(tx: &Tx<'_>, ep: &Endpoint, key: DeliveryKey, due_ms: u64, retry: bool) -> TxResult<()> {
    let sort = if ep.ordered { 0 } else { due_ms };
    let queue_key = queue_key(ep.num, sort, key.seq);
    if retry {
        tx.put_raw(
            TreeId::Queue,
            &queue_key,
            &retry_queue_value(due_ms, key.event_seq),
        )?;
    } else {
        tx.put_raw(
            TreeId::Queue,
            &queue_key,
            &queue_value(due_ms, key.event_seq),
        )?;
    }
    tx.wake_scheduler();
    Ok(())
}

/// Removes a delivery's queue entry, whichever form (ordered or not) it was written in. Only an
/// entry that exists is removed: in sled a removal is a write, even of a missing key.
fn dequeue(tx: &Tx<'_>, d: &Delivery) -> TxResult<()> {
    let mut sorts = vec![0];
    if let Some(due) = d.next_attempt_at_ms.filter(|&due| due != 0) {
        sorts.push(due);
    }
    for sort in sorts {
        let key = queue_key(d.endpoint_num, sort, d.seq);
        if tx.get_raw(TreeId::Queue, &key)?.is_some() {
            tx.remove(TreeId::Queue, &key)?;
        }
    }
    Ok(())
}

fn cancel(tx: &Tx<'_>, key: DeliveryKey) -> TxResult<()> {
    let Some(mut d) = load_delivery(tx, key)? else {
        return Ok(());
    };
    if d.status != DeliveryStatus::Pending {
        return Ok(());
    }
    dequeue(tx, &d)?;
    let was_retrying = d.attempts_in_round() > 0;
    d.status = DeliveryStatus::Cancelled;
    d.next_attempt_at_ms = None;
    put_delivery(tx, &d)?;
    tx.pending_delta(d.endpoint_num, -1);
    let mut c = tx.counters();
    c.pending -= 1;
    if was_retrying {
        c.retrying -= 1;
    }
    c.deliveries_cancelled += 1;
    Ok(())
}

fn settle(tx: &Tx<'_>, s: &Settlement) -> TxResult<()> {
    let key = pair_key(s.claim.delivery.event_seq, s.claim.delivery.seq);
    let recorded = tx.get::<Delivery>(TreeId::Deliveries, &key)?;
    let initial = || s.as_read.seq == s.claim.delivery.seq && s.as_read.attempts.is_empty();
    let loaded = match recorded {
        Some(d) => Some(d),
        None if initial() => Some(s.as_read.clone()),
        None => load_delivery(tx, s.claim.delivery)?,
    };
    let Some(mut d) = loaded else {
        return Ok(());
    };
    if d.status != DeliveryStatus::Pending {
        // Cancelled while the attempt ran: keep the log, change nothing else.
        d.attempts.push(s.attempt.clone());
        put_delivery(tx, &d)?;
        return Ok(());
    }
    let Some(ep) = tx.endpoint(d.endpoint_num) else {
        return cancel(tx, s.claim.delivery);
    };
    dequeue(tx, &d)?;
    let was_retrying = d.attempts_in_round() > 0;
    d.attempts.push(s.attempt.clone());
    super::stats::count_attempt(
        tx,
        ep.num,
        &s.attempt,
        s.outcome == SettleOutcome::Succeeded,
    )?;
    let now = s.attempt.at_ms;
    let mut health: EndpointHealth = tx
        .get(TreeId::Health, &u64_key(ep.num))?
        .unwrap_or_default();
    let disable = s.apply_to_health(&mut health);
    match s.outcome {
        SettleOutcome::Succeeded => {
            d.status = DeliveryStatus::Succeeded;
            d.next_attempt_at_ms = None;
            super::notices::succeeded(tx, &ep, now)?;
            tx.pending_delta(ep.num, -1);
            let mut c = tx.counters();
            c.pending -= 1;
            if was_retrying {
                c.retrying -= 1;
            }
            c.deliveries_succeeded += 1;
            c.attempts_succeeded += 1;
        }
        SettleOutcome::Retry { at_ms } => {
            d.next_attempt_at_ms = Some(at_ms);
            enqueue(tx, &ep, s.claim.delivery, at_ms, true)?;
            let mut c = tx.counters();
            if !was_retrying {
                c.retrying += 1;
            }
            c.attempts_failed += 1;
        }
        SettleOutcome::Dead { reason } => {
            d.status = DeliveryStatus::Dead;
            d.next_attempt_at_ms = None;
            let round = &d.attempts[d.attempts_before_redrive as usize..];
            let dl = DeadLetter {
                seq: tx.generate_id()?,
                delivery_seq: d.seq,
                event_seq: d.event_seq,
                endpoint_num: ep.num,
                attempts: round.len() as u32,
                last_status_code: s.attempt.status_code,
                last_error: s.attempt.error.clone(),
                first_attempt_at_ms: round.first().map(|a| a.at_ms),
                dead_at_ms: now,
                reason,
            };
            tx.put(TreeId::DeadLetters, &u64_key(dl.seq), &dl)?;
            super::notices::dead_lettered(tx, &ep, dl.seq)?;
            tx.pending_delta(ep.num, -1);
            let mut c = tx.counters();
            c.pending -= 1;
            if was_retrying {
                c.retrying -= 1;
            }
            c.attempts_failed += 1;
            c.deliveries_dead += 1;
            c.dead_letters += 1;
        }
    }
    if let Some(reason) = disable {
        // The operator endpoint is never disabled by the daemon: notifications would stop unseen.
        if ep.enabled && ep.partner_id != super::OPERATOR_PARTNER {
            super::notices::endpoint_disabled(tx, &ep, &reason, &health, now)?;
            tracing::info!(endpoint_id = %ep.id(), %reason, "endpoint disabled");
            let mut changed = (*ep).clone();
            changed.enabled = false;
            changed.disabled_reason = Some(reason);
            tx.put_endpoint(changed)?;
        }
    }
    tx.put(TreeId::Health, &u64_key(ep.num), &health)?;
    put_delivery(tx, &d)
}

fn retry_dead_letter(tx: &Tx<'_>, seq: u64, now_ms: u64) -> TxResult<Redrive> {
    let Some(dl) = tx.get::<DeadLetter>(TreeId::DeadLetters, &u64_key(seq))? else {
        return Ok(Redrive::Missing);
    };
    let key = DeliveryKey {
        event_seq: dl.event_seq,
        seq: dl.delivery_seq,
    };
    let delivery = load_delivery(tx, key)?;
    let endpoint = delivery.as_ref().and_then(|d| tx.endpoint(d.endpoint_num));
    let event = event_head(tx, dl.event_seq)?;
    let (Some(mut d), Some(ep), Some(event)) = (delivery, endpoint, event) else {
        // Nothing left to deliver: the dead letter just goes.
        remove_dead_letter(tx, seq)?;
        return Ok(Redrive::Done);
    };
    if let Err(refused) = admit(Audience::of(&event), &ep) {
        return Ok(Redrive::Refused(refused));
    }
    remove_dead_letter(tx, seq)?;
    if d.status != DeliveryStatus::Dead {
        return Ok(Redrive::Done);
    }
    d.status = DeliveryStatus::Pending;
    d.attempts_before_redrive = d.attempts.len() as u32;
    d.next_attempt_at_ms = Some(now_ms);
    put_delivery(tx, &d)?;
    enqueue(tx, &ep, key, now_ms, false)?;
    tx.pending_delta(ep.num, 1);
    tx.counters().pending += 1;
    Ok(Redrive::Done)
}

fn remove_dead_letter(tx: &Tx<'_>, seq: u64) -> TxResult<()> {
    tx.remove(TreeId::DeadLetters, &u64_key(seq))?;
    tx.counters().dead_letters -= 1;
    Ok(())
}

/// Removes events (with their deliveries and id records) and dead letters found by [`SledStore::purge`],
/// skipping any that changed since.
fn purge(
    tx: &Tx<'_>,
    events: &[(u64, String, Vec<u64>)],
    dead: &[u64],
    scanned_at: u64,
) -> TxResult<(u32, u32)> {
    let mut purged = 0u32;
    'events: for (event_seq, id, deliveries) in events {
        // Deliveries added since the scan (redeliver, recover) are not in `deliveries`: skip such events.
        if let Some(at) = tx.get_raw(TreeId::Meta, &redelivered_key(*event_seq))? {
            if super::codec::read_u64(&at) >= scanned_at {
                continue;
            }
            tx.remove(TreeId::Meta, &redelivered_key(*event_seq))?;
        }
        for &dseq in deliveries {
            let key = DeliveryKey {
                event_seq: *event_seq,
                seq: dseq,
            };
            if load_delivery(tx, key)?.is_some_and(|d| !d.status.is_final()) {
                continue 'events;
            }
        }
        for &dseq in deliveries {
            tx.remove(TreeId::Deliveries, &pair_key(*event_seq, dseq))?;
        }
        if tx.remove_existing(TreeId::Events, &u64_key(*event_seq))? {
            tx.events_stored_delta(-1);
        }
        tx.remove(TreeId::EventIds, id.as_bytes())?;
        purged += 1;
    }
    let mut removed = 0u32;
    for &seq in dead {
        if tx.get_raw(TreeId::DeadLetters, &u64_key(seq))?.is_some() {
            tx.remove(TreeId::DeadLetters, &u64_key(seq))?;
            tx.counters().dead_letters -= 1;
            removed += 1;
        }
    }
    Ok((purged, removed))
}

#[cfg(test)]
mod tests;
