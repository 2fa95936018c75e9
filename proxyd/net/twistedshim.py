"""The one place where proxyd touches private parts of Twisted, and why.

Strategy: two behaviours cannot be had through Twisted's public API; each is small and pinned by
``tests/unit/test_twistedshim.py`` against the installed Twisted, so an upgrade that changes them
fails loudly in the suite:

1. twistd remembers the signal that stopped the reactor (``reactor._exitSignal``, see
   ``twisted.internet.interfaces._ISupportsExitSignalCapturing``) and, once the reactor has
   stopped, kills its own process with that signal again, so a clean shutdown on SIGTERM would
   exit with status -15 and systemd would call it a failure. A graceful stop that drained every
   connection is a clean exit (status 0), so the service forgets the signal.
2. A TCP transport's ``write`` queues the bytes and asks the reactor to watch the socket for
   writing; the next reactor turn sends them and stops watching: two ``epoll_ctl`` calls and a turn
   per write, for every request on a keep-alive backend connection and every client flush. When
   the transport's buffer is empty, :func:`direct_writes` makes ``write`` send at once
   (``writeSomeData``, the transport's own non-blocking send); only what the socket does not take
   (or an error, which Twisted then reports as usual) goes through the normal buffered path, so
   ordering, producers and loss detection are unchanged. (Reads ``_tempDataLen``, ``dataBuffer``
   and ``offset``; the write method is replaced on the instance, not the class.)
"""

from twisted.internet import tcp


def forget_exit_signal(reactor):
    """Make twistd exit 0 after a graceful stop that a signal started."""
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def direct_writes(transport):
    """Make the TCP transport under ``transport`` (TLS layers included) send at once when it can.

    Returns the TCP transport changed, or None when there is none (e.g. a test transport).
    """
    tcp_transport = transport
    while not isinstance(tcp_transport, tcp.Connection):
        tcp_transport = getattr(tcp_transport, "transport", None)
        if tcp_transport is None:
            return None
    if getattr(tcp_transport, "_proxyd_direct", False):
        return tcp_transport
    buffered = tcp_transport.write
    send = tcp_transport.writeSomeData

    def write(data):
        if (tcp_transport._tempDataLen or tcp_transport.offset != len(tcp_transport.dataBuffer)
                or not tcp_transport.connected or tcp_transport.disconnecting
                or tcp_transport._writeDisconnected or not data):
            buffered(data)
            return
        sent = send(data)
        if type(sent) is int and sent > 0:
            if sent == len(data):
                return
            data = memoryview(data)[sent:].tobytes()
        buffered(data)  # the rest (or the error, which the next write attempt reports)

    tcp_transport.write = write
    tcp_transport._proxyd_direct = True
    return tcp_transport
