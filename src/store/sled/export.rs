//! Reading a stopped sled store out whole, in the backend-neutral form of [`crate::store::transfer`]
//! (`preflix-webhookd migrate`). Reads only: nothing here writes to the store.

use super::{codec, SledStore};
use crate::model::{DeadLetter, DeliveryStatus, EndpointHealth, PartnerToken};
use crate::stats::HourStats;
use crate::store::transfer::{ExportSource, ExportedDelivery, ExportedEndpoint, ExportedEvent};
use crate::store::{Counters, StoreError};
use std::collections::HashMap;

/// A sled store opened for export: its queue read once (every pending delivery's due time and
/// retry mark live in its queue entry, not in the delivery's record).
pub struct SledExport {
    store: SledStore,
    /// delivery seq → (due time, retry mark).
    queue: HashMap<u64, (u64, bool)>,
}

impl SledStore {
    /// Reads the queue and returns the store as an [`ExportSource`]. Meant for a stopped store:
    /// the caller opened it, so no daemon holds it.
    pub fn export(&self) -> Result<SledExport, StoreError> {
        let mut queue = HashMap::new();
        for item in self.inner.state.sled()?.trees.queue.iter() {
            let (key, value) = item?;
            let (_, _, seq) = codec::split_queue_key(&key);
            let (due_ms, _) = codec::split_queue_value(&value);
            queue.insert(seq, (due_ms, codec::queue_value_is_retry(&value)));
        }
        Ok(SledExport {
            store: self.clone(),
            queue,
        })
    }
}

impl ExportSource for SledExport {
    fn endpoints(&self) -> Result<Vec<ExportedEndpoint>, StoreError> {
        self.store
            .endpoints()
            .into_iter()
            .map(|ep| {
                let health = self
                    .store
                    .health(ep.num)
                    .unwrap_or_else(|_| EndpointHealth::default());
                Ok(ExportedEndpoint {
                    endpoint: (*ep).clone(),
                    health,
                })
            })
            .collect()
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<ExportedEvent>, StoreError> {
        let events = self.store.events_from(after, limit)?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let mut deliveries = Vec::new();
            for mut delivery in self.store.event_deliveries(&event)? {
                let mut retry = false;
                if delivery.status == DeliveryStatus::Pending {
                    match self.queue.get(&delivery.seq) {
                        Some(&(due, r)) => {
                            delivery.next_attempt_at_ms = Some(due);
                            retry = r;
                        }
                        // Pending without a queue entry cannot be claimed on sled either; it
                        // keeps the due time its record holds (due now when it holds none).
                        None => {
                            delivery.next_attempt_at_ms =
                                delivery.next_attempt_at_ms.or(Some(event.received_at_ms));
                        }
                    }
                } else {
                    delivery.next_attempt_at_ms = None;
                }
                deliveries.push(ExportedDelivery { delivery, retry });
            }
            out.push(ExportedEvent {
                deliveries_at_ingest: event.initial_deliveries.len() as u32,
                event,
                deliveries,
            });
        }
        Ok(out)
    }

    fn dead_letters_after(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.dead_letters(after, limit, |_| true)
    }

    fn partner_tokens(&self) -> Result<Vec<PartnerToken>, StoreError> {
        self.store.tokens(None)
    }

    fn endpoint_stats(&self) -> Result<Vec<(u64, u64, HourStats)>, StoreError> {
        let mut out = Vec::new();
        for ep in self.store.endpoints() {
            for (hour, figures) in self.store.endpoint_stats(ep.num, 0, u64::MAX)? {
                out.push((ep.num, hour, figures));
            }
        }
        Ok(out)
    }

    fn totals(&self) -> Counters {
        self.store.counters()
    }

    fn next_number(&self) -> u64 {
        self.store
            .inner
            .state
            .next_id
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether opening failed because another process (a running daemon) holds the store.
pub fn is_held_by_another_process(e: &StoreError) -> bool {
    match e {
        StoreError::Sled(super::SledError(::sled::Error::Io(io))) => {
            io.to_string().contains("could not acquire lock")
        }
        StoreError::Io(io) => io.to_string().contains("could not acquire lock"),
        _ => false,
    }
}
