"""Protocol tests of proxyd's timers, driven by the MemoryReactorClock: no sleeps anywhere.

backend_read (no response byte in time: 504), frontend_header (a silent new connection closes),
frontend_idle (a connection without streams closes, with GOAWAY for HTTP/2).
"""

import h2.events
import pytest
from hyperframe.frame import GoAwayFrame

from memproxy import parse_frames


def statuses(events):
    """(stream id, :status) of every response in ``events``."""
    return [(e.stream_id, dict(e.headers)[b":status"]) for e in events
            if isinstance(e, h2.events.ResponseReceived)]


def test_backend_read_timeout_is_504(proxy):
    """No response byte within backend_read: the client gets 504 and the backend is dropped."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    proxy.advance(9.9)
    assert statuses(client.pump()) == []
    proxy.advance(0.2)
    events = client.pump()
    assert statuses(events) == [(sid, b"504")]
    assert b"Gateway Timeout" in b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert backend.transport.disconnecting


def test_backend_read_timeout_counts_from_last_byte(proxy):
    """Response bytes arriving keep the stream alive; silence after them still times out."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    proxy.advance(8)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    proxy.advance(8)  # 16 s since the request, 8 s since the last byte
    events = client.pump()
    assert statuses(events) == [(sid, b"200")]
    assert not [e for e in events if isinstance(e, h2.events.StreamReset)]
    proxy.advance(2.5)
    events = client.pump()
    # The response had started: the only honest signal left is a reset of that stream.
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamReset)] == [sid]


def test_upload_longer_than_backend_read_is_not_a_timeout(proxy):
    """A client streams a body for 15 s (1 KB/s) to a backend that takes every byte, with
    backend_read 10 s: a backend that reads the request is not silent, so no 504 and no reset
    in mid-upload; the backend's answer after the upload reaches the client. Once the upload is
    over, silence counts again: 10 s without a response byte is a 504."""
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/upload", end_stream=False)
    backend = proxy.backend()
    backend.requests()
    body = b""
    for i in range(15):
        client.send_body(sid, b"x" * 1000, end_stream=(i == 14))
        body += backend.received()  # the backend reads it all
        proxy.advance(1)
        events = client.pump()
        assert statuses(events) == [] and not [e for e in events
                                               if isinstance(e, h2.events.StreamReset)], i
    assert body.count(b"x") == 15000 and body.endswith(b"0\r\n\r\n")
    proxy.advance(8.5)  # 9.5 s since the last body bytes went to the backend
    assert statuses(client.pump()) == []
    proxy.advance(1)
    assert statuses(client.pump()) == [(sid, b"504")]


def test_h1_backend_read_timeout_is_504(proxy):
    """An HTTP/1.1 client gets a 504 response when the backend stays silent."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.backend()
    proxy.advance(10.1)
    assert client.read().startswith(b"HTTP/1.1 504 ")


@pytest.mark.parametrize("timeouts, idle", [
    ({}, 60),
    ({"frontend_idle": "5s", "frontend_header": "15s"}, 5),
])
def test_frontend_idle_timeout_closes_with_goaway(make_proxy, timeouts, idle):
    """A connection without streams for frontend_idle gets GOAWAY and is closed; also when
    frontend_idle (5 s) is below frontend_header (15 s): it closes 5 s after its last stream,
    not when the header timeout would have expired."""
    proxy = make_proxy(timeouts=timeouts)
    client = proxy.h2_client()
    sid = client.request()
    proxy.backend().respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert statuses(client.pump()) == [(sid, b"204")]
    proxy.advance(idle - 0.1)
    assert not client.closing
    proxy.advance(0.2)
    assert client.closing
    [goaway] = [f for f in parse_frames(client.read()) if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == sid


def test_frontend_idle_timer_waits_for_open_streams(make_proxy):
    """A stream in flight keeps the connection open past frontend_idle; idleness counts after it."""
    proxy = make_proxy(timeouts={"frontend_idle": "5s", "backend_read": "30s"})
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    proxy.advance(20)
    assert not client.closing
    backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert statuses(client.pump()) == [(sid, b"204")]
    proxy.advance(4.9)
    assert not client.closing
    proxy.advance(0.2)
    assert client.closing


def test_frontend_header_timeout_closes_silent_connection(proxy):
    """A client that connects and sends nothing is closed after frontend_header."""
    client = proxy.h1_client()
    proxy.advance(14.9)
    assert not client.closing
    proxy.advance(0.2)
    assert client.closing
    assert proxy.connects == 0


def test_h1_idle_keep_alive_connection_closes(proxy):
    """An HTTP/1.1 keep-alive connection idle for frontend_idle is closed."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.backend().respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.read().startswith(b"HTTP/1.1 200 ")
    proxy.advance(1)
    assert not client.closing
    proxy.advance(60)
    assert client.closing


def test_lost_connection_leaves_no_timers(proxy):
    """A client that disconnects mid-request leaves no timer behind holding its protocol alive."""
    client = proxy.h2_client()
    client.request()
    backend = proxy.backend()
    assert proxy.reactor.getDelayedCalls()  # the backend_read timer of the stream
    client.transport.loseConnection()
    client.finish_close()
    assert backend.transport.disconnecting  # the backend exchange was dropped
    backend.finish_close()
    pending = [call.func for call in proxy.reactor.getDelayedCalls() if call.active()]
    assert pending == []
    assert not proxy.listener.connections


def test_frontend_idle_counts_from_the_last_stream(proxy):
    """Each finished stream restarts frontend_idle (60 s): a connection used again after 40 s
    is still open 61 s after connecting and closes 60 s after its second stream."""
    client = proxy.h2_client()
    first = client.request()
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert statuses(client.pump()) == [(first, b"204")]
    proxy.advance(40)
    backend.finish_close()  # the pooled connection expired meanwhile (backend IDLE_TIMEOUT)
    second = client.request()
    proxy.backend().respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert statuses(client.pump()) == [(second, b"204")]
    proxy.advance(21)
    assert not client.closing
    proxy.advance(38.9)
    assert not client.closing
    proxy.advance(0.2)
    assert client.closing
