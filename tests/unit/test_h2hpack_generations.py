"""The HPACK decoder's block cache never answers with a stale table.

Raw header blocks from a small alphabet (so the same bytes come again and again, after the table
changed) are decoded on one connection by our Decoder and by the hpack library's Decoder (the
oracle): indexed references to dynamic entries, literals with incremental indexing (some larger
than the table), literals without indexing, and size updates (to the same size, to 0, shrinking,
growing). Each block must decode to the same fields, or both decoders must refuse it.
"""

import pytest
from hpack import Decoder as LibraryDecoder
from hpack.exceptions import HPACKError
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd.codec.h2hpack import Decoder


def _lit(data):
    return bytes([len(data)]) + data


def _int(value, bits, flags):
    limit = (1 << bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


_op = st.one_of(
    st.tuples(st.just("idx"), st.integers(62, 66)),
    st.tuples(st.just("ins"), st.sampled_from([b"a", b"b", b"x" * 40]),
              st.sampled_from([b"1", b"2", b"y" * 60])),
    st.tuples(st.just("ins_named"), st.integers(62, 64), st.sampled_from([b"1", b"2"])),
    st.tuples(st.just("lit"), st.integers(62, 63), st.sampled_from([b"1", b"2"])),
    st.tuples(st.just("static"), st.sampled_from([0x88, 0x89, 0x8D])),
)
_block = st.tuples(st.sampled_from([None, None, None, 0, 40, 80, 100, 4096]),
                   st.lists(_op, max_size=3))


def _encode(size, ops):
    out = b""
    if size is not None:
        out += _int(size, 5, 0x20)
    for op in ops:
        kind = op[0]
        if kind == "idx":
            out += _int(op[1], 7, 0x80)
        elif kind == "ins":
            out += b"\x40" + _lit(op[1]) + _lit(op[2])
        elif kind == "ins_named":
            out += _int(op[1], 6, 0x40) + _lit(op[2])
        elif kind == "lit":
            out += _int(op[1], 4, 0x00) + _lit(op[2])
        else:
            out += bytes([op[1]])
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(blocks=st.lists(_block, min_size=1, max_size=25), repeats=st.lists(st.integers(0, 24),
                                                                        max_size=25))
def test_cached_blocks_follow_every_table_change(blocks, repeats):
    """Blocks (and blocks sent again byte for byte) decode as the library decodes them, whatever
    insertions, evictions and size updates came between: a cached decode is never stale."""
    raw = [_encode(size, ops) for size, ops in blocks]
    sequence = []
    for i, block in enumerate(raw):
        sequence.append(block)
        sequence += [raw[j] for j in repeats if j <= i][:2]
    ours, theirs = Decoder(), LibraryDecoder()
    for block in sequence:
        try:
            expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)]
        except HPACKError:
            with pytest.raises(HPACKError):
                ours.decode(block)
            return
        assert ours.decode(block) == expected, block
