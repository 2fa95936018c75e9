"""HTTP/1.1 client codec for backend connections (the hot path): a writer that cannot be smuggled
through, and a lean response parser.

Strategy, writing: the request is a :class:`proxyd.bridge.BackendRequest` (it passed the gate);
this writer adds what only HTTP/1.1 has — the request line, Host first, and the body framing it
derives from numbers (``content-length`` when the client declared one, a number of 1*DIGIT,
else ``chunked`` when a body follows, else ``content-length: 0`` for POST, PUT and PATCH) — and
checks once more, on its own, everything that could change framing: the method is a token, the
target origin-form of visible ASCII without ``#`` (or ``*`` for OPTIONS), Host an authority,
every name a lower-case token that is not a framing field (nor ``upgrade`` or
``http2-settings``: only the writer asks a backend to switch protocols), and the finished head
holds exactly one CR LF per line and no NUL or other control character but HTAB (so no CR, LF,
NUL or control hides in any method, target, name or value). Anything else raises
``Refused("unsafe_request")`` and nothing is queued: even a gate bug cannot put two requests on
a backend connection. A head written once is remembered by everything it is made of (a bounded
memo; refusals are never kept), so a repeated request is the same checked bytes.

Content where it means nothing: a GET, HEAD, DELETE, TRACE or OPTIONS that carries content (a
Content-Length above 0, or a chunked body) is written with ``connection: close`` and its
connection is not reused. RFC 9110 gives such content no semantics (§9.3.1, §9.3.2, §9.3.5;
TRACE may carry none, §9.3.8; none is defined for OPTIONS, §9.3.7, whose handlers, CORS
preflights, read none) and warns that it can be a smuggling vector: a legacy backend that
does not read a body on these methods would read it as a request of its own, which proxyd's
gate never saw (the CL.0 desync). Told to close, such a backend stops after its response and
never reads the rest. The request is still forwarded whole (Elasticsearch-style APIs send GET
bodies), only alone on its connection. A body of unknown length on these methods may turn out
empty (HTTP/2 clients such as reactor-netty send a GET as HEADERS without END_STREAM and then an
empty DATA frame that ends the stream): its head waits for the first body byte, trailer or end,
and a request that ends with none of them is written as the bodiless request it is, keeping its
connection (its ``0`` chunk alone would be a request of its own to such a backend).

WebSocket (a request whose ``upgrade`` is set): the writer adds ``upgrade: websocket`` and
``connection: upgrade`` itself, only to a bodiless GET, and the connection is never reused. A
``101`` to it is reported as :class:`proxyd.events.TunnelOpened`; every byte after it, until the
connection ends, is tunnel data (read like a close-delimited body, written as it is); bytes
before it (a request body) are still refused. A ``101`` to any other request is a framing error.

Strategy, reading: responses are parsed with ``bytes.find``/``split`` on whole buffers: the head
once a blank line is in, bodies framed by content-length, chunked coding (with trailers) or the
connection's end (RFC 9112 §6.3). Lines may end in CR LF or a bare LF (RFC 9112 §2.2 lets a
recipient accept both); a bare CR is an error. A response with both Content-Length and
Transfer-Encoding is framed by the chunked coding and the connection is not reused afterwards
(§6.3 item 3); Transfer-Encoding must be exactly one ``chunked`` (no other coding is decoded
here, so none may be passed off as the body). The codec consumes it: a head framed by it is
handed on without Transfer-Encoding and without the Content-Length it overrides (an
intermediary MUST remove that, §6.3), so the gate may refuse any Transfer-Encoding it sees (one
from an HTTP/2 backend, where it is malformed). Framing errors (obs-fold, bad status lines,
conflicting lengths, chunk sizes that are not 1*HEXDIG or are 2^64 and more) raise
``Refused("bad_response")``. h11 is the oracle of the tests (they compare both on random input).
Final heads that parsed are remembered by their bytes (a bounded memo: backends repeat their
heads), so a repeated head costs one dictionary lookup and a copy of its fields.
"""

from proxyd import events as ev
from proxyd.errors import Refused
from proxyd.memo import Memo

_CRLF = b"\r\n"
_NO_BODY_STATUS = (204, 304)
_NEED_LENGTH = (b"POST", b"PUT", b"PATCH")
# Methods whose content has no defined semantics (see the module docstring): alone on a
# connection when they carry some.
_ALONE_WITH_CONTENT = (b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS")

# Response body framings.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
# Parser states.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE = range(7)
_MAX_CHUNK_LINE = 4096

_DIGITS = b"0123456789"
_HEXDIG = _DIGITS + b"abcdefABCDEF"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_TOKEN_LOWER = b"!#$%&'*+-.^_`|~" + _DIGITS + _LOWER
_TOKEN_ANY = _TOKEN_LOWER + _LOWER.upper()
_TARGET = bytes(range(0x21, 0x7F)).replace(b"#", b"")
_AUTHORITY = _DIGITS + _LOWER + _LOWER.upper() + b"-._~!$&'()*+,;=%:[]"
# Fields the writer writes itself (Upgrade only for a tunnel it was told of) or never writes,
# and their spellings with "_", which CGI-style parsers (Unicorn, Starman) frame bodies by.
_FRAMING = frozenset((b"host", b"content-length", b"transfer-encoding", b"upgrade",
                      b"http2-settings", b"content_length", b"transfer_encoding",
                      b"http2_settings"))
_WS = (0x20, 0x09)
_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_CONSUMED = (b"transfer-encoding", b"content-length")  # by the chunked coding
_CHECKED_NAMES = set()
# What a tunnel may still write (no end): the writer's "bytes left" once the backend switched.
_TUNNEL_LEFT = 1 << 62


def _unsafe(detail):
    return Refused("unsafe_request", detail)


def _error(message):
    return Refused("bad_response", message)


def _check_names(fields):
    for name, _value in fields:
        if name not in _CHECKED_NAMES:
            if not name or name.translate(None, _TOKEN_LOWER) or name in _FRAMING:
                raise _unsafe(f"field name {name[:40]!r}")
            if len(_CHECKED_NAMES) < 512:
                _CHECKED_NAMES.add(name)


# What a head may hold besides its CR LF line ends: HTAB, SP, visible ASCII and obs-text (RFC
# 9110 §5.5: no other control character in a field; lenient parsers read some as whitespace).
_HEAD_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


def _check_lines(block, lines):
    """The block must hold exactly ``lines`` CR LF pairs and no other CR, LF, NUL or control."""
    if (block.count(b"\n") != lines or block.count(b"\r") != lines
            or block.count(_CRLF) != lines or block.translate(None, _HEAD_BYTES)):
        raise _unsafe("CR, LF, NUL or another control character inside a field")


# Request heads written before (:mod:`proxyd.memo`), by everything they are made of (not
# tunnels: their key is new each time); the head is a pure function of these, so a repeat is
# the same checked bytes.
_written = Memo()


class H1FastClientCodec:
    """Client side of one keep-alive backend connection, one request at a time."""

    __slots__ = ("_max_head", "_buf", "_state", "_framing", "_remaining", "_head_method",
                 "_keep_alive", "_request_done", "_request_chunked", "_request_left", "_out",
                 "stream_id", "_closed", "_upgrade", "tunnel", "_held")

    def __init__(self, *, max_header_list_size=65536):
        self._max_head = max_header_list_size
        self._buf = b""
        self._out = []
        self.stream_id = 0
        self._closed = False
        self._upgrade = False  # an upgrade was asked for (the connection is not reused after)
        self.tunnel = False  # the backend switched: bytes both ways, no HTTP any more
        self._held = None  # (head, request, host): a head waiting to see if content follows
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
    def send_request(self, stream_id, request, default_host=b""):
        """Queue the head of ``request`` (a BackendRequest); Host is ``default_host`` when the
        request has no authority. Raises ``Refused("unsafe_request")`` and queues nothing when
        any part could change framing. The head of a GET, HEAD, DELETE, TRACE or OPTIONS with a
        body of unknown length is held until its first body byte, trailers or end (module
        docstring)."""
        host = request.authority or default_host
        head, chunked, close = self._head(request, host, request.has_body)
        self.stream_id = stream_id
        self._head_method = request.method == b"HEAD"
        self._request_chunked = chunked
        self._request_left = request.content_length or 0
        self._request_done = not request.has_body
        if chunked and request.method in _ALONE_WITH_CONTENT:
            self._held = (head, request, host)  # checked; written once content shows
            return
        if close:
            self._keep_alive = False
        self._out.append(head)

    def _head(self, request, host, has_body):
        """``(head, chunked, close)`` of ``request`` (with a body when ``has_body``), from the
        memo or written and checked (:meth:`_write_head`)."""
        method, target, fields = request.method, request.target, request.headers
        key = None
        if request.upgrade is None:
            try:
                key = (method, target, host, tuple(fields), request.content_length, has_body)
                known = _written.get(key)
            except TypeError:  # not bytes: no memo, the checks below refuse it
                key = known = None
            if known is not None:
                return known
        written = self._write_head(method, target, host, fields, request, has_body)
        if key is not None:
            _written.remember(key, written, len(written[0]))
        return written

    @property
    def holding_head(self):
        """True while the request's head is held (nothing of the request was written)."""
        return self._held is not None

    def _release_held(self):
        """Content follows a held head: write it (chunked, ``connection: close``)."""
        self._out.append(self._held[0])
        self._held = None
        self._keep_alive = False

    def _write_head(self, method, target, host, fields, request, has_body):
        """The checked head of a request: ``(bytes, chunked, connection: close)``."""
        if not method or method.translate(None, _TOKEN_ANY):
            raise _unsafe(f"method {method[:40]!r}")
        if ((target[:1] != b"/" and (target != b"*" or method != b"OPTIONS"))
                or target.translate(None, _TARGET)):
            raise _unsafe(f"target {target[:80]!r}")
        if not host or host.translate(None, _AUTHORITY):
            raise _unsafe(f"host {host[:80]!r}")
        _check_names(fields)
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, _CRLF]
        for name, value in fields:
            parts += (name, b": ", value, _CRLF)
        length = request.content_length
        if length is not None and (type(length) is not int or length < 0):
            raise _unsafe(f"content-length {length!r}")  # 1*DIGIT only
        if length and not has_body:
            raise _unsafe(f"content-length {length} without a body")
        chunked = False
        lines = 4 + len(fields)  # request line, host, fields, framing, blank line
        if length is not None:
            parts += (b"content-length: ", b"%d" % length, _CRLF)
        elif has_body:
            parts.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        elif method in _NEED_LENGTH:
            parts.append(b"content-length: 0\r\n")
        else:
            lines -= 1
        if request.upgrade is not None:
            lines += self._upgrade_fields(request, parts)
        close = any(name == b"connection" and value.lower() == b"close" for name, value in fields)
        if not close and method in _ALONE_WITH_CONTENT and has_body and length != 0:
            parts.append(b"connection: close\r\n")
            lines += 1
            close = True
        parts.append(_CRLF)
        head = b"".join(parts)
        _check_lines(head, lines)
        return head, chunked, close

    def _upgrade_fields(self, request, parts):
        """The upgrade of a WebSocket handshake (a bodiless GET only); the number of lines."""
        if request.method != b"GET" or request.has_body or request.content_length is not None:
            raise _unsafe("an upgrade must be a bodiless GET")
        if request.upgrade.translate(None, _TOKEN_LOWER):
            raise _unsafe(f"upgrade {request.upgrade[:40]!r}")
        parts += (b"upgrade: ", request.upgrade, b"\r\nconnection: upgrade\r\n")
        self._upgrade = True
        self._keep_alive = False
        return 2

    def send_data(self, data):
        """Queue request body bytes (none once the request ended: after the last chunk they
        would be parsed as a request of their own)."""
        if not data:
            return
        if self._request_done and not self.tunnel:
            raise _unsafe("request body bytes after the request ended")
        if self._held is not None:
            self._release_held()
        if self._request_chunked:
            self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            if len(data) > self._request_left:
                raise _unsafe("request body longer than its content-length")
            self._request_left -= len(data)
            self._out.append(data)

    def end_request(self, trailers=()):
        """End the request body (trailers only travel in chunked bodies); once only."""
        if self._request_done and not self.tunnel:
            raise _unsafe("the request ended twice")
        if self._held is not None:
            if not trailers:  # no content came: the request is the bodiless one
                _head, request, host = self._held
                self._held = None
                head, _chunked, close = self._head(request, host, False)
                self._out.append(head)
                if close:
                    self._keep_alive = False
                self._request_chunked = False
                self._request_done = True
                return
            self._release_held()
        if self._request_chunked:
            _check_names(trailers)
            lines = [b"0\r\n"]
            for name, value in trailers:
                lines += (name, b": ", value, _CRLF)
            lines.append(_CRLF)
            block = b"".join(lines)
            _check_lines(block, 2 + len(trailers))
            self._out.append(block)
        elif self._request_left and not self.tunnel:
            raise _unsafe("request body shorter than its content-length")
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
                found = _find_block(buf, self._max_head, "response head")
                if found is None:
                    break
                block, buf = found
                self._on_head(block, out)
            elif state is _CHUNK_DATA:
                take = self._remaining
                piece = buf[:take]
                out.append(ev.DataReceived(stream_id=sid, data=piece))
                self._remaining = take - len(piece)
                buf = buf[len(piece):]
                if not self._remaining:
                    self._state = _CHUNK_CRLF
            elif state is _CHUNK_CRLF:
                if buf[:2] == _CRLF:
                    buf = buf[2:]
                elif buf[:1] == b"\n":
                    buf = buf[1:]
                elif buf == b"\r":
                    break
                else:
                    raise _error("missing CRLF after chunk data")
                self._state = _CHUNK_SIZE
            elif state is _CHUNK_SIZE:
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise _error("chunk size line too long")
                    break
                line, buf = buf[:end], buf[end + 1:]
                if line[-1:] == b"\r":
                    line = line[:-1]
                # RFC 9112 §7.1: 1*HEXDIG, then BWS and chunk-ext; int() alone would also take
                # "0x5", "0_5" or a leading VT, which other parsers read differently.
                size = line.split(b";", 1)[0].rstrip(b" \t")
                if (not size or len(size) > 16 or size.translate(None, _HEXDIG)
                        or b"\r" in line):
                    raise _error(f"bad chunk size {line[:20]!r}")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state is _TRAILERS:
                if buf[:2] == _CRLF or buf[:1] == b"\n":
                    buf = buf[2:] if buf[:1] == b"\r" else buf[1:]
                    self._finish(out)
                    continue
                if buf == b"\r":
                    break
                found = _split_block(buf, self._max_head, "trailers")
                if found is None:
                    break
                lines, buf = found
                out.append(ev.TrailersReceived(stream_id=sid, headers=_parse_fields(lines)))
                self._finish(out)
            else:  # _DONE: bytes after a complete response
                self._keep_alive = False
                break
        if buf and self._state is not _DONE:
            self._buf = buf
        return out

    def _on_head(self, block, out):
        status, fields, length, chunked, close = _parse_head(block)
        headers = list(fields)  # the memo's tuple stays as it is
        if 100 <= status < 200:
            if status == 101:
                if not self._upgrade or self._request_left or not self._request_done:
                    raise _error("101 Switching Protocols to a request that asked for none")
                self._switch(headers, out)
                return
            out.append(ev.InformationalResponse(stream_id=self.stream_id, status=status,
                                                headers=headers))
            return
        if close:
            self._keep_alive = False
        out.append(ev.ResponseReceived(stream_id=self.stream_id, status=status, headers=headers))
        if self._head_method or status in _NO_BODY_STATUS:
            if chunked or length:
                # RFC 9110 §6.4.1: the announced content must not follow; an app that writes it
                # anyway, in a later read, would answer the next exchange (queue poisoning).
                self._keep_alive = False
            self._finish(out)
        elif chunked:
            if length is not None:
                self._keep_alive = False  # RFC 9112 §6.3: a smuggling attempt; never reuse
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

    def _switch(self, headers, out):
        """The backend switched protocols: from now on, bytes both ways until the end."""
        self.tunnel = True
        self._keep_alive = False
        self._framing = _CLOSE
        self._state = _BODY
        self._request_left = _TUNNEL_LEFT
        out.append(ev.TunnelOpened(stream_id=self.stream_id, status=101, headers=headers))

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
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data


def _find_block(buf, limit, what):
    """``(block, rest)`` once ``buf`` holds a block ending in a blank line (``block`` without
    it), else None. Only the first ``limit`` bytes (and the terminator) are searched: a body
    behind the head is never scanned."""
    stop = limit + 4  # a terminator starting further on makes a block over the limit anyway
    crlf = buf.find(b"\n\r\n", 0, stop)
    lf = buf.find(b"\n\n", 0, stop if crlf < 0 else crlf + 2)
    if lf < 0 and crlf < 0:
        if len(buf) > limit:
            raise _error(f"{what} too large")
        return None
    if crlf < 0 or 0 <= lf < crlf:
        end, skip = lf, 2
    else:
        end, skip = crlf, 3
    if end > 0 and buf[end - 1] == 0x0D:  # the last line ended in CR LF
        end -= 1
        skip += 1
    if end > limit:
        raise _error(f"{what} too large")
    return buf[:end], buf[end + skip:]


def _lines(block):
    """The lines of a block; they end in CR LF or a bare LF (RFC 9112 §2.2)."""
    lines = block.split(_CRLF)
    if block.count(b"\n") != len(lines) - 1:
        lines = [line[:-1] if line[-1:] == b"\r" else line for line in block.split(b"\n")]
    return lines


def _split_block(buf, limit, what):
    """``(lines, rest)`` once ``buf`` holds a block ending in a blank line, else None.

    Lines end in CR LF or a bare LF; a bare CR anywhere is an error.
    """
    found = _find_block(buf, limit, what)
    return None if found is None else (_lines(found[0]), found[1])


# Parsed final response heads by their bytes (:mod:`proxyd.memo`): backends repeat their heads
# (only Date changes, once a second), and parsing is a pure function of the bytes. The entries'
# fields are tuples (each event gets a list of its own).
_heads = Memo(max_bytes=2048)


def _parse_head(block):
    """``(status, fields, content-length or None, chunked, close)`` of a response head (the
    status line and the field lines); raises ``Refused("bad_response")`` on a framing error."""
    parsed = _heads.get(block)
    if parsed is not None:
        return parsed
    lines = _lines(block)
    status_line = lines[0]
    if status_line[:7] != b"HTTP/1." or len(status_line) < 12 or status_line[8:9] != b" ":
        raise _error(f"bad status line {status_line[:40]!r}")
    code = status_line[9:12]
    if not code.isdigit() or (len(status_line) > 12 and status_line[12:13] != b" "):
        raise _error(f"bad status line {status_line[:40]!r}")
    status = int(code)
    if status < 100:
        raise _error(f"bad status code {status}")
    headers = tuple(_parse_fields(lines[1:]))
    length = None
    chunked = False
    close = status_line[7:8] != b"1"  # HTTP/1.0: the connection ends after the response
    for name, value in headers:
        if name not in _SPECIAL:
            continue
        if name == b"content-length":
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not item.isdigit() or len(item) > 18:
                    raise _error(f"bad content-length {value[:20]!r}")
                if length is not None and int(item) != length:
                    raise _error("conflicting content-length")
                length = int(item)
        elif name == b"transfer-encoding":
            # Only ``chunked``, once: another coding (or a second chunked) would reach clients
            # still coded, as if it were the representation (nginx 502s these too).
            if chunked or value.lower() != b"chunked":
                raise _error(f"transfer-encoding other than chunked {value[:20]!r}")
            chunked = True
        elif name == b"connection":
            if b"close" in value.lower():
                close = True
    if chunked:  # consumed here, with the length it overrides (RFC 9112 §6.3 item 3)
        headers = tuple(item for item in headers if item[0] not in _CONSUMED)
    parsed = (status, headers, length, chunked, close)
    if status >= 200:
        _heads.remember(block, parsed, len(block))
    return parsed


def _parse_fields(lines):
    """Header lines -> ``[(lower-case name, value without surrounding whitespace)]``.

    Framing only: a line needs a colon after a non-empty name with no whitespace before it, and
    obs-fold (a line starting with SP or HTAB) is refused. What names and values may contain is
    the gate's to check (:func:`proxyd.gate.check_response`), once.
    """
    headers = []
    append = headers.append
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name[0] in _WS or name[-1] in _WS:
            raise _error(f"malformed header line {line[:40]!r}")
        append((name.lower(), value.strip(b" \t")))
    return headers
