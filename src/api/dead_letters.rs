//! `/v1/dead-letters`: listing deliveries that gave up, redriving them, and deleting them.

use super::access::Access;
use super::{
    empty, json, now_ms, only_fields, opt_str, query_param, read_json_object, ApiError, ApiResult,
    AppState,
};
use crate::model::{endpoint_id, format_time, parse_numbered_id, DeadLetter};
use crate::store::DeadLetterFilter;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub async fn list(state: &AppState, access: &Access, query: &str) -> ApiResult {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!("`limit` must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let after = match query_param(query, "after") {
        None => 0,
        Some(c) => parse_numbered_id("dl_", &c)
            .ok_or_else(|| ApiError::invalid("`after` is not a cursor from a previous page"))?,
    };
    let filter = filter_from_query(access, query);
    let mut page = state.store.dead_letters(after, limit + 1, &filter).await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|dl| dl.id())
    } else {
        None
    };
    let mut items: Vec<Value> = Vec::with_capacity(page.len());
    for dl in &page {
        items.push(view(state, dl).await);
    }
    Ok(json(
        StatusCode::OK,
        &json!({"dead_letters": items, "next": next}),
    ))
}

pub async fn retry_one(state: &AppState, access: &Access, id: &str) -> ApiResult {
    let seq = find(state, access, id).await?;
    let redriven = state.store.retry_dead_letters(vec![seq], now_ms()).await?;
    if let Some(refused) = redriven.refused.into_iter().next() {
        return Err(refused.into());
    }
    if redriven.requeued == 0 {
        return Err(ApiError::not_found("dead letter"));
    }
    Ok(json(StatusCode::ACCEPTED, &json!({"requeued": 1})))
}

pub async fn retry_many(state: &AppState, access: &Access, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(&map, &["endpoint_id", "event_type"])?;
    // A partner token retries its own dead letters only: the scope is part of the store's query.
    let filter = DeadLetterFilter {
        scope: access.scope_filter().cloned(),
        endpoint_num: match opt_str(&map, "endpoint_id")? {
            None => None,
            Some(id) => {
                Some(parse_numbered_id("ep_", id).ok_or_else(|| ApiError::not_found("endpoint"))?)
            }
        },
        event_type: opt_str(&map, "event_type")?.map(str::to_string),
    };
    let mut after = 0;
    let mut requeued = 0;
    loop {
        let page = state.store.dead_letters(after, 1000, &filter).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let redriven = state
            .store
            .retry_dead_letters(page.iter().map(|dl| dl.seq).collect(), now_ms())
            .await?;
        requeued += redriven.requeued;
        for refused in &redriven.refused {
            tracing::warn!(reason = %refused, "a dead letter was not retried");
        }
    }
    Ok(json(StatusCode::ACCEPTED, &json!({"requeued": requeued})))
}

pub async fn delete(state: &AppState, access: &Access, id: &str) -> ApiResult {
    let seq = find(state, access, id).await?;
    if !state.store.delete_dead_letter(seq).await? {
        return Err(ApiError::not_found("dead letter"));
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The number of the dead letter with this id, if this caller may see it (404 otherwise, as for
/// an unknown id).
async fn find(state: &AppState, access: &Access, id: &str) -> Result<u64, ApiError> {
    let seq = parse_numbered_id("dl_", id).ok_or_else(|| ApiError::not_found("dead letter"))?;
    state
        .store
        .dead_letter_in(seq, access.scope_filter())
        .await?
        .map(|dl| dl.seq)
        .ok_or_else(|| ApiError::not_found("dead letter"))
}

/// The filter of `GET /v1/dead-letters`' query, within the caller's scope.
fn filter_from_query(access: &Access, query: &str) -> DeadLetterFilter {
    DeadLetterFilter {
        scope: access.scope_filter().cloned(),
        // An id that cannot exist matches nothing.
        endpoint_num: query_param(query, "endpoint_id")
            .map(|id| parse_numbered_id("ep_", &id).unwrap_or(u64::MAX)),
        event_type: query_param(query, "event_type"),
    }
}

async fn view(state: &AppState, dl: &DeadLetter) -> Value {
    let event = state.store.event(dl.event_seq).await.ok().flatten();
    let endpoint = state.store.endpoint(dl.endpoint_num);
    json!({
        "id": dl.id(),
        "delivery_id": crate::model::delivery_id(dl.delivery_seq),
        "event_id": event.as_ref().map(|e| e.id.clone()),
        "event_type": event.as_ref().map(|e| e.event_type.clone()),
        "endpoint_id": endpoint_id(dl.endpoint_num),
        "partner_id": endpoint.as_ref().map(|e| e.partner_id.clone()).or(event.as_ref().map(|e| e.partner_id.clone())),
        "url": endpoint.as_ref().map(|e| e.url.clone()),
        "attempts": dl.attempts,
        "last_status_code": dl.last_status_code,
        "last_error": dl.last_error,
        "first_attempt_at": dl.first_attempt_at_ms.map(format_time),
        "dead_at": format_time(dl.dead_at_ms),
        "reason": dl.reason.as_str(),
    })
}
