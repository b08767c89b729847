//! Intake against a real daemon: ingest and matching, idempotency, durability across restarts,
//! batches, every case of the spec's error table, and the endpoints API.
//!
//! Deliveries are kept deterministic with a "holding" daemon: endpoints point at a receiver that
//! answers 500 at once and the retry schedule is one hour, so each delivery makes exactly one
//! attempt and then waits, `pending`, for an hour.

use crate::support::*;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TYPES: [&str; 6] = [
    "bill.created",
    "bill.document_ready",
    "audit.started",
    "audit.completed",
    "letter.ready",
    "dispute.status_changed",
];

/// A daemon whose deliveries, after one failed attempt, wait an hour for the next.
async fn holding_daemon() -> TestDaemon {
    TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(3600)]).await
}

/// A receiver that answers every request with 500 at once.
async fn failing_receiver() -> TestReceiver {
    let r = TestReceiver::start().await;
    r.set_default(Answer::status(500));
    r
}

fn event(partner: &str, environment: &str, id: &str, event_type: &str, data: Value) -> Value {
    json!({"partner_id": partner, "environment": environment, "id": id, "type": event_type, "data": data})
}

/// Creates an endpoint from a full request body; asserts 201.
async fn create_ep(c: &Client, body: Value) -> Value {
    let (status, ep) = c.post("/v1/endpoints", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "creating {body}: {ep}");
    ep
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

fn endpoint_ids(event: &Value) -> BTreeSet<String> {
    event["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["endpoint_id"].as_str().unwrap().to_string())
        .collect()
}

fn set(ids: &[&Value]) -> BTreeSet<String> {
    ids.iter().map(|v| id_of(v)).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rfc3339_ms(text: &str) -> u64 {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

/// Waits until event `id` has `n` deliveries that each made exactly one attempt and are pending again.
async fn wait_pending(c: &Client, id: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, ev) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{ev}");
        let ds = ev["deliveries"].as_array().expect("deliveries");
        let settled = ds
            .iter()
            .all(|d| d["status"] == "pending" && d["attempts"].as_array().map_or(0, Vec::len) == 1);
        if ds.len() == n && settled {
            return ev;
        }
        assert!(ds.len() <= n, "more deliveries than expected: {ev}");
        assert!(
            Instant::now() < deadline,
            "the deliveries of {id} did not settle into pending: {ev}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts an error answer: status, `error.code` and a non-empty message; returns the message.
fn assert_error(
    got: (StatusCode, &Value),
    status: StatusCode,
    code: &str,
    context: &str,
) -> String {
    assert_eq!(got.0, status, "{context}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{context}: {}", got.1);
    let message = got.1["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no message in {}", got.1));
    assert!(!message.is_empty(), "{context}: empty message");
    message.to_string()
}

/// The daemon still answers normally and holds `events` events and `endpoints` endpoints.
async fn assert_unharmed(c: &Client, events: u64, endpoints: usize) {
    let (status, _, body) = c.raw(Method::GET, "/healthz", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    assert_eq!(
        c.total_events().await,
        events,
        "a refused request stored an event"
    );
    let (status, list) = c.get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list["endpoints"].as_array().unwrap().len(),
        endpoints,
        "a refused request changed the endpoints: {list}"
    );
}

async fn assert_absent(c: &Client, id: &str) {
    let (status, body) = c.get(&format!("/v1/events/{id}")).await;
    assert_error(
        (status, &body),
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("event {id} must not be stored"),
    );
}

// ---------------------------------------------------------------------------------------------
// Ingest and matching
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ingest_stores_event_with_one_pending_delivery_per_matching_endpoint() {
    let r = failing_receiver().await;
    let d = holding_daemon().await;
    let c = d.client();
    let ep = |partner: &str, env: &str, path: &str, types: Value| json!({"partner_id": partner, "environment": env, "url": r.url(path), "event_types": types});
    let m_one = create_ep(
        &c,
        ep(
            "acme-health",
            "production",
            "/m-one",
            json!(["audit.completed"]),
        ),
    )
    .await;
    let m_star = create_ep(&c, ep("acme-health", "production", "/m-star", json!(["*"]))).await;
    let m_two = create_ep(
        &c,
        ep(
            "acme-health",
            "production",
            "/m-two",
            json!(["bill.created", "audit.completed"]),
        ),
    )
    .await;
    let other_partner = create_ep(
        &c,
        ep(
            "other-partner",
            "production",
            "/other-partner",
            json!(["*"]),
        ),
    )
    .await;
    let prefix_partner = create_ep(
        &c,
        ep("acme", "production", "/prefix-partner", json!(["*"])),
    )
    .await;
    let sandbox = create_ep(&c, ep("acme-health", "sandbox", "/sandbox", json!(["*"]))).await;
    let other_type = create_ep(
        &c,
        ep(
            "acme-health",
            "production",
            "/other-type",
            json!(["bill.created", "letter.ready"]),
        ),
    )
    .await;
    let disabled = create_ep(
        &c,
        ep("acme-health", "production", "/disabled", json!(["*"])),
    )
    .await;
    let (status, body) = c
        .post(
            &format!("/v1/endpoints/{}/disable", id_of(&disabled)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let data = json!({
        "bill_id": "bill_8f4", "report_id": "report_33", "status": "complete",
        "nested": {"list": [1, 2.5, "x", null, true, {"k": []}], "empty": {}},
        "unicode": "żółw ✓ \"quoted\" \\ back", "big": 12_345_678_901_234_i64, "negative": -7
    });
    let started = now_ms();
    let mut posted = event(
        "acme-health",
        "production",
        "evt_7b2",
        "audit.completed",
        data.clone(),
    );
    posted["created_at"] = json!("2026-01-15T19:04:12Z");
    let (status, ack) = c.post("/v1/events", posted).await;
    let finished = now_ms();
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    assert_eq!(
        ack,
        json!({"id": "evt_7b2", "deliveries": 3, "duplicate": false})
    );

    let ev = wait_pending(&c, "evt_7b2", 3).await;
    assert_eq!(ev["id"], "evt_7b2");
    assert_eq!(ev["partner_id"], "acme-health");
    assert_eq!(ev["environment"], "production");
    assert_eq!(ev["type"], "audit.completed");
    assert_eq!(ev["created_at"], "2026-01-15T19:04:12Z");
    let received = rfc3339_ms(ev["received_at"].as_str().expect("received_at is a string"));
    assert!(
        received + 1000 >= started && received <= finished + 1000,
        "received_at {received} outside [{started}, {finished}]"
    );
    assert_eq!(ev["data"], data, "data must come back as posted");
    assert_eq!(endpoint_ids(&ev), set(&[&m_one, &m_star, &m_two]), "{ev}");
    let ds = ev["deliveries"].as_array().unwrap();
    let delivery_ids: BTreeSet<&str> = ds.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(delivery_ids.len(), 3, "delivery ids must be distinct: {ev}");
    for dl in ds {
        assert!(dl["id"].as_str().unwrap().starts_with("dlv_"), "{dl}");
        assert_eq!(dl["status"], "pending", "{dl}");
        assert_eq!(dl["attempts"][0]["n"], 1, "{dl}");
        assert_eq!(dl["attempts"][0]["status_code"], 500, "{dl}");
        let next = rfc3339_ms(
            dl["next_attempt_at"]
                .as_str()
                .expect("a pending delivery has next_attempt_at"),
        );
        assert!(
            next > now_ms() + 30 * 60 * 1000,
            "the next attempt is an hour away: {dl}"
        );
    }
    // Only the matching endpoints were contacted.
    let paths: BTreeSet<String> = r.received().iter().map(|x| x.path.clone()).collect();
    assert_eq!(
        paths,
        ["/m-one", "/m-star", "/m-two"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(r.count(), 3);

    // The non-matching endpoints do get events that match them: the filters, not a fault, kept them out.
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "acme-health",
                "sandbox",
                "evt_sbx",
                "audit.completed",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(1)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_sbx", 1).await),
        set(&[&sandbox])
    );
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "other-partner",
                "production",
                "evt_other",
                "letter.ready",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(1)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_other", 1).await),
        set(&[&other_partner])
    );
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "acme",
                "production",
                "evt_prefix",
                "letter.ready",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(1)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_prefix", 1).await),
        set(&[&prefix_partner])
    );
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "acme-health",
                "production",
                "evt_bill",
                "bill.created",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(3)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_bill", 3).await),
        set(&[&m_star, &m_two, &other_type])
    );
    // A type nobody specific subscribes to reaches only the `*` endpoint.
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "acme-health",
                "production",
                "evt_started",
                "audit.started",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(1)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_started", 1).await),
        set(&[&m_star])
    );

    // Enabled again, the once-disabled endpoint matches new events.
    let (status, body) = c
        .post(
            &format!("/v1/endpoints/{}/enable", id_of(&disabled)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, ack) = c
        .post(
            "/v1/events",
            event(
                "acme-health",
                "production",
                "evt_after_enable",
                "audit.started",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(2)),
        "{ack}"
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_after_enable", 2).await),
        set(&[&m_star, &disabled])
    );
    // ...and did not get the event posted while it was disabled.
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_7b2", 3).await),
        set(&[&m_one, &m_star, &m_two])
    );
    assert_eq!(c.total_events().await, 7);
}

#[tokio::test]
async fn ingest_fills_in_id_environment_and_created_at() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let before = now_ms();
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let (status, ack) = c.post("/v1/events", json!({"partner_id": "acme-health", "type": "letter.ready", "data": {"letter_id": "l1"}})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
        assert_eq!(ack["duplicate"], false);
        let id = id_of(&ack);
        assert!(id.starts_with("evt_") && id.len() <= 128, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{id}"
        );
        ids.insert(id);
    }
    let after = now_ms();
    assert_eq!(ids.len(), 2, "generated ids must differ");
    for id in &ids {
        let (status, ev) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{ev}");
        assert_eq!(ev["environment"], "production");
        assert_eq!(ev["data"], json!({"letter_id": "l1"}));
        let created = rfc3339_ms(ev["created_at"].as_str().expect("created_at is filled in"));
        assert!(
            created + 1000 >= before && created <= after + 1000,
            "created_at {created} not the time of reception"
        );
        assert_eq!(ev["deliveries"], json!([]));
    }
    assert_eq!(c.total_events().await, 2);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sequential_repeats_of_an_id_are_duplicates_even_after_restart() {
    let r = failing_receiver().await;
    let mut d = holding_daemon().await;
    let c = d.client();
    let a = c
        .create_endpoint(
            "acme-health",
            "production",
            &r.url("/a"),
            &["audit.completed"],
        )
        .await;
    let b = c
        .create_endpoint("acme-health", "production", &r.url("/b"), &["*"])
        .await;
    c.create_endpoint("acme-health", "production", &r.url("/c"), &["bill.created"])
        .await;
    let data = json!({"a": 1, "b": {"c": [1, 2]}});
    for i in 0..5 {
        let (status, ack) = c
            .post_event(
                "acme-health",
                "production",
                "evt_seq",
                "audit.completed",
                data.clone(),
            )
            .await;
        if i == 0 {
            assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
            assert_eq!(
                ack,
                json!({"id": "evt_seq", "deliveries": 2, "duplicate": false})
            );
        } else {
            assert_eq!(status, StatusCode::OK, "post {i}: {ack}");
            assert_eq!(
                ack,
                json!({"id": "evt_seq", "deliveries": 2, "duplicate": true}),
                "post {i}"
            );
        }
    }
    // Same content written differently (key order, spacing) with another created_at: still the same event.
    let body = br#"{ "data": {"b": {"c": [1,2]}, "a": 1}, "type": "audit.completed", "id": "evt_seq",
                    "environment": "production", "partner_id": "acme-health", "created_at": "2020-01-01T00:00:00Z" }"#;
    let (status, ack) = c
        .json(Method::POST, "/v1/events", Some(body.to_vec()))
        .await;
    assert_eq!(
        (status, ack.clone()),
        (
            StatusCode::OK,
            json!({"id": "evt_seq", "deliveries": 2, "duplicate": true})
        ),
        "{ack}"
    );

    let ev = wait_pending(&c, "evt_seq", 2).await;
    assert_eq!(endpoint_ids(&ev), set(&[&a, &b]));
    assert_eq!(
        r.count(),
        2,
        "one attempt per delivery, none for the repeats"
    );
    assert_eq!(c.total_events().await, 1);

    // A new matching endpoint does not make a repeat store anything.
    c.create_endpoint("acme-health", "production", &r.url("/late"), &["*"])
        .await;
    let (status, ack) = c
        .post_event(
            "acme-health",
            "production",
            "evt_seq",
            "audit.completed",
            data.clone(),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone(), ack["duplicate"].clone()),
        (StatusCode::OK, json!(2), json!(true)),
        "{ack}"
    );

    d.restart().await;
    let c = d.client();
    for _ in 0..2 {
        let (status, ack) = c
            .post_event(
                "acme-health",
                "production",
                "evt_seq",
                "audit.completed",
                data.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "after restart: {ack}");
        assert_eq!(
            ack,
            json!({"id": "evt_seq", "deliveries": 2, "duplicate": true})
        );
    }
    let (status, ev) = c.get("/v1/events/evt_seq").await;
    assert_eq!(status, StatusCode::OK, "{ev}");
    assert_eq!(endpoint_ids(&ev), set(&[&a, &b]));
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(c.total_events().await, 1);
}

#[tokio::test]
async fn conflicting_content_for_a_stored_id_is_409_even_after_restart() {
    let mut d = holding_daemon().await;
    let c = d.client();
    let original = event(
        "acme-health",
        "production",
        "evt_conf",
        "audit.completed",
        json!({"status": "complete"}),
    );
    let (status, ack) = c.post("/v1/events", original.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    let variants = [
        (
            "data",
            event(
                "acme-health",
                "production",
                "evt_conf",
                "audit.completed",
                json!({"status": "failed"}),
            ),
        ),
        (
            "extra data",
            event(
                "acme-health",
                "production",
                "evt_conf",
                "audit.completed",
                json!({"status": "complete", "x": 1}),
            ),
        ),
        (
            "partner_id",
            event(
                "other-partner",
                "production",
                "evt_conf",
                "audit.completed",
                json!({"status": "complete"}),
            ),
        ),
        (
            "environment",
            event(
                "acme-health",
                "sandbox",
                "evt_conf",
                "audit.completed",
                json!({"status": "complete"}),
            ),
        ),
        (
            "type",
            event(
                "acme-health",
                "production",
                "evt_conf",
                "audit.started",
                json!({"status": "complete"}),
            ),
        ),
    ];
    for round in ["before restart", "after restart"] {
        let c = d.client();
        for (what, variant) in &variants {
            let (status, body) = c.post("/v1/events", variant.clone()).await;
            let message = assert_error(
                (status, &body),
                StatusCode::CONFLICT,
                "event_id_conflict",
                &format!("{what} differs, {round}"),
            );
            assert!(message.contains("evt_conf"), "{message}");
        }
        let (status, ev) = c.get("/v1/events/evt_conf").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                ev["partner_id"].clone(),
                ev["environment"].clone(),
                ev["type"].clone(),
                ev["data"].clone()
            ),
            (
                json!("acme-health"),
                json!("production"),
                json!("audit.completed"),
                json!({"status": "complete"})
            ),
            "{round}: the stored event must be unchanged"
        );
        let (status, ack) = c.post("/v1/events", original.clone()).await;
        assert_eq!(
            (status, ack["duplicate"].clone()),
            (StatusCode::OK, json!(true)),
            "{round}: {ack}"
        );
        assert_eq!(c.total_events().await, 1);
        if round == "before restart" {
            d.restart().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_of_a_new_id_store_one_event_and_one_delivery_set() {
    let r = failing_receiver().await;
    let mut d = holding_daemon().await;
    let c = d.client();
    let a = c
        .create_endpoint(
            "acme-health",
            "production",
            &r.url("/a"),
            &["audit.completed"],
        )
        .await;
    let b = c
        .create_endpoint("acme-health", "production", &r.url("/b"), &["*"])
        .await;

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, barrier) = (c.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                c.post_event(
                    "acme-health",
                    "production",
                    "evt_race",
                    "audit.completed",
                    json!({"n": 1}),
                )
                .await
            })
        })
        .collect();
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        let (status, ack) = t.await.unwrap();
        assert_eq!(ack["id"], "evt_race");
        assert_eq!(ack["deliveries"], 2, "{ack}");
        match status {
            StatusCode::ACCEPTED => {
                assert_eq!(ack["duplicate"], false);
                accepted += 1;
            }
            StatusCode::OK => {
                assert_eq!(ack["duplicate"], true);
                duplicates += 1;
            }
            other => panic!("unexpected {other}: {ack}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 19));
    let ev = wait_pending(&c, "evt_race", 2).await;
    assert_eq!(endpoint_ids(&ev), set(&[&a, &b]));
    assert_eq!(
        r.count(),
        2,
        "exactly one attempt per delivery of the one stored event"
    );
    assert_eq!(c.total_events().await, 1);

    // Racing posts with two different contents: one wins, the rest are duplicates of it or conflicts.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                (
                    i % 2,
                    c.post_event(
                        "acme-health",
                        "production",
                        "evt_race2",
                        "audit.completed",
                        json!({"v": i % 2}),
                    )
                    .await,
                )
            })
        })
        .collect();
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, (s, _))| *s == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].0;
    for (variant, (status, body)) in &results {
        match *status {
            StatusCode::ACCEPTED => {}
            StatusCode::OK => assert_eq!(
                *variant, winner,
                "a duplicate answer for the losing content: {body}"
            ),
            StatusCode::CONFLICT => {
                assert_ne!(
                    *variant, winner,
                    "a conflict for the winning content: {body}"
                );
                assert_eq!(body["error"]["code"], "event_id_conflict");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (_, ev2) = c.get("/v1/events/evt_race2").await;
    assert_eq!(ev2["data"], json!({"v": winner}));
    assert_eq!(ev2["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(c.total_events().await, 2);

    d.restart().await;
    let c = d.client();
    let (status, ack) = c
        .post_event(
            "acme-health",
            "production",
            "evt_race",
            "audit.completed",
            json!({"n": 1}),
        )
        .await;
    assert_eq!(
        (status, ack),
        (
            StatusCode::OK,
            json!({"id": "evt_race", "deliveries": 2, "duplicate": true})
        )
    );
    let (_, ev) = c.get("/v1/events/evt_race").await;
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 2, "{ev}");
    assert_eq!(endpoint_ids(&ev), set(&[&a, &b]));
    assert_eq!(c.total_events().await, 2);
}

// ---------------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_a_restart() {
    let r = failing_receiver().await;
    let mut d = holding_daemon().await;
    let c = d.client();
    let star = c
        .create_endpoint("acme-health", "production", &r.url("/star"), &["*"])
        .await;
    let audit = c
        .create_endpoint(
            "acme-health",
            "production",
            &r.url("/audit"),
            &["audit.completed"],
        )
        .await;
    let expected_endpoints = |event_type: &str| {
        if event_type == "audit.completed" {
            set(&[&star, &audit])
        } else {
            set(&[&star])
        }
    };
    let make = |i: usize| {
        let t = TYPES[i % TYPES.len()];
        (
            format!("evt_dur_{i:04}"),
            t,
            event(
                "acme-health",
                "production",
                &format!("evt_dur_{i:04}"),
                t,
                json!({"n": i, "pad": "p".repeat(i)}),
            ),
        )
    };
    // id -> (type, deliveries acknowledged)
    let mut acked: Vec<(String, &str, u64, usize)> = vec![];
    // 120 single posts, 12 at a time.
    for wave in 0..10 {
        let tasks: Vec<_> = (wave * 12..wave * 12 + 12)
            .map(|i| {
                let c = c.clone();
                let (id, t, body) = make(i);
                tokio::spawn(async move { (i, id, t, c.post("/v1/events", body).await) })
            })
            .collect();
        for task in tasks {
            let (i, id, t, (status, ack)) = task.await.unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
            assert_eq!(ack["id"], id.as_str());
            acked.push((id, t, ack["deliveries"].as_u64().unwrap(), i));
        }
    }
    // 80 in two batches.
    for batch in 0..2 {
        let range = 120 + batch * 40..160 + batch * 40;
        let events: Vec<Value> = range.clone().map(|i| make(i).2).collect();
        let (status, body) = c.post("/v1/events/batch", json!({"events": events})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 40);
        for (k, i) in range.enumerate() {
            let (id, t, _) = make(i);
            assert_eq!(results[k]["outcome"], "accepted", "{}", results[k]);
            assert_eq!(results[k]["id"], id.as_str());
            acked.push((id, t, results[k]["deliveries"].as_u64().unwrap(), i));
        }
    }
    assert_eq!(acked.len(), 200);
    for (_, t, n, _) in &acked {
        assert_eq!(
            *n as usize,
            expected_endpoints(t).len(),
            "deliveries acknowledged for a {t}"
        );
    }

    d.stop().await;
    d.restart().await;
    let c = d.client();
    assert_eq!(c.total_events().await, 200);
    for (id, t, n, i) in &acked {
        let (status, ev) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "acknowledged event {id} lost: {ev}");
        assert_eq!(ev["type"], *t);
        assert_eq!(ev["data"], json!({"n": i, "pad": "p".repeat(*i)}));
        assert_eq!(
            ev["deliveries"].as_array().unwrap().len() as u64,
            *n,
            "{ev}"
        );
        assert_eq!(endpoint_ids(&ev), expected_endpoints(t), "{ev}");
    }
    // Still taking new events after the restart.
    let (status, ack) = c
        .post_event(
            "acme-health",
            "production",
            "evt_after",
            "audit.completed",
            json!({}),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(2)),
        "{ack}"
    );
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn batch_reports_an_outcome_per_entry() {
    let r = failing_receiver().await;
    let d = holding_daemon().await;
    let c = d.client();
    let ep = c
        .create_endpoint("acme-health", "production", &r.url("/a"), &["*"])
        .await;
    let (status, _) = c
        .post_event(
            "acme-health",
            "production",
            "evt_dup",
            "bill.created",
            json!({"x": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = c
        .post_event(
            "acme-health",
            "production",
            "evt_conf",
            "bill.created",
            json!({"x": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let entries = json!([
        event("acme-health", "production", "evt_b_new", "audit.completed", json!({"k": "v"})),
        event("acme-health", "production", "evt_b_badtype", "audit.finished", json!({})),
        event("acme-health", "production", "evt_dup", "bill.created", json!({"x": 1})),
        event("acme-health", "production", "evt_conf", "bill.created", json!({"x": 2})),
        {"partner_id": "acme-health", "id": "evt_b_nodata", "type": "bill.created"},
        "not an event",
        event("acme-health", "production", "evt_b_new", "audit.completed", json!({"k": "v"})),
        {"partner_id": "acme-health", "type": "letter.ready", "data": {}},
        event("acme-health", "production", "evt_b_new", "audit.completed", json!({"k": "other"})),
        event("bad partner", "production", "evt_b_badpartner", "bill.created", json!({})),
        event("other-partner", "production", "evt_b_other", "bill.created", json!({})),
    ]);
    let (status, body) = c.post("/v1/events/batch", json!({"events": entries})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 11, "{body}");
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["index"], i, "{res}");
    }
    let outcome = |i: usize| {
        (
            results[i]["outcome"].as_str().unwrap().to_string(),
            results[i]["deliveries"].as_u64(),
        )
    };
    let no_error = |i: usize| {
        assert!(
            !matches!(results[i].get("error"), Some(e) if !e.is_null()),
            "{}",
            results[i]
        )
    };
    let error_code = |i: usize| {
        results[i]["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    assert_eq!(outcome(0), ("accepted".into(), Some(1)));
    assert_eq!(results[0]["id"], "evt_b_new");
    no_error(0);
    assert_eq!(outcome(1).0, "rejected");
    assert_eq!(error_code(1), "unknown_event_type");
    assert_eq!(outcome(2), ("duplicate".into(), Some(1)));
    assert_eq!(results[2]["id"], "evt_dup");
    no_error(2);
    assert_eq!(outcome(3).0, "rejected");
    assert_eq!(error_code(3), "event_id_conflict");
    assert_eq!(outcome(4).0, "rejected");
    assert_eq!(error_code(4), "invalid_request");
    assert_eq!(outcome(5).0, "rejected");
    assert_eq!(error_code(5), "invalid_request");
    assert_eq!(
        outcome(6),
        ("duplicate".into(), Some(1)),
        "a repeat inside the batch is a duplicate"
    );
    assert_eq!(outcome(7), ("accepted".into(), Some(1)));
    let generated = results[7]["id"].as_str().expect("generated id").to_string();
    assert!(generated.starts_with("evt_"), "{generated}");
    assert_eq!(
        outcome(8).0,
        "rejected",
        "a conflicting repeat inside the batch"
    );
    assert_eq!(error_code(8), "event_id_conflict");
    assert_eq!(outcome(9).0, "rejected");
    assert_eq!(error_code(9), "invalid_request");
    assert_eq!(outcome(10), ("accepted".into(), Some(0)));

    let (_, ev) = c.get("/v1/events/evt_b_new").await;
    assert_eq!(
        ev["data"],
        json!({"k": "v"}),
        "the first content of evt_b_new is the stored one"
    );
    assert_eq!(endpoint_ids(&ev), set(&[&ep]));
    let (status, ev) = c.get(&format!("/v1/events/{generated}")).await;
    assert_eq!(
        (status, ev["type"].clone()),
        (StatusCode::OK, json!("letter.ready"))
    );
    let (_, ev) = c.get("/v1/events/evt_conf").await;
    assert_eq!(ev["data"], json!({"x": 1}));
    assert_absent(&c, "evt_b_badtype").await;
    assert_absent(&c, "evt_b_nodata").await;
    assert_absent(&c, "evt_b_badpartner").await;
    assert_eq!(c.total_events().await, 2 + 3);
}

#[tokio::test]
async fn batch_of_1000_is_accepted_and_1001_is_refused() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let batch = |prefix: &str, n: usize| {
        let events: Vec<Value> = (0..n).map(|i| json!({"partner_id": "p", "id": format!("{prefix}{i}"), "type": "bill.created", "data": {}})).collect();
        json!({"events": events})
    };
    let (status, body) = c.post("/v1/events/batch", batch("over", 1001)).await;
    assert_error(
        (status, &body),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "1001 events",
    );
    assert_unharmed(&c, 0, 0).await;
    assert_absent(&c, "over0").await;

    let (status, body) = c.post("/v1/events/batch", batch("full", 1000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["outcome"] == "accepted"), "{body}");
    assert_eq!(c.total_events().await, 1000);

    for (body, code, what) in [
        (
            json!({"events": "x"}),
            "invalid_request",
            "events not an array",
        ),
        (json!({}), "invalid_request", "no events"),
        (json!([]), "invalid_request", "not an object"),
    ] {
        let (status, resp) = c.post("/v1/events/batch", body).await;
        assert_error((status, &resp), StatusCode::BAD_REQUEST, code, what);
    }
    let (status, resp) = c
        .json(
            Method::POST,
            "/v1/events/batch",
            Some(b"{\"events\": [".to_vec()),
        )
        .await;
    assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "truncated batch",
    );
    assert_unharmed(&c, 1000, 0).await;
}

// ---------------------------------------------------------------------------------------------
// The error table
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let bodies: [&[u8]; 6] = [
        b"{\"partner_id\": \"acme-health\", \"id\": \"evt_mal\", \"type\": \"bill.created\", \"data\": {}",
        b"not json at all",
        b"",
        b"{\"partner_id\": 'acme'}",
        b"{\"a\": 1} trailing",
        b"\xff\xfe{}",
    ];
    for body in bodies {
        let (status, resp) = c
            .json(Method::POST, "/v1/events", Some(body.to_vec()))
            .await;
        assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("{:?}", String::from_utf8_lossy(body)),
        );
        assert_unharmed(&c, 0, 0).await;
    }
    assert_absent(&c, "evt_mal").await;
    let (status, resp) = c
        .json(
            Method::POST,
            "/v1/endpoints",
            Some(b"{\"partner_id\": \"acme\",".to_vec()),
        )
        .await;
    assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "endpoint body",
    );
    // A JSON value that is not an object is well-formed JSON of the wrong form.
    let (status, resp) = c
        .json(Method::POST, "/v1/events", Some(b"[1, 2]".to_vec()))
        .await;
    assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "an array body",
    );
    assert_unharmed(&c, 0, 0).await;
    // Nesting far deeper than any event needs is refused without harm.
    let mut deep = br#"{"partner_id": "acme-health", "id": "evt_deep", "type": "bill.created", "data": {"x": "#.to_vec();
    deep.extend_from_slice(&[b'['; 100_000]);
    deep.extend_from_slice(&[b']'; 100_000]);
    deep.extend_from_slice(b"}}");
    let (status, resp) = c.json(Method::POST, "/v1/events", Some(deep)).await;
    assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "100000 levels of nesting",
    );
    assert_unharmed(&c, 0, 0).await;
    assert_absent(&c, "evt_deep").await;
}

#[tokio::test]
async fn wrong_field_types_are_400_invalid_request() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let valid = || {
        event(
            "acme-health",
            "production",
            "evt_wt",
            "bill.created",
            json!({"x": 1}),
        )
    };
    let cases: Vec<(&str, Value)> = vec![
        ("partner_id", json!(5)),
        ("partner_id", json!(null)),
        ("partner_id", json!(["acme-health"])),
        ("type", json!(["bill.created"])),
        ("type", json!(5)),
        ("type", json!(null)),
        ("id", json!(12)),
        ("id", json!({"id": "evt"})),
        ("environment", json!(true)),
        ("environment", json!("staging")),
        ("environment", json!("Production")),
        ("created_at", json!(1_700_000_000)),
        ("created_at", json!("yesterday")),
        ("created_at", json!("2026-01-15 19:04")),
    ];
    for (field, value) in cases {
        let mut body = valid();
        body[field] = value.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        }
        let (status, resp) = c.post("/v1/events", body).await;
        let message = assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{field} = {value}"),
        );
        assert!(
            message.contains(field),
            "the message names `{field}`: {message}"
        );
        assert_unharmed(&c, 0, 0).await;
    }
    assert_absent(&c, "evt_wt").await;
    // Endpoint fields too.
    let ep = json!({"partner_id": "acme-health", "environment": "sandbox", "url": "http://127.0.0.1:9/x", "event_types": ["*"]});
    for (field, value) in [
        ("url", json!(5)),
        ("event_types", json!("audit.completed")),
        ("event_types", json!([])),
        ("event_types", json!([5])),
        ("ordered", json!("yes")),
        ("max_in_flight", json!(0)),
        ("max_in_flight", json!("16")),
        ("rate_limit_per_second", json!(-1)),
        ("description", json!(7)),
        ("partner_id", json!("bad partner")),
        ("environment", json!("staging")),
    ] {
        let mut body = ep.clone();
        body[field] = value.clone();
        let (status, resp) = c.post("/v1/endpoints", body).await;
        assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("endpoint {field} = {value}"),
        );
    }
    assert_unharmed(&c, 0, 0).await;
    let (status, ev) = c.post("/v1/events", valid()).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the valid form is accepted: {ev}"
    );
}

#[tokio::test]
async fn missing_or_non_object_data_is_400() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let mut missing = event(
        "acme-health",
        "production",
        "evt_data",
        "bill.created",
        json!({}),
    );
    missing.as_object_mut().unwrap().remove("data");
    let (status, resp) = c.post("/v1/events", missing).await;
    let message = assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "missing data",
    );
    assert!(message.contains("data"), "{message}");
    for data in [
        json!("x"),
        json!(5),
        json!([1, 2]),
        json!(null),
        json!(true),
    ] {
        let (status, resp) = c
            .post(
                "/v1/events",
                event(
                    "acme-health",
                    "production",
                    "evt_data",
                    "bill.created",
                    data.clone(),
                ),
            )
            .await;
        let message = assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("data = {data}"),
        );
        assert!(message.contains("data"), "{message}");
        assert_unharmed(&c, 0, 0).await;
    }
    assert_absent(&c, "evt_data").await;
    let (status, _) = c
        .post(
            "/v1/events",
            event(
                "acme-health",
                "production",
                "evt_data",
                "bill.created",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "an empty object is valid data"
    );
}

#[tokio::test]
async fn partner_id_and_event_id_form_and_length() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let post = |partner: String, id: String| {
        let c = c.clone();
        async move {
            c.post(
                "/v1/events",
                event(&partner, "production", &id, "bill.created", json!({})),
            )
            .await
        }
    };
    // Accepted edges.
    let p64 = "p".repeat(64);
    let i128 = "e".repeat(128);
    for (partner, id) in [
        (p64.clone(), "evt_p64".to_string()),
        ("acme".into(), i128.clone()),
        ("A.z_0-9".into(), "E.v_t-9".into()),
    ] {
        let (status, ack) = post(partner.clone(), id.clone()).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "partner {partner} id {id}: {ack}"
        );
        let (status, ev) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(
            (status, ev["partner_id"].clone()),
            (StatusCode::OK, json!(partner))
        );
    }
    // Refused partner ids.
    for bad in [
        "p".repeat(65),
        String::new(),
        "acme health".into(),
        "acme/health".into(),
        "acme@health".into(),
        "żółw".into(),
        "acme\n".into(),
    ] {
        let (status, resp) = post(bad.clone(), "evt_badpartner".into()).await;
        let message = assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("partner_id {bad:?}"),
        );
        assert!(message.contains("partner_id"), "{message}");
        assert_unharmed(&c, 3, 0).await;
    }
    assert_absent(&c, "evt_badpartner").await;
    // Refused event ids.
    for bad in [
        "e".repeat(129),
        String::new(),
        "evt 1".into(),
        "evt/1".into(),
        "evt#1".into(),
        "évt".into(),
        "evt:1".into(),
    ] {
        let (status, resp) = post("acme".into(), bad.clone()).await;
        let message = assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("id {bad:?}"),
        );
        assert!(message.contains("id"), "{message}");
        assert_unharmed(&c, 3, 0).await;
    }
    assert_absent(&c, &"e".repeat(129)).await;
}

#[tokio::test]
async fn unknown_event_type_is_422_listing_the_catalog() {
    let d = TestDaemon::start().await;
    let c = d.client();
    for t in ["audit.finished", "Audit.Completed", "bill", "", "*"] {
        let (status, resp) = c
            .post(
                "/v1/events",
                event("acme-health", "production", "evt_type", t, json!({})),
            )
            .await;
        let message = assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
            &format!("type {t:?}"),
        );
        for known in TYPES {
            assert!(
                message.contains(known),
                "the message lists `{known}`: {message}"
            );
        }
        assert_unharmed(&c, 0, 0).await;
    }
    assert_absent(&c, "evt_type").await;
    // An endpoint subscribing to an unknown type is refused the same way.
    let (status, resp) =
        c.post("/v1/endpoints", json!({"partner_id": "acme", "url": "http://127.0.0.1:9/", "event_types": ["audit.finished"]})).await;
    let message = assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_event_type",
        "endpoint event_types",
    );
    assert!(TYPES.iter().all(|t| message.contains(t)), "{message}");
    assert_unharmed(&c, 0, 0).await;
}

const MAX_BODY: usize = 4096;

/// A valid event body of exactly `len` bytes.
fn event_of_len(id: &str, len: usize) -> Vec<u8> {
    let with = |pad: usize| {
        event(
            "acme-health",
            "production",
            id,
            "bill.created",
            json!({"pad": "x".repeat(pad)}),
        )
        .to_string()
        .into_bytes()
    };
    let base = with(0).len();
    let body = with(len - base);
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn oversized_body_with_content_length_is_413() {
    let d = TestDaemon::start_with(|c| c.server.max_body_bytes = MAX_BODY).await;
    let c = d.client();
    // Exactly the limit is accepted.
    let (status, ack) = c
        .json(
            Method::POST,
            "/v1/events",
            Some(event_of_len("evt_at_limit", MAX_BODY)),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    for (id, len) in [
        ("evt_over_1", MAX_BODY + 1),
        ("evt_over_many", 5 * MAX_BODY),
    ] {
        let body = event_of_len(id, len);
        let req = Request::builder()
            .method(Method::POST)
            .uri(d.url("/v1/events"))
            .header("host", d.addr.to_string())
            .header("authorization", format!("Bearer {}", d.token))
            .header("content-type", "application/json")
            .header("content-length", len.to_string())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (status, _, bytes) = send(d.addr, req).await;
        let resp: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = assert_error(
            (status, &resp),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("{len} bytes"),
        );
        assert!(
            message.contains("4096"),
            "the message gives the limit: {message}"
        );
        assert_unharmed(&c, 1, 0).await;
        assert_absent(&c, id).await;
    }
    // The endpoint and batch paths have the same limit.
    let (status, resp) = c.post("/v1/endpoints", json!({"partner_id": "acme", "url": "http://127.0.0.1:9/", "event_types": ["*"], "description": "d".repeat(MAX_BODY)})).await;
    assert_error(
        (status, &resp),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "endpoint body",
    );
    let (status, resp) = c.post("/v1/events/batch", json!({"events": [serde_json::from_slice::<Value>(&event_of_len("evt_in_batch", MAX_BODY)).unwrap()]})).await;
    assert_error(
        (status, &resp),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "batch body",
    );
    assert_unharmed(&c, 1, 0).await;
    assert_absent(&c, "evt_in_batch").await;
}

/// Writes `head` and `body` on a raw connection and reads the answer without sending anything more;
/// panics if none comes within 10 s (the daemon would be waiting for the rest of the body).
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        // Until the headers and the announced body are in (or the daemon closes).
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                });
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer: the daemon waited for a body it should have refused");
    let text = String::from_utf8_lossy(&answer).to_string();
    let code: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        StatusCode::from_u16(code).unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn oversized_body_is_refused_without_waiting_for_all_of_it() {
    let d = TestDaemon::start_with(|c| c.server.max_body_bytes = MAX_BODY).await;
    let c = d.client();
    let auth = format!("authorization: Bearer {}\r\n", d.token);
    // Announces 1 GiB and sends none of it: refused on the content-length alone.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {}\r\n{auth}content-type: application/json\r\ncontent-length: 1073741824\r\n\r\n",
        d.addr
    );
    let (status, resp) = raw_exchange(d.addr, &head, b"").await;
    assert_error(
        (status, &resp),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "1 GiB announced",
    );
    // Chunked: one chunk past the limit and no final chunk; refused once the limit is passed.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {}\r\n{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        d.addr
    );
    let mut chunk = format!("{:x}\r\n", MAX_BODY + 1).into_bytes();
    chunk.extend_from_slice(&vec![b' '; MAX_BODY + 1]);
    chunk.extend_from_slice(b"\r\n");
    let (status, resp) = raw_exchange(d.addr, &head, &chunk).await;
    assert_error(
        (status, &resp),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "unterminated chunked body",
    );
    assert_unharmed(&c, 0, 0).await;
}

#[tokio::test]
async fn oversized_chunked_body_without_content_length_is_413() {
    let d = TestDaemon::start_with(|c| c.server.max_body_bytes = MAX_BODY).await;
    let c = d.client();
    let chunks = |body: Vec<u8>, size: usize| {
        body.chunks(size)
            .map(Bytes::copy_from_slice)
            .collect::<Vec<_>>()
    };
    // A chunked body within the limit is read and accepted: chunked transfer works.
    let (status, _, bytes) = send_chunked(
        d.addr,
        Method::POST,
        "/v1/events",
        Some(&d.token),
        chunks(event_of_len("evt_chunked_ok", MAX_BODY), 1000),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    for (id, len, size) in [
        ("evt_chunked_over", MAX_BODY + 1, 1000),
        ("evt_chunked_big", 3 * MAX_BODY, 512),
    ] {
        let (status, _, bytes) = send_chunked(
            d.addr,
            Method::POST,
            "/v1/events",
            Some(&d.token),
            chunks(event_of_len(id, len), size),
        )
        .await;
        let resp: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_error(
            (status, &resp),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("chunked {len} bytes"),
        );
        assert_unharmed(&c, 1, 0).await;
        assert_absent(&c, id).await;
    }
    let body = json!({"events": [serde_json::from_slice::<Value>(&event_of_len("evt_chunked_batch", MAX_BODY)).unwrap()]}).to_string().into_bytes();
    let (status, _, bytes) = send_chunked(
        d.addr,
        Method::POST,
        "/v1/events/batch",
        Some(&d.token),
        chunks(body, 700),
    )
    .await;
    let resp: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_error(
        (status, &resp),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "chunked batch",
    );
    assert_unharmed(&c, 1, 0).await;
    assert_absent(&c, "evt_chunked_batch").await;
}

#[tokio::test]
async fn bad_endpoint_urls_are_422_naming_the_setting() {
    // Private networks allowed (so no lookups happen), https required for production.
    let d = TestDaemon::start_with(|c| c.delivery.require_https = true).await;
    let c = d.client();
    let body = |env: &str, url: &str| json!({"partner_id": "acme-health", "environment": env, "url": url, "event_types": ["*"]});
    for (env, url) in [
        ("sandbox", "ftp://hooks.acme.example/preflix"),
        ("sandbox", "file:///etc/passwd"),
        ("sandbox", "http://user:secret@hooks.acme.example/preflix"),
        ("production", "https://user@hooks.acme.example/preflix"),
        ("sandbox", "/relative/path"),
        ("sandbox", "hooks.acme.example/preflix"),
        ("sandbox", "http://"),
        ("sandbox", "not a url"),
    ] {
        let (status, resp) = c.post("/v1/endpoints", body(env, url)).await;
        assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_endpoint_url",
            url,
        );
        assert_unharmed(&c, 0, 0).await;
    }
    let (status, resp) = c
        .post(
            "/v1/endpoints",
            body("production", "http://hooks.acme.example/preflix"),
        )
        .await;
    let message = assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_endpoint_url",
        "http for production",
    );
    assert!(message.contains("delivery.require_https"), "{message}");
    assert_unharmed(&c, 0, 0).await;
    // The same URL is fine for sandbox, and https is fine for production.
    let sandbox = create_ep(&c, body("sandbox", "http://hooks.acme.example/preflix")).await;
    let production = create_ep(&c, body("production", "https://hooks.acme.example/preflix")).await;
    // PATCH validates the same way and leaves the endpoint unchanged.
    let path = format!("/v1/endpoints/{}", id_of(&production));
    let (status, resp) = c
        .patch(&path, json!({"url": "http://hooks.acme.example/other"}))
        .await;
    let message = assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_endpoint_url",
        "patch to http",
    );
    assert!(message.contains("delivery.require_https"), "{message}");
    let (status, resp) = c
        .patch(
            &format!("/v1/endpoints/{}", id_of(&sandbox)),
            json!({"url": "ftp://x.example/"}),
        )
        .await;
    assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_endpoint_url",
        "patch to ftp",
    );
    let (_, now) = c.get(&path).await;
    assert_eq!(now["url"], "https://hooks.acme.example/preflix");
    let (_, now) = c.get(&format!("/v1/endpoints/{}", id_of(&sandbox))).await;
    assert_eq!(now["url"], "http://hooks.acme.example/preflix");
    assert_unharmed(&c, 0, 2).await;
}

#[tokio::test]
async fn private_network_endpoint_urls_are_422_when_not_allowed() {
    let d = TestDaemon::start_with(|c| c.delivery.allow_private_networks = false).await;
    let c = d.client();
    let r = TestReceiver::start().await;
    let body = |url: &str| json!({"partner_id": "acme-health", "environment": "sandbox", "url": url, "event_types": ["*"]});
    let localhost = format!("http://localhost:{}/hook", r.addr.port());
    let loopback = r.url("/hook");
    for url in [
        localhost.as_str(),
        loopback.as_str(),
        "http://127.0.0.2/",
        "http://[::1]:8080/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "https://[::]/",
    ] {
        let (status, resp) = c.post("/v1/endpoints", body(url)).await;
        let message = assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_endpoint_url",
            url,
        );
        assert!(
            message.contains("delivery.allow_private_networks"),
            "{url}: {message}"
        );
        assert_unharmed(&c, 0, 0).await;
    }
    // A public address literal needs no lookup and is accepted.
    let public = create_ep(&c, body("http://8.8.8.8/hook")).await;
    let (status, resp) = c
        .patch(
            &format!("/v1/endpoints/{}", id_of(&public)),
            json!({"url": localhost}),
        )
        .await;
    let message = assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_endpoint_url",
        "patch to localhost",
    );
    assert!(
        message.contains("delivery.allow_private_networks"),
        "{message}"
    );
    let (_, now) = c.get(&format!("/v1/endpoints/{}", id_of(&public))).await;
    assert_eq!(now["url"], "http://8.8.8.8/hook");
    assert_unharmed(&c, 0, 1).await;
}

#[tokio::test]
async fn reserved_or_bad_custom_headers_are_422_invalid_header() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let body = |headers: Value| json!({"partner_id": "acme-health", "environment": "sandbox", "url": "http://127.0.0.1:9/", "event_types": ["*"], "headers": headers});
    let reserved = [
        "webhook-id",
        "Webhook-Signature",
        "webhook-timestamp",
        "content-type",
        "Content-Length",
        "host",
        "user-agent",
        "transfer-encoding",
        "connection",
        "preflixai-signature",
        "PreflixAI-Event-Id",
        "preflixai-custom",
    ];
    for name in reserved {
        let (status, resp) = c.post("/v1/endpoints", body(json!({name: "x"}))).await;
        assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_header",
            name,
        );
        assert_unharmed(&c, 0, 0).await;
    }
    for value in [
        "a\nb",
        "a\rb",
        "a\u{1}b",
        "\u{7f}",
        "nul\u{0}",
        "esc\u{1b}[0m",
    ] {
        let (status, resp) = c
            .post("/v1/endpoints", body(json!({"x-acme-route": value})))
            .await;
        assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_header",
            &format!("value {value:?}"),
        );
        assert_unharmed(&c, 0, 0).await;
    }
    for headers in [
        json!({"bad name": "x"}),
        json!({"": "x"}),
        json!({"x:y": "x"}),
    ] {
        let (status, resp) = c.post("/v1/endpoints", body(headers.clone())).await;
        assert_error(
            (status, &resp),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_header",
            &headers.to_string(),
        );
        assert_unharmed(&c, 0, 0).await;
    }
    // Ordinary custom headers are kept.
    let ep = create_ep(&c, body(json!({"x-acme-route": "cases", "X-Tenant": "t1"}))).await;
    let (_, got) = c.get(&format!("/v1/endpoints/{}", id_of(&ep))).await;
    let headers: Vec<(String, String)> = got["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_string()))
        .collect();
    assert!(
        headers.contains(&("x-acme-route".into(), "cases".into())),
        "{got}"
    );
    assert!(headers.contains(&("x-tenant".into(), "t1".into())), "{got}");
    // PATCH refuses a reserved header and keeps the old ones.
    let (status, resp) = c
        .patch(
            &format!("/v1/endpoints/{}", id_of(&ep)),
            json!({"headers": {"webhook-id": "x"}}),
        )
        .await;
    assert_error(
        (status, &resp),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_header",
        "patch webhook-id",
    );
    let (_, again) = c.get(&format!("/v1/endpoints/{}", id_of(&ep))).await;
    assert_eq!(again["headers"], got["headers"]);
    assert_unharmed(&c, 0, 1).await;
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_except_healthz() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let valid_event = event(
        "acme-health",
        "production",
        "evt_noauth",
        "bill.created",
        json!({}),
    );
    let valid_endpoint = json!({"partner_id": "acme-health", "url": "http://127.0.0.1:9/", "event_types": ["*"], "environment": "sandbox"});
    let requests: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/status", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/v1/event-types", None),
        (Method::GET, "/v1/endpoints", None),
        (Method::GET, "/v1/events/evt_noauth", None),
        (Method::POST, "/v1/events", Some(valid_event.clone())),
        (
            Method::POST,
            "/v1/events/batch",
            Some(json!({"events": [valid_event.clone()]})),
        ),
        (Method::POST, "/v1/endpoints", Some(valid_endpoint)),
        (Method::GET, "/v1/dead-letters", None),
        (Method::GET, "/v1/no-such-path", None),
    ];
    let wrong_values = [
        None,
        Some("Bearer ".to_string()),
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {}", "0".repeat(64))),
        Some(format!("Bearer {}x", d.token)),
        Some(format!("Bearer {}", &d.token[..63])),
        Some(format!("Basic {}", d.token)),
        Some(d.token.clone()),
    ];
    for (method, path, body) in &requests {
        for auth in &wrong_values {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(d.url(path))
                .header("host", d.addr.to_string());
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let bytes = body
                .as_ref()
                .map(|b| b.to_string().into_bytes())
                .unwrap_or_default();
            let (status, _, resp) =
                send(d.addr, req.body(Full::new(Bytes::from(bytes))).unwrap()).await;
            let resp: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
            assert_error(
                (status, &resp),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!("{method} {path} with {auth:?}"),
            );
        }
    }
    // /healthz needs no token.
    let (status, _, body) = c.raw(Method::GET, "/healthz", None, false).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // Nothing from the refused requests was stored; the real token works.
    assert_unharmed(&c, 0, 0).await;
    assert_absent(&c, "evt_noauth").await;
    let (status, _) = c.post("/v1/events", valid_event).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = c.with_token("wrong").get("/v1/events/evt_noauth").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_paths_and_ids_are_404() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let ep = c
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/", &["*"])
        .await;
    let ep_id = id_of(&ep);
    let unknown_ep = "ep_00000000deadbeef";
    let checks: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/".into(), None),
        (Method::GET, "/v1".into(), None),
        (Method::GET, "/v1/nope".into(), None),
        (Method::GET, "/v2/events/evt_x".into(), None),
        (
            Method::POST,
            "/v1/events/evt_x/nope".into(),
            Some(json!({})),
        ),
        (Method::GET, "/v1/events/evt_unknown".into(), None),
        (
            Method::POST,
            "/v1/events/evt_unknown/redeliver".into(),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/endpoints/{unknown_ep}"), None),
        (Method::GET, "/v1/endpoints/ep_xyz".into(), None),
        (Method::GET, "/v1/endpoints/not-an-id".into(), None),
        (
            Method::GET,
            format!("/v1/endpoints/{unknown_ep}/secret"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/endpoints/{unknown_ep}"),
            Some(json!({"description": "x"})),
        ),
        (Method::DELETE, format!("/v1/endpoints/{unknown_ep}"), None),
        (
            Method::POST,
            format!("/v1/endpoints/{unknown_ep}/rotate-secret"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{unknown_ep}/disable"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{unknown_ep}/enable"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{ep_id}/frobnicate"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/endpoints/{ep_id}/secret/extra"),
            None,
        ),
    ];
    for (method, path, body) in checks {
        let (status, resp) = c
            .json(
                method.clone(),
                &path,
                body.map(|b| b.to_string().into_bytes()),
            )
            .await;
        assert_error(
            (status, &resp),
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{method} {path}"),
        );
    }
    // The known endpoint is untouched, and the daemon serves normally.
    let (status, got) = c.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(
        (status, got["description"].clone(), got["enabled"].clone()),
        (StatusCode::OK, json!(""), json!(true))
    );
    assert_unharmed(&c, 0, 1).await;
}

// ---------------------------------------------------------------------------------------------
// The endpoints API
// ---------------------------------------------------------------------------------------------

fn assert_secret(secret: &Value) -> String {
    let s = secret
        .as_str()
        .unwrap_or_else(|| panic!("secret is not a string: {secret}"));
    let b64 = s
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret does not start with whsec_: {s}"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("secret is not base64 ({e}): {s}"));
    assert_eq!(key.len(), 32, "the secret holds 32 bytes: {s}");
    s.to_string()
}

#[tokio::test]
async fn endpoint_create_returns_the_secret_once_and_get_secret_returns_it() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let request = json!({
        "partner_id": "acme-health", "environment": "sandbox", "url": "http://127.0.0.1:9/preflix",
        "event_types": ["audit.completed", "dispute.status_changed"], "description": "case sync",
        "headers": {"x-acme-route": "cases"}, "ordered": true, "max_in_flight": 4, "rate_limit_per_second": 10
    });
    let before = now_ms();
    let ep = create_ep(&c, request.clone()).await;
    for field in [
        "partner_id",
        "environment",
        "url",
        "event_types",
        "description",
        "headers",
        "ordered",
        "max_in_flight",
        "rate_limit_per_second",
    ] {
        assert_eq!(ep[field], request[field], "{field}: {ep}");
    }
    let id = id_of(&ep);
    assert!(id.starts_with("ep_"), "{id}");
    assert_eq!(ep["enabled"], true);
    let created = rfc3339_ms(ep["created_at"].as_str().expect("created_at"));
    assert!(created + 1000 >= before && created <= now_ms() + 1000);
    let secret = assert_secret(&ep["secret"]);

    let (status, got) = c.get(&format!("/v1/endpoints/{id}/secret")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, json!({"secret": secret}));

    let other = c
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/other", &["*"])
        .await;
    assert_ne!(
        assert_secret(&other["secret"]),
        secret,
        "each endpoint gets its own secret"
    );
    assert_ne!(id_of(&other), id);

    // Required fields.
    for missing in ["partner_id", "url", "event_types"] {
        let mut body = request.clone();
        body.as_object_mut().unwrap().remove(missing);
        let (status, resp) = c.post("/v1/endpoints", body).await;
        let message = assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("without {missing}"),
        );
        assert!(message.contains(missing), "{message}");
    }
    assert_unharmed(&c, 0, 2).await;
}

#[tokio::test]
async fn endpoint_list_filter_and_get_never_show_the_secret() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let a1 = c
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/a1", &["*"])
        .await;
    let a2 = c
        .create_endpoint(
            "acme-health",
            "production",
            "http://127.0.0.1:9/a2",
            &["bill.created"],
        )
        .await;
    let b1 = c
        .create_endpoint("beta.clinic", "sandbox", "http://127.0.0.1:9/b1", &["*"])
        .await;
    let ids = |list: &Value| {
        list["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect::<BTreeSet<_>>()
    };

    let (status, all) = c.get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), set(&[&a1, &a2, &b1]));
    let (_, acme) = c.get("/v1/endpoints?partner_id=acme-health").await;
    assert_eq!(ids(&acme), set(&[&a1, &a2]));
    let (_, beta) = c.get("/v1/endpoints?partner_id=beta.clinic").await;
    assert_eq!(ids(&beta), set(&[&b1]));
    let (status, none) = c.get("/v1/endpoints?partner_id=nobody").await;
    assert_eq!((status, none), (StatusCode::OK, json!({"endpoints": []})));

    for list in [&all, &acme, &beta] {
        for ep in list["endpoints"].as_array().unwrap() {
            assert!(
                ep.get("secret").is_none() && ep.get("secrets").is_none(),
                "list shows a secret: {ep}"
            );
        }
    }
    for created in [&a1, &a2, &b1] {
        let (status, got) = c.get(&format!("/v1/endpoints/{}", id_of(created))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            got.get("secret").is_none() && got.get("secrets").is_none(),
            "get shows a secret: {got}"
        );
        let secret = created["secret"].as_str().unwrap();
        assert!(
            !got.to_string().contains(secret),
            "the secret appears in {got}"
        );
        assert!(
            !all.to_string().contains(secret),
            "the secret appears in the list"
        );
        // Get and list agree, and both match what creation returned (minus the secret).
        let listed = all["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == created["id"])
            .unwrap();
        assert_eq!(&got, listed);
        let mut without = created.clone();
        without.as_object_mut().unwrap().remove("secret");
        assert_eq!(got, without);
    }
}

#[tokio::test]
async fn endpoint_patch_changes_and_validates_fields() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let ep = c
        .create_endpoint(
            "acme-health",
            "sandbox",
            "http://127.0.0.1:9/old",
            &["audit.completed"],
        )
        .await;
    let path = format!("/v1/endpoints/{}", id_of(&ep));
    let change = json!({
        "url": "http://127.0.0.1:9/new", "event_types": ["bill.created", "letter.ready"], "description": "new description",
        "headers": {"x-route": "r2"}, "ordered": true, "max_in_flight": 3, "rate_limit_per_second": 50
    });
    let (status, patched) = c.patch(&path, change.clone()).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    for (field, value) in change.as_object().unwrap() {
        assert_eq!(&patched[field], value, "{field}: {patched}");
    }
    assert_eq!(patched["id"], ep["id"]);
    assert_eq!(patched["partner_id"], "acme-health");
    assert_eq!(patched["environment"], "sandbox");
    assert!(patched.get("secret").is_none());
    let (_, got) = c.get(&path).await;
    assert_eq!(got, patched);
    // A partial patch changes only what it names; null rate limit clears it.
    let (status, patched2) = c
        .patch(
            &path,
            json!({"description": "only this", "rate_limit_per_second": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched2}");
    assert_eq!(patched2["description"], "only this");
    assert_eq!(patched2["rate_limit_per_second"], Value::Null);
    assert_eq!(patched2["url"], "http://127.0.0.1:9/new");
    assert_eq!(
        patched2["event_types"],
        json!(["bill.created", "letter.ready"])
    );
    // The secret is not changed by a patch.
    let (_, secret) = c.get(&format!("{path}/secret")).await;
    assert_eq!(secret["secret"], ep["secret"]);

    let (_, before) = c.get(&path).await;
    for (body, status, code) in [
        (
            json!({"event_types": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"event_types": ["nope"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
        ),
        (
            json!({"max_in_flight": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"ordered": "yes"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"enabled": "no"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"url": "ftp://x.example/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_endpoint_url",
        ),
        (
            json!({"headers": {"content-type": "text/plain"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_header",
        ),
        (
            json!({"partner_id": "someone-else"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"environment": "production"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // One bad field refuses the whole patch, even with a good one beside it.
        (
            json!({"description": "half", "max_in_flight": -1}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (s, resp) = c.patch(&path, body.clone()).await;
        assert_error((s, &resp), status, code, &format!("patch {body}"));
        let (_, now) = c.get(&path).await;
        assert_eq!(now, before, "a refused patch ({body}) changed the endpoint");
    }
    let (status, resp) = c
        .json(Method::PATCH, &path, Some(b"{\"description\":".to_vec()))
        .await;
    assert_error(
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "patch with bad JSON",
    );
    assert_unharmed(&c, 0, 1).await;
}

#[tokio::test]
async fn endpoint_delete_is_204_then_404_and_cancels_pending_deliveries() {
    let r = failing_receiver().await;
    let mut d = holding_daemon().await;
    let c = d.client();
    let gone = c
        .create_endpoint("acme-health", "production", &r.url("/gone"), &["*"])
        .await;
    let kept = c
        .create_endpoint("acme-health", "production", &r.url("/kept"), &["*"])
        .await;
    let (status, _) = c
        .post_event(
            "acme-health",
            "production",
            "evt_del",
            "audit.completed",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_pending(&c, "evt_del", 2).await;

    let path = format!("/v1/endpoints/{}", id_of(&gone));
    let (status, _, body) = c.raw(Method::DELETE, &path, None, true).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty(), "204 has no body");
    let (status, resp) = c.get(&path).await;
    assert_error(
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "get after delete",
    );
    let (status, resp) = c.delete(&path).await;
    assert_error(
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "second delete",
    );
    let (status, resp) = c.get(&format!("{path}/secret")).await;
    assert_error(
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "secret after delete",
    );

    let (_, ev) = c.get("/v1/events/evt_del").await;
    let by_endpoint = |id: &str| {
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["endpoint_id"] == id)
            .cloned()
            .unwrap()
    };
    let cancelled = by_endpoint(&id_of(&gone));
    assert_eq!(cancelled["status"], "cancelled", "{ev}");
    assert_eq!(cancelled["next_attempt_at"], Value::Null, "{ev}");
    assert_eq!(by_endpoint(&id_of(&kept))["status"], "pending", "{ev}");

    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(
        list["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect::<BTreeSet<_>>(),
        set(&[&kept])
    );
    let (status, ack) = c
        .post_event(
            "acme-health",
            "production",
            "evt_after_del",
            "audit.completed",
            json!({}),
        )
        .await;
    assert_eq!(
        (status, ack["deliveries"].clone()),
        (StatusCode::ACCEPTED, json!(1))
    );
    assert_eq!(
        endpoint_ids(&wait_pending(&c, "evt_after_del", 1).await),
        set(&[&kept])
    );
    assert_eq!(
        r.received().iter().filter(|x| x.path == "/gone").count(),
        1,
        "the deleted endpoint got nothing more"
    );

    // The deletion and the cancellation are durable.
    d.restart().await;
    let c = d.client();
    let (status, resp) = c.get(&path).await;
    assert_error(
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "get after restart",
    );
    let (_, ev) = c.get("/v1/events/evt_del").await;
    let statuses: BTreeSet<(String, String)> = ev["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["endpoint_id"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from([
            (id_of(&gone), "cancelled".to_string()),
            (id_of(&kept), "pending".to_string())
        ]),
        "{ev}"
    );
}

#[tokio::test]
async fn endpoint_rotate_secret_returns_a_new_secret() {
    let mut d = TestDaemon::start().await;
    let c = d.client();
    let ep = c
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/", &["*"])
        .await;
    let path = format!("/v1/endpoints/{}", id_of(&ep));
    let mut seen = BTreeSet::from([assert_secret(&ep["secret"])]);
    for body in [
        json!({}),
        json!({"grace_seconds": 0}),
        json!({"grace_seconds": 86400}),
    ] {
        let (status, rotated) = c.post(&format!("{path}/rotate-secret"), body.clone()).await;
        assert!(status.is_success(), "rotate {body}: {status} {rotated}");
        let secret = assert_secret(&rotated["secret"]);
        assert!(
            seen.insert(secret.clone()),
            "rotation gave an old secret again"
        );
        let (_, got) = c.get(&format!("{path}/secret")).await;
        assert_eq!(
            got,
            json!({"secret": secret}),
            "GET secret returns the newest"
        );
    }
    // An empty body is allowed too.
    let (status, _, bytes) = c
        .raw(Method::POST, &format!("{path}/rotate-secret"), None, true)
        .await;
    assert!(status.is_success(), "{status}");
    let rotated: Value = serde_json::from_slice(&bytes).unwrap();
    let (_, got) = c.get(&format!("{path}/secret")).await;
    assert_eq!(got["secret"], rotated["secret"]);
    assert!(seen.insert(assert_secret(&rotated["secret"])));

    let (_, before) = c.get(&format!("{path}/secret")).await;
    for body in [json!({"grace_seconds": "1d"}), json!({"grace_seconds": -5})] {
        let (status, resp) = c.post(&format!("{path}/rotate-secret"), body.clone()).await;
        assert_error(
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &body.to_string(),
        );
    }
    let (_, after) = c.get(&format!("{path}/secret")).await;
    assert_eq!(before, after, "a refused rotation changed the secret");

    // The newest secret is the one kept across a restart.
    d.restart().await;
    let (_, restarted) = d.client().get(&format!("{path}/secret")).await;
    assert_eq!(restarted, after);
}

#[tokio::test]
async fn endpoint_disable_and_enable_toggle_enabled_and_reason() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let ep = c
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/", &["*"])
        .await;
    assert_eq!(
        (ep["enabled"].clone(), ep["disabled_reason"].clone()),
        (json!(true), Value::Null)
    );
    let path = format!("/v1/endpoints/{}", id_of(&ep));
    for round in 0..2 {
        let (status, off) = c.post(&format!("{path}/disable"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{off}");
        assert_eq!(off["enabled"], false);
        assert!(
            off["disabled_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "round {round}: {off}"
        );
        let (_, got) = c.get(&path).await;
        assert_eq!(got, off);
        let (status, on) = c.post(&format!("{path}/enable"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{on}");
        assert_eq!(
            (on["enabled"].clone(), on["disabled_reason"].clone()),
            (json!(true), Value::Null),
            "{on}"
        );
        let (_, got) = c.get(&path).await;
        assert_eq!(got, on);
    }
    // `enabled` through PATCH does the same.
    let (_, off) = c.patch(&path, json!({"enabled": false})).await;
    assert_eq!(off["enabled"], false);
    assert!(off["disabled_reason"].is_string(), "{off}");
    let (_, on) = c.patch(&path, json!({"enabled": true})).await;
    assert_eq!(
        (on["enabled"].clone(), on["disabled_reason"].clone()),
        (json!(true), Value::Null),
        "{on}"
    );
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"][0]["enabled"], true);
}

#[tokio::test]
async fn event_types_lists_the_six_catalog_types() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let (status, body) = c.get("/v1/event-types").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = body["event_types"].as_array().expect("event_types");
    let names: BTreeSet<&str> = list
        .iter()
        .map(|t| t["type"].as_str().expect("type name"))
        .collect();
    assert_eq!(names, TYPES.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(list.len(), 6);
    for t in list {
        assert!(
            t["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{t}"
        );
    }
}
