"""Which server codec a client connection gets: by ALPN on TLS, by its first bytes on cleartext.

Strategy: pure functions the frontend calls once per connection. On TLS the name ALPN settled
(none: HTTP/1.1) must be one the listener offers. On cleartext the first bytes decide: a SPDY
control frame (its version, if offered), the HTTP/2 preface (prior knowledge), else HTTP/1.1;
``None`` while the bytes seen so far could still be a preface, ``""`` when nothing offered fits
(the connection is closed). :func:`make_codec` builds the codec for the name, :func:`family_of`
names the gate's rule set for it.
"""

from proxyd import gate
from proxyd.codec.h1 import H1ServerCodec
from proxyd.codec.h2 import H2ServerCodec
from proxyd.codec.spdy import make_server_codec, sniff_version

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Bytes from a client before its protocol is known that we are willing to hold.
SNIFF_LIMIT = len(H2_PREFACE)


def family_of(protocol):
    """The gate's rule set for a frontend protocol name."""
    if protocol == "h2":
        return gate.H2
    if protocol.startswith("spdy/"):
        return gate.SPDY
    return gate.HTTP1


def make_codec(protocol, settings, scheme, sniffed=False, connect_protocol=False):
    """Build the server codec for an ALPN / sniffed protocol name, or None; ``connect_protocol``:
    HTTP/2 advertises extended CONNECT (RFC 8441)."""
    if protocol == "h2":
        return H2ServerCodec(max_concurrent_streams=settings.max_concurrent_streams,
                             max_header_list_size=settings.max_header_list_size, scheme=scheme,
                             enable_connect_protocol=connect_protocol)
    if protocol == "http/1.1":
        return H1ServerCodec(max_header_list_size=settings.max_header_list_size, scheme=scheme)
    if protocol.startswith("spdy/"):
        return make_server_codec(protocol, settings, sniffed=sniffed)
    return None


def sniff(data, protocols):
    """Pick a cleartext protocol from the first bytes: a name, None (need more), or "" (reject)."""
    if data[:1] == b"\x80":
        if len(data) < 4:
            return None
        return sniff_version(data, protocols) or ""
    if H2_PREFACE.startswith(data[:len(H2_PREFACE)]) and "h2" in protocols:
        return "h2" if len(data) >= len(H2_PREFACE) else None
    if "http/1.1" in protocols:
        return "http/1.1"
    return ""


def choose(protocols, tls, negotiated, sniffed):
    """The protocol of a connection to a listener offering ``protocols``: on TLS what ALPN
    ``negotiated`` (bytes or None), on cleartext what the bytes ``sniffed`` so far say; a name,
    None (more bytes needed) or "" (nothing offered fits: close)."""
    if tls:
        name = negotiated.decode() if negotiated else "http/1.1"
        return name if name in protocols else ""
    name = sniff(sniffed, protocols)
    if name is None and len(sniffed) > SNIFF_LIMIT:
        return ""
    return name
