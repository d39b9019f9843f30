#!/usr/bin/env bash
# Seeds fuzz/corpus/ from real traces, at run time (corpora are not committed).
#
#   fuzz/seed-corpus.sh [CAPTURE_OR_DIRECTORY...]
#       default: pcaps/ and ../shared/pcaps/ (with its subdirectories)
#
# Every pcap and pcapng file is read (the format is sniffed from the magic bytes, with
# the conformance suite's reader, conformance/src/trace.rs) by fuzz/seeds, a small Rust
# program in the fuzz workspace, which writes:
#
# - corpus/decode/:     uTP datagrams, one per file, one per "shape" (type, extension
#                       chain, size bucket), so that a few hundred files cover every
#                       kind seen on the wire;
# - corpus/endpoint/:   programs for the endpoint target (utp/tests/common/hostile.rs)
#                       that replay runs of real datagrams from one address, with the
#                       capture's pauses;
# - corpus/connection/: programs for the connection target that replay recorded
#                       connections: writes of each DATA packet's size on the side that
#                       sent it, reads for its ACKs, a loss for each resend, shutdown on
#                       FIN, the capture's pauses; and a variant that also forges the
#                       recorded STATE packets (timestamps, windows, selective ACKs).
#
# Needs only cargo (no Python, no tshark). File names are content hashes: reruns add
# nothing twice, and what the fuzzer added to the corpus stays.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

if [ "$#" -gt 0 ]; then
    inputs=("$@")
else
    inputs=()
    for d in "$root/pcaps" "$root/../shared/pcaps" "$root"/../shared/pcaps/*/; do
        [ -d "$d" ] && inputs+=("$d")
    done
fi
if [ "${#inputs[@]}" -eq 0 ]; then
    echo "seed-corpus: no pcaps/ directory; the targets start from the dictionary alone" >&2
    exit 0
fi

cargo run --quiet --manifest-path "$here/Cargo.toml" -p utp-fuzz-seeds --bin seed-corpus -- \
    "$here/corpus" "${inputs[@]}"
