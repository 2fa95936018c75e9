"""Review of the stall relief (proxyd.net.stallrelief): a request that waits for a backend gets
the connection of a stream whose client took nothing for 5 s; cases the first tests missed."""

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


def test_stalled_spdy2_and_http1_clients_are_relieved_and_unregistered(make_proxy):
    """Clients without flow control stall through their socket (write_paused): HTTP/1.1 is
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
