"""Fuzzing each frontend codec through the whole in-memory proxy (hypothesis).

A conversation is generated for one frontend (HTTP/2, SPDY/3.1, 3, 2, HTTP/1.1): requests with
valid and hostile heads, bodies, trailers, resets, pings, window updates, garbage. Its bytes are
mutated (flipped, inserted, dropped bytes) and cut into random pieces; the backend answers each
request it receives with a drawn response (valid, chunked, broken, or a closed connection). Then
time runs past every timeout and the client goes away. Checked, for every example:

* nothing raises out of the network layer, and no stream ended in an internal error (the relay
  counts exceptions it had to turn into answers: a bug);
* no stream is left open, no backend connection is left in use (each is idle in the pool or
  closed), the pool's counters match the connections that exist;
* no timer is left behind by a connection that is gone (only the pool's idle expiry may remain,
  and it too is gone once its 2 seconds passed).

The suite runs a bounded number of examples. The long run is one variable away::

    PROXYD_FUZZ_EXAMPLES=20000 python -m pytest tests/protocol/test_fuzz.py -q

(the figure of the last long run, inputs and findings, is in the note of the issue that added
this file).
"""

import os

import h2.config
import h2.connection
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.codec.spdy import SpdyConnection
from proxyd.net.backend import IDLE_TIMEOUT

from memproxy import Proxy, base_config

EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=list(HealthCheck))
# The suite's per-test timeout (pytest.ini) fits the bounded run; the long run gets room in
# proportion (an example takes ~10 ms, 20,000 of them and their shrinking well under this).
LONG = pytest.mark.timeout(max(300, EXAMPLES // 10))

_hostile = st.sampled_from([b"/", b"/a b", b"/x\r\nHost: evil", b"*", b"http://x/y", b"", b"/\x00",
                            b"/ok?q=1", b"a\r\nb", b" v", b"chunked", b"+5", b"5", b"GET",
                            b"CONNECT", b"5, 5", b"trailers", b"example.com", b"a@b"])
_names = st.sampled_from([b"x-a", b"content-length", b"transfer-encoding", b"te", b"host",
                          b"connection", b"X-Up", b"cookie", b"", b"x\r\ny", b":path",
                          b"expect"])
# Mostly valid parts (so requests reach the backend and responses flow), sometimes hostile ones.
_method = st.sampled_from([b"GET", b"POST", b"GET", b"POST", b"HEAD", b"PUT"]) | _hostile
_path = st.sampled_from([b"/", b"/ok?q=1", b"/a/b", b"/x"]) | _hostile
_authority = st.just(b"a.example") | _hostile
_field = st.sampled_from([(b"x-a", b"1"), (b"accept", b"*/*"), (b"cookie", b"a=1")]) | \
    st.tuples(_names, _hostile)
RESPONSES = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 103 Early\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    None,  # the backend closes without answering
]


def mutate(data, draw):
    """``data`` with a few random byte flips, insertions and deletions."""
    data = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


def pieces(data, draw):
    """``data`` cut at random places."""
    cuts = sorted(set(draw(st.lists(st.integers(0, max(len(data), 1)), max_size=8))))
    out, last = [], 0
    for cut in cuts:
        out.append(data[last:cut])
        last = cut
    out.append(data[last:])
    return [p for p in out if p]


def h2_bytes(draw):
    """A client byte stream: preface, then streams with drawn heads, bodies, resets, pings."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    client.initiate_connection()
    out = client.data_to_send()
    for _ in range(draw(st.integers(1, 4))):
        sid = client.get_next_available_stream_id()
        head = [(b":method", draw(_method)), (b":scheme", b"http"),
                (b":authority", draw(_authority)), (b":path", draw(_path))]
        head += draw(st.lists(_field, max_size=3))
        body = draw(st.binary(max_size=40))
        try:
            client.send_headers(sid, head, end_stream=not body)
            if body:
                client.send_data(sid, body, end_stream=draw(st.booleans()))
            if draw(st.booleans()):
                client.send_headers(sid, [(draw(_names), draw(_hostile))], end_stream=True)
            if draw(st.integers(0, 4)) == 0:
                client.reset_stream(sid)
        except Exception:  # noqa: BLE001 - h2 refused a sequence itself: end the conversation
            break
        if draw(st.booleans()):
            client.ping(b"12345678")
        out += client.data_to_send()
    return out


def spdy_bytes(draw, version):
    """A SPDY client byte stream from our codec's client side plus hand-built hostile blocks."""
    from tests.support import RawPeer

    client = SpdyConnection(version, client_side=True)
    client.initiate()
    out = client.data_to_send()
    peer = RawPeer(2 if version == "spdy/2" else 3)
    for index in range(draw(st.integers(1, 3))):
        sid = 1 + 2 * index
        pairs = peer.request_pairs(draw(_path))
        pairs += draw(st.lists(_field, max_size=3))
        body = draw(st.binary(max_size=30))
        out += peer.syn_stream(sid, pairs, fin=not body)
        if body:
            from proxyd.codec.spdy import frames as fr

            out += fr.data_frame_header(sid, len(body), True) + body
    return out, peer


def h1_bytes(draw):
    """Pipelined HTTP/1.1 requests built from templates with drawn parts."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        hostile = draw(st.integers(0, 3)) == 0  # one request in four has hostile parts
        method = draw(_method) if hostile else draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
        target = draw(_path) if hostile else b"/ok"
        fields = b"".join(b"%s: %s\r\n" % pair
                          for pair in draw(st.lists(_field, max_size=3)) if hostile)
        body = draw(st.binary(max_size=30))
        framing = draw(st.sampled_from([b"content-length: %d\r\n" % len(body),
                                        b"transfer-encoding: chunked\r\n", b""]))
        if framing.startswith(b"transfer"):
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        out += b"%s %s HTTP/1.1\r\nhost: a\r\n%s%s\r\n%s" % (method, target, framing, fields, body)
    return out


def drive(proxy, client, data, draw):
    """Feed the client's bytes in pieces; answer backend requests with drawn responses."""
    answered = {}
    for piece in pieces(data, draw):
        if client.closing:
            break
        client.write(piece)
        client.read()
        for index in range(proxy.connects):
            conn = proxy.backend(index)
            sent = len(conn.transport.value())
            if sent and answered.get(index, 0) < sent and not conn.lost:
                answered[index] = sent
                response = draw(st.sampled_from(RESPONSES))
                if response is None:
                    conn.close(clean=False)
                else:
                    conn.respond(response)
                client.read()
            conn.finish_close()
        client.finish_close()
    # Let every timer of the streams and of the pool run out, then the client goes away.
    for _ in range(4):
        proxy.advance(proxy.config.timeouts.frontend_idle + 1)
        for index in range(proxy.connects):
            proxy.backend(index).finish_close()
        client.finish_close()
    if not client.lost:
        client.lost = True
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        client.protocol.connectionLost(Failure(ConnectionDone()))
    for index in range(proxy.connects):
        proxy.backend(index).finish_close()
    proxy.advance(IDLE_TIMEOUT + 1)
    for index in range(proxy.connects):
        proxy.backend(index).finish_close()


def check(proxy, client):
    """Nothing left behind (see the module docstring)."""
    assert proxy.listener.internal_errors == 0
    assert not client.protocol.streams
    for backend in proxy.balancer.backends:
        state = backend.state
        alive = [c for c in backend.connections if c.connected]
        assert state.total == len(alive) + 0, (state.total, alive)
        assert all(c.stream is None for c in alive)
        assert not state.waiting
    assert not proxy.reactor.getDelayedCalls(), proxy.reactor.getDelayedCalls()


_BASE = []


def make(tmp_path_factory, protocols):
    """A proxy whose cleartext listener offers ``protocols``. Every example shares one
    directory (nothing is written there): a new numbered one per example made each creation
    scan all the earlier ones, quadratic over a long run."""
    if not _BASE:
        _BASE.append(tmp_path_factory.mktemp("fuzz"))
    return Proxy(_BASE[0], base_config(
        listen=[{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": protocols}],
        timeouts={"frontend_idle": "5s", "frontend_header": "5s", "backend_read": "5s"}))


@LONG
@FUZZ
@given(st.data())
def test_fuzz_h2(tmp_path_factory, data):
    """HTTP/2 conversations, mutated and cut: nothing raises, nothing is left behind."""
    proxy = make(tmp_path_factory, ["h2"])
    client = proxy.h1_client()  # raw bytes; the listener sniffs the preface
    raw = h2_bytes(data.draw)
    drive(proxy, client, mutate(raw, data.draw), data.draw)
    check(proxy, client)


@LONG
@FUZZ
@given(st.data(), st.sampled_from(["spdy/3.1", "spdy/3", "spdy/2"]))
def test_fuzz_spdy(tmp_path_factory, data, version):
    """SPDY conversations of every version, mutated and cut: nothing raises or is left."""
    proxy = make(tmp_path_factory, [version])
    client = proxy.h1_client()
    raw, _peer = spdy_bytes(data.draw, version)
    drive(proxy, client, mutate(raw, data.draw), data.draw)
    check(proxy, client)


@LONG
@FUZZ
@given(st.data())
def test_fuzz_http1(tmp_path_factory, data):
    """HTTP/1.1 pipelines, mutated and cut: nothing raises, nothing is left behind."""
    proxy = make(tmp_path_factory, ["http/1.1"])
    client = proxy.h1_client()
    drive(proxy, client, mutate(h1_bytes(data.draw), data.draw), data.draw)
    check(proxy, client)
