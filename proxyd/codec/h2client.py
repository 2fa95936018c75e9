"""HTTP/2 client-side codec for backends (RFC 9113): proxyd's own, on :mod:`.h2base`.

Strategy: the framing, flow control, stream bookkeeping and sending are :mod:`.h2base`'s (the
same code as the frontend's server codec, :mod:`.h2`), HPACK is :mod:`.h2hpack`. This module adds
what is the client's: the connection preface, streams opened for proxied requests (odd ids, in
order), response heads (1xx, final, trailers) and what the backend pool needs to multiplex: the
peer's SETTINGS_MAX_CONCURRENT_STREAMS, the number of open streams, GOAWAY's last stream id, and
PING round trips for liveness. It builds the HTTP/2 wire form of a neutral
:class:`proxyd.bridge.BackendRequest` itself (pseudo-header fields, ``te: trailers`` when the
client accepts trailers, the declared content-length). Responses go out raw: ``:status`` is read
(0 when it is not three digits) and :mod:`proxyd.gate` judges the rest (Content-Length against
DATA included: :mod:`proxyd.stream` checks it per stream).

Client-side rules on top of :mod:`.h2base`: push is disabled (ENABLE_PUSH 0: a PUSH_PROMISE, or a
server's ENABLE_PUSH 1, is a connection error); a frame on an even stream id or on an odd one we
did not open yet is one on an idle stream (connection error); on a stream, a 1xx head may come
any number of times before the final head, a 1xx with END_STREAM, a 101 or DATA before the final
head are malformed (stream error PROTOCOL_ERROR), and a head after the final one is trailers and
must end the stream. A graceful GOAWAY lets the streams up to its last stream id finish
(§6.8). HEADERS on a stream we reset, or one so old it is forgotten, is decoded (the HPACK state
must follow) and ignored.

WebSocket (a request whose ``upgrade`` is set): an RFC 8441 extended CONNECT (``:protocol``, no
``Sec-WebSocket-Key``, the stream left open both ways), only to a backend whose SETTINGS offered
SETTINGS_ENABLE_CONNECT_PROTOCOL (``Refused("bad_upgrade")`` otherwise); its 2xx is reported as
:class:`proxyd.events.TunnelOpened`, any other status as an ordinary response.

A response head or trailers over our own SETTINGS_MAX_HEADER_LIST_SIZE (a backend that echoes
a large request header) fail that stream only: the block is still decoded to its end (the HPACK
table must follow the backend's), the stream is cancelled, and its StreamReset names the
errors-table reason ``bad_response`` (502 for its client). The other clients' streams on the
connection go on.

Resets sent are counted (``resets_sent``, every RST_STREAM: the cancels of clients that reset
their streams or went away, and our stream errors): HTTP/2 servers count the resets a
connection receives against CVE-2023-44487 (nghttp2, in nghttpd, nghttpx and Apache: a burst of
1000, then 33/s; Netty: 200 per 30 s) and end the connection past their limit, with the streams
of every client it carries. Past ``MAX_RESETS_SENT`` (``spent``) the pool retires the
connection: its streams finish, a fresh one takes the new streams
(:mod:`proxyd.net.backend_h2`).

A request head over the backend's SETTINGS_MAX_HEADER_LIST_SIZE (§6.5.2; the fields proxyd adds
can take a head the gate admitted over it) is not sent: ``Refused("head_over_backend_limit")``,
answered 431. A backend may end the connection on such a head, and with it the streams of every
client it carries.
"""

import struct
from operator import itemgetter

from proxyd import events as ev
from proxyd.errors import Refused
from proxyd.codec.h2base import H2Codec
from proxyd.codec.h2hpack import SHARED_NEVER_INDEXED, Encoder
from proxyd.codec.h2frames import (
    CANCEL, ENABLE_CONNECT_PROTOCOL, ENABLE_PUSH, END_STREAM, GOAWAY, H2ConnectionError, INITIAL_WINDOW_SIZE,
    MAX_HEADER_LIST_SIZE, MAX_STREAM_ID, PING, PREFACE, PROTOCOL_ERROR, SETTINGS, STREAM_CLOSED,
    _ENDED, _RESET_BY_PEER, _SETTING, _Stream, _frame,
)

# Receive windows we grant the backend: per stream (SETTINGS) and for the connection. A stream's
# window is reopened only as its client takes the bytes, so it bounds what proxyd holds for the
# stream; a connection carries at most MAX_STREAMS of them (the pool's cap), so what proxyd holds
# for one backend connection is at most MAX_STREAMS x STREAM_WINDOW = 25 MiB. The connection
# window is far above that (with its batched half: 512 MiB + 25 MiB < 1 GiB), so it never binds
# before a stream's: the streams of clients that stopped reading cannot shut the window that
# every client's stream on the connection shares (nghttpx: 64 KiB stream windows under a
# 2^31-1 connection window).
STREAM_WINDOW = 256 * 1024
MAX_STREAMS = 100
CONNECTION_WINDOW = 1 << 30
# RST_STREAMs one connection sends before the pool retires it. What it carries then (at most
# MAX_STREAMS streams) may still be cancelled there: at most 200 resets per retired connection,
# within Netty's 200 per 30 s and a fifth of nghttp2's burst; a client cancelling a request in
# a hundred costs one new backend connection per 10,000 requests (nginx closes its HTTP/2
# connections after 1000 by default).
MAX_RESETS_SENT = 100
PING_DATA = b"proxyd\x00\x00"
_GOAWAY = struct.Struct(">LL")


class H2ClientCodec(H2Codec):
    """Client side of one HTTP/2 backend connection."""

    max_enable_push = 0  # a server must not enable push (§6.5.2)
    # A backend's block may be longer in bytes than its list (an encoder that Huffman-codes
    # every string lengthens characters coded in more than 8 bits: up to 30): twice the limit
    # (128 KiB, one block at a time per connection) is decoded, and a list over the limit is
    # then the stream's failure, not a flood that ends every client's stream on the connection.
    block_bytes_factor = 2

    def __init__(self, *, max_header_list_size=65536):
        super().__init__(max_header_list_size=max_header_list_size,
                         connection_window=CONNECTION_WINDOW, stream_window=STREAM_WINDOW)
        # One table for the streams of many clients: no client's cookie may be indexed in it.
        self._encoder = Encoder(never_indexed=SHARED_NEVER_INDEXED)
        self._next_id = 1
        self.settings_received = False  # the backend's first SETTINGS arrived
        self.resets_sent = 0  # RST_STREAM frames queued, ours and the stream errors we found

    def initiate(self):
        """Queue the client preface and SETTINGS, and widen the connection window."""
        settings = _SETTING.pack(ENABLE_PUSH, 0) + \
            _SETTING.pack(INITIAL_WINDOW_SIZE, self._stream_recv_window) + \
            _SETTING.pack(MAX_HEADER_LIST_SIZE, self.max_header_list_size)
        self._out.append(PREFACE + _frame(SETTINGS, 0, 0, settings))
        self._grant_connection_window()

    # -- what the backend pool reads -----------------------------------------------------------
    @property
    def max_concurrent_streams(self):
        """How many streams the backend lets us open at once (unbounded until it says)."""
        value = self.peer_max_concurrent_streams
        return 2 ** 32 if value is None else value

    @property
    def accepting(self):
        """True while new streams may be opened on this connection."""
        return (self.goaway_last_stream_id is None and not self.wants_close
                and self._next_id <= MAX_STREAM_ID)

    @property
    def spent(self):
        """True once this connection sent its budget of resets (``MAX_RESETS_SENT``)."""
        return self.resets_sent >= MAX_RESETS_SENT

    @property
    def connect_protocol(self):
        """True when the backend advertised SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)."""
        return self.remote_settings.get(ENABLE_CONNECT_PROTOCOL, 0) == 1

    # -- sending -------------------------------------------------------------------------------
    def send_request(self, request, scheme, default_authority=b""):
        """Open a stream with the head of ``request`` (a BackendRequest); returns its stream id."""
        authority = request.authority or default_authority
        if request.upgrade is not None:
            # RFC 8441 §4: the WebSocket handshake as an extended CONNECT; the stream stays open.
            if not self.connect_protocol:
                raise Refused("bad_upgrade", "the HTTP/2 backend does not offer extended CONNECT")
            block = [(b":method", b"CONNECT"), (b":protocol", request.upgrade),
                     (b":scheme", scheme), (b":authority", authority), (b":path", request.target)]
            block.extend(item for item in request.headers if item[0] != b"sec-websocket-key")
            end_stream = False
        else:
            block = [(b":method", request.method), (b":scheme", scheme),
                     (b":authority", authority), (b":path", request.target)]
            block.extend(request.headers)
            if request.te_trailers:
                block.append((b"te", b"trailers"))
            if request.content_length is not None:
                block.append((b"content-length", b"%d" % request.content_length))
            end_stream = not request.has_body
        limit = self.remote_settings.get(MAX_HEADER_LIST_SIZE)
        if limit is not None and _list_size(block) > limit:
            # §6.5.2: the backend said it would not take it; sent anyway, a backend may end the
            # connection every client's streams share (the h2 library's GOAWAY does).
            raise Refused("head_over_backend_limit",
                          f"{_list_size(block)} bytes, the backend takes {limit}")
        stream_id = self._next_id
        self._next_id += 2
        self._highest = stream_id
        if self._dead:
            return stream_id
        self._block_frames(stream_id, self._encoder.encode(block), end_stream)
        stream = _Stream(stream_id, self._peer_initial_window, self._stream_recv_window, False)
        stream.tunnel = request.upgrade is not None
        if end_stream:
            stream.local_open = False
        self._streams[stream_id] = stream
        self._streams_opened += 1
        return stream_id

    def end_stream(self, stream_id, trailers=()):
        """End the request body (with trailers when given)."""
        if not trailers:
            super().end_stream(stream_id)
            return
        stream = self._sendable(stream_id)
        if stream is not None:
            self._block_frames(stream_id, self._encoder.encode(list(trailers)), True)
            self._end_local(stream)

    def _queue_rst(self, stream_id, code):
        """Queue RST_STREAM, counted (``resets_sent``)."""
        self.resets_sent += 1
        super()._queue_rst(stream_id, code)

    def ping(self):
        """Queue a PING (liveness check); its ACK decrements ``pings_outstanding``."""
        if not self._dead:
            self.pings_outstanding += 1
            self._out.append(_frame(PING, 0, 0, PING_DATA))

    def close(self, error_code=0):
        """Queue GOAWAY; the connection should close after flushing."""
        if not self._dead and not self.wants_close:
            self._out.append(_frame(GOAWAY, 0, 0, _GOAWAY.pack(0, error_code)))
        self.wants_close = True

    # -- receiving -----------------------------------------------------------------------------
    def _is_idle(self, stream_id):
        """Streams we did not open: even ids (no push) and odd ids above our newest."""
        return stream_id > self._highest or not stream_id & 1

    def _peer_last_stream(self):
        """A server opens no streams toward us (push is disabled): our GOAWAY names 0."""
        return 0

    def _settings_applied(self, window_changed, out):
        """Every SETTINGS may change the concurrency and the windows: tell the pool."""
        self.settings_received = True
        out.append(ev.SettingsChanged(max_concurrent_streams=self.max_concurrent_streams))
        out.append(ev.WindowUpdated(stream_id=0))

    def _head_too_large(self, stream_id, flags, out):
        """A response head or trailers over our SETTINGS_MAX_HEADER_LIST_SIZE, decoded to the
        end of the block (the HPACK table the other clients' streams share is in step): RFC
        9113 §10.5.1 lets a client discard a response it cannot process, so only this stream
        fails (RST_STREAM CANCEL; ``bad_response`` for its client). On a stream that takes no
        head any more, the block is judged as any other head there."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            self._head(stream_id, flags, [], False, out)
            return
        self._reset(stream_id, CANCEL, out, reason="bad_response",
                    detail=f"response head or trailers over {self.max_header_list_size} bytes")

    def _head(self, stream_id, flags, headers, self_dependent, out):
        """A complete header block: a 1xx or final response head, or trailers."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on idle stream {stream_id}")
            state = self._closed.get(stream_id)
            if state is _ENDED:
                raise H2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            if state is _RESET_BY_PEER:
                self._reset(stream_id, STREAM_CLOSED, out)
            return  # reset by us, or forgotten: ignored
        if not stream.remote_open:
            self._reset(stream_id, STREAM_CLOSED, out)
            return
        ended = flags & END_STREAM
        if self_dependent:
            self._reset(stream_id, PROTOCOL_ERROR, out)
            return
        if stream.final:
            if not ended:
                self._reset(stream_id, PROTOCOL_ERROR, out)  # trailers must end the stream
                return
            out.append(ev.TrailersReceived(stream_id=stream_id, headers=list(headers)))
            self._end_remote(stream, out)
            return
        status, fields = _split_status(headers)
        if 100 <= status < 200:
            if ended or status == 101:  # §8.1: 1xx never ends a stream; §8.6: no 101
                self._reset(stream_id, PROTOCOL_ERROR, out)
                return
            out.append(ev.InformationalResponse(stream_id=stream_id, status=status,
                                                headers=fields))
            return
        stream.final = True
        if stream.tunnel:
            stream.tunnel = False
            if 200 <= status <= 299 and not ended:
                out.append(ev.TunnelOpened(stream_id=stream_id, status=status, headers=fields))
                return
        out.append(ev.ResponseReceived(stream_id=stream_id, status=status, headers=fields,
                                       end_stream=bool(ended)))
        if ended:
            self._end_remote(stream, out)


_NAME = itemgetter(0)


def _list_size(block):
    """A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 §6.5.2)."""
    return sum(len(name) + len(value) for name, value in block) + 32 * len(block)


def _split_status(block):
    """``(status, other fields)`` of a response header block; status 0 unless exactly one
    ``:status`` of three digits came first (the gate refuses 0, and any other pseudo-header
    field stays in the list for the gate to refuse). The fields are a new list (``block`` may
    be the decoder's cached one) of the same tuples; the scans run in C (a response head is
    decoded once per request)."""
    if not block or block[0][0] != b":status":
        return 0, list(block)
    value = block[0][1]
    headers = block[1:]
    if len(value) != 3 or not value.isdigit() or b":status" in map(_NAME, headers):
        return 0, headers
    return int(value), headers
