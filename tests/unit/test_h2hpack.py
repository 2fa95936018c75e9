"""proxyd.codec.h2hpack's decoder against the hpack library as the oracle (RFC 7541).

Header lists are encoded by hpack's own Encoder (Huffman on or off, the dynamic table in use,
table size changes, never-indexed fields) and by hand the way nginx writes response heads;
decoded by our Decoder and by hpack's Decoder, block after block on one connection, the results
must be the same, including after the block caches answered. Malformed blocks must raise
HPACKError subclasses (the codecs turn them into COMPRESSION_ERROR), never anything else.
"""

import os

import pytest
from hpack import Decoder as LibraryDecoder
from hpack import Encoder as LibraryEncoder
from hpack.exceptions import HPACKError, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd.codec.h2hpack import Decoder, Encoder

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "60"))


def huffman_literal(data):
    """A Huffman-coded string literal (lengths below 127)."""
    coded = HUFFMAN.encode(data)
    return bytes([0x80 | len(coded)]) + coded


def nginx_head(date):
    """A response head the way nginx encodes it: literals with incremental indexing, static
    name indexes, Huffman-coded values, no dynamic table reference."""
    return (b"\x88" + b"\x76" + huffman_literal(b"nginx/1.22.1")
            + b"\x61" + huffman_literal(date) + b"\x5f" + huffman_literal(b"text/html")
            + b"\x40" + huffman_literal(b"x-custom") + huffman_literal(b"v"))


def library_decode(decoder, block):
    """hpack's decoding, as plain (name, value) bytes tuples."""
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def test_nginx_heads_are_cached_and_keep_the_table_in_step():
    """Repeated nginx heads hit the block cache, and the insertions a hit replays keep the
    dynamic table identical to the library's: a later block that references the table decodes
    the same."""
    ours, theirs = Decoder(), LibraryDecoder()
    blocks = [nginx_head(b"Sun, 06 Dec 2026 03:00:0%d GMT" % (i // 3)) for i in range(9)]
    for block in blocks:
        assert ours.decode(block) == library_decode(theirs, block)
    assert len(ours._cache) == 3
    # Indexes 62..66 now name the newest entries; reference each of them.
    probe = bytes([0x80 | i for i in range(62, 67)])
    assert ours.decode(probe) == library_decode(theirs, probe)
    assert ours.decode(probe) == library_decode(theirs, probe)  # cached by generation


def test_a_cached_block_with_table_references_follows_the_table():
    """A block referencing entry 62 is cached only while the table is unchanged."""
    ours = Decoder()
    ours.decode(b"\x40\x01a\x011")  # a: 1 at 62
    assert ours.decode(b"\xbe") == [(b"a", b"1")]
    ours.decode(b"\x40\x01b\x012")  # b: 2 at 62
    assert ours.decode(b"\xbe") == [(b"b", b"2")]


def test_a_size_update_that_evicts_invalidates_cached_blocks():
    """A size update (alone in its block) that empties the table: a block cached while it
    referenced entry 62 must not answer from the cache any more (the entry is gone)."""
    ours = Decoder()
    ours.decode(b"\x40\x01a\x011")
    assert ours.decode(b"\xbe") == [(b"a", b"1")]
    assert ours.decode(b"\x20") == []  # table size 0: everything evicted
    with pytest.raises(HPACKError):
        ours.decode(b"\xbe")


def test_insertions_evict_the_oldest_like_the_library():
    """A small table where every insertion evicts: ours and the library's agree on what each
    index names after each block (the eviction inside an insertion)."""
    ours, theirs = Decoder(), LibraryDecoder()
    resize = b"\x3f\x31"  # size update to 80 bytes: two 40-byte entries at most
    assert ours.decode(resize) == library_decode(theirs, resize)
    for i in range(6):
        insert = b"\x40\x01%c\x06value%d" % (ord("a") + i, i)  # 1 + 6 + 32 = 39 bytes
        assert ours.decode(insert) == library_decode(theirs, insert)
        probe = b"\xbe\xbf" if i else b"\xbe"
        assert ours.decode(probe) == library_decode(theirs, probe)
    with pytest.raises(HPACKError):
        ours.decode(b"\xc0")  # a third entry never fits


@pytest.mark.parametrize("block", [
    b"\x80",                      # index 0
    b"\xbe",                      # dynamic index 62 with an empty table
    b"\xff\x80",                  # truncated integer
    b"\xff\xff\xff\xff\xff\xff\x01",  # integer too long
    b"\x40\x05ab",                # truncated name
    b"\x40\x01a\x05b",            # truncated value
    b"\x41",                      # name index but no value
    b"\x40\x81\xff\x01a",         # invalid Huffman (EOS padding of 8 bits)
    b"\x88\x20",                  # size update after a field
    b"\x3f\xe2\x1f",              # size update to 4097 (above what we allow)
    b"\x7f\x80\x80\x80\x01\x01a",  # name index far beyond the table
])
def test_malformed_blocks_raise_hpack_errors(block):
    """Malformed blocks raise HPACKError subclasses, and the library agrees they are malformed."""
    with pytest.raises(HPACKError):
        Decoder().decode(block)
    with pytest.raises(HPACKError):
        LibraryDecoder().decode(block, raw=True)


def test_header_list_size_and_table_size_limits():
    """A list over max_header_list_size raises OversizedHeaderListError; a size update within the
    limit shrinks the table (evicting), above it raises InvalidTableSizeError."""
    with pytest.raises(OversizedHeaderListError):
        Decoder(max_header_list_size=40).decode(b"\x40\x01a\x0a0123456789")
    ours = Decoder()
    ours.decode(b"\x40\x01a\x011\x40\x01b\x012")
    assert ours.decode(b"\x3f\x11") == []  # size update to 48
    assert ours.decode(b"\xbe") == [(b"b", b"2")]  # only the newest entry (34 bytes) fits
    with pytest.raises(HPACKError):
        ours.decode(b"\xbf")
    with pytest.raises(InvalidTableSizeError):
        Decoder(max_table_size=100).decode(b"\x3f\x46")  # 101


_names = st.sampled_from([b"content-type", b"x-a", b"set-cookie", b"date", b"etag", b"server",
                          b":status", b"accept", b"x-very-long-header-name-to-fill-the-table"])
_values = st.binary(max_size=60) | st.sampled_from([b"200", b"text/html", b"gzip", b""])
_lists = st.lists(st.tuples(_names, _values), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads=st.lists(st.tuples(_lists, st.booleans(), st.sampled_from([None, 0, 64, 256, 4096])),
                      min_size=1, max_size=12),
       repeat=st.lists(st.integers(0, 11), max_size=6))
def test_round_trips_against_the_hpack_library(heads, repeat):
    """hpack's Encoder writes a connection's heads (Huffman or not, table size changes, blocks
    sent again as they were): our Decoder gives what hpack's Decoder gives, block by block."""
    encoder = LibraryEncoder()
    blocks = []
    for fields, huffman, size in heads:
        if size is not None:
            encoder.header_table_size = size
        blocks.append(encoder.encode(fields, huffman=huffman))
    # Blocks sent again (valid only where they do not depend on the table; both decoders
    # must then agree, or both must fail).
    blocks += [blocks[i % len(blocks)] for i in repeat]
    ours, theirs = Decoder(), LibraryDecoder()
    for block in blocks:
        try:
            expected = library_decode(theirs, block)
        except HPACKError:
            with pytest.raises(HPACKError):
                ours.decode(block)
            return
        assert ours.decode(block) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads=st.lists(_lists, min_size=1, max_size=10), size=st.sampled_from([0, 100, 4096]))
def test_our_encoder_round_trips(heads, size):
    """Our Encoder's blocks (with a table size the peer chose) decode to the same fields with our
    Decoder and with the library's."""
    encoder = Encoder()
    encoder.set_max_size(size)
    ours, theirs = Decoder(), LibraryDecoder()
    for fields in heads:
        fields = [(n, v) for n, v in fields if n != b":status"]
        block = encoder.encode(fields)
        assert ours.decode(block) == fields == library_decode(theirs, block)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(block=st.binary(max_size=64))
def test_garbage_raises_only_hpack_errors(block):
    """Random bytes decode or raise an HPACKError subclass, and never more than the library
    accepts."""
    try:
        got = Decoder().decode(block)
    except HPACKError:
        return
    assert got == library_decode(LibraryDecoder(), block)


def test_an_entry_larger_than_the_table_invalidates_the_encoders_cached_blocks():
    """RFC 7541 §4.4: a field larger than the whole table empties it (both sides) and is not
    added. A head the encoder cached while it referenced the table (a repeat: every field
    indexed) must not come back from the cache afterwards: its indexes name entries that are
    gone, and the peer's decoder fails the whole connection (COMPRESSION_ERROR)."""
    encoder = Encoder()
    encoder.set_max_size(100)  # the peer's SETTINGS_HEADER_TABLE_SIZE
    ours, theirs = Decoder(), LibraryDecoder()
    small, big = [(b"x-a", b"1")], [(b"x-b", b"y" * 80)]  # 36 bytes; 115 > 100
    for fields in (small, small, big, small, [*small, *big], [*small, *big], small):
        block = encoder.encode(fields)
        assert ours.decode(block) == fields == library_decode(theirs, block)


_repeated_fields = st.sampled_from([
    (b"x-a", b"1"), (b"x-b", b"2"), (b"content-type", b"text/html"),
    (b"x-big", b"y" * 90),  # over a 100-byte table
    (b"x-" + b"n" * 4100, b"v"),  # over a 4096-byte table, its value short enough to index
    (b"set-cookie", b"s=1"),  # never indexed
])


@settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=list(HealthCheck))
@given(heads=st.lists(st.lists(_repeated_fields, max_size=4), min_size=1, max_size=4),
       order=st.lists(st.integers(0, 3), min_size=1, max_size=16),
       size=st.sampled_from([100, 4096]))
def test_our_encoder_round_trips_heads_sent_again(heads, order, size):
    """A few heads sent again and again in any order (the block cache answers repeats), some
    with fields larger than the table: every block decodes to its fields with our Decoder and
    with the library's, so no cached block outlives the table it was made for."""
    encoder = Encoder()
    encoder.set_max_size(size)
    ours, theirs = Decoder(), LibraryDecoder()
    for index in order:
        fields = heads[index % len(heads)]
        block = encoder.encode(fields)
        assert ours.decode(block) == fields == library_decode(theirs, block)


# -- header lists over max_header_list_size -----------------------------------------------------

def test_a_list_over_the_bound_is_decoded_to_its_end_and_the_table_stays_in_step():
    """RFC 7541 §2.2, §3: a decoder processes every instruction of a block, or its dynamic table
    no longer matches the encoder's. A block whose list crosses max_header_list_size raises
    OversizedHeaderListError only after its last instruction: the fields inserted after the one
    that crossed the bound are in the table, so the next block (which references them by
    index) decodes as the library's decoder, which had no bound, decodes it."""
    encoder = LibraryEncoder()
    ours, theirs = Decoder(max_header_list_size=100), LibraryDecoder(max_header_list_size=1 << 30)
    block = encoder.encode([(b"x-big", b"v" * 200), (b"x-after", b"1"), (b"x-also", b"2")])
    library_decode(theirs, block)
    with pytest.raises(OversizedHeaderListError):
        ours.decode(block)
    follow = encoder.encode([(b"x-after", b"1"), (b"x-also", b"2")])
    assert follow == b"\xbf\xbe"  # indexed: entries 63 and 62, inserted after the bound
    assert ours.decode(follow) == library_decode(theirs, follow) == [(b"x-after", b"1"),
                                                                      (b"x-also", b"2")]


@pytest.mark.parametrize("tail", [
    b"\x40\x05ab",             # truncated literal
    b"\x40\x81\xff\x01a",      # invalid Huffman
    b"\x20",                   # size update after a field
    b"\xff\xff\x03",           # index beyond the table
])
def test_a_malformed_block_past_the_bound_is_a_decoding_error_not_an_oversized_list(tail):
    """A block that crosses the bound and is malformed further on is a decoding error (the
    codecs: COMPRESSION_ERROR on the connection), not an oversized list (a stream error on a
    backend connection): the table state is lost either way, so the rest is read first."""
    with pytest.raises(HPACKError) as raised:
        Decoder(max_header_list_size=40).decode(b"\x40\x01a\x0a0123456789" + tail)
    assert not isinstance(raised.value, OversizedHeaderListError)


@settings(max_examples=EXAMPLES * 2, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=list(HealthCheck))
@given(heads=st.lists(st.tuples(_lists, st.booleans()), min_size=1, max_size=10),
       limit=st.integers(0, 400))
def test_lists_over_the_bound_keep_the_table_in_step_with_the_library(heads, limit):
    """hpack's Encoder writes a connection's heads (its table in use); our Decoder with a small
    max_header_list_size raises OversizedHeaderListError exactly for the lists over it, and
    every other block still decodes as the library's unbounded decoder decodes it: no
    oversized block left the two tables apart."""
    encoder = LibraryEncoder()
    ours, theirs = Decoder(max_header_list_size=limit), LibraryDecoder(max_header_list_size=1 << 30)
    for fields, huffman in heads:
        block = encoder.encode(fields, huffman=huffman)
        expected = library_decode(theirs, block)
        if sum(len(n) + len(v) + 32 for n, v in expected) > limit:
            with pytest.raises(OversizedHeaderListError):
                ours.decode(block)
        else:
            assert ours.decode(block) == expected
