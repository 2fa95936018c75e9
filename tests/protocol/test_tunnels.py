"""Protocol tests of WebSocket tunnels and the h2c upgrade: bytes in, bytes out, time by hand.

The clients are raw HTTP/1.1 bytes and an h2 library client (``raw``: it sends ``:protocol``
without checking); the backend is a StringTransport whose bytes the test reads and writes. What
is checked is what only the network layer can get wrong: the held bytes after a handshake reach
the backend after the 101, the tunneled connection is closed and never pooled, backpressure
(the backend paused while the client's window is shut), END_STREAM and RST_STREAM as half-close
and close, and the idle timer on the reactor's clock.
"""

import h2.config
import h2.connection
import h2.events

from memproxy import HANDSHAKE, KEY, h2_tunnel, key_of, switched

def test_h1_tunnel_carries_bytes_both_ways_and_is_never_pooled(proxy):
    """Bytes the client sent right after its handshake wait for the 101, then flow; the
    backend's close ends the client's connection; the next request needs a new connection."""
    client = proxy.h1_client()
    client.write(HANDSHAKE + b"early")
    backend = proxy.backend()
    handshake = backend.received()
    assert handshake.startswith(b"GET /chat HTTP/1.1\r\n") and b"early" not in handshake
    backend.respond(switched(KEY) + b"from backend")
    out = client.read()
    assert out.startswith(b"HTTP/1.1 101 ") and out.endswith(b"\r\n\r\nfrom backend")
    proxy.advance(0)  # the held bytes come out on the next turn
    assert backend.received() == b"early"
    client.write(b"later")
    assert backend.received() == b"later"
    backend.close()
    assert client.closing
    client.finish_close()
    other = proxy.h1_client()
    other.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert proxy.connects == 2


def test_client_close_closes_the_tunnel_backend(proxy):
    """The HTTP/1.1 client going away closes the tunnel's backend connection."""
    client = proxy.h1_client()
    client.write(HANDSHAKE)
    backend = proxy.backend()
    backend.received()
    backend.respond(switched(KEY))
    client.transport.loseConnection()
    client.finish_close()
    assert backend.transport.disconnecting


def test_rfc8441_tunnel_respects_the_client_window(proxy):
    """Backend bytes beyond the client's stream window are held and the backend paused; the
    client's WINDOW_UPDATE lets the rest through and resumes the backend."""
    client, sid, backend = h2_tunnel(proxy)
    backend.respond(b"x" * 100_000)
    events = client.pump()
    got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert got == 65535 and backend.paused
    client.h2.acknowledge_received_data(got, sid)
    client.flush()
    events = client.pump()
    got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert got == 100_000 - 65535 and not backend.paused


def test_rfc8441_data_and_end_stream_reach_the_backend(proxy):
    """Client DATA is written to the backend as it is; END_STREAM is a half-close (the tunnel
    stays open for the backend's bytes)."""
    client, sid, backend = h2_tunnel(proxy)
    client.send_body(sid, b"\x81\x82abcdXY", end_stream=True)
    assert backend.received() == b"\x81\x82abcdXY"
    backend.respond(b"still open")
    events = client.pump()
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) \
        == b"still open"


def test_rfc8441_bytes_and_end_stream_before_the_switch_wait_for_the_tunnel(proxy):
    """DATA and END_STREAM an RFC 8441 client sends before the backend's 101 wait for the
    tunnel (as the HTTP/1.1 path holds bytes sent after a handshake): the handshake goes alone,
    then the bytes and the half-close follow the 101; the client's response is the 200."""
    client = proxy.h2_client(raw=True)
    sid = client.request(b"CONNECT", b"/chat", headers=[(b":protocol", b"websocket"),
                                                        (b"sec-websocket-version", b"13")],
                         end_stream=False)
    client.send_body(sid, b"\x81\x02hi", end_stream=True)
    backend = proxy.backend()
    half_closed = []
    backend.transport.loseWriteConnection = lambda: half_closed.append(True)
    handshake = backend.received()
    assert handshake.startswith(b"GET /chat HTTP/1.1\r\n") and handshake.endswith(b"\r\n\r\n")
    assert not half_closed
    backend.respond(switched(key_of(handshake)))
    events = client.pump()
    response = [e for e in events if isinstance(e, h2.events.ResponseReceived)][0]
    assert dict(response.headers)[b":status"] == b"200"
    assert not [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert backend.received() == b"\x81\x02hi" and half_closed == [True]
    backend.respond(b"\x81\x02yo")
    events = client.pump()
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) \
        == b"\x81\x02yo"


def test_rfc8441_bytes_before_a_refused_switch_are_dropped_with_the_stream(proxy):
    """Bytes held for a tunnel the backend then refuses (a 403, not a 101) never reach it: the
    client gets the 403 and its stream ends, and the backend connection is not reused."""
    client = proxy.h2_client(raw=True)
    sid = client.request(b"CONNECT", b"/chat", headers=[(b":protocol", b"websocket"),
                                                        (b"sec-websocket-version", b"13")],
                         end_stream=False)
    client.send_body(sid, b"\x81\x02hi")
    backend = proxy.backend()
    assert backend.received().endswith(b"\r\n\r\n")
    backend.respond(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno")
    events = client.pump()
    response = [e for e in events if isinstance(e, h2.events.ResponseReceived)][0]
    assert dict(response.headers)[b":status"] == b"403"
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"no"
    assert [e for e in events if isinstance(e, h2.events.StreamEnded)]
    assert backend.received() == b"" and backend.transport.disconnecting


def test_rfc8441_reset_closes_the_backend(proxy):
    """RST_STREAM from the client closes the tunnel's backend connection."""
    client, sid, backend = h2_tunnel(proxy)
    client.h2.reset_stream(sid)
    client.flush()
    assert backend.transport.disconnecting


def test_idle_tunnel_is_reset(make_proxy):
    """``timeouts.tunnel_idle``: traffic keeps the tunnel; silence for the whole period ends it
    (RST_STREAM CANCEL, the backend connection dropped)."""
    proxy = make_proxy(timeouts={"tunnel_idle": "5s"})
    client, sid, backend = h2_tunnel(proxy)
    proxy.advance(4)
    client.send_body(sid, b"ping")
    proxy.advance(4)
    assert not backend.transport.disconnecting
    proxy.advance(2)
    events = client.pump()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == 0x8 and backend.transport.disconnecting


def test_h2c_upgrade_answers_on_stream_1(proxy):
    """RFC 7540 §3.2 in memory: 101, our SETTINGS, then the response on stream 1."""
    import h2.config
    import h2.connection

    client = proxy.h1_client()
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = h2c.initiate_upgrade_connection()
    client.write(b"GET /up HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings"
                 b"\r\nUpgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n" +
                 h2c.data_to_send())
    out = client.read()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: h2c" in head.lower()
    request, _end = proxy.backend().requests()
    assert request.target == b"/up"
    proxy.backend().respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events = h2c.receive_data(rest + client.read())
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert [e.stream_id for e in data] == [1] and data[0].data == b"ok"


def test_h2c_upgrade_never_also_becomes_a_websocket_tunnel(proxy):
    """``Upgrade: h2c, websocket``: proxyd takes the h2c upgrade; the request it then answers on
    HTTP/2 stream 1 is an ordinary GET, not also a WebSocket tunnel (it was: the backend got a
    handshake and the client a 200 whose body was the raw tunnel). One protocol only (RFC 9110
    §7.8)."""
    client = proxy.h1_client()
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = h2c.initiate_upgrade_connection()
    client.write(b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings"
                 b"\r\nUpgrade: h2c, websocket\r\nSec-WebSocket-Key: " + KEY +
                 b"\r\nSec-WebSocket-Version: 13\r\nHTTP2-Settings: " + settings + b"\r\n\r\n" +
                 h2c.data_to_send())
    out = client.read()
    backend = proxy.backend()
    handshake = backend.received()
    assert b"upgrade: websocket" not in handshake.lower(), handshake
    backend.respond(switched(KEY) + b"raw tunnel bytes")
    proxy.advance(0)
    events = h2c.receive_data(out.partition(b"\r\n\r\n")[2] + client.read())
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert b"raw tunnel bytes" not in data


def test_rfc8441_client_cannot_choose_the_backend_key(proxy):
    """RFC 8441 §5: no Sec-WebSocket-Key over HTTP/2; proxyd makes the backend's key itself and
    checks the accept against it: keys an extended CONNECT carries (here two, one not base64)
    are dropped (they were forwarded, and the accept checked against the client's first)."""
    client = proxy.h2_client(raw=True)
    client.request(b"CONNECT", b"/chat", headers=[
        (b":protocol", b"websocket"),
        (b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAAAA=="),
        (b"sec-websocket-key", b"odd value, with stuff")], end_stream=False)
    handshake = proxy.backend().received()
    keys = [line for line in handshake.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")]
    assert len(keys) == 1, handshake
    assert b"AAAAAAAAAAAAAAAAAAAAAA==" not in handshake and b"odd value" not in handshake
