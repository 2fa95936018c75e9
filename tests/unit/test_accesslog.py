"""Tests of proxyd.accesslog: nginx-style escaping, the three formats, buffering and reopening.

Strategy: finished streams are stand-ins carrying exactly the attributes the access log may read
(``stream.request.method/.authority/.path/.headers``, ``status``, ``sent_bytes``, ``started``,
``backend_started``, ``backend.address``; ``frontend.client_ip``, ``frontend.codec.protocol``);
lines are checked byte for byte and, for the combined and json formats, parsed back the way log
tools parse them.
"""

import json
import os
import re
from types import SimpleNamespace

import pytest

from proxyd.accesslog import FORMATTERS, AccessLog, escape, format_line

FORGED_PATH = b'/x" 200 1 0.000 - 0.000\n10.6.6.6 h2 "GET evil /admin'


def finished(path=b"/index.html", method=b"GET", status=200, headers=(), protocol="h2"):
    """A (frontend, stream) pair as the relay hands them to the access log."""
    request = SimpleNamespace(method=method, authority=b"example.com", path=path,
                              headers=list(headers))
    stream = SimpleNamespace(request=request, status=status, sent_bytes=1234, started=100.0,
                             backend_started=100.001,
                             backend=SimpleNamespace(address=b"127.0.0.1:8081"))
    frontend = SimpleNamespace(client_ip=b"127.0.0.1", codec=SimpleNamespace(protocol=protocol))
    return frontend, stream


@pytest.mark.parametrize("raw, expected", [
    (b"/plain/path?a=1&b=2", "/plain/path?a=1&b=2"),
    (b"with space", "with space"),
    (b'quote"d', "quote\\x22d"),
    (b"back\\slash", "back\\x5Cslash"),
    (b"new\nline\r", "new\\x0Aline\\x0D"),
    (b"\x00\x1f\x7f\x80\xff", "\\x00\\x1F\\x7F\\x80\\xFF"),
    ("caf\u00e9", "caf\\xC3\\xA9"),
    (b"", ""),
])
def test_escape_like_nginx(raw, expected):
    """Quotes, backslashes, control bytes and bytes outside printable ASCII become \\xHH (upper
    case hex, as nginx writes them); everything else is kept."""
    assert escape(raw) == expected


def test_proxyd_format_is_unchanged_for_ordinary_requests():
    """The default format still reads as documented in README and conf/proxy.yaml."""
    line = format_line(client=b"127.0.0.1", protocol="h2", method=b"GET",
                       authority=b"example.com", path=b"/path", status=200, sent=1234,
                       request_time=0.0042, backend=b"127.0.0.1:8081", backend_time=0.003)
    assert line == '127.0.0.1 h2 "GET example.com /path" 200 1234 0.004 127.0.0.1:8081 0.003'


def test_format_line_escapes_forged_fields():
    """The default format's quoted field cannot be closed or split by a client: a path with a
    quote and a newline stays inside it (issue 9, item 10)."""
    line = format_line(client=b"127.0.0.1", protocol="h2", method=b'GE"T', authority=b"a\\b",
                       path=FORGED_PATH, status=200, sent=1, request_time=0.0,
                       backend=b"127.0.0.1:8081", backend_time=0.0)
    assert "\n" not in line and line.count('"') == 2
    assert line.startswith('127.0.0.1 h2 "GE\\x22T a\\x5Cb '
                           '/x\\x22\\x20200\\x201\\x200.000\\x20-\\x200.000\\x0A10.6')


@pytest.mark.parametrize("log_format", ["proxyd", "combined", "json"])
def test_a_client_cannot_forge_log_lines(tmp_path, log_format):
    """A path and a User-Agent full of quotes and newlines give exactly one line, and no quote
    from the client appears unescaped (json: the line parses and round-trips the text)."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), log_format)
    log.write(*finished(path=FORGED_PATH, headers=[(b"user-agent", b'ua"\n"x')]), now=100.5)
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    if log_format == "json":
        record = json.loads(lines[0])
        assert record["path"] == FORGED_PATH.decode()
        assert record["user_agent"] == 'ua"\n"x'
    else:  # spaces escaped too: the words of the request stay three
        assert '\\x22\\x20200\\x201\\x200.000\\x20-\\x200.000\\x0A10.6.6.6' in lines[0]
        assert lines[0].count('"') == (2 if log_format == "proxyd" else 6)


COMBINED = re.compile(r'^(\S+) - - \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def test_combined_format_parses_like_nginx_combined():
    """The combined line matches the regular expression log tools use for nginx/Apache."""
    path_headers = [(b"referer", b"https://a.example/"), (b"user-agent", b"curl/8.0")]
    frontend, stream = finished(path=b"/a?b=1", headers=path_headers)
    line = FORMATTERS["combined"](frontend, stream, 1765000000.0)
    match = COMBINED.match(line)
    assert match, line
    client, when, request, status, sent, referer, agent = match.groups()
    assert (client, request, status, sent) == ("127.0.0.1", "GET /a?b=1 HTTP/2.0", "200", "1234")
    assert (referer, agent) == ("https://a.example/", "curl/8.0")
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", when)


def test_combined_without_referer_and_agent_uses_dashes():
    """Absent headers are "-" as in nginx; SPDY and HTTP/1.1 requests name their protocol."""
    line = FORMATTERS["combined"](*finished(protocol="http/1.1"), 1765000000.0)
    assert line.endswith('"GET /index.html HTTP/1.1" 200 1234 "-" "-"')
    line = FORMATTERS["combined"](*finished(protocol="spdy/3.1"), 1765000000.0)
    assert '"GET /index.html SPDY/3.1"' in line


def test_json_format_fields():
    """One JSON object per line with the request's facts and ISO 8601 time."""
    record = json.loads(FORMATTERS["json"](*finished(status=404), 100.5))
    assert record["status"] == 404 and record["method"] == "GET"
    assert record["authority"] == "example.com" and record["protocol"] == "h2"
    assert record["bytes_sent"] == 1234 and record["backend"] == "127.0.0.1:8081"
    assert record["request_time"] == 0.5 and record["user_agent"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", record["time"])



def test_timestamps_come_from_the_wall_clock_and_durations_from_now(monkeypatch):
    """The ``now`` a line is written with is the reactor's time, a monotonic clock (durations,
    no time of day: 100.5 is the machine's uptime); the combined and json timestamps are the
    wall clock's, whatever ``now`` says."""
    import time

    from proxyd import accesslog

    monkeypatch.setattr(accesslog, "_clock", accesslog._Clock())
    monkeypatch.setattr(time, "time", lambda: 1765000000.0)  # 2025-12-06, 05:46:40 UTC
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        record = json.loads(FORMATTERS["json"](*finished(), 100.5))
        assert record["time"] == "2025-12-06T05:46:40+00:00"
        assert record["request_time"] == 0.5
        line = FORMATTERS["combined"](*finished(), 100.5)
        assert "[06/Dec/2025:05:46:40 +0000]" in line
    finally:
        monkeypatch.undo()
        time.tzset()

def test_lines_are_buffered_until_flush(tmp_path):
    """Lines reach the file on flush (the service flushes once a second), not per request."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(*finished(), now=100.5)
    assert path.read_text() == ""
    log.flush()
    assert path.read_text().count("\n") == 1
    log.close()


def test_reopen_after_rotation_writes_a_new_file(tmp_path):
    """After the file was moved away (logrotate), reopen() creates it again; buffered lines go to
    the old file first."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(*finished(path=b"/before"), now=100.5)
    log.flush()
    path.rename(tmp_path / "access.log.1")
    log.write(*finished(path=b"/buffered"), now=100.5)
    log.reopen()
    log.write(*finished(path=b"/after"), now=100.5)
    log.close()
    old = (tmp_path / "access.log.1").read_text()
    assert "/before" in old and "/buffered" in old
    assert "/after" in path.read_text() and "/before" not in path.read_text()


def test_stdout_log_writes_to_a_duplicate_of_fd_1(capfd):
    """"-" writes to file descriptor 1 through its own duplicate: closing the log leaves the
    process's standard output open (twistd replaces sys.stdout; SIGHUP used to close it)."""
    log = AccessLog("-")
    log.write(*finished(path=b"/to-stdout"), now=100.5)
    log.close()
    os.write(1, b"still open\n")
    out = capfd.readouterr().out
    assert "/to-stdout" in out and "still open" in out


def test_reopen_that_fails_keeps_the_old_file(tmp_path):
    """When the path cannot be opened again (its directory is gone), ``reopen`` raises OSError
    and the log keeps its old descriptor, open and usable: lines still reach the old file. (It
    used to close first and keep the closed number, which a new socket could then get.)"""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    access = AccessLog(str(logdir / "access.log"))
    old_fd = access._fd
    keep = os.open(logdir / "access.log", os.O_RDONLY)  # read what the old descriptor writes
    try:
        for child in logdir.iterdir():
            child.unlink()
        logdir.rmdir()
        with pytest.raises(OSError):
            access.reopen()
        assert access._fd == old_fd and os.fstat(old_fd)  # still open
        access._lines.append("after")
        access.flush()
        assert access.error is None and os.read(keep, 100) == b"after\n"
    finally:
        os.close(keep)
        access.close()


def test_failed_write_drops_the_batch_and_reports_it(tmp_path):
    """A write that fails (here: a descriptor that is no file) never raises into the request
    that filled the buffer: the batch is dropped (memory stays bounded) and ``error`` says what
    was lost, for the service to log."""
    access = AccessLog(str(tmp_path / "access.log"))
    read_end, write_end = os.pipe()
    os.close(write_end)
    os.close(access._fd)
    access._fd = read_end  # writing to a pipe's read end: EBADF
    access._lines.append("line")
    access.flush()
    assert access._lines == [] and "lost" in access.error
    access.close()


@pytest.mark.parametrize("log_format", ["proxyd", "combined", "json"])
def test_a_huge_client_field_is_cut(log_format):
    """A 300 KB User-Agent, path and Referer of bytes that escape to four characters each do
    not make a line of megabytes (with workers and ``"-"``, a line over 1 MiB made the
    supervisor kill the worker): each field is cut at MAX_FIELD bytes, marked ``...``."""
    from proxyd.accesslog import MAX_FIELD

    huge = b"\xff" * 300_000
    request = SimpleNamespace(method=b"GET", authority=b"a", path=b"/" + huge,
                              headers=[(b"user-agent", huge), (b"referer", huge)])
    frontend = SimpleNamespace(client_ip=b"127.0.0.1", codec=SimpleNamespace(protocol="h2"))
    stream = SimpleNamespace(request=request, status=200, sent_bytes=0, started=0.0,
                             backend_started=0.0, backend=None)
    line = FORMATTERS[log_format](frontend, stream, 1.0)
    assert len(line) < 20 * MAX_FIELD and "..." in line


def test_spaces_cannot_shift_the_words_of_the_proxyd_format():
    """A refused request is logged as it came: an HTTP/2 ``:method`` of ``GET admin /x`` must
    stay one word of ``"method authority path"`` (spaces become ``\\x20``), so a parser reads
    the real authority and path."""
    line = format_line(client="127.0.0.1", protocol="h2", method=b"GET admin.internal /all",
                       authority=b"shop.example", path=b"/", status=400, sent=0,
                       request_time=0.0, backend="", backend_time=0.0)
    quoted = line.split('"')[1].split(" ")
    assert quoted == ["GET\\x20admin.internal\\x20/all", "shop.example", "/"]


def test_spaces_cannot_shift_the_words_of_the_combined_request():
    """combined: a refused HTTP/2 head is logged as it came, and a ``:method`` of ``GET /x
    HTTP/1.1" 200`` must not add words to ``"method path version"``: with them,
    ``awk '{print $9}'`` (the status of a combined line, the usual one-liner) read ``200`` for
    this 400, and ``$7`` (the path) ``/x``. Spaces of the method and the path become ``\\x20``,
    as in the proxyd format; the line still parses as combined."""
    frontend, stream = finished(method=b'GET /x HTTP/1.1" 200', path=b"/a b", status=400)
    line = FORMATTERS["combined"](frontend, stream, 1765000000.0)
    fields = line.split()
    assert (fields[6], fields[8]) == ("/a\\x20b", "400"), line
    assert COMBINED.match(line).group(3) == "GET\\x20/x\\x20HTTP/1.1\\x22\\x20200 /a\\x20b HTTP/2.0"


def test_a_refused_heads_fields_are_cut_short():
    """A head the gate refused cost no backend work, yet through HPACK a 13-byte HEADERS frame
    can name a 4 KB ``:path`` of bytes that escape to four characters each (a 16 KB line per
    refusal): its method, authority and path are logged cut at MAX_REFUSED_FIELD bytes (marked
    ``...``), as nginx logs little of a request it rejects; an accepted request keeps its path."""
    from proxyd.accesslog import MAX_REFUSED_FIELD, refused_request

    big = b"\xff" * 4000
    raw = SimpleNamespace(stream_id=1, http_version=b"2", headers=[
        (b":method", b"G" * 4000), (b":path", b"/" + big), (b":authority", big)])
    request = refused_request(raw)
    assert request.path == b"/" + big[:MAX_REFUSED_FIELD - 1] + b"..."
    assert request.method == b"G" * MAX_REFUSED_FIELD + b"..."
    assert request.authority == big[:MAX_REFUSED_FIELD] + b"..."
    frontend, stream = finished(path=b"/" + b"a" * 4000)
    stream.request = request
    line = FORMATTERS["proxyd"](frontend, stream, 1.0)
    assert len(line) < 4 * 4 * MAX_REFUSED_FIELD
    short = refused_request(SimpleNamespace(stream_id=3, http_version=b"2", headers=[
        (b":method", b"GET"), (b":path", b"/ok"), (b":authority", b"a.example")]))
    assert (short.method, short.path, short.authority) == (b"GET", b"/ok", b"a.example")
