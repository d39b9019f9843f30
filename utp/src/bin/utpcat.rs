//! `utpcat`: move a file or a pipe over uTP, like netcat.
//!
//! ```text
//! utpcat listen [ADDR]        wait for one connection (default 0.0.0.0:6881)
//! utpcat connect HOST:PORT    connect to a listener
//! options: -i FILE  read from FILE instead of stdin
//!          -o FILE  write to FILE instead of stdout
//!          -q       no progress line
//! ```
//!
//! Both directions run at once: what comes in goes to the output, the input goes out;
//! at the end of the input our direction is shut down (FIN) and the tool exits when the
//! peer has finished too. Progress (bytes and throughput each way) goes to stderr, and
//! a summary of the connection statistics at the end.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use utp::net::{UtpSocket, UtpStream};

const USAGE: &str =
    "usage: utpcat listen [ADDR] | utpcat connect HOST:PORT  [-i FILE] [-o FILE] [-q]";

struct Args {
    listen: bool,
    addr: SocketAddr,
    input: Option<String>,
    output: Option<String>,
    quiet: bool,
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("bad address {s:?}: {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("bad address {s:?}: it resolves to nothing"))
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let mode = it.next().ok_or(USAGE)?;
    let mut positional = None;
    let (mut input, mut output, mut quiet) = (None, None, false);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-i" => input = Some(it.next().ok_or("-i needs a file name")?.clone()),
            "-o" => output = Some(it.next().ok_or("-o needs a file name")?.clone()),
            "-q" => quiet = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}; {USAGE}")),
            s if positional.is_none() => positional = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s:?}; {USAGE}")),
        }
    }
    let (listen, addr) = match mode.as_str() {
        "listen" => (
            true,
            resolve(positional.as_deref().unwrap_or("0.0.0.0:6881"))?,
        ),
        "connect" => (
            false,
            resolve(positional.as_deref().ok_or("connect needs HOST:PORT")?)?,
        ),
        other => return Err(format!("unknown mode {other:?}; {USAGE}")),
    };
    Ok(Args {
        listen,
        addr,
        input,
        output,
        quiet,
    })
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counter: Arc<AtomicU64>,
    shutdown: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    if shutdown {
        to.shutdown().await?;
    } else {
        to.flush().await?;
    }
    Ok(())
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

async fn run(args: Args) -> Result<(), String> {
    let (stream, peer): (UtpStream, SocketAddr) = if args.listen {
        let socket = UtpSocket::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        eprintln!(
            "utpcat: listening on {}",
            socket.local_addr().map_err(|e| e.to_string())?
        );
        socket
            .accept()
            .await
            .map_err(|e| format!("accept failed: {e}"))?
    } else {
        let local: SocketAddr = if args.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let socket = UtpSocket::bind(local)
            .await
            .map_err(|e| format!("cannot bind: {e}"))?;
        let stream = socket
            .connect(args.addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("connection to {} refused", args.addr)
                }
                std::io::ErrorKind::TimedOut => {
                    format!("connection to {} timed out (nobody answered)", args.addr)
                }
                _ => format!("cannot connect to {}: {e}", args.addr),
            })?;
        (stream, args.addr)
    };
    eprintln!("utpcat: connected to {peer}");
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (r, w) = stream.into_split();
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.input {
        Some(f) => Box::new(
            tokio::fs::File::open(f)
                .await
                .map_err(|e| format!("cannot open {f}: {e}"))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let output: Box<dyn AsyncWrite + Unpin + Send> = match &args.output {
        Some(f) => Box::new(
            tokio::fs::File::create(f)
                .await
                .map_err(|e| format!("cannot create {f}: {e}"))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let up = tokio::spawn(pump(input, w, sent.clone(), true));
    let counter = received.clone();
    let down = tokio::spawn(async move {
        let mut r = r;
        let result = pump(&mut r, output, counter, false).await;
        (result, r)
    });
    let start = Instant::now();
    if !args.quiet {
        let (s, rc) = (sent.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let t = start.elapsed().as_secs_f64().max(1e-3);
                let (s, r) = (
                    s.load(Ordering::Relaxed) as f64,
                    rc.load(Ordering::Relaxed) as f64,
                );
                eprint!(
                    "\r  sent {} ({}/s)   received {} ({}/s)      ",
                    human(s),
                    human(s / t),
                    human(r),
                    human(r / t)
                );
                let _ = std::io::stderr().flush();
            }
        });
    }
    let (down_result, read_half) = down.await.map_err(|e| e.to_string())?;
    // Both directions end on their own: ours at the end of the input (then a FIN),
    // the peer's at its FIN.
    let up_result = up.await.map_err(|e| e.to_string())?;
    let t = start.elapsed().as_secs_f64().max(1e-3);
    let (s, r) = (
        sent.load(Ordering::Relaxed) as f64,
        received.load(Ordering::Relaxed) as f64,
    );
    eprintln!();
    eprintln!(
        "utpcat: sent {} and received {} in {t:.2} s ({}/s, {}/s)",
        human(s),
        human(r),
        human(s / t),
        human(r / t)
    );
    let st = read_half.stats();
    eprintln!(
        "utpcat: {} packets sent, {} received; retransmits {} timeout / {} dup-ack / {} sack; \
         rtt {:.1} ms, rto {} ms, window {}, queuing delay {:.1} ms",
        st.packets_sent,
        st.packets_received,
        st.retransmits_timeout,
        st.retransmits_dup_ack,
        st.retransmits_sack,
        st.rtt.as_secs_f64() * 1e3,
        st.rto.as_millis(),
        human(st.congestion_window as f64),
        st.queuing_delay.as_secs_f64() * 1e3
    );
    down_result.map_err(|e| format!("receiving failed: {e}"))?;
    up_result.map_err(|e| format!("sending failed: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("utpcat: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("utpcat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("utpcat: {e}");
            ExitCode::FAILURE
        }
    }
}
