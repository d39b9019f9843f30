//! Prints the checker's report for each capture given on the command line.
//!
//! `--reordered ADDR=MS` (repeatable) says that packets from ADDR crossed a reordering
//! impairment before the capture point and may be overtaken by up to MS milliseconds
//! (`reordered_senders` and `reordering_ms` in `pcaps/MANIFEST.toml`); without it the
//! captures are taken to have no reordering before them.
fn main() {
    let mut options = utp_conformance::check::CheckOptions::default();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a != "--reordered" {
            paths.push(a);
            continue;
        }
        let spec = args.next().unwrap_or_default();
        let Some((addr, ms)) = spec
            .split_once('=')
            .and_then(|(a, m)| Some((a.parse().ok()?, m.parse().ok()?)))
        else {
            eprintln!("--reordered wants ADDR=MS, e.g. 10.99.0.1:6881=50, not {spec:?}");
            std::process::exit(2);
        };
        options
            .reordering
            .insert(addr, std::time::Duration::from_millis(ms));
    }
    for path in paths {
        match utp_conformance::trace::read(std::path::Path::new(&path)) {
            Ok(cap) => {
                let r = utp_conformance::check::check_with(&cap, &options);
                println!(
                    "{path}: {} {:?}, {} UDP, {} uTP, {} v0 resets {:?}, {} malformed {:?}, {} other, reencode mismatches {:?}, {} connections, {} gaps, sack lengths {:?}, first ext>=3: {}, STATE with FIN seq: {}, keep-alives: {}, reordered: {}",
                    cap.format, cap.link_types, cap.datagrams.len(), r.utp, r.version0_resets.len(), r.version0_resets, r.malformed.len(), r.malformed, r.other, r.reencode_mismatches, r.connections, r.gaps, r.sack_lengths, r.first_extension_3_or_more, r.state_with_fin_seq, r.keep_alives, r.reordered
                );
                let mut rules: Vec<&str> = r.violations.iter().map(|v| v.rule).collect();
                rules.sort();
                rules.dedup();
                for rule in rules {
                    let first = r.violations.iter().find(|v| v.rule == rule).unwrap();
                    println!(
                        "   {rule}: {} (first at frame {}: {})",
                        r.count(rule),
                        first.frame,
                        first.message
                    );
                }
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
}
