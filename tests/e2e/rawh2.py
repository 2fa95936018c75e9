"""A raw-frame HTTP/2 client for the limit and attack tests (hyperframe + hpack, no h2 state
machine), so a test can send what no well-behaved client would: more streams than the server
allows, HEADERS without END_HEADERS followed by endless CONTINUATION, floods of PING / SETTINGS /
empty DATA / WINDOW_UPDATE, reset storms, HPACK blocks that reference one big entry many times.

Everything runs on 127.0.0.1 with blocking sockets and deadlines. Received frames are parsed and
recorded (headers decoded with this client's own HPACK decoder, so its table stays in step);
SETTINGS from the server are acknowledged unless ``auto_ack=False``; DATA is acknowledged with
WINDOW_UPDATE frames only when ``auto_window=True``.

Frame builders (``ping_frame``, ``settings_frame`` ...) return bytes, so flood loops can send one
pre-built buffer many times instead of serialising frame objects in a Python loop.
"""

import select
import socket
import ssl
import struct
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

HOST = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Response body bytes kept per stream (``RawH2.bodies``); beyond them only counted.
BODY_KEPT = 65536

# error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
               7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
               11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}

# SETTINGS identifiers
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6


# -- frame builders (bytes) --------------------------------------------------------------------

def frame_bytes(ftype, flags, stream_id, payload=b""):
    """One frame from its parts (no validation at all: the point is to send anything)."""
    n = len(payload)
    head = struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, stream_id & 0x7FFFFFFF)
    return head + payload


def settings_frame(settings=None, ack=False):
    f = SettingsFrame(0, settings=dict(settings or {}))
    if ack:
        f = SettingsFrame(0)
        f.flags.add("ACK")
    return f.serialize()


def ping_frame(data=b"\0" * 8, ack=False):
    f = PingFrame(0, opaque_data=data)
    if ack:
        f.flags.add("ACK")
    return f.serialize()


def window_update_frame(stream_id, increment):
    return WindowUpdateFrame(stream_id, window_increment=increment).serialize()


def rst_stream_frame(stream_id, code=CANCEL):
    return RstStreamFrame(stream_id, error_code=code).serialize()


def data_frame(stream_id, data=b"", end_stream=False):
    f = DataFrame(stream_id, data=data)
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def goaway_frame(last_stream_id=0, code=NO_ERROR):
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()


def headers_frame(stream_id, block, end_stream=True, end_headers=True):
    f = HeadersFrame(stream_id, data=block)
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def continuation_frame(stream_id, block, end_headers=False):
    f = ContinuationFrame(stream_id, data=block)
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def header_block_frames(stream_id, block, end_stream=True, max_frame=16384):
    """A complete header block as HEADERS plus as many CONTINUATION frames as it needs."""
    first, rest = block[:max_frame], block[max_frame:]
    out = headers_frame(stream_id, first, end_stream=end_stream, end_headers=not rest)
    while rest:
        piece, rest = rest[:max_frame], rest[max_frame:]
        out += continuation_frame(stream_id, piece, end_headers=not rest)
    return out


def hpack_int(value, prefix_bits, first_byte_flags):
    """HPACK integer representation (RFC 7541 §5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal_indexed(name, value):
    """'Literal Header Field with Incremental Indexing — New Name', no Huffman (RFC 7541 §6.2.1):
    the decoder inserts (name, value) into its dynamic table, at index 62."""
    return (b"\x40" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value)


def hpack_literal(name, value):
    """'Literal Header Field without Indexing — New Name', no Huffman (RFC 7541 §6.2.2)."""
    return (b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value)


def hpack_indexed(index):
    """'Indexed Header Field' (RFC 7541 §6.1)."""
    return hpack_int(index, 7, 0x80)


# -- the client ----------------------------------------------------------------------------

class RawH2:
    """One HTTP/2 connection driven frame by frame.

    ``settings`` are sent in the client preface; ``rcvbuf`` shrinks the socket receive buffer
    before connecting (a client that does not read then stalls the server quickly); ``source``
    binds the local address (e.g. ``127.0.0.2`` for a second "client IP" on loopback).
    """

    def __init__(self, port, host=HOST, timeout=10, settings=None, rcvbuf=None, source=None,
                 preface=True, auto_ack=True, auto_window=True, tls=False):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.port = port
        self.authority = f"{host}:{port}"
        self.timeout = timeout
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 24
        self.auto_ack = auto_ack
        self.auto_window = auto_window
        self.buf = bytearray()
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.server_settings = {}
        self.goaway = None          # (last_stream_id, error_code, debug data)
        self.rsts = {}              # stream id -> error code (the first one received)
        self.headers = {}           # stream id -> [header list, ...]
        self.data = {}              # stream id -> bytes received
        self.bodies = {}            # stream id -> the first BODY_KEPT bytes received
        self.ended = set()          # streams that received END_STREAM
        self.pings = 0              # PING ACKs received
        self.settings_acks = 0
        self.log = []               # (frame type, stream id) in arrival order, bounded
        self._pending_block = None  # (stream id, flags, bytearray) while CONTINUATION follows
        if preface:
            self.send(PREFACE + settings_frame(settings))

    # -- sending -----------------------------------------------------------------------------
    def send(self, data):
        """sendall within the socket timeout; a connection closed by the server sets ``closed``
        and returns False instead of raising (a timeout raises ``socket.timeout``)."""
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.closed = True
            return False
        self.bytes_sent += len(data)
        return True

    def flood(self, unit, max_bytes, max_seconds):
        """Send ``unit`` (whole frames) again and again WITHOUT reading, until the server closes
        the connection, ``max_bytes`` went out or ``max_seconds`` passed. Partial writes are
        completed (frames are never cut), and no single write can block past the deadline.
        Returns the seconds spent."""
        chunk = unit * max(1, 65536 // len(unit))
        view = memoryview(chunk)
        pos = 0
        start = time.monotonic()
        deadline = start + max_seconds
        self.sock.setblocking(False)
        try:
            while not self.closed and self.bytes_sent < max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                _, writable, _ = select.select([], [self.sock], [], min(left, 0.2))
                if not writable:
                    continue
                try:
                    n = self.sock.send(view[pos:])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset or broken pipe: the server closed the connection
                    self.closed = True
                    break
                self.bytes_sent += n
                pos += n
                if pos == len(chunk):
                    pos = 0
            if not self.closed and pos:
                # finish the frame in progress so that the stream of frames stays well formed
                self.sock.settimeout(2)
                try:
                    self.sock.sendall(view[pos:])
                    self.bytes_sent += len(chunk) - pos
                except OSError:
                    self.closed = True
        finally:
            if not self.closed:
                self.sock.settimeout(self.timeout)
        return time.monotonic() - start

    def drain_closed(self, timeout):
        """After a flood: read (and discard) whatever the server sends until it closes the
        connection (EOF or reset: True) or ``timeout`` passes (False). Nothing is sent."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            else:
                self.bytes_received += len(chunk)
        return True

    def request_headers(self, path, method="GET", extra=()):
        return [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", self.authority), *extra]

    def encode(self, headers):
        return self.encoder.encode(headers)

    def request(self, stream_id, path, method="GET", extra=(), end_stream=True, send=True):
        """A HEADERS frame for a request (returned; sent unless ``send=False``)."""
        frame = headers_frame(stream_id, self.encode(self.request_headers(path, method, extra)),
                              end_stream=end_stream)
        if send:
            self.send(frame)
        return frame

    # -- receiving ---------------------------------------------------------------------------
    def recv_some(self, deadline):
        """Read once (up to the deadline) and parse; returns False when nothing more will come."""
        if self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(262144)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.bytes_received += len(chunk)
        self.buf += chunk
        self._parse()
        return True

    def poll(self):
        """Parse whatever is readable right now without blocking."""
        if self.closed:
            return
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = self.sock.recv(262144)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                    break
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                    chunk = b""
                if not chunk:
                    self.closed = True
                    break
                self.bytes_received += len(chunk)
                self.buf += chunk
                self._parse()
        finally:
            if not self.closed:
                self.sock.settimeout(self.timeout)

    def pump(self, done, timeout=None, what="condition"):
        """Read frames until ``done()`` is true or the connection closes; AssertionError at the
        deadline. Returns ``done()``'s value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = done()
            if value or self.closed:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout or self.timeout}s waiting for "
                                     f"{what}; last frames {self.log[-20:]}, goaway "
                                     f"{self.goaway}, rsts {dict(list(self.rsts.items())[:20])}")
            self.recv_some(deadline)

    def wait_closed(self, timeout):
        """True when the server closed the connection (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.recv_some(deadline)
        return self.closed

    def status(self, stream_id):
        for block in self.headers.get(stream_id, []):
            for k, v in block:
                if k == ":status":
                    return int(v)
        return None

    def done(self, stream_id):
        return stream_id in self.ended or stream_id in self.rsts

    def _parse(self):
        buf = self.buf
        replies = bytearray()
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf)[:9])
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(buf[9:9 + length])))
            del buf[:9 + length]
            replies += self._on_frame(frame, length)
        if replies and not self.closed:
            self.send(bytes(replies))

    def _on_frame(self, f, length):
        kind = f.type
        sid = f.stream_id
        if len(self.log) < 10000:
            self.log.append((type(f).__name__.replace("Frame", "").upper(), sid))
        out = b""
        if kind == 0x4:  # SETTINGS
            if "ACK" in f.flags:
                self.settings_acks += 1
            else:
                self.server_settings.update(f.settings)
                if self.auto_ack:
                    out += settings_frame(ack=True)
        elif kind == 0x1 or kind == 0x9:  # HEADERS, CONTINUATION
            if kind == 0x1:
                self._pending_block = (sid, set(f.flags), bytearray(f.data))
            elif self._pending_block is not None:
                self._pending_block[2].extend(f.data)
            if "END_HEADERS" in f.flags and self._pending_block is not None:
                bsid, flags, block = self._pending_block
                self._pending_block = None
                decoded = self.decoder.decode(bytes(block), raw=False)
                self.headers.setdefault(bsid, []).append(decoded)
                if "END_STREAM" in flags:
                    self.ended.add(bsid)
        elif kind == 0x0:  # DATA
            self.data[sid] = self.data.get(sid, 0) + len(f.data)
            kept = self.bodies.get(sid, b"")
            if len(kept) < BODY_KEPT:
                self.bodies[sid] = kept + bytes(f.data[:BODY_KEPT - len(kept)])
            if "END_STREAM" in f.flags:
                self.ended.add(sid)
            if self.auto_window and length:
                out += window_update_frame(0, length)
                if "END_STREAM" not in f.flags:
                    out += window_update_frame(sid, length)
        elif kind == 0x3:  # RST_STREAM
            self.rsts.setdefault(sid, f.error_code)
        elif kind == 0x7:  # GOAWAY
            self.goaway = (f.last_stream_id, f.error_code, f.additional_data)
        elif kind == 0x6:  # PING
            if "ACK" in f.flags:
                self.pings += 1
            else:
                out += ping_frame(f.opaque_data, ack=True)
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
