"""Metrics, health checks and access-log formats of the real daemon, as a monitoring system and
log tools see them.

Strategy: traffic from real clients (curl over h2, h2c and HTTP/1.1, raw HTTP/1.1 bytes), then a
scrape parsed by prometheus_client's own parser (harness.scrape) and access lines parsed by the
regular expression log tools use for nginx's combined format, or by json.loads.
"""

import json
import re
import signal

from .harness import (curl, free_port, http_get, raw_http1, sample_sum,
                      scrape, signal_and_wait, slow_download, wait_until)
from .rawh2 import RawH2, headers_frame, hpack_indexed, hpack_literal_indexed

COMBINED = re.compile(r'^(\S+) - - \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def with_metrics(make_config, backend, **sections):
    port = free_port()
    return make_config(backend, metrics={"endpoint": f"tcp:{port}:interface=127.0.0.1"},
                       **sections), port


def test_metrics_move_with_traffic_and_parse(start_proxyd, make_config, backend, tmp_path):
    """After 3 h2 GETs over TLS, one HTTP/1.1 POST and one 404: request counters by protocol,
    method and status class, the duration and first-byte histograms, bytes, accepted
    connections, the pool and the reload counters all show it, in text that
    prometheus_client's parser accepts."""
    # one process: its pool keeps an idle connection across the reload (workers start afresh)
    config, mport = with_metrics(make_config, backend, workers=1)
    proxy = start_proxyd(config)
    before = scrape(mport)
    for i in range(3):
        assert curl(proxy.url(f"/bytes/{1000 + i}", tls=True), mode="h2",
                    tmpdir=tmp_path / f"g{i}").status == 200
    assert curl(proxy.url("/echo"), "--data-binary", "hello", mode="h1",
                tmpdir=tmp_path / "p").status == 200
    assert curl(proxy.url("/status/404"), mode="h2c", tmpdir=tmp_path / "n").status == 404
    signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded")
    after = scrape(mport)
    tls_listener = config["listen"][0]["endpoint"]

    def moved(name, **labels):
        return sample_sum(after, name, **labels) - sample_sum(before, name, **labels)

    assert moved("proxyd_requests_total", listener=tls_listener, protocol="h2", method="GET",
                 code="2xx") == 3
    assert moved("proxyd_requests_total", protocol="http/1.1", method="POST", code="2xx") == 1
    assert moved("proxyd_requests_total", code="4xx") == 1
    assert moved("proxyd_request_duration_seconds_count") == 5
    assert moved("proxyd_request_duration_seconds_bucket", protocol="h2", le="+Inf") == 4
    assert moved("proxyd_backend_first_byte_seconds_count", backend=backend.address) == 5
    assert moved("proxyd_client_sent_bytes_total", listener=tls_listener) > 3000
    assert moved("proxyd_client_received_bytes_total") > 0
    assert moved("proxyd_client_connections_accepted_total") >= 5
    assert sample_sum(after, "proxyd_backend_connections", backend=backend.address,
                      state="idle") >= 1
    assert sample_sum(after, "proxyd_backend_up", backend=backend.address) == 1
    assert sample_sum(after, "proxyd_reloads_total", result="ok") == 1
    assert sample_sum(after, "proxyd_config_last_reload_successful") == 1
    assert sample_sum(after, "proxyd_build_info") == 1
    assert sample_sum(after, "process_resident_memory_bytes") > 0
    proxy.config_path.write_text("mode: sideways\n")
    signal_and_wait(proxy, signal.SIGHUP, "reload failed")
    failed = scrape(mport)
    assert sample_sum(failed, "proxyd_reloads_total", result="failed") == 1
    assert sample_sum(failed, "proxyd_config_last_reload_successful") == 0


def test_health_flips_to_503_during_graceful_stop(start_proxyd, make_config, backend, tmp_path):
    """The health path answers 200 while serving; after SIGTERM, while a slow download drains,
    it answers 503; the download completes and the daemon exits 0."""
    config, mport = with_metrics(make_config, backend, timeouts={"graceful_shutdown": "15s"})
    config["metrics"]["health_path"] = "/ready"
    proxy = start_proxyd(config)
    assert http_get(mport, "/ready") == (200, b"ok\n")
    out = tmp_path / "slow.bin"
    with slow_download(proxy, out) as download:
        proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: http_get(mport, "/ready")[0] == 503, 5, what="health to say 503")
        assert download.poll() is None, "the download ended before the health check flipped"
        assert http_get(mport, "/ready") == (503, b"draining\n")
        assert download.wait(timeout=30) == 0
    assert out.stat().st_size == 20000
    assert proxy.wait_exit(15) == 0


def test_combined_log_escapes_what_the_client_sent(start_proxyd, make_config, backend, tmp_path):
    """combined format through the daemon: a request whose target contains a quote and whose
    User-Agent contains quotes and non-ASCII bytes gives one line that the combined regular
    expression parses, with those bytes as \\xHH."""
    log = tmp_path / "access.log"
    proxy = start_proxyd(make_config(backend, tls=False,
                                     access_log={"path": str(log), "format": "combined"}))
    raw = (b'GET /a"b HTTP/1.1\r\nHost: x\r\nUser-Agent: evil" "ag\xc3\xa9nt\r\n'
           b"Referer: http://r.example/\r\n\r\n")
    assert raw_http1(proxy.port(), raw).startswith(b"HTTP/1.1 404")
    lines = wait_until(lambda: log.exists() and log.read_text().splitlines(), 10,
                       what="an access line")
    assert len(lines) == 1
    match = COMBINED.match(lines[0])
    assert match, lines[0]
    client, _, request, status, _, referer, agent = match.groups()
    assert (client, request, status) == ("127.0.0.1", "GET /a\\x22b HTTP/1.1", "404")
    assert (referer, agent) == ("http://r.example/", "evil\\x22 \\x22ag\\xC3\\xA9nt")


def test_json_log_through_the_daemon(start_proxyd, make_config, backend, tmp_path):
    """json format: one object per request, with protocol, status and backend."""
    log = tmp_path / "access.jsonl"
    proxy = start_proxyd(make_config(backend, access_log={"path": str(log), "format": "json"}))
    assert curl(proxy.url("/bytes/10", tls=True), mode="h2", tmpdir=tmp_path).status == 200
    lines = wait_until(lambda: log.exists() and log.read_text().splitlines(), 10,
                       what="an access line")
    record = json.loads(lines[0])
    assert (record["protocol"], record["method"], record["path"], record["status"]) == (
        "h2", "GET", "/bytes/10", 200)
    assert record["backend"] == backend.address and record["bytes_sent"] == 10


def test_a_flood_of_refused_heads_gets_a_few_lines_in_the_daemons_log(start_proxyd, make_config,
                                                                      backend, tmp_path):
    """3000 HTTP/2 heads the gate refuses (``:path`` with a control byte), 13 bytes each once
    HPACK indexed them, 200 on each of 15 h2c connections of the real daemon (more on one get
    GOAWAY): the access log has 3000 lines and the metrics count 3000 refusals, but the
    daemon's own log gets a few ``request refused`` lines (it got 3000, about 100 bytes each: a
    client wrote it at its request rate)."""
    log = tmp_path / "access.log"
    config, metrics_port = with_metrics(make_config, backend, tls=False,
                                        access_log={"path": str(log), "format": "combined"})
    proxy = start_proxyd(config)
    for _ in range(15):
        client = RawH2(proxy.port())
        try:
            # GET, http, then :authority and a refused :path into the dynamic table (63, 62).
            block = (hpack_indexed(2) + hpack_indexed(6)
                     + hpack_literal_indexed(b":authority", client.authority.encode())
                     + hpack_literal_indexed(b":path", b"/\x01"))
            again = hpack_indexed(2) + hpack_indexed(6) + hpack_indexed(63) + hpack_indexed(62)
            client.send(headers_frame(1, block))
            for first in (3, 183, 363):  # within 100 open streams per read: 90, 90, 19
                batch = range(first, min(first + 180, 400), 2)
                client.send(b"".join(headers_frame(sid, again) for sid in batch))
                client.pump(lambda: batch[-1] in client.rsts, what=f"the reset of {batch[-1]}")
        finally:
            client.close()
        assert len(client.rsts) == 200 and client.goaway is None
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 3000, 15,
               what="3000 access lines")
    assert sample_sum(scrape(metrics_port), "proxyd_refusals_total", reason="bad_target") == 3000
    refused = [line for line in proxy.log_text().splitlines() if "request refused" in line]
    assert 1 <= len(refused) <= 30, f"{len(refused)} lines in the daemon's log"
