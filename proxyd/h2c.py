"""The h2c upgrade (RFC 7540 §3.2) as data: which HTTP/1.1 request asks for it, what it carries.

Strategy: pure functions on the raw head the HTTP/1.1 codec hands out (``:method``, ``:path``,
then the fields as received), so the network layer only has to act on the answer. A request
qualifies when it is HTTP/1.1 without a body (proxyd does not upgrade in the middle of a body, as
the RFC allows a server to decline), its ``Upgrade`` lists ``h2c``, its ``Connection`` lists both
``upgrade`` and ``http2-settings``, and it carries exactly one ``HTTP2-Settings`` whose value is
base64url (no padding) of a SETTINGS payload (a multiple of 6 bytes). Anything else is served as
plain HTTP/1.1: the upgrade is optional for the server, and the gate strips the hop-by-hop fields.
"""

import base64
import binascii

from proxyd.websocket import has_token

__all__ = ["H2C", "SWITCHING", "upgrade_settings"]

#: The upgrade token for HTTP/2 over cleartext TCP.
H2C = b"h2c"
#: The answer that switches the connection; the server's SETTINGS follow it.
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
# A SETTINGS payload larger than this (a few hundred settings) is not a real client's.
_MAX_SETTINGS = 6 * 64
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def upgrade_settings(event):
    """The decoded ``HTTP2-Settings`` payload when the raw HTTP/1.1 ``event``
    (:class:`proxyd.events.RequestReceived`) asks for h2c as described above, else None."""
    if not event.end_stream or event.http_version != b"1.1":
        return None
    upgrade = connection = None
    settings = []
    for name, value in event.headers[2:]:
        lower = name.lower()
        if lower == b"upgrade":
            upgrade = value if upgrade is None else upgrade + b"," + value
        elif lower == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif lower == b"http2-settings":
            settings.append(value)
        elif lower in (b"content-length", b"transfer-encoding") and value.strip(b"0 \t"):
            return None
    if upgrade is None or not has_token(upgrade, H2C) or len(settings) != 1:
        return None
    if connection is None or not (has_token(connection, b"upgrade")
                                  and has_token(connection, b"http2-settings")):
        return None
    return decode_settings(settings[0])


def decode_settings(value):
    """``HTTP2-Settings`` (base64url, padding optional) decoded, or None when it is not a valid
    SETTINGS payload."""
    value = value.strip(b" \t").rstrip(b"=")
    if len(value) > _MAX_SETTINGS * 4 // 3 + 4 or not set(value) <= _B64URL:
        return None
    try:
        payload = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(payload) % 6:
        return None
    return payload
