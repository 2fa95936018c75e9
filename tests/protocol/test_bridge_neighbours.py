"""Bridge mode: one client must not harm the other clients whose streams share its backend
HTTP/2 connection (noisy neighbours, head-of-line blocking through shared state).

The proxy, its h2c backend (:class:`test_backend_h2.H2Peer`, an h2 server) and its h2 clients
are the in-memory ones of test_backend_h2; time moves only with ``proxy.advance``.
"""

import h2.events
import h2.exceptions

from proxyd.net.backend_h2 import MAX_STREAMS_PER_CONNECTION

from test_backend_h2 import IWS, Client, H2Peer, bridge_proxy, warm_bridge

CHUNK = b"z" * 16384


def stall_streams(proxy, hog, peer, count):
    """``count`` streams of ``hog`` (a client whose windows are shut) that the backend answered
    with as much as the proxy's windows let it send (a full stream window each, unless the
    connection window shut first), all held in the proxy: the paths, by client stream id."""
    paths = {hog.get(b"/big%d" % n): b"/big%d" % n for n in range(count)}
    peer.pump()
    for path in paths.values():
        bsid = peer.sid_for(path)
        peer.h2.send_headers(bsid, [(b":status", b"200")])
        while peer.h2.local_flow_control_window(bsid):
            peer.h2.send_data(bsid, CHUNK[:peer.h2.local_flow_control_window(bsid)])
        peer.pump()
    hog.pump()
    for sid in paths:
        st = hog.streams[sid]
        assert st["status"] == 200 and st["body"] == b"" and st["reset"] is None, st
    return paths


def test_clients_that_stop_reading_do_not_stall_other_clients_downloads(tmp_path):
    """One client opens downloads on all but one of the backend connection's streams and never
    opens its windows (SETTINGS_INITIAL_WINDOW_SIZE 0): the backend sends each stream its whole
    window (256 KiB), which the proxy holds. Those bytes count against the shared backend
    connection's receive window too; if that window is credited only when a client takes the
    bytes, 16 such streams (4 MiB) shut it and every other client's download on the connection
    stops (no request waits in the pool queue, so the stall relief never looks) until the stall
    timeout ends the hog's streams, a minute later. Another client's download must still flow,
    one megabyte of it, through the same connection."""
    proxy = bridge_proxy(tmp_path)
    other, peer, h2conn = warm_bridge(proxy)
    other.auto_ack = True  # this client reads its download as it comes
    hog = Client(proxy, client_settings={IWS: 0})
    stall_streams(proxy, hog, peer, MAX_STREAMS_PER_CONNECTION - 1)
    sid = other.get(b"/download")
    peer.pump()
    bsid = peer.sid_for(b"/download")
    peer.h2.send_headers(bsid, [(b":status", b"200")])
    peer.pump()
    size = 1 << 20
    sent = 0
    while sent < size:
        window = peer.h2.local_flow_control_window(bsid)
        assert window > 0, (
            f"the backend may not send another client's download after {sent} bytes: the "
            f"clients that stopped reading hold the shared connection window "
            f"(connection window {peer.h2.outbound_flow_control_window})")
        n = min(window, len(CHUNK), size - sent)
        peer.h2.send_data(bsid, CHUNK[:n], end_stream=sent + n == size)
        sent += n
        peer.pump()
        other.pump()
    st = other.result(sid)
    assert st["status"] == 200 and len(st["body"]) == size and st["ended"], st["reset"]
    assert [h2conn] == list(proxy.balancer.backends[0].connections)


def answer_as_h2_does(peer):
    """Let the backend read what the proxy wrote; the h2 library raises (after queueing its
    GOAWAY) on a connection error: the GOAWAY goes out and the backend closes the connection."""
    try:
        peer.pump()
    except h2.exceptions.ProtocolError:
        peer.conn.respond(peer.h2.data_to_send())
        peer.conn.close()


def test_a_head_over_the_backends_header_list_limit_is_refused_not_sent(tmp_path):
    """The backend announced SETTINGS_MAX_HEADER_LIST_SIZE (the h2 library: 65536, as proxyd's
    own default limit). A client's request head that proxyd's gate admits (just under its own
    64 KiB) grows by the fields proxyd adds (Via, X-Forwarded-*) past the backend's limit; sent
    anyway, the backend may end the whole connection (the h2 library, as an HTTP/2 backend,
    answers with GOAWAY ENHANCE_YOUR_CALM), taking the other clients' downloads on it down.
    proxyd knows the limit and refuses such a request itself (431); the other client's download
    completes on the same connection."""
    proxy = bridge_proxy(tmp_path)
    other, peer, h2conn = warm_bridge(proxy)
    download = other.get(b"/download")
    peer.pump()
    bsid = peer.sid_for(b"/download")
    peer.respond(bsid, body=b"first half ", end=False)
    assert other.result(download)["body"] == b"first half "
    limit = peer.h2.local_settings.max_header_list_size
    pseudo = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"),
              (b":path", b"/big-head")]
    size = sum(len(n) + len(v) + 32 for n, v in pseudo) + len(b"x-big") + 32
    hog = Client(proxy)
    big = hog.get(b"/big-head", headers=[(b"x-big", b"a" * (limit - size - 8))])
    answer_as_h2_does(peer)
    assert not peer.conn.lost, (
        f"the backend ended the shared connection; the other client's download: "
        f"{other.result(download)}")
    st = hog.result(big)
    assert st["status"] == 431, st
    assert b"/big-head" not in [h[b":path"] for h in peer.requests.values()]
    peer.h2.send_data(bsid, b"second half", end_stream=True)
    peer.pump()
    st = other.result(download)
    assert st["reset"] is None, f"the other client's download was reset (code {st['reset']})"
    assert (st["status"], st["body"], st["ended"]) == (200, b"first half second half", True)
    assert proxy.connects == 1
