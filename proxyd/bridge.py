"""Per-stream translation policy between a client's request and a backend's HTTP/1.1 exchange.

Strategy: pure functions over :mod:`proxyd.events` values and a :class:`Policy` built once per
listener, so the network layer only moves bytes. Header rules live in :mod:`proxyd.headers`;
this module decides what the request line, body framing and the client's response head are, and
what an error looks like to the client.
"""

from dataclasses import dataclass

from proxyd.errors import REASONS
from proxyd.headers import backend_request_headers, client_response_headers

_VIA_HTTP11 = b"1.1"


@dataclass(frozen=True, slots=True)
class Policy:
    """What a listener's streams need to translate requests: header rules and the client side."""

    headers: object  # proxyd.config.HeaderPolicy
    tls: bool
    max_request_body: int = 0


@dataclass(slots=True)
class BackendRequest:
    """The HTTP/1.1 request head to send for one client stream."""

    method: bytes
    target: bytes
    headers: list
    end_stream: bool
    host: bytes  # the Host sent to the backend (for Location rewriting)
    content_length: int | None


def declared_length(headers):
    """The request's content-length as an int, or None when absent or unparsable."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def backend_request(request, *, client_ip, policy):
    """Translate a :class:`proxyd.events.RequestReceived` into a :class:`BackendRequest`.

    Bodies stream: the content-length travels when the client gave one, otherwise h11 frames the
    body as chunked. HTTP/2 and SPDY trailers require chunked framing, which h11 picks when no
    content-length is present.
    """
    headers = backend_request_headers(
        request.authority,
        request.headers,
        client_ip=client_ip,
        via_version=request.http_version,
        tls=policy.tls,
        policy=policy.headers,
    )
    host = b""
    length = None
    for name, value in headers:
        if name == b"host":
            host = value
        elif name == b"content-length":
            length = int(value) if value.isdigit() else None
    # 100-continue is answered by the frontend itself; the backend must not wait for it.
    headers = [(n, v) for n, v in headers if n != b"expect"]
    if not request.end_stream and length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    if request.end_stream and request.method in (b"POST", b"PUT", b"PATCH") and length is None:
        headers.append((b"content-length", b"0"))
    return BackendRequest(
        method=request.method,
        target=request.path,
        headers=headers,
        end_stream=request.end_stream,
        host=host,
        content_length=length,
    )


def client_response(status, headers, *, policy, backend_host, scheme, authority,
                    via_version=_VIA_HTTP11):
    """The response head for the client: hop-by-hop removed, Via appended, Location rewritten.

    ``via_version`` is the backend's protocol version (b"1.1", or b"2" for HTTP/2 backends).
    """
    del status
    return client_response_headers(
        headers,
        via_version=via_version,
        policy=policy.headers,
        backend_host=backend_host,
        scheme=scheme,
        authority=authority,
    )


def error_response(status, cause=b"", extra_headers=()):
    """A short text error response: ``(status, headers, body)``."""
    body = REASONS.get(status, b"Error") + (b": " + cause if cause else b"") + b"\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
    headers.extend(extra_headers)
    return status, headers, body
