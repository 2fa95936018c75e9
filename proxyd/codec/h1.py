"""HTTP/1.1 server codec (the client-facing side): httptools (llhttp) frames, proxyd writes.

Strategy: llhttp — the parser of Node.js and of nghttpx, strict by default — checks the framing
of what clients send: request line, header lines (no obs-fold, no bare CR or LF, no NUL or other
controls in values), Content-Length (digits, no duplicates, never with Transfer-Encoding), chunk
sizes (no overflow), and body boundaries. A framing error is answered with the errors table's
``bad_framing`` (``head_too_large`` for heads over the limit) and the connection closes. The
heads it delivers are handed on raw (``:method`` and ``:path`` from the request line, then the
fields as received): :mod:`proxyd.gate` decides what they mean. The body bytes of one request
that one ``receive_data`` brings are one ``DataReceived`` (llhttp reports each chunk apart: a
read of one-byte chunks would otherwise be thousands of events, and as many backend writes).

HTTP/1.1 has one exchange at a time. Pipelined requests are parsed as they arrive, but their
events wait in ``_queue`` until the response in flight is finished. Parsed, they cost about 20
times the bytes they came from, so parsing stops once ``_PIPELINE`` requests wait unanswered
(llhttp is fed ``_STEP`` bytes at a time, so it stops soon after, in a request or not): the
rest is held raw and the same parser goes on as answers finish. While events or bytes wait,
``backlogged`` is True and the network layer stops reading, so the codec holds at most about one
socket read, and only a few hundred tiny requests of it parsed. Requests are numbered 1, 2, 3 ...
as stream ids.

Responses are serialised here: the status line, the fields, and the framing the head allows —
the backend's Content-Length, else chunked for HTTP/1.1 clients, else (HTTP/1.0) the end of the
connection. The head is checked once more (one CR LF per line, no NUL nor any other control
character but HTAB) before it is queued;
``Refused("unsafe_response")`` otherwise. Keep-alive follows the client (``Connection: close``,
HTTP/1.0 without keep-alive, or an HTTP/1.0 request with Transfer-Encoding: RFC 9112 §6.1) and
ends after a response that finished before its request did.
HTTP/1.1 has no flow control: backpressure is the network layer's pausing of transports.

Upgrades: llhttp stops at the end of a request that asks for one (``Upgrade`` with ``Connection:
upgrade``, or CONNECT). What the client sent after a bodiless one is held, unparsed, and the codec
is ``backlogged`` (the network layer stops reading) until the answer to that request (not the end
of an earlier pipelined one) decides: :meth:`open_tunnel` (the backend switched to WebSocket; the
response is ``101``) makes every held and later byte a ``DataReceived`` of that exchange and every
``send_data`` raw bytes, until the connection ends; :meth:`take_rest` hands the held bytes to the
HTTP/2 codec of an h2c upgrade; any other answer resumes HTTP/1.1 parsing of the held bytes once
it is finished (or drops them when the connection closes).

The framing never depends on the upgrade: a request that offers one but has a body
(Content-Length > 0 or any Transfer-Encoding) is an ordinary request whose body follows its head
(RFC 9112 §6; the offer is ignored, RFC 9110 §7.8, as nginx and nghttpx do, and the gate never
makes it a tunnel). httptools tells llhttp to skip that body (its ``on_headers_complete`` returns
1 whenever llhttp's upgrade flag is set, which no callback can change), so the codec reads it
with a fresh parser primed with a head of our own: ``PUT / HTTP/1.1`` and the request's own
Content-Length or Transfer-Encoding fields, no upgrade (:meth:`_reframe`; the callbacks of that
head are ignored). llhttp then checks and delivers the body, trailers and any pipelined request
after it exactly as for a request without the offer. Refusing such requests (400 and close) was
the fallback; it is not needed, and it would refuse ordinary requests that merely carry an offer
(an h2c offer on a POST, a front that adds ``Connection: upgrade`` to every request).
"""

import http
from collections import deque

import httptools

from proxyd import events as ev
from proxyd.errors import REASONS, Refused, error_response

_PHRASES = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_PHRASES.update(REASONS)
# The window HTTP/1.1 "has": send_data may take this much at a time.
_UNLIMITED = 1 << 20
_CRLF = b"\r\n"
_NO_BODY = (204, 304)
_DROPPED = frozenset((b"connection", b"transfer-encoding", b"keep-alive"))
_FRAMING = (b"content-length", b"transfer-encoding")
# Pipelining: parsing stops once this many requests are parsed and not yet answered (the bytes
# after them are held raw). Clients pipeline a few requests at a time (h2load -m, old browsers
# at most 6): 16 parses those in one go. At least 2: the request answered may still be sending
# its body, which must be parsed meanwhile.
_PIPELINE = 16
# llhttp parses a read this many bytes at a time (a body of known length at once), so that it
# stops soon after _PIPELINE: at most _STEP / 18 more requests (18 bytes: 'GET / HTTP/1.1' CRLF
# CRLF, the shortest), ~120 KiB of events, are parsed than the bound allows. Each step costs
# about 1 us: a chunked body is parsed 16 steps per 64 KiB read.
_STEP = 4096


class _Exchange:
    """What the writer needs to know about one request."""

    __slots__ = ("stream_id", "head_only", "keep_alive", "http10", "complete")

    def __init__(self, stream_id, head_only, keep_alive, http10):
        self.stream_id = stream_id
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.http10 = http10
        self.complete = False


class H1ServerCodec:
    """Server side of an HTTP/1.1 client connection in the codec shape of :mod:`proxyd.codec`."""

    flow_controlled = False
    protocol = "http/1.1"

    def __init__(self, *, max_header_list_size=65536, scheme=b"http"):
        self._parser = httptools.HttpRequestParser(self)
        self._max_head = max_header_list_size
        self._scheme = scheme
        self._next_id = 0
        self._queue = deque()  # parsed events not yet handed out
        self._exchanges = deque()  # requests parsed, oldest first; [0] is the one answered
        self._active = None  # the exchange handed out and not yet answered completely
        self._out = []
        self._failed = False
        self._closing = False
        self.wants_close = False
        self.wants_abort = False  # close with a reset: a response was cut short
        # Parsing state of the message in progress.
        self._url = []
        self._fields = None
        self._trailers = None
        self._size = 0
        self._has_body = False
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._skipped = False  # llhttp will skip this message's body (an upgrade offer)
        self._priming = None  # while a _reframe head is parsed: the head size to restore
        self._sid = 0
        self._pieces = None  # body bytes of self._open (a DataReceived) while it grows
        self._open = None
        # Writing state of the response in progress.
        self._chunked = False
        self._left = None
        self._head_sent = False
        self._body_allowed = True
        # Upgrades: the bytes after a request that asked for one (None: no upgrade pending), the
        # stream id of that request, and the stream id of the tunnel once the backend switched.
        self._held = None
        self._held_sid = 0
        self._tunnel = 0

    @property
    def open_streams(self):
        """1 while a request/response exchange is in progress, else 0."""
        return int(self._active is not None)

    @property
    def backlogged(self):
        """True while a later request, or bytes held unparsed, wait for the one in flight (stop
        reading meanwhile)."""
        if self._tunnel:
            return False  # a tunnel's bytes flow as they come
        return (bool(self._queue) and self._active is not None) or self._held is not None

    def initiate(self):
        """HTTP/1.1 has no preface."""

    def release(self):
        """The connection is lost: drop the parser, whose callbacks (bound methods of this codec)
        make a reference cycle that would keep the codec for the garbage collector."""
        self._parser = None

    # -- parsing ---------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed client bytes (``b""`` only hands out events that were waiting); return events."""
        if self._tunnel:
            out = list(self._queue)
            self._queue.clear()
            if data:
                out.append(ev.DataReceived(stream_id=self._tunnel, data=data))
            return out
        if data and not self._failed:
            if self._held is not None:
                self._held += data
            else:
                self._feed(data)
        out = []
        queue = self._queue
        while queue:
            event = queue[0]
            if type(event) is ev.RequestReceived:
                if self._active is not None:
                    break
                self._active = self._exchanges[0]
                self._head_sent = False
            out.append(queue.popleft())
        return out

    def _feed(self, data):
        """Parse ``data`` a step at a time; hold the rest once ``_PIPELINE`` requests wait or
        after a bodiless upgrade request; reframe an upgrade offer with a body."""
        start = 0
        try:
            while True:
                if len(self._exchanges) >= _PIPELINE:
                    self._held = bytearray(memoryview(data)[start:])
                    self._held_sid = 0  # waits for answers, not for one request's (_finish)
                    return
                left = self._body_left
                stop = start + (left if left > _STEP else _STEP)
                try:
                    self._parser.feed_data(data[start:stop] if start or stop < len(data) else data)
                except httptools.HttpParserUpgrade as upgrade:
                    rest = data[start + upgrade.args[0]:]
                    if not self._skipped:
                        # Hold what follows until the answer tells what it is (module docstring).
                        self._held = bytearray(rest)
                        self._held_sid = self._sid
                        return
                    data, stop = self._reframe() + rest, 0  # the body follows: parse it as a body
                except httptools.HttpParserError as exc:
                    self._framing_error(exc)
                    return
                if stop >= len(data):
                    return
                start = stop
        finally:
            self._close_body()

    def _reframe(self):
        """A fresh parser for the body llhttp skipped after an upgrade offer; return the head it
        must read first: the request's own framing fields and nothing that asks for an upgrade.
        Its callbacks change nothing (``_priming``), its fields are counted apart."""
        self._parser = httptools.HttpRequestParser(self)
        self._priming, self._size = self._size, 0
        lines = [b"%s: %s\r\n" % item for item in self._fields if item[0].lower() in _FRAMING]
        return b"PUT / HTTP/1.1\r\n" + b"".join(lines) + _CRLF

    def on_message_begin(self):
        if self._priming is not None:
            return  # the head of _reframe, not a request
        self._next_id += 1
        self._sid = self._next_id
        self._url = []
        self._fields = []
        self._trailers = None
        self._size = 0

    def on_url(self, url):
        self._url.append(url)
        self._grow(len(url))

    def on_header(self, name, value):
        if self._trailers is not None:
            self._trailers.append((name, value))
        else:
            self._fields.append((name, value))
        self._grow(len(name) + len(value) + 4)

    def _grow(self, n):
        self._size += n
        if self._size > self._max_head:
            raise Refused("head_too_large")

    def on_headers_complete(self):
        if self._priming is not None:
            # The end of the head of _reframe: the skipped body comes next.
            self._size, self._priming = self._priming, None
            self._trailers = []
            self._skipped = False
            return
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version()
        has_body = chunked = False
        self._body_left = 0
        for name, value in self._fields:
            lower = name.lower()
            if lower == b"transfer-encoding":
                has_body = chunked = True
            elif lower == b"content-length" and value.strip(b"0"):
                has_body = True
                self._body_left = int(value)  # llhttp checked it: digits, one field, no TE
        self._has_body = has_body
        self._skipped = has_body and parser.should_upgrade()
        self._trailers = []
        http10 = version == "1.0"
        # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing (a 1.0 hop
        # may not know it): the connection closes after the request, keep-alive or not.
        exchange = _Exchange(self._sid, method == b"HEAD",
                             parser.should_keep_alive() and not (http10 and chunked), http10)
        self._exchanges.append(exchange)
        head = [(b":method", method), (b":path", b"".join(self._url))]
        head.extend(self._fields)
        self._queue.append(ev.RequestReceived(
            stream_id=self._sid, headers=head, end_stream=not has_body,
            http_version=b"1.0" if version == "1.0" else b"1.1"))

    def on_body(self, body):
        self._body_left -= len(body)
        if self._pieces is not None:
            self._pieces.append(body)  # one DataReceived per read, not one per chunk
            return
        self._open = ev.DataReceived(stream_id=self._sid, data=body)
        self._queue.append(self._open)
        self._pieces = [body]

    def _close_body(self):
        """Give the growing DataReceived all its bytes (at the end of a message or a feed)."""
        pieces = self._pieces
        if pieces is not None:
            if len(pieces) > 1:
                self._open.data = b"".join(pieces)
            self._pieces = self._open = None

    def on_message_complete(self):
        if self._skipped:
            return  # llhttp skipped the body; _feed reframes it (module docstring)
        self._close_body()
        sid = self._sid
        if self._trailers:
            self._queue.append(ev.TrailersReceived(stream_id=sid, headers=self._trailers))
        if self._has_body:
            self._queue.append(ev.StreamEnded(stream_id=sid))
        if self._exchanges and self._exchanges[-1].stream_id == sid:
            self._exchanges[-1].complete = True
        self._trailers = None

    def open_tunnel(self, stream_id):
        """The exchange ``stream_id`` became a tunnel (its ``101`` is queued): from now on the
        client's bytes, held ones first, are its ``DataReceived``."""
        self._tunnel = stream_id
        held, self._held = self._held, None
        self._queue.clear()
        if held:
            self._queue.append(ev.DataReceived(stream_id=stream_id, data=bytes(held)))

    def take_rest(self):
        """Hand over (and forget) the bytes held after an upgrade request (h2c: the client's
        HTTP/2 preface and first frames); the codec is done."""
        held, self._held = self._held, None
        self._failed = True
        self._queue.clear()
        return bytes(held or b"")

    def _resume_parsing(self):
        """Parse the held bytes again: an upgrade request got an ordinary answer (its parser
        stopped at the upgrade: a fresh one), or fewer than ``_PIPELINE`` requests wait (the
        same parser goes on, maybe in the middle of a request)."""
        held, self._held = self._held, None
        if self._held_sid:
            self._parser = httptools.HttpRequestParser(self)
        if held and not self._failed:
            self._feed(held)

    def _framing_error(self, exc):
        """Answer a framing error (or an oversized head) and close.

        Idle: the table's answer, then close. In the body of the request in flight: that stream
        is refused (its answer, or a reset if its response started) and the connection closes.
        In a pipelined request after complete ones (one in flight, or waiting to be handed out
        when held bytes are parsed as a response finishes): no answer may overtake theirs, the
        connection closes once the next response is finished. Bytes after a complete request
        that closes the connection (``Connection: close``, HTTP/1.0), which llhttp refuses
        before any message begins, are nobody's request: that one is still served, then the
        connection closes (RFC 9112 §9.6), and no 400 goes out in its place.
        """
        self._failed = True
        self._closing = True
        cause = exc.__context__ if isinstance(exc.__context__, Refused) else None
        reason = cause.reason if cause is not None else "bad_framing"
        detail = f"{reason}: {cause.detail if cause is not None else exc}"
        active = self._active
        last = self._exchanges[-1] if self._exchanges else None
        # The broken request is the one in progress, unless the error came before any message
        # began (llhttp refuses bytes after a request that closes the connection): then
        # ``_sid`` is that complete request, which is served, and nothing is dropped.
        broken = self._sid if last is None or last.stream_id != self._sid or not last.complete \
            else 0
        # Drop what the broken request produced so far (a head without its end must not run).
        while self._queue and self._queue[-1].stream_id == broken and (
                active is None or active.stream_id != broken):
            self._queue.pop()
        if last is not None and last.stream_id == broken and (
                active is None or active.stream_id != broken):
            self._exchanges.pop()
        if active is None and not self._exchanges:
            status, headers, body = error_response(reason)
            self._out.append(_head(status, headers + [(b"connection", b"close")]) + body)
            self.wants_close = True
        elif active is not None and not active.complete:
            # The request in flight is broken in its body: it gets the table's answer (if its
            # response has not started), then the connection closes.
            self._queue.append(ev.StreamRefused(stream_id=active.stream_id, reason=reason,
                                                detail=detail))
        self._queue.append(ev.ConnectionTerminated(error_code=1, remote=False, reason=detail))

    # -- writing ---------------------------------------------------------------------------
    def send_response(self, stream_id, status, headers, end_stream=False):
        """Queue the response head with the framing it allows (see the module docstring)."""
        exchange = self._active
        if exchange is None or exchange.stream_id != stream_id or self._head_sent:
            raise Refused("unsafe_response", f"no response expected on stream {stream_id}")
        fields = [item for item in headers if item[0] not in _DROPPED]
        if status == 101:
            if self._held is None or self._held_sid != stream_id:
                raise Refused("unsafe_response", "101 to a request that asked for no upgrade")
            fields.append((b"connection", b"upgrade"))
            exchange.keep_alive = False
            self._out.append(_head(status, fields))
            self._head_sent = True
            self._body_allowed = True
            self._chunked = False
            self._left = None
            return
        length = None
        for name, value in fields:
            if name == b"content-length":
                length = int(value)
        body_allowed = not exchange.head_only and status not in _NO_BODY
        keep = exchange.keep_alive and not self._closing
        self._chunked = False
        if not body_allowed:
            self._left = 0
        elif length is not None:
            self._left = length
        elif exchange.http10:
            self._left = None
            keep = False
        else:
            self._left = None
            self._chunked = True
            fields.append((b"transfer-encoding", b"chunked"))
        if not keep:
            fields.append((b"connection", b"close"))
            exchange.keep_alive = False
        self._out.append(_head(status, fields))
        self._head_sent = True
        self._body_allowed = body_allowed
        if end_stream:
            self.end_stream(stream_id)

    def send_informational(self, stream_id, status, headers):
        """Queue a 1xx head for HTTP/1.1 clients (HTTP/1.0 clients get none; never 101)."""
        exchange = self._active
        if (exchange is not None and exchange.stream_id == stream_id and not exchange.http10
                and status != 101 and not self._head_sent):
            self._out.append(_head(status, headers))

    def send_data(self, stream_id, data, end_stream=False):
        """Queue body bytes."""
        if data and self._writing(stream_id) and self._body_allowed:
            if self._chunked:
                self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                if self._left is not None:
                    if len(data) > self._left:
                        raise Refused("unsafe_response", "body longer than its Content-Length")
                    self._left -= len(data)
                self._out.append(data)
        if end_stream:
            self.end_stream(stream_id)

    def send_trailers(self, stream_id, headers):
        """Queue trailers (only a chunked body can carry them) and end the response."""
        if self._writing(stream_id) and self._chunked and headers:
            block = b"0\r\n" + b"".join(b"%s: %s\r\n" % item for item in headers) + _CRLF
            _check(block, 2 + len(headers))
            self._out.append(block)
            self._chunked = False
        self.end_stream(stream_id)

    def end_stream(self, stream_id):
        """End the response; the next request's events come out of ``receive_data(b"")``."""
        if not self._writing(stream_id):
            return
        exchange = self._active
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        elif self._left:
            exchange.keep_alive = False  # shorter than announced: only closing can tell
        self._finish(exchange)

    def _writing(self, stream_id):
        exchange = self._active
        return exchange is not None and exchange.stream_id == stream_id and self._head_sent

    def _finish(self, exchange):
        self._active = None
        if self._exchanges and self._exchanges[0] is exchange:
            self._exchanges.popleft()
        if not (exchange.keep_alive and exchange.complete) or self._closing or self._failed:
            self.wants_close = True
            self._queue.clear()
            self._held = None
        elif self._held is not None and (
                self._held_sid == exchange.stream_id  # not an earlier one (module docstring)
                or not self._held_sid and len(self._exchanges) < _PIPELINE):
            self._resume_parsing()

    def reset_stream(self, stream_id, error_code):
        """HTTP/1.1 cannot reset one exchange: the connection closes. A response already begun
        and not complete is cut (``wants_abort``): a clean close would end an HTTP/1.0 body
        that ends with the connection as if it were whole. A WebSocket tunnel closes as before
        (its own close frames tell a clean end from a broken one)."""
        exchange = self._active
        if exchange is not None and exchange.stream_id == stream_id:
            self._active = None
            if self._head_sent and not self._tunnel:  # its end (_finish) was never written;
                self.wants_abort = True  # a tunnel's bytes have no framing to cut: it closes
        self.wants_close = True
        self._queue.clear()

    def available_window(self, stream_id):
        """HTTP/1.1 has no window; the transport's producer pauses instead."""
        return _UNLIMITED

    def acknowledge(self, stream_id, n):
        """HTTP/1.1 has no flow control."""

    def goaway(self, error_code=0):
        """Close after the response in progress (or now, when idle)."""
        self._closing = True
        if self._active is None:
            self.wants_close = True

    def data_to_send(self):
        """Return and clear the queued output."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data


# What a head may hold besides its CR LF line ends: HTAB, visible ASCII, SP, obs-text (no NUL,
# no other control character, which lenient parsers may read as whitespace).
_HEAD_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


def _check(block, lines):
    if (block.count(b"\n") != lines or block.count(b"\r") != lines
            or block.count(_CRLF) != lines or block.translate(None, _HEAD_BYTES)):
        raise Refused("unsafe_response", "CR, LF, NUL or another control inside a field")


def _head(status, headers):
    """A response head (status line, fields, blank line), checked for CR, LF and controls."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, b"Unknown"))]
    for name, value in headers:
        parts += (name, b": ", value, _CRLF)
    parts.append(_CRLF)
    block = b"".join(parts)
    _check(block, 2 + len(headers))
    return block
