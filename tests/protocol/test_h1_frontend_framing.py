"""Protocol tests of the HTTP/1.1 frontend as the entry point of desynchronisation, through the
in-memory proxy: which requests a client's bytes are, which reach the backend (read back by the
oracles of :mod:`tests.oracles`), and which answer the client gets for each.

* A request that ends its connection (``Connection: close``, HTTP/1.0 without keep-alive)
  followed by more bytes in the same read is forwarded and answered; the bytes after it are
  nobody's request (RFC 9112 §9.6), never a 400 in its place.
* An HTTP/1.0 request with Transfer-Encoding has faulty framing (RFC 9112 §6.1): it is
  processed, then the connection closes; nothing pipelined after it reaches a backend.
"""

import re

import pytest

from memproxy import answer_every_request
from tests.oracles import assert_one_backend_request

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def serve(proxy, rounds=4):
    """Answer every request on every backend connection with OK for a few rounds; return the
    bytes each connection received (:func:`memproxy.answer_every_request`)."""
    return answer_every_request(proxy, OK, rounds)


@pytest.mark.parametrize("head", [
    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n",
], ids=["connection close", "http/1.0"])
def test_request_before_its_close_is_served_whatever_follows(proxy, head):
    """A request that closes the connection and, in the same write, another request after it:
    the first reaches the backend as exactly one request and its client gets its 200, then the
    connection closes; the second is never forwarded nor answered (a 400 for it would be read
    by the client as the answer to the first)."""
    client = proxy.h1_client()
    client.write(head + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    wires = serve(proxy)
    out = client.read()
    assert list(wires) == [0], wires
    assert_one_backend_request(wires[0], b"GET", b"/a", b"")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"200"], out
    assert client.closing


def test_http10_chunked_request_ends_its_connection(proxy):
    """HTTP/1.0 with ``Transfer-Encoding: chunked`` and ``Connection: keep-alive``, then a GET
    pipelined behind it: the POST and its body reach the backend, its answer says ``connection:
    close`` and the connection closes; the GET never reaches a backend (an HTTP/1.0 hop in
    front, which knows no chunked coding, may have framed those bytes otherwise)."""
    client = proxy.h1_client()
    client.write(b"POST /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                 b"GET /next HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    wires = serve(proxy)
    out = client.read()
    assert list(wires) == [0], wires
    assert_one_backend_request(wires[0], b"POST", b"/a", b"hello")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"200"], out
    assert b"connection: close\r\n" in out
    assert client.closing
