//! Reading captures: every UDP datagram of a pcap or pcapng file.
//!
//! The format is sniffed from the magic bytes, never the file name (a real capture
//! named `.pcap` is pcapng). Link types, by their LINKTYPE number:
//!
//! | link type | frame |
//! |---|---|
//! | 1 `ETHERNET` | Ethernet II, with VLAN tags |
//! | 113 `LINUX_SLL` | Linux cooked capture v1 (16 bytes, protocol at 14..16) |
//! | 276 `LINUX_SLL2` | Linux cooked capture v2 (20 bytes, protocol at 0..2) |
//! | 101 `RAW`, and 12, 14 (the `DLT_RAW` values older files carry) | IPv4 or IPv6 |
//! | 228 `IPV4`, 229 `IPV6` | that IP version only |
//! | 0 `NULL` | BSD loopback: a 4-byte address family in the capturing host's byte order |
//! | 108 `LOOP` | OpenBSD loopback: the same family, in network byte order |
//!
//! The address families are 2 (IPv4) and 24, 28 or 30 (IPv6 on NetBSD and OpenBSD,
//! FreeBSD, macOS). Network: IPv4 and IPv6. Frames that are not UDP over IP, IP
//! fragments, and frames cut short (by the snap length, or broken) are skipped and
//! counted; a frame on a link type this module does not know is an error that names
//! the link type.
//!
//! pcapng timestamps are read in the unit each interface declares (`if_tsresol`,
//! microseconds when absent, and `if_tsoffset`): pcap-file 2.0.0 hands them over as
//! nanoseconds whatever the unit.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
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
    /// Frames that were not UDP over IP, were IP fragments, or were cut short.
    pub skipped: usize,
    /// Of the skipped frames, those stored shorter than they were on the wire (the
    /// capture's snap length cut them).
    pub truncated: usize,
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
///
/// Fails when the bytes are not a pcap or pcapng file, when a record or block is
/// broken or cut off, and when a frame's link type is not one of the module's
/// (the message names it).
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
            let cut = p.data.len() < p.orig_len as usize;
            push(&mut cap, frame, p.timestamp, link, &p.data, cut)?;
        }
    } else if magic == PCAPNG_MAGIC {
        cap.format = "pcapng";
        let mut r =
            PcapNgReader::new(bytes).map_err(|e| TraceError(format!("bad pcapng header: {e}")))?;
        let mut interfaces: Vec<Interface> = Vec::new();
        while let Some(block) = r.next_block() {
            let block = block
                .map_err(|e| TraceError(format!("bad pcapng block after frame {frame}: {e}")))?;
            match block {
                Block::SectionHeader(_) => interfaces.clear(),
                Block::InterfaceDescription(i) => interfaces.push(Interface::new(&i)),
                Block::EnhancedPacket(p) => {
                    frame += 1;
                    let Some(i) = interfaces.get(p.interface_id as usize) else {
                        cap.skipped += 1;
                        continue;
                    };
                    let name = format!("{:?}", i.link);
                    if !cap.link_types.contains(&name) {
                        cap.link_types.push(name);
                    }
                    // pcap-file gives the raw timestamp as if it counted nanoseconds.
                    let time = i.time(p.timestamp.as_nanos() as u64);
                    let cut = p.data.len() < p.original_len as usize;
                    push(&mut cap, frame, time, i.link, &p.data, cut)?;
                }
                Block::SimplePacket(p) => {
                    frame += 1;
                    match interfaces.first() {
                        Some(i) => {
                            let cut = p.data.len() < p.original_len as usize;
                            push(&mut cap, frame, Duration::ZERO, i.link, &p.data, cut)?;
                        }
                        None => cap.skipped += 1,
                    }
                }
                Block::Packet(p) => {
                    frame += 1;
                    match interfaces.get(p.interface_id as usize) {
                        Some(i) => {
                            let cut = p.data.len() < p.original_len as usize;
                            push(&mut cap, frame, i.time(p.timestamp), i.link, &p.data, cut)?;
                        }
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

/// A pcapng interface: its link type and the unit of its timestamps.
struct Interface {
    link: DataLink,
    /// `if_tsresol`: bit 7 clear, 10^-n s; set, 2^-n s.
    resolution: u8,
    /// `if_tsoffset`, in seconds.
    offset: u64,
}

impl Interface {
    fn new(block: &InterfaceDescriptionBlock<'_>) -> Interface {
        let mut i = Interface {
            link: block.linktype,
            resolution: 6,
            offset: 0,
        };
        for o in &block.options {
            match *o {
                InterfaceDescriptionOption::IfTsResol(r) => i.resolution = r,
                InterfaceDescriptionOption::IfTsOffset(s) => i.offset = s,
                _ => {}
            }
        }
        i
    }

    /// A timestamp of `ticks` units, as time since the Unix epoch (saturating: a
    /// nonsense unit gives a nonsense time, never a panic).
    fn time(&self, ticks: u64) -> Duration {
        let n = u32::from(self.resolution & 0x7f);
        let ticks = u128::from(ticks);
        let nanos = if self.resolution & 0x80 != 0 {
            ticks.saturating_mul(1_000_000_000) >> n.min(127)
        } else if n <= 9 {
            ticks * 10u128.pow(9 - n)
        } else {
            10u128.checked_pow(n - 9).map_or(0, |d| ticks / d)
        };
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos).saturating_add(Duration::from_secs(self.offset))
    }
}

fn push(
    cap: &mut Capture,
    frame: usize,
    time: Duration,
    link: DataLink,
    data: &[u8],
    cut: bool,
) -> Result<(), TraceError> {
    let sliced = slice(link, data).ok_or_else(|| {
        TraceError(format!(
            "frame {frame}: link type {link:?} ({}) is not supported (Ethernet, Linux SLL \
             and SLL2, raw IP, BSD null and loopback are)",
            u32::from(link)
        ))
    })?;
    match sliced.and_then(udp) {
        Some((src, dst, payload)) => cap.datagrams.push(Datagram {
            frame,
            time,
            src,
            dst,
            payload: payload.to_vec(),
        }),
        None => {
            cap.skipped += 1;
            cap.truncated += usize::from(cut);
        }
    }
    Ok(())
}

/// A frame cut into headers: `None` for a link type this module does not read,
/// `Some(None)` for a frame of a known link type that does not parse.
fn slice(link: DataLink, data: &[u8]) -> Option<Option<SlicedPacket<'_>>> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok(),
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok(),
        // SLL2: protocol type (2), reserved (2), interface index (4), ARPHRD type (2),
        // packet type (1), address length (1), address (8).
        DataLink::LINUX_SLL2 => data.get(20..).and_then(|ip| {
            let proto = u16::from_be_bytes([data[0], data[1]]);
            SlicedPacket::from_ether_type(EtherType(proto), ip).ok()
        }),
        DataLink::RAW | DataLink::Unknown(12) | DataLink::Unknown(14) => {
            SlicedPacket::from_ip(data).ok()
        }
        DataLink::IPV4 => SlicedPacket::from_ether_type(EtherType::IPV4, data).ok(),
        DataLink::IPV6 => SlicedPacket::from_ether_type(EtherType::IPV6, data).ok(),
        DataLink::NULL | DataLink::LOOP => data.get(..4).and_then(|f| {
            let f: [u8; 4] = f.try_into().expect("4 bytes");
            let family = if link == DataLink::LOOP {
                u32::from_be_bytes(f)
            } else {
                // Host byte order, so either: the families are all below 2^16.
                let le = u32::from_le_bytes(f);
                if le >> 16 == 0 {
                    le
                } else {
                    u32::from_be_bytes(f)
                }
            };
            let ether_type = match family {
                2 => EtherType::IPV4,
                24 | 28 | 30 => EtherType::IPV6,
                _ => return None,
            };
            SlicedPacket::from_ether_type(ether_type, &data[4..]).ok()
        }),
        _ => return None,
    };
    Some(sliced)
}

/// The UDP datagram in a frame cut into headers, if there is one.
fn udp(sliced: SlicedPacket<'_>) -> Option<(SocketAddr, SocketAddr, &[u8])> {
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

    #[test]
    fn pcapng_timestamp_units() {
        let i = |resolution, offset| Interface {
            link: DataLink::ETHERNET,
            resolution,
            offset,
        };
        let t = Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(i(6, 0).time(1_700_000_000_123_456), t);
        assert_eq!(i(9, 0).time(1_700_000_000_123_456_000), t);
        assert_eq!(i(3, 0).time(5), Duration::from_millis(5));
        assert_eq!(i(0x80 | 10, 0).time(3 << 10), Duration::from_secs(3));
        assert_eq!(i(12, 0).time(7_000), Duration::from_nanos(7));
        assert_eq!(i(6, 100).time(1), Duration::new(100, 1_000));
        // Nonsense units saturate, never panic.
        assert_eq!(i(0x7f, 0).time(u64::MAX), Duration::ZERO);
        let _ = i(0xff, 0).time(u64::MAX);
        let _ = i(0, u64::MAX).time(u64::MAX);
    }
}
