"""HPACK (RFC 7541) for the HTTP/2 server codec: a lean encoder and a caching decoder.

Strategy, encoding (responses): a dict maps every (name, value) and every name in the static and
dynamic tables to its entry, so a field costs two dict lookups instead of the hpack library's
linear search; strings go out as plain literals (no Huffman coding: RFC 7541 §5.2 makes it the
encoder's choice, and it is the expensive part in Python). Fields are added to the dynamic table
(literal with incremental indexing), except ``set-cookie`` (never indexed: a secret must not be
guessable through the table) and values over ``MAX_INDEXED_VALUE`` bytes (they would only evict
useful entries). A whole response head that is encoded again while the table did not change
gives the same bytes, so the last few heads are cached.

Strategy, decoding (requests): the hpack library decodes (Huffman included). Clients repeat their
request heads; a block whose decoding did not touch the dynamic table decodes to the same fields
as long as the table is unchanged, so such blocks are cached with the table's generation (a
counter bumped whenever a decode changes the table: detected by holding the newest entry object
and the size limit, never by addresses). Any other block is decoded in full. The cache is
bounded.
"""

from collections import deque

from hpack import Decoder as _LibraryDecoder
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.table import HeaderTable

__all__ = ["Encoder", "Decoder", "HPACKError", "OversizedHeaderListError"]

ENTRY_OVERHEAD = 32
MAX_INDEXED_VALUE = 256
_NEVER_INDEXED = frozenset((b"set-cookie", b"authorization", b"proxy-authorization"))
_STATIC = HeaderTable.STATIC_TABLE  # 1-based in the RFC, 0-based here
_STATIC_FIELD = {}
_STATIC_NAME = {}
for _index, (_name, _value) in enumerate(_STATIC, 1):
    _STATIC_FIELD.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)
del _index, _name, _value
_FIRST_DYNAMIC = len(_STATIC) + 1
_INDEXED_BYTE = [bytes([0x80 | i]) for i in range(127)]


def _int(value, bits, first):
    """An HPACK integer (RFC 7541 §5.1) with ``bits`` prefix bits under the flags ``first``."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data):
    """A plain (not Huffman-coded) string literal."""
    return _int(len(data), 7, 0) + data


class Encoder:
    """HPACK encoder for one connection's response heads (see the module docstring).

    ``max_size`` is the dynamic table size the peer allows (its SETTINGS_HEADER_TABLE_SIZE);
    :meth:`set_max_size` follows changes of it with a dynamic table size update.
    """

    __slots__ = ("max_size", "_size", "_entries", "_inserted", "_by_field", "_by_name",
                 "_size_update", "_cache")

    def __init__(self, max_size=4096):
        self.max_size = max_size
        self._size = 0
        self._entries = deque()  # (name, value, size, number), newest first
        self._inserted = 0  # number of the newest entry (entries are numbered from 1)
        self._by_field = {}  # (name, value) -> number of the newest such entry
        self._by_name = {}  # name -> number of the newest entry with that name
        self._size_update = None
        self._cache = {}

    def set_max_size(self, size):
        """The peer changed SETTINGS_HEADER_TABLE_SIZE: use it from the next head on."""
        if size != self.max_size:
            self.max_size = size
            self._size_update = size
            self._evict(size)
            self._cache.clear()

    def _evict(self, limit):
        entries = self._entries
        while entries and self._size > limit:
            name, value, size, number = entries.pop()
            self._size -= size
            if self._by_field.get((name, value)) == number:
                del self._by_field[(name, value)]
            if self._by_name.get(name) == number:
                del self._by_name[name]

    def _index(self, number):
        return _FIRST_DYNAMIC + self._inserted - number

    def _add(self, name, value):
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.max_size:
            self._evict(0)  # RFC 7541 §4.4: the table empties, nothing is added
            return
        self._evict(self.max_size - size)
        self._inserted += 1
        number = self._inserted
        self._entries.appendleft((name, value, size, number))
        self._size += size
        self._by_field[(name, value)] = number
        self._by_name[name] = number

    def encode(self, headers):
        """The header block of ``headers`` (``(name, value)`` bytes pairs, names lower-case)."""
        key = tuple(headers)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == self._inserted and self._size_update is None:
            return cached[1]
        parts = []
        update = self._size_update
        if update is not None:
            parts.append(_int(update, 5, 0x20))
            self._size_update = None
        inserted = self._inserted
        for field in headers:
            index = _STATIC_FIELD.get(field)
            if index is not None:
                parts.append(_INDEXED_BYTE[index] if index < 127 else _int(index, 7, 0x80))
                continue
            number = self._by_field.get(field)
            if number is not None:
                parts.append(_int(self._index(number), 7, 0x80))
                continue
            name, value = field
            index = _STATIC_NAME.get(name)
            if index is None:
                number = self._by_name.get(name)
                if number is not None:
                    index = self._index(number)
            if name in _NEVER_INDEXED or len(value) > MAX_INDEXED_VALUE:
                flags, bits = (0x10 if name in _NEVER_INDEXED else 0x00), 4
                add = False
            else:
                flags, bits, add = 0x40, 6, True
            if index is not None:
                parts.append(_int(index, bits, flags))
            else:
                parts.append(bytes((flags,)) + _string(name))
            parts.append(_string(value))
            if add:
                self._add(name, value)
        block = b"".join(parts)
        if self._inserted == inserted and update is None:  # same table: same head, same bytes
            if len(self._cache) >= 8:
                self._cache.clear()
            self._cache[key] = (inserted, block)
        return block


class Decoder:
    """The hpack library's decoder behind a cache of blocks that leave the table unchanged."""

    __slots__ = ("_decoder", "_table", "_generation", "_cache")

    MAX_CACHED = 64

    def __init__(self, max_header_list_size=65536, max_table_size=4096):
        self._decoder = _LibraryDecoder(max_header_list_size=max_header_list_size)
        self._decoder.max_allowed_table_size = max_table_size
        self._table = self._decoder.header_table
        self._generation = 0
        self._cache = {}

    @property
    def max_header_list_size(self):
        """The largest decoded header list accepted (OversizedHeaderListError beyond)."""
        return self._decoder.max_header_list_size

    def decode(self, block):
        """``[(name, value)]`` of a header block (raises hpack's HPACKError subclasses)."""
        cached = self._cache.get(block)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        table = self._table
        entries = table.dynamic_entries
        newest = entries[0] if entries else None
        limit = table.maxsize
        headers = self._decoder.decode(block, raw=True)
        entries = table.dynamic_entries
        if (entries[0] if entries else None) is not newest or table.maxsize != limit:
            self._generation += 1
            self._cache.clear()
        else:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[bytes(block)] = (self._generation, headers)
        return headers
