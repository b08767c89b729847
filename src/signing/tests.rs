//! Tests of `signing`.

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
    serde_json::from_str(include_str!("../../tests/fixtures/signatures.json"))
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
fn with(pairs: &[(&'static str, String)], name: &str, value: &str) -> Vec<(&'static str, String)> {
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
    let check =
        |pairs: Vec<(&'static str, String)>| verify_pairs(&verifier, &pairs, &d.body, d.timestamp);
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
    let verified = verify_pairs(&d.verifier(), &broken_preflixai, &d.body, d.timestamp).unwrap();
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
