"""IPv6 through the real daemon: listeners on ``::1`` (TLS and cleartext) in front of a backend
on ``::1``, with the client address in X-Forwarded-For and in RFC 7239 Forwarded.

Strategy: the demo backend listens on ::1 (``[::1]:port`` in ``backends:``), proxyd listens on
``tcp6:PORT:interface=\\:\\:1``; curl (``-g``, so the brackets are not a glob) and
``openssl s_client`` connect to ``[::1]``. /echo shows what the backend received.
"""

import pytest

from .harness import Backend, curl, free_port, s_client, s_client_facts

V6 = "::1"


@pytest.fixture
def v6_backend():
    """The demo backend on ::1."""
    backend = Backend(host=V6)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def v6_proxy(v6_backend, make_config, start_proxyd):
    """proxyd on ::1 (TLS and cleartext) in front of the ::1 backend, Forwarded appended."""
    config = make_config(v6_backend, headers={"forwarded": "append"})
    for listener in config["listen"]:
        listener["endpoint"] = f"tcp6:{free_port(V6)}:interface=\\:\\:1"
    assert config["backends"][0]["address"].startswith("[::1]:")
    return start_proxyd(config)


def echo_values(result, name):
    """Values of header ``name`` the backend received."""
    return [v for k, v in result.json()["headers"] if k.lower() == name]


@pytest.mark.parametrize("mode, tls, proto", [
    ("h2c", False, "http"), ("h1", False, "http"), ("h2", True, "https"), ("h1", True, "https"),
])
def test_ipv6_listener_and_backend(v6_proxy, tmp_path, mode, tls, proto):
    """A client on ::1 reaches the ::1 backend; its address is ::1 in X-Forwarded-For and a
    quoted, bracketed node in Forwarded."""
    url = v6_proxy.url("/echo", tls=tls)
    assert url.startswith(("http://[::1]:", "https://[::1]:"))
    result = curl(url, "-g", "-H", "Forwarded: for=192.0.2.7", mode=mode, tmpdir=tmp_path)
    assert result.status == 200, result
    assert echo_values(result, "x-forwarded-for") == ["::1"]
    assert echo_values(result, "forwarded") == [f'for=192.0.2.7, for="[::1]";proto={proto}']


def test_ipv6_tls_handshake(v6_proxy):
    """openssl s_client over ::1 completes the handshake and gets the listener's certificate."""
    out = s_client(v6_proxy.port(tls=True), "-servername", "localhost", "-alpn", "http/1.1",
                   host=V6, request=b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    facts = s_client_facts(out)
    assert (facts["cn"], facts["session"]) == ("localhost", "New"), out
