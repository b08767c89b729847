//! Lease renewal on PostgreSQL: an attempt longer than `storage.postgres.lease` keeps its claim, so another node never takes it over and makes it twice.

use crate::support::pg::PgCluster;
use crate::support::{wait_until, Answer, TestDaemon, TestReceiver};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Lease 2 s, a receiver that answers after 5 s, two nodes: the claim is renewed while the attempt
/// is under way, so exactly one attempt reaches the receiver (without renewal the other node takes
/// the delivery over at the lease's end and makes it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_longer_than_the_lease_is_made_once_across_two_nodes() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_secs(5)));
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let node = |name: &'static str| {
        move |c: &mut preflix_webhookd::config::Config| {
            c.storage.postgres.node_name = Some(name.into());
            c.storage.postgres.lease = Duration::from_secs(2);
            c.delivery.timeout = Duration::from_secs(15);
        }
    };
    let a = TestDaemon::start_on_postgres(pg.clone(), url.clone(), node("node-a")).await;
    let b = TestDaemon::start_on_postgres(pg.clone(), url.clone(), node("node-b")).await;
    a.client()
        .create_endpoint("acme", "production", &receiver.url("/hook"), &["*"])
        .await;
    // b learns of the endpoint through NOTIFY (or its 5 s refresh).
    tokio::time::sleep(Duration::from_secs(6)).await;
    a.client()
        .post_event("acme", "production", "evt_1", "audit.completed", json!({}))
        .await;
    wait_until(Duration::from_secs(30), || receiver.count() >= 1).await;
    // Past the attempt (5 s) and two more leases: a takeover would have shown by now.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(receiver.count(), 1, "the attempt was made twice");
    let pending = pg.psql(&url, "SELECT count(*) FROM deliveries WHERE status = 0");
    assert_eq!(pending, "0", "the delivery succeeded");
    let attempts = pg.psql(
        &url,
        "SELECT jsonb_array_length(attempts::jsonb) FROM deliveries",
    );
    assert_eq!(attempts, "1");
    drop((a, b));
}
