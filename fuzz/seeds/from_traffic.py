#!/usr/bin/env python3
"""Seeds the text decoders' corpora from real traffic: the Phoenix 1.7 wire capture
(shared/reference/phoenix-1.7.24-frames.txt) and the frames, query strings and
headers written in the gateway's tests. Files are named by the SHA-1 of their
content, as cargo fuzz names its own, so running this again adds nothing twice.

    python3 fuzz/seeds/from_traffic.py [path/to/phoenix-1.7.24-frames.txt]

The generated seeds (gossip messages, JWTs, LongPoll tokens, API bodies, node
op sequences) come from `cargo run --example seeds` in fuzz/.
"""
import base64
import hashlib
import pathlib
import re
import sys

FUZZ = pathlib.Path(__file__).resolve().parent.parent
REPO = FUZZ.parent
CAPTURE = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/reference/phoenix-1.7.24-frames.txt"
TEST_DIRS = ["gateway/tests", "gateway/src/socket", "gateway/src/protocol", "gateway/src/server"]
PER_TARGET = 40


def spread(items, n=PER_TARGET):
    """At most n of the sorted, de-duplicated items, evenly spaced."""
    items = sorted(set(items))
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def write(target, blobs):
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(blobs)} seeds")


v1, v2, binary, queries, headers = [], [], [], [], []

if CAPTURE.exists():
    for line in CAPTURE.read_text().splitlines():
        m = re.search(r"(>>|<<) (.*)$", line)
        if m:
            frame = m.group(2)
            if frame.startswith("BINARY"):
                binary.append(bytes.fromhex(re.search(r"hex=([0-9a-f]+)", frame).group(1)))
            elif frame.startswith("{"):
                v1.append(frame)
            elif frame.startswith("["):
                v2.append(frame)
        m = re.search(r"OPEN \S+\?(\S+)", line)
        if m:
            queries.append(m.group(1))
else:
    print(f"no capture at {CAPTURE}; seeding from the tests only")

for folder in TEST_DIRS:
    for path in (REPO / folder).rglob("*.rs"):
        text = path.read_text()
        for lit in re.findall(r'r#"(.*?)"#', text):
            if "\n" in lit or "{{" in lit or re.search(r"\{[a-z_]+\}", lit):
                continue  # a format! template, not a frame
            if lit.startswith("["):
                v2.append(lit)
            elif lit.startswith("{") and '"topic"' in lit:
                v1.append(lit)
        for q in re.findall(r'"/socket/(?:websocket|longpoll)\?([^"{}]*)"', text):
            queries.append(q)
        for h in re.findall(r'"((?:phoenix, )?base64url\.bearer\.phx\.[^"]*)"', text):
            headers.append(h)

queries += ["vsn=1.0.0", "vsn=2.0.0", "vsn=2.0.1&token=abc", "params[a][b]=1&params[c][]=2",
            "token=a%20b&user_id=%E2%9C%93", "vsn", "x[]=1&x[]=2&x[y]=3"]
token = base64.b64encode(b"my-secret-token").decode().rstrip("=")
headers += ["phoenix", f"phoenix, base64url.bearer.phx.{token}", f"base64url.bearer.phx.{token}, phoenix",
            "phoenix,base64url.bearer.phx.", "graphql-ws, phoenix", ""]

write("frame_v1_json", spread(v1))
write("frame_v2_json", spread(v2))
write("frame_v2_binary", spread(binary) + [b"\x00\x00\x00\x00", b"\x00\x01\x01\x05\x04" + b"1" + b"1" + b"room:" + b"ping"])
write("connect_query", spread(queries))
write("subprotocol", spread(headers))

# LongPoll POST bodies: the first byte is the mode (bit 0: v1, bit 1: ndjson),
# the rest the body: single frames, ndjson batches, base64 binary lines.
bodies = []
v2s, v1s = spread(v2, 12), spread(v1, 6)
for f in v2s[:6]:
    bodies.append(b"\x00" + f.encode())
for f in v1s[:4]:
    bodies.append(b"\x01" + f.encode())
for i in range(0, len(v2s), 3):
    bodies.append(b"\x02" + "\n".join(v2s[i:i + 3]).encode() + b"\n")
bodies.append(b"\x02" + "\r\n".join(v2s[:2]).encode())
bodies.append(b"\x03" + "\n".join(v1s[:3]).encode())
for b in spread(binary, 4):
    bodies.append(b"\x02" + base64.b64encode(b) + b"\n" + v2s[0].encode())
write("longpoll_body", bodies)
