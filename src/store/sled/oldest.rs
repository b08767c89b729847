//! The oldest pending delivery: when it became pending, found by a scan of the queue and kept in memory between scans.
//!
//! A delivery becomes pending when it is created (at ingest, or by redeliver/recover) and again
//! when a dead letter is redriven; it stays pending while it waits for retries. `/status` and
//! `/metrics` read the figure kept here and never scan: [`SledStore::refresh_oldest_pending`] runs once
//! a second (housekeeping). It only checks that the delivery found last is still pending, which
//! costs two reads: deliveries created later are younger, so while it is pending it is the oldest.
//! When it is no longer pending the whole queue is scanned again, at most once per ten times the
//! last scan took (a million entries take about a second); until then the last answer stands,
//! which overstates the age, never understates it.
//!
//! Where "pending since" comes from, without reading each delivery: the queue entry of a delivery
//! not yet attempted in its round (no retry mark) is due at the moment it became pending, so its
//! due time is the answer. A retry's entry is due later; the delivery's record says when it was
//! created, and delivery numbers grow with creation, so the retry with the lowest number is the
//! oldest, unless it was redriven (then it counts from its redrive and the next one is read too).

use super::codec::{self, Record};
use super::{get, initial_delivery, queue_entry, DeliveryKey, SledStore, StoreError};
use crate::model::{Delivery, DeliveryStatus, Event};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Redriven retries read at most in one scan before the answer is settled for.
const MAX_RETRY_LOOKUPS: usize = 256;

/// What the last refresh found.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    state: Mutex<Tracked>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tracked {
    /// The oldest pending delivery found, and when it became pending (unix ms).
    oldest: Option<(DeliveryKey, u64)>,
    /// No full scan before this.
    next_scan: Option<Instant>,
}

impl Tracker {
    fn get(&self) -> Tracked {
        *self.state.lock().expect("oldest lock is never poisoned")
    }

    fn set(&self, t: Tracked) {
        *self.state.lock().expect("oldest lock is never poisoned") = t;
    }
}

impl SledStore {
    /// When the oldest pending delivery became pending (unix ms), as of the last
    /// [`SledStore::refresh_oldest_pending`]; `None` when it found nothing pending. Costs no read.
    pub fn oldest_pending_since(&self) -> Option<u64> {
        self.inner.oldest.get().oldest.map(|(_, since)| since)
    }

    /// Brings [`SledStore::oldest_pending_since`] up to date: two reads while the oldest delivery stays
    /// pending, a scan of the queue when it has gone (throttled; see the module's notes).
    pub fn refresh_oldest_pending(&self) -> Result<(), StoreError> {
        let tracked = self.inner.oldest.get();
        if self.counters().pending == 0 {
            self.inner.oldest.set(Tracked {
                oldest: None,
                ..tracked
            });
            return Ok(());
        }
        if let Some((key, since)) = tracked.oldest {
            if matches!(self.pending_since(key)?, Some((s, _)) if s == since) {
                return Ok(());
            }
        }
        if tracked.next_scan.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let started = Instant::now();
        let oldest = self.scan_oldest_pending()?;
        let took = started.elapsed();
        self.inner.oldest.set(Tracked {
            oldest,
            next_scan: Some(Instant::now() + (took * 10).min(Duration::from_secs(60))),
        });
        Ok(())
    }

    /// When delivery `key` became pending, and whether that was a redrive; `None` when it is not pending.
    pub(crate) fn pending_since(
        &self,
        key: DeliveryKey,
    ) -> Result<Option<(u64, bool)>, StoreError> {
        let sled = self.inner.state.sled()?;
        let d = match sled
            .trees
            .deliveries
            .get(codec::pair_key(key.event_seq, key.seq))?
        {
            Some(v) => Delivery::decode(&v)?,
            None => {
                let Some(event) = get::<Event>(&sled.trees.events, key.event_seq)? else {
                    return Ok(None);
                };
                match initial_delivery(&event, key.seq) {
                    Some(d) => d,
                    None => return Ok(None),
                }
            }
        };
        if d.status != DeliveryStatus::Pending {
            return Ok(None);
        }
        Ok(Some(since_of(&d)))
    }

    /// Reads the whole queue for the delivery pending the longest (see the module's notes).
    fn scan_oldest_pending(&self) -> Result<Option<(DeliveryKey, u64)>, StoreError> {
        let sled = self.inner.state.sled()?;
        let mut best: Option<(DeliveryKey, u64)> = None;
        let mut retries = Vec::new();
        for item in sled.trees.queue.iter() {
            let (key, value) = item?;
            let entry = queue_entry(&key, &value);
            if entry.retry {
                retries.push(entry.delivery);
            } else if best.is_none_or(|(_, since)| entry.due_ms < since) {
                best = Some((entry.delivery, entry.due_ms));
            }
        }
        drop(sled);
        retries.sort_unstable_by_key(|k| k.seq);
        for key in retries.into_iter().take(MAX_RETRY_LOOKUPS) {
            let Some((since, redriven)) = self.pending_since(key)? else {
                continue;
            };
            if best.is_none_or(|(_, b)| since < b) {
                best = Some((key, since));
            }
            if !redriven {
                break;
            }
        }
        Ok(best)
    }
}

/// When a pending delivery became pending: its creation, or for a redriven one its redrive (the
/// due time it was given then, or its first attempt since).
fn since_of(d: &Delivery) -> (u64, bool) {
    if d.attempts_before_redrive == 0 {
        return (d.created_at_ms, false);
    }
    let since = d
        .attempts
        .get(d.attempts_before_redrive as usize)
        .map(|a| a.at_ms)
        .or(d.next_attempt_at_ms)
        .unwrap_or(d.created_at_ms);
    (since, true)
}
