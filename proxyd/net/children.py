"""The supervisor's side of its child processes: a worker (:class:`WorkerProcess`) and the
one-shot validation of a reloaded configuration (:func:`run_plan`).

Strategy: each child is a Twisted process protocol over pipes (see :mod:`proxyd.net.worker`
for the worker's side and the messages). A worker moves through states in one order
(``starting`` -> ``prepared`` -> ``ready`` -> ``retiring`` -> ``ended``, possibly skipping
some); :meth:`reached`
gives a Deferred for a state, which fails with :class:`WorkerFailed` if the process ends (or
reports configuration errors) first, so the supervisor can wait for a whole generation with a
DeferredList. Log events of a worker are published in the supervisor's log with the worker's
number before their text (``[proxyd.frontend#info] worker 3: ...``); its standard output (``access_log: "-"``) is copied
to the supervisor's standard output in whole lines, and its standard error is logged.
"""

import contextlib
import json
import os

from twisted.internet import defer, error, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from proxyd.workerpolicy import LineSplitter, ProtocolError, decode, encode

log = Logger(namespace="proxyd")


class WorkerFailed(Exception):
    """A worker ended, or could not be prepared, before it reached the awaited state."""

    def __init__(self, worker, detail):
        super().__init__(f"worker {worker.number}: {detail}")
        self.worker = worker
        self.detail = detail


def child_environment():
    """The environment of a child: ours without what belongs to the supervisor alone (the
    systemd notification and watchdog sockets, the sockets systemd passed)."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                "LISTEN_FDNAMES"):
        env.pop(key, None)
    return env


class WorkerProcess(protocol.ProcessProtocol):
    """One worker process as the supervisor sees it."""

    def __init__(self, supervisor, number, slot, seat, start):
        self.supervisor = supervisor
        self.number = number
        self.slot = slot
        self.seat = seat
        self.start_message = start
        self.state = "starting"
        self.history = {"starting"}
        self.pid = None
        self.started_at = supervisor.reactor.seconds()
        self.auto_go = False       # a restarted worker starts accepting once prepared
        self.stopping = False      # it said it stopped accepting (a graceful stop began)
        self.errors = []           # configuration errors it reported
        self.exit = None           # "exit status N" or "signal N" once ended
        self.final = None          # its last snapshot
        self._waiters = []         # (state, Deferred)
        self._snapshots = {}       # request id -> Deferred
        self._next_id = 0
        self._messages = LineSplitter()
        self._stdout = LineSplitter(max_line=1 << 20)
        self._stderr = LineSplitter(max_line=1 << 20)

    # -- states ----------------------------------------------------------------------------
    def reached(self, state):
        """A Deferred fired when the worker is (or was) in ``state``; WorkerFailed if it ends
        (or fails) before."""
        if state in self.history:
            return defer.succeed(self)
        if self.state == "ended":
            return defer.fail(WorkerFailed(self, self._why()))
        waiter = defer.Deferred()
        self._waiters.append((state, waiter))
        return waiter

    def _advance(self, state):
        if state in self.history:
            return
        self.state = state
        self.history.add(state)
        waiting, self._waiters = self._waiters, []
        for wanted, waiter in waiting:
            if wanted in self.history:
                waiter.callback(self)
            elif state == "ended":
                waiter.errback(WorkerFailed(self, self._why()))
            else:
                self._waiters.append((wanted, waiter))

    def _why(self):
        if self.errors:
            return "\n".join(self.errors)
        return f"ended ({self.exit or 'running'}) while {self.state}"

    @property
    def alive(self):
        """The process has not ended."""
        return self.state != "ended"

    # -- commands --------------------------------------------------------------------------
    def send(self, op, **fields):
        """One command to the worker (ignored once its pipe is gone)."""
        if self.alive and self.transport is not None:
            with contextlib.suppress(OSError, KeyError):
                self.transport.writeToChild(0, encode({"op": op, **fields}))

    def signal(self, name):
        """Send a signal (TERM, KILL) if the process still runs."""
        if self.alive and self.transport is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess(name)

    def snapshot(self, timeout):
        """A Deferred of the worker's metrics snapshot, or of None (timeout, exit)."""
        if not self.alive or self.state == "starting":
            return defer.succeed(None)
        self._next_id += 1
        request = self._next_id
        answer = defer.Deferred()
        self._snapshots[request] = answer
        self.send("snapshot", id=request)
        answer.addTimeout(timeout, self.supervisor.reactor, onTimeoutCancel=lambda *_: None)
        answer.addBoth(self._snapshot_done, request)
        return answer

    def _snapshot_done(self, result, request):
        self._snapshots.pop(request, None)
        return result if isinstance(result, dict) else None

    # -- process protocol --------------------------------------------------------------------
    def connectionMade(self):
        self.pid = self.transport.pid
        self.transport.writeToChild(0, encode(self.start_message))

    def childDataReceived(self, childFD, data):
        try:
            if childFD == 3:
                for line in self._messages.feed(data):
                    self._message(decode(line))
            elif childFD == 1:
                lines = self._stdout.feed(data)
                if lines:
                    self.supervisor.relay_stdout(b"\n".join(lines) + b"\n")
            elif childFD == 2:
                for line in self._stderr.feed(data):
                    log.error("worker {n}: {line}", n=self.number,
                              line=line.decode("utf-8", "replace"))
        except ProtocolError as exc:
            log.error("worker {n} sent garbage ({err}); stopping it", n=self.number,
                      err=str(exc))
            self.signal("KILL")

    def _message(self, message):
        op = message["op"]
        if op == "log":
            self._publish(message.get("event", "{}"))
        elif op == "prepared":
            self._advance("prepared")
            if self.auto_go:
                self.send("go")
        elif op == "ready":
            self._advance("ready")
            self.supervisor.worker_ready(self)
        elif op == "failed":
            self.errors = [str(e) for e in message.get("errors", [])]
        elif op == "snapshot":
            answer = self._snapshots.get(message.get("id"))
            if answer is not None and not answer.called:
                answer.callback(message.get("data"))
        elif op == "retired":
            self._advance("retiring")
        elif op == "stopping":
            self.stopping = True
            self.supervisor.worker_stopping(self)
        elif op == "final":
            self.final = message.get("data")

    def _publish(self, text):
        try:
            event = eventFromJSON(text)
        except (ValueError, TypeError):
            return
        # "worker 3: " before the text, in every observer (file, journal); the namespace stays,
        # so filters on it (and on the level) work as with one process.
        event["log_format"] = f"worker {self.number}: " + (event.get("log_format") or "")
        event.pop("log_logger", None)
        globalLogPublisher(event)

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.exit = f"signal {sig}" if sig else f"exit status {code}"
        self.exit_code = code
        if self._stderr.pending:
            log.error("worker {n}: {line}", n=self.number,
                      line=self._stderr.pending.decode("utf-8", "replace"))
        rest = self._stdout.pending
        if rest:
            self.supervisor.relay_stdout(rest + b"\n")
        self._advance("ended")
        self.supervisor.worker_ended(self)  # first: it keeps the final snapshot's counters
        for answer in list(self._snapshots.values()):
            if not answer.called:
                answer.callback(None)


class _PlanProtocol(protocol.ProcessProtocol):
    def __init__(self, request):
        self.request = request
        self.out = []
        self.err = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.writeToChild(0, json.dumps(self.request).encode())
        self.transport.closeChildFD(0)

    def childDataReceived(self, childFD, data):
        (self.out if childFD == 1 else self.err).append(data)

    def processEnded(self, reason):
        self.done.callback((b"".join(self.out), b"".join(self.err)))


class PlanFailed(Exception):
    """The new configuration (or the new package) was refused; ``errors`` are lines."""

    def __init__(self, errors):
        super().__init__("\n".join(errors))
        self.errors = errors


def run_plan(reactor, executable, config_path, text, timeout=60.0):
    """Validate ``text`` with the installed package in a child process; a Deferred of the
    plan (a dict, see :func:`proxyd.workerpolicy.plan_of`), failing with PlanFailed."""
    child = _PlanProtocol({"config_path": config_path, "config": text})
    reactor.spawnProcess(child, executable, [executable, "-m", "proxyd.net.worker", "--plan"],
                         env=child_environment(), childFDs={0: "w", 1: "r", 2: "r"})
    child.done.addTimeout(timeout, reactor)

    def parse(result):
        out, err = result
        try:
            reply = decode(out.strip().splitlines()[-1])
        except (ProtocolError, IndexError):
            detail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise PlanFailed(["the configuration check of the installed package failed:",
                              *detail]) from None
        if reply["op"] != "plan":
            raise PlanFailed([str(e) for e in reply.get("errors", [])])
        return reply["plan"]

    child.done.addCallback(parse)
    return child.done
