"""The proxy as a Twisted service: listeners, backends, reload, signals, systemd, shutdown.

Strategy: :class:`ProxyService` owns one listening port per ``listen:`` entry (and one for
``metrics:``), one persistent :class:`proxyd.net.factory.Listener` per endpoint, the shared
:class:`~proxyd.net.factory.Hub` (access log, stats, connection counter, per-IP limiter) and the
balancer. Ports are opened in ``privilegedStartService`` (before twistd drops privileges); a port
that cannot be opened ends the process with one line on standard error and exit status 1.
systemd hears READY=1 once the reactor runs with every port bound (see :mod:`proxyd.net.systemd`).

SIGHUP reloads in place, in two phases. Prepare: parse and check the file (every problem,
with key paths), build every TLS context, open the access log and the ports of new endpoints;
any failure closes what was opened and leaves the running configuration untouched ("reload
failed" in the log, ``proxyd_reloads_total{result="failed"}``). Commit: listeners that stay
keep their socket and are re-configured (new handshakes use the new certificate; new streams,
also on connections already open, use the new backends, header rules, limits and timeouts);
removed listeners stop accepting and their connections drain (GOAWAY, then
``timeouts.graceful_shutdown``); backends whose settings did not change keep their pools, the
others are retired once idle; ``limits.max_connections(_per_ip)`` applies at once. Streams in
flight finish on the backend connection they have. Connections that stay are not sent GOAWAY:
clients such as h2load count every request after a GOAWAY as failed.

SIGUSR1 reopens the access log (after logrotate moved it). SIGTERM/SIGINT: stop accepting,
health checks answer 503, GOAWAY, streams in flight get ``timeouts.graceful_shutdown``, then
exit 0.

What differs in a worker process (``workers:`` above 1) is behind ``host``
(:class:`LocalHost` here, :class:`proxyd.net.worker.WorkerHost` in a worker): where a port
comes from (a socket the supervisor passed instead of a new one), the connection counter and
request limiter (shared by all workers instead of this process's), whether this process serves
the metrics endpoint and handles SIGHUP itself (the supervisor does), and the preflight. A
worker that a reload replaces calls :meth:`ProxyService.retire`.
"""

import signal
import sys

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

from proxyd import stats as stats_module
from proxyd.accesslog import AccessLog
from proxyd.config import load_config
from proxyd.errors import ConfigError
from proxyd.net.twistedshim import forget_exit_signal
from proxyd.runtime import collect_garbage, tune_gc
from proxyd.net.factory import Hub, Listener, make_balancer, worker_buckets
from proxyd.net import signals
from proxyd.net.ports import ListenError, describe, drain, listen
from proxyd.net.systemd import Notifier
from proxyd.ratelimit import ConnectionCounter, KeyedLimiter

log = Logger(namespace="proxyd")
STATUS_INTERVAL = 5.0


class LocalHost:
    """A single proxyd process: it binds its own ports and counts its own limits."""

    serves_metrics = True
    handles_signals = True
    request_limiter_type = KeyedLimiter

    def __init__(self, reactor):
        self.reactor = reactor

    def listen(self, spec, factory, path):
        """Open the port of endpoint ``spec`` (ListenError when it cannot)."""
        return listen(self.reactor, spec, factory, path)

    @staticmethod
    def connection_counter(max_total, max_per_ip):
        """The counter of limits.max_connections(_per_ip)."""
        return ConnectionCounter(max_total, max_per_ip)

    @staticmethod
    def request_limiter(rate, burst):
        """The limiter of rate_limits.requests_per_ip."""
        return KeyedLimiter(rate, burst)

    def preflight(self, config):
        """Everything short of binding that can fail (TLS files, inherited sockets)."""
        from proxyd.net.preflight import preflight

        return preflight(config, self.reactor)


def _ip_limiter(host, config, current=None, channel=None):
    """The per-client-IP request limiter for ``config`` (``current`` when unchanged); shared
    through Redis with ``limits.shared`` (once the service runs: ``channel``), else the host's
    (this process's, or the one all workers share)."""
    bucket = config.rate_limits.requests_per_ip
    if not bucket.rate:
        return None
    if config.limits.shared is not None:
        from proxyd.net.sharedlimit import SharedLimiter

        if isinstance(current, SharedLimiter) and current.same(channel, bucket.rate, bucket.burst):
            return current
        return SharedLimiter(channel, bucket.rate, bucket.burst) if channel else None
    if type(current) is host.request_limiter_type and (current.rate, current.burst) == (
            bucket.rate, bucket.burst):
        return current
    return host.request_limiter(bucket.rate, bucket.burst)


class ProxyService(MultiService):
    """All listeners of one configuration, and its reloads."""

    def __init__(self, config, reactor=None, config_path=None, tls_contexts=None, notifier=None,
                 host=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host or LocalHost(reactor)
        self.config_path = config_path
        self.config = config
        self.stats = stats_module.PROCESS
        self.notifier = notifier or Notifier(reactor)
        self.draining = False
        limits = config.limits
        self.shared = None  # limits.shared: the Redis channel, once started (after any fork)
        self.hub = Hub(self._open_access_log(config), _ip_limiter(self.host, config),
                       self.host.connection_counter(limits.max_connections,
                                                    limits.max_connections_per_ip),
                       self.stats)
        self.balancer = make_balancer(reactor, config)
        contexts = tls_contexts or {}
        buckets = worker_buckets(config, reactor.seconds())
        self.listeners = [
            Listener(reactor, listen_on, config, self.balancer, hub=self.hub,
                     worker_buckets=buckets, index=index, context=contexts.get(index))
            for index, listen_on in enumerate(config.listen)]
        self.retired = []          # listeners a reload removed, draining
        self._retired_backends = []
        self._ports = {}           # endpoint string -> listening port
        self._metrics_port = None
        self._metrics_factory = None
        if self._serves_metrics(config):
            import proxyd.net.metrics  # noqa: F401 - prometheus_client loads before ports open
        self._loops = []

    def _serves_metrics(self, config):
        return config.metrics is not None and self.host.serves_metrics

    @property
    def access_log(self):
        """The access-log writer, or None."""
        return self.hub.access_log

    @staticmethod
    def _open_access_log(config, current=None):
        settings = config.access_log
        if settings is None:
            return None
        if current is not None and (current.path, current.format) == (settings.path,
                                                                      settings.format):
            return current
        try:
            return AccessLog(settings.path, settings.format)
        except OSError as exc:
            raise ConfigError(f"cannot open '{settings.path}': {exc.strerror or exc}",
                              "access_log") from None

    def all_listeners(self):
        """Listeners in service and those still draining after a reload removed them."""
        return [*self.listeners, *self.retired]

    # -- starting --------------------------------------------------------------------------
    def privilegedStartService(self):
        """Open every port now (still privileged); a port that cannot be opened ends proxyd."""
        self._install_signal_handlers()
        self._open_ports()
        super().privilegedStartService()

    def _open_ports(self):
        if self._ports:
            return
        opened = {}
        try:
            # The metrics port first: once a client port accepts, the health check answers.
            if self._serves_metrics(self.config):
                self._metrics_port = self._listen_metrics(self.config.metrics)
            for index, listener in enumerate(self.listeners):
                opened[listener.endpoint] = self.host.listen(
                    listener.endpoint, listener.entrance, f"listen[{index}].endpoint")
        except ListenError as exc:
            for port in [*opened.values(), *filter(None, [self._metrics_port])]:
                port.stopListening()
            sys.__stderr__.write(f"proxyd: {exc}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        self._ports = opened

    def metrics_text(self):
        """The Prometheus text of this process (the metrics endpoint's answer)."""
        from proxyd.net.metrics import render

        return render(self)

    def metrics_snapshot(self):
        """This process's numbers as plain data (a worker sends them to its supervisor)."""
        from proxyd.net.metrics import snapshot

        return snapshot(self)

    def healthy(self):
        """The health check's answer: True until a graceful stop begins."""
        return not self.draining

    def _listen_metrics(self, settings):
        from proxyd.net.metrics import MetricsFactory

        factory = MetricsFactory(self, settings.health_path, self.reactor)
        port = listen(self.reactor, settings.endpoint, factory, "metrics.endpoint")
        self._metrics_factory = factory
        return port

    def startService(self):
        self._install_signal_handlers()
        self._open_ports()
        super().startService()
        tune_gc()
        for listener in self.listeners:
            log.info("proxyd listening on {endpoint} ({protocols}, mode {mode})",
                     endpoint=listener.endpoint, protocols=", ".join(listener.protocols),
                     mode=self.config.mode)
        if self._metrics_port is not None:
            log.info("proxyd metrics on {where}", where=describe(self._metrics_port))
        self.balancer.start(self.stats)  # health checks and probes of the routes
        self._apply_shared(self.config)
        self._every(1.0, self._tick)
        if self.notifier.enabled:
            self._every(STATUS_INTERVAL, lambda: self.notifier.status(self.status()))
        self.reactor.callWhenRunning(self.notifier.ready, self.status())

    def _install_signal_handlers(self):
        """See :mod:`proxyd.net.signals`; only the daemon (with a configuration file) touches
        signals, and not a worker: its supervisor signals it."""
        if self.config_path is not None and self.host.handles_signals:
            signals.install(self.reactor, self._on_signal)

    def _every(self, seconds, fn):
        loop = task.LoopingCall(fn)
        loop.clock = self.reactor
        loop.start(seconds, now=False)
        self._loops.append(loop)

    def _tick(self):
        """Once a second: flush the access log, close what retired backends left idle."""
        access_log = self.hub.access_log
        if access_log is not None:
            access_log.flush()
            if access_log.error is not None:
                log.warn("access log {path}: {error}", path=access_log.path,
                         error=access_log.error)
                access_log.error = None
        for backend in list(self._retired_backends):
            backend.close_idle()
            if not backend.state.total:
                self._retired_backends.remove(backend)

    def status(self):
        """One line for ``systemctl status``: connections, streams, reloads."""
        conns = [c for lst in self.all_listeners() for c in lst.connections]
        streams = sum(len(c.streams) for c in conns)
        reloads = self.stats.reloads
        state = "draining" if self.draining else "serving"
        return (f"{state}: {len(conns)} connections, {streams} streams, "
                f"{len(self.listeners)} listeners; reloads {reloads['ok']} ok, "
                f"{reloads['failed']} failed")

    def _on_signal(self, signum, frame):
        action = self.reload if signum == signal.SIGHUP else self.reopen_logs
        self.reactor.callFromThread(action)

    def reopen_logs(self):
        """SIGUSR1: reopen the access log file (log rotation)."""
        access_log = self.hub.access_log
        if access_log is not None:
            try:
                access_log.reopen()
            except OSError as exc:
                log.warn("proxyd could not reopen the access log {path} ({error}); still "
                         "writing to the file it had open", path=access_log.path, error=exc)
                return
            log.info("proxyd reopened the access log {path}", path=access_log.path)

    # -- reload ----------------------------------------------------------------------------
    def reload(self, config=None):
        """Re-read the configuration file (or take ``config``, already parsed) and apply it
        (see the module docstring)."""
        if self.draining:
            return False
        self.notifier.reloading()
        try:
            plan = self._prepare(config or load_config(self.config_path))
        except (ConfigError, ListenError) as exc:
            self.stats.reloaded(False)
            log.error("reload failed, keeping the running configuration:\n{err}", err=str(exc))
            collect_garbage()
            self.notifier.ready(self.status())
            return False
        self._commit(*plan)
        collect_garbage()  # what the replaced configuration left (see proxyd.runtime)
        self.stats.reloaded(True)
        log.info("proxyd reloaded {path}", path=self.config_path)
        if self.host.handles_signals and self.config.workers != 1:
            from proxyd.net.worker import usable_cpus
            from proxyd.workerpolicy import worker_count

            if worker_count(self.config.workers, usable_cpus()) > 1:
                log.warn("workers: {n} takes a restart; a reload keeps this single process",
                         n=self.config.workers)
        self.notifier.ready(self.status())
        return True

    def _prepare(self, config, listening=True):
        """Everything that can fail, with nothing changed yet; returns the plan to commit.
        ``listening`` False: no port is opened (a retired worker applies the rest)."""
        contexts = self.host.preflight(config)
        access_log = self._open_access_log(config, self.hub.access_log)
        balancer = make_balancer(self.reactor, config, reuse=self.balancer.backends)
        buckets = worker_buckets(config, self.reactor.seconds())
        current = {listener.endpoint: listener for listener in self.listeners}
        new_ports, listeners = {}, []
        metrics_port = None
        try:
            for index, listen_on in enumerate(config.listen):
                listener = current.get(listen_on.endpoint)
                if listener is None:
                    listener = Listener(self.reactor, listen_on, config, balancer, hub=self.hub,
                                        worker_buckets=buckets, index=index,
                                        context=contexts.get(index))
                    if listening:
                        new_ports[listen_on.endpoint] = self.host.listen(
                            listen_on.endpoint, listener.entrance, f"listen[{index}].endpoint")
                listeners.append(listener)
            old_metrics = self.config.metrics.endpoint if self.config.metrics else None
            if (self._serves_metrics(config) and listening
                    and config.metrics.endpoint != old_metrics):
                metrics_port = self._listen_metrics(config.metrics)
        except ListenError:
            for port in new_ports.values():
                port.stopListening()
            if access_log is not self.hub.access_log and access_log is not None:
                access_log.close()
            raise
        return config, contexts, access_log, balancer, buckets, listeners, new_ports, metrics_port

    def _commit(self, config, contexts, access_log, balancer, buckets, listeners, new_ports,
                metrics_port):
        """Apply a prepared plan; nothing here can fail on the configuration."""
        hub = self.hub
        if access_log is not hub.access_log and hub.access_log is not None:
            hub.access_log.close()
        hub.access_log = access_log
        self._apply_shared(config)
        counter = hub.connection_counter
        counter.max_total = config.limits.max_connections
        counter.max_per_key = config.limits.max_connections_per_ip
        kept = set(id(b) for b in balancer.backends)
        self._retired_backends += [b for b in self.balancer.backends if id(b) not in kept]
        self.balancer.stop()
        self.balancer = balancer
        balancer.start(self.stats)
        for index, (listener, listen_on) in enumerate(zip(listeners, config.listen)):
            listener.configure(listen_on, config, balancer, buckets, index, contexts.get(index))
        self._ports.update(new_ports)
        wanted = {listener.endpoint for listener in listeners}
        for listener in self.listeners:
            if listener.endpoint not in wanted:
                self._retire(listener, config.timeouts.graceful_shutdown)
        self.listeners = listeners
        for endpoint in new_ports:
            log.info("proxyd listening on {endpoint} (added by reload)", endpoint=endpoint)
        if not self._serves_metrics(config) or metrics_port is not None:
            if self._metrics_port is not None:
                self._metrics_port.stopListening()
            self._metrics_port = metrics_port
        if self._metrics_factory is not None and config.metrics is not None:
            self._metrics_factory.health_path = config.metrics.health_path
        self.config = config

    def retire(self, config=None):
        """Worker mode, replaced by a reload: stop accepting (the new workers accept on the
        same sockets), apply ``config`` to the connections that stay (their new streams use it,
        as after a reload in place), and ask HTTP/1.1 clients to reconnect (``Connection:
        close`` on their next response, which every client handles). HTTP/2 and SPDY
        connections get no GOAWAY here: they end when their clients close them or go idle;
        the worker stops gracefully when ``timeouts.graceful_shutdown`` has passed."""
        for port in self._ports.values():
            port.stopListening()
        self._ports = {}
        if config is not None:
            try:
                self._commit(*self._prepare(config, listening=False))
            except (ConfigError, ListenError) as exc:
                log.warn("the draining worker keeps its configuration: {err}", err=str(exc))
        for conn in self.open_connections():
            if conn.codec is not None and conn.codec.protocol == "http/1.1":
                conn.shutdown()

    def _apply_shared(self, config):
        """``limits.shared`` of ``config`` (None: stopping): the Redis channel, the shared request
        limiter and the fleet's connection counts, kept when their settings did not change."""
        from proxyd.net.sharedlimit import RedisChannel, SharedConnections

        settings = config.limits.shared if config is not None else None
        old = self.shared
        if old is not None and old.settings != settings:
            self.shared = None
        if settings is not None and self.shared is None:
            self.shared = RedisChannel(self.reactor, settings)
        hub = self.hub
        if config is not None:
            hub.requests_per_ip = _ip_limiter(self.host, config, hub.requests_per_ip,
                                              self.shared)
        counter = hub.connection_counter
        wanted = self.shared is not None and config.limits.max_connections_per_ip
        if counter.fleet is not None and (not wanted or counter.fleet.channel is not self.shared):
            counter.fleet.close()
            counter.fleet = None
        if wanted and counter.fleet is None:
            counter.fleet = SharedConnections(self.shared, counter)
        if old is not None and old is not self.shared:
            old.close()

    def _retire(self, listener, grace):
        """Stop accepting on a removed listener; its connections drain (GOAWAY)."""
        port = self._ports.pop(listener.endpoint, None)
        if port is not None:
            port.stopListening()
        self.retired.append(listener)
        log.info("proxyd stopped listening on {endpoint} (removed by reload)",
                 endpoint=listener.endpoint)

        def gone(_):
            if listener in self.retired:
                self.retired.remove(listener)

        drain(self.reactor, lambda: listener.connections, grace).addCallback(gone)

    # -- stopping --------------------------------------------------------------------------
    def stopService(self):
        """Stop accepting, drain connections gracefully (health 503 meanwhile), then stop."""
        grace = self.config.timeouts.graceful_shutdown
        log.info("proxyd shutting down (grace {t}s)", t=grace)
        self.draining = True
        self.notifier.stopping(self.status())
        stops = [defer.maybeDeferred(port.stopListening) for port in self._ports.values()]
        self._ports = {}
        self.running = 0
        done = defer.DeferredList(stops)
        done.addCallback(lambda _: drain(self.reactor, self.open_connections, grace))
        done.addBoth(self._stopped)
        return done

    def open_connections(self):
        """Client connections of every listener, those of removed listeners included."""
        return [c for listener in self.all_listeners() for c in listener.connections]

    def _stopped(self, result):
        # A graceful stop on SIGTERM/SIGINT is a clean exit: keep twistd from re-raising the signal
        # (it would make the exit status -15 instead of 0).
        forget_exit_signal(self.reactor)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.balancer.stop()
        self._apply_shared(None)
        self.balancer.close_idle()
        for backend in self._retired_backends:
            backend.close_idle()
        if self._metrics_port is not None:
            self._metrics_port.stopListening()
            self._metrics_port = None
        if self.hub.access_log is not None:
            self.hub.access_log.close()
        self.notifier.close()
        log.info("proxyd stopped")
        return None
