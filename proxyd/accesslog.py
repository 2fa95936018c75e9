"""Access log: one line per finished request, in one of three formats, buffered and reopenable.

Strategy: formatting is a pure function of the request's facts; the writer keeps lines in memory
up to ``FLUSH_BYTES`` and the service flushes it once a second and at shutdown, so the hot path
pays one string format and no system call per request.

Every field that a client controls (method, authority, path, User-Agent, Referer) is escaped the
way nginx escapes its access log (``escape=default``): ``"``, ``\\``, control bytes and bytes
outside printable ASCII become ``\\xHH``, so no request can end a quoted field or start a new
line; each is cut at ``MAX_FIELD`` bytes, so no request makes a line longer than ~200 KiB (a
head the gate refused: at ``MAX_REFUSED_FIELD``, it cost no backend work). The
words of the request (``"method authority path"`` in the ``proxyd`` format, ``"method path
version"`` in the combined one) also escape their spaces: a refused request is logged as it
came, and a method with spaces would shift the words (and the fields after them, for tools
that split a combined line at spaces). The JSON format escapes by JSON's rules instead and is
pure ASCII.

Formats (``access_log: {path, format}``)::

    proxyd    127.0.0.1 h2 "GET example.com /path" 200 1234 0.004 127.0.0.1:8081 0.003
              client proto "method authority path" status bytes request_time backend backend_time
    combined  127.0.0.1 - - [06/Dec/2026:01:58:45 +0000] "GET /path HTTP/2.0" 200 1234 "-" "curl/8"
              nginx's and Apache's combined format, for the tools that already parse it
    json      {"time": "2026-12-06T01:58:45+00:00", "client": "127.0.0.1", "protocol": "h2", ...}

``"-"`` writes to a duplicate of file descriptor 1, opened once: closing or reopening the log
never closes the process's real standard output (twistd logs there with ``--logfile=-``).
:meth:`AccessLog.reopen` (SIGUSR1) reopens a file path after log rotation (the new file first:
when it cannot be opened, the old one stays in use and the failure is reported).

Workers share one file: each opens it with ``O_APPEND`` and writes every batch of whole lines
with one ``write(2)`` of the whole batch (no stdio buffer that could split it), and Linux
appends each such write to a regular file at once, under the file's lock, so lines of different
workers never interleave (local file systems; not over NFS). With ``"-"``, a worker's standard
output is a pipe to its supervisor, which copies whole lines to its own standard output.
"""

import json
import os
import re
import time

from proxyd import gate

FLUSH_BYTES = 64 * 1024
#: Bytes of one client-controlled field that are logged: escaping may grow a byte to four
#: characters, and a worker's line to its supervisor (``"-"``) must stay far below its 1 MiB
#: bound, whatever header sizes the configuration allows.
MAX_FIELD = 8192
#: Bytes of a refused head's method, authority and path that are logged: such a head cost no
#: backend work, and through HPACK a few bytes on the wire can name kilobytes of fields.
MAX_REFUSED_FIELD = 256
FORMATS = ("proxyd", "combined", "json")

_UNSAFE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# How the request line of the combined format names each frontend protocol.
_REQUEST_VERSION = {"h2": "HTTP/2.0", "http/1.1": "HTTP/1.1", "spdy/3.1": "SPDY/3.1",
                    "spdy/3": "SPDY/3", "spdy/2": "SPDY/2"}


def _hex(match):
    return b"\\x%02X" % match.group()[0]


def escape(value):
    """``value`` (bytes or str) as log-safe ASCII text, escaped the way nginx escapes, cut at
    :data:`MAX_FIELD` bytes (then ending in ``...``)."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if len(value) > MAX_FIELD:
        value = value[:MAX_FIELD] + b"..."
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return _UNSAFE.sub(_hex, value).decode("ascii")


def format_line(*, client, protocol, method, authority, path, status, sent, request_time,
                backend, backend_time):
    """One line of the ``proxyd`` format (without the newline)."""
    return (
        f'{escape(client)} {protocol} "{_word(method)} {_word(authority) or "-"} '
        f'{_word(path)}" {status} {sent} {request_time:.3f} {escape(backend) or "-"} '
        f"{backend_time:.3f}"
    )


def _word(value):
    """:func:`escape`, and spaces as ``\\x20``: one word of a space-separated field."""
    return escape(value).replace(" ", "\\x20")


def _header(request, name):
    for key, value in request.headers:
        if key == name:
            return value
    return b""


def _backend_address(stream):
    return stream.backend.address if stream.backend is not None else b""


def _proxyd(frontend, stream, now):
    request = stream.request
    return format_line(
        client=frontend.client_ip, protocol=frontend.codec.protocol, method=request.method,
        authority=request.authority, path=request.path, status=stream.status or 0,
        sent=stream.sent_bytes, request_time=now - stream.started,
        backend=_backend_address(stream), backend_time=now - stream.backend_started)


class _Clock:
    """Timestamps for the combined and json formats, computed once per second.

    They are read from the wall clock here: the ``now`` a line is written with is the
    reactor's time, a monotonic clock that gives durations but no time of day."""

    def __init__(self):
        self._second = None
        self._local = self._iso = ""

    def stamps(self):
        """The time of day now, as the combined (local) and the json (ISO 8601) formats
        write it."""
        second = int(time.time())
        if second != self._second:
            tm = time.localtime(second)
            zone = time.strftime("%z", tm)
            self._local = (f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
                           f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {zone}")
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f"{zone[:3]}:{zone[3:]}"
            self._second = second
        return self._local, self._iso


_clock = _Clock()


def _combined(frontend, stream, now):
    request = stream.request
    version = _REQUEST_VERSION.get(frontend.codec.protocol, "HTTP/1.1")
    referer = escape(_header(request, b"referer")) or "-"
    agent = escape(_header(request, b"user-agent")) or "-"
    return (f'{escape(frontend.client_ip)} - - [{_clock.stamps()[0]}] '
            f'"{_word(request.method)} {_word(request.path)} {version}" '
            f'{stream.status or 0} {stream.sent_bytes} "{referer}" "{agent}"')


def _text(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def _json(frontend, stream, now):
    request = stream.request
    return json.dumps({
        "time": _clock.stamps()[1],
        "client": _text(frontend.client_ip),
        "protocol": frontend.codec.protocol,
        "method": _text(request.method),
        "authority": _text(request.authority),
        "path": _text(request.path),
        "status": stream.status or 0,
        "bytes_sent": stream.sent_bytes,
        "request_time": round(now - stream.started, 6),
        "backend": _text(_backend_address(stream)) or None,
        "backend_time": round(now - stream.backend_started, 6),
        "referer": _text(_header(request, b"referer")) or None,
        "user_agent": _text(_header(request, b"user-agent")) or None,
    }, ensure_ascii=True, separators=(",", ":"))


FORMATTERS = {"proxyd": _proxyd, "combined": _combined, "json": _json}


class AccessLog:
    """Buffered access-log writer to a file path, or standard output for ``"-"``."""

    def __init__(self, path, log_format="proxyd"):
        self.path = path
        self.format = log_format
        self._formatter = FORMATTERS[log_format]
        self._lines = []
        self._size = 0
        self.error = None  # the last failed write, until the service reports it
        self._fd = self._open()

    def _open(self):
        if self.path == "-":
            return os.dup(1)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, frontend, stream, now):
        """Record a finished stream of ``frontend``."""
        line = self._formatter(frontend, stream, now)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self):
        """Write buffered lines out, all of them in one write (see the module docstring).

        Never raises: a write that fails (disk full, an I/O error) drops that batch, so memory
        stays bounded and the request that happened to fill the buffer is not failed by it; the
        error waits in ``error`` for the service to report (once a second at most)."""
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode("ascii")
            self._lines.clear()
            self._size = 0
            view = memoryview(data)
            try:
                while view:  # a regular file takes it whole; a pipe may take it in parts
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                self.error = f"{len(view)} bytes of access log lost: {exc}"

    def reopen(self):
        """Flush, then reopen a file path (after rotation); stdout stays as it is.

        The new file is opened before the old descriptor is closed: when it cannot be opened
        (its directory is gone), OSError is raised and the log goes on into the old file. (Closing
        first would leave a closed number that the next accepted connection gets, and access
        lines would then be written to a client's socket.)"""
        self.flush()
        if self.path != "-":
            fd = self._open()
            old, self._fd = self._fd, fd
            os.close(old)

    def close(self):
        """Flush and close (for "-" only the duplicate descriptor is closed)."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def refused_request(raw):
    """A gate-refused head as far as the access log needs it (method, authority, path, each cut
    at :data:`MAX_REFUSED_FIELD` bytes; raw)."""
    found = {}
    for name, value in raw.headers:
        if name[:1] != b":":
            if name.lower() == b"host" and b":authority" not in found:
                found[b":authority"] = value
            continue
        found.setdefault(name, value)
    return gate.Request(raw.stream_id, _cut(found.get(b":method", b"-")), b"",
                        _cut(found.get(b":authority", b"")), _cut(found.get(b":path", b"-")), [],
                        None, True, raw.http_version)


def _cut(value):
    """``value`` cut at :data:`MAX_REFUSED_FIELD` bytes (then ending in ``...``)."""
    return value if len(value) <= MAX_REFUSED_FIELD else value[:MAX_REFUSED_FIELD] + b"..."


__all__ = ["AccessLog", "FORMATS", "escape", "format_line", "refused_request"]