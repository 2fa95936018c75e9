"""Pins every behaviour proxyd.codec.h2shim takes from h2's private internals.

If an h2 upgrade changes one of them, the matching test fails here, by name, instead of proxyd
misbehaving quietly: (1) streams over the concurrency limit are refused, not the connection;
(2) h2 does not check Content-Length itself; (3) a graceful GOAWAY lets streams finish;
(4) header blocks are bounded in bytes; (5) settings in force at once, few closed streams kept.
The peer in each test is a stock h2 connection (public API only).
"""

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from proxyd.codec import h2shim

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/"),
        (b"content-length", b"3")]


def client():
    """A stock h2 client, preface queued."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    return conn


def server(max_streams=100, header_list=65536):
    """A shimmed server connection, preface queued."""
    conn = h2shim.make_connection(
        False, {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}, header_list)
    conn.initiate_connection()
    return conn


def exchange(a, b):
    """Carry a's output to b; return b's events."""
    data = a.data_to_send()
    return b.receive_data(data) if data else []


def test_streams_over_the_limit_are_refused_not_the_connection():
    """(1) The third stream with MAX_CONCURRENT_STREAMS 2 gets RST_STREAM REFUSED_STREAM; the
    HPACK state stays in step (a later stream decodes); the connection lives."""
    c, s = client(), server(max_streams=2)
    for _ in range(3):  # sent before the client learns the limit (as a flood would be)
        c.send_headers(c.get_next_available_stream_id(), GET + [(b"x-big", b"v" * 100)])
    events = exchange(c, s)
    assert [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)] == [1, 3]
    resets = [e for e in exchange(s, c) if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(5, h2shim.REFUSED_STREAM)]
    assert s.refused_streams == 1
    s.reset_stream(1)
    exchange(s, c)
    c.send_headers(7, GET + [(b"x-big", b"v" * 100)], end_stream=True)
    [request] = [e for e in exchange(c, s) if isinstance(e, h2.events.RequestReceived)]
    assert (b"x-big", b"v" * 100) in request.headers


def test_content_length_is_not_checked_by_h2():
    """(2) A body longer than its Content-Length is handed over (the stream machine judges it);
    h2 raises no connection error."""
    c, s = client(), server()
    exchange(c, s)
    c.send_headers(1, POST)
    c.send_data(1, b"12345", end_stream=True)
    events = exchange(c, s)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"12345"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_graceful_goaway_keeps_streams_below_its_last_stream_id():
    """(3) After a NO_ERROR GOAWAY from the server, the client side (shimmed) still receives the
    response of a stream at or below the last stream id."""
    backend = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                   header_encoding=None))
    backend.initiate_connection()
    proxy = h2shim.make_connection(True, {}, 65536)
    proxy.initiate_connection()
    exchange(proxy, backend)
    exchange(backend, proxy)
    proxy.send_headers(1, GET, end_stream=True)
    exchange(proxy, backend)
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 1
    events = proxy.receive_data(goaway.serialize())
    assert [type(e) for e in events] == [h2.events.ConnectionTerminated]
    backend.send_headers(1, [(b":status", b"200")], end_stream=True)
    events = exchange(backend, proxy)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)


def test_header_block_bytes_are_bounded():
    """(4) HEADERS + CONTINUATION beyond the header-list size fail the connection before the
    block is buffered whole (a CONTINUATION flood), even within h2's 64-frame bound."""
    s = server(header_list=4096)
    c = client()
    exchange(c, s)
    head = HeadersFrame(1)
    head.data = b"\x00" * 1000
    frames = head.serialize()
    for _ in range(10):
        cont = ContinuationFrame(1)
        cont.data = b"\x00" * 1000
        frames += cont.serialize()
    try:
        s.receive_data(frames)
    except h2.exceptions.ProtocolError as exc:
        assert "CONTINUATION" in str(exc)
    else:
        raise AssertionError("a 11,000-byte header block was accepted with a 4096-byte bound")


def test_settings_are_in_force_from_the_first_byte_and_closed_streams_bounded():
    """(5) Our limits apply before any SETTINGS ACK; push is off; at most MAX_CLOSED_STREAMS
    closed streams are remembered."""
    s = server(max_streams=7, header_list=2048)
    assert s.local_settings.max_concurrent_streams == 7
    assert s.local_settings.enable_push == 0
    assert s.decoder.max_header_list_size == 2048
    assert s.incoming_buffer.max_block == 2048
    assert s.MAX_CLOSED_STREAMS == h2shim.MAX_CLOSED_STREAMS == 1024
    c = client()
    exchange(c, s)
    exchange(s, c)
    for sid in range(1, 2 * 1100, 2):
        c.send_headers(sid, GET, end_stream=True)
        exchange(c, s)
        s.send_headers(sid, [(b":status", b"204")], end_stream=True)
        exchange(s, c)
    assert len(s._closed_streams) <= h2shim.MAX_CLOSED_STREAMS
