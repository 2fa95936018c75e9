"""WebSocket peers for the end-to-end tests: an echo backend and two clients that go through
proxyd, one over HTTP/1.1 (RFC 6455 Upgrade) and one over HTTP/2 (RFC 8441 extended CONNECT).

Strategy: the WebSocket framing is the ``websockets`` package's sans-I/O protocol (its own,
independent of proxyd), already open; each client only brings the bootstrap and the byte
transport: a raw socket with a hand-written HTTP/1.1 handshake, or one stream of an ``h2``
library connection. Reading is explicit (``pump``): the HTTP/2 client acknowledges DATA only as it
reads it, so a test that stops calling it is a slow reader with a shut window. Every wait has a
deadline; everything is on 127.0.0.1.
"""

import base64
import hashlib
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from .harness import HOST, free_port, port_accepts, require_tool, stop_process, wait_until

ECHO_SCRIPT = Path(__file__).with_name("ws_echo_server.py")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class EchoBackend:
    """tests/e2e/ws_echo_server.py as a subprocess: ``.address``, ``.stop()``."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(ECHO_SCRIPT)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("the WebSocket echo backend did not start")
        self.port = json.loads(line)["port"]
        self.address = f"{HOST}:{self.port}"

    def stop(self):
        """Stop the process."""
        stop_process(self.proc, timeout=5)
        self.proc.stdout.close()


class StalledBackend:
    """A WebSocket backend that answers one handshake with its 101 and then reads nothing until
    ``drain()``; from then on it reads everything until the connection ends (``ended``: an
    Event, ``read``: the bytes read after the handshake)."""

    def __init__(self):
        self.sock = socket.socket()
        # A small fixed receive buffer (no autotuning): proxyd's own buffer fills soon.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.bind((HOST, 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self.ended = threading.Event()
        self.read = 0
        self._drain = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        self.sock.settimeout(30)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            key = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:")][0]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.read = len(head.partition(b"\r\n\r\n")[2])
            if not self._drain.wait(60):
                return
            try:
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    self.read += len(chunk)
            except ConnectionResetError:
                pass  # an abort ends it too
            except socket.timeout:
                return  # still open after 30 s: ``ended`` stays unset
            self.ended.set()

    def drain(self):
        """Start reading (and keep reading until the connection ends)."""
        self._drain.set()

    def stop(self):
        self._drain.set()
        self.sock.close()
        self._thread.join(timeout=35)


class NghttpxFront:
    """nghttpx (cleartext h2, RFC 8441 on its frontend) in front of ``backend_port``: the HTTP/2
    WebSocket backend of proxyd's client and bridge modes. ``.address``, ``.stop()``."""

    def __init__(self, backend_port):
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.proc = subprocess.Popen(
            [require_tool("nghttpx"), "--conf=/dev/null", f"-f{HOST},{self.port};no-tls",
             f"-b{HOST},{backend_port}", "-n1", "--no-ocsp", "--errorlog-file=/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_accepts(self.port), 15, what="nghttpx listening")
        except AssertionError:
            self.stop()
            raise

    def stop(self):
        """Stop the process."""
        stop_process(self.proc, timeout=5)


class _Client:
    """What both clients share: a websockets protocol (client side, open) fed by ``pump``."""

    def __init__(self, max_size=None):
        self.ws = Protocol(Side.CLIENT, max_size=max_size)
        self.frames = []
        self.closed_by_peer = False

    def send_message(self, data):
        """Send one text (str) or binary (bytes) message."""
        if isinstance(data, str):
            self.ws.send_text(data.encode())
        else:
            self.ws.send_binary(data)
        self._flush_ws()

    def close(self, code=1000, reason=""):
        """Start the closing handshake."""
        self.ws.send_close(code, reason)
        self._flush_ws()

    def _flush_ws(self):
        for chunk in self.ws.data_to_send():
            if chunk:
                self.write(chunk)
            else:
                self.write_eof()

    def _collect(self):
        self.frames.extend(self.ws.events_received())
        self._flush_ws()  # pongs, the answer to a close

    def recv_message(self, timeout=20):
        """The next complete message (bytes for binary, str for text), or a Close frame's
        ``(code, reason)`` tuple; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._take_message()
            if message is not None:
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no WebSocket message in time")
            if not self.pump(min(left, 1.0)) and self.closed_by_peer and not self.frames:
                raise ConnectionError("the connection ended without a message")

    def _take_message(self):
        frames = self.frames
        for i, frame in enumerate(frames):
            if frame.opcode is Opcode.CLOSE:
                del frames[:i + 1]
                close = self.ws.close_rcvd
                return (close.code, close.reason) if close else (1005, "")
            if frame.fin and frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                data = [f for f in frames[:i + 1] if f.opcode in (Opcode.TEXT, Opcode.BINARY,
                                                                  Opcode.CONT)]
                first = data[0].opcode
                payload = b"".join(f.data for f in data)
                del frames[:i + 1]
                return payload.decode() if first is Opcode.TEXT else payload
        return None


class H1WebSocket(_Client):
    """A WebSocket client over HTTP/1.1 (RFC 6455 §4.1) on a raw socket to ``port``."""

    def __init__(self, port, path="/echo", host=HOST, headers=(), max_size=None):
        super().__init__(max_size)
        self.sock = socket.create_connection((host, port), timeout=10)
        key = base64.b64encode(os.urandom(16))
        lines = [b"GET %s HTTP/1.1" % path.encode(), b"Host: %s:%d" % (host.encode(), port),
                 b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + key,
                 b"Sec-WebSocket-Version: 13"] + [b"%s: %s" % item for item in headers]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        buf = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no handshake answer (got {buf!r})")
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1]) if head else 0
        self.headers = {}
        for line in self.head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.expected_accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.rest = rest
        if self.status == 101 and rest:
            self.ws.receive_data(rest)
            self._collect()

    def write(self, data):
        """Bytes to the proxy."""
        self.sock.sendall(data)

    def write_eof(self):
        """Half-close toward the proxy."""
        self.sock.shutdown(socket.SHUT_WR)

    def pump(self, timeout, size=65536):
        """Read once (up to ``size`` bytes, waiting up to ``timeout``); False if nothing came."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
            self.ws.receive_eof()
        else:
            self.ws.receive_data(data)
        self._collect()
        return bool(data)

    def shutdown(self):
        """Close the socket."""
        self.sock.close()


class H2WebSocket(_Client):
    """A WebSocket client over HTTP/2 (RFC 8441): an ``h2`` connection to ``port`` (cleartext
    with prior knowledge, or ``tls`` with ALPN), one extended CONNECT stream; DATA is
    acknowledged only as it is read."""

    def __init__(self, port, path="/echo", host=HOST, headers=(), max_size=None,
                 protocol=b"websocket", tls=False):
        super().__init__(max_size)
        self.sock = socket.create_connection((host, port), timeout=10)
        if tls:  # a browser's way: TLS with ALPN h2 (the test certificate is not verified)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._send()
        self.status = None
        self.response_headers = []
        self.reset_code = None
        self.body = b""
        self.ended = False
        self.settings_seen = False
        deadline = time.monotonic() + 10
        while not self.settings_seen:
            if time.monotonic() > deadline:
                raise TimeoutError("no SETTINGS from the server")
            self.pump(1.0)
        self.connect_protocol = self.conn.remote_settings.get(
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0)
        self.stream_id = self.conn.get_next_available_stream_id()
        head = [(b":method", b"CONNECT"), (b":protocol", protocol),
                (b":scheme", b"https" if tls else b"http"),
                (b":authority", b"%s:%d" % (host.encode(), port)), (b":path", path.encode()),
                (b"sec-websocket-version", b"13"), *headers]
        self.conn.send_headers(self.stream_id, head, end_stream=False)
        self._send()
        while self.status is None and self.reset_code is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer to the extended CONNECT")
            self.pump(1.0)

    def _send(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def write(self, data):
        """Bytes into the stream, as DATA frames within the windows (pumping while shut)."""
        view = memoryview(data)
        deadline = time.monotonic() + 60
        while view:
            window = min(self.conn.local_flow_control_window(self.stream_id),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the server's window stayed shut")
                self.pump(1.0, collect=False)
                continue
            self.conn.send_data(self.stream_id, bytes(view[:window]))
            view = view[window:]
            self._send()

    def write_eof(self):
        """END_STREAM: the half-close of RFC 8441 §4 (nothing once the stream is closed)."""
        if self.reset_code is not None:
            return
        try:
            self.conn.end_stream(self.stream_id)
        except h2.exceptions.StreamClosedError:
            return
        self._send()

    def pump(self, timeout, size=65536, collect=True):
        """Read once and handle the frames; DATA of our stream is acknowledged and fed to the
        WebSocket protocol. False if nothing came."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
            return False
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self._send()
        if collect:
            self._collect()
        return True

    def _on_event(self, event):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
        elif isinstance(event, h2.events.ResponseReceived):
            self.status = int(dict(event.headers)[b":status"])
            self.response_headers = event.headers
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id == self.stream_id and self.status == 200:
                self.ws.receive_data(event.data)
            elif event.stream_id == self.stream_id:
                self.body += event.data  # an answer that opened no tunnel
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = self.closed_by_peer = True
            if self.status == 200:
                self.ws.receive_eof()
        elif isinstance(event, h2.events.StreamReset):
            self.reset_code = event.error_code
            self.closed_by_peer = True

    def shutdown(self):
        """Close the socket."""
        self.sock.close()
