//! Property tests of request parsing: JSON bodies, event validation, endpoint fields, endpoint
//! URLs and ids. No input panics; valid inputs come back as they went in.

use super::endpoints::{event_types, headers};
use super::events::validate;
use super::strict_json;
use crate::catalog;
use crate::delivery::guard::{parse_endpoint_url, UrlError};
use crate::model::{
    delivery_id, endpoint_id, parse_numbered_id, parse_time_signed, DeadLetter, DeadReason,
    Environment,
};
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Any JSON value, nested a few levels, with keys that often repeat across objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // serde_json reads floats to within an ulp, not exactly (no `float_roundtrip` feature):
        // only floats that survive its own write-and-read are generated.
        any::<f64>()
            .prop_filter("finite, read back exactly", |f| {
                f.is_finite() && serde_json::from_str::<f64>(&json!(f).to_string()).ok() == Some(*f)
            })
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-d]{1,2}|\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

/// RFC 3339 text for any second of the years 0000 to 9999, in UTC or with an offset, and the
/// unix milliseconds it stands for.
fn rfc3339() -> impl Strategy<Value = (String, i64)> {
    (
        -62_167_219_200_000i64..253_402_300_799_000,
        prop_oneof![Just(0i32), -(23 * 60 + 59)..=(23 * 60 + 59)],
        any::<bool>(),
    )
        .prop_map(|(ms, offset_minutes, fraction)| {
            let ms = if fraction { ms } else { ms / 1000 * 1000 };
            let utc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .expect("in range");
            let offset = time::UtcOffset::from_whole_seconds(offset_minutes * 60).expect("offset");
            let at = utc.to_offset(offset);
            let text = at
                .format(&time::format_description::well_known::Rfc3339)
                .expect("formats");
            (text, ms)
        })
        .prop_filter("year within 0000-9999 after the offset", |(text, _)| {
            !text.starts_with('-') && !text.starts_with('+')
        })
}

fn catalog_type() -> impl Strategy<Value = String> {
    let names: Vec<String> = catalog::event_types()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    prop::sample::select(names)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn strict_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = strict_json::from_slice(&bytes);
    }

    #[test]
    fn strict_json_reads_what_serde_json_writes(value in json_value()) {
        let text = serde_json::to_vec(&value).expect("serializes");
        prop_assert_eq!(strict_json::from_slice(&text).expect("parses"), value);
    }

    #[test]
    fn strict_json_refuses_a_repeated_key(
        value in json_object(),
        key in "[a-z]{1,4}",
        first in json_value(),
        second in json_value(),
    ) {
        // Write the object by hand so that `key` appears twice, after the others.
        let mut text = String::from("{");
        for (k, v) in &value {
            if k != &key {
                text.push_str(&format!("{}:{},", json!(k), v));
            }
        }
        text.push_str(&format!("{}:{},{}:{}}}", json!(key), first, json!(key), second));
        let nested = format!("{{\"data\":{{\"list\":[{text}]}}}}");
        for body in [text, nested] {
            let err = strict_json::from_slice(body.as_bytes()).expect_err("repeated key");
            prop_assert!(err.is_data(), "{}", err);
            prop_assert!(err.to_string().contains(&json!(key).to_string()), "{}", err);
        }
    }

    #[test]
    fn event_validation_never_panics(map in json_object(), extra in prop::collection::btree_map(
        prop::sample::select(vec!["partner_id", "environment", "id", "type", "created_at", "data"]),
        json_value(),
        0..6,
    )) {
        let mut map = map;
        for (k, v) in extra {
            map.insert(k.to_string(), v);
        }
        if let Err(e) = validate(map, 1_700_000_000_000) {
            prop_assert!(
                e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::UNPROCESSABLE_ENTITY,
                "{:?}", e
            );
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn valid_events_round_trip(
        partner in "[A-Za-z0-9._-]{1,64}",
        id in proptest::option::of("[A-Za-z0-9._-]{1,128}"),
        environment in proptest::option::of(prop::sample::select(vec!["production", "sandbox"])),
        event_type in catalog_type(),
        created_at in proptest::option::of(rfc3339()),
        data in json_object(),
    ) {
        let now = 1_700_000_000_000u64;
        let mut body = json!({"partner_id": partner, "type": event_type, "data": data});
        if let Some(id) = &id { body["id"] = json!(id); }
        if let Some(env) = environment { body["environment"] = json!(env); }
        if let Some((text, _)) = &created_at { body["created_at"] = json!(text); }
        // Through the strict parser, as a request body goes.
        let text = body.to_string();
        let Value::Object(map) = strict_json::from_slice(text.as_bytes()).expect("parses") else {
            unreachable!()
        };
        let event = validate(map, now).expect("a valid event");
        prop_assert_eq!(&event.partner_id, &partner);
        prop_assert_eq!(&event.event_type, &event_type);
        prop_assert_eq!(
            event.environment,
            if environment == Some("sandbox") { Environment::Sandbox } else { Environment::Production }
        );
        if let Some(id) = &id { prop_assert_eq!(&event.id, id); } else { prop_assert!(event.id.starts_with("evt_")); }
        match &created_at {
            Some((text, ms)) => {
                prop_assert_eq!(&event.created_at, text);
                prop_assert_eq!(parse_time_signed(text), Some(*ms));
            }
            None => prop_assert!(parse_time_signed(&event.created_at).is_some()),
        }
        let payload: Value = serde_json::from_slice(&event.payload).expect("payload is JSON");
        prop_assert_eq!(
            payload,
            json!({"id": event.id, "type": event_type, "created_at": event.created_at, "data": data})
        );
        // The content hash ignores key order and created_at.
        let mut reordered: Map<String, Value> = Map::new();
        reordered.insert("data".into(), Value::Object(data.clone()));
        reordered.insert("type".into(), json!(event_type));
        reordered.insert("partner_id".into(), json!(partner));
        reordered.insert("id".into(), json!(event.id));
        if let Some(env) = environment { reordered.insert("environment".into(), json!(env)); }
        let again = validate(reordered, now + 5).expect("still valid");
        prop_assert_eq!(again.content_hash, event.content_hash);
    }

    #[test]
    fn endpoint_fields_never_panic(value in json_value()) {
        for result in [headers(&value).map(|_| ()), event_types(&value).map(|_| ())] {
            if let Err(e) = result {
                prop_assert!(e.status.is_client_error(), "{:?}", e);
            }
        }
    }

    #[test]
    fn valid_custom_headers_round_trip(
        given in prop::collection::btree_map("x-[a-z0-9-]{1,20}", "[ -~]{0,40}", 0..8)
    ) {
        let value = json!(given);
        let kept = headers(&value).expect("valid headers");
        let expected: Vec<(String, String)> =
            given.into_iter().collect();
        prop_assert_eq!(kept, expected);
    }

    #[test]
    fn valid_event_type_lists_round_trip(types in prop::collection::btree_set(catalog_type(), 1..6)) {
        let list: Vec<String> = types.into_iter().collect();
        prop_assert_eq!(event_types(&json!(list)).expect("valid"), list);
    }

    #[test]
    fn url_parsing_never_panics(url in "\\PC{0,40}|(https?|ftp)://[a-zA-Z0-9\\[\\]:.%@_~-]{0,24}([/?][ -~]{0,16})?") {
        for (sandbox, https) in [(true, false), (false, true)] {
            if let Ok(parsed) = parse_endpoint_url(&url, sandbox, https) {
                // What is accepted is printable ASCII, one host spelling, and a valid request target.
                prop_assert!(url.bytes().all(|b| b.is_ascii_graphic()), "{}", url);
                prop_assert!(!parsed.host.contains('%'), "{}", url);
                let bracketed_v4 = parsed.host.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .is_some_and(|h| h.parse::<Ipv4Addr>().is_ok());
                prop_assert!(!bracketed_v4, "{}", url);
                prop_assert!(url.parse::<http::Uri>().is_ok(), "{}", url);
            }
        }
    }

    #[test]
    fn valid_urls_round_trip(
        https in any::<bool>(),
        labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4),
        tld in "[a-z]{2,6}",
        port in proptest::option::of(1u16..),
        path in "(/[A-Za-z0-9._~!$&'()*+,;=:@-]{0,8}){0,3}",
        query in proptest::option::of("[A-Za-z0-9=&%]{0,10}".prop_filter("escapes", |q| !q.contains('%'))),
    ) {
        let host = format!("{}.{tld}", labels.join("."));
        let scheme = if https { "https" } else { "http" };
        let mut url = format!("{scheme}://{host}");
        if let Some(port) = port { url.push_str(&format!(":{port}")); }
        url.push_str(&path);
        if let Some(q) = &query { url.push('?'); url.push_str(q); }
        let parsed = parse_endpoint_url(&url, true, true).unwrap_or_else(|e| panic!("{url}: {e}"));
        prop_assert_eq!(parsed.scheme_https, https);
        prop_assert_eq!(&parsed.host, &host);
        prop_assert_eq!(parsed.port, port.unwrap_or(if https { 443 } else { 80 }));
    }

    #[test]
    fn ip_literal_urls_round_trip(v4 in any::<u32>(), v6 in any::<u128>(), port in 1u16..) {
        let v4 = Ipv4Addr::from(v4);
        let parsed = parse_endpoint_url(&format!("http://{v4}:{port}/"), true, false)
            .unwrap_or_else(|e| panic!("{v4}: {e}"));
        prop_assert_eq!(parsed.host, v4.to_string());
        prop_assert_eq!(parsed.port, port);
        let v6 = Ipv6Addr::from(v6);
        let parsed = parse_endpoint_url(&format!("https://[{v6}]:{port}/"), true, true)
            .unwrap_or_else(|e| panic!("{v6}: {e}"));
        prop_assert_eq!(parsed.host, format!("[{v6}]"));
        // The same IPv4 address in brackets, or an IPv6 one with a zone, is refused.
        let bracketed = parse_endpoint_url(&format!("http://[{v4}]/"), true, false);
        prop_assert!(matches!(bracketed, Err(UrlError::Invalid { .. })), "{:?}", bracketed);
        let zoned = parse_endpoint_url(&format!("http://[{v6}%25eth0]/"), true, false);
        prop_assert!(matches!(zoned, Err(UrlError::Invalid { .. })), "{:?}", zoned);
    }

    #[test]
    fn ids_round_trip(n in any::<u64>()) {
        let dl = DeadLetter {
            seq: n, delivery_seq: 0, event_seq: 0, endpoint_num: 0, attempts: 0,
            last_status_code: None, last_error: None, first_attempt_at_ms: None, dead_at_ms: 0,
            reason: DeadReason::RetriesExhausted,
        };
        prop_assert_eq!(parse_numbered_id("ep_", &endpoint_id(n)), Some(n));
        prop_assert_eq!(parse_numbered_id("dlv_", &delivery_id(n)), Some(n));
        prop_assert_eq!(parse_numbered_id("dl_", &dl.id()), Some(n));
    }

    #[test]
    fn an_id_has_one_spelling(text in "(ep_|dlv_|dl_)?[0-9a-fA-F+ -]{0,18}|\\PC{0,24}") {
        for (prefix, format) in [
            ("ep_", endpoint_id as fn(u64) -> String),
            ("dlv_", delivery_id as fn(u64) -> String),
        ] {
            if let Some(n) = parse_numbered_id(prefix, &text) {
                prop_assert_eq!(format(n), text.clone());
            }
        }
    }
}
