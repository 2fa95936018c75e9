"""HTTP over SPDY: request/response header mapping, header validation, error-code tables, sniffing.

Strategy: pure functions between decoded name/value pairs (:mod:`.frames`) and the fields of
:mod:`proxyd.events`, so the session state machine (:mod:`.connection`) never handles header names.
Requests and trailers are passed on raw (names mapped, multi-values split): what they mean is
:mod:`proxyd.gate`'s to judge, once, for every frontend. Broken block encoding raises
:class:`~.frames.HeaderBlockError`, which the session turns into RST_STREAM PROTOCOL_ERROR; on the
client side (responses) the status and names are checked here.

Header names per version (SPDY/3.1 uses the SPDY/3 names):

=========  ==========================================  ======================
           SPDY/3                                      SPDY/2
=========  ==========================================  ======================
request    ``:method :path :scheme :host :version``    ``method url scheme host version``
response   ``:status`` ("200 OK") ``:version``         ``status version``
=========  ==========================================  ======================

Block encoding (drafts 2 and 3, "Name/Value header block"): a value holding several values joins
them with single NULs (no leading, trailing or doubled NUL). Received multi-values are split into
repeated ``(name, value)`` tuples; repeated names are NUL-joined when sending. A SPDY/2 ``url``
may be an absolute URI (the draft prefers them); the gate turns it into origin-form, its scheme
and host winning over the ``scheme`` / ``host`` headers.

Error codes: events and the codec interface use HTTP/2 numbering; :func:`rst_status_for` /
:func:`h2_code_for_rst` translate RST_STREAM status codes, :func:`goaway_status_for` /
:func:`h2_code_for_goaway` GOAWAY status codes.
"""

from http import HTTPStatus

from .frames import (
    CANCEL, FLOW_CONTROL_ERROR, FRAME_TOO_LARGE, GOAWAY_INTERNAL_ERROR, GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR, HeaderBlockError, INTERNAL_ERROR, INVALID_CREDENTIALS, INVALID_STREAM,
    PROTOCOL_ERROR, REFUSED_STREAM, STREAM_ALREADY_CLOSED, STREAM_IN_USE, UNSUPPORTED_VERSION,
)

VERSIONS = ("spdy/3.1", "spdy/3", "spdy/2")

#: ``RequestReceived.http_version`` per codec version.
HTTP_VERSIONS = {"spdy/3.1": b"SPDY/3.1", "spdy/3": b"SPDY/3", "spdy/2": b"SPDY/2"}

# Connection-specific headers SPDY forbids; dropped when sending (the bridge strips them already).
_NOT_SENT = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                       b"upgrade", b"host"))

_REQ_V2 = {b"method": 0, b"url": 1, b"scheme": 2, b"host": 3, b"version": 4}
_RESP_V3 = {b":status": 0, b":version": 1}
_RESP_V2 = {b"status": 0, b"version": 1}
_HTTP11 = b"HTTP/1.1"

# HTTP/2 error code -> SPDY RST_STREAM status.
_H2_TO_RST = {
    0x0: CANCEL,  # NO_ERROR: SPDY has no "0"; the stream is no longer needed
    0x1: PROTOCOL_ERROR,
    0x2: INTERNAL_ERROR,
    0x3: FLOW_CONTROL_ERROR,
    0x4: PROTOCOL_ERROR,  # SETTINGS_TIMEOUT
    0x5: INVALID_STREAM,  # STREAM_CLOSED: understood by SPDY/2 and 3 alike
    0x6: FRAME_TOO_LARGE,  # FRAME_SIZE_ERROR (SPDY/2: PROTOCOL_ERROR, see rst_status_for)
    0x7: REFUSED_STREAM,
    0x8: CANCEL,
    0x9: PROTOCOL_ERROR,  # COMPRESSION_ERROR
    0xA: INTERNAL_ERROR,  # CONNECT_ERROR
    0xB: PROTOCOL_ERROR,  # ENHANCE_YOUR_CALM: not REFUSED_STREAM, which invites an automatic retry
    0xC: PROTOCOL_ERROR,  # INADEQUATE_SECURITY
    0xD: PROTOCOL_ERROR,  # HTTP_1_1_REQUIRED
}

# SPDY RST_STREAM status -> HTTP/2 error code.
_RST_TO_H2 = {
    0: 0x0,  # invalid in SPDY; some senders mean "no error"
    PROTOCOL_ERROR: 0x1,
    INVALID_STREAM: 0x5,  # STREAM_CLOSED
    REFUSED_STREAM: 0x7,
    UNSUPPORTED_VERSION: 0x1,
    CANCEL: 0x8,
    INTERNAL_ERROR: 0x2,
    FLOW_CONTROL_ERROR: 0x3,
    STREAM_IN_USE: 0x1,
    STREAM_ALREADY_CLOSED: 0x5,
    INVALID_CREDENTIALS: 0xC,  # INADEQUATE_SECURITY
    FRAME_TOO_LARGE: 0x6,  # FRAME_SIZE_ERROR
}


def rst_status_for(h2_code, version):
    """SPDY RST_STREAM status for an HTTP/2 error code (``version`` 2 or 3)."""
    status = _H2_TO_RST.get(h2_code, INTERNAL_ERROR)
    if version == 2 and status > FLOW_CONTROL_ERROR:
        return PROTOCOL_ERROR  # codes 8-11 do not exist in SPDY/2
    return status


def h2_code_for_rst(status):
    """HTTP/2 error code for a received SPDY RST_STREAM status (unknown: INTERNAL_ERROR)."""
    return _RST_TO_H2.get(status, 0x2)


def goaway_status_for(h2_code):
    """SPDY/3 GOAWAY status for an HTTP/2 error code: OK, INTERNAL_ERROR, else PROTOCOL_ERROR."""
    if h2_code == 0:
        return GOAWAY_OK
    if h2_code == 0x2:
        return GOAWAY_INTERNAL_ERROR
    return GOAWAY_PROTOCOL_ERROR


def h2_code_for_goaway(status):
    """HTTP/2 error code for a received GOAWAY status (2 and the draft's 11 are INTERNAL_ERROR)."""
    if status == GOAWAY_OK:
        return 0x0
    if status == GOAWAY_PROTOCOL_ERROR:
        return 0x1
    return 0x2


def sniff_version(first_bytes, offered=None):
    """Which codec version to run for a cleartext connection, from its first (at least 4) bytes.

    A SPDY connection starts with a control frame: first byte 0x80, a 15-bit version of 2 or 3 and a
    known control type (1-10). TLS records (0x16), HTTP/1.x methods and the HTTP/2 preface never
    start with 0x80. Returns ``"spdy/2"``, ``"spdy/3"`` or None (not SPDY, too short, or not in
    ``offered`` when that list of protocol names is given).

    SPDY/3.1 frames carry version 3 and cannot be told from SPDY/3 until the peer sends a session
    WINDOW_UPDATE (stream 0). So version 3 always returns ``"spdy/3"`` when ``offered`` lists spdy/3
    *or* spdy/3.1: a ``"spdy/3"`` :class:`~.connection.SpdyConnection` switches itself to 3.1 on
    the first session WINDOW_UPDATE. Running a SPDY/3 peer as 3.1 instead would stall our sending
    after 64 KiB (its session window is never replenished), and our session WINDOW_UPDATEs would be
    frames the SPDY/3 draft does not define.
    """
    if len(first_bytes) < 4 or first_bytes[0] != 0x80:
        return None
    version = first_bytes[1]
    frame_type = (first_bytes[2] << 8) | first_bytes[3]
    if not 1 <= frame_type <= 10:
        return None
    if version == 2:
        name = "spdy/2"
        allowed = offered is None or "spdy/2" in offered
    elif version == 3:
        name = "spdy/3"
        allowed = offered is None or "spdy/3" in offered or "spdy/3.1" in offered
    else:
        return None
    return name if allowed else None


def _check_name(name):
    if not name or name.lower() != name or b"\0" in name:
        raise HeaderBlockError("invalid header name %r" % (name[:64],))


def _split_value(name, value, out):
    """Append ``(name, v)`` for each NUL-separated part of ``value``."""
    parts = value.split(b"\0")
    for part in parts:
        if not part:
            raise HeaderBlockError("empty part in NUL-separated value of %r" % (name[:64],))
        out.append((name, part))


#: SPDY request names -> the neutral pseudo-header names of RequestReceived (DESIGN §6).
_PSEUDO_V3 = {b":method": b":method", b":path": b":path", b":scheme": b":scheme",
              b":host": b":authority", b":version": b":version"}
_PSEUDO_V2 = {b"method": b":method", b"url": b":path", b"scheme": b":scheme",
              b"host": b":authority", b"version": b":version"}


def request_head(version, pairs):
    """The raw head of a SYN_STREAM for :class:`proxyd.events.RequestReceived`.

    Control data first, under the neutral pseudo-header names (``:host``/``host`` becomes
    ``:authority``, SPDY/2's ``url`` becomes ``:path``; other ``:`` names of SPDY/3 are kept as
    they are), then the fields in order. Multi-values are split at their NULs into repeated
    entries (an empty part is a framing error: :class:`HeaderBlockError`). Nothing else is judged
    here: :mod:`proxyd.gate` checks names, values, targets and lengths.
    """
    mapping = _PSEUDO_V2 if version == 2 else _PSEUDO_V3
    pseudo = []
    fields = []
    for name, value in pairs:
        mapped = mapping.get(name)
        if mapped is not None or name[:1] == b":":
            out, name = pseudo, mapped or name
        else:
            out = fields
        if b"\0" in value:
            _split_value(name, value, out)
        else:
            out.append((name, value))
    pseudo.extend(fields)
    return pseudo


def parse_response(version, pairs):
    """``(status, headers)`` from SYN_REPLY pairs; the status value may be "200" or "200 OK"."""
    special = _RESP_V2 if version == 2 else _RESP_V3
    status = None
    headers = []
    append = headers.append
    for name, value in pairs:
        index = special.get(name)
        if index is not None:
            if index == 0:
                if status is not None:
                    raise HeaderBlockError("repeated status")
                status = value
            continue
        _check_name(name)
        if name[0] == 0x3A:
            continue
        if b"\0" in value:
            _split_value(name, value, headers)
        else:
            append((name, value))
    code = status[:3] if status else b""
    if len(code) != 3 or not code.isdigit() or (len(status) > 3 and status[3] != 0x20):
        raise HeaderBlockError("response lacks a valid status")
    return int(code), headers


def parse_trailers(pairs):
    """Trailer (HEADERS frame) pairs as a raw header list, multi-values split at their NULs."""
    headers = []
    append = headers.append
    for name, value in pairs:
        if b"\0" in value:
            _split_value(name, value, headers)
        else:
            append((name, value))
    return headers


def _group(headers, version, out):
    """Append ``headers`` to ``out`` (a list of pairs) with repeated names NUL-joined.

    Names are lower-cased; connection-specific headers, ``:`` names, the version's special names
    and (SPDY/2, where zero-length values are invalid) empty values are dropped.
    """
    special = _REQ_V2 if version == 2 else None
    index = {}
    for name, value in headers:
        name = name.lower()
        if name in _NOT_SENT or not name or name[0] == 0x3A:
            continue
        if special is not None and (name in special or name == b"status" or not value):
            continue
        at = index.get(name)
        if at is None:
            index[name] = len(out)
            out.append((name, value))
        elif value:
            old = out[at][1]
            out[at] = (name, old + b"\0" + value if old else value)
    return out


_STATUS_LINES = {}


def status_line(status):
    """``b"200 OK"`` for 200; the bare code for statuses without a registered phrase."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            line = b"%d %s" % (status, HTTPStatus(status).phrase.encode("ascii"))
        except ValueError:
            line = b"%d" % status
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


def response_pairs(version, status, headers):
    """SYN_REPLY pairs: the status line, ``HTTP/1.1``, then ``headers`` grouped."""
    if version == 2:
        out = [(b"status", status_line(status)), (b"version", _HTTP11)]
    else:
        out = [(b":status", status_line(status)), (b":version", _HTTP11)]
    return _group(headers, version, out)


def request_pairs(version, method, scheme, authority, path, headers):
    """SYN_STREAM pairs for a request (client side)."""
    if version == 2:
        out = [(b"method", method), (b"url", path), (b"version", _HTTP11), (b"host", authority),
               (b"scheme", scheme)]
    else:
        out = [(b":method", method), (b":path", path), (b":version", _HTTP11),
               (b":host", authority), (b":scheme", scheme)]
    return _group(headers, version, out)


def trailer_pairs(version, headers):
    """HEADERS pairs for trailers."""
    return _group(headers, version, [])
