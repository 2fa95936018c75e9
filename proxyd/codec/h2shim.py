"""The one place where proxyd reaches into h2's private internals, and why.

Strategy: h2 (4.x) runs the backend side of the client and bridge modes (:mod:`.h2client`; the
frontend's HTTP/2 is proxyd's own, :mod:`.h2`) through its public API, except for four behaviours
of the RFC (or of a client that must survive hostile backends) that API cannot give; each is a
small override here, and ``tests/unit/test_h2shim.py`` pins every one against the installed h2, so
an h2 upgrade that changes these internals fails loudly in the suite instead of silently in
production:

1. Content-Length against DATA is checked by the stream machine (:mod:`proxyd.stream`), per
   stream: h2 raises a connection error instead (RFC 9113 §8.1.1 says the stream is malformed).
   (``H2Stream._initialize_content_length`` / ``_track_content_length`` replaced on each stream.)
2. A GOAWAY with NO_ERROR from the peer lets streams up to its last stream id finish (RFC 9113
   §6.8); h2 closes its state machine and rejects every later frame. (``_receive_goaway_frame``.)
3. A header block is bounded in bytes, not only in frames (CONTINUATION floods, CVE-2024-27316
   family). (``FrameBuffer._update_header_buffer``.)
4. Our SETTINGS (header list size, no push) are in force from the first byte, and only recent
   closed streams are remembered (h2 keeps 65536 per connection, about 10 MiB).
   (``local_settings`` replaced before the preface, ``decoder.max_header_list_size``,
   ``max_inbound_frame_size``, ``incoming_buffer``, ``MAX_CLOSED_STREAMS``.)
"""

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.frame_buffer import FrameBuffer

# Closed streams remembered per connection (to tell late frames from protocol errors).
MAX_CLOSED_STREAMS = 1024


class BoundedFrameBuffer(FrameBuffer):
    """h2's FrameBuffer bounds a header block at 64 frames; this one bounds its bytes too (3)."""

    max_block = 65536

    def _update_header_buffer(self, f):
        if self._headers_buffer and f is not None:
            size = sum(len(x.data) for x in self._headers_buffer) + len(getattr(f, "data", b""))
            if size > self.max_block:
                raise h2.exceptions.DenialOfServiceError(
                    f"header block over {self.max_block} bytes (CONTINUATION flood)")
        return super()._update_header_buffer(f)


def _no_length_check(*_args):
    """Stand-in for h2's per-stream content-length tracking (1)."""


class _Shared:
    """The overrides (1), (2) and (4)."""

    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS

    def _begin_new_stream(self, stream_id, allowed_ids):
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream._initialize_content_length = _no_length_check
        stream._track_content_length = _no_length_check
        return stream

    def _receive_goaway_frame(self, frame):
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class ClientConnection(_Shared, h2.connection.H2Connection):
    """The backend side's H2Connection."""


def make_connection(client_side, settings, max_header_list_size):
    """An h2 connection with ``settings`` (SettingCodes -> value) in force at once (4).

    Validation and normalisation of headers are off in both directions: the gate
    (:mod:`proxyd.gate`) is the single check of what is received, and proxyd builds what it sends.
    """
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    if not client_side:
        raise ValueError("the frontend's HTTP/2 is proxyd.codec.h2, not h2")
    conn = ClientConnection(config=config)
    settings = dict(settings)
    settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = max_header_list_size
    settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
    conn.max_inbound_frame_size = conn.local_settings.max_frame_size
    conn.decoder.max_header_list_size = max_header_list_size
    conn.incoming_buffer = BoundedFrameBuffer(server=not client_side)
    conn.incoming_buffer.max_block = max_header_list_size
    return conn
