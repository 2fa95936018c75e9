"""SPDY/2, SPDY/3 and SPDY/3.1 wire format: frame encoders, payload decoders and header blocks.

Strategy: this module is stateless except for the two zlib objects of a session, and it knows
nothing about streams. Encoders return complete frames as ``bytes``; decoders take the payload of
one control frame (the 8-byte frame header is split by the caller, see :data:`FRAME_HEADER`) and
return plain tuples, raising :class:`FrameError` when the payload cannot be a valid frame (a session
error for the caller). Every fixed layout uses a precompiled :class:`struct.Struct`.

Version differences handled here (3.1 frames are SPDY/3 frames, version field 3):

* Header block counts and lengths are 16-bit in SPDY/2 and 32-bit in SPDY/3.
* SYN_STREAM: priority is 2 bits followed by 14 unused bits in SPDY/2, 3 bits, 5 unused bits and an
  8-bit credential slot in SPDY/3. SYN_REPLY and HEADERS carry 16 unused bits in SPDY/2 only.
* SETTINGS entry ids are 24-bit *little-endian* followed by the flags byte in SPDY/2 (a bug of the
  first implementation that draft 2 kept); SPDY/3 puts the flags byte first, then a big-endian id.
* GOAWAY is 4 bytes (last good stream id) in SPDY/2 and 8 bytes (plus a status) in SPDY/3; some
  SPDY/2 senders (node-spdy) use the 8-byte form, so the decoder accepts both for SPDY/2.
* NOOP exists in SPDY/2 only; WINDOW_UPDATE and CREDENTIAL in SPDY/3 only.

Header compression: one zlib stream per direction per session, primed with the version's
dictionary, with a SYNC_FLUSH after every block. :class:`HeaderDecompressor` bounds the inflated
size of each block by ``max_size`` with ``decompress(data, max_length)`` calls, so a zlib bomb is
rejected after at most ``max_size + 1`` bytes of output; after that the zlib stream is unusable and
the caller must fail the session. An inflated block is then charged as HPACK charges a header list
(RFC 7541 §4.1: name + value + 32 bytes a field, :func:`header_list_size`, from its count and
length alone), so thousands of empty fields are refused before any list is built; that refusal is
a stream error (the zlib stream is in step).
"""

import struct
import zlib
from collections import namedtuple

from .zlib_dict import DICTIONARIES

# Control frame types.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
NOOP = 5  # SPDY/2 only
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9  # SPDY/3 and 3.1
CREDENTIAL = 10  # SPDY/3 only; accepted and ignored

# Frame flags.
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR_SETTINGS = 0x01

# SETTINGS entry flags and ids.
ID_FLAG_PERSIST_VALUE = 0x01
ID_FLAG_PERSISTED = 0x02
SETTINGS_UPLOAD_BANDWIDTH = 1
SETTINGS_DOWNLOAD_BANDWIDTH = 2
SETTINGS_ROUND_TRIP_TIME = 3
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_CURRENT_CWND = 5
SETTINGS_DOWNLOAD_RETRANS_RATE = 6
SETTINGS_INITIAL_WINDOW_SIZE = 7
SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE = 8

# RST_STREAM status codes (1-7 in both versions, 8-11 added by SPDY/3).
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
INVALID_CREDENTIALS = 10
FRAME_TOO_LARGE = 11

# GOAWAY status codes (SPDY/3). The 2012 draft text lists INTERNAL_ERROR as 11; Chromium, spdylay
# and node-spdy all send 2, so we send 2 and accept both.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

FRAME_HEADER = struct.Struct("!II")  # word 1 (control bit...), flags << 24 | length
FRAME_HEADER_SIZE = 8
MAX_FRAME_LENGTH = 0xFFFFFF
MAX_STREAM_ID = 0x7FFFFFFF
DEFAULT_WINDOW = 65536
MAX_WINDOW = 0x7FFFFFFF

_CTRL = struct.Struct("!HHI")  # 0x8000 | version, type, flags << 24 | length
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_SYN_STREAM_V2 = struct.Struct("!IIH")
_SYN_STREAM_V3 = struct.Struct("!IIBB")
_ID_UNUSED16 = struct.Struct("!IH")
_SETTING_V2 = struct.Struct("<I")  # id (24 bits LE) then the flags byte: one LE word
_SETTING_V2_VALUE = struct.Struct("!I")
_SETTING_V3 = struct.Struct("!II")

_MASK31 = 0x7FFFFFFF


class FrameError(Exception):
    """A frame cannot be valid for this version: the caller fails the session (GOAWAY)."""


class HeaderBlockError(Exception):
    """A decompressed header block is malformed; zlib is still in step: a stream error."""


class CompressionError(FrameError):
    """Inflating a header block failed or exceeded the size bound; the zlib stream is lost."""


Frame = namedtuple("Frame", "control version type flags stream_id payload")
Frame.__doc__ = """A frame split by :func:`split_frames` (``type`` None, ``version`` 0 for DATA)."""


# ---------------------------------------------------------------------------------------------
# Encoders


def control_frame(version, frame_type, flags, payload):
    """Frame ``payload`` as a control frame of ``frame_type`` (any type, unknown ones included)."""
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("control frame payload too long")
    return _CTRL.pack(0x8000 | version, frame_type, (flags << 24) | len(payload)) + payload


def data_frame_header(stream_id, length, fin=False):
    """The 8-byte header of a DATA frame of ``length`` payload bytes."""
    return FRAME_HEADER.pack(stream_id & _MASK31, ((FLAG_FIN if fin else 0) << 24) | length)


def encode_data(stream_id, data, fin=False):
    """A whole DATA frame (header and payload)."""
    return data_frame_header(stream_id, len(data), fin) + bytes(data)


def encode_syn_stream(version, stream_id, block, *, fin=False, unidirectional=False, priority=0,
                      associated_id=0, slot=0):
    """SYN_STREAM with an already compressed header ``block``; ``priority`` 0-3 (v2) / 0-7 (v3)."""
    flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
    if version == 2:
        head = _SYN_STREAM_V2.pack(stream_id, associated_id, (priority & 3) << 14)
    else:
        head = _SYN_STREAM_V3.pack(stream_id, associated_id, (priority & 7) << 5, slot & 0xFF)
    return control_frame(version, SYN_STREAM, flags, head + block)


def _encode_stream_block(version, frame_type, stream_id, block, fin):
    if version == 2:
        head = _ID_UNUSED16.pack(stream_id, 0)
    else:
        head = _U32.pack(stream_id)
    return control_frame(version, frame_type, FLAG_FIN if fin else 0, head + block)


def encode_syn_reply(version, stream_id, block, fin=False):
    """SYN_REPLY with an already compressed header ``block``."""
    return _encode_stream_block(version, SYN_REPLY, stream_id, block, fin)


def encode_headers(version, stream_id, block, fin=False):
    """HEADERS with an already compressed header ``block`` (FIN allowed from SPDY/3 on)."""
    return _encode_stream_block(version, HEADERS, stream_id, block, fin)


def encode_rst_stream(version, stream_id, status):
    """RST_STREAM with a SPDY status code."""
    return control_frame(version, RST_STREAM, 0, _U32X2.pack(stream_id, status))


def encode_settings(version, entries, flags=0):
    """SETTINGS from ``(id, value)`` or ``(id, value, id_flags)`` entries (v2 ids little-endian)."""
    parts = [_U32.pack(len(entries))]
    for entry in entries:
        setting_id, value = entry[0], entry[1]
        id_flags = entry[2] if len(entry) > 2 else 0
        if version == 2:
            parts.append(_SETTING_V2.pack((setting_id & 0xFFFFFF) | (id_flags << 24)))
            parts.append(_SETTING_V2_VALUE.pack(value))
        else:
            parts.append(_SETTING_V3.pack((id_flags << 24) | (setting_id & 0xFFFFFF), value))
    return control_frame(version, SETTINGS, flags, b"".join(parts))


def encode_noop():
    """NOOP (SPDY/2 only)."""
    return control_frame(2, NOOP, 0, b"")


def encode_ping(version, ping_id):
    """PING with a 32-bit id (odd from clients, even from servers)."""
    return control_frame(version, PING, 0, _U32.pack(ping_id))


def encode_goaway(version, last_stream_id, status=GOAWAY_OK):
    """GOAWAY: 4 bytes in SPDY/2 (no status, as the draft and most peers expect), 8 in SPDY/3."""
    if version == 2:
        return control_frame(2, GOAWAY, 0, _U32.pack(last_stream_id))
    return control_frame(version, GOAWAY, 0, _U32X2.pack(last_stream_id, status))


def encode_window_update(version, stream_id, delta):
    """WINDOW_UPDATE (SPDY/3+; stream 0 is the session window of SPDY/3.1)."""
    return control_frame(version, WINDOW_UPDATE, 0, _U32X2.pack(stream_id, delta))


# ---------------------------------------------------------------------------------------------
# Payload decoders


def decode_syn_stream(version, payload):
    """``(stream_id, associated_id, priority, slot, block)`` of a SYN_STREAM payload."""
    if len(payload) < 10:
        raise FrameError("SYN_STREAM too short")
    if version == 2:
        sid, assoc, pri = _SYN_STREAM_V2.unpack_from(payload)
        pri, slot = pri >> 14, 0
    else:
        sid, assoc, pri, slot = _SYN_STREAM_V3.unpack_from(payload)
        pri >>= 5
    return sid & _MASK31, assoc & _MASK31, pri, slot, payload[10:]


def decode_stream_block(version, payload):
    """``(stream_id, block)`` of a SYN_REPLY or HEADERS payload."""
    if version == 2:
        if len(payload) < 6:
            raise FrameError("SYN_REPLY/HEADERS too short")
        return _U32.unpack_from(payload)[0] & _MASK31, payload[6:]
    if len(payload) < 4:
        raise FrameError("SYN_REPLY/HEADERS too short")
    return _U32.unpack_from(payload)[0] & _MASK31, payload[4:]


def decode_rst_stream(payload):
    """``(stream_id, status)`` of a RST_STREAM payload."""
    if len(payload) != 8:
        raise FrameError("RST_STREAM length is not 8")
    sid, status = _U32X2.unpack(payload)
    return sid & _MASK31, status


def decode_settings(version, payload):
    """List of ``(id, id_flags, value)`` of a SETTINGS payload, in wire order."""
    if len(payload) < 4:
        raise FrameError("SETTINGS too short")
    (count,) = _U32.unpack_from(payload)
    if len(payload) != 4 + 8 * count:
        raise FrameError("SETTINGS length does not match its entry count")
    entries = []
    for off in range(4, len(payload), 8):
        if version == 2:
            (word,) = _SETTING_V2.unpack_from(payload, off)
            (value,) = _SETTING_V2_VALUE.unpack_from(payload, off + 4)
            entries.append((word & 0xFFFFFF, word >> 24, value))
        else:
            word, value = _SETTING_V3.unpack_from(payload, off)
            entries.append((word & 0xFFFFFF, word >> 24, value))
    return entries


def decode_ping(payload):
    """The id of a PING payload."""
    if len(payload) != 4:
        raise FrameError("PING length is not 4")
    return _U32.unpack(payload)[0]


def decode_goaway(version, payload):
    """``(last_good_stream_id, status)``; SPDY/2 accepts 4 or 8 bytes, SPDY/3 accepts 8 (and 4)."""
    if len(payload) == 4:
        return _U32.unpack(payload)[0] & _MASK31, GOAWAY_OK
    if len(payload) == 8:
        last, status = _U32X2.unpack(payload)
        return last & _MASK31, status
    raise FrameError("GOAWAY length is neither 4 nor 8")


def decode_window_update(payload):
    """``(stream_id, delta)`` of a WINDOW_UPDATE payload."""
    if len(payload) != 8:
        raise FrameError("WINDOW_UPDATE length is not 8")
    sid, delta = _U32X2.unpack(payload)
    return sid & _MASK31, delta & _MASK31


def split_frames(data):
    """Split a byte string of complete frames into :class:`Frame` tuples (tests, tools, debugging).

    Raises :class:`FrameError` when the data ends inside a frame.
    """
    frames = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < FRAME_HEADER_SIZE:
            raise FrameError("truncated frame header")
        w1, w2 = FRAME_HEADER.unpack_from(data, pos)
        length = w2 & MAX_FRAME_LENGTH
        payload = data[pos + 8:pos + 8 + length]
        if len(payload) != length:
            raise FrameError("truncated frame payload")
        pos += 8 + length
        if w1 & 0x80000000:
            ftype = w1 & 0xFFFF
            sid = 0
            if ftype in (SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE) and length >= 4:
                sid = _U32.unpack_from(payload)[0] & _MASK31
            frames.append(Frame(True, (w1 >> 16) & 0x7FFF, ftype, w2 >> 24, sid, payload))
        else:
            frames.append(Frame(False, 0, None, w2 >> 24, w1, payload))
    return frames


# ---------------------------------------------------------------------------------------------
# Name/value header blocks


def pack_header_block(version, pairs):
    """Serialise ``(name, value)`` pairs (names unique, multi-values NUL-joined) uncompressed."""
    pack = _U16.pack if version == 2 else _U32.pack
    parts = [pack(len(pairs))]
    for name, value in pairs:
        parts += (pack(len(name)), name, pack(len(value)), value)
    return b"".join(parts)


def header_list_size(version, raw):
    """The size of an uncompressed block's header list as HPACK counts it (RFC 7541 §4.1): its
    names and values plus 32 bytes a field, from the field count and the block's length (exact
    for a well-formed block; no field is read)."""
    width = 2 if version == 2 else 4
    count = int.from_bytes(raw[:width], "big")
    return len(raw) - width + (32 - 2 * width) * count


def unpack_header_block(version, raw, max_size=None):
    """Parse an uncompressed header block into ``(name, value)`` pairs (values still NUL-joined).

    Raises :class:`HeaderBlockError` when counts or lengths run past the block, bytes are left,
    or the list's :func:`header_list_size` is over ``max_size`` (checked first).
    """
    if version == 2:
        width, unpack = 2, _U16.unpack_from
    else:
        width, unpack = 4, _U32.unpack_from
    end = len(raw)
    if end < width:
        raise HeaderBlockError("header block too short")
    (count,) = unpack(raw, 0)
    if count * 2 * width > end - width:
        raise HeaderBlockError("header block count exceeds its length")
    if max_size is not None and header_list_size(version, raw) > max_size:
        raise HeaderBlockError("header list over %d bytes (%d fields)" % (max_size, count))
    pos = width
    pairs = []
    append = pairs.append
    for _ in range(count):
        if pos + width > end:
            raise HeaderBlockError("truncated header name length")
        (length,) = unpack(raw, pos)
        pos += width
        name = raw[pos:pos + length]
        pos += length
        if pos + width > end:
            raise HeaderBlockError("truncated header name or value length")
        (length,) = unpack(raw, pos)
        pos += width
        value = raw[pos:pos + length]
        pos += length
        if pos > end:
            raise HeaderBlockError("truncated header value")
        append((name, value))
    if pos != end:
        raise HeaderBlockError("bytes left after the last header")
    return pairs


class HeaderCompressor:
    """The sending zlib stream of a session: ``compress(pairs)`` returns one sync-flushed block.

    Window bits 11 and memory level 1, as Chromium and spdylay used: a few KiB per connection, and
    any peer inflating with the default 15 window bits accepts it.
    """

    __slots__ = ("_zobj", "_version")

    def __init__(self, version, level=6):
        self._version = version
        self._zobj = zlib.compressobj(level, zlib.DEFLATED, 11, 1, zlib.Z_DEFAULT_STRATEGY,
                                      DICTIONARIES[version])

    def compress(self, pairs):
        """Pack and compress ``pairs``; every call must be sent, in order, or the peer desyncs."""
        zobj = self._zobj
        raw = pack_header_block(self._version, pairs)
        return zobj.compress(raw) + zobj.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving zlib stream of a session with a bound on each inflated block.

    ``decompress(block)`` raises :class:`CompressionError` on corrupt data, a wrong dictionary, an
    ended zlib stream, or a block inflating to more than ``max_size`` bytes (checked while
    inflating: at most ``max_size + 1`` bytes are ever produced for one block).
    """

    __slots__ = ("_zobj", "max_size")

    def __init__(self, version, max_size):
        self.max_size = max_size
        self._zobj = zlib.decompressobj(15, zdict=DICTIONARIES[version])

    def decompress(self, block):
        """Inflate one header block (bytes) and return the name/value bytes."""
        zobj = self._zobj
        limit = self.max_size
        chunks = []
        total = 0
        data = block
        try:
            while True:
                piece = zobj.decompress(data, limit + 1 - total)
                total += len(piece)
                if total > limit:
                    raise CompressionError("header block inflates beyond %d bytes" % limit)
                chunks.append(piece)
                data = zobj.unconsumed_tail
                if not data:
                    break
        except zlib.error as exc:
            raise CompressionError("header block does not inflate: %s" % exc) from None
        if zobj.eof:
            raise CompressionError("header zlib stream was finished by the peer")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
