"""A raw SPDY client for the end-to-end tests (SPDY/2, 3 and 3.1, TLS or cleartext).

It sends hand-built frames (proxyd's frame encoders and a zlib stream of its own, so it may send
header blocks no codec would produce: upper-case names, CR LF, NUL-joined values) and parses every
frame it receives. Everything runs on 127.0.0.1 with blocking sockets and deadlines.
"""

import socket
import ssl
import time
import zlib

from proxyd.codec.spdy import frames as fr
from proxyd.codec.spdy.zlib_dict import DICTIONARIES

from .harness import HOST


class RawSpdy:
    """A blocking SPDY client on one socket: hand-built frames out, every frame in parsed.

    Frames are encoded with :mod:`proxyd.codec.spdy.frames` and header blocks compressed by a zlib
    stream of this client (so it may send blocks no codec would produce). Received frames are
    parsed here and logged: SYN_REPLY/HEADERS blocks inflated (keeping the zlib stream in step),
    RST_STREAM, GOAWAY (with its payload length), PING, SETTINGS, WINDOW_UPDATE, DATA per stream.
    With ``auto_window`` (SPDY/3, 3.1) each received DATA frame is acknowledged at once with a
    stream WINDOW_UPDATE and, on 3.1, a session one. PINGs from the daemon (even ids) are answered
    at once, as every SPDY peer must (on cleartext the daemon's PING asks a version-3 peer whether
    it does session flow control), unless ``answer_pings`` is False. A 3.1 client announces a
    larger session window at once unless ``early_session_update`` is False.
    """

    def __init__(self, port, version, tls, timeout=10, auto_window=True, answer_pings=True,
                 early_session_update=True):
        self.version = version
        self.v = 2 if version == "spdy/2" else 3
        sock = socket.create_connection((HOST, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols([version])
            sock = ctx.wrap_socket(sock, server_hostname=HOST)
            assert sock.selected_alpn_protocol() == version, sock.selected_alpn_protocol()
        self.sock = sock
        self.scheme = "https" if tls else "http"
        self.authority = f"{HOST}:{port}"
        self.timeout = timeout
        self.auto_window = auto_window and self.v == 3
        self.answer_pings = answer_pings
        self.comp = zlib.compressobj(6, zlib.DEFLATED, 11, 1, zlib.Z_DEFAULT_STRATEGY,
                                     DICTIONARIES[self.v])
        self.decomp = fr.HeaderDecompressor(self.v, 1 << 20)
        self.buf = bytearray()
        self.streams = {}
        self.goaways = []   # (last_good_stream_id, status, payload length)
        self.rsts = {}      # stream id -> status
        self.pings = []
        self.settings = []
        self.closed = False
        self.log = []       # (frame type name, stream id) in arrival order
        if version == "spdy/3.1" and early_session_update:
            # A 3.1 client announces its session window at once (a cleartext listener learns
            # "3.1" from this first session WINDOW_UPDATE; over TLS ALPN said it already).
            self.send(fr.encode_window_update(3, 0, 15 * 65536))

    # sending
    def send(self, data):
        self.sock.sendall(data)

    def block(self, pairs):
        """Compress name/value ``pairs`` (bytes or str) as the next block of our zlib stream."""
        pairs = [(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v)
                 for n, v in pairs]
        return self.comp.compress(fr.pack_header_block(self.v, pairs)) + \
            self.comp.flush(zlib.Z_SYNC_FLUSH)

    def request_pairs(self, path, method="GET", host=None, extra=()):
        host = host or self.authority
        if self.v == 2:
            pairs = [("method", method), ("url", path), ("version", "HTTP/1.1"), ("host", host),
                     ("scheme", self.scheme)]
        else:
            pairs = [(":method", method), (":path", path), (":version", "HTTP/1.1"),
                     (":host", host), (":scheme", self.scheme)]
        return pairs + list(extra)

    def syn_stream(self, sid, pairs, fin=True):
        self.streams[sid] = {"status": None, "headers": None, "data": bytearray(), "fin": False}
        self.send(fr.encode_syn_stream(self.v, sid, self.block(pairs), fin=fin))

    def get(self, sid, path, **kw):
        self.syn_stream(sid, self.request_pairs(path, **kw), fin=True)

    def rst(self, sid, status=fr.CANCEL):
        self.send(fr.encode_rst_stream(self.v, sid, status))

    def ping(self, ping_id):
        self.send(fr.encode_ping(self.v, ping_id))

    # receiving
    def pump(self, done, timeout=None, what="condition"):
        """Read and parse frames until ``done()``; AssertionError at the deadline. Returns
        ``done()``'s value; stops early (returning it) when the daemon closes the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = done()
            if value or self.closed:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; frames so far: "
                                     f"{self.log[-30:]}, goaways {self.goaways}, rsts {self.rsts}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                continue
            self.buf += data
            self._parse()

    def wait_closed(self, timeout=5):
        self.pump(lambda: self.closed, timeout, what="the daemon to close the connection")

    def _parse(self):
        buf = self.buf
        while len(buf) >= 8:
            w1, w2 = fr.FRAME_HEADER.unpack_from(buf)
            length = w2 & 0xFFFFFF
            if len(buf) < 8 + length:
                return
            flags = w2 >> 24
            payload = bytes(buf[8:8 + length])
            del buf[:8 + length]
            if w1 & 0x80000000:
                self._control(w1 & 0xFFFF, flags, payload)
            else:
                self._data(w1 & 0x7FFFFFFF, flags, payload)

    def _control(self, ftype, flags, payload):
        if ftype in (fr.SYN_REPLY, fr.HEADERS):
            sid, block = fr.decode_stream_block(self.v, payload)
            pairs = fr.unpack_header_block(self.v, self.decomp.decompress(block))
            self.log.append(("SYN_REPLY" if ftype == fr.SYN_REPLY else "HEADERS", sid))
            st = self.streams.setdefault(sid, {"status": None, "headers": None,
                                               "data": bytearray(), "fin": False})
            if ftype == fr.SYN_REPLY:
                st["headers"] = [(n.decode(), v.decode("latin-1")) for n, v in pairs]
                status = dict(pairs).get(b":status" if self.v == 3 else b"status", b"")
                st["status"] = int(status[:3])
            if flags & fr.FLAG_FIN:
                st["fin"] = True
        elif ftype == fr.RST_STREAM:
            sid, status = fr.decode_rst_stream(payload)
            self.log.append(("RST_STREAM", sid))
            self.rsts[sid] = status
        elif ftype == fr.GOAWAY:
            last, status = fr.decode_goaway(self.v, payload)
            self.log.append(("GOAWAY", last))
            self.goaways.append((last, status, len(payload)))
        elif ftype == fr.PING:
            ping_id = fr.decode_ping(payload)
            self.log.append(("PING", ping_id))
            self.pings.append(ping_id)
            if ping_id % 2 == 0 and self.answer_pings and not self.closed:
                try:
                    self.ping(ping_id)
                except OSError:
                    pass
        elif ftype == fr.SETTINGS:
            self.log.append(("SETTINGS", 0))
            self.settings.append(fr.decode_settings(self.v, payload))
        elif ftype == fr.WINDOW_UPDATE:
            self.log.append(("WINDOW_UPDATE", fr.decode_window_update(payload)[0]))
        else:
            self.log.append((f"type{ftype}", 0))

    def _data(self, sid, flags, payload):
        self.log.append(("DATA", sid))
        st = self.streams.setdefault(sid, {"status": None, "headers": None, "data": bytearray(),
                                           "fin": False})
        st["data"] += payload
        if flags & fr.FLAG_FIN:
            st["fin"] = True
        if self.auto_window and payload and not self.closed:
            out = b""
            if not st["fin"]:
                out += fr.encode_window_update(3, sid, len(payload))
            if self.version == "spdy/3.1":
                out += fr.encode_window_update(3, 0, len(payload))
            try:
                self.send(out)
            except OSError:
                pass

    def done(self, sid):
        """True once stream ``sid`` ended (FIN) or was reset."""
        st = self.streams.get(sid)
        return sid in self.rsts or bool(st and st["fin"])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
