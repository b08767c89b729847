//! SledStore tests that need sled itself: opening a store written in an older layout.

use super::codec::{pair_key, queue_key, u64_key, Record};
use super::{DeliveryKey, SledStore, SEGMENT_SIZE};
use crate::model::{Delivery, DeliveryStatus, Endpoint, Environment, Event, EventIdRecord};

fn endpoint() -> Endpoint {
    Endpoint::sample(1, "acme-health", Environment::Production)
}

fn event() -> Event {
    Event {
        seq: 2,
        id: "evt_old".into(),
        partner_id: "acme-health".into(),
        environment: Environment::Production,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: 1_000,
        payload: br#"{"id":"evt_old"}"#.to_vec(),
        content_hash: [4; 32],
        initial_deliveries: Vec::new(),
    }
}

/// An event as schema version 1 stored it: version byte 1 and no `initial_deliveries` (whose
/// empty list is the last byte of today's encoding).
fn event_v1_bytes(ev: &Event) -> Vec<u8> {
    let mut bytes = ev.encode();
    assert_eq!(
        bytes.pop(),
        Some(0),
        "an empty list encodes as one zero byte"
    );
    bytes[0] = 1;
    bytes
}

/// The endpoint as version 1 stored it: without secrets, its bytes are today's with version byte 1.
fn endpoint_v1_bytes() -> Vec<u8> {
    assert!(endpoint().secrets.is_empty());
    let mut bytes = super::MasterKeys::default().seal(&endpoint()).encode();
    bytes[0] = 1;
    bytes
}

fn delivery(seq: u64, status: DeliveryStatus) -> Delivery {
    Delivery {
        status,
        next_attempt_at_ms: (status == DeliveryStatus::Pending).then_some(1_000),
        ..Delivery::initial(2, 1_000, seq, 1)
    }
}

/// Writes a schema version 1 store: one endpoint, one event with a pending delivery (3, queued)
/// and a succeeded one (4). Delivery 4 also exists under its new key, as if a migration had been
/// cut short between writing the new key and removing the old one.
fn write_version_1_store(dir: &std::path::Path) {
    let db = sled::Config::new()
        .path(dir)
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap();
    let tree = |name: &str| db.open_tree(name).unwrap();
    tree("endpoints")
        .insert(u64_key(1), endpoint_v1_bytes())
        .unwrap();
    tree("events")
        .insert(u64_key(2), event_v1_bytes(&event()))
        .unwrap();
    let id = EventIdRecord {
        event_seq: 2,
        content_hash: [4; 32],
        deliveries: 2,
    };
    tree("event_ids").insert("evt_old", id.encode()).unwrap();
    let pending = delivery(3, DeliveryStatus::Pending);
    let done = delivery(4, DeliveryStatus::Succeeded);
    tree("deliveries")
        .insert(u64_key(3), pending.encode())
        .unwrap();
    tree("deliveries")
        .insert(u64_key(4), done.encode())
        .unwrap();
    tree("deliveries")
        .insert(pair_key(2, 4), done.encode())
        .unwrap();
    for seq in [3, 4] {
        tree("event_deliveries")
            .insert(pair_key(2, seq), &[])
            .unwrap();
    }
    tree("queue")
        .insert(queue_key(1, 1_000, 3), &u64_key(1_000))
        .unwrap();
    let meta = tree("meta");
    meta.insert("schema", &u64_key(1)).unwrap();
    meta.insert("next_id", &u64_key(4)).unwrap();
    let mut pending_key = b"pending/".to_vec();
    pending_key.extend_from_slice(&u64_key(1));
    meta.insert(pending_key, &u64_key(1)).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_version_1_store_is_migrated_when_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    write_version_1_store(&dir);

    let store = SledStore::open(&dir, 8 * 1024 * 1024).unwrap();
    let ev = store
        .event_by_id("evt_old")
        .unwrap()
        .expect("the event reads");
    assert!(ev.initial_deliveries.is_empty());
    let deliveries = store.event_deliveries(&ev).unwrap();
    let seen: Vec<(u64, DeliveryStatus)> = deliveries.iter().map(|d| (d.seq, d.status)).collect();
    assert_eq!(
        seen,
        vec![(3, DeliveryStatus::Pending), (4, DeliveryStatus::Succeeded)]
    );
    let queue = store.queue_entries_raw(1, 10).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(
        queue[0].delivery,
        DeliveryKey {
            event_seq: 2,
            seq: 3
        }
    );
    assert_eq!(queue[0].due_ms, 1_000);
    assert_eq!(store.delivery_of(&ev, 3).unwrap().unwrap().seq, 3);
    assert_eq!(store.endpoint_pending(1), 1);
    let state = store.inner.state.sled().unwrap();
    assert!(
        state
            .trees
            .deliveries
            .iter()
            .keys()
            .all(|k| k.unwrap().len() == 16),
        "no delivery is left under its old key"
    );
    assert!(!state
        .db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == b"event_deliveries"));
    drop(state);
    store.close().unwrap();
    drop(store);

    // Opening again finds version 2 and changes nothing.
    let store = SledStore::open(&dir, 8 * 1024 * 1024).unwrap();
    let ev = store.event_by_id("evt_old").unwrap().unwrap();
    assert_eq!(store.event_deliveries(&ev).unwrap().len(), 2);
    store.close().unwrap();
}

#[test]
fn a_store_of_an_unknown_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let db = sled::Config::new()
            .path(&dir)
            .segment_size(SEGMENT_SIZE)
            .open()
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema", &u64_key(99))
            .unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&dir, 8 * 1024 * 1024)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

fn new_event(id: &str, hash: u8) -> super::NewEvent {
    super::NewEvent {
        id: id.into(),
        partner_id: "acme-health".into(),
        environment: Environment::Production,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: 1_000,
        payload: b"{}".to_vec(),
        content_hash: [hash; 32],
        only_endpoint: None,
    }
}

/// Idempotency holds across a restart once the id filter is in use: the ids stored before the
/// start are in it, so a repeated id is looked up and found.
#[test]
fn ids_stored_before_a_restart_are_found_through_the_id_filter() {
    use super::IngestOutcome;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = SledStore::open(&dir, 8 * 1024 * 1024).unwrap();
    let first = rt
        .block_on(store.ingest(vec![new_event("evt_a", 1), new_event("evt_b", 1)]))
        .unwrap();
    assert!(first
        .iter()
        .all(|o| matches!(o, IngestOutcome::Accepted { .. })));
    store.close().unwrap();
    drop(store);

    let store = SledStore::open(&dir, 8 * 1024 * 1024).unwrap();
    let ids = store.inner.state.ids.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Until the scan is done the filter answers "maybe" to everything.
    while ids.may_contain(b"evt_never_posted") {
        assert!(
            std::time::Instant::now() < deadline,
            "the id scan never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(ids.may_contain(b"evt_a") && ids.may_contain(b"evt_b"));
    let again = rt
        .block_on(store.ingest(vec![
            new_event("evt_a", 1),
            new_event("evt_b", 2),
            new_event("evt_c", 1),
        ]))
        .unwrap();
    assert_eq!(
        again,
        vec![
            IngestOutcome::Duplicate { deliveries: 0 },
            IngestOutcome::Conflict,
            IngestOutcome::Accepted { deliveries: 0 },
        ]
    );
    assert_eq!(store.counters().events, 3);
    store.close().unwrap();
}

/// A queue entry whose event is gone (which no code path leaves behind, but a damaged store could)
/// is removed when the scheduler hands it back, instead of coming back forever.
#[test]
fn a_queue_entry_without_its_delivery_is_removed_on_cancel() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap();
    let orphan = queue_key(1, 5_000, 77);
    store
        .inner
        .state
        .sled()
        .unwrap()
        .trees
        .queue
        .insert(orphan, &super::codec::queue_value(5_000, 76))
        .unwrap();
    let entry = store
        .first_queue_entry(1, 0)
        .unwrap()
        .expect("the entry is there");
    assert_eq!(
        entry.delivery,
        DeliveryKey {
            event_seq: 76,
            seq: 77
        }
    );
    rt.block_on(store.cancel_delivery(1, entry)).unwrap();
    assert!(store.first_queue_entry(1, 0).unwrap().is_none());
    store.close().unwrap();
}

/// After a write fault the writer reopens sled in place: changes fail fast meanwhile, then the store
/// takes writes again with what was durable, and its in-memory copies match the disk.
#[test]
fn a_write_fault_reopens_the_store_in_place() {
    use super::health::Fault;
    use super::{IngestOutcome, StoreError};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap();
    rt.block_on(store.ingest(vec![new_event("evt_a", 1)]))
        .unwrap();
    store
        .inner
        .state
        .health
        .set_fault(Fault::Full, "test: no space left".into());
    assert!(!store.writable());
    assert!(matches!(
        rt.block_on(store.ingest(vec![new_event("evt_b", 1)])),
        Err(StoreError::Full(_))
    ));
    assert!(matches!(store.admit_ingest(0), Err(StoreError::Full(_))));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.writable() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never reopened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let again = rt
        .block_on(store.ingest(vec![new_event("evt_a", 1), new_event("evt_b", 1)]))
        .unwrap();
    assert!(matches!(again[0], IngestOutcome::Duplicate { .. }));
    assert!(matches!(again[1], IngestOutcome::Accepted { .. }));
    assert_eq!(store.counters().events, 2);
    assert!(store.event_by_id("evt_b").unwrap().is_some());
    store.close().unwrap();
}

/// Damages sled's data file of a closed store three of the four ways of issue 9.
pub(crate) fn damage(db: &std::path::Path, how: &str) {
    use std::os::unix::fs::FileExt;
    let len = std::fs::metadata(db).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(db)
        .unwrap();
    match how {
        "half" => f.set_len(len / 2).unwrap(),
        "zeros" => f.write_all_at(&vec![0; len as usize], 0).unwrap(),
        "empty" => f.set_len(0).unwrap(),
        other => panic!("no damage called {other}"),
    }
    f.sync_all().unwrap();
}

/// A closed store with one endpoint and 5,000 events.
fn filled_store(dir: &std::path::Path) {
    use super::NewEvent;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SledStore::open(dir, 16 << 20).unwrap();
    rt.block_on(async {
        store.create_endpoint(endpoint()).await.unwrap();
        for b in 0..100 {
            let evs = (0..50)
                .map(|i| NewEvent {
                    id: format!("evt_{b}_{i}"),
                    partner_id: "acme-health".into(),
                    environment: Environment::Production,
                    event_type: "audit.completed".into(),
                    created_at: "2026-01-15T19:04:12Z".into(),
                    received_at_ms: 1000,
                    payload: vec![b'x'; 600],
                    content_hash: [1; 32],
                    only_endpoint: None,
                })
                .collect();
            store.ingest(evs).await.unwrap();
        }
    });
    store.close().unwrap();
}

#[test]
fn a_damaged_store_is_refused_reported_and_can_be_accepted() {
    // sled finishes writing (its snapshot) in background threads a moment after a close; in one
    // process the next open must not race them (separate processes, as in production, need not wait).
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1500));
    // A flipped byte: tests/it/integrity.rs, with the binary (sled's threads outlive a close in one
    // process and race a reopen of a damaged log).
    for how in ["half", "zeros", "empty"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        filled_store(&dir);
        assert!(
            super::check(&dir).unwrap().healthy(),
            "{how}: healthy before"
        );
        damage(&dir.join("db"), how);
        let err = match SledStore::open(&dir, 16 << 20) {
            Err(e) => e,
            Ok(s) => {
                let events = s.events_from(0, 10_000).map(|e| e.len());
                panic!("{how}: a damaged store opened ({events:?} events readable)")
            }
        };
        assert!(err.is_data_error(), "{how}: {err}");
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{how}: {text}");
        settle();
        let report = super::check(&dir).unwrap();
        assert!(!report.healthy(), "{how}: check says healthy: {report:?}");
        settle();
        // The operator accepts the loss: the store opens, marked, and opens again without the flag.
        let store = SledStore::open_with(
            &dir,
            16 << 20,
            super::OpenOptions {
                accept_data_loss: true,
            },
        )
        .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert!(store.damage_mark().is_some(), "{how}");
        store.close().unwrap();
        drop(store);
        settle();
        let store = SledStore::open(&dir, 16 << 20).unwrap_or_else(|e| panic!("{how}: {e}"));
        assert!(store.damage_mark().is_some(), "{how}: the mark stays");
        store.close().unwrap();
        drop(store);
        settle();
        let report = super::check(&dir).unwrap();
        assert!(report.healthy(), "{how}: {report:?}");
        settle();
        assert!(super::watermark::clear_damage_mark(&dir).unwrap());
        let store = SledStore::open(&dir, 16 << 20).unwrap();
        assert!(store.damage_mark().is_none(), "{how}: cleared");
        store.close().unwrap();
    }
}

#[test]
fn a_store_without_a_watermark_gets_one_from_what_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    filled_store(&dir);
    std::fs::remove_file(dir.join(super::watermark::FILE)).unwrap();
    let store = SledStore::open(&dir, 16 << 20).unwrap();
    store.close().unwrap();
    drop(store);
    let mark = super::watermark::read(&dir).unwrap().unwrap();
    assert_eq!(mark.events, 5000);
    // From now on, damage is caught.
    damage(&dir.join("db"), "half");
    assert!(SledStore::open(&dir, 16 << 20).is_err());
}

/// A retry's queue entry carries the retry mark (the scheduler keeps retries out of its reserve of
/// slots for first attempts); a first attempt's does not, and switching `ordered` keeps the mark.
#[test]
fn a_retry_is_marked_in_the_queue_and_keeps_its_mark_when_requeued() {
    use super::{SettleOutcome, Settlement};
    use crate::model::Attempt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap();
    let ep = rt.block_on(store.create_endpoint(endpoint())).unwrap();
    rt.block_on(store.ingest(vec![new_event("evt_r", 1)]))
        .unwrap();
    let first = store.first_queue_entry(ep.num, 0).unwrap().expect("queued");
    assert!(!first.retry, "a first attempt is not marked");

    let event = store.event(first.delivery.event_seq).unwrap().unwrap();
    let as_read = store
        .delivery_of(&event, first.delivery.seq)
        .unwrap()
        .unwrap();
    rt.block_on(store.settle(Settlement {
        claim: crate::store::Claim {
            delivery: first.delivery,
            endpoint_num: ep.num,
            fence: 0,
        },
        as_read,
        attempt: Attempt {
            n: 1,
            at_ms: 1_000,
            status_code: Some(500),
            duration_ms: 1,
            error: None,
            response_snippet: None,
        },
        outcome: SettleOutcome::Retry { at_ms: 5_000 },
        disable_after_ms: u64::MAX / 2,
    }))
    .unwrap();
    let retry = store.first_queue_entry(ep.num, 0).unwrap().expect("queued");
    assert_eq!((retry.delivery, retry.due_ms), (first.delivery, 5_000));
    assert!(retry.retry, "a retry is marked");

    rt.block_on(store.update_endpoint(ep.num, |e| e.ordered = true))
        .unwrap();
    let ordered = store.first_queue_entry(ep.num, 0).unwrap().expect("queued");
    assert_eq!((ordered.sort, ordered.due_ms), (0, 5_000));
    assert!(
        ordered.retry,
        "the mark survives the rewrite into the ordered form"
    );
    store.close().unwrap();
}

/// The oldest pending delivery is the one pending the longest, whatever its number: a retry waiting
/// counts from its creation, a redriven dead letter from its redrive; nothing pending is `None`.
#[test]
fn the_oldest_pending_delivery_counts_from_when_it_became_pending() {
    use super::{SettleOutcome, Settlement};
    use crate::model::{Attempt, DeadReason};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap();
    let ep = rt.block_on(store.create_endpoint(endpoint())).unwrap();
    let settle = |key: DeliveryKey, at_ms: u64, outcome: SettleOutcome| {
        let event = store.event(key.event_seq).unwrap().unwrap();
        let as_read = store.delivery_of(&event, key.seq).unwrap().unwrap();
        rt.block_on(store.settle(Settlement {
            claim: crate::store::Claim {
                delivery: key,
                endpoint_num: ep.num,
                fence: 0,
            },
            as_read,
            attempt: Attempt {
                n: 1,
                at_ms,
                status_code: Some(500),
                duration_ms: 1,
                error: None,
                response_snippet: None,
            },
            outcome,
            disable_after_ms: u64::MAX / 2,
        }))
        .unwrap();
    };
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), None);

    // A: received at 1 000, dead at 1 500.
    rt.block_on(store.ingest(vec![new_event("evt_a", 1)]))
        .unwrap();
    let a = store
        .first_queue_entry(ep.num, 0)
        .unwrap()
        .unwrap()
        .delivery;
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), Some(1_000));
    let dead = SettleOutcome::Dead {
        reason: DeadReason::RetriesExhausted,
    };
    settle(a, 1_500, dead);
    // B: received at 2 000, waits for a retry due at 90 000: still pending since 2 000.
    let mut b_event = new_event("evt_b", 2);
    b_event.received_at_ms = 2_000;
    rt.block_on(store.ingest(vec![b_event])).unwrap();
    let b = store
        .first_queue_entry(ep.num, 0)
        .unwrap()
        .unwrap()
        .delivery;
    assert_ne!(a, b);
    settle(b, 2_100, SettleOutcome::Retry { at_ms: 90_000 });
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), Some(2_000));

    // A is redriven at 3 000: lower number, but pending for less time than B.
    let dl = store.dead_letters(0, 10, |_| true).unwrap();
    rt.block_on(store.retry_dead_letters(vec![dl[0].seq], 3_000))
        .unwrap();
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), Some(2_000));

    // B delivered: A is the oldest, since its redrive (then since its round's first attempt).
    settle(b, 2_200, SettleOutcome::Succeeded);
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), Some(3_000));
    settle(a, 3_100, SettleOutcome::Retry { at_ms: 90_000 });
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), Some(3_100));

    settle(a, 3_200, SettleOutcome::Succeeded);
    store.refresh_oldest_pending().unwrap();
    assert_eq!(store.oldest_pending_since(), None);
    store.close().unwrap();
}

/// Measures the queue scan behind `oldest_pending_age_seconds` (run with `--ignored --nocapture`):
/// `PENDING` pending deliveries (default 100 000), then one refresh that has to scan.
#[test]
#[ignore]
fn measure_the_oldest_pending_scan() {
    let n: usize = std::env::var("PENDING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 16 * 1024 * 1024).unwrap();
    rt.block_on(store.create_endpoint(endpoint())).unwrap();
    for batch in 0..n.div_ceil(1000) {
        let events = (0..1000)
            .map(|i| new_event(&format!("evt_{batch}_{i}"), 1))
            .collect();
        rt.block_on(store.ingest(events)).unwrap();
    }
    let started = std::time::Instant::now();
    store.refresh_oldest_pending().unwrap();
    let scan = started.elapsed();
    let started = std::time::Instant::now();
    store.refresh_oldest_pending().unwrap();
    let check = started.elapsed();
    eprintln!("{n} pending: first refresh (scan) {scan:?}, next refresh (check) {check:?}");
    assert_eq!(store.oldest_pending_since(), Some(1_000));
    store.close().unwrap();
}
