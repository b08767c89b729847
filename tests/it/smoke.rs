//! The walk-through of the README: create an endpoint, post the seed's event, read it back delivered.

use crate::support::*;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn event_is_stored_and_delivered() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint(
            "acme-health",
            "sandbox",
            &receiver.url("/hook"),
            &["audit.completed"],
        )
        .await;
    let (status, body) = c
        .post_event(
            "acme-health",
            "sandbox",
            "evt_7b2",
            "audit.completed",
            json!({"bill_id": "bill_8f4", "report_id": "report_33", "status": "complete"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].headers["preflixai-event-id"], "evt_7b2");
    let (_, event) = c.get("/v1/events/evt_7b2").await;
    assert_eq!(event["deliveries"][0]["endpoint_id"], ep["id"]);
}
