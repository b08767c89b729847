//! Load generator and baseline runner for preflix-webhookd.
//!
//! Everything runs in this one process: the daemon (through `preflix_webhookd::run` on a temp
//! directory, `delivery.allow_private_networks = true`, `require_https = false`), a fast local
//! receiver (a bare hyper server answering 200 at once), and the client workers (one hyper HTTP/1
//! keep-alive connection each). Nothing else needs to be running. The client and the receiver run
//! on their own tokio runtimes (threads `lg-client`, `lg-recv`) so that each scenario can print the
//! CPU time of every kind of thread (`daemon-rt`, `store-writer`, `store-syncer`, `sled-io`, ...)
//! read from /proc, and the daemon's CPU per event. The receiver counts distinct event ids, and
//! reports deliveries that arrive twice and how many connections the daemon opened.
//!
//! ```text
//! cargo build --release --example loadgen
//! cargo run --release --example loadgen -- <scenario> [options]
//!
//! scenarios:
//!   ingest           N single-event POST /v1/events over C keep-alive connections; the endpoint is
//!                    rate-limited to 1 delivery/s, so deliveries are stored but delivery does not compete
//!   ingest+deliver   the same, with the endpoint delivering to the fast receiver at full speed
//!   batch            POST /v1/events/batch with --batch events each (default: 100, then 1000)
//!   deliver          pre-load N pending deliveries, then lift the endpoint's rate limit and time them out
//!   e2e              ingest→first-attempt latency on an idle daemon (--samples), then ingest and
//!                    delivery together: end-to-end events/s and latency under load
//!   baseline-sled    raw sled 0.34: batches of 16 one-KiB values, flush + fdatasync, for --secs;
//!                    then the daemon's own write pattern on raw sled, with and without fdatasync
//!   baseline-hyper   a bare hyper server answering 200 to POSTs, driven by the same client code
//!   baseline-client  a bare hyper client sending signed POSTs to the fast receiver
//!   fairness         a healthy endpoint's ingest→delivery latency (200 events/s for --secs) alone, then
//!                    beside a silent endpoint (accepts, never answers), beside silent + slow (1 s) +
//!                    failing (503) ones, and beside 3 failing ones; each bad endpoint has
//!                    `max_in_flight` 10000 and --events (default 3000) pending; a fresh daemon each
//!   million          pre-load --events (default 1,000,000) pending deliveries, then /status and
//!                    /metrics latency, resident memory and restart time, in process and in fresh
//!                    processes (--runs of them), and raw sled opening the same store
//!   all              the quick ones, --runs times each (default 3), then a table of medians
//!   cluster          the daemon as processes of the release binary (`cargo build --release` first):
//!                    `--backend sled|postgres`, `--nodes N` on one throwaway PostgreSQL cluster
//!                    (initdb + pg_ctl, fsync on); ingest, delivery and end to end with the load
//!                    spread round-robin over the nodes, pgbench TPC-B on the same cluster, idle
//!                    ingest→first attempt told apart by the node that made it, failover after a
//!                    SIGKILL (`--lease S`, default 5); see examples/loadgen/cluster.rs
//!   cluster-all      cluster for sled, PostgreSQL 1 node and 2 nodes, --runs times, then medians
//! ```
//!
//! Options: `--events N` (default 100000; million: 1000000), `--conns C` (default 64; batch and
//! pre-loads: 4), `--batch B`, `--runs R`, `--secs S` (baseline-sled), `--samples K` (e2e idle,
//! default 1000), `--max-in-flight M` (endpoint and `delivery.max_in_flight`, default 256),
//! `--tmp DIR` (where temp dirs go; default $TMPDIR), `--dir DIR` (million: keep the store there
//! and reuse it on the next run), `--probe-secs S` (million: how long a fresh process is watched),
//! `--threads T` (the daemon's tokio workers; default: one per core), `--lg-threads T` (client and
//! receiver workers, each; default 2), `--shared-rt` (client and receiver on the daemon's runtime).
//! The daemon's warnings go to stderr; `RUST_LOG` changes the level.

#[path = "loadgen/cluster.rs"]
mod cluster;
/// The tests' throwaway PostgreSQL cluster, shared with the load generator.
#[path = "../tests/it/support/pg.rs"]
#[allow(dead_code)]
mod pg;

/// mimalloc instead of glibc's malloc: sled clones tree nodes on every split and consolidation, and
/// glibc's allocator took a quarter of the store writer's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use preflix_webhookd::config::Config;
use preflix_webhookd::shutdown::{Shutdown, Trigger};
use preflix_webhookd::signing::{self, Secret};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

#[derive(Parser, Debug, Clone)]
#[command(about = "preflix-webhookd load generator and baselines")]
struct Args {
    /// ingest | ingest+deliver | batch | deliver | e2e | fairness | baseline-sled | baseline-hyper | baseline-client | million | all
    scenario: String,
    /// Events (or requests) per run; million: pending deliveries to pre-load.
    #[arg(long)]
    events: Option<usize>,
    /// Concurrent keep-alive connections.
    #[arg(long)]
    conns: Option<usize>,
    /// Events per batch request (batch scenario); default runs 100 then 1000.
    #[arg(long)]
    batch: Option<usize>,
    /// Repetitions; the table shows the median.
    #[arg(long)]
    runs: Option<usize>,
    /// How long baseline-sled runs, seconds; fairness: how long the healthy endpoint gets events.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Idle ingest→first-attempt samples (e2e).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Where temporary directories are made.
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// million / probe: the store directory to fill (or reuse when already filled).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Tokio worker threads of the daemon's runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// million: how long each fresh-process probe watches the idle daemon's memory, seconds.
    #[arg(long, default_value_t = 5)]
    probe_secs: u64,
    /// Attempts in flight: the endpoint's `max_in_flight` and `delivery.max_in_flight`.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Worker threads of the load generator's own runtimes (client, receiver), each.
    #[arg(long, default_value_t = 2)]
    lg_threads: usize,
    /// fairness: the phases to run, comma-separated (alone, silent, silent+slow+failing, 3-failing);
    /// default all.
    #[arg(long)]
    phases: Option<String>,
    /// Run the client and the receiver on the daemon's runtime instead of their own (their CPU
    /// time is then not told apart from the daemon's).
    #[arg(long)]
    shared_rt: bool,
    /// cluster: `sled` or `postgres`.
    #[arg(long, default_value = "sled")]
    backend: String,
    /// cluster: daemons on the one database (postgres).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// cluster: `storage.postgres.lease`, seconds.
    #[arg(long, default_value_t = 5)]
    lease: u64,
    /// cluster: how long to wait for every delivery, seconds.
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
    /// cluster: how long pgbench's TPC-B runs, seconds.
    #[arg(long, default_value_t = 20)]
    pgbench_secs: u64,
}

type Figures = BTreeMap<String, f64>;

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = now_us();
    // The daemon's own warnings and errors go to stderr (RUST_LOG overrides the level).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("daemon-rt");
    if let Some(t) = args.threads {
        rt.worker_threads(t);
    }
    let rt = rt.build()?;
    let own = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            .worker_threads(args.lg_threads)
            .build()
    };
    let runtimes = if args.shared_rt {
        Runtimes {
            client: rt.handle().clone(),
            recv: rt.handle().clone(),
            _own: vec![],
        }
    } else {
        let (client, recv) = (own("lg-client")?, own("lg-recv")?);
        Runtimes {
            client: client.handle().clone(),
            recv: recv.handle().clone(),
            _own: vec![client, recv],
        }
    };
    let _ = RUNTIMES.set(runtimes);
    MAX_IN_FLIGHT.store(args.max_in_flight, Ordering::Relaxed);
    rt.block_on(run(args))
}

/// Where the load generator's client workers and receiver run: by default their own runtimes
/// (threads `lg-client` and `lg-recv`), so that their CPU time is told apart from the daemon's
/// (`daemon-rt`, `store-*`, sled's threads).
struct Runtimes {
    client: tokio::runtime::Handle,
    recv: tokio::runtime::Handle,
    _own: Vec<tokio::runtime::Runtime>,
}

static RUNTIMES: OnceLock<Runtimes> = OnceLock::new();

static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(256);

/// `--max-in-flight`: both the endpoint's limit and `delivery.max_in_flight`.
fn max_in_flight() -> usize {
    MAX_IN_FLIGHT.load(Ordering::Relaxed)
}

fn client_rt() -> tokio::runtime::Handle {
    RUNTIMES
        .get()
        .map_or_else(tokio::runtime::Handle::current, |r| r.client.clone())
}

fn recv_rt() -> tokio::runtime::Handle {
    RUNTIMES
        .get()
        .map_or_else(tokio::runtime::Handle::current, |r| r.recv.clone())
}

// ---------------------------------------------------------------------------------------------
// CPU time per thread, from /proc

/// CPU seconds (user + system) used so far by each live thread of this process: tid → (name, seconds).
///
/// Keyed by thread id so that a thread ending between two readings (tokio's idle blocking
/// threads do) does not make its name's total go backwards.
fn thread_cpu() -> BTreeMap<u64, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3, utime field 14, stime field 15 (in clock ticks of 1/100 s).
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.insert(tid, (name.to_string(), ticks as f64 / 100.0));
    }
    out
}

/// Prints the CPU time each kind of thread used since `before` over `wall`, and the daemon's
/// CPU per item; returns the daemon's (everything but the load generator's threads) CPU µs per item.
fn print_cpu(before: &BTreeMap<u64, (String, f64)>, wall: Duration, items: u64) -> f64 {
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, secs)) in thread_cpu() {
        let was = before.get(&tid).map_or(0.0, |b| b.1);
        *by_name.entry(name).or_insert(0.0) += (secs - was).max(0.0);
    }
    let after = by_name;
    let mut parts: Vec<(String, f64)> = after.into_iter().filter(|(_, v)| *v >= 0.01).collect();
    parts.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let lg: f64 = parts
        .iter()
        .filter(|p| p.0.starts_with("lg-"))
        .map(|p| p.1)
        .sum();
    let daemon = total - lg;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let text: Vec<String> = parts.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    let per_item = daemon * 1e6 / items.max(1) as f64;
    println!(
        "  cpu s: {} | total {:.2} s = {:.0}% of {cores} cores over {:.2} s; daemon side {:.2} s = {:.0} µs per item, load generator {:.2} s",
        text.join(", "),
        total,
        100.0 * total / (cores * wall.as_secs_f64()),
        wall.as_secs_f64(),
        daemon,
        per_item,
        lg
    );
    per_item
}

async fn run(args: Args) -> Result<()> {
    if args.scenario != "probe" {
        print_machine();
    }
    let figs = match args.scenario.as_str() {
        "ingest" => ingest(&args, false).await?,
        "ingest+deliver" => ingest(&args, true).await?,
        "batch" => {
            let mut figs = Figures::new();
            let sizes = args.batch.map_or(vec![100, 1000], |b| vec![b]);
            for size in sizes {
                figs.extend(batch(&args, size).await?);
            }
            figs
        }
        "deliver" => deliver(&args).await?,
        "e2e" => e2e(&args).await?,
        "fairness" => fairness(&args).await?,
        "baseline-sled" => baseline_sled(&args).await?,
        "baseline-hyper" => baseline_hyper(&args).await?,
        "baseline-client" => baseline_client(&args).await?,
        "million" => million(&args).await?,
        "probe" => return probe(&args).await,
        "probe-sled" => return probe_sled(&args),
        "all" => return all(&args).await,
        "cluster" => cluster::cluster(&args).await?,
        "cluster-all" => return cluster::cluster_all(&args).await,
        other => bail!("unknown scenario `{other}`; see the top of examples/loadgen.rs"),
    };
    println!("\nfigures:");
    for (k, v) in &figs {
        println!("  {k:<44} {}", fmt_num(*v));
    }
    Ok(())
}

fn print_machine() {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# machine: nproc={nproc}, kernel {}, loadavg {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

// ---------------------------------------------------------------------------------------------
// Time and percentiles

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since this process started measuring; comparable across tasks and threads.
fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The p-th percentile (0..=100) of sorted microsecond samples, in milliseconds.
fn pct_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if values.is_empty() {
        f64::NAN
    } else {
        values[values.len() / 2]
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        let n = v.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(body)).expect("valid request")
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// What one load run saw.
struct LoadReport {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    /// Per-request latency in microseconds, sorted.
    lat_us: Vec<u32>,
    first_error: Option<String>,
}

impl LoadReport {
    fn per_sec(&self, items_per_request: f64) -> f64 {
        self.ok as f64 * items_per_request / self.elapsed.as_secs_f64()
    }
    fn p(&self, p: f64) -> f64 {
        pct_ms(&self.lat_us, p)
    }
    fn print(&self, what: &str, items_per_request: f64, unit: &str) {
        println!(
            "  {what}: {} ok, {} failed in {:.2} s → {} {unit}/s; latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            fmt_num(self.per_sec(items_per_request)),
            self.p(50.0),
            self.p(99.0),
            self.p(100.0)
        );
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }
}

/// Sends `total` requests made by `make(i)` over `conns` keep-alive connections, each connection
/// one request at a time; a request counts as ok when `ok(status)`.
async fn drive<F>(
    addr: SocketAddr,
    conns: usize,
    total: usize,
    make: F,
    ok: fn(StatusCode) -> bool,
) -> Result<LoadReport>
where
    F: Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    drive_nodes(vec![addr], conns, total, move |i, _| make(i), ok).await
}

/// [`drive`] against several daemons: connection `c` goes to `addrs[c % addrs.len()]`, so the
/// load is spread round-robin; `make(i, addr)` builds request `i` for the daemon at `addr`.
async fn drive_nodes<F>(
    addrs: Vec<SocketAddr>,
    conns: usize,
    total: usize,
    make: F,
    ok: fn(StatusCode) -> bool,
) -> Result<LoadReport>
where
    F: Fn(usize, SocketAddr) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    // Every worker connects first; the clock starts once all are connected.
    let barrier = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let rt = client_rt();
    let mut set = JoinSet::new();
    for c in 0..conns {
        let addr = addrs[c % addrs.len()];
        let make = make.clone();
        let next = next.clone();
        let barrier = barrier.clone();
        set.spawn_on(
            async move {
                let connected = connect(addr).await;
                barrier.wait().await;
                let mut sender = connected?;
                let mut lat = Vec::with_capacity(total / conns + 1);
                let (mut good, mut bad, mut first_error) = (0u64, 0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let req = make(i, addr);
                    let t0 = Instant::now();
                    match send(&mut sender, req).await {
                        Ok((status, body)) => {
                            lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            if ok(status) {
                                good += 1;
                            } else {
                                bad += 1;
                                first_error.get_or_insert_with(|| {
                                    format!("{status}: {}", String::from_utf8_lossy(&body))
                                });
                            }
                        }
                        Err(e) => {
                            bad += 1;
                            first_error.get_or_insert_with(|| format!("request failed: {e}"));
                            match connect(addr).await {
                                Ok(s) => sender = s,
                                Err(_) => break,
                            }
                        }
                    }
                }
                Ok::<_, anyhow::Error>((lat, good, bad, first_error))
            },
            &rt,
        );
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut report = LoadReport {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        lat_us: Vec::with_capacity(total),
        first_error: None,
    };
    while let Some(r) = set.join_next().await {
        let (lat, good, bad, err) = r??;
        report.lat_us.extend(lat);
        report.ok += good;
        report.failed += bad;
        if report.first_error.is_none() {
            report.first_error = err;
        }
    }
    report.elapsed = start.elapsed();
    report.lat_us.sort_unstable();
    Ok(report)
}

/// The daemon's admin API, one connection per call (for setup and checks, not for load).
#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut sender = connect(self.addr).await?;
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let (status, bytes) = send(
            &mut sender,
            request(method, self.addr, path, Some(&self.token), body),
        )
        .await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }

    async fn create_endpoint(&self, url: &str, rate_limit: Option<u32>) -> Result<String> {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/endpoints",
                Some(json!({
                    "partner_id": "bench", "environment": "production", "url": url,
                    "event_types": ["*"], "max_in_flight": max_in_flight(), "rate_limit_per_second": rate_limit,
                })),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("creating the endpoint: {status} {body}");
        }
        Ok(body["id"].as_str().unwrap_or_default().to_string())
    }

    async fn patch_endpoint(&self, id: &str, change: Value) -> Result<()> {
        let (status, body) = self
            .call(Method::PATCH, &format!("/v1/endpoints/{id}"), Some(change))
            .await?;
        if status != StatusCode::OK {
            bail!("patching the endpoint: {status} {body}");
        }
        Ok(())
    }

    async fn status(&self) -> Result<Value> {
        let (status, body) = self.call(Method::GET, "/status", None).await?;
        if status != StatusCode::OK {
            bail!("/status: {status} {body}");
        }
        Ok(body)
    }

    /// `n` sequential GETs of `path` on one keep-alive connection; latencies in ms and the last body size.
    async fn timed_gets(&self, path: &str, n: usize) -> Result<(Vec<f64>, usize)> {
        let mut sender = connect(self.addr).await?;
        let mut out = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let t0 = Instant::now();
            let (status, body) = send(
                &mut sender,
                request(
                    Method::GET,
                    self.addr,
                    path,
                    Some(&self.token),
                    Bytes::new(),
                ),
            )
            .await?;
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
            if status != StatusCode::OK {
                bail!("{path}: {status}");
            }
            size = body.len();
        }
        Ok((out, size))
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon, in process

struct Daemon {
    addr: SocketAddr,
    token: String,
    config: Config,
    trigger: Option<Trigger>,
    task: Option<tokio::task::JoinHandle<Result<(), preflix_webhookd::RunError>>>,
}

impl Daemon {
    /// Starts the daemon with its store in `base/db`; `change` adjusts the benchmark config.
    async fn start(base: &Path, change: impl FnOnce(&mut Config)) -> Result<(Daemon, Duration)> {
        let mut config = Config::default();
        config.storage.dir = base.join("db");
        config.delivery.allow_private_networks = true;
        config.delivery.require_https = false;
        config.delivery.max_in_flight = max_in_flight();
        // A batch of 1000 events of ~400 bytes is ~420 KB, over the 256 KiB default.
        config.server.max_body_bytes = 4 * 1024 * 1024;
        let token_path = base.join("loadgen.token");
        if !token_path.exists() {
            std::fs::create_dir_all(base)?;
            std::fs::write(&token_path, format!("{:032x}\n", rand::random::<u128>()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))?;
        }
        config.server.token_file = Some(token_path.clone());
        // `LOADGEN_PG_URL`: run the daemon on that PostgreSQL database instead of sled.
        if let Ok(url) = std::env::var("LOADGEN_PG_URL") {
            config.storage.backend = preflix_webhookd::config::StorageBackend::Postgres;
            config.storage.postgres.url = Some(url);
        }
        change(&mut config);
        let token = std::fs::read_to_string(&token_path)?.trim().to_string();
        let mut d = Daemon {
            addr: "127.0.0.1:0".parse()?,
            token,
            config,
            trigger: None,
            task: None,
        };
        let ready = d.launch().await?;
        Ok((d, ready))
    }

    /// Runs the daemon; returns how long it took from calling `run` until `/healthz` answered 200.
    async fn launch(&mut self) -> Result<Duration> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        self.addr = listener.local_addr()?;
        let (trigger, shutdown) = Shutdown::new();
        let t0 = Instant::now();
        let mut task = tokio::spawn(preflix_webhookd::run(
            self.config.clone(),
            listener,
            shutdown,
        ));
        loop {
            if task.is_finished() {
                let r = (&mut task).await?;
                bail!("the daemon stopped while starting: {r:?}");
            }
            if let Ok(mut s) = connect(self.addr).await {
                if let Ok((StatusCode::OK, _)) = send(
                    &mut s,
                    request(Method::GET, self.addr, "/healthz", None, Bytes::new()),
                )
                .await
                {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("the daemon did not become healthy in 300 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = t0.elapsed();
        self.trigger = Some(trigger);
        self.task = Some(task);
        Ok(ready)
    }

    /// Fires shutdown and waits for `run` to return; returns how long that took.
    async fn stop(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        if let Some(t) = self.trigger.take() {
            t.fire();
        }
        if let Some(task) = self.task.take() {
            task.await?.map_err(|e| anyhow!("the daemon failed: {e}"))?;
        }
        Ok(t0.elapsed())
    }

    fn api(&self) -> Api {
        Api {
            addr: self.addr,
            token: self.token.clone(),
        }
    }
}

fn temp_base(args: &Args) -> Result<tempfile::TempDir> {
    let base = args.tmp.clone().unwrap_or_else(std::env::temp_dir);
    Ok(tempfile::Builder::new()
        .prefix("loadgen-")
        .tempdir_in(base)?)
}

// ---------------------------------------------------------------------------------------------
// The fast receiver (also the bare hyper server of baseline-hyper)

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    st: Arc<RecvState>,
}

struct RecvState {
    /// Requests received, duplicates included.
    requests: AtomicU64,
    /// TCP connections accepted.
    connections: AtomicU64,
    /// Requests for an event id not received before (all requests when they carry no id).
    distinct: AtomicU64,
    notify: Notify,
    /// With `parse`: microseconds from the `"lg_t"` stamp in the body to its arrival here.
    lat_us: Mutex<Vec<u32>>,
    parse: bool,
    /// Event ids seen (from `preflixai-event-id`), to count deliveries received more than once.
    seen: Mutex<std::collections::HashSet<Bytes>>,
    duplicates: AtomicU64,
    first_duplicate: Mutex<Option<String>>,
    /// Of the duplicates, those whose `preflixai-attempt` was 1 (the same first attempt made twice).
    duplicate_first_attempts: AtomicU64,
}

const STAMP: &[u8] = b"\"lg_t\":";

impl Receiver {
    async fn start(parse: bool) -> Result<Receiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let st = Arc::new(RecvState {
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            notify: Notify::new(),
            lat_us: Mutex::new(Vec::new()),
            parse,
            seen: Mutex::new(std::collections::HashSet::new()),
            duplicates: AtomicU64::new(0),
            first_duplicate: Mutex::new(None),
            duplicate_first_attempts: AtomicU64::new(0),
        });
        let state = st.clone();
        recv_rt().spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                state.connections.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(receive(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, st })
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Distinct deliveries received (a delivery received again for the same event id counts once).
    fn count(&self) -> u64 {
        self.st.distinct.load(Ordering::Relaxed)
    }

    /// Waits until `n` distinct deliveries have arrived; false on timeout.
    async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.st.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= n;
            }
        }
    }

    /// Deliveries received for an event id already received, and how many of those were attempt 1 again.
    fn duplicates(&self) -> (u64, u64) {
        (
            self.st.duplicates.load(Ordering::Relaxed),
            self.st.duplicate_first_attempts.load(Ordering::Relaxed),
        )
    }

    /// TCP connections accepted so far.
    fn connections(&self) -> u64 {
        self.st.connections.load(Ordering::Relaxed)
    }

    /// Prints and records duplicate deliveries, if any, with the attempt log of the first one.
    async fn report_duplicates(&self, api: &Api, name: &str, f: &mut Figures) {
        let (dups, firsts) = self.duplicates();
        if dups > 0 {
            println!("  NOTE: {dups} deliveries arrived for an event id already received ({firsts} of them with preflixai-attempt: 1 again)");
            let id = self
                .st
                .first_duplicate
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default();
            if let Ok((_, ev)) = api
                .call(Method::GET, &format!("/v1/events/{id}"), None)
                .await
            {
                println!(
                    "  first duplicated event {id}: deliveries {}",
                    ev["deliveries"]
                );
            }
        }
        f.insert(format!("{name}.duplicate_deliveries"), dups as f64);
        let conns = self.connections();
        let reqs = self.st.requests.load(Ordering::Relaxed);
        println!(
            "  the daemon opened {conns} connections to the receiver for {reqs} requests ({:.1} requests per connection)",
            reqs as f64 / conns.max(1) as f64
        );
        f.insert(format!("{name}.receiver_connections"), conns as f64);
    }

    fn take_latencies(&self) -> Vec<u32> {
        let mut v = std::mem::take(&mut *self.st.lat_us.lock().unwrap());
        v.sort_unstable();
        v
    }
}

async fn receive(state: &RecvState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Requests without an event id (the bare baselines) all count as distinct.
    let first = match req.headers().get("preflixai-event-id") {
        None => true,
        Some(id) => {
            let id = Bytes::copy_from_slice(id.as_bytes());
            let first = state.seen.lock().unwrap().insert(id.clone());
            if !first {
                state.duplicates.fetch_add(1, Ordering::Relaxed);
                state
                    .first_duplicate
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| String::from_utf8_lossy(&id).into_owned());
                if req
                    .headers()
                    .get("preflixai-attempt")
                    .is_some_and(|a| a.as_bytes() == b"1")
                {
                    state
                        .duplicate_first_attempts
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            first
        }
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if state.parse && first {
        let now = now_us();
        if let Some(pos) = body.windows(STAMP.len()).position(|w| w == STAMP) {
            let digits: &[u8] = &body[pos + STAMP.len()..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Some(t) = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                state
                    .lat_us
                    .lock()
                    .unwrap()
                    .push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
            }
        }
    }
    if first {
        state.distinct.fetch_add(1, Ordering::Relaxed);
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    state.notify.notify_waiters();
    Response::new(Full::new(Bytes::new()))
}

/// A local port nothing listens on.
async fn closed_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Event bodies

/// Pads `data` to about 300 bytes, as a realistic event.
const PAD: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure";

fn event_json(id: &str, stamp: Option<u64>) -> String {
    partner_event_json("bench", id, stamp)
}

fn partner_event_json(partner: &str, id: &str, stamp: Option<u64>) -> String {
    let t = stamp.map(|t| format!(",\"lg_t\":{t}")).unwrap_or_default();
    format!(
        r#"{{"partner_id":"{partner}","environment":"production","id":"{id}","type":"audit.completed","data":{{"bill_id":"bill_{id}","report_id":"report_{id}","status":"complete"{t},"note":"{PAD}"}}}}"#
    )
}

fn single_event_request(
    addr: SocketAddr,
    token: &str,
    id: &str,
    stamp: Option<u64>,
) -> Request<Full<Bytes>> {
    request(
        Method::POST,
        addr,
        "/v1/events",
        Some(token),
        Bytes::from(event_json(id, stamp)),
    )
}

fn batch_request(
    addr: SocketAddr,
    token: &str,
    prefix: &str,
    from: usize,
    to: usize,
) -> Request<Full<Bytes>> {
    let mut body = String::with_capacity((to - from) * 420 + 16);
    body.push_str("{\"events\":[");
    for i in from..to {
        if i > from {
            body.push(',');
        }
        body.push_str(&event_json(&format!("{prefix}{i}"), None));
    }
    body.push_str("]}");
    request(
        Method::POST,
        addr,
        "/v1/events/batch",
        Some(token),
        Bytes::from(body),
    )
}

fn accepted(s: StatusCode) -> bool {
    s == StatusCode::ACCEPTED
}

fn ok200(s: StatusCode) -> bool {
    s == StatusCode::OK
}

/// Stores `total` events through the batch API (`size` per request, `conns` connections).
async fn preload(
    api: &Api,
    total: usize,
    size: usize,
    conns: usize,
    prefix: &str,
) -> Result<LoadReport> {
    let (addr, token, prefix) = (api.addr, api.token.clone(), prefix.to_string());
    let requests = total.div_ceil(size);
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let report = drive(
        addr,
        conns,
        requests,
        move |i| {
            let n = progress.fetch_add(1, Ordering::Relaxed) as usize;
            let step = (100_000 / size).max(1);
            if n > 0 && n % step == 0 {
                eprintln!(
                    "  … {} events sent, {:.0} s",
                    n * size,
                    started.elapsed().as_secs_f64()
                );
            }
            batch_request(addr, &token, &prefix, i * size, ((i + 1) * size).min(total))
        },
        ok200,
    )
    .await?;
    Ok(report)
}

async fn totals_events(api: &Api) -> Result<u64> {
    Ok(api.status().await?["totals"]["events"]
        .as_u64()
        .unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn ingest(args: &Args, with_delivery: bool) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let name = if with_delivery {
        "ingest+deliver"
    } else {
        "ingest"
    };
    let base = temp_base(args)?;
    let receiver = Receiver::start(false).await?;
    let (mut daemon, _) = Daemon::start(base.path(), |_| {}).await?;
    let api = daemon.api();
    let rate = if with_delivery { None } else { Some(1) };
    api.create_endpoint(&receiver.url(), rate).await?;
    println!(
        "== {name}: {n} events, POST /v1/events, {conns} keep-alive connections; one subscribed endpoint → fast local receiver{}",
        if with_delivery { ", delivering at full speed" } else { ", rate-limited to 1 delivery/s (deliveries stored, delivery not competing)" }
    );
    let (addr, token) = (api.addr, api.token.clone());
    let cpu0 = thread_cpu();
    let report = drive(
        addr,
        conns,
        n,
        move |i| single_event_request(addr, &token, &format!("evt_{i}"), None),
        accepted,
    )
    .await?;
    report.print("ingest", 1.0, "events");
    let cpu = print_cpu(&cpu0, report.elapsed, report.ok);
    let mut f = Figures::new();
    f.insert(format!("{name}.daemon_cpu_us_per_event"), cpu);
    f.insert(format!("{name}.events_per_s"), report.per_sec(1.0));
    f.insert(format!("{name}.p50_ms"), report.p(50.0));
    f.insert(format!("{name}.p99_ms"), report.p(99.0));
    f.insert(format!("{name}.failed"), report.failed as f64);
    if with_delivery {
        let during = receiver.count();
        let t0 = Instant::now();
        let all = receiver.wait_for(n as u64, Duration::from_secs(300)).await;
        let total = report.elapsed + t0.elapsed();
        println!(
            "  delivered during ingest: {during}; all {n} received {} {:.2} s after ingest ended ({:.2} s in all → {} deliveries/s)",
            if all { "" } else { "NOT (timeout)" },
            t0.elapsed().as_secs_f64(),
            total.as_secs_f64(),
            fmt_num(receiver.count() as f64 / total.as_secs_f64())
        );
        f.insert(format!("{name}.delivered_during_ingest"), during as f64);
        f.insert(
            format!("{name}.delivered_per_s_overall"),
            receiver.count() as f64 / total.as_secs_f64(),
        );
    }
    let stored = totals_events(&api).await?;
    if stored != report.ok {
        println!(
            "  WARNING: /status totals.events = {stored}, acknowledged {}",
            report.ok
        );
    }
    if with_delivery {
        receiver.report_duplicates(&api, name, &mut f).await;
    }
    daemon.stop().await?;
    Ok(f)
}

async fn batch(args: &Args, size: usize) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(4);
    let base = temp_base(args)?;
    let receiver = Receiver::start(false).await?;
    let (mut daemon, _) = Daemon::start(base.path(), |_| {}).await?;
    let api = daemon.api();
    api.create_endpoint(&receiver.url(), Some(1)).await?;
    println!(
        "== batch{size}: {n} events in batches of {size}, POST /v1/events/batch, {conns} connections; endpoint rate-limited to 1/s (server.max_body_bytes raised to 4 MiB)"
    );
    let (addr, token) = (api.addr, api.token.clone());
    let requests = n.div_ceil(size);
    let cpu0 = thread_cpu();
    let report = drive(
        addr,
        conns,
        requests,
        move |i| batch_request(addr, &token, "evt_", i * size, ((i + 1) * size).min(n)),
        ok200,
    )
    .await?;
    report.print(&format!("batch{size} (per request)"), 1.0, "requests");
    let stored = totals_events(&api).await?;
    let eps = stored as f64 / report.elapsed.as_secs_f64();
    println!("  stored {stored} events → {} events/s", fmt_num(eps));
    let cpu = print_cpu(&cpu0, report.elapsed, stored);
    daemon.stop().await?;
    let mut f = Figures::new();
    f.insert(format!("batch{size}.events_per_s"), eps);
    f.insert(format!("batch{size}.request_p50_ms"), report.p(50.0));
    f.insert(format!("batch{size}.request_p99_ms"), report.p(99.0));
    f.insert(format!("batch{size}.daemon_cpu_us_per_event"), cpu);
    Ok(f)
}

async fn deliver(args: &Args) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let base = temp_base(args)?;
    let receiver = Receiver::start(false).await?;
    let (mut daemon, _) = Daemon::start(base.path(), |_| {}).await?;
    let api = daemon.api();
    let ep = api.create_endpoint(&receiver.url(), Some(1)).await?;
    println!(
        "== deliver: pre-load {n} pending deliveries (batch ingest, endpoint rate-limited to 1/s), then lift the limit; endpoint max_in_flight and delivery.max_in_flight {}",
        max_in_flight()
    );
    let pre = preload(&api, n, 1000, args.conns.unwrap_or(4), "evt_").await?;
    pre.print("pre-load (batches of 1000)", 1000.0, "events");
    let before = receiver.count();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    api.patch_endpoint(&ep, json!({"rate_limit_per_second": null}))
        .await?;
    let all = receiver.wait_for(n as u64, Duration::from_secs(600)).await;
    let received = t0.elapsed();
    let mut settled = None;
    for _ in 0..60_000 {
        let st = api.status().await?;
        if st["totals"]["deliveries_succeeded"].as_u64().unwrap_or(0) >= n as u64 {
            settled = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let count = receiver.count() - before;
    let rate = count as f64 / received.as_secs_f64();
    println!(
        "  {count} deliveries received {}in {:.2} s → {} deliveries/s ({before} went out before the limit was lifted)",
        if all { "" } else { "(TIMEOUT) " },
        received.as_secs_f64(),
        fmt_num(rate)
    );
    let cpu = print_cpu(&cpu0, received, count);
    let mut f = Figures::new();
    f.insert("deliver.deliveries_per_s".into(), rate);
    f.insert("deliver.daemon_cpu_us_per_delivery".into(), cpu);
    if let Some(s) = settled {
        let r = count as f64 / s.as_secs_f64();
        println!(
            "  all settled (succeeded in /status) after {:.2} s → {} deliveries/s",
            s.as_secs_f64(),
            fmt_num(r)
        );
        f.insert("deliver.settled_per_s".into(), r);
    }
    receiver.report_duplicates(&api, "deliver", &mut f).await;
    daemon.stop().await?;
    Ok(f)
}

async fn e2e(args: &Args) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let base = temp_base(args)?;
    let receiver = Receiver::start(true).await?;
    let (mut daemon, _) = Daemon::start(base.path(), |_| {}).await?;
    let api = daemon.api();
    api.create_endpoint(&receiver.url(), None).await?;
    let mut f = Figures::new();

    // Idle: one event at a time, the next only once the receiver has the previous one.
    let samples = args.samples;
    println!("== e2e idle: {samples} events one at a time; time from just before the POST to the receiver getting the delivery");
    let mut sender = connect(api.addr).await?;
    let mut acks = Vec::with_capacity(samples);
    for i in 0..samples {
        let t0 = Instant::now();
        let (status, body) = send(
            &mut sender,
            single_event_request(api.addr, &api.token, &format!("idle_{i}"), Some(now_us())),
        )
        .await?;
        acks.push(t0.elapsed().as_micros() as u32);
        if status != StatusCode::ACCEPTED {
            bail!("idle ingest: {status} {}", String::from_utf8_lossy(&body));
        }
        if !receiver
            .wait_for(i as u64 + 1, Duration::from_secs(10))
            .await
        {
            bail!("idle delivery {i} did not arrive in 10 s");
        }
    }
    acks.sort_unstable();
    let idle = receiver.take_latencies();
    println!(
        "  ingest→first attempt: p50 {:.3} ms, p99 {:.3} ms; ingest answer (202): p50 {:.3} ms, p99 {:.3} ms",
        pct_ms(&idle, 50.0),
        pct_ms(&idle, 99.0),
        pct_ms(&acks, 50.0),
        pct_ms(&acks, 99.0)
    );
    f.insert("e2e.idle_first_attempt_p50_ms".into(), pct_ms(&idle, 50.0));
    f.insert("e2e.idle_first_attempt_p99_ms".into(), pct_ms(&idle, 99.0));
    f.insert("e2e.idle_ack_p50_ms".into(), pct_ms(&acks, 50.0));

    // Under load.
    println!("== e2e load: {n} events over {conns} connections while the endpoint delivers to the fast receiver");
    let base_count = receiver.count();
    let (addr, token) = (api.addr, api.token.clone());
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let report = drive(
        addr,
        conns,
        n,
        move |i| single_event_request(addr, &token, &format!("evt_{i}"), Some(now_us())),
        accepted,
    )
    .await?;
    report.print("ingest", 1.0, "events");
    let all = receiver
        .wait_for(base_count + n as u64, Duration::from_secs(300))
        .await;
    let wall = t0.elapsed();
    let got = receiver.count() - base_count;
    let lat = receiver.take_latencies();
    let eps = got as f64 / wall.as_secs_f64();
    let cpu = print_cpu(&cpu0, wall, got);
    f.insert("e2e.daemon_cpu_us_per_event".into(), cpu);
    println!(
        "  {got} received {}in {:.2} s → {} events/s end to end; ingest→first attempt p50 {:.3} ms, p99 {:.3} ms",
        if all { "" } else { "(TIMEOUT) " },
        wall.as_secs_f64(),
        fmt_num(eps),
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0)
    );
    f.insert("e2e.events_per_s".into(), eps);
    f.insert("e2e.ingest_per_s".into(), report.per_sec(1.0));
    f.insert("e2e.ingest_p99_ms".into(), report.p(99.0));
    f.insert("e2e.load_first_attempt_p50_ms".into(), pct_ms(&lat, 50.0));
    f.insert("e2e.load_first_attempt_p99_ms".into(), pct_ms(&lat, 99.0));
    receiver.report_duplicates(&api, "e2e", &mut f).await;
    daemon.stop().await?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// fairness: one healthy endpoint beside misbehaving ones

/// How a bad receiver misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    /// Accepts connections, never reads, never answers: each attempt holds its slot until
    /// `delivery.timeout`.
    Silent,
    /// Answers 200 after one second.
    Slow,
    /// Answers 503 at once.
    Failing,
}

/// A misbehaving receiver; returns its URL and a counter (connections for `Silent`, requests else).
async fn bad_receiver(kind: Bad) -> Result<(String, Arc<AtomicU64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    recv_rt().spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if kind == Bad::Silent {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
                continue;
            }
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = req.into_body().collect().await;
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        if kind == Bad::Slow {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        } else {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((format!("http://{addr}/bad"), count))
}

/// One fairness phase in a fresh daemon: the bad endpoints get their backlog, then the healthy
/// endpoint gets 200 events/s for `--secs`; returns the healthy latencies (sorted, µs).
async fn fairness_phase(args: &Args, name: &str, bad: &[Bad], f: &mut Figures) -> Result<()> {
    let backlog = args.events.unwrap_or(3000);
    let base = temp_base(args)?;
    let healthy = Receiver::start(true).await?;
    let (mut daemon, _) = Daemon::start(base.path(), |c| {
        // Failed attempts come back quickly, so failing endpoints keep failing during the phase.
        c.retry.schedule = vec![Duration::from_millis(200); 8];
        // Attempts to the silent endpoint are cut off when the phase ends.
        c.server.shutdown_grace = Duration::from_millis(100);
    })
    .await?;
    let api = daemon.api();
    let create = |partner: String, url: String, max: u32| {
        let api = api.clone();
        async move {
            let (status, body) = api
                .call(
                    Method::POST,
                    "/v1/endpoints",
                    Some(json!({
                        "partner_id": partner, "environment": "production", "url": url,
                        "event_types": ["*"], "max_in_flight": max,
                    })),
                )
                .await?;
            if status != StatusCode::CREATED {
                bail!("creating the endpoint: {status} {body}");
            }
            Ok(())
        }
    };
    create("lg-healthy".into(), healthy.url(), 16).await?;
    let mut counters = Vec::new();
    for (i, kind) in bad.iter().enumerate() {
        let (url, count) = bad_receiver(*kind).await?;
        let partner = format!("lg-bad{i}");
        create(partner.clone(), url, 10_000).await?;
        counters.push((*kind, count));
        // The backlog, in batches of 1000.
        let mut sender = connect(api.addr).await?;
        for from in (0..backlog).step_by(1000) {
            let to = (from + 1000).min(backlog);
            let mut body = String::from("{\"events\":[");
            for j in from..to {
                if j > from {
                    body.push(',');
                }
                body.push_str(&partner_event_json(
                    &partner,
                    &format!("{partner}_{j}"),
                    None,
                ));
            }
            body.push_str("]}");
            let (status, resp) = send(
                &mut sender,
                request(
                    Method::POST,
                    api.addr,
                    "/v1/events/batch",
                    Some(&api.token),
                    Bytes::from(body),
                ),
            )
            .await?;
            if status != StatusCode::OK {
                bail!("backlog batch: {status} {}", String::from_utf8_lossy(&resp));
            }
        }
    }
    // Let the bad endpoints take what they may.
    if !bad.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let n = (args.secs * 200.0).round() as usize;
    let interval = Duration::from_millis(5);
    let mut sender = connect(api.addr).await?;
    let t0 = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(t0 + interval * i as u32).await;
        let (status, body) = send(
            &mut sender,
            request(
                Method::POST,
                api.addr,
                "/v1/events",
                Some(&api.token),
                Bytes::from(partner_event_json(
                    "lg-healthy",
                    &format!("healthy_{i}"),
                    Some(now_us()),
                )),
            ),
        )
        .await?;
        if status != StatusCode::ACCEPTED {
            bail!(
                "healthy ingest: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let all = healthy.wait_for(n as u64, Duration::from_secs(60)).await;
    let lat = healthy.take_latencies();
    let held: Vec<String> = counters
        .iter()
        .map(|(kind, c)| {
            let what = if *kind == Bad::Silent {
                "connections held"
            } else {
                "requests"
            };
            format!("{kind:?} {} {what}", c.load(Ordering::Relaxed))
        })
        .collect();
    println!(
        "  {name:<22} healthy: {} of {n} delivered{}; ingest→delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}{}",
        lat.len(),
        if all { "" } else { " (TIMEOUT after 60 s)" },
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0),
        pct_ms(&lat, 100.0),
        if held.is_empty() { "" } else { "; bad: " },
        held.join(", ")
    );
    f.insert(format!("fairness.{name}.p50_ms"), pct_ms(&lat, 50.0));
    f.insert(format!("fairness.{name}.p99_ms"), pct_ms(&lat, 99.0));
    f.insert(format!("fairness.{name}.max_ms"), pct_ms(&lat, 100.0));
    f.insert(
        format!("fairness.{name}.undelivered"),
        (n - lat.len().min(n)) as f64,
    );
    for (kind, c) in &counters {
        if *kind == Bad::Silent {
            f.insert(
                format!("fairness.{name}.silent_slots"),
                c.load(Ordering::Relaxed) as f64,
            );
        }
    }
    daemon.stop().await?;
    Ok(())
}

async fn fairness(args: &Args) -> Result<Figures> {
    println!(
        "== fairness: a healthy endpoint (max_in_flight 16) gets 200 events/s for {} s; bad endpoints (max_in_flight 10000) have {} pending each; delivery.max_in_flight {}",
        args.secs,
        args.events.unwrap_or(3000),
        max_in_flight()
    );
    let mut f = Figures::new();
    let phases: [(&str, &[Bad]); 4] = [
        ("alone", &[]),
        ("silent", &[Bad::Silent]),
        (
            "silent+slow+failing",
            &[Bad::Silent, Bad::Slow, Bad::Failing],
        ),
        ("3-failing", &[Bad::Failing, Bad::Failing, Bad::Failing]),
    ];
    let wanted: Option<Vec<&str>> = args.phases.as_deref().map(|p| p.split(',').collect());
    for (name, bad) in phases {
        if wanted.as_ref().is_none_or(|w| w.contains(&name)) {
            fairness_phase(args, name, bad, &mut f).await?;
        }
    }
    Ok(f)
}

async fn baseline_sled(args: &Args) -> Result<Figures> {
    let secs = args.secs;
    let base = temp_base(args)?;
    let dir = base.path().join("db");
    println!("== baseline-sled: sled 0.34, batches of 16 one-KiB values (apply_batch), then flush() + fdatasync of dir/db, for {secs} s; same cache and segment size as the daemon");
    let cpu0 = thread_cpu();
    let (count, elapsed, mut lat) =
        tokio::task::spawn_blocking(move || -> Result<(u64, Duration, Vec<u32>)> {
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(64 * 1024 * 1024)
                .segment_size(4 * 1024 * 1024)
                .flush_every_ms(Some(500))
                .open()?;
            let tree = db.open_tree("values")?;
            let file = std::fs::File::open(dir.join("db"))?;
            let mut value = vec![0u8; 1024];
            let mut key = 0u64;
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                let t0 = Instant::now();
                let mut batch = sled::Batch::default();
                for _ in 0..16 {
                    key += 1;
                    value[..8].copy_from_slice(&key.to_le_bytes());
                    batch.insert(&key.to_be_bytes(), value.as_slice());
                }
                tree.apply_batch(batch)?;
                db.flush()?;
                file.sync_data()?;
                lat.push(t0.elapsed().as_micros() as u32);
            }
            Ok((key, start.elapsed(), lat))
        })
        .await??;
    lat.sort_unstable();
    let vps = count as f64 / elapsed.as_secs_f64();
    print_cpu(&cpu0, elapsed, count);
    println!(
        "  {count} values in {} commits, {:.2} s → {} values/s; commit (insert+flush+fdatasync) p50 {:.3} ms, p99 {:.3} ms",
        lat.len(),
        elapsed.as_secs_f64(),
        fmt_num(vps),
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0)
    );
    let mut f = Figures::new();
    f.insert("baseline-sled.values_per_s".into(), vps);
    f.insert("baseline-sled.commit_p50_ms".into(), pct_ms(&lat, 50.0));
    f.insert("baseline-sled.commit_p99_ms".into(), pct_ms(&lat, 99.0));
    for sync in [true, false] {
        f.extend(baseline_sled_model(args, 64, sync).await?);
    }
    Ok(f)
}

/// The daemon's own write pattern on raw sled, without HTTP or the daemon's code: groups of
/// `group` events, each three inserts (event ~540 B, id record, queue entry; no id lookup, as the
/// daemon's id filter skips it for new ids) in one transaction over the daemon's eight trees, plus
/// the counters and id counter once per group, optionally then flush + fdatasync.
async fn baseline_sled_model(args: &Args, group: usize, sync: bool) -> Result<Figures> {
    let secs = args.secs;
    let base = temp_base(args)?;
    let dir = base.path().join("db");
    let name = if sync {
        "baseline-sled-model"
    } else {
        "baseline-sled-model-nosync"
    };
    println!(
        "== {name}: the daemon's write pattern on raw sled: transactions over 8 trees of {group} events (3 inserts each){}, for {secs} s",
        if sync { ", then flush() + fdatasync" } else { ", no flush or fsync" }
    );
    let cpu0 = thread_cpu();
    let (count, elapsed, mut lat) =
        tokio::task::spawn_blocking(move || -> Result<(u64, Duration, Vec<u32>)> {
            use sled::transaction::ConflictableTransactionError;
            use sled::Transactional;
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(64 * 1024 * 1024)
                .segment_size(4 * 1024 * 1024)
                .flush_every_ms(Some(500))
                .open()?;
            let names = [
                "events",
                "event_ids",
                "endpoints",
                "health",
                "deliveries",
                "queue",
                "dead_letters",
                "meta",
            ];
            let trees: Vec<sled::Tree> = names
                .iter()
                .map(|n| db.open_tree(n))
                .collect::<sled::Result<_>>()?;
            let file = std::fs::File::open(dir.join("db"))?;
            let event = vec![7u8; 540];
            let (mut seq, mut events) = (0u64, 0u64);
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                let t0 = Instant::now();
                let first = events;
                let next_seq = trees.as_slice().transaction(|t| {
                    let mut s = seq;
                    for i in first..first + group as u64 {
                        let id = format!("evt_{i}");
                        s += 1;
                        let ev_seq = s;
                        s += 1;
                        let d_seq = s;
                        let mut qkey = [0u8; 24];
                        qkey[..8].copy_from_slice(&1u64.to_be_bytes());
                        qkey[8..16].copy_from_slice(&(1_768_503_852_000 + i).to_be_bytes());
                        qkey[16..].copy_from_slice(&d_seq.to_be_bytes());
                        let mut qvalue = [0u8; 16];
                        qvalue[..8].copy_from_slice(&1_768_503_852_000u64.to_be_bytes());
                        qvalue[8..].copy_from_slice(&ev_seq.to_be_bytes());
                        t[0].insert(&ev_seq.to_be_bytes(), event.as_slice())?;
                        t[1].insert(id.as_bytes(), vec![1u8; 45])?;
                        t[5].insert(&qkey, &qvalue)?;
                    }
                    t[7].insert("counters", vec![1u8; 60])?;
                    t[7].insert("next_id", &s.to_be_bytes())?;
                    Ok::<_, ConflictableTransactionError<()>>(s)
                });
                seq = next_seq.map_err(|e| anyhow!("transaction failed: {e:?}"))?;
                events += group as u64;
                if sync {
                    db.flush()?;
                    file.sync_data()?;
                }
                lat.push(t0.elapsed().as_micros() as u32);
            }
            Ok((events, start.elapsed(), lat))
        })
        .await??;
    lat.sort_unstable();
    let eps = count as f64 / elapsed.as_secs_f64();
    let cpu = print_cpu(&cpu0, elapsed, count);
    println!(
        "  {count} events in {} groups, {:.2} s → {} events/s; group commit p50 {:.3} ms, p99 {:.3} ms",
        lat.len(),
        elapsed.as_secs_f64(),
        fmt_num(eps),
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0)
    );
    let mut f = Figures::new();
    f.insert(format!("{name}.events_per_s"), eps);
    f.insert(format!("{name}.cpu_us_per_event"), cpu);
    f.insert(format!("{name}.group_p50_ms"), pct_ms(&lat, 50.0));
    Ok(f)
}

async fn baseline_hyper(args: &Args) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let server = Receiver::start(false).await?;
    println!("== baseline-hyper: {n} POSTs of the same event bodies to a bare hyper server answering 200, {conns} connections");
    let addr = server.addr;
    let cpu0 = thread_cpu();
    let report = drive(
        addr,
        conns,
        n,
        move |i| single_event_request(addr, "baseline", &format!("evt_{i}"), None),
        ok200,
    )
    .await?;
    report.print("bare hyper", 1.0, "requests");
    print_cpu(&cpu0, report.elapsed, report.ok);
    let mut f = Figures::new();
    f.insert("baseline-hyper.requests_per_s".into(), report.per_sec(1.0));
    f.insert("baseline-hyper.p50_ms".into(), report.p(50.0));
    f.insert("baseline-hyper.p99_ms".into(), report.p(99.0));
    Ok(f)
}

async fn baseline_client(args: &Args) -> Result<Figures> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let server = Receiver::start(false).await?;
    println!("== baseline-client: {n} signed POSTs (the daemon's headers, signed per request) to the fast receiver, {conns} connections");
    let secret = Secret::generate();
    let payload = Bytes::from(
        serde_json::to_vec(&json!({"id": "evt_x", "type": "audit.completed", "created_at": "2026-01-15T19:04:12Z",
            "data": serde_json::from_str::<Value>(&event_json("evt_x", None)).unwrap()["data"].clone()}))
        .unwrap(),
    );
    let addr = server.addr;
    let ua = format!("preflix-webhookd/{}", env!("CARGO_PKG_VERSION"));
    let cpu0 = thread_cpu();
    let report = drive(
        addr,
        conns,
        n,
        move |i| {
            let id = format!("evt_{i}");
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let sigs = signing::sign(std::slice::from_ref(&secret), &id, ts, &payload);
            let mut req = Request::builder()
                .method(Method::POST)
                .uri("/hook")
                .header(header::HOST, addr.to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, ua.as_str())
                .header("preflixai-event-id", id.as_str())
                .header("preflixai-event-type", "audit.completed")
                .header("preflixai-attempt", "1")
                .body(Full::new(payload.clone()))
                .unwrap();
            for (name, value) in sigs.into_headers(&id).unwrap() {
                req.headers_mut().insert(name, value);
            }
            req
        },
        ok200,
    )
    .await?;
    report.print("signed client", 1.0, "requests");
    print_cpu(&cpu0, report.elapsed, report.ok);
    let mut f = Figures::new();
    f.insert("baseline-client.requests_per_s".into(), report.per_sec(1.0));
    Ok(f)
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// /status and /metrics latency (median and max of 20), printed and added to `f` under `prefix`.
async fn measure_reads(api: &Api, prefix: &str, f: &mut Figures) -> Result<()> {
    for (path, key) in [("/status", "status"), ("/metrics", "metrics")] {
        let (mut lat, size) = api.timed_gets(path, 20).await?;
        let max = lat.iter().cloned().fold(0.0, f64::max);
        let med = median(&mut lat);
        println!("  {path}: median {med:.3} ms, max {max:.3} ms of 20 ({size} bytes)");
        f.insert(format!("{prefix}.{key}_median_ms"), med);
        f.insert(format!("{prefix}.{key}_max_ms"), max);
    }
    Ok(())
}

async fn million(args: &Args) -> Result<Figures> {
    let n = args.events.unwrap_or(1_000_000);
    let tmp;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = temp_base(args)?;
            tmp.path().to_path_buf()
        }
    };
    let marker = base.join("loadgen-million.json");
    let mut f = Figures::new();
    let port = closed_port().await?;
    let (mut daemon, _) = Daemon::start(&base, |_| {}).await?;
    let api = daemon.api();
    let preloaded: Option<u64> = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["events"].as_u64());
    match preloaded {
        Some(have) if have >= n as u64 => println!(
            "== million: reusing {} with {have} events already stored",
            base.display()
        ),
        _ => {
            println!("== million: pre-loading {n} pending deliveries (batch ingest, 1000 per request, 4 connections; one endpoint → closed port 127.0.0.1:{port}, rate-limited to 1 attempt/s)");
            api.create_endpoint(&format!("http://127.0.0.1:{port}/hook"), Some(1))
                .await?;
            let pre = preload(&api, n, 1000, args.conns.unwrap_or(4), "m_").await?;
            pre.print("pre-load", 1000.0, "events");
            f.insert("million.preload_events_per_s".into(), pre.per_sec(1000.0));
            std::fs::write(&marker, json!({"events": n}).to_string())?;
        }
    }
    let st = api.status().await?;
    println!(
        "  /status: pending {}, retrying {}, events {}; store {:.0} MiB on disk",
        st["queue"]["pending"],
        st["queue"]["retrying"],
        st["totals"]["events"],
        dir_bytes(&base.join("db")) as f64 / 1048576.0
    );
    f.insert(
        "million.pending".into(),
        st["queue"]["pending"].as_f64().unwrap_or(f64::NAN),
    );
    f.insert(
        "million.store_mib".into(),
        dir_bytes(&base.join("db")) as f64 / 1048576.0,
    );
    measure_reads(&api, "million.loaded", &mut f).await?;
    let (rss, hwm) = rss_kib();
    println!(
        "  whole process (daemon + load generator) after pre-load: VmRSS {} MiB, VmHWM {} MiB",
        rss / 1024,
        hwm / 1024
    );
    f.insert("million.loaded.rss_mib".into(), rss as f64 / 1024.0);
    f.insert("million.loaded.hwm_mib".into(), hwm as f64 / 1024.0);

    let stop = daemon.stop().await?;
    let ready = daemon.launch().await?;
    println!(
        "  in-process restart: stop {:.2} s, start until /healthz 200: {:.3} s",
        stop.as_secs_f64(),
        ready.as_secs_f64()
    );
    f.insert("million.inproc.stop_s".into(), stop.as_secs_f64());
    f.insert("million.inproc.ready_s".into(), ready.as_secs_f64());
    measure_reads(&daemon.api(), "million.inproc", &mut f).await?;
    let (rss, _) = rss_kib();
    println!(
        "  whole process after in-process restart: VmRSS {} MiB",
        rss / 1024
    );
    f.insert("million.inproc.rss_mib".into(), rss as f64 / 1024.0);
    daemon.stop().await?;

    let runs = args.runs.unwrap_or(1);
    let mut fresh: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in 0..runs {
        println!(
            "  fresh process {} of {runs} (loadgen probe): start on the same store, nothing else in the process",
            r + 1
        );
        for (k, v) in child_probe("probe", &base, args.probe_secs).await? {
            fresh
                .entry(format!("million.fresh.{k}"))
                .or_default()
                .push(v);
        }
    }
    for (k, mut v) in fresh {
        f.insert(k, median(&mut v));
    }
    println!("  raw sled in a fresh process: open the same store, then iterate the queue tree");
    for (k, v) in child_probe("probe-sled", &base, args.probe_secs).await? {
        f.insert(format!("million.sled.{k}"), v);
    }
    if args.dir.is_some() {
        println!("  store kept in {}", base.display());
    }
    Ok(f)
}

/// Runs this program again as `scenario --dir base` and returns the figures it printed as `PROBE {json}`.
async fn child_probe(scenario: &str, base: &Path, secs: u64) -> Result<Figures> {
    let exe = std::env::current_exe()?;
    let (scenario, dir) = (scenario.to_string(), base.to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .arg(&scenario)
            .arg("--dir")
            .arg(&dir)
            .arg("--probe-secs")
            .arg(secs.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| !l.starts_with("PROBE ")) {
        println!("{line}");
    }
    let probe: Value = text
        .lines()
        .find_map(|l| l.strip_prefix("PROBE "))
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("the probe printed no figures; exit {:?}", out.status))?;
    let mut f = Figures::new();
    if let Value::Object(m) = probe {
        for (k, v) in m {
            f.insert(k, v.as_f64().unwrap_or(f64::NAN));
        }
    }
    Ok(f)
}

/// Started by `million` as a child: opens sled alone on `--dir`/db (the daemon's settings), then
/// iterates the queue tree as the daemon's start does; prints `PROBE {json}`.
fn probe_sled(args: &Args) -> Result<()> {
    let dir = args
        .dir
        .clone()
        .ok_or_else(|| anyhow!("probe-sled needs --dir"))?
        .join("db");
    let mut f = Figures::new();
    let t0 = Instant::now();
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(64 * 1024 * 1024)
        .segment_size(4 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()?;
    let open = t0.elapsed();
    let (rss_open, _) = rss_kib();
    let t1 = Instant::now();
    let queue = db.open_tree("queue")?;
    let mut n = 0u64;
    for key in queue.iter().keys() {
        key?;
        n += 1;
    }
    let scan = t1.elapsed();
    let (rss_scan, hwm) = rss_kib();
    println!(
        "  raw sled: open {:.3} s, VmRSS {} MiB; iterating {n} queue keys {:.3} s, VmRSS {} MiB (peak {} MiB)",
        open.as_secs_f64(),
        rss_open / 1024,
        scan.as_secs_f64(),
        rss_scan / 1024,
        hwm / 1024
    );
    let mut series = Vec::new();
    for _ in 0..args.probe_secs {
        std::thread::sleep(Duration::from_secs(1));
        series.push(rss_kib().0 / 1024);
    }
    println!("  raw sled left idle: VmRSS each second {series:?} MiB");
    f.insert("rss_idle_mib".into(), rss_kib().0 as f64 / 1024.0);
    f.insert("open_s".into(), open.as_secs_f64());
    f.insert("rss_after_open_mib".into(), rss_open as f64 / 1024.0);
    f.insert("queue_scan_s".into(), scan.as_secs_f64());
    f.insert("rss_after_queue_scan_mib".into(), rss_scan as f64 / 1024.0);
    println!("PROBE {}", serde_json::to_string(&f)?);
    Ok(())
}

/// Started by `million` as a child: opens the daemon on `--dir`, measures, stops; prints `PROBE {json}`.
async fn probe(args: &Args) -> Result<()> {
    let base = args
        .dir
        .clone()
        .ok_or_else(|| anyhow!("probe needs --dir"))?;
    let mut f = Figures::new();
    let (rss0, _) = rss_kib();
    let (mut daemon, ready) = Daemon::start(&base, |_| {}).await?;
    println!(
        "  fresh process: start until /healthz 200: {:.3} s (process RSS before start {} MiB)",
        ready.as_secs_f64(),
        rss0 / 1024
    );
    f.insert("ready_s".into(), ready.as_secs_f64());
    let (rss, _) = rss_kib();
    f.insert("rss_at_ready_mib".into(), rss as f64 / 1024.0);
    let api = daemon.api();
    let st = api.status().await?;
    println!(
        "  fresh process: /status pending {}",
        st["queue"]["pending"]
    );
    measure_reads(&api, "x", &mut f).await?;
    let mut series = Vec::new();
    for _ in 0..args.probe_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        series.push(rss_kib().0 / 1024);
    }
    measure_reads(&api, "x5s", &mut f).await?;
    let (rss, hwm) = rss_kib();
    println!(
        "  fresh process {} s after ready: VmRSS {} MiB, VmHWM {} MiB (each second: {series:?} MiB)",
        args.probe_secs,
        rss / 1024,
        hwm / 1024
    );
    f.insert("rss_mib".into(), rss as f64 / 1024.0);
    f.insert("hwm_mib".into(), hwm as f64 / 1024.0);
    let stop = daemon.stop().await?;
    f.insert("stop_s".into(), stop.as_secs_f64());
    let f: BTreeMap<String, f64> = f
        .into_iter()
        .map(|(k, v)| (k.replace("x.", "").replace("x5s.", "later_"), v))
        .collect();
    println!("PROBE {}", serde_json::to_string(&f)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// all

async fn all(args: &Args) -> Result<()> {
    let runs = args.runs.unwrap_or(3);
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in 0..runs {
        println!("\n######## run {} of {runs}", r + 1);
        let mut figs = Figures::new();
        figs.extend(baseline_sled(args).await?);
        figs.extend(baseline_hyper(args).await?);
        figs.extend(baseline_client(args).await?);
        figs.extend(ingest(args, false).await?);
        figs.extend(ingest(args, true).await?);
        figs.extend(batch(args, 100).await?);
        figs.extend(batch(args, 1000).await?);
        figs.extend(deliver(args).await?);
        figs.extend(e2e(args).await?);
        for (k, v) in figs {
            samples.entry(k).or_default().push(v);
        }
    }
    let med: BTreeMap<String, f64> = samples
        .iter()
        .map(|(k, v)| (k.clone(), median(&mut v.clone())))
        .collect();
    let runs_of = |k: &str| {
        samples
            .get(k)
            .map(|v| {
                v.iter()
                    .map(|x| fmt_num(*x))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default()
    };
    let get = |k: &str| med.get(k).copied().unwrap_or(f64::NAN);

    // (issue, target text, figure, target value, higher is better, baseline figure)
    let rows: &[(&str, &str, &str, f64, bool, &str)] = &[
        (
            "#2",
            "single-event ingest ≥ 20,000 events/s (64 conns)",
            "ingest.events_per_s",
            20_000.0,
            true,
            "baseline-hyper.requests_per_s",
        ),
        (
            "#2",
            "single-event ingest ≥ 20,000 events/s (64 conns)",
            "ingest.events_per_s",
            20_000.0,
            true,
            "baseline-sled.values_per_s",
        ),
        (
            "#2",
            "single-event ingest ≥ 20,000 events/s (64 conns)",
            "ingest.events_per_s",
            20_000.0,
            true,
            "baseline-sled-model.events_per_s",
        ),
        (
            "#2",
            "single-event ingest p99 < 5 ms",
            "ingest.p99_ms",
            5.0,
            false,
            "baseline-hyper.p99_ms",
        ),
        (
            "#2",
            "batch ingest ≥ 60,000 events/s (batches of 100)",
            "batch100.events_per_s",
            60_000.0,
            true,
            "baseline-sled.values_per_s",
        ),
        (
            "#2",
            "batch ingest ≥ 60,000 events/s (batches of 1000)",
            "batch1000.events_per_s",
            60_000.0,
            true,
            "baseline-sled.values_per_s",
        ),
        (
            "#2",
            "batch ingest ≥ 60,000 events/s (batches of 1000)",
            "batch1000.events_per_s",
            60_000.0,
            true,
            "baseline-sled-model-nosync.events_per_s",
        ),
        (
            "#3",
            "delivery ≥ 20,000 deliveries/s to a fast receiver",
            "deliver.deliveries_per_s",
            20_000.0,
            true,
            "baseline-client.requests_per_s",
        ),
        (
            "#3",
            "ingest + delivery ≥ 10,000 events/s end to end",
            "e2e.events_per_s",
            10_000.0,
            true,
            "baseline-client.requests_per_s",
        ),
        (
            "#3",
            "ingest → first attempt p50 < 2 ms (idle)",
            "e2e.idle_first_attempt_p50_ms",
            2.0,
            false,
            "baseline-sled.commit_p50_ms",
        ),
    ];
    println!("\n## Medians of {runs} run(s)\n");
    println!("| issue | target | measured (median) | runs | met? | baseline (same run) | measured / baseline |");
    println!("|---|---|---|---|---|---|---|");
    for (issue, text, key, target, higher, base_key) in rows {
        let m = get(key);
        let b = get(base_key);
        let met = if m.is_nan() {
            "?"
        } else if (*higher && m >= *target) || (!*higher && m < *target) {
            "met"
        } else {
            "**missed**"
        };
        println!(
            "| {issue} | {text} | {} (`{key}`) | {} | {met} | {} (`{base_key}`) | {:.2} |",
            fmt_num(m),
            runs_of(key),
            fmt_num(b),
            m / b
        );
    }
    println!("\n## Every figure (median; runs)\n");
    for (k, v) in &med {
        println!("  {k:<44} {:>12}   [{}]", fmt_num(*v), runs_of(k));
    }
    Ok(())
}
