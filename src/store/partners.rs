//! The seam's operations for partner tokens (contract section 9): tokens, the lookups and lists a partner's scope filters, and endpoint stats. Every backend implements these.
//!
//! What a backend must keep:
//! - **Tokens** are stored as their SHA-256 only; `create_token` and `revoke_token` are durable
//!   before they answer (like every change), and `token_by_hash` sees a revocation at once, on
//!   every node (no cache that could answer a revoked token as live).
//! - **Scoped reads** apply the scope inside the query, before the page limit: a page, a count and
//!   a cursor (the last item returned) hold the scope's items only.
//! - **Stats** are counted in the settle's own transaction ([`crate::stats::HourStats::add`] on the
//!   record of the endpoint and the attempt's hour, [`crate::stats::hour_of`]`(attempt.at_ms)`),
//!   so they are as durable as the settle and never computed from the attempt log.

use super::{EventFilter, Store, StoreError};
use crate::model::{DeadLetter, Endpoint, Event, PartnerScope, PartnerToken};
use crate::stats::HourStats;
use std::sync::Arc;

impl Store {
    // Partner tokens.

    /// Stores a new partner token (its `num` is assigned here), durably.
    pub async fn create_token(&self, token: PartnerToken) -> Result<PartnerToken, StoreError> {
        match self {
            Store::Sled(s) => s.create_token(token).await,
            Store::Postgres(s) => s.create_token(token).await,
        }
    }

    /// The token whose SHA-256 is `hash`, live or not (revoked and expired ones too, so a refusal
    /// can name it), until retention removes it.
    pub async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<PartnerToken>, StoreError> {
        match self {
            Store::Sled(s) => s.token_by_hash(hash),
            Store::Postgres(s) => s.token_by_hash(hash).await,
        }
    }

    /// Every stored token, oldest first (by `num`), only `partner_id`'s when given.
    pub async fn tokens(&self, partner_id: Option<&str>) -> Result<Vec<PartnerToken>, StoreError> {
        match self {
            Store::Sled(s) => s.tokens(partner_id),
            Store::Postgres(s) => s.tokens(partner_id).await,
        }
    }

    /// Revokes token `num` as of `now_ms`, durably; `None` when there is no such token. A token
    /// revoked before keeps its first revocation time.
    pub async fn revoke_token(
        &self,
        num: u64,
        now_ms: u64,
    ) -> Result<Option<PartnerToken>, StoreError> {
        match self {
            Store::Sled(s) => s.revoke_token(num, now_ms).await,
            Store::Postgres(s) => s.revoke_token(num, now_ms).await,
        }
    }

    /// Retention: removes tokens revoked, or else expired, before `ended_before_ms`. Returns how many.
    pub async fn purge_tokens(&self, ended_before_ms: u64) -> Result<u32, StoreError> {
        match self {
            Store::Sled(s) => s.purge_tokens(ended_before_ms).await,
            Store::Postgres(s) => s.purge_tokens(ended_before_ms).await,
        }
    }

    // Reads within a partner's scope (`None`: the admin's, everything).

    /// Endpoints inside `scope`, only `partner_id`'s when given, by number. From the node's cache.
    pub fn endpoints_in(
        &self,
        scope: Option<&PartnerScope>,
        partner_id: Option<&str>,
    ) -> Vec<Arc<Endpoint>> {
        match self {
            Store::Sled(s) => s.endpoints_in(scope, partner_id),
            Store::Postgres(s) => s.endpoints_in(scope, partner_id),
        }
    }

    /// The event with this id, if it lies inside `scope`.
    pub async fn event_by_id_in(
        &self,
        id: &str,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<Event>, StoreError> {
        match self {
            Store::Sled(s) => s.event_by_id_in(id, scope),
            Store::Postgres(s) => s.event_by_id_in(id, scope).await,
        }
    }

    /// Dead letter `seq`, if it lies inside `scope` (see [`super::DeadLetterFilter::scope`]).
    pub async fn dead_letter_in(
        &self,
        seq: u64,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<DeadLetter>, StoreError> {
        match self {
            Store::Sled(s) => s.dead_letter_in(seq, scope),
            Store::Postgres(s) => s.dead_letter_in(seq, scope).await,
        }
    }

    /// Up to `limit` events received before event seq `before` (from the newest without) that
    /// `filter` keeps, newest first.
    pub async fn events_matching(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        match self {
            Store::Sled(s) => s.events_matching(filter, before, limit),
            Store::Postgres(s) => s.events_matching(filter, before, limit).await,
        }
    }

    // Endpoint stats.

    /// Endpoint `endpoint_num`'s figures for the hours `from_hour..=to_hour` (hours since the epoch)
    /// that saw attempts, oldest first, as (hour, figures).
    pub async fn endpoint_stats(
        &self,
        endpoint_num: u64,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<(u64, HourStats)>, StoreError> {
        match self {
            Store::Sled(s) => s.endpoint_stats(endpoint_num, from_hour, to_hour),
            Store::Postgres(s) => s.endpoint_stats(endpoint_num, from_hour, to_hour).await,
        }
    }

    /// Retention: removes the stats hours before `before_hour`, and all hours of endpoints that no
    /// longer exist. Returns how many hours were removed.
    pub async fn purge_stats(&self, before_hour: u64) -> Result<u32, StoreError> {
        match self {
            Store::Sled(s) => s.purge_stats(before_hour).await,
            Store::Postgres(s) => s.purge_stats(before_hour).await,
        }
    }
}
