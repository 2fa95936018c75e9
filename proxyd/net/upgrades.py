"""The h2c upgrade of a client connection (RFC 7540 §3.2): HTTP/1.1 in, HTTP/2 from the 101 on.

Strategy: :mod:`proxyd.h2c` decides whether a request asks for the upgrade; this module carries it
out on a :class:`proxyd.net.frontend.FrontendProtocol`, in one go, before anything else is done
with the request: an HTTP/2 codec is built (with the listener's settings) and given the client's
``HTTP2-Settings`` (invalid ones: no upgrade, the request is served over HTTP/1.1), ``101`` goes
out and then the codec's SETTINGS, the request becomes stream 1 (gated by the HTTP/1.1 rules it
was written in, answered over HTTP/2), and the bytes the client sent after it (its preface) feed
the new codec.
"""

from proxyd import events as ev
from proxyd import gate
from proxyd.codec.select import make_codec
from proxyd.h2c import SWITCHING

__all__ = ["switch_to_h2c"]


def switch_to_h2c(frontend, raw, settings):
    """Switch ``frontend`` to HTTP/2 for the raw HTTP/1.1 request ``raw`` that asked for it, with
    its decoded ``settings``. False (nothing changed) when the settings are not acceptable."""
    from proxyd.net.frontend import _PIPELINED  # a cycle at import time otherwise

    listener = frontend.listener
    codec = make_codec("h2", listener.limits, frontend.scheme,
                       connect_protocol=listener.connect_protocol)
    codec.initiate()
    try:
        codec.upgrade(settings)
    except ValueError:
        return False
    rest = frontend.codec.take_rest()
    frontend.flush()  # whatever the HTTP/1.1 codec still had queued goes first
    frontend.transport.write(SWITCHING)
    frontend.listener.bytes_sent += len(SWITCHING)
    frontend.codec.release()  # its parser's callbacks: a reference cycle otherwise
    frontend.codec = codec
    frontend.family = gate.H2
    frontend.extended_connect = codec.enable_connect_protocol
    # The request's Upgrade was answered (h2c): no other protocol it listed (a WebSocket) may
    # be taken up again by the gate for stream 1.
    headers = [item for item in raw.headers if item[0].lower() != b"upgrade"]
    request = ev.RequestReceived(stream_id=1, headers=headers, end_stream=True,
                                 http_version=raw.http_version)
    frontend._on_request(request, gate.HTTP1)  # noqa: SLF001 - the frontend's own entry point
    frontend.resume_reading(_PIPELINED)
    if rest:
        frontend._receive(rest)  # noqa: SLF001 - as if it had just arrived
    return True
