//! Tests of `config`.

use super::*;
use std::collections::HashMap;

const EXAMPLE: &str = include_str!("../../systemd/preflix-webhookd.toml");

/// An `env` function backed by a fixed list, so no test touches the process environment.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn error_of(text: &str) -> String {
    Config::from_toml_str(text)
        .expect_err("the text should be refused")
        .to_string()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults_equal_the_spec() {
    let config = Config::default();
    assert_eq!(config.server.listen, "127.0.0.1:8790".parse().unwrap());
    assert_eq!(config.server.token_file, None);
    assert_eq!(config.server.max_body_bytes, 262_144);
    assert_eq!(config.server.shutdown_grace, secs(10));
    assert_eq!(config.storage.dir, PathBuf::from("data/db"));
    assert_eq!(config.storage.max_bytes, 0);
    assert_eq!(config.storage.backend, StorageBackend::Sled);
    assert_eq!(config.storage.postgres.url, None);
    assert_eq!(config.storage.postgres.url_file, None);
    assert_eq!(config.storage.postgres.pool_size, 16);
    assert_eq!(config.storage.postgres.lease, secs(60));
    assert_eq!(config.storage.postgres.node_name, None);
    assert_eq!(config.delivery.timeout, secs(15));
    assert_eq!(config.delivery.connect_timeout, secs(5));
    assert_eq!(config.delivery.max_in_flight, 256);
    assert!(!config.delivery.allow_private_networks);
    assert!(config.delivery.require_https);
    assert!(!config.delivery.use_system_roots);
    let hours = |h: u64| secs(h * 3600);
    let schedule = [
        secs(5),
        secs(300),
        secs(1800),
        hours(2),
        hours(5),
        hours(10),
        hours(14),
        hours(20),
        hours(24),
    ];
    assert_eq!(config.retry.schedule, schedule);
    assert_eq!(config.retry.jitter, 0.2);
    assert_eq!(config.retry.max_retry_after, hours(24));
    assert_eq!(config.endpoints.disable_after, hours(5 * 24));
    assert_eq!(config.retention.events, hours(30 * 24));
    assert_eq!(config.retention.dead_letters, hours(30 * 24));
    assert_eq!(config.retention.interval, secs(60));
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.attempts_per_delivery(), 10);
    assert_eq!(config.notifications.url, None);
    assert_eq!(config.notifications.secret_file, None);
    assert_eq!(config.notifications.stalled_after, secs(15 * 60));
}

#[test]
fn a_notification_url_follows_the_production_endpoint_rules() {
    let err =
        Config::from_toml_str("[notifications]\nurl = \"http://ops.example/hook\"").unwrap_err();
    assert_eq!(err.key(), Some("notifications.url"));
    assert!(err.to_string().contains("require_https"), "{err}");
    let err = Config::from_toml_str("[notifications]\nurl = \"ops\"").unwrap_err();
    assert_eq!(err.key(), Some("notifications.url"));
    let config = Config::from_toml_str("[notifications]\nurl = \"\"").unwrap();
    assert_eq!(config.notifications.url, None);
    let err = Config::from_toml_str("[notifications]\nstalled_after = \"0s\"").unwrap_err();
    assert_eq!(err.key(), Some("notifications.stalled_after"));
}

#[test]
fn the_notification_secret_is_generated_once_private_and_in_whsec_form() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.dir = dir.path().join("db");
    let none = |_: &str| None;
    let first = load_notification_secret(&config, &none).unwrap();
    assert!(first.generated);
    assert_eq!(first.source, dir.path().join("db/notifications.secret"));
    let key = first.secret.strip_prefix("whsec_").expect("whsec_ form");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    let mode = std::fs::metadata(&first.source)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = load_notification_secret(&config, &none).unwrap();
    assert!(!again.generated);
    assert_eq!(again.secret, first.secret);

    // A credential wins over the generated file; a configured file wins over both.
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("notifications_secret"), "whsec_AAAA\n").unwrap();
    let creds_dir = creds.path().to_str().unwrap().to_owned();
    let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds_dir.clone());
    assert_eq!(
        load_notification_secret(&config, &env).unwrap().secret,
        "whsec_AAAA"
    );
    config.notifications.secret_file = Some(creds.path().join("missing"));
    let err = load_notification_secret(&config, &env).unwrap_err();
    assert_eq!(err.key(), Some("notifications.secret_file"));
    std::fs::write(creds.path().join("bad"), "not base64!\n").unwrap();
    config.notifications.secret_file = Some(creds.path().join("bad"));
    let err = load_notification_secret(&config, &env).unwrap_err();
    assert!(err.to_string().contains("notification secret"), "{err}");
}

#[test]
fn empty_text_gives_the_defaults() {
    assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    assert_eq!(
        Config::from_toml_str("[server]\n[log]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn a_file_with_every_key_parses() {
    let text = r#"
        [server]
        listen = "[::1]:9000"
        token_file = "/etc/token"
        max_body_bytes = 1024
        shutdown_grace = "0s"
        [storage]
        backend = "postgres"
        dir = "/srv/db"
        max_bytes = 1000000
        master_key_file = "/etc/key"
        previous_master_key_file = ""
        [storage.postgres]
        url = "postgres://webhookd@db1/webhookd"
        url_file = "/etc/pg_url"
        pool_size = 4
        lease = "30s"
        node_name = "node-a"
        [delivery]
        timeout = "250ms"
        connect_timeout = "20s"
        max_in_flight = 1
        allow_private_networks = true
        require_https = false
        use_system_roots = true
        extra_roots_file = "/etc/roots.pem"
        [retry]
        schedule = ["1s", "2m"]
        jitter = 1
        max_retry_after = "1h"
        [endpoints]
        disable_after = "2d"
        [retention]
        events = "7d"
        dead_letters = "14d"
        interval = "30s"
        [notifications]
        url = "http://ops.example/hook"
        secret_file = "/etc/ntf"
        stalled_after = "5m"
        [log]
        level = "debug,hyper=warn"
        format = "json"
    "#;
    let config = Config::from_toml_str(text).unwrap();
    let expected = Config {
        server: ServerConfig {
            listen: "[::1]:9000".parse().unwrap(),
            token_file: Some(PathBuf::from("/etc/token")),
            max_body_bytes: 1024,
            shutdown_grace: Duration::ZERO,
        },
        storage: StorageConfig {
            backend: StorageBackend::Postgres,
            postgres: PostgresConfig {
                url: Some("postgres://webhookd@db1/webhookd".to_owned()),
                url_file: Some(PathBuf::from("/etc/pg_url")),
                pool_size: 4,
                lease: secs(30),
                node_name: Some("node-a".to_owned()),
            },
            dir: PathBuf::from("/srv/db"),
            max_bytes: 1_000_000,
            master_key_file: Some(PathBuf::from("/etc/key")),
            previous_master_key_file: None,
        },
        delivery: DeliveryConfig {
            timeout: Duration::from_millis(250),
            connect_timeout: secs(20),
            max_in_flight: 1,
            allow_private_networks: true,
            require_https: false,
            use_system_roots: true,
            extra_roots_file: Some(PathBuf::from("/etc/roots.pem")),
        },
        retry: RetryConfig {
            schedule: vec![secs(1), secs(120)],
            jitter: 1.0,
            max_retry_after: secs(3600),
        },
        endpoints: EndpointsConfig {
            disable_after: secs(2 * DAY),
        },
        retention: RetentionConfig {
            events: secs(7 * DAY),
            dead_letters: secs(14 * DAY),
            interval: secs(30),
        },
        notifications: NotificationsConfig {
            url: Some("http://ops.example/hook".to_owned()),
            secret_file: Some(PathBuf::from("/etc/ntf")),
            stalled_after: secs(300),
        },
        log: LogConfig {
            level: "debug,hyper=warn".to_owned(),
            format: LogFormat::Json,
        },
        http: Default::default(),
        test_hooks: Default::default(),
    };
    assert_eq!(config, expected);
    assert_eq!(config.attempts_per_delivery(), 3);
}

#[test]
fn empty_token_file_means_not_set() {
    let config = Config::from_toml_str("[server]\ntoken_file = \"\"").unwrap();
    assert_eq!(config.server.token_file, None);
}

#[test]
fn an_empty_schedule_means_one_attempt() {
    let config = Config::from_toml_str("[retry]\nschedule = []").unwrap();
    assert_eq!(config.attempts_per_delivery(), 1);
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let cases = [
        ("bogus = 1", "unknown key bogus;"),
        ("[tls]\ncert = \"x\"", "unknown key tls;"),
        (
            "listen = \"127.0.0.1:1\"",
            "unknown key listen; did you mean server.listen",
        ),
        (
            "[server]\nlisen = \"127.0.0.1:1\"",
            "unknown key server.lisen; [server] accepts listen,",
        ),
        ("server.lisen = \"127.0.0.1:1\"", "unknown key server.lisen"),
        ("server = { lisen = \"x\" }", "unknown key server.lisen"),
        ("[retry.extra]\na = 1", "unknown key retry.extra"),
    ];
    for (text, expected) in cases {
        let message = error_of(text);
        assert!(message.contains(expected), "{text:?} gave {message:?}");
        assert!(message.starts_with("config text: "), "{message}");
    }
    let error = Config::from_toml_str("[log]\ncolour = true").unwrap_err();
    assert_eq!(error.key(), Some("log.colour"));
}

#[test]
fn wrong_types_name_the_key() {
    let cases = [
        ("server = 5", "server must be a table, not an integer"),
        (
            r#"server.max_body_bytes = "1""#,
            "server.max_body_bytes must be an integer, not a string",
        ),
        (
            "server.listen = 8790",
            "server.listen must be a string, not an integer",
        ),
        (
            "delivery.timeout = 15",
            "delivery.timeout must be a duration string like \"5s\"",
        ),
        (
            r#"delivery.require_https = "yes""#,
            "delivery.require_https must be true or false",
        ),
        (
            r#"retry.jitter = "0.2""#,
            "retry.jitter must be a number, not a string",
        ),
        (
            r#"retry.schedule = "5s""#,
            "retry.schedule must be an array of duration strings",
        ),
        (
            r#"retry.schedule = ["5s", 5]"#,
            "retry.schedule[1] must be a duration string",
        ),
        (
            "log.level = 2026-01-15",
            "log.level must be a string, not a date-time",
        ),
    ];
    for (line, expected) in cases {
        let message = error_of(line);
        assert!(
            message.starts_with(&format!("config text: {expected}")),
            "{line:?} gave {message:?}"
        );
    }
}

#[test]
fn invalid_values_name_the_key() {
    // Each line, written with a dotted key, is echoed back in the message before the reason.
    let cases = [
        (
            r#"server.listen = "localhost:8790""#,
            "it must be an IP address and a port",
        ),
        (
            r#"server.listen = "127.0.0.1""#,
            "it must be an IP address and a port",
        ),
        (
            "server.max_body_bytes = 1023",
            "it must be between 1024 and 67108864",
        ),
        (
            "server.max_body_bytes = 67108865",
            "it must be between 1024 and 67108864",
        ),
        (r#"server.shutdown_grace = "10""#, "it has no unit"),
        (r#"storage.dir = """#, "it must name a directory"),
        ("storage.max_bytes = -1", "it must be 0 or more"),
        (r#"delivery.timeout = "0s""#, "it must be more than zero"),
        (
            r#"delivery.connect_timeout = "0ms""#,
            "it must be more than zero",
        ),
        (
            "delivery.max_in_flight = 0",
            "it must be between 1 and 65536",
        ),
        (
            "delivery.max_in_flight = 65537",
            "it must be between 1 and 65536",
        ),
        ("retry.jitter = 1.5", "it must be between 0 and 1"),
        ("retry.jitter = -0.1", "it must be between 0 and 1"),
        (
            r#"retry.max_retry_after = "-1h""#,
            "a duration cannot be negative",
        ),
        (r#"endpoints.disable_after = "5 d""#, "\" d\" is not a unit"),
        (r#"retention.events = """#, "it is empty"),
        (r#"retention.interval = "0m""#, "it must be more than zero"),
        (r#"log.level = "verbose""#, "\"verbose\" is not a level"),
        (r#"log.level = "hyper=loud""#, "\"loud\" is not a level"),
        (r#"log.level = "info,""#, "it has an empty directive"),
        (
            r#"log.level = "=info""#,
            "the directive \"=info\" has no target",
        ),
        (r#"log.format = "yaml""#, "it must be \"text\" or \"json\""),
    ];
    for (line, reason) in cases {
        let message = error_of(line);
        let expected = format!("config text: {line} is invalid: {reason}");
        assert!(message.starts_with(&expected), "{line:?} gave {message:?}");
    }
    let others = [
        ("retry.jitter = nan", "retry.jitter = NaN is invalid"),
        (
            r#"retry.schedule = ["5s", "5x"]"#,
            r#"retry.schedule[1] = "5x" is invalid"#,
        ),
        (
            r#"retry.schedule = ["0s"]"#,
            r#"retry.schedule[0] = "0s" is invalid"#,
        ),
    ];
    for (line, expected) in others {
        let message = error_of(line);
        assert!(message.contains(expected), "{line:?} gave {message:?}");
    }
}

#[test]
fn zero_is_allowed_where_it_means_something() {
    let text = r#"
        server.shutdown_grace = "0s"
        retry.jitter = 0
        retry.max_retry_after = "0s"
        endpoints.disable_after = "0s"
        retention.events = "0s"
        retention.dead_letters = "0s"
    "#;
    let config = Config::from_toml_str(text).unwrap();
    assert_eq!(config.retry.jitter, 0.0);
    assert_eq!(config.endpoints.disable_after, Duration::ZERO);
}

#[test]
fn log_levels_and_directives() {
    for level in [
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "off",
        "INFO",
        "info,hyper=warn",
        "preflix_webhookd=debug, sled=off",
    ] {
        let text = format!("[log]\nlevel = {level:?}");
        let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{level}: {e}"));
        assert_eq!(config.log.level, level);
    }
    for level in ["", "verbose", "info,", "hyper", "hyper=", "=warn"] {
        assert!(
            check_log_level(level).is_err(),
            "{level:?} should be refused"
        );
    }
}

#[test]
fn syntax_errors_say_where() {
    let message = error_of("[server\nlisten = 1");
    assert!(
        message.starts_with("config text is not valid TOML: "),
        "{message}"
    );
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn durations_parse() {
    let good = [
        ("0ms", Duration::ZERO),
        ("250ms", Duration::from_millis(250)),
        ("5s", secs(5)),
        ("5m", secs(300)),
        ("2h", secs(7200)),
        ("30d", secs(30 * DAY)),
        ("007s", secs(7)),
        ("36500d", MAX_DURATION),
    ];
    for (text, expected) in good {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    let bad = [
        ("5", "no unit"),
        ("5x", "not a unit"),
        ("5S", "not a unit"),
        ("5 s", "not a unit"),
        ("5sec", "not a unit"),
        ("1.5h", "fractions"),
        ("-5s", "negative"),
        ("", "empty"),
        ("s", "does not start with a number"),
        ("+5s", "does not start with a number"),
        (" 5s", "does not start with a number"),
        ("36501d", "longer than 100 years"),
        ("18446744073709551615ms", "longer than 100 years"),
        ("18446744073709551616ms", "longer than 100 years"),
        ("99999999999999999999999d", "longer than 100 years"),
    ];
    for (text, expected) in bad {
        let reason = parse_duration(text).expect_err(text);
        assert!(reason.contains(expected), "{text:?} gave {reason:?}");
    }
}

#[test]
fn load_reads_the_given_file_else_the_env_file_else_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("given.toml");
    let from_env = dir.path().join("env.toml");
    fs::write(&given, "[delivery]\nmax_in_flight = 7\n").unwrap();
    fs::write(&from_env, "[delivery]\nmax_in_flight = 9\n").unwrap();
    let env_path = from_env.to_str().unwrap();
    let env = env_of(&[(CONFIG_ENV, env_path)]);

    assert_eq!(
        Config::load_with_env(Some(&given), &env)
            .unwrap()
            .delivery
            .max_in_flight,
        7
    );
    assert_eq!(
        Config::load_with_env(None, &env)
            .unwrap()
            .delivery
            .max_in_flight,
        9
    );
    assert_eq!(
        Config::load_with_env(None, &no_env).unwrap(),
        Config::default()
    );
    assert_eq!(
        Config::load_with_env(None, &env_of(&[(CONFIG_ENV, "")])).unwrap(),
        Config::default()
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let message = Config::load_with_env(Some(&missing), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!("cannot read config file {}: ", missing.display())),
        "{message}"
    );

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[retry]\njitter = 2\n").unwrap();
    let message = Config::load_with_env(Some(&bad), &no_env)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "config file {}: retry.jitter = 2 is invalid: it must be between 0 and 1",
            bad.display()
        )
    );
}

#[test]
fn state_directory_is_used_only_when_dir_is_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let state = env_of(&[(
        "STATE_DIRECTORY",
        "/var/lib/preflix-webhookd:/var/lib/other",
    )]);

    let config = Config::load_with_env(None, &state).unwrap();
    assert_eq!(
        config.storage.dir,
        PathBuf::from("/var/lib/preflix-webhookd")
    );

    let without_dir = dir.path().join("without.toml");
    fs::write(&without_dir, "[storage]\nmax_bytes = 5\n").unwrap();
    let config = Config::load_with_env(Some(&without_dir), &state).unwrap();
    assert_eq!(
        config.storage.dir,
        PathBuf::from("/var/lib/preflix-webhookd")
    );

    // Even a dir equal to the default counts as given.
    let with_dir = dir.path().join("with.toml");
    fs::write(&with_dir, "[storage]\ndir = \"data/db\"\n").unwrap();
    let config = Config::load_with_env(Some(&with_dir), &state).unwrap();
    assert_eq!(config.storage.dir, PathBuf::from("data/db"));

    let empty = env_of(&[("STATE_DIRECTORY", "")]);
    assert_eq!(
        Config::load_with_env(None, &empty).unwrap().storage.dir,
        PathBuf::from("data/db")
    );
}

fn config_with_dir(dir: &Path) -> Config {
    let mut config = Config::default();
    config.storage.dir = dir.to_path_buf();
    config
}

#[test]
fn a_token_is_generated_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_dir(&dir.path().join("state/db"));

    let first = load_admin_token(&config, &no_env).unwrap();
    assert!(first.generated);
    assert_eq!(first.source, dir.path().join("state/db/admin.token"));
    assert_eq!(first.token.len(), 64);
    assert!(first
        .token
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let mode = fs::metadata(&first.source).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("state/db")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only admin.token should remain");

    let second = load_admin_token(&config, &no_env).unwrap();
    assert!(!second.generated);
    assert_eq!(second.token, first.token);
    assert_eq!(second.source, first.source);
}

#[test]
fn an_existing_token_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("admin.token"), "  s3cret-token \n\n").unwrap();
    let token = load_admin_token(&config_with_dir(dir.path()), &no_env).unwrap();
    assert_eq!(token.token, "s3cret-token");
    assert!(!token.generated);
}

#[test]
fn credentials_directory_comes_before_storage_dir() {
    let state = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    fs::write(state.path().join("admin.token"), "from-state\n").unwrap();
    let config = config_with_dir(state.path());
    let env = env_of(&[(
        "CREDENTIALS_DIRECTORY",
        credentials.path().to_str().unwrap(),
    )]);

    // Without the credential file, the state directory's token is used.
    assert_eq!(load_admin_token(&config, &env).unwrap().token, "from-state");

    fs::write(credentials.path().join("admin_token"), "from-credentials\n").unwrap();
    let token = load_admin_token(&config, &env).unwrap();
    assert_eq!(token.token, "from-credentials");
    assert_eq!(token.source, credentials.path().join("admin_token"));
    assert!(!token.generated);
}

#[test]
fn token_file_comes_first_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    fs::write(credentials.path().join("admin_token"), "from-credentials").unwrap();
    let env = env_of(&[(
        "CREDENTIALS_DIRECTORY",
        credentials.path().to_str().unwrap(),
    )]);
    let mut config = config_with_dir(dir.path());
    let token_file = dir.path().join("operator.token");
    config.server.token_file = Some(token_file.clone());

    let error = load_admin_token(&config, &env).unwrap_err();
    assert_eq!(error.key(), Some("server.token_file"));
    let message = error.to_string();
    assert!(
        message.contains("server.token_file") && message.contains("does not exist"),
        "{message}"
    );
    assert!(
        !dir.path().join("admin.token").exists(),
        "nothing is generated when token_file is set"
    );

    fs::write(&token_file, "\n \n").unwrap();
    let message = load_admin_token(&config, &env).unwrap_err().to_string();
    assert!(
        message.contains("server.token_file") && message.contains("is empty"),
        "{message}"
    );
    // A configured token file is never generated, so the message must not suggest deleting it.
    assert!(!message.contains("generated"), "{message}");

    fs::write(&token_file, "two words").unwrap();
    assert!(load_admin_token(&config, &env).is_err());

    fs::write(&token_file, "from-operator\n").unwrap();
    let token = load_admin_token(&config, &env).unwrap();
    assert_eq!(token.token, "from-operator");
    assert_eq!(token.source, token_file);
}

#[test]
fn an_empty_storage_token_is_an_error_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("admin.token"), "").unwrap();
    let error = load_admin_token(&config_with_dir(dir.path()), &no_env).unwrap_err();
    assert_eq!(error.key(), Some("storage.dir"));
    // This one is generated when missing, so deleting it is a way out.
    assert!(
        error
            .to_string()
            .contains("delete it to have one generated"),
        "{error}"
    );
}

#[test]
fn admin_token_debug_is_redacted() {
    let token = AdminToken {
        token: "hunter2".to_owned(),
        source: PathBuf::from("/x"),
        generated: false,
    };
    let shown = format!("{token:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

#[test]
fn the_example_file_holds_every_key_with_the_defaults() {
    let config = Config::from_toml_str(EXAMPLE).unwrap();
    let mut expected = Config::default();
    expected.storage.dir = PathBuf::from("/var/lib/preflix-webhookd");
    assert_eq!(config, expected);

    let table: toml::Table = EXAMPLE.parse().unwrap();
    for (section, keys) in SCHEMA {
        let present = table[*section].as_table().unwrap();
        let names: Vec<&str> = keys.iter().map(|(key, _)| *key).collect();
        let found: Vec<&str> = present.keys().map(String::as_str).collect();
        for name in &names {
            assert!(found.contains(name), "the example lacks {section}.{name}");
        }
        for (key, kind) in *keys {
            if let Kind::Table(inner) = kind {
                let sub = present[*key].as_table().unwrap();
                for (name, _) in *inner {
                    assert!(
                        sub.contains_key(*name),
                        "the example lacks {section}.{key}.{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn storage_backend_and_postgres_keys_are_checked_naming_the_key() {
    let e = error_of("[storage]\nbackend = \"mysql\"");
    assert!(
        e.contains("storage.backend") && e.contains("\"sled\" or \"postgres\""),
        "{e}"
    );
    let e = error_of("[storage.postgres]\npool_size = 0");
    assert!(
        e.contains("storage.postgres.pool_size") && e.contains("between 1 and 1024"),
        "{e}"
    );
    let e = error_of("[storage.postgres]\nlease = \"500ms\"");
    assert!(
        e.contains("storage.postgres.lease") && e.contains("at least 1s"),
        "{e}"
    );
    let e = error_of("[storage.postgres]\nlease = \"0s\"");
    assert!(e.contains("storage.postgres.lease"), "{e}");
    let e = error_of("[storage.postgres]\nlease = 60");
    assert!(
        e.contains("storage.postgres.lease must be a duration"),
        "{e}"
    );
    let e = error_of("[storage.postgres]\nurll = \"x\"");
    assert!(e.contains("unknown key storage.postgres.urll"), "{e}");
    assert!(
        e.contains("[storage.postgres] accepts url, url_file"),
        "{e}"
    );
    let e = error_of("[storage]\npostgres = \"postgres://db\"");
    assert!(e.contains("storage.postgres must be a table"), "{e}");
    // A malformed URL is refused without showing it: it may hold a password.
    let e = error_of("[storage.postgres]\nurl = \"mysql://u:hunter2@db\"");
    assert!(
        e.contains("storage.postgres.url") && !e.contains("hunter2"),
        "{e}"
    );
    let e = error_of("[storage.postgres]\nnode_name = \"a\\nb\"");
    assert!(e.contains("storage.postgres.node_name"), "{e}");
    // Empty strings mean "not set"; key=value connection strings are accepted.
    let config =
        Config::from_toml_str("[storage.postgres]\nurl = \"\"\nurl_file = \"\"\nnode_name = \"\"")
            .unwrap();
    assert_eq!(config.storage.postgres, PostgresConfig::default());
    let config =
        Config::from_toml_str("[storage.postgres]\nurl = \"host=/tmp dbname=webhookd\"").unwrap();
    assert_eq!(
        config.storage.postgres.url.as_deref(),
        Some("host=/tmp dbname=webhookd")
    );
    // Debug never shows the URL.
    let config =
        Config::from_toml_str("[storage.postgres]\nurl = \"postgres://u:hunter2@db/webhookd\"")
            .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn the_postgres_url_comes_from_url_then_url_file_then_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    let creds = credentials.path().to_str().unwrap().to_owned();
    let env = env_of(&[("CREDENTIALS_DIRECTORY", &creds)]);
    let mut config = config_with_dir(dir.path());

    // sled: no URL is looked for, even where one is given.
    config.storage.postgres.url = Some("postgres://db/x".to_owned());
    assert_eq!(load_postgres_url(&config, &env).unwrap(), None);

    config.storage.backend = StorageBackend::Postgres;
    assert_eq!(
        load_postgres_url(&config, &env).unwrap().as_deref(),
        Some("postgres://db/x")
    );

    // Nowhere: a message naming the keys and the credential.
    config.storage.postgres.url = None;
    let e = load_postgres_url(&config, &env).unwrap_err();
    assert_eq!(e.key(), Some("storage.postgres.url"));
    let text = e.to_string();
    assert!(
        text.contains("storage.postgres.url_file") && text.contains("postgres_url"),
        "{text}"
    );

    // The credential.
    fs::write(
        credentials.path().join("postgres_url"),
        "postgres://cred@db/x\n",
    )
    .unwrap();
    assert_eq!(
        load_postgres_url(&config, &env).unwrap().as_deref(),
        Some("postgres://cred@db/x")
    );

    // url_file wins over the credential, and must exist.
    let file = dir.path().join("pg_url");
    fs::write(&file, "postgresql://file@db/x\n").unwrap();
    config.storage.postgres.url_file = Some(file.clone());
    assert_eq!(
        load_postgres_url(&config, &env).unwrap().as_deref(),
        Some("postgresql://file@db/x")
    );
    fs::write(&file, "\n").unwrap();
    let e = load_postgres_url(&config, &env).unwrap_err();
    assert_eq!(e.key(), Some("storage.postgres.url_file"));
    assert!(e.to_string().contains("is empty"), "{e}");
    config.storage.postgres.url_file = Some(dir.path().join("absent"));
    let e = load_postgres_url(&config, &env).unwrap_err();
    assert_eq!(e.key(), Some("storage.postgres.url_file"));
    assert!(e.to_string().contains("cannot read"), "{e}");

    // url wins over both.
    config.storage.postgres.url = Some("postgres://given@db/x".to_owned());
    assert_eq!(
        load_postgres_url(&config, &no_env).unwrap().as_deref(),
        Some("postgres://given@db/x")
    );
}

#[test]
fn master_keys_come_from_the_file_keys_else_from_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    let creds = credentials.path().to_str().unwrap().to_owned();
    let env = env_of(&[("CREDENTIALS_DIRECTORY", &creds)]);
    let mut config = config_with_dir(dir.path());

    // Nothing anywhere: no key, secrets in the clear.
    let keys = load_master_keys(&config, &env).unwrap();
    assert!(keys.current.is_none() && keys.previous.is_none());

    // The credentials, both of them.
    fs::write(credentials.path().join("master_key"), [7u8; 32]).unwrap();
    fs::write(
        credentials.path().join("previous_master_key"),
        "ab".repeat(32),
    )
    .unwrap();
    let keys = load_master_keys(&config, &env).unwrap();
    assert_eq!(
        keys.current.unwrap().source(),
        credentials.path().join("master_key")
    );
    assert!(keys.previous.is_some());

    // The config key wins, and must exist.
    let own = dir.path().join("own_key");
    fs::write(&own, format!("{}\n", "0f".repeat(32))).unwrap();
    config.storage.master_key_file = Some(own.clone());
    assert_eq!(
        load_master_keys(&config, &env)
            .unwrap()
            .current
            .unwrap()
            .source(),
        own
    );
    config.storage.master_key_file = Some(dir.path().join("absent"));
    let e = load_master_keys(&config, &env).unwrap_err();
    assert_eq!(e.key(), Some("storage.master_key_file"));
    assert!(e.to_string().contains("cannot be read"), "{e}");

    // A credential of the wrong size is refused, naming where it came from.
    config.storage.master_key_file = None;
    fs::write(credentials.path().join("master_key"), "short").unwrap();
    let e = load_master_keys(&config, &env).unwrap_err();
    assert_eq!(e.key(), Some("$CREDENTIALS_DIRECTORY"));
    assert!(e.to_string().contains("exactly 32 bytes"), "{e}");
}
