//! The HTTP interface: connections, routing, the admin token, body limits, and the one place errors become responses.

pub mod access;
mod conn;
mod console;
mod dead_letters;
mod endpoints;
mod events;
pub use events::time_seconds;
pub use stats::MAX_WINDOW as MAX_STATS_WINDOW;
#[cfg(test)]
mod proptests;
mod stats;
mod status;
pub mod strict_json;
mod tokens;

use crate::config::Config;
use crate::delivery::SchedulerHandle;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The largest request head (request line and headers) taken; past it: `431 headers_too_large`.
const MAX_HEAD_BYTES: usize = 128 * 1024;

/// What every request handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub scheduler: SchedulerHandle,
    pub metrics: Arc<Metrics>,
    /// The admin token every path but `/healthz` requires.
    pub token: String,
    pub started: Instant,
    /// How long the scheduler may go without a round before `/healthz` says it is stalled: systemd's
    /// watchdog interval (`WATCHDOG_USEC`) when one is set, else [`DEFAULT_SCHEDULER_WATCHDOG`].
    pub scheduler_watchdog: Duration,
    /// False while starting and once stopping: `/healthz` answers 503 then, and new requests get `shutting_down`.
    pub ready: AtomicBool,
}

pub type Body = Full<Bytes>;

/// The scheduler watchdog interval `/healthz` uses when systemd sets none. The scheduler goes round
/// at least once a second; 30 s tolerates a stalled disk or a busy machine without flapping.
pub const DEFAULT_SCHEDULER_WATCHDOG: Duration = Duration::from_secs(30);

/// An error as the client sees it: a status, a stable code and a sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the daemon is shutting down; retry shortly",
            ),
            // Logged where they happen (the writer, admission); a refusal each is no news.
            StoreError::Full(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_full",
                format!("{why}; nothing was stored, retry later"),
            ),
            StoreError::Unavailable(_)
            | StoreError::Io(_)
            | StoreError::Sled(_)
            | StoreError::Fenced => {
                tracing::warn!(error = %e, "a request met a storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the store cannot be written at the moment; nothing was stored, retry shortly",
                )
            }
            StoreError::Corrupt(_)
            | StoreError::MasterKey(_)
            | StoreError::Damaged { .. }
            | StoreError::SchemaTooNew(_)
            | StoreError::Tls(_)
            | StoreError::Database(_) => {
                tracing::error!(error = %e, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    "the store failed",
                )
            }
        }
    }
}

impl From<crate::store::DeliveryRefused> for ApiError {
    fn from(e: crate::store::DeliveryRefused) -> ApiError {
        ApiError::unprocessable("endpoint_not_allowed", e.to_string())
    }
}

/// Seconds a client is asked to wait (`retry-after`) after a 503 with this code: a full store waits
/// for deliveries, retention or an operator to make room; the others pass within seconds.
pub fn retry_after_seconds(code: &str) -> u32 {
    match code {
        "storage_full" => 30,
        _ => 5,
    }
}

pub type ApiResult = Result<Response<Body>, ApiError>;

/// Filled in once the store is open; until then every request is answered 503.
pub type StateSlot = Arc<std::sync::OnceLock<Arc<AppState>>>;

/// Serves HTTP on `listener` until `shutdown` fires, then lets requests in progress finish.
///
/// At most [`conn::max_connections`] connections are served at once; one more is answered 503
/// `too_many_connections` and closed, so the daemon never runs out of open files and never stops
/// accepting. Each connection goes through [`conn::ConnIo`] (deadlines, error shape).
pub async fn serve(listener: TcpListener, slot: StateSlot, config: Config, shutdown: Shutdown) {
    let config = Arc::new(config);
    let cap = conn::max_connections(&config);
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let refusing = Arc::new(tokio::sync::Semaphore::new(conn::MAX_REFUSING));
    tracing::info!(max_connections = cap, "serving HTTP");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused_since_warning = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused_since_warning += 1;
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = cap,
                    refused = refused_since_warning,
                    "too many connections: refusing new ones with 503"
                );
                last_warning = Some(Instant::now());
                refused_since_warning = 0;
            }
            // Refusing costs an open file too, so only a few refusals are written at once.
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    conn::refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = slot.clone();
        let exchange = Arc::new(conn::Exchange::default());
        let io = conn::ConnIo::new(stream, exchange.clone(), &config, permit);
        let service = hyper::service::service_fn(move |req| {
            exchange.request_started(req.method() == Method::HEAD);
            let slot = slot.clone();
            async move {
                let response = match slot.get() {
                    Some(state) => handle(state, req).await,
                    None => starting(&req),
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        // ConnIo enforces `header_timeout` itself, answering 408; hyper's own timer is a backstop.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive(true)
            // hyper's own buffer limit is not exact (one read may take in a whole head past it);
            // this one is checked after every parse, so the head limit holds whatever the timing.
            .max_header_size(MAX_HEAD_BYTES)
            .header_read_timeout(config.http.header_timeout + Duration::from_secs(5))
            .serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not close in time");
    }
}

/// The answer to everything while the store is still opening.
fn starting<B>(req: &Request<B>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"starting")))
            .expect("valid response");
    }
    error_response(&shutting_down())
}

async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let result = match unsupported_coding(&req).or_else(|| unsupported_content_encoding(&req)) {
        Some(e) => Err(e),
        None => route(state, req).await,
    };
    let mut response = result.unwrap_or_else(|e| error_response(&e));
    // The body was not read to its end: the connection cannot carry another request.
    if matches!(
        response.status(),
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::NOT_IMPLEMENTED
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
    ) {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

/// A `content-encoding` other than `identity`: the body would not be JSON as sent.
fn unsupported_content_encoding<B>(req: &Request<B>) -> Option<ApiError> {
    let coding = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))?;
    Some(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_encoding",
        format!("the content coding `{coding}` is not supported; send the body uncompressed"),
    ))
}

/// A `transfer-encoding` other than `chunked` alone: hyper decodes the chunks and would hand over
/// the still-encoded (`gzip`, ...) bytes as the body.
fn unsupported_coding<B>(req: &Request<B>) -> Option<ApiError> {
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let unknown = codings.find(|c| !c.eq_ignore_ascii_case("chunked"))?;
    Some(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "unsupported_transfer_encoding",
        format!(
            "the transfer coding `{unknown}` is not supported; send the body as it is, with \
             content-length or transfer-encoding: chunked"
        ),
    ))
}

async fn route(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if method == Method::GET && segments == ["healthz"] {
        return Ok(status::healthz(state));
    }
    // The console's files hold no data: served without a token (the page asks for one).
    if let (&Method::GET, ["console", rest @ ..]) = (&method, segments.as_slice()) {
        return console::serve(rest, req.headers());
    }
    let access = access::authenticate(state, &req, now_ms()).await?;
    if !state.ready.load(Ordering::Relaxed) {
        return Err(shutting_down());
    }
    // What the caller may do on this route is decided from the route alone, in `access`; what it
    // may see of each item, by the handlers asking the same `Access`.
    access.check_route(&method, &segments)?;
    let query = req.uri().query().unwrap_or("").to_string();
    let access = &access;
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "events"]) => events::create(state, req).await,
        (&Method::POST, ["v1", "events", "batch"]) => events::create_batch(state, req).await,
        (&Method::GET, ["v1", "events"]) => events::list(state, access, &query).await,
        (&Method::GET, ["v1", "events", id]) => events::get(state, access, id).await,
        (&Method::POST, ["v1", "events", id, "redeliver"]) => {
            let id = id.to_string();
            events::redeliver(state, access, &id, req).await
        }
        (&Method::GET, ["v1", "event-types"]) => Ok(status::event_types()),
        (&Method::POST, ["v1", "endpoints"]) => endpoints::create(state, access, req).await,
        (&Method::GET, ["v1", "endpoints"]) => endpoints::list(state, access, &query),
        (&Method::GET, ["v1", "endpoints", id]) => endpoints::get(state, access, id),
        (&Method::PATCH, ["v1", "endpoints", id]) => {
            let id = id.to_string();
            endpoints::patch(state, access, &id, req).await
        }
        (&Method::DELETE, ["v1", "endpoints", id]) => endpoints::delete(state, access, id).await,
        (&Method::GET, ["v1", "endpoints", id, "secret"]) => endpoints::secret(state, access, id),
        (&Method::GET, ["v1", "endpoints", id, "stats"]) => {
            let ep = endpoints::find(state, access, id)?;
            stats::endpoint_stats(state, &ep, &query).await
        }
        (&Method::POST, ["v1", "endpoints", id, action]) => {
            let (id, action) = (id.to_string(), action.to_string());
            endpoints::action(state, access, &id, &action, req).await
        }
        (&Method::GET, ["v1", "dead-letters"]) => dead_letters::list(state, access, &query).await,
        (&Method::POST, ["v1", "dead-letters", "retry"]) => {
            dead_letters::retry_many(state, access, req).await
        }
        (&Method::POST, ["v1", "dead-letters", id, "retry"]) => {
            dead_letters::retry_one(state, access, id).await
        }
        (&Method::DELETE, ["v1", "dead-letters", id]) => {
            dead_letters::delete(state, access, id).await
        }
        (&Method::POST, ["v1", "tokens"]) => tokens::create(state, req).await,
        (&Method::GET, ["v1", "tokens"]) => tokens::list(state, &query).await,
        (&Method::DELETE, ["v1", "tokens", id]) => tokens::revoke(state, id).await,
        (&Method::GET, ["v1", "whoami"]) => tokens::whoami(access),
        (&Method::GET, ["status"]) => status::status(state).await,
        (&Method::GET, ["metrics"]) => status::metrics(state, req.headers()).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such path: {method} {path}"),
        )),
    }
}

/// Reads the whole body, refusing more than `server.max_body_bytes` without reading past it.
pub async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let max = state.config.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {max} bytes (server.max_body_bytes)"),
        )
    };
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        if len > max as u64 {
            return Err(too_large());
        }
    }
    let deadline = state.config.http.body_timeout;
    let reading = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(deadline, reading).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::invalid("the request body could not be read")),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s; send the whole request at once",
                deadline.as_secs_f64()
            ),
        )),
    }
}

/// Reads a JSON object body; an empty body is an empty object.
pub async fn read_json_object(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let body = read_body(state, req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match parse_json(&body)? {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("the request body must be a JSON object")),
    }
}

/// Parses a request body as JSON; a key repeated in one object is refused (see [`strict_json`]).
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    strict_json::from_slice(body).map_err(|e| {
        let message = if e.is_data() {
            format!("the body is ambiguous JSON: {e}")
        } else {
            format!("the body is not valid JSON: {e}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    })
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("response values serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json(
        e.status,
        &serde_json::json!({"error": {"code": e.code, "message": e.message}}),
    );
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            http::HeaderValue::from(retry_after_seconds(e.code)),
        );
    }
    resp
}

pub fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the daemon is starting or shutting down; retry shortly",
    )
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
            {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A string field of a JSON object: absent is `None`, a non-string is an error naming the field.
pub fn opt_str<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("`{field}` must be a string"))),
    }
}

/// The required `partner_id` field: `[A-Za-z0-9._-]{1,64}`.
pub fn partner_id(map: &serde_json::Map<String, serde_json::Value>) -> Result<String, ApiError> {
    match opt_str(map, "partner_id")? {
        Some(p) if crate::model::is_valid_token(p, 64) => Ok(p.to_string()),
        Some(_) => Err(ApiError::invalid(
            "`partner_id` must match [A-Za-z0-9._-]{1,64}",
        )),
        None => Err(ApiError::invalid("`partner_id` is required")),
    }
}

/// The optional `environment` field: production (the default) or sandbox.
pub fn environment(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<crate::model::Environment, ApiError> {
    match opt_str(map, "environment")? {
        None => Ok(crate::model::Environment::Production),
        Some(e) => crate::model::Environment::parse(e).ok_or_else(|| {
            ApiError::invalid("`environment` must be \"production\" or \"sandbox\"")
        }),
    }
}

/// Refuses fields outside `allowed`, so a misspelt field is an error instead of being ignored.
pub fn only_fields(
    map: &serde_json::Map<String, serde_json::Value>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(format!(
            "unknown field `{k}`; allowed fields are {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}
