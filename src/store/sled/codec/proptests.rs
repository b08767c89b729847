//! Property tests of the record codec: any bytes decode to a record or an error, never a panic;
//! every record reads back as written; keys sort as the numbers they hold.

use super::*;
use crate::model::*;
use crate::store::Counters;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any characters, controls and multi-byte ones included.
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

fn environment() -> impl Strategy<Value = Environment> {
    prop_oneof![Just(Environment::Production), Just(Environment::Sandbox)]
}

fn event() -> impl Strategy<Value = Event> {
    let head = (any::<u64>(), text(), text(), environment(), text(), text());
    let tail = (
        any::<u64>(),
        vec(any::<u8>(), 0..300),
        any::<[u8; 32]>(),
        vec(any::<(u64, u64)>(), 0..6),
    );
    (head, tail).prop_map(
        |((seq, id, partner_id, environment, event_type, created_at), tail)| {
            let (received_at_ms, payload, content_hash, initial_deliveries) = tail;
            Event {
                seq,
                id,
                partner_id,
                environment,
                event_type,
                created_at,
                received_at_ms,
                payload,
                content_hash,
                initial_deliveries,
            }
        },
    )
}

/// An endpoint record, its secrets in the clear or sealed (arbitrary nonce and ciphertext).
fn endpoint() -> impl Strategy<Value = EndpointRecord> {
    let secret = (text(), of(any::<u64>())).prop_map(|(secret, expires_at_ms)| EndpointSecret {
        secret,
        expires_at_ms,
    });
    let head = (
        any::<u64>(),
        text(),
        environment(),
        text(),
        vec(text(), 0..4),
        text(),
        vec((text(), text()), 0..4),
    );
    let tail = (
        any::<bool>(),
        any::<u32>(),
        of(any::<u32>()),
        any::<bool>(),
        of(text()),
        any::<u64>(),
        vec(secret, 0..3),
    );
    (head, tail).prop_map(|(head, tail)| {
        let (num, partner_id, environment, url, event_types, description, headers) = head;
        let (
            ordered,
            max_in_flight,
            rate_limit_per_second,
            enabled,
            disabled_reason,
            created_at_ms,
            secrets,
        ) = tail;
        let endpoint = Endpoint {
            num,
            partner_id,
            environment,
            url,
            event_types,
            description,
            headers,
            ordered,
            max_in_flight,
            rate_limit_per_second,
            enabled,
            disabled_reason,
            created_at_ms,
            secrets: Vec::new(),
        };
        let secrets = secrets
            .into_iter()
            .enumerate()
            .map(|(i, s): (usize, EndpointSecret)| StoredSecret {
                value: if i % 2 == 0 {
                    SecretAtRest::Clear(s.secret)
                } else {
                    SecretAtRest::Sealed {
                        nonce: [i as u8; 24],
                        ciphertext: s.secret.into_bytes(),
                    }
                },
                expires_at_ms: s.expires_at_ms,
            })
            .collect();
        EndpointRecord { endpoint, secrets }
    })
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let fields = (
        any::<u32>(),
        any::<u64>(),
        of(any::<u16>()),
        any::<u32>(),
        of(text()),
        of(text()),
    );
    fields.prop_map(
        |(n, at_ms, status_code, duration_ms, error, response_snippet)| Attempt {
            n,
            at_ms,
            status_code,
            duration_ms,
            error,
            response_snippet,
        },
    )
}

fn delivery() -> impl Strategy<Value = Delivery> {
    let status = prop_oneof![
        Just(DeliveryStatus::Pending),
        Just(DeliveryStatus::Succeeded),
        Just(DeliveryStatus::Dead),
        Just(DeliveryStatus::Cancelled),
    ];
    let fields = (
        any::<(u64, u64, u64)>(),
        status,
        of(any::<u64>()),
        vec(attempt(), 0..5),
        any::<u32>(),
        any::<u64>(),
    );
    fields.prop_map(
        |((seq, event_seq, endpoint_num), status, next, attempts, before, created)| Delivery {
            seq,
            event_seq,
            endpoint_num,
            status,
            next_attempt_at_ms: next,
            attempts,
            attempts_before_redrive: before,
            created_at_ms: created,
        },
    )
}

fn dead_letter() -> impl Strategy<Value = DeadLetter> {
    let reason = prop_oneof![
        Just(DeadReason::RetriesExhausted),
        Just(DeadReason::EndpointGone)
    ];
    let fields = (
        any::<(u64, u64, u64, u64)>(),
        any::<u32>(),
        of(any::<u16>()),
        of(text()),
        of(any::<u64>()),
        any::<u64>(),
        reason,
    );
    fields.prop_map(
        |(
            (seq, delivery_seq, event_seq, endpoint_num),
            attempts,
            code,
            error,
            first,
            dead_at_ms,
            reason,
        )| {
            DeadLetter {
                seq,
                delivery_seq,
                event_seq,
                endpoint_num,
                attempts,
                last_status_code: code,
                last_error: error,
                first_attempt_at_ms: first,
                dead_at_ms,
                reason,
            }
        },
    )
}

fn id_record() -> impl Strategy<Value = EventIdRecord> {
    (any::<u64>(), any::<[u8; 32]>(), any::<u32>()).prop_map(
        |(event_seq, content_hash, deliveries)| EventIdRecord {
            event_seq,
            content_hash,
            deliveries,
        },
    )
}

fn health() -> impl Strategy<Value = EndpointHealth> {
    let fields = (
        any::<u32>(),
        of(any::<u16>()),
        of(any::<u64>()),
        of(any::<u64>()),
        of(any::<u64>()),
        of(text()),
    );
    fields.prop_map(
        |(failures, code, success, failure, since, error)| EndpointHealth {
            consecutive_failures: failures,
            last_status_code: code,
            last_success_at_ms: success,
            last_failure_at_ms: failure,
            failing_since_ms: since,
            last_error: error,
        },
    )
}

fn counters() -> impl Strategy<Value = Counters> {
    (any::<[u64; 10]>()).prop_map(|n| Counters {
        events: n[0],
        deliveries_created: n[1],
        deliveries_succeeded: n[2],
        deliveries_dead: n[3],
        deliveries_cancelled: n[4],
        attempts_failed: n[5],
        attempts_succeeded: n[6],
        pending: n[7],
        retrying: n[8],
        dead_letters: n[9],
    })
}

/// Every record, encoded.
fn encodings() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        event(),
        endpoint(),
        delivery(),
        dead_letter(),
        id_record(),
        health(),
        counters(),
    )
        .prop_map(|(ev, ep, d, dl, id, h, c)| {
            vec![
                ev.encode(),
                ep.encode(),
                d.encode(),
                dl.encode(),
                id.encode(),
                h.encode(),
                c.encode(),
            ]
        })
}

/// Decodes `bytes` as every kind of record; each must give a record or an error.
fn decode_as_every_record(bytes: &[u8]) -> [bool; 7] {
    [
        Event::decode(bytes).is_ok(),
        EndpointRecord::decode(bytes).is_ok(),
        Delivery::decode(bytes).is_ok(),
        DeadLetter::decode(bytes).is_ok(),
        EventIdRecord::decode(bytes).is_ok(),
        EndpointHealth::decode(bytes).is_ok(),
        Counters::decode(bytes).is_ok(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_record_reads_back_as_written(
        ev in event(), ep in endpoint(), d in delivery(), dl in dead_letter(),
        id in id_record(), h in health(), c in counters(),
    ) {
        prop_assert_eq!(Event::decode(&ev.encode()).unwrap(), ev);
        prop_assert_eq!(EndpointRecord::decode(&ep.encode()).unwrap(), ep);
        prop_assert_eq!(Delivery::decode(&d.encode()).unwrap(), d);
        prop_assert_eq!(DeadLetter::decode(&dl.encode()).unwrap(), dl);
        prop_assert_eq!(EventIdRecord::decode(&id.encode()).unwrap(), id);
        prop_assert_eq!(EndpointHealth::decode(&h.encode()).unwrap(), h);
        prop_assert_eq!(Counters::decode(&c.encode()).unwrap(), c);
    }

    /// Arbitrary bytes, mostly behind a version byte a record has had, so decoding goes past it.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(version in 0u8..4, rest in vec(any::<u8>(), 0..600)) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&rest);
        decode_as_every_record(&bytes);
        decode_as_every_record(&rest);
    }

    /// Real records with bytes changed: the lengths and tags inside now lie.
    #[test]
    fn decoding_a_damaged_record_never_panics(
        records in encodings(),
        changes in vec((any::<Index>(), 1u8..=255), 1..6),
    ) {
        for mut bytes in records {
            for (at, xor) in &changes {
                let at = at.index(bytes.len());
                bytes[at] ^= xor;
            }
            decode_as_every_record(&bytes);
        }
    }

    /// A record cut short is an error for its own kind, never a different record.
    #[test]
    fn a_truncated_record_is_an_error(records in encodings(), cut in any::<Index>()) {
        for bytes in &records {
            let short = &bytes[..cut.index(bytes.len())];
            decode_as_every_record(short);
        }
        let [ev, ep, d, dl, id, h, c] = &records[..] else { unreachable!() };
        let cut_of = |b: &Vec<u8>| b[..cut.index(b.len())].to_vec();
        prop_assert!(Event::decode(&cut_of(ev)).is_err());
        prop_assert!(EndpointRecord::decode(&cut_of(ep)).is_err());
        prop_assert!(Delivery::decode(&cut_of(d)).is_err());
        prop_assert!(DeadLetter::decode(&cut_of(dl)).is_err());
        prop_assert!(EventIdRecord::decode(&cut_of(id)).is_err());
        prop_assert!(EndpointHealth::decode(&cut_of(h)).is_err());
        prop_assert!(Counters::decode(&cut_of(c)).is_err());
    }

    #[test]
    fn keys_sort_as_their_numbers(a in any::<(u64, u64, u64)>(), b in any::<(u64, u64, u64)>()) {
        prop_assert_eq!(queue_key(a.0, a.1, a.2).cmp(&queue_key(b.0, b.1, b.2)), a.cmp(&b));
        prop_assert_eq!(split_queue_key(&queue_key(a.0, a.1, a.2)), a);
        prop_assert_eq!(pair_key(a.0, a.1).cmp(&pair_key(b.0, b.1)), (a.0, a.1).cmp(&(b.0, b.1)));
        prop_assert_eq!(split_queue_value(&queue_value(a.0, a.1)), (a.0, a.1));
        prop_assert_eq!(u64_key(a.0).cmp(&u64_key(b.0)), a.0.cmp(&b.0));
        prop_assert_eq!(read_u64(&u64_key(a.0)), a.0);
    }

    /// Keys and queue values of any length split without a panic.
    #[test]
    fn splitting_arbitrary_key_bytes_never_panics(bytes in vec(any::<u8>(), 0..40)) {
        split_queue_key(&bytes);
        split_queue_value(&bytes);
        read_u64(&bytes);
    }
}
