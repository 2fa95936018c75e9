"""Known HTTP/2 (and SPDY, HTTP/1.1) attacks against the real daemon (issue 6).

Each attack is a bounded raw-frame client on 127.0.0.1 (``rawh2.RawH2``; ``RawSpdy`` of the SPDY
suite for the zlib bomb) run in a thread, repeated on fresh connections until its bounds (count
and time), while the test checks, for every attack:

* the daemon's RSS (sampled every 10 ms from /proc) grows by at most 32 MiB over its warmed-up
  baseline;
* a well-behaved client on another connection (a fresh h2 connection, GET /bytes/1000) gets its
  200 within 2 s, three times during the attack;
* a counter (metrics endpoint) or a log line records the mitigation;
* the attack's own outcome: GOAWAY ENHANCE_YOUR_CALM after a bounded number of resets, the
  connection closed after a bounded number of bytes, requests that never reach the backend...

Attacks: rapid reset (CVE-2023-44487, and the variants MadeYouReset CVE-2025-8671 and sparse
stream ids), CONTINUATION flood (CVE-2024-27316 family), PING /
SETTINGS / empty-DATA / WINDOW_UPDATE floods by a client that never reads (CVE-2019-9512,
-9515, -9518, -9511), HPACK bomb, SPDY zlib bomb, slowloris on h2, a burst of connections
against the listen backlog, and thousands of idle connections.
"""

import os
import re
import resource
import selectors
import signal
import socket
import threading
import time

import pytest

from proxyd.codec.spdy import frames as fr

from .harness import (HOST, H2Client, curl, free_port, header_value, raw_http1, rss_kib,
                      wait_until)
from .rawh2 import (CANCEL, ENHANCE_YOUR_CALM, INITIAL_WINDOW_SIZE, RawH2, continuation_frame,
                    data_frame, frame_bytes, header_block_frames, headers_frame, hpack_indexed, hpack_literal,
                    hpack_literal_indexed, ping_frame, rst_stream_frame, settings_frame,
                    window_update_frame)
from .test_e2e_spdy import RawSpdy, zlib_bomb

KiB = 1024
MiB = 1024 * 1024
RSS_BOUND_KIB = 32 * 1024
PROBE_DEADLINE = 2.0


# -- the measuring harness -------------------------------------------------------------------

class RssPeak:
    """Peak RSS (KiB) of a process, sampled every 10 ms in a thread while the block runs."""

    def __init__(self, pid):
        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.peak = max(self.peak, rss_kib(self.pid))
        except (OSError, RuntimeError):
            pass

    @property
    def growth_kib(self):
        return self.peak - self.baseline


def probe(port):
    """A well-behaved client on a fresh h2 connection: (status or None, seconds, error)."""
    t0 = time.monotonic()
    c = None
    try:
        c = H2Client(port, timeout=PROBE_DEADLINE)
        st = c.get("/bytes/1000", timeout=PROBE_DEADLINE)
        status = header_value(st["headers"] or [], ":status")
        ok = status == "200" and len(st["data"]) == 1000
        return (200 if ok else status), time.monotonic() - t0, None
    except (AssertionError, OSError) as exc:
        return None, time.monotonic() - t0, repr(exc)
    finally:
        if c is not None:
            c.close()


def metrics(port):
    data = raw_http1(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", until_close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return body.decode()


def metric_sum(text, name):
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class AttackRun:
    """Run ``one(stop) -> dict`` on fresh connections in a thread until ``max_connections``,
    ``max_seconds`` or the test has what it needs; probe meanwhile; sample RSS throughout."""

    def __init__(self, proxy, one, *, max_connections=10, max_seconds=6.0, min_connections=2,
                 probes=3, settle=0.0):
        self.proxy = proxy
        self.one = one
        self.max_connections = max_connections
        self.max_seconds = max_seconds
        self.min_connections = min_connections
        self.n_probes = probes
        self.settle = settle
        self.results = []
        self.errors = []
        self.probes = []
        self.started = threading.Event()
        self.probes_done = threading.Event()
        self.stop = threading.Event()

    def _loop(self):
        t0 = time.monotonic()
        try:
            while (not self.stop.is_set() and len(self.results) < self.max_connections
                   and time.monotonic() - t0 < self.max_seconds):
                self.started.set()
                self.results.append(self.one(self.stop))
                if self.probes_done.is_set() and len(self.results) >= self.min_connections:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            self.errors.append(exc)
        finally:
            self.started.set()

    def run(self):
        port = self.proxy.port()
        # warm up (imports, first backend connection) before the baseline is taken
        for _ in range(2):
            assert probe(port)[0] == 200, self.proxy.output()
        self.log_offset = len(self.proxy.log_text())
        thread = threading.Thread(target=self._loop, daemon=True)
        with RssPeak(self.proxy.pid) as self.rss:
            thread.start()
            assert self.started.wait(10)
            time.sleep(0.1)
            for _ in range(self.n_probes):
                if not thread.is_alive():
                    break
                self.probes.append(probe(port))
                time.sleep(0.2)
            self.probes_done.set()
            deadline = time.monotonic() + self.max_seconds + 30
            while (thread.is_alive() and len(self.results) < self.min_connections
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            self.stop.set()
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "the attack thread did not stop within its bounds"
            if self.settle:
                time.sleep(self.settle)
        if self.errors:
            raise self.errors[0]
        return self

    def summary(self, name):
        """One line of figures (shown with ``pytest -s`` and in failure reports)."""
        probes = ", ".join(f"{st}/{sec:.2f}s" for st, sec, _ in self.probes)
        print(f"\n[{name}] connections {len(self.results)}, RSS +{self.rss.growth_kib} KiB "
              f"(baseline {self.rss.baseline} KiB), probes {probes}; first results "
              f"{self.results[:3]}")

    def new_log(self):
        return self.proxy.log_text()[self.log_offset:]

    def check_common(self):
        """RSS bound and the well-behaved client's 200s within 2 s."""
        assert self.proxy.alive(), self.proxy.output()
        assert self.probes, "no well-behaved request ran during the attack"
        for status, seconds, error in self.probes:
            assert status == 200 and seconds <= PROBE_DEADLINE, \
                (f"well-behaved client during the attack: {status} after {seconds:.2f}s "
                 f"({error}); all probes {self.probes}")
        assert self.rss.growth_kib <= RSS_BOUND_KIB, \
            f"RSS grew by {self.rss.growth_kib} KiB (baseline {self.rss.baseline} KiB)"
        assert probe(self.proxy.port())[0] == 200, "the daemon no longer serves after the attack"

    def check_recorded(self, pattern, what):
        """A log line written during the attack matches ``pattern`` (case-insensitive)."""
        try:
            wait_until(lambda: re.search(pattern, self.new_log(), re.I | re.M), 3,
                       what=f"a log line recording {what}")
        except AssertionError:
            raise AssertionError(f"no log line records {what} (pattern {pattern!r}); log "
                                 f"during the attack:\n{self.new_log()[-3000:]}") from None


@pytest.fixture
def attack_proxy(backend, start_proxyd, make_config):
    """start(**sections) -> proxyd in front of the per-test backend, with a metrics port."""

    def start(protocols=None, **sections):
        cfg = make_config(backend, **sections)
        mport = free_port()
        cfg["metrics"] = f"tcp:{mport}:interface={HOST}"
        if protocols:
            for lst in cfg["listen"]:
                lst["protocols"] = list(protocols)
        proxy = start_proxyd(cfg)
        proxy.metrics_port = mport
        return proxy

    return start


# -- rapid reset -------------------------------------------------------------------------------

RAPID_RESET_MAX_STREAMS = 5000


def reset_loop(proxy, trigger, step):
    """HEADERS (GET /delay?ms=2000, END_STREAM) + ``trigger(stream id)`` in rounds of 25
    streams (ids ``step`` apart), a PING per round (its ACK paces the client), up to 5000
    streams per connection, on fresh connections while the probes run."""

    def one(stop):
        c = RawH2(proxy.port(), timeout=5)
        sid, sent = 1, 0
        try:
            while sent < RAPID_RESET_MAX_STREAMS and c.goaway is None and not c.closed:
                out = bytearray()
                for _ in range(25):
                    out += c.request(sid, "/delay?ms=2000&rapid", send=False)
                    out += trigger(sid)
                    sid += step
                    sent += 1
                pings = c.pings
                out += ping_frame(b"r%07d" % sent)
                if not c.send(bytes(out)):
                    break
                c.pump(lambda: c.pings > pings or c.goaway is not None, 5,
                       what="the PING ACK of a reset round")
            c.wait_closed(3)
            return {"sent": sent, "goaway": c.goaway, "closed": c.closed}
        finally:
            c.close()

    return AttackRun(proxy, one, max_connections=60, max_seconds=6, min_connections=3).run()


def test_rapid_reset(attack_proxy, backend):
    """CVE-2023-44487: HEADERS (GET /delay?ms=2000) + RST_STREAM(CANCEL) in a loop, 25 pairs
    then a PING per round trip, up to 5000 streams per connection. Every connection gets GOAWAY
    ENHANCE_YOUR_CALM after at most 1000 streams; the backend sees almost none of the requests
    (a stream opened and reset in the same read never starts; under 1 % allows for a read that
    splits a pair: before, it saw 3-5 %); the daemon logs "too many stream resets"."""
    proxy = attack_proxy()
    run = reset_loop(proxy, rst_stream_frame, 2)
    run.summary('rapid reset')
    run.check_common()
    total = sum(r["sent"] for r in run.results)
    for r in run.results:
        assert r["goaway"] is not None and r["goaway"][1] == ENHANCE_YOUR_CALM, run.results
        assert r["sent"] <= 1000, f"GOAWAY only after {r['sent']} streams: {run.results}"
    run.check_recorded(r"too many stream resets", "the rapid-reset GOAWAY")
    time.sleep(0.5)
    seen = len([t for t in backend.count()["targets"] if "rapid" in t])
    assert seen <= 0.01 * total, f"the backend saw {seen} of {total} reset requests"


@pytest.mark.parametrize("trigger,step", [
    (rst_stream_frame, 8),                                     # client resets, ids 1, 9, 17...
    (lambda sid: frame_bytes(0x2, 0, sid, b"\0\0\0\0"), 2),    # PRIORITY of 4 bytes
    (lambda sid: frame_bytes(0x0, 0, sid, b"x"), 2),           # DATA after END_STREAM
], ids=["rst-sparse-ids", "priority-bad-length", "data-after-end-stream"])
def test_rapid_reset_variants_get_enhance_your_calm(attack_proxy, trigger, step):
    """The variants the first bound missed (DoS review): the client resets sparse stream ids
    (1, 9, 17...: the bound compared resets with the highest id, not the streams opened) or
    makes proxyd reset every stream itself (MadeYouReset, CVE-2025-8671: a PRIORITY frame of 4
    bytes, DATA after END_STREAM). Every attacking connection gets GOAWAY ENHANCE_YOUR_CALM after
    at most 1000 streams, the well-behaved client is served meanwhile, and "too many stream
    resets" is logged."""
    proxy = attack_proxy()
    run = reset_loop(proxy, trigger, step)
    run.summary("rapid reset variant")
    run.check_common()
    for r in run.results:
        assert r["goaway"] is not None and r["goaway"][1] == ENHANCE_YOUR_CALM, run.results
        assert r["sent"] <= 1000, run.results
    run.check_recorded(r"too many stream resets", "the rapid-reset GOAWAY")


# -- CONTINUATION flood ------------------------------------------------------------------------

def test_continuation_flood(attack_proxy, backend):
    """HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB (literal header bytes),
    one per millisecond, never END_HEADERS, up to 400 frames per connection. The daemon must
    close the connection (GOAWAY or close) once the buffered header block exceeds
    max_header_list_size (64 KiB): at most 64 KiB + 6 frames (160 KiB) of header block may be
    on the way when the close is seen. The request never reaches the backend; the close is
    logged."""
    proxy = attack_proxy()
    piece = hpack_literal(b"x-flood", b"f" * 16360)
    assert len(piece) <= 16384

    def one(stop):
        c = RawH2(proxy.port(), timeout=5)
        try:
            c.pump(lambda: c.server_settings, 5, what="the server preface")
            c.auto_ack = False  # nothing of ours may interleave with the header block
            block = c.encode(c.request_headers("/bytes/10?continuation-flood"))
            c.send(headers_frame(1, block, end_stream=True, end_headers=False))
            sent, frames = len(block), 0
            t0 = time.monotonic()
            while not c.closed and frames < 400 and time.monotonic() - t0 < 5:
                if not c.send(continuation_frame(1, piece)):
                    break
                frames += 1
                sent += len(piece)
                time.sleep(0.001)
                c.poll()
                if c.goaway is not None:
                    break
            closed = c.goaway is not None or c.wait_closed(3)
            return {"frames": frames, "header_bytes": sent, "closed": closed,
                    "goaway": c.goaway}
        finally:
            c.close()

    run = AttackRun(proxy, one, max_connections=60, max_seconds=6, min_connections=2).run()
    run.summary('CONTINUATION flood')
    run.check_common()
    for r in run.results:
        assert r["closed"], f"never closed after {r['frames']} CONTINUATION frames: {r}"
    run.check_recorded(r"connection error.*(continuation|header)", "the CONTINUATION flood")
    assert not [t for t in backend.count()["targets"] if "continuation-flood" in t]
    worst = max(r["header_bytes"] for r in run.results)
    assert worst <= 64 * KiB + 6 * 16 * KiB, \
        (f"the daemon buffered up to {worst} bytes of one header block before closing (limit "
         f"max_header_list_size 64 KiB): {[r['header_bytes'] for r in run.results]}")


# -- floods by a client that never reads -------------------------------------------------------

def _flood(proxy, unit, prelude=None, max_bytes=64 * MiB, max_seconds=8.0):
    """One connection: (optional prelude frames), then ``unit`` again and again without ever
    reading (socket receive buffer 4 KiB); returns whether the daemon closed it and how much
    went out before."""

    def one(stop):
        c = RawH2(proxy.port(), timeout=5, rcvbuf=4096, auto_ack=False, auto_window=False)
        try:
            if prelude:
                c.send(prelude(c))
            seconds = c.flood(unit, max_bytes, max_seconds)
            closed = c.closed or c.drain_closed(2)
            return {"closed": closed, "bytes": c.bytes_sent, "seconds": round(seconds, 2)}
        finally:
            c.close()
    return one


FLOODS = {
    # name: (unit frames, prelude, byte bound, time bound, log pattern)
    "ping": (ping_frame(b"floodfld"), None, 64 * MiB, 8.0, r"does not read|PING flood"),
    "settings": (settings_frame(), None, 64 * MiB, 8.0, r"does not read|PING flood"),
    "settings-values": (settings_frame({INITIAL_WINDOW_SIZE: 65535}), None, 64 * MiB, 8.0,
                        r"does not read|PING flood"),
    # POST /echo open (no END_STREAM), then empty DATA frames without END_STREAM
    "empty-data": (data_frame(1, b""),
                   lambda c: c.request(1, "/echo?empty-data-flood", "POST", end_stream=False,
                                       send=False),
                   4 * MiB, 4.0, r"proxyd\.\w+#\w+\].*(flood|empty|calm|closing)"),
    # a 100 MiB download that is never read, then WINDOW_UPDATE(+1) on the stream and the
    # connection again and again
    "window-update": (window_update_frame(1, 1) + window_update_frame(0, 1),
                      lambda c: c.request(1, "/bytes/104857600", send=False),
                      4 * MiB, 4.0, r"proxyd\.\w+#\w+\].*(flood|window|calm|closing)"),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_flood_by_client_that_never_reads(attack_proxy, kind):
    """PING, SETTINGS (empty, and with a value), empty-DATA and WINDOW_UPDATE floods from a
    client that never reads (4 KiB receive buffer): the daemon's queued output and work are
    bounded and it closes the connection before the attack's bound (64 MiB / 8 s for the
    control floods, 4 MiB / 4 s for empty DATA and WINDOW_UPDATE); a log line records it."""
    unit, prelude, max_bytes, max_seconds, pattern = FLOODS[kind]
    proxy = attack_proxy()
    # Connections are attacked one after another until the time bound (a quickly mitigated flood
    # needs many connections to overlap the well-behaved probes).
    run = AttackRun(proxy, _flood(proxy, unit, prelude, max_bytes, max_seconds),
                    max_connections=400, max_seconds=max_seconds + 1, min_connections=1).run()
    run.summary(f"{kind} flood")
    run.check_common()
    for r in run.results:
        assert r["closed"], (f"{kind} flood: connection still open after {r['bytes']} bytes "
                             f"in {r['seconds']} s: {run.results}")
    run.check_recorded(pattern, f"closing the {kind} flood")


# -- floods by a client that reads every answer ----------------------------------------------

def test_spdy_ping_flood_by_a_client_that_reads(attack_proxy):
    """SPDY/3.1 (cleartext): PINGs in rounds of 100, each round's answers read before the next
    (so the bound on unread output never applies), up to 5000 per connection, on fresh
    connections: every session gets GOAWAY PROTOCOL_ERROR (SPDY's ENHANCE_YOUR_CALM) and is
    closed after at most 1100 PINGs (the HTTP/2 codec's allowance: 1000 control frames with no
    work), the well-behaved client is served meanwhile, "SETTINGS/PING flood" is logged."""
    proxy = attack_proxy(protocols=["h2", "spdy/3.1", "http/1.1"])

    def one(stop):
        c = RawSpdy(proxy.port(), "spdy/3.1", False, timeout=5)
        sent = 0
        try:
            while sent < 5000 and not c.goaways and not c.closed:
                c.send(b"".join(fr.encode_ping(3, 2 * (sent + i) + 1) for i in range(100)))
                sent += 100
                c.pump(lambda: len([p for p in c.pings if p % 2]) >= sent or c.goaways, 5,
                       what="the answers to a round of PINGs")
            if c.goaways:
                c.wait_closed(3)
            return {"sent": sent, "answered": len([p for p in c.pings if p % 2]),
                    "goaways": c.goaways, "closed": c.closed}
        finally:
            c.close()

    # Connections one after another until the time bound (each is mitigated within
    # milliseconds: many are needed to overlap the well-behaved probes).
    run = AttackRun(proxy, one, max_connections=300, max_seconds=4, min_connections=3).run()
    run.summary("SPDY PING flood, read")
    run.check_common()
    for r in run.results:
        assert r["goaways"] and r["goaways"][0][1] == fr.GOAWAY_PROTOCOL_ERROR, r
        assert r["closed"] and r["sent"] <= 1100, r
    run.check_recorded(r"spdy/3\.1 connection error: SETTINGS/PING flood", "the PING flood")


# -- decompression bombs -----------------------------------------------------------------------

def test_hpack_bomb(attack_proxy, backend):
    """A header block that inserts one 4000-byte header into the HPACK dynamic table and then
    references it 16000 times (20 KiB on the wire, 64 MB decoded): the daemon stops decoding at
    max_header_list_size and ends the connection (GOAWAY) within 2 s; the request never
    reaches the backend; RSS stays bounded; the error is logged."""
    proxy = attack_proxy()

    def one(stop):
        c = RawH2(proxy.port(), timeout=5)
        try:
            block = (c.encode(c.request_headers("/bytes/10?hpack-bomb"))
                     + hpack_literal_indexed(b"x-bomb", b"b" * 4000) + hpack_indexed(62) * 16000)
            c.send(header_block_frames(1, block))
            t0 = time.monotonic()
            c.pump(lambda: c.goaway is not None or c.done(1), 5, what="the bomb's refusal")
            closed = c.wait_closed(2)
            return {"goaway": c.goaway, "rst": c.rsts.get(1), "status": c.status(1),
                    "closed": closed, "seconds": time.monotonic() - t0}
        finally:
            c.close()

    run = AttackRun(proxy, one, max_connections=400, max_seconds=4, min_connections=5).run()
    run.summary('HPACK bomb')
    run.check_common()
    for r in run.results:
        assert r["status"] is None and (r["goaway"] is not None or r["rst"] is not None), r
        assert r["seconds"] <= 2, r
    run.check_recorded(r"connection error.*header", "the HPACK bomb")
    assert not [t for t in backend.count()["targets"] if "hpack-bomb" in t]


def test_spdy_zlib_bomb(attack_proxy, backend):
    """SPDY/3.1: a SYN_STREAM whose ~38 KiB header block inflates to ~33 MB, on fresh
    connections in a loop: each session gets GOAWAY and is closed, the request never reaches
    the backend, RSS stays bounded, the error is logged."""
    proxy = attack_proxy(protocols=["h2", "spdy/3.1", "http/1.1"])
    block = zlib_bomb(3, "/echo?zlib-bomb", "bomb.example", "http")

    def one(stop):
        c = RawSpdy(proxy.port(), "spdy/3.1", False, timeout=5)
        try:
            c.send(fr.encode_syn_stream(3, 1, block, fin=True))
            c.pump(lambda: c.goaways, what="GOAWAY after the zlib bomb")
            c.wait_closed()
            return {"goaways": c.goaways, "closed": c.closed,
                    "status": c.streams.get(1, {}).get("status")}
        finally:
            c.close()

    run = AttackRun(proxy, one, max_connections=400, max_seconds=4, min_connections=5).run()
    run.summary('SPDY zlib bomb')
    run.check_common()
    for r in run.results:
        assert r["goaways"] and r["closed"] and r["status"] is None, r
    run.check_recorded(r"connection error|inflat|header block", "the zlib bomb")
    assert not [t for t in backend.count()["targets"] if "zlib-bomb" in t]


# -- slowloris on h2 ---------------------------------------------------------------------------

def test_slowloris_h2(attack_proxy, backend):
    """timeouts.frontend_header: 1s. 60 h2 connections that send the preface and SETTINGS and
    then nothing, and 60 that send HEADERS without END_HEADERS and then a 1-byte CONTINUATION
    every 200 ms: the daemon closes every one of them within 3 s (they never send a complete
    request), the well-behaved client is served meanwhile, RSS stays bounded, and a log line
    (or counter) records the header timeouts."""
    proxy = attack_proxy(timeouts={"frontend_header": "1s"})

    def one(stop):
        conns = []
        t0 = time.monotonic()
        try:
            for i in range(120):
                c = RawH2(proxy.port(), timeout=5)
                conns.append(c)
                if i % 2:
                    c.pump(lambda c=c: c.server_settings, 5, what="the server preface")
                    c.auto_ack = False
                    block = c.encode(c.request_headers("/bytes/10?slowloris-h2"))
                    c.send(headers_frame(1, block[:1], end_stream=True, end_headers=False))
                    c.trickle = block[1:] + b"\x00" * 1000
            closed_at = {}
            while len(closed_at) < len(conns) and time.monotonic() - t0 < 6:
                for i, c in enumerate(conns):
                    if i in closed_at:
                        continue
                    if i % 2 and c.trickle and not c.closed:
                        c.send(continuation_frame(1, c.trickle[:1]))
                        c.trickle = c.trickle[1:]
                    c.poll()
                    if c.closed:
                        closed_at[i] = time.monotonic() - t0
                time.sleep(0.2)
            return {"connections": len(conns), "closed": len(closed_at),
                    "latest_close": max(closed_at.values(), default=None)}
        finally:
            for c in conns:
                c.close()

    run = AttackRun(proxy, one, max_connections=1, max_seconds=10, min_connections=1).run()
    run.summary('slowloris h2')
    run.check_common()
    r = run.results[0]
    assert r["closed"] == r["connections"], f"slowloris connections left open: {r}"
    assert r["latest_close"] <= 3.5, r
    assert not [t for t in backend.count()["targets"] if "slowloris" in t]
    run.check_recorded(r"proxyd\.\w+#\w+\].*(time ?out|timed out|frontend_header)",
                       "closing connections at the frontend_header timeout")


# -- a client that holds the backend pool by not reading ---------------------------------------

def test_client_with_shut_windows_cannot_hold_the_backend_pool(backend, start_proxyd,
                                                               make_config, tmp_path):
    """A raw h2 client with SETTINGS_INITIAL_WINDOW_SIZE 0 opens four 1 MiB downloads on a
    backend whose pool is four connections: it holds them all and reads nothing. A curl request
    then waits; 5 s into the stall (not frontend_idle's 60 s) the longest-stalled stream is reset
    CANCEL, its connection goes to curl, which gets its 200; the log records the hand-over and
    the hog's other streams are left alone (one request waited, one connection was given up)."""
    cfg = make_config(backend, workers=1,
                      backends=[{"address": backend.address, "protocol": "http/1.1",
                                 "tls": False, "max_connections": 4}])
    proxy = start_proxyd(cfg)
    hog_ids = [1, 3, 5, 7]
    with RawH2(proxy.port(), settings={INITIAL_WINDOW_SIZE: 0}, auto_window=False) as hog:
        for sid in hog_ids:
            hog.request(sid, f"/bytes/{MiB}?hog={sid}")
        hog.pump(lambda: all(hog.headers.get(sid) for sid in hog_ids), 10,
                 what="the four response heads")
        result = curl(proxy.url("/bytes/10?waiting"), mode="h2c", tmpdir=tmp_path, timeout=30)
        assert result.status == 200, (result.status, result.err)
        hog.pump(lambda: hog.rsts, 5, what="the reset of the longest-stalled stream")
        assert list(hog.rsts.values()) == [CANCEL] and len(hog.rsts) == 1, hog.rsts
        assert not hog.closed and not hog.data, (hog.rsts, hog.data)
    assert re.search(r"stalled stream\(s\) give their connection to 1 waiting", proxy.log_text())


# -- connections -----------------------------------------------------------------------------

def _raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < n:
        pytest.fail(f"RLIMIT_NOFILE is {soft} (hard {hard}): this test needs {n} descriptors "
                    f"(raise `ulimit -n`)", pytrace=False)


def test_connection_burst_not_dropped_by_listen_backlog(attack_proxy):
    """The first phase of a connection flood, made deterministic: the daemon is stopped
    (SIGSTOP, standing in for a busy event loop under attack) while 300 connections arrive at
    once, then continued after 0.3 s. The kernel completes handshakes for as many connections
    as the listen backlog holds; every other SYN is dropped and its client (legitimate ones
    too) waits for a SYN retransmission 1 s later (then 3 s, 7 s...). Every handshake must
    complete within 0.9 s, i.e. the backlog must hold a burst of a few hundred connections."""
    _raise_nofile(4096)
    proxy = attack_proxy(timeouts={"frontend_header": "10s"})
    assert probe(proxy.port())[0] == 200
    socks = []
    sel = selectors.DefaultSelector()
    stopped = False
    try:
        os.kill(proxy.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        for _ in range(300):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((HOST, proxy.port()))
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        pending = len(socks)
        done_at = None
        while pending and time.monotonic() - t0 < 5:
            if stopped and time.monotonic() - t0 >= 0.3:
                os.kill(proxy.pid, signal.SIGCONT)
                stopped = False
            for key, _ in sel.select(0.02):
                sel.unregister(key.fileobj)
                pending -= 1
            if not pending:
                done_at = time.monotonic() - t0
        assert done_at is not None and done_at <= 0.9, \
            (f"{pending} of 300 handshakes still pending after 5 s" if pending else
             f"300 handshakes took {done_at:.2f}s: SYNs were dropped while the daemon was "
             f"busy for 0.3 s (listen backlog too short)")
    finally:
        if stopped:
            os.kill(proxy.pid, signal.SIGCONT)
        sel.close()
        for s in socks:
            s.close()
    assert probe(proxy.port())[0] == 200


def test_thousands_of_idle_connections(attack_proxy):
    """3000 idle TCP connections (connected, nothing sent), opened in paced batches so the
    listen backlog is not the bottleneck: RSS grows by at most 32 MiB, the well-behaved client
    gets its 200 within 2 s while they are open, the proxyd_client_connections gauge records
    them, and timeouts.frontend_header (3 s) closes every one of them (the gauge back to 0)."""
    n = 3000
    _raise_nofile(n + 1024)
    proxy = attack_proxy(timeouts={"frontend_header": "3s"})
    port = proxy.port()
    for _ in range(2):
        assert probe(port)[0] == 200
    socks = []
    try:
        with RssPeak(proxy.pid) as rss:
            t0 = time.monotonic()
            while len(socks) < n and time.monotonic() - t0 < 20:
                for _ in range(25):
                    socks.append(socket.create_connection((HOST, port), timeout=5))
                time.sleep(0.005)
            assert len(socks) == n
            opened = time.monotonic() - t0
            gauge = wait_until(lambda: (v := metric_sum(metrics(proxy.metrics_port),
                                                        "proxyd_client_connections")) >= n and v,
                               3, interval=0.1, what=f"the gauge to count {n} connections")
            probes = [probe(port) for _ in range(3)]
            deadline = time.monotonic() + 3 + opened + 5
            sel = selectors.DefaultSelector()
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            still_open = len(socks)
            while still_open and time.monotonic() < deadline:
                for key, _ in sel.select(0.1):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        still_open -= 1
            sel.close()
        assert not still_open, f"{still_open} idle connections still open after the " \
                               f"frontend_header timeout"
    finally:
        for s in socks:
            s.close()
    for status, seconds, error in probes:
        assert status == 200 and seconds <= PROBE_DEADLINE, probes
    assert gauge >= n
    assert rss.growth_kib <= RSS_BOUND_KIB, f"RSS grew by {rss.growth_kib} KiB for {n} idle conns"
    wait_until(lambda: metric_sum(metrics(proxy.metrics_port), "proxyd_client_connections") == 0,
               5, interval=0.1, what="the gauge back to 0")
    assert proxy.alive() and probe(port)[0] == 200
