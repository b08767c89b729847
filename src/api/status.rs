//! `/healthz`, `/status`, `/metrics` and `/v1/event-types`: what operators and producers read about the daemon.

use super::{json, now_ms, ApiResult, AppState, Body};
use crate::catalog;
use crate::model::{endpoint_id, format_time};
use crate::store::{Counters, Fault, StoreError};
use crate::telemetry::{self, Snapshot};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// `ok` (200) while the daemon can do its job; 503 with the reason when it cannot: starting or
/// stopping, the store cannot be written, or the scheduler has not gone round for longer than its
/// watchdog interval.
pub fn healthz(state: &AppState) -> Response<Body> {
    let idle = scheduler_idle_ms(state);
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
    } else if idle > state.scheduler_watchdog.as_millis() as u64 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "scheduler_stalled: the scheduler has not run for {:.1} s (watchdog interval {} s); \
                 deliveries are not being attempted",
                idle as f64 / 1000.0,
                state.scheduler_watchdog.as_secs_f64()
            ),
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

/// Milliseconds since the scheduler last went round its loop (since start, before its first round).
fn scheduler_idle_ms(state: &AppState) -> u64 {
    let beat = state.scheduler.heartbeat_ms();
    if beat == 0 {
        return state.started.elapsed().as_millis() as u64;
    }
    now_ms().saturating_sub(beat)
}

/// Seconds since the oldest pending delivery (attempts under way included) became pending; `None`
/// when nothing is pending. Read from what the store keeps (see `store::sled::oldest`): no scan.
async fn oldest_pending_age_ms(
    state: &AppState,
    counters: &Counters,
    now: u64,
) -> Result<Option<u64>, StoreError> {
    if counters.pending == 0 {
        return Ok(None);
    }
    // Pending since the last refresh (at most a second ago) and not seen yet: it is that young.
    let since = state.store.oldest_pending_since().await?;
    Ok(Some(now.saturating_sub(since.unwrap_or(now))))
}

pub fn event_types() -> Response<Body> {
    let types: Vec<Value> = catalog::event_types()
        .iter()
        .map(|t| json!({"type": t.name, "description": t.description, "partner_action": t.partner_action, "sample": t.sample}))
        .collect();
    json(StatusCode::OK, &json!({"event_types": types}))
}

/// `/status`. While the store cannot be reached (PostgreSQL down or restarting) it still answers
/// 200 with what it knows: version, uptime, backend, node, and `storage.fault` saying why; the
/// figures that need the store (`queue`, `dead_letters`, `totals`, `nodes`) are `null` and the
/// endpoints are listed from the node's cache without their health. `/healthz` stays 503.
pub async fn status(state: &AppState) -> ApiResult {
    if let Some((Fault::Unavailable, _)) = state.store.fault() {
        return Ok(unreachable_status(state));
    }
    match full_status(state).await {
        Err(StoreError::Unavailable(_)) => Ok(unreachable_status(state)),
        answer => Ok(answer?),
    }
}

/// `/status` without the store's figures, while the store cannot be reached.
fn unreachable_status(state: &AppState) -> Response<Body> {
    let endpoints: Vec<Value> = state
        .store
        .endpoints()
        .iter()
        .filter(|ep| !crate::notifications::is_operator(ep))
        .map(|ep| {
            json!({
                "id": endpoint_id(ep.num),
                "partner_id": ep.partner_id,
                "environment": ep.environment.as_str(),
                "url": ep.url,
                "enabled": ep.enabled,
                "health": Value::Null,
            })
        })
        .collect();
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "backend": state.store.backend_name(),
        "storage": storage_status(state),
        "queue": Value::Null,
        "dead_letters": Value::Null,
        "totals": Value::Null,
        "endpoints": endpoints,
    });
    if let Some(node) = state.store.node_name() {
        body["node"] = json!(node);
        body["nodes"] = Value::Null;
    }
    if body["storage"].get("fault").is_none() {
        // Unreachable for this request although no fault was set yet: say so all the same.
        body["storage"]["fault"] =
            json!({"error": "storage_unavailable", "detail": "the store could not be read"});
    }
    json(StatusCode::OK, &body)
}

async fn full_status(state: &AppState) -> Result<Response<Body>, StoreError> {
    let c = state.store.counters().await?;
    let now = now_ms();
    // On PostgreSQL the figures are the cluster's: attempts under way are unexpired leases.
    let (in_flight, retrying_in_flight) = match state.store.cluster_in_flight(now).await? {
        Some((all, retries)) => (all, retries),
        None => (
            state.scheduler.in_flight_count() as u64,
            state.scheduler.retrying_in_flight_count() as u64,
        ),
    };
    // `pending` is what waits for an attempt; `retrying` the part of it that failed before. Both
    // leave out the attempts under way (the counters include them). The figures are read at
    // slightly different moments, so the subset is enforced as well.
    let pending = c.pending.saturating_sub(in_flight);
    let retrying = c.retrying.saturating_sub(retrying_in_flight).min(pending);
    let mut endpoints = Vec::new();
    for ep in state.store.endpoints() {
        if crate::notifications::is_operator(&ep) {
            continue;
        }
        let h = state.store.health(ep.num).await?;
        let health = if !ep.enabled {
            "disabled"
        } else if h.consecutive_failures > 0 {
            "failing"
        } else {
            "healthy"
        };
        let pending = state.scheduler.endpoint_pending(ep.num).await?;
        // The head of its queue: the earliest due (the only one that may go, when ordered).
        let next_attempt_at = if pending > 0 {
            state
                .store
                .queue_head(&ep)
                .await?
                .map(|head| format_time(head.due_ms))
        } else {
            None
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
            "pending": pending,
            // Not in the contract's example; added for operators (the CLI's relative times).
            "failing_since": h.failing_since_ms.filter(|_| h.consecutive_failures > 0).map(format_time),
            "last_error": h.last_error,
            "next_attempt_at": next_attempt_at,
        }));
    }
    let oldest = oldest_pending_age_ms(state, &c, now)
        .await?
        .map(|ms| ms / 1000);
    let nodes = state.store.nodes().await?.map(|nodes| {
        nodes
            .iter()
            .map(|n| json!({"name": n.name, "last_seen": format_time(n.last_seen_ms), "in_flight": n.in_flight}))
            .collect::<Vec<Value>>()
    });
    let mut body = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs(),
            "backend": state.store.backend_name(),
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
    });
    if let Some(nodes) = nodes {
        body["nodes"] = json!(nodes);
    }
    if let Some(node) = state.store.node_name() {
        body["node"] = json!(node);
    }
    Ok(json(StatusCode::OK, &body))
}

/// `storage` in `/status`; `damaged` appears once a damaged store was started with
/// `--accept-data-loss`, until `check --clear-damage-mark`.
fn storage_status(state: &AppState) -> Value {
    let mut storage = json!({"bytes": state.metrics.storage_bytes.get()});
    if let Some(dir) = state.store.dir() {
        storage["dir"] = json!(dir.display().to_string());
    }
    if let Some(mark) = state.store.damage_mark() {
        storage["damaged"] = json!({"since": mark.since, "detail": mark.detail});
    }
    // The fault `/healthz` answers 503 for, with its reason: `storage_full` or `storage_unavailable`.
    if let Some((fault, detail)) = state.store.fault() {
        let error = match fault {
            Fault::Full => "storage_full",
            Fault::Unavailable => "storage_unavailable",
        };
        storage["fault"] = json!({"error": error, "detail": detail});
    }
    storage
}

/// The Prometheus text format (0.0.4), or OpenMetrics when the scraper's `accept` asks for it.
pub async fn metrics(state: &AppState, headers: &http::HeaderMap) -> ApiResult {
    let now = now_ms();
    let counters = state.store.counters().await?;
    let oldest_ms = oldest_pending_age_ms(state, &counters, now).await?;
    let (figures, omitted) = endpoint_figures(state, now).await;
    let text = state.metrics.render_with(
        &Snapshot {
            counters,
            in_flight: state.scheduler.in_flight_count(),
            retrying_in_flight: state.scheduler.retrying_in_flight_count(),
            oldest_pending_age_seconds: oldest_ms.unwrap_or(0) as f64 / 1000.0,
            scheduler_idle_seconds: scheduler_idle_ms(state) as f64 / 1000.0,
        },
        &figures,
        omitted,
    );
    let (content_type, text) = if wants_openmetrics(headers) {
        (OPENMETRICS_CONTENT_TYPE, text)
    } else {
        (
            PROMETHEUS_CONTENT_TYPE,
            telemetry::to_prometheus_text(&text),
        )
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(text)))
        .expect("valid response"))
}

/// The last 24 hours of the first [`telemetry::MAX_ENDPOINT_METRICS`] endpoints (by number), and how
/// many endpoints were left out. A store that cannot be read leaves an endpoint out for this scrape.
async fn endpoint_figures(state: &AppState, now: u64) -> (Vec<telemetry::EndpointFigures>, usize) {
    use crate::stats::{hour_of, HourStats};
    let endpoints: Vec<_> = state
        .store
        .endpoints()
        .into_iter()
        .filter(|e| !crate::notifications::is_operator(e))
        .collect();
    let last = hour_of(now);
    let mut out = Vec::new();
    for ep in endpoints.iter().take(telemetry::MAX_ENDPOINT_METRICS) {
        let Ok(hours) = state
            .store
            .endpoint_stats(ep.num, last.saturating_sub(23), last)
            .await
        else {
            continue;
        };
        let mut total = HourStats::default();
        for (_, h) in &hours {
            total.merge(h);
        }
        out.push(telemetry::EndpointFigures {
            endpoint_id: ep.id(),
            succeeded: total.succeeded,
            failed: total.failed,
            p50_ms: total.percentile_ms(0.5),
            p95_ms: total.percentile_ms(0.95),
        });
    }
    let omitted = endpoints
        .len()
        .saturating_sub(telemetry::MAX_ENDPOINT_METRICS);
    (out, omitted)
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when `accept` lists `application/openmetrics-text` with a quality above 0.
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
                })
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;
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

    #[test]
    fn openmetrics_only_when_asked_for() {
        let accept = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::ACCEPT, v.parse().unwrap());
            wants_openmetrics(&h)
        };
        // What Prometheus sends when it prefers OpenMetrics.
        assert!(accept("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(accept("Application/OpenMetrics-Text"));
        assert!(!accept("text/plain;version=0.0.4"));
        assert!(!accept("*/*"));
        assert!(!accept("application/openmetrics-text;q=0, text/plain"));
        assert!(!wants_openmetrics(&http::HeaderMap::new()));
    }
}
