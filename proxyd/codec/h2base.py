"""The HTTP/2 framing layer (RFC 9113) that both sides of proxyd's own codec share.

Strategy: :class:`H2Codec` does everything that does not depend on which side opened a stream:
frame headers are read with one ``struct`` call from a bytearray, a stream is one slotted record,
events are the neutral ones of :mod:`proxyd.events`, output is a list of finished frames joined
once per flush, and HPACK is :mod:`.h2hpack`. What a header block means (a request, a response,
1xx, trailers) and how streams are opened is the side's own business: the server codec
(:mod:`.h2`, the frontend) and the client codec (:mod:`.h2client`, HTTP/2 backends) subclass it
and implement ``_head`` (a complete header block) and ``initiate``; a class's frame handlers are
looked up once, when the class is made (``_handlers``), so a subclass may override any of them.

Errors follow RFC 9113 §5.4: a frame that breaks the connection's framing or state (bad sizes,
stream 0 where a stream is needed, idle stream ids, CONTINUATION out of sequence, window overflow,
HPACK errors) is a connection error: GOAWAY with its code, then the codec asks to close
(``wants_close``) and reports ``ConnectionTerminated(remote=False)``; ``receive_data`` raises
nothing for any input. A problem confined to one stream (DATA or HEADERS after its end, a window
overflow, a self-dependency, a zero increment, DATA before a response head) is a stream error:
RST_STREAM, and the network layer learns it through ``StreamReset(remote=False)``. Frames that
reach a stream after we reset it are ignored (their flow-control bytes are credited back at once).

Stream states (§5.1), as the record's two flags::

    idle --HEADERS (server: received; client: sent)--> open (remote_open, local_open)
    open --END_STREAM received--> half-closed (remote)      (remote_open False)
    open --END_STREAM sent--> half-closed (local)           (local_open False)
    both ended, or RST_STREAM either way --> closed (the record leaves ``_streams``; the id is
    remembered in a bounded table of recently closed streams)

Flow control (§6.9): the peer's windows bound what :meth:`H2Codec.send_data` may send
(:meth:`H2Codec.available_window`); our receive windows are reopened only by
:meth:`H2Codec.acknowledge` (the network layer calls it once the bytes were passed on), with a
WINDOW_UPDATE once half a window was consumed. Each byte reopens the connection window once: at
its acknowledgement (a stream's ``unacked`` is only its own update still batched, already
credited to the connection, so a stream that closes gives nothing back), or at once for bytes
no stream will take (a stream already closed or reset, an oversized DATA frame).

Abuse bounds: empty DATA, WINDOW_UPDATE and SETTINGS/PING floods end the connection with
ENHANCE_YOUR_CALM, their allowance growing with the streams really opened and DATA frames sent
(never with stream ids); a subclass may bound resets (``max_resets``): the peer's RST_STREAMs
and the stream errors it provokes (MadeYouReset) count alike. The rules and their counters are
:mod:`.floods`' (shared with the SPDY codec); a :class:`~.floods.Flood` they raise becomes the
connection error. A header block is bounded in bytes as it arrives (CONTINUATION floods: a
connection error, ENHANCE_YOUR_CALM) and once decoded (HPACK bombs): a list over
``max_header_list_size`` is still decoded to the end of its block, so the HPACK table stays
usable, and ``_head_too_large`` decides (the server side: a connection error; the client side: a
stream error).
"""

import struct
from collections import OrderedDict

from proxyd import events as ev
from proxyd.codec.h2frames import (
    ACK, COMPRESSION_ERROR, CONTINUATION, DATA, DEFAULT_FRAME, DEFAULT_WINDOW, ENABLE_PUSH,
    END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY,
    HEADER_TABLE_SIZE, INITIAL_WINDOW_SIZE, MAX_CLOSED_STREAMS, MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE, MAX_WINDOW, PADDED, PING, PREFACE, PRIORITY_FLAG, PROTOCOL_ERROR,
    RST_STREAM, SETTINGS, STREAM_CLOSED, WINDOW_UPDATE, H2ConnectionError, H2Sender, _ENDED,
    _HANDLER_NAMES, _HEADER, _RESET_BY_PEER, _RESET_BY_US, _SETTING, _U32, _frame,
)
from proxyd.codec.floods import Flood, FloodBounds
from proxyd.codec.h2hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError

# remote_settings keeps identifiers up to this one (a peer could send all 65536: memory).
MAX_REMEMBERED_SETTING = 0xFF


class H2Codec(H2Sender, FloodBounds):
    """What both sides of an HTTP/2 connection share (see the module docstring).

    Subclasses set ``_preface`` (False: a client preface must be read first), implement
    ``_head(stream_id, flags, headers, self_dependent, out)`` (a decoded header block) and ``initiate()``, and may override
    ``_is_idle`` (which stream ids the peer may not use yet), ``_settings_applied`` and
    ``_peer_last_stream`` (the last stream id a GOAWAY of ours names).
    """

    flow_controlled = True
    protocol = "h2"
    max_enable_push = 1  # the largest SETTINGS_ENABLE_PUSH the peer may send
    # A header block's bytes, as they arrive, are bounded by max_header_list_size times this:
    # beyond it, a CONTINUATION flood (connection error); within it, the block is decoded.
    block_bytes_factor = 1
    _handlers = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._handlers = {ftype: getattr(cls, name) for ftype, name in _HANDLER_NAMES.items()}

    def __init__(self, *, max_header_list_size=65536, connection_window=DEFAULT_WINDOW,
                 stream_window=DEFAULT_WINDOW):
        self.max_header_list_size = max_header_list_size
        self._max_block = max_header_list_size * self.block_bytes_factor
        self._buf = bytearray()
        self._preface = True
        self._settings_seen = False
        self._dead = False
        self.wants_close = False
        self._out = []
        self._generation = 0  # counts data_to_send() calls: older DATA headers were handed out
        self._streams = {}
        self._closed = OrderedDict()
        self._highest = 0  # server: highest stream id the client opened; client: ours
        self._continuation = None  # [stream id, flags, block bytearray, self-dependent]
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._encoder = Encoder()
        # Windows: what the peer may still send us, and what we may still send it.
        self._connection_window = connection_window  # what initiate() grants the peer
        self._recv_window = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._send_window = DEFAULT_WINDOW
        self._stream_recv_window = stream_window  # our SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME
        self.peer_max_concurrent_streams = None  # None until the peer sets it
        self.remote_settings = {}  # settings the peer sent, by identifier (last value)
        self._refused_above = None  # after our graceful GOAWAY: the last stream id we serve
        self.goaway_last_stream_id = None  # the peer's GOAWAY, once received
        self.pings_outstanding = 0
        self._init_flood_bounds()  # counters of work and of frames asking for none (.floods)

    @property
    def open_streams(self):
        """Streams not yet closed in both directions."""
        return len(self._streams)

    @property
    def acknowledged_unsent(self):
        """Bytes acknowledged on the connection whose WINDOW_UPDATE is still batched."""
        return self._recv_unacked

    def _grant_connection_window(self):
        """Queue the WINDOW_UPDATE that widens the connection receive window (initiate)."""
        if self._connection_window > DEFAULT_WINDOW:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0,
                                    _U32.pack(self._connection_window - DEFAULT_WINDOW)))
            self._recv_window = self._connection_window

    def _is_idle(self, stream_id):
        """True when the peer may not use ``stream_id`` yet (server side: above the highest)."""
        return stream_id > self._highest

    def _peer_last_stream(self):
        """The last peer-initiated stream id our GOAWAY names."""
        return self._highest

    def _head_too_large(self, stream_id, flags, out):
        """A header block whose list is over ``max_header_list_size`` (decoded to its end: the
        HPACK table is in step). Here a connection error, ENHANCE_YOUR_CALM (the frontend: a
        client's own connection); the client side fails only the stream."""
        raise H2ConnectionError(ENHANCE_YOUR_CALM, "header list over the limit")

    def _settings_applied(self, window_changed, out):
        """Events after a SETTINGS frame (server: a WindowUpdated when the windows changed)."""
        if window_changed:
            out.append(ev.WindowUpdated(stream_id=0))

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the peer; return :mod:`proxyd.events` (raises nothing)."""
        if self._dead:
            return []
        if self._provoked_over:  # stream errors provoked since the last read: over the bound
            out = []
            self._fail(Flood.code, "too many stream resets", out)
            return out
        held = self._buf  # a bytearray: the start of a frame from an earlier read
        if held:
            held += data
            buf = held
        else:
            buf = data  # the usual case: frames are sliced out of the read itself (one copy)
        out = []
        pos = 0
        try:
            if not self._preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(bytes(buf)):
                        raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                    if buf is not held:
                        held += buf
                    return out
                if buf[:24] != PREFACE:
                    raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                self._preface = True
                pos = 24
            size = len(buf)
            handlers = self._handlers
            while size - pos >= 9:
                high, low, ftype, flags, stream_id = _HEADER.unpack_from(buf, pos)
                length = (high << 16) | low
                end = pos + 9 + length
                if length > DEFAULT_FRAME:
                    if ftype == DATA and stream_id and self._continuation is None:
                        # §4.2: a stream error for DATA; the bytes still count for the
                        # connection window, which is credited back.
                        if end > size:
                            break
                        pos = end
                        if length > self._recv_window:
                            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the window")
                        self._recv_window -= length
                        self._credit(length)
                        self._reset(stream_id & 0x7FFFFFFF, FRAME_SIZE_ERROR, out)
                        continue
                    raise H2ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end > size:
                    break
                payload = buf[pos + 9:end]
                if type(payload) is not bytes:
                    payload = bytes(payload)
                pos = end
                stream_id &= 0x7FFFFFFF
                if not self._settings_seen:
                    if ftype != SETTINGS or flags & ACK:
                        raise H2ConnectionError(PROTOCOL_ERROR, "first frame is not SETTINGS")
                    self._settings_seen = True
                if self._continuation is not None and (
                        ftype != CONTINUATION or stream_id != self._continuation[0]):
                    raise H2ConnectionError(PROTOCOL_ERROR, "header block interrupted")
                handler = handlers.get(ftype)
                if handler is not None:
                    handler(self, flags, stream_id, payload, out)
                if self._dead:
                    break
        except (H2ConnectionError, Flood) as error:
            self._fail(error.code, error.reason, out)
        if buf is held:
            if pos:
                del held[:pos]
        elif pos < len(buf):
            held += memoryview(buf)[pos:]
        if len(out) > 1:
            return ev.merge_data(out)
        return out

    def _on_data(self, flags, stream_id, payload, out):
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self._recv_window:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_window -= flow
        data = payload
        if flags & PADDED:
            if not payload or payload[0] >= flow:
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA padding beyond the frame")
            data = payload[1:flow - payload[0]]
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            self._credit(flow)
            if stream is None and self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if self._closed.get(stream_id) is not _RESET_BY_US:
                self._reset(stream_id, STREAM_CLOSED, out)
            return
        if flow > stream.recv_window:
            self._credit(flow)
            self._reset(stream_id, FLOW_CONTROL_ERROR, out)
            return
        stream.recv_window -= flow
        if not stream.final:  # §8.1: DATA before the response head is malformed
            self._reset(stream_id, PROTOCOL_ERROR, out)
            return
        if not data and not flags & END_STREAM:
            self._count_empty_data()
        else:
            self._empty_data = 0
        out.append(ev.DataReceived(stream_id=stream_id, data=data, flow_length=flow))
        if flags & END_STREAM:
            self._end_remote(stream, out)

    def _on_headers(self, flags, stream_id, payload, out):
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload or payload[0] >= end:
                raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS padding beyond the frame")
            start, end = 1, end - payload[0]
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS priority too short")
            self_dependent = _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == stream_id
            start += 5
        block = payload[start:end]
        if flags & END_HEADERS:
            # Decoded here, always (the HPACK state must follow the peer's), inline: no extra
            # call on the hot path.
            try:
                headers = self._decoder.decode(block)
            except OversizedHeaderListError:
                self._head_too_large(stream_id, flags, out)
                return
            except (HPACKError, ValueError, IndexError, TypeError) as exc:
                raise _hpack_failure(exc) from None
            self._head(stream_id, flags, headers, self_dependent, out)
        else:
            self._continuation = [stream_id, flags, bytearray(block), self_dependent]

    def _on_continuation(self, flags, stream_id, payload, out):
        pending = self._continuation
        if pending is None:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block")
        pending[2] += payload
        if len(pending[2]) > self._max_block:
            raise H2ConnectionError(ENHANCE_YOUR_CALM,
                                   "header block over the limit (CONTINUATION flood)")
        if flags & END_HEADERS:
            self._continuation = None
            try:
                headers = self._decoder.decode(bytes(pending[2]))
            except OversizedHeaderListError:
                self._head_too_large(stream_id, pending[1], out)
                return
            except (HPACKError, ValueError, IndexError, TypeError) as exc:
                raise _hpack_failure(exc) from None
            self._head(stream_id, pending[1], headers, pending[3], out)

    def _on_priority(self, flags, stream_id, payload, out):
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._reset(stream_id, FRAME_SIZE_ERROR, out)
            return
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
            self._reset(stream_id, PROTOCOL_ERROR, out)

    def _on_rst_stream(self, flags, stream_id, payload, out):
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if self._is_idle(stream_id):
            raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._remember(stream_id, _RESET_BY_PEER)
        code = _U32.unpack(payload)[0]
        out.append(ev.StreamReset(stream_id=stream_id, error_code=code))
        self._count_reset()

    def _on_settings(self, flags, stream_id, payload, out):
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self._count_control()
        window_changed = self._apply_settings(payload)
        self._out.append(_frame(SETTINGS, ACK, 0))
        self._settings_applied(window_changed, out)

    def _apply_settings(self, payload):
        """Apply a SETTINGS payload (also an h2c upgrade's ``HTTP2-Settings``); True when the
        stream windows changed."""
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        window_changed = False
        for offset in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, offset)
            if ident <= MAX_REMEMBERED_SETTING:
                self.remote_settings[ident] = value
            if ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise H2ConnectionError(FLOW_CONTROL_ERROR, "stream window overflow")
                window_changed = True
            elif ident == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 16777215:
                    raise H2ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif ident == MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
            elif ident == ENABLE_PUSH:
                if value > self.max_enable_push:
                    raise H2ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            elif ident == HEADER_TABLE_SIZE:
                self._encoder.set_max_size(min(value, 4096))
        return window_changed

    def _on_push_promise(self, flags, stream_id, payload, out):
        raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled, or from a client)")

    def _on_ping(self, flags, stream_id, payload, out):
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PING length is not 8")
        if not flags & ACK:
            self._count_control()
            self._out.append(_frame(PING, ACK, 0, payload))
        elif self.pings_outstanding:
            self.pings_outstanding -= 1

    def _on_goaway(self, flags, stream_id, payload, out):
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = struct.unpack_from(">LL", payload)
        self.goaway_last_stream_id = last & 0x7FFFFFFF
        out.append(ev.ConnectionTerminated(error_code=code, last_stream_id=last & 0x7FFFFFFF))

    def _on_window_update(self, flags, stream_id, payload, out):
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        self._count_window_update()
        if not stream_id:
            if not increment:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            out.append(ev.WindowUpdated(stream_id=0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a closed stream: updates may cross our end of it
        if not increment:
            self._reset(stream_id, PROTOCOL_ERROR, out)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR, out)
            return
        out.append(ev.WindowUpdated(stream_id=stream_id))

    # -- stream bookkeeping --------------------------------------------------------------------
    def _remember(self, stream_id, state):
        closed = self._closed
        closed[stream_id] = state
        if len(closed) > MAX_CLOSED_STREAMS:
            closed.popitem(last=False)

    def _end_remote(self, stream, out):
        stream.remote_open = False
        out.append(ev.StreamEnded(stream_id=stream.stream_id))
        if not stream.local_open:
            self._close(stream)

    def _close(self, stream):
        del self._streams[stream.stream_id]
        self._remember(stream.stream_id, _ENDED)
        if self._refused_above is not None and not self._streams:
            self.wants_close = True

    def _queue_rst(self, stream_id, code):
        self._out.append(_frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def _reset(self, stream_id, code, out, reason="", detail=""):
        """A stream error the peer caused: RST_STREAM, StreamReset(remote=False) for a live
        stream (with the errors-table ``reason`` when given), and one more reset counted
        (which may end the connection)."""
        stream = self._streams.pop(stream_id, None)
        self._remember(stream_id, _RESET_BY_US)
        self._queue_rst(stream_id, code)
        if stream is not None:
            out.append(ev.StreamReset(stream_id=stream_id, error_code=code, remote=False,
                                      reason=reason, detail=detail))
        self._count_reset()

    def _credit(self, n):
        """Reopen the connection receive window for ``n`` consumed bytes (batched updates)."""
        if n:
            self._recv_unacked += n
            if (self._recv_unacked >= self._connection_window // 2
                    or self._recv_window < DEFAULT_FRAME):
                self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked)))
                self._recv_window += self._recv_unacked
                self._recv_unacked = 0

    def _fail(self, code, reason, out):
        """A connection error: GOAWAY ``code`` naming the last stream we handled, then close."""
        if self._dead:
            return
        self._dead = True
        self.wants_close = True
        last = self._peer_last_stream()
        self._out.append(_frame(GOAWAY, 0, 0, struct.pack(">LL", last, code)))
        out.append(ev.ConnectionTerminated(error_code=code, remote=False, reason=reason))

    # -- sending (the rest is H2Sender's) --------------------------------------------------------
    def reset_stream(self, stream_id, error_code):
        """Reset a stream (ignored when it is already closed)."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._remember(stream_id, _RESET_BY_US)
        self._queue_rst(stream_id, error_code)
        if self._refused_above is not None and not self._streams:
            self.wants_close = True

    def acknowledge(self, stream_id, n):
        """``n`` flow-controlled bytes were passed on: reopen the windows, batched.

        The connection window reopens even when the stream is gone.
        """
        if not n:
            return
        stream = self._streams.get(stream_id)
        if stream is not None and stream.remote_open:
            stream.unacked += n
            if stream.unacked >= self._stream_recv_window // 2:
                self._out.append(_frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked)))
                stream.recv_window += stream.unacked
                stream.unacked = 0
        self._credit(n)


def _hpack_failure(exc):
    """The connection error for a header block HPACK could not decode (ValueError, IndexError
    and TypeError: malformed input the library missed); a list over the bound is not one of
    them (``_head_too_large``)."""
    return H2ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}")

