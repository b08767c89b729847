//! Lists and lookups filtered by a partner's scope in the store query itself, so a partner token's answers never hold, count or page through another partner's data.
//!
//! The API passes the caller's [`PartnerScope`] (none for the admin token) down into these
//! functions; they decide, record by record as they scan, and stop at the page size. A cursor is
//! always the number of the last item *returned*, so it never points into another partner's data,
//! and a crafted cursor only moves where the (still filtered) scan starts.

use super::codec::{decode_event_head, u64_key, Record};
use super::SledStore;
use crate::model::{DeadLetter, Endpoint, Environment, Event, PartnerScope};
use crate::store::{DeadLetterFilter, EventFilter, StoreError};
use std::sync::Arc;

impl SledStore {
    /// Endpoints inside `scope` (every one without), only `partner_id`'s when given, by number.
    pub fn endpoints_in(
        &self,
        scope: Option<&PartnerScope>,
        partner_id: Option<&str>,
    ) -> Vec<Arc<Endpoint>> {
        self.read_endpoints()
            .values()
            .filter(|e| scope.is_none_or(|s| s.contains(&e.partner_id, e.environment)))
            .filter(|e| partner_id.is_none_or(|p| p == e.partner_id))
            .cloned()
            .collect()
    }

    /// The event with this id, if it lies inside `scope`.
    pub fn event_by_id_in(
        &self,
        id: &str,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<Event>, StoreError> {
        Ok(self
            .event_by_id(id)?
            .filter(|e| scope.is_none_or(|s| s.contains(&e.partner_id, e.environment))))
    }

    /// Dead letter `seq`, if it lies inside `scope`.
    pub fn dead_letter_in(
        &self,
        seq: u64,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let Some(dl) = self.dead_letter(seq)? else {
            return Ok(None);
        };
        let query = DeadLetterFilter {
            scope: scope.cloned(),
            ..DeadLetterFilter::default()
        };
        Ok(self.dead_letter_matches(&query, &dl)?.then_some(dl))
    }

    /// Up to `limit` dead letters after seq `after` that match `query`, oldest first.
    pub fn dead_letters_matching(
        &self,
        after: u64,
        limit: usize,
        query: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .state
            .sled()?
            .trees
            .dead_letters
            .range(u64_key(after.saturating_add(1))..)
        {
            let (_, v) = item?;
            let dl = DeadLetter::decode(&v)?;
            if self.dead_letter_matches(query, &dl)? {
                out.push(dl);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` events before seq `before` (from the newest without) that match `query`,
    /// newest first.
    pub fn events_matching(
        &self,
        query: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let sled = self.inner.state.sled()?;
        let end = u64_key(before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for item in sled.trees.events.range(..end).rev() {
            let (_, v) = item?;
            // Who it is for is read first, without the payload.
            let head = decode_event_head(&v)?;
            if let Some(scope) = &query.scope {
                if !scope.contains(&head.partner_id, head.environment) {
                    continue;
                }
            }
            let event = Event::decode(&v)?;
            if query
                .event_type
                .as_ref()
                .is_some_and(|t| *t != event.event_type)
            {
                continue;
            }
            if let Some(num) = query.endpoint_num {
                let delivered = event.initial_deliveries.iter().any(|&(_, e)| e == num)
                    || self
                        .event_deliveries(&event)?
                        .iter()
                        .any(|d| d.endpoint_num == num);
                if !delivered {
                    continue;
                }
            }
            out.push(event);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Whether a dead letter matches: its partner and environment are its endpoint's (the gate of
    /// contract section 7 made them the event's too), or its event's once the endpoint is gone.
    fn dead_letter_matches(
        &self,
        query: &DeadLetterFilter,
        dl: &DeadLetter,
    ) -> Result<bool, StoreError> {
        if query.endpoint_num.is_some_and(|e| e != dl.endpoint_num) {
            return Ok(false);
        }
        if let Some(scope) = &query.scope {
            let Some((partner, environment)) = self.dead_letter_audience(dl)? else {
                return Ok(false);
            };
            if !scope.contains(&partner, environment) {
                return Ok(false);
            }
        }
        if let Some(t) = &query.event_type {
            let event = self.event(dl.event_seq)?;
            if event.is_none_or(|e| e.event_type != *t) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The partner and environment a dead letter belongs to; `None` when neither its endpoint nor
    /// its event is left.
    fn dead_letter_audience(
        &self,
        dl: &DeadLetter,
    ) -> Result<Option<(String, Environment)>, StoreError> {
        if let Some(ep) = self.endpoint(dl.endpoint_num) {
            return Ok(Some((ep.partner_id.clone(), ep.environment)));
        }
        match self
            .inner
            .state
            .sled()?
            .trees
            .events
            .get(u64_key(dl.event_seq))?
        {
            Some(v) => {
                let head = decode_event_head(&v)?;
                Ok(Some((head.partner_id, head.environment)))
            }
            None => Ok(None),
        }
    }
}
