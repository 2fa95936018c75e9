"""Counters and histograms of one proxyd process, for the metrics endpoint (pure, no I/O).

Strategy: the hot path pays a dictionary increment or a ``bisect`` per finished request, never a
lock or a library call; :mod:`proxyd.net.metrics` turns a snapshot of these numbers into
Prometheus families when scraped (prometheus_client writes and escapes the text). Every label
value recorded here comes from a closed set (protocol names, method and status classes,
refusal reasons) or from the configuration (listener endpoints, backend addresses), never from
a client's bytes.

With worker processes each worker keeps its own :class:`Stats`; :meth:`Stats.snapshot` is plain
JSON-able data, the network layer adds what its objects count (:func:`proxyd.net.metrics.snapshot`)
and the supervisor adds the workers' snapshots up with :func:`merge` to serve one endpoint:
counters and histograms are summed, and so are gauges (open connections, pool sizes), a backend
is up only if no worker saw its last connect fail, and :func:`counters_only` keeps the counters of
a worker that exited so that the daemon's totals never go down.

Refusals: every reason of the errors table (:data:`proxyd.errors.OUTCOMES`) is registered from
the start (the gate's refusals arrive through ``Listener.count_refusal``). For other places that
turn a request or a connection away::

    from proxyd import stats
    stats.register_reasons("bad_header_value", "smuggling_te")   # once, at import time
    stats.refused("bad_header_value")                           # per refusal

A reason must be a constant of the code (lower-case letters, digits and ``_``), registered
before use; an unregistered reason is counted as ``other``, so a caller can never put arbitrary
text into a label.
"""

import bisect
import re

from proxyd.errors import OUTCOMES

# Methods counted under their own name; anything else is "other".
METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                     b"CONNECT", b"TRACE"))
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Seconds; request durations range from sub-millisecond cache hits to long downloads.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0)
# Refusals counted by the network layer itself (see proxyd.net.metrics for their sources).
BUILTIN_REASONS = ("rate_limited", "max_connections", "flood", "frontend_timeout")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,62}")


_METHOD_CLASS = {method: method.decode("ascii") for method in METHODS}
_STATUS_CLASS = {status: STATUS_CLASSES[status // 100 - 1] for status in range(100, 600)}


def method_class(method):
    """``GET``, ``POST``, ... for the common methods, ``other`` for the rest."""
    return _METHOD_CLASS.get(method, "other")


def status_class(status):
    """``2xx`` and friends; ``none`` when no status was sent (e.g. a reset before the head)."""
    return _STATUS_CLASS.get(status, "none")


class Histogram:
    """Fixed buckets (upper bounds), a sum and a count: Prometheus' histogram, minus the lock."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds=DURATION_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self):
        """[(upper bound as text, cumulative count)], ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class Stats:
    """The numbers of one process that are not kept by the objects they describe."""

    def __init__(self):
        self.requests = {}    # (listener, protocol, method class, status class) -> count
        self.durations = {}   # protocol -> Histogram of request seconds
        self.first_byte = {}  # backend address -> Histogram of seconds to the response head
        self.backend_health = {}  # backend address -> False after a failed connect, True after
        #                           a response head
        # The closed set: the network layer's own reasons and every row of the errors table.
        self.refusals = dict.fromkeys((*BUILTIN_REASONS, *OUTCOMES), 0)
        self.refusals["other"] = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_ok = True

    def request_finished(self, listener, protocol, method, status, seconds):
        """A stream finished (any outcome): count it and record its duration."""
        key = (listener, protocol, _METHOD_CLASS.get(method, "other"),
               _STATUS_CLASS.get(status, "none"))
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(protocol)
        if histogram is None:
            histogram = self.durations[protocol] = Histogram()
        histogram.observe(seconds)

    def backend_first_byte(self, backend, seconds):
        """A backend's response head arrived ``seconds`` after the request was sent."""
        histogram = self.first_byte.get(backend)
        if histogram is None:
            histogram = self.first_byte[backend] = Histogram()
        histogram.observe(seconds)
        self.backend_health[backend] = True

    def backend_failed(self, backend):
        """Connecting to ``backend`` failed (passive health: down until it answers again)."""
        self.backend_health[backend] = False

    def refused(self, reason):
        """Count one refusal; ``reason`` must be registered (else it counts as ``other``)."""
        key = reason if reason in self.refusals else "other"
        self.refusals[key] += 1

    def register_reasons(self, *reasons):
        """Add refusal reasons to the closed set (names of the code, not client input)."""
        for reason in reasons:
            if not _REASON.fullmatch(reason):
                raise ValueError(f"refusal reason {reason!r} must match {_REASON.pattern}")
            self.refusals.setdefault(reason, 0)

    def reloaded(self, ok):
        """Count a reload attempt and remember whether the last one applied."""
        self.reloads["ok" if ok else "failed"] += 1
        self.last_reload_ok = ok

    def snapshot(self):
        """Plain data (dicts, lists, strings, numbers: JSON) of everything above, e.g. to send
        between processes. ``requests`` is a list of ``[listener, protocol, method, code,
        count]``."""
        def hist(h):
            return {"buckets": [list(b) for b in h.cumulative()], "sum": h.sum, "count": h.count}

        return {
            "requests": [[*key, count] for key, count in self.requests.items()],
            "durations": {k: hist(h) for k, h in self.durations.items()},
            "first_byte": {k: hist(h) for k, h in self.first_byte.items()},
            "backend_health": dict(self.backend_health),
            "refusals": dict(self.refusals),
            "reloads": dict(self.reloads),
            "last_reload_ok": self.last_reload_ok,
        }


def _merge_histograms(a, b):
    """Two snapshot histograms added up (bounds matched by label; a bound one side lacks counts
    what that side has at its largest bound below it, so the sum stays cumulative)."""
    def at(hist, bound):
        best = 0
        for label, count in hist["buckets"]:
            if label == "+Inf" or (bound != "+Inf" and float(label) > float(bound)):
                if label == bound:
                    best = count
                break
            best = count
        return best

    labels = sorted({label for h in (a, b) for label, _ in h["buckets"]},
                    key=lambda label: float("inf") if label == "+Inf" else float(label))
    return {"buckets": [[label, at(a, label) + at(b, label)] for label in labels],
            "sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}


def _add_counts(into, more):
    for key, value in more.items():
        if isinstance(value, dict):
            _add_counts(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            current = into.setdefault(key, [0] * len(value))
            into[key] = [x + y for x, y in zip(current, value)]
        else:
            into[key] = into.get(key, 0) + value


def merge(snapshots):
    """One snapshot of the whole daemon from the snapshots of its workers (see above)."""
    merged = {"requests": [], "durations": {}, "first_byte": {}, "backend_health": {},
              "refusals": {}, "reloads": {"ok": 0, "failed": 0}, "last_reload_ok": True,
              "listeners": {}, "pools": {}, "draining": False, "versions": {}, "process": {}}
    requests = {}
    for snap in snapshots:
        for *key, count in snap.get("requests", ()):
            requests[tuple(key)] = requests.get(tuple(key), 0) + count
        for family in ("durations", "first_byte"):
            for key, hist in snap.get(family, {}).items():
                known = merged[family].get(key)
                merged[family][key] = hist if known is None else _merge_histograms(known, hist)
        for address, up in snap.get("backend_health", {}).items():
            merged["backend_health"][address] = merged["backend_health"].get(address, True) and up
        for family in ("refusals", "reloads", "listeners", "pools", "process", "shared_limits"):
            if family in snap:
                _add_counts(merged.setdefault(family, {}), snap[family])
        merged["last_reload_ok"] = merged["last_reload_ok"] and snap.get("last_reload_ok", True)
        merged["draining"] = merged["draining"] or snap.get("draining", False)
        for version, count in snap.get("versions", {snap.get("version"): 1}).items():
            if version is not None:
                merged["versions"][version] = merged["versions"].get(version, 0) + count
    merged["requests"] = [[*key, count] for key, count in requests.items()]
    return merged


def counters_only(snapshot):
    """What of a snapshot still counts once its process is gone: counters and histograms,
    without gauges (open connections, pools, health) or versions."""
    listeners = {endpoint: {k: v for k, v in fields.items() if k != "open"}
                 for endpoint, fields in snapshot.get("listeners", {}).items()}
    return {"requests": snapshot.get("requests", []), "durations": snapshot.get("durations", {}),
            "first_byte": snapshot.get("first_byte", {}), "refusals": snapshot.get("refusals", {}),
            "listeners": listeners, "versions": {},
            "process": {"cpu_seconds": snapshot.get("process", {}).get("cpu_seconds", 0.0)},
            **({"shared_limits": {"fallbacks": snapshot["shared_limits"].get("fallbacks", {})}}
               if "shared_limits" in snapshot else {})}


# The process's numbers; the gate and the network layer count here.
PROCESS = Stats()


def refused(reason):
    """Count one refusal of ``reason`` in this process (see the module docstring)."""
    PROCESS.refused(reason)


def register_reasons(*reasons):
    """Register refusal reasons for this process (see the module docstring)."""
    PROCESS.register_reasons(*reasons)
