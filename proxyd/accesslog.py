"""Access log: one line per finished request, buffered and flushed in batches.

Strategy: formatting is a pure function of the request's facts; the writer keeps lines in memory
up to ``FLUSH_BYTES`` and the service flushes it once a second and at shutdown, so the hot path
pays one string format and no system call per request.

Line format (space-separated, quoted request like nginx's combined log)::

    127.0.0.1 h2 "GET example.com /path" 200 1234 0.004 127.0.0.1:8081 0.003
    client    proto "method authority path" status bytes request_time backend backend_time
"""

import sys

FLUSH_BYTES = 64 * 1024


def format_line(*, client, protocol, method, authority, path, status, sent, request_time,
                backend, backend_time):
    """One access-log line (without the newline); byte fields are decoded leniently."""
    def text(value):
        return value.decode("ascii", "backslashreplace") if isinstance(value, bytes) else value

    return (
        f'{text(client)} {protocol} "{text(method)} {text(authority) or "-"} {text(path)}" '
        f"{status} {sent} {request_time:.3f} {text(backend) or '-'} {backend_time:.3f}"
    )


class AccessLog:
    """Buffered access-log writer to a file path, or standard output for ``"-"``."""

    def __init__(self, path):
        self.path = path
        self._file = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self._lines = []
        self._size = 0

    def write(self, frontend, stream, now):
        """Record a finished stream of ``frontend``."""
        request = stream.request
        backend = stream.backend.address if stream.backend is not None else b""
        line = format_line(
            client=frontend.client_ip, protocol=frontend.codec.protocol, method=request.method,
            authority=request.authority, path=request.path, status=stream.status or 0,
            sent=stream.sent_bytes, request_time=now - stream.started, backend=backend,
            backend_time=now - stream.backend_started,
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self):
        """Write buffered lines out."""
        if self._lines:
            self._file.write("\n".join(self._lines) + "\n")
            self._file.flush()
            self._lines.clear()
            self._size = 0

    def close(self):
        """Flush and close (standard output stays open)."""
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()


__all__ = ["AccessLog", "format_line"]
