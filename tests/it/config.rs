//! The real binary's start-up: bad configs stop it with exit code 64 naming the key, `serve`
//! generates a private admin token that is never logged, SIGTERM exits 0, and
//! `PREFLIX_WEBHOOKD_CONFIG` is honoured. Every child gets its environment set on its `Command`.

use crate::support::binary;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit code for a bad configuration (EX_CONFIG).
const EXIT_CONFIG: i32 = 64;
const TIMEOUT: Duration = Duration::from_secs(30);

/// The real binary, run in `cwd`, with none of the variables the daemon reads inherited.
fn command(cwd: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(cwd)
        .env_remove("PREFLIX_WEBHOOKD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running child whose stdout and stderr are collected, together, as they come.
struct Running {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("start the binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![];
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Running {
            child,
            output,
            readers,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Polls until `cond` holds for the output so far; panics (killing the child) after `timeout`
    /// or if the child exits first.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if cond(&out) {
                return out;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before {what}; output:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; output:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit; kills it and panics after `timeout`. Returns its status and output.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the binary did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in std::mem::take(&mut self.readers) {
            r.join().unwrap();
        }
        (status, self.output())
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `serve --config <file with text>` and returns its exit code and output.
fn serve_with(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhookd.toml");
    std::fs::write(&file, text).unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("serve").arg("--config").arg(&file);
    let (status, output) = Running::spawn(cmd).wait(TIMEOUT);
    (status.code(), output)
}

/// Asserts that the config `text` stops start-up with exit code 64 and a message naming `key`.
fn assert_refused(text: &str, key: &str) {
    let (code, output) = serve_with(text);
    assert_eq!(
        code,
        Some(EXIT_CONFIG),
        "config:\n{text}\noutput:\n{output}"
    );
    assert!(
        output.contains(key),
        "the message names `{key}`; config:\n{text}\noutput:\n{output}"
    );
}

#[test]
fn unknown_keys_exit_64_naming_the_key() {
    assert_refused("[server]\nlisen = \"127.0.0.1:0\"\n", "server.lisen");
    assert_refused("[sever]\nlisten = \"127.0.0.1:0\"\n", "sever");
    assert_refused("[retry]\nschedul = [\"5s\"]\n", "retry.schedul");
    assert_refused("colour = \"blue\"\n", "colour");
    assert_refused(
        "[storage]\ndir = \"x\"\n[storage.extra]\na = 1\n",
        "storage.extra",
    );
}

#[test]
fn bad_values_exit_64_naming_the_key() {
    assert_refused("[retry]\njitter = 2\n", "retry.jitter");
    assert_refused("[retry]\njitter = -0.5\n", "retry.jitter");
    assert_refused(
        "[server]\nmax_body_bytes = \"big\"\n",
        "server.max_body_bytes",
    );
    assert_refused("[server]\nlisten = \"nowhere\"\n", "server.listen");
    assert_refused("[log]\nformat = \"xml\"\n", "log.format");
    assert_refused("[log]\nlevel = \"loud\"\n", "log.level");
    assert_refused(
        "[delivery]\nrequire_https = \"yes\"\n",
        "delivery.require_https",
    );
    assert_refused("[delivery]\nmax_in_flight = 0\n", "delivery.max_in_flight");
}

#[test]
fn bad_durations_exit_64_naming_the_key() {
    assert_refused(
        "[server]\nshutdown_grace = \"10\"\n",
        "server.shutdown_grace",
    );
    assert_refused(
        "[server]\nshutdown_grace = \"10 parsecs\"\n",
        "server.shutdown_grace",
    );
    assert_refused(
        "[delivery]\ntimeout = \"fifteen seconds\"\n",
        "delivery.timeout",
    );
    assert_refused(
        "[delivery]\nconnect_timeout = 5\n",
        "delivery.connect_timeout",
    );
    assert_refused("[retry]\nschedule = [\"5s\", \"5x\"]\n", "retry.schedule");
    assert_refused(
        "[endpoints]\ndisable_after = \"-1d\"\n",
        "endpoints.disable_after",
    );
    assert_refused("[retention]\nevents = \"\"\n", "retention.events");
}

#[test]
fn malformed_toml_exits_64() {
    let (code, output) = serve_with("[server\nlisten = \n");
    assert_eq!(code, Some(EXIT_CONFIG), "{output}");
    assert!(
        output.contains("webhookd.toml"),
        "the message names the file: {output}"
    );
}

#[test]
fn missing_config_file_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-config.toml");
    let mut cmd = command(dir.path());
    cmd.arg("serve").arg("--config").arg(&missing);
    let (status, output) = Running::spawn(cmd).wait(TIMEOUT);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{output}");
    assert!(
        output.contains("no-such-config.toml"),
        "the message names the file: {output}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before refusing"
    );
}

/// An empty `server.token_file` stops start-up with exit 64 and one message, said once, that does
/// not suggest deleting the file: a configured token file is never generated.
#[test]
fn an_empty_configured_token_file_is_refused_once_without_a_false_hint() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("operator.token");
    std::fs::write(&token, "\n").unwrap();
    let file = dir.path().join("webhookd.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\n[storage]\ndir = {:?}\n",
            token.display().to_string(),
            dir.path().join("db").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("serve").arg("--config").arg(&file);
    let (status, output) = Running::spawn(cmd).wait(TIMEOUT);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{output}");
    let output = plain(&output);
    assert_eq!(
        output
            .matches("operator.token (from server.token_file) is empty")
            .count(),
        1,
        "the error is said exactly once:\n{output}"
    );
    assert!(
        !output.contains("generated"),
        "a configured token file is never generated:\n{output}"
    );
    assert!(!token.with_file_name("db").join("admin.token").exists());
}

/// A config for a real start: store under `dir`, any free port, debug logs.
fn good_config(dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndir = {:?}\n\n[log]\nlevel = \"debug\"\n",
        dir.display().to_string()
    )
}

/// Strips ANSI colour sequences from log text.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The port of the `ready` log line, once the daemon has logged it.
fn ready_port(log: &str) -> Option<u16> {
    let log = plain(log);
    let line = log.lines().find(|l| l.contains("ready"))?;
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|p| *p != 0)
}

/// One HTTP/1.1 request over a plain socket; returns the status code and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}connection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Waits for the token file to hold a whole token.
fn wait_token(running: &mut Running, path: &Path) -> String {
    let mut token = String::new();
    running.wait_for(TIMEOUT, "admin token file", |_| {
        token = std::fs::read_to_string(path).unwrap_or_default();
        token.trim().len() >= 64
    });
    token
}

/// Starts `cmd`, checks the token file under `db` and the API with it, sends SIGTERM and
/// checks exit code 0 and that the token never reached the log. Returns the token.
fn serve_and_stop(cmd: Command, db: &Path) -> String {
    let token_path = db.join("admin.token");
    let mut running = Running::spawn(cmd);
    let token = wait_token(&mut running, &token_path);
    let log = running.wait_for(TIMEOUT, "ready log line with the port", |out| {
        ready_port(out).is_some()
    });
    let port = ready_port(&log).unwrap();

    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token mode is {mode:o}");
    let token = token.trim().to_string();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{token:?}"
    );

    assert_eq!(http(port, "GET", "/healthz", None), (200, "ok".to_string()));
    assert_eq!(http(port, "GET", "/status", None).0, 401);
    assert_eq!(http(port, "GET", "/status", Some(&"0".repeat(64))).0, 401);
    let (code, body) = http(port, "GET", "/status", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\""), "{body}");

    running.sigterm();
    let (status, output) = running.wait(TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must exit 0; output:\n{output}"
    );
    assert!(
        !output.contains(&token),
        "the admin token was logged:\n{output}"
    );
    assert!(
        !output.contains(&token[..16]),
        "part of the admin token was logged:\n{output}"
    );
    assert!(
        plain(&output).contains("admin.token"),
        "the token's path is logged:\n{output}"
    );
    token
}

#[test]
fn serve_generates_a_private_token_never_logs_it_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let file = dir.path().join("webhookd.toml");
    std::fs::write(&file, good_config(&db)).unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("serve").arg("--config").arg(&file);
    let token = serve_and_stop(cmd, &db);

    // A second start on the same directory keeps the token.
    let mut cmd = command(dir.path());
    cmd.arg("serve").arg("--config").arg(&file);
    let again = serve_and_stop(cmd, &db);
    assert_eq!(again, token, "the token must survive a restart");
}

#[test]
fn config_env_var_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    // A bad file named by the variable is read and refused.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisen = \"127.0.0.1:0\"\n").unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("serve").env("PREFLIX_WEBHOOKD_CONFIG", &bad);
    let (status, output) = Running::spawn(cmd).wait(TIMEOUT);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{output}");
    assert!(output.contains("server.lisen"), "{output}");

    // A missing file named by the variable is refused too.
    let mut cmd = command(dir.path());
    cmd.arg("serve")
        .env("PREFLIX_WEBHOOKD_CONFIG", dir.path().join("absent.toml"));
    let (status, output) = Running::spawn(cmd).wait(TIMEOUT);
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{output}");
    assert!(output.contains("absent.toml"), "{output}");

    // A good file named by the variable decides where the store goes.
    let db: PathBuf = dir.path().join("from-env-db");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, good_config(&db)).unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("serve").env("PREFLIX_WEBHOOKD_CONFIG", &good);
    serve_and_stop(cmd, &db);
    assert!(
        !dir.path().join("data").exists(),
        "the default storage.dir must not be used"
    );
}

/// `storage.backend = "postgres"` with no database URL anywhere (key, file, credential) stops
/// start-up with exit 64 and a message naming where to give one; nothing is written to `storage.dir`.
#[test]
fn a_postgres_backend_without_a_url_exits_64_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nbackend = \"postgres\"\ndir = {:?}\n",
        db.display().to_string()
    );
    let (code, output) = serve_with(&text);
    assert_eq!(code, Some(EXIT_CONFIG), "{output}");
    let output = plain(&output);
    for key in [
        "storage.postgres.url",
        "storage.postgres.url_file",
        "postgres_url",
    ] {
        assert!(output.contains(key), "the message names {key}:\n{output}");
    }
    assert!(!db.join("admin.token").exists(), "no token is generated");
}

/// `backend = "postgres"` with a database that cannot be reached stops start-up with a message
/// that says so, without the URL's password and without generating a token file.
#[test]
fn an_unreachable_postgres_stops_start_up_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nbackend = \"postgres\"\ndir = {:?}\n\n\
         [storage.postgres]\nurl = \"postgres://webhookd:hunter2@127.0.0.1:1/webhookd\"\n",
        db.display().to_string()
    );
    let (code, output) = serve_with(&text);
    assert_eq!(code, Some(1), "{output}");
    let output = plain(&output);
    assert!(output.contains("PostgreSQL"), "{output}");
    assert!(
        !output.contains("hunter2"),
        "the URL's password is never shown:\n{output}"
    );
    assert!(!db.join("admin.token").exists(), "no token is generated");
}
