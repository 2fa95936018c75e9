"""Protocol tests of backpressure (DESIGN.md §5): windows and producers, both directions.

Downloads: a shut client window or a client transport that stopped taking bytes pauses the
backend transport (StringTransport.producerState == "paused"); the client opening its window or
draining resumes it. Uploads: request bytes are acknowledged (WINDOW_UPDATE) only once the backend
transport accepted them without pushing back.
"""

import h11
import h2.events
import h2.settings

from memproxy import parse_frames

HEAD_1000 = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"


def data_of(events, sid):
    """Response body bytes on ``sid``."""
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)


def window_updates(data, sid):
    """Increments of the WINDOW_UPDATE frames for ``sid`` in raw proxy output."""
    return [f.window_increment for f in parse_frames(data) if f.type == 0x08 and f.stream_id == sid]


def test_zero_client_window_pauses_backend_until_window_update(proxy):
    """With the client's stream window at 0 the backend is paused; a WINDOW_UPDATE resumes it."""
    client = proxy.h2_client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = client.request()
    backend = proxy.backend()
    backend.respond(HEAD_1000 + b"a" * 300)
    events = client.pump()
    assert data_of(events, sid) == b""
    assert backend.paused
    client.h2.increment_flow_control_window(100, stream_id=sid)
    client.flush()
    assert data_of(client.pump(), sid) == b"a" * 100
    assert backend.paused  # 200 bytes still held
    client.h2.increment_flow_control_window(200, stream_id=sid)
    client.flush()
    assert data_of(client.pump(), sid) == b"a" * 200
    assert not backend.paused
    client.h2.increment_flow_control_window(700, stream_id=sid)
    client.flush()
    backend.respond(b"b" * 700)
    events = client.pump()
    assert data_of(events, sid) == b"b" * 700
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)


def test_client_not_reading_pauses_backend(proxy):
    """When the client transport pauses its producer (client not reading), the backend pauses too."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    backend.respond(HEAD_1000 + b"a" * 100)
    assert data_of(client.pump(), sid) == b"a" * 100
    assert client.transport.producer is client.protocol
    client.transport.producer.pauseProducing()
    backend.respond(b"b" * 400)
    assert backend.paused
    assert data_of(client.pump(), sid) == b""
    client.transport.producer.resumeProducing()
    assert data_of(client.pump(), sid) == b"b" * 400
    assert not backend.paused


def test_h1_client_not_reading_pauses_backend(proxy):
    """An HTTP/1.1 client whose socket is full pauses the backend the same way."""
    client = proxy.h1_client()
    client.write(b"GET /file HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    client.read()
    client.transport.producer.pauseProducing()
    backend.respond(b"01234")
    assert backend.paused
    assert client.read() == b""
    client.transport.producer.resumeProducing()
    assert client.read() == b"01234"
    assert not backend.paused


def test_request_body_acknowledged_only_after_backend_accepts(proxy):
    """No WINDOW_UPDATE while the backend transport pushes back; it comes once the backend drains."""
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/upload", end_stream=False)
    backend = proxy.backend()
    backend.requests()
    client.read()
    backend.transport.producer.pauseProducing()  # the backend's socket buffer is full
    client.send_body(sid, b"z" * 40000)
    assert window_updates(client.read(), sid) == []
    received = backend.requests()
    assert sum(len(e.data) for e in received if type(e) is h11.Data) == 40000
    backend.transport.producer.resumeProducing()
    assert window_updates(client.read(), sid) == [40000]


def test_request_body_acknowledged_immediately_when_backend_accepts(proxy):
    """Without backpressure, consumed body bytes reopen the client's stream window."""
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/upload", end_stream=False)
    proxy.backend()
    client.read()
    client.send_body(sid, b"z" * 40000)
    # h2 batches increments (half a window at a time): at least the first half comes back now.
    assert sum(window_updates(client.read(), sid)) >= 32768


def test_h1_upload_pauses_client_while_backend_pushes_back(proxy):
    """HTTP/1.1 has no window: a backend that does not read pauses the client transport instead."""
    client = proxy.h1_client()
    client.write(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n")
    backend = proxy.backend()
    backend.transport.producer.pauseProducing()
    client.write(b"01234")
    assert client.transport.producerState == "paused"
    backend.transport.producer.resumeProducing()
    assert client.transport.producerState == "producing"


def test_h2_read_limit_holds_window_updates_not_the_socket(make_proxy):
    """Over rate_limits.read an h2 client gets no WINDOW_UPDATE until the bucket refilled; the
    client transport keeps being read (flow control, not a stall)."""
    proxy = make_proxy(rate_limits={"read": {"rate": "16KiB", "burst": "16KiB"}})
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/upload", end_stream=False)
    proxy.backend()
    client.read()
    client.send_body(sid, b"z" * 60000)  # about 2.7 s worth at 16 KiB/s
    assert window_updates(client.read(), sid) == []
    assert client.transport.producerState == "producing"
    proxy.advance(1.0)
    assert window_updates(client.read(), sid) == []
    proxy.advance(2.5)
    assert sum(window_updates(client.read(), sid)) >= 32768


def test_stream_stuck_on_a_zero_window_is_reset_after_frontend_idle(make_proxy):
    """A stream whose client never opens its window is reset (CANCEL) after frontend_idle and its
    backend connection dropped; progress, however slow, restarts the clock."""
    proxy = make_proxy(timeouts={"frontend_idle": "10s"})
    client = proxy.h2_client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = client.request()
    backend = proxy.backend()
    backend.respond(HEAD_1000 + b"a" * 300)
    client.pump()
    proxy.advance(8)
    client.h2.increment_flow_control_window(10, stream_id=sid)
    client.flush()
    assert data_of(client.pump(), sid) == b"a" * 10
    proxy.advance(8)  # 16 s since the hold began, 8 s since the last progress
    assert not any(isinstance(e, h2.events.StreamReset) for e in client.pump())
    proxy.advance(3)
    resets = [e for e in client.pump() if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, 8)]
    assert backend.transport.disconnecting
