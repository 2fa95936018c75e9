"""Protocol tests of bridge mode's multiplexed HTTP/2 backends (proxyd.net.backend_h2), in memory.

The proxy is a Listener on a MemoryReactorClock built from ``parse_config`` (tests/protocol/
memproxy.py), in ``mode: bridge`` with one backend ``protocol: h2, tls: false`` (h2c by prior
knowledge). Clients are h2 (the h2 library) or raw HTTP/1.1 bytes; each backend connection attempt
recorded in ``reactor.tcpClients`` is completed by hand and served by :class:`H2Peer`, an h2
server-side ``H2Connection`` on the connection's StringTransport. Time moves only with
``proxy.advance``. Frames an h2 server cannot produce itself (its GOAWAY while streams continue)
are written raw with hyperframe.
"""

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, WindowUpdateFrame
import pytest

from proxyd.codec import INTERNAL_ERROR
from proxyd.codec.h2client import STREAM_WINDOW
from proxyd.net import backend_h2
from proxyd.net.backend import CLOSE_TIMEOUT

from memproxy import BACKEND, CLIENT_IP, Proxy, base_config

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MCS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
IWS = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
ECP = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


def bridge_proxy(tmp_path, max_connections=100, **sections):
    """A bridge-mode Proxy with one h2c backend at BACKEND."""
    data = base_config(mode="bridge",
                       backends=[{"address": BACKEND, "protocol": "h2", "tls": False,
                                  "max_connections": max_connections}],
                       **sections)
    return Proxy(tmp_path, data)


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


class H2Peer:
    """An h2 server answering one in-memory backend connection of the proxy.

    ``requests`` maps stream id -> request header dict, ``bodies`` stream id -> bytes received,
    ``ended`` the streams whose request ended, ``resets`` stream id -> RST_STREAM code received,
    ``frames`` every frame the proxy wrote (raw, parsed with hyperframe).
    """

    def __init__(self, proxy, index=-1, settings=None, auto_ack=True):
        self.proxy = proxy
        self.index = index % proxy.connects
        self.conn = proxy.backend(self.index)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.auto_ack = auto_ack
        self.requests = {}
        self.bodies = {}
        self.ended = set()
        self.resets = {}
        self.pings = 0
        self.frames = []
        self._saw_preface = False
        self.pump()

    @property
    def transport(self):
        return self.conn.transport

    def _take(self):
        data = self.conn.received()
        if data and not self._saw_preface:
            assert data.startswith(PREFACE), data[:30]
            self._saw_preface = True
            self.frames += parse_frames(data[len(PREFACE):])
        elif data:
            self.frames += parse_frames(data)
        return data

    def pump(self):
        """Exchange bytes with the proxy until both sides are quiet; return the h2 events."""
        events = []
        for _ in range(100):
            out = self.h2.data_to_send()
            if out and not self.conn.lost and not self.transport.disconnecting:
                self.conn.respond(out)
            data = self._take()
            if not data and not out:
                break
            if data:
                new = self.h2.receive_data(data)
                self._record(new)
                events += new
        return events

    def _record(self, events):
        for e in events:
            if isinstance(e, h2.events.RequestReceived):
                self.requests[e.stream_id] = dict(e.headers)
                self.bodies[e.stream_id] = b""
                if e.stream_ended is not None:
                    self.ended.add(e.stream_id)
            elif isinstance(e, h2.events.DataReceived):
                self.bodies[e.stream_id] += e.data
                if self.auto_ack and e.flow_controlled_length:
                    self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                self.ended.add(e.stream_id)
            elif isinstance(e, h2.events.StreamReset):
                self.resets[e.stream_id] = e.error_code
            elif isinstance(e, h2.events.PingReceived):
                self.pings += 1

    def path_of(self, sid):
        return self.requests[sid][b":path"]

    def sid_for(self, path):
        [sid] = [s for s, h in self.requests.items() if h[b":path"] == path]
        return sid

    def respond(self, sid, body=b"", status=b"200", headers=(), end=True):
        """Answer ``sid`` (head, body, end) and pump."""
        self.h2.send_headers(sid, [(b":status", status), *headers],
                             end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        return self.pump()

    def inject(self, raw):
        """Raw bytes from the backend the h2 server object does not know about."""
        self.conn.respond(raw)
        return self.pump()

    def window_updates(self, sid=None):
        """WINDOW_UPDATE frames the proxy sent (for ``sid`` when given)."""
        return [f for f in self.frames if isinstance(f, WindowUpdateFrame)
                and (sid is None or f.stream_id == sid)]


class Client:
    """An h2 client of the proxy (memproxy.H2Client) with responses accumulated per stream
    (``auto_ack``: it reads as it goes, acknowledging the DATA it received)."""

    def __init__(self, proxy, client_settings=None, auto_ack=False):
        self.c = proxy.h2_client(client_settings)
        self.auto_ack = auto_ack
        self.streams = {}
        self.events = []

    def get(self, path, method=b"GET", headers=(), body=None, end_stream=True):
        sid = self.c.request(method, path, headers=headers, body=body, end_stream=end_stream)
        self.streams[sid] = {"status": None, "headers": None, "body": b"", "ended": False,
                             "reset": None}
        return sid

    def pump(self):
        events = self.c.pump()
        self.events += events
        for e in events:
            st = self.streams.get(getattr(e, "stream_id", None))
            if st is None:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                st["headers"] = dict(e.headers)
                st["status"] = int(st["headers"][b":status"])
            elif isinstance(e, h2.events.DataReceived):
                st["body"] += e.data
                if self.auto_ack and e.flow_controlled_length:
                    self.c.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                st["ended"] = True
            elif isinstance(e, h2.events.StreamReset):
                st["reset"] = e.error_code
        if self.auto_ack:
            self.c.flush()
        return events

    def result(self, sid):
        self.pump()
        return self.streams[sid]


def warm_bridge(proxy, **peer_options):
    """An h2 client, the backend's H2Peer (``peer_options``: its settings, auto_ack) and the one
    backend connection, after a first request made the connection and was answered."""
    client = Client(proxy)
    warm = client.get(b"/warm")
    peer = H2Peer(proxy, 0, **peer_options)
    peer.respond(peer.sid_for(b"/warm"))
    assert client.result(warm)["ended"]
    [backend] = proxy.balancer.backends
    [h2conn] = backend.connections
    return client, peer, h2conn


def test_streams_of_several_clients_share_one_backend_connection(tmp_path):
    """Six streams from three h2 clients go out on ONE backend connection as six HTTP/2 streams,
    with the request translated (:authority, x-forwarded-*, via) and each response routed back to
    its own client with Via: 2 proxyd."""
    proxy = bridge_proxy(tmp_path)
    clients = [Client(proxy) for _ in range(3)]
    first = clients[0].get(b"/c0/0", headers=[(b"user-agent", b"t"), (b"cookie", b"a=1")])
    assert proxy.connects == 1
    peer = H2Peer(proxy)
    sids = {(0, first): b"/c0/0"}
    for n, client in enumerate(clients):
        for i in range(2):
            if (n, i) == (0, 0):
                continue
            path = b"/c%d/%d" % (n, i)
            sids[(n, client.get(path))] = path
    peer.pump()
    assert proxy.connects == 1, "all streams must share the first connection"
    assert sorted(peer.requests) == [1, 3, 5, 7, 9, 11]
    head = peer.requests[peer.sid_for(b"/c0/0")]
    assert head[b":method"] == b"GET" and head[b":scheme"] == b"http"
    assert head[b":authority"] == b"example.com"
    assert head[b"x-forwarded-for"] == CLIENT_IP.encode()
    assert head[b"x-forwarded-proto"] == b"http"
    assert head[b"via"] == b"2 proxyd"
    assert head[b"user-agent"] == b"t" and head[b"cookie"] == b"a=1"
    assert b"host" not in head and b"connection" not in head
    for sid in list(peer.requests):
        peer.respond(sid, body=b"body of " + peer.path_of(sid), headers=[(b"x-app", b"1")])
    for (n, sid), path in sids.items():
        st = clients[n].result(sid)
        assert st["status"] == 200 and st["ended"], st
        assert st["body"] == b"body of " + path
        assert st["headers"][b"via"] == b"2 proxyd"
        assert st["headers"][b"x-app"] == b"1"
    assert proxy.connects == 1


def test_http11_client_chunked_upload_becomes_h2_data(tmp_path):
    """An HTTP/1.1 client's chunked POST reaches the h2 backend as HEADERS (Host -> :authority, no
    transfer-encoding) plus DATA; the response comes back as HTTP/1.1 with Via: 2 proxyd."""
    proxy = bridge_proxy(tmp_path)
    client = proxy.h1_client()
    client.write(b"POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: keep-alive\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    peer = H2Peer(proxy)
    [sid] = peer.requests
    head = peer.requests[sid]
    assert head[b":authority"] == b"app.example" and head[b":path"] == b"/up"
    assert b"transfer-encoding" not in head and b"host" not in head and b"connection" not in head
    assert head[b"via"] == b"1.1 proxyd"
    assert peer.bodies[sid] == b"hello world" and sid in peer.ended
    peer.respond(sid, body=b"stored", headers=[(b"content-length", b"6")])
    reply = client.read()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nvia: 2 proxyd\r\n" in reply.lower()
    assert reply.endswith(b"\r\n\r\nstored")


def test_second_connection_only_when_full_and_never_beyond_max_connections(tmp_path):
    """With SETTINGS_MAX_CONCURRENT_STREAMS 2 and max_connections 2: a second connection opens only
    when the first carries 2 streams; once both are full no third connection is attempted, the
    extra requests wait and are served on the first connection as its streams end."""
    proxy = bridge_proxy(tmp_path, max_connections=2)
    client = Client(proxy)
    r1 = client.get(b"/r1")
    a = H2Peer(proxy, 0, settings={MCS: 2})
    r2 = client.get(b"/r2")
    a.pump()
    assert proxy.connects == 1, "the first connection still had room for /r2"
    assert sorted(a.path_of(s) for s in a.requests) == [b"/r1", b"/r2"]
    r3 = client.get(b"/r3")
    assert proxy.connects == 2, "the first connection is full: a second one is opened"
    b = H2Peer(proxy, 1, settings={MCS: 2})
    r4 = client.get(b"/r4")
    b.pump()
    assert sorted(b.path_of(s) for s in b.requests) == [b"/r3", b"/r4"]
    r5 = client.get(b"/r5")
    r6 = client.get(b"/r6")
    a.pump(), b.pump()
    assert proxy.connects == 2, "max_connections 2: no third connection"
    assert len(a.requests) == 2 and len(b.requests) == 2
    [backend] = proxy.balancer.backends
    assert len(backend.waiting) == 2
    # /r1 ends on connection A: /r5 takes its place there; then /r2 ends: /r6.
    a.respond(a.sid_for(b"/r1"), body=b"1")
    assert sorted(a.path_of(s) for s in a.requests) == [b"/r1", b"/r2", b"/r5"]
    a.respond(a.sid_for(b"/r2"), body=b"2")
    assert sorted(a.path_of(s) for s in a.requests) == [b"/r1", b"/r2", b"/r5", b"/r6"]
    assert not backend.waiting
    for path in (b"/r5", b"/r6"):
        a.respond(a.sid_for(path), body=path)
    for path in (b"/r3", b"/r4"):
        b.respond(b.sid_for(path), body=path)
    expected = {r1: b"1", r2: b"2", r3: b"/r3", r4: b"/r4", r5: b"/r5", r6: b"/r6"}
    for sid, body in expected.items():
        st = client.result(sid)
        assert (st["status"], st["body"], st["ended"]) == (200, body, True), (sid, st)
    assert proxy.connects == 2


def test_goaway_streams_above_last_stream_id_are_retried_on_a_new_connection(tmp_path):
    """GOAWAY(last_stream_id=1) after stream 1 completed: streams 3 and 5 were not processed, so
    they are retried on a new connection and succeed; the old connection is closed."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    s1 = client.get(b"/one")
    a = H2Peer(proxy, 0)
    s3, s5 = client.get(b"/three"), client.get(b"/five")
    a.pump()
    assert sorted(a.requests) == [1, 3, 5]
    a.respond(a.sid_for(b"/one"), body=b"first")
    assert client.result(s1)["body"] == b"first"
    a.inject(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    assert a.transport.disconnecting, "no streams left on the GOAWAY connection: it is closed"
    a.conn.finish_close()
    assert proxy.connects == 2
    b = H2Peer(proxy, 1)
    assert sorted(b.path_of(s) for s in b.requests) == [b"/five", b"/three"]
    for sid in list(b.requests):
        b.respond(sid, body=b"retried " + b.path_of(sid))
    assert client.result(s3)["body"] == b"retried /three" and client.result(s3)["status"] == 200
    assert client.result(s5)["body"] == b"retried /five" and client.result(s5)["status"] == 200
    assert not [e for e in client.events if isinstance(e, h2.events.StreamReset)]


def test_goaway_streams_at_or_below_last_stream_id_complete_on_the_old_connection(tmp_path):
    """Graceful GOAWAY(last_stream_id=1) while stream 1's response is in progress: stream 1 must
    complete on the old connection (RFC 9113 §6.8: it is being processed) while stream 3 is retried
    elsewhere; the old connection closes once stream 1 is done."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    s1 = client.get(b"/one")
    a = H2Peer(proxy, 0)
    s3 = client.get(b"/three")
    a.pump()
    a.respond(1, body=b"first half, ", end=False)
    a.inject(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    # The h2 server object still has stream 1 open; finish it after the GOAWAY.
    a.h2.send_data(1, b"second half", end_stream=True)
    a.pump()
    st = client.result(s1)
    assert st["reset"] is None, f"stream 1 was reset (code {st['reset']}) instead of completing"
    assert (st["status"], st["body"], st["ended"]) == (200, b"first half, second half", True)
    assert a.transport.disconnecting
    a.conn.finish_close()
    b = H2Peer(proxy, -1)
    [sid] = b.requests
    assert b.path_of(sid) == b"/three"
    b.respond(sid, body=b"3")
    assert client.result(s3)["body"] == b"3"


def test_two_step_graceful_shutdown(tmp_path):
    """nghttp2-style graceful shutdown: GOAWAY(2^31-1) first (no stream is lost, the connection
    takes no new streams: a new request opens another connection), then GOAWAY(last=1): stream 3
    is retried, stream 1 completes on the old connection, which then closes."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    s1 = client.get(b"/one")
    a = H2Peer(proxy, 0)
    s3 = client.get(b"/three")
    a.pump()
    a.inject(GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize())
    assert proxy.connects == 1 and not a.transport.disconnecting, "nothing retried yet"
    s5 = client.get(b"/five")
    assert proxy.connects == 2, "a retiring connection takes no new stream"
    b = H2Peer(proxy, 1)
    a.inject(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    b.pump()
    assert sorted(b.path_of(s) for s in b.requests) == [b"/five", b"/three"]
    a.h2.send_headers(1, [(b":status", b"200")])
    a.h2.send_data(1, b"old connection", end_stream=True)
    a.pump()
    assert a.transport.disconnecting
    for sid in list(b.requests):
        b.respond(sid, body=b.path_of(sid))
    assert client.result(s1)["body"] == b"old connection"
    assert client.result(s3)["body"] == b"/three"
    assert client.result(s5)["body"] == b"/five"
    assert not [e for e in client.events if isinstance(e, h2.events.StreamReset)]


def test_refused_stream_is_retried(tmp_path):
    """RST_STREAM REFUSED_STREAM (not processed) makes the proxy send the request again; the
    client sees only the successful retry."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/refuse-once")
    a = H2Peer(proxy, 0)
    [first] = a.requests
    a.h2.reset_stream(first, h2.errors.ErrorCodes.REFUSED_STREAM)
    a.pump()
    peers = [a] if proxy.connects == 1 else [a, H2Peer(proxy, 1)]
    retries = [(p, s) for p in peers for s in p.requests
               if p.path_of(s) == b"/refuse-once" and (p, s) != (a, first)]
    assert len(retries) == 1, "the refused request is sent exactly once more"
    peer, retry = retries[0]
    peer.respond(retry, body=b"second try")
    st = client.result(sid)
    assert (st["status"], st["body"], st["reset"]) == (200, b"second try", None)


def test_refused_twice_is_502(tmp_path):
    """Retries are bounded: a request refused again after its retry gets a 502 (sent twice in all)."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/always-refused")
    peers, refused = {}, set()
    for _ in range(5):
        for index in range(proxy.connects):
            if index not in peers:
                peers[index] = H2Peer(proxy, index)
            peer = peers[index]
            for s in list(peer.requests):
                if (index, s) not in refused:
                    refused.add((index, s))
                    peer.h2.reset_stream(s, h2.errors.ErrorCodes.REFUSED_STREAM)
                    peer.pump()
    st = client.result(sid)
    assert st["status"] == 502, st
    assert len(refused) == 2, "one try and one retry"


def test_connection_lost_fails_unstarted_and_resets_started_streams(tmp_path):
    """The backend connection dies with two streams in flight: the one without a response head
    gets a 502, the one whose response started is reset INTERNAL_ERROR, the client connection
    stays up, and a new request afterwards is served on a new connection."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    waiting = client.get(b"/no-answer-yet")
    a = H2Peer(proxy, 0)
    started = client.get(b"/half-done")
    a.pump()
    a.respond(a.sid_for(b"/half-done"), body=b"partial", end=False)
    assert client.result(started)["status"] == 200
    a.conn.close(clean=False)
    assert client.result(waiting)["status"] == 502
    assert client.result(waiting)["ended"]
    assert client.result(started)["reset"] == INTERNAL_ERROR
    assert not client.c.closing
    fresh = client.get(b"/after")
    assert proxy.connects == 2
    b = H2Peer(proxy, 1)
    b.respond(b.sid_for(b"/after"), body=b"fine")
    st = client.result(fresh)
    assert (st["status"], st["body"]) == (200, b"fine")


def test_connection_lost_does_not_retry_streams_that_may_have_been_processed(tmp_path):
    """Issue 5: 'connection loss with streams in flight -> those streams fail with 502 (headers not
    yet sent)'. Unlike GOAWAY/REFUSED_STREAM nothing says the backend did not process them, so a
    request that went out as the 2nd stream of a connection must get a 502, not be replayed on a
    new connection."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    first = client.get(b"/first")
    a = H2Peer(proxy, 0)
    second = client.get(b"/second")
    a.pump()
    assert sorted(a.path_of(s) for s in a.requests) == [b"/first", b"/second"]
    a.respond(a.sid_for(b"/first"), body=b"1")
    a.conn.close(clean=False)
    st = client.result(second)
    assert proxy.connects == 1, "the request was replayed on a new backend connection"
    assert st["status"] == 502, st
    assert client.result(first)["body"] == b"1"


def test_unanswered_ping_closes_the_connection(tmp_path):
    """A PING goes out every PING_INTERVAL; when it is still unanswered one interval later the
    connection is closed, and its in-flight stream gets a 502."""
    proxy = bridge_proxy(tmp_path, timeouts={"backend_read": "300s"})
    client = Client(proxy)
    sid = client.get(b"/slow")
    a = H2Peer(proxy, 0)
    pings_before = len([f for f in a.frames if isinstance(f, PingFrame)])
    proxy.advance(backend_h2.PING_INTERVAL)
    new = a._take()
    pings = [f for f in parse_frames(new) if isinstance(f, PingFrame) and "ACK" not in f.flags]
    assert len(pings) == 1 and pings_before == 0
    assert not a.transport.disconnecting
    proxy.advance(backend_h2.PING_INTERVAL)  # not answered (the peer is not pumped)
    assert a.transport.disconnecting, "unanswered PING must close the connection"
    a.conn.finish_close()
    st = client.result(sid)
    assert st["status"] == 502


def test_answered_pings_keep_the_connection(tmp_path):
    """A peer that answers PINGs keeps its connection across several intervals."""
    proxy = bridge_proxy(tmp_path, timeouts={"backend_read": "300s"})
    client = Client(proxy)
    sid = client.get(b"/slow")
    a = H2Peer(proxy, 0)
    for _ in range(4):
        proxy.advance(backend_h2.PING_INTERVAL)
        a.pump()  # the h2 server ACKs PINGs automatically
        assert not a.transport.disconnecting
    assert a.pings == 4
    a.respond(a.sid_for(b"/slow"), body=b"eventually")
    assert client.result(sid)["body"] == b"eventually"


def test_client_shut_window_stops_backend_acknowledgement(tmp_path):
    """Backpressure: a client whose stream window is 0 takes nothing, so the proxy does not
    acknowledge the backend's DATA (no WINDOW_UPDATE for that stream; the backend's window stays
    shut); when the client opens its window the data flows and the proxy acknowledges."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy, client_settings={IWS: 0})
    sid = client.get(b"/big")
    a = H2Peer(proxy, 0)
    [bsid] = a.requests
    a.respond(bsid, end=False)
    chunk = b"z" * 16384
    for _ in range(STREAM_WINDOW // len(chunk)):
        a.h2.send_data(bsid, chunk)
    a.pump()
    assert a.h2.local_flow_control_window(bsid) == 0
    st = client.result(sid)
    assert st["status"] == 200 and st["body"] == b""
    assert a.window_updates(bsid) == [], "DATA acknowledged although the client took nothing"
    a.pump()
    assert a.h2.local_flow_control_window(bsid) == 0
    # The client opens its windows.
    client.c.h2.increment_flow_control_window(2 * STREAM_WINDOW, stream_id=sid)
    client.c.h2.increment_flow_control_window(2 * STREAM_WINDOW)
    client.c.flush()
    st = client.result(sid)
    assert len(st["body"]) == STREAM_WINDOW
    a.pump()
    acked = sum(f.window_increment for f in a.window_updates(bsid))
    assert acked == STREAM_WINDOW
    assert a.h2.local_flow_control_window(bsid) == STREAM_WINDOW
    a.h2.send_data(bsid, b"end", end_stream=True)
    a.pump()
    assert client.result(sid)["ended"]


def test_upload_waits_for_backend_window_before_acknowledging_client(tmp_path):
    """Request direction: with the backend's stream window at 16 KiB the proxy sends only what
    fits and reopens the client's window only for bytes the backend took (never for what waits in
    the proxy); as the backend acknowledges, the rest flows and the client's window reopens."""
    proxy = bridge_proxy(tmp_path)
    client, a, _h2conn = warm_bridge(proxy, settings={IWS: 16384}, auto_ack=False)
    body = bytes(range(256)) * 256  # 65536 bytes; the client's stream window is 65535
    body = body[:65535]
    sid = client.get(b"/upload", method=b"POST", body=body)
    a.pump()
    bsid = a.sid_for(b"/upload")
    assert len(a.bodies[bsid]) == 16384
    client.pump()
    # The client's window was reopened for exactly what the backend took, not for the queue.
    assert client.c.h2.local_flow_control_window(sid) <= 16384
    for _ in range(10):
        got = len(a.bodies[bsid])
        if got == len(body):
            break
        a.h2.acknowledge_received_data(16384, bsid)
        a.pump()
        assert len(a.bodies[bsid]) > got
        client.pump()
        taken = len(a.bodies[bsid])
        window = client.c.h2.local_flow_control_window(sid)
        assert window <= taken, f"client acknowledged {window} bytes, backend took {taken}"
    assert a.bodies[bsid] == body and bsid in a.ended
    # Every byte the backend took was acknowledged to the client's connection window (the
    # client ended its stream, so only the connection window matters; its update is batched).
    assert client.c.protocol.codec.acknowledged_unsent == len(body)
    a.respond(bsid, body=b"ok")
    assert client.result(sid)["body"] == b"ok"


def test_upload_resumes_after_backend_transport_drains(tmp_path):
    """Request direction, transport backpressure: while the backend connection's transport is
    paused (its send buffer is full: pauseProducing) the client's upload is not acknowledged; when
    the transport drains (resumeProducing) the client must get its window back, even though the
    bytes already went to the transport and nothing waits in the channel's own queue."""
    proxy = bridge_proxy(tmp_path)
    client, a, h2conn = warm_bridge(proxy, settings={IWS: 1 << 20})
    h2conn.pauseProducing()  # what the reactor does when the socket buffer is full
    body = b"u" * 65535  # the whole client stream window
    sid = client.get(b"/upload", method=b"POST", body=body, end_stream=False)
    a.pump()
    assert len(a.bodies[a.sid_for(b"/upload")]) == len(body)
    client.pump()
    assert client.c.h2.local_flow_control_window(sid) == 0
    h2conn.resumeProducing()  # the transport drained
    client.pump()
    assert client.c.h2.local_flow_control_window(sid) > 0, (
        "upload stalled: the client's window was never reopened after the backend transport "
        "resumed")


def test_queued_request_body_is_not_acknowledged_before_the_backend_takes_it(tmp_path):
    """DESIGN §5 'never acknowledge client data until the backend accepted it', for a request that
    waited for a stream slot: its body buffered meanwhile is sent when it gets a stream, but only
    16 KiB fit the backend's window, so the client's window must reopen by no more than that."""
    proxy = bridge_proxy(tmp_path, max_connections=1)
    client = Client(proxy)
    first = client.get(b"/first")
    a = H2Peer(proxy, 0, settings={MCS: 1, IWS: 16384}, auto_ack=False)
    body = b"q" * 65535
    sid = client.get(b"/upload", method=b"POST", body=body, end_stream=False)
    a.pump()
    assert list(a.requests) == [1], "the upload waits: one stream allowed"
    client.pump()
    assert client.c.h2.local_flow_control_window(sid) == 0
    a.respond(1, body=b"done")  # the slot frees: the upload gets stream 3
    assert client.result(first)["body"] == b"done"
    bsid = a.sid_for(b"/upload")
    taken = len(a.bodies[bsid])
    assert taken == 16384
    client.pump()
    window = client.c.h2.local_flow_control_window(sid)
    assert window <= taken, (f"client may send {window} more bytes while the backend took "
                             f"{taken} of the {len(body)} buffered")


def test_rfc8441_bytes_held_before_the_200_stay_unacknowledged_when_the_transport_drains(
        tmp_path):
    """DESIGN §5 and §5's bound: DATA an RFC 8441 client sends before the backend's 200 waits in
    the proxy for the tunnel, so its window must stay shut until the backend took the bytes. The
    shared backend connection's transport draining (another stream's upload filled it) took
    none of them; reopening the client's window there lets it send another window's worth into
    the same unbounded hold, again at every drain. After the 200 the bytes flow and the window
    reopens."""
    proxy = bridge_proxy(tmp_path)
    client, peer, h2conn = warm_bridge(proxy, settings={ECP: 1, IWS: 1 << 20}, auto_ack=False)
    raw = proxy.h2_client(raw=True)
    sid = raw.request(b"CONNECT", b"/chat", headers=[(b":protocol", b"websocket"),
                                                     (b"sec-websocket-version", b"13")],
                      end_stream=False)
    body = b"w" * 65535  # the client's whole stream window
    raw.send_body(sid, body)
    peer.pump()
    bsid = peer.sid_for(b"/chat")
    assert peer.bodies[bsid] == b""
    raw.pump()
    assert raw.h2.local_flow_control_window(sid) == 0
    h2conn.pauseProducing()
    h2conn.resumeProducing()  # the transport drained: none of the held bytes was written
    raw.pump()
    assert raw.h2.local_flow_control_window(sid) == 0, (
        "the client's window reopened for bytes the proxy still holds")
    peer.h2.send_headers(bsid, [(b":status", b"200")])
    peer.pump()
    events = raw.pump()
    assert [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert peer.bodies[bsid] == body
    raw.pump()
    assert raw.h2.local_flow_control_window(sid) == 65535


def test_reset_of_a_paused_stream_returns_its_bytes_to_the_connection_window(tmp_path):
    """Issue item 8: the backend resets a stream whose DATA the proxy held (the client's window
    was shut); those bytes count as consumed, so resets never shrink the connection window for
    good. Twenty resets of a full stream window each (5 MiB, more than the 4 MiB connection
    window): the backend can still send a full stream window afterwards (before the fix the
    window drained by every reset until the connection stalled)."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy, client_settings={IWS: 0})
    a = None
    chunk = b"x" * 16384
    for round_ in range(20):
        sid = client.get(b"/held-%d" % round_)
        if a is None:
            a = H2Peer(proxy, 0)
        a.pump()
        bsid = max(a.requests)
        a.respond(bsid, end=False)
        for _ in range(STREAM_WINDOW // len(chunk)):
            a.h2.send_data(bsid, chunk)
        a.pump()
        assert client.result(sid)["body"] == b""  # held: the client's window is shut
        a.h2.reset_stream(bsid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        a.pump()
        assert client.result(sid)["reset"] is not None
    assert a.h2.outbound_flow_control_window >= STREAM_WINDOW


def test_response_before_the_whole_request_body_cancels_our_half_of_the_stream(tmp_path):
    """RFC 9113 §8.1: the backend may answer before the request body ended. The client gets the
    response; the backend stream's request half is cancelled (RST_STREAM CANCEL) so the stream
    does not stay open in the backend connection's codec for the connection's lifetime."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/early", method=b"POST", body=b"part", end_stream=False)
    a = H2Peer(proxy, 0)
    bsid = a.sid_for(b"/early")
    a.respond(bsid, body=b"answered early")
    result = client.result(sid)
    assert result["status"] == 200 and result["body"] == b"answered early" and result["ended"]
    a.pump()
    client.pump()
    [backend] = proxy.balancer.backends
    [h2conn] = backend.connections
    assert h2conn.codec.open_streams == 0
    assert a.resets.get(bsid) == 8


def test_local_connection_error_does_not_replay_a_post(tmp_path):
    """The HTTP/2 backend breaks the connection's framing (DATA on stream 0) while a bodiless
    POST is in flight: proxyd's codec ends the connection, and since only a GOAWAY the backend
    sent says what it did not process (RFC 9113 §6.8), the POST may have run: it is answered 502
    and never sent again on a new connection."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/charge", method=b"POST")
    peer = H2Peer(proxy, 0)
    assert [peer.path_of(s) for s in peer.requests] == [b"/charge"]
    peer.inject(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0: connection error
    peer.conn.finish_close()
    client.pump()
    assert proxy.connects == 1, "the POST was replayed on a new backend connection"
    assert client.result(sid)["status"] == 502


@pytest.mark.parametrize("method,status,headers", [
    (b"HEAD", b"200", [(b"content-length", b"9")]),
    (b"GET", b"204", []),
    (b"GET", b"304", []),
])
def test_body_of_a_bodiless_response_is_not_relayed(tmp_path, method, status, headers):
    """RFC 9110 §6.4.1: a response to HEAD, a 204 and a 304 have no content. An HTTP/2 backend
    that sends DATA anyway does not get it relayed to the HTTP/2 client (the h2 library, as a
    client, raises InvalidBodyLengthError, a connection error, on such DATA): the client has
    the head and then a reset of that stream, never the bytes."""
    from hyperframe.frame import DataFrame, RstStreamFrame

    from memproxy import parse_frames

    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/nobody", method=method)
    peer = H2Peer(proxy)
    peer.h2.config.validate_outbound_headers = False
    [bsid] = peer.requests
    peer.respond(bsid, status=status, headers=headers, body=b"BODYBYTES")
    frames = [f for f in parse_frames(client.c.read()) if f.stream_id == sid]
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame)) == b""
    assert any(isinstance(f, RstStreamFrame) for f in frames)


def test_body_of_a_head_response_is_not_relayed_to_spdy(tmp_path):
    """The same for a SPDY/3 client: no DATA on the HEAD response, the stream is reset."""
    proxy = bridge_proxy(tmp_path, listen=[{"endpoint": "tcp:8080:interface=127.0.0.1",
                                            "protocols": ["spdy/3.1", "spdy/3", "http/1.1"]}])
    client = proxy.spdy_client(3)
    client.send_syn(1, [(b":method", b"HEAD")] + client.peer.request_pairs()[1:])
    peer = H2Peer(proxy)
    peer.h2.config.validate_outbound_headers = False
    [bsid] = peer.requests
    peer.respond(bsid, headers=[(b"content-length", b"9")], body=b"BODYBYTES")
    frames = client.pump()
    assert b"".join(f[3] for f in frames if f[0] == "DATA" and f[1] == 1) == b""
    assert client.resets() == {1: 6}  # RST_STREAM INTERNAL_ERROR after the head


def _hog_both_slots(tmp_path):
    """A bridge proxy whose one backend connection (SETTINGS_MAX_CONCURRENT_STREAMS 2) carries two
    streams of a client with zero windows: ``(proxy, hog, (first, second), peer)``."""
    proxy = bridge_proxy(tmp_path, max_connections=1)
    hog = Client(proxy, client_settings={IWS: 0})
    first = hog.get(b"/big1")
    peer = H2Peer(proxy, 0, settings={MCS: 2})
    second = hog.get(b"/big2")
    peer.pump()
    return proxy, hog, (first, second), peer


def _stall(hog, peer):
    """The backend answers both hog streams (a head and 1000 bytes the client cannot take)."""
    for path in (b"/big1", b"/big2"):
        peer.h2.send_headers(peer.sid_for(path), [(b":status", b"200")])
        peer.h2.send_data(peer.sid_for(path), b"z" * 1000)
    peer.pump()
    hog.pump()


def test_stalled_client_gives_its_backend_stream_to_a_waiting_request(tmp_path):
    """Bridge mode: a client with zero windows holding every stream the backend allows (one
    connection, SETTINGS_MAX_CONCURRENT_STREAMS 2) gives the longest-stalled one up after 5 s
    once a request waits: its client stream and backend stream are reset, and the waiting
    request takes the freed slot."""
    proxy, hog, (first, second), a = _hog_both_slots(tmp_path)
    _stall(hog, a)
    other = Client(proxy)
    waiting = other.get(b"/small")
    a.pump()
    assert len(a.requests) == 2 and proxy.connects == 1  # it waits
    proxy.advance(4.9)
    assert hog.result(first)["reset"] is None
    proxy.advance(0.2)
    assert hog.result(first)["reset"] == 8 and hog.result(second)["reset"] is None
    a.pump()
    assert a.resets.get(a.sid_for(b"/big1")) is not None
    a.respond(a.sid_for(b"/small"), body=b"ok")
    st = other.result(waiting)
    assert (st["status"], st["body"], st["ended"]) == (200, b"ok", True)


def test_bridge_request_waiting_before_the_stall_began_gets_the_slot(tmp_path):
    """Bridge mode: a request queued while the hog's streams still awaited their heads (nobody
    stalled yet) gets a slot once the longest one stalled for 5 s (the relief looked only when
    a request queued, so it waited for its read timeout)."""
    proxy, hog, (first, second), a = _hog_both_slots(tmp_path)
    other = Client(proxy)
    waiting = other.get(b"/small")
    a.pump()
    assert len(a.requests) == 2 and proxy.connects == 1  # it waits; nobody stalled yet
    _stall(hog, a)
    proxy.advance(5.1)
    assert hog.result(first)["reset"] == 8 and hog.result(second)["reset"] is None
    a.pump()
    a.respond(a.sid_for(b"/small"), body=b"ok")
    st = other.result(waiting)
    assert (st["status"], st["body"], st["ended"]) == (200, b"ok", True)


def test_a_whole_response_in_one_read_frees_the_slot_while_the_client_holds_it_back(tmp_path):
    """A response whose head, body and end come in one backend read is one input for the relay.
    Its client has no window (SETTINGS_INITIAL_WINDOW_SIZE 0): the body waits in the relay,
    but the backend stream is over, so the backend's only slot (MAX_CONCURRENT_STREAMS 1) goes
    to the next request at once and the body's bytes are credited back to the connection
    window; the held body reaches the client once it opens its window."""
    proxy = bridge_proxy(tmp_path, max_connections=1)
    slow = Client(proxy, client_settings={IWS: 0})
    held = slow.get(b"/held")
    a = H2Peer(proxy, 0, settings={MCS: 1})
    [bsid] = a.requests
    other = Client(proxy)
    waiting = other.get(b"/next")
    a.pump()
    assert len(a.requests) == 1  # the only slot is taken
    body = b"w" * 5000
    a.respond(bsid, body=body)
    st = slow.result(held)
    assert st["status"] == 200 and st["body"] == b"" and not st["ended"]
    a.pump()
    assert sorted(a.path_of(s) for s in a.requests) == [b"/held", b"/next"]
    assert proxy.connects == 1
    [backend] = proxy.balancer.backends
    [h2conn] = backend.connections
    assert h2conn.codec.acknowledged_unsent == len(body)  # credited, the update batched
    a.respond(a.sid_for(b"/next"), body=b"ok")
    st = other.result(waiting)
    assert (st["status"], st["body"], st["ended"]) == (200, b"ok", True)
    slow.c.h2.increment_flow_control_window(len(body), stream_id=held)
    slow.c.h2.increment_flow_control_window(len(body))
    slow.c.flush()
    st = slow.result(held)
    assert (st["body"], st["ended"]) == (body, True)


def test_a_whole_response_with_a_refused_head_leaves_the_connection_usable(tmp_path):
    """A whole response (one read) whose head the gate refuses (a field value with a NUL):
    the client gets 502, the backend stream it already ended is not reset, and the next
    request goes over the same backend connection."""
    proxy = bridge_proxy(tmp_path)
    client = Client(proxy)
    sid = client.get(b"/bad")
    a = H2Peer(proxy, 0)
    a.h2.config.validate_outbound_headers = False
    a.h2.config.normalize_outbound_headers = False
    [bsid] = a.requests
    a.respond(bsid, body=b"x", headers=[(b"x-bad", b"a\x00b")])
    assert client.result(sid)["status"] == 502
    a.pump()
    assert bsid not in a.resets
    again = client.get(b"/good")
    a.pump()
    a.respond(a.sid_for(b"/good"), body=b"ok")
    st = client.result(again)
    assert (st["status"], st["body"]) == (200, b"ok")
    assert proxy.connects == 1


def test_an_idle_tls_connection_that_proxyd_closes_really_closes(tmp_path):
    """A connection left idle for IDLE_TIMEOUT gets GOAWAY and is closed for real. proxyd asked
    for the close while still registered as the transport's producer, which Twisted's TLS layer
    (client mode's backends) waits for before it sends close_notify: the connection stayed open
    until the backend closed it itself. (The same for HTTP/1.1 backends:
    tests/protocol/test_backend_pool_closing.py, tests/protocol/test_tunnel_faults.py.)"""
    proxy = bridge_proxy(tmp_path)
    _client, peer, _h2conn = warm_bridge(proxy)
    peer.conn.tls = True  # the transport model of BackendConn.closes
    for _ in range(int(backend_h2.IDLE_TIMEOUT // backend_h2.PING_INTERVAL) + 2):
        proxy.advance(backend_h2.PING_INTERVAL)
        peer.pump()  # PINGs answered: only idleness closes it
        if peer.transport.disconnecting:
            break
    assert peer.transport.disconnecting
    assert peer.conn.closes


def test_a_closing_connection_that_never_drains_is_aborted(tmp_path):
    """An HTTP/2 backend connection proxyd closes (here the idle close) waits for what it wrote
    to go out; a backend that reads nothing more never lets that happen, so the connection is
    aborted after ``CLOSE_TIMEOUT`` (as an HTTP/1.1 one is) instead of staying open for ever."""
    proxy = bridge_proxy(tmp_path)
    _client, peer, _h2conn = warm_bridge(proxy)
    for _ in range(int(backend_h2.IDLE_TIMEOUT // backend_h2.PING_INTERVAL) + 2):
        proxy.advance(backend_h2.PING_INTERVAL)
        peer.pump()  # PINGs answered: only idleness closes it
        if peer.transport.disconnecting:
            break
    assert peer.transport.disconnecting and not peer.transport.disconnected
    peer.conn.push_back()  # the backend reads nothing more: the close cannot complete
    proxy.advance(CLOSE_TIMEOUT + 1)
    assert peer.transport.disconnected  # aborted
