//! Connections of the HTTP interface: accepting them under a cap, deadlines on reading requests,
//! closing idle ones, and the error shape on the refusals hyper makes by itself.
//!
//! hyper answers a request it cannot parse (bad request line or header, bad framing, HTTP/0.9,
//! more headers than allowed) with a status and an empty body, and offers no way to change that.
//! [`ConnIo`] sits between hyper and the socket and follows the responses hyper writes: each one
//! that answers a request the service saw is passed through, and one that answers no request is
//! hyper's own refusal, which is replaced by the same status with the `{"error": ...}` body. The
//! same wrapper enforces the deadline on a request's head (408 with the error shape) and on a
//! keep-alive connection's idleness (closed), and gives up on a client that stops reading.
//!
//! **Architecture Invariant:** what reaches the socket is hyper's bytes, except for a response head
//! that answers no request (replaced whole) and the 408 written when a head is late.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// The most connections served at once, whatever the open-files limit allows: each costs memory
/// (hyper's buffers), and a producer on localhost needs far fewer.
pub const MAX_CONNECTIONS_CEILING: usize = 16_384;
/// Refusals being written at once; past it an over-the-cap connection is closed without an answer,
/// so that refusing cannot itself use up the open files.
pub const MAX_REFUSING: usize = 64;
/// How long the daemon keeps reading what a refused client still sends, so that closing does not
/// reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);

/// The connection cap for `config`: `http.max_connections` when set, else the soft open-files
/// limit minus a reserve for the store's files, outbound attempts (and their pooled connections),
/// the listener and the runtime, at least a quarter of the limit and at most
/// [`MAX_CONNECTIONS_CEILING`].
pub fn max_connections(config: &Config) -> usize {
    if let Some(n) = config.http.max_connections {
        return n.max(1);
    }
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
        .min(1 << 30) as usize;
    let reserve = 2 * config.delivery.max_in_flight + 256 + MAX_REFUSING;
    soft.saturating_sub(reserve)
        .max(soft / 4)
        .clamp(1, MAX_CONNECTIONS_CEILING)
}

/// What the service tells the connection about each request it answers.
#[derive(Default)]
pub struct Exchange {
    /// Requests handed to the service so far.
    dispatched: AtomicU64,
    /// For each request handed over and not yet answered on the wire: was it a HEAD request (whose
    /// response carries a content-length but no body)?
    heads: Mutex<VecDeque<bool>>,
}

impl Exchange {
    /// Called by the service when hyper hands it a request, before it answers.
    pub fn request_started(&self, is_head: bool) {
        self.heads
            .lock()
            .expect("exchange lock poisoned")
            .push_back(is_head);
        self.dispatched.fetch_add(1, Ordering::Release);
    }

    fn take(&self) -> Option<bool> {
        self.heads
            .lock()
            .expect("exchange lock poisoned")
            .pop_front()
    }
}

/// Writes the over-the-cap refusal on `stream` and closes it, reading what the client still sends
/// for a moment so that the close does not reset the connection before the answer is read.
pub async fn refuse(mut stream: TcpStream) {
    let body = error_body(
        "too_many_connections",
        "the daemon is serving as many connections as it may; retry shortly",
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        drain(&mut stream).await;
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Reads and drops whatever the peer sends, up to its end or 1 MiB.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < (1 << 20) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// The socket as hyper sees it; see the module documentation.
pub struct ConnIo {
    /// `None` only once handed to the lingering close in `drop`.
    stream: Option<TcpStream>,
    exchange: Arc<Exchange>,
    /// How long a request head may take, and a connection may sit idle between requests.
    header_timeout: Duration,
    /// How long a write may wait for a client that does not read.
    write_timeout: Duration,
    /// Responses fully passed to the socket; a request is under way while fewer than dispatched.
    completed: u64,
    /// When the first byte of the head being read arrived, if one has.
    head_started: Option<Instant>,
    /// When the connection last became idle (accepted, or a response written).
    idle_since: Instant,
    /// The deadline of the head being read, or of the idleness.
    read_timer: Pin<Box<Sleep>>,
    /// The deadline of a write that makes no progress.
    write_timer: Pin<Box<Sleep>>,
    /// Where the response being written stands.
    out: Out,
    /// Bytes accepted from hyper (or written by the daemon itself) not yet on the socket.
    pending: Vec<u8>,
    pending_at: usize,
    /// Set once the daemon answered with an error and will close: then `drop` lingers.
    refused: bool,
    /// Since when writes have made no progress, while they are stuck.
    stalled_since: Option<Instant>,
    /// This connection's place under the cap, held until the socket is closed, lingering included.
    permit: Option<OwnedSemaphorePermit>,
}

/// The state of the response stream hyper writes.
enum Out {
    /// Gathering a response head until its blank line.
    Head(Vec<u8>),
    /// Passing through this many more body bytes of a response to a request.
    Body(u64),
    /// Following is no longer possible (a head without a content-length, or a replaced one):
    /// everything passes through as it is.
    Through,
}

/// A response head longer than this is not followed any more (hyper writes far smaller ones).
const MAX_TRACKED_HEAD: usize = 64 * 1024;

impl ConnIo {
    pub fn new(
        stream: TcpStream,
        exchange: Arc<Exchange>,
        config: &Config,
        permit: OwnedSemaphorePermit,
    ) -> ConnIo {
        let now = Instant::now();
        ConnIo {
            stream: Some(stream),
            exchange,
            header_timeout: config.http.header_timeout,
            write_timeout: config.http.body_timeout,
            completed: 0,
            head_started: None,
            idle_since: now,
            read_timer: Box::pin(tokio::time::sleep_until(now + config.http.header_timeout)),
            write_timer: Box::pin(tokio::time::sleep_until(now + config.http.body_timeout)),
            out: Out::Head(Vec::new()),
            pending: Vec::new(),
            pending_at: 0,
            refused: false,
            stalled_since: None,
            permit: Some(permit),
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("stream present until drop"))
    }

    fn in_request(&self) -> bool {
        self.exchange.dispatched.load(Ordering::Acquire) > self.completed
    }

    /// Writes out `pending`; Ready(Ok) once it is all on the socket.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let stream = Pin::new(self.stream.as_mut().expect("stream present until drop"));
            match stream.poll_write(cx, &self.pending[self.pending_at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending_at += n;
                    self.stalled_since = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // A client that stops reading must not hold the connection for ever.
                    let since = *self.stalled_since.get_or_insert_with(Instant::now);
                    if expired(&mut self.write_timer, cx, since + self.write_timeout) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading the response",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
        self.pending.clear();
        self.pending_at = 0;
        // An idle connection should not keep the buffer of a large response it once carried.
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Follows `data` (written by hyper) into `pending`, replacing a response head that answers
    /// no request.
    fn track(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.out {
                Out::Through => {
                    self.pending.extend_from_slice(data);
                    return;
                }
                Out::Body(remaining) => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    self.pending.extend_from_slice(&data[..n]);
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        self.out = Out::Head(Vec::new());
                        self.response_done();
                    }
                }
                Out::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(data);
                    let Some(end) = find_blank_line(head, before.saturating_sub(3)) else {
                        if head.len() > MAX_TRACKED_HEAD {
                            let head = std::mem::take(head);
                            self.pending.extend_from_slice(&head);
                            self.out = Out::Through;
                        }
                        return;
                    };
                    let rest = head.split_off(end);
                    let head = std::mem::take(head);
                    data = &data[data.len() - rest.len()..];
                    self.head_done(head);
                }
            }
        }
    }

    /// A complete response head from hyper.
    fn head_done(&mut self, head: Vec<u8>) {
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            // 100 Continue: a head without a body, answering nothing yet.
            self.pending.extend_from_slice(&head);
            self.out = Out::Head(Vec::new());
            return;
        }
        match self.exchange.take() {
            Some(is_head) => {
                let length = if is_head || status == 204 || status == 304 {
                    Some(0)
                } else {
                    content_length(&head)
                };
                self.pending.extend_from_slice(&head);
                match length {
                    Some(0) => {
                        self.out = Out::Head(Vec::new());
                        self.response_done();
                    }
                    Some(n) => self.out = Out::Body(n),
                    None => self.out = Out::Through,
                }
            }
            None => {
                // hyper's own answer to a request it could not parse.
                tracing::debug!(status, "refusing a request hyper could not parse");
                self.pending
                    .extend_from_slice(refusal_response(status).as_bytes());
                self.refused = true;
                // hyper closes the connection after it; anything more passes as it is.
                self.out = Out::Through;
            }
        }
    }

    fn response_done(&mut self) {
        self.completed += 1;
        self.head_started = None;
        self.idle_since = Instant::now();
    }
}

/// Arms `timer` for `deadline` and reports whether it has passed.
fn expired(timer: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>, deadline: Instant) -> bool {
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn content_length(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// The response that replaces hyper's empty refusal with `status`.
fn refusal_response(status: u16) -> String {
    let (reason, code, message) = match status {
        431 => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request has too many headers or headers too large (at most 100 headers, \
             about 400 KiB in all)",
        ),
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request's target is too long",
        ),
        _ => (
            "Bad Request",
            "invalid_request",
            "the request is not valid HTTP/1.1: its request line, a header or its framing \
             (content-length, transfer-encoding) could not be parsed",
        ),
    };
    let status = if status == 431 || status == 414 {
        status
    } else {
        400
    };
    let body = error_body(code, message);
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn timeout_response() -> String {
    let body = error_body(
        "request_timeout",
        "the request's head did not arrive in time; send the whole request at once",
    );
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.in_request() {
            // A body, read under the service's own deadline.
            this.head_started = None;
            return this.stream().poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match this.stream().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.head_started.is_none() {
                    this.head_started = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = this.head_started.unwrap_or(this.idle_since) + this.header_timeout;
                if !expired(&mut this.read_timer, cx, deadline) {
                    return Poll::Pending;
                }
                if this.head_started.is_none() {
                    // Idle for too long: end of input, which hyper takes as a quiet close.
                    return Poll::Ready(Ok(()));
                }
                // A head that is late: answer 408 (best effort, the socket is fresh), then fail
                // the read so hyper drops the connection without answering itself.
                this.pending
                    .extend_from_slice(timeout_response().as_bytes());
                this.refused = true;
                let _ = this.poll_pending(cx);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive in time",
                )))
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        this.track(data);
        // Start sending now; what is left goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        this.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        this.stream().poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        // After an error answer, read what the client still sends for a moment before closing:
        // closing with unread input resets the connection, and the client may lose the answer.
        if !self.refused {
            return;
        }
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let unsent = self
            .pending
            .split_off(self.pending_at.min(self.pending.len()));
        let permit = self.permit.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(LINGER, async {
                    stream.write_all(&unsent).await?;
                    stream.shutdown().await?;
                    drain(&mut stream).await;
                    Ok::<_, io::Error>(())
                })
                .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_read_from_a_head() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 17\r\n\r\n";
        assert_eq!(content_length(head), Some(17));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(find_blank_line(head, 0), Some(head.len()));
        assert_eq!(find_blank_line(b"a\r\n\r", 0), None);
    }

    #[test]
    fn refusals_carry_the_error_shape() {
        for status in [400u16, 431, 414, 505] {
            let response = refusal_response(status);
            let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
            let value: serde_json::Value = serde_json::from_str(body).expect("JSON body");
            assert!(value["error"]["code"].is_string(), "{response}");
            assert!(value["error"]["message"].is_string(), "{response}");
            assert_eq!(content_length(head.as_bytes()), Some(body.len() as u64));
            assert!(head.contains("connection: close"));
        }
    }
}
