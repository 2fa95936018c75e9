"""Fleet-wide per-IP limits: two proxyd instances sharing a real redis-server (started by the
test on a loopback port) enforce one requests_per_ip budget and one max_connections_per_ip
between them, and keep serving when Redis stops: each then enforces the budget alone (fail open
to local limits), fast, and says so in its metrics."""

import time

import h11
import pytest

from .harness import HOST, RedisServer, free_port, sample_sum, scrape, wait_until

RATE, BURST = 4, 8
CONNECTIONS = 4


def fleet_connections(redis):
    """The connections of 127.0.0.1 that the instances wrote to Redis (``count:deadline``)."""
    lines = redis.command("HGETALL", f"proxyd:conn:{HOST}")
    return sum(int(value.split(":")[0]) for value in lines[1::2])


class Client:
    """One keep-alive HTTP/1.1 connection from the test (one client IP: 127.0.0.1)."""

    def __init__(self, port):
        import socket

        self.sock = socket.create_connection((HOST, port), timeout=10)

    def admitted(self):
        """True when proxyd answers a request on this connection (False: it closed it)."""
        try:
            return self.get("/")[0] is not None
        except (AssertionError, OSError):
            return False

    def get(self, path="/"):
        """One request; returns (status, seconds it took)."""
        started = time.monotonic()
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="GET", target=path, headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        status = None
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                assert data, "closed before the response"
                parser.receive_data(data)
                continue
            if type(event) is h11.Response:
                status = event.status_code
            if type(event) is h11.EndOfMessage:
                return status, time.monotonic() - started
            assert type(event) is not h11.ConnectionClosed, "closed before the response"

    def close(self):
        self.sock.close()


@pytest.fixture
def fleet(backend, start_proxyd, make_config, tmp_path):
    """A redis-server and two proxyd instances sharing it (each with a metrics port)."""
    redis = RedisServer(tmp_path / "redis")
    try:
        instances = []
        for _ in range(2):
            config = make_config(backend, tls=False,
                                 rate_limits={"requests_per_ip": {"rate": RATE, "burst": BURST}},
                                 limits={"shared": {"redis": redis.url},
                                         "max_connections_per_ip": CONNECTIONS},
                                 metrics=f"tcp:{free_port()}:interface={HOST}")
            instances.append(start_proxyd(config))
        yield redis, instances
    finally:
        redis.stop()


def metrics_port(proxy):
    return int(proxy.config["metrics"].split(":")[1])


def alternate(clients, n):
    """``n`` requests alternating between the clients; the statuses and the slowest time."""
    results = [clients[i % len(clients)].get(f"/bytes/{i % 7}") for i in range(n)]
    return [status for status, _ in results], max(seconds for _, seconds in results)


def test_two_instances_enforce_one_budget_and_survive_redis(fleet):
    """Four budgets' worth of requests through two instances: about one budget gets 200, the
    rest 429 (one instance alone would let two budgets through in the same run). Redis stopped:
    both keep answering at once, each enforcing the whole budget on its own (fail open to local
    limits), and report the fallback in their metrics and log."""
    redis, instances = fleet
    clients = [Client(p.port()) for p in instances]
    try:
        started = time.monotonic()
        statuses, _ = alternate(clients, 4 * BURST)
        refill = RATE * (time.monotonic() - started)
        ok = statuses.count(200)
        # one budget, plus the refill during the run, plus about one request per instance
        # in flight at the budget's edge
        assert BURST <= ok <= BURST + refill + 2, statuses
        assert statuses.count(429) == len(statuses) - ok

        redis.stop()
        for client in clients:  # the next spend finds Redis gone
            assert client.get("/")[0] in (200, 429)
        wait_until(lambda: all(sample_sum(scrape(metrics_port(p)), "proxyd_shared_limit_up") == 0
                               for p in instances), 10, what="both instances to see Redis down")
        time.sleep(BURST / RATE + 0.2)  # a token bucket refills with time: wait for a full one
        started = time.monotonic()
        statuses, slowest = alternate(clients, 4 * BURST)
        refill = RATE * (time.monotonic() - started)
        # answered without waiting on Redis (txredisapi reconnects after 1 s, then 2.7 s, ...;
        # the bound leaves room for a busy 2-core machine)
        assert set(statuses) <= {200, 429} and slowest < 3.0, (statuses, slowest)
        # each instance has the whole budget to itself now: two budgets in all, not unlimited
        assert 2 * BURST <= statuses.count(200) <= 2 * (BURST + refill) + 2, statuses
        for proxy in instances:
            samples = scrape(metrics_port(proxy))
            assert sample_sum(samples, "proxyd_shared_limit_fallbacks_total") > 0
            assert "enforced by this instance alone" in proxy.log_text()
    finally:
        for client in clients:
            client.close()


def test_two_instances_share_max_connections_per_ip(fleet):
    """CONNECTIONS per client IP for the fleet: three held at one instance leave one for the
    other, which refuses the next (alone it would take CONNECTIONS)."""
    redis, (first, second) = fleet
    held = []
    try:
        for _ in range(CONNECTIONS - 1):
            held.append(Client(first.port()))
            assert held[-1].admitted()
        held.append(Client(second.port()))
        assert held[-1].admitted()
        # Admission never waits for Redis: wait until the store holds both instances' counts
        # (the second's script has run, so its reply naming the other three is on its way),
        # then one more round trip through the second instance, which has read that reply.
        wait_until(lambda: fleet_connections(redis) == CONNECTIONS, 10,
                   what="both instances' counts in Redis")
        assert held[-1].admitted()
        try:  # proxyd closes it at once (the reset may even reach connect())
            extra = Client(second.port())
        except OSError:
            extra = None
        else:
            held.append(extra)
        assert extra is None or not extra.admitted()
        assert "refusing connections over limits.max_connections" in second.log_text()
    finally:
        for client in held:
            client.close()
