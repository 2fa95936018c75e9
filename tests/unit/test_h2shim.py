"""Pins every behaviour proxyd.codec.h2shim takes from h2's private internals (backend side).

If an h2 upgrade changes one of them, the matching test fails here, by name, instead of proxyd
misbehaving quietly: (1) h2 does not check a response's Content-Length itself; (2) a graceful
GOAWAY lets streams finish; (3) header blocks are bounded in bytes; (4) settings in force at
once, few closed streams kept. The peer in each test is a stock h2 server connection (public API
only) playing the backend.
"""

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from proxyd.codec import h2shim

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def backend():
    """A stock h2 server (the backend), preface queued."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                header_encoding=None))
    conn.initiate_connection()
    return conn


def proxy(header_list=65536):
    """A shimmed client connection (proxyd's side toward the backend), preface queued."""
    conn = h2shim.make_connection(True, {}, header_list)
    conn.initiate_connection()
    return conn


def exchange(a, b):
    """Carry a's output to b; return b's events."""
    data = a.data_to_send()
    return b.receive_data(data) if data else []


def connected():
    """A (proxy, backend) pair past both prefaces, with one request open on stream 1."""
    p, b = proxy(), backend()
    exchange(p, b)
    exchange(b, p)
    exchange(p, b)
    p.send_headers(1, GET, end_stream=True)
    exchange(p, b)
    return p, b


def test_response_content_length_is_not_checked_by_h2():
    """(1) A response body longer than its Content-Length is handed over (the stream machine
    judges it, per stream); h2 raises no connection error."""
    p, b = connected()
    b.send_headers(1, [(b":status", b"200"), (b"content-length", b"3")])
    b.send_data(1, b"12345", end_stream=True)
    events = exchange(b, p)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"12345"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_graceful_goaway_keeps_streams_below_its_last_stream_id():
    """(2) After a NO_ERROR GOAWAY from the backend, the response of a stream at or below the
    last stream id still arrives."""
    p, b = connected()
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 1
    events = p.receive_data(goaway.serialize())
    assert [type(e) for e in events] == [h2.events.ConnectionTerminated]
    b.send_headers(1, [(b":status", b"200")], end_stream=True)
    events = exchange(b, p)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)


def test_header_block_bytes_are_bounded():
    """(3) HEADERS + CONTINUATION beyond the header-list size fail the connection before the
    block is buffered whole (a CONTINUATION flood), even within h2's 64-frame bound."""
    p = proxy(header_list=4096)
    b = backend()
    exchange(p, b)
    exchange(b, p)
    p.send_headers(1, GET, end_stream=True)
    exchange(p, b)
    head = HeadersFrame(1)
    head.data = b"\x00" * 1000
    frames = head.serialize()
    for _ in range(10):
        cont = ContinuationFrame(1)
        cont.data = b"\x00" * 1000
        frames += cont.serialize()
    with pytest.raises(h2.exceptions.ProtocolError, match="CONTINUATION"):
        p.receive_data(frames)


def test_settings_are_in_force_from_the_first_byte_and_closed_streams_bounded():
    """(4) Our limits apply before any SETTINGS ACK, push is off, and at most MAX_CLOSED_STREAMS
    closed streams are remembered; the frontend never uses h2 (make_connection refuses)."""
    p = proxy(header_list=2048)
    assert p.local_settings.enable_push == 0
    assert p.decoder.max_header_list_size == 2048
    assert p.incoming_buffer.max_block == 2048
    assert p.MAX_CLOSED_STREAMS == h2shim.MAX_CLOSED_STREAMS == 1024
    b = backend()
    exchange(p, b)
    exchange(b, p)
    for sid in range(1, 2 * 1100, 2):
        p.send_headers(sid, GET, end_stream=True)
        exchange(p, b)
        b.send_headers(sid, [(b":status", b"204")], end_stream=True)
        exchange(b, p)
    assert len(p._closed_streams) <= h2shim.MAX_CLOSED_STREAMS
    with pytest.raises(ValueError):
        h2shim.make_connection(False, {}, 65536)
