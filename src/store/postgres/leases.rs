//! Lease renewal: the claims of this node's attempts under way are extended every third of `storage.postgres.lease`, so an attempt longer than the lease is not taken over and made twice.
//!
//! A claim (`ops.rs`) leases its delivery until `now + lease` and moves `due_ms` there, so that a
//! dead node's claims come due again by themselves. While the node is alive, this renewal moves
//! both on, in one statement for all its open claims (the in-memory seq → fence map), matching
//! `lease_owner` and `fence`: a claim another node has taken over (its fence moved on) is not
//! touched, and its late settle is fenced as before. A node that stalls (or loses the database)
//! stops renewing, and its claims lapse after at most one lease, as without renewal.
//!
//! The renewal runs from the daemon (`lib.rs`, [`PgStore::renew_loop`]) rather than from
//! [`PgStore::open`], so a store opened alone behaves as a stalled node in tests.

use super::{db_error, rows, PgStore};
use crate::store::StoreError;
use std::time::Duration;

const RENEW: &str = "UPDATE deliveries d SET lease_until_ms = $3, due_ms = $3 \
     FROM unnest($1::bigint[], $2::bigint[]) AS u(s, f) \
     WHERE d.seq = u.s AND d.fence = u.f AND d.status = 0 AND d.lease_owner = $4 \
     RETURNING d.seq";

impl PgStore {
    /// Extends the leases of this node's open claims to `now + lease`. Returns how many were
    /// renewed; a claim not renewed was taken over by another node (or settled meanwhile).
    pub async fn renew_leases(&self) -> Result<usize, StoreError> {
        let (seqs, fences): (Vec<i64>, Vec<i64>) = self
            .claims()
            .iter()
            .map(|(&seq, &fence)| (rows::i(seq), rows::i(fence)))
            .unzip();
        if seqs.is_empty() {
            return Ok(0);
        }
        let until = rows::i(crate::api::now_ms() + self.inner.lease_ms);
        let renewed = self
            .timed(async {
                let client = self.client().await?;
                let st = client.prepare_cached(RENEW).await.map_err(db_error)?;
                client
                    .query(&st, &[&seqs, &fences, &until, &self.inner.node])
                    .await
                    .map_err(db_error)
            })
            .await?;
        if renewed.len() < seqs.len() {
            let still_mine: Vec<u64> = self.claims().keys().copied().collect();
            let lost = seqs
                .iter()
                .filter(|s| {
                    still_mine.contains(&rows::u(**s))
                        && !renewed.iter().any(|r| r.get::<_, i64>(0) == **s)
                })
                .count();
            if lost > 0 {
                tracing::warn!(
                    lost,
                    "claims taken over by another node while their attempt was under way (their results will be fenced)"
                );
            }
        }
        Ok(renewed.len())
    }

    /// Renews this node's leases every third of the lease, until aborted.
    pub async fn renew_loop(self) {
        let every = Duration::from_millis((self.inner.lease_ms / 3).max(100));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.renew_leases().await {
                tracing::debug!(error = %e, "lease renewal failed");
            }
        }
    }
}
