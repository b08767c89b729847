//! A small Chrome DevTools Protocol client for the console's browser tests: starts headless
//! Chromium, speaks WebSocket (RFC 6455, client side) over a tokio TCP stream, and drives pages.
//!
//! No crate of its own: the protocol needs a handshake, masked text frames out and plain frames in,
//! which is less code than a dependency's build on a 2-core machine. Nothing here is in the daemon.

use rand::RngCore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long one protocol command may take on a loaded machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium to drive: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A headless Chromium and one DevTools connection to it. Killed (its whole process group) on drop.
pub struct Browser {
    child: Child,
    conn: Arc<Conn>,
    _profile: tempfile::TempDir,
}

/// The WebSocket: a writer, the commands waiting for their answers, and every event received.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    events: Mutex<Vec<Value>>,
    closed: Mutex<Option<String>>,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and connects to its DevTools endpoint.
    pub async fn start() -> Browser {
        let path = chromium_path();
        assert!(
            path.exists(),
            "the browser tests need Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            path.display()
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(&path);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--metrics-recording-only",
                "--password-store=basic",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group, so that drop ends the renderers with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(url.trim().to_string()));
                    }
                } else if tx.is_some() {
                    seen.push(line);
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join")
            .expect("chromium did not print its DevTools address within 60 s")
            .unwrap_or_else(|stderr| panic!("chromium exited before listening:\n{stderr}"));
        let conn = Conn::connect(&url).await;
        Browser {
            child,
            conn,
            _profile: profile,
        }
    }

    /// A new tab, attached, with the Page, Runtime, Network and Log domains on.
    pub async fn new_page(&self) -> Page {
        let target = self
            .conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let page = Page {
            conn: self.conn.clone(),
            session,
        };
        for domain in ["Page", "Runtime", "Network", "Log"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is Chromium's own (process_group(0) above): its id is the child's pid.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab: commands go to its session; events are read from the shared log by session id.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
}

impl Page {
    /// Sends a command to this page; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value; panics on an exception.
    pub async fn eval(&self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(details) = answer.get("exceptionDetails") {
            panic!("`{expression}` threw: {details}");
        }
        answer["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is truthy; panics after `timeout` with
    /// what the page shows.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let probe = format!(
            "(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&probe).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "not seen within {timeout:?}: {condition}\nthe page shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's text contains `text`.
    pub async fn wait_for_text(&self, text: &str) {
        let quoted = serde_json::to_string(text).unwrap();
        self.wait_for(
            &format!("document.body.innerText.includes({quoted})"),
            Duration::from_secs(30),
        )
        .await;
    }

    /// Clicks the element `selector` names (the first), waiting for it to exist.
    pub async fn click(&self, selector: &str) {
        let quoted = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!(
                "document.querySelector({quoted}) && !document.querySelector({quoted}).disabled"
            ),
            Duration::from_secs(30),
        )
        .await;
        self.eval(&format!("document.querySelector({quoted}).click()"))
            .await;
    }

    /// Types `value` into the input `selector` names, as a person would (input events).
    pub async fn fill(&self, selector: &str, value: &str) {
        let quoted = serde_json::to_string(selector).unwrap();
        let value = serde_json::to_string(value).unwrap();
        self.wait_for(
            &format!("document.querySelector({quoted})"),
            Duration::from_secs(30),
        )
        .await;
        self.eval(&format!(
            "(() => {{ const el = document.querySelector({quoted}); el.focus(); el.value = {value}; \
             el.dispatchEvent(new Event('input', {{bubbles: true}})); \
             el.dispatchEvent(new Event('change', {{bubbles: true}})); }})()"
        ))
        .await;
    }

    /// Presses a key on whatever has the focus (`Tab`, `Enter`, ...), through the input pipeline.
    pub async fn press(&self, key: &str, code: &str, key_code: u32) {
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code}),
            )
            .await;
        }
        if key == "Enter" {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "char", "text": "\r", "key": "Enter"}),
            )
            .await;
        }
    }

    /// The viewport: `width`×`height` CSS pixels; `mobile` for a phone.
    pub async fn set_size(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The events of this page so far with the given method.
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.conn
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["sessionId"] == self.session.as_str() && e["method"] == method)
            .map(|e| e["params"].clone())
            .collect()
    }

    /// JavaScript exceptions, `console.error` calls and error log entries (CSP violations, failed
    /// loads of the console's files) so far, each as a line.
    pub fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.events("Runtime.exceptionThrown") {
            let d = &e["exceptionDetails"];
            out.push(format!(
                "exception: {} {}",
                d["text"].as_str().unwrap_or(""),
                d["exception"]["description"].as_str().unwrap_or("")
            ));
        }
        for e in self.events("Runtime.consoleAPICalled") {
            if e["type"] == "error" || e["type"] == "assert" {
                out.push(format!("console.{}: {}", e["type"], e["args"]));
            }
        }
        for e in self.events("Log.entryAdded") {
            let entry = &e["entry"];
            // An API answer of 4xx is logged by Chromium as a failed load; the page handles those
            // itself (login, 403, 404). A failed load of the page's own files still counts.
            let api_answer = entry["source"] == "network"
                && !entry["url"].as_str().unwrap_or("").contains("/console");
            if entry["level"] == "error" && !api_answer {
                out.push(format!(
                    "log: {} {}",
                    e["entry"]["text"].as_str().unwrap_or(""),
                    e["entry"]["url"].as_str().unwrap_or("")
                ));
            }
        }
        out
    }

    /// Every URL the page requested, in order.
    pub fn requested_urls(&self) -> Vec<String> {
        self.events("Network.requestWillBeSent")
            .iter()
            .filter_map(|e| e["request"]["url"].as_str().map(str::to_string))
            .collect()
    }
}

impl Conn {
    async fn connect(url: &str) -> Arc<Conn> {
        let rest = url.strip_prefix("ws://").expect("a ws:// DevTools address");
        let (host, path) = rest.split_once('/').expect("a path");
        let stream = TcpStream::connect(host).await.expect("connect to DevTools");
        stream.set_nodelay(true).ok();
        let (mut read, mut write) = stream.into_split();
        let mut key = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut key);
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        write
            .write_all(request.as_bytes())
            .await
            .expect("handshake");
        // The answer's head, byte by byte: the frames that follow must stay unread.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = read.read_u8().await.expect("handshake answer");
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "DevTools refused the WebSocket: {head}"
        );
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(write),
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            closed: Mutex::new(None),
        });
        let reader = conn.clone();
        tokio::spawn(async move {
            let why = loop {
                match read_message(&mut read, &reader).await {
                    Ok(Some(text)) => reader.dispatch(&text),
                    Ok(None) => {}
                    Err(e) => break e,
                }
            };
            *reader.closed.lock().unwrap() = Some(why);
            reader.waiting.lock().unwrap().clear();
        });
        conn
    }

    fn dispatch(&self, text: &str) {
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return,
        };
        match message["id"].as_u64() {
            Some(id) => {
                if let Some(tx) = self.waiting.lock().unwrap().remove(&id) {
                    let _ = tx.send(message);
                }
            }
            None => self.events.lock().unwrap().push(message),
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.send_frame(0x1, message.to_string().as_bytes()).await;
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => panic!(
                "the DevTools connection closed during {method}: {:?}",
                self.closed.lock().unwrap()
            ),
            Err(_) => panic!("{method} got no answer within {COMMAND_TIMEOUT:?}"),
        };
        if let Some(error) = answer.get("error") {
            panic!("{method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// One masked frame (a client must mask; RFC 6455 section 5.3).
    async fn send_frame(&self, opcode: u8, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut mask = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut mask);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut writer = self.writer.lock().await;
        writer.write_all(&frame).await.expect("send to DevTools");
    }
}

/// Reads one whole message (joining fragments); answers pings; `None` for control frames.
async fn read_message(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    conn: &Conn,
) -> Result<Option<String>, String> {
    let mut message = Vec::new();
    loop {
        let b0 = read.read_u8().await.map_err(|e| e.to_string())?;
        let b1 = read.read_u8().await.map_err(|e| e.to_string())?;
        let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0f, b1 & 0x80 != 0);
        let len = match b1 & 0x7f {
            126 => read.read_u16().await.map_err(|e| e.to_string())? as u64,
            127 => read.read_u64().await.map_err(|e| e.to_string())?,
            n => n as u64,
        };
        let mut mask = [0u8; 4];
        if masked {
            read.read_exact(&mut mask)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut payload = vec![0u8; len as usize];
        read.read_exact(&mut payload)
            .await
            .map_err(|e| e.to_string())?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            0x8 => return Err("closed by the browser".into()),
            0x9 => {
                conn.send_frame(0xA, &payload).await;
                return Ok(None);
            }
            0xA => return Ok(None),
            _ => message.extend_from_slice(&payload),
        }
        if fin {
            return Ok(Some(String::from_utf8_lossy(&message).into_owned()));
        }
    }
}
