//! Fair sharing of attempt slots: a healthy endpoint's latency beside a silent, a slow and a failing
//! one; an endpoint's `max_in_flight` held to its share; retries kept out of the first-attempt reserve.
//!
//! Bounds are loose (a loaded 2-core machine); what each test measures on today's code is far outside
//! them: without sharing, a silent endpoint holds every slot until `delivery.timeout` (60 s here).

use crate::support::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long a healthy endpoint's delivery may take at most in these tests.
const HEALTHY_MAX: Duration = Duration::from_secs(5);

/// A receiver that accepts connections and never reads or answers; counts the connections it holds.
struct Silent {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/silent", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Silent { url, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn endpoint(c: &Client, partner: &str, url: &str, max_in_flight: u32) -> String {
    let (code, body) = c
        .post(
            "/v1/endpoints",
            json!({"partner_id": partner, "environment": "sandbox", "url": url,
                   "event_types": ["*"], "max_in_flight": max_in_flight}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn post_batch(c: &Client, partner: &str, prefix: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"partner_id": partner, "environment": "sandbox", "id": format!("{prefix}{i}"), "type": "audit.started", "data": {}}))
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// Posts `n` events for the healthy endpoint one at a time, each once the previous one arrived;
/// returns each one's time from before its POST to its arrival, sorted.
async fn healthy_latencies(
    c: &Client,
    healthy: &TestReceiver,
    prefix: &str,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    let before = healthy.count();
    for i in 0..n {
        let t0 = Instant::now();
        let (code, body) = c
            .post_event(
                "p-healthy",
                "sandbox",
                &format!("{prefix}{i}"),
                "audit.started",
                json!({}),
            )
            .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let got = healthy.wait_for(before + i + 1, HEALTHY_MAX).await;
        out.push(got[before + i].at.saturating_duration_since(t0));
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1)]
}

#[tokio::test]
async fn a_silent_endpoint_does_not_starve_a_healthy_one() {
    let silent = Silent::start().await;
    let healthy = TestReceiver::start().await;
    // Attempts to the silent endpoint hold their slot for the whole test.
    let daemon = TestDaemon::start_with(|c| c.delivery.timeout = Duration::from_secs(60)).await;
    let c = daemon.client();
    endpoint(&c, "p-silent", &silent.url, 10_000).await;
    endpoint(&c, "p-healthy", &healthy.url("/h"), 16).await;

    // Baseline in the same daemon: the healthy endpoint alone.
    let alone = healthy_latencies(&c, &healthy, "alone", 10).await;

    // 400 events for the silent endpoint, more than all 256 slots.
    post_batch(&c, "p-silent", "quiet", 400).await;
    // It holds at most its share: 256 less the first-attempt reserve (32), so not every slot.
    wait_until(Duration::from_secs(30), || silent.connections() >= 224).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        silent.connections(),
        224,
        "an endpoint allowed 10,000 at once holds 256 less the reserve (32), no more"
    );

    let beside = healthy_latencies(&c, &healthy, "beside", 30).await;
    eprintln!(
        "healthy alone: p50 {:?} max {:?}; beside a silent endpoint holding 224 slots: p50 {:?} p90 {:?} max {:?}",
        pct(&alone, 50),
        alone.last().unwrap(),
        pct(&beside, 50),
        pct(&beside, 90),
        beside.last().unwrap()
    );
    assert!(
        pct(&beside, 50) < Duration::from_millis(500),
        "healthy p50 {:?} beside a silent endpoint",
        pct(&beside, 50)
    );
    assert!(
        *beside.last().unwrap() < Duration::from_secs(3),
        "healthy max {:?} beside a silent endpoint",
        beside.last().unwrap()
    );
    // The silent endpoint got nothing more meanwhile.
    assert_eq!(silent.connections(), 224);
}

#[tokio::test]
async fn a_healthy_endpoint_keeps_its_latency_beside_silent_slow_and_failing_ones() {
    let silent = Silent::start().await;
    let slow = TestReceiver::start().await;
    slow.set_default(Answer::status(200).delay(Duration::from_secs(2)));
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(500));
    let healthy = TestReceiver::start().await;
    let daemon = TestDaemon::start_with(|c| {
        c.delivery.timeout = Duration::from_secs(60);
        // Failed attempts come back quickly and often.
        c.retry.schedule = vec![Duration::from_millis(20); 8];
    })
    .await;
    let c = daemon.client();
    endpoint(&c, "p-silent", &silent.url, 10_000).await;
    endpoint(&c, "p-slow", &slow.url("/slow"), 10_000).await;
    endpoint(&c, "p-failing", &failing.url("/fail"), 10_000).await;
    endpoint(&c, "p-healthy", &healthy.url("/h"), 16).await;

    let alone = healthy_latencies(&c, &healthy, "alone", 10).await;

    // 300 events for each bad endpoint, in one batch: they start together and share.
    let events: Vec<Value> = (0..900)
        .map(|i| {
            let partner = ["p-silent", "p-slow", "p-failing"][i % 3];
            json!({"partner_id": partner, "environment": "sandbox", "id": format!("bad{i}"), "type": "audit.started", "data": {}})
        })
        .collect();
    let (code, body) = c
        .post("/v1/events/batch", json!({ "events": events }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // The bad endpoints have taken what they may.
    wait_until(Duration::from_secs(30), || {
        silent.connections() >= 60 && slow.in_progress() >= 60 && failing.count() >= 300
    })
    .await;

    let beside = healthy_latencies(&c, &healthy, "beside", 30).await;
    eprintln!(
        "healthy alone: p50 {:?} max {:?}; beside silent ({} held), slow ({} under way) and failing ({} attempts): p50 {:?} p90 {:?} max {:?}",
        pct(&alone, 50),
        alone.last().unwrap(),
        silent.connections(),
        slow.in_progress(),
        failing.count(),
        pct(&beside, 50),
        pct(&beside, 90),
        beside.last().unwrap()
    );
    assert!(
        pct(&beside, 50) < Duration::from_millis(500),
        "healthy p50 {:?} beside silent, slow and failing endpoints",
        pct(&beside, 50)
    );
    assert!(
        *beside.last().unwrap() < Duration::from_secs(3),
        "healthy max {:?} beside silent, slow and failing endpoints",
        beside.last().unwrap()
    );
    // Together the bad endpoints never held the first-attempt reserve.
    assert!(
        silent.connections() + slow.max_concurrent() <= 224,
        "silent {} + slow {} above the shared 224 slots",
        silent.connections(),
        slow.max_concurrent()
    );
}

#[tokio::test]
async fn retries_of_dead_endpoints_leave_the_reserve_to_first_attempts() {
    // 4 slots: 3 shared, 1 reserved for first attempts.
    let daemon = TestDaemon::start_with(|c| {
        c.delivery.max_in_flight = 4;
        c.delivery.timeout = Duration::from_secs(60);
    })
    .await;
    let c = daemon.client();
    // Four dead endpoints: the first attempt fails at once, every retry hangs.
    let mut dead = Vec::new();
    for i in 0..4 {
        let r = TestReceiver::start().await;
        r.script([Answer::status(500)]);
        r.set_default(Answer::status(200).delay(Duration::from_secs(60)));
        let partner = format!("p-dead{i}");
        endpoint(&c, &partner, &r.url("/dead"), 16).await;
        let (code, body) = c
            .post_event(
                &partner,
                "sandbox",
                &format!("dead{i}"),
                "audit.started",
                json!({}),
            )
            .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        dead.push(r);
    }
    let healthy = TestReceiver::start().await;
    endpoint(&c, "p-healthy", &healthy.url("/h"), 16).await;
    let hanging = || dead.iter().map(|r| r.in_progress()).sum::<usize>();
    // Every first attempt failed; three retries hang, and the fourth is held back.
    wait_until(Duration::from_secs(20), || {
        dead.iter().all(|r| r.count() >= 1) && hanging() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hanging(), 3, "retries hold at most 4 - 1 slots");

    let beside = healthy_latencies(&c, &healthy, "fresh", 5).await;
    assert!(
        *beside.last().unwrap() < Duration::from_secs(3),
        "a first attempt waited {:?} behind retries",
        beside.last().unwrap()
    );
    assert_eq!(hanging(), 3);
}
