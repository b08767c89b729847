//! A Bloom filter of stored event ids: lets ingest skip the id lookup for ids never seen before.
//!
//! Most posted ids are new, and looking one up in sled costs about as much as writing a record.
//! The filter answers "certainly new" or "maybe stored"; only "maybe" leads to the lookup, so a false
//! positive costs one read and never changes an answer. Ids are only ever added: the writer adds each
//! id it stores, and a thread started at open adds the ids already stored. Until that thread is done
//! the filter is not consulted. Purged ids stay in it until the next start.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// 2^24 bits (2 MiB): about 1% false positives with 1.7 million ids, 5% with 3 million.
const BITS: u64 = 1 << 24;
const HASHES: u64 = 7;

pub struct IdFilter {
    words: Vec<AtomicU64>,
    ready: AtomicBool,
}

impl IdFilter {
    pub fn new() -> IdFilter {
        IdFilter {
            words: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn insert(&self, id: &[u8]) {
        for bit in positions(id) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// False only when `id` was certainly never inserted and every stored id has been.
    pub fn may_contain(&self, id: &[u8]) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        positions(id).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }

    /// Every id stored before the filter existed has been inserted: from now on it is consulted.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// The filter's bit positions for `id`: double hashing from one 64-bit hash.
fn positions(id: &[u8]) -> impl Iterator<Item = u64> {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    let h = hasher.finish();
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_consulted_until_ready() {
        let f = IdFilter::new();
        assert!(f.may_contain(b"evt_never"));
        f.set_ready();
        assert!(!f.may_contain(b"evt_never"));
    }

    #[test]
    fn inserted_ids_are_always_maybe_and_most_others_are_not() {
        let f = IdFilter::new();
        f.set_ready();
        for i in 0..100_000 {
            f.insert(format!("evt_{i}").as_bytes());
        }
        for i in 0..100_000 {
            assert!(f.may_contain(format!("evt_{i}").as_bytes()));
        }
        let false_positives = (100_000..200_000)
            .filter(|i| f.may_contain(format!("evt_{i}").as_bytes()))
            .count();
        // Expected well under 0.1% at this fill; 1% would mean the hashing is broken.
        assert!(false_positives < 1_000, "{false_positives} false positives");
    }
}
