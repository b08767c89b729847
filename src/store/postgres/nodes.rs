//! The `nodes` table beyond the heartbeat: which nodes `/status` lists (seen recently), a node's row removed when it stops cleanly, and rows of nodes long gone removed by the leader.

use super::{db_error, rows, PgStore};
use crate::store::StoreError;

/// `/status` lists a node only if its heartbeat (every 2 s) was seen within this long: 15
/// heartbeats, so a node slowed by load is not dropped, and a dead one is gone within half a
/// minute.
pub const SEEN_WITHIN_MS: u64 = 30_000;
/// The leader deletes the row of a node not seen for this long (a node killed, or renamed).
pub const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;

pub(super) const RECENT: &str =
    "SELECT name, last_seen_ms, in_flight FROM nodes WHERE last_seen_ms >= $1 ORDER BY name";
const LEAVE: &str = "DELETE FROM nodes WHERE name = $1";
const FORGET: &str = "DELETE FROM nodes WHERE last_seen_ms < $1";

impl PgStore {
    /// The cut-off of [`RECENT`] now.
    pub(super) fn seen_since_ms(&self) -> i64 {
        rows::i(crate::api::now_ms().saturating_sub(SEEN_WITHIN_MS))
    }

    /// Removes this node's row (clean shutdown, its heartbeat stopped). Its `counters` row stays:
    /// the cluster's totals include what it did.
    pub(super) async fn leave(&self) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .execute(LEAVE, &[&self.inner.node])
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    /// On the leader: deletes the rows of nodes not seen for [`FORGET_AFTER_MS`].
    pub(super) async fn forget_stale_nodes(&self) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Ok(());
        }
        let before = rows::i(crate::api::now_ms().saturating_sub(FORGET_AFTER_MS));
        self.timed(async {
            let gone = self
                .client()
                .await?
                .execute(FORGET, &[&before])
                .await
                .map_err(db_error)?;
            if gone > 0 {
                tracing::info!(nodes = gone, "rows of nodes not seen for a day removed");
            }
            Ok(())
        })
        .await
    }
}
