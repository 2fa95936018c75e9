"""A connection that ended is freed by reference counting, not left to the garbage collector.

Strategy: the daemon raises the collector's first threshold and freezes start-up objects
(:mod:`proxyd.runtime`), so a reference cycle left by a closed connection waits for a full
collection: before the fix, every closed client connection (its codec, HPACK tables and, on a
real socket, its TLS object and buffers) stayed until then, and a daemon serving 100 new
connections per second grew by ~6 MiB per 10,000 requests until a full collection ran. Each test
runs a connection through a request, ends it, drops the harness's references and checks, with
the collector disabled, that weak references to the protocol and its codec are dead. The real
transports' part (the fast paths' closures, Twisted's TLS layer) is checked on real sockets in
``tests/unit/test_twistedshim.py``.
"""

import gc
import weakref

import h2.config
import h2.connection
import pytest

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def no_gc():
    """The collector off for the test (so only reference counting frees anything)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _h2(proxy):
    client = proxy.h2_client()
    client.request()
    return client


def _h1(proxy):
    client = proxy.h1_client()
    client.write(REQUEST)
    return client


def _spdy(proxy):
    client = proxy.spdy_client(3)
    client.send_syn(1, client.peer.request_pairs())
    return client


def _watch_backend(backend):
    """A weak reference to a backend connection's protocol (its codec has ``__slots__``)."""
    return [weakref.ref(backend.transport.producer)]  # the BackendConnection registered itself


OPEN = {"h2": _h2, "http/1.1": _h1, "spdy/3": _spdy}


def _watch(client):
    """Weak references to a client connection's protocol and codec."""
    return [weakref.ref(client.protocol), weakref.ref(client.protocol.codec)]


@pytest.mark.parametrize("kind", sorted(OPEN))
@pytest.mark.parametrize("answered", [True, False], ids=["answered", "in-flight"])
def test_a_closed_client_connection_is_freed_at_once(make_proxy, no_gc, kind, answered):
    """After a request (answered, or still waiting for the backend when the client leaves), the
    client connection's protocol and codec are gone as soon as it is lost and nothing refers to
    it, and so is the backend connection's protocol when that one is lost too."""
    proxy = make_proxy(listen=[{"endpoint": "tcp:8080:interface=127.0.0.1",
                                "protocols": ["h2", "http/1.1", "spdy/3"]}])
    client = OPEN[kind](proxy)
    backend = proxy.backend(0)
    assert backend.requests()
    if answered:
        backend.respond(RESPONSE)
        assert client.read()
    refs = _watch(client) + _watch_backend(backend)
    client.transport.loseConnection()
    client.finish_close()
    backend.finish_close()
    backend.close()
    proxy._backends.clear()
    del client, backend
    assert [ref() for ref in refs] == [None] * len(refs)


def test_a_pooled_backend_connection_closed_by_the_backend_is_freed_at_once(proxy, no_gc):
    """A keep-alive backend connection the backend closes while idle in the pool is freed."""
    client = _h1(proxy)
    backend = proxy.backend(0)
    backend.respond(RESPONSE)
    assert client.read().endswith(b"ok")
    refs = _watch_backend(backend)
    backend.close()
    proxy._backends.clear()
    del backend
    assert [ref() for ref in refs] == [None]
    assert refs  # the client's connection stays usable: a new request opens a new connection
    client.write(REQUEST)
    assert proxy.connects == 2


def test_a_connection_whose_deferred_call_ran_is_freed_at_once(proxy, no_gc):
    """An HTTP/1.1 connection looks for the next pipelined request in a deferred call after
    each answer; once that call ran, it keeps nothing alive when the connection is lost."""
    client = _h1(proxy)
    proxy.backend(0).respond(RESPONSE)
    proxy.advance(0)  # the call that looks for a next request runs
    assert client.read().endswith(b"ok")
    refs = _watch(client)
    client.transport.loseConnection()
    client.finish_close()
    del client
    assert [ref() for ref in refs] == [None] * len(refs)


def test_a_finished_stream_of_a_rate_limited_route_is_freed_at_once(make_proxy, no_gc):
    """A stream of a route with its own rate limits (paced by a StreamRate) is freed as soon as
    it finished, while its connection goes on."""
    limited = {"match": {"path": "/"}, "backends": [{"address": "127.0.0.1:8081"}],
               "rate_limits": {"write": {"rate": "16KiB", "burst": "16KiB"}}}
    proxy = make_proxy(routes=[limited])
    client = _h2(proxy)
    (relay,) = client.protocol.streams.values()
    refs = [weakref.ref(relay.machine.window)]  # a closure only the stream's machine holds
    del relay
    proxy.backend(0).respond(RESPONSE)
    assert client.pump()
    assert not client.protocol.streams
    assert [ref() for ref in refs] == [None]


def test_the_http11_codec_an_h2c_upgrade_replaced_is_freed_at_once(proxy, no_gc):
    """After an h2c upgrade (``Upgrade: h2c``) the connection's HTTP/1.1 codec is gone at once,
    while the connection goes on over HTTP/2."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\n")
    refs = [weakref.ref(client.protocol.codec)]
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = h2c.initiate_upgrade_connection()
    client.write(b"Host: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n" +
                 h2c.data_to_send())
    assert client.read().startswith(b"HTTP/1.1 101 ")
    assert client.protocol.codec.protocol == "h2"
    assert [ref() for ref in refs] == [None]



@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_a_finished_health_check_is_freed_at_once(tmp_path, no_gc, tls):
    """An active health check over a real loopback connection (Twisted's connector, the
    endpoint's factory and, with TLS, Twisted's TLS layer are part of it, which the in-memory
    reactor has not): once answered and aborted, its protocol is gone at once, not left in a
    cycle through the connector or in the Failure of the TLS layer's last read."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from proxyd.config import parse_config
    from proxyd.net.factory import make_balancer
    from proxyd.net.twistedshim import EPollReactor
    from tests.support import tls_server_creator

    from memproxy import base_config

    class Answer(Protocol):
        """The backend: 200 to the check."""

        def dataReceived(self, data):  # noqa: N802 - Twisted's name
            if data.endswith(b"\r\n\r\n"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    factory = Factory.forProtocol(Answer)
    backend = {}
    if tls:
        factory = TLSMemoryBIOFactory(tls_server_creator(tmp_path, "backend"), False, factory)
        backend["tls"] = {"verify": False}
    reactor = EPollReactor()  # its own: no fd of another test is registered here
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    backend["address"] = "127.0.0.1:%d" % port.getHost().port
    data = base_config(routes=[{"match": {"path": "/"}, "backends": [backend],
                                "health_check": {"path": "/hc", "interval": "1s"}}])
    balancer = make_balancer(reactor, parse_config(data, str(tmp_path)))
    balancer.start()
    looking = balancer.monitor.looking
    refs = []
    try:
        for _ in range(200):  # the first check starts at once, is answered, ends
            if not refs:
                refs = [weakref.ref(f.protocol_object) for f, _, _ in looking.values()
                        if f.protocol_object is not None]
            elif not looking and refs[0]() is None:
                break
            reactor.iterate(0.05)
        assert refs and balancer.backends[0].health.fails == 0
        assert [ref() for ref in refs] == [None]
    finally:
        balancer.stop()
        port.stopListening()


def test_a_reload_leaves_nothing_for_the_collector(tmp_path, no_gc):
    """A reload of a TLS listener leaves no reference cycle behind: pyOpenSSL makes each
    context's ALPN, SNI and info callbacks a cycle of its own (a helper and the closure that
    reports its errors), with a libffi closure each, and the daemon collects rarely
    (:mod:`proxyd.runtime`): an idle daemon grew by ~10 KB per reload until a full collection.
    The reload collects what it left; after it, the collector finds nothing."""
    from proxyd.config import parse_config
    from tests.support import make_certificate

    from memproxy import ServiceProxy, base_config

    cert = make_certificate(tmp_path, "server", dns=["localhost"])
    data = base_config(listen=[{"endpoint": "tcp:8443:interface=127.0.0.1",
                                "tls": {"cert": cert.cert_path, "key": cert.key_path},
                                "protocols": ["h2", "http/1.1"]}], workers=1)
    proxy = ServiceProxy(tmp_path, data)
    config = parse_config(data, str(tmp_path))
    assert proxy.service.reload(config)
    gc.collect()
    assert proxy.service.reload(config)
    assert gc.collect() == 0
