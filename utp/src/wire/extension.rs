//! Header extensions: the linked list after the 20-byte header.
//!
//! BEP 29: "The extension field [...] the type of the first extension in a linked list
//! of extension headers. 0 means no extension." Each extension is
//! `[next_extension u8][len u8][len bytes]`. Known kinds:
//!
//! - 1, selective ACK (BEP 29): a bitmask; bit *k* (LSB first within each byte) stands
//!   for `ack_nr + 2 + k`. BEP 29 asks for a multiple of 4 bytes; libtorrent sends 1, 2
//!   or 3, so any non-empty length is accepted.
//! - 2, "extension bits" (libutp): 8 bytes, all zero in practice.
//! - 3, close reason (libtorrent): 2 reserved bytes and a `u16` reason code.
//!
//! Anything else is kept as raw bytes and skipped, so that re-encoding is exact.

use core::fmt;

use super::seq::SeqNr;

/// Extension type 1: selective ACK.
pub const SELECTIVE_ACK: u8 = 1;
/// Extension type 2: libutp's extension bits.
pub const EXTENSION_BITS: u8 = 2;
/// Extension type 3: libtorrent's close reason.
pub const CLOSE_REASON: u8 = 3;

/// One extension of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension<'a> {
    /// Type 1: selective ACK.
    SelectiveAck(SelectiveAck<'a>),
    /// Type 2: libutp's extension bits, kept as they came.
    ExtensionBits(&'a [u8]),
    /// Type 3 with a 4-byte body: libtorrent's close reason.
    CloseReason {
        /// The two reserved bytes, kept for exact re-encoding.
        reserved: u16,
        /// The reason code.
        code: u16,
    },
    /// Any other extension (or type 3 with another length), kept as raw bytes.
    Unknown {
        /// The extension type.
        kind: u8,
        /// The body.
        data: &'a [u8],
    },
}

impl Extension<'_> {
    /// The extension's type number.
    pub fn kind(&self) -> u8 {
        match self {
            Extension::SelectiveAck(_) => SELECTIVE_ACK,
            Extension::ExtensionBits(_) => EXTENSION_BITS,
            Extension::CloseReason { .. } => CLOSE_REASON,
            Extension::Unknown { kind, .. } => *kind,
        }
    }

    /// The length of the body (without the two-byte extension header).
    pub fn body_len(&self) -> usize {
        match self {
            Extension::SelectiveAck(s) => s.bitmask.len(),
            Extension::ExtensionBits(b) => b.len(),
            Extension::CloseReason { .. } => 4,
            Extension::Unknown { data, .. } => data.len(),
        }
    }

    /// Writes the body into `out`, which is exactly [`Extension::body_len`] long.
    pub(crate) fn write_body(&self, out: &mut [u8]) {
        match self {
            Extension::SelectiveAck(s) => out.copy_from_slice(s.bitmask),
            Extension::ExtensionBits(b) => out.copy_from_slice(b),
            Extension::CloseReason { reserved, code } => {
                out[..2].copy_from_slice(&reserved.to_be_bytes());
                out[2..4].copy_from_slice(&code.to_be_bytes());
            }
            Extension::Unknown { data, .. } => out.copy_from_slice(data),
        }
    }
}

impl fmt::Display for Extension<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extension::SelectiveAck(s) => fmt::Display::fmt(s, f),
            Extension::ExtensionBits(b) => write!(f, "ext-bits {}", b.len()),
            Extension::CloseReason { code, .. } => write!(f, "close-reason {code}"),
            Extension::Unknown { kind, data } => write!(f, "ext{kind} {}", data.len()),
        }
    }
}

/// A selective-ACK bitmask. Bit *k* acknowledges `ack_nr + 2 + k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectiveAck<'a> {
    bitmask: &'a [u8],
}

impl<'a> SelectiveAck<'a> {
    /// A selective ACK with this bitmask (least significant bit first in each byte).
    pub const fn new(bitmask: &'a [u8]) -> Self {
        SelectiveAck { bitmask }
    }

    /// The raw bitmask.
    pub const fn bitmask(&self) -> &'a [u8] {
        self.bitmask
    }

    /// How many sequence numbers the bitmask covers.
    pub const fn len_bits(&self) -> usize {
        self.bitmask.len() * 8
    }

    /// Whether bit `k` is set, i.e. whether `ack_nr + 2 + k` was received.
    pub fn bit(&self, k: usize) -> bool {
        self.bitmask
            .get(k / 8)
            .is_some_and(|byte| byte & (1 << (k % 8)) != 0)
    }

    /// Whether `seq` is acknowledged by this bitmask in a packet whose `ack_nr` is `ack_nr`.
    pub fn acks(&self, ack_nr: SeqNr, seq: SeqNr) -> bool {
        let k = seq.0.wrapping_sub(ack_nr.0).wrapping_sub(2);
        self.bit(usize::from(k))
    }

    /// The sequence numbers acknowledged, in increasing order, given the packet's `ack_nr`.
    pub fn acked(&self, ack_nr: SeqNr) -> impl Iterator<Item = SeqNr> + 'a {
        let bitmask = self.bitmask;
        (0..bitmask.len() * 8)
            .filter(move |&k| bitmask[k / 8] & (1 << (k % 8)) != 0)
            .map(move |k| ack_nr + 2 + k as u16)
    }
}

impl fmt::Display for SelectiveAck<'_> {
    /// `sack 32: +2 +4` lists the set bits as offsets from `ack_nr` (at most 16).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sack {}:", self.len_bits())?;
        let set = (0..self.len_bits()).filter(|&k| self.bit(k));
        for (i, k) in set.enumerate() {
            if i == 16 {
                return write!(f, " …");
            }
            write!(f, " +{}", k + 2)?;
        }
        Ok(())
    }
}

/// Iterator over a validated extension chain; produced by [`super::Packet::extensions`].
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Extensions<'a> {
    /// An iterator over `chain`, whose first extension has type `first`. The chain must
    /// already be validated; a malformed one simply ends the iteration.
    pub(crate) fn new(first: u8, chain: &'a [u8]) -> Self {
        Extensions {
            kind: first,
            rest: chain,
        }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Extension<'a>> {
        if self.kind == 0 {
            return None;
        }
        let [next, len, rest @ ..] = self.rest else {
            self.kind = 0;
            return None;
        };
        let Some((body, rest)) = rest.split_at_checked(usize::from(*len)) else {
            self.kind = 0;
            return None;
        };
        let kind = self.kind;
        self.kind = *next;
        self.rest = rest;
        Some(match (kind, body) {
            (SELECTIVE_ACK, _) => Extension::SelectiveAck(SelectiveAck::new(body)),
            (EXTENSION_BITS, _) => Extension::ExtensionBits(body),
            (CLOSE_REASON, &[r0, r1, c0, c1]) => Extension::CloseReason {
                reserved: u16::from_be_bytes([r0, r1]),
                code: u16::from_be_bytes([c0, c1]),
            },
            _ => Extension::Unknown { kind, data: body },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Checklist B16: bit k, byte k/8, LSB first, stands for ack_nr + 2 + k.
    /// Covers: B16
    #[test]
    fn bit_order_is_lsb_first_from_ack_plus_two() {
        let mask = [0b0000_0001, 0b1000_0000, 0, 0b0000_0010];
        let s = SelectiveAck::new(&mask);
        let ack = SeqNr(65_534);
        let got: Vec<u16> = s.acked(ack).map(|n| n.0).collect();
        // k = 0 → 65 536 ≡ 0; k = 15 → 15; k = 25 → 25.
        assert_eq!(got, vec![0, 15, 25]);
        assert!(!s.acks(ack, ack.next()), "ack_nr + 1 is implicitly missing");
        assert!(s.acks(ack, SeqNr(0)));
        assert!(!s.acks(ack, SeqNr(1)));
        assert!(
            !s.acks(ack, ack),
            "ack_nr itself maps to k = 65 534, outside the mask"
        );
    }

    // Checklist B15: bitmasks longer than 32 bits, and libtorrent's 1-3 byte ones.
    /// Covers: B15, L9
    #[test]
    fn any_length_is_usable() {
        for len in 1..=64usize {
            let mut mask = vec![0u8; len];
            mask[len - 1] = 0x80;
            let s = SelectiveAck::new(&mask);
            assert_eq!(s.len_bits(), len * 8);
            let last = SeqNr(100) + 2 + (len * 8 - 1) as u16;
            assert_eq!(s.acked(SeqNr(100)).collect::<Vec<_>>(), vec![last]);
        }
    }

    /// Covers: B14, L7
    #[test]
    fn malformed_chain_ends_iteration() {
        let mut it = Extensions::new(1, &[0, 9, 1]);
        assert_eq!(it.next(), None);
    }
}
