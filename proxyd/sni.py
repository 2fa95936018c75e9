"""Which certificates of a listener answer a TLS server name (SNI): pure name matching.

Strategy: the network layer reads each configured certificate's DNS names (subjectAltName DNS
entries, the subject CN only when there is no subjectAltName) and its key type, and hands them
here in configuration order. :class:`SniTable` decides once, at load time, which certificates
each name gets, so a handshake costs one or two dict lookups:

* names match as browsers match them (RFC 6125 §6.4 as Chromium and Firefox apply it): case
  does not matter, a trailing dot is ignored, and a wildcard is only a whole left-most label
  (``*.example.com``) that stands for exactly one non-empty label (``a.example.com``, not
  ``example.com`` nor ``a.b.example.com``), with at least two labels after it (no ``*.com``)
  and never for an IDN label (``xn--...``). Other wildcard forms (``f*.example.com``) match
  nothing.
* a server name gets, for each key type (``rsa``, ``ec``, ...), the first certificate of that
  type that names it exactly, else the first whose wildcard covers it. Several key types form
  one *group* (one TLS context holding each of them), and OpenSSL then picks among them by the
  client's signature algorithms: an ECDSA and an RSA certificate for the same name coexist.
* no server name, or a name no certificate covers, gets the default group: the first
  certificate, with the first certificate of each other key type whose names are exactly the
  same (an RSA twin of an ECDSA default also answers clients without SNI).

A group is a tuple of certificate indices (ascending); :attr:`SniTable.groups` lists every
group some name (or the default) can get, and :meth:`SniTable.unused` the certificates no name
can ever reach (a configuration mistake the loader reports).
"""

__all__ = ["SniTable", "matches", "normalise", "wildcard_parent"]


def normalise(name):
    """A DNS name (str or bytes) in the form names are compared in, or None if it is no name.

    Lower-case ASCII, one trailing dot removed; None for empty, non-ASCII or space-containing
    input (a server name is never one of those, RFC 6066 §3).
    """
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif not isinstance(name, str) or not name.isascii():
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or any(c.isspace() for c in name) or ".." in name or name.startswith("."):
        return None
    return name


def wildcard_parent(pattern):
    """``"example.com"`` for a usable wildcard pattern ``"*.example.com"``; None otherwise.

    ``pattern`` is normalised; a pattern with a ``*`` anywhere else, or fewer than two labels
    after the wildcard, gives None.
    """
    if not pattern.startswith("*."):
        return None
    parent = pattern[2:]
    if "*" in parent or parent.count(".") < 1:
        return None
    return parent


def _first_label_can_be_wild(host):
    """The parent domain of ``host`` if a wildcard may stand for its first label, else None."""
    label, dot, parent = host.partition(".")
    if not dot or not label or not parent or label.startswith("xn--") or "*" in label:
        return None
    return parent


def matches(pattern, host):
    """True when certificate name ``pattern`` covers server name ``host`` (browser rules)."""
    pattern, host = normalise(pattern), normalise(host)
    if pattern is None or host is None or "*" in host:
        return False
    if pattern == host and "*" not in pattern:
        return True
    parent = wildcard_parent(pattern)
    return parent is not None and _first_label_can_be_wild(host) == parent


class SniTable:
    """Server name -> group of certificate indices, decided at load time.

    ``certificates`` is a sequence of ``(names, key_type)`` in configuration order, ``names``
    the certificate's DNS names (any case), ``key_type`` a label such as ``"rsa"`` or ``"ec"``.
    """

    def __init__(self, certificates):
        if not certificates:
            raise ValueError("a TLS listener needs at least one certificate")
        self._types = [key_type for _names, key_type in certificates]
        exact = {}      # name -> {key type: first index}
        wildcard = {}   # parent -> {key type: first index}
        for index, (names, key_type) in enumerate(certificates):
            for raw in names:
                name = normalise(raw)
                if name is None:
                    continue
                parent = wildcard_parent(name)
                if parent is not None:
                    wildcard.setdefault(parent, {}).setdefault(key_type, index)
                elif "*" not in name:
                    exact.setdefault(name, {}).setdefault(key_type, index)
        self._exact = {}
        for name, by_type in exact.items():
            parent = _first_label_can_be_wild(name)
            merged = dict(wildcard.get(parent, {})) if parent is not None else {}
            merged.update(by_type)  # an exact name beats a wildcard of the same key type
            self._exact[name] = _group(merged)
        self._wildcard = {parent: _group(by_type) for parent, by_type in wildcard.items()}
        first = {normalise(n) for n in certificates[0][0]} - {None}
        default = {self._types[0]: 0}
        for index, (names, key_type) in enumerate(certificates):
            if key_type not in default and {normalise(n) for n in names} - {None} == first:
                default[key_type] = index
        self.default = _group(default)
        self.groups = tuple(sorted({self.default, *self._exact.values(),
                                    *self._wildcard.values()}))

    def choose(self, server_name):
        """The group for a server name (str, bytes or None: no SNI)."""
        if server_name is None:
            return self.default
        name = normalise(server_name)
        if name is None:
            return self.default
        group = self._exact.get(name)
        if group is not None:
            return group
        parent = _first_label_can_be_wild(name)
        if parent is not None:
            group = self._wildcard.get(parent)
            if group is not None:
                return group
        return self.default

    def unused(self):
        """Indices of the certificates that no server name (nor the default) can get."""
        used = {index for group in self.groups for index in group}
        return [index for index in range(len(self._types)) if index not in used]


def _group(by_type):
    return tuple(sorted(by_type.values()))
