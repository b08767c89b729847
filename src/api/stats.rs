//! `GET /v1/endpoints/{id}/stats`: an endpoint's attempts per hour over a window, read from the hourly figures the store keeps at each settle.

use super::{json, now_ms, query_param, ApiError, ApiResult, AppState};
use crate::model::{format_time, Endpoint};
use crate::stats::{hour_of, HourStats, HOUR_MS};
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// The window when none is asked for.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest window: 7 days (retention keeps no older hours).
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The answer for `ep` (already checked against the caller's scope): one bucket per hour of the
/// window, the current hour last, hours without attempts included as zeros.
pub async fn endpoint_stats(state: &AppState, ep: &Endpoint, query: &str) -> ApiResult {
    let window = match query_param(query, "window") {
        None => DEFAULT_WINDOW,
        Some(text) => crate::config::parse_duration(&text)
            .ok()
            .filter(|w| !w.is_zero() && *w <= MAX_WINDOW)
            .ok_or_else(|| {
                ApiError::invalid(
                    "`window` must be a duration from 1h to 7d, like \"24h\" (partial hours count as whole ones)",
                )
            })?,
    };
    let hours = (window.as_millis() as u64).div_ceil(HOUR_MS).max(1);
    let last = hour_of(now_ms());
    let first = last + 1 - hours;
    let stored = state.store.endpoint_stats(ep.num, first, last).await?;
    let mut total = HourStats::default();
    let mut stored = stored.into_iter().peekable();
    let mut buckets: Vec<Value> = Vec::with_capacity(hours as usize);
    for hour in first..=last {
        let figures = match stored.peek() {
            Some((h, _)) if *h == hour => stored.next().map(|(_, s)| s).unwrap_or_default(),
            _ => HourStats::default(),
        };
        total.merge(&figures);
        buckets.push(json!({
            "start": format_time(hour * HOUR_MS),
            "succeeded": figures.succeeded,
            "failed": figures.failed,
            "p50_ms": figures.percentile_ms(0.5),
            "p95_ms": figures.percentile_ms(0.95),
        }));
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "endpoint_id": ep.id(),
            "window_hours": hours,
            "buckets": buckets,
            "succeeded": total.succeeded,
            "failed": total.failed,
            "p50_ms": total.percentile_ms(0.5),
            "p95_ms": total.percentile_ms(0.95),
            "success_rate": total.success_rate(),
        }),
    ))
}
