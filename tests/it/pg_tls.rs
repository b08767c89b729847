//! TLS to PostgreSQL, against a throwaway cluster listening on 127.0.0.1 with `ssl = on` and a
//! certificate from a CA the test makes (TCP connections must use TLS there): `sslmode=require`
//! with `sslrootcert` serves, and every connection of the daemon is encrypted (`pg_stat_ssl`);
//! a certificate from another CA, and `sslmode=disable`, stop the real binary with exit 64 and a
//! sentence naming the setting, never the password; `verify-ca` skips the host name only;
//! `migrate --to-postgres` reads the same parameters from a URI.

use crate::support::pg::{self, PgCluster};
use crate::support::*;
use http::StatusCode;
use preflix_webhookd::store::postgres::{PgOptions, PgStore};
use preflix_webhookd::store::{MasterKeys, StoreError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names` (DNS names or IP addresses): (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "postgres");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate written as a PEM file in `dir`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// A TLS cluster whose certificate (from `ca`) names `names`, and a database on it.
fn tls_cluster(ca: &Ca, names: &[&str]) -> (Arc<PgCluster>, String) {
    assert!(
        pg::available(),
        "PostgreSQL's binaries are needed for the TLS tests: apt-get install postgresql"
    );
    let (cert, key) = ca.leaf(names);
    let cluster = PgCluster::start_tls(&cert, &key);
    let socket_url = cluster.create_db();
    let db = socket_url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap()
        .to_string();
    (Arc::new(cluster), db)
}

/// The daemon's connections to `db` and how many of them are encrypted, as the server sees them.
fn encrypted_connections(cluster: &PgCluster, socket_url: &str, db: &str) -> (u32, u32) {
    let out = cluster.psql(
        socket_url,
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'preflix-webhookd' AND a.datname = '{db}'"
        ),
    );
    let (all, ssl) = out.split_once('|').expect("two columns");
    (all.parse().unwrap(), ssl.parse().unwrap())
}

fn config_toml(dir: &Path, url: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nbackend = \"postgres\"\ndir = '{}'\n\n\
         [storage.postgres]\nurl = '{url}'\n",
        dir.join("db").display()
    )
}

#[tokio::test]
async fn sslmode_require_with_the_ca_serves_and_every_connection_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhookd test database CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cluster, db) = tls_cluster(&ca, &["127.0.0.1", "localhost"]);
    let url = format!(
        "{} password=hunter2 sslmode=require sslrootcert={}",
        cluster.tcp_url(&db),
        ca_file.display()
    );
    let receiver = TestReceiver::start().await;
    let mut daemon = TestDaemon::start_on_postgres(cluster.clone(), url, |_| {}).await;
    let c = daemon.client();
    c.create_endpoint("acme", "sandbox", &receiver.url("/hook"), &["*"])
        .await;
    let (status, body) = c
        .post_event(
            "acme",
            "sandbox",
            "evt_tls_1",
            "audit.completed",
            json!({"n": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].headers["preflixai-event-id"], "evt_tls_1");

    // The pool, the LISTEN connection and the leader session: all over TLS.
    let socket_url = cluster.url(&db);
    let (all, ssl) = encrypted_connections(&cluster, &socket_url, &db);
    assert!(
        all >= 3,
        "the daemon holds at least 3 connections, saw {all}"
    );
    assert_eq!(ssl, all, "every connection of the daemon is encrypted");
    daemon.stop().await;
}

fn opts(url: String) -> PgOptions {
    PgOptions {
        url,
        pool_size: 2,
        lease: Duration::from_secs(60),
        node_name: "tls".into(),
        keys: MasterKeys::default(),
    }
}

#[tokio::test]
async fn verify_ca_accepts_a_certificate_for_another_host_name_that_require_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhookd test database CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cluster, db) = tls_cluster(&ca, &["db.example.internal"]);
    let url = |mode: &str| {
        format!(
            "{} sslmode={mode} sslrootcert={}",
            cluster.tcp_url(&db),
            ca_file.display()
        )
    };
    match PgStore::open(opts(url("require"))).await {
        Err(StoreError::Tls(why)) => {
            assert!(
                why.contains("verify-ca"),
                "the message names the way out: {why}"
            )
        }
        Err(other) => panic!("expected a TLS refusal, got {other}"),
        Ok(_) => panic!("a certificate for another host name was accepted under require"),
    }
    let store = PgStore::open(opts(url("verify-ca")))
        .await
        .expect("verify-ca checks the chain, not the host name");
    store.close().await.unwrap();
}

#[test]
fn a_certificate_from_another_ca_stops_start_up_with_the_setting_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhookd test database CA");
    let other = Ca::new("somebody else's CA");
    let other_file = other.write(dir.path(), "other.pem");
    let (cluster, db) = tls_cluster(&ca, &["127.0.0.1"]);
    // Under require with the wrong CA, and under the default (prefer) with the WebPKI roots: the
    // server offers TLS, its certificate fails verification, and nothing falls back to clear text.
    for extra in [
        format!("sslmode=require sslrootcert={}", other_file.display()),
        String::new(),
    ] {
        let url = format!("{} password=hunter2 {extra}", cluster.tcp_url(&db));
        let (code, output) = serve_to_exit(dir.path(), &config_toml(dir.path(), &url));
        eprintln!("{output}");
        assert_eq!(code, Some(64), "{output}");
        assert!(output.contains("certificate was refused"), "{output}");
        assert!(
            output.contains("sslrootcert="),
            "names the setting: {output}"
        );
        assert!(!output.contains("hunter2"), "never the password: {output}");
    }
}

#[test]
fn sslmode_disable_against_a_server_that_requires_tls_stops_start_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhookd test database CA");
    let (cluster, db) = tls_cluster(&ca, &["127.0.0.1"]);
    let url = format!("{} password=hunter2 sslmode=disable", cluster.tcp_url(&db));
    let (code, output) = serve_to_exit(dir.path(), &config_toml(dir.path(), &url));
    eprintln!("{output}");
    assert_eq!(code, Some(64), "{output}");
    assert!(output.contains("without TLS"), "{output}");
    assert!(
        output.contains("sslmode=require"),
        "names the setting: {output}"
    );
    assert!(!output.contains("hunter2"), "never the password: {output}");
}

/// `migrate --to-postgres` with the URI form: `sslmode=verify-full&sslrootcert=` copies over TLS;
/// the wrong CA stops it with exit 64, naming the URL it came from, never the password.
#[test]
fn migrate_to_postgres_honours_sslmode_and_sslrootcert_in_a_uri() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhookd test database CA");
    let other = Ca::new("somebody else's CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let other_file = other.write(dir.path(), "other.pem");
    let (cluster, db) = tls_cluster(&ca, &["127.0.0.1"]);
    let port = cluster
        .tcp_url(&db)
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .to_string();
    // An empty sled store to copy.
    let storage = dir.path().join("store");
    drop(preflix_webhookd::store::sled::SledStore::open(&storage, 16 << 20).unwrap());
    let config = dir.path().join("migrate.toml");
    std::fs::write(
        &config,
        format!("[storage]\ndir = '{}'\n", storage.display()),
    )
    .unwrap();
    let migrate = |rootcert: &Path| {
        let root = rootcert.display().to_string().replace('/', "%2F");
        let url = format!(
            "postgres://postgres:hunter2@127.0.0.1:{port}/{db}?sslmode=verify-full&sslrootcert={root}"
        );
        let out = std::process::Command::new(binary())
            .args(["migrate", "--to-postgres", &url, "--config"])
            .arg(&config)
            .env_remove("PREFLIX_WEBHOOKD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, output) = migrate(&other_file);
    assert_eq!(code, Some(64), "{output}");
    assert!(output.contains("certificate was refused"), "{output}");
    assert!(output.contains("--to-postgres URL"), "{output}");
    assert!(!output.contains("hunter2"), "never the password: {output}");
    let socket_url = cluster.url(&db);
    assert_eq!(
        cluster.psql(&socket_url, "SELECT to_regclass('events') IS NULL"),
        "t",
        "nothing was written"
    );

    let (code, output) = migrate(&ca_file);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        cluster.psql(&socket_url, "SELECT to_regclass('events') IS NOT NULL"),
        "t",
        "the schema is there"
    );
}
