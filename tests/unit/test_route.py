"""Routing and balancing decisions of proxyd.route: precedence tables, path normalisation, the
health state machine driven by an explicit clock, and round-robin / least-outstanding picks."""

import pytest
from hypothesis import given, strategies as st

from proxyd.route import (
    DOWN, UP, Group, Health, RouteTable, _Paths, host_of, normalize_path, normalize_target,
)

ENTRIES = [
    ("shop.example.com", "/", "shop"),
    ("shop.example.com", "/api/", "shop-api"),
    ("*.example.com", "/", "wild"),
    ("*.api.example.com", "/", "wild-api"),
    ("*.example.com", "/static", "wild-static"),
    (None, "/public", "any-public"),
    (None, "/", "any"),
]


@pytest.mark.parametrize("authority, target, expected", [
    (b"shop.example.com", b"/", "shop"),
    (b"SHOP.Example.COM:8443", b"/x", "shop"),          # case and port ignored
    (b"shop.example.com.", b"/x", "shop"),              # trailing dot
    (b"shop.example.com", b"/api/v1/users", "shop-api"),  # longest prefix
    (b"shop.example.com", b"/api", "shop-api"),         # "/api/" also matches "/api"
    (b"shop.example.com", b"/apix", "shop"),            # segment boundary
    (b"shop.example.com", b"/api/../admin", "shop"),    # dot segments resolved
    (b"shop.example.com", b"/%61pi/x", "shop-api"),     # unreserved %-escapes decoded
    (b"shop.example.com", b"/api?x=1", "shop-api"),     # query ignored
    (b"a.example.com", b"/", "wild"),
    (b"a.b.example.com", b"/", "wild"),                 # more labels
    (b"x.api.example.com", b"/", "wild-api"),           # longer wildcard wins
    (b"a.example.com", b"/static/x.css", "wild-static"),
    (b"a.example.com", b"/staticfoo", "wild"),
    (b"example.com", b"/", "any"),                      # *.example.com needs one more label
    (b"other.org", b"/public/x", "any-public"),
    (b"other.org", b"/", "any"),
    (b"[::1]:8080", b"/", "any"),
    (b"", b"/", "any"),                                 # HTTP/1.0 without Host
])
def test_precedence(authority, target, expected):
    """Exact host, then the longest wildcard, then any host; the longest path prefix within."""
    assert RouteTable(ENTRIES).match(authority, target) == expected


def test_falls_back_to_the_next_host_class_and_the_default():
    """A host whose routes do not cover the path falls through to wildcards, any-host routes,
    then the default; without a default nothing matches (404)."""
    table = RouteTable([("a.example.com", "/api/", "a-api"), ("*.example.com", "/img/", "img")],
                       default="default")
    assert table.match(b"a.example.com", b"/img/x.png") == "img"
    assert table.match(b"a.example.com", b"/other") == "default"
    assert RouteTable([("a.example.com", "/api/", "a-api")]).match(b"a.example.com", b"/") is None


def test_only_default_is_one_check():
    """A table without routes answers the default for anything (the single-backend config)."""
    table = RouteTable([], default="d")
    assert table.only_default and table.match(b"whatever", b"/%zz/../..") == "d"


@pytest.mark.parametrize("target, expected", [
    (b"/", b"/"), (b"/a/b", b"/a/b"), (b"/a/./b", b"/a/b"), (b"/a/../../b", b"/b"),
    (b"/a/..", b"/"), (b"/a/b/..", b"/a/"), (b"/a%2Fb", b"/a%2Fb"), (b"/%7euser", b"/~user"),
    (b"/%zz", b"/%zz"), (b"/a?b/../c", b"/a"), (b"*", b"*"),
])
def test_normalize_path(target, expected):
    """Query dropped, unreserved escapes decoded (not %2F), dot segments removed."""
    assert normalize_path(target) == expected


@pytest.mark.parametrize("target, expected", [
    (b"/a/b?x=1", b"/a/b?x=1"), (b"/admin/../public?q=/../x", b"/public?q=/../x"),
    (b"/a/%2e%2e/b", b"/b"), (b"/%7euser?%7e", b"/~user?%7e"), (b"/a%2F..%2Fb", b"/a%2F..%2Fb"),
    (b"/a/./?", b"/a/?"), (b"*", b"*"),
])
def test_normalize_target(target, expected):
    """The forwarded target: the normalised path, the query exactly as sent."""
    assert normalize_target(target) == expected


@pytest.mark.parametrize("target, expected", [
    (b"/a%2fb", b"/a%2Fb"), (b"/caf%c3%a9/", b"/caf%C3%A9/"), (b"/%7e%2f", b"/~%2F"),
    (b"/a%3bx/./b", b"/a%3Bx/b"), (b"/a?%2f", b"/a"),
])
def test_escapes_that_stay_are_written_in_upper_case(target, expected):
    """RFC 3986 §6.2.2.1: the hex digits of an escape are case-insensitive (``%2f`` is ``%2F``)
    and upper case is their normal form; nghttpx upper-cases the escapes its normalisation
    keeps. A path that kept the client's case could not match a route written with escapes
    (``/caf%C3%A9/``) when the client writes ``%c3%a9``, while the backend decodes both to the
    same ``/café/``: the request would go to the default backend instead."""
    assert normalize_path(target) == expected


def test_a_route_with_escapes_matches_them_in_either_case():
    """A route path with reserved or non-ASCII escapes, written as routing sees requests
    (upper case), matches a request that escapes the same bytes in lower or mixed case; the
    backend gets the escapes in the normal form, the query as sent."""
    table = RouteTable([(None, "/caf%C3%A9/", "cafe"), (None, "/a%2Fb", "slash")],
                       default="default")
    assert table.match(b"h", b"/caf%c3%a9/menu") == "cafe"
    assert table.match(b"h", b"/caf%C3%a9") == "cafe"
    assert table.match(b"h", b"/a%2fb?x") == "slash"
    assert normalize_target(b"/caf%c3%a9/menu?q=%c3%a9") == b"/caf%C3%A9/menu?q=%c3%a9"


@pytest.mark.parametrize("target, expected", [
    (b"//admin", b"/admin"), (b"/a//b///c/", b"/a/b/c/"), (b"//", b"/"),
    (b"//a/..//b", b"/b"), (b"/a/%2F/b", b"/a/%2F/b"), (b"/a?x//y", b"/a"),
    (b"/a%2f%2fb", b"/a%2F%2Fb"),
])
def test_repeated_slashes_are_merged(target, expected):
    """Repeated slashes are one (nghttpx merges them; so do nginx's default ``merge_slashes``
    and most frameworks): ``//admin`` is routed, and forwarded, as ``/admin``, so a route's
    backend and policy cannot be bypassed by doubling a slash. Encoded slashes and the query
    are not touched."""
    assert normalize_path(target) == expected


def test_repeated_slashes_are_merged_in_the_forwarded_target_only_in_the_path():
    """The backend gets the merged path, the query exactly as sent."""
    assert normalize_target(b"//admin//x?next=//evil") == b"/admin/x?next=//evil"


def test_normalize_target_unchanged_is_the_same_object():
    """The common case costs no copy: a target already normal is returned as is."""
    target = b"/static/app.js?v=3"
    assert normalize_target(target) is target


TARGETS = st.lists(st.sampled_from([b"a", b"b", b".", b"..", b"%2e", b"%2E%2e", b"%2F", b"%7e",
                                    b"%25", b"", b"x?y", b"%zz", b"%2", b"%2f", b"%c3%a9"]),
                   max_size=8).map(lambda parts: b"/" + b"/".join(parts))


@given(TARGETS)
def test_forwarded_path_is_what_routing_saw(target):
    """What the backend gets is a fixed point of routing's normalisation: routing the forwarded
    target chooses what routing the client's chose, and the query is the client's."""
    forwarded = normalize_target(target)
    path, _, query = target.partition(b"?")
    assert forwarded.partition(b"?")[0] == normalize_path(target)
    assert normalize_path(forwarded) == normalize_path(target)
    assert normalize_target(forwarded) == forwarded
    assert forwarded.partition(b"?")[2] == query


def test_host_of():
    """Lower-case host without port; IPv6 keeps brackets."""
    assert host_of(b"Example.COM:443") == b"example.com"
    assert host_of(b"[2001:DB8::1]:8080") == b"[2001:db8::1]"


def test_many_routes_per_host_use_prefix_lookups():
    """Beyond a few routes per host the longest prefix is found by lookups: same answers."""
    entries = [("h.com", f"/p{i}/", i) for i in range(10)] + [("h.com", "/p3/deep", "deep"),
                                                             ("h.com", "/", "root")]
    table = RouteTable(entries)
    assert table.match(b"h.com", b"/p3/x") == 3 and table.match(b"h.com", b"/p3") == 3
    assert table.match(b"h.com", b"/p3/deep/er") == "deep"
    assert table.match(b"h.com", b"/p3/deeper") == 3
    assert table.match(b"h.com", b"/p33") == "root" and table.match(b"h.com", b"/") == "root"


def test_health_marks_down_after_max_fails_and_backs_off():
    """max_fails failures in a row -> DOWN with retry_at; failed probes double the wait up to
    max_backoff; a success brings it back and resets the counters."""
    health = Health(max_fails=3, backoff=1.0, max_backoff=5.0)
    assert not health.failed(10.0) and not health.failed(10.5)
    assert health.succeeded() is False and health.fails == 0   # a success in between resets
    assert [health.failed(11.0), health.failed(11.0), health.failed(11.0)] == [False, False, True]
    assert health.state is DOWN and health.retry_at == 12.0
    assert health.failed(11.5) is False                       # already down
    assert [health.probe_failed(12.0), health.probe_failed(14.0), health.probe_failed(18.0)] \
        == [2.0, 4.0, 5.0]
    assert health.retry_at == 23.0
    assert health.succeeded() is True and health.state is UP and health.backoff == 1.0


def test_disabled_health_never_goes_down():
    """A lone backend without checks is never marked down."""
    health = Health(max_fails=1, enabled=False)
    assert not any(health.failed(t) for t in range(10)) and health.up


class Member:
    """A backend stand-in: health, a pool state with has_capacity(), an outstanding count."""

    def __init__(self, name, capacity=True, load=0):
        self.name = name
        self.health = Health(max_fails=1)
        self.state = self
        self.capacity = capacity
        self.load = load

    def has_capacity(self):
        return self.capacity

    def __repr__(self):
        return self.name


def test_round_robin_skips_down_and_tried_backends():
    """Round robin over UP backends, never one already tried; None when none is left."""
    a, b, c = Member("a"), Member("b"), Member("c")
    group = Group([a, b, c])
    assert [group.pick() for _ in range(4)] == [a, b, c, a]
    b.health.failed(0.0)
    assert [group.pick() for _ in range(4)] == [c, a, c, a]
    assert group.pick(tried=[a]) is c and group.another([a]) is True
    assert group.pick(tried=[a, c]) is None and group.another([a, c]) is False
    a.health.failed(0.0)
    c.health.failed(0.0)
    assert group.pick() is None


def test_round_robin_prefers_a_backend_that_would_not_wait():
    """A backend whose pool is full is taken only when no other can take the request now."""
    a, b = Member("a", capacity=False), Member("b")
    group = Group([a, b])
    assert [group.pick() for _ in range(3)] == [b, b, b]
    b.capacity = False
    assert group.pick() in (a, b)


def test_least_outstanding():
    """The fewest requests in flight wins; ties rotate; down backends are skipped."""
    a, b, c = Member("a", load=5), Member("b", load=1), Member("c", load=1)
    group = Group([a, b, c], "least_outstanding", load=lambda m: m.load)
    assert {group.pick() for _ in range(4)} == {b, c}
    b.health.failed(0.0)
    assert group.pick() is c
    assert group.pick(tried=[c]) is a


def test_single_member_group():
    """One backend: it is the answer unless tried or down."""
    a = Member("a")
    group = Group([a])
    assert group.pick() is a and group.pick(tried=[a]) is None


def test_retry_after_is_the_next_probe():
    """Whole seconds until the earliest probe, at least 1."""
    a, b = Member("a"), Member("b")
    a.health.retry_at, b.health.retry_at = 14.2, 30.0
    assert Group([a, b]).retry_after(10.0) == 5
    assert Group([a, b]).retry_after(20.0) == 1


def test_exact_path_beats_the_trailing_slash_rule():
    """``/x`` and ``/x/`` both match "/x": the exact route wins, with few or many routes."""
    base = [(None, "/x", "exact"), (None, "/x/", "slash")]
    for extra in range(6):
        table = RouteTable(base + [(None, f"/other{i}", "o") for i in range(extra)])
        assert table.match(b"a", b"/x") == "exact"
        assert table.match(b"a", b"/x/") == table.match(b"a", b"/x/y") == "slash"


def _reference(prefixes, path):
    """The documented rule, by brute force: the route matching the most bytes of ``path``
    (``p`` matches ``path`` equal to it, under it on a segment boundary, or, ``p`` ending in
    ``/``, equal to ``p`` without it); an exact match before the trailing-slash rule."""
    best, best_rank = None, None
    for prefix in prefixes:
        if path == prefix:
            rank = (len(prefix), 1)
        elif path.startswith(prefix) and (prefix.endswith(b"/") or path[len(prefix)] == 0x2F):
            rank = (len(prefix), 1)
        elif prefix.endswith(b"/") and path == prefix[:-1]:
            rank = (len(path), 0)
        else:
            continue
        if best_rank is None or rank > best_rank:
            best, best_rank = prefix, rank
    return best


SEGMENT = st.sampled_from([b"a", b"b", b"ab", b"x"])
PREFIXES = st.lists(st.lists(SEGMENT, max_size=3).flatmap(
    lambda parts: st.sampled_from([b"/" + b"/".join(parts), b"/" + b"/".join(parts) + b"/"])
    .map(lambda p: p.replace(b"//", b"/"))), min_size=1, max_size=10, unique=True)
PATHS = st.lists(st.sampled_from([b"a", b"b", b"ab", b"x", b""]), max_size=4).map(
    lambda parts: b"/" + b"/".join(parts))


@given(PREFIXES, PATHS)
def test_scan_and_lookup_agree_with_the_documented_rule(prefixes, path):
    """Whatever the number of routes, the scan (few) and the lookups (many) give the route of
    README's rule: the longest matching prefix, on segment boundaries, exact before ``/x/``
    matching ``/x``."""
    paths = _Paths([(p, p) for p in prefixes])
    expected = _reference(prefixes, path)
    assert paths.scan(path) == expected
    assert paths.lookup(path) == expected


STRAY = st.lists(st.sampled_from([b"a", b"..", b"%", b"%2", b"%%", b"%65", b"%32", b"%2e",
                                  b"%45", b"%25", b"/", b"?"]),
                 max_size=10).map(lambda parts: b"/" + b"".join(parts))


@given(STRAY)
def test_what_the_gate_accepts_is_forwarded_as_a_fixed_point(target):
    """A stray ``%`` before an unreserved escape (``%2%65``: ``%``, ``2``, ``e``) must not turn
    into a new escape (``%2e``) once that escape is decoded: for every target the gate lets
    through, the forwarded target normalises to itself, so the backend (nginx decodes ``%2e``
    before it resolves dot segments) reads the path its route was chosen for."""
    from proxyd import events as ev, gate
    from proxyd.errors import Refused

    event = ev.RequestReceived(stream_id=1, headers=[(b":method", b"GET"), (b":path", target),
                                                     (b"Host", b"a")],
                               end_stream=True, http_version=b"1.1")
    try:
        request = gate.check_request(event, gate.HTTP1)
    except Refused:
        return
    forwarded = normalize_target(request.path)
    assert normalize_target(forwarded) == forwarded
    path = forwarded.partition(b"?")[0]
    assert normalize_path(path) == path == normalize_path(request.path)


def test_options_asterisk_matches_the_root_route_with_few_or_many_routes():
    """``*`` (OPTIONS) is routed as ``/``: the same route whether the host's ``/`` route is its
    only one (no path looked at) or one of several (scanned or looked up)."""
    for extra in range(6):
        entries = [("h.com", "/", "root")] + [("h.com", f"/p{i}", i) for i in range(extra)]
        table = RouteTable(entries + [(None, "/", "any")], default="default")
        assert table.match(b"h.com", b"*") == "root"
        assert table.match(b"other.org", b"*") == "any"
