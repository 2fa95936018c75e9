"""Error types of proxyd and the one table that maps failures to HTTP statuses and reset codes.

Strategy: every failure is a value carrying what the client should see (``status_hint`` for
HTTP/1.1-style answers, ``reset_code`` for HTTP/2 / SPDY stream resets), so the network layer never
decides policy itself.
"""


class ProxydError(Exception):
    """Base class of every error raised by proxyd code."""

    status_hint = 500
    reset_code = 2  # HTTP/2 INTERNAL_ERROR


class ConfigError(ProxydError):
    """A configuration problem; ``path`` names the key, e.g. ``listen[0].tls.cert``."""

    def __init__(self, message, path=""):
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class ProtocolError(ProxydError):
    """A peer broke its protocol; the connection or stream is answered and dropped."""

    status_hint = 400
    reset_code = 1  # PROTOCOL_ERROR


class MalformedRequest(ProtocolError):
    """A request that must never reach a backend: 400 or RST_STREAM PROTOCOL_ERROR."""


class BackendUnavailable(ProxydError):
    """The backend refused or could not be reached: 502."""

    status_hint = 502
    reset_code = 2


class BackendTimeout(ProxydError):
    """The backend sent no response byte within ``timeouts.backend_read``: 504."""

    status_hint = 504
    reset_code = 2


class RateLimited(ProxydError):
    """Too many requests from one client address: 429."""

    status_hint = 429
    reset_code = 11  # ENHANCE_YOUR_CALM


class BodyTooLarge(ProxydError):
    """The request body exceeds ``limits.max_request_body``: 413."""

    status_hint = 413
    reset_code = 11


# Reason phrases for the statuses proxyd itself produces.
REASONS = {
    400: b"Bad Request",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
