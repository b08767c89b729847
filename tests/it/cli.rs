//! The admin CLI (`status`, `endpoints`, `events`, `dead-letters`): the real binary against a real daemon.

use crate::support::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// The output of a finished CLI run, as text.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the real binary with `args` and no config from the environment. The command blocks, so it
/// runs on the blocking pool while the in-process daemon keeps serving.
async fn cli(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(&args)
            .env_remove("PREFLIX_WEBHOOKD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .output()
            .expect("run the binary")
    })
    .await
    .expect("the CLI thread")
    .into()
}

/// The admin token file of a TestDaemon (`<tempdir>/db/admin.token`). On PostgreSQL the token
/// is in the database: it is handed to the CLI in a file, as the README tells operators to.
fn token_file(daemon: &TestDaemon) -> PathBuf {
    let own = daemon.config.storage.dir.join("admin.token");
    if !on_postgres() {
        return own;
    }
    let given = daemon.dir.path().join("cli.token");
    std::fs::write(&given, &daemon.token).unwrap();
    given
}

/// `args` followed by `--url http://<daemon> --token-file <token file>`; `endpoints add` takes the
/// daemon's URL as `--daemon-url`, since its `--url` is the endpoint's.
async fn admin(daemon: &TestDaemon, args: &[&str]) -> Run {
    let url = format!("http://{}", daemon.addr);
    let token = token_file(daemon);
    let url_option = if args.starts_with(&["endpoints", "add"]) {
        "--daemon-url"
    } else {
        "--url"
    };
    let mut all: Vec<&str> = args.to_vec();
    all.extend([url_option, &url, "--token-file", token.to_str().unwrap()]);
    cli(&all).await
}

#[tokio::test]
async fn status_lists_each_endpoint_with_its_health() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let ep = daemon
        .client()
        .create_endpoint("acme-health", "sandbox", &receiver.url("/hook"), &["*"])
        .await;
    let id = ep["id"].as_str().unwrap();

    let run = admin(&daemon, &["status"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("preflix-webhookd 0.1.0"), "{run}");
    assert!(
        run.stdout.contains("0 pending (0 retrying), 0 in flight"),
        "{run}"
    );
    assert!(run.stdout.contains("dead letters  0"), "{run}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no line for {id}: {run}"));
    assert!(
        line.contains("healthy") && line.contains("acme-health/sandbox"),
        "{line}"
    );
    assert!(line.contains(&receiver.url("/hook")), "{line}");
}

#[tokio::test]
async fn status_json_is_the_daemons_json() {
    let daemon = TestDaemon::start().await;
    let run = admin(&daemon, &["status", "--json"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let status: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"));
    assert_eq!(status["queue"]["pending"], 0, "{run}");
    assert!(status["endpoints"].is_array(), "{run}");
}

#[tokio::test]
async fn endpoints_add_then_list_then_rm() {
    let daemon = TestDaemon::start().await;
    let run = admin(
        &daemon,
        &[
            "endpoints",
            "add",
            "--partner",
            "acme-health",
            "--environment",
            "sandbox",
            "--url",
            "http://127.0.0.1:9/hook",
            "--types",
            "audit.completed,letter.ready",
            "--description",
            "case sync",
            "--ordered",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let id = run
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("ep_"))
        .unwrap_or_else(|| panic!("no endpoint id: {run}"))
        .to_string();
    let secret = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret: {run}"));
    assert!(secret.starts_with("whsec_"), "{run}");
    assert!(run.stdout.contains("Store this secret now"), "{run}");

    let (status, stored) = daemon.client().get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(
        stored["event_types"],
        json!(["audit.completed", "letter.ready"])
    );
    assert_eq!(stored["description"], "case sync");
    assert_eq!(stored["ordered"], true);
    let (_, secret_now) = daemon
        .client()
        .get(&format!("/v1/endpoints/{id}/secret"))
        .await;
    assert_eq!(secret_now["secret"], secret);

    let run = admin(&daemon, &["endpoints", "list", "--partner", "acme-health"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {run}"));
    assert!(
        line.contains("acme-health/sandbox") && line.contains("enabled"),
        "{line}"
    );
    assert!(
        line.contains("audit.completed,letter.ready") && line.contains("http://127.0.0.1:9/hook"),
        "{line}"
    );
    assert!(
        !run.stdout.contains(secret),
        "the list never shows the secret: {run}"
    );
    let run = admin(&daemon, &["endpoints", "list", "--partner", "someone-else"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), "no endpoints\n"),
        "{run}"
    );

    let run = admin(&daemon, &["endpoints", "rm", &id]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        daemon.client().get(&format!("/v1/endpoints/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_refused_request_prints_the_daemons_message_and_exits_1() {
    let daemon = TestDaemon::start().await;
    let run = admin(&daemon, &["endpoints", "rm", "ep_999999"]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("not found") && run.stderr.contains("not_found"),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");

    // A 422 from validation: a type outside the catalog.
    let run = admin(
        &daemon,
        &[
            "endpoints",
            "add",
            "--partner",
            "p",
            "--url",
            "http://127.0.0.1:9/",
            "--types",
            "no.such.type",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("unknown_event_type") && run.stderr.contains("HTTP 422"),
        "{run}"
    );

    // Usage errors are clap's: exit 2.
    let run = admin(&daemon, &["endpoints", "add", "--partner", "p"]).await;
    assert_eq!(run.code, Some(2), "{run}");
}

#[tokio::test]
async fn events_show_a_posted_event_with_its_delivery() {
    let receiver = TestReceiver::start().await;
    let daemon = TestDaemon::start().await;
    let c = daemon.client();
    let ep = c
        .create_endpoint(
            "acme-health",
            "sandbox",
            &receiver.url("/hook"),
            &["audit.completed"],
        )
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    let (status, body) = c
        .post_event(
            "acme-health",
            "sandbox",
            "evt_cli_1",
            "audit.completed",
            json!({"bill_id": "bill_8f4"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(1, Duration::from_secs(10)).await;
    wait_until_async(Duration::from_secs(10), || async {
        c.get("/v1/events/evt_cli_1").await.1["deliveries"][0]["status"] == "succeeded"
    })
    .await;

    let run = admin(&daemon, &["events", "show", "evt_cli_1"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("event     evt_cli_1"), "{run}");
    assert!(run.stdout.contains("type      audit.completed"), "{run}");
    assert!(run.stdout.contains("bill_8f4"), "{run}");
    assert!(
        run.stdout.contains(&format!("to {ep_id}  succeeded")),
        "{run}"
    );
    assert!(
        run.stdout.contains("attempt 1") && run.stdout.contains("HTTP 200"),
        "{run}"
    );

    let run = admin(&daemon, &["events", "redeliver", "evt_cli_1"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("queued 1 new delivery of evt_cli_1"),
        "{run}"
    );
    receiver.wait_for(2, Duration::from_secs(10)).await;

    let run = admin(&daemon, &["events", "show", "evt_nope"]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("event not found"), "{run}");
}

#[tokio::test]
async fn dead_letters_list_is_empty_on_a_fresh_daemon() {
    let daemon = TestDaemon::start().await;
    let run = admin(&daemon, &["dead-letters", "list"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), "no dead letters\n"),
        "{run}"
    );
    let run = admin(&daemon, &["dead-letters", "list", "--json"]).await;
    let page: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"));
    assert_eq!(page, json!({"dead_letters": [], "next": null}));
    let run = admin(&daemon, &["dead-letters", "retry"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("requeued 0 dead letters"), "{run}");
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let url = format!("http://{}", daemon.addr);
    let run = cli(&[
        "status",
        "--url",
        &url,
        "--token-file",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("unauthorized") && run.stderr.contains("--token-file"),
        "{run}"
    );

    // A token file that does not exist is never created.
    let missing = dir.path().join("missing.token");
    let run = cli(&[
        "status",
        "--url",
        &url,
        "--token-file",
        missing.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("does not exist") && run.stderr.contains("--token-file"),
        "{run}"
    );
    assert!(!missing.exists());
}

#[tokio::test]
async fn the_config_file_alone_finds_the_daemon_and_its_token() {
    let daemon = TestDaemon::start().await;
    daemon
        .client()
        .create_endpoint("acme-health", "sandbox", "http://127.0.0.1:9/hook", &["*"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"{}\"\ntoken_file = {:?}\n",
            daemon.addr,
            token_file(&daemon)
        ),
    );
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("acme-health/sandbox") && run.stdout.contains("healthy"),
        "{run}"
    );

    // Without server.token_file, the token is <storage.dir>/admin.token, as the daemon finds it;
    // when that does not exist, the CLI says to pass --token-file and creates nothing.
    let storage = dir.path().join("other-db");
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"{}\"\n\n[storage]\ndir = {:?}\n",
            daemon.addr, storage
        ),
    );
    let run = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("--token-file") && run.stderr.contains("storage.dir"),
        "{run}"
    );
    assert!(
        !storage.join("admin.token").exists(),
        "the CLI never generates a token"
    );
}

/// Writes `config.toml` in `dir` with `server_keys` under `[server]`.
fn write_config(dir: &Path, server_keys: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[server]\n{server_keys}")).unwrap();
    path
}

/// `status` and `dead-letters list` against a failing endpoint and a dead letter: relative times,
/// the last error in words, and no line wider than 100 columns, even with long ids and URLs.
#[tokio::test]
async fn status_and_dead_letters_say_when_and_why_in_100_columns() {
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(503));
    let gone = TestReceiver::start().await;
    gone.set_default(Answer::status(410));
    let daemon =
        TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(3600)]).await;
    let c = daemon.client();
    let long_path = format!("/{}", "very-long-path-segment/".repeat(6));
    let ep = c
        .create_endpoint(
            "a-partner-with-a-rather-long-name",
            "production",
            &failing.url(&long_path),
            &["*"],
        )
        .await;
    let id = ep["id"].as_str().unwrap().to_string();
    c.create_endpoint("gone", "sandbox", &gone.url("/"), &["*"])
        .await;
    c.post_event(
        "a-partner-with-a-rather-long-name",
        "production",
        "evt_waits_for_its_retry",
        "bill.created",
        json!({}),
    )
    .await;
    c.post_event("gone", "sandbox", "evt_dies", "bill.created", json!({}))
        .await;
    failing.wait_for(1, Duration::from_secs(20)).await;
    wait_until_async(Duration::from_secs(20), || async {
        c.get("/status").await.1["dead_letters"] == 1
    })
    .await;

    let run = admin(&daemon, &["status"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    for line in run.stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}\n{run}"
        );
    }
    let lines: Vec<&str> = run.stdout.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no line for {id}: {run}"));
    // Retry in an hour: "in 59m 59s", "in 59m 58s", ... or "in 1h" right at the start.
    assert!(lines[row].contains("failing for "), "{run}");
    assert!(
        lines[row].contains(" in 59m") || lines[row].contains(" in 1h"),
        "{run}"
    );
    assert!(
        lines[row + 1].starts_with("    last error: HTTP 503 (1 failure in a row, the last "),
        "{run}"
    );
    assert!(lines[row + 1].ends_with(" ago)"), "{run}");

    let run = admin(&daemon, &["dead-letters", "list"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    for line in run.stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}\n{run}"
        );
    }
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with("dl_"))
        .unwrap_or_else(|| panic!("no dead letter: {run}"));
    assert!(row.contains("evt_dies") && row.ends_with("s ago"), "{run}");
    assert!(
        run.stdout
            .contains("    bill.created, endpoint gone; last error: HTTP 410"),
        "{run}"
    );
}
