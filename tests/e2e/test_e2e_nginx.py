"""nginx as the backend: proxyd in front of a real HTTP/1.1 server that is not ours."""

from .harness import curl, demo, parse_h2load, require_tool, run


def test_static_files_from_nginx(nginx_backend, start_proxyd, make_config, tmp_path):
    """Static files served by nginx arrive intact over h2 (TLS) and HTTP/1.1; HEAD has no body;
    a missing file is nginx's 404; nginx's absolute redirect is rewritten to the client's
    scheme and authority."""
    data = demo.body_bytes(99, 3 * 1024 * 1024 + 5)
    (nginx_backend.root / "static.bin").write_bytes(data)
    proxy = start_proxyd(make_config(nginx_backend.address))
    for mode, tls in (("h2", True), ("h1", False)):
        r = curl(proxy.url("/static.bin", tls=tls), mode=mode, tmpdir=tmp_path)
        assert r.rc == 0 and r.status == 200, r
        assert r.body == data
        assert "nginx" in (r.header("server") or ""), r.headers
        r = curl(proxy.url("/static.bin", tls=tls), "-I", mode=mode, tmpdir=tmp_path)
        assert r.status == 200 and r.header("content-length") == str(len(data)), r
        r = curl(proxy.url("/nope", tls=tls), mode=mode, tmpdir=tmp_path)
        assert r.status == 404, r
    r = curl(proxy.url("/moved", tls=True), mode="h2", tmpdir=tmp_path)
    assert r.status == 301, r
    assert r.header("location") == f"https://{proxy.authority(tls=True)}/static.bin"


def test_h2load_against_nginx(nginx_backend, start_proxyd, make_config):
    """h2load -n 5000 -c 20 -m 10 through proxyd to nginx: zero failures."""
    (nginx_backend.root / "index.html").write_bytes(b"x" * 100)
    proxy = start_proxyd(make_config(nginx_backend.address))
    rc, out, err = run([require_tool("h2load"), "-n", "5000", "-c", "20", "-m", "10",
                        proxy.url("/index.html")], timeout=120)
    res = parse_h2load(out)
    assert rc == 0 and res["succeeded"] == 5000 and res["failed"] == 0 \
        and res["errored"] == 0 and res["2xx"] == 5000, out[-2000:] + err
