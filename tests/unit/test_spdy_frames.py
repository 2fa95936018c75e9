"""Unit tests of the SPDY wire format: dictionaries, every frame type per version, header blocks.

Strategy: frames are compared with bytes built by hand from the draft layouts (not with our own
encoder), decoders are fed hand-built payloads, and header compression is checked for shared
state across blocks, sync flushes and a bounded inflate of zlib bombs.
"""

import hashlib
import struct
import tracemalloc
import zlib

import pytest

from proxyd import events as ev
from proxyd.codec.spdy import codec as http
from proxyd.errors import Refused
from tests.support import fields, gated
from proxyd.codec.spdy import frames as fr
from proxyd.codec.spdy.zlib_dict import DICTIONARIES, SPDY2_DICTIONARY, SPDY3_DICTIONARY


def ctrl(version, ftype, flags, payload):
    """A control frame built by hand: C bit, 15-bit version, type, flags, 24-bit length."""
    head = struct.pack("!HHB", 0x8000 | version, ftype, flags)
    return head + len(payload).to_bytes(3, "big") + payload


# -- dictionaries ------------------------------------------------------------------------------


def test_spdy2_dictionary_is_the_null_terminated_draft_string():
    """SPDY/2's dictionary is the draft's text plus its terminating NUL (907 bytes, pinned hash)."""
    assert len(SPDY2_DICTIONARY) == 907
    assert SPDY2_DICTIONARY.startswith(b"optionsgetheadpostputdeletetrace")
    assert SPDY2_DICTIONARY.endswith(b".1statusversionurl\x00")
    assert hashlib.sha256(SPDY2_DICTIONARY).hexdigest() == (
        "0088d05d3b07b510aae796d67857c83308247ae79078d5743f412e483c23fbc6")


def test_spdy3_dictionary_matches_the_draft_bytes():
    """SPDY/3's dictionary: length-prefixed words then the text tail (1423 bytes, pinned hash)."""
    assert len(SPDY3_DICTIONARY) == 1423
    assert SPDY3_DICTIONARY[:11] == b"\x00\x00\x00\x07options"
    assert SPDY3_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    assert hashlib.sha256(SPDY3_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")
    assert DICTIONARIES == {2: SPDY2_DICTIONARY, 3: SPDY3_DICTIONARY}


# -- control frames, hand-built ----------------------------------------------------------------


def test_syn_stream_v2_layout():
    """SPDY/2 SYN_STREAM: ids, 2-bit priority in the top of 16 bits, then the block."""
    frame = fr.encode_syn_stream(2, 1, b"BLK", fin=True, priority=3, associated_id=0)
    expected = ctrl(2, 1, 0x01, struct.pack("!IIH", 1, 0, 3 << 14) + b"BLK")
    assert frame == expected
    assert fr.decode_syn_stream(2, frame[8:]) == (1, 0, 3, 0, b"BLK")


def test_syn_stream_v3_layout():
    """SPDY/3 SYN_STREAM: 3-bit priority, 5 unused bits, slot byte; unidirectional flag."""
    frame = fr.encode_syn_stream(3, 5, b"B", unidirectional=True, priority=7, associated_id=3,
                                 slot=2)
    expected = ctrl(3, 1, 0x02, struct.pack("!IIBB", 5, 3, 7 << 5, 2) + b"B")
    assert frame == expected
    assert fr.decode_syn_stream(3, frame[8:]) == (5, 3, 7, 2, b"B")


def test_syn_reply_and_headers_have_unused_16_bits_only_in_v2():
    """SYN_REPLY/HEADERS: SPDY/2 puts 16 unused bits after the stream id, SPDY/3 does not."""
    assert fr.encode_syn_reply(2, 1, b"X", fin=True) == ctrl(2, 2, 1, b"\0\0\0\x01\0\0X")
    assert fr.encode_syn_reply(3, 1, b"X") == ctrl(3, 2, 0, b"\0\0\0\x01X")
    assert fr.encode_headers(2, 3, b"Y") == ctrl(2, 8, 0, b"\0\0\0\x03\0\0Y")
    assert fr.encode_headers(3, 3, b"Y", fin=True) == ctrl(3, 8, 1, b"\0\0\0\x03Y")
    assert fr.decode_stream_block(2, b"\0\0\0\x01\0\0X") == (1, b"X")
    assert fr.decode_stream_block(3, b"\0\0\0\x01X") == (1, b"X")
    with pytest.raises(fr.FrameError):
        fr.decode_stream_block(2, b"\0\0\0\x01\0")
    with pytest.raises(fr.FrameError):
        fr.decode_stream_block(3, b"\0\0\0")


@pytest.mark.parametrize("version", [2, 3])
def test_rst_stream_layout(version):
    """RST_STREAM: stream id and 32-bit status, length always 8."""
    frame = fr.encode_rst_stream(version, 7, fr.CANCEL)
    assert frame == ctrl(version, 3, 0, struct.pack("!II", 7, 5))
    assert fr.decode_rst_stream(frame[8:]) == (7, 5)
    with pytest.raises(fr.FrameError):
        fr.decode_rst_stream(b"\0" * 4)


def test_settings_v2_ids_are_little_endian():
    """SPDY/2 SETTINGS: a 24-bit little-endian id then the flags byte; the value big-endian."""
    frame = fr.encode_settings(2, [(fr.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
                                   (fr.SETTINGS_INITIAL_WINDOW_SIZE, 65536, 1)])
    payload = (b"\0\0\0\x02" + b"\x04\x00\x00\x00" + struct.pack("!I", 100)
               + b"\x07\x00\x00\x01" + struct.pack("!I", 65536))
    assert frame == ctrl(2, 4, 0, payload)
    assert fr.decode_settings(2, payload) == [(4, 0, 100), (7, 1, 65536)]
    # an id above 255 shows the byte order: 0x010203 is sent as 03 02 01
    assert fr.decode_settings(2, b"\0\0\0\x01\x03\x02\x01\x02\0\0\0\x09") == [(0x010203, 2, 9)]


def test_settings_v3_flags_first_id_big_endian():
    """SPDY/3 SETTINGS: the flags byte, then a 24-bit big-endian id, then the value."""
    frame = fr.encode_settings(3, [(7, 1 << 20, fr.ID_FLAG_PERSIST_VALUE)], flags=1)
    payload = b"\0\0\0\x01" + b"\x01\x00\x00\x07" + struct.pack("!I", 1 << 20)
    assert frame == ctrl(3, 4, 1, payload)
    assert fr.decode_settings(3, payload) == [(7, 1, 1 << 20)]


@pytest.mark.parametrize("payload", [b"", b"\0\0\0", b"\0\0\0\x02" + b"\0" * 8,
                                     b"\0\0\0\x01" + b"\0" * 9])
def test_settings_length_must_match_count(payload):
    """A SETTINGS payload whose length disagrees with its entry count is a FrameError."""
    with pytest.raises(fr.FrameError):
        fr.decode_settings(3, payload)


def test_noop_and_ping():
    """NOOP (SPDY/2) is an empty control frame; PING carries a 32-bit id of length 4."""
    assert fr.encode_noop() == ctrl(2, 5, 0, b"")
    assert fr.encode_ping(3, 0xFFFFFFFF) == ctrl(3, 6, 0, b"\xff\xff\xff\xff")
    assert fr.decode_ping(b"\0\0\0\x07") == 7
    with pytest.raises(fr.FrameError):
        fr.decode_ping(b"\0\0\0\x07\0")


def test_goaway_v2_sends_four_bytes_and_accepts_four_or_eight():
    """SPDY/2 GOAWAY: we send 4 bytes; 4 (draft, spdylay) and 8 (node-spdy) are accepted."""
    assert fr.encode_goaway(2, 9) == ctrl(2, 7, 0, b"\0\0\0\x09")
    assert fr.decode_goaway(2, b"\0\0\0\x09") == (9, 0)
    assert fr.decode_goaway(2, b"\0\0\0\x09\0\0\0\x01") == (9, 1)
    with pytest.raises(fr.FrameError):
        fr.decode_goaway(2, b"\0\0\0\x09\0")


def test_goaway_v3_has_status():
    """SPDY/3 GOAWAY: last good stream id plus status (length 8)."""
    expected = ctrl(3, 7, 0, b"\0\0\0\x0b\0\0\0\x01")
    assert fr.encode_goaway(3, 11, fr.GOAWAY_PROTOCOL_ERROR) == expected
    assert fr.decode_goaway(3, b"\x80\0\0\x0b\0\0\0\x02") == (11, 2)  # reserved bit masked


def test_window_update_layout():
    """WINDOW_UPDATE: stream id (0 = session in 3.1) and a 31-bit delta."""
    assert fr.encode_window_update(3, 0, 1000) == ctrl(3, 9, 0, struct.pack("!II", 0, 1000))
    assert fr.decode_window_update(b"\0\0\0\x03\x80\0\0\x10") == (3, 16)
    with pytest.raises(fr.FrameError):
        fr.decode_window_update(b"\0" * 7)


def test_data_frame_with_fin():
    """DATA: control bit 0, stream id, FLAG_FIN, 24-bit length; empty DATA+FIN is valid."""
    assert fr.encode_data(3, b"abc", fin=True) == b"\0\0\0\x03\x01\0\0\x03abc"
    assert fr.encode_data(3, b"") == b"\0\0\0\x03\0\0\0\0"
    assert fr.data_frame_header(1, 0x123456) == b"\0\0\0\x01\0\x12\x34\x56"


def test_split_frames_handles_every_kind():
    """split_frames splits control and DATA frames, keeping version, type, flags and stream id."""
    data = (fr.encode_syn_stream(3, 1, b"x") + fr.encode_data(1, b"body", fin=True)
            + fr.control_frame(3, 0xF000, 0, b"unknown") + fr.encode_ping(3, 2))
    frames = fr.split_frames(data)
    assert [(f.control, f.type, f.stream_id, f.flags) for f in frames] == [
        (True, 1, 1, 0), (False, None, 1, 1), (True, 0xF000, 0, 0), (True, 6, 0, 0)]
    assert frames[1].payload == b"body"
    with pytest.raises(fr.FrameError):
        fr.split_frames(data[:-1])


def test_short_syn_stream_is_a_frame_error():
    """A SYN_STREAM payload shorter than its 10 fixed bytes cannot be decoded."""
    with pytest.raises(fr.FrameError):
        fr.decode_syn_stream(3, b"\0" * 9)


# -- header blocks -----------------------------------------------------------------------------


def test_header_block_widths_per_version():
    """Counts and lengths are 16-bit in SPDY/2 and 32-bit in SPDY/3."""
    pairs = [(b"a", b"1"), (b"bb", b"x\0y")]
    assert fr.pack_header_block(2, pairs) == b"\0\x02\0\x01a\0\x011\0\x02bb\0\x03x\0y"
    assert fr.pack_header_block(3, pairs) == (b"\0\0\0\x02\0\0\0\x01a\0\0\0\x011"
                                              b"\0\0\0\x02bb\0\0\0\x03x\0y")
    for version in (2, 3):
        assert fr.unpack_header_block(version, fr.pack_header_block(version, pairs)) == pairs


@pytest.mark.parametrize("raw", [
    b"\0",  # no count
    b"\0\x05\0\x01a",  # count larger than the block allows
    b"\0\x01\0\x05ab",  # name runs past the end
    b"\0\x01\0\x01a\0\x05xy",  # value runs past the end
    b"\0\x01\0\x01a\0\x01xEXTRA",  # bytes after the last header
])
def test_malformed_v2_header_blocks(raw):
    """Truncated or oversized counts/lengths and trailing bytes raise HeaderBlockError."""
    with pytest.raises(fr.HeaderBlockError):
        fr.unpack_header_block(2, raw)


@pytest.mark.parametrize("version", [2, 3])
def test_header_list_is_charged_32_bytes_a_field(version):
    """A block's list size is what HPACK counts (RFC 7541 §4.1): names, values and 32 bytes a
    field; over ``max_size`` the block is refused before its fields are read, at the size limit
    it passes."""
    pairs = [(b"a", b"")] * 100 + [(b"name", b"value")]
    raw = fr.pack_header_block(version, pairs)
    size = 100 * 33 + 9 + 32
    assert fr.header_list_size(version, raw) == size
    assert fr.unpack_header_block(version, raw, size) == pairs
    with pytest.raises(fr.HeaderBlockError, match="header list over"):
        fr.unpack_header_block(version, raw, size - 1)


@pytest.mark.parametrize("version", [2, 3])
def test_compression_shares_state_across_blocks(version):
    """One zlib stream per direction: the second identical block is smaller; each ends in a sync."""
    comp = fr.HeaderCompressor(version)
    decomp = fr.HeaderDecompressor(version, 65536)
    pairs = [(b"user-agent", b"proxyd-test/1.0 " * 4), (b"accept", b"*/*")]
    first = comp.compress(pairs)
    second = comp.compress(pairs)
    assert first.endswith(b"\0\0\xff\xff") and second.endswith(b"\0\0\xff\xff")
    assert len(second) < len(first)
    for block in (first, second):
        assert fr.unpack_header_block(version, decomp.decompress(block)) == pairs


def test_compressor_uses_the_version_dictionary():
    """Blocks carry the zlib preset-dictionary id of the right dictionary (FDICT + adler32)."""
    for version, dictionary in DICTIONARIES.items():
        block = fr.HeaderCompressor(version).compress([(b"accept", b"*/*")])
        assert block[1] & 0x20  # FDICT
        assert block[2:6] == zlib.adler32(dictionary).to_bytes(4, "big")
        with pytest.raises(fr.CompressionError):
            fr.HeaderDecompressor(5 - version, 1000).decompress(block)


def test_zlib_bomb_is_rejected_with_bounded_memory():
    """A tiny block inflating to 50 MB stops after max_size + 1 bytes of output."""
    zobj = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, SPDY3_DICTIONARY)
    bomb = zobj.compress(b"\0" * 50_000_000) + zobj.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    decomp = fr.HeaderDecompressor(3, 65536)
    tracemalloc.start()
    try:
        with pytest.raises(fr.CompressionError):
            decomp.decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 65536 + 200_000


def test_block_exactly_at_the_limit_is_accepted():
    """max_size is inclusive: a block inflating to exactly max_size bytes passes."""
    raw = fr.pack_header_block(3, [(b"x", b"y" * 100)])
    block = fr.HeaderCompressor(3).compress([(b"x", b"y" * 100)])
    assert fr.HeaderDecompressor(3, len(raw)).decompress(block) == raw
    with pytest.raises(fr.CompressionError):
        fr.HeaderDecompressor(3, len(raw) - 1).decompress(block)


def test_finished_zlib_stream_is_rejected():
    """A peer that ends its zlib stream (Z_FINISH) cannot send further blocks."""
    zobj = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, SPDY3_DICTIONARY)
    block = zobj.compress(fr.pack_header_block(3, [])) + zobj.flush(zlib.Z_FINISH)
    with pytest.raises(fr.CompressionError):
        fr.HeaderDecompressor(3, 1000).decompress(block)


# -- HTTP mapping (codec.py) -------------------------------------------------------------------


def _event(version, pairs):
    head = http.request_head(version, pairs)
    return ev.RequestReceived(stream_id=1, headers=head, end_stream=True,
                              http_version=b"SPDY/3" if version == 3 else b"SPDY/2")


def test_request_head_v3():
    """SPDY/3 request: special names map to pseudo-header fields first, NUL-joined values become
    repeated fields; the gate then reads method, scheme, authority, path and fields from it."""
    pairs = [(b":method", b"POST"), (b":path", b"/a?b"), (b":version", b"HTTP/1.1"),
             (b":host", b"example.com"), (b":scheme", b"https"), (b"cookie", b"a=1\0b=2"),
             (b"accept", b"")]
    assert http.request_head(3, pairs) == [
        (b":method", b"POST"), (b":path", b"/a?b"), (b":version", b"HTTP/1.1"),
        (b":authority", b"example.com"), (b":scheme", b"https"), (b"cookie", b"a=1"),
        (b"cookie", b"b=2"), (b"accept", b"")]
    assert fields(gated(_event(3, pairs))) == (
        b"POST", b"https", b"example.com", b"/a?b", [(b"cookie", b"a=1"), (b"cookie", b"b=2"),
                                                     (b"accept", b"")])


def test_request_head_v2_plain_and_absolute_url():
    """SPDY/2 request: method/url/version/host/scheme map to the pseudo-header names; an absolute
    url supplies scheme and authority at the gate."""
    pairs = [(b"method", b"GET"), (b"url", b"/x"), (b"version", b"HTTP/1.1"),
             (b"host", b"h:1"), (b"scheme", b"http"), (b"user-agent", b"ua")]
    assert fields(gated(_event(2, pairs))) == (b"GET", b"http", b"h:1", b"/x",
                                               [(b"user-agent", b"ua")])
    pairs = [(b"method", b"GET"), (b"url", b"https://a.example:8443/p?q"),
             (b"version", b"HTTP/1.1"), (b"scheme", b"http")]
    assert fields(gated(_event(2, pairs))) == (b"GET", b"https", b"a.example:8443", b"/p?q", [])


@pytest.mark.parametrize("pairs, reason", [
    ([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")], "missing_authority"),
    ([(b":path", b"/"), (b":host", b"h"), (b":scheme", b"http")], "missing_pseudo"),
    ([(b":method", b"GET"), (b":host", b"h"), (b":scheme", b"http")], "missing_pseudo"),
    ([(b":method", b"GET"), (b":path", b"/"), (b":host", b"h")], "missing_pseudo"),
    ([(b":method", b"GET"), (b":path", b"/"), (b":host", b"h"), (b":scheme", b"http"),
      (b"X-Upper", b"1")], "bad_name"),
    ([(b":method", b"GET"), (b":path", b"/"), (b":host", b"h"), (b":scheme", b"http"),
      (b"", b"1")], "bad_name"),
    ([(b":method", b"GET"), (b":method", b"PUT"), (b":path", b"/"), (b":host", b"h"),
      (b":scheme", b"http")], "bad_pseudo"),
    ([(b":method", b"GET"), (b":path", b"/a\0/b"), (b":host", b"h"), (b":scheme", b"http")],
     "bad_pseudo"),
    ([(b":method", b"GET"), (b":path", b"/"), (b":host", b"h"), (b":scheme", b"http"),
      (b"content-length", b"5\0 50")], "bad_value"),
])
def test_gate_refuses_bad_spdy_requests(pairs, reason):
    """Missing special headers, upper-case or empty names, repeated or NUL-joined control data and
    NUL-joined lengths pass the codec raw and are refused by the gate with the table's reason."""
    with pytest.raises(Refused) as refused:
        gated(_event(3, pairs))
    assert refused.value.reason == reason


def test_request_head_rejects_broken_nul_joins():
    """A doubled, leading or trailing NUL is broken block encoding: HeaderBlockError (RST)."""
    for value in (b"1\0\0 2", b"\0a", b"a\0"):
        with pytest.raises(fr.HeaderBlockError):
            http.request_head(3, [(b":method", b"GET"), (b"a", value)])


def test_parse_response_status_forms():
    """":status" may be "200 OK" or "200"; SPDY/2 uses "status"; garbage is rejected."""
    assert http.parse_response(3, [(b":status", b"200 OK"), (b":version", b"HTTP/1.1"),
                                   (b"a", b"1")]) == (200, [(b"a", b"1")])
    assert http.parse_response(2, [(b"status", b"404"), (b"version", b"HTTP/1.1")]) == (404, [])
    for bad in (b"", b"20", b"abc", b"2000"):
        with pytest.raises(fr.HeaderBlockError):
            http.parse_response(3, [(b":status", bad)])


def test_response_pairs_group_and_filter():
    """Repeated names NUL-joined, names lower-cased, connection headers and v2 empties dropped."""
    headers = [(b"Set-Cookie", b"a=1"), (b"connection", b"close"), (b"set-cookie", b"b=2"),
               (b"x-empty", b""), (b"Transfer-Encoding", b"chunked")]
    assert http.response_pairs(3, 204, headers) == [
        (b":status", b"204 No Content"), (b":version", b"HTTP/1.1"),
        (b"set-cookie", b"a=1\0b=2"), (b"x-empty", b"")]
    assert http.response_pairs(2, 599, headers) == [
        (b"status", b"599"), (b"version", b"HTTP/1.1"), (b"set-cookie", b"a=1\0b=2")]


def test_request_pairs_per_version():
    """Client requests use :method/:path/:version/:host/:scheme (v3) or the bare v2 names."""
    assert http.request_pairs(3, b"GET", b"http", b"h", b"/", [(b"host", b"x"), (b"a", b"1")]) == [
        (b":method", b"GET"), (b":path", b"/"), (b":version", b"HTTP/1.1"), (b":host", b"h"),
        (b":scheme", b"http"), (b"a", b"1")]
    assert http.request_pairs(2, b"GET", b"http", b"h", b"/", [])[:2] == [
        (b"method", b"GET"), (b"url", b"/")]


@pytest.mark.parametrize("h2_code, v2_status, v3_status", [
    (0x0, 5, 5), (0x1, 1, 1), (0x2, 6, 6), (0x3, 7, 7), (0x5, 2, 2), (0x6, 1, 11), (0x7, 3, 3),
    (0x8, 5, 5), (0xB, 1, 1), (0x99, 6, 6),
])
def test_rst_status_mapping(h2_code, v2_status, v3_status):
    """HTTP/2 error codes map to SPDY RST_STREAM statuses (SPDY/2 lacks codes 8-11)."""
    assert http.rst_status_for(h2_code, 2) == v2_status
    assert http.rst_status_for(h2_code, 3) == v3_status


def test_rst_and_goaway_statuses_map_back_to_http2():
    """Received SPDY statuses map to HTTP/2 codes; GOAWAY INTERNAL_ERROR is 2 (or draft's 11)."""
    assert [http.h2_code_for_rst(s) for s in range(0, 13)] == [
        0, 1, 5, 7, 1, 8, 2, 3, 1, 5, 0xC, 6, 2]
    assert [http.h2_code_for_goaway(s) for s in (0, 1, 2, 11)] == [0, 1, 2, 2]
    assert [http.goaway_status_for(c) for c in (0, 1, 2, 3, 11)] == [0, 1, 2, 1, 1]


@pytest.mark.parametrize("first, offered, expected", [
    (fr.encode_settings(2, [(4, 100)])[:8], None, "spdy/2"),
    (fr.encode_syn_stream(3, 1, b"")[:8], None, "spdy/3"),
    (fr.encode_settings(3, [])[:8], ["spdy/3.1"], "spdy/3"),
    (fr.encode_settings(3, [])[:8], ["spdy/2", "h2"], None),
    (fr.encode_settings(2, [])[:8], ["spdy/3.1", "spdy/3"], None),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01", None, None),  # TLS ClientHello
    (b"PRI * HTTP/2.0\r\n", None, None),
    (b"GET / HT", None, None),
    (b"\x80\x04\x00\x01\0\0\0\0", None, None),  # SPDY/4 never shipped
    (b"\x80\x03\x00\x63\0\0\0\0", None, None),  # not a control type
    (b"\x80\x03", None, None),  # too short
])
def test_sniff_version(first, offered, expected):
    """The first bytes tell SPDY/2 from SPDY/3 (3.1 is run as 3 until proven); others are None."""
    assert http.sniff_version(first, offered) == expected
