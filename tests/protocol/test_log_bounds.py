"""What a client can make proxyd write to its own log (not the access log), through the whole
in-memory proxy.

Strategy: a client repeats something that proxyd refuses or ends (a head the gate refuses, a
request over ``requests_per_ip``, a connection that breaks HTTP/1.1 framing) hundreds of times
while the clock stands still, and the test counts the lines of proxyd's log
(:func:`memproxy.logged`) against what the access log and the metrics count. Every such line is one
a client chooses to have written: at its request rate they fill the disk (twistd's log file keeps
every rotated megabyte) or the journal's rate limit (10,000 lines in 30 s per service by default),
which then drops proxyd's own warnings (a backend down, a failed reload). nginx logs these at
``info`` (off by default), nghttpx at ``INFO`` (below its default ``NOTICE``).
"""

import h2.events

from memproxy import logged
from proxyd.ratelimit import KeyedLimiter

#: Lines of one kind a client may get written while the clock stands still; a few, so that the
#: first errors of a client stay visible, never one per request.
FEW = 20


def test_refused_heads_get_a_few_log_lines_not_one_each(proxy):
    """1000 HTTP/2 heads the gate refuses (``:path`` with a control byte), 200 on each of five
    connections (more on one get GOAWAY), within one second: every one is counted for the
    metrics, but proxyd's log gets at most a few ``request refused`` lines (it got one per
    head). A second later the next refusal is logged again, after a line that says how many
    were held back."""
    with logged() as lines:
        for _ in range(5):
            c = proxy.h2_client(raw=True)
            for _ in range(200):
                c.request(path=b"/\x01")
                c.pump()
        refused = [line for line in lines if "request refused" in line]
        assert proxy.listener.refusals["bad_target"] == 1000
        assert 1 <= len(refused) <= FEW, f"{len(refused)} lines for 1000 refused heads"
        proxy.advance(2)
        c.request(path=b"/\x01")
        c.pump()
    assert "request refused" in lines[-1]
    held = 1000 - len(refused)
    assert any(f"{held} lines about clients" in line for line in lines), lines[-3:]


def test_rate_limited_requests_get_a_few_log_lines_not_one_each(proxy):
    """``requests_per_ip`` refuses 299 of 300 requests of one client with 429: the limiter that
    is there to shed a flood must not write a log line per request it sheds (it did: ``stream
    N: rate_limited (too many requests)`` each)."""
    proxy.listener.hub.requests_per_ip = KeyedLimiter(1, 1)
    c = proxy.h2_client()
    statuses = []
    with logged() as lines:
        for _ in range(300):
            c.request(path=b"/")
            statuses += [dict(e.headers)[b":status"] for e in c.pump()
                         if isinstance(e, h2.events.ResponseReceived)]
    assert statuses.count(b"429") == 299
    limited = [line for line in lines if "rate_limited" in line]
    assert 1 <= len(limited) <= FEW, f"{len(limited)} lines for 299 refused requests"


def test_broken_http1_connections_get_a_few_log_lines_not_one_each(proxy):
    """300 connections that each send a request line llhttp refuses: 300 answers of 400, but a
    few ``connection error`` lines in proxyd's log, as for connections refused over
    ``max_connections`` (one line a second), not one per connection."""
    with logged() as lines:
        for _ in range(300):
            c = proxy.h1_client()
            c.write(b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.read().startswith(b"HTTP/1.1 400 ")
            c.finish_close()
    broken = [line for line in lines if "connection error" in line]
    assert proxy.listener.refusals["bad_framing"] == 300
    assert 1 <= len(broken) <= FEW, f"{len(broken)} lines for 300 broken connections"
