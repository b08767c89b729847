//! Health that does not lie: the age of the oldest pending delivery, /healthz when the scheduler stalls, /metrics in both formats.

use crate::support::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A delivery waiting for its retry is pending since it was created, not since it was due: its age
/// grows while it waits, and is `null` only once nothing is pending.
#[tokio::test]
async fn oldest_pending_age_grows_while_a_retry_waits() {
    let bad = TestReceiver::start().await;
    bad.set_default(Answer::status(500));
    let daemon =
        TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(3600)]).await;
    let c = daemon.client();
    let ep = c
        .create_endpoint("p1", "sandbox", &bad.url("/"), &["*"])
        .await;
    let (_, s) = c.get("/status").await;
    assert!(s["queue"]["oldest_pending_age_seconds"].is_null(), "{s}");
    let posted = Instant::now();
    c.post_event("p1", "sandbox", "evt_wait", "bill.created", json!({}))
        .await;
    bad.wait_for(1, Duration::from_secs(20)).await;
    wait_until_async(Duration::from_secs(20), || async {
        c.get("/status").await.1["queue"]["retrying"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(posted.elapsed())).await;
    // Measured before the request: the answer cannot be younger than this.
    let waited = posted.elapsed().as_secs();
    let (_, s) = c.get("/status").await;
    let age = s["queue"]["oldest_pending_age_seconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("no age while a delivery waits: {s}"));
    assert!(
        age + 1 >= waited,
        "age {age} s after {waited} s of waiting: {s}"
    );
    assert!(age <= posted.elapsed().as_secs() + 1, "age {age} s: {s}");
    assert_eq!(s["queue"]["pending"], 1, "{s}");

    // The metric says the same.
    let (_, _, text) = c.raw(Method::GET, "/metrics", None, true).await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let gauge = metric(&text, "preflix_webhookd_oldest_pending_age_seconds");
    assert!(gauge + 1.0 >= waited as f64, "{gauge}\n{text}");

    // Once it is gone (the endpoint is deleted), nothing is pending: null.
    let id = ep["id"].as_str().unwrap();
    let (status, _) = c.delete(&format!("/v1/endpoints/{id}")).await;
    assert!(status.is_success(), "{status}");
    wait_until_async(Duration::from_secs(20), || async {
        c.get("/status").await.1["queue"]["oldest_pending_age_seconds"].is_null()
    })
    .await;
}

/// A scheduler that stops going round makes /healthz answer 503 naming it, and the metric of its
/// last run grows; once it goes round again, /healthz is `ok`.
#[tokio::test]
async fn healthz_is_503_while_the_scheduler_stalls() {
    let daemon = TestDaemon::start_with(|c| {
        c.test_hooks.scheduler_watchdog = Some(Duration::from_secs(2));
    })
    .await;
    let pause = daemon.config.test_hooks.pause_scheduler.clone();
    let c = daemon.client();
    let (status, _, body) = c.raw(Method::GET, "/healthz", None, false).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"ok");

    pause.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    let mut answer = None;
    while stalled.elapsed() < Duration::from_secs(30) {
        let (status, headers, body) = c.raw(Method::GET, "/healthz", None, false).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer = Some((headers, String::from_utf8(body.to_vec()).unwrap()));
            break;
        }
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (headers, body) = answer.expect("/healthz stayed 200 with the scheduler stalled for 30 s");
    assert!(stalled.elapsed() >= Duration::from_secs(1), "503 too early");
    assert!(body.starts_with("scheduler_stalled:"), "{body}");
    assert!(body.contains("the scheduler has not run for"), "{body}");
    assert!(headers.contains_key("retry-after"));
    let (_, _, text) = c.raw(Method::GET, "/metrics", None, true).await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        metric(&text, "preflix_webhookd_scheduler_last_run_age_seconds") > 2.0,
        "{text}"
    );

    pause.store(false, Ordering::SeqCst);
    wait_until_async(Duration::from_secs(20), || async {
        c.raw(Method::GET, "/healthz", None, false).await.0 == StatusCode::OK
    })
    .await;
    let (_, _, text) = c.raw(Method::GET, "/metrics", None, true).await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        metric(&text, "preflix_webhookd_scheduler_last_run_age_seconds") < 2.0,
        "{text}"
    );
}

/// Without an `accept` asking for OpenMetrics, /metrics is the classic Prometheus text format;
/// with one, OpenMetrics. Both carry the two ages an alert rule needs.
#[tokio::test]
async fn metrics_in_prometheus_text_or_openmetrics() {
    let daemon = TestDaemon::start().await;
    let get = |accept: Option<&'static str>| {
        let addr = daemon.addr;
        let token = daemon.token.clone();
        async move {
            let mut req = Request::builder()
                .uri(format!("http://{addr}/metrics"))
                .header("host", addr.to_string())
                .header("authorization", format!("Bearer {token}"));
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            let (status, headers, body) =
                send(addr, req.body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            let ct = headers["content-type"].to_str().unwrap().to_string();
            (ct, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (ct, text) = get(accept).await;
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE preflix_webhookd_events_received_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE preflix_webhookd_oldest_pending_age_seconds gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE preflix_webhookd_scheduler_last_run_age_seconds gauge\n"),
            "{text}"
        );
        assert_eq!(
            metric(&text, "preflix_webhookd_oldest_pending_age_seconds"),
            0.0
        );
    }
    // As Prometheus itself asks.
    let (ct, text) = get(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ))
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE preflix_webhookd_events_received counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE preflix_webhookd_scheduler_last_run_age_seconds gauge\n"),
        "{text}"
    );
    assert!(
        metric(&text, "preflix_webhookd_scheduler_last_run_age_seconds") < 5.0,
        "{text}"
    );
}

/// The value of the sample `name` (without labels) in an exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
