"""Translation policy between a request that passed the gate and any backend, and back.

Strategy: pure functions and small value objects, built once per listener (:class:`Policy`) or
per stream (:class:`Translator`), so the network layer only moves bytes. :func:`backend_request`
turns a :class:`proxyd.gate.Request` into a protocol-neutral :class:`BackendRequest`: the
end-to-end fields after the rules of :mod:`proxyd.headers` (hop-by-hop removed, X-Forwarded-*,
Via, cookies joined) plus the facts each backend codec builds its own wire form from (method,
target, authority, declared length, whether a body follows, whether the client accepts
trailers); the target is the normalised path the route was chosen for, the query as sent. No
codec ever sees another protocol's framing: the HTTP/1.1 writer adds Host and the body framing,
the HTTP/2 client codec adds the pseudo-header fields and ``te: trailers``.
:class:`Translator` gives the stream machine the client's response head (hop-by-hop removed, Via
appended, Location rewritten) and the request trailers it forwards (trusted names dropped).

WebSocket tunnels (requests whose ``upgrade`` is set) become a :class:`TunnelBackendRequest`:
a bodiless ``GET`` whose writer adds ``Upgrade: websocket`` and ``Connection: Upgrade`` (HTTP/1.1)
or an extended CONNECT (HTTP/2), with the client's ``Sec-WebSocket-*`` fields; an RFC 8441 client
sends no key, so one is made here (RFC 6455 §4.1) and the backend's accept is checked against it.
:meth:`Translator.tunnel_headers` writes the head that opens the tunnel in the client's terms:
``101`` with ``Upgrade: websocket`` for HTTP/1.1, ``200`` without ``Sec-WebSocket-Accept`` for
HTTP/2 (RFC 8441 §5).
"""

from dataclasses import dataclass, replace

from proxyd import websocket
from proxyd.headers import (UNTRUSTED_DROP, backend_request_headers, client_response_headers,
                            request_trailers)
from proxyd.route import normalize_target


@dataclass(frozen=True, slots=True)
class Policy:
    """What a listener's streams need to translate requests: header rules and the client side.

    ``client_subject`` is set on the policy of one connection whose client presented a verified
    certificate (its subject, the value of ``headers.client_cert_header``); a listener's policy
    has None. ``untrusted``: the policy of clients outside ``trusted_proxies``, whose
    forwarding fields are dropped (:data:`proxyd.headers.UNTRUSTED_DROP`).
    """

    headers: object  # proxyd.config.HeaderPolicy
    tls: bool
    max_request_body: int = 0
    client_subject: bytes | None = None
    untrusted: bool = False

    def with_client_subject(self, subject):
        """This policy for a connection with a verified client certificate of ``subject``
        (bytes); None (no certificate) gives this policy itself."""
        if subject is None or subject == self.client_subject:
            return self
        return replace(self, client_subject=subject)


class BackendRequest:
    """The request for one backend exchange, in no protocol's wire form.

    ``authority`` is what the backend gets as Host / ``:authority`` (``b""``: the writer uses
    the backend's address); ``headers`` are end-to-end fields only (never Host, Content-Length,
    Transfer-Encoding or TE); ``content_length`` is the client's declared length or None;
    ``has_body`` says body bytes (or at least an end of body) follow the head.
    """

    __slots__ = ("method", "target", "authority", "headers", "content_length", "has_body",
                 "te_trailers", "upgrade")

    def __init__(self, method, target, authority, headers, content_length, has_body,
                 te_trailers=False, upgrade=None):
        self.method = method
        self.target = target
        self.authority = authority
        self.headers = headers
        self.content_length = content_length
        self.has_body = has_body
        self.te_trailers = te_trailers
        self.upgrade = upgrade

    def __repr__(self):
        return (f"BackendRequest({self.method!r} {self.target!r} host={self.authority!r}, "
                f"{len(self.headers)} fields, length={self.content_length}, "
                f"body={self.has_body})")


class TunnelBackendRequest(BackendRequest):
    """A WebSocket handshake for the backend: ``upgrade`` is the protocol (``b"websocket"``);
    ``key`` the ``Sec-WebSocket-Key`` in ``headers``, the client's or, ``own_key`` True, one
    proxyd made (RFC 8441 clients send none). HTTP/1.1 writers send it as a
    bodiless GET with Upgrade; HTTP/2 writers as an extended CONNECT without the key."""

    __slots__ = ("key", "own_key")

    def __init__(self, *args, upgrade, key, own_key):
        super().__init__(*args, upgrade=upgrade)
        self.key = key
        self.own_key = own_key


def backend_request(request, *, client_ip, policy):
    """The :class:`BackendRequest` for a :class:`proxyd.gate.Request` from ``client_ip``.

    Its target is :func:`proxyd.route.normalize_target` of the client's: the path the route
    was chosen for (dot segments removed, unreserved escapes decoded), the query as sent.
    """
    if policy.untrusted:
        headers = backend_request_headers(request.headers, client_ip, request.http_version,
                                          policy.tls, policy.headers, False,
                                          policy.client_subject, drop=UNTRUSTED_DROP)
    else:
        headers = backend_request_headers(request.headers, client_ip, request.http_version,
                                          policy.tls, policy.headers, False, policy.client_subject)
    target = normalize_target(request.path)
    if request.upgrade is not None:
        return _tunnel_request(request, target, headers)
    return BackendRequest(request.method, target, request.authority, headers,
                          request.content_length, not request.end_stream, request.te_trailers)


def _tunnel_request(request, target, headers):
    """The backend's WebSocket handshake for a tunnel request (see the module docstring).

    An HTTP/1.1 client's own key goes on (it checks the backend's accept itself; only its
    first, should it send more); an RFC 8441 client (extended CONNECT) sends none, and any it
    sends is dropped: the key is proxyd's, the accept check proxyd's. A Sec-WebSocket-Accept is
    a response field and never goes to a backend."""
    keys = [value for name, value in headers if name == b"sec-websocket-key"]
    own = request.method != b"GET" or not keys
    key = websocket.new_key() if own else keys[0]
    headers = [item for item in headers
               if item[0] != b"sec-websocket-key" and item[0] != b"sec-websocket-accept"]
    headers.append((b"sec-websocket-key", key))
    return TunnelBackendRequest(b"GET", target, request.authority, headers, None, False,
                                False, upgrade=request.upgrade, key=key, own_key=own)


class Translator:
    """Response-head translation for one stream: the client's scheme and authority, the Host sent
    to the backend, and the rules of :mod:`proxyd.headers` (Location rewriting included)."""

    __slots__ = ("policy", "scheme", "authority", "backend_host")

    def __init__(self, policy, authority):
        self.policy = policy
        self.scheme = b"https" if policy.tls else b"http"
        self.authority = authority
        self.backend_host = authority

    def response_headers(self, status, headers, via_version, backend_address):
        """The client's fields for a backend response head (or 1xx, or trailers-free head).

        ``via_version`` is the backend's protocol version (``b"1.1"`` or ``b"2"``);
        ``backend_address`` the ``host:port`` that answered (for Location rewriting).
        """
        del status
        return client_response_headers(
            headers,
            via_version=via_version,
            policy=self.policy.headers,
            backend_host=self.backend_host or backend_address,
            scheme=self.scheme,
            authority=self.authority,
            backend_address=backend_address,
        )

    def request_trailers(self, trailers):
        """The client's request trailers (passed :func:`proxyd.gate.check_trailers`) as sent to
        the backend: without the trusted names proxyd writes in the head only (any spelling,
        see :func:`proxyd.headers.request_trailers`)."""
        return request_trailers(trailers, self.policy.headers.client_cert_header,
                                self.policy.untrusted)

    def tunnel_headers(self, fields, *, http1_client, via_version, backend_address, key):
        """The client's head for a tunnel the backend opened: ``(status, fields)``.

        ``fields`` passed :func:`proxyd.gate.check_switch`; hop-by-hop ones go, Via is appended
        as for any response. An HTTP/1.1 client gets ``101`` with ``Upgrade: websocket`` (its
        codec adds ``Connection: Upgrade``) and, when the backend spoke HTTP/2 (``via_version``
        ``b"2"``: no accept came), the ``Sec-WebSocket-Accept`` of its ``key``; an HTTP/2 client
        gets ``200`` without ``Sec-WebSocket-Accept`` (RFC 8441 §5).
        """
        out = self.response_headers(101, fields, via_version, backend_address)
        if not http1_client:
            return 200, [item for item in out if item[0] != b"sec-websocket-accept"]
        out.append((b"upgrade", websocket.WEBSOCKET))
        if via_version == b"2" and key is not None:
            out = [item for item in out if item[0] != b"sec-websocket-accept"]
            out.append((b"sec-websocket-accept", websocket.accept_for(key)))
        return 101, out
