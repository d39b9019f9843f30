//! The driver's output buffer: datagrams from the endpoint, gathered into runs that one
//! [`DatagramSocket::try_send_segments`] call can send (one GSO send on Linux).
//!
//! Each datagram is written by the endpoint straight into its place in one buffer, which
//! is allocated once per driver; consecutive datagrams join a run ("group") when they go
//! to the same destination and have the group's size, or are shorter (then they end it),
//! within the socket's segment limit and the 64 KiB of one UDP send.

use std::io;
use std::net::SocketAddr;

use super::datagram::DatagramSocket;

/// Most bytes one GSO send may carry: the largest UDP payload over IPv4 (the kernel
/// refuses a longer train with `EMSGSIZE`).
pub(crate) const MAX_SEGMENTS_BYTES: usize = 65_507;
/// The kernel's limit on segments per GSO send (`UDP_MAX_SEGMENTS`).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// The output buffer never grows past this (unless one datagram needs more).
const MAX_BUFFER_BYTES: usize = 256 << 10;

/// A run of datagrams to one destination, back to back in the buffer: `count` of
/// `segment` bytes, the last possibly shorter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub destination: SocketAddr,
    pub start: usize,
    pub end: usize,
    pub segment: usize,
    pub count: usize,
    /// Ended by a shorter datagram: nothing may join.
    pub closed: bool,
}

/// The output buffer and its groups; see the module documentation.
#[derive(Debug)]
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    /// Room left for each datagram: the endpoint's `max_packet_size`.
    room: usize,
    /// Bytes in use.
    end: usize,
    groups: Vec<Group>,
    /// The first group not (completely) sent.
    next: usize,
}

impl SendBatch {
    /// A buffer for `datagrams` datagrams of at most `room` bytes (fewer when that would
    /// pass 256 KiB, at least one).
    pub fn new(room: usize, datagrams: usize) -> SendBatch {
        let room = room.max(1);
        let bytes = room
            .saturating_mul(datagrams)
            .min(MAX_BUFFER_BYTES)
            .max(room);
        SendBatch {
            buf: vec![0; bytes],
            room,
            end: 0,
            groups: Vec::with_capacity(bytes / room),
            next: 0,
        }
    }

    /// No room for another datagram: flush first.
    pub fn is_full(&self) -> bool {
        self.end + self.room > self.buf.len()
    }

    /// Nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.next == self.groups.len()
    }

    /// Where the next datagram goes (`max_packet_size` bytes). Not to be called when
    /// [`SendBatch::is_full`].
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..self.end + self.room]
    }

    /// Records the datagram of `len` bytes just written into [`SendBatch::space`], for
    /// `destination`: it joins the last group when it can (`max_segments` is the socket's
    /// current GSO limit), or starts a new one. An empty datagram is dropped: the core
    /// makes one only when it failed to encode a packet.
    pub fn push(&mut self, destination: SocketAddr, len: usize, max_segments: usize) {
        let len = len.min(self.room);
        if len == 0 {
            return;
        }
        let start = self.end;
        self.end += len;
        let max_segments = max_segments.clamp(1, MAX_SEGMENTS);
        if let Some(g) = self.groups[self.next..].last_mut() {
            let joins = g.destination == destination
                && !g.closed
                && g.end == start
                && len <= g.segment
                && g.count < max_segments
                && g.end - g.start + len <= MAX_SEGMENTS_BYTES;
            if joins {
                g.end += len;
                g.count += 1;
                g.closed = len < g.segment;
                return;
            }
        }
        self.groups.push(Group {
            destination,
            start,
            end: start + len,
            segment: len,
            count: 1,
            closed: false,
        });
    }

    /// The groups waiting to be sent.
    #[cfg(test)]
    pub fn groups(&self) -> &[Group] {
        &self.groups[self.next..]
    }

    /// Sends the waiting groups, in order. Returns `false` when the socket's buffer is
    /// full (what is left stays for the next flush), `true` when everything went. A
    /// group the socket refuses with an error other than `WouldBlock` is lost, as any
    /// datagram may be: the protocol recovers.
    pub fn flush<S: DatagramSocket + ?Sized>(&mut self, socket: &S) -> bool {
        while let Some(g) = self.groups.get(self.next).copied() {
            let data = &self.buf[g.start..g.end];
            match socket.try_send_segments(data, g.segment, g.destination) {
                Ok(n) if n >= g.count => self.next += 1,
                Ok(n) => {
                    // The send buffer filled up part way.
                    self.advance(n);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => self.next += 1,
            }
        }
        self.clear();
        true
    }

    /// The first datagram waiting, to wait with when the socket's buffer is full.
    pub fn first_waiting(&self) -> Option<(&[u8], SocketAddr)> {
        let g = self.groups.get(self.next)?;
        let len = g.segment.min(g.end - g.start);
        Some((&self.buf[g.start..g.start + len], g.destination))
    }

    /// Marks the first waiting datagram as done (sent or lost).
    pub fn skip_first(&mut self) {
        self.advance(1);
        if self.is_empty() {
            self.clear();
        }
    }

    /// Marks the first `n` datagrams of the first waiting group as done.
    fn advance(&mut self, n: usize) {
        let Some(g) = self.groups.get_mut(self.next) else {
            return;
        };
        if n >= g.count {
            self.next += 1;
            return;
        }
        g.start = (g.start + n * g.segment).min(g.end);
        g.count -= n;
    }

    fn clear(&mut self) {
        self.groups.clear();
        self.next = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::future::{ready, Future};
    use std::sync::Mutex;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Pushes datagrams (destination port, length), each filled with its index.
    fn batch_of(datagrams: &[(u16, usize)], max_segments: usize) -> SendBatch {
        let mut b = SendBatch::new(1400, 128);
        for (i, &(port, len)) in datagrams.iter().enumerate() {
            assert!(!b.is_full());
            b.space()[..len].fill(i as u8);
            b.push(addr(port), len, max_segments);
        }
        b
    }

    /// (destination port, segment size, count) per group.
    fn shape(b: &SendBatch) -> Vec<(u16, usize, usize)> {
        b.groups()
            .iter()
            .map(|g| (g.destination.port(), g.segment, g.count))
            .collect()
    }

    #[test]
    fn equal_sizes_to_one_destination_merge_and_a_shorter_one_ends_the_run() {
        let b = batch_of(
            &[
                (1, 1400),
                (1, 1400),
                (1, 1400),
                (1, 500), // shorter: joins as the last segment
                (1, 1400),
                (1, 1400),
                (2, 1400), // another destination
                (2, 1400),
                (1, 1400), // back to the first: a new run
                (1, 20),
                (1, 20), // the run ended with the shorter datagram
                (1, 20),
                (1, 1400), // longer than the run's segment: a new run
            ],
            64,
        );
        assert_eq!(
            shape(&b),
            [
                (1, 1400, 4),
                (1, 1400, 2),
                (2, 1400, 2),
                (1, 1400, 2),
                (1, 20, 2),
                (1, 1400, 1)
            ]
        );
        // Back to back in the buffer, in the order they came.
        let g = b.groups();
        assert_eq!((g[0].start, g[0].end), (0, 3 * 1400 + 500));
        for w in g.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }

    #[test]
    fn runs_respect_the_segment_limit_and_64_kib() {
        let b = batch_of(&[(1, 1400); 10], 4);
        assert_eq!(shape(&b), [(1, 1400, 4), (1, 1400, 4), (1, 1400, 2)]);
        // Without offload every datagram goes alone.
        let b = batch_of(&[(1, 1400); 3], 1);
        assert_eq!(shape(&b), [(1, 1400, 1); 3]);
        // 46 datagrams of 1400 bytes fit in 65,507 bytes, 47 do not.
        let b = batch_of(&[(1, 1400); 100], 64);
        assert_eq!(shape(&b), [(1, 1400, 46), (1, 1400, 46), (1, 1400, 8)]);
        // Empty datagrams are not sent.
        let b = batch_of(&[(1, 0), (1, 100), (1, 0), (1, 100)], 64);
        assert_eq!(shape(&b), [(1, 100, 2)]);
    }

    #[test]
    fn the_buffer_is_bounded_and_reports_when_full() {
        let mut b = SendBatch::new(1400, 128);
        assert_eq!(b.buf.len(), 128 * 1400);
        for _ in 0..128 {
            assert!(!b.is_full());
            b.push(addr(1), 1400, 64);
        }
        assert!(b.is_full());
        // Large datagrams: capped at 256 KiB, but always room for one.
        assert_eq!(SendBatch::new(65_507, 128).buf.len(), 256 << 10);
        assert_eq!(SendBatch::new(65_507, 1).buf.len(), 65_507);
    }

    /// Records each send call; refuses with `WouldBlock` once `room` datagrams are out.
    struct Recorder {
        max_segments: usize,
        room: Mutex<usize>,
        calls: Mutex<Vec<(u16, usize, Vec<u8>)>>,
    }

    impl Recorder {
        fn new(max_segments: usize, room: usize) -> Recorder {
            Recorder {
                max_segments,
                room: Mutex::new(room),
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl DatagramSocket for Recorder {
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(addr(9))
        }
        fn recv_from<'a>(
            &'a self,
            _buf: &'a mut [u8],
        ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
            std::future::pending()
        }
        fn try_recv_from(&self, _buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn send_to<'a>(
            &'a self,
            buf: &'a [u8],
            target: SocketAddr,
        ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
            self.calls
                .lock()
                .unwrap()
                .push((target.port(), buf.len(), buf.to_vec()));
            ready(Ok(buf.len()))
        }
        fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
            self.try_send_segments(buf, buf.len(), target)
                .map(|_| buf.len())
        }
        fn max_send_segments(&self) -> usize {
            self.max_segments
        }
        fn try_send_segments(
            &self,
            buf: &[u8],
            segment_size: usize,
            target: SocketAddr,
        ) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let count = buf.len().div_ceil(segment_size);
            let n = count.min(*room).min(self.max_segments);
            *room -= n;
            let bytes = (n * segment_size).min(buf.len());
            self.calls
                .lock()
                .unwrap()
                .push((target.port(), segment_size, buf[..bytes].to_vec()));
            Ok(n)
        }
    }

    #[test]
    fn flush_sends_each_group_in_one_call_and_resumes_after_a_full_buffer() {
        // Datagram i is filled with byte i: what went out shows the order.
        let datagrams = [(1, 1400), (1, 1400), (1, 700), (2, 100), (1, 1400)];
        let mut b = batch_of(&datagrams, 64);
        let s = Recorder::new(64, 4);
        assert!(!b.flush(&s), "room for 4 of 5 datagrams");
        assert!(!b.is_empty());
        let (first, to) = b.first_waiting().unwrap();
        assert_eq!((first.len(), to.port(), first[0]), (1400, 1, 4));
        // Waiting sends that datagram alone; then nothing is left.
        let (d, to) = b.first_waiting().map(|(d, to)| (d.to_vec(), to)).unwrap();
        drop(s.send_to(&d, to));
        b.skip_first();
        assert!(b.is_empty());
        assert!(b.flush(&s));
        let calls = s.calls.lock().unwrap();
        let summary: Vec<_> = calls
            .iter()
            .map(|(port, seg, data)| (*port, *seg, data.len(), data[0]))
            .collect();
        assert_eq!(
            summary,
            [(1, 1400, 3500, 0), (2, 100, 100, 3), (1, 1400, 1400, 4)]
        );
        assert!(calls[0].2[1400..2800].iter().all(|&x| x == 1));
        assert!(calls[0].2[2800..].iter().all(|&x| x == 2));
    }

    #[test]
    fn a_partial_send_resumes_inside_the_group() {
        let mut b = batch_of(&[(1, 1400); 6], 64);
        let s = Recorder::new(64, 4);
        assert!(!b.flush(&s));
        assert_eq!(shape(&b), [(1, 1400, 2)]);
        assert_eq!(b.first_waiting().unwrap().0[0], 4);
        *s.room.lock().unwrap() = 10;
        assert!(b.flush(&s));
        assert!(b.is_empty() && !b.is_full());
        let calls = s.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[1].2.len(), calls[1].2[0]), (2800, 4));
    }
}
