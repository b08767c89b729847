//! The claim contract every backend keeps, written once against [`Store`]: each backend's tests run these on a fresh store.
//!
//! A backend passes when, on a store with nothing in it, every `check_*` function returns. They
//! use only the seam's methods, so a new backend adds one runner (see the sled one at the end).

use super::{
    ClaimAsk, ClaimRound, Claimed, IngestOutcome, NewEvent, SettleOutcome, Settlement, Store,
};
use crate::model::{Attempt, DeliveryStatus, Endpoint, Environment};

/// Every check, in turn, each on an endpoint of its own.
pub(crate) async fn check_all(store: &Store) {
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

async fn endpoint(store: &Store, partner: &str, ordered: bool) -> Endpoint {
    let mut ep = Endpoint::sample(0, partner, Environment::Production);
    ep.ordered = ordered;
    ep.max_in_flight = 16;
    store.create_endpoint(ep).await.expect("create endpoint")
}

/// Stores events `ids` for `partner`, received at 1,000 ms (so due then).
async fn ingest(store: &Store, partner: &str, ids: &[&str]) {
    let events = ids
        .iter()
        .map(|id| NewEvent {
            id: (*id).into(),
            partner_id: partner.into(),
            environment: Environment::Production,
            event_type: "audit.completed".into(),
            created_at: "2026-01-15T19:04:12Z".into(),
            received_at_ms: 1_000,
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
pub(crate) async fn check_each_due_delivery_is_claimed_once(store: &Store) {
    let ep = endpoint(store, "contract-once", false).await;
    ingest(store, "contract-once", &["c1", "c2", "c3"]).await;

    let first = claim(store, &ep, 2_000, 2).await;
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
    let second = claim(store, &ep, 2_000, 10).await;
    assert_eq!(
        ids(&second),
        ["c3"],
        "claimed deliveries are not handed out twice"
    );
    assert!(claim(store, &ep, 2_000, 10).await.claimed.is_empty());

    // Released without a settle (attempts cut off): due again.
    for c in first.claimed.iter().chain(&second.claimed) {
        store.release(c.claim);
        assert!(!store.is_claimed(c.delivery.seq));
    }
    let again = claim(store, &ep, 2_000, 10).await;
    assert_eq!(ids(&again), ["c1", "c2", "c3"]);
    for c in &again.claimed {
        store.release(c.claim);
    }
}

/// A settled and released delivery is not claimed again; a retry is claimed again once due, marked
/// as a retry, with its attempt in its delivery.
pub(crate) async fn check_a_settled_delivery_is_not_claimed_again(store: &Store) {
    let ep = endpoint(store, "contract-settle", false).await;
    ingest(store, "contract-settle", &["s1", "s2"]).await;
    let round = claim(store, &ep, 2_000, 10).await;
    assert_eq!(ids(&round), ["s1", "s2"]);
    let (ok, retry) = (&round.claimed[0], &round.claimed[1]);
    settle(store, ok, SettleOutcome::Succeeded, 2_000).await;
    settle(store, retry, SettleOutcome::Retry { at_ms: 60_000 }, 2_000).await;
    store.release(ok.claim);
    store.release(retry.claim);

    let round = claim(store, &ep, 3_000, 10).await;
    assert!(round.claimed.is_empty(), "{:?}", ids(&round));
    assert_eq!(round.next_due_ms, Some(60_000), "the retry's due time");
    let event = store.event(ok.event.seq).await.unwrap().unwrap();
    let deliveries = store.event_deliveries(&event).await.unwrap();
    assert_eq!(deliveries[0].status, DeliveryStatus::Succeeded);

    let round = claim(store, &ep, 60_000, 10).await;
    assert_eq!(ids(&round), ["s2"]);
    let again = &round.claimed[0];
    assert!(again.retry, "a retry is marked as one");
    assert_eq!(again.delivery.attempts.len(), 1);
    settle(store, again, SettleOutcome::Succeeded, 60_000).await;
    store.release(again.claim);
    assert!(claim(store, &ep, 120_000, 10).await.claimed.is_empty());
}

/// `ordered`: only the head goes, one at a time, and a head waiting for its retry holds back the
/// deliveries behind it.
pub(crate) async fn check_ordered_hands_out_the_head_alone(store: &Store) {
    let ep = endpoint(store, "contract-ordered", true).await;
    ingest(store, "contract-ordered", &["o1", "o2", "o3"]).await;
    let round = claim(store, &ep, 2_000, 10).await;
    assert_eq!(ids(&round), ["o1"], "only the head");
    assert!(
        claim(store, &ep, 2_000, 10).await.claimed.is_empty(),
        "nothing while the head is under way"
    );
    let head = &round.claimed[0];
    settle(store, head, SettleOutcome::Retry { at_ms: 30_000 }, 2_000).await;
    store.release(head.claim);
    let round = claim(store, &ep, 3_000, 10).await;
    assert!(round.claimed.is_empty(), "the retry holds back o2 and o3");
    assert_eq!(round.next_due_ms, Some(30_000));
    let round = claim(store, &ep, 30_000, 10).await;
    assert_eq!(ids(&round), ["o1"]);
    settle(store, &round.claimed[0], SettleOutcome::Succeeded, 30_000).await;
    store.release(round.claimed[0].claim);
    let round = claim(store, &ep, 30_000, 10).await;
    assert_eq!(ids(&round), ["o2"]);
    store.release(round.claimed[0].claim);
}

/// What `admits` refuses and what `held_until` holds back are left waiting, and said so.
pub(crate) async fn check_admits_and_held_are_obeyed(store: &Store) {
    let ep = endpoint(store, "contract-admits", false).await;
    ingest(store, "contract-admits", &["a1", "a2"]).await;
    // Make a1 a retry, due again at 5,000.
    let round = claim(store, &ep, 2_000, 1).await;
    assert_eq!(ids(&round), ["a1"]);
    settle(
        store,
        &round.claimed[0],
        SettleOutcome::Retry { at_ms: 5_000 },
        2_000,
    )
    .await;
    store.release(round.claimed[0].claim);
    let a2_seq = {
        let round = claim(store, &ep, 2_000, 1).await;
        assert_eq!(ids(&round), ["a2"]);
        store.release(round.claimed[0].claim);
        round.claimed[0].delivery.seq
    };

    // First attempts only: the retry a1 is skipped, a2 taken.
    let first_only = |_: usize, retry: bool| !retry;
    let none_held = |_: u64| None;
    let round = store
        .claim(
            &ep,
            ClaimAsk {
                now_ms: 6_000,
                room: 10,
                admits: &first_only,
                held_until: &none_held,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&round), ["a2"]);
    store.release(round.claimed[0].claim);

    // a2 held back until 9,000: only the retry remains, and the first-attempt rule refuses it.
    let held = move |seq: u64| (seq == a2_seq).then_some(9_000);
    let round = store
        .claim(
            &ep,
            ClaimAsk {
                now_ms: 6_000,
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
    assert_eq!(round.next_due_ms, Some(9_000), "the hold's end is noted");
}

#[tokio::test]
async fn sled_keeps_the_claim_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::Sled(
        super::sled::SledStore::open(&tmp.path().join("store"), 8 * 1024 * 1024).unwrap(),
    );
    check_all(&store).await;
    store.close().await.unwrap();
}
