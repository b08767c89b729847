//! How records and keys become bytes: a version byte plus bincode for values, big-endian numbers for keys.

use crate::model::{
    DeadLetter, Delivery, Endpoint, EndpointHealth, EndpointSecret, Event, EventIdRecord,
};
use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// No stored record is larger than this (bodies are at most 64 MiB); decoding refuses anything that claims more.
pub const MAX_RECORD_BYTES: u64 = 128 * 1024 * 1024;

/// A value stored in sled: encoded as one version byte followed by bincode.
///
/// When a record's shape changes, bump `VERSION`, keep the old shape as a private struct and
/// convert it in `decode_older`, so a newer daemon reads an older daemon's data.
pub trait Record: Serialize + DeserializeOwned {
    const VERSION: u8;
    const NAME: &'static str;

    /// Decodes a record written with an older `version`; `None` when that version is unknown.
    fn decode_older(_version: u8, _rest: &[u8]) -> Option<Result<Self, StoreError>> {
        None
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(Self::VERSION);
        options()
            .serialize_into(&mut out, self)
            .expect("serializing into a Vec does not fail for these plain types");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&v, rest)) if v == Self::VERSION => deserialize(rest),
            Some((&v, rest)) => Self::decode_older(v, rest).unwrap_or_else(|| {
                Err(StoreError::Corrupt(format!(
                    "{} record has version {v}; this daemon reads version {}",
                    Self::NAME,
                    Self::VERSION
                )))
            }),
            None => Err(StoreError::Corrupt(format!(
                "{} record is empty",
                Self::NAME
            ))),
        }
    }
}

fn deserialize<T: DeserializeOwned + Record>(bytes: &[u8]) -> Result<T, StoreError> {
    deserialize_as(T::NAME, bytes)
}

fn deserialize_as<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, StoreError> {
    options()
        .deserialize(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{name} record: {e}")))
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(MAX_RECORD_BYTES)
}

impl Record for Event {
    /// 2 added `initial_deliveries`.
    const VERSION: u8 = 2;
    const NAME: &'static str = "event";

    fn decode_older(version: u8, rest: &[u8]) -> Option<Result<Self, StoreError>> {
        (version == 1).then(|| deserialize_as::<EventV1>("event", rest).map(EventV1::upgrade))
    }
}

/// The first fields of a stored event, which every event version begins with: who it is for.
/// Decoded without the rest (the payload above all) where only that is needed.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct EventHead {
    pub seq: u64,
    pub id: String,
    pub partner_id: String,
    pub environment: crate::model::Environment,
}

/// Reads the [`EventHead`] of a stored event (version 1 or 2).
pub fn decode_event_head(bytes: &[u8]) -> Result<EventHead, StoreError> {
    match bytes.split_first() {
        Some((1 | 2, rest)) => options()
            .allow_trailing_bytes()
            .deserialize(rest)
            .map_err(|e| StoreError::Corrupt(format!("event record: {e}"))),
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "event record has version {v}; this daemon reads version {}",
            Event::VERSION
        ))),
        None => Err(StoreError::Corrupt("event record is empty".into())),
    }
}

/// An event as version 1 stored it: every delivery of such an event has a record of its own.
#[derive(serde::Deserialize)]
struct EventV1 {
    seq: u64,
    id: String,
    partner_id: String,
    environment: crate::model::Environment,
    event_type: String,
    created_at: String,
    received_at_ms: u64,
    payload: Vec<u8>,
    content_hash: [u8; 32],
}

impl EventV1 {
    fn upgrade(self) -> Event {
        Event {
            seq: self.seq,
            id: self.id,
            partner_id: self.partner_id,
            environment: self.environment,
            event_type: self.event_type,
            created_at: self.created_at,
            received_at_ms: self.received_at_ms,
            payload: self.payload,
            content_hash: self.content_hash,
            initial_deliveries: Vec::new(),
        }
    }
}
impl Record for EventIdRecord {
    const VERSION: u8 = 1;
    const NAME: &'static str = "event id";
}
/// An endpoint as stored: its fields (all but its secrets), then its secrets, each sealed with the
/// master key or in the clear (see `sealing`). Version 1 had the secrets in the clear in the same
/// place, so its bytes read as an [`EndpointV1`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EndpointRecord {
    /// The endpoint, with `secrets` empty.
    pub endpoint: Endpoint,
    pub secrets: Vec<StoredSecret>,
}

/// One of an endpoint's secrets as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredSecret {
    pub value: SecretAtRest,
    pub expires_at_ms: Option<u64>,
}

/// A secret in the clear, or sealed: XChaCha20-Poly1305 with a random nonce.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SecretAtRest {
    Clear(String),
    Sealed {
        nonce: [u8; 24],
        ciphertext: Vec<u8>,
    },
}

impl std::fmt::Debug for SecretAtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretAtRest::Clear(_) => f.write_str("Clear(<redacted>)"),
            SecretAtRest::Sealed { ciphertext, .. } => {
                write!(f, "Sealed({} bytes)", ciphertext.len())
            }
        }
    }
}

impl Record for EndpointRecord {
    /// 2 may seal the secrets.
    const VERSION: u8 = 2;
    const NAME: &'static str = "endpoint";

    fn decode_older(version: u8, rest: &[u8]) -> Option<Result<Self, StoreError>> {
        (version == 1)
            .then(|| deserialize_as::<EndpointV1>("endpoint", rest).map(EndpointV1::upgrade))
    }
}

/// An endpoint as version 1 stored it: the same fields, its secrets in the clear.
#[derive(serde::Deserialize)]
struct EndpointV1 {
    endpoint: Endpoint,
    secrets: Vec<EndpointSecret>,
}

impl EndpointV1 {
    fn upgrade(self) -> EndpointRecord {
        EndpointRecord {
            endpoint: self.endpoint,
            secrets: self
                .secrets
                .into_iter()
                .map(|s| StoredSecret {
                    value: SecretAtRest::Clear(s.secret),
                    expires_at_ms: s.expires_at_ms,
                })
                .collect(),
        }
    }
}
impl Record for EndpointHealth {
    /// 2 added `last_error`.
    const VERSION: u8 = 2;
    const NAME: &'static str = "endpoint health";

    fn decode_older(version: u8, rest: &[u8]) -> Option<Result<Self, StoreError>> {
        (version == 1).then(|| {
            deserialize_as::<EndpointHealthV1>("endpoint health", rest).map(|h| EndpointHealth {
                consecutive_failures: h.consecutive_failures,
                last_status_code: h.last_status_code,
                last_success_at_ms: h.last_success_at_ms,
                last_failure_at_ms: h.last_failure_at_ms,
                failing_since_ms: h.failing_since_ms,
                last_error: None,
            })
        })
    }
}

/// An endpoint's health as version 1 stored it, without the last error.
#[derive(serde::Deserialize)]
struct EndpointHealthV1 {
    consecutive_failures: u32,
    last_status_code: Option<u16>,
    last_success_at_ms: Option<u64>,
    last_failure_at_ms: Option<u64>,
    failing_since_ms: Option<u64>,
}
impl Record for Delivery {
    const VERSION: u8 = 1;
    const NAME: &'static str = "delivery";
}
impl Record for DeadLetter {
    const VERSION: u8 = 1;
    const NAME: &'static str = "dead letter";
}
impl Record for super::Counters {
    const VERSION: u8 = 1;
    const NAME: &'static str = "counters";
}

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let len = bytes.len().min(8);
    buf[..len].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(buf)
}

/// `(a, b)` as 16 sortable bytes: a delivery's key is (event seq, delivery seq).
pub fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

/// A queue entry's key: endpoint, sort position, delivery.
///
/// The sort position is the due time for unordered endpoints (so the due ones come first) and 0
/// for ordered endpoints (so reception order rules); the value always holds the due time.
pub fn queue_key(endpoint_num: u64, sort: u64, delivery_seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&endpoint_num.to_be_bytes());
    key[8..16].copy_from_slice(&sort.to_be_bytes());
    key[16..].copy_from_slice(&delivery_seq.to_be_bytes());
    key
}

/// A queue entry's value: the due time and the delivery's event.
pub fn queue_value(due_ms: u64, event_seq: u64) -> [u8; 16] {
    pair_key(due_ms, event_seq)
}

/// The value of a retry's queue entry: [`queue_value`] and one byte, [`RETRY_MARK`].
///
/// The scheduler keeps a reserve of attempt slots that retries may not use, and tells them from
/// first attempts by this byte without reading the delivery. First attempts keep the 16-byte form
/// (ingest writes nothing more); an older binary reads the first 16 bytes and ignores the mark.
pub fn retry_queue_value(due_ms: u64, event_seq: u64) -> [u8; 17] {
    let mut value = [0u8; 17];
    value[..16].copy_from_slice(&pair_key(due_ms, event_seq));
    value[16] = RETRY_MARK;
    value
}

/// The byte after a queue value's 16 bytes that marks the entry of a retry.
pub const RETRY_MARK: u8 = 1;

/// Splits a queue entry's value into (due time, event seq).
pub fn split_queue_value(value: &[u8]) -> (u64, u64) {
    (read_u64(value), read_u64(value.get(8..).unwrap_or(&[])))
}

/// Whether a queue entry's value marks a retry (see [`retry_queue_value`]).
pub fn queue_value_is_retry(value: &[u8]) -> bool {
    value.get(16) == Some(&RETRY_MARK)
}

/// Splits a queue key into (endpoint, sort, delivery). A damaged key of another length gives
/// numbers (the missing bytes read as zeros), not a panic.
pub fn split_queue_key(key: &[u8]) -> (u64, u64, u64) {
    let at = |start: usize| read_u64(key.get(start..).unwrap_or(&[]));
    (at(0), at(8), at(16))
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn sample_event() -> Event {
        Event {
            seq: 7,
            id: "evt_7b2".into(),
            partner_id: "acme-health".into(),
            environment: Environment::Production,
            event_type: "audit.completed".into(),
            created_at: "2026-01-15T19:04:12Z".into(),
            received_at_ms: 1_768_503_852_000,
            payload: br#"{"id":"evt_7b2"}"#.to_vec(),
            content_hash: [3; 32],
            initial_deliveries: vec![(8, 2), (9, 5)],
        }
    }

    fn sample_delivery() -> Delivery {
        Delivery {
            seq: 9,
            event_seq: 7,
            endpoint_num: 2,
            status: DeliveryStatus::Pending,
            next_attempt_at_ms: Some(1_768_503_852_000),
            attempts: vec![Attempt {
                n: 1,
                at_ms: 1_768_503_852_001,
                status_code: Some(500),
                duration_ms: 12,
                error: None,
                response_snippet: Some("oops".into()),
            }],
            attempts_before_redrive: 0,
            created_at_ms: 1_768_503_852_000,
        }
    }

    /// Golden bytes: if one of these changes, old data no longer reads. Bump the version instead.
    #[test]
    fn golden_event() {
        let bytes = sample_event().encode();
        assert_eq!(
            hex(&bytes),
            include_str!("../../../tests/fixtures/golden/event.v2.hex").trim()
        );
        assert_eq!(Event::decode(&bytes).unwrap(), sample_event());
    }

    /// Version 1 events (written before deliveries were keyed under their event) still read.
    #[test]
    fn version_1_event_reads_with_no_initial_deliveries() {
        let v1 = unhex(include_str!("../../../tests/fixtures/golden/event.v1.hex").trim());
        assert_eq!(v1[0], 1);
        let expected = Event {
            initial_deliveries: Vec::new(),
            ..sample_event()
        };
        assert_eq!(Event::decode(&v1).unwrap(), expected);
    }

    #[test]
    fn an_events_head_reads_from_every_version() {
        let head = EventHead {
            seq: 7,
            id: "evt_7b2".into(),
            partner_id: "acme-health".into(),
            environment: Environment::Production,
        };
        assert_eq!(decode_event_head(&sample_event().encode()).unwrap(), head);
        let v1 = unhex(include_str!("../../../tests/fixtures/golden/event.v1.hex").trim());
        assert_eq!(decode_event_head(&v1).unwrap(), head);
        assert!(decode_event_head(&[9, 1, 2]).is_err());
        assert!(decode_event_head(&[]).is_err());
    }

    #[test]
    fn golden_delivery() {
        let bytes = sample_delivery().encode();
        assert_eq!(
            hex(&bytes),
            include_str!("../../../tests/fixtures/golden/delivery.v1.hex").trim()
        );
        assert_eq!(Delivery::decode(&bytes).unwrap(), sample_delivery());
    }

    fn sample_endpoint() -> Endpoint {
        Endpoint {
            num: 2,
            partner_id: "acme-health".into(),
            environment: Environment::Sandbox,
            url: "https://hooks.acme.example/preflix".into(),
            event_types: vec!["*".into()],
            description: "case sync".into(),
            headers: vec![("x-acme-route".into(), "cases".into())],
            ordered: true,
            max_in_flight: 16,
            rate_limit_per_second: Some(5),
            enabled: true,
            disabled_reason: None,
            created_at_ms: 1,
            secrets: vec![EndpointSecret {
                secret: "whsec_AAAA".into(),
                expires_at_ms: Some(5),
            }],
        }
    }

    /// Version 1 endpoints (secrets in the clear, before sealing) still read.
    #[test]
    fn version_1_endpoint_reads_with_its_secrets_in_the_clear() {
        let v1 = unhex(include_str!("../../../tests/fixtures/golden/endpoint.v1.hex").trim());
        assert_eq!(v1[0], 1);
        let record = EndpointRecord::decode(&v1).unwrap();
        assert!(matches!(&record.secrets[0].value, SecretAtRest::Clear(s) if s == "whsec_AAAA"));
        let keys = super::super::sealing::MasterKeys::default();
        assert_eq!(keys.open(record).unwrap(), (sample_endpoint(), false));
    }

    /// Version 2, sealed with a fixed key and nonce (line 1) and in the clear (line 2). Pins the
    /// record layout and the sealing itself (cipher, associated data), so a store sealed today opens
    /// tomorrow.
    #[test]
    fn golden_endpoint() {
        use super::super::sealing::{MasterKey, MasterKeys};
        let key = MasterKey::parse(&[7; 32], std::path::Path::new("test")).unwrap();
        let sealed_keys = MasterKeys {
            current: Some(key),
            previous: None,
        };
        let sealed = sealed_keys.seal_with(&sample_endpoint(), || [9u8; 24].into());
        let clear = MasterKeys::default().seal(&sample_endpoint());
        let both = format!("{}\n{}\n", hex(&sealed.encode()), hex(&clear.encode()));
        assert_eq!(
            both,
            include_str!("../../../tests/fixtures/golden/endpoint.v2.hex")
        );
        let read = EndpointRecord::decode(&sealed.encode()).unwrap();
        assert_eq!(read, sealed);
        assert_eq!(sealed_keys.open(read).unwrap(), (sample_endpoint(), false));
        let read = EndpointRecord::decode(&clear.encode()).unwrap();
        assert_eq!(
            MasterKeys::default().open(read).unwrap(),
            (sample_endpoint(), false)
        );
    }

    #[test]
    fn golden_small_records() {
        let id = EventIdRecord {
            event_seq: 7,
            content_hash: [1; 32],
            deliveries: 2,
        };
        let health = EndpointHealth {
            consecutive_failures: 3,
            last_status_code: Some(503),
            last_success_at_ms: None,
            last_failure_at_ms: Some(10),
            failing_since_ms: Some(8),
            last_error: None,
        };
        let dl = DeadLetter {
            seq: 1,
            delivery_seq: 9,
            event_seq: 7,
            endpoint_num: 2,
            attempts: 10,
            last_status_code: None,
            last_error: Some("connection refused".into()),
            first_attempt_at_ms: Some(1),
            dead_at_ms: 2,
            reason: DeadReason::RetriesExhausted,
        };
        let golden = include_str!("../../../tests/fixtures/golden/small.v1.hex");
        let lines: Vec<&str> = golden.lines().collect();
        assert_eq!(lines[0], hex(&id.encode()));
        assert_eq!(lines[2], hex(&dl.encode()));
        // Health version 1 (without the last error) still reads.
        assert_eq!(EndpointHealth::decode(&unhex(lines[1])).unwrap(), health);
        let health = EndpointHealth {
            last_error: Some("connection refused".into()),
            ..health
        };
        assert_eq!(
            format!("{}\n", hex(&health.encode())),
            include_str!("../../../tests/fixtures/golden/health.v2.hex")
        );
        assert_eq!(EventIdRecord::decode(&id.encode()).unwrap(), id);
        assert_eq!(EndpointHealth::decode(&health.encode()).unwrap(), health);
        assert_eq!(DeadLetter::decode(&dl.encode()).unwrap(), dl);
    }

    #[test]
    fn decode_refuses_unknown_versions_truncation_and_huge_lengths() {
        let mut bytes = sample_event().encode();
        bytes[0] = 9;
        assert!(
            matches!(Event::decode(&bytes), Err(StoreError::Corrupt(m)) if m.contains("version 9"))
        );
        let bytes = sample_event().encode();
        assert!(Event::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(Event::decode(&[]).is_err());
        // A length prefix claiming 2^40 bytes must fail on the limit, not try to allocate.
        let mut huge = vec![1u8, 14];
        huge.push(0xfd);
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(Event::decode(&huge).is_err());
    }

    #[test]
    fn keys_sort_by_numbers() {
        assert!(queue_key(1, 5, 9) < queue_key(1, 6, 0));
        assert!(queue_key(1, u64::MAX, 9) < queue_key(2, 0, 0));
        assert_eq!(split_queue_key(&queue_key(3, 4, 5)), (3, 4, 5));
        assert!(pair_key(1, 300) < pair_key(2, 1));
        assert_eq!(split_queue_value(&queue_value(5, 6)), (5, 6));
        assert_eq!(split_queue_value(&retry_queue_value(5, 6)), (5, 6));
        assert!(!queue_value_is_retry(&queue_value(5, 6)));
        assert!(queue_value_is_retry(&retry_queue_value(5, 6)));
        assert_eq!(read_u64(&u64_key(42)), 42);
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
