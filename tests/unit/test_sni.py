"""Table-driven tests of proxyd.sni: certificate names matched as browsers match them, and which
certificates of a listener each server name gets (exact before wildcard, per key type, default)."""

import pytest

from proxyd.sni import SniTable, matches, normalise, wildcard_parent


@pytest.mark.parametrize("raw, expected", [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    (b"www.example.com", "www.example.com"),
    ("", None),
    (".", None),
    (".example.com", None),
    ("a..example.com", None),
    ("exa mple.com", None),
    ("bücher.example", None),          # SNI carries A-labels only
    (b"\xff.example", None),
    (None, None),
    (7, None),
])
def test_normalise(raw, expected):
    """Case and one trailing dot do not matter; what cannot be a server name is None."""
    assert normalise(raw) == expected


@pytest.mark.parametrize("pattern, parent", [
    ("*.example.com", "example.com"),
    ("*.a.b.example", "a.b.example"),
    ("*.com", None),                   # at least two labels after the wildcard
    ("f*.example.com", None),          # partial-label wildcards are not honoured
    ("*oo.example.com", None),
    ("a.*.example.com", None),
    ("*.*.example.com", None),
    ("example.com", None),
])
def test_wildcard_parent(pattern, parent):
    """Only a whole left-most ``*`` label with two or more labels after it is a wildcard."""
    assert wildcard_parent(pattern) == parent


@pytest.mark.parametrize("pattern, host, expected", [
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.com.", True),
    ("Example.Com", "example.com", True),
    ("example.com", "www.example.com", False),
    ("www.example.com", "example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "A.Example.Com", True),
    ("*.example.com", "example.com", False),          # one label, not zero
    ("*.example.com", "a.b.example.com", False),      # one label, not two
    ("*.example.com", "aexample.com", False),
    ("*.example.com", "xn--bcher-kva.example.com", False),  # never an IDN label
    ("*.com", "example.com", False),
    ("f*.example.com", "foo.example.com", False),
    ("*.example.com", "*.example.com", False),        # a server name is never a pattern
    ("", "example.com", False),
    ("example.com", "", False),
])
def test_matches(pattern, host, expected):
    """Browser rules (RFC 6125 §6.4 as Chromium and Firefox apply it)."""
    assert matches(pattern, host) is expected


# A listener's certificates in configuration order: (names, key type).
CERTS = [
    (["default.test"], "ec"),                             # 0: the default
    (["default.test"], "rsa"),                            # 1: its RSA twin
    (["a.test", "*.wild.test"], "ec"),                    # 2
    (["*.wild.test", "exact.wild.test"], "rsa"),          # 3
    (["exact.wild.test"], "ec"),                          # 4: exact beats 2's wildcard for ec
    (["B.Test."], "rsa"),                                 # 5: names are normalised
    (["a.test"], "ec"),                                   # 6: never chosen (2 has a.test, ec)
]


@pytest.mark.parametrize("server_name, group", [
    (None, (0, 1)),                       # no SNI: the default and its twin
    ("unknown.test", (0, 1)),             # unknown name: the default
    (b"default.test", (0, 1)),
    ("a.test", (2,)),
    ("A.TEST.", (2,)),
    ("x.wild.test", (2, 3)),              # wildcard of both key types
    ("exact.wild.test", (3, 4)),          # exact ec (4) and exact rsa (3) beat the wildcard
    ("b.test", (5,)),
    ("wild.test", (0, 1)),                # the wildcard needs one label
    ("x.y.wild.test", (0, 1)),
    ("xn--p1ai.wild.test", (0, 1)),       # never an IDN label
    ("bad name", (0, 1)),
    ("*.wild.test", (0, 1)),              # a server name is never a pattern
    (b"\xff\xfe", (0, 1)),
])
def test_choose(server_name, group):
    """Each server name gets, per key type, the first exact certificate, else the first
    wildcard; the rest get the default group."""
    assert SniTable(CERTS).choose(server_name) == group


def test_groups_and_unused():
    """Every group some name can get is listed once; a certificate no name reaches is unused."""
    table = SniTable(CERTS)
    assert table.default == (0, 1)
    assert table.groups == ((0, 1), (2,), (2, 3), (3, 4), (5,))
    assert table.unused() == [6]


@pytest.mark.parametrize("certs, default, unused", [
    ([(["a.test"], "ec")], (0,), []),
    ([([], "ec")], (0,), []),                                   # no names: still the default
    ([(["a.test"], "ec"), (["b.test"], "rsa")], (0,), []),      # different names: no twin
    ([(["a.test"], "ec"), ([], "rsa")], (0,), [1]),             # no names, not a twin: unused
    ([(["a.test"], "ec"), (["a.test"], "ec")], (0,), [1]),      # same names, same type
    ([(["a.test", "b.test"], "rsa"), (["b.test", "a.test"], "ec")], (0, 1), []),
    ([(["*.a.test"], "ec"), (["x.a.test"], "ec")], (0,), []),   # exact beats wildcard: used
])
def test_default_group_and_unused(certs, default, unused):
    """The default is the first certificate plus same-named certificates of other key types."""
    table = SniTable(certs)
    assert table.default == default
    assert table.unused() == unused


def test_no_certificate():
    """A table needs a certificate."""
    with pytest.raises(ValueError):
        SniTable([])
