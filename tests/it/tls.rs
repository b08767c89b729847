//! The production path: deliveries over HTTPS to receivers whose certificates come from a CA the test
//! makes, trusted through `delivery.extra_roots_file`; an expired certificate, a wrong host name and
//! an untrusted CA each fail the attempt with a sentence saying so, and nothing counts as delivered.
//! A bad `extra_roots_file` stops the real binary with exit 64.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
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

    /// A server certificate for `names`, valid from `not_before` to `not_after` (years).
    fn leaf(&self, names: &[&str], years: (i32, i32)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "receiver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

const VALID: (i32, i32) = (2020, 2090);
const EXPIRED: (i32, i32) = (2019, 2021);

/// An HTTPS receiver on 127.0.0.1:0 answering 200 to every request, recording bodies, and counting
/// handshakes that failed.
struct TlsReceiver {
    port: u16,
    received: Arc<Mutex<Vec<Bytes>>>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsReceiver {
    async fn start(leaf: Leaf) -> TlsReceiver {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (r, f) = (received.clone(), failed_handshakes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, r, f) = (acceptor.clone(), r.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        f.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let r = r.clone();
                        async move {
                            let body: Bytes = BodyExt::collect(req.into_body())
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            r.lock().unwrap().push(body);
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsReceiver {
            port,
            received,
            failed_handshakes,
        }
    }

    /// The URL a partner would register: the name the certificate is checked against.
    fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A daemon that trusts `cas` through `delivery.extra_roots_file`, requires https for production
/// endpoints, and reaches receivers on loopback.
async fn daemon_trusting(cas: &[&Ca]) -> (TestDaemon, tempfile::TempDir) {
    let pki = tempfile::tempdir().unwrap();
    let roots = pki.path().join("roots.pem");
    let pem: String = cas.iter().map(|ca| ca.cert.pem()).collect();
    std::fs::write(&roots, pem).unwrap();
    let daemon = TestDaemon::start_with(|config| {
        config.delivery.extra_roots_file = Some(roots);
        config.delivery.require_https = true;
        config.delivery.allow_private_networks = true;
    })
    .await;
    (daemon, pki)
}

async fn post(c: &Client, partner: &str, id: &str) {
    let (code, body) = c
        .post_event(
            partner,
            "production",
            id,
            "audit.completed",
            json!({"report_id": id}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 1, "{body}");
}

/// Waits until the event's single delivery is `status`; returns the delivery.
async fn delivery_when(c: &Client, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, ev) = c.get(&format!("/v1/events/{id}")).await;
        let d = ev["deliveries"][0].clone();
        if d["status"] == status {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {ev}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn delivers_over_https_to_a_receiver_behind_a_private_ca() {
    let ca = Ca::new("Partner Private CA");
    let receiver = TlsReceiver::start(ca.leaf(&["localhost"], VALID)).await;
    let (daemon, _pki) = daemon_trusting(&[&ca]).await;
    let c = daemon.client();
    c.create_endpoint("acme-health", "production", &receiver.url(), &["*"])
        .await;
    post(&c, "acme-health", "evt_tls_ok").await;
    let d = delivery_when(&c, "evt_tls_ok", "succeeded").await;
    assert_eq!(d["attempts"][0]["status_code"], 200, "{d}");
    assert_eq!(receiver.count(), 1);
    let body = receiver.received.lock().unwrap()[0].clone();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["id"], "evt_tls_ok");
}

/// Each bad certificate fails every attempt with its own sentence; the deliveries end dead, none
/// succeeds, no request body reaches a receiver.
#[tokio::test]
async fn expired_wrong_name_and_untrusted_certificates_fail_the_attempt() {
    let ca = Ca::new("Partner Private CA");
    let stranger = Ca::new("Some Other CA");
    let cases = [
        ("expired", ca.leaf(&["localhost"], EXPIRED)),
        ("wrong-name", ca.leaf(&["hooks.other.example"], VALID)),
        ("untrusted", stranger.leaf(&["localhost"], VALID)),
    ];
    let (daemon, _pki) = daemon_trusting(&[&ca]).await;
    let c = daemon.client();
    let mut receivers = Vec::new();
    for (partner, leaf) in cases {
        let receiver = TlsReceiver::start(leaf).await;
        c.create_endpoint(partner, "production", &receiver.url(), &["*"])
            .await;
        post(&c, partner, &format!("evt_{partner}")).await;
        receivers.push(receiver);
    }
    let says = [
        "certificate has expired",
        "not valid for the endpoint's host name",
        "not signed by a trusted CA",
    ];
    for ((partner, says), receiver) in ["expired", "wrong-name", "untrusted"]
        .into_iter()
        .zip(says)
        .zip(&receivers)
    {
        let d = delivery_when(&c, &format!("evt_{partner}"), "dead").await;
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{d}");
        for a in attempts {
            assert!(a["status_code"].is_null(), "{a}");
            let error = a["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with("TLS: ") && error.contains(says),
                "{partner}: {error}"
            );
        }
        assert_eq!(
            receiver.count(),
            0,
            "{partner}: a body crossed a refused handshake"
        );
        assert!(receiver.failed_handshakes.load(Ordering::SeqCst) >= 1);
    }
    let (_, status) = c.get("/status").await;
    assert_eq!(status["totals"]["deliveries_succeeded"], 0, "{status}");
    assert_eq!(status["dead_letters"], 3, "{status}");
}

#[test]
fn a_missing_unreadable_or_empty_extra_roots_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let no_cert = dir.path().join("no-cert.pem");
    std::fs::write(&no_cert, "just some text, no PEM block\n").unwrap();
    let key_only = dir.path().join("key-only.pem");
    std::fs::write(&key_only, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let cases = [
        (dir.path().join("absent.pem"), "cannot be read"),
        (dir.path().to_path_buf(), "cannot be read"),
        (no_cert, "holds no certificate"),
        (key_only, "holds no certificate"),
    ];
    for (path, says) in cases {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n[delivery]\nextra_roots_file = {:?}\n",
            dir.path().join("db").display().to_string(),
            path.display().to_string()
        );
        let (code, output) = serve_to_exit(dir.path(), &config);
        assert_eq!(code, Some(64), "{config}\n{output}");
        assert!(
            output.contains("delivery.extra_roots_file") && output.contains(says),
            "{output}"
        );
    }
}
