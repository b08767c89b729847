//! The README's first hour kept true: `tests/readme-walk.sh` runs the shell blocks of "A walk-through
//! with curl" and "Receiving events" in order, with this build's debug binaries, on two free loopback
//! ports, and checks every answer the README shows.

use crate::partner::receiver_example;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole walk takes about a second; this is for a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Two ports free on loopback right now (held together so that they differ).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn the_readme_walk_through_runs_as_written() {
    for tool in ["bash", "curl", "jq"] {
        assert!(
            have(tool),
            "the README walk-through needs {tool} (README: \"It needs curl and jq\")"
        );
    }
    let receiver = receiver_example();
    let bin_dir = receiver
        .parent()
        .and_then(Path::parent)
        .expect("the receiver is in <profile>/examples");
    assert!(bin_dir.join("preflix-webhookd").exists());
    let scratch = tempfile::tempdir().unwrap();
    let keep = scratch.path().join("walk");
    let (daemon_port, receiver_port) = free_ports();
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readme-walk.sh"))
        .env("WALK_BIN_DIR", bin_dir)
        .env("WALK_DAEMON_PORT", daemon_port.to_string())
        .env("WALK_RECEIVER_PORT", receiver_port.to_string())
        .env("WALK_KEEP", &keep)
        // `mktemp -d` in the README makes its scratch directory in here.
        .env("TMPDIR", scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in [
        "PREFLIX_WEBHOOKD_CONFIG",
        "PREFLIX_WEBHOOK_SECRET",
        "PREFLIX_RECEIVER_LISTEN",
        "PREFLIX_RECEIVER_STATE_DIR",
        "PREFLIX_RECEIVER_PROCESSED_LOG",
        "PREFLIX_RECEIVER_WORK_MS",
        "CREDENTIALS_DIRECTORY",
        "STATE_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "RUST_LOG",
    ] {
        cmd.env_remove(name);
    }
    // Its own process group, so that a walk that hangs is stopped with the daemon and receiver
    // it started in the background.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("run bash tests/readme-walk.sh");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the walk did not end within {TIMEOUT:?}; so far:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README walk-through does not run as written ({})\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("shown answers match"), "{stdout}{stderr}");
}
