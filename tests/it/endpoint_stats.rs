//! Endpoint stats (contract section 9): attempts per hour with their latency percentiles, counted as attempts settle, on `/v1/endpoints/{id}/stats` and `/metrics`.

use crate::support::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn sum(stats: &Value, field: &str) -> u64 {
    stats["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].as_u64().unwrap())
        .sum()
}

/// A real receiver fails 4 first attempts slowly (about 400 ms) and answers the rest at once: the
/// stats count 10 successes and 4 failures, the median is fast and the 95th percentile slow; the
/// figures survive a restart and show on `/metrics` under the endpoint's id.
#[tokio::test]
async fn stats_count_attempts_and_their_latency_per_hour() {
    let receiver = TestReceiver::start().await;
    receiver.script((0..4).map(|_| Answer::status(500).delay(Duration::from_millis(400))));
    let mut daemon = TestDaemon::start_with(|c| {
        c.retry.schedule = vec![Duration::from_millis(600), Duration::from_millis(600)];
    })
    .await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("acme-health", "production", &receiver.url("/hook"), &["*"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let quiet = c
        .create_endpoint("acme-health", "sandbox", &receiver.url("/quiet"), &["*"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The first four requests arrive together: they are the first attempts of four events.
    for i in 0..10 {
        let (status, body) = c
            .post_event(
                "acme-health",
                "production",
                &format!("evt_{i}"),
                "bill.created",
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    receiver.wait_for(14, WAIT).await;
    // Settles are committed a moment after the receiver answers.
    let deadline = std::time::Instant::now() + WAIT;
    let stats = loop {
        let (status, body) = c.get(&format!("/v1/endpoints/{ep}/stats")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["succeeded"] == 10 && body["failed"] == 4 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let buckets = stats["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24, "{stats}");
    // Each bucket starts on the hour, the current one last.
    for b in buckets {
        let start = preflix_webhookd::model::parse_time(b["start"].as_str().unwrap()).unwrap();
        assert_eq!(start % 3_600_000, 0, "{b}");
    }
    let last = preflix_webhookd::model::parse_time(buckets[23]["start"].as_str().unwrap()).unwrap();
    assert!(preflix_webhookd::api::now_ms() - last < 3_600_000);
    assert_eq!(
        (sum(&stats, "succeeded"), sum(&stats, "failed")),
        (10, 4),
        "{stats}"
    );
    let rate = stats["success_rate"].as_f64().unwrap();
    assert!((rate - 10.0 / 14.0).abs() < 1e-9, "{stats}");
    let p50 = stats["p50_ms"].as_u64().unwrap();
    let p95 = stats["p95_ms"].as_u64().unwrap();
    assert!(
        p50 < 150,
        "the median of 10 fast and 4 slow attempts: {stats}"
    );
    assert!(
        (300..=1000).contains(&p95),
        "the slow attempts are the 95th percentile: {stats}"
    );
    // The hour that holds the attempts has its own percentiles.
    let busy: Vec<&Value> = buckets
        .iter()
        .filter(|b| b["succeeded"] != 0 || b["failed"] != 0)
        .collect();
    assert!(!busy.is_empty() && busy.len() <= 2, "{stats}");
    assert!(
        busy.iter().any(|b| b["p95_ms"].as_u64().unwrap() >= 300),
        "{stats}"
    );
    for b in buckets
        .iter()
        .filter(|b| b["succeeded"] == 0 && b["failed"] == 0)
    {
        assert_eq!(
            (b["p50_ms"].as_u64(), b["p95_ms"].as_u64()),
            (Some(0), Some(0)),
            "{b}"
        );
    }

    // Windows: whole hours, up to 7 days.
    let (_, three) = c.get(&format!("/v1/endpoints/{ep}/stats?window=3h")).await;
    assert_eq!(three["buckets"].as_array().unwrap().len(), 3, "{three}");
    assert_eq!(three["succeeded"], 10);
    let (_, week) = c.get(&format!("/v1/endpoints/{ep}/stats?window=7d")).await;
    assert_eq!(week["buckets"].as_array().unwrap().len(), 168);
    for bad in ["8d", "0h", "soon", "-1h"] {
        let (status, body) = c
            .get(&format!("/v1/endpoints/{ep}/stats?window={bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let (status, _) = c.get("/v1/endpoints/ep_00000000000000ff/stats").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An endpoint without attempts: zeros, and a success rate of 1 (nothing failed).
    let (_, none) = c.get(&format!("/v1/endpoints/{quiet}/stats")).await;
    assert_eq!((sum(&none, "succeeded"), sum(&none, "failed")), (0, 0));
    assert_eq!(none["success_rate"], 1.0);

    // /metrics: the same figures, labelled by endpoint id.
    let (status, _, text) = c.raw(http::Method::GET, "/metrics", None, true).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text).to_string();
    let sample = |name: &str, endpoint: &str| -> f64 {
        let prefix = format!("preflix_webhookd_{name}{{endpoint_id=\"{endpoint}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(sample("endpoint_attempts_succeeded_24h", &ep), 10.0);
    assert_eq!(sample("endpoint_attempts_failed_24h", &ep), 4.0);
    assert_eq!(sample("endpoint_attempts_succeeded_24h", &quiet), 0.0);
    let p95_seconds = sample("endpoint_latency_p95_seconds_24h", &ep);
    assert!((0.3..=1.0).contains(&p95_seconds), "{text}");
    assert!(
        text.contains("preflix_webhookd_endpoint_stats_omitted 0"),
        "{text}"
    );

    // Kept in the store with the settles: the same after a restart.
    daemon.restart().await;
    let (_, again) = daemon
        .client()
        .get(&format!("/v1/endpoints/{ep}/stats"))
        .await;
    assert_eq!(
        (again["succeeded"].clone(), again["failed"].clone()),
        (json!(10), json!(4))
    );
    assert_eq!(again["p95_ms"], stats["p95_ms"]);
}
