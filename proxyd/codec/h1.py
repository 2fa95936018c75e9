"""HTTP/1.1 codecs over h11: the client-facing server side and the backend-facing client side.

Strategy: h11 owns the framing (content-length, chunked, keep-alive, pipelining pauses); these
wrappers give it the same shape as the HTTP/2 codec. The server side numbers requests 1, 2, 3 ...
as stream ids (one at a time, like HTTP/1.1 itself), answers framing errors with 400/431 and
closes, and rejects requests that smuggle (both Content-Length and Transfer-Encoding). HTTP/1.1 has
no flow control: backpressure is the network layer's pausing of transports.
"""

import http

import h11

from proxyd import events as ev
from proxyd.errors import REASONS

# Reason phrases (some clients, h2load among them, mis-parse an empty one).
_PHRASES = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_PHRASES.update(REASONS)
# The window HTTP/1.1 "has": send_data may take this much at a time.
_UNLIMITED = 1 << 20


def take_output(parts):
    """Join and clear a list of queued output pieces."""
    if not parts:
        return b""
    data = b"".join(parts)
    parts.clear()
    return data


def _has_body(headers):
    """True when a request head announces a body (RFC 9112 §6.3)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


def _reject_smuggling(headers):
    """Raise on Content-Length together with Transfer-Encoding (RFC 9112 §6.1)."""
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding")


def _check_head_size(request, limit):
    """Raise 431 for a complete request head larger than ``limit`` (h11 bounds only partial ones)."""
    size = len(request.method) + len(request.target)
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    if size > limit:
        raise h11.RemoteProtocolError("request head too large", error_status_hint=431)


class H1ServerCodec:
    """Server side of an HTTP/1.1 client connection in the codec shape of :mod:`proxyd.codec`."""

    flow_controlled = False
    protocol = "http/1.1"

    def __init__(self, *, max_header_list_size=65536, scheme=b"http"):
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_list_size)
        self._scheme = scheme
        self._stream_id = 0
        self._out = []
        self._active = False  # a request is in flight (its response not finished)
        self._skip_end = False
        self._closing = False
        self._failed = False
        self._max_head = max_header_list_size
        self.wants_close = False

    @property
    def open_streams(self):
        """1 while a request/response exchange is in progress, else 0."""
        return int(self._active)

    def initiate(self):
        """HTTP/1.1 has no preface."""

    def receive_data(self, data):
        """Feed client bytes (``b""`` only re-polls buffered, pipelined requests)."""
        conn = self._conn
        if self._failed:
            return []
        if data:
            if conn.their_state is h11.CLOSED or conn.their_state is h11.ERROR:
                return []
            conn.receive_data(data)
        out = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc, out)
                break
            kind = type(event)
            if kind is h11.Data:
                out.append(ev.DataReceived(stream_id=self._stream_id, data=bytes(event.data)))
            elif kind is h11.Request:
                try:
                    _reject_smuggling(event.headers)
                    _check_head_size(event, self._max_head)
                except h11.RemoteProtocolError as exc:
                    self._protocol_error(exc, out)
                    break
                self._on_request(event, out)
            elif kind is h11.EndOfMessage:
                if self._skip_end:
                    self._skip_end = False
                    continue
                if event.headers:
                    out.append(ev.TrailersReceived(stream_id=self._stream_id, headers=list(event.headers)))
                out.append(ev.StreamEnded(stream_id=self._stream_id))
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                break
            elif kind is h11.ConnectionClosed:
                if self._active:
                    out.append(ev.StreamReset(stream_id=self._stream_id, error_code=8))
                out.append(ev.ConnectionTerminated(reason="client closed"))
                self._active = False
                self.wants_close = True
                break
        return out

    def _on_request(self, event, out):
        self._stream_id += 1
        self._active = True
        headers = list(event.headers)
        authority = b""
        for name, value in headers:
            if name == b"host":
                authority = value
                break
        ended = not _has_body(headers)
        self._skip_end = ended
        if self._conn.client_is_waiting_for_100_continue:
            self._out.append(self._conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        out.append(ev.RequestReceived(
            stream_id=self._stream_id,
            method=event.method,
            scheme=self._scheme,
            authority=authority,
            path=event.target,
            headers=headers,
            end_stream=ended,
            http_version=event.http_version,
        ))

    def _protocol_error(self, exc, out):
        """Answer a framing error with 400 (431 for oversized heads) and close."""
        self._failed = True
        status = exc.error_status_hint or 400
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._raw_error(status)
        if self._active:
            out.append(ev.StreamReset(stream_id=self._stream_id, error_code=1, remote=False))
        self._active = False
        self.wants_close = True
        out.append(ev.ConnectionTerminated(error_code=1, remote=False, reason=str(exc)))

    def _raw_error(self, status):
        body = REASONS.get(status, b"Bad Request") + b"\n"
        self._out.append(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, REASONS.get(status, b"Bad Request"), len(body), body)
        )

    def send_response(self, stream_id, status, headers, end_stream=False):
        """Queue the response head (h11 picks content-length or chunked framing)."""
        if self._closing:
            headers = headers + [(b"connection", b"close")]
        self._out.append(self._conn.send(h11.Response(
            status_code=status, headers=headers, reason=_PHRASES.get(status, b"Unknown")
        )))
        if end_stream:
            self.end_stream(stream_id)

    def send_informational(self, stream_id, status, headers):
        """Queue a 1xx head for HTTP/1.1 clients (HTTP/1.0 clients get none)."""
        if status != 101 and self._conn.their_http_version == b"1.1":
            self._out.append(self._conn.send(h11.InformationalResponse(status_code=status, headers=headers)))

    def send_data(self, stream_id, data, end_stream=False):
        """Queue body bytes."""
        if data:
            self._out.append(self._conn.send(h11.Data(data=data)))
        if end_stream:
            self.end_stream(stream_id)

    def send_trailers(self, stream_id, headers):
        """Queue trailers (sent only when the body is chunked) and end the response."""
        self._finish(h11.EndOfMessage(headers=headers if self._chunked() else []))

    def _chunked(self):
        writer = self._conn._writer
        return type(writer).__name__ == "ChunkedWriter"

    def end_stream(self, stream_id):
        """End the response; start the next request cycle when keep-alive allows."""
        self._finish(h11.EndOfMessage())

    def _finish(self, end):
        conn = self._conn
        try:
            self._out.append(conn.send(end))
        except h11.LocalProtocolError:
            self.wants_close = True  # e.g. a body shorter than its content-length
            self._active = False
            return
        self._active = False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and not self._closing:
            conn.start_next_cycle()
        else:
            self.wants_close = True

    def reset_stream(self, stream_id, error_code):
        """HTTP/1.1 cannot reset one exchange: the connection closes."""
        self._active = False
        self.wants_close = True

    def available_window(self, stream_id):
        """HTTP/1.1 has no window; the transport's producer pauses instead."""
        return _UNLIMITED

    def acknowledge(self, stream_id, n):
        """HTTP/1.1 has no flow control."""

    def goaway(self, error_code=0):
        """Close after the response in progress (or now, when idle)."""
        self._closing = True
        if not self._active:
            self.wants_close = True

    def data_to_send(self):
        """Return and clear the queued output."""
        return take_output(self._out)


class H1ClientCodec:
    """Client side of one keep-alive backend connection, one request at a time."""

    def __init__(self, *, max_header_list_size=65536):
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_list_size)
        self._out = []
        self.stream_id = 0

    def send_request(self, stream_id, method, target, headers, end_stream=False):
        """Queue a request head; without a body when ``end_stream``."""
        self.stream_id = stream_id
        self._out.append(self._conn.send(h11.Request(method=method, target=target, headers=headers)))
        if end_stream:
            self._out.append(self._conn.send(h11.EndOfMessage()))

    def send_data(self, data):
        """Queue request body bytes."""
        if data:
            self._out.append(self._conn.send(h11.Data(data=data)))

    def end_request(self, trailers=()):
        """End the request body (trailers only travel in chunked bodies)."""
        self._out.append(self._conn.send(h11.EndOfMessage(headers=list(trailers))))

    def receive_data(self, data):
        """Feed backend bytes (``b""`` means the backend closed); return events.

        Raises :class:`h11.RemoteProtocolError` on a broken response.
        """
        conn = self._conn
        conn.receive_data(data)
        sid = self.stream_id
        out = []
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Data:
                out.append(ev.DataReceived(stream_id=sid, data=bytes(event.data)))
            elif kind is h11.Response:
                out.append(ev.ResponseReceived(stream_id=sid, status=event.status_code,
                                               headers=list(event.headers)))
            elif kind is h11.EndOfMessage:
                if event.headers:
                    out.append(ev.TrailersReceived(stream_id=sid, headers=list(event.headers)))
                out.append(ev.StreamEnded(stream_id=sid))
            elif kind is h11.InformationalResponse:
                out.append(ev.InformationalResponse(stream_id=sid, status=event.status_code,
                                                    headers=list(event.headers)))
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                break
            elif kind is h11.ConnectionClosed:
                out.append(ev.ConnectionTerminated(reason="backend closed"))
                break
        return out

    @property
    def response_complete(self):
        """The backend finished its response."""
        return self._conn.their_state is h11.DONE

    def reusable(self):
        """Both sides done and keep-alive allowed: start the next cycle and return True."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def data_to_send(self):
        """Return and clear the queued output."""
        return take_output(self._out)
