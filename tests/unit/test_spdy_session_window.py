"""The SPDY/3.1 session window on cleartext sessions whose version was sniffed (issue #9, item 12).

Strategy: a sniffed version-3 server session (``make_server_codec(..., sniffed=True)``, as the
network layer builds it on cleartext listeners) serves three responses of 4 KiB, 1 MiB and 100 B,
the case reported, through a relay-style sender (send what ``available_window`` allows, retry on
``WindowUpdated``). On the other side: our own client codec as a SPDY/3.1 peer that announces no
session window beyond the initial 64 KiB (so it sends no session WINDOW_UPDATE until it has
consumed data), or as a SPDY/3 peer (stream WINDOW_UPDATEs only), or hand-built frames. The wire
between them is parsed with :func:`~proxyd.codec.spdy.frames.split_frames` to count the DATA bytes
the server sent before the peer's first session WINDOW_UPDATE.
"""

from types import SimpleNamespace

from proxyd import events as ev
from tests.support import gated
from proxyd.codec.spdy import SpdyConnection, make_server_codec
from proxyd.codec.spdy import frames as fr

LIMITS = SimpleNamespace(max_concurrent_streams=100, max_header_list_size=65536)
BODIES = {b"/4k": b"a" * 4096, b"/1m": b"b" * (1 << 20), b"/100b": b"c" * 100}
SESSION = 65536  # the SPDY/3.1 initial session window


def of(events, kind):
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]


class Exchange:
    """A client codec and a server codec wired together, the server answering like the relay.

    ``pre_update_data`` counts the DATA payload bytes the server put on the wire before the client
    sent its first session WINDOW_UPDATE (stream 0); ``received`` the body bytes per path.
    """

    def __init__(self, server, client):
        self.server = server
        self.client = client
        self.pending = {}
        self.paths = {}
        self.received = {}
        self.pre_update_data = 0
        self.client_session_update_seen = False
        self.server_events = []
        self.client_events = []
        server.initiate()
        client.initiate()

    def request(self, paths):
        """Open one GET stream per path on the client."""
        for path in paths:
            sid = self.client.send_request(b"GET", b"http", b"example.com", path, [],
                                           end_stream=True)
            self.paths[sid] = path
            self.received[path] = 0

    def drain(self):
        """Send what the windows allow on every stream with a body still pending."""
        for sid in list(self.pending):
            window = self.server.available_window(sid)
            body = self.pending[sid]
            if window <= 0:
                continue
            chunk, rest = body[:window], body[window:]
            self.server.send_data(sid, bytes(chunk), end_stream=not rest)
            if rest:
                self.pending[sid] = rest
            else:
                del self.pending[sid]

    def to_client(self):
        """Deliver the server's output; returns the DATA payload bytes it carried."""
        out = self.server.data_to_send()
        if not out:
            return 0
        data = sum(len(f.payload) for f in fr.split_frames(out) if not f.control)
        if not self.client_session_update_seen:
            self.pre_update_data += data
        events = self.client.receive_data(out)
        self.client_events += events
        for e in events:
            if isinstance(e, ev.DataReceived):
                self.received[self.paths[e.stream_id]] += len(e.data)
                self.client.acknowledge(e.stream_id, e.flow_length)
        return data

    def to_server(self):
        """Deliver the client's output and answer what it completes; True if there was any."""
        out = self.client.data_to_send()
        if not out:
            return False
        if any(f.control and f.type == fr.WINDOW_UPDATE and f.stream_id == 0
               for f in fr.split_frames(out)):
            self.client_session_update_seen = True
        events = self.server.receive_data(out)
        self.server_events += events
        for e in events:
            if isinstance(e, ev.RequestReceived):
                self.server.send_response(e.stream_id, 200, [])
                self.pending[e.stream_id] = memoryview(BODIES[gated(e).path])
        if events:
            self.drain()
        return True

    def run(self, rounds=10_000):
        """Move bytes both ways until both sides are quiet."""
        for _ in range(rounds):
            moved = self.to_server()
            moved = self.to_client() or moved
            if not moved:
                return
        raise AssertionError("no quiescence after %d rounds" % rounds)


def sniffed_server():
    """The frontend codec for a cleartext connection whose first frame carried version 3."""
    return make_server_codec("spdy/3", LIMITS, sniffed=True)


def peer_31():
    """A SPDY/3.1 client that announces 64 KiB windows: no session WINDOW_UPDATE at the start."""
    return SpdyConnection("spdy/3.1", client_side=True, session_window=SESSION)


def test_only_the_sniffed_session_applies_the_session_window_before_the_peer_showed_its_version():
    """Before any peer feedback, a sniffed "spdy/3" session sends at most 64 KiB of DATA in all.

    The reported case: /4k, /1m and /100b at once used to put 4096 + 65536 + 100 = 69,732 bytes on
    the wire. ALPN-negotiated sessions keep their semantics: "spdy/3" has no session window (the
    stream windows allow 69,732 bytes), "spdy/3.1" has one.
    """
    totals = {}
    for name, server in [
            ("alpn spdy/3", make_server_codec("spdy/3", LIMITS)),
            ("alpn spdy/3.1", make_server_codec("spdy/3.1", LIMITS)),
            ("sniffed", sniffed_server())]:
        client = SpdyConnection("spdy/3.1" if name == "alpn spdy/3.1" else "spdy/3",
                                client_side=True, session_window=SESSION)
        x = Exchange(server, client)
        x.request([b"/4k", b"/1m", b"/100b"])
        x.to_server()  # preface and the three requests: the server answers all it may
        out = server.data_to_send()
        totals[name] = sum(len(f.payload) for f in fr.split_frames(out) if not f.control)
    assert totals == {"alpn spdy/3": 69732, "alpn spdy/3.1": SESSION, "sniffed": SESSION}


def test_sniffed_session_never_overruns_a_31_peer_and_turns_31_on_its_session_update():
    """A 3.1 peer sniffed as "spdy/3" gets at most 64 KiB before its session WINDOW_UPDATE.

    The session then turns 3.1 and keeps to the session window: the peer (our client codec,
    which counts every overrun it receives) sees none, and all three bodies arrive whole.
    """
    server = sniffed_server()
    x = Exchange(server, peer_31())
    x.request([b"/4k", b"/1m", b"/100b"])
    x.run()
    assert x.client_session_update_seen
    assert x.pre_update_data <= SESSION
    assert server.version == "spdy/3.1" and server.protocol == "spdy/3.1"
    assert x.client.session_window_overruns == 0
    assert x.received == {path: len(body) for path, body in BODIES.items()}
    assert not x.pending and not of(x.client_events, ev.ConnectionTerminated)


def test_after_the_session_update_the_session_window_caps_every_stream():
    """Once the peer's session WINDOW_UPDATE made the session 3.1, only its credit can be sent.

    Hand-built frames: the peer opens three streams, lets the server exhaust 64 KiB, then grants
    10,000 session bytes together with large stream updates; the server may send exactly 10,000
    more, and answering the server's PING changes nothing.
    """
    server = sniffed_server()
    server.initiate()
    server.data_to_send()
    comp = fr.HeaderCompressor(3)
    wire = b""
    for sid in (1, 3, 5):
        block = comp.compress([(b":method", b"GET"), (b":path", b"/"), (b":version", b"HTTP/1.1"),
                               (b":host", b"example.com"), (b":scheme", b"http")])
        wire += fr.encode_syn_stream(3, sid, block, fin=True)
    assert len(of(server.receive_data(wire), ev.RequestReceived)) == 3
    sent = 0
    for sid in (1, 3, 5):
        server.send_response(sid, 200, [])
        window = server.available_window(sid)
        server.send_data(sid, b"x" * window)
        sent += window
    assert sent == SESSION
    pings = [f for f in fr.split_frames(server.data_to_send()) if f.control and f.type == fr.PING]
    updates = b"".join(fr.encode_window_update(3, sid, 1 << 20) for sid in (1, 3, 5))
    events = server.receive_data(updates + fr.encode_window_update(3, 0, 10000))
    assert ev.WindowUpdated(stream_id=0) in events
    assert server.version == "spdy/3.1"
    assert [server.available_window(sid) for sid in (1, 3, 5)] == [10000] * 3
    server.send_data(1, b"y" * 10000)
    assert [server.available_window(sid) for sid in (1, 3, 5)] == [0] * 3
    for ping in pings:  # a late answer to the version probe: the session stays 3.1
        server.receive_data(fr.encode_ping(3, fr.decode_ping(ping.payload)))
    assert [server.available_window(sid) for sid in (1, 3, 5)] == [0] * 3


def test_spdy3_peer_sending_only_stream_updates_gets_all_its_data():
    """A SPDY/3 peer (stream WINDOW_UPDATEs only, never stream 0) is not stalled by 64 KiB.

    It gets at most 64 KiB while its version is unknown, then everything: the server concludes
    SPDY/3 and stays "spdy/3".
    """
    server = sniffed_server()
    x = Exchange(server, SpdyConnection("spdy/3", client_side=True))
    x.request([b"/4k", b"/1m", b"/100b"])
    x.to_server()
    assert x.to_client() <= SESSION
    x.run()
    assert not x.client_session_update_seen
    assert x.received == {path: len(body) for path, body in BODIES.items()}
    assert not x.pending
    assert server.version == "spdy/3"


def test_spdy3_peer_with_large_windows_and_no_window_update_is_not_stalled():
    """A SPDY/3 peer with 1 MiB stream windows sends no WINDOW_UPDATE at all within 64 KiB.

    (So does the Node spdy-peer client with its default ``--window``.) Waiting for a stream
    WINDOW_UPDATE would stall it forever; the server learns its version from the answer to the
    PING it sent behind the 64 KiB, and then sends everything at once.
    """
    server = sniffed_server()
    x = Exchange(server, SpdyConnection("spdy/3", client_side=True, initial_window=1 << 20))
    x.request([b"/4k", b"/1m", b"/100b"])
    x.to_server()
    assert x.to_client() <= SESSION
    x.run()
    assert ev.WindowUpdated(stream_id=0) in x.server_events
    assert not x.client_session_update_seen
    assert x.received == {path: len(body) for path, body in BODIES.items()}
    assert server.version == "spdy/3"


def test_the_answer_to_the_version_probe_emits_window_updated_for_the_session():
    """When the probe's answer lifts the session window, the codec emits WindowUpdated(0).

    The server queues one PING behind the DATA that exhausted the window (even id: ours); a PING
    answer without any session WINDOW_UPDATE means SPDY/3, so the stream windows alone count
    from then on. A second exhaustion sends no second probe.
    """
    server = sniffed_server()
    server.initiate()
    server.data_to_send()
    comp = fr.HeaderCompressor(3)
    block = comp.compress([(b":method", b"GET"), (b":path", b"/"), (b":version", b"HTTP/1.1"),
                           (b":host", b"example.com"), (b":scheme", b"http")])
    wire = fr.encode_syn_stream(3, 1, block, fin=True)
    wire += fr.encode_settings(3, [(fr.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)])
    server.receive_data(wire)
    server.send_response(1, 200, [])
    assert server.available_window(1) == SESSION
    server.send_data(1, b"z" * SESSION)
    assert server.available_window(1) == 0
    frames = fr.split_frames(server.data_to_send())
    assert [f.type for f in frames if f.control] == [fr.SYN_REPLY, fr.PING]
    assert frames[-1].control and frames[-1].type == fr.PING  # behind the DATA
    probe = fr.decode_ping(frames[-1].payload)
    assert probe % 2 == 0
    events = server.receive_data(fr.encode_ping(3, probe))
    assert events == [ev.WindowUpdated(stream_id=0)]
    assert server.available_window(1) == (1 << 20) - SESSION
    server.send_data(1, b"z" * server.available_window(1))
    assert [f.type for f in fr.split_frames(server.data_to_send()) if f.control] == []
    assert server.version == "spdy/3"
