"""Every stream ends (DESIGN, relay docstring): faults on a stream's path, and what the
connection around it does next.

Strategy: a function on the path is made to raise (monkeypatch, as a bug would) or a client
sends what the gate refuses; each test then checks what the rule promises: the stream is
answered or reset, its backend connection is closed or back in the pool (a pool slot is never
held by nothing), the client connection goes on serving requests and still has its idle timeout
(nothing waits forever). Where the daemon's reactor would catch the exception (a read, a timed
call), the test's reactor does the same (``reactor.log_failures()`` in :mod:`memproxy`).
"""

import h2.events
import pytest

from proxyd import bridge
from proxyd.codec import INTERNAL_ERROR, PROTOCOL_ERROR
from proxyd.codec.spdy import frames as fr
from proxyd.pool import PoolState
from proxyd.stats import Stats

from memproxy import BACKEND, raising_once

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
IDLE = 60  # base_config's frontend_idle
LISTEN = [{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": ["h2", "http/1.1", "spdy/3"]}]


def _h2_answered(events, sid):
    """True when ``sid`` got a whole response or a reset."""
    return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
               and e.stream_id == sid for e in events)


class _Exchange:
    """One request through one frontend kind, answered by the backend with RESPONSE."""

    def __init__(self, proxy, kind):
        self.proxy = proxy
        self.kind = kind
        if kind == "h2":
            self.client = proxy.h2_client()
        elif kind == "spdy/3":
            self.client = proxy.spdy_client(3)
        else:
            self.client = proxy.h1_client()
        self.sid = 1

    def request(self):
        """Send the request; return the backend connection that got it."""
        if self.kind == "h2":
            self.sid = self.client.request()
        elif self.kind == "spdy/3":
            self.client.send_syn(self.sid, self.client.peer.request_pairs())
            self.sid += 2
        else:
            self.client.write(REQUEST)
        backend = self.proxy.backend()
        assert backend.requests()
        return backend

    def answered(self):
        """True when the client got an answer (a response or a reset) to its last request."""
        if self.kind == "h2":
            return _h2_answered(self.client.pump(), self.sid)
        if self.kind == "spdy/3":
            sid = self.sid - 2
            return any(f[1] == sid and (f[0] == fr.RST_STREAM or f[2] & 1)
                       for f in self.client.pump())
        return self.client.read().startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("kind", ["h2", "spdy/3"])
def test_a_connection_whose_requests_the_gate_refused_still_times_out(make_proxy, kind):
    """An HTTP/2 or SPDY client whose only request the gate refuses (a reset, no relay) and who
    then stays silent is closed after ``frontend_idle``, as after any answered request. The
    request head stopped the header timeout and only a finished stream restarted the idle one,
    so such a connection stayed open for ever (one bad request per connection was enough to
    hold sockets without a timeout)."""
    proxy = make_proxy(listen=LISTEN)
    if kind == "h2":
        client = proxy.h2_client(raw=True)
        sid = client.request(headers=[(b"X-Upper", b"1")])
        assert [e.error_code for e in client.pump()
                if isinstance(e, h2.events.StreamReset) and e.stream_id == sid] == [PROTOCOL_ERROR]
    else:
        client = proxy.spdy_client(3)
        client.send_syn(1, client.peer.request_pairs(extra=[(b"transfer-encoding", b"chunked")]))
        client.pump()
        assert 1 in client.resets()
    assert proxy.connects == 0
    proxy.advance(IDLE + 1)
    assert client.closing


@pytest.mark.parametrize("kind", ["http/1.1", "h2", "spdy/3"])
def test_failing_metrics_of_a_finished_stream_leave_the_idle_timeout_running(make_proxy,
                                                                             monkeypatch, kind):
    """The metrics (or the access log line) of a finished stream raising does not change what
    happens to the connection: the stream was answered, and the idle connection is still
    closed after ``frontend_idle``. The failure used to cut ``stream_done`` short before it
    restarted the idle timeout: the connection then stayed open for ever."""
    proxy = make_proxy(listen=LISTEN)
    raised = raising_once(monkeypatch, Stats, "request_finished")
    exchange = _Exchange(proxy, kind)
    exchange.request().respond(RESPONSE)
    assert exchange.answered()
    assert raised
    assert not exchange.client.protocol.streams
    proxy.advance(IDLE + 1)
    assert exchange.client.closing


def test_a_pipelined_request_is_served_after_failing_metrics(proxy, monkeypatch):
    """HTTP/1.1: the metrics raising for the first of two pipelined requests does not leave the
    second one unread in the codec (the look for a next request was skipped with the rest of
    ``stream_done``: the client waited for ever)."""
    raising_once(monkeypatch, Stats, "request_finished")
    client = proxy.h1_client()
    client.write(REQUEST + REQUEST.replace(b"GET / ", b"GET /second "))
    backend = proxy.backend()
    backend.requests()
    backend.respond(RESPONSE)
    proxy.advance(0)
    assert [e.target for e in backend.requests()[:1]] == [b"/second"]
    backend.respond(RESPONSE)
    assert client.read().count(b"HTTP/1.1 200 OK") == 2


@pytest.mark.parametrize("kind", ["http/1.1", "h2"])
def test_a_backend_connection_whose_release_fails_is_closed_not_leaked(make_proxy, monkeypatch,
                                                                       kind):
    """When handing a finished exchange's connection back to the pool raises, the connection is
    closed (its pool slot freed once it is lost), not left open and counted against
    ``max_connections`` while nothing owns it. With ``max_connections: 1`` the next request
    used to wait for that slot for ever (until its read timeout answered 504)."""
    proxy = make_proxy(listen=LISTEN, backends=[{"address": BACKEND, "max_connections": 1}])
    raising_once(monkeypatch, PoolState, "release")
    exchange = _Exchange(proxy, kind)
    backend = exchange.request()
    backend.respond(RESPONSE)
    assert exchange.answered()
    assert not exchange.client.protocol.streams
    assert backend.transport.disconnecting
    backend.finish_close()
    second = _Exchange(proxy, kind) if kind == "http/1.1" else exchange
    fresh = second.request()
    assert proxy.connects == 2
    fresh.respond(RESPONSE)
    assert second.answered()


def _translation_failing_for(monkeypatch, path):
    """Make the request translation (bridge.backend_request) raise for requests to ``path``."""
    return raising_once(monkeypatch, bridge, "backend_request",
                         lambda request, **kw: request.path == path)


def test_an_exception_setting_up_an_h2_request_resets_that_stream_only(proxy, monkeypatch):
    """A bug raising while a request is set up (after the gate, before its relay exists: the
    route, the header translation) resets that stream with INTERNAL_ERROR; the connection and
    its other streams go on. The exception used to escape the read, and the reactor dropped
    the whole connection with every stream in flight on it."""
    failures = proxy.reactor.log_failures()
    raised = _translation_failing_for(monkeypatch, b"/bad")
    client = proxy.h2_client()
    good = client.request(path=b"/good")
    backend = proxy.backend()
    backend.requests()
    bad = client.request(path=b"/bad")
    assert raised
    assert [e.error_code for e in client.pump()
            if isinstance(e, h2.events.StreamReset) and e.stream_id == bad] == [INTERNAL_ERROR]
    backend.respond(RESPONSE)
    events = client.pump()
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == good for e in events)
    assert failures == []
    assert not client.closing
    assert proxy.listener.internal_errors == 1


def test_an_exception_setting_up_a_pipelined_h1_request_answers_it(proxy, monkeypatch):
    """HTTP/1.1: the same bug on a pipelined request (read from the codec in a timed call
    after the previous answer, where the reactor only logs an exception) answers it with 500
    and closes the connection. It used to leave the client waiting for ever: no answer, no
    stream, and no timeout on the connection."""
    failures = proxy.reactor.log_failures()
    _translation_failing_for(monkeypatch, b"/bad")
    client = proxy.h1_client()
    client.write(REQUEST + REQUEST.replace(b"GET / ", b"GET /bad "))
    backend = proxy.backend()
    backend.requests()
    backend.respond(RESPONSE)
    proxy.advance(0)
    data = client.read()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 500 " in data
    assert failures == []
    assert client.closing


def test_a_timed_call_of_a_connection_that_raises_aborts_it(proxy, monkeypatch):
    """An exception in one of a client connection's own timed calls (here its header timeout,
    whose GOAWAY fails) aborts the connection, as one in a read would: the reactor only logs
    it, and the connection used to stay open for ever without a timer."""
    failures = proxy.reactor.log_failures()
    client = proxy.h2_client()
    raised = raising_once(monkeypatch, client.protocol.codec, "goaway")
    proxy.advance(16)  # frontend_header: 15s
    assert raised
    assert failures == []
    assert client.transport.disconnected  # aborted


def test_a_pipelined_read_that_raises_in_a_timed_call_aborts_the_connection(proxy,
                                                                           monkeypatch):
    """HTTP/1.1: the codec raising while the connection reads a pipelined request after an
    answer (in a timed call, where the reactor only logs an exception) aborts the connection at
    once, as the same exception in a read would; the client used to wait for the idle timeout
    with its request unanswered."""
    failures = proxy.reactor.log_failures()
    client = proxy.h1_client()
    client.write(REQUEST + REQUEST)
    backend = proxy.backend()
    backend.requests()
    raised = raising_once(monkeypatch, client.protocol.codec, "receive_data",
                           lambda data: data == b"")
    backend.respond(RESPONSE)
    proxy.advance(0)
    assert raised
    assert failures == []
    assert client.transport.disconnected  # aborted
