"""PROXY protocol listeners through the real daemon. A TcpRelay plays the TCP balancer, so
proxyd's peer (127.0.0.1) differs from the client the header names: ``curl --haproxy-protocol``
bound to 127.0.0.2 (v1, cleartext and TLS) and a v2 header from the test; the named address
reaches the access log and X-Forwarded-For. A connection without the header is closed; with
trusted_proxies, a peer outside them is closed before it sends anything; a route with
``proxy_protocol: true`` sends a v2 header to its backend."""

import json

import pytest

from proxyd.proxyproto import encode_v2, parse

from .harness import (HOST, CaptureBackend, TcpRelay, curl, free_port, raw_http1, sample_sum,
                      scrape, wait_until)

CLIENT = "127.0.0.2"  # curl binds there: the loopback network is all local


@pytest.fixture
def relayed(backend, start_proxyd, make_config, tmp_path):
    """proxyd with PROXY protocol on both listeners, trusting only 127.0.0.1 (the relays)."""
    config = make_config(backend, access_log=str(tmp_path / "access.log"),
                         trusted_proxies=["127.0.0.1/32"],
                         metrics=f"tcp:{free_port()}:interface={HOST}")
    for listen in config["listen"]:
        listen["proxy_protocol"] = True
    proxy = start_proxyd(config)
    relays = {tls: TcpRelay(proxy.port(tls=tls)) for tls in (False, True)}
    try:
        yield proxy, relays, tmp_path / "access.log"
    finally:
        for relay in relays.values():
            relay.stop()


def access_lines(path, proxy):
    """The access log's lines, once the daemon flushed them (once a second)."""
    wait_until(lambda: path.exists() and path.read_text().strip(), 10, what="access log lines")
    return path.read_text().splitlines()


def test_curl_v1_reaches_xff_and_access_log(relayed):
    """curl --haproxy-protocol over cleartext h2c and over TLS (the header precedes the
    handshake): the backend sees X-Forwarded-For 127.0.0.2, not the client's X-Forwarded-Host
    or X-Real-IP (127.0.0.2 is no trusted proxy), and the access log names it."""
    proxy, relays, log_path = relayed
    for scheme, mode, tls in (("http", "h2c", False), ("https", "h2", True)):
        r = curl(f"{scheme}://{HOST}:{relays[tls].port}/echo", "--haproxy-protocol",
                 "--interface", CLIENT, "-H", "X-Forwarded-For: 6.6.6.6",
                 "-H", "X-Forwarded-Host: evil.example", "-H", "X-Real-IP: 6.6.6.6",
                 mode=mode, tmpdir=proxy.workdir)
        assert r.status == 200, r
        headers = {k.lower(): v for k, v in r.json()["headers"]}
        # 127.0.0.2 is not a trusted proxy: its own X-Forwarded-For is replaced, not extended,
        # and its other forwarding fields are dropped
        assert headers["x-forwarded-for"] == CLIENT
        assert "x-forwarded-host" not in headers and "x-real-ip" not in headers, headers
    lines = access_lines(log_path, proxy)
    assert len([line for line in lines if line.startswith(f"{CLIENT} ")]) == 2, lines


def test_v2_header_from_a_test_client(relayed):
    """A v2 header naming 203.0.113.50 then an HTTP/1.1 request in the same packet."""
    proxy, relays, log_path = relayed
    header = encode_v2(("203.0.113.50", 4242), (HOST, proxy.port(tls=False)))
    data = raw_http1(relays[False].port, header + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.50"
    assert any(line.startswith("203.0.113.50 http/1.1 ") for line in access_lines(log_path, proxy))


def test_connections_without_header_or_from_untrusted_peers_are_closed(relayed):
    """HTTP without a header through the relay: closed with no answer; curl straight from
    127.0.0.2 (not a trusted proxy): closed even with a valid header."""
    proxy, relays, _ = relayed
    assert raw_http1(relays[False].port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                     until_close=True) == b""
    r = curl(proxy.url("/"), "--haproxy-protocol", "--interface", CLIENT, mode="h1",
             tmpdir=proxy.workdir)
    assert r.rc != 0 and r.status == 0
    metrics_port = int(proxy.config["metrics"].split(":")[1])
    samples = scrape(metrics_port)
    assert sample_sum(samples, "proxyd_refusals_total", reason="proxy_header") == 1
    assert sample_sum(samples, "proxyd_refusals_total", reason="untrusted_proxy") == 1


def test_route_sends_v2_to_its_backend(start_proxyd, make_config, tmp_path):
    """A route with proxy_protocol: every backend connection starts with a v2 header naming
    the client; then the request follows."""
    seen = CaptureBackend(proxy_protocol=True)
    try:
        config = make_config(seen, tls=False, routes=[
            {"match": {"path": "/"}, "backends": [{"address": seen.address}],
             "proxy_protocol": True}])
        config["listen"][0]["endpoint"] = f"tcp:{free_port()}:interface={HOST}"
        proxy = start_proxyd(config)
        for _ in range(2):
            assert curl(proxy.url("/x"), "--interface", CLIENT, mode="h1",
                        tmpdir=tmp_path).status == 200
        assert len(seen.connections) == 2  # not reused: each connection named its client
        for conn in seen.connections:
            header, used = parse(bytes(conn["raw"]))
            assert header == conn["proxy"] and header.version == 2
            assert header.source[0] == CLIENT
            assert bytes(conn["raw"][used:]).startswith(b"GET /x HTTP/1.1\r\n")
    finally:
        seen.stop()
