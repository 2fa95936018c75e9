"""HTTP/2 server-side codec: ``h2.connection.H2Connection`` behind proxyd's codec shape.

Strategy: h2 does framing, HPACK and flow-control bookkeeping; this wrapper turns h2 events into
:mod:`proxyd.events`, validates requests itself so that a malformed request costs only its own
stream (RST_STREAM PROTOCOL_ERROR, RFC 9113 §8.1.1) instead of the whole connection, tracks
content-length per stream for the same reason, and writes GOAWAY frames itself so that streams
in flight may still finish after a graceful GOAWAY (h2 refuses to send anything once it has sent
GOAWAY through ``close_connection``).
"""

import contextlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from proxyd import events as ev
from proxyd.codec import ENHANCE_YOUR_CALM, PROTOCOL_ERROR, REFUSED_STREAM

# Headers that must not appear in HTTP/2 requests (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
_REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path"])
# RFC 9110 tchar, lower-case only (upper case is malformed in HTTP/2).
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_BAD_VALUE_BYTES = (b"\x00", b"\r", b"\n")
# Connection-level receive window we grant on top of the RFC's 65535.
CONNECTION_WINDOW = 1 << 20
# Rapid reset (CVE-2023-44487): a client whose resets exceed this many, and more than half of the
# streams it opened, is told to calm down (GOAWAY ENHANCE_YOUR_CALM).
MAX_RESETS = 200


# Floods (CVE-2019-9518 family): consecutive empty DATA frames without END_STREAM, and
# WINDOW_UPDATEs beyond 100 + 10 per DATA frame we sent, end the connection with ENHANCE_YOUR_CALM.
MAX_EMPTY_DATA = 100
MAX_WINDOW_UPDATES_PER_DATA = 10


class _BoundedFrameBuffer(FrameBuffer):
    """h2's FrameBuffer bounds a header block at 64 frames; this one bounds its bytes too."""

    max_block = 65536

    def _update_header_buffer(self, f):
        if self._headers_buffer and f is not None:
            size = sum(len(x.data) for x in self._headers_buffer) + len(getattr(f, "data", b""))
            if size > self.max_block:
                raise h2.exceptions.DenialOfServiceError(
                    f"header block over {self.max_block} bytes (CONTINUATION flood)")
        return super()._update_header_buffer(f)


def _noop(*_args):
    """Stand-in for h2's per-stream content-length tracking (done here, per stream)."""


class GracefulGoaway:
    """Mixin for H2Connection: a peer's GOAWAY with NO_ERROR lets streams in flight finish.

    h2 closes its state machine on any received GOAWAY and then rejects every later frame, but
    RFC 9113 §6.8 says streams up to the last stream id still complete. An error GOAWAY keeps
    h2's behaviour (the connection is over).
    """

    def _receive_goaway_frame(self, frame):
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Connection(GracefulGoaway, h2.connection.H2Connection):
    """H2Connection whose streams leave content-length checks to the wrapper, and which refuses
    streams over SETTINGS_MAX_CONCURRENT_STREAMS with RST_STREAM REFUSED_STREAM (RFC 9113
    §5.1.2) instead of failing the whole connection."""

    refused_streams = 0
    # h2 remembers 65536 closed streams per connection (about 10 MiB); long-lived connections
    # need only the recent ones to tell late frames from protocol errors.
    MAX_CLOSED_STREAMS = 1024

    def _receive_headers_frame(self, frame):
        stream_id = frame.stream_id
        if (stream_id not in self.streams
                and self.open_inbound_streams >= self.local_settings.max_concurrent_streams
                and stream_id % 2 == 1 and stream_id > self.highest_inbound_stream_id):
            # Decode anyway: the HPACK state is shared by the whole connection.
            h2.connection._decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = stream_id
            rst = RstStreamFrame(stream_id)
            rst.error_code = REFUSED_STREAM
            self._data_to_send += rst.serialize()
            self.refused_streams += 1
            return [], []
        return super()._receive_headers_frame(frame)

    def _begin_new_stream(self, stream_id, allowed_ids):
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream._initialize_content_length = _noop
        stream._track_content_length = _noop
        return stream


class MalformedHeaders(Exception):
    """A header block that makes the request malformed (RFC 9113 §8.1.1)."""


def split_request_headers(headers):
    """Validate an HTTP/2 request header block; return ``(pseudo dict, regular list, length)``.

    ``length`` is the declared content-length or None. Raises :class:`MalformedHeaders`.
    """
    pseudo = {}
    regular = []
    length = None
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                raise MalformedHeaders(f"bad pseudo-header {name!r}")
            pseudo[name] = value
            continue
        if not name or not _TOKEN_CHARS.issuperset(name):
            raise MalformedHeaders(f"invalid header name {name!r}")
        if name in _CONNECTION_SPECIFIC:
            raise MalformedHeaders(f"connection-specific header {name.decode()!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise MalformedHeaders("te other than trailers")
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise MalformedHeaders(f"bad content-length {value!r}")
            length = int(value)
        regular.append((name, value))
        if any(bad in value for bad in _BAD_VALUE_BYTES):
            raise MalformedHeaders(f"invalid value of {name.decode()!r}")
    method = pseudo.get(b":method")
    if not method:
        raise MalformedHeaders("missing :method")
    if method == b"CONNECT":
        raise MalformedHeaders("CONNECT is not supported")
    if not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        raise MalformedHeaders("missing :scheme or :path")
    return pseudo, regular, length


class H2Base:
    """What both sides of an h2-backed codec share: setup, framing of DATA, windows, resets."""

    _conn = None

    def _make_connection(self, connection_class, *, client_side, settings, max_header_list_size):
        """Create the h2 connection with our SETTINGS in force at once and bounded header blocks.

        Settings replaced this way are never "acknowledged" inside h2, so the HPACK decoder's
        limit and the CONTINUATION byte bound are set here explicitly.
        """
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=client_side,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = connection_class(config=config)
        settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = max_header_list_size
        settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        conn.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
        conn.max_inbound_frame_size = conn.local_settings.max_frame_size
        conn.decoder.max_header_list_size = max_header_list_size
        conn.incoming_buffer = _BoundedFrameBuffer(server=not client_side)
        conn.incoming_buffer.max_block = max_header_list_size
        self._conn = conn

    def send_data(self, stream_id, data, end_stream=False):
        """Queue body bytes split into frames; ``len(data)`` must fit :meth:`available_window`."""
        conn = self._conn
        size = conn.max_outbound_frame_size
        last = len(data)
        if last <= size:
            conn.send_data(stream_id, data, end_stream=end_stream)
            return
        view = memoryview(data)
        for start in range(0, last, size):
            conn.send_data(stream_id, bytes(view[start:start + size]),
                           end_stream=end_stream and start + size >= last)

    def reset_stream(self, stream_id, error_code):
        """Reset a stream (ignored when it is already closed)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._conn.reset_stream(stream_id, error_code)

    def available_window(self, stream_id):
        """Bytes :meth:`send_data` may take now on this stream."""
        try:
            return self._conn.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0

    def acknowledge(self, stream_id, n):
        """``n`` flow-controlled bytes were passed on: reopen the peer's windows as h2 sees fit."""
        if n:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self._conn.acknowledge_received_data(n, stream_id)

    def data_to_send(self):
        """Return and clear the queued output."""
        return self._conn.data_to_send()

    def _feed(self, data):
        """h2's events for ``data``, or a ConnectionTerminated when h2 failed the connection."""
        try:
            return self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.wants_close = True
            code = getattr(exc, "error_code", PROTOCOL_ERROR) or PROTOCOL_ERROR
            return ev.ConnectionTerminated(error_code=int(code), remote=False, reason=str(exc))


class H2ServerCodec(H2Base):
    """Server side of an HTTP/2 connection in the codec shape of :mod:`proxyd.codec`."""

    flow_controlled = True
    protocol = "h2"

    def __init__(self, *, max_concurrent_streams=100, max_header_list_size=65536, scheme=b"https"):
        self._make_connection(
            _Connection, client_side=False, max_header_list_size=max_header_list_size,
            settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams})
        self._empty_data = 0
        self._window_updates = 0
        self._data_frames_sent = 0
        self._scheme = scheme
        self._lengths = {}  # stream id -> [declared, received] while a length is declared
        self._ended_with_headers = set()
        self._refused_above = None  # after our graceful GOAWAY: last stream id we serve
        self._highest_seen = 0
        self.resets_received = 0
        self.wants_close = False

    @property
    def open_streams(self):
        """Streams not yet closed in both directions."""
        return self._conn.open_inbound_streams

    def initiate(self):
        """Queue the server preface (SETTINGS) and widen the connection receive window."""
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def receive_data(self, data):
        """Feed bytes from the client; return :mod:`proxyd.events`."""
        h2_events = self._feed(data)
        if type(h2_events) is ev.ConnectionTerminated:
            return [h2_events]
        out = []
        for event in h2_events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._on_data(event, out)
            elif kind is h2.events.RequestReceived:
                self._on_request(event, out)
            elif kind is h2.events.StreamEnded:
                self._on_end(event.stream_id, out)
            elif kind is h2.events.WindowUpdated:
                self._window_updates += 1
                if (self._window_updates > 100 + MAX_WINDOW_UPDATES_PER_DATA * self._data_frames_sent
                        and not self.wants_close):
                    self._fail(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood", out)
                out.append(ev.WindowUpdated(stream_id=event.stream_id))
            elif kind is h2.events.StreamReset:
                self._lengths.pop(event.stream_id, None)
                self.resets_received += 1
                out.append(ev.StreamReset(stream_id=event.stream_id, error_code=int(event.error_code)))
                if (self.resets_received > MAX_RESETS and not self.wants_close
                        and self.resets_received * 2 > self._highest_seen // 2 + 1):
                    self._fail(ENHANCE_YOUR_CALM, "too many stream resets", out)
            elif kind is h2.events.TrailersReceived:
                self._on_trailers(event, out)
            elif kind is h2.events.RemoteSettingsChanged:
                out.append(ev.WindowUpdated(stream_id=0))
            elif kind is h2.events.ConnectionTerminated:
                out.append(ev.ConnectionTerminated(
                    error_code=int(event.error_code or 0),
                    last_stream_id=event.last_stream_id or 0,
                ))
        return out

    def _fail(self, code, reason, out):
        """Fail the whole connection with GOAWAY ``code``."""
        self._conn.close_connection(error_code=code)
        self.wants_close = True
        out.append(ev.ConnectionTerminated(error_code=code, remote=False, reason=reason))

    def _reset(self, stream_id, code, out, reason=""):
        """Reset one stream ourselves and tell the caller."""
        self._lengths.pop(stream_id, None)
        self._ended_with_headers.discard(stream_id)
        try:
            self._conn.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            return
        out.append(ev.StreamReset(stream_id=stream_id, error_code=code, remote=False))

    def _on_request(self, event, out):
        stream_id = event.stream_id
        self._highest_seen = stream_id
        if self._refused_above is not None and stream_id > self._refused_above:
            self._reset(stream_id, REFUSED_STREAM, out)
            return
        try:
            pseudo, headers, length = split_request_headers(event.headers)
        except MalformedHeaders as exc:
            self._reset(stream_id, PROTOCOL_ERROR, out, str(exc))
            return
        ended = event.stream_ended is not None
        if ended:
            if length:
                self._reset(stream_id, PROTOCOL_ERROR, out)
                return
            self._ended_with_headers.add(stream_id)
        elif length is not None:
            self._lengths[stream_id] = [length, 0]
        out.append(ev.RequestReceived(
            stream_id=stream_id,
            method=pseudo[b":method"],
            scheme=pseudo[b":scheme"],
            authority=pseudo.get(b":authority", b""),
            path=pseudo[b":path"],
            headers=headers,
            end_stream=ended,
            http_version=b"2",
        ))

    def _on_data(self, event, out):
        stream_id = event.stream_id
        if not event.data and event.stream_ended is None:
            self._empty_data += 1
            if self._empty_data > MAX_EMPTY_DATA and not self.wants_close:
                self._fail(ENHANCE_YOUR_CALM, "empty DATA flood", out)
        else:
            self._empty_data = 0
        counted = self._lengths.get(stream_id)
        if counted is not None:
            counted[1] += len(event.data)
            if counted[1] > counted[0]:
                self._conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                self._reset(stream_id, PROTOCOL_ERROR, out)
                return
        out.append(ev.DataReceived(
            stream_id=stream_id, data=event.data, flow_length=event.flow_controlled_length
        ))

    def _on_end(self, stream_id, out):
        if stream_id in self._ended_with_headers:
            self._ended_with_headers.discard(stream_id)
            return
        counted = self._lengths.pop(stream_id, None)
        if counted is not None and counted[0] != counted[1]:
            self._reset(stream_id, PROTOCOL_ERROR, out)
            return
        out.append(ev.StreamEnded(stream_id=stream_id))

    def _on_trailers(self, event, out):
        for name, _value in event.headers:
            if name[:1] == b":" or name in _CONNECTION_SPECIFIC:
                self._reset(event.stream_id, PROTOCOL_ERROR, out)
                return
        out.append(ev.TrailersReceived(stream_id=event.stream_id, headers=list(event.headers)))

    def send_response(self, stream_id, status, headers, end_stream=False):
        """Queue the response head."""
        block = [(b":status", b"%d" % status)]
        block.extend(headers)
        self._conn.send_headers(stream_id, block, end_stream=end_stream)

    def send_informational(self, stream_id, status, headers):
        """Queue a 1xx response head (not 101)."""
        if status != 101:
            self.send_response(stream_id, status, headers)

    def send_data(self, stream_id, data, end_stream=False):
        """Queue body bytes (counted: WINDOW_UPDATEs are bounded by the DATA frames we send)."""
        self._data_frames_sent += len(data) // self._conn.max_outbound_frame_size + 1
        H2Base.send_data(self, stream_id, data, end_stream)

    def send_trailers(self, stream_id, headers):
        """Queue trailers, ending the stream."""
        self._conn.send_headers(stream_id, headers, end_stream=True)

    def end_stream(self, stream_id):
        """End the response body."""
        self._conn.end_stream(stream_id)

    def reset_stream(self, stream_id, error_code):
        """Reset a stream (ignored when it is already closed)."""
        self._lengths.pop(stream_id, None)
        super().reset_stream(stream_id, error_code)

    def goaway(self, error_code=0):
        """Send a graceful GOAWAY naming the highest stream seen; later streams are refused."""
        if self._refused_above is not None:
            return
        self._refused_above = self._highest_seen
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._highest_seen
        frame.error_code = error_code
        self._conn._data_to_send += frame.serialize()
        if not self._conn.open_inbound_streams:
            self.wants_close = True
