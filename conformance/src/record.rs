//! Traces recorded by the project itself: transfers between our core and libutp, and
//! between two libutp peers, in virtual time, written as pcap files.
//!
//! [`scenarios`] lists the recordings kept in `pcaps/` (each named in
//! `pcaps/MANIFEST.toml` with `generator = "record_traces"`); [`record`] runs one and
//! returns its datagrams; [`pcap_bytes`] turns them into a classic pcap file
//! (Ethernet, IPv4, UDP, microsecond timestamps from a fixed epoch), which `tshark -d
//! udp.port==6881,bt-utp` decodes. Every choice is seeded, so a scenario gives the same
//! bytes every time: `cargo run -p utp-conformance --example record_traces` rewrites
//! them.
//!
//! Datagrams are recorded when they are sent, before the network drops any: a lossy
//! recording shows each side's packets as sent, like a capture at both senders.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::PacketBuilder;
use utp::proto::{ConnectionHandle, StreamError};
use utp::{Config, Event, Instant};

use crate::libutp::{LibutpEvent, LibutpPeer, SocketId};
use crate::trace::{Capture, Datagram};
use crate::vnet::{splitmix64, Impairment, Net};

/// The capture time of virtual time zero: 2026-01-01 00:00:00 UTC, in Unix seconds.
pub const EPOCH_UNIX_SECS: u64 = 1_767_225_600;

/// Who takes part in a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Our protocol core with `Config::default()`.
    Ours,
    /// libutp (the reference C++ implementation).
    Libutp,
}

/// One recording: who sends the data to whom, and what the network does.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The file name in `pcaps/`.
    pub file: &'static str,
    /// The side that sends the data (the seeder).
    pub sender: Stack,
    /// The side that receives it.
    pub receiver: Stack,
    /// Whether the receiver opens the connection (and sends a small request first, as
    /// a BitTorrent downloader does) rather than the sender.
    pub receiver_connects: bool,
    /// Random loss in each direction.
    pub loss: f64,
    /// Seeds the network and both sides.
    pub seed: u64,
    /// Bytes of data.
    pub bytes: usize,
}

/// The size of the request a connecting receiver sends first.
pub const REQUEST: usize = 68;

/// The recordings kept in `pcaps/`: ours → libutp, libutp → ours and libutp → libutp,
/// each clean and with 3 % loss each way; 200 kB each.
pub fn scenarios() -> Vec<Scenario> {
    let s = |file, sender, receiver, receiver_connects, loss, seed| Scenario {
        file,
        sender,
        receiver,
        receiver_connects,
        loss,
        seed,
        bytes: 200_000,
    };
    use Stack::{Libutp, Ours};
    vec![
        s(
            "ours-seed_libutp-get_vnet.pcap",
            Ours,
            Libutp,
            false,
            0.0,
            1,
        ),
        s(
            "ours-seed_libutp-get_vnet-loss3.pcap",
            Ours,
            Libutp,
            false,
            0.03,
            2,
        ),
        s(
            "libutp-seed_ours-get_vnet.pcap",
            Libutp,
            Ours,
            false,
            0.0,
            3,
        ),
        s(
            "libutp-seed_ours-get_vnet-loss3.pcap",
            Libutp,
            Ours,
            false,
            0.03,
            4,
        ),
        s(
            "libutp-seed_libutp-get_vnet.pcap",
            Libutp,
            Libutp,
            true,
            0.0,
            5,
        ),
        s(
            "libutp-seed_libutp-get_vnet-loss3.pcap",
            Libutp,
            Libutp,
            true,
            0.03,
            6,
        ),
    ]
}

/// What a recording produced.
#[derive(Clone, Debug)]
pub struct Recording {
    /// Every datagram sent, in order, times from the start.
    pub capture: Capture,
    /// The data the sender sent.
    pub data: Vec<u8>,
    /// What the receiver's application read.
    pub received: Vec<u8>,
    /// How the connection ended on each side, in words (for the manifest's notes).
    pub ending: String,
}

/// The data of a recording: bytes that differ with their position.
pub fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// Runs a scenario. Fails if the data does not arrive intact within two minutes of
/// virtual time.
pub fn record(s: &Scenario) -> Result<Recording, String> {
    let rec = match (s.sender, s.receiver) {
        (Stack::Ours, Stack::Libutp) if !s.receiver_connects => ours_to_libutp(s),
        (Stack::Libutp, Stack::Ours) if !s.receiver_connects => libutp_to_ours(s),
        (Stack::Libutp, Stack::Libutp) => libutp_to_libutp(s),
        _ => return Err(format!("{}: no driver for {s:?}", s.file)),
    }?;
    if rec.received != rec.data {
        return Err(format!(
            "{}: the receiver read {} of {} bytes{}",
            s.file,
            rec.received.len(),
            rec.data.len(),
            if rec.received.len() == rec.data.len() {
                " (different bytes)"
            } else {
                ""
            }
        ));
    }
    Ok(rec)
}

const LIMIT: Duration = Duration::from_secs(120);

fn impaired(loss: f64) -> Impairment {
    Impairment {
        loss,
        ..Impairment::NONE
    }
}

/// Ours connects and sends, half-closes after the data and closes once libutp's FIN
/// arrives; libutp reads and closes on EOF.
fn ours_to_libutp(s: &Scenario) -> Result<Recording, String> {
    let mut net = Net::new(Config::default(), s.seed);
    net.to_libutp = impaired(s.loss);
    net.to_ours = impaired(s.loss);
    net.record();
    let data = pattern(s.bytes, s.seed as u8);
    let h = net
        .ours
        .connect(net.now, net.libutp_addr)
        .map_err(|e| format!("connect: {e}"))?;
    let mut ours = OurSide::new(h, data.clone());
    let mut lib: Option<SocketId> = None;
    let mut received = Vec::new();
    let end = net.now + LIMIT;
    while !(ours.ended(&net) && lib.is_some_and(|l| libutp_done(&net.libutp, l))) {
        if net.now > end {
            return Err(format!("{}: no end within {LIMIT:?}", s.file));
        }
        net.step();
        ours.pump(&mut net)?;
        if lib.is_none() {
            lib = first_accepted(&net.libutp_events);
        }
        if let Some(l) = lib {
            received.extend(net.libutp.read_all(net.now, l));
            let eof = net.libutp.stats(l).is_some_and(|st| st.eof);
            if eof && net.libutp.readable_bytes(l) == 0 {
                net.libutp.close(net.now, l);
            }
        }
    }
    let ending = format!(
        "ours: {}; libutp: {}",
        our_ending(&net, h),
        libutp_ending(&net.libutp, lib)
    );
    Ok(Recording {
        capture: net.capture(),
        data,
        received,
        ending,
    })
}

/// libutp connects and sends, then closes; ours reads and closes on EOF.
fn libutp_to_ours(s: &Scenario) -> Result<Recording, String> {
    let mut net = Net::new(Config::default(), s.seed);
    net.to_libutp = impaired(s.loss);
    net.to_ours = impaired(s.loss);
    net.record();
    let data = pattern(s.bytes, s.seed as u8);
    let sock = net.libutp.connect(net.now, net.ours_addr);
    let mut sent = 0;
    let mut closed = false;
    let mut ours: Option<OurSide> = None;
    let end = net.now + LIMIT;
    while !(ours.as_ref().is_some_and(|o| o.ended(&net)) && libutp_done(&net.libutp, sock)) {
        if net.now > end {
            return Err(format!("{}: no end within {LIMIT:?}", s.file));
        }
        net.step();
        while sent < data.len() {
            let n = net.libutp.write(net.now, sock, &data[sent..]);
            if n == 0 {
                break;
            }
            sent += n;
        }
        if sent == data.len() && !closed {
            closed = true;
            net.libutp.close(net.now, sock);
        }
        if ours.is_none() {
            ours = first_incoming(&net).map(|h| OurSide::new(h, Vec::new()));
        }
        if let Some(o) = ours.as_mut() {
            o.pump(&mut net)?;
        }
    }
    let ours = ours.expect("ended");
    let ending = format!(
        "libutp: {}; ours: {}",
        libutp_ending(&net.libutp, Some(sock)),
        our_ending(&net, ours.h)
    );
    Ok(Recording {
        capture: net.capture(),
        data,
        received: ours.received,
        ending,
    })
}

/// Our side of a transfer: writes its data, half-closes after it, reads everything, and
/// closes once the peer's FIN arrived.
struct OurSide {
    h: ConnectionHandle,
    data: Vec<u8>,
    sent: usize,
    shut: bool,
    closed: bool,
    received: Vec<u8>,
    eof: bool,
}

impl OurSide {
    fn new(h: ConnectionHandle, data: Vec<u8>) -> Self {
        OurSide {
            h,
            data,
            sent: 0,
            shut: false,
            closed: false,
            received: Vec::new(),
            eof: false,
        }
    }

    fn pump(&mut self, net: &mut Net) -> Result<(), String> {
        let now = net.now;
        let err = |e: StreamError| format!("our stream: {e:?}");
        while self.sent < self.data.len() {
            match net.ours.write(now, self.h, &self.data[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(StreamError::WouldBlock) => break,
                Err(e) => return Err(err(e)),
            }
        }
        let established = net
            .ours
            .connection(self.h)
            .is_some_and(|c| c.is_established());
        if !self.data.is_empty() && self.sent == self.data.len() && established && !self.shut {
            self.shut = true;
            net.ours.shutdown(now, self.h).map_err(err)?;
        }
        let mut buf = [0u8; 16_384];
        while !self.eof && !self.closed && net.our_close(self.h).is_none() {
            match net.ours.read(now, self.h, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(StreamError::WouldBlock) => break,
                Err(e) => return Err(err(e)),
            }
        }
        if self.eof
            && self.sent == self.data.len()
            && !self.closed
            && net.our_close(self.h).is_none()
        {
            self.closed = true;
            net.ours.close(now, self.h).map_err(err)?;
        }
        Ok(())
    }

    /// The connection is gone from our endpoint (closed and no longer lingering).
    fn ended(&self, net: &Net) -> bool {
        net.our_close(self.h).is_some() && net.ours.connection(self.h).is_none()
    }
}

fn first_accepted(events: &[(Instant, LibutpEvent)]) -> Option<SocketId> {
    events.iter().find_map(|(_, e)| match e {
        LibutpEvent::Accepted { socket, .. } => Some(*socket),
        _ => None,
    })
}

fn first_incoming(net: &Net) -> Option<ConnectionHandle> {
    net.our_events
        .iter()
        .find(|(_, _, e)| *e == Event::Incoming)
        .map(|(_, h, _)| *h)
}

fn libutp_done(peer: &LibutpPeer, s: SocketId) -> bool {
    peer.stats(s).is_some_and(|st| st.destroyed)
}

fn our_ending(net: &Net, h: ConnectionHandle) -> String {
    match net.our_close(h) {
        Some(None) => "clean close".into(),
        Some(Some(e)) => format!("closed with {e:?}"),
        None => "still open".into(),
    }
}

fn libutp_ending(peer: &LibutpPeer, s: Option<SocketId>) -> String {
    match s.and_then(|s| peer.stats(s)) {
        Some(st) => match st.error {
            Some(e) => format!("{e}"),
            None if st.destroyed => "closed".into(),
            None => "still open".into(),
        },
        None => "no socket".into(),
    }
}

/// Two libutp peers, joined by a wire with 10 ms latency and seeded loss. The receiver
/// (a downloader) connects and sends a request; the sender answers with the data and
/// closes; the receiver closes on EOF.
fn libutp_to_libutp(s: &Scenario) -> Result<Recording, String> {
    let seeder_addr: SocketAddr = "10.0.0.1:6881".parse().expect("address");
    let getter_addr: SocketAddr = "10.0.0.2:6882".parse().expect("address");
    let (r0, st) = splitmix64(s.seed);
    let (r1, st) = splitmix64(st);
    let mut peers = [
        LibutpPeer::new(seeder_addr, r0),
        LibutpPeer::new(getter_addr, r1),
    ];
    let addrs = [seeder_addr, getter_addr];
    let mut rng = st;
    let start = Instant::from_millis(2_000);
    let mut now = start;
    let latency = Duration::from_millis(10);
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut trace: Vec<Datagram> = Vec::new();
    let data = pattern(s.bytes, s.seed as u8);
    let request = pattern(REQUEST, 0xAA);
    let getter = peers[1].connect(now, seeder_addr);
    let mut seeder: Option<SocketId> = None;
    let (mut req_sent, mut sent, mut closed) = (0, 0, false);
    let mut got_request = Vec::new();
    let mut received = Vec::new();
    let mut getter_closed = false;
    let end = now + LIMIT;
    loop {
        let mut events = Vec::new();
        for p in peers.iter_mut() {
            while let Some(e) = p.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            if let LibutpEvent::Accepted { socket, .. } = e {
                seeder.get_or_insert(socket);
            }
        }
        // The applications.
        while req_sent < request.len() {
            let n = peers[1].write(now, getter, &request[req_sent..]);
            if n == 0 {
                break;
            }
            req_sent += n;
        }
        if let Some(sd) = seeder {
            got_request.extend(peers[0].read_all(now, sd));
            if got_request.len() >= REQUEST {
                while sent < data.len() {
                    let n = peers[0].write(now, sd, &data[sent..]);
                    if n == 0 {
                        break;
                    }
                    sent += n;
                }
                if sent == data.len() && !closed {
                    closed = true;
                    peers[0].close(now, sd);
                }
            }
        }
        received.extend(peers[1].read_all(now, getter));
        let eof = peers[1].stats(getter).is_some_and(|st| st.eof);
        if eof && !getter_closed {
            getter_closed = true;
            peers[1].close(now, getter);
        }
        // Move what both sent onto the wire (after the applications acted, so that
        // packets leave at the time libutp stamped them).
        for from in 0..2 {
            while let Some((to, d)) = peers[from].poll_transmit() {
                let dest = addrs
                    .iter()
                    .position(|a| *a == to)
                    .ok_or_else(|| format!("libutp sent to {to}"))?;
                trace.push(Datagram {
                    frame: trace.len() + 1,
                    time: now - start,
                    src: addrs[from],
                    dst: to,
                    payload: d.clone(),
                });
                let (v, next) = splitmix64(rng);
                rng = next;
                let lost = s.loss > 0.0 && ((v >> 11) as f64 / (1u64 << 53) as f64) < s.loss;
                if !lost {
                    order += 1;
                    wire.push(Reverse((now + latency, order, dest, d)));
                }
            }
        }
        let done =
            libutp_done(&peers[1], getter) && seeder.is_some_and(|sd| libutp_done(&peers[0], sd));
        if done && wire.is_empty() {
            break;
        }
        if now > end {
            return Err(format!(
                "{}: no end within {LIMIT:?} (seeder {:?}, getter {:?}, {} of {} bytes)",
                s.file,
                seeder.and_then(|sd| peers[0].stats(sd)),
                peers[1].stats(getter),
                received.len(),
                data.len()
            ));
        }
        // Advance to the next event and deliver.
        let next = [
            wire.peek().map(|Reverse((t, ..))| *t),
            Some(peers[0].poll_timeout(now)),
            Some(peers[1].poll_timeout(now)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        // A peer overdue for its tick reports `now`; never stand still.
        now = next.max(now + Duration::from_micros(1));
        while wire.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
            let Reverse((_, _, dest, d)) = wire.pop().expect("peeked");
            let from = addrs[1 - dest];
            peers[dest].handle_datagram(now, from, &d);
        }
        for p in peers.iter_mut() {
            p.handle_timeout(now);
        }
    }
    let ending = format!(
        "seeder: {}; getter: {}",
        libutp_ending(&peers[0], seeder),
        libutp_ending(&peers[1], Some(getter))
    );
    Ok(Recording {
        capture: Capture {
            format: "vnet",
            link_types: Vec::new(),
            datagrams: trace,
            skipped: 0,
            truncated: 0,
        },
        data,
        received,
        ending,
    })
}

/// A datagram on the wire between two libutp peers: delivery time, order sent, the
/// index of the receiving peer, the bytes.
type InFlight = (Instant, u64, usize, Vec<u8>);

/// A classic pcap file (little-endian, microsecond timestamps, Ethernet) holding
/// `datagrams` as UDP over IPv4 or IPv6; capture time = [`EPOCH_UNIX_SECS`] + each
/// datagram's time. MAC addresses are made from the IP addresses.
pub fn pcap_bytes(datagrams: &[Datagram]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        24 + datagrams
            .iter()
            .map(|d| 80 + d.payload.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for d in datagrams {
        let frame = frame(d.src, d.dst, &d.payload);
        let t = Duration::from_secs(EPOCH_UNIX_SECS) + d.time;
        out.extend_from_slice(&(t.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&t.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// An Ethernet frame carrying one UDP datagram.
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mac = |a: &SocketAddr| {
        let o = match a.ip() {
            IpAddr::V4(ip) => ip.octets()[3],
            IpAddr::V6(ip) => ip.octets()[15],
        };
        [0x02, 0, 0, 0, 0, o]
    };
    let eth = PacketBuilder::ethernet2(mac(&src), mac(&dst));
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(ip) => ip.octets(),
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            };
            eth.ipv6(v6(s), v6(d), 64)
        }
    };
    let udp = ip.udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(udp.size(payload.len()));
    udp.write(&mut out, payload)
        .expect("a UDP datagram of at most 65 507 bytes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_round_trips_through_the_reader() {
        let d = |i: usize, src: &str, dst: &str, us: u64, payload: &[u8]| Datagram {
            frame: i,
            time: Duration::from_micros(us),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload: payload.to_vec(),
        };
        let ds = vec![
            d(1, "10.0.0.1:6881", "10.0.0.2:6882", 0, b"one"),
            d(2, "10.0.0.2:6882", "10.0.0.1:6881", 1_500_007, b"two!"),
            d(
                3,
                "[2001:db8::1]:1",
                "[2001:db8::2]:2",
                3_000_000,
                &[0u8; 1400],
            ),
        ];
        let cap = crate::trace::parse(&pcap_bytes(&ds)).unwrap();
        assert_eq!(cap.format, "pcap");
        assert_eq!(cap.skipped, 0);
        let back: Vec<Datagram> = cap
            .datagrams
            .into_iter()
            .map(|mut x| {
                x.time -= Duration::from_secs(EPOCH_UNIX_SECS);
                x
            })
            .collect();
        assert_eq!(back, ds);
    }
}
