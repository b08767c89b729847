//! Operator notifications (contract section 10) as the store makes them: events of the operator endpoint, written in the transaction that decides them, with their state in `meta`.
//!
//! A notification is an event of the reserved partner [`OPERATOR_PARTNER`], which the API's
//! `partner_id` rule (`[A-Za-z0-9._-]`) can never name, so `admit` keeps notifications and partner
//! events apart like any two partners. It is stored through `ingest_one`, so it is durable,
//! retried and dead-lettered as any delivery is. No notification is made about the operator
//! endpoint itself (its dead letters would otherwise notify about themselves for ever).
//!
//! State kept in `meta`, so that a restart neither repeats nor forgets a notification:
//! `notice/dead_letters` (dead letters not yet told, grouped by endpoint), `notice/dead_letters_at`
//! (when the last group was sent), `notice/failing/<endpoint>` (the failing spell already told:
//! its start) and `notice/stalled` (the queue was told stalled).

use super::codec::u64_key;
use super::ops::ingest_one;
use super::writer::{TreeId, Tx, TxResult};
use super::{NewEvent, NoticeRound, SledStore, StoreError, OPERATOR_PARTNER};
use crate::model::{endpoint_id, Endpoint, EndpointHealth};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Dead-letter ids sampled per endpoint in one `delivery.dead_lettered`.
const SAMPLES: usize = 5;

const DEAD_LETTERS_KEY: &[u8] = b"notice/dead_letters";
const DEAD_LETTERS_AT_KEY: &[u8] = b"notice/dead_letters_at";
const STALLED_KEY: &[u8] = b"notice/stalled";

fn failing_key(num: u64) -> Vec<u8> {
    let mut key = b"notice/failing/".to_vec();
    key.extend_from_slice(&num.to_be_bytes());
    key
}

/// Dead letters not yet told to the operator, per endpoint number.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DeadLetterGroup {
    endpoints: BTreeMap<u64, GroupEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupEntry {
    count: u64,
    samples: Vec<u64>,
}

impl SledStore {
    /// One round of the notifications that are decided by time rather than by an attempt: the
    /// grouped dead letters, failing spells and the stalled queue. Reads the oldest pending
    /// delivery kept by [`SledStore::refresh_oldest_pending`] (the store's data, not the scheduler's).
    pub async fn notice_round(&self, round: NoticeRound) -> Result<(), StoreError> {
        let oldest = self.oldest_pending_since();
        let made = self
            .write(false, move |tx| {
                if operator(tx).is_none() {
                    return Ok(false);
                }
                let before = tx.counters().events;
                flush_dead_letters(tx, &round)?;
                for ep in tx.endpoints() {
                    if ep.partner_id != OPERATOR_PARTNER {
                        check_failing(tx, &ep, &round)?;
                    }
                }
                check_stalled(tx, oldest, &round)?;
                Ok(tx.counters().events != before)
            })
            .await?;
        // A notification and the state saying it was made are made durable together before the
        // next round, so a crash does not make it again after it was delivered. Rounds that make
        // nothing (nearly all) cost no sync.
        if made {
            self.sync().await?;
        }
        Ok(())
    }
}

/// The operator endpoint, when notifications are on.
fn operator(tx: &Tx<'_>) -> Option<std::sync::Arc<Endpoint>> {
    tx.endpoints()
        .into_iter()
        .find(|ep| ep.partner_id == OPERATOR_PARTNER)
}

/// Stores a notification of `event_type` for the operator endpoint; nothing when there is none.
pub(super) fn notify(tx: &Tx<'_>, event_type: &str, data: Value, now_ms: u64) -> TxResult<()> {
    if operator(tx).is_none() {
        return Ok(());
    }
    let id = format!("ntf_{:016x}", tx.generate_id()?);
    let event = NewEvent::notice(id, event_type, &data, now_ms);
    tracing::info!(r#type = event_type, "operator notification");
    ingest_one(tx, &event).map(|_| ())
}

/// `endpoint.disabled`, in the transaction that disables `ep`.
pub(super) fn endpoint_disabled(
    tx: &Tx<'_>,
    ep: &Endpoint,
    reason: &str,
    health: &EndpointHealth,
    now_ms: u64,
) -> TxResult<()> {
    let data = json!({
        "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
        "reason": reason, "last_status_code": health.last_status_code,
    });
    notify(tx, "endpoint.disabled", data, now_ms)
}

/// Counts a dead letter of `ep` for the next `delivery.dead_lettered`.
pub(super) fn dead_lettered(tx: &Tx<'_>, ep: &Endpoint, dead_letter_seq: u64) -> TxResult<()> {
    if ep.partner_id == OPERATOR_PARTNER || operator(tx).is_none() {
        return Ok(());
    }
    let mut group: DeadLetterGroup = read_json(tx, DEAD_LETTERS_KEY)?.unwrap_or_default();
    let entry = group.endpoints.entry(ep.num).or_default();
    entry.count += 1;
    if entry.samples.len() < SAMPLES {
        entry.samples.push(dead_letter_seq);
    }
    write_json(tx, DEAD_LETTERS_KEY, &group)
}

/// `endpoint.recovered`, in the transaction of the success that ends a told failing spell.
pub(super) fn succeeded(tx: &Tx<'_>, ep: &Endpoint, now_ms: u64) -> TxResult<()> {
    let key = failing_key(ep.num);
    let Some(since) = tx.get_raw(TreeId::Meta, &key)? else {
        return Ok(());
    };
    tx.remove(TreeId::Meta, &key)?;
    let since = super::codec::read_u64(&since);
    let data = json!({
        "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
        "failed_for_seconds": now_ms.saturating_sub(since) / 1000,
    });
    notify(tx, "endpoint.recovered", data, now_ms)
}

fn flush_dead_letters(tx: &Tx<'_>, round: &NoticeRound) -> TxResult<()> {
    let Some(group) = read_json::<DeadLetterGroup>(tx, DEAD_LETTERS_KEY)? else {
        return Ok(());
    };
    let last = tx.get_raw(TreeId::Meta, DEAD_LETTERS_AT_KEY)?;
    if let Some(last) = last {
        let last = super::codec::read_u64(&last);
        if round.now_ms < last.saturating_add(round.dead_letter_window_ms) {
            return Ok(());
        }
    }
    let mut count = 0;
    let mut endpoints = Vec::new();
    for (num, entry) in &group.endpoints {
        count += entry.count;
        let partner = tx.endpoint(*num).map(|ep| ep.partner_id.clone());
        endpoints.push(json!({
            "endpoint_id": endpoint_id(*num), "partner_id": partner, "count": entry.count,
            "sample_dead_letter_ids": entry.samples.iter()
                .map(|&s| format!("dl_{s:016x}")).collect::<Vec<_>>(),
        }));
    }
    tx.remove(TreeId::Meta, DEAD_LETTERS_KEY)?;
    tx.put_raw(TreeId::Meta, DEAD_LETTERS_AT_KEY, &u64_key(round.now_ms))?;
    let data = json!({"count": count, "endpoints": endpoints});
    notify(tx, "delivery.dead_lettered", data, round.now_ms)
}

fn check_failing(tx: &Tx<'_>, ep: &Endpoint, round: &NoticeRound) -> TxResult<()> {
    let Some(health) = tx.get::<EndpointHealth>(TreeId::Health, &u64_key(ep.num))? else {
        return Ok(());
    };
    let Some(since) = health.failing_since_ms else {
        return Ok(());
    };
    if round.now_ms.saturating_sub(since) < round.failing_after_ms {
        return Ok(());
    }
    let key = failing_key(ep.num);
    if tx.get_raw(TreeId::Meta, &key)?.is_some() {
        return Ok(());
    }
    tx.put_raw(TreeId::Meta, &key, &u64_key(since))?;
    let data = json!({
        "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
        "consecutive_failures": health.consecutive_failures,
        "last_status_code": health.last_status_code,
        "last_error": health.last_error,
        "failing_since": crate::model::format_time(since),
    });
    notify(tx, "endpoint.failing", data, round.now_ms)
}

fn check_stalled(tx: &Tx<'_>, oldest: Option<u64>, round: &NoticeRound) -> TxResult<()> {
    let age_ms = oldest.map(|since| round.now_ms.saturating_sub(since));
    let stalled = age_ms.is_some_and(|age| age > round.stalled_after_ms);
    let told = tx.get_raw(TreeId::Meta, STALLED_KEY)?.is_some();
    if stalled == told {
        return Ok(());
    }
    let pending = tx.counters().pending;
    let data = json!({
        "pending": pending,
        "oldest_pending_age_seconds": age_ms.map(|age| age / 1000),
    });
    if stalled {
        tx.put_raw(TreeId::Meta, STALLED_KEY, &u64_key(round.now_ms))?;
        notify(tx, "queue.stalled", data, round.now_ms)
    } else {
        tx.remove(TreeId::Meta, STALLED_KEY)?;
        notify(tx, "queue.recovered", data, round.now_ms)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(tx: &Tx<'_>, key: &[u8]) -> TxResult<Option<T>> {
    Ok(tx
        .get_raw(TreeId::Meta, key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn write_json<T: Serialize>(tx: &Tx<'_>, key: &[u8], value: &T) -> TxResult<()> {
    let bytes = serde_json::to_vec(value).expect("notice state serializes");
    tx.put_raw(TreeId::Meta, key, &bytes)
}
