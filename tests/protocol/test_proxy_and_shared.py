"""PROXY protocol listeners and Redis-shared per-IP limits in memory: the client address of the
header reaches X-Forwarded-For, a connection without a valid header or from an untrusted peer is
closed, trusted_proxies decides whether X-Forwarded-For is extended; the shared limiter decides
at once, follows the store's answers, falls back to local limits on timeouts (its timer, its
backoff) and leaves no timer behind."""

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from memproxy import Proxy, base_config
from proxyd.config_routes import SharedLimits
from proxyd.net.sharedlimit import (HOLD, MAX_BACKOFF, REFRESH, TIMEOUT, RedisChannel,
                                   SharedConnections, SharedLimiter)
from proxyd.ratelimit import ConnectionCounter
from proxyd.proxyproto import encode_v1, encode_v2

BALANCER = "198.51.100.9"


def proxied(tmp_path, **sections):
    """A Proxy whose listener expects PROXY headers."""
    data = base_config(**sections)
    data["listen"][0]["proxy_protocol"] = True
    return Proxy(tmp_path, data)


def connect(proxy, peer=BALANCER):
    """A raw connection from ``peer`` through the listener's entrance (as the port would)."""
    addr = IPv4Address("TCP", peer, 50000)
    protocol = proxy.listener.entrance.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr, lenient=True)
    protocol.makeConnection(transport)
    return protocol, transport


def backend_headers(proxy):
    """The header fields of the request the backend received."""
    [request, _end] = proxy.backend().requests()
    return dict(request.headers)


def test_v1_and_v2_clients_reach_x_forwarded_for(tmp_path):
    """The header's source address is the client: X-Forwarded-For and the access log's IP."""
    proxy = proxied(tmp_path)
    for header, client in ((encode_v1(("203.0.113.7", 1234), ("127.0.0.1", 8080)), b"203.0.113.7"),
                           (encode_v2(("192.0.2.44", 999), ("127.0.0.1", 8080)), b"192.0.2.44")):
        protocol, transport = connect(proxy)
        protocol.dataReceived(header + b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1"
                                       b"\r\n\r\n")
        assert backend_headers(proxy)[b"x-forwarded-for"] == b"1.1.1.1, " + client
        assert protocol.wrappedProtocol.client_ip == client
        assert not transport.disconnecting


def test_header_in_pieces_then_h2(tmp_path):
    """The header may arrive byte by byte; the bytes after it go to the codec (h2 preface)."""
    proxy = proxied(tmp_path)
    protocol, transport = connect(proxy)
    for byte in encode_v2(("192.0.2.1", 1), ("127.0.0.1", 2)):
        protocol.dataReceived(bytes([byte]))
    protocol.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert protocol.wrappedProtocol.codec.protocol == "h2" and not transport.disconnecting


def test_no_header_closes_the_connection(tmp_path):
    """A client that speaks HTTP straight away is closed on its first bytes; a silent one when
    frontend_header runs out. Both are counted as proxy_header refusals."""
    proxy = proxied(tmp_path)
    protocol, transport = connect(proxy)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.disconnecting and protocol.wrappedProtocol is None and proxy.connects == 0
    protocol, transport = connect(proxy)
    protocol.dataReceived(b"PROXY TCP4 ")
    proxy.advance(15)
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert proxy.listener.refusals["proxy_header"] == 2
    assert not proxy.reactor.getDelayedCalls()


def test_untrusted_peer_is_closed_and_xff_trust(tmp_path):
    """With trusted_proxies, a peer outside them is closed at once; a client inside them has its
    X-Forwarded-For extended, any other client's is replaced."""
    proxy = proxied(tmp_path, trusted_proxies=["198.51.100.0/24", "203.0.113.7"])
    _, transport = connect(proxy, peer="192.0.2.99")
    assert transport.disconnecting and proxy.listener.refusals["untrusted_proxy"] == 1
    for client, expected in (("203.0.113.7", b"1.1.1.1, 203.0.113.7"),
                             ("203.0.113.8", b"203.0.113.8")):
        protocol, _ = connect(proxy)
        protocol.dataReceived(encode_v1((client, 1), ("127.0.0.1", 2)) + b"GET / HTTP/1.1\r\n"
                              b"Host: x\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n")
        assert backend_headers(proxy)[b"x-forwarded-for"] == expected


FORWARDING = (b"X-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n"
              b"X-Forwarded-Server: evil\r\nX-Forwarded-Prefix: /admin\r\n"
              b"X-Real-IP: 6.6.6.6\r\nX_Forwarded_Host: evil.example\r\nX-Real_IP: 6.6.6.7\r\n")


def test_untrusted_clients_forwarding_headers_are_dropped(tmp_path):
    """With trusted_proxies, the forwarding headers a proxy chain sets and applications trust
    (X-Forwarded-Host, -Port, -Server, -Prefix, X-Real-IP; any spelling with ``_``) come through
    only from a trusted proxy: an untrusted client's would let it choose the host an app builds
    its links with (password-reset poisoning), or the address an app allows or rate-limits."""
    proxy = proxied(tmp_path, trusted_proxies=["198.51.100.0/24", "203.0.113.7"])
    names = {b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-server",
             b"x-forwarded-prefix", b"x-real-ip", b"x_forwarded_host", b"x-real_ip"}
    for client, kept in (("203.0.113.7", names), ("203.0.113.8", set())):
        protocol, _ = connect(proxy)
        protocol.dataReceived(encode_v1((client, 1), ("127.0.0.1", 2)) + b"GET / HTTP/1.1\r\n"
                              b"Host: x\r\n" + FORWARDING + b"X-Other: kept\r\n\r\n")
        headers = backend_headers(proxy)
        assert names & set(headers) == kept, client
        assert headers[b"x-other"] == b"kept" and headers[b"x-forwarded-for"]


class FakeRedis:
    """Records eval calls; each returns a Deferred the test fires."""

    def __init__(self):
        self.calls = []
        self.disconnected = False

    def eval(self, script, keys, args):
        d = defer.Deferred()
        self.calls.append((keys, args, d))
        return d

    def disconnect(self):
        self.disconnected = True
        return defer.succeed(None)


SETTINGS = SharedLimits(redis="redis://127.0.0.1:6379/0", host="127.0.0.1", port=6379)


def test_shared_limiter_follows_redis_and_falls_back():
    """Decisions never wait; answers correct the local view; a timeout marks Redis down (one
    fallback each), no calls during the backoff, one probe after it, recovery on an answer."""
    clock, redis = task.Clock(), FakeRedis()
    channel = RedisChannel(clock, SETTINGS, client=redis)
    limiter = SharedLimiter(channel, rate=1, burst=2)
    assert limiter.allow(b"ip", clock.seconds()) == (True, 0.0)
    keys, args, d = redis.calls[-1]
    assert keys == ["proxyd:rpi:ip"] and args == ["1.0", "2.0", 1]
    d.callback(b"-1")  # another instance used the budget
    assert limiter.allow(b"ip", clock.seconds())[0] is False
    redis.calls[-1][2].callback(b"-1")
    assert redis.calls[-1][1][2] == 0  # a refused request only refreshes
    limiter.allow(b"other", clock.seconds())
    clock.advance(TIMEOUT)  # no answer in time
    assert not channel.up and channel.fallbacks["timeout"] == 1
    calls = len(redis.calls)
    assert limiter.allow(b"new", clock.seconds())[0] is True  # local budget
    assert len(redis.calls) == calls and channel.fallbacks["down"] == 1
    clock.advance(1.0)  # the backoff is over: the next spend probes Redis
    limiter.allow(b"new", clock.seconds())
    assert len(redis.calls) == calls + 1
    redis.calls[-1][2].callback(b"0")
    assert channel.up and channel.in_flight == 0
    assert not clock.getDelayedCalls()


def test_shared_limiter_backoff_and_close():
    """Errors double the backoff up to its cap; close() cancels the timers and disconnects."""
    clock, redis = task.Clock(), FakeRedis()
    channel = RedisChannel(clock, SETTINGS, client=redis)
    limiter = SharedLimiter(channel, rate=10, burst=10)
    for _ in range(6):
        clock.advance(channel.backoff)
        limiter.allow(b"ip", clock.seconds())
        redis.calls[-1][2].errback(ConnectionError("refused"))
    assert channel.backoff == MAX_BACKOFF and channel.fallbacks["error"] == 6
    clock.advance(MAX_BACKOFF)
    limiter.allow(b"ip", clock.seconds())
    assert clock.getDelayedCalls()
    channel.close()
    assert not clock.getDelayedCalls() and redis.disconnected


def test_shared_connection_counts():
    """Connections per IP: this instance's count goes to Redis on every change; the fleet's
    total comes back and the others' share counts against max_connections_per_ip at once; live
    counts are rewritten every REFRESH (their deadline is HOLD); Redis gone: local counts only."""
    clock, redis = task.Clock(), FakeRedis()
    channel = RedisChannel(clock, SETTINGS, client=redis)
    counter = ConnectionCounter(0, 3)
    counter.fleet = SharedConnections(channel, counter, instance="me")
    assert counter.try_open(b"ip")
    keys, args, d = redis.calls[-1]
    assert keys == ["proxyd:conn:ip"] and args == ["me", 1, int(HOLD * 1000)]
    d.callback(3)  # two more at other instances
    assert not counter.try_open(b"ip")  # 1 here + 2 elsewhere = the limit
    assert counter.try_open(b"other")
    redis.calls[-1][2].callback(1)
    counter.close(b"other")
    assert redis.calls[-1][1] == ["me", 0, int(HOLD * 1000)]
    redis.calls[-1][2].callback(0)
    clock.advance(REFRESH)  # the live count of b"ip" is rewritten
    assert redis.calls[-1][0] == ["proxyd:conn:ip"] and redis.calls[-1][1][1] == 1
    clock.advance(TIMEOUT)  # ...and Redis does not answer: each instance counts alone
    assert not channel.up and counter.try_open(b"ip")
    counter.fleet.close()
    channel.close()
    assert not clock.getDelayedCalls()
