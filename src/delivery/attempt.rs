//! One HTTP attempt: sign, send, read the response head and at most 1 KiB of body, classify. The only outbound HTTP.

use super::guard::{self, GuardedConnector, GuardedResolver};
use crate::config::DeliveryConfig;
use crate::model::{Endpoint, Event};
use crate::signing::{self, Secret};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most response body kept for the attempt log.
pub const SNIPPET_BYTES: usize = 1024;

type Connector = hyper_rustls::HttpsConnector<GuardedConnector<HttpConnector<GuardedResolver>>>;

/// The outbound client, shared by all attempts: pooled connections, TLS, the address guard.
#[derive(Clone)]
pub struct Client {
    inner: LegacyClient<Connector, Full<Bytes>>,
    timeout: Duration,
    user_agent: HeaderValue,
}

/// What came back from one attempt: a status, or a sentence saying why none came.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status_code: Option<u16>,
    pub retry_after: Option<String>,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
    pub duration: Duration,
}

impl Client {
    pub fn new(config: &DeliveryConfig) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Partners behind a private CA (`delivery.extra_roots_file`), checked when it was read.
        let extra = crate::config::load_extra_roots(config).map_err(|e| e.to_string())?;
        roots.add_parsable_certificates(extra);
        if config.use_system_roots {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = GuardedConnector::http(config.allow_private_networks);
        tcp.inner_mut()
            .set_connect_timeout(Some(config.connect_timeout));
        tcp.inner_mut().set_nodelay(true);
        tcp.inner_mut().set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let inner = LegacyClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_in_flight.max(16))
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        let user_agent =
            HeaderValue::from_str(&format!("preflix-webhookd/{}", env!("CARGO_PKG_VERSION")))
                .expect("the version is a valid header value");
        Ok(Client {
            inner,
            timeout: config.timeout,
            user_agent,
        })
    }

    /// Makes one attempt of `event` to `ep`, numbered `attempt`, signed at `now_secs`.
    pub async fn attempt(
        &self,
        ep: &Endpoint,
        event: &Event,
        attempt: u32,
        now_secs: i64,
    ) -> Outcome {
        let started = Instant::now();
        let request = match self.build(ep, event, attempt, now_secs) {
            Ok(r) => r,
            Err(error) => return failed(error, started),
        };
        let response = match tokio::time::timeout(self.timeout, self.inner.request(request)).await {
            Err(_) => {
                return failed(
                    format!(
                        "no response within {} ms (delivery.timeout)",
                        self.timeout.as_millis()
                    ),
                    started,
                )
            }
            Ok(Err(e)) => return failed(describe(&e), started),
            Ok(Ok(r)) => r,
        };
        let duration = started.elapsed();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let remaining = self
            .timeout
            .saturating_sub(duration)
            .max(Duration::from_millis(100));
        let snippet = tokio::time::timeout(remaining, read_snippet(response.into_body()))
            .await
            .ok();
        Outcome {
            status_code: Some(status),
            retry_after,
            error: None,
            response_snippet: snippet.filter(|s| !s.is_empty()),
            duration,
        }
    }

    fn build(
        &self,
        ep: &Endpoint,
        event: &Event,
        attempt: u32,
        now_secs: i64,
    ) -> Result<Request<Full<Bytes>>, String> {
        let secrets: Vec<Secret> = ep
            .live_secrets((now_secs.max(0) as u64) * 1000)
            .filter_map(|s| Secret::parse(s).ok())
            .collect();
        if secrets.is_empty() {
            return Err("the endpoint has no usable signing secret".into());
        }
        let signatures = signing::sign(&secrets, &event.id, now_secs, &event.payload);
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(&ep.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, self.user_agent.clone());
        let headers = builder.headers_mut().expect("the builder has no error yet");
        for (name, value) in signatures
            .into_headers(&event.id)
            .map_err(|_| "the event id is not a valid header value".to_string())?
        {
            headers.insert(name, value);
        }
        let value = |text: &str| {
            HeaderValue::from_str(text).map_err(|_| "a header value is invalid".to_string())
        };
        headers.insert("preflixai-event-id", value(&event.id)?);
        headers.insert("preflixai-event-type", value(&event.event_type)?);
        headers.insert("preflixai-attempt", HeaderValue::from(attempt));
        for (name, v) in &ep.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| "a custom header name is invalid".to_string())?;
            headers.insert(name, value(v)?);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(&event.payload)))
            .map_err(|e| format!("the endpoint URL cannot be requested: {e}"))
    }
}

/// Reads at most [`SNIPPET_BYTES`] of the body; the rest is never read, so a huge body costs nothing.
async fn read_snippet(mut body: hyper::body::Incoming) -> String {
    let mut buf = Vec::new();
    while buf.len() < SNIPPET_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let take = (SNIPPET_BYTES - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    // Cutting at 1 KiB may split a character; the lossy decoder marks it, and we drop the marker.
    if buf.len() == SNIPPET_BYTES && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    text
}

fn failed(error: String, started: Instant) -> Outcome {
    Outcome {
        status_code: None,
        retry_after: None,
        error: Some(error),
        response_snippet: None,
        duration: started.elapsed(),
    }
}

/// A sentence for the attempt log from a client error: the guard's refusal, a TLS failure said
/// plainly, or the deepest cause.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    if let Some(g) = guard::find_guard_error(e) {
        return format!("address refused: {g}");
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut deepest = e.to_string();
    while let Some(s) = source {
        if let Some(tls) = find_tls_error(s) {
            return describe_tls(tls);
        }
        deepest = s.to_string();
        source = s.source();
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {deepest}")
}

/// The rustls error behind `e`, which tokio-rustls and hyper-rustls each wrap in an `io::Error`
/// (whose `source` skips what it wraps).
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut e = e;
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "the receiver's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the receiver's certificate is not valid yet"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the receiver's certificate is not valid for the endpoint's host name"
            }
            C::UnknownIssuer => {
                "the receiver's certificate is not signed by a trusted CA (a partner behind a \
                 private CA needs it in delivery.extra_roots_file)"
            }
            _ => "the receiver's certificate was refused",
        },
        _ => "the TLS handshake failed",
    };
    format!("TLS: {what} ({e})")
}
