"""Per-stream state and the size constants shared by the receiving and sending halves of a session.

Strategy: a slotted record per open stream, nothing else; the session removes it as soon as both
directions are closed (or the stream is reset), so memory is bounded by the concurrency limit.
Windows follow the draft 3 rules: they may go negative after a SETTINGS change.
"""

from proxyd.codec.floods import MAX_RESETS  # noqa: F401 - rapid reset: the frontends' one bound

MAX_DATA_FRAME = 16384  # send_data splits larger payloads into DATA frames of this size
SESSION_OVERRUN_ALLOWANCE = 65536  # tolerated SPDY/3.1 session window overrun (one chunk)


class SpdyError(Exception):
    """Misuse of the codec API by the caller (e.g. sending beyond the flow-control window)."""


class Stream:
    """One open stream (``remote_open``: the peer may still send; ``local_open``: we may).

    ``head_done`` means SYN_REPLY sent (server side) or received (client side); ``trailers``
    collects HEADERS frames until the peer's FIN; ``gone`` is set when the stream left the table
    while a DATA frame for it was still arriving.
    """

    __slots__ = ("stream_id", "remote_open", "local_open", "send_window", "recv_window",
                 "unacked", "head_done", "trailers", "trailer_size", "gone")

    def __init__(self, stream_id, send_window, recv_window):
        self.stream_id = stream_id
        self.remote_open = True
        self.local_open = True
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.head_done = False
        self.trailers = None
        self.trailer_size = 0
        self.gone = False
