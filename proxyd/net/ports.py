"""Opening and closing listening sockets, with errors a person can read.

Strategy: every endpoint proxyd uses (tcp, tcp6, unix, sockets adopted from systemd) listens
synchronously, so :func:`listen` returns the port or raises :class:`ListenError` at once, and
the caller can roll back what it opened (a reload that cannot bind a new port changes
nothing). A ListenError is one line: the key path, the address and the operating system's
reason (``listen[0].endpoint: cannot listen on 127.0.0.1:443: Permission denied``), never a
traceback. :func:`drain` lets connections finish after GOAWAY, for a graceful stop and for the
connections of a listener that a reload removed.

With workers, the supervisor owns the listening sockets without serving them:
:func:`bind_socket` opens one for an endpoint string with the options Twisted would use
(``SO_REUSEADDR``, a backlog of 1024, non-blocking; a unix socket's ``mode=``), or takes the
socket systemd passed; each worker gets the descriptors and serves them with
:func:`adopt` (Twisted's ``adoptStreamPort``). All workers accept on the same sockets, so a
worker that dies or drains leaves nothing behind in a queue of its own.
"""

import contextlib
import os
import socket

from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config_schema import split_endpoint
from proxyd.net.systemd import inherited_socket, server_endpoint

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
        if isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint):
            with contextlib.suppress(OSError):
                os.close(endpoint.fileno)  # the duplicate it did not adopt
        raise ListenError(f"{path}: {_reason(result[0].value)}")
    return result[0]


class OwnedSocket:
    """A listening socket the supervisor holds for the workers; ``inherited`` when systemd
    passed it (then it is not ours to unlink or to bind again)."""

    def __init__(self, spec, sock, inherited=False, unix_path=None):
        self.spec = spec
        self.sock = sock
        self.family = sock.family
        self.inherited = inherited
        self.unix_path = unix_path

    def fileno(self):
        """The descriptor to pass to workers."""
        return self.sock.fileno()

    def close(self):
        """Stop listening (for good: no process but the workers still hold it)."""
        if self.unix_path and not self.inherited:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        self.sock.close()


def bind_socket(spec, path, backlog=1024):
    """Open the listening socket of endpoint ``spec`` without serving it: an OwnedSocket, or
    ListenError with ``path`` (the key path) and the reason."""
    kind = spec.split(":", 1)[0]
    args, kwargs = split_endpoint(spec)
    first = args[0] if args else ""
    backlog = int(kwargs.get("backlog", backlog))
    if kind == "systemd":
        try:
            fd, family = inherited_socket(spec)
        except ValueError as exc:
            raise ListenError(f"{path}: invalid endpoint {spec!r}: {exc}") from None
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fd))
        sock.setblocking(False)
        return OwnedSocket(spec, sock, inherited=True)
    if kind in ("tcp", "tcp6"):
        family = socket.AF_INET if kind == "tcp" else socket.AF_INET6
        interface = kwargs.get("interface", "" if kind == "tcp" else "::")
        address = (interface, int(kwargs.get("port", first)))
        where = f"{interface or '*'}:{address[1]}"
    elif kind == "unix":
        family = socket.AF_UNIX
        address = kwargs.get("address", first)
        where = address
    else:
        raise ListenError(f"{path}: {kind}: endpoints cannot be shared by workers")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if family == socket.AF_UNIX:
            os.chmod(address, int(kwargs.get("mode", "666"), 8))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{path}: cannot listen on {where}: {exc.strerror or exc}") from None
    return OwnedSocket(spec, sock, unix_path=address if family == socket.AF_UNIX else None)


def adopt(reactor, fd, family, factory):
    """Serve the listening socket ``fd`` (passed by the supervisor) with ``factory``; the
    descriptor itself is closed (Twisted keeps a duplicate), so that stopping the port really
    lets go of the socket in this process."""
    try:
        return reactor.adoptStreamPort(fd, family, factory)
    finally:
        os.close(fd)


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
