//! The `preflix-webhookd` binary: parses the command line, loads the config, starts logging and hands over to the library.

/// mimalloc instead of glibc's malloc: sled clones tree nodes on every split and consolidation, and
/// glibc's allocator took a quarter of the store writer's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use preflix_webhookd::cli::admin::{
    AdminCommand, AdminOptions, DeadLettersCommand, EndpointsCommand, EventsCommand,
};
use preflix_webhookd::config::Config;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a bad configuration, as the contract sets it (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a damaged or unreadable store (EX_DATAERR from sysexits.h): `serve` refuses to
/// start on it, `check` reports it.
const EXIT_DATA: u8 = 65;

#[derive(Parser)]
#[command(
    name = "preflix-webhookd",
    version,
    about = "Signed webhook delivery daemon for Preflix AI partner events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML); also from PREFLIX_WEBHOOKD_CONFIG. Without one, every setting has its default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start even when the store is damaged (holds less than its watermark says), with what
        /// survives: logged at error level and marked in /status until `check --clear-damage-mark`.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Check the stopped daemon's store: exit 0 when healthy, 65 with what is missing when damaged.
    Check {
        /// The daemon's config file: `storage.dir` says which store.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Remove the mark `serve --accept-data-loss` left (shown in /status), if the store is healthy now.
        #[arg(long)]
        clear_damage_mark: bool,
    },
    /// Rewrite the store (daemon stopped) to give the space of deleted records back to the filesystem.
    Compact {
        /// The daemon's config file: `storage.dir` says which store.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Copy the stopped daemon's sled store into an empty PostgreSQL database, then print what was copied.
    Migrate {
        /// The PostgreSQL connection string to copy into (`postgres://user@host/db` or `host=... dbname=...`).
        #[arg(long = "to-postgres", value_name = "URL")]
        to_postgres: String,
        /// The daemon's config file: `storage.dir` says which store, the master key opens its secrets.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the headers a delivery of the body on stdin would carry.
    Sign {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Exit 0 if the headers verify the body on stdin, 1 with the reason if not.
    Verify {
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 300)]
        tolerance: u64,
        /// A header as 'name: value'; repeat for each.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Print the running daemon's /status for a person: queue, dead letters, each endpoint's health.
    Status {
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// List, add, remove, rotate and test partner endpoints of the running daemon.
    Endpoints {
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// Show and redeliver events stored by the running daemon.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List and retry the running daemon's dead letters.
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            accept_data_loss,
        } => serve(config, accept_data_loss),
        Command::Check {
            config,
            clear_damage_mark,
        } => check(config, clear_damage_mark),
        Command::Compact { config } => compact(config),
        Command::Migrate {
            to_postgres,
            config,
        } => match preflix_webhookd::cli::migrate::run(config.as_deref(), &to_postgres) {
            Ok(copied) => {
                print!("{}", preflix_webhookd::cli::migrate::report(&copied));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("preflix-webhookd migrate: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Sign {
            secret,
            id,
            timestamp,
        } => {
            let body = read_stdin();
            let mut out = std::io::stdout();
            match preflix_webhookd::cli::partner::sign_command(
                &secret,
                id.as_deref(),
                timestamp,
                &body,
                now_secs(),
                &mut out,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("preflix-webhookd sign: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Verify {
            secret,
            tolerance,
            headers,
        } => {
            let body = read_stdin();
            match preflix_webhookd::cli::partner::verify_command(
                &secret,
                tolerance,
                &headers,
                &body,
                now_secs(),
            ) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    eprintln!("{reason}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status { admin: options } => admin(AdminCommand::Status(options)),
        Command::Endpoints { command } => admin(AdminCommand::Endpoints(command)),
        Command::Events { command } => admin(AdminCommand::Events(command)),
        Command::DeadLetters { command } => admin(AdminCommand::DeadLetters(command)),
    }
}

/// Runs an admin command against the daemon's HTTP interface on a current-thread runtime.
fn admin(command: AdminCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("preflix-webhookd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(preflix_webhookd::cli::admin::run(&command, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("preflix-webhookd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn serve(path: Option<PathBuf>, accept_data_loss: bool) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("preflix-webhookd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    preflix_webhookd::telemetry::init_logging(&config);
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("preflix-webhookd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (server.listen): {e}",
                    config.server.listen
                )
            })?;
        let shutdown = preflix_webhookd::shutdown::from_signals()?;
        let open = preflix_webhookd::store::OpenOptions { accept_data_loss };
        preflix_webhookd::run_with(config, listener, shutdown, open).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging goes to stderr: said once, in the configured log format. `{e}`, not `{e:#}`:
            // every message of ours already ends with its cause, which `:#` would repeat.
            tracing::error!("{e}");
            match e.downcast_ref::<preflix_webhookd::RunError>() {
                Some(preflix_webhookd::RunError::Config(_)) => ExitCode::from(EXIT_CONFIG),
                // No master key, or the wrong one, for a store with encrypted secrets.
                Some(preflix_webhookd::RunError::Store {
                    source: preflix_webhookd::store::StoreError::MasterKey(_),
                    ..
                }) => ExitCode::from(EXIT_CONFIG),
                // A PostgreSQL schema newer than this binary: run the newer one.
                Some(preflix_webhookd::RunError::Store {
                    source: preflix_webhookd::store::StoreError::SchemaTooNew(_),
                    ..
                }) => ExitCode::from(EXIT_CONFIG),
                // TLS to PostgreSQL as configured cannot work: a setting in the URL to change.
                Some(preflix_webhookd::RunError::Store {
                    source: preflix_webhookd::store::StoreError::Tls(_),
                    ..
                }) => ExitCode::from(EXIT_CONFIG),
                Some(run) if run.is_data_error() => {
                    eprintln!(
                        "preflix-webhookd: `preflix-webhookd check` tells what is missing; restore a backup of the store, \
                         or start with what survives with `preflix-webhookd serve --accept-data-loss`"
                    );
                    ExitCode::from(EXIT_DATA)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Raises the soft open-files limit to the hard limit: the common soft default of 1024 is reached
/// by a thousand idle connections. The HTTP interface derives its connection cap from the limit
/// in force (see `api::conn::max_connections`), so this runs before it starts.
fn raise_open_files_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            let hard = before.map(|(_, hard)| hard).unwrap_or(now);
            let soft_before = before.map(|(soft, _)| soft).unwrap_or(now);
            tracing::info!(soft_before, soft = now, hard, "open-files limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit; keeping it"),
    }
}

fn compact(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("preflix-webhookd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = &config.storage.dir;
    match preflix_webhookd::store::compact(dir) {
        Ok(c) => {
            println!(
                "compacted {}: {} bytes before, {} after",
                dir.display(),
                c.bytes_before,
                c.bytes_after
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "preflix-webhookd compact: {} (is the daemon still running?): {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<PathBuf>, clear_damage_mark: bool) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("preflix-webhookd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = &config.storage.dir;
    let report = match preflix_webhookd::store::check(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "preflix-webhookd check: cannot check {} (is the daemon still running?): {e}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    for note in &report.notes {
        println!("{note}");
    }
    if !report.healthy() {
        println!("the store in {} is DAMAGED:", dir.display());
        for problem in &report.problems {
            println!("  - {problem}");
        }
        println!(
            "restore a backup, or start with what survives: preflix-webhookd serve --accept-data-loss"
        );
        return ExitCode::from(EXIT_DATA);
    }
    println!("the store in {} is healthy", dir.display());
    if clear_damage_mark {
        match preflix_webhookd::store::sled::watermark::clear_damage_mark(dir) {
            Ok(true) => println!("damage mark cleared"),
            Ok(false) => println!("no damage mark to clear"),
            Err(e) => {
                eprintln!("preflix-webhookd check: cannot clear the damage mark: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn read_stdin() -> Vec<u8> {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("preflix-webhookd: cannot read stdin: {e}");
    }
    body
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
