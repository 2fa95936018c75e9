"""Health probes and active checks of backend groups: the network half of :mod:`proxyd.route`.

Strategy: the decisions (when a backend is down, when to look again, how long to wait) are
:class:`proxyd.route.Health`'s; this module only does the looking. Two kinds of look:

* a *probe* (groups without ``health_check``): once a backend was marked down by failed
  connects, connect to it again at ``Health.retry_at``; a connect that succeeds brings it back,
  a failure doubles the wait (capped);
* an *active check* (groups with ``health_check``): every ``interval``, ``GET path`` over the
  backend's own protocol (HTTP/1.1, or HTTP/2 for h2 backends, TLS as configured), answered
  within ``timeout`` with an expected status; ``max_fails`` failed checks in a row mark the
  backend down, one good check brings it back. Recovery of a checked group is the checks' job
  only (a connect that succeeds says nothing about a backend that answers 500).

Every timer and connection belongs to the :class:`HealthMonitor`, which a reload or the stop
ends (:meth:`HealthMonitor.stop`), so nothing outlives the routing it checks.
"""

import contextlib

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from proxyd import events as ev
from proxyd.bridge import BackendRequest
from proxyd.codec.h2client import H2ClientCodec
from proxyd.net.backend_tls import client_endpoint
from proxyd.net.twistedshim import fast_paths, release

log = Logger(namespace="proxyd.health")


class _Look(Protocol):
    """One probe or check connection; ``done(ok, why)`` is called exactly once."""

    def __init__(self, backend, check, done):
        self.backend = backend
        self.check = check
        self.done = done
        self.buffer = b""
        self.codec = None
        self.finished = False

    def finish(self, ok, why):
        if not self.finished:
            self.finished = True
            self.done(ok, why)
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    def connectionMade(self):
        # As on every proxyd connection: among other things, an aborted TLS connection then
        # leaves no Failure whose frames hold it (a reference cycle in Twisted's own read loop).
        fast_paths(self.transport)
        if self.check is None:  # a probe: the connect was the question
            self.finish(True, "connected")
            return
        address = self.backend.address
        if self.backend.config.protocol == "h2":
            self.codec = H2ClientCodec()
            self.codec.initiate()
            scheme = b"https" if self.backend.config.tls is not None else b"http"
            request = BackendRequest(b"GET", self.check.path.encode(), address,
                                     [(b"user-agent", b"proxyd-health-check")], None, False)
            self.codec.send_request(request, scheme, address)
            self.transport.write(self.codec.data_to_send())
            return
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: proxyd-health-check\r\n"
                             b"Connection: close\r\n\r\n" % (self.check.path.encode(), address))

    def dataReceived(self, data):
        if self.codec is not None:
            try:
                events = self.codec.receive_data(data)
            except Exception as exc:  # noqa: BLE001 - any codec error fails the check
                self.finish(False, f"HTTP/2 error: {exc}")
                return
            data = self.codec.data_to_send()
            if data:
                self.transport.write(data)
            for event in events:
                if type(event) is ev.ResponseReceived:
                    self._status(event.status)
                    return
            return
        self.buffer += data
        if b"\n" in self.buffer or len(self.buffer) > 4096:
            line = self.buffer.split(b"\n", 1)[0].split(b" ")
            status = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
            if line[0][:5] != b"HTTP/" or not 100 <= status <= 599:
                self.finish(False, "not an HTTP/1.1 response")
                return
            self._status(status)

    def _status(self, status):
        if self.check.accepts(status):
            self.finish(True, f"status {status}")
        else:
            self.finish(False, f"status {status}")

    def connectionLost(self, reason=None):
        self.finish(False, "connection closed before a response")
        # The transport leads back to this look (Twisted's connector holds the endpoint's
        # factory, which holds ours and the connect Deferred, both holding this protocol):
        # without these two steps every check would be a reference cycle for the collector.
        release(self.transport)
        self.transport = None


class _LookFactory(Factory):
    noisy = False

    def __init__(self, backend, check, done):
        self.args = (backend, check, done)
        self.protocol_object = None

    def buildProtocol(self, addr):
        self.protocol_object = _Look(*self.args)
        return self.protocol_object


class HealthMonitor:
    """Runs the probes and checks of one :class:`proxyd.net.routing.Routing`."""

    def __init__(self, reactor, routing):
        self.reactor = reactor
        self.routing = routing
        self.calls = {}      # backend -> the delayed call of its next look
        self.looking = {}    # backend -> (factory, connect Deferred, timeout call)
        self.stopped = False
        self.checks = {}     # backend -> HealthCheck of its group
        for state in routing.states:
            if state.check is not None:
                for backend in state.group.members:
                    self.checks[backend] = state.check

    def start(self):
        """First active checks at once (staggered over the first interval)."""
        for i, (backend, check) in enumerate(self.checks.items()):
            self._schedule(backend, check.interval * i / max(len(self.checks), 1) / 4)
        for backend in self.routing.backends:  # down before a reload: keep probing
            if backend not in self.checks and not backend.health.up:
                self.down(backend)

    def stop(self):
        """End every timer and connection of this monitor."""
        self.stopped = True
        calls, self.calls = self.calls, {}
        for call in calls.values():
            if call.active():
                call.cancel()
        looking, self.looking = self.looking, {}
        for factory, deferred, timeout in looking.values():
            if timeout.active():
                timeout.cancel()
            deferred.cancel()
            if factory.protocol_object is not None:
                factory.protocol_object.finished = True
                transport = factory.protocol_object.transport
                if transport is not None:
                    transport.abortConnection()

    def down(self, backend):
        """``backend`` was marked down: probe it when due (checked groups keep checking)."""
        if backend not in self.checks:
            delay = max(backend.health.retry_at - self.reactor.seconds(), 0)
            self._schedule(backend, delay)

    def _schedule(self, backend, delay):
        if self.stopped:
            return
        call = self.calls.get(backend)
        if call is not None and call.active():
            call.cancel()
        self.calls[backend] = self.reactor.callLater(delay, self._look, backend)

    def _look(self, backend):
        self.calls.pop(backend, None)
        if self.stopped or backend in self.looking:
            return
        check = self.checks.get(backend)
        timeout = check.timeout if check is not None else connect_timeout(backend)
        protocols = (b"h2",) if backend.config.protocol == "h2" else (b"http/1.1",)
        endpoint = client_endpoint(self.reactor, backend.config, timeout, protocols=protocols)
        factory = _LookFactory(backend, check, lambda ok, why: self._result(backend, ok, why))
        timer = self.reactor.callLater(timeout, self._timed_out, backend, timeout)
        deferred = endpoint.connect(factory)
        self.looking[backend] = (factory, deferred, timer)
        deferred.addErrback(self._connect_failed, backend)

    def _connect_failed(self, failure, backend):
        entry = self.looking.get(backend)
        if entry is not None and (entry[0].protocol_object is None
                                  or not entry[0].protocol_object.finished):
            self._result(backend, False, failure.getErrorMessage())

    def _timed_out(self, backend, timeout):
        entry = self.looking.get(backend)
        if entry is None:
            return
        factory, deferred, _ = entry
        look = factory.protocol_object
        if look is not None:
            look.finish(False, f"no answer within {timeout}s")
        else:
            self._result(backend, False, f"no connection within {timeout}s")
            deferred.cancel()

    def _result(self, backend, ok, why):
        entry = self.looking.pop(backend, None)
        if entry is not None and entry[2].active():
            entry[2].cancel()
        if self.stopped:
            return
        health = backend.health
        check = self.checks.get(backend)
        if ok:
            if health.succeeded():
                self.routing.marked_up(backend)
        elif check is not None:
            if health.failed(self.reactor.seconds()):
                self.routing.marked_down(backend, f"health check failed: {why}")
        else:
            wait = health.probe_failed(self.reactor.seconds())
            log.info("backend {addr} still down ({why}); next probe in {t:.1f}s",
                     addr=backend.config.address, why=why, t=wait)
        if check is not None:
            self._schedule(backend, check.interval)
        elif not health.up:
            self._schedule(backend, max(health.retry_at - self.reactor.seconds(), 0))


def connect_timeout(backend):
    """The connect timeout a backend object was built with (see routing._backend_key)."""
    with contextlib.suppress(AttributeError, IndexError, TypeError):
        return backend.proxyd_key[4]
    return 5.0
