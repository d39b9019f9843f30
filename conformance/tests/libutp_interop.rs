//! Interop: our protocol core against real libutp (the reference C++ implementation),
//! both in this process, joined by the virtual-time network of `utp_conformance::vnet`.
//!
//! Every transfer is checked byte for byte against a position-dependent pattern, and
//! every test asserts how both sides ended (clean close, EOF, error), so each can fail.
//! Known libutp behaviours that a test works around are named by their item in
//! `BEP29-CHECKLIST.md` section L. Tests whose doc starts with "Core bug" found a bug
//! in our core (`utp/`) and now guard its fix.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use utp::proto::{ConnectionError, ConnectionHandle, StreamError};
use utp::wire::{Packet, PacketType};
use utp::{Config, Event};
use utp_conformance::check::check;
use utp_conformance::libutp::{LibutpError, LibutpEvent, LibutpSocketStats, SocketId};
use utp_conformance::vnet::{Impairment, Net, Side};

const MIB: usize = 1 << 20;

/// Bytes that differ with their position (and the stream's salt, which is byte 0), so
/// a lost, repeated or misplaced chunk shows.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// Asserts `got == want` without printing a megabyte.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len(),
        );
    }
}

/// The end of the packet trace (if recording) and the events other than
/// Readable/Writable, for failure messages.
fn diagnose(net: &Net) -> String {
    let trace = net.describe_trace();
    let lines: Vec<&str> = trace.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    let ours: Vec<_> = net
        .our_events
        .iter()
        .filter(|(_, _, e)| !matches!(e, Event::Readable | Event::Writable))
        .collect();
    let lib: Vec<_> = net
        .libutp_events
        .iter()
        .filter(|(_, e)| !matches!(e, LibutpEvent::Readable(_) | LibutpEvent::Writable(_)))
        .collect();
    format!("\ntrace tail:\n{tail}\nour events: {ours:?}\nlibutp events: {lib:?}")
}

/// What an application does once everything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    /// Nothing: the stream stays open.
    Nothing,
    /// Half-close: a FIN follows the data, reading goes on.
    Shutdown,
    /// Close: a FIN follows the data, the connection goes once it is acknowledged.
    Close,
}

/// An application on our endpoint: writes its bytes, reads everything.
#[derive(Debug)]
struct OurApp {
    h: ConnectionHandle,
    to_send: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    eof: bool,
    /// Done once everything is written and the handshake is through.
    finish: Finish,
    finished: bool,
    /// Close once EOF arrived and everything is written.
    close_on_eof: bool,
    closed_by_app: bool,
    error: Option<StreamError>,
}

impl OurApp {
    fn new(h: ConnectionHandle, to_send: Vec<u8>, finish: Finish) -> Self {
        OurApp {
            h,
            to_send,
            sent: 0,
            received: Vec::new(),
            eof: false,
            finish,
            finished: false,
            close_on_eof: false,
            closed_by_app: false,
            error: None,
        }
    }

    fn pump(&mut self, net: &mut Net) {
        let now = net.now;
        while self.sent < self.to_send.len() {
            let end = self.to_send.len().min(self.sent + 100_000);
            match net.ours.write(now, self.h, &self.to_send[self.sent..end]) {
                Ok(n) => self.sent += n,
                Err(StreamError::WouldBlock) => break,
                Err(e) => {
                    self.error.get_or_insert(e);
                    break;
                }
            }
        }
        // Finish only once the handshake is through: `close` while connecting drops
        // the queued data (see `close_while_connecting_still_delivers_queued_data`).
        let established = net
            .ours
            .connection(self.h)
            .is_some_and(|c| c.is_established());
        let all_sent = self.sent == self.to_send.len();
        if all_sent && !self.finished && established {
            self.finished = true;
            let r = match self.finish {
                Finish::Nothing => Ok(()),
                Finish::Shutdown => net.ours.shutdown(now, self.h),
                Finish::Close => {
                    self.closed_by_app = true;
                    net.ours.close(now, self.h)
                }
            };
            if let Err(e) = r {
                self.error.get_or_insert(e);
            }
        }
        let mut buf = [0u8; 16_384];
        while !self.eof && !self.closed_by_app && self.error.is_none() {
            match net.ours.read(now, self.h, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(StreamError::WouldBlock) => break,
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        if self.close_on_eof && self.eof && all_sent && !self.closed_by_app {
            self.closed_by_app = true;
            if let Err(e) = net.ours.close(now, self.h) {
                self.error.get_or_insert(e);
            }
        }
    }

    fn closed(&self, net: &Net) -> bool {
        net.our_close(self.h).is_some()
    }

    fn closed_cleanly(&self, net: &Net) -> bool {
        net.our_close(self.h) == Some(None)
    }
}

/// An application on libutp: writes its bytes, reads everything, closes as told.
#[derive(Debug)]
struct LibApp {
    socket: Option<SocketId>,
    to_send: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    /// Done once everything is written (only when there is something to write).
    finish: Finish,
    finished: bool,
    /// Close the socket once EOF arrived and everything was written (what a real
    /// libutp application does; libutp frees a socket only after `utp_close`).
    close_on_eof: bool,
    /// A slow reader: read at most this many bytes, once per this interval.
    read_gate: Option<(Duration, usize)>,
    next_read: Option<utp::Instant>,
}

impl LibApp {
    fn new(socket: Option<SocketId>, to_send: Vec<u8>, finish: Finish) -> Self {
        LibApp {
            socket,
            to_send,
            sent: 0,
            received: Vec::new(),
            finish,
            finished: false,
            close_on_eof: true,
            read_gate: None,
            next_read: None,
        }
    }

    fn pump(&mut self, net: &mut Net) {
        let Some(s) = self.socket else { return };
        let now = net.now;
        let may_read = match (self.read_gate, self.next_read) {
            (None, _) => true,
            (Some((every, _)), None) => {
                self.next_read = Some(now + every);
                net.wake_at(now + every);
                false
            }
            (Some((every, _)), Some(t)) if now >= t => {
                self.next_read = Some(now + every);
                net.wake_at(now + every);
                true
            }
            _ => false,
        };
        if may_read {
            match self.read_gate {
                // A slow reader takes at most `chunk` bytes per turn.
                Some((_, chunk)) => {
                    let mut buf = vec![0u8; chunk];
                    let n = net.libutp.read(now, s, &mut buf);
                    self.received.extend_from_slice(&buf[..n]);
                }
                None => {
                    let data = net.libutp.read_all(now, s);
                    self.received.extend(data);
                }
            }
        }
        while self.sent < self.to_send.len() {
            let n = net.libutp.write(now, s, &self.to_send[self.sent..]);
            if n == 0 {
                break;
            }
            self.sent += n;
        }
        let all_sent = self.sent == self.to_send.len();
        if all_sent && !self.to_send.is_empty() && !self.finished {
            self.finished = true;
            match self.finish {
                Finish::Nothing => {}
                Finish::Shutdown => net.libutp.shutdown(now, s),
                Finish::Close => net.libutp.close(now, s),
            }
        }
        let drained = net.libutp.readable_bytes(s) == 0;
        if self.close_on_eof && self.eof(net) && all_sent && drained {
            net.libutp.close(now, s);
        }
    }

    fn stats(&self, net: &Net) -> LibutpSocketStats {
        net.libutp
            .stats(self.socket.expect("socket"))
            .expect("known socket")
    }

    fn eof(&self, net: &Net) -> bool {
        self.socket.is_some() && self.stats(net).eof
    }

    fn destroyed(&self, net: &Net) -> bool {
        self.socket.is_some() && self.stats(net).destroyed
    }
}

/// The first socket libutp accepted, if any.
fn accepted(net: &Net) -> Option<SocketId> {
    net.libutp_events.iter().find_map(|(_, e)| match e {
        LibutpEvent::Accepted { socket, .. } => Some(*socket),
        _ => None,
    })
}

/// The first connection our endpoint reported as incoming, if any.
fn incoming(net: &Net) -> Option<ConnectionHandle> {
    net.our_events
        .iter()
        .find(|(_, _, e)| *e == Event::Incoming)
        .map(|(_, h, _)| *h)
}

/// Every libutp error seen.
fn libutp_errors(net: &Net) -> Vec<LibutpEvent> {
    net.libutp_events
        .iter()
        .filter(|(_, e)| matches!(e, LibutpEvent::Error(..)))
        .map(|(_, e)| *e)
        .collect()
}

/// Lets both sides finish lingering; then nothing may be left on either.
fn assert_all_released(net: &mut Net) {
    net.run_until(Duration::from_secs(30), "both sides release", |n| {
        n.ours.connection_count() == 0 && n.libutp.live_sockets() == 0
    });
}

/// The passive checker finds no broken rule on either side's packets.
fn assert_wire_clean(net: &Net) {
    let report = check(&net.capture());
    assert!(report.utp > 0, "something was recorded");
    assert_eq!(report.malformed, vec![], "every datagram decodes");
    assert_eq!(report.reencode_mismatches, Vec::<usize>::new());
    assert_eq!(report.violations, vec![], "BEP 29 rules on the wire");
}

/// 2 % loss, 1 % duplication and up to 20 ms of jitter (which reorders).
fn lossy() -> Impairment {
    Impairment {
        loss: 0.02,
        duplicate: 0.01,
        jitter: Duration::from_millis(20),
    }
}

/// Ours connects to libutp, sends `len` bytes and finishes as told; libutp reads them
/// and closes on EOF. Runs until both are done with the connection.
fn ours_sends_to_libutp(
    net: &mut Net,
    len: usize,
    finish: Finish,
    limit: Duration,
) -> (OurApp, LibApp) {
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(len, 1), finish);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    net.run_until(limit, "ours → libutp transfer and close", |n| {
        ours.pump(n);
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        lib.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        ours.closed(n) && lib.destroyed(n)
    });
    (ours, lib)
}

/// Covers: X1, X9
#[test]
fn ours_connects_and_sends_1mib_to_libutp() {
    let mut net = Net::new(Config::default(), 1);
    net.record();
    // Ours half-closes after the data; libutp closes on EOF; ours closes once both
    // FINs are through. (A `close` right after the data runs into the core bug of
    // `ours_closes_first_and_libutp_closes_cleanly`.)
    let (ours, lib) =
        ours_sends_to_libutp(&mut net, MIB, Finish::Shutdown, Duration::from_secs(60));
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(net.ours_saw(ours.h, &Event::Connected));
    assert!(net.ours_saw(ours.h, &Event::SendClosed));
    assert!(lib.eof(&net), "libutp saw EOF");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_eq!(lib.stats(&net).bytes_received, MIB as u64);
    assert_all_released(&mut net);
    assert_wire_clean(&net);
}

/// Covers: X1, X3
#[test]
fn libutp_sends_1mib_to_ours_after_a_request() {
    let mut net = Net::new(Config::default(), 2);
    net.record();
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    // A libutp acceptor can write only after the initiator's first DATA (checklist L):
    // ours sends a request first, as a BitTorrent handshake would.
    let request = pattern(68, 9);
    let mut ours = OurApp::new(h, request.clone(), Finish::Nothing);
    ours.close_on_eof = true;
    let mut lib = LibApp::new(None, Vec::new(), Finish::Close);
    let response = pattern(MIB, 2);
    net.run_until(Duration::from_secs(60), "libutp → ours transfer", |n| {
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        // Answer (and then close) once the whole request is in.
        if lib.to_send.is_empty() && lib.received.len() == request.len() {
            lib.to_send = response.clone();
        }
        lib.pump(n);
        ours.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        ours.closed(n) && lib.destroyed(n)
    });
    assert_same(&lib.received, &request, "request");
    assert_same(&ours.received, &response, "libutp → ours");
    assert!(net.ours_saw(h, &Event::Finished));
    // libutp frees its socket once our ACK of its FIN arrives and then answers our
    // FIN with a RESET (checklist L bug 5); a RESET after our FIN ends the close.
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_all_released(&mut net);
    assert_wire_clean(&net);
}

/// libutp connects to ours; once ours has the connection (`Event::Incoming`), both send
/// `len` bytes at once, half-close, read to EOF; libutp closes then.
fn libutp_connects_both_ways(net: &mut Net, len: usize, limit: Duration) -> (LibApp, OurApp) {
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(len, 3), Finish::Shutdown);
    let mut ours: Option<OurApp> = None;
    net.run_until(limit, "bidirectional transfer and close", |n| {
        lib.pump(n);
        if ours.is_none() {
            ours = incoming(n).map(|h| OurApp::new(h, pattern(len, 4), Finish::Shutdown));
        }
        let Some(o) = ours.as_mut() else {
            return false;
        };
        o.pump(n);
        assert_eq!(o.error, None, "our stream failed{}", diagnose(n));
        o.eof && o.closed(n) && lib.destroyed(n)
    });
    let ours = ours.expect("incoming connection");
    assert!(net.libutp_saw(&LibutpEvent::Connected(s)));
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(lib.eof(net), "libutp saw EOF");
    assert!(
        ours.closed_cleanly(net),
        "our close was clean{}",
        diagnose(net)
    );
    assert_eq!(libutp_errors(net), vec![], "libutp errors{}", diagnose(net));
    (lib, ours)
}

/// Covers: X1, X10
#[test]
fn libutp_connects_to_ours_and_both_send_1mib_at_once() {
    let mut net = Net::new(Config::default(), 3);
    net.record();
    libutp_connects_both_ways(&mut net, MIB, Duration::from_secs(60));
    assert_all_released(&mut net);
    assert_wire_clean(&net);
}

/// Starts `lossy()` impairment in both directions once our endpoint has the connection.
///
/// Loss starts only after the handshake: libutp does not recover a lost SYN-ACK
/// (checklist L bug 2: it drops the resent SYN of a connection it knows, and its
/// half-open socket never times out, bug 3), so an impaired handshake can fail for a
/// reason that is libutp's, not ours.
fn impair_after_handshake(net: &mut Net, mut app: impl FnMut(&mut Net)) {
    net.run_until(Duration::from_secs(10), "handshake", |n| {
        app(n);
        n.our_events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::Incoming | Event::Connected))
    });
    net.to_libutp = lossy();
    net.to_ours = lossy();
}

/// Ends the impairment once the first FIN has arrived (`fin_arrived`), so the close
/// runs on a clean wire. Closing under loss meets two things that the deterministic
/// tests cover: a lost ACK of the second FIN runs into the core bug of
/// `lost_ack_of_libutp_fin_is_repaired_while_ours_lingers`, and when libutp closed
/// first it answers our FIN only with a RESET (L bug 5) that it repeats only after
/// 10 s without a packet for that connection (its `rst_info`), so two lost RESETs in a
/// row make ours give up on its idle timeout (seed 11 of
/// `libutp_to_ours_under_loss_and_reordering` did; see
/// `libutp_reset_for_our_fin_is_lost_once`).
fn clean_wire_once_a_fin_arrived(net: &mut Net, fin_arrived: bool) {
    if fin_arrived {
        net.to_libutp = Impairment::NONE;
        net.to_ours = Impairment::NONE;
    }
}

/// Covers: F37, F38
#[test]
fn ours_to_libutp_under_loss_and_reordering() {
    let mut net = Net::new(Config::default(), 4);
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(MIB, 5), Finish::Shutdown);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    impair_after_handshake(&mut net, |n| ours.pump(n));
    let mut retransmits = 0;
    net.run_until(Duration::from_secs(300), "lossy transfer and close", |n| {
        ours.pump(n);
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        lib.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        if let Some(c) = n.ours.connection(h) {
            let st = c.stats();
            retransmits = st.retransmits_timeout + st.retransmits_dup_ack + st.retransmits_sack;
        }
        clean_wire_once_a_fin_arrived(n, lib.eof(n));
        ours.closed(n) && lib.destroyed(n)
    });
    assert!(retransmits > 10, "ours resent lost packets: {retransmits}");
    assert!(net.stats().dropped > 20, "loss happened: {:?}", net.stats());
    assert!(net.stats().duplicated > 5, "duplication happened");
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
}

/// Covers: B16, B17
#[test]
fn libutp_to_ours_under_loss_and_reordering() {
    let mut net = Net::new(Config::default(), 11);
    net.record();
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(MIB, 12), Finish::Close);
    lib.close_on_eof = false;
    impair_after_handshake(&mut net, |n| lib.pump(n));
    let h = incoming(&net).expect("incoming");
    let mut ours = OurApp::new(h, Vec::new(), Finish::Nothing);
    ours.close_on_eof = true;
    net.run_until(Duration::from_secs(300), "lossy transfer and close", |n| {
        lib.pump(n);
        ours.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        clean_wire_once_a_fin_arrived(n, ours.eof);
        ours.closed(n) && lib.destroyed(n)
    });
    assert!(net.stats().dropped > 20, "loss happened: {:?}", net.stats());
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
}

#[test]
fn both_ways_at_once_under_loss_and_reordering() {
    let mut net = Net::new(Config::default(), 5);
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(512 * 1024, 6), Finish::Shutdown);
    // libutp's first DATA completes our side of the handshake.
    impair_after_handshake(&mut net, |n| lib.pump(n));
    let h = incoming(&net).expect("incoming");
    let mut ours = OurApp::new(h, pattern(512 * 1024, 7), Finish::Shutdown);
    net.run_until(
        Duration::from_secs(300),
        "lossy bidirectional transfer",
        |n| {
            lib.pump(n);
            ours.pump(n);
            assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
            clean_wire_once_a_fin_arrived(n, ours.eof || lib.eof(n));
            ours.eof && ours.closed(n) && lib.destroyed(n)
        },
    );
    assert!(net.stats().dropped > 20, "loss happened: {:?}", net.stats());
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
}

/// Covers: D31
#[test]
fn twenty_connections_at_once_both_directions() {
    let mut net = Net::new(Config::default(), 6);
    const N: usize = 10;
    const LEN: usize = 64 * 1024;
    // Ten connections each way, all opened at once; every stream has its own salt
    // (its first byte), which pairs the two ends of each connection.
    let mut ours_out: Vec<(OurApp, LibApp)> = (0..N)
        .map(|i| {
            let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
            (
                OurApp::new(h, pattern(LEN, 10 + i as u8), Finish::Shutdown),
                LibApp::new(None, pattern(LEN, 40 + i as u8), Finish::Shutdown),
            )
        })
        .collect();
    let mut lib_out: Vec<(LibApp, Option<OurApp>)> = (0..N)
        .map(|i| {
            let s = net.libutp.connect(net.now, net.ours_addr);
            (
                LibApp::new(Some(s), pattern(LEN, 70 + i as u8), Finish::Shutdown),
                None,
            )
        })
        .collect();
    let (mut libutp_seen, mut ours_seen) = (0, 0);
    let mut unmatched_accepted: Vec<SocketId> = Vec::new();
    let mut unmatched_incoming: Vec<ConnectionHandle> = Vec::new();
    net.run_until(Duration::from_secs(120), "twenty transfers", |n| {
        for (_, e) in &n.libutp_events[libutp_seen..] {
            if let LibutpEvent::Accepted { socket, .. } = e {
                unmatched_accepted.push(*socket);
            }
        }
        libutp_seen = n.libutp_events.len();
        unmatched_accepted.retain(|&socket| {
            let data = n.libutp.read_all(n.now, socket);
            let Some(&first) = data.first() else {
                return true;
            };
            let (_, l) = ours_out
                .iter_mut()
                .find(|(o, _)| o.to_send[0] == first)
                .expect("a known stream");
            assert!(l.socket.is_none(), "two sockets for one stream");
            l.socket = Some(socket);
            l.received.extend(data);
            false
        });
        for (_, h, e) in &n.our_events[ours_seen..] {
            if *e == Event::Incoming {
                unmatched_incoming.push(*h);
            }
        }
        ours_seen = n.our_events.len();
        unmatched_incoming.retain(|&h| {
            let mut buf = [0u8; 1];
            let Ok(1) = n.ours.read(n.now, h, &mut buf) else {
                return true;
            };
            let idx = lib_out
                .iter()
                .position(|(l, _)| l.to_send[0] == buf[0])
                .expect("a known stream");
            let o = &mut lib_out[idx].1;
            assert!(o.is_none(), "two connections for one stream");
            let mut app = OurApp::new(h, pattern(LEN, 100 + idx as u8), Finish::Shutdown);
            app.received.push(buf[0]);
            *o = Some(app);
            false
        });
        let mut done = true;
        for (o, l) in ours_out.iter_mut() {
            o.pump(n);
            l.pump(n);
            assert_eq!(o.error, None);
            done &= o.eof && o.closed(n) && l.destroyed(n);
        }
        for (l, o) in lib_out.iter_mut() {
            l.pump(n);
            match o {
                Some(o) => {
                    o.pump(n);
                    assert_eq!(o.error, None);
                    done &= o.eof && o.closed(n) && l.destroyed(n);
                }
                None => done = false,
            }
        }
        done
    });
    for (o, l) in &ours_out {
        assert_same(&l.received, &o.to_send, "ours → libutp (ours connected)");
        assert_same(&o.received, &l.to_send, "libutp → ours (ours connected)");
        assert!(o.closed_cleanly(&net));
    }
    for (l, o) in &lib_out {
        let o = o.as_ref().expect("matched");
        assert_same(&l.received, &o.to_send, "ours → libutp (libutp connected)");
        assert_same(&o.received, &l.to_send, "libutp → ours (libutp connected)");
        assert!(o.closed_cleanly(&net));
    }
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_eq!(net.libutp.sockets().len(), 2 * N);
    assert_all_released(&mut net);
}

/// Covers: L5, X3
#[test]
fn libutp_closes_first_and_ours_closes_cleanly() {
    let mut net = Net::new(Config::default(), 7);
    net.record();
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(10_000, 8), Finish::Close);
    lib.close_on_eof = false;
    let mut ours: Option<OurApp> = None;
    net.run_until(Duration::from_secs(30), "libutp closes", |n| {
        lib.pump(n);
        if ours.is_none() {
            ours = incoming(n).map(|h| {
                let mut app = OurApp::new(h, Vec::new(), Finish::Nothing);
                app.close_on_eof = true;
                app
            });
        }
        let Some(o) = ours.as_mut() else { return false };
        o.pump(n);
        o.closed(n) && lib.destroyed(n)
    });
    let ours = ours.expect("incoming");
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    assert!(net.ours_saw(ours.h, &Event::Finished));
    // libutp frees its socket as soon as its FIN is acknowledged and answers our FIN
    // with a RESET (checklist L bug 5): for ours that ends the close normally.
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_all_released(&mut net);
    assert_wire_clean(&net);
}

/// Core bug: after `Endpoint::close`, once our FIN is acknowledged the connection goes
/// to `Linger` (`check_close` with `app_closed`) before the peer's FIN has arrived. In
/// `Linger`, `handle_packet` answers a DATA/FIN only by re-sending an ACK and never
/// advances `ack_nr`, so the peer's FIN is never acknowledged. libutp resends its FIN
/// after its RTO (~3.4 s here), by then our connection is gone (linger 2 RTO, ≥ 1 s),
/// our endpoint answers with a RESET, and libutp reports ECONNRESET for a close that
/// was clean on both sides. The trace (seed 8):
///
/// ```text
///  0.060 ours   -> libutp Fin   seq=21464 ack=51120
///  0.070 libutp -> ours   State seq=51121 ack=21464      (our FIN acked: ours lingers)
///  0.070 libutp -> ours   Fin   seq=51121 ack=21464      (libutp closed on EOF)
///  0.080 ours   -> libutp State seq=21465 ack=51120      <- should be ack=51121
///  3.499 libutp -> ours   Fin   seq=51121 ack=21464      (resent)
///  3.509 ours   -> libutp Reset ack=51121                 -> libutp: ECONNRESET
/// ```
///
/// This is libutp's own bug 5 ("the passive closer's FIN is never ACKed"), which the
/// checklist says we must not have.
/// Covers: L5
#[test]
fn ours_closes_first_and_libutp_closes_cleanly() {
    let mut net = Net::new(Config::default(), 8);
    net.record();
    let (ours, lib) =
        ours_sends_to_libutp(&mut net, 10_000, Finish::Close, Duration::from_secs(30));
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(lib.eof(&net));
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    // libutp's FIN is acknowledged by ours...
    let lib_fin = net
        .trace()
        .iter()
        .filter(|(_, side, _)| *side == Side::Libutp)
        .filter_map(|(_, _, d)| Packet::decode(d).ok().map(|p| p.header))
        .find(|h| h.ty == PacketType::Fin)
        .expect("libutp sent a FIN");
    let acked = net
        .trace()
        .iter()
        .filter(|(_, side, _)| *side == Side::Ours)
        .filter_map(|(_, _, d)| Packet::decode(d).ok().map(|p| p.header))
        .any(|h| h.ty != PacketType::Reset && h.ack_nr == lib_fin.seq_nr);
    assert!(acked, "ours acknowledged libutp's FIN{}", diagnose(&net));
    // ...so libutp sees no reset.
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_all_released(&mut net);
}

/// Core bug: `Endpoint::close` is documented as "queued data and a FIN are
/// delivered", and `connect` says data may be written at once; but `Connection::close`
/// in `SynSent` (or `SynReceived`) terminates at once: the SYN is never sent, the
/// written data is dropped, and the event is `Closed(None)`, a *clean* close.
#[test]
fn close_while_connecting_still_delivers_queued_data() {
    let mut net = Net::new(Config::default(), 12);
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let data = pattern(3_000, 13);
    assert_eq!(net.ours.write(net.now, h, &data), Ok(data.len()));
    net.ours.close(net.now, h).expect("close");
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    net.run_until(
        Duration::from_secs(30),
        "libutp gets the data and EOF",
        |n| {
            if lib.socket.is_none() {
                lib.socket = accepted(n);
            }
            lib.pump(n);
            lib.eof(n) || n.our_close(h).is_some() && n.in_flight() == 0
        },
    );
    assert_same(&lib.received, &data, "ours → libutp");
    assert!(lib.eof(&net), "libutp saw EOF{}", diagnose(&net));
}

/// The first packet type of a datagram (`None` if it does not decode).
fn packet_type(data: &[u8]) -> Option<PacketType> {
    Packet::decode(data).ok().map(|p| p.header.ty)
}

/// Covers: X3
#[test]
fn libutp_reset_for_our_fin_is_lost_once() {
    // libutp closes first and frees its socket as soon as its FIN is ACKed, so it
    // answers our FIN with a RESET only (L bug 5). Lose that RESET: libutp answers the
    // resends of our FIN only after 10 s without one (`rst_info`), so with our FIN
    // resent after 1, 2, 4, 8 and 16 s, the next RESET comes about 30 s later. Ours
    // must still end cleanly (X3: a RESET after our FIN, all data delivered).
    let mut net = Net::new(Config::default(), 15);
    net.record();
    let mut lost = 0;
    net.set_filter(move |to, data| {
        let drop = to == Side::Ours && packet_type(data) == Some(PacketType::Reset) && lost == 0;
        lost += usize::from(drop);
        drop
    });
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(20_000, 16), Finish::Close);
    lib.close_on_eof = false;
    let mut ours: Option<OurApp> = None;
    net.run_until(Duration::from_secs(90), "both closed", |n| {
        lib.pump(n);
        if ours.is_none() {
            ours = incoming(n).map(|h| {
                let mut app = OurApp::new(h, Vec::new(), Finish::Nothing);
                app.close_on_eof = true;
                app
            });
        }
        let Some(o) = ours.as_mut() else { return false };
        o.pump(n);
        o.closed(n) && lib.destroyed(n)
    });
    let ours = ours.expect("incoming");
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    let resets = net
        .trace()
        .iter()
        .filter(|(_, side, d)| *side == Side::Libutp && packet_type(d) == Some(PacketType::Reset))
        .count();
    assert!(
        resets >= 2,
        "the lost RESET was followed by another{}",
        diagnose(&net)
    );
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_all_released(&mut net);
}

/// Core bug: once both FINs are through, ours lingers for `linger_rtos` (2) times its
/// own RTO, at least 1 s (`check_close`). Our RTO on a 10 ms path is its 500 ms floor,
/// so ours lingers 1 s. libutp resends an unacknowledged FIN only after its own RTO,
/// whose floor is 1000 ms and which it checks on a 500 ms tick (X4): 1.0 to 1.5 s and
/// more after backoff. So when our ACK of libutp's FIN is lost, libutp's resent FIN
/// finds no connection, our endpoint answers with a RESET, and libutp's application
/// gets ECONNRESET for a transfer that completed. The trace (seed 16):
///
/// ```text
///  0.160 libutp -> ours   Fin   seq=33598 ack=52591
///  0.170 ours   -> libutp State ack=33598                (lost; ours lingers until 1.17)
///  1.499 libutp -> ours   Fin   seq=33598                (resent after libutp's RTO)
///  1.509 ours   -> libutp Reset ack=33598                -> libutp: ECONNRESET
/// ```
///
/// Lingering must outlast the peer's retransmission timer (checklist L bug 5), not ours.
/// Covers: L5
#[test]
fn lost_ack_of_libutp_fin_is_repaired_while_ours_lingers() {
    // Ours half-closes first; libutp answers, then closes. Our ACK of libutp's FIN is
    // lost: libutp resends its FIN after its RTO (≥ 1 s, checked every 500 ms, X4),
    // and ours, lingering, must still be there to ACK it; a RESET instead would be a
    // "connection reset" for libutp's application.
    let mut net = Net::new(Config::default(), 16);
    net.record();
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let request = pattern(100, 17);
    let mut ours = OurApp::new(h, request.clone(), Finish::Shutdown);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Close);
    lib.close_on_eof = false;
    let mut lib_fin = None;
    let mut lost = 0;
    net.run_until(Duration::from_secs(60), "both closed", |n| {
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        if lib.to_send.is_empty() && lib.received.len() == request.len() {
            lib.to_send = pattern(30_000, 18);
        }
        lib.pump(n);
        ours.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        // Once libutp's FIN is on the wire, lose the first packet of ours that ACKs it.
        if lib_fin.is_none() {
            lib_fin = n
                .trace()
                .iter()
                .filter(|(_, side, _)| *side == Side::Libutp)
                .filter_map(|(_, _, d)| Packet::decode(d).ok().map(|p| p.header))
                .find(|h| h.ty == PacketType::Fin)
                .map(|h| h.seq_nr);
            if let Some(fin) = lib_fin {
                n.set_filter(move |to, data| {
                    let acks_fin = Packet::decode(data).is_ok_and(|p| p.header.ack_nr == fin);
                    let drop = to == Side::Libutp && acks_fin && lost == 0;
                    lost += usize::from(drop);
                    drop
                });
            }
        }
        ours.closed(n) && lib.destroyed(n)
    });
    assert!(lib_fin.is_some());
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    let fins = net
        .trace()
        .iter()
        .filter(|(_, side, d)| *side == Side::Libutp && packet_type(d) == Some(PacketType::Fin))
        .count();
    assert!(fins >= 2, "libutp resent its FIN{}", diagnose(&net));
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert_all_released(&mut net);
}

/// Core bug: everything in our receive buffer counts against one capacity, the
/// out-of-order packets included (`RecvBuffer::insert`), and the window we advertise
/// is that capacity minus everything held. So out-of-order data can take the room the
/// missing packet needs: once the free room is below the size of the hole's packet
/// (packets are never repackaged, E36), its retransmission is dropped (`Insert::Dropped`)
/// every time, the application cannot read past the hole, the window never opens, and
/// the connection is dead: both sides eventually time out. A sender overshoots our
/// window easily: BEP 29 allows it (E34), libutp sends past a zero window after 15 s
/// (X12), and a delayed duplicate of an older ACK (larger window, same `ack_nr` while
/// the hole lasts) makes libutp send past it (it takes the window of any ACK not older
/// than its cumulative ACK). The random sweep found this with a small receive buffer
/// at 3 % loss (libutp, the initiator, had fast retransmit off, L bug 1, so the hole
/// lasted 2 s). Here it is made deterministic: libutp's third DATA packet is held
/// back, libutp fills our window around the hole, one duplicate of our first ACK
/// arrives late, and then the hole's packet is let through.
///
/// A receiver must always take the next in-order packet (it is what lets the
/// application drain the buffer), or make room for it by dropping out-of-order data.
/// Covers: E34, X12
#[test]
fn out_of_order_data_never_locks_out_the_missing_packet() {
    let mut config = Config::default();
    config.recv_buffer_size = 20_000;
    let mut net = Net::new(config, 17);
    net.record();
    let hole: Rc<Cell<Option<u16>>> = Rc::default();
    let release = Rc::new(Cell::new(false));
    let first_sack: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let (hole2, release2, first_sack2) = (hole.clone(), release.clone(), first_sack.clone());
    let mut data_packets = 0;
    net.set_filter(move |to, d| {
        let Ok(p) = Packet::decode(d) else {
            return false;
        };
        match to {
            Side::Ours if p.header.ty == PacketType::Data => {
                data_packets += 1;
                if data_packets == 3 {
                    hole2.set(Some(p.header.seq_nr.0));
                }
                hole2.get() == Some(p.header.seq_nr.0) && !release2.get()
            }
            Side::Libutp if p.selective_ack().is_some() => {
                first_sack2.borrow_mut().get_or_insert_with(|| d.to_vec());
                false
            }
            _ => false,
        }
    });
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(100_000, 19), Finish::Nothing);
    let mut ours: Option<OurApp> = None;
    let pump = |n: &mut Net, lib: &mut LibApp, ours: &mut Option<OurApp>| {
        lib.pump(n);
        if ours.is_none() {
            *ours = incoming(n).map(|h| OurApp::new(h, Vec::new(), Finish::Nothing));
        }
        if let Some(o) = ours.as_mut() {
            o.pump(n);
        }
    };
    // libutp fills our window around the hole and stops.
    net.run_until(
        Duration::from_secs(5),
        "libutp blocked by our window",
        |n| {
            pump(n, &mut lib, &mut ours);
            // Blocked: the window we last advertised leaves room for the hole only.
            let our_window = n
                .trace()
                .iter()
                .rev()
                .find(|(_, side, _)| *side == Side::Ours)
                .and_then(|(_, _, d)| Packet::decode(d).ok())
                .map(|p| p.header.wnd_size);
            hole.get().is_some() && our_window < Some(2 * 1382) && n.in_flight() == 0
        },
    );
    // A late duplicate of our first selective ACK reaches libutp.
    let stale = first_sack.borrow().clone().expect("captured");
    let (now, from) = (net.now, net.ours_addr);
    net.libutp.handle_datagram(now, from, &stale);
    net.run_for(Duration::from_millis(100));
    // The hole's packet gets through from now on.
    release.set(true);
    let deadline = net.now + Duration::from_secs(30);
    let done = |ours: &Option<OurApp>, lib: &LibApp| {
        ours.as_ref()
            .is_some_and(|o| o.received.len() == lib.to_send.len())
    };
    while net.now < deadline && !done(&ours, &lib) {
        pump(&mut net, &mut lib, &mut ours);
        net.step();
    }
    let ours = ours.expect("incoming");
    assert!(
        done(&Some(ours), &lib),
        "stalled behind the hole{}",
        diagnose(&net)
    );
}

/// Ours sends 400 kB to libutp; the first `drops` transmissions of our 100th DATA
/// packet are lost. Returns the network and whether libutp got everything within 30 s.
fn hole_in_our_stream(drops: usize) -> (Net, bool) {
    let mut net = Net::new(Config::default(), 18);
    net.record();
    let mut data_packets = 0;
    let mut hole = None;
    let mut dropped = 0;
    net.set_filter(move |to, d| {
        let Ok(p) = Packet::decode(d) else {
            return false;
        };
        if to != Side::Libutp || p.header.ty != PacketType::Data {
            return false;
        }
        data_packets += 1;
        if data_packets == 100 {
            hole = Some(p.header.seq_nr);
        }
        let drop = hole == Some(p.header.seq_nr) && dropped < drops;
        dropped += usize::from(drop);
        drop
    });
    let len = 400_000;
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(len, 23), Finish::Nothing);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    let deadline = net.now + Duration::from_secs(30);
    while net.now < deadline && lib.received.len() < len {
        ours.pump(&mut net);
        if lib.socket.is_none() {
            lib.socket = accepted(&net);
        }
        lib.pump(&mut net);
        net.step();
    }
    let done = lib.received.len() == len;
    if done {
        assert_same(&lib.received, &ours.to_send, "ours → libutp");
    }
    (net, done)
}

/// Covers: F38
#[test]
fn a_packet_lost_twice_is_recovered() {
    // Lost, then lost again as a fast retransmit (selective ACK): the timeout resends
    // it, oldest first.
    let (net, done) = hole_in_our_stream(2);
    assert!(done, "stalled{}", diagnose(&net));
}

/// Core bug: after a retransmission timeout, the packet the peer's cumulative ACK is
/// waiting for is not resent first when it was lost again. `on_retransmit_timeout`
/// marks only packets not yet waiting for a resend, and appends them behind those
/// still waiting from the previous timeout (one packet goes per timeout, G46). So at
/// the second timeout the oldest packet, already resent once, queues behind every
/// later packet, and each further timeout resends one of those instead. libutp never
/// acknowledges a duplicate of a packet it holds out of order (it returns without
/// scheduling an ACK) and its selective ACK covers only 32 packets (L bug 9), so no
/// ACK comes back, the timeout backs off, and the connection dies (idle timeout or
/// `max_retransmits`) with the hole never filled. Here (seed 18): our packet 61081 is
/// lost, lost again as a fast retransmit, and lost again at the first timeout (0.86 s);
/// the timeouts at 1.86, 3.86, 7.86, 15.86 s resend 61112, 61113, 61114, 61115,
/// which libutp already has, and 61081 never again. The random sweep found this at
/// 6 % to 19 % loss (it also makes ours alternate between the hole and one other
/// packet, halving the useful timeouts). BEP 29 G46 and RFC 6298 5.4: on a timeout,
/// retransmit the earliest unacknowledged packet.
/// Covers: G46
#[test]
fn a_packet_lost_again_after_a_timeout_is_resent_first() {
    let (net, done) = hole_in_our_stream(3);
    assert!(done, "stalled{}", diagnose(&net));
}

/// Covers: C22
#[test]
fn ours_abort_is_a_reset_for_libutp() {
    let mut net = Net::new(Config::default(), 9);
    net.record();
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(5_000, 1), Finish::Nothing);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    lib.close_on_eof = false;
    net.run_until(Duration::from_secs(10), "data arrives", |n| {
        ours.pump(n);
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        lib.pump(n);
        lib.received.len() == 5_000
    });
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    net.ours.abort(net.now, h).expect("abort");
    let s = lib.socket.expect("accepted");
    net.run_until(Duration::from_secs(5), "libutp sees the reset", |n| {
        n.libutp_saw(&LibutpEvent::Error(s, LibutpError::Reset))
    });
    assert!(net.ours_saw(h, &Event::Closed(Some(ConnectionError::Aborted))));
    assert!(!lib.eof(&net), "a reset is not an EOF");
    // libutp bug: a second RESET (ours answers libutp's late ACK for the aborted
    // connection) that arrives after `utp_close` of a reset socket puts it back from
    // CS_DESTROY into CS_RESET, and it is never freed. Close once the wire is quiet.
    net.run_until(Duration::from_secs(2), "quiet wire", |n| n.in_flight() == 0);
    net.libutp.close(net.now, s);
    net.run_until(Duration::from_secs(2), "libutp frees the socket", |n| {
        n.libutp_saw(&LibutpEvent::Destroyed(s))
    });
    assert_all_released(&mut net);
}

/// Covers: X8, L12
#[test]
fn idle_connection_survives_keepalives_both_ways() {
    let mut net = Net::new(Config::default(), 10);
    net.record();
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(100, 1), Finish::Nothing);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    net.run_until(Duration::from_secs(5), "first data", |n| {
        ours.pump(n);
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        lib.pump(n);
        lib.received.len() == 100
    });
    // Three minutes without application data: longer than our 60 s idle timeout and
    // libutp's 29 s keep-alive, several times over.
    let before = net.stats().clone();
    net.run_for(Duration::from_secs(180));
    assert!(
        !ours.closed(&net),
        "ours kept the connection{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    assert!(
        net.stats().sent_by_libutp >= before.sent_by_libutp + 5,
        "libutp keep-alives"
    );
    assert!(
        net.stats().sent_by_ours >= before.sent_by_ours + 5,
        "our keep-alives"
    );
    // And it still carries data both ways.
    ours.to_send.extend(pattern(50_000, 2));
    lib.to_send = pattern(50_000, 3);
    net.run_until(Duration::from_secs(10), "data after idling", |n| {
        ours.pump(n);
        lib.pump(n);
        lib.received.len() == ours.to_send.len() && ours.received.len() == lib.to_send.len()
    });
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    // libutp's keep-alives carry ack_nr - 1 (X8): the passive checker tolerates them
    // after the silence before them, and counts them; nothing else breaks a rule.
    assert_wire_clean(&net);
    let keep_alives = check(&net.capture()).keep_alives;
    assert!(
        keep_alives >= 5,
        "{keep_alives} keep-alives with ack_nr - 1"
    );
}

/// Covers: E33, A10
#[test]
fn slow_libutp_reader_with_a_small_window() {
    let mut net = Net::new(Config::default(), 13);
    // libutp advertises at most 20 000 bytes, and its application reads 4 000 bytes
    // every 50 ms (80 kB/s): ours must keep within the window and never stall.
    net.libutp.set_recv_buffer(20_000);
    let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
    let mut ours = OurApp::new(h, pattern(200_000, 14), Finish::Shutdown);
    let mut lib = LibApp::new(None, Vec::new(), Finish::Nothing);
    lib.read_gate = Some((Duration::from_millis(50), 4_000));
    net.record();
    net.run_until(Duration::from_secs(60), "slow transfer", |n| {
        ours.pump(n);
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        lib.pump(n);
        assert_eq!(ours.error, None, "our stream failed{}", diagnose(n));
        ours.closed(n) && lib.destroyed(n)
    });
    assert_same(&lib.received, &ours.to_send, "ours → libutp");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    // At 80 kB/s, 200 kB take about 2.5 s; a stall (zero window resolved only by a
    // timeout) would take far longer.
    let took = net.our_events.last().map(|(t, _, _)| *t).expect("events") - net.our_events[0].0;
    assert!(
        took < Duration::from_secs(5),
        "transfer took {took:?}{}",
        diagnose(&net)
    );
    assert_wire_clean(&net);
}

/// Covers: A10, X12
#[test]
fn slow_reader_on_ours_with_a_small_window() {
    let mut config = Config::default();
    config.recv_buffer_size = 16_384;
    let mut net = Net::new(config, 14);
    let s = net.libutp.connect(net.now, net.ours_addr);
    let mut lib = LibApp::new(Some(s), pattern(300_000, 15), Finish::Close);
    lib.close_on_eof = false;
    let mut ours: Option<OurApp> = None;
    let mut next_read = net.now;
    net.record();
    net.run_until(Duration::from_secs(60), "slow transfer", |n| {
        lib.pump(n);
        if ours.is_none() {
            ours = incoming(n).map(|h| {
                let mut app = OurApp::new(h, Vec::new(), Finish::Nothing);
                app.close_on_eof = true;
                app
            });
        }
        let Some(o) = ours.as_mut() else { return false };
        // Our application reads 8 000 bytes every 50 ms (160 kB/s).
        if n.now >= next_read {
            next_read = n.now + Duration::from_millis(50);
            n.wake_at(next_read);
            let mut buf = [0u8; 8_000];
            match n.ours.read(n.now, o.h, &mut buf) {
                Ok(0) => o.eof = true,
                Ok(k) => o.received.extend_from_slice(&buf[..k]),
                Err(StreamError::WouldBlock) => {}
                Err(e) => panic!("read failed: {e}{}", diagnose(n)),
            }
            if o.eof && !o.closed_by_app {
                o.closed_by_app = true;
                n.ours.close(n.now, o.h).expect("close");
            }
        }
        o.closed(n) && lib.destroyed(n)
    });
    let ours = ours.expect("incoming");
    assert_same(&ours.received, &lib.to_send, "libutp → ours");
    assert!(
        ours.closed_cleanly(&net),
        "our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "libutp errors{}",
        diagnose(&net)
    );
    // At 160 kB/s, 300 kB take about 2 s; a stall (a window update lost or never
    // sent, resolved only by a timeout) would take far longer.
    let took = net.our_events.last().map(|(t, _, _)| *t).expect("events") - net.our_events[0].0;
    assert!(
        took < Duration::from_secs(4),
        "transfer took {took:?}{}",
        diagnose(&net)
    );
    assert_wire_clean(&net);
}

/// A small seeded generator for the sweep's choices.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        let (v, next) = utp_conformance::vnet::splitmix64(self.0);
        self.0 = next;
        v % n.max(1)
    }
}

/// One random scenario: who connects, path latency, impairment during the transfer,
/// sizes both ways, libutp's receive buffer and reading speed, our send buffer, and how
/// libutp finishes (half-close, or close once EOF arrived). Everything must arrive
/// byte for byte and both sides must close without error.
///
/// Loss is off during the handshake (`impair_after_handshake`) and from the moment
/// the first FIN arrives (`clean_wire_once_a_fin_arrived`). Loss stays
/// at or below 5 %: at higher rates the sweep often runs into the core bug of
/// `a_packet_lost_again_after_a_timeout_is_resent_first` (seed 2022 does even at
/// 4.5 %), and libutp gives up after four timeouts of one packet. Our receive buffer
/// stays at its default size,
/// because a small one runs into `out_of_order_data_never_locks_out_the_missing_packet`.
fn random_scenario(seed: u64) {
    let mut c = Choices(seed);
    let mut config = Config::default();
    if c.below(4) == 0 {
        config.send_buffer_size = 2_000 + c.below(60_000) as usize;
    }
    let mut net = Net::new(config, seed);
    if c.below(3) == 0 {
        net.libutp.set_recv_buffer(3_000 + c.below(60_000) as u32);
    }
    net.latency = Duration::from_millis(1 + c.below(150));
    let imp = Impairment {
        loss: c.below(50) as f64 / 1000.0,
        duplicate: c.below(30) as f64 / 1000.0,
        jitter: Duration::from_millis(c.below(40)),
    };
    let ours_len = c.below(200_000) as usize + 1;
    let lib_len = c.below(200_000) as usize + 1;
    let ours_connects = c.below(2) == 0;
    let lib_finish = if c.below(2) == 0 {
        Finish::Shutdown
    } else {
        Finish::Nothing
    };
    let slow_reader = c.below(3) == 0;
    let what = format!(
        "seed {seed}: latency {:?}, {imp:?}, ours {ours_len} B, libutp {lib_len} B, \
         ours connects: {ours_connects}, libutp {lib_finish:?}, slow libutp reader: {slow_reader}",
        net.latency
    );
    let mut lib = LibApp::new(None, pattern(lib_len, 21), lib_finish);
    if slow_reader {
        lib.read_gate = Some((Duration::from_millis(20), 5_000));
    }
    let mut ours: Option<OurApp> = None;
    if ours_connects {
        let h = net.ours.connect(net.now, net.libutp_addr).expect("connect");
        ours = Some(OurApp::new(h, pattern(ours_len, 22), Finish::Shutdown));
    } else {
        lib.socket = Some(net.libutp.connect(net.now, net.ours_addr));
    }
    let mut impaired = false;
    net.run_until(Duration::from_secs(600), &what, |n| {
        if lib.socket.is_none() {
            lib.socket = accepted(n);
        }
        if ours.is_none() {
            ours = incoming(n).map(|h| OurApp::new(h, pattern(ours_len, 22), Finish::Shutdown));
        }
        lib.pump(n);
        let Some(o) = ours.as_mut() else {
            return false;
        };
        o.pump(n);
        assert_eq!(o.error, None, "{what}: our stream failed{}", diagnose(n));
        let established = n.ours.connection(o.h).is_some_and(|c| c.is_established());
        let a_fin_arrived = o.eof || lib.eof(n);
        if established && !impaired && !a_fin_arrived {
            impaired = true;
            n.to_libutp = imp.clone();
            n.to_ours = imp.clone();
        }
        clean_wire_once_a_fin_arrived(n, a_fin_arrived);
        o.eof && o.closed(n) && lib.destroyed(n)
    });
    let ours = ours.expect("connection");
    assert_same(
        &ours.received,
        &lib.to_send,
        &format!("{what}: libutp → ours"),
    );
    assert_same(
        &lib.received,
        &ours.to_send,
        &format!("{what}: ours → libutp"),
    );
    assert!(
        ours.closed_cleanly(&net),
        "{what}: our close was clean{}",
        diagnose(&net)
    );
    assert_eq!(
        libutp_errors(&net),
        vec![],
        "{what}: libutp errors{}",
        diagnose(&net)
    );
}

#[test]
fn random_scenarios() {
    for seed in 1000..1200 {
        random_scenario(seed);
    }
}
