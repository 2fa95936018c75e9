"""HTTP/2 server-side codec: ``h2.connection.H2Connection`` behind proxyd's codec shape.

Strategy: h2 does framing, HPACK and flow-control bookkeeping (through :mod:`.h2shim`, the one
module that touches h2's internals); this wrapper turns h2 events into :mod:`proxyd.events` and
checks nothing about what requests mean: request heads and trailers go out raw, in order, for
:mod:`proxyd.gate` to judge (so a malformed request costs only its own stream). It guards the
connection against abuse (rapid reset, empty-DATA and WINDOW_UPDATE floods) and writes GOAWAY
frames itself so that streams in flight may still finish after a graceful GOAWAY (h2 refuses to
send anything once it has sent GOAWAY through ``close_connection``).
"""

import contextlib

import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from proxyd import events as ev
from proxyd.codec import ENHANCE_YOUR_CALM, PROTOCOL_ERROR, REFUSED_STREAM
from proxyd.codec.h2shim import make_connection

# Connection-level receive window we grant on top of the RFC's 65535.
CONNECTION_WINDOW = 1 << 20
# Rapid reset (CVE-2023-44487): a client whose resets exceed this many, and more than half of the
# streams it opened, is told to calm down (GOAWAY ENHANCE_YOUR_CALM).
MAX_RESETS = 200
# Floods (CVE-2019-9518 family): consecutive empty DATA frames without END_STREAM, WINDOW_UPDATEs
# beyond 100 + 10 per DATA frame we sent, and SETTINGS or PING frames (each one makes us answer)
# beyond 1000 + 10 per stream opened or DATA frame sent end the connection with ENHANCE_YOUR_CALM.
# The last one bounds a client that never reads even while the kernel's socket buffers (several
# MiB on loopback) still absorb our answers.
MAX_EMPTY_DATA = 100
MAX_WINDOW_UPDATES_PER_DATA = 10
MAX_CONTROL_FRAMES = 1000
MAX_CONTROL_FRAMES_PER_WORK = 10


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


class H2ServerCodec(H2Base):
    """Server side of an HTTP/2 connection in the codec shape of :mod:`proxyd.codec`."""

    flow_controlled = True
    protocol = "h2"

    def __init__(self, *, max_concurrent_streams=100, max_header_list_size=65536, scheme=b"https"):
        self._make_connection(
            client_side=False, max_header_list_size=max_header_list_size,
            settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams})
        self._empty_data = 0
        self._window_updates = 0
        self._control_frames = 0
        self._data_frames_sent = 0
        self._scheme = scheme
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
                if event.stream_id in self._ended_with_headers:
                    self._ended_with_headers.discard(event.stream_id)
                else:
                    out.append(ev.StreamEnded(stream_id=event.stream_id))
            elif kind is h2.events.WindowUpdated:
                self._window_updates += 1
                if (self._window_updates > 100 + MAX_WINDOW_UPDATES_PER_DATA * self._data_frames_sent
                        and not self.wants_close):
                    self._fail(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood", out)
                out.append(ev.WindowUpdated(stream_id=event.stream_id))
            elif kind is h2.events.StreamReset:
                self._ended_with_headers.discard(event.stream_id)
                self.resets_received += 1
                out.append(ev.StreamReset(stream_id=event.stream_id, error_code=int(event.error_code)))
                if (self.resets_received > MAX_RESETS and not self.wants_close
                        and self.resets_received * 2 > self._highest_seen // 2 + 1):
                    self._fail(ENHANCE_YOUR_CALM, "too many stream resets", out)
            elif kind is h2.events.TrailersReceived:
                out.append(ev.TrailersReceived(stream_id=event.stream_id,
                                               headers=list(event.headers)))
            elif kind is h2.events.RemoteSettingsChanged or kind is h2.events.PingReceived:
                self._control_frames += 1
                work = self._highest_seen // 2 + self._data_frames_sent
                if (self._control_frames > MAX_CONTROL_FRAMES + MAX_CONTROL_FRAMES_PER_WORK * work
                        and not self.wants_close):
                    self._fail(ENHANCE_YOUR_CALM, "SETTINGS/PING flood", out)
                if kind is h2.events.RemoteSettingsChanged:
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

    def _on_request(self, event, out):
        stream_id = event.stream_id
        self._highest_seen = stream_id
        if self._refused_above is not None and stream_id > self._refused_above:
            self.reset_stream(stream_id, REFUSED_STREAM)
            return
        ended = event.stream_ended is not None
        if ended:
            self._ended_with_headers.add(stream_id)
        out.append(ev.RequestReceived(stream_id=stream_id, headers=event.headers,
                                      end_stream=ended, http_version=b"2"))

    def _on_data(self, event, out):
        if not event.data and event.stream_ended is None:
            self._empty_data += 1
            if self._empty_data > MAX_EMPTY_DATA and not self.wants_close:
                self._fail(ENHANCE_YOUR_CALM, "empty DATA flood", out)
        else:
            self._empty_data = 0
        out.append(ev.DataReceived(stream_id=event.stream_id, data=event.data,
                                   flow_length=event.flow_controlled_length))

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

    def goaway(self, error_code=0):
        """Send a graceful GOAWAY naming the highest stream seen; later streams are refused."""
        if self._refused_above is not None:
            return
        self._refused_above = self._highest_seen
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._highest_seen
        frame.error_code = error_code
        self.queue_frame(frame)
        if not self._conn.open_inbound_streams:
            self.wants_close = True
