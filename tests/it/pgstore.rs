//! The PostgreSQL store itself, against a throwaway cluster: schema and migrations, group-commit
//! ingest and idempotency across two stores (two nodes), claims with lease, fencing and
//! cluster-wide endpoint limits, and an unreachable database.

use crate::support::pg::PgCluster;
use preflix_webhookd::model::{Attempt, Endpoint, Environment};
use preflix_webhookd::store::postgres::{PgOptions, PgStore};
use preflix_webhookd::store::{
    ClaimAsk, ClaimRound, Claimed, IngestOutcome, MasterKeys, NewEvent, SettleOutcome, Settlement,
    StoreError,
};
use std::time::{Duration, Instant};

fn opts(url: &str, node: &str, lease: Duration) -> PgOptions {
    PgOptions {
        url: url.to_string(),
        pool_size: 8,
        lease,
        node_name: node.to_string(),
        keys: MasterKeys::default(),
    }
}

async fn open(url: &str, node: &str) -> PgStore {
    PgStore::open(opts(url, node, Duration::from_secs(60)))
        .await
        .expect("open the PostgreSQL store")
}

fn now_ms() -> u64 {
    preflix_webhookd::api::now_ms()
}

fn endpoint(partner: &str) -> Endpoint {
    Endpoint {
        num: 0,
        partner_id: partner.into(),
        environment: Environment::Production,
        url: "http://127.0.0.1:9/hook".into(),
        event_types: vec!["*".into()],
        description: String::new(),
        headers: Vec::new(),
        ordered: false,
        max_in_flight: 16,
        rate_limit_per_second: None,
        enabled: true,
        disabled_reason: None,
        created_at_ms: now_ms(),
        secrets: vec![preflix_webhookd::model::EndpointSecret {
            secret: "whsec_dGVzdA==".into(),
            expires_at_ms: None,
        }],
    }
}

fn event(id: &str, partner: &str, content: u8) -> NewEvent {
    NewEvent {
        id: id.into(),
        partner_id: partner.into(),
        environment: Environment::Production,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: now_ms(),
        payload: format!("{{\"id\":\"{id}\",\"c\":{content}}}").into_bytes(),
        content_hash: [content; 32],
        only_endpoint: None,
    }
}

fn attempt(n: u32, code: u16) -> Attempt {
    Attempt {
        n,
        at_ms: now_ms(),
        status_code: Some(code),
        duration_ms: 1,
        error: None,
        response_snippet: None,
    }
}

async fn claim(store: &PgStore, ep: &Endpoint, room: usize) -> ClaimRound {
    let admits = |_: usize, _: bool| true;
    let held = |_: u64| None;
    store
        .claim(
            ep,
            ClaimAsk {
                now_ms: now_ms(),
                room,
                admits: &admits,
                held_until: &held,
            },
        )
        .await
        .expect("claim")
}

fn settlement(c: &Claimed, outcome: SettleOutcome) -> Settlement {
    Settlement {
        claim: c.claim,
        as_read: c.delivery.clone(),
        attempt: attempt(c.delivery.attempts.len() as u32 + 1, 200),
        outcome,
        disable_after_ms: u64::MAX,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_is_created_and_a_newer_one_is_refused() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let store = open(&url, "a").await;
    store.close().await.unwrap();
    assert_eq!(
        pg.psql(&url, "SELECT max(version) FROM webhookd_schema"),
        preflix_webhookd::store::postgres::schema::VERSION.to_string()
    );
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM events"), "0");
    // Opening again applies nothing.
    let store = open(&url, "a").await;
    store.close().await.unwrap();
    assert_eq!(
        pg.psql(&url, "SELECT count(*) FROM webhookd_schema"),
        preflix_webhookd::store::postgres::schema::VERSION.to_string()
    );
    pg.psql(&url, "INSERT INTO webhookd_schema (version) VALUES (99)");
    match PgStore::open(opts(&url, "a", Duration::from_secs(60))).await {
        Err(StoreError::SchemaTooNew(msg)) => {
            assert!(msg.contains("schema version 99"), "{msg}");
        }
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let opening: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(PgStore::open(opts(
                &url,
                &format!("n{i}"),
                Duration::from_secs(60),
            )))
        })
        .collect();
    for store in opening {
        store
            .await
            .unwrap()
            .expect("every node opens")
            .close()
            .await
            .unwrap();
    }
    assert_eq!(
        pg.psql(&url, "SELECT count(*) FROM webhookd_schema"),
        preflix_webhookd::store::postgres::schema::VERSION.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ids_on_two_nodes_are_stored_once() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let a = open(&url, "a").await;
    let b = open(&url, "b").await;
    a.create_endpoint(endpoint("acme")).await.unwrap();
    b.refresh_endpoints_now().await.unwrap();
    // The same 1,000 ids, 20 at a time, posted to both nodes at once, many requests concurrently.
    let ids: Vec<String> = (0..1000).map(|i| format!("evt_{i}")).collect();
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        for chunk in ids.chunks(20) {
            let store = store.clone();
            let events: Vec<NewEvent> = chunk.iter().map(|id| event(id, "acme", 1)).collect();
            tasks.push(tokio::spawn(async move { store.ingest(events).await }));
        }
    }
    let mut accepted = 0;
    let mut duplicate = 0;
    for t in tasks {
        for outcome in t.await.unwrap().expect("ingest commits") {
            match outcome {
                IngestOutcome::Accepted { deliveries: 1 } => accepted += 1,
                IngestOutcome::Duplicate { deliveries: 1 } => duplicate += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!((accepted, duplicate), (1000, 1000));
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM events"), "1000");
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM deliveries"), "1000");
    assert_eq!(a.counters().await.unwrap().events, 1000);
    assert_eq!(b.counters().await.unwrap().pending, 1000);
    // Same id, other content: a conflict, on either node; within one group too.
    let out = b
        .ingest(vec![
            event("evt_1", "acme", 2),
            event("new", "acme", 1),
            event("new", "acme", 3),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            IngestOutcome::Conflict,
            IngestOutcome::Accepted { deliveries: 1 },
            IngestOutcome::Conflict
        ]
    );
    // An event of another partner gets no delivery.
    let out = a.ingest(vec![event("other", "globex", 1)]).await.unwrap();
    assert_eq!(out, vec![IngestOutcome::Accepted { deliveries: 0 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_is_taken_over_and_its_owner_is_fenced() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let lease = Duration::from_millis(1500);
    let a = PgStore::open(opts(&url, "a", lease)).await.unwrap();
    let b = PgStore::open(opts(&url, "b", lease)).await.unwrap();
    let ep = a.create_endpoint(endpoint("acme")).await.unwrap();
    a.ingest(vec![event("e1", "acme", 1)]).await.unwrap();
    let first = claim(&a, &ep, 8).await;
    assert_eq!(first.claimed.len(), 1);
    // Under a's lease, b gets nothing; the next due time is the lease's end.
    let none = claim(&b, &ep, 8).await;
    assert!(none.claimed.is_empty());
    let due = none.next_due_ms.expect("the lease's end");
    assert!(due > now_ms() && due <= now_ms() + 1500, "{due}");
    // a stalls past its lease: b takes the delivery over.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = claim(&b, &ep, 8).await;
    assert_eq!(taken.claimed.len(), 1);
    assert!(taken.claimed[0].claim.fence > first.claimed[0].claim.fence);
    // a's late outcome cannot overwrite b's.
    let stale = a
        .settle(settlement(&first.claimed[0], SettleOutcome::Succeeded))
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced)), "{stale:?}");
    b.settle(settlement(
        &taken.claimed[0],
        SettleOutcome::Retry {
            at_ms: now_ms() + 60_000,
        },
    ))
    .await
    .unwrap();
    let ev = b.event_by_id("e1").await.unwrap().unwrap();
    let d = &b.event_deliveries(&ev).await.unwrap()[0];
    assert_eq!(d.attempts.len(), 1, "only b's attempt is recorded");
    assert_eq!(b.counters().await.unwrap().retrying, 1);
    // Settling the same claim twice is fenced too (the fence moved on with the settle? no: the
    // lease is gone, and a second settle must not count twice).
    assert_eq!(
        pg.psql(
            &url,
            "SELECT count(*) FROM deliveries WHERE lease_owner IS NULL"
        ),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_limits_hold_across_nodes() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let a = open(&url, "a").await;
    let b = open(&url, "b").await;
    let mut limited = endpoint("acme");
    limited.max_in_flight = 3;
    let limited = a.create_endpoint(limited).await.unwrap();
    let mut ordered = endpoint("ordered");
    ordered.ordered = true;
    let ordered = a.create_endpoint(ordered).await.unwrap();
    let events: Vec<NewEvent> = (0..10)
        .map(|i| event(&format!("l{i}"), "acme", 1))
        .collect();
    a.ingest(events).await.unwrap();
    let events: Vec<NewEvent> = (0..3)
        .map(|i| event(&format!("o{i}"), "ordered", 1))
        .collect();
    a.ingest(events).await.unwrap();

    // max_in_flight 3 for the cluster: a takes 3, b none; a settles one, b may take one.
    let ra = claim(&a, &limited, 10).await;
    assert_eq!(ra.claimed.len(), 3);
    let rb = claim(&b, &limited, 10).await;
    assert_eq!(rb.claimed.len(), 0);
    a.settle(settlement(&ra.claimed[0], SettleOutcome::Succeeded))
        .await
        .unwrap();
    let rb = claim(&b, &limited, 10).await;
    assert_eq!(rb.claimed.len(), 1);
    assert_eq!(a.in_flight(now_ms()).await.unwrap(), 3);

    // ordered: one at a time in reception order, a retrying head holds back the rest.
    let oa = claim(&a, &ordered, 10).await;
    assert_eq!(oa.claimed.len(), 1);
    assert_eq!(oa.claimed[0].event.id, "o0");
    let ob = claim(&b, &ordered, 10).await;
    assert!(ob.claimed.is_empty(), "the head is under way on a");
    a.settle(settlement(
        &oa.claimed[0],
        SettleOutcome::Retry {
            at_ms: now_ms() + 700,
        },
    ))
    .await
    .unwrap();
    let ob = claim(&b, &ordered, 10).await;
    assert!(
        ob.claimed.is_empty(),
        "the retrying head holds back the others"
    );
    assert!(ob.next_due_ms.is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ob = claim(&b, &ordered, 10).await;
    assert_eq!(ob.claimed.len(), 1);
    assert_eq!(ob.claimed[0].event.id, "o0");
    assert!(ob.claimed[0].retry);
    b.settle(settlement(&ob.claimed[0], SettleOutcome::Succeeded))
        .await
        .unwrap();
    let oa = claim(&a, &ordered, 10).await;
    assert_eq!(oa.claimed[0].event.id, "o1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_nodes() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let a = open(&url, "a").await;
    let b = open(&url, "b").await;
    let mut ep = endpoint("acme");
    ep.rate_limit_per_second = Some(2);
    let ep = a.create_endpoint(ep).await.unwrap();
    let events: Vec<NewEvent> = (0..10)
        .map(|i| event(&format!("r{i}"), "acme", 1))
        .collect();
    a.ingest(events).await.unwrap();
    let ra = claim(&a, &ep, 10).await;
    let rb = claim(&b, &ep, 10).await;
    assert_eq!(
        ra.claimed.len() + rb.claimed.len(),
        2,
        "2 per second for the cluster"
    );
    assert!(rb.next_due_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_and_comes_back() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let a = open(&url, "a").await;
    a.create_endpoint(endpoint("acme")).await.unwrap();
    pg.stop();
    let started = Instant::now();
    let r = a.ingest(vec![event("down", "acme", 1)]).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    crate::support::wait_until(Duration::from_secs(5), || !a.writable()).await;
    assert!(a.admit_ingest(0).is_err());
    pg.start_again();
    crate::support::wait_until(Duration::from_secs(10), || a.writable()).await;
    let out = a.ingest(vec![event("up", "acme", 1)]).await.unwrap();
    assert_eq!(out, vec![IngestOutcome::Accepted { deliveries: 1 }]);
    // A restart in place is survived the same way.
    pg.restart_fast();
    let mut ok = false;
    for _ in 0..100 {
        if a.ingest(vec![event("after", "acme", 1)]).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store reconnects by itself after a restart");
}

/// The claim contract every backend keeps (`store::contract`), on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_claim_contract() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let store = preflix_webhookd::store::Store::Postgres(open(&url, "a").await);
    preflix_webhookd::store::contract::check_all(&store).await;
    store.close().await.unwrap();
}

// Real daemons on one database.

use crate::support::{serve_to_exit, wait_until, Answer, TestDaemon, TestReceiver};
use http::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// Two nodes on one database, both serving and delivering.
async fn two_nodes() -> (Arc<PgCluster>, String, TestDaemon, TestDaemon) {
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let a = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |c| {
        c.storage.postgres.node_name = Some("node-a".into());
    })
    .await;
    let b = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |c| {
        c.storage.postgres.node_name = Some("node-b".into());
    })
    .await;
    (pg, url, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_1000_ids_posted_to_two_daemons_are_stored_and_delivered_once() {
    let receiver = TestReceiver::start().await;
    let (pg, url, a, b) = two_nodes().await;
    assert_eq!(
        a.token, b.token,
        "every node accepts the one token kept in the database"
    );
    a.client()
        .create_endpoint("acme", "production", &receiver.url("/hook"), &["*"])
        .await;
    // b learns of the endpoint through NOTIFY (or its 5 s refresh).
    wait_until_async_endpoints(&b, 1).await;
    let batches: Vec<serde_json::Value> = (0..20)
        .map(|chunk| {
            let events: Vec<serde_json::Value> = (0..50)
                .map(|i| {
                    json!({"partner_id": "acme", "id": format!("evt_{}", chunk * 50 + i),
                           "type": "audit.completed", "data": {"n": chunk * 50 + i}})
                })
                .collect();
            json!({"events": events})
        })
        .collect();
    let mut posts = Vec::new();
    for daemon in [&a, &b] {
        for batch in &batches {
            let client = daemon.client();
            let batch = batch.clone();
            posts.push(tokio::spawn(async move {
                client.post("/v1/events/batch", batch).await
            }));
        }
    }
    let (mut accepted, mut duplicate) = (0, 0);
    for post in posts {
        let (status, body) = post.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["results"].as_array().unwrap() {
            match r["outcome"].as_str().unwrap() {
                "accepted" => accepted += 1,
                "duplicate" => duplicate += 1,
                other => panic!("{other}: {r}"),
            }
        }
    }
    assert_eq!((accepted, duplicate), (1000, 1000));
    receiver.wait_for(1000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = receiver.event_ids();
    assert_eq!(ids.len(), 1000, "one delivery per event, no more");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM events"), "1000");
    // Both nodes delivered (the work is shared), and /status lists both with cluster figures.
    let (status, body) = a.client().get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["backend"], "postgres");
    assert_eq!(body["totals"]["events"], 1000);
    assert_eq!(body["totals"]["deliveries_succeeded"], 1000);
    let names: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
}

async fn wait_until_async_endpoints(d: &TestDaemon, n: usize) {
    let client = d.client();
    for _ in 0..200 {
        let (_, body) = client.get("/v1/endpoints").await;
        if body["endpoints"].as_array().is_some_and(|e| e.len() >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node never saw the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_down_answers_503_and_the_node_recovers_by_itself() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200));
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let daemon = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |_| {}).await;
    let client = daemon.client();
    client
        .create_endpoint("acme", "production", &receiver.url("/hook"), &["*"])
        .await;
    let (status, _) = client
        .post_event("acme", "production", "before", "audit.completed", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    receiver.wait_for(1, Duration::from_secs(20)).await;

    pg.stop();
    let started = Instant::now();
    let body = serde_json::to_vec(
        &json!({"partner_id": "acme", "id": "down", "type": "audit.completed", "data": {}}),
    )
    .unwrap();
    let (status, headers, text) = client
        .raw(Method::POST, "/v1/events", Some(body.clone()), true)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text:?}");
    assert!(String::from_utf8_lossy(&text).contains("storage_unavailable"));
    assert!(headers.get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let healthz = || async { client.raw(Method::GET, "/healthz", None, false).await.0 };
    let mut down = false;
    for _ in 0..100 {
        if healthz().await == StatusCode::SERVICE_UNAVAILABLE {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "/healthz says 503 while the database is down");

    pg.start_again();
    let mut up = false;
    for _ in 0..200 {
        if healthz().await == StatusCode::OK {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the node reconnects by itself");
    let (status, _, _) = client
        .raw(Method::POST, "/v1/events", Some(body), true)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    receiver.wait_for(2, Duration::from_secs(20)).await;

    // pg_ctl restart -m fast while events are posted: every 2xx is committed and delivered.
    let poster = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..300 {
                let id = format!("r{i}");
                let (status, _) = client
                    .post_event("acme", "production", &id, "audit.completed", json!({}))
                    .await;
                if status.is_success() {
                    acked.push(id);
                } else {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart_fast();
    let acked = poster.await.unwrap();
    assert!(!acked.is_empty());
    wait_until(Duration::from_secs(60), || {
        let got = receiver.event_ids();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    for id in acked.iter().take(5) {
        assert_eq!(
            pg.psql(
                &url,
                &format!("SELECT count(*) FROM events WHERE id = '{id}'")
            ),
            "1"
        );
    }
}

#[test]
fn a_newer_schema_stops_the_daemon_with_exit_64() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        open(&url, "a").await.close().await.unwrap();
    });
    pg.psql(&url, "INSERT INTO webhookd_schema (version) VALUES (7)");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nbackend = \"postgres\"\ndir = {:?}\n\n\
         [storage.postgres]\nurl = {:?}\n",
        dir.path().join("db").display().to_string(),
        url
    );
    let (code, output) = serve_to_exit(dir.path(), &config);
    assert_eq!(code, Some(64), "{output}");
    assert!(output.contains("schema version 7"), "{output}");
}

/// A node as a real process (`preflix-webhookd serve`) on the PostgreSQL database `url`.
struct Node {
    child: std::process::Child,
    client: crate::support::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(pg: &PgCluster, url: &str, name: &str, lease: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\n[storage]\n\
             backend = \"postgres\"\ndir = {:?}\n\n[storage.postgres]\nurl = {url:?}\n\
             lease = \"{lease}\"\nnode_name = \"{name}\"\npool_size = 4\n\n[delivery]\n\
             allow_private_networks = true\nrequire_https = false\ntimeout = \"60s\"\n\n\
             [retry]\nschedule = [\"100ms\"]\njitter = 0.0\n",
            dir.path().join("db").display().to_string()
        );
        let file = dir.path().join("config.toml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut child = std::process::Command::new(crate::support::binary())
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env_remove("PREFLIX_WEBHOOKD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut client = crate::support::Client {
            addr: ([127, 0, 0, 1], port).into(),
            token: String::new(),
        };
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(client.addr).await.is_ok()
                && client.raw(Method::GET, "/healthz", None, false).await.0 == StatusCode::OK
            {
                client.token =
                    pg.psql(url, "SELECT value FROM settings WHERE name = 'admin_token'");
                return Node {
                    child,
                    client,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "node {name} did not start: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node SIGKILLed with attempts under way: another node takes its claims over once their lease
/// has run out (within lease + 2 s of the kill), and delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_claims_are_taken_over_after_the_lease() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let receiver = TestReceiver::start().await;
    // The first five attempts hang (node a's); the ones after are answered at once.
    receiver.script((0..5).map(|_| Answer::status(200).delay(Duration::from_secs(60))));
    receiver.set_default(Answer::status(200));
    let mut a = Node::start(&pg, &url, "node-a", "2s").await;
    let (status, _) = a
        .client
        .post(
            "/v1/endpoints",
            json!({"partner_id": "acme", "url": receiver.url("/hook"), "event_types": ["*"], "max_in_flight": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for i in 0..5 {
        let (status, _) = a
            .client
            .post_event(
                "acme",
                "production",
                &format!("k{i}"),
                "audit.completed",
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    wait_until(Duration::from_secs(20), || receiver.in_progress() == 5).await;
    let b = Node::start(&pg, &url, "node-b", "2s").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 5, "b takes nothing while a's leases run");
    a.kill9();
    let killed = Instant::now();
    receiver.wait_for(10, Duration::from_secs(20)).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(4),
        "failover took {took:?}, more than lease + 2 s"
    );
    println!(
        "failover: first attempt by node b {} ms after the SIGKILL",
        took.as_millis()
    );
    let mut ids = receiver.event_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let mut done = false;
    for _ in 0..100 {
        let (_, status) = b.client.get("/status").await;
        if status["totals"]["deliveries_succeeded"] == 5 && status["queue"]["pending"] == 0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "node b settled the deliveries it took over");
}
