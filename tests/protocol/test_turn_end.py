"""Output written once per reactor turn (proxyd.net.twistedshim.at_turn_end), in memory.

The harness's reactor (memproxy.TurnReactor) has the end-of-turn queue of proxyd's EPollReactor;
``reactor.one_turn()`` delivers several events as one poll would. These tests pin what the queue
is for (one write to a client for the responses of several backend reads of one turn, one write
to an HTTP/2 backend for the requests of several client reads) and what must not follow from
it: nothing is written to a connection lost before the turn ends, and a flush that fails ends
its connection rather than leaving its streams waiting.
"""

import h2.events

from proxyd.net import frontend as frontend_module

from memproxy import ClientConn
from test_backend_h2 import Client, H2Peer, bridge_proxy


def _count_writes(conn):
    """Count the writes to the client connection ``conn`` from now on (a one-item list)."""
    n = [0]
    write = conn.transport.write

    def counting(data):
        n[0] += 1
        write(data)

    conn.transport.write = counting
    return n


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
    writes = _count_writes(client)
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
    writes = _count_writes(client)
    backends[0].respond(RESPONSE)
    assert writes[0] == 1
    backends[1].respond(RESPONSE)
    assert writes[0] == 2


def test_nothing_is_written_to_a_client_lost_before_the_turn_ends(proxy):
    """A response read, then the client connection lost in the same turn: the queued flush
    finds the connection gone and writes nothing (and raises nothing)."""
    client, _sids, backends = _two_streams_waiting(proxy)
    writes = _count_writes(client)
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
    writes = _count_writes(client)
    with proxy.reactor.one_turn():
        backend.respond(RESPONSE)
        assert writes[0] == 0
    assert client.read().startswith(b"HTTP/1.1 200 OK\r\n")


def test_requests_of_one_turn_reach_the_h2_backend_in_one_write(tmp_path):
    """Bridge mode: two clients' requests read in the same turn go to the shared HTTP/2 backend
    connection in one write, after the turn; each response still reaches its own client."""
    proxy = bridge_proxy(tmp_path)
    first, second = Client(proxy), Client(proxy)
    sid_first = first.get(b"/warm")
    peer = H2Peer(proxy)
    peer.respond(peer.sid_for(b"/warm"), body=b"w")
    assert first.result(sid_first)["status"] == 200
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
