"""Pure decisions of the worker supervisor: how many workers, when to restart one, what the
supervisor needs of a configuration, and how the processes frame their messages.

Strategy: :mod:`proxyd.net.workers` (the supervisor) and :mod:`proxyd.net.worker` (a worker
process) do the I/O; everything they decide with numbers lives here, with explicit times, so
unit tests can check it exactly.

* :func:`worker_count`: ``workers: auto`` is one process per usable core.
* :class:`RestartBackoff`: a worker that dies is started again after a delay that doubles with
  each crash in a row (0.5 s, 1 s, 2 s ... up to 30 s) and falls back to the first delay once a
  worker of that slot ran for ``stable_after`` seconds: a worker that crashes at once on every
  start cannot make the supervisor spin, and a rare crash is repaired at once.
* :func:`plan_of`: the few settings the supervisor itself acts on (worker count, the listening
  endpoints it owns, the metrics endpoint it serves, the grace of a stop), as plain data. On a
  reload the new package computes it in a child process (``python -m proxyd.net.worker
  --plan``), so a reload after an upgrade is validated by the new code, not by the running
  supervisor's.
* :class:`AcceptShare`: least-connections balance of the workers' accepts. All workers accept
  on the same sockets, and whichever is idle when a burst of connections arrives would take
  them all (h2load's 10 connections landed 10/0, 9/1 as often as 5/5, and a worker then served
  all of them on one core). A worker holding more than ``slack`` connections more than the least
  loaded of its peers stops accepting until that is no longer so; if connections wait in the
  backlog for ``give_up`` seconds meanwhile (no peer takes them: one is stuck), it accepts again
  and does not pause for ``holdoff`` seconds, so balance never costs availability.
* :func:`encode` and :class:`LineSplitter`: one JSON object per line on the pipes between the
  supervisor and its workers; a line longer than ``max_line`` is a protocol error.
"""

import json

import proxyd

PLAN_VERSION = 1


def worker_count(setting, cpus):
    """The number of worker processes for ``workers:`` (``"auto"`` or an int) on ``cpus`` cores."""
    if setting == "auto":
        return max(1, int(cpus or 1))
    return int(setting)


class RestartBackoff:
    """Delays before restarting a crashed worker, per slot (times are plain seconds)."""

    def __init__(self, first=0.5, maximum=30.0, stable_after=30.0):
        self.first = first
        self.maximum = maximum
        self.stable_after = stable_after
        self._crashes = {}  # slot -> crashes in a row

    def delay(self, slot, started, ended):
        """A worker of ``slot`` that started at ``started`` died at ``ended``: seconds to wait
        before starting the next one."""
        if ended - started >= self.stable_after:
            self._crashes[slot] = 0
        crashes = self._crashes.get(slot, 0)
        self._crashes[slot] = crashes + 1
        return min(self.maximum, self.first * (2 ** crashes))

    def forget(self, slot):
        """The slot is no longer in use (fewer workers after a reload)."""
        self._crashes.pop(slot, None)


PAUSE = "pause"
RESUME = "resume"


class AcceptShare:
    """When a worker should stop and start accepting (see the module's strategy); times are
    plain seconds, counts are open connections."""

    def __init__(self, slack=1, give_up=0.1, holdoff=1.0):
        self.slack = slack
        self.give_up = give_up
        self.holdoff = holdoff
        self.paused_since = None  # when accepting stopped (None: accepting)
        self._waiting_since = None  # while paused: since when connections wait in the backlog
        self._holdoff_until = float("-inf")

    def decide(self, own, peers, now, pending=None):
        """PAUSE, RESUME or None, for this worker holding ``own`` connections and its accepting
        peers ``peers`` (their counts); ``pending``: connections wait in the backlog (True or
        False), or None when the caller did not look (a connection opened or closed): the wait
        for ``give_up`` then goes on as it was."""
        ahead = bool(peers) and own > min(peers) + self.slack
        if self.paused_since is None:
            if ahead and now >= self._holdoff_until:
                self.paused_since = now
                self._waiting_since = None
                return PAUSE
            return None
        if not ahead:
            self.paused_since = None
            return RESUME
        if pending is None:
            return None
        if not pending:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since >= self.give_up:
            self.paused_since = None
            self._holdoff_until = now + self.holdoff
            return RESUME
        return None


def plan_of(config, cpus):
    """What the supervisor needs of ``config`` (a :class:`proxyd.config.Config`), as plain data."""
    metrics = None
    if config.metrics is not None:
        metrics = {"endpoint": config.metrics.endpoint, "health_path": config.metrics.health_path}
    return {
        "plan": PLAN_VERSION,
        "version": proxyd.__version__,
        "workers": worker_count(config.workers, cpus),
        "listen": [listen.endpoint for listen in config.listen],
        "metrics": metrics,
        "graceful_shutdown": config.timeouts.graceful_shutdown,
    }


def encode(message):
    """One message (a JSON-able dict) as a line of bytes."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class ProtocolError(Exception):
    """A peer sent something that is not a line of JSON within the size bound."""


class LineSplitter:
    """Cuts a byte stream into lines; ``feed`` returns the complete ones (without newlines)."""

    def __init__(self, max_line=16 * 1024 * 1024):
        self.max_line = max_line
        self._buffer = b""

    def feed(self, data):
        """Add ``data``; return the lines it completed. Raises ProtocolError past the bound."""
        buffer = self._buffer + data
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > self.max_line:
            self._buffer = b""
            raise ProtocolError(f"a line longer than {self.max_line} bytes")
        return lines

    @property
    def pending(self):
        """Bytes of an incomplete last line."""
        return self._buffer


def decode(line):
    """A message line as a dict; raises ProtocolError for anything else."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("a message must be an object with an 'op'")
    return message
