//! Prints the checker's report for each capture given on the command line.
fn main() {
    for path in std::env::args().skip(1) {
        match utp_conformance::trace::read(std::path::Path::new(&path)) {
            Ok(cap) => {
                let r = utp_conformance::check::check(&cap);
                println!(
                    "{path}: {} {:?}, {} UDP, {} uTP, {} v0 resets {:?}, {} malformed {:?}, {} other, reencode mismatches {:?}, {} connections, {} gaps, sack lengths {:?}, first ext>=3: {}, STATE with FIN seq: {}",
                    cap.format, cap.link_types, cap.datagrams.len(), r.utp, r.version0_resets.len(), r.version0_resets, r.malformed.len(), r.malformed, r.other, r.reencode_mismatches, r.connections, r.gaps, r.sack_lengths, r.first_extension_3_or_more, r.state_with_fin_seq
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
