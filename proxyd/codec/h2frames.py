"""HTTP/2 wire constants, frame serialisation, the stream record and the sending half of a codec.

Strategy: one place for what both sides of proxyd's own HTTP/2 codec write the same way
(:mod:`.h2base` reads frames and keeps the connection's state; :mod:`.h2` and :mod:`.h2client`
are the server and client sides). A frame is built with one ``struct`` call; output is a list of
finished frames (and body slices) joined once per :meth:`H2Sender.data_to_send`, so a response
head, its body and END_STREAM cost one ``bytes`` join per flush. END_STREAM rides on a stream's
last DATA frame while that frame is still queued (one frame fewer per body).
"""

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (§7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, _SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)
ENHANCE_YOUR_CALM = 0xB
# Settings (§6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
ENABLE_CONNECT_PROTOCOL = 8  # RFC 8441 §3

MAX_WINDOW = 2 ** 31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
# Recently closed streams remembered (to tell a late frame from one on an idle stream).
MAX_CLOSED_STREAMS = 1024
_HEADER = struct.Struct(">BHBBL")  # length (high byte, low 16 bits), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_RESET_BY_US, _RESET_BY_PEER, _ENDED = "reset by us", "reset by the peer", "ended"


def _frame(ftype, flags, stream_id, payload=b""):
    """One serialised frame."""
    size = len(payload)
    return _HEADER.pack(size >> 16, size & 0xFFFF, ftype, flags, stream_id) + payload


MAX_STREAM_ID = 2 ** 31 - 1
_HANDLER_NAMES = {
    DATA: "_on_data", HEADERS: "_on_headers", PRIORITY: "_on_priority",
    RST_STREAM: "_on_rst_stream", SETTINGS: "_on_settings", PUSH_PROMISE: "_on_push_promise",
    PING: "_on_ping", GOAWAY: "_on_goaway", WINDOW_UPDATE: "_on_window_update",
    CONTINUATION: "_on_continuation",
}


class _Stream:
    """One stream (see the module docstring for the states)."""

    __slots__ = ("stream_id", "remote_open", "local_open", "send_window", "recv_window",
                 "unacked", "head_sent", "tail", "final", "tunnel")

    def __init__(self, stream_id, send_window, recv_window, final=True):
        self.stream_id = stream_id
        self.remote_open = True
        self.local_open = True
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.head_sent = False
        self.tail = None  # (output generation, index in the output, size) of the last DATA header
        self.final = final  # the peer's final head arrived (a request, or a final response)
        self.tunnel = False  # an extended CONNECT of ours (RFC 8441) waiting for its answer


class H2ConnectionError(Exception):
    """A connection error (RFC 9113 §5.4.1) found while handling a frame."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class H2Sender:
    """The sending half of :class:`proxyd.codec.h2base.H2Codec`: header blocks in HEADERS and
    CONTINUATION frames, bodies in DATA frames within the peer's windows, the output queue.

    It uses the codec's state (``_streams``, ``_out``, ``_generation``, ``_send_window``,
    ``_peer_max_frame``, ``_dead``, ``_data_frames_sent``) and its ``_close``.
    """

    def _block_frames(self, stream_id, block, end_stream):
        limit = self._peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._out.append(_frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self._out.append(_frame(HEADERS, flags, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            self._out.append(_frame(CONTINUATION, END_HEADERS if last else 0, stream_id,
                                    block[start:start + limit]))

    def _sendable(self, stream_id):
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open or self._dead:
            return None
        return stream

    def available_window(self, stream_id):
        """Bytes :meth:`send_data` may take now on this stream."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open or self._dead:
            return 0
        window = stream.send_window
        if self._send_window < window:
            window = self._send_window
        return window if window > 0 else 0

    def send_data(self, stream_id, data, end_stream=False):
        """Queue body bytes in DATA frames; ``len(data)`` must fit :meth:`available_window`."""
        stream = self._streams.get(stream_id)  # _sendable, inline (once per response or more)
        if stream is None or not stream.local_open or self._dead:
            return
        size = len(data)
        if size > stream.send_window or size > self._send_window:
            raise ValueError(f"{size} bytes exceed the flow-control window of stream {stream_id}")
        stream.send_window -= size
        self._send_window -= size
        limit = self._peer_max_frame
        out = self._out
        if size <= limit:
            stream.tail = (self._generation, len(out), size)
            out.append(_HEADER.pack(size >> 16, size & 0xFFFF, DATA,
                                    END_STREAM if end_stream else 0, stream_id))
            if size:
                out.append(data)
            self._data_frames_sent += 1
        else:
            view = memoryview(data)
            for start in range(0, size, limit):
                piece = view[start:start + limit]
                last = end_stream and start + limit >= size
                out.append(_HEADER.pack(len(piece) >> 16, len(piece) & 0xFFFF, DATA,
                                        END_STREAM if last else 0, stream_id))
                out.append(piece)  # joined by data_to_send: no copy here
                self._data_frames_sent += 1
            stream.tail = (self._generation, len(out) - 2, len(piece))
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id):
        """End the response body.

        When this stream's last DATA frame is still queued, END_STREAM is set on it (one frame
        fewer per response); otherwise an empty DATA frame carries it.
        """
        stream = self._streams.get(stream_id)  # _sendable, inline
        if stream is not None and stream.local_open and not self._dead:
            tail = stream.tail
            if tail is not None and tail[0] == self._generation:
                size = tail[2]
                self._out[tail[1]] = _HEADER.pack(size >> 16, size & 0xFFFF, DATA, END_STREAM,
                                                  stream_id)
            else:
                self._out.append(_HEADER.pack(0, 0, DATA, END_STREAM, stream_id))
            self._end_local(stream)

    def _end_local(self, stream):
        stream.local_open = False
        if not stream.remote_open:
            self._close(stream)

    def release(self):
        """The connection is lost: nothing here holds a reference cycle."""

    def data_to_send(self):
        """Return and clear the queued output."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self._generation += 1
        return data
