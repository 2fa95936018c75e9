"""HTTP/1.1 responses cut short (the backend broke mid-body) reset the client connection: an
incomplete response must never look complete, and a complete one before it must never be cut."""

import socket
import ssl

import pytest

from .harness import HOST, wait_until

# Small enough that proxyd hands all of it to the transport at once (the client reads nothing
# yet), large enough that most of it is still queued toward the client when the cut comes.
BIG = 60_000


def _read_all(sock, timeout=10):
    """Everything the peer sends until it closes; ``(bytes, how)``, ``how`` "fin" (a clean end:
    FIN, or TLS close_notify), "eof" (TLS: FIN without close_notify) or "reset"."""
    got = bytearray()
    sock.settimeout(timeout)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got), "reset"
        except ssl.SSLEOFError:
            return bytes(got), "eof"
        if not chunk:
            return bytes(got), "fin"
        got += chunk


def _connect(proxy, tls, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, proxy.port(tls=tls)))
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)
    return sock


def _exchange(proxy, tls, request):
    """Send ``request`` on a fresh connection and read until the proxy ends it: ``(data, how)``."""
    sock = _connect(proxy, tls)
    try:
        sock.sendall(request)
        return _read_all(sock)
    finally:
        sock.close()


def _first_body(data):
    """The body of the first response in ``data`` (Content-Length framing)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    return head, rest[:length]


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_complete_pipelined_response_survives_the_next_one_cut_short(proxy, tls):
    """A client that has not read yet pipelines a response and one the backend cuts short.
    The first response was complete (handed to the transport by proxyd) before the second
    began; the reset for the second must not drop the first's bytes still queued toward the
    client (a SO_LINGER 0 abort discards the socket's send queue and Twisted's buffer). The
    client starts reading once the log shows the cut."""
    sock = _connect(proxy, tls, rcvbuf=4096)
    try:
        sock.sendall(f"GET /bytes/{BIG} HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /abort?after=1000 HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        wait_until(lambda: "backend_failed" in proxy.log_text(), 10,
                   what="the log line of the second response cut short")
        data, how = _read_all(sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    _head, body = _first_body(data)
    assert len(body) == BIG, (len(body), how)


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_http10_response_cut_short_is_reset(proxy, tls):
    """An HTTP/1.0 client's body ends with the connection (no Content-Length is forwarded for a
    close-delimited one; here the backend's length is kept): the cut response ends in a reset,
    never a clean end, on cleartext and TLS."""
    data, how = _exchange(proxy, tls, b"GET /abort?after=50000 HTTP/1.0\r\nHost: h\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert how != "fin", (len(data), how)  # TLS: Python reports the reset as an SSL EOF


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_complete_response_then_close_is_not_reset(proxy, tls):
    """A complete response with Connection: close ends in a clean close (FIN / close_notify)."""
    data, how = _exchange(proxy, tls,
                          b"GET /bytes/300000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    _head, body = _first_body(data)
    assert len(body) == 300000 and how == "fin", (len(body), how)
