//! Soak: thousands of concurrent uTP connections on real sockets, for minutes.
//!
//! **Real time, not part of the deterministic simulator.** The soak runs our tokio stack
//! ([`utp::net::UtpSocket`], [`utp::net::UtpStream`]) over 127.0.0.1: one client socket
//! and one server socket, with an impairing [`Relay`] between them (loss, delay,
//! jitter). `conns` workers each open a connection through the one client socket,
//! move a verifiable byte pattern both ways at once (the request and a reply of the same
//! length), close, and open the next one, until the duration is over.
//!
//! What it checks and reports ([`SoakReport`]; [`SoakReport::passed`] asks for all of
//! it, with one bounded exception, the close residue):
//!
//! - every byte read matches the pattern the other side wrote, in order, and each
//!   direction ends with a clean EOF; the bytes verified are exactly the bytes the
//!   completed connections moved (`bytes_verified`, `bytes_expected`, `corrupt`);
//! - no connection fails on either side (`failed`, with every failure counted by
//!   kind), except a `shutdown()` that fails after every byte arrived both ways, at
//!   most one per 10 000 connections ([`SoakReport::residue_within_bound`]). The give-up limits are the library's defaults except `syn_retries`
//!   ([`SoakConfig::syn_retries`]), so that losing every attempt by chance is below one
//!   in a hundred million per connection at 2 % loss: a failure is a bug;
//! - no connection goes `stall` without progress (`stuck`), and every connection open
//!   at the deadline finishes, on both sides, within a grace period;
//! - the connection tables empty once everything closed (`connections_left`), within
//!   the longest linger the library allows;
//! - memory stays flat after warm-up and goes back once the connections are gone,
//!   measured on the live heap ([`CountingAlloc`], [`heap_bytes`]) against the table
//!   sizes ([`SoakReport::memory_problems`]); the resident set size ([`rss_kib`]) is
//!   reported too, but the system allocator keeps freed pages, so it is not judged.
//!
//! `utp-sim soak --secs 300 --conns 2000 --loss 0.02` runs it from the command line;
//! `sim/tests/soak.rs` runs a short version in `cargo test`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
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
    /// A connection without progress for this long counts as stuck. Default 40 s: a
    /// packet whose first five sends are lost is resent 31.5 s after the first (RTO
    /// 0.5 s, doubling); a silence of more than 40 s needs six losses in a row (at 2 %
    /// loss each way, 4·10⁻⁹ per packet), after which the connection gives up at 63.5 s
    /// (`max_retransmits` 6) or is stuck.
    pub stall: Duration,
    /// SYN resends before a connect fails (`Config::syn_retries`). Default 5, where the
    /// library's default is 3: four lost handshakes in a row happen by chance once in
    /// 400 000 connects at 2 % loss each way (0.0396⁴), and the soak opens that many in
    /// a few minutes; six in a row, once in 260 million. With 5, a failed connect is a
    /// bug, not bad luck; the sixth attempt goes out 31 s after the first.
    pub syn_retries: u32,
    /// Memory is compared from this point of the run on. Default: a fifth of the
    /// duration, at least 20 s (the ramp plus two linger periods of closed
    /// connections, 8 s each) but at most the duration.
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
            stall: Duration::from_secs(40),
            syn_retries: 5,
            warmup: None,
            ramp: Duration::from_secs(2),
            progress: None,
        }
    }
}

impl SoakConfig {
    /// Parses command-line flags (`--secs`, `--conns`, `--loss`, `--delay-ms`,
    /// `--jitter-ms`, `--seed`, `--min-bytes`, `--max-bytes`, `--stall-secs`,
    /// `--syn-retries`, `--warmup-secs`, `--ramp-secs`, `--quiet`) over the defaults; progress lines every 5 s unless
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
                "--syn-retries" => c.syn_retries = num(v)? as u32,
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
            .unwrap_or_else(|| (self.duration / 5).max(Duration::from_secs(20)))
            .min(self.duration)
    }
}

/// The `utp-sim soak` flags.
pub const SOAK_USAGE: &str = "usage: utp-sim soak [--secs S] [--conns N] [--loss P] \
[--delay-ms D] [--jitter-ms J] [--seed N] [--min-bytes B] [--max-bytes B] [--stall-secs S] \
[--syn-retries N] [--warmup-secs S] [--ramp-secs S] [--quiet]";

/// Heap after warm-up may grow this much per table entry (a factor on the heap per
/// entry at the end of warm-up); see [`SoakReport::memory_problems`].
const HEAP_PER_ENTRY_GROWTH: f64 = 1.10;
/// Heap that may be left, per table entry at the peak, once every connection is gone.
const RETAINED_PER_PEAK_ENTRY: u64 = 3 * 1024;
/// Fixed heap allowance of both memory checks.
const HEAP_SLACK: u64 = 8 << 20;

/// What a soak run found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoakReport {
    /// The configuration that ran.
    pub config: SoakConfig,
    /// The seed (as in `config`).
    pub seed: u64,
    /// Wall time from start to the end of the drain.
    pub elapsed: Duration,
    /// Connections whose both directions were verified and closed cleanly (client view).
    pub completed: u64,
    /// Connections the server side finished and verified.
    pub server_completed: u64,
    /// Connections that ended with an error (either side), corruption excluded.
    pub failed: u64,
    /// Closes that ended in an error after every byte arrived both ways: one side's
    /// `shutdown()` failed (RESET or time-out) because every ACK of its last packets
    /// was lost until the peer, done and verified, stopped lingering. The peer's side
    /// checks the data, so a lost byte would show as a failure there, never here; the
    /// two-generals residue cannot be driven to zero under loss, and may be at most
    /// one in 10 000 connections (`passed`).
    pub close_residue: u64,
    /// Connections where a byte differed from the pattern (either side).
    pub corrupt: u64,
    /// Bytes read and verified, both directions together.
    pub bytes_verified: u64,
    /// Bytes the completed connections moved, both directions together (each one's
    /// request and reply): with no failure, every one of them was verified.
    pub bytes_expected: u64,
    /// Connections that went `stall` without progress, or were still open (on either
    /// side) after the grace period at the end.
    pub stuck: u64,
    /// The longest time any open connection went without progress.
    pub longest_stall: Duration,
    /// The first failure messages.
    pub failures: Vec<String>,
    /// Every failure, counted by kind (its message without the connection's details,
    /// digits replaced by `#`).
    pub failure_kinds: Vec<(String, u64)>,
    /// The monitor's samples, one a second.
    pub series: Vec<Sample>,
    /// RSS at the end of warm-up, KiB.
    pub rss_after_warmup: Option<u64>,
    /// RSS at the deadline, KiB.
    pub rss_end: Option<u64>,
    /// Bytes live on the heap before the first connection ([`heap_bytes`]; `None`
    /// unless [`CountingAlloc`] is the global allocator).
    pub heap_before: Option<u64>,
    /// Bytes live on the heap once every connection was released.
    pub heap_after_drain: Option<u64>,
    /// Most connections the client socket held at once.
    pub peak_connections: usize,
    /// Most connections the server socket held at once.
    pub peak_server_connections: usize,
    /// How long the tables took to empty after the last connection finished.
    pub drain: Duration,
    /// Connections left in the client and server tables after the drain.
    pub connections_left: (usize, usize),
    /// Server tasks still serving a connection after the drain.
    pub serving_left: u64,
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

    /// The sample at the end of warm-up (the first one after it).
    pub fn warm_sample(&self) -> Option<&Sample> {
        let w = self.config.warmup();
        self.series.iter().find(|s| s.at >= w)
    }

    /// The last sample before the deadline.
    pub fn end_sample(&self) -> Option<&Sample> {
        self.series
            .iter()
            .rev()
            .find(|s| s.at <= self.config.duration)
    }

    /// The heap bound at the deadline: the heap per table entry at the end of warm-up,
    /// times the entries at the deadline, times 1.10, plus 8 MiB (see
    /// [`Self::memory_problems`]); in bytes above `heap_before`. `None` without heap
    /// counts.
    pub fn heap_end_bound(&self) -> Option<u64> {
        let (w, e) = (self.warm_sample()?, self.end_sample()?);
        let before = self.heap_before?;
        let per_entry = w.heap.saturating_sub(before) as f64 / w.entries().max(1) as f64;
        Some((per_entry * e.entries() as f64 * HEAP_PER_ENTRY_GROWTH) as u64 + HEAP_SLACK)
    }

    /// The bound on the heap left after the drain, in bytes above `heap_before`.
    pub fn heap_drained_bound(&self) -> u64 {
        (self.peak_connections + self.peak_server_connections) as u64 * RETAINED_PER_PEAK_ENTRY
            + HEAP_SLACK
    }

    /// What the memory checks found wrong (empty: memory was flat). Nothing is checked
    /// without heap counts ([`CountingAlloc`]), nor when warm-up lasts the whole run.
    ///
    /// - **Flat after warm-up.** Nearly all the heap a soak uses belongs to the entries
    ///   of the two connection tables: each open or lingering connection keeps its
    ///   buffers (a lingering one their capacity, see `THREAT_MODEL.md`), 35-40 KiB
    ///   with transfers of up to 32 KiB, 80-85 KiB with up to 64 KiB; the number of
    ///   entries follows the rate of connections, which follows the load on the
    ///   machine. So the heap at the deadline may be at most 10 % more per entry than
    ///   at the end of warm-up, plus 8 MiB (measured: from -3.5 % to +1.3 %; a doubling
    ///   of the endpoint's slot vector, 912 bytes a slot, adds at most one slot per
    ///   entry). This catches what grows with time: in the five-minute run with 2000
    ///   workers, a leak of about 1 KiB per connection.
    /// - **Back to the start after the drain.** Once every connection is gone, what
    ///   remains is the capacity the tables grew to at the peak (the slot vector, two
    ///   id maps, the timer heap, the driver's slot map; up to twice the peak, as they
    ///   double): measured 1.2-1.6 KiB per peak entry, allowed 3 KiB, plus 8 MiB.
    ///   Anything each connection leaves behind adds up over all of them: the
    ///   ten-second CI run (about 20 000 connections) fails with 4 KiB leaked per
    ///   connection (tried: 156 MiB left, bound 125 MiB), the five-minute run (about
    ///   360 000) with 150 bytes.
    pub fn memory_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(before) = self.heap_before else {
            return problems;
        };
        let mib = |b: u64| b as f64 / 1048576.0;
        if let (Some(w), Some(e), Some(bound)) =
            (self.warm_sample(), self.end_sample(), self.heap_end_bound())
        {
            let used = e.heap.saturating_sub(before);
            if w.at < e.at && used > bound {
                problems.push(format!(
                    "heap grew after warm-up: {:.1} MiB for {} table entries at {:.0} s \
(bound {:.1} MiB), {:.1} MiB for {} at {:.0} s",
                    mib(used),
                    e.entries(),
                    e.at.as_secs_f64(),
                    mib(bound),
                    mib(w.heap.saturating_sub(before)),
                    w.entries(),
                    w.at.as_secs_f64()
                ));
            }
        }
        if let Some(after) = self.heap_after_drain {
            let left = after.saturating_sub(before);
            if left > self.heap_drained_bound() {
                problems.push(format!(
                    "{:.1} MiB of heap left after the drain (bound {:.1} MiB for a peak of {} entries)",
                    mib(left),
                    mib(self.heap_drained_bound()),
                    self.peak_connections + self.peak_server_connections
                ));
            }
        }
        problems
    }

    /// Whether the close residue is at most one per 10 000 completed connections
    /// (one is always allowed).
    pub fn residue_within_bound(&self) -> bool {
        self.close_residue * 10_000 <= self.completed.max(10_000)
    }

    /// Whether every byte was intact and verified (as many as the completed connections
    /// moved), no connection failed or got stuck on either side, the close residue
    /// stayed within its bound, the connection tables drained, and memory stayed flat
    /// ([`Self::memory_problems`]).
    pub fn passed(&self) -> bool {
        self.corrupt == 0
            && self.failed == 0
            && self.residue_within_bound()
            && self.stuck == 0
            && self.completed > 0
            && self.completed == self.server_completed
            && self.bytes_verified == self.bytes_expected
            && self.connections_left == (0, 0)
            && self.serving_left == 0
            && self.memory_problems().is_empty()
    }

    /// A printable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let run = c.duration.as_secs_f64().max(1e-9);
        let _ = writeln!(
            s,
            "soak (seed {}): {:.0} s, {} workers, loss {} each way, {}-{} bytes each way, \
syn_retries {}",
            self.seed, run, c.conns, c.loss, c.min_bytes, c.max_bytes, c.syn_retries
        );
        let _ = writeln!(
            s,
            "connections  {} completed ({:.0}/s over the {:.0} s), {} on the server side; \
tables peak at {} client, {} server",
            self.completed,
            self.completed as f64 / run,
            run,
            self.server_completed,
            self.peak_connections,
            self.peak_server_connections
        );
        let _ = writeln!(
            s,
            "bytes        {} verified of {} moved ({:.1} MB/s), {} corrupt connections",
            self.bytes_verified,
            self.bytes_expected,
            self.bytes_verified as f64 / secs / 1e6,
            self.corrupt
        );
        let _ = writeln!(
            s,
            "problems     {} failed, {} close residue, {} stuck, longest stall {:.1} s; tables \
empty after {:.1} s of drain, left {:?}, {} server tasks left",
            self.failed,
            self.close_residue,
            self.stuck,
            self.longest_stall.as_secs_f64(),
            self.drain.as_secs_f64(),
            self.connections_left,
            self.serving_left
        );
        for f in &self.failures {
            let _ = writeln!(s, "  failure: {f}");
        }
        for (k, n) in &self.failure_kinds {
            let _ = writeln!(s, "  {n:>6} x {k}");
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
        let mib = |b: u64| b as f64 / 1048576.0;
        match (self.heap_before, self.warm_sample(), self.end_sample()) {
            (Some(before), Some(w), Some(e)) => {
                let used = |x: &Sample| x.heap.saturating_sub(before);
                let per = |x: &Sample| used(x) as f64 / 1024.0 / x.entries().max(1) as f64;
                let _ = writeln!(
                    s,
                    "heap         {:.1} MiB at warm-up ({:.0} s, {} table entries, {:.1} KiB each), \
{:.1} MiB at the end ({} entries, {:.1} KiB each; bound {:.1} MiB)",
                    mib(used(w)),
                    w.at.as_secs_f64(),
                    w.entries(),
                    per(w),
                    mib(used(e)),
                    e.entries(),
                    per(e),
                    mib(self.heap_end_bound().unwrap_or(0))
                );
                if let Some(after) = self.heap_after_drain {
                    let left = after.saturating_sub(before);
                    let peak = (self.peak_connections + self.peak_server_connections).max(1);
                    let _ = writeln!(
                        s,
                        "             {:.1} MiB left after the drain ({:.2} KiB per peak entry, \
{:.0} bytes per connection; bound {:.1} MiB)",
                        mib(left),
                        left as f64 / 1024.0 / peak as f64,
                        left as f64 / self.completed.max(1) as f64,
                        mib(self.heap_drained_bound())
                    );
                }
            }
            _ => {
                let _ = writeln!(s, "heap         not counted (no CountingAlloc)");
            }
        }
        if let (Some(w), Some(e)) = (self.rss_after_warmup, self.rss_end) {
            let _ = writeln!(
                s,
                "RSS          {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} MiB)",
                w as f64 / 1024.0,
                e as f64 / 1024.0,
                (e as f64 - w as f64) / 1024.0
            );
        }
        let _ = writeln!(
            s,
            "time         RSS MiB   heap MiB   client   server   open      done"
        );
        let step = (self.series.len() / 16).max(1);
        let last = self.series.len().saturating_sub(1);
        for (i, x) in self.series.iter().enumerate() {
            if i % step == 0 || i == last {
                let _ = writeln!(
                    s,
                    "{:>9.0} s {:>9.1} {:>10.1} {:>8} {:>8} {:>6} {:>9}",
                    x.at.as_secs_f64(),
                    x.rss_kib as f64 / 1024.0,
                    mib(x.heap),
                    x.client_conns,
                    x.server_conns,
                    x.open,
                    x.completed
                );
            }
        }
        for p in self.memory_problems() {
            let _ = writeln!(s, "  memory: {p}");
        }
        let _ = writeln!(
            s,
            "result       {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// A global allocator that counts the bytes live on the heap: install it with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` in a binary, and
/// [`heap_bytes`] reads the count. The soak checks memory with it: RSS cannot tell
/// memory in use from memory the system allocator keeps after a peak.
#[derive(Debug)]
pub struct CountingAlloc;

static HEAP_LIVE: AtomicU64 = AtomicU64::new(0);
static HEAP_COUNTED: AtomicBool = AtomicBool::new(false);

// SAFETY: every call goes to `System` unchanged; the counters are only bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HEAP_LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            count_alloc(new_size);
        }
        p
    }
}

fn count_alloc(size: usize) {
    HEAP_LIVE.fetch_add(size as u64, Ordering::Relaxed);
    if !HEAP_COUNTED.load(Ordering::Relaxed) {
        HEAP_COUNTED.store(true, Ordering::Relaxed);
    }
}

/// Bytes live on the heap, when [`CountingAlloc`] is the global allocator (`None`
/// otherwise).
pub fn heap_bytes() -> Option<u64> {
    HEAP_COUNTED
        .load(Ordering::Relaxed)
        .then(|| HEAP_LIVE.load(Ordering::Relaxed))
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
    close_residue: AtomicU64,
    corrupt: AtomicU64,
    bytes_verified: AtomicU64,
    bytes_expected: AtomicU64,
    stuck: AtomicU64,
    longest_stall_ms: AtomicU64,
    serving: AtomicU64,
}

#[derive(Debug)]
struct Ctx {
    start: Instant,
    deadline: Instant,
    config: SoakConfig,
    target: SocketAddr,
    client: UtpSocket,
    server: UtpSocket,
    /// Per worker: milliseconds since `start` of its last progress, plus one; `IDLE`
    /// when it has no connection open.
    progress: Vec<AtomicU64>,
    /// Per worker: its current connection was already counted as stuck.
    flagged: Vec<AtomicBool>,
    counters: Counters,
    failures: Mutex<(Vec<String>, BTreeMap<String, u64>)>,
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
            Failure::CloseResidue(m) => {
                (&self.counters.close_residue, format!("close residue: {m}"))
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // The kind: the message without its details, digits masked.
        let kind: String = msg
            .split(" (")
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *f.1.entry(kind).or_default() += 1;
        if f.0.len() < KEEP_FAILURES {
            f.0.push(msg);
        }
    }
}

enum Failure {
    Corrupt(String),
    Io(String),
    /// Only `shutdown()` failed, after this side received and verified everything
    /// (see [`SoakReport::close_residue`]).
    CloseResidue(String),
}

impl Failure {
    /// Adds what the connection's statistics say, for the report.
    fn with(self, stream: &UtpStream, started: Instant) -> Failure {
        let s = stream.stats();
        let detail = format!(
            " (after {:.1} s: rtt {} ms, rto {} ms, {} timeouts, resends {} timeout + {} \
dup-ack + {} sack + {} probe, {} packets sent, {} received, {} dropped)",
            started.elapsed().as_secs_f64(),
            s.rtt.as_millis(),
            s.rto.as_millis(),
            s.timeouts,
            s.retransmits_timeout,
            s.retransmits_dup_ack,
            s.retransmits_sack,
            s.retransmits_probe,
            s.packets_sent,
            s.packets_received,
            s.packets_dropped
        );
        match self {
            Failure::Corrupt(m) => Failure::Corrupt(m + &detail),
            Failure::Io(m) => Failure::Io(m + &detail),
            Failure::CloseResidue(m) => Failure::CloseResidue(m + &detail),
        }
    }
}

fn io_failure(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::Io(format!("{what}: {e}"))
}

fn soak_config(config: &SoakConfig) -> Config {
    let conns = config.conns;
    let mut c = Config::default();
    // Closed connections linger (at least 8 s, longer after resends) and count against
    // the limit: at thousands of connections per second, leave room for them. The
    // tables grow as needed; the limit costs nothing.
    c.max_connections = conns * 64 + 65_536;
    c.accept_queue = conns + 128;
    c.max_half_open = conns.clamp(64, 4096);
    c.syn_retries = config.syn_retries;
    c
}

async fn run_async(config: SoakConfig) -> io::Result<SoakReport> {
    let cfg = soak_config(&config);
    let server = UtpSocket::bind_with_config("127.0.0.1:0", cfg.clone()).await?;
    let client = UtpSocket::bind_with_config("127.0.0.1:0", cfg.clone()).await?;
    let direction = Direction::lossy(config.loss)
        .with_delay(config.delay)
        .with_jitter(config.jitter);
    let relay = Relay::spawn(
        server.local_addr()?,
        Impairment::symmetric(direction, config.seed),
    )?;
    let heap_before = heap_bytes();
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        start,
        deadline: start + config.duration,
        target: relay.addr(),
        client: client.clone(),
        server: server.clone(),
        progress: (0..config.conns).map(|_| AtomicU64::new(IDLE)).collect(),
        flagged: (0..config.conns).map(|_| AtomicBool::new(false)).collect(),
        counters: Counters::default(),
        failures: Mutex::new((Vec::new(), BTreeMap::new())),
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
    // After the deadline, open connections get a grace period to finish, on both
    // sides.
    let grace = config.stall * 2 + Duration::from_secs(5);
    let end = tokio::time::Instant::from_std(ctx.deadline + grace);
    while let Ok(Some(_)) = tokio::time::timeout_at(end, workers.join_next()).await {}
    while ctx.counters.serving.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let serving = ctx.counters.serving.load(Ordering::Relaxed);
    if serving > 0 {
        ctx.counters.stuck.fetch_add(serving, Ordering::Relaxed);
        ctx.fail(Failure::Io(format!(
            "server: {serving} connections still open {:.0} s after the deadline",
            grace.as_secs_f64()
        )));
    }
    while workers.join_next().await.is_some() {}

    // Let lingering connections go, then look at what is left. A linger lasts at
    // least 8 s and doubles with each FIN the peer resends, up to `max_timeout` (60 s);
    // a connection whose peer vanished waits for its idle timeout (60 s). Past twice
    // `max_timeout` (plus some), an entry is a leak.
    let drain_start = tokio::time::Instant::now();
    let settle = drain_start + cfg.max_timeout.max(cfg.idle_timeout) * 2 + Duration::from_secs(10);
    loop {
        let left = (client.connection_count(), server.connection_count());
        if left == (0, 0) || tokio::time::Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = drain_start.elapsed();
    accept.abort();
    let heap_after_drain = heap_bytes();
    stop.store(true, Ordering::Relaxed);
    let samples = monitor
        .join()
        .map_err(|_| io::Error::other("the soak monitor panicked"))?;

    let (failures, failure_kinds) = ctx
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let c = &ctx.counters;
    let mut report = SoakReport {
        config: config.clone(),
        seed: config.seed,
        elapsed: start.elapsed(),
        completed: c.completed.load(Ordering::Relaxed),
        server_completed: c.server_completed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        close_residue: c.close_residue.load(Ordering::Relaxed),
        corrupt: c.corrupt.load(Ordering::Relaxed),
        bytes_verified: c.bytes_verified.load(Ordering::Relaxed),
        bytes_expected: c.bytes_expected.load(Ordering::Relaxed),
        stuck: c.stuck.load(Ordering::Relaxed),
        longest_stall: Duration::from_millis(c.longest_stall_ms.load(Ordering::Relaxed)),
        failures,
        failure_kinds: failure_kinds.into_iter().collect(),
        series: samples.series,
        rss_after_warmup: None,
        rss_end: None,
        heap_before,
        heap_after_drain,
        peak_connections: samples.peak.0,
        peak_server_connections: samples.peak.1,
        drain,
        connections_left: (client.connection_count(), server.connection_count()),
        serving_left: c.serving.load(Ordering::Relaxed),
        relay: relay.stats(),
        client_stats: client.stats(),
        server_stats: server.stats(),
    };
    report.rss_after_warmup = report.warm_sample().map(|s| s.rss_kib);
    report.rss_end = report.end_sample().map(|s| s.rss_kib);
    Ok(report)
}

struct Samples {
    peak: (usize, usize),
    series: Vec<Sample>,
}

/// One look at the run, taken every second by the monitor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Time since the start.
    pub at: Duration,
    /// Resident set size in KiB (0 where it cannot be read).
    pub rss_kib: u64,
    /// Bytes live on the heap ([`heap_bytes`]; 0 without [`CountingAlloc`]).
    pub heap: u64,
    /// Connections in the client socket's table (lingering ones included).
    pub client_conns: usize,
    /// Connections in the server socket's table.
    pub server_conns: usize,
    /// Workers with a connection open.
    pub open: usize,
    /// Connections completed so far (client view).
    pub completed: u64,
}

impl Sample {
    /// Entries of both connection tables.
    pub fn entries(&self) -> usize {
        self.client_conns + self.server_conns
    }
}

fn monitor(ctx: &Ctx, stop: &AtomicBool) -> Samples {
    let mut samples = Samples {
        peak: (0, 0),
        series: Vec::new(),
    };
    let mut next_sample = Duration::ZERO;
    let mut next_line = ctx.config.progress;
    let stall_ms = ctx.config.stall.as_millis() as u64;
    loop {
        // One last sample after the stop, so the series ends with the drained tables.
        let last = stop.load(Ordering::Relaxed);
        if !last {
            std::thread::sleep(Duration::from_millis(250));
        }
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
        let tables = (ctx.client.connection_count(), ctx.server.connection_count());
        samples.peak = (samples.peak.0.max(tables.0), samples.peak.1.max(tables.1));
        let t = ctx.start.elapsed();
        if t >= next_sample || last {
            samples.series.push(Sample {
                at: t,
                rss_kib: rss_kib().unwrap_or(0),
                heap: heap_bytes().unwrap_or(0),
                client_conns: tables.0,
                server_conns: tables.1,
                open,
                completed: ctx.counters.completed.load(Ordering::Relaxed),
            });
            next_sample = t + Duration::from_secs(1);
        }
        if let Some(at) = next_line.filter(|at| t >= *at) {
            let c = &ctx.counters;
            eprintln!(
                "soak {:>6.1}s: {open} open, tables {} + {}, {} done, {:.1} MB verified, {} failed, \
{} corrupt, {} stuck, heap {:.1} MiB, RSS {:.1} MiB",
                t.as_secs_f64(),
                tables.0,
                tables.1,
                c.completed.load(Ordering::Relaxed),
                c.bytes_verified.load(Ordering::Relaxed) as f64 / 1e6,
                c.failed.load(Ordering::Relaxed),
                c.corrupt.load(Ordering::Relaxed),
                c.stuck.load(Ordering::Relaxed),
                heap_bytes().unwrap_or(0) as f64 / 1048576.0,
                rss_kib().unwrap_or(0) as f64 / 1024.0
            );
            next_line = ctx.config.progress.map(|p| at + p);
        }
        if last {
            return samples;
        }
    }
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
                ctx.counters
                    .bytes_expected
                    .fetch_add(2 * len, Ordering::Relaxed);
            }
            Err(Failure::CloseResidue(m)) => {
                // Everything arrived both ways (the server verified the request).
                ctx.counters.completed.fetch_add(1, Ordering::Relaxed);
                ctx.counters
                    .bytes_expected
                    .fetch_add(2 * len, Ordering::Relaxed);
                ctx.fail(Failure::CloseResidue(m));
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
    let started = Instant::now();
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
        w.shutdown().await.map_err(shutdown_failure("shutdown"))
    };
    let recv = read_verify(&mut r, reply_salt(salt), len, &touch, &ctx.counters);
    let (s, r) = tokio::join!(send, recv);
    residue_or(s, r).map_err(|f| f.with(&stream, started))?;
    drop(stream);
    Ok(())
}

async fn serve(ctx: Arc<Ctx>, mut stream: UtpStream) {
    ctx.counters.serving.fetch_add(1, Ordering::Relaxed);
    if let Err(f) = serve_one(&ctx, &mut stream).await {
        ctx.fail(f);
    }
    ctx.counters.serving.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_one(ctx: &Ctx, stream: &mut UtpStream) -> Result<(), Failure> {
    let started = Instant::now();
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
        w.shutdown()
            .await
            .map_err(shutdown_failure("server: shutdown"))
    };
    let recv = read_verify(&mut r, salt, len, &touch, &ctx.counters);
    let (s, r) = tokio::join!(send, recv);
    let result = residue_or(s, r).map_err(|f| f.with(stream, started));
    if matches!(result, Ok(()) | Err(Failure::CloseResidue(_))) {
        ctx.counters
            .server_completed
            .fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// A failed `shutdown()`: the close residue, unless the receiving direction failed
/// too ([`residue_or`] decides).
fn shutdown_failure(what: &str) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::CloseResidue(format!("{what}: {e}"))
}

/// The outcome of one side: a failure of its `shutdown()` alone, once everything it
/// was sent has arrived and been verified, is the close residue; with the receiving
/// direction failed as well, it is a failure like any other.
fn residue_or(send: Result<(), Failure>, recv: Result<(), Failure>) -> Result<(), Failure> {
    match (send, recv) {
        (Err(Failure::CloseResidue(m)), Err(_)) => Err(Failure::Io(m)),
        (s, r) => s.and(r),
    }
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
