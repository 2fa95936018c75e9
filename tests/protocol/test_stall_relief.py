"""The stall relief (proxyd.net.stallrelief) through the whole in-memory proxy: a request that
waits for a backend gets the connection (or HTTP/2 stream, see test_backend_h2.py) of a stream
whose client took nothing for 5 s, one per waiting request, longest-stalled first; without
waiters, or while proxyd's own write limits hold a stream back, nothing is ended."""

import h2.events
import h2.settings

from memproxy import BACKEND

IWS = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
HEAD_1000 = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"


def resets_of(events):
    """``(stream id, error code)`` of the RST_STREAMs among h2 client events."""
    return [(e.stream_id, e.error_code) for e in events if isinstance(e, h2.events.StreamReset)]


def statuses(events):
    """``(stream id, :status)`` of the response heads among h2 client events."""
    return [(e.stream_id, dict(e.headers)[b":status"]) for e in events
            if isinstance(e, h2.events.ResponseReceived)]


def test_a_request_that_waited_before_the_stall_began_is_relieved(make_proxy):
    """The relief only looked when a request was queued (``contended``): a request that queued
    while the pool's holder was still awaiting its response head, whose client then stopped
    reading, waited until its own read timeout (504) although the holder stalled for 5 s. A
    stall that begins while requests wait must schedule the check too."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}],
                       timeouts={"backend_read": "30s"})
    hog = proxy.h2_client({IWS: 0})
    hogged = hog.request(path=b"/big")
    backend = proxy.backend(0)
    other = proxy.h2_client()
    sid = other.request(path=b"/small")
    assert proxy.connects == 1  # it waits; nobody is stalled yet
    backend.respond(HEAD_1000 + b"a" * 300)  # now the hog's stream stalls
    hog.pump()
    proxy.advance(5.1)
    assert resets_of(hog.pump()) == [(hogged, 8)]
    backend.finish_close()
    assert proxy.connects == 2
    proxy.backend(1).respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert statuses(other.pump()) == [(sid, b"200")]


def test_each_waiter_ends_one_stalled_stream_not_one_per_check(make_proxy):
    """One per waiting request: a preempted HTTP/1.1 connection is aborted and comes back to
    the pool only when it is lost (a reactor turn later), so a second request queued meanwhile
    found two waiters and ended two more stalled streams: three streams ended for two waiters."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 3}])
    hog = proxy.h2_client({IWS: 0})
    hogged = [hog.request(path=b"/big") for _ in range(3)]
    for i in range(3):
        proxy.backend(i).respond(HEAD_1000 + b"a" * 300)
    hog.pump()
    proxy.advance(6)
    other = proxy.h2_client()
    other.request(path=b"/small")
    assert resets_of(hog.pump()) == [(hogged[0], 8)]
    other.request(path=b"/small")  # before the first freed connection is lost
    ended = resets_of(hog.pump())
    assert len(ended) == 1, f"{ended}: two waiters ended {1 + len(ended)} stalled streams"
    assert not proxy.backend(2).transport.disconnecting


def test_a_stream_paced_by_its_route_write_limit_is_not_a_stalled_client(make_proxy):
    """A route's write limit holds the response (here 16 s until the next 16 KiB chunk) while
    the client reads everything it gets: proxyd's own pacing, not a client that stopped
    reading. Under contention it was reset as client_stalled after 5 s."""
    limited = {"match": {"path": "/slow/"},
               "backends": [{"address": BACKEND, "max_connections": 1}],
               "rate_limits": {"write": {"rate": "1KiB", "burst": "16KiB"}}}
    proxy = make_proxy(routes=[limited], timeouts={"backend_read": "30s"})
    reader = proxy.h2_client()
    sid = reader.request(path=b"/slow/file")
    backend = proxy.backend(0)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n" + b"x" * 40000)
    reader.pump()  # the client takes every byte it is sent
    other = proxy.h2_client()
    other.request(path=b"/slow/other")
    assert proxy.connects == 1  # it waits
    for _ in range(8):
        proxy.advance(1)
        assert resets_of(reader.pump()) == [], "a paced stream was reset as client_stalled"
    assert not backend.transport.disconnecting
    assert sid


def test_a_stalled_http1_client_is_closed_and_unregistered(make_proxy):
    """A client without flow control stalls through its socket (write_paused): HTTP/1.1 is
    closed, the freed connection serves the waiter, and no relay stays registered."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}])
    c = proxy.h1_client()
    c.write(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")
    c.protocol.pauseProducing()  # its socket is full
    backend = proxy.backend(0)
    backend.respond(HEAD_1000 + b"a" * 300)
    relief = proxy.balancer.backends[0].relief
    assert len(relief.stalled) == 1
    other = proxy.h2_client()
    sid = other.request(path=b"/small")
    proxy.advance(5.1)
    assert c.closing and not relief.stalled
    backend.finish_close()
    proxy.backend(1).respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert statuses(other.pump()) == [(sid, b"200")]
    c.finish_close()
    assert not relief.stalled and relief._call is None


def test_a_stream_paced_by_the_connection_write_limit_is_not_a_stalled_client(make_proxy):
    """``rate_limits.write`` (the client connection's) holds the response while the client
    reads everything it gets: under contention that is not a stalled client either."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}],
                       rate_limits={"read": {"rate": 0},
                                    "write": {"rate": "1KiB", "burst": "16KiB"}},
                       timeouts={"backend_read": "30s"})
    reader = proxy.h2_client()
    reader.request(path=b"/file")
    backend = proxy.backend(0)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n" + b"x" * 40000)
    reader.pump()
    assert reader.protocol.write_paused  # proxyd's pacing, the client took every byte
    backend.respond(b"y" * 1000)  # held: the stream is BLOCKED by the pacing
    assert len(proxy.balancer.backends[0].relief.stalled) == 1
    other = proxy.h2_client()
    other.request(path=b"/other")
    for _ in range(8):
        proxy.advance(1)
        assert resets_of(reader.pump()) == [], "a paced stream was reset as client_stalled"
    assert not backend.transport.disconnecting


def test_stalled_clients_give_their_backend_connections_to_waiting_requests(make_proxy):
    """One client with zero windows held a backend's whole pool (here 2 connections) until
    frontend_idle (60 s) while other clients waited, and could reconnect to do it again. Once a
    request waits, the exchange stalled longest gives its connection up after 5 s without a byte
    taken (its stream reset CANCEL, the connection dropped), one per waiting request; the waiting
    request is served on a new connection."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 2}])
    hog = proxy.h2_client({IWS: 0})
    hogged = [hog.request(path=b"/big"), hog.request(path=b"/big")]
    for i in range(2):
        proxy.backend(i).respond(HEAD_1000 + b"a" * 300)
    hog.pump()
    proxy.advance(4)  # nobody waits yet: stalling is allowed
    other = proxy.h2_client()
    sid = other.request(path=b"/small")
    assert proxy.connects == 2  # the pool is full: it waits
    proxy.advance(0.9)
    assert not resets_of(hog.pump())
    proxy.advance(0.2)  # 5.1 s since the hog's streams stalled
    assert resets_of(hog.pump()) == [(hogged[0], 8)]
    assert proxy.backend(0).transport.disconnecting
    assert not proxy.backend(1).transport.disconnecting  # one waiter: one connection given up
    proxy.backend(0).finish_close()
    assert proxy.connects == 3
    proxy.backend(2).respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [(e.stream_id, e.headers[0]) for e in other.pump()
            if isinstance(e, h2.events.ResponseReceived)] == [(sid, (b":status", b"200"))]


def test_stalled_clients_keep_their_connections_while_nobody_waits(make_proxy):
    """Without contention a stalled stream keeps its connection (frontend_idle applies, as
    before); a client that takes bytes again is no longer a stalled holder, so a request that
    waits later does not end it."""
    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}])
    hog = proxy.h2_client({IWS: 0})
    first = hog.request(path=b"/big")
    proxy.backend(0).respond(HEAD_1000 + b"a" * 300)
    hog.pump()
    relief = proxy.balancer.backends[0].relief
    assert len(relief.stalled) == 1
    proxy.advance(30)
    assert not resets_of(hog.pump())
    hog.h2.increment_flow_control_window(300, stream_id=first)
    hog.flush()
    hog.pump()
    assert not relief.stalled
    other = proxy.h2_client()
    other.request(path=b"/small")
    proxy.advance(6)
    assert not resets_of(hog.pump())
    assert not proxy.backend(0).transport.disconnecting and proxy.connects == 1
