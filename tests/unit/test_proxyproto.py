"""The PROXY protocol parser (proxyd.proxyproto): hand-written headers of both versions from the
spec, refusals, and hypothesis properties (round trips, any chunking, random bytes never raise
anything but ProxyHeaderError)."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from proxyd.proxyproto import (
    MAX_V1, MAX_V2, V2_SIGNATURE, ProxyHeader, ProxyHeaderError, encode_v1, encode_v2, parse,
)


def test_v1_tcp4_and_rest():
    """The spec's v1 example; the bytes after the line are not consumed."""
    data = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n"
    header, used = parse(data)
    assert header == ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 443))
    assert data[used:] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_and_unknown():
    """TCP6 addresses come back normalised; UNKNOWN carries no client."""
    header, _ = parse(b"PROXY TCP6 2001:DB8::1 2001:db8::2 1 65535\r\n")
    assert header.source == ("2001:db8::1", 1) and header.family == "TCP6"
    header, used = parse(b"PROXY UNKNOWN ffff::1 whatever\r\nx")
    assert header == ProxyHeader(1, "PROXY", "UNKNOWN") and used == 32


@pytest.mark.parametrize("source", [
    b'::1%"];proto=https,for=6.6.6.6;x="', b"fe80::1%eth0", b"fe80::1%1", b"::1%",
])
def test_v1_address_with_a_scope_id_refused(source):
    """``ipaddress`` takes any text after ``%`` as an IPv6 scope id: a v1 source would reach
    X-Forwarded-For and Forwarded as that text, so any ``%`` is refused."""
    with pytest.raises(ProxyHeaderError, match="scope id"):
        parse(b"PROXY TCP6 " + source + b" ::1 1 2\r\n")
    with pytest.raises(ProxyHeaderError, match="scope id"):
        parse(b"PROXY TCP6 ::1 " + source + b" 1 2\r\n")


def test_v2_inet_local_and_tlvs():
    """v2 PROXY over INET with a TLV after the addresses; LOCAL keeps no address."""
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    data = encode_v2(("203.0.113.7", 40000), ("127.0.0.1", 8080), tlvs=tlv) + b"rest"
    header, used = parse(data)
    assert header == ProxyHeader(2, "PROXY", "TCP4", ("203.0.113.7", 40000), ("127.0.0.1", 8080))
    assert data[used:] == b"rest"
    header, used = parse(encode_v2() + b"x")
    assert header == ProxyHeader(2, "LOCAL", "UNKNOWN") and used == 16


def test_v2_unix_and_unspec_carry_no_client():
    """UNIX addresses (216 bytes) and UNSPEC are accepted but give no TCP client."""
    unix = V2_SIGNATURE + bytes((0x21, 0x31)) + struct.pack("!H", 216) + bytes(216)
    assert parse(unix)[0] == ProxyHeader(2, "PROXY", "UNIX")
    unspec = V2_SIGNATURE + bytes((0x21, 0x00)) + b"\x00\x00"
    assert parse(unspec)[0] == ProxyHeader(2, "PROXY", "UNKNOWN")


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",                          # no header at all
    b"\x16\x03\x01\x02\x00",                           # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n",                             # HTTP/2 preface
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",               # LF without CR
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",               # a field missing
    b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",                 # family mismatch
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",            # leading zero
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    b"PROXY " + b"x" * MAX_V1,                         # no CRLF within 107 bytes
    V2_SIGNATURE + bytes((0x11, 0x11)) + b"\x00\x0c" + bytes(12),   # version 1 in v2
    V2_SIGNATURE + bytes((0x22, 0x11)) + b"\x00\x0c" + bytes(12),   # command 2
    V2_SIGNATURE + bytes((0x21, 0x41)) + b"\x00\x00",                # family 4
    V2_SIGNATURE + bytes((0x21, 0x11)) + b"\x00\x04" + bytes(4),     # too short for INET
    V2_SIGNATURE + bytes((0x21, 0x11)) + struct.pack("!H", MAX_V2),  # longer than we hold
    b"\r\n\r\n\x00\r\nQUIX\n",                         # a bad signature
])
def test_refused(data):
    """Anything that is not a valid header raises at the first byte that proves it."""
    with pytest.raises(ProxyHeaderError):
        parse(data)


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY TCP4 1.2.3.4", b"\r\n\r\n",
                                  V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(11)])
def test_incomplete_needs_more(data):
    """A valid beginning asks for more bytes."""
    assert parse(data) == (None, 0)


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(0, 65535)
_pair4 = st.tuples(st.tuples(_ipv4, _port), st.tuples(_ipv4, _port))
_pair6 = st.tuples(st.tuples(_ipv6, _port), st.tuples(_ipv6, _port))


@given(st.one_of(_pair4, _pair6), st.sampled_from([1, 2]), st.binary(max_size=40),
       st.data())
@settings(max_examples=300, deadline=None)
def test_round_trip_in_any_chunking(pair, version, rest, data):
    """What the encoders write parses back to the same addresses, fed in any chunks; the
    following bytes are left alone."""
    source, destination = pair
    wire = (encode_v1 if version == 1 else encode_v2)(source, destination) + rest
    cut = data.draw(st.integers(0, len(wire)))
    got = parse(wire[:cut])
    if got[0] is None:
        got = parse(wire)
    header, used = got
    assert header.version == version and header.command == "PROXY"
    assert header.source == (str(ipaddress.ip_address(source[0])), source[1])
    assert header.destination == (str(ipaddress.ip_address(destination[0])), destination[1])
    assert wire[used:] == rest


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_raise_proxy_header_error(data):
    """Random input: a header, a request for more, or ProxyHeaderError; never another error."""
    try:
        header, used = parse(data)
    except ProxyHeaderError:
        return
    assert (header is None and used == 0) or 0 < used <= len(data)


@given(st.one_of(_pair4, _pair6), st.binary(min_size=1, max_size=8), st.integers(0, 60))
@settings(max_examples=300, deadline=None)
def test_mutated_headers_never_crash(pair, noise, at):
    """Headers with bytes overwritten anywhere are accepted, incomplete or refused cleanly."""
    wire = bytearray(encode_v2(*pair) if at % 2 else encode_v1(*pair))
    at = at % len(wire)
    wire[at:at + len(noise)] = noise
    try:
        parse(bytes(wire))
    except ProxyHeaderError:
        pass
