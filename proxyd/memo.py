"""Bounded memos of pure functions' results: heads the gate accepted, heads the backend parser
parsed, heads the writer wrote.

Strategy: peers repeat their heads, and each of these is a pure function of its input, so a
repeat can be answered from a dictionary keyed by the input itself (a value, so nothing a peer
sends changes what an entry says). A :class:`Memo` is a ``dict`` (a lookup is ``dict.get``, at C
speed, on the hot path); :meth:`Memo.remember` keeps an entry only when its input is small, and
empties the memo when it is full (no LRU bookkeeping per request: the heads that recur fill it
again). So a memo holds at most ``max_entries`` inputs of at most ``max_bytes`` each, whatever
peers send. Callers keep only results worth repeating (never a refusal) and store immutable
values.
"""

from itertools import chain


class Memo(dict):
    """A bounded memo (see the module docstring)."""

    __slots__ = ("max_entries", "max_bytes")

    def __init__(self, max_entries=256, max_bytes=4096):
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def remember(self, key, value, size):
        """Keep ``value`` for ``key`` when ``size`` (the input's bytes) is within the bound."""
        if size > self.max_bytes:
            return
        if len(self) >= self.max_entries:
            self.clear()
        self[key] = value


def fields_size(fields):
    """Bytes of the names and values of ``fields`` (pairs of bytes)."""
    return sum(map(len, chain.from_iterable(fields)))
