"""PROXY protocol on the wire: read it in front of a listener, send v2 to a backend group.

Strategy: a ``proxy_protocol`` listener's :class:`~proxyd.net.factory.Entrance` builds a
:class:`ProxyHeaderReceiver` for each connection instead of the frontend. The receiver sits
*outside* TLS (the header comes before the handshake): it checks the peer against
``trusted_proxies``, reads the header with the pure :func:`proxyd.proxyproto.parse`, and only
then builds the real protocol (the TLS wrapper, or the frontend itself) with the client address
from the header, and hands it the bytes that followed. As the inner protocol's transport it
answers ``getPeer()`` with that address, so the frontend, the access log, X-Forwarded-For, the
per-IP limits and the metrics all see the client, not the balancer. A peer that is not trusted,
bytes that are not a header, or no header within ``timeouts.frontend_header`` close the
connection (counted as refusals ``untrusted_proxy`` and ``proxy_header``); the timer dies with
the connection. LOCAL (v2) and UNKNOWN (v1) headers keep the balancer as the client.

:class:`ProxyHeaderBackend` is the HTTP/1.1 pool of a route with ``proxy_protocol: true``: each
backend connection starts with a v2 header naming the client it was opened for, so it is never
reused for another request (its exchange over, it is closed).
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import directlyProvides, providedBy

from proxyd import proxyproto
from proxyd import stats
from proxyd.net.backend import Backend

log = Logger(namespace="proxyd.proxyheader")
stats.register_reasons("proxy_header", "untrusted_proxy")


def _address(endpoint):
    host, port = endpoint
    cls = IPv6Address if ":" in host else IPv4Address
    return cls("TCP", host, port)


class ProxyHeaderReceiver(ProtocolWrapper):
    """One connection of a ``proxy_protocol`` listener, until and after its PROXY header."""

    def __init__(self, listener, target, addr):
        super().__init__(None, None)
        self.listener = listener
        self.target = target
        self.peer = addr
        self.proxied_peer = None
        self.proxied_host = None
        self.header = None
        self._buffer = b""
        self._timer = None

    def logPrefix(self):
        return "proxyd"

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        self.connectionMade()

    def connectionMade(self):
        listener = self.listener
        host = getattr(self.peer, "host", "")
        if listener.trusted_proxies and not listener.trusts(host):
            self._refuse("untrusted_proxy", f"{host} is not in trusted_proxies")
            return
        self._timer = listener.clock.callLater(listener.timeouts.frontend_header, self._timeout)

    def _refuse(self, reason, detail):
        self.header = False
        self._cancel_timer()
        self.listener.count_refusal(reason)
        self.listener.note_refused_header(detail, getattr(self.peer, "host", "?"))
        self.transport.abortConnection()

    def _timeout(self):
        self._timer = None
        if self.header is None:
            self._refuse("proxy_header", "no PROXY header in time")

    def dataReceived(self, data):
        inner = self.wrappedProtocol
        if inner is not None:
            inner.dataReceived(data)
            return
        if self.header is not None:  # refused already; the abort is on its way
            return
        self._buffer += data
        try:
            header, used = proxyproto.parse(self._buffer)
        except proxyproto.ProxyHeaderError as error:
            self._refuse("proxy_header", str(error))
            return
        if header is None:
            return
        self.header = header
        self._cancel_timer()
        rest, self._buffer = self._buffer[used:], b""
        if header.source is not None:
            self.proxied_peer = _address(header.source)
            self.proxied_host = _address(header.destination)
        inner = self.target.buildProtocol(self.getPeer())
        if inner is None:
            self.transport.abortConnection()
            return
        self.wrappedProtocol = inner
        inner.makeConnection(self)
        if rest and self.wrappedProtocol is not None and self.transport.connected:
            inner.dataReceived(rest)

    def getPeer(self):
        """The client: the header's source address, else the connection's own peer."""
        return self.proxied_peer or self.transport.getPeer()

    def getHost(self):
        """The header's destination address, else the connection's own local address."""
        return self.proxied_host or self.transport.getHost()

    def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason=None):
        self.connected = 0
        self._cancel_timer()
        inner, self.wrappedProtocol = self.wrappedProtocol, None
        if inner is not None:
            inner.connectionLost(reason)


class ProxyHeaderBackend(Backend):
    """An HTTP/1.1 backend that gets a PROXY v2 header on every connection (one client each)."""

    def _connected(self, conn, stream):
        transport = stream.frontend.transport
        try:
            peer, host = transport.getPeer(), transport.getHost()
            header = proxyproto.encode_v2((peer.host, peer.port), (host.host, host.port))
        except (AttributeError, ValueError):  # not TCP (a unix socket): no client to name
            header = proxyproto.encode_v2()
        conn.transport.write(header)
        super()._connected(conn, stream)

    def release(self, conn):
        """The exchange is over: the connection named its client, so it is not reused (closed
        as every backend connection is: :meth:`proxyd.net.backend.BackendConnection.lose`)."""
        conn.lose()
