//! Delivery signatures: signing on the daemon's side, verification on a receiver's.
//!
//! A delivery carries two header sets, each enough on its own (spec/API.md section 5):
//!
//! - the Preflix AI set: `preflixai-timestamp` and `preflixai-signature`, where the
//!   signature is `v1=<lowercase hex HMAC-SHA256(key, "<timestamp>.<body>")>`;
//! - the Standard Webhooks set: `webhook-id`, `webhook-timestamp` and `webhook-signature`,
//!   where the signature is `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
//!
//! `key` is the base64-decoded text after `whsec_` in the endpoint's [`Secret`].
//! While a secret is rotating, each signature header holds one entry per secret.
//!
//! **Architecture Invariant:** this module does no I/O and reads no clock; the current
//! time is always the `now` parameter (unix seconds), so partners can use it without the
//! daemon's server parts and every case is tested fast and exactly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, Engine as _, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Name of the header holding the unix seconds the Preflix AI signature covers.
pub const PREFLIXAI_TIMESTAMP: &str = "preflixai-timestamp";
/// Name of the header holding the `v1=<hex>` Preflix AI signature entries.
pub const PREFLIXAI_SIGNATURE: &str = "preflixai-signature";
/// Name of the Standard Webhooks header holding the message (event) id.
pub const WEBHOOK_ID: &str = "webhook-id";
/// Name of the Standard Webhooks header holding the unix seconds the signature covers.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Name of the Standard Webhooks header holding the `v1,<base64>` signature entries.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The prefix every secret's text starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a timestamp may be from `now`, in either direction, unless
/// [`Verifier::with_tolerance`] says otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// An endpoint's signing secret: `whsec_` followed by the base64 of the key bytes.
///
/// Parsing is as lenient as the Standard Webhooks libraries: the `whsec_` prefix may be
/// left off and base64 padding may be present or not. `Display` and [`Secret::as_str`]
/// give the `whsec_...` text back (so never log one); `Debug` redacts it.
#[derive(Clone)]
pub struct Secret {
    /// The `whsec_...` text, kept so the secret can be stored and shown exactly as given.
    text: String,
    /// HMAC-SHA256 already keyed with the secret's bytes; signing clones it instead of
    /// re-deriving the key pads for every message.
    keyed: Hmac<Sha256>,
}

/// Why a text is not a [`Secret`]. The messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// There are no key bytes after the prefix.
    #[error("the secret is empty")]
    Empty,
    /// The text after `whsec_` is not standard base64.
    #[error("the secret is not `whsec_` followed by base64")]
    NotBase64,
}

/// The two signature header values of one signed delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// The unix seconds both signatures cover, sent as both timestamp headers.
    pub timestamp: i64,
    /// The `preflixai-signature` value: `v1=<hex>` entries joined by `,`.
    pub preflixai_signature: String,
    /// The `webhook-signature` value: `v1,<base64>` entries joined by a space.
    pub webhook_signature: String,
}

/// Signs a delivery body under every secret, newest first as given.
///
/// With an empty `secrets` slice both signature values are empty, which no receiver accepts.
///
/// ```
/// use preflix_webhookd::signing::{sign, Secret};
///
/// let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = br#"{"id":"evt_empty","type":"bill.created","created_at":"2026-03-01T08:30:00Z","data":{}}"#;
/// let signatures = sign(&[secret], "evt_empty", 1772353800, body);
/// assert_eq!(
///     signatures.preflixai_signature,
///     "v1=7a62570c0a1f51abb05e6a30dc23c78a996ed20e1660cc13358650a83d71be7a"
/// );
/// assert_eq!(
///     signatures.webhook_signature,
///     "v1,GoGhzro3Pj5dSxuVTlYWdVjCYf0NB+NP7zviVPd7D/4="
/// );
/// for (name, value) in signatures.header_pairs("evt_empty") {
///     println!("{name}: {value}");
/// }
/// # Ok::<(), preflix_webhookd::signing::SecretError>(())
/// ```
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    let decimal = Decimal::new(timestamp);
    let timestamp_text = decimal.as_bytes();
    let mut preflixai = String::with_capacity(secrets.len() * (PREFLIXAI_ENTRY_LEN + 1));
    let mut webhook = String::with_capacity(secrets.len() * (WEBHOOK_ENTRY_LEN + 1));
    for (index, secret) in secrets.iter().enumerate() {
        if index > 0 {
            preflixai.push(',');
            webhook.push(' ');
        }
        preflixai.push_str("v1=");
        push_hex(&mut preflixai, &secret.preflixai_tag(timestamp_text, body));
        webhook.push_str("v1,");
        STANDARD.encode_string(
            secret.webhook_tag(id.as_bytes(), timestamp_text, body),
            &mut webhook,
        );
    }
    Signatures {
        timestamp,
        preflixai_signature: preflixai,
        webhook_signature: webhook,
    }
}

/// Checks a delivery's signature headers against one or more secrets.
///
/// Either header set verifies a body on its own; when both are present, either one
/// verifying is enough. Signature entries of unknown versions (`v2=...`, `v1a,...`) are
/// skipped, and signatures are compared in constant time.
///
/// With no secrets, nothing verifies.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use preflix_webhookd::signing::{HeaderSet, Secret, Verifier, VerifyError};
///
/// // What a receiver got: the raw body bytes and the request headers.
/// let body = br#"{"id":"evt_empty","type":"bill.created","created_at":"2026-03-01T08:30:00Z","data":{}}"#;
/// let mut headers = HeaderMap::new();
/// headers.insert("preflixai-timestamp", HeaderValue::from_static("1772353800"));
/// headers.insert(
///     "preflixai-signature",
///     HeaderValue::from_static("v1=7a62570c0a1f51abb05e6a30dc23c78a996ed20e1660cc13358650a83d71be7a"),
/// );
///
/// let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let verifier = Verifier::new(vec![secret]);
/// let now = 1772353830; // The receiver's clock, 30 seconds after signing.
/// let verified = verifier.verify(&headers, body, now).expect("a genuine delivery");
/// assert_eq!(verified.header_set, HeaderSet::Preflixai);
///
/// // Any change to the body is caught, and so is an old delivery.
/// assert_eq!(
///     verifier.verify(&headers, b"{}", now),
///     Err(VerifyError::NoMatchingSignature)
/// );
/// assert_eq!(
///     verifier.verify(&headers, body, now + 3600),
///     Err(VerifyError::StaleTimestamp)
/// );
/// # Ok::<(), preflix_webhookd::signing::SecretError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Every secret a delivery may be signed with; more than one while a secret rotates.
    secrets: Vec<Secret>,
    /// How far a signed timestamp may be from `now`, in either direction, against replays.
    tolerance: Duration,
}

/// What a successful verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The header set whose signature matched.
    pub header_set: HeaderSet,
    /// The signed timestamp, in unix seconds.
    pub timestamp: i64,
    /// Which of the verifier's secrets matched, so a receiver can tell when an old one
    /// stops being used.
    pub secret_index: usize,
}

/// One of the two header sets a delivery is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderSet {
    /// `preflixai-timestamp` and `preflixai-signature`.
    Preflixai,
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    StandardWebhooks,
}

/// Which check a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the signature needs is absent (with no signature headers at all, this
    /// names `preflixai-signature`).
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but unreadable; the second field says why.
    #[error("malformed header `{0}`: {1}")]
    MalformedHeader(&'static str, &'static str),
    /// The signed timestamp is older than the tolerance allows.
    #[error("the timestamp is too old")]
    StaleTimestamp,
    /// The signed timestamp is further in the future than the tolerance allows.
    #[error("the timestamp is too far in the future")]
    FutureTimestamp,
    /// No signature entry matches the body under any of the secrets.
    #[error("no signature matches this body and secret")]
    NoMatchingSignature,
}

impl Secret {
    /// Parses `whsec_<base64>`; the prefix and base64 padding are optional, and
    /// surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = LENIENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret::from_parts(
            format!("{SECRET_PREFIX}{encoded}"),
            &key,
        ))
    }

    /// Makes a new secret from 32 random bytes: `whsec_` and 44 characters of base64.
    pub fn generate() -> Secret {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let mut text = String::with_capacity(SECRET_PREFIX.len() + 44);
        text.push_str(SECRET_PREFIX);
        STANDARD.encode_string(key, &mut text);
        Secret::from_parts(text, &key)
    }

    /// The `whsec_...` text, as stored and as shown to a partner once.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Secret, SecretError> {
        Secret::parse(text)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_<redacted>)")
    }
}

impl Signatures {
    /// The five signing headers as `(name, value)` text, in the order a delivery sends
    /// them: `preflixai-timestamp`, `preflixai-signature`, `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`.
    pub fn header_pairs(&self, id: &str) -> [(&'static str, String); 5] {
        let timestamp = self.timestamp.to_string();
        [
            (PREFLIXAI_TIMESTAMP, timestamp.clone()),
            (PREFLIXAI_SIGNATURE, self.preflixai_signature.clone()),
            (WEBHOOK_ID, id.to_owned()),
            (WEBHOOK_TIMESTAMP, timestamp),
            (WEBHOOK_SIGNATURE, self.webhook_signature.clone()),
        ]
    }

    /// The same five headers as [`Signatures::header_pairs`], typed for an HTTP request
    /// and without copying the signature text. Fails only when `id` cannot be a header
    /// value.
    pub fn into_headers(
        self,
        id: &str,
    ) -> Result<[(HeaderName, HeaderValue); 5], InvalidHeaderValue> {
        let id = HeaderValue::from_str(id)?;
        let timestamp = HeaderValue::from(self.timestamp);
        Ok([
            (
                HeaderName::from_static(PREFLIXAI_TIMESTAMP),
                timestamp.clone(),
            ),
            (
                HeaderName::from_static(PREFLIXAI_SIGNATURE),
                HeaderValue::try_from(self.preflixai_signature)?,
            ),
            (HeaderName::from_static(WEBHOOK_ID), id),
            (HeaderName::from_static(WEBHOOK_TIMESTAMP), timestamp),
            (
                HeaderName::from_static(WEBHOOK_SIGNATURE),
                HeaderValue::try_from(self.webhook_signature)?,
            ),
        ])
    }
}

impl Verifier {
    /// A verifier accepting a signature by any of `secrets`, with the default tolerance
    /// of five minutes either way.
    pub fn new(secrets: Vec<Secret>) -> Verifier {
        Verifier {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Sets how far, in either direction, a signed timestamp may be from `now`.
    /// Only whole seconds count.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Verifier {
        self.tolerance = tolerance;
        self
    }

    /// The tolerance in force.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Verifies `body` against the signature headers of a request received at `now`
    /// (unix seconds). `body` must be the raw bytes, before any JSON parsing.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let mut received = Received::default();
        for (name, value) in headers {
            received.add(name.as_str(), value.to_str().map_err(|_| NotText));
        }
        self.check(&received, body, now)
    }

    /// Like [`Verifier::verify`], for headers given as `(name, value)` text pairs, such as
    /// a command line's `-H` arguments. Names are case-insensitive and both names and
    /// values are trimmed.
    pub fn verify_pairs<'a, I>(
        &self,
        headers: I,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut received = Received::default();
        for (name, value) in headers {
            received.add(name.trim(), Ok(value.trim()));
        }
        self.check(&received, body, now)
    }

    /// Checks whichever header sets are present, preferring a success from either and
    /// otherwise reporting the failure that got furthest.
    fn check(
        &self,
        received: &Received<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let preflixai = if received.preflixai.is_present() {
            match self.check_set(HeaderSet::Preflixai, &received.preflixai, None, body, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => Some(error),
            }
        } else {
            None
        };
        let webhook = if received.webhook.is_present() || received.webhook_id.is_some() {
            let id = received.webhook_id;
            match self.check_set(
                HeaderSet::StandardWebhooks,
                &received.webhook,
                id,
                body,
                now,
            ) {
                Ok(verified) => return Ok(verified),
                Err(error) => Some(error),
            }
        } else {
            None
        };
        Err(match (preflixai, webhook) {
            (Some(first), Some(second)) if second.progress() > first.progress() => second,
            (Some(error), _) | (None, Some(error)) => error,
            (None, None) => VerifyError::MissingHeader(PREFLIXAI_SIGNATURE),
        })
    }

    /// Checks one header set: presence, readability, timestamp age, then the signatures.
    fn check_set(
        &self,
        set: HeaderSet,
        part: &Part<'_>,
        id: Option<Text<'_>>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let (timestamp_name, signature_name) = match set {
            HeaderSet::Preflixai => (PREFLIXAI_TIMESTAMP, PREFLIXAI_SIGNATURE),
            HeaderSet::StandardWebhooks => (WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE),
        };
        if part.signatures.is_empty() {
            return Err(VerifyError::MissingHeader(signature_name));
        }
        let timestamp_text = part
            .timestamp
            .ok_or(VerifyError::MissingHeader(timestamp_name))?;
        let id = match set {
            HeaderSet::Preflixai => None,
            HeaderSet::StandardWebhooks => Some(id.ok_or(VerifyError::MissingHeader(WEBHOOK_ID))?),
        };
        let timestamp_text = readable(timestamp_text, timestamp_name)?;
        let timestamp: i64 = timestamp_text.parse().map_err(|_| {
            VerifyError::MalformedHeader(timestamp_name, "not a whole number of unix seconds")
        })?;
        let id = id.map(|id| readable(id, WEBHOOK_ID)).transpose()?;
        self.check_age(timestamp, now)?;

        let expected: Vec<Tag> = self
            .secrets
            .iter()
            .map(|secret| match id {
                None => secret.preflixai_tag(timestamp_text.as_bytes(), body),
                Some(id) => secret.webhook_tag(id.as_bytes(), timestamp_text.as_bytes(), body),
            })
            .collect();
        // Counts decide the failure: a well-formed `v1` entry that did not match outweighs
        // a malformed one, which outweighs an empty header.
        let mut entries = 0;
        let mut compared = 0;
        let mut malformed = None;
        for value in &part.signatures {
            let Ok(value) = value else {
                malformed.get_or_insert(NOT_TEXT);
                continue;
            };
            for entry in split_entries(set, value) {
                entries += 1;
                let Some((version, encoded)) = entry.split_once(set.separator()) else {
                    malformed.get_or_insert(set.entry_shape());
                    continue;
                };
                if version != "v1" {
                    continue;
                }
                let Some(candidate) = decode_tag(set, encoded) else {
                    malformed.get_or_insert(set.tag_shape());
                    continue;
                };
                compared += 1;
                for (secret_index, tag) in expected.iter().enumerate() {
                    if bool::from(candidate.ct_eq(tag)) {
                        return Ok(Verified {
                            header_set: set,
                            timestamp,
                            secret_index,
                        });
                    }
                }
            }
        }
        if compared > 0 {
            Err(VerifyError::NoMatchingSignature)
        } else if let Some(why) = malformed {
            Err(VerifyError::MalformedHeader(signature_name, why))
        } else if entries == 0 {
            Err(VerifyError::MalformedHeader(
                signature_name,
                "no signature entries",
            ))
        } else {
            Err(VerifyError::NoMatchingSignature)
        }
    }

    /// Refuses a timestamp further than the tolerance from `now`, without overflow.
    fn check_age(&self, timestamp: i64, now: i64) -> Result<(), VerifyError> {
        let tolerance = i128::from(self.tolerance.as_secs());
        let age = i128::from(now) - i128::from(timestamp);
        if age > tolerance {
            Err(VerifyError::StaleTimestamp)
        } else if -age > tolerance {
            Err(VerifyError::FutureTimestamp)
        } else {
            Ok(())
        }
    }
}

impl HeaderSet {
    /// The name of this set's signature header, which also names the set.
    pub fn signature_header(self) -> &'static str {
        match self {
            HeaderSet::Preflixai => PREFLIXAI_SIGNATURE,
            HeaderSet::StandardWebhooks => WEBHOOK_SIGNATURE,
        }
    }

    /// What separates an entry's version from its signature.
    fn separator(self) -> char {
        match self {
            HeaderSet::Preflixai => '=',
            HeaderSet::StandardWebhooks => ',',
        }
    }

    /// Why an entry without a separator is malformed.
    fn entry_shape(self) -> &'static str {
        match self {
            HeaderSet::Preflixai => "an entry is not `<version>=<signature>`",
            HeaderSet::StandardWebhooks => "an entry is not `<version>,<signature>`",
        }
    }

    /// Why a `v1` entry's signature is malformed.
    fn tag_shape(self) -> &'static str {
        match self {
            HeaderSet::Preflixai => "a v1 signature is not 64 hex digits",
            HeaderSet::StandardWebhooks => "a v1 signature is not 32 bytes of base64",
        }
    }
}

impl fmt::Display for HeaderSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.signature_header())
    }
}

impl VerifyError {
    /// How far verification got before this failure, so that when both header sets fail
    /// the more telling failure is reported.
    fn progress(&self) -> u8 {
        match self {
            VerifyError::MissingHeader(_) => 0,
            VerifyError::MalformedHeader(..) => 1,
            VerifyError::StaleTimestamp | VerifyError::FutureTimestamp => 2,
            VerifyError::NoMatchingSignature => 3,
        }
    }
}

/// An HMAC-SHA256 output.
type Tag = [u8; 32];

/// Length of one `v1=<hex>` entry.
const PREFLIXAI_ENTRY_LEN: usize = 3 + 64;

/// Length of one `v1,<base64>` entry.
const WEBHOOK_ENTRY_LEN: usize = 3 + 44;

/// Why a header value that is not visible ASCII text is malformed.
const NOT_TEXT: &str = "not visible ASCII text";

/// Standard base64 that accepts missing or present padding and stray trailing bits, as
/// the Standard Webhooks libraries do.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A header value as received: text, or bytes that are not visible ASCII.
type Text<'a> = Result<&'a str, NotText>;

/// Marks a header value that is not visible ASCII.
#[derive(Debug, Clone, Copy)]
struct NotText;

/// The signing headers found on a request, before any checking.
#[derive(Default)]
struct Received<'a> {
    /// `preflixai-timestamp` and every `preflixai-signature` value.
    preflixai: Part<'a>,
    /// `webhook-timestamp` and every `webhook-signature` value.
    webhook: Part<'a>,
    /// `webhook-id`, which only the Standard Webhooks set signs.
    webhook_id: Option<Text<'a>>,
}

/// One header set's timestamp and signature values.
#[derive(Default)]
struct Part<'a> {
    /// The first timestamp header; later repeats are ignored.
    timestamp: Option<Text<'a>>,
    /// Every signature header value, since a proxy may split one header into several.
    signatures: Vec<Text<'a>>,
}

impl<'a> Received<'a> {
    /// Files one header under its set, ignoring headers that are not about signing.
    fn add(&mut self, name: &str, value: Text<'a>) {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is(PREFLIXAI_SIGNATURE) {
            self.preflixai.signatures.push(value);
        } else if is(PREFLIXAI_TIMESTAMP) {
            self.preflixai.timestamp.get_or_insert(value);
        } else if is(WEBHOOK_SIGNATURE) {
            self.webhook.signatures.push(value);
        } else if is(WEBHOOK_TIMESTAMP) {
            self.webhook.timestamp.get_or_insert(value);
        } else if is(WEBHOOK_ID) {
            self.webhook_id.get_or_insert(value);
        }
    }
}

impl Part<'_> {
    /// Whether any header of this set came at all.
    fn is_present(&self) -> bool {
        self.timestamp.is_some() || !self.signatures.is_empty()
    }
}

impl Secret {
    /// Builds a secret from its text and decoded key, keying the HMAC once.
    fn from_parts(text: String, key: &[u8]) -> Secret {
        let keyed = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Secret { text, keyed }
    }

    /// HMAC of `<timestamp>.<body>`, the Preflix AI signature.
    fn preflixai_tag(&self, timestamp: &[u8], body: &[u8]) -> Tag {
        let mut mac = self.keyed.clone();
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        finish(mac)
    }

    /// HMAC of `<id>.<timestamp>.<body>`, the Standard Webhooks signature.
    fn webhook_tag(&self, id: &[u8], timestamp: &[u8], body: &[u8]) -> Tag {
        let mut mac = self.keyed.clone();
        mac.update(id);
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        finish(mac)
    }
}

/// Finalizes an HMAC into a fixed-size tag.
fn finish(mac: Hmac<Sha256>) -> Tag {
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&mac.finalize().into_bytes());
    tag
}

/// The decimal text of an `i64`, formatted on the stack.
struct Decimal {
    /// Digits right-aligned, with a leading `-` for negatives; 20 bytes fit `i64::MIN`.
    buf: [u8; 20],
    /// Where the text starts in `buf`.
    start: usize,
}

impl Decimal {
    fn new(value: i64) -> Decimal {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        let mut rest = value.unsigned_abs();
        loop {
            start -= 1;
            buf[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            start -= 1;
            buf[start] = b'-';
        }
        Decimal { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Appends `bytes` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// Splits a signature header value into its non-empty entries.
fn split_entries(set: HeaderSet, value: &str) -> impl Iterator<Item = &str> {
    let separator = match set {
        HeaderSet::Preflixai => ',',
        HeaderSet::StandardWebhooks => ' ',
    };
    value
        .split(move |c: char| c == separator || (separator == ' ' && c.is_ascii_whitespace()))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// Decodes a `v1` signature: 64 hex digits for Preflix AI, base64 for Standard Webhooks.
fn decode_tag(set: HeaderSet, encoded: &str) -> Option<Tag> {
    let mut tag = [0u8; 32];
    match set {
        HeaderSet::Preflixai => {
            let digits = encoded.as_bytes();
            if digits.len() != 64 {
                return None;
            }
            for (byte, pair) in tag.iter_mut().zip(digits.chunks_exact(2)) {
                *byte = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
            }
        }
        HeaderSet::StandardWebhooks => {
            let mut buf = [0u8; 48];
            let len = LENIENT.decode_slice(encoded, &mut buf).ok()?;
            if len != tag.len() {
                return None;
            }
            tag.copy_from_slice(&buf[..len]);
        }
    }
    Some(tag)
}

/// The value of one hex digit, either case.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The text of a header value, or why it is malformed.
fn readable<'a>(value: Text<'a>, name: &'static str) -> Result<&'a str, VerifyError> {
    value.map_err(|_| VerifyError::MalformedHeader(name, NOT_TEXT))
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests;
