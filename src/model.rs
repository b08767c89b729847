//! The daemon's plain data: events, endpoints, deliveries, attempts, dead letters and their ids. No I/O.

use serde::{Deserialize, Serialize};

/// Which world an event or endpoint belongs to; the two never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }

    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "production" => Some(Environment::Production),
            "sandbox" => Some(Environment::Sandbox),
            _ => None,
        }
    }
}

/// A stored event. The delivery body is kept as the exact bytes every attempt sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Internal sequence number: the order of reception, and the key of the `events` tree.
    pub seq: u64,
    /// The producer's id (or a generated `evt_` id); unique among stored events.
    pub id: String,
    /// Only this partner's endpoints receive the event.
    pub partner_id: String,
    /// Only endpoints of the same environment receive the event.
    pub environment: Environment,
    /// A catalog type.
    pub event_type: String,
    /// RFC 3339 text as given by the producer (or the time of reception).
    pub created_at: String,
    /// When the daemon stored it, unix milliseconds.
    pub received_at_ms: u64,
    /// The delivery body: `{"id","type","created_at","data"}` as compact JSON, identical on every attempt.
    pub payload: Vec<u8>,
    /// SHA-256 of partner, environment, type and canonical data: what idempotency compares.
    pub content_hash: [u8; 32],
    /// The deliveries created with the event, as (delivery seq, endpoint num). Until its first
    /// attempt settles, such a delivery has no record of its own: it is this entry plus its queue
    /// entry, and reads as [`Delivery::initial`]. Deliveries added later (redeliver, recover) are
    /// written as records from the start.
    pub initial_deliveries: Vec<(u64, u64)>,
}

/// The idempotency record: event id → where the event is and what it contained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventIdRecord {
    pub event_seq: u64,
    pub content_hash: [u8; 32],
    /// How many deliveries the first ingest created; repeated in duplicate answers.
    pub deliveries: u32,
}

/// One signing secret of an endpoint; a rotated-out secret lives on until `expires_at_ms`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSecret {
    pub secret: String,
    pub expires_at_ms: Option<u64>,
}

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSecret")
            .field("secret", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A partner's registered receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Internal number; the id is derived from it and queue keys use it.
    pub num: u64,
    pub partner_id: String,
    pub environment: Environment,
    pub url: String,
    /// Catalog types, or `["*"]`.
    pub event_types: Vec<String>,
    pub description: String,
    /// Extra request headers, validated at registration.
    pub headers: Vec<(String, String)>,
    /// One delivery at a time, in reception order.
    pub ordered: bool,
    pub max_in_flight: u32,
    pub rate_limit_per_second: Option<u32>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at_ms: u64,
    /// Newest first; the first is the current secret. Not part of the serialized fields: the store
    /// keeps them after the other fields, sealed when a master key is configured
    /// (`store::codec::EndpointRecord`).
    #[serde(skip)]
    pub secrets: Vec<EndpointSecret>,
}

#[cfg(test)]
impl Endpoint {
    /// A plain enabled endpoint for tests: every event type, no secrets, `max_in_flight` 4.
    pub(crate) fn sample(num: u64, partner_id: &str, environment: Environment) -> Endpoint {
        Endpoint {
            num,
            partner_id: partner_id.into(),
            environment,
            url: "https://hooks.acme.example/preflix".into(),
            event_types: vec!["*".into()],
            description: String::new(),
            headers: Vec::new(),
            ordered: false,
            max_in_flight: 4,
            rate_limit_per_second: None,
            enabled: true,
            disabled_reason: None,
            created_at_ms: 1,
            secrets: Vec::new(),
        }
    }
}

impl Endpoint {
    pub fn id(&self) -> String {
        endpoint_id(self.num)
    }

    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == "*" || t == event_type)
    }

    /// Does an event of this partner, environment and type get a delivery to this endpoint?
    pub fn matches(&self, partner_id: &str, environment: Environment, event_type: &str) -> bool {
        self.enabled
            && self.partner_id == partner_id
            && self.environment == environment
            && self.subscribes_to(event_type)
    }

    /// The secrets that sign an attempt made at `now_ms`.
    pub fn live_secrets(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at_ms.is_none_or(|t| t > now_ms))
            .map(|s| s.secret.as_str())
    }
}

/// An endpoint's delivery health, updated when an attempt settles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub consecutive_failures: u32,
    pub last_status_code: Option<u16>,
    pub last_success_at_ms: Option<u64>,
    pub last_failure_at_ms: Option<u64>,
    /// First failure after the last success: `endpoints.disable_after` counts from here.
    pub failing_since_ms: Option<u64>,
    /// What the last failed attempt got: `HTTP 503`, or why there was no response.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }
}

/// One attempt, as the attempt log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub n: u32,
    pub at_ms: u64,
    pub status_code: Option<u16>,
    pub duration_ms: u32,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    pub event_seq: u64,
    pub endpoint_num: u64,
    pub status: DeliveryStatus,
    /// Due time while pending.
    pub next_attempt_at_ms: Option<u64>,
    pub attempts: Vec<Attempt>,
    /// Attempts made before the last redrive: a redriven delivery gets a fresh set.
    pub attempts_before_redrive: u32,
    pub created_at_ms: u64,
}

impl Delivery {
    /// A delivery created with its event and not yet attempted: pending, due at reception.
    pub fn initial(event_seq: u64, received_at_ms: u64, seq: u64, endpoint_num: u64) -> Delivery {
        Delivery {
            seq,
            event_seq,
            endpoint_num,
            status: DeliveryStatus::Pending,
            next_attempt_at_ms: Some(received_at_ms),
            attempts: Vec::new(),
            attempts_before_redrive: 0,
            created_at_ms: received_at_ms,
        }
    }

    pub fn id(&self) -> String {
        delivery_id(self.seq)
    }

    /// Attempts counted against the retry schedule.
    pub fn attempts_in_round(&self) -> u32 {
        self.attempts.len() as u32 - self.attempts_before_redrive
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    RetriesExhausted,
    EndpointGone,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::EndpointGone => "endpoint_gone",
        }
    }
}

/// A delivery that gave up, kept for operators to inspect and redrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub delivery_seq: u64,
    pub event_seq: u64,
    pub endpoint_num: u64,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub first_attempt_at_ms: Option<u64>,
    pub dead_at_ms: u64,
    pub reason: DeadReason,
}

impl DeadLetter {
    pub fn id(&self) -> String {
        format!("dl_{:016x}", self.seq)
    }
}

pub fn endpoint_id(num: u64) -> String {
    format!("ep_{num:016x}")
}

pub fn delivery_id(seq: u64) -> String {
    format!("dlv_{seq:016x}")
}

/// Parses an id made by [`endpoint_id`], [`delivery_id`] or [`DeadLetter::id`] back into its number.
///
/// Only the exact form those functions write is accepted: the prefix and 16 lower-case hex digits.
/// `u64::from_str_radix` alone would also take a sign (`ep_+00000000000002a`) and upper-case
/// digits, so one number would have several ids; an id has one spelling.
pub fn parse_numbered_id(prefix: &str, id: &str) -> Option<u64> {
    let hex = id.strip_prefix(prefix)?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// `[A-Za-z0-9._-]{1,max}`: the form of partner ids and event ids.
pub fn is_valid_token(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh unique id: prefix, milliseconds and 64 random bits, in hex.
pub fn generate_id(prefix: &str, now_ms: u64) -> String {
    format!("{prefix}{now_ms:012x}{:016x}", rand::random::<u64>())
}

/// Unix milliseconds as RFC 3339 UTC text with millisecond precision.
pub fn format_time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

/// Parses RFC 3339 text into unix milliseconds; `None` for text that is not RFC 3339 and for
/// times before 1970 (see [`parse_time_signed`]).
pub fn parse_time(text: &str) -> Option<u64> {
    u64::try_from(parse_time_signed(text)?).ok()
}

/// Parses RFC 3339 text into unix milliseconds, negative before 1970 (RFC 3339 allows years 0000
/// to 9999).
pub fn parse_time_signed(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// A partner token as stored: never the token itself, only its SHA-256 (the token is 256 random
/// bits, so the hash alone is enough to check it and useless to whoever reads the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerToken {
    /// Internal number; the id `tok_…` is derived from it.
    pub num: u64,
    /// SHA-256 of the token text (`pft_` + 64 hex digits): how a request's token is found.
    pub hash: [u8; 32],
    /// The only partner whose endpoints, events and dead letters the token sees.
    pub partner_id: String,
    /// When set, the token sees only this environment of the partner.
    pub environment: Option<Environment>,
    /// A read-only token changes nothing.
    pub read_only: bool,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Set when an operator revoked it; kept (until retention) so refusals can name it.
    pub revoked_at_ms: Option<u64>,
}

impl PartnerToken {
    pub fn id(&self) -> String {
        token_id(self.num)
    }

    /// Whether a request made at `now_ms` may use it.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }

    /// What the token may see: its partner, and its environment when it names one.
    pub fn scope(&self) -> PartnerScope {
        PartnerScope {
            partner_id: self.partner_id.clone(),
            environment: self.environment,
        }
    }
}

pub fn token_id(num: u64) -> String {
    format!("tok_{num:016x}")
}

/// One partner's share of the daemon (and one environment of it, when set): what a partner token
/// sees, and what the store's list queries filter by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartnerScope {
    pub partner_id: String,
    pub environment: Option<Environment>,
}

impl PartnerScope {
    /// Whether something of `partner_id` in `environment` lies inside the scope.
    pub fn contains(&self, partner_id: &str, environment: Environment) -> bool {
        self.partner_id == partner_id && self.environment.is_none_or(|e| e == environment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(endpoint_id(255), "ep_00000000000000ff");
        assert_eq!(parse_numbered_id("ep_", &endpoint_id(255)), Some(255));
        assert_eq!(parse_numbered_id("dlv_", &delivery_id(7)), Some(7));
        assert_eq!(parse_numbered_id("dlv_", "dlv_zz"), None);
        assert_eq!(parse_numbered_id("ep_", "dlv_0000000000000001"), None);
    }

    #[test]
    fn ids_have_one_spelling() {
        assert_eq!(parse_numbered_id("ep_", "ep_000000000000002a"), Some(42));
        for alias in [
            "ep_+00000000000002a",
            "ep_000000000000002A",
            "ep_-00000000000002a",
            "ep_ 00000000000002a",
            "EP_000000000000002a",
            "ep_00000000000002a",
            "ep_0000000000000002a",
        ] {
            assert_eq!(parse_numbered_id("ep_", alias), None, "{alias}");
        }
    }

    #[test]
    fn tokens() {
        assert!(is_valid_token("acme-health.v2_x", 64));
        assert!(!is_valid_token("", 64));
        assert!(!is_valid_token("a b", 64));
        assert!(!is_valid_token("é", 64));
        assert!(!is_valid_token(&"a".repeat(65), 64));
        assert!(is_valid_token(&"a".repeat(64), 64));
    }

    #[test]
    fn time_round_trip() {
        let ms = parse_time("2026-01-15T19:04:12Z").expect("valid time");
        assert_eq!(ms, 1_768_503_852_000);
        assert_eq!(format_time(ms), "2026-01-15T19:04:12.000Z");
        assert_eq!(parse_time("2026-01-15T20:04:12+01:00"), Some(ms));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn times_before_1970_are_rfc_3339_too() {
        assert_eq!(parse_time_signed("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(parse_time_signed("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_signed("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800_000)
        );
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn rotating_secrets_expire() {
        let mut ep = Endpoint {
            num: 1,
            partner_id: "p".into(),
            environment: Environment::Production,
            url: "https://x.example/".into(),
            event_types: vec!["*".into()],
            description: String::new(),
            headers: vec![],
            ordered: false,
            max_in_flight: 16,
            rate_limit_per_second: None,
            enabled: true,
            disabled_reason: None,
            created_at_ms: 0,
            secrets: vec![],
        };
        ep.secrets.push(EndpointSecret {
            secret: "new".into(),
            expires_at_ms: None,
        });
        ep.secrets.push(EndpointSecret {
            secret: "old".into(),
            expires_at_ms: Some(100),
        });
        assert_eq!(ep.live_secrets(50).collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(ep.live_secrets(100).collect::<Vec<_>>(), ["new"]);
        assert!(ep.matches("p", Environment::Production, "bill.created"));
        assert!(!ep.matches("q", Environment::Production, "bill.created"));
        assert!(!ep.matches("p", Environment::Sandbox, "bill.created"));
    }
}
