"""Neutral per-stream events shared by every codec (HTTP/2, SPDY, HTTP/1.1, both directions).

Strategy: a codec's ``receive_data(bytes)`` returns a list of these; the bridge and the network
layer only ever see these types, so they do not care which protocol a peer speaks. Header lists are
lists of ``(name, value)`` byte tuples. Request heads and trailers arrive raw (the gate checks
them, see :mod:`proxyd.gate`); response heads from the backend codecs carry the status as an int
(0 when the codec could not read one) and lower-case names. Events are slotted, keyword-only
dataclasses, not frozen ones: nothing changes an event once it is made, but a frozen dataclass
costs twice as much to build (about 0.5 µs each, five or six per request on the hot path).
"""

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class RequestReceived:
    """A request head from a client (server-side codecs), exactly as received, not yet checked.

    ``headers`` is the whole head in order: the control data first as pseudo-header fields
    (HTTP/2 and SPDY: what the peer sent, SPDY names mapped to ``:method``, ``:scheme``,
    ``:authority``, ``:path`` and ``:version``; HTTP/1.1: ``:method`` and ``:path`` from the
    request line), then the fields with their names as received. Only
    :func:`proxyd.gate.check_request` turns it into something that may be forwarded.
    """

    stream_id: int
    headers: list = field(default_factory=list)
    end_stream: bool = False  # no body follows
    http_version: bytes = b"2"  # for Via: b"2", b"1.1", b"1.0", or b"SPDY/3.1", b"SPDY/3", b"SPDY/2"


@dataclass(slots=True, kw_only=True)
class ResponseReceived:
    """A final response head (client-side codecs)."""

    stream_id: int
    status: int
    headers: list = field(default_factory=list)
    end_stream: bool = False


@dataclass(slots=True, kw_only=True)
class InformationalResponse:
    """A 1xx response head (client-side codecs)."""

    stream_id: int
    status: int
    headers: list = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class DataReceived:
    """Body bytes. ``flow_length`` is what must later be passed to ``acknowledge``."""

    stream_id: int
    data: bytes
    flow_length: int = 0


@dataclass(slots=True, kw_only=True)
class TrailersReceived:
    """Trailing headers; the stream ends with them (a StreamEnded follows)."""

    stream_id: int
    headers: list = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class StreamEnded:
    """The peer finished sending on this stream."""

    stream_id: int


@dataclass(slots=True, kw_only=True)
class StreamReset:
    """The stream was reset (by the peer, or by the codec after a stream-level protocol error).

    ``remote`` is True when the peer sent the reset, False when the codec queued it itself.
    ``reason`` (a key of :data:`proxyd.errors.OUTCOMES`, with ``detail`` for the log) names
    what the codec refused when that is the peer's message rather than its framing (a backend's
    response head over the header list limit: ``bad_response``); empty otherwise.
    """

    stream_id: int
    error_code: int = 0
    remote: bool = True
    reason: str = ""
    detail: str = ""


@dataclass(slots=True, kw_only=True)
class StreamRefused:
    """The codec found the rest of this stream's request broken (e.g. a bad chunk in an HTTP/1.1
    body): answer it with ``reason`` (a key of :data:`proxyd.errors.OUTCOMES`) if the response
    has not started, else reset it. The codec closes the connection afterwards."""

    stream_id: int
    reason: str = "bad_framing"
    detail: str = ""


@dataclass(slots=True, kw_only=True)
class WindowUpdated:
    """More may be sent now on ``stream_id`` (0: the whole connection)."""

    stream_id: int


@dataclass(slots=True, kw_only=True)
class ConnectionTerminated:
    """The peer sent GOAWAY (or the codec failed the connection: ``remote`` False).

    Streams above ``last_stream_id`` were not processed and may be retried.
    """

    stream_id: int = 0
    error_code: int = 0
    last_stream_id: int = 0
    remote: bool = True
    reason: str = ""


@dataclass(slots=True, kw_only=True)
class SettingsChanged:
    """The peer changed settings (e.g. max concurrent streams); informational."""

    stream_id: int = 0
    max_concurrent_streams: int = 0


@dataclass(slots=True, kw_only=True)
class TunnelOpened:
    """The backend switched protocols for a request that asked for it (client-side codecs): an
    HTTP/1.1 ``101`` to a WebSocket upgrade, or a 2xx to an HTTP/2 extended CONNECT. Every byte
    after it is tunnel data (DataReceived); the connection's end is the tunnel's end."""

    stream_id: int
    status: int
    headers: list = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class H2CUpgrade:
    """An HTTP/1.1 request asked for HTTP/2 (RFC 7540 §3.2: ``Upgrade: h2c`` with one valid
    ``HTTP2-Settings``) and comes right after its RequestReceived: once it is answered with 101,
    the connection speaks HTTP/2 and that request is stream 1. ``settings`` is the decoded SETTINGS
    payload, ``rest`` the bytes the client sent after the request (its HTTP/2 preface)."""

    stream_id: int
    settings: bytes = b""
    rest: bytes = b""


def merge_data(events):
    """Adjacent DataReceived events of one stream become one (the relay's work is per event,
    and peers cut bodies into small frames: nginx sends 8 KiB; the HTTP/2 and SPDY codecs merge
    the events of one read). Order is kept; flow lengths add up."""
    merged = []
    run = []  # the pieces of merged[-1] while DATA of its stream follows
    for event in events:
        if type(event) is DataReceived and run and merged[-1].stream_id == event.stream_id:
            run.append(event.data)
            merged[-1].flow_length += event.flow_length
            continue
        if len(run) > 1:
            merged[-1].data = b"".join(run)
        run = [event.data] if type(event) is DataReceived else []
        merged.append(event)
    if len(run) > 1:
        merged[-1].data = b"".join(run)
    return merged
