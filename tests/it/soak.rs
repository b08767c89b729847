//! Crash soak with the real binary: SIGKILLs at seeded random moments under mixed load (single
//! ingests from several producers, batches, re-posts of acknowledged ids) while a receiver fails a
//! third of its requests. After each restart no acknowledged id is taken as new; at the end every
//! acknowledged event reaches each of its endpoints, and only those, signed with their secrets.
//!
//! One restart in four is killed too, while it opens the store.
//!
//! `PREFLIX_SOAK_KILLS` sets the number of kills under load (20 by default, as CI runs it) and
//! `PREFLIX_SOAK_SEED` replays a run: the seed is printed at the start and in every failure.
//! The long run: `PREFLIX_SOAK_KILLS=200 cargo test --release --test it soak:: -- --nocapture`.

use crate::crash::{log_tail, request, Daemon, Settings, DEFAULT_SETTINGS};
use crate::support::Client;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use preflix_webhookd::signing::{Secret, Verifier};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Who events are for: (partner, environment). The last group has no endpoint at all.
const GROUPS: [(&str, &str); 4] = [
    ("soak-a", "production"),
    ("soak-b", "production"),
    ("soak-b", "sandbox"),
    ("soak-c", "production"),
];
/// The group of each endpoint: two for the first group, one for the next two, none for the last.
const ENDPOINT_GROUP: [usize; 4] = [0, 0, 1, 2];
const TYPES: [&str; 3] = ["audit.completed", "bill.created", "letter.ready"];
/// Producers posting one event at a time, beside one posting batches.
const SINGLE_PRODUCERS: u64 = 3;

/// Enough retries that a receiver failing a third of the time never exhausts them.
const SOAK_SETTINGS: Settings = Settings {
    retry_schedule: r#"["20ms", "30ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms",
    "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms",
    "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms"]"#,
    ..DEFAULT_SETTINGS
};

/// The endpoints an event of `group` goes to.
fn endpoints_of(group: usize) -> Vec<usize> {
    (0..ENDPOINT_GROUP.len())
        .filter(|&e| ENDPOINT_GROUP[e] == group)
        .collect()
}

/// Event ids say their group and type: `g<group>t<type>-<producer>-<n>`.
fn new_id(rng: &mut StdRng, producer: &str, n: u64) -> String {
    let group = rng.gen_range(0..GROUPS.len());
    let kind = rng.gen_range(0..TYPES.len());
    format!("g{group}t{kind}-{producer}-{n}")
}

fn group_of(id: &str) -> usize {
    usize::from(id.as_bytes()[1] - b'0')
}

/// The one content posted under `id`: re-posts send exactly this, so they are duplicates.
fn event_for(id: &str) -> Value {
    let (partner, environment) = GROUPS[group_of(id)];
    let kind = TYPES[usize::from(id.as_bytes()[3] - b'0')];
    let pad = "x".repeat(id.len() * 7 % 300);
    json!({"partner_id": partner, "environment": environment, "id": id, "type": kind,
           "data": {"ref": id, "pad": pad}})
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// splitmix64: one seed per cycle and producer from the run's seed.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// The receiver: one path per endpoint, checks every request, fails a third of them while flaky.
// ---------------------------------------------------------------------------------------------

/// One request the receiver got.
struct Hit {
    endpoint: usize,
    event: String,
    /// The receiver answered 2xx: from the partner's side, delivered.
    ok: bool,
    /// Signed with that endpoint's secret, and the body is the one posted under that id.
    genuine: bool,
}

struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    /// (endpoint, event) pairs answered 2xx at least once.
    delivered: Mutex<HashSet<(usize, String)>>,
    verifiers: Mutex<Vec<Verifier>>,
    rng: Mutex<StdRng>,
    flaky: AtomicBool,
    failed: AtomicUsize,
    slow: AtomicUsize,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(seed: u64) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            hits: Mutex::new(Vec::new()),
            delivered: Mutex::new(HashSet::new()),
            verifiers: Mutex::new(Vec::new()),
            rng: Mutex::new(StdRng::seed_from_u64(mix(seed, u64::MAX, 0))),
            flaky: AtomicBool::new(true),
            failed: AtomicUsize::new(0),
            slow: AtomicUsize::new(0),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, state }
    }

    fn url(&self, endpoint: usize) -> String {
        format!("http://{}/e{endpoint}", self.addr)
    }
}

async fn answer(s: &ReceiverState, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let endpoint = req.uri().path().strip_prefix("/e");
    let endpoint: usize = endpoint.and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = body.unwrap_or_default();
    let event = headers
        .get("preflixai-event-id")
        .and_then(|v| v.to_str().ok());
    let event = event.unwrap_or("").to_string();
    let signed = s
        .verifiers
        .lock()
        .unwrap()
        .get(endpoint)
        .is_some_and(|v| v.verify(&headers, &body, unix_now()).is_ok());
    let genuine = signed && is_posted_body(&event, &body);
    let (status, delay) = if s.flaky.load(Ordering::SeqCst) {
        let mut rng = s.rng.lock().unwrap();
        let status = if rng.gen_ratio(1, 3) { 500 } else { 200 };
        let slow = rng.gen_ratio(1, 20);
        (status, if slow { rng.gen_range(200..1000) } else { 0 })
    } else {
        (200, 0)
    };
    if status == 200 {
        s.delivered
            .lock()
            .unwrap()
            .insert((endpoint, event.clone()));
    } else {
        s.failed.fetch_add(1, Ordering::SeqCst);
    }
    s.hits.lock().unwrap().push(Hit {
        endpoint,
        event,
        ok: status == 200,
        genuine,
    });
    if delay > 0 {
        s.slow.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let resp = Response::builder().status(status);
    resp.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

/// Whether `body` is the delivery body of what was posted under `id`.
fn is_posted_body(id: &str, body: &[u8]) -> bool {
    let b = id.as_bytes();
    let well_formed = b.len() > 4
        && b[0] == b'g'
        && b[2] == b't'
        && usize::from(b[1].wrapping_sub(b'0')) < GROUPS.len()
        && usize::from(b[3].wrapping_sub(b'0')) < TYPES.len();
    let Ok(got) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if !well_formed {
        return false;
    }
    let want = event_for(id);
    got["id"] == id && got["type"] == want["type"] && got["data"] == want["data"]
}

// ---------------------------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------------------------

/// What the producers sent and what the daemon acknowledged.
#[derive(Default)]
struct Ledger {
    /// Every id ever sent.
    posted: HashSet<String>,
    /// Acknowledged ids (202, or accepted or duplicate in a batch), in order.
    acked: Vec<String>,
    acked_set: HashSet<String>,
    /// Sent, but the daemon died before it answered.
    uncertain: HashSet<String>,
    /// Where in `acked` the current cycle starts.
    cycle_start: usize,
    acked_single: usize,
    acked_in_batches: usize,
    reposts_under_load: usize,
    reposts_after_restarts: usize,
    uncertain_new: usize,
    uncertain_stored: usize,
}

impl Ledger {
    fn ack(&mut self, id: &str) {
        self.uncertain.remove(id);
        if self.acked_set.insert(id.to_string()) {
            self.acked.push(id.to_string());
        }
    }

    fn pick_acked(&self, rng: &mut StdRng) -> Option<String> {
        (!self.acked.is_empty()).then(|| self.acked[rng.gen_range(0..self.acked.len())].clone())
    }

    fn new_id(&mut self, rng: &mut StdRng, producer: &str, n: &mut u64) -> String {
        *n += 1;
        let id = new_id(rng, producer, *n);
        self.posted.insert(id.clone());
        id
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn expected_deliveries(id: &str) -> usize {
    endpoints_of(group_of(id)).len()
}

/// Posts events one at a time: mostly new ones, some re-posts of acknowledged ids. Stops at the
/// first request that gets no answer (the daemon was killed).
async fn single_producer(
    c: Client,
    ledger: Shared,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
    tag: String,
) -> Result<(), String> {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let repost = if rng.gen_ratio(3, 20) {
            ledger.lock().unwrap().pick_acked(&mut rng)
        } else {
            None
        };
        let is_repost = repost.is_some();
        let id = match repost {
            Some(id) => id,
            None => ledger.lock().unwrap().new_id(&mut rng, &tag, &mut n),
        };
        let answer = request(
            c.addr,
            Method::POST,
            "/v1/events",
            Some(&c.token),
            Some(event_for(&id)),
        )
        .await;
        let want = expected_deliveries(&id);
        let mut l = ledger.lock().unwrap();
        match answer {
            Err(_) => {
                if !is_repost {
                    l.uncertain.insert(id);
                }
                return Ok(());
            }
            Ok((StatusCode::ACCEPTED, b))
                if !is_repost && b["duplicate"] == false && b["deliveries"] == want =>
            {
                l.ack(&id);
                l.acked_single += 1;
            }
            Ok((StatusCode::OK, b))
                if is_repost && b["duplicate"] == true && b["deliveries"] == want =>
            {
                l.reposts_under_load += 1;
            }
            Ok((code, b)) => {
                let what = if is_repost {
                    "a re-post of acknowledged"
                } else {
                    "new"
                };
                return Err(format!("POST /v1/events of {what} id {id} answered {code} {b} ({want} deliveries expected)"));
            }
        }
    }
    Ok(())
}

/// Posts batches of 5 to 80 events, about one in ten a re-post of an acknowledged id.
async fn batch_producer(
    c: Client,
    ledger: Shared,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
    tag: String,
) -> Result<(), String> {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let size = rng.gen_range(5..=80);
        let mut ids: Vec<String> = Vec::with_capacity(size);
        let mut reposts = HashSet::new();
        {
            let mut l = ledger.lock().unwrap();
            while ids.len() < size {
                match l.pick_acked(&mut rng).filter(|_| rng.gen_ratio(1, 10)) {
                    Some(id) if !reposts.contains(&id) => {
                        reposts.insert(id.clone());
                        ids.push(id);
                    }
                    Some(_) => {}
                    None => ids.push(l.new_id(&mut rng, &tag, &mut n)),
                }
            }
        }
        let results = match post_batch(&c, &ids).await {
            Ok(results) => results,
            Err(e) if e.starts_with("no answer") => {
                let mut l = ledger.lock().unwrap();
                l.uncertain
                    .extend(ids.into_iter().filter(|id| !reposts.contains(id)));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut l = ledger.lock().unwrap();
        for (id, r) in ids.iter().zip(results) {
            let want = if reposts.contains(id) {
                "duplicate"
            } else {
                "accepted"
            };
            if r["outcome"] != want || r["deliveries"] != expected_deliveries(id) {
                return Err(format!("batch: {id} should be {want}, got {r}"));
            }
            if want == "accepted" {
                l.ack(id);
                l.acked_in_batches += 1;
            } else {
                l.reposts_under_load += 1;
            }
        }
    }
    Ok(())
}

/// Posts `ids` as one batch; the results, checked to be in order. `Err("no answer ...")` when the
/// daemon did not answer.
async fn post_batch(c: &Client, ids: &[String]) -> Result<Vec<Value>, String> {
    let events: Vec<Value> = ids.iter().map(|id| event_for(id)).collect();
    let body = json!({ "events": events });
    let answer = request(
        c.addr,
        Method::POST,
        "/v1/events/batch",
        Some(&c.token),
        Some(body),
    )
    .await;
    let (code, body) = answer.map_err(|e| format!("no answer to a batch: {e}"))?;
    let results = body["results"].as_array().filter(|r| r.len() == ids.len());
    let results = match (code, results) {
        (StatusCode::OK, Some(results)) => results.clone(),
        _ => return Err(format!("batch of {} answered {code} {body}", ids.len())),
    };
    for (i, (id, r)) in ids.iter().zip(&results).enumerate() {
        if r["index"] != i || r["id"] != id.as_str() {
            return Err(format!("batch result {i} is not about {id}: {r}"));
        }
    }
    Ok(results)
}

/// After a restart: every acknowledged id of the last cycle and a sample of older ones is
/// answered as a duplicate; what was under way at the kill is posted again, as a producer would.
async fn after_restart(c: &Client, ledger: &Shared, rng: &mut StdRng) -> Result<(), String> {
    let sample = {
        let l = ledger.lock().unwrap();
        let mut sample = l.acked[l.cycle_start..].to_vec();
        for _ in 0..l.cycle_start.min(300) {
            sample.push(l.acked[rng.gen_range(0..l.cycle_start)].clone());
        }
        sample.sort();
        sample.dedup();
        sample
    };
    for chunk in sample.chunks(1000) {
        for (id, r) in chunk.iter().zip(post_batch(c, chunk).await?) {
            if r["outcome"] != "duplicate" || r["deliveries"] != expected_deliveries(id) {
                return Err(format!(
                    "acknowledged {id}, posted again after a restart: {r} (it was lost)"
                ));
            }
        }
        ledger.lock().unwrap().reposts_after_restarts += chunk.len();
    }
    for _ in 0..5 {
        let Some(id) = ledger.lock().unwrap().pick_acked(rng) else {
            break;
        };
        let answer = request(
            c.addr,
            Method::POST,
            "/v1/events",
            Some(&c.token),
            Some(event_for(&id)),
        )
        .await;
        match answer {
            Ok((StatusCode::OK, b)) if b["duplicate"] == true => {}
            other => {
                return Err(format!(
                    "acknowledged {id}, posted again after a restart: {other:?}"
                ))
            }
        }
        ledger.lock().unwrap().reposts_after_restarts += 1;
    }
    let mut uncertain: Vec<String> = ledger.lock().unwrap().uncertain.iter().cloned().collect();
    uncertain.sort();
    for chunk in uncertain.chunks(1000) {
        let results = post_batch(c, chunk).await?;
        let mut l = ledger.lock().unwrap();
        for (id, r) in chunk.iter().zip(results) {
            match r["outcome"].as_str() {
                Some("accepted") => l.uncertain_new += 1,
                Some("duplicate") => l.uncertain_stored += 1,
                _ => return Err(format!("{id}, unanswered at the kill, posted again: {r}")),
            }
            l.ack(id);
        }
    }
    let mut l = ledger.lock().unwrap();
    l.cycle_start = l.acked.len();
    Ok(())
}

fn fail(seed: u64, dir: &std::path::Path, msg: &str) -> ! {
    panic!(
        "{msg}\ncrash soak seed {seed}: replay with PREFLIX_SOAK_SEED={seed}; daemon log:\n{}",
        log_tail(dir)
    )
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_soak_loses_nothing_acknowledged_and_misdirects_nothing() {
    let kills = env_number("PREFLIX_SOAK_KILLS").unwrap_or(20);
    let seed = env_number("PREFLIX_SOAK_SEED").unwrap_or_else(rand::random);
    eprintln!("crash soak: {kills} kills, seed {seed} (replay with PREFLIX_SOAK_SEED={seed})");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let fail = |msg: &str| fail(seed, dir.path(), msg);
    let receiver = Receiver::start(seed).await;
    let mut d = Daemon::start(dir.path(), SOAK_SETTINGS).await;

    let mut endpoint_ids = Vec::new();
    let mut verifiers = Vec::new();
    for (e, &group) in ENDPOINT_GROUP.iter().enumerate() {
        let (partner, environment) = GROUPS[group];
        let body = json!({"partner_id": partner, "environment": environment, "url": receiver.url(e),
                          "event_types": ["*"], "max_in_flight": 16});
        let c = &d.client;
        let answer = request(
            c.addr,
            Method::POST,
            "/v1/endpoints",
            Some(&c.token),
            Some(body),
        )
        .await;
        let Ok((StatusCode::CREATED, ep)) = answer else {
            fail(&format!("create endpoint: {answer:?}"))
        };
        endpoint_ids.push(ep["id"].as_str().unwrap().to_string());
        verifiers.push(Verifier::new(vec![Secret::parse(
            ep["secret"].as_str().unwrap(),
        )
        .unwrap()]));
    }
    *receiver.state.verifiers.lock().unwrap() = verifiers;

    let ledger: Shared = Arc::default();
    let mut delays = Vec::new();
    let mut starting_kills = 0;
    for cycle in 0..kills {
        let mut rng = StdRng::seed_from_u64(mix(seed, cycle, 1000));
        // One kill in five comes early: during recovery and the id filter's scan.
        let delay = if rng.gen_ratio(1, 5) {
            rng.gen_range(0..150)
        } else {
            rng.gen_range(150..1500)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for p in 0..=SINGLE_PRODUCERS {
            let (c, l, s) = (d.client.clone(), ledger.clone(), stop.clone());
            let rng = StdRng::seed_from_u64(mix(seed, cycle, p));
            producers.push(if p < SINGLE_PRODUCERS {
                tokio::spawn(single_producer(c, l, s, rng, format!("c{cycle}p{p}")))
            } else {
                tokio::spawn(batch_producer(c, l, s, rng, format!("c{cycle}b")))
            });
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        for p in producers {
            if let Err(e) = p.await.expect("producer task") {
                fail(&format!("cycle {cycle}: {e}"));
            }
        }
        delays.push(delay);
        // One restart in four is killed too, while it opens the store (or soon after).
        if rng.gen_ratio(1, 4) {
            let after = Duration::from_millis(rng.gen_range(0..400));
            if let Some(exit) = d.kill_while_starting(after).await {
                fail(&format!(
                    "after kill {}, a restart exited by itself: {exit}",
                    cycle + 1
                ));
            }
            starting_kills += 1;
        }
        d.restart().await;
        if let Err(e) = after_restart(&d.client, &ledger, &mut rng).await {
            fail(&format!(
                "after kill {} of {kills} ({delay} ms into its cycle): {e}",
                cycle + 1
            ));
        }
    }

    // The receiver recovers: every acknowledged event reaches each of its endpoints.
    receiver.state.flaky.store(false, Ordering::SeqCst);
    let drain = Instant::now();
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    let wanted: Vec<(usize, String)> = l
        .acked
        .iter()
        .flat_map(|id| {
            endpoints_of(group_of(id))
                .into_iter()
                .map(move |e| (e, id.clone()))
        })
        .collect();
    let before_drain = {
        let delivered = receiver.state.delivered.lock().unwrap();
        wanted.iter().filter(|w| delivered.contains(*w)).count()
    };
    // Only a stall fails: a long run has hundreds of thousands of deliveries left to make here.
    let mut missing = wanted.clone();
    let mut progress = (missing.len(), Instant::now());
    while !missing.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        {
            let delivered = receiver.state.delivered.lock().unwrap();
            missing.retain(|w| !delivered.contains(w));
        }
        if missing.len() < progress.0 {
            progress = (missing.len(), Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs(60) {
            let e: Vec<_> = missing.iter().take(5).collect();
            let (n, of) = (missing.len(), wanted.len());
            fail(&format!(
                "{n} of {of} acknowledged deliveries never arrived, e.g. {e:?}"
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let c = &d.client;
        let answer = request(c.addr, Method::GET, "/status", Some(&c.token), None).await;
        let Ok((StatusCode::OK, st)) = answer else {
            fail(&format!("/status: {answer:?}"))
        };
        if st["queue"]["pending"] == 0 && st["queue"]["in_flight"] == 0 {
            break st;
        }
        if Instant::now() > deadline {
            fail(&format!("the queue never drained: {st:#}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drain = drain.elapsed();

    if !l.uncertain.is_empty() || l.posted.len() != l.acked.len() {
        fail(&format!(
            "{} ids posted, {} acknowledged",
            l.posted.len(),
            l.acked.len()
        ));
    }
    if status["dead_letters"] != 0 || status["totals"]["events"] != l.acked.len() {
        fail(&format!(
            "{} events acknowledged, /status says {status:#}",
            l.acked.len()
        ));
    }
    // Nothing delivered that was not posted, nothing to an endpoint it was not for, every request
    // signed with its endpoint's secret and carrying the body posted.
    let hits = std::mem::take(&mut *receiver.state.hits.lock().unwrap());
    let mut per_pair: HashMap<(usize, &str), usize> = HashMap::new();
    for h in hits.iter() {
        if !l.posted.contains(&h.event) {
            fail(&format!(
                "endpoint {} received {:?}, never posted",
                h.endpoint, h.event
            ));
        }
        if !endpoints_of(group_of(&h.event)).contains(&h.endpoint) {
            fail(&format!(
                "{} was delivered to endpoint {}, which is not its partner's",
                h.event, h.endpoint
            ));
        }
        if !h.genuine {
            fail(&format!(
                "{} reached endpoint {} with a bad signature or body",
                h.event, h.endpoint
            ));
        }
        if h.ok {
            *per_pair.entry((h.endpoint, h.event.as_str())).or_default() += 1;
        }
    }
    let duplicates: usize = per_pair.values().map(|n| n - 1).sum();
    let twice = per_pair.values().filter(|&&n| n > 1).count();
    // Each event's deliveries, as the API shows them: one per endpoint it is for, succeeded.
    let mut rng = StdRng::seed_from_u64(mix(seed, u64::MAX, 1));
    for _ in 0..50 {
        let id = l.acked[rng.gen_range(0..l.acked.len())].clone();
        let c = &d.client;
        let answer = request(
            c.addr,
            Method::GET,
            &format!("/v1/events/{id}"),
            Some(&c.token),
            None,
        )
        .await;
        let Ok((StatusCode::OK, ev)) = answer else {
            fail(&format!("GET {id}: {answer:?}"))
        };
        let mut got: Vec<(String, String)> = ev["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["endpoint_id"].as_str().unwrap_or("").to_string(),
                    d["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = endpoints_of(group_of(&id))
            .into_iter()
            .map(|e| (endpoint_ids[e].clone(), "succeeded".to_string()))
            .collect();
        want.sort();
        if got != want {
            fail(&format!("{id}: deliveries {got:?}, expected {want:?}"));
        }
    }
    let s = &receiver.state;
    eprintln!(
        "crash soak (seed {seed}): {kills} kills (at {} to {} ms into a cycle) and {starting_kills} more \
         while starting, in {:.1} s; \
         {} events acknowledged ({} one at a time, {} in batches, {} unanswered at a kill: {} then new, {} already stored); \
         re-posts answered as duplicates: {} under load, {} after restarts; \
         {} deliveries due, all delivered ({} once the receiver recovered, {:.1} s to drain); \
         receiver: {} requests, {} answered 500, {} slow; duplicate deliveries: {duplicates} ({twice} deliveries received more than once)",
        delays.iter().min().unwrap_or(&0), delays.iter().max().unwrap_or(&0), started.elapsed().as_secs_f64(),
        l.acked.len(), l.acked_single, l.acked_in_batches, l.uncertain_new + l.uncertain_stored, l.uncertain_new, l.uncertain_stored,
        l.reposts_under_load, l.reposts_after_restarts,
        wanted.len(), wanted.len() - before_drain, drain.as_secs_f64(),
        hits.len(), s.failed.load(Ordering::SeqCst), s.slow.load(Ordering::SeqCst),
    );
}
