"""Unit tests of proxyd.codec.h2client.H2ClientCodec against h2's own server-side H2Connection.

The codec is the client side of one backend connection; a real h2 ``H2Connection`` in server mode
sits on the other side and bytes are moved by hand both ways, so every assertion is about what a
real HTTP/2 server receives (its h2 events) and the neutral proxyd events the codec emits. Frames
an h2 server cannot produce itself (anything after its own GOAWAY) are built with hyperframe.
"""

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd import events as ev
from proxyd.bridge import BackendRequest
from proxyd.codec import REFUSED_STREAM
from proxyd.codec.h2client import (
    CONNECTION_WINDOW, MAX_RESETS_SENT, STREAM_WINDOW, H2ClientCodec, _split_status,
)

AUTH = b"app.internal"


def parse_frames(data):
    """Split raw HTTP/2 bytes (no client preface) into hyperframe frames."""
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        frames.append(frame)
        view = view[9 + length:]
    return frames


def of(events, kind, stream_id=None):
    """The events of type ``kind`` (and of ``stream_id`` when given)."""
    return [e for e in events if type(e) is kind and (stream_id is None or e.stream_id == stream_id)]


class Pair:
    """An H2ClientCodec and an h2 server connection with a completed handshake."""

    def __init__(self, server_settings=None, **codec_kwargs):
        self.codec = H2ClientCodec(**codec_kwargs)
        self.codec.initiate()
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.server = h2.connection.H2Connection(config=config)
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings(server_settings)
        # The codec's preface and SETTINGS (and connection WINDOW_UPDATE) reach the server ...
        self.server_events = self.to_server()
        # ... the server's SETTINGS (and its ACK of ours) reach the codec, whose ACK goes back.
        self.codec_events = self.to_codec()
        self.server_events += self.to_server()

    def to_server(self):
        """Deliver the codec's output to the server; return the server's h2 events."""
        data = self.codec.data_to_send()
        return self.server.receive_data(data) if data else []

    def to_codec(self, data=None):
        """Deliver the server's output (or ``data``) to the codec; return the codec's events."""
        if data is None:
            data = self.server.data_to_send()
        return self.codec.receive_data(data) if data else []

    def respond(self, sid, status=b"200", headers=(), end_stream=False):
        """The server answers ``sid`` with a response head."""
        self.server.send_headers(sid, [(b":status", status), *headers], end_stream=end_stream)

    def request(self, method=b"GET", path=b"/", headers=(), end_stream=True, length=None,
                te_trailers=False):
        """The codec opens a stream for a neutral request; the server receives it.

        Returns (sid, server events).
        """
        request = BackendRequest(method, path, AUTH, list(headers), length, not end_stream,
                                 te_trailers)
        sid = self.codec.send_request(request, b"https")
        return sid, self.to_server()


def test_initiate_announces_settings_and_connection_window():
    """The preface carries ENABLE_PUSH 0, the stream window and the header list bound, and the
    connection window the server may fill is CONNECTION_WINDOW."""
    pair = Pair(max_header_list_size=12345)
    [changed] = of(pair.server_events, h2.events.RemoteSettingsChanged)
    values = {code: s.new_value for code, s in changed.changed_settings.items()}
    assert values[h2.settings.SettingCodes.ENABLE_PUSH] == 0
    assert values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == STREAM_WINDOW
    assert values[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 12345
    assert pair.server.outbound_flow_control_window == CONNECTION_WINDOW
    # The server's SETTINGS reached the codec as a SettingsChanged + a connection WindowUpdated.
    assert of(pair.codec_events, ev.SettingsChanged)
    assert of(pair.codec_events, ev.WindowUpdated, 0)


def test_request_and_response_round_trip():
    """A GET goes out with its pseudo-headers first and regular headers after; the response comes
    back as ResponseReceived (no :status among headers), DataReceived, StreamEnded."""
    pair = Pair()
    sid, events = pair.request(path=b"/a?b=c", headers=[(b"user-agent", b"t"), (b"via", b"2 proxyd")])
    assert sid == 1 and pair.codec.open_streams == 1
    [req] = of(events, h2.events.RequestReceived)
    assert req.headers == [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", AUTH),
                           (b":path", b"/a?b=c"), (b"user-agent", b"t"), (b"via", b"2 proxyd")]
    assert req.stream_ended is not None
    pair.respond(sid, headers=[(b"content-type", b"text/plain"), (b"server", b"h2")])
    pair.server.send_data(sid, b"hello", end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.DataReceived, ev.StreamEnded]
    response = out[0]
    assert response.status == 200 and not response.end_stream
    assert response.headers == [(b"content-type", b"text/plain"), (b"server", b"h2")]
    assert out[1].data == b"hello" and out[1].flow_length == 5
    assert pair.codec.open_streams == 0


def test_headers_only_response_ends_the_stream():
    """A response HEADERS frame with END_STREAM is ResponseReceived(end_stream=True) + StreamEnded."""
    pair = Pair()
    sid, _ = pair.request(method=b"HEAD")
    pair.respond(sid, status=b"204", end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.StreamEnded]
    assert out[0].status == 204 and out[0].end_stream


def test_request_body_is_split_to_frames_within_the_window():
    """send_data splits a body bigger than the peer's max frame size; available_window shrinks by
    what was sent and the server receives the exact bytes; end_stream puts END_STREAM on the
    last frame."""
    pair = Pair()
    sid, _ = pair.request(method=b"POST", end_stream=False)
    window = pair.codec.available_window(sid)
    assert window == 65535  # the server's default INITIAL_WINDOW_SIZE
    body = bytes(range(256)) * 160  # 40960 bytes, > 16384 max frame size
    pair.codec.send_data(sid, body)
    assert pair.codec.available_window(sid) == window - len(body)
    pair.codec.end_stream(sid)  # END_STREAM rides on the last DATA frame, still queued
    assert pair.codec.available_window(sid) == 0  # half-closed (local): nothing more to send
    raw = pair.codec.data_to_send()
    data_frames = [f for f in parse_frames(raw) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data_frames] == [16384, 16384, 8192]
    assert [("END_STREAM" in f.flags) for f in data_frames] == [False, False, True]
    events = pair.server.receive_data(raw)
    assert b"".join(e.data for e in of(events, h2.events.DataReceived)) == body
    assert of(events, h2.events.StreamEnded)


def test_request_body_waits_for_server_window_update():
    """Once the server's stream window is used up available_window is 0, and it reopens (with a
    WindowUpdated event) only when the server acknowledges the data."""
    pair = Pair()
    sid, _ = pair.request(method=b"PUT", end_stream=False)
    pair.codec.send_data(sid, b"x" * 65535)
    assert pair.codec.available_window(sid) == 0
    events = pair.to_server()
    received = sum(e.flow_controlled_length for e in of(events, h2.events.DataReceived))
    assert received == 65535
    assert pair.to_codec() == []  # nothing acknowledged yet: no window
    assert pair.codec.available_window(sid) == 0
    pair.server.acknowledge_received_data(received, sid)
    out = pair.to_codec()
    assert of(out, ev.WindowUpdated, sid)
    assert pair.codec.available_window(sid) > 0
    assert pair.codec.available_window(999) == 0  # unknown stream: nothing may be sent


def test_response_window_opens_only_when_acknowledged():
    """The server can send STREAM_WINDOW bytes and then stops; no WINDOW_UPDATE leaves the codec
    until acknowledge() is called, and acknowledging reopens the server's window."""
    pair = Pair()
    sid, _ = pair.request()
    pair.respond(sid)
    assert pair.server.local_flow_control_window(sid) == STREAM_WINDOW
    chunk = b"y" * 16384
    for _ in range(STREAM_WINDOW // len(chunk)):
        pair.server.send_data(sid, chunk)
    assert pair.server.local_flow_control_window(sid) == 0
    out = pair.to_codec()
    delivered = of(out, ev.DataReceived, sid)
    assert sum(e.flow_length for e in delivered) == STREAM_WINDOW
    # Not acknowledged: the codec sends no WINDOW_UPDATE on its own.
    assert not [f for f in parse_frames(pair.codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert pair.server.local_flow_control_window(sid) == 0
    half = STREAM_WINDOW // 2
    pair.codec.acknowledge(sid, half)
    updates = [f for f in parse_frames(pair.codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert [(f.stream_id, f.window_increment) for f in updates if f.stream_id == sid] == [(sid, half)]
    pair.server.receive_data(WindowUpdateFrame(sid, window_increment=half).serialize())
    assert pair.server.local_flow_control_window(sid) == half
    # Acknowledging a closed or unknown stream is harmless.
    pair.codec.acknowledge(777, 10)
    pair.codec.acknowledge(sid, 0)


def test_request_and_response_trailers():
    """end_stream(trailers) sends a trailing HEADERS with END_STREAM; response trailers arrive as
    TrailersReceived then StreamEnded."""
    pair = Pair()
    sid, _ = pair.request(method=b"POST", end_stream=False)
    pair.codec.send_data(sid, b"body")
    pair.codec.end_stream(sid, [(b"x-checksum", b"abc")])
    events = pair.to_server()
    [trailers] = of(events, h2.events.TrailersReceived)
    assert trailers.headers == [(b"x-checksum", b"abc")]
    assert of(events, h2.events.StreamEnded)
    pair.respond(sid, headers=[(b"trailer", b"x-status")])
    pair.server.send_data(sid, b"ok")
    pair.server.send_headers(sid, [(b"x-status", b"done")], end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.DataReceived, ev.TrailersReceived,
                                      ev.StreamEnded]
    assert out[2].headers == [(b"x-status", b"done")]


def test_end_stream_without_trailers():
    """end_stream() with no trailers sends an empty DATA with END_STREAM."""
    pair = Pair()
    sid, _ = pair.request(method=b"POST", end_stream=False)
    pair.codec.end_stream(sid)
    events = pair.to_server()
    assert of(events, h2.events.StreamEnded, sid)
    assert not of(events, h2.events.TrailersReceived)


def test_informational_responses():
    """A 103 and a 100 before the final response arrive as InformationalResponse events."""
    pair = Pair()
    sid, _ = pair.request()
    pair.respond(sid, status=b"103", headers=[(b"link", b"</s.css>; rel=preload")])
    pair.respond(sid, status=b"100")
    pair.respond(sid, status=b"200", end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out] == [ev.InformationalResponse, ev.InformationalResponse,
                                      ev.ResponseReceived, ev.StreamEnded]
    assert (out[0].status, out[0].headers) == (103, [(b"link", b"</s.css>; rel=preload")])
    assert out[1].status == 100 and out[2].status == 200


def test_max_concurrent_streams_from_server_settings():
    """The server's SETTINGS_MAX_CONCURRENT_STREAMS is exposed and announced via SettingsChanged;
    open_streams counts streams not closed yet."""
    pair = Pair(server_settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    assert pair.codec.max_concurrent_streams == 3
    changed = of(pair.codec_events, ev.SettingsChanged)
    assert changed and changed[-1].max_concurrent_streams == 3
    sids = [pair.request()[0] for _ in range(3)]
    assert pair.codec.open_streams == 3
    # A later change is reported too.
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
    out = pair.to_codec()
    assert [e.max_concurrent_streams for e in of(out, ev.SettingsChanged)] == [7]
    assert pair.codec.max_concurrent_streams == 7
    pair.to_server()
    pair.respond(sids[0], end_stream=True)
    pair.to_codec()
    assert pair.codec.open_streams == 2


def test_goaway_is_recorded_and_stops_accepting():
    """A GOAWAY gives ConnectionTerminated with the server's last stream id; the codec records it
    (goaway_last_stream_id) and accepting turns False."""
    pair = Pair()
    assert pair.codec.accepting and pair.codec.goaway_last_stream_id is None
    s1, _ = pair.request()
    s3, _ = pair.request()
    pair.server.close_connection(error_code=0, last_stream_id=s1)
    [term] = pair.to_codec()
    assert type(term) is ev.ConnectionTerminated
    assert (term.error_code, term.last_stream_id, term.remote) == (0, s1, True)
    assert pair.codec.goaway_last_stream_id == s1
    assert not pair.codec.accepting


def test_goaway_with_last_stream_zero():
    """GOAWAY with last stream id 0 (nothing processed) is recorded as 0, not as 'no GOAWAY'."""
    pair = Pair()
    pair.request()
    pair.server.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=0)
    [term] = pair.to_codec()
    assert term.last_stream_id == 0
    assert pair.codec.goaway_last_stream_id == 0 and not pair.codec.accepting


def test_streams_at_or_below_goaway_last_stream_id_still_complete():
    """After a graceful GOAWAY(last_stream_id=1) the server may finish stream 1 (RFC 9113 §6.8):
    its DATA and END_STREAM must still reach the codec as events, with no connection error.

    (h2's state machine goes to CLOSED on RECV_GOAWAY and raises ProtocolError on any later
    frame; the codec must work around it.)"""
    pair = Pair()
    s1, _ = pair.request()
    pair.request()
    pair.respond(s1)
    pair.to_codec()
    goaway = GoAwayFrame(0, last_stream_id=s1, error_code=0).serialize()
    out = pair.to_codec(goaway)
    assert [type(e) for e in out] == [ev.ConnectionTerminated]
    pair.server.send_data(s1, b"rest of the body", end_stream=True)
    out = pair.to_codec()
    assert not of(out, ev.ConnectionTerminated), out
    assert [type(e) for e in out] == [ev.DataReceived, ev.StreamEnded]
    assert out[0].data == b"rest of the body"


def test_second_goaway_lowers_the_last_stream_id():
    """A shutdown notice GOAWAY(2^31-1) followed by GOAWAY(1): both are reported, the recorded
    last stream id follows the latest, and stream 1 can still finish."""
    pair = Pair()
    s1, _ = pair.request()
    pair.request()
    [first] = pair.to_codec(GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize())
    assert first.last_stream_id == 2**31 - 1 and not pair.codec.accepting
    [second] = pair.to_codec(GoAwayFrame(0, last_stream_id=s1, error_code=0).serialize())
    assert second.last_stream_id == s1 and pair.codec.goaway_last_stream_id == s1
    pair.respond(s1, end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.StreamEnded]


def test_error_goaway_ends_the_connection():
    """A GOAWAY with an error code is reported with that code and the connection is over."""
    pair = Pair()
    pair.request()
    [term] = pair.to_codec(GoAwayFrame(0, last_stream_id=0, error_code=2).serialize())
    assert (term.error_code, term.last_stream_id) == (2, 0)
    assert not pair.codec.accepting


def test_refused_stream_is_reported_as_stream_reset():
    """RST_STREAM REFUSED_STREAM reaches the network layer as StreamReset(error_code=7); the
    connection keeps accepting new streams."""
    pair = Pair()
    sid, _ = pair.request()
    pair.server.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    [reset] = pair.to_codec()
    assert type(reset) is ev.StreamReset
    assert (reset.stream_id, reset.error_code) == (sid, REFUSED_STREAM)
    assert pair.codec.accepting and pair.codec.open_streams == 0
    sid2, events = pair.request()
    assert sid2 == 3 and of(events, h2.events.RequestReceived)


def test_reset_stream_and_close():
    """reset_stream sends RST_STREAM (and is ignored for closed streams); close() queues GOAWAY and
    sets wants_close."""
    pair = Pair()
    sid, _ = pair.request()
    pair.codec.reset_stream(sid, 8)
    events = pair.to_server()
    [reset] = of(events, h2.events.StreamReset)
    assert (reset.stream_id, reset.error_code) == (sid, 8)
    pair.codec.reset_stream(sid, 8)  # already closed: no exception
    pair.codec.close()
    assert pair.codec.wants_close and not pair.codec.accepting
    events = pair.to_server()
    assert of(events, h2.events.ConnectionTerminated)


def test_resets_sent_are_counted_up_to_the_budget():
    """Every RST_STREAM the codec queues counts (``resets_sent``): cancels (``reset_stream``)
    and the stream errors it finds in the server's frames; a reset of a closed stream sends
    nothing and counts nothing. ``spent`` once MAX_RESETS_SENT went out."""
    pair = Pair()
    sid, _ = pair.request()
    pair.codec.reset_stream(sid, 8)
    pair.codec.reset_stream(sid, 8)  # closed already: no frame
    assert pair.codec.resets_sent == 1
    sid, _ = pair.request()
    pair.server.send_data(sid, b"x")  # DATA before the response head: a stream error
    [reset] = pair.to_codec()
    assert type(reset) is ev.StreamReset and not reset.remote
    assert pair.codec.resets_sent == 2 and not pair.codec.spent
    received = 0
    for _ in range(MAX_RESETS_SENT - 2):
        sid, _ = pair.request()
        pair.codec.reset_stream(sid, 8)
        received += len(of(pair.to_server(), h2.events.StreamReset, sid))
    assert pair.codec.resets_sent == MAX_RESETS_SENT and pair.codec.spent
    assert received == MAX_RESETS_SENT - 2


def test_ping_counting():
    """Each ping() counts one outstanding PING; each ACK from the server takes one off. The server's
    own PINGs are answered by the codec and do not count."""
    pair = Pair()
    pair.codec.ping()
    pair.codec.ping()
    assert pair.codec.pings_outstanding == 2
    events = pair.to_server()
    assert len(of(events, h2.events.PingReceived)) == 2
    assert pair.to_codec() == []  # the ACKs produce no neutral events
    assert pair.codec.pings_outstanding == 0
    # A server PING is ACKed by the codec.
    pair.server.ping(b"serverpi")
    assert pair.to_codec() == []
    events = pair.to_server()
    [ack] = of(events, h2.events.PingAckReceived)
    assert ack.ping_data == b"serverpi"
    assert pair.codec.pings_outstanding == 0
    # An unsolicited ACK never drives the counter negative.
    pair.to_codec(PingFrame(0, opaque_data=b"12345678", flags=["ACK"]).serialize())
    assert pair.codec.pings_outstanding == 0


def test_protocol_error_is_a_local_connection_termination():
    """Garbage from the server gives ConnectionTerminated(remote=False) and wants_close."""
    pair = Pair()
    pair.request()
    # A SETTINGS frame on a stream (id 1) is a connection PROTOCOL_ERROR.
    bad = b"\x00\x00\x00\x04\x00\x00\x00\x00\x01"
    [term] = pair.to_codec(bad)
    assert type(term) is ev.ConnectionTerminated and not term.remote
    assert term.error_code == 1
    assert pair.codec.wants_close


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_random_chunking_gives_the_same_events(cuts):
    """The server's response bytes cut at arbitrary points give the same events as in one piece."""
    def run(pieces_of):
        pair = Pair()
        sid, _ = pair.request()
        pair.respond(sid, status=b"103")
        pair.respond(sid, headers=[(b"x", b"y")])
        pair.server.send_data(sid, b"a" * 100)
        pair.server.send_headers(sid, [(b"t", b"1")], end_stream=True)
        raw = pair.server.data_to_send()
        out = []
        for piece in pieces_of(raw):
            out += pair.codec.receive_data(piece)
        # DataReceived may be split; compare joined data and the other events.
        data = b"".join(e.data for e in of(out, ev.DataReceived))
        rest = [e for e in out if type(e) is not ev.DataReceived]
        return data, rest

    def split(raw):
        points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
        return [raw[a:b] for a, b in zip(points, points[1:]) if b > a]

    assert run(split) == run(lambda raw: [raw])


@pytest.mark.parametrize("block, status, fields", [
    ([(b":status", b"200"), (b"a", b"1")], 200, [(b"a", b"1")]),
    ([(b":status", b"204")], 204, []),
    ([], 0, []),
    ([(b"a", b"1")], 0, [(b"a", b"1")]),
    # not first: kept for the gate to refuse, and no status
    ([(b"a", b"1"), (b":status", b"200")], 0, [(b"a", b"1"), (b":status", b"200")]),
    # twice: the second stays, no status
    ([(b":status", b"200"), (b":status", b"404")], 0, [(b":status", b"404")]),
    ([(b":status", b"2000")], 0, []),
    ([(b":status", b"20")], 0, []),
    ([(b":status", b"2x0")], 0, []),
    ([(b":status", b"\xd9\xa0\xd9\xa0")], 0, []),  # not ASCII digits
])
def test_split_status_takes_one_leading_three_digit_status(block, status, fields):
    """The status of a decoded response block is one leading ``:status`` of three ASCII
    digits, else 0; the other fields come back as a new list (the decoder caches the block's
    list, which must stay as it was)."""
    before = list(block)
    got_status, got_fields = _split_status(block)
    assert (got_status, got_fields) == (status, fields)
    assert block == before
    assert got_fields is not block


def test_one_clients_oversized_field_does_not_break_the_next_clients_cached_head():
    """Bridge mode: the streams of many clients share this connection's HPACK table. A head
    sent again (every field indexed, answered from the encoder's block cache) must still
    decode after another client's request carried a field larger than the whole table (RFC
    7541 §4.4: the table empties on both sides); else the backend fails the connection with
    COMPRESSION_ERROR and every client's stream on it."""
    pair = Pair()
    victim = [(b"user-agent", b"victim/1.0"), (b"x-forwarded-for", b"192.0.2.1")]
    for _ in range(2):  # the second time every field is indexed: the block is cached
        sid, events = pair.request(headers=victim)
        [received] = of(events, h2.events.RequestReceived)
        assert received.headers[4:] == victim
    # Another client's request: a 4 KiB field name (the gate allows it) with a short value.
    long_field = (b"x-" + b"a" * 4100, b"1")
    _sid, events = pair.request(headers=[long_field])
    [received] = of(events, h2.events.RequestReceived)
    assert received.headers[4:] == [long_field]
    sid, events = pair.request(headers=victim)
    assert not of(events, h2.events.ConnectionTerminated)
    [received] = of(events, h2.events.RequestReceived)
    assert received.stream_id == sid and received.headers[4:] == victim


def test_a_clients_cookie_never_enters_the_table_other_clients_streams_share():
    """Bridge mode: one backend connection's HPACK table serves the streams of many clients.
    A cookie indexed there would be a compression oracle across clients (RFC 7541 §7.1: a
    guess that matches another client's cookie is sent as a one-byte index, visible in the
    size of the backend traffic), and a cookie a client sent as a never-indexed literal
    (nghttp2 does for short ones) must not be indexed by an intermediary (§7.1.3). Cookies go
    out as never-indexed literals, every time, whoever sent the same value before."""
    pair = Pair()
    cookie = (b"cookie", b"session=victim")
    # §6.2.3: a never-indexed literal; the name is the static table's (index 32), the value
    # comes in full each time.
    never_indexed = b"\x1f\x11\x0esession=victim"
    for agent in (b"victim", b"victim", b"attacker", b"attacker"):
        request = BackendRequest(b"GET", b"/", AUTH, [(b"user-agent", agent), cookie], None,
                                 False)
        pair.codec.send_request(request, b"https")
        data = pair.codec.data_to_send()
        [headers] = [f for f in parse_frames(data) if isinstance(f, HeadersFrame)]
        assert never_indexed in headers.data
        [received] = of(pair.server.receive_data(data), h2.events.RequestReceived)
        assert received.headers[4:] == [(b"user-agent", agent), cookie]


@pytest.mark.parametrize("ending", ["end_stream_later", "backend_reset", "our_reset",
                                    "stream_error"])
def test_each_received_byte_reopens_the_connection_window_once(ending):
    """Response bytes acknowledged before their stream closes (the usual case when the
    END_STREAM, a reset or a stream error comes in a later read than the DATA) reopen the
    connection window once: what the backend may send plus the credit still batched is the
    window the codec granted, never more. Counting them again when the stream closes grows the
    backend's window by up to half a stream window per stream, on a connection shared by every
    client, until after enough streams it passes 2^31-1, which the backend must answer with a
    FLOW_CONTROL_ERROR GOAWAY, failing the streams of all the clients on it (RFC 9113
    §6.9.1)."""
    pair = Pair()
    for _ in range(3):
        sid, _ = pair.request()
        pair.respond(sid)
        pair.server.send_data(sid, b"d" * 10000)
        events = pair.to_codec()
        assert sum(e.flow_length for e in of(events, ev.DataReceived, sid)) == 10000
        pair.codec.acknowledge(sid, 10000)  # the relay passed them on
        if ending == "end_stream_later":
            pair.server.end_stream(sid)
            pair.to_codec()
        elif ending == "backend_reset":
            pair.server.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            pair.to_codec()
        elif ending == "our_reset":
            pair.codec.reset_stream(sid, 8)
        else:  # a head after the final one without END_STREAM: a stream error, we reset
            frame = HeadersFrame(sid, flags=["END_HEADERS"])
            frame.data = bytes([0x40, 1]) + b"x" + bytes([1]) + b"1"  # x: 1, a literal
            assert of(pair.to_codec(frame.serialize()), ev.StreamReset, sid)
        pair.to_server()
        assert (pair.server.outbound_flow_control_window + pair.codec.acknowledged_unsent
                == CONNECTION_WINDOW)


def test_frontend_codec_reopens_its_connection_window_once_per_byte():
    """The same for the frontend's codec (the framing layer is shared): request body bytes
    acknowledged before the client ended its stream are not credited again when the response
    ends it."""
    from proxyd.codec.h2 import CONNECTION_WINDOW as FRONT_WINDOW, H2ServerCodec

    codec = H2ServerCodec()
    codec.initiate()
    client = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    codec.receive_data(client.data_to_send())
    client.receive_data(codec.data_to_send())
    codec.receive_data(client.data_to_send())
    for _ in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                  (b":authority", b"example.com"), (b":path", b"/up")])
        client.send_data(sid, b"u" * 10000)
        codec.receive_data(client.data_to_send())
        codec.acknowledge(sid, 10000)  # the backend took them
        client.end_stream(sid)
        codec.receive_data(client.data_to_send())
        codec.send_response(sid, 200, [], end_stream=True)
        client.receive_data(codec.data_to_send())
        assert client.outbound_flow_control_window + codec.acknowledged_unsent == FRONT_WINDOW


# -- response heads over our SETTINGS_MAX_HEADER_LIST_SIZE ----------------------------------------

def test_a_response_head_over_the_limit_resets_only_its_stream():
    """RFC 9113 §10.5.1: a response head larger than we take may be treated as a stream error.
    A backend connection carries the streams of many clients: the head over the limit resets
    its own stream (RST_STREAM CANCEL to the server; StreamReset(remote=False) naming the
    errors-table reason ``bad_response`` for the network layer), and the other stream's head,
    which references a field the oversized block inserted after the bound, still decodes:
    the dynamic table followed the whole block."""
    pair = Pair(max_header_list_size=2000)
    big, _ = pair.request(path=b"/echo")
    other, _ = pair.request(path=b"/other")
    pair.respond(big, headers=[(b"x-echo", b"e" * 3000), (b"x-after", b"1")])
    pair.respond(other, headers=[(b"x-after", b"1")], end_stream=True)
    out = pair.to_codec()
    assert not of(out, ev.ConnectionTerminated)
    [reset] = of(out, ev.StreamReset, big)
    assert (reset.error_code, reset.remote, reset.reason) == (8, False, "bad_response")
    assert not of(out, ev.ResponseReceived, big)
    [response] = of(out, ev.ResponseReceived, other)
    assert response.headers == [(b"x-after", b"1")]
    [rst] = of(pair.to_server(), h2.events.StreamReset)
    assert (rst.stream_id, rst.error_code) == (big, h2.errors.ErrorCodes.CANCEL)
    assert pair.codec.open_streams == 0 and not pair.codec.wants_close


def test_trailers_over_the_limit_reset_only_their_stream():
    """Trailers over the limit, after the response head and some body: their stream is reset
    (the network layer resets the client's stream, whose response already started); the
    other stream on the connection ends normally."""
    pair = Pair(max_header_list_size=2000)
    sid, _ = pair.request()
    other, _ = pair.request()
    pair.respond(sid)
    pair.server.send_data(sid, b"body")
    pair.server.send_headers(sid, [(b"x-trailer", b"t" * 3000)], end_stream=True)
    pair.respond(other, end_stream=True)
    out = pair.to_codec()
    assert [type(e) for e in out if e.stream_id == sid] == [
        ev.ResponseReceived, ev.DataReceived, ev.StreamReset]
    [reset] = of(out, ev.StreamReset, sid)
    assert (reset.error_code, reset.remote, reset.reason) == (8, False, "bad_response")
    assert [type(e) for e in out if e.stream_id == other] == [ev.ResponseReceived, ev.StreamEnded]
    assert not of(out, ev.ConnectionTerminated)


def test_a_malformed_block_over_the_limit_is_still_a_connection_error():
    """A block that crosses the bound and then breaks HPACK (an index beyond the table): the
    table state is lost, so this is COMPRESSION_ERROR on the connection, as any malformed
    block."""
    pair = Pair(max_header_list_size=2000)
    sid, _ = pair.request()
    frame = HeadersFrame(sid, flags=["END_HEADERS"])
    frame.data = b"\x88\x00\x05x-big\x7f\xb9\x16" + b"b" * 3000 + b"\xff\xff\x03"
    out = pair.to_codec(frame.serialize())
    [terminated] = of(out, ev.ConnectionTerminated)
    assert (terminated.error_code, terminated.remote) == (h2.errors.ErrorCodes.COMPRESSION_ERROR,
                                                          False)
