"""One HTTP/2 stream toward a backend, in the interface the relay expects of a connection.

Strategy: the relay (:mod:`proxyd.net.relay`) drives an HTTP/1.1
:class:`proxyd.net.backend.BackendConnection` and an :class:`H2Channel` alike (start, body,
end, pause, resume, release, abort, close); the channel turns each call into its stream's
part of the shared connection (:class:`proxyd.net.backend_h2.H2BackendConnection`, which owns
the codec and hands the channel the stream's events). Request bytes wait in the channel until
the backend's windows take them; response bytes are acknowledged (WINDOW_UPDATE) only once the
relay passed them on, so a paused client holds the backend back through HTTP/2 flow control;
bytes nobody will acknowledge any more (the stream ended or was reset) go back to the
connection window. A stream cancelled (RST_STREAM CANCEL) goes through the connection's
:meth:`~proxyd.net.backend_h2.H2BackendConnection.cancel`, which counts it against the
connection's budget of resets.
"""

from collections import deque


class H2Channel:
    """One HTTP/2 stream toward the backend, in the interface the relay expects of a connection."""

    via_version = b"2"

    def __init__(self, conn):
        self.conn = conn
        self.backend = conn.backend
        self.stream = None
        self.stream_id = None
        self.paused = False
        self.unacked = 0
        self.queued = deque()
        self.body_done = False
        self.ended = False
        self.trailers = ()
        # Only streams the backend provably did not process (REFUSED_STREAM, above GOAWAY's last
        # stream id) are retried; a lost HTTP/2 stream may have been processed.
        self.reused = False
        self.unprocessed = False
        self.got_response_bytes = False

    @property
    def write_blocked(self):
        """True while request bytes wait for the backend's window or transport."""
        return bool(self.queued) or self.conn.write_blocked

    def start(self, stream, request):
        """Open the HTTP/2 stream with the head of ``request`` (a BackendRequest). A WebSocket
        handshake waits for the backend's first SETTINGS (whether it offers RFC 8441)."""
        self.stream = stream
        conn = self.conn
        if request.upgrade is not None and not conn.codec.settings_received:
            conn.waiting_settings.append((self, request))
            return
        scheme = b"https" if conn.backend.tls else b"http"
        self.stream_id = conn.codec.send_request(request, scheme, conn.backend.address)
        conn.streams_started += 1
        conn.reserved -= 1
        conn.channels[self.stream_id] = self
        if not request.has_body and request.upgrade is None:  # a tunnel's stream stays open
            self.body_done = self.ended = True
        conn.flush()

    def send_body(self, data):
        """Queue request body bytes and send what the windows allow."""
        if data:
            self.queued.append(data)
            self.flush_body()

    def end_body(self, trailers=()):
        """End the request body once everything queued went out."""
        self.body_done = True
        self.trailers = trailers
        self.flush_body()

    def flush_body(self):
        """Send queued body bytes within the backend's windows; end the stream when due."""
        if self.ended or self.stream_id is None:
            return
        codec = self.conn.codec
        sid = self.stream_id
        queued = self.queued
        sent = False
        while queued:
            window = codec.available_window(sid)
            if window <= 0:
                break
            sent = True
            chunk = queued[0]
            if len(chunk) <= window:
                queued.popleft()
                codec.send_data(sid, chunk)
            else:
                codec.send_data(sid, chunk[:window])
                queued[0] = chunk[window:]
        if not queued and self.body_done:
            self.ended = True
            codec.end_stream(sid, self.trailers)
        if sent:
            # Body bytes go out now, not at the end of the turn: the caller asks write_blocked
            # next (the relay's WRITTEN, _resume_body), and a transport that fills pauses us
            # inside its write; the client is acknowledged only for what the backend took.
            self.conn.flush_now()
        else:
            self.conn.flush()

    def deliver(self, data, flow_length):
        """Response bytes for the relay; acknowledged now unless the relay paused us."""
        self.got_response_bytes = True
        if self.stream is not None:
            self.stream.on_response_data(data)
        if self.paused and self.stream is not None:
            self.unacked += flow_length
        else:
            self.conn.codec.acknowledge(self.stream_id, flow_length)

    def pause_reading(self):
        """The client cannot take more: stop acknowledging (the backend's window closes)."""
        self.paused = True

    def resume_reading(self):
        """Acknowledge what the client took."""
        self.paused = False
        if self.unacked:
            self.conn.codec.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0
            self.conn.flush()

    def return_window(self):
        """Give the connection window back for bytes nobody will acknowledge (stream over)."""
        if self.unacked:
            self.conn.codec.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0

    def release(self):
        """The exchange is over (the stream already left the connection's table).

        A response may end before the request body did (RFC 9113 §8.1): our half of the stream
        is then cancelled, or it would stay open in the codec for the connection's lifetime.
        """
        self.stream = None
        self.return_window()
        if not self.ended and self.stream_id is not None:
            self.ended = True
            self.conn.cancel(self.stream_id)
        self.conn.flush()

    def close(self):
        """End a tunnel (RFC 8441): the backend's stream is cancelled if still open on either
        side; the connection stays (the stream never counts as reusable)."""
        conn = self.conn
        if self.stream_id is not None and self.stream_id not in conn.channels and not self.ended:
            # The backend ended its side; ours is still open in h2's eyes: close it.
            self.stream = None
            self.ended = True
            self.return_window()
            conn.cancel(self.stream_id)
            conn.flush()
            return
        self.abort()

    def abort(self):
        """The client went away (or the stream failed): cancel the stream, keep the connection."""
        conn = self.conn
        self.stream = None
        self.return_window()
        if self.stream_id is None:
            conn.reserved -= 1
            self.backend.slot_freed(conn)
            return
        if conn.channels.pop(self.stream_id, None) is not None:
            self.ended = True
            conn.cancel(self.stream_id)
            conn.flush()
            self.backend.slot_freed(conn)
        elif not self.ended:  # the response ended, the request body did not: cancel our half
            self.ended = True
            conn.cancel(self.stream_id)
            conn.flush()
