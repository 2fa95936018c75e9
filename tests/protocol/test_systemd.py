"""Tests of proxyd.net.systemd and proxyd.net.ports without systemd: the sd_notify datagrams,
the LISTEN_* parsing, and the one-line listen errors (a port below 1024 as non-root included).

Strategy: a unix datagram socket of the test stands in for systemd's notify socket; the
environment is a dict; listen errors are built as Twisted raises them.
"""

import errno
import os
import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from proxyd.net import ports, systemd


@pytest.fixture
def notify_socket(tmp_path):
    """(path, socket) of a bound unix datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_notifier_sends_ready_reloading_stopping(notify_socket):
    """Each notification is one datagram of KEY=value lines."""
    path, sock = notify_socket
    notifier = systemd.Notifier(MemoryReactorClock(), {"NOTIFY_SOCKET": path})
    notifier.ready("serving: 0 connections")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving: 0 connections\n"
    notifier.reloading()
    lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    notifier.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining\n"


def test_notifier_is_silent_without_notify_socket():
    """Outside systemd nothing is sent and nothing fails."""
    notifier = systemd.Notifier(MemoryReactorClock(), {})
    assert not notifier.enabled and notifier.send("READY=1") is False


def test_watchdog_pings_at_half_the_interval(notify_socket):
    """WATCHDOG_USEC=2s: WATCHDOG=1 at once after READY, then every second of the clock."""
    path, sock = notify_socket
    clock = MemoryReactorClock()
    notifier = systemd.Notifier(clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                                        "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 1.0
    notifier.ready("serving")
    assert sock.recv(4096).startswith(b"READY=1")
    assert sock.recv(4096) == b"WATCHDOG=1\n"
    clock.advance(1.0)
    assert sock.recv(4096) == b"WATCHDOG=1\n"
    notifier.close()


def test_watchdog_for_another_pid_is_ignored():
    """WATCHDOG_PID naming another process (a child's environment) turns pings off."""
    environ = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    notifier = systemd.Notifier(MemoryReactorClock(), environ)
    assert notifier.watchdog_interval is None


def test_listen_fds_without_names(monkeypatch):
    """LISTEN_FDS without LISTEN_FDNAMES (systemd-socket-activate) still gives the sockets, and
    the variables are removed so that children do not inherit them."""
    monkeypatch.setattr(systemd, "_inherited", None)
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    assert systemd.inherited_sockets(environ) == [(3, "unknown"), (4, "unknown")]
    assert environ == {}
    assert systemd.inherited_sockets({}) == [(3, "unknown"), (4, "unknown")]  # cached


def test_listen_fds_for_another_process_are_not_ours(monkeypatch):
    """LISTEN_PID of another process: nothing was passed to us."""
    monkeypatch.setattr(systemd, "_inherited", None)
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd.inherited_sockets(environ) == []


def test_passed_socket_by_index_and_name(monkeypatch):
    """index= and name= find the passed socket; a missing one is a ValueError with the count;
    domain= must match the socket's family."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        monkeypatch.setattr(systemd, "_inherited", [(sock.fileno(), "https")])
        found = (sock.fileno(), socket.AF_INET)
        assert systemd.inherited_socket("systemd:domain=INET:index=0") == found
        assert systemd.inherited_socket("systemd:domain=INET:name=https") == found
        with pytest.raises(ValueError, match="no socket at index 1 \\(it passed 1;"):
            systemd.inherited_socket("systemd:domain=INET:index=1")
        with pytest.raises(ValueError, match="is AF_INET, not AF_INET6"):
            systemd.inherited_socket("systemd:domain=INET6:index=0")
    finally:
        sock.close()


def test_a_listener_on_a_passed_socket_leaves_systemds_descriptor_open(monkeypatch):
    """Listening on ``systemd:domain=INET:index=0`` adopts a duplicate of the descriptor
    systemd passed and leaves the passed one open, so a reload (which looks up every
    ``systemd:`` endpoint again, and adopts it anew if its listener's options changed) finds
    it. Twisted's AdoptedStreamServerEndpoint closes the descriptor it adopts: a
    socket-activated single process lost descriptors 3 and 4 at start, and every reload
    failed with 'descriptor 4 passed by systemd is not an open socket' (or, once the number
    was reused by a client's connection, took that connection for the passed socket)."""
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    passed.bind(("127.0.0.1", 0))
    passed.listen()
    fd, inode = passed.fileno(), os.fstat(passed.fileno()).st_ino
    monkeypatch.setattr(systemd, "_inherited", [(fd, "unknown")])
    spec = "systemd:domain=INET:index=0"
    reactor = MemoryReactorClock()
    try:
        ports.listen(reactor, spec, object(), "listen[0].endpoint")
        assert _same_file(fd, inode), "the passed descriptor was closed"
        assert systemd.inherited_socket(spec) == (fd, socket.AF_INET)  # a reload's check
        assert len(reactor.adoptedPorts) == 1 and reactor.adoptedPorts[0][0] != fd
    finally:
        if _same_file(fd, inode):
            passed.close()
        else:
            passed.detach()  # Twisted closed it: the number is no longer ours


def _same_file(fd, inode):
    """Whether descriptor ``fd`` is still open on the file with ``inode``."""
    try:
        return os.fstat(fd).st_ino == inode
    except OSError:
        return False


@pytest.mark.parametrize("error, expected", [
    (CannotListenError("127.0.0.1", 443, OSError(errno.EACCES, "Permission denied")),
     "listen[0].endpoint: cannot listen on 127.0.0.1:443: Permission denied"),
    (CannotListenError("", 8080, OSError(errno.EADDRINUSE, "Address already in use")),
     "listen[0].endpoint: cannot listen on *:8080: Address already in use"),
])
def test_listen_errors_are_one_line(error, expected):
    """What a port below 1024 as non-root, or a taken port, look like to the operator."""
    class Refusing:
        def listenTCP(self, *args, **kwargs):
            raise error

    with pytest.raises(ports.ListenError) as info:
        ports.listen(Refusing(), "tcp:443:interface=127.0.0.1", object(), "listen[0].endpoint")
    assert str(info.value) == expected
