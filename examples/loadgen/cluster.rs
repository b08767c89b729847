//! `loadgen cluster` and `loadgen cluster-all`: the daemon as separate processes of the release
//! binary, on sled or on a throwaway PostgreSQL cluster (initdb + pg_ctl, fsync on, through the
//! tests' own harness) with `--nodes N` daemons on one database, load spread round-robin over them.
//!
//! Per configuration, each on a fresh store (fresh database): ingest (endpoint rate-limited to 1/s),
//! delivery (pre-loaded, then the limit lifted) and end to end (both at once). With PostgreSQL also
//! `pgbench` TPC-B on the same cluster, the idle ingest → first attempt latency, and with two nodes
//! or more the cross-node latency and the failover time.
//!
//! Which node made an attempt: the receiver (in this process) looks up, for each connection it
//! accepts, which daemon process owns the other end of the socket (`/proc/net/tcp` gives the
//! socket's inode for the peer port, `/proc/<pid>/fd` the process holding it). Exact, and free once
//! per connection; the daemons keep their connections alive.

use super::*;
use crate::pg::PgCluster;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};

#[derive(Clone)]
pub enum Backend {
    Sled,
    Postgres(String),
}

/// The release binary next to this example (`target/release/examples/loadgen` →
/// `target/release/preflix-webhookd`).
fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("preflix-webhookd"))
        .ok_or_else(|| anyhow!("no directory above {}", exe.display()))?;
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release (the binary) before running cluster scenarios",
            bin.display()
        );
    }
    Ok(bin)
}

/// N daemon processes on one store.
pub struct Nodes {
    children: Vec<Option<Child>>,
    pub addrs: Vec<SocketAddr>,
    pub pids: Vec<u32>,
    token: String,
    base: PathBuf,
}

pub struct NodeOptions {
    pub lease_secs: u64,
    pub timeout_secs: u64,
}

impl Nodes {
    pub async fn start(
        backend: &Backend,
        n: usize,
        base: &Path,
        opts: &NodeOptions,
    ) -> Result<Nodes> {
        let bin = binary()?;
        std::fs::create_dir_all(base)?;
        let token_path = base.join("loadgen.token");
        let token = format!("{:032x}", rand::random::<u128>());
        std::fs::write(&token_path, format!("{token}\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))?;
        let mut nodes = Nodes {
            children: Vec::new(),
            addrs: Vec::new(),
            pids: Vec::new(),
            token,
            base: base.to_path_buf(),
        };
        for i in 0..n {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let storage = match backend {
                Backend::Sled => String::new(),
                Backend::Postgres(url) => format!(
                    "backend = \"postgres\"\n\n[storage.postgres]\nurl = '{url}'\nlease = \"{}s\"\nnode_name = \"node{i}\"\n",
                    opts.lease_secs
                ),
            };
            let config = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = '{}'\nmax_body_bytes = 4194304\nshutdown_grace = \"2s\"\n\n\
                 [storage]\ndir = '{}'\n{storage}\n\
                 [delivery]\nallow_private_networks = true\nrequire_https = false\nmax_in_flight = {}\ntimeout = \"{}s\"\n\n\
                 [log]\nlevel = \"warn\"\n",
                token_path.display(),
                base.join(format!("node{i}")).display(),
                max_in_flight(),
                opts.timeout_secs,
            );
            let path = base.join(format!("node{i}.toml"));
            std::fs::write(&path, config)?;
            let log = std::fs::File::create(base.join(format!("node{i}.log")))?;
            let child = Command::new(&bin)
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .env_remove("PREFLIX_WEBHOOKD_CONFIG")
                .env_remove("CREDENTIALS_DIRECTORY")
                .env_remove("STATE_DIRECTORY")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            nodes.pids.push(child.id());
            nodes.children.push(Some(child));
            nodes.addrs.push(([127, 0, 0, 1], port).into());
        }
        for i in 0..n {
            nodes.wait_healthy(i).await?;
        }
        Ok(nodes)
    }

    async fn wait_healthy(&mut self, i: usize) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(Some(child)) = self.children.get_mut(i) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {i} exited ({status}) while starting: {}",
                        std::fs::read_to_string(self.base.join(format!("node{i}.log")))
                            .unwrap_or_default()
                    );
                }
            }
            if let Ok(mut s) = connect(self.addrs[i]).await {
                if let Ok((StatusCode::OK, _)) = send(
                    &mut s,
                    request(Method::GET, self.addrs[i], "/healthz", None, Bytes::new()),
                )
                .await
                {
                    return Ok(());
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("node {i} did not become healthy in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn api(&self, i: usize) -> Api {
        Api {
            addr: self.addrs[i],
            token: self.token.clone(),
        }
    }

    /// SIGKILL node `i`; the instant it was sent.
    pub fn kill9(&mut self, i: usize) -> Result<Instant> {
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("node {i} is gone"))?;
        let at = Instant::now();
        child.kill()?;
        child.wait()?;
        Ok(at)
    }

    /// SIGTERM every node and wait for them.
    pub fn stop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `/status` totals summed as the cluster sees them (any node answers for all).
    async fn status(&self) -> Result<Value> {
        for i in 0..self.addrs.len() {
            if self.children[i].is_some() {
                return self.api(i).status().await;
            }
        }
        bail!("no node left")
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver: counts distinct deliveries, stamps latency, and tells which node made each attempt

#[derive(Clone, Debug)]
pub struct Rec {
    pub event: String,
    pub attempt: u32,
    /// Index of the daemon (in `pids`) that made the attempt, when attribution is on.
    pub node: Option<usize>,
    /// `now_us()` at arrival.
    pub at_us: u64,
    /// Arrival minus the `lg_t` stamp, for stamped bodies.
    pub lat_us: Option<u64>,
}

struct RxState {
    pids: Vec<u32>,
    port: u16,
    delay: Mutex<Duration>,
    records: Mutex<Vec<Rec>>,
    seen: Mutex<HashSet<String>>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
    in_progress: AtomicU64,
    notify: Notify,
}

#[derive(Clone)]
pub struct ClusterReceiver {
    addr: SocketAddr,
    st: Arc<RxState>,
}

/// The daemon (index into `pids`) holding the socket whose local port is `peer_port` and remote
/// port `our_port`, from /proc.
fn owner_of(peer_port: u16, our_port: u16, pids: &[u32]) -> Option<usize> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let inode = tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && port_of(f[1]) == Some(peer_port) && port_of(f[2]) == Some(our_port))
            .then(|| f[9].to_string())
    })?;
    let target = format!("socket:[{inode}]");
    pids.iter().position(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target.as_str())
            })
    })
}

impl ClusterReceiver {
    /// `pids`: the daemons to tell apart (empty: no attribution).
    pub async fn start(pids: Vec<u32>) -> Result<ClusterReceiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let st = Arc::new(RxState {
            pids,
            port: addr.port(),
            delay: Mutex::new(Duration::ZERO),
            records: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            in_progress: AtomicU64::new(0),
            notify: Notify::new(),
        });
        let state = st.clone();
        recv_rt().spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let node = if state.pids.is_empty() {
                        None
                    } else {
                        let (pids, port) = (state.pids.clone(), state.port);
                        tokio::task::spawn_blocking(move || owner_of(peer.port(), port, &pids))
                            .await
                            .ok()
                            .flatten()
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(rx(&state, node, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ClusterReceiver { addr, st })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_delay(&self, d: Duration) {
        *self.st.delay.lock().unwrap() = d;
    }

    pub fn count(&self) -> u64 {
        self.st.distinct.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.st.duplicates.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> Vec<Rec> {
        self.st.records.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
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
}

async fn rx(state: &RxState, node: Option<usize>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let at_us = now_us();
    state.in_progress.fetch_add(1, Ordering::Relaxed);
    let event = req
        .headers()
        .get("preflixai-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let attempt = req
        .headers()
        .get("preflixai-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let lat_us = body
        .windows(STAMP.len())
        .position(|w| w == STAMP)
        .and_then(|pos| {
            let digits = &body[pos + STAMP.len()..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            std::str::from_utf8(&digits[..end])
                .ok()?
                .parse::<u64>()
                .ok()
        })
        .map(|t| at_us.saturating_sub(t));
    let first = state.seen.lock().unwrap().insert(event.clone());
    if first {
        state.distinct.fetch_add(1, Ordering::Relaxed);
    } else {
        state.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    state.records.lock().unwrap().push(Rec {
        event,
        attempt,
        node,
        at_us,
        lat_us,
    });
    state.notify.notify_waiters();
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.in_progress.fetch_sub(1, Ordering::Relaxed);
    Response::new(Full::new(Bytes::new()))
}

// ---------------------------------------------------------------------------------------------
// One configuration: a fresh store each time

/// Makes a fresh store for one measurement: a new database on the cluster, or nothing for sled
/// (each node start gets a fresh directory).
struct Stores<'a> {
    pg: Option<&'a PgCluster>,
    base: PathBuf,
    next: usize,
}

impl Stores<'_> {
    fn fresh(&mut self, backend: &Backend) -> (Backend, PathBuf) {
        self.next += 1;
        let dir = self.base.join(format!("run{}", self.next));
        match (backend, self.pg) {
            (Backend::Postgres(_), Some(pg)) => (Backend::Postgres(pg.create_db()), dir),
            _ => (Backend::Sled, dir),
        }
    }
}

fn label(backend: &Backend, nodes: usize) -> String {
    match backend {
        Backend::Sled => "sled".into(),
        Backend::Postgres(_) => format!("pg{nodes}"),
    }
}

fn node_opts(args: &Args) -> NodeOptions {
    NodeOptions {
        lease_secs: args.lease,
        timeout_secs: 15.min(args.lease.saturating_sub(1)).max(1),
    }
}

async fn ingest_phase(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let name = label(backend, nodes);
    let (be, dir) = stores.fresh(backend);
    let receiver = ClusterReceiver::start(vec![]).await?;
    let mut cluster = Nodes::start(&be, nodes, &dir, &node_opts(args)).await?;
    let api = cluster.api(0);
    api.create_endpoint(&receiver.url(), Some(1)).await?;
    println!("== {name} ingest: {n} events, POST /v1/events over {conns} connections spread over {nodes} node(s); endpoint rate-limited to 1/s");
    let token = api.token.clone();
    let report = drive_nodes(
        cluster.addrs.clone(),
        conns,
        n,
        move |i, addr| single_event_request(addr, &token, &format!("evt_{i}"), None),
        accepted,
    )
    .await?;
    report.print("ingest", 1.0, "events");
    let stored = cluster.status().await?["totals"]["events"]
        .as_u64()
        .unwrap_or(0);
    if stored != report.ok {
        println!(
            "  WARNING: /status totals.events = {stored}, acknowledged {}",
            report.ok
        );
    }
    f.insert(format!("{name}.ingest.events_per_s"), report.per_sec(1.0));
    f.insert(format!("{name}.ingest.p50_ms"), report.p(50.0));
    f.insert(format!("{name}.ingest.p99_ms"), report.p(99.0));
    cluster.stop();
    Ok(())
}

async fn deliver_phase(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let n = args.events.unwrap_or(100_000);
    let name = label(backend, nodes);
    let (be, dir) = stores.fresh(backend);
    let receiver = ClusterReceiver::start(vec![]).await?;
    let mut cluster = Nodes::start(&be, nodes, &dir, &node_opts(args)).await?;
    let api = cluster.api(0);
    let ep = api.create_endpoint(&receiver.url(), Some(1)).await?;
    println!("== {name} deliver: pre-load {n} pending deliveries (batches of 1000), then lift the rate limit; {nodes} node(s) deliver");
    let token = api.token.clone();
    let requests = n.div_ceil(1000);
    let pre = drive_nodes(
        cluster.addrs.clone(),
        4,
        requests,
        move |i, addr| batch_request(addr, &token, "evt_", i * 1000, ((i + 1) * 1000).min(n)),
        ok200,
    )
    .await?;
    pre.print("pre-load", 1000.0, "events");
    let before = receiver.count();
    let t0 = Instant::now();
    api.patch_endpoint(&ep, json!({"rate_limit_per_second": null}))
        .await?;
    let all = receiver
        .wait_for(n as u64, Duration::from_secs(args.wait_secs))
        .await;
    let took = t0.elapsed();
    let got = receiver.count() - before;
    let rate = got as f64 / took.as_secs_f64();
    println!(
        "  {got} deliveries received {}in {:.2} s → {} deliveries/s; duplicates {}",
        if all { "" } else { "(TIMEOUT) " },
        took.as_secs_f64(),
        fmt_num(rate),
        receiver.duplicates()
    );
    f.insert(format!("{name}.deliver.deliveries_per_s"), rate);
    f.insert(
        format!("{name}.deliver.duplicates"),
        receiver.duplicates() as f64,
    );
    cluster.stop();
    Ok(())
}

async fn e2e_phase(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let n = args.events.unwrap_or(100_000);
    let conns = args.conns.unwrap_or(64);
    let name = label(backend, nodes);
    let (be, dir) = stores.fresh(backend);
    let receiver = ClusterReceiver::start(vec![]).await?;
    let mut cluster = Nodes::start(&be, nodes, &dir, &node_opts(args)).await?;
    let api = cluster.api(0);
    api.create_endpoint(&receiver.url(), None).await?;
    println!("== {name} e2e: {n} events over {conns} connections spread over {nodes} node(s) while they deliver to the fast receiver");
    let token = api.token.clone();
    let t0 = Instant::now();
    let report = drive_nodes(
        cluster.addrs.clone(),
        conns,
        n,
        move |i, addr| single_event_request(addr, &token, &format!("evt_{i}"), Some(now_us())),
        accepted,
    )
    .await?;
    report.print("ingest", 1.0, "events");
    let all = receiver
        .wait_for(report.ok, Duration::from_secs(args.wait_secs))
        .await;
    let wall = t0.elapsed();
    if !all {
        println!(
            "  TIMEOUT: {} of {} received; /status: {}",
            receiver.count(),
            report.ok,
            cluster
                .status()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
    }
    let got = receiver.count();
    let eps = got as f64 / wall.as_secs_f64();
    let mut lat: Vec<u32> = receiver
        .records()
        .iter()
        .filter(|r| r.attempt == 1)
        .filter_map(|r| r.lat_us.map(|l| l.min(u32::MAX as u64) as u32))
        .collect();
    lat.sort_unstable();
    println!(
        "  {got} received {}in {:.2} s → {} events/s end to end; ingest→first attempt p50 {:.3} ms, p99 {:.3} ms; duplicates {}",
        if all { "" } else { "(TIMEOUT) " },
        wall.as_secs_f64(),
        fmt_num(eps),
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 99.0),
        receiver.duplicates()
    );
    f.insert(format!("{name}.e2e.events_per_s"), eps);
    f.insert(format!("{name}.e2e.ingest_per_s"), report.per_sec(1.0));
    f.insert(
        format!("{name}.e2e.first_attempt_p50_ms"),
        pct_ms(&lat, 50.0),
    );
    f.insert(
        format!("{name}.e2e.duplicates"),
        receiver.duplicates() as f64,
    );
    cluster.stop();
    Ok(())
}

/// Idle: one event at a time, posted to node `i % N` in turn, the next once the previous arrived.
/// Each sample is told apart by which node made the attempt: taken and delivered by one node, or
/// taken by one and delivered by another (the cross-node figure).
async fn latency_phase(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let name = label(backend, nodes);
    let (be, dir) = stores.fresh(backend);
    let mut cluster = Nodes::start(&be, nodes, &dir, &node_opts(args)).await?;
    let receiver = ClusterReceiver::start(cluster.pids.clone()).await?;
    let api = cluster.api(0);
    api.create_endpoint(&receiver.url(), None).await?;
    let samples = args.samples;
    println!("== {name} idle latency: {samples} events one at a time, posted to the nodes in turn; ingest → first attempt, by which node made the attempt");
    let mut senders = Vec::new();
    for addr in &cluster.addrs {
        senders.push(connect(*addr).await?);
    }
    let mut posted_to = HashMap::new();
    for i in 0..samples {
        let k = i % nodes;
        let id = format!("idle_{i}");
        let (status, body) = send(
            &mut senders[k],
            single_event_request(cluster.addrs[k], &api.token, &id, Some(now_us())),
        )
        .await?;
        if status != StatusCode::ACCEPTED {
            bail!("idle ingest: {status} {}", String::from_utf8_lossy(&body));
        }
        posted_to.insert(id, k);
        if !receiver
            .wait_for(i as u64 + 1, Duration::from_secs(10))
            .await
        {
            bail!("idle delivery {i} did not arrive in 10 s");
        }
    }
    let (mut same, mut cross, mut all, mut unknown) = (vec![], vec![], vec![], 0);
    for r in receiver.records() {
        let (Some(lat), true) = (r.lat_us, r.attempt == 1) else {
            continue;
        };
        let lat = lat.min(u32::MAX as u64) as u32;
        all.push(lat);
        match (r.node, posted_to.get(&r.event)) {
            (Some(by), Some(&to)) if by == to => same.push(lat),
            (Some(_), Some(_)) => cross.push(lat),
            _ => unknown += 1,
        }
    }
    for v in [&mut same, &mut cross, &mut all] {
        v.sort_unstable();
    }
    println!(
        "  all: p50 {:.3} ms, p99 {:.3} ms ({} samples); same node: p50 {:.3} ms ({}); other node: p50 {:.3} ms, p90 {:.3} ms ({}); not attributed {unknown}",
        pct_ms(&all, 50.0),
        pct_ms(&all, 99.0),
        all.len(),
        pct_ms(&same, 50.0),
        same.len(),
        pct_ms(&cross, 50.0),
        pct_ms(&cross, 90.0),
        cross.len()
    );
    f.insert(
        format!("{name}.idle.first_attempt_p50_ms"),
        pct_ms(&all, 50.0),
    );
    f.insert(
        format!("{name}.idle.first_attempt_p99_ms"),
        pct_ms(&all, 99.0),
    );
    if nodes > 1 {
        f.insert(
            format!("{name}.idle.cross_node_p50_ms"),
            pct_ms(&cross, 50.0),
        );
        f.insert(
            format!("{name}.idle.cross_node_samples"),
            cross.len() as f64,
        );
        f.insert(format!("{name}.idle.same_node_p50_ms"), pct_ms(&same, 50.0));
    }
    cluster.stop();
    Ok(())
}

/// Failover: a slow receiver (answers after 3 s) holds `--conns` first attempts spread over the
/// nodes; the node holding the most is SIGKILLed. The figure: from the SIGKILL to the first
/// attempt, by another node, of a delivery the dead node had claimed (and to the last of them).
async fn failover_phase(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let name = label(backend, nodes);
    let k = args.conns.unwrap_or(64).max(8) as u64;
    let (be, dir) = stores.fresh(backend);
    let mut cluster = Nodes::start(&be, nodes, &dir, &node_opts(args)).await?;
    let receiver = ClusterReceiver::start(cluster.pids.clone()).await?;
    receiver.set_delay(Duration::from_secs(3));
    let api = cluster.api(0);
    api.create_endpoint(&receiver.url(), None).await?;
    println!("== {name} failover: lease {} s; {k} events to a receiver answering after 3 s, posted to the nodes in turn; SIGKILL the node holding the most attempts", args.lease);
    for i in 0..k as usize {
        let api = cluster.api(i % nodes);
        let (status, body) = api
            .call(
                Method::POST,
                "/v1/events",
                Some(serde_json::from_str(&event_json(&format!("fo_{i}"), None))?),
            )
            .await?;
        if status != StatusCode::ACCEPTED {
            bail!("failover ingest: {status} {body}");
        }
    }
    if !receiver.wait_for(k, Duration::from_secs(30)).await {
        bail!("the first attempts did not all arrive");
    }
    let first = receiver.records();
    let mut held = vec![0usize; nodes];
    for r in &first {
        if let Some(n) = r.node {
            held[n] += 1;
        }
    }
    let victim = (0..nodes).max_by_key(|&i| held[i]).unwrap_or(0);
    let victims: HashSet<String> = first
        .iter()
        .filter(|r| r.node == Some(victim))
        .map(|r| r.event.clone())
        .collect();
    let killed = cluster.kill9(victim)?;
    let killed_us = now_us() - killed.elapsed().as_micros() as u64;
    let claimed_us = first
        .iter()
        .filter(|r| r.node == Some(victim))
        .map(|r| r.at_us)
        .max()
        .unwrap_or(killed_us);
    println!(
        "  attempts in flight per node {held:?}; node {victim} SIGKILLed {:.0} ms after its last attempt started",
        (killed_us.saturating_sub(claimed_us)) as f64 / 1000.0
    );
    let deadline = Instant::now() + Duration::from_secs(args.lease + 60);
    let (mut first_again, mut last_again) = (None, None);
    let mut again = HashSet::new();
    while Instant::now() < deadline && again.len() < victims.len() {
        for r in receiver.records() {
            if r.at_us > killed_us && victims.contains(&r.event) && again.insert(r.event.clone()) {
                let t = r.at_us - killed_us;
                first_again = Some(first_again.map_or(t, |f: u64| f.min(t)));
                last_again = Some(last_again.map_or(t, |l: u64| l.max(t)));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / 1000.0);
    println!(
        "  {} of the dead node's {} deliveries attempted again by another node; first {:.0} ms after the SIGKILL, last {:.0} ms (lease {} s + 2 s = {} ms target)",
        again.len(),
        victims.len(),
        ms(first_again),
        ms(last_again),
        args.lease,
        (args.lease + 2) * 1000
    );
    f.insert(format!("{name}.failover.first_ms"), ms(first_again));
    f.insert(format!("{name}.failover.last_ms"), ms(last_again));
    f.insert(format!("{name}.failover.lease_s"), args.lease as f64);
    receiver.set_delay(Duration::ZERO);
    cluster.stop();
    Ok(())
}

/// `pgbench -i -s 10`, then `pgbench -c 8 -j 2 -T <secs>` (TPC-B), on the same cluster.
fn pgbench(pg: &PgCluster, secs: u64, f: &mut Figures) -> Result<()> {
    let url = pg.create_db();
    let db = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap_or("postgres")
        .to_string();
    let host = pg.socket_dir().display().to_string();
    let port = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap_or("5432")
        .to_string();
    println!("== pgbench: -i -s 10, then TPC-B -c 8 -j 2 -T {secs} on the same cluster (fsync on, synchronous_commit on)");
    let common = ["-h", host.as_str(), "-p", port.as_str(), "-U", "postgres"];
    let init = pg
        .tool("pgbench")
        .args(common)
        .args(["-i", "-s", "10", "-q", &db])
        .output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let t = secs.to_string();
    let run = pg
        .tool("pgbench")
        .args(common)
        .args(["-c", "8", "-j", "2", "-T", &t, &db])
        .output()?;
    let out = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&run.stderr));
    }
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let lat = out
        .lines()
        .find(|l| l.starts_with("latency average = "))
        .unwrap_or("")
        .to_string();
    println!("  tps {} ({lat})", fmt_num(tps));
    f.insert("pgbench.tpcb_tps".into(), tps);
    Ok(())
}

fn configs(args: &Args) -> Vec<(Backend, usize)> {
    match args.backend.as_str() {
        "sled" => vec![(Backend::Sled, 1)],
        _ => vec![(Backend::Postgres(String::new()), args.nodes)],
    }
}

/// `loadgen cluster --backend sled|postgres --nodes N`: one configuration.
pub async fn cluster(args: &Args) -> Result<Figures> {
    let base = temp_base(args)?;
    let pg = (args.backend == "postgres").then(|| PgCluster::start_with(true));
    let mut stores = Stores {
        pg: pg.as_ref(),
        base: base.path().to_path_buf(),
        next: 0,
    };
    let mut f = Figures::new();
    if let Some(pg) = &pg {
        pgbench(pg, args.pgbench_secs, &mut f)?;
    }
    for (backend, nodes) in configs(args) {
        run_config(args, &mut stores, &backend, nodes, &mut f).await?;
    }
    Ok(f)
}

async fn run_config(
    args: &Args,
    stores: &mut Stores<'_>,
    backend: &Backend,
    nodes: usize,
    f: &mut Figures,
) -> Result<()> {
    let phases = args
        .phases
        .clone()
        .unwrap_or_else(|| "ingest,deliver,e2e,latency,failover".into());
    let has = |p: &str| phases.split(',').any(|x| x.trim() == p);
    if has("ingest") {
        ingest_phase(args, stores, backend, nodes, f).await?;
    }
    if has("deliver") {
        deliver_phase(args, stores, backend, nodes, f).await?;
    }
    if has("e2e") {
        e2e_phase(args, stores, backend, nodes, f).await?;
    }
    if has("latency") && matches!(backend, Backend::Postgres(_)) {
        latency_phase(args, stores, backend, nodes, f).await?;
    }
    if has("failover") && matches!(backend, Backend::Postgres(_)) && nodes > 1 {
        failover_phase(args, stores, backend, nodes, f).await?;
    }
    Ok(())
}

/// `loadgen cluster-all`: sled (one process), PostgreSQL with 1 and with 2 nodes, pgbench, the
/// latencies and failover, `--runs` times on one PostgreSQL cluster; then a table of medians.
pub async fn cluster_all(args: &Args) -> Result<()> {
    let runs = args.runs.unwrap_or(3);
    let base = temp_base(args)?;
    let pg = PgCluster::start_with(true);
    let mut stores = Stores {
        pg: Some(&pg),
        base: base.path().to_path_buf(),
        next: 0,
    };
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let pgb = Backend::Postgres(String::new());
    for r in 0..runs {
        println!("\n######## run {} of {runs}", r + 1);
        let mut f = Figures::new();
        pgbench(&pg, args.pgbench_secs, &mut f)?;
        run_config(args, &mut stores, &Backend::Sled, 1, &mut f).await?;
        run_config(args, &mut stores, &pgb, 1, &mut f).await?;
        run_config(args, &mut stores, &pgb, 2, &mut f).await?;
        for (k, v) in f {
            samples.entry(k).or_default().push(v);
        }
    }
    let med = |k: &str| samples.get(k).map_or(f64::NAN, |v| median(&mut v.clone()));
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
    println!("\n## Medians of {runs} run(s)\n");
    println!("| | sled | PostgreSQL, 1 node | PostgreSQL, 2 nodes |");
    println!("|---|---|---|---|");
    for (what, key) in [
        ("ingest, events/s", "ingest.events_per_s"),
        ("ingest p99, ms", "ingest.p99_ms"),
        ("delivery, deliveries/s", "deliver.deliveries_per_s"),
        ("end to end, events/s", "e2e.events_per_s"),
        (
            "idle ingest → first attempt p50, ms",
            "idle.first_attempt_p50_ms",
        ),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            fmt_num(med(&format!("sled.{key}"))),
            fmt_num(med(&format!("pg1.{key}"))),
            fmt_num(med(&format!("pg2.{key}")))
        );
    }
    println!(
        "\npgbench TPC-B: {} tps [{}]",
        fmt_num(med("pgbench.tpcb_tps")),
        runs_of("pgbench.tpcb_tps")
    );
    println!("\n## Every figure (median; runs)\n");
    for k in samples.keys() {
        println!("  {k:<44} {:>12}   [{}]", fmt_num(med(k)), runs_of(k));
    }
    Ok(())
}
