"""Routes and backend groups through the real daemon: requests routed by host and path to
several demo backends (curl and nghttp), 404 without a route, one of two backends killed under
h2load (no failed request; it comes back once restarted), and an active check that marks a
backend answering 500 down and back up."""

import subprocess

import pytest

from .harness import (HOST, Backend, CaptureBackend, curl, nghttp, parse_h2load, reload_config,
                      require_tool, wait_until)


def targets(backend):
    """The request targets a demo backend has seen (since its last reset)."""
    return [t.split(" ", 1)[1] for t in backend.count()["targets"]]


@pytest.fixture
def backends():
    """Four demo backends: two for the shop group, one for the API, one default."""
    started = [Backend() for _ in range(4)]
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def test_routing_by_host_and_path_with_curl_and_nghttp(backends, start_proxyd, make_config,
                                                       tmp_path):
    """shop.test goes to its group of two (alternating), *.api.test/echo to the API backend,
    anything else to the default backend; a config without default answers 404 itself."""
    shop1, shop2, api, default = backends
    routes = [
        {"match": {"host": "shop.test"},
         "backends": [{"address": shop1.address}, {"address": shop2.address}]},
        {"match": {"host": "*.api.test", "path": "/echo"}, "backends": [{"address": api.address}]},
    ]
    proxy = start_proxyd(make_config(default, routes=routes))
    port, tls_port = proxy.port(tls=False), proxy.port(tls=True)
    for i in range(4):
        r = curl(f"http://shop.test:{port}/bytes/{i}", "--resolve", f"shop.test:{port}:{HOST}",
                 mode="h2c", tmpdir=tmp_path)
        assert r.status == 200 and len(r.body) == i, r
    r = curl(f"https://eu.api.test:{tls_port}/echo?user", "--resolve",
             f"eu.api.test:{tls_port}:{HOST}", mode="h2", tmpdir=tmp_path)
    assert r.status == 200 and r.json()["target"] == "/echo?user", r
    rc, trace, out, err = nghttp("-H", ":authority: x.api.test", f"http://{HOST}:{port}/echo?order",
                                 f"http://{HOST}:{port}/bytes/7")
    assert rc == 0 and {trace.status(sid) for sid in trace.paths} == {200}, err
    assert targets(shop1) == ["/bytes/0", "/bytes/2"]
    assert targets(shop2) == ["/bytes/1", "/bytes/3"]
    assert targets(api) == ["/echo?user", "/echo?order"]
    assert targets(default) == ["/bytes/7"]

    without_default = make_config(default, tls=False, routes=routes)
    del without_default["backends"]
    other = start_proxyd(without_default)
    r = curl(other.url("/bytes/1"), mode="h1", tmpdir=tmp_path)
    assert r.status == 404 and b"no route" in r.body, r
    assert targets(default) == ["/bytes/7"]


def test_kill_one_of_two_backends_under_h2load(start_proxyd, make_config, tmp_path):
    """h2load runs while one backend of the group dies: requests that failed to connect move to
    the other one, so h2load counts no failure; the dead backend is marked down, probed with
    backoff, and serves again once restarted on its port."""
    first, second = Backend(), Backend()
    try:
        config = make_config(first, routes=[{
            "match": {"path": "/"},
            "backends": [{"address": first.address}, {"address": second.address}],
            "passive_health": {"max_fails": 2, "backoff": "200ms", "max_backoff": "1s"}}])
        proxy = start_proxyd(config)
        h2load = subprocess.Popen(
            # "/" is answered in one write: a backend killed mid-response (which no proxy can
            # retry: the client has the head) is not what this test is about
            [require_tool("h2load"), "-n", "6000", "-c", "4", "-m", "4", proxy.url("/")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: first.count()["requests"] > 300, 60, what="traffic at the backend")
            first.stop()
            out, _ = h2load.communicate(timeout=120)
        finally:
            if h2load.poll() is None:
                h2load.kill()
                h2load.wait()
        result = parse_h2load(out.decode())
        assert result["failed"] == 0 and result["errored"] == 0, out.decode()[-2000:]
        assert result["2xx"] == 6000, result
        # A response the dying backend had sent before it went can arrive after the first
        # failed connects and resets the count (an answer is a success), so h2load's last
        # requests may not reach max_fails in a row: further requests do, each still moved.

        def marked_down():
            if "marked down" in proxy.log_text():
                return True
            assert curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path).status == 200
            return "marked down" in proxy.log_text()
        wait_until(marked_down, 10, interval=0.1, what="'marked down' logged")
        assert f"backend {first.address} unreachable" in proxy.log_text()  # moved, not failed
        before = second.count()["requests"]
        revived = Backend(port=first.port)
        try:
            wait_until(lambda: "is up again" in proxy.log_text(), 15, what="the probe")
            for i in range(6):
                assert curl(proxy.url(f"/bytes/{i}"), mode="h2c", tmpdir=tmp_path).status == 200
            assert len(targets(revived)) == 3
            assert second.count()["requests"] - before == 3
        finally:
            revived.stop()
    finally:
        first.stop()
        second.stop()


def test_active_check_marks_a_500_backend_down(start_proxyd, make_config, tmp_path):
    """A backend whose health path answers 500 is marked down by the checks while it still
    accepts connections; requests then all go to the other one; fixed, it comes back."""
    health = {"status": b"500 Broken"}

    def sick(request):
        if request["target"] == b"/healthz":
            return b"HTTP/1.1 %s\r\ncontent-length: 0\r\n\r\n" % health["status"]
        return b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"

    good = CaptureBackend(lambda request: b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
    bad = CaptureBackend(sick)
    try:
        config = make_config(good, routes=[{
            "match": {"path": "/"},
            "backends": [{"address": good.address}, {"address": bad.address}],
            "health_check": {"path": "/healthz", "interval": "200ms", "timeout": "1s",
                             "expect_status": 200},
            "passive_health": {"max_fails": 2}}])
        proxy = start_proxyd(config)
        wait_until(lambda: f"backend {bad.address} marked down" in proxy.log_text(), 15,
                   what="the failing check to mark the backend down")
        bodies = {curl(proxy.url(f"/{i}"), mode="h2c", tmpdir=tmp_path).body for i in range(6)}
        assert bodies == {b"a"}
        health["status"] = b"200 OK"
        wait_until(lambda: f"backend {bad.address} is up again" in proxy.log_text(), 15,
                   what="the check to bring it back")
        bodies = {curl(proxy.url(f"/{i}"), mode="h2c", tmpdir=tmp_path).body for i in range(6)}
        assert bodies == {b"a", b"b"}
        checks = [r for r in bad.requests() if r["target"] == b"/healthz"]
        assert checks and (b"user-agent", b"proxyd-health-check") in checks[0]["headers"]
    finally:
        good.stop()
        bad.stop()


def test_reload_applies_routes(backends, start_proxyd, make_config, tmp_path):
    """SIGHUP with a changed route: new requests follow the new route at once; a route that
    stayed keeps its backends."""
    one, two, kept, default = backends
    config = make_config(default, routes=[
        {"match": {"path": "/bytes/"}, "backends": [{"address": one.address}]},
        {"match": {"host": "kept.test"}, "backends": [{"address": kept.address}]}])
    proxy = start_proxyd(config)
    assert curl(proxy.url("/bytes/1"), mode="h2c", tmpdir=tmp_path).status == 200
    config["routes"][0]["backends"] = [{"address": two.address}]
    reload_config(proxy, config)
    assert curl(proxy.url("/bytes/2"), mode="h2c", tmpdir=tmp_path).status == 200
    port = proxy.port(tls=False)
    assert curl(f"http://kept.test:{port}/bytes/3", "--resolve", f"kept.test:{port}:{HOST}",
                mode="h2c", tmpdir=tmp_path).status == 200
    assert targets(one) == ["/bytes/1"] and targets(two) == ["/bytes/2"]
    assert targets(kept) == ["/bytes/3"] and targets(default) == []


def test_a_doubled_slash_reaches_the_route_of_the_merged_path(backends, start_proxyd,
                                                              make_config, tmp_path):
    """``//echo`` and ``///echo`` (curl with ``--path-as-is``, h2c and HTTP/1.1) go to the
    ``/echo`` route's backend as ``/echo``, the query as sent, not to the default backend as
    written: a route's backend and policy are not bypassed by doubling a slash (nghttpx merges
    them too)."""
    api, default = backends[2], backends[3]
    routes = [{"match": {"path": "/echo"}, "backends": [{"address": api.address}]}]
    proxy = start_proxyd(make_config(default, tls=False, routes=routes))
    for mode, target in (("h2c", "//echo?a=//b"), ("h1", "///echo?c")):
        r = curl(proxy.url(target), "--path-as-is", mode=mode, tmpdir=tmp_path)
        assert r.status == 200 and r.json()["target"] == "/" + target.lstrip("/"), r
    assert targets(api) == ["/echo?a=//b", "/echo?c"]
    assert targets(default) == []
