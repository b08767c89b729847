//! Endpoint secrets at rest: with a master key no file of the store holds a secret, deliveries still
//! verify, restarts work, a missing or wrong key stops the real binary (exit 64), and keys rotate.

use crate::support::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::StatusCode;
use preflix_webhookd::config::Config;
use serde_json::json;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Writes a 32-byte key file made of `byte`s (a real key comes from /dev/urandom).
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32]).unwrap();
    path
}

/// Every form a secret could take in a file: the whole `whsec_...`, its base64 part and its raw bytes.
fn forms(secret: &str) -> Vec<(String, Vec<u8>)> {
    let b64 = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    vec![
        ("secret".into(), secret.as_bytes().to_vec()),
        ("base64".into(), b64.as_bytes().to_vec()),
        ("raw key".into(), raw),
    ]
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The files under `dir` that hold any form of any of `secrets`, and which form.
fn found_in(dir: &Path, secrets: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    let all = files(dir);
    assert!(
        all.iter().any(|p| p.ends_with("db")),
        "no sled data file under {}",
        dir.display()
    );
    for path in all {
        let bytes = std::fs::read(&path).unwrap();
        for secret in secrets {
            for (form, needle) in forms(secret) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    hits.push(format!("{} holds the {form}", path.display()));
                }
            }
        }
    }
    hits
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True when the delivery's `preflixai-signature` holds a signature under `secret`.
fn signed_with(r: &Received, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let ts = r.headers["preflixai-timestamp"].to_str().unwrap();
    let mut message = format!("{ts}.").into_bytes();
    message.extend_from_slice(&r.body);
    let expected = format!("v1={}", hmac_hex(&key, &message));
    r.headers["preflixai-signature"]
        .to_str()
        .unwrap()
        .split(',')
        .any(|s| s == expected)
}

async fn endpoint_with_secret(c: &Client, url: &str) -> (String, String) {
    let ep = c
        .create_endpoint("acme-health", "sandbox", url, &["*"])
        .await;
    (
        ep["id"].as_str().unwrap().to_string(),
        ep["secret"].as_str().unwrap().to_string(),
    )
}

async fn post(c: &Client, id: &str) {
    let (code, body) = c
        .post_event(
            "acme-health",
            "sandbox",
            id,
            "audit.completed",
            json!({"report_id": id}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
}

fn with_key(key: Option<PathBuf>, previous: Option<PathBuf>) -> impl FnOnce(&mut Config) {
    move |config| {
        config.storage.master_key_file = key;
        config.storage.previous_master_key_file = previous;
    }
}

/// With a key, neither the current secret nor one still in its rotation grace is in any file of the
/// store, in any form; deliveries carry signatures under both; after a restart they still verify.
/// The same steps without a key find the secret in the files: the search can see one.
#[tokio::test]
async fn with_a_master_key_no_store_file_holds_a_secret() {
    sled_only!("it searches sled's files for the secret");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "master_key", 0x5a);
    for encrypted in [true, false] {
        let receiver = TestReceiver::start().await;
        let mut daemon =
            TestDaemon::start_with(with_key(encrypted.then(|| key.clone()), None)).await;
        let c = daemon.client();
        let (ep, first) = endpoint_with_secret(&c, &receiver.url("/hook")).await;
        let (code, body) = c
            .post(&format!("/v1/endpoints/{ep}/rotate-secret"), json!({}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let second = body["secret"].as_str().unwrap().to_string();
        post(&c, "evt_sealed_1").await;
        let got = receiver.wait_for(1, WAIT).await;
        assert!(signed_with(&got[0], &first) && signed_with(&got[0], &second));
        daemon.stop().await;

        let hits = found_in(&daemon.config.storage.dir, &[first.clone(), second.clone()]);
        if encrypted {
            assert!(hits.is_empty(), "secrets found at rest: {hits:?}");
        } else {
            assert!(
                !hits.is_empty(),
                "without a key the search finds the secret"
            );
            continue;
        }

        daemon.restart().await;
        let c = daemon.client();
        let (_, body) = c.get(&format!("/v1/endpoints/{ep}/secret")).await;
        assert_eq!(body["secret"], second.as_str());
        post(&c, "evt_sealed_2").await;
        let got = receiver.wait_for(2, WAIT).await;
        assert!(signed_with(&got[1], &second) && signed_with(&got[1], &first));
        daemon.stop().await;
        assert!(found_in(&daemon.config.storage.dir, &[first, second]).is_empty());
    }
}

/// A store written without a key gets its secrets encrypted at the first start with one; after
/// `compact` (which drops the older copies sled's log still holds) no file holds the secret.
#[tokio::test]
async fn a_clear_store_is_encrypted_when_a_key_is_given() {
    sled_only!("it reads the secret as stored in sled's files");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "master_key", 0x11);
    let receiver = TestReceiver::start().await;
    let mut daemon = TestDaemon::start().await;
    let c = daemon.client();
    let (_, secret) = endpoint_with_secret(&c, &receiver.url("/hook")).await;
    daemon.stop().await;
    daemon.config.storage.master_key_file = Some(key.clone());
    daemon.restart().await;
    post(&daemon.client(), "evt_after_sealing").await;
    let got = receiver.wait_for(1, WAIT).await;
    assert!(signed_with(&got[0], &secret));
    daemon.stop().await;
    preflix_webhookd::store::compact(&daemon.config.storage.dir).unwrap();
    let hits = found_in(&daemon.config.storage.dir, std::slice::from_ref(&secret));
    assert!(hits.is_empty(), "secrets found after compact: {hits:?}");
    daemon.restart().await;
    post(&daemon.client(), "evt_after_compact").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert!(signed_with(&got[1], &secret));
    daemon.stop().await;
}

/// Rotation: started with the new key and the old one as the previous key, the store is encrypted
/// again with the new key; then the new key alone opens it and the old one alone no longer does.
#[tokio::test]
async fn the_master_key_rotates() {
    let keys = tempfile::tempdir().unwrap();
    let old = key_file(keys.path(), "old", 0x21);
    let new = key_file(keys.path(), "new", 0x22);
    let receiver = TestReceiver::start().await;
    let mut daemon = TestDaemon::start_with(with_key(Some(old.clone()), None)).await;
    let (ep, secret) = endpoint_with_secret(&daemon.client(), &receiver.url("/hook")).await;
    daemon.stop().await;

    daemon.config.storage.master_key_file = Some(new.clone());
    daemon.config.storage.previous_master_key_file = Some(old.clone());
    daemon.restart().await;
    daemon.stop().await;

    daemon.config.storage.previous_master_key_file = None;
    daemon.restart().await;
    let c = daemon.client();
    let (_, body) = c.get(&format!("/v1/endpoints/{ep}/secret")).await;
    assert_eq!(body["secret"], secret.as_str());
    post(&c, "evt_rotated").await;
    assert!(signed_with(&receiver.wait_for(1, WAIT).await[0], &secret));
    daemon.stop().await;

    // The old key alone is now the wrong key.
    let mut config = daemon.config.clone();
    config.storage.master_key_file = Some(old);
    let err = run_to_error(config).await;
    assert!(err.contains("do not decrypt"), "{err}");
}

/// Runs the daemon in this process, expecting it to refuse to start; returns its error.
async fn run_to_error(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_trigger, shutdown) = preflix_webhookd::shutdown::Shutdown::new();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        preflix_webhookd::run(config, listener, shutdown),
    )
    .await
    .expect("the daemon should have refused to start");
    result.expect_err("the daemon started").to_string()
}

/// A store with encrypted secrets started without its key, with the wrong key, or with a key
/// file of the wrong size: the real binary exits 64 with a message that says what to do, before
/// serving anything.
#[tokio::test]
async fn a_missing_wrong_or_malformed_key_stops_the_binary() {
    sled_only!("it starts the binary on the sled directory the daemon wrote");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "master_key", 0x33);
    let wrong = key_file(keys.path(), "wrong_key", 0x34);
    let short = keys.path().join("short_key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    let receiver = TestReceiver::start().await;
    let mut daemon = TestDaemon::start_with(with_key(Some(key.clone()), None)).await;
    endpoint_with_secret(&daemon.client(), &receiver.url("/hook")).await;
    daemon.stop().await;
    let store = daemon.config.storage.dir.clone();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n",
        store.display().to_string()
    );
    let cases: Vec<(String, &[&str])> = vec![
        (
            base.clone(),
            &["encrypted", "no master key", "storage.master_key_file"],
        ),
        (
            format!(
                "{base}master_key_file = {:?}\n",
                wrong.display().to_string()
            ),
            &["do not decrypt", "wrong_key"],
        ),
        (
            format!(
                "{base}master_key_file = {:?}\n",
                short.display().to_string()
            ),
            &["storage.master_key_file", "16 bytes", "exactly 32 bytes"],
        ),
        (
            format!(
                "{base}master_key_file = {:?}\n",
                keys.path().join("absent").display().to_string()
            ),
            &["storage.master_key_file", "cannot be read"],
        ),
    ];
    for (config, says) in cases {
        let (code, output) = serve_to_exit(keys.path(), &config);
        assert_eq!(code, Some(64), "{config}\n{output}");
        for s in says {
            assert!(output.contains(s), "`{s}` missing from: {output}");
        }
    }
    // With its key the same store starts.
    daemon.restart().await;
    let (_, status) = daemon.client().get("/status").await;
    assert_eq!(status["endpoints"].as_array().map(Vec::len), Some(1));
}
