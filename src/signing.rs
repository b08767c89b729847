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
mod tests {
    use super::*;
    use serde::Deserialize;

    /// The known-answer vectors of spec/API.md section 5.
    #[derive(Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
        rotation: Rotation,
    }

    #[derive(Deserialize)]
    struct Case {
        secret: String,
        id: String,
        timestamp: i64,
        body: String,
        #[serde(rename = "preflixai-signature")]
        preflixai_signature: String,
        #[serde(rename = "webhook-signature")]
        webhook_signature: String,
    }

    #[derive(Deserialize)]
    struct Rotation {
        secrets_newest_first: Vec<String>,
        id: String,
        timestamp: i64,
        body: String,
        #[serde(rename = "preflixai-signature")]
        preflixai_signature: String,
        #[serde(rename = "webhook-signature")]
        webhook_signature: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../tests/fixtures/signatures.json"))
            .expect("the fixture parses")
    }

    fn secret(text: &str) -> Secret {
        Secret::parse(text).expect("a valid secret")
    }

    /// The first vector, as a ready-made delivery to tamper with.
    struct Delivery {
        secret: Secret,
        id: String,
        timestamp: i64,
        body: Vec<u8>,
        signatures: Signatures,
    }

    fn delivery() -> Delivery {
        let case = vectors().cases.remove(0);
        let secret = secret(&case.secret);
        let signatures = sign(
            std::slice::from_ref(&secret),
            &case.id,
            case.timestamp,
            case.body.as_bytes(),
        );
        Delivery {
            secret,
            id: case.id,
            timestamp: case.timestamp,
            body: case.body.into_bytes(),
            signatures,
        }
    }

    impl Delivery {
        fn verifier(&self) -> Verifier {
            Verifier::new(vec![self.secret.clone()])
        }

        /// The Preflix AI header set alone.
        fn preflixai(&self) -> Vec<(&'static str, String)> {
            self.signatures.header_pairs(&self.id)[..2].to_vec()
        }

        /// The Standard Webhooks header set alone.
        fn webhook(&self) -> Vec<(&'static str, String)> {
            self.signatures.header_pairs(&self.id)[2..].to_vec()
        }
    }

    fn verify_pairs(
        verifier: &Verifier,
        pairs: &[(&str, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        verifier.verify_pairs(pairs.iter().map(|(n, v)| (*n, v.as_str())), body, now)
    }

    fn header_map(pairs: &[(&str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// Replaces one header's value in a list of pairs.
    fn with(
        pairs: &[(&'static str, String)],
        name: &str,
        value: &str,
    ) -> Vec<(&'static str, String)> {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    *n,
                    if *n == name {
                        value.to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    }

    /// Drops one header from a list of pairs.
    fn without(pairs: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
        pairs.iter().filter(|(n, _)| *n != name).cloned().collect()
    }

    #[test]
    fn every_vector_signs_to_the_known_answers() {
        for case in vectors().cases {
            let signatures = sign(
                &[secret(&case.secret)],
                &case.id,
                case.timestamp,
                case.body.as_bytes(),
            );
            assert_eq!(signatures.timestamp, case.timestamp);
            assert_eq!(
                signatures.preflixai_signature, case.preflixai_signature,
                "{}",
                case.id
            );
            assert_eq!(
                signatures.webhook_signature, case.webhook_signature,
                "{}",
                case.id
            );
        }
    }

    #[test]
    fn every_vector_verifies_with_the_preflixai_set_alone() {
        for case in vectors().cases {
            let verifier = Verifier::new(vec![secret(&case.secret)]);
            let pairs = [
                (PREFLIXAI_TIMESTAMP, case.timestamp.to_string()),
                (PREFLIXAI_SIGNATURE, case.preflixai_signature.clone()),
            ];
            let expected = Ok(Verified {
                header_set: HeaderSet::Preflixai,
                timestamp: case.timestamp,
                secret_index: 0,
            });
            let body = case.body.as_bytes();
            assert_eq!(
                verify_pairs(&verifier, &pairs, body, case.timestamp),
                expected
            );
            assert_eq!(
                verifier.verify(&header_map(&pairs), body, case.timestamp),
                expected
            );
        }
    }

    #[test]
    fn every_vector_verifies_with_the_standard_webhooks_set_alone() {
        for case in vectors().cases {
            let verifier = Verifier::new(vec![secret(&case.secret)]);
            let pairs = [
                (WEBHOOK_ID, case.id.clone()),
                (WEBHOOK_TIMESTAMP, case.timestamp.to_string()),
                (WEBHOOK_SIGNATURE, case.webhook_signature.clone()),
            ];
            let expected = Ok(Verified {
                header_set: HeaderSet::StandardWebhooks,
                timestamp: case.timestamp,
                secret_index: 0,
            });
            let body = case.body.as_bytes();
            assert_eq!(
                verify_pairs(&verifier, &pairs, body, case.timestamp),
                expected
            );
            assert_eq!(
                verifier.verify(&header_map(&pairs), body, case.timestamp),
                expected
            );
        }
    }

    #[test]
    fn rotation_signs_under_both_secrets_and_either_alone_verifies() {
        let rotation = vectors().rotation;
        let secrets: Vec<Secret> = rotation
            .secrets_newest_first
            .iter()
            .map(|s| secret(s))
            .collect();
        let body = rotation.body.as_bytes();
        let signatures = sign(&secrets, &rotation.id, rotation.timestamp, body);
        assert_eq!(signatures.preflixai_signature, rotation.preflixai_signature);
        assert_eq!(signatures.webhook_signature, rotation.webhook_signature);

        let pairs = signatures.header_pairs(&rotation.id);
        for (index, secret) in secrets.iter().enumerate() {
            let verifier = Verifier::new(vec![secret.clone()]);
            for (set, part) in [
                (HeaderSet::Preflixai, &pairs[..2]),
                (HeaderSet::StandardWebhooks, &pairs[2..]),
            ] {
                let verified = verify_pairs(&verifier, part, body, rotation.timestamp)
                    .unwrap_or_else(|e| panic!("secret {index}, {set}: {e}"));
                assert_eq!(verified.header_set, set);
                assert_eq!(verified.secret_index, 0);
            }
        }
        let both = Verifier::new(secrets);
        let verified = verify_pairs(&both, &pairs, body, rotation.timestamp).unwrap();
        assert_eq!(verified.header_set, HeaderSet::Preflixai);
        assert_eq!(verified.secret_index, 0);
    }

    #[test]
    fn a_verifier_reports_which_secret_matched() {
        let d = delivery();
        let verifier = Verifier::new(vec![Secret::generate(), d.secret.clone()]);
        let verified = verify_pairs(&verifier, &d.webhook(), &d.body, d.timestamp).unwrap();
        assert_eq!(verified.secret_index, 1);
    }

    #[test]
    fn a_tampered_body_matches_no_signature() {
        let d = delivery();
        let mut body = d.body.clone();
        body[10] ^= 1;
        for part in [d.preflixai(), d.webhook()] {
            assert_eq!(
                verify_pairs(&d.verifier(), &part, &body, d.timestamp),
                Err(VerifyError::NoMatchingSignature)
            );
        }
        let mut longer = d.body.clone();
        longer.push(b'\n');
        assert_eq!(
            d.verifier()
                .verify(&header_map(&d.preflixai()), &longer, d.timestamp),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_tampered_timestamp_matches_no_signature() {
        let d = delivery();
        let moved = (d.timestamp + 1).to_string();
        let preflixai = with(&d.preflixai(), PREFLIXAI_TIMESTAMP, &moved);
        let webhook = with(&d.webhook(), WEBHOOK_TIMESTAMP, &moved);
        for part in [preflixai, webhook] {
            assert_eq!(
                verify_pairs(&d.verifier(), &part, &d.body, d.timestamp),
                Err(VerifyError::NoMatchingSignature)
            );
        }
    }

    #[test]
    fn a_tampered_webhook_id_matches_no_signature() {
        let d = delivery();
        let webhook = with(&d.webhook(), WEBHOOK_ID, "evt_other");
        assert_eq!(
            verify_pairs(&d.verifier(), &webhook, &d.body, d.timestamp),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_wrong_secret_matches_no_signature() {
        let d = delivery();
        let verifier = Verifier::new(vec![Secret::generate()]);
        for part in [d.preflixai(), d.webhook()] {
            assert_eq!(
                verify_pairs(&verifier, &part, &d.body, d.timestamp),
                Err(VerifyError::NoMatchingSignature)
            );
        }
        assert_eq!(
            verify_pairs(
                &Verifier::new(Vec::new()),
                &d.preflixai(),
                &d.body,
                d.timestamp
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        let d = delivery();
        let verifier = d.verifier();
        for part in [d.preflixai(), d.webhook()] {
            let at = |now| verify_pairs(&verifier, &part, &d.body, now);
            assert!(at(d.timestamp + 300).is_ok());
            assert!(at(d.timestamp - 300).is_ok());
            assert_eq!(at(d.timestamp + 301), Err(VerifyError::StaleTimestamp));
            assert_eq!(at(d.timestamp - 301), Err(VerifyError::FutureTimestamp));
        }
        let strict = d.verifier().with_tolerance(Duration::from_secs(10));
        assert_eq!(strict.tolerance(), Duration::from_secs(10));
        let at = |now| verify_pairs(&strict, &d.preflixai(), &d.body, now);
        assert!(at(d.timestamp + 10).is_ok());
        assert_eq!(at(d.timestamp + 11), Err(VerifyError::StaleTimestamp));
        assert_eq!(at(d.timestamp - 11), Err(VerifyError::FutureTimestamp));
    }

    #[test]
    fn age_is_checked_before_the_signature() {
        let d = delivery();
        let mut body = d.body.clone();
        body.push(b' ');
        assert_eq!(
            verify_pairs(&d.verifier(), &d.preflixai(), &body, d.timestamp + 3600),
            Err(VerifyError::StaleTimestamp)
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let d = delivery();
        let signatures = sign(std::slice::from_ref(&d.secret), &d.id, i64::MIN, &d.body);
        let pairs = signatures.header_pairs(&d.id);
        assert_eq!(pairs[0].1, i64::MIN.to_string());
        let verifier = d.verifier().with_tolerance(Duration::from_secs(u64::MAX));
        assert!(verify_pairs(&verifier, &pairs, &d.body, i64::MAX).is_ok());
        assert_eq!(
            verify_pairs(&d.verifier(), &pairs, &d.body, i64::MAX),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify_pairs(
                &d.verifier(),
                &with(&pairs[..2], PREFLIXAI_TIMESTAMP, &i64::MAX.to_string()),
                &d.body,
                i64::MIN
            ),
            Err(VerifyError::FutureTimestamp)
        );
    }

    #[test]
    fn malformed_timestamps_are_named() {
        let d = delivery();
        for bad in ["", "soon", "1768503852.5", "99999999999999999999"] {
            assert_eq!(
                verify_pairs(
                    &d.verifier(),
                    &with(&d.preflixai(), PREFLIXAI_TIMESTAMP, bad),
                    &d.body,
                    d.timestamp
                ),
                Err(VerifyError::MalformedHeader(
                    PREFLIXAI_TIMESTAMP,
                    "not a whole number of unix seconds"
                )),
                "{bad:?}"
            );
            assert!(matches!(
                verify_pairs(
                    &d.verifier(),
                    &with(&d.webhook(), WEBHOOK_TIMESTAMP, bad),
                    &d.body,
                    d.timestamp
                ),
                Err(VerifyError::MalformedHeader(WEBHOOK_TIMESTAMP, _))
            ));
        }
    }

    #[test]
    fn malformed_signature_headers_are_named() {
        let d = delivery();
        let cases: [(&str, &str, &str); 8] = [
            (PREFLIXAI_SIGNATURE, "", "no signature entries"),
            (PREFLIXAI_SIGNATURE, " , ", "no signature entries"),
            (
                PREFLIXAI_SIGNATURE,
                "v1=abc",
                "a v1 signature is not 64 hex digits",
            ),
            (
                PREFLIXAI_SIGNATURE,
                &format!("v1={}", "zz".repeat(32)),
                "a v1 signature is not 64 hex digits",
            ),
            (
                PREFLIXAI_SIGNATURE,
                "deadbeef",
                "an entry is not `<version>=<signature>`",
            ),
            (WEBHOOK_SIGNATURE, "", "no signature entries"),
            (
                WEBHOOK_SIGNATURE,
                "v1,not*base64",
                "a v1 signature is not 32 bytes of base64",
            ),
            (
                WEBHOOK_SIGNATURE,
                "v1=abc",
                "an entry is not `<version>,<signature>`",
            ),
        ];
        for (name, value, why) in cases {
            let part = if name == PREFLIXAI_SIGNATURE {
                d.preflixai()
            } else {
                d.webhook()
            };
            assert_eq!(
                verify_pairs(
                    &d.verifier(),
                    &with(&part, name, value),
                    &d.body,
                    d.timestamp
                ),
                Err(VerifyError::MalformedHeader(
                    if name == PREFLIXAI_SIGNATURE {
                        PREFLIXAI_SIGNATURE
                    } else {
                        WEBHOOK_SIGNATURE
                    },
                    why
                )),
                "{name}: {value:?}"
            );
        }
        let short = STANDARD.encode([7u8; 16]);
        assert_eq!(
            verify_pairs(
                &d.verifier(),
                &with(&d.webhook(), WEBHOOK_SIGNATURE, &format!("v1,{short}")),
                &d.body,
                d.timestamp
            ),
            Err(VerifyError::MalformedHeader(
                WEBHOOK_SIGNATURE,
                "a v1 signature is not 32 bytes of base64"
            ))
        );
    }

    #[test]
    fn header_values_that_are_not_text_are_malformed() {
        let d = delivery();
        let mut headers = header_map(&d.preflixai());
        headers.insert(
            PREFLIXAI_TIMESTAMP,
            HeaderValue::from_bytes(b"17685\xff03852").unwrap(),
        );
        assert_eq!(
            d.verifier().verify(&headers, &d.body, d.timestamp),
            Err(VerifyError::MalformedHeader(PREFLIXAI_TIMESTAMP, NOT_TEXT))
        );
        let mut headers = header_map(&d.webhook());
        headers.insert(
            WEBHOOK_SIGNATURE,
            HeaderValue::from_bytes(b"v1,\xe9").unwrap(),
        );
        assert_eq!(
            d.verifier().verify(&headers, &d.body, d.timestamp),
            Err(VerifyError::MalformedHeader(WEBHOOK_SIGNATURE, NOT_TEXT))
        );
    }

    #[test]
    fn a_well_formed_mismatch_outweighs_a_malformed_entry() {
        let d = delivery();
        let value = format!("v1=abc,v1={}", "0".repeat(64));
        assert_eq!(
            verify_pairs(
                &d.verifier(),
                &with(&d.preflixai(), PREFLIXAI_SIGNATURE, &value),
                &d.body,
                d.timestamp
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_malformed_entry_beside_a_matching_one_is_tolerated() {
        let d = delivery();
        let value = format!("v1=abc,garbage,{}", d.signatures.preflixai_signature);
        assert!(verify_pairs(
            &d.verifier(),
            &with(&d.preflixai(), PREFLIXAI_SIGNATURE, &value),
            &d.body,
            d.timestamp
        )
        .is_ok());
    }

    #[test]
    fn missing_headers_are_named() {
        let d = delivery();
        let verifier = d.verifier();
        let check = |pairs: Vec<(&'static str, String)>| {
            verify_pairs(&verifier, &pairs, &d.body, d.timestamp)
        };
        assert_eq!(
            check(Vec::new()),
            Err(VerifyError::MissingHeader(PREFLIXAI_SIGNATURE))
        );
        assert_eq!(
            d.verifier().verify(&HeaderMap::new(), &d.body, d.timestamp),
            Err(VerifyError::MissingHeader(PREFLIXAI_SIGNATURE))
        );
        assert_eq!(
            check(without(&d.preflixai(), PREFLIXAI_TIMESTAMP)),
            Err(VerifyError::MissingHeader(PREFLIXAI_TIMESTAMP))
        );
        assert_eq!(
            check(without(&d.preflixai(), PREFLIXAI_SIGNATURE)),
            Err(VerifyError::MissingHeader(PREFLIXAI_SIGNATURE))
        );
        assert_eq!(
            check(without(&d.webhook(), WEBHOOK_ID)),
            Err(VerifyError::MissingHeader(WEBHOOK_ID))
        );
        assert_eq!(
            check(without(&d.webhook(), WEBHOOK_TIMESTAMP)),
            Err(VerifyError::MissingHeader(WEBHOOK_TIMESTAMP))
        );
        assert_eq!(
            check(without(&d.webhook(), WEBHOOK_SIGNATURE)),
            Err(VerifyError::MissingHeader(WEBHOOK_SIGNATURE))
        );
        // Unrelated headers do not count as either set.
        assert_eq!(
            check(vec![("content-type", "application/json".to_owned())]),
            Err(VerifyError::MissingHeader(PREFLIXAI_SIGNATURE))
        );
    }

    #[test]
    fn unknown_versions_and_extra_entries_are_skipped() {
        let d = delivery();
        let preflixai = format!("v2=abc, v0=,{}", d.signatures.preflixai_signature);
        let webhook = format!(
            "v1a,abc v2,xyz  {}\tv1,{}",
            d.signatures.webhook_signature,
            STANDARD.encode([0u8; 32])
        );
        let pairs = with(&d.preflixai(), PREFLIXAI_SIGNATURE, &preflixai);
        assert!(verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp).is_ok());
        let pairs = with(&d.webhook(), WEBHOOK_SIGNATURE, &webhook);
        assert!(verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp).is_ok());
        let only_unknown = with(&d.preflixai(), PREFLIXAI_SIGNATURE, "v2=abc");
        assert_eq!(
            verify_pairs(&d.verifier(), &only_unknown, &d.body, d.timestamp),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn padding_and_hex_case_are_not_significant() {
        let d = delivery();
        let upper = d
            .signatures
            .preflixai_signature
            .replace("v1=", "")
            .to_uppercase();
        let pairs = with(&d.preflixai(), PREFLIXAI_SIGNATURE, &format!("v1={upper}"));
        assert!(verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp).is_ok());
        let unpadded = d.signatures.webhook_signature.trim_end_matches('=');
        let pairs = with(&d.webhook(), WEBHOOK_SIGNATURE, unpadded);
        assert!(verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp).is_ok());
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let d = delivery();
        let pairs = [
            ("Preflixai-Timestamp", format!(" {} ", d.timestamp)),
            (
                "PREFLIXAI-SIGNATURE",
                d.signatures.preflixai_signature.clone(),
            ),
        ];
        assert!(verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp).is_ok());
    }

    #[test]
    fn either_set_suffices_when_both_are_present() {
        let d = delivery();
        let all: Vec<_> = d.signatures.header_pairs(&d.id).to_vec();
        let broken_preflixai = with(&all, PREFLIXAI_SIGNATURE, &format!("v1={}", "0".repeat(64)));
        let verified =
            verify_pairs(&d.verifier(), &broken_preflixai, &d.body, d.timestamp).unwrap();
        assert_eq!(verified.header_set, HeaderSet::StandardWebhooks);
        let broken_webhook = without(&all, WEBHOOK_ID);
        let verified = d
            .verifier()
            .verify(&header_map(&broken_webhook), &d.body, d.timestamp)
            .unwrap();
        assert_eq!(verified.header_set, HeaderSet::Preflixai);
    }

    #[test]
    fn when_both_sets_fail_the_furthest_failure_is_reported() {
        let d = delivery();
        let all: Vec<_> = d.signatures.header_pairs(&d.id).to_vec();
        let pairs = with(&without(&all, PREFLIXAI_TIMESTAMP), WEBHOOK_ID, "evt_other");
        assert_eq!(
            verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp),
            Err(VerifyError::NoMatchingSignature)
        );
        let pairs = without(&with(&all, PREFLIXAI_SIGNATURE, "v1=0"), WEBHOOK_ID);
        assert_eq!(
            verify_pairs(&d.verifier(), &pairs, &d.body, d.timestamp),
            Err(VerifyError::MalformedHeader(
                PREFLIXAI_SIGNATURE,
                "a v1 signature is not 64 hex digits"
            ))
        );
    }

    #[test]
    fn signing_headers_come_in_order_as_text_and_typed() {
        let d = delivery();
        let names = [
            PREFLIXAI_TIMESTAMP,
            PREFLIXAI_SIGNATURE,
            WEBHOOK_ID,
            WEBHOOK_TIMESTAMP,
            WEBHOOK_SIGNATURE,
        ];
        let pairs = d.signatures.header_pairs(&d.id);
        assert_eq!(
            pairs.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            names
        );
        assert_eq!(pairs[0].1, "1768503852");
        assert_eq!(pairs[2].1, "evt_7b2");
        assert_eq!(pairs[3].1, "1768503852");
        let typed = d.signatures.clone().into_headers(&d.id).unwrap();
        for ((name, value), (text_name, text)) in typed.iter().zip(&pairs) {
            assert_eq!(name.as_str(), *text_name);
            assert_eq!(value.to_str().unwrap(), text);
        }
        assert!(d.signatures.clone().into_headers("evt\n1").is_err());
        let map: HeaderMap = typed.into_iter().collect();
        assert!(d.verifier().verify(&map, &d.body, d.timestamp).is_ok());
    }

    #[test]
    fn negative_and_zero_timestamps_format_like_display() {
        for value in [0, 7, -1, 1768503852, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::new(value).as_bytes(), value.to_string().as_bytes());
        }
    }

    #[test]
    fn secrets_parse_leniently_like_standard_webhooks() {
        let canonical = secret("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        let body = b"{}";
        let reference = sign(&[canonical], "evt_1", 1, body);
        for text in [
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            "  whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        ] {
            let parsed = secret(text);
            assert!(parsed.as_str().starts_with(SECRET_PREFIX));
            assert_eq!(sign(&[parsed], "evt_1", 1, body), reference, "{text:?}");
        }
        assert_eq!(
            secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").to_string(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
        assert_eq!(
            secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").as_str(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("  ").unwrap_err(), SecretError::Empty);
        for bad in ["whsec_not base64!", "whsec_Q", "whsec_-_-_"] {
            let error = bad.parse::<Secret>().unwrap_err();
            assert_eq!(error, SecretError::NotBase64, "{bad:?}");
            assert!(!error.to_string().contains(&bad[6..]));
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let secret = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let verifier = Verifier::new(vec![secret.clone()]);
        for shown in [format!("{secret:?}"), format!("{verifier:?}")] {
            assert!(!shown.contains("MfKQ9r8G"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn generated_secrets_hold_32_random_bytes() {
        let first = Secret::generate();
        let second = Secret::generate();
        assert_ne!(first.as_str(), second.as_str());
        let encoded = first.as_str().strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(encoded.len(), 44);
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
        let reparsed = secret(first.as_str());
        assert_eq!(
            sign(&[first], "evt_1", 1, b"x"),
            sign(&[reparsed], "evt_1", 1, b"x")
        );
    }

    #[test]
    fn signing_with_no_secrets_gives_empty_values() {
        let signatures = sign(&[], "evt_1", 1, b"x");
        assert!(signatures.preflixai_signature.is_empty());
        assert!(signatures.webhook_signature.is_empty());
    }

    /// The fixture's own header values for one vector: the Preflix AI set and the
    /// Standard Webhooks set, each alone.
    fn fixture_sets(case: &Case) -> [(HeaderSet, Vec<(&'static str, String)>); 2] {
        [
            (
                HeaderSet::Preflixai,
                vec![
                    (PREFLIXAI_TIMESTAMP, case.timestamp.to_string()),
                    (PREFLIXAI_SIGNATURE, case.preflixai_signature.clone()),
                ],
            ),
            (
                HeaderSet::StandardWebhooks,
                vec![
                    (WEBHOOK_ID, case.id.clone()),
                    (WEBHOOK_TIMESTAMP, case.timestamp.to_string()),
                    (WEBHOOK_SIGNATURE, case.webhook_signature.clone()),
                ],
            ),
        ]
    }

    #[test]
    fn every_vector_is_rejected_with_the_right_reason_in_either_set() {
        for case in vectors().cases {
            let verifier = Verifier::new(vec![secret(&case.secret)]);
            let body = case.body.as_bytes();
            let ts = case.timestamp;
            let mut tampered_body = body.to_vec();
            let last = tampered_body.len() - 2;
            tampered_body[last] ^= 0x01;
            for (set, pairs) in fixture_sets(&case) {
                let what = format!("{} {set}", case.id);
                let check = |pairs: &[(&'static str, String)], body: &[u8], now: i64| {
                    let by_pairs = verify_pairs(&verifier, pairs, body, now);
                    let by_map = verifier.verify(&header_map(pairs), body, now);
                    assert_eq!(by_pairs, by_map, "{what}: both entry points agree");
                    by_pairs
                };
                let (timestamp_name, signature_name) = match set {
                    HeaderSet::Preflixai => (PREFLIXAI_TIMESTAMP, PREFLIXAI_SIGNATURE),
                    HeaderSet::StandardWebhooks => (WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE),
                };
                assert!(check(&pairs, body, ts).is_ok(), "{what}: genuine");
                assert_eq!(
                    check(&pairs, &tampered_body, ts),
                    Err(VerifyError::NoMatchingSignature),
                    "{what}: tampered body"
                );
                let moved = with(&pairs, timestamp_name, &(ts - 1).to_string());
                assert_eq!(
                    check(&moved, body, ts),
                    Err(VerifyError::NoMatchingSignature),
                    "{what}: tampered timestamp"
                );
                assert_eq!(
                    verify_pairs(&Verifier::new(vec![Secret::generate()]), &pairs, body, ts),
                    Err(VerifyError::NoMatchingSignature),
                    "{what}: wrong secret"
                );
                assert_eq!(
                    check(&pairs, body, ts + 301),
                    Err(VerifyError::StaleTimestamp),
                    "{what}: stale"
                );
                assert_eq!(
                    check(&pairs, body, ts - 301),
                    Err(VerifyError::FutureTimestamp),
                    "{what}: future"
                );
                assert!(
                    matches!(
                        check(&with(&pairs, timestamp_name, "yesterday"), body, ts),
                        Err(VerifyError::MalformedHeader(name, _)) if name == timestamp_name
                    ),
                    "{what}: malformed timestamp"
                );
                assert!(
                    matches!(
                        check(&with(&pairs, signature_name, "v1"), body, ts),
                        Err(VerifyError::MalformedHeader(name, _)) if name == signature_name
                    ),
                    "{what}: malformed signature"
                );
                assert_eq!(
                    check(&without(&pairs, signature_name), body, ts),
                    Err(VerifyError::MissingHeader(signature_name)),
                    "{what}: missing signature"
                );
            }
        }
    }

    #[test]
    fn the_rotation_vector_headers_verify_under_each_secret_and_no_other() {
        let rotation = vectors().rotation;
        let [newest, oldest] = [0, 1].map(|i| secret(&rotation.secrets_newest_first[i]));
        let body = rotation.body.as_bytes();
        let ts = rotation.timestamp;
        let sets = [
            (
                HeaderSet::Preflixai,
                vec![
                    (PREFLIXAI_TIMESTAMP, ts.to_string()),
                    (PREFLIXAI_SIGNATURE, rotation.preflixai_signature.clone()),
                ],
            ),
            (
                HeaderSet::StandardWebhooks,
                vec![
                    (WEBHOOK_ID, rotation.id.clone()),
                    (WEBHOOK_TIMESTAMP, ts.to_string()),
                    (WEBHOOK_SIGNATURE, rotation.webhook_signature.clone()),
                ],
            ),
        ];
        for (set, pairs) in &sets {
            // A receiver that knows only one of the two secrets, or both in either order.
            for (secrets, index) in [
                (vec![newest.clone()], 0),
                (vec![oldest.clone()], 0),
                (vec![newest.clone(), oldest.clone()], 0),
                // The header lists the newest secret's entry first.
                (vec![oldest.clone(), newest.clone()], 1),
                (vec![Secret::generate(), oldest.clone()], 1),
            ] {
                let verified = verify_pairs(&Verifier::new(secrets), pairs, body, ts)
                    .unwrap_or_else(|e| panic!("{set}: {e}"));
                assert_eq!(verified.header_set, *set);
                assert_eq!(verified.secret_index, index, "{set}");
            }
            let both = Verifier::new(vec![newest.clone(), oldest.clone()]);
            assert_eq!(
                verify_pairs(&Verifier::new(vec![Secret::generate()]), pairs, body, ts),
                Err(VerifyError::NoMatchingSignature),
                "{set}: an unrelated secret"
            );
            assert_eq!(
                verify_pairs(&both, pairs, &body[1..], ts),
                Err(VerifyError::NoMatchingSignature),
                "{set}: a tampered body"
            );
            assert_eq!(
                verify_pairs(&both, pairs, body, ts + 301),
                Err(VerifyError::StaleTimestamp),
                "{set}: stale"
            );
        }
    }
}
