"""Location / Content-Location rewriting (DESIGN §4, "Responses").

Strategy: a backend that redirects to itself (``Location: http://app.internal:8081/login``) must not
leak its address; the client should see its own scheme and ``:authority`` instead.  Only absolute
``http``/``https`` URIs that point at the backend are touched, which is either of (DESIGN §4):

* nghttpx's rule: the host equals the host of the Host header sent to the backend (compared
  case-insensitively, ports ignored on both sides);
* nginx's ``proxy_redirect default``: host and port equal the address of the backend that
  answered (``http://127.0.0.1:9300/x`` from the backend at ``127.0.0.1:9300``; a missing port
  is the scheme's default, 80 or 443).

Userinfo is ignored, IPv6 literals are compared with their brackets.  Everything else (relative and scheme-relative references, other hosts, other
schemes, malformed input) comes back as the very same object, so callers can test ``new is value``.
The parse is a handful of ``bytes.find`` calls: no regex, no urllib, and it never raises on bytes.
"""

__all__ = ["rewrite_location"]

_H = (b"h", b"H")
_ENDS_AUTHORITY = b"/?#"


def _host_key(hostport, bare_ipv6):
    """Lower-cased host of a ``[userinfo@]host[:port]`` authority, or None if it is malformed.

    IPv6 literals keep their brackets (``[::1]``).  With ``bare_ipv6`` (for configured backend
    addresses, never for URIs), a host with several colons and no brackets is taken as an IPv6
    literal and bracketed.
    """
    at = hostport.rfind(b"@")
    if at >= 0:
        hostport = hostport[at + 1 :]
    if hostport[:1] == b"[":
        close = hostport.find(b"]")
        if close < 2:
            return None
        rest = hostport[close + 1 :]
        if rest and (rest[:1] != b":" or not (len(rest) == 1 or rest[1:].isdigit())):
            return None
        return hostport[: close + 1].lower()
    colons = hostport.count(b":")
    if colons == 0:
        host = hostport
    elif colons == 1:
        host, _, port = hostport.partition(b":")
        if port and not port.isdigit():
            return None
    elif bare_ipv6:
        return b"[" + hostport.lower() + b"]"
    else:
        return None
    if not host:
        return None
    return host.lower()


def _host_port(hostport, default_port):
    """``(host key, port)`` of an authority or backend address, or None when malformed."""
    host = _host_key(hostport, False)
    if host is None:
        return None
    at = hostport.rfind(b"@")
    tail = hostport[at + 1:] if at >= 0 else hostport
    if tail[:1] == b"[":
        tail = tail[tail.find(b"]") + 1:]
    port = tail.partition(b":")[2]
    return host, int(port) if port else default_port


def rewrite_location(value, *, backend_host, scheme, authority, backend_address=b""):
    """Rewrite an absolute URI pointing at the backend to ``scheme://authority<rest>``.

    ``value`` is rewritten when it starts with ``http://`` or ``https://`` (any case) and its host
    equals the host of ``backend_host`` (the Host sent to the backend, which may carry a port or be
    an IPv6 literal), or its host and port equal ``backend_address`` (``host:port`` or
    ``[v6]:port`` of the backend that answered; empty: not used): the result is ``scheme + b"://" + authority`` followed by the original path,
    query and fragment exactly as they were (``http://app:8081`` becomes ``https://example.com``,
    ``http://app/x?y#z`` becomes ``https://example.com/x?y#z``); without an ``authority`` (an
    HTTP/1.0 client that sent no Host) it becomes the path-absolute reference ``/x?y#z``, so the
    backend's address never reaches the client.  Otherwise ``value`` itself is returned:
    relative and scheme-relative (``//host/x``) references, other hosts, other schemes,
    malformed authorities, or an empty ``scheme``.  Never raises on bytes input.
    """
    if not value.startswith(_H) or not scheme:
        return value
    head = value[:8].lower()
    if head.startswith(b"http://"):
        start = 7
    elif head == b"https://":
        start = 8
    else:
        return value
    end = len(value)
    for sep in _ENDS_AUTHORITY:
        i = value.find(sep, start, end)
        if i >= 0:
            end = i
    hostport = value[start:end]
    host = _host_key(hostport, False)
    if host is None:
        return value
    if host != _host_key(backend_host, True):
        if not backend_address:
            return value
        ours = _host_port(hostport, 80 if start == 7 else 443)
        if ours is None or ours != _host_port(backend_address, 0):
            return value
    if not authority:  # an HTTP/1.0 client without Host: a path-absolute reference
        rest = value[end:]
        return rest if rest[:1] == b"/" else b"/" + rest
    return scheme + b"://" + authority + value[end:]
