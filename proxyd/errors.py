"""Error types of proxyd and the one table that maps every refusal and failure to what peers see.

Strategy: a refusal or failure is a *reason* (a short key such as ``"bad_target"``); the table
:data:`OUTCOMES` gives each reason its HTTP status (for answers that can still carry a status),
its HTTP/2 reset code (for streams whose response already started, or for HTTP/2 and SPDY
requests refused before any backend saw them) and the phrase the log and the error body use.
Nothing else in proxyd writes status literals for its own answers: the gate raises
:class:`Refused`, the stream machine fails with a reason, the codecs answer framing errors with
:func:`outcome`. The network layer never decides policy itself.

Reset codes use HTTP/2 numbering (the SPDY codec maps them, see :mod:`proxyd.codec.spdy`).
"""

from dataclasses import dataclass

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8
CONNECT_ERROR = 0xA  # RFC 9113 §8.5: the TCP connection of a CONNECT (tunnel) failed
ENHANCE_YOUR_CALM = 0xB


class ProxydError(Exception):
    """Base class of every error raised by proxyd code."""


class ConfigError(ProxydError):
    """A configuration problem; ``path`` names the key, e.g. ``listen[0].tls.cert``."""

    def __init__(self, message, path=""):
        self.message = message
        self.path = path
        text = f"{path}: {message}" if path else message
        super().__init__(text if text.isprintable() else _one_line(text))


def _one_line(text):
    """``text`` with line breaks and other control characters escaped (``\\n``), so that a key
    or file name from the configuration cannot split one problem into several lines."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class Refused(ProxydError):
    """A message that must not be forwarded: ``reason`` is a key of :data:`OUTCOMES`.

    Raised by the gate (requests and responses), by the HTTP/1.1 writers (defence in depth) and
    by the stream machine's checks; ``detail`` says what exactly was wrong, for the log.
    """

    def __init__(self, reason, detail=""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of the table: what a reason looks like to the client and in the log."""

    reason: str
    status: int
    reset_code: int
    phrase: str


def _rows(*rows):
    return {row[0]: Outcome(*row) for row in rows}


#: reason -> Outcome. Request refusals (the gate and the codecs' framing checks) answer 4xx/5xx on
#: HTTP/1.1 (and close the connection) and RST_STREAM PROTOCOL_ERROR on HTTP/2 and SPDY.
OUTCOMES = _rows(
    # -- requests refused before any backend saw them (RFC 9110, 9112, 9113 §8, SPDY drafts)
    ("bad_method", 400, PROTOCOL_ERROR, "invalid method"),
    ("connect", 405, PROTOCOL_ERROR, "CONNECT is not supported"),
    # RFC 8441: the one CONNECT accepted is an HTTP/2 extended CONNECT for WebSocket
    ("bad_protocol", 400, PROTOCOL_ERROR, ":protocol other than websocket, or not offered"),
    ("bad_connect", 400, PROTOCOL_ERROR, "malformed extended CONNECT"),
    ("bad_target", 400, PROTOCOL_ERROR, "invalid request target"),
    ("bad_scheme", 400, PROTOCOL_ERROR, "invalid scheme"),
    ("bad_authority", 400, PROTOCOL_ERROR, "invalid authority"),
    ("missing_authority", 400, PROTOCOL_ERROR, "no authority and no Host"),
    ("authority_mismatch", 400, PROTOCOL_ERROR, ":authority and Host differ"),
    ("two_hosts", 400, PROTOCOL_ERROR, "more than one Host"),
    ("bad_pseudo", 400, PROTOCOL_ERROR, "invalid pseudo-header"),
    ("missing_pseudo", 400, PROTOCOL_ERROR, "missing pseudo-header"),
    ("bad_name", 400, PROTOCOL_ERROR, "invalid field name"),
    ("bad_value", 400, PROTOCOL_ERROR, "invalid field value"),
    ("connection_specific", 400, PROTOCOL_ERROR, "connection-specific field"),
    ("bad_te", 400, PROTOCOL_ERROR, "TE other than trailers"),
    ("bad_content_length", 400, PROTOCOL_ERROR, "invalid Content-Length"),
    ("length_mismatch", 400, PROTOCOL_ERROR, "body length differs from Content-Length"),
    ("bad_transfer_encoding", 400, PROTOCOL_ERROR, "invalid Transfer-Encoding"),
    ("unsupported_coding", 501, PROTOCOL_ERROR, "transfer coding not implemented"),
    ("bad_framing", 400, PROTOCOL_ERROR, "malformed HTTP/1.1 message"),
    ("bad_trailer", 400, PROTOCOL_ERROR, "invalid trailer"),
    ("head_too_large", 431, PROTOCOL_ERROR, "request head too large"),
    ("unsafe_request", 400, PROTOCOL_ERROR, "request refused by the HTTP/1.1 writer"),
    # -- limits
    ("rate_limited", 429, ENHANCE_YOUR_CALM, "too many requests"),
    ("body_too_large", 413, ENHANCE_YOUR_CALM, "request body too large"),
    ("draining", 503, REFUSED_STREAM, "shutting down"),
    # -- routes and backend groups (issue 12)
    ("no_route", 404, CANCEL, "no route for this host and path"),
    ("no_healthy_backend", 503, REFUSED_STREAM, "no healthy backend"),
    # -- backends
    ("backend_unreachable", 502, INTERNAL_ERROR, "backend unreachable"),
    ("backend_busy", 503, INTERNAL_ERROR, "backend busy"),
    ("backend_timeout", 504, INTERNAL_ERROR, "backend timeout"),
    ("backend_failed", 502, INTERNAL_ERROR, "backend connection failed"),
    ("bad_response", 502, INTERNAL_ERROR, "invalid response from backend"),
    ("unsafe_response", 502, INTERNAL_ERROR, "response refused by the writer"),
    ("bad_upgrade", 502, INTERNAL_ERROR, "backend did not switch to WebSocket as asked"),
    ("head_over_backend_limit", 431, INTERNAL_ERROR,
     "request head over the backend's SETTINGS_MAX_HEADER_LIST_SIZE"),
    # -- tunnels (WebSocket after the backend's 101)
    ("tunnel_idle", 504, CANCEL, "tunnel idle"),
    ("tunnel_failed", 502, CONNECT_ERROR, "backend connection of the tunnel failed"),
    # -- the client side
    ("client_stalled", 504, CANCEL, "client stalled"),
    ("client_gone", 499, CANCEL, "client closed the stream"),
    ("internal_error", 500, INTERNAL_ERROR, "internal error"),
)

#: Reason phrases of the statuses proxyd itself produces (for HTTP/1.1 status lines).
REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def outcome(reason):
    """The :class:`Outcome` row of ``reason`` (``internal_error`` for an unknown key)."""
    return OUTCOMES.get(reason) or OUTCOMES["internal_error"]


def error_response(reason, extra_headers=()):
    """A short text answer for ``reason``: ``(status, headers, body)``.

    The body names the status and the table's phrase; ``extra_headers`` (e.g. Retry-After) are
    appended to the head. CONNECT refusals advertise the methods a reverse proxy allows.
    """
    row = outcome(reason)
    body = b"%s: %s\n" % (REASONS.get(row.status, b"Error"), row.phrase.encode())
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
    if row.status == 405:
        headers.append((b"allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"))
    headers.extend(extra_headers)
    return row.status, headers, body
