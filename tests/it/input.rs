//! Bad input (issue 9): duplicate JSON keys, id aliases, malformed endpoint URLs, custom header
//! names, times before 1970, transfer codings, refusals made by the HTTP layer, deadlines on
//! reading a request, idle connections and the connection cap (in-process and with the binary
//! under a lowered open-files limit).

use crate::support::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARTNER: &str = "input-partner";

/// An answer read off a raw connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: Value,
}

impl RawAnswer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn has_error_shape(&self) -> bool {
        self.body["error"]["code"].is_string()
            && self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
    }
}

/// Reads one response (head and announced body) from `stream`; `None` when the connection closed
/// before a whole response came.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Option<RawAnswer> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if answer.len() >= end + 4 + len {
                    let body = &answer[end + 4..end + 4 + len];
                    let status = head.split(' ').nth(1)?.parse().ok()?;
                    return Some(RawAnswer {
                        status,
                        head,
                        body: serde_json::from_slice(body).unwrap_or(Value::Null),
                    });
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// Sends `bytes` on a fresh connection and reads one answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_answer(&mut stream, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(bytes)))
}

/// Whether the daemon closes `stream` within `within` (reads what comes until the end).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn event(id: &str) -> Value {
    json!({"partner_id": PARTNER, "id": id, "type": "audit.completed", "data": {"n": 1}})
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, context: &str) {
    assert_eq!(got.0, status, "{context}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{context}: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: {}",
        got.1
    );
}

#[tokio::test]
async fn duplicate_json_keys_are_400_naming_the_key() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let post = |path: &'static str, body: &'static str| {
        let c = c.clone();
        async move {
            c.json(Method::POST, path, Some(body.as_bytes().to_vec()))
                .await
        }
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "/v1/events",
            r#"{"partner_id":"p1","partner_id":"p2","id":"dup-1","type":"audit.completed","data":{}}"#,
            "\"partner_id\"",
        ),
        (
            "/v1/events",
            r#"{"partner_id":"p1","id":"dup-2","type":"audit.completed","data":{"a":{"b":[{"c":1,"c":2}]}}}"#,
            "data.a.b[0]",
        ),
        (
            "/v1/events",
            r#"{"partner_id":"p1","id":"dup-3","type":"audit.completed","data":{"x":1,"x":1}}"#,
            "\"x\"",
        ),
        (
            "/v1/events/batch",
            r#"{"events":[{"partner_id":"p1","id":"dup-4","id":"dup-5","type":"audit.completed","data":{}}]}"#,
            "events[0]",
        ),
        (
            "/v1/endpoints",
            r#"{"partner_id":"p1","url":"http://127.0.0.1:9/","url":"http://127.0.0.1:10/","event_types":["*"]}"#,
            "\"url\"",
        ),
        (
            "/v1/endpoints",
            r#"{"partner_id":"p1","url":"http://127.0.0.1:9/","event_types":["*"],"headers":{"x-a":"1","x-a":"2"}}"#,
            "headers",
        ),
    ];
    for (path, body, names) in cases {
        let got = post(path, body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_json", body);
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
        assert!(message.contains("twice"), "{body}: {message}");
    }
    // Nothing was stored by any of them.
    assert_eq!(c.total_events().await, 0);
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"], json!([]));
    for id in ["dup-1", "dup-2", "dup-3", "dup-4", "dup-5"] {
        let (status, _) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    // The same key in different objects is fine.
    let (status, body) = c
        .post(
            "/v1/events",
            json!({"partner_id": "p1", "id": "ok-1", "type": "audit.completed", "data": {"id": "x", "partner_id": {"id": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn ids_have_one_spelling() {
    let d = TestDaemon::start().await;
    let c = d.client();
    // An endpoint whose id has hex letters, so that an upper-case alias differs from it.
    let mut id = String::new();
    for _ in 0..40 {
        let ep = c
            .create_endpoint(PARTNER, "production", "http://127.0.0.1:9/", &["*"])
            .await;
        id = ep["id"].as_str().unwrap().to_string();
        if id[3..].bytes().any(|b| b.is_ascii_alphabetic()) {
            break;
        }
    }
    let hex = id.strip_prefix("ep_").unwrap().to_string();
    assert!(hex.bytes().any(|b| b.is_ascii_alphabetic()), "{id}");
    assert!(hex.starts_with('0'), "{id}");
    let (status, _) = c.get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    // Other spellings of the same number must not reach it.
    let aliases = [
        format!("ep_+{}", &hex[1..]),
        format!("ep_{}", hex.to_uppercase()),
        format!("ep_{}", &hex[1..]),
        format!("ep_0{hex}"),
        format!("EP_{hex}"),
    ];
    for alias in &aliases {
        let got = c.get(&format!("/v1/endpoints/{alias}")).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found", alias);
        let got = c.get(&format!("/v1/endpoints/{alias}/secret")).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found", alias);
    }
    // Redeliver to an alias of a real endpoint: 404, not a delivery.
    let (status, body) = c.post("/v1/events", event("alias-ev")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for alias in &aliases {
        let got = c
            .post(
                "/v1/events/alias-ev/redeliver",
                json!({"endpoint_id": alias}),
            )
            .await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found", alias);
    }
    // Dead-letter ids: dl_ with a sign or upper case.
    for alias in ["dl_+000000000000001", "dl_000000000000000A"] {
        let got = c.delete(&format!("/v1/dead-letters/{alias}")).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found", alias);
        let got = c
            .post(&format!("/v1/dead-letters/{alias}/retry"), json!({}))
            .await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found", alias);
    }
    let got = c.get("/v1/dead-letters?after=dl_000000000000000A").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_request", "cursor");
    // PATCH and DELETE through an alias change nothing.
    let got = c
        .patch(
            &format!("/v1/endpoints/ep_{}", hex.to_uppercase()),
            json!({"description": "x"}),
        )
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", "patch");
    let (status, _) = c.delete(&format!("/v1/endpoints/ep_+{}", &hex[1..])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, got) = c.get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the endpoint was deleted through an alias"
    );
    assert_eq!(got["description"], "", "changed through an alias");
}

#[tokio::test]
async fn malformed_urls_are_422_even_with_private_networks_allowed() {
    // The test config allows private networks (receivers are on loopback).
    let d = TestDaemon::start().await;
    assert!(d.config.delivery.allow_private_networks);
    let c = d.client();
    for url in [
        "http://[127.0.0.1]/",
        "http://[fe80::1%25eth0]/",
        "http://127.0.0.1/caf\u{e9}",
        "http://127.0.0.1/?q=\u{fc}",
        "http://127.1/",
        "http://0x7f.0.0.1/",
        "http://2130706433/",
        "http://127.0.0.1:080/",
        "http://127.0.0.1/%zz",
        "http://127.0.0.1/a\\b",
    ] {
        let got = c
            .post(
                "/v1/endpoints",
                json!({"partner_id": PARTNER, "environment": "sandbox", "url": url, "event_types": ["*"]}),
            )
            .await;
        assert_error(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_endpoint_url",
            url,
        );
    }
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"], json!([]));
    // PATCH is checked the same way.
    let ep = c
        .create_endpoint(PARTNER, "sandbox", "http://127.0.0.1:9/hook", &["*"])
        .await;
    let path = format!("/v1/endpoints/{}", ep["id"].as_str().unwrap());
    let got = c
        .patch(&path, json!({"url": "http://[127.0.0.1]:9/"}))
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_endpoint_url",
        "patch",
    );
    let (_, again) = c.get(&path).await;
    assert_eq!(again["url"], "http://127.0.0.1:9/hook");
}

#[tokio::test]
async fn custom_header_names_are_capped_and_unique() {
    let d = TestDaemon::start().await;
    let c = d.client();
    let body = |headers: Value| json!({"partner_id": PARTNER, "environment": "sandbox", "url": "http://127.0.0.1:9/", "event_types": ["*"], "headers": headers});
    let long = format!("x-{}", "a".repeat(1023));
    assert_eq!(long.len(), 1025);
    let got = c.post("/v1/endpoints", body(json!({&long: "v"}))).await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_header",
        "long name",
    );
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 300,
        "the message repeats the name: {message}"
    );
    // Names differing only in case are one header.
    let got = c
        .post(
            "/v1/endpoints",
            body(json!({"X-Route": "a", "x-route": "b"})),
        )
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_header",
        "case",
    );
    // Connection-level names would change the request's framing.
    for name in [
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "expect",
        "proxy-connection",
    ] {
        let got = c.post("/v1/endpoints", body(json!({name: "x"}))).await;
        assert_error(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_header",
            name,
        );
    }
    let (_, list) = c.get("/v1/endpoints").await;
    assert_eq!(list["endpoints"], json!([]));
    // 1 KiB exactly is allowed, for the name and for the value.
    let name = format!("x-{}", "a".repeat(1022));
    let ep = c
        .post("/v1/endpoints", body(json!({&name: "v".repeat(1024)})))
        .await;
    assert_eq!(ep.0, StatusCode::CREATED, "{}", ep.1);
}

#[tokio::test]
async fn created_at_before_1970_is_stored_and_signed_as_given() {
    let receiver = TestReceiver::start().await;
    let d = TestDaemon::start().await;
    let c = d.client();
    let ep = c
        .create_endpoint(PARTNER, "production", &receiver.url("/hook"), &["*"])
        .await;
    let secret = ep["secret"].as_str().unwrap().to_string();
    for (id, created_at) in [
        ("moon", "1969-07-20T20:17:40Z"),
        ("year-one", "0001-01-01T00:00:00.5+01:00"),
    ] {
        let mut ev = event(id);
        ev["created_at"] = json!(created_at);
        let (status, body) = c.post("/v1/events", ev).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created_at}: {body}");
        let (_, got) = c.get(&format!("/v1/events/{id}")).await;
        assert_eq!(got["created_at"], created_at);
    }
    let received = receiver.wait_for(2, Duration::from_secs(30)).await;
    let verifier = preflix_webhookd::signing::Verifier::new(vec![secret.parse().unwrap()]);
    for r in &received {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            ["1969-07-20T20:17:40Z", "0001-01-01T00:00:00.5+01:00"]
                .contains(&body["created_at"].as_str().unwrap()),
            "{body}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        verifier
            .verify(&r.headers, &r.body, now)
            .expect("the delivery verifies");
    }
    // Still refused: text that is not RFC 3339, with a message saying the form.
    let mut ev = event("bad-time");
    ev["created_at"] = json!("1969-07-20 20:17");
    let got = c.post("/v1/events", ev).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_request", "bad time");
    assert!(got.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("RFC 3339"));
}

#[tokio::test]
async fn unknown_transfer_codings_are_501() {
    let d = TestDaemon::start().await;
    let body = event("te-1").to_string();
    for coding in ["gzip, chunked", "deflate,chunked", "br , chunked"] {
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
             transfer-encoding: {coding}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            d.token,
            body.len()
        );
        let got = exchange(d.addr, request.as_bytes()).await;
        assert_eq!(got.status, 501, "{coding}: {got:?}");
        assert_eq!(got.code(), "unsupported_transfer_encoding", "{got:?}");
        assert!(got.head.to_ascii_lowercase().contains("connection: close"));
    }
    assert_eq!(d.client().total_events().await, 0);
    // Plain chunked is fine.
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        d.token,
        body.len()
    );
    let got = exchange(d.addr, request.as_bytes()).await;
    assert_eq!(got.status, 202, "{got:?}");
}

#[tokio::test]
async fn refusals_of_the_http_layer_carry_the_error_shape() {
    let d = TestDaemon::start().await;
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(500_000));
    let cases: Vec<(&str, String, u16)> = vec![
        ("HTTP/0.9", "GET /healthz\r\n\r\n".into(), 400),
        ("garbage", "\x01\x02 nonsense\r\n\r\n".into(), 400),
        ("bad header", "GET /healthz HTTP/1.1\r\nhost x\r\n\r\n".into(), 400),
        (
            "two content-lengths",
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}"
                .into(),
            400,
        ),
        (
            "bad content-length",
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n".into(),
            400,
        ),
        (
            "chunked not last",
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n".into(),
            400,
        ),
        (
            "URI too long",
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)),
            414,
        ),
        (
            "header flood",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "huge header",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{huge_header}\r\n"),
            431,
        ),
    ];
    for (name, request, status) in &cases {
        let got = exchange(d.addr, request.as_bytes()).await;
        assert_eq!(got.status, *status, "{name}: {got:?}");
        assert!(got.has_error_shape(), "{name}: {got:?}");
        assert!(
            got.head.contains("content-type: application/json"),
            "{name}: {got:?}"
        );
    }
    // A bad request after a good one on the same kept-alive connection gets the shape too.
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut stream, Duration::from_secs(30))
        .await
        .expect("first answer");
    assert_eq!(first.status, 200);
    stream
        .write_all(b"HEAD /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // A HEAD answer has a content-length but no body: read the head alone.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 401"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost x\r\n\r\n")
        .await
        .unwrap();
    let third = read_answer(&mut stream, Duration::from_secs(30))
        .await
        .expect("third answer");
    assert_eq!(third.status, 400, "{third:?}");
    assert!(third.has_error_shape(), "{third:?}");
    // The daemon is unharmed.
    let (status, _, _) = d.client().raw(Method::GET, "/healthz", None, false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_the_connection_closes() {
    let d = TestDaemon::start_with(|c| c.http.body_timeout = Duration::from_secs(2)).await;
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n",
        d.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 300 ms, as a slow-loris client would; it would take a minute to finish.
    let mut got = None;
    for _ in 0..200 {
        if stream.write_all(b" ").await.is_err() {
            break;
        }
        if let Some(answer) = read_answer(&mut stream, Duration::from_millis(300)).await {
            got = Some(answer);
            break;
        }
    }
    let elapsed = started.elapsed();
    let got = got.expect("a 408 answer");
    assert_eq!(got.status, 408, "{got:?}");
    assert_eq!(got.code(), "request_timeout");
    assert!(got.head.to_ascii_lowercase().contains("connection: close"));
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    assert!(
        elapsed < Duration::from_secs(20),
        "the connection was kept for {elapsed:?}"
    );
    assert_eq!(d.client().total_events().await, 0);
}

#[tokio::test]
async fn a_trickled_head_gets_408_and_idle_connections_close() {
    let d = TestDaemon::start_with(|c| c.http.header_timeout = Duration::from_secs(1)).await;
    // A head sent one header every 300 ms.
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = None;
    for i in 0..100 {
        if stream
            .write_all(format!("x-h{i}: v\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        if let Some(answer) = read_answer(&mut stream, Duration::from_millis(300)).await {
            got = Some(answer);
            break;
        }
    }
    let got = got.expect("a 408 answer");
    assert_eq!(got.status, 408, "{got:?}");
    assert_eq!(got.code(), "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);

    // An idle kept-alive connection is closed after the same time, without an answer.
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(first.expect("answer").status, 200);
    let idle = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await);
    assert!(idle.elapsed() >= Duration::from_millis(900));
    // A connection that never sends a byte, too.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "an idle connection got {:?}", &buf[..n]);
}

#[tokio::test]
async fn idle_connections_close_by_default_well_before_30s() {
    let d = TestDaemon::start().await;
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut stream, Duration::from_secs(30))
        .await
        .is_some());
    let idle = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(20)).await,
        "an idle keep-alive connection was kept for 20 s"
    );
    assert!(
        idle.elapsed() >= Duration::from_secs(5),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_daemon_keeps_serving() {
    let d = TestDaemon::start_with(|c| c.http.max_connections = Some(8)).await;
    // Wait for the probes of start-up to be gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_answer(&mut s, Duration::from_secs(30)).await;
        assert_eq!(got.expect("answer").status, 200);
        held.push(s);
    }
    for _ in 0..20 {
        let got = exchange(d.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(got.status, 503, "{got:?}");
        assert_eq!(got.code(), "too_many_connections");
        assert!(
            got.head.to_ascii_lowercase().contains("retry-after:"),
            "{got:?}"
        );
    }
    drop(held);
    let c = d.client();
    wait_until_async(Duration::from_secs(10), || async {
        let got = exchange(c.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        got.status == 200
    })
    .await;
}

/// The binary under `ulimit -n`: the soft limit is raised to the hard one at start, and with a
/// hard limit of 512, holding 600 idle connections neither exhausts the open files nor stops the
/// daemon from answering: the ones over the cap get 503 at once, and it serves again when they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_raises_its_open_files_limit_and_caps_connections() {
    // This test holds hundreds of connections itself, beside the other tests' daemons.
    let _ = rlimit::increase_nofile_limit(8192);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\ndir = \"{}\"\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let hard = 512;
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 128 && ulimit -Hn {hard} && exec \"$0\" serve --config \"$1\""
        ))
        .arg(binary())
        .arg(&config)
        .env_remove("PREFLIX_WEBHOOKD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the daemon under sh");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let pid = child.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(child.0.try_wait().unwrap().is_none(), "the daemon exited");
        if let Ok(mut s) = TcpStream::connect(addr).await {
            s.write_all(healthz).await.unwrap();
            if read_answer(&mut s, Duration::from_secs(5))
                .await
                .is_some_and(|a| a.status == 200)
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{line}");

    // 600 connections, each sending a request: every one is answered (200 or 503) promptly.
    let mut held = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    for _ in 0..600 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(healthz).await.unwrap();
        let got = read_answer(&mut s, Duration::from_secs(10))
            .await
            .expect("every connection is answered");
        match got.status {
            200 => held.push(s),
            503 => {
                assert_eq!(got.code(), "too_many_connections", "{got:?}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {got:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        refused > 0,
        "600 connections under a limit of 512 were all served"
    );
    assert!(held.len() >= 64, "only {} connections served", held.len());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < hard as usize, "{fds} open files");
    println!(
        "limit {hard}: {} served, {refused} refused with 503, {fds} files open, {took:?}",
        held.len()
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(healthz).await.unwrap();
        if read_answer(&mut s, Duration::from_secs(5))
            .await
            .is_some_and(|a| a.status == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.0.try_wait().unwrap().is_none(), "the daemon exited");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let d = TestDaemon::start_with(|c| c.http.body_timeout = Duration::from_secs(2)).await;
    let stream = TcpStream::connect(d.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Pipelined requests whose answers (the catalog, a few KiB each) are never read: the socket
    // buffers fill and the daemon's writes stop making progress.
    let request = format!(
        "GET /v1/event-types HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        d.token
    );
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        let batch = request.repeat(100);
        while started.elapsed() < Duration::from_secs(40) {
            if writer.write_all(batch.as_bytes()).await.is_err() {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    // Once the daemon gives up, the writes fail (the connection is reset or closed).
    let gave_up_after = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("the writer ends")
        .unwrap();
    assert!(
        gave_up_after < Duration::from_secs(30),
        "the daemon kept a connection that does not read for {gave_up_after:?}"
    );
    // What was written before is still readable, then the end.
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection did not end");
    let (status, _, _) = d.client().raw(Method::GET, "/healthz", None, false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn expect_100_continue_passes_through() {
    // curl sends `expect: 100-continue` with bodies over 1 KiB: the interim answer is no refusal.
    let d = TestDaemon::start().await;
    let body = json!({"partner_id": PARTNER, "id": "continue-1", "type": "audit.completed",
                      "data": {"pad": "x".repeat(2000)}})
    .to_string();
    let mut stream = TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        d.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        interim.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&interim).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let got = read_answer(&mut stream, Duration::from_secs(30))
        .await
        .expect("an answer");
    assert_eq!(got.status, 202, "{got:?}");
    // The same connection serves the next request.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let next = read_answer(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(next.expect("an answer").status, 200);
}

#[tokio::test]
async fn the_authorization_header_has_one_reading() {
    let d = TestDaemon::start().await;
    let addr = d.addr;
    let get = |auth: Vec<String>| async move {
        let mut request = String::from("GET /v1/endpoints HTTP/1.1\r\nhost: x\r\n");
        for a in auth {
            request.push_str(&format!("authorization: {a}\r\n"));
        }
        request.push_str("\r\n");
        exchange(addr, request.as_bytes()).await
    };
    // The scheme name in any case, as the contract says.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let got = get(vec![format!("{scheme} {}", d.token)]).await;
        assert_eq!(got.status, 200, "{scheme}: {got:?}");
    }
    // Twice, even with the right token once: refused, whatever order.
    for pair in [
        vec![format!("Bearer {}", d.token), "Bearer wrong".to_string()],
        vec!["Bearer wrong".to_string(), format!("Bearer {}", d.token)],
        vec![format!("Bearer {}", d.token), format!("Bearer {}", d.token)],
    ] {
        let got = get(pair).await;
        assert_eq!(got.status, 400, "{got:?}");
        assert_eq!(got.code(), "invalid_request");
    }
    let got = get(vec![format!("Basic {}", d.token)]).await;
    assert_eq!(got.status, 401, "{got:?}");
}

#[tokio::test]
async fn compressed_bodies_are_415() {
    let d = TestDaemon::start().await;
    let body = event("gz-1").to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-encoding: gzip\r\ncontent-length: {}\r\n\r\n{body}",
        d.token,
        body.len()
    );
    let got = exchange(d.addr, request.as_bytes()).await;
    assert_eq!(got.status, 415, "{got:?}");
    assert_eq!(got.code(), "unsupported_content_encoding");
    assert_eq!(d.client().total_events().await, 0);
    let request = request.replace("content-encoding: gzip", "content-encoding: identity");
    let got = exchange(d.addr, request.as_bytes()).await;
    assert_eq!(got.status, 202, "{got:?}");
}
