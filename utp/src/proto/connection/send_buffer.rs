//! The send side: bytes the application wrote, and the packets carrying them.
//!
//! All bytes not yet acknowledged live in one ring (`bytes`), whose front is stream
//! offset `base_offset`. Packets refer to ranges of it and never own a copy, so
//! sending allocates nothing per packet, and a resend carries exactly the bytes of the
//! original (BEP 29 E36: data is never repackaged).

use std::collections::VecDeque;

use crate::time::Instant;
use crate::wire::SeqNr;

/// One DATA or FIN packet we sent and the peer has not yet acknowledged cumulatively.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SentPacket {
    /// `true` for the FIN, which carries no payload.
    pub fin: bool,
    /// Stream offset of the first payload byte.
    pub offset: u64,
    /// Payload length.
    pub len: u16,
    /// How many times it was transmitted (Karn's rule: RTT only from 1).
    pub transmissions: u32,
    /// When it was last transmitted.
    pub last_sent: Instant,
    /// Acknowledged selectively (or cumulatively, before release).
    pub acked: bool,
    /// Waiting to be sent again (declared lost, or everything after a timeout).
    pub need_resend: bool,
    /// Already resent once by fast retransmit; further losses wait for the timer.
    pub fast_resent: bool,
}

/// Bytes written by the application and the in-flight packet table.
#[derive(Debug)]
pub(crate) struct SendBuffer {
    bytes: VecDeque<u8>,
    base_offset: u64,
    unsent_offset: u64,
    capacity: usize,
    /// Packets from `oldest_seq` on, one per consecutive sequence number.
    packets: VecDeque<SentPacket>,
    oldest_seq: SeqNr,
    /// Which sequence numbers are acknowledged, bit `seq % MAX_IN_FLIGHT`: a mirror of
    /// `SentPacket::acked` that lets a selective ACK be compared a byte at a time.
    /// Allocated at the first selective ACK; bits of sequence numbers outside the
    /// table are meaningless.
    acked_bits: Option<Box<[u64; MAX_IN_FLIGHT / 64]>>,
}

/// Most packets in the table at once (half the 16-bit space would be ambiguous; this
/// is a quarter). The sender never exceeds it.
pub(crate) const MAX_IN_FLIGHT: usize = 16_384;

impl SendBuffer {
    /// An empty buffer for `capacity` bytes whose first packet will be `first_seq`.
    pub fn new(capacity: usize, first_seq: SeqNr) -> Self {
        SendBuffer {
            bytes: VecDeque::new(),
            base_offset: 0,
            unsent_offset: 0,
            capacity,
            packets: VecDeque::new(),
            oldest_seq: first_seq,
            acked_bits: None,
        }
    }

    /// Appends as much of `data` as fits; returns how many bytes were taken.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        self.bytes.extend(&data[..n]);
        n
    }

    /// Bytes the application may still write.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.bytes.len())
    }

    /// Bytes written but not yet put into any packet.
    pub fn unsent(&self) -> usize {
        (self.base_offset + self.bytes.len() as u64 - self.unsent_offset) as usize
    }

    /// Whether nothing at all is pending: every packet acknowledged, no unsent bytes.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty() && self.bytes.is_empty()
    }

    /// The sequence number of the oldest packet not cumulatively acknowledged.
    pub fn oldest_seq(&self) -> SeqNr {
        self.oldest_seq
    }

    /// The number of packets in the table (unacknowledged or acked out of order).
    pub fn packets_len(&self) -> usize {
        self.packets.len()
    }

    /// The sequence number the next new packet will get.
    pub fn next_seq(&self) -> SeqNr {
        self.oldest_seq + self.packets.len() as u16
    }

    /// Creates a new packet from up to `max_len` unsent bytes (or the FIN when
    /// `fin`), records it and returns its sequence number.
    pub fn push_packet(&mut self, max_len: usize, fin: bool, now: Instant) -> SeqNr {
        let len = if fin {
            0
        } else {
            max_len.min(self.unsent()).min(u16::MAX as usize)
        };
        let seq = self.next_seq();
        if let Some(bits) = &mut self.acked_bits {
            let i = usize::from(seq.0) % MAX_IN_FLIGHT;
            bits[i / 64] &= !(1 << (i % 64));
        }
        self.packets.push_back(SentPacket {
            fin,
            offset: self.unsent_offset,
            len: len as u16,
            transmissions: 0,
            last_sent: now,
            acked: false,
            need_resend: false,
            fast_resent: false,
        });
        self.unsent_offset += len as u64;
        seq
    }

    /// The packet `seq`, if it is in the table.
    pub fn get(&self, seq: SeqNr) -> Option<&SentPacket> {
        self.packets.get(self.index(seq)?)
    }

    /// The packet `seq`, mutably, if it is in the table.
    pub fn get_mut(&mut self, seq: SeqNr) -> Option<&mut SentPacket> {
        let i = self.index(seq)?;
        self.packets.get_mut(i)
    }

    /// Iterates over the first `n` packets of the table (all if fewer), with sequence
    /// numbers; cheap to start from either end.
    pub fn iter_first(
        &self,
        n: usize,
    ) -> impl DoubleEndedIterator<Item = (SeqNr, &SentPacket)> + '_ {
        let first = self.oldest_seq;
        let n = n.min(self.packets.len());
        self.packets
            .range(..n)
            .enumerate()
            .map(move |(i, p)| (first + i as u16, p))
    }

    /// Iterates mutably over the table from the oldest packet.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SeqNr, &mut SentPacket)> + '_ {
        let first = self.oldest_seq;
        self.packets
            .iter_mut()
            .enumerate()
            .map(move |(i, p)| (first + i as u16, p))
    }

    /// Records that `seq` is acknowledged (call with `SentPacket::acked` set).
    pub fn note_acked(&mut self, seq: SeqNr) {
        let bits = self
            .acked_bits
            .get_or_insert_with(|| Box::new([0; MAX_IN_FLIGHT / 64]));
        let i = usize::from(seq.0) % MAX_IN_FLIGHT;
        bits[i / 64] |= 1 << (i % 64);
    }

    /// The acknowledged flags of the 8 sequence numbers from `first` on, bit k for
    /// `first + k`. Only meaningful for sequence numbers in the table.
    pub fn acked_byte(&mut self, first: SeqNr) -> u8 {
        let bits = self
            .acked_bits
            .get_or_insert_with(|| Box::new([0; MAX_IN_FLIGHT / 64]));
        let i = usize::from(first.0) % MAX_IN_FLIGHT;
        let (w, off) = (i / 64, i % 64);
        let lo = bits[w] >> off;
        let hi = if off > 56 {
            bits[(w + 1) % (MAX_IN_FLIGHT / 64)] << (64 - off)
        } else {
            0
        };
        (lo | hi) as u8
    }

    /// Copies the payload of `p` into `out`, which must be `p.len` bytes long.
    pub fn copy_payload(&self, p: &SentPacket, out: &mut [u8]) {
        let start = (p.offset - self.base_offset) as usize;
        let (a, b) = self.bytes.as_slices();
        let end = start + out.len();
        if end <= a.len() {
            out.copy_from_slice(&a[start..end]);
        } else if start >= a.len() {
            out.copy_from_slice(&b[start - a.len()..end - a.len()]);
        } else {
            let split = a.len() - start;
            out[..split].copy_from_slice(&a[start..]);
            out[split..].copy_from_slice(&b[..end - a.len()]);
        }
    }

    /// Removes acknowledged packets from the front and frees their bytes.
    /// Returns how many packets were released.
    pub fn release_acked(&mut self) -> usize {
        let mut released = 0;
        while self.packets.front().is_some_and(|p| p.acked) {
            self.packets.pop_front();
            self.oldest_seq = self.oldest_seq.next();
            released += 1;
        }
        if released > 0 {
            let keep_from = self
                .packets
                .front()
                .map_or(self.unsent_offset, |p| p.offset);
            let drop = (keep_from - self.base_offset) as usize;
            self.bytes.drain(..drop);
            self.base_offset = keep_from;
        }
        released
    }

    /// Index of `seq` in the table, if present.
    fn index(&self, seq: SeqNr) -> Option<usize> {
        let i = usize::from(seq - self.oldest_seq);
        (i < self.packets.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_reference_bytes_and_release_frees_them() {
        let mut b = SendBuffer::new(10, SeqNr(65_535));
        assert_eq!(b.write(b"hello world"), 10);
        assert_eq!(b.free(), 0);
        let s1 = b.push_packet(4, false, Instant::ZERO);
        let s2 = b.push_packet(4, false, Instant::ZERO);
        let s3 = b.push_packet(4, false, Instant::ZERO);
        assert_eq!((s1, s2, s3), (SeqNr(65_535), SeqNr(0), SeqNr(1)));
        assert_eq!(b.unsent(), 0);
        let mut out = [0u8; 2];
        let p3 = *b.get(s3).unwrap();
        assert_eq!(p3.len, 2);
        b.copy_payload(&p3, &mut out);
        assert_eq!(&out, b"rl");
        b.get_mut(s2).unwrap().acked = true;
        assert_eq!(b.release_acked(), 0, "the oldest is not acked yet");
        b.get_mut(s1).unwrap().acked = true;
        assert_eq!(b.release_acked(), 2);
        assert_eq!(b.oldest_seq(), SeqNr(1));
        assert_eq!(b.free(), 8);
        let mut out = [0u8; 2];
        b.copy_payload(&p3, &mut out);
        assert_eq!(&out, b"rl", "offsets survive the release");
        assert_eq!(b.write(b"abc"), 3);
        let s4 = b.push_packet(100, false, Instant::ZERO);
        let p4 = *b.get(s4).unwrap();
        let mut out = [0u8; 3];
        b.copy_payload(&p4, &mut out);
        assert_eq!(&out, b"abc");
        let fin = b.push_packet(100, true, Instant::ZERO);
        assert_eq!(b.get(fin).unwrap().len, 0);
        assert!(b.get(SeqNr(0)).is_none());
    }

    #[test]
    fn acked_bits_mirror_across_word_and_ring_boundaries() {
        let mut b = SendBuffer::new(1 << 20, SeqNr(16_380));
        b.write(&[0; 100]);
        for _ in 0..20 {
            b.push_packet(1, false, Instant::ZERO);
        }
        // 16 380 .. 16 399 wrap the 16 384-bit ring at 16 384.
        for s in [16_381u16, 16_383, 16_384, 16_390] {
            b.note_acked(SeqNr(s));
        }
        assert_eq!(b.acked_byte(SeqNr(16_380)), 0b0001_1010);
        assert_eq!(b.acked_byte(SeqNr(16_384)), 0b0100_0001);
        assert_eq!(b.acked_byte(SeqNr(16_383)), 0b1000_0011);
        // A new packet on a reused ring slot starts unacknowledged.
        let mut c = SendBuffer::new(1 << 20, SeqNr(65_535));
        c.write(&[0; 10]);
        c.note_acked(SeqNr(65_535));
        c.push_packet(1, false, Instant::ZERO);
        assert_eq!(
            c.acked_byte(SeqNr(65_535)),
            0,
            "cleared when the packet was created"
        );
    }
}
