#!/usr/bin/env bash
# Seeds fuzz/corpus/ from real traces, at run time (corpora are not committed).
#
#   fuzz/seed-corpus.sh [PCAP...]     default: pcaps/*.pcap and ../shared/pcaps/*.pcap
#
# - corpus/decode/:   uTP datagrams from the captures, one per file, at most one per
#                     "shape" (type, first extension, extension lengths, size bucket) so
#                     that a few hundred files cover every kind seen on the wire.
# - corpus/endpoint/: programs for the endpoint target (see utp/tests/common/hostile.rs)
#                     that replay runs of small real datagrams from one address.
# Classic pcap only (Ethernet, raw IP, Linux cooked, BSD loopback); pcapng is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

if [ "$#" -gt 0 ]; then
    pcaps=("$@")
else
    shopt -s nullglob
    pcaps=("$root"/pcaps/*.pcap "$root"/../shared/pcaps/*.pcap "$root"/../shared/pcaps/*/*.pcap)
fi
if [ "${#pcaps[@]}" -eq 0 ]; then
    echo "seed-corpus: no pcap found; the targets start from the dictionaries alone" >&2
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "seed-corpus: python3 not found; skipping the seed corpus" >&2
    exit 0
fi
mkdir -p "$here/corpus/decode" "$here/corpus/endpoint" "$here/corpus/connection"

python3 - "$here/corpus" "${pcaps[@]}" <<'PY'
import hashlib, os, struct, sys

out, files = sys.argv[1], sys.argv[2:]

def udp_payloads(path):
    """(src, payload) of every UDP datagram in a classic pcap."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        return  # pcapng or unknown
    link = struct.unpack(e + "I", data[20:24])[0] & 0x0FFFFFFF
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack(e + "I", data[pos + 8:pos + 12])[0]
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        if link == 1:  # Ethernet, maybe VLAN-tagged
            if len(frame) < 14:
                continue
            et, off = struct.unpack(">H", frame[12:14])[0], 14
            while et in (0x8100, 0x88A8) and len(frame) >= off + 4:
                et, off = struct.unpack(">H", frame[off + 2:off + 4])[0], off + 4
        elif link in (0, 108):  # BSD loopback
            fam = struct.unpack("<I" if link == 0 else ">I", frame[:4])[0] if len(frame) >= 4 else 0
            et, off = (0x0800 if fam == 2 else 0x86DD), 4
        elif link == 101:  # raw IP
            et, off = (0x0800 if frame and frame[0] >> 4 == 4 else 0x86DD), 0
        elif link == 113:  # Linux cooked
            if len(frame) < 16:
                continue
            et, off = struct.unpack(">H", frame[14:16])[0], 16
        elif link == 276:  # Linux cooked v2
            if len(frame) < 20:
                continue
            et, off = struct.unpack(">H", frame[0:2])[0], 20
        else:
            return
        ip = frame[off:]
        if et == 0x0800 and len(ip) >= 20 and ip[0] >> 4 == 4:
            ihl = (ip[0] & 15) * 4
            if ip[9] != 17:
                continue
            src = ip[12:16]
            udp = ip[ihl:]
        elif et == 0x86DD and len(ip) >= 40:
            if ip[6] != 17:
                continue
            src = ip[8:24]
            udp = ip[40:]
        else:
            continue
        if len(udp) < 8:
            continue
        ulen = struct.unpack(">H", udp[4:6])[0]
        payload = udp[8:ulen] if 8 <= ulen <= len(udp) else udp[8:]
        yield src + udp[0:2], payload

def utp_shape(d):
    """A key of what the decoder sees, or None when it is not uTP version 1."""
    if len(d) < 20 or d[0] & 15 != 1 or d[0] >> 4 > 4:
        return None
    ext, pos, lens = d[1], 20, []
    while ext != 0:
        if pos + 2 > len(d):
            return None
        lens.append((ext, d[pos + 1]))
        ext, pos = d[pos], pos + 2 + d[pos + 1]
    if pos > len(d):
        return None
    return (d[0], d[1], tuple(lens), min(len(d) - pos, 1500) // 100)

def write(kind, blob):
    name = hashlib.sha1(blob).hexdigest()
    path = os.path.join(out, kind, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(blob)
        return 1
    return 0

shapes, n_decode, n_endpoint = set(), 0, 0
for path in files:
    run, runs = [], 0
    for src, d in udp_payloads(path):
        key = utp_shape(d)
        if key is None:
            continue
        if key not in shapes:
            shapes.add(key)
            n_decode += write("decode", d)
        # Endpoint programs: op 0 (raw datagram), address index, length, bytes.
        if len(d) <= 255:
            addr = hashlib.sha1(src).digest()[0] % 8
            run.append(bytes([0, addr, len(d)]) + d)
        if len(run) == 8:
            if runs < 64:
                n_endpoint += write("endpoint", bytes([7]) + b"".join(run) + bytes([4, 0, 50, 1]))
                runs += 1
            run = []
print(f"seed-corpus: {n_decode} decode seeds ({len(shapes)} shapes), "
      f"{n_endpoint} endpoint seeds from {len(files)} captures")
PY
