#!/usr/bin/env bash
# Regenerates pcaps/*_lo-udp*.pcapng: captures of real UDP over loopback, recorded
# with dumpcap while conformance/examples/record_loopback.rs runs one transfer per
# mode (ours -> libutp, libutp -> ours, libutp -> libutp; clean and through the lossy
# relay). Needs root (or capture rights on lo), dumpcap and tshark. Not run by CI: the
# captures are not reproducible byte for byte (wall-clock time, random connection ids,
# loss that depends on timing), so update pcaps/MANIFEST.toml after a run
# (`cargo run -p utp-conformance --example check_trace -- FILE` shows the counts).
#
#   pcaps/record-loopback.sh            # every mode
#   pcaps/record-loopback.sh ours-to-libutp:lossy libutp-to-libutp:clean
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
max_bytes=500000

modes=("$@")
if [ ${#modes[@]} -eq 0 ]; then
    modes=(ours-to-libutp:clean ours-to-libutp:lossy
           libutp-to-ours:clean libutp-to-ours:lossy
           libutp-to-libutp:clean libutp-to-libutp:lossy)
fi

for tool in dumpcap tshark; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done

(cd "$root" && cargo build --release -p utp-conformance --example record_loopback)
bin="$root/target/release/examples/record_loopback"

failed=0
for spec in "${modes[@]}"; do
    mode=${spec%%:*}
    variant=${spec##*:}
    name=$("$bin" --name "$mode" "$variant")
    out="$here/$name.pcapng"
    rm -f "$out"
    dumpcap -i lo -f "udp portrange 6891-6893" -w "$out" -q &
    cap=$!
    # dumpcap needs a moment before it captures; wait for the file to appear.
    for _ in $(seq 50); do
        [ -s "$out" ] && break
        sleep 0.1
    done
    sleep 0.5
    status=0
    "$bin" "$here" "$mode" "$variant" || status=$?
    sleep 0.5
    kill -INT "$cap"
    wait "$cap" || true
    if [ "$status" -ne 0 ]; then
        echo "$name: the transfer failed (exit $status)" >&2
        failed=1
        continue
    fi
    chmod 644 "$out" # dumpcap writes 0600
    size=$(stat -c %s "$out")
    # tshark must decode it as uTP, with no malformed packets.
    frames=$(tshark -r "$out" -d udp.port==6891,bt-utp -d udp.port==6892,bt-utp \
        -Y bt-utp 2>/dev/null | wc -l)
    bad=$(tshark -r "$out" -d udp.port==6891,bt-utp -d udp.port==6892,bt-utp \
        -Y _ws.malformed 2>/dev/null | wc -l)
    echo "$name.pcapng: $size bytes, $frames uTP frames (tshark), $bad malformed"
    if [ "$frames" -eq 0 ] || [ "$bad" -ne 0 ]; then
        echo "$name: tshark does not decode it as uTP" >&2
        failed=1
    fi
    if [ "$size" -gt "$max_bytes" ]; then
        echo "$name: $size bytes, more than $max_bytes" >&2
        failed=1
    fi
done
exit "$failed"
