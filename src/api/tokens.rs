//! `/v1/tokens` (admin only): minting, listing and revoking partner tokens; and `/v1/whoami`.
//!
//! A token is `pft_` + 64 hex digits of 256 random bits, shown once in the answer to the mint;
//! the store keeps its SHA-256 only. Lifetime: `ttl`, default [`DEFAULT_TTL`], at most
//! [`MAX_TTL`].

use super::access::{token_hash, Access, TOKEN_PREFIX};
use super::{
    empty, json, now_ms, only_fields, opt_str, query_param, read_json_object, ApiError, ApiResult,
    AppState,
};
use crate::model::{format_time, parse_numbered_id, Environment, PartnerToken};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use rand::RngCore;
use serde_json::{json, Value};
use std::time::Duration;

/// A token's lifetime when `ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 86_400);
/// The longest lifetime a token may be given: a year. Longer-lived access is a new token, minted
/// on purpose.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The shortest: one second.
pub const MIN_TTL: Duration = Duration::from_secs(1);

pub async fn create(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let map = read_json_object(state, req).await?;
    only_fields(
        &map,
        &[
            "partner_id",
            "environment",
            "ttl",
            "read_only",
            "description",
        ],
    )?;
    let partner_id = super::partner_id(&map)?;
    let environment = match opt_str(&map, "environment")? {
        None => None,
        Some(e) => Some(Environment::parse(e).ok_or_else(|| {
            ApiError::invalid("`environment` must be \"production\", \"sandbox\" or null (both)")
        })?),
    };
    let ttl = match opt_str(&map, "ttl")? {
        None => DEFAULT_TTL,
        Some(text) => crate::config::parse_duration(text)
            .map_err(|why| ApiError::invalid(format!("`ttl` is not a duration: {why}")))
            .and_then(|ttl| {
                if (MIN_TTL..=MAX_TTL).contains(&ttl) {
                    Ok(ttl)
                } else {
                    Err(ApiError::invalid(
                        "`ttl` must be from 1s to 365d (the default is 30d)",
                    ))
                }
            })?,
    };
    let read_only = match map.get("read_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`read_only` must be true or false")),
    };
    let description = opt_str(&map, "description")?.unwrap_or("").to_string();
    if description.len() > 1024 {
        return Err(ApiError::invalid("`description` is at most 1024 bytes"));
    }
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    let mut text = String::with_capacity(TOKEN_PREFIX.len() + 64);
    text.push_str(TOKEN_PREFIX);
    for b in random {
        text.push_str(&format!("{b:02x}"));
    }
    let now = now_ms();
    let token = state
        .store
        .create_token(PartnerToken {
            num: 0,
            hash: token_hash(&text),
            partner_id,
            environment,
            read_only,
            description,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
            revoked_at_ms: None,
        })
        .await?;
    tracing::info!(token_id = %token.id(), partner_id = %token.partner_id, read_only, expires_at = %format_time(token.expires_at_ms), "partner token minted");
    let mut body = view(&token, now);
    body["token"] = json!(text);
    Ok(json(StatusCode::CREATED, &body))
}

pub async fn list(state: &AppState, query: &str) -> ApiResult {
    let partner = query_param(query, "partner_id");
    let now = now_ms();
    let tokens: Vec<Value> = state
        .store
        .tokens(partner.as_deref())
        .await?
        .iter()
        .map(|t| view(t, now))
        .collect();
    Ok(json(StatusCode::OK, &json!({"tokens": tokens})))
}

pub async fn revoke(state: &AppState, id: &str) -> ApiResult {
    let num = parse_numbered_id("tok_", id).ok_or_else(|| ApiError::not_found("token"))?;
    let token = state
        .store
        .revoke_token(num, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("token"))?;
    tracing::info!(token_id = %token.id(), partner_id = %token.partner_id, "partner token revoked");
    Ok(empty(StatusCode::NO_CONTENT))
}

pub fn whoami(access: &Access) -> ApiResult {
    Ok(json(StatusCode::OK, &access.describe()))
}

/// A token as the API shows it: never the token itself.
fn view(t: &PartnerToken, now: u64) -> Value {
    let status = if t.revoked_at_ms.is_some() {
        "revoked"
    } else if now >= t.expires_at_ms {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": t.id(),
        "partner_id": t.partner_id,
        "environment": t.environment.map(Environment::as_str),
        "read_only": t.read_only,
        "description": t.description,
        "created_at": format_time(t.created_at_ms),
        "expires_at": format_time(t.expires_at_ms),
        "revoked_at": t.revoked_at_ms.map(format_time),
        "status": status,
    })
}
