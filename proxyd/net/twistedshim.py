"""The one place where proxyd touches private parts of Twisted, and why.

Strategy: six behaviours cannot be had through Twisted's public API; each is small and pinned by
``tests/unit/test_twistedshim.py`` against the installed Twisted, so an upgrade that changes them
fails loudly in the suite (items 7 and 8 are additions of proxyd's own to the reactor of item 5,
kept with it):

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
   ordering, producers and loss detection are unchanged; an aborted transport (``_aborting``)
   never sends, and a TLS layer above aborts its TCP transport before writing close_notify, so
   an abort stays an abort (no close_notify), as with Twisted's buffered writes. (Reads
   ``_tempDataLen``, ``dataBuffer``, ``offset`` and ``_aborting``; the write and the TLS
   layer's ``abortConnection`` are replaced on the instance, not the class.)
3. Twisted's TLS layer (``TLSMemoryBIOProtocol._write``) copies out each 16 KiB slice, encrypts
   it and drains the memory BIO after every record: for a 64 KiB chunk, four rounds of Python and
   pyOpenSSL calls and four ``send`` system calls. :func:`whole_tls_writes` replaces ``_write``
   on the instance: one ``send`` of the whole buffer (listeners' contexts clear partial-write
   mode, so OpenSSL writes all the records into its memory BIO at once; elsewhere, as on
   backend connections, it takes one call per record), one ``bio_read`` of everything, one
   write below: one system call per flush, as nghttpx writes. An error or WantRead goes back to Twisted's own ``_write`` with the
   unsent rest, which handles it as before. (Reads ``_tlsConnection`` and
   ``_lostTLSConnection``.) Measured: 40 -> 23 µs per 64 KiB in pyOpenSSL alone; send calls per
   MiB 81 -> 18.
4. On the way in, the same layer (``_flushReceiveBIO``) hands each decrypted record (at most
   16 KiB) to the protocol on its own: a 64 KiB read from the socket was four rounds of parsing,
   relaying and flushing. :func:`whole_tls_reads` replaces it on the instance: decrypt every
   record the read completed, hand them over as one ``dataReceived``, then run Twisted's own
   ``_flushReceiveBIO`` (it finds nothing more to read, or meets again the end or the error that
   stopped the loop, and handles it as before, then flushes the send BIO); a fatal OpenSSL
   error, which OpenSSL reports only once, is handed to Twisted's ``_tlsShutdownFinished`` as
   its loop would. (Reads ``_tlsConnection``, ``_lostTLSConnection`` and ``_aborted``; calls
   ``_tlsShutdownFinished``.)
   When a connection is lost, :func:`release` takes the overrides of 2-4 off the instances
   again: they are closures over the transports, so they would make every closed connection a
   reference cycle (with its TLS buffers) waiting for a full garbage collection. On an outgoing
   connection it also drops the links back to Twisted's ``Connector``, two more cycles:
   ``connector.transport`` and the endpoint's ``_WrappingFactory._connector`` (private, read
   only to cancel a connection attempt).
5. Twisted's epoll reactor calls each ready socket's handler inside ``log.callWithLogger``, which
   sets up a legacy logging context (the "system" that only ``twisted.python.log`` messages
   print; proxyd logs through ``twisted.logger`` namespaces) and costs about 3 µs per event: a
   backend read per request. :class:`EPollReactor` is the same reactor handling each event with
   the reactor's own ``_doReadOrWrite`` directly (its error handling and disconnection logic
   unchanged); :func:`install_reactor` installs it for twistd and for workers unless a reactor
   was chosen already (``twistd -r``). (Reads ``_poller``, ``_selectables`` and
   ``_doReadOrWrite``.) Measured: 307k -> 288k instructions per request of the whole daemon.
6. A listening port accepts, each time its socket is readable, as many connections as wait (up
   to ``numberAccepts``, which Twisted adapts: 100 at first). Workers sharing a socket balance
   their accepts (:class:`proxyd.workerpolicy.AcceptShare`), which needs a decision after each
   connection: :func:`one_accept_per_event` makes a port accept one connection per event, as
   nginx does by default (``multi_accept off``). (Sets ``numberAccepts`` before Twisted's own
   ``doRead``, replaced on the instance.)
7. Output that several events of one reactor turn add to (a client connection receiving the
   responses of several backend connections that were ready in the same poll, an HTTP/2 backend
   connection receiving several requests) is worth writing once, after the turn. Twisted's TLS
   layer already merges the records of one turn (``_AggregateSmallWrites``), but each write down
   to it still costs the codec's join and the layers' calls. :func:`at_turn_end` queues a call
   on :class:`EPollReactor` that runs once every event of the current poll was handled (or after
   the timed calls being run, when a timer queued it); a poll never waits while something is
   queued. A call that raises is logged and the others still run. Other reactors (tests'
   clocks, ``twistd -r``) have no queue: the caller then does it at once, as before. Measured
   (S1, ``bench/daemon_cost.py``): client flushes 1.11 -> 0.2 per request, 264.9k -> 256.1k
   instructions per request.
8. Twisted's reactors tell time with the wall clock (``ReactorBase.seconds`` is ``time.time``),
   which NTP or an administrator can step, and every timer is an absolute time on it
   (``callLater``, ``LoopingCall``, the poll's timeout): after a step back every timer waited
   for the size of the step (header and idle timeouts, systemd's watchdog pings, the graceful
   stop), after a step forward all fired at once (every idle client disconnected). Like
   nghttpx and nginx, :class:`EPollReactor` keeps its time on the monotonic clock
   (``seconds = time.monotonic``, the public ``IReactorTime.seconds``): Twisted reads the time
   of ``callLater``, ``DelayedCall``, ``runUntilCurrent`` and ``timeout`` from it, and
   ``LoopingCall``/``deferLater`` from their clock, this reactor. So ``reactor.seconds()`` is no
   time of day: what needs one reads ``time.time()`` itself (the access log's timestamps,
   the TLS ticket-key periods; Twisted's logger does). The monotonic clock is one clock for
   the whole machine, so the workers' shared tables agree on it. ``twistd -r`` reactors keep
   Twisted's wall clock. (Overrides ``seconds``; the pin checks that Twisted reads the time
   nowhere else in the reactor.)
"""

import fcntl
import socket
import struct
import sys
import termios
import time
from contextlib import suppress

from OpenSSL import SSL

from twisted.internet import epollreactor, tcp
from twisted.internet.main import installReactor
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

_log = Logger(namespace="proxyd")


def forget_exit_signal(reactor):
    """Make twistd exit 0 after a graceful stop that a signal started."""
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def _tcp_of(transport):
    """The TCP transport at or under ``transport`` (TLS layers included), or None."""
    while not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return transport


def reset_connection(transport):
    """Abort ``transport`` with a TCP reset (SO_LINGER 0, the socket option, nothing private):
    the peer sees an error, never an end, so a response cut short cannot pass for a complete
    one (an HTTP/1.0 body that ends with the connection, or a FIN after the last bytes)."""
    tcp_transport = _tcp_of(transport)
    if tcp_transport is not None:
        with suppress(OSError, AttributeError):
            tcp_transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                 struct.pack("ii", 1, 0))
    transport.abortConnection()


def unsent_bytes(transport):
    """Bytes written to ``transport`` that the peer has not been sent yet: Twisted's buffers (TLS
    layer, TCP transport) and the socket's send queue (Linux ``SIOCOUTQ``). 0 for a transport
    without a TCP socket (a test transport)."""
    tcp_transport = _tcp_of(transport)
    if tcp_transport is None:
        return 0
    tls = _tls_layer(transport)
    waiting = len(getattr(tls, "_appSendBuffer", None) or ()) if tls is not None else 0
    waiting += (len(tcp_transport.dataBuffer) - tcp_transport.offset + tcp_transport._tempDataLen)
    with suppress(OSError, AttributeError, ValueError):
        queued = fcntl.ioctl(tcp_transport.getHandle().fileno(), termios.TIOCOUTQ,
                             struct.pack("i", 0))
        waiting += struct.unpack("i", queued)[0]
    return waiting


def direct_writes(transport):
    """Make the TCP transport under ``transport`` (TLS layers included) send at once when it can.

    Returns the TCP transport changed, or None when there is none (e.g. a test transport).
    """
    tcp_transport = _tcp_of(transport)
    if tcp_transport is None:
        return None
    _abort_tcp_first(transport, tcp_transport)
    if getattr(tcp_transport, "_proxyd_direct", False):
        return tcp_transport
    buffered = tcp_transport.write
    send = tcp_transport.writeSomeData

    def write(data):
        if (tcp_transport._tempDataLen or tcp_transport.offset != len(tcp_transport.dataBuffer)
                or not tcp_transport.connected or tcp_transport.disconnecting
                or tcp_transport._writeDisconnected or tcp_transport._aborting or not data):
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


def _abort_tcp_first(transport, tcp_transport):
    """An abort of the TLS layer above ``tcp_transport`` sends nothing more, as without direct
    writes: Twisted's ``TLSMemoryBIOProtocol.abortConnection`` writes close_notify and only then
    aborts the TCP transport, whose buffered write drops it; a direct write would send it, and
    the peer would take the abort (a response cut short) for a clean end. So the TCP transport
    is aborted first (``_aborting`` set: writes are buffered, then dropped)."""
    tls = _tls_layer(transport)
    if tls is None or getattr(tls, "_proxyd_abort", False):
        return
    original = tls.abortConnection

    def abort():
        tcp_transport.abortConnection()
        original()

    tls.abortConnection = abort
    tls._proxyd_abort = True


# OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h), which pyOpenSSL sets on every Context.
MODE_ENABLE_PARTIAL_WRITE = 0x1
# Bytes one TLS record adds to its payload, at most (header, explicit nonce or type, tag).
_RECORD_OVERHEAD = 64
_RECORD = 16384


def whole_tls_writes(tls):
    """Make the TLS layer ``tls`` (a ``TLSMemoryBIOProtocol``) encrypt a write in one call.

    ``tls`` may also be a transport above it (the first TLS layer down the chain is changed).
    Returns True when one was changed (False when there is none, e.g. cleartext).
    """
    tls = _tls_layer(tls)
    if tls is None or not hasattr(tls, "_lostTLSConnection"):
        return False
    connection = tls._tlsConnection
    original = tls._write
    send = connection.send
    bio_read = connection.bio_read

    def write(data):
        size = len(data)
        if size <= _RECORD or tls._lostTLSConnection:
            original(data)
            return
        view = memoryview(data)
        done = 0
        try:
            while done < size:
                done += send(view[done:])
        except SSL.Error:
            pass  # WantRead (renegotiation) or a failure: Twisted's _write below handles it
        if done:
            out = []
            with suppress(SSL.WantReadError):
                while True:
                    out.append(bio_read(size + _RECORD_OVERHEAD * (size // _RECORD + 2)))
            if out:
                tls.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if done < size:
            original(view[done:].tobytes())

    tls._write = write
    return True


def _tls_layer(transport):
    """The first TLS layer (a ``TLSMemoryBIOProtocol``) at or below ``transport``, or None."""
    while transport is not None and not hasattr(transport, "_tlsConnection"):
        transport = getattr(transport, "transport", None)
    if transport is None or not isinstance(transport._tlsConnection, SSL.Connection):
        return None
    return transport


def whole_tls_reads(tls):
    """Make the TLS layer at or below ``tls`` hand all the records of one read over at once.

    Returns True when one was changed (False when there is none, e.g. cleartext).
    """
    tls = _tls_layer(tls)
    if tls is None or not hasattr(tls, "_aborted"):
        return False
    original = tls._flushReceiveBIO
    recv = tls._tlsConnection.recv

    def flush_receive():
        pieces = []
        failure = None
        if not tls._lostTLSConnection:
            try:
                while True:
                    pieces.append(recv(65536))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass  # all read; close_notify: Twisted's loop below meets it again
            except SSL.Error:
                # OpenSSL reports a fatal error once (a second read gives a bare EOF): keep it
                # for the protocol's connectionLost, as Twisted's own loop does; without its
                # frames, which hold this layer (a cycle: the connection would wait for a full
                # collection; an abrupt close without close_notify takes this path).
                failure = Failure()
                failure.cleanFailure()
        if pieces and not tls._aborted:
            ProtocolWrapper.dataReceived(tls, pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if failure is not None and not tls._lostTLSConnection:
            tls._tlsShutdownFinished(failure)
        original()

    tls._flushReceiveBIO = flush_receive
    return True


def fast_paths(transport):
    """Everything above for a new connection's ``transport``: direct writes on its TCP transport,
    whole TLS writes and reads on its TLS layer (cleartext: the TLS parts do nothing)."""
    direct_writes(transport)
    whole_tls_writes(transport)
    whole_tls_reads(transport)


#: What :func:`fast_paths` sets on the instances of the TCP transport and of the TLS layer.
_TCP_OVERRIDES = ("write", "_proxyd_direct")
_TLS_OVERRIDES = ("_write", "_flushReceiveBIO", "abortConnection", "_proxyd_abort")


def release(transport):
    """Break the reference cycles of a lost connection's ``transport``, so that reference
    counting frees the connection (its protocol, codec, TLS object and buffers) at once rather
    than the garbage collector much later (a full collection: meanwhile every closed
    connection's memory stays, tens of KiB each). The cycles: the transport holds the protocol
    as its producer, :func:`fast_paths` put closures over the transport on it, and an outgoing
    connection's transport and Twisted's ``Connector`` refer to each other."""
    with suppress(RuntimeError):  # a test transport without a producer
        transport.unregisterProducer()
    tcp_transport = _tcp_of(transport)
    if tcp_transport is not None:
        for name in _TCP_OVERRIDES:
            tcp_transport.__dict__.pop(name, None)
        _forget_connector(tcp_transport)
    tls = _tls_layer(transport)
    if tls is not None:
        for name in _TLS_OVERRIDES:
            tls.__dict__.pop(name, None)


def _forget_connector(tcp_transport):
    """An outgoing connection's part of :func:`release`: its ``Connector`` and the transport
    refer to each other (``connector.transport``, ``transport.connector``), and so do the
    Connector and the endpoint's ``_WrappingFactory`` (``factory._connector``, read only to
    cancel a connection attempt). The links back to the Connector go; Twisted still uses
    ``transport.connector`` and ``connector.factory`` after the protocol's connectionLost."""
    connector = getattr(tcp_transport, "connector", None)
    if connector is None:  # an accepted connection
        return
    if getattr(connector, "transport", None) is tcp_transport:
        connector.transport = None
    factory = getattr(connector, "factory", None)
    if getattr(factory, "_connector", None) is connector:
        del factory._connector


def one_accept_per_event(port):
    """Make the listening ``port`` (a ``tcp.Port``) accept at most one connection each time
    the reactor finds its socket readable (item 6)."""
    accept = type(port).doRead

    def doRead():  # noqa: N802 - Twisted's name
        port.numberAccepts = 1
        return accept(port)

    port.doRead = doRead


def at_turn_end(reactor, call):
    """Queue ``call`` (no arguments) to run once the current turn of ``reactor`` is over
    (item 7); False when ``reactor`` has no such queue: then the caller runs it now."""
    queue = getattr(reactor, "turn_end", None)
    if queue is None:
        return False
    queue.append(call)
    return True


class EPollReactor(epollreactor.EPollReactor):
    """Twisted's epoll reactor, minus the legacy log context around every event (item 5), with
    a queue of calls run at the end of each turn (item 7), on the monotonic clock (item 8)."""

    #: Every timer's time: a step of the wall clock moves none of them (item 8).
    seconds = staticmethod(time.monotonic)

    def __init__(self):
        self.turn_end = []
        super().__init__()

    def _end_turn(self):
        """Run what the turn queued, and what those calls queue in turn."""
        while self.turn_end:
            calls, self.turn_end = self.turn_end, []
            for call in calls:
                try:
                    call()
                except Exception:  # one failure must not leave the others' output unsent
                    _log.failure("at the end of a reactor turn")

    def runUntilCurrent(self):
        """Run the due timed calls (Twisted's), then what they queued for the turn's end."""
        super().runUntilCurrent()
        if self.turn_end:
            self._end_turn()

    def doPoll(self, timeout):
        """Wait for events (at most ``timeout`` seconds; not at all while calls are queued),
        handle each as Twisted does, then run what they queued for the turn's end."""
        if self.turn_end:
            timeout = 0
        elif timeout is None:
            timeout = -1
        try:
            ready = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        handle = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)
        if self.turn_end:
            self._end_turn()

    doIteration = doPoll


def install_reactor():
    """Install :class:`EPollReactor` unless some reactor is installed already (``twistd -r``,
    or an import of ``twisted.internet.reactor``); True when it was installed."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    installReactor(EPollReactor())
    return True
