//! Endpoint stats as the store keeps them: per endpoint and hour, the attempts that settled and their latency histogram, updated in the settle transaction.
//!
//! Keys in `meta`: `stats/` + endpoint num (8 bytes, big-endian) + hour since the epoch (8 bytes)
//! → [`HourStats`] (record version 1). One read and one write per settle; reading a window is one
//! range scan of at most its hours. Retention removes hours older than the longest window
//! ([`crate::stats`]) and the hours of deleted endpoints.

use super::codec::{read_u64, Record};
use super::writer::{TreeId, Tx, TxResult};
use super::SledStore;
use crate::model::Attempt;
use crate::stats::{hour_of, HourStats};
use crate::store::StoreError;

/// The `meta` key prefix of endpoint stats.
const STATS_PREFIX: &[u8] = b"stats/";

impl Record for HourStats {
    const VERSION: u8 = 1;
    const NAME: &'static str = "endpoint hour stats";
}

fn stats_key(endpoint_num: u64, hour: u64) -> Vec<u8> {
    let mut key = STATS_PREFIX.to_vec();
    key.extend_from_slice(&endpoint_num.to_be_bytes());
    key.extend_from_slice(&hour.to_be_bytes());
    key
}

/// (endpoint num, hour) of a stats key.
fn split_stats_key(key: &[u8]) -> (u64, u64) {
    let rest = key.get(STATS_PREFIX.len()..).unwrap_or(&[]);
    (
        read_u64(rest.get(..8).unwrap_or(&[])),
        read_u64(rest.get(8..).unwrap_or(&[])),
    )
}

/// Counts a settled attempt in its endpoint's hour, inside the settle's transaction.
pub(super) fn count_attempt(
    tx: &Tx<'_>,
    endpoint_num: u64,
    attempt: &Attempt,
    succeeded: bool,
) -> TxResult<()> {
    let key = stats_key(endpoint_num, hour_of(attempt.at_ms));
    let mut hour: HourStats = tx.get(TreeId::Meta, &key)?.unwrap_or_default();
    hour.add(succeeded, attempt.duration_ms);
    tx.put(TreeId::Meta, &key, &hour)
}

impl SledStore {
    /// Endpoint `endpoint_num`'s figures for the hours `from_hour..=to_hour` (hours since the
    /// epoch) that saw attempts, oldest first, as (hour, figures).
    pub fn endpoint_stats(
        &self,
        endpoint_num: u64,
        from_hour: u64,
        to_hour: u64,
    ) -> Result<Vec<(u64, HourStats)>, StoreError> {
        let start = stats_key(endpoint_num, from_hour);
        let end = stats_key(endpoint_num, to_hour);
        let mut out = Vec::new();
        for item in self.inner.state.sled()?.trees.meta.range(start..=end) {
            let (key, value) = item?;
            out.push((split_stats_key(&key).1, HourStats::decode(&value)?));
        }
        Ok(out)
    }

    /// Retention: removes the hours before `before_hour`, and every hour of endpoints that no
    /// longer exist. Returns how many hours were removed.
    pub async fn purge_stats(&self, before_hour: u64) -> Result<u32, StoreError> {
        let mut doomed = Vec::new();
        {
            let sled = self.inner.state.sled()?;
            let meta = &sled.trees.meta;
            let mut from = STATS_PREFIX.to_vec();
            // One seek per endpoint with stats: its old hours (all, when it is gone), then the next.
            while let Some(item) = meta.range(from.clone()..).next() {
                let (key, _) = item?;
                if !key.starts_with(STATS_PREFIX) {
                    break;
                }
                let (num, _) = split_stats_key(&key);
                use std::ops::Bound;
                let end = if self.endpoint(num).is_some() {
                    Bound::Excluded(stats_key(num, before_hour))
                } else {
                    Bound::Included(stats_key(num, u64::MAX))
                };
                for item in meta.range::<Vec<u8>, _>((Bound::Included(stats_key(num, 0)), end)) {
                    doomed.push(item?.0.to_vec());
                }
                match num.checked_add(1) {
                    Some(next) => from = stats_key(next, 0),
                    None => break,
                }
            }
        }
        let mut removed = 0;
        for chunk in doomed.chunks(1000) {
            let chunk = chunk.to_vec();
            removed += self
                .write(false, move |tx| {
                    let mut n = 0;
                    for key in &chunk {
                        if tx.remove_existing(TreeId::Meta, key)? {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Environment};
    use crate::stats::{HOUR_MS, LATENCY_BUCKETS};

    /// Golden bytes: if this changes, stored stats no longer read. Bump the version instead.
    #[test]
    fn golden_hour_stats() {
        let mut h = HourStats::default();
        h.add(true, 12);
        h.add(false, 800);
        h.add(true, 70_000);
        let bytes = h.encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            format!("{hex}\n"),
            include_str!("../../../tests/fixtures/golden/stats.v1.hex")
        );
        assert_eq!(HourStats::decode(&bytes).unwrap(), h);
        assert_eq!(h.latency.len(), LATENCY_BUCKETS);
    }

    #[tokio::test]
    async fn hours_are_counted_read_by_window_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let ep = store
            .create_endpoint(Endpoint::sample(0, "p", Environment::Production))
            .await
            .unwrap();
        let attempt = |hour: u64, ms: u32| Attempt {
            n: 1,
            at_ms: hour * HOUR_MS + 5,
            status_code: Some(200),
            duration_ms: ms,
            error: None,
            response_snippet: None,
        };
        let num = ep.num;
        store
            .write(false, move |tx| {
                count_attempt(tx, num, &attempt(10, 5), true)?;
                count_attempt(tx, num, &attempt(10, 50), false)?;
                count_attempt(tx, num, &attempt(12, 5), true)?;
                // Another endpoint (gone: never created) in the same hours.
                count_attempt(tx, num + 100, &attempt(10, 5), true)
            })
            .await
            .unwrap();
        let hours = store.endpoint_stats(num, 10, 12).unwrap();
        assert_eq!(hours.len(), 2);
        assert_eq!(
            (hours[0].0, hours[0].1.succeeded, hours[0].1.failed),
            (10, 1, 1)
        );
        assert_eq!((hours[1].0, hours[1].1.succeeded), (12, 1));
        assert_eq!(store.endpoint_stats(num, 11, 11).unwrap(), vec![]);
        // Hour 10 of the live endpoint is old; every hour of the gone one goes.
        assert_eq!(store.purge_stats(11).await.unwrap(), 2);
        assert_eq!(store.endpoint_stats(num, 0, 100).unwrap().len(), 1);
        assert_eq!(store.endpoint_stats(num + 100, 0, 100).unwrap(), vec![]);
        store.close().unwrap();
    }
}
