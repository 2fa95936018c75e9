"""TLS toward HTTP/1.1 backends (default mode), end to end: the daemon in front of a small
Python TLS server (``ssl`` module, one thread per connection) that records every decrypted
byte it receives and answers 200. A certificate that fails verification must give 502 and a
log line, and the backend must never see a request byte.
"""

import socket
import ssl
import threading

import pytest

from .harness import HOST, base_config, curl, make_ca, make_signed_cert


class RecordingTLSBackend:
    """A TLS HTTP/1.1 server on 127.0.0.1 answering 200 to anything; ``received`` holds the
    decrypted bytes of every connection, ``handshakes`` counts completed server handshakes."""

    def __init__(self, cert, key, alpn=("http/1.1",)):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if alpn:
            self.ctx.set_alpn_protocols(list(alpn))
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self.received = []
        self.handshakes = 0
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(10)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.handshakes += 1
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.received.append(data)
                buf += data
                while b"\r\n\r\n" in buf:
                    _head, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA; ``named``: app.internal only; ``ip``: app.internal and IP 127.0.0.1; ``other``:
    signed by an unrelated CA."""
    d = tmp_path_factory.mktemp("backend-pki")
    ca = make_ca(d, "ca")
    other = make_ca(d, "other")
    return {
        "ca": ca[0],
        "named": make_signed_cert(d, "named", ca, subject="/CN=app.internal",
                                  san="DNS:app.internal"),
        "ip": make_signed_cert(d, "ip", ca, subject="/CN=app.internal",
                               san="DNS:app.internal,IP:127.0.0.1"),
        "other": make_signed_cert(d, "other-srv", other, subject="/CN=app.internal",
                                  san="DNS:app.internal,IP:127.0.0.1"),
    }


def proxy_for(start_proxyd, tls_cert, server, tls):
    cert, key = tls_cert
    config = base_config(server.address, cert, key, tls=False, workers=1)
    config["backends"][0]["tls"] = tls
    config["timeouts"] = {"backend_connect": "2s", "backend_read": "5s",
                          "graceful_shutdown": "2s"}
    return start_proxyd(config)


@pytest.mark.parametrize("which, tls, status", [
    ("ip", "ca", 200),
    ("named", "ca", 502),                      # IP literal address, no IP in the certificate
    ("named", "ca+name", 200),
    ("ip", "ca+wrong", 502),                   # server_name not in the certificate
    ("other", "ca", 502),                      # unknown issuer
    ("ip", True, 502),                         # system trust: the test CA is not in it
])
def test_backend_certificate_is_verified(start_proxyd, tls_cert, pki, tmp_path, which, tls,
                                         status):
    """A backend certificate is checked by default, chain and name: an IP-literal address is
    checked as an IP (service-identity), ``server_name`` replaces it, an unknown issuer or the
    system store (which lacks the test CA) fails. A failure is 502 and no request byte is sent."""
    server = RecordingTLSBackend(*pki[which])
    try:
        if tls == "ca":
            conf = {"ca": str(pki["ca"])}
        elif tls == "ca+name":
            conf = {"ca": str(pki["ca"]), "server_name": "app.internal"}
        elif tls == "ca+wrong":
            conf = {"ca": str(pki["ca"]), "server_name": "wrong.internal"}
        else:
            conf = tls
        proxy = proxy_for(start_proxyd, tls_cert, server, conf)
        res = curl(proxy.url("/x"), mode="h1", tmpdir=tmp_path, timeout=20)
        assert res.status == status
        if status == 502:
            assert server.received == []
    finally:
        server.stop()


def test_h2_backend_failing_verification_gets_no_bytes(start_proxyd, tls_cert, pki, tmp_path):
    """Bridge mode: an h2 backend whose certificate does not name ``server_name`` gets a 502
    for the client and not one decrypted byte (no preface, no request)."""
    from .test_e2e_bridge import bridge_config
    server = RecordingTLSBackend(*pki["ip"], alpn=("h2",))
    try:
        cert, key = tls_cert
        proxy = start_proxyd(bridge_config(cert, key, server.address,
                                           {"ca": str(pki["ca"]), "server_name": "wrong.internal"}))
        res = curl(proxy.url("/x", tls=True), mode="h2", tmpdir=tmp_path, timeout=20)
        assert res.status == 502
        assert server.received == []
    finally:
        server.stop()
