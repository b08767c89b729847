//! The operator's subcommands (`status`, `endpoints`, `events`, `dead-letters`): a small HTTP/1
//! client for the daemon's admin interface (spec/API.md section 4) and readable renderings of its
//! answers.
//!
//! The daemon is found through the same config it reads: `--config FILE` (else
//! `PREFLIX_WEBHOOKD_CONFIG`, else the defaults) gives `server.listen` for the URL and the admin
//! token through [`config::load_admin_token`]. `--url` and `--token-file` override either. Unlike
//! the daemon, the CLI never generates a token: a missing token file is an error that says to pass
//! `--token-file`.
//!
//! Exit codes: 0 on success; 1 when the daemon refuses the request (its `error.message` and `code`
//! are printed), cannot be reached, or the token cannot be read; 64 for a bad config file, as for
//! `serve`; 2 for usage errors (clap).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};

use crate::config::{self, Config, ConfigError};

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
    let client = Client::from_options(&options, &config::process_env)?;
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

// ---------------------------------------------------------------------------------------------
// Finding the daemon and talking to it.

/// Where the daemon is and the token it wants.
struct Client {
    base: BaseUrl,
    token: String,
    /// Where the token came from, for the hint after a 401.
    token_source: PathBuf,
}

impl Client {
    /// Resolves the URL and the token from the options, loading the config only when it is needed
    /// (or named explicitly). `env` looks up environment variables.
    fn from_options(
        options: &AdminOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Client, AdminError> {
        let needs_config =
            options.config.is_some() || options.url.is_none() || options.token_file.is_none();
        let config = if needs_config {
            Some(
                Config::load_with_env(options.config.as_deref(), env).map_err(|e| AdminError {
                    message: e.to_string(),
                    exit_code: EXIT_CONFIG,
                })?,
            )
        } else {
            None
        };
        let base = match (&options.url, &config) {
            (Some(url), _) => BaseUrl::parse(url)?,
            (None, Some(config)) => BaseUrl::from_listen(config.server.listen)?,
            (None, None) => unreachable!("the config is loaded when --url is absent"),
        };
        let token = match (&options.token_file, &config) {
            (Some(file), _) => read_token(file.clone(), "--token-file", env)?,
            (None, Some(config)) => token_from_config(config, env)?,
            (None, None) => unreachable!("the config is loaded when --token-file is absent"),
        };
        Ok(Client {
            base,
            token: token.token,
            token_source: token.source,
        })
    }

    /// Sends one request on a fresh connection; returns the body of a 2xx answer, or the daemon's
    /// error as an [`AdminError`].
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Bytes, AdminError> {
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(AdminError::new(format!(
                    "the daemon at {} did not answer within {} s",
                    self.base.display,
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(self.daemon_error(status, &bytes))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            AdminError::new(format!(
                "cannot reach the daemon at {}: {e}; is it running? (--url or --config say where it listens)",
                self.base.display
            ))
        };
        let connect = tokio::net::TcpStream::connect((self.base.host.as_str(), self.base.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => {
                return Err(unreachable(&format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base.prefix))
            .header(header::HOST, &self.base.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("preflix-webhookd-cli/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| AdminError::new(format!("cannot build the request for {path}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// The daemon's `{"error": {"code", "message"}}` as one sentence, with a hint after a 401.
    fn daemon_error(&self, status: StatusCode, bytes: &[u8]) -> AdminError {
        let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let error = &value["error"];
        let mut message = match (error["message"].as_str(), error["code"].as_str()) {
            (Some(message), Some(code)) => {
                format!("{} ({code}, HTTP {})", clean(message), status.as_u16())
            }
            (Some(message), None) => format!("{} (HTTP {})", clean(message), status.as_u16()),
            _ => {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                if text.is_empty() {
                    format!("the daemon answered HTTP {status}")
                } else {
                    format!(
                        "the daemon answered HTTP {status}: {}",
                        shorten(&clean(text), SNIPPET_CHARS)
                    )
                }
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            let _ = write!(
                message,
                "; the token from {} was refused: pass --token-file with the daemon's token",
                self.token_source.display()
            );
        }
        AdminError::new(message)
    }
}

/// The daemon's base URL, split for connecting and for requests.
#[derive(Debug, PartialEq)]
struct BaseUrl {
    /// The host to connect to, without the brackets of an IPv6 address.
    host: String,
    port: u16,
    /// The `host` header: host and port as written.
    authority: String,
    /// A path prefix without a trailing `/` (empty for the root), for a daemon behind a proxy.
    prefix: String,
    /// The URL as shown in messages.
    display: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]`; a bare `host:port` is taken as http.
    fn parse(text: &str) -> Result<BaseUrl, AdminError> {
        let full = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let invalid = |why: &dyn std::fmt::Display| {
            AdminError::new(format!("--url {text} is not usable: {why}"))
        };
        let uri: http::Uri = full.parse().map_err(|e| invalid(&e))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    &"the CLI speaks plain HTTP only, as the daemon serves its admin interface; use http://",
                ))
            }
            _ => return Err(invalid(&"only http:// URLs are supported")),
        }
        let authority = uri.authority().ok_or_else(|| invalid(&"no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                &"user-info is not supported; the token comes from --token-file",
            ));
        }
        if uri.query().is_some() {
            return Err(invalid(&"a query string is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(BaseUrl {
            host,
            port,
            authority: authority.as_str().to_owned(),
            display: format!("http://{}{prefix}", authority.as_str()),
            prefix,
        })
    }

    /// The URL of a daemon listening on `listen`: a wildcard address is reached on loopback.
    fn from_listen(listen: SocketAddr) -> Result<BaseUrl, AdminError> {
        if listen.port() == 0 {
            return Err(AdminError::new(format!(
                "server.listen = {listen} picks a free port at start-up, so the CLI cannot know it; pass --url"
            )));
        }
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        BaseUrl::parse(&format!("http://{addr}"))
    }
}

/// Finds the daemon's token as [`config::load_admin_token`] does, but fails instead of generating
/// one when the file is missing.
fn token_from_config(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<config::AdminToken, AdminError> {
    let (path, key) = match &config.server.token_file {
        Some(path) => (path.clone(), "server.token_file"),
        None => {
            let credential = env("CREDENTIALS_DIRECTORY")
                .filter(|dir| !dir.is_empty())
                .map(|dir| PathBuf::from(dir).join("admin_token"))
                .filter(|path| !is_missing(path));
            match credential {
                Some(path) => (path, "$CREDENTIALS_DIRECTORY"),
                None => (config.storage.dir.join("admin.token"), "storage.dir"),
            }
        }
    };
    read_token(path, key, env)
}

/// Reads the token file at `path` through [`config::load_admin_token`] with `server.token_file`
/// set, so that nothing is ever generated; errors name `key` as the path's origin.
fn read_token(
    path: PathBuf,
    key: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<config::AdminToken, AdminError> {
    if is_missing(&path) {
        return Err(AdminError::new(format!(
            "no admin token: {} (from {key}) does not exist; the CLI never creates one, so pass \
             --token-file FILE with the daemon's token (or --config FILE with the daemon's config)",
            path.display()
        )));
    }
    let mut lookup = Config::default();
    lookup.server.token_file = Some(path);
    config::load_admin_token(&lookup, env).map_err(|e| {
        let denied = matches!(&e, ConfigError::TokenRead { io, .. } if io.kind() == io::ErrorKind::PermissionDenied);
        let e = relabel(e, key);
        if denied {
            AdminError::new(format!("{e}; run as a user who may read it, or pass --token-file with a copy you can read"))
        } else {
            AdminError::new(e.to_string())
        }
    })
}

/// True when `path` certainly does not exist (not when it merely cannot be looked at).
fn is_missing(path: &std::path::Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// Puts back the real origin of a token path into a token error.
fn relabel(e: ConfigError, key: &'static str) -> ConfigError {
    match e {
        ConfigError::TokenRead { path, io, .. } => ConfigError::TokenRead { key, path, io },
        ConfigError::TokenInvalid { path, reason, .. } => {
            ConfigError::TokenInvalid { key, path, reason }
        }
        other => other,
    }
}

/// `?a=b&c=d` from the pairs that have a value, or `""`.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes everything but the unreserved characters, for a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Readable output.

/// The readable summary of a successful answer to `command`.
fn render(command: &AdminCommand, v: &Value) -> String {
    match command {
        AdminCommand::Status(_) => render_status(v),
        AdminCommand::Endpoints(command) => match command {
            EndpointsCommand::List { .. } => render_endpoints(v),
            EndpointsCommand::Add(_) => render_created(v),
            EndpointsCommand::Rm { id, .. } => {
                format!(
                    "deleted endpoint {}; its pending deliveries are cancelled\n",
                    clean(id)
                )
            }
            EndpointsCommand::Rotate { id, grace, .. } => render_rotated(id, *grace, v),
            EndpointsCommand::Test { id, event_type, .. } => {
                let event = text(&v["event_id"]);
                format!(
                    "sent a test {} event {event} to {}\nfollow it with: preflix-webhookd events show {event}\n",
                    clean(event_type.as_deref().unwrap_or("audit.completed")),
                    clean(id)
                )
            }
        },
        AdminCommand::Events(command) => match command {
            EventsCommand::Show { .. } => render_event(v),
            EventsCommand::Redeliver { id, endpoint, .. } => {
                let n = v["deliveries"].as_u64().unwrap_or(0);
                let to = endpoint
                    .as_deref()
                    .map(|e| format!(" to {}", clean(e)))
                    .unwrap_or_default();
                format!(
                    "queued {n} new {} of {}{to}\n",
                    plural(n, "delivery", "deliveries"),
                    clean(id)
                )
            }
        },
        AdminCommand::DeadLetters(command) => match command {
            DeadLettersCommand::List { .. } => render_dead_letters(v),
            DeadLettersCommand::Retry { id: Some(id), .. } => {
                format!(
                    "requeued {}: its delivery gets a fresh set of attempts\n",
                    clean(id)
                )
            }
            DeadLettersCommand::Retry { id: None, .. } => {
                let n = v["requeued"].as_u64().unwrap_or(0);
                format!(
                    "requeued {n} dead {}: each gets a fresh set of attempts\n",
                    plural(n, "letter", "letters")
                )
            }
        },
    }
}

fn render_status(v: &Value) -> String {
    let mut s = String::new();
    let q = &v["queue"];
    let _ = writeln!(
        s,
        "preflix-webhookd {}, up {}",
        text(&v["version"]),
        v["uptime_seconds"]
            .as_u64()
            .map(duration)
            .unwrap_or_else(|| "-".into())
    );
    let storage_bytes = v["storage"]["bytes"]
        .as_u64()
        .map(bytes)
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "storage       {} ({storage_bytes})",
        text(&v["storage"]["dir"])
    );
    let oldest = match q["oldest_pending_age_seconds"].as_u64() {
        Some(age) => format!("oldest waiting {}", duration(age)),
        None => "nothing waiting".to_owned(),
    };
    let _ = writeln!(
        s,
        "queue         {} pending ({} retrying), {} in flight, {oldest}",
        text(&q["pending"]),
        text(&q["retrying"]),
        text(&q["in_flight"])
    );
    let _ = writeln!(s, "dead letters  {}", text(&v["dead_letters"]));
    let t = &v["totals"];
    let count = |v: &Value, one: &str, many: &str| match v.as_u64() {
        Some(n) => format!("{n} {}", plural(n, one, many)),
        None => format!("{} {many}", text(v)),
    };
    let _ = writeln!(
        s,
        "totals        {}, {} succeeded, {} failed",
        count(&t["events"], "event", "events"),
        count(&t["deliveries_succeeded"], "delivery", "deliveries"),
        count(&t["attempts_failed"], "attempt", "attempts")
    );
    let endpoints = v["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    s.push('\n');
    if endpoints.is_empty() {
        s.push_str("no endpoints registered\n");
        return s;
    }
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            vec![
                text(&e["id"]),
                format!("{}/{}", text(&e["partner_id"]), text(&e["environment"])),
                text(&e["health"]),
                text(&e["consecutive_failures"]),
                text(&e["last_status_code"]),
                text(&e["pending"]),
                text(&e["url"]),
            ]
        })
        .collect();
    table(
        &mut s,
        &[
            "ENDPOINT",
            "PARTNER/ENV",
            "HEALTH",
            "FAILURES",
            "LAST",
            "PENDING",
            "URL",
        ],
        &rows,
    );
    s
}

fn render_endpoints(v: &Value) -> String {
    let endpoints = v["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.is_empty() {
        return "no endpoints\n".to_owned();
    }
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let state = if e["enabled"].as_bool().unwrap_or(true) {
                "enabled".to_owned()
            } else if e["disabled_reason"].is_null() {
                "disabled".to_owned()
            } else {
                format!("disabled: {}", text(&e["disabled_reason"]))
            };
            let mut flags = Vec::new();
            if e["ordered"].as_bool() == Some(true) {
                flags.push("ordered".to_owned());
            }
            if let Some(n) = e["max_in_flight"].as_u64() {
                flags.push(format!("max {n}"));
            }
            vec![
                text(&e["id"]),
                format!("{}/{}", text(&e["partner_id"]), text(&e["environment"])),
                state,
                types(&e["event_types"]),
                flags.join(", "),
                text(&e["url"]),
            ]
        })
        .collect();
    let mut s = String::new();
    table(
        &mut s,
        &["ID", "PARTNER/ENV", "STATE", "TYPES", "DELIVERY", "URL"],
        &rows,
    );
    s
}

fn render_created(v: &Value) -> String {
    let mut s = String::new();
    let id = text(&v["id"]);
    let _ = writeln!(
        s,
        "created endpoint {id} for {}/{}",
        text(&v["partner_id"]),
        text(&v["environment"])
    );
    let _ = writeln!(s, "  url    {}", text(&v["url"]));
    let _ = writeln!(s, "  types  {}", types(&v["event_types"]));
    let _ = writeln!(s);
    let _ = writeln!(s, "secret: {}", text(&v["secret"]));
    let _ = writeln!(
        s,
        "Store this secret now and give it to the partner to verify signatures: this command does not show it again \
         (only GET /v1/endpoints/{id}/secret returns it)."
    );
    s
}

fn render_rotated(id: &str, grace: Option<u64>, v: &Value) -> String {
    let grace = match grace {
        Some(seconds) => duration(seconds),
        None => "the daemon's default grace period".to_owned(),
    };
    format!(
        "new secret for {}: {}\nStore it now and give it to the partner: it is not shown again. \
         Deliveries carry signatures under both the old and the new secret for {grace}.\n",
        clean(id),
        text(&v["secret"])
    )
}

fn render_event(v: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "event     {}", text(&v["id"]));
    let _ = writeln!(s, "type      {}", text(&v["type"]));
    let _ = writeln!(
        s,
        "partner   {}/{}",
        text(&v["partner_id"]),
        text(&v["environment"])
    );
    let _ = writeln!(s, "created   {}", text(&v["created_at"]));
    let _ = writeln!(s, "received  {}", text(&v["received_at"]));
    let data = clean(&v["data"].to_string());
    let data = if data.chars().count() > DATA_PREVIEW_CHARS {
        format!(
            "{} (cut; --json shows all)",
            shorten(&data, DATA_PREVIEW_CHARS)
        )
    } else {
        data
    };
    let _ = writeln!(s, "data      {data}");
    let deliveries = v["deliveries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(s);
    if deliveries.is_empty() {
        s.push_str("no deliveries: no enabled endpoint of this partner and environment subscribes to the type\n");
        return s;
    }
    let _ = writeln!(s, "deliveries: {}", deliveries.len());
    for d in deliveries {
        let status = text(&d["status"]);
        let next = match d["next_attempt_at"].as_str() {
            Some(at) if status == "pending" => format!(", next attempt {}", clean(at)),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {}  to {}  {status}{next}",
            text(&d["id"]),
            text(&d["endpoint_id"])
        );
        let attempts = d["attempts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in attempts {
            let outcome = match a["status_code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => format!(
                    "no response: {}",
                    shorten(&text(&a["error"]), SNIPPET_CHARS)
                ),
            };
            let mut line = format!(
                "    attempt {}  {}  {outcome}  {} ms",
                text(&a["n"]),
                text(&a["at"]),
                text(&a["duration_ms"])
            );
            if let Some(snippet) = a["response_snippet"]
                .as_str()
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                let _ = write!(line, "  \"{}\"", shorten(&clean(snippet), SNIPPET_CHARS));
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

fn render_dead_letters(v: &Value) -> String {
    let letters = v["dead_letters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut s = String::new();
    if letters.is_empty() {
        s.push_str("no dead letters\n");
    } else {
        let rows: Vec<Vec<String>> = letters
            .iter()
            .map(|d| {
                let last = match d["last_status_code"].as_u64() {
                    Some(code) => format!("HTTP {code}"),
                    None if d["last_error"].is_string() => shorten(&text(&d["last_error"]), 40),
                    None => "-".to_owned(),
                };
                vec![
                    text(&d["id"]),
                    text(&d["event_id"]),
                    text(&d["event_type"]),
                    text(&d["endpoint_id"]),
                    text(&d["attempts"]),
                    last,
                    text(&d["dead_at"]),
                    text(&d["reason"]),
                ]
            })
            .collect();
        table(
            &mut s,
            &[
                "ID", "EVENT", "TYPE", "ENDPOINT", "ATTEMPTS", "LAST", "DEAD AT", "REASON",
            ],
            &rows,
        );
    }
    if let Some(next) = v["next"].as_str() {
        let _ = writeln!(s, "more follow: pass --after {}", clean(next));
    }
    s
}

/// Appends a table with columns padded to their widest cell (the last one is not padded).
fn table(s: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
}

/// A JSON value as a table cell: strings as they are (control characters escaped), null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// A list of event types, comma-separated.
fn types(v: &Value) -> String {
    match v.as_array() {
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        None => text(v),
    }
}

/// Escapes control characters, so text from the daemon (a receiver's response, a description)
/// cannot move the cursor or change the terminal.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters, ending with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Seconds as `45s`, `5m 3s`, `2h 5m` or `3d 4h`.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Bytes as `512 B`, `1.5 KiB`, `12.3 MiB`, ...
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
