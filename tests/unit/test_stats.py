"""Tests of proxyd.stats: label classes from closed sets, histograms, the refusals API."""

import json

import pytest

from proxyd.stats import Histogram, Stats, method_class, status_class


@pytest.mark.parametrize("method, expected", [
    (b"GET", "GET"), (b"POST", "POST"), (b"OPTIONS", "OPTIONS"), (b"get", "other"),
    (b"BREW", "other"), (b'G"ET\n', "other"),
])
def test_method_class_is_a_closed_set(method, expected):
    """Common methods keep their name; anything else a client invents is "other"."""
    assert method_class(method) == expected


@pytest.mark.parametrize("status, expected", [
    (100, "1xx"), (200, "2xx"), (304, "3xx"), (499, "4xx"), (503, "5xx"), (0, "none"),
    (600, "none"),
])
def test_status_class(status, expected):
    """Statuses are counted by class; no status at all (a reset) is "none"."""
    assert status_class(status) == expected


def test_histogram_buckets_are_cumulative():
    """Values land in the first bucket whose bound is >= the value; +Inf takes the rest."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(2.65)


def test_refusal_reasons_are_registered_or_other():
    """refused() counts registered reasons by name and anything else as "other"; reasons must
    look like identifiers, so no text from a request can become a label."""
    stats = Stats()
    stats.register_reasons("bad_header_value")
    stats.refused("bad_header_value")
    stats.refused("GET /admin HTTP/1.1")
    stats.refused("rate_limited")
    assert stats.refusals["bad_header_value"] == 1
    assert stats.refusals["other"] == 1 and stats.refusals["rate_limited"] == 1
    with pytest.raises(ValueError):
        stats.register_reasons('evil"label')


def test_requests_and_snapshot():
    """Finished requests are counted by (listener, protocol, method class, status class); the
    snapshot is plain data."""
    stats = Stats()
    stats.request_finished("tcp:8080", "h2", b"GET", 200, 0.01)
    stats.request_finished("tcp:8080", "h2", b"PURGE", 502, 0.02)
    stats.backend_first_byte("127.0.0.1:8081", 0.003)
    stats.backend_failed("127.0.0.1:8082")
    stats.reloaded(False)
    snap = stats.snapshot()
    assert sorted(snap["requests"]) == [["tcp:8080", "h2", "GET", "2xx", 1],
                                        ["tcp:8080", "h2", "other", "5xx", 1]]
    assert json.loads(json.dumps(snap)) == snap
    assert snap["durations"]["h2"]["count"] == 2
    assert snap["backend_health"] == {"127.0.0.1:8081": True, "127.0.0.1:8082": False}
    assert snap["reloads"] == {"ok": 0, "failed": 1} and snap["last_reload_ok"] is False
