//! Prints frames FROM..TO of a capture, one line per datagram (uTP decoded).
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let cap = utp_conformance::trace::read(std::path::Path::new(&a[1])).expect("capture");
    let (from, to): (usize, usize) = (a[2].parse().unwrap(), a[3].parse().unwrap());
    for d in cap
        .datagrams
        .iter()
        .filter(|d| d.frame >= from && d.frame <= to)
    {
        match utp::wire::Packet::decode(&d.payload) {
            Ok(p) => println!(
                "{:>5} {:.6} {} > {}  {}",
                d.frame,
                d.time.as_secs_f64(),
                d.src,
                d.dst,
                p
            ),
            Err(e) => println!(
                "{:>5} {:.6} {} > {}  [{e}] {:02x?}",
                d.frame,
                d.time.as_secs_f64(),
                d.src,
                d.dst,
                &d.payload[..d.payload.len().min(24)]
            ),
        }
    }
}
