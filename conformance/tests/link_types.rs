//! The capture reader on every link type it claims, in captures written by pcap-file's
//! own writers: pcap in both byte orders and both timestamp units, pcapng in both byte
//! orders and three `if_tsresol` units. Each holds IPv4 and IPv6 UDP datagrams (headers
//! from etherparse) both ways, carrying real uTP packets (encoded by `utp::wire`); the
//! reader must give back the addresses, ports, payload and capture time of each. Frames
//! cut short, frames that are not UDP, files cut short and link types the reader does
//! not know are checked too.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use etherparse::{
    ArpHardwareId, EtherType, Ethernet2Header, LinuxSllHeader, LinuxSllPacketType,
    LinuxSllProtocolType, PacketBuilder, SingleVlanHeader, VlanId,
};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};
use utp::wire::{encode, Extension, Header, Micros, PacketType, SelectiveAck, SeqNr};
use utp_conformance::check::{classify, Kind};
use utp_conformance::trace::{parse, Capture};

/// A link type and how it frames an IP packet.
struct Link {
    name: &'static str,
    datalink: DataLink,
    /// Whether it carries IPv4 and IPv6 (`[v4, v6]`).
    carries: [bool; 2],
    /// The link-layer header for an IP packet of this version (true: IPv6).
    header: fn(bool) -> Vec<u8>,
}

/// An Ethernet II header between two fixed MACs, carrying `ether_type`.
fn ethernet(ether_type: EtherType) -> Vec<u8> {
    Ethernet2Header {
        source: [2, 0, 0, 0, 0, 1],
        destination: [2, 0, 0, 0, 0, 2],
        ether_type,
    }
    .to_bytes()
    .to_vec()
}

fn ether_type(v6: bool) -> EtherType {
    if v6 {
        EtherType::IPV6
    } else {
        EtherType::IPV4
    }
}

/// The BSD address family: AF_INET is 2 everywhere; AF_INET6 is `af_inet6`.
fn family(v6: bool, af_inet6: u32) -> u32 {
    if v6 {
        af_inet6
    } else {
        2
    }
}

fn links() -> Vec<Link> {
    const BOTH: [bool; 2] = [true, true];
    vec![
        Link {
            name: "Ethernet",
            datalink: DataLink::ETHERNET,
            carries: BOTH,
            header: |v6| ethernet(ether_type(v6)),
        },
        Link {
            name: "Ethernet with a VLAN tag",
            datalink: DataLink::ETHERNET,
            carries: BOTH,
            header: |v6| {
                let mut h = ethernet(EtherType::VLAN_TAGGED_FRAME);
                let vlan = SingleVlanHeader {
                    vlan_id: VlanId::try_new(42).unwrap(),
                    ether_type: ether_type(v6),
                    ..SingleVlanHeader::default()
                };
                h.extend_from_slice(&vlan.to_bytes());
                h
            },
        },
        Link {
            name: "Linux cooked capture (SLL)",
            datalink: DataLink::LINUX_SLL,
            carries: BOTH,
            header: |v6| {
                LinuxSllHeader {
                    packet_type: LinuxSllPacketType::OUTGOING,
                    arp_hrd_type: ArpHardwareId::ETHERNET,
                    sender_address_valid_length: 6,
                    sender_address: [2, 0, 0, 0, 0, 1, 0, 0],
                    protocol_type: LinuxSllProtocolType::EtherType(ether_type(v6)),
                }
                .to_bytes()
                .to_vec()
            },
        },
        Link {
            name: "Linux cooked capture v2 (SLL2)",
            datalink: DataLink::LINUX_SLL2,
            carries: BOTH,
            header: |v6| {
                let mut h = ether_type(v6).0.to_be_bytes().to_vec(); // protocol type
                h.extend_from_slice(&[0, 0]); // reserved
                h.extend_from_slice(&3u32.to_be_bytes()); // interface index
                h.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
                h.push(4); // packet type: outgoing
                h.push(6); // address length
                h.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
                assert_eq!(h.len(), 20);
                h
            },
        },
        Link {
            name: "raw IP (101)",
            datalink: DataLink::RAW,
            carries: BOTH,
            header: |_| Vec::new(),
        },
        Link {
            name: "raw IP (12, DLT_RAW)",
            datalink: DataLink::Unknown(12),
            carries: BOTH,
            header: |_| Vec::new(),
        },
        Link {
            name: "raw IP (14, DLT_RAW on OpenBSD)",
            datalink: DataLink::Unknown(14),
            carries: BOTH,
            header: |_| Vec::new(),
        },
        Link {
            name: "IPv4 (228)",
            datalink: DataLink::IPV4,
            carries: [true, false],
            header: |_| Vec::new(),
        },
        Link {
            name: "IPv6 (229)",
            datalink: DataLink::IPV6,
            carries: [false, true],
            header: |_| Vec::new(),
        },
        Link {
            name: "BSD null, little-endian host, AF_INET6 24 (NetBSD, OpenBSD)",
            datalink: DataLink::NULL,
            carries: BOTH,
            header: |v6| family(v6, 24).to_le_bytes().to_vec(),
        },
        Link {
            name: "BSD null, little-endian host, AF_INET6 28 (FreeBSD)",
            datalink: DataLink::NULL,
            carries: BOTH,
            header: |v6| family(v6, 28).to_le_bytes().to_vec(),
        },
        Link {
            name: "BSD null, big-endian host, AF_INET6 30 (macOS)",
            datalink: DataLink::NULL,
            carries: BOTH,
            header: |v6| family(v6, 30).to_be_bytes().to_vec(),
        },
        Link {
            name: "OpenBSD loopback (LOOP), network byte order",
            datalink: DataLink::LOOP,
            carries: BOTH,
            header: |v6| family(v6, 24).to_be_bytes().to_vec(),
        },
    ]
}

const V4: [&str; 2] = ["192.0.2.1:6881", "198.51.100.2:51413"];
const V6: [&str; 2] = ["[2001:db8::1]:6881", "[2001:db8:ffff::2]:51413"];

/// An IP packet holding a UDP datagram.
fn ip_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            PacketBuilder::ipv4(s.ip().octets(), d.ip().octets(), 64)
                .udp(s.port(), d.port())
                .write(&mut out, payload)
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            PacketBuilder::ipv6(s.ip().octets(), d.ip().octets(), 64)
                .udp(s.port(), d.port())
                .write(&mut out, payload)
        }
        _ => panic!("one IP version per datagram"),
    }
    .unwrap();
    out
}

/// A frame of `link` carrying a UDP datagram.
fn frame(link: &Link, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = (link.header)(src.is_ipv6());
    f.extend_from_slice(&ip_packet(src, dst, payload));
    f
}

/// A valid uTP DATA packet with a selective ACK, numbered `n`.
fn utp_packet(n: u16) -> Vec<u8> {
    let h = Header {
        ty: PacketType::Data,
        conn_id: 0x1234,
        timestamp: Micros(1_000_000 + u32::from(n)),
        timestamp_diff: Micros(250),
        wnd_size: 1 << 20,
        seq_nr: SeqNr(n),
        ack_nr: SeqNr(7),
    };
    let mask = [0b101, 0, 0, 0];
    let exts = [Extension::SelectiveAck(SelectiveAck::new(&mask))];
    let mut buf = vec![0u8; 1500];
    let len = encode(&h, &exts, b"a piece of a torrent", &mut buf).unwrap();
    buf.truncate(len);
    assert_eq!(classify(&buf), Kind::Utp);
    buf
}

/// The time of frame `i` (from 0): 2023-11-14 plus `i` × 1.5 ms plus 7 µs.
fn time(i: usize) -> Duration {
    Duration::new(1_700_000_000, 0) + Duration::from_micros(1500 * i as u64 + 7)
}

/// One stored frame: its bytes and its length on the wire.
struct Frame {
    data: Vec<u8>,
    orig_len: u32,
}

impl Frame {
    fn whole(data: Vec<u8>) -> Frame {
        let orig_len = data.len() as u32;
        Frame { data, orig_len }
    }
}

fn pcap(link: DataLink, e: Endianness, res: TsResolution, frames: &[Frame]) -> Vec<u8> {
    let header = PcapHeader {
        datalink: link,
        endianness: e,
        ts_resolution: res,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(time(i), f.orig_len, &f.data))
            .unwrap();
    }
    w.into_writer()
}

/// A pcapng file with one interface per link type, `if_tsresol` as given (`None`: no
/// option, so microseconds), frame `i` on interface `on[i]` (0 past the end of `on`).
fn pcapng(
    links: &[DataLink],
    e: Endianness,
    tsresol: Option<u8>,
    frames: &[Frame],
    on: &[u32],
) -> Vec<u8> {
    let mut w = PcapNgWriter::with_endianness(Vec::new(), e).unwrap();
    for &link in links {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: link,
            snaplen: 0,
            options: tsresol
                .map(InterfaceDescriptionOption::IfTsResol)
                .into_iter()
                .collect(),
        })
        .unwrap();
    }
    for (i, f) in frames.iter().enumerate() {
        // pcap-file writes the count of units it is given as "nanoseconds" unchanged.
        let ticks = ticks(time(i), tsresol.unwrap_or(6));
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: on.get(i).copied().unwrap_or(0),
            timestamp: Duration::from_nanos(ticks),
            original_len: f.orig_len,
            data: Cow::Borrowed(&f.data),
            options: vec![],
        })
        .unwrap();
    }
    w.into_inner()
}

/// A time as a count of `if_tsresol` units (rounded down).
fn ticks(t: Duration, tsresol: u8) -> u64 {
    let nanos = t.as_nanos();
    let n = u32::from(tsresol & 0x7f);
    let ticks = if tsresol & 0x80 != 0 {
        (nanos << n) / 1_000_000_000
    } else {
        nanos / 10u128.pow(9 - n)
    };
    u64::try_from(ticks).unwrap()
}

/// One capture of the frames by every writer and setting: (format, description,
/// bytes).
fn every_writer(link: DataLink, frames: &[Frame]) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in [Endianness::Big, Endianness::Little] {
        for res in [TsResolution::MicroSecond, TsResolution::NanoSecond] {
            out.push((
                "pcap",
                format!("{e:?}, {res:?}"),
                pcap(link, e, res, frames),
            ));
        }
        for tsresol in [None, Some(9), Some(0x80 | 20)] {
            out.push((
                "pcapng",
                format!("{e:?}, if_tsresol {tsresol:?}"),
                pcapng(&[link], e, tsresol, frames, &[]),
            ));
        }
    }
    out
}

fn parsed(what: &str, bytes: &[u8]) -> Capture {
    parse(bytes).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The datagrams of one test capture: each IP version the link carries, both ways.
fn datagrams(link: &Link) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    for (n, (pair, carried)) in [V4, V6].iter().zip(link.carries).enumerate() {
        if !carried {
            continue;
        }
        let [a, b] = pair.map(|s| s.parse::<SocketAddr>().unwrap());
        out.push((a, b, utp_packet(10 * n as u16)));
        out.push((b, a, utp_packet(10 * n as u16 + 1)));
    }
    out
}

#[test]
fn every_link_type_gives_back_addresses_ports_payload_and_time() {
    let mut checked = 0;
    for link in links() {
        let want = datagrams(&link);
        let frames: Vec<Frame> = want
            .iter()
            .map(|(s, d, p)| Frame::whole(frame(&link, *s, *d, p)))
            .collect();
        for (format, setting, bytes) in every_writer(link.datalink, &frames) {
            let what = format!("{}, {format} {setting}", link.name);
            let cap = parsed(&what, &bytes);
            assert_eq!(cap.format, format, "{what}");
            assert_eq!(
                cap.link_types,
                vec![format!("{:?}", link.datalink)],
                "{what}"
            );
            assert_eq!((cap.skipped, cap.truncated), (0, 0), "{what}");
            assert_eq!(cap.datagrams.len(), want.len(), "{what}");
            for (i, (d, (src, dst, payload))) in cap.datagrams.iter().zip(&want).enumerate() {
                assert_eq!(d.frame, i + 1, "{what}");
                assert_eq!((d.src, d.dst), (*src, *dst), "{what}: frame {}", i + 1);
                assert_eq!(&d.payload, payload, "{what}: frame {}", i + 1);
                // 2^-20 s units are coarser than a microsecond.
                let err = d.time.abs_diff(time(i));
                assert!(
                    err < Duration::from_micros(1),
                    "{what}: frame {} at {:?}, not {:?}",
                    i + 1,
                    d.time,
                    time(i)
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 10);
}

/// Every prefix of every frame, stored as a snap length would cut it: skipped and
/// counted as truncated, never a datagram with a short payload, never a panic.
#[test]
fn frames_cut_short_are_skipped_and_counted() {
    for link in links() {
        for (src, dst, payload) in datagrams(&link) {
            let whole = frame(&link, src, dst, &payload);
            let frames: Vec<Frame> = (0..whole.len())
                .map(|n| Frame {
                    data: whole[..n].to_vec(),
                    orig_len: whole.len() as u32,
                })
                .collect();
            for (format, setting, bytes) in every_writer(link.datalink, &frames) {
                let what = format!("{}, {src} > {dst}, {format} {setting}", link.name);
                let cap = parsed(&what, &bytes);
                assert_eq!(cap.datagrams, vec![], "{what}");
                assert_eq!(cap.skipped, frames.len(), "{what}");
                assert_eq!(cap.truncated, frames.len(), "{what}");
            }
        }
    }
}

/// Frames that are whole but hold no UDP datagram the link type allows: skipped, not
/// counted as truncated.
#[test]
fn frames_without_a_udp_datagram_are_skipped() {
    let [a, b] = V4.map(|s| s.parse::<SocketAddr>().unwrap());
    let [a6, b6] = V6.map(|s| s.parse::<SocketAddr>().unwrap());
    let p = utp_packet(1);
    let by_name = |name: &str| {
        links()
            .into_iter()
            .find(|l| l.name.starts_with(name))
            .unwrap()
    };
    let mut tcp = ethernet(EtherType::IPV4);
    PacketBuilder::ipv4([192, 0, 2, 1], [198, 51, 100, 2], 64)
        .tcp(6881, 51413, 1, 1000)
        .write(&mut tcp, &p)
        .unwrap();
    let mut bad_family = 7u32.to_le_bytes().to_vec(); // AF_NS, not IP
    bad_family.extend_from_slice(&ip_packet(a, b, &p));
    let mut wrong_ip_length = ip_packet(a, b, &p);
    wrong_ip_length[3] += 1; // the IPv4 total length says one byte more than is there
    let cases: Vec<(&str, DataLink, Vec<u8>)> = vec![
        ("TCP", DataLink::ETHERNET, tcp),
        (
            "IPv6 on link type IPV4",
            DataLink::IPV4,
            ip_packet(a6, b6, &p),
        ),
        (
            "IPv4 on link type IPV6",
            DataLink::IPV6,
            ip_packet(a, b, &p),
        ),
        ("address family 7 on NULL", DataLink::NULL, bad_family),
        (
            "an IPv6 family on LOOP carrying IPv4",
            DataLink::LOOP,
            [&24u32.to_be_bytes()[..], &ip_packet(a, b, &p)].concat(),
        ),
        (
            "a short IPv4 datagram on RAW",
            DataLink::RAW,
            wrong_ip_length,
        ),
        (
            "SLL2 with an ARP protocol type",
            DataLink::LINUX_SLL2,
            [
                &0x0806u16.to_be_bytes()[..],
                &(by_name("Linux cooked capture v2").header)(false)[2..],
                &ip_packet(a, b, &p),
            ]
            .concat(),
        ),
    ];
    for (name, link, data) in cases {
        for (format, setting, bytes) in every_writer(link, &[Frame::whole(data.clone())]) {
            let what = format!("{name}, {format} {setting}");
            let cap = parsed(&what, &bytes);
            assert_eq!(cap.datagrams, vec![], "{what}");
            assert_eq!((cap.skipped, cap.truncated), (1, 0), "{what}");
        }
    }
}

/// A frame on a link type the reader does not know: an error naming the link type and
/// the frame, in either format; an interface of that type with no frames is harmless.
#[test]
fn an_unknown_link_type_is_an_error_that_names_it() {
    let [a, b] = V4.map(|s| s.parse::<SocketAddr>().unwrap());
    let raw = Frame::whole(ip_packet(a, b, &utp_packet(1)));
    for (link, name) in [
        (DataLink::Unknown(4242), "Unknown(4242) (4242)"),
        (DataLink::USER0, "USER0 (147)"),
        (DataLink::PPP, "PPP (9)"),
    ] {
        for (format, setting, bytes) in every_writer(link, std::slice::from_ref(&raw)) {
            let err = parse(&bytes).expect_err("unknown link type").to_string();
            assert!(
                err.contains(&format!("frame 1: link type {name} is not supported")),
                "{format} {setting}: {err}"
            );
        }
        // pcap: no frames, nothing to misread.
        let empty = pcap(link, Endianness::Little, TsResolution::MicroSecond, &[]);
        assert_eq!(parsed("empty pcap", &empty).datagrams, vec![]);
        // pcapng: the frame on the raw-IP interface reads, the one on the other fails.
        let two = [
            Frame::whole(raw.data.clone()),
            Frame::whole(raw.data.clone()),
        ];
        let bytes = pcapng(
            &[DataLink::RAW, link],
            Endianness::Little,
            None,
            &two,
            &[0, 1],
        );
        let err = parse(&bytes).expect_err("frame 2").to_string();
        assert!(err.contains(&format!("frame 2: link type {name}")), "{err}");
        let one = pcapng(
            &[DataLink::RAW, link],
            Endianness::Little,
            None,
            &two[..1],
            &[0],
        );
        assert_eq!(parsed("pcapng", &one).datagrams.len(), 1);
    }
}

/// A file cut off at any byte: the frames before the cut, or an error that says what
/// broke; never a panic.
#[test]
fn a_capture_cut_off_anywhere_never_panics() {
    let link = &links()[0];
    let frames: Vec<Frame> = datagrams(link)
        .iter()
        .map(|(s, d, p)| Frame::whole(frame(link, *s, *d, p)))
        .collect();
    for (format, setting, bytes) in every_writer(link.datalink, &frames) {
        let mut whole_frames_seen = 0;
        for n in 0..bytes.len() {
            match parse(&bytes[..n]) {
                Ok(cap) => {
                    assert!(cap.datagrams.len() < frames.len(), "{format} {setting}");
                    whole_frames_seen = whole_frames_seen.max(cap.datagrams.len());
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        assert_eq!(
            whole_frames_seen,
            frames.len() - 1,
            "{format} {setting}: a file cut at a record boundary reads"
        );
        assert_eq!(parsed(format, &bytes).datagrams.len(), frames.len());
    }
}
