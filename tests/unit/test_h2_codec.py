"""Unit tests of proxyd.codec.h2.H2ServerCodec against h2's own H2Connection as the real client.

Bytes are moved by hand in both directions, so every assertion is about what a real HTTP/2 peer
sees on the wire (its h2 events, or raw frames parsed with hyperframe after a GOAWAY, when h2's
client state machine refuses to process anything more) and about the neutral proxyd events the
codec hands to the network layer.
"""

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd import events as ev
from proxyd import gate
from proxyd.codec import ENHANCE_YOUR_CALM, PROTOCOL_ERROR, REFUSED_STREAM
from proxyd.errors import Refused
from tests.support import fields, gated
from proxyd.codec import h2 as h2codec
from proxyd.codec.h2 import H2ServerCodec

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
       (b":path", b"/index.html")]


def post(path=b"/upload", extra=()):
    """The header block of a POST to ``path`` with ``extra`` regular headers."""
    return [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"example.com"),
            (b":path", path), *extra]


def parse_frames(data):
    """Split raw HTTP/2 bytes into hyperframe frames (no HPACK decoding)."""
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        frames.append(frame)
        view = view[9 + length:]
    return frames


class Pair:
    """A proxyd H2ServerCodec and an h2 client connection with a completed handshake."""

    def __init__(self, client_settings=None, **codec_kwargs):
        self.server = H2ServerCodec(**codec_kwargs)
        self.server.initiate()
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        )
        self.client = h2.connection.H2Connection(config=config)
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.handshake_events = self.to_server()
        self.to_client()
        self.handshake_events += self.to_server()  # the client's SETTINGS ack
        self.to_client()

    def to_server(self):
        """Deliver what the client queued to the codec; return the proxyd events."""
        return self.server.receive_data(self.client.data_to_send())

    def to_client(self):
        """Deliver what the codec queued to the client; return the h2 events."""
        return self.client.receive_data(self.server.data_to_send())

    def request(self, headers, end_stream=False):
        """Open a new client stream with ``headers``; return its id."""
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers, end_stream=end_stream)
        return stream_id


def of(events, kind, stream_id=None):
    """The events of type ``kind`` (and of ``stream_id`` when given)."""
    return [e for e in events if type(e) is kind and (stream_id is None or e.stream_id == stream_id)]


def test_get_with_end_stream_is_one_request_event():
    """A GET whose HEADERS carry END_STREAM gives RequestReceived(end_stream=True), no StreamEnded."""
    pair = Pair()
    sid = pair.request(GET + [(b"accept", b"*/*")], end_stream=True)
    events = pair.to_server()
    assert events == [ev.RequestReceived(stream_id=sid, headers=GET + [(b"accept", b"*/*")],
                                         end_stream=True, http_version=b"2")]
    assert fields(gated(events[0])) == (b"GET", b"https", b"example.com", b"/index.html",
                                        [(b"accept", b"*/*")])
    assert not of(events, ev.StreamEnded)
    assert pair.server.open_streams == 1


def test_post_body_data_and_stream_ended():
    """A POST with a body gives RequestReceived(end_stream=False), DataReceived with flow_length, StreamEnded;
    DATA frames of one stream read together are one DataReceived (padding counts in its
    flow_length, not in its data)."""
    pair = Pair()
    sid = pair.request(post(extra=[(b"content-length", b"11")]))
    pair.client.send_data(sid, b"hello ", pad_length=4)
    pair.client.send_data(sid, b"world", end_stream=True)
    events = pair.to_server()
    assert [type(e) for e in events] == [ev.RequestReceived, ev.DataReceived, ev.StreamEnded]
    assert events[0].end_stream is False
    assert gated(events[0]).content_length == 11 and gated(events[0]).headers == []
    assert events[1].data == b"hello world" and events[1].flow_length == 6 + 4 + 1 + 5
    assert events[2] == ev.StreamEnded(stream_id=sid)


def test_data_of_different_streams_or_apart_stays_apart():
    """Only adjacent DATA of one stream is merged: frames of two streams interleaved give one
    event per frame, in order, each with its own bytes and flow length."""
    pair = Pair()
    one = pair.request(post())
    two = pair.request(post())
    pair.to_server()
    for sid, data in ((one, b"a"), (two, b"bb"), (one, b"ccc"), (one, b"dddd")):
        pair.client.send_data(sid, data)
    events = pair.to_server()
    assert [(e.stream_id, e.data, e.flow_length) for e in events] == [
        (one, b"a", 1), (two, b"bb", 2), (one, b"cccdddd", 7)]


def test_acknowledge_alone_opens_the_window():
    """Received DATA produces no WINDOW_UPDATE until acknowledge() is called with its flow_length."""
    pair = Pair()
    sid = pair.request(post())
    body = b"x" * 16000
    for _ in range(3):
        pair.client.send_data(sid, body)
    events = pair.to_server()
    flow = sum(e.flow_length for e in of(events, ev.DataReceived, sid))
    assert flow == 48000
    window_before = pair.client.local_flow_control_window(sid)
    assert not [f for f in parse_frames(pair.server.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    pair.server.acknowledge(sid, flow)
    frames = parse_frames(pair.server.data_to_send())
    updates = {f.stream_id: f.window_increment for f in frames if isinstance(f, WindowUpdateFrame)}
    assert updates.get(sid) == flow
    pair.client.receive_data(b"".join(f.serialize() for f in frames))
    assert pair.client.local_flow_control_window(sid) == window_before + flow


MALFORMED = {
    "uppercase header name": (GET + [(b"X-Upper", b"1")], "bad_name"),
    "connection header": (GET + [(b"connection", b"keep-alive")], "connection_specific"),
    "transfer-encoding header": (GET + [(b"transfer-encoding", b"chunked")],
                                 "connection_specific"),
    "te other than trailers": (GET + [(b"te", b"gzip")], "bad_te"),
    "missing :path": (GET[:3], "missing_pseudo"),
    "missing :method": (GET[1:], "missing_pseudo"),
    "duplicate :method": (GET + [(b":method", b"POST")], "bad_pseudo"),
    "pseudo after regular": ([GET[0], GET[1], (b"accept", b"*/*"), GET[2], GET[3]], "bad_pseudo"),
    "unknown pseudo-header": (GET + [(b":protocol", b"websocket")], "bad_pseudo"),
    "CONNECT": ([(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
                "missing_pseudo"),
    "newline in value": (GET + [(b"x-evil", b"a\r\nb")], "bad_value"),
    "content-length on end_stream": (GET + [(b"content-length", b"3")], "length_mismatch"),
}


@pytest.mark.parametrize("headers, reason", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_request_is_handed_over_raw_for_the_gate(headers, reason):
    """The codec checks framing only: a malformed head arrives as RequestReceived exactly as sent
    (the gate refuses it with the table's reason; the frontend resets that stream), and the
    streams around it are untouched; the connection goes on."""
    pair = Pair()
    before = pair.request(post(extra=[(b"content-length", b"4")]))
    bad = pair.request(headers, end_stream=True)
    after = pair.request(GET, end_stream=True)
    pair.client.send_data(before, b"body", end_stream=True)
    events = pair.to_server()
    [raw] = of(events, ev.RequestReceived, bad)
    assert raw.headers == headers
    with pytest.raises(Refused) as refused:
        gated(raw)
    assert refused.value.reason == reason
    assert [type(e) for e in events if e.stream_id == before] == [
        ev.RequestReceived, ev.DataReceived, ev.StreamEnded]
    assert of(events, ev.RequestReceived, after)[0].end_stream is True
    assert not of(events, ev.ConnectionTerminated) and not of(events, ev.StreamReset)
    assert not pair.server.wants_close


def test_body_is_handed_over_whatever_its_declared_length():
    """Content-Length against DATA is the stream machine's check (per stream, RFC 9113 §8.1.1):
    the codec hands over every byte and the end, and h2 does not fail the connection."""
    pair = Pair()
    bad = pair.request(post(extra=[(b"content-length", b"3")]))
    pair.client.send_data(bad, b"12")
    pair.client.send_data(bad, b"34", end_stream=True)
    events = pair.to_server()
    assert b"".join(e.data for e in of(events, ev.DataReceived, bad)) == b"1234"
    assert of(events, ev.StreamEnded, bad)
    assert not of(events, ev.ConnectionTerminated) and not pair.server.wants_close


def test_content_length_exact_is_accepted():
    """A body that matches its content-length exactly passes through without a reset."""
    pair = Pair()
    sid = pair.request(post(extra=[(b"content-length", b"5")]))
    pair.client.send_data(sid, b"12")
    pair.client.send_data(sid, b"345", end_stream=True)
    events = pair.to_server()
    assert not of(events, ev.StreamReset)
    assert b"".join(e.data for e in of(events, ev.DataReceived)) == b"12345"
    assert of(events, ev.StreamEnded, sid)


def test_send_data_respects_available_window_and_frames():
    """available_window follows the client's windows; big send_data is split into max-size frames."""
    pair = Pair()
    sid = pair.request(GET, end_stream=True)
    pair.to_server()
    pair.server.send_response(sid, 200, [])
    window = pair.server.available_window(sid)
    assert window == 65535  # the client's initial stream and connection windows
    pair.server.send_data(sid, b"a" * window)
    assert pair.server.available_window(sid) == 0
    frames = parse_frames(pair.server.data_to_send())
    sizes = [len(f.data) for f in frames if isinstance(f, DataFrame)]
    assert sizes == [16384, 16384, 16384, 16383]
    # The client consumes the data and opens its windows: the codec sees WindowUpdated.
    pair.client.receive_data(b"".join(f.serialize() for f in frames))
    pair.client.acknowledge_received_data(window, sid)
    events = pair.to_server()
    assert ev.WindowUpdated(stream_id=sid) in events
    assert pair.server.available_window(sid) == pair.client.remote_flow_control_window(sid) > 0


def test_end_stream_rides_on_the_last_queued_data_frame():
    """end_stream() sets END_STREAM on this stream's DATA frame still queued (even behind another
    stream's frames); once that frame was handed out, an empty DATA frame ends the stream."""
    pair = Pair()
    first = pair.request(GET, end_stream=True)
    second = pair.request(GET, end_stream=True)
    pair.to_server()
    for sid in (first, second):
        pair.server.send_response(sid, 200, [])
    pair.server.send_data(first, b"x" * 20000)  # two frames: END_STREAM goes on the second
    pair.server.send_data(second, b"other")
    pair.server.end_stream(first)
    data = pair.server.data_to_send()
    frames = [f for f in parse_frames(data) if isinstance(f, DataFrame)]
    assert [(f.stream_id, len(f.data), "END_STREAM" in f.flags) for f in frames] == [
        (first, 16384, False), (first, 3616, True), (second, 5, False)]
    pair.server.end_stream(second)  # its DATA frame was handed out already
    frames = parse_frames(pair.server.data_to_send())
    assert [(f.stream_id, len(f.data), "END_STREAM" in f.flags) for f in frames] == [
        (second, 0, True)]
    events = pair.client.receive_data(data + b"".join(f.serialize() for f in frames))
    assert sorted(e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)) == [
        first, second]
    received = {}
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            received[e.stream_id] = received.get(e.stream_id, b"") + e.data
    assert received == {first: b"x" * 20000, second: b"other"}


def test_available_window_small_client_window():
    """A client that announces a tiny INITIAL_WINDOW_SIZE gets exactly that much per stream."""
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    sid = pair.request(GET, end_stream=True)
    pair.to_server()
    pair.server.send_response(sid, 200, [])
    assert pair.server.available_window(sid) == 100
    pair.server.send_data(sid, b"b" * 100)
    assert pair.server.available_window(sid) == 0
    pair.client.increment_flow_control_window(50, stream_id=sid)
    assert ev.WindowUpdated(stream_id=sid) in pair.to_server()
    assert pair.server.available_window(sid) == 50


def test_available_window_of_unknown_stream_is_zero():
    """Streams the codec does not know (never opened, or closed) have no window."""
    pair = Pair()
    assert pair.server.available_window(99) == 0


def test_request_trailers():
    """Client trailers arrive as TrailersReceived followed by StreamEnded."""
    pair = Pair()
    sid = pair.request(post(extra=[(b"te", b"trailers")]))
    pair.client.send_data(sid, b"data")
    pair.client.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
    events = pair.to_server()
    assert gated(events[0]).te_trailers and gated(events[0]).headers == []
    assert [type(e) for e in events] == [ev.RequestReceived, ev.DataReceived, ev.TrailersReceived,
                                         ev.StreamEnded]
    assert events[2].headers == [(b"x-checksum", b"abc")]


def test_request_trailers_with_pseudo_header_go_to_the_gate():
    """Trailers with a pseudo-header field arrive raw; the gate refuses them (the stream machine
    then resets that stream), and the connection goes on."""
    pair = Pair()
    sid = pair.request(post())
    pair.client.send_data(sid, b"data")
    pair.client.send_headers(sid, [(b":path", b"/x")], end_stream=True)
    events = pair.to_server()
    [trailers] = of(events, ev.TrailersReceived, sid)
    with pytest.raises(Refused) as refused:
        gate.check_trailers(trailers.headers, gate.H2)
    assert refused.value.reason == "bad_trailer"
    assert not pair.server.wants_close


def test_response_trailers():
    """send_trailers ends the response with a trailing HEADERS frame the client sees as trailers."""
    pair = Pair()
    sid = pair.request(GET, end_stream=True)
    pair.to_server()
    pair.server.send_response(sid, 200, [(b"trailer", b"x-sum")])
    pair.server.send_data(sid, b"body")
    pair.server.send_trailers(sid, [(b"x-sum", b"42")])
    events = pair.to_client()
    [trailers] = of(events, h2.events.TrailersReceived, sid)
    assert trailers.headers == [(b"x-sum", b"42")]
    assert of(events, h2.events.StreamEnded, sid)
    assert pair.server.open_streams == 0


def test_informational_response():
    """send_informational sends a 1xx HEADERS block before the final response; 101 is dropped."""
    pair = Pair()
    sid = pair.request(GET, end_stream=True)
    pair.to_server()
    pair.server.send_informational(sid, 103, [(b"link", b"</s.css>; rel=preload")])
    pair.server.send_informational(sid, 101, [])
    pair.server.send_response(sid, 200, [], end_stream=True)
    events = pair.to_client()
    [info] = of(events, h2.events.InformationalResponseReceived, sid)
    assert dict(info.headers)[b":status"] == b"103"
    [response] = of(events, h2.events.ResponseReceived, sid)
    assert dict(response.headers)[b":status"] == b"200"


def test_goaway_lets_in_flight_stream_finish_and_refuses_new_ones():
    """After goaway(), the stream in flight still gets its response; a later stream is REFUSED_STREAM.

    The GOAWAY names the highest stream seen; the codec asks to close only once nothing is open.
    """
    pair = Pair()
    sid = pair.request(GET, end_stream=True)
    pair.to_server()
    pair.server.goaway()
    assert not pair.server.wants_close  # stream 1 still open
    late = pair.request(GET, end_stream=True)  # crosses the GOAWAY on the wire
    events = pair.to_server()
    assert not of(events, ev.RequestReceived) and not of(events, ev.StreamReset)
    pair.server.send_response(sid, 200, [(b"content-length", b"2")])
    pair.server.send_data(sid, b"ok", end_stream=True)
    frames = parse_frames(pair.server.data_to_send())
    [goaway] = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert (goaway.last_stream_id, goaway.error_code) == (sid, 0)
    assert [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)] == [
        (late, REFUSED_STREAM)]
    headers = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == sid]
    data = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == sid]
    assert headers and b"".join(f.data for f in data) == b"ok"
    assert "END_STREAM" in data[-1].flags
    assert pair.server.open_streams == 0


def test_goaway_when_idle_wants_close():
    """goaway() on a connection without open streams asks to be closed after the GOAWAY."""
    pair = Pair()
    pair.server.goaway()
    assert pair.server.wants_close
    [goaway] = [f for f in parse_frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == 0
    assert of(pair.client.receive_data(goaway.serialize()), h2.events.ConnectionTerminated)


def test_rapid_reset_is_answered_with_enhance_your_calm():
    """More than MAX_RESETS client resets fail the connection with GOAWAY ENHANCE_YOUR_CALM."""
    pair = Pair()
    limit = h2codec.MAX_RESETS
    for _ in range(limit):
        sid = pair.request(GET, end_stream=True)
        pair.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    events = pair.to_server()
    assert len(of(events, ev.StreamReset)) == limit
    assert not of(events, ev.ConnectionTerminated)
    assert not pair.server.wants_close
    pair.server.data_to_send()
    sid = pair.request(GET, end_stream=True)
    pair.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    events = pair.to_server()
    [terminated] = of(events, ev.ConnectionTerminated)
    assert (terminated.error_code, terminated.remote) == (ENHANCE_YOUR_CALM, False)
    assert pair.server.wants_close
    [goaway] = of(pair.to_client(), h2.events.ConnectionTerminated)
    assert goaway.error_code == ENHANCE_YOUR_CALM


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                  # not the preface at all
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x01\x00\x00\x00\x00\x00\x00x",  # DATA on stream 0
], ids=["http1-instead-of-preface", "data-on-stream-0"])
def test_garbage_terminates_locally(garbage):
    """Bytes that break the protocol give ConnectionTerminated(remote=False) and wants_close, no raise."""
    server = H2ServerCodec()
    server.initiate()
    events = server.receive_data(garbage)
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.remote is False
    assert terminated.error_code == PROTOCOL_ERROR
    assert server.wants_close


def test_garbage_after_handshake_keeps_no_stream():
    """A broken frame on an established connection is a connection error, reported, not raised."""
    pair = Pair()
    # A HEADERS frame on an even (server-initiated) stream id is a connection error.
    events = pair.server.receive_data(b"\x00\x00\x01\x01\x05\x00\x00\x00\x02\x82")
    assert [type(e) for e in events] == [ev.ConnectionTerminated]
    assert events[0].remote is False and pair.server.wants_close


def test_client_goaway_is_reported_as_remote():
    """A client's GOAWAY becomes ConnectionTerminated(remote=True) with its error code."""
    pair = Pair()
    pair.client.close_connection(error_code=0)
    [terminated] = pair.to_server()
    assert terminated == ev.ConnectionTerminated(error_code=0, last_stream_id=0, remote=True)


# -- hypothesis --------------------------------------------------------------------------------

def client_stream(bodies):
    """The bytes an h2 client writes for several POSTs (and one GET) with the given bodies."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding=None))
    client.initiate_connection()
    for index, body in enumerate(bodies):
        sid = client.get_next_available_stream_id()
        extra = [(b"content-length", b"%d" % len(body))] if index % 2 else []
        client.send_headers(sid, post(b"/%d" % index, extra), end_stream=not body)
        for start in range(0, len(body), 700):
            client.send_data(sid, body[start:start + 700], end_stream=start + 700 >= len(body))
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, GET + [(b"cookie", b"a=b")], end_stream=True)
    return client.data_to_send()


def split(data, cuts):
    """``data`` cut at the (sorted, deduplicated) positions in ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=30))
def test_random_chunking_gives_the_same_events(bodies, cuts):
    """Any split of a valid client byte stream into reads yields the same proxyd events."""
    data = client_stream(bodies)
    whole = H2ServerCodec()
    whole.initiate()
    expected = whole.receive_data(data)
    assert len(of(expected, ev.RequestReceived)) == len(bodies) + 1
    chunked = H2ServerCodec()
    chunked.initiate()
    got = []
    for piece in split(data, cuts):
        got.extend(chunked.receive_data(piece))
    assert got == expected
    assert not chunked.wants_close


PREFACE_AND_SETTINGS = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5))
def test_random_bytes_after_preface_never_raise(chunks):
    """Random bytes after the preface never raise; a failure is a local ConnectionTerminated."""
    server = H2ServerCodec()
    server.initiate()
    server.receive_data(PREFACE_AND_SETTINGS)
    for chunk in chunks:
        events = server.receive_data(chunk)
        assert isinstance(events, list)
        for event in of(events, ev.ConnectionTerminated):
            assert event.remote or server.wants_close
        server.data_to_send()


def raw_frame(kind, flags, stream_id, payload):
    """One HTTP/2 frame with a correct 9-byte header around an arbitrary payload."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


frame_strategy = st.builds(
    raw_frame,
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]),
    st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(frame_strategy, min_size=1, max_size=8))
def test_random_frames_after_preface_never_raise(frames):
    """Well-framed but random frames (any type, flags, stream, payload) never raise out of the codec."""
    server = H2ServerCodec()
    server.initiate()
    server.receive_data(PREFACE_AND_SETTINGS)
    for frame in frames:
        events = server.receive_data(frame)
        assert isinstance(events, list)
        for event in of(events, ev.ConnectionTerminated):
            assert event.remote or server.wants_close
        server.data_to_send()


def test_settings_and_ping_floods_are_bounded_by_the_work_done():
    """SETTINGS and PING frames (each makes the server answer) beyond 1000 + 10 per stream opened
    or DATA frame sent end the connection with GOAWAY ENHANCE_YOUR_CALM; a connection that does
    work may PING as often as it likes in proportion."""
    pair = Pair()
    for _ in range(50):  # 50 streams of work earn 500 more control frames
        sid = pair.request(GET, end_stream=True)
        pair.to_server()
        pair.server.send_response(sid, 204, [], end_stream=True)
    pair.to_client()
    budget = h2codec.MAX_CONTROL_FRAMES + h2codec.MAX_CONTROL_FRAMES_PER_WORK * 50
    events = []
    for i in range(budget - 1):  # the client's preface SETTINGS counted one already
        pair.client.ping(b"%08d" % i)
        events += pair.to_server()
    assert not of(events, ev.ConnectionTerminated) and not pair.server.wants_close
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    events = pair.to_server()
    [terminated] = of(events, ev.ConnectionTerminated)[:1]
    assert terminated.error_code == ENHANCE_YOUR_CALM and terminated.reason == "SETTINGS/PING flood"
    assert pair.server.wants_close


# :method GET, :scheme http, :path /, :authority example.com (literal, not indexed): a request
# block whose meaning is the gate's business, raw enough to put on any stream id.
RAW_GET = bytes([0x82, 0x86, 0x84, 0x01, 11]) + b"example.com"


def started_server():
    """An H2ServerCodec that has read the client preface and SETTINGS (its output dropped)."""
    server = H2ServerCodec()
    server.initiate()
    server.receive_data(PREFACE_AND_SETTINGS)
    server.data_to_send()
    return server


def reset_storm(server, trigger, step, count):
    """``count`` GETs (HEADERS with END_STREAM on ids 1, 1 + step...), each followed by the
    frame ``trigger(stream id)``; return the events up to the first ConnectionTerminated and
    how many streams were sent."""
    events = []
    for n in range(count):
        sid = 1 + step * n
        events += server.receive_data(raw_frame(0x1, 0x5, sid, RAW_GET) + trigger(sid))
        if of(events, ev.ConnectionTerminated):
            return events, n + 1
    return events, count


@pytest.mark.parametrize("trigger,step", [
    (lambda sid: raw_frame(0x3, 0, sid, b"\0\0\0\x08"), 8),      # RST_STREAM, ids 1, 9, 17...
    (lambda sid: raw_frame(0x2, 0, sid, b"\0\0\0\0"), 2),        # PRIORITY of 4 bytes
    (lambda sid: raw_frame(0x2, 0, sid, sid.to_bytes(4, "big") + b"\x10"), 2),  # self-dependent
    (lambda sid: raw_frame(0x0, 0, sid, b"x"), 2),                 # DATA after END_STREAM
    (lambda sid: raw_frame(0x1, 0x5, sid, RAW_GET), 2),            # HEADERS when half-closed
], ids=["rst-sparse-ids", "priority-4-bytes", "priority-self", "data-after-end",
        "headers-after-end"])
def test_resets_the_client_causes_are_bounded_by_the_streams_it_opened(trigger, step):
    """Rapid reset (CVE-2023-44487) with sparse stream ids, and MadeYouReset (CVE-2025-8671):
    stream errors the client provokes on its own streams count like its RST_STREAMs, against
    the streams it really opened (not the highest id). Stream MAX_RESETS + 1 ends the
    connection with GOAWAY ENHANCE_YOUR_CALM "too many stream resets"."""
    server = started_server()
    events, sent = reset_storm(server, trigger, step, 3 * h2codec.MAX_RESETS)
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.error_code == ENHANCE_YOUR_CALM
    assert terminated.reason == "too many stream resets"
    assert sent == h2codec.MAX_RESETS + 1 and server.wants_close
    goaways = [f for f in parse_frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [ENHANCE_YOUR_CALM]


def test_resets_under_half_of_the_streams_opened_are_tolerated():
    """A client that cancels fewer than half of its streams (a browser leaving pages) keeps its
    connection however many resets that makes; the bound needs both MAX_RESETS and the ratio."""
    server = started_server()
    events = []
    for n in range(3 * h2codec.MAX_RESETS):
        sid = 1 + 2 * n
        frames = raw_frame(0x1, 0x5, sid, RAW_GET)
        if n % 5 < 2:  # two streams in five reset: 40 %
            frames += raw_frame(0x3, 0, sid, b"\0\0\0\x08")
        events += server.receive_data(frames)
        server.send_response(sid, 204, [], end_stream=True)  # ignored for the reset ones
    assert server.resets > h2codec.MAX_RESETS
    assert not of(events, ev.ConnectionTerminated) and not server.wants_close


def test_control_flood_allowance_ignores_stream_ids():
    """One HEADERS on stream 2^31-1 (self-dependent, so reset at once: no work) must not lift
    the SETTINGS/PING allowance: it grows with streams opened and DATA sent, not with ids."""
    server = started_server()
    sid = 0x7FFFFFFF
    server.receive_data(raw_frame(0x1, 0x25, sid, sid.to_bytes(4, "big") + b"\x10" + RAW_GET))
    ping = raw_frame(0x6, 0, 0, b"\0" * 8)
    events = server.receive_data(ping * (h2codec.MAX_CONTROL_FRAMES + 1))
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.error_code == ENHANCE_YOUR_CALM and terminated.reason == "SETTINGS/PING flood"


def test_a_request_head_over_the_limit_still_ends_the_clients_connection():
    """The frontend keeps its rule for a request head over max_header_list_size: a connection
    error (GOAWAY ENHANCE_YOUR_CALM) that ends only this client's own connection, whatever the
    backend codec does with response heads over its limit."""
    pair = Pair(max_header_list_size=2000)
    first = pair.request(GET, end_stream=True)
    pair.request(GET + [(b"x-big", b"b" * 3000)], end_stream=True)
    events = pair.to_server()
    assert [e.stream_id for e in of(events, ev.RequestReceived)] == [first]
    [terminated] = of(events, ev.ConnectionTerminated)
    assert (terminated.error_code, terminated.remote) == (ENHANCE_YOUR_CALM, False)
    assert pair.server.wants_close
