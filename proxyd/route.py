"""Routing and balancing: host + path -> route; route -> a healthy backend of its group (no I/O).

Strategy: a :class:`RouteTable` is built once per configuration; :meth:`RouteTable.match` is on
every request's path, so it costs one dict lookup for the common cases: a table with only a
default route answers at once, an exact host is a dict lookup, and only wildcard hosts walk a
short list (longest suffix first). Within a host, routes are kept longest path first.

Precedence (checked against nghttpx's pattern rules, ``--backend`` "pattern"):

1. the host: an exact host beats a ``*.suffix`` wildcard, a longer wildcard beats a shorter one,
   and any of them beats a route without host. As in nghttpx, a wildcard needs at least one more
   label (``*.example.com`` does not match ``example.com``) and the host is compared
   lower-case, port removed (nghttpx also ignores the port);
2. then the path: the longest matching prefix of the host class that has one wins; if no route
   of the best host class matches the path, the next class is tried (exact, wildcards, any host),
   as nghttpx falls back to its path-only patterns;
3. nothing matched: the default route (top-level ``backends:``), else 404 (``no_route``).

Paths differ from nghttpx on purpose: DESIGN fixes ``path`` as a prefix, so ``/api`` is a prefix
too (nghttpx: exact unless it ends with ``/``), on segment boundaries (``/api`` matches ``/api``,
``/api/x`` and ``/api?q``, not ``/apix``); as in nghttpx, ``/api/`` also matches ``/api``. The
request path is matched after the normalisation nghttpx applies (query dropped, percent-encoded
unreserved characters decoded, the hex digits of the other escapes upper-cased, repeated
slashes merged, dot segments removed), so ``/public/../admin`` is routed as ``/admin``, and, as nghttpx does, that
normalised path is what the backend receives (:func:`normalize_target`, the query kept as
sent): a backend never sees a path other than the one its route was chosen for
(``/admin/../public`` routed as ``/public`` but read as ``/admin/...`` by an app that routes on
the raw path). Only unreserved characters are decoded (``%2F``, ``%25`` and every other
reserved or non-ASCII escape stay encoded, written in upper case: ``%2f`` is ``%2F``, so a
route written ``/caf%C3%A9/`` gets ``/caf%c3%a9/`` too, which every backend decodes alike), so
normalising a normalised path changes nothing; that needs every ``%`` to start an escape
(``%2%65`` would decode to ``%2e``), which the gate ensures
(:func:`proxyd.gate.check_request`). ``OPTIONS *`` is routed as ``/`` (nghttpx routes any path
not starting with ``/`` so), and forwarded as ``*``.

Health (per backend of a group, :class:`Health`)::

          max_fails failed connects (or checks) in a row
     UP ------------------------------------------------> DOWN --(probe due)--> probe
      ^                                                    ^                       |
      +------------------- probe or check succeeds --------+---- probe fails ------+
                                                          (backoff doubled, capped)

A group never sends a request to a DOWN backend while an UP one exists; when all are DOWN the
request is answered 503 (``no_healthy_backend``) with Retry-After. A group of one backend without
active checks never marks it down (there is nowhere else to go; the 502 says what happened).
Balancing: round robin over the UP backends (preferring one that would not have to wait), or the
fewest outstanding requests (ties broken round robin).
"""

import re

__all__ = ["RouteTable", "Health", "Group", "normalize_path", "normalize_target", "host_of", "UP",
           "DOWN"]

UP, DOWN = "up", "down"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = b"0123456789abcdefABCDEF"


def host_of(authority):
    """The lower-case host of ``host[:port]`` bytes (IPv6 keeps its brackets)."""
    if authority[:1] == b"[":
        end = authority.find(b"]")
        host = authority[:end + 1] if end > 0 else authority
    else:
        colon = authority.find(b":")
        host = authority if colon < 0 else authority[:colon]
    host = host.lower()
    return host[:-1] if host[-1:] == b"." else host


def _decode_unreserved(path):
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            value = int(path[i + 1:i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
            else:  # kept, in the normal form: upper-case hex (RFC 3986 §6.2.2.1)
                out += b"%%%02X" % value
            i += 3
            continue
        out.append(c)
        i += 1
    return bytes(out)


_SLASHES = re.compile(rb"//+")


def normalize_path(target):
    """The path of a request target as routing sees it (see the module docstring)."""
    # Membership of an int is a memchr (~35 ns); of a bytes needle ten times that (~0.2 µs,
    # the price of merging slashes).
    if 0x3F not in target and 0x25 not in target and 0x2E not in target \
            and b"//" not in target:
        return target  # no query, no escape, no dot segment, no repeated slash: the common case
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    if b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if 0x25 in path:
        path = _decode_unreserved(path)
    if 0x2E in path and b"/." in path:
        segments = []
        for segment in path.split(b"/")[1:]:
            if segment == b"..":
                if segments:
                    segments.pop()
            elif segment != b".":
                segments.append(segment)
        tail = b"/" if path.endswith((b"/.", b"/..")) else b""
        path = b"/" + b"/".join(segments) + (tail if segments else b"")
    return path


def normalize_target(target):
    """The request target forwarded to the backend: :func:`normalize_path` of its path, then its
    query (``?`` and after) exactly as sent; ``target`` itself when nothing changes."""
    if 0x3F not in target:
        return normalize_path(target)
    q = target.find(b"?")
    path = target[:q]
    normal = normalize_path(path)
    return target if normal == path else normal + target[q:]


class _Paths:
    """The routes of one host class, longest prefix first (see ``find``)."""

    __slots__ = ("items", "by_prefix", "root", "find")

    def __init__(self, items):
        self.items = sorted(items, key=lambda item: -len(item[0]))
        self.by_prefix = dict(reversed(self.items))  # the first of equal prefixes, as the scan
        self.root = self.by_prefix.get(b"/") if len(self.items) == 1 else None
        # find(path): the value of the longest prefix of ``path`` (segment-aware), or None.
        # "Longest" counts the bytes of ``path`` a prefix matched: ``/x/`` matching ``/x`` (the
        # trailing-slash rule) matched two, as ``/x`` does, and the exact ``/x`` wins. A few
        # routes are scanned, more are looked up: the same answer (a property test checks it).
        self.find = self.scan if len(self.items) <= 4 else self.lookup

    def scan(self, path):
        """``find`` by a scan of the prefixes, longest first."""
        for prefix, value in self.items:
            if path.startswith(prefix):
                if prefix[-1:] == b"/" or len(path) == len(prefix) \
                        or path[len(prefix)] == 0x2F:
                    return value
            elif prefix[-1:] == b"/" and path == prefix[:-1]:
                # Only the trailing-slash rule: the exact path, if it is a route, comes first.
                return self.by_prefix.get(path, value)
        return None

    def lookup(self, path):
        """``find`` by lookups of the candidate prefixes, longest first (two per segment)."""
        by_prefix = self.by_prefix
        found = by_prefix.get(path)
        if found is None:
            found = by_prefix.get(path + b"/")
        end = len(path)
        while found is None and end > 0:
            end = path.rfind(b"/", 0, end)
            if end < 0:
                break
            found = by_prefix.get(path[:end + 1])
            if found is None and end:
                found = by_prefix.get(path[:end])
        return found


class RouteTable:
    """``(host pattern or None, path prefix, value)`` entries -> :meth:`match`."""

    __slots__ = ("default", "exact", "wildcards", "anyhost", "only_default")

    def __init__(self, entries, default=None):
        self.default = default
        exact, wild, anyhost = {}, {}, []
        for host, prefix, value in entries:
            item = (prefix.encode("latin-1"), value)
            if host is None:
                anyhost.append(item)
            elif host.startswith("*."):
                wild.setdefault(host[1:].encode("latin-1"), []).append(item)
            else:
                exact.setdefault(host.encode("latin-1"), []).append(item)
        self.exact = {host: _Paths(items) for host, items in exact.items()}
        self.wildcards = {suffix: _Paths(items) for suffix, items in wild.items()}
        self.anyhost = _Paths(anyhost) if anyhost else None
        self.only_default = not entries

    def match(self, authority, target):
        """The value of the route for a request (authority and target bytes), else the default
        (None when there is none: 404)."""
        if self.only_default:
            return self.default
        if target == b"*":  # OPTIONS *: the server's root, as its only "/" route would get it
            target = b"/"
        host = host_of(authority)
        paths = self.exact.get(host)
        if paths is not None:
            if paths.root is not None:  # the host's one route is "/": no path to look at
                return paths.root
            found = paths.find(normalize_path(target))
            if found is not None:
                return found
        path = None
        if self.wildcards:
            dot = host.find(b".")
            while dot > 0:  # the host's own suffixes, longest first: one lookup each
                paths = self.wildcards.get(host[dot:])
                if paths is not None:
                    if paths.root is not None:
                        return paths.root
                    if path is None:
                        path = normalize_path(target)
                    found = paths.find(path)
                    if found is not None:
                        return found
                dot = host.find(b".", dot + 1)
        if self.anyhost is not None:
            if self.anyhost.root is not None:
                return self.anyhost.root
            found = self.anyhost.find(normalize_path(target) if path is None else path)
            if found is not None:
                return found
        return self.default


class Health:
    """The health of one backend in a group (see the module docstring); time is passed in."""

    __slots__ = ("state", "fails", "max_fails", "backoff", "base_backoff", "max_backoff",
                 "retry_at", "enabled")

    def __init__(self, max_fails=3, backoff=1.0, max_backoff=30.0, enabled=True):
        self.state = UP
        self.fails = 0
        self.max_fails = max_fails
        self.base_backoff = self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_at = 0.0
        self.enabled = enabled

    @property
    def up(self):
        """True while requests may go to this backend."""
        return self.state is UP

    def failed(self, now):
        """A connect (or a check) failed; True when this marked the backend down now."""
        if not self.enabled:
            return False
        if self.state is DOWN:
            return False
        self.fails += 1
        if self.fails < self.max_fails:
            return False
        self.state = DOWN
        self.backoff = self.base_backoff
        self.retry_at = now + self.backoff
        return True

    def succeeded(self):
        """A connect, response or check succeeded; True when this brought the backend back."""
        self.fails = 0
        if self.state is DOWN:
            self.state = UP
            self.backoff = self.base_backoff
            return True
        return False

    def probe_failed(self, now):
        """A recovery probe failed: stay down, wait twice as long (capped); returns the wait."""
        self.backoff = min(self.backoff * 2, self.max_backoff)
        self.retry_at = now + self.backoff
        return self.backoff


class Group:
    """The backends of one route and how a request picks one.

    ``members`` are objects with a ``health`` (:class:`Health`) and a pool ``state`` whose
    ``has_capacity()`` round robin prefers (as before groups existed); ``load(member)`` gives the
    outstanding requests of a member for ``least_outstanding``.
    """

    __slots__ = ("members", "size", "balance", "load", "_next")

    def __init__(self, members, balance="round_robin", load=None):
        self.members = list(members)
        self.size = len(self.members)
        self.balance = balance
        self.load = load
        self._next = 0

    def pick(self, tried=()):
        """The backend for a request that already tried ``tried``; None when none is up."""
        members = self.members
        if self.size == 1:
            only = members[0]
            return only if only.health.state is UP and only not in tried else None
        if self.balance == "least_outstanding":
            return self._least(tried)
        fallback = None
        for _ in range(self.size):
            member = members[self._next]
            self._next = (self._next + 1) % self.size
            if member in tried or member.health.state is not UP:
                continue
            if member.state.has_capacity():
                return member
            fallback = fallback or member
        return fallback

    def _least(self, tried):
        best, best_load = None, None
        start = self._next
        self._next = (self._next + 1) % self.size
        for i in range(self.size):
            member = self.members[(start + i) % self.size]
            if member in tried or member.health.state is not UP:
                continue
            load = self.load(member)
            if best is None or load < best_load:
                best, best_load = member, load
        return best

    def another(self, tried):
        """True when a backend not in ``tried`` is up (a failed request may move there)."""
        return any(m.health.state is UP and m not in tried for m in self.members)

    def retry_after(self, now):
        """Whole seconds (>= 1) until the next probe of a down backend (for Retry-After)."""
        due = min((m.health.retry_at for m in self.members), default=now)
        wait = int(due - now + 0.999)
        return wait if wait > 1 else 1
