"""What bridge mode costs per request in memory: h2 client -> proxyd -> HTTP/2 backend (h2c).

Strategy: the in-memory proxy of the protocol tests (tests/protocol/memproxy.py) in ``mode:
bridge`` with one cleartext HTTP/2 backend. The client's HEADERS frames and the backend's
response frames are built beforehand (the response head as nginx encodes it: Huffman-coded
literals with incremental indexing and no table reference, so every frame can be prebuilt),
the proxy's output on both sides is discarded: what is measured is proxyd's own
per-request work (frontend codec, gate, relay, backend codec), nothing of the peers. TLS is not
included (pyOpenSSL's cost is measured on the daemon with ``bench/run.py``).

    python bench/bridge_cost.py [N] [time|prof|count]

``time``: µs of CPU per request (best of 3); ``prof``: cProfile by tottime; ``count``: run N
requests and exit (for ``valgrind --tool=callgrind``: count at two N and subtract, for
deterministic instructions per request on a noisy machine, e.g.
``valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/bridge_cost.py 1000 count``).
"""

import cProfile
import gc
import os
import pathlib
import pstats
import struct
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "protocol")]

from hpack import Encoder  # noqa: E402
from hpack.huffman import HuffmanEncoder  # noqa: E402
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH  # noqa: E402
from hpack.table import HeaderTable  # noqa: E402

from memproxy import BACKEND, Proxy, base_config  # noqa: E402

WARMUP = 300
_HEADER = struct.Struct(">BHBBL")


def frame(ftype, flags, stream_id, payload=b""):
    """One serialised HTTP/2 frame."""
    return _HEADER.pack(len(payload) >> 16, len(payload) & 0xFFFF, ftype, flags,
                        stream_id) + payload


def _huffman(data):
    """An HPACK string literal, Huffman-coded (as nginx sends them)."""
    coded = _HUFFMAN.encode(data)
    return bytes([0x80 | len(coded)]) + coded


def nginx_block(fields):
    """An HPACK block the way nginx 1.22 writes response heads: ``:status`` indexed, every other
    field a literal with incremental indexing (static name index when there is one), values
    Huffman-coded, and no reference to the dynamic table (so it is valid on any stream, and
    every response inserts its fields again)."""
    out = b""
    for name, value in fields:
        if (name, value) in _STATIC_FIELD:
            out += bytes([0x80 | _STATIC_FIELD[(name, value)]])
        elif name in _STATIC_NAME:
            out += bytes([0x40 | _STATIC_NAME[name]]) + _huffman(value)
        else:
            out += b"\x40" + _huffman(name) + _huffman(value)
    return out


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC_FIELD = {field: i for i, field in reversed(list(enumerate(HeaderTable.STATIC_TABLE, 1)))}
_STATIC_NAME = {field[0]: i for i, field in reversed(list(enumerate(HeaderTable.STATIC_TABLE, 1)))}
RESPONSE_HEAD = nginx_block([(b":status", b"200"), (b"server", b"nginx/1.22.1"),
                         (b"date", b"Sun, 06 Dec 2026 03:00:00 GMT"),
                         (b"content-type", b"application/octet-stream"),
                         (b"content-length", b"100"),
                         (b"last-modified", b"Sun, 06 Dec 2026 02:00:00 GMT"),
                         (b"etag", b"\"6751a0a0-64\""), (b"accept-ranges", b"bytes")])


def setup(n):
    """A bridge proxy, a connected client, and ``one()`` doing one request."""
    data = base_config(mode="bridge", backends=[{"address": BACKEND, "protocol": "h2",
                                                 "tls": False}])
    proxy = Proxy(pathlib.Path(tempfile.mkdtemp()), data)
    client = proxy.h1_client()
    client.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, struct.pack(">HL", 4, 2**31 - 1))
                 + frame(8, 0, 0, struct.pack(">L", 2**31 - 1 - 65535)))
    client.read()
    enc = Encoder()
    requests = []
    for i in range(n + WARMUP):
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"https"),
                            (b":authority", b"127.0.0.1:8443"), (b":path", b"/100b"),
                            (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")])
        requests.append(frame(1, 0x5, 1 + 2 * i, block))
    responses = [frame(1, 0x4, 1 + 2 * i, RESPONSE_HEAD) + frame(0, 0x1, 1 + 2 * i, b"x" * 100)
                 for i in range(n + WARMUP)]
    state = {"backend": None, "i": 0}

    def one():
        i = state["i"]
        state["i"] = i + 1
        client.write(requests[i])
        backend = state["backend"]
        if backend is None:
            backend = state["backend"] = proxy.backend(0)
            # The backend's SETTINGS (max 128 streams, as nginx) and its ACK of ours.
            backend.respond(frame(4, 0, 0, struct.pack(">HL", 3, 128)) + frame(4, 1, 0))
        backend.transport.clear()
        backend.respond(responses[i])
        out = client.transport.value()
        client.transport.clear()
        return out

    return one


def main():
    """Run the benchmark (see the module docstring)."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    mode = sys.argv[2] if len(sys.argv) > 2 else "time"
    one = setup(n)
    for _ in range(WARMUP):
        out = one()
    assert b"x" * 100 in out, out
    gc.collect()
    if mode == "prof":
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            one()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    elif mode == "count":
        for _ in range(n):
            one()
    else:
        best = 1e9
        for _ in range(3):
            start = time.process_time()
            for _ in range(n // 3):
                one()
            best = min(best, (time.process_time() - start) / (n // 3))
        print(f"{1e6 * best:.1f} µs/request (proxy only, best of 3)")


if __name__ == "__main__":
    main()
