//! Checklist items that no other test covered, checked through the public API of
//! [`utp::Endpoint`]: a scripted peer crafts packets with [`utp::wire`], and a small
//! in-memory pair joins two endpoints. Each test names its items in a `Covers:` line
//! (see `conformance/bep29-items.toml`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use utp::proto::{ConnectionHandle, Event};
use utp::wire::{encode, Extension, Header, Micros, Packet, PacketType, SeqNr};
use utp::{Config, Endpoint, Instant};

/// A packet our endpoint sent, owned.
#[derive(Clone, Debug)]
struct Out {
    to: SocketAddr,
    h: Header,
    first_extension: u8,
}

/// Our endpoint and any number of scripted peers.
struct Script {
    ep: Endpoint,
    now: Instant,
    events: Vec<(ConnectionHandle, Event)>,
    clock: u32,
}

impl Script {
    fn new(config: Config) -> Script {
        Script {
            ep: Endpoint::new(config, [3; 32]).expect("valid configuration"),
            now: Instant::from_millis(7_000),
            events: Vec::new(),
            clock: 1_000_000,
        }
    }

    fn header(&mut self, ty: PacketType, conn_id: u16, seq: u16, ack: u16) -> Header {
        self.clock = self.clock.wrapping_add(1000);
        Header {
            ty,
            conn_id,
            timestamp: Micros(self.clock),
            timestamp_diff: Micros(0),
            wnd_size: 1 << 20,
            seq_nr: SeqNr(seq),
            ack_nr: SeqNr(ack),
        }
    }

    fn recv(&mut self, from: &str, h: Header, exts: &[Extension<'_>], payload: &[u8]) {
        let mut buf = [0u8; 2048];
        let n = encode(&h, exts, payload, &mut buf).expect("fits");
        let from: SocketAddr = from.parse().expect("address");
        self.ep.handle_datagram(self.now, from, &buf[..n]);
        self.collect();
    }

    fn sent(&mut self) -> Vec<Out> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while let Some(t) = self.ep.poll_transmit(self.now, &mut buf) {
            let p = Packet::decode(&buf[..t.len]).expect("we send valid packets");
            out.push(Out {
                to: t.destination,
                h: p.header,
                first_extension: buf[1],
            });
        }
        self.collect();
        out
    }

    fn collect(&mut self) {
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs timers for `d`; returns what was sent, with the time since the start.
    fn advance(&mut self, d: Duration) -> Vec<(Instant, Out)> {
        let end = self.now + d;
        let mut all = Vec::new();
        loop {
            for o in self.sent() {
                all.push((self.now, o));
            }
            match self.ep.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.ep.handle_timeout(self.now);
                    self.collect();
                }
                _ => break,
            }
        }
        self.now = end;
        all
    }

    fn incoming(&self) -> Vec<ConnectionHandle> {
        self.events
            .iter()
            .filter(|(_, e)| *e == Event::Incoming)
            .map(|(h, _)| *h)
            .collect()
    }

    fn read_all(&mut self, h: ConnectionHandle) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.ep.read(self.now, h, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Our endpoint connects to `peer`, which answers the SYN at once with seq_nr
    /// `peer_seq`. Returns the handle, our recv id and our SYN's seq_nr.
    fn connect(&mut self, peer: &str, peer_seq: u16) -> (ConnectionHandle, u16, u16) {
        let h = self
            .ep
            .connect(self.now, peer.parse().expect("address"))
            .expect("connect");
        let syn = self.sent();
        assert_eq!(syn.len(), 1);
        let (id, isn) = (syn[0].h.conn_id, syn[0].h.seq_nr.0);
        let ack = self.header(PacketType::State, id, peer_seq, isn);
        self.recv(peer, ack, &[], &[]);
        assert!(self.events.contains(&(h, Event::Connected)));
        self.sent();
        (h, id, isn)
    }
}

/// Two of our endpoints joined by a 5 ms wire, delivering in order.
fn transfer(config: Config, len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let a_addr: SocketAddr = "10.1.0.1:1000".parse().unwrap();
    let b_addr: SocketAddr = "10.1.0.2:2000".parse().unwrap();
    let mut a = Endpoint::new(config.clone(), [1; 32]).unwrap();
    let mut b = Endpoint::new(config, [2; 32]).unwrap();
    let mut now = Instant::from_millis(1_000);
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 97) as u8).collect();
    let ha = a.connect(now, b_addr).unwrap();
    let mut written = a.write(now, ha, &data).unwrap();
    let mut hb = None;
    let mut got = Vec::new();
    let mut wire: VecDeque<(Instant, bool, Vec<u8>)> = VecDeque::new();
    let mut datagrams = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let latency = Duration::from_millis(5);
    let end = now + Duration::from_secs(120);
    while got.len() < len {
        assert!(now < end, "stalled at {} of {len} bytes", got.len());
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            datagrams.push(buf[..t.len].to_vec());
            wire.push_back((now + latency, true, buf[..t.len].to_vec()));
        }
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            datagrams.push(buf[..t.len].to_vec());
            wire.push_back((now + latency, false, buf[..t.len].to_vec()));
        }
        while let Some((h, e)) = b.poll_event() {
            if e == Event::Incoming {
                hb = Some(h);
            }
        }
        while a.poll_event().is_some() {}
        if let Some(h) = hb {
            while let Ok(n) = b.read(now, h, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        if written < len {
            written += a.write(now, ha, &data[written..]).unwrap_or(0);
        }
        let next = [
            wire.front().map(|(t, _, _)| *t),
            a.poll_timeout(),
            b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { continue };
        now = now.max(next);
        while wire.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, to_b, d) = wire.pop_front().unwrap();
            if to_b {
                b.handle_datagram(now, a_addr, &d);
            } else {
                a.handle_datagram(now, b_addr, &d);
            }
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert!(got == data, "the data arrived intact");
    (got, datagrams)
}

/// Packets as small as 150 bytes (the BEP's smallest packet size) carry a whole
/// transfer, and every DATA packet carries payload. The largest packet size is chosen
/// by configuration (`Config::max_packet_size`); shrinking by rate is
/// `Config::adaptive_packet_size` (see `utp`'s `adaptive_packet_size_follows_the_window`
/// and the simulator's `packet_size_adapts_to_the_rate_in_the_bep_text_profile`).
/// Covers: C19
#[test]
fn packets_of_150_bytes_carry_a_transfer() {
    let mut config = Config::default();
    config.max_packet_size = 150;
    let (_, datagrams) = transfer(config, 30_000);
    let mut data_packets = 0;
    for d in &datagrams {
        assert!(d.len() <= 150, "a datagram of {} bytes", d.len());
        let p = Packet::decode(d).unwrap();
        if p.header.ty == PacketType::Data {
            data_packets += 1;
            assert!(!p.payload.is_empty(), "C19: DATA without payload");
        } else if p.header.ty == PacketType::State {
            assert!(p.payload.is_empty(), "C20: STATE with payload");
        }
    }
    assert!(data_packets >= 30_000 / 130, "{data_packets} DATA packets");
    // And the default size for comparison: full 1400-byte packets.
    let (_, datagrams) = transfer(Config::default(), 30_000);
    assert_eq!(datagrams.iter().map(Vec::len).max(), Some(1400));
}

/// Two initiators at different addresses that pick the same connection id get two
/// separate connections: the key is (address, id).
/// Covers: D31
#[test]
fn same_connection_id_from_two_addresses_is_two_connections() {
    let mut s = Script::new(Config::default());
    let (p1, p2) = ("192.0.2.1:5000", "192.0.2.2:5000");
    let syn1 = s.header(PacketType::Syn, 777, 100, 0);
    s.recv(p1, syn1, &[], &[]);
    let syn2 = s.header(PacketType::Syn, 777, 9000, 0);
    s.recv(p2, syn2, &[], &[]);
    let answers = s.sent();
    assert_eq!(answers.len(), 2, "both SYNs answered: {answers:?}");
    let to = |a: &str| answers.iter().find(|o| o.to == a.parse().unwrap()).unwrap();
    let (a1, a2) = (to(p1).h, to(p2).h);
    assert_eq!((a1.conn_id, a1.ack_nr.0), (777, 100));
    assert_eq!((a2.conn_id, a2.ack_nr.0), (777, 9000));
    let d1 = s.header(PacketType::Data, 778, 101, a1.seq_nr.0.wrapping_sub(1));
    s.recv(p1, d1, &[], b"from one");
    let d2 = s.header(PacketType::Data, 778, 9001, a2.seq_nr.0.wrapping_sub(1));
    s.recv(p2, d2, &[], b"from two");
    let handles = s.incoming();
    assert_eq!(handles.len(), 2);
    assert_eq!(s.ep.connection_count(), 2);
    let mut got: Vec<(SocketAddr, Vec<u8>)> = handles
        .iter()
        .map(|&h| (s.ep.remote(h).unwrap(), s.read_all(h)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (p1.parse().unwrap(), b"from one".to_vec()),
            (p2.parse().unwrap(), b"from two".to_vec()),
        ]
    );
}

/// A peer that follows the BEP text and starts its sequence numbers at 1 is served like
/// one with a random start (deployed practice, X2); so is one at the top of the space.
/// Covers: X2, D26, D27
#[test]
fn initiator_starting_at_seq_1_or_0xffff_is_accepted() {
    for start in [1u16, 0xFFFF] {
        let mut s = Script::new(Config::default());
        let peer = "192.0.2.7:6881";
        let syn = s.header(PacketType::Syn, 40, start, 0);
        s.recv(peer, syn, &[], &[]);
        let answer = s.sent();
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0].h.ack_nr, SeqNr(start), "D27: ack_nr = SYN seq_nr");
        let ours = answer[0].h.seq_nr.0;
        for (i, part) in [&b"ab"[..], b"cd", b"ef"].iter().enumerate() {
            let seq = start.wrapping_add(1 + i as u16);
            let d = s.header(PacketType::Data, 41, seq, ours.wrapping_sub(1));
            s.recv(peer, d, &[], part);
        }
        let h = s.incoming()[0];
        assert_eq!(s.read_all(h), b"abcdef");
        let acks = s.advance(Duration::from_millis(100));
        assert_eq!(
            acks.last().unwrap().1.h.ack_nr,
            SeqNr(start.wrapping_add(3)),
            "start {start}"
        );
    }
}

/// libtorrent tolerates a FIN that carries payload and a repeated FIN; so does ours: the
/// payload is delivered before EOF, and a repeated FIN is acknowledged again.
/// Covers: X3, C21
#[test]
fn fin_with_payload_and_a_repeated_fin_are_tolerated() {
    let mut s = Script::new(Config::default());
    let peer = "192.0.2.8:6881";
    let syn = s.header(PacketType::Syn, 10, 500, 0);
    s.recv(peer, syn, &[], &[]);
    let ours = s.sent()[0].h.seq_nr.0;
    let d = s.header(PacketType::Data, 11, 501, ours.wrapping_sub(1));
    s.recv(peer, d, &[], b"data ");
    let fin = s.header(PacketType::Fin, 11, 502, ours.wrapping_sub(1));
    s.recv(peer, fin, &[], b"and a FIN payload");
    let h = s.incoming()[0];
    assert!(s.events.contains(&(h, Event::Finished)));
    assert_eq!(s.read_all(h), b"data and a FIN payload");
    let acks = s.advance(Duration::from_millis(100));
    assert_eq!(
        acks.last().unwrap().1.h.ack_nr,
        SeqNr(502),
        "the FIN is acked"
    );
    s.recv(peer, fin, &[], b"and a FIN payload");
    let again = s.sent();
    assert_eq!(again.len(), 1, "a repeated FIN is acked again");
    assert_eq!(again[0].h.ack_nr, SeqNr(502));
    assert!(s.read_all(h).is_empty(), "delivered once");
}

/// The minimum retransmission timeout is a configuration choice: 500 ms by default
/// (BEP 29, libtorrent), 1000 ms in the libutp profile. Both schedules, for a packet
/// that is never acknowledged on a path with a near-zero RTT.
/// Covers: X4, G44, G48
#[test]
fn minimum_rto_follows_the_profile() {
    for (config, want) in [
        (Config::default(), vec![0, 500, 1500, 3500]),
        (Config::libtorrent(), vec![0, 500, 1500, 3500]),
        (Config::libutp(), vec![0, 1000, 3000, 7000]),
    ] {
        let mut config = config;
        config.max_retransmits = 3;
        // The retransmission timer alone: no tail loss probe before it.
        config.tail_loss_probe = false;
        let mut s = Script::new(config);
        let (h, _, _) = s.connect("192.0.2.9:4000", 300);
        let start = s.now;
        s.ep.write(start, h, b"never acked").unwrap();
        let times: Vec<u64> = s
            .advance(Duration::from_secs(30))
            .iter()
            .filter(|(_, o)| o.h.ty == PacketType::Data)
            .map(|(t, _)| (*t - start).as_millis() as u64)
            .collect();
        assert_eq!(times, want);
    }
}

/// Extensions seen in the field are accepted: libutp's extension 2 (8 bytes of
/// extension bits) on a SYN, and libtorrent's close reason (extension 3) put first on a
/// FIN. Ours sends the selective ACK as its first (and only) extension, which libutp
/// requires.
/// Covers: X9, B13, A5
#[test]
fn field_extensions_are_accepted_and_sack_goes_first() {
    let mut s = Script::new(Config::default());
    let peer = "192.0.2.10:6881";
    let bits = [0u8; 8];
    let syn = s.header(PacketType::Syn, 60, 1000, 0);
    s.recv(peer, syn, &[Extension::ExtensionBits(&bits)], &[]);
    let answer = s.sent();
    assert_eq!(answer.len(), 1, "a SYN with extension bits is answered");
    let ours = answer[0].h.seq_nr.0;
    let d = s.header(PacketType::Data, 61, 1001, ours.wrapping_sub(1));
    s.recv(peer, d, &[], b"x");
    // 1002 is missing: 1003 arrives and is acked with a selective ACK, first in line.
    let d = s.header(PacketType::Data, 61, 1003, ours.wrapping_sub(1));
    s.recv(peer, d, &[], b"z");
    let out = s.sent();
    let sack = out.iter().find(|o| o.h.ty == PacketType::State).unwrap();
    assert_eq!(sack.first_extension, 1, "selective ACK first");
    let d = s.header(PacketType::Data, 61, 1002, ours.wrapping_sub(1));
    s.recv(peer, d, &[], b"y");
    let fin = s.header(PacketType::Fin, 61, 1004, ours.wrapping_sub(1));
    s.recv(
        peer,
        fin,
        &[Extension::CloseReason {
            reserved: 0,
            code: 3,
        }],
        &[],
    );
    let h = s.incoming()[0];
    assert_eq!(s.read_all(h), b"xyz");
    assert!(s.events.contains(&(h, Event::Finished)), "the FIN counted");
}
