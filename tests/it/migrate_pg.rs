//! `preflix-webhookd migrate --to-postgres` with the real binary and a throwaway PostgreSQL: what
//! was pending in a stopped sled store is delivered from PostgreSQL (same secrets, attempt numbers
//! going on, nothing sent twice), dead letters come along, and the command refuses a store still in
//! use and a database that is not empty.

use crate::support::pg::PgCluster;
use crate::support::*;
use http::StatusCode;
use preflix_webhookd::signing::{Secret, Verifier};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PARTNER: &str = "migrating-partner";
/// Attempt 2 follows attempt 1 at once; attempt 3 waits long enough for the test to stop the sled
/// daemon and migrate in between.
const SCHEDULE: &str = r#"["100ms", "12s", "12s"]"#;

/// One daemon: the real binary, as a child process, on sled or on PostgreSQL.
struct Node {
    child: Child,
    client: Client,
    dir: PathBuf,
}

enum Backend<'a> {
    Sled,
    Postgres(&'a str),
}

/// The config both daemons and `migrate` read: one store directory, one master key, one token.
fn config_text(dir: &Path, port: u16, backend: &Backend<'_>) -> String {
    let storage = match backend {
        Backend::Sled => String::new(),
        Backend::Postgres(url) => format!(
            "backend = \"postgres\"\n\n[storage.postgres]\nurl = '{url}'\nlease = \"5s\"\nnode_name = \"pg-node\"\n"
        ),
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
token_file = '{token}'
shutdown_grace = "2s"

[storage]
dir = '{db}'
master_key_file = '{key}'
{storage}
[delivery]
allow_private_networks = true
require_https = false
timeout = "5s"

[retry]
schedule = {SCHEDULE}
jitter = 0.0
"#,
        token = dir.join("admin.token").display(),
        db = dir.join("db").display(),
        key = dir.join("master.key").display(),
    )
}

/// A directory with the admin token and the master key every run shares.
fn prepare(dir: &Path) {
    std::fs::write(
        dir.join("admin.token"),
        "migrate-test-token-0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(dir.join("master.key"), [0x42u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.token", "master.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

impl Node {
    async fn start(dir: &Path, backend: Backend<'_>) -> Node {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join("config.toml");
            std::fs::write(&config, config_text(dir, port, &backend)).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("daemon.log"))
                .unwrap();
            let mut child = Command::new(binary())
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .env_remove("PREFLIX_WEBHOOKD_CONFIG")
                .env_remove("CREDENTIALS_DIRECTORY")
                .env_remove("STATE_DIRECTORY")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let client = Client {
                addr: ([127, 0, 0, 1], port).into(),
                token: "migrate-test-token-0123456789abcdef".into(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                let health = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::crash::request(client.addr, http::Method::GET, "/healthz", None, None),
                )
                .await;
                if let Ok(Ok((StatusCode::OK, _))) = health {
                    return Node {
                        child,
                        client,
                        dir: dir.to_path_buf(),
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the daemon did not start; log:\n{}", log_tail(dir));
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "the daemon exited with {status}; log:\n{}",
                    log_tail(&self.dir)
                );
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join("daemon.log")).unwrap_or_default();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(6000)..]).into_owned()
}

/// `preflix-webhookd migrate --to-postgres URL --config <dir>/config.toml`, sled config.
fn migrate(dir: &Path, url: &str) -> Output {
    let config = dir.join("migrate.toml");
    std::fs::write(&config, config_text(dir, 1, &Backend::Sled)).unwrap();
    Command::new(binary())
        .args(["migrate", "--to-postgres", url, "--config"])
        .arg(&config)
        .env_remove("PREFLIX_WEBHOOKD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn endpoint(c: &Client, url: &str, event_type: &str) -> (String, Secret) {
    let ep = c
        .create_endpoint(PARTNER, "production", url, &[event_type])
        .await;
    let secret = ep["secret"].as_str().expect("secret").to_string();
    (
        ep["id"].as_str().unwrap().to_string(),
        Secret::parse(&secret).unwrap(),
    )
}

async fn post(c: &Client, id: &str, event_type: &str) {
    let (status, body) = c
        .post_event(
            PARTNER,
            "production",
            id,
            event_type,
            json!({"bill_id": id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

fn header(r: &Received, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Every request of `rx` per event id: the attempt numbers, in arrival order.
fn attempts_by_event(rx: &TestReceiver) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for r in rx.received() {
        out.entry(header(&r, "preflixai-event-id"))
            .or_default()
            .push(header(&r, "preflixai-attempt").parse().unwrap_or(0));
    }
    out
}

fn verify_all(rx: &TestReceiver, secret: &Secret) {
    let verifier = Verifier::new(vec![secret.clone()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for r in rx.received() {
        verifier
            .verify(&r.headers, &r.body, now)
            .unwrap_or_else(|e| {
                panic!("a delivery does not verify with the endpoint's secret: {e:?}")
            });
    }
}

async fn status(c: &Client) -> Value {
    let (s, body) = c.get("/status").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_pending_in_sled_is_delivered_from_postgres_once() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    prepare(dir);

    // Three receivers: one up, one down (503), one gone (410).
    let up = TestReceiver::start().await;
    let down = TestReceiver::start().await;
    down.set_default(Answer::status(503));
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));

    let sled = Node::start(dir, Backend::Sled).await;
    let c = sled.client.clone();
    // One event type per endpoint, so each event goes to one receiver.
    let (up_id, up_secret) = endpoint(&c, &up.url("/up"), "audit.completed").await;
    let (_, down_secret) = endpoint(&c, &down.url("/down"), "bill.created").await;
    let (gone_id, gone_secret) = endpoint(&c, &gone.url("/gone"), "letter.ready").await;
    for i in 0..6 {
        post(&c, &format!("evt_up{i}"), "audit.completed").await;
        post(&c, &format!("evt_down{i}"), "bill.created").await;
    }
    post(&c, "evt_gone", "letter.ready").await;
    // Sled delivers to `up`, makes attempts 1 and 2 at `down` (attempt 3 is 12 s away) and
    // dead-letters at `gone` (which disables that endpoint).
    up.wait_for(6, Duration::from_secs(60)).await;
    down.wait_for(12, Duration::from_secs(60)).await;
    gone.wait_for(1, Duration::from_secs(60)).await;
    wait_until_async(Duration::from_secs(30), || async {
        status(&c).await["dead_letters"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let (s, token) = c
        .post("/v1/tokens", json!({"partner_id": PARTNER, "environment": null, "ttl": "30d", "read_only": true, "description": "migrated"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{token}");
    let partner_token = token["token"].as_str().unwrap().to_string();
    let before = status(&c).await;
    let (_, dl_before) = c.get("/v1/dead-letters").await;
    let (_, event_before) = c.get("/v1/events/evt_down0").await;
    sled.stop();
    let stopped_at = Instant::now();
    assert_eq!(up.count(), 6);
    let down_before = down.count();
    assert_eq!(down_before, 12, "attempt 3 came before the stop");
    let gone_before = gone.count();

    let out = migrate(dir, &url);
    assert!(out.status.success(), "migrate failed: {}", text(&out));
    let report = text(&out);
    assert!(report.contains("endpoints     3"), "{report}");
    assert!(report.contains("events        13"), "{report}");
    assert!(
        report.contains(&format!("dead letters  {}", gone_before)),
        "{report}"
    );
    // The secrets are sealed in PostgreSQL, never in the clear.
    let stored = pg.psql(
        &url,
        "SELECT secrets::text FROM endpoints ORDER BY num LIMIT 1",
    );
    assert!(
        !stored.contains("whsec_"),
        "a secret is stored in the clear: {stored}"
    );

    // The receivers come back up; a PostgreSQL daemon takes over.
    down.set_default(Answer::status(200));
    gone.set_default(Answer::status(200));
    let node = Node::start(dir, Backend::Postgres(&url)).await;
    let c = node.client.clone();
    let (_, event_after) = c.get("/v1/events/evt_down0").await;
    assert_eq!(event_before["deliveries"], event_after["deliveries"]);
    let after = status(&c).await;
    assert_eq!(
        after["totals"]["events"], before["totals"]["events"],
        "{after}"
    );
    // The partner token works on PostgreSQL; the endpoint stats sled counted came along.
    let (s, eps) = c.with_token(&partner_token).get("/v1/endpoints").await;
    assert_eq!(s, StatusCode::OK, "{eps}");
    assert_eq!(eps["endpoints"].as_array().map(Vec::len), Some(3), "{eps}");
    let (s, stats) = c.get(&format!("/v1/endpoints/{up_id}/stats")).await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    let succeeded: u64 = stats["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["succeeded"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(succeeded, 6, "{stats}");

    // Attempt 3 of every pending delivery, from PostgreSQL, when it falls due (not before).
    down.wait_for(18, Duration::from_secs(60)).await;
    let by_event = attempts_by_event(&down);
    assert_eq!(by_event.len(), 6);
    for (id, attempts) in &by_event {
        assert_eq!(
            attempts,
            &vec![1, 2, 3],
            "attempts of {id} at the down receiver"
        );
    }
    let third = down.received()[12..].to_vec();
    assert!(
        third.iter().all(|r| r.at >= stopped_at),
        "attempt 3 came from the stopped sled daemon"
    );
    // ... and kept its due time: 12 s after attempt 2 (jitter 0), not at once when PostgreSQL's
    // node started.
    let mut second_at = HashMap::new();
    for r in &down.received()[..12] {
        if header(r, "preflixai-attempt") == "2" {
            second_at.insert(header(r, "preflixai-event-id"), r.at);
        }
    }
    for r in &third {
        let gap = r.at - second_at[&header(r, "preflixai-event-id")];
        assert!(
            gap >= Duration::from_millis(11_500),
            "attempt 3 came {gap:?} after attempt 2: the due time was lost"
        );
    }
    verify_all(&down, &down_secret);
    verify_all(&up, &up_secret);

    // The dead letters came along, and retrying them delivers from PostgreSQL.
    let (s, dl_after) = c.get("/v1/dead-letters").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        dl_after["dead_letters"], dl_before["dead_letters"],
        "dead letters differ"
    );
    let dead = dl_after["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), gone_before);
    assert!(dead.iter().all(|d| d["endpoint_id"] == gone_id.as_str()));
    let (s, body) = c
        .patch(
            &format!("/v1/endpoints/{gone_id}"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for d in &dead {
        let (s, body) = c
            .post(
                &format!("/v1/dead-letters/{}/retry", d["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    gone.wait_for(gone_before + dead.len(), Duration::from_secs(60))
        .await;
    verify_all(&gone, &gone_secret);

    // Nothing sled had delivered is sent again; nothing is left pending.
    wait_until_async(Duration::from_secs(30), || async {
        status(&c).await["queue"]["pending"].as_u64() == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(up.count(), 6, "a delivery sled had made was made again");
    assert_eq!(down.count(), 18, "a delivery was made twice");
    let (_, dl) = c.get("/v1/dead-letters").await;
    assert_eq!(dl["dead_letters"].as_array().map(Vec::len), Some(0));
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_store_in_use_and_a_database_not_empty() {
    let pg = PgCluster::start();
    let url = pg.create_db();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    prepare(dir);
    let rx = TestReceiver::start().await;
    let sled = Node::start(dir, Backend::Sled).await;
    endpoint(&sled.client, &rx.url("/hook"), "audit.completed").await;
    post(&sled.client, "evt_once", "audit.completed").await;
    rx.wait_for(1, Duration::from_secs(60)).await;

    // The daemon holds the store: refused, nothing copied.
    let out = migrate(dir, &url);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(text(&out).contains("in use"), "{}", text(&out));
    // Refused before the database was touched: not even the schema is there.
    assert_eq!(pg.psql(&url, "SELECT to_regclass('events') IS NULL"), "t");

    sled.stop();
    // An install without `server.token_file` has its generated token in storage.dir: every node
    // keeps accepting it.
    std::fs::write(
        dir.join("db").join("admin.token"),
        "generated-by-sled-0123456789\n",
    )
    .unwrap();
    let out = migrate(dir, &url);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("events        1"), "{}", text(&out));
    assert_eq!(
        pg.psql(
            &url,
            "SELECT value FROM settings WHERE name = 'admin_token'"
        ),
        "generated-by-sled-0123456789"
    );

    // Again into the same database: refused, what is there is left alone.
    let out = migrate(dir, &url);
    assert_eq!(out.status.code(), Some(73), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM events"), "1");
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM endpoints"), "1");
}
