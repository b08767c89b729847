//! Tests of `admin`.

use super::*;
use crate::config::Config;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn urls_are_split_for_connecting_and_requests() {
    let url = BaseUrl::parse("http://127.0.0.1:8790").unwrap();
    assert_eq!(
        (url.host.as_str(), url.port, url.prefix.as_str()),
        ("127.0.0.1", 8790, "")
    );
    let url = BaseUrl::parse("localhost:9000/hooks/").unwrap();
    assert_eq!(
        (url.host.as_str(), url.port, url.prefix.as_str()),
        ("localhost", 9000, "/hooks")
    );
    assert_eq!(url.authority, "localhost:9000");
    let url = BaseUrl::parse("http://[::1]:8790").unwrap();
    assert_eq!(
        (url.host.as_str(), url.authority.as_str()),
        ("::1", "[::1]:8790")
    );
    assert_eq!(BaseUrl::parse("http://example.test").unwrap().port, 80);
    assert!(BaseUrl::parse("https://example.test")
        .unwrap_err()
        .to_string()
        .contains("plain HTTP only"));
    assert!(BaseUrl::parse("ftp://example.test").is_err());
    assert!(BaseUrl::parse("http://user:pw@example.test").is_err());
}

#[test]
fn a_wildcard_listen_address_is_reached_on_loopback() {
    let url = BaseUrl::from_listen("0.0.0.0:8790".parse().unwrap()).unwrap();
    assert_eq!(url.display, "http://127.0.0.1:8790");
    let url = BaseUrl::from_listen("[::]:8790".parse().unwrap()).unwrap();
    assert_eq!(url.display, "http://[::1]:8790");
    let url = BaseUrl::from_listen("10.1.2.3:80".parse().unwrap()).unwrap();
    assert_eq!(url.display, "http://10.1.2.3:80");
    assert!(BaseUrl::from_listen("127.0.0.1:0".parse().unwrap()).is_err());
}

#[test]
fn a_missing_token_is_never_generated() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.dir = dir.path().join("db");
    let error = token_from_config(&config, &no_env).unwrap_err().to_string();
    assert!(
        error.contains("--token-file") && error.contains("storage.dir"),
        "{error}"
    );
    assert!(!config.storage.dir.join("admin.token").exists());
    assert!(!config.storage.dir.exists());

    std::fs::create_dir_all(&config.storage.dir).unwrap();
    std::fs::write(config.storage.dir.join("admin.token"), "abc123\n").unwrap();
    assert_eq!(token_from_config(&config, &no_env).unwrap().token, "abc123");

    std::fs::write(config.storage.dir.join("admin.token"), "").unwrap();
    let error = token_from_config(&config, &no_env).unwrap_err().to_string();
    assert!(error.contains("(from storage.dir) is empty"), "{error}");

    let error = read_token(dir.path().join("nope"), "--token-file", &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nope (from --token-file) does not exist"),
        "{error}"
    );
}

#[test]
fn the_credentials_directory_is_used_before_storage_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin_token"), "from-credentials").unwrap();
    let credentials = dir.path().to_string_lossy().into_owned();
    let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| credentials.clone());
    let mut config = Config::default();
    config.storage.dir = dir.path().join("db");
    assert_eq!(
        token_from_config(&config, &env).unwrap().token,
        "from-credentials"
    );
    assert!(!config.storage.dir.exists());
}

#[test]
fn queries_and_paths_are_encoded() {
    assert_eq!(query_string(&[("a", None), ("b", None)]), "");
    assert_eq!(
        query_string(&[
            ("partner_id", Some("acme")),
            ("x", None),
            ("t", Some("a b&c"))
        ]),
        "?partner_id=acme&t=a%20b%26c"
    );
    assert_eq!(encode("evt_7b2.x-~"), "evt_7b2.x-~");
    assert_eq!(encode("a/b"), "a%2Fb");
}

#[test]
fn status_is_summarised_with_one_line_per_endpoint() {
    // 2026-01-15T19:04:12Z
    let now = crate::model::parse_time("2026-01-15T19:04:12Z").unwrap();
    let status = json!({"version": "0.1.0", "uptime_seconds": 3725, "storage": {"dir": "/var/lib/x", "bytes": 1_572_864},
        "queue": {"pending": 4, "in_flight": 2, "retrying": 1, "oldest_pending_age_seconds": 303},
        "dead_letters": 7,
        "totals": {"events": 12, "deliveries_succeeded": 10, "attempts_failed": 3},
        "endpoints": [
            {"id": "ep_1", "partner_id": "acme-health", "environment": "production", "url": "https://a.example/h", "enabled": true,
             "health": "healthy", "consecutive_failures": 0, "last_status_code": 200, "last_success_at": null, "last_failure_at": null, "pending": 0},
            {"id": "ep_22", "partner_id": "b", "environment": "sandbox", "url": "http://b.example/\u{1b}[2J", "enabled": true,
             "health": "failing", "consecutive_failures": 5, "last_status_code": null, "last_success_at": null,
             "last_failure_at": "2026-01-15T19:03:12Z", "pending": 4, "failing_since": "2026-01-15T17:04:12Z",
             "last_error": "connection refused", "next_attempt_at": "2026-01-15T19:08:12Z"}]});
    let text = render_status_at(&status, now);
    assert!(text.contains("preflix-webhookd 0.1.0, up 1h 2m"), "{text}");
    assert!(text.contains("/var/lib/x (1.5 MiB)"), "{text}");
    assert!(
        text.contains("4 pending (1 retrying), 2 in flight, oldest waiting 5m 3s"),
        "{text}"
    );
    assert!(text.contains("dead letters  7"), "{text}");
    assert!(
        text.contains("12 events, 10 deliveries succeeded, 3 attempts failed"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("ENDPOINT"))
        .unwrap();
    assert!(
        lines[header + 1].starts_with(
            "ep_1      acme-health/production  healthy         0        -      https://a.example/h"
        ),
        "{text}"
    );
    assert!(
        lines[header + 2]
            .starts_with("ep_22     b/sandbox               failing for 2h  4        in 4m  "),
        "{text}"
    );
    assert_eq!(
        lines[header + 3],
        "    last error: connection refused (5 failures in a row, the last 1m ago)"
    );
    assert!(
        !text.contains('\u{1b}'),
        "control characters are escaped: {text}"
    );
}

/// Long ids, URLs and errors are cut so that every line fits in 100 columns.
#[test]
fn status_and_dead_letters_fit_in_100_columns() {
    let now = crate::model::parse_time("2026-01-15T19:04:12Z").unwrap();
    let long = "x".repeat(300);
    let status = json!({"version": "0.1.0", "uptime_seconds": 1, "storage": {"dir": format!("/{long}"), "bytes": 1},
        "queue": {"pending": 1, "in_flight": 0, "retrying": 1, "oldest_pending_age_seconds": 7200},
        "dead_letters": 1, "totals": {"events": 1, "deliveries_succeeded": 0, "attempts_failed": 1},
        "endpoints": [{"id": "ep_0000000000000001", "partner_id": long, "environment": "production",
             "url": format!("https://{long}.example/"), "enabled": true, "health": "failing", "consecutive_failures": 1,
             "last_status_code": 503, "last_success_at": null, "last_failure_at": "2026-01-15T19:04:12Z", "pending": 1,
             "failing_since": "2026-01-15T19:04:12Z", "last_error": long, "next_attempt_at": "2026-01-15T23:04:12Z"}]});
    let page = json!({"dead_letters": [{"id": "dl_0000000000000003", "delivery_id": "dlv_0000000000000009", "event_id": long,
        "event_type": "bill.created", "endpoint_id": "ep_0000000000000001", "partner_id": "acme", "url": "http://x", "attempts": 10,
        "last_status_code": null, "last_error": long, "first_attempt_at": null, "dead_at": "2026-01-13T19:04:12Z",
        "reason": "retries_exhausted"}], "next": null});
    for text in [
        render_status_at(&status, now),
        render_dead_letters_at(&page, now),
    ] {
        for line in text.lines() {
            assert!(
                line.chars().count() <= 100,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(text.contains('…'), "{text}");
    }
    assert!(render_status_at(&status, now).contains("in 4h"));
}

#[test]
fn an_event_shows_its_deliveries_and_attempts() {
    let event = json!({"id": "evt_1", "partner_id": "acme", "environment": "sandbox", "type": "audit.completed",
        "created_at": "2026-01-15T19:04:12Z", "received_at": "2026-01-15T19:04:12Z", "data": {"k": "v"},
        "deliveries": [{"id": "dlv_1", "endpoint_id": "ep_1", "status": "pending", "next_attempt_at": "2026-01-15T19:09:12Z",
            "attempts": [{"n": 1, "at": "2026-01-15T19:04:13Z", "status_code": null, "duration_ms": 3, "error": "connection refused", "response_snippet": null},
                         {"n": 2, "at": "2026-01-15T19:04:18Z", "status_code": 500, "duration_ms": 12, "error": null, "response_snippet": "oops\n"}]}]});
    let text = render_event(&event);
    assert!(
        text.contains("dlv_1  to ep_1  pending, next attempt 2026-01-15T19:09:12Z"),
        "{text}"
    );
    assert!(
        text.contains("attempt 1  2026-01-15T19:04:13Z  no response: connection refused  3 ms"),
        "{text}"
    );
    assert!(
        text.contains("attempt 2  2026-01-15T19:04:18Z  HTTP 500  12 ms  \"oops\""),
        "{text}"
    );
    assert!(text.contains("data      {\"k\":\"v\"}"), "{text}");
}

#[test]
fn dead_letters_show_the_cursor_of_the_next_page() {
    let page = json!({"dead_letters": [{"id": "dl_3", "delivery_id": "dlv_9", "event_id": "evt_1", "event_type": "bill.created",
        "endpoint_id": "ep_1", "partner_id": "acme", "url": "http://x", "attempts": 3, "last_status_code": null,
        "last_error": "timed out", "first_attempt_at": null, "dead_at": "2026-01-15T19:04:12Z", "reason": "retries_exhausted"}],
        "next": "dl_3"});
    let now = crate::model::parse_time("2026-01-15T21:04:12Z").unwrap();
    let text = render_dead_letters_at(&page, now);
    assert!(
        text.contains("dl_3  evt_1  ep_1      3         2h ago"),
        "{text}"
    );
    assert!(
        text.contains("    bill.created, retries exhausted; last error: timed out"),
        "{text}"
    );
    assert!(text.contains("more follow: pass --after dl_3"), "{text}");
    assert_eq!(
        render_dead_letters(&json!({"dead_letters": [], "next": null})),
        "no dead letters\n"
    );
}

#[test]
fn durations_and_sizes_are_short() {
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(59), "59s");
    assert_eq!(duration(61), "1m 1s");
    assert_eq!(duration(7260), "2h 1m");
    assert_eq!(duration(240), "4m");
    assert_eq!(duration(7200), "2h");
    assert_eq!(duration(90_000), "1d 1h");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
}

/// `/status` while the store cannot be reached (PostgreSQL down): the fault is printed, the figures
/// the daemon could not read show as `-`.
#[test]
fn status_during_a_storage_fault_says_so() {
    let v = json!({
        "version": "0.1.0", "uptime_seconds": 5, "backend": "postgres", "node": "node-a",
        "storage": {"bytes": null, "fault": {"error": "storage_unavailable",
                    "detail": "PostgreSQL cannot be reached"}},
        "queue": null, "dead_letters": null, "totals": null, "nodes": null, "endpoints": [],
    });
    let out = render_status_at(&v, 0);
    assert!(
        out.contains("STORAGE FAULT storage_unavailable: PostgreSQL cannot be reached"),
        "{out}"
    );
    assert!(out.contains("dead letters  -"), "{out}");
}
