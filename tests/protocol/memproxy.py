"""In-memory harness of the protocol tests: a proxyd Listener on a MemoryReactorClock, in-memory
clients (an h2 client from the h2 library, raw HTTP/1.1 bytes) and in-memory backends.

Nothing touches a socket: the client connection is a FrontendProtocol on a StringTransport; the
backend connection attempt shows up in ``reactor.tcpClients`` (HostnameEndpoint with an IP
literal connects without name resolution) and is completed by building the protocol from the
recorded factory and attaching another StringTransport. Time only moves with ``reactor.advance``.
The reactor has proxyd's end-of-turn queue (:func:`proxyd.net.twistedshim.at_turn_end`): what
the proxy queued there runs before a peer looks at what was written (or at a close) and after
timers ran, as the daemon's reactor runs it before its next poll.
StringTransport never calls ``connectionLost`` itself; the helpers do it when asked to, the way
the reactor would once a closed connection's buffer drained.

An exception the proxy raises reaches the test, unless the test asks the reactor to treat it as
the daemon's reactor does (``proxy.reactor.log_failures()``): an exception from a timed call or
an end-of-turn call is recorded (the daemon logs it) and the others still run; one from a
protocol's ``dataReceived`` is recorded and the connection is lost with it as the reason.

StringTransport closes whatever the proxy asks; a real transport does not always:
:attr:`BackendConn.closes` and :attr:`BackendConn.half_closes` say whether Twisted's would.
"""

import contextlib
import functools

import h2.config
import h2.connection
import h11
from hyperframe.frame import Frame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.config import parse_config
from proxyd.net.factory import Listener, make_balancer
from proxyd.websocket import accept_for

CLIENT_IP = "203.0.113.5"


def raising_once(monkeypatch, owner, name, when=lambda *args, **kw: True):
    """Make ``owner.name`` raise RuntimeError on its first call for which ``when(*args)`` holds
    (as a bug would); return the list of calls that raised."""
    original = getattr(owner, name)
    raised = []

    def broken(*args, **kw):
        if not raised and when(*args, **kw):
            raised.append(args)
            raise RuntimeError(f"test: {name} fails")
        return original(*args, **kw)
    monkeypatch.setattr(owner, name, broken)
    return raised


@contextlib.contextmanager
def logged():
    """The lines proxyd logs while the block runs (its own namespaces, ``proxyd...``), formatted
    as the daemon writes them: a list that fills as they come."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines = []

    def observe(event):
        if (event.get("log_namespace") or "").startswith("proxyd"):
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def answer_every_request(proxy, response, rounds=4):
    """Answer every complete request on every backend connection with ``response``, a few
    rounds (the HTTP/1.1 codec hands out pipelined requests one at a time); return
    ``{connection index: the exact bytes it received}`` (h11 finds where requests end)."""
    from tests.support import parse_h11_requests

    raw, answered = {}, {}
    for _ in range(rounds):
        proxy.advance(0)
        for index in range(proxy.connects):
            conn = proxy.backend(index)
            data = conn.received()
            if not data:
                continue
            raw[index] = raw.get(index, b"") + data
            ended = sum(type(e) is h11.EndOfMessage for e in parse_h11_requests(raw[index]))
            for _ in range(ended - answered.get(index, 0)):
                conn.respond(response)
            answered[index] = ended
        proxy.advance(0)
    return raw


def count_writes(transport):
    """Count the proxy's writes to ``transport`` from now on: a one-item list, kept up to date
    (each write is a ``send`` on a real socket)."""
    n = [0]
    write = transport.write

    def counting(data):
        n[0] += 1
        write(data)
    transport.write = counting
    return n


# -- WebSocket tunnels ---------------------------------------------------------------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def switched(key):
    """The backend's 101 to a handshake with ``key``."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")


def key_of(handshake):
    """The Sec-WebSocket-Key of the handshake bytes the backend received."""
    for line in handshake.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"sec-websocket-key":
            return value.strip()
    raise AssertionError(f"no key in {handshake!r}")


def h1_tunnel(proxy):
    """An HTTP/1.1 client whose WebSocket tunnel is open: (client, backend)."""
    client = proxy.h1_client()
    client.write(HANDSHAKE)
    backend = proxy.backend()
    assert backend.received().startswith(b"GET /chat HTTP/1.1\r\n")
    backend.respond(switched(KEY))
    assert client.read().startswith(b"HTTP/1.1 101 ")
    proxy.advance(0)
    return client, backend


def h2_tunnel(proxy, path=b"/chat"):
    """An RFC 8441 client whose tunnel is open: (client, stream id, backend)."""
    import h2.events

    client = proxy.h2_client(raw=True)
    sid = client.request(b"CONNECT", path, headers=[(b":protocol", b"websocket"),
                                                    (b"sec-websocket-version", b"13")],
                         end_stream=False)
    backend = proxy.backend()
    handshake = backend.received()
    assert handshake.startswith(b"GET /chat HTTP/1.1\r\n")
    backend.respond(switched(key_of(handshake)))
    events = client.pump()
    response = [e for e in events if isinstance(e, h2.events.ResponseReceived)][0]
    assert dict(response.headers)[b":status"] == b"200"
    return client, sid, backend


class TurnReactor(MemoryReactorClock):
    """A MemoryReactorClock with the end-of-turn queue of proxyd's EPollReactor."""

    def __init__(self):
        super().__init__()
        self.turn_end = []
        self.in_turn = 0  # > 0 inside ``one_turn``: the turn ends when it exits
        self.failures = None  # a list once log_failures() was called

    def log_failures(self):
        """From now on, treat exceptions as the daemon's reactor does (module docstring): they
        go to ``failures`` (returned) instead of the test."""
        self.failures = []
        return self.failures

    def run(self, fn, *args):
        """Call ``fn(*args)``; an exception is recorded in ``failures`` (and True returned)
        when the reactor logs failures, else raised."""
        if self.failures is None:
            fn(*args)
            return False
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - what the daemon's reactor does: log it
            self.failures.append(exc)
            return True
        return False

    def deliver(self, protocol, transport, data):
        """Bytes read for ``protocol``; True when it raised and the connection was lost (the
        reactor's answer to an exception in ``dataReceived``)."""
        if self.failures is None:
            protocol.dataReceived(data)
            return False
        try:
            protocol.dataReceived(data)
        except Exception as exc:  # noqa: BLE001 - the reactor drops the connection with it
            self.failures.append(exc)
            transport.disconnecting = transport.disconnected = True
            self.run(protocol.connectionLost, Failure(exc))
            return True
        return False

    @contextlib.contextmanager
    def one_turn(self):
        """Deliver several events (reads, closes) in one turn, as from one poll."""
        self.in_turn += 1
        try:
            yield
        finally:
            self.in_turn -= 1
        self.end_turn()

    def end_turn(self):
        """Run what was queued for the end of the turn (and what that queues), unless inside
        ``one_turn``. Each event the harness delivers is a turn of its own otherwise."""
        if self.in_turn:
            return
        while self.turn_end:
            calls, self.turn_end = self.turn_end, []
            for call in calls:
                self.run(call)

    def advance(self, amount):
        """Move the clock, run the due timers, then end the turn."""
        if self.failures is None:
            super().advance(amount)
        else:  # Clock.advance, each call run as the daemon's reactor runs it
            self.rightNow += amount
            self._sortCalls()
            while self.calls and self.calls[0].getTime() <= self.seconds():
                call = self.calls.pop(0)
                call.called = 1
                self.run(functools.partial(call.func, *call.args, **call.kw))
                self._sortCalls()
        self.end_turn()
BACKEND = "127.0.0.1:8081"


def base_config(**sections):
    """A config dict: one cleartext listener (h2 + http/1.1), one backend, no read rate limit."""
    data = {
        "listen": [{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": ["h2", "http/1.1"]}],
        "backends": [{"address": BACKEND}],
        "rate_limits": {"read": {"rate": 0}},
        "timeouts": {"frontend_idle": "60s", "frontend_header": "15s", "backend_read": "10s",
                     "graceful_shutdown": "30s"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


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


class ClientConn:
    """The proxy side of one client connection: a FrontendProtocol on a StringTransport."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.protocol = proxy.listener.buildProtocol(IPv4Address("TCP", CLIENT_IP, 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", CLIENT_IP, 40000),
                                         lenient=True)
        self.protocol.makeConnection(self.transport)
        self.lost = False

    def write(self, data):
        """Bytes from the client to the proxy."""
        if self.proxy.reactor.deliver(self.protocol, self.transport, data):
            self.lost = True
        self.proxy.reactor.end_turn()

    def read(self):
        """Bytes the proxy wrote to the client since the last read."""
        self.proxy.reactor.end_turn()
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closing(self):
        """The proxy asked to close (or abort) the client connection."""
        self.proxy.reactor.end_turn()
        return self.transport.disconnecting

    def finish_close(self):
        """Deliver connectionLost once the proxy closed the connection (as the reactor would)."""
        self.proxy.reactor.end_turn()
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.proxy.reactor.end_turn()

    def vanish(self):
        """The client is gone without a word, its streams still open (it reset the TCP
        connection, or closed it): connectionLost, as the reactor delivers it."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionLost()))
            self.proxy.reactor.end_turn()


class H2Client(ClientConn):
    """A ClientConn driven by a real h2 client connection (``raw``: h2 sends any header block
    unchecked, so a test can send what a hostile client would)."""

    def __init__(self, proxy, client_settings=None, raw=False):
        super().__init__(proxy)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=not raw,
                                           normalize_outbound_headers=not raw)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        if client_settings:
            self.h2.update_settings(client_settings)
        self.flush()
        self.pump()

    def flush(self):
        """Send what the h2 client queued."""
        data = self.h2.data_to_send()
        if data:
            self.write(data)

    def pump(self):
        """Deliver the proxy's output to the h2 client; send its answers back; return h2 events."""
        events = self.h2.receive_data(self.read())
        self.flush()
        return events

    def request(self, method=b"GET", path=b"/", headers=(), body=None, end_stream=True,
                authority=b"example.com"):
        """Open a stream; with ``body``, send it too (ending the stream when ``end_stream``)."""
        sid = self.h2.get_next_available_stream_id()
        block = [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
                 (b":path", path), *headers]
        self.h2.send_headers(sid, block, end_stream=end_stream and body is None)
        if body is not None:
            self.send_body(sid, body, end_stream=end_stream)
        self.flush()
        return sid

    def send_body(self, sid, body, end_stream=False):
        """Send ``body`` on ``sid`` in max-size frames."""
        size = self.h2.max_outbound_frame_size
        for start in range(0, max(len(body), 1), size):
            last = start + size >= len(body)
            self.h2.send_data(sid, body[start:start + size], end_stream=end_stream and last)
        self.flush()


class SpdyClient(ClientConn):
    """A ClientConn speaking SPDY through a hand-building RawPeer (tests.support)."""

    def __init__(self, proxy, wire_version):
        from tests.support import RawPeer

        super().__init__(proxy)
        self.peer = RawPeer(wire_version)
        self.frames = []

    def send_syn(self, sid, pairs, fin=True):
        """SYN_STREAM with exactly ``pairs``."""
        self.write(self.peer.syn_stream(sid, pairs, fin=fin))

    def pump(self):
        """Frames the proxy sent since the last call (RawPeer.read tuples)."""
        new = self.peer.read(self.read())
        self.frames += new
        return new

    def resets(self):
        """``{stream id: status}`` of the RST_STREAMs received so far."""
        from proxyd.codec.spdy import frames as fr

        return {f[1]: f[2] for f in self.frames if f[0] == fr.RST_STREAM}

    def data(self, sid, payload=b"", fin=False):
        """A DATA frame on ``sid``."""
        from proxyd.codec.spdy import frames as fr

        self.write(fr.encode_data(sid, payload, fin))

    def reset(self, sid, status=None):
        """RST_STREAM on ``sid`` (CANCEL unless ``status``)."""
        from proxyd.codec.spdy import frames as fr

        self.write(fr.encode_rst_stream(self.peer.v, sid, fr.CANCEL if status is None else status))

    def answered(self, sid):
        """True once ``sid`` got a whole response (a frame with FIN) or a RST_STREAM."""
        from proxyd.codec.spdy import frames as fr

        self.pump()
        return any(f[1] == sid and (f[0] == fr.RST_STREAM or (f[0] != fr.GOAWAY and f[2] & 1))
                   for f in self.frames)

    def body(self, sid):
        """Response body bytes received on ``sid`` so far."""
        self.pump()
        return b"".join(f[3] for f in self.frames if f[0] == "DATA" and f[1] == sid)


class BackendConn:
    """The proxy side of one backend connection, completed by hand from reactor.tcpClients."""

    def __init__(self, proxy, index):
        host, port, factory, _timeout, _bind = proxy.reactor.tcpClients[index]
        self.proxy = proxy
        self.address = (host, port)
        self.factory = factory
        self.connector = proxy.reactor.connectors[index]
        self.transport = StringTransport(lenient=True)
        write_closed = self._write_closed = []  # (a closure over self: a reference cycle)
        self.transport.loseWriteConnection = lambda: write_closed.append(True)
        self.protocol = None
        self.lost = False
        self.parser = h11.Connection(h11.SERVER)
        self.tls = False  # the transport model of ``closes``: True for Twisted's TLS layer
        self.pushing_back = False

    def connect(self):
        """Complete the connection attempt."""
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.proxy.reactor.end_turn()
        return self

    def refuse(self):
        """Fail the connection attempt as a refused connect would."""
        self.factory.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))
        self.proxy.reactor.end_turn()

    def count_writes(self):
        """Count the proxy's writes to this backend from now on (see :func:`count_writes`)."""
        return count_writes(self.transport)

    def received(self):
        """Raw bytes the proxy wrote to the backend since the last call."""
        self.proxy.reactor.end_turn()
        data = self.transport.value()
        self.transport.clear()
        return data

    def requests(self):
        """Parse what the proxy sent with an h11 server; return the h11 events."""
        data = self.received()
        if data:  # (b"" would mean EOF to h11, and next_event would report it for ever)
            self.parser.receive_data(data)
        events = []
        while True:
            event = self.parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            events.append(event)
            if type(event) is h11.EndOfMessage:
                # The next request on this keep-alive connection starts a fresh parser.
                leftover, _closed = self.parser.trailing_data
                self.parser = h11.Connection(h11.SERVER)
                if leftover:  # (b"" would mean EOF to h11)
                    self.parser.receive_data(bytes(leftover))
                return events

    def respond(self, data):
        """Bytes from the backend to the proxy."""
        if self.proxy.reactor.deliver(self.protocol, self.transport, data):
            self.lost = True
        self.proxy.reactor.end_turn()

    @property
    def paused(self):
        """The proxy paused reading from this backend (IPushProducer state of the transport)."""
        return self.transport.producerState == "paused"

    def push_back(self, full=True):
        """The transport's buffer toward the backend filled up (``full``: the backend does not
        read) or drained: the transport pauses or resumes the proxy's producer, as Twisted's do."""
        self.pushing_back = full
        producer = self.transport.producer
        if producer is not None:
            if full:
                producer.pauseProducing()
            else:
                producer.resumeProducing()
        self.proxy.reactor.end_turn()

    @property
    def write_closed(self):
        """The proxy asked to shut down its side (``loseWriteConnection``)."""
        return bool(self._write_closed)

    def _would_finish(self):
        """Whether a real transport would carry out a close (or half-close) asked for now once
        its buffer drained. Twisted's TCP transport, draining, resumes a producer it paused
        instead (and the close never happens); its TLS layer does not close while any producer
        is registered ("make sure you unregister your producer when it's finished, or the
        connection will never close": ``FileDescriptor.loseConnection``)."""
        return self.transport.producer is None or not (self.tls or self.pushing_back)

    @property
    def closes(self):
        """The proxy aborted this connection, or closed it in a way the real transport (TCP, or
        TLS with ``tls``) carries out."""
        self.proxy.reactor.end_turn()
        transport = self.transport
        return transport.disconnected or (transport.disconnecting and self._would_finish())

    @property
    def half_closes(self):
        """The proxy shut down its side (``loseWriteConnection``) in a way a real TCP transport
        carries out."""
        self.proxy.reactor.end_turn()
        return self.write_closed and self._would_finish()

    def close(self, clean=True):
        """The backend closed the connection."""
        if not self.lost:
            self.lost = True
            reason = ConnectionDone() if clean else ConnectionLost()
            self.protocol.connectionLost(Failure(reason))
            self.proxy.reactor.end_turn()

    def finish_close(self):
        """Deliver connectionLost once the proxy closed or aborted this connection."""
        self.proxy.reactor.end_turn()
        if self.transport.disconnecting:
            self.close()


class Proxy:
    """A Listener built from a parsed config on a MemoryReactorClock."""

    def __init__(self, tmp_path, data):
        self.reactor = TurnReactor()
        self.config = parse_config(data, str(tmp_path))
        self.balancer = make_balancer(self.reactor, self.config)
        self.listener = Listener(self.reactor, self.config.listen[0], self.config, self.balancer, None)
        self._backends = {}

    def h2_client(self, client_settings=None, raw=False):
        """A new h2 client connection (prior knowledge, cleartext)."""
        return H2Client(self, client_settings, raw)

    def spdy_client(self, wire_version):
        """A new SPDY client connection (version 2 or 3, sniffed on cleartext) built by hand."""
        return SpdyClient(self, wire_version)

    def spdy_session(self, version):
        """A SPDY client connection whose session runs ``version`` ("spdy/3.1", "spdy/3" or
        "spdy/2"): a 3.1 client shows its version with a session WINDOW_UPDATE first."""
        from proxyd.codec.spdy import frames as fr

        client = SpdyClient(self, 2 if version == "spdy/2" else 3)
        if version == "spdy/3.1":
            client.write(fr.encode_window_update(3, 0, 1 << 20))
            assert client.protocol.codec.version == "spdy/3.1"
        return client

    def h1_client(self):
        """A new raw-bytes client connection."""
        return ClientConn(self)

    @property
    def connects(self):
        """How many backend connection attempts were made."""
        return len(self.reactor.tcpClients)

    def backend(self, index=-1, connect=True):
        """The BackendConn of attempt ``index`` (connected on first use unless ``connect`` is False)."""
        index = index % self.connects
        conn = self._backends.get(index)
        if conn is None:
            conn = self._backends[index] = BackendConn(self, index)
            if connect:
                conn.connect()
        return conn

    def advance(self, seconds=0):
        """Move the clock (running due timers)."""
        self.reactor.advance(seconds)


class ServiceProxy(Proxy):
    """A whole ProxyService (listeners, shared balancer) on a MemoryReactorClock, started."""

    def __init__(self, tmp_path, data):
        from proxyd.service import ProxyService

        self.reactor = TurnReactor()
        self.config = parse_config(data, str(tmp_path))
        self.service = ProxyService(self.config, reactor=self.reactor)
        self.service.startService()
        self.listener = self.service.listeners[0]
        self.balancer = self.service.balancer
        self._backends = {}
