"""Flood bounds shared by the HTTP/2 and SPDY codecs: one rule per kind of frame that asks proxyd
for work (an answer, a parse, a table update) but no work of the kind a client is there for.

Strategy: a codec counts its *work*, ``_streams_opened`` (streams opened, by the peer or us) and
``_data_frames_sent`` (DATA frames we sent), and calls a ``_count_*`` method of
:class:`FloodBounds` for each frame of a kind that can be sent for nothing; past the allowance the
method raises :class:`Flood`, which the codec turns into its own connection error (HTTP/2: GOAWAY
ENHANCE_YOUR_CALM; SPDY: GOAWAY PROTOCOL_ERROR, or SPDY/2's GOAWAY without a status) whose
``reason`` the network layer logs. Stream ids never count as work: one huge id would lift every
bound. The rules (CVE-2019-9512, -9515, -9518, -9511 family; CVE-2023-44487; CVE-2025-8671):

* empty DATA frames without END_STREAM (FIN) on an open stream: more than ``MAX_EMPTY_DATA`` in
  a row ("empty DATA flood"); DATA with bytes, or ending the stream, starts the count again;
* WINDOW_UPDATE (also those ignored, for closed streams or on SPDY/2): beyond
  ``MAX_WINDOW_UPDATES`` + ``MAX_WINDOW_UPDATES_PER_DATA`` per unit of work ("WINDOW_UPDATE
  flood"); a client acknowledging each DATA frame with a stream and a session update needs 2;
* SETTINGS and PING that make us answer or apply (not acknowledgements, not answers to our own
  PINGs): beyond ``MAX_CONTROL_FRAMES`` + ``MAX_CONTROL_FRAMES_PER_WORK`` per unit of work
  ("SETTINGS/PING flood"); the fixed part also bounds a peer that never reads while the
  kernel's socket buffers (several MiB on loopback) still absorb our answers;
* resets (rapid reset, MadeYouReset): the peer's RST_STREAMs and the stream errors it provokes,
  beyond ``max_resets`` (None: no bound; a client side has none) *and* half of the streams
  opened ("too many stream resets"); nghttp2's bucket allows a burst of 1000 (33/s after); with
  no clock here, the ratio keeps long connections that cancel some streams. Malformed requests
  the network layer finds (RFC 9113 §8.1.1: heads the gate refuses, bodies that break their
  Content-Length or the body limit, refused trailers) are such stream errors too
  (:meth:`FloodBounds.provoked_reset`, :meth:`FloodBounds.refuse_stream`); they are found
  after ``receive_data`` returned, so a bound they pass ends the connection at the start of
  the next read.

Sans-IO like every codec: no clock, no I/O; the counters live on the codec instance.
"""

from proxyd.codec import ENHANCE_YOUR_CALM

MAX_EMPTY_DATA = 100
MAX_WINDOW_UPDATES = 100
MAX_WINDOW_UPDATES_PER_DATA = 10
MAX_CONTROL_FRAMES = 1000
MAX_CONTROL_FRAMES_PER_WORK = 10
MAX_RESETS = 200  # the frontends' max_resets


class Flood(Exception):
    """A flood bound was passed: the connection ends with ENHANCE_YOUR_CALM (``code``, HTTP/2
    numbering) for ``reason``."""

    code = ENHANCE_YOUR_CALM

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class FloodBounds:
    """The counters and checks of the flood rules (see the module docstring), as a mixin.

    The codec calls :meth:`_init_flood_bounds` from its constructor, adds to ``_streams_opened``
    and ``_data_frames_sent`` as it works, and catches :class:`Flood` where it turns errors
    into its connection error. ``resets`` counts every stream the peer reset or made us reset.
    """

    __slots__ = ()
    max_resets = None  # resets the peer caused, tolerated (None: no bound)

    def _init_flood_bounds(self):
        self._empty_data = 0
        self._window_updates = 0
        self._control_frames = 0
        self._data_frames_sent = 0
        self._streams_opened = 0
        self.resets = 0
        self._provoked_over = False  # provoked stream errors passed the bound: fail the next read

    def _count_empty_data(self):
        """One more empty DATA frame without END_STREAM in a row (reset ``_empty_data`` to 0
        on any other DATA frame)."""
        self._empty_data += 1
        if self._empty_data > MAX_EMPTY_DATA:
            raise Flood("empty DATA flood")

    def _count_window_update(self):
        """One more WINDOW_UPDATE received, whatever it is for."""
        self._window_updates += 1
        if self._window_updates > MAX_WINDOW_UPDATES + MAX_WINDOW_UPDATES_PER_DATA * (
                self._data_frames_sent + self._streams_opened):
            raise Flood("WINDOW_UPDATE flood")

    def _count_control(self):
        """One more SETTINGS or PING that we answer or apply."""
        self._control_frames += 1
        work = self._streams_opened + self._data_frames_sent
        if self._control_frames > MAX_CONTROL_FRAMES + MAX_CONTROL_FRAMES_PER_WORK * work:
            raise Flood("SETTINGS/PING flood")

    def _count_reset(self):
        """One more stream the peer reset (RST_STREAM, CVE-2023-44487) or made us reset with a
        stream error (MadeYouReset, CVE-2025-8671)."""
        self.resets += 1
        if self._resets_over():
            raise Flood("too many stream resets")

    def _resets_over(self):
        """True when the resets the peer caused are over the bound (see the module docstring)."""
        return (self.max_resets is not None and self.resets > self.max_resets
                and self.resets * 2 > self._streams_opened)

    def refuse_stream(self, stream_id, error_code):
        """Reset a stream whose head the network layer refused (the gate), counted as a reset
        the peer caused (:meth:`provoked_reset`)."""
        self.reset_stream(stream_id, error_code)
        self.provoked_reset()

    def provoked_reset(self):
        """Count a stream error the peer provoked that the network layer found (a malformed
        request); past the bound, the next :meth:`receive_data` ends the connection (GOAWAY
        ``Flood.code``, ``ConnectionTerminated``) before it reads anything."""
        self.resets += 1
        if self._resets_over():
            self._provoked_over = True
