"""The HTTP/2 backend's one-input "whole response" path against the sequential path.

Each scenario runs twice on an in-memory bridge proxy (tests/protocol/test_backend_h2.py's
H2Peer/Client): once as shipped (a head, at most one DATA and the end in one read reach the relay
as one ``on_whole_response``) and once with ``H2BackendConnection._whole`` disabled (every event
dispatched on its own, the path that existed before). What the client sees, what the backend
receives (resets, flow-control credit per stream and on the connection), how often the pool
heard of a freed slot and what the connection holds afterwards must be the same.
"""

import h2.errors
from hyperframe.frame import RstStreamFrame, WindowUpdateFrame, GoAwayFrame
import pytest

from proxyd.net import backend_h2

from test_backend_h2 import IWS, MCS, Client, H2Peer, bridge_proxy


def _observe(proxy, peer, client, sids, slot_calls):
    peer.pump()
    client.pump()
    [backend] = proxy.balancer.backends
    conns = backend.connections
    out = {
        "client": {sid: dict(client.result(sid), headers=None) for sid in sids},
        "client_headers": {sid: sorted((client.streams[sid]["headers"] or {}).items())
                           for sid in sids},
        "resets": dict(peer.resets),
        "credit": {},
        "goaway": [f.error_code for f in peer.frames if isinstance(f, GoAwayFrame)],
        "slot_freed": slot_calls[0],
    }
    for f in peer.frames:
        if isinstance(f, WindowUpdateFrame):
            out["credit"][f.stream_id] = out["credit"].get(f.stream_id, 0) + f.window_increment
    # Connection-level credit still batched counts as credit given.
    out["conns"] = [(len(c.channels), c.reserved, c.codec.open_streams,
                     c.codec.acknowledged_unsent + out["credit"].get(0, 0)) for c in conns]
    out["credit"].pop(0, None)
    out["peer_conn_window"] = peer.h2.outbound_flow_control_window
    return out


def _run(tmp_path, monkeypatch, scenario, sequential):
    if sequential:
        monkeypatch.setattr(backend_h2.H2BackendConnection, "_whole", lambda self, ev, i: 0)
    else:
        monkeypatch.undo()
    proxy = bridge_proxy(tmp_path, max_connections=1)
    [backend] = proxy.balancer.backends
    calls = [0]
    original = backend.slot_freed

    def counting(conn):
        calls[0] += 1
        return original(conn)
    backend.slot_freed = counting
    client, peer, sids = scenario(proxy)
    return _observe(proxy, peer, client, sids, calls)


def _get_one(proxy, method=b"GET", settings=None, body=None, end_stream=True, headers=()):
    client = Client(proxy, client_settings=settings)
    sid = client.get(b"/x", method=method, body=body, end_stream=end_stream, headers=headers)
    peer = H2Peer(proxy, 0)
    peer.h2.config.validate_outbound_headers = False
    peer.h2.config.normalize_outbound_headers = False
    return client, peer, sid


def _answer(status=b"200", headers=(), body=b"", padding=0, **kw):
    def scenario(proxy):
        client, peer, sid = _get_one(proxy, **kw)
        [bsid] = peer.requests
        peer.h2.send_headers(bsid, [(b":status", status), *headers], end_stream=body is None)
        if body is not None:
            peer.h2.send_data(bsid, body, end_stream=True, pad_length=padding or None)
        peer.pump()
        return client, peer, [sid]
    return scenario


SCENARIOS = {
    "get_200_body": _answer(body=b"hello"),
    "get_200_nobody": _answer(body=None),
    "get_200_empty_data_end": _answer(body=b""),
    "get_200_padded": _answer(body=b"hello", padding=50),
    "get_200_padded_empty": _answer(body=b"", padding=50),
    "head_with_body": _answer(method=b"HEAD", body=b"BODY"),
    "204_with_body": _answer(status=b"204", body=b"BODY"),
    "304_with_body": _answer(status=b"304", body=b"BODY"),
    "cl_longer": _answer(headers=[(b"content-length", b"2")], body=b"hello"),
    "cl_shorter": _answer(headers=[(b"content-length", b"20")], body=b"hello"),
    "cl_shorter_nobody": _answer(headers=[(b"content-length", b"20")], body=None),
    "refused_head": _answer(headers=[(b"x-bad", b"a\x00b")], body=b"x"),
    "refused_status": _answer(status=b"20", body=b"x"),
    "client_window_0": _answer(body=b"w" * 5000, settings={IWS: 0}),
    "client_window_small": _answer(body=b"w" * 5000, settings={IWS: 100}),
}


def _post_unfinished(proxy, window0=False):
    """A POST answered (whole) before its body ended; the client then ends it (``window0``:
    the client has no window, then opens a little)."""
    client = Client(proxy, client_settings={IWS: 0} if window0 else None)
    sid = client.get(b"/x", method=b"POST", body=b"part", end_stream=False)
    peer = H2Peer(proxy, 0)
    [bsid] = peer.requests
    peer.h2.send_headers(bsid, [(b":status", b"200")])
    peer.h2.send_data(bsid, b"answered", end_stream=True)
    peer.pump()
    client.c.send_body(sid, b"more", end_stream=True)
    if window0:
        client.c.h2.increment_flow_control_window(100, stream_id=sid)
        client.c.h2.increment_flow_control_window(100)
        client.c.flush()
    return client, peer, [sid]


def _client_reset_first(proxy):
    client, peer, sid = _get_one(proxy)
    [bsid] = peer.requests
    client.c.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    client.c.flush()
    peer.h2.send_headers(bsid, [(b":status", b"200")])
    peer.h2.send_data(bsid, b"late", end_stream=True)
    peer.pump()
    return client, peer, [sid]


def _interleaved(proxy):
    client = Client(proxy)
    sids = [client.get(b"/%d" % n) for n in range(4)]
    peer = H2Peer(proxy, 0)
    peer.pump()
    bsids = sorted(peer.requests)
    a, b, c, d = bsids
    h = peer.h2
    h.send_headers(a, [(b":status", b"200")])
    h.send_headers(b, [(b":status", b"201")])
    h.send_data(a, b"A", end_stream=True)
    h.send_data(b, b"B", end_stream=True)
    h.send_headers(c, [(b":status", b"202")])
    h.send_data(c, b"C", end_stream=True)
    h.send_headers(d, [(b":status", b"203")], end_stream=True)
    peer.pump()
    return client, peer, sids


def _informational_and_trailers(proxy):
    client = Client(proxy)
    sids = [client.get(b"/%d" % n, headers=[(b"te", b"trailers")]) for n in range(2)]
    peer = H2Peer(proxy, 0)
    peer.pump()
    a, b = sorted(peer.requests)
    h = peer.h2
    h.send_headers(a, [(b":status", b"103"), (b"link", b"</s>")])
    h.send_headers(a, [(b":status", b"200")])
    h.send_data(a, b"A", end_stream=True)
    h.send_headers(b, [(b":status", b"200")])
    h.send_data(b, b"B")
    h.send_headers(b, [(b"x-trailer", b"1")], end_stream=True)
    peer.pump()
    return client, peer, sids


def _goaway_same_read(proxy):
    client = Client(proxy)
    sids = [client.get(b"/%d" % n) for n in range(2)]
    peer = H2Peer(proxy, 0)
    peer.pump()
    a, b = sorted(peer.requests)
    h = peer.h2
    h.send_headers(a, [(b":status", b"200")])
    h.send_data(a, b"A", end_stream=True)
    h.send_headers(b, [(b":status", b"200")])
    h.send_data(b, b"B", end_stream=True)
    raw = h.data_to_send()
    raw += GoAwayFrame(0, last_stream_id=b, error_code=0).serialize()
    peer.conn.respond(raw)
    peer.pump()
    return client, peer, sids


def _reset_after_end_same_read(proxy):
    client = Client(proxy)
    sid = client.get(b"/x", method=b"POST", body=b"part", end_stream=False)
    peer = H2Peer(proxy, 0)
    [bsid] = peer.requests
    h = peer.h2
    h.send_headers(bsid, [(b":status", b"200")])
    h.send_data(bsid, b"done", end_stream=True)
    raw = h.data_to_send()
    raw += RstStreamFrame(bsid, error_code=0).serialize()  # NO_ERROR: stop sending (§8.1)
    peer.conn.respond(raw)
    peer.pump()
    return client, peer, [sid]


def _one_slot_queue(proxy):
    """MCS 1: a whole response frees the only slot; the waiting request takes it."""
    client = Client(proxy)
    first = client.get(b"/first")
    peer = H2Peer(proxy, 0, settings={MCS: 1})
    peer.pump()
    second = client.get(b"/second")
    peer.pump()
    [bsid] = peer.requests
    peer.h2.send_headers(bsid, [(b":status", b"200")])
    peer.h2.send_data(bsid, b"one", end_stream=True)
    peer.pump()
    nsid = peer.sid_for(b"/second")
    peer.h2.send_headers(nsid, [(b":status", b"200")])
    peer.h2.send_data(nsid, b"two", end_stream=True)
    peer.pump()
    return client, peer, [first, second]


SCENARIOS.update({
    "post_unfinished": _post_unfinished,
    "post_unfinished_window0": lambda proxy: _post_unfinished(proxy, window0=True),
    "client_reset_first": _client_reset_first,
    "interleaved": _interleaved,
    "informational_and_trailers": _informational_and_trailers,
    "goaway_same_read": _goaway_same_read,
    "reset_after_end_same_read": _reset_after_end_same_read,
    "one_slot_queue": _one_slot_queue,
})


class H1Client:
    """A raw HTTP/1.1 client with the Client interface _observe uses (one pseudo stream 0: the
    bytes the proxy wrote, and whether it closes)."""

    def __init__(self, proxy):
        self.c = proxy.h1_client()
        self.bytes = b""
        self.streams = {0: {"headers": None}}

    def pump(self):
        self.bytes += self.c.read()

    def result(self, sid):
        self.pump()
        return {"bytes": self.bytes, "closing": self.c.closing}


def _h1_pipelined(proxy):
    client = H1Client(proxy)
    client.c.write(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\n")
    peer = H2Peer(proxy, 0)
    peer.pump()
    [a] = peer.requests
    peer.h2.send_headers(a, [(b":status", b"200"), (b"content-length", b"1")])
    peer.h2.send_data(a, b"A", end_stream=True)
    peer.pump()
    proxy.advance(0)  # the next pipelined request starts from a callLater
    peer.pump()
    b = peer.sid_for(b"/b")
    peer.h2.send_headers(b, [(b":status", b"200")])
    peer.h2.send_data(b, b"BB", end_stream=True)
    peer.pump()
    return client, peer, [0]


def _h1_post_early(proxy):
    client = H1Client(proxy)
    client.c.write(b"POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\npart")
    peer = H2Peer(proxy, 0)
    peer.pump()
    [a] = peer.requests
    peer.h2.send_headers(a, [(b":status", b"200")])
    peer.h2.send_data(a, b"early", end_stream=True)
    peer.pump()
    client.c.write(b"rest!!")
    return client, peer, [0]


def _h1_websocket(status, body):
    def scenario(proxy):
        client = H1Client(proxy)
        client.c.write(b"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        peer = H2Peer(proxy, 0, settings={h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        peer.pump()
        peer.pump()
        if not peer.requests:
            return client, peer, [0]
        [a] = peer.requests
        peer.h2.send_headers(a, [(b":status", status)], end_stream=body is None)
        if body is not None:
            peer.h2.send_data(a, body, end_stream=True)
        peer.pump()
        return client, peer, [0]
    return scenario


def _h2_extended_connect(status, body):
    def scenario(proxy):
        client = Client(proxy)
        client.c = proxy.h2_client(raw=True)
        sid = client.c.request(b"CONNECT", b"/chat", headers=[(b":protocol", b"websocket"),
                                                             (b"sec-websocket-version", b"13")],
                               end_stream=False)
        client.streams[sid] = {"status": None, "headers": None, "body": b"", "ended": False,
                               "reset": None}
        peer = H2Peer(proxy, 0, settings={h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        peer.pump()
        peer.pump()
        [a] = peer.requests
        peer.h2.send_headers(a, [(b":status", status)], end_stream=body is None)
        if body is not None:
            peer.h2.send_data(a, body, end_stream=True)
        peer.pump()
        return client, peer, [sid]
    return scenario


import h2.settings  # noqa: E402

SCENARIOS.update({
    "h1_pipelined": _h1_pipelined,
    "h1_post_early": _h1_post_early,
    "h1_ws_200_end": _h1_websocket(b"200", None),
    "h1_ws_200_body_end": _h1_websocket(b"200", b"x"),
    "h1_ws_404_body": _h1_websocket(b"404", b"nope"),
    "h2_connect_200_end": _h2_extended_connect(b"200", None),
    "h2_connect_403_body": _h2_extended_connect(b"403", b"no"),
})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_whole_response_path_equals_sequential_path(tmp_path, monkeypatch, name):
    """The one-input path and the three-input path leave the client, the backend (resets,
    per-stream and connection credit), the pool (slot_freed calls) and the connection (channels,
    reservations, open codec streams) in the same state."""
    scenario = SCENARIOS[name]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _run(tmp_path / "a", monkeypatch, scenario, sequential=False)
    seq = _run(tmp_path / "b", monkeypatch, scenario, sequential=True)
    assert whole == seq

