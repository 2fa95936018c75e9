"""Backend responses whose framing or length fields must not reach clients as they are (findings
of a security review), in memory.

Strategy: the memproxy proxy (tests/protocol/memproxy.py) with an h2 client and a scripted
HTTP/1.1 backend, or in bridge mode with the h2 server ``H2Peer`` of test_backend_h2 as backend.
Each case checks what the client gets (a 502 or reset instead of a wrongly framed body, or a head
without the field) and, where it matters, that the backend connection is not pooled again.
"""

import gzip

import h2.events

from test_backend_h2 import H2Peer, bridge_proxy
from test_relay_h2 import body, of, status


def test_transfer_coding_other_than_chunked_is_refused(proxy):
    """``Transfer-Encoding: gzip, chunked``: proxyd decodes only chunked, so the gzip bytes would
    reach the client as if they were the body (the header is hop-by-hop and there is no
    Content-Encoding). Like nginx, and like the gate for requests, proxyd refuses it: 502, and
    the backend connection is closed, not pooled."""
    coded = gzip.compress(b"hello world")
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                    + b"%x\r\n" % len(coded) + coded + b"\r\n0\r\n\r\n")
    events = client.pump()
    assert status(events, sid) == b"502" and body(events, sid) != coded
    assert backend.transport.disconnecting


def test_double_chunked_is_refused(proxy):
    """``Transfer-Encoding: chunked, chunked`` or two ``chunked`` fields: decoded once, the inner
    chunk framing would reach the client as body bytes; both are refused with a 502."""
    inner = b"5\r\nhello\r\n0\r\n\r\n"
    for codings in (b"Transfer-Encoding: chunked, chunked",
                    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"):
        client = proxy.h2_client()
        sid = client.request()
        backend = proxy.backend(-1)
        backend.respond(b"HTTP/1.1 200 OK\r\n" + codings + b"\r\n\r\n%x\r\n" % len(inner)
                        + inner + b"\r\n0\r\n\r\n")
        events = client.pump()
        assert status(events, sid) == b"502" and body(events, sid) != inner
        assert backend.transport.disconnecting


def test_chunk_size_that_is_not_hexdig_is_a_framing_error(proxy):
    """RFC 9112 §7.1: a chunk size is 1*HEXDIG. ``0x5``, ``0_5`` and a leading VT (which Python's
    int(size, 16) reads as 5, and a strtol-style parser reads ``0x5`` as 0, the last chunk) are
    refused as h11 refuses them: the client gets a 502 (or a reset, had the head gone out
    already), never the body, and the backend connection is closed, not pooled."""
    for size in (b"0x5", b"0_5", b"\x0b5", b"+5", b" 5"):
        client = proxy.h2_client()
        sid = client.request()
        backend = proxy.backend(-1)
        backend.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size
                        + b"\r\nhello\r\n0\r\n\r\n")
        events = client.pump()
        assert status(events, sid) == b"502" and b"hello" not in body(events, sid), size
        assert backend.transport.disconnecting


def test_bodiless_status_drops_its_content_length_for_h2(proxy):
    """RFC 9110 §8.6: no Content-Length in a 204; a 304's would describe a body that does not
    follow. A backend's ``Content-Length: 5`` on either reaches an h2 client without the length
    (forwarded, nghttp2 fails the 204's stream and the h2 library both: InvalidBodyLengthError),
    and the stream ends cleanly. The backend connection is not pooled again: content a backend
    announced may still come in a later read, and would answer the next request on it."""
    for line in (b"204 No Content", b"304 Not Modified"):
        client = proxy.h2_client()
        sid = client.request()
        backend = proxy.backend(-1)
        backend.respond(b"HTTP/1.1 " + line + b"\r\nContent-Length: 5\r\n\r\n")
        events = client.pump()
        [response] = of(events, h2.events.ResponseReceived, sid)
        assert b"content-length" not in dict(response.headers), response.headers
        assert status(events, sid) == line[:3] and of(events, h2.events.StreamEnded, sid)
        assert backend.transport.disconnecting


def test_h2_backend_transfer_encoding_does_not_disable_the_length_check(tmp_path):
    """An HTTP/2 backend's ``transfer-encoding`` makes its response malformed (RFC 9113 §8.2.2).
    It used to make the response gate drop Content-Length as if chunked framed the body, so a
    response declaring 9 bytes and ending after 2 reached the client as complete; it is refused
    (502) instead."""
    proxy = bridge_proxy(tmp_path)
    client = proxy.h2_client()
    sid = client.request()
    peer = H2Peer(proxy)
    [bsid] = peer.requests
    peer.h2.config.validate_outbound_headers = False
    peer.h2.config.normalize_outbound_headers = False
    peer.respond(bsid, b"hi", headers=[(b"transfer-encoding", b"chunked"),
                                       (b"content-length", b"9")])
    events = client.pump()
    assert status(events, sid) == b"502" and body(events, sid) != b"hi"
