//! The passive checker: follows every uTP connection of a capture and reports each
//! place where a BEP 29 rule visible on the wire is broken.
//!
//! It holds at either end of the wire (a capture at the sender or at the receiver):
//! packets lost before the capture point show up as gaps, which are counted, never
//! reported as violations. Rules, named by their checklist item:
//!
//! - `D25`/`D28`: after a SYN with id X, the initiator sends with X + 1 and the
//!   acceptor with X.
//! - `C20`: a STATE does not consume a sequence number: it carries the next one (X1).
//! - `C21`: nothing from a side carries a sequence number beyond its FIN.
//! - `X10`: no ACK acknowledges a packet the other side has not sent.
//! - `B16`: every selective-ACK bit stands for a packet the other side has sent.
//! - `E33`: bytes in flight stay within the receiver's advertised window (plus the
//!   packet being sent).
//! - `A8`: a timestamp difference is "my receive time minus your timestamp" of a packet
//!   the other side really sent, shortly before.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use utp::wire::{DecodeError, Packet, PacketType, SeqNr};

use crate::trace::{Capture, Datagram};

/// What a UDP datagram is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A valid uTP version 1 packet.
    Utp,
    /// libutp's old-format (version 0) RESET, 23 bytes.
    Version0Reset,
    /// Looks like uTP version 1 but does not decode.
    Malformed(DecodeError),
    /// Not uTP (DHT, tracker, ...).
    Other,
}

/// Classifies a UDP payload.
pub fn classify(payload: &[u8]) -> Kind {
    match Packet::decode(payload) {
        Ok(_) => Kind::Utp,
        // libutp's v0 header: conn id u32, tv_sec, tv_usec, reply_micro (u32 each),
        // window u8, ext u8, flags u8 (3 = RESET), seq u16, ack u16.
        Err(_) if payload.len() == 23 && payload[18] == 3 => Kind::Version0Reset,
        // STUN (RFC 5389): its magic cookie; a binding response starts like uTP v1.
        Err(_) if payload.get(4..8) == Some(&[0x21, 0x12, 0xa4, 0x42]) => Kind::Other,
        Err(e)
            if payload
                .first()
                .is_some_and(|b| b & 0x0f == 1 && b >> 4 <= 4) =>
        {
            Kind::Malformed(e)
        }
        Err(_) => Kind::Other,
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Frame number in the capture.
    pub frame: usize,
    /// The checklist item.
    pub rule: &'static str,
    /// What was seen.
    pub message: String,
}

/// Everything the checker found in a capture.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Valid uTP packets.
    pub utp: usize,
    /// Frames of version-0 RESETs.
    pub version0_resets: Vec<usize>,
    /// Frames that look like uTP but do not decode, with the reason.
    pub malformed: Vec<(usize, DecodeError)>,
    /// Other UDP datagrams.
    pub other: usize,
    /// Frames whose packet did not re-encode to the same bytes.
    pub reencode_mismatches: Vec<usize>,
    /// Connections followed (with a SYN) and fragments (without).
    pub connections: usize,
    /// Sequence numbers missing from the capture (lost before the capture point).
    pub gaps: usize,
    /// Packets with a selective ACK, and the bitmask lengths seen.
    pub sack_lengths: HashMap<usize, usize>,
    /// Packets whose first extension has type 3 or more (libutp drops those).
    pub first_extension_3_or_more: usize,
    /// STATEs after a FIN that carry the FIN's sequence number (libtorrent does this;
    /// tolerated, counted).
    pub state_with_fin_seq: usize,
    /// Rules broken.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations of one rule.
    pub fn count(&self, rule: &str) -> usize {
        self.violations.iter().filter(|v| v.rule == rule).count()
    }
}

#[derive(Debug, Default)]
struct Direction {
    /// The next new sequence number (after the last DATA, FIN or SYN).
    next_seq: Option<SeqNr>,
    fin: Option<SeqNr>,
    /// Unacknowledged payload: (seq, bytes), in order.
    unacked: VecDeque<(SeqNr, usize)>,
    in_flight: usize,
    /// The last window this side advertised (not from its SYN).
    window: Option<u32>,
    /// Recent (capture time, timestamp) of packets from this side.
    stamps: VecDeque<(Duration, u32)>,
    /// Recent new packets from this side: (seq, timestamp when first seen).
    sent: VecDeque<(SeqNr, u32)>,
}

#[derive(Debug)]
struct Conn {
    /// Initiator and acceptor addresses and the SYN's id, when the SYN was seen.
    initiator: Option<SocketAddr>,
    syn_id: u16,
    dirs: [Direction; 2],
    addrs: [SocketAddr; 2],
}

impl Conn {
    fn dir_index(&self, from: SocketAddr) -> usize {
        usize::from(self.addrs[0] != from)
    }
}

/// Checks every uTP packet of a capture.
pub fn check(capture: &Capture) -> Report {
    let mut report = Report::default();
    let mut conns: Vec<Conn> = Vec::new();
    // (src, dst, conn_id) → connection index.
    let mut by_id: HashMap<(SocketAddr, SocketAddr, u16), usize> = HashMap::new();
    for d in &capture.datagrams {
        match classify(&d.payload) {
            Kind::Utp => report.utp += 1,
            Kind::Version0Reset => {
                report.version0_resets.push(d.frame);
                continue;
            }
            Kind::Malformed(e) => {
                report.malformed.push((d.frame, e));
                continue;
            }
            Kind::Other => {
                report.other += 1;
                continue;
            }
        }
        let p = Packet::decode(&d.payload).expect("classified as uTP");
        let mut again = vec![0u8; p.encoded_len()];
        if p.encode(&mut again).ok() != Some(d.payload.len()) || again != d.payload {
            report.reencode_mismatches.push(d.frame);
        }
        if let Some(s) = p.selective_ack() {
            *report.sack_lengths.entry(s.bitmask().len()).or_default() += 1;
        }
        if p.first_extension() >= 3 {
            report.first_extension_3_or_more += 1;
        }
        let idx = connection(&mut conns, &mut by_id, d, &p);
        check_packet(&mut report, &mut conns[idx], d, &p);
    }
    report.connections = conns.len();
    report
}

/// Finds or creates the connection a packet belongs to.
fn connection(
    conns: &mut Vec<Conn>,
    by_id: &mut HashMap<(SocketAddr, SocketAddr, u16), usize>,
    d: &Datagram,
    p: &Packet<'_>,
) -> usize {
    let id = p.header.conn_id;
    if p.header.ty == PacketType::Syn {
        if let Some(&i) = by_id.get(&(d.src, d.dst, id)) {
            return i; // a resent SYN
        }
        conns.push(Conn {
            initiator: Some(d.src),
            syn_id: id,
            dirs: Default::default(),
            addrs: [d.src, d.dst],
        });
        let i = conns.len() - 1;
        by_id.insert((d.src, d.dst, id), i);
        by_id.insert((d.src, d.dst, id.wrapping_add(1)), i);
        by_id.insert((d.dst, d.src, id), i);
        return i;
    }
    if let Some(&i) = by_id.get(&(d.src, d.dst, id)) {
        return i;
    }
    // RESETs may name either id of the connection (checklist X11).
    for alt in [id.wrapping_add(1), id.wrapping_sub(1)] {
        if p.header.ty == PacketType::Reset {
            if let Some(&i) = by_id.get(&(d.src, d.dst, alt)) {
                return i;
            }
        }
    }
    // The same two hosts with an id one off: a connection using the wrong id (D25/D28).
    let near = conns.iter().position(|c| {
        c.initiator.is_some()
            && (c.addrs == [d.src, d.dst] || c.addrs == [d.dst, d.src])
            && (id.wrapping_sub(c.syn_id) <= 1 || c.syn_id.wrapping_sub(id) <= 1)
    });
    if let Some(i) = near {
        return i;
    }
    // A connection whose SYN is not in the capture: follow it from here.
    conns.push(Conn {
        initiator: None,
        syn_id: 0,
        dirs: Default::default(),
        addrs: [d.src, d.dst],
    });
    let i = conns.len() - 1;
    by_id.insert((d.src, d.dst, id), i);
    i
}

fn violation(report: &mut Report, frame: usize, rule: &'static str, message: String) {
    report.violations.push(Violation {
        frame,
        rule,
        message,
    });
}

fn check_packet(report: &mut Report, c: &mut Conn, d: &Datagram, p: &Packet<'_>) {
    let h = &p.header;
    let me = c.dir_index(d.src);
    let other = 1 - me;
    let frame = d.frame;

    // D25 / D28: connection ids.
    if let Some(init) = c.initiator {
        if h.ty != PacketType::Reset {
            let want = if h.ty == PacketType::Syn {
                c.syn_id
            } else if d.src == init {
                c.syn_id.wrapping_add(1)
            } else {
                c.syn_id
            };
            if h.conn_id != want {
                let rule = if d.src == init { "D25" } else { "D28" };
                violation(
                    report,
                    frame,
                    rule,
                    format!("{:?} with conn_id {} where {want} was due", h.ty, h.conn_id),
                );
            }
        }
    }

    // A8: the timestamp difference refers to a timestamp the other side sent shortly
    // before (0 means "no sample"; 0x7fffffff is uTorrent's uninitialised value).
    if h.timestamp_diff.0 != 0 && h.timestamp_diff.0 != 0x7fff_ffff && h.ty != PacketType::Reset {
        let v = h.timestamp.0.wrapping_sub(h.timestamp_diff.0);
        let slack = Duration::from_millis(100);
        let ok = c.dirs[other].stamps.iter().any(|&(at, ts)| {
            let held = v.wrapping_sub(ts) as i32;
            let elapsed = d.time.saturating_sub(at) + slack;
            held >= -1000 && (held as i64) <= elapsed.as_micros() as i64
        });
        if !c.dirs[other].stamps.is_empty() && !ok {
            violation(
                report,
                frame,
                "A8",
                format!(
                    "timestamp_difference {} matches no recent timestamp of the peer",
                    h.timestamp_diff.0
                ),
            );
        }
    }
    let stamps = &mut c.dirs[me].stamps;
    stamps.push_back((d.time, h.timestamp.0));
    if stamps.len() > 512 {
        stamps.pop_front();
    }

    if h.ty == PacketType::Reset {
        return;
    }

    // X10: never acknowledge what the other side has not sent.
    if h.ty != PacketType::Syn {
        if let Some(next) = c.dirs[other].next_seq {
            if h.ack_nr.is_after(next.prev()) {
                violation(
                    report,
                    frame,
                    "X10",
                    format!(
                        "ack_nr {} but the peer's last sequence number is {}",
                        h.ack_nr,
                        next.prev()
                    ),
                );
            }
            // B16: selective-ACK bits only for packets the peer has sent.
            if let Some(s) = p.selective_ack() {
                if let Some(bad) = s.acked(h.ack_nr).find(|seq| !seq.is_before(next)) {
                    violation(
                        report,
                        frame,
                        "B16",
                        format!("selective ACK of {bad}, never sent (next is {next})"),
                    );
                }
            }
        }
        // The ACK releases the other side's packets up to ack_nr.
        let od = &mut c.dirs[other];
        while od
            .unacked
            .front()
            .is_some_and(|(seq, _)| !seq.is_after(h.ack_nr))
        {
            let (_, len) = od.unacked.pop_front().expect("front");
            od.in_flight -= len;
        }
        c.dirs[me].window = Some(h.wnd_size);
    }

    let dir = &mut c.dirs[me];
    match h.ty {
        PacketType::Syn => dir.next_seq = Some(h.seq_nr.next()),
        PacketType::State => match dir.next_seq {
            // The acceptor's answer to the SYN sets its sequence (checklist X1).
            None => dir.next_seq = Some(h.seq_nr),
            Some(next) if h.seq_nr.is_after(next) => {
                // Packets of this side were lost before the capture point.
                report.gaps += usize::from(h.seq_nr - next);
                dir.next_seq = Some(h.seq_nr);
            }
            Some(next) if h.seq_nr != next => {
                // Behind: fine if it was sent before the packet that took that number
                // (reordered on the way), which its timestamp shows.
                let sent_later = dir
                    .sent
                    .iter()
                    .find(|(seq, _)| *seq == h.seq_nr)
                    .is_none_or(|&(_, ts)| ts.wrapping_sub(h.timestamp.0) as i32 >= 0);
                if dir.fin == Some(h.seq_nr) {
                    report.state_with_fin_seq += 1;
                } else if !sent_later {
                    violation(
                        report,
                        frame,
                        "C20",
                        format!("STATE with seq_nr {} where the next is {next}", h.seq_nr),
                    );
                }
            }
            Some(_) => {}
        },
        PacketType::Data | PacketType::Fin => {
            let next = dir.next_seq.unwrap_or(h.seq_nr);
            if let Some(fin) = dir.fin {
                if h.seq_nr.is_after(fin) {
                    violation(
                        report,
                        frame,
                        "C21",
                        format!("{:?} {} after FIN {fin}", h.ty, h.seq_nr),
                    );
                }
            }
            if !h.seq_nr.is_before(next) {
                // New: anything skipped was lost before the capture point.
                report.gaps += usize::from(h.seq_nr - next);
                dir.next_seq = Some(h.seq_nr.next());
                dir.sent.push_back((h.seq_nr, h.timestamp.0));
                if dir.sent.len() > 4096 {
                    dir.sent.pop_front();
                }
                if h.ty == PacketType::Fin {
                    dir.fin = Some(h.seq_nr);
                }
                // E33: within the peer's advertised window.
                dir.unacked.push_back((h.seq_nr, p.payload.len()));
                dir.in_flight += p.payload.len();
                if let Some(w) = c.dirs[other].window {
                    let dir = &c.dirs[me];
                    if dir.in_flight > w as usize + p.payload.len() {
                        violation(
                            report,
                            frame,
                            "E33",
                            format!("{} bytes in flight, peer window {w}", dir.in_flight),
                        );
                    }
                }
            }
        }
        PacketType::Reset => {}
    }
}

#[cfg(test)]
mod tests {
    use utp::wire::{encode, Extension, Header, Micros, SelectiveAck};

    use super::*;

    /// A scripted connection: A (initiator, id 100) and B, seq numbers from 10 and 500.
    struct Script {
        cap: Capture,
        t: u64,
    }

    const A: &str = "10.0.0.1:1000";
    const B: &str = "10.0.0.2:2000";

    impl Script {
        fn new() -> Script {
            let mut s = Script {
                cap: Capture::default(),
                t: 0,
            };
            s.pkt(A, PacketType::Syn, 100, 10, 0, 0, 1 << 20, &[], &[]);
            s.pkt(B, PacketType::State, 100, 500, 10, 0, 1 << 20, &[], &[]);
            s
        }

        /// Adds a packet from `from`; timestamps are the capture time in µs, and
        /// `tsd` is taken as given.
        #[allow(clippy::too_many_arguments)]
        fn pkt(
            &mut self,
            from: &str,
            ty: PacketType,
            id: u16,
            seq: u16,
            ack: u16,
            tsd: u32,
            wnd: u32,
            exts: &[Extension<'_>],
            payload: &[u8],
        ) {
            self.t += 1000;
            let h = Header {
                ty,
                conn_id: id,
                timestamp: Micros(self.t as u32),
                timestamp_diff: Micros(tsd),
                wnd_size: wnd,
                seq_nr: SeqNr(seq),
                ack_nr: SeqNr(ack),
            };
            let mut buf = vec![0u8; 2048];
            let n = encode(&h, exts, payload, &mut buf).unwrap();
            let (src, dst) = if from == A { (A, B) } else { (B, A) };
            self.cap.datagrams.push(Datagram {
                frame: self.cap.datagrams.len() + 1,
                time: Duration::from_micros(self.t),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                payload: buf[..n].to_vec(),
            });
        }

        fn rules(&self) -> Vec<&'static str> {
            check(&self.cap).violations.iter().map(|v| v.rule).collect()
        }
    }

    #[test]
    fn a_clean_exchange_passes() {
        let mut s = Script::new();
        s.pkt(
            A,
            PacketType::Data,
            101,
            11,
            499,
            1000,
            1 << 20,
            &[],
            b"hello",
        );
        s.pkt(B, PacketType::State, 100, 500, 11, 1000, 1 << 20, &[], &[]);
        s.pkt(
            B,
            PacketType::Data,
            100,
            500,
            11,
            1000,
            1 << 20,
            &[],
            b"world",
        );
        s.pkt(A, PacketType::Fin, 101, 12, 500, 1000, 1 << 20, &[], &[]);
        s.pkt(B, PacketType::State, 100, 501, 12, 1000, 1 << 20, &[], &[]);
        assert_eq!(s.rules(), Vec::<&str>::new());
        let r = check(&s.cap);
        assert_eq!((r.utp, r.connections, r.gaps), (7, 1, 0));
    }

    #[test]
    fn every_rule_can_fail() {
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 100, 11, 499, 0, 1 << 20, &[], b"x"); // D25: wrong id
        s.pkt(B, PacketType::State, 101, 500, 11, 0, 1 << 20, &[], &[]); // D28
        s.pkt(B, PacketType::State, 100, 500, 40, 0, 1 << 20, &[], &[]); // X10: unsent
        let mask = [0xff, 0, 0, 0];
        s.pkt(
            B,
            PacketType::State,
            100,
            500,
            11,
            0,
            1 << 20,
            &[Extension::SelectiveAck(SelectiveAck::new(&mask))],
            &[],
        ); // B16
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"y");
        s.pkt(A, PacketType::State, 101, 11, 499, 0, 1 << 20, &[], &[]); // C20: behind, sent later
        s.pkt(A, PacketType::Fin, 101, 13, 499, 0, 1 << 20, &[], &[]);
        s.pkt(A, PacketType::Data, 101, 14, 499, 0, 1 << 20, &[], b"z"); // C21
        s.pkt(
            B,
            PacketType::State,
            100,
            500,
            11,
            123_456_789,
            10,
            &[],
            &[],
        ); // A8, window 10
        s.pkt(B, PacketType::Data, 100, 500, 14, 0, 10, &[], &[0; 100]);
        s.pkt(B, PacketType::Data, 100, 501, 14, 0, 10, &[], &[0; 100]); // E33: A's window is 1 MiB...
        let rules = s.rules();
        for rule in ["D25", "D28", "X10", "B16", "C20", "C21", "A8"] {
            assert!(rules.contains(&rule), "{rule} not detected: {rules:?}");
        }
        // E33: A sends 300 bytes into B's window of 10.
        let mut s = Script::new();
        s.pkt(B, PacketType::State, 100, 500, 10, 0, 10, &[], &[]);
        s.pkt(
            A,
            PacketType::Data,
            101,
            11,
            499,
            0,
            1 << 20,
            &[],
            &[0; 100],
        );
        s.pkt(
            A,
            PacketType::Data,
            101,
            12,
            499,
            0,
            1 << 20,
            &[],
            &[0; 100],
        );
        assert_eq!(s.rules(), vec!["E33"]);
    }

    #[test]
    fn classifies_non_utp_and_version0_resets() {
        let mut v0 = [0u8; 23];
        v0[18] = 3;
        assert_eq!(classify(&v0), Kind::Version0Reset);
        assert_eq!(
            classify(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"),
            Kind::Other
        );
        let mut stun = [0u8; 40];
        stun[0] = 0x01;
        stun[1] = 0x01;
        stun[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun[1] = 0x01;
        assert_eq!(classify(&stun), Kind::Other);
        let mut bad = [0u8; 22];
        bad[0] = 0x21;
        bad[1] = 1; // a selective ACK that is not there
        assert!(matches!(classify(&bad), Kind::Malformed(_)));
    }
}
