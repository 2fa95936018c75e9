"""Every tunnel ends, on both sides: faults and closes along a WebSocket tunnel's life (RFC 6455
over HTTP/1.1, RFC 8441 over HTTP/2) and what happens to its backend connection.

Strategy: a tunnel is opened through the in-memory proxy (:func:`memproxy.h1_tunnel`,
:func:`memproxy.h2_tunnel`); then its client goes away (HTTP/1.1: the connection closes; HTTP/2:
RST_STREAM) or half-closes, while the backend's transport pushes back (its buffer is full: the
backend reads nothing) or is a TLS one, or while a function on the path raises. Each test checks
what the design promises: the backend connection really closes (``BackendConn.closes`` says
whether Twisted's transport would carry out the close proxyd asked for), or is aborted when it
cannot drain; no stream stays registered; a pool slot is never held by nothing.
"""

import h2.events
import pytest

from proxyd.net.backend import BackendConnection

from memproxy import BACKEND, h1_tunnel, h2_tunnel, raising_once

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def _open(proxy, kind):
    """A tunnel of ``kind`` ("http/1.1" or "h2"): (client, stream id, backend)."""
    if kind == "h2":
        return h2_tunnel(proxy)
    client, backend = h1_tunnel(proxy)
    return client, 1, backend


def _leave(client, kind, sid):
    """The client goes away: HTTP/2 resets the stream, HTTP/1.1 closes the connection."""
    if kind == "h2":
        client.h2.reset_stream(sid)
        client.flush()
    else:
        client.transport.loseConnection()
        client.finish_close()


@pytest.mark.parametrize("transport", ["tcp pushing back", "tls"])
@pytest.mark.parametrize("kind", ["http/1.1", "h2"])
def test_a_tunnel_backend_is_really_closed_when_the_client_goes_away(proxy, kind, transport):
    """The client leaving closes the tunnel's backend connection for real. proxyd asked its
    transport to close while still registered as its producer: Twisted's TLS layer then never
    closes, and its TCP transport, once the buffer of a backend that pushed back drains, resumes
    the producer instead of closing. The connection stayed open for ever, holding its pool slot
    (and the backend's resources) after the client was gone."""
    client, sid, backend = _open(proxy, kind)
    if transport == "tls":
        backend.tls = True
    else:
        client.write(b"x" * 1000) if kind == "http/1.1" else client.send_body(sid, b"x" * 1000)
        backend.push_back()
    _leave(client, kind, sid)
    assert backend.closes
    assert not client.protocol.streams


@pytest.mark.parametrize("kind", ["http/1.1", "h2"])
def test_a_tunnel_backend_that_never_drains_is_aborted(make_proxy, kind):
    """A backend that reads nothing more keeps proxyd's buffered bytes unsent: the close that
    follows the client's departure can never complete, so the connection is aborted instead of
    waiting for ever (here a minute later, far beyond any timeout), and its pool slot serves the
    next request (``max_connections: 1``)."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}])
    client, sid, backend = _open(proxy, kind)
    backend.push_back()
    _leave(client, kind, sid)
    proxy.advance(60)
    assert backend.transport.disconnected  # aborted
    backend.finish_close()
    other = proxy.h1_client()
    other.write(REQUEST)
    assert proxy.connects == 2


def test_rfc8441_half_close_reaches_a_backend_that_pushes_back(proxy):
    """RFC 8441 §5 (RFC 9113 §8.5): the client's END_STREAM is a half-close of the backend
    connection. proxyd shut down its side while still registered as the transport's producer;
    a TCP transport whose buffer toward a backend that pushed back drains then resumes the
    producer instead of sending the FIN: the backend never learnt that the client was done."""
    client, sid, backend = h2_tunnel(proxy)
    client.send_body(sid, b"x" * 1000)
    backend.push_back()
    client.send_body(sid, b"bye", end_stream=True)
    assert backend.half_closes
    backend.respond(b"still open")
    events = client.pump()
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) \
        == b"still open"


@pytest.mark.parametrize("kind", ["http/1.1", "h2"])
def test_a_tunnel_whose_backend_close_raises_is_aborted(make_proxy, monkeypatch, kind):
    """Closing the tunnel's backend connection raising (a bug, a transport error) still drops
    it: the relay had already let go of the connection, so it was neither closed nor aborted
    and held its pool slot for ever (with ``max_connections: 1`` the next request waited until
    its read timeout answered 504)."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}])
    failures = proxy.reactor.log_failures()
    client, sid, backend = _open(proxy, kind)
    raised = raising_once(monkeypatch, BackendConnection, "close")
    _leave(client, kind, sid)
    assert raised
    assert failures == []
    assert not client.protocol.streams
    assert backend.transport.disconnected  # aborted
    backend.finish_close()
    other = proxy.h1_client()
    other.write(REQUEST)
    assert proxy.connects == 2
