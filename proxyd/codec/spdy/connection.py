"""The SPDY session: :class:`SpdyConnection`, a sans-IO codec with the shape of ``H2Connection``.

Strategy: ``receive_data`` runs one loop over the bytes it is given plus a small carry-over (at most
a frame header or a partial control frame, both bounded). Control frames are buffered whole (their
size is bounded by ``max_header_list_size``) and dispatched through a table of bound methods; DATA
payloads are *not* buffered: each piece that arrives becomes a ``DataReceived`` at once, so a
16 MiB DATA frame costs no memory and flow-control checks happen on the frame header, before any
payload is accepted. Adjacent pieces of one stream within one read are merged into one event (the
relay writes once per event: 6,000 one-byte DATA frames were 6,000 backend writes), as the HTTP/2
codec does. Header blocks are always inflated, even for streams about to be refused, to
keep the session's zlib stream in step with the peer. The send side appends frames to a list that
``data_to_send`` joins once; DATA payloads are queued as memoryview slices (no copy until then).

Session errors (anything that leaves the framing or the zlib stream unusable, or breaks stream id
rules) queue GOAWAY, emit ``ConnectionTerminated(remote=False)``, set ``wants_close`` and make the
codec ignore further input. Stream errors queue RST_STREAM and, if the stream was already announced
to the application, emit ``StreamReset(remote=False)``. ``receive_data`` raises nothing.

Abuse bounds, as on HTTP/2: rapid reset (server side: the peer's RST_STREAMs and the stream
errors it provokes, MadeYouReset, beyond ``MAX_RESETS`` and half of the streams it opened) and
floods of empty DATA, WINDOW_UPDATE, SETTINGS or PING (their allowance growing with the streams
opened and DATA frames sent) fail the session with ENHANCE_YOUR_CALM, GOAWAY PROTOCOL_ERROR on
the wire (SPDY/2: a GOAWAY without status). The rules and their counters are
:mod:`proxyd.codec.floods`' (shared with the HTTP/2 codec); the
:class:`~proxyd.codec.floods.Flood` they raise inside ``receive_data`` becomes the session error,
with the rule's reason (which the network layer logs).

Flow control: SPDY/2 has none (``available_window`` returns 2^31-1, ``acknowledge`` is a no-op,
WINDOW_UPDATEs received are ignored). SPDY/3 has stream windows; SPDY/3.1 adds the session
window (WINDOW_UPDATE on stream 0). Receive windows are only reopened by ``acknowledge``, except for
data the codec discards itself (reset or unknown streams), which it credits to the session at once.
A ``"spdy/3"`` session keeps session counters too and turns into 3.1 when the peer sends a session
WINDOW_UPDATE (see :func:`~.codec.sniff_version`).

Sniffed sessions (``sniffed=True``: cleartext, version 3 read from the first frame, no ALPN) do not
know yet whether the peer speaks SPDY/3 or 3.1, and the two need opposite things: a 3.1 peer must
never get more than its session window, a SPDY/3 peer never replenishes one. The rule:

* Until the peer shows its version, sending respects the session window as in 3.1 (the peer's
  initial 64 KiB; we grant nothing on our side and send no session WINDOW_UPDATE).
* A session WINDOW_UPDATE from the peer makes the session 3.1 (as for any ``"spdy/3"`` session).
* When our DATA exhausts the session window first, a PING (the *probe*) is queued right behind
  that DATA. Its answer proves the peer has read all of it: a 3.1 peer that replenishes its
  session window as data arrives has sent its session WINDOW_UPDATE before that answer. If the
  answer comes first, the peer is taken for SPDY/3: the session window stops applying (the session
  stays ``"spdy/3"``) and, if that lets a stream send more, ``WindowUpdated(stream_id=0)`` tells
  the network layer to resume waiting streams. There is at most one probe per session.

A stream WINDOW_UPDATE alone decides nothing: a SPDY/3 peer with large stream windows (e.g. the
Node spdy-peer's 1 MiB default) sends none within 64 KiB, and a 3.1 peer may send one apart from
its session update. Limit: a 3.1 peer that replenishes its session window only later (when its
application consumes, after answering the PING) is overrun until its first session WINDOW_UPDATE;
from then on the session is 3.1 and the session window (counted all along) applies again.
ALPN-negotiated sessions (``sniffed=False``) keep their version's semantics from the start.

Session-level control frames (RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE) are handled in
:mod:`.control`, the sending methods live in :mod:`.sending`; the peer quirks tolerated are listed
in :mod:`proxyd.codec.spdy`'s docstring.
"""

from proxyd import events as ev
from proxyd.codec import FLOW_CONTROL_ERROR as H2_FLOW_CONTROL_ERROR
from proxyd.codec import INTERNAL_ERROR as H2_INTERNAL_ERROR
from proxyd.codec import PROTOCOL_ERROR as H2_PROTOCOL_ERROR
from proxyd.codec import STREAM_CLOSED as H2_STREAM_CLOSED
from proxyd.codec.floods import Flood, FloodBounds

from . import codec as http
from . import frames as fr
from .control import ControlMixin
from .sending import SendMixin
from .stream import MAX_RESETS, SESSION_OVERRUN_ALLOWANCE, Stream

_RECENT_RESETS = 256  # stream ids remembered so late frames for them get no second RST


class SpdyConnection(ControlMixin, SendMixin, FloodBounds):
    """One SPDY/2, SPDY/3 or SPDY/3.1 session, server side (frontend) or client side.

    ``version`` is ``"spdy/3.1"``, ``"spdy/3"`` or ``"spdy/2"``. ``initial_window`` is the stream
    receive window announced in SETTINGS; ``session_window`` the 3.1 session receive window
    (default four stream windows, at least 64 KiB). ``max_outbound_buffer`` bounds the bytes
    ``receive_data`` lets pile up in the outbound queue (answers to PINGs, RST_STREAMs...) before
    it fails the session because the peer does not read; ``outbound_buffer_size`` is the current
    amount. ``sniffed`` says the version was read from cleartext bytes rather than negotiated: a
    ``"spdy/3"`` session then sends within the session window until the peer shows whether it
    speaks SPDY/3 or 3.1 (see the module docstring). The server-side and client-side methods are
    those of :mod:`proxyd.codec`.
    """

    def __init__(self, version, *, client_side, max_concurrent_streams=100,
                 max_header_list_size=65536, initial_window=65536, session_window=None,
                 max_outbound_buffer=1 << 20, sniffed=False):
        if version not in http.VERSIONS:
            raise ValueError("unsupported SPDY version %r" % (version,))
        if not 0 < initial_window <= fr.MAX_WINDOW:
            raise ValueError("initial_window out of range")
        self.version = version
        self.client_side = client_side
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.initial_window = initial_window
        default_session = max(fr.DEFAULT_WINDOW, 4 * initial_window)
        self.session_window = min(fr.MAX_WINDOW, session_window or default_session)
        self.max_outbound_buffer = max_outbound_buffer
        self.peer_max_concurrent_streams = None
        self.session_window_overruns = 0
        self._v = 2 if version == "spdy/2" else 3
        self._flow = self._v == 3
        self._session_flow = version == "spdy/3.1"
        # A sniffed "spdy/3" peer may be 3.1: respect the session window until it shows which.
        self._version_pending = sniffed and version == "spdy/3"
        self._session_send_flow = self._session_flow or self._version_pending
        self._probe = None  # id of the PING that asks a pending peer to show its version
        self._http_version = http.HTTP_VERSIONS[version]
        self._compressor = fr.HeaderCompressor(self._v)
        self._decompressor = fr.HeaderDecompressor(self._v, max_header_list_size)
        self._max_control = max(16384, max_header_list_size + max_header_list_size // 64 + 1024)
        self._recv_slack = max(0, fr.DEFAULT_WINDOW - initial_window)
        self._stream_update_at = max(1, initial_window // 2)
        self._out = []
        self._out_size = 0
        self._buf = bytearray()  # carry-over: an incomplete frame head or control frame
        self._need = 0  # bytes the carry-over must reach before parsing resumes
        self._data_left = 0
        self._data_stream = None
        self._data_fin = False
        self._skip_left = 0
        self._streams = {}
        self._last_peer_sid = 0
        self._last_accepted_sid = 0  # last peer stream we took on: GOAWAY's last-good id
        self._next_sid = 1 if client_side else 2
        self._peer_initial_window = fr.DEFAULT_WINDOW
        self._ssend = fr.DEFAULT_WINDOW  # peer's session receive window, as we track it
        self._srecv = fr.DEFAULT_WINDOW  # our session receive window, as the peer sees it
        self._srecv_unacked = 0
        self._recent_resets = {}
        self._pings = set()
        self._next_ping = 1 if client_side else 2
        self._goaway_sent = False
        self._goaway_received = False
        self._close_now = False
        self._failed = False
        self._init_flood_bounds()  # counters of work and of frames asking for none (.floods)
        self.max_resets = None if client_side else MAX_RESETS

    # -- state -------------------------------------------------------------------------------

    @property
    def open_streams(self):
        """Streams not yet closed both ways."""
        return len(self._streams)

    @property
    def protocol(self):
        """The protocol name for logs: the version (a ``"spdy/3"`` session may turn 3.1)."""
        return self.version

    @property
    def flow_controlled(self):
        """True from SPDY/3 on; SPDY/2 has no flow control (pause reading for backpressure)."""
        return self._flow

    @property
    def wants_close(self):
        """True once the connection should be closed after flushing ``data_to_send()``.

        After a session error or a GOAWAY with an error code: at once. After a graceful GOAWAY
        (sent or received): when no stream is open any more. The network layer may also set it.
        """
        return self._failed or self._close_now or (
            (self._goaway_sent or self._goaway_received) and not self._streams)

    @wants_close.setter
    def wants_close(self, value):
        """Let the network layer ask for the close (e.g. during graceful shutdown)."""
        self._close_now = bool(value)

    @property
    def outbound_buffer_size(self):
        """Bytes queued and not yet taken by ``data_to_send()``."""
        return self._out_size

    def release(self):
        """The connection is lost: nothing here holds a reference cycle."""

    def data_to_send(self):
        """Everything queued, as one bytes object; the queue is then empty."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        self._out = []
        self._out_size = 0
        return data

    def _queue(self, frame):
        self._out.append(frame)
        self._out_size += len(frame)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the peer; returns the list of events they complete. Raises nothing."""
        if self._failed:
            return []
        events = []
        if self._provoked_over:  # stream errors provoked since the last read: over the bound
            self._fail(events, "too many stream resets", Flood.code)
            return events
        if self._buf:  # a partial frame head or control frame: wait until it is complete
            buf = self._buf
            buf += data
            if len(buf) < self._need:
                return events
            data = bytes(buf)
            self._buf = bytearray()
        elif type(data) is not bytes:
            data = bytes(data)
        end = len(data)
        pos = 0
        unpack = fr.FRAME_HEADER.unpack_from
        try:
            while pos < end:
                if self._data_left:
                    take = min(self._data_left, end - pos)
                    self._data_left -= take
                    self._on_data_chunk(data[pos:pos + take], events)
                    pos += take
                    continue
                if self._skip_left:
                    take = min(self._skip_left, end - pos)
                    self._skip_left -= take
                    pos += take
                    continue
                if end - pos < 8:
                    self._need = 8
                    break
                word, flags_length = unpack(data, pos)
                length = flags_length & 0xFFFFFF
                if word & 0x80000000:
                    ftype = word & 0xFFFF
                    if length > self._max_control:
                        if ftype in _HANDLERS:
                            self._fail(events, "control frame of %d bytes is too large" % length)
                            break
                        self._skip_left = length  # unknown or ignored type: skip unbuffered
                        pos += 8
                        continue
                    if end - pos - 8 < length:
                        self._need = 8 + length
                        break
                    payload = data[pos + 8:pos + 8 + length]
                    pos += 8 + length
                    version = (word >> 16) & 0x7FFF
                    if version != self._v:
                        self._on_foreign_version(ftype, payload)
                        continue
                    handler = _HANDLERS.get(ftype)
                    if handler is not None:
                        handler(self, flags_length >> 24, payload, events)
                    if self._failed:
                        return events
                else:
                    pos += 8
                    self._on_data_header(word, flags_length >> 24, length, events)
                    if self._failed:
                        return events
        except Flood as flood:
            self._fail(events, flood.reason, flood.code)
            return events
        except Exception as exc:  # the codec contract: never raise from receive_data
            self._fail(events, "internal error: %r" % (exc,), H2_INTERNAL_ERROR)
            return events
        if pos < end:
            self._buf = bytearray(data[pos:])
        if self._out_size > self.max_outbound_buffer:
            self._fail(events, "outbound buffer over %d bytes: peer does not read"
                       % self.max_outbound_buffer)
        if len(events) > 1:
            return ev.merge_data(events)
        return events

    def _fail(self, events, reason, h2_code=H2_PROTOCOL_ERROR):
        """Session error: GOAWAY, ConnectionTerminated(remote=False), ignore further input."""
        if self._failed:
            return
        self._failed = True
        self._buf = bytearray()
        self._data_left = self._skip_left = 0
        self._queue(fr.encode_goaway(self._v, self._last_peer_sid, http.goaway_status_for(h2_code)))
        events.append(ev.ConnectionTerminated(error_code=h2_code, remote=False, reason=reason,
                                              last_stream_id=self._last_peer_sid))

    def _send_rst(self, stream_id, status):
        self._queue(fr.encode_rst_stream(self._v, stream_id, status))
        self._remember_reset(stream_id)

    def _remember_reset(self, stream_id):
        """Late frames for a recently reset stream are dropped without another RST_STREAM."""
        recent = self._recent_resets
        recent[stream_id] = None
        if len(recent) > _RECENT_RESETS:
            del recent[next(iter(recent))]

    def _remove(self, stream):
        stream.gone = True
        self._streams.pop(stream.stream_id, None)

    def _stream_error(self, stream, status, h2_code, events):
        """Reset an announced stream the peer broke: RST_STREAM, StreamReset(remote=False), and
        one more reset counted."""
        self._send_rst(stream.stream_id, status)
        self._remove(stream)
        events.append(ev.StreamReset(stream_id=stream.stream_id, error_code=h2_code, remote=False))
        self._count_reset()

    def _frame_for_closed(self, stream_id, stream, events):
        """DATA/HEADERS/SYN_REPLY for a stream the peer may not send on any more."""
        if stream is not None:  # half-closed by the peer, still open our way
            status = fr.STREAM_ALREADY_CLOSED if self._v == 3 else fr.INVALID_STREAM
            self._stream_error(stream, status, H2_STREAM_CLOSED, events)
        elif stream_id not in self._recent_resets:  # coalesce: one RST per stream
            self._send_rst(stream_id, fr.INVALID_STREAM)
            self._count_reset()

    def _end_remote(self, stream, events):
        stream.remote_open = False
        if stream.trailers is not None:
            events.append(ev.TrailersReceived(stream_id=stream.stream_id, headers=stream.trailers))
            stream.trailers = None
        events.append(ev.StreamEnded(stream_id=stream.stream_id))
        if not stream.local_open:
            self._remove(stream)

    def _inflate(self, block, events):
        """Inflate a header block, or fail the session and return None."""
        try:
            return self._decompressor.decompress(block)
        except fr.CompressionError as exc:
            self._fail(events, str(exc), 0x9)  # COMPRESSION_ERROR
            return None

    def _on_foreign_version(self, ftype, payload):
        """Draft 2: refuse a SYN_STREAM of another version (a reset the peer provokes, counted
        like the others), ignore other control frames."""
        if ftype == fr.SYN_STREAM and len(payload) >= 4:
            sid = int.from_bytes(payload[:4], "big") & fr.MAX_STREAM_ID
            if sid:
                self._send_rst(sid, fr.UNSUPPORTED_VERSION)
                self._count_reset()

    # -- DATA --------------------------------------------------------------------------------

    def _on_data_header(self, stream_id, flags, length, events):
        self._data_left = length
        self._data_stream = None
        self._data_fin = flags & fr.FLAG_FIN
        if stream_id == 0:
            self._fail(events, "DATA on stream 0")
            return
        if self._flow:
            self._srecv -= length
            if self._session_flow and self._srecv < 0:
                if self._srecv < -SESSION_OVERRUN_ALLOWANCE:
                    self._fail(events, "session flow-control window exceeded",
                               H2_FLOW_CONTROL_ERROR)
                    return
                self.session_window_overruns += 1
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            self._frame_for_closed(stream_id, stream, events)
            self._credit_session(length)
            return
        if self.client_side and not stream.head_done:
            self._stream_error(stream, fr.PROTOCOL_ERROR, H2_PROTOCOL_ERROR, events)
            self._credit_session(length)
            return
        if self._flow:
            if length > stream.recv_window + self._recv_slack:
                self._stream_error(stream, fr.FLOW_CONTROL_ERROR, H2_FLOW_CONTROL_ERROR, events)
                self._credit_session(length)
                return
            stream.recv_window -= length
        if length:
            self._data_stream = stream
            self._empty_data = 0
        elif self._data_fin:
            self._empty_data = 0
            self._end_remote(stream, events)
        else:
            self._count_empty_data()

    def _on_data_chunk(self, chunk, events):
        stream = self._data_stream
        if stream is None:
            return
        if stream.gone:  # reset by the application while the frame was arriving
            self._credit_session(len(chunk))
            return
        events.append(ev.DataReceived(stream_id=stream.stream_id, data=chunk,
                                      flow_length=len(chunk)))
        if not self._data_left:
            self._data_stream = None
            if self._data_fin:
                self._end_remote(stream, events)

    # -- stream-opening and header frames ----------------------------------------------------

    def _on_syn_stream(self, flags, payload, events):
        try:
            sid, _assoc, _pri, _slot, block = fr.decode_syn_stream(self._v, payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        raw = self._inflate(block, events)
        if raw is None:
            return
        peer_parity = 0 if self.client_side else 1
        if sid == 0 or sid % 2 != peer_parity or sid <= self._last_peer_sid:
            self._fail(events, "SYN_STREAM with invalid stream id %d" % sid)
            return
        self._last_peer_sid = sid
        if self.client_side or self._goaway_sent:  # no server push; none after our GOAWAY
            self._send_rst(sid, fr.REFUSED_STREAM)
            return
        self._last_accepted_sid = sid
        if flags & fr.FLAG_UNIDIRECTIONAL:
            self._send_rst(sid, fr.PROTOCOL_ERROR)
            self._count_reset()
            return
        if len(self._streams) >= self.max_concurrent_streams:
            self._send_rst(sid, fr.REFUSED_STREAM)
            return
        try:
            pairs = fr.unpack_header_block(self._v, raw, self.max_header_list_size)
            head = http.request_head(self._v, pairs)
        except fr.HeaderBlockError:
            self._send_rst(sid, fr.PROTOCOL_ERROR)
            self._count_reset()
            return
        fin = bool(flags & fr.FLAG_FIN)
        stream = Stream(sid, self._peer_initial_window, self.initial_window)
        self._streams[sid] = stream
        self._streams_opened += 1
        events.append(ev.RequestReceived(stream_id=sid, headers=head, end_stream=fin,
                                         http_version=self._http_version))
        if fin:
            self._end_remote(stream, events)

    def _on_syn_reply(self, flags, payload, events):
        try:
            sid, block = fr.decode_stream_block(self._v, payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        raw = self._inflate(block, events)
        if raw is None:
            return
        stream = self._streams.get(sid)
        if stream is None or not stream.remote_open:
            self._frame_for_closed(sid, stream, events)
            return
        if not self.client_side or stream.head_done:
            status = fr.STREAM_IN_USE if self._v == 3 else fr.PROTOCOL_ERROR
            self._stream_error(stream, status, H2_PROTOCOL_ERROR, events)
            return
        try:
            pairs = fr.unpack_header_block(self._v, raw, self.max_header_list_size)
            status, headers = http.parse_response(self._v, pairs)
        except fr.HeaderBlockError:
            self._stream_error(stream, fr.PROTOCOL_ERROR, H2_PROTOCOL_ERROR, events)
            return
        stream.head_done = True
        fin = bool(flags & fr.FLAG_FIN)
        events.append(ev.ResponseReceived(stream_id=sid, status=status, headers=headers,
                                          end_stream=fin))
        if fin:
            self._end_remote(stream, events)

    def _on_headers(self, flags, payload, events):
        try:
            sid, block = fr.decode_stream_block(self._v, payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        raw = self._inflate(block, events)
        if raw is None:
            return
        stream = self._streams.get(sid)
        if stream is None or not stream.remote_open:
            self._frame_for_closed(sid, stream, events)
            return
        if self.client_side and not stream.head_done:
            self._stream_error(stream, fr.PROTOCOL_ERROR, H2_PROTOCOL_ERROR, events)
            return
        # HEADERS without FIN are kept (bounded) and delivered as trailers when the stream ends.
        stream.trailer_size += fr.header_list_size(self._v, raw)
        if stream.trailer_size > self.max_header_list_size:
            self._stream_error(stream, fr.PROTOCOL_ERROR, H2_PROTOCOL_ERROR, events)
            return
        try:
            headers = http.parse_trailers(fr.unpack_header_block(self._v, raw))
        except fr.HeaderBlockError:
            self._stream_error(stream, fr.PROTOCOL_ERROR, H2_PROTOCOL_ERROR, events)
            return
        if stream.trailers is None:
            stream.trailers = headers
        else:
            stream.trailers.extend(headers)
        if flags & fr.FLAG_FIN:
            self._end_remote(stream, events)


# Control frame type -> handler (plain functions: no per-connection reference cycle).
_HANDLERS = {
    fr.SYN_STREAM: SpdyConnection._on_syn_stream, fr.SYN_REPLY: SpdyConnection._on_syn_reply,
    fr.RST_STREAM: SpdyConnection._on_rst_stream, fr.SETTINGS: SpdyConnection._on_settings,
    fr.PING: SpdyConnection._on_ping, fr.GOAWAY: SpdyConnection._on_goaway,
    fr.HEADERS: SpdyConnection._on_headers, fr.WINDOW_UPDATE: SpdyConnection._on_window_update,
}
