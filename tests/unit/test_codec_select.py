"""Which codec a client connection gets (:mod:`proxyd.codec.select`): ALPN on TLS, the first
bytes on cleartext, and nothing when the listener offers nothing that fits."""

import pytest

from proxyd import gate
from proxyd.codec.select import H2_PREFACE, SNIFF_LIMIT, choose, family_of

ALL = ("h2", "http/1.1", "spdy/3.1", "spdy/3", "spdy/2")


@pytest.mark.parametrize("negotiated, protocols, expected", [
    (b"h2", ALL, "h2"),
    (None, ALL, "http/1.1"),  # no ALPN: HTTP/1.1
    (b"spdy/3.1", ALL, "spdy/3.1"),
    (b"h2", ("http/1.1",), ""),  # not offered by this listener
    (None, ("h2",), ""),
])
def test_tls_takes_what_alpn_settled_if_the_listener_offers_it(negotiated, protocols, expected):
    """On TLS the ALPN result decides (none means HTTP/1.1); a name the listener does not
    offer closes the connection."""
    assert choose(protocols, True, negotiated, b"") == expected


def test_cleartext_sniffs_the_first_bytes():
    """Cleartext: the HTTP/2 preface (once whole), a SPDY control frame's version, else
    HTTP/1.1; a partial preface waits for more, at most SNIFF_LIMIT bytes."""
    assert choose(ALL, False, None, H2_PREFACE) == "h2"
    assert choose(ALL, False, None, H2_PREFACE[:10]) is None
    assert choose(ALL, False, None, b"GET / HTTP/1.1\r\n") == "http/1.1"
    assert choose(ALL, False, None, b"\x80\x03\x00\x01") == "spdy/3"
    assert choose(ALL, False, None, b"\x80\x02\x00\x01") == "spdy/2"
    assert choose(("h2",), False, None, b"\x80\x03\x00\x01") == ""
    assert choose(("h2",), False, None, b"GET / HTTP/1.1\r\n") == ""
    assert choose(("h2",), False, None, H2_PREFACE[:SNIFF_LIMIT - 1]) is None


def test_family_names_the_gates_rule_set():
    """h2 -> HTTP/2 rules, every SPDY version -> SPDY rules, anything else -> HTTP/1.1."""
    assert family_of("h2") is gate.H2
    assert {family_of(p) for p in ("spdy/2", "spdy/3", "spdy/3.1")} == {gate.SPDY}
    assert family_of("http/1.1") is gate.HTTP1
