//! One transfer over real UDP on 127.0.0.1, on fixed ports, for a packet capture
//! (`pcaps/record-loopback.sh` runs it under `dumpcap` for every mode and writes
//! `pcaps/*_lo-udp*.pcapng`).
//!
//! ```text
//! cargo run --release -p utp-conformance --example record_loopback -- OUT_DIR MODE VARIANT
//! cargo run --release -p utp-conformance --example record_loopback -- --name MODE VARIANT
//! ```
//!
//! MODE is `ours-to-libutp`, `libutp-to-ours` or `libutp-to-libutp` (seeder to
//! getter); VARIANT is `clean` (straight over loopback) or `lossy` (through
//! `utp_sim::relay::Relay` on port 6893 in front of the acceptor, with 3 % random loss
//! each way). Ours is our tokio API (`utp::net`) with the default configuration; libutp
//! is the C++ reference on a socket of its own (`utp_conformance::libutp_udp`).
//!
//! Ports: 6891 and 6892. With our stack on one side, ours binds 6891 and libutp 6892;
//! libutp against itself, the seeder binds 6891 and the getter 6892. Who connects:
//!
//! - `ours-to-libutp`: ours connects, sends, half-closes, reads libutp's FIN and
//!   closes; libutp reads to the end and closes.
//! - `libutp-to-ours`: libutp connects, sends and closes; ours reads to the end and
//!   closes.
//! - `libutp-to-libutp`: the getter connects and sends a 68-byte request first (a
//!   libutp acceptor cannot write before the initiator's first DATA); the seeder
//!   answers with the data and closes; the getter closes on EOF.
//!
//! The data (a position-dependent pattern, 300 000 bytes clean and 150 000 through
//! loss, so that a capture of both relay legs stays small) is checked byte for byte.
//! The exit status is non-zero when the data did not arrive intact, a side failed
//! other than as libutp is known to (checklist L5: a libutp seeder that closed never
//! acknowledges the getter's FIN, and the getter ends with a reset), or the transfer
//! took longer than a minute. `OUT_DIR` receives `<name>.run.txt`: what happened, in
//! words. `--name` prints the capture's file name stem and exits.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::net::UtpSocket;
use utp::Config;
use utp_conformance::libutp::LibutpError;
use utp_conformance::libutp_udp::{
    seed_for_fast_retransmit, ConnStatus, LibutpUdp, LibutpUdpConfig,
};
use utp_conformance::record::{pattern, REQUEST};
use utp_sim::relay::{Direction, Impairment, Relay, RelayStats};

/// The lower port: ours, or the libutp seeder.
const PORT_A: u16 = 6891;
/// The upper port: libutp, or the libutp getter.
const PORT_B: u16 = 6892;
/// The relay's front, in the lossy variant.
const PORT_RELAY: u16 = 6893;

/// Loss in each direction through the relay.
const LOSS: f64 = 0.03;
/// The relay's seed (which datagram meets which draw still depends on timing).
const RELAY_SEED: u64 = 29;

/// Our connection ids and initial sequence numbers come from this.
const OUR_SEED: [u8; 32] = [29; 32];

/// The whole transfer, close included.
const LIMIT: Duration = Duration::from_secs(60);
/// Timeout of one blocking libutp call.
const T: Duration = Duration::from_secs(55);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    OursToLibutp,
    LibutpToOurs,
    LibutpToLibutp,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "ours-to-libutp" => Some(Mode::OursToLibutp),
            "libutp-to-ours" => Some(Mode::LibutpToOurs),
            "libutp-to-libutp" => Some(Mode::LibutpToLibutp),
            _ => None,
        }
    }

    /// (seeder, getter) as named in capture files.
    fn sides(self) -> (&'static str, &'static str) {
        match self {
            Mode::OursToLibutp => ("ours", "libutp"),
            Mode::LibutpToOurs => ("libutp", "ours"),
            Mode::LibutpToLibutp => ("libutp", "libutp"),
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn file_stem(mode: Mode, lossy: bool) -> String {
    let (seeder, getter) = mode.sides();
    let loss = if lossy { "-loss3" } else { "" };
    format!("{seeder}-seed_{getter}-get_lo-udp{loss}")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: record_loopback OUT_DIR|--name \
         ours-to-libutp|libutp-to-ours|libutp-to-libutp clean|lossy"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, mode, variant] = args.as_slice() else {
        return usage();
    };
    let Some(mode) = Mode::parse(mode) else {
        return usage();
    };
    let lossy = match variant.as_str() {
        "clean" => false,
        "lossy" => true,
        _ => return usage(),
    };
    let stem = file_stem(mode, lossy);
    if out == "--name" {
        println!("{stem}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = if lossy { 150_000 } else { 300_000 };
    let result = runtime.block_on(async {
        match tokio::time::timeout(LIMIT, run(mode, lossy, bytes)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no end within {LIMIT:?}")),
        }
    });
    match result {
        Ok(outcome) => {
            let text = format!("{stem}: {outcome}\n");
            print!("{text}");
            let path = PathBuf::from(out).join(format!("{stem}.run.txt"));
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{stem}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A libutp side with a pinned seed (fast retransmit works for its first outgoing
/// connection, checklist L bug 1).
fn libutp(port: u16, seed: u64) -> Result<Arc<LibutpUdp>, String> {
    let config = LibutpUdpConfig {
        seed: Some(seed_for_fast_retransmit(seed)),
        ..LibutpUdpConfig::default()
    };
    LibutpUdp::bind_with_config(localhost(port), config)
        .map(Arc::new)
        .map_err(|e| format!("libutp on port {port}: {e}"))
}

/// Our side on `port` with the default configuration, moving one datagram per system
/// call: with segmentation offload (what `UtpSocket::bind` uses) a capture on `lo` sees
/// each train of datagrams as one oversized UDP datagram, segmented only on delivery.
fn ours(port: u16) -> Result<UtpSocket, String> {
    let err = |e: io::Error| format!("ours on port {port}: {e}");
    let socket = std::net::UdpSocket::bind(localhost(port)).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    let s = socket2::SockRef::from(&socket);
    // Best effort, as `UtpSocket::bind` does: the kernel caps it at {r,w}mem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    let socket = tokio::net::UdpSocket::from_std(socket).map_err(err)?;
    UtpSocket::with_socket(socket, Config::default(), OUR_SEED).map_err(err)
}

/// The relay on [`PORT_RELAY`] in front of `server` (lossy variant), and the address the
/// initiator connects to.
fn path_to(server: SocketAddr, lossy: bool) -> Result<(Option<Relay>, SocketAddr), String> {
    if !lossy {
        return Ok((None, server));
    }
    let imp = Impairment::symmetric(Direction::lossy(LOSS), RELAY_SEED);
    let relay = Relay::spawn_on(localhost(PORT_RELAY), server, imp)
        .map_err(|e| format!("relay on port {PORT_RELAY}: {e}"))?;
    let addr = relay.addr();
    Ok((Some(relay), addr))
}

fn relay_words(relay: &Option<Relay>) -> String {
    match relay {
        None => "direct".into(),
        Some(r) => {
            let RelayStats {
                to_server,
                to_client,
            } = r.stats();
            format!(
                "relay dropped {} of {} to the acceptor and {} of {} to the initiator",
                to_server.dropped + to_server.overflow,
                to_server.received,
                to_client.dropped + to_client.overflow,
                to_client.received
            )
        }
    }
}

/// Runs a blocking libutp closure on the blocking pool.
async fn blocking<T: Send + 'static>(
    lib: &Arc<LibutpUdp>,
    f: impl FnOnce(&LibutpUdp) -> io::Result<T> + Send + 'static,
) -> Result<T, String> {
    let lib = lib.clone();
    match tokio::task::spawn_blocking(move || f(&lib)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("libutp: {e}")),
        Err(e) => Err(format!("libutp side panicked: {e}")),
    }
}

fn same(got: &[u8], want: &[u8], who: &str) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    Err(format!(
        "{who} received {} bytes, want {}; first difference at {first:?}",
        got.len(),
        want.len()
    ))
}

fn libutp_ending(st: &ConnStatus) -> String {
    match st.error {
        Some(e) => format!("ended with {e}"),
        None if st.destroyed => "closed cleanly".into(),
        None => "still open".into(),
    }
}

/// Waits (bounded) until our socket holds no connection, lingering ones included, so
/// that the last packets are on the wire before the process ends.
async fn ours_idle(ours: &UtpSocket) -> String {
    for _ in 0..400 {
        if ours.connection_count() == 0 {
            return "gone".into();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    format!("{} still lingering after 20 s", ours.connection_count())
}

async fn run(mode: Mode, lossy: bool, bytes: usize) -> Result<String, String> {
    let data = pattern(bytes, 0x5A);
    let what = match mode {
        Mode::OursToLibutp => ours_to_libutp(lossy, data).await?,
        Mode::LibutpToOurs => libutp_to_ours(lossy, data).await?,
        Mode::LibutpToLibutp => libutp_to_libutp(lossy, data).await?,
    };
    // Let the last datagrams reach the capture before the sockets close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(format!("{bytes} bytes intact; {what}"))
}

/// Ours (6891) connects to libutp (6892), sends, half-closes and closes after
/// libutp's FIN; libutp reads to the end and closes.
async fn ours_to_libutp(lossy: bool, data: Vec<u8>) -> Result<String, String> {
    let lib = libutp(PORT_B, 1)?;
    let ours = ours(PORT_A)?;
    let (relay, target) = path_to(lib.local_addr(), lossy)?;
    let receiver = tokio::spawn({
        let lib = lib.clone();
        async move {
            blocking(&lib, |lib| {
                let (id, _) = lib.accept(T)?;
                let got = lib.read_to_end(id, T)?;
                lib.close(id)?;
                let st = lib.wait_for(id, T, |s| s.destroyed || s.error.is_some())?;
                Ok((got, st))
            })
            .await
        }
    });
    let mut s = ours
        .connect(target)
        .await
        .map_err(|e| format!("our connect: {e}"))?;
    s.write_all(&data)
        .await
        .map_err(|e| format!("our write: {e}"))?;
    s.shutdown()
        .await
        .map_err(|e| format!("our shutdown: {e}"))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .await
        .map_err(|e| format!("our read of libutp's FIN: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("libutp sent {} bytes", rest.len()));
    }
    s.close().await.map_err(|e| format!("our close: {e}"))?;
    drop(s);
    let (got, st) = receiver
        .await
        .map_err(|e| format!("receiver task: {e}"))??;
    same(&got, &data, "libutp")?;
    if st.error.is_some() || !st.eof {
        return Err(format!("libutp receiver: {st:?}"));
    }
    let idle = ours_idle(&ours).await;
    Ok(format!(
        "ours: clean close, connection {idle}; libutp: {}; {}",
        libutp_ending(&st),
        relay_words(&relay)
    ))
}

/// libutp (6892) connects to ours (6891), sends and closes; ours reads to the end and
/// closes.
async fn libutp_to_ours(lossy: bool, data: Vec<u8>) -> Result<String, String> {
    let lib = libutp(PORT_B, 2)?;
    let ours = ours(PORT_A)?;
    let (relay, target) = path_to(ours.local_addr().map_err(|e| e.to_string())?, lossy)?;
    let sent = data.clone();
    let sender = tokio::spawn({
        let lib = lib.clone();
        async move {
            blocking(&lib, move |lib| {
                let id = lib.connect(target)?;
                lib.wait_connected(id, T)?;
                lib.write_all(id, &sent, T)?;
                lib.close(id)?;
                lib.wait_for(id, T, |s| s.destroyed || s.error.is_some())
            })
            .await
        }
    });
    let (mut s, _) = ours
        .accept()
        .await
        .map_err(|e| format!("our accept: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .await
        .map_err(|e| format!("our read: {e}"))?;
    same(&got, &data, "ours")?;
    let ours_end = match s.close().await {
        Ok(()) => "clean close".to_string(),
        Err(e) => format!("close ended with {e}"),
    };
    drop(s);
    let st = sender.await.map_err(|e| format!("sender task: {e}"))??;
    if st.error.is_some() || st.bytes_written != data.len() as u64 {
        return Err(format!("libutp sender: {st:?}"));
    }
    let idle = ours_idle(&ours).await;
    Ok(format!(
        "libutp: {}; ours: {ours_end}, connection {idle}; {}",
        libutp_ending(&st),
        relay_words(&relay)
    ))
}

/// The libutp getter (6892) connects to the libutp seeder (6891) and sends a request;
/// the seeder answers with the data and closes; the getter closes on EOF.
async fn libutp_to_libutp(lossy: bool, data: Vec<u8>) -> Result<String, String> {
    let seeder = libutp(PORT_A, 3)?;
    let getter = libutp(PORT_B, 4)?;
    let (relay, target) = path_to(seeder.local_addr(), lossy)?;
    let sent = data.clone();
    let seeding = tokio::spawn({
        let seeder = seeder.clone();
        async move {
            blocking(&seeder, move |lib| {
                let (id, _) = lib.accept(T)?;
                let mut req = vec![0u8; REQUEST];
                let mut n = 0;
                while n < REQUEST {
                    match lib.read(id, &mut req[n..], T)? {
                        0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        k => n += k,
                    }
                }
                if req != pattern(REQUEST, 0xAA) {
                    return Err(io::Error::other("the request differs"));
                }
                lib.write_all(id, &sent, T)?;
                lib.close(id)?;
                lib.wait_for(id, T, |s| s.destroyed || s.error.is_some())
            })
            .await
        }
    });
    let getting = blocking(&getter, move |lib| {
        let id = lib.connect(target)?;
        lib.wait_connected(id, T)?;
        lib.write_all(id, &pattern(REQUEST, 0xAA), T)?;
        let got = lib.read_to_end(id, T)?;
        lib.close(id)?;
        let st = lib.wait_for(id, T, |s| s.destroyed || s.error.is_some())?;
        Ok((got, st))
    });
    let (got, getter_st) = getting.await?;
    same(&got, &data, "the libutp getter")?;
    let seeder_st = seeding.await.map_err(|e| format!("seeder task: {e}"))??;
    if seeder_st.error.is_some() {
        return Err(format!("libutp seeder: {seeder_st:?}"));
    }
    // Checklist L5: the seeder, closed, never acknowledges the getter's FIN; the getter
    // gives up with a reset. A clean end is fine too; anything else is not.
    if !matches!(getter_st.error, None | Some(LibutpError::Reset)) {
        return Err(format!("libutp getter: {getter_st:?}"));
    }
    Ok(format!(
        "seeder: {}; getter: {}; {}",
        libutp_ending(&seeder_st),
        libutp_ending(&getter_st),
        relay_words(&relay)
    ))
}
