//! Partners never see each other (contract section 7): no route makes a delivery of one partner's
//! event to another partner's endpoint, or to the same partner's other environment.

use crate::support::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn id(endpoint: &Value) -> String {
    endpoint["id"].as_str().expect("an endpoint id").to_string()
}

/// Redeliver with the `endpoint_id` of another partner, or of the same partner's sandbox, answers
/// 422 `endpoint_not_allowed`; that receiver gets nothing and the event lists no delivery to it.
#[tokio::test]
async fn redeliver_refuses_another_partners_endpoint_and_the_other_environment() {
    let own = TestReceiver::start().await;
    let rival = TestReceiver::start().await;
    let sandbox = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let own_ep = id(&c
        .create_endpoint("acme-health", "production", &own.url("/own"), &["*"])
        .await);
    let rival_ep = id(&c
        .create_endpoint("rival-health", "production", &rival.url("/rival"), &["*"])
        .await);
    let sandbox_ep = id(&c
        .create_endpoint("acme-health", "sandbox", &sandbox.url("/sandbox"), &["*"])
        .await);
    let (code, body) = c
        .post_event(
            "acme-health",
            "production",
            "evt_private",
            "audit.completed",
            json!({"report_id": "report_33"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    own.wait_for(1, WAIT).await;

    for (target, says) in [
        (&rival_ep, "another partner"),
        (&sandbox_ep, "sandbox and production never mix"),
    ] {
        let (code, body) = c
            .post(
                "/v1/events/evt_private/redeliver",
                json!({"endpoint_id": target}),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{target}: {body}");
        assert_eq!(body["error"]["code"], "endpoint_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(target.as_str()) && message.contains(says),
            "{message}"
        );
    }
    // The event's own endpoint still gets a redelivery; then nothing else arrives anywhere.
    let (code, body) = c
        .post(
            "/v1/events/evt_private/redeliver",
            json!({"endpoint_id": own_ep}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    own.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rival.count(), 0, "another partner's receiver got the event");
    assert_eq!(
        sandbox.count(),
        0,
        "the sandbox receiver got a production event"
    );
    let (_, ev) = c.get("/v1/events/evt_private").await;
    let deliveries = ev["deliveries"].as_array().unwrap();
    assert!(
        deliveries
            .iter()
            .all(|d| d["endpoint_id"] == own_ep.as_str()),
        "{ev}"
    );
    assert_eq!(deliveries.len(), 2);
}

/// Recover and the test route take the endpoint's own partner, and PATCH cannot move an endpoint
/// to another partner or environment, so neither can be turned into a leak through the API.
#[tokio::test]
async fn recover_test_and_patch_stay_within_the_endpoints_audience() {
    let rival = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let rival_ep = id(&c
        .create_endpoint("rival-health", "production", &rival.url("/rival"), &["*"])
        .await);
    let (code, _) = c
        .post_event(
            "acme-health",
            "production",
            "evt_acme",
            "audit.completed",
            json!({"report_id": "report_1"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    for field in [
        json!({"partner_id": "acme-health"}),
        json!({"environment": "sandbox"}),
    ] {
        let (code, body) = c.patch(&format!("/v1/endpoints/{rival_ep}"), field).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    }
    let (code, body) = c
        .post(
            &format!("/v1/endpoints/{rival_ep}/recover"),
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 0, "{body}");
    let (code, body) = c
        .post(&format!("/v1/endpoints/{rival_ep}/test"), json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let got = rival.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let (_, ev) = c.get("/v1/events/evt_acme").await;
    assert!(ev["deliveries"].as_array().unwrap().is_empty(), "{ev}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rival.count(), 1, "only the rival's own test event arrived");
}
