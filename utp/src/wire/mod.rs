//! The wire format: packets, extensions and wrapping numbers (BEP 29).
//!
//! Decoding borrows the datagram and never panics; encoding writes into a caller's
//! buffer. Decoding and re-encoding a valid packet gives back the same bytes.

mod extension;
mod packet;
mod seq;

pub use extension::{
    Extension, Extensions, SelectiveAck, CLOSE_REASON, EXTENSION_BITS, SELECTIVE_ACK,
};
pub use packet::{
    encode, encoded_len, DecodeError, EncodeError, Header, Packet, PacketType, HEADER_LEN, VERSION,
};
pub use seq::{Micros, SeqNr};

#[cfg(test)]
mod proptests;
