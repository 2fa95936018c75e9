"""Pooled backend connections that proxyd closes while they are idle (stray bytes after a complete
response, the idle timeout) leave the pool at once, not when ``connectionLost`` comes.

Twisted reports the end of a connection later than proxyd asks for it: ``abortConnection``
schedules ``connectionLost`` for the reactor's next iteration, ``loseConnection`` waits for the
socket to drain. A request that arrives in between must not be given that connection: an aborted
one drops the request and is lost (a retry, or a 502 for a request that is not repeated); a
closing one still sends the request to the backend, then closes without reading the answer (a
POST the backend runs, answered 502). In memory, ``connectionLost`` never comes by itself, so
the window stays open until the test closes it.
"""

import pytest

from proxyd.net.backend import IDLE_TIMEOUT


def _first_exchange(proxy, client):
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.requests()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.read().endswith(b"ok")
    assert not backend.transport.disconnecting  # pooled
    return backend


@pytest.mark.parametrize("how", ["stray-bytes", "idle-timeout"])
def test_a_connection_closed_while_idle_is_not_handed_out(proxy, how):
    client = proxy.h1_client()
    backend = _first_exchange(proxy, client)
    if how == "stray-bytes":
        # The rest of a response that was framed shorter than the backend meant (a late
        # segment): read while idle, the connection is aborted.
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    else:
        proxy.advance(IDLE_TIMEOUT + 0.1)
    assert backend.transport.disconnecting
    # connectionLost has not come yet: the next request needs a connection of its own.
    client.write(b"POST /2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\nx")
    assert proxy.connects == 2
    assert backend.received() == b""  # nothing written to the closing connection
    fresh = proxy.backend()
    assert [e.target for e in fresh.requests() if hasattr(e, "target")] == [b"/2"]
    fresh.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo")
    assert client.read().startswith(b"HTTP/1.1 201 ")
    backend.finish_close()  # the late connectionLost changes nothing
    fresh.respond(b"")  # (no-op read of nothing)
    assert proxy.balancer.backends[0].state.total == 1


def test_an_idle_tls_connection_closed_by_the_idle_timeout_really_closes(proxy):
    """The idle timeout closes a pooled TLS connection for real. proxyd asked for the close while
    still registered as the transport's producer, which Twisted's TLS layer waits for before it
    sends close_notify: the connection stayed open (and counted in ``max_connections``) until
    the backend closed it itself. (The same close of a WebSocket tunnel's connection:
    tests/protocol/test_tunnel_faults.py.)"""
    client = proxy.h1_client()
    backend = _first_exchange(proxy, client)
    backend.tls = True  # the transport model of BackendConn.closes
    proxy.advance(IDLE_TIMEOUT + 0.1)
    assert backend.closes


def test_a_proxy_protocol_connection_really_closes_after_its_exchange(make_proxy):
    """A route with ``proxy_protocol`` names one client per backend connection, so each is
    closed after its exchange. That close was asked for with proxyd still the transport's
    producer, which Twisted's TLS layer waits for for ever: every request to such a backend over
    TLS left its connection open (and counted in ``max_connections``)."""
    proxy = make_proxy(routes=[{"match": {"path": "/"}, "proxy_protocol": True,
                                "backends": [{"address": "127.0.0.1:9001"}]}])
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.tls = True  # the transport model of BackendConn.closes
    assert backend.received().startswith(b"\r\n\r\n\x00\r\nQUIT\n")  # the PROXY v2 signature
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.read().endswith(b"ok")
    assert backend.closes
