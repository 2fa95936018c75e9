"""HTTP/2 server-side codec (RFC 9113): proxyd's own, lean on the request hot path.

Strategy: this module does what a reverse proxy's frontend needs of HTTP/2 and nothing more, in
as few Python operations per request as it can: frame headers are read with one ``struct`` call
from a bytearray, a stream is one slotted record, events are the neutral ones of
:mod:`proxyd.events`, output is a list of finished frames joined once per flush, and HPACK is
:mod:`.h2hpack` (an O(1) encoder, a caching decoder). Request heads and trailers go out raw, in
order: what they mean is :mod:`proxyd.gate`'s to judge. (Until this codec, the h2 library did this
work and took about half of a request's CPU; it still runs the backend side, see
:mod:`.h2client`.)

Errors follow RFC 9113 §5.4: a frame that breaks the connection's framing or state (bad sizes,
stream 0 where a stream is needed, idle or even stream ids, CONTINUATION out of sequence, window
overflow, HPACK errors, a bad preface) is a connection error — GOAWAY with its code, then the
codec asks to close; a problem confined to one stream (DATA or HEADERS after its end, a window
overflow, a self-dependency, a zero increment) is a stream error — RST_STREAM, and the network
layer learns it through ``StreamReset(remote=False)``. Frames that reach a stream after we reset
it are ignored (their flow-control bytes are credited back at once).

Stream states (§5.1), server side, as the record's two flags::

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

Abuse bounds kept from the h2-based codec: streams over SETTINGS_MAX_CONCURRENT_STREAMS get
REFUSED_STREAM; rapid reset (CVE-2023-44487), empty DATA, WINDOW_UPDATE and SETTINGS/PING floods
end the connection with ENHANCE_YOUR_CALM; a header block is bounded in bytes as it arrives
(CONTINUATION floods) and once decoded (HPACK bombs).
"""

import struct
from collections import OrderedDict

from proxyd import events as ev
from proxyd.codec.h2hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError

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
# Connection-level receive window we grant on top of the RFC's 65535.
CONNECTION_WINDOW = 1 << 20
# Recently closed streams remembered (to tell a late frame from one on an idle stream).
MAX_CLOSED_STREAMS = 1024
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

_HEADER = struct.Struct(">BHBBL")  # length (high byte, low 16 bits), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_RESET_BY_US, _RESET_BY_PEER, _ENDED = "reset by us", "reset by the peer", "ended"


def _frame(ftype, flags, stream_id, payload=b""):
    """One serialised frame."""
    size = len(payload)
    return _HEADER.pack(size >> 16, size & 0xFFFF, ftype, flags, stream_id) + payload


class _Stream:
    """One client stream (see the module docstring for the states)."""

    __slots__ = ("stream_id", "remote_open", "local_open", "send_window", "recv_window",
                 "unacked", "head_sent", "tail")

    def __init__(self, stream_id, send_window, recv_window):
        self.stream_id = stream_id
        self.remote_open = True
        self.local_open = True
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.head_sent = False
        self.tail = None  # (output generation, index in the output, size) of the last DATA header


class _ConnectionError(Exception):
    """A connection error (RFC 9113 §5.4.1) found while handling a frame."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class H2ServerCodec:
    """Server side of an HTTP/2 connection in the codec shape of :mod:`proxyd.codec`."""

    flow_controlled = True
    protocol = "h2"

    def __init__(self, *, max_concurrent_streams=100, max_header_list_size=65536, scheme=b"https",
                 enable_connect_protocol=False):
        self.max_concurrent_streams = max_concurrent_streams
        self.enable_connect_protocol = enable_connect_protocol
        self.max_header_list_size = max_header_list_size
        self._scheme = scheme
        self._buf = bytearray()
        self._preface = False
        self._settings_seen = False
        self._dead = False
        self.wants_close = False
        self._out = []
        self._generation = 0  # counts data_to_send() calls: older DATA headers were handed out
        self._streams = {}
        self._closed = OrderedDict()
        self._highest = 0
        self._continuation = None  # [stream id, flags, block bytearray, self-dependent]
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._encoder = Encoder()
        # Windows: what the peer may still send us, and what we may still send it.
        self._recv_window = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._send_window = DEFAULT_WINDOW
        self._stream_recv_window = DEFAULT_WINDOW  # our SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME
        self._refused_above = None  # after our graceful GOAWAY: the last stream id we serve
        self._empty_data = 0
        self._window_updates = 0
        self._control_frames = 0
        self._data_frames_sent = 0
        self.resets_received = 0
        self.refused_streams = 0

    @property
    def open_streams(self):
        """Streams not yet closed in both directions."""
        return len(self._streams)

    @property
    def acknowledged_unsent(self):
        """Bytes acknowledged on the connection whose WINDOW_UPDATE is still batched."""
        return self._recv_unacked

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
        self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))
        self._recv_window = CONNECTION_WINDOW

    def upgrade(self, settings):
        """h2c (RFC 7540 §3.2): apply the client's decoded ``HTTP2-Settings`` payload and open
        stream 1, half-closed (remote), for the request that carried the upgrade. Call after
        :meth:`initiate`. Raises ValueError when the payload is not valid SETTINGS."""
        out = []
        try:
            self._apply_settings(settings, out)
        except _ConnectionError as error:
            raise ValueError(error.reason) from None
        self._highest = 1
        stream = _Stream(1, self._peer_initial_window, self._stream_recv_window)
        stream.remote_open = False
        self._streams[1] = stream

    # -- receiving -----------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes from the client; return :mod:`proxyd.events`."""
        if self._dead:
            return []
        buf = self._buf
        buf += data
        out = []
        pos = 0
        try:
            if not self._preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                    return out
                if buf[:24] != PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                self._preface = True
                pos = 24
            size = len(buf)
            handlers = _HANDLERS
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
                            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the window")
                        self._recv_window -= length
                        self._credit(length)
                        self._reset(stream_id & 0x7FFFFFFF, FRAME_SIZE_ERROR, out)
                        continue
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end > size:
                    break
                payload = bytes(buf[pos + 9:end])
                pos = end
                stream_id &= 0x7FFFFFFF
                if not self._settings_seen:
                    if ftype != SETTINGS or flags & ACK:
                        raise _ConnectionError(PROTOCOL_ERROR, "first frame is not SETTINGS")
                    self._settings_seen = True
                if self._continuation is not None and (
                        ftype != CONTINUATION or stream_id != self._continuation[0]):
                    raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
                handler = handlers.get(ftype)
                if handler is not None:
                    handler(self, flags, stream_id, payload, out)
                if self._dead:
                    break
        except _ConnectionError as error:
            self._fail(error.code, error.reason, out)
        if pos:
            del buf[:pos]
        return out

    def _on_data(self, flags, stream_id, payload, out):
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self._recv_window:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_window -= flow
        data = payload
        if flags & PADDED:
            if not payload or payload[0] >= flow:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA padding beyond the frame")
            data = payload[1:flow - payload[0]]
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            self._credit(flow)
            if stream is None and stream_id > self._highest:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if self._closed.get(stream_id) is not _RESET_BY_US:
                self._reset(stream_id, STREAM_CLOSED, out)
            return
        if flow > stream.recv_window:
            self._credit(flow)
            self._reset(stream_id, FLOW_CONTROL_ERROR, out)
            return
        stream.recv_window -= flow
        if not data and not flags & END_STREAM:
            self._empty_data += 1
            if self._empty_data > MAX_EMPTY_DATA:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "empty DATA flood")
        else:
            self._empty_data = 0
        out.append(ev.DataReceived(stream_id=stream_id, data=data, flow_length=flow))
        if flags & END_STREAM:
            self._end_remote(stream, out)

    def _on_headers(self, flags, stream_id, payload, out):
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload or payload[0] >= end:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding beyond the frame")
            start, end = 1, end - payload[0]
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS priority too short")
            self_dependent = _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == stream_id
            start += 5
        block = payload[start:end]
        if flags & END_HEADERS:
            self._head(stream_id, flags, block, self_dependent, out)
        else:
            self._continuation = [stream_id, flags, bytearray(block), self_dependent]

    def _on_continuation(self, flags, stream_id, payload, out):
        pending = self._continuation
        if pending is None:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block")
        pending[2] += payload
        if len(pending[2]) > self.max_header_list_size:
            raise _ConnectionError(ENHANCE_YOUR_CALM,
                                   "header block over the limit (CONTINUATION flood)")
        if flags & END_HEADERS:
            self._continuation = None
            self._head(stream_id, pending[1], bytes(pending[2]), pending[3], out)

    def _head(self, stream_id, flags, block, self_dependent, out):
        """A complete header block: a request, trailers, or a frame on a finished stream."""
        try:
            headers = self._decoder.decode(block)
        except OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header list over the limit") from None
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        except (ValueError, IndexError, TypeError) as exc:  # malformed input the library missed
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
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
            raise _ConnectionError(PROTOCOL_ERROR, f"even stream id {stream_id} from a client")
        if stream_id <= self._highest:
            state = self._closed.get(stream_id)
            if state is _RESET_BY_US:
                return
            if state is None and stream_id not in self._closed:
                raise _ConnectionError(PROTOCOL_ERROR, f"stream id {stream_id} reused")
            raise _ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self._highest = stream_id
        if self_dependent:
            self._remember(stream_id, _RESET_BY_US)
            self._queue_rst(stream_id, PROTOCOL_ERROR)
            return
        if self._refused_above is not None or len(self._streams) >= self.max_concurrent_streams:
            self.refused_streams += 1
            self._remember(stream_id, _RESET_BY_US)
            self._queue_rst(stream_id, REFUSED_STREAM)
            return
        stream = _Stream(stream_id, self._peer_initial_window, self._stream_recv_window)
        self._streams[stream_id] = stream
        ended = bool(flags & END_STREAM)
        if ended:
            stream.remote_open = False
        out.append(ev.RequestReceived(stream_id=stream_id, headers=headers, end_stream=ended,
                                      http_version=b"2"))

    def _on_priority(self, flags, stream_id, payload, out):
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._reset(stream_id, FRAME_SIZE_ERROR, out)
            return
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
            self._reset(stream_id, PROTOCOL_ERROR, out)

    def _on_rst_stream(self, flags, stream_id, payload, out):
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if stream_id > self._highest:
            raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._remember(stream_id, _RESET_BY_PEER)
        self._credit(stream.unacked)
        code = _U32.unpack(payload)[0]
        self.resets_received += 1
        out.append(ev.StreamReset(stream_id=stream_id, error_code=code))
        if (self.resets_received > MAX_RESETS
                and self.resets_received * 2 > self._highest // 2 + 1):
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many stream resets")

    def _on_settings(self, flags, stream_id, payload, out):
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self._count_control(out)
        window_changed = self._apply_settings(payload, out)
        self._out.append(_frame(SETTINGS, ACK, 0))
        if window_changed:
            out.append(ev.WindowUpdated(stream_id=0))

    def _apply_settings(self, payload, out):
        """Apply a SETTINGS payload; True when the stream windows changed."""
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        window_changed = False
        for offset in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, offset)
            if ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window overflow")
                window_changed = True
            elif ident == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif ident == ENABLE_PUSH:
                if value > 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            elif ident == HEADER_TABLE_SIZE:
                self._encoder.set_max_size(min(value, 4096))
        return window_changed

    def _on_push_promise(self, flags, stream_id, payload, out):
        raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags, stream_id, payload, out):
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "PING length is not 8")
        if not flags & ACK:
            self._count_control(out)
            self._out.append(_frame(PING, ACK, 0, payload))

    def _on_goaway(self, flags, stream_id, payload, out):
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = struct.unpack_from(">LL", payload)
        out.append(ev.ConnectionTerminated(error_code=code, last_stream_id=last & 0x7FFFFFFF))

    def _on_window_update(self, flags, stream_id, payload, out):
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        self._window_updates += 1
        if (self._window_updates > 100 + MAX_WINDOW_UPDATES_PER_DATA * self._data_frames_sent):
            raise _ConnectionError(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood")
        if not stream_id:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            out.append(ev.WindowUpdated(stream_id=0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._highest:
                raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a closed stream: updates may cross our end of it
        if not increment:
            self._reset(stream_id, PROTOCOL_ERROR, out)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR, out)
            return
        out.append(ev.WindowUpdated(stream_id=stream_id))

    def _count_control(self, out):
        self._control_frames += 1
        work = self._highest // 2 + self._data_frames_sent
        if self._control_frames > MAX_CONTROL_FRAMES + MAX_CONTROL_FRAMES_PER_WORK * work:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "SETTINGS/PING flood")

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
        if stream.unacked:
            self._credit(stream.unacked)
            stream.unacked = 0
        if self._refused_above is not None and not self._streams:
            self.wants_close = True

    def _queue_rst(self, stream_id, code):
        self._out.append(_frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def _reset(self, stream_id, code, out):
        """A stream error of ours: RST_STREAM, and StreamReset(remote=False) for a live stream."""
        stream = self._streams.pop(stream_id, None)
        self._remember(stream_id, _RESET_BY_US)
        self._queue_rst(stream_id, code)
        if stream is not None:
            self._credit(stream.unacked)
            out.append(ev.StreamReset(stream_id=stream_id, error_code=code, remote=False))

    def _credit(self, n):
        """Reopen the connection receive window for ``n`` consumed bytes (batched updates)."""
        if n:
            self._recv_unacked += n
            if self._recv_unacked >= CONNECTION_WINDOW // 2 or self._recv_window < DEFAULT_FRAME:
                self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked)))
                self._recv_window += self._recv_unacked
                self._recv_unacked = 0

    def _fail(self, code, reason, out):
        """A connection error: GOAWAY ``code`` naming the last stream we handled, then close."""
        if self._dead:
            return
        self._dead = True
        self.wants_close = True
        self._out.append(_frame(GOAWAY, 0, 0, struct.pack(">LL", self._highest, code)))
        out.append(ev.ConnectionTerminated(error_code=code, remote=False, reason=reason))

    # -- sending -------------------------------------------------------------------------------
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
        stream = self._sendable(stream_id)
        if stream is None:
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
                out.append(bytes(piece))
                self._data_frames_sent += 1
            stream.tail = (self._generation, len(out) - 2, len(piece))
        if end_stream:
            self._end_local(stream)

    def send_trailers(self, stream_id, headers):
        """Queue trailers, ending the stream."""
        stream = self._sendable(stream_id)
        if stream is None:
            return
        self._block_frames(stream_id, self._encoder.encode(list(headers)), True)
        self._end_local(stream)

    def end_stream(self, stream_id):
        """End the response body.

        When this stream's last DATA frame is still queued, END_STREAM is set on it (one frame
        fewer per response); otherwise an empty DATA frame carries it.
        """
        stream = self._sendable(stream_id)
        if stream is not None:
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

    def reset_stream(self, stream_id, error_code):
        """Reset a stream (ignored when it is already closed)."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._remember(stream_id, _RESET_BY_US)
        self._credit(stream.unacked)
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

    def goaway(self, error_code=0):
        """Send a graceful GOAWAY naming the highest stream seen; later streams are refused."""
        if self._refused_above is not None or self._dead:
            return
        self._refused_above = self._highest
        self._out.append(_frame(GOAWAY, 0, 0, struct.pack(">LL", self._highest, error_code)))
        if not self._streams:
            self.wants_close = True

    def data_to_send(self):
        """Return and clear the queued output."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self._generation += 1
        return data


_HANDLERS = {
    DATA: H2ServerCodec._on_data,
    HEADERS: H2ServerCodec._on_headers,
    PRIORITY: H2ServerCodec._on_priority,
    RST_STREAM: H2ServerCodec._on_rst_stream,
    SETTINGS: H2ServerCodec._on_settings,
    PUSH_PROMISE: H2ServerCodec._on_push_promise,
    PING: H2ServerCodec._on_ping,
    GOAWAY: H2ServerCodec._on_goaway,
    WINDOW_UPDATE: H2ServerCodec._on_window_update,
    CONTINUATION: H2ServerCodec._on_continuation,
}
