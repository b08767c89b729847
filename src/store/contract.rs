//! The claim contract every backend keeps, written once against [`Store`]: each backend's tests run these on a fresh store.
//!
//! A backend passes when, on a store with nothing in it, every `check_*` function returns (they
//! panic on a breach, like any test). They use only the seam's methods, so a backend adds one
//! runner: sled's is at the end, PostgreSQL's in `tests/it/pgstore.rs`. Not part of the API:
//! public only so the integration tests can run it.

use super::{
    ClaimAsk, ClaimRound, Claimed, IngestOutcome, NewEvent, SettleOutcome, Settlement, Store,
};
use crate::model::{Attempt, DeliveryStatus, Endpoint, Environment};

/// Every check, in turn, each on an endpoint of its own.
pub async fn check_all(store: &Store) {
    check_each_due_delivery_is_claimed_once(store).await;
    check_a_settled_delivery_is_not_claimed_again(store).await;
    check_ordered_hands_out_the_head_alone(store).await;
    check_admits_and_held_are_obeyed(store).await;
}

/// Claims with nothing refused and nothing held back.
async fn claim(store: &Store, ep: &Endpoint, now_ms: u64, room: usize) -> ClaimRound {
    let admits = |_: usize, _: bool| true;
    let held_until = |_: u64| None;
    store
        .claim(
            ep,
            ClaimAsk {
                now_ms,
                room,
                admits: &admits,
                held_until: &held_until,
            },
        )
        .await
        .expect("claim")
}

/// Claims until the claim hands out `want`, in any order, for up to 5 s: a release may take
/// effect a moment after it returns (PostgreSQL clears the lease in the background), and makes
/// the delivery due at the real time it took effect, so `now_ms` follows the clock from there.
async fn claim_expecting(
    store: &Store,
    ep: &Endpoint,
    now_ms: u64,
    room: usize,
    want: &[&str],
) -> ClaimRound {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut want: Vec<&str> = want.to_vec();
    want.sort_unstable();
    loop {
        let now_ms = now_ms.max(crate::api::now_ms());
        let mut round = claim(store, ep, now_ms, room).await;
        round.claimed.sort_by(|a, b| a.event.id.cmp(&b.event.id));
        if ids(&round) == want || std::time::Instant::now() > deadline {
            return round;
        }
        for c in &round.claimed {
            store.release(c.claim);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn endpoint(store: &Store, partner: &str, ordered: bool) -> Endpoint {
    let ep = Endpoint {
        num: 0,
        partner_id: partner.into(),
        environment: Environment::Production,
        url: "https://hooks.acme.example/preflix".into(),
        event_types: vec!["*".into()],
        description: String::new(),
        headers: Vec::new(),
        ordered,
        max_in_flight: 16,
        rate_limit_per_second: None,
        enabled: true,
        disabled_reason: None,
        created_at_ms: 1,
        secrets: Vec::new(),
    };
    store.create_endpoint(ep).await.expect("create endpoint")
}

/// Stores events `ids` for `partner`, received at `base` + 1,000 ms (so due then).
async fn ingest(store: &Store, base: u64, partner: &str, ids: &[&str]) {
    let events = ids
        .iter()
        .map(|id| NewEvent {
            id: (*id).into(),
            partner_id: partner.into(),
            environment: Environment::Production,
            event_type: "audit.completed".into(),
            created_at: "2026-01-15T19:04:12Z".into(),
            received_at_ms: base + 1_000,
            payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
            content_hash: [7; 32],
            only_endpoint: None,
        })
        .collect();
    let out = store.ingest(events).await.expect("ingest");
    assert!(
        out.iter()
            .all(|o| *o == IngestOutcome::Accepted { deliveries: 1 }),
        "{out:?}"
    );
}

async fn settle(store: &Store, claimed: &Claimed, outcome: SettleOutcome, at_ms: u64) {
    store
        .settle(Settlement {
            claim: claimed.claim,
            as_read: claimed.delivery.clone(),
            attempt: Attempt {
                n: claimed.delivery.attempts.len() as u32 + 1,
                at_ms,
                status_code: Some(match outcome {
                    SettleOutcome::Succeeded => 200,
                    _ => 500,
                }),
                duration_ms: 1,
                error: None,
                response_snippet: None,
            },
            outcome,
            disable_after_ms: u64::MAX / 4,
        })
        .await
        .expect("settle");
}

fn ids(round: &ClaimRound) -> Vec<String> {
    round.claimed.iter().map(|c| c.event.id.clone()).collect()
}

/// Due deliveries are handed out in queue order with their event and delivery; one claimed is not
/// handed out again until released; `room` caps a claim.
pub async fn check_each_due_delivery_is_claimed_once(store: &Store) {
    // Times are real ones (a backend may compare them with its own clock), shifted.
    let base = crate::api::now_ms() - 2_000;
    let ep = endpoint(store, "contract-once", false).await;
    ingest(store, base, "contract-once", &["c1", "c2", "c3"]).await;

    let first = claim(store, &ep, base + 2_000, 2).await;
    assert_eq!(ids(&first), ["c1", "c2"]);
    assert!(first.wants_more, "a due delivery was left for want of room");
    for c in &first.claimed {
        assert_eq!(c.claim.endpoint_num, ep.num);
        assert_eq!(c.claim.delivery.seq, c.delivery.seq);
        assert_eq!(c.claim.delivery.event_seq, c.event.seq);
        assert_eq!(c.delivery.endpoint_num, ep.num);
        assert_eq!(c.delivery.status, DeliveryStatus::Pending);
        assert!(c.delivery.attempts.is_empty() && !c.retry);
        assert!(store.is_claimed(c.delivery.seq));
    }
    let second = claim(store, &ep, base + 2_000, 10).await;
    assert_eq!(
        ids(&second),
        ["c3"],
        "claimed deliveries are not handed out twice"
    );
    assert!(claim(store, &ep, base + 2_000, 10).await.claimed.is_empty());

    // Released without a settle (attempts cut off): due again.
    for c in first.claimed.iter().chain(&second.claimed) {
        store.release(c.claim);
        assert!(!store.is_claimed(c.delivery.seq));
    }
    let again = claim_expecting(store, &ep, base + 2_000, 10, &["c1", "c2", "c3"]).await;
    assert_eq!(ids(&again), ["c1", "c2", "c3"]);
    for c in &again.claimed {
        store.release(c.claim);
    }
}

/// A settled and released delivery is not claimed again; a retry is claimed again once due, marked
/// as a retry, with its attempt in its delivery.
pub async fn check_a_settled_delivery_is_not_claimed_again(store: &Store) {
    // Times are real ones (a backend may compare them with its own clock), shifted.
    let base = crate::api::now_ms() - 2_000;
    let ep = endpoint(store, "contract-settle", false).await;
    ingest(store, base, "contract-settle", &["s1", "s2"]).await;
    let round = claim(store, &ep, base + 2_000, 10).await;
    assert_eq!(ids(&round), ["s1", "s2"]);
    let (ok, retry) = (&round.claimed[0], &round.claimed[1]);
    settle(store, ok, SettleOutcome::Succeeded, base + 2_000).await;
    settle(
        store,
        retry,
        SettleOutcome::Retry {
            at_ms: base + 60_000,
        },
        base + 2_000,
    )
    .await;
    store.release(ok.claim);
    store.release(retry.claim);

    let round = claim(store, &ep, base + 3_000, 10).await;
    assert!(round.claimed.is_empty(), "{:?}", ids(&round));
    assert_eq!(
        round.next_due_ms,
        Some(base + 60_000),
        "the retry's due time"
    );
    let event = store.event(ok.event.seq).await.unwrap().unwrap();
    let deliveries = store.event_deliveries(&event).await.unwrap();
    assert_eq!(deliveries[0].status, DeliveryStatus::Succeeded);

    let round = claim_expecting(store, &ep, base + 60_000, 10, &["s2"]).await;
    assert_eq!(ids(&round), ["s2"]);
    let again = &round.claimed[0];
    assert!(again.retry, "a retry is marked as one");
    assert_eq!(again.delivery.attempts.len(), 1);
    settle(store, again, SettleOutcome::Succeeded, base + 60_000).await;
    store.release(again.claim);
    assert!(claim(store, &ep, base + 120_000, 10)
        .await
        .claimed
        .is_empty());
}

/// `ordered`: only the head goes, one at a time, and a head waiting for its retry holds back the
/// deliveries behind it.
pub async fn check_ordered_hands_out_the_head_alone(store: &Store) {
    // Times are real ones (a backend may compare them with its own clock), shifted.
    let base = crate::api::now_ms() - 2_000;
    let ep = endpoint(store, "contract-ordered", true).await;
    ingest(store, base, "contract-ordered", &["o1", "o2", "o3"]).await;
    let round = claim(store, &ep, base + 2_000, 10).await;
    assert_eq!(ids(&round), ["o1"], "only the head");
    assert!(
        claim(store, &ep, base + 2_000, 10).await.claimed.is_empty(),
        "nothing while the head is under way"
    );
    let head = &round.claimed[0];
    settle(
        store,
        head,
        SettleOutcome::Retry {
            at_ms: base + 30_000,
        },
        base + 2_000,
    )
    .await;
    store.release(head.claim);
    let round = claim(store, &ep, base + 3_000, 10).await;
    assert!(round.claimed.is_empty(), "the retry holds back o2 and o3");
    assert_eq!(round.next_due_ms, Some(base + 30_000));
    let round = claim_expecting(store, &ep, base + 30_000, 10, &["o1"]).await;
    assert_eq!(ids(&round), ["o1"]);
    settle(
        store,
        &round.claimed[0],
        SettleOutcome::Succeeded,
        base + 30_000,
    )
    .await;
    store.release(round.claimed[0].claim);
    let round = claim_expecting(store, &ep, base + 30_000, 10, &["o2"]).await;
    assert_eq!(ids(&round), ["o2"]);
    store.release(round.claimed[0].claim);
}

/// What `admits` refuses and what `held_until` holds back are left waiting, and said so.
pub async fn check_admits_and_held_are_obeyed(store: &Store) {
    // Times are real ones (a backend may compare them with its own clock), shifted.
    let base = crate::api::now_ms() - 2_000;
    let ep = endpoint(store, "contract-admits", false).await;
    ingest(store, base, "contract-admits", &["a1", "a2", "a3"]).await;
    // Make a1 a retry, due again at 5,000.
    let round = claim(store, &ep, base + 2_000, 1).await;
    assert_eq!(ids(&round), ["a1"]);
    settle(
        store,
        &round.claimed[0],
        SettleOutcome::Retry {
            at_ms: base + 5_000,
        },
        base + 2_000,
    )
    .await;
    store.release(round.claimed[0].claim);
    let a3 = store.event_by_id("a3").await.unwrap().expect("a3 stored");
    let a3_seq = store.event_deliveries(&a3).await.unwrap()[0].seq;

    // First attempts only: the retry a1 is skipped, a2 taken (room for one).
    let first_only = |_: usize, retry: bool| !retry;
    let none_held = |_: u64| None;
    let round = store
        .claim(
            &ep,
            ClaimAsk {
                now_ms: base + 6_000,
                room: 1,
                admits: &first_only,
                held_until: &none_held,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&round), ["a2"]);
    let round_a2_claim = round.claimed[0].claim;

    // a3 held back until 9,000: only the retry remains, and the first-attempt rule refuses it.
    let held = move |seq: u64| (seq == a3_seq).then_some(base + 9_000);
    let round = store
        .claim(
            &ep,
            ClaimAsk {
                now_ms: base + 6_000,
                room: 10,
                admits: &first_only,
                held_until: &held,
            },
        )
        .await
        .unwrap();
    assert!(round.claimed.is_empty(), "{:?}", ids(&round));
    assert!(
        round.only_retries,
        "only retries were due, and they may not start"
    );
    assert_eq!(
        round.next_due_ms,
        Some(base + 9_000),
        "the hold's end is noted"
    );
    store.release(round_a2_claim);
}

#[cfg(test)]
#[tokio::test]
async fn sled_keeps_the_claim_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::Sled(
        super::sled::SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap(),
    );
    check_all(&store).await;
    store.close().await.unwrap();
}
