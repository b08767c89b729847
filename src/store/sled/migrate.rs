//! In-place migration of a schema 1 store (deliveries keyed by their own seq) to schema 2.

use super::codec::Record;
use super::{codec, StoreError, Trees, SCHEMA_VERSION};
use crate::model::Delivery;
use std::fs::File;
use std::path::Path;

/// Brings a version 1 store to version 2, in place. Every step can run again after a crash: a
/// queue value of 8 bytes and a delivery key of 8 bytes are the old forms, and each is rewritten
/// (new form written, then the old one removed) until none is left.
pub(super) fn migrate_from_1(db: &sled::Db, trees: &Trees, dir: &Path) -> Result<(), StoreError> {
    tracing::info!("migrating the store from schema version 1 to 2 (about 20 s per million pending deliveries)");
    let progress = |step: &str, n: usize| {
        if n > 0 && n % 100_000 == 0 {
            tracing::info!(step, done = n, "migrating the store");
        }
    };
    // Queue entries first: they find their event through the old delivery records.
    for (n, item) in trees.queue.iter().enumerate() {
        progress("queue entries", n);
        let (key, value) = item?;
        if value.len() != 8 {
            continue;
        }
        let (_, _, seq) = codec::split_queue_key(&key);
        let event_seq = match trees.deliveries.get(codec::u64_key(seq))? {
            Some(v) => Delivery::decode(&v)?.event_seq,
            None => {
                // A queue entry without its delivery cannot be attempted; version 1 never left one.
                trees.queue.remove(&key)?;
                continue;
            }
        };
        trees.queue.insert(
            &key,
            &codec::queue_value(codec::read_u64(&value), event_seq),
        )?;
    }
    for (n, item) in trees.deliveries.iter().enumerate() {
        progress("deliveries", n);
        let (key, value) = item?;
        if key.len() != 8 {
            continue;
        }
        let d = Delivery::decode(&value)?;
        trees
            .deliveries
            .insert(codec::pair_key(d.event_seq, d.seq), value)?;
        trees.deliveries.remove(&key)?;
    }
    db.drop_tree("event_deliveries")?;
    trees
        .meta
        .insert("schema", &codec::u64_key(SCHEMA_VERSION))?;
    db.flush()?;
    File::open(dir.join("db"))?.sync_all()?;
    tracing::info!("store migrated to schema version 2");
    Ok(())
}
