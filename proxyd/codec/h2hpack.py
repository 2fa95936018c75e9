"""HPACK (RFC 7541) for both sides of the HTTP/2 codec: a lean encoder and a caching decoder.

Strategy, encoding (response heads, and request heads toward HTTP/2 backends): a dict maps every
(name, value) and every name in the static and dynamic tables to its entry, so a field costs two
dict lookups instead of the hpack library's linear search; strings go out as plain literals (no
Huffman coding: RFC 7541 §5.2 makes it the encoder's choice, and it is the expensive part in
Python). Fields are added to the dynamic table (literal with incremental indexing), except
``set-cookie`` and credentials (never indexed: a secret must not be guessable through the table;
on a backend connection, whose table the heads of many clients share, cookies too)
and values over ``MAX_INDEXED_VALUE`` bytes (they would only evict useful entries). A whole head
that is encoded again while the table did not change gives the same bytes, so the last few heads
are cached.

Strategy, decoding (request heads from clients, response heads from backends): our own decoder;
only the Huffman code itself is the hpack library's (``decode_huffman``, which checks padding and
EOS), behind a bounded per-connection cache of coded strings. Peers repeat their heads, so whole
blocks are cached too, in two kinds: a block that references no dynamic table entry decodes to
the same fields whatever the table holds, so it is cached with the fields it inserts, which a hit
inserts again (nginx sends every response head this way: literals with incremental indexing, the
same bytes again and again); a block that references the table but changes nothing decodes to
the same fields while the table is unchanged, so it is cached with the table's generation (a
counter bumped on every change; clients such as nghttp2 repeat request heads this way). Any
other block is decoded in full. Both caches are bounded (entries, and bytes per entry), and per
connection: nothing one peer sends can be timed by another. A list over the header list bound
is decoded to the end of its block all the same (its fields past the bound are dropped): the
table then still matches the peer's, and only that stream need fail.
"""

from collections import deque

from hpack.exceptions import (
    HPACKDecodingError, HPACKError, InvalidTableIndex, InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["Encoder", "Decoder", "HPACKError", "OversizedHeaderListError"]

ENTRY_OVERHEAD = 32
MAX_INDEXED_VALUE = 256
_NEVER_INDEXED = frozenset((b"set-cookie", b"authorization", b"proxy-authorization"))
#: What an encoder whose table carries the heads of many clients (a backend connection in
#: bridge or client mode) never indexes: the credentials, and cookies (RFC 7541 §7.1: an
#: indexed cookie is a compression oracle for the other clients' guesses, and an intermediary
#: must not index what a client sent never-indexed, §7.1.3).
SHARED_NEVER_INDEXED = _NEVER_INDEXED | {b"cookie"}
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
                 "_size_update", "_cache", "_never")

    def __init__(self, max_size=4096, never_indexed=_NEVER_INDEXED):
        self.max_size = max_size
        self._never = never_indexed  # names sent as never-indexed literals
        self._size = 0
        self._entries = deque()  # (name, value, size, number), newest first
        # The last number handed out: entries are numbered from 1, and an emptying by an
        # oversized field takes one too; the block cache's version of the table.
        self._inserted = 0
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
            # The table changed: a number of its own, so no block cached before (whose indexes
            # name entries now gone) matches ``_inserted`` again; no entry holds it.
            self._inserted += 1
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
        never = self._never
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
            if name in never or len(value) > MAX_INDEXED_VALUE:
                flags, bits = (0x10 if name in never else 0x00), 4
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
    """HPACK decoder (RFC 7541) with a cache of whole blocks and of Huffman-coded strings.

    ``max_table_size`` is the dynamic table size we allow (our SETTINGS_HEADER_TABLE_SIZE): a
    size update above it is an error. Errors are hpack's exception classes (all HPACKError).
    A list over ``max_header_list_size`` raises OversizedHeaderListError only once the whole
    block was processed (the table is in step: the codec may fail just that stream); any
    other error leaves the table unusable (a connection error).
    """

    __slots__ = ("max_header_list_size", "max_table_size", "_limit", "_size", "_entries",
                 "_generation", "_cache", "_strings")

    MAX_CACHED = 64  # whole blocks remembered
    MAX_CACHED_BLOCK = 2048  # bytes: bigger blocks are decoded every time
    MAX_STRINGS = 128  # Huffman-coded strings remembered (each up to MAX_CACHED_STRING bytes)
    MAX_CACHED_STRING = 256

    def __init__(self, max_header_list_size=65536, max_table_size=4096):
        self.max_header_list_size = max_header_list_size
        self.max_table_size = max_table_size
        self._limit = max_table_size  # the table's current size limit (peer's size updates)
        self._size = 0
        self._entries = deque()  # (name, value), newest first
        self._generation = 0  # bumped whenever the table changes
        self._cache = {}  # block -> (generation or None, headers, fields inserted)
        self._strings = {}  # Huffman-coded bytes -> decoded bytes

    def decode(self, block):
        """``[(name, value)]`` of a header block (raises hpack's HPACKError subclasses)."""
        if type(block) is not bytes:
            block = bytes(block)
        cached = self._cache.get(block)
        if cached is not None:
            generation, headers, inserted = cached
            if generation is None:  # no dynamic table reference: replay its insertions
                for name, value in inserted:
                    self._add(name, value)
                return headers
            if generation == self._generation:
                return headers
        generation = self._generation
        headers, inserted, referenced, resized = self._decode(block)
        if len(block) <= self.MAX_CACHED_BLOCK and not resized:
            if not referenced:
                entry = (None, headers, inserted)
            elif not inserted:
                entry = (generation, headers, ())
            else:
                return headers
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[block] = entry
        return headers

    def _decode(self, block):
        """Decode in full: (headers, fields inserted, referenced the dynamic table, resized)."""
        headers = []
        inserted = []
        referenced = resized = False
        total = 0
        pos = 0
        end = len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field (§6.1)
                index, pos = _read_int(block, pos, 0x7F)
                if 0 < index < _FIRST_DYNAMIC:
                    field = _STATIC[index - 1]
                else:
                    field = self._dynamic(index)
                    referenced = True
                name, value = field
            elif byte & 0x40:  # literal with incremental indexing (§6.2.1)
                name, value, pos, by_index = self._literal(block, pos, 0x3F)
                referenced = referenced or by_index
                self._add(name, value)
                inserted.append((name, value))
            elif byte & 0x20:  # dynamic table size update (§6.3), only before any field
                if headers:
                    raise HPACKDecodingError("table size update after a field")
                size, pos = _read_int(block, pos, 0x1F)
                if size > self.max_table_size:
                    raise InvalidTableSizeError(f"table size {size} over {self.max_table_size}")
                self._limit = size
                self._evict(size)
                self._generation += 1
                resized = True
                continue
            else:  # literal without indexing or never indexed (§6.2.2, §6.2.3)
                name, value, pos, by_index = self._literal(block, pos, 0x0F)
                referenced = referenced or by_index
            headers.append((name, value))
            total += len(name) + len(value) + ENTRY_OVERHEAD
            if total > self.max_header_list_size:
                self._skip(block, pos)
                raise OversizedHeaderListError(
                    f"header list over {self.max_header_list_size} bytes")
        return headers, inserted, referenced, resized

    def _skip(self, block, pos):
        """The rest of a block whose list went over the bound: every instruction is still
        processed (RFC 9113 §4.3: a block is decompressed even when it is discarded), so the
        dynamic table stays in step with the peer's encoder, but no field is kept; a malformed
        instruction still raises its decoding error. The work is bounded by the block's bytes,
        which the codec bounds."""
        end = len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field: only checked
                index, pos = _read_int(block, pos, 0x7F)
                if not 0 < index < _FIRST_DYNAMIC:
                    self._dynamic(index)
            elif byte & 0x40:  # literal with incremental indexing: the table takes it
                name, value, pos, _ = self._literal(block, pos, 0x3F)
                self._add(name, value)
            elif byte & 0x20:
                raise HPACKDecodingError("table size update after a field")
            else:
                pos = self._literal(block, pos, 0x0F)[2]

    def _literal(self, block, pos, mask):
        """A literal field: (name, value, position after it, name taken from the dynamic
        table)."""
        index, pos = _read_int(block, pos, mask)
        by_index = False
        if index:
            if index < _FIRST_DYNAMIC:
                name = _STATIC[index - 1][0]
            else:
                name = self._dynamic(index)[0]
                by_index = True
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos, by_index

    def _string(self, block, pos):
        """A string literal (§5.2), Huffman-coded or not: (bytes, position after it)."""
        if pos >= len(block):
            raise HPACKDecodingError("truncated header block")
        huffman = block[pos] & 0x80
        length, pos = _read_int(block, pos, 0x7F)
        end = pos + length
        if end > len(block):
            raise HPACKDecodingError("truncated header block")
        data = block[pos:end]
        if huffman:
            strings = self._strings
            decoded = strings.get(data)
            if decoded is None:
                decoded = decode_huffman(data)
                if length <= self.MAX_CACHED_STRING:
                    if len(strings) >= self.MAX_STRINGS:
                        strings.clear()
                    strings[data] = decoded
            data = decoded
        return data, end

    def _dynamic(self, index):
        """The dynamic table's field at HPACK ``index`` (62 is the newest)."""
        offset = index - _FIRST_DYNAMIC
        if index == 0 or offset >= len(self._entries):
            raise InvalidTableIndex(f"no table entry {index}")
        return self._entries[offset]

    def _add(self, name, value):
        """Insert a field (§4.4): evict the oldest until it fits; too big: the table empties.

        The eviction is inline and the generation moves once per insertion: some peers (nginx)
        index every field of every response, so this runs several times per response."""
        size = len(name) + len(value) + ENTRY_OVERHEAD
        self._generation += 1
        limit = self._limit
        entries = self._entries
        if size > limit:
            entries.clear()
            self._size = 0
            return
        total = self._size + size
        while total > limit:
            old_name, old_value = entries.pop()
            total -= len(old_name) + len(old_value) + ENTRY_OVERHEAD
        entries.appendleft((name, value))
        self._size = total

    def _evict(self, limit):
        """Evict the oldest fields until the table's size is at most ``limit`` (the caller
        moves the generation)."""
        entries = self._entries
        while self._size > limit:
            name, value = entries.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD


def _read_int(block, pos, mask):
    """An HPACK integer (§5.1) whose prefix is ``mask`` of the byte at ``pos``: (value, next
    position). At most 2**35: no field, table or index comes close."""
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HPACKDecodingError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HPACKDecodingError("integer too long")
