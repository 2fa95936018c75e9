"""The proxy as a Twisted service: listeners, backends, access log, graceful shutdown.

Strategy: :class:`ProxyService` is a ``MultiService`` with one ``StreamServerEndpointService``
per ``listen:`` entry, all sharing one :class:`proxyd.net.factory.Balancer` (one connection pool
per backend per process). Listening errors are raised synchronously so twistd exits non-zero
before serving. On stop (SIGTERM, SIGINT) it stops accepting, sends GOAWAY (or closes idle
HTTP/1.1 connections), lets streams in flight finish for ``timeouts.graceful_shutdown`` seconds,
then aborts what is left; twistd exits 0 once the returned Deferred fires.
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.net.factory import Listener, make_balancer, wrap_tls

log = Logger(namespace="proxyd")


class ProxyService(MultiService):
    """All listeners of one configuration."""

    def __init__(self, config, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.balancer = make_balancer(reactor, config)
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        self.listeners = []
        self._endpoint_services = []
        for index, listen in enumerate(config.listen):
            listener = Listener(reactor, listen, config, self.balancer, self.access_log)
            self.listeners.append(listener)
            endpoint = endpoints.serverFromString(reactor, listen.endpoint)
            service = StreamServerEndpointService(endpoint, wrap_tls(listener, listen, index))
            service._raiseSynchronously = True
            service.setServiceParent(self)
            self._endpoint_services.append(service)
        if config.metrics:
            from proxyd.net.metrics import metrics_factory

            endpoint = endpoints.serverFromString(reactor, config.metrics)
            service = StreamServerEndpointService(endpoint, metrics_factory(self))
            service._raiseSynchronously = True
            service.setServiceParent(self)
            self._endpoint_services.append(service)
        self._flusher = None

    def startService(self):
        super().startService()
        for listen in self.config.listen:
            log.info("proxyd listening on {endpoint} ({protocols}, mode {mode})",
                     endpoint=listen.endpoint, protocols=", ".join(listen.protocols),
                     mode=self.config.mode)
        if self.access_log is not None:
            self._flusher = task.LoopingCall(self.access_log.flush)
            self._flusher.clock = self.reactor
            self._flusher.start(1.0, now=False)

    def stopService(self):
        """Stop accepting, drain connections gracefully, then stop."""
        log.info("proxyd shutting down (grace {t}s)", t=self.config.timeouts.graceful_shutdown)
        stops = [defer.maybeDeferred(s.stopService) for s in self._endpoint_services]
        self.running = 0
        done = defer.DeferredList(stops)
        done.addCallback(lambda _: self._drain())
        done.addBoth(self._stopped)
        return done

    def _drain(self):
        connections = [c for listener in self.listeners for c in listener.connections]
        for conn in connections:
            conn.shutdown()
        if not self._open_connections():
            return None
        finished = defer.Deferred()
        deadline = self.reactor.seconds() + self.config.timeouts.graceful_shutdown

        def poll():
            if not self._open_connections():
                finished.callback(None)
            elif self.reactor.seconds() >= deadline:
                left = list(self._open_connections())
                log.warn("graceful shutdown: aborting {n} connections", n=len(left))
                for conn in left:
                    conn.transport.abortConnection()
                finished.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return finished

    def _open_connections(self):
        return [c for listener in self.listeners for c in listener.connections]

    def _stopped(self, result):
        self.balancer.close_idle()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.access_log is not None:
            self.access_log.close()
        log.info("proxyd stopped")
        return None
