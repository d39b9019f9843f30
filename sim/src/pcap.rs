//! Writing every simulated datagram to a pcap file (raw IP link type), so that
//! `tshark --enable-heuristic bt_utp_udp` decodes the uTP traffic of a run.

use std::net::SocketAddr;

use utp::Instant;

/// LINKTYPE_RAW: each record is an IPv4 or IPv6 packet.
const LINKTYPE_RAW: u32 = 101;

/// Builds a classic pcap file image in memory.
#[derive(Debug)]
pub struct PcapWriter {
    out: Vec<u8>,
}

impl Default for PcapWriter {
    fn default() -> Self {
        PcapWriter::new()
    }
}

impl PcapWriter {
    /// An empty capture: only the file header.
    pub fn new() -> PcapWriter {
        let mut out = Vec::with_capacity(1 << 20);
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // microsecond timestamps
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes()); // GMT
        out.extend_from_slice(&0u32.to_le_bytes()); // accuracy
        out.extend_from_slice(&65_535u32.to_le_bytes()); // snap length
        out.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        PcapWriter { out }
    }

    /// Appends one UDP datagram sent at `at` (virtual time since the simulation epoch).
    pub fn record(&mut self, at: Instant, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let udp_len = 8 + payload.len();
        let (ip_header_len, v6) = match (from, to) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => (20, false),
            _ => (40, true),
        };
        let total = ip_header_len + udp_len;
        let us = at.as_micros();
        self.out
            .extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        self.out
            .extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        self.out.extend_from_slice(&(total as u32).to_le_bytes());
        self.out.extend_from_slice(&(total as u32).to_le_bytes());
        match (from, to, v6) {
            (SocketAddr::V4(f), SocketAddr::V4(t), false) => {
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                h[6] = 0x40; // don't fragment
                h[8] = 64; // TTL
                h[9] = 17; // UDP
                h[12..16].copy_from_slice(&f.ip().octets());
                h[16..20].copy_from_slice(&t.ip().octets());
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                self.out.extend_from_slice(&h);
            }
            _ => {
                let ip6 = |a: SocketAddr| match a {
                    SocketAddr::V6(a) => a.ip().octets(),
                    SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                };
                let mut h = [0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                h[6] = 17;
                h[7] = 64;
                h[8..24].copy_from_slice(&ip6(from));
                h[24..40].copy_from_slice(&ip6(to));
                self.out.extend_from_slice(&h);
            }
        }
        self.out.extend_from_slice(&from.port().to_be_bytes());
        self.out.extend_from_slice(&to.port().to_be_bytes());
        self.out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        self.out.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum
        self.out.extend_from_slice(payload);
    }

    /// The finished file image.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// The Internet checksum of an IPv4 header.
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_valid_ip_headers() {
        let mut w = PcapWriter::new();
        let a: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6882".parse().unwrap();
        w.record(Instant::from_micros(1_500_000), a, b, &[0x41; 20]);
        let f = w.finish();
        assert_eq!(f.len(), 24 + 16 + 20 + 8 + 20);
        let ip = &f[40..60];
        assert_eq!(checksum(ip), 0, "a valid header sums to zero");
        assert_eq!(u32::from_le_bytes(f[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(f[28..32].try_into().unwrap()), 500_000);
        assert_eq!(&f[60..62], &6881u16.to_be_bytes());
    }
}
