"""RFC 9113 rules of proxyd's own HTTP/2 client codec (proxyd.codec.h2client), byte by byte.

Where ``test_h2client_codec.py`` talks to a well-behaved h2 server, these tests write the
server's frames by hand (``tests.support.h2_frame``) so they can send what a broken or hostile
backend would, and read what the codec wrote back (``parse_h2_frames``): frame size limits,
SETTINGS and its ACK, PING ACK, padding, CONTINUATION, unknown frames, stream states, flow control
both ways, HPACK table size updates, GOAWAY. Then two hypothesis suites: round trips against the
h2 library's server (an independent oracle) with random responses, bodies, trailers, 1xx, resets
and read splits; and a bounded fuzz of mutated server byte streams, which must never raise, must
end every stream or the connection, and must keep the codec's buffers bounded.
"""

import os
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Encoder as LibraryEncoder
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd import events as ev
from proxyd.bridge import BackendRequest
from proxyd.codec import h2frames
from proxyd.codec.h2client import CONNECTION_WINDOW, STREAM_WINDOW, H2ClientCodec
from tests.support import h2_frame, parse_h2_frames

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "60"))


def settings_frame(**values):
    """A server SETTINGS frame (identifiers by number: ``s3=10`` is MAX_CONCURRENT_STREAMS 10)."""
    payload = b"".join(struct.pack(">HL", int(k[1:]), v) for k, v in values.items())
    return h2_frame(SETTINGS, 0, 0, payload)


def block(fields):
    """An HPACK block of literals without indexing (valid whatever the dynamic table holds)."""
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


def response(sid, status=b"200", fields=(), flags=END_HEADERS):
    """A response HEADERS frame."""
    return h2_frame(HEADERS, flags, sid, block([(b":status", status), *fields]))


def get(path=b"/", body=False, length=None):
    """A neutral request."""
    return BackendRequest(b"POST" if body else b"GET", path, b"app", [(b"x-a", b"1")], length,
                          body, False)


class Codec:
    """A codec past the handshake (the server's SETTINGS read), with helpers to feed and read."""

    def __init__(self, server_settings=b""):
        self.codec = H2ClientCodec()
        self.codec.initiate()
        self.preface = self.codec.data_to_send()
        self.events = self.feed(settings_frame() + server_settings)

    def feed(self, data):
        """Feed raw bytes; return the events."""
        return self.codec.receive_data(data)

    def frames(self):
        """Frames the codec queued since the last call."""
        return parse_h2_frames(self.codec.data_to_send())

    def open(self, request=None):
        """Open a stream; return its id (its HEADERS frame is read and dropped)."""
        sid = self.codec.send_request(request or get(), b"https")
        self.frames()
        return sid

    def goaway(self):
        """The error code of the GOAWAY the codec queued (None when there is none)."""
        codes = [struct.unpack(">LL", f[3][:8])[1] for f in self.frames() if f[0] == GOAWAY]
        return codes[-1] if codes else None


def terminated(events):
    """The local ConnectionTerminated among ``events`` (asserting there is exactly one)."""
    [term] = [e for e in events if type(e) is ev.ConnectionTerminated]
    assert not term.remote
    return term


def resets(frames):
    """``{stream id: code}`` of the RST_STREAM frames among ``frames``."""
    return {f[2]: struct.unpack(">L", f[3])[0] for f in frames if f[0] == RST_STREAM}


# -- connection setup ------------------------------------------------------------------------

def test_preface_settings_and_connection_window():
    """The codec writes the client preface, SETTINGS (push off, stream window, header list size)
    and a WINDOW_UPDATE that makes the connection window CONNECTION_WINDOW; it ACKs the
    server's SETTINGS."""
    c = Codec()
    assert c.preface.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    frames = parse_h2_frames(c.preface)
    assert frames[0][:3] == (SETTINGS, 0, 0)
    values = dict(struct.unpack(">HL", frames[0][3][i:i + 6]) for i in range(0, 18, 6))
    assert values == {2: 0, 4: STREAM_WINDOW, 6: 65536}
    assert frames[1][:3] == (WINDOW_UPDATE, 0, 0)
    assert struct.unpack(">L", frames[1][3])[0] == CONNECTION_WINDOW - 65535
    assert c.frames() == [(SETTINGS, ACK, 0, b"")]
    assert [type(e) for e in c.events] == [ev.SettingsChanged, ev.WindowUpdated]


def test_first_server_frame_must_be_settings():
    """A server preface that is not SETTINGS is a connection PROTOCOL_ERROR."""
    codec = H2ClientCodec()
    codec.initiate()
    codec.data_to_send()
    term = terminated(codec.receive_data(h2_frame(PING, 0, 0, b"12345678")))
    assert term.error_code == 1 and codec.wants_close and not codec.accepting
    assert codec.receive_data(settings_frame()) == []  # dead: nothing more is read


@pytest.mark.parametrize("frame, code", [
    (h2_frame(SETTINGS, 0, 1, b""), 1),                        # SETTINGS on a stream
    (h2_frame(SETTINGS, ACK, 0, b"\x00" * 6), 6),              # ACK with a payload
    (h2_frame(SETTINGS, 0, 0, b"\x00" * 5), 6),                # not a multiple of 6
    (settings_frame(s2=1), 1),                                 # a server enabling push
    (settings_frame(s4=2 ** 31), 3),                           # INITIAL_WINDOW_SIZE too large
    (settings_frame(s5=16383), 1),                             # MAX_FRAME_SIZE too small
    (settings_frame(s5=2 ** 24), 1),                           # MAX_FRAME_SIZE too large
    (h2_frame(PING, 0, 0, b"1234567"), 6),                     # PING not 8 bytes
    (h2_frame(PING, 0, 1, b"12345678"), 1),                    # PING on a stream
    (h2_frame(GOAWAY, 0, 0, b"1234567"), 6),                   # GOAWAY too short
    (h2_frame(GOAWAY, 0, 3, b"\x00" * 8), 1),                  # GOAWAY on a stream
    (h2_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), 1),   # zero increment on the connection
    (h2_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), 6),       # WINDOW_UPDATE not 4 bytes
    (h2_frame(WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), 3),   # connection window overflow
    (h2_frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02"), 1),  # push is off
    (h2_frame(HEADERS, END_HEADERS, 0, b"\x88"), 1),           # HEADERS on stream 0
    (h2_frame(DATA, 0, 0, b"x"), 1),                           # DATA on stream 0
    (h2_frame(RST_STREAM, 0, 0, b"\x00" * 4), 1),              # RST_STREAM on stream 0
    (h2_frame(RST_STREAM, 0, 1, b"\x00" * 3), 6),              # RST_STREAM not 4 bytes
    (h2_frame(PRIORITY, 0, 0, b"\x00" * 5), 1),                # PRIORITY on stream 0
    (response(3), 1),                                          # HEADERS on an idle stream
    (response(2), 1),                                          # HEADERS on an even stream
    (h2_frame(DATA, 0, 5, b"x"), 1),                           # DATA on an idle stream
    (h2_frame(RST_STREAM, 0, 7, b"\x00" * 4), 1),              # RST_STREAM on an idle stream
    (h2_frame(WINDOW_UPDATE, 0, 9, b"\x00\x00\x00\x01"), 1),   # WINDOW_UPDATE on an idle one
    (h2_frame(CONTINUATION, END_HEADERS, 1, b"\x88"), 1),      # CONTINUATION out of sequence
    (h2_frame(HEADERS, 0, 1, b"\x88") + h2_frame(DATA, 0, 1, b""), 1),  # block interrupted
    (h2_frame(HEADERS, 0, 1, b"\x88") + h2_frame(0x20, 0, 0, b""), 1),  # even by unknown types
    (h2_frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\x0f"), 9),  # HPACK garbage
    (h2_frame(HEADERS, END_HEADERS, 1, b"\x3f\xe2\x1f"), 9),   # table size update to 4097
    (h2_frame(HEADERS, END_HEADERS | PADDED, 1, b"\x05\x88"), 1),  # padding beyond the frame
    (h2_frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00"), 6),  # short priority
    (h2_frame(PING, 0, 0, b"x" * 16385), 6),                   # a frame over 16384 bytes
])
def test_connection_errors(frame, code):
    """Each malformed server frame (one open stream, id 1) is a connection error with the RFC's
    code: a GOAWAY naming stream 0 (we accept no pushed streams), ConnectionTerminated
    (remote=False), wants_close, no exception, and nothing read after it."""
    c = Codec()
    c.frames()
    c.open()
    term = terminated(c.feed(frame))
    assert term.error_code == code
    frames = c.frames()
    [goaway] = [f for f in frames if f[0] == GOAWAY]
    assert struct.unpack(">LL", goaway[3][:8]) == (0, code)
    assert c.codec.wants_close and not c.codec.accepting
    assert c.feed(response(1, flags=END_HEADERS | END_STREAM)) == []


def test_unknown_frames_and_priority_are_ignored():
    """Unknown frame types (outside a header block), PRIORITY and unknown settings change
    nothing (RFC 9113 §4.1, §5.5)."""
    c = Codec()
    sid = c.open()
    out = c.feed(h2_frame(0x42, 0xFF, 0, b"hello") + h2_frame(0x42, 0, sid, b"")
                 + h2_frame(PRIORITY, 0, sid, b"\x00\x00\x00\x00\x10") + settings_frame(s99=5))
    assert [type(e) for e in out] == [ev.SettingsChanged, ev.WindowUpdated]
    assert c.codec.remote_settings[99] == 5
    assert not c.codec.wants_close


def test_ping_is_acknowledged_with_its_payload():
    """A server PING is answered by a PING ACK with the same 8 bytes."""
    c = Codec()
    c.frames()
    assert c.feed(h2_frame(PING, 0, 0, b"abcdefgh")) == []
    assert c.frames() == [(PING, ACK, 0, b"abcdefgh")]


def test_continuation_and_padding():
    """A response head split over HEADERS (padded, with priority) and two CONTINUATIONs, then a
    padded DATA frame: one ResponseReceived, and DataReceived whose flow length counts the
    padding."""
    c = Codec()
    sid = c.open()
    head = block([(b":status", b"200"), (b"x-long", b"v" * 50)])
    first = b"\x03" + b"\x00\x00\x00\x00\x10" + head[:10] + b"pad"
    data = h2_frame(HEADERS, PADDED | PRIORITY_FLAG, sid, first) + \
        h2_frame(CONTINUATION, 0, sid, head[10:30]) + \
        h2_frame(CONTINUATION, END_HEADERS, sid, head[30:]) + \
        h2_frame(DATA, PADDED | END_STREAM, sid, b"\x04body\x00\x00\x00\x00")
    out = c.feed(data)
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.DataReceived, ev.StreamEnded]
    assert out[0].headers == [(b"x-long", b"v" * 50)]
    assert (out[1].data, out[1].flow_length) == (b"body", 9)
    assert c.codec.open_streams == 0


def test_header_block_is_bounded_as_it_arrives():
    """CONTINUATION frames beyond twice the header list size (a backend's block may be longer
    than its list) end the connection (flood bound)."""
    codec = H2ClientCodec(max_header_list_size=1000)
    codec.initiate()
    codec.receive_data(settings_frame())
    codec.send_request(get(), b"https")
    out = codec.receive_data(h2_frame(HEADERS, 0, 1, b"\x00" * 600)
                             + h2_frame(CONTINUATION, 0, 1, b"\x00" * 600))
    assert not out
    out = codec.receive_data(h2_frame(CONTINUATION, 0, 1, b"\x00" * 900))
    assert terminated(out).error_code == 11


def test_hpack_dynamic_table_and_size_updates():
    """Responses encoded with the dynamic table (and a table size update to 0, then back) decode
    right; a server SETTINGS_HEADER_TABLE_SIZE of 0 makes our next request head start with a
    size update, which an h2 server decodes."""
    c = Codec()
    encoder = LibraryEncoder()
    sids = [c.open() for _ in range(3)]
    heads = [[(b":status", b"200"), (b"x-same", b"v"), (b"x-n", b"%d" % i)] for i in range(3)]
    raw = h2_frame(HEADERS, END_HEADERS | END_STREAM, sids[0], encoder.encode(heads[0]))
    encoder.header_table_size = 0
    raw += h2_frame(HEADERS, END_HEADERS | END_STREAM, sids[1], encoder.encode(heads[1]))
    encoder.header_table_size = 4096
    raw += h2_frame(HEADERS, END_HEADERS | END_STREAM, sids[2], encoder.encode(heads[2]))
    out = [e for e in c.feed(raw) if type(e) is ev.ResponseReceived]
    assert [e.headers for e in out] == [h[1:] for h in heads]
    # Our encoder follows the server's table size.
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                  header_encoding=None))
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    c = Codec()
    server.receive_data(c.preface + c.codec.data_to_send())
    c.feed(server.data_to_send())
    server.receive_data(c.codec.data_to_send())
    c.feed(server.data_to_send())
    sid = c.codec.send_request(get(b"/sized"), b"https")
    raw = c.codec.data_to_send()
    assert parse_h2_frames(raw)[-1][3][:1] == b"\x20"  # dynamic table size update to 0
    [request] = [e for e in server.receive_data(raw) if isinstance(e, h2.events.RequestReceived)]
    assert request.stream_id == sid and (b":path", b"/sized") in request.headers


# -- stream states -----------------------------------------------------------------------------

def test_data_before_the_response_head_is_a_stream_error():
    """DATA before any response head resets the stream (PROTOCOL_ERROR) and reports it; the
    connection lives on, and later frames on the stream are ignored."""
    c = Codec()
    sid = c.open()
    out = c.feed(h2_frame(DATA, 0, sid, b"early"))
    assert out == [ev.StreamReset(stream_id=sid, error_code=1, remote=False)]
    assert resets(c.frames()) == {sid: 1}
    assert c.feed(response(sid) + h2_frame(DATA, END_STREAM, sid, b"x")) == []
    assert not c.codec.wants_close and c.codec.open_streams == 0


@pytest.mark.parametrize("frames", [
    [response(1, b"103", flags=END_HEADERS | END_STREAM)],  # 1xx ending the stream
    [response(1, b"101")],                                  # no 101 in HTTP/2
    [response(1), response(1)],                             # trailers without END_STREAM
    [h2_frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00\x00\x01\x10\x88")],  # self-dep.
    [response(1), h2_frame(DATA, 0, 1, b"x" * 16385)],      # DATA over the frame size
    [response(1), h2_frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00")],  # zero stream increment
    [response(1), h2_frame(WINDOW_UPDATE, 0, 1, b"\x7f\xff\xff\xff")],  # stream window overflow
])
def test_stream_errors(frames):
    """Malformed responses reset their stream with RST_STREAM and StreamReset(remote=False); the
    connection keeps serving."""
    c = Codec()
    sid = c.open()
    out = []
    for frame in frames:
        out += c.feed(frame)
    [reset] = [e for e in out if type(e) is ev.StreamReset]
    assert reset.stream_id == sid and not reset.remote
    assert sid in resets(c.frames())
    assert not c.codec.wants_close and c.codec.accepting and c.codec.open_streams == 0


def test_frames_after_the_end_of_a_stream():
    """HEADERS after the response ended is a connection error STREAM_CLOSED (§5.1); frames on a
    stream the peer reset are stream errors; on a stream we reset they are ignored."""
    c = Codec()
    s1, s3, s5 = c.open(), c.open(), c.open()
    c.feed(response(s1, flags=END_HEADERS | END_STREAM))
    c.feed(h2_frame(RST_STREAM, 0, s3, b"\x00\x00\x00\x08"))
    c.codec.reset_stream(s5, 8)
    c.frames()
    assert c.feed(response(s5) + h2_frame(DATA, 0, s5, b"late")) == []
    c.feed(response(s3))
    assert resets(c.frames()) == {s3: 5}
    assert terminated(c.feed(response(s1))).error_code == 5


def test_response_flow_control_and_window_violations():
    """The server may send STREAM_WINDOW per stream: a byte more is a stream FLOW_CONTROL_ERROR
    (and the connection window is credited back); windows reopen only through acknowledge()."""
    c = Codec()
    sid = c.open()
    c.feed(response(sid))
    chunk = b"x" * 16384
    sent = 0
    while sent + len(chunk) <= STREAM_WINDOW:
        c.feed(h2_frame(DATA, 0, sid, chunk))
        sent += len(chunk)
    assert not [f for f in c.frames() if f[0] == WINDOW_UPDATE]
    out = c.feed(h2_frame(DATA, 0, sid, b"y" * (STREAM_WINDOW - sent + 1)))
    assert out == [ev.StreamReset(stream_id=sid, error_code=3, remote=False)]
    assert not c.codec.wants_close
    # The connection window: more than CONNECTION_WINDOW unacknowledged bytes on it is fatal.
    c = Codec()
    total = 0
    while total <= CONNECTION_WINDOW:
        sid = c.open()
        c.feed(response(sid))
        for _ in range(STREAM_WINDOW // len(chunk)):
            out = c.feed(h2_frame(DATA, 0, sid, chunk))
            total += len(chunk)
            if total > CONNECTION_WINDOW:
                assert terminated(out).error_code == 3
                return
    raise AssertionError("the connection window was never enforced")


def test_request_flow_control_follows_the_server():
    """available_window is the min of the stream and connection windows; INITIAL_WINDOW_SIZE
    changes move open streams' windows; MAX_FRAME_SIZE makes bigger DATA frames."""
    c = Codec(settings_frame(s4=1000, s5=20000))
    sid = c.open(get(body=True))
    assert c.codec.available_window(sid) == 1000
    c.feed(settings_frame(s4=500))
    assert c.codec.available_window(sid) == 500
    c.feed(h2_frame(WINDOW_UPDATE, 0, sid, b"\x00\x00\x9c\x40"))  # +40000
    assert c.codec.available_window(sid) == 40500
    out = c.feed(h2_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x10\x00"))
    assert out == [ev.WindowUpdated(stream_id=0)]
    c.codec.send_data(sid, b"z" * 40500, end_stream=True)
    assert [len(f[3]) for f in c.frames() if f[0] == DATA] == [20000, 20000, 500]
    with pytest.raises(ValueError):
        c.codec.send_data(c.open(get(body=True)), b"z" * 70000)


def test_goaway_lets_lower_streams_finish():
    """A graceful GOAWAY stops new streams; streams up to its last id still finish."""
    c = Codec()
    s1, s3 = c.open(), c.open()
    [term] = c.feed(h2_frame(GOAWAY, 0, 0, struct.pack(">LL", s1, 0)))
    assert (term.last_stream_id, term.remote) == (s1, True)
    assert not c.codec.accepting and c.codec.goaway_last_stream_id == s1
    out = c.feed(response(s1, flags=END_HEADERS | END_STREAM))
    assert [type(e) for e in out] == [ev.ResponseReceived, ev.StreamEnded]
    assert s3 in c.codec._streams  # the network layer fails it (unprocessed)


def test_request_trailers_and_ping_round_trip():
    """end_stream(trailers) sends HEADERS with END_STREAM; a PING ACK takes one off
    pings_outstanding, an unsolicited one does nothing."""
    c = Codec()
    sid = c.open(get(body=True))
    c.codec.send_data(sid, b"abc")
    c.codec.end_stream(sid, [(b"x-sum", b"1")])
    frames = c.frames()
    assert frames[-1][:3] == (HEADERS, END_STREAM | END_HEADERS, sid)
    c.codec.ping()
    [ping] = c.frames()
    assert ping[:2] == (PING, 0)
    c.feed(h2_frame(PING, ACK, 0, ping[3]) + h2_frame(PING, ACK, 0, ping[3]))
    assert c.codec.pings_outstanding == 0


def test_stream_ids_run_out():
    """After stream id 2^31-1 the connection accepts no more streams."""
    c = Codec()
    c.codec._next_id = h2frames.MAX_STREAM_ID
    assert c.codec.accepting
    c.open()
    assert not c.codec.accepting


# -- hypothesis: the h2 library's server as the oracle -----------------------------------------

_field = st.tuples(st.sampled_from([b"x-a", b"content-type", b"set-cookie", b"cache-control",
                                    b"x-long"]),
                   st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\x00", b"")))
_exchange = st.fixed_dictionaries({
    "informational": st.lists(st.sampled_from([b"100", b"103"]), max_size=2),
    "status": st.sampled_from([b"200", b"204", b"404", b"500"]),
    "headers": st.lists(_field, max_size=4),
    "body": st.binary(max_size=20000),
    "trailers": st.lists(_field, max_size=2),
    "request_body": st.binary(max_size=3000),
    "reset": st.sampled_from([None, None, None, 8, 7]),
})


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=list(HealthCheck))
@given(exchanges=st.lists(_exchange, min_size=1, max_size=4),
       table=st.sampled_from([0, 100, 4096]), cut=st.integers(20, 5000))
def test_round_trips_against_h2_server(exchanges, table, cut):
    """Several streams at once, each a request (maybe with a body) and a response drawn with 1xx
    heads, fields, a body over several windows, trailers or a server reset, interleaved, the
    server's bytes cut into pieces of ``cut`` bytes: what the codec reports is exactly what the
    h2 server sent, what the server receives is exactly what the codec sent, and every stream
    ends (response end or reset)."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table})
    codec = H2ClientCodec()
    codec.initiate()
    got = {}
    requests = {}

    def pump():
        for _ in range(200):
            data = codec.data_to_send()
            if data:
                for e in server.receive_data(data):
                    if isinstance(e, h2.events.RequestReceived):
                        requests[e.stream_id] = [dict(e.headers), b""]
                    elif isinstance(e, h2.events.DataReceived):
                        requests[e.stream_id][1] += e.data
                        server.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            back = server.data_to_send()
            if not data and not back:
                return
            for start in range(0, len(back), cut):
                for e in codec.receive_data(back[start:start + cut]):
                    assert type(e) is not ev.ConnectionTerminated, e
                    if e.stream_id:
                        got.setdefault(e.stream_id, []).append(e)
                    if type(e) is ev.DataReceived:
                        codec.acknowledge(e.stream_id, e.flow_length)
        raise AssertionError("no quiet state")

    pump()
    sids = []
    for ex in exchanges:
        body = ex["request_body"]
        request = BackendRequest(b"POST", b"/p", b"app", [(b"x-r", b"1")], len(body), bool(body),
                                 True)
        sid = codec.send_request(request, b"https")
        sids.append(sid)
        if body:
            codec.send_data(sid, body)
            codec.end_stream(sid, [(b"x-t", b"1")])
    pump()
    pending = {}
    for sid, ex in zip(sids, exchanges):
        expected = requests[sid]
        assert expected[0][b":path"] == b"/p" and expected[0][b"te"] == b"trailers"
        assert expected[1] == ex["request_body"]
        for status in ex["informational"]:
            server.send_headers(sid, [(b":status", status)])
        if ex["reset"] is not None:
            server.reset_stream(sid, ex["reset"])
            continue
        fields = [(b":status", ex["status"]), *ex["headers"]]
        server.send_headers(sid, fields, end_stream=not ex["body"] and not ex["trailers"])
        if ex["body"] or ex["trailers"]:
            pending[sid] = [ex["body"], ex["trailers"]]
    for _ in range(100):  # send bodies as the windows allow, streams interleaved
        for sid, (rest, trailers) in list(pending.items()):
            size = min(len(rest), server.local_flow_control_window(sid), 16384)
            if size or not rest:
                last = size == len(rest)
                server.send_data(sid, rest[:size], end_stream=last and not trailers)
                pending[sid][0] = rest = rest[size:]
                if last:
                    if trailers:
                        server.send_headers(sid, trailers, end_stream=True)
                    del pending[sid]
        pump()
        if not pending:
            break
    assert not pending, "the windows never reopened"
    for sid, ex in zip(sids, exchanges):
        events = got.get(sid, [])
        kinds = [type(e) for e in events]
        informational = [e.status for e in events if type(e) is ev.InformationalResponse]
        assert informational == [int(s) for s in ex["informational"]]
        if ex["reset"] is not None:
            assert kinds[-1] is ev.StreamReset and events[-1].error_code == ex["reset"]
            continue
        [head] = [e for e in events if type(e) is ev.ResponseReceived]
        assert head.status == int(ex["status"]) and head.headers == ex["headers"]
        assert b"".join(e.data for e in events if type(e) is ev.DataReceived) == ex["body"]
        trailers = [e.headers for e in events if type(e) is ev.TrailersReceived]
        assert trailers == ([ex["trailers"]] if ex["trailers"] else [])
        assert kinds[-1] is ev.StreamEnded
    assert codec.open_streams == 0 and not codec.wants_close


# -- bounded fuzz --------------------------------------------------------------------------------

def _server_bytes(draw):
    """A server byte stream for streams 1, 3, 5: SETTINGS, then drawn valid and hostile frames."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    server.initiate_connection()
    client = H2ClientCodec()
    client.initiate()
    for _ in range(3):
        client.send_request(get(body=True), b"https")
    server.receive_data(client.data_to_send())
    out = server.data_to_send()
    for _ in range(draw(st.integers(1, 8))):
        sid = draw(st.sampled_from([1, 3, 5, 0, 2, 7]))
        kind = draw(st.integers(0, 9))
        try:
            if kind == 0:
                server.send_headers(sid, [(b":status", draw(st.sampled_from(
                    [b"200", b"103", b"101", b"20", b"abc"])))], end_stream=draw(st.booleans()))
            elif kind == 1:
                server.send_data(sid, draw(st.binary(max_size=300)),
                                 end_stream=draw(st.booleans()),
                                 pad_length=draw(st.sampled_from([None, 0, 7])))
            elif kind == 2:
                server.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
            elif kind == 3:
                server.reset_stream(sid, draw(st.integers(0, 13)))
            elif kind == 4:
                server.ping(b"pingpong")
            elif kind == 5:
                server.update_settings({draw(st.sampled_from([1, 3, 4, 5, 6])):
                                        draw(st.sampled_from([0, 1, 100, 16384, 65535, 2 ** 31]))})
            else:
                out += server.data_to_send()
                out += h2_frame(kind, draw(st.integers(0, 255)), sid,
                                draw(st.binary(max_size=20)))
                continue
        except Exception:  # noqa: BLE001 - h2 refused the sequence itself: use what is queued
            pass
        out += server.data_to_send()
    return out


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_client_codec(data):
    """Mutated server byte streams, cut anywhere: the codec never raises, its input buffer never
    holds more than one frame, its output stays bounded, and every stream we opened either
    ended, was reset, or the connection failed (the network layer then fails them all)."""
    draw = data.draw
    raw = bytearray(_server_bytes(draw))
    for _ in range(draw(st.integers(0, 4))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:at + draw(st.integers(1, 8))]
    codec = H2ClientCodec()
    codec.initiate()
    sids = [codec.send_request(get(body=True), b"https") for _ in range(3)]
    codec.data_to_send()
    cuts = sorted(set(draw(st.lists(st.integers(0, len(raw)), max_size=6)))) + [len(raw)]
    finished, dead, last = set(), False, 0
    for cut in cuts:
        for e in codec.receive_data(bytes(raw[last:cut])):
            if type(e) in (ev.StreamEnded, ev.StreamReset):
                finished.add(e.stream_id)
            elif type(e) is ev.ConnectionTerminated and not e.remote:
                dead = True
        last = cut
        assert len(codec._buf) < 9 + 16384
        for sid in sids:  # the network layer's part: acknowledge, keep sending
            codec.acknowledge(sid, 100)
            window = codec.available_window(sid)
            if window:
                codec.send_data(sid, b"b" * min(window, 50))
        assert len(codec.data_to_send()) < 1 << 20
    assert not dead or codec.wants_close
    if not dead:
        for sid in sids:
            assert sid in finished or sid in codec._streams
            codec.reset_stream(sid, 8)  # the network layer's release/cancel ends every stream
        assert codec.open_streams == 0


def test_remembered_settings_are_bounded():
    """remote_settings keeps known-range identifiers only: a peer sending thousands of distinct
    identifiers cannot grow it without bound."""
    c = Codec()
    payload = b"".join(struct.pack(">HL", ident, 1) for ident in range(10, 2700))
    c.feed(h2_frame(SETTINGS, 0, 0, payload))
    assert not c.codec.wants_close
    assert max(c.codec.remote_settings) <= 0xFF
