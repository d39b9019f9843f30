//! The simulator's pcap is real uTP to Wireshark: `tshark --enable-heuristic
//! bt_utp_udp` decodes every datagram of a run as BT-uTP.

use std::process::Command;

use utp_sim::{run, Scenario};

#[test]
fn tshark_decodes_every_datagram_as_utp() {
    if Command::new("tshark").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have tshark (.ci/run installs it)"
        );
        eprintln!("notice: tshark is not installed: skipped (apt-get install tshark)");
        return;
    }
    let mut s = Scenario::built_in("bursty").unwrap();
    s.duration_s = 3.0;
    let r = run(&s, true).unwrap();
    let pcap = r.pcap.unwrap();
    let dir = std::env::temp_dir().join(format!("utp-sim-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trace.pcap");
    std::fs::write(&file, &pcap).unwrap();
    let out = Command::new("tshark")
        .args([
            "-r",
            file.to_str().unwrap(),
            "--enable-heuristic",
            "bt_utp_udp",
            "-T",
            "fields",
            "-e",
            "frame.protocols",
        ])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<&str> = text.lines().collect();
    assert!(frames.len() > 1000, "{} frames", frames.len());
    let not_utp: Vec<&&str> = frames.iter().filter(|p| !p.contains("bt-utp")).collect();
    assert!(
        not_utp.is_empty(),
        "{} of {} frames not decoded as uTP, e.g. {:?}",
        not_utp.len(),
        frames.len(),
        not_utp.first()
    );
}
