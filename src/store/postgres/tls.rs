//! TLS to PostgreSQL: reads `sslmode` and `sslrootcert` from the connection string the way libpq
//! does, and connects with rustls (ring). Every connection the backend makes (the pool, the
//! `LISTEN` connection, the leader session, `migrate`'s import) goes through [`connect_config`].
//!
//! What each `sslmode` does here (stricter than libpq: no mode encrypts without verifying):
//! - `disable`: no TLS.
//! - `prefer` (the default): TLS when the server offers it, with the certificate chain and the
//!   host name verified; a server without TLS is used in clear text; a server whose certificate
//!   fails verification is refused (never a silent fall back to clear text).
//! - `require`, `verify-full`: TLS or no connection; chain and host name verified.
//! - `verify-ca`: TLS or no connection; chain verified, host name not checked.
//!
//! Trust: `sslrootcert=/path/ca.pem` (PEM CA certificates) replaces the default, the WebPKI roots;
//! `sslrootcert=system` uses the operating system's roots.

use crate::store::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// The `sslmode` asked for, libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The rustls connector given to tokio-postgres and deadpool-postgres.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
    mode: SslMode,
    /// Where the connection string came from, for messages: `storage.postgres.url`.
    what: &'static str,
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeRustls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl MakeRustls {
    pub fn mode(&self) -> SslMode {
        self.mode
    }
}

/// A TLS failure: the sentence says what to change. Never holds the connection string.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A settings mistake in the connection string's TLS part (unreadable `sslrootcert`, unknown
/// `sslmode`): the message names the parameter, never the URL.
fn setting(reason: String) -> StoreError {
    StoreError::Tls(reason)
}

/// Parses `url` (URI or key-value form), takes out what tokio-postgres does not know
/// (`sslrootcert`, `sslmode=verify-ca|verify-full`), and builds the connector. `what` names the
/// setting the URL came from in messages (`storage.postgres.url`, `the --to-postgres URL`).
pub fn connect_config(
    url: &str,
    what: &'static str,
) -> Result<(tokio_postgres::Config, MakeRustls), StoreError> {
    let (rest, mode, rootcert) = split(url, what)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        StoreError::Database(format!("{what} is not a PostgreSQL connection string: {e}"))
    })?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let roots = roots(rootcert.as_deref(), what)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| setting(format!("TLS to PostgreSQL cannot be set up: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
        Arc::new(ChainOnly(verifier))
    } else {
        verifier
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setting(format!("TLS to PostgreSQL cannot be set up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((
        config,
        MakeRustls {
            config: Arc::new(tls),
            mode,
            what,
        },
    ))
}

/// The trust anchors: `sslrootcert`'s file, the system's (`sslrootcert=system`), or WebPKI's.
fn roots(rootcert: Option<&str>, what: &str) -> Result<rustls::RootCertStore, StoreError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some("system") => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(setting(format!(
                    "sslrootcert=system in {what}, but the system has no usable CA certificates"
                )));
            }
        }
        Some(path) => {
            let failed =
                |why: String| setting(format!("sslrootcert in {what}: the file {path} {why}"));
            let content =
                std::fs::read(path).map_err(|e| failed(format!("cannot be read: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&content)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed(format!("is not valid PEM: {e}")))?;
            let (added, unusable) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(failed(
                    "holds no usable CA certificate (expected PEM blocks \
                     `-----BEGIN CERTIFICATE-----`)"
                        .into(),
                ));
            }
            if unusable > 0 {
                return Err(failed(format!(
                    "holds {unusable} certificates that cannot be used as a trust anchor"
                )));
            }
        }
    }
    Ok(roots)
}

/// Splits the connection string into what tokio-postgres parses and the TLS settings.
fn split(url: &str, what: &str) -> Result<(String, SslMode, Option<String>), StoreError> {
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut mode = SslMode::Prefer;
    let mut rootcert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, StoreError> {
        match key {
            "sslmode" => {
                mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    "allow" => {
                        return Err(setting(format!(
                            "sslmode=allow in {what} is not supported: use \
                             prefer, require, verify-ca, verify-full or disable"
                        )))
                    }
                    _ => {
                        return Err(setting(format!(
                            "sslmode in {what} is not one of disable, prefer, \
                             require, verify-ca, verify-full"
                        )))
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                rootcert = Some(value.to_string());
                Ok(true)
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" => Err(setting(format!(
                "{key} in {what} is not supported (no client certificates): the \
                 daemon authenticates with a password or trust"
            ))),
            _ => Ok(false),
        }
    };
    if is_uri {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), mode, rootcert));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(&percent_decode(k), &percent_decode(v))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, mode, rootcert))
    } else {
        let mut kept = Vec::new();
        for (key, raw, value) in key_values(url, what)? {
            if !take(&key, &value)? {
                kept.push(format!("{key}={raw}"));
            }
        }
        Ok((kept.join(" "), mode, rootcert))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key = value` pairs of a libpq key-value string: (key, value as written, value unquoted).
fn key_values(s: &str, what: &str) -> Result<Vec<(String, String, String)>, StoreError> {
    let bad = || {
        StoreError::Database(format!(
            "{what} is not a PostgreSQL connection string: a key without `=value`"
        ))
    };
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return Err(bad());
        }
        i += 1;
        skip_ws(&mut i);
        let vstart = i;
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(bad()),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    value.push(chars[i + 1]);
                    i += 2;
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        let raw: String = chars[vstart..i].iter().collect();
        out.push((key, raw, value));
    }
}

/// `verify-ca`: the chain is verified against the roots, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsError> {
        // A unix socket has no host name; the error matters only if the server offers TLS there.
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            TlsError(format!(
                "TLS to PostgreSQL needs a host name or address to verify, not {domain:?}"
            ))
        });
        Ok(RustlsConnect {
            config: self.config.clone(),
            mode: self.mode,
            what: self.what,
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    mode: SslMode,
    what: &'static str,
    name: Result<ServerName<'static>, TlsError>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name?;
            let connector = tokio_rustls::TlsConnector::from(self.config);
            match connector.connect(name, stream).await {
                Ok(s) => Ok(RustlsStream(s)),
                Err(e) => Err(explain(e, self.mode, self.what)),
            }
        })
    }
}

/// The sentence for a failed handshake: what was refused, and which setting to change.
fn explain(e: io::Error, mode: SslMode, what: &str) -> TlsError {
    let cert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if cert {
        let name_only = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|r| {
                matches!(
                    r,
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                    )
                )
            });
        let hint = if name_only {
            format!(
                "the certificate does not name the host in {what}: connect by a name it holds, \
                 or set sslmode=verify-ca to verify the CA only"
            )
        } else {
            format!(
                "give the CA that signed it with sslrootcert=/path/to/ca.pem in {what} \
                 (sslmode=disable connects without TLS, in clear text)"
            )
        };
        let mode = match mode {
            SslMode::Prefer => "sslmode=prefer (the default: TLS when the server offers it, \
                                its certificate verified)"
                .to_string(),
            other => format!("sslmode={}", other.as_str()),
        };
        TlsError(format!(
            "the PostgreSQL server's certificate was refused ({e}) under {mode}: {hint}"
        ))
    } else {
        TlsError(format!("TLS handshake with PostgreSQL failed: {e}"))
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (tokio-postgres' default `channel_binding=prefer`).
        ChannelBinding::none()
    }
}

/// A connect error as start-up reports it: a TLS refusal, or a server that wants TLS when
/// `sslmode=disable`, becomes [`StoreError::Tls`] (a setting to change, exit 64); anything else
/// is [`super::db_error`]'s answer.
pub fn connect_error(e: tokio_postgres::Error, what: &str) -> StoreError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TlsError>() {
            return StoreError::Tls(t.0.clone());
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("server does not support TLS") {
        return StoreError::Tls(format!(
            "the PostgreSQL server does not offer TLS, and {what} asks for it (sslmode=require, \
             verify-ca or verify-full): turn ssl on in the server, or set sslmode=prefer or disable"
        ));
    }
    if let Some(db) = e.as_db_error() {
        if db.code().code() == "28000" && db.message().contains("no encryption") {
            return StoreError::Tls(format!(
                "PostgreSQL refused a connection without TLS ({}): set sslmode=require (with \
                 sslrootcert=/path/to/ca.pem for a private CA) in {what}",
                db.message()
            ));
        }
    }
    super::db_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Result<(String, SslMode, Option<String>), StoreError> {
        super::split(url, "storage.postgres.url")
    }

    #[test]
    fn verify_modes_and_rootcert_are_taken_out_of_a_uri() {
        let (rest, mode, root) = split(
            "postgres://u:p@db/x?sslmode=verify-ca&application_name=a&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db/x?application_name=a");
        assert_eq!(mode, SslMode::VerifyCa);
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) = split("postgres://db/x?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/x", SslMode::Require, None)
        );
        assert_eq!(split("postgres://db/x").unwrap().1, SslMode::Prefer);
    }

    #[test]
    fn verify_modes_and_rootcert_are_taken_out_of_key_values() {
        let (rest, mode, root) =
            split("host=db sslmode = verify-full password='a b\\'c' sslrootcert='/t/c a.pem'")
                .unwrap();
        assert_eq!(rest, "host=db password='a b\\'c'");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/t/c a.pem"));
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
        assert!(matches!(
            split("host=db sslmode=bogus"),
            Err(StoreError::Tls(_))
        ));
    }

    #[test]
    fn an_unreadable_rootcert_names_the_setting() {
        let Err(StoreError::Tls(why)) = connect_config(
            "host=db password=hunter2 sslrootcert=/nonexistent/ca.pem",
            "storage.postgres.url",
        ) else {
            panic!("refused")
        };
        assert!(why.contains("sslrootcert"), "{why}");
        assert!(!why.contains("hunter2"), "{why}");
    }
}
