"""The gate: the one place that decides what may be forwarded, for every frontend and backend.

Strategy: codecs check only their own framing and hand over heads exactly as received
(:class:`proxyd.events.RequestReceived`: control data as pseudo-header fields, then the fields).
:func:`check_request` applies the rules of RFC 9110 (semantics), RFC 9112 (HTTP/1.1), RFC 9113
§8.2-8.3 (HTTP/2) and the SPDY drafts 2 and 3 in one pass and returns a neutral
:class:`Request`, or raises :class:`proxyd.errors.Refused` naming a row of the errors table. The
same goes for request trailers (:func:`check_trailers`) and, on the way back, for response heads
and trailers from any backend (:func:`check_response`, :func:`check_response_trailers`). Nothing
here knows about sockets, and nothing a client sends can reach a backend without passing here.

The rules, per part of a request (h2 = HTTP/2 and SPDY, h1 = HTTP/1.x):

========================  ======================================================================
method                    a token (RFC 9110 §9.1); CONNECT refused except RFC 8441's extended
                          CONNECT for WebSocket (h2 connections that offered it)
target (``:path``)        origin-form: ``/`` then visible ASCII except ``#`` (RFC 9112 §3.2.1),
                          every ``%`` of the path (not the query) followed by two hex digits;
                          ``*`` only for OPTIONS; h1 absolute-form ``http(s)://authority/path``
                          becomes origin-form and its authority wins over Host (RFC 9112 §3.2.2);
                          an OPTIONS one with an empty path becomes ``*`` (§3.2.4)
authority / Host          ``host[:port]`` (RFC 3986 §3.2 without userinfo): reg-name, IPv4 or
                          ``[IPv6]``, port 1-5 digits <= 65535; h1: exactly one Host (an empty one
                          allowed), HTTP/1.0 may omit it; h2: ``:authority`` or else one Host, and
                          both must agree (RFC 9113 §8.3.1)
pseudo-header fields      h2 only ``:method :scheme :authority :path`` (SPDY also ``:version``;
                          ``:protocol`` where extended CONNECT was offered), each once, all before
                          the fields;
                          ``:method :scheme :path`` required
field names               tokens; h2 lower-case only (RFC 9113 §8.2.1)
field values              HTAB, SP, visible ASCII and obs-text; no CR, LF, NUL or other controls;
                          no leading or trailing SP/HTAB (RFC 9110 §5.5, RFC 9113 §8.2.1)
connection-specific       h2: Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding,
                          Upgrade refused (RFC 9113 §8.2.2); TE only ``trailers``
Content-Length            digits only (at most 18), every copy equal; h2 with END_STREAM on the
                          head and a non-zero length refused (the stream machine checks the body)
Transfer-Encoding (h1)    never with Content-Length; the codings must end in ``chunked``
                          (400 otherwise) and be just ``chunked`` (501 otherwise)
========================  ======================================================================

Tunnels (WebSocket, :mod:`proxyd.websocket`): an HTTP/1.1 ``GET`` without a body whose
``Upgrade`` lists ``websocket`` and whose ``Connection`` lists ``upgrade``, and an HTTP/2 extended
CONNECT with ``:protocol websocket`` (and ``:scheme``, ``:path``, ``:authority``, no END_STREAM,
no Content-Length; only on connections that advertised SETTINGS_ENABLE_CONNECT_PROTOCOL, the
``extended_connect`` argument) become a :class:`Request` whose ``upgrade`` is ``b"websocket"``;
``:protocol`` anywhere else is refused, and so is every other CONNECT. A
backend's answer that opens the tunnel passes :func:`check_switch` (a 101 that names websocket and,
when proxyd made the key, carries the right ``Sec-WebSocket-Accept``; or a 2xx from an HTTP/2
backend).

The neutral :class:`Request` keeps the fields that travel end to end in ``headers`` (lower-case
names, Connection and friends still there for HTTP/1.x clients: the translation rules in
:mod:`proxyd.headers` remove them); Host, Content-Length, Transfer-Encoding, TE and Expect become
attributes.

Accepted heads are remembered (bounded memos keyed by the exact fields and flags): a head seen
again is answered with the same result without the scans, since each check is a pure function of
its input. Refusals are always worked out afresh.
"""

from proxyd.errors import Refused
from proxyd.memo import Memo, fields_size
from proxyd.websocket import WEBSOCKET, has_token

__all__ = [
    "Request", "check_request", "check_trailers", "check_response", "check_response_trailers",
    "valid_authority", "H2", "SPDY", "HTTP1", "check_switch",
]

# Frontend families: which rule set applies.
H2, SPDY, HTTP1 = "h2", "spdy", "http/1"

_DIGITS = b"0123456789"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ALPHA_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_ALPHA = _ALPHA_LOWER + _ALPHA_LOWER.upper()
_TCHAR_LOWER = b"!#$%&'*+-.^_`|~" + _DIGITS + _ALPHA_LOWER
_TCHAR = _TCHAR_LOWER + _ALPHA_LOWER.upper()
# Deletion sets for bytes.translate: what is left over is what is invalid.
_VALUE_OK = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_TARGET_OK = bytes(range(0x21, 0x7F)).replace(b"#", b"")
_AUTHORITY_OK = _ALPHA + _DIGITS + b"-._~!$&'()*+,;=%:[]"
_IPV6_OK = b"0123456789abcdefABCDEF:."
_SCHEME_OK = _ALPHA + _DIGITS + b"+-."
_WS = (0x20, 0x09)
_MAX_LENGTH_DIGITS = 18

# HTTP/2 and SPDY: fields that are never forwarded as they are.
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_H2_SPECIAL = _CONNECTION_SPECIFIC | {b"content-length", b"host", b"te", b"expect"}
_H1_SPECIAL = frozenset((b"content-length", b"host", b"te", b"expect", b"transfer-encoding",
                         b"upgrade"))
# Pseudo-header fields of a request; SPDY heads also carry :version (the codec maps the names),
# extended CONNECT (RFC 8441 §4) :protocol.
_PSEUDO = {b":method": 0, b":scheme": 1, b":authority": 2, b":path": 3, b":version": 4}
_PSEUDO_X = {**_PSEUDO, b":protocol": 5}
# Fields that must not appear in trailers (RFC 9110 §6.5.1: framing, routing, control); dropped.
_NOT_IN_TRAILERS = _CONNECTION_SPECIFIC | {b"content-length", b"host", b"te", b"trailer",
                                           b"expect"}
# Names seen before, known to be valid tokens (a small cache: most requests repeat them).
_GOOD_NAMES = set()
_GOOD_NAMES_MAX = 512


class Request:
    """A request that passed the gate: what every backend codec builds its wire form from.

    ``authority`` is a valid ``host[:port]`` or ``b""`` (an HTTP/1.0 request without Host);
    ``path`` is origin-form or ``*``; ``headers`` are the end-to-end candidates with lower-case
    names; ``content_length`` is the declared length or None; ``end_stream`` says no body
    follows; ``te_trailers`` that the client accepts trailers; ``expect_continue`` that it
    waits for ``100 Continue`` before sending its body; ``upgrade`` is the protocol a tunnel
    request asks for (``b"websocket"``: an HTTP/1.1 upgrade GET, or an RFC 8441 extended CONNECT
    whose ``method`` stays CONNECT), None for every other request.
    """

    __slots__ = ("stream_id", "method", "scheme", "authority", "path", "headers",
                 "content_length", "end_stream", "http_version", "te_trailers",
                 "expect_continue", "upgrade")

    def __init__(self, stream_id, method, scheme, authority, path, headers, content_length,
                 end_stream, http_version, te_trailers=False, expect_continue=False,
                 upgrade=None):
        self.stream_id = stream_id
        self.method = method
        self.scheme = scheme
        self.authority = authority
        self.path = path
        self.headers = headers
        self.content_length = content_length
        self.end_stream = end_stream
        self.http_version = http_version
        self.te_trailers = te_trailers
        self.expect_continue = expect_continue
        self.upgrade = upgrade

    def __repr__(self):
        return (f"Request({self.method!r} {self.scheme!r}://{self.authority!r}{self.path!r}, "
                f"{len(self.headers)} fields, length={self.content_length})")


# -- small checks ------------------------------------------------------------------------------

def _name_ok(name, lower_only):
    if name in _GOOD_NAMES:
        return True
    if not name or name.translate(None, _TCHAR_LOWER if lower_only else _TCHAR):
        return False
    if lower_only and len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return True


def _value_ok(value):
    return not value or (value[0] not in _WS and value[-1] not in _WS
                         and not value.translate(None, _VALUE_OK))


_VALUE_OK_NUL = _VALUE_OK + b"\x00"


def _values_ok(values):
    """True when every value is valid (as :func:`_value_ok`), in a few scans of one joined string.

    NUL separates the values: it is forbidden inside one, so exactly ``len - 1`` of them must be
    found; a SP or HTAB beside a separator (or at the very ends) is whitespace at a value's edge.
    """
    if not values:
        return True
    joined = b"\x00".join(values)
    if joined.count(b"\x00") != len(values) - 1 or joined.translate(None, _VALUE_OK_NUL):
        return False
    if joined[:1] in (b" ", b"\t") or joined[-1:] in (b" ", b"\t"):
        return False
    return not (b" \x00" in joined or b"\x00 " in joined or b"\t\x00" in joined
                or b"\x00\t" in joined)


def _bad_value(pairs):
    """The name of the first field whose value is invalid (the slow path, for the log)."""
    for name, value in pairs:
        if not _value_ok(value):
            return name[:40].decode("latin-1")
    return "?"


def valid_authority(authority):
    """True when ``authority`` is ``host[:port]``: a reg-name, IPv4 or ``[IPv6]`` host (RFC 3986
    §3.2.2, no userinfo, not empty) and an optional port of 1-5 digits up to 65535."""
    if not authority or authority.translate(None, _AUTHORITY_OK):
        return False
    if authority[0] == 0x5B:  # [IPv6]
        end = authority.find(b"]")
        if end < 3 or authority[1:end].translate(None, _IPV6_OK):
            return False
        rest = authority[end + 1:]
    else:
        if b"[" in authority or b"]" in authority:
            return False
        colon = authority.find(b":")
        if colon < 0:
            return True
        if colon == 0:
            return False
        rest = authority[colon:]
    if not rest:
        return True
    port = rest[1:]
    return (rest[0] == 0x3A and 0 < len(port) <= 5 and not port.translate(None, _DIGITS)
            and int(port) <= 65535)


def _content_length(values):
    """The one length of ``values`` (every copy digits only, all equal), or raise."""
    length = None
    for value in values:
        if not value or len(value) > _MAX_LENGTH_DIGITS or value.translate(None, _DIGITS):
            raise Refused("bad_content_length", repr(value[:40]))
        n = int(value)
        if length is not None and n != length:
            raise Refused("bad_content_length", "copies differ")
        length = n
    return length


def _escapes_ok(path):
    """True when every ``%`` of the path part (before ``?``) starts ``%XX``, two hex digits
    (RFC 3986 §2.1). A stray one is refused as nginx and Apache do: routing decodes unreserved
    escapes, and ``%2%65`` would become ``%2e``, an escape the backend decodes once more."""
    end = path.find(b"?")
    if end < 0:
        end = len(path)
    i = path.find(b"%", 0, end)
    while i >= 0:
        if i + 2 >= end or path[i + 1] not in _HEX or path[i + 2] not in _HEX:
            return False
        i = path.find(b"%", i + 3, end)
    return True


def _check_target(method, path):
    if path[:1] == b"/":
        if path.translate(None, _TARGET_OK) or (0x25 in path and not _escapes_ok(path)):
            raise Refused("bad_target", repr(path[:80]))
    elif path != b"*" or method != b"OPTIONS":
        raise Refused("bad_target", repr(path[:80]))


def _check_method(method):
    if not method or method.translate(None, _TCHAR):
        raise Refused("bad_method", repr(method[:40]))
    if method == b"CONNECT":
        raise Refused("connect")


def _has_trailers_token(value):
    return any(token.strip(b" \t").lower().split(b";", 1)[0].strip() == b"trailers"
               for token in value.split(b","))


# -- requests ----------------------------------------------------------------------------------

def check_request(event, family, scheme=b"http", extended_connect=False):
    """Check a raw :class:`proxyd.events.RequestReceived` of a ``family`` frontend.

    ``family`` is :data:`H2`, :data:`SPDY` or :data:`HTTP1`; ``scheme`` is the listener's
    (``b"https"`` on TLS), used for HTTP/1.x requests in origin-form; ``extended_connect`` says
    that the HTTP/2 connection advertised SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441), so
    ``:protocol`` is allowed. Returns a :class:`Request` or raises
    :class:`proxyd.errors.Refused`.
    """
    if family == HTTP1:
        return _check_http1(event, scheme)
    spdy = family == SPDY
    extended = extended_connect and not spdy
    try:
        key = (tuple(event.headers), spdy, extended, event.end_stream)
        known = _accepted_requests.get(key)
    except TypeError:  # a field that is not a pair of bytes: no memo, the check says why
        key = known = None
    if known is not None:
        return Request(event.stream_id, known[0], known[1], known[2], known[3], list(known[4]),
                       known[5], event.end_stream, event.http_version, known[6], known[7],
                       known[8])
    request = _check_h2(event, spdy, _PSEUDO_X if extended else _PSEUDO)
    if key is not None:
        _accepted_requests.remember(key, (
            request.method, request.scheme, request.authority, request.path,
            tuple(request.headers), request.content_length, request.te_trailers,
            request.expect_continue, request.upgrade), fields_size(key[0]))
    return request


# Memos of accepted heads (:mod:`proxyd.memo`): each check is a pure function of the fields and
# the flags, so a head accepted before is accepted again with the same result. Only accepted
# heads are kept (a refusal is worked out again, with its reason); entries are immutable
# (tuples) and every hit gets lists of its own.
_accepted_requests = Memo()
_accepted_responses = Memo()


def _check_h2(event, spdy, pseudo_names=_PSEUDO):
    pseudo = [None, None, None, None, None, None]
    headers = []
    append = headers.append
    hosts = None
    lengths = None
    te_trailers = expect = False
    regular = False
    values = []
    for item in event.headers:
        name, value = item
        if name[:1] == b":":
            index = pseudo_names.get(name)
            if regular or index is None or (index == 4 and not spdy):
                raise Refused("bad_pseudo", repr(name[:40]))
            if pseudo[index] is not None:
                raise Refused("bad_pseudo", f"{name.decode('latin-1')} repeated")
            pseudo[index] = value
            continue
        regular = True
        if not _name_ok(name, True):
            raise Refused("bad_name", repr(name[:40]))
        values.append(value)
        if name not in _H2_SPECIAL:
            append(item)
        elif name in _CONNECTION_SPECIFIC:
            raise Refused("connection_specific", name.decode("latin-1"))
        elif name == b"content-length":
            lengths = [value] if lengths is None else lengths + [value]
        elif name == b"host":
            hosts = [value] if hosts is None else hosts + [value]
        elif name == b"te":
            if value.lower() != b"trailers":
                raise Refused("bad_te", repr(value[:40]))
            te_trailers = True
        else:  # expect
            if value.lower() == b"100-continue":
                expect = True
    if not _values_ok(values):
        raise Refused("bad_value", "value of " + _bad_value(event.headers))
    method, scheme, authority, path = pseudo[0], pseudo[1], pseudo[2], pseudo[3]
    if method is None or scheme is None or path is None:
        raise Refused("missing_pseudo", "need :method, :scheme and :path")
    try:
        _check_method(method)
    except Refused:
        if method != b"CONNECT" or pseudo[5] is None:
            raise
        return _extended_connect(event, pseudo, hosts, lengths, headers)
    if pseudo[5] is not None:
        raise Refused("bad_connect", ":protocol without CONNECT")
    if not scheme or scheme.translate(None, _SCHEME_OK) or scheme[0] not in _ALPHA:
        raise Refused("bad_scheme", repr(scheme[:40]))
    if spdy and path[:1] != b"/" and path != b"*":
        # SPDY/2 drafts allow an absolute URL: its authority wins, as in RFC 9112 §3.2.2.
        scheme, authority, path = _absolute_form(path, method)
        hosts = None
    _check_target(method, path)
    if hosts is not None:
        if len(hosts) > 1:
            raise Refused("two_hosts")
        if authority is None:
            authority = hosts[0]
        elif hosts[0].lower() != authority.lower():
            raise Refused("authority_mismatch")
    if authority is None:
        raise Refused("missing_authority")
    if not valid_authority(authority):
        raise Refused("bad_authority", repr(authority[:80]))
    length = None if lengths is None else _content_length(lengths)
    if event.end_stream and length:
        raise Refused("length_mismatch", "END_STREAM on a head that declares a body")
    return Request(event.stream_id, method, scheme.lower(), authority, path, headers, length,
                   event.end_stream, event.http_version, te_trailers, expect)


def _extended_connect(event, pseudo, hosts, lengths, headers):
    """RFC 8441 §4: an extended CONNECT for WebSocket (the stream carries its bytes)."""
    scheme, authority, path, protocol = pseudo[1], pseudo[2], pseudo[3], pseudo[5]
    if protocol != WEBSOCKET:
        raise Refused("bad_protocol", repr(protocol[:40]))
    if scheme not in (b"http", b"https"):
        raise Refused("bad_scheme", repr(scheme[:40]))
    _check_target(b"GET", path)
    if hosts is not None:
        raise Refused("bad_connect", "Host beside :authority")
    if not authority or not valid_authority(authority):
        raise Refused("missing_authority" if not authority else "bad_authority")
    if event.end_stream:
        raise Refused("bad_connect", "END_STREAM on the head")
    if lengths is not None:
        raise Refused("bad_connect", "Content-Length on a tunnel")
    return Request(event.stream_id, b"CONNECT", scheme, authority, path, headers, None,
                   False, event.http_version, upgrade=WEBSOCKET)


def _check_http1(event, listener_scheme):
    raw = event.headers
    if len(raw) < 2 or raw[0][0] != b":method" or raw[1][0] != b":path":
        raise Refused("bad_framing", "request line missing")
    method, target = raw[0][1], raw[1][1]
    _check_method(method)
    scheme = listener_scheme
    target_authority = None
    if target[:1] != b"/" and target != b"*":
        scheme, target_authority, target = _absolute_form(target, method)
    _check_target(method, target)
    headers = []
    append = headers.append
    hosts = []
    lengths = None
    codings = None
    upgrade = None
    te_trailers = expect = False
    values = []
    for index in range(2, len(raw)):
        name, value = raw[index]
        name = name.lower()
        if not _name_ok(name, False):
            raise Refused("bad_name", repr(name[:40]))
        values.append(value)
        if name not in _H1_SPECIAL:
            append((name, value))
        elif name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths = [value] if lengths is None else lengths + [value]
        elif name == b"transfer-encoding":
            codings = value if codings is None else codings + b"," + value
        elif name == b"te":
            te_trailers = te_trailers or _has_trailers_token(value)
        elif name == b"upgrade":
            upgrade = value if upgrade is None else upgrade + b"," + value
            append((name, value))
        else:  # expect
            if value.lower() == b"100-continue":
                expect = True
    if not _values_ok(values):
        raise Refused("bad_value", "value of " + _bad_value(raw[2:]))
    if len(hosts) > 1:
        raise Refused("two_hosts")
    if target_authority is not None:
        authority = target_authority  # RFC 9112 §3.2.2: the target's authority wins
    elif hosts:
        authority = hosts[0]
        if authority and not valid_authority(authority):
            raise Refused("bad_authority", repr(authority[:80]))
    elif event.http_version == b"1.0":
        authority = b""
    else:
        raise Refused("missing_authority", "HTTP/1.1 request without Host")
    length = None
    if codings is not None:
        if lengths is not None:
            raise Refused("bad_framing", "both Content-Length and Transfer-Encoding")
        parts = [c.strip(b" \t").lower() for c in codings.split(b",")]
        if parts[-1] != b"chunked":
            raise Refused("bad_transfer_encoding", repr(codings[:40]))
        if len(parts) > 1:
            raise Refused("unsupported_coding", repr(codings[:40]))
    elif lengths is not None:
        length = _content_length(lengths)
    if upgrade is not None and _websocket_upgrade(method, upgrade, event, headers, length):
        return Request(event.stream_id, method, scheme, authority, target, headers, None,
                       True, event.http_version, upgrade=WEBSOCKET)
    return Request(event.stream_id, method, scheme, authority, target, headers, length,
                   event.end_stream, event.http_version, te_trailers, expect)


def _websocket_upgrade(method, upgrade, event, headers, length):
    """RFC 6455 §4.1: a bodiless HTTP/1.1 GET whose Upgrade lists websocket and whose Connection
    lists upgrade. Anything else with Upgrade is a plain request (the header is hop-by-hop)."""
    if method != b"GET" or not event.end_stream or length or event.http_version != b"1.1":
        return False
    if not has_token(upgrade, WEBSOCKET):
        return False
    return any(name == b"connection" and has_token(value, b"upgrade") for name, value in headers)


def _absolute_form(target, method):
    """``(scheme, authority, origin-form path)`` of an ``http``/``https`` absolute-form target
    (an empty path is ``/``, or ``*`` for OPTIONS without a query: RFC 9112 §3.2.4)."""
    sep = target.find(b"://")
    scheme = target[:sep].lower() if sep > 0 else b""
    if scheme not in (b"http", b"https"):
        raise Refused("bad_target", repr(target[:80]))
    rest = target[sep + 3:]
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not valid_authority(authority):
        raise Refused("bad_authority", repr(authority[:80]))
    if not path:
        path = b"*" if method == b"OPTIONS" else b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return scheme, authority, path


def check_trailers(headers, family):
    """Check request trailers; return the list to forward (framing and routing fields dropped).

    Names must be tokens (lower-case for HTTP/2 and SPDY), values as in a head, no pseudo-header
    fields (RFC 9113 §8.1); HTTP/2 and SPDY connection-specific fields are refused.
    """
    out = []
    lower_only = family != HTTP1
    for name, value in headers:
        if not lower_only:
            name = name.lower()
        if name[:1] == b":" or not _name_ok(name, lower_only):
            raise Refused("bad_trailer", repr(name[:40]))
        if not _value_ok(value):
            raise Refused("bad_trailer", f"value of {name[:40].decode('latin-1')}")
        if name in _NOT_IN_TRAILERS:
            if lower_only and name in _CONNECTION_SPECIFIC:
                raise Refused("bad_trailer", name.decode("latin-1"))
            continue
        out.append((name, value))
    return out


# -- responses ---------------------------------------------------------------------------------

def check_response(status, headers):
    """Check a backend's final response head (any backend protocol).

    Returns ``(fields, length)``: the fields to use and the declared body length (None when
    there is none, or no body follows).

    ``status`` must be 200-599 (1xx heads go through :func:`check_informational`); names tokens,
    values as in requests, no pseudo-header fields; every Content-Length copy digits only and
    equal. No Transfer-Encoding: the HTTP/1.1 codec consumes it (with the Content-Length it
    overrides, RFC 9112 §6.3), so one here came from HTTP/2, where it makes the response
    malformed (RFC 9113 §8.2.2) and must not switch off the length check. Content-Length is
    checked, then dropped, on 204 and 304, which have no body (RFC 9110 §8.6: none in a 204; in
    a 304 it would describe a body that does not follow, and HTTP/2 clients such as the h2
    library hold it against the 0 bytes that do; 1xx lose it in :func:`check_informational`).
    Raises ``Refused("bad_response")``.
    """
    try:
        key = (status, tuple(headers))
        known = _accepted_responses.get(key)
    except TypeError:  # a field that is not a pair of bytes: no memo, the check says why
        key = known = None
    if known is not None:
        return list(known[0]), known[1]
    fields, length = _check_response(status, headers)
    if key is not None:
        _accepted_responses.remember(key, (tuple(fields), length), fields_size(key[1]))
    return fields, length


def _check_response(status, headers):
    if not 200 <= status <= 599:
        raise Refused("bad_response", f"status {status}")
    out = []
    lengths = None
    if not _values_ok([value for _, value in headers]):
        raise Refused("bad_response", "value of " + _bad_value(headers))
    for item in headers:
        name, value = item
        if not _name_ok(name, True):
            raise Refused("bad_response", f"field name {name[:40]!r}")
        if name == b"content-length":
            lengths = [value] if lengths is None else lengths + [value]
            continue
        if name == b"transfer-encoding":  # the HTTP/1.1 codec consumed its own
            raise Refused("bad_response", "transfer-encoding (RFC 9113 §8.2.2)")
        out.append(item)
    if lengths is None:
        return out, None
    if len(lengths) == 1 and lengths[0].isdigit() and len(lengths[0]) <= _MAX_LENGTH_DIGITS:
        length = int(lengths[0])
    else:
        try:
            length = _content_length(v.strip(b" \t") for value in lengths
                                     for v in value.split(b","))
        except Refused:
            raise Refused("bad_response", "invalid Content-Length") from None
    if status in (204, 304):  # no body follows: h2 clients would check the length against 0
        return out, None
    out.append((b"content-length", b"%d" % length))
    return out, length


def check_informational(status, headers):
    """Check a 1xx head (101 is refused here: it opens a tunnel, :func:`check_switch`); return
    its fields."""
    if not 100 <= status <= 199 or status == 101:
        raise Refused("bad_response", f"informational status {status}")
    return check_response_trailers(headers)


def check_response_trailers(headers):
    """Check response trailers; fields that must not be trailers are dropped."""
    out = []
    for item in headers:
        name, value = item
        if not _name_ok(name, True) or not _value_ok(value):
            raise Refused("bad_response", f"trailer {name[:40]!r}")
        if name not in _NOT_IN_TRAILERS:
            out.append(item)
    return out


def check_switch(status, headers, accept=None, connect=False):
    """Check the head that opens a WebSocket tunnel; return its fields (hop-by-hop ones still in).

    From an HTTP/1.1 backend (``connect`` False): status 101, ``Upgrade`` lists websocket,
    ``Connection`` lists upgrade and, when proxyd made the ``Sec-WebSocket-Key`` (``accept`` is
    the value it expects), ``Sec-WebSocket-Accept`` equals ``accept`` (RFC 6455 §4.1). From an
    HTTP/2 backend answering an extended CONNECT (``connect`` True): a 2xx (RFC 8441 §5). Names
    and values as in any response. Raises ``Refused("bad_upgrade")`` or ``Refused("bad_response")``.
    """
    for name, value in headers:
        if not _name_ok(name, True) or not _value_ok(value):
            raise Refused("bad_response", f"field {name[:40]!r}")
    fields = list(headers)
    if connect:
        if not 200 <= status <= 299:
            raise Refused("bad_upgrade", f"status {status} to an extended CONNECT")
        return fields
    if status != 101:
        raise Refused("bad_upgrade", f"status {status}")
    upgrade = connection = None
    accepts = []
    for name, value in fields:
        if name == b"upgrade":
            upgrade = value if upgrade is None else upgrade + b"," + value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif name == b"sec-websocket-accept":
            accepts.append(value)
    if upgrade is None or not has_token(upgrade, WEBSOCKET):
        raise Refused("bad_upgrade", "101 without Upgrade: websocket")
    if connection is None or not has_token(connection, b"upgrade"):
        raise Refused("bad_upgrade", "101 without Connection: upgrade")
    if accept is not None and accepts != [accept]:
        raise Refused("bad_upgrade", "Sec-WebSocket-Accept does not match our key")
    return fields
