//! `/status` on PostgreSQL: while the database is down it answers 200 with what it knows and the fault, `/healthz` 503; once back, the figures return by themselves.

use crate::support::pg::PgCluster;
use crate::support::{wait_until_async, TestDaemon, TestReceiver};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_during_a_database_outage_says_so() {
    let receiver = TestReceiver::start().await;
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let daemon = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |c| {
        c.storage.postgres.node_name = Some("node-a".into());
    })
    .await;
    let c = daemon.client();
    c.create_endpoint("acme", "production", &receiver.url("/hook"), &["*"])
        .await;
    c.post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    receiver.wait_for(1, WAIT).await;
    let (code, before) = c.get("/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(before["node"], "node-a", "{before}");
    assert!(before["storage"].get("fault").is_none(), "{before}");
    assert_eq!(before["queue"]["pending"], 0, "{before}");

    pg.stop();
    wait_until_async(WAIT, || async {
        c.raw(Method::GET, "/healthz", None, false).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (code, during) = c.get("/status").await;
    assert_eq!(code, StatusCode::OK, "{during}");
    assert_eq!(during["backend"], "postgres", "{during}");
    assert_eq!(during["node"], "node-a", "{during}");
    assert_eq!(
        during["storage"]["fault"]["error"], "storage_unavailable",
        "{during}"
    );
    assert!(
        !during["storage"]["fault"]["detail"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{during}"
    );
    assert_eq!(during["queue"], Value::Null, "{during}");
    assert_eq!(during["totals"], Value::Null, "{during}");
    assert_eq!(during["endpoints"].as_array().unwrap().len(), 1, "{during}");
    assert_eq!(
        c.raw(Method::GET, "/healthz", None, false).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    pg.start_again();
    wait_until_async(WAIT, || async {
        c.raw(Method::GET, "/healthz", None, false).await.0 == StatusCode::OK
    })
    .await;
    let (code, after) = c.get("/status").await;
    assert_eq!(code, StatusCode::OK);
    assert!(after["storage"].get("fault").is_none(), "{after}");
    assert_eq!(after["totals"]["events"], 1, "{after}");
}
