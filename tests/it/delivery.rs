//! Delivery, end to end: what a receiver gets (body, headers, both signature sets), retries and their
//! spacing, dead letters and redrive, `Retry-After`, 410, redirects, timeouts, huge responses, ordering,
//! concurrency limits, the address guard, secret rotation, redeliver / test / recover, disable / enable /
//! delete, and `/status`.
//!
//! Signatures are checked with an implementation written here from spec section 5 (hmac + sha2 +
//! base64 directly), never with the crate's signing module.

use crate::support::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// An independent implementation of the receiver's side of spec section 5.
// ---------------------------------------------------------------------------------------------

fn secret_key(secret: &str) -> Vec<u8> {
    let b64 = secret
        .strip_prefix("whsec_")
        .expect("a secret starts with whsec_");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("the secret is base64")
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .expect("ASCII header")
}

/// The `v1=` entries of `preflixai-signature`.
fn preflixai_entries(r: &Received) -> Vec<String> {
    header(r, "preflixai-signature")
        .split(',')
        .map(|e| {
            e.trim()
                .strip_prefix("v1=")
                .unwrap_or_else(|| panic!("entry without v1=: {e}"))
                .to_string()
        })
        .collect()
}

/// The `v1,` entries of `webhook-signature` (base64).
fn webhook_entries(r: &Received) -> Vec<String> {
    header(r, "webhook-signature")
        .split(' ')
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("v1,")
                .unwrap_or_else(|| panic!("entry without v1,: {e}"))
                .to_string()
        })
        .collect()
}

/// The hex signature `preflixai-signature` should hold for `secret`.
fn expected_preflixai(r: &Received, secret: &str) -> String {
    let ts = header(r, "preflixai-timestamp");
    to_hex(&hmac_sha256(
        &secret_key(secret),
        &[ts.as_bytes(), b".", &r.body],
    ))
}

/// The base64 signature `webhook-signature` should hold for `secret` (Standard Webhooks).
fn expected_webhook(r: &Received, secret: &str) -> String {
    let id = header(r, "webhook-id");
    let ts = header(r, "webhook-timestamp");
    let mac = hmac_sha256(
        &secret_key(secret),
        &[id.as_bytes(), b".", ts.as_bytes(), b".", &r.body],
    );
    base64::engine::general_purpose::STANDARD.encode(mac)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// Small API helpers.
// ---------------------------------------------------------------------------------------------

async fn create_ep(c: &Client, body: Value) -> Value {
    let (status, ep) = c.post("/v1/endpoints", body).await;
    assert_eq!(status, StatusCode::CREATED, "{ep}");
    ep
}

fn ep_id(ep: &Value) -> String {
    ep["id"].as_str().expect("endpoint id").to_string()
}

async fn post_ok(c: &Client, partner: &str, id: &str, event_type: &str, data: Value) -> Value {
    let (status, body) = c.post_event(partner, "sandbox", id, event_type, data).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

async fn event(c: &Client, id: &str) -> Value {
    let (status, body) = c.get(&format!("/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls `GET /v1/events/{id}` until `cond` holds; returns the event.
async fn wait_event(c: &Client, id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = event(c, id).await;
        if cond(&ev) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "event {id} never reached the expected state: {ev:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The delivery of `ev` to `endpoint` (the first one, when there are several).
fn delivery<'a>(ev: &'a Value, endpoint: &str) -> &'a Value {
    ev["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["endpoint_id"] == endpoint)
        .unwrap_or_else(|| panic!("no delivery to {endpoint}: {ev:#}"))
}

fn status_of(ev: &Value, endpoint: &str) -> String {
    delivery(ev, endpoint)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn attempts_of<'a>(ev: &'a Value, endpoint: &str) -> &'a Vec<Value> {
    delivery(ev, endpoint)["attempts"]
        .as_array()
        .expect("attempts")
}

async fn dead_letters(c: &Client, query: &str) -> Value {
    let (status, body) = c.get(&format!("/v1/dead-letters{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn dl_list(page: &Value) -> Vec<Value> {
    page["dead_letters"]
        .as_array()
        .expect("dead_letters")
        .clone()
}

async fn wait_dead_letters(c: &Client, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = dl_list(&dead_letters(c, query).await);
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} dead letters, have {}: {list:#?}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status(c: &Client) -> Value {
    let (code, body) = c.get("/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

fn status_endpoint<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status:#}"))
}

fn ids_of(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| header(r, "preflixai-event-id").to_string())
        .collect()
}

/// Proves something does NOT happen: waits a little, then the receiver still has `n` requests.
async fn still(receiver: &TestReceiver, n: usize, wait: Duration) {
    tokio::time::sleep(wait).await;
    assert_eq!(
        receiver.count(),
        n,
        "unexpected requests: {:?}",
        ids_of(&receiver.received())
    );
}

// ---------------------------------------------------------------------------------------------
// What the receiver sees.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delivery_has_spec_body_headers_and_both_signatures_verify() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = create_ep(
        &c,
        json!({"partner_id": "acme-health", "environment": "sandbox", "url": receiver.url("/hooks/preflix"),
               "event_types": ["audit.completed"], "headers": {"x-acme-route": "cases", "X-Tenant": "t-42"}}),
    )
    .await;
    let secret = ep["secret"]
        .as_str()
        .expect("secret shown at creation")
        .to_string();
    assert!(
        secret.starts_with("whsec_") && secret_key(&secret).len() == 32,
        "{secret}"
    );

    let before = now_secs();
    let (code, body) = c
        .post(
            "/v1/events",
            json!({"partner_id": "acme-health", "environment": "sandbox", "id": "evt_7b2", "type": "audit.completed",
                   "created_at": "2026-01-15T19:04:12Z",
                   "data": {"bill_id": "bill_8f4", "report_id": "report_33", "status": "complete"}}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(1, WAIT).await;
    let after = now_secs();
    let r = &got[0];

    assert_eq!(r.path, "/hooks/preflix");
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"id":"evt_7b2","type":"audit.completed","created_at":"2026-01-15T19:04:12Z","data":{"bill_id":"bill_8f4","report_id":"report_33","status":"complete"}}"#
    );
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "user-agent"), "preflix-webhookd/0.1.0");
    assert_eq!(header(r, "preflixai-event-id"), "evt_7b2");
    assert_eq!(header(r, "preflixai-event-type"), "audit.completed");
    assert_eq!(header(r, "preflixai-attempt"), "1");
    assert_eq!(header(r, "webhook-id"), "evt_7b2");
    assert_eq!(header(r, "x-acme-route"), "cases");
    assert_eq!(header(r, "x-tenant"), "t-42");
    let ts: i64 = header(r, "preflixai-timestamp")
        .parse()
        .expect("unix seconds");
    assert!(
        (before - 1..=after + 1).contains(&ts),
        "timestamp {ts} not in [{before}, {after}]"
    );
    assert_eq!(
        header(r, "webhook-timestamp"),
        header(r, "preflixai-timestamp")
    );

    // Exactly one entry each (no rotation), and each verifies with the creation secret.
    assert_eq!(preflixai_entries(r), vec![expected_preflixai(r, &secret)]);
    assert_eq!(webhook_entries(r), vec![expected_webhook(r, &secret)]);
    // The verifier is not vacuous: another secret does not verify.
    let other = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    assert_ne!(preflixai_entries(r)[0], expected_preflixai(r, &other));
    assert_ne!(webhook_entries(r)[0], expected_webhook(r, &other));

    // The secret read back later is the same one.
    let (_, s) = c.get(&format!("/v1/endpoints/{}/secret", ep_id(&ep))).await;
    assert_eq!(s["secret"], secret);
}

// ---------------------------------------------------------------------------------------------
// Retries, dead letters, Retry-After, 410, redirects, timeouts, huge responses.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failures_are_retried_on_schedule_with_same_body_and_logged() {
    let receiver = TestReceiver::start().await;
    receiver.script([
        Answer::status(500).body("first"),
        Answer::status(500).body("second"),
    ]);
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("p-retry", "sandbox", &receiver.url("/h"), &["*"])
        .await;
    post_ok(
        &c,
        "p-retry",
        "evt_retry",
        "bill.created",
        json!({"bill_id": "b1"}),
    )
    .await;

    let got = receiver.wait_for(3, WAIT).await;
    let attempts: Vec<&str> = got.iter().map(|r| header(r, "preflixai-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the body changed between attempts"
    );
    assert!(got
        .iter()
        .all(|r| header(r, "preflixai-event-id") == "evt_retry"));
    // Spaced by the schedule (50 ms, then 100 ms); 2 ms of slack for the millisecond clock.
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(48),
        "attempt 2 came {gap1:?} after attempt 1"
    );
    assert!(
        gap2 >= Duration::from_millis(98),
        "attempt 3 came {gap2:?} after attempt 2"
    );
    // Each attempt is signed afresh and verifies.
    let secret = ep["secret"].as_str().unwrap();
    for r in &got {
        assert_eq!(preflixai_entries(r), vec![expected_preflixai(r, secret)]);
    }

    let id = ep_id(&ep);
    let ev = wait_event(&c, "evt_retry", |ev| status_of(ev, &id) == "succeeded").await;
    let d = delivery(&ev, &id);
    assert!(d["next_attempt_at"].is_null(), "{d}");
    let a = attempts_of(&ev, &id);
    assert_eq!(a.len(), 3, "{ev:#}");
    let codes: Vec<Value> = a.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    let ns: Vec<Value> = a.iter().map(|a| a["n"].clone()).collect();
    assert_eq!(ns, [json!(1), json!(2), json!(3)]);
    assert_eq!(a[0]["response_snippet"], "first");
    assert_eq!(a[1]["response_snippet"], "second");
    assert!(
        a.iter()
            .all(|a| a["error"].is_null() && a["at"].is_string() && a["duration_ms"].is_u64()),
        "{ev:#}"
    );
    still(&receiver, 3, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn exhausted_deliveries_are_dead_lettered_listed_paged_deleted_and_redriven() {
    let ra = TestReceiver::start().await;
    let rb = TestReceiver::start().await;
    ra.set_default(Answer::status(500));
    rb.set_default(Answer::status(500));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let a = ep_id(
        &c.create_endpoint("p-dl", "sandbox", &ra.url("/a"), &["*"])
            .await,
    );
    let b = ep_id(
        &c.create_endpoint("p-dl", "sandbox", &rb.url("/b"), &["*"])
            .await,
    );
    post_ok(&c, "p-dl", "evt_dl1", "audit.completed", json!({"n": 1})).await;
    post_ok(&c, "p-dl", "evt_dl2", "bill.created", json!({"n": 2})).await;
    post_ok(&c, "p-dl", "evt_dl3", "audit.completed", json!({"n": 3})).await;

    let all = wait_dead_letters(&c, "", 6).await;
    assert_eq!(all.len(), 6, "{all:#?}");
    ra.wait_for(9, WAIT).await;
    rb.wait_for(9, WAIT).await;
    still(&ra, 9, Duration::from_millis(200)).await;

    // The fields of spec 4.3.
    let ev1 = event(&c, "evt_dl1").await;
    assert_eq!(status_of(&ev1, &a), "dead");
    let dl = all
        .iter()
        .find(|d| d["event_id"] == "evt_dl1" && d["endpoint_id"] == a)
        .expect("dead letter of evt_dl1 to a");
    assert!(dl["id"].as_str().unwrap().starts_with("dl_"), "{dl}");
    assert_eq!(dl["delivery_id"], delivery(&ev1, &a)["id"]);
    assert_eq!(dl["event_type"], "audit.completed");
    assert_eq!(dl["partner_id"], "p-dl");
    assert_eq!(dl["url"], ra.url("/a"));
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["last_status_code"], 500);
    assert!(dl["last_error"].is_null(), "{dl}");
    assert_eq!(dl["reason"], "retries_exhausted");
    let first = dl["first_attempt_at"].as_str().expect("first_attempt_at");
    let dead = dl["dead_at"].as_str().expect("dead_at");
    let first_attempt = attempts_of(&ev1, &a)[0]["at"].as_str().unwrap();
    assert_eq!(first, first_attempt);
    assert!(
        first < dead,
        "first_attempt_at {first} is not before dead_at {dead}"
    );

    // Filters.
    let by_a = dl_list(&dead_letters(&c, &format!("?endpoint_id={a}")).await);
    assert_eq!(by_a.len(), 3);
    assert!(by_a.iter().all(|d| d["endpoint_id"] == a));
    let by_type = dl_list(&dead_letters(&c, "?event_type=audit.completed").await);
    assert_eq!(by_type.len(), 4);
    assert!(by_type.iter().all(|d| d["event_type"] == "audit.completed"));
    let both =
        dl_list(&dead_letters(&c, &format!("?endpoint_id={b}&event_type=bill.created")).await);
    assert_eq!(both.len(), 1);
    assert_eq!(both[0]["event_id"], "evt_dl2");

    // Paging: 4, then 2, no overlap, everything seen.
    let p1 = dead_letters(&c, "?limit=4").await;
    assert_eq!(dl_list(&p1).len(), 4);
    let cursor = p1["next"]
        .as_str()
        .expect("a next cursor after a full page");
    let p2 = dead_letters(&c, &format!("?limit=4&after={cursor}")).await;
    assert_eq!(dl_list(&p2).len(), 2);
    assert!(p2["next"].is_null(), "{p2}");
    let seen: HashSet<String> = dl_list(&p1)
        .iter()
        .chain(dl_list(&p2).iter())
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let every: HashSet<String> = all
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, every);

    // DELETE.
    let find = |list: &[Value], ev: &str, ep: &str| {
        list.iter()
            .find(|d| d["event_id"] == ev && d["endpoint_id"] == ep)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let gone = find(&all, "evt_dl3", &a);
    let (code, _) = c.delete(&format!("/v1/dead-letters/{gone}")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = c.delete(&format!("/v1/dead-letters/{gone}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(dl_list(&dead_letters(&c, "").await).len(), 5);

    // Redrive one, now that the receiver answers 200.
    ra.set_default(Answer::status(200));
    let one = find(&all, "evt_dl1", &a);
    let (code, body) = c
        .post(&format!("/v1/dead-letters/{one}/retry"), json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let ev1 = wait_event(&c, "evt_dl1", |ev| status_of(ev, &a) == "succeeded").await;
    assert_eq!(attempts_of(&ev1, &a).last().unwrap()["status_code"], 200);
    assert_eq!(ids_of(&ra.wait_for(10, WAIT).await)[9], "evt_dl1");
    let left = dl_list(&dead_letters(&c, "").await);
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|d| d["id"] != one.as_str()));
    let (code, _) = c
        .post(&format!("/v1/dead-letters/{one}/retry"), json!({}))
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "a redriven dead letter is gone"
    );

    // Bulk redrive, filtered by endpoint: b's three.
    rb.set_default(Answer::status(200));
    let (code, body) = c
        .post("/v1/dead-letters/retry", json!({"endpoint_id": b}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["requeued"], 3);
    let got = rb.wait_for(12, WAIT).await;
    let redriven: HashSet<String> = ids_of(&got[9..]).into_iter().collect();
    assert_eq!(
        redriven,
        HashSet::from(["evt_dl1".into(), "evt_dl2".into(), "evt_dl3".into()])
    );
    for id in ["evt_dl1", "evt_dl2", "evt_dl3"] {
        wait_event(&c, id, |ev| status_of(ev, &b) == "succeeded").await;
    }
    // Bulk with no filter: what is left (a's evt_dl2).
    let (code, body) = c.post("/v1/dead-letters/retry", json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["requeued"], 1);
    wait_event(&c, "evt_dl2", |ev| status_of(ev, &a) == "succeeded").await;
    assert!(dl_list(&dead_letters(&c, "").await).is_empty());
    // The deleted dead letter's delivery stays dead and is not redriven.
    assert_eq!(status_of(&event(&c, "evt_dl3").await, &a), "dead");
    still(&ra, 11, Duration::from_millis(150)).await;
}

#[tokio::test]
async fn retry_after_on_429_wins_over_a_short_schedule() {
    let receiver = TestReceiver::start().await;
    receiver.script([
        Answer::status(429).header("retry-after", "1"),
        Answer::status(500),
    ]);
    let daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![
            Duration::from_millis(10),
            Duration::from_millis(10),
            Duration::from_millis(10),
        ];
    })
    .await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-429", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-429", "evt_429", "audit.started", json!({})).await;
    let got = receiver.wait_for(3, WAIT).await;
    let after_429 = got[1].at - got[0].at;
    let after_500 = got[2].at - got[1].at;
    assert!(
        after_429 >= Duration::from_millis(990),
        "attempt 2 came only {after_429:?} after a 429 with Retry-After: 1"
    );
    // The control: after a plain 500 the 10 ms schedule applies, so the second wait was Retry-After's doing.
    assert!(
        after_500 < Duration::from_millis(700),
        "the schedule delay was not short: {after_500:?}"
    );
    let ev = wait_event(&c, "evt_429", |ev| status_of(ev, &ep) == "succeeded").await;
    let codes: Vec<Value> = attempts_of(&ev, &ep)
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(429), json!(500), json!(200)]);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_dead_letters_the_delivery() {
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    let ok = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let g = ep_id(
        &c.create_endpoint("p-410", "sandbox", &gone.url("/g"), &["*"])
            .await,
    );
    let k = ep_id(
        &c.create_endpoint("p-410", "sandbox", &ok.url("/k"), &["*"])
            .await,
    );
    post_ok(&c, "p-410", "evt_410a", "letter.ready", json!({})).await;

    let dls = wait_dead_letters(&c, "", 1).await;
    assert_eq!(dls[0]["reason"], "endpoint_gone");
    assert_eq!(dls[0]["endpoint_id"], g);
    assert_eq!(dls[0]["attempts"], 1);
    assert_eq!(dls[0]["last_status_code"], 410);
    let ev = event(&c, "evt_410a").await;
    assert_eq!(status_of(&ev, &g), "dead");
    assert_eq!(attempts_of(&ev, &g).len(), 1, "a 410 is not retried");
    let (_, ep) = c.get(&format!("/v1/endpoints/{g}")).await;
    assert_eq!(ep["enabled"], false, "{ep}");
    assert!(
        ep["disabled_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{ep}"
    );
    let (_, ep) = c.get(&format!("/v1/endpoints/{k}")).await;
    assert_eq!(
        ep["enabled"], true,
        "only the endpoint that answered 410 is disabled"
    );

    // A later event of the same partner: the healthy endpoint only.
    let body = post_ok(&c, "p-410", "evt_410b", "letter.ready", json!({})).await;
    assert_eq!(body["deliveries"], 1, "{body}");
    ok.wait_for(2, WAIT).await;
    let ev = event(&c, "evt_410b").await;
    assert!(
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["endpoint_id"] != g),
        "{ev:#}"
    );
    still(&gone, 1, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = TestReceiver::start().await;
    let redirecting = TestReceiver::start().await;
    redirecting.set_default(Answer::status(302).header("location", &target.url("/elsewhere")));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-302", "sandbox", &redirecting.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-302", "evt_302", "bill.created", json!({})).await;

    let ev = wait_event(&c, "evt_302", |ev| status_of(ev, &ep) == "dead").await;
    let a = attempts_of(&ev, &ep);
    assert_eq!(a.len(), 3, "a redirect is retried like a failure: {ev:#}");
    assert!(a.iter().all(|a| a["status_code"] == 302), "{ev:#}");
    assert_eq!(redirecting.count(), 3);
    still(&target, 0, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_hits_the_timeout() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_secs(5)));
    let daemon = TestDaemon::start_with(|c| c.delivery.timeout = Duration::from_millis(300)).await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-slow", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-slow", "evt_slow", "audit.started", json!({})).await;

    let ev = wait_event(&c, "evt_slow", |ev| !attempts_of(ev, &ep).is_empty()).await;
    let a = &attempts_of(&ev, &ep)[0];
    assert!(a["status_code"].is_null(), "{a}");
    let error = a["error"].as_str().expect("an error sentence");
    assert!(
        error.to_lowercase().contains("timeout") || error.contains("within"),
        "{error}"
    );
    let ms = a["duration_ms"].as_u64().unwrap();
    assert!(
        (250..2500).contains(&ms),
        "the attempt took {ms} ms with a 300 ms timeout"
    );

    // Retried, then dead with no status code and the error.
    let dls = wait_dead_letters(&c, "", 1).await;
    assert_eq!(dls[0]["attempts"], 3);
    assert!(dls[0]["last_status_code"].is_null(), "{}", dls[0]);
    assert!(dls[0]["last_error"].is_string(), "{}", dls[0]);
    assert_eq!(receiver.count(), 3);
}

/// A raw HTTP/1.1 receiver that answers 200 with a body of `declared` bytes and writes it in chunks
/// for as long as the client takes them; counts the bytes the socket accepted.
async fn start_huge_body_receiver(
    declared: u64,
) -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let (w, f) = (written.clone(), finished.clone());
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        // Read the request head and its body (content-length).
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {declared}\r\n\r\n"
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let block = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < declared {
            let n = (declared - sent).min(block.len() as u64) as usize;
            // A client that stopped reading without closing would block us forever: give up after 2 s.
            match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&block[..n])).await
            {
                Ok(Ok(())) => {
                    sent += n as u64;
                    w.store(sent, Ordering::SeqCst);
                }
                _ => break,
            }
        }
        f.store(true, Ordering::SeqCst);
    });
    (addr, written, finished)
}

#[tokio::test]
async fn a_huge_response_body_is_not_read_beyond_the_snippet() {
    const DECLARED: u64 = 100 * 1024 * 1024;
    let (addr, written, finished) = start_huge_body_receiver(DECLARED).await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-huge", "sandbox", &format!("http://{addr}/h"), &["*"])
            .await,
    );
    let started = Instant::now();
    post_ok(&c, "p-huge", "evt_huge", "audit.started", json!({})).await;
    let ev = wait_event(&c, "evt_huge", |ev| status_of(ev, &ep) == "succeeded").await;
    let settled_after = started.elapsed();
    let a = &attempts_of(&ev, &ep)[0];
    assert_eq!(a["status_code"], 200);
    let snippet = a["response_snippet"].as_str().expect("a snippet");
    assert!(
        !snippet.is_empty() && snippet.len() <= 1024,
        "snippet of {} bytes",
        snippet.len()
    );
    assert!(snippet.bytes().all(|b| b == b'x'));
    assert!(
        settled_after < Duration::from_secs(3),
        "the attempt took {settled_after:?}"
    );
    // The daemon hung up (or stopped reading) long before 100 MB: what the socket took is what kernel
    // buffers hold, a few MB at most. Reading it all would have taken every byte.
    wait_until(Duration::from_secs(5), || finished.load(Ordering::SeqCst)).await;
    let taken = written.load(Ordering::SeqCst);
    eprintln!("huge body: the socket took {taken} of {DECLARED} bytes; attempt settled after {settled_after:?}");
    assert!(
        taken < 40 * 1024 * 1024,
        "the daemon read {taken} bytes of a response body it needs 1 KiB of"
    );
}

// ---------------------------------------------------------------------------------------------
// Ordering and concurrency.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ordered_endpoint_holds_later_events_behind_a_retried_one() {
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::status(500), Answer::status(503)]);
    receiver.set_default(Answer::status(200).delay(Duration::from_millis(5)));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &create_ep(
            &c,
            json!({"partner_id": "p-ord", "environment": "sandbox", "url": receiver.url("/o"), "event_types": ["*"], "ordered": true}),
        )
        .await,
    );
    // In one batch, so that e2..e5 are all waiting while e1 is retried.
    let events: Vec<Value> = (1..=5)
        .map(|i| json!({"partner_id": "p-ord", "environment": "sandbox", "id": format!("e{i}"), "type": "bill.created", "data": {"i": i}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "accepted"),
        "{body}"
    );

    let got = receiver.wait_for(7, WAIT).await;
    assert_eq!(ids_of(&got), ["e1", "e1", "e1", "e2", "e3", "e4", "e5"]);
    assert_eq!(receiver.max_concurrent(), 1);
    for i in 1..=5 {
        wait_event(&c, &format!("e{i}"), |ev| status_of(ev, &ep) == "succeeded").await;
    }
    still(&receiver, 7, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn ordered_endpoint_moves_on_after_a_dead_letter() {
    let receiver = TestReceiver::start().await;
    receiver.script([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &create_ep(
            &c,
            json!({"partner_id": "p-ord2", "environment": "sandbox", "url": receiver.url("/o"), "event_types": ["*"], "ordered": true}),
        )
        .await,
    );
    let events: Vec<Value> = (1..=3)
        .map(|i| json!({"partner_id": "p-ord2", "environment": "sandbox", "id": format!("o{i}"), "type": "bill.created", "data": {}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let got = receiver.wait_for(5, WAIT).await;
    assert_eq!(ids_of(&got), ["o1", "o1", "o1", "o2", "o3"]);
    assert_eq!(status_of(&event(&c, "o1").await, &ep), "dead");
}

#[tokio::test]
async fn max_in_flight_of_one_is_never_exceeded() {
    let one = TestReceiver::start().await;
    one.set_default(Answer::status(200).delay(Duration::from_millis(20)));
    let many = TestReceiver::start().await;
    many.set_default(Answer::status(200).delay(Duration::from_millis(20)));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    create_ep(
        &c,
        json!({"partner_id": "p-mif", "environment": "sandbox", "url": one.url("/1"), "event_types": ["*"], "max_in_flight": 1}),
    )
    .await;
    // The control: the same load to an endpoint allowed 16 at once does run concurrently, so the
    // receiver would see it if the limit of 1 were ignored.
    create_ep(
        &c,
        json!({"partner_id": "p-mif", "environment": "sandbox", "url": many.url("/n"), "event_types": ["*"], "max_in_flight": 16}),
    )
    .await;
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"partner_id": "p-mif", "environment": "sandbox", "id": format!("mif{i}"), "type": "audit.started", "data": {}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let got = one.wait_for(20, WAIT).await;
    many.wait_for(20, WAIT).await;
    assert_eq!(one.max_concurrent(), 1);
    assert!(
        many.max_concurrent() > 1,
        "the control endpoint never ran two at once"
    );
    let distinct: HashSet<String> = ids_of(&got).into_iter().collect();
    assert_eq!(distinct.len(), 20);
}

// ---------------------------------------------------------------------------------------------
// The address guard.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_addresses_are_refused_at_registration() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start_with(|c| c.delivery.allow_private_networks = false).await;
    let c = daemon.client();
    for url in [
        format!("http://localhost:{}/h", receiver.addr.port()),
        receiver.url("/h"),
    ] {
        let (code, body) = c
            .post("/v1/endpoints", json!({"partner_id": "p-g", "environment": "sandbox", "url": url, "event_types": ["*"]}))
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "invalid_endpoint_url");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("allow_private_networks"),
            "the message names the setting: {message}"
        );
    }
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn private_addresses_are_refused_at_every_attempt() {
    let receiver = TestReceiver::start().await;
    let mut daemon = TestDaemon::start().await;
    let c = daemon.client();
    // A host name that resolves to loopback, registered while private networks were allowed.
    let url = format!("http://localhost:{}/h", receiver.addr.port());
    let ep = ep_id(&c.create_endpoint("p-guard", "sandbox", &url, &["*"]).await);
    daemon.config.delivery.allow_private_networks = false;
    daemon.restart().await;
    let c = daemon.client();
    post_ok(&c, "p-guard", "evt_guard", "audit.started", json!({})).await;

    let ev = wait_event(&c, "evt_guard", |ev| status_of(ev, &ep) == "dead").await;
    let a = attempts_of(&ev, &ep);
    assert_eq!(a.len(), 3, "{ev:#}");
    for a in a {
        assert!(a["status_code"].is_null(), "{a}");
        let error = a["error"].as_str().expect("an error sentence");
        assert!(
            error.contains("refused") && error.contains("allow_private_networks"),
            "{error}"
        );
    }
    still(&receiver, 0, Duration::from_millis(50)).await;
}

// ---------------------------------------------------------------------------------------------
// Secret rotation.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rotated_secret_signs_with_both_during_the_grace_and_one_after() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("p-rot", "sandbox", &receiver.url("/h"), &["*"])
        .await;
    let id = ep_id(&ep);
    let old = ep["secret"].as_str().unwrap().to_string();

    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            json!({"grace_seconds": 60}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().expect("the new secret").to_string();
    assert_ne!(new, old);
    let (_, s) = c.get(&format!("/v1/endpoints/{id}/secret")).await;
    assert_eq!(s["secret"], new);

    post_ok(&c, "p-rot", "evt_rot1", "audit.started", json!({})).await;
    let r = receiver.wait_for(1, WAIT).await.remove(0);
    assert_eq!(
        preflixai_entries(&r),
        vec![expected_preflixai(&r, &new), expected_preflixai(&r, &old)]
    );
    assert_eq!(
        webhook_entries(&r),
        vec![expected_webhook(&r, &new), expected_webhook(&r, &old)]
    );

    // No grace: the old secrets stop signing at once.
    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let newest = body["secret"].as_str().unwrap().to_string();
    post_ok(&c, "p-rot", "evt_rot2", "audit.started", json!({})).await;
    let r = receiver.wait_for(2, WAIT).await.remove(1);
    assert_eq!(header(&r, "preflixai-event-id"), "evt_rot2");
    assert_eq!(preflixai_entries(&r), vec![expected_preflixai(&r, &newest)]);
    assert_eq!(webhook_entries(&r), vec![expected_webhook(&r, &newest)]);
}

// ---------------------------------------------------------------------------------------------
// Redeliver, test, recover.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redeliver_to_every_endpoint_and_to_one() {
    let ra = TestReceiver::start().await;
    let rb = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let a = ep_id(
        &c.create_endpoint("p-re", "sandbox", &ra.url("/a"), &["*"])
            .await,
    );
    let b = ep_id(
        &c.create_endpoint("p-re", "sandbox", &rb.url("/b"), &["*"])
            .await,
    );
    post_ok(
        &c,
        "p-re",
        "evt_re",
        "dispute.status_changed",
        json!({"status": "open"}),
    )
    .await;
    let first = ra.wait_for(1, WAIT).await.remove(0);
    rb.wait_for(1, WAIT).await;

    let (code, body) = c.post("/v1/events/evt_re/redeliver", json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 2);
    let got_a = ra.wait_for(2, WAIT).await;
    let got_b = rb.wait_for(2, WAIT).await;
    assert_eq!(
        got_a[1].body, first.body,
        "a redelivery carries the same bytes"
    );
    assert_eq!(got_b[1].body, first.body);
    assert_eq!(header(&got_a[1], "preflixai-event-id"), "evt_re");

    let (code, body) = c
        .post("/v1/events/evt_re/redeliver", json!({"endpoint_id": a}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    ra.wait_for(3, WAIT).await;
    still(&rb, 2, Duration::from_millis(150)).await;

    let ev = wait_event(&c, "evt_re", |ev| {
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"] == "succeeded")
            .count()
            == 5
    })
    .await;
    let deliveries = ev["deliveries"].as_array().unwrap();
    assert_eq!(
        deliveries.iter().filter(|d| d["endpoint_id"] == a).count(),
        3
    );
    assert_eq!(
        deliveries.iter().filter(|d| d["endpoint_id"] == b).count(),
        2
    );

    let (code, _) = c
        .post(
            "/v1/events/evt_re/redeliver",
            json!({"endpoint_id": "ep_999999"}),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = c.post("/v1/events/evt_nope/redeliver", json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn test_event_is_the_catalog_sample_with_a_fresh_id_to_that_endpoint_only() {
    let ra = TestReceiver::start().await;
    let rb = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("p-test", "sandbox", &ra.url("/a"), &["*"])
        .await;
    let a = ep_id(&ep);
    c.create_endpoint("p-test", "sandbox", &rb.url("/b"), &["*"])
        .await;

    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{a}/test"),
            json!({"type": "letter.ready"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let event_id = body["event_id"].as_str().expect("event_id").to_string();

    let (_, types) = c.get("/v1/event-types").await;
    let sample = types["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "letter.ready")
        .unwrap()["sample"]
        .clone();
    assert_ne!(
        event_id,
        sample["id"].as_str().unwrap(),
        "the test event has a fresh id"
    );

    let r = ra.wait_for(1, WAIT).await.remove(0);
    assert_eq!(header(&r, "preflixai-event-id"), event_id);
    assert_eq!(header(&r, "preflixai-event-type"), "letter.ready");
    let got: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got["id"], event_id.as_str());
    assert_eq!(got["type"], "letter.ready");
    assert_eq!(got["data"], sample["data"]);
    assert_eq!(
        preflixai_entries(&r),
        vec![expected_preflixai(&r, ep["secret"].as_str().unwrap())]
    );
    let ev = wait_event(&c, &event_id, |ev| status_of(ev, &a) == "succeeded").await;
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 1);
    still(&rb, 0, Duration::from_millis(150)).await;

    // A second test gets another id.
    let (_, body) = c
        .post(
            &format!("/v1/endpoints/{a}/test"),
            json!({"type": "letter.ready"}),
        )
        .await;
    assert_ne!(body["event_id"], event_id.as_str());
    let (code, _) = c
        .post(
            &format!("/v1/endpoints/{a}/test"),
            json!({"type": "no.such"}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn recover_since_delivers_what_was_not_received_successfully() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-rec", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    // Before `since`, failed: not recovered.
    post_ok(&c, "p-rec", "rec0", "bill.created", json!({})).await;
    wait_event(&c, "rec0", |ev| status_of(ev, &ep) == "dead").await;
    // After `since`, failed: recovered.
    post_ok(&c, "p-rec", "rec1", "bill.created", json!({})).await;
    let since = event(&c, "rec1").await["received_at"]
        .as_str()
        .unwrap()
        .to_string();
    wait_event(&c, "rec1", |ev| status_of(ev, &ep) == "dead").await;
    // After `since`, succeeded: not recovered.
    receiver.set_default(Answer::status(200));
    post_ok(&c, "p-rec", "rec2", "bill.created", json!({})).await;
    wait_event(&c, "rec2", |ev| status_of(ev, &ep) == "succeeded").await;
    assert_eq!(receiver.count(), 7);

    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{ep}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    let got = receiver.wait_for(8, WAIT).await;
    assert_eq!(header(&got[7], "preflixai-event-id"), "rec1");
    let ev = wait_event(&c, "rec1", |ev| {
        ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "succeeded")
    })
    .await;
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 2);
    still(&receiver, 8, Duration::from_millis(150)).await;

    // Once received, a second recovery finds nothing to do.
    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{ep}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 0);
}

// ---------------------------------------------------------------------------------------------
// Disable, enable, delete.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_disabled_endpoints_deliveries_wait_and_resume_on_enable() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![Duration::from_millis(300), Duration::from_millis(300)]
    })
    .await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-dis", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-dis", "dis1", "bill.created", json!({})).await;
    post_ok(&c, "p-dis", "dis2", "bill.created", json!({})).await;
    receiver.wait_for(2, WAIT).await;
    let (code, body) = c
        .post(&format!("/v1/endpoints/{ep}/disable"), json!({}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    receiver.set_default(Answer::status(200));
    let started = Instant::now();

    // A new event is not delivered to a disabled endpoint.
    let body = post_ok(&c, "p-dis", "dis3", "bill.created", json!({})).await;
    assert_eq!(body["deliveries"], 0);
    // Well past the 300 ms retry: nothing arrives, the deliveries wait.
    still(&receiver, 2, Duration::from_millis(800)).await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    for id in ["dis1", "dis2"] {
        let ev = event(&c, id).await;
        assert_eq!(status_of(&ev, &ep), "pending", "{ev:#}");
        assert_eq!(attempts_of(&ev, &ep).len(), 1);
    }

    let (code, body) = c
        .post(&format!("/v1/endpoints/{ep}/enable"), json!({}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], true);
    let got = receiver.wait_for(4, WAIT).await;
    let resumed: HashSet<String> = ids_of(&got[2..]).into_iter().collect();
    assert_eq!(
        resumed,
        HashSet::from(["dis1".to_string(), "dis2".to_string()])
    );
    for id in ["dis1", "dis2"] {
        wait_event(&c, id, |ev| status_of(ev, &ep) == "succeeded").await;
    }
}

#[tokio::test]
async fn deleting_an_endpoint_cancels_its_pending_deliveries() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![Duration::from_millis(500), Duration::from_millis(500)]
    })
    .await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-del", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-del", "del1", "bill.created", json!({})).await;
    post_ok(&c, "p-del", "del2", "bill.created", json!({})).await;
    receiver.wait_for(2, WAIT).await;
    wait_event(&c, "del2", |ev| attempts_of(ev, &ep).len() == 1).await;

    let (code, _) = c.delete(&format!("/v1/endpoints/{ep}")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    for id in ["del1", "del2"] {
        let ev = event(&c, id).await;
        assert_eq!(status_of(&ev, &ep), "cancelled", "{ev:#}");
        assert!(delivery(&ev, &ep)["next_attempt_at"].is_null(), "{ev:#}");
    }
    let (code, _) = c.get(&format!("/v1/endpoints/{ep}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    still(&receiver, 2, Duration::from_millis(700)).await;
    let st = status(&c).await;
    assert_eq!(st["queue"]["pending"], 0, "{st:#}");
    assert_eq!(st["queue"]["retrying"], 0, "{st:#}");
}

// ---------------------------------------------------------------------------------------------
// /status.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status_reports_queue_dead_letters_and_endpoint_health() {
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(500));
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    let daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![Duration::from_secs(60), Duration::from_secs(60)]
    })
    .await;
    let c = daemon.client();
    let a = ep_id(
        &c.create_endpoint("p-st", "sandbox", &failing.url("/a"), &["*"])
            .await,
    );
    let g = ep_id(
        &c.create_endpoint("p-st-gone", "sandbox", &gone.url("/g"), &["*"])
            .await,
    );

    let st = status(&c).await;
    // Contract section 8: the backend is named; `nodes` is for postgres only.
    if on_postgres() {
        assert_eq!(st["backend"], "postgres", "{st:#}");
        assert_eq!(st["nodes"].as_array().map(Vec::len), Some(1), "{st:#}");
    } else {
        assert_eq!(st["backend"], "sled", "{st:#}");
        assert!(st.get("nodes").is_none(), "{st:#}");
    }
    assert_eq!(status_endpoint(&st, &a)["health"], "healthy");
    assert_eq!(st["queue"]["pending"], 0);
    assert_eq!(st["dead_letters"], 0);

    post_ok(&c, "p-st", "st1", "bill.created", json!({})).await;
    post_ok(&c, "p-st", "st2", "bill.created", json!({})).await;
    post_ok(&c, "p-st-gone", "st3", "bill.created", json!({})).await;
    for id in ["st1", "st2"] {
        wait_event(&c, id, |ev| {
            attempts_of(ev, &a).len() == 1 && status_of(ev, &a) == "pending"
        })
        .await;
    }
    wait_dead_letters(&c, "", 1).await;

    let st = status(&c).await;
    assert_eq!(st["queue"]["pending"], 2, "{st:#}");
    assert_eq!(st["queue"]["retrying"], 2, "{st:#}");
    assert_eq!(st["queue"]["in_flight"], 0, "{st:#}");
    assert_eq!(st["dead_letters"], 1, "{st:#}");
    assert_eq!(st["totals"]["attempts_failed"], 3, "{st:#}");
    let ea = status_endpoint(&st, &a);
    assert_eq!(ea["health"], "failing", "{ea}");
    assert_eq!(ea["consecutive_failures"], 2, "{ea}");
    assert_eq!(ea["last_status_code"], 500, "{ea}");
    assert_eq!(ea["pending"], 2, "{ea}");
    assert!(
        ea["last_failure_at"].is_string() && ea["last_success_at"].is_null(),
        "{ea}"
    );
    let eg = status_endpoint(&st, &g);
    assert_eq!(eg["health"], "disabled", "{eg}");
    assert_eq!(eg["enabled"], false, "{eg}");
    assert_eq!(eg["last_status_code"], 410, "{eg}");

    // A success makes the endpoint healthy again; its two retrying deliveries still wait.
    failing.set_default(Answer::status(200));
    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{a}/test"),
            json!({"type": "audit.completed"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let test_id = body["event_id"].as_str().unwrap().to_string();
    wait_event(&c, &test_id, |ev| status_of(ev, &a) == "succeeded").await;
    let st = status(&c).await;
    let ea = status_endpoint(&st, &a);
    assert_eq!(ea["health"], "healthy", "{ea}");
    assert_eq!(ea["consecutive_failures"], 0, "{ea}");
    assert_eq!(ea["last_status_code"], 200, "{ea}");
    assert!(ea["last_success_at"].is_string(), "{ea}");
    assert_eq!(ea["pending"], 2, "{ea}");
    assert_eq!(st["queue"]["pending"], 2, "{st:#}");
    assert_eq!(st["queue"]["retrying"], 2, "{st:#}");
    assert_eq!(st["totals"]["deliveries_succeeded"], 1, "{st:#}");
    assert_eq!(st["dead_letters"], 1, "{st:#}");
}

/// Regression: retention used to scan sled inside the group transaction, which deadlocked the store
/// writer at the first pass (60 s after start by default) and with it every delivery.
#[tokio::test]
async fn deliveries_continue_across_retention_passes() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start_with(|c| {
        c.retention.interval = Duration::from_millis(100);
        c.retention.events = Duration::from_millis(1);
    })
    .await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-ret", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-ret", "ret1", "bill.created", json!({})).await;
    wait_event(&c, "ret1", |ev| status_of(ev, &ep) == "succeeded").await;
    // A retention pass ran: the delivered event is purged.
    let c2 = c.clone();
    wait_until_async(WAIT, move || {
        let c = c2.clone();
        async move { c.get("/v1/events/ret1").await.0 == StatusCode::NOT_FOUND }
    })
    .await;
    // And the store still takes changes: ingest answers and the event is delivered.
    let posted = tokio::time::timeout(
        WAIT,
        c.post_event("p-ret", "sandbox", "ret2", "bill.created", json!({})),
    )
    .await;
    let (code, body) =
        posted.expect("ingest hung after a retention pass: the store writer is stuck");
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(header(&got[1], "preflixai-event-id"), "ret2");
}

// ---------------------------------------------------------------------------------------------
// More of the issue's engine: wake-up, global limit, rate limit, disable_after, fresh redrive.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_ingested_event_is_attempted_at_once() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    c.create_endpoint("p-wake", "sandbox", &receiver.url("/h"), &["*"])
        .await;
    // The scheduler's idle sleep is up to 1 s: five prompt arrivals in a row do not happen by chance.
    for i in 0..5 {
        // Let the scheduler go idle first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        post_ok(&c, "p-wake", &format!("wake{i}"), "bill.created", json!({})).await;
        let acked = Instant::now();
        let got = receiver.wait_for(i + 1, WAIT).await;
        let latency = got[i].at.saturating_duration_since(acked);
        assert!(
            latency < Duration::from_millis(400),
            "event {i} was attempted {latency:?} after its 202"
        );
    }
}

#[tokio::test]
async fn global_max_in_flight_is_never_exceeded() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_millis(20)));
    let daemon = TestDaemon::start_with(|c| c.delivery.max_in_flight = 2).await;
    let c = daemon.client();
    for path in ["/1", "/2", "/3"] {
        c.create_endpoint("p-gmif", "sandbox", &receiver.url(path), &["*"])
            .await;
    }
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"partner_id": "p-gmif", "environment": "sandbox", "id": format!("gmif{i}"), "type": "audit.started", "data": {}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    receiver.wait_for(30, WAIT).await;
    assert_eq!(
        receiver.max_concurrent(),
        2,
        "delivery.max_in_flight = 2 across all endpoints"
    );
}

#[tokio::test]
async fn rate_limit_per_second_spaces_attempts() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    create_ep(
        &c,
        json!({"partner_id": "p-rate", "environment": "sandbox", "url": receiver.url("/r"), "event_types": ["*"], "rate_limit_per_second": 5}),
    )
    .await;
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"partner_id": "p-rate", "environment": "sandbox", "id": format!("rate{i}"), "type": "audit.started", "data": {}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let got = receiver.wait_for(10, WAIT).await;
    // At 5 per second, 10 attempts cannot fit in much less than a second, whatever the burst.
    let span = got[9].at - got[0].at;
    assert!(
        span >= Duration::from_millis(900),
        "10 attempts at 5/s took only {span:?}"
    );
    // And no second holds more than 5 beyond the first burst. Times are taken at the receiver, so
    // the first attempt's own delay (its connection is the first; on PostgreSQL the claim commits
    // before it is sent) is allowed for: 100 ms, half a token's time.
    for (i, r) in got.iter().enumerate().skip(5) {
        let since = r.at - got[0].at;
        let allowed =
            Duration::from_millis(200 * (i as u64 - 4)).saturating_sub(Duration::from_millis(100));
        assert!(
            since >= allowed,
            "attempt {} came {since:?} after the first",
            i + 1
        );
    }
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start_with(|c| {
        c.endpoints.disable_after = Duration::from_millis(150);
        c.retry.schedule = vec![Duration::from_millis(100); 5];
    })
    .await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-da", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-da", "da1", "bill.created", json!({})).await;
    let c2 = c.clone();
    let path = format!("/v1/endpoints/{ep}");
    wait_until_async(WAIT, move || {
        let (c, path) = (c2.clone(), path.clone());
        async move { c.get(&path).await.1["enabled"] == false }
    })
    .await;
    let (_, e) = c.get(&format!("/v1/endpoints/{ep}")).await;
    assert!(
        e["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("fail")),
        "{e}"
    );
    let n = receiver.count();
    assert!(
        n >= 2,
        "disabled after {n} attempts, before failing for 150 ms"
    );
    // Disabled: the delivery waits instead of being attempted on.
    still(&receiver, n, Duration::from_millis(400)).await;
    assert_eq!(status_of(&event(&c, "da1").await, &ep), "pending");
}

#[tokio::test]
async fn a_redriven_dead_letter_gets_a_fresh_set_of_attempts() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = ep_id(
        &c.create_endpoint("p-fresh", "sandbox", &receiver.url("/h"), &["*"])
            .await,
    );
    post_ok(&c, "p-fresh", "fresh1", "bill.created", json!({})).await;
    let first = wait_dead_letters(&c, "", 1).await.remove(0);
    let (code, _) = c
        .post(
            &format!("/v1/dead-letters/{}/retry", first["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    // Still failing: three more attempts (not one), then dead again with a new dead letter.
    let ev = wait_event(&c, "fresh1", |ev| {
        attempts_of(ev, &ep).len() == 6 && status_of(ev, &ep) == "dead"
    })
    .await;
    let second = wait_dead_letters(&c, "", 1).await.remove(0);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["attempts"], 3, "{second}");
    assert_eq!(
        second["first_attempt_at"],
        attempts_of(&ev, &ep)[3]["at"],
        "{second}"
    );
    assert_eq!(receiver.count(), 6);
}

/// Regression: the scheduler checked its claims after reading the queue, so an attempt that settled and
/// released its claim in between was dispatched again: a delivery already taken was sent twice.
/// Needs worker threads: attempts must finish while the scheduler is reading the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_succeeded_is_not_sent_again() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    for path in ["/1", "/2", "/3"] {
        c.create_endpoint("p-once", "sandbox", &receiver.url(path), &["*"])
            .await;
    }
    for batch in 0..4 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"partner_id": "p-once", "environment": "sandbox", "id": format!("once{batch}_{i}"), "type": "bill.created", "data": {}}))
            .collect();
        let (code, body) = c
            .post("/v1/events/batch", json!({ "events": events }))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    receiver.wait_for(1200, WAIT).await;
    still(&receiver, 1200, Duration::from_millis(200)).await;
    let mut seen = HashSet::new();
    let twice: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|r| (r.path.clone(), header(r, "preflixai-event-id").to_string()))
        .filter(|k| !seen.insert(k.clone()))
        .collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
}
