//! The partner's side (issue 5): the `sign` and `verify` commands of the real binary, the
//! library's `Verifier` on deliveries captured from a running daemon, and
//! `examples/receiver.rs` run as a real process against a real daemon.

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use preflix_webhookd::signing::{self, HeaderSet, Secret, Verifier, VerifyError};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The endpoint secret of spec/API.md's known-answer vectors.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The partner guide's example event, as the daemon would deliver it.
const BODY: &str = r#"{"id":"evt_7b2","type":"audit.completed","created_at":"2026-01-15T19:04:12Z","data":{"bill_id":"bill_8f4","report_id":"report_33","status":"complete"}}"#;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the real binary with `args`, `stdin` as its standard input.
fn run_binary(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start preflix-webhookd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("preflix-webhookd runs")
}

/// `preflix-webhookd sign --secret SECRET [extra...] < body`: the header lines it prints.
fn sign_lines(secret: &str, extra: &[&str], body: &[u8]) -> Vec<String> {
    let mut args = vec!["sign", "--secret", secret];
    args.extend_from_slice(extra);
    let out = run_binary(&args, body);
    assert!(
        out.status.success(),
        "sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("sign prints text")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `preflix-webhookd verify --secret SECRET -H line... < body`.
fn verify_binary(secret: &str, lines: &[String], body: &[u8]) -> Output {
    let mut args = vec!["verify", "--secret", secret];
    for line in lines {
        args.push("-H");
        args.push(line);
    }
    run_binary(&args, body)
}

/// `name: value` lines as a header map.
fn header_map(lines: &[String]) -> HeaderMap {
    lines
        .iter()
        .map(|line| {
            let (name, value) = line.split_once(':').expect("`name: value`");
            (
                HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(value.trim()).unwrap(),
            )
        })
        .collect()
}

/// A header map as `name: value` lines, for `verify -H`.
fn header_lines(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
        .collect()
}

/// Only the headers whose names start with `prefix`.
fn only(headers: &HeaderMap, prefix: &str) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with(prefix))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[test]
fn sign_output_is_accepted_by_verify_and_by_the_verifier() {
    let body = BODY.as_bytes();
    let lines = sign_lines(SECRET, &[], body);
    let names: Vec<&str> = lines.iter().map(|l| l.split_once(':').unwrap().0).collect();
    for name in [
        "preflixai-timestamp",
        "preflixai-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert!(names.contains(&name), "{name} in {lines:?}");
    }

    let out = verify_binary(SECRET, &lines, body);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: verified"));

    // Each header set alone is enough for the command too.
    for prefix in ["preflixai-", "webhook-"] {
        let set: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect();
        let out = verify_binary(SECRET, &set, body);
        assert_eq!(out.status.code(), Some(0), "{prefix} set alone");
    }

    let verifier = Verifier::new(vec![SECRET.parse().unwrap()]);
    let headers = header_map(&lines);
    let verified = verifier
        .verify(&headers, body, unix_now())
        .expect("sign's headers verify");
    assert_eq!(verified.header_set, HeaderSet::Preflixai);
    let webhook = only(&headers, "webhook-");
    assert_eq!(
        verifier
            .verify(&webhook, body, unix_now())
            .unwrap()
            .header_set,
        HeaderSet::StandardWebhooks
    );
}

#[test]
fn verify_refuses_a_tampered_body_or_an_old_timestamp_with_the_reason() {
    let body = BODY.as_bytes();
    let lines = sign_lines(SECRET, &[], body);
    let tampered = BODY.replace("complete", "rejected");
    let out = verify_binary(SECRET, &lines, tampered.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no signature matches this body"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let other = Secret::generate();
    let out = verify_binary(other.as_str(), &lines, body);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signature matches"));

    let old = (unix_now() - 600).to_string();
    let lines = sign_lines(SECRET, &["--timestamp", &old], body);
    let out = verify_binary(SECRET, &lines, body);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too old"), "{stderr}");
    assert_eq!(
        Verifier::new(vec![SECRET.parse().unwrap()]).verify(&header_map(&lines), body, unix_now()),
        Err(VerifyError::StaleTimestamp)
    );
}

#[tokio::test]
async fn the_verifier_accepts_a_delivery_captured_from_a_running_daemon() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint(
            "acme-health",
            "sandbox",
            &receiver.url("/preflix"),
            &["audit.completed"],
        )
        .await;
    let first_secret: Secret = ep["secret"].as_str().unwrap().parse().unwrap();
    let (status, _) = c
        .post_event(
            "acme-health",
            "sandbox",
            "evt_captured",
            "audit.completed",
            json!({"bill_id": "bill_8f4", "report_id": "report_33", "status": "complete"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let delivery = &got[0];

    let verifier = Verifier::new(vec![first_secret.clone()]);
    let verified = verifier
        .verify(&delivery.headers, &delivery.body, unix_now())
        .expect("the daemon's delivery verifies");
    assert_eq!(verified.secret_index, 0);
    for (prefix, set) in [
        ("preflixai-", HeaderSet::Preflixai),
        ("webhook-", HeaderSet::StandardWebhooks),
    ] {
        let part = only(&delivery.headers, prefix);
        let verified = verifier
            .verify(&part, &delivery.body, unix_now())
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!(verified.header_set, set);
    }
    assert_eq!(
        Verifier::new(vec![Secret::generate()]).verify(
            &delivery.headers,
            &delivery.body,
            unix_now()
        ),
        Err(VerifyError::NoMatchingSignature)
    );

    // The `verify` command accepts the captured delivery, and `sign` with the same id and
    // timestamp reproduces the daemon's signatures byte for byte: one implementation.
    let lines = header_lines(&delivery.headers);
    let out = verify_binary(first_secret.as_str(), &lines, &delivery.body);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timestamp = delivery.headers["preflixai-timestamp"].to_str().unwrap();
    let signed = header_map(&sign_lines(
        first_secret.as_str(),
        &["--timestamp", timestamp],
        &delivery.body,
    ));
    for name in [
        "preflixai-event-id",
        "preflixai-event-type",
        "preflixai-timestamp",
        "preflixai-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert_eq!(signed[name], delivery.headers[name], "{name}");
    }

    // While the secret rotates, a delivery verifies under the old secret and the new one.
    let (status, rotated) = c
        .post(
            &format!("/v1/endpoints/{}/rotate-secret", ep["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret: Secret = rotated["secret"].as_str().unwrap().parse().unwrap();
    let (status, _) = c.post("/v1/events/evt_captured/redeliver", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let again = &got[1];
    assert_eq!(
        again.body, delivery.body,
        "the same bytes on every delivery"
    );
    for (index, secret) in [new_secret, first_secret].into_iter().enumerate() {
        for prefix in ["preflixai-", "webhook-"] {
            let part = only(&again.headers, prefix);
            Verifier::new(vec![secret.clone()])
                .verify(&part, &again.body, unix_now())
                .unwrap_or_else(|e| panic!("secret {index}, {prefix}: {e}"));
        }
    }
}

/// The example receiver's executable, next to the daemon's binary.
///
/// `cargo test --all-targets` builds examples but `cargo test --test it` does not, so the
/// first call runs `cargo build --example receiver` (a no-op when it is up to date).
pub(crate) fn receiver_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = binary()
                .parent()
                .expect("the binary is in a profile dir")
                .to_path_buf();
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "--quiet", "--example", "receiver"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // Cargo sets these for the test process; inherited, they would change the
            // fingerprints of crates whose build scripts watch them (ring watches
            // CARGO_MANIFEST_DIR) and make every later build rebuild those crates.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_MANIFEST_")
                    || name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_CRATE_")
                    || name.starts_with("CARGO_BIN_")
                    || name == "CARGO_PRIMARY_PACKAGE"
                    || name == "CARGO_TARGET_TMPDIR"
                    || name == "CARGO_RUSTC_CURRENT_DIR"
                {
                    build.env_remove(&*name);
                }
            }
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build --example receiver");
            assert!(status.success(), "cargo build --example receiver failed");
            let path = profile_dir
                .join("examples")
                .join(format!("receiver{}", std::env::consts::EXE_SUFFIX));
            assert!(path.exists(), "no example receiver at {}", path.display());
            path
        })
        .clone()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

/// `examples/receiver.rs` running as a child process; killed when dropped.
struct ExampleReceiver {
    child: Child,
    port: u16,
    state_dir: PathBuf,
    processed_log: PathBuf,
    stderr_path: PathBuf,
}

impl ExampleReceiver {
    /// Starts the receiver on `port` with `secret`, keeping its state under `dir`.
    async fn start(port: u16, secret: &str, dir: &Path) -> ExampleReceiver {
        let state_dir = dir.join("state");
        let processed_log = dir.join("processed.log");
        let stderr_path = dir.join("receiver.stderr");
        let child = Command::new(receiver_example())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--processed-log")
            .arg(&processed_log)
            .env("PREFLIX_WEBHOOK_SECRET", secret)
            .env("PREFLIX_RECEIVER_WORK_MS", "20")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start the example receiver");
        let receiver = ExampleReceiver {
            child,
            port,
            state_dir,
            processed_log,
            stderr_path,
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the example receiver did not listen: {}",
                receiver.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        receiver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/preflix", self.port)
    }

    /// What the receiver logged on stderr.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The lines of the processed log: one per event the receiver's worker processed.
    fn processed(&self) -> Vec<String> {
        std::fs::read_to_string(&self.processed_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines of the journal of event ids it acknowledged.
    fn journal(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join("seen-events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// POSTs `body` with `headers` straight to the receiver.
    async fn post(&self, headers: HeaderMap, body: Bytes) -> (StatusCode, Value) {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url())
            .header("host", format!("127.0.0.1:{}", self.port));
        req.headers_mut().unwrap().extend(headers);
        let (status, _, body) = send(addr, req.body(Full::new(body)).unwrap()).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

impl Drop for ExampleReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The deliveries of `event` to `endpoint`, from `GET /v1/events/{id}`.
async fn deliveries_to(c: &Client, event: &str, endpoint: &str) -> Vec<Value> {
    let (status, body) = c.get(&format!("/v1/events/{event}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["endpoint_id"] == endpoint)
        .cloned()
        .collect()
}

/// The last attempt of a delivery, as `GET /v1/events/{id}` shows it.
fn last_attempt(delivery: &Value) -> &Value {
    delivery["attempts"]
        .as_array()
        .and_then(|attempts| attempts.last())
        .expect("a delivery with an attempt")
}

/// Waits until `event` has `n` deliveries to `endpoint`, every one succeeded.
async fn wait_succeeded(c: &Client, event: &str, endpoint: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let deliveries = deliveries_to(c, event, endpoint).await;
        if deliveries.len() == n && deliveries.iter().all(|d| d["status"] == "succeeded") {
            return deliveries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deliveries of {event} to {endpoint}: {deliveries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_example_receiver_processes_once_and_rejects_an_old_replay() {
    let example_path = receiver_example();
    assert!(example_path.exists());
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/preflix");
    let ep = c
        .create_endpoint("acme-health", "sandbox", &url, &["audit.completed"])
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["secret"].as_str().unwrap().to_owned();
    // A second endpoint of the same partner captures the exact bytes every endpoint gets.
    let capture = TestReceiver::start().await;
    c.create_endpoint(
        "acme-health",
        "sandbox",
        &capture.url("/capture"),
        &["audit.completed"],
    )
    .await;
    let receiver = ExampleReceiver::start(port, &secret, dir.path()).await;

    // A delivery is verified, acknowledged and processed once.
    let (status, body) = c
        .post_event(
            "acme-health",
            "sandbox",
            "evt_partner_1",
            "audit.completed",
            json!({"bill_id": "bill_8f4", "report_id": "report_33", "status": "complete"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let first = wait_succeeded(&c, "evt_partner_1", &ep_id, 1).await;
    assert_eq!(last_attempt(&first[0])["status_code"], 202, "{first:#?}");
    wait_until(Duration::from_secs(10), || receiver.processed().len() == 1).await;
    assert_eq!(
        receiver.processed(),
        ["processed evt_partner_1 audit.completed"]
    );

    // A duplicate delivery (redeliver) succeeds at the daemon but is not processed twice.
    let (status, body) = c
        .post(
            "/v1/events/evt_partner_1/redeliver",
            json!({"endpoint_id": ep_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1);
    let both = wait_succeeded(&c, "evt_partner_1", &ep_id, 2).await;
    let redelivery = both
        .iter()
        .find(|d| d["id"] != first[0]["id"])
        .expect("a new delivery");
    let attempt = last_attempt(redelivery);
    assert_eq!(attempt["status_code"], 200, "{redelivery:#?}");
    assert!(
        attempt["response_snippet"]
            .as_str()
            .is_some_and(|s| s.contains(r#""duplicate":true"#)),
        "{redelivery:#?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.processed().len(), 1, "{}", receiver.log());
    assert_eq!(receiver.journal(), ["evt_partner_1 audit.completed"]);

    // A replay of the captured delivery, signed correctly but ten minutes ago, is refused.
    let captured = capture.wait_for(1, Duration::from_secs(10)).await[0].clone();
    let secrets = [secret.parse::<Secret>().unwrap()];
    let replay_at = |timestamp: i64| {
        let mut headers: HeaderMap =
            signing::sign(&secrets, "evt_partner_1", timestamp, &captured.body)
                .into_headers("evt_partner_1")
                .unwrap()
                .into_iter()
                .collect();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers
    };
    let (status, answer) = receiver
        .post(replay_at(unix_now() - 600), captured.body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("too old"),
        "{answer}"
    );
    let (status, answer) = receiver
        .post(replay_at(unix_now() + 600), captured.body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // The captured headers themselves were signed with the other endpoint's secret.
    let (status, _) = receiver
        .post(captured.headers.clone(), captured.body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Unsigned, or with a changed body: refused before any parsing.
    let (status, _) = receiver.post(HeaderMap::new(), captured.body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = receiver
        .post(replay_at(unix_now()), Bytes::from_static(b"{}"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Signed now, it verifies, and it is still the same event: acknowledged as a duplicate.
    let (status, answer) = receiver
        .post(replay_at(unix_now()), captured.body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["duplicate"], true);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.processed().len(), 1, "{}", receiver.log());
    let log = receiver.log();
    assert!(
        !log.contains("report_33") && !log.contains("bill_8f4"),
        "payload in the log: {log}"
    );
    assert!(!log.contains(&secret), "secret in the log");
}

#[tokio::test]
async fn the_example_receiver_takes_every_sample_event_and_remembers_across_restarts() {
    receiver_example();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let port = free_port();
    let ep = c
        .create_endpoint(
            "acme-health",
            "sandbox",
            &format!("http://127.0.0.1:{port}/preflix"),
            &["*"],
        )
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let receiver = ExampleReceiver::start(port, &secret, dir.path()).await;

    let types = [
        "bill.created",
        "bill.document_ready",
        "audit.started",
        "audit.completed",
        "letter.ready",
        "dispute.status_changed",
    ];
    let mut events = Vec::new();
    for event_type in types {
        let (status, body) = c
            .post(
                &format!("/v1/endpoints/{ep_id}/test"),
                json!({"type": event_type}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        events.push(body["event_id"].as_str().unwrap().to_owned());
    }
    for event in &events {
        wait_succeeded(&c, event, &ep_id, 1).await;
    }
    wait_until(Duration::from_secs(10), || receiver.processed().len() == 6).await;
    let processed = receiver.processed();
    for (event, event_type) in events.iter().zip(types) {
        assert!(
            processed.contains(&format!("processed {event} {event_type}")),
            "{processed:?}"
        );
    }

    // Restarted on the same state, it still knows every id: a redelivery does nothing.
    drop(receiver);
    let receiver = ExampleReceiver::start(port, &secret, dir.path()).await;
    let (status, _) = c
        .post(
            &format!("/v1/events/{}/redeliver", events[0]),
            json!({"endpoint_id": ep_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let both = wait_succeeded(&c, &events[0], &ep_id, 2).await;
    assert!(
        both.iter().any(|d| last_attempt(d)["status_code"] == 200),
        "{both:#?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.processed().len(), 6, "{}", receiver.log());
}

/// The code sample of the README's "Receiving events" (the same code, formatted by rustfmt), so it keeps compiling.
mod readme_sample {
    use http::HeaderMap; // the same type as hyper::HeaderMap
    use preflix_webhookd::signing::{Secret, Verifier, VerifyError};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Once, at start: every secret the endpoint may sign with, comma-separated (two while one rotates).
    #[allow(dead_code)]
    pub fn verifier_from_env() -> Verifier {
        let secrets =
            std::env::var("PREFLIX_WEBHOOK_SECRET").expect("PREFLIX_WEBHOOK_SECRET is set");
        Verifier::new(
            secrets
                .split(',')
                .map(|s| s.parse::<Secret>().expect("a whsec_ secret"))
                .collect(),
        )
    }

    /// For each request, before anything else: the headers and the raw body bytes, unparsed.
    pub fn check(
        verifier: &Verifier,
        headers: &HeaderMap,
        raw_body: &[u8],
    ) -> Result<(), (u16, String)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        match verifier.verify(headers, raw_body, now) {
            Ok(_) => Ok(()), // now parse raw_body, record the event id durably, answer 2xx
            Err(e @ (VerifyError::MissingHeader(_) | VerifyError::MalformedHeader(..))) => {
                Err((400, e.to_string()))
            }
            Err(e) => Err((401, e.to_string())), // stale or future timestamp, or no matching signature
        }
    }
}

#[test]
fn the_readme_sample_answers_like_the_example_receiver() {
    let verifier = Verifier::new(vec![SECRET.parse().unwrap()]);
    let body = BODY.as_bytes();
    let headers = header_map(&sign_lines(SECRET, &[], body));
    assert_eq!(readme_sample::check(&verifier, &headers, body), Ok(()));
    assert_eq!(
        readme_sample::check(&verifier, &headers, b"{}")
            .unwrap_err()
            .0,
        401
    );
    assert_eq!(
        readme_sample::check(&verifier, &HeaderMap::new(), body)
            .unwrap_err()
            .0,
        400
    );
}
