"""Lean HTTP/1.1 client codec for backend connections (the hot path), h11's behaviour at less cost.

Strategy: proxyd writes every request itself (its headers were validated by the frontend codec and
are checked here once more for CR, LF and NUL), so serialising is a join. Responses are parsed with
``bytes.find``/``split`` on whole buffers: the head once ``\\r\\n\\r\\n`` is in, bodies framed by
content-length, chunked coding (with trailers) or the connection's end (RFC 9112 §6.3). Whatever
h11 rejects is rejected here too (obs-fold, bad status lines, conflicting lengths, bad chunk
sizes), raising ``h11.RemoteProtocolError`` as :class:`proxyd.codec.h1.H1ClientCodec` does; that
codec stays the test oracle (tests compare both on random input).
"""

import h11

from proxyd import events as ev
from proxyd.codec.h1 import take_output

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_NO_BODY_STATUS = (204, 304)

# Response body framings.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
# Parser states.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE = range(7)
_MAX_CHUNK_LINE = 4096


def _error(message):
    return h11.RemoteProtocolError(message)


class H1FastClientCodec:
    """Client side of one keep-alive backend connection, one request at a time."""

    __slots__ = ("_max_head", "_buf", "_state", "_framing", "_remaining", "_head_method",
                 "_keep_alive", "_request_done", "_request_chunked", "_request_left", "_out",
                 "stream_id", "_closed")

    def __init__(self, *, max_header_list_size=65536):
        self._max_head = max_header_list_size
        self._buf = b""
        self._out = []
        self.stream_id = 0
        self._closed = False
        self._reset()

    def _reset(self):
        self._state = _HEAD
        self._framing = _NONE
        self._remaining = 0
        self._head_method = False
        self._keep_alive = True
        self._request_done = False
        self._request_chunked = False
        self._request_left = 0

    # -- request ---------------------------------------------------------------------------
    def send_request(self, stream_id, method, target, headers, end_stream=False):
        """Queue a request head; without a body when ``end_stream``."""
        self.stream_id = stream_id
        self._head_method = method == b"HEAD"
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        chunked = False
        length = None
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\x00" in value:
                raise h11.LocalProtocolError(f"invalid value of header {name!r}")
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.lower() == b"close":
                self._keep_alive = False
            parts += (name, b": ", value, _CRLF)
        parts.append(_CRLF)
        self._out.append(b"".join(parts))
        self._request_chunked = chunked
        self._request_left = length or 0
        self._request_done = end_stream or (not chunked and not length)

    def send_data(self, data):
        """Queue request body bytes."""
        if not data:
            return
        if self._request_chunked:
            self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            if len(data) > self._request_left:
                raise h11.LocalProtocolError("request body longer than its content-length")
            self._request_left -= len(data)
            self._out.append(data)

    def end_request(self, trailers=()):
        """End the request body (trailers only travel in chunked bodies)."""
        if self._request_chunked:
            lines = [b"0\r\n"]
            for name, value in trailers:
                lines += (name, b": ", value, _CRLF)
            lines.append(_CRLF)
            self._out.append(b"".join(lines))
        elif self._request_left:
            raise h11.LocalProtocolError("request body shorter than its content-length")
        self._request_done = True

    # -- response --------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed backend bytes (``b""`` means the backend closed); return events."""
        out = []
        if not data:
            self._closed = True
            if self._state is _BODY and self._framing is _CLOSE:
                self._state = _DONE
                out.append(ev.StreamEnded(stream_id=self.stream_id))
            elif self._state is not _DONE:
                out.append(ev.ConnectionTerminated(reason="backend closed"))
            return out
        buf = self._buf + data if self._buf else data
        self._buf = b""
        sid = self.stream_id
        while buf:
            state = self._state
            if state is _BODY:
                if self._framing is _CLOSE:
                    out.append(ev.DataReceived(stream_id=sid, data=buf))
                    buf = b""
                    break
                take = self._remaining
                if len(buf) <= take:
                    out.append(ev.DataReceived(stream_id=sid, data=buf))
                    self._remaining = take - len(buf)
                    buf = b""
                    if not self._remaining:
                        self._finish(out)
                    break
                out.append(ev.DataReceived(stream_id=sid, data=buf[:take]))
                buf = buf[take:]
                self._finish(out)
            elif state is _HEAD:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > self._max_head:
                        raise _error("response head too large")
                    break
                head, buf = buf[:end], buf[end + 4:]
                self._on_head(head, out)
            elif state is _CHUNK_DATA:
                take = self._remaining
                piece = buf[:take]
                out.append(ev.DataReceived(stream_id=sid, data=piece))
                self._remaining = take - len(piece)
                buf = buf[len(piece):]
                if not self._remaining:
                    self._state = _CHUNK_CRLF
            elif state is _CHUNK_CRLF:
                if len(buf) < 2:
                    break
                if buf[:2] != _CRLF:
                    raise _error("missing CRLF after chunk data")
                buf = buf[2:]
                self._state = _CHUNK_SIZE
            elif state is _CHUNK_SIZE:
                end = buf.find(_CRLF)
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise _error("chunk size line too long")
                    break
                line, buf = buf[:end], buf[end + 2:]
                size = line.split(b";", 1)[0].strip(b" \t")
                try:
                    if not size or size[:1] in b"+-" or len(size) > 16:
                        raise ValueError
                    self._remaining = int(size, 16)
                except ValueError:
                    raise _error(f"bad chunk size {line[:20]!r}") from None
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state is _TRAILERS:
                if buf[:2] == _CRLF:
                    buf = buf[2:]
                    self._finish(out)
                    continue
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > self._max_head:
                        raise _error("trailers too large")
                    break
                block, buf = buf[:end], buf[end + 4:]
                out.append(ev.TrailersReceived(stream_id=sid, headers=_parse_fields(block.split(_CRLF))))
                self._finish(out)
            else:  # _DONE: bytes after a complete response
                self._keep_alive = False
                break
        if buf and self._state is not _DONE:
            self._buf = buf
        return out

    def _on_head(self, head, out):
        lines = head.split(_CRLF)
        status_line = lines[0]
        if status_line[:7] != b"HTTP/1." or len(status_line) < 12 or status_line[8:9] != b" ":
            raise _error(f"bad status line {status_line[:40]!r}")
        minor = status_line[7:8]
        code = status_line[9:12]
        if not code.isdigit() or (len(status_line) > 12 and status_line[12:13] != b" "):
            raise _error(f"bad status line {status_line[:40]!r}")
        status = int(code)
        if status < 100:
            raise _error(f"bad status code {status}")
        headers = _parse_fields(lines[1:])
        if 100 <= status < 200:
            if status == 101:
                raise _error("101 Switching Protocols is not supported")
            out.append(ev.InformationalResponse(stream_id=self.stream_id, status=status,
                                                headers=headers))
            return
        length = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                for item in value.split(b","):
                    item = item.strip()
                    if not item.isdigit():
                        raise _error(f"bad content-length {value[:20]!r}")
                    if length is not None and int(item) != length:
                        raise _error("conflicting content-length")
                    length = int(item)
            elif name == b"transfer-encoding":
                codings = value.lower()
                if codings.rsplit(b",", 1)[-1].strip() != b"chunked":
                    raise _error(f"unsupported transfer-encoding {value[:20]!r}")
                chunked = True
            elif name == b"connection":
                if b"close" in value.lower():
                    self._keep_alive = False
        if minor != b"1":
            self._keep_alive = False
        out.append(ev.ResponseReceived(stream_id=self.stream_id, status=status, headers=headers))
        if self._head_method or status in _NO_BODY_STATUS:
            self._finish(out)
        elif chunked:
            self._framing = _CHUNKED
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length == 0:
                self._finish(out)
            else:
                self._framing = _LENGTH
                self._remaining = length
                self._state = _BODY
        else:
            self._framing = _CLOSE
            self._keep_alive = False
            self._state = _BODY

    def _finish(self, out):
        self._state = _DONE
        out.append(ev.StreamEnded(stream_id=self.stream_id))

    @property
    def response_complete(self):
        """The backend finished its response."""
        return self._state is _DONE

    def reusable(self):
        """Both sides done and keep-alive allowed: ready the next exchange and return True."""
        if (self._state is _DONE and self._request_done and self._keep_alive
                and not self._closed and not self._buf):
            self._reset()
            return True
        return False

    def data_to_send(self):
        """Return and clear the queued output."""
        return take_output(self._out)


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _parse_fields(lines):
    """Header lines -> ``[(lower-case name, value)]``; raises on obs-fold and malformed lines."""
    headers = []
    for line in lines:
        if not line:
            continue
        colon = line.find(b":")
        if colon <= 0:
            raise _error(f"malformed header line {line[:40]!r}")
        name = line[:colon]
        if not _TOKEN.issuperset(name):
            raise _error(f"invalid header name {name[:40]!r}")
        value = line[colon + 1:].strip(b" \t")
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            raise _error(f"invalid value of header {name[:40]!r}")
        headers.append((name.lower(), value))
    return headers
