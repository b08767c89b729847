//! Partner tokens (contract section 9): minting, scoping of every route to one partner, expiry,
//! revocation, read-only and environment tokens, durability, and what the log says when it refuses one.

use crate::crash::{Daemon, DEFAULT_SETTINGS};
use crate::support::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// Mints a token with the admin client; returns the whole answer (with `token`).
async fn mint(admin: &Client, body: Value) -> Value {
    let (status, minted) = admin.post("/v1/tokens", body).await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    minted
}

fn token_of(minted: &Value) -> String {
    minted["token"].as_str().expect("the token").to_string()
}

/// Every dead letter the admin sees for `endpoint`, by id.
async fn dead_letters_of(admin: &Client, endpoint: &str) -> Vec<Value> {
    let (status, body) = admin
        .get(&format!(
            "/v1/dead-letters?endpoint_id={endpoint}&limit=1000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["dead_letters"].as_array().unwrap().clone()
}

async fn wait_dead_letters(admin: &Client, endpoint: &str, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while dead_letters_of(admin, endpoint).await.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} did not get {n} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows `next` through every page of a list (`field` holds the items, `cursor` is the query
/// parameter), asserting each page holds at most `limit`.
async fn all_pages(c: &Client, path: &str, field: &str, cursor: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let url = match &next {
            None => format!("{path}{sep}limit={limit}"),
            Some(n) => format!("{path}{sep}limit={limit}&{cursor}={n}"),
        };
        let (status, body) = c.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let page = body[field].as_array().unwrap();
        assert!(page.len() <= limit, "{url}: {body}");
        items.extend(page.iter().cloned());
        match body["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => return items,
        }
    }
}

/// Everything the admin can read about partner B: compared before and after partner A's walk.
async fn snapshot_of_b(admin: &Client, endpoints: &[String], events: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for ep in endpoints {
        let (_, view) = admin.get(&format!("/v1/endpoints/{ep}")).await;
        let (_, secret) = admin.get(&format!("/v1/endpoints/{ep}/secret")).await;
        let (_, stats) = admin.get(&format!("/v1/endpoints/{ep}/stats")).await;
        let dead = dead_letters_of(admin, ep).await;
        out.insert(
            ep.clone(),
            json!({"view": view, "secret": secret, "dead": dead,
                   "attempts": [stats["succeeded"], stats["failed"]]}),
        );
    }
    for ev in events {
        let (status, mut event) = admin.get(&format!("/v1/events/{ev}")).await;
        assert_eq!(status, StatusCode::OK, "{event}");
        // Only what A could change: the deliveries and their status, not `next_attempt_at` timing.
        for d in event["deliveries"].as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("next_attempt_at");
        }
        out.insert(ev.clone(), event);
    }
    Value::Object(out)
}

fn assert_status(what: &str, got: (StatusCode, Value), expected: StatusCode, code: &str) {
    assert_eq!(got.0, expected, "{what}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{what}: {}", got.1);
}

/// The walk of every route of contract sections 4 and 9 with a partner token for A, while B has
/// endpoints, events and dead letters: nothing of B is shown, counted, paged through or changed.
#[tokio::test]
async fn a_partner_token_sees_and_changes_only_its_own_partner() {
    let good = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(500));
    let daemon = TestDaemon::start().await;
    let admin = daemon.client();

    // A: a production endpoint that works and one that fails, and a sandbox one. B: the same.
    let a_ok = id(&admin
        .create_endpoint("partner-a", "production", &good.url("/a"), &["*"])
        .await);
    let a_dead = id(&admin
        .create_endpoint(
            "partner-a",
            "production",
            &failing.url("/a-dead"),
            &["bill.created"],
        )
        .await);
    let a_sandbox = id(&admin
        .create_endpoint("partner-a", "sandbox", &good.url("/a-sandbox"), &["*"])
        .await);
    let b_ok = id(&admin
        .create_endpoint("partner-b", "production", &good.url("/b"), &["*"])
        .await);
    let b_dead = id(&admin
        .create_endpoint(
            "partner-b",
            "production",
            &failing.url("/b-dead"),
            &["bill.created"],
        )
        .await);
    let b_endpoints = vec![b_ok.clone(), b_dead.clone()];

    // Events interleaved, so A's pages sit between B's: 5 of A's and 5 of B's reach a dead end.
    let mut a_events = Vec::new();
    let mut b_events = Vec::new();
    for i in 0..5 {
        for (partner, list) in [("partner-a", &mut a_events), ("partner-b", &mut b_events)] {
            let ev = format!("evt_{partner}_{i}");
            let (status, body) = admin
                .post_event(partner, "production", &ev, "bill.created", json!({"i": i}))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            list.push(ev);
        }
    }
    let (status, body) = admin
        .post_event(
            "partner-a",
            "sandbox",
            "evt_a_sandbox",
            "audit.completed",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    a_events.push("evt_a_sandbox".to_string());
    wait_dead_letters(&admin, &a_dead, 5).await;
    wait_dead_letters(&admin, &b_dead, 5).await;
    good.wait_for(11, WAIT).await;
    let b_dead_letters: Vec<String> = dead_letters_of(&admin, &b_dead)
        .await
        .iter()
        .map(id)
        .collect();
    let before = snapshot_of_b(&admin, &b_endpoints, &b_events).await;

    let minted = mint(
        &admin,
        json!({"partner_id": "partner-a", "description": "the walk"}),
    )
    .await;
    let a = admin.with_token(&token_of(&minted));

    // Whoami.
    let (status, me) = a.get("/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["kind"], "partner");
    assert_eq!(me["partner_id"], "partner-a");
    assert_eq!(me["token_id"], minted["id"]);

    // Endpoints: the list is A's, B's ids answer as unknown ones on every route.
    let (status, list) = a.get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let seen: BTreeSet<String> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    let expected: BTreeSet<String> = [a_ok.clone(), a_dead.clone(), a_sandbox.clone()].into();
    assert_eq!(seen, expected);
    let (_, list) = a.get("/v1/endpoints?partner_id=partner-b").await;
    assert_eq!(list["endpoints"], json!([]), "{list}");
    for ep in &b_endpoints {
        for path in ["", "/secret", "/stats"] {
            assert_status(
                &format!("GET {ep}{path}"),
                a.get(&format!("/v1/endpoints/{ep}{path}")).await,
                StatusCode::NOT_FOUND,
                "not_found",
            );
        }
        assert_status(
            "PATCH",
            a.patch(
                &format!("/v1/endpoints/{ep}"),
                json!({"description": "mine"}),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        for (action, body) in [
            ("rotate-secret", json!({})),
            ("disable", json!({})),
            ("enable", json!({})),
            ("test", json!({"type": "bill.created"})),
            ("recover", json!({"since": "2000-01-01T00:00:00Z"})),
        ] {
            assert_status(
                action,
                a.post(&format!("/v1/endpoints/{ep}/{action}"), body).await,
                StatusCode::NOT_FOUND,
                "not_found",
            );
        }
        assert_status(
            "DELETE",
            a.delete(&format!("/v1/endpoints/{ep}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_status(
        "create for B",
        a.post(
            "/v1/endpoints",
            json!({"partner_id": "partner-b", "url": good.url("/x"), "event_types": ["*"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Without a partner_id, an endpoint is made for the token's partner.
    let (status, own) = a
        .post(
            "/v1/endpoints",
            json!({"url": good.url("/a-new"), "event_types": ["audit.completed"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    assert_eq!(own["partner_id"], "partner-a");
    assert!(own["secret"].as_str().unwrap().starts_with("whsec_"));
    let a_new = id(&own);

    // A's own endpoint: every route works.
    let (status, _) = a.get(&format!("/v1/endpoints/{a_ok}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = a.get(&format!("/v1/endpoints/{a_ok}/secret")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, stats) = a.get(&format!("/v1/endpoints/{a_ok}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert!(stats["succeeded"].as_u64().unwrap() >= 5, "{stats}");
    let (status, body) = a
        .patch(
            &format!("/v1/endpoints/{a_new}"),
            json!({"description": "mine"}),
        )
        .await;
    assert_eq!(
        (status, &body["description"]),
        (StatusCode::OK, &json!("mine"))
    );
    for (action, body, expected) in [
        ("rotate-secret", json!({"grace_seconds": 0}), StatusCode::OK),
        ("disable", json!({}), StatusCode::OK),
        ("enable", json!({}), StatusCode::OK),
        (
            "test",
            json!({"type": "audit.completed"}),
            StatusCode::ACCEPTED,
        ),
        (
            "recover",
            json!({"since": "2000-01-01T00:00:00Z"}),
            StatusCode::ACCEPTED,
        ),
    ] {
        let (status, body) = a
            .post(&format!("/v1/endpoints/{a_new}/{action}"), body)
            .await;
        assert_eq!(status, expected, "{action}: {body}");
    }

    // Events: B's answer 404 (reading and redelivering), and B's endpoint cannot be named.
    for ev in &b_events {
        assert_status(
            "GET event",
            a.get(&format!("/v1/events/{ev}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_status(
            "redeliver",
            a.post(&format!("/v1/events/{ev}/redeliver"), json!({}))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_status(
        "redeliver to B",
        a.post(
            &format!("/v1/events/{}/redeliver", a_events[0]),
            json!({"endpoint_id": b_ok}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, body) = a.get(&format!("/v1/events/{}", a_events[0])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = a
        .post(
            &format!("/v1/events/{}/redeliver", a_events[0]),
            json!({"endpoint_id": a_ok}),
        )
        .await;
    assert_eq!(
        (status, &body["deliveries"]),
        (StatusCode::ACCEPTED, &json!(1)),
        "{body}"
    );
    // The events list, a page of 2 at a time: A's (the test event included), never B's.
    let listed: Vec<String> = all_pages(&a, "/v1/events", "events", "before", 2)
        .await
        .iter()
        .map(id)
        .collect();
    assert!(
        listed.iter().all(|e| !e.contains("partner-b")),
        "{listed:?}"
    );
    for ev in &a_events {
        assert!(listed.contains(ev), "{ev} missing from {listed:?}");
    }
    let (_, body) = a.get(&format!("/v1/events?endpoint_id={b_ok}")).await;
    assert_eq!(body["events"], json!([]), "{body}");
    // Posting events is the admin's.
    assert_status(
        "POST event",
        a.post_event(
            "partner-a",
            "production",
            "evt_by_a",
            "bill.created",
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_status(
        "POST batch",
        a.post("/v1/events/batch", json!({"events": []})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, _) = a.get("/v1/event-types").await;
    assert_eq!(status, StatusCode::OK);

    // Dead letters: paged one at a time, A's five only; B's ids answer 404.
    let pages = all_pages(&a, "/v1/dead-letters", "dead_letters", "after", 1).await;
    assert_eq!(pages.len(), 5, "{pages:?}");
    assert!(pages
        .iter()
        .all(|dl| dl["partner_id"] == "partner-a" && dl["endpoint_id"] == a_dead.as_str()));
    let (_, body) = a
        .get(&format!("/v1/dead-letters?endpoint_id={b_dead}"))
        .await;
    assert_eq!(body["dead_letters"], json!([]), "{body}");
    for dl in &b_dead_letters {
        assert_status(
            "retry B's",
            a.post(&format!("/v1/dead-letters/{dl}/retry"), json!({}))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_status(
            "delete B's",
            a.delete(&format!("/v1/dead-letters/{dl}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let (status, body) = a
        .post("/v1/dead-letters/retry", json!({"endpoint_id": b_dead}))
        .await;
    assert_eq!(
        (status, &body["requeued"]),
        (StatusCode::ACCEPTED, &json!(0)),
        "{body}"
    );
    // "Retry all" retries A's five, and counts only them.
    let (status, body) = a.post("/v1/dead-letters/retry", json!({})).await;
    assert_eq!(
        (status, &body["requeued"]),
        (StatusCode::ACCEPTED, &json!(5)),
        "{body}"
    );
    wait_dead_letters(&admin, &a_dead, 5).await;
    let one = id(&dead_letters_of(&a, &a_dead).await[0]);
    let (status, _) = a
        .post(&format!("/v1/dead-letters/{one}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_dead_letters(&admin, &a_dead, 5).await;
    let one = id(&dead_letters_of(&a, &a_dead).await[0]);
    let (status, _) = a.delete(&format!("/v1/dead-letters/{one}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The admin's routes.
    for (method, path) in [
        (Method::GET, "/status"),
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/tokens"),
        (Method::POST, "/v1/tokens"),
        (Method::DELETE, "/v1/tokens/tok_0000000000000001"),
    ] {
        let body = (method == Method::POST)
            .then(|| json!({"partner_id": "partner-a"}).to_string().into_bytes());
        let got = a.json(method.clone(), path, body).await;
        assert_status(
            &format!("{method} {path}"),
            got,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }

    // A's own deletion works; then B is exactly as it was.
    let (status, _) = a.delete(&format!("/v1/endpoints/{a_new}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = snapshot_of_b(&admin, &b_endpoints, &b_events).await;
    assert_eq!(before, after);
    let (_, admin_list) = admin.get("/v1/dead-letters?limit=1000").await;
    assert_eq!(
        admin_list["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|dl| dl["partner_id"] == "partner-b")
            .count(),
        5
    );
}

/// Bad mint requests are 400 `invalid_request`; an expired, revoked, malformed or unknown token is
/// 401 `unauthorized`; the list never shows a token and marks each one's status.
#[tokio::test]
async fn expired_revoked_malformed_and_unknown_tokens_are_refused() {
    let daemon = TestDaemon::start().await;
    let admin = daemon.client();
    for body in [
        json!({}),
        json!({"partner_id": "a b"}),
        json!({"partner_id": "a", "environment": "staging"}),
        json!({"partner_id": "a", "ttl": "0s"}),
        json!({"partner_id": "a", "ttl": "366d"}),
        json!({"partner_id": "a", "ttl": "soon"}),
        json!({"partner_id": "a", "ttl": 30}),
        json!({"partner_id": "a", "read_only": "yes"}),
        json!({"partner_id": "a", "scopes": ["all"]}),
    ] {
        assert_status(
            &body.to_string(),
            admin.post("/v1/tokens", body.clone()).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let long = mint(&admin, json!({"partner_id": "a"})).await;
    assert!(long["id"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(long["environment"], Value::Null);
    assert_eq!(long["read_only"], false);
    let token = token_of(&long);
    assert_eq!(token.len(), 4 + 64);
    assert!(token.starts_with("pft_"));
    // Default lifetime: 30 days.
    let created =
        preflix_webhookd::model::parse_time(long["created_at"].as_str().unwrap()).unwrap();
    let expires =
        preflix_webhookd::model::parse_time(long["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, 30 * 86_400_000);

    let short = mint(&admin, json!({"partner_id": "a", "ttl": "1s"})).await;
    let short_client = admin.with_token(&token_of(&short));
    let (status, _) = short_client.get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_status(
        "expired",
        short_client.get("/v1/endpoints").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let revoked = mint(&admin, json!({"partner_id": "a"})).await;
    let revoked_client = admin.with_token(&token_of(&revoked));
    let (status, _) = revoked_client.get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = admin.delete(&format!("/v1/tokens/{}", id(&revoked))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_status(
        "revoked",
        revoked_client.get("/v1/endpoints").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_status(
        "unknown token id",
        admin.delete("/v1/tokens/tok_00000000deadbeef").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    for bad in [
        "pft_".to_string(),
        format!("pft_{}", "g".repeat(64)),
        format!("pft_{}", "A".repeat(64)),
        format!("{}x", token),
        format!("pft_{}", "0".repeat(64)),
        token.trim_start_matches("pft_").to_string(),
    ] {
        assert_status(
            &bad,
            admin.with_token(&bad).get("/v1/endpoints").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // The long-lived one still works.
    let (status, _) = admin.with_token(&token).get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::OK);

    let (status, list) = admin.get("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let text = list.to_string();
    for t in [&token, &token_of(&short), &token_of(&revoked)] {
        assert!(!text.contains(t.as_str()), "the list shows a token: {text}");
        assert!(!text.contains(t.trim_start_matches("pft_")), "{text}");
    }
    let status_of = |tok: &Value| {
        list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == tok["id"])
            .map(|t| t["status"].clone())
    };
    assert_eq!(status_of(&long), Some(json!("active")));
    assert_eq!(status_of(&short), Some(json!("expired")));
    assert_eq!(status_of(&revoked), Some(json!("revoked")));
    let (_, other) = admin.get("/v1/tokens?partner_id=b").await;
    assert_eq!(other["tokens"], json!([]));
}

/// A read-only token reads its partner's data and changes nothing: every change is 403.
#[tokio::test]
async fn a_read_only_token_changes_nothing() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let daemon = TestDaemon::start().await;
    let admin = daemon.client();
    let ep = id(&admin
        .create_endpoint("partner-a", "production", &receiver.url("/a"), &["*"])
        .await);
    let (status, _) = admin
        .post_event(
            "partner-a",
            "production",
            "evt_ro",
            "bill.created",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_dead_letters(&admin, &ep, 1).await;
    let dl = id(&dead_letters_of(&admin, &ep).await[0]);
    let minted = mint(
        &admin,
        json!({"partner_id": "partner-a", "read_only": true}),
    )
    .await;
    assert_eq!(minted["read_only"], true);
    let ro = admin.with_token(&token_of(&minted));
    for path in [
        "/v1/endpoints".to_string(),
        format!("/v1/endpoints/{ep}"),
        format!("/v1/endpoints/{ep}/secret"),
        format!("/v1/endpoints/{ep}/stats"),
        "/v1/events/evt_ro".to_string(),
        "/v1/events".to_string(),
        "/v1/dead-letters".to_string(),
        "/v1/whoami".to_string(),
    ] {
        let (status, body) = ro.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let changes: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1/endpoints".into(),
            json!({"url": receiver.url("/x"), "event_types": ["*"]}),
        ),
        (
            Method::PATCH,
            format!("/v1/endpoints/{ep}"),
            json!({"description": "x"}),
        ),
        (Method::DELETE, format!("/v1/endpoints/{ep}"), Value::Null),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/rotate-secret"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/disable"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/enable"),
            json!({}),
        ),
        (Method::POST, format!("/v1/endpoints/{ep}/test"), json!({})),
        (
            Method::POST,
            format!("/v1/endpoints/{ep}/recover"),
            json!({"since": "2000-01-01T00:00:00Z"}),
        ),
        (
            Method::POST,
            "/v1/events/evt_ro/redeliver".into(),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/dead-letters/{dl}/retry"),
            json!({}),
        ),
        (Method::POST, "/v1/dead-letters/retry".into(), json!({})),
        (
            Method::DELETE,
            format!("/v1/dead-letters/{dl}"),
            Value::Null,
        ),
    ];
    let (_, secret_before) = admin.get(&format!("/v1/endpoints/{ep}/secret")).await;
    for (method, path, body) in changes {
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        let got = ro.json(method.clone(), &path, body).await;
        assert_status(
            &format!("{method} {path}"),
            got,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    let (_, view) = admin.get(&format!("/v1/endpoints/{ep}")).await;
    assert_eq!(view["enabled"], true);
    assert_eq!(view["description"], "");
    let (_, secret_after) = admin.get(&format!("/v1/endpoints/{ep}/secret")).await;
    assert_eq!(secret_before, secret_after);
    assert_eq!(dead_letters_of(&admin, &ep).await.len(), 1);
    let (_, event) = admin.get("/v1/events/evt_ro").await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
}

/// A token naming an environment sees that environment of its partner only, and makes endpoints
/// there only.
#[tokio::test]
async fn an_environment_token_sees_one_environment() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let admin = daemon.client();
    let sandbox = id(&admin
        .create_endpoint("partner-a", "sandbox", &receiver.url("/s"), &["*"])
        .await);
    let production = id(&admin
        .create_endpoint("partner-a", "production", &receiver.url("/p"), &["*"])
        .await);
    for (env, ev) in [("sandbox", "evt_s"), ("production", "evt_p")] {
        let (status, _) = admin
            .post_event("partner-a", env, ev, "bill.created", json!({}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    receiver.wait_for(2, WAIT).await;
    let minted = mint(
        &admin,
        json!({"partner_id": "partner-a", "environment": "sandbox"}),
    )
    .await;
    assert_eq!(minted["environment"], "sandbox");
    let s = admin.with_token(&token_of(&minted));
    let (_, list) = s.get("/v1/endpoints").await;
    let seen: Vec<String> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(seen, vec![sandbox.clone()]);
    assert_status(
        "production endpoint",
        s.get(&format!("/v1/endpoints/{production}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_status(
        "production event",
        s.get("/v1/events/evt_p").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, _) = s.get("/v1/events/evt_s").await;
    assert_eq!(status, StatusCode::OK);
    let (_, events) = s.get("/v1/events").await;
    let listed: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(listed, vec!["evt_s".to_string()]);
    assert_status(
        "create in production",
        s.post(
            "/v1/endpoints",
            json!({"environment": "production", "url": receiver.url("/x"), "event_types": ["*"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, made) = s
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url("/y"), "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["environment"], "sandbox");
    assert_eq!(made["partner_id"], "partner-a");
}

/// A minted token is on stable storage when the 201 comes, and so is a revocation when the 204
/// does: both hold after SIGKILL and a restart of the real binary. No store file holds a token.
#[tokio::test]
async fn tokens_and_revocations_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let admin = daemon.client.clone();
    let kept = mint(&admin, json!({"partner_id": "partner-a"})).await;
    let revoked = mint(&admin, json!({"partner_id": "partner-a"})).await;
    let (status, _) = admin.delete(&format!("/v1/tokens/{}", id(&revoked))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    daemon.kill9();
    // Stored as a hash only: no file of the store holds a token, in text or in bytes.
    for t in [&kept, &revoked] {
        let text = token_of(t);
        let hex = text.trim_start_matches("pft_");
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // sled's files; on PostgreSQL the suite's database has no files of its own to search.
        let files = if on_postgres() {
            Vec::new()
        } else {
            walk(&dir.path().join("db"))
        };
        for file in files {
            let content = std::fs::read(&file).unwrap();
            for needle in [text.as_bytes(), hex.as_bytes(), &bytes[..]] {
                assert!(
                    !content.windows(needle.len()).any(|w| w == needle),
                    "{} holds a token",
                    file.display()
                );
            }
        }
    }
    daemon.restart().await;
    let admin = daemon.client.clone();
    let (status, me) = admin.with_token(&token_of(&kept)).get("/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["token_id"], kept["id"]);
    assert_status(
        "revoked after restart",
        admin
            .with_token(&token_of(&revoked))
            .get("/v1/whoami")
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

/// The daemon's log names a refused token by its id (revoked, expired) and never holds a token.
#[tokio::test]
async fn a_refusal_is_logged_with_the_token_id_and_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let admin = daemon.client.clone();
    let revoked = mint(&admin, json!({"partner_id": "partner-a"})).await;
    let expired = mint(&admin, json!({"partner_id": "partner-a", "ttl": "1s"})).await;
    let (status, _) = admin.delete(&format!("/v1/tokens/{}", id(&revoked))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for t in [&revoked, &expired] {
        let (status, _) = admin.with_token(&token_of(t)).get("/v1/endpoints").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let malformed = format!("pft_{}", "Z".repeat(64));
    let (status, _) = admin.with_token(&malformed).get("/v1/endpoints").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let log_path = dir.path().join("daemon.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(WAIT, || {
        let log = read_log();
        log.contains("refused an expired partner token") && log.contains("malformed")
    })
    .await;
    let log = read_log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in the log:\n{log}"))
            .to_string()
    };
    assert!(
        line("refused a revoked partner token").contains(&id(&revoked)),
        "{log}"
    );
    assert!(
        line("refused an expired partner token").contains(&id(&expired)),
        "{log}"
    );
    for t in [&revoked, &expired] {
        let token = token_of(t);
        assert!(!log.contains(&token), "the log holds a token:\n{log}");
        assert!(!log.contains(token.trim_start_matches("pft_")), "{log}");
    }
    assert!(!log.contains(&malformed), "{log}");
    assert!(!log.contains(&admin.token), "the log holds the admin token");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Two nodes on one PostgreSQL database: a token minted on one works on the other, and its
/// revocation on the other is refused by the first at the next request (no node keeps a copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_is_refused_by_every_node() {
    let pg = std::sync::Arc::new(crate::support::pg::PgCluster::start());
    let url = pg.create_db();
    let one = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |_| {}).await;
    let two = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |_| {}).await;
    let minted = mint(&one.client(), json!({"partner_id": "partner-a"})).await;
    let on_one = one.client().with_token(&token_of(&minted));
    let on_two = two.client().with_token(&token_of(&minted));
    for c in [&on_one, &on_two] {
        let (status, me) = c.get("/v1/whoami").await;
        assert_eq!(
            (status, &me["token_id"]),
            (StatusCode::OK, &minted["id"]),
            "{me}"
        );
    }
    let (status, _) = two
        .client()
        .delete(&format!("/v1/tokens/{}", id(&minted)))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for c in [&on_one, &on_two] {
        assert_status(
            "revoked on the other node",
            c.get("/v1/whoami").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
}
