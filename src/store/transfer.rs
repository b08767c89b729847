//! Moving a whole store from one backend to another (`preflix-webhookd migrate`): the
//! backend-neutral form a stopped store is read out in, and what was copied.

use crate::model::{DeadLetter, Delivery, Endpoint, EndpointHealth, Event, PartnerToken};
use crate::stats::HourStats;
use crate::store::{Counters, StoreError};

/// An endpoint with its delivery health. Its secrets are in the clear here (opened with the
/// master key by the reading backend, sealed again by the writing one).
#[derive(Debug, Clone)]
pub struct ExportedEndpoint {
    pub endpoint: Endpoint,
    pub health: EndpointHealth,
}

/// One delivery as it stands. A pending one carries its due time in `next_attempt_at_ms`.
#[derive(Debug, Clone)]
pub struct ExportedDelivery {
    pub delivery: Delivery,
    /// Pending and failed at least once in its current round (counts as retrying in `/status`).
    pub retry: bool,
}

/// An event (the idempotency record is the event's id and content hash) with every delivery.
#[derive(Debug, Clone)]
pub struct ExportedEvent {
    pub event: Event,
    /// How many deliveries its first ingest created: repeated in duplicate answers.
    pub deliveries_at_ingest: u32,
    pub deliveries: Vec<ExportedDelivery>,
}

/// A stopped store, read in pages in key order. Implemented by the reading backend.
pub trait ExportSource {
    fn endpoints(&self) -> Result<Vec<ExportedEndpoint>, StoreError>;
    /// Events with seq greater than `after`, up to `limit`, in seq order.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<ExportedEvent>, StoreError>;
    /// Dead letters with seq greater than `after`, up to `limit`, in seq order.
    fn dead_letters_after(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
    /// Every partner token (revoked and expired ones too, until retention removes them).
    fn partner_tokens(&self) -> Result<Vec<PartnerToken>, StoreError>;
    /// Endpoint stats as (endpoint num, hour since the epoch, figures), for existing endpoints.
    fn endpoint_stats(&self) -> Result<Vec<(u64, u64, HourStats)>, StoreError>;
    /// The running totals of `/status`.
    fn totals(&self) -> Counters;
    /// Every number (event, delivery, endpoint, dead letter) the store has handed out is below it.
    fn next_number(&self) -> u64;
}

/// What a migration copied, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub endpoints: u64,
    pub events: u64,
    pub deliveries: u64,
    pub pending: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub attempts: u64,
    pub dead_letters: u64,
    pub partner_tokens: u64,
    /// Endpoint stats, in (endpoint, hour) rows.
    pub stats_hours: u64,
    /// Cluster-wide settings copied (the generated admin token, the notification secret), by name.
    pub settings: u64,
}
