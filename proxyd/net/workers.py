"""The supervisor of worker processes (``workers:`` above 1): the service twistd runs then.

Strategy: the supervisor serves no client itself. It owns what must outlive any one worker:

* The listening sockets. It binds them before twistd drops privileges (or takes those systemd
  passed) and hands the same sockets to every worker, which accept on them side by side
  (:mod:`proxyd.net.ports`). Nothing is bound twice, so socket activation works unchanged, a
  worker that dies leaves no queue of its own behind, and a reload never closes a socket that
  stays in the configuration: connections waiting in its backlog are accepted by the next
  worker that asks. (Measured against one ``SO_REUSEPORT`` socket per worker: see README,
  "Workers".)
* The per-IP limit tables in shared memory (:mod:`proxyd.net.sharedmem`): every worker counts
  there, so limits hold for the daemon; when a worker ends, the supervisor removes what it held.
* The metrics endpoint: a scrape asks every worker for its snapshot and adds them up
  (:func:`proxyd.stats.merge`), with the counters of workers that already exited; the health
  check answers 200 while a worker serves and the supervisor is not stopping.
* One log: workers send their log events, and their ``access_log: "-"`` lines, through it.

Start: N workers (:func:`proxyd.workerpolicy.worker_count`) are prepared (configuration and
TLS loaded), then all start accepting; READY=1 goes to systemd when all of them accept. A worker
that dies is started again after :class:`proxyd.workerpolicy.RestartBackoff`'s delay; if one of
the first workers cannot even be prepared, the supervisor exits 1 with its errors.

Reload (SIGHUP): the file is read once and validated by the installed package in a child
process (``python -m proxyd.net.worker --plan``), new sockets are bound, and a new generation of
workers (new code, if the package was upgraded) is prepared; only when all are prepared do they
start accepting, and then the old workers retire (:meth:`proxyd.service.ProxyService.retire`):
they stop accepting, apply the new configuration to the connections they keep, and let those
end naturally (no GOAWAY: h2load and other clients count requests refused by a GOAWAY as failed)
for at most ``timeouts.graceful_shutdown``, then stop gracefully. Anything that fails before the
new workers accept (a bad file, a port, a worker that does not come up) leaves the running
workers untouched: "reload failed", ``proxyd_reloads_total{result="failed"}``. SIGHUPs that
come during a reload, or before the first workers accept, make one reload once that is done.

Signals: SIGTERM/SIGINT stop every worker gracefully (they GOAWAY and drain for
``timeouts.graceful_shutdown``; SIGKILL a few seconds after that) and the supervisor exits 0;
SIGUSR1 makes every worker reopen the access log.
"""

import os
import signal
import sys

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from proxyd import stats as stats_module
from proxyd.net.children import PlanFailed, WorkerFailed, WorkerProcess, child_environment, \
    run_plan
from proxyd.net import signals
from proxyd.net.ports import ListenError, bind_socket, describe, listen
from proxyd.net.sharedmem import SharedLimits
from proxyd.net.systemd import Notifier
from proxyd.net.twistedshim import forget_exit_signal
from proxyd.sharedlimits import MAX_SEATS
from proxyd.workerpolicy import RestartBackoff

log = Logger(namespace="proxyd")
LAUNCH_TIMEOUT = 60.0     # a generation must be prepared and accepting within this
SNAPSHOT_TIMEOUT = 5.0
KILL_AFTER = 5.0          # past graceful_shutdown, what still runs is killed
STATUS_INTERVAL = 5.0
FIRST_SOCKET_FD = 5       # in a worker: 0-3 pipes, 4 the shared limits, 5... the listeners
SHARED_FD = 4


class Generation:
    """Workers started from one configuration text."""

    def __init__(self, number, plan, text):
        self.number = number
        self.plan = plan
        self.text = text
        self.workers = {}       # slot -> WorkerProcess (the latest of that slot)
        self.committed = False  # serving (its start or the reload that made it succeeded)

    def alive(self):
        """Its workers whose process runs."""
        return [w for w in self.workers.values() if w.alive]


class Supervisor(Service):
    """Starts, restarts, reloads and stops the workers of one daemon."""

    def __init__(self, config, plan, text, config_path, reactor=None, notifier=None,
                 executable=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.config_path = config_path
        self.executable = executable or sys.executable
        self.notifier = notifier or Notifier(reactor)
        self.stats = stats_module.Stats()
        self.current = Generation(1, plan, text)
        self.retiring = []
        self.sockets = {}           # endpoint -> OwnedSocket
        self.shared = None
        self.draining = False
        self.restarts = 0
        self.backoff = RestartBackoff()
        self.exited = stats_module.counters_only({})
        self._numbers = 0
        self._free_seats = list(range(MAX_SEATS))
        self._restart_calls = {}    # slot -> DelayedCall
        self._metrics_port = None
        self._metrics_health = None
        self._reloading = None      # the Deferred of a reload in progress
        self._launching = None      # the Generation that reload is starting
        self._reload_again = False
        self._stopped = None
        self._kill_call = None
        self._status_loop = None
        self._last_status = "starting"
        self._stdout = None

    # -- starting --------------------------------------------------------------------------
    def privilegedStartService(self):
        """Bind every socket (still privileged); a port that cannot be bound ends proxyd."""
        signals.install(self.reactor, self._on_signal)
        self._open_sockets(self.current.plan, fatal=True)
        Service.privilegedStartService(self)

    def _open_sockets(self, plan, fatal=False):
        """Bind the sockets of ``plan`` that are not open yet; returns the new ones."""
        opened = {}
        try:
            for index, endpoint in enumerate(plan["listen"]):
                if endpoint not in self.sockets:
                    opened[endpoint] = bind_socket(endpoint, f"listen[{index}].endpoint")
        except ListenError as exc:
            for sock in opened.values():
                sock.close()
            if not fatal:
                raise PlanFailed([str(exc)]) from None
            sys.__stderr__.write(f"proxyd: {exc}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        self.sockets.update(opened)
        return opened

    def startService(self):
        signals.install(self.reactor, self._on_signal)
        Service.startService(self)
        if not self.sockets:
            self._open_sockets(self.current.plan, fatal=True)
        self._stdout = os.dup(1)
        self.shared = SharedLimits.create()
        plan = self.current.plan
        if plan["metrics"] is not None:
            self._metrics_port = self._listen_metrics(plan["metrics"], fatal=True)
        for index, endpoint in enumerate(plan["listen"]):
            log.info("proxyd listening on {endpoint} ({n} workers)", endpoint=endpoint,
                     n=plan["workers"])
        self._status_loop = task.LoopingCall(self._refresh_status)
        self._status_loop.clock = self.reactor
        self.reactor.callWhenRunning(self._first_launch)

    def _listen_metrics(self, settings, fatal=False):
        from proxyd.net.metrics import MetricsFactory

        factory = MetricsFactory(self, settings["health_path"], self.reactor)
        try:
            port = listen(self.reactor, settings["endpoint"], factory, "metrics.endpoint")
        except ListenError as exc:
            if not fatal:
                raise PlanFailed([str(exc)]) from None
            sys.__stderr__.write(f"proxyd: {exc}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        log.info("proxyd metrics on {where}", where=describe(port))
        self._metrics_health = factory
        return port

    def _first_launch(self):
        done = self._launch(self.current)

        def started(_):
            self.current.committed = True
            log.info("proxyd workers ready: {n} processes", n=len(self.current.workers))
            self.notifier.ready(self.status())
            if self.notifier.enabled and not self.draining:
                self._status_loop.start(STATUS_INTERVAL, now=False)
            if self._reload_again and not self.draining:
                self._reload_again = False  # a SIGHUP came while they started
                self.reload()

        def failed(failure):
            if self.draining:
                return  # stopped (a signal) before the workers were up: not an error
            log.error("proxyd cannot start its workers: {err}", err=str(failure.value))
            sys.__stderr__.write(f"proxyd: cannot start the workers: {failure.value}\n")
            sys.__stderr__.flush()
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()

        done.addCallbacks(started, failed)

    # -- workers ---------------------------------------------------------------------------
    def _spawn(self, generation, slot):
        """Start the worker of ``slot`` in ``generation``."""
        if not self._free_seats:
            raise PlanFailed([f"{MAX_SEATS} worker processes exist (workers still draining "
                              "from earlier reloads); try again when they finished"])
        self._numbers += 1
        seat = self._free_seats.pop(0)
        listen = []
        child_fds = {0: "w", 1: "r", 2: "r", 3: "r", SHARED_FD: self.shared.fd}
        for index, endpoint in enumerate(generation.plan["listen"]):
            sock = self.sockets[endpoint]
            child_fds[FIRST_SOCKET_FD + index] = sock.fileno()
            listen.append([endpoint, FIRST_SOCKET_FD + index, int(sock.family)])
        start = {"op": "start", "worker": self._numbers, "seat": seat,
                 "config_path": self.config_path, "config": generation.text,
                 "listen": listen, "shared": [SHARED_FD, *self.shared.slots]}
        worker = WorkerProcess(self, self._numbers, slot, seat, start)
        worker.generation = generation
        worker.auto_go = generation.committed
        generation.workers[slot] = worker
        self.reactor.spawnProcess(worker, self.executable,
                                  [self.executable, "-m", "proxyd.net.worker"],
                                  env=child_environment(), childFDs=child_fds)
        return worker

    def _launch(self, generation):
        """Start every worker of ``generation``: all prepared, then all accept. A Deferred."""
        try:
            workers = [self._spawn(generation, slot)
                       for slot in range(generation.plan["workers"])]
        except PlanFailed:
            for worker in generation.alive():
                worker.signal("TERM")
            return defer.fail()

        def every(state):
            waits = [w.reached(state) for w in workers]
            return defer.gatherResults(waits, consumeErrors=True).addErrback(
                lambda failure: failure.value.subFailure)

        done = every("prepared")

        def go(_):
            for worker in workers:
                worker.send("go")
            return every("ready")

        done.addCallback(go)
        done.addTimeout(LAUNCH_TIMEOUT, self.reactor)
        return done

    def worker_ready(self, worker):
        """A worker accepts; a restarted one is logged (a launch logs its generation)."""
        self._announce_peers()
        if worker.auto_go:
            log.info("proxyd worker {n} (pid {pid}) replaces the one that ended",
                     n=worker.number, pid=worker.pid)

    def worker_stopping(self, worker):
        """A worker stopped accepting (a graceful stop, maybe of its own: SIGTERM to it alone);
        it drains for up to ``timeouts.graceful_shutdown``: the others no longer count it as
        a peer meanwhile."""
        self._announce_peers()

    def worker_ended(self, worker):
        """A worker's process ended: free its seat, keep its counters, restart it if needed."""
        removed = self.shared.connections.clear_seat(worker.seat) if self.shared else 0
        self._free_seats.append(worker.seat)
        if worker.final is not None:
            self.exited = stats_module.counters_only(stats_module.merge(
                [self.exited, stats_module.counters_only(worker.final)]))
        if worker in self.retiring:
            self.retiring.remove(worker)
            log.info("proxyd worker {n} (pid {pid}) finished draining", n=worker.number,
                     pid=worker.pid)
        generation = worker.generation
        crashed = (generation is self.current and generation.committed and not self.draining
                   and generation.workers.get(worker.slot) is worker)
        if crashed:
            self.restarts += 1
            delay = self.backoff.delay(worker.slot, worker.started_at, self.reactor.seconds())
            log.error("proxyd worker {n} (pid {pid}) ended ({why}) holding {conns} counted "
                      "connections; a new one starts in {delay:.1f}s", n=worker.number,
                      pid=worker.pid, why=worker.exit, conns=removed, delay=delay)
            self._restart_calls[worker.slot] = self.reactor.callLater(
                delay, self._restart, generation, worker.slot)
        if self._stopped is not None and not self._live():
            self._all_stopped()
        self._announce_peers()

    def _announce_peers(self):
        """Tell every accepting worker of the current generation which seats accept beside it,
        for the balance of their accepts (:mod:`proxyd.net.acceptbalance`)."""
        if self.draining:
            return  # every worker stops: none balances any more
        ready = [w for w in self.current.alive() if w.state == "ready" and not w.stopping]
        seats = [w.seat for w in ready]
        for worker in ready:
            worker.send("peers", seats=seats)

    def _restart(self, generation, slot):
        self._restart_calls.pop(slot, None)
        if generation is self.current and not self.draining:
            try:
                self._spawn(generation, slot)
            except PlanFailed as exc:
                log.error("{err}", err=str(exc))
                self._restart_calls[slot] = self.reactor.callLater(
                    self.backoff.maximum, self._restart, generation, slot)

    def _live(self):
        """Every worker process that runs: current, draining, and one being launched."""
        workers = [*self.current.alive(), *self.retiring]
        if self._launching is not None:
            workers += self._launching.alive()
        return [w for w in workers if w.alive]

    def relay_stdout(self, data):
        """Whole lines a worker wrote to its standard output (``access_log: "-"``)."""
        if self._stdout is None:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._stdout, view):]

    # -- signals and reload ----------------------------------------------------------------
    def _on_signal(self, signum, frame):
        action = self.reload if signum == signal.SIGHUP else self.reopen_logs
        self.reactor.callFromThread(action)

    def reopen_logs(self):
        """SIGUSR1: every worker reopens the access log."""
        for worker in self._live():
            worker.send("reopen")

    def reload(self):
        """SIGHUP: a new generation of workers on the file as it is now (module docstring)."""
        if self.draining:
            return None
        if self._reloading is not None or not self.current.committed:
            # A reload in progress, or the first workers still starting: once that is done
            # (systemd hears READY=1 first, and no starting worker is told to retire).
            self._reload_again = True
            return self._reloading
        self._reloading = self._reload()
        self._reloading.addBoth(self._reloaded)
        return self._reloading

    def _reloaded(self, result):
        self._reloading = None
        if self._reload_again and not self.draining:
            self._reload_again = False
            self.reload()
        return result

    @defer.inlineCallbacks
    def _reload(self):
        self.notifier.reloading()
        opened, metrics_port, generation = {}, None, None
        try:
            try:
                with open(self.config_path, encoding="utf-8") as stream:
                    text = stream.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise PlanFailed([f"cannot read config file '{self.config_path}': {exc}"]) \
                    from None
            plan = yield run_plan(self.reactor, self.executable, self.config_path, text)
            opened = self._open_sockets(plan)
            old = self.current.plan["metrics"]
            if plan["metrics"] is not None and (old is None or
                                                old["endpoint"] != plan["metrics"]["endpoint"]):
                metrics_port = self._listen_metrics(plan["metrics"])
            generation = self._launching = Generation(self.current.number + 1, plan, text)
            yield self._launch(generation)
        except (PlanFailed, WorkerFailed, defer.TimeoutError, defer.CancelledError) as exc:
            self._abandon(generation, opened, metrics_port)
            if self.draining:
                return  # a stop came first: its workers are stopping anyway
            self.stats.reloaded(False)
            log.error("reload failed, keeping the running configuration:\n{err}",
                      err=str(exc))
            self.notifier.ready(self.status())
            return
        if self.draining:
            self._abandon(generation, opened, metrics_port)
            return
        yield self._commit(generation, metrics_port)
        self.stats.reloaded(True)
        log.info("proxyd reloaded {path} ({n} new workers)", path=self.config_path,
                 n=len(generation.workers))
        self.notifier.ready(self.status())

    def _abandon(self, generation, opened, metrics_port):
        """Undo a reload that did not commit: stop its workers, close what it opened."""
        for worker in (generation.alive() if generation else ()):
            worker.signal("TERM")
        for endpoint, sock in opened.items():
            if self.sockets.get(endpoint) is sock:
                del self.sockets[endpoint]
            sock.close()
        if metrics_port is not None:
            metrics_port.stopListening()
        if generation is not None and generation is self._launching:
            self.retiring += generation.alive()  # counted as live until they are gone
        self._launching = None

    def _commit(self, generation, metrics_port):
        """The new workers accept: the old ones retire; sockets and metrics follow the plan."""
        old, self.current = self.current, generation
        self._launching = None
        generation.committed = True
        for slot, call in list(self._restart_calls.items()):
            call.cancel()
            del self._restart_calls[slot]
        for slot in range(generation.plan["workers"], old.plan["workers"]):
            self.backoff.forget(slot)
        waits = []
        self._announce_peers()
        for worker in old.alive():
            self.retiring.append(worker)
            worker.send("retire", config_path=self.config_path, config=generation.text)
            waits.append(worker.reached("retiring").addErrback(lambda _: None))
        wanted = set(generation.plan["listen"])
        for endpoint in [e for e in self.sockets if e not in wanted]:
            self.sockets.pop(endpoint).close()
            log.info("proxyd stopped listening on {endpoint} (removed by reload)",
                     endpoint=endpoint)
        if generation.plan["metrics"] is None or metrics_port is not None:
            if self._metrics_port is not None:
                self._metrics_port.stopListening()
            self._metrics_port = metrics_port
        if self._metrics_health is not None and generation.plan["metrics"] is not None:
            self._metrics_health.health_path = generation.plan["metrics"]["health_path"]
        return defer.DeferredList(waits).addTimeout(SNAPSHOT_TIMEOUT, self.reactor).addErrback(
            lambda _: None)

    # -- metrics and status ----------------------------------------------------------------
    def metrics_snapshot(self):
        """A Deferred of the daemon's numbers: every live worker's, plus those that exited."""
        workers = self._live()
        asked = [w.snapshot(SNAPSHOT_TIMEOUT) for w in workers]
        done = defer.gatherResults(asked)
        done.addCallback(self._merged, workers)
        return done

    def _merged(self, snapshots, workers):
        # A worker that ended meanwhile is counted by its final snapshot (in self.exited).
        live = [snap for worker, snap in zip(workers, snapshots)
                if snap and (worker.alive or worker.final is None)]
        data = stats_module.merge([self.exited, *live])
        data.update(reloads=dict(self.stats.reloads), last_reload_ok=self.stats.last_reload_ok,
                    draining=self.draining)
        data["workers"] = {
            "serving": sum(1 for w in workers if w in self.current.workers.values()
                           and w.state == "ready"),
            "starting": sum(1 for w in workers if w.state in ("starting", "prepared")),
            "draining": sum(1 for w in workers if w in self.retiring),
            "restarts": self.restarts,
        }
        return data

    def metrics_text(self):
        """The Prometheus text of the whole daemon (a Deferred)."""
        from proxyd.net.metrics import render_snapshot, worker_families

        return self.metrics_snapshot().addCallback(
            lambda data: render_snapshot(
                data, lambda: worker_families(data["workers"], data["process"])))

    def healthy(self):
        """200 while a worker of the current generation accepts and no stop began."""
        return not self.draining and any(w.state == "ready"
                                          for w in self.current.workers.values())

    def _refresh_status(self):
        def done(data):
            open_conns = sum(c for fields in data["listeners"].values()
                             for c, _ in fields.get("open", {}).values())
            streams = sum(s for fields in data["listeners"].values()
                          for _, s in fields.get("open", {}).values())
            self._last_status = f"{open_conns} connections, {streams} streams"
            self.notifier.status(self.status())

        return self.metrics_snapshot().addCallback(done)

    def status(self):
        """One line for ``systemctl status``."""
        state = "draining" if self.draining else "serving"
        reloads = self.stats.reloads
        return (f"{state}: {len(self.current.alive())} workers ({len(self.retiring)} draining),"
                f" {self._last_status}; reloads {reloads['ok']} ok, {reloads['failed']} failed")

    # -- stopping --------------------------------------------------------------------------
    def stopService(self):
        """Stop every worker gracefully, then close the sockets; exit status 0."""
        Service.stopService(self)
        self.draining = True
        grace = self.current.plan["graceful_shutdown"]
        log.info("proxyd shutting down {n} workers (grace {t}s)", n=len(self._live()), t=grace)
        self.notifier.stopping(self.status())
        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        for call in self._restart_calls.values():
            call.cancel()
        self._restart_calls = {}
        self._stopped = defer.Deferred()
        for worker in self._live():
            worker.signal("TERM")
        # The workers stop accepting now; with our copies closed too, the sockets close and new
        # connections are refused, as with one process (not queued for nobody).
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}
        self._kill_call = self.reactor.callLater(grace + KILL_AFTER, self._kill)
        if not self._live():
            self._all_stopped()
        return self._stopped

    def _kill(self):
        self._kill_call = None
        for worker in self._live():
            log.warn("proxyd worker {n} (pid {pid}) did not stop in time: killed",
                     n=worker.number, pid=worker.pid)
            worker.signal("KILL")

    def _all_stopped(self):
        if self._stopped is None or self._stopped.called:
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        if self._metrics_port is not None:
            self._metrics_port.stopListening()
            self._metrics_port = None
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self._stdout is not None:
            os.close(self._stdout)
            self._stdout = None
        forget_exit_signal(self.reactor)
        self.notifier.close()
        log.info("proxyd stopped")
        self._stopped.callback(None)
