//! Per-packet costs of the core: decode, encode, a data packet through the receiver,
//! an ACK with selective ACK through the sender.

use std::hint::black_box;
use std::time::{Duration, Instant as WallClock};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use utp::proto::congestion::CongestionConfig;
use utp::wire::{encode, Extension, Header, Micros, Packet, PacketType, SelectiveAck, SeqNr};
use utp::Config;
use utp_benches::Pair;

fn header(ty: PacketType) -> Header {
    Header {
        ty,
        conn_id: 1234,
        timestamp: Micros(1),
        timestamp_diff: Micros(2),
        wnd_size: 1 << 20,
        seq_nr: SeqNr(10),
        ack_nr: SeqNr(20),
    }
}

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    let mut data = vec![0u8; 1400];
    let n = encode(&header(PacketType::Data), &[], &[9u8; 1380], &mut data).unwrap();
    g.bench_function("decode DATA 1400 B", |b| {
        b.iter(|| Packet::decode(black_box(&data[..n])).unwrap().payload.len())
    });
    let mut state = vec![0u8; 64];
    let mask = [0b1010_1010u8; 8];
    let m = encode(
        &header(PacketType::State),
        &[Extension::SelectiveAck(SelectiveAck::new(&mask))],
        &[],
        &mut state,
    )
    .unwrap();
    g.bench_function("decode STATE + 8-byte SACK", |b| {
        b.iter(|| {
            Packet::decode(black_box(&state[..m]))
                .unwrap()
                .selective_ack()
                .unwrap()
                .len_bits()
        })
    });
    let payload = [5u8; 1380];
    let mut out = vec![0u8; 1500];
    g.bench_function("encode DATA 1400 B", |b| {
        b.iter(|| {
            encode(
                black_box(&header(PacketType::Data)),
                &[],
                black_box(&payload),
                &mut out,
            )
            .unwrap()
        })
    });
    g.finish();
}

/// Times `per_chunk` packets at a time with fresh state for each chunk; only the
/// processing is timed, never the setup.
fn chunked(iters: u64, per_chunk: u64, mut run_chunk: impl FnMut(u64) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_chunk);
        total += run_chunk(n);
        left -= n;
    }
    total
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let mut config = Config::default();
    config.congestion = CongestionConfig::Fixed(64 << 20);
    config.send_buffer_size = 64 << 20;
    config.recv_buffer_size = 64 << 20;
    g.bench_function("receive in-order DATA and produce its ACK", |b| {
        b.iter_custom(|iters| {
            chunked(iters, 20_000, |n| {
                let mut p = Pair::connected(config.clone());
                let packets = p.data_packets(n as usize);
                let mut buf = vec![0u8; 2048];
                let mut read = vec![0u8; 1 << 16];
                let start = WallClock::now();
                for d in &packets {
                    p.b.handle_datagram(p.now, p.a_addr, d);
                    while p.b.poll_transmit(p.now, &mut buf).is_some() {}
                    while p.b.read(p.now, p.hb, &mut read).is_ok_and(|k| k > 0) {}
                }
                let t = start.elapsed();
                assert!(p.b.connection(p.hb).unwrap().stats().bytes_received > 0);
                t
            })
        })
    });
    g.bench_function("process ACK with selective ACK at the sender", |b| {
        b.iter_custom(|iters| {
            chunked(iters, 10_000, |n| {
                let mut p = Pair::connected(config.clone());
                let packets = p.data_packets(n as usize + 40);
                // ACKs from B: the first packet is lost, everything after it arrives, so
                // every ACK carries a selective ACK covering up to 32 packets.
                let mut acks = Vec::new();
                let mut buf = vec![0u8; 2048];
                for d in packets.iter().skip(1) {
                    p.b.handle_datagram(p.now, p.a_addr, d);
                    while let Some(t) = p.b.poll_transmit(p.now, &mut buf) {
                        acks.push(buf[..t.len].to_vec());
                    }
                }
                acks.truncate(n as usize);
                let start = WallClock::now();
                for ack in &acks {
                    p.a.handle_datagram(p.now, p.b_addr, ack);
                    while p.a.poll_transmit(p.now, &mut buf).is_some() {}
                }
                let t = start.elapsed();
                assert!(p.a.connection(p.ha).unwrap().stats().sacks_received > 0);
                t
            })
        })
    });
    g.finish();
}

criterion_group!(benches, wire, core);
criterion_main!(benches);
