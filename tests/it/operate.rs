//! Operating the daemon: /status and /metrics after known activity, retention, backpressure, sd_notify, log hygiene.

use crate::support::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::io::Read;
use std::time::Duration;

#[tokio::test]
async fn status_and_metrics_follow_activity() {
    let ok = TestReceiver::start().await;
    let bad = TestReceiver::start().await;
    bad.set_default(Answer::status(500));
    let daemon = TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(60)]).await;
    let c = daemon.client();
    let good_ep = c
        .create_endpoint("p1", "sandbox", &ok.url("/"), &["*"])
        .await;
    let bad_ep = c
        .create_endpoint("p2", "sandbox", &bad.url("/"), &["*"])
        .await;
    for i in 0..3 {
        c.post_event(
            "p1",
            "sandbox",
            &format!("ok_{i}"),
            "bill.created",
            json!({}),
        )
        .await;
    }
    for i in 0..2 {
        c.post_event(
            "p2",
            "sandbox",
            &format!("bad_{i}"),
            "bill.created",
            json!({}),
        )
        .await;
    }
    ok.wait_for(3, Duration::from_secs(10)).await;
    bad.wait_for(2, Duration::from_secs(10)).await;
    wait_until_async(Duration::from_secs(10), || async {
        c.get("/status").await.1["queue"]["retrying"] == 2
    })
    .await;
    let (status, s) = c.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].is_u64());
    if !on_postgres() {
        // sled's directory and its size; a PostgreSQL database has neither.
        assert!(s["storage"]["bytes"].is_u64());
        assert!(s["storage"]["dir"].as_str().unwrap().ends_with("db"));
    }
    assert_eq!(s["queue"]["pending"], 2, "{s}");
    assert_eq!(s["queue"]["in_flight"], 0);
    assert!(s["queue"]["oldest_pending_age_seconds"].is_u64(), "{s}");
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(s["totals"]["events"], 5);
    assert_eq!(s["totals"]["deliveries_succeeded"], 3);
    assert_eq!(s["totals"]["attempts_failed"], 2);
    let eps = s["endpoints"].as_array().unwrap();
    let find = |id: &serde_json::Value| eps.iter().find(|e| e["id"] == *id).unwrap().clone();
    let g = find(&good_ep["id"]);
    assert_eq!(g["health"], "healthy");
    assert_eq!(g["last_status_code"], 200);
    assert_eq!(g["pending"], 0);
    assert!(g["last_success_at"].is_string());
    let b = find(&bad_ep["id"]);
    assert_eq!(b["health"], "failing");
    assert_eq!(b["consecutive_failures"], 2);
    assert_eq!(b["last_status_code"], 500);
    assert_eq!(b["pending"], 2);

    // The failing endpoint recovers: a redelivery that succeeds turns it healthy.
    bad.set_default(Answer::status(200));
    c.post("/v1/events/bad_0/redeliver", json!({})).await;
    wait_until_async(Duration::from_secs(10), || async {
        let s = c.get("/status").await.1;
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == bad_ep["id"] && e["health"] == "healthy")
    })
    .await;

    let (status, _, text) = c.raw(Method::GET, "/metrics", None, true).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    let metric = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(metric("preflix_webhookd_events_received_total"), 5.0);
    assert_eq!(metric("preflix_webhookd_events_stored_total"), 5.0);
    assert_eq!(
        metric("preflix_webhookd_deliveries_total{outcome=\"succeeded\"}"),
        4.0
    );
    assert_eq!(
        metric("preflix_webhookd_attempts_total{class=\"5xx\"}"),
        2.0
    );
    assert_eq!(
        metric("preflix_webhookd_attempts_total{class=\"2xx\"}"),
        4.0
    );
    assert_eq!(
        metric("preflix_webhookd_attempt_duration_seconds_count"),
        6.0
    );
    assert_eq!(metric("preflix_webhookd_queue_retrying"), 2.0);
    assert_eq!(metric("preflix_webhookd_dead_letters"), 0.0);
    assert!(metric("preflix_webhookd_storage_bytes") >= 0.0);
    assert!(
        !text.contains("# EOF"),
        "classic Prometheus text unless OpenMetrics is asked for"
    );
}

#[tokio::test]
async fn retention_purges_final_events_and_old_dead_letters_only() {
    let ok = TestReceiver::start().await;
    let bad = TestReceiver::start().await;
    bad.set_default(Answer::status(500));
    let daemon = TestDaemon::start_with(|c| {
        c.retention.events = Duration::from_millis(300);
        c.retention.dead_letters = Duration::from_millis(300);
        c.retention.interval = Duration::from_millis(100);
        c.retry.schedule = vec![Duration::from_secs(3600)];
    })
    .await;
    let c = daemon.client();
    c.create_endpoint("done", "sandbox", &ok.url("/"), &["*"])
        .await;
    c.create_endpoint("stuck", "sandbox", &bad.url("/"), &["*"])
        .await;
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    c.create_endpoint("gone", "sandbox", &gone.url("/"), &["*"])
        .await;
    c.post_event(
        "done",
        "sandbox",
        "evt_final",
        "bill.created",
        json!({"n": 1}),
    )
    .await;
    c.post_event(
        "stuck",
        "sandbox",
        "evt_pending",
        "bill.created",
        json!({"n": 2}),
    )
    .await;
    c.post_event(
        "gone",
        "sandbox",
        "evt_dead",
        "bill.created",
        json!({"n": 3}),
    )
    .await;
    ok.wait_for(1, Duration::from_secs(10)).await;
    bad.wait_for(1, Duration::from_secs(10)).await;
    // The final event and the dead letter go; the event still being retried stays.
    wait_until_async(Duration::from_secs(10), || async {
        c.get("/v1/events/evt_final").await.0 == StatusCode::NOT_FOUND
            && c.get("/v1/dead-letters").await.1["dead_letters"]
                .as_array()
                .unwrap()
                .is_empty()
            && c.get("/v1/events/evt_dead").await.0 == StatusCode::NOT_FOUND
    })
    .await;
    let (status, pending) = c.get("/v1/events/evt_pending").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an event with a pending delivery must stay"
    );
    assert_eq!(pending["deliveries"][0]["status"], "pending");
    assert_eq!(c.get("/status").await.1["dead_letters"], 0);
    // A purged id is free again: posting it stores a new event.
    let (status, body) = c
        .post_event(
            "done",
            "sandbox",
            "evt_final",
            "bill.created",
            json!({"n": 9}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn ingest_answers_503_past_storage_max_bytes() {
    sled_only!("storage.max_bytes limits sled's directory");
    let daemon = TestDaemon::start_with(|c| c.storage.max_bytes = 1).await;
    let c = daemon.client();
    // A brand-new store may measure 0 bytes until its first write is flushed, so the limit bites
    // from the first write on (at most this one event gets in).
    wait_until_async(Duration::from_secs(5), || async {
        c.post_event("p", "sandbox", "evt_x", "bill.created", json!({}))
            .await
            .0
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let stored = c.get("/status").await.1["totals"]["events"]
        .as_u64()
        .unwrap();
    assert!(stored <= 1, "{stored} events got in past a 1-byte limit");
    let body = serde_json::to_vec(&json!({"partner_id": "p", "type": "bill.created", "data": {}}))
        .unwrap();
    let (status, headers, bytes) = c.raw(Method::POST, "/v1/events", Some(body), true).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let err: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(err["error"]["code"], "storage_full");
    let (status, _) = c.post("/v1/events/batch", json!({"events": []})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Reads still work and nothing more was stored.
    let (status, s) = c.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["totals"]["events"], stored);
}

/// Runs the real binary with a NOTIFY_SOCKET, and checks READY=1 then STOPPING=1 and a clean exit.
#[test]
fn sd_notify_ready_and_stopping_and_no_secrets_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\ndir = \"{}\"\n[delivery]\nallow_private_networks = true\n[log]\nlevel = \"debug\"\nformat = \"json\"\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");

    // Activity carrying a secret, a payload marker and a custom header value.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = std::fs::read_to_string(dir.path().join("db/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let secret = rt.block_on(async {
        let receiver = TestReceiver::start().await;
        let c = Client { addr: format!("127.0.0.1:{port}").parse().unwrap(), token: token.clone() };
        let (_, ep) = c
            .post(
                "/v1/endpoints",
                json!({"partner_id": "p", "environment": "sandbox", "url": receiver.url("/"), "event_types": ["*"],
                       "headers": {"x-custom": "HEADER-VALUE-MARKER"}}),
            )
            .await;
        c.post_event("p", "sandbox", "evt_log", "bill.created", json!({"note": "PAYLOAD-MARKER-7731"})).await;
        receiver.wait_for(1, Duration::from_secs(10)).await;
        ep["secret"].as_str().unwrap().to_string()
    });

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("evt_log") || logs.contains("endpoint created"),
        "logs look empty: {logs}"
    );
    for secret_thing in [
        secret.as_str(),
        "PAYLOAD-MARKER-7731",
        "HEADER-VALUE-MARKER",
        token.as_str(),
    ] {
        assert!(
            !logs.contains(secret_thing),
            "logs contain {secret_thing}:\n{logs}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn compact_rewrites_a_stopped_store_and_refuses_a_running_one() {
    sled_only!("`compact` rewrites sled's directory");
    let mut daemon = TestDaemon::start().await;
    let c = daemon.client();
    for i in 0..50 {
        let (status, _) = c
            .post_event(
                "p",
                "sandbox",
                &format!("evt_c{i}"),
                "bill.created",
                json!({"i": i}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let config = daemon.dir.path().join("compact.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndir = \"{}\"\n",
            daemon.config.storage.dir.display()
        ),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(binary())
            .args(["compact", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let busy = run();
    assert!(!busy.status.success(), "compact must refuse a store in use");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("still running"));

    daemon.stop().await;
    let done = run();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("bytes before"));
    let token_before = daemon.token.clone();
    daemon.restart().await;
    assert_eq!(daemon.token, token_before, "the admin token moves along");
    let c = daemon.client();
    for i in 0..50 {
        let (status, event) = c.get(&format!("/v1/events/evt_c{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(event["data"]["i"], i);
    }
    assert_eq!(c.get("/status").await.1["totals"]["events"], 50);
}

#[tokio::test]
async fn per_endpoint_pending_counts_survive_a_restart() {
    let mut daemon =
        TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(60)]).await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("p", "sandbox", "http://127.0.0.1:9/", &["*"])
        .await;
    let (status, _) = c
        .post(
            &format!("/v1/endpoints/{}/disable", ep["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..3 {
        c.post_event(
            "p",
            "sandbox",
            &format!("evt_p{i}"),
            "bill.created",
            json!({}),
        )
        .await;
    }
    daemon.restart().await;
    let c = daemon.client();
    let (_, s) = c.get("/status").await;
    let e = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == ep["id"])
        .unwrap()
        .clone();
    assert_eq!(
        e["pending"], 0,
        "a disabled endpoint's events are not queued for it: {s}"
    );
    let (status, _) = c
        .post(
            &format!("/v1/endpoints/{}/enable", ep["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    c.post(
        "/v1/events/evt_p0/redeliver",
        json!({"endpoint_id": ep["id"]}),
    )
    .await;
    c.post(
        "/v1/events/evt_p1/redeliver",
        json!({"endpoint_id": ep["id"]}),
    )
    .await;
    daemon.stop().await;
    daemon.restart().await;
    let (_, s) = daemon.client().get("/status").await;
    let e = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == ep["id"])
        .unwrap()
        .clone();
    assert_eq!(
        e["pending"].as_u64().unwrap() + s["queue"]["in_flight"].as_u64().unwrap(),
        2,
        "{s}"
    );
}

/// `retrying` is the part of `pending` that failed before: attempts under way count in neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retrying_never_exceeds_pending() {
    let receiver = TestReceiver::start().await;
    // Slow failures: most of the time every retry is under way.
    receiver.set_default(Answer::status(500).delay(Duration::from_millis(700)));
    let daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![Duration::from_millis(20); 50];
    })
    .await;
    let c = daemon.client();
    c.create_endpoint("p", "sandbox", &receiver.url("/hook"), &["bill.created"])
        .await;
    for i in 0..20 {
        let (status, body) = c
            .post_event(
                "p",
                "sandbox",
                &format!("evt_{i}"),
                "bill.created",
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    receiver.wait_for(40, Duration::from_secs(30)).await;
    let mut seen_retrying = false;
    for _ in 0..30 {
        let (_, s) = c.get("/status").await;
        let q = &s["queue"];
        let (pending, retrying) = (
            q["pending"].as_u64().unwrap(),
            q["retrying"].as_u64().unwrap(),
        );
        assert!(
            retrying <= pending,
            "retrying {retrying} > pending {pending}: {s}"
        );
        seen_retrying |= q["in_flight"].as_u64().unwrap() > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_retrying, "no retry was ever under way");
}
