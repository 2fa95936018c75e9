"""What routing costs per request, measured in memory (no sockets, no event loop noise).

Strategy: the in-memory proxy of the protocol tests (tests/protocol/memproxy.py: a Listener on
a MemoryReactorClock, StringTransports on both sides) relays N keep-alive HTTP/1.1 requests and
their responses; the CPU time per request is the cost of proxyd's own per-request path (gate,
routing, relay, codecs). Run it from two checkouts to compare (it works on trees without
routes, too), and the route lookup alone for a table of many routes:

    python bench/routing_cost.py                      # default single-backend config
    python bench/routing_cost.py --routes 50          # 50 routes (exact, wildcard, any host)
    PYTHONPATH=/path/to/other/checkout python /path/to/other/checkout/bench/routing_cost.py

Prints µs per request (median of --repeat runs) and, deterministic where timings on a shared
2-core machine are not, the Python function calls per request (``sys.setprofile``).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "protocol")]

from memproxy import Proxy, base_config  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def routes(n):
    """``n`` routes of every kind; none of them matches the benchmark's host."""
    out = []
    for i in range(n):
        host = (f"app{i}.example.com", f"*.zone{i}.example.com", None)[i % 3]
        out.append({"match": {"host": host, "path": f"/svc{i}/"} if host else
                    {"path": f"/svc{i}/"}, "backends": [{"address": f"127.0.0.1:{9000 + i}"}]})
    return out


def relay(requests, n_routes, profile=None):
    """CPU seconds per request for ``requests`` keep-alive requests through the proxy
    (``profile``: a sys.setprofile function active during the requests)."""
    sections = {"routes": routes(n_routes)} if n_routes else {}
    proxy = Proxy(tempfile.mkdtemp(), base_config(**sections))
    client = proxy.h1_client()
    client.write(b"GET /warm HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
    backend = proxy.backend()
    backend.received()
    backend.respond(RESPONSE)
    proxy.advance(0)
    client.read()
    request = b"GET /index.html HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: bench\r\n\r\n"
    started = time.process_time()
    sys.setprofile(profile)
    for _ in range(requests):
        client.write(request)
        backend.transport.clear()
        backend.respond(RESPONSE)
        proxy.advance(0)
        client.transport.clear()
    sys.setprofile(None)
    return (time.process_time() - started) / requests


def calls_per_request(n_routes, requests=1000):
    """Python and C function calls per request (deterministic)."""
    count = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1

    relay(requests, n_routes, profile)
    return count[0] / requests


def lookup(n_routes, calls=200000):
    """Seconds per route lookup (exact host, wildcard, default) with ``n_routes`` routes."""
    from proxyd.net.routing import make_balancer

    proxy = Proxy(tempfile.mkdtemp(), base_config(routes=routes(n_routes)))
    route = make_balancer(proxy.reactor, proxy.config).route
    results = {}
    for name, authority in (("exact", b"app0.example.com"), ("wildcard", b"a.zone1.example.com"),
                            ("default", b"www.example.org")):
        started = time.process_time()
        for _ in range(calls):
            route(authority, b"/svc0/x")
        results[name] = (time.process_time() - started) / calls
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--routes", type=int, default=0)
    args = parser.parse_args()
    runs = [relay(args.requests, args.routes) for _ in range(args.repeat)]
    print(f"relay: {statistics.median(runs) * 1e6:.2f} µs CPU per request "
          f"({args.routes} routes; runs: {', '.join(f'{r * 1e6:.2f}' for r in runs)})")
    print(f"calls: {calls_per_request(args.routes):.1f} function calls per request")
    if args.routes:
        for name, seconds in lookup(args.routes).items():
            print(f"lookup {name}: {seconds * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
