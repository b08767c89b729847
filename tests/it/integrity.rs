//! A damaged store with the real binary: refused at start (exit 65) with what is missing, reported
//! by `check`, started on purpose with `--accept-data-loss` (marked in /status); and the store's
//! files kept private whatever the umask.

use crate::support::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How many events the damaged stores hold.
const EVENTS: usize = 3000;

/// The exit code of a damaged store (EX_DATAERR).
const EXIT_DATA: i32 = 65;

fn config_file(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\ndir = '{}'\n\n[delivery]\nallow_private_networks = true\nrequire_https = false\n",
            dir.join("db").display()
        ),
    )
    .unwrap();
    path
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `preflix-webhookd <args> --config <dir>/config.toml` under umask 022, stderr to `<dir>/daemon.log`.
fn spawn(dir: &Path, port: u16, args: &[&str]) -> Child {
    let config = config_file(dir, port);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(binary())
        .args(args)
        .arg("--config")
        .arg(&config)
        .env_remove("PREFLIX_WEBHOOKD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn the binary")
}

fn log(dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join("daemon.log")).unwrap_or_default()).into_owned()
}

/// A daemon child process, killed if a test fails while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A daemon started from the binary; `Err` with its exit code when it stopped instead.
async fn serve(dir: &Path, extra: &[&str]) -> Result<(Running, Client), i32> {
    let port = free_port();
    let mut args = vec!["serve"];
    args.extend_from_slice(extra);
    let mut child = Running(spawn(dir, port, &args));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Err(status.code().unwrap_or(-1));
        }
        if let Ok(token) = std::fs::read_to_string(dir.join("db").join("admin.token")) {
            let client = Client {
                addr,
                token: token.trim().to_string(),
            };
            // A daemon that refuses its store serves 503 while it opens, then exits: the probe
            // must take a dropped connection as "not yet", not panic as `send` would.
            let healthy = tokio::time::timeout(Duration::from_secs(2), async {
                let req = http::Request::get(format!("http://{addr}/healthz"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                Some(sender.send_request(req).await.ok()?.status())
            })
            .await;
            if let Ok(Some(StatusCode::OK)) = healthy {
                return Ok((child, client));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child);
    panic!("the daemon neither started nor exited; log:\n{}", log(dir));
}

fn stop(mut child: Running) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
}

fn run_check(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    spawn(dir, free_port(), &args).wait_with_output().unwrap()
}

/// A stopped daemon's store holding [`EVENTS`] events (ids `evt_000000`...), killed with SIGKILL.
async fn filled(dir: &Path) {
    let (mut child, client) = serve(dir, &[]).await.unwrap();
    let pad = "p".repeat(400);
    for batch in 0..EVENTS / 200 {
        let events: Vec<Value> = (0..200)
            .map(|i| {
                json!({"id": format!("evt_{:06}", batch * 200 + i), "type": "audit.completed",
                       "partner_id": "integrity", "environment": "production",
                       "data": {"report_id": "r", "pad": pad}})
            })
            .collect();
        let (status, body) = client
            .post("/v1/events/batch", json!({ "events": events }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

/// Damages sled's data file the four ways of issue 9.
fn damage(db: &Path, how: &str) {
    use std::os::unix::fs::FileExt;
    let len = std::fs::metadata(db).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    match how {
        "half" => f.set_len(len / 2).unwrap(),
        "zeros" => f.write_all_at(&vec![0; len as usize], 0).unwrap(),
        "empty" => f.set_len(0).unwrap(),
        "flip" => {
            let bytes = std::fs::read(db).unwrap();
            for at in live_bytes(db.parent().unwrap()) {
                f.write_all_at(&[bytes[at] ^ 0x5a], at as u64).unwrap();
            }
        }
        other => panic!("no damage called {other}"),
    }
    f.sync_all().unwrap();
}

/// Offsets of bytes in the middle of sled's log whose damage loses data: a byte of a copy of an
/// event from the middle of the history. sled's file also holds superseded copies, padding and free
/// segments, whose damage loses nothing (and which the daemon rightly ignores), so each candidate
/// is tried on a copy of the store first, until `check` finds commits missing. When no single copy
/// does (under load sled writes more copies, and which one it reads is not told by its place in the
/// file), the same byte of every copy of that event is damaged together.
fn live_bytes(store: &Path) -> Vec<usize> {
    live_bytes_where(store, "commits are missing")
}

/// [`live_bytes`], for bytes whose damage makes `check` say `finding`.
fn live_bytes_where(store: &Path, finding: &str) -> Vec<usize> {
    let bytes = std::fs::read(store.join("db")).unwrap();
    let needle = format!("evt_{:06}", EVENTS / 2);
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i + 5)
        .collect();
    let candidates = found
        .iter()
        .rev()
        .take(12)
        .map(|&at| vec![at])
        .chain(std::iter::once(found.clone()));
    for at in candidates {
        let probe = tempfile::tempdir().unwrap();
        let copy = probe.path().join("db");
        std::fs::create_dir(&copy).unwrap();
        for e in std::fs::read_dir(store).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
        }
        let mut damaged = bytes.clone();
        for &i in &at {
            damaged[i] ^= 0x5a;
        }
        std::fs::write(copy.join("db"), &damaged).unwrap();
        let out = run_check(probe.path(), &[]);
        if String::from_utf8_lossy(&out.stdout).contains(finding) {
            return at;
        }
    }
    panic!(
        "no byte of {needle} in {} loses data when damaged ({} copies, one by one and all together)",
        store.display(),
        found.len()
    );
}

async fn a_damaged_store(how: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No `check` before the damage: opening the store makes sled index its whole log in a
    // snapshot, after which a flipped byte shows up when its record is read (and in `check`), not
    // as a shorter log at start (see README, "A damaged store is refused").
    filled(dir).await;
    damage(&dir.join("db").join("db"), how);

    // Refused, with a distinct exit code and a message naming the store and what is missing.
    let code = match serve(dir, &[]).await {
        Err(code) => code,
        Ok((child, client)) => {
            let (_, status) = client.get("/status").await;
            stop(child);
            panic!("{how}: a damaged store started: {status}");
        }
    };
    let text = log(dir);
    assert_eq!(code, EXIT_DATA, "{how}: exit code; log:\n{text}");
    assert!(
        text.contains(&dir.join("db").display().to_string())
            && (text.contains("damaged") || text.contains("unreadable")),
        "{how}: message: {text}"
    );
    assert!(text.contains("--accept-data-loss"), "{how}: {text}");
    assert!(!text.contains("panicked at src"), "{how}: {text}");

    // `check` says what is missing.
    let report = run_check(dir, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.status.code(), Some(EXIT_DATA), "{how}: check: {out}");
    assert!(out.contains("DAMAGED"), "{how}: {out}");

    // The operator accepts the loss: it starts, says so, and /status carries the mark.
    let (child, client) = serve(dir, &["--accept-data-loss"])
        .await
        .unwrap_or_else(|code| panic!("{how}: --accept-data-loss exited {code}:\n{}", log(dir)));
    let (_, status) = client.get("/status").await;
    let damaged = &status["storage"]["damaged"];
    assert!(damaged["since"].is_string(), "{how}: {status}");
    assert!(damaged["detail"].is_string(), "{how}: {status}");
    assert!(
        status["totals"]["events"].as_u64().unwrap() < EVENTS as u64,
        "{how}: {status}"
    );
    assert!(log(dir).contains("STARTING A DAMAGED STORE"), "{how}");
    // What survives is consistent again: a post of a new event works, and a plain restart too.
    let (code, body) = client
        .post_event(
            "integrity",
            "production",
            "evt_after",
            "audit.completed",
            json!({"report_id": "r"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{how}: {body}");
    stop(child);
    let (child, client) = serve(dir, &[])
        .await
        .unwrap_or_else(|code| panic!("{how}: restart exited {code}:\n{}", log(dir)));
    let (_, status) = client.get("/status").await;
    assert!(
        status["storage"]["damaged"].is_object(),
        "{how}: the mark stays: {status}"
    );
    stop(child);

    // The operator clears the mark.
    let cleared = run_check(dir, &["--clear-damage-mark"]);
    assert!(
        cleared.status.success(),
        "{how}: {}",
        String::from_utf8_lossy(&cleared.stdout)
    );
    let (child, client) = serve(dir, &[]).await.unwrap();
    let (_, status) = client.get("/status").await;
    assert!(
        status["storage"].get("damaged").is_none(),
        "{how}: {status}"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_half_is_refused_checked_and_accepted() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    a_damaged_store("half").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_filled_with_zeros_is_refused_checked_and_accepted() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    a_damaged_store("zeros").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_nothing_is_refused_checked_and_accepted() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    a_damaged_store("empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_flipped_byte_is_refused_checked_and_accepted() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    a_damaged_store("flip").await;
}

/// Outside systemd the umask is usually 022: the store must still be private (it holds every
/// endpoint's signing secret), and stay so through `compact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_private_whatever_the_umask() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (child, client) = serve(dir, &[]).await.unwrap();
    client
        .create_endpoint("integrity", "production", "http://127.0.0.1:9/hook", &["*"])
        .await;
    let big = "b".repeat(200_000);
    let (code, body) = client
        .post_event(
            "integrity",
            "production",
            "evt_big",
            "audit.completed",
            json!({"pad": big}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    stop(child);
    let assert_private = |when: &str| {
        let store = dir.join("db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store), 0o700, "{when}: {}", store.display());
        let mut seen = Vec::new();
        let mut stack = vec![store];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{when}: {}", p.display());
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), 0o600, "{when}: {}", p.display());
                    seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        for f in ["db", "conf", "watermark", "admin.token"] {
            assert!(seen.iter().any(|s| s == f), "{when}: {f} in {seen:?}");
        }
    };
    assert_private("after serve");
    let out = spawn(dir, free_port(), &["compact"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", log(dir));
    assert_private("after compact");
}

/// Bytes of sled's files in the store directory (what `compact` should shrink).
fn sled_bytes(store: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push(e.path());
            } else if name == "db" || name.starts_with("snap.") || d.ends_with("blobs") {
                total += e.metadata().unwrap().len();
            }
        }
    }
    total
}

/// A store that lived: thousands of events delivered and purged, more delivered and kept, dead
/// letters and pending deliveries. `compact` must give space back and keep everything readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_gives_space_back_and_keeps_everything() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ok = TestReceiver::start().await;
    let bad = TestReceiver::start().await;
    bad.set_default(Answer::status(500));
    let retention = |events: &str| {
        let port = free_port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\ndir = '{}'\n\n[delivery]\nallow_private_networks = true\nrequire_https = false\n\n[retry]\nschedule = [\"20ms\", \"20ms\"]\njitter = 0.0\n\n[retention]\nevents = \"{events}\"\ninterval = \"1s\"\n",
            dir.join("db").display()
        );
        (port, text)
    };
    let start = |events: &'static str| {
        let (port, text) = retention(events);
        let dir = dir.to_path_buf();
        async move {
            std::fs::write(dir.join("custom.toml"), text).unwrap();
            let child = Running(
                Command::new(binary())
                    .args(["serve", "--config"])
                    .arg(dir.join("custom.toml"))
                    .env_remove("PREFLIX_WEBHOOKD_CONFIG")
                    .env_remove("CREDENTIALS_DIRECTORY")
                    .env_remove("STATE_DIRECTORY")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut client = None;
            for _ in 0..600 {
                if let Ok(token) = std::fs::read_to_string(dir.join("db").join("admin.token")) {
                    let c = Client {
                        addr,
                        token: token.trim().to_string(),
                    };
                    if tokio::net::TcpStream::connect(addr).await.is_ok() {
                        let req = http::Request::get(format!("http://{addr}/healthz"))
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap();
                        if send(addr, req).await.0 == StatusCode::OK {
                            client = Some(c);
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (child, client.expect("the daemon starts"))
        }
    };
    let post = |client: Client, prefix: &'static str, kind: &'static str, n: usize| async move {
        let pad = "p".repeat(400);
        for batch in 0..n.div_ceil(200) {
            let events: Vec<Value> = (batch * 200..((batch + 1) * 200).min(n))
                .map(|i| {
                    json!({"id": format!("{prefix}{i:06}"), "type": kind, "partner_id": "integrity",
                           "environment": "production", "data": {"report_id": "r", "pad": pad}})
                })
                .collect();
            let (status, body) = client
                .post("/v1/events/batch", json!({ "events": events }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };

    // Phase 1: 1,000 events delivered, then purged by retention.
    let (child, client) = start("1s").await;
    client
        .create_endpoint(
            "integrity",
            "production",
            &ok.url("/a"),
            &["audit.completed"],
        )
        .await;
    post(client.clone(), "evt_gone_", "audit.completed", 1000).await;
    ok.wait_for(1000, Duration::from_secs(120)).await;
    wait_until_async(Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            client.get("/v1/events/evt_gone_000999").await.0 == StatusCode::NOT_FOUND
                && client.get("/v1/events/evt_gone_000000").await.0 == StatusCode::NOT_FOUND
        }
    })
    .await;
    stop(child);

    // Phase 2: most of the store: kept events (delivered), dead letters, pending deliveries. sled's
    // `import` made such a store bigger (issue 9: 29 → 55 MB on 20,000 delivered events).
    let (child, client) = start("30d").await;
    client
        .create_endpoint(
            "integrity",
            "production",
            &bad.url("/b"),
            &["dispute.status_changed"],
        )
        .await;
    let (code, body) = client
        .post(
            "/v1/endpoints",
            json!({"partner_id": "integrity", "environment": "production",
              "url": ok.url("/c"), "event_types": ["bill.created"], "rate_limit_per_second": 1}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    post(client.clone(), "evt_kept_", "audit.completed", 5000).await;
    post(client.clone(), "evt_dead_", "dispute.status_changed", 20).await;
    post(client.clone(), "evt_slow_", "bill.created", 100).await;
    ok.wait_for(1000 + 5000, Duration::from_secs(180)).await;
    wait_until_async(Duration::from_secs(60), || {
        let client = client.clone();
        async move { client.get("/status").await.1["dead_letters"] == json!(20) }
    })
    .await;
    stop(child);

    let store = dir.join("db");
    let before = sled_bytes(&store);
    let out = Command::new(binary())
        .args(["compact", "--config"])
        .arg(dir.join("custom.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = sled_bytes(&store);
    eprintln!("compact: {before} bytes of sled files before, {after} after");
    assert!(
        after < before * 2 / 3,
        "compact must give space back: {before} bytes before, {after} after"
    );

    // Everything is still there.
    let (child, client) = start("30d").await;
    let (code, event) = client.get("/v1/events/evt_kept_004500").await;
    assert_eq!(code, StatusCode::OK, "{event}");
    assert_eq!(event["deliveries"][0]["status"], "succeeded", "{event}");
    assert_eq!(
        client.get("/v1/events/evt_gone_000500").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, endpoints) = client.get("/v1/endpoints").await;
    assert_eq!(
        endpoints["endpoints"].as_array().unwrap().len(),
        3,
        "{endpoints}"
    );
    let (_, dead) = client.get("/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 20, "{dead}");
    let (_, status) = client.get("/status").await;
    assert_eq!(status["dead_letters"], json!(20), "{status}");
    let slow_pending = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pending"].as_u64().unwrap())
        .sum::<u64>();
    assert!(slow_pending > 50, "pending deliveries kept: {status}");
    let (code, body) = client
        .post_event(
            "integrity",
            "production",
            "evt_kept_000001",
            "audit.completed",
            json!({"report_id": "r", "pad": "p".repeat(400)}),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a stored id is still a duplicate: {body}"
    );
    stop(child);
    assert!(
        run_check(dir, &[]).status.code() != Some(EXIT_DATA),
        "the compacted store matches its watermark"
    );
}

/// Once sled has indexed its log in a snapshot (every open does), a damaged record no longer
/// shortens the log at start: sled reads it lazily. `check` reads everything and finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_damaged_record_that_sled_reads_lazily() {
    sled_only!("damage to sled's files, its watermark, `check` and `compact`");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    filled(dir).await;
    let healthy = run_check(dir, &[]);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    let db = dir.join("db").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for at in live_bytes_where(&dir.join("db"), "unreadable") {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let report = run_check(dir, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.status.code(), Some(EXIT_DATA), "{out}");
    assert!(
        out.contains("DAMAGED") && out.contains("unreadable"),
        "{out}"
    );
}
