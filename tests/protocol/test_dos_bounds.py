"""Abuse bounds of the HTTP/2 and SPDY frontends, through the whole in-memory proxy.

Each test is one finding of the DoS review: what a client can make proxyd (and its backends) do
for very few bytes. Rapid reset (CVE-2023-44487) with sparse stream ids, MadeYouReset
(CVE-2025-8671: stream errors the client provokes), a control-frame allowance lifted by one huge
stream id, SPDY's missing reset bound, SPDY header blocks of thousands of empty fields, and SPDY
bodies cut into one-byte DATA frames (one backend write each).
"""

import pytest

from memproxy import parse_frames
from proxyd.codec.spdy import frames as fr

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
SPDY_LISTEN = [{"endpoint": "tcp:8080:interface=127.0.0.1",
                "protocols": ["spdy/3.1", "spdy/3", "spdy/2", "http/1.1"]}]
# :method GET, :scheme http, :path /, :authority example.com (literal, not indexed)
H2_GET = bytes([0x82, 0x86, 0x84, 0x01, 11]) + b"example.com"


def h2_frame(ftype, flags, sid, payload=b""):
    """One raw HTTP/2 frame."""
    n = len(payload)
    return (bytes([n >> 16, (n >> 8) & 0xFF, n & 0xFF, ftype, flags]) + sid.to_bytes(4, "big")
            + payload)


def h2_raw(proxy):
    """A client connection that sent the preface and an empty SETTINGS (answer read)."""
    c = proxy.h1_client()
    c.write(PREFACE + h2_frame(0x4, 0, 0))
    c.read()
    return c


# -- rapid reset and MadeYouReset -------------------------------------------------------------

@pytest.mark.parametrize("trigger,step", [
    (lambda sid: h2_frame(0x3, 0, sid, b"\0\0\0\x08"), 8),  # RST_STREAM on ids 1, 9, 17...
    (lambda sid: h2_frame(0x2, 0, sid, b"\0\0\0\0"), 2),    # PRIORITY of 4 bytes
    (lambda sid: h2_frame(0x0, 0, sid, b"x"), 2),           # DATA after END_STREAM
], ids=["rst-sparse-ids", "priority-bad-length", "data-after-end-stream"])
def test_h2_reset_storm_gets_enhance_your_calm(proxy, trigger, step):
    """HEADERS (END_STREAM) then something that resets the stream, up to 3000 times: every
    stream is a backend request, so the connection gets GOAWAY ENHANCE_YOUR_CALM within 1000
    streams, whether the client resets them (on sparse ids) or makes proxyd reset them."""
    c = h2_raw(proxy)
    sid, sent, out = 1, 0, b""
    while sent < 3000 and not c.closing:
        c.write(h2_frame(0x1, 0x5, sid, H2_GET) + trigger(sid))
        out += c.read()
        sid += step
        sent += 1
    goaways = [f for f in parse_frames(out) if f.type == 0x7]
    assert goaways and goaways[0].error_code == ENHANCE_YOUR_CALM, f"{sent} streams, no GOAWAY"
    assert sent <= 1000


# :method GET, :scheme http, :path "/\x01" (a control byte: the gate refuses it), :authority
H2_REFUSED = bytes([0x82, 0x86, 0x04, 2]) + b"/\x01" + bytes([0x01, 11]) + b"example.com"


def test_h2_heads_the_gate_refuses_count_as_provoked_resets(proxy):
    """Heads the gate refuses are malformed requests, stream errors the client provokes (RFC
    9113 §8.1.1), as README's abuse bounds say (MadeYouReset): up to 3000 of them, one per
    read, get GOAWAY ENHANCE_YOUR_CALM within 1000 streams. They were reset one by one for
    ever, each with its access-log line and a line in proxyd's own log."""
    c = h2_raw(proxy)
    sid, sent, out = 1, 0, b""
    while sent < 3000 and not c.closing:
        c.write(h2_frame(0x1, 0x5, sid, H2_REFUSED))
        out += c.read()
        sid += 2
        sent += 1
    goaways = [f for f in parse_frames(out) if f.type == 0x7]
    assert goaways and goaways[0].error_code == ENHANCE_YOUR_CALM, f"{sent} refused, no GOAWAY"
    assert sent <= 1000
    assert proxy.listener.refusals["bad_target"] == sent - 1  # the last read met the bound


@pytest.mark.parametrize("v", [3, 2])
def test_spdy_heads_the_gate_refuses_count_as_provoked_resets(make_proxy, v):
    """SYN_STREAMs whose path has a control byte (the gate refuses them), up to 3000: GOAWAY
    and close within 1000 streams, as on HTTP/2."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    sent = 0
    while sent < 3000 and not c.closing:
        c.send_syn(2 * sent + 1, c.peer.request_pairs(path=b"/\x01"))
        sent += 1
    c.pump()
    assert any(f[0] == fr.GOAWAY for f in c.frames), f"spdy/{v}: {sent} refused, no GOAWAY"
    assert sent <= 1000


# :method POST, :scheme http, :path /, :authority example.com, content-length: 1
H2_POST_ONE_BYTE = (bytes([0x83, 0x86, 0x84, 0x01, 11]) + b"example.com"
                    + bytes([0x0F, 0x0D, 0x01]) + b"1")


def test_h2_bodies_that_break_their_content_length_count_as_provoked_resets(proxy):
    """A body longer than its Content-Length is a malformed request (RFC 9113 §8.1.1), a stream
    error the client provokes after its head went to a backend (whose HTTP/1.1 connection is
    then dropped mid-request): up to 3000 of them get GOAWAY ENHANCE_YOUR_CALM within 1000
    streams, as README's abuse bounds say. They were reset one by one for ever, each costing a
    backend connection."""
    c = h2_raw(proxy)
    sid, sent, out = 1, 0, b""
    while sent < 3000 and not c.closing:
        c.write(h2_frame(0x1, 0x4, sid, H2_POST_ONE_BYTE) + h2_frame(0x0, 0x1, sid, b"xx"))
        out += c.read()
        sid += 2
        sent += 1
    goaways = [f for f in parse_frames(out) if f.type == 0x7]
    assert goaways and goaways[0].error_code == ENHANCE_YOUR_CALM, f"{sent} broken, no GOAWAY"
    assert 200 < sent <= 1000  # the bound (200, and half of the streams), not an earlier end


@pytest.mark.parametrize("v", [3, 2])
def test_spdy_bodies_that_break_their_content_length_count_as_provoked_resets(make_proxy, v):
    """SPDY as HTTP/2: POSTs announcing one byte of content that send two, up to 3000 on one
    session, get GOAWAY and the session's end within 1000 streams."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    method = b"method" if v == 2 else b":method"
    sent = 0
    while sent < 3000 and not c.closing:
        sid = 2 * sent + 1
        pairs = [(method, b"POST") if name == method else (name, value)
                 for name, value in c.peer.request_pairs(extra=[(b"content-length", b"1")])]
        c.send_syn(sid, pairs, fin=False)
        c.write(fr.encode_data(sid, b"xx", fin=True))
        sent += 1
        if sent % 50 == 0:
            c.pump()
    c.pump()
    assert any(f[0] == fr.GOAWAY for f in c.frames), f"spdy/{v}: {sent} broken, no GOAWAY"
    assert 200 < sent <= 1000


def test_h2_streams_reset_in_the_same_read_never_reach_a_backend(proxy):
    """HEADERS then RST_STREAM in one read (what rapid reset sends): the stream passes the gate
    and ends, but no backend connection is even attempted; with a body (HEADERS, DATA,
    RST_STREAM) its bytes are acknowledged, not forwarded. The same HEADERS and RST_STREAM in
    two reads do start the request: the check is the read, not the pair."""
    c = h2_raw(proxy)
    rst = b"\0\0\0\x08"
    for i in range(50):
        sid = 2 * i + 1
        c.write(h2_frame(0x1, 0x5, sid, H2_GET) + h2_frame(0x3, 0, sid, rst))
    c.write(h2_frame(0x1, 0x4, 101, H2_GET) + h2_frame(0x0, 0, 101, b"x" * 100)
            + h2_frame(0x3, 0, 101, rst))
    frames = parse_frames(c.read())
    assert proxy.connects == 0, f"{proxy.connects} backend connections for reset streams"
    assert proxy.listener.internal_errors == 0
    assert not c.closing and not [f for f in frames if f.type == 0x7]
    # The 100 body bytes were given back to the connection window (its update is batched).
    assert c.protocol.codec.acknowledged_unsent == 100
    c.write(h2_frame(0x1, 0x5, 103, H2_GET))
    c.write(h2_frame(0x3, 0, 103, rst))
    assert proxy.connects == 1


@pytest.mark.parametrize("v", [3, 2])
def test_spdy_streams_reset_in_the_same_read_never_reach_a_backend(make_proxy, v):
    """SYN_STREAM then RST_STREAM in one read: no backend connection is attempted."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    for i in range(20):
        sid = 2 * i + 1
        c.write(c.peer.syn_stream(sid) + fr.encode_rst_stream(v, sid, fr.CANCEL))
    c.pump()
    assert proxy.connects == 0
    assert proxy.listener.internal_errors == 0
    assert not any(f[0] == fr.GOAWAY for f in c.frames)


def test_h2_ping_flood_bound_survives_one_huge_stream_id(proxy):
    """One self-dependent HEADERS on stream 2^31-1 (reset at once, no backend work) must not
    lift the PING/SETTINGS flood allowance (it was the highest id / 2: about 10^9 frames)."""
    c = h2_raw(proxy)
    sid = 0x7FFFFFFF
    c.write(h2_frame(0x1, 0x25, sid, sid.to_bytes(4, "big") + b"\x10" + H2_GET))
    out, sent = b"", 0
    while sent < 20000 and not c.closing:
        c.write(h2_frame(0x6, 0, 0, b"\0" * 8) * 1000)
        out += c.read()
        sent += 1000
    goaways = [f for f in parse_frames(out) if f.type == 0x7]
    assert goaways and goaways[0].error_code == ENHANCE_YOUR_CALM, f"{sent} PINGs, no GOAWAY"


@pytest.mark.parametrize("v", [3, 2])
def test_spdy_rapid_reset_is_bounded(make_proxy, v):
    """SYN_STREAM + RST_STREAM(CANCEL), up to 3000 times: GOAWAY and close within 1000 streams,
    as on HTTP/2."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    sent = 0
    while sent < 3000 and not c.closing:
        sid = 2 * sent + 1
        c.write(c.peer.syn_stream(sid) + fr.encode_rst_stream(v, sid, fr.CANCEL))
        sent += 1
    c.pump()
    assert any(f[0] == fr.GOAWAY for f in c.frames), f"spdy/{v}: {sent} resets, no GOAWAY"
    assert sent <= 1000


# -- SPDY floods by a client that reads every answer ------------------------------------------

SPDY_SESSIONS = ["spdy/3.1", "spdy/3", "spdy/2"]
SPDY_FLOODS = {
    # name: (prelude(client), unit(wire version)); the allowance is the HTTP/2 codec's
    "ping": (None, lambda v: fr.encode_ping(v, 1)),  # each one answered
    "settings": (None, lambda v: fr.encode_settings(
        v, [(fr.SETTINGS_INITIAL_WINDOW_SIZE, 65536)])),
    # on a stream that never opened (ignored, as for closed streams) and, on 3.1, the session;
    # SPDY/2 has no flow control, but node-spdy sends them anyway: they are read all the same
    "window-update": (None, lambda v: fr.encode_window_update(v, 1, 1)),
    "session-window-update": (None, lambda v: fr.encode_window_update(v, 0, 1)),
    # an upload opened (no FIN), then DATA frames of no byte without FIN
    "empty-data": (lambda c: c.send_syn(1, c.peer.request_pairs(
        path=b"/up", extra=[(b"content-length", b"10")]), fin=False),
        lambda v: fr.encode_data(1, b"")),
}


@pytest.mark.parametrize("version,kind", [
    (version, kind) for version in SPDY_SESSIONS for kind in SPDY_FLOODS
    if kind != "session-window-update" or version == "spdy/3.1"])  # a 3 peer sending one is 3.1
def test_spdy_flood_by_a_client_that_reads_gets_goaway(make_proxy, version, kind):
    """PING, SETTINGS, WINDOW_UPDATE and empty-DATA floods from a SPDY client that reads every
    answer (so the bound on unread output never applies), in rounds of 100 frames, up to 20000:
    the session gets GOAWAY (SPDY/3 and 3.1: status PROTOCOL_ERROR, the SPDY form of HTTP/2's
    ENHANCE_YOUR_CALM; SPDY/2's GOAWAY carries none) and is closed within the HTTP/2 codec's
    allowance (1000 control frames, 100 WINDOW_UPDATEs or empty DATA frames, plus what the
    session's work earns), never reaching the round's end."""
    prelude, unit = SPDY_FLOODS[kind]
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_session(version)
    if prelude is not None:
        prelude(c)
    c.pump()
    frame = unit(c.peer.v)
    sent = 0
    while sent < 20000 and not c.closing:
        c.write(frame * 100)
        sent += 100
        c.pump()  # the client reads everything: only the flood bound can stop it
    goaways = [f[3] for f in c.frames if f[0] == fr.GOAWAY]
    assert goaways, f"{version}: {sent} {kind} frames read and answered, no GOAWAY"
    if c.peer.v == 3:
        assert goaways[0][1] == fr.GOAWAY_PROTOCOL_ERROR, goaways
    assert c.closing and sent <= 1100, f"{version}: closed after {sent} {kind} frames"
    assert proxy.listener.internal_errors == 0


@pytest.mark.parametrize("version", SPDY_SESSIONS)
def test_spdy_client_pinging_and_updating_windows_in_step_with_its_work_is_not_a_flood(
        make_proxy, version):
    """What real clients do (browsers PING for liveness, acknowledge every DATA frame with a
    stream WINDOW_UPDATE and, on 3.1, a session one, send SETTINGS now and then): 300 downloads
    of 40 KiB (three DATA frames each), each followed by 2 PINGs, 2 SETTINGS and 6
    WINDOW_UPDATEs: 1200 control frames and 1800 updates, beyond the bare allowances (1000 and
    100) but in step with the work the session really does, so it stays open."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_session(version)
    v = c.peer.v
    body = b"x" * 40000
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answered = set()

    def answer_pings():
        """Echo the proxy's PINGs (even ids: a sniffed "spdy/3" session asks whether the peer
        keeps a session window), as every SPDY peer must."""
        for f in c.pump() + c.frames:
            if f[0] == fr.PING and f[3] % 2 == 0 and f[3] not in answered:
                answered.add(f[3])
                c.write(fr.encode_ping(v, f[3]))

    for n in range(300):
        sid = 1 + 2 * n
        c.send_syn(sid, c.peer.request_pairs(path=b"/d%d" % n))
        proxy.backend().respond(response)
        answer_pings()
        assert c.body(sid) == body, f"{version}: download {n}"
        updates = [fr.encode_window_update(v, sid, 16384)] * 3
        updates += [fr.encode_window_update(v, 0 if version == "spdy/3.1" else sid, 16384)] * 3
        c.write(fr.encode_ping(v, 2 * n + 1) * 2 + fr.encode_settings(v, []) * 2
                + b"".join(updates))
    c.pump()
    assert not [f for f in c.frames if f[0] == fr.GOAWAY], f"{version}: GOAWAY"
    assert not c.closing and proxy.listener.internal_errors == 0


# -- SPDY header blocks of many empty fields ----------------------------------------------------

@pytest.mark.parametrize("v,count", [(3, 7000), (2, 10000)])
def test_spdy_many_tiny_headers_are_refused_before_they_are_read(make_proxy, monkeypatch, v,
                                                                 count):
    """A ~250-byte SYN_STREAM inflating to ~64 KiB of empty-valued fields ("a: ") cost 15-20 ms
    of CPU (200x a plain request) and reached the backend with thousands of lines. Charged 32
    bytes a field like HPACK (RFC 7541 §4.1), the list is over max_header_list_size: every such
    block is refused by the size check, before any field is read (the codec's own refusal, seen
    by wrapping it), its stream is reset, and no backend is asked."""
    refusals = []
    unpack = fr.unpack_header_block

    def spy(version, raw, max_size=None):
        try:
            return unpack(version, raw, max_size)
        except fr.HeaderBlockError as exc:
            refusals.append(str(exc))
            raise

    monkeypatch.setattr(fr, "unpack_header_block", spy)
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    extra = [(b"a", b"")] * count
    for i in range(20):
        c.write(c.peer.syn_stream(41 + 2 * i, c.peer.request_pairs(extra=extra)))
    c.pump()
    assert set(c.resets()) == {41 + 2 * i for i in range(20)}
    assert len(refusals) == 20 and all(r.startswith("header list over") for r in refusals), \
        refusals[:3]
    assert proxy.connects == 0


# -- SPDY DATA frames: merged within a read ------------------------------------------------------

@pytest.mark.parametrize("v", [3, 2])
def test_spdy_one_byte_data_frames_make_few_backend_writes(make_proxy, v):
    """6000 one-byte DATA frames in one read reach the backend in a few writes (they were one
    write, one send(), each), as on HTTP/2; the body is complete and in order."""
    proxy = make_proxy(listen=SPDY_LISTEN)
    c = proxy.spdy_client(v)
    pairs = c.peer.request_pairs()
    pairs[0] = (pairs[0][0], b"POST")
    c.send_syn(1, pairs, fin=False)
    backend = proxy.backend()
    n = backend.count_writes()
    c.write(b"".join(fr.encode_data(1, b"%d" % (i % 10)) for i in range(6000)))
    assert n[0] <= 10, f"spdy/{v}: {n[0]} backend writes for one client read"
    body = b"".join(b"%d" % (i % 10) for i in range(6000))
    assert b"%x\r\n%s\r\n" % (len(body), body) in backend.transport.value()  # one chunk


# -- a connection that arrives after the stream's error answer ---------------------------------

def test_connect_completing_behind_an_unsent_error_answer_is_released(make_proxy):
    """A stream fails while its backend connect is in flight (here: a streamed body over
    ``max_request_body``) and its answer cannot go out (the client's window is 0), so it waits in
    FLUSHING. The connect completing then must hand the connection back, unused: it once hit
    IllegalTransition, and the connection was held by nobody, for ever, its pool slot lost (a
    pool of one then timed every later request out)."""
    import h2.settings

    proxy = make_proxy(limits={"max_request_body": 10},
                       backends=[{"address": "127.0.0.1:8081", "max_connections": 1}])
    client = proxy.h2_client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.request(method=b"POST", path=b"/up", body=b"x" * 50, end_stream=False)
    client.pump()
    assert proxy.connects == 1
    backend = proxy.backend(0)  # the connect completes now
    proxy.advance(0)
    assert backend.received() == b""  # nothing of the refused request
    assert proxy.listener.internal_errors == 0
    second = proxy.h1_client()
    second.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    proxy.advance(0)
    assert proxy.connects == 1  # the released connection serves it
    assert backend.received().startswith(b"GET /next HTTP/1.1\r\n")
    backend.respond(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert second.read().startswith(b"HTTP/1.1 200 ")


def test_connect_failing_behind_an_unsent_error_answer_is_ignored(make_proxy):
    """The same, when the connect fails instead: the answer waiting for the window still goes
    out whole once the window opens (it was an IllegalTransition: an internal error, and a
    reset instead of the answer)."""
    import h2.events
    import h2.settings

    proxy = make_proxy(limits={"max_request_body": 10})
    client = proxy.h2_client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = client.request(method=b"POST", path=b"/up", body=b"x" * 50, end_stream=False)
    client.pump()
    proxy.backend(0, connect=False).refuse()
    proxy.advance(0)
    assert proxy.listener.internal_errors == 0
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    client.flush()
    events = client.pump()
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)
    # The body was not finished: after the whole answer, NO_ERROR asks it to stop (RFC 9113 §8.1).
    assert [e.error_code for e in events if isinstance(e, h2.events.StreamReset)] == [0]
