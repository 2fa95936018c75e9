"""A worker process: ``python -m proxyd.net.worker``, started by the supervisor
(:mod:`proxyd.net.workers`), never by hand.

Strategy: a worker is an ordinary :class:`proxyd.service.ProxyService` whose ``host`` is a
:class:`WorkerHost`: its ports are the listening sockets the supervisor passed (adopted, not
bound), its per-IP limits live in the shared tables (:mod:`proxyd.net.sharedmem`), it serves no
metrics endpoint and handles no SIGHUP (the supervisor does both). It talks to the supervisor
over pipes, one JSON object per line (:mod:`proxyd.workerpolicy`):

* descriptor 0, supervisor to worker: first ``start`` (the configuration text as the supervisor
  read it, the descriptors of the listening sockets and of the shared region), then ``go``
  (start accepting), ``snapshot`` (metrics), ``retire`` (a reload replaced this worker),
  ``reopen`` (SIGUSR1) and ``stop``. End of file (the supervisor died) stops the worker.
* descriptor 3, worker to supervisor: ``prepared`` or ``failed`` (with the configuration
  errors), ``ready``, ``snapshot`` replies, ``retired``, ``stopping`` (it no longer accepts:
  a graceful stop began), every log event (``log``, Twisted's JSON
  form, so the supervisor writes one log for the daemon), and ``final`` (the last snapshot,
  written after the reactor stopped, so the daemon's counters survive the process).
* descriptors 1 and 2: standard output (``access_log: "-"``, relayed line by line by the
  supervisor) and standard error (logged by the supervisor).

Lifecycle: prepared (configuration parsed, TLS loaded: everything that can fail) -> ``go`` ->
ready (accepting) -> stopped by SIGTERM or ``stop`` (a graceful stop: GOAWAY, streams finish
within ``timeouts.graceful_shutdown``), or ``retire`` -> its connections end naturally for at
most ``timeouts.graceful_shutdown``, then the graceful stop. Naturally: no GOAWAY while a
connection has streams in flight (h2load, for one, counts every request a GOAWAY turns away as
failed, and busy clients never pause); HTTP/1.1 clients get ``Connection: close`` on their next
response; a connection idle for ``RETIRED_IDLE`` seconds gets GOAWAY, which a client between
requests handles by connecting again. The exit status is 0 after a stop, 1 when preparing
failed.

``python -m proxyd.net.worker --plan`` reads ``{"config_path", "config"}`` on standard input and
writes the supervisor's plan (:func:`proxyd.workerpolicy.plan_of`) or the errors: the reload of
a supervisor is validated by the package installed now, which may be newer than the supervisor.
"""

import json
import os
import signal
import sys

from twisted.internet import fdesc, task
from twisted.logger import Logger, eventAsJSON, globalLogBeginner

from proxyd.config import load_config
from proxyd.errors import ConfigError
from proxyd.net.acceptbalance import AcceptBalance
from proxyd.net.ports import ListenError, adopt
from proxyd.net.sharedmem import SharedLimits
from proxyd.net.systemd import Notifier
from proxyd.net.twistedshim import install_reactor
from proxyd.sharedlimits import SharedConnectionCounter, SharedRequestLimiter
from proxyd.workerpolicy import LineSplitter, ProtocolError, decode, encode, plan_of

log = Logger(namespace="proxyd.worker")
COMMANDS_FD, MESSAGES_FD = 0, 3
DRAIN_POLL = 0.1
# A retired worker's connection without a stream in flight for this long gets GOAWAY: a client
# between requests opens a new connection (to a new worker) for its next one.
RETIRED_IDLE = 2.0


class WorkerHost:
    """What a worker's service gets from its supervisor (see :class:`proxyd.service.LocalHost`
    for the single-process counterpart)."""

    serves_metrics = False
    handles_signals = False
    request_limiter_type = SharedRequestLimiter

    def __init__(self, reactor, sockets, shared, seat):
        self.reactor = reactor
        self.sockets = dict(sockets)  # endpoint string -> (descriptor, family)
        self.shared = shared
        self.seat = seat
        self.balance = AcceptBalance(reactor, shared.connections, seat)

    def listen(self, spec, factory, path):
        """Serve the socket the supervisor passed for ``spec``."""
        try:
            fd, family = self.sockets.pop(spec)
        except KeyError:
            raise ListenError(f"{path}: the supervisor passed no socket for {spec!r}") from None
        port = adopt(self.reactor, fd, family, factory)
        self.balance.add_port(port)
        return port

    def connection_counter(self, max_total, max_per_ip):
        """Counts in the daemon-wide table."""
        return _BalancedCounter(self.shared.connections, self.seat, max_total, max_per_ip,
                                balance=self.balance)

    def request_limiter(self, rate, burst):
        """Buckets in the daemon-wide table."""
        return self.shared.request_limiter(rate, burst)

    def preflight(self, config):
        """TLS files and endpoint strings; sockets come from the supervisor, not from systemd."""
        from proxyd.net.preflight import preflight

        return preflight(config, self.reactor, check_only=True)


class _BalancedCounter(SharedConnectionCounter):
    """The shared connection counter of this worker, telling the accept balance each change."""

    __slots__ = ("balance",)

    def __init__(self, table, seat, max_total, max_per_key, balance):
        super().__init__(table, seat, max_total, max_per_key)
        self.balance = balance

    def try_open(self, key):
        """Count a new connection (see SharedConnectionCounter); the balance looks again."""
        opened = super().try_open(key)
        if opened:
            self.balance.changed()
        return opened

    def close(self, key):
        """A connection closed; the balance looks again."""
        super().close(key)
        self.balance.changed()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_line(fd):
    """The first line of ``fd`` (blocking) and what came after it."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ProtocolError("the supervisor closed the pipe before the start message")
        data += chunk
    line, _, rest = data.partition(b"\n")
    return decode(line), rest


def _errors(exc):
    return [str(item) for item in getattr(exc, "errors", [exc])]


def send(message):
    """One message to the supervisor: a whole line in one blocking write (the pipe is only
    ever written this way, so lines never interleave)."""
    _write_all(MESSAGES_FD, encode(message))


def forward_log(event):
    """The log observer of a worker: every event goes to the supervisor's log."""
    try:
        send({"op": "log", "event": eventAsJSON(event)})
    except OSError:
        pass  # the supervisor is gone; the worker stops when it sees the end of its commands


class CommandReader:
    """Reads the supervisor's commands from descriptor 0 in the reactor (an
    IReadDescriptor); the end of the pipe stops the worker."""

    def __init__(self, worker):
        self.worker = worker
        self.lines = LineSplitter()
        os.set_blocking(COMMANDS_FD, False)

    def fileno(self):
        """The command pipe."""
        return COMMANDS_FD

    def logPrefix(self):
        """Name in Twisted's log lines."""
        return "proxyd-worker"

    def doRead(self):
        """Read what is there and carry out the complete commands."""
        return fdesc.readFromFD(COMMANDS_FD, self.feed)

    def feed(self, data):
        """Carry out the commands completed by ``data``."""
        try:
            for line in self.lines.feed(data):
                self.worker.command(decode(line))
        except ProtocolError as exc:
            log.error("bad command from the supervisor: {err}", err=str(exc))
            self.worker.stop()

    def connectionLost(self, reason=None):
        """The supervisor closed the pipe (or died): stop gracefully."""
        self.worker.stop()


class Worker:
    """One worker process: the service, the control pipe, the drain after ``retire``."""

    def __init__(self, reactor, start):
        self.reactor = reactor
        self.number = start["worker"]
        self.shared = SharedLimits(*start["shared"])
        sockets = {endpoint: (fd, family) for endpoint, fd, family in start["listen"]}
        self.config = load_config(start["config_path"], start["config"])
        host = self.host = WorkerHost(reactor, sockets, self.shared, start["seat"])
        from proxyd.service import ProxyService

        self.service = ProxyService(self.config, reactor=reactor, host=host,
                                    tls_contexts=host.preflight(self.config),
                                    notifier=Notifier(reactor, environ={}))
        self.started = False
        self.stopping = False
        self.drain_loop = None
        self.drain_deadline = None
        self.idle_since = {}  # retired: connection -> when it was first seen without streams

    def command(self, message):
        """Carry out one command of the supervisor."""
        op = message["op"]
        if op == "go":
            self.go()
        elif op == "snapshot":
            send({"op": "snapshot", "id": message["id"], "data": self.service.metrics_snapshot()})
        elif op == "retire":
            self.retire(message)
        elif op == "peers":
            self.host.balance.set_peers(message.get("seats", ()))
        elif op == "reopen":
            self.service.reopen_logs()
        elif op == "stop":
            self.stop()
        else:
            log.warn("unknown command from the supervisor: {op!r}", op=op)

    def go(self):
        """Start accepting on the passed sockets."""
        if self.started or self.stopping:
            return
        self.started = True
        self.reactor.addSystemEventTrigger("before", "shutdown", self.service.stopService)
        self.service.startService()
        log.info("proxyd worker {n} (pid {pid}, proxyd {version}) serving",
                 n=self.number, pid=os.getpid(), version=_version())
        send({"op": "ready", "pid": os.getpid()})

    def retire(self, message):
        """A reload replaced this worker: let its connections end, then stop."""
        if self.stopping or self.drain_loop is not None:
            return
        self.host.balance.stop()
        config = None
        try:
            config = load_config(message["config_path"], message["config"])
        except ConfigError as exc:
            log.warn("draining with the old configuration: {err}", err="; ".join(_errors(exc)))
        self.service.retire(config)
        grace = (config or self.config).timeouts.graceful_shutdown
        self.drain_deadline = self.reactor.seconds() + grace
        log.info("proxyd worker {n} draining: {conns} connections may finish within {grace}s",
                 n=self.number, conns=len(self.service.open_connections()), grace=grace)
        send({"op": "retired"})
        self.drain_loop = task.LoopingCall(self._drained)
        self.drain_loop.clock = self.reactor
        self.drain_loop.start(DRAIN_POLL, now=True)

    def _drained(self):
        connections = self.service.open_connections()
        now = self.reactor.seconds()
        if not connections or now >= self.drain_deadline:
            self.stop()
            return
        idle_since, self.idle_since = self.idle_since, {}
        for conn in connections:
            if conn.streams:
                continue
            since = self.idle_since[conn] = idle_since.get(conn, now)
            if now - since >= RETIRED_IDLE:
                conn.shutdown()  # GOAWAY; without a stream it closes at once
                self.idle_since[conn] = float("inf")  # (once)

    def stop(self):
        """A graceful stop (the service's stopService runs before the reactor stops)."""
        if self.stopping:
            return
        self.stopping = True
        self.host.balance.stop()
        try:
            send({"op": "stopping"})  # no longer a peer of the workers that accept
        except OSError:
            pass  # the supervisor is gone
        if self.drain_loop is not None and self.drain_loop.running:
            self.drain_loop.stop()
        if self.reactor.running:
            self.reactor.stop()

    def final(self):
        """After the reactor stopped: the last snapshot, so that the daemon's counters keep
        what this worker counted."""
        try:
            send({"op": "final", "data": self.service.metrics_snapshot()})
        except OSError:
            pass  # the supervisor is gone


def usable_cpus():
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0))


def _version():
    import proxyd

    return proxyd.__version__


def plan_main():
    """``--plan``: validate the configuration on standard input with this package."""
    from proxyd.net.preflight import preflight

    request = json.loads(sys.stdin.read())
    try:
        config = load_config(request["config_path"], request["config"])
        preflight(config, check_only=True)
        reply = {"op": "plan", "plan": plan_of(config, usable_cpus())}
    except ConfigError as exc:
        reply = {"op": "failed", "errors": _errors(exc)}
    sys.stdout.write(encode(reply).decode())
    sys.stdout.flush()
    return 0


def main():
    """Run one worker until it is stopped; the exit status."""
    install_reactor()
    from twisted.internet import reactor

    # The supervisor reloads (SIGHUP), forwards SIGUSR1 as a command and stops us with SIGTERM;
    # a terminal's Ctrl-C (SIGINT to the whole process group) is the supervisor's to handle.
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    start, rest = _read_line(COMMANDS_FD)
    globalLogBeginner.beginLoggingTo([forward_log], redirectStandardIO=False)
    try:
        worker = Worker(reactor, start)
    except (ConfigError, ListenError, ValueError, OSError) as exc:
        send({"op": "failed", "errors": _errors(exc)})
        return 1
    reader = CommandReader(worker)
    reactor.addReader(reader)
    send({"op": "prepared", "pid": os.getpid()})
    if rest:
        reactor.callWhenRunning(reader.feed, rest)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(worker.stop))
    reactor.run(installSignalHandlers=False)
    worker.final()
    return 0


if __name__ == "__main__":
    sys.exit(plan_main() if "--plan" in sys.argv[1:] else main())
