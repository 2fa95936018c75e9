"""The proxy as a Twisted service: listeners, backends, access log, graceful shutdown.

Strategy: :class:`ProxyService` is a ``MultiService`` with one ``StreamServerEndpointService``
per ``listen:`` entry, all sharing one :class:`proxyd.net.factory.Balancer` (one connection pool
per backend per process). Listening errors are raised synchronously so twistd exits non-zero
before serving. On stop (SIGTERM, SIGINT) it stops accepting, sends GOAWAY (or closes idle
HTTP/1.1 connections), lets streams in flight finish for ``timeouts.graceful_shutdown`` seconds,
then aborts what is left; twistd exits 0 once the returned Deferred fires.

SIGHUP reloads: the file is parsed again; if valid, new client connections use its backends, header rules,
limits and timeouts, and the access log is reopened (log rotation); streams in flight finish on
what they started with. Listener changes need a restart and are logged as such. An invalid file
is logged and the running configuration stays.
"""

import dataclasses
import signal

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.bridge import Policy
from proxyd.config import load_config
from proxyd.errors import ConfigError
from proxyd.ratelimit import ConnectionCounter, KeyedLimiter, TokenBucket
from proxyd.net.factory import Listener, make_balancer, wrap_tls

log = Logger(namespace="proxyd")


def _worker_buckets(config, now):
    """The process-wide read and write buckets (empty tuples when unlimited)."""
    limits = config.rate_limits
    read = (TokenBucket(limits.worker_read.rate, limits.worker_read.burst, now),) \
        if limits.worker_read.rate else ()
    write = (TokenBucket(limits.worker_write.rate, limits.worker_write.burst, now),) \
        if limits.worker_write.rate else ()
    return read, write


def _ip_limiter(config):
    """The process-wide per-client-IP request limiter, or None when unlimited."""
    bucket = config.rate_limits.requests_per_ip
    return KeyedLimiter(bucket.rate, bucket.burst) if bucket.rate else None


class ProxyService(MultiService):
    """All listeners of one configuration."""

    def __init__(self, config, reactor=None, config_path=None):
        super().__init__()
        self.config_path = config_path
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.balancer = make_balancer(reactor, config)
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        self.listeners = []
        self._endpoint_services = []
        self.requests_per_ip = _ip_limiter(config)
        limits = config.limits
        counter = None
        if limits.max_connections or limits.max_connections_per_ip:
            counter = ConnectionCounter(limits.max_connections, limits.max_connections_per_ip)
        worker = _worker_buckets(config, reactor.seconds())
        for index, listen in enumerate(config.listen):
            listener = Listener(reactor, listen, config, self.balancer, self.access_log,
                                self.requests_per_ip, counter, worker)
            self.listeners.append(listener)
            spec = listen.endpoint
            if spec.split(":", 1)[0] in ("tcp", "tcp6") and "backlog=" not in spec:
                spec += ":backlog=1024"
            endpoint = endpoints.serverFromString(reactor, spec)
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
        if self.config_path is not None:
            signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum, frame):
        self.reactor.callFromThread(self.reload)

    def reload(self):
        """Re-read the configuration file and apply it to new streams."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: {err}", err=str(exc))
            return False
        if config.listen != self.config.listen:
            log.warn("reload: listener changes take effect only after a restart")
        old = self.balancer
        self.balancer = make_balancer(self.reactor, config)
        self.requests_per_ip = _ip_limiter(config)
        if self.access_log is not None:
            self.access_log.close()
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        worker = _worker_buckets(config, self.reactor.seconds())
        for listener in self.listeners:
            tls = listener.tls
            listener.worker_read, listener.worker_write = (list(b) for b in worker)
            listener.balancer = self.balancer
            listener.limits = config.limits
            listener.timeouts = config.timeouts
            listener.rate_limits = config.rate_limits
            listener.policy = Policy(headers=config.headers, tls=tls,
                                     max_request_body=config.limits.max_request_body)
            listener.access_log = self.access_log
            listener.requests_per_ip = self.requests_per_ip
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.access_log is not None:
            self._flusher = task.LoopingCall(self.access_log.flush)
            self._flusher.clock = self.reactor
            self._flusher.start(1.0, now=False)
        self.config = dataclasses.replace(config, listen=self.config.listen)
        old.close_idle()
        log.info("proxyd reloaded {path}", path=self.config_path)
        return True

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
        # A graceful stop on SIGTERM/SIGINT is a clean exit: keep twistd from re-raising the signal
        # (it would make the exit status -15 instead of 0).
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
        self.balancer.close_idle()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.access_log is not None:
            self.access_log.close()
        log.info("proxyd stopped")
        return None
