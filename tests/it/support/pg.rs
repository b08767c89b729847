//! A throwaway PostgreSQL cluster per test: `initdb` into a temp dir, `pg_ctl` on a socket in that
//! dir (no TCP; [`PgCluster::start_tls`] adds 127.0.0.1 with TLS required there), stopped on drop. Nothing relies on a server left running on the machine.
//!
//! As root the server runs as `postgres` (through `runuser -u postgres --`, the temp dir chowned
//! to it); otherwise as the current user. Binaries come from `/usr/lib/postgresql/<newest>/bin`,
//! else `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: AtomicBool,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = found.pop() {
        return dir;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "PostgreSQL's initdb was not found in /usr/lib/postgresql/*/bin nor in PATH: install the \
         `postgresql` package (.ci/run does)"
    );
    Path::new(&path)
        .parent()
        .expect("a directory")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether PostgreSQL's binaries are there at all (tests that need them say so when they are not).
pub fn available() -> bool {
    std::panic::catch_unwind(bin_dir).is_ok()
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl PgCluster {
    /// initdb + start. `fsync` off keeps tests fast; benchmarks pass true.
    pub fn start() -> PgCluster {
        PgCluster::start_with(false)
    }

    pub fn start_with(fsync: bool) -> PgCluster {
        PgCluster::start_inner(fsync, None)
    }

    /// Also listening on 127.0.0.1 (a free port, see [`PgCluster::tcp_url`]) with `ssl = on`, the
    /// server certificate chain and key given in PEM; TCP connections must use TLS (`hostssl` only
    /// in pg_hba.conf: a clear-text one is refused with "no encryption"). The unix socket stays.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        PgCluster::start_inner(false, Some((cert_pem, key_pem)))
    }

    fn start_inner(fsync: bool, tls: Option<(&str, &str)>) -> PgCluster {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("pg")
            .tempdir_in("/tmp")
            .expect("temp dir");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(ok.success(), "chown of the PostgreSQL temp dir failed");
        }
        let port = match tls {
            None => 20000 + (std::process::id() % 20000) as u16,
            // Listening on TCP: a port nothing holds now.
            Some(_) => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port(),
        };
        let cluster = PgCluster {
            dir,
            bin,
            port,
            as_postgres,
            running: AtomicBool::new(false),
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut conf = format!(
            "fsync = {}\nmax_connections = 200\nshared_buffers = 64MB\nlisten_addresses = ''\n\
             unix_socket_directories = '{}'\nport = {}\n",
            if fsync { "on" } else { "off" },
            cluster.dir.path().display(),
            cluster.port
        );
        let mut files = vec![("postgresql.auto.conf", String::new())];
        if let Some((cert, key)) = tls {
            conf.push_str(
                "listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\n",
            );
            files.push(("server.crt", cert.to_string()));
            files.push(("server.key", key.to_string()));
            files.push((
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n".to_string(),
            ));
        }
        files[0].1 = conf;
        for (name, content) in files {
            let path = cluster.dir.path().join("data").join(name);
            std::fs::write(&path, content).expect("write into the data directory");
            if as_postgres {
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&path)
                    .status()
                    .expect("chown runs");
            }
            // PostgreSQL refuses a key file others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool, args)
            .output()
            .expect("PostgreSQL tool runs");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A PostgreSQL tool (`pgbench`, `psql`, ...) run as the cluster's owner, without arguments yet.
    pub fn tool(&self, tool: &str) -> Command {
        self.command(tool, &[])
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.args(args);
        cmd
    }

    fn start_server(&self) {
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", &data, "-l", &log],
        );
        self.running.store(true, Ordering::SeqCst);
    }

    /// Stops this cluster and removes its directory once the process `pid` has ended, whatever
    /// way it ends (a cluster kept in a `static` is never dropped): a detached watchdog shell.
    pub fn stop_when_process_ends(&self, pid: u32) {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- '{pg_ctl}'")
        } else {
            format!("'{pg_ctl}'")
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} stop -m immediate -D '{data}' >/dev/null 2>&1; rm -rf '{dir}'",
            data = self.data(),
            dir = self.dir.path().display()
        );
        // Detached (its own session, when setsid is there) so that a Ctrl-C of the tests does not
        // stop it before it has done its work; the shell that starts it returns at once.
        let started = Command::new("sh")
            .arg("-c")
            .arg(
                "(command -v setsid >/dev/null && exec setsid sh -c \"$WATCHDOG\" \
                 || exec sh -c \"$WATCHDOG\") </dev/null >/dev/null 2>&1 &",
            )
            .env("WATCHDOG", script)
            .status()
            .expect("start the cluster's watchdog");
        assert!(started.success(), "the cluster's watchdog did not start");
    }

    /// The socket directory (the `host` of a connection string).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh database; its connection string.
    pub fn create_db(&self) -> String {
        let name = format!("webhookd{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let host = self.socket_dir().display().to_string();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", &host, "-p", &port, "-U", "postgres", &name],
        );
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The connection string of `db` over TCP on 127.0.0.1 (a cluster from
    /// [`PgCluster::start_tls`]), without any `sslmode`.
    pub fn tcp_url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs SQL through psql against `db`; its output.
    pub fn psql(&self, db_url: &str, sql: &str) -> String {
        let db = db_url
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dbname="))
            .expect("dbname in the url");
        let host = self.socket_dir().display().to_string();
        let port = self.port.to_string();
        let out = self
            .command(
                "psql",
                &[
                    "-h",
                    &host,
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-tAX",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ],
            )
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pg_ctl stop -m fast`: the database goes away (until [`PgCluster::start_again`]).
    pub fn stop(&self) {
        let data = self.data();
        self.run("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &data]);
        self.running.store(false, Ordering::SeqCst);
    }

    pub fn start_again(&self) {
        self.start_server();
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart_fast(&self) {
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "restart", "-w", "-t", "60", "-m", "fast", "-D", &data, "-l", &log,
            ],
        );
        self.running.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            let data = self.data();
            let _ = self
                .command("pg_ctl", &["stop", "-m", "immediate", "-D", &data])
                .output();
        }
    }
}
