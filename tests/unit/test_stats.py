"""Tests of proxyd.stats: label classes from closed sets, histograms, the refusals API."""

import json

import pytest

from proxyd.stats import Histogram, Stats, counters_only, merge, method_class, status_class


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


def worker_snapshot(requests, seconds, version="1.0", open_conns=1, health=True):
    """A snapshot as a worker sends it (the network layer's part filled in by hand)."""
    stats = Stats()
    for _ in range(requests):
        stats.request_finished("tcp:8080", "h2", b"GET", 200, seconds)
    stats.backend_first_byte("b:1", seconds)
    if not health:
        stats.backend_failed("b:1")
    stats.refused("rate_limited")
    data = stats.snapshot()
    data.update(listeners={"tcp:8080": {"requests": requests, "received": 10, "sent": 20,
                                        "accepted": 1, "rate_limited": 1,
                                        "refused_connections": 0, "flood_closed": 0,
                                        "timeouts": 0, "open": {"h2": [open_conns, 2]}}},
                pools={"b:1": {"total": 2, "idle": 1, "busy": 1, "waiting": 0}},
                draining=False, version=version, process={"cpu_seconds": 1.5,
                                                          "resident_bytes": 1000})
    return json.loads(json.dumps(data))  # as it arrives through the pipe


def test_merge_adds_workers_up():
    """Counters, histograms and gauges are summed; a backend is up only if every worker says
    so; versions are counted per worker."""
    merged = merge([worker_snapshot(3, 0.01), worker_snapshot(2, 0.2, "1.1", health=False)])
    assert merged["requests"] == [["tcp:8080", "h2", "GET", "2xx", 5]]
    hist = merged["durations"]["h2"]
    assert hist["count"] == 5 and hist["sum"] == pytest.approx(0.43)
    assert dict(hist["buckets"])["0.01"] == 3 and dict(hist["buckets"])["+Inf"] == 5
    assert merged["backend_health"] == {"b:1": False}
    assert merged["refusals"]["rate_limited"] == 2
    listener = merged["listeners"]["tcp:8080"]
    assert (listener["requests"], listener["sent"], listener["open"]) == (5, 40, {"h2": [2, 4]})
    assert merged["pools"]["b:1"] == {"total": 4, "idle": 2, "busy": 2, "waiting": 0}
    assert merged["versions"] == {"1.0": 1, "1.1": 1}
    assert merged["process"] == {"cpu_seconds": 3.0, "resident_bytes": 2000}


def test_histograms_with_other_bounds_stay_cumulative():
    """Two versions with different bucket bounds: the sum is still non-decreasing and ends
    with every observation."""
    a = {"buckets": [["0.1", 1], ["1.0", 2], ["+Inf", 3]], "sum": 1.0, "count": 3}
    b = {"buckets": [["0.5", 4], ["+Inf", 5]], "sum": 2.0, "count": 5}
    merged = merge([{"durations": {"h2": a}}, {"durations": {"h2": b}}])["durations"]["h2"]
    assert merged["buckets"] == [["0.1", 1], ["0.5", 5], ["1.0", 6], ["+Inf", 8]]
    assert (merged["count"], merged["sum"]) == (8, 3.0)


def test_counters_of_exited_workers_are_kept_without_their_gauges():
    """What an exited worker counted stays in the daemon's totals (counters never go down);
    its open connections, pools, health and version do not."""
    gone = counters_only(worker_snapshot(4, 0.01))
    assert "pools" not in gone and "backend_health" not in gone
    assert gone["listeners"]["tcp:8080"].get("open") is None
    assert gone["process"] == {"cpu_seconds": 1.5}
    merged = merge([gone, worker_snapshot(1, 0.01)])
    assert merged["requests"] == [["tcp:8080", "h2", "GET", "2xx", 5]]
    assert merged["listeners"]["tcp:8080"]["open"] == {"h2": [1, 2]}
    assert merged["versions"] == {"1.0": 1} and merged["process"]["cpu_seconds"] == 3.0
    assert counters_only(merge([gone, gone]))["requests"] == [["tcp:8080", "h2", "GET", "2xx", 8]]
