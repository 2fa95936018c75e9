"""Client mode with a client certificate (mTLS) toward an HTTP/2 backend that demands one.

Strategy: nghttpd with ``--verify-client`` ends the TLS handshake of a client that sends no
certificate; proxyd configured with ``tls.cert``/``tls.key`` gets through (200), without them it
answers 502 and logs the failed handshake.
"""

import pytest

from .harness import curl, wait_until
from .nghttpd import Nghttpd, make_pki
from .test_e2e_bridge import client_config


@pytest.fixture(scope="module")
def mtls_backend(tmp_path_factory):
    """(pki, nghttpd requiring a client certificate) serving one small file."""
    pki = make_pki(tmp_path_factory.mktemp("pki-mtls"))
    root = tmp_path_factory.mktemp("htdocs-mtls")
    (root / "hello.txt").write_bytes(b"hello over mTLS\n")
    server = Nghttpd(root, tmp_path_factory.mktemp("nghttpd-mtls"), key=pki.server_key,
                     cert=pki.server_cert, extra=["--verify-client"])
    try:
        yield pki, server
    finally:
        server.stop()


def test_client_certificate_is_presented(mtls_backend, start_proxyd, tmp_path):
    """With tls.cert/key the backend's client-certificate demand is met: 200 and the body."""
    pki, server = mtls_backend
    tls = {"ca": str(pki.ca), "server_name": pki.hostname,
           "cert": str(pki.server_cert), "key": str(pki.server_key)}
    proxy = start_proxyd(client_config(server.address, tls))
    result = curl(proxy.url("/hello.txt"), mode="h1", tmpdir=tmp_path)
    assert result.status == 200
    assert result.body == b"hello over mTLS\n"


def test_missing_client_certificate_is_502(mtls_backend, start_proxyd, tmp_path):
    """Without a client certificate the handshake fails: 502, and the log names the failure. On
    TLS 1.3 the backend's refusal is an alert that arrives after proxyd's side of the handshake
    is done (read on the whole-TLS-reads fast path): the log names that alert (``certificate
    required``), not a bare "connection lost"."""
    pki, server = mtls_backend
    tls = {"ca": str(pki.ca), "server_name": pki.hostname}
    proxy = start_proxyd(client_config(server.address, tls))
    result = curl(proxy.url("/hello.txt"), mode="h1", tmpdir=tmp_path)
    assert result.status == 502
    wait_until(lambda: "TLS handshake failed" in proxy.log_text()
               or "backend connection lost" in proxy.log_text(), 5, what="the failure logged")
    assert "certificate required" in proxy.log_text(), proxy.log_text()
