//! Loopback speed in wall time: bulk transfers over real UDP on 127.0.0.1.
//!
//! Four implementations, each against itself, back to back in one process run:
//!
//! - `ours`: `utp::net::UtpSocket` / `UtpStream` (tokio, batched GSO/GRO I/O), each end
//!   on its own thread with a current-thread runtime;
//! - `libutp`: the real C++ libutp on real sockets (`utp_conformance::libutp_udp`), each
//!   end a libutp thread plus one application thread; the sender's seed is pinned so
//!   its fast retransmit works (checklist L bug 1);
//! - `librqbit-utp`: the Rust crate users would pick instead (0.7.0), each end on its
//!   own thread with a current-thread runtime;
//! - `ceiling`: plain UDP, one datagram per system call, datagrams of our size (1400
//!   bytes carrying 1380 bytes of stream, as a uTP data packet does), with a window of
//!   datagrams acknowledged by the receiver so the kernel drops nothing.
//!
//! Cases: one stream of 8, 32 and 128 MiB (ramp-up matters), and 16 streams of 8 MiB on
//! one socket each side (the ceiling moves the same bytes as one flow). Reported, as
//! medians of the repetitions: goodput (MB/s, 10^6 bytes), CPU seconds per GiB of each
//! end (user + system, every thread of that end), the longest gap between two
//! deliveries to a receiving application (per stream), and the kernel's UDP receive
//! buffer drops (`/proc/net/snmp` `RcvbufErrors`) during the run. Repetitions are
//! interleaved (rep 1 of every implementation, then rep 2, ...), so drift hits all alike.
//!
//! ```text
//! cargo bench -p utp-benches --bench loopback                 # full run, ~1-2 minutes
//! cargo bench -p utp-benches --bench loopback -- --test       # tiny, once (CI)
//! cargo bench -p utp-benches --bench loopback -- --reps 3 --only ours,libutp --sizes 8,32
//! ```
//!
//! The table is printed and written to `target/loopback-bench.md`. Speed is never
//! asserted: a failed transfer is reported in the table (and fails the run only with
//! `--test`).

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use utp_conformance::libutp::SocketId;
use utp_conformance::libutp_udp::{seed_for_fast_retransmit, LibutpUdp, LibutpUdpConfig};

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// The longest a transfer may take before it counts as failed.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

/// UDP payload of the ceiling's datagrams: our `Config::max_packet_size`.
const DATAGRAM: usize = 1400;
/// Stream bytes a ceiling datagram stands for (a uTP data packet has a 20-byte header).
const DATAGRAM_STREAM_BYTES: usize = DATAGRAM - 20;
/// Datagrams the ceiling's sender may have unacknowledged.
const CEILING_WINDOW: u64 = 1024;
/// The ceiling's receiver acknowledges every this many datagrams.
const CEILING_ACK_EVERY: u64 = 32;

/// Bytes handed to a stream's `write` at a time.
const WRITE_CHUNK: usize = 256 << 10;
/// Bytes asked of a stream's `read` at a time.
const READ_CHUNK: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Ours,
    Libutp,
    Rqbit,
    Ceiling,
}

impl Impl {
    const ALL: [Impl; 4] = [Impl::Ours, Impl::Libutp, Impl::Rqbit, Impl::Ceiling];

    fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Libutp => "libutp",
            Impl::Rqbit => "librqbit-utp 0.7.0",
            Impl::Ceiling => "UDP ceiling",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Libutp => "libutp",
            Impl::Rqbit => "rqbit",
            Impl::Ceiling => "ceiling",
        }
    }
}

/// One transfer: `streams` streams of `per_stream` bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    streams: usize,
    per_stream: usize,
}

impl Case {
    fn total(&self) -> usize {
        self.streams * self.per_stream
    }

    fn label(&self) -> String {
        let size = |b: usize| {
            if b >= MIB {
                format!("{} MiB", b / MIB)
            } else {
                format!("{} KiB", b >> 10)
            }
        };
        if self.streams == 1 {
            size(self.per_stream)
        } else {
            format!("{} × {}", self.streams, size(self.per_stream))
        }
    }
}

/// What one run of one case measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    secs: f64,
    bytes: u64,
    cpu_send: f64,
    cpu_recv: f64,
    max_gap: Duration,
    drops: u64,
}

impl Sample {
    fn goodput_mb(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    fn cpu_per_gib(&self, cpu: f64) -> f64 {
        cpu / (self.bytes as f64 / GIB)
    }
}

/// What a receiving application saw of one stream.
#[derive(Clone, Copy, Debug)]
struct Received {
    bytes: u64,
    max_gap: Duration,
    last: Option<Instant>,
}

/// Tracks deliveries to one receiving stream.
struct Deliveries {
    bytes: u64,
    last: Option<Instant>,
    max_gap: Duration,
}

impl Deliveries {
    fn new() -> Deliveries {
        Deliveries {
            bytes: 0,
            last: None,
            max_gap: Duration::ZERO,
        }
    }

    fn delivered(&mut self, n: usize) {
        let now = Instant::now();
        if let Some(l) = self.last {
            self.max_gap = self.max_gap.max(now - l);
        }
        self.last = Some(now);
        self.bytes += n as u64;
    }

    fn done(&self) -> Received {
        Received {
            bytes: self.bytes,
            max_gap: self.max_gap,
            last: self.last,
        }
    }
}

/// Options from the command line.
#[derive(Clone, Debug)]
struct Options {
    test: bool,
    reps: usize,
    only: Vec<Impl>,
    cases: Vec<Case>,
}

fn parse_args() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let test = args.iter().any(|a| a == "--test");
    let mut o = Options {
        test,
        reps: if test { 1 } else { 5 },
        only: Impl::ALL.to_vec(),
        cases: if test {
            vec![
                Case {
                    streams: 1,
                    per_stream: MIB,
                },
                Case {
                    streams: 4,
                    per_stream: 256 << 10,
                },
            ]
        } else {
            vec![
                Case {
                    streams: 1,
                    per_stream: 8 * MIB,
                },
                Case {
                    streams: 1,
                    per_stream: 32 * MIB,
                },
                Case {
                    streams: 1,
                    per_stream: 128 * MIB,
                },
                Case {
                    streams: 16,
                    per_stream: 8 * MIB,
                },
            ]
        },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--reps" => {
                o.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?;
                o.reps = o.reps.max(1);
            }
            "--only" => {
                o.only = value()?
                    .split(',')
                    .map(|k| {
                        Impl::ALL
                            .into_iter()
                            .find(|i| i.key() == k)
                            .ok_or(format!("--only: unknown {k:?} (ours,libutp,rqbit,ceiling)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--sizes" => {
                // Single-stream sizes in MiB; the many-stream case stays.
                let many: Vec<Case> = o.cases.iter().filter(|c| c.streams > 1).copied().collect();
                o.cases = value()?
                    .split(',')
                    .map(|m| {
                        m.parse::<usize>()
                            .map(|m| Case {
                                streams: 1,
                                per_stream: m * MIB,
                            })
                            .map_err(|e| format!("--sizes: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                o.cases.extend(many);
            }
            "--streams" => {
                // NxMiB, e.g. 16x8; 0 drops the many-stream case.
                let v = value()?;
                o.cases.retain(|c| c.streams == 1);
                if v != "0" {
                    let (n, m) = v
                        .split_once('x')
                        .ok_or("--streams: want NxMiB, e.g. 16x8")?;
                    o.cases.push(Case {
                        streams: n.parse().map_err(|e| format!("--streams: {e}"))?,
                        per_stream: m.parse::<usize>().map_err(|e| format!("--streams: {e}"))?
                            * MIB,
                    });
                }
            }
            _ => {} // --bench, --test and whatever else cargo passes
        }
    }
    Ok(o)
}

fn main() {
    if !cfg!(target_os = "linux") {
        println!("loopback bench: Linux only (per-thread CPU time, /proc/net/snmp); skipped");
        return;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loopback bench: {e}");
            std::process::exit(2);
        }
    };
    let machine = machine();
    println!("loopback bench on {machine}");
    println!(
        "{} repetition(s), medians; implementations back to back in this process\n",
        opts.reps
    );
    // results[case][impl] = samples (or the first error)
    let mut results: Vec<Vec<Result<Vec<Sample>, String>>> = opts
        .cases
        .iter()
        .map(|_| opts.only.iter().map(|_| Ok(Vec::new())).collect())
        .collect();
    for rep in 0..opts.reps {
        for (ci, case) in opts.cases.iter().enumerate() {
            for (ii, &imp) in opts.only.iter().enumerate() {
                let slot = &mut results[ci][ii];
                if slot.is_err() {
                    continue;
                }
                let r = run(imp, *case);
                match r {
                    Ok(s) => {
                        eprintln!(
                            "rep {} {:>18} {:>12}: {:7.1} MB/s, CPU {:.2}+{:.2} s/GiB, gap {:.1} ms, drops {}",
                            rep + 1,
                            imp.name(),
                            case.label(),
                            s.goodput_mb(),
                            s.cpu_per_gib(s.cpu_send),
                            s.cpu_per_gib(s.cpu_recv),
                            s.max_gap.as_secs_f64() * 1e3,
                            s.drops
                        );
                        if let Ok(v) = slot {
                            v.push(s);
                        }
                    }
                    Err(e) => {
                        eprintln!(
                            "rep {} {} {}: FAILED: {e}",
                            rep + 1,
                            imp.name(),
                            case.label()
                        );
                        *slot = Err(e);
                    }
                }
            }
        }
    }
    let table = render(&opts, &results, &machine);
    println!("\n{table}");
    if opts.test {
        let failed = results.iter().flatten().any(|r| r.is_err());
        if failed {
            eprintln!("loopback bench: a transfer failed");
            std::process::exit(1);
        }
        return;
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir.join("loopback-bench.md");
    match std::fs::write(&path, &table) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one implementation's samples: goodput, CPU send, CPU recv, CPU total
/// (all per GiB), gap in ms, drops.
fn medians(samples: &[Sample]) -> [f64; 6] {
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    [
        m(&|s| s.goodput_mb()),
        m(&|s| s.cpu_per_gib(s.cpu_send)),
        m(&|s| s.cpu_per_gib(s.cpu_recv)),
        m(&|s| s.cpu_per_gib(s.cpu_send + s.cpu_recv)),
        m(&|s| s.max_gap.as_secs_f64() * 1e3),
        m(&|s| s.drops as f64),
    ]
}

fn render(opts: &Options, results: &[Vec<Result<Vec<Sample>, String>>], machine: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Loopback bulk transfer, 127.0.0.1, wall time. Machine: {machine}. Medians of {} \
         repetition(s), all implementations back to back in one process run \
         (`cargo bench -p utp-benches --bench loopback`).\n",
        opts.reps
    );
    let _ = writeln!(
        t,
        "| transfer | implementation | goodput MB/s | CPU s/GiB sender | CPU s/GiB receiver | CPU s/GiB both | longest delivery gap ms | kernel UDP drops |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|");
    let mut ratios = String::new();
    for (ci, case) in opts.cases.iter().enumerate() {
        let mut meds: Vec<(Impl, [f64; 6])> = Vec::new();
        for (ii, &imp) in opts.only.iter().enumerate() {
            let name = if imp == Impl::Ceiling && case.streams > 1 {
                format!("{} (one flow)", imp.name())
            } else {
                imp.name().to_string()
            };
            match &results[ci][ii] {
                Ok(samples) if !samples.is_empty() => {
                    let m = medians(samples);
                    let _ = writeln!(
                        t,
                        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |",
                        case.label(),
                        name,
                        m[0],
                        m[1],
                        m[2],
                        m[3],
                        m[4],
                        m[5]
                    );
                    meds.push((imp, m));
                }
                Ok(_) => {}
                Err(e) => {
                    let e = e.replace('|', "/");
                    let _ = writeln!(t, "| {} | {} | failed: {e} | | | | | |", case.label(), name);
                }
            }
        }
        let get = |i: Impl| meds.iter().find(|(x, _)| *x == i).map(|(_, m)| *m);
        if let Some(o) = get(Impl::Ours) {
            let mut parts = Vec::new();
            if let Some(l) = get(Impl::Libutp) {
                parts.push(format!(
                    "ours/libutp goodput {:.2}×, CPU per byte {:.2}×",
                    o[0] / l[0],
                    o[3] / l[3]
                ));
            }
            if let Some(c) = get(Impl::Ceiling) {
                parts.push(format!("ours/ceiling goodput {:.2}×", o[0] / c[0]));
            }
            if let Some(r) = get(Impl::Rqbit) {
                parts.push(format!("ours/librqbit-utp goodput {:.2}×", o[0] / r[0]));
            }
            if !parts.is_empty() {
                let _ = writeln!(ratios, "- {}: {}", case.label(), parts.join("; "));
            }
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(t, "\nRatios of medians:\n\n{ratios}");
    }
    let _ = writeln!(
        t,
        "\nGoodput: stream bytes / (last delivery − start of connect). CPU: user + system \
         time of every thread of that end (for libutp: its thread and the application \
         thread). Gap: the longest time between two deliveries to one receiving stream. \
         Drops: growth of `Udp: RcvbufErrors` in /proc/net/snmp during the transfer. \
         Ceiling: {DATAGRAM}-byte datagrams, one per system call, {CEILING_WINDOW}-datagram \
         window acknowledged every {CEILING_ACK_EVERY} datagrams, {DATAGRAM_STREAM_BYTES} \
         stream bytes counted per datagram."
    );
    t
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// `Udp: RcvbufErrors` from /proc/net/snmp.
fn rcvbuf_errors() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for a write; RUSAGE_THREAD is the calling thread (Linux).
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The sending application's bytes: a fixed megabyte written over and over.
fn source() -> Arc<Vec<u8>> {
    Arc::new((0..MIB).map(|i| (i * 31 + i / 251) as u8).collect())
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs one transfer of `imp` and measures it.
fn run(imp: Impl, case: Case) -> Result<Sample, String> {
    let drops0 = rcvbuf_errors();
    let mut s = match imp {
        Impl::Ours => async_pair::<Ours>(case),
        Impl::Rqbit => async_pair::<Rqbit>(case),
        Impl::Libutp => libutp_pair(case),
        Impl::Ceiling => ceiling(case.total()),
    }?;
    s.drops = rcvbuf_errors().saturating_sub(drops0);
    Ok(s)
}

/// Both ends' results, checked and combined into a sample.
fn sample(
    case: Case,
    start: Instant,
    received: &[Received],
    cpu_send: Duration,
    cpu_recv: Duration,
) -> Result<Sample, String> {
    let bytes: u64 = received.iter().map(|r| r.bytes).sum();
    if bytes != case.total() as u64 || received.len() != case.streams {
        return Err(format!(
            "received {bytes} bytes on {} streams, want {} on {}",
            received.len(),
            case.total(),
            case.streams
        ));
    }
    let last = received
        .iter()
        .filter_map(|r| r.last)
        .max()
        .ok_or("nothing delivered")?;
    Ok(Sample {
        secs: last
            .saturating_duration_since(start)
            .as_secs_f64()
            .max(1e-9),
        bytes,
        cpu_send: cpu_send.as_secs_f64(),
        cpu_recv: cpu_recv.as_secs_f64(),
        max_gap: received.iter().map(|r| r.max_gap).max().unwrap_or_default(),
        drops: 0,
    })
}

// ---------------------------------------------------------------------------------
// Async stacks (ours, librqbit-utp): each end on its own current-thread runtime.
// ---------------------------------------------------------------------------------

/// What the async bench needs of a uTP stack.
trait AsyncUtp: Sized + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn bind(addr: SocketAddr) -> io::Result<Self>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
    async fn connect(&self, to: SocketAddr) -> io::Result<Self::Stream>;
    async fn accept(&self) -> io::Result<Self::Stream>;
}

struct Ours(utp::net::UtpSocket);

impl AsyncUtp for Ours {
    type Stream = utp::net::UtpStream;
    async fn bind(addr: SocketAddr) -> io::Result<Self> {
        utp::net::UtpSocket::bind(addr).await.map(Ours)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
    async fn connect(&self, to: SocketAddr) -> io::Result<Self::Stream> {
        self.0.connect(to).await
    }
    async fn accept(&self) -> io::Result<Self::Stream> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

struct Rqbit(Arc<librqbit_utp::UtpSocketUdp>);

fn rqbit_err(e: librqbit_utp::Error) -> io::Error {
    io::Error::other(format!("librqbit-utp: {e}"))
}

impl AsyncUtp for Rqbit {
    type Stream = librqbit_utp::UtpStream;
    async fn bind(addr: SocketAddr) -> io::Result<Self> {
        librqbit_utp::UtpSocketUdp::new_udp(addr)
            .await
            .map(Rqbit)
            .map_err(rqbit_err)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.bind_addr())
    }
    async fn connect(&self, to: SocketAddr) -> io::Result<Self::Stream> {
        self.0.connect(to).await.map_err(rqbit_err)
    }
    async fn accept(&self) -> io::Result<Self::Stream> {
        self.0.accept().await.map_err(rqbit_err)
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> io::Result<Received> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut d = Deliveries::new();
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(d.done());
        }
        d.delivered(n);
    }
}

async fn fill<W: AsyncWrite + Unpin>(mut w: W, src: Arc<Vec<u8>>, len: usize) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(WRITE_CHUNK);
        let off = (len - left) % (src.len() - WRITE_CHUNK + 1);
        w.write_all(&src[off..off + n]).await?;
        left -= n;
    }
    w.shutdown().await
}

fn timed<T>(r: Result<io::Result<T>, tokio::time::error::Elapsed>) -> io::Result<T> {
    r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "transfer limit")))
}

fn async_pair<U: AsyncUtp>(case: Case) -> Result<Sample, String> {
    let (addr_tx, addr_rx) = mpsc::channel();
    let receiver = thread::spawn(move || -> io::Result<(Vec<Received>, Duration)> {
        let rt = runtime()?;
        let cpu0 = thread_cpu();
        let got = rt.block_on(async {
            let sock = U::bind(localhost()).await?;
            let _ = addr_tx.send(sock.local_addr()?);
            timed(
                tokio::time::timeout(TRANSFER_LIMIT, async {
                    let mut readers = Vec::new();
                    for _ in 0..case.streams {
                        let s = sock.accept().await?;
                        readers.push(tokio::spawn(drain(s)));
                    }
                    let mut got = Vec::new();
                    for r in readers {
                        got.push(r.await.map_err(io::Error::other)??);
                    }
                    Ok(got)
                })
                .await,
            )
        })?;
        let cpu = thread_cpu() - cpu0;
        drop(rt);
        Ok((got, cpu))
    });
    let to: SocketAddr = match addr_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(a) => a,
        Err(_) => return Err(receiver_failure(receiver)),
    };
    let sender = thread::spawn(move || -> io::Result<(Instant, Duration)> {
        let rt = runtime()?;
        let src = source();
        let sock = rt.block_on(U::bind(localhost()))?;
        let cpu0 = thread_cpu();
        let start = Instant::now();
        rt.block_on(async {
            timed(
                tokio::time::timeout(TRANSFER_LIMIT, async {
                    let mut writers = Vec::new();
                    for _ in 0..case.streams {
                        let s = sock.connect(to).await?;
                        writers.push(tokio::spawn(fill(s, src.clone(), case.per_stream)));
                    }
                    for w in writers {
                        w.await.map_err(io::Error::other)??;
                    }
                    Ok(())
                })
                .await,
            )
        })?;
        let cpu = thread_cpu() - cpu0;
        drop(sock);
        drop(rt);
        Ok((start, cpu))
    });
    let sent = sender.join().map_err(|_| "sender panicked".to_string())?;
    let got = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())?;
    let (start, cpu_send) = sent.map_err(|e| format!("sender: {e}"))?;
    let (received, cpu_recv) = got.map_err(|e| format!("receiver: {e}"))?;
    sample(case, start, &received, cpu_send, cpu_recv)
}

fn receiver_failure<T>(h: thread::JoinHandle<io::Result<T>>) -> String {
    match h.join() {
        Ok(Err(e)) => format!("receiver: {e}"),
        Ok(Ok(_)) => "receiver ended early".into(),
        Err(_) => "receiver panicked".into(),
    }
}

// ---------------------------------------------------------------------------------
// libutp: one libutp thread and one application thread per end.
// ---------------------------------------------------------------------------------

fn libutp_pair(case: Case) -> Result<Sample, String> {
    let rx = Arc::new(LibutpUdp::bind(localhost()).map_err(|e| format!("bind: {e}"))?);
    let config = LibutpUdpConfig {
        seed: Some(seed_for_fast_retransmit(1)),
        ..LibutpUdpConfig::default()
    };
    let tx = Arc::new(
        LibutpUdp::bind_with_config(localhost(), config).map_err(|e| format!("bind: {e}"))?,
    );
    let to = rx.local_addr();
    let receiver = {
        let rx = rx.clone();
        thread::spawn(move || -> io::Result<(Vec<Received>, Duration)> {
            let cpu0 = thread_cpu();
            let got = libutp_receive(&rx, case.streams)?;
            Ok((got, thread_cpu() - cpu0))
        })
    };
    let sender = {
        let tx = tx.clone();
        thread::spawn(move || -> io::Result<(Instant, Duration)> {
            let src = source();
            let cpu0 = thread_cpu();
            let start = Instant::now();
            libutp_send(&tx, to, case, &src)?;
            Ok((start, thread_cpu() - cpu0))
        })
    };
    let sent = sender.join().map_err(|_| "sender panicked".to_string())?;
    let got = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())?;
    let (start, app_send) = sent.map_err(|e| format!("sender: {e}"))?;
    let (received, app_recv) = got.map_err(|e| format!("receiver: {e}"))?;
    let cpu_send = app_send + tx.cpu_time();
    let cpu_recv = app_recv + rx.cpu_time();
    sample(case, start, &received, cpu_send, cpu_recv)
}

/// One application thread feeds every stream, waiting for news when all are full.
fn libutp_send(lib: &LibutpUdp, to: SocketAddr, case: Case, src: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + TRANSFER_LIMIT;
    let ids: Vec<SocketId> = (0..case.streams)
        .map(|_| lib.connect(to))
        .collect::<io::Result<_>>()?;
    let mut sent = vec![0usize; ids.len()];
    let mut closed = vec![false; ids.len()];
    loop {
        let seen = lib.generation();
        let mut progress = false;
        for (i, &id) in ids.iter().enumerate() {
            if closed[i] {
                continue;
            }
            let left = case.per_stream - sent[i];
            if left == 0 {
                lib.close(id)?;
                closed[i] = true;
                continue;
            }
            let off = sent[i] % (src.len() - WRITE_CHUNK + 1);
            let n = lib.try_write(id, &src[off..off + left.min(WRITE_CHUNK)])?;
            sent[i] += n;
            progress |= n > 0;
        }
        if closed.iter().all(|&c| c) {
            break;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "transfer limit"));
        }
        if !progress {
            lib.wait_change(seen, Duration::from_millis(100));
        }
    }
    // Done when every FIN was acknowledged (libutp then frees the socket).
    for &id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        lib.wait_for(id, left, |s| s.destroyed || s.error.is_some())?;
    }
    Ok(())
}

/// One application thread drains every stream, waiting for news when all are empty.
fn libutp_receive(lib: &LibutpUdp, streams: usize) -> io::Result<Vec<Received>> {
    let deadline = Instant::now() + TRANSFER_LIMIT;
    let mut ids: Vec<SocketId> = Vec::new();
    let mut deliveries: Vec<Deliveries> = Vec::new();
    let mut done: Vec<bool> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let seen = lib.generation();
        while let Some((id, _)) = lib.try_accept() {
            ids.push(id);
            deliveries.push(Deliveries::new());
            done.push(false);
        }
        let mut progress = false;
        for (i, &id) in ids.iter().enumerate() {
            if done[i] {
                continue;
            }
            match lib.try_read(id, &mut buf) {
                Ok(0) => {
                    done[i] = true;
                    lib.close(id)?;
                }
                Ok(n) => {
                    deliveries[i].delivered(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if ids.len() == streams && done.iter().all(|&d| d) {
            return Ok(deliveries.iter().map(Deliveries::done).collect());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "transfer limit"));
        }
        if !progress {
            lib.wait_change(seen, Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------
// The ceiling: plain UDP, one datagram per system call, windowed.
// ---------------------------------------------------------------------------------

/// `total` stream bytes in datagrams of [`DATAGRAM`] bytes ([`DATAGRAM_STREAM_BYTES`]
/// counted each) between two connected sockets. Each datagram starts with its number;
/// the receiver acknowledges the count received every [`CEILING_ACK_EVERY`] datagrams
/// and at the last one; the sender looks for acknowledgements every
/// [`CEILING_ACK_EVERY`] datagrams and keeps at most [`CEILING_WINDOW`] unacknowledged. A lost acknowledgement (or datagram)
/// stalls the sender for 50 ms, after which it carries on (drops are reported).
fn ceiling(total: usize) -> Result<Sample, String> {
    let count = total.div_ceil(DATAGRAM_STREAM_BYTES) as u64;
    let rx = udp_socket().map_err(|e| format!("bind: {e}"))?;
    let tx = udp_socket().map_err(|e| format!("bind: {e}"))?;
    // Connected sockets: the cheapest plain way, one datagram per call.
    rx.connect(tx.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    tx.connect(rx.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let receiver = thread::spawn(move || -> io::Result<(Received, Duration)> {
        let cpu0 = thread_cpu();
        rx.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = vec![0u8; 2048];
        let mut d = Deliveries::new();
        let mut got = 0u64;
        loop {
            let n = match rx.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if got > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            if n < 8 {
                continue;
            }
            got += 1;
            d.delivered(DATAGRAM_STREAM_BYTES);
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
            if got % CEILING_ACK_EVERY == 0 || seq + 1 == count {
                rx.send(&got.to_le_bytes())?;
            }
            if seq + 1 == count {
                break;
            }
        }
        let mut r = d.done();
        // Count what the datagrams stand for, capped at the stream length.
        r.bytes = (got * DATAGRAM_STREAM_BYTES as u64).min(total as u64);
        Ok((r, thread_cpu() - cpu0))
    });
    let sender = thread::spawn(move || -> io::Result<(Instant, Duration)> {
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let mut buf = vec![0u8; DATAGRAM];
        let mut acked = 0u64;
        let mut ack = [0u8; 16];
        for seq in 0..count {
            while seq - acked.min(seq) >= CEILING_WINDOW {
                tx.set_read_timeout(Some(Duration::from_millis(50)))?;
                match tx.recv(&mut ack) {
                    Ok(8) => {
                        acked =
                            acked.max(u64::from_le_bytes(ack[..8].try_into().unwrap_or_default()))
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        acked = seq; // lost: carry on
                    }
                    Err(e) => return Err(e),
                }
            }
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            tx.send(&buf)?;
            if (seq + 1) % CEILING_ACK_EVERY != 0 {
                continue;
            }
            // Take acknowledgements that are already there, without waiting.
            while let Ok(8) = recv_nowait(&tx, &mut ack) {
                acked = acked.max(u64::from_le_bytes(ack[..8].try_into().unwrap_or_default()));
            }
        }
        // The receiver's last acknowledgement ends the transfer (so the receiver never
        // sends to a closed socket).
        let until = Instant::now() + Duration::from_secs(1);
        tx.set_read_timeout(Some(Duration::from_millis(50)))?;
        while acked < count && Instant::now() < until {
            if let Ok(8) = tx.recv(&mut ack) {
                acked = acked.max(u64::from_le_bytes(ack[..8].try_into().unwrap_or_default()));
            }
        }
        Ok((start, thread_cpu() - cpu0))
    });
    let sent = sender.join().map_err(|_| "sender panicked".to_string())?;
    let got = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())?;
    let (start, cpu_send) = sent.map_err(|e| format!("sender: {e}"))?;
    let (received, cpu_recv) = got.map_err(|e| format!("receiver: {e}"))?;
    let case = Case {
        streams: 1,
        per_stream: total,
    };
    sample(case, start, &[received], cpu_send, cpu_recv)
}

fn udp_socket() -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(localhost())?;
    let sock = socket_buffers(&s);
    sock.map(|()| s)
}

/// Asks for 4 MiB kernel buffers, as the uTP stacks do.
fn socket_buffers(s: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: `s` is an open socket; the value is a c_int of the given length.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One `recv` that does not wait (`MSG_DONTWAIT`).
fn recv_nowait(s: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `s` is an open socket.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
