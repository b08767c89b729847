//! Operator notifications (contract section 10) on PostgreSQL: events of the operator endpoint written in the transaction that decides them, their state in the `notice_*` tables, and the time-decided round run by one node at a time.
//!
//! As on sled (`store/sled/notices.rs`), a notification is an event of the reserved partner
//! [`OPERATOR_PARTNER`] with one delivery to the operator endpoint, so it is durable, retried and
//! dead-lettered like any delivery, and none is made about the operator endpoint itself.
//!
//! Decided by a settle, in the settle's own transaction: `endpoint.disabled`, `endpoint.recovered`
//! (a success that removes the endpoint's `notice_failing` row) and the counting of dead letters
//! into `notice_dead_letters`. Decided by time, in [`PgStore::notice_round`]: the grouped
//! `delivery.dead_lettered`, `endpoint.failing` and `queue.stalled`/`queue.recovered`. Every node's
//! housekeeping calls the round once a second, but a round runs only under the transaction-scoped
//! advisory lock [`LOCK_NOTICE`], taken with `pg_try_advisory_xact_lock`: one node at a time makes
//! them, and the state it reads and writes is committed with the notifications it makes, so neither
//! another node nor a restart repeats or forgets one.
//!
//! Lock order: a settle holds its endpoints' rows, then touches their `notice_*` rows; the round
//! locks the endpoint rows it may tell `endpoint.failing` about before any `notice_*` row, and never
//! writes an endpoint row, so the two never wait on each other in a circle.

use super::{db_error, rows, sql, PgStore};
use crate::model::endpoint_id;
use crate::store::{NewEvent, NoticeRound, StoreError, OPERATOR_PARTNER};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Tx<'a> = deadpool_postgres::Transaction<'a>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Transaction-scoped advisory lock of a notification round ("wh" + 0x10).
pub const LOCK_NOTICE: i64 = 0x7768_0010;

/// Dead-letter ids sampled per endpoint in one `delivery.dead_lettered`.
const SAMPLES: i32 = 5;

const NOTICE_LOCK_TRY: &str = "SELECT pg_try_advisory_xact_lock($1)";
const DEAD_COUNT: &str = "INSERT INTO notice_dead_letters (endpoint_num, count, samples) \
     SELECT n, count(*), (array_agg(s ORDER BY s))[1:5] \
     FROM unnest($1::bigint[], $2::bigint[]) AS u(n, s) GROUP BY n ORDER BY n \
     ON CONFLICT (endpoint_num) DO UPDATE SET count = notice_dead_letters.count + excluded.count, \
     samples = (notice_dead_letters.samples || excluded.samples)[1:5]";
const DEAD_TAKE: &str = "DELETE FROM notice_dead_letters RETURNING endpoint_num, count, samples";
const FAILING_END: &str =
    "DELETE FROM notice_failing WHERE endpoint_num = ANY($1) RETURNING endpoint_num, since_ms";
const FAILING_FOUND: &str = "SELECT num, consecutive_failures, last_status_code, last_error, \
     failing_since_ms FROM endpoints e WHERE failing_since_ms <= $1 AND partner_id <> $2 \
     AND NOT EXISTS (SELECT 1 FROM notice_failing f WHERE f.endpoint_num = e.num) \
     ORDER BY num FOR SHARE";
const FAILING_TOLD: &str = "INSERT INTO notice_failing (endpoint_num, since_ms) VALUES ($1, $2) \
     ON CONFLICT (endpoint_num) DO NOTHING";
const MARK: &str = "SELECT at_ms FROM notice_marks WHERE name = $1";
const MARK_SET: &str = "INSERT INTO notice_marks (name, at_ms) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET at_ms = excluded.at_ms";
const MARK_CLEAR: &str = "DELETE FROM notice_marks WHERE name = $1";
const DEAD_LETTERS_AT: &str = "dead_letters_at";
const STALLED: &str = "stalled";

async fn query(tx: &Tx<'_>, q: &str, p: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let st = tx.prepare_cached(q).await.map_err(db_error)?;
    tx.query(&st, p).await.map_err(db_error)
}

async fn execute(tx: &Tx<'_>, q: &str, p: Params<'_>) -> Result<u64, StoreError> {
    let st = tx.prepare_cached(q).await.map_err(db_error)?;
    tx.execute(&st, p).await.map_err(db_error)
}

/// What one settle group decided that the operator is to be told.
#[derive(Debug, Default)]
pub(super) struct SettleNotices {
    /// Endpoints that succeeded while failing: (endpoint, when), for `endpoint.recovered`.
    pub successes: Vec<(u64, u64)>,
    /// Endpoints disabled: (endpoint, reason, last status code, when), for `endpoint.disabled`.
    pub disabled: Vec<(u64, String, Option<u16>, u64)>,
    /// Dead letters written: (endpoint, dead-letter number), counted for `delivery.dead_lettered`.
    pub dead_letters: Vec<(i64, i64)>,
}

impl PgStore {
    /// The operator endpoint, when notifications are on.
    fn operator_num(&self) -> Option<u64> {
        self.endpoints()
            .into_iter()
            .find(|ep| ep.partner_id == OPERATOR_PARTNER)
            .map(|ep| ep.num)
    }

    /// Stores a notification of `event_type` for the operator endpoint `operator` in `tx`.
    async fn notify(
        &self,
        tx: &Tx<'_>,
        operator: u64,
        event_type: &str,
        data: Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = format!("ntf_{:016x}", rand::random::<u64>());
        let ev = NewEvent::notice(id, event_type, &data, now_ms);
        let received = rows::i(ev.received_at_ms);
        let inserted = query(
            tx,
            sql::EVENTS_INSERT,
            &[
                &vec![ev.id.as_str()],
                &vec![ev.partner_id.as_str()],
                &vec![ev.environment.as_str()],
                &vec![ev.event_type.as_str()],
                &vec![ev.created_at.as_str()],
                &vec![received],
                &vec![ev.payload.as_slice()],
                &vec![ev.content_hash.as_slice()],
                &vec![1i32],
            ],
        )
        .await?;
        // A random 64-bit id taken already: not one in a lifetime; the notification is not lost
        // silently, the transaction is retried.
        let Some(row) = inserted.first() else {
            return Err(StoreError::Unavailable(format!(
                "a notification id was taken ({})",
                super::CONFLICT_MARK
            )));
        };
        let seq: i64 = row.get(1);
        execute(
            tx,
            sql::DELIVERIES_INSERT,
            &[&vec![seq], &vec![rows::i(operator)], &vec![received]],
        )
        .await?;
        let (one, zero) = (1i64, 0i64);
        execute(
            tx,
            sql::COUNTERS_ADD,
            &[
                &self.inner.node,
                &one,
                &one,
                &zero,
                &zero,
                &zero,
                &zero,
                &zero,
                &one,
                &zero,
                &zero,
            ],
        )
        .await?;
        query(tx, sql::NOTIFY, &[&sql::CHANNEL_DUE]).await?;
        tracing::info!(r#type = event_type, "operator notification");
        Ok(())
    }

    /// The notifications a settle group decided, in its transaction (before its commit).
    pub(super) async fn settle_notices(
        &self,
        tx: &Tx<'_>,
        notes: SettleNotices,
    ) -> Result<(), StoreError> {
        let Some(operator) = self.operator_num() else {
            return Ok(());
        };
        let partner_ep = |num: u64| {
            self.endpoint(num)
                .filter(|ep| ep.partner_id != OPERATOR_PARTNER)
        };
        let dead: Vec<(i64, i64)> = notes
            .dead_letters
            .into_iter()
            .filter(|(n, _)| partner_ep(rows::u(*n)).is_some())
            .collect();
        if !dead.is_empty() {
            let nums: Vec<i64> = dead.iter().map(|d| d.0).collect();
            let seqs: Vec<i64> = dead.iter().map(|d| d.1).collect();
            execute(tx, DEAD_COUNT, &[&nums, &seqs]).await?;
        }
        let failing: Vec<i64> = notes.successes.iter().map(|(n, _)| rows::i(*n)).collect();
        if !failing.is_empty() {
            for row in query(tx, FAILING_END, &[&failing]).await? {
                let num = rows::u(row.get(0));
                let since = rows::u(row.get(1));
                let Some(ep) = self.endpoint(num) else {
                    continue;
                };
                let now = notes
                    .successes
                    .iter()
                    .find(|(n, _)| *n == num)
                    .map_or(since, |s| s.1);
                let data = json!({
                    "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
                    "failed_for_seconds": now.saturating_sub(since) / 1000,
                });
                self.notify(tx, operator, "endpoint.recovered", data, now)
                    .await?;
            }
        }
        for (num, reason, code, now) in notes.disabled {
            let Some(ep) = partner_ep(num) else { continue };
            let data = json!({
                "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
                "reason": reason, "last_status_code": code,
            });
            self.notify(tx, operator, "endpoint.disabled", data, now)
                .await?;
        }
        Ok(())
    }

    /// One round of the notifications decided by time rather than by an attempt: the grouped dead
    /// letters, failing spells and the stalled queue. Made by one node at a time (the others skip
    /// the round while it holds [`LOCK_NOTICE`]); reads the cluster's oldest pending delivery as
    /// [`PgStore::refresh_oldest_pending`] last found it.
    pub async fn notice_round(&self, round: NoticeRound) -> Result<(), StoreError> {
        if let Some(e) = self.fault_error() {
            return Err(e);
        }
        let Some(operator) = self.operator_num() else {
            return Ok(());
        };
        let oldest = self.oldest_pending_since();
        let made = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                let mine: bool = query(&tx, NOTICE_LOCK_TRY, &[&LOCK_NOTICE]).await?[0].get(0);
                if !mine {
                    return Ok(false);
                }
                let mut made = false;
                // Endpoint rows first (the settles' lock order), then the notice tables.
                made |= self.check_failing(&tx, operator, &round).await?;
                made |= self.flush_dead_letters(&tx, operator, &round).await?;
                made |= self.check_stalled(&tx, operator, oldest, &round).await?;
                if made {
                    tx.commit().await.map_err(db_error)?;
                }
                Ok(made)
            })
            .await?;
        if made {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    async fn check_failing(
        &self,
        tx: &Tx<'_>,
        operator: u64,
        round: &NoticeRound,
    ) -> Result<bool, StoreError> {
        let before = rows::i(round.now_ms.saturating_sub(round.failing_after_ms));
        let found = query(tx, FAILING_FOUND, &[&before, &OPERATOR_PARTNER]).await?;
        let mut made = false;
        for row in found {
            let num = rows::u(row.get(0));
            let since: i64 = row.get(4);
            if execute(tx, FAILING_TOLD, &[&row.get::<_, i64>(0), &since]).await? == 0 {
                continue;
            }
            let Some(ep) = self.endpoint(num) else {
                continue;
            };
            let data = json!({
                "endpoint_id": ep.id(), "partner_id": ep.partner_id, "url": ep.url,
                "consecutive_failures": row.get::<_, i32>(1).max(0),
                "last_status_code": row.get::<_, Option<i32>>(2),
                "last_error": row.get::<_, Option<String>>(3),
                "failing_since": crate::model::format_time(rows::u(since)),
            });
            self.notify(tx, operator, "endpoint.failing", data, round.now_ms)
                .await?;
            made = true;
        }
        Ok(made)
    }

    async fn flush_dead_letters(
        &self,
        tx: &Tx<'_>,
        operator: u64,
        round: &NoticeRound,
    ) -> Result<bool, StoreError> {
        if let Some(last) = query(tx, MARK, &[&DEAD_LETTERS_AT]).await?.first() {
            let last = rows::u(last.get(0));
            if round.now_ms < last.saturating_add(round.dead_letter_window_ms) {
                return Ok(false);
            }
        }
        let mut group: Vec<(u64, i64, Vec<i64>)> = query(tx, DEAD_TAKE, &[])
            .await?
            .iter()
            .map(|r| (rows::u(r.get(0)), r.get(1), r.get(2)))
            .collect();
        if group.is_empty() {
            return Ok(false);
        }
        group.sort_by_key(|g| g.0);
        let mut count = 0;
        let mut endpoints = Vec::new();
        for (num, n, samples) in &group {
            count += n;
            let partner = self.endpoint(*num).map(|ep| ep.partner_id.clone());
            endpoints.push(json!({
                "endpoint_id": endpoint_id(*num), "partner_id": partner, "count": n,
                "sample_dead_letter_ids": samples.iter().take(SAMPLES as usize)
                    .map(|&s| format!("dl_{:016x}", rows::u(s))).collect::<Vec<_>>(),
            }));
        }
        execute(tx, MARK_SET, &[&DEAD_LETTERS_AT, &rows::i(round.now_ms)]).await?;
        let data = json!({"count": count, "endpoints": endpoints});
        self.notify(tx, operator, "delivery.dead_lettered", data, round.now_ms)
            .await?;
        Ok(true)
    }

    async fn check_stalled(
        &self,
        tx: &Tx<'_>,
        operator: u64,
        oldest: Option<u64>,
        round: &NoticeRound,
    ) -> Result<bool, StoreError> {
        let age_ms = oldest.map(|since| round.now_ms.saturating_sub(since));
        let stalled = age_ms.is_some_and(|age| age > round.stalled_after_ms);
        let told = !query(tx, MARK, &[&STALLED]).await?.is_empty();
        if stalled == told {
            return Ok(false);
        }
        let pending: i64 = query(tx, sql::COUNTERS_SUM, &[]).await?[0].get(7);
        let data = json!({
            "pending": pending.max(0),
            "oldest_pending_age_seconds": age_ms.map(|age| age / 1000),
        });
        if stalled {
            execute(tx, MARK_SET, &[&STALLED, &rows::i(round.now_ms)]).await?;
            self.notify(tx, operator, "queue.stalled", data, round.now_ms)
                .await?;
        } else {
            execute(tx, MARK_CLEAR, &[&STALLED]).await?;
            self.notify(tx, operator, "queue.recovered", data, round.now_ms)
                .await?;
        }
        Ok(true)
    }
}
