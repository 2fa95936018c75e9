"""Pins the Twisted behaviour proxyd.net.twistedshim relies on (a private attribute).

twistd's runner copies ``reactor._exitSignal`` after the reactor stopped and re-raises that
signal; the reactor sets it when a SIGTERM/SIGINT stops it. If Twisted renames or drops this, the
test fails here, and the e2e test of a graceful SIGTERM (exit status 0) fails with it.
"""

import inspect

import twisted.application.app as app
from twisted.internet.base import ReactorBase

from proxyd.net.twistedshim import forget_exit_signal


def test_twistd_rereads_the_exit_signal_of_the_reactor():
    """The runner reads ``reactor._exitSignal`` (the signal it re-raises after the stop)."""
    assert "self._exitSignal = reactor._exitSignal" in inspect.getsource(app)
    assert ReactorBase._exitSignal is None


def test_forget_exit_signal_clears_it():
    """After a graceful stop the remembered signal is gone (twistd then exits 0)."""
    class Reactor:
        _exitSignal = 15

    reactor = Reactor()
    forget_exit_signal(reactor)
    assert reactor._exitSignal is None


def test_tcp_write_internals_are_as_the_direct_write_expects():
    """(2) A TCP transport's write queues into ``_tempDataBuffer`` / ``_tempDataLen`` and
    ``dataBuffer`` / ``offset``, and ``writeSomeData`` is its non-blocking send returning the
    count of bytes sent (or a ConnectionLost)."""
    import inspect

    from twisted.internet import abstract, tcp

    write = inspect.getsource(abstract.FileDescriptor.write)
    assert "self._tempDataBuffer.append(data)" in write and "self._tempDataLen" in write
    do_write = inspect.getsource(abstract.FileDescriptor.doWrite)
    assert "self.dataBuffer" in do_write and "self.offset" in do_write
    assert "return untilConcludes(self.socket.send" in inspect.getsource(
        tcp.Connection.writeSomeData)


def test_direct_writes_send_at_once_and_keep_order():
    """(2) Through a real socket pair: an empty buffer sends at once (no buffering), a socket
    that does not take everything queues the rest through Twisted's path, and then later
    writes queue behind it (order kept); test transports without TCP are left alone."""
    import socket

    from twisted.internet import reactor, tcp
    from twisted.internet.protocol import Protocol

    from proxyd.net.twistedshim import direct_writes

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = tcp.Connection(a, Protocol(), reactor)
    conn.connected = True
    assert direct_writes(conn) is conn
    conn.write(b"hello")
    assert not conn._tempDataLen and b.recv(100) == b"hello"
    big = b"x" * 1_000_000
    conn.write(big)
    assert conn._tempDataLen > 0  # the socket took part, the rest waits in Twisted's buffer
    conn.write(b"tail")
    assert conn._tempDataBuffer[-1] == b"tail"  # queued behind, not sent ahead
    conn.stopWriting()
    a.close()
    b.close()
    assert direct_writes(object()) is None
