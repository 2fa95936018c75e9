"""Output written once per reactor turn (proxyd.net.twistedshim.at_turn_end), in memory, and the
backpressure that must survive it.

The harness's reactor (memproxy.TurnReactor) has the end-of-turn queue of proxyd's EPollReactor;
``reactor.one_turn()`` delivers several events as one poll would. These tests pin what the queue
is for (one write to a client for the responses of several backend reads of one turn, one write
to an HTTP/2 backend for the requests of several client reads) and what must not follow from
it: nothing is written to a connection lost before the turn ends, a flush that fails ends its
connection rather than leaving its streams waiting, and backpressure still holds (DESIGN §5: an
upload chunk that fills the backend's socket is not acknowledged; a client socket filled by the
turn's write holds every backend from then on). Transports here pause their producer inside the
write that fills them, as Twisted's do (``StringTransport`` never does by itself).
"""

import h2.events

from proxyd.net import frontend as frontend_module

from memproxy import ClientConn, count_writes
from test_backend_h2 import IWS, Client, bridge_proxy, warm_bridge


def _two_streams_waiting(proxy):
    """An h2 client with two streams, each on its own HTTP/1.1 backend connection."""
    client = proxy.h2_client()
    sids = [client.request(path=b"/a"), client.request(path=b"/b")]
    backends = [proxy.backend(0), proxy.backend(1)]
    for backend in backends:
        backend.requests()
    return client, sids, backends


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_responses_of_one_turn_reach_the_client_in_one_write(proxy):
    """Two backend connections answer in the same turn: nothing is written to the client until
    the turn ends, then both responses go out in one write."""
    client, sids, backends = _two_streams_waiting(proxy)
    writes = count_writes(client.transport)
    with proxy.reactor.one_turn():
        for backend in backends:
            backend.respond(RESPONSE)
        assert writes[0] == 0 and client.transport.value() == b""
    assert writes[0] == 1
    events = client.pump()
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert ended == set(sids)


def test_each_turn_flushes_its_own_responses(proxy):
    """Responses read in two turns are two writes: a turn's output never waits for the next."""
    client, sids, backends = _two_streams_waiting(proxy)
    writes = count_writes(client.transport)
    backends[0].respond(RESPONSE)
    assert writes[0] == 1
    backends[1].respond(RESPONSE)
    assert writes[0] == 2


def test_nothing_is_written_to_a_client_lost_before_the_turn_ends(proxy):
    """A response read, then the client connection lost in the same turn: the queued flush
    finds the connection gone and writes nothing (and raises nothing)."""
    client, _sids, backends = _two_streams_waiting(proxy)
    writes = count_writes(client.transport)
    with proxy.reactor.one_turn():
        backends[0].respond(RESPONSE)
        client.transport.loseConnection()
        client.finish_close()
    assert writes[0] == 0
    assert proxy.reactor.turn_end == []


def test_a_flush_that_fails_at_the_end_of_the_turn_aborts_the_client(proxy, monkeypatch):
    """A flush that raises at the end of the turn (a bug) is logged and the client connection
    is aborted, as an exception in a read would have dropped it: its streams end instead of
    waiting for output that is never written."""
    client, _sids, backends = _two_streams_waiting(proxy)
    failures = []
    monkeypatch.setattr(frontend_module.log, "failure",
                        lambda fmt, **kw: failures.append(fmt))

    def broken():
        raise RuntimeError("bug")

    client.protocol.flush = broken
    backends[0].respond(RESPONSE)
    assert failures == ["flushing to {ip}"]
    assert client.transport.disconnected  # aborted


def test_a_cleartext_http11_client_gets_its_response_at_the_end_of_the_turn(proxy):
    """The same for an HTTP/1.1 client: the response is written when the turn ends."""
    client = ClientConn(proxy)
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.requests()
    writes = count_writes(client.transport)
    with proxy.reactor.one_turn():
        backend.respond(RESPONSE)
        assert writes[0] == 0
    assert client.read().startswith(b"HTTP/1.1 200 OK\r\n")


def test_requests_of_one_turn_reach_the_h2_backend_in_one_write(tmp_path):
    """Bridge mode: two clients' requests read in the same turn go to the shared HTTP/2 backend
    connection in one write, after the turn; each response still reaches its own client."""
    proxy = bridge_proxy(tmp_path)
    first, peer, _h2conn = warm_bridge(proxy)
    second = Client(proxy)
    writes = peer.conn.count_writes()
    with proxy.reactor.one_turn():
        sid_a = first.get(b"/a")
        sid_b = second.get(b"/b")
        assert writes[0] == 0
    assert writes[0] == 1
    peer.pump()
    for client, sid, path in ((first, sid_a, b"/a"), (second, sid_b, b"/b")):
        peer.respond(peer.sid_for(path), body=path)
        result = client.result(sid)
        assert result["status"] == 200 and result["body"] == path


# -- backpressure: what a full socket stops, with writes at the end of the turn --------------

def _fill_on_next_write(peer, h2conn):
    """The next write to the backend connection fills its socket: the transport pauses its
    producer during that write."""
    transport = peer.conn.transport
    write = transport.write

    def filling(data):
        write(data)
        h2conn.pauseProducing()
        transport.write = write

    transport.write = filling


def test_h2_upload_chunk_that_fills_the_backend_socket_is_not_acknowledged(tmp_path):
    """Bridge mode, DESIGN §5: the upload chunk whose write fills the HTTP/2 backend's socket
    is not acknowledged to the client until the backend transport drains (request body bytes
    are written at once, not at the end of the turn, because the relay asks whether the
    backend took them right after handing them over)."""
    proxy = bridge_proxy(tmp_path)
    client, peer, h2conn = warm_bridge(proxy, settings={IWS: 1 << 20})
    sid = client.get(b"/upload", method=b"POST", end_stream=False)
    peer.pump()
    client.pump()
    _fill_on_next_write(peer, h2conn)
    client.c.send_body(sid, b"u" * 40000)
    assert h2conn.write_blocked
    client.pump()
    assert client.c.h2.local_flow_control_window(sid) == 65535 - 40000, (
        "the client's window was reopened for bytes the backend transport pushed back")
    h2conn.resumeProducing()
    client.pump()
    assert client.c.h2.local_flow_control_window(sid) == 65535


def test_h1_upload_chunk_that_fills_the_h2_backend_socket_pauses_the_client(tmp_path):
    """The same for an HTTP/1.1 client: its socket is paused while the backend pushes back."""
    proxy = bridge_proxy(tmp_path)
    _client, peer, h2conn = warm_bridge(proxy, settings={IWS: 1 << 20})
    c = ClientConn(proxy)
    c.write(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n")
    peer.pump()
    _fill_on_next_write(peer, h2conn)
    c.write(b"x" * 10)
    assert h2conn.write_blocked
    assert c.transport.producerState == "paused", (
        "the client keeps being read while the backend transport pushes back")
    h2conn.resumeProducing()
    assert c.transport.producerState == "producing"


HEAD_1000 = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"


def test_a_turn_fills_the_client_then_the_backends_are_held(proxy):
    """Two streams of one h2 client on two HTTP/1.1 backends whose reads come in one poll; the
    turn's one write fills the client's socket. Both reads of that turn went to the client's
    codec (the price of one write per turn: at most one read per backend connection), and from
    then on the client is paused for writing: the next bytes of either backend are held and
    that backend is paused, so nothing more accumulates."""
    client = proxy.h2_client(client_settings={IWS: 1 << 20})
    client.request(path=b"/a")
    client.request(path=b"/b")
    backends = [proxy.backend(0), proxy.backend(1)]
    for backend in backends:
        backend.requests()
    client.read()
    write = client.transport.write
    writes = []

    def filling(data):
        writes.append(len(data))
        write(data)
        client.protocol.pauseProducing()  # the socket is full after this write

    client.transport.write = filling
    with proxy.reactor.one_turn():
        backends[0].respond(HEAD_1000 + b"a" * 500)
        backends[1].respond(HEAD_1000 + b"b" * 500)
    assert len(writes) == 1 and writes[0] > 1000  # both reads, one write
    assert client.protocol.write_paused
    for backend in backends:
        backend.respond(b"c" * 100)
        assert backend.paused, "a backend is read on while the client cannot take more"
    assert len(writes) == 1
