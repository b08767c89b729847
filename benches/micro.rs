//! Micro benchmarks of the daemon's hot pure functions: signing, verifying, record codec, retry
//! decision, and parsing a request body (duplicate keys refused) against plain `serde_json`.
//!
//! Run with `cargo bench --bench micro`; each benchmark measures for about 2 s, so the whole run
//! takes a couple of minutes on a 2-core machine. Event validation (`api::events::validate`) is
//! private to the `api` module and not reachable from here, so it is not measured.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use preflix_webhookd::delivery::retry::{decide, AttemptResult, RetryPolicy};
use preflix_webhookd::model::{Attempt, Delivery, DeliveryStatus, Environment, Event};
use preflix_webhookd::signing::{sign, Secret, Verifier};
use preflix_webhookd::store::sled::codec::Record;
use std::time::Duration;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==";
const TIMESTAMP: i64 = 1_772_353_800;

/// A 1 KiB JSON delivery body.
fn body_1k() -> Vec<u8> {
    let head = br#"{"id":"evt_bench_000001","type":"audit.completed","created_at":"2026-01-15T19:04:12Z","data":{"bill_id":"bill_8f4","report_id":"report_33","status":"complete","note":""#;
    let tail = br#""}}"#;
    let mut body = head.to_vec();
    body.resize(1024 - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), 1024);
    body
}

fn secrets() -> (Secret, Secret) {
    (
        Secret::parse(SECRET_A).unwrap(),
        Secret::parse(SECRET_B).unwrap(),
    )
}

fn bench_signing(c: &mut Criterion) {
    let body = body_1k();
    let (a, b) = secrets();
    let one = vec![a.clone()];
    let two = vec![a.clone(), b.clone()];
    let mut g = c.benchmark_group("signing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_1KiB_1_secret", |bn| {
        bn.iter(|| {
            sign(
                black_box(&one),
                black_box("evt_bench_000001"),
                black_box(TIMESTAMP),
                black_box(&body),
            )
        })
    });
    g.bench_function("sign_1KiB_2_secrets", |bn| {
        bn.iter(|| {
            sign(
                black_box(&two),
                black_box("evt_bench_000001"),
                black_box(TIMESTAMP),
                black_box(&body),
            )
        })
    });

    // Verifying: a delivery signed under one secret, checked by a verifier holding that secret
    // (both header sets present, as the daemon sends them), and by one holding two secrets where
    // the matching one is second (the rotation case a receiver sees).
    let mut headers = http::HeaderMap::new();
    for (name, value) in sign(&one, "evt_bench_000001", TIMESTAMP, &body)
        .into_headers("evt_bench_000001")
        .unwrap()
    {
        headers.insert(name, value);
    }
    let verifier = Verifier::new(vec![a.clone()]);
    assert!(verifier.verify(&headers, &body, TIMESTAMP + 1).is_ok());
    g.bench_function("verify_1KiB_1_secret", |bn| {
        bn.iter(|| {
            verifier.verify(
                black_box(&headers),
                black_box(&body),
                black_box(TIMESTAMP + 1),
            )
        })
    });
    let rotating = Verifier::new(vec![b.clone(), a.clone()]);
    assert!(rotating.verify(&headers, &body, TIMESTAMP + 1).is_ok());
    g.bench_function("verify_1KiB_2_secrets_match_second", |bn| {
        bn.iter(|| {
            rotating.verify(
                black_box(&headers),
                black_box(&body),
                black_box(TIMESTAMP + 1),
            )
        })
    });
    let wrong = Verifier::new(vec![b]);
    assert!(wrong.verify(&headers, &body, TIMESTAMP + 1).is_err());
    g.bench_function("verify_1KiB_no_match", |bn| {
        bn.iter(|| {
            wrong.verify(
                black_box(&headers),
                black_box(&body),
                black_box(TIMESTAMP + 1),
            )
        })
    });
    g.finish();
}

fn sample_event() -> Event {
    // ~300 bytes of data, as the load generator sends.
    let payload = format!(
        r#"{{"id":"evt_bench_000001","type":"audit.completed","created_at":"2026-01-15T19:04:12Z","data":{{"bill_id":"bill_8f4","report_id":"report_33","status":"complete","note":"{}"}}}}"#,
        "x".repeat(220)
    );
    Event {
        seq: 123_456,
        id: "evt_bench_000001".into(),
        partner_id: "acme-health".into(),
        environment: Environment::Production,
        event_type: "audit.completed".into(),
        created_at: "2026-01-15T19:04:12Z".into(),
        received_at_ms: 1_768_503_852_000,
        payload: payload.into_bytes(),
        content_hash: [7; 32],
        initial_deliveries: vec![(2, 1)],
    }
}

fn sample_delivery(attempts: usize) -> Delivery {
    Delivery {
        seq: 123_457,
        event_seq: 123_456,
        endpoint_num: 2,
        status: DeliveryStatus::Pending,
        next_attempt_at_ms: Some(1_768_503_852_000),
        attempts: (0..attempts)
            .map(|i| Attempt {
                n: i as u32 + 1,
                at_ms: 1_768_503_852_001 + i as u64,
                status_code: Some(500),
                duration_ms: 12,
                error: None,
                response_snippet: Some("internal server error".into()),
            })
            .collect(),
        attempts_before_redrive: 0,
        created_at_ms: 1_768_503_852_000,
    }
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let event = sample_event();
    let event_bytes = event.encode();
    g.bench_function(format!("event_encode_{}B", event_bytes.len()), |b| {
        b.iter(|| black_box(&event).encode())
    });
    g.bench_function(format!("event_decode_{}B", event_bytes.len()), |b| {
        b.iter(|| Event::decode(black_box(&event_bytes)).unwrap())
    });
    for attempts in [0usize, 3] {
        let d = sample_delivery(attempts);
        let bytes = d.encode();
        g.bench_function(
            format!("delivery_{attempts}_attempts_encode_{}B", bytes.len()),
            |b| b.iter(|| black_box(&d).encode()),
        );
        g.bench_function(
            format!("delivery_{attempts}_attempts_decode_{}B", bytes.len()),
            |b| b.iter(|| Delivery::decode(black_box(&bytes)).unwrap()),
        );
    }
    g.finish();
}

fn bench_retry(c: &mut Criterion) {
    let policy = RetryPolicy {
        schedule: ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]
            .iter()
            .map(|s| parse_duration(s))
            .collect(),
        jitter: 0.2,
        max_retry_after: Duration::from_secs(86_400),
    };
    let now = 1_768_503_852_000u64;
    let mut g = c.benchmark_group("retry_decide");
    g.throughput(Throughput::Elements(1));
    let ok = AttemptResult::Status {
        code: 200,
        retry_after: None,
    };
    g.bench_function("success_2xx", |b| {
        b.iter(|| decide(black_box(&policy), 1, black_box(&ok), now, 0.5))
    });
    let err = AttemptResult::Status {
        code: 500,
        retry_after: None,
    };
    g.bench_function("retry_500", |b| {
        b.iter(|| decide(black_box(&policy), 3, black_box(&err), now, 0.37))
    });
    let failed = AttemptResult::Failed;
    g.bench_function("exhausted_failed", |b| {
        b.iter(|| decide(black_box(&policy), 10, black_box(&failed), now, 0.37))
    });
    let secs = AttemptResult::Status {
        code: 429,
        retry_after: Some("120".into()),
    };
    g.bench_function("retry_after_seconds_429", |b| {
        b.iter(|| decide(black_box(&policy), 2, black_box(&secs), now, 0.37))
    });
    let date = AttemptResult::Status {
        code: 503,
        retry_after: Some("Thu, 15 Jan 2026 19:10:12 GMT".into()),
    };
    g.bench_function("retry_after_http_date_503", |b| {
        b.iter_batched(
            || date.clone(),
            |r| decide(&policy, 2, &r, now, 0.37),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn parse_duration(text: &str) -> Duration {
    let (n, unit) = text.split_at(text.len() - 1);
    let n: u64 = n.parse().unwrap();
    Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => unreachable!(),
    })
}

/// An event request body with a nested `data` of about 1 KiB and 40 keys.
fn event_request() -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"line": i, "code": format!("CPT-{i:05}"), "amount": 1234.5, "denied": i % 3 == 0}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "partner_id": "acme-health", "environment": "production", "id": "evt_bench_000001",
        "type": "audit.completed", "created_at": "2026-01-15T19:04:12Z",
        "data": {"bill_id": "bill_8f4", "report_id": "report_33", "status": "complete", "items": items},
    }))
    .unwrap()
}

fn bench_json(c: &mut Criterion) {
    let body = event_request();
    let mut g = c.benchmark_group("json_parse");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function(format!("serde_json_value_{}B", body.len()), |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    g.bench_function(format!("strict_no_duplicate_keys_{}B", body.len()), |b| {
        b.iter(|| preflix_webhookd::api::strict_json::from_slice(black_box(&body)).unwrap())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_signing, bench_codec, bench_retry, bench_json
}
criterion_main!(micro);
