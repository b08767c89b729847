//! The partner-facing `sign` and `verify` subcommands.
//!
//! `sign` prints the headers a delivery of a body would carry; `verify` says whether a
//! set of headers verifies a body, and if not, why.
//! Both are plain functions over text so the binary only parses arguments, reads stdin
//! and the clock, and turns the result into an exit code (spec/API.md section 2).

use std::io::Write;
use std::time::Duration;

use rand::RngCore;

use crate::signing::{self, Secret, Verifier, VerifyError};

/// Writes the headers a delivery of `body` would carry, one `name: value` a line, ready
/// to pass to curl as `-H` arguments.
///
/// The id signed into the Standard Webhooks set is `id`, else the body's JSON `id`
/// field, else `msg_` and 32 random hex digits; `preflixai-event-id` (and
/// `preflixai-event-type`, from the body's `type` field) appear only when known. The
/// timestamp is `timestamp`, else `now`.
pub fn sign_command(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<i64>,
    body: &[u8],
    now: i64,
    out: &mut dyn Write,
) -> Result<(), String> {
    let secret = parse_secret(secret)?;
    let fields = BodyFields::read(body);
    let event_id = match id {
        Some(id) => {
            check_header_text(id).map_err(|why| format!("--id {why}"))?;
            Some(id.to_owned())
        }
        None => fields.id,
    };
    if let Some(id) = &event_id {
        check_header_text(id).map_err(|why| format!("the body's `id` field {why}; pass --id"))?;
    }
    let message_id = event_id.clone().unwrap_or_else(random_message_id);
    let signatures = signing::sign(
        std::slice::from_ref(&secret),
        &message_id,
        timestamp.unwrap_or(now),
        body,
    );

    let mut lines = Vec::with_capacity(8);
    lines.push(("content-type", "application/json".to_owned()));
    if let Some(id) = event_id {
        lines.push(("preflixai-event-id", id));
    }
    if let Some(event_type) = fields.event_type {
        if check_header_text(&event_type).is_ok() {
            lines.push(("preflixai-event-type", event_type));
        }
    }
    lines.extend(signatures.header_pairs(&message_id));
    for (name, value) in lines {
        writeln!(out, "{name}: {value}").map_err(|e| format!("cannot write the headers: {e}"))?;
    }
    Ok(())
}

/// Checks `headers` (each `name: value`, as given to `-H`) against `body` with `secret`.
///
/// Answers which header set verified, such as
/// `ok: verified with the preflixai-signature set`, or the reason it did not.
pub fn verify_command(
    secret: &str,
    tolerance_secs: u64,
    headers: &[String],
    body: &[u8],
    now: i64,
) -> Result<String, String> {
    let secret = parse_secret(secret)?;
    let pairs = headers
        .iter()
        .map(|header| {
            header
                .split_once(':')
                .ok_or_else(|| format!("-H {header:?} is not `name: value`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = Verifier::new(vec![secret]).with_tolerance(Duration::from_secs(tolerance_secs));
    match verifier.verify_pairs(pairs, body, now) {
        Ok(verified) => Ok(format!("ok: verified with the {} set", verified.header_set)),
        Err(error @ (VerifyError::StaleTimestamp | VerifyError::FutureTimestamp)) => Err(format!(
            "{error} (the tolerance is {tolerance_secs} seconds either way)"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// The fields of a JSON body that name the event, when the body has them.
#[derive(Default)]
struct BodyFields {
    /// The `id` field, when it is a string.
    id: Option<String>,
    /// The `type` field, when it is a string.
    event_type: Option<String>,
}

impl BodyFields {
    /// Reads the fields, leaving them unknown when the body is not a JSON object.
    fn read(body: &[u8]) -> BodyFields {
        let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) else {
            return BodyFields::default();
        };
        let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        BodyFields {
            id: text("id"),
            event_type: text("type"),
        }
    }
}

/// Parses the `--secret` argument.
fn parse_secret(text: &str) -> Result<Secret, String> {
    Secret::parse(text).map_err(|e| format!("--secret: {e}"))
}

/// Refuses text that would not survive as a header value unchanged: empty, control or
/// non-ASCII characters, or surrounding spaces that a receiver would trim off.
fn check_header_text(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        Err("is empty")
    } else if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Err("must be printable ASCII")
    } else if text.trim() != text {
        Err("must not start or end with a space")
    } else {
        Ok(())
    }
}

/// A fresh message id for a body that names none.
fn random_message_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut id = String::with_capacity(4 + 32);
    id.push_str("msg_");
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &str = r#"{"id":"evt_7b2","type":"audit.completed","created_at":"2026-01-15T19:04:12Z","data":{"bill_id":"bill_8f4","report_id":"report_33","status":"complete"}}"#;
    const TIMESTAMP: i64 = 1768503852;

    fn sign_lines(id: Option<&str>, timestamp: Option<i64>, body: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        sign_command(SECRET, id, timestamp, body, TIMESTAMP, &mut out).expect("signing works");
        String::from_utf8(out)
            .expect("the output is text")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn sign_prints_the_delivery_headers_of_the_known_answer() {
        assert_eq!(
            sign_lines(None, None, BODY.as_bytes()),
            [
                "content-type: application/json",
                "preflixai-event-id: evt_7b2",
                "preflixai-event-type: audit.completed",
                "preflixai-timestamp: 1768503852",
                "preflixai-signature: v1=182ff5def2e60ddb8e6728f243fcabbcb64a6adbb58feaaf083296f8b4f709a7",
                "webhook-id: evt_7b2",
                "webhook-timestamp: 1768503852",
                "webhook-signature: v1,kA+romu4ICcbcrvmmLi4V38riEZ/MvSeGHQL4pa3cZ8=",
            ]
        );
    }

    #[test]
    fn sign_output_verifies_with_either_set() {
        let lines = sign_lines(None, Some(TIMESTAMP - 60), BODY.as_bytes());
        assert_eq!(
            verify_command(SECRET, 300, &lines, BODY.as_bytes(), TIMESTAMP),
            Ok("ok: verified with the preflixai-signature set".to_owned())
        );
        let webhook: Vec<String> = lines
            .iter()
            .filter(|line| line.starts_with("webhook-"))
            .cloned()
            .collect();
        assert_eq!(
            verify_command(SECRET, 300, &webhook, BODY.as_bytes(), TIMESTAMP),
            Ok("ok: verified with the webhook-signature set".to_owned())
        );
    }

    #[test]
    fn verify_refuses_a_tampered_body_with_the_reason() {
        let lines = sign_lines(None, None, BODY.as_bytes());
        let tampered = BODY.replace("complete\"}", "pending\"}");
        assert_eq!(
            verify_command(SECRET, 300, &lines, tampered.as_bytes(), TIMESTAMP),
            Err("no signature matches this body and secret".to_owned())
        );
    }

    #[test]
    fn verify_refuses_a_stale_delivery_naming_the_tolerance() {
        let lines = sign_lines(None, None, BODY.as_bytes());
        let reason =
            verify_command(SECRET, 60, &lines, BODY.as_bytes(), TIMESTAMP + 61).unwrap_err();
        assert_eq!(
            reason,
            "the timestamp is too old (the tolerance is 60 seconds either way)"
        );
    }

    #[test]
    fn verify_refuses_other_secrets_and_bad_arguments() {
        let lines = sign_lines(None, None, BODY.as_bytes());
        let other = Secret::generate();
        assert!(verify_command(other.as_str(), 300, &lines, BODY.as_bytes(), TIMESTAMP).is_err());
        assert_eq!(
            verify_command("whsec_!", 300, &lines, BODY.as_bytes(), TIMESTAMP),
            Err("--secret: the secret is not `whsec_` followed by base64".to_owned())
        );
        assert_eq!(
            verify_command(
                SECRET,
                300,
                &["no colon".to_owned()],
                BODY.as_bytes(),
                TIMESTAMP
            ),
            Err("-H \"no colon\" is not `name: value`".to_owned())
        );
        assert_eq!(
            verify_command(SECRET, 300, &[], BODY.as_bytes(), TIMESTAMP),
            Err("missing header `preflixai-signature`".to_owned())
        );
    }

    #[test]
    fn sign_takes_the_id_and_timestamp_it_is_given() {
        let lines = sign_lines(Some("evt_given"), Some(42), BODY.as_bytes());
        assert!(lines.contains(&"preflixai-event-id: evt_given".to_owned()));
        assert!(lines.contains(&"webhook-id: evt_given".to_owned()));
        assert!(lines.contains(&"preflixai-timestamp: 42".to_owned()));
        assert_eq!(
            verify_command(SECRET, 300, &lines, BODY.as_bytes(), 42),
            Ok("ok: verified with the preflixai-signature set".to_owned())
        );
    }

    #[test]
    fn sign_makes_up_a_message_id_for_a_body_without_one() {
        let body = b"plain text, not JSON";
        let lines = sign_lines(None, None, body);
        assert!(!lines
            .iter()
            .any(|line| line.starts_with("preflixai-event-")));
        let id_line = lines
            .iter()
            .find(|line| line.starts_with("webhook-id: "))
            .expect("a webhook-id line");
        let id = &id_line["webhook-id: ".len()..];
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        let webhook: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("webhook-"))
            .cloned()
            .collect();
        assert!(verify_command(SECRET, 300, &webhook, body, TIMESTAMP).is_ok());
    }

    #[test]
    fn sign_refuses_ids_that_cannot_be_header_values() {
        let mut out = Vec::new();
        assert_eq!(
            sign_command(SECRET, Some("evt\n1"), None, b"{}", TIMESTAMP, &mut out),
            Err("--id must be printable ASCII".to_owned())
        );
        assert_eq!(
            sign_command(
                SECRET,
                None,
                None,
                br#"{"id":" evt_1"}"#,
                TIMESTAMP,
                &mut out
            ),
            Err("the body's `id` field must not start or end with a space; pass --id".to_owned())
        );
        assert!(sign_command("nope!", None, None, b"{}", TIMESTAMP, &mut out).is_err());
        assert!(out.is_empty());
    }
}
