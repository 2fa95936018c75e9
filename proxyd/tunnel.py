"""The tunnel rules of the stream machine (WebSocket over HTTP/1.1 and RFC 8441).

Strategy: a tunnel is a state of the one stream machine (``TUNNEL``, ``TUNNEL_BLOCKED`` in
:data:`proxyd.stream.TRANSITIONS`, whose picture and docstring say when each rule applies); its
handlers live here as a mixin of :class:`proxyd.stream.StreamMachine`, to keep each module to one
concept. They use the machine's shared helpers (``_fail``, ``_broken``, ``_send_held``,
``_send_or_hold``, ``_end_response``, ``_finish``) and emit the same commands as every other
rule.
"""

from proxyd import gate
from proxyd.errors import Refused
from proxyd.streamnames import (ARM, CANCEL, CLOSE_BACKEND, END_BODY, FLUSHING, IDLE_TIMER,
                                OPEN_TUNNEL, READ, RESPOND, RESUME_BACKEND, SEND_BODY, STALL,
                                TUNNEL, TUNNEL_BLOCKED)
from proxyd.websocket import accept_for


class TunnelRules:
    """The handlers of the tunnel states (a mixin: the machine's slots hold the state)."""

    __slots__ = ()

    def _switch(self, out, status, headers, breq):
        """The backend switched protocols: check its head, answer the client, open the tunnel.

        ``breq`` is the :class:`proxyd.bridge.TunnelBackendRequest` that asked for it; an HTTP/1.1
        backend's accept must match its key, an HTTP/2 backend (``via_version`` 2) answered an
        extended CONNECT with a 2xx.
        """
        key = getattr(breq, "key", None)
        if self.request.upgrade is None:
            return self._fail(out, "bad_response", "switch for a request that asked for none")
        connect = self.via_version == b"2"
        try:
            fields = gate.check_switch(status, headers, None if connect or key is None
                                       else accept_for(key), connect)
        except Refused as refused:
            return self._fail(out, refused.reason, refused.detail)
        status, fields = self.policy.tunnel_headers(
            fields, http1_client=self.family == gate.HTTP1, via_version=self.via_version,
            backend_address=self.backend_address, key=key)
        self.status = status
        out.append((CANCEL, READ))
        out.append((RESPOND, status, fields, False))
        out.append((OPEN_TUNNEL,))
        for chunk in self.early:  # what the client sent before the switch (_hold_for_tunnel)
            out.append((SEND_BODY, chunk))
        self.early = []
        self.early_len = 0
        if self.request_ended and self.body_at_head:  # an END_STREAM that came after the head
            out.append((END_BODY, ()))
        out.append((ARM, IDLE_TIMER))
        return TUNNEL

    def _hold_for_tunnel(self, out, data, flow_length):
        """Client bytes of a tunnel request before the backend switched (an RFC 8441 client's
        DATA ahead of the 200): held for the tunnel, which :meth:`_switch` sends them into, and
        acknowledged once the backend took them (a client without flow control is paused past
        ``early_limit``); dropped with the stream if the backend does not switch."""
        self.unacked += flow_length
        self.early.append(data)
        self.early_len += len(data)
        if not self.flow_controlled and self.early_len > self.early_limit:
            self._pause_client(out)
        return self.state

    def _pipe_up(self, out, data, flow_length):
        """Client bytes into the tunnel (acknowledged once the backend took them)."""
        self.unacked += flow_length
        out.append((SEND_BODY, data))
        out.append((ARM, IDLE_TIMER))
        return self.state

    def _pipe_down(self, out, data):
        """Backend bytes toward the client, within its window; the rest is held."""
        out.append((ARM, IDLE_TIMER))
        return TUNNEL if self._send_or_hold(out, data) else TUNNEL_BLOCKED

    def _tunnel_hold(self, out, data):
        """Backend bytes while the client's window is shut: held (the backend is paused)."""
        self.pending += data
        return TUNNEL_BLOCKED

    def _tunnel_drain(self, out):
        """The client's window opened: send what it allows; all sent, the backend resumes."""
        if not self._send_held(out):
            return TUNNEL_BLOCKED
        out.append((ARM, IDLE_TIMER))
        if self.pending:
            return TUNNEL_BLOCKED
        self.pending = None
        out.append((RESUME_BACKEND,))
        return TUNNEL

    def _tunnel_end(self, out):
        """The backend closed: the client's side ends too (after what is held, if any)."""
        self.attached = False
        out.append((CANCEL, IDLE_TIMER))
        out.append((CLOSE_BACKEND,))
        if self.pending:
            out.append((ARM, STALL))
            return FLUSHING
        self.pending = None
        return self._end_response(out)

    def _tunnel_closed(self, out):
        """The client reset its stream or closed its connection: close the backend too."""
        self.attached = False
        out.append((CANCEL, IDLE_TIMER))
        out.append((CLOSE_BACKEND,))
        return self._finish(out)

    def _tunnel_broken(self, out, reason, detail=""):
        """A failure inside the tunnel (the backend lost, idle, a bug): reset both sides."""
        out.append((CANCEL, IDLE_TIMER))
        if self.pending is not None:
            self.pending = None
        return self._broken(out, reason, detail)

    def _tunnel_lost(self, out, unprocessed, reused, got_response):
        """The backend connection failed under the tunnel (RFC 9113 §8.5: CONNECT_ERROR)."""
        self.attached = False
        return self._tunnel_broken(out, "tunnel_failed", "connection lost in the tunnel")

    def _tunnel_idle(self, out):
        """No byte either way for ``timeouts.tunnel_idle``: reset both sides."""
        return self._tunnel_broken(out, "tunnel_idle", "no byte either way")
