//! Rows of the PostgreSQL store to the daemon's model types and back (column orders as in `sql`).

use crate::model::{
    Attempt, DeadLetter, DeadReason, Delivery, DeliveryStatus, Endpoint, EndpointHealth,
    Environment, Event,
};
use crate::store::sled::codec::{EndpointRecord, StoredSecret};
use crate::store::{MasterKeys, StoreError};
use tokio_postgres::Row;

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("a stored {what} is unreadable: {e}"))
}

pub fn u(v: i64) -> u64 {
    v.max(0) as u64
}

pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn environment(text: &str) -> Result<Environment, StoreError> {
    Environment::parse(text).ok_or_else(|| corrupt("environment", text))
}

pub fn status_code(s: DeliveryStatus) -> i16 {
    match s {
        DeliveryStatus::Pending => 0,
        DeliveryStatus::Succeeded => 1,
        DeliveryStatus::Dead => 2,
        DeliveryStatus::Cancelled => 3,
    }
}

fn status(code: i16) -> Result<DeliveryStatus, StoreError> {
    Ok(match code {
        0 => DeliveryStatus::Pending,
        1 => DeliveryStatus::Succeeded,
        2 => DeliveryStatus::Dead,
        3 => DeliveryStatus::Cancelled,
        other => return Err(corrupt("delivery status", other)),
    })
}

/// The JSON columns of an endpoint, as text.
pub struct EndpointJson {
    pub event_types: String,
    pub headers: String,
    pub secrets: String,
}

/// An endpoint as written: its secrets sealed with the current master key (or clear without one).
pub fn endpoint_json(ep: &Endpoint, keys: &MasterKeys) -> EndpointJson {
    let record = keys.seal(ep);
    EndpointJson {
        event_types: serde_json::to_string(&ep.event_types).expect("strings serialize"),
        headers: serde_json::to_string(&ep.headers).expect("strings serialize"),
        secrets: serde_json::to_string(&record.secrets).expect("secrets serialize"),
    }
}

/// An endpoint row ([`super::sql::ENDPOINT_COLUMNS`]), its secrets opened; true when they are not
/// in the form the current key asks for (and should be written again).
pub fn endpoint(row: &Row, keys: &MasterKeys) -> Result<(Endpoint, bool), StoreError> {
    let num = u(row.get(0));
    let event_types: String = row.get(4);
    let headers: String = row.get(6);
    let secrets: String = row.get(13);
    let endpoint = Endpoint {
        num,
        partner_id: row.get(1),
        environment: environment(row.get(2))?,
        url: row.get(3),
        event_types: serde_json::from_str(&event_types).map_err(|e| corrupt("endpoint", e))?,
        description: row.get(5),
        headers: serde_json::from_str(&headers).map_err(|e| corrupt("endpoint", e))?,
        ordered: row.get(7),
        max_in_flight: row.get::<_, i32>(8).max(0) as u32,
        rate_limit_per_second: row.get::<_, Option<i32>>(9).map(|r| r.max(0) as u32),
        enabled: row.get(10),
        disabled_reason: row.get(11),
        created_at_ms: u(row.get(12)),
        secrets: Vec::new(),
    };
    let secrets: Vec<StoredSecret> =
        serde_json::from_str(&secrets).map_err(|e| corrupt("endpoint", e))?;
    Ok(keys.open(EndpointRecord { endpoint, secrets })?)
}

/// Health columns `consecutive_failures .. last_error` starting at column `at`.
pub fn health(row: &Row, at: usize) -> EndpointHealth {
    EndpointHealth {
        consecutive_failures: row.get::<_, i32>(at).max(0) as u32,
        last_status_code: row.get::<_, Option<i32>>(at + 1).map(|c| c as u16),
        last_success_at_ms: row.get::<_, Option<i64>>(at + 2).map(u),
        last_failure_at_ms: row.get::<_, Option<i64>>(at + 3).map(u),
        failing_since_ms: row.get::<_, Option<i64>>(at + 4).map(u),
        last_error: row.get(at + 5),
    }
}

/// An event row ([`super::sql::EVENT_COLUMNS`]). Its deliveries are rows of their own, so
/// `initial_deliveries` stays empty on this backend.
pub fn event(row: &Row) -> Result<Event, StoreError> {
    let hash: Vec<u8> = row.get(8);
    Ok(Event {
        seq: u(row.get(0)),
        id: row.get(1),
        partner_id: row.get(2),
        environment: environment(row.get(3))?,
        event_type: row.get(4),
        created_at: row.get(5),
        received_at_ms: u(row.get(6)),
        payload: row.get(7),
        content_hash: hash
            .try_into()
            .map_err(|_| corrupt("event", "content hash is not 32 bytes"))?,
        initial_deliveries: Vec::new(),
    })
}

/// A delivery row ([`super::sql::DELIVERY_COLUMNS`]).
pub fn delivery(row: &Row) -> Result<Delivery, StoreError> {
    let attempts: String = row.get(5);
    let status = status(row.get(3))?;
    Ok(Delivery {
        seq: u(row.get(0)),
        event_seq: u(row.get(1)),
        endpoint_num: u(row.get(2)),
        status,
        next_attempt_at_ms: if status == DeliveryStatus::Pending {
            row.get::<_, Option<i64>>(4).map(u)
        } else {
            None
        },
        attempts: serde_json::from_str::<Vec<Attempt>>(&attempts)
            .map_err(|e| corrupt("delivery", e))?,
        attempts_before_redrive: row.get::<_, i32>(6).max(0) as u32,
        created_at_ms: u(row.get(7)),
    })
}

pub fn reason_text(r: DeadReason) -> &'static str {
    r.as_str()
}

/// A dead-letter row ([`super::sql::DEAD_LETTER_COLUMNS`]).
pub fn dead_letter(row: &Row) -> Result<DeadLetter, StoreError> {
    let reason: String = row.get(9);
    Ok(DeadLetter {
        seq: u(row.get(0)),
        delivery_seq: u(row.get(1)),
        event_seq: u(row.get(2)),
        endpoint_num: u(row.get(3)),
        attempts: row.get::<_, i32>(4).max(0) as u32,
        last_status_code: row.get::<_, Option<i32>>(5).map(|c| c as u16),
        last_error: row.get(6),
        first_attempt_at_ms: row.get::<_, Option<i64>>(7).map(u),
        dead_at_ms: u(row.get(8)),
        reason: match reason.as_str() {
            "retries_exhausted" => DeadReason::RetriesExhausted,
            "endpoint_gone" => DeadReason::EndpointGone,
            other => return Err(corrupt("dead letter reason", other)),
        },
    })
}
