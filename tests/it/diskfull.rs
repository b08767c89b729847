//! Storage faults on a small filesystem made by each test (a tmpfs, mounted as root and unmounted at the end even on failure): a full disk, recovery without a restart, and `storage.max_bytes`.
//!
//! Where a tmpfs cannot be mounted (not root, no mount namespace), each test prints why and passes
//! without running.

use crate::support::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tmpfs mounted on a fresh temp directory; unmounted (lazily if still busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot and returns `None`.
    fn mount(test: &str, mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs (run the tests as root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes in use on the filesystem.
    fn used(&self) -> u64 {
        let total = fs2::total_space(self.path()).expect("statvfs");
        total - fs2::available_space(self.path()).expect("statvfs")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path().to_path_buf();
        let ok = Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // A daemon that a failed test left running still holds files: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}

/// Fills the filesystem holding `dir` with one file until it refuses more; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    for _ in 0..4096 {
        if f.write(&[1u8; 512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

async fn healthz(c: &Client) -> (StatusCode, String) {
    let (status, _, body) = c.raw(Method::GET, "/healthz", None, false).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A batch of `n` events with ids `{prefix}{i}` and about 1 KiB of data each.
fn batch(prefix: &str, start: usize, n: usize) -> serde_json::Value {
    let events: Vec<_> = (start..start + n)
        .map(|i| {
            json!({"partner_id": "p", "environment": "sandbox", "id": format!("{prefix}{i}"),
                   "type": "bill.created", "data": {"n": i, "pad": "x".repeat(1000)}})
        })
        .collect();
    json!({"events": events})
}

/// Checks a refused ingest: 503, a storage code and a retry-after header.
fn assert_refusal(status: StatusCode, headers: &http::HeaderMap, body: &[u8], codes: &[&str]) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let err: serde_json::Value = serde_json::from_slice(body).expect("an error body");
    let code = err["error"]["code"].as_str().unwrap_or("");
    assert!(
        codes.contains(&code),
        "code {code} not in {codes:?}: {text}"
    );
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric retry-after");
    assert!(retry >= 1, "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_pauses_without_resends_and_recovers_without_restart() {
    sled_only!("a full disk and storage.max_bytes are about sled's directory");
    let Some(fs) = Tmpfs::mount("full_disk", 64) else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let store_dir = fs.path().join("store");
    let mut daemon = TestDaemon::start_with(|c| {
        c.storage.dir = store_dir.clone();
        // Failing deliveries keep settling (writing) for the whole test, none dies.
        c.retry.schedule = vec![Duration::from_millis(200); 500];
    })
    .await;
    let c = daemon.client();
    c.create_endpoint("p", "sandbox", &receiver.url("/hook"), &["bill.created"])
        .await;
    let mut acked: HashSet<String> = HashSet::new();
    for i in 0..300 {
        let id = format!("evt_a{i}");
        let (status, body) = c
            .post_event("p", "sandbox", &id, "bill.created", json!({"n": i}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        acked.insert(id);
    }
    receiver.wait_for(600, Duration::from_secs(60)).await;

    // The disk fills while deliveries fail and settle: the next settle meets ENOSPC.
    let filler = fill(fs.path());
    // No resend storm: once the attempts under way have ended, nothing more is sent while the
    // store cannot be written (before the fix: thousands of requests a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = receiver.count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = receiver.count() - before;
    eprintln!("full disk: {sent} requests reached the receiver in 3 s");
    assert!(
        sent <= 20,
        "{sent} requests reached the receiver in 3 s while the store could not be written"
    );
    let (status, body) = healthz(&c).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("storage_full"), "{body}");

    // Ingest is refused with 503 storage_full and retry-after: never a 500, never a false 2xx.
    for i in 0..20 {
        let body = serde_json::to_vec(&json!({"partner_id": "p", "environment": "sandbox",
            "id": format!("evt_full{i}"), "type": "bill.created", "data": {}}))
        .unwrap();
        let (status, headers, bytes) = c.raw(Method::POST, "/v1/events", Some(body), true).await;
        assert_refusal(status, &headers, &bytes, &["storage_full"]);
    }
    let (status, body) = healthz(&c).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Space comes back: the daemon recovers by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until_async(Duration::from_secs(60), || async {
        healthz(&c).await.0 == StatusCode::OK
    })
    .await;
    let mut accepted_after = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_after < 50 {
        assert!(Instant::now() < deadline, "ingest did not resume");
        let id = format!("evt_b{accepted_after}");
        let body = serde_json::to_vec(&json!({"partner_id": "p", "environment": "sandbox",
            "id": id, "type": "bill.created", "data": {}}))
        .unwrap();
        let (status, headers, bytes) = c.raw(Method::POST, "/v1/events", Some(body), true).await;
        if status == StatusCode::ACCEPTED {
            acked.insert(id);
            accepted_after += 1;
        } else {
            // The free-space measure may lag by a second.
            assert_refusal(status, &headers, &bytes, &["storage_full"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Every acknowledged event is delivered in the end.
    receiver.set_default(Answer::status(200));
    let ok_ids = || -> HashSet<String> {
        receiver
            .received()
            .iter()
            .filter(|r| r.at.elapsed() < Duration::from_secs(3600))
            .filter_map(|r| {
                r.headers
                    .get("preflixai-event-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .collect()
    };
    wait_until_async(Duration::from_secs(120), || async {
        let (_, s) = c.get("/status").await;
        s["queue"]["pending"] == 0 && s["queue"]["in_flight"] == 0
    })
    .await;
    let (_, s) = c.get("/status").await;
    assert_eq!(s["totals"]["events"], acked.len(), "{s}");
    assert_eq!(s["totals"]["deliveries_succeeded"], acked.len(), "{s}");
    let seen = ok_ids();
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    daemon.stop().await;
}

/// The limit below the free space (32 MiB on 48 MiB): ingest stops before ENOSPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_bytes_stops_ingest_before_the_disk_fills_and_deliveries_go_on() {
    sled_only!("a full disk and storage.max_bytes are about sled's directory");
    max_bytes_case("max_bytes_32_on_48", 32, 48).await;
}

/// A small limit (16 MiB) is not overshot by several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_max_bytes_is_not_overshot() {
    sled_only!("a full disk and storage.max_bytes are about sled's directory");
    max_bytes_case("max_bytes_16_on_64", 16, 64).await;
}

async fn max_bytes_case(name: &str, max_mib: u64, fs_mib: u64) {
    let max: u64 = max_mib * 1024 * 1024;
    let Some(fs) = Tmpfs::mount(name, fs_mib) else {
        return;
    };
    let fs = Arc::new(fs);
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let store_dir = fs.path().join("store");
    let mut daemon = TestDaemon::start_with(|c| {
        c.storage.dir = store_dir.clone();
        c.storage.max_bytes = max;
        c.retry.schedule = vec![Duration::from_millis(100); 3];
    })
    .await;
    let c = daemon.client();
    c.create_endpoint("p", "sandbox", &receiver.url("/hook"), &["bill.created"])
        .await;

    // Watch the filesystem and /healthz the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let max_used = Arc::new(AtomicU64::new(0));
    let unhealthy = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, max_used, unhealthy, fs, c) = (
            stop.clone(),
            max_used.clone(),
            unhealthy.clone(),
            fs.clone(),
            c.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_used.fetch_max(fs.used(), Ordering::Relaxed);
                if healthz(&c).await.0 != StatusCode::OK {
                    unhealthy.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Ingest as fast as one client can until refused, then keep trying for a while.
    let mut accepted = 0u64;
    let mut refused_at: Option<Instant> = None;
    // What had been sent and dead-lettered when ingest was first refused: both must grow after.
    let mut at_refusal: Option<(usize, u64)> = None;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "ingest was never refused");
        if refused_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        let body = serde_json::to_vec(&batch("evt_", n, 100)).unwrap();
        n += 100;
        let (status, headers, bytes) = c
            .raw(Method::POST, "/v1/events/batch", Some(body), true)
            .await;
        if status == StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            accepted += v["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["outcome"] == "accepted")
                .count() as u64;
        } else {
            assert_refusal(status, &headers, &bytes, &["storage_full"]);
            if at_refusal.is_none() {
                let (_, s) = c.get("/status").await;
                at_refusal = Some((receiver.count(), s["dead_letters"].as_u64().unwrap()));
            }
            refused_at.get_or_insert_with(Instant::now);
        }
    }
    assert!(accepted > 500, "only {accepted} events got in");
    let (sent_at_refusal, dead_at_refusal) = at_refusal.expect("ingest was refused");

    // Deliveries, settles and dead letters go on after ingest is refused.
    wait_until_async(Duration::from_secs(120), || async {
        let (_, s) = c.get("/status").await;
        s["dead_letters"].as_u64().unwrap() >= accepted
    })
    .await;
    assert!(receiver.count() > sent_at_refusal);
    let (_, s) = c.get("/status").await;
    assert!(s["dead_letters"].as_u64().unwrap() > dead_at_refusal, "{s}");
    assert_eq!(s["totals"]["events"], accepted, "{s}");
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let used = max_used.load(Ordering::Relaxed);
    eprintln!(
        "{name}: {accepted} events accepted, filesystem use peaked at {used} bytes (limit {max})"
    );
    assert_eq!(
        unhealthy.load(Ordering::Relaxed),
        0,
        "the store met a write fault before ingest was refused"
    );
    assert!(
        used <= max + max / 8,
        "the store reached {used} bytes with storage.max_bytes = {max}"
    );
    daemon.stop().await;
}

/// The real binary on a filesystem that fills while events arrive (its log file included), recovers
/// in place once space is freed, and is then killed with SIGKILL: after a restart every acknowledged
/// event is there, both those acknowledged before the disk filled and those after the reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_a_full_disk_a_reopen_and_sigkill() {
    sled_only!("a full disk and storage.max_bytes are about sled's directory");
    use crate::crash::{request, Daemon, Settings};
    let Some(fs) = Tmpfs::mount("full_disk_sigkill", 64) else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let settings = Settings {
        shutdown_grace: "2s",
        timeout: "5s",
        extra: "",
        retry_schedule: r#"["300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms", "300ms"]"#,
    };
    // Its log (stderr) is on the small filesystem too: log lines that cannot be written must not
    // stop the daemon (they once made the store writer panic, so it never recovered).
    let home = fs.path().to_path_buf();
    let mut daemon = Daemon::start(&home, settings).await;
    let c = daemon.client.clone();
    c.create_endpoint("p", "sandbox", &receiver.url("/hook"), &["bill.created"])
        .await;

    // Producers post all along; an event counts as acknowledged only on a 2xx.
    let acked = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (acked, stop, c) = (acked.clone(), stop.clone(), c.clone());
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("evt_{p}_{i}");
                i += 1;
                let body = json!({"partner_id": "p", "environment": "sandbox", "id": id,
                    "type": "bill.created", "data": {"pad": "y".repeat(500)}});
                let answer = request(
                    c.addr,
                    Method::POST,
                    "/v1/events",
                    Some(&c.token),
                    Some(body),
                )
                .await;
                match answer {
                    Ok((status, _)) if status.is_success() => {
                        acked.lock().unwrap().insert(id);
                    }
                    Ok((status, body)) => {
                        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The daemon is being killed.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let count = |acked: &Arc<std::sync::Mutex<HashSet<String>>>| acked.lock().unwrap().len();
    wait_until(Duration::from_secs(30), || count(&acked) >= 300).await;

    let filler = fill(fs.path());
    wait_until_async(Duration::from_secs(30), || async {
        healthz(&c).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthz(&c).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "no recovery after space was freed; log:\n{}",
            crate::crash::log_tail(&home)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_reopen = count(&acked);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&acked) < after_reopen + 200 {
        assert!(
            Instant::now() < deadline,
            "ingest did not resume after the reopen ({} acknowledged since); log:\n{}",
            count(&acked) - after_reopen,
            crate::crash::log_tail(&home)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    daemon.kill9();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    daemon.restart().await;
    let c = daemon.client.clone();
    let acked: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
    let mut missing = Vec::new();
    for id in &acked {
        let (status, _) = c.get(&format!("/v1/events/{id}")).await;
        if status != StatusCode::OK {
            missing.push(id.clone());
        }
    }
    eprintln!(
        "full disk + reopen + SIGKILL: {} acknowledged events, {} missing",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert_eq!(healthz(&c).await.0, StatusCode::OK);
    daemon.kill9();
}
