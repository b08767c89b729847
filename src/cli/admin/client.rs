//! Finding the daemon (URL, token) and talking to it over HTTP.

use super::*;
use crate::config::{self, Config, ConfigError};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Where the daemon is and the token it wants.
pub(crate) struct Client {
    base: BaseUrl,
    token: String,
    /// Where the token came from, for the hint after a 401.
    token_source: PathBuf,
}

impl Client {
    /// Resolves the URL and the token from the options, loading the config only when it is needed
    /// (or named explicitly). `env` looks up environment variables.
    pub(crate) fn from_options(
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

    /// [`Client::from_options`], and on PostgreSQL without a token file or credential, the admin
    /// token the first node generated into the database (table `settings`), read over the
    /// config's `storage.postgres` connection.
    pub(crate) async fn from_options_or_database(
        options: &AdminOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Client, AdminError> {
        if options.token_file.is_none() {
            let config =
                Config::load_with_env(options.config.as_deref(), env).map_err(|e| AdminError {
                    message: e.to_string(),
                    exit_code: EXIT_CONFIG,
                })?;
            let credential = env("CREDENTIALS_DIRECTORY")
                .filter(|dir| !dir.is_empty())
                .map(|dir| PathBuf::from(dir).join("admin_token"))
                .filter(|path| !is_missing(path));
            let url = config::load_postgres_url(&config, env).map_err(|e| AdminError {
                message: e.to_string(),
                exit_code: EXIT_CONFIG,
            })?;
            if let (None, None, Some(url)) = (&config.server.token_file, credential, url) {
                let token = crate::store::postgres::setting::read_setting(&url, "admin_token")
                    .await
                    .map_err(|e| AdminError::new(format!("cannot read the admin token from PostgreSQL: {e}")))?
                    .ok_or_else(|| AdminError::new(
                        "no admin token in the PostgreSQL database yet (no node has started); pass --token-file FILE".to_string(),
                    ))?;
                let base = match &options.url {
                    Some(url) => BaseUrl::parse(url)?,
                    None => BaseUrl::from_listen(config.server.listen)?,
                };
                return Ok(Client {
                    base,
                    token,
                    token_source: "PostgreSQL table settings".into(),
                });
            }
        }
        Client::from_options(options, env)
    }

    /// Sends one request on a fresh connection; returns the body of a 2xx answer, or the daemon's
    /// error as an [`AdminError`].
    pub(crate) async fn request(
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

    pub(crate) async fn exchange(
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
    pub(crate) fn daemon_error(&self, status: StatusCode, bytes: &[u8]) -> AdminError {
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
pub(crate) struct BaseUrl {
    /// The host to connect to, without the brackets of an IPv6 address.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `host` header: host and port as written.
    pub(crate) authority: String,
    /// A path prefix without a trailing `/` (empty for the root), for a daemon behind a proxy.
    pub(crate) prefix: String,
    /// The URL as shown in messages.
    pub(crate) display: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]`; a bare `host:port` is taken as http.
    pub(crate) fn parse(text: &str) -> Result<BaseUrl, AdminError> {
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
    pub(crate) fn from_listen(listen: SocketAddr) -> Result<BaseUrl, AdminError> {
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
pub(crate) fn token_from_config(
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
pub(crate) fn read_token(
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
pub(crate) fn is_missing(path: &std::path::Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// Puts back the real origin of a token path into a token error.
pub(crate) fn relabel(e: ConfigError, key: &'static str) -> ConfigError {
    match e {
        ConfigError::TokenRead { path, io, .. } => ConfigError::TokenRead { key, path, io },
        ConfigError::TokenInvalid { path, reason, .. } => {
            ConfigError::TokenInvalid { key, path, reason }
        }
        other => other,
    }
}

/// `?a=b&c=d` from the pairs that have a value, or `""`.
pub(crate) fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
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
pub(crate) fn encode(text: &str) -> String {
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
