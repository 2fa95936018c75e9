"""Independent HTTP/1.1 parsers, the oracles of what proxyd writes to a backend, and the hostile
client requests they are fed with (shared by the unit and protocol oracle tests).

Strategy: one oracle is not enough (h11 reads ``transfer_encoding`` as an ordinary field, a
CGI-style server frames the body by it), so every written request is read by several parsers
that fail differently: ``h11_view``, ``llhttp_view`` (httptools, strict), ``lenient_view`` (a
small model of permissive legacy backends) and ``stdlib_fields`` (Python's email parser, fields
only), compared by ``assert_one_backend_request`` and ``assert_backends_agree``;
``client_requests`` generates the hostile requests, ``h1_request_bytes`` and ``h2_request_head``
put them on a frontend's wire.
"""

from collections import namedtuple


# -- independent HTTP/1.1 parsers: the oracles of what proxyd writes to a backend ----------------
#
# Each view reads raw backend bytes the way one kind of backend does and returns a ``View``: the
# complete requests it found (``Seen`` each: method, target, fields, body), the bytes after the
# last complete one (``leftover``: an unfinished request or junk) and the error that stopped it
# (None when it simply ran out of bytes). Tests compare the views: a request proxyd wrote must
# be exactly one request, the same one, to every parser (:func:`backend_views`).

class Seen(namedtuple("Seen", "method target fields body")):
    """One complete request as a parser saw it (``fields`` as the parser reports them)."""


class View(namedtuple("View", "requests leftover error")):
    """What one parser made of a byte stream: complete requests, bytes after them, error."""


def h11_view(data):
    """h11 (RFC 9112, strict): each request read by a fresh server connection, as a backend
    reads the next request on a keep-alive connection."""
    import h11

    requests, rest = [], bytes(data)
    while rest:
        server = h11.Connection(h11.SERVER)
        server.receive_data(rest)
        head, body = None, []
        try:
            while True:
                event = server.next_event()
                kind = type(event)
                if kind is h11.Request:
                    head = event
                elif kind is h11.Data:
                    body.append(bytes(event.data))
                elif kind is h11.EndOfMessage:
                    break
                else:  # NEED_DATA: an unfinished request
                    return View(requests, rest, None)
        except h11.RemoteProtocolError as exc:
            return View(requests, rest, f"h11: {exc}")
        requests.append(Seen(head.method, head.target, list(head.headers.raw_items()),
                             b"".join(body)))
        rest = bytes(server.trailing_data[0])
    return View(requests, b"", None)


# llhttp's method table (HTTP mode): it refuses every other method with "Invalid method
# encountered" (PRI with "Expected HTTP/2 Connection Preface"), although RFC 9110 §9.1 lets any
# token be a method. Such a refusal is a 400 and a closed connection, no desynchronisation.
LLHTTP_METHODS = frozenset(b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE "
                           b"PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT "
                           b"MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
                           b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())


class _LlhttpSink:
    """httptools callbacks collecting requests (fields of the head only, not trailers)."""

    def __init__(self):
        self.parser = None
        self.requests = []
        self.url, self.fields, self.body, self.in_head = b"", [], [], True

    def on_message_begin(self):
        self.url, self.fields, self.body, self.in_head = b"", [], [], True

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if self.in_head:
            self.fields.append((bytes(name), bytes(value)))

    def on_headers_complete(self):
        self.in_head = False

    def on_body(self, body):
        self.body.append(bytes(body))

    def on_message_complete(self):
        self.requests.append(Seen(self.parser.get_method(), self.url, self.fields,
                                  b"".join(self.body)))


def llhttp_view(data):
    """httptools, i.e. llhttp (Node.js's parser) in its default strict mode, no leniency set.
    Fed one byte at a time, so the end of each request is known to the byte."""
    import httptools

    sink = _LlhttpSink()
    parser = sink.parser = httptools.HttpRequestParser(sink)
    end = count = 0
    for at in range(len(data)):
        try:
            parser.feed_data(data[at:at + 1])
        except httptools.HttpParserError as exc:
            return View(sink.requests, bytes(data[end:]), f"llhttp: {type(exc).__name__}: {exc}")
        if len(sink.requests) != count:
            end, count = at + 1, len(sink.requests)
    return View(sink.requests, bytes(data[end:]), None)


def stdlib_fields(head):
    """The fields Python's ``http.client.parse_headers`` (the email package's parser, as
    ``http.server`` and ``wsgiref`` use it) reads from a request ``head`` (the bytes after the
    request line, up to and including the blank line), as ``(name, value)`` bytes."""
    import http.client
    import io

    message = http.client.parse_headers(io.BytesIO(head))
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in message.items()]


class _Unfinished(Exception):
    """The bytes end inside a request."""


class _Bad(Exception):
    """A request the lenient model cannot read either."""


def _line(data, pos):
    """``(line without its end, position after it)``; bare LF ends a line like CR LF."""
    end = data.find(b"\n", pos)
    if end < 0:
        raise _Unfinished()
    line = data[pos:end]
    return (line[:-1] if line[-1:] == b"\r" else line), end + 1


def _lenient_fields(data, pos):
    """Field lines up to the blank line: ``([(folded name, value)], position after it)``."""
    fields = []
    while True:
        line, pos = _line(data, pos)
        if not line:
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise _Bad("continuation line before any field")
            name, value = fields[-1]
            fields[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" "))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.rstrip(b" \t"):
            raise _Bad(f"field line without a name: {line[:40]!r}")
        fields.append((name.rstrip(b" \t").lower().replace(b"_", b"-"), value.strip(b" \t")))


#: Methods whose content an app may not read (RFC 9110 gives it no meaning, §9.3.7 none defined
#: for OPTIONS, whose handlers, CORS preflights, rarely read any): the CL.0 backend.
_CONTENT_IGNORED = (b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS")


def _lenient_request(data, pos, last_length, ignores_bodies=False):
    """One request from ``pos``: ``(Seen, position after it)``."""
    line, pos = _line(data, pos)
    while not line:  # empty lines before a request line are skipped
        line, pos = _line(data, pos)
    words = line.split()
    if len(words) != 3 or not words[2].startswith(b"HTTP/"):
        raise _Bad(f"request line {line[:60]!r}")
    fields, pos = _lenient_fields(data, pos)
    if ignores_bodies and words[0] in _CONTENT_IGNORED:
        return Seen(words[0], words[1], fields, b""), pos
    codings = b",".join(v for n, v in fields if n == b"transfer-encoding")
    lengths = [v for n, v in fields if n == b"content-length"]
    body = b""
    if codings:
        if codings.split(b",")[-1].strip(b" \t").lower() != b"chunked":
            raise _Bad(f"transfer-encoding {codings[:40]!r}")
        chunks = []
        while True:
            line, pos = _line(data, pos)
            size = line.split(b";", 1)[0].strip(b" \t")
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                raise _Bad(f"chunk size line {line[:40]!r}")
            if not int(size, 16):
                break
            size = int(size, 16)
            if len(data) <= pos + size:
                raise _Unfinished()
            chunks.append(data[pos:pos + size])
            pos += size
            if data[pos:pos + 2] == b"\r\n":
                pos += 2
            elif data[pos:pos + 1] == b"\n":
                pos += 1
            elif data[pos:] == b"\r":
                raise _Unfinished()
            else:
                raise _Bad("no line end after chunk data")
        _trailers, pos = _lenient_fields(data, pos)
        body = b"".join(chunks)
    elif lengths:
        value = lengths[-1 if last_length else 0]
        if not value or value.strip(b"0123456789"):
            raise _Bad(f"content-length {value[:40]!r}")
        if len(data) < pos + int(value):
            raise _Unfinished()
        body, pos = data[pos:pos + int(value)], pos + int(value)
    return Seen(words[0], words[1], fields, body), pos


def lenient_view(data, last_length=False, ignores_bodies=False):
    """A deliberately lenient HTTP/1.1 request parser: what permissive legacy backends make of
    the bytes. Small and deterministic; each rule is one that real servers apply:

    * a line ends at LF, with or without CR (RFC 9112 §2.2 lets recipients; nginx, Apache
      httpd, Go's net/textproto); empty lines before a request line are skipped (§2.2; nginx,
      Apache httpd);
    * the request line is split at runs of any whitespace (Python's ``http.server``:
      ``requestline.split()``);
    * field names are case-insensitive and ``_`` is ``-``: the CGI-style environment
      (``HTTP_TRANSFER_ENCODING``) of the Mongrel parser (Unicorn, Puma before 5.0.3),
      HTTP::Parser::XS (Starman, Starlet) and ``wsgiref``;
    * whitespace between a name and its colon is dropped (Apache httpd 2.2; Gunicorn before
      20.0.1, its ``strip_header_spaces`` since);
    * an obs-fold line (starting with SP or HTAB) continues the previous value, joined with a
      SP (RFC 9112 §5.2; Apache httpd, Gunicorn, Python's email parser);
    * Transfer-Encoding: the codings of every such field, joined; the body is chunked when the
      last is ``chunked`` in any case (RFC 9112 §6.3; nginx, Apache httpd, Puma), and a
      Transfer-Encoding wins over Content-Length (§6.3 item 3; Apache httpd, Gunicorn, Puma);
    * of several Content-Length fields the first counts (``http.server`` and ``wsgiref`` read
      ``headers.get("Content-Length")``, the email package's first), or with ``last_length``
      the last (a CGI-style environment filled field by field, each copy overwriting the
      one before);
    * chunk sizes are hex digits with optional whitespace around them and any extension after
      ``;`` skipped (RFC 9112 §7.1.1; llhttp's ``lenient_spaces_after_chunk_size``, Apache
      httpd); chunk data may end in a bare LF; the trailer section is read and ignored;
    * no Transfer-Encoding and no Content-Length: no body (RFC 9112 §6.3 item 7);
    * with ``ignores_bodies``, the app of the CL.0 desync: no content is read on GET, HEAD,
      DELETE or TRACE whatever the head says (static-file handlers and frameworks that never
      look for a body there), and after a request that said ``connection: close`` nothing more
      is read (the server answers and closes, as every one does).

    Leftover is what follows the last complete request (an unfinished request or junk)."""
    requests, pos = [], 0
    while pos < len(data):
        try:
            seen, pos_after = _lenient_request(data, pos, last_length, ignores_bodies)
        except _Unfinished:
            return View(requests, data[pos:], None)
        except _Bad as exc:
            return View(requests, data[pos:], f"lenient: {exc}")
        requests.append(seen)
        pos = pos_after
        if ignores_bodies and any(n.lower() == b"connection" and v.strip(b" \t").lower() == b"close"
                                  for n, v in seen.fields):
            return View(requests, b"", None)  # closed: the rest is never read
    return View(requests, b"", None)


def _lenient_last_length(data):
    """:func:`lenient_view` taking the last of several Content-Length fields."""
    return lenient_view(data, last_length=True)


def ignores_bodies_view(data):
    """:func:`lenient_view` as an app that reads no content on GET, HEAD, DELETE or TRACE: it
    runs every request it finds, so a request hidden in such content shows up here."""
    return lenient_view(data, ignores_bodies=True)


#: The parsers every byte proxyd writes to an HTTP/1.1 backend is read with.
BACKEND_ORACLES = (("h11", h11_view), ("llhttp", llhttp_view), ("lenient", lenient_view),
                   ("lenient, last length", _lenient_last_length))


def _fold(fields):
    """Fields as a CGI-style backend compares them: name lower-case with ``_`` as ``-``,
    value without surrounding whitespace."""
    return [(n.lower().replace(b"_", b"-"), v.strip(b" \t")) for n, v in fields]


def backend_views(wire, method=None):
    """``{oracle name: View}`` of ``wire`` for every parser of :data:`BACKEND_ORACLES`; llhttp
    is left out when it refused a ``method`` outside its table (:data:`LLHTTP_METHODS`), which
    is then asserted to be the reason."""
    views = {}
    for name, view in BACKEND_ORACLES:
        seen = view(wire)
        if name == "llhttp" and method is not None and method not in LLHTTP_METHODS:
            assert not seen.requests and ("method" in seen.error or "Preface" in seen.error), \
                seen
            continue
        views[name] = seen
    return views


def assert_backends_agree(wire, method=None):
    """Every parser reads the same complete requests (method, target, body) from ``wire``, at
    most one, and when there is one, no byte after it; returns that list. For a backend
    connection proxyd aborted (a request refused after its head went), ``wire`` may end inside
    the request: then no parser may see it complete."""
    views = backend_views(wire, method)
    found = {name: [(r.method, r.target, r.body) for r in v.requests]
             for name, v in views.items()}
    assert len(set(map(tuple, found.values()))) == 1, (found, wire)
    requests = found["h11"]
    assert len(requests) <= 1, (requests, wire)
    ran = ignores_bodies_view(wire)  # an app that reads no content on GET: no hidden request
    assert len(ran.requests) <= 1, (ran, wire)
    if requests:
        assert all(v.leftover == b"" for v in views.values()), (views, wire)
        assert ran.error is None and ran.leftover == b"", (ran, wire)
        assert [(r.method, r.target) for r in ran.requests] == [r[:2] for r in requests]
    return requests


def assert_one_backend_request(wire, method, target, body):
    """Every parser (:data:`BACKEND_ORACLES`) reads ``wire`` as exactly one complete request
    with this method, target and body and no byte after it; h11, llhttp, the lenient model and
    Python's email parser (:func:`stdlib_fields`) read the same fields from its head."""
    views = backend_views(wire, method)
    for name, view in views.items():
        assert view.error is None and view.leftover == b"" and len(view.requests) == 1, \
            (name, view, wire)
        seen = view.requests[0]
        assert (seen.method, seen.target, seen.body) == (method, target, body), \
            (name, seen, wire)
    ran = ignores_bodies_view(wire)  # an app that reads no content on GET: no hidden request
    assert ran.error is None and ran.leftover == b"", (ran, wire)
    assert [(r.method, r.target) for r in ran.requests] == [(method, target)], (ran, wire)
    head = wire[wire.index(b"\n") + 1:wire.index(b"\r\n\r\n") + 4]
    expected = _fold(views["h11"].requests[0].fields)
    for name, fields in [(n, v.requests[0].fields) for n, v in views.items()] + \
            [("email", stdlib_fields(head))]:
        assert _fold(fields) == expected, (name, fields, wire)


# -- hostile client requests for the oracle properties (unit and protocol tests) -----------------

class ClientRequest(namedtuple("ClientRequest", "family method target authority fields body "
                                                "framing chunk_exts trailers")):
    """A request as a client of ``family`` (``h1``, ``h2``, ``spdy``) sends it: ``fields`` as
    written (hostile ones included), ``body`` bytes, ``framing`` ``length`` (a Content-Length
    field of the body's size), ``chunked`` (HTTP/1.1 only) or ``none``, ``chunk_exts`` the
    extension written after each chunk size, ``trailers`` fields after the body."""


_OK_NAMES = [b"x-a", b"accept", b"cookie", b"user-agent", b"x-trace_id", b"x-forwarded-host"]
FRAMING_SPELLINGS = [b"Transfer-Encoding", b"transfer-encoding", b"transfer_encoding",
                     b"TRANSFER_ENCODING", b"Transfer_encoding", b"transfer-encoding ",
                     b"transfer-encoding\t", b" transfer-encoding", b"Content-Length",
                     b"content-length", b"content_length", b"CONTENT_LENGTH",
                     b"content-length ", b"connection", b"keep_alive", b"proxy_connection",
                     b"te", b"expect", b"upgrade", b"trailer", b"host", b"x_forwarded_for",
                     b"http2_settings", b"", b"x\x00a", b"x:a"]
HOSTILE_VALUES = [b"chunked", b"Chunked", b"CHUNKED", b"gzip, chunked", b"chunked, gzip",
                  b" chunked", b"chunked\t", b"\x0bchunked", b"chunked\x0c", b"0", b"5", b"+5",
                  b"05", b"5, 5", b"-1", b"1\r\nTransfer-Encoding: chunked", b"a\r\n b",
                  b"a\r\n\tchunked", b"a\nb", b"a\rb", b"a\x00b", b"\xff\xfe", b"a\x85b",
                  b"close", b"trailers", b"100-continue", b"h2c", b"", b" ", b"x"]
SMUGGLED_BODIES = [b"0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n",
                   b"GET /admin HTTP/1.1\r\nhost: a\r\n\r\n", b"\r\n", b"0\n\n"]


def client_requests(families=("h1", "h2", "spdy")):
    """A hypothesis strategy of :class:`ClientRequest`: mostly valid parts so that requests
    pass and are written, mixed with framing names in every case and spelling (``_`` for
    ``-``, whitespace around them), duplicated fields, obs-fold attempts, CR, LF, NUL and other
    controls in values, chunked bodies with extensions and trailers, absolute-form targets."""
    from hypothesis import strategies as st

    def mostly(valid, hostile):
        """About three draws in four from ``valid``, the others from ``hostile``."""
        return st.integers(0, 3).flatmap(
            lambda pick: st.sampled_from(hostile if pick == 3 else valid))

    name = mostly(_OK_NAMES, FRAMING_SPELLINGS)
    value = mostly([b"1", b"text/html", b"a=1", b"v a", b"chunked", b"5"], HOSTILE_VALUES)
    return st.builds(
        ClientRequest,
        family=st.sampled_from(families),
        method=mostly([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH"],
                      [b"get", b"X-CUSTOM", b"GET /x", b"PRI"]),
        target=mostly([b"/", b"/a?b=c", b"/a/../b", b"/%2e%2e/x", b"/x;y", b"/up",
                       b"http://example.com/up?q"],
                      [b"*", b"/a b", b"/a\r\nb", b"/#f", b"/\xff", b"/a\tb", b"/a\x00"]),
        authority=mostly([b"example.com", b"example.com:8080", b"[::1]"],
                         [b"a b", b"a\r\nx", b"a_b", b""]),
        fields=st.lists(st.tuples(name, value), max_size=4),
        body=st.binary(max_size=24) | st.sampled_from(SMUGGLED_BODIES),
        framing=st.sampled_from(["length", "chunked", "none"]),
        chunk_exts=st.lists(st.sampled_from([b"", b"", b";a=b", b";x", b" ;q", b';a="b;c"']),
                            min_size=1, max_size=3),
        trailers=st.lists(st.tuples(name, value), max_size=2))


def h1_request_bytes(req):
    """The bytes of ``req`` as an HTTP/1.1 client writes them (fields and trailers verbatim;
    a chunked body cut into ``len(req.chunk_exts)`` chunks, each with its extension)."""
    lines = [req.method + b" " + req.target + b" HTTP/1.1", b"Host: " + req.authority]
    lines += [n + b": " + v for n, v in req.fields]
    body = req.body
    if req.framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif req.framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        step = -(-len(body) // len(req.chunk_exts)) or 1
        pieces = [body[i:i + step] for i in range(0, len(body), step)]
        body = b"".join(b"%X%s\r\n%s\r\n" % (len(p), ext, p)
                        for p, ext in zip(pieces, req.chunk_exts))
        body += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in req.trailers) + b"\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def h2_request_head(req):
    """The HTTP/2 (or SPDY/3, names mapped) head of ``req``: pseudo-header fields, its fields
    verbatim and, with ``length`` framing, a Content-Length field."""
    head = [(b":method", req.method), (b":scheme", b"http"), (b":authority", req.authority),
            (b":path", req.target), *req.fields]
    if req.framing == "length":
        head.append((b"content-length", b"%d" % len(req.body)))
    return head
