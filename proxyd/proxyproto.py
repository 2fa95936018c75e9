"""The PROXY protocol, versions 1 and 2 (HAProxy's spec, "The PROXY protocol", 2020-03-05).

Strategy: a pure parser of the header that a TCP balancer sends at the start of a connection,
bytes in, a :class:`ProxyHeader` (or "need more bytes", or :class:`ProxyHeaderError`) out, and
the encoders of both versions (proxyd sends v2 to backends that ask for it; tests send both).
:func:`parse` decides as early as the bytes allow: the first byte that cannot start either
signature fails at once, so a client that speaks HTTP straight away is refused on its first
packet rather than after a timeout. Bounds: a v1 line is at most 107 bytes (the spec's
maximum), a v2 header at most :data:`MAX_V2` bytes (addresses plus TLVs, which are skipped).

What is accepted, per the spec: v1 ``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` with addresses
of the family (IP literals without a scope id: the address reaches X-Forwarded-For and
Forwarded) and decimal ports (no leading zeros, <= 65535), or ``PROXY UNKNOWN ...\\r\\n``; v2
with version 2, command LOCAL or PROXY, families UNSPEC, INET, INET6 or UNIX over STREAM (or
UNSPEC). LOCAL and UNKNOWN carry no client: the connection's own peer stays the client (a
balancer's health check). Nothing here touches a socket.
"""

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["ProxyHeader", "ProxyHeaderError", "parse", "encode_v1", "encode_v2", "V2_SIGNATURE",
           "MAX_V1", "MAX_V2"]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107
MAX_V2 = 16 + 2048
_V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}
_FAMILY_NAMES = {0x0: "UNKNOWN", 0x1: "TCP4", 0x2: "TCP6", 0x3: "UNIX"}


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (the connection must be closed)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``source``/``destination`` are ``(address text, port)`` or None (LOCAL,
    UNKNOWN, UNIX and UNSPEC carry no usable client); ``version`` is 1 or 2."""

    version: int
    command: str  # "PROXY" or "LOCAL"
    family: str   # "TCP4", "TCP6", "UNIX" or "UNKNOWN"
    source: tuple | None = None
    destination: tuple | None = None


def parse(data):
    """``(header, consumed)`` for a complete header at the start of ``data``, ``(None, 0)``
    when more bytes are needed, :class:`ProxyHeaderError` when it cannot be one."""
    data = bytes(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None, 0
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data):
    if not V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
        raise ProxyHeaderError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1 or b"\n" in data[:MAX_V1]:
            raise ProxyHeaderError("PROXY v1 line without CRLF within 107 bytes")
        return None, 0
    parts = data[len(V1_PREFIX):end].split(b" ")
    if parts[0] == b"UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNKNOWN"), end + 2
    if parts[0] not in (b"TCP4", b"TCP6") or len(parts) != 5:
        raise ProxyHeaderError("PROXY v1: expected TCP4, TCP6 or UNKNOWN and four fields")
    version = 4 if parts[0] == b"TCP4" else 6
    source = (_address(parts[1], version), _port(parts[3]))
    destination = (_address(parts[2], version), _port(parts[4]))
    return ProxyHeader(1, "PROXY", parts[0].decode(), source, destination), end + 2


def _address(text, version):
    """The canonical text of a v1 address of IP ``version``; a scope id (``fe80::1%eth0``:
    ``ipaddress`` takes any text after ``%``) is refused, as is anything but an IP literal."""
    if b"%" in text:
        raise ProxyHeaderError(f"PROXY v1: address with a scope id {text[:64]!r}")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1: invalid address {text[:64]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1: {text[:64]!r} is not an IPv{version} address")
    return str(address)


def _port(text):
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") \
            or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1: invalid port {text[:16]!r}")
    return int(text)


def _parse_v2(data):
    if not V2_SIGNATURE.startswith(data[:12]):
        raise ProxyHeaderError("no PROXY protocol header")
    if len(data) < 16:
        return None, 0
    version, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    (length,) = struct.unpack("!H", data[14:16])
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2: unsupported version {version}")
    if command not in (0x0, 0x1):
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    if family not in _FAMILY_NAMES or transport not in (0x0, 0x1, 0x2):
        raise ProxyHeaderError(f"PROXY v2: unknown address family/protocol 0x{data[13]:02x}")
    if 16 + length > MAX_V2:
        raise ProxyHeaderError(f"PROXY v2: header of {16 + length} bytes is too long")
    if len(data) < 16 + length:
        return None, 0
    body = data[16:16 + length]
    name = _FAMILY_NAMES[family]
    if command == 0x0:  # LOCAL: the balancer itself (health check); addresses are ignored
        return ProxyHeader(2, "LOCAL", name), 16 + length
    need = _V2_ADDRESS_SIZES.get(family, 0)
    if len(body) < need:
        raise ProxyHeaderError(f"PROXY v2: {length} bytes cannot hold {name} addresses")
    if family == 0x1 and transport == 0x1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        return ProxyHeader(2, "PROXY", name, (str(ipaddress.IPv4Address(src)), sport),
                           (str(ipaddress.IPv4Address(dst)), dport)), 16 + length
    if family == 0x2 and transport == 0x1:
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        return ProxyHeader(2, "PROXY", name, (str(ipaddress.IPv6Address(src)), sport),
                           (str(ipaddress.IPv6Address(dst)), dport)), 16 + length
    # UNSPEC, UNIX, or a datagram transport: no TCP client address to use.
    return ProxyHeader(2, "PROXY", name), 16 + length


def encode_v1(source, destination):
    """The v1 line for ``(address, port)`` pairs of one family."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one family")
    family = b"TCP4" if src.version == 4 else b"TCP6"
    return b"PROXY %s %s %s %d %d\r\n" % (family, str(src).encode(), str(dst).encode(),
                                           source[1], destination[1])


def encode_v2(source=None, destination=None, tlvs=b""):
    """The v2 header: PROXY with ``(address, port)`` pairs of one family, or LOCAL when
    ``source`` is None; ``tlvs`` (already encoded) follow the addresses."""
    if source is None:
        return V2_SIGNATURE + bytes((0x20, 0x00)) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one family")
    if src.version == 4:
        body = struct.pack("!4s4sHH", src.packed, dst.packed, source[1], destination[1])
        family = 0x11
    else:
        body = struct.pack("!16s16sHH", src.packed, dst.packed, source[1], destination[1])
        family = 0x21
    body += tlvs
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body
