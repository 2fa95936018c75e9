"""WebSocket bootstrapping facts shared by the gate, the translation and the codecs (pure).

Strategy: proxyd never parses WebSocket frames; after the handshake a WebSocket is a byte tunnel
(:mod:`proxyd.stream`, states TUNNEL and TUNNEL_BLOCKED). What it must know is the handshake:

* HTTP/1.1 (RFC 6455 §4): a ``GET`` with ``Upgrade: websocket`` and ``Connection: upgrade``;
  the server's ``101`` carries ``Upgrade: websocket`` and the ``Sec-WebSocket-Accept`` that
  :func:`accept_for` computes from the client's ``Sec-WebSocket-Key``.
* HTTP/2 (RFC 8441): an extended CONNECT (``:method CONNECT``, ``:protocol websocket``) after the
  server advertised ``SETTINGS_ENABLE_CONNECT_PROTOCOL``; no key, no accept; ``200`` opens it.

When an RFC 8441 client reaches an HTTP/1.1 backend, proxyd makes the key itself
(:func:`new_key`) and checks the backend's accept against it, as nghttpx does; when an HTTP/1.1
client reaches an HTTP/2 backend (bridge and client modes), proxyd answers the client's key.
"""

import base64
import hashlib
import os

__all__ = ["WEBSOCKET", "GUID", "new_key", "accept_for", "has_token"]

#: The upgrade token (RFC 6455 §4.1; RFC 8441 ``:protocol``), the only one proxyd tunnels.
WEBSOCKET = b"websocket"
#: RFC 6455 §1.3: the GUID appended to the key before hashing.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def new_key():
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (RFC 6455 §4.1 item 7)."""
    return base64.b64encode(os.urandom(16))


def accept_for(key):
    """The ``Sec-WebSocket-Accept`` value a server answers to ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - the RFC's hash


def has_token(value, token):
    """True when the comma-separated list ``value`` holds ``token`` (ASCII case-insensitive,
    whitespace around elements ignored)."""
    return any(item.strip(b" \t").lower() == token for item in value.split(b","))
