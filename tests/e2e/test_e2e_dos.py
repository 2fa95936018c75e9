"""Rapid reset variants against the real daemon that the first bound missed (DoS review).

``test_e2e_attacks.test_rapid_reset`` resets consecutive streams with the client's RST_STREAM;
here the client either resets sparse stream ids (1, 9, 17...: the bound compared resets with the
highest id, not the streams opened) or makes proxyd reset every stream itself (MadeYouReset,
CVE-2025-8671: a PRIORITY frame of 4 bytes, DATA after END_STREAM). Each connection must get
GOAWAY ENHANCE_YOUR_CALM within 1000 streams while a well-behaved client is served, the RSS stays
bounded and the log records the mitigation (``AttackRun`` of the attacks suite).
"""

import pytest

from .rawh2 import ENHANCE_YOUR_CALM, RawH2, frame_bytes, ping_frame, rst_stream_frame
from .test_e2e_attacks import AttackRun, attack_proxy  # noqa: F401 - the fixture

MAX_STREAMS = 5000


def reset_loop(proxy, trigger, step):
    """HEADERS (GET /delay, END_STREAM) + ``trigger(stream id)`` in rounds of 25 streams, a
    PING per round (its ACK paces the client), on fresh connections while the probes run."""

    def one(stop):
        c = RawH2(proxy.port(), timeout=5)
        sid, sent = 1, 0
        try:
            while sent < MAX_STREAMS and c.goaway is None and not c.closed:
                out = bytearray()
                for _ in range(25):
                    out += c.request(sid, "/delay?ms=2000&rapid", send=False)
                    out += trigger(sid)
                    sid += step
                    sent += 1
                pings = c.pings
                out += ping_frame(b"r%07d" % sent)
                if not c.send(bytes(out)):
                    break
                c.pump(lambda: c.pings > pings or c.goaway is not None, 5,
                       what="the PING ACK of a reset round")
            c.wait_closed(3)
            return {"sent": sent, "goaway": c.goaway, "closed": c.closed}
        finally:
            c.close()

    return AttackRun(proxy, one, max_connections=60, max_seconds=6, min_connections=3).run()


@pytest.mark.parametrize("trigger,step", [
    (lambda sid: rst_stream_frame(sid), 8),                    # client resets, ids 1, 9, 17...
    (lambda sid: frame_bytes(0x2, 0, sid, b"\0\0\0\0"), 2),    # PRIORITY of 4 bytes
    (lambda sid: frame_bytes(0x0, 0, sid, b"x"), 2),           # DATA after END_STREAM
], ids=["rst-sparse-ids", "priority-bad-length", "data-after-end-stream"])
def test_rapid_reset_variants_get_enhance_your_calm(attack_proxy, trigger, step):  # noqa: F811
    """Every attacking connection gets GOAWAY ENHANCE_YOUR_CALM after at most 1000 streams;
    the well-behaved client is served meanwhile; "too many stream resets" is logged."""
    proxy = attack_proxy()
    run = reset_loop(proxy, trigger, step)
    run.summary("rapid reset variant")
    run.check_common()
    for r in run.results:
        assert r["goaway"] is not None and r["goaway"][1] == ENHANCE_YOUR_CALM, run.results
        assert r["sent"] <= 1000, run.results
    run.check_recorded(r"too many stream resets", "the rapid-reset GOAWAY")
