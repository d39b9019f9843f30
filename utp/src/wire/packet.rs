//! The uTP packet: a 20-byte header, a chain of extensions, and a payload.
//!
//! ```text
//!  0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! [`Packet::decode`] never panics: any byte string either decodes or yields a
//! [`DecodeError`] that names what is wrong. A decoded packet borrows the datagram
//! (zero copy) and re-encodes to exactly the same bytes.

use core::fmt;

use super::extension::{Extension, Extensions, SelectiveAck};
use super::seq::{Micros, SeqNr};

/// Length of the fixed uTP header.
pub const HEADER_LEN: usize = 20;

/// The protocol version this crate speaks (BEP 29: "The current version is 1").
pub const VERSION: u8 = 1;

/// The five uTP packet types, with their BEP 29 numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// `ST_DATA`: a packet carrying payload.
    Data = 0,
    /// `ST_FIN`: the last packet of a direction; its `seq_nr` is the end of the stream.
    Fin = 1,
    /// `ST_STATE`: an acknowledgement with no payload; does not consume a `seq_nr`.
    State = 2,
    /// `ST_RESET`: the peer has no state for this connection; terminate at once.
    Reset = 3,
    /// `ST_SYN`: opens a connection.
    Syn = 4,
}

impl PacketType {
    /// The type for a 4-bit type value, if it is one of the five defined types.
    pub const fn from_nibble(n: u8) -> Option<PacketType> {
        Some(match n {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }

    /// The short upper-case name used in traces (`DATA`, `FIN`, `STATE`, `RESET`, `SYN`).
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Data => "DATA",
            PacketType::Fin => "FIN",
            PacketType::State => "STATE",
            PacketType::Reset => "RESET",
            PacketType::Syn => "SYN",
        }
    }
}

/// The fields of the 20-byte header, except `version` (always [`VERSION`]) and the
/// first-extension byte (derived from the extension chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Packet type.
    pub ty: PacketType,
    /// `connection_id`.
    pub conn_id: u16,
    /// `timestamp_microseconds`: the sender's µs clock at transmission.
    pub timestamp: Micros,
    /// `timestamp_difference_microseconds`: the sender's last one-way delay sample.
    pub timestamp_diff: Micros,
    /// `wnd_size`: bytes free in the sender's receive buffer.
    pub wnd_size: u32,
    /// `seq_nr`.
    pub seq_nr: SeqNr,
    /// `ack_nr`.
    pub ack_nr: SeqNr,
}

/// Why a datagram is not a valid uTP version 1 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the 20-byte header.
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// The version nibble is not 1 (libutp's old-format RESET has version 0).
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The type nibble is not one of the five packet types.
    UnknownType {
        /// The type found.
        ty: u8,
    },
    /// An extension's header or body runs past the end of the datagram.
    TruncatedExtension {
        /// Byte offset of the extension's header in the datagram.
        offset: usize,
    },
    /// A selective-ACK extension with an empty bitmask.
    EmptySelectiveAck {
        /// Byte offset of the extension's header in the datagram.
        offset: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::TooShort { len } => {
                write!(
                    f,
                    "datagram of {len} bytes is shorter than the 20-byte uTP header"
                )
            }
            DecodeError::UnsupportedVersion { version } => {
                write!(f, "uTP version {version} is not supported (only version 1)")
            }
            DecodeError::UnknownType { ty } => write!(f, "unknown uTP packet type {ty}"),
            DecodeError::TruncatedExtension { offset } => {
                write!(
                    f,
                    "extension at byte {offset} runs past the end of the datagram"
                )
            }
            DecodeError::EmptySelectiveAck { offset } => {
                write!(f, "selective ACK at byte {offset} has an empty bitmask")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than the encoded packet.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// An extension body is longer than 255 bytes, or its type is 0.
    BadExtension,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "packet needs {needed} bytes but the buffer has {available}"
                )
            }
            EncodeError::BadExtension => {
                write!(
                    f,
                    "extension body longer than 255 bytes or extension type 0"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A decoded packet that borrows the datagram it came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The header fields.
    pub header: Header,
    first_extension: u8,
    extension_chain: &'a [u8],
    /// The payload: everything after the extension chain.
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Decodes a datagram. Never panics; every malformed input yields a [`DecodeError`].
    pub fn decode(buf: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let Some((head, _)) = buf.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort { len: buf.len() });
        };
        let version = head[0] & 0x0f;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let ty = PacketType::from_nibble(head[0] >> 4)
            .ok_or(DecodeError::UnknownType { ty: head[0] >> 4 })?;
        let u16_at = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
        let u32_at =
            |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let header = Header {
            ty,
            conn_id: u16_at(2),
            timestamp: Micros(u32_at(4)),
            timestamp_diff: Micros(u32_at(8)),
            wnd_size: u32_at(12),
            seq_nr: SeqNr(u16_at(16)),
            ack_nr: SeqNr(u16_at(18)),
        };
        let first_extension = head[1];
        // Walk the chain once to validate it (BEP 29: `[next u8][len u8][len bytes]`).
        let mut kind = first_extension;
        let mut pos = HEADER_LEN;
        while kind != 0 {
            let offset = pos;
            let (Some(&next), Some(&len)) = (buf.get(pos), buf.get(pos + 1)) else {
                return Err(DecodeError::TruncatedExtension { offset });
            };
            let end = pos + 2 + usize::from(len);
            if end > buf.len() {
                return Err(DecodeError::TruncatedExtension { offset });
            }
            if kind == super::extension::SELECTIVE_ACK && len == 0 {
                return Err(DecodeError::EmptySelectiveAck { offset });
            }
            kind = next;
            pos = end;
        }
        Ok(Packet {
            header,
            first_extension,
            extension_chain: &buf[HEADER_LEN..pos],
            payload: &buf[pos..],
        })
    }

    /// The extensions, in the order they appear on the wire.
    pub fn extensions(&self) -> Extensions<'a> {
        Extensions::new(self.first_extension, self.extension_chain)
    }

    /// The selective-ACK extension, if the packet carries one.
    pub fn selective_ack(&self) -> Option<SelectiveAck<'a>> {
        if self.first_extension == 0 {
            return None;
        }
        self.extensions().find_map(|e| match e {
            Extension::SelectiveAck(s) => Some(s),
            _ => None,
        })
    }

    /// The type of the first extension (0 when there is none).
    pub fn first_extension(&self) -> u8 {
        self.first_extension
    }

    /// The length of this packet when encoded: identical to the decoded datagram.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.extension_chain.len() + self.payload.len()
    }

    /// Re-encodes this packet into `buf`, byte for byte as it was decoded.
    /// Returns the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.encoded_len();
        let available = buf.len();
        let out = buf.get_mut(..len).ok_or(EncodeError::BufferTooSmall {
            needed: len,
            available,
        })?;
        write_header(&self.header, self.first_extension, out);
        let ext_end = HEADER_LEN + self.extension_chain.len();
        out[HEADER_LEN..ext_end].copy_from_slice(self.extension_chain);
        out[ext_end..].copy_from_slice(self.payload);
        Ok(len)
    }
}

/// The encoded length of a packet with these extensions and `payload_len` payload bytes.
pub fn encoded_len(extensions: &[Extension<'_>], payload_len: usize) -> usize {
    HEADER_LEN + extensions.iter().map(|e| 2 + e.body_len()).sum::<usize>() + payload_len
}

/// Encodes a packet into `buf` and returns the number of bytes written.
///
/// Extensions are written in the order given; put the selective ACK first when talking
/// to libutp, which drops packets whose first extension type is 3 or more.
pub fn encode(
    header: &Header,
    extensions: &[Extension<'_>],
    payload: &[u8],
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let len = encoded_len(extensions, payload.len());
    let available = buf.len();
    let out = buf.get_mut(..len).ok_or(EncodeError::BufferTooSmall {
        needed: len,
        available,
    })?;
    let first = extensions.first().map_or(0, Extension::kind);
    let mut pos = HEADER_LEN;
    for (i, ext) in extensions.iter().enumerate() {
        let body_len = u8::try_from(ext.body_len()).map_err(|_| EncodeError::BadExtension)?;
        if ext.kind() == 0 {
            return Err(EncodeError::BadExtension);
        }
        out[pos] = extensions.get(i + 1).map_or(0, Extension::kind);
        out[pos + 1] = body_len;
        ext.write_body(&mut out[pos + 2..pos + 2 + usize::from(body_len)]);
        pos += 2 + usize::from(body_len);
    }
    write_header(header, first, out);
    out[pos..].copy_from_slice(payload);
    Ok(len)
}

/// Writes the 20-byte header into `out[..20]`; `out` must be at least that long.
fn write_header(h: &Header, first_extension: u8, out: &mut [u8]) {
    out[0] = ((h.ty as u8) << 4) | VERSION;
    out[1] = first_extension;
    out[2..4].copy_from_slice(&h.conn_id.to_be_bytes());
    out[4..8].copy_from_slice(&h.timestamp.0.to_be_bytes());
    out[8..12].copy_from_slice(&h.timestamp_diff.0.to_be_bytes());
    out[12..16].copy_from_slice(&h.wnd_size.to_be_bytes());
    out[16..18].copy_from_slice(&h.seq_nr.0.to_be_bytes());
    out[18..20].copy_from_slice(&h.ack_nr.0.to_be_bytes());
}

impl fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One line, in the manner of tcpdump:
/// `DATA id 4660 seq 7 ack 3 wnd 1048576 ts 1000 tsd 250 [sack 5 bits: 1 0 1] len 1000`.
impl fmt::Display for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        write!(
            f,
            "{} id {} seq {} ack {} wnd {} ts {} tsd {}",
            h.ty.name(),
            h.conn_id,
            h.seq_nr,
            h.ack_nr,
            h.wnd_size,
            h.timestamp.0,
            h.timestamp_diff.0
        )?;
        for ext in self.extensions() {
            write!(f, " [{ext}]")?;
        }
        write!(f, " len {}", self.payload.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::extension::{CLOSE_REASON, EXTENSION_BITS};

    fn header(ty: PacketType) -> Header {
        Header {
            ty,
            conn_id: 0x1234,
            timestamp: Micros(0x0102_0304),
            timestamp_diff: Micros(0x0506_0708),
            wnd_size: 0x090a_0b0c,
            seq_nr: SeqNr(0x0d0e),
            ack_nr: SeqNr(0x0f10),
        }
    }

    // Checklist A1, A2, A6: 20 bytes, big-endian fields in BEP 29 order, type/version nibbles.
    /// Covers: A1, A2, A5, A6
    #[test]
    fn header_layout_is_bep29() {
        let mut buf = [0u8; 64];
        let n = encode(&header(PacketType::Syn), &[], &[], &mut buf).unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            &buf[..20],
            &[
                0x41, 0x00, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x0d, 0x0e, 0x0f,
                0x10
            ]
        );
        let p = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(p.header, header(PacketType::Syn));
        assert!(p.payload.is_empty());
    }

    // Checklist A2, A4: every type encodes into the high nibble, version 1 in the low.
    /// Covers: A2, A4
    #[test]
    fn all_five_types_round_trip() {
        for (ty, byte0) in [
            (PacketType::Data, 0x01),
            (PacketType::Fin, 0x11),
            (PacketType::State, 0x21),
            (PacketType::Reset, 0x31),
            (PacketType::Syn, 0x41),
        ] {
            let mut buf = [0u8; 32];
            let n = encode(&header(ty), &[], b"x", &mut buf).unwrap();
            assert_eq!(buf[0], byte0);
            let p = Packet::decode(&buf[..n]).unwrap();
            assert_eq!(p.header.ty, ty);
            assert_eq!(p.payload, b"x");
        }
    }

    // Checklist A3: only version 1 is processed.
    /// Covers: A3
    #[test]
    fn other_versions_are_rejected() {
        let mut buf = [0u8; 20];
        encode(&header(PacketType::Data), &[], &[], &mut buf).unwrap();
        for v in (0..16u8).filter(|&v| v != 1) {
            buf[0] = v;
            assert_eq!(
                Packet::decode(&buf),
                Err(DecodeError::UnsupportedVersion { version: v })
            );
        }
    }

    // Checklist A4: types 5..15 are invalid.
    /// Covers: A4
    #[test]
    fn unknown_types_are_rejected() {
        let mut buf = [0u8; 20];
        for t in 5..16u8 {
            buf[0] = (t << 4) | 1;
            assert_eq!(
                Packet::decode(&buf),
                Err(DecodeError::UnknownType { ty: t })
            );
        }
    }

    /// Covers: A1, L8
    #[test]
    fn short_datagrams_are_rejected() {
        for len in 0..20 {
            let buf = vec![0x01; len];
            assert_eq!(Packet::decode(&buf), Err(DecodeError::TooShort { len }));
        }
    }

    // libutp answers some packets with a 23-byte version-0 RESET in its old format.
    /// Covers: A3
    #[test]
    fn libutp_version0_reset_is_rejected_cleanly() {
        let old = [
            0x00, 0x00, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            Packet::decode(&old),
            Err(DecodeError::UnsupportedVersion { version: 0 })
        );
    }

    // Checklist B12, B13, B15: a chain with SACK (8 bytes), extension bits and an
    // unknown extension; the unknown one is kept as raw bytes and skipped.
    /// Covers: A5, B12, B13, B15, X9
    #[test]
    fn extension_chain_round_trips_exactly() {
        let mask = [0b0000_0101, 0, 0, 0x80, 1, 0, 0, 0];
        let exts = [
            Extension::SelectiveAck(SelectiveAck::new(&mask)),
            Extension::ExtensionBits(&[0; 8]),
            Extension::Unknown {
                kind: 77,
                data: b"hello",
            },
            Extension::CloseReason {
                reserved: 0,
                code: 15,
            },
        ];
        let mut buf = [0u8; 128];
        let n = encode(&header(PacketType::State), &exts, b"", &mut buf).unwrap();
        assert_eq!(n, 20 + 10 + 10 + 7 + 6);
        assert_eq!(buf[1], 1, "header names the first extension");
        let p = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(p.extensions().collect::<Vec<_>>(), exts);
        assert_eq!(p.selective_ack().unwrap().bitmask(), &mask);
        let mut again = [0u8; 128];
        assert_eq!(p.encode(&mut again).unwrap(), n);
        assert_eq!(&again[..n], &buf[..n]);
        let _ = (EXTENSION_BITS, CLOSE_REASON);
    }

    // Checklist B14: a truncated chain is rejected, never read past.
    /// Covers: B14, L7
    #[test]
    fn truncated_extensions_are_rejected() {
        let mut buf = [0u8; 64];
        let n = encode(
            &header(PacketType::State),
            &[Extension::SelectiveAck(SelectiveAck::new(&[1, 2, 3, 4]))],
            &[],
            &mut buf,
        )
        .unwrap();
        for cut in 20..n {
            assert_eq!(
                Packet::decode(&buf[..cut]),
                Err(DecodeError::TruncatedExtension { offset: 20 }),
                "cut at {cut}"
            );
        }
        // A chain that claims a next extension which is not there.
        buf[20] = 9;
        assert_eq!(
            Packet::decode(&buf[..n]),
            Err(DecodeError::TruncatedExtension { offset: n })
        );
    }

    /// Covers: B15
    #[test]
    fn empty_selective_ack_is_rejected() {
        let mut buf = [0u8; 22];
        encode(&header(PacketType::State), &[], &[], &mut buf).unwrap();
        buf[1] = 1;
        assert_eq!(
            Packet::decode(&buf),
            Err(DecodeError::EmptySelectiveAck { offset: 20 })
        );
    }

    #[test]
    fn encode_checks_the_buffer() {
        let mut buf = [0u8; 24];
        assert_eq!(
            encode(&header(PacketType::Data), &[], &[0; 10], &mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: 30,
                available: 24
            })
        );
        let big = [0u8; 256];
        assert_eq!(
            encode(
                &header(PacketType::Data),
                &[Extension::Unknown {
                    kind: 9,
                    data: &big
                }],
                &[],
                &mut [0u8; 400]
            ),
            Err(EncodeError::BadExtension)
        );
    }

    #[test]
    fn display_is_one_line() {
        let mut buf = [0u8; 64];
        let n = encode(
            &header(PacketType::Data),
            &[Extension::SelectiveAck(SelectiveAck::new(&[
                0b101, 0, 0, 0,
            ]))],
            b"abc",
            &mut buf,
        )
        .unwrap();
        let s = Packet::decode(&buf[..n]).unwrap().to_string();
        assert_eq!(
            s,
            "DATA id 4660 seq 3342 ack 3856 wnd 151653132 ts 16909060 tsd 84281096 \
             [sack 32: +2 +4] len 3"
        );
        assert!(!s.contains('\n'));
    }
}
