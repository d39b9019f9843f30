//! Soak: thousands of concurrent uTP connections on real sockets, for minutes.
//!
//! **Real time, not part of the deterministic simulator.** The soak runs our tokio stack
//! ([`utp::net::UtpSocket`], [`utp::net::UtpStream`]) over 127.0.0.1: one client socket
//! and one server socket, with an impairing [`Relay`] between them (loss, delay,
//! jitter). `conns` workers each open a connection through the one client socket,
//! move a verifiable byte pattern both ways at once (the request and a reply of the same
//! length), close, and open the next one, until the duration is over.
//!
//! What it checks and reports ([`SoakReport`]):
//!
//! - every byte read matches the pattern the other side wrote, in order, and each
//!   direction ends with a clean EOF (`bytes_verified`, `corrupt`, `failed`);
//! - no connection goes `stall` without progress (`stuck`), and every connection that
//!   was open at the deadline finishes within a grace period;
//! - the resident set size ([`rss_kib`], from `/proc/self/status`) after warm-up
//!   against the end of the run (`rss_after_warmup`, `rss_end`): memory stays flat;
//! - the connection tables drain once everything closed (`connections_left`).
//!
//! `utp-sim soak --secs 300 --conns 2000 --loss 0.02` runs it from the command line;
//! `sim/tests/soak.rs` runs a short version in `cargo test`.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use utp::net::{UtpSocket, UtpStream};
use utp::proto::EndpointStats;
use utp::Config;

use crate::relay::{Direction, Impairment, Relay, RelayStats};
use crate::rng::SimRng;

/// Bytes of the request header: the pattern's salt and length, both u64 big-endian.
const HEADER: usize = 16;
/// Read and write chunk per connection side (kept small: thousands are open at once).
const CHUNK: usize = 4096;
/// A worker's progress slot when it has no connection open.
const IDLE: u64 = 0;
/// At most this many failure messages are kept for the report.
const KEEP_FAILURES: usize = 20;

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct SoakConfig {
    /// How long workers keep opening connections. Default 60 s.
    pub duration: Duration,
    /// Concurrent connections (one worker each). Default 1000.
    pub conns: usize,
    /// Random loss per direction in the relay. Default 0.02.
    pub loss: f64,
    /// One-way delay added by the relay per direction. Default 0.
    pub delay: Duration,
    /// Uniform jitter added by the relay per direction. Default 0.
    pub jitter: Duration,
    /// Seeds the relay and the connection sizes and patterns. Default 1.
    pub seed: u64,
    /// Smallest request (and reply) in bytes. Default 1 KiB.
    pub min_bytes: u64,
    /// Largest request (and reply) in bytes. Default 64 KiB.
    pub max_bytes: u64,
    /// A connection without progress for this long counts as stuck. Default 20 s.
    pub stall: Duration,
    /// RSS is compared from this point of the run on. Default: a fifth of the
    /// duration, at least 10 s (the ramp plus a few linger periods of closed
    /// connections) but at most the duration.
    pub warmup: Option<Duration>,
    /// Workers start spread over this time, so the first SYNs do not all arrive in
    /// one burst. Default 2 s.
    pub ramp: Duration,
    /// Print a progress line to stderr this often (`None`: quiet). Default `None`.
    pub progress: Option<Duration>,
}

impl Default for SoakConfig {
    fn default() -> SoakConfig {
        SoakConfig {
            duration: Duration::from_secs(60),
            conns: 1000,
            loss: 0.02,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            seed: 1,
            min_bytes: 1024,
            max_bytes: 64 * 1024,
            stall: Duration::from_secs(20),
            warmup: None,
            ramp: Duration::from_secs(2),
            progress: None,
        }
    }
}

impl SoakConfig {
    /// Parses command-line flags (`--secs`, `--conns`, `--loss`, `--delay-ms`,
    /// `--jitter-ms`, `--seed`, `--min-bytes`, `--max-bytes`, `--stall-secs`,
    /// `--warmup-secs`, `--quiet`) over the defaults; progress lines every 5 s unless
    /// `--quiet`. `UTP_SIM_SEED` sets the seed too.
    pub fn from_args(args: &[String]) -> Result<SoakConfig, String> {
        let mut c = SoakConfig {
            progress: Some(Duration::from_secs(5)),
            ..SoakConfig::default()
        };
        if let Ok(seed) = std::env::var("UTP_SIM_SEED") {
            c.seed = seed
                .parse()
                .map_err(|_| format!("UTP_SIM_SEED must be an integer, got {seed:?}"))?;
        }
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--quiet" {
                c.progress = None;
                continue;
            }
            if flag == "-h" || flag == "--help" {
                return Err(SOAK_USAGE.into());
            }
            let v = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {SOAK_USAGE}"))?;
            let num = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("{flag} takes a non-negative number, got {v:?}"))
            };
            let secs = |v: &str| num(v).map(Duration::from_secs_f64);
            let millis = |v: &str| num(v).map(|x| Duration::from_secs_f64(x / 1000.0));
            match flag.as_str() {
                "--secs" => c.duration = secs(v)?,
                "--conns" => c.conns = num(v)? as usize,
                "--loss" => c.loss = num(v)?,
                "--delay-ms" => c.delay = millis(v)?,
                "--jitter-ms" => c.jitter = millis(v)?,
                "--seed" => {
                    c.seed = v
                        .parse()
                        .map_err(|_| format!("--seed takes an integer, got {v:?}"))?
                }
                "--min-bytes" => c.min_bytes = num(v)? as u64,
                "--max-bytes" => c.max_bytes = num(v)? as u64,
                "--stall-secs" => c.stall = secs(v)?,
                "--warmup-secs" => c.warmup = Some(secs(v)?),
                "--ramp-secs" => c.ramp = secs(v)?,
                other => return Err(format!("unknown soak option {other:?}; {SOAK_USAGE}")),
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks that the values can work.
    pub fn validate(&self) -> Result<(), String> {
        if self.conns == 0 {
            return Err("--conns must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err("--loss must be in [0, 1)".into());
        }
        if self.min_bytes > self.max_bytes {
            return Err("--min-bytes must not exceed --max-bytes".into());
        }
        if self.stall.is_zero() {
            return Err("--stall-secs must be positive".into());
        }
        Ok(())
    }

    fn warmup(&self) -> Duration {
        self.warmup
            .unwrap_or_else(|| (self.duration / 5).max(Duration::from_secs(10)))
            .min(self.duration)
    }
}

/// The `utp-sim soak` flags.
pub const SOAK_USAGE: &str = "usage: utp-sim soak [--secs S] [--conns N] [--loss P] \
[--delay-ms D] [--jitter-ms J] [--seed N] [--min-bytes B] [--max-bytes B] [--stall-secs S] \
[--warmup-secs S] [--ramp-secs S] [--quiet]";

/// What a soak run found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoakReport {
    /// The configuration that ran.
    pub seed: u64,
    /// Wall time from start to the end of the drain.
    pub elapsed: Duration,
    /// Connections whose both directions were verified and closed cleanly (client view).
    pub completed: u64,
    /// Connections the server side finished and verified.
    pub server_completed: u64,
    /// Connections that ended with an error (either side), corruption excluded.
    pub failed: u64,
    /// Connections where a byte differed from the pattern (either side).
    pub corrupt: u64,
    /// Bytes read and verified, both directions together.
    pub bytes_verified: u64,
    /// Connections that went `stall` without progress, or were still open after the
    /// grace period at the end.
    pub stuck: u64,
    /// The longest time any open connection went without progress.
    pub longest_stall: Duration,
    /// The first failure messages.
    pub failures: Vec<String>,
    /// Resident set size samples (time since start, KiB).
    pub rss: Vec<(Duration, u64)>,
    /// RSS at the end of warm-up, KiB.
    pub rss_after_warmup: Option<u64>,
    /// RSS at the deadline, KiB.
    pub rss_end: Option<u64>,
    /// Most connections the client socket held at once.
    pub peak_connections: usize,
    /// Connections left in the client and server tables after the drain.
    pub connections_left: (usize, usize),
    /// The relay's counters.
    pub relay: RelayStats,
    /// The client endpoint's counters at the end.
    pub client_stats: EndpointStats,
    /// The server endpoint's counters at the end.
    pub server_stats: EndpointStats,
}

impl SoakReport {
    /// RSS growth from the end of warm-up to the deadline, in KiB (negative: shrank).
    pub fn rss_growth_kib(&self) -> Option<i64> {
        Some(self.rss_end? as i64 - self.rss_after_warmup? as i64)
    }

    /// Whether every byte was intact, no connection failed or got stuck, and the
    /// connection tables drained.
    pub fn passed(&self) -> bool {
        self.corrupt == 0
            && self.failed == 0
            && self.stuck == 0
            && self.completed > 0
            && self.connections_left == (0, 0)
    }

    /// A printable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(s, "soak (seed {})", self.seed);
        let _ = writeln!(
            s,
            "connections  {} completed ({:.0}/s), {} on the server side, peak {} open",
            self.completed,
            self.completed as f64 / secs,
            self.server_completed,
            self.peak_connections
        );
        let _ = writeln!(
            s,
            "bytes        {} verified ({:.1} MB/s), {} corrupt connections",
            self.bytes_verified,
            self.bytes_verified as f64 / secs / 1e6,
            self.corrupt
        );
        let _ = writeln!(
            s,
            "problems     {} failed, {} stuck, longest stall {:.1} s, left open {:?}",
            self.failed,
            self.stuck,
            self.longest_stall.as_secs_f64(),
            self.connections_left
        );
        for f in &self.failures {
            let _ = writeln!(s, "  failure: {f}");
        }
        let r = &self.relay;
        let _ = writeln!(
            s,
            "relay        to server {} fwd {} lost {} overflow; to client {} fwd {} lost {} overflow",
            r.to_server.forwarded,
            r.to_server.dropped,
            r.to_server.overflow,
            r.to_client.forwarded,
            r.to_client.dropped,
            r.to_client.overflow
        );
        for (name, e) in [
            ("client", &self.client_stats),
            ("server", &self.server_stats),
        ] {
            let _ = writeln!(
                s,
                "{name:<12} {} datagrams in, {} out, {} unknown-connection, {} resets sent, \
{} SYNs rejected, {} half-open expired, {} malformed",
                e.datagrams_received,
                e.datagrams_sent,
                e.unknown_connection,
                e.resets_sent,
                e.syns_rejected,
                e.half_open_expired,
                e.malformed
            );
        }
        let mib = |k: u64| k as f64 / 1024.0;
        if let (Some(w), Some(e)) = (self.rss_after_warmup, self.rss_end) {
            let _ = writeln!(
                s,
                "memory       RSS {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} MiB)",
                mib(w),
                mib(e),
                (e as f64 - w as f64) / 1024.0
            );
        }
        let step = (self.rss.len() / 12).max(1);
        let line: Vec<String> = self
            .rss
            .iter()
            .step_by(step)
            .map(|(t, k)| format!("{:.0}s:{:.0}", t.as_secs_f64(), mib(*k)))
            .collect();
        let _ = writeln!(s, "RSS MiB      {}", line.join(" "));
        let _ = writeln!(
            s,
            "result       {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// The resident set size of this process in KiB (`VmRSS` in `/proc/self/status`);
/// `None` where that file does not exist.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a soak on a new tokio runtime (two worker threads) and blocks until it is done.
pub fn run(config: &SoakConfig) -> io::Result<SoakReport> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_async(config.clone()));
    // Anything still hanging (a stuck connection) is dropped here.
    rt.shutdown_timeout(Duration::from_secs(1));
    report
}

/// Counters shared by every task.
#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    server_completed: AtomicU64,
    failed: AtomicU64,
    corrupt: AtomicU64,
    bytes_verified: AtomicU64,
    stuck: AtomicU64,
    longest_stall_ms: AtomicU64,
}

#[derive(Debug)]
struct Ctx {
    start: Instant,
    deadline: Instant,
    config: SoakConfig,
    target: SocketAddr,
    client: UtpSocket,
    /// Per worker: milliseconds since `start` of its last progress, plus one; `IDLE`
    /// when it has no connection open.
    progress: Vec<AtomicU64>,
    /// Per worker: its current connection was already counted as stuck.
    flagged: Vec<AtomicBool>,
    counters: Counters,
    failures: Mutex<Vec<String>>,
}

impl Ctx {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn touch(&self, worker: usize) {
        self.progress[worker].store(self.ms(), Ordering::Relaxed);
    }

    fn fail(&self, what: Failure) {
        let (counter, msg) = match what {
            Failure::Corrupt(m) => (&self.counters.corrupt, m),
            Failure::Io(m) => (&self.counters.failed, m),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < KEEP_FAILURES {
            f.push(msg);
        }
    }
}

enum Failure {
    Corrupt(String),
    Io(String),
}

fn io_failure(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::Io(format!("{what}: {e}"))
}

fn soak_config(conns: usize) -> Config {
    let mut c = Config::default();
    // Closed connections linger for a few seconds (longer after a backoff) and count
    // against the limit: at hundreds of connections per second, leave room for them.
    c.max_connections = conns * 32 + 8192;
    c.accept_queue = conns + 128;
    c.max_half_open = conns.clamp(64, 4096);
    c
}

async fn run_async(config: SoakConfig) -> io::Result<SoakReport> {
    let server = UtpSocket::bind_with_config("127.0.0.1:0", soak_config(config.conns)).await?;
    let client = UtpSocket::bind_with_config("127.0.0.1:0", soak_config(config.conns)).await?;
    let direction = Direction::lossy(config.loss)
        .with_delay(config.delay)
        .with_jitter(config.jitter);
    let relay = Relay::spawn(
        server.local_addr()?,
        Impairment::symmetric(direction, config.seed),
    )?;
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        start,
        deadline: start + config.duration,
        target: relay.addr(),
        client: client.clone(),
        progress: (0..config.conns).map(|_| AtomicU64::new(IDLE)).collect(),
        flagged: (0..config.conns).map(|_| AtomicBool::new(false)).collect(),
        counters: Counters::default(),
        failures: Mutex::new(Vec::new()),
        config: config.clone(),
    });

    // The monitor runs on its own thread so that it sees a hung runtime too.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::Builder::new()
            .name("soak-monitor".into())
            .spawn(move || monitor(&ctx, &stop))?
    };

    let accept = {
        let (ctx, server) = (ctx.clone(), server.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = server.accept().await {
                tokio::spawn(serve(ctx.clone(), stream));
            }
        })
    };

    let mut rng = SimRng::new(config.seed);
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..config.conns {
        let ramp = config.ramp.mul_f64(id as f64 / config.conns as f64);
        workers.spawn(worker(ctx.clone(), id, rng.fork(id as u64 + 1), ramp));
    }
    // After the deadline, open connections get a grace period to finish.
    let grace = config.stall * 2 + Duration::from_secs(5);
    let end = tokio::time::Instant::from_std(ctx.deadline + grace);
    while let Ok(Some(_)) = tokio::time::timeout_at(end, workers.join_next()).await {}
    let hung = workers.len();
    workers.abort_all();
    if hung > 0 {
        for (id, p) in ctx.progress.iter().enumerate() {
            if p.load(Ordering::Relaxed) != IDLE && !ctx.flagged[id].swap(true, Ordering::Relaxed) {
                ctx.counters.stuck.fetch_add(1, Ordering::Relaxed);
            }
        }
        ctx.fail(Failure::Io(format!(
            "{hung} connections still open {:.0} s after the deadline",
            grace.as_secs_f64()
        )));
    }
    while workers.join_next().await.is_some() {}

    // Let lingering connections go, then look at what is left.
    let settle = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = (client.connection_count(), server.connection_count());
        if left == (0, 0) || tokio::time::Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accept.abort();
    stop.store(true, Ordering::Relaxed);
    let samples = monitor
        .join()
        .map_err(|_| io::Error::other("the soak monitor panicked"))?;

    let failures = ctx
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let c = &ctx.counters;
    let warmup = config.warmup();
    let rss_at = |t: Duration| {
        samples
            .rss
            .iter()
            .find(|(at, _)| *at >= t)
            .or(samples.rss.last())
            .map(|&(_, k)| k)
    };
    let rss_end = samples
        .rss
        .iter()
        .rev()
        .find(|(at, _)| *at <= config.duration)
        .map(|&(_, k)| k);
    Ok(SoakReport {
        seed: config.seed,
        elapsed: start.elapsed(),
        completed: c.completed.load(Ordering::Relaxed),
        server_completed: c.server_completed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        corrupt: c.corrupt.load(Ordering::Relaxed),
        bytes_verified: c.bytes_verified.load(Ordering::Relaxed),
        stuck: c.stuck.load(Ordering::Relaxed),
        longest_stall: Duration::from_millis(c.longest_stall_ms.load(Ordering::Relaxed)),
        failures,
        rss_after_warmup: rss_at(warmup.min(config.duration)),
        rss_end,
        rss: samples.rss,
        peak_connections: samples.peak_connections,
        connections_left: (client.connection_count(), server.connection_count()),
        relay: relay.stats(),
        client_stats: client.stats(),
        server_stats: server.stats(),
    })
}

struct Samples {
    rss: Vec<(Duration, u64)>,
    peak_connections: usize,
}

fn monitor(ctx: &Ctx, stop: &AtomicBool) -> Samples {
    let mut samples = Samples {
        rss: Vec::new(),
        peak_connections: 0,
    };
    let mut next_rss = Duration::ZERO;
    let mut next_line = ctx.config.progress;
    let stall_ms = ctx.config.stall.as_millis() as u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let now_ms = ctx.ms();
        let mut open = 0;
        for (id, p) in ctx.progress.iter().enumerate() {
            let last = p.load(Ordering::Relaxed);
            if last == IDLE {
                continue;
            }
            open += 1;
            let quiet = now_ms.saturating_sub(last);
            ctx.counters
                .longest_stall_ms
                .fetch_max(quiet, Ordering::Relaxed);
            if quiet > stall_ms && !ctx.flagged[id].swap(true, Ordering::Relaxed) {
                ctx.counters.stuck.fetch_add(1, Ordering::Relaxed);
            }
        }
        samples.peak_connections = samples.peak_connections.max(ctx.client.connection_count());
        let t = ctx.start.elapsed();
        if t >= next_rss {
            if let Some(k) = rss_kib() {
                samples.rss.push((t, k));
            }
            next_rss = t + Duration::from_secs(1);
        }
        if let Some(at) = next_line.filter(|at| t >= *at) {
            let c = &ctx.counters;
            eprintln!(
                "soak {:>6.1}s: {open} open, {} in the client table, {} done, {:.1} MB verified, {} failed, {} corrupt, {} stuck, RSS {:.1} MiB",
                t.as_secs_f64(),
                ctx.client.connection_count(),
                c.completed.load(Ordering::Relaxed),
                c.bytes_verified.load(Ordering::Relaxed) as f64 / 1e6,
                c.failed.load(Ordering::Relaxed),
                c.corrupt.load(Ordering::Relaxed),
                c.stuck.load(Ordering::Relaxed),
                rss_kib().unwrap_or(0) as f64 / 1024.0
            );
            next_line = ctx.config.progress.map(|p| at + p);
        }
    }
    samples
}

/// One worker: connections one after another until the deadline.
async fn worker(ctx: Arc<Ctx>, id: usize, mut rng: SimRng, delay: Duration) {
    tokio::time::sleep(delay).await;
    let cfg = &ctx.config;
    while Instant::now() < ctx.deadline {
        let salt = rng.below(u64::MAX);
        let len = cfg.min_bytes + rng.below(cfg.max_bytes - cfg.min_bytes + 1);
        ctx.flagged[id].store(false, Ordering::Relaxed);
        ctx.touch(id);
        let result = client_connection(&ctx, id, salt, len).await;
        ctx.progress[id].store(IDLE, Ordering::Relaxed);
        match result {
            Ok(()) => {
                ctx.counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                ctx.fail(f);
                // Do not spin on a persistent error.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The reply's pattern salt for a request's salt.
fn reply_salt(salt: u64) -> u64 {
    salt.rotate_left(29) ^ 0x5bd1_e995_a5a5_5a5a
}

async fn client_connection(ctx: &Ctx, id: usize, salt: u64, len: u64) -> Result<(), Failure> {
    let mut stream = ctx
        .client
        .connect(ctx.target)
        .await
        .map_err(io_failure("connect"))?;
    ctx.touch(id);
    let (mut r, mut w) = stream.split();
    let touch = || ctx.touch(id);
    let send = async {
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(&salt.to_be_bytes());
        head[8..].copy_from_slice(&len.to_be_bytes());
        w.write_all(&head).await.map_err(io_failure("write"))?;
        write_pattern(&mut w, salt, len, &touch).await?;
        w.shutdown().await.map_err(io_failure("shutdown"))
    };
    let recv = read_verify(&mut r, reply_salt(salt), len, &touch, &ctx.counters);
    let (s, r) = tokio::join!(send, recv);
    s?;
    r?;
    drop(stream);
    Ok(())
}

async fn serve(ctx: Arc<Ctx>, mut stream: UtpStream) {
    if let Err(f) = serve_one(&ctx, &mut stream).await {
        ctx.fail(f);
    }
}

async fn serve_one(ctx: &Ctx, stream: &mut UtpStream) -> Result<(), Failure> {
    let mut head = [0u8; HEADER];
    stream
        .read_exact(&mut head)
        .await
        .map_err(io_failure("server: read header"))?;
    let salt = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
    let len = u64::from_be_bytes(head[8..].try_into().unwrap_or_default());
    if len > ctx.config.max_bytes {
        return Err(Failure::Corrupt(format!(
            "server: request header claims {len} bytes"
        )));
    }
    let (mut r, mut w) = stream.split();
    let touch = || {};
    let send = async {
        write_pattern(&mut w, reply_salt(salt), len, &touch).await?;
        w.shutdown().await.map_err(io_failure("server: shutdown"))
    };
    let recv = read_verify(&mut r, salt, len, &touch, &ctx.counters);
    let (s, r) = tokio::join!(send, recv);
    s?;
    r?;
    ctx.counters
        .server_completed
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn write_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    salt: u64,
    len: u64,
    touch: &impl Fn(),
) -> Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        fill_pattern(salt, at, &mut buf[..n]);
        w.write_all(&buf[..n]).await.map_err(io_failure("write"))?;
        at += n as u64;
        touch();
    }
    Ok(())
}

/// Reads exactly `len` bytes, checks each against the pattern, then expects EOF.
async fn read_verify<R: AsyncRead + Unpin>(
    r: &mut R,
    salt: u64,
    len: u64,
    touch: &impl Fn(),
    counters: &Counters,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut expected = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(CHUNK as u64) as usize;
        let n = r.read(&mut buf[..want]).await.map_err(io_failure("read"))?;
        if n == 0 {
            return Err(Failure::Io(format!("EOF after {at} of {len} bytes")));
        }
        fill_pattern(salt, at, &mut expected[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != expected[i]) {
            return Err(Failure::Corrupt(format!(
                "byte {} of {len} is {:#04x}, expected {:#04x}",
                at + i as u64,
                buf[i],
                expected[i]
            )));
        }
        at += n as u64;
        counters
            .bytes_verified
            .fetch_add(n as u64, Ordering::Relaxed);
        touch();
    }
    let n = r
        .read(&mut buf[..1])
        .await
        .map_err(io_failure("read EOF"))?;
    if n != 0 {
        return Err(Failure::Corrupt(format!("data after the {len} bytes sent")));
    }
    Ok(())
}

/// The pattern's bytes `offset..offset + out.len()` for `salt`: byte `i` is byte
/// `i % 8` (little-endian) of `splitmix64(salt + i / 8)`.
pub fn fill_pattern(salt: u64, offset: u64, out: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < out.len() {
        let word = splitmix64(salt.wrapping_add(pos / 8)).to_le_bytes();
        let from = (pos % 8) as usize;
        let n = (8 - from).min(out.len() - i);
        out[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
        pos += n as u64;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_positional() {
        let mut whole = vec![0u8; 100];
        fill_pattern(7, 0, &mut whole);
        for start in [0usize, 1, 7, 8, 9, 63] {
            let mut part = vec![0u8; 100 - start];
            fill_pattern(7, start as u64, &mut part);
            assert_eq!(part, whole[start..]);
        }
        let mut other = vec![0u8; 100];
        fill_pattern(8, 0, &mut other);
        assert_ne!(other, whole);
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let args: Vec<String> = "--secs 3 --conns 50 --loss 0.01 --delay-ms 5 --quiet"
            .split(' ')
            .map(String::from)
            .collect();
        let c = SoakConfig::from_args(&args).unwrap();
        assert_eq!(c.duration, Duration::from_secs(3));
        assert_eq!(c.conns, 50);
        assert_eq!(c.delay, Duration::from_millis(5));
        assert_eq!(c.progress, None);
        assert!(SoakConfig::from_args(&["--loss".into(), "2".into()]).is_err());
        assert!(SoakConfig::from_args(&["--bogus".into(), "1".into()]).is_err());
        assert!(SoakConfig::from_args(&["--conns".into()]).is_err());
    }

    #[test]
    fn rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().unwrap() > 0);
        }
    }
}
