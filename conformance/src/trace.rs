//! Reading captures: every UDP datagram of a pcap or pcapng file.
//!
//! The format is sniffed from the magic bytes, never the file name (a real capture
//! named `.pcap` is pcapng). Link types: Ethernet (with VLAN tags), Linux cooked
//! capture (SLL), raw IP, and BSD null/loopback. Network: IPv4 and IPv6. Datagrams that
//! are not UDP, or are IP fragments, are skipped and counted.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

/// One UDP datagram of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Frame number in the capture, from 1 (as Wireshark counts).
    pub frame: usize,
    /// Capture time since the Unix epoch.
    pub time: Duration,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// What a capture held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// The link types seen.
    pub link_types: Vec<String>,
    /// The UDP datagrams, in capture order.
    pub datagrams: Vec<Datagram>,
    /// Frames that were not UDP over IP (or were IP fragments).
    pub skipped: usize,
}

/// Why a capture could not be read.
#[derive(Debug)]
pub struct TraceError(pub String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads every UDP datagram of the capture at `path`.
pub fn read(path: &Path) -> Result<Capture, TraceError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TraceError(format!("cannot read {}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| TraceError(format!("{}: {}", path.display(), e.0)))
}

/// Parses a capture held in memory.
pub fn parse(bytes: &[u8]) -> Result<Capture, TraceError> {
    let magic: [u8; 4] = bytes
        .get(..4)
        .and_then(|m| m.try_into().ok())
        .ok_or_else(|| TraceError("shorter than a capture header".into()))?;
    let mut cap = Capture::default();
    let mut frame = 0usize;
    if PCAP_MAGICS.contains(&magic) {
        cap.format = "pcap";
        let mut r =
            PcapReader::new(bytes).map_err(|e| TraceError(format!("bad pcap header: {e}")))?;
        let link = r.header().datalink;
        cap.link_types.push(format!("{link:?}"));
        while let Some(p) = r.next_packet() {
            let p =
                p.map_err(|e| TraceError(format!("bad pcap record after frame {frame}: {e}")))?;
            frame += 1;
            push(&mut cap, frame, p.timestamp, link, &p.data);
        }
    } else if magic == PCAPNG_MAGIC {
        cap.format = "pcapng";
        let mut r =
            PcapNgReader::new(bytes).map_err(|e| TraceError(format!("bad pcapng header: {e}")))?;
        let mut interfaces: Vec<DataLink> = Vec::new();
        while let Some(block) = r.next_block() {
            let block = block
                .map_err(|e| TraceError(format!("bad pcapng block after frame {frame}: {e}")))?;
            match block {
                Block::SectionHeader(_) => interfaces.clear(),
                Block::InterfaceDescription(i) => interfaces.push(i.linktype),
                Block::EnhancedPacket(p) => {
                    frame += 1;
                    let link = interfaces.get(p.interface_id as usize).copied();
                    let Some(link) = link else {
                        cap.skipped += 1;
                        continue;
                    };
                    let name = format!("{link:?}");
                    if !cap.link_types.contains(&name) {
                        cap.link_types.push(name);
                    }
                    push(&mut cap, frame, p.timestamp, link, &p.data);
                }
                Block::SimplePacket(p) => {
                    frame += 1;
                    match interfaces.first().copied() {
                        Some(link) => push(&mut cap, frame, Duration::ZERO, link, &p.data),
                        None => cap.skipped += 1,
                    }
                }
                Block::Packet(p) => {
                    frame += 1;
                    // The obsolete Packet block keeps the raw timestamp in microseconds.
                    let time = Duration::from_micros(p.timestamp);
                    match interfaces.get(p.interface_id as usize).copied() {
                        Some(link) => push(&mut cap, frame, time, link, &p.data),
                        None => cap.skipped += 1,
                    }
                }
                _ => {}
            }
        }
    } else {
        return Err(TraceError(format!(
            "not a pcap or pcapng file (magic {magic:02x?})"
        )));
    }
    Ok(cap)
}

fn push(cap: &mut Capture, frame: usize, time: Duration, link: DataLink, data: &[u8]) {
    match udp(link, data) {
        Some((src, dst, payload)) => cap.datagrams.push(Datagram {
            frame,
            time,
            src,
            dst,
            payload: payload.to_vec(),
        }),
        None => cap.skipped += 1,
    }
}

/// The UDP datagram in a link-layer frame, if there is one.
fn udp(link: DataLink, data: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(ip) => {
            if ip.is_payload_fragmented() {
                return None;
            }
            (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(ip) => {
            if ip.is_payload_fragmented() {
                return None;
            }
            (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            )
        }
        _ => return None,
    };
    match sliced.transport? {
        TransportSlice::Udp(u) => Some((
            SocketAddr::new(src_ip, u.source_port()),
            SocketAddr::new(dst_ip, u.destination_port()),
            u.payload(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_capture() {
        assert!(parse(b"hello world").unwrap_err().0.contains("not a pcap"));
        assert!(parse(b"").is_err());
    }
}
