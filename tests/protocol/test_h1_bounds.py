"""Protocol tests of what one read from an HTTP/1.1 client may cost proxyd, in memory.

httptools parses a whole read at once; the codec must not turn that into work or memory out of
proportion to the bytes: pipelined requests are parsed only a few at a time ahead of the one
answered (the rest of a read waits as bytes), and the body bytes of one read reach the backend
in one write, however finely the client cut them into chunks (see :mod:`proxyd.codec.h1`).
"""

import gc
import tracemalloc


def test_h1_pipelined_read_is_not_held_parsed(proxy):
    """One 64 KiB read of 2,427 pipelined tiny GETs, ten connections, no response yet: each
    connection holds a few times the bytes it read, not 1.3 MiB of parsed events (20 times the
    bytes) until the stall timer (frontend_idle) for a client that never reads its answers."""
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    blob = request * (65536 // len(request))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        clients = []
        for _ in range(10):
            client = proxy.h1_client()
            client.write(blob)
            clients.append(client)
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - before) / 10
    finally:
        tracemalloc.stop()
    assert held < 4 * len(blob), f"{held / 1024:.0f} KiB held per connection for {len(blob)} B read"


def test_h1_one_byte_chunks_one_backend_write_each(proxy):
    """10,000 one-byte chunks in one read (60,000 bytes) are a handful of backend writes, not
    10,000 (one send() and one TCP segment each with direct writes); the backend gets every byte."""
    client = proxy.h1_client()
    client.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = proxy.backend()
    n = backend.count_writes()
    client.write(b"1\r\na\r\n" * 10_000)
    assert n[0] <= 10, f"{n[0]} backend writes for one client read"
    client.write(b"0\r\n\r\n")
    body = b"".join(bytes(e.data) for e in backend.requests() if type(e).__name__ == "Data")
    assert body == b"a" * 10_000
