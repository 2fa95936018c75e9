"""HTTP/2 client-side codec for backends: ``h2.connection.H2Connection`` in the codec shape.

Strategy: h2 does framing, HPACK and flow control; this wrapper opens streams for proxied
requests, turns h2 events into :mod:`proxyd.events`, and exposes what the backend pool needs to
multiplex: the peer's SETTINGS_MAX_CONCURRENT_STREAMS, the number of open streams, GOAWAY's last
stream id, and PING round trips for liveness. It builds the HTTP/2 wire form of a neutral
:class:`proxyd.bridge.BackendRequest` itself (pseudo-header fields, ``te: trailers`` when the
client accepts trailers, the declared content-length). Responses go out raw: ``:status`` is read
(0 when it is not three digits) and :mod:`proxyd.gate` judges the rest.

WebSocket (a request whose ``upgrade`` is set): an RFC 8441 extended CONNECT (``:protocol``, no
``Sec-WebSocket-Key``, the stream left open), only to a backend that advertised
SETTINGS_ENABLE_CONNECT_PROTOCOL (``Refused("bad_upgrade")`` otherwise); its 2xx is reported as
:class:`proxyd.events.TunnelOpened`, any other status as an ordinary response.
"""

import contextlib

import h2.events
import h2.exceptions
import h2.settings

from proxyd import events as ev
from proxyd.codec import PROTOCOL_ERROR
from proxyd.codec.h2shim import make_connection
from proxyd.errors import Refused

# Receive windows we grant the backend: per stream (SETTINGS) and for the connection.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024


class H2Base:
    """What both sides of an h2-backed codec share: setup, framing of DATA, windows, resets."""

    _conn = None
    _extra = b""

    def _make_connection(self, *, client_side, settings, max_header_list_size):
        """Create the h2 connection (see :func:`proxyd.codec.h2shim.make_connection`)."""
        self._conn = make_connection(client_side, settings, max_header_list_size)

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
        """``n`` flow-controlled bytes were passed on: reopen the peer's windows as h2 sees fit.

        The connection window reopens even when the stream is gone (h2 credits it before it
        looks the stream up).
        """
        if n:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
                                     KeyError):
                self._conn.acknowledge_received_data(n, stream_id)

    def queue_frame(self, frame):
        """Queue a frame of our own after everything h2 queued so far (public API only)."""
        self._extra += self._conn.data_to_send() + frame.serialize()

    def data_to_send(self):
        """Return and clear the queued output."""
        if self._extra:
            data, self._extra = self._extra + self._conn.data_to_send(), b""
            return data
        return self._conn.data_to_send()

    def _feed(self, data):
        """h2's events for ``data``, or a ConnectionTerminated when h2 failed the connection."""
        try:
            return self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.wants_close = True
            code = getattr(exc, "error_code", PROTOCOL_ERROR) or PROTOCOL_ERROR
            return ev.ConnectionTerminated(error_code=int(code), remote=False, reason=str(exc))


class H2ClientCodec(H2Base):
    """Client side of one HTTP/2 backend connection."""

    def __init__(self, *, max_header_list_size=65536):
        self._make_connection(client_side=True,
                              max_header_list_size=max_header_list_size,
                              settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.goaway_last_stream_id = None
        self.wants_close = False
        self.pings_outstanding = 0
        self._tunnels = set()  # extended CONNECT streams still waiting for their answer
        self.settings_received = False  # the backend's first SETTINGS arrived

    def initiate(self):
        """Queue the client preface and SETTINGS, and widen the connection window."""
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    @property
    def max_concurrent_streams(self):
        """How many streams the backend lets us open at once."""
        return self._conn.remote_settings.max_concurrent_streams

    @property
    def open_streams(self):
        """Streams we opened that are not closed yet."""
        return self._conn.open_outbound_streams

    @property
    def accepting(self):
        """True while new streams may be opened on this connection."""
        return self.goaway_last_stream_id is None and not self.wants_close

    @property
    def connect_protocol(self):
        """True when the backend advertised SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)."""
        return self._conn.remote_settings.get(
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 1

    def send_request(self, request, scheme, default_authority=b""):
        """Open a stream with the head of ``request`` (a BackendRequest); returns its stream id."""
        if request.upgrade is not None:
            return self._send_connect(request, scheme, default_authority)
        stream_id = self._conn.get_next_available_stream_id()
        block = [(b":method", request.method), (b":scheme", scheme),
                 (b":authority", request.authority or default_authority),
                 (b":path", request.target)]
        block.extend(request.headers)
        if request.te_trailers:
            block.append((b"te", b"trailers"))
        if request.content_length is not None:
            block.append((b"content-length", b"%d" % request.content_length))
        self._conn.send_headers(stream_id, block, end_stream=not request.has_body)
        return stream_id

    def _send_connect(self, request, scheme, default_authority):
        """RFC 8441 §4: the WebSocket handshake as an extended CONNECT (see the module
        docstring); the stream stays open for the tunnel's bytes."""
        if not self.connect_protocol:
            raise Refused("bad_upgrade", "the HTTP/2 backend does not offer extended CONNECT")
        stream_id = self._conn.get_next_available_stream_id()
        block = [(b":method", b"CONNECT"), (b":protocol", request.upgrade), (b":scheme", scheme),
                 (b":authority", request.authority or default_authority),
                 (b":path", request.target)]
        block.extend(item for item in request.headers if item[0] != b"sec-websocket-key")
        self._conn.send_headers(stream_id, block, end_stream=False)
        self._tunnels.add(stream_id)
        return stream_id

    def end_stream(self, stream_id, trailers=()):
        """End the request body (with trailers when given)."""
        if trailers:
            self._conn.send_headers(stream_id, list(trailers), end_stream=True)
        else:
            self._conn.end_stream(stream_id)

    def ping(self):
        """Queue a PING (liveness check); its ACK decrements ``pings_outstanding``."""
        self.pings_outstanding += 1
        self._conn.ping(b"proxyd\x00\x00")

    def close(self, error_code=0):
        """Queue GOAWAY; the connection should close after flushing."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.close_connection(error_code=error_code)
        self.wants_close = True

    def receive_data(self, data):
        """Feed backend bytes; return :mod:`proxyd.events`."""
        h2_events = self._feed(data)
        if type(h2_events) is ev.ConnectionTerminated:
            return [h2_events]
        out = []
        for event in h2_events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                out.append(ev.DataReceived(stream_id=event.stream_id, data=event.data,
                                           flow_length=event.flow_controlled_length))
            elif kind is h2.events.ResponseReceived:
                self._on_response(event, out)
            elif kind is h2.events.StreamEnded:
                out.append(ev.StreamEnded(stream_id=event.stream_id))
            elif kind is h2.events.TrailersReceived:
                out.append(ev.TrailersReceived(stream_id=event.stream_id,
                                               headers=list(event.headers)))
            elif kind is h2.events.InformationalResponseReceived:
                status, headers = _split_status(event.headers)
                out.append(ev.InformationalResponse(stream_id=event.stream_id, status=status,
                                                    headers=headers))
            elif kind is h2.events.WindowUpdated:
                out.append(ev.WindowUpdated(stream_id=event.stream_id))
            elif kind is h2.events.StreamReset:
                out.append(ev.StreamReset(stream_id=event.stream_id,
                                          error_code=int(event.error_code)))
            elif kind is h2.events.RemoteSettingsChanged:
                self.settings_received = True
                out.append(ev.SettingsChanged(max_concurrent_streams=self.max_concurrent_streams))
                out.append(ev.WindowUpdated(stream_id=0))
            elif kind is h2.events.PingAckReceived:
                self.pings_outstanding = max(0, self.pings_outstanding - 1)
            elif kind is h2.events.ConnectionTerminated:
                self.goaway_last_stream_id = event.last_stream_id or 0
                out.append(ev.ConnectionTerminated(error_code=int(event.error_code or 0),
                                                   last_stream_id=self.goaway_last_stream_id))
        return out

    def _on_response(self, event, out):
        status, headers = _split_status(event.headers)
        if event.stream_id in self._tunnels:
            self._tunnels.discard(event.stream_id)
            if 200 <= status <= 299:
                out.append(ev.TunnelOpened(stream_id=event.stream_id, status=status,
                                           headers=headers))
                return
        out.append(ev.ResponseReceived(stream_id=event.stream_id, status=status, headers=headers,
                                       end_stream=event.stream_ended is not None))


def _split_status(block):
    """``(status, other fields)`` of a response header block; status 0 unless exactly one
    ``:status`` of three digits came first (the gate refuses 0, and any other pseudo-header
    field stays in the list for the gate to refuse)."""
    status = 0
    headers = []
    seen = False
    for name, value in block:
        if name == b":status" and not seen and not headers:
            seen = True
            if len(value) == 3 and value.isdigit():
                status = int(value)
        elif name == b":status":
            status = 0
            headers.append((name, value))
        else:
            headers.append((name, value))
    return status, headers
