"""Session-level control frames of :class:`~.connection.SpdyConnection`: RST_STREAM, SETTINGS,
PING, GOAWAY and WINDOW_UPDATE.

Strategy: a mixin of handlers over the session state owned by :mod:`.connection`, which dispatches
to them by frame type. Each decodes its payload with :mod:`.frames` (a malformed payload is a
session error), updates windows or limits, and appends events. Tolerances: SETTINGS values flagged
PERSISTED are ignored and the persist flag itself has no effect; WINDOW_UPDATEs are ignored on
SPDY/2 and for closed streams; a session WINDOW_UPDATE turns a ``"spdy/3"`` session into 3.1.
On a sniffed session whose version is still unknown, the answer to the version probe (a PING, see
:mod:`.connection`) arriving before any session WINDOW_UPDATE settles it as SPDY/3. SETTINGS, the
PINGs we answer and every WINDOW_UPDATE (ignored ones too) count toward the flood bounds of
:mod:`proxyd.codec.floods`, as on HTTP/2.
"""

from proxyd import events as ev
from proxyd.codec import FLOW_CONTROL_ERROR as H2_FLOW_CONTROL_ERROR

from . import codec as http
from . import frames as fr


class ControlMixin:
    """Handlers for the control frames that are not about opening streams or their headers.

    A RST_STREAM for a live stream counts toward the session's rapid-reset bound
    (``_count_reset``, in :mod:`proxyd.codec.floods`).
    """

    __slots__ = ()

    def _on_rst_stream(self, flags, payload, events):
        try:
            sid, status = fr.decode_rst_stream(payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        stream = self._streams.get(sid)
        if stream is not None:
            self._remove(stream)
            self._remember_reset(sid)
            events.append(ev.StreamReset(stream_id=sid, error_code=http.h2_code_for_rst(status),
                                         remote=True))
            self._count_reset()

    def _on_settings(self, flags, payload, events):
        try:
            entries = fr.decode_settings(self._v, payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        self._count_control()
        seen = set()
        for setting_id, id_flags, value in entries:
            if setting_id in seen or id_flags & fr.ID_FLAG_PERSISTED:
                continue  # first value wins; values replayed from persistence are not ours
            seen.add(setting_id)
            if setting_id == fr.SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
                events.append(ev.SettingsChanged(max_concurrent_streams=value))
            elif setting_id == fr.SETTINGS_INITIAL_WINDOW_SIZE and self._flow:
                if value > fr.MAX_WINDOW:
                    self._fail(events, "INITIAL_WINDOW_SIZE too large", H2_FLOW_CONTROL_ERROR)
                    return
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                if delta > 0 and self._streams:
                    events.append(ev.WindowUpdated(stream_id=0))

    def _on_ping(self, flags, payload, events):
        try:
            ping_id = fr.decode_ping(payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        if (ping_id & 1) == (1 if self.client_side else 0):
            self._pings.discard(ping_id)  # an answer to ours (or a stray one: ignored)
            if ping_id == self._probe:
                self._probe = None
                if self._version_pending:
                    self._settle_as_spdy3(events)
        else:
            self._count_control()
            self._queue(fr.encode_ping(self._v, ping_id))

    def _on_goaway(self, flags, payload, events):
        try:
            last, status = fr.decode_goaway(self._v, payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        self._goaway_received = True
        events.append(ev.ConnectionTerminated(error_code=http.h2_code_for_goaway(status),
                                              last_stream_id=last, remote=True))

    def _on_window_update(self, flags, payload, events):
        self._count_window_update()  # ignored ones too: reading them is the work
        if not self._flow:
            return  # SPDY/2: no flow control (stock node-spdy sends them anyway)
        try:
            sid, delta = fr.decode_window_update(payload)
        except fr.FrameError as exc:
            self._fail(events, str(exc))
            return
        if sid == 0:
            if not self._session_flow:
                self._upgrade_to_31()
            self._ssend += delta
            if self._ssend > fr.MAX_WINDOW:
                self._fail(events, "session window above 2^31-1", H2_FLOW_CONTROL_ERROR)
                return
            events.append(ev.WindowUpdated(stream_id=0))
            return
        stream = self._streams.get(sid)
        if stream is None or not stream.local_open:
            return  # closed streams: ignored (peers send these routinely)
        stream.send_window += delta
        if stream.send_window > fr.MAX_WINDOW:
            self._stream_error(stream, fr.FLOW_CONTROL_ERROR, H2_FLOW_CONTROL_ERROR, events)
            return
        events.append(ev.WindowUpdated(stream_id=sid))

    def _upgrade_to_31(self):
        """A ``"spdy/3"`` peer sent a session WINDOW_UPDATE: it speaks 3.1; so do we from now."""
        self.version = "spdy/3.1"
        self._http_version = http.HTTP_VERSIONS["spdy/3.1"]
        self._session_flow = self._session_send_flow = True
        self._version_pending = False
        self._grant_session_window()

    def _settle_as_spdy3(self, events):
        """The probe was answered before any session WINDOW_UPDATE: the peer speaks SPDY/3.

        The session window stops applying to what we send; if that lets a stream send more,
        ``WindowUpdated(0)`` makes the network layer resume the streams that were waiting.
        """
        self._version_pending = self._session_send_flow = False
        floor = self._ssend if self._ssend > 0 else 0
        if any(s.local_open and s.send_window > floor for s in self._streams.values()):
            events.append(ev.WindowUpdated(stream_id=0))
