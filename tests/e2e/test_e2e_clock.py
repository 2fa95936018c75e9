"""The wall clock steps while the real daemon runs: its timers keep their durations.

Strategy: NTP, or an administrator, steps a machine's wall clock (a VM that booted without a
real-time clock is synced after proxyd started, months forward; a correction goes back minutes
or hours). Timers must not follow it: a timeout measured on the wall clock waits for the size of
a backward step (the slowloris defences, graceful shutdown and systemd's watchdog pings with
them) and fires at once after a forward one (every idle connection timed out together). The
daemon runs under :class:`tests.e2e.harness.WallClock`, which steps only that process's
``time.time()`` (its ``time.monotonic()`` goes on, as under a real step); the machine's clock is
never touched. One process (``workers: 1``): the signal that steps the clock goes to it.
The fleet's limits in Redis run on Redis' own clock, whose step cannot be simulated: their
scripts are run against a real redis-server on the state such a step leaves behind (times
written by the script an hour ahead of Redis' ``TIME``).
"""

import signal
import socket
import time

from proxyd.net.sharedlimit import CONN_PREFIX, CONN_SCRIPT, HOLD, KEY_PREFIX, SCRIPT

from .harness import (HOST, NotifySocket, RedisServer, WallClock, closed_by_peer,
                      http1_again, http1_keepalive, signal_and_wait, wait_until)

HOUR = 3600.0
#: A VM that boots at the epoch or from a stale image: its clock jumps far forward at sync.
FAR_FORWARD = 400 * 86400.0


def test_timeouts_and_the_watchdog_go_on_when_the_wall_clock_steps_back(
        start_proxyd, make_config, backend, tmp_path):
    """An hour's step back while a client holds a keep-alive connection with half a request
    head (slowloris) and systemd's watchdog is on: the header and idle timeouts (2 s) still
    close the connection, and WATCHDOG=1 pings go on. On wall-clock timers both wait for the
    hour: no slowloris defence for an hour, and systemd, whose ``WatchdogSec`` runs on the
    monotonic clock, would kill the daemon (every connection lost) for missing pings."""
    clock = WallClock(tmp_path)
    notify = NotifySocket(tmp_path)
    sock = None
    try:
        config = make_config(backend, workers=1,
                             timeouts={"frontend_header": "2s", "frontend_idle": "2s"})
        proxy = start_proxyd(config, env={**clock.env(), "NOTIFY_SOCKET": notify.path,
                                          "WATCHDOG_USEC": "400000"})
        notify.wait_for("WATCHDOG", 10)
        sock, status = http1_keepalive(proxy.port(), "/")  # the connection's timers are armed
        assert status == 200, proxy.output()
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # half a head
        clock.step(proxy, -HOUR)
        pings = len(notify.messages)
        assert closed_by_peer(sock, 8), \
            f"a slowloris connection outlived its 2 s timeouts after the step\n{proxy.output()}"
        notify.wait(lambda ms: sum(m.get("WATCHDOG") == "1" for m in ms[pings:]) >= 3, 5,
                    "WATCHDOG=1 going on after the step")
    finally:
        if sock is not None:
            sock.close()
        notify.close()


def test_a_graceful_stop_ends_on_time_when_the_wall_clock_steps_back(
        start_proxyd, make_config, backend, tmp_path):
    """SIGTERM with a request in flight (its backend answers in 30 s), then the wall clock steps
    back an hour: the stop still ends after ``graceful_shutdown`` (2 s), aborting the request,
    exit status 0. On wall-clock timers the drain would wait the hour, and systemd would kill
    the daemon at ``TimeoutStopSec``."""
    clock = WallClock(tmp_path)
    config = make_config(backend, workers=1,
                         timeouts={"graceful_shutdown": "2s", "backend_read": "60s"})
    proxy = start_proxyd(config, env=clock.env())
    with socket.create_connection((HOST, proxy.port()), timeout=10) as sock:
        sock.sendall(f"GET /delay?ms=30000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        wait_until(lambda: backend.count()["requests"] >= 1, 10, what="the request at the backend")
        signal_and_wait(proxy, signal.SIGTERM, "proxyd shutting down")
        clock.step(proxy, -HOUR)
        code = proxy.wait_exit(12)
        assert code == 0, f"no exit within 12 s of a 2 s graceful stop ({code})\n{proxy.output()}"
        assert "graceful shutdown: aborting 1 connections" in proxy.log_text()


def test_connections_and_the_access_log_keep_their_time_when_the_wall_clock_steps_forward(
        start_proxyd, make_config, backend, tmp_path):
    """The wall clock jumps 400 days forward while a client holds an idle keep-alive connection
    (``frontend_idle`` 30 s): the connection is not timed out by the jump and its next request is
    served; the access log's timestamps follow the wall clock (the second line is dated after
    the jump). On wall-clock timers every pending timer fires at the next turn of the reactor
    (within a second: the service's 1 s tick), and every idle client is disconnected at once."""
    clock = WallClock(tmp_path)
    access = tmp_path / "access.log"
    config = make_config(backend, workers=1, timeouts={"frontend_idle": "30s"},
                         access_log={"path": str(access), "format": "combined"})
    proxy = start_proxyd(config, env=clock.env())
    sock, status = http1_keepalive(proxy.port(), "/")
    try:
        assert status == 200, proxy.output()
        clock.step(proxy, FAR_FORWARD)
        assert not closed_by_peer(sock, 3), \
            f"an idle connection was timed out by the jump\n{proxy.output()}"
        assert http1_again(sock, "/") == 200
    finally:
        sock.close()
    lines = wait_until(lambda: access.exists() and len(access.read_text().splitlines()) >= 2
                       and access.read_text().splitlines(), 10, what="two access-log lines")
    before = time.localtime(time.time()).tm_year
    after = time.localtime(time.time() + FAR_FORWARD).tm_year
    assert f"/{before}:" in lines[0] and f"/{after}:" in lines[1], lines


def _redis_now(redis):
    """Redis' clock (``TIME``), in seconds."""
    seconds, micros = redis.command("TIME")
    return int(seconds) + int(micros) / 1e6


def test_the_fleet_budgets_in_redis_recover_when_redis_clock_steps_back(tmp_path):
    """The fleet's per-IP bucket and connection counts are kept on Redis' clock. After that
    clock stepped back an hour, an IP's bucket in debt refills with the time that passes (here
    in 0.2 s), not an hour later (its clients refused by every proxyd for the hour, told
    ``Retry-After: 1``), and another instance's connection count (a crashed instance's, which
    nobody rewrites) holds for ``HOLD`` seconds from now, not for the hour and ``HOLD``."""
    redis = RedisServer(tmp_path / "redis")
    try:
        bucket = KEY_PREFIX + "192.0.2.1"
        redis.command("HSET", bucket, "tokens", "-1", "ts", repr(_redis_now(redis) + HOUR))

        def tokens():  # a refresh: the script with a cost of 0
            return float(redis.command("EVAL", SCRIPT, 1, bucket, 10, 1, 0)[0])

        wait_until(lambda: tokens() >= 1, 5, what="the bucket to refill on Redis' clock")

        counts = CONN_PREFIX + "192.0.2.1"
        hold_ms = int(HOLD * 1000)
        ahead = int((_redis_now(redis) + HOUR) * 1000) + hold_ms
        redis.command("HSET", counts, "crashed-instance", f"5:{ahead}")
        total = redis.command("EVAL", CONN_SCRIPT, 1, counts, "this-instance", 1, hold_ms)
        assert total == ["6"]
        count, deadline = redis.command("HGET", counts, "crashed-instance")[0].split(":")
        assert count == "5"
        assert int(deadline) <= int(_redis_now(redis) * 1000) + hold_ms
    finally:
        redis.stop()
