"""WebSocket through the real daemon (issue 13 item 1 and 2): RFC 6455 over HTTP/1.1 and RFC 8441
over HTTP/2, in front of a ``websockets`` echo backend.

Each test drives a real client (tests/e2e/wsclients.py: the ``websockets`` framing over a raw
HTTP/1.1 socket or an ``h2`` connection) through proxyd's cleartext listener to
tests/e2e/ws_echo_server.py, and checks what both ends see: the handshake (101 with the right
accept over HTTP/1.1; SETTINGS_ENABLE_CONNECT_PROTOCOL then :status 200 without an accept over
HTTP/2), messages both ways, closes from either side, a 10 MB message through a slow reader with
proxyd's memory flat, the idle timeout, and the gate's refusals (every other CONNECT, a 101 the
request did not ask for, a non-101 answer served as an ordinary response).
"""

import json
import time

import pytest

from .harness import (CaptureBackend, base_config, free_port, raw_http1, rss_kib, sample_sum,
                      scrape, wait_until)
from .rawh2 import PROTOCOL_ERROR
from .wsclients import EchoBackend, H1WebSocket, H2WebSocket, NghttpxFront, StalledBackend

CLIENTS = {"http/1.1": H1WebSocket, "h2": H2WebSocket}


@pytest.fixture(scope="module")
def echo():
    """The echo backend, shared by the module's tests."""
    backend = EchoBackend()
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def proxy(echo, tls_cert, start_proxyd):
    """proxyd (one process) in front of the echo backend; cleartext listener only."""
    cert, key = tls_cert
    return start_proxyd(base_config(echo, cert, key, tls=False, workers=1))


def backend_headers(client):
    """The handshake fields the backend received, asked through the tunnel itself."""
    client.send_message("headers please")
    return dict((k, v) for k, v in json.loads(client.recv_message()))


def test_http1_handshake_keeps_the_upgrade_and_the_key(proxy):
    """RFC 6455 §4.1: the backend gets Upgrade/Connection and the client's key; the client gets
    101 with the accept of its own key, Upgrade: websocket and Connection: upgrade."""
    ws = H1WebSocket(proxy.port(), "/headers")
    try:
        assert ws.status == 101, ws.head
        assert ws.headers["sec-websocket-accept"] == [ws.expected_accept]
        assert ws.headers["upgrade"] == ["websocket"]
        assert ws.headers["connection"][0].lower() == "upgrade"
        seen = backend_headers(ws)
        assert seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
        assert seen["sec-websocket-version"] == "13" and seen["x-forwarded-for"] == "127.0.0.1"
    finally:
        ws.shutdown()


def test_h2_handshake_is_rfc8441(proxy):
    """RFC 8441: the server offers extended CONNECT; the backend gets an HTTP/1.1 GET with
    Upgrade and a key proxyd made; the client gets :status 200 without Sec-WebSocket-Accept."""
    ws = H2WebSocket(proxy.port(), "/headers")
    try:
        assert ws.connect_protocol == 1
        assert ws.status == 200, ws.response_headers
        names = [name for name, _ in ws.response_headers]
        assert b"sec-websocket-accept" not in names and b"upgrade" not in names
        seen = backend_headers(ws)
        assert seen["upgrade"] == "websocket" and len(seen["sec-websocket-key"]) == 24
        assert seen["sec-websocket-version"] == "13"
    finally:
        ws.shutdown()


def test_h2_over_tls_as_browsers_do(echo, tls_cert, start_proxyd):
    """RFC 8441 on a TLS listener (ALPN h2, :scheme https), as Chromium and Firefox use it."""
    cert, key = tls_cert
    proxy = start_proxyd(base_config(echo, cert, key, cleartext=False, workers=1))
    ws = H2WebSocket(proxy.port(tls=True), tls=True)
    try:
        assert ws.connect_protocol == 1 and ws.status == 200
        ws.send_message("over TLS")
        assert ws.recv_message() == "over TLS"
    finally:
        ws.shutdown()


@pytest.mark.parametrize("kind", CLIENTS)
def test_messages_both_ways(proxy, kind):
    """Text and binary messages, small and across many frames, come back unchanged, in order."""
    ws = CLIENTS[kind](proxy.port())
    try:
        messages = ["hello", b"\x00\x01binary", "é" * 5000, bytes(range(256)) * 1000]
        for message in messages:
            ws.send_message(message)
        assert [ws.recv_message() for _ in messages] == messages
    finally:
        ws.shutdown()


@pytest.mark.parametrize("kind", CLIENTS)
def test_client_closes(proxy, kind):
    """The client's Close comes back from the backend, then the tunnel ends (HTTP/1.1: the
    connection closes; HTTP/2: END_STREAM)."""
    ws = CLIENTS[kind](proxy.port())
    try:
        ws.send_message("x")
        assert ws.recv_message() == "x"
        ws.close(1000, "done")
        assert ws.recv_message() == (1000, "done")
        wait_until(lambda: ws.pump(0.2) or ws.closed_by_peer, 10, what="the tunnel's end")
    finally:
        ws.shutdown()


@pytest.mark.parametrize("kind", CLIENTS)
def test_backend_closes(proxy, kind):
    """The backend's Close (code and reason) reaches the client; its TCP close ends the tunnel."""
    ws = CLIENTS[kind](proxy.port(), "/close-after-one")
    try:
        ws.send_message("only one")
        assert ws.recv_message() == "only one"
        assert ws.recv_message() == (1000, "bye")
        wait_until(lambda: ws.pump(0.2) or ws.closed_by_peer, 10, what="the tunnel's end")
        if kind == "h2":
            assert ws.ended and ws.reset_code in (None, 0)
    finally:
        ws.shutdown()


@pytest.mark.parametrize("kind", CLIENTS)
def test_10mb_message_to_a_slow_reader_keeps_memory_flat(proxy, kind):
    """A 10 MB message echoed to a client that reads 16 KiB at a time: proxyd holds at most a
    window's worth (the backend is paused), so its RSS grows by far less than the message."""
    ws = CLIENTS[kind](proxy.port())
    try:
        message = bytes(range(256)) * (10 * 1024 * 1024 // 256)
        before = rss_kib(proxy.pid)
        ws.send_message(message)
        peak = before
        received = bytearray()
        for _ in range(20000):  # bounded: 10 MB in reads of 16 KiB is about 640 rounds
            if ws.frames:
                break
            ws.pump(5.0, size=16384)
            peak = max(peak, rss_kib(proxy.pid))
        assert ws.recv_message() == message
        received = len(message)
        assert received == 10 * 1024 * 1024
        assert peak - before < 6 * 1024, f"RSS grew {peak - before} KiB for a 10 MiB message"
    finally:
        ws.shutdown()


def test_non_101_is_an_ordinary_response(proxy):
    """A handshake the backend refuses (403) is an ordinary answer: the client can go on with
    plain HTTP/1.1 on the same connection, and an HTTP/2 client gets the 403 itself."""
    handshake = (b"GET /forbidden HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    plain = b"GET /forbidden HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    out = raw_http1(proxy.port(), handshake + plain, until_close=True)
    assert out.startswith(b"HTTP/1.1 403 ") and out.count(b"HTTP/1.1 ") == 2, out
    ws = H2WebSocket(proxy.port(), "/forbidden")
    try:
        assert ws.status == 403
    finally:
        ws.shutdown()


@pytest.mark.parametrize("protocol", [b"chat", b"websocket2"])
def test_other_protocols_are_refused(proxy, protocol):
    """RFC 8441 CONNECT for anything but websocket is reset (PROTOCOL_ERROR), not forwarded."""
    ws = H2WebSocket(proxy.port(), protocol=protocol)
    try:
        assert ws.status is None and ws.reset_code == PROTOCOL_ERROR
    finally:
        ws.shutdown()


def test_connect_protocol_can_be_turned_off(echo, tls_cert, start_proxyd):
    """``enable_connect_protocol: false``: no SETTINGS_ENABLE_CONNECT_PROTOCOL, and an extended
    CONNECT is a malformed request (RST_STREAM PROTOCOL_ERROR)."""
    cert, key = tls_cert
    config = base_config(echo, cert, key, tls=False, workers=1)
    config["listen"][0]["enable_connect_protocol"] = False
    proxy = start_proxyd(config)
    ws = H2WebSocket(proxy.port())
    try:
        assert ws.connect_protocol == 0 and ws.reset_code == PROTOCOL_ERROR
    finally:
        ws.shutdown()


def test_idle_tunnel_is_closed(echo, tls_cert, start_proxyd):
    """``timeouts.tunnel_idle``: a tunnel with no byte either way is ended (client and backend)."""
    cert, key = tls_cert
    proxy = start_proxyd(base_config(echo, cert, key, tls=False, workers=1,
                                     timeouts={"tunnel_idle": "1s"}))
    ws = H1WebSocket(proxy.port())
    try:
        ws.send_message("still here")
        assert ws.recv_message() == "still here"
        wait_until(lambda: ws.pump(0.2) is False and ws.closed_by_peer, 15,
                   what="the idle tunnel's end")
    finally:
        ws.shutdown()


def test_101_to_a_request_that_asked_for_none_is_502(tls_cert, start_proxyd):
    """A backend that switches protocols uninvited gets no tunnel: the client gets 502."""
    backend = CaptureBackend(respond=lambda request: b"HTTP/1.1 101 Switching Protocols\r\n"
                                                     b"Upgrade: websocket\r\nConnection: Upgrade"
                                                     b"\r\n\r\nraw bytes")
    try:
        cert, key = tls_cert
        proxy = start_proxyd(base_config(backend, cert, key, tls=False, workers=1))
        out = raw_http1(proxy.port(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 502 ") and b"raw bytes" not in out
    finally:
        backend.stop()


def test_client_gone_closes_a_backend_that_pushed_back(tls_cert, start_proxyd):
    """An RFC 8441 client fills a tunnel whose backend reads nothing (proxyd's buffer toward it
    fills, proxyd pauses and stops reopening the client's window), then closes its connection.
    Once the backend reads what was sent, its connection must end. proxyd closed it while still
    registered as the transport's producer, so Twisted, once the buffer drained, resumed that
    producer instead of closing: the backend waited for ever on a connection nobody owned, and
    proxyd kept it (and its pool slot)."""
    backend = StalledBackend()
    try:
        cert, key = tls_cert
        metrics = free_port()
        proxy = start_proxyd(base_config(backend, cert, key, tls=False, workers=1,
                                         metrics=f"tcp:{metrics}:interface=127.0.0.1"))
        ws = H2WebSocket(proxy.port())
        assert ws.status == 200, ws.response_headers
        chunk = b"x" * 16384
        shut_since = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until proxyd has kept the window shut a while
            if ws.conn.local_flow_control_window(ws.stream_id) >= len(chunk):
                ws.write(chunk)
                shut_since = None
            else:
                shut_since = shut_since or time.monotonic()
                if time.monotonic() - shut_since > 1:
                    break
                ws.pump(0.1, collect=False)
        assert shut_since is not None, "proxyd never pushed back"
        ws.shutdown()
        wait_until(lambda: sample_sum(scrape(metrics), "proxyd_client_connections") == 0, 10,
                   what="proxyd to see the client leave")
        backend.drain()
        assert backend.ended.wait(20), f"backend still open after reading {backend.read} bytes"
        wait_until(lambda: sample_sum(scrape(metrics), "proxyd_backend_connections",
                                      state="total") == 0, 10, what="the pool slot's release")
    finally:
        backend.stop()


# -- bridge mode: extended CONNECT toward an HTTP/2 backend -----------------------------------

@pytest.fixture(scope="module")
def h2_front(echo):
    """nghttpx offering RFC 8441 over cleartext h2, in front of the echo backend."""
    front = NghttpxFront(echo.port)
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def bridge(h2_front, tls_cert, start_proxyd):
    """proxyd in bridge mode whose HTTP/2 backend is nghttpx (h2c, prior knowledge)."""
    cert, key = tls_cert
    config = base_config(h2_front, cert, key, tls=False, workers=1, mode="bridge")
    config["backends"][0]["protocol"] = "h2"
    return start_proxyd(config)


@pytest.mark.parametrize("kind", CLIENTS)
def test_bridge_mode_tunnels_over_extended_connect(bridge, kind):
    """Both clients' WebSockets reach the echo backend through proxyd's extended CONNECT to
    nghttpx: HTTP/1.1 gets 101 with the accept of its own key (computed by proxyd, since an
    HTTP/2 backend sends none), HTTP/2 gets 200; messages and the close go both ways."""
    ws = CLIENTS[kind](bridge.port())
    try:
        if kind == "h2":
            assert ws.connect_protocol == 1 and ws.status == 200
        else:
            assert ws.status == 101 and ws.headers["sec-websocket-accept"] == [ws.expected_accept]
        for message in ["over h2", b"\x00" * 100_000]:
            ws.send_message(message)
            assert ws.recv_message() == message
        ws.close(1000, "done")
        assert ws.recv_message() == (1000, "done")
    finally:
        ws.shutdown()


def test_bridge_mode_without_rfc8441_backend_is_502(tls_cert, start_proxyd, tmp_path):
    """An HTTP/2 backend that does not offer extended CONNECT (nghttpd) gets no handshake: the
    client's WebSocket request is answered 502 and the backend connection stays usable."""
    from .nghttpd import Nghttpd

    cert, key = tls_cert
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "index.html").write_text("hello\n")
    server = Nghttpd(tmp_path / "root", tmp_path / "nghttpd", tls=False)
    try:
        config = base_config(server.address, cert, key, tls=False, workers=1, mode="bridge")
        config["backends"][0]["protocol"] = "h2"
        proxy = start_proxyd(config)
        ws = H1WebSocket(proxy.port())
        assert ws.status == 502, ws.head
        ws.shutdown()
        out = raw_http1(proxy.port(), b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"hello\n")
    finally:
        server.stop()
