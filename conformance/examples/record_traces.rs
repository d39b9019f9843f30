//! Records the project's own traces into `pcaps/`: ours → libutp, libutp → ours and
//! libutp → libutp, clean and with 3 % loss, in virtual time (see
//! `utp_conformance::record`). Each run gives the same bytes.
//!
//! ```text
//! cargo run -p utp-conformance --example record_traces            # writes pcaps/*.pcap
//! cargo run -p utp-conformance --example record_traces -- OUT_DIR # elsewhere
//! ```
//!
//! It prints what `pcaps/MANIFEST.toml` needs for each file (packet counts, endings).

use std::path::PathBuf;
use std::process::ExitCode;

use utp_conformance::check::check;
use utp_conformance::record::{pcap_bytes, record, scenarios};

fn main() -> ExitCode {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pcaps"));
    let mut failed = false;
    for s in scenarios() {
        match record(&s) {
            Ok(rec) => {
                let bytes = pcap_bytes(&rec.capture.datagrams);
                let path = dir.join(s.file);
                if let Err(e) = std::fs::write(&path, &bytes) {
                    eprintln!("{}: {e}", path.display());
                    failed = true;
                    continue;
                }
                let r = check(&rec.capture);
                println!(
                    "{}: {} bytes, {} datagrams, {} uTP, {} connections, {} gaps, \
                     {} violations {:?}, sack lengths {:?}; {}",
                    s.file,
                    bytes.len(),
                    rec.capture.datagrams.len(),
                    r.utp,
                    r.connections,
                    r.gaps,
                    r.violations.len(),
                    r.violations.first(),
                    r.sack_lengths,
                    rec.ending
                );
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
