//! The seam's partner operations (store/partners.rs), written once and run against both backends:
//! tokens (a revocation seen by a second node at once on PostgreSQL), reads filtered by a partner's
//! scope inside the query (pages of one), and endpoint stats counted by settles and purged.

use crate::support::pg::PgCluster;
use preflix_webhookd::model::{
    Attempt, Endpoint, EndpointSecret, Environment, PartnerScope, PartnerToken,
};
use preflix_webhookd::stats::hour_of;
use preflix_webhookd::store::postgres::{PgOptions, PgStore};
use preflix_webhookd::store::sled::SledStore;
use preflix_webhookd::store::{
    ClaimAsk, DeadLetterFilter, EventFilter, MasterKeys, NewEvent, SettleOutcome, Settlement, Store,
};
use std::collections::BTreeSet;
use std::time::Duration;

fn now_ms() -> u64 {
    preflix_webhookd::api::now_ms()
}

fn endpoint(partner: &str, environment: Environment) -> Endpoint {
    Endpoint {
        num: 0,
        partner_id: partner.into(),
        environment,
        url: "http://127.0.0.1:9/hook".into(),
        event_types: vec!["*".into()],
        description: String::new(),
        headers: Vec::new(),
        ordered: false,
        max_in_flight: 16,
        rate_limit_per_second: None,
        enabled: true,
        disabled_reason: None,
        created_at_ms: now_ms(),
        secrets: vec![EndpointSecret {
            secret: "whsec_dGVzdA==".into(),
            expires_at_ms: None,
        }],
    }
}

fn event(id: &str, partner: &str, environment: Environment) -> NewEvent {
    NewEvent {
        id: id.into(),
        partner_id: partner.into(),
        environment,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: now_ms(),
        payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        content_hash: [1; 32],
        only_endpoint: None,
    }
}

fn scope(partner: &str, environment: Option<Environment>) -> PartnerScope {
    PartnerScope {
        partner_id: partner.into(),
        environment,
    }
}

/// Claims every due delivery of `ep` and settles them with `outcomes` (one each, in order), each
/// attempt taking the given milliseconds.
async fn settle_all(store: &Store, ep: &Endpoint, outcomes: &[(SettleOutcome, u32)]) {
    let admits = |_: usize, _: bool| true;
    let held = |_: u64| None;
    let round = store
        .claim(
            ep,
            ClaimAsk {
                now_ms: now_ms(),
                room: 64,
                admits: &admits,
                held_until: &held,
            },
        )
        .await
        .expect("claim");
    assert_eq!(round.claimed.len(), outcomes.len());
    for (c, (outcome, ms)) in round.claimed.iter().zip(outcomes) {
        let attempt = Attempt {
            n: 1,
            at_ms: now_ms(),
            status_code: Some(if *outcome == SettleOutcome::Succeeded {
                200
            } else {
                500
            }),
            duration_ms: *ms,
            error: None,
            response_snippet: None,
        };
        store
            .settle(Settlement {
                claim: c.claim,
                as_read: c.delivery.clone(),
                attempt,
                outcome: *outcome,
                disable_after_ms: u64::MAX,
            })
            .await
            .expect("settle");
        store.release(c.claim);
    }
}

fn token(hash: u8, partner: &str) -> PartnerToken {
    PartnerToken {
        num: 0,
        hash: [hash; 32],
        partner_id: partner.into(),
        environment: Some(Environment::Sandbox),
        read_only: true,
        description: "portal".into(),
        created_at_ms: 1_000,
        expires_at_ms: now_ms() + 60_000,
        revoked_at_ms: None,
    }
}

/// The conformance body: `store` is one node, `other` another node on the same data (the same
/// store on sled).
async fn conformance(store: Store, other: Store) {
    let dead = SettleOutcome::Dead {
        reason: preflix_webhookd::model::DeadReason::RetriesExhausted,
    };
    let a_prod = store
        .create_endpoint(endpoint("a", Environment::Production))
        .await
        .unwrap();
    let a_sandbox = store
        .create_endpoint(endpoint("a", Environment::Sandbox))
        .await
        .unwrap();
    let b_prod = store
        .create_endpoint(endpoint("b", Environment::Production))
        .await
        .unwrap();
    for i in 0..3 {
        for (partner, prefix) in [("a", "a"), ("b", "b")] {
            store
                .ingest(vec![event(
                    &format!("{prefix}{i}"),
                    partner,
                    Environment::Production,
                )])
                .await
                .unwrap();
        }
    }
    store
        .ingest(vec![event("as0", "a", Environment::Sandbox)])
        .await
        .unwrap();
    settle_all(
        &store,
        &a_prod,
        &[
            (SettleOutcome::Succeeded, 5),
            (SettleOutcome::Succeeded, 6),
            (dead, 900),
        ],
    )
    .await;
    settle_all(&store, &b_prod, &[(dead, 10), (dead, 10), (dead, 10)]).await;

    // Endpoints within a scope.
    let nums =
        |eps: Vec<std::sync::Arc<Endpoint>>| -> Vec<u64> { eps.iter().map(|e| e.num).collect() };
    let a = scope("a", None);
    assert_eq!(
        nums(store.endpoints_in(Some(&a), None)),
        vec![a_prod.num, a_sandbox.num]
    );
    assert_eq!(
        nums(store.endpoints_in(Some(&a), Some("b"))),
        Vec::<u64>::new()
    );
    assert_eq!(
        nums(store.endpoints_in(Some(&scope("a", Some(Environment::Sandbox))), None)),
        vec![a_sandbox.num]
    );
    assert_eq!(store.endpoints_in(None, None).len(), 3);

    // Events, a page of one at a time, newest first: A's only.
    let page_all = |filter: EventFilter| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut before = None;
            loop {
                let page = store.events_matching(&filter, before, 1).await.unwrap();
                let Some(e) = page.first() else { break };
                assert_eq!(page.len(), 1);
                ids.push(e.id.clone());
                before = Some(e.seq);
            }
            ids
        }
    };
    let a_events = page_all(EventFilter {
        scope: Some(a.clone()),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(a_events, vec!["as0", "a2", "a1", "a0"]);
    let sandbox_events = page_all(EventFilter {
        scope: Some(scope("a", Some(Environment::Sandbox))),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(sandbox_events, vec!["as0"]);
    let to_b = page_all(EventFilter {
        scope: Some(a.clone()),
        endpoint_num: Some(b_prod.num),
        ..EventFilter::default()
    })
    .await;
    assert!(to_b.is_empty(), "{to_b:?}");
    let admin_to_b = page_all(EventFilter {
        endpoint_num: Some(b_prod.num),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(admin_to_b, vec!["b2", "b1", "b0"]);
    assert!(store
        .event_by_id_in("b0", Some(&a))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .event_by_id_in("a0", Some(&a))
        .await
        .unwrap()
        .is_some());
    assert!(store.event_by_id_in("b0", None).await.unwrap().is_some());

    // Dead letters, a page of one at a time: A has one, B three.
    let dead_of = |s: Option<PartnerScope>| {
        let store = store.clone();
        async move {
            let filter = DeadLetterFilter {
                scope: s,
                ..DeadLetterFilter::default()
            };
            let mut out = Vec::new();
            let mut after = 0;
            loop {
                let page = store.dead_letters(after, 1, &filter).await.unwrap();
                let Some(dl) = page.first() else { break };
                out.push(dl.clone());
                after = dl.seq;
            }
            out
        }
    };
    let a_dead = dead_of(Some(a.clone())).await;
    let b_dead = dead_of(Some(scope("b", None))).await;
    assert_eq!(a_dead.len(), 1);
    assert_eq!(a_dead[0].endpoint_num, a_prod.num);
    assert_eq!(b_dead.len(), 3);
    assert!(dead_of(Some(scope("a", Some(Environment::Sandbox))))
        .await
        .is_empty());
    assert_eq!(dead_of(None).await.len(), 4);
    assert!(store
        .dead_letter_in(b_dead[0].seq, Some(&a))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .dead_letter_in(a_dead[0].seq, Some(&a))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .dead_letter_in(b_dead[0].seq, None)
        .await
        .unwrap()
        .is_some());

    // Stats, counted by the settles.
    let hour = hour_of(now_ms());
    let sum = |hours: Vec<(u64, preflix_webhookd::stats::HourStats)>| {
        let mut total = preflix_webhookd::stats::HourStats::default();
        for (_, h) in &hours {
            total.merge(h);
        }
        total
    };
    let a_stats = sum(store
        .endpoint_stats(a_prod.num, hour - 1, hour + 1)
        .await
        .unwrap());
    assert_eq!((a_stats.succeeded, a_stats.failed), (2, 1));
    let p50 = a_stats.percentile_ms(0.5);
    assert!((5..=7).contains(&p50), "{p50}");
    assert!(a_stats.percentile_ms(1.0) >= 700, "{a_stats:?}");
    let b_stats = sum(other
        .endpoint_stats(b_prod.num, hour - 1, hour + 1)
        .await
        .unwrap());
    assert_eq!((b_stats.succeeded, b_stats.failed), (0, 3));
    assert!(store
        .endpoint_stats(a_sandbox.num, 0, hour + 1)
        .await
        .unwrap()
        .is_empty());
    // A deleted endpoint's hours go at the next purge; a live one's only once they are old.
    assert!(store.delete_endpoint(b_prod.num).await.unwrap());
    assert!(store.purge_stats(hour - 1).await.unwrap() >= 1);
    assert!(store
        .endpoint_stats(b_prod.num, 0, hour + 1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        sum(store.endpoint_stats(a_prod.num, 0, hour + 1).await.unwrap()).succeeded,
        2
    );
    assert!(store.purge_stats(hour + 1).await.unwrap() >= 1);
    assert!(store
        .endpoint_stats(a_prod.num, 0, hour + 1)
        .await
        .unwrap()
        .is_empty());

    // Tokens.
    let t1 = store.create_token(token(7, "a")).await.unwrap();
    let t2 = store.create_token(token(8, "b")).await.unwrap();
    assert_ne!(t1.num, t2.num);
    assert_eq!(
        other.token_by_hash(&[7; 32]).await.unwrap(),
        Some(t1.clone())
    );
    assert_eq!(other.token_by_hash(&[9; 32]).await.unwrap(), None);
    let listed: BTreeSet<u64> = store
        .tokens(None)
        .await
        .unwrap()
        .iter()
        .map(|t| t.num)
        .collect();
    assert_eq!(listed, [t1.num, t2.num].into());
    assert_eq!(store.tokens(Some("b")).await.unwrap(), vec![t2.clone()]);
    let revoked = store.revoke_token(t1.num, 5_000).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
    // The other node sees it at once; a second revocation keeps the first time.
    assert_eq!(
        other
            .token_by_hash(&[7; 32])
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        Some(5_000)
    );
    let again = other.revoke_token(t1.num, 9_000).await.unwrap().unwrap();
    assert_eq!(again.revoked_at_ms, Some(5_000));
    assert_eq!(store.revoke_token(u64::MAX / 2, 1).await.unwrap(), None);
    assert_eq!(store.purge_tokens(5_001).await.unwrap(), 1);
    assert_eq!(store.tokens(None).await.unwrap(), vec![t2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_operations_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sled(SledStore::open(dir.path(), 1 << 20).unwrap());
    conformance(store.clone(), store.clone()).await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_operations_on_postgres() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let open = |node: &str| PgOptions {
        url: url.clone(),
        pool_size: 4,
        lease: Duration::from_secs(60),
        node_name: node.into(),
        keys: MasterKeys::default(),
    };
    let a = Store::Postgres(PgStore::open(open("a")).await.unwrap());
    let b = Store::Postgres(PgStore::open(open("b")).await.unwrap());
    conformance(a.clone(), b.clone()).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}
