"""The zlib dictionaries that prime SPDY header compression (SPDY/2 and SPDY/3, also used by 3.1).

Strategy: the dictionaries are protocol constants; a single wrong byte changes the zlib dictionary
id (adler32) and every peer rejects our header blocks. They are written here in the shape the drafts
describe them, so they can be reviewed against the texts, and built once at import:

* SPDY/2 (draft 2, "Name/Value header block format"): one ASCII string, and the draft says it "IS
  null-terminated" -- implementations pass ``sizeof`` of the C string, so the trailing NUL byte is
  part of the dictionary (907 bytes).
* SPDY/3 (draft 3, section 2.6.10.1): the draft lists raw bytes. They are a run of header words,
  each preceded by its length as a 32-bit big-endian integer, followed by a plain text tail of
  status codes, reason phrases, dates and common values (1423 bytes).

``tests/unit/test_spdy_frames.py`` pins both by length and SHA-256, and the peer interop test proves
them against an independent implementation (zlib checks the dictionary id on every connection).
"""

import struct

SPDY2_DICTIONARY = (
    b"optionsgetheadpostputdeletetraceacceptaccept-charsetaccept-encodingaccept-"
    b"languageauthorizationexpectfromhostif-modified-sinceif-matchif-none-matchi"
    b"f-rangeif-unmodifiedsincemax-forwardsproxy-authorizationrangerefererteuser"
    b"-agent10010120020120220320420520630030130230330430530630740040140240340440"
    b"5406407408409410411412413414415416417500501502503504505accept-rangesageeta"
    b"glocationproxy-authenticatepublicretry-afterservervarywarningwww-authentic"
    b"ateallowcontent-basecontent-encodingcache-controlconnectiondatetrailertran"
    b"sfer-encodingupgradeviawarningcontent-languagecontent-lengthcontent-locati"
    b"oncontent-md5content-rangecontent-typeetagexpireslast-modifiedset-cookieMo"
    b"ndayTuesdayWednesdayThursdayFridaySaturdaySundayJanFebMarAprMayJunJulAugSe"
    b"pOctNovDecchunkedtext/htmlimage/pngimage/jpgimage/gifapplication/xmlapplic"
    b"ation/xhtmltext/plainpublicmax-agecharset=iso-8859-1utf-8gzipdeflateHTTP/1"
    b".1statusversionurl\x00"
)

# SPDY/3: the length-prefixed words, in the draft's order.
_SPDY3_WORDS = (
    b"options", b"head", b"post", b"put", b"delete", b"trace", b"accept",
    b"accept-charset", b"accept-encoding", b"accept-language", b"accept-ranges",
    b"age", b"allow", b"authorization", b"cache-control", b"connection",
    b"content-base", b"content-encoding", b"content-language", b"content-length",
    b"content-location", b"content-md5", b"content-range", b"content-type",
    b"date", b"etag", b"expect", b"expires", b"from", b"host", b"if-match",
    b"if-modified-since", b"if-none-match", b"if-range", b"if-unmodified-since",
    b"last-modified", b"location", b"max-forwards", b"pragma",
    b"proxy-authenticate", b"proxy-authorization", b"range", b"referer",
    b"retry-after", b"server", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"user-agent", b"vary", b"via", b"warning", b"www-authenticate",
    b"method", b"get", b"status", b"200 OK", b"version", b"HTTP/1.1", b"url",
    b"public", b"set-cookie", b"keep-alive", b"origin",
)

# SPDY/3: the unprefixed tail that follows the words.
_SPDY3_TAIL = (
    b"100101201202205206300302303304305306307"
    b"402405406407408409410411412413414415416417"
    b"502504505"
    b"203 Non-Authoritative Information"
    b"204 No Content"
    b"301 Moved Permanently"
    b"400 Bad Request"
    b"401 Unauthorized"
    b"403 Forbidden"
    b"404 Not Found"
    b"500 Internal Server Error"
    b"501 Not Implemented"
    b"503 Service Unavailable"
    b"Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec "
    b"00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    b"chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    b"application/xhtml+xml,text/plain,text/javascript,public"
    b"privatemax-age=gzip,deflate,sdch"
    b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

_LEN32 = struct.Struct("!I")

SPDY3_DICTIONARY = b"".join(_LEN32.pack(len(w)) + w for w in _SPDY3_WORDS) + _SPDY3_TAIL

#: The dictionary for a major protocol version (3.1 frames carry version 3).
DICTIONARIES = {2: SPDY2_DICTIONARY, 3: SPDY3_DICTIONARY}
