//! `/v1/events`: ingest (single and batch), reading an event with its deliveries, and redelivery.

use super::access::Access;
use super::{
    json, now_ms, only_fields, opt_str, parse_json, query_param, read_body, read_json_object,
    ApiError, ApiResult, AppState,
};
use crate::catalog;
use crate::model::{format_time, generate_id, is_valid_token, parse_numbered_id};
use crate::store::{EventFilter, IngestOutcome, NewEvent};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The most events one batch may carry.
pub const MAX_BATCH: usize = 1000;

pub async fn create(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body = read_body(state, req).await?;
    check_storage(state)?;
    let value = parse_json(&body)?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object (one event)",
        ));
    };
    let event = validate(map, now_ms())?;
    let id = event.id.clone();
    let outcome = state.store.ingest(vec![event]).await?;
    state.metrics.events_received.inc();
    match outcome.first() {
        Some(IngestOutcome::Accepted { deliveries }) => Ok(json(
            StatusCode::ACCEPTED,
            &json!({"id": id, "deliveries": deliveries, "duplicate": false}),
        )),
        Some(IngestOutcome::Duplicate { deliveries }) => Ok(json(
            StatusCode::OK,
            &json!({"id": id, "deliveries": deliveries, "duplicate": true}),
        )),
        Some(IngestOutcome::Refused(refused)) => Err(refused.clone().into()),
        _ => Err(conflict(&id)),
    }
}

pub async fn create_batch(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body = read_body(state, req).await?;
    check_storage(state)?;
    let Value::Object(mut map) = parse_json(&body)? else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object: {\"events\": [...]}",
        ));
    };
    only_fields(&map, &["events"])?;
    let Some(Value::Array(items)) = map.remove("events") else {
        return Err(ApiError::invalid("`events` must be an array of events"));
    };
    if items.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "a batch holds at most {MAX_BATCH} events; this one has {}",
            items.len()
        )));
    }
    let now = now_ms();
    let mut results: Vec<Value> = Vec::with_capacity(items.len());
    let mut accepted = Vec::new();
    let mut positions = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        // A rejected event still shows the id it was sent with, when it had a string one.
        let given_id = item.get("id").and_then(Value::as_str).map(str::to_string);
        let validated = match item {
            Value::Object(m) => validate(m, now),
            _ => Err(ApiError::invalid("each event must be a JSON object")),
        };
        match validated {
            Ok(event) => {
                results.push(json!({"index": index, "id": event.id}));
                positions.push(index);
                accepted.push(event);
            }
            Err(e) => results.push(json!({
                "index": index, "id": given_id, "outcome": "rejected", "deliveries": 0,
                "error": {"code": e.code, "message": e.message},
            })),
        }
    }
    let count = accepted.len() as u64;
    let outcomes = if accepted.is_empty() {
        Vec::new()
    } else {
        state.store.ingest(accepted).await?
    };
    state.metrics.events_received.inc_by(count);
    for (index, outcome) in positions.into_iter().zip(outcomes) {
        let r = &mut results[index];
        let id = r["id"].as_str().unwrap_or_default().to_string();
        match outcome {
            IngestOutcome::Accepted { deliveries } => {
                r["outcome"] = json!("accepted");
                r["deliveries"] = json!(deliveries);
            }
            IngestOutcome::Duplicate { deliveries } => {
                r["outcome"] = json!("duplicate");
                r["deliveries"] = json!(deliveries);
            }
            IngestOutcome::Refused(refused) => {
                let e = ApiError::from(refused);
                r["outcome"] = json!("rejected");
                r["deliveries"] = json!(0);
                r["error"] = json!({"code": e.code, "message": e.message});
            }
            IngestOutcome::Conflict => {
                let e = conflict(&id);
                r["outcome"] = json!("rejected");
                r["deliveries"] = json!(0);
                r["error"] = json!({"code": e.code, "message": e.message});
            }
        }
    }
    Ok(json(StatusCode::OK, &json!({"results": results})))
}

/// The most events one page of `GET /v1/events` holds, and the default.
const MAX_LIST: usize = 1000;
const DEFAULT_LIST: usize = 100;

/// `GET /v1/events[?endpoint_id=&type=&limit=&before=CURSOR]`: stored events, newest first, each
/// with its deliveries' status (no attempts, no data: `GET /v1/events/{id}` has those). `next` is
/// the cursor of the following (older) page, null on the last. Not in the contract's section 4:
/// added for the console's recent deliveries; scoped like every list.
pub async fn list(state: &AppState, access: &Access, query: &str) -> ApiResult {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIST,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIST).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!("`limit` must be a number from 1 to {MAX_LIST}"))
            })?,
    };
    let before =
        match query_param(query, "before") {
            None => None,
            Some(c) => Some(parse_numbered_id("evc_", &c).ok_or_else(|| {
                ApiError::invalid("`before` is not a cursor from a previous page")
            })?),
        };
    let filter = EventFilter {
        scope: access.scope_filter().cloned(),
        // An id that cannot exist matches nothing.
        endpoint_num: query_param(query, "endpoint_id")
            .map(|id| parse_numbered_id("ep_", &id).unwrap_or(u64::MAX)),
        event_type: query_param(query, "type"),
    };
    let mut page = state
        .store
        .events_matching(&filter, before, limit + 1)
        .await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|e| format!("evc_{:016x}", e.seq))
    } else {
        None
    };
    let mut items = Vec::with_capacity(page.len());
    for event in &page {
        let deliveries: Vec<Value> = state
            .store
            .event_deliveries(event)
            .await?
            .iter()
            .map(|d| {
                json!({
                    "id": d.id(),
                    "endpoint_id": crate::model::endpoint_id(d.endpoint_num),
                    "status": delivery_status(state, d),
                    "attempts": d.attempts.len(),
                    "next_attempt_at": d.next_attempt_at_ms.map(format_time),
                })
            })
            .collect();
        items.push(json!({
            "id": event.id,
            "partner_id": event.partner_id,
            "environment": event.environment.as_str(),
            "type": event.event_type,
            "created_at": event.created_at,
            "received_at": format_time(event.received_at_ms),
            "deliveries": deliveries,
        }));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"events": items, "next": next}),
    ))
}

fn delivery_status(state: &AppState, d: &crate::model::Delivery) -> &'static str {
    if state.scheduler.is_in_flight(d.seq) {
        "in_flight"
    } else {
        d.status.as_str()
    }
}

pub async fn get(state: &AppState, access: &Access, id: &str) -> ApiResult {
    let event = state
        .store
        .event_by_id_in(id, access.scope_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let deliveries = state.store.event_deliveries(&event).await?;
    let payload: Value = serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            let status = delivery_status(state, d);
            json!({
                "id": d.id(),
                "endpoint_id": crate::model::endpoint_id(d.endpoint_num),
                "status": status,
                "next_attempt_at": d.next_attempt_at_ms.map(format_time),
                "attempts": d.attempts.iter().map(|a| json!({
                    "n": a.n,
                    "at": format_time(a.at_ms),
                    "status_code": a.status_code,
                    "duration_ms": a.duration_ms,
                    "error": a.error,
                    "response_snippet": a.response_snippet,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "id": event.id,
            "partner_id": event.partner_id,
            "environment": event.environment.as_str(),
            "type": event.event_type,
            "created_at": event.created_at,
            "received_at": format_time(event.received_at_ms),
            "data": payload.get("data").cloned().unwrap_or(Value::Null),
            "deliveries": deliveries,
        }),
    ))
}

pub async fn redeliver(
    state: &AppState,
    access: &Access,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(&map, &["endpoint_id"])?;
    let event = state
        .store
        .event_by_id_in(id, access.scope_filter())
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let targets: Vec<u64> = match opt_str(&map, "endpoint_id")? {
        Some(ep_id) => vec![super::endpoints::find(state, access, ep_id)?.num],
        None => {
            let mut nums: Vec<u64> = state
                .store
                .event_deliveries(&event)
                .await?
                .iter()
                .map(|d| d.endpoint_num)
                .collect();
            nums.sort_unstable();
            nums.dedup();
            nums
        }
    };
    let pairs = targets.into_iter().map(|n| (event.seq, n)).collect();
    let n = state.store.add_deliveries(pairs, now_ms()).await??;
    Ok(json(StatusCode::ACCEPTED, &json!({"deliveries": n})))
}

/// Checks one event and builds what the store keeps: its delivery body and its content hash.
pub fn validate(mut map: Map<String, Value>, now: u64) -> Result<NewEvent, ApiError> {
    only_fields(
        &map,
        &[
            "partner_id",
            "environment",
            "id",
            "type",
            "created_at",
            "data",
        ],
    )?;
    let partner_id = super::partner_id(&map)?;
    let environment = super::environment(&map)?;
    let id = match opt_str(&map, "id")? {
        Some(id) if is_valid_token(id, 128) => id.to_string(),
        Some(_) => return Err(ApiError::invalid("`id` must match [A-Za-z0-9._-]{1,128}")),
        None => generate_id("evt_", now),
    };
    let event_type = match opt_str(&map, "type")? {
        Some(t) if catalog::is_known(t) => t.to_string(),
        Some(t) => {
            return Err(ApiError::unprocessable(
                "unknown_event_type",
                format!(
                    "unknown event type `{t}`; the catalog has {}",
                    catalog::names()
                ),
            ))
        }
        None => return Err(ApiError::invalid("`type` is required")),
    };
    let created_at = match opt_str(&map, "created_at")? {
        // Stored and signed as given; times before 1970 are valid RFC 3339 and kept as they are.
        Some(t) if crate::model::parse_time_signed(t).is_some() => t.to_string(),
        Some(_) => {
            return Err(ApiError::invalid(
                "`created_at` must be an RFC 3339 time, like 2026-01-15T19:04:12Z",
            ))
        }
        None => time_seconds(now),
    };
    let data = match map.remove("data") {
        Some(Value::Object(data)) => Value::Object(data),
        Some(_) => return Err(ApiError::invalid("`data` must be a JSON object")),
        None => return Err(ApiError::invalid("`data` is required")),
    };
    let data_bytes = serde_json::to_vec(&data).expect("a JSON value serializes");
    let mut payload = Vec::with_capacity(data_bytes.len() + 128);
    payload.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut payload, &id).expect("a string serializes");
    payload.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut payload, &event_type).expect("a string serializes");
    payload.extend_from_slice(b",\"created_at\":");
    serde_json::to_writer(&mut payload, &created_at).expect("a string serializes");
    payload.extend_from_slice(b",\"data\":");
    payload.extend_from_slice(&data_bytes);
    payload.push(b'}');
    let mut hash = Sha256::new();
    for part in [
        partner_id.as_bytes(),
        environment.as_str().as_bytes(),
        event_type.as_bytes(),
    ] {
        hash.update(part);
        hash.update([0u8]);
    }
    hash.update(&data_bytes);
    Ok(NewEvent {
        id,
        partner_id,
        environment,
        event_type,
        created_at,
        received_at_ms: now,
        payload,
        content_hash: hash.finalize().into(),
        only_endpoint: None,
    })
}

/// RFC 3339 with whole seconds, the form the seed's events use.
pub fn time_seconds(ms: u64) -> String {
    let full = format_time(ms / 1000 * 1000);
    full.replace(".000Z", "Z")
}

fn conflict(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "event_id_conflict",
        format!("event `{id}` is already stored with different content (partner_id, environment, type or data)"),
    )
}

/// Refuses ingest while the store cannot take it: a write fault, `storage.max_bytes` less its
/// headroom, or too little free space (see `store::sled::health`).
fn check_storage(state: &AppState) -> Result<(), ApiError> {
    Ok(state.store.admit_ingest(state.config.storage.max_bytes)?)
}
