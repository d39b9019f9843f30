//! Hostile networks and hostile peers, deterministically, in virtual time.
//!
//! Each test drives sans-IO endpoints on the virtual network of `common::vnet` and
//! plays an attacker: spoofed SYN floods, blind RESETs and data with guessed ids,
//! forged and mangled acknowledgements, crafted extensions and headers, absurd windows
//! and timestamps, a reader that never reads, peers that go silent. The claims checked
//! here are the ones `THREAT_MODEL.md` makes; each names the limit that enforces it.
//! Memory is measured as the library exposes it: connection counts, half-open counts,
//! writable and readable bytes, statistics.

use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use utp::proto::{ConnectionError, ConnectionHandle, State};
use utp::wire::{self, Extension, Header, Micros, Packet, PacketType, SelectiveAck, SeqNr};
use utp::{Config, Event};

mod common;
use common::pattern;
use common::vnet::Net;

const CLIENT: &str = "10.0.0.1:5000";
const SERVER: &str = "10.0.0.2:6881";

/// A spoofed source address, distinct for each `i` (172.16.0.0/12).
fn spoofed(i: u32) -> SocketAddr {
    let ip = std::net::Ipv4Addr::new(172, 16 + ((i >> 16) & 15) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::new(ip.into(), 1024 + (i % 60_000) as u16)
}

/// Encodes a crafted packet.
fn craft(
    ty: PacketType,
    conn_id: u16,
    seq: u16,
    ack: u16,
    wnd: u32,
    exts: &[Extension<'_>],
    payload: &[u8],
) -> Vec<u8> {
    let h = Header {
        ty,
        conn_id,
        timestamp: Micros(123_456),
        timestamp_diff: Micros(0),
        wnd_size: wnd,
        seq_nr: SeqNr(seq),
        ack_nr: SeqNr(ack),
    };
    let mut buf = vec![0u8; wire::encoded_len(exts, payload.len())];
    wire::encode(&h, exts, payload, &mut buf).expect("encodable");
    buf
}

/// Decodes a datagram, lets `f` change its header, optionally replaces its selective
/// ACK with `sack` (put first) and appends `extra` empty unknown extensions, and
/// re-encodes it. Datagrams that do not decode are left alone.
fn rewrite(data: &mut Vec<u8>, f: impl FnOnce(&mut Header), sack: Option<&[u8]>, extra: usize) {
    let Ok(p) = Packet::decode(data) else {
        return;
    };
    let mut h = p.header;
    f(&mut h);
    // The original extensions' bodies, copied out so the datagram can be replaced.
    let owned: Vec<(u8, Vec<u8>)> = p
        .extensions()
        .map(|e| {
            let mut tmp = vec![0u8; wire::encoded_len(&[e], 0)];
            let _ = wire::encode(&p.header, &[e], &[], &mut tmp);
            (e.kind(), tmp[wire::HEADER_LEN + 2..].to_vec())
        })
        .collect();
    let payload = p.payload.to_vec();
    let mut exts: Vec<Extension<'_>> = Vec::new();
    if let Some(mask) = sack {
        exts.push(Extension::SelectiveAck(SelectiveAck::new(mask)));
    }
    for (kind, body) in &owned {
        match *kind {
            wire::SELECTIVE_ACK if sack.is_some() => {}
            wire::SELECTIVE_ACK => exts.push(Extension::SelectiveAck(SelectiveAck::new(body))),
            kind => exts.push(Extension::Unknown { kind, data: body }),
        }
    }
    for _ in 0..extra {
        exts.push(Extension::Unknown {
            kind: 77,
            data: &[],
        });
    }
    let mut out = vec![0u8; wire::encoded_len(&exts, payload.len())];
    if wire::encode(&h, &exts, &payload, &mut out).is_ok() {
        *data = out;
    }
}

/// The header of the last datagram in the trace from `from` to `to`.
fn last_header(net: &Net, from: SocketAddr, to: SocketAddr) -> Header {
    net.trace
        .iter()
        .rev()
        .filter(|(_, f, t, _)| *f == from && *t == to)
        .find_map(|(_, _, _, d)| Packet::decode(d).ok().map(|p| p.header))
        .expect("a datagram in the trace")
}

/// The highest seq_nr of a DATA or FIN packet `from` sent to `to`, if any.
fn last_data_seq(net: &Net, from: SocketAddr, to: SocketAddr) -> Option<SeqNr> {
    net.trace
        .iter()
        .rev()
        .filter(|(_, f, t, _)| *f == from && *t == to)
        .filter_map(|(_, _, _, d)| Packet::decode(d).ok().map(|p| p.header))
        .find(|h| matches!(h.ty, PacketType::Data | PacketType::Fin))
        .map(|h| h.seq_nr)
}

/// A client (0) and a server (1) with these configurations.
fn pair(client: Config, server: Config) -> Net {
    let mut net = Net::new();
    net.add(CLIENT, client, 1);
    net.add(SERVER, server, 2);
    net
}

/// Moves `data` from `a`'s connection `ha` to `b`'s `hb`, then closes `a`'s direction;
/// returns what `b` read (until EOF or `limit`).
fn transfer(
    net: &mut Net,
    (a, ha): (usize, ConnectionHandle),
    (b, hb): (usize, ConnectionHandle),
    data: &[u8],
    limit: Duration,
) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::new();
    let mut shut = false;
    net.run_while_not(limit, |n| {
        n.write_some(a, ha, data, &mut sent);
        if sent == data.len() && !shut {
            let now = n.now;
            let _ = n.ep(a).shutdown(now, ha);
            shut = true;
        }
        n.read_all(b, hb, &mut got)
    });
    got
}

// ----- SYN floods ------------------------------------------------------------------------

/// Floods the server with `rate` SYNs per second from distinct spoofed addresses for
/// `secs`, checking the half-open limit after every SYN; the client connects at 2 s.
/// Returns whether the client got connected, and when.
fn syn_flood(rate: u32, secs: u32) -> (Net, Option<Duration>) {
    let mut net = pair(Config::default(), Config::default());
    let limit = net.ep(1).config().max_half_open;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let start = net.now;
    let step = Duration::from_micros(1_000_000 / u64::from(rate));
    let mut client = None;
    let mut connected_at = None;
    for i in 0..rate * secs {
        net.run_for(step);
        // SYNs of 20 to 120 bytes: extensions and payload are allowed on a SYN.
        let extra = (rng.next_u32() % 101) as usize;
        let payload = vec![0xAB; extra];
        let syn = craft(
            PacketType::Syn,
            rng.next_u32() as u16,
            rng.next_u32() as u16,
            0,
            1 << 20,
            &[],
            &payload,
        );
        net.inject(spoofed(i), 1, &syn);
        let ep = net.ep(1);
        assert!(ep.half_open_count() <= limit, "half-open limit exceeded");
        assert!(ep.connection_count() <= limit + 1, "connection table grew");
        if client.is_none() && net.now - start >= Duration::from_secs(2) {
            client = Some(net.connect(0, 1));
        }
        if let Some(h) = client {
            if connected_at.is_none() && net.saw(0, h, Event::Connected) {
                connected_at = Some(net.now - start);
            }
        }
    }
    (net, connected_at)
}

/// Per spoofed address, bytes sent to it never exceed bytes received from it.
fn assert_no_amplification(net: &Net, count: u32) {
    let (mut from, mut to) = (0u64, 0u64);
    for i in 0..count {
        let t = net.traffic(spoofed(i));
        assert!(
            t.bytes_to <= t.bytes_from && t.datagrams_to <= t.datagrams_from,
            "amplification towards {}: {t:?}",
            spoofed(i)
        );
        from += t.bytes_from;
        to += t.bytes_to;
    }
    assert!(to <= from);
}

#[test]
fn syn_flood_stays_within_the_half_open_limit_and_does_not_amplify() {
    let (rate, secs) = (1000, 10);
    let (mut net, _) = syn_flood(rate, secs);
    assert_no_amplification(&net, rate * secs);
    let before: u64 = (0..rate * secs)
        .map(|i| net.traffic(spoofed(i)).bytes_to)
        .sum();
    // SYN-ACKs are never retransmitted on a timer, and half-open entries expire.
    net.run_for(Duration::from_secs(30));
    let after: u64 = (0..rate * secs)
        .map(|i| net.traffic(spoofed(i)).bytes_to)
        .sum();
    assert_eq!(before, after, "nothing more goes to spoofed addresses");
    let ep = net.ep(1);
    assert_eq!(ep.half_open_count(), 0);
    assert!(
        ep.connection_count() <= 1,
        "only the legitimate client remains"
    );
    let st = ep.stats().clone();
    assert!(st.half_open_expired > 0);
    assert!(
        st.half_open_evicted > 0,
        "SYNs beyond the limit evict the oldest half-open entries"
    );
    assert_eq!(
        st.connections_accepted, 1,
        "the legitimate client gets in during the flood; no spoofed SYN completes"
    );
}

#[test]
fn legitimate_client_connects_during_a_syn_flood_below_the_half_open_limit() {
    // 15 SYNs/s for 10 s: the table (64) fills after about 4 s, then evicts its oldest.
    let (mut net, connected) = syn_flood(15, 10);
    let at = connected.expect("the client connected during the flood");
    // It connects at the first flood step after 2 s (steps of 67 ms), one RTT later.
    assert!(at < Duration::from_millis(2200), "connected at {at:?}");
    assert_no_amplification(&net, 150);
    let ha = net.nodes[0]
        .events
        .iter()
        .find(|(_, e)| *e == Event::Connected)
        .map(|(h, _)| *h)
        .expect("connected");
    let hb = net.incoming(1).expect("accepted");
    let data = pattern(100_000, 3);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(30));
    assert!(got == data, "the legitimate transfer is intact");
}

#[test]
fn legitimate_client_connects_during_a_syn_flood_above_the_half_open_limit() {
    let (net, connected) = syn_flood(1000, 20);
    assert_no_amplification(&net, 20_000);
    let at = connected.expect("the client connected during the flood");
    // Its SYN retries (1 s, 2 s, 4 s, 8 s) give it several chances.
    assert!(at < Duration::from_secs(17), "connected at {at:?}");
}

#[test]
fn packets_for_unknown_connections_get_few_small_resets() {
    let mut net = pair(Config::default(), Config::default());
    let limit = net.ep(1).config().reset_limit as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for i in 0..5000u32 {
        let len = (rng.next_u32() % 200) as usize;
        let ty = [PacketType::Data, PacketType::State, PacketType::Fin][i as usize % 3];
        let p = craft(ty, rng.next_u32() as u16, 1, 2, 0, &[], &vec![1; len]);
        net.inject(spoofed(i), 1, &p);
        if i % 100 == 0 {
            net.run_for(Duration::from_millis(10));
        }
    }
    // RESETs are never answered, whatever they carry.
    for i in 0..1000u32 {
        let p = craft(PacketType::Reset, i as u16, 1, 2, 0, &[], &[]);
        net.inject(spoofed(10_000 + i), 1, &p);
    }
    net.run_for(Duration::from_millis(1));
    let st = net.ep(1).stats().clone();
    assert!(st.resets_sent <= limit, "{} resets sent", st.resets_sent);
    assert!(st.resets_suppressed > 0);
    assert_no_amplification(&net, 11_000);
    for (_, d) in &net.unrouted {
        assert_eq!(d.len(), wire::HEADER_LEN, "a RESET is a bare header");
    }
    assert_eq!(net.ep(1).connection_count(), 0);
}

// ----- Blind attacks with guessed ids -----------------------------------------------------

/// An established pair that moved some data both ways; returns the handles.
fn established() -> (Net, ConnectionHandle, ConnectionHandle) {
    let mut net = pair(Config::default(), Config::default());
    net.record = true;
    let (ha, hb) = net.establish(0, 1);
    let mut sent = 0;
    net.write_some(0, ha, b"hello", &mut sent);
    net.run_for(Duration::from_millis(100));
    let mut got = Vec::new();
    net.read_all(1, hb, &mut got);
    assert_eq!(got, b"hello");
    (net, ha, hb)
}

/// Whether `ack` lies within `span` of `next` (either side), wrapping.
fn near(ack: u16, next: SeqNr, span: u16) -> bool {
    let d = ack.wrapping_sub(next.0);
    d <= span || d >= 0u16.wrapping_sub(span)
}

#[test]
fn blind_resets_with_guessed_ids_are_rejected_outside_the_window() {
    let (mut net, ha, hb) = established();
    let (a, b) = (net.addr(0), net.addr(1));
    // The server's next seq_nr, as an on-path observer would learn it; a blind attacker
    // does not know it, so it guesses: every value more than 8 away is a wrong guess.
    let next = last_header(&net, b, a).seq_nr;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for id in 0..=u16::MAX {
        let ack = loop {
            let x = rng.next_u32() as u16;
            if !near(x, next, 8) {
                break x;
            }
        };
        let p = craft(
            PacketType::Reset,
            id,
            rng.next_u32() as u16,
            ack,
            0,
            &[],
            &[],
        );
        net.inject(a, 1, &p);
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.closed(1, hb), None, "the server's connection survived");
    let conn = net.ep(1).connection(hb).expect("alive");
    assert_eq!(conn.state(), State::Connected);
    assert!(conn.stats().packets_dropped > 0);
    // The connection still works both ways.
    let data = pattern(50_000, 5);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(10));
    assert!(got == data);
    // The limit is the window: a RESET with the right id and an acceptable ack_nr ends it.
    let next = last_header(&net, b, a);
    let id = net.ep(1).connection(hb).expect("alive").recv_id();
    let p = craft(PacketType::Reset, id, 1, next.seq_nr.0, 0, &[], &[]);
    net.inject(a, 1, &p);
    assert_eq!(net.closed(1, hb), Some(Some(ConnectionError::Reset)));
}

#[test]
fn blind_data_with_guessed_ids_is_rejected_outside_the_window() {
    let (mut net, ha, hb) = established();
    let (a, b) = (net.addr(0), net.addr(1));
    let next = last_header(&net, b, a).seq_nr;
    let client_next = last_data_seq(&net, a, b).expect("data sent").next();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let recv_id = net.ep(1).connection(hb).expect("alive").recv_id();
    let unknown_before = net.ep(1).stats().unknown_connection;
    // Every id, with a wrong ack_nr (acks data never sent, or far behind).
    for id in 0..=u16::MAX {
        let ack = loop {
            let x = rng.next_u32() as u16;
            if !near(x, next, 8) {
                break x;
            }
        };
        let p = craft(
            PacketType::Data,
            id,
            client_next.0.wrapping_add(rng.next_u32() as u16 % 4),
            ack,
            1 << 20,
            &[],
            b"EVIL",
        );
        net.inject(a, 1, &p);
    }
    // The right id and ack_nr, but a seq_nr beyond the reorder span.
    for k in 0..1000u16 {
        let seq = client_next.0.wrapping_add(2000 + k * 60);
        let p = craft(
            PacketType::Data,
            recv_id,
            seq,
            next.prev().0,
            1 << 20,
            &[],
            b"EVIL",
        );
        net.inject(a, 1, &p);
    }
    net.run_for(Duration::from_millis(100));
    let data = pattern(50_000, 6);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(10));
    assert!(got == data, "no forged byte reached the reader");
    // Wrong ids never reach a connection; the right id is dropped by the connection.
    assert!(net.ep(1).stats().unknown_connection - unknown_before >= 65_535);
    let st = net.ep(1).connection(hb).expect("alive").stats();
    // Beyond the reorder span ahead (dropped) or behind (taken for old duplicates).
    assert!(
        st.packets_dropped + st.duplicate_packets_received >= 1001,
        "{st:?}"
    );
}

// ----- Forged and mangled acknowledgements ---------------------------------------------

/// The client sends `data` to the server while `attack` runs after every step with the
/// client's last data seq_nr and the server's last header; returns what the server read.
fn transfer_under_attack(
    data: &[u8],
    limit: Duration,
    mut attack: impl FnMut(&mut Net, SeqNr, Header),
) -> (Net, ConnectionHandle, ConnectionHandle, Vec<u8>) {
    let (mut net, ha, hb) = established();
    let (a, b) = (net.addr(0), net.addr(1));
    let mut sent = 0;
    let mut got = Vec::new();
    let mut shut = false;
    let mut steps = 0u32;
    net.run_while_not(limit, |n| {
        n.write_some(0, ha, data, &mut sent);
        if sent == data.len() && !shut {
            let now = n.now;
            let _ = n.ep(0).shutdown(now, ha);
            shut = true;
        }
        steps += 1;
        if steps % 4 == 0 {
            if let Some(seq) = last_data_seq(n, a, b) {
                let h = last_header(n, b, a);
                attack(n, seq, h);
            }
        }
        n.read_all(1, hb, &mut got)
    });
    (net, ha, hb, got)
}

#[test]
fn acks_of_data_never_sent_and_acks_far_behind_are_ignored() {
    let data = pattern(300_000, 7);
    let (net, ha, _, got) = transfer_under_attack(&data, Duration::from_secs(60), |n, seq, h| {
        let (b, id) = (n.addr(1), h.conn_id);
        for k in [1u16, 2, 10, 1000, 30_000] {
            // Acknowledges data never sent.
            let p = craft(
                PacketType::State,
                id,
                h.seq_nr.0,
                seq.0.wrapping_add(k),
                1 << 20,
                &[],
                &[],
            );
            n.inject(b, 0, &p);
            // Far behind anything in flight.
            let p = craft(
                PacketType::State,
                id,
                h.seq_nr.0,
                seq.0.wrapping_sub(2000 + k),
                1 << 20,
                &[],
                &[],
            );
            n.inject(b, 0, &p);
        }
    });
    assert!(got == data, "every byte arrived, in order");
    let st = net.nodes[0].ep.connection(ha).map(|c| c.stats());
    if let Some(st) = st {
        assert!(st.packets_dropped > 0);
    }
}

#[test]
fn selective_acks_of_every_length_do_no_harm() {
    let data = pattern(300_000, 8);
    let mut len = 0usize;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (_, _, _, got) = transfer_under_attack(&data, Duration::from_secs(120), |n, _, h| {
        // Forged on top of the real ACKs: the server's own ack_nr (in the window), and a
        // bitmask of every length from 1 to 255 bytes with random bits.
        len = len % 255 + 1;
        let mut mask = vec![0u8; len];
        rng.fill_bytes(&mut mask);
        let sack = [Extension::SelectiveAck(SelectiveAck::new(&mask))];
        let p = craft(
            PacketType::State,
            h.conn_id,
            h.seq_nr.0,
            h.ack_nr.0,
            h.wnd_size,
            &sack,
            &[],
        );
        let b = n.addr(1);
        n.inject(b, 0, &p);
    });
    assert!(got == data, "every byte arrived, in order");
}

#[test]
fn honest_peer_with_every_selective_ack_length_still_delivers() {
    // The peer's own ACKs carry bitmasks of every length (zero bits: nothing extra
    // claimed), with 0 to 250 unknown extensions chained behind.
    let mut net = pair(Config::default(), Config::default());
    let b = net.addr(1);
    let mut len = 0usize;
    net.tamper = Some(Box::new(move |from, _to, d| {
        let is_state = Packet::decode(d).is_ok_and(|p| p.header.ty == PacketType::State);
        if from == b && is_state {
            len = len % 255 + 1;
            let mask = vec![0u8; len];
            rewrite(d, |_| {}, Some(&mask), len % 251);
        }
        true
    }));
    let (ha, hb) = net.establish(0, 1);
    let data = pattern(200_000, 9);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(60));
    assert!(got == data);
}

#[test]
fn long_extension_chains_truncated_headers_and_wrong_versions_are_harmless() {
    let (mut net, ha, hb) = established();
    let (a, b) = (net.addr(0), net.addr(1));
    let h = last_header(&net, a, b);
    let id = net.ep(1).connection(hb).expect("alive").recv_id();
    let before = net.ep(1).stats().clone();
    // 255 chained extensions: unknown ones, then selective ACKs of all lengths.
    let bodies: Vec<Vec<u8>> = (0..255u32).map(|i| vec![0xFF; (i % 9) as usize]).collect();
    let mut exts: Vec<Extension<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| match i % 3 {
            0 if !body.is_empty() => Extension::SelectiveAck(SelectiveAck::new(body)),
            1 => Extension::ExtensionBits(body),
            _ => Extension::Unknown {
                kind: 3 + (i % 250) as u8,
                data: body,
            },
        })
        .collect();
    exts.truncate(255);
    let chained = craft(
        PacketType::State,
        id,
        h.seq_nr.0,
        h.ack_nr.0,
        1 << 20,
        &exts,
        &[],
    );
    assert_eq!(
        Packet::decode(&chained)
            .expect("valid")
            .extensions()
            .count(),
        255
    );
    net.inject(a, 1, &chained);
    let good = craft(PacketType::State, id, 1, 2, 0, &[], &[]);
    let mut malformed = 0u64;
    // Truncated headers: every length below 20.
    for len in 0..wire::HEADER_LEN {
        net.inject(a, 1, &good[..len]);
        malformed += 1;
    }
    // Wrong versions and unknown types.
    for v in (0u8..16).filter(|&v| v != wire::VERSION) {
        let mut p = good.clone();
        p[0] = (p[0] & 0xF0) | v;
        net.inject(a, 1, &p);
        malformed += 1;
    }
    for t in 5u8..16 {
        let mut p = good.clone();
        p[0] = (t << 4) | wire::VERSION;
        net.inject(a, 1, &p);
        malformed += 1;
    }
    // A chain that runs past the end, and an empty selective ACK.
    let mut p = chained.clone();
    p.truncate(p.len() - 1);
    net.inject(a, 1, &p);
    let mut p = good.clone();
    p[1] = wire::SELECTIVE_ACK;
    p.extend_from_slice(&[0, 0]);
    net.inject(a, 1, &p);
    malformed += 2;
    let after = net.ep(1).stats().clone();
    assert_eq!(after.malformed - before.malformed, malformed);
    assert_eq!(
        after.datagrams_sent, before.datagrams_sent,
        "nothing answers a malformed datagram"
    );
    let data = pattern(50_000, 10);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(10));
    assert!(got == data);
}

#[test]
fn crafted_timestamp_differences_do_not_break_the_flow() {
    let mut net = pair(Config::default(), Config::default());
    let b = net.addr(1);
    let values = [
        0u32,
        1,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
        u32::MAX - 1,
        1_000_000,
        12,
    ];
    let mut i = 0usize;
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    net.tamper = Some(Box::new(move |from, _, d| {
        if from == b {
            i += 1;
            let v = if i % 3 == 0 {
                rng.next_u32()
            } else {
                values[i % values.len()]
            };
            rewrite(d, |h| h.timestamp_diff = Micros(v), None, 0);
        }
        true
    }));
    let (ha, hb) = net.establish(0, 1);
    let data = pattern(500_000, 11);
    let got = transfer(&mut net, (0, ha), (1, hb), &data, Duration::from_secs(120));
    assert!(got == data);
    if let Some(c) = net.ep(0).connection(ha) {
        let st = c.stats();
        assert!(
            st.congestion_window >= 150,
            "window {}",
            st.congestion_window
        );
    }
}

#[test]
fn a_window_of_four_gib_is_bounded_by_our_own_buffers() {
    let mut net = pair(Config::default(), Config::default());
    let b = net.addr(1);
    net.tamper = Some(Box::new(move |from, _, d| {
        if from == b {
            rewrite(d, |h| h.wnd_size = u32::MAX, None, 0);
        }
        true
    }));
    let (ha, hb) = net.establish(0, 1);
    let send_buffer = net.ep(0).config().send_buffer_size as u64;
    let data = pattern(3 << 20, 12);
    let mut sent = 0;
    let mut got = Vec::new();
    let mut shut = false;
    let done = net.run_while_not(Duration::from_secs(120), |n| {
        n.write_some(0, ha, &data, &mut sent);
        if let Some(c) = n.ep(0).connection(ha) {
            let st = c.stats();
            assert!(st.bytes_in_flight <= send_buffer, "{st:?}");
            assert_eq!(st.peer_window, u64::from(u32::MAX));
        }
        if sent == data.len() && !shut {
            let now = n.now;
            let _ = n.ep(0).shutdown(now, ha);
            shut = true;
        }
        n.read_all(1, hb, &mut got)
    });
    assert!(done && got == data);
}

#[test]
fn a_window_of_zero_forever_does_not_stall_beyond_the_timeouts() {
    // The peer reads everything but always advertises a zero window. The sender must
    // neither wedge nor grow: data trickles through window probes, or the connection
    // ends within the configured timeouts.
    let mut net = pair(Config::default(), Config::default());
    let b = net.addr(1);
    net.tamper = Some(Box::new(move |from, _, d| {
        if from == b {
            rewrite(d, |h| h.wnd_size = 0, None, 0);
        }
        true
    }));
    let (ha, hb) = net.establish(0, 1);
    let cfg = net.ep(0).config().clone();
    let data = pattern(200_000, 13);
    let mut sent = 0;
    let mut got = Vec::new();
    let mut last_progress = net.now;
    let mut last_len = 0;
    let mut longest = Duration::ZERO;
    let ended = net.run_while_not(Duration::from_secs(600), |n| {
        n.write_some(0, ha, &data, &mut sent);
        assert!(sent <= cfg.send_buffer_size + got.len());
        n.read_all(1, hb, &mut got);
        if got.len() > last_len {
            last_len = got.len();
            last_progress = n.now;
        }
        longest = longest.max(n.now - last_progress);
        n.closed(0, ha).is_some() || got.len() == data.len()
    });
    assert!(data.starts_with(&got), "what arrived is intact");
    assert!(
        ended,
        "after 600 s: {} of {} bytes, neither done nor closed",
        got.len(),
        data.len()
    );
    // Progress never stops for longer than the idle timeout while the connection lives.
    assert!(
        longest <= cfg.idle_timeout + cfg.max_timeout,
        "no progress for {longest:?}"
    );
}

// ----- Memory held for a peer -----------------------------------------------------------

#[test]
fn a_reader_that_never_reads_bounds_the_senders_memory() {
    let mut net = pair(Config::default(), Config::default());
    let (ha, hb) = net.establish(0, 1);
    let send_buffer = net.ep(0).config().send_buffer_size;
    let recv_buffer = net.ep(1).config().recv_buffer_size;
    let data = pattern(8 << 20, 14);
    let mut sent = 0;
    for _ in 0..1200 {
        net.write_some(0, ha, &data, &mut sent);
        net.run_for(Duration::from_millis(100));
        let a = net.ep(0).connection(ha).expect("the sender is alive");
        let buffered = send_buffer - a.writable_bytes();
        assert!(buffered <= send_buffer);
        assert!(a.stats().bytes_in_flight as usize <= send_buffer);
        let b = net.ep(1).connection(hb).expect("the receiver is alive");
        assert!(b.readable_bytes() <= recv_buffer);
        assert!(sent <= send_buffer + recv_buffer, "accepted {sent} bytes");
    }
    // Two minutes later the writer is blocked, both ends alive; reading drains it all.
    assert!(sent >= recv_buffer, "the receive buffer filled ({sent})");
    assert_eq!(net.closed(0, ha), None);
    assert_eq!(net.closed(1, hb), None);
    let mut got = Vec::new();
    let data = &data[..];
    let mut shut = false;
    net.run_while_not(Duration::from_secs(120), |n| {
        n.write_some(0, ha, data, &mut sent);
        if sent == data.len() && !shut {
            let now = n.now;
            let _ = n.ep(0).shutdown(now, ha);
            shut = true;
        }
        n.read_all(1, hb, &mut got)
    });
    assert!(got == data, "{} of {} bytes", got.len(), data.len());
}

#[test]
fn unread_data_outlives_the_close_of_both_directions() {
    // Found by the `connection` fuzz target: the receiver shuts its own direction down
    // and reads only later (a slow consumer). TCP keeps such data readable.
    let (mut net, ha, hb) = established();
    let mut _hello = Vec::new();
    net.read_all(1, hb, &mut _hello);
    let data = pattern(15_552, 17);
    let mut sent = 0;
    net.write_some(0, ha, &data, &mut sent);
    assert_eq!(sent, data.len());
    let now = net.now;
    net.ep(0).shutdown(now, ha).expect("open");
    net.ep(1).shutdown(now, hb).expect("open");
    net.run_for(Duration::from_secs(60));
    let mut got = Vec::new();
    let eof = net.read_all(1, hb, &mut got);
    assert!(
        got == data && eof,
        "read {} of {} bytes",
        got.len(),
        data.len()
    );
}

// ----- Reaping idle and half-dead peers ------------------------------------------------

#[test]
fn a_silent_peer_is_reaped_by_the_idle_timeout() {
    let (mut net, ha, hb) = established();
    let idle = net.ep(0).config().idle_timeout;
    net.cut = true;
    let start = net.now;
    let done = net.run_while_not(idle * 2, |n| {
        n.closed(0, ha).is_some() && n.closed(1, hb).is_some()
    });
    assert!(done);
    assert!(net.now - start <= idle + Duration::from_secs(1));
    assert_eq!(net.closed(0, ha), Some(Some(ConnectionError::TimedOut)));
    assert_eq!(net.closed(1, hb), Some(Some(ConnectionError::TimedOut)));
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.ep(0).connection_count(), 0);
    assert_eq!(net.ep(1).connection_count(), 0);
}

#[test]
fn a_peer_that_vanishes_with_data_in_flight_is_reaped() {
    let (mut net, ha, hb) = established();
    let idle = net.ep(0).config().idle_timeout;
    net.cut = true;
    let start = net.now;
    let data = pattern(500_000, 15);
    let mut sent = 0;
    net.write_some(0, ha, &data, &mut sent);
    // Closing does not keep it alive either.
    let now = net.now;
    net.ep(0).close(now, ha).expect("open");
    let done = net.run_while_not(idle * 2, |n| n.closed(0, ha).is_some());
    assert!(done);
    assert!(net.now - start <= idle + Duration::from_secs(1));
    assert_eq!(net.closed(0, ha), Some(Some(ConnectionError::TimedOut)));
    net.run_while_not(idle * 2, |n| n.closed(1, hb).is_some());
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.ep(0).connection_count(), 0);
    assert_eq!(net.ep(1).connection_count(), 0);
}

#[test]
fn a_half_dead_peer_that_only_sends_keepalives_is_reaped() {
    // Our data never reaches the peer; the peer is alive and keeps sending keep-alives
    // (duplicate ACKs of old data), which must not keep our connection alive forever.
    let (mut net, ha, hb) = established();
    let (a, b) = (net.addr(0), net.addr(1));
    let idle = net.ep(0).config().idle_timeout;
    net.tamper = Some(Box::new(move |from, to, _| !(from == a && to == b)));
    let start = net.now;
    let data = pattern(100_000, 16);
    let mut sent = 0;
    net.write_some(0, ha, &data, &mut sent);
    let done = net.run_while_not(Duration::from_secs(600), |n| {
        n.closed(0, ha).is_some() && n.closed(1, hb).is_some()
    });
    assert!(done, "both ends reaped");
    assert!(net.now - start <= idle * 2, "took {:?}", net.now - start);
    assert_eq!(net.closed(0, ha), Some(Some(ConnectionError::TimedOut)));
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.ep(0).connection_count(), 0);
    assert_eq!(net.ep(1).connection_count(), 0);
}

#[test]
fn half_open_handshakes_and_unanswered_syns_are_reaped() {
    let mut net = pair(Config::default(), Config::default());
    let handshake = net.ep(1).config().handshake_timeout;
    for i in 0..10u32 {
        let syn = craft(PacketType::Syn, i as u16 * 7, 100, 0, 1 << 20, &[], &[]);
        net.inject(spoofed(i), 1, &syn);
    }
    assert_eq!(net.ep(1).half_open_count(), 10);
    net.run_for(handshake + Duration::from_millis(1));
    assert_eq!(net.ep(1).half_open_count(), 0);
    assert_eq!(net.ep(1).connection_count(), 0);
    assert_eq!(net.ep(1).stats().half_open_expired, 10);
    // A connect to an address where nobody answers gives up after the SYN retries.
    let now = net.now;
    let h = net.ep(0).connect(now, spoofed(99)).expect("connect");
    let cfg = net.ep(0).config().clone();
    let bound: Duration = (0..=cfg.syn_retries)
        .map(|k| cfg.initial_timeout * 2u32.pow(k))
        .sum();
    let start = net.now;
    assert!(net.run_while_not(bound * 2, |n| n.closed(0, h).is_some()));
    assert!(net.now - start <= bound + Duration::from_millis(1));
    assert_eq!(net.closed(0, h), Some(Some(ConnectionError::TimedOut)));
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.ep(0).connection_count(), 0);
}

// ----- The fuzz targets' invariants, with a fixed budget -------------------------------

mod properties {
    use super::common::hostile;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn budget(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(budget(512))]

        #[test]
        fn decode_then_encode_is_byte_exact(
            ty in 0u8..6,
            first_ext in prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
            rest in vec(any::<u8>(), 0..300),
        ) {
            let mut d = vec![(ty << 4) | 1, first_ext];
            d.extend_from_slice(&rest);
            hostile::decode_roundtrip(&d);
        }
    }

    #[test]
    fn the_connection_program_moves_data_both_ways() {
        // Seeds; client writes 255 × 64 bytes; server writes; time passes; both read;
        // loss of 5 datagrams; more time; both read again.
        let program = [
            1, 2, 0, 0, 255, 0, 1, 100, 3, 0, 1, 0, 0, 2, 1, 255, 255, 2, 0, 255, 255, 7, 0, 5, 0,
            0, 200, 3, 1, 40, 0, 1, 2, 1, 255, 255, 2, 0, 255, 255,
        ];
        let read = hostile::connection_program(&program);
        assert_eq!(read, [100 * 64, 455 * 64]);
    }

    proptest! {
        #![proptest_config(budget(96))]

        #[test]
        fn endpoint_fed_hostile_datagrams_keeps_its_invariants(program in vec(any::<u8>(), 0..3000)) {
            hostile::endpoint_program(&program);
        }

        #[test]
        fn connection_under_hostile_operations_keeps_its_invariants(program in vec(any::<u8>(), 0..3000)) {
            let _ = hostile::connection_program(&program);
        }
    }
}

// ----- Many short connections over a lossy path ----------------------------------------

#[test]
fn short_connections_over_a_lossy_path_all_complete() {
    // The soak's pattern in virtual time: many short request/reply connections, 2 %
    // loss each way; every one must complete cleanly.
    let mut net = pair(Config::default(), Config::default());
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    net.tamper = Some(Box::new(move |_, _, _| rng.next_u32() % 50 != 0));
    let mut failures = Vec::new();
    for i in 0..3000u64 {
        let seen = net.nodes[1].events.len();
        let ha = net.connect(0, 1);
        let mut hb = None;
        let up = pattern(16 + (i as usize * 7919) % 20_000, i);
        let down = pattern(up.len(), i + 1_000_000);
        let (mut su, mut sd) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let mut shut = [false; 2];
        net.run_while_not(Duration::from_secs(300), |n| {
            if hb.is_none() {
                hb = n.nodes[1].events[seen..]
                    .iter()
                    .find(|(_, e)| *e == Event::Incoming)
                    .map(|(h, _)| *h);
            }
            n.write_some(0, ha, &up, &mut su);
            if su == up.len() && !shut[0] {
                let now = n.now;
                let _ = n.ep(0).shutdown(now, ha);
                shut[0] = true;
            }
            n.read_all(0, ha, &mut got_down);
            let Some(hb) = hb else {
                return n.closed(0, ha).is_some();
            };
            n.write_some(1, hb, &down, &mut sd);
            if sd == down.len() && !shut[1] {
                let now = n.now;
                let _ = n.ep(1).shutdown(now, hb);
                shut[1] = true;
            }
            n.read_all(1, hb, &mut got_up);
            n.closed(0, ha).is_some() && n.closed(1, hb).is_some()
        });
        let why = (net.closed(0, ha), hb.and_then(|hb| net.closed(1, hb)));
        if got_up != up || got_down != down || why != (Some(None), Some(None)) {
            failures.push((i, why, got_up.len(), got_down.len(), up.len()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
