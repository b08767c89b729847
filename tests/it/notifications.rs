//! Operator notifications (contract section 10): each type reaches a real receiver, signed with the notification secret, never a partner's endpoint; grouping; failing spells across a restart; a stalled scheduler.

use crate::support::*;
use hyper::StatusCode;
use preflix_webhookd::signing::{Secret, Verifier};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A daemon whose notifications go to `ops`, with `change` applied on top.
async fn start(
    ops: &TestReceiver,
    change: impl FnOnce(&mut preflix_webhookd::config::Config),
) -> TestDaemon {
    let url = ops.url("/ops");
    TestDaemon::start_with(move |c| {
        c.notifications.url = Some(url);
        change(c);
    })
    .await
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The notifications received so far: (type, data), each checked against the notification secret.
/// The notification secret a daemon generated: a file in `storage.dir` on sled, a setting in the
/// database (the same for every node) on PostgreSQL; `None` when none was made.
async fn generated_secret(config: &preflix_webhookd::config::Config) -> Option<String> {
    match &config.storage.postgres.url {
        Some(url) if on_postgres() => pg_setting(url, "notifications_secret").await,
        _ => std::fs::read_to_string(config.storage.dir.join("notifications.secret")).ok(),
    }
}

/// [`generated_secret`] of a real binary started on `storage_toml(dir)`.
async fn generated_secret_in(dir: &std::path::Path) -> Option<String> {
    match std::fs::read_to_string(dir.join("pg.url")) {
        Ok(url) if on_postgres() => pg_setting(&url, "notifications_secret").await,
        _ => std::fs::read_to_string(dir.join("db/notifications.secret")).ok(),
    }
}

async fn notices(ops: &TestReceiver, daemon: &TestDaemon) -> Vec<(String, Value)> {
    let text = generated_secret(&daemon.config)
        .await
        .expect("the notification secret was generated");
    let verifier = Verifier::new(vec![Secret::parse(&text).unwrap()]);
    ops.received()
        .iter()
        .map(|r| {
            verifier
                .verify(&r.headers, &r.body, now_secs())
                .expect("a notification verifies with the notification secret");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(r.path, "/ops");
            assert!(body["id"].as_str().unwrap().starts_with("ntf_"), "{body}");
            (
                body["type"].as_str().unwrap().to_string(),
                body["data"].clone(),
            )
        })
        .collect()
}

fn of_type(list: &[(String, Value)], t: &str) -> Vec<Value> {
    list.iter()
        .filter(|(ty, _)| ty == t)
        .map(|(_, d)| d.clone())
        .collect()
}

async fn wait_notice(ops: &TestReceiver, daemon: &TestDaemon, t: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some(d) = of_type(&notices(ops, daemon).await, t).into_iter().next() {
            return d;
        }
        assert!(
            start.elapsed() < WAIT,
            "no {t} within {WAIT:?}: {:?}",
            notices(ops, daemon).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 410 disables the endpoint and dead-letters the delivery: `endpoint.disabled` and
/// `delivery.dead_lettered` reach the notification URL, signed with the notification secret; the
/// partner gets its own event only, the operator endpoint is in no listing, and partner events
/// never reach the notification URL.
#[tokio::test]
async fn disabled_and_dead_lettered_reach_the_operator_and_never_a_partner() {
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    partner.set_default(Answer::status(410));
    let daemon = start(&ops, |_| {}).await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_string();
    let (code, _) = c
        .post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);

    let disabled = wait_notice(&ops, &daemon, "endpoint.disabled").await;
    assert_eq!(disabled["endpoint_id"], ep_id.as_str());
    assert_eq!(disabled["partner_id"], "acme");
    assert_eq!(disabled["last_status_code"], 410);
    assert!(
        disabled["reason"].as_str().unwrap().contains("410"),
        "{disabled}"
    );
    let dead = wait_notice(&ops, &daemon, "delivery.dead_lettered").await;
    assert_eq!(dead["count"], 1);
    assert_eq!(dead["endpoints"][0]["endpoint_id"], ep_id.as_str());
    assert_eq!(dead["endpoints"][0]["count"], 1);
    let (_, dls) = c.get("/v1/dead-letters").await;
    assert_eq!(
        dead["endpoints"][0]["sample_dead_letter_ids"][0],
        dls["dead_letters"][0]["id"]
    );

    // The partner saw its event only; no notification went to it.
    for r in partner.received() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], "evt_1");
    }
    // The operator endpoint is nobody's to see or change, nor can a partner event reach it.
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1, "{list}");
    let (_, status) = c.get("/status").await;
    assert_eq!(status["endpoints"].as_array().unwrap().len(), 1, "{status}");
    let (code, _) = c
        .post_event(
            "@operator",
            "production",
            "evt_2",
            "audit.completed",
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // A hidden endpoint answers 404 on every route.
    for n in 1..=ep["id"]
        .as_str()
        .and_then(|id| u64::from_str_radix(&id[3..], 16).ok())
        .unwrap()
    {
        let id = format!("ep_{n:016x}");
        if id != ep_id {
            assert_eq!(
                c.get(&format!("/v1/endpoints/{id}")).await.0,
                StatusCode::NOT_FOUND
            );
        }
    }
}

/// Many dead letters within the window make one notification with their counts, not one each.
#[tokio::test]
async fn dead_letters_are_grouped_at_most_one_notification_per_window() {
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    partner.set_default(Answer::status(500));
    let window = Duration::from_secs(3);
    let daemon = start(&ops, |c| {
        c.test_hooks.dead_letter_window = Some(window);
        c.retry.schedule = vec![];
    })
    .await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    for i in 0..12 {
        let (code, _) = c
            .post_event(
                "acme",
                "production",
                &format!("evt_{i}"),
                "audit.completed",
                json!({}),
            )
            .await;
        assert_eq!(code, StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let start = Instant::now();
    let groups = loop {
        let groups = of_type(&notices(&ops, &daemon).await, "delivery.dead_lettered");
        let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
        if total == 12 {
            break groups;
        }
        assert!(total < 12 && start.elapsed() < WAIT, "{groups:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 12 dead letters over 3 s: at most 2 notifications (one at once, one a window later).
    assert!((1..=2).contains(&groups.len()), "{groups:?}");
    for g in &groups {
        assert_eq!(g["endpoints"][0]["endpoint_id"], ep["id"]);
        assert!(
            g["endpoints"][0]["sample_dead_letter_ids"]
                .as_array()
                .unwrap()
                .len()
                <= 5
        );
    }
    let at: Vec<Instant> = ops.received().iter().map(|r| r.at).collect();
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= window - Duration::from_millis(500),
            "{at:?}"
        );
    }
}

/// `endpoint.failing` once per spell, also across a restart in the middle of it, and
/// `endpoint.recovered` at the first success after it.
#[tokio::test]
async fn a_failing_spell_is_told_once_across_a_restart_and_its_end_once() {
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    partner.set_default(Answer::status(500));
    let mut daemon = start(&ops, |c| {
        c.test_hooks.failing_after = Some(Duration::from_secs(1));
        c.retry.schedule = vec![Duration::from_millis(300); 400];
    })
    .await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    c.post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    let failing = wait_notice(&ops, &daemon, "endpoint.failing").await;
    assert_eq!(failing["endpoint_id"], ep["id"]);
    assert_eq!(failing["last_status_code"], 500);
    assert!(failing.get("last_error").is_some(), "{failing}");
    assert!(failing["consecutive_failures"].as_u64().unwrap() >= 1);

    daemon.restart().await;
    // Still failing after the restart, for several rounds: no second `endpoint.failing`.
    let failures = partner.count();
    wait_until(WAIT, || partner.count() >= failures + 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        of_type(&notices(&ops, &daemon).await, "endpoint.failing").len(),
        1
    );

    partner.set_default(Answer::status(200));
    let recovered = wait_notice(&ops, &daemon, "endpoint.recovered").await;
    assert_eq!(recovered["endpoint_id"], ep["id"]);
    assert!(
        recovered["failed_for_seconds"].as_u64().unwrap() >= 2,
        "{recovered}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = notices(&ops, &daemon).await;
    assert_eq!(of_type(&all, "endpoint.failing").len(), 1, "{all:?}");
    assert_eq!(of_type(&all, "endpoint.recovered").len(), 1, "{all:?}");
}

/// With the partners' scheduler stalled, `queue.stalled` is decided from the store's oldest
/// pending delivery and reaches the operator while the stall lasts (notifications have a scheduler
/// of their own); once the scheduler runs again, `queue.recovered`.
#[tokio::test]
async fn a_stalled_scheduler_is_told_from_the_store_while_it_stalls() {
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    let daemon = start(&ops, |c| {
        c.notifications.stalled_after = Duration::from_secs(2);
    })
    .await;
    let pause = daemon.config.test_hooks.pause_scheduler.clone();
    let c = daemon.client();
    c.create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    pause.store(true, Ordering::SeqCst);
    let posted = Instant::now();
    let (code, _) = c
        .post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let stalled = wait_notice(&ops, &daemon, "queue.stalled").await;
    assert!(posted.elapsed() >= Duration::from_secs(2));
    assert!(
        stalled["oldest_pending_age_seconds"].as_u64().unwrap() >= 2,
        "{stalled}"
    );
    assert!(stalled["pending"].as_u64().unwrap() >= 1, "{stalled}");
    // Still stalled: the partner got nothing, and no second `queue.stalled` follows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(partner.count(), 0);
    assert_eq!(
        of_type(&notices(&ops, &daemon).await, "queue.stalled").len(),
        1
    );
    pause.store(false, Ordering::SeqCst);
    partner.wait_for(1, WAIT).await;
    let recovered = wait_notice(&ops, &daemon, "queue.recovered").await;
    assert_eq!(recovered["pending"], 0, "{recovered}");
    assert_eq!(
        recovered["oldest_pending_age_seconds"],
        Value::Null,
        "{recovered}"
    );
}

/// Without `notifications.url` no secret file is made and nothing is sent; emptying it turns off
/// a daemon that sent them (its operator endpoint is deleted).
#[tokio::test]
async fn notifications_off_make_no_secret_and_send_nothing() {
    let ops = TestReceiver::start().await;
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    let mut daemon = start(&ops, |_| {}).await;
    assert!(generated_secret(&daemon.config).await.is_some());
    daemon.config.notifications.url = None;
    daemon.restart().await;
    let c = daemon.client();
    c.create_endpoint("acme", "production", &gone.url("/g"), &["*"])
        .await;
    c.post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    wait_until_async(WAIT, || async {
        c.get("/v1/dead-letters").await.1["dead_letters"]
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ops.count(), 0);
    let (_, status) = c.get("/status").await;
    assert_eq!(status["queue"]["pending"], 0, "{status}");
    let other = TestDaemon::start().await;
    assert!(generated_secret(&other.config).await.is_none());
}

/// A notification URL that hangs holds at most its own few slots: partner deliveries go on.
#[tokio::test]
async fn a_slow_notification_url_takes_no_capacity_from_partners() {
    let ops = TestReceiver::start().await;
    ops.set_default(Answer::status(200).delay(Duration::from_secs(30)));
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    let good = TestReceiver::start().await;
    let daemon = start(&ops, |c| {
        c.delivery.max_in_flight = 8;
        c.delivery.timeout = Duration::from_secs(40);
    })
    .await;
    let c = daemon.client();
    for _ in 0..10 {
        c.create_endpoint("gone", "production", &gone.url("/g"), &["*"])
            .await;
    }
    c.create_endpoint("good", "production", &good.url("/ok"), &["*"])
        .await;
    c.post_event("gone", "production", "evt_g", "audit.completed", json!({}))
        .await;
    // Eleven notifications (ten endpoints disabled, their dead letters) now wait on the slow URL.
    wait_until(WAIT, || ops.in_progress() >= 3).await;
    let started = Instant::now();
    for i in 0..20 {
        let (code, _) = c
            .post_event(
                "good",
                "production",
                &format!("evt_{i}"),
                "audit.completed",
                json!({}),
            )
            .await;
        assert_eq!(code, StatusCode::ACCEPTED);
    }
    good.wait_for(20, Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(ops.max_concurrent() <= 4, "{}", ops.max_concurrent());
}

/// Dead letters gathered inside the minute survive a SIGKILL: after the restart their group still
/// goes out, and the counts add up to the dead letters, once each.
#[tokio::test]
async fn grouped_dead_letters_survive_kill9_inside_the_minute() {
    use crate::crash::{Daemon, Settings, DEFAULT_SETTINGS};
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    partner.set_default(Answer::status(500));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[notifications]\nurl = \"{}\"\n", ops.url("/ops"));
    let settings = Settings {
        retry_schedule: "[]",
        extra: Box::leak(extra.into_boxed_str()),
        ..DEFAULT_SETTINGS
    };
    let mut daemon = Daemon::start(dir.path(), settings).await;
    let c = daemon.client.clone();
    c.create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    c.post_event("acme", "production", "evt_0", "audit.completed", json!({}))
        .await;
    wait_until(WAIT, || ops.count() >= 1).await;
    for i in 1..4 {
        c.post_event(
            "acme",
            "production",
            &format!("evt_{i}"),
            "audit.completed",
            json!({}),
        )
        .await;
    }
    wait_until_async(WAIT, || async {
        c.get("/v1/dead-letters").await.1["dead_letters"]
            .as_array()
            .unwrap()
            .len()
            == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.kill9();
    daemon.restart().await;
    // The second group waits for the end of the minute that began with the first.
    wait_until(Duration::from_secs(120), || ops.count() >= 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret = generated_secret_in(dir.path()).await.unwrap();
    let verifier = Verifier::new(vec![Secret::parse(&secret).unwrap()]);
    let mut total = 0;
    for r in ops.received() {
        verifier.verify(&r.headers, &r.body, now_secs()).unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "delivery.dead_lettered", "{body}");
        total += body["data"]["count"].as_u64().unwrap();
    }
    assert_eq!(total, 4, "{:?}", ops.received().len());
}

/// An endpoint disabled for failing `endpoints.disable_after` is told too, with its reason.
#[tokio::test]
async fn disabled_after_failing_too_long_is_told() {
    let ops = TestReceiver::start().await;
    let partner = TestReceiver::start().await;
    partner.set_default(Answer::status(503));
    let daemon = start(&ops, |c| {
        c.endpoints.disable_after = Duration::from_secs(1);
        c.retry.schedule = vec![Duration::from_millis(300); 50];
    })
    .await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("acme", "production", &partner.url("/p"), &["*"])
        .await;
    c.post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    let disabled = wait_notice(&ops, &daemon, "endpoint.disabled").await;
    assert_eq!(disabled["endpoint_id"], ep["id"]);
    assert_eq!(disabled["last_status_code"], 503);
    assert!(
        disabled["reason"]
            .as_str()
            .unwrap()
            .contains("failing without a success"),
        "{disabled}"
    );
    let (_, got) = c
        .get(&format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()))
        .await;
    assert_eq!(got["enabled"], false);
    assert_eq!(
        of_type(&notices(&ops, &daemon).await, "endpoint.disabled").len(),
        1
    );
}
