//! A complete, small receiver of Preflix AI webhook deliveries, following the partner
//! guide's testing checklist. Copy it, then replace [`process`] with your own work.
//!
//! # Running it
//!
//! ```sh
//! export PREFLIX_WEBHOOK_SECRET='whsec_...'          # the endpoint's secret; never on the command line
//! cargo run --example receiver -- --listen 127.0.0.1:9000 --state-dir receiver-state
//! ```
//!
//! | argument | environment | default |
//! |---|---|---|
//! | | `PREFLIX_WEBHOOK_SECRET` | required: one secret, or several separated by `,` while a secret rotates |
//! | `--listen ADDR` | `PREFLIX_RECEIVER_LISTEN` | `127.0.0.1:9000` (port 0 picks a free port) |
//! | `--state-dir DIR` | `PREFLIX_RECEIVER_STATE_DIR` | `receiver-state` |
//! | `--processed-log FILE` | `PREFLIX_RECEIVER_PROCESSED_LOG` | `<state-dir>/processed.log` |
//! | `--work-ms N` | `PREFLIX_RECEIVER_WORK_MS` | `100`: how long the pretend work of one event takes |
//!
//! It prints `listening on http://ADDR` on stdout once it accepts connections, and logs
//! one line per request on stderr. Stop it with Ctrl-C or any signal: everything it
//! acknowledged is already on disk, and work not yet done is picked up at the next start.
//!
//! # The checklist, and where each item is
//!
//! - **Verify signatures with the raw request body before JSON parsing.** [`handle`]
//!   reads the body as bytes (refusing more than [`MAX_BODY_BYTES`]) and hands those exact
//!   bytes to [`Verifier::verify`] together with the request headers. Either header set
//!   verifies (`preflixai-timestamp` + `preflixai-signature`, or the Standard Webhooks
//!   `webhook-id` + `webhook-timestamp` + `webhook-signature`). Only a verified body is
//!   parsed. Missing or malformed signature headers get `400`, a signature that does not
//!   match (tampered body, wrong secret) gets `401`, with the reason in the answer.
//! - **Reject events with stale timestamps or unknown event ids.** The verifier refuses a
//!   signed timestamp more than five minutes from this machine's clock, in either
//!   direction (`401`), so a captured delivery cannot be replayed later: the timestamp is
//!   signed and cannot be moved. The event id and type are taken from the signed body,
//!   never from unsigned headers; an id that is not an event id, or one that differs from
//!   the signed `webhook-id`, gets `400`, and a type this receiver does not handle gets
//!   `422` (subscribe only to the types you handle).
//! - **Return 2xx only after validation and durable queueing succeed.** [`Journal`] is an
//!   append-only file `<state-dir>/seen-events` with one `<id> <type>` line per accepted
//!   event, flushed to disk with `fsync` before the answer. It is both the record of
//!   event ids seen and the durable queue of work: the answer is `202` only once the line
//!   is on disk, and `503` (which the daemon retries) if it cannot be written.
//! - **Duplicates do nothing twice.** Delivery is at least once: a retry after a lost
//!   answer, or a `POST /v1/events/{id}/redeliver`, brings the same event id again. The
//!   journal is loaded at start, so an id already in it is answered `200` with
//!   `"duplicate": true` and not queued again, even across restarts.
//! - **Return quickly, process later.** The handler only verifies, records and queues;
//!   a worker task takes events from a channel in journal order and does the work
//!   ([`process`]: here it appends `processed <id> <type>` to the processed log and
//!   fsyncs it). At start, journal entries without a `processed` line are queued again.
//! - **Keep payloads out of logs.** Log lines carry only event ids, types, statuses and the
//!   verifier's reason. Neither bodies, signatures nor secrets are logged or echoed.
//! - **Separate secrets for sandbox and production.** Run one receiver (or one
//!   `PREFLIX_WEBHOOK_SECRET`) per environment; each endpoint has its own secret.
//! - **Replay sample events before going live.** See "Going live" in the README:
//!   `POST /v1/endpoints/{id}/test` sends each type's sample to a sandbox endpoint, and
//!   `preflix-webhookd sign` makes headers for hand-made requests with curl.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use preflix_webhookd::signing::{HeaderSet, Secret, Verifier, VerifyError, WEBHOOK_ID};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Bodies larger than this are refused with 413 before any verification.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The event types this receiver handles: the whole catalog (spec section 6).
const HANDLED_TYPES: [&str; 6] = [
    "bill.created",
    "bill.document_ready",
    "audit.started",
    "audit.completed",
    "letter.ready",
    "dispute.status_changed",
];

/// One accepted event, as queued for the worker.
struct Event {
    id: String,
    event_type: String,
}

/// What every request handler shares.
struct App {
    verifier: Verifier,
    journal: Mutex<Journal>,
    work: mpsc::UnboundedSender<Event>,
}

/// The settings, from arguments and the environment.
struct Settings {
    listen: SocketAddr,
    secrets: Vec<Secret>,
    state_dir: PathBuf,
    processed_log: PathBuf,
    work: Duration,
}

#[tokio::main]
async fn main() {
    let settings = match Settings::read() {
        Ok(settings) => settings,
        Err(why) => {
            eprintln!("receiver: {why}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(settings).await {
        eprintln!("receiver: {e}");
        std::process::exit(1);
    }
}

async fn run(settings: Settings) -> io::Result<()> {
    let (journal, entries) = Journal::open(&settings.state_dir)?;
    let done = processed_ids(&settings.processed_log)?;
    let (work, queue) = mpsc::unbounded_channel();
    // Work acknowledged before a stop but not yet done is queued again, in journal order.
    let mut resumed = 0;
    for event in entries {
        if !done.contains(&event.id) {
            resumed += 1;
            work.send(event).expect("the worker is not started yet");
        }
    }
    let processed_log = settings.processed_log.clone();
    let pause = settings.work;
    tokio::task::spawn_blocking(move || worker(queue, &processed_log, pause));

    let app = Arc::new(App {
        verifier: Verifier::new(settings.secrets),
        journal: Mutex::new(journal),
        work,
    });
    let listener = TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    eprintln!(
        "receiver: {} events seen, {resumed} waiting for processing; state in {}",
        app.journal.lock().unwrap().seen.len(),
        settings.state_dir.display()
    );
    println!("listening on http://{addr}");
    io::stdout().flush()?;

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(e) => {
                eprintln!("receiver: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&app, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one delivery: read raw, verify, parse, record durably, queue, acknowledge.
async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "POST only"}),
        );
    }
    let (parts, body) = req.into_parts();

    // 1. The raw bytes, exactly as sent: re-serialized JSON would not verify.
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return reject(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
        }
        Err(_) => return reject(StatusCode::BAD_REQUEST, "the body could not be read"),
    };

    // 2. Verify before parsing: signature over the raw body, and the timestamp's age.
    let verified = match app.verifier.verify(&parts.headers, &body, unix_now()) {
        Ok(verified) => verified,
        Err(error) => {
            let status = match error {
                VerifyError::MissingHeader(_) | VerifyError::MalformedHeader(..) => {
                    StatusCode::BAD_REQUEST
                }
                VerifyError::StaleTimestamp
                | VerifyError::FutureTimestamp
                | VerifyError::NoMatchingSignature => StatusCode::UNAUTHORIZED,
            };
            return reject(status, &error.to_string());
        }
    };

    // 3. Only now parse, and take the id and type from the signed body.
    let event = match read_event(&body, &parts.headers, verified.header_set) {
        Ok(event) => event,
        Err((status, why)) => return reject(status, why),
    };

    // 4. Record the id durably (and so queue the work) before answering.
    let (id, event_type) = (event.id.clone(), event.event_type.clone());
    let recorded = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || {
            let mut journal = app.journal.lock().unwrap_or_else(|e| e.into_inner());
            let recorded = journal.record(&event)?;
            if recorded == Recorded::New {
                // Sent under the lock, so the worker sees events in journal order.
                let _ = app.work.send(event);
            }
            Ok::<_, io::Error>(recorded)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    };
    match recorded {
        Ok(Recorded::New) => {
            eprintln!(
                "receiver: accepted {} {} ({} set, secret #{})",
                id, event_type, verified.header_set, verified.secret_index
            );
            answer(
                StatusCode::ACCEPTED,
                json!({"id": id, "queued": true, "duplicate": false}),
            )
        }
        Ok(Recorded::Duplicate) => {
            eprintln!(
                "receiver: duplicate {} {}: already recorded, not processed again",
                id, event_type
            );
            answer(
                StatusCode::OK,
                json!({"id": id, "queued": false, "duplicate": true}),
            )
        }
        Err(e) => {
            eprintln!("receiver: cannot record {id}: {e}");
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; retry later",
            )
        }
    }
}

/// The event's id and type from a verified body, or why the body is refused.
fn read_event(
    body: &[u8],
    headers: &HeaderMap,
    set: HeaderSet,
) -> Result<Event, (StatusCode, &'static str)> {
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(body) else {
        return Err((StatusCode::BAD_REQUEST, "the body is not a JSON object"));
    };
    let id = match event.get("id").and_then(Value::as_str) {
        Some(id) if is_event_id(id) => id,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                "the body's `id` is missing or not an event id",
            ))
        }
    };
    if set == HeaderSet::StandardWebhooks
        && headers.get(WEBHOOK_ID).and_then(|v| v.to_str().ok()) != Some(id)
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body's `id` is not the signed `webhook-id`",
        ));
    }
    let event_type = match event.get("type").and_then(Value::as_str) {
        Some(t) if HANDLED_TYPES.contains(&t) => t,
        Some(_) => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "this receiver does not handle that event type",
            ))
        }
        None => return Err((StatusCode::BAD_REQUEST, "the body has no `type`")),
    };
    Ok(Event {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
    })
}

/// Whether `id` has the shape of an event id, `[A-Za-z0-9._-]{1,128}` (which also keeps
/// the journal one event a line).
fn is_event_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Logs a refusal (the reason only, never the body) and answers it.
fn reject(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    eprintln!("receiver: rejected {}: {why}", status.as_u16());
    answer(status, json!({"error": why}))
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// Whether [`Journal::record`] saw the id for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    New,
    Duplicate,
}

/// The append-only file of accepted events, `<id> <type>` a line, and the ids in it.
struct Journal {
    file: File,
    /// The file's length after the last complete line.
    len: u64,
    seen: HashSet<String>,
}

impl Journal {
    /// Opens (or creates) `<dir>/seen-events` and returns it with its entries in order.
    fn open(dir: &Path) -> io::Result<(Journal, Vec<Event>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("seen-events");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        sync_dir(dir)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        // A line cut short by a crash was never acknowledged: drop it, the daemon retries.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for line in text[..complete].lines() {
            if let Some((id, event_type)) = line.split_once(' ') {
                if seen.insert(id.to_owned()) {
                    entries.push(Event {
                        id: id.to_owned(),
                        event_type: event_type.to_owned(),
                    });
                }
            }
        }
        let journal = Journal {
            file,
            len: complete as u64,
            seen,
        };
        Ok((journal, entries))
    }

    /// Records an event id on disk, unless it was seen before.
    fn record(&mut self, event: &Event) -> io::Result<Recorded> {
        if self.seen.contains(&event.id) {
            return Ok(Recorded::Duplicate);
        }
        let line = format!("{} {}\n", event.id, event.event_type);
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial line behind; the answer is 503 and the daemon retries.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        self.seen.insert(event.id.clone());
        Ok(Recorded::New)
    }
}

/// The ids that already have a `processed` line.
fn processed_ids(path: &Path) -> io::Result<HashSet<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix("processed "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

/// Takes queued events one at a time and processes each, retrying until it is done.
fn worker(mut queue: mpsc::UnboundedReceiver<Event>, processed_log: &Path, pause: Duration) {
    while let Some(event) = queue.blocking_recv() {
        std::thread::sleep(pause);
        while let Err(e) = process(&event, processed_log) {
            eprintln!("receiver: processing {} failed, retrying: {e}", event.id);
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("receiver: processed {} {}", event.id, event.event_type);
    }
}

/// The work for one event. A real receiver fetches the report, updates the case, notifies
/// the advocate...; this one appends `processed <id> <type>` to the processed log.
fn process(event: &Event, processed_log: &Path) -> io::Result<()> {
    if let Some(dir) = processed_log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(processed_log)?;
    log.write_all(format!("processed {} {}\n", event.id, event.event_type).as_bytes())?;
    log.sync_data()
}

/// Makes a file just created in `dir` survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Settings {
    /// Reads `--name value` arguments, falling back to the environment, then defaults.
    fn read() -> Result<Settings, String> {
        let mut args = std::env::args().skip(1);
        let mut given = std::collections::HashMap::new();
        while let Some(arg) = args.next() {
            let name = match arg.as_str() {
                "--listen" | "--state-dir" | "--processed-log" | "--work-ms" => arg,
                "-h" | "--help" => {
                    println!(
                        "usage: receiver [--listen ADDR] [--state-dir DIR] [--processed-log FILE] \
                         [--work-ms N]\nthe secret(s) come from PREFLIX_WEBHOOK_SECRET (comma-separated)"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`; see --help")),
            };
            let value = args.next().ok_or(format!("{name} needs a value"))?;
            given.insert(name, value);
        }
        let setting = |flag: &str, var: &str| {
            given
                .get(flag)
                .cloned()
                .or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        };

        let secrets_text = std::env::var("PREFLIX_WEBHOOK_SECRET")
            .map_err(|_| "set PREFLIX_WEBHOOK_SECRET to the endpoint's whsec_ secret")?;
        let secrets = secrets_text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .enumerate()
            .map(|(i, s)| Secret::parse(s).map_err(|e| format!("PREFLIX_WEBHOOK_SECRET #{i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err("PREFLIX_WEBHOOK_SECRET holds no secret".into());
        }
        let listen = setting("--listen", "PREFLIX_RECEIVER_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:9000".into());
        let listen = listen
            .parse()
            .map_err(|_| format!("--listen: `{listen}` is not an address like 127.0.0.1:9000"))?;
        let state_dir = PathBuf::from(
            setting("--state-dir", "PREFLIX_RECEIVER_STATE_DIR")
                .unwrap_or_else(|| "receiver-state".into()),
        );
        let processed_log = setting("--processed-log", "PREFLIX_RECEIVER_PROCESSED_LOG")
            .map_or_else(|| state_dir.join("processed.log"), PathBuf::from);
        let work_ms = setting("--work-ms", "PREFLIX_RECEIVER_WORK_MS")
            .map_or(Ok(100), |ms| ms.parse::<u64>())
            .map_err(|_| "--work-ms must be a whole number of milliseconds")?;
        Ok(Settings {
            listen,
            secrets,
            state_dir,
            processed_log,
            work: Duration::from_millis(work_ms),
        })
    }
}
