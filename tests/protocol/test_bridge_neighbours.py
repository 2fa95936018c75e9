"""Bridge mode: one client must not harm the other clients whose streams share its backend
HTTP/2 connection (noisy neighbours, head-of-line blocking through shared state).

The proxy, its h2c backend (:class:`test_backend_h2.H2Peer`, an h2 server) and its h2 clients
are the in-memory ones of test_backend_h2; time moves only with ``proxy.advance``.
"""

import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import GoAwayFrame, RstStreamFrame

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


def start_download(other, peer):
    """The other client's download, half answered: ``(its stream on the client, on the
    backend)``."""
    download = other.get(b"/download")
    peer.pump()
    bsid = peer.sid_for(b"/download")
    peer.respond(bsid, body=b"first half ", end=False)
    assert other.result(download)["body"] == b"first half "
    return download, bsid


def finish_download(other, peer, download, bsid):
    """The backend ends the other client's download: it arrives whole, never reset."""
    peer.h2.send_data(bsid, b"second half", end_stream=True)
    peer.pump()
    st = other.result(download)
    assert st["reset"] is None, f"the other client's download was reset (code {st['reset']})"
    assert (st["status"], st["body"], st["ended"]) == (200, b"first half second half", True)



def echo_beside_download(tmp_path, echo_headers):
    """The other client's download in flight on the shared connection, then a second client's
    ``/echo`` answered with the head ``echo_headers``; asserts the shared connection survived
    (no GOAWAY, not closed). Returns ``(proxy, other, peer, download, bsid, hog, echo, esid)``:
    the download's stream on the client and on the backend, the echo's on the client and on
    the backend."""
    proxy = bridge_proxy(tmp_path)
    other, peer, _ = warm_bridge(proxy)
    download, bsid = start_download(other, peer)
    hog = Client(proxy)
    echo = hog.get(b"/echo")
    peer.pump()
    esid = peer.sid_for(b"/echo")
    peer.respond(esid, headers=echo_headers)
    goaways = [f.error_code for f in peer.frames if isinstance(f, GoAwayFrame)]
    assert not goaways and not peer.transport.disconnecting, (
        f"proxyd ended the shared connection (GOAWAY {goaways}); the other client's "
        f"download: {other.result(download)}")
    return proxy, other, peer, download, bsid, hog, echo, esid

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
    download, bsid = start_download(other, peer)
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
    finish_download(other, peer, download, bsid)
    assert proxy.connects == 1


def test_a_response_head_over_proxyds_limit_fails_only_its_own_stream(tmp_path):
    """An app echoes a large request header back: its response head (70 KiB of field value,
    Huffman-coded by the h2 library into a 44 KiB block over HEADERS and CONTINUATION) is over
    proxyd's own header list limit (64 KiB). That client gets 502; the backend stream is reset
    (CANCEL), not the connection: the other client's download on it completes, and a later
    head that references a field the oversized block inserted into the shared HPACK table
    (after the bound) still decodes, on the same connection."""
    proxy, other, peer, download, bsid, hog, echo, esid = echo_beside_download(
        tmp_path, [(b"x-echo", b"e" * 70000), (b"x-after", b"1")])
    assert [f.error_code for f in peer.frames if isinstance(f, RstStreamFrame)
            and f.stream_id == esid] == [h2.errors.ErrorCodes.CANCEL]
    st = hog.result(echo)
    assert (st["status"], st["body"]) == (502, b"Bad Gateway: invalid response from backend\n")
    assert [h[b":path"] for h in peer.requests.values()].count(b"/echo") == 1  # not retried
    finish_download(other, peer, download, bsid)
    again = other.get(b"/again")
    peer.pump()
    peer.respond(peer.sid_for(b"/again"), body=b"ok", headers=[(b"x-after", b"1")])
    st = other.result(again)
    assert (st["status"], st["headers"].get(b"x-after"), st["body"]) == (200, b"1", b"ok")
    assert proxy.connects == 1


def test_trailers_over_proxyds_limit_reset_only_their_clients_stream(tmp_path):
    """The same with trailers over the limit, after the response started: that client's stream
    is reset (the response head is gone, no 502 can follow), the backend stream is reset, and
    the other client's download on the shared connection completes."""
    proxy = bridge_proxy(tmp_path)
    other, peer, h2conn = warm_bridge(proxy)
    download = other.get(b"/download")
    hog = Client(proxy)
    echo = hog.get(b"/echo", headers=[(b"te", b"trailers")])
    peer.pump()
    bsid, esid = peer.sid_for(b"/download"), peer.sid_for(b"/echo")
    peer.respond(bsid, body=b"first half ", end=False)
    peer.respond(esid, body=b"echo body", end=False)
    assert hog.result(echo)["status"] == 200
    peer.h2.send_headers(esid, [(b"x-echo", b"e" * 70000)], end_stream=True)
    peer.pump()
    goaways = [f.error_code for f in peer.frames if isinstance(f, GoAwayFrame)]
    assert not goaways and not peer.transport.disconnecting, (
        f"proxyd ended the shared connection (GOAWAY {goaways})")
    assert [f.error_code for f in peer.frames if isinstance(f, RstStreamFrame)
            and f.stream_id == esid] == [h2.errors.ErrorCodes.CANCEL]
    assert hog.result(echo)["reset"] is not None
    finish_download(other, peer, download, bsid)
    assert proxy.connects == 1


def test_a_response_block_over_proxyds_limit_in_bytes_fails_only_its_own_stream(tmp_path):
    """The same when the encoded block itself is over 64 KiB (a value Huffman coding makes
    longer, ``^`` taking 14 bits: a 120 KiB block over HEADERS and CONTINUATION): the bytes
    are not a CONTINUATION flood of the connection but one stream's oversized head; that
    client gets 502 and the other client's download on the same connection completes."""
    proxy, other, peer, download, bsid, hog, echo, _ = echo_beside_download(
        tmp_path, [(b"x-echo", b"^" * 70000)])
    assert hog.result(echo)["status"] == 502
    finish_download(other, peer, download, bsid)
    assert proxy.connects == 1


def serve_heads(proxy, peers, answered, prefix):
    """Every backend connection's requests whose path starts with ``prefix`` get a response
    head, their bodies to follow (the streams stay open on the backend); ``peers`` (index ->
    H2Peer) grows with the connections the proxy opened, ``answered`` holds (index, stream id)
    of the heads sent."""
    for index in range(proxy.connects):
        if index not in peers:
            peers[index] = H2Peer(proxy, index)
        peer = peers[index]
        peer.pump()
        for bsid, head in list(peer.requests.items()):
            if head[b":path"].startswith(prefix) and (index, bsid) not in answered:
                answered.add((index, bsid))
                peer.respond(bsid, end=False)


def hog_and_cancel(proxy, peers, answered, n, count, vanish=False):
    """One more client (the ``n``-th) opens ``count`` downloads, gets their heads (served on
    every backend connection in ``peers``), then resets them all (RST_STREAM CANCEL) or, with
    ``vanish``, goes away with them open; every backend connection then reads what came."""
    hog = Client(proxy)
    sids = [hog.get(b"/hog/%d/%d" % (n, i)) for i in range(count)]
    serve_heads(proxy, peers, answered, b"/hog/")
    assert [hog.result(sid)["status"] for sid in sids] == [200] * count
    if vanish:
        hog.c.vanish()
    else:
        for sid in sids:
            hog.c.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        hog.c.flush()
    for each in peers.values():
        each.pump()


def resets_received(peer):
    """How many RST_STREAM frames the proxy sent on ``peer``'s connection."""
    return sum(isinstance(f, RstStreamFrame) for f in peer.frames)


def test_clients_resetting_streams_do_not_spend_a_backends_reset_limit_for_everyone(tmp_path):
    """Four clients each open 90 downloads, get their heads, then reset them all (RST_STREAM
    CANCEL) or go away with them open: each stays within proxyd's own bound (200 resets per
    client connection; going away counts none). proxyd cancels every one on the backend,
    where HTTP/2 servers count the resets a connection received (CVE-2023-44487): Netty
    allows 200 per 30 s, nghttp2 (nghttpd, nghttpx, Apache) a burst of 1000, then GOAWAY,
    and every other client's stream on that connection goes with it. No backend connection
    may receive more than 200 of the 360 resets; the other client's download, in flight on
    the first connection meanwhile, completes there, and that connection closes once it is
    done (it takes no new streams)."""
    proxy = bridge_proxy(tmp_path)
    other, peer, h2conn = warm_bridge(proxy)
    download, bsid = start_download(other, peer)
    peers, answered = {0: peer}, set()
    for n in range(4):
        hog_and_cancel(proxy, peers, answered, n, 90, vanish=bool(n % 2))
    resets = {index: resets_received(each) for index, each in peers.items()}
    assert sum(resets.values()) == 360, resets
    assert max(resets.values()) <= 200, (
        f"resets received per backend connection: {resets} (a backend that allows 200, or "
        f"1000 in a burst, ends the connection every client's streams share)")
    finish_download(other, peer, download, bsid)
    assert peer.transport.disconnecting, "the spent connection stays open after its last stream"


def test_a_spent_connection_keeps_serving_when_no_other_could_take_its_new_streams(tmp_path):
    """max_connections 1: the only connection allowed spent its resets (two clients reset 75
    downloads each) while another client's download is in flight on it. Retired, it would
    leave new requests waiting until that download ends (a slow client's download, for
    minutes); it keeps serving instead: a new request goes out on it at once and is answered.
    Once the download ended (the connection idle), the next reset retires it and a fresh
    connection takes the next request."""
    proxy = bridge_proxy(tmp_path, max_connections=1)
    other, peer, h2conn = warm_bridge(proxy)
    download, bsid = start_download(other, peer)
    peers, answered = {0: peer}, set()
    for n in range(2):
        hog_and_cancel(proxy, peers, answered, n, 75)
    assert resets_received(peer) == 150 and proxy.connects == 1
    later = other.get(b"/later")
    peer.pump()
    assert b"/later" in [head[b":path"] for head in peer.requests.values()], (
        "the new request waits behind the spent connection's download")
    peer.respond(peer.sid_for(b"/later"), body=b"at once")
    assert other.result(later)["body"] == b"at once"
    finish_download(other, peer, download, bsid)
    hog = Client(proxy)
    last = hog.get(b"/hog/last")
    serve_heads(proxy, peers, answered, b"/hog/")
    hog.c.h2.reset_stream(last, h2.errors.ErrorCodes.CANCEL)
    hog.c.flush()
    assert peer.transport.disconnecting, "the spent connection, now empty, is not closed"
    peer.conn.finish_close()
    fresh = other.get(b"/fresh")
    assert proxy.connects == 2
    new_peer = H2Peer(proxy, 1)
    new_peer.respond(new_peer.sid_for(b"/fresh"), body=b"new connection")
    assert other.result(fresh)["body"] == b"new connection"
