"""WebSocket and h2c bootstrapping without sockets: the pure helpers (proxyd.websocket,
proxyd.h2c), the response side of the gate (check_switch), and the codecs' parts of an upgrade
(the HTTP/1.1 server codec holding and piping bytes, the HTTP/1.1 writer's handshake and 101,
the HTTP/2 codec's SETTINGS_ENABLE_CONNECT_PROTOCOL and h2c stream 1).

Vectors come from the RFCs: RFC 6455 §1.3's key and accept, RFC 7540 §3.2's HTTP2-Settings
(base64url of a SETTINGS payload), RFC 8441 §3's setting 0x8.
"""

import base64
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from proxyd import events as ev
from proxyd import gate, h2c, websocket
from proxyd.bridge import Policy, backend_request
from proxyd.codec.h1 import H1ServerCodec
from proxyd.codec.h1client import H1FastClientCodec
from proxyd.codec.h2 import H2ServerCodec
from proxyd.config import HeaderPolicy
from proxyd.errors import Refused
from tests.support import gated

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
UPGRADE_GET = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
POLICY = Policy(headers=HeaderPolicy(x_forwarded_for="off", x_forwarded_proto=False, via=False),
                tls=False)


# -- pure helpers -------------------------------------------------------------------------------

def test_accept_of_the_rfc_example():
    """RFC 6455 §1.3: the sample nonce's accept value."""
    assert websocket.accept_for(KEY) == ACCEPT


def test_new_keys_are_16_random_bytes():
    """RFC 6455 §4.1: a key is 16 random bytes, base64 (24 characters), fresh each time."""
    keys = {websocket.new_key() for _ in range(20)}
    assert len(keys) == 20 and all(len(base64.b64decode(k)) == 16 for k in keys)


@pytest.mark.parametrize("value, found", [
    (b"websocket", True), (b"WebSocket", True), (b"h2c, websocket", True), (b" websocket ", True),
    (b"websockets", False), (b"web socket", False), (b"", False)])
def test_token_lists(value, found):
    """Comma-separated token lists, case-insensitive, spaces ignored."""
    assert websocket.has_token(value, b"websocket") is found


def h1_head(fields, method=b"GET", end_stream=True, version=b"1.1"):
    """A raw HTTP/1.1 head as the codec hands it out."""
    return ev.RequestReceived(stream_id=1, headers=[(b":method", method), (b":path", b"/"),
                                                    *fields],
                              end_stream=end_stream, http_version=version)


SETTINGS_B64 = base64.urlsafe_b64encode(struct.pack(">HL", 3, 100)).rstrip(b"=")
H2C_FIELDS = [(b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
              (b"HTTP2-Settings", SETTINGS_B64)]


@pytest.mark.parametrize("event, expected", [
    (h1_head(H2C_FIELDS), struct.pack(">HL", 3, 100)),
    (h1_head(H2C_FIELDS[:3] + [(b"HTTP2-Settings", b"")]), b""),           # no settings at all
    (h1_head(H2C_FIELDS, method=b"POST", end_stream=False), None),         # a body follows
    (h1_head(H2C_FIELDS, version=b"1.0"), None),
    (h1_head(H2C_FIELDS[:1] + [(b"Connection", b"Upgrade")] + H2C_FIELDS[2:]), None),
    (h1_head(H2C_FIELDS + [(b"HTTP2-Settings", SETTINGS_B64)]), None),     # two of them
    (h1_head(H2C_FIELDS[:3] + [(b"HTTP2-Settings", b"AAM")]), None),       # not 6n bytes
    (h1_head(H2C_FIELDS[:3] + [(b"HTTP2-Settings", b"AA+/AAAA")]), None),  # not base64url
    (h1_head([(b"Host", b"a"), (b"Upgrade", b"websocket")]), None),
], ids=["valid", "empty", "body", "HTTP/1.0", "no http2-settings token", "two", "length",
        "alphabet", "websocket"])
def test_h2c_upgrade_settings(event, expected):
    """RFC 7540 §3.2 and §3.2.1: what asks for h2c, and its decoded SETTINGS payload."""
    assert h2c.upgrade_settings(event) == expected


# -- the gate's side of the response ------------------------------------------------------------

SWITCH = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


@pytest.mark.parametrize("status, fields, accept, connect, reason", [
    (101, SWITCH + [(b"sec-websocket-accept", ACCEPT)], ACCEPT, False, None),
    (101, SWITCH, None, False, None),                       # the client's key: its own check
    (101, SWITCH + [(b"sec-websocket-accept", b"x")], ACCEPT, False, "bad_upgrade"),
    (101, SWITCH[:1] + [(b"sec-websocket-accept", ACCEPT)], ACCEPT, False, "bad_upgrade"),
    (101, [(b"upgrade", b"h2c"), SWITCH[1]], None, False, "bad_upgrade"),
    (200, SWITCH, None, False, "bad_upgrade"),
    (200, [], None, True, None),                            # RFC 8441 §5 from an h2 backend
    (101, [], None, True, "bad_upgrade"),
    (101, SWITCH + [(b"x", b"a\r\nb")], None, False, "bad_response"),
])
def test_check_switch(status, fields, accept, connect, reason):
    """What opens a tunnel: 101 naming websocket (and the accept of proxyd's own key), or a 2xx
    to an extended CONNECT; anything else is refused with its row."""
    if reason is None:
        assert gate.check_switch(status, fields, accept, connect) == fields
        return
    with pytest.raises(Refused) as refused:
        gate.check_switch(status, fields, accept, connect)
    assert refused.value.reason == reason


def test_rfc8441_request_gets_a_fresh_key_for_the_backend():
    """An extended CONNECT has no key: the backend request gets one of proxyd's (own_key)."""
    request = gated(ev.RequestReceived(stream_id=1, headers=[
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
        (b":authority", b"a"), (b":path", b"/chat"), (b"sec-websocket-version", b"13")],
        end_stream=False, http_version=b"2"), extended_connect=True)
    breq = backend_request(request, client_ip=b"1.2.3.4", policy=POLICY)
    assert breq.own_key and (b"sec-websocket-key", breq.key) in breq.headers
    assert breq.method == b"GET" and not breq.has_body


# -- the HTTP/1.1 writer (backend side) ---------------------------------------------------------

def h1_handshake():
    """A writer that sent the WebSocket handshake of an HTTP/1.1 client."""
    request = gated(ev.RequestReceived(stream_id=1, headers=[
        (b":method", b"GET"), (b":path", b"/chat"), (b"host", b"a"),
        (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
        (b"sec-websocket-key", KEY)], end_stream=True, http_version=b"1.1"))
    codec = H1FastClientCodec()
    codec.send_request(1, backend_request(request, client_ip=b"1.2.3.4", policy=POLICY))
    return codec


def test_writer_adds_the_upgrade_once():
    """The handshake goes out as a GET with one Upgrade and one Connection, the key kept."""
    head = h1_handshake().data_to_send().lower()
    assert head.startswith(b"get /chat http/1.1\r\n")
    assert head.count(b"upgrade: websocket\r\n") == 1 and head.count(b"connection: upgrade") == 1
    assert b"sec-websocket-key: " + KEY.lower() in head and b"content-length" not in head


def test_writer_turns_into_a_pipe_on_101():
    """After the 101 every byte is tunnel data both ways; the connection is never reused."""
    codec = h1_handshake()
    codec.data_to_send()
    events = codec.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT +
                                b"\r\n\r\n\x81\x02hi")
    assert [type(e) for e in events] == [ev.TunnelOpened, ev.DataReceived]
    assert events[1].data == b"\x81\x02hi" and codec.tunnel and not codec.reusable()
    codec.send_data(b"\x81\x82abcdXY")  # a masked client frame, written as it is
    assert codec.data_to_send() == b"\x81\x82abcdXY"
    assert [type(e) for e in codec.receive_data(b"")] == [ev.StreamEnded]


def test_writer_refuses_a_101_nobody_asked_for():
    """A 101 to a request without an upgrade is a framing error (Refused bad_response)."""
    codec = H1FastClientCodec()
    request = gated(ev.RequestReceived(stream_id=1, headers=[
        (b":method", b"GET"), (b":path", b"/"), (b"host", b"a")], end_stream=True,
        http_version=b"1.1"))
    codec.send_request(1, backend_request(request, client_ip=b"1.2.3.4", policy=POLICY))
    with pytest.raises(Refused) as refused:
        codec.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert refused.value.reason == "bad_response"


def test_non_101_answer_closes_the_upgraded_connection():
    """An ordinary answer to the handshake is a response like any other, but the connection
    is not reused (the backend may have half-switched)."""
    codec = h1_handshake()
    events = codec.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert [type(e) for e in events] == [ev.ResponseReceived, ev.DataReceived, ev.StreamEnded]
    assert not codec.reusable()


# -- the HTTP/1.1 server codec (client side) ----------------------------------------------------

def test_bytes_after_an_upgrade_wait_then_flow_through_the_tunnel():
    """Bytes after the handshake are held (backlogged) until the 101; then they, and all later
    bytes, are DataReceived of that exchange, and the 101 carries Connection: upgrade."""
    codec = H1ServerCodec()
    events = codec.receive_data(UPGRADE_GET + b"\x81\x85early")
    assert [type(e) for e in events] == [ev.RequestReceived] and codec.backlogged
    codec.send_response(1, 101, [(b"upgrade", b"websocket"), (b"sec-websocket-accept", ACCEPT)])
    codec.open_tunnel(1)
    head = codec.data_to_send()
    assert head.startswith(b"HTTP/1.1 101 ") and b"connection: upgrade\r\n" in head
    assert b"transfer-encoding" not in head and not codec.backlogged
    events = codec.receive_data(b"")
    assert events == [ev.DataReceived(stream_id=1, data=b"\x81\x85early")]
    assert codec.receive_data(b"more") == [ev.DataReceived(stream_id=1, data=b"more")]
    codec.send_data(1, b"\x81\x02ok")
    assert codec.data_to_send() == b"\x81\x02ok"
    codec.end_stream(1)
    assert codec.wants_close


def test_ordinary_answer_resumes_http1_parsing():
    """A 403 to the handshake: the held bytes are parsed as the next HTTP/1.1 request."""
    codec = H1ServerCodec()
    codec.receive_data(UPGRADE_GET + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    codec.send_response(1, 403, [(b"content-length", b"0")], end_stream=True)
    events = codec.receive_data(b"")
    assert [type(e) for e in events] == [ev.RequestReceived]
    assert events[0].headers[1] == (b":path", b"/next") and not codec.wants_close


def test_server_codec_never_sends_an_uninvited_101():
    """A 101 on an exchange that asked for no upgrade is refused by the writer."""
    codec = H1ServerCodec()
    codec.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(Refused):
        codec.send_response(1, 101, [(b"upgrade", b"websocket")])


def test_h2c_rest_is_handed_over():
    """take_rest: the bytes after an h2c request (the preface) leave the HTTP/1.1 codec."""
    codec = H1ServerCodec()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" \
           b"HTTP2-Settings: " + SETTINGS_B64 + b"\r\n\r\n"
    codec.receive_data(head + b"PRI * HTTP/2.0\r\n")
    assert codec.take_rest() == b"PRI * HTTP/2.0\r\n"


# -- the HTTP/2 server codec --------------------------------------------------------------------

def h2_client_against(codec):
    """An h2 library client that read ``codec``'s preface; returns (client, its events)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    codec.initiate()
    events = client.receive_data(codec.data_to_send())
    codec.receive_data(client.data_to_send())
    return client, events


@pytest.mark.parametrize("enabled", [True, False])
def test_settings_enable_connect_protocol(enabled):
    """RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 only when configured."""
    client, events = h2_client_against(H2ServerCodec(enable_connect_protocol=enabled))
    changed = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)][0]
    code = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
    assert (code in changed.changed_settings) is enabled
    if enabled:
        assert changed.changed_settings[code].new_value == 1


def test_h2c_upgrade_opens_stream_1():
    """RFC 7540 §3.2: the upgraded request is stream 1, half-closed (remote); the response goes
    out on it, and the client's next stream is 3."""
    codec = H2ServerCodec(scheme=b"http")
    codec.initiate()
    codec.upgrade(struct.pack(">HL", 4, 1000))  # the client's INITIAL_WINDOW_SIZE
    assert codec.available_window(1) == 1000
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_upgrade_connection()
    client.receive_data(codec.data_to_send())
    codec.receive_data(client.data_to_send())
    codec.send_response(1, 200, [(b"content-length", b"2")])
    codec.send_data(1, b"ok", end_stream=True)
    events = client.receive_data(codec.data_to_send())
    kinds = {type(e) for e in events}
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    assert client.get_next_available_stream_id() == 3


def test_h2c_upgrade_refuses_bad_settings():
    """HTTP2-Settings whose values are invalid (a window over 2^31-1) is not an upgrade."""
    codec = H2ServerCodec()
    codec.initiate()
    with pytest.raises(ValueError):
        codec.upgrade(struct.pack(">HL", 4, 2 ** 31))


# -- the HTTP/2 client codec (bridge and client modes) ------------------------------------------

def h2_backend_pair(offer):
    """(our H2ClientCodec, an h2 library server) with the server's SETTINGS delivered; the
    server offers RFC 8441 when ``offer``."""
    from proxyd.codec.h2client import H2ClientCodec

    codec = H2ClientCodec()
    codec.initiate()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                  header_encoding=None))
    server.initiate_connection()
    if offer:
        server.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
    server.receive_data(codec.data_to_send())
    codec.receive_data(server.data_to_send())
    server.receive_data(codec.data_to_send())
    return codec, server


def rfc8441_backend_request():
    """The backend request of an RFC 8441 client (proxyd's own key inside)."""
    request = gated(ev.RequestReceived(stream_id=1, headers=[
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
        (b":authority", b"a"), (b":path", b"/chat"), (b"sec-websocket-version", b"13")],
        end_stream=False, http_version=b"2"), extended_connect=True)
    return backend_request(request, client_ip=b"1.2.3.4", policy=POLICY)


def test_h2_backend_gets_an_extended_connect():
    """RFC 8441 §4 toward an HTTP/2 backend: :protocol websocket, no key, the stream open; its
    200 is TunnelOpened, and DATA then flows as tunnel bytes."""
    codec, server = h2_backend_pair(offer=True)
    sid = codec.send_request(rfc8441_backend_request(), b"http", b"b:1")
    events = server.receive_data(codec.data_to_send())
    request = [e for e in events if isinstance(e, h2.events.RequestReceived)][0]
    head = dict(request.headers)
    assert head[b":method"] == b"CONNECT" and head[b":protocol"] == b"websocket"
    assert b"sec-websocket-key" not in head and request.stream_ended is None
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"\x81\x02hi")
    events = codec.receive_data(server.data_to_send())
    assert [type(e) for e in events] == [ev.TunnelOpened, ev.DataReceived]


def test_h2_backend_without_rfc8441_is_refused():
    """No SETTINGS_ENABLE_CONNECT_PROTOCOL from the backend: nothing is sent (bad_upgrade)."""
    codec, _server = h2_backend_pair(offer=False)
    with pytest.raises(Refused) as refused:
        codec.send_request(rfc8441_backend_request(), b"http", b"b:1")
    assert refused.value.reason == "bad_upgrade" and codec.open_streams == 0


def test_h2_backend_refusal_is_an_ordinary_response():
    """A non-2xx answer to the extended CONNECT is a response like any other."""
    codec, server = h2_backend_pair(offer=True)
    sid = codec.send_request(rfc8441_backend_request(), b"http", b"b:1")
    server.receive_data(codec.data_to_send())
    server.send_headers(sid, [(b":status", b"404")], end_stream=True)
    events = codec.receive_data(server.data_to_send())
    assert [type(e) for e in events] == [ev.ResponseReceived, ev.StreamEnded]
