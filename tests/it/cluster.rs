//! Several real daemons ("nodes") on one throwaway PostgreSQL database (contract section 8): a node
//! killed with SIGKILL under load, the database restarted under load, two nodes racing on the same
//! event ids, and the failover time from a node's death to the next attempt of its claims.
//!
//! Every test starts its own cluster (`support::pg`), whatever `WEBHOOKD_TEST_BACKEND` says.

use crate::crash::request;
use crate::support::pg::PgCluster;
use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use preflix_webhookd::signing::{Secret, Verifier};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `storage.postgres.lease` of the nodes: short, so that a takeover is quick; longer than
/// `delivery.timeout` (claims are not renewed while an attempt is under way).
const LEASE: Duration = Duration::from_secs(3);
/// `delivery.max_in_flight` of every node: what one node can have claimed at once.
const NODE_IN_FLIGHT: usize = 32;

// ---- nodes ----

/// One real daemon of the cluster; SIGKILLed when dropped.
struct Node {
    name: String,
    dir: PathBuf,
    child: Child,
    addr: SocketAddr,
}

impl Node {
    /// Spawns the binary on `url` as node `name`; [`Node::wait_healthy`] waits for it.
    fn spawn(root: &Path, name: &str, url: &str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
            l.local_addr().unwrap().port()
        };
        let config = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "2s"

[storage]
dir = '{db}'
backend = "postgres"

[storage.postgres]
url = '{url}'
pool_size = 8
lease = "{lease}ms"
node_name = "{name}"

[delivery]
allow_private_networks = true
require_https = false
timeout = "2s"
max_in_flight = {NODE_IN_FLIGHT}

[retry]
schedule = ["100ms", "200ms", "300ms", "400ms", "500ms", "1s", "1s", "1s", "1s"]
jitter = 0.0

[log]
level = "warn"
"#,
            db = dir.join("db").display(),
            lease = LEASE.as_millis(),
        );
        let file = dir.join("config.toml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env_remove("PREFLIX_WEBHOOKD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon binary");
        Node {
            name: name.to_string(),
            dir,
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }

    async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node {} exited ({status}):\n{}", self.name, self.log());
            }
            if self.healthz().await == Some(StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not healthy within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn healthz(&self) -> Option<StatusCode> {
        request(self.addr, Method::GET, "/healthz", None, None)
            .await
            .ok()
            .map(|(s, _)| s)
    }

    fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.join("node.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(6000)..]).into_owned()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of its own, a database on it, and `names.len()` nodes started together (they race
/// on the schema migration, which an advisory lock serializes). Returns the admin token too.
async fn start_nodes(root: &Path, names: &[&str]) -> (PgCluster, String, Vec<Node>, String) {
    assert!(
        pg::available(),
        "PostgreSQL's binaries are needed for the cluster tests: apt-get install postgresql"
    );
    let cluster = PgCluster::start();
    let url = cluster.create_db();
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::spawn(root, n, &url)).collect();
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(60)).await;
    }
    let token = pg_admin_token(&url)
        .await
        .expect("the admin token is in the database once a node is up");
    (cluster, url, nodes, token)
}

/// A connection to the test database, for what only the database can tell (claims, rows).
async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// `(partner_id, event id)` of the deliveries `node` holds a claim on, not settled.
async fn claims_of(url: &str, node: &str) -> Vec<(String, String)> {
    db(url)
        .await
        .query(
            "SELECT e.partner_id, e.id FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE d.lease_owner = $1 AND d.status = 0",
            &[&node],
        )
        .await
        .expect("claims query")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn api(
    addr: SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    request(addr, method, path, Some(token), body)
        .await
        .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"))
}

/// Registers an endpoint for `partner` at the receiver's `path`; returns its secret.
async fn endpoint(
    node: &Node,
    token: &str,
    rx: &Rx,
    partner: &str,
    path: &str,
    ordered: bool,
    max_in_flight: usize,
) -> String {
    let (code, ep) = api(
        node.addr,
        token,
        Method::POST,
        "/v1/endpoints",
        Some(
            json!({"partner_id": partner, "environment": "production", "url": rx.url(path),
                    "event_types": ["*"], "ordered": ordered, "max_in_flight": max_in_flight}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_string();
    rx.expect_signed_by(path, &secret);
    secret
}

// ---- the receiver ----

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    id: String,
    /// Answered 2xx.
    ok: bool,
    at: Instant,
}

/// A receiver that verifies every signature and fails every `fail_every`-th request with a 500
/// (deterministic: a global counter), after `delay`.
#[derive(Clone)]
struct Rx {
    addr: SocketAddr,
    state: Arc<RxState>,
}

struct RxState {
    count: AtomicU64,
    fail_every: u64,
    delay: Duration,
    verifiers: Mutex<HashMap<String, Verifier>>,
    hits: Mutex<Vec<Hit>>,
    bad_signatures: AtomicU64,
}

impl Rx {
    async fn start(fail_every: u64, delay: Duration) -> Rx {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RxState {
            count: AtomicU64::new(0),
            fail_every,
            delay,
            verifiers: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
            bad_signatures: AtomicU64::new(0),
        });
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(rx_answer(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Rx { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn expect_signed_by(&self, path: &str, secret: &str) {
        let verifier = Verifier::new(vec![Secret::parse(secret).unwrap()]);
        self.state
            .verifiers
            .lock()
            .unwrap()
            .insert(path.to_string(), verifier);
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// How many times each `(path, id)` was answered 2xx.
    fn successes(&self) -> HashMap<(String, String), usize> {
        let mut map = HashMap::new();
        for h in self.hits().into_iter().filter(|h| h.ok) {
            *map.entry((h.path, h.id)).or_insert(0) += 1;
        }
        map
    }

    fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::Relaxed)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn rx_answer(s: &RxState, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    let headers: HeaderMap = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let id = headers
        .get("preflixai-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let signed = s
        .verifiers
        .lock()
        .unwrap()
        .get(&path)
        .is_some_and(|v| v.verify(&headers, &body, unix_now()).is_ok());
    let n = s.count.fetch_add(1, Ordering::Relaxed);
    let fail = !signed || (s.fail_every > 0 && n % s.fail_every == s.fail_every - 1);
    if !signed {
        s.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    s.hits.lock().unwrap().push(Hit {
        path,
        id,
        ok: !fail,
        at,
    });
    let status = if fail { 500 } else { 200 };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

// ---- producers ----

/// The nodes producers post to: the live ones, in turn.
#[derive(Clone)]
struct Targets {
    live: Arc<Mutex<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
}

impl Targets {
    fn new(nodes: &[Node]) -> Targets {
        Targets {
            live: Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect())),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn pick(&self) -> SocketAddr {
        let live = self.live.lock().unwrap();
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()]
    }

    fn remove(&self, addr: SocketAddr) {
        self.live.lock().unwrap().retain(|a| *a != addr);
    }
}

/// What the producers saw.
#[derive(Default)]
struct Ledger {
    /// Ids answered 202 or 200, by partner.
    acked: HashMap<String, Vec<String>>,
    /// Answers that were neither 2xx nor 503, nor a lost connection: each is a bug.
    unexpected: Vec<String>,
    /// 503s and lost connections, retried.
    retried: u64,
}

/// Posts `ids` (one event, or a batch through the contract's batch route) until some node answers
/// 2xx (503s and lost connections go to the next node; a batch is posted again whole, its
/// committed events then answered as duplicates); records them as acknowledged.
async fn post_until_acked(
    targets: &Targets,
    token: &str,
    ledger: &Mutex<Ledger>,
    partner: &str,
    ids: &[String],
) {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"partner_id": partner, "environment": "production", "id": id,
                   "type": "audit.completed", "data": {"id": id}})
        })
        .collect();
    let (path, body) = match events.len() {
        1 => ("/v1/events", events[0].clone()),
        _ => ("/v1/events/batch", json!({ "events": events })),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "{ids:?} not acknowledged within 120 s"
        );
        let addr = targets.pick();
        match request(addr, Method::POST, path, Some(token), Some(body.clone())).await {
            Ok((StatusCode::ACCEPTED | StatusCode::OK, answer)) => {
                let mut l = ledger.lock().unwrap();
                match answer["results"].as_array() {
                    Some(results) => {
                        for (r, id) in results.iter().zip(ids) {
                            if r["outcome"] == "accepted" || r["outcome"] == "duplicate" {
                                l.acked
                                    .entry(partner.to_string())
                                    .or_default()
                                    .push(id.clone());
                            } else {
                                l.unexpected.push(format!("{id} on {addr}: {r}"));
                            }
                        }
                    }
                    None => l
                        .acked
                        .entry(partner.to_string())
                        .or_default()
                        .push(ids[0].clone()),
                }
                return;
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) => {
                ledger.lock().unwrap().retried += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((code, body)) => {
                ledger
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("{ids:?} on {addr}: {code} {body}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// These tests start clusters of their own whatever the suite's backend: they run in the default
/// pass and not again in the `WEBHOOKD_TEST_BACKEND=postgres` one.
fn second_pass() -> bool {
    if on_postgres() {
        eprintln!("cluster tests run in the default pass, not again on postgres");
    }
    on_postgres()
}

/// What to do to the cluster in the middle of the run.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Disruption {
    /// SIGKILL the third node, not restarted.
    KillNode,
    /// `pg_ctl restart -m fast`.
    RestartDatabase,
}

const MAIN: &str = "main-partner";
/// Events per batch request of the unordered producers.
const BATCH: usize = 20;
const ORDERED: &str = "ordered-partner";

/// Three nodes, `total` events posted round-robin by 17 concurrent producers (one in forty to an
/// ordered endpoint, posted by one producer in sequence, the rest in batches), a receiver failing every fifth
/// request, and `disruption` once half the events are acknowledged.
async fn three_nodes_under_load(disruption: Disruption, total: usize) {
    let root = tempfile::tempdir().unwrap();
    let (cluster, url, mut nodes, token) = start_nodes(root.path(), &["n1", "n2", "n3"]).await;
    let cluster = Arc::new(Mutex::new(cluster));
    // Answers take 20 ms, so that a node has attempts in flight when it is killed.
    let rx = Rx::start(5, Duration::from_millis(20)).await;
    endpoint(&nodes[0], &token, &rx, MAIN, "/a", false, 64).await;
    endpoint(&nodes[1], &token, &rx, ORDERED, "/o", true, 1).await;
    // Every node reloads its endpoints on NOTIFY; give it a moment before posting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let targets = Targets::new(&nodes);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // One in forty to the ordered endpoint, one at a time by one producer; the rest in batches
    // of BATCH that 16 producers take in turn.
    let ordered_total = total / 40;
    let batches = (total - ordered_total) / BATCH;
    assert_eq!(batches * BATCH + ordered_total, total);
    let next_batch = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (targets, token, ledger) = (targets.clone(), token.clone(), ledger.clone());
        let next_batch = next_batch.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next_batch.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return;
                }
                let ids: Vec<String> = (0..BATCH).map(|k| format!("m{b}-{k}")).collect();
                post_until_acked(&targets, &token, &ledger, MAIN, &ids).await;
            }
        }));
    }
    {
        let (targets, token, ledger) = (targets.clone(), token.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..ordered_total {
                let id = format!("o-{k:05}");
                post_until_acked(&targets, &token, &ledger, ORDERED, &[id]).await;
            }
        }));
    }
    // Each node's /healthz, polled through the run: whether it went 503, and when it was last.
    let watching = Arc::new(AtomicBool::new(true));
    let mut watchers = Vec::new();
    for node in &nodes {
        let (addr, watching) = (node.addr, watching.clone());
        watchers.push(tokio::spawn(async move {
            let mut unhealthy: Option<(Instant, Instant)> = None;
            while watching.load(Ordering::Relaxed) {
                if let Ok((code, _)) = request(addr, Method::GET, "/healthz", None, None).await {
                    if code == StatusCode::SERVICE_UNAVAILABLE {
                        let now = Instant::now();
                        unhealthy = Some((unhealthy.map_or(now, |u| u.0), now));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unhealthy
        }));
    }

    // Half way: the disruption.
    let acked = |l: &Mutex<Ledger>| {
        l.lock()
            .unwrap()
            .acked
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_until(Duration::from_secs(600), || acked(&ledger) >= total / 2).await;
    let mut killed: Option<(Instant, Vec<(String, String)>)> = None;
    let mut restart_took = Duration::ZERO;
    match disruption {
        Disruption::KillNode => {
            let mut victim = nodes.pop().unwrap();
            // Killed while it holds claims, so that there is something to take over.
            let deadline = Instant::now() + Duration::from_secs(60);
            while claims_of(&url, &victim.name).await.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{} never held a claim",
                    victim.name
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            targets.remove(victim.addr);
            victim.kill9();
            let at = Instant::now();
            // The dead node's claims: what it had in flight, as the database has it.
            let claims = claims_of(&url, &victim.name).await;
            println!(
                "SIGKILL of {} after {} acknowledged events ({:.1?} in): {} claims in flight",
                victim.name,
                acked(&ledger),
                started.elapsed(),
                claims.len()
            );
            killed = Some((at, claims));
        }
        Disruption::RestartDatabase => {
            let c = cluster.clone();
            let t = Instant::now();
            tokio::task::spawn_blocking(move || c.lock().unwrap().restart_fast())
                .await
                .unwrap();
            restart_took = t.elapsed();
            println!(
                "pg_ctl restart -m fast after {} acknowledged events, took {restart_took:.1?}",
                acked(&ledger)
            );
        }
    }
    for t in tasks {
        t.await.expect("producer");
    }
    let ingest_took = started.elapsed();

    // Everything acknowledged is delivered, with valid signatures.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.unexpected.is_empty(),
        "answers other than 2xx/503 to ingest ({}): {:?}",
        ledger.unexpected.len(),
        &ledger.unexpected[..ledger.unexpected.len().min(10)]
    );
    let expected: HashSet<(String, String)> = [(MAIN, "/a"), (ORDERED, "/o")]
        .iter()
        .flat_map(|(partner, path)| {
            ledger.acked[*partner]
                .iter()
                .map(move |id| (path.to_string(), id.clone()))
        })
        .collect();
    assert_eq!(expected.len(), total, "every event acknowledged once");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let delivered = rx.successes();
        let missing = expected
            .iter()
            .filter(|k| !delivered.contains_key(*k))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events not delivered within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered_took = started.elapsed();
    assert_eq!(rx.bad_signatures(), 0, "deliveries with a bad signature");
    let successes = rx.successes();
    assert!(
        successes.keys().all(|k| expected.contains(k)),
        "the receiver got events nobody acknowledged"
    );
    let duplicates: Vec<&(String, String)> = successes
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    let extra: usize = successes.values().map(|n| n - 1).sum();

    // The ordered endpoint: first successes in the order its events were acknowledged (one
    // producer, in sequence, so that is the order they were received in).
    let mut seen = HashSet::new();
    let order: Vec<String> = rx
        .hits()
        .into_iter()
        .filter(|h| h.ok && h.path == "/o" && seen.insert(h.id.clone()))
        .map(|h| h.id)
        .collect();
    assert_eq!(order, ledger.acked[ORDERED], "the ordered endpoint's order");

    // /status on every survivor agrees with the receiver.
    let distinct = successes.len() as u64;
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, s) = api(node.addr, &token, Method::GET, "/status", None).await;
            assert_eq!(code, StatusCode::OK, "{s}");
            assert_eq!(s["backend"], "postgres", "{s}");
            let agrees = s["queue"]["pending"] == 0
                && s["queue"]["in_flight"] == 0
                && s["dead_letters"] == 0
                && s["totals"]["deliveries_succeeded"] == distinct
                && s["totals"]["events"] == total as u64;
            if agrees {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/status of {} disagrees with the receiver ({distinct} delivered, {total} events): {s}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    watching.store(false, Ordering::Relaxed);
    let mut unhealthy = Vec::new();
    for w in watchers {
        unhealthy.push(w.await.unwrap());
    }

    let attempts = rx.hits().len();
    println!(
        "{disruption:?}: {total} events acknowledged in {ingest_took:.1?} ({:.0}/s), all delivered \
         after {delivered_took:.1?} ({:.0}/s); {attempts} attempts; {} extra deliveries of {} \
         events; {} ingest requests retried",
        total as f64 / ingest_took.as_secs_f64(),
        total as f64 / delivered_took.as_secs_f64(),
        extra,
        duplicates.len(),
        ledger.retried
    );

    match disruption {
        Disruption::KillNode => {
            let (at, claims) = killed.unwrap();
            let claimed: HashSet<(String, String)> = claims
                .iter()
                .map(|(partner, id)| {
                    let path = if partner == ORDERED { "/o" } else { "/a" };
                    (path.to_string(), id.clone())
                })
                .collect();
            // Duplicates only for what the dead node had in flight, and at most that many.
            for d in &duplicates {
                assert!(
                    claimed.contains(*d),
                    "{d:?} delivered twice but the dead node had no claim on it"
                );
            }
            assert!(
                extra <= claimed.len(),
                "{extra} duplicates, {} claims",
                claimed.len()
            );
            assert!(claimed.len() <= NODE_IN_FLIGHT, "{} claims", claimed.len());
            // Failover: from the SIGKILL to the next attempt of each of its claims.
            let hits = rx.hits();
            let firsts: Vec<Duration> = claimed
                .iter()
                .map(|(path, id)| {
                    hits.iter()
                        .filter(|h| &h.path == path && &h.id == id && h.at > at)
                        .map(|h| h.at - at)
                        .min()
                        .expect("a claim of the dead node attempted again")
                })
                .collect();
            if let (Some(first), Some(last)) = (firsts.iter().min(), firsts.iter().max()) {
                println!(
                    "failover under load: SIGKILL to the next attempt of its {} claims: first \
                     {first:.2?}, last {last:.2?} (lease {LEASE:?})",
                    firsts.len()
                );
                assert!(
                    *last <= LEASE + Duration::from_secs(10),
                    "failover took {last:?} (lease {LEASE:?})"
                );
            }
        }
        Disruption::RestartDatabase => {
            // No 2xx without a commit: every acknowledged id is a row.
            let ids: Vec<String> = expected.iter().map(|(_, id)| id.clone()).collect();
            let rows: i64 = db(&url)
                .await
                .query_one("SELECT count(*) FROM events WHERE id = ANY($1)", &[&ids])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                rows as usize, total,
                "acknowledged events missing from the database"
            );
            // Every node recovered by itself: healthy now, and each takes a new event.
            for (node, u) in nodes.iter().zip(&unhealthy) {
                assert_eq!(node.healthz().await, Some(StatusCode::OK), "{}", node.name);
                println!(
                    "{}: /healthz {}",
                    node.name,
                    match u {
                        Some((from, to)) => format!(
                            "503 from {:.1?} to {:.1?} after the producers started",
                            from.saturating_duration_since(started),
                            to.saturating_duration_since(started)
                        ),
                        None => "never seen 503 (polled every 100 ms)".into(),
                    }
                );
                let id = format!("after-{}", node.name);
                let (code, body) = api(
                    node.addr,
                    &token,
                    Method::POST,
                    "/v1/events",
                    Some(
                        json!({"partner_id": MAIN, "environment": "production", "id": id,
                                "type": "audit.completed", "data": {}}),
                    ),
                )
                .await;
                assert_eq!(code, StatusCode::ACCEPTED, "{}: {body}", node.name);
            }
            let rx2 = rx.clone();
            wait_until(Duration::from_secs(30), || {
                let s = rx2.successes();
                nodes
                    .iter()
                    .all(|n| s.contains_key(&("/a".to_string(), format!("after-{}", n.name))))
            })
            .await;
            let _ = restart_took;
        }
    }
    drop(nodes);
    drop(cluster);
}

/// Three nodes, 20,000 events, a receiver failing 20% of attempts, one node SIGKILLed half way and
/// not restarted: every acknowledged event delivered with a valid signature, duplicates only for
/// the dead node's claims, the ordered endpoint in order, `/status` of the survivors agreeing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_killed_lose_nothing_and_duplicate_only_its_claims() {
    if second_pass() {
        return;
    }
    three_nodes_under_load(Disruption::KillNode, events_total()).await;
}

/// The same with `pg_ctl restart -m fast` half way: nothing lost, no 2xx without a commit (503s
/// are retried until 2xx), every node healthy again by itself and taking new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_database_restart_by_themselves() {
    if second_pass() {
        return;
    }
    three_nodes_under_load(Disruption::RestartDatabase, events_total()).await;
}

/// 20,000, or `PREFLIX_CLUSTER_EVENTS`.
fn events_total() -> usize {
    std::env::var("PREFLIX_CLUSTER_EVENTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.max(400) / 400 * 400)
        .unwrap_or(20_000)
}

/// The same 1,000 ids posted to two nodes at the same moment: 1,000 events stored, one answer
/// of each pair new and the other the duplicate answer, 1,000 first deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_the_same_ids_store_and_deliver_each_once() {
    if second_pass() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (_cluster, url, nodes, token) = start_nodes(root.path(), &["r1", "r2"]).await;
    let rx = Rx::start(0, Duration::ZERO).await;
    endpoint(&nodes[0], &token, &rx, MAIN, "/a", false, 64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ids: Vec<String> = (0..1000).map(|i| format!("race-{i:04}")).collect();
    let mut both_new = Vec::new();
    for chunk in ids.chunks(16) {
        let pairs: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (token, id) = (token.clone(), id.clone());
                tokio::spawn(async move {
                    let event = json!({"partner_id": MAIN, "environment": "production", "id": id,
                                   "type": "audit.completed", "data": {"id": id}});
                    let (x, y) = tokio::join!(
                        request(
                            a,
                            Method::POST,
                            "/v1/events",
                            Some(&token),
                            Some(event.clone())
                        ),
                        request(
                            b,
                            Method::POST,
                            "/v1/events",
                            Some(&token),
                            Some(event.clone())
                        ),
                    );
                    (id, x.expect("node r1 answers"), y.expect("node r2 answers"))
                })
            })
            .collect();
        for pair in pairs {
            let (id, (cx, bx), (cy, by)) = pair.await.unwrap();
            let mut answers = [(cx, bx["duplicate"].clone()), (cy, by["duplicate"].clone())];
            answers.sort_by_key(|(c, _)| *c);
            assert_eq!(
                answers,
                [
                    (StatusCode::OK, Value::Bool(true)),
                    (StatusCode::ACCEPTED, Value::Bool(false))
                ],
                "{id}: {bx} / {by}"
            );
            both_new.push(id);
        }
    }
    let rows: i64 = db(&url)
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1000, "events stored");
    let rx2 = rx.clone();
    wait_until(Duration::from_secs(120), || rx2.successes().len() >= 1000).await;
    // Anything doubled would come within a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let successes = rx.successes();
    assert_eq!(successes.len(), 1000);
    let doubled: Vec<_> = successes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    assert_eq!(rx.hits().len(), 1000, "attempts");
    for node in &nodes {
        let (_, s) = api(node.addr, &token, Method::GET, "/status", None).await;
        assert_eq!(s["totals"]["events"], 1000, "{}: {s}", node.name);
        assert_eq!(s["nodes"].as_array().map(Vec::len), Some(2), "{s}");
    }
    assert_eq!(both_new.len(), 1000);
}

/// The failover figure on a quiet cluster: from the SIGKILL of a node holding claims (attempts
/// to a receiver that answers after 1 s) to the first attempt of each of them by the other node:
/// within the lease plus 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_claims_are_attempted_again_within_lease_plus_two_seconds() {
    if second_pass() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (_cluster, url, mut nodes, token) = start_nodes(root.path(), &["f1", "f2"]).await;
    let rx = Rx::start(0, Duration::from_secs(1)).await;
    endpoint(&nodes[0], &token, &rx, MAIN, "/a", false, 64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..40 {
        let addr = nodes[i % 2].addr;
        let (code, body) = api(
            addr,
            &token,
            Method::POST,
            "/v1/events",
            Some(
                json!({"partner_id": MAIN, "environment": "production", "id": format!("f-{i}"),
                        "type": "audit.completed", "data": {}}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    }
    // Kill f1 as soon as it holds claims.
    let deadline = Instant::now() + Duration::from_secs(30);
    while claims_of(&url, "f1").await.is_empty() {
        assert!(Instant::now() < deadline, "f1 never claimed a delivery");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[0].kill9();
    let at = Instant::now();
    let claims = claims_of(&url, "f1").await;
    assert!(!claims.is_empty());
    let ids: HashSet<String> = claims.into_iter().map(|(_, id)| id).collect();
    let rx2 = rx.clone();
    let ids2 = ids.clone();
    wait_until(LEASE + Duration::from_secs(30), || {
        let hits = rx2.hits();
        ids2.iter()
            .all(|id| hits.iter().any(|h| &h.id == id && h.at > at))
    })
    .await;
    let hits = rx.hits();
    let after: Vec<Duration> = ids
        .iter()
        .map(|id| {
            hits.iter()
                .filter(|h| &h.id == id && h.at > at)
                .map(|h| h.at - at)
                .min()
                .unwrap()
        })
        .collect();
    let (first, last) = (after.iter().min().unwrap(), after.iter().max().unwrap());
    println!(
        "failover: SIGKILL of f1 with {} claims in flight to their next attempt by f2: first \
         {first:.2?}, last {last:.2?} (lease {LEASE:?}; bound lease + 2 s)",
        ids.len()
    );
    assert!(
        *last <= LEASE + Duration::from_secs(2),
        "failover took {last:?}, over lease {LEASE:?} + 2 s"
    );
    // All 40 delivered in the end.
    let rx3 = rx.clone();
    wait_until(Duration::from_secs(60), || rx3.successes().len() >= 40).await;
}
