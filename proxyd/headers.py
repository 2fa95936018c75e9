"""Header translation between clients and backends (DESIGN §4, "Rules of translation").

Strategy: header lists are lists of ``(name, value)`` byte tuples with lower-case names and no
pseudo-headers.  Each public function makes ONE pass over the input: names are classified by a
single frozenset lookup, ordinary headers are appended as the very same tuple objects (no copies),
and the few headers that need work (Host, Cookie, X-Forwarded-*, Via, Location) are collected and
emitted once at the end.  The only case that needs a second pass is a ``Connection`` header that
nominates ordinary header names (rare: HTTP/2 clients never send one); then the pass is re-run with
those names dropped, so nominated headers never reach the policy logic (a ``Connection:
x-forwarded-for`` really removes the client's X-Forwarded-For).  Nothing here imports network code,
and one regex is compiled (RFC 7239 syntax, see below). Response heads repeat (backends send the
same head but for its Date), so their translation is remembered in a bounded memo keyed by every
input it reads (:mod:`proxyd.memo`).

Two policy switches add to the request pass without a second one: ``forwarded`` (RFC 7239) is
handled like X-Forwarded-For (the client's values kept, replaced or passed through), and
``client_cert_header`` names a header that is removed from every client's request and set only
from the connection's verified certificate; the set of special names is chosen once per call,
so the default policy costs what it always did.

Trusted names and their spellings: CGI, WSGI, PHP and most application servers read ``_`` and
``-`` in a field name as the same character (``X_Client_Subject`` becomes
``HTTP_X_CLIENT_SUBJECT``, like ``X-Client-Subject``). So every client field whose name, with
``_`` read as ``-``, is one proxyd sets or strips as trusted (:data:`TRUSTED`, and the configured
client-certificate header) is dropped, from heads and from trailers; those spellings are simply
more entries in the special set, so an ordinary field still costs one lookup. The spellings of
the framing and hop-by-hop names (``transfer_encoding``, ``content_length`` ...) are dropped the
same way: a client cannot send those names with ``-`` (the gate or this module removes them),
and Mongrel-style parsers frame the body by either spelling. Other names with ``_`` pass
(nghttpx and HAProxy forward them; nginx drops them all by default, which breaks clients and
protects nothing proxyd vouches for: a client can send any untrusted name with ``-`` as well).
The client address proxyd writes into X-Forwarded-For and Forwarded must be a
plain IP literal (a link-local peer's ``%scope`` is cut off); anything else is not written. A
client's Forwarded value that is not RFC 7239 syntax is dropped, not appended to (an open quote
would swallow proxyd's element); that check is the one regex here, run only on such values.
"""

__all__ = [
    "HOP_BY_HOP",
    "strip_hop_by_hop",
    "backend_request_headers",
    "client_response_headers",
    "forwarded_element",
    "TRUSTED",
    "spellings",
    "request_trailers",
]

import re
from functools import lru_cache
from itertools import product

from proxyd.location import rewrite_location
from proxyd.memo import Memo, fields_size

#: Connection-specific headers never forwarded in either direction (DESIGN §4), plus
#: ``http2-settings`` (the h2c upgrade header).  ``te: trailers`` may be kept toward h2 peers.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"http2-settings",
    )
)

_OWS = b" \t"
_TE_TRAILERS = (b"te", b"trailers")
_XFP_HTTPS = (b"x-forwarded-proto", b"https")
_XFP_HTTP = (b"x-forwarded-proto", b"http")
_PROXYD = b" proxyd"

#: Names proxyd sets or strips as trusted in every request (with the configured
#: ``client_cert_header``).
TRUSTED = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"))
#: Forwarding fields that proxies in front of proxyd set and applications trust (the host they
#: build links with, the client address they allow or count), which proxyd neither sets nor
#: vouches for: they pass from trusted proxies (and from everyone when ``trusted_proxies`` is
#: not configured), and a client outside ``trusted_proxies`` loses them, in any spelling
#: (:data:`UNTRUSTED_DROP`, heads and trailers).
FORWARDING = frozenset((b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-server",
                        b"x-forwarded-prefix", b"x-real-ip"))
# Spellings of a name are enumerated up to this many separators (2**8 names); a longer
# client-certificate header name is checked field by field instead.
_MAX_SEPARATORS = 8


def spellings(name):
    """Every other name that a CGI-style backend reads as ``name``: each ``-`` or ``_`` of it
    written either way (``x-a-b`` -> ``x_a-b``, ``x-a_b``, ``x_a_b``); ``name`` itself excluded."""
    parts = name.replace(b"_", b"-").split(b"-")
    out = set()
    for seps in product((b"-", b"_"), repeat=len(parts) - 1):
        spelled = parts[0]
        for sep, part in zip(seps, parts[1:]):
            spelled += sep + part
        out.add(spelled)
    out.discard(name)
    return frozenset(out)


_TRUSTED_SPELLINGS = frozenset().union(*(spellings(name) for name in TRUSTED))
#: What an untrusted client's request loses besides (:data:`FORWARDING`, every spelling): the
#: ``drop`` of :func:`backend_request_headers` for such a client.
UNTRUSTED_DROP = FORWARDING.union(*(spellings(name) for name in FORWARDING))
# Framing and hop-by-hop names with ``_`` for ``-`` (``transfer_encoding``): Mongrel-style
# parsers (Unicorn, Puma before 5.0.3) and HTTP::Parser::XS (Starman) fold both into one name
# and frame the body by it, so such a field beside proxyd's own framing would let a body carry
# a request of its own. No client sends them for any other reason: dropped, heads and trailers.
_FRAMING_SPELLINGS = frozenset().union(*(spellings(name) for name in (
    b"content-length", b"transfer-encoding", b"keep-alive", b"proxy-connection",
    b"http2-settings")))

# Names that need more than "append as is"; everything else costs one set lookup.  Spellings of
# trusted names fall through every branch of the request pass: dropped.
_REQUEST_SPECIAL = HOP_BY_HOP | {b"host", b"cookie", b"x-forwarded-for", b"x-forwarded-proto", b"via",
                                 b"forwarded"} | _TRUSTED_SPELLINGS | _FRAMING_SPELLINGS
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"via", b"location", b"content-location"}
# The characters of an IPv4 or IPv6 literal (without a scope): nothing that could end a value.
_IP_CHARS = b"0123456789abcdefABCDEF.:"
# RFC 7239 §4 (with RFC 9110's token, quoted-string and OWS around the list's commas).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = _TOKEN + rb'=(?:' + _TOKEN + rb'|"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*")'
_ELEMENT = rb"(?:" + _PAIR + rb")?(?:;(?:" + _PAIR + rb")?)*"
_FORWARDED_RE = re.compile(_ELEMENT + rb"(?:[ \t]*,[ \t]*" + _ELEMENT + rb")*")
_PROTO_HTTPS = b";proto=https"
_PROTO_HTTP = b";proto=http"


@lru_cache(maxsize=8)
def _special_with(name):
    """The request's special names plus a configured client-certificate header ``name`` and its
    spellings: ``(names, loose)``, ``loose`` the name with ``_`` read as ``-`` when it has too
    many separators to enumerate (its spellings are then found field by field), else None."""
    if name.count(b"-") + name.count(b"_") > _MAX_SEPARATORS:
        return _REQUEST_SPECIAL | {name}, name.replace(b"_", b"-")
    return _REQUEST_SPECIAL | {name} | spellings(name), None


@lru_cache(maxsize=8)
def _trusted_with(name):
    """:data:`TRUSTED` plus a client-certificate header ``name`` (or None), ``_`` read as ``-``."""
    return TRUSTED if name is None else TRUSTED | {name.replace(b"_", b"-")}


def request_trailers(trailers, cert_name, untrusted=False):
    """Request trailer fields (checked by :func:`proxyd.gate.check_trailers`) without any whose
    name, with ``_`` read as ``-``, is trusted (:data:`TRUSTED` or ``cert_name``): proxyd
    writes those in the head only, so none may come from a client's trailer section; nor any
    spelling of a framing name (``transfer_encoding``: see ``_FRAMING_SPELLINGS``); nor, from
    an ``untrusted`` client, a forwarding field (:data:`UNTRUSTED_DROP`)."""
    trusted = _trusted_with(cert_name)
    return [item for item in trailers if item[0].replace(b"_", b"-") not in trusted
            and item[0] not in _FRAMING_SPELLINGS
            and not (untrusted and item[0] in UNTRUSTED_DROP)]


def _plain_ip(client_ip):
    """``client_ip`` if it is made of IP literal characters only; a scoped IPv6 literal
    (``fe80::1%eth0``, a link-local peer) without its scope; else ``b""`` (written as unknown)."""
    if not client_ip.translate(None, _IP_CHARS):
        return client_ip
    address, percent, _ = client_ip.partition(b"%")
    if percent and b":" in address and not address.translate(None, _IP_CHARS):
        return address
    return b""


def _forwarded_ok(value):
    """True when ``value`` is RFC 7239 syntax: elements of ``token=token`` or
    ``token=quoted-string`` pairs separated by ``;``, elements separated by ``,``."""
    return _FORWARDED_RE.fullmatch(value) is not None


def forwarded_element(client_ip, tls):
    """The RFC 7239 ``Forwarded`` element proxyd adds: ``for=<client>;proto=<http|https>``.

    An IPv6 address is bracketed and quoted (``for="[2001:db8::1]"``, §6), an IPv4 address is a
    bare token; an unknown client (a Unix socket) and anything that is not a plain IP literal
    are ``for=unknown`` (§6.2), but a scoped IPv6 address loses its scope.
    """
    if client_ip and client_ip.translate(None, _IP_CHARS):
        client_ip = _plain_ip(client_ip)
    if not client_ip:
        node = b"unknown"
    elif b":" in client_ip:
        node = b'"[' + client_ip + b']"'
    else:
        node = client_ip
    return b"for=" + node + (_PROTO_HTTPS if tls else _PROTO_HTTP)



def _nominate(value, nominated):
    """Add the header names listed in one Connection header value to ``nominated``.

    Tokens are comma-separated, trimmed of optional whitespace and lower-cased; empty tokens and
    names already in :data:`HOP_BY_HOP` (always removed anyway) are skipped.  Returns the set,
    creating it only when a name is actually added.
    """
    for token in value.split(b","):
        token = token.strip(_OWS).lower()
        if token and token not in HOP_BY_HOP:
            if nominated is None:
                nominated = {token}
            else:
                nominated.add(token)
    return nominated


def _is_trailers(value):
    """True when a TE value is exactly ``trailers`` (case-insensitive, surrounding OWS ignored)."""
    return len(value) >= 8 and value.strip(_OWS).lower() == b"trailers"


def strip_hop_by_hop(headers, *, keep_te_trailers=False):
    """Return a new list without hop-by-hop headers.

    Removes every name in :data:`HOP_BY_HOP` and every header named in any ``Connection`` value
    (comma-separated, case-insensitive, whitespace-trimmed).  With ``keep_te_trailers`` (toward
    HTTP/2 peers), one ``te`` whose value is exactly ``trailers`` is kept, normalised to
    ``(b"te", b"trailers")``.  Other headers keep their order and identity.
    """
    out = []
    nominated = None
    te_kept = False
    for item in headers:
        name = item[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                nominated = _nominate(item[1], nominated)
            elif keep_te_trailers and not te_kept and name == b"te" and _is_trailers(item[1]):
                out.append(_TE_TRAILERS)
                te_kept = True
            continue
        out.append(item)
    if nominated:
        out = [item for item in out if item[0] not in nominated]
    return out


def backend_request_headers(headers, client_ip, via_version, tls, policy, keep_te_trailers=False,
                            client_subject=None, *, drop=None):
    """Build the end-to-end header list sent to a backend for one client request.

    ``headers`` are the fields of a request that passed :mod:`proxyd.gate` (Host, Content-Length
    and the framing fields are attributes of the request there; the backend writers add them).
    - any ``host`` field is dropped (the writers send the request's authority).
    - hop-by-hop and Connection-nominated headers are removed (see :func:`strip_hop_by_hop`).
    - several ``cookie`` headers become one, non-empty values joined with ``; `` in order, at the
      position of the first one.
    - ``policy.x_forwarded_for``: ``"append"`` (and any value other than ``"replace"``/``"off"``)
      emits one header ``<client values joined with ", ">, <client_ip>``; ``"replace"`` emits only
      ``client_ip``; ``"off"`` forwards the client's headers untouched.  An empty ``client_ip``
      adds nothing.
    - ``policy.x_forwarded_proto`` true: any client value is replaced by ``https`` if ``tls`` else
      ``http``; false: the client's header is forwarded.
    - ``policy.via`` true: one ``via`` header, the client's values joined with ``, `` followed by
      ``<via_version> proxyd`` (``via_version`` is the client's protocol: ``2``, ``1.1``, ``SPDY/3.1``).
    - ``policy.forwarded`` (RFC 7239), like X-Forwarded-For: ``"append"`` emits one
      ``forwarded`` header, the client's values joined with ``, `` followed by
      :func:`forwarded_element`; ``"replace"`` emits only that element; ``"off"`` forwards the
      client's headers untouched.
    - ``policy.client_cert_header`` (a name, or None): every client header of that name is
      removed; ``client_subject`` (the verified certificate subject of the connection, or None)
      is then sent in it.
    X-Forwarded-For, X-Forwarded-Proto, Via, Forwarded and the client-certificate header are
    appended last, in that order.

    ``drop`` (keyword only) is a set of names left out as if absent; the pass uses it itself to
    run again without the headers a Connection header nominates (when it nominates any). Per request the stream code
    calls this positionally (keyword parsing costs more than some of the rules).
    """
    # What only a rare header needs (replace modes) is read in its branch.
    xff_on = policy.x_forwarded_for != "off"
    xfp_on = policy.x_forwarded_proto
    via_on = policy.via
    fwd_on = policy.forwarded != "off"
    cert_name = policy.client_cert_header
    if cert_name is None:
        special = _REQUEST_SPECIAL
    else:
        special, loose = _special_with(cert_name)
        if loose is not None:  # a very long name: its spellings found field by field
            headers = [item for item in headers
                       if b"_" not in item[0] or item[0].replace(b"_", b"-") != loose]
    if client_ip and client_ip.translate(None, _IP_CHARS):
        client_ip = _plain_ip(client_ip)

    out = []
    nominated = None
    te_kept = False
    cookie_at = -1
    cookies = None
    xff = None
    vias = None
    fwds = None
    for item in headers:
        name = item[0]
        if drop is not None and name in drop:
            continue
        if name not in special:
            out.append(item)
        elif name in HOP_BY_HOP:
            if name == b"connection":
                nominated = _nominate(item[1], nominated)
            elif keep_te_trailers and not te_kept and name == b"te" and _is_trailers(item[1]):
                out.append(_TE_TRAILERS)
                te_kept = True
        elif name == b"host":
            continue
        elif name == b"cookie":
            if cookie_at < 0:
                cookie_at = len(out)
                out.append(item)
            elif cookies is None:
                cookies = [out[cookie_at][1], item[1]]
            else:
                cookies.append(item[1])
        elif name == b"x-forwarded-for":
            if not xff_on:
                out.append(item)
            elif item[1] and policy.x_forwarded_for != "replace":
                if xff is None:
                    xff = [item[1]]
                else:
                    xff.append(item[1])
        elif name == b"x-forwarded-proto":
            if not xfp_on:
                out.append(item)
        elif name == b"via":
            if not via_on:
                out.append(item)
            elif vias is None:
                vias = [item[1]]
            else:
                vias.append(item[1])
        elif name == b"forwarded":
            if not fwd_on:
                out.append(item)
            elif item[1] and policy.forwarded != "replace":
                if fwds is None:
                    fwds = [item[1]]
                else:
                    fwds.append(item[1])
        # else: the client-certificate header, which no client may send, or a spelling of a
        # trusted name (x_forwarded_for, x_client_subject ...)

    if nominated and (drop is None or not nominated <= drop):
        return backend_request_headers(headers, client_ip, via_version, tls, policy,
                                       keep_te_trailers, client_subject,
                                       drop=nominated if drop is None else drop | nominated)

    if cookies is not None:  # empty crumbs are dropped (no trailing "; ")
        out[cookie_at] = (b"cookie", b"; ".join([c for c in cookies if c]))
    if xff_on:
        if xff is None:
            if client_ip:
                out.append((b"x-forwarded-for", client_ip))
        else:
            if client_ip:
                xff.append(client_ip)
            out.append((b"x-forwarded-for", b", ".join(xff)))
    if xfp_on:
        out.append(_XFP_HTTPS if tls else _XFP_HTTP)
    if via_on:
        if vias is None:
            out.append((b"via", via_version + _PROXYD))
        else:
            vias.append(via_version + _PROXYD)
            out.append((b"via", b", ".join(vias)))
    if fwd_on:
        if fwds is not None and not all(map(_forwarded_ok, fwds)):
            fwds = None  # not RFC 7239: appending to it could hide proxyd's element
        if fwds is None:
            out.append((b"forwarded", forwarded_element(client_ip, tls)))
        else:
            fwds.append(forwarded_element(client_ip, tls))
            out.append((b"forwarded", b", ".join(fwds)))
    if client_subject is not None and cert_name is not None:
        out.append((cert_name, client_subject))
    return out


def client_response_headers(
    headers, *, via_version, policy, backend_host, scheme, authority, keep_te_trailers=False,
    backend_address=b"",
):
    """Build the header list sent to the client for one backend response.

    Hop-by-hop and Connection-nominated headers are removed (see :func:`strip_hop_by_hop`); when
    ``policy.via``, one ``via`` header carries the backend's values joined with ``, `` plus
    ``<via_version> proxyd`` (``via_version`` is the backend's protocol version), appended last;
    when ``policy.location_rewrite``, ``location`` and ``content-location`` values pointing at
    the backend (``backend_host``, the Host sent to it, or ``backend_address``, the address that
    answered) are rewritten to ``scheme://authority...`` by
    :func:`proxyd.location.rewrite_location`.  ``set-cookie`` and all other headers pass
    untouched, in order.
    """
    rewrite = policy.location_rewrite
    try:
        key = (tuple(headers), via_version, policy.via, keep_te_trailers,
               (backend_host, scheme, authority, backend_address) if rewrite else None)
        known = _translated.get(key)
    except TypeError:  # not bytes pairs: no memo (the gate refuses such heads before)
        key = known = None
    if known is not None:
        return list(known)
    out = _response(headers, via_version, policy, backend_host, scheme, authority,
                    keep_te_trailers, None, backend_address)
    if key is not None:
        # The bound covers the whole key (the request's authority and Host are the client's,
        # up to the header list limit) and the value (each rewritten Location holds the
        # authority again).
        try:
            size = max(fields_size(headers), fields_size(out))
            if rewrite:
                size += len(backend_host) + len(scheme) + len(authority) + len(backend_address)
        except TypeError:  # a value that is not bytes: translated, not remembered
            return out
        _translated.remember(key, tuple(out), size)
    return out


# Translated response heads by everything the translation reads (:mod:`proxyd.memo`): backends
# repeat their heads (only Date changes, once a second) and :func:`_response` is a pure function
# of its arguments; without Location rewriting the request's authority is not part of the key.
_translated = Memo()


def _response(headers, via_version, policy, backend_host, scheme, authority, keep_te, drop,
              backend_address):
    """One pass of :func:`client_response_headers`; ``drop`` holds Connection-nominated names."""
    via_on = policy.via
    rewrite = policy.location_rewrite
    out = []
    nominated = None
    te_kept = False
    vias = None
    for item in headers:
        name = item[0]
        if drop is not None and name in drop:
            continue
        if name not in _RESPONSE_SPECIAL:
            out.append(item)
        elif name in HOP_BY_HOP:
            if name == b"connection":
                if drop is None:
                    nominated = _nominate(item[1], nominated)
            elif keep_te and not te_kept and name == b"te" and _is_trailers(item[1]):
                out.append(_TE_TRAILERS)
                te_kept = True
        elif name == b"via":
            if not via_on:
                out.append(item)
            elif vias is None:
                vias = [item[1]]
            else:
                vias.append(item[1])
        elif rewrite:  # location, content-location
            value = item[1]
            new = rewrite_location(value, backend_host=backend_host, scheme=scheme,
                                   authority=authority, backend_address=backend_address)
            out.append(item if new is value else (name, new))
        else:
            out.append(item)

    if nominated:
        return _response(headers, via_version, policy, backend_host, scheme, authority, keep_te,
                         nominated, backend_address)
    if via_on:
        if vias is None:
            out.append((b"via", via_version + _PROXYD))
        else:
            vias.append(via_version + _PROXYD)
            out.append((b"via", b", ".join(vias)))
    return out
