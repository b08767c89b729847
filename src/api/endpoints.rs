//! `/v1/endpoints`: registering partner endpoints, changing them, their secrets, test events and recovery.

use super::access::Access;
use super::{
    empty, json, now_ms, only_fields, opt_str, query_param, read_json_object, ApiError, ApiResult,
    AppState,
};
use crate::catalog;
use crate::delivery::guard;
use crate::model::{
    format_time, generate_id, parse_numbered_id, DeliveryStatus, Endpoint, EndpointSecret,
    Environment,
};
use crate::signing::Secret;
use crate::store::IngestOutcome;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
const MAX_HEADERS: usize = 32;
/// The longest custom header name and the longest value, in bytes (README: 1 KiB each).
const MAX_HEADER_NAME: usize = 1024;
const MAX_HEADER_VALUE: usize = 1024;
/// Names the daemon sets itself, and connection-level (hop-by-hop) names that would change how
/// the request is framed or whether the connection is kept (RFC 9110 section 7.6.1).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];
const DEFAULT_GRACE_SECONDS: u64 = 86_400;

const PATCHABLE: &[&str] = &[
    "url",
    "event_types",
    "description",
    "headers",
    "ordered",
    "max_in_flight",
    "rate_limit_per_second",
    "enabled",
];

pub async fn create(state: &AppState, access: &Access, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    let mut allowed = vec!["partner_id", "environment"];
    allowed.extend_from_slice(PATCHABLE);
    only_fields(&map, &allowed)?;
    // A partner token's own partner (and environment, when it names one) are the defaults.
    let scope = access.scope_filter();
    let partner_id = match (opt_str(&map, "partner_id")?, scope) {
        (None, Some(scope)) => scope.partner_id.clone(),
        _ => super::partner_id(&map)?,
    };
    let environment = match (
        opt_str(&map, "environment")?,
        scope.and_then(|s| s.environment),
    ) {
        (None, Some(own)) => own,
        _ => super::environment(&map)?,
    };
    access.require_may_own(&partner_id, environment)?;
    if !map.contains_key("url") {
        return Err(ApiError::invalid("`url` is required"));
    }
    if !map.contains_key("event_types") {
        return Err(ApiError::invalid("`event_types` is required"));
    }
    let secret = Secret::generate().to_string();
    let mut endpoint = Endpoint {
        num: 0,
        partner_id,
        environment,
        url: String::new(),
        event_types: Vec::new(),
        description: String::new(),
        headers: Vec::new(),
        ordered: false,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        rate_limit_per_second: None,
        enabled: true,
        disabled_reason: None,
        created_at_ms: now_ms(),
        secrets: vec![EndpointSecret {
            secret: secret.clone(),
            expires_at_ms: None,
        }],
    };
    apply_fields(state, &mut endpoint, &map).await?;
    let endpoint = state.store.create_endpoint(endpoint).await?;
    tracing::info!(endpoint_id = %endpoint.id(), partner_id = %endpoint.partner_id, "endpoint created");
    let mut view = view(&endpoint);
    view["secret"] = json!(secret);
    Ok(json(StatusCode::CREATED, &view))
}

pub fn list(state: &AppState, access: &Access, query: &str) -> ApiResult {
    let partner = query_param(query, "partner_id");
    let endpoints: Vec<Value> = state
        .store
        .endpoints_in(access.scope_filter(), partner.as_deref())
        .iter()
        .filter(|e| !crate::notifications::is_operator(e))
        .map(|e| view(e))
        .collect();
    Ok(json(StatusCode::OK, &json!({"endpoints": endpoints})))
}

pub fn get(state: &AppState, access: &Access, id: &str) -> ApiResult {
    Ok(json(
        StatusCode::OK,
        &view(find(state, access, id)?.as_ref()),
    ))
}

pub fn secret(state: &AppState, access: &Access, id: &str) -> ApiResult {
    let ep = find(state, access, id)?;
    Ok(json(
        StatusCode::OK,
        &json!({"secret": ep.secrets[0].secret}),
    ))
}

pub async fn patch(
    state: &AppState,
    access: &Access,
    id: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let current = find(state, access, id)?;
    let map = read_json_object(state, req).await?;
    only_fields(&map, PATCHABLE)?;
    let mut changed = (*current).clone();
    apply_fields(state, &mut changed, &map).await?;
    let updated = replace(state, changed).await?;
    Ok(json(StatusCode::OK, &view(&updated)))
}

pub async fn delete(state: &AppState, access: &Access, id: &str) -> ApiResult {
    let ep = find(state, access, id)?;
    if !state.store.delete_endpoint(ep.num).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    tracing::info!(endpoint_id = %id, "endpoint deleted");
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /v1/endpoints/{id}/{action}`.
pub async fn action(
    state: &AppState,
    access: &Access,
    id: &str,
    action: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let ep = find(state, access, id)?;
    match action {
        "rotate-secret" => rotate(state, &ep, req).await,
        "enable" | "disable" => {
            let enable = action == "enable";
            let mut changed = (*ep).clone();
            changed.enabled = enable;
            changed.disabled_reason = (!enable).then(|| "disabled by an operator".to_string());
            let updated = replace(state, changed).await?;
            tracing::info!(endpoint_id = %id, enabled = enable, "endpoint {action}d by an operator");
            Ok(json(StatusCode::OK, &view(&updated)))
        }
        "test" => test(state, &ep, req).await,
        "recover" => recover(state, &ep, req).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such path: POST /v1/endpoints/{id}/{action}"),
        )),
    }
}

/// The endpoint as the API shows it, without secrets.
pub fn view(ep: &Endpoint) -> Value {
    let headers: Map<String, Value> = ep
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "id": ep.id(),
        "partner_id": ep.partner_id,
        "environment": ep.environment.as_str(),
        "url": ep.url,
        "event_types": ep.event_types,
        "description": ep.description,
        "headers": headers,
        "ordered": ep.ordered,
        "max_in_flight": ep.max_in_flight,
        "rate_limit_per_second": ep.rate_limit_per_second,
        "enabled": ep.enabled,
        "disabled_reason": ep.disabled_reason,
        "created_at": format_time(ep.created_at_ms),
    })
}

/// The endpoint with this id, if this caller may see it: another partner's answers as an unknown
/// id does (404).
pub fn find(
    state: &AppState,
    access: &Access,
    id: &str,
) -> Result<std::sync::Arc<Endpoint>, ApiError> {
    parse_numbered_id("ep_", id)
        .and_then(|n| state.store.endpoint(n))
        .filter(|ep| !crate::notifications::is_operator(ep))
        .filter(|ep| access.may_see(&ep.partner_id, ep.environment))
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

async fn replace(state: &AppState, changed: Endpoint) -> Result<Endpoint, ApiError> {
    let num = changed.num;
    state
        .store
        .update_endpoint(num, move |ep| *ep = changed.clone())
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

async fn rotate(state: &AppState, ep: &Endpoint, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(&map, &["grace_seconds"])?;
    let grace = match map.get("grace_seconds") {
        None | Some(Value::Null) => DEFAULT_GRACE_SECONDS,
        Some(v) => v.as_u64().filter(|g| *g <= 30 * 86_400).ok_or_else(|| {
            ApiError::invalid(
                "`grace_seconds` must be a whole number of seconds, at most 2592000 (30 days)",
            )
        })?,
    };
    let now = now_ms();
    let secret = Secret::generate().to_string();
    let mut changed = ep.clone();
    let mut secrets = vec![EndpointSecret {
        secret: secret.clone(),
        expires_at_ms: None,
    }];
    for old in &ep.secrets {
        let expires = match old.expires_at_ms {
            None => now + grace * 1000,
            Some(t) => t.min(now + grace * 1000),
        };
        if expires > now {
            secrets.push(EndpointSecret {
                secret: old.secret.clone(),
                expires_at_ms: Some(expires),
            });
        }
    }
    changed.secrets = secrets;
    replace(state, changed).await?;
    tracing::info!(endpoint_id = %ep.id(), grace_seconds = grace, "endpoint secret rotated");
    Ok(json(StatusCode::OK, &json!({"secret": secret})))
}

async fn test(state: &AppState, ep: &Endpoint, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(&map, &["type"])?;
    let name = opt_str(&map, "type")?.unwrap_or("audit.completed");
    let event_type = catalog::find(name).ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_event_type",
            format!(
                "unknown event type `{name}`; the catalog has {}",
                catalog::names()
            ),
        )
    })?;
    let now = now_ms();
    let mut sample = event_type.sample.as_object().cloned().unwrap_or_default();
    sample.insert("id".into(), json!(generate_id("evt_test_", now)));
    sample.insert("partner_id".into(), json!(ep.partner_id));
    sample.insert("environment".into(), json!(ep.environment.as_str()));
    sample.insert("created_at".into(), json!(super::events::time_seconds(now)));
    let mut event = super::events::validate(sample, now)?;
    event.only_endpoint = Some(ep.num);
    let id = event.id.clone();
    match state.store.ingest(vec![event]).await?.first() {
        Some(IngestOutcome::Accepted { .. }) => {
            Ok(json(StatusCode::ACCEPTED, &json!({"event_id": id})))
        }
        Some(IngestOutcome::Refused(refused)) => Err(refused.clone().into()),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "event_id_conflict",
            "the generated id was taken; retry",
        )),
    }
}

async fn recover(state: &AppState, ep: &Endpoint, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(&map, &["since"])?;
    let since = opt_str(&map, "since")?
        .ok_or_else(|| ApiError::invalid("`since` is required (an RFC 3339 time)"))?;
    // A time before 1970 is valid and means every stored event.
    let since_ms = crate::model::parse_time_signed(since)
        .map(|ms| u64::try_from(ms).unwrap_or(0))
        .ok_or_else(|| ApiError::invalid("`since` must be an RFC 3339 time"))?;
    let now = now_ms();
    let mut after = 0u64;
    let mut total = 0u32;
    loop {
        let events = state.store.events_from(after, 1000).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        let mut pairs = Vec::new();
        for ev in &events {
            if ev.received_at_ms < since_ms
                || ev.received_at_ms > now
                || ev.partner_id != ep.partner_id
                || ev.environment != ep.environment
                || !ep.subscribes_to(&ev.event_type)
            {
                continue;
            }
            let covered = state.store.event_deliveries(ev).await?.iter().any(|d| {
                d.endpoint_num == ep.num
                    && matches!(
                        d.status,
                        DeliveryStatus::Succeeded | DeliveryStatus::Pending
                    )
            });
            if !covered {
                pairs.push((ev.seq, ep.num));
            }
        }
        if !pairs.is_empty() {
            total += state.store.add_deliveries(pairs, now).await??;
        }
    }
    Ok(json(StatusCode::ACCEPTED, &json!({"deliveries": total})))
}

/// Applies and validates the changeable fields present in `map`.
async fn apply_fields(
    state: &AppState,
    ep: &mut Endpoint,
    map: &Map<String, Value>,
) -> Result<(), ApiError> {
    if let Some(url) = map.get("url") {
        let url = url
            .as_str()
            .ok_or_else(|| ApiError::invalid("`url` must be a string"))?;
        check_url(state, url, ep.environment).await?;
        ep.url = url.to_string();
    }
    if let Some(types) = map.get("event_types") {
        ep.event_types = event_types(types)?;
    }
    if let Some(d) = map.get("description") {
        let d = d
            .as_str()
            .ok_or_else(|| ApiError::invalid("`description` must be a string"))?;
        if d.len() > 1024 {
            return Err(ApiError::invalid("`description` is at most 1024 bytes"));
        }
        ep.description = d.to_string();
    }
    if let Some(h) = map.get("headers") {
        ep.headers = headers(h)?;
    }
    if let Some(o) = map.get("ordered") {
        ep.ordered = o
            .as_bool()
            .ok_or_else(|| ApiError::invalid("`ordered` must be true or false"))?;
    }
    if let Some(m) = map.get("max_in_flight") {
        ep.max_in_flight = m
            .as_u64()
            .filter(|m| (1..=10_000).contains(m))
            .ok_or_else(|| {
                ApiError::invalid("`max_in_flight` must be a whole number from 1 to 10000")
            })? as u32;
    }
    if let Some(r) = map.get("rate_limit_per_second") {
        ep.rate_limit_per_second = match r {
            Value::Null => None,
            r => Some(r.as_u64().filter(|r| (1..=1_000_000).contains(r)).ok_or_else(|| {
                ApiError::invalid("`rate_limit_per_second` must be null or a whole number from 1 to 1000000")
            })? as u32),
        };
    }
    if let Some(e) = map.get("enabled") {
        let enabled = e
            .as_bool()
            .ok_or_else(|| ApiError::invalid("`enabled` must be true or false"))?;
        if enabled != ep.enabled {
            ep.enabled = enabled;
            ep.disabled_reason = (!enabled).then(|| "disabled by an operator".to_string());
        }
    }
    Ok(())
}

async fn check_url(state: &AppState, url: &str, environment: Environment) -> Result<(), ApiError> {
    let delivery = &state.config.delivery;
    let parsed = guard::parse_endpoint_url(
        url,
        environment == Environment::Sandbox,
        delivery.require_https,
    )
    .map_err(|e| ApiError::unprocessable("invalid_endpoint_url", e.to_string()))?;
    if !delivery.allow_private_networks {
        guard::check_host(&parsed.host, parsed.port, false)
            .await
            .map_err(|e| ApiError::unprocessable("invalid_endpoint_url", e.to_string()))?;
    }
    Ok(())
}

pub(super) fn event_types(value: &Value) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid("`event_types` must be a non-empty array of event type names, or [\"*\"]")
    };
    let list = value
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(invalid)?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let name = item.as_str().ok_or_else(invalid)?;
        if name != "*" && !catalog::is_known(name) {
            return Err(ApiError::unprocessable(
                "unknown_event_type",
                format!(
                    "unknown event type `{name}`; the catalog has {}, or use \"*\"",
                    catalog::names()
                ),
            ));
        }
        if !out.iter().any(|t| t == name) {
            out.push(name.to_string());
        }
    }
    if out.len() > 1 && out.iter().any(|t| t == "*") {
        return Err(ApiError::invalid(
            "`[\"*\"]` stands alone: it already means every type",
        ));
    }
    Ok(out)
}

pub(super) fn headers(value: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let map = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(map) => map,
        _ => {
            return Err(ApiError::invalid(
                "`headers` must be an object of header names to string values",
            ))
        }
    };
    if map.len() > MAX_HEADERS {
        return Err(ApiError::unprocessable(
            "invalid_header",
            format!("at most {MAX_HEADERS} custom headers are allowed"),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name.len() > MAX_HEADER_NAME {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!(
                    "a header name is {} bytes long; at most {MAX_HEADER_NAME} are allowed",
                    name.len()
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!("`{name}` is not a valid header name"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("preflixai-")
            || lower.starts_with("webhook-")
        {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!(
                    "the daemon sets `{lower}` itself; custom headers may not use {}, preflixai-* or webhook-*",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        // Header names are case-insensitive: `X-Route` and `x-route` would be sent as two headers.
        if out.iter().any(|(seen, _)| *seen == lower) {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!("the header `{lower}` is given twice (names are case-insensitive)"),
            ));
        }
        let value = value.as_str().ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_header",
                format!("the value of `{name}` must be a string"),
            )
        })?;
        if value.len() > MAX_HEADER_VALUE || value.chars().any(|c| c.is_control()) {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!(
                    "the value of `{name}` must be at most {MAX_HEADER_VALUE} bytes without control characters"
                ),
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(ApiError::unprocessable(
                "invalid_header",
                format!("the value of `{name}` is not a valid header value"),
            ));
        }
        out.push((lower, value.to_string()));
    }
    Ok(out)
}
