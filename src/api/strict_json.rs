//! Request bodies parsed as JSON with every object key at most once, at any depth.
//!
//! RFC 8259 leaves an object with a repeated key open to interpretation, and `serde_json` keeps the
//! last value: `{"partner_id":"p1","partner_id":"p2"}` would be stored for partner `p2` while a
//! proxy or log that keeps the first value saw `p1`. A body has one reading here, or it is refused.
//! The check is made while the value is built, in the same single pass as `serde_json`'s own
//! `Value` (one map lookup per key, which the insertion needs anyway), so ingest pays next to nothing
//! for it (`benches/micro.rs`, `json_parse`).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::fmt;

/// Parses `bytes` as one JSON value, refusing any object that holds a key twice; the error names
/// the key and where its object is (`data.items[2]`).
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { path: &Path::Root }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The longest key or path quoted in an error message, in characters; keys may be long.
const QUOTE_MAX: usize = 64;

/// Where a value sits, from the root; built on the stack as the parser descends, read only for
/// an error message.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(parent, key) => {
                write!(f, "{parent}")?;
                let plain = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                match (plain, matches!(parent, Path::Root)) {
                    (true, true) => write!(f, "{}", shorten(key)),
                    (true, false) => write!(f, ".{}", shorten(key)),
                    (false, _) => write!(f, "[{}]", Value::String(shorten(key))),
                }
            }
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Builds a `serde_json::Value` exactly as `serde_json` does, but refuses repeated keys.
struct Strict<'p> {
    path: &'p Path<'p>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            let path = Path::Index(self.path, items.len());
            match seq.next_element_seed(Strict { path: &path })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut values = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match values.entry(key) {
                Entry::Occupied(seen) => {
                    let place = match self.path {
                        Path::Root => "the top-level object".to_string(),
                        inner => format!("the object at {inner}"),
                    };
                    return Err(de::Error::custom(format_args!(
                        "the key {} appears twice in {place}; each key may appear once",
                        Value::String(shorten(seen.key()))
                    )));
                }
                Entry::Vacant(slot) => {
                    let value = {
                        let path = Path::Key(self.path, slot.key());
                        map.next_value_seed(Strict { path: &path })?
                    };
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> String {
        from_slice(body.as_bytes())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn same_value_as_serde_json_without_repeats() {
        for body in [
            r#"{"a":1,"b":[1,-2,3.5,1e400,null,true,"x"],"c":{"d":{}},"e":18446744073709551615}"#,
            "[]",
            "\"text\"",
            "-0",
            r#"{"":{"":[{"":null}]}}"#,
            "  {\"k\" : \"\\u00e9\\n\"}  ",
        ] {
            let ours = from_slice(body.as_bytes()).map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<Value>(body).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{body}");
        }
    }

    #[test]
    fn repeated_keys_are_refused_with_their_place() {
        let m = message(r#"{"partner_id":"p1","partner_id":"p2"}"#);
        assert!(
            m.contains("\"partner_id\" appears twice in the top-level object"),
            "{m}"
        );
        let m = message(r#"{"data":{"items":[{},{},{"n":1,"n":2}]}}"#);
        assert!(
            m.contains("\"n\" appears twice in the object at data.items[2]"),
            "{m}"
        );
        let m = message(r#"{"a b":{"x":1,"x":1}}"#);
        assert!(m.contains("at [\"a b\"]"), "{m}");
        // Escapes are decoded before comparing: these are the same key.
        let m = message(r#"{"a":1,"\u0061":2}"#);
        assert!(m.contains("\"a\" appears twice"), "{m}");
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for body in ["{", "{\"a\":1,}", "[1 2]", "{} {}", "nul", ""] {
            let ours = from_slice(body.as_bytes()).expect_err(body);
            assert!(ours.is_syntax() || ours.is_eof(), "{body}: {ours}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(100_000);
        assert!(from_slice(body.as_bytes()).is_err());
        let body = "{\"a\":".repeat(100_000);
        assert!(from_slice(body.as_bytes()).is_err());
    }
}
