//! Partner tokens, reads within a partner's scope, and endpoint stats on PostgreSQL (contract section 9).
//!
//! Tokens are rows keyed by number with a unique index on their SHA-256; every lookup reads the
//! database (no node-local copy), so a revocation made on one node is refused by every node at
//! the next request. Scoped reads put the scope in the `WHERE` clause, before the `LIMIT`. Stats
//! rows are added to by `ops::commit_settles` in the settle group's own transaction
//! ([`sql::STATS_ADD`]).

use super::{db_error, rows, sql, PgStore};
use crate::model::{DeadLetter, Endpoint, Environment, Event, PartnerScope, PartnerToken};
use crate::stats::{HourStats, LATENCY_BUCKETS};
use crate::store::{DeadLetterFilter, EventFilter, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::Row;

/// A token row ([`sql::TOKEN_COLUMNS`]).
fn token(row: &Row) -> Result<PartnerToken, StoreError> {
    let hash: Vec<u8> = row.get(1);
    let environment: Option<String> = row.get(3);
    Ok(PartnerToken {
        num: rows::u(row.get(0)),
        hash: hash.try_into().map_err(|_| {
            StoreError::Corrupt("a stored partner token's hash is not 32 bytes".into())
        })?,
        partner_id: row.get(2),
        environment: environment.as_deref().map(rows::environment).transpose()?,
        read_only: row.get(4),
        description: row.get(5),
        created_at_ms: rows::u(row.get(6)),
        expires_at_ms: rows::u(row.get(7)),
        revoked_at_ms: row.get::<_, Option<i64>>(8).map(rows::u),
    })
}

/// The scope's partner and environment as query parameters (null: any).
fn scope_params(scope: Option<&PartnerScope>) -> (Option<&str>, Option<&'static str>) {
    (
        scope.map(|s| s.partner_id.as_str()),
        scope.and_then(|s| s.environment).map(Environment::as_str),
    )
}

/// Settled attempts of one group, by (endpoint, hour), for [`sql::STATS_ADD`].
#[derive(Default)]
pub(super) struct StatsRows(BTreeMap<(u64, u64), HourStats>);

impl StatsRows {
    pub fn add(&mut self, endpoint_num: u64, at_ms: u64, succeeded: bool, duration_ms: u32) {
        self.0
            .entry((endpoint_num, crate::stats::hour_of(at_ms)))
            .or_default()
            .add(succeeded, duration_ms);
    }

    /// Adds the group's figures inside its transaction.
    pub async fn apply(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut num = Vec::new();
        let mut hour = Vec::new();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let mut latency = Vec::new();
        for ((n, h), s) in &self.0 {
            num.push(rows::i(*n));
            hour.push(rows::i(*h));
            ok.push(rows::i(s.succeeded));
            bad.push(rows::i(s.failed));
            latency.push(
                s.latency
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let st = tx.prepare_cached(sql::STATS_ADD).await.map_err(db_error)?;
        tx.execute(&st, &[&num, &hour, &ok, &bad, &latency])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

impl PgStore {
    pub async fn create_token(&self, mut t: PartnerToken) -> Result<PartnerToken, StoreError> {
        let environment = t.environment.map(Environment::as_str);
        let num = self
            .timed(async {
                let row = self
                    .client()
                    .await?
                    .query_one(
                        sql::TOKEN_INSERT,
                        &[
                            &t.hash.as_slice(),
                            &t.partner_id,
                            &environment,
                            &t.read_only,
                            &t.description,
                            &rows::i(t.created_at_ms),
                            &rows::i(t.expires_at_ms),
                        ],
                    )
                    .await
                    .map_err(db_error)?;
                Ok(rows::u(row.get(0)))
            })
            .await?;
        t.num = num;
        Ok(t)
    }

    pub async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<PartnerToken>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .query_opt(sql::TOKEN_BY_HASH, &[&hash.as_slice()])
                .await
                .map_err(db_error)?;
            row.as_ref().map(token).transpose()
        })
        .await
    }

    pub async fn tokens(&self, partner_id: Option<&str>) -> Result<Vec<PartnerToken>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(sql::TOKENS, &[&partner_id])
                .await
                .map_err(db_error)?;
            rows.iter().map(token).collect()
        })
        .await
    }

    pub async fn revoke_token(
        &self,
        num: u64,
        now_ms: u64,
    ) -> Result<Option<PartnerToken>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .query_opt(sql::TOKEN_REVOKE, &[&rows::i(num), &rows::i(now_ms)])
                .await
                .map_err(db_error)?;
            row.as_ref().map(token).transpose()
        })
        .await
    }

    pub async fn purge_tokens(&self, ended_before_ms: u64) -> Result<u32, StoreError> {
        self.timed(async {
            let n = self
                .client()
                .await?
                .execute(sql::TOKENS_PURGE, &[&rows::i(ended_before_ms)])
                .await
                .map_err(db_error)?;
            Ok(n as u32)
        })
        .await
    }

    /// Endpoints inside `scope`, only `partner_id`'s when given: from the node's endpoint cache.
    pub fn endpoints_in(
        &self,
        scope: Option<&PartnerScope>,
        partner_id: Option<&str>,
    ) -> Vec<Arc<Endpoint>> {
        self.endpoints()
            .into_iter()
            .filter(|e| scope.is_none_or(|s| s.contains(&e.partner_id, e.environment)))
            .filter(|e| partner_id.is_none_or(|p| p == e.partner_id))
            .collect()
    }

    pub async fn event_by_id_in(
        &self,
        id: &str,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<Event>, StoreError> {
        Ok(self
            .event_by_id(id)
            .await?
            .filter(|e| scope.is_none_or(|s| s.contains(&e.partner_id, e.environment))))
    }

    pub async fn dead_letter_in(
        &self,
        seq: u64,
        scope: Option<&PartnerScope>,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let filter = DeadLetterFilter {
            scope: scope.cloned(),
            ..DeadLetterFilter::default()
        };
        Ok(self
            .dead_letters(seq.saturating_sub(1), 1, &filter)
            .await?
            .into_iter()
            .find(|dl| dl.seq == seq))
    }

    /// Dead letters after seq `after`, oldest first, that `filter` keeps (its scope included), up
    /// to `limit`.
    pub async fn dead_letters_scoped(
        &self,
        after: u64,
        limit: usize,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let endpoint = filter.endpoint_num.map(rows::i);
        let event_type = filter.event_type.as_deref();
        let (partner, environment) = scope_params(filter.scope.as_ref());
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(
                    sql::DEAD_LETTERS_SCOPED,
                    &[
                        &rows::i(after),
                        &endpoint,
                        &event_type,
                        &partner,
                        &environment,
                        &(limit as i64),
                    ],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(rows::dead_letter).collect()
        })
        .await
    }

    pub async fn events_matching(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let before = rows::i(before.unwrap_or(u64::MAX));
        let endpoint = filter.endpoint_num.map(rows::i);
        let event_type = filter.event_type.as_deref();
        let (partner, environment) = scope_params(filter.scope.as_ref());
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(
                    sql::EVENTS_MATCHING,
                    &[
                        &before,
                        &partner,
                        &environment,
                        &endpoint,
                        &event_type,
                        &(limit as i64),
                    ],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(rows::event).collect()
        })
        .await
    }

    pub async fn endpoint_stats(
        &self,
        endpoint_num: u64,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<(u64, HourStats)>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(
                    sql::STATS_OF_ENDPOINT,
                    &[
                        &rows::i(endpoint_num),
                        &rows::i(from_hour),
                        &rows::i(to_hour),
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let mut latency: Vec<u64> =
                        r.get::<_, Vec<i64>>(3).into_iter().map(rows::u).collect();
                    latency.resize(LATENCY_BUCKETS, 0);
                    (
                        rows::u(r.get(0)),
                        HourStats {
                            succeeded: rows::u(r.get(1)),
                            failed: rows::u(r.get(2)),
                            latency,
                        },
                    )
                })
                .collect())
        })
        .await
    }

    pub async fn purge_stats(&self, before_hour: u64) -> Result<u32, StoreError> {
        self.timed(async {
            let n = self
                .client()
                .await?
                .execute(sql::STATS_PURGE, &[&rows::i(before_hour)])
                .await
                .map_err(db_error)?;
            Ok(n as u32)
        })
        .await
    }
}
