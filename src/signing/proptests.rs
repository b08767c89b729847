//! Property tests of `signing`: no header value, body or secret text makes parsing or verifying
//! panic, and whatever is signed verifies, under any of its secrets and either header set.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const SIGNING_HEADERS: [&str; 5] = [
    PREFLIXAI_TIMESTAMP,
    PREFLIXAI_SIGNATURE,
    WEBHOOK_ID,
    WEBHOOK_TIMESTAMP,
    WEBHOOK_SIGNATURE,
];

/// A secret from arbitrary key bytes.
fn secret() -> impl Strategy<Value = Secret> {
    vec(any::<u8>(), 1..64).prop_map(|key| {
        Secret::parse(&format!("{SECRET_PREFIX}{}", STANDARD.encode(key))).expect("valid secret")
    })
}

/// Header values close to real ones: signature entries, separators, digits and stray text, so
/// the parser is exercised past its first checks.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(v[0-9a]{0,2}[=,]?[0-9a-fA-F+/=]{0,70}[, \t]{0,2}){0,4}",
        "-?[0-9]{0,25}",
        "[ -~]{0,90}",
    ]
}

/// Raw header values: text as above, or bytes that may not be text at all.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let text = header_text().prop_map(|t| HeaderValue::from_str(&t).ok());
    let bytes = vec(any::<u8>(), 0..80).prop_map(|b| HeaderValue::from_bytes(&b).ok());
    prop_oneof![text, bytes].prop_filter_map("not a header value", |v| v)
}

fn header_name() -> impl Strategy<Value = &'static str> {
    select(
        &[
            PREFLIXAI_TIMESTAMP,
            PREFLIXAI_SIGNATURE,
            WEBHOOK_ID,
            WEBHOOK_TIMESTAMP,
            WEBHOOK_SIGNATURE,
            "content-type",
        ][..],
    )
}

/// A genuine delivery's headers, with the given header names left out.
fn signed_headers(signatures: &Signatures, id: &str, leave_out: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in signatures
        .clone()
        .into_headers(id)
        .expect("id is a header value")
    {
        if !leave_out.contains(&name.as_str()) {
            headers.insert(name, value);
        }
    }
    headers
}

proptest! {
    #![proptest_config(config())]

    /// Any headers, any body, any clock: an answer, never a panic.
    #[test]
    fn verifying_arbitrary_headers_never_panics(
        headers in vec((header_name(), header_value()), 0..8),
        body in vec(any::<u8>(), 0..64),
        secrets in vec(secret(), 0..3),
        now in any::<i64>(),
        tolerance in any::<u64>(),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.append(*name, value.clone());
        }
        let verifier = Verifier::new(secrets).with_tolerance(Duration::from_secs(tolerance));
        let _ = verifier.verify(&map, &body, now);
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(name, value)| Some((*name, value.to_str().ok()?)))
            .collect();
        let _ = verifier.verify_pairs(pairs, &body, now);
    }

    /// A genuine signature with one of its headers replaced by arbitrary text.
    #[test]
    fn verifying_a_tampered_header_never_panics(
        secret in secret(),
        body in vec(any::<u8>(), 0..64),
        timestamp in any::<i64>(),
        which in 0..SIGNING_HEADERS.len(),
        value in header_text(),
    ) {
        let signatures = sign(std::slice::from_ref(&secret), "evt_1", timestamp, &body);
        let mut pairs: Vec<(&str, String)> = signatures.header_pairs("evt_1").into_iter().collect();
        pairs[which].1 = value;
        let verifier = Verifier::new(vec![secret]);
        let _ = verifier.verify_pairs(pairs.iter().map(|(n, v)| (*n, v.as_str())), &body, timestamp);
    }

    #[test]
    fn parsing_any_secret_text_never_panics(text in "(whsec_)?[ -~]{0,60}", raw in any::<String>()) {
        for t in [&text, &raw] {
            if let Ok(secret) = Secret::parse(t) {
                let again = Secret::parse(secret.as_str()).expect("a parsed secret parses again");
                prop_assert_eq!(again.as_str(), secret.as_str());
            }
        }
    }

    /// What is signed verifies, under each signing secret and through either header set alone;
    /// another body or a secret that did not sign does not.
    #[test]
    fn signed_deliveries_verify(
        secrets in vec(secret(), 1..4),
        id in "[!-~]{1,64}",
        timestamp in any::<i64>(),
        body in vec(any::<u8>(), 0..512),
        pick in any::<Index>(),
        stranger in secret(),
    ) {
        prop_assume!(secrets.iter().all(|s| s.as_str() != stranger.as_str()));
        let signatures = sign(&secrets, &id, timestamp, &body);
        let chosen = pick.index(secrets.len());
        // A receiver that knows only one of the secrets, among others it does not sign with.
        let verifier = Verifier::new(vec![stranger.clone(), secrets[chosen].clone()]);
        let full = signed_headers(&signatures, &id, &[]);
        let verified = verifier.verify(&full, &body, timestamp).expect("a genuine delivery");
        prop_assert_eq!(verified.timestamp, timestamp);
        prop_assert_eq!(verified.secret_index, 1);

        let preflixai_only = signed_headers(&signatures, &id, &[WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE]);
        let v = verifier.verify(&preflixai_only, &body, timestamp).expect("the Preflix AI set alone");
        prop_assert_eq!(v.header_set, HeaderSet::Preflixai);
        let webhook_only = signed_headers(&signatures, &id, &[PREFLIXAI_TIMESTAMP, PREFLIXAI_SIGNATURE]);
        let v = verifier.verify(&webhook_only, &body, timestamp).expect("the Standard Webhooks set alone");
        prop_assert_eq!(v.header_set, HeaderSet::StandardWebhooks);

        let pairs = signatures.header_pairs(&id);
        let v = verifier.verify_pairs(pairs.iter().map(|(n, v)| (*n, v.as_str())), &body, timestamp);
        prop_assert!(v.is_ok(), "{:?}", v);

        let mut other = body.clone();
        other.push(b' ');
        prop_assert_eq!(verifier.verify(&full, &other, timestamp), Err(VerifyError::NoMatchingSignature));
        let strangers = Verifier::new(vec![stranger]);
        prop_assert_eq!(strangers.verify(&full, &body, timestamp), Err(VerifyError::NoMatchingSignature));
    }

    /// The timestamp check, at its edges, for any timestamp and tolerance.
    #[test]
    fn the_tolerance_is_exact(
        secret in secret(),
        timestamp in any::<i64>(),
        tolerance in 0u64..100_000,
    ) {
        let signatures = sign(std::slice::from_ref(&secret), "evt_1", timestamp, b"{}");
        let headers = signed_headers(&signatures, "evt_1", &[]);
        let verifier = Verifier::new(vec![secret]).with_tolerance(Duration::from_secs(tolerance));
        let t = i128::from(tolerance);
        for (offset, want) in [(-t - 1, Err(VerifyError::FutureTimestamp)), (-t, Ok(())), (t, Ok(())), (t + 1, Err(VerifyError::StaleTimestamp))] {
            let Ok(now) = i64::try_from(i128::from(timestamp) + offset) else { continue };
            prop_assert_eq!(verifier.verify(&headers, b"{}", now).map(|_| ()), want, "now = timestamp {:+}", offset);
        }
    }
}
