"""Opening and closing listening sockets, with errors a person can read.

Strategy: every endpoint proxyd uses (tcp, tcp6, unix, sockets adopted from systemd) listens
synchronously, so :func:`listen` returns the port or raises :class:`ListenError` at once, and
the caller can roll back what it opened (a reload that cannot bind a new port changes
nothing). A ListenError is one line: the key path, the address and the operating system's
reason (``listen[0].endpoint: cannot listen on 127.0.0.1:443: Permission denied``), never a
traceback. :func:`drain` lets connections finish after GOAWAY, for a graceful stop and for the
connections of a listener that a reload removed.
"""

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.net.systemd import server_endpoint

log = Logger(namespace="proxyd")


class ListenError(Exception):
    """A listening socket could not be opened; ``str()`` is the whole one-line message."""


def _reason(exc):
    if isinstance(exc, CannotListenError):
        cause = exc.socketError
        where = f"{exc.interface or '*'}:{exc.port}" if exc.port is not None else exc.interface
        text = getattr(cause, "strerror", None) or str(cause)
        return f"cannot listen on {where}: {text}"
    if isinstance(exc, OSError):
        return f"cannot listen: {exc.strerror or exc}"
    return f"cannot listen: {exc}"


def listen(reactor, spec, factory, path):
    """Listen on endpoint string ``spec`` with ``factory``; the port, or ListenError."""
    try:
        endpoint = server_endpoint(reactor, spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise ListenError(f"{path}: invalid endpoint {spec!r}: {exc}") from None
    result = []
    endpoint.listen(factory).addBoth(result.append)
    if not result:
        raise ListenError(f"{path}: {spec!r} did not listen at once")
    if isinstance(result[0], Failure):
        raise ListenError(f"{path}: {_reason(result[0].value)}")
    return result[0]


def describe(port):
    """``127.0.0.1:8443`` (or the unix path) of a listening port, for log lines."""
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))


def drain(reactor, connections, grace):
    """GOAWAY every connection of ``connections()`` (a callable), let their streams finish for
    ``grace`` seconds, then abort what is left; returns a Deferred fired when none is left."""
    for conn in list(connections()):
        conn.shutdown()
    if not connections():
        return defer.succeed(None)
    finished = defer.Deferred()
    deadline = reactor.seconds() + grace

    def poll():
        left = list(connections())
        if not left:
            finished.callback(None)
        elif reactor.seconds() >= deadline:
            log.warn("graceful shutdown: aborting {n} connections", n=len(left))
            for conn in left:
                conn.transport.abortConnection()
            finished.callback(None)
        else:
            reactor.callLater(0.05, poll)

    poll()
    return finished
