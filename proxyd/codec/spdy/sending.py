"""The sending half of :class:`~.connection.SpdyConnection`: the methods that queue frames.

This includes the WINDOW_UPDATEs that reopen receive windows (``acknowledge``): they are only ever
queued from here, so no window reopens for delivered data before the application acknowledged it
(only data the codec discards itself, on reset or unknown streams, is credited to the session at
once, since no one else will). It also includes the version probe of sniffed sessions: the PING
that ``send_data`` queues behind the DATA that exhausts the session window while the peer has not
shown whether it speaks SPDY/3 or 3.1 (the rule is in :mod:`.connection`).

Strategy: a mixin over the session state that :mod:`.connection` owns (``_streams``, windows, the
outbound list). Every method validates cheaply and appends finished frames; nothing is written
anywhere until the network layer calls ``data_to_send()``. Methods aimed at a stream that is gone
(reset by the peer, or closed) do nothing, because the network layer may learn about the reset
only after it queued more work; exceeding a flow-control window or answering twice is a caller bug
and raises :class:`~.stream.SpdyError`.

Protocol limits, documented for the network layer:

* ``send_informational``: SPDY cannot carry 1xx responses (a SYN_REPLY is the final status), so it
  drops them.
* ``send_trailers``: a HEADERS frame with FIN on SPDY/3 and 3.1. SPDY/2 defines no trailers (draft
  2 leaves them unspecified, defines no flags for HEADERS and tells clients to ignore HEADERS after
  DATA), so on SPDY/2 the trailers are dropped and the stream simply ends (empty DATA with FIN).
"""

from . import codec as http
from . import frames as fr
from .stream import MAX_DATA_FRAME, SpdyError, Stream


class SendMixin:
    """Frame-queueing methods shared by the server and the client side of a session."""

    __slots__ = ()

    def initiate(self):
        """Queue the connection preface: SETTINGS (and the 3.1 session window increase).

        Server side: MAX_CONCURRENT_STREAMS, plus INITIAL_WINDOW_SIZE from SPDY/3 on. Client side:
        INITIAL_WINDOW_SIZE (SPDY/3+) only. A ``"spdy/3"`` session sends no session WINDOW_UPDATE
        until the peer shows it speaks 3.1.
        """
        entries = []
        if not self.client_side:
            entries.append((fr.SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams))
        if self._flow:
            entries.append((fr.SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window))
        if entries:
            self._queue(fr.encode_settings(self._v, entries))
        if self._session_flow:
            self._grant_session_window()

    def _sendable(self, stream_id):
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open or self._failed:
            return None
        return stream

    def _check_head(self, stream):
        if not stream.head_done and not self.client_side:
            raise SpdyError("send_response before data or trailers on stream %d"
                            % stream.stream_id)

    def _end_local(self, stream):
        stream.local_open = False
        if not stream.remote_open:
            self._remove(stream)

    def send_response(self, stream_id, status, headers, end_stream=False):
        """Queue SYN_REPLY: ``:status`` "200 OK", ``:version`` HTTP/1.1 (SPDY/2: no colons)."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        if stream.head_done:
            raise SpdyError("response already sent on stream %d" % stream_id)
        block = self._compressor.compress(http.response_pairs(self._v, status, headers))
        self._queue(fr.encode_syn_reply(self._v, stream_id, block, end_stream))
        stream.head_done = True
        if end_stream:
            self._end_local(stream)

    def send_informational(self, stream_id, status, headers):
        """SPDY has no 1xx responses: dropped (the final response follows with send_response)."""
        return None

    def available_window(self, stream_id):
        """Bytes ``send_data`` may take now: the stream window, and the session window in 3.1.

        A sniffed ``"spdy/3"`` session applies the session window too until the peer shows its
        version (the rule is in :mod:`.connection`). Not capped to a frame: ``send_data`` frames
        any size in 16 KiB DATA frames, and a caller that sends what this allows and then waits
        for ``WindowUpdated`` must not be left waiting for an update the peer has no reason to
        send. SPDY/2 has no flow control: 2^31-1 for any open stream (backpressure comes from the
        transport).
        """
        stream = self._sendable(stream_id)
        if stream is None:
            return 0
        if not self._flow:
            return fr.MAX_WINDOW
        window = stream.send_window
        if self._session_send_flow and self._ssend < window:
            window = self._ssend
        return window if window > 0 else 0

    def send_data(self, stream_id, data, end_stream=False):
        """Queue DATA frames (of at most 16 KiB each); ``len(data) <= available_window``."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        self._check_head(stream)
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if self._flow and size:
            window = stream.send_window
            if self._session_send_flow and self._ssend < window:
                window = self._ssend
            if size > window:
                raise SpdyError("%d bytes exceed the flow-control window (%d) of stream %d"
                                % (size, window, stream_id))
            stream.send_window -= size
            self._ssend -= size  # tracked on SPDY/3 too, in case the peer turns out to be 3.1
        if size <= MAX_DATA_FRAME:
            self._queue(fr.data_frame_header(stream_id, size, end_stream))
            self._data_frames_sent += 1  # work, for the flood bounds
            if size:
                self._queue(data)
        else:
            view = memoryview(data)
            for start in range(0, size, MAX_DATA_FRAME):
                piece = view[start:start + MAX_DATA_FRAME]
                last = start + MAX_DATA_FRAME >= size
                self._queue(fr.data_frame_header(stream_id, len(piece), end_stream and last))
                self._out.append(piece)
                self._out_size += len(piece)
                self._data_frames_sent += 1
        if self._version_pending and self._ssend <= 0 and self._probe is None:
            self._probe = self.ping()  # behind the DATA: its answer means all of it was read
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id):
        """Queue an empty DATA frame with FIN."""
        self.send_data(stream_id, b"", end_stream=True)

    def send_trailers(self, stream_id, headers):
        """HEADERS with FIN (SPDY/3, 3.1); SPDY/2 drops the trailers and just ends the stream."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        self._check_head(stream)
        if self._v == 2:
            self.end_stream(stream_id)
            return
        block = self._compressor.compress(http.trailer_pairs(self._v, headers))
        self._queue(fr.encode_headers(self._v, stream_id, block, fin=True))
        self._end_local(stream)

    def reset_stream(self, stream_id, error_code):
        """Queue RST_STREAM with the SPDY status for HTTP/2 ``error_code``; forget the stream."""
        stream = self._streams.get(stream_id)
        if stream is None or self._failed:
            return
        self._send_rst(stream_id, http.rst_status_for(error_code, self._v))
        self._remove(stream)

    def goaway(self, error_code=0):
        """Queue GOAWAY with the last stream id the peer opened (SPDY/2: 4-byte form).

        With an error code the connection wants to close at once; a graceful GOAWAY (0) lets the
        open streams finish, then ``wants_close`` turns True.
        """
        if self._failed or (self._goaway_sent and not error_code):
            return
        status = http.goaway_status_for(error_code)
        self._queue(fr.encode_goaway(self._v, self._last_accepted_sid, status))
        self._goaway_sent = True
        if error_code:
            self._close_now = True

    def ping(self, ping_id=None):
        """Queue a PING (odd ids from clients, even from servers) and return its id."""
        if ping_id is None:
            ping_id = self._next_ping
            self._next_ping = (self._next_ping + 2) & 0xFFFFFFFF or (1 if self.client_side else 2)
        if len(self._pings) < 64:
            self._pings.add(ping_id)
        self._queue(fr.encode_ping(self._v, ping_id))
        return ping_id

    def send_request(self, method, scheme, authority, path, headers, end_stream=False,
                     priority=None):
        """Client side: open a stream with SYN_STREAM and return its (odd) id."""
        if not self.client_side:
            raise SpdyError("send_request on a server-side connection")
        if self._failed or self._goaway_sent or self._goaway_received:
            raise SpdyError("the session is going away")
        sid = self._next_sid
        if sid > fr.MAX_STREAM_ID:
            raise SpdyError("stream ids exhausted")
        self._next_sid += 2
        if priority is None:
            priority = 1 if self._v == 2 else 3
        pairs = http.request_pairs(self._v, method, scheme, authority, path, headers)
        block = self._compressor.compress(pairs)
        self._queue(fr.encode_syn_stream(self._v, sid, block, fin=end_stream, priority=priority))
        stream = Stream(sid, self._peer_initial_window, self.initial_window)
        stream.local_open = not end_stream
        self._streams[sid] = stream
        self._streams_opened += 1  # work, for the flood bounds
        return sid

    # -- receive windows: WINDOW_UPDATEs we send ---------------------------------------------

    def _grant_session_window(self):
        """Raise the 3.1 session receive window from the initial 64 KiB to ``session_window``."""
        extra = self.session_window - fr.DEFAULT_WINDOW + self._srecv_unacked
        self._srecv_unacked = 0
        if extra > 0:
            self._srecv += extra
            self._queue(fr.encode_window_update(3, 0, extra))

    def _credit_session(self, n):
        if not self._flow or n <= 0:
            return
        self._srecv_unacked += n
        if self._session_flow and self._srecv_unacked >= self.session_window // 2:
            inc = self._srecv_unacked
            self._srecv_unacked = 0
            self._srecv += inc
            self._queue(fr.encode_window_update(3, 0, inc))

    def acknowledge(self, stream_id, n):
        """``n`` bytes of ``DataReceived.flow_length`` were consumed: reopen the receive windows.

        WINDOW_UPDATEs are queued once half a window was consumed. Call it for every
        ``DataReceived``, even after the stream was reset or closed: the 3.1 session window
        depends on it.
        """
        if not self._flow or n <= 0 or self._failed:
            return
        stream = self._streams.get(stream_id)
        if stream is not None and stream.remote_open:
            stream.unacked += n
            if stream.unacked >= self._stream_update_at:
                inc = stream.unacked
                stream.unacked = 0
                stream.recv_window += inc
                self._queue(fr.encode_window_update(3, stream_id, inc))
        self._credit_session(n)
