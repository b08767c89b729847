//! Crash recovery with the real binary: SIGKILL at different moments and SIGTERM with attempts in
//! flight, then a restart on the same directory. Every acknowledged event must be delivered at least
//! once; nothing acknowledged is lost.

use crate::support::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTNER: &str = "crash-partner";

/// Settings that differ between the tests.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) shutdown_grace: &'static str,
    pub(crate) timeout: &'static str,
    /// `retry.schedule`, as TOML.
    pub(crate) retry_schedule: &'static str,
    /// More TOML, appended to the file (whole tables).
    pub(crate) extra: &'static str,
}

pub(crate) const DEFAULT_SETTINGS: Settings = Settings {
    shutdown_grace: "3s",
    timeout: "5s",
    retry_schedule: r#"["20ms", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms"]"#,
    extra: "",
};

/// The real binary, running as a child process on a directory that outlives it.
pub(crate) struct Daemon {
    pub(crate) dir: PathBuf,
    settings: Settings,
    child: Child,
    pub(crate) client: Client,
}

impl Daemon {
    /// Starts the binary on `dir`; a port taken between choosing it and binding it means another try.
    pub(crate) async fn start(dir: &Path, settings: Settings) -> Daemon {
        for _ in 0..5 {
            let (mut child, addr) = spawn(dir, settings);
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut healthy = false;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok((StatusCode::OK, _)) =
                    request(addr, Method::GET, "/healthz", None, None).await
                {
                    healthy = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !healthy {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            let token = admin_token_in(dir).await.expect("admin token");
            let client = Client { addr, token };
            return Daemon {
                dir: dir.to_path_buf(),
                settings,
                child,
                client,
            };
        }
        panic!(
            "the daemon did not start in 5 tries; log:\n{}",
            log_tail(dir)
        );
    }

    /// Starts the binary again on the same directory and SIGKILLs it `after` later, whether it is
    /// ready or still opening the store. The status it exited with by itself, if it did.
    pub(crate) async fn kill_while_starting(&mut self, after: Duration) -> Option<ExitStatus> {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "start of a second daemon on one directory"
        );
        self.child = spawn(&self.dir, self.settings).0;
        tokio::time::sleep(after).await;
        let exited = self.child.try_wait().unwrap();
        self.kill9();
        exited
    }

    /// SIGKILL, and reap the process.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` when it is still running after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts again on the same directory.
    pub(crate) async fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart of a running daemon"
        );
        let next = Daemon::start(&self.dir, self.settings).await;
        *self = next;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns the binary on `dir`, listening on a port that was free a moment ago.
fn spawn(dir: &Path, settings: Settings) -> (Child, SocketAddr) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        l.local_addr().unwrap().port()
    };
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(dir, port, settings)).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let child = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("PREFLIX_WEBHOOKD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the daemon binary");
    (child, ([127, 0, 0, 1], port).into())
}

fn config_text(dir: &Path, port: u16, s: Settings) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "{grace}"

{storage}
[delivery]
allow_private_networks = true
require_https = false
timeout = "{timeout}"

[retry]
schedule = {schedule}
jitter = 0.0

[log]
level = "info"

{extra}
"#,
        extra = s.extra,
        grace = s.shutdown_grace,
        timeout = s.timeout,
        schedule = s.retry_schedule,
        storage = storage_toml(dir),
    )
}

pub(crate) fn log_tail(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join("daemon.log")).unwrap_or_default();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(8000)..]).into_owned()
}

/// One request on a fresh connection that reports failure instead of panicking: the daemon may be
/// killed while it is under way.
pub(crate) async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", addr.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, value))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn api(c: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    request(c.addr, method, path, Some(&c.token), body)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn event_json(id: &str) -> Value {
    json!({"partner_id": PARTNER, "environment": "production", "id": id, "type": "audit.completed", "data": {"id": id}})
}

/// Posts `ids` in batches of 50; returns the ids acknowledged as accepted.
async fn ingest_batches(c: &Client, ids: &[String]) -> Vec<String> {
    let mut acked = Vec::new();
    for chunk in ids.chunks(50) {
        let events: Vec<Value> = chunk.iter().map(|id| event_json(id)).collect();
        let (code, body) = api(
            c,
            Method::POST,
            "/v1/events/batch",
            Some(json!({ "events": events })),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        for r in body["results"].as_array().unwrap() {
            assert_eq!(r["outcome"], "accepted", "{r}");
            assert_eq!(r["deliveries"], 1, "{r}");
            acked.push(r["id"].as_str().unwrap().to_string());
        }
    }
    acked
}

/// A receiver that answers after 20 ms, with a 500 to every fifth request.
async fn slow_flaky_receiver() -> TestReceiver {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_millis(20)));
    receiver.script((0..2000).map(|i| {
        let status = if i % 5 == 2 { 500 } else { 200 };
        Answer::status(status).delay(Duration::from_millis(20))
    }));
    receiver
}

async fn create_endpoint(c: &Client, receiver: &TestReceiver, max_in_flight: u32) -> String {
    let (code, ep) = api(
        c,
        Method::POST,
        "/v1/endpoints",
        Some(
            json!({"partner_id": PARTNER, "environment": "production", "url": receiver.url("/hook"),
                    "event_types": ["*"], "max_in_flight": max_in_flight}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{ep}");
    ep["id"].as_str().unwrap().to_string()
}

/// After a restart: every acknowledged event reaches the receiver and is recorded as delivered.
async fn assert_all_delivered(
    d: &Daemon,
    receiver: &TestReceiver,
    acked: &[String],
    endpoint: &str,
) {
    let want: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: HashSet<String> = receiver.event_ids().into_iter().collect();
        let missing: Vec<&&str> = want.iter().filter(|id| !seen.contains(**id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events never reached the receiver, e.g. {:?}; log:\n{}",
            missing.len(),
            acked.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            log_tail(&d.dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing left to do, nothing dead.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = api(&d.client, Method::GET, "/status", None).await;
        if st["queue"]["pending"] == 0 && st["queue"]["in_flight"] == 0 {
            assert_eq!(st["dead_letters"], 0, "{st:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each acknowledged event is stored, with one delivery to the endpoint, succeeded.
    for id in acked {
        let (code, ev) = api(&d.client, Method::GET, &format!("/v1/events/{id}"), None).await;
        assert_eq!(
            code,
            StatusCode::OK,
            "acknowledged event {id} is gone: {ev}"
        );
        let deliveries = ev["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1, "{ev:#}");
        assert_eq!(deliveries[0]["endpoint_id"], endpoint);
        assert_eq!(deliveries[0]["status"], "succeeded", "{ev:#}");
    }
}

fn counts(ids: Vec<String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

// ---------------------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kill9_right_after_ingest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = slow_flaky_receiver().await;
    let mut d = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;
    let acked = ingest_batches(&d.client, &ids("k1_", 400)).await;
    let in_flight = receiver.in_progress();
    d.kill9();
    let before = receiver.count();
    eprintln!("kill -9 right after ingest: {} acknowledged, {before} requests received, {in_flight} in flight", acked.len());
    assert!(
        before < acked.len() * 3 / 4,
        "many deliveries should still be pending at the kill ({before} received)"
    );

    receiver.clear_script();
    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
}

#[tokio::test]
async fn kill9_mid_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = slow_flaky_receiver().await;
    let mut d = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;
    let acked = ingest_batches(&d.client, &ids("k2_", 400)).await;
    // Well into delivery, with attempts under way.
    let r = receiver.clone();
    wait_until(Duration::from_secs(15), move || {
        r.count() >= 120 && r.in_progress() > 0
    })
    .await;
    let in_flight = receiver.in_progress();
    d.kill9();
    let before = receiver.count();
    eprintln!(
        "kill -9 mid-delivery: {} acknowledged, {before} requests received, {in_flight} in flight",
        acked.len()
    );
    assert!(
        before < acked.len(),
        "deliveries should still be pending at the kill ({before} received)"
    );

    receiver.clear_script();
    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
}

#[tokio::test]
async fn kill9_during_ingest_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = slow_flaky_receiver().await;
    let mut d = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;

    // Four producers posting one event at a time; only a 202 counts as acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (acked, stop, client) = (acked.clone(), stop.clone(), d.client.clone());
        producers.push(tokio::spawn(async move {
            let mut failures = 0;
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("k3_{p}_{i:05}");
                match request(
                    client.addr,
                    Method::POST,
                    "/v1/events",
                    Some(&client.token),
                    Some(event_json(&id)),
                )
                .await
                {
                    Ok((StatusCode::ACCEPTED, _)) => acked.lock().unwrap().push(id),
                    Ok((code, body)) => panic!("ingest answered {code}: {body}"),
                    // The daemon is gone: nothing more is acknowledged.
                    Err(_) => {
                        failures += 1;
                        if failures > 3 {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let a = acked.clone();
    wait_until(Duration::from_secs(20), move || {
        a.lock().unwrap().len() >= 200
    })
    .await;
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.expect("producer");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    eprintln!(
        "kill -9 during ingest: {} acknowledged, {} requests received",
        acked.len(),
        receiver.count()
    );

    receiver.clear_script();
    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_lets_attempts_in_flight_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_millis(400)));
    let mut d = Daemon::start(dir.path(), DEFAULT_SETTINGS).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;
    let acked = ingest_batches(&d.client, &ids("t1_", 60)).await;
    let r = receiver.clone();
    wait_until(Duration::from_secs(10), move || r.in_progress() >= 4).await;

    let sent = Instant::now();
    d.sigterm();
    let exit = d.wait_exit(Duration::from_secs(3 + 3)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "still running 6 s after SIGTERM; log:\n{}",
            log_tail(dir.path())
        )
    });
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status {exit:?}; log:\n{}",
        log_tail(dir.path())
    );
    let took = sent.elapsed();
    let before = receiver.count();
    eprintln!(
        "SIGTERM: exit 0 after {took:?}, {before} of {} received",
        acked.len()
    );
    assert!(
        before < acked.len(),
        "some deliveries should be left for after the restart ({before} received)"
    );

    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
    // The attempts that were under way finished and were recorded before the exit: none is made again.
    let twice: Vec<(String, usize)> = counts(receiver.event_ids())
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "delivered more than once after a graceful stop ({took:?}): {twice:?}; log:\n{}",
        log_tail(dir.path())
    );
}

#[tokio::test]
async fn sigterm_cuts_off_attempts_after_the_grace_and_they_are_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_secs(30)));
    let settings = Settings {
        shutdown_grace: "1s",
        timeout: "60s",
        ..DEFAULT_SETTINGS
    };
    let mut d = Daemon::start(dir.path(), settings).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;
    let acked = ingest_batches(&d.client, &ids("t2_", 5)).await;
    receiver.wait_for(5, Duration::from_secs(10)).await;

    let sent = Instant::now();
    d.sigterm();
    let exit = d.wait_exit(Duration::from_secs(1 + 3)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "still running 4 s after SIGTERM with a 1 s grace; log:\n{}",
            log_tail(dir.path())
        )
    });
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status {exit:?}; log:\n{}",
        log_tail(dir.path())
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "exited before the grace was over: {:?}",
        sent.elapsed()
    );

    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
    let seen = counts(receiver.event_ids());
    for id in &acked {
        assert!(
            seen[id] >= 2,
            "{id} was cut off and must be attempted again: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).delay(Duration::from_secs(30)));
    let settings = Settings {
        shutdown_grace: "60s",
        timeout: "60s",
        ..DEFAULT_SETTINGS
    };
    let mut d = Daemon::start(dir.path(), settings).await;
    let ep = create_endpoint(&d.client, &receiver, 8).await;
    let acked = ingest_batches(&d.client, &ids("t3_", 3)).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;

    // The first signal starts a drain that would wait up to 60 s for the attempts under way.
    d.sigterm();
    assert!(
        d.wait_exit(Duration::from_millis(500)).await.is_none(),
        "the first SIGTERM must wait for attempts in flight"
    );
    // While it drains, health says so and new requests are refused.
    let health = request(d.client.addr, Method::GET, "/healthz", None, None).await;
    assert!(
        matches!(health, Ok((StatusCode::SERVICE_UNAVAILABLE, _))),
        "healthz while stopping: {health:?}"
    );
    let sent = Instant::now();
    d.sigterm();
    let exit = d
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 5 s after a second SIGTERM; log:\n{}",
                log_tail(dir.path())
            )
        });
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert_ne!(
        exit.code(),
        Some(0),
        "an interrupted drain is not a clean exit"
    );

    // What was cut off is attempted again after the restart.
    receiver.set_default(Answer::status(200));
    d.restart().await;
    assert_all_delivered(&d, &receiver, &acked, &ep).await;
}
