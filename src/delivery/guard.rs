//! Which addresses the daemon may contact: endpoint URL rules, the forbidden address ranges, and a resolver and connector that enforce them at every attempt.
//!
//! An endpoint is checked twice. At registration, [`parse_endpoint_url`] checks the URL's form and
//! [`check_host`] resolves its host and refuses it when any address is forbidden. At every attempt,
//! the HTTP client connects through [`GuardedConnector`], whose [`GuardedResolver`] checks each
//! address it hands to the connector: the connector then only ever connects to addresses that were
//! checked, so a name that resolved to a public address at registration and to `127.0.0.1` later
//! (DNS rebinding) is refused at the attempt.
//!
//! Wiring it into the client, with TLS on top:
//!
//! ```ignore
//! let mut tcp = GuardedConnector::http(config.delivery.allow_private_networks);
//! tcp.inner_mut().set_connect_timeout(Some(config.delivery.connect_timeout));
//! let https = hyper_rustls::HttpsConnectorBuilder::new()
//!     .with_webpki_roots()
//!     .https_or_http()
//!     .enable_http1()
//!     .wrap_connector(tcp);
//! ```
//!
//! A refused connection reaches the caller as an error whose source chain holds a [`GuardError`];
//! [`find_guard_error`] digs it out so the attempt log can say why.
//!
//! **Architecture Invariant:** this module decides and checks; it never sends a request.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

/// The longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Whether the daemon must refuse to contact `ip` unless `delivery.allow_private_networks` is set.
///
/// True for loopback, unspecified, private, link-local, shared (CGNAT), multicast, broadcast,
/// documentation, benchmarking and other reserved ranges, and for IPv6 unique local, site-local
/// and anything outside global unicast (`2000::/3`). IPv6 addresses that embed an IPv4 address
/// (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and 6to4
/// `2002::/16`) are judged by the embedded address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden_kind(ip).is_some()
}

/// An endpoint URL that passed [`parse_endpoint_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// Whether the scheme is https, so the caller knows TLS is required.
    pub scheme_https: bool,
    /// The host as written in the URL; an IPv6 literal keeps its brackets (`[::1]`), which
    /// [`check_host`] and [`check_literal`] accept.
    pub host: String,
    /// The explicit port, or 443 for https and 80 for http.
    pub port: u16,
    /// The parsed URL, ready to be the target of a request.
    pub uri: Uri,
}

/// Why an endpoint URL was refused; each message is a sentence for the person registering it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL is longer than [`MAX_URL_LEN`].
    #[error("the URL is {len} bytes long; at most 2048 are allowed")]
    TooLong {
        /// The length of the refused URL in bytes.
        len: usize,
    },
    /// The URL could not be parsed at all.
    #[error("the URL is not valid ({reason}); use a URL like https://hooks.example.com/preflix")]
    Invalid {
        /// What the parser or the port check found wrong.
        reason: String,
    },
    /// The URL has no scheme and host, such as `/hooks` or `example.com/hooks`.
    #[error("the URL must be absolute, like https://hooks.example.com/preflix")]
    NotAbsolute,
    /// The scheme is neither http nor https.
    #[error("the URL scheme must be http or https, not {scheme}")]
    Scheme {
        /// The refused scheme.
        scheme: String,
    },
    /// The authority has no host, as in `https://:443/`.
    #[error("the URL has no host")]
    MissingHost,
    /// The authority carries `user:password@`.
    #[error("the URL must not contain user information (user:password@); send credentials in the endpoint's headers instead")]
    UserInfo,
    /// The URL has a `#fragment`, which is never sent to a server.
    #[error("the URL must not contain a fragment (#...)")]
    Fragment,
    /// A production endpoint uses http while `delivery.require_https` is true.
    #[error(
        "production endpoints must use https; set delivery.require_https = false to allow http"
    )]
    HttpsRequired,
}

/// Checks that `url` is fit to be an endpoint URL and splits it into the parts a delivery needs.
///
/// It must be an absolute http or https URL of at most 2048 bytes with a host, no user-info and no
/// fragment, written as RFC 3986 says (printable ASCII, a host in its one spelling: a DNS name, a
/// dotted-quad IPv4 address or a bracketed IPv6 address without a zone id). When `sandbox` is false
/// and `require_https` is true, it must be https. Whether its host may be contacted is a separate
/// question, answered by [`check_host`], and does not change what is malformed.
pub fn parse_endpoint_url(
    url: &str,
    sandbox: bool,
    require_https: bool,
) -> Result<EndpointUrl, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong { len: url.len() });
    }
    // The http crate accepts a fragment and silently drops it, so it is looked for in the raw text.
    if url.contains('#') {
        return Err(UrlError::Fragment);
    }
    // The http crate is lenient (raw non-ASCII bytes, `[127.0.0.1]`, zone ids, `127.1`), and what
    // it lets through would be read differently by a resolver, a TLS library or a receiver. The
    // text is checked against RFC 3986 first, whatever `delivery.allow_private_networks` says.
    check_url_text(url)?;
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| UrlError::Invalid {
            reason: e.to_string(),
        })?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(UrlError::NotAbsolute);
    };
    let scheme_https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(UrlError::Scheme {
            scheme: scheme.to_owned(),
        });
    };
    // The http crate accepts user-info in the authority and hides it from `host()`.
    if authority.as_str().contains('@') {
        return Err(UrlError::UserInfo);
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    // The http crate accepts a port that does not fit in u16 and then reports none, so the port
    // is read from the authority's text, which starts with the host now that user-info is refused.
    let port_text = authority
        .as_str()
        .get(host.len()..)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or("");
    let port = match port_text {
        "" if scheme_https => 443,
        "" => 80,
        text => text
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| UrlError::Invalid {
                reason: format!("the port {text} is not a number from 1 to 65535"),
            })?,
    };
    if !sandbox && require_https && !scheme_https {
        return Err(UrlError::HttpsRequired);
    }
    Ok(EndpointUrl {
        scheme_https,
        host: host.to_owned(),
        port,
        uri,
    })
}

/// Checks the raw text of an absolute URL against RFC 3986, more strictly than the http crate:
/// printable ASCII only; a host that is a DNS name of letters, digits, `-` and `_` in labels of at
/// most 63 bytes, a dotted-quad IPv4 address without leading zeros, or a bracketed IPv6 address
/// without a zone id; a port of digits without a leading zero; a path and query of RFC 3986
/// characters with well-formed percent escapes. Scheme, user-info and fragment are judged by the
/// caller, after this.
fn check_url_text(url: &str) -> Result<(), UrlError> {
    let invalid = |reason: String| UrlError::Invalid { reason };
    if let Some(c) = url.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "it contains {}, which must be percent-encoded",
            describe_char(c)
        )));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(UrlError::NotAbsolute);
    };
    if scheme.is_empty() || scheme.contains(['/', '?']) {
        return Err(UrlError::NotAbsolute);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return Err(invalid("the IPv6 address has no closing bracket".into()));
        };
        check_bracketed_host(inside)?;
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(invalid(format!("unexpected `{p}` after the IPv6 address"))),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if !host.is_empty() {
        check_name_host(host)?;
    }
    if let Some(port) = port {
        if port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "the port {port} is not a number from 1 to 65535"
            )));
        }
    }
    let bytes = path_and_query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            if !escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)) {
                return Err(invalid(
                    "a `%` in the path or query must start an escape like %2F".into(),
                ));
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b);
        if !allowed {
            return Err(invalid(format!(
                "`{}` in the path or query must be percent-encoded (%{b:02X})",
                b as char
            )));
        }
        i += 1;
    }
    Ok(())
}

/// What is inside `[...]`: an IPv6 address, nothing else.
fn check_bracketed_host(inside: &str) -> Result<(), UrlError> {
    let invalid = |reason: &str| UrlError::Invalid {
        reason: reason.to_string(),
    };
    if inside.contains('%') {
        return Err(invalid("IPv6 zone ids (%25eth0) are not allowed"));
    }
    if inside.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if inside.parse::<Ipv4Addr>().is_ok() {
        return Err(invalid(
            "brackets are for IPv6 addresses; write an IPv4 address without them",
        ));
    }
    Err(invalid("the text in brackets is not an IPv6 address"))
}

/// A host outside brackets: a DNS name, or an IPv4 address in its one dotted-quad spelling.
fn check_name_host(host: &str) -> Result<(), UrlError> {
    let invalid = |reason: String| UrlError::Invalid { reason };
    if host.len() > 253 {
        return Err(invalid("the host name is longer than 253 bytes".into()));
    }
    if let Some(b) = host
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
    {
        return Err(invalid(format!(
            "`{}` is not allowed in a host name (letters, digits, `-`, `_` and `.`;              write international names in their xn-- form)",
            b as char
        )));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(invalid(format!("the host {host} has an empty label")));
    }
    if let Some(l) = labels.iter().find(|l| l.len() > 63) {
        return Err(invalid(format!(
            "the host label {}… is longer than 63 bytes",
            &l[..20]
        )));
    }
    if labels
        .iter()
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        return Err(invalid(format!(
            "a label of the host {host} starts or ends with `-`"
        )));
    }
    // A name whose last label is a number is read as an IPv4 address by resolvers and browsers
    // (`127.1`, `0x7f.1`, `0177.0.0.1` all mean 127.0.0.1): only the dotted quad is accepted.
    let last = labels.last().copied().unwrap_or("");
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"));
    if numeric {
        let quad = labels.len() == 4
            && host == name
            && labels.iter().all(|l| {
                l.bytes().all(|b| b.is_ascii_digit())
                    && (*l == "0" || !l.starts_with('0'))
                    && l.parse::<u8>().is_ok()
            });
        if !quad {
            return Err(invalid(format!(
                "the host {host} looks like an IPv4 address but is not written a.b.c.d                  with numbers from 0 to 255 without leading zeros"
            )));
        }
    }
    Ok(())
}

fn describe_char(c: char) -> String {
    if c == ' ' {
        "a space".to_string()
    } else if c.is_ascii() {
        format!("the control character U+{:04X}", c as u32)
    } else {
        format!("the non-ASCII character `{c}`")
    }
}

/// Why a host may not be contacted, or could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The host is, or resolves to, a forbidden address (see [`is_forbidden`]).
    #[error("{}", forbidden_message(.host, .addr, .kind))]
    Forbidden {
        /// The host as given, a name or an IP literal.
        host: String,
        /// The first forbidden address found.
        addr: IpAddr,
        /// What kind of address it is, such as "loopback" or "private".
        kind: &'static str,
    },
    /// The name could not be resolved.
    #[error("could not resolve the host {host}: {source}")]
    Resolve {
        /// The name that was looked up.
        host: String,
        /// What the system resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved, but to no address at all.
    #[error("the host {host} resolves to no address")]
    NoAddresses {
        /// The name that was looked up.
        host: String,
    },
}

/// Resolves `host` and checks every address it resolves to, returning them with `port`.
///
/// An IP literal (`192.0.2.1`, `::1` or `[::1]`) is checked without a lookup. When `allow_private`
/// is false and any address is forbidden, the host is refused, even if others are public: the
/// connector could pick any of them. There is no timeout here; the caller bounds the call.
pub async fn check_host(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, GuardError> {
    if let Some(ip) = parse_ip_literal(host) {
        check_ip(host, ip, allow_private)?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| GuardError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(GuardError::NoAddresses {
            host: host.to_owned(),
        });
    }
    for addr in &addrs {
        check_ip(host, addr.ip(), allow_private)?;
    }
    Ok(addrs)
}

/// Checks a URI host that is an IP literal; any other host passes, as it is left to the resolver.
///
/// `HttpConnector` connects to IP-literal hosts without asking its resolver, so
/// [`GuardedResolver`] never sees them. [`GuardedConnector`] calls this on every connection; a
/// caller that builds its own connector must call it before every attempt. It recognises literals
/// exactly as `HttpConnector` does: brackets stripped, then parsed as IPv4 or IPv6.
pub fn check_literal(uri_host: &str, allow_private: bool) -> Result<(), GuardError> {
    match parse_ip_literal(uri_host) {
        Some(ip) => check_ip(uri_host, ip, allow_private),
        None => Ok(()),
    }
}

/// Finds the [`GuardError`] in an error's source chain, such as a client error whose connection
/// was refused by [`GuardedConnector`] or [`GuardedResolver`].
pub fn find_guard_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a GuardError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(guard) = e.downcast_ref::<GuardError>() {
            return Some(guard);
        }
        current = e.source();
    }
    None
}

/// A resolver for `HttpConnector` that refuses names resolving to forbidden addresses.
///
/// The addresses it returns carry port 0; `HttpConnector` replaces it with the URI's port.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// When true, forbidden addresses are returned like any other (`delivery.allow_private_networks`).
    allow_private: bool,
}

impl GuardedResolver {
    /// A resolver enforcing `delivery.allow_private_networks = allow_private`.
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GuardError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GuardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            check_host(name.as_str(), 0, allow_private)
                .await
                .map(Vec::into_iter)
        })
    }
}

/// A connector that checks IP-literal hosts with [`check_literal`] before handing the URI to the
/// connector it wraps; with [`GuardedConnector::http`] every address connected to is checked.
#[derive(Debug, Clone)]
pub struct GuardedConnector<C> {
    /// The connector that makes the TCP connection once the host has passed.
    inner: C,
    /// When true, nothing is refused (`delivery.allow_private_networks`).
    allow_private: bool,
}

impl GuardedConnector<HttpConnector<GuardedResolver>> {
    /// An `HttpConnector` resolving through a [`GuardedResolver`], wrapped so that IP literals are
    /// checked too.
    ///
    /// It accepts https URIs (`enforce_http(false)`) so that a TLS connector can wrap it; further
    /// settings, such as the connect timeout, go through [`GuardedConnector::inner_mut`].
    pub fn http(allow_private: bool) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(allow_private));
        http.enforce_http(false);
        Self::new(http, allow_private)
    }
}

impl<C> GuardedConnector<C> {
    /// Wraps `inner`; pair it with a [`GuardedResolver`] so that names are checked as well.
    pub fn new(inner: C, allow_private: bool) -> Self {
        Self {
            inner,
            allow_private,
        }
    }

    /// The wrapped connector, to change its settings.
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }
}

impl<C> Service<Uri> for GuardedConnector<C>
where
    C: Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<Box<dyn StdError + Send + Sync>>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Err(refused) = check_literal(dst.host().unwrap_or(""), self.allow_private) {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// Refuses `ip` unless it is public or private addresses are allowed.
fn check_ip(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), GuardError> {
    match forbidden_kind(ip) {
        Some(kind) if !allow_private => Err(GuardError::Forbidden {
            host: host.to_owned(),
            addr: ip,
            kind,
        }),
        _ => Ok(()),
    }
}

/// The IP address in a host, with or without IPv6 brackets, parsed as `HttpConnector` parses it.
fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// The message of [`GuardError::Forbidden`], naming the setting that would allow the address.
fn forbidden_message(host: &str, addr: &IpAddr, kind: &str) -> String {
    let what = if parse_ip_literal(host) == Some(*addr) {
        format!("the address {addr}")
    } else {
        format!("the host {host} resolves to {addr}, which")
    };
    format!(
        "{what} is not a public address ({kind}); \
         set delivery.allow_private_networks = true to allow it"
    )
}

/// What kind of forbidden address `ip` is, or `None` when it is public.
fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// Forbidden IPv4 ranges as (network, prefix length, kind); the first match names the kind.
const V4_RANGES: &[(Ipv4Addr, u32, &str)] = &[
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(0, 0, 0, 0), 32, "unspecified"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\", reserved"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space, CGNAT",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments, reserved",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast, reserved",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// Forbidden IPv6 ranges as (network, prefix length, kind), checked after the embedded-IPv4 forms.
const V6_RANGES: &[(Ipv6Addr, u32, &str)] = &[
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments, reserved",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// The kind of a forbidden IPv4 address.
fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| prefix_matches(bits.into(), u32::from(*net).into(), *len, 32))
        .map(|(_, _, kind)| *kind)
}

/// The kind of a forbidden IPv6 address, judging embedded IPv4 addresses by themselves.
fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_kind(v4);
    }
    let bits = u128::from(ip);
    if let Some((_, _, kind)) = V6_RANGES
        .iter()
        .find(|(net, len, _)| prefix_matches(bits, u128::from(*net), *len, 128))
    {
        return Some(kind);
    }
    // Only 2000::/3 is allocated for global unicast; nothing else outside it is reachable.
    if !prefix_matches(bits, 0x2000 << 112, 3, 128) {
        return Some("reserved, outside global unicast");
    }
    None
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64 (`64:ff9b::/96`) or 6to4
/// IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    if prefix_matches(bits, 0xffff << 32, 96, 128) // ::ffff:a.b.c.d, IPv4-mapped.
        || prefix_matches(bits, 0, 96, 128) // ::a.b.c.d, IPv4-compatible.
        || prefix_matches(bits, 0x0064_ff9b << 96, 96, 128)
    {
        return Some(low32);
    }
    if prefix_matches(bits, 0x2002 << 112, 16, 128) {
        // 2002:aabb:ccdd::/48 carries a.b.c.d in its bits 16 to 47.
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether the top `len` of `width` bits of `addr` equal those of `net`.
fn prefix_matches(addr: u128, net: u128, len: u32, width: u32) -> bool {
    let shift = width - len;
    addr.checked_shr(shift).unwrap_or(0) == net.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests;
