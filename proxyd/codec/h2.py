"""HTTP/2 server-side codec (RFC 9113): proxyd's own, lean on the request hot path.

Strategy: this module does what a reverse proxy's frontend needs of HTTP/2 and nothing more, in
as few Python operations per request as it can; the framing, flow control, stream bookkeeping
and sending are :mod:`.h2base`'s (shared with the client side, :mod:`.h2client`), HPACK is
:mod:`.h2hpack` (an O(1) encoder, a caching decoder). This module adds what is the server's: the
client preface, request heads (stream creation, concurrency, refusal after GOAWAY), responses,
1xx and trailers. Request heads and trailers go out raw, in order: what they mean is
:mod:`proxyd.gate`'s to judge. (Until this codec, the h2 library did this work and took about
half of a request's CPU.)

Errors follow RFC 9113 §5.4: a frame that breaks the connection's framing or state (bad sizes,
stream 0 where a stream is needed, idle or even stream ids, CONTINUATION out of sequence, window
overflow, HPACK errors, a bad preface) is a connection error — GOAWAY with its code, then the
codec asks to close; a problem confined to one stream (DATA or HEADERS after its end, a window
overflow, a self-dependency, a zero increment) is a stream error — RST_STREAM, and the network
layer learns it through ``StreamReset(remote=False)``. Frames that reach a stream after we reset
it are ignored (their flow-control bytes are credited back at once).

Stream states (§5.1), server side, as the record's two flags (see :mod:`.h2base`)::

    idle --HEADERS--> open (remote_open, local_open)
    open --END_STREAM received--> half-closed (remote)      (remote_open False)
    open --END_STREAM sent--> half-closed (local)           (local_open False)
    both ended, or RST_STREAM either way --> closed (the record leaves ``_streams``; the id is
    remembered in a bounded table of recently closed streams)

Flow control (§6.9): the peer's windows bound what :meth:`send_data` may send
(:meth:`available_window`); our receive windows are reopened only by :meth:`acknowledge` (the
network layer calls it once the backend took the bytes), with a WINDOW_UPDATE once half a window
was consumed.

Extended CONNECT (RFC 8441): with ``enable_connect_protocol`` the first SETTINGS carries
SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; the ``:protocol`` pseudo-header is the gate's to judge. The
h2c upgrade (RFC 7540 §3.2) enters through :meth:`H2ServerCodec.upgrade`: the client's
``HTTP2-Settings`` apply as a SETTINGS frame (the 101 is their acknowledgement) and the request
that carried the upgrade is stream 1, half-closed (remote).

Abuse bounds: streams over SETTINGS_MAX_CONCURRENT_STREAMS get
REFUSED_STREAM; rapid reset (CVE-2023-44487: the client's RST_STREAMs) and MadeYouReset
(CVE-2025-8671: stream errors it provokes, e.g. a 4-byte PRIORITY, DATA after END_STREAM),
counted together against the streams it really opened, empty DATA, WINDOW_UPDATE and
SETTINGS/PING floods end the connection with ENHANCE_YOUR_CALM; a header block is bounded in
bytes as it arrives (CONTINUATION floods) and once decoded (HPACK bombs).
"""

import struct

from proxyd import events as ev
from proxyd.codec.floods import (  # noqa: F401 - the flood bounds are re-exported (tests)
    MAX_CONTROL_FRAMES, MAX_CONTROL_FRAMES_PER_WORK, MAX_RESETS,
)
from proxyd.codec.h2base import H2Codec
from proxyd.codec.h2frames import (
    ENABLE_CONNECT_PROTOCOL, ENABLE_PUSH, END_STREAM, GOAWAY, MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE, PROTOCOL_ERROR, REFUSED_STREAM, SETTINGS, STREAM_CLOSED,
    H2ConnectionError, _RESET_BY_US, _SETTING, _Stream, _frame,
)

# Connection-level receive window we grant on top of the RFC's 65535.
CONNECTION_WINDOW = 1 << 20


class H2ServerCodec(H2Codec):
    """Server side of an HTTP/2 connection in the codec shape of :mod:`proxyd.codec`."""

    max_resets = MAX_RESETS

    def __init__(self, *, max_concurrent_streams=100, max_header_list_size=65536, scheme=b"https",
                 enable_connect_protocol=False):
        super().__init__(max_header_list_size=max_header_list_size,
                         connection_window=CONNECTION_WINDOW)
        self.max_concurrent_streams = max_concurrent_streams
        self.enable_connect_protocol = enable_connect_protocol
        self._scheme = scheme
        self._preface = False
        self.refused_streams = 0

    # -- setup ---------------------------------------------------------------------------------
    def initiate(self):
        """Queue our SETTINGS (concurrency, header list size, no push) and widen the connection
        receive window."""
        settings = _SETTING.pack(MAX_CONCURRENT_STREAMS, self.max_concurrent_streams) + \
            _SETTING.pack(MAX_HEADER_LIST_SIZE, self.max_header_list_size) + \
            _SETTING.pack(ENABLE_PUSH, 0)
        if self.enable_connect_protocol:
            settings += _SETTING.pack(ENABLE_CONNECT_PROTOCOL, 1)
        self._out.append(_frame(SETTINGS, 0, 0, settings))
        self._grant_connection_window()

    def upgrade(self, settings):
        """h2c (RFC 7540 §3.2): apply the client's decoded ``HTTP2-Settings`` payload and open
        stream 1, half-closed (remote), for the request that carried the upgrade. Call after
        :meth:`initiate`. Raises ValueError when the payload is not valid SETTINGS."""
        try:
            self._apply_settings(settings)
        except H2ConnectionError as error:
            raise ValueError(error.reason) from None
        self._highest = self._streams_opened = 1
        stream = _Stream(1, self._peer_initial_window, self._stream_recv_window)
        stream.remote_open = False
        self._streams[1] = stream

    # -- receiving -----------------------------------------------------------------------------
    def _head(self, stream_id, flags, headers, self_dependent, out):
        """A complete header block: a request, trailers, or a frame on a finished stream."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            if not stream.remote_open:
                self._reset(stream_id, STREAM_CLOSED, out)
            elif not flags & END_STREAM or self_dependent:
                self._reset(stream_id, PROTOCOL_ERROR, out)  # trailers must end the stream
            else:
                out.append(ev.TrailersReceived(stream_id=stream_id, headers=list(headers)))
                self._end_remote(stream, out)
            return
        if stream_id % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"even stream id {stream_id} from a client")
        if stream_id <= self._highest:
            state = self._closed.get(stream_id)
            if state is _RESET_BY_US:
                return
            if state is None and stream_id not in self._closed:
                raise H2ConnectionError(PROTOCOL_ERROR, f"stream id {stream_id} reused")
            raise H2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self._highest = stream_id
        if self_dependent:
            self._remember(stream_id, _RESET_BY_US)
            self._queue_rst(stream_id, PROTOCOL_ERROR)
            self._count_reset()
            return
        if self._refused_above is not None or len(self._streams) >= self.max_concurrent_streams:
            self.refused_streams += 1
            self._remember(stream_id, _RESET_BY_US)
            self._queue_rst(stream_id, REFUSED_STREAM)
            return
        stream = _Stream(stream_id, self._peer_initial_window, self._stream_recv_window)
        self._streams[stream_id] = stream
        self._streams_opened += 1
        ended = bool(flags & END_STREAM)
        if ended:
            stream.remote_open = False
        out.append(ev.RequestReceived(stream_id=stream_id, headers=headers, end_stream=ended,
                                      http_version=b"2"))

    # -- sending -------------------------------------------------------------------------------
    def send_response(self, stream_id, status, headers, end_stream=False):
        """Queue the response head (ignored when the stream is gone)."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        block = [(b":status", b"%d" % status)]
        block.extend(headers)
        self._block_frames(stream_id, self._encoder.encode(block), end_stream)
        stream.head_sent = True
        if end_stream:
            self._end_local(stream)

    def send_informational(self, stream_id, status, headers):
        """Queue a 1xx response head (never 101)."""
        if status != 101 and self._sendable(stream_id) is not None:
            block = [(b":status", b"%d" % status)]
            block.extend(headers)
            self._block_frames(stream_id, self._encoder.encode(block), False)

    def send_trailers(self, stream_id, headers):
        """Queue trailers, ending the stream."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        self._block_frames(stream_id, self._encoder.encode(list(headers)), True)
        self._end_local(stream)

    def goaway(self, error_code=0):
        """Send a graceful GOAWAY naming the highest stream seen; later streams are refused."""
        if self._refused_above is not None or self._dead:
            return
        self._refused_above = self._highest
        self._out.append(_frame(GOAWAY, 0, 0, struct.pack(">LL", self._highest, error_code)))
        if not self._streams:
            self.wants_close = True
