//! `/healthz`, `/status`, `/metrics` and `/v1/event-types`: what operators and producers read about the daemon.

use super::{json, now_ms, ApiResult, AppState, Body};
use crate::catalog;
use crate::model::{endpoint_id, format_time};
use crate::store::health::Fault;
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// `ok` (200) while the daemon runs and its store takes writes; 503 with the reason otherwise.
pub fn healthz(state: &AppState) -> Response<Body> {
    let (status, text) = if !state.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable".to_string())
    } else if let Some((fault, detail)) = state.store.fault() {
        let what = match fault {
            Fault::Full => "storage_full: the filesystem holding the store is full",
            Fault::Unavailable => "storage_unavailable: the store cannot be written",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} ({detail})"),
        )
    } else {
        (StatusCode::OK, "ok".to_string())
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(text)))
        .expect("valid response");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from(5u32));
    }
    resp
}

pub fn event_types() -> Response<Body> {
    let types: Vec<Value> = catalog::event_types()
        .iter()
        .map(|t| json!({"type": t.name, "description": t.description, "partner_action": t.partner_action, "sample": t.sample}))
        .collect();
    json(StatusCode::OK, &json!({"event_types": types}))
}

pub fn status(state: &AppState) -> ApiResult {
    let c = state.store.counters();
    let in_flight = state.scheduler.in_flight_count();
    // `pending` is what waits for an attempt; `retrying` the part of it that failed before. Both
    // leave out the attempts under way (the counters include them). The figures are read at
    // slightly different moments, so the subset is enforced as well.
    let pending = c.pending.saturating_sub(in_flight as u64);
    let retrying = c
        .retrying
        .saturating_sub(state.scheduler.retrying_in_flight_count() as u64)
        .min(pending);
    let now = now_ms();
    let mut endpoints = Vec::new();
    for ep in state.store.endpoints() {
        let h = state.store.health(ep.num)?;
        let health = if !ep.enabled {
            "disabled"
        } else if h.consecutive_failures > 0 {
            "failing"
        } else {
            "healthy"
        };
        endpoints.push(json!({
            "id": endpoint_id(ep.num),
            "partner_id": ep.partner_id,
            "environment": ep.environment.as_str(),
            "url": ep.url,
            "enabled": ep.enabled,
            "health": health,
            "consecutive_failures": h.consecutive_failures,
            "last_status_code": h.last_status_code,
            "last_success_at": h.last_success_at_ms.map(format_time),
            "last_failure_at": h.last_failure_at_ms.map(format_time),
            "pending": state.scheduler.endpoint_pending(ep.num),
        }));
    }
    let oldest = state
        .scheduler
        .oldest_due_ms()
        .map(|due| now.saturating_sub(due) / 1000);
    Ok(json(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs(),
            "storage": storage_status(state),
            "queue": {
                "pending": pending,
                "in_flight": in_flight,
                "retrying": retrying,
                "oldest_pending_age_seconds": oldest,
            },
            "dead_letters": c.dead_letters,
            "totals": {
                "events": c.events,
                "deliveries_succeeded": c.deliveries_succeeded,
                "attempts_failed": c.attempts_failed,
            },
            "endpoints": endpoints,
        }),
    ))
}

/// `storage` in `/status`; `damaged` appears once a damaged store was started with
/// `--accept-data-loss`, until `check --clear-damage-mark`.
fn storage_status(state: &AppState) -> Value {
    let mut storage = json!({"dir": state.store.dir().display().to_string(), "bytes": state.metrics.storage_bytes.get()});
    if let Some(mark) = state.store.damage_mark() {
        storage["damaged"] = json!({"since": mark.since, "detail": mark.detail});
    }
    storage
}

pub fn metrics(state: &AppState) -> Response<Body> {
    let text = state.metrics.render(
        &state.store.counters(),
        state.scheduler.in_flight_count(),
        state.scheduler.retrying_in_flight_count(),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(text)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use crate::api::{error_response, ApiError};
    use crate::store::StoreError;
    use http::StatusCode;

    /// Storage faults are 503 with a retry-after, never 500; only unreadable data is a 500.
    #[test]
    fn storage_faults_are_503_with_retry_after() {
        let cases = [
            (
                StoreError::Full("disk full".into()),
                "storage_full",
                Some("30"),
            ),
            (
                StoreError::Unavailable("reopening".into()),
                "storage_unavailable",
                Some("5"),
            ),
            (
                StoreError::Io(std::io::Error::from_raw_os_error(5)),
                "storage_unavailable",
                Some("5"),
            ),
            (StoreError::Closed, "shutting_down", Some("5")),
            (
                StoreError::Corrupt("bad record".into()),
                "storage_error",
                None,
            ),
        ];
        for (error, code, retry_after) in cases {
            let e = ApiError::from(error);
            assert_eq!(e.code, code);
            let resp = error_response(&e);
            let expected = if retry_after.is_some() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            assert_eq!(resp.status(), expected, "{code}");
            let header = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap());
            assert_eq!(header, retry_after, "{code}");
        }
    }
}
