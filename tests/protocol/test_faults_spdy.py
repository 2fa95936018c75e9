"""Every stream ends, on the SPDY frontends (3.1, 3 and 2): faults on a stream's path, a client
that resets or leaves at any point, and what the session around the stream does next.

Strategy: as in :mod:`test_faults` (HTTP/2, HTTP/1.1), a function on the path is made to raise
(``raising_once``, as a bug would) or the client resets, sends GOAWAY or closes at a chosen point
of an exchange, before or after its backend closed; each test then checks what the rule
promises: the stream is answered or reset, its backend connection is closed or back in the pool
(with ``max_connections: 1`` a leaked slot leaves the next request without a connection), the
session goes on serving requests, a client paused for backpressure (SPDY/2 has no flow control)
is read again, and the idle connection still times out. Where the daemon's reactor would catch
an exception, the test's reactor does the same (``reactor.log_failures()``).
"""

import pytest

from proxyd import bridge
from proxyd.codec.spdy import SpdyConnection
from proxyd.codec.spdy import frames as fr
from proxyd.net.backend import BackendConnection

from memproxy import BACKEND, raising_once

VERSIONS = ["spdy/3.1", "spdy/3", "spdy/2"]
LISTEN = [{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": VERSIONS}]
ONE_CONNECTION = [{"address": BACKEND, "max_connections": 1}]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEAD_10 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
IDLE = 60  # base_config's frontend_idle


def _proxy(make_proxy):
    return make_proxy(listen=LISTEN, backends=ONE_CONNECTION)


def _post(client, sid, length):
    """SYN_STREAM of a POST announcing ``length`` body bytes (no FIN)."""
    client.send_syn(sid, client.peer.request_pairs(
        path=b"/up", extra=[(b"content-length", b"%d" % length)]), fin=False)


def _served_again(proxy, client, sid):
    """A GET on ``sid`` gets the backend's answer (on the pooled connection, or a fresh one once
    the old one is gone): the session and the pool slot survived."""
    if proxy.connects:
        proxy.backend().finish_close()  # a connection the proxy closed is lost, its slot freed
    client.send_syn(sid, client.peer.request_pairs(path=b"/again"))
    backend = proxy.backend()
    assert [getattr(e, "target", None) for e in backend.requests()][:1] == [b"/again"]
    backend.respond(RESPONSE)
    assert client.body(sid) == b"ok"
    assert client.answered(sid)


# -- a function on the stream's path raises ---------------------------------------------------

FAULTS = {
    # point: (owner of the function, its name); the codec's methods are patched on the class
    "request head": (bridge, "backend_request"),
    "request body": (BackendConnection, "send_body"),
    "response head": (SpdyConnection, "send_response"),
    "mid-response": (SpdyConnection, "send_data"),
    "response end": (SpdyConnection, "end_stream"),
}


@pytest.mark.parametrize("point", list(FAULTS))
@pytest.mark.parametrize("version", VERSIONS)
def test_a_fault_on_a_spdy_stream_ends_that_stream_only(make_proxy, monkeypatch, version, point):
    """A bug raising at any point of a POST's exchange (setting the request up, writing its body,
    relaying the response head, a body piece, the end) answers or resets that stream; its
    backend connection is closed or pooled (never held by nothing), the session serves its next
    request on the one connection the pool may open, and the idle session is closed after
    ``frontend_idle``."""
    proxy = _proxy(make_proxy)
    failures = proxy.reactor.log_failures()
    raised = raising_once(monkeypatch, *FAULTS[point])
    client = proxy.spdy_session(version)
    _post(client, 1, 5)
    client.data(1, b"hello", fin=True)
    if point != "request head":
        backend = proxy.backend()
        backend.requests()
        backend.respond(HEAD_10)
        backend.respond(b"0123456789")
    assert raised
    assert client.answered(1)
    assert not client.protocol.streams
    _served_again(proxy, client, 3)
    assert failures == []
    assert not client.closing
    proxy.advance(IDLE + 1)
    assert client.closing


@pytest.mark.parametrize("point", ["response head", "response end"])
def test_a_spdy2_client_paused_by_its_upload_is_read_again_after_a_fault(make_proxy, monkeypatch,
                                                                         point):
    """SPDY/2 has no flow control: a backend that does not take an upload pauses the whole client
    connection. When the backend answers early (a whole response in one read) and relaying that
    answer raises, the stream is reset by force; the client must be read again, or its other
    streams and new requests wait, unread, until the idle timeout closes a session that is not
    idle at all. The forced end forgot the pause: the connection stayed paused."""
    proxy = _proxy(make_proxy)
    failures = proxy.reactor.log_failures()
    raising_once(monkeypatch, *FAULTS[point])
    client = proxy.spdy_session("spdy/2")
    _post(client, 1, 100000)
    backend = proxy.backend()
    backend.requests()
    backend.transport.producer.pauseProducing()  # the backend does not read the upload
    client.data(1, b"x" * 1000)
    assert client.transport.producerState == "paused"
    backend.respond(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno")
    assert client.answered(1)
    assert not client.protocol.streams
    assert client.transport.producerState == "producing"
    assert failures == []


# -- the client resets, leaves or sends GOAWAY at any point; the backend closes before or after --

POINTS = ["routing", "awaiting", "uploading", "responding", "blocked"]


def _exchange_to(proxy, client, point):
    """Run a POST on stream 1 up to ``point``; return its backend connection (not yet connected
    at "routing")."""
    _post(client, 1, 10)
    if point == "routing":
        return proxy.backend(connect=False)
    backend = proxy.backend()
    backend.requests()
    if point == "awaiting":
        return backend
    client.data(1, b"01234")
    backend.requests()
    if point == "uploading":
        return backend
    backend.respond(HEAD_10 + b"abc")
    client.pump()
    if point == "blocked":
        client.protocol.pauseProducing()  # the client's socket is full
        backend.respond(b"def")
        assert backend.paused
    return backend


def _client_leaves(client, action):
    if action == "rst":
        client.reset(1)
    elif action == "goaway":  # an error GOAWAY (SPDY/3: status PROTOCOL_ERROR)
        client.write(fr.encode_goaway(3, 0, fr.GOAWAY_PROTOCOL_ERROR))
    else:
        client.transport.loseConnection()
        client.finish_close()


# A SPDY/2 GOAWAY carries no status: it is always graceful (see the test after this one).
LEAVING = [(version, action) for version in VERSIONS for action in ("rst", "goaway", "close")
           if not (version == "spdy/2" and action == "goaway")]


@pytest.mark.parametrize("backend_first", [False, True], ids=["client-first", "backend-first"])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize(("version", "action"), LEAVING)
def test_a_spdy_client_leaving_at_any_point_frees_the_backend_connection(
        make_proxy, version, point, action, backend_first):
    """The client resets its stream, fails its session with GOAWAY or closes the connection at
    any point of a POST's exchange (waiting for a connection, request sent, mid-upload, response
    started, response held for a client that does not read), before or after the backend closes
    its connection: nothing raises, the stream ends, the backend connection is dropped or pooled
    and the next client is served on the one connection the pool may open."""
    proxy = _proxy(make_proxy)
    failures = proxy.reactor.log_failures()
    client = proxy.spdy_session(version)
    backend = _exchange_to(proxy, client, point)
    if backend_first and point != "routing":
        backend.close(clean=False)
    _client_leaves(client, action)
    if point == "routing":
        backend.connect()  # the connection arrives after the stream ended
    assert not client.protocol.streams
    if not backend_first and point != "routing":
        assert backend.transport.disconnecting
        backend.close(clean=False)
    backend.finish_close()
    other = proxy.spdy_session(version)
    _served_again(proxy, other, 1)
    assert failures == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_graceful_goaway_from_the_client_lets_its_streams_finish(make_proxy, version):
    """A client's graceful GOAWAY (status OK; SPDY/2: the only kind) ends nothing: the stream in
    flight gets its whole response, then the session closes."""
    proxy = _proxy(make_proxy)
    client = proxy.spdy_session(version)
    backend = _exchange_to(proxy, client, "uploading")
    client.write(fr.encode_goaway(client.peer.v, 0, fr.GOAWAY_OK))
    client.data(1, b"56789", fin=True)
    backend.requests()
    backend.respond(HEAD_10 + b"0123456789")
    assert client.body(1) == b"0123456789"
    assert client.answered(1)
    assert client.closing


# -- the idle timeout after a refused request -------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("refusal", ["gate", "setup", "unidirectional"])
def test_a_spdy_session_whose_request_was_refused_still_times_out(make_proxy, monkeypatch,
                                                                  version, refusal):
    """A session whose request is refused (by the gate, by a failing set-up, or by the codec for
    a unidirectional SYN_STREAM) after an answered one, and that then stays silent, is closed
    after ``frontend_idle``: no refusal leaves a connection without its timeout."""
    proxy = _proxy(make_proxy)
    failures = proxy.reactor.log_failures()
    client = proxy.spdy_session(version)
    _served_again(proxy, client, 1)
    proxy.advance(IDLE - 10)
    if refusal == "gate":
        client.send_syn(3, client.peer.request_pairs(extra=[(b"transfer-encoding", b"chunked")]))
    elif refusal == "setup":
        raising_once(monkeypatch, bridge, "backend_request")
        client.send_syn(3, client.peer.request_pairs())
    else:
        client.write(client.peer.syn_stream(3, flags_unidirectional=True))
    assert client.answered(3)
    proxy.advance(IDLE + 1)
    assert client.closing
    assert failures == []


# -- SPDY/3.1 session window: streams reset with bytes not yet taken ---------------------------

def test_spdy31_session_window_comes_back_for_streams_reset_with_unacknowledged_bytes(make_proxy):
    """Request bytes a backend had not taken when the client reset their stream are credited back
    to the 3.1 session window: a client resetting uploads (to a backend that stopped reading)
    does not shrink its session window for good until the session hangs."""
    proxy = make_proxy(listen=LISTEN)
    client = proxy.spdy_session("spdy/3.1")
    session = client.protocol.codec.session_window
    sent = 0
    sid = 1
    while sent < 3 * session:
        _post(client, sid, 1 << 20)
        backend = proxy.backend()
        backend.requests()
        backend.transport.producer.pauseProducing()  # the backend takes nothing more
        client.data(sid, b"x" * 60000)
        client.reset(sid)
        sent += 60000
        sid += 2
    client.pump()
    credited = sum(f[2] for f in client.frames if f[0] == fr.WINDOW_UPDATE and f[1] == 0)
    # the initial grant beyond the draft's 64 KiB, then what was consumed (half a window at most
    # still waits for its update)
    assert credited >= (session - fr.DEFAULT_WINDOW) + sent - session // 2


def test_spdy31_session_window_comes_back_for_streams_ended_by_force(make_proxy, monkeypatch):
    """The same when relaying a backend's early answer raises (a whole 413 in one read, while
    the backend has not taken the upload): the stream is reset by force, and the request bytes
    it had not acknowledged yet are still credited to the session. They were lost with it: after
    four such streams a 3.1 client's session window was gone for good (a well-behaved client
    then waits for ever; this one overruns it and the session fails)."""
    proxy = make_proxy(listen=LISTEN)
    failures = proxy.reactor.log_failures()
    client = proxy.spdy_session("spdy/3.1")
    session = client.protocol.codec.session_window
    sent = 0
    sid = 1
    while sent < 2 * session:
        raising_once(monkeypatch, SpdyConnection, "send_response")
        _post(client, sid, 1 << 20)
        backend = proxy.backend()
        backend.requests()
        backend.transport.producer.pauseProducing()  # the backend takes nothing more
        client.data(sid, b"x" * 60000)
        backend.respond(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno")
        assert client.answered(sid)
        backend.finish_close()
        sent += 60000
        sid += 2
    assert not any(f[0] == fr.GOAWAY for f in client.frames)
    credited = sum(f[2] for f in client.frames if f[0] == fr.WINDOW_UPDATE and f[1] == 0)
    assert credited >= (session - fr.DEFAULT_WINDOW) + sent - session // 2
    assert failures == []


# -- session errors end every stream of the session -------------------------------------------

SESSION_ERRORS = {
    # a SYN_STREAM whose id is not above the last one
    "stream id reused": lambda peer: peer.syn_stream(1),
    # a header block that does not inflate: the session's zlib stream is lost
    "corrupt header block": lambda peer: fr.encode_syn_stream(peer.v, 5, b"\xff" * 32),
}


@pytest.mark.parametrize("error", list(SESSION_ERRORS))
@pytest.mark.parametrize("version", VERSIONS)
def test_a_spdy_session_error_ends_every_stream_and_drops_their_backends(make_proxy, version,
                                                                         error):
    """A session error (a reused stream id, a header block zlib cannot inflate) fails the whole
    session, not one stream: GOAWAY, the streams in flight end, their backend connections are
    dropped (not left waiting for a client that is gone) and the connection closes."""
    proxy = make_proxy(listen=LISTEN)
    failures = proxy.reactor.log_failures()
    client = proxy.spdy_session(version)
    _post(client, 3, 10)
    backend = proxy.backend()
    backend.requests()
    client.write(SESSION_ERRORS[error](client.peer))
    client.pump()
    assert any(f[0] == fr.GOAWAY for f in client.frames)
    assert not client.protocol.streams
    assert backend.transport.disconnecting
    assert client.closing
    assert failures == []
