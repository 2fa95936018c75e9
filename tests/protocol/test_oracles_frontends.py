"""The bytes the whole in-memory proxy writes to an HTTP/1.1 backend, read by several parsers.

The same hostile requests as ``tests/unit/test_backend_oracles.py`` (:func:`tests.oracles.
client_requests`), sent by a real client of each frontend (raw HTTP/1.1 bytes, an h2 client
that validates nothing, SPDY/3.1 and SPDY/2 frames built by hand) through the frontend codec,
the gate, the stream machine, the header translation and the HTTP/1.1 writer. The exact bytes
the backend connection received are read by h11, llhttp, the lenient model of legacy backends
(first and last Content-Length) and, for the head's fields, Python's email parser
(:data:`tests.oracles.BACKEND_ORACLES`). Checked, for every example:

* a refused request writes nothing to any backend;
* a request that reached the backend is, to every parser alike, exactly one request with the
  method, target (normalised) and body the client sent, and no byte after it. For HTTP/1.1
  clients "what the client sent" is h11's reading of the client's bytes (the first request
  in them); where h11 reads no complete request, the parsers must still agree with each
  other;
* a request refused after its head went (a length mismatch, bad trailers) leaves the backend
  connection aborted, and the parsers agree on what came before (nothing complete, or the same
  one request and nothing after it).

Bounded in the suite (four times ``PROXYD_FUZZ_EXAMPLES``, 60 by default, per test); a long
run is ``PROXYD_FUZZ_EXAMPLES=2000 python -m pytest tests/protocol/test_oracles_frontends.py
-q`` (8,000 requests per test; 4,000 took 17-20 s per test here).
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.codec.spdy import frames as fr
from proxyd.route import normalize_target
from tests.oracles import (assert_backends_agree, assert_one_backend_request, client_requests,
                           h11_view, h1_request_bytes, h2_request_head)

from memproxy import Proxy, base_config

EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "60"))
# About 5 ms per example: four times the fuzz tests' count fits the bounded run.
FUZZ = settings(max_examples=4 * EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=list(HealthCheck))
LONG = pytest.mark.timeout(max(300, EXAMPLES // 10))
_BASE = []


def make(tmp_path_factory, protocols):
    """A proxy whose cleartext listener offers ``protocols`` (one shared directory: see
    ``tests/protocol/test_fuzz.py``)."""
    if not _BASE:
        _BASE.append(tmp_path_factory.mktemp("oracles"))
    return Proxy(_BASE[0], base_config(
        listen=[{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": protocols}]))


def forwarded_target(target):
    """The target proxyd forwards for a client's: origin-form (an absolute-form target's path;
    HTTP/1.1 and SPDY clients may send one), normalised as routing saw it."""
    if target.startswith((b"http://", b"https://")):
        target = target[target.index(b"/", target.index(b"//") + 2):]
    return normalize_target(target)


def send_h1(proxy, req):
    """Send ``req`` as raw HTTP/1.1 bytes; return the first request h11 reads in them, as
    ``(method, target, body)`` (what follows it, if anything, is the client's next request or
    junk, answered after the first), or None when h11 reads no complete request."""
    data = h1_request_bytes(req)
    proxy.h1_client().write(data)
    view = h11_view(data)
    if not view.requests:
        return None
    seen = view.requests[0]
    return seen.method, forwarded_target(seen.target), seen.body


def send_h2(proxy, req):
    """Send ``req`` from an h2 client that checks nothing; return ``(method, target, body)``."""
    client = proxy.h2_client(raw=True)
    h2 = client.h2
    sid = h2.get_next_available_stream_id()
    more = bool(req.body or req.trailers)
    h2.send_headers(sid, h2_request_head(req), end_stream=not more)
    if req.body:
        h2.send_data(sid, req.body, end_stream=not req.trailers)
    if req.trailers:
        h2.send_headers(sid, req.trailers, end_stream=True)
    client.flush()
    return req.method, forwarded_target(req.target), req.body


def send_spdy(proxy, req, version):
    """Send ``req`` in hand-built SPDY/``version`` frames; return ``(method, target, body)``."""
    client = proxy.spdy_client(version)
    names = ((b":method", b":path", b":version", b":host", b":scheme") if version == 3
             else (b"method", b"url", b"version", b"host", b"scheme"))
    values = (req.method, req.target, b"HTTP/1.1", req.authority, b"http")
    pairs = list(zip(names, values)) + h2_request_head(req)[4:]
    more = bool(req.body or req.trailers)
    client.send_syn(1, pairs, fin=not more)
    if req.body:
        client.write(fr.encode_data(1, req.body, fin=not req.trailers))
    if req.trailers:
        client.write(client.peer.headers(1, req.trailers, fin=True))
    return req.method, forwarded_target(req.target), req.body


def check_backend(proxy, expected):
    """What every backend connection received, against the oracles (module docstring)."""
    assert proxy.connects <= 1
    if not proxy.connects:
        return
    backend = proxy.backend(0)
    wire = backend.received()
    if not wire:
        return
    method = wire.split(b" ", 1)[0]
    if not backend.transport.disconnecting and not assert_backends_agree(wire, method):
        # Expect: 100-continue holds the body back until the backend asks for it.
        backend.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
        wire += backend.received()
    if backend.transport.disconnecting:
        assert_backends_agree(wire, method)
    elif expected is None:
        assert len(assert_backends_agree(wire, method)) == 1, wire
    else:
        assert_one_backend_request(wire, *expected)
    assert proxy.listener.internal_errors == 0


@LONG
@FUZZ
@given(client_requests(("h1",)))
def test_http1_clients(tmp_path_factory, req):
    """HTTP/1.1 clients: what reaches the backend is one identical request to every parser."""
    proxy = make(tmp_path_factory, ["http/1.1"])
    check_backend(proxy, send_h1(proxy, req))


@LONG
@FUZZ
@given(client_requests(("h2",)))
def test_h2_clients(tmp_path_factory, req):
    """HTTP/2 clients: what reaches the backend is one identical request to every parser."""
    proxy = make(tmp_path_factory, ["h2"])
    check_backend(proxy, send_h2(proxy, req))


@LONG
@FUZZ
@given(client_requests(("spdy",)), st.sampled_from([("spdy/3.1", 3), ("spdy/2", 2)]))
def test_spdy_clients(tmp_path_factory, req, version):
    """SPDY/3.1 and SPDY/2 clients: what reaches the backend is one identical request to every
    parser."""
    proxy = make(tmp_path_factory, [version[0]])
    check_backend(proxy, send_spdy(proxy, req, version[1]))
