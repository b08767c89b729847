//! The operator's subcommands (`status`, `endpoints`, `events`, `dead-letters`): a small HTTP/1
//! client for the daemon's admin interface (spec/API.md section 4) and readable renderings of its
//! answers.
//!
//! The daemon is found through the same config it reads: `--config FILE` (else
//! `PREFLIX_WEBHOOKD_CONFIG`, else the defaults) gives `server.listen` for the URL and the admin
//! token through [`config::load_admin_token`]. `--url` and `--token-file` override either. Unlike
//! the daemon, the CLI never generates a token: a missing token file is an error that says to pass
//! `--token-file`. On PostgreSQL without a token file or credential, the token is the one the nodes
//! keep in the database (`settings`), read over the config's connection.
//!
//! Exit codes: 0 on success; 1 when the daemon refuses the request (its `error.message` and `code`
//! are printed), cannot be reached, or the token cannot be read; 64 for a bad config file, as for
//! `serve`; 2 for usage errors (clap).

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;

use serde_json::{json, Map, Value};

use crate::config::{self};

/// How long connecting to the daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit code for a bad configuration (EX_CONFIG from sysexits.h), as `serve` uses.
const EXIT_CONFIG: u8 = 64;
/// The longest event `data` shown by `events show` before it is cut (`--json` shows all).
const DATA_PREVIEW_CHARS: usize = 600;
/// The longest response snippet or error shown on one line.
const SNIPPET_CHARS: usize = 80;

/// How to reach the daemon, and how to print its answers; accepted by every admin command.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminOptions {
    /// The daemon's base URL [default: http://<server.listen> from the config]
    #[arg(long, visible_alias = "daemon-url", value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the admin token [default: the daemon's, found through the config]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file; also from PREFLIX_WEBHOOKD_CONFIG
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's JSON answer as it came instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// `endpoints ...`: register, list, remove and exercise partner endpoints.
#[derive(Debug, Clone, Subcommand)]
pub enum EndpointsCommand {
    /// List endpoints (never their secrets).
    List {
        /// Only this partner's endpoints.
        #[arg(long, value_name = "PARTNER")]
        partner: Option<String>,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Register an endpoint; prints its signing secret once.
    Add(AddEndpoint),
    /// Delete an endpoint; its pending deliveries are cancelled.
    Rm {
        /// The endpoint id (ep_...).
        id: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Give an endpoint a new signing secret; the old one keeps signing during the grace period.
    Rotate {
        /// The endpoint id (ep_...).
        id: String,
        /// How long deliveries stay signed with the old secret too [default: the daemon's, 1 day]
        #[arg(long, value_name = "SECONDS")]
        grace: Option<u64>,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Deliver a sample event of a type to this endpoint alone.
    Test {
        /// The endpoint id (ep_...).
        id: String,
        /// The event type whose sample is sent [default: audit.completed]
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        #[command(flatten)]
        admin: AdminOptions,
    },
}

/// `endpoints add`: its `--url` is the partner's URL, so the daemon's URL is `--daemon-url` here.
#[derive(Debug, Clone, Args)]
pub struct AddEndpoint {
    /// The partner whose events this endpoint receives.
    #[arg(long, value_name = "PARTNER")]
    pub partner: String,
    /// Which of the partner's events it receives [default: production]
    #[arg(long, value_name = "ENV", value_parser = ["sandbox", "production"])]
    pub environment: Option<String>,
    /// The partner's URL that deliveries are posted to.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Event types, comma-separated, or '*' for every type.
    #[arg(long, value_name = "TYPES", value_delimiter = ',', required = true)]
    pub types: Vec<String>,
    /// A note for operators.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Deliver one at a time, in the order events were received.
    #[arg(long)]
    pub ordered: bool,
    /// Attempts in flight to this endpoint at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// The daemon's base URL [default: http://<server.listen> from the config]
    #[arg(long = "daemon-url", value_name = "URL")]
    pub daemon_url: Option<String>,
    /// A file holding the admin token [default: the daemon's, found through the config]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file; also from PREFLIX_WEBHOOKD_CONFIG
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's JSON answer as it came instead of a summary
    #[arg(long)]
    pub json: bool,
}

/// `events ...`: inspect and redeliver stored events.
#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// Show an event with its deliveries and their attempts.
    Show {
        /// The event id.
        id: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Deliver an event again, to one endpoint or to every endpoint that got it.
    Redeliver {
        /// The event id.
        id: String,
        /// Only to this endpoint (ep_...).
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        #[command(flatten)]
        admin: AdminOptions,
    },
}

/// `dead-letters ...`: deliveries that gave up.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, oldest first.
    List {
        /// Only those of this endpoint (ep_...).
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// Only those of this event type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// At most this many (1 to 1000) [default: the daemon's, 100]
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Continue after this dead letter (the cursor a previous page printed).
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Give dead letters a fresh set of attempts: one by id, or all that match the filters.
    Retry {
        /// One dead letter (dl_...); without it, every dead letter matching the filters.
        #[arg(conflicts_with_all = ["endpoint", "event_type"])]
        id: Option<String>,
        /// Only those of this endpoint (ep_...).
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// Only those of this event type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        #[command(flatten)]
        admin: AdminOptions,
    },
}

/// One admin command, as parsed by `main`.
#[derive(Debug, Clone)]
pub enum AdminCommand {
    /// `status`.
    Status(AdminOptions),
    /// `endpoints ...`.
    Endpoints(EndpointsCommand),
    /// `events ...`.
    Events(EventsCommand),
    /// `dead-letters ...`.
    DeadLetters(DeadLettersCommand),
}

impl AdminCommand {
    /// The options that say how to reach the daemon and how to print.
    pub fn options(&self) -> AdminOptions {
        match self {
            AdminCommand::Status(admin) => admin.clone(),
            AdminCommand::Endpoints(command) => match command {
                EndpointsCommand::List { admin, .. }
                | EndpointsCommand::Rm { admin, .. }
                | EndpointsCommand::Rotate { admin, .. }
                | EndpointsCommand::Test { admin, .. } => admin.clone(),
                EndpointsCommand::Add(add) => AdminOptions {
                    url: add.daemon_url.clone(),
                    token_file: add.token_file.clone(),
                    config: add.config.clone(),
                    json: add.json,
                },
            },
            AdminCommand::Events(command) => match command {
                EventsCommand::Show { admin, .. } | EventsCommand::Redeliver { admin, .. } => {
                    admin.clone()
                }
            },
            AdminCommand::DeadLetters(command) => match command {
                DeadLettersCommand::List { admin, .. }
                | DeadLettersCommand::Retry { admin, .. } => admin.clone(),
            },
        }
    }
}

/// Why an admin command failed: a sentence for stderr and the exit code.
#[derive(Debug)]
pub struct AdminError {
    message: String,
    exit_code: u8,
}

impl AdminError {
    fn new(message: impl Into<String>) -> AdminError {
        AdminError {
            message: message.into(),
            exit_code: 1,
        }
    }

    /// The process exit code: 1, or 64 for a bad config file.
    pub fn exit_code(&self) -> u8 {
        self.exit_code
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdminError {}

impl From<io::Error> for AdminError {
    fn from(e: io::Error) -> AdminError {
        AdminError::new(format!("cannot write the output: {e}"))
    }
}

/// Runs one admin command, writing its output to `out`; needs a tokio runtime with I/O and time.
pub async fn run(command: &AdminCommand, out: &mut dyn Write) -> Result<(), AdminError> {
    let options = command.options();
    let client = Client::from_options_or_database(&options, &config::process_env).await?;
    let reply = match command {
        AdminCommand::Status(_) => client.request(Method::GET, "/status", None).await?,
        AdminCommand::Endpoints(command) => endpoints_request(&client, command).await?,
        AdminCommand::Events(command) => events_request(&client, command).await?,
        AdminCommand::DeadLetters(command) => dead_letters_request(&client, command).await?,
    };
    if options.json {
        out.write_all(&reply)?;
        if !reply.is_empty() && !reply.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        return out.flush().map_err(AdminError::from);
    }
    let value: Value = if reply.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&reply)
            .map_err(|e| AdminError::new(format!("the daemon's answer is not JSON: {e}")))?
    };
    let text = render(command, &value);
    out.write_all(text.as_bytes())?;
    out.flush().map_err(AdminError::from)
}

async fn endpoints_request(
    client: &Client,
    command: &EndpointsCommand,
) -> Result<Bytes, AdminError> {
    match command {
        EndpointsCommand::List { partner, .. } => {
            let query = query_string(&[("partner_id", partner.as_deref())]);
            client
                .request(Method::GET, &format!("/v1/endpoints{query}"), None)
                .await
        }
        EndpointsCommand::Add(add) => {
            let mut body = Map::new();
            body.insert("partner_id".into(), json!(add.partner));
            if let Some(environment) = &add.environment {
                body.insert("environment".into(), json!(environment));
            }
            body.insert("url".into(), json!(add.url));
            let types: Vec<&str> = add
                .types
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .collect();
            body.insert("event_types".into(), json!(types));
            if let Some(description) = &add.description {
                body.insert("description".into(), json!(description));
            }
            if add.ordered {
                body.insert("ordered".into(), json!(true));
            }
            if let Some(n) = add.max_in_flight {
                body.insert("max_in_flight".into(), json!(n));
            }
            client
                .request(Method::POST, "/v1/endpoints", Some(Value::Object(body)))
                .await
        }
        EndpointsCommand::Rm { id, .. } => {
            client
                .request(
                    Method::DELETE,
                    &format!("/v1/endpoints/{}", encode(id)),
                    None,
                )
                .await
        }
        EndpointsCommand::Rotate { id, grace, .. } => {
            let body = match grace {
                Some(grace) => json!({"grace_seconds": grace}),
                None => json!({}),
            };
            client
                .request(
                    Method::POST,
                    &format!("/v1/endpoints/{}/rotate-secret", encode(id)),
                    Some(body),
                )
                .await
        }
        EndpointsCommand::Test { id, event_type, .. } => {
            let body = match event_type {
                Some(event_type) => json!({"type": event_type}),
                None => json!({}),
            };
            client
                .request(
                    Method::POST,
                    &format!("/v1/endpoints/{}/test", encode(id)),
                    Some(body),
                )
                .await
        }
    }
}

async fn events_request(client: &Client, command: &EventsCommand) -> Result<Bytes, AdminError> {
    match command {
        EventsCommand::Show { id, .. } => {
            client
                .request(Method::GET, &format!("/v1/events/{}", encode(id)), None)
                .await
        }
        EventsCommand::Redeliver { id, endpoint, .. } => {
            let body = match endpoint {
                Some(endpoint) => json!({"endpoint_id": endpoint}),
                None => json!({}),
            };
            client
                .request(
                    Method::POST,
                    &format!("/v1/events/{}/redeliver", encode(id)),
                    Some(body),
                )
                .await
        }
    }
}

async fn dead_letters_request(
    client: &Client,
    command: &DeadLettersCommand,
) -> Result<Bytes, AdminError> {
    match command {
        DeadLettersCommand::List {
            endpoint,
            event_type,
            limit,
            after,
            ..
        } => {
            let limit = limit.map(|l| l.to_string());
            let query = query_string(&[
                ("endpoint_id", endpoint.as_deref()),
                ("event_type", event_type.as_deref()),
                ("limit", limit.as_deref()),
                ("after", after.as_deref()),
            ]);
            client
                .request(Method::GET, &format!("/v1/dead-letters{query}"), None)
                .await
        }
        DeadLettersCommand::Retry { id: Some(id), .. } => {
            client
                .request(
                    Method::POST,
                    &format!("/v1/dead-letters/{}/retry", encode(id)),
                    Some(json!({})),
                )
                .await
        }
        DeadLettersCommand::Retry {
            id: None,
            endpoint,
            event_type,
            ..
        } => {
            let mut body = Map::new();
            if let Some(endpoint) = endpoint {
                body.insert("endpoint_id".into(), json!(endpoint));
            }
            if let Some(event_type) = event_type {
                body.insert("event_type".into(), json!(event_type));
            }
            client
                .request(
                    Method::POST,
                    "/v1/dead-letters/retry",
                    Some(Value::Object(body)),
                )
                .await
        }
    }
}

mod client;
mod render;

use client::*;
use render::*;

#[cfg(test)]
mod tests;
