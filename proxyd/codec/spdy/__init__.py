"""SPDY/2, SPDY/3 and SPDY/3.1 codec (sans-IO): :class:`SpdyConnection` and :func:`sniff_version`.

Strategy: no SPDY library is usable, so this package is ours, in four layers: the dictionaries
(:mod:`.zlib_dict`), the wire format and header compression (:mod:`.frames`), HTTP semantics and
error-code tables (:mod:`.codec`), and the session state machine (:mod:`.connection`, with its
control-frame handlers in :mod:`.control`, its sending half in :mod:`.sending` and stream records
in :mod:`.stream`). Nothing here imports
twisted or socket; the network layer drives :class:`SpdyConnection` exactly like the other codecs
(see :mod:`proxyd.codec`).

Peer quirks tolerated (DESIGN section 6, the spdy-peer README's deviations):

* SPDY/2 GOAWAY with 4 or 8 bytes (we send 4); SETTINGS ids little-endian on SPDY/2.
* SETTINGS entries: the persist flag is ignored, values flagged PERSISTED (replays of values a
  server once asked to persist; never ours) are ignored; the first value of a repeated id wins.
* WINDOW_UPDATE for closed or unknown streams is ignored; on SPDY/2 all WINDOW_UPDATEs are.
* A SPDY/3.1 session window overrun of up to 64 KiB is accepted and counted in
  ``SpdyConnection.session_window_overruns``; beyond that the session fails.
* CREDENTIAL, NOOP and unknown control frame types are ignored (oversized ones skipped unbuffered).
* A SPDY/2 ``url`` may be an absolute URI.

``StreamEnded`` is always emitted when the peer's side of a stream ends, also when the head itself
carried FIN (then ``RequestReceived.end_stream`` / ``ResponseReceived.end_stream`` is True too).

Error codes (HTTP/2 numbering in the API, SPDY on the wire; tables in :mod:`.codec`):

* ``reset_stream``: PROTOCOL_ERROR 1->1, INTERNAL_ERROR 2->6, FLOW_CONTROL_ERROR 3->7,
  STREAM_CLOSED 5->2 (INVALID_STREAM), FRAME_SIZE_ERROR 6->11 (SPDY/2: 1), REFUSED_STREAM 7->3,
  CANCEL 8->5, NO_ERROR 0->5 (CANCEL), ENHANCE_YOUR_CALM 11->1 (REFUSED_STREAM would invite an
  automatic retry), others -> 6; SPDY/2 has no codes above 7 (they become 1).
* received RST_STREAM: 1->1, 2->5, 3->7, 4->1, 5->8, 6->2, 7->3, 8->1, 9->5, 10->12, 11->6,
  0->0, unknown->2.
* GOAWAY sent: 0->OK, INTERNAL_ERROR->2, anything else->PROTOCOL_ERROR 1 (SPDY/2 carries no
  status); received: 0->0, 1->1, 2 or the draft's 11->2.
"""

from .codec import HTTP_VERSIONS, VERSIONS, h2_code_for_rst, rst_status_for, sniff_version
from .connection import SpdyConnection
from .stream import SpdyError

__all__ = ["HTTP_VERSIONS", "SpdyConnection", "SpdyError", "VERSIONS", "h2_code_for_rst",
           "make_server_codec", "rst_status_for", "sniff_version"]


def make_server_codec(protocol, settings, *, sniffed=False):
    """A frontend :class:`SpdyConnection` for ``protocol`` with the listener's ``settings`` limits.

    ``settings`` needs ``max_concurrent_streams`` and ``max_header_list_size``. Pass
    ``sniffed=True`` when the version was read from cleartext bytes rather than negotiated by
    ALPN: a version-3 peer then gets a ``"spdy/3"`` session, which becomes 3.1 as soon as the peer
    sends a session WINDOW_UPDATE (a SPDY/3 peer run as 3.1 would stall our sending after 64 KiB).
    Until the peer shows its version that session sends within the 3.1 session window, and a PING
    behind the first 64 KiB settles SPDY/3 if answered before any session WINDOW_UPDATE (the rule
    is in :mod:`.connection`).
    """
    if sniffed and protocol in ("spdy/3", "spdy/3.1"):
        protocol = "spdy/3"
    return SpdyConnection(protocol, client_side=False,
                          max_concurrent_streams=settings.max_concurrent_streams,
                          max_header_list_size=settings.max_header_list_size, sniffed=sniffed)
