"""Unit tests of the SPDY session state machine (:class:`SpdyConnection`), both sides, all versions.

Strategy: our client codec talks to our server codec in memory (``pump`` moves bytes until both are
quiet) for the normal flows; protocol violations are hand-built with a :class:`RawPeer` that owns
its own zlib stream, so the codec under test sees exactly the frames a misbehaving peer would send.
Hypothesis checks that chunking never changes the outcome and that garbage never raises.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd import events as ev
from proxyd.codec import (CANCEL, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, INTERNAL_ERROR,
                          PROTOCOL_ERROR, REFUSED_STREAM, STREAM_CLOSED)
from proxyd.codec.spdy import SpdyConnection, SpdyError
from proxyd.codec.spdy import frames as fr
from proxyd.errors import Refused
from tests.support import RawPeer, fields, gated

VERSIONS = ["spdy/2", "spdy/3", "spdy/3.1"]
WIRE = {"spdy/2": 2, "spdy/3": 3, "spdy/3.1": 3}
HTTP_VERSION = {"spdy/2": b"SPDY/2", "spdy/3": b"SPDY/3", "spdy/3.1": b"SPDY/3.1"}


def make_pair(version, client_kw=None, **server_kw):
    """A connected (client, server) pair of our codecs after both prefaces were exchanged."""
    client = SpdyConnection(version, client_side=True, **(client_kw or {}))
    server = SpdyConnection(version, client_side=False, **server_kw)
    client.initiate()
    server.initiate()
    pump(client, server)
    return client, server


def pump(client, server, rounds=1000):
    """Move bytes both ways until neither side has anything to send; return both event lists."""
    client_events, server_events = [], []
    for _ in range(rounds):
        to_server = client.data_to_send()
        to_client = server.data_to_send()
        if not to_server and not to_client:
            break
        if to_server:
            server_events += server.receive_data(to_server)
        if to_client:
            client_events += client.receive_data(to_client)
    return client_events, server_events


def of(events, kind):
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]


def raw_server(version, **kw):
    """A server codec past its preface plus a RawPeer playing the client."""
    server = SpdyConnection(version, client_side=False, **kw)
    server.initiate()
    server.data_to_send()
    return server, RawPeer(WIRE[version])


def raw_client(version, **kw):
    """A client codec past its preface plus a RawPeer playing the server."""
    client = SpdyConnection(version, client_side=True, **kw)
    client.initiate()
    client.data_to_send()
    return client, RawPeer(WIRE[version])


# -- normal flows, our client <-> our server ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_get_round_trip(version):
    """GET: RequestReceived fields and version, StreamEnded, then the response on the client."""
    client, server = make_pair(version)
    sid = client.send_request(b"GET", b"https", b"example.com:8443", b"/a?b=1",
                              [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
                              end_stream=True)
    _, sev = pump(client, server)
    req, ended = sev
    assert req.stream_id == sid and req.end_stream
    assert req.http_version == HTTP_VERSION[version]
    assert fields(gated(req)) == (
        b"GET", b"https", b"example.com:8443", b"/a?b=1",
        [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert ended == ev.StreamEnded(stream_id=sid)
    server.send_response(sid, 200, [(b"content-type", b"text/plain"), (b"set-cookie", b"x=1"),
                                    (b"set-cookie", b"y=2")])
    server.send_data(sid, b"hello", end_stream=True)
    cev, _ = pump(client, server)
    assert cev[0] == ev.ResponseReceived(stream_id=sid, status=200, headers=[
        (b"content-type", b"text/plain"), (b"set-cookie", b"x=1"), (b"set-cookie", b"y=2")])
    assert cev[1:] == [ev.DataReceived(stream_id=sid, data=b"hello", flow_length=5),
                       ev.StreamEnded(stream_id=sid)]
    assert client.open_streams == server.open_streams == 0
    assert not server.wants_close


@pytest.mark.parametrize("version", VERSIONS)
def test_response_with_end_stream_in_syn_reply(version):
    """A SYN_REPLY with FIN gives ResponseReceived(end_stream=True) and StreamEnded."""
    client, server = make_pair(version)
    sid = client.send_request(b"HEAD", b"http", b"h", b"/", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 204, [], end_stream=True)
    cev, _ = pump(client, server)
    assert cev == [ev.ResponseReceived(stream_id=sid, status=204, end_stream=True),
                   ev.StreamEnded(stream_id=sid)]


def _upload(client, server, sid, body, acknowledge=True):
    """Send ``body`` from the client within its windows; return what the server received."""
    received = bytearray()
    pos = 0
    for _ in range(10000):
        window = client.available_window(sid)
        if pos < len(body) and window:
            chunk = body[pos:pos + window]
            pos += len(chunk)
            client.send_data(sid, chunk, end_stream=pos == len(body))
        _, sev = pump(client, server)
        for e in sev:
            if isinstance(e, ev.DataReceived):
                received += e.data
                if acknowledge:
                    server.acknowledge(e.stream_id, e.flow_length)
        pump(client, server)  # deliver the WINDOW_UPDATEs
        if not window and not sev:
            break  # finished, or stalled on a closed window
    return bytes(received)


@pytest.mark.parametrize("version", VERSIONS)
def test_post_with_body_and_flow_control(version):
    """A 1 MB POST crosses many windows; the server acknowledges and gets every byte."""
    client, server = make_pair(version)
    body = bytes(range(256)) * 4096
    sid = client.send_request(b"POST", b"https", b"h", b"/up", [(b"content-length", b"1048576")])
    assert _upload(client, server, sid, body) == body
    server.send_response(sid, 201, [], end_stream=True)
    cev, _ = pump(client, server)
    assert of(cev, ev.ResponseReceived)[0].status == 201
    assert client.open_streams == server.open_streams == 0


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_windows_reopen_only_after_acknowledge(version):
    """Without acknowledge the sender stalls at the window; acknowledge sends WINDOW_UPDATEs."""
    client, server = make_pair(version)
    sid = client.send_request(b"POST", b"https", b"h", b"/", [])
    body = b"x" * 200_000
    received = _upload(client, server, sid, body, acknowledge=False)
    assert len(received) == 65536
    assert client.available_window(sid) == 0
    assert server.data_to_send() == b""  # nothing was acknowledged: no WINDOW_UPDATE
    server.acknowledge(sid, 20000)  # below half a window: still nothing
    assert server.data_to_send() == b""
    server.acknowledge(sid, 20000)
    cev = client.receive_data(server.data_to_send())
    assert ev.WindowUpdated(stream_id=sid) in cev
    assert client.available_window(sid) == 40000


def test_spdy2_has_no_flow_control():
    """SPDY/2: the window never closes (2^31-1), acknowledge queues nothing."""
    client, server = make_pair("spdy/2")
    sid = client.send_request(b"POST", b"https", b"h", b"/", [])
    body = b"y" * 300_000
    assert client.available_window(sid) == 2**31 - 1
    assert _upload(client, server, sid, body, acknowledge=False) == body
    assert client.available_window(sid) == 0  # stream ended
    server.acknowledge(sid, 300_000)
    assert server.data_to_send() == b""


def test_session_window_limits_all_streams_in_31():
    """SPDY/3.1: the session window caps the sum of the streams; a session update reopens it."""
    client, server = make_pair("spdy/3.1", client_kw={"session_window": 65536},
                               initial_window=1 << 20)
    sids = [client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True) for _ in range(3)]
    pump(client, server)
    for sid in sids:
        server.send_response(sid, 200, [])
    sent = 0
    for sid in sids:
        window = server.available_window(sid)
        server.send_data(sid, b"z" * window)
        sent += window
    assert sent == 65536
    cev, _ = pump(client, server)
    for e in of(cev, ev.DataReceived):
        client.acknowledge(e.stream_id, e.flow_length)
    cev2, _ = pump(client, server)
    assert server.available_window(sids[0]) == 65536
    assert client.session_window_overruns == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("client_window", [65536, 1 << 20])
def test_relay_style_sender_never_stalls(version, client_window):
    """Send what available_window allows, retry only on WindowUpdated: 3 MB always arrive."""
    client, server = make_pair(version, client_kw={"initial_window": client_window})
    sid = client.send_request(b"GET", b"http", b"h", b"/big", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 200, [])
    pending = bytearray(b"\x5a" * 3_000_000)

    def drain():
        window = server.available_window(sid)
        if window > 0 and pending:
            chunk = bytes(pending[:window])
            del pending[:window]
            server.send_data(sid, chunk, end_stream=not pending)

    drain()
    received = 0
    for _ in range(10_000):
        cev, sev = pump(client, server)
        for e in of(cev, ev.DataReceived):
            received += len(e.data)
            client.acknowledge(sid, e.flow_length)
        if of(sev, ev.WindowUpdated):
            drain()
        if not cev and not sev:
            break
    assert received == 3_000_000 and not pending


@pytest.mark.parametrize("version", VERSIONS)
def test_hundred_concurrent_streams_and_refusal_beyond(version):
    """100 concurrent requests are served; the 101st is refused with REFUSED_STREAM."""
    client, server = make_pair(version)
    sids = [client.send_request(b"GET", b"http", b"h", b"/%d" % i, [], end_stream=True)
            for i in range(101)]
    cev, sev = pump(client, server)
    assert [e.stream_id for e in of(sev, ev.RequestReceived)] == sids[:100]
    assert cev == [ev.StreamReset(stream_id=sids[100], error_code=REFUSED_STREAM, remote=True)]
    for sid in sids[:100]:
        server.send_response(sid, 200, [])
        server.send_data(sid, b"r%d" % sid, end_stream=True)
    cev, _ = pump(client, server)
    assert len(of(cev, ev.StreamEnded)) == 100
    assert {e.data for e in of(cev, ev.DataReceived)} == {b"r%d" % s for s in sids[:100]}


@pytest.mark.parametrize("version", VERSIONS)
def test_resets_both_ways(version):
    """Client CANCEL and server INTERNAL_ERROR resets arrive as StreamReset(remote=True)."""
    client, server = make_pair(version)
    a = client.send_request(b"POST", b"http", b"h", b"/a", [])
    b = client.send_request(b"POST", b"http", b"h", b"/b", [])
    pump(client, server)
    client.reset_stream(a, CANCEL)
    server.reset_stream(b, INTERNAL_ERROR)
    cev, sev = pump(client, server)
    assert sev == [ev.StreamReset(stream_id=a, error_code=CANCEL, remote=True)]
    assert cev == [ev.StreamReset(stream_id=b, error_code=INTERNAL_ERROR, remote=True)]
    assert client.open_streams == server.open_streams == 0
    # sending on a reset stream is a harmless no-op
    server.send_response(a, 200, [])
    server.send_data(b, b"late")
    assert server.data_to_send() == b""
    assert server.available_window(a) == 0


@pytest.mark.parametrize("version, h2_code, status", [
    ("spdy/3", PROTOCOL_ERROR, 1), ("spdy/3", INTERNAL_ERROR, 6), ("spdy/2", INTERNAL_ERROR, 6),
    ("spdy/3", REFUSED_STREAM, 3), ("spdy/3", CANCEL, 5), ("spdy/3.1", FLOW_CONTROL_ERROR, 7),
    ("spdy/3", STREAM_CLOSED, 2), ("spdy/2", ENHANCE_YOUR_CALM, 1), ("spdy/3", 0, 5),
])
def test_reset_stream_status_on_the_wire(version, h2_code, status):
    """reset_stream maps HTTP/2 codes to the SPDY RST_STREAM status actually sent."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=False))
    server.reset_stream(1, h2_code)
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 1, status, None)]


@pytest.mark.parametrize("version", VERSIONS)
def test_trailers(version):
    """Trailers: HEADERS+FIN on SPDY/3 and 3.1; dropped on SPDY/2, where the stream just ends."""
    client, server = make_pair(version)
    sid = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 200, [])
    server.send_data(sid, b"body")
    server.send_trailers(sid, [(b"grpc-status", b"0"), (b"x-sum", b"abc")])
    cev, _ = pump(client, server)
    if version == "spdy/2":
        assert of(cev, ev.TrailersReceived) == []
    else:
        assert of(cev, ev.TrailersReceived) == [ev.TrailersReceived(
            stream_id=sid, headers=[(b"grpc-status", b"0"), (b"x-sum", b"abc")])]
    assert cev[-1] == ev.StreamEnded(stream_id=sid)
    assert server.open_streams == 0


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_request_trailers_reach_the_server(version):
    """Client trailers (HEADERS+FIN) become TrailersReceived then StreamEnded on the server."""
    client, server = make_pair(version)
    sid = client.send_request(b"POST", b"http", b"h", b"/", [])
    client.send_data(sid, b"abc")
    client.send_trailers(sid, [(b"x-check", b"1")])
    _, sev = pump(client, server)
    assert sev[-2:] == [ev.TrailersReceived(stream_id=sid, headers=[(b"x-check", b"1")]),
                        ev.StreamEnded(stream_id=sid)]


@pytest.mark.parametrize("version", VERSIONS)
def test_informational_responses_are_dropped(version):
    """SPDY cannot send 1xx: send_informational queues nothing."""
    client, server = make_pair(version)
    sid = client.send_request(b"POST", b"http", b"h", b"/", [(b"expect", b"100-continue")])
    pump(client, server)
    server.send_informational(sid, 100, [])
    assert server.data_to_send() == b""


@pytest.mark.parametrize("version", VERSIONS)
def test_send_beyond_window_or_twice_is_a_caller_error(version):
    """Data before the response, more than the window (v3) or a second response: SpdyError."""
    client, server = make_pair(version)
    sid = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    pump(client, server)
    with pytest.raises(SpdyError):
        server.send_data(sid, b"body before the response")
    server.send_response(sid, 200, [])
    with pytest.raises(SpdyError):
        server.send_response(sid, 200, [])
    if version != "spdy/2":
        with pytest.raises(SpdyError):
            server.send_data(sid, b"x" * 65537)
    with pytest.raises(SpdyError):
        server.send_request(b"GET", b"http", b"h", b"/", [])


# -- protocol violations, hand-built -----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_uppercase_header_goes_to_the_gate_raw(version):
    """An upper-case header name is no framing error: the codec hands the head over raw (the gate
    refuses it, and the frontend resets the stream); the session goes on, zlib in step."""
    server, peer = raw_server(version)
    events = server.receive_data(peer.syn_stream(1, peer.request_pairs(extra=[(b"X-Bad", b"1")])))
    assert [type(e) for e in events] == [ev.RequestReceived, ev.StreamEnded]
    assert (b"X-Bad", b"1") in events[0].headers
    with pytest.raises(Refused) as refused:
        gated(events[0])
    assert refused.value.reason == "bad_name"
    assert peer.read(server.data_to_send()) == []
    events = server.receive_data(peer.syn_stream(3))  # zlib state still in step
    assert [type(e) for e in events] == [ev.RequestReceived, ev.StreamEnded]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("drop", [0, 1, 3, 4])
def test_missing_request_header_is_refused_by_the_gate(version, drop):
    """Missing method, path, host or scheme: the raw head reaches the gate, which refuses it."""
    server, peer = raw_server(version)
    pairs = peer.request_pairs()
    del pairs[drop]
    events = server.receive_data(peer.syn_stream(1, pairs))
    assert type(events[0]) is ev.RequestReceived
    with pytest.raises(Refused) as refused:
        gated(events[0])
    assert refused.value.reason in ("missing_pseudo", "missing_authority")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ids", [(2,), (3, 1), (1, 1), (0,)])
def test_bad_stream_ids_fail_the_session(version, ids):
    """Even, zero, repeated or decreasing SYN_STREAM ids: GOAWAY PROTOCOL_ERROR, input ignored."""
    server, peer = raw_server(version)
    events = []
    for sid in ids:
        events += server.receive_data(peer.syn_stream(sid))
    failure = events[-1]
    assert failure.remote is False and failure.error_code == PROTOCOL_ERROR
    assert isinstance(failure, ev.ConnectionTerminated)
    assert server.wants_close
    goaway = peer.read(server.data_to_send())[-1]
    assert goaway[0] == fr.GOAWAY
    assert goaway[3] == (max([i for i in ids if i % 2] + [0]) if len(ids) > 1 else 0,
                         0 if version == "spdy/2" else 1)
    assert server.receive_data(peer.syn_stream(99)) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_data_on_unknown_stream_gets_one_invalid_stream_reset(version):
    """DATA for a stream that never existed: RST_STREAM INVALID_STREAM once, then silence."""
    server, peer = raw_server(version)
    assert server.receive_data(fr.encode_data(5, b"abc") + fr.encode_data(5, b"def")) == []
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 5, 2, None)]


@pytest.mark.parametrize("version", VERSIONS)
def test_data_after_fin_resets_the_stream(version):
    """DATA after the peer's FIN: STREAM_ALREADY_CLOSED (SPDY/3) / INVALID_STREAM (SPDY/2)."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=True))
    events = server.receive_data(fr.encode_data(1, b"late"))
    assert events == [ev.StreamReset(stream_id=1, error_code=STREAM_CLOSED, remote=False)]
    status = 2 if version == "spdy/2" else 9
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 1, status, None)]
    server.send_response(1, 200, [])  # the application's late answer is dropped
    assert server.data_to_send() == b""


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_data_beyond_stream_window_is_a_flow_control_error(version):
    """A DATA frame larger than the stream window: RST FLOW_CONTROL_ERROR, StreamReset."""
    server, peer = raw_server(version, initial_window=65536)
    server.receive_data(peer.syn_stream(1, fin=False))
    events = server.receive_data(fr.encode_data(1, b"a" * 65537))
    assert events == [ev.StreamReset(stream_id=1, error_code=FLOW_CONTROL_ERROR, remote=False)]
    assert (fr.RST_STREAM, 1, 7, None) in peer.read(server.data_to_send())


def test_session_window_overrun_is_tolerated_up_to_one_chunk():
    """SPDY/3.1: a session overrun below 64 KiB is accepted and counted; more fails the session."""
    server, peer = raw_server("spdy/3.1", initial_window=1 << 20, session_window=65536)
    wire = b"".join(peer.syn_stream(sid, fin=False) for sid in (1, 3, 5))
    wire += fr.encode_data(1, b"a" * 60000) + fr.encode_data(3, b"b" * 30000)
    events = server.receive_data(wire)
    assert len(of(events, ev.DataReceived)) == 2
    assert server.session_window_overruns == 1
    events = server.receive_data(fr.encode_data(5, b"c" * 50000))
    assert events[-1].remote is False and events[-1].error_code == FLOW_CONTROL_ERROR


def test_spdy3_ignores_the_session_window():
    """SPDY/3 (no session flow control) accepts any sum of stream windows."""
    server, peer = raw_server("spdy/3", initial_window=65536)
    wire = b"".join(peer.syn_stream(sid, fin=False) for sid in (1, 3, 5))
    wire += b"".join(fr.encode_data(sid, b"d" * 65536) for sid in (1, 3, 5))
    events = server.receive_data(wire)
    assert len(of(events, ev.DataReceived)) == 3
    assert server.session_window_overruns == 0


def test_spdy3_session_upgrades_to_31_on_session_window_update():
    """A "spdy/3" session turns 3.1 when the peer sends WINDOW_UPDATE on stream 0."""
    server, peer = raw_server("spdy/3", session_window=1 << 20)
    events = server.receive_data(fr.encode_window_update(3, 0, 1000))
    assert events == [ev.WindowUpdated(stream_id=0)]
    assert server.version == "spdy/3.1"
    assert peer.read(server.data_to_send()) == [(fr.WINDOW_UPDATE, 0, (1 << 20) - 65536, None)]
    events = server.receive_data(peer.syn_stream(1))
    assert events[0].http_version == b"SPDY/3.1"


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_window_update_for_closed_stream_is_ignored(version):
    """WINDOW_UPDATE for a finished or unknown stream: no event, no reset."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1))
    server.send_response(1, 200, [], end_stream=True)
    server.data_to_send()
    assert server.receive_data(fr.encode_window_update(3, 1, 100)
                               + fr.encode_window_update(3, 77, 100)) == []
    assert server.data_to_send() == b""


@pytest.mark.parametrize("version", VERSIONS)
def test_window_updates_on_spdy2_are_ignored(version):
    """Stock node-spdy sends WINDOW_UPDATE on SPDY/2: ignored (SPDY/2 has no flow control)."""
    server, peer = raw_server("spdy/2")
    server.receive_data(peer.syn_stream(1, fin=False))
    assert server.receive_data(fr.encode_window_update(2, 1, 100)) == []
    assert server.available_window(1) == 2**31 - 1


def test_settings_persisted_values_are_ignored_and_persist_flag_is_not():
    """PERSISTED entries are ignored, PERSIST_VALUE ones apply, the first of a repeated id wins."""
    client, peer = raw_client("spdy/3")
    sid = client.send_request(b"POST", b"http", b"h", b"/", [])
    client.data_to_send()
    events = client.receive_data(fr.encode_settings(3, [
        (fr.SETTINGS_INITIAL_WINDOW_SIZE, 10, fr.ID_FLAG_PERSISTED),
        (fr.SETTINGS_MAX_CONCURRENT_STREAMS, 50, fr.ID_FLAG_PERSIST_VALUE),
        (fr.SETTINGS_MAX_CONCURRENT_STREAMS, 7)]))
    assert events == [ev.SettingsChanged(max_concurrent_streams=50)]
    assert client.available_window(sid) == 65536
    settings = fr.encode_settings(3, [(fr.SETTINGS_INITIAL_WINDOW_SIZE, 100000, 1)])
    events = client.receive_data(settings)
    assert events == [ev.WindowUpdated(stream_id=0)]
    assert client.available_window(sid) == 100000
    client.send_data(sid, b"q" * 65536)
    assert client.available_window(sid) == 100000 - 65536


def test_settings_v2_little_endian_ids_received():
    """SPDY/2 SETTINGS with little-endian ids are understood (MAX_CONCURRENT_STREAMS = 4)."""
    client, _ = raw_client("spdy/2")
    payload = b"\0\0\0\x01\x04\x00\x00\x00\x00\x00\x00\x0c"
    events = client.receive_data(fr.control_frame(2, fr.SETTINGS, 0, payload))
    assert events == [ev.SettingsChanged(max_concurrent_streams=12)]
    assert client.peer_max_concurrent_streams == 12


def test_our_v2_settings_are_little_endian():
    """The server preface on SPDY/2 carries MAX_CONCURRENT_STREAMS with a little-endian id."""
    server = SpdyConnection("spdy/2", client_side=False, max_concurrent_streams=77)
    server.initiate()
    assert server.data_to_send() == (b"\x80\x02\x00\x04\x00\x00\x00\x0c" + b"\0\0\0\x01"
                                     + b"\x04\x00\x00\x00" + b"\0\0\0\x4d")


@pytest.mark.parametrize("version", VERSIONS)
def test_ping_answered_and_parity_respected(version):
    """Client PINGs (odd) are echoed by the server; even ids it did not send are ignored."""
    server, peer = raw_server(version)
    v = WIRE[version]
    assert server.receive_data(fr.encode_ping(v, 7) + fr.encode_ping(v, 8)) == []
    assert peer.read(server.data_to_send()) == [(fr.PING, 0, 0, 7)]
    ping_id = server.ping()
    assert ping_id % 2 == 0
    assert server.receive_data(fr.encode_ping(v, ping_id)) == []
    assert peer.read(server.data_to_send()) == [(fr.PING, 0, 0, ping_id)]  # ours, not echoed


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ping_round_trip(version):
    """Our client's ping() gets exactly one answer, no ping-pong loop."""
    client, server = make_pair(version)
    assert client.ping() % 2 == 1
    cev, sev = pump(client, server)
    assert cev == sev == []


@pytest.mark.parametrize("payload", [b"\0\0\0\x05", b"\0\0\0\x05\0\0\0\x01"])
def test_v2_goaway_of_four_or_eight_bytes(payload):
    """SPDY/2 GOAWAY with 4 (draft) or 8 (node-spdy) bytes both end the session gracefully."""
    server, _ = raw_server("spdy/2")
    events = server.receive_data(fr.control_frame(2, fr.GOAWAY, 0, payload))
    assert events == [ev.ConnectionTerminated(error_code=0 if len(payload) == 4 else 1,
                                              last_stream_id=5, remote=True)]
    assert server.wants_close


def test_v3_goaway_status_and_wants_close_after_streams():
    """SPDY/3 GOAWAY carries a status; wants_close waits for open streams to finish."""
    server, peer = raw_server("spdy/3")
    server.receive_data(peer.syn_stream(1))
    events = server.receive_data(fr.encode_goaway(3, 0, fr.GOAWAY_INTERNAL_ERROR))
    assert events == [ev.ConnectionTerminated(error_code=INTERNAL_ERROR, last_stream_id=0)]
    assert not server.wants_close
    server.send_response(1, 200, [], end_stream=True)
    assert server.wants_close


@pytest.mark.parametrize("version", VERSIONS)
def test_graceful_goaway_refuses_new_streams(version):
    """goaway(): last good stream id; later SYN_STREAMs are refused; close when streams finish."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1) + peer.syn_stream(3))
    server.goaway()
    frames = peer.read(server.data_to_send())
    assert frames == [(fr.GOAWAY, 0, 0, (3, 0))]
    if version == "spdy/2":
        assert server.data_to_send() == b""
    assert server.receive_data(peer.syn_stream(5)) == []
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 5, 3, None)]
    assert not server.wants_close
    server.send_response(1, 200, [], end_stream=True)
    server.send_response(3, 200, [], end_stream=True)
    assert server.wants_close


def test_v2_goaway_we_send_is_four_bytes():
    """Our SPDY/2 GOAWAY is the 4-byte draft form; goaway with an error wants to close at once."""
    server, peer = raw_server("spdy/2")
    server.receive_data(peer.syn_stream(1))
    server.goaway(PROTOCOL_ERROR)
    assert server.data_to_send() == b"\x80\x02\x00\x07\x00\x00\x00\x04\x00\x00\x00\x01"
    assert server.wants_close


@pytest.mark.parametrize("version", VERSIONS)
def test_ignored_and_unknown_control_frames(version):
    """NOOP, CREDENTIAL and unknown types are ignored; huge unknown ones skipped unbuffered."""
    server, peer = raw_server(version, max_header_list_size=4096)
    v = WIRE[version]
    wire = (fr.control_frame(v, fr.NOOP, 0, b"") + fr.control_frame(v, fr.CREDENTIAL, 0, b"c" * 100)
            + fr.control_frame(v, 0xF000, 0, b"\x7f\0\0\x01"))
    assert server.receive_data(wire) == []
    big = fr.control_frame(v, 0x1234, 0, b"u" * 200_000)
    for i in range(0, len(big), 10_000):
        assert server.receive_data(big[i:i + 10_000]) == []
    assert len(server._buf) < 16
    events = server.receive_data(peer.syn_stream(1))
    assert [type(e) for e in events] == [ev.RequestReceived, ev.StreamEnded]


@pytest.mark.parametrize("version", VERSIONS)
def test_oversized_header_frame_fails_before_buffering(version):
    """A SYN_STREAM declaring more than the control-frame bound fails the session at its header."""
    server, _ = raw_server(version, max_header_list_size=4096)
    header = fr.control_frame(WIRE[version], fr.SYN_STREAM, 0, b"")[:5] + b"\x10\x00\x00"
    events = server.receive_data(header)
    assert events[-1].remote is False and server.wants_close


@pytest.mark.parametrize("version", VERSIONS)
def test_zlib_bomb_in_syn_stream_fails_the_session(version):
    """A SYN_STREAM whose small block inflates beyond max_header_list_size: session error."""
    server, peer = raw_server(version, max_header_list_size=65536)
    huge = [(b"x-bomb", b"a" * 60000), (b"x-bomb2", b"b" * 60000)]
    block = peer.comp.compress(peer.request_pairs(extra=huge))
    assert len(block) < 2000
    events = server.receive_data(fr.encode_syn_stream(WIRE[version], 1, block))
    assert events == [ev.ConnectionTerminated(error_code=0x9, last_stream_id=0, remote=False,
                                              reason=events[0].reason)]
    assert "inflates beyond" in events[0].reason


@pytest.mark.parametrize("version", VERSIONS)
def test_outbound_buffer_bound(version):
    """A peer flooding PINGs while not reading: the session fails past max_outbound_buffer."""
    server, _ = raw_server(version, max_outbound_buffer=10_000)
    ping = fr.encode_ping(WIRE[version], 1)
    events = []
    for _ in range(100):
        events += server.receive_data(ping * 10)
    assert [type(e) for e in events] == [ev.ConnectionTerminated]
    assert server.outbound_buffer_size < 10_000 + 200
    assert server.wants_close


@pytest.mark.parametrize("version", VERSIONS)
def test_client_rejects_data_before_reply_and_push(version):
    """Client side: DATA before SYN_REPLY is a stream error; server push is refused."""
    client, peer = raw_client(version)
    sid = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    peer.read(client.data_to_send())
    events = client.receive_data(fr.encode_data(sid, b"early"))
    assert events == [ev.StreamReset(stream_id=sid, error_code=PROTOCOL_ERROR, remote=False)]
    assert peer.read(client.data_to_send()) == [(fr.RST_STREAM, sid, 1, None)]
    assert client.receive_data(peer.syn_stream(2, fin=False, flags_unidirectional=True)) == []
    assert peer.read(client.data_to_send()) == [(fr.RST_STREAM, 2, 3, None)]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_duplicate_reply_and_bad_status(version):
    """A second SYN_REPLY or one without a valid status resets the stream."""
    client, peer = raw_client(version)
    a = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    b = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    peer.read(client.data_to_send())
    events = client.receive_data(peer.syn_reply(a) + peer.syn_reply(a) + peer.syn_reply(b, b"OK"))
    assert [type(e) for e in events] == [ev.ResponseReceived, ev.StreamReset, ev.StreamReset]
    statuses = [f[2] for f in peer.read(client.data_to_send())]
    assert statuses == [1 if version == "spdy/2" else 8, 1]


def test_unsupported_version_syn_stream_is_refused():
    """A SYN_STREAM of another version: RST_STREAM UNSUPPORTED_VERSION; others are ignored."""
    server, peer = raw_server("spdy/3")
    other = RawPeer(2)
    assert server.receive_data(other.syn_stream(1) + fr.encode_ping(2, 1)) == []
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 1, 4, None)]


def test_unidirectional_request_is_refused():
    """A client stream marked unidirectional cannot be answered: RST PROTOCOL_ERROR."""
    server, peer = raw_server("spdy/3")
    assert server.receive_data(peer.syn_stream(1, flags_unidirectional=True)) == []
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 1, 1, None)]


def test_data_of_reset_stream_is_credited_to_the_session():
    """Data still arriving for a stream we reset is dropped and its session credit returned."""
    server, peer = raw_server("spdy/3.1", session_window=65536, initial_window=1 << 20)
    server.receive_data(peer.syn_stream(1, fin=False) + peer.syn_stream(3, fin=False))
    server.reset_stream(1, CANCEL)
    server.data_to_send()
    assert server.receive_data(fr.encode_data(1, b"x" * 40000)) == []
    frames = peer.read(server.data_to_send())
    assert frames == [(fr.WINDOW_UPDATE, 0, 40000, None)]


def test_partial_data_frames_stream_out():
    """A DATA frame arriving in pieces produces DataReceived per piece, FIN after the last."""
    server, peer = raw_server("spdy/2")
    server.receive_data(peer.syn_stream(1, fin=False))
    frame = fr.encode_data(1, b"0123456789", fin=True)
    assert server.receive_data(frame[:11]) == [ev.DataReceived(stream_id=1, data=b"012",
                                                               flow_length=3)]
    assert server.receive_data(frame[11:]) == [
        ev.DataReceived(stream_id=1, data=b"3456789", flow_length=7), ev.StreamEnded(stream_id=1)]


def test_control_frame_trickled_byte_by_byte():
    """A control frame arriving one byte at a time is parsed once, when complete."""
    server, peer = raw_server("spdy/3")
    wire = peer.syn_stream(1, peer.request_pairs(extra=[(b"x-pad", b"p" * 3000)]))
    events = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i:i + 1])
    assert [type(e) for e in events] == [ev.RequestReceived, ev.StreamEnded]
    assert gated(events[0]).headers == [(b"x-pad", b"p" * 3000)]


def test_constructor_validates_arguments():
    """Unknown versions and absurd windows are rejected at construction."""
    with pytest.raises(ValueError):
        SpdyConnection("spdy/4", client_side=False)
    with pytest.raises(ValueError):
        SpdyConnection("spdy/3", client_side=False, initial_window=0)


# -- hypothesis --------------------------------------------------------------------------------


def client_stream(version):
    """A realistic client byte stream: preface, GETs, a POST with body and trailers, PING, RST."""
    client = SpdyConnection(version, client_side=True)
    client.initiate()
    client.send_request(b"GET", b"https", b"h", b"/1", [(b"a", b"1\0x")], end_stream=True)
    post = client.send_request(b"POST", b"https", b"h", b"/2", [(b"content-type", b"x/y")])
    client.send_data(post, b"p" * 40000)
    client.send_data(post, b"q" * 100)
    client.ping()
    gone = client.send_request(b"PUT", b"https", b"h", b"/3", [])
    client.send_data(gone, b"r" * 10)
    client.reset_stream(gone, CANCEL)
    client.send_trailers(post, [(b"x-t", b"v")])
    client.send_request(b"GET", b"https", b"h", b"/4", [(b"cookie", b"c=1")], end_stream=True)
    return client.data_to_send()


STREAMS = {v: client_stream(v) for v in VERSIONS}


def normalise(events):
    """Merge adjacent DataReceived of one stream, since chunking may split a frame's payload."""
    out = []
    for e in events:
        if (isinstance(e, ev.DataReceived) and out and isinstance(out[-1], ev.DataReceived)
                and out[-1].stream_id == e.stream_id):
            last = out.pop()
            e = ev.DataReceived(stream_id=e.stream_id, data=last.data + e.data,
                                flow_length=last.flow_length + e.flow_length)
        out.append(e)
    return out


def feed(conn, data, cuts):
    """Feed ``data`` to ``conn`` split at the sorted positions ``cuts``; return all events."""
    events = []
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += conn.receive_data(data[prev:cut])
        prev = cut
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_random_chunking_gives_the_same_events(version, data):
    """Any split of a valid byte stream yields the same events and the same answers."""
    wire = STREAMS[version]
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40))
    whole = SpdyConnection(version, client_side=False)
    chunked = SpdyConnection(version, client_side=False)
    expected = normalise(whole.receive_data(wire))
    assert normalise(feed(chunked, wire, cuts)) == expected
    assert chunked.data_to_send() == whole.data_to_send()
    assert [type(e) for e in expected].count(ev.RequestReceived) == 4
    assert not any(isinstance(e, ev.ConnectionTerminated) for e in expected)


def check_garbage_outcome(events):
    """Events of garbage input: known types only, at most one local termination, nothing after."""
    kinds = (ev.RequestReceived, ev.ResponseReceived, ev.DataReceived, ev.TrailersReceived,
             ev.StreamEnded, ev.StreamReset, ev.WindowUpdated, ev.ConnectionTerminated,
             ev.SettingsChanged)
    assert all(isinstance(e, kinds) for e in events)
    local = [i for i, e in enumerate(events)
             if isinstance(e, ev.ConnectionTerminated) and not e.remote]
    assert len(local) <= 1
    if local:
        assert local[0] == len(events) - 1
        assert not events[-1].reason.startswith("internal error"), events[-1].reason


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(VERSIONS), client_side=st.booleans(),
       blob=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_random_bytes_never_raise(version, client_side, blob, cuts):
    """Random bytes never raise; the worst outcome is one ConnectionTerminated(remote=False)."""
    conn = SpdyConnection(version, client_side=client_side)
    conn.initiate()
    events = feed(conn, blob, [c for c in cuts if c <= len(blob)])
    check_garbage_outcome(events)
    assert isinstance(conn.data_to_send(), bytes)


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_mutated_valid_streams_never_raise(version, data):
    """A valid stream with a few bytes changed (deep paths) still never raises."""
    wire = bytearray(STREAMS[version])
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    conn = SpdyConnection(version, client_side=False)
    check_garbage_outcome(conn.receive_data(bytes(wire)))


def test_network_layer_attributes_and_factory():
    """protocol / flow_controlled / settable wants_close, and make_server_codec's version rule."""
    from types import SimpleNamespace

    from proxyd.codec.spdy import make_server_codec

    limits = SimpleNamespace(max_concurrent_streams=7, max_header_list_size=1000)
    codec = make_server_codec("spdy/3.1", limits)
    assert (codec.protocol, codec.flow_controlled, codec.max_concurrent_streams) == (
        "spdy/3.1", True, 7)
    assert make_server_codec("spdy/3.1", limits, sniffed=True).protocol == "spdy/3"
    assert make_server_codec("spdy/2", limits, sniffed=True).flow_controlled is False
    assert not codec.wants_close
    codec.wants_close = True
    assert codec.wants_close


def test_connection_has_no_reference_cycles():
    """A finished session is freed by reference counting alone (zlib state released at once)."""
    import gc
    import weakref

    client, server = make_pair("spdy/3.1")
    sid = client.send_request(b"GET", b"http", b"h", b"/", [], end_stream=True)
    pump(client, server)
    server.send_response(sid, 200, [], end_stream=True)
    pump(client, server)
    refs = [weakref.ref(client), weakref.ref(server)]
    gc.disable()
    try:
        del client, server
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


# -- rapid reset ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("trigger", [
    lambda v, sid: fr.encode_rst_stream(v, sid, fr.CANCEL),   # the client resets
    lambda v, sid: fr.encode_data(sid, b"late"),               # DATA after FIN: we reset
], ids=["rst-stream", "data-after-fin"])
def test_resets_the_client_causes_end_the_session(version, trigger):
    """SYN_STREAM (FIN) then a reset, again and again: the client's RST_STREAMs and the stream
    errors it provokes count alike; stream MAX_RESETS + 1 fails the session (GOAWAY, close)."""
    from proxyd.codec.spdy.stream import MAX_RESETS

    server, peer = raw_server(version)
    events, sent = [], 0
    while not of(events, ev.ConnectionTerminated) and sent < 3 * MAX_RESETS:
        sid = 2 * sent + 1
        events += server.receive_data(peer.syn_stream(sid) + trigger(peer.v, sid))
        sent += 1
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.error_code == ENHANCE_YOUR_CALM
    assert terminated.reason == "too many stream resets"
    assert sent == MAX_RESETS + 1 and server.wants_close
    assert [f[0] for f in peer.read(server.data_to_send())][-1] == fr.GOAWAY


@pytest.mark.parametrize("version", VERSIONS)
def test_resets_under_half_of_the_streams_opened_keep_the_session(version):
    """A client cancelling two streams in five, for as long as it likes, keeps its session."""
    from proxyd.codec.spdy.stream import MAX_RESETS

    server, peer = raw_server(version)
    events = []
    for n in range(3 * MAX_RESETS):
        sid = 2 * n + 1
        frames = peer.syn_stream(sid)
        if n % 5 < 2:
            frames += fr.encode_rst_stream(peer.v, sid, fr.CANCEL)
        events += server.receive_data(frames)
        server.send_response(sid, 204, [], end_stream=True)  # ignored for the reset ones
    assert server.resets > MAX_RESETS
    assert not of(events, ev.ConnectionTerminated) and not server.wants_close


# -- header lists charged 32 bytes a field -----------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_syn_stream_of_thousands_of_empty_fields_is_refused(version):
    """A SYN_STREAM of 3000 empty fields inflates to far less than max_header_list_size, but
    charged 32 bytes a field (as HPACK) its list is over it: the stream is refused with
    RST_STREAM PROTOCOL_ERROR, and the session's zlib stream stays in step (the next request
    is read)."""
    server, peer = raw_server(version)
    pairs = peer.request_pairs(extra=[(b"a", b"")] * 3000)
    assert len(fr.pack_header_block(peer.v, pairs)) < 65536 < fr.header_list_size(
        peer.v, fr.pack_header_block(peer.v, pairs))
    assert server.receive_data(peer.syn_stream(1, pairs)) == []
    assert peer.read(server.data_to_send()) == [(fr.RST_STREAM, 1, fr.PROTOCOL_ERROR, None)]
    events = server.receive_data(peer.syn_stream(3))
    assert [type(e) for e in events] == [ev.RequestReceived, ev.StreamEnded]


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_trailers_of_thousands_of_empty_fields_reset_the_stream(version):
    """Trailers are charged the same way, summed over the HEADERS frames of a stream."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=False))
    fields = [(b"a", b"")] * 1500  # 13.5 KB as a block, 49.5 KB charged
    events = server.receive_data(fr.encode_headers(peer.v, 1, peer.comp.compress(fields)))
    assert not of(events, ev.StreamReset)
    events = server.receive_data(fr.encode_headers(peer.v, 1, peer.comp.compress(fields)))
    assert events == [ev.StreamReset(stream_id=1, error_code=PROTOCOL_ERROR, remote=False)]


# -- DATA frames merged within a read -----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_adjacent_data_frames_of_a_stream_become_one_event(version):
    """DATA frames of one stream read together are one DataReceived (data joined, flow_length
    summed), ended by the FIN; another stream's frame in between keeps the runs apart."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=False) + peer.syn_stream(3, fin=False))
    wire = b"".join(fr.encode_data(1, b"%d" % (i % 10)) for i in range(100))
    wire += fr.encode_data(3, b"x") + fr.encode_data(1, b"yz") + fr.encode_data(1, b"", fin=True)
    events = server.receive_data(wire)
    body = b"".join(b"%d" % (i % 10) for i in range(100))
    assert events == [ev.DataReceived(stream_id=1, data=body, flow_length=100),
                      ev.DataReceived(stream_id=3, data=b"x", flow_length=1),
                      ev.DataReceived(stream_id=1, data=b"yz", flow_length=2),
                      ev.StreamEnded(stream_id=1)]


@pytest.mark.parametrize("version", ["spdy/3", "spdy/3.1"])
def test_merged_data_is_acknowledged_exactly(version):
    """Acknowledging a merged event's flow_length reopens the stream window by exactly the
    bytes of all its frames (one WINDOW_UPDATE of 40000 for 40 frames of 1000 bytes)."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=False))
    [data] = server.receive_data(b"".join(fr.encode_data(1, b"k" * 1000) for _ in range(40)))
    assert data.flow_length == len(data.data) == 40000
    server.acknowledge(1, data.flow_length)
    updates = [f for f in peer.read(server.data_to_send()) if f[0] == fr.WINDOW_UPDATE]
    assert (fr.WINDOW_UPDATE, 1, 40000, None) in updates


# -- floods: the HTTP/2 codec's allowances -------------------------------------------------------


def _flood_frames(version, kind):
    """One frame of a flood ``kind`` for a session of ``version`` (stream 1 open for DATA)."""
    v = WIRE[version]
    return {
        "ping": fr.encode_ping(v, 1),
        "settings": fr.encode_settings(v, [(fr.SETTINGS_MAX_CONCURRENT_STREAMS, 100)]),
        "window-update": fr.encode_window_update(v, 1, 1),
        "empty-data": fr.encode_data(1, b""),
    }[kind]


FLOOD_REASONS = {"ping": "SETTINGS/PING flood", "settings": "SETTINGS/PING flood",
                 "window-update": "WINDOW_UPDATE flood", "empty-data": "empty DATA flood"}


@pytest.mark.parametrize("kind", list(FLOOD_REASONS))
@pytest.mark.parametrize("version", VERSIONS)
def test_floods_fail_the_session_as_on_http2(version, kind):
    """A flood of PING, SETTINGS, WINDOW_UPDATE or empty DATA (stream 1 open) read one frame
    at a time fails the session with ENHANCE_YOUR_CALM and the HTTP/2 codec's reason (the
    network layer logs it); on the wire GOAWAY PROTOCOL_ERROR (SPDY/2: a bare GOAWAY)."""
    server, peer = raw_server(version)
    server.receive_data(peer.syn_stream(1, fin=False))
    frame = _flood_frames(version, kind)
    events, sent = [], 0
    while not of(events, ev.ConnectionTerminated) and sent < 5000:
        events += server.receive_data(frame)
        sent += 1
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.error_code == ENHANCE_YOUR_CALM and not terminated.remote
    assert terminated.reason == FLOOD_REASONS[kind]
    assert server.wants_close and sent <= 1011
    goaway = [f for f in peer.read(server.data_to_send()) if f[0] == fr.GOAWAY]
    assert goaway and goaway[-1][3][1] == (fr.GOAWAY_PROTOCOL_ERROR if peer.v == 3
                                          else fr.GOAWAY_OK)


@pytest.mark.parametrize("version", VERSIONS)
def test_control_and_window_update_allowances_grow_with_streams_and_data_sent(version):
    """As on HTTP/2: PINGs and SETTINGS beyond 1000 + 10 per unit of work (a stream opened, a
    DATA frame sent), WINDOW_UPDATEs beyond 100 + 10 per unit, fail the session; 50 streams
    answered with one DATA frame each earn 1000 more of each, exactly."""
    from proxyd.codec import floods

    server, peer = raw_server(version)
    for n in range(50):
        sid = 2 * n + 1
        server.receive_data(peer.syn_stream(sid))
        server.send_response(sid, 200, [])
        server.send_data(sid, b"x", end_stream=True)
    server.data_to_send()
    work = 100
    updates = floods.MAX_WINDOW_UPDATES + floods.MAX_WINDOW_UPDATES_PER_DATA * work
    events = server.receive_data(fr.encode_window_update(peer.v, 1, 1) * updates)
    controls = floods.MAX_CONTROL_FRAMES + floods.MAX_CONTROL_FRAMES_PER_WORK * work
    events += server.receive_data(fr.encode_ping(peer.v, 1) * controls)
    assert not of(events, ev.ConnectionTerminated) and not server.wants_close
    [terminated] = of(server.receive_data(fr.encode_settings(peer.v, [])), ev.ConnectionTerminated)
    assert terminated.reason == "SETTINGS/PING flood"
    server, peer = raw_server(version)
    [terminated] = of(server.receive_data(
        fr.encode_window_update(peer.v, 1, 1) * (floods.MAX_WINDOW_UPDATES + 1)),
        ev.ConnectionTerminated)
    assert terminated.reason == "WINDOW_UPDATE flood"


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_data_bound_counts_empty_frames_in_a_row(version):
    """Empty DATA frames without FIN are counted in a row, as on HTTP/2: any DATA frame with
    bytes (or FIN) starts the count again, so a client may send a few between its data."""
    from proxyd.codec import floods

    server, peer = raw_server(version, initial_window=1 << 20)
    events = server.receive_data(peer.syn_stream(1, fin=False))
    for _ in range(5):
        events += server.receive_data(fr.encode_data(1, b"") * floods.MAX_EMPTY_DATA
                                      + fr.encode_data(1, b"x"))
    assert not of(events, ev.ConnectionTerminated)
    events = server.receive_data(fr.encode_data(1, b"") * (floods.MAX_EMPTY_DATA + 1))
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.reason == "empty DATA flood"


def test_syn_streams_of_another_version_count_as_resets():
    """A SYN_STREAM of the other SPDY version is refused (RST_STREAM UNSUPPORTED_VERSION): a
    stream error the client provokes, counted like the others (MadeYouReset): stream
    MAX_RESETS + 1 fails the session, not thousands."""
    from proxyd.codec.floods import MAX_RESETS

    server, peer = raw_server("spdy/3")
    other = RawPeer(2)
    events, sent = [], 0
    while not of(events, ev.ConnectionTerminated) and sent < 3 * MAX_RESETS:
        events += server.receive_data(other.syn_stream(2 * sent + 1))
        sent += 1
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.reason == "too many stream resets" and sent == MAX_RESETS + 1
