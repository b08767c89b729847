//! Who is asking, and what they may see and do: the bearer check and every scoping decision of the API, in one place.
//!
//! [`authenticate`] turns the `authorization` header into an [`Access`]: the admin token (compared
//! in constant time), or a live partner token (found by its SHA-256 in the store). Then
//! [`Access::check_route`] decides from the method and path alone what kind of caller a route
//! needs (the table in [`need`]), and the handlers ask the same `Access` about each thing they
//! touch: [`Access::may_see`] for one item (outside the scope it is `404 not_found`, the same
//! answer as an unknown id), [`Access::scope_filter`] for the store's list queries, and
//! [`Access::require_may_own`] before an endpoint is made for a partner and environment.
//!
//! **Architecture Invariant:** no handler compares partner ids itself; a new route gets a row in
//! [`need`] and asks `Access` about the items it shows or changes.

use super::{ApiError, AppState};
use crate::model::{format_time, Environment, PartnerScope, PartnerToken};
use http::{header, Method, Request, StatusCode};
use sha2::{Digest, Sha256};

/// What every partner token starts with; the rest is 64 lower-case hex digits (256 random bits).
pub const TOKEN_PREFIX: &str = "pft_";

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin token: everything.
    Admin,
    /// A partner token: its partner (and environment, when it names one) only.
    Partner {
        token_id: String,
        scope: PartnerScope,
        read_only: bool,
        expires_at_ms: u64,
    },
}

/// What the caller of one request may see and do.
#[derive(Debug, Clone)]
pub struct Access {
    principal: Principal,
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token; the handler scopes what it shows.
    Read,
    /// A token that may change things (the admin's, or a partner token that is not read-only);
    /// the handler scopes what it changes.
    Write,
    /// The admin token only.
    Admin,
}

/// The route table of permissions: what each method and path needs (contract section 9). Posting
/// events, tokens, `/status` and `/metrics` are the admin's; every other change needs a token that
/// may write; reads need any token.
pub fn need(method: &Method, segments: &[&str]) -> Need {
    match (method, segments) {
        (&Method::POST, ["v1", "events"] | ["v1", "events", "batch"]) => Need::Admin,
        (_, ["v1", "tokens", ..]) => Need::Admin,
        (_, ["status"] | ["metrics"]) => Need::Admin,
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        _ => Need::Write,
    }
}

impl Access {
    pub fn admin() -> Access {
        Access {
            principal: Principal::Admin,
        }
    }

    pub fn partner(token: &PartnerToken) -> Access {
        Access {
            principal: Principal::Partner {
                token_id: token.id(),
                scope: token.scope(),
                read_only: token.read_only,
                expires_at_ms: token.expires_at_ms,
            },
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether something of `partner_id` in `environment` may be seen (and, with
    /// [`Access::require_write`], changed) by this caller.
    pub fn may_see(&self, partner_id: &str, environment: Environment) -> bool {
        self.scope_filter()
            .is_none_or(|s| s.contains(partner_id, environment))
    }

    /// The filter the store's list queries take: `None` for the admin (everything).
    pub fn scope_filter(&self) -> Option<&PartnerScope> {
        match &self.principal {
            Principal::Admin => None,
            Principal::Partner { scope, .. } => Some(scope),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match &self.principal {
            Principal::Admin => Ok(()),
            Principal::Partner { .. } => Err(forbidden(
                "a partner token cannot do this: posting events, partner tokens, /status and \
                 /metrics need the admin token",
            )),
        }
    }

    pub fn require_write(&self) -> Result<(), ApiError> {
        match &self.principal {
            Principal::Partner {
                read_only: true, ..
            } => Err(forbidden(
                "this partner token is read-only: it cannot change anything",
            )),
            _ => Ok(()),
        }
    }

    /// Before something is made for `partner_id` in `environment` (an endpoint): a partner token
    /// makes things for its own partner and environment only (403 otherwise, as the contract says).
    pub fn require_may_own(
        &self,
        partner_id: &str,
        environment: Environment,
    ) -> Result<(), ApiError> {
        self.require_write()?;
        match self.scope_filter() {
            Some(scope) if scope.partner_id != partner_id => Err(forbidden(format!(
                "this token is for partner `{}` and cannot act for another partner",
                scope.partner_id
            ))),
            Some(PartnerScope {
                environment: Some(own),
                ..
            }) if *own != environment => Err(forbidden(format!(
                "this token is for the {} environment only",
                own.as_str()
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the route's [`need`] against this caller.
    pub fn check_route(&self, method: &Method, segments: &[&str]) -> Result<(), ApiError> {
        match need(method, segments) {
            Need::Read => Ok(()),
            Need::Write => self.require_write(),
            Need::Admin => self.require_admin(),
        }
    }

    /// `GET /v1/whoami`: who this token is, so a client (the console) can hide what it may not do.
    pub fn describe(&self) -> serde_json::Value {
        match &self.principal {
            Principal::Admin => serde_json::json!({"kind": "admin", "read_only": false}),
            Principal::Partner {
                token_id,
                scope,
                read_only,
                expires_at_ms,
            } => serde_json::json!({
                "kind": "partner",
                "token_id": token_id,
                "partner_id": scope.partner_id,
                "environment": scope.environment.map(Environment::as_str),
                "read_only": read_only,
                "expires_at": format_time(*expires_at_ms),
            }),
        }
    }
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// SHA-256 of a token's text: what the store keeps and looks tokens up by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A well-formed partner token: the prefix and 64 lower-case hex digits.
pub fn is_partner_token(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Who is asking: the admin token, or a live partner token. Anything else is `401 unauthorized`;
/// a refused partner token is logged with its id when it is known (never the token itself).
pub async fn authenticate<B>(
    state: &AppState,
    req: &Request<B>,
    now_ms: u64,
) -> Result<Access, ApiError> {
    use subtle::ConstantTimeEq;
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        // Which one a proxy in front would have checked is anyone's guess: one reading or none.
        return Err(ApiError::invalid(
            "the authorization header is given more than once; send it once",
        ));
    }
    // `Bearer <token>`, the scheme name in any case (RFC 9110 section 11.1).
    let given = first
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '))
        .unwrap_or("");
    const REQUIRED: &str =
        "a valid token is required: authorization: Bearer <admin token or partner token>";
    if given.is_empty() {
        return Err(unauthorized(REQUIRED));
    }
    // Compare digests so neither the content nor the length of the admin token leaks through timing.
    let given_hash = token_hash(given);
    let admin_hash = token_hash(&state.token);
    if bool::from(given_hash.ct_eq(&admin_hash)) {
        return Ok(Access::admin());
    }
    if !given.starts_with(TOKEN_PREFIX) {
        return Err(unauthorized(REQUIRED));
    }
    if !is_partner_token(given) {
        tracing::info!(
            "refused a malformed partner token (pft_ and 64 lower-case hex digits expected)"
        );
        return Err(unauthorized(
            "this partner token is malformed: pft_ and 64 lower-case hex digits expected",
        ));
    }
    // A lookup by hash: its timing tells nothing about any token's text.
    let Some(token) = state.store.token_by_hash(&given_hash).await? else {
        tracing::info!("refused an unknown partner token");
        return Err(unauthorized(REQUIRED));
    };
    if let Some(at) = token.revoked_at_ms {
        tracing::warn!(token_id = %token.id(), partner_id = %token.partner_id, revoked_at = %format_time(at), "refused a revoked partner token");
        return Err(unauthorized("this partner token was revoked"));
    }
    if now_ms >= token.expires_at_ms {
        tracing::warn!(token_id = %token.id(), partner_id = %token.partner_id, expired_at = %format_time(token.expires_at_ms), "refused an expired partner token");
        return Err(unauthorized("this partner token has expired"));
    }
    Ok(Access::partner(&token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(env: Option<Environment>, read_only: bool) -> Access {
        Access::partner(&PartnerToken {
            num: 1,
            hash: [0; 32],
            partner_id: "a".into(),
            environment: env,
            read_only,
            description: String::new(),
            created_at_ms: 0,
            expires_at_ms: 10,
            revoked_at_ms: None,
        })
    }

    #[test]
    fn the_route_table() {
        let cases: &[(Method, &[&str], Need)] = &[
            (Method::POST, &["v1", "events"], Need::Admin),
            (Method::POST, &["v1", "events", "batch"], Need::Admin),
            (Method::GET, &["v1", "tokens"], Need::Admin),
            (Method::POST, &["v1", "tokens"], Need::Admin),
            (Method::DELETE, &["v1", "tokens", "tok_1"], Need::Admin),
            (Method::GET, &["status"], Need::Admin),
            (Method::GET, &["metrics"], Need::Admin),
            (Method::GET, &["v1", "events", "e"], Need::Read),
            (
                Method::POST,
                &["v1", "events", "e", "redeliver"],
                Need::Write,
            ),
            (Method::GET, &["v1", "endpoints"], Need::Read),
            (Method::POST, &["v1", "endpoints"], Need::Write),
            (Method::PATCH, &["v1", "endpoints", "x"], Need::Write),
            (Method::DELETE, &["v1", "dead-letters", "x"], Need::Write),
            (Method::GET, &["v1", "endpoints", "x", "stats"], Need::Read),
        ];
        for (method, path, expected) in cases {
            assert_eq!(need(method, path), *expected, "{method} {path:?}");
        }
    }

    #[test]
    fn scoping() {
        let admin = Access::admin();
        assert!(admin.may_see("b", Environment::Sandbox));
        assert!(admin.scope_filter().is_none());
        assert!(admin.require_may_own("b", Environment::Sandbox).is_ok());

        let a = partner(None, false);
        assert!(a.may_see("a", Environment::Sandbox));
        assert!(a.may_see("a", Environment::Production));
        assert!(!a.may_see("b", Environment::Production));
        assert_eq!(a.require_admin().unwrap_err().status, StatusCode::FORBIDDEN);
        assert!(a.require_write().is_ok());
        assert!(a.require_may_own("a", Environment::Sandbox).is_ok());
        assert_eq!(
            a.require_may_own("b", Environment::Sandbox)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );

        let sandbox = partner(Some(Environment::Sandbox), false);
        assert!(sandbox.may_see("a", Environment::Sandbox));
        assert!(!sandbox.may_see("a", Environment::Production));
        assert!(sandbox
            .require_may_own("a", Environment::Production)
            .is_err());

        let read_only = partner(None, true);
        assert!(read_only.may_see("a", Environment::Production));
        assert_eq!(
            read_only
                .check_route(&Method::POST, &["v1", "endpoints"])
                .unwrap_err()
                .code,
            "forbidden"
        );
        assert!(read_only
            .check_route(&Method::GET, &["v1", "endpoints"])
            .is_ok());
    }

    #[test]
    fn partner_token_form() {
        assert!(is_partner_token(&format!("pft_{}", "a1".repeat(32))));
        assert!(!is_partner_token(&format!("pft_{}", "A1".repeat(32))));
        assert!(!is_partner_token(&format!("pft_{}", "a1".repeat(31))));
        assert!(!is_partner_token("pft_"));
        assert!(!is_partner_token(&"a1".repeat(34)));
    }
}
