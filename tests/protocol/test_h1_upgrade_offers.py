"""Protocol tests of upgrade offers on the HTTP/1.1 frontend, through the in-memory proxy.

A request that offers an upgrade (``Upgrade`` + ``Connection: upgrade``) and has a body is an
ordinary request: its body reaches the backend intact and nothing of it is ever parsed as a
request (llhttp skips such bodies; the codec reads them anyway, see :mod:`proxyd.codec.h1`). The
bytes a client sends after a pipelined upgrade request wait for that request's answer, not for
the end of the response before it. The backends' bytes are read back with h11.
"""

import re

import h11

from memproxy import answer_every_request
from tests.support import parse_h11_requests

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def exchange(proxy, client, rounds=4):
    """Answer every complete request on every backend connection with OK
    (:func:`memproxy.answer_every_request`); return [(method, target, body)] of every request
    the backends received, parsed by h11 from the exact bytes written."""
    seen = []
    for data in answer_every_request(proxy, OK, rounds).values():
        current = None
        for event in parse_h11_requests(data):
            if type(event) is h11.Request:
                current = [event.method, event.target, b""]
            elif type(event) is h11.Data:
                current[2] += bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                seen.append(tuple(current))
    return seen


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


def test_upgrade_offer_with_a_content_length_body_is_one_request(proxy):
    """POST with ``Upgrade: foo``, ``Connection: upgrade`` and a 36-byte body that looks like a
    request: as for every RFC 9112 recipient, the 36 bytes are the POST's body; the backend gets
    the POST with them, never a request of its own, and the client one answer."""
    client = proxy.h1_client()
    client.write(b"POST /a HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: upgrade\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
    seen = exchange(proxy, client)
    out = client.read()
    assert all(target != b"/smuggled" for _, target, _ in seen), (seen, out)
    assert out.count(b"HTTP/1.1 ") == 1, out  # one request sent, one answer
    assert seen == [(b"POST", b"/a", SMUGGLED)]


def test_upgrade_offer_with_a_broken_chunked_body_forwards_nothing_of_it(proxy):
    """The same with ``Transfer-Encoding: chunked``, whose body is no chunked coding: the POST
    is refused (its head may have gone to the backend, never with an empty body), and nothing of
    the body is parsed as a request."""
    client = proxy.h1_client()
    client.write(b"POST /a HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: upgrade\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + SMUGGLED)
    seen = exchange(proxy, client)
    out = client.read()
    assert all(target != b"/smuggled" for _, target, _ in seen), (seen, out)
    assert (b"POST", b"/a", b"") not in seen, seen
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"400"], out  # then the connection closes
    assert client.closing


def test_upgrade_offer_with_a_chunked_body_forwards_that_body(proxy):
    """A well-formed chunked body on a request offering an upgrade (e.g. a client offering h2c
    on a POST) reaches the backend intact, and nothing else does."""
    client = proxy.h1_client()
    client.write(b"POST /a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    seen = exchange(proxy, client)
    out = client.read()
    assert seen == [(b"POST", b"/a", b"hello")], (seen, out)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 1, out


WS = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
          b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked WebSocket text frame


def test_bytes_after_a_pipelined_handshake_wait_for_its_answer(proxy):
    """``GET /1`` then, pipelined, a WebSocket handshake and its first frame: the frame belongs
    to the tunnel (or, had the backend declined, to HTTP/1.1 after the handshake's answer), so
    the end of ``/1`` must not parse it; it reaches the backend after the 101."""
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + WS + FRAME)
    proxy.advance(0)
    first = proxy.backend(0)
    first.received()
    first.respond(OK)
    proxy.advance(0)
    data = first.received()
    if data:  # the handshake, on the reused connection
        first.respond(SWITCH)
        proxy.advance(0)
    out = client.read()
    assert b" 400 " not in out, out
    assert out.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 101 " in out, out
    assert first.received() == FRAME  # the frame reached the tunnel


def test_bytes_after_a_declined_pipelined_handshake_are_the_next_request(proxy):
    """``GET /1``, a WebSocket handshake the backend declines (``200``, no switch) and ``GET /3``
    in one write: ``/3`` is parsed only after the handshake's answer, and is served."""
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + WS + b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    seen = exchange(proxy, client, rounds=6)
    out = client.read()
    assert [target for _, target, _ in seen] == [b"/1", b"/ws", b"/3"], (seen, out)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"200"] * 3, out
