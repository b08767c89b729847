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
    // The attempt's result is recorded a moment after the receiver saw it.
    wait_until_async(WAIT, || async {
        c.get("/status").await.1["queue"]["pending"] == 0
    })
    .await;
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

fn names(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes: {status}"))
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

/// `/status` lists the nodes seen within 30 s: a node stopped cleanly leaves the list at once
/// (its row is removed), a node silent for longer is not listed, and the leader deletes the rows
/// of nodes not seen for a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_live_nodes_only() {
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let node = |name: &'static str| {
        move |c: &mut preflix_webhookd::config::Config| {
            c.storage.postgres.node_name = Some(name.into());
        }
    };
    let a = TestDaemon::start_on_postgres(pg.clone(), url.clone(), node("node-a")).await;
    let mut b = TestDaemon::start_on_postgres(pg.clone(), url.clone(), node("node-b")).await;
    let c = a.client();
    assert_eq!(names(&c.get("/status").await.1), ["node-a", "node-b"]);
    b.stop().await;
    assert_eq!(names(&c.get("/status").await.1), ["node-a"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    pg.psql(
        &url,
        &format!(
            "INSERT INTO nodes (name, last_seen_ms, in_flight) VALUES ('quiet', {}, 0), \
             ('long-gone', {}, 0)",
            now - 40_000,
            now - 2 * 24 * 3600 * 1000
        ),
    );
    assert_eq!(names(&c.get("/status").await.1), ["node-a"]);
    // The leader (node-a, the only one) removes the day-old row, and only that one.
    wait_until_async(WAIT, || async {
        pg.psql(&url, "SELECT count(*) FROM nodes WHERE name = 'long-gone'") == "0"
    })
    .await;
    assert_eq!(
        pg.psql(
            &url,
            "SELECT string_agg(name, ',' ORDER BY name) FROM nodes"
        ),
        "node-a,quiet"
    );
}
