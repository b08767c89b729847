//! The partner and environment gate, at the store: every path that creates a delivery refuses to cross.

use super::super::{DeliveryKey, SledStore};
use super::{IngestOutcome, NewEvent, SettleOutcome, Settlement};
use crate::model::{Attempt, DeadReason, Delivery, Endpoint, Environment};

fn endpoint(partner: &str, environment: Environment) -> Endpoint {
    Endpoint::sample(0, partner, environment)
}

fn new_event(id: &str, only_endpoint: Option<u64>) -> NewEvent {
    NewEvent {
        id: id.into(),
        partner_id: "acme-health".into(),
        environment: Environment::Production,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: 1_000,
        payload: b"{}".to_vec(),
        content_hash: [1; 32],
        only_endpoint,
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: SledStore,
    _tmp: tempfile::TempDir,
    /// acme-health, production: the event's own audience.
    own: Endpoint,
    /// another partner, production.
    other_partner: Endpoint,
    /// acme-health, sandbox.
    other_environment: Endpoint,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap();
    let create = |ep| rt.block_on(store.create_endpoint(ep)).unwrap();
    let own = create(endpoint("acme-health", Environment::Production));
    let other_partner = create(endpoint("rival-health", Environment::Production));
    let other_environment = create(endpoint("acme-health", Environment::Sandbox));
    Fixture {
        rt,
        store,
        _tmp: tmp,
        own,
        other_partner,
        other_environment,
    }
}

impl Fixture {
    fn queued(&self, ep: &Endpoint) -> usize {
        self.store.queue_entries_raw(ep.num, 100).unwrap().len()
    }
}

#[test]
fn ingest_creates_deliveries_for_the_events_own_audience_only() {
    let f = fixture();
    let out =
        f.rt.block_on(f.store.ingest(vec![new_event("evt_1", None)]))
            .unwrap();
    assert_eq!(out, vec![IngestOutcome::Accepted { deliveries: 1 }]);
    assert_eq!(f.queued(&f.own), 1);
    assert_eq!(f.queued(&f.other_partner), 0);
    assert_eq!(f.queued(&f.other_environment), 0);
}

#[test]
fn a_test_event_for_one_endpoint_is_refused_when_it_would_cross() {
    let f = fixture();
    for target in [&f.other_partner, &f.other_environment] {
        let out =
            f.rt.block_on(f.store.ingest(vec![new_event("evt_t", Some(target.num))]))
                .unwrap();
        assert!(
            matches!(&out[0], IngestOutcome::Refused(_)),
            "{target:?}: {out:?}"
        );
        assert_eq!(f.queued(target), 0);
    }
    assert_eq!(
        f.store.counters().events,
        0,
        "a refused event is not stored"
    );
}

#[test]
fn redeliver_and_recover_cannot_cross_partners_or_environments() {
    let f = fixture();
    f.rt.block_on(f.store.ingest(vec![new_event("evt_1", None)]))
        .unwrap();
    let ev = f.store.event_by_id("evt_1").unwrap().unwrap();
    let created = f.store.counters().deliveries_created;
    for (target, says) in [
        (&f.other_partner, "another partner"),
        (&f.other_environment, "sandbox and production never mix"),
    ] {
        let refused =
            f.rt.block_on(f.store.add_deliveries(vec![(ev.seq, target.num)], 2_000))
                .unwrap()
                .expect_err("crossing is refused");
        assert!(refused.to_string().contains(says), "{refused}");
        // Mixed with an allowed pair, nothing at all is created.
        let mixed = vec![(ev.seq, f.own.num), (ev.seq, target.num)];
        let out = f.rt.block_on(f.store.add_deliveries(mixed, 2_000)).unwrap();
        assert!(out.is_err());
        assert_eq!(f.queued(target), 0);
    }
    assert_eq!(f.store.counters().deliveries_created, created);
    assert_eq!(f.queued(&f.own), 1);
    // The event's own endpoint still gets its redelivery.
    let n =
        f.rt.block_on(f.store.add_deliveries(vec![(ev.seq, f.own.num)], 2_000))
            .unwrap()
            .unwrap();
    assert_eq!(n, 1);
    assert_eq!(f.queued(&f.own), 2);
}

/// No route changes an endpoint's partner or environment (PATCH refuses both fields), so this
/// builds the situation in the store: a dead letter whose endpoint now belongs elsewhere.
#[test]
fn a_dead_letter_retry_cannot_cross_partners_or_environments() {
    let f = fixture();
    f.rt.block_on(f.store.ingest(vec![new_event("evt_1", None)]))
        .unwrap();
    let ev = f.store.event_by_id("evt_1").unwrap().unwrap();
    let (dseq, num) = ev.initial_deliveries[0];
    assert_eq!(num, f.own.num);
    let key = DeliveryKey {
        event_seq: ev.seq,
        seq: dseq,
    };
    f.rt.block_on(f.store.settle(Settlement {
        claim: crate::store::Claim {
            delivery: key,
            endpoint_num: num,
            fence: 0,
        },
        as_read: Delivery::initial(ev.seq, ev.received_at_ms, dseq, num),
        attempt: Attempt {
            n: 1,
            at_ms: 1_500,
            status_code: Some(500),
            duration_ms: 3,
            error: None,
            response_snippet: None,
        },
        outcome: SettleOutcome::Dead {
            reason: DeadReason::RetriesExhausted,
        },
        disable_after_ms: u64::MAX,
    }))
    .unwrap();
    let dl = f.store.dead_letters(0, 10, |_| true).unwrap();
    assert_eq!(dl.len(), 1);
    let dl_seq = dl[0].seq;
    for (partner, environment, says) in [
        ("rival-health", Environment::Production, "another partner"),
        ("acme-health", Environment::Sandbox, "never mix"),
    ] {
        let changed =
            f.rt.block_on(f.store.update_endpoint(num, move |ep| {
                ep.partner_id = partner.into();
                ep.environment = environment;
            }))
            .unwrap();
        assert!(changed.is_some());
        let out =
            f.rt.block_on(f.store.retry_dead_letters(vec![dl_seq], 3_000))
                .unwrap();
        assert_eq!(out.requeued, 0);
        assert_eq!(out.refused.len(), 1);
        assert!(out.refused[0].to_string().contains(says), "{out:?}");
        assert_eq!(f.queued(&f.own), 0);
        assert_eq!(f.store.dead_letters(0, 10, |_| true).unwrap().len(), 1);
    }
    // Back with its own partner, the retry goes through.
    f.rt.block_on(f.store.update_endpoint(num, |ep| {
        ep.partner_id = "acme-health".into();
        ep.environment = Environment::Production;
    }))
    .unwrap();
    let out =
        f.rt.block_on(f.store.retry_dead_letters(vec![dl_seq], 3_000))
            .unwrap();
    assert_eq!(out.requeued, 1);
    assert_eq!(f.queued(&f.own), 1);
}
