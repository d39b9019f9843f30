//! Property tests of the codec: generated round trips and arbitrary input.

use proptest::prelude::*;

use super::*;

fn packet_type() -> impl Strategy<Value = PacketType> {
    prop_oneof![
        Just(PacketType::Data),
        Just(PacketType::Fin),
        Just(PacketType::State),
        Just(PacketType::Reset),
        Just(PacketType::Syn),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (
        packet_type(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(ty, conn_id, ts, tsd, wnd, seq, ack)| Header {
            ty,
            conn_id,
            timestamp: Micros(ts),
            timestamp_diff: Micros(tsd),
            wnd_size: wnd,
            seq_nr: SeqNr(seq),
            ack_nr: SeqNr(ack),
        })
}

/// An owned description of one extension, turned into an [`Extension`] for encoding.
#[derive(Clone, Debug)]
enum Ext {
    Sack(Vec<u8>),
    Bits(Vec<u8>),
    Close(u16, u16),
    Other(u8, Vec<u8>),
}

impl Ext {
    fn as_extension(&self) -> Extension<'_> {
        match self {
            Ext::Sack(m) => Extension::SelectiveAck(SelectiveAck::new(m)),
            Ext::Bits(b) => Extension::ExtensionBits(b),
            Ext::Close(r, c) => Extension::CloseReason {
                reserved: *r,
                code: *c,
            },
            Ext::Other(k, d) => Extension::Unknown { kind: *k, data: d },
        }
    }
}

fn extension() -> impl Strategy<Value = Ext> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..=255).prop_map(Ext::Sack),
        proptest::collection::vec(any::<u8>(), 0..=16).prop_map(Ext::Bits),
        (any::<u16>(), any::<u16>()).prop_map(|(r, c)| Ext::Close(r, c)),
        // Type 3 bodies other than 4 bytes stay unknown, so they round-trip exactly.
        (4u8..=255, proptest::collection::vec(any::<u8>(), 0..=40))
            .prop_map(|(k, d)| Ext::Other(k, d)),
        proptest::collection::vec(any::<u8>(), 0..=40)
            .prop_filter("a 4-byte type 3 is a close reason", |d| d.len() != 4)
            .prop_map(|d| Ext::Other(CLOSE_REASON, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Fields → bytes → fields gives back the same fields, and bytes → packet → bytes
    /// gives back the same bytes.
    /// Covers: A1, A6, B12
    #[test]
    fn structured_round_trip(
        h in header(),
        exts in proptest::collection::vec(extension(), 0..6),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let exts: Vec<Extension<'_>> = exts.iter().map(Ext::as_extension).collect();
        let mut buf = vec![0u8; encoded_len(&exts, payload.len())];
        let n = encode(&h, &exts, &payload, &mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        let p = Packet::decode(&buf).unwrap();
        prop_assert_eq!(p.header, h);
        prop_assert_eq!(p.extensions().collect::<Vec<_>>(), exts);
        prop_assert_eq!(p.payload, &payload[..]);
        let mut again = vec![0u8; p.encoded_len()];
        p.encode(&mut again).unwrap();
        prop_assert_eq!(&again, &buf);
        prop_assert!(!p.to_string().contains('\n'));
    }

    /// Arbitrary bytes never panic; whatever decodes re-encodes to the same bytes.
    /// Covers: B14, L7, L8
    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = Packet::decode(&data) {
            let mut out = vec![0u8; data.len()];
            prop_assert_eq!(p.encode(&mut out), Ok(data.len()));
            prop_assert_eq!(&out, &data);
            for e in p.extensions() {
                let _ = e.to_string();
            }
            if let Some(s) = p.selective_ack() {
                prop_assert!(s.acked(p.header.ack_nr).count() <= s.len_bits());
            }
        }
    }

    /// Headers that look like uTP v1 with arbitrary extension chains (the interesting
    /// part of the input space) never panic either.
    /// Covers: B13, B14, L7, L8
    #[test]
    fn arbitrary_extension_chains(
        ty in 0u8..5,
        first in any::<u8>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut data = vec![(ty << 4) | 1, first];
        data.extend_from_slice(&[0; 18]);
        data.extend_from_slice(&tail);
        match Packet::decode(&data) {
            Ok(p) => {
                let total: usize = p.extensions().map(|e| 2 + e.body_len()).sum();
                prop_assert_eq!(20 + total + p.payload.len(), data.len());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// Checklist B: 255 chained extensions decode and iterate (hostile but valid).
/// Covers: B12, B13
#[test]
fn long_extension_chain() {
    let mut data = vec![0x21, 9];
    data.extend_from_slice(&[0; 18]);
    for i in 0..255 {
        data.extend_from_slice(&[if i == 254 { 0 } else { 9 }, 0]);
    }
    let p = Packet::decode(&data).unwrap();
    assert_eq!(p.extensions().count(), 255);
    assert!(p.payload.is_empty());
}
