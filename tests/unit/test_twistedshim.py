"""Pins the Twisted behaviour proxyd.net.twistedshim relies on (a private attribute).

twistd's runner copies ``reactor._exitSignal`` after the reactor stopped and re-raises that
signal; the reactor sets it when a SIGTERM/SIGINT stops it. If Twisted renames or drops this, the
test fails here, and the e2e test of a graceful SIGTERM (exit status 0) fails with it.
"""

import contextlib
import inspect

import pytest
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
    assert "self._aborting = True" in inspect.getsource(tcp.Connection.abortConnection)


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


def test_tls_write_internals_are_as_the_whole_write_expects():
    """(3) Twisted's TLS layer keeps its pyOpenSSL connection in ``_tlsConnection``, marks a lost
    connection in ``_lostTLSConnection`` and encrypts through ``self._write`` (looked up on the
    instance, so replacing it there takes effect)."""
    import inspect

    from twisted.protocols import tls

    source = inspect.getsource(tls.TLSMemoryBIOProtocol)
    assert "self._tlsConnection = " in source and "_lostTLSConnection = False" in source
    assert "self._write(" in inspect.getsource(tls.TLSMemoryBIOProtocol.write)
    assert "def _write(self, bytes)" in source


def _tls_pair(directory):
    """A server ``TLSMemoryBIOProtocol`` on a recording transport and a client pyOpenSSL
    connection with memory BIOs, handshaken by hand; returns (server, writes, client)."""
    from OpenSSL import SSL
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from tests.support import tls_server_creator

    writes = []

    class Recording(StringTransport):
        def write(self, data):
            writes.append(bytes(data))
            super().write(data)

    clock = Clock()  # Twisted's TLS layer sends small writes one reactor turn later
    creator = tls_server_creator(directory, partial_writes=False)  # as proxyd's contexts
    factory = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Protocol), clock)
    server = factory.buildProtocol(None)
    server.makeConnection(Recording())
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            server.dataReceived(client.bio_read(65536))
        clock.advance(0)
        if writes:
            client.bio_write(b"".join(writes))
            writes.clear()
    server.turn = lambda: clock.advance(0)
    return server, writes, client


def _decrypt(client, records):
    from OpenSSL import SSL

    client.bio_write(records)
    out = []
    with contextlib.suppress(SSL.WantReadError):
        while True:
            out.append(client.recv(65536))
    return b"".join(out)


def test_whole_tls_writes_encrypt_once_and_write_once(tmp_path):
    """(3) A 100 KiB write becomes seven records handed down in one write (Twisted's own
    ``_write`` hands each 16 KiB record down on its own), and the peer decrypts the same bytes."""
    from proxyd.net.twistedshim import whole_tls_writes

    server, writes, client = _tls_pair(tmp_path)
    payload = bytes(range(256)) * 400
    server.write(payload)  # Twisted's path first: one write per record
    server.turn()
    assert len(writes) == 7 and _decrypt(client, b"".join(writes)) == payload
    writes.clear()
    assert whole_tls_writes(server)
    server.write(payload)
    server.turn()
    assert len(writes) == 1 and _decrypt(client, writes[0]) == payload
    writes.clear()
    server.write(b"small")  # one record: Twisted's path, unchanged
    server.turn()
    assert len(writes) == 1 and _decrypt(client, writes[0]) == b"small"
    assert not whole_tls_writes(object())


def test_whole_tls_writes_hand_what_openssl_refused_back_to_twisted(tmp_path):
    """(3) When OpenSSL refuses (WantRead during a renegotiation, or an error), the bytes it did
    not take go to Twisted's own ``_write`` (which buffers or fails the connection as before)."""
    from OpenSSL import SSL

    from proxyd.net.twistedshim import whole_tls_writes

    server, writes, client = _tls_pair(tmp_path)
    handed = []
    server._write = handed.append  # stands in for Twisted's _write, to see what reaches it
    connection = server._tlsConnection
    taken = []

    def send(data):
        if taken:
            raise SSL.WantReadError()
        taken.append(len(data))
        return 16384

    connection.send = send
    assert whole_tls_writes(server)
    payload = b"x" * 50000
    server._write(payload)
    assert taken == [50000] and handed == [payload[16384:]]


def test_tls_read_internals_are_as_the_whole_read_expects():
    """(4) Twisted's TLS layer reads records in ``_flushReceiveBIO`` (looked up on the instance
    by ``dataReceived``), hands each to ``ProtocolWrapper.dataReceived`` unless ``_aborted``,
    stops on ``_lostTLSConnection`` and flushes the send BIO at the end."""
    import inspect

    from twisted.protocols import tls

    flush = inspect.getsource(tls.TLSMemoryBIOProtocol._flushReceiveBIO)
    assert "self._tlsConnection.recv(" in flush and "while not self._lostTLSConnection" in flush
    assert "ProtocolWrapper.dataReceived(self, bytes)" in flush and "self._aborted" in flush
    assert "self._flushSendBIO()" in flush
    assert "self._flushReceiveBIO()" in inspect.getsource(tls.TLSMemoryBIOProtocol.dataReceived)
    assert "self._tlsShutdownFinished(failure)" in flush  # how a fatal error ends it
    finished = inspect.getsource(tls.TLSMemoryBIOProtocol._tlsShutdownFinished)
    assert "self._lostTLSConnection = True" in finished


def _encrypt(client, data):
    """Records of ``data`` as the client sends them (one record per 16 KiB)."""
    out = []
    for start in range(0, len(data), 16384):
        client.send(data[start:start + 16384])
        out.append(client.bio_read(65536))
    return b"".join(out)


def test_whole_tls_reads_hand_one_read_over_at_once(tmp_path):
    """(4) Five records arriving in one read reach the protocol as one ``dataReceived`` (five
    with Twisted's own loop, one per record), with the same bytes; a record and the peer's
    close_notify in one read: the record is delivered, then Twisted ends the TLS connection."""
    from OpenSSL import SSL

    from proxyd.net.twistedshim import whole_tls_reads

    server, writes, client = _tls_pair(tmp_path)
    received = []
    server.wrappedProtocol.dataReceived = received.append
    payload = bytes(range(256)) * 300  # 76,800 bytes: five records
    server.dataReceived(_encrypt(client, payload))
    assert len(received) == 5 and b"".join(received) == payload
    received.clear()
    assert whole_tls_reads(server)
    server.dataReceived(_encrypt(client, payload))
    assert received == [payload]
    tail = _encrypt(client, b"tail")
    with contextlib.suppress(SSL.WantReadError):
        client.shutdown()
    server.dataReceived(tail + client.bio_read(65536))  # a record, then close_notify
    assert received[-1] == b"tail" and server._lostTLSConnection
    assert not whole_tls_reads(object())


def test_whole_tls_reads_report_an_ssl_error_in_a_batch_as_twisted_does(tmp_path):
    """(4) A good record and a corrupted one (a flipped bit: bad record MAC) in one read: the
    good record is delivered, then the protocol's ``connectionLost`` gets OpenSSL's error, as
    with Twisted's own loop. OpenSSL reports a fatal error only once, so swallowing it and
    letting Twisted's loop read again turned it into a bare "non-clean" ConnectionLost: a
    backend's TLS alert (``certificate required``, ``bad record mac``) vanished from the log."""
    from OpenSSL import SSL
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from proxyd.net.twistedshim import whole_tls_reads

    reasons = {}
    for fast in (False, True):
        (tmp_path / str(fast)).mkdir()
        server, _writes, client = _tls_pair(tmp_path / str(fast))
        received, lost = [], []
        server.wrappedProtocol.dataReceived = received.append
        server.wrappedProtocol.connectionLost = lost.append
        if fast:
            assert whole_tls_reads(server)
        good = _encrypt(client, b"a" * 100)
        bad = bytearray(_encrypt(client, b"b" * 100))
        bad[-3] ^= 1
        server.dataReceived(good + bytes(bad))
        assert received == [b"a" * 100] and server._lostTLSConnection
        server.connectionLost(Failure(ConnectionDone()))
        assert len(lost) == 1
        reasons[fast] = lost[0]
    assert reasons[False].check(SSL.Error)
    assert reasons[True].check(SSL.Error), reasons[True]
    assert "bad record mac" in reasons[True].getErrorMessage()


def test_abort_sends_no_close_notify_with_direct_writes(tmp_path):
    """(2) An aborted TLS connection must not look like a clean end: Twisted's TLS layer writes
    close_notify before aborting the TCP transport, and Twisted's buffered write then drops it
    with the connection. With direct writes the alert went out at once, so a client reading a
    response delimited by the end of the connection (HTTP/1.0) took the abort that cuts it
    short for its clean end. Through a real socket pair: nothing reaches the peer."""
    import socket

    from twisted.internet import reactor, tcp

    from proxyd.net.twistedshim import fast_paths

    sent = {}
    for fast in (False, True):
        (tmp_path / str(fast)).mkdir()
        server, _writes, _client = _tls_pair(tmp_path / str(fast))
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        conn = tcp.Connection(a, server, reactor)
        conn.connected = True
        server.transport = conn
        if fast:
            fast_paths(server)
        server.abortConnection()
        try:
            sent[fast] = b.recv(65536)
        except BlockingIOError:
            sent[fast] = b""
        for call in reactor.getDelayedCalls():  # the abort's connectionLost, never run here
            if getattr(call.func, "__self__", None) is conn:
                call.cancel()
        a.close()
        b.close()
    assert sent == {False: b"", True: b""}


def test_fast_paths_set_up_every_path_of_a_connection(tmp_path):
    """``fast_paths`` (what every frontend and backend connection calls) puts the whole TLS
    write and read in place on a TLS layer, and leaves objects without TCP or TLS alone."""
    from proxyd.net.twistedshim import fast_paths

    server, _writes, _client = _tls_pair(tmp_path)
    assert "_write" not in vars(server) and "_flushReceiveBIO" not in vars(server)
    fast_paths(server)
    assert vars(server)["_write"].__qualname__.startswith("whole_tls_writes")
    assert vars(server)["_flushReceiveBIO"].__qualname__.startswith("whole_tls_reads")
    fast_paths(object())  # a test transport: nothing to change, nothing raised


def test_epoll_reactor_internals_are_as_the_shim_expects():
    """(5) Twisted's epoll reactor polls ``_poller`` for at most ``len(_selectables)`` events,
    returns on EINTR and hands each known fd to ``_doReadOrWrite`` inside ``callWithLogger``
    (the one thing the shim leaves out); ``doIteration`` is ``doPoll``."""
    from twisted.internet import epollreactor

    poll = inspect.getsource(epollreactor.EPollReactor.doPoll)
    assert "self._poller.poll(timeout, len(self._selectables))" in poll
    assert "errno.EINTR" in poll and "selectable = self._selectables[fd]" in poll
    assert "log.callWithLogger(selectable, _drdw, selectable, fd, event)" in poll
    assert epollreactor.EPollReactor.doIteration is epollreactor.EPollReactor.doPoll


def test_shim_reactor_reads_writes_and_disconnects_through_twisteds_handler():
    """(5) Through a real socket pair on a fresh :class:`EPollReactor`: a readable socket gets
    ``doRead``, a writable one ``doWrite``, an exception in ``doRead`` disconnects that socket
    (Twisted's ``_doReadOrWrite`` logs it and calls ``connectionLost``), an fd the reactor
    forgot is skipped, and an interrupted poll returns without events."""
    import socket

    from twisted.python import failure

    from proxyd.net.twistedshim import EPollReactor

    reactor = EPollReactor()
    a, b = socket.socketpair()
    calls = []

    class Selectable:
        def __init__(self, sock, fail=False):
            self.sock, self.fail = sock, fail

        def fileno(self):
            return self.sock.fileno()

        def logPrefix(self):
            return "test"

        def doRead(self):
            calls.append(("read", self.sock.recv(100)))
            if self.fail:
                raise ValueError("boom")

        def doWrite(self):
            calls.append(("write",))

        def connectionLost(self, reason):
            calls.append(("lost", reason.type))

    reader = Selectable(a, fail=True)
    writer = Selectable(b)
    try:
        reactor.addReader(reader)
        reactor.addWriter(writer)
        b.send(b"hi")
        errors = []
        from twisted.python import log
        log.addObserver(errors.append)
        try:
            reactor.doIteration(1.0)
        finally:
            log.removeObserver(errors.append)
        assert ("read", b"hi") in calls and ("write",) in calls
        assert ("lost", ValueError) in calls  # the failing reader was disconnected
        assert any(e.get("isError") for e in errors)
        assert reader not in reactor.getReaders()
        calls.clear()
        reactor.removeWriter(writer)

        class Poller:
            def poll(self, timeout, most):
                raise InterruptedError

        reactor._poller = Poller()
        reactor.doIteration(0)
        assert calls == []
    finally:
        reactor.removeAll()
        a.close()
        b.close()
    assert failure  # imported for the reason type above


def test_turn_end_calls_run_after_every_event_of_the_poll():
    """(7) Calls queued by the handlers of one poll run once all of that poll's events were
    handled (not between them), calls they queue run in the same turn, a call that raises is
    logged and does not stop the others; a reactor without the queue says so (False)."""
    import socket

    from twisted.internet.testing import MemoryReactorClock

    from proxyd.net import twistedshim
    from proxyd.net.twistedshim import EPollReactor, at_turn_end

    assert at_turn_end(MemoryReactorClock(), lambda: None) is False
    reactor = EPollReactor()
    pairs = [socket.socketpair() for _ in range(2)]
    calls = []

    class Reader:
        def __init__(self, sock, name):
            self.sock, self.name = sock, name

        def fileno(self):
            return self.sock.fileno()

        def logPrefix(self):
            return "test"

        def doRead(self):
            self.sock.recv(10)
            calls.append(("read", self.name))
            assert at_turn_end(reactor, lambda: calls.append(("end", self.name)))

        def connectionLost(self, reason):
            calls.append(("lost", self.name))

    def broken():
        raise RuntimeError("bug")

    def chained():
        calls.append(("end", "chained"))
        at_turn_end(reactor, lambda: calls.append(("end", "queued by a queued call")))

    failures = []
    original = twistedshim._log.failure
    twistedshim._log.failure = lambda fmt, **kw: failures.append(fmt)
    try:
        readers = [Reader(a, n) for n, (a, _b) in enumerate(pairs)]
        for reader in readers:
            reactor.addReader(reader)
        at_turn_end(reactor, broken)
        at_turn_end(reactor, chained)
        for _a, b in pairs:
            b.send(b"x")
        reactor.doIteration(1.0)
        reads = [c for c in calls if c[0] == "read"]
        assert len(reads) == 2
        last_read = max(calls.index(r) for r in reads)
        ends = [i for i, c in enumerate(calls) if c[0] == "end"]
        assert min(ends) > last_read  # nothing ran between two events of the poll
        assert ("end", "chained") in calls and ("end", "queued by a queued call") in calls
        assert {("end", 0), ("end", 1)} <= set(calls)
        assert failures == ["at the end of a reactor turn"]
        assert reactor.turn_end == []
        assert not [c for c in calls if c[0] == "lost"]
    finally:
        twistedshim._log.failure = original
        reactor.removeAll()
        for a, b in pairs:
            a.close()
            b.close()


def test_turn_end_calls_queued_by_timers_run_in_the_same_turn_and_a_poll_never_waits_for_them():
    """(7) A call queued by a timed call runs right after the timed calls (``runUntilCurrent``),
    not after the next poll; and a poll with calls still queued does not wait (timeout 0)."""
    from proxyd.net.twistedshim import EPollReactor, at_turn_end

    reactor = EPollReactor()
    calls = []
    reactor.callLater(0, lambda: at_turn_end(reactor, lambda: calls.append("after timer")))
    reactor.runUntilCurrent()
    assert calls == ["after timer"]

    timeouts = []

    class Poller:
        def poll(self, timeout, most):
            timeouts.append(timeout)
            return []

    reactor._poller = Poller()
    at_turn_end(reactor, lambda: calls.append("queued"))
    reactor.doIteration(None)  # would block forever on a real poller
    assert timeouts == [0] and calls[-1] == "queued"
    reactor.doIteration(None)
    assert timeouts == [0, -1]


def test_install_reactor_keeps_a_reactor_chosen_before(monkeypatch):
    """(5) ``install_reactor`` installs the shim's reactor only when none is installed: with
    ``twisted.internet.reactor`` imported (``twistd -r``, or any import) it does nothing."""
    import sys

    from proxyd.net import twistedshim

    installed = []
    monkeypatch.setattr(twistedshim, "installReactor", installed.append)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", object())
    assert twistedshim.install_reactor() is False and installed == []
    monkeypatch.delitem(sys.modules, "twisted.internet.reactor")
    assert twistedshim.install_reactor() is True
    assert type(installed[0]) is twistedshim.EPollReactor


def test_reset_connection_resets_the_tcp_connection():
    """``reset_connection`` aborts with SO_LINGER 0: the peer reads a reset (ECONNRESET) after
    the bytes already sent, never an end of stream that would pass for a complete response.
    Through a real loopback TCP connection (a socket pair has no TCP reset)."""
    import socket

    from twisted.internet import reactor, tcp
    from twisted.internet.protocol import Protocol

    from proxyd.net.twistedshim import reset_connection

    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    conn = tcp.Connection(ours, Protocol(), reactor)
    conn.connected = True
    ours.sendall(b"partial body")
    reset_connection(conn)
    for call in reactor.getDelayedCalls():  # the abort's connectionLost, never run here
        if getattr(call.func, "__self__", None) is conn:
            call.cancel()
    ours.close()  # what connectionLost does: with SO_LINGER 0 the close is a reset
    peer.settimeout(5)
    assert peer.recv(100) == b"partial body"
    with pytest.raises(ConnectionResetError):
        peer.recv(100)
    peer.close()


def test_release_frees_a_lost_tls_connection_without_the_collector(tmp_path):
    """``release`` (what every frontend and backend connection calls when lost) breaks the
    cycles of a real TCP + TLS transport: with the collector off, the protocol, the TLS layer,
    the TCP transport and the OpenSSL connection are freed by reference counting once Twisted
    delivered connectionLost. Before it, the fast paths' closures over the transports and the
    producer the protocol registered kept them all (with OpenSSL's buffers) for a full
    collection. Also pins what Twisted breaks itself: the TCP transport drops its protocol."""
    import gc
    import socket
    import weakref

    from twisted.internet import tcp
    from twisted.internet.error import ConnectionDone
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.python.failure import Failure

    from proxyd.net.twistedshim import EPollReactor, fast_paths, release
    from tests.support import tls_server_creator

    class Served(Protocol):
        """Registers as its transport's producer and takes the fast paths, as proxyd's do."""

        def connectionMade(self):  # noqa: N802 - Twisted's name
            self.transport.registerProducer(self, True)
            fast_paths(self.transport)

        def connectionLost(self, reason=None):  # noqa: N802 - Twisted's name
            release(self.transport)

        def pauseProducing(self):  # noqa: N802 - Twisted's name
            pass

        def resumeProducing(self):  # noqa: N802 - Twisted's name
            pass

        def stopProducing(self):  # noqa: N802 - Twisted's name
            pass

    reactor = EPollReactor()  # not the global one: no fd of an earlier test is registered here
    a, b = socket.socketpair()
    gc.collect()
    gc.disable()
    try:
        tls = TLSMemoryBIOFactory(tls_server_creator(tmp_path), False,
                                 Factory.forProtocol(Served)).buildProtocol(None)
        conn = tcp.Connection(a, tls, reactor)
        conn.connected = True
        conn.startReading()  # as a live connection (connectionLost stops it)
        tls.makeConnection(conn)
        served = tls.wrappedProtocol
        assert "write" in vars(conn) and "_write" in vars(tls)  # the fast paths are in place
        refs = [weakref.ref(x) for x in (served, tls, conn, tls._tlsConnection)]
        conn.connectionLost(Failure(ConnectionDone()))
        assert not hasattr(conn, "protocol")  # Twisted's own part
        assert not {"write", "_proxyd_direct"} & set(vars(conn))
        assert not {"_write", "_flushReceiveBIO", "abortConnection"} & set(vars(tls))
        del tls, conn, served
        assert [ref() for ref in refs] == [None] * 4
    finally:
        gc.enable()
        b.close()


def test_one_accept_per_event_accepts_one_waiting_connection_per_read():
    """(6) A real listening port with three connections waiting in its backlog: Twisted's own
    ``doRead`` takes all three at once (``numberAccepts``, adapted by Twisted); after
    ``one_accept_per_event`` each ``doRead`` takes exactly one."""
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Factory, Protocol

    from proxyd.net.twistedshim import EPollReactor, one_accept_per_event

    assert "numAccepts = self.numberAccepts" in inspect.getsource(tcp.Port.doRead)
    reactor = EPollReactor()
    built = []

    class Counting(Factory):
        def buildProtocol(self, addr):  # noqa: N802 - Twisted's name
            built.append(addr)
            return Protocol()

    clients = []
    try:
        for one_at_a_time in (False, True):
            port = reactor.listenTCP(0, Counting(), interface="127.0.0.1")
            if one_at_a_time:
                one_accept_per_event(port)
            address = port.getHost()
            clients += [socket.create_connection((address.host, address.port))
                        for _ in range(3)]
            built.clear()
            port.doRead()
            first = len(built)
            port.doRead()
            port.doRead()
            assert (first, len(built)) == ((1, 3) if one_at_a_time else (3, 3))
            port.stopListening()
    finally:
        for sock in clients:
            sock.close()
        reactor.removeAll()


def test_connector_internals_are_as_release_expects():
    """An outgoing TCP transport tells its Connector of the loss after the protocol's
    connectionLost (so ``release`` must leave ``transport.connector`` and ``connector.factory``
    alone), and an endpoint's ``_WrappingFactory`` reads ``_connector`` only to cancel a
    connection attempt."""
    import inspect

    from twisted.internet import endpoints, tcp

    lost = inspect.getsource(tcp._BaseBaseClient.connectionLost)
    assert lost.index("_commonConnection.connectionLost") < lost.index(
        "self.connector.connectionLost")
    wrapping = inspect.getsource(endpoints._WrappingFactory)
    assert "self._connector = connector" in wrapping
    assert wrapping.count("self._connector") == 3  # set, and read twice by _canceller
    assert "self._connector" in inspect.getsource(endpoints._WrappingFactory._canceller)


def test_release_frees_a_lost_outgoing_connection_without_the_collector():
    """An outgoing connection (as to a backend, or a health check): Twisted's Connector and the
    TCP transport refer to each other, and so do the Connector and the endpoint's wrapping
    factory; ``release`` breaks both, so that with the collector off the transport, the
    Connector, the wrapping factory and the protocol are freed by reference counting once the
    connection is lost (before: ~700 bytes per backend connection waited for a collection)."""
    import gc
    import socket
    import weakref

    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.error import ConnectionDone
    from twisted.internet.protocol import Factory, Protocol
    from twisted.python.failure import Failure

    from proxyd.net.twistedshim import EPollReactor, release

    class Outgoing(Protocol):
        """Releases its transport when lost, as proxyd's backend connections do."""

        def connectionLost(self, reason=None):  # noqa: N802 - Twisted's name
            release(self.transport)

    reactor = EPollReactor()  # not the global one: no fd of an earlier test is registered here
    listener = socket.create_server(("127.0.0.1", 0))
    gc.collect()
    gc.disable()
    try:
        connected = []
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1])
        endpoint.connect(Factory.forProtocol(Outgoing)).addCallback(connected.append)
        for _ in range(100):  # a call at once starts the connect; the socket turns writable
            if connected:
                break
            reactor.iterate(0.1)
        (protocol,) = connected
        transport = protocol.transport
        connector = transport.connector
        refs = [weakref.ref(x) for x in (protocol, transport, connector, connector.factory)]
        transport.connectionLost(Failure(ConnectionDone()))
        assert connector.state == "disconnected"  # Twisted went on with its part
        del connected, protocol, transport, connector, endpoint
        assert [ref() for ref in refs] == [None] * 4
    finally:
        gc.enable()
        listener.close()


# -- (8) the reactor's clock when the wall clock steps ----------------------------------------

#: A wall-clock step back (a correction) and forward (a VM synced long after it booted).
HOUR, FAR_FORWARD = 3600.0, 400 * 86400.0


@pytest.fixture
def stepped_wall_clock(monkeypatch):
    """Twisted's wall clock (``ReactorBase.seconds``, which is ``time.time``) plus an offset
    the test steps (a list of one float): the machine's clock stepped, without touching it."""
    import time

    offset = [0.0]
    real = time.time
    monkeypatch.setattr(ReactorBase, "seconds", staticmethod(lambda: real() + offset[0]))
    return offset


def _turns(reactor, done, seconds):
    """Run ``reactor``'s turns (due calls, then a poll of 20 ms) until ``done()`` or for
    ``seconds`` of real time (measured on the monotonic clock); returns ``done()``."""
    import time

    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        reactor.runUntilCurrent()
        reactor.doIteration(0.02)
    return done()


def test_reactor_timers_keep_their_delays_when_the_wall_clock_steps_back(stepped_wall_clock):
    """(8) The wall clock steps back an hour: proxyd's reactor still runs a 0.2 s call (a
    header or idle timeout) within the second and a LoopingCall (systemd's watchdog pings, the
    service's tick) at its pace. On Twisted's wall-clock timers both wait for the hour."""
    from twisted.internet import task

    from proxyd.net.twistedshim import EPollReactor

    reactor = EPollReactor()
    fired, ticks = [], []
    reactor.callLater(0.2, fired.append, "timeout")
    loop = task.LoopingCall(ticks.append, "tick")
    loop.clock = reactor
    loop.start(0.05, now=False)
    try:
        stepped_wall_clock[0] -= HOUR
        assert _turns(reactor, lambda: fired and len(ticks) >= 5, 3), (fired, ticks)
    finally:
        loop.stop()
        reactor.removeAll()


def test_reactor_timers_do_not_fire_early_when_the_wall_clock_jumps_forward(
        stepped_wall_clock):
    """(8) The wall clock jumps 400 days forward: a 60 s call (an idle timeout, a health check
    interval) does not fire with it, and a 0.1 s call fires on time. On Twisted's wall-clock
    timers every pending call fires at the next turn."""
    from proxyd.net.twistedshim import EPollReactor

    reactor = EPollReactor()
    early, due = [], []
    reactor.callLater(60, early.append, "idle timeout")
    reactor.callLater(0.1, due.append, "due")
    stepped_wall_clock[0] += FAR_FORWARD
    assert _turns(reactor, lambda: due, 3)
    reactor.runUntilCurrent()
    assert early == []
    reactor.removeAll()


def test_twisted_reads_the_reactor_time_only_through_its_seconds_method():
    """(8) What lets ``EPollReactor.seconds`` move every timer to the monotonic clock: the
    reactor's ``callLater`` and ``DelayedCall`` (``reset``, ``delay``), ``runUntilCurrent``
    and ``timeout`` read the time through ``self.seconds``, ``LoopingCall`` through its clock's
    ``seconds``, and Twisted's wall clock appears nowhere else in the reactor's code; proxyd's
    reactor reads ``time.monotonic``."""
    import time

    from twisted.internet import base, epollreactor, posixbase, task

    from proxyd.net.twistedshim import EPollReactor

    assert "self.seconds() + delay" in inspect.getsource(ReactorBase.callLater)
    assert "seconds=self.seconds" in inspect.getsource(ReactorBase.callLater)
    assert "self.seconds() + secondsFromNow" in inspect.getsource(base.DelayedCall.reset)
    assert "now = self.seconds()" in inspect.getsource(ReactorBase.runUntilCurrent)
    assert "- self.seconds()" in inspect.getsource(ReactorBase.timeout)
    assert "self.clock.seconds()" in inspect.getsource(task.LoopingCall.__call__)
    assert inspect.getsource(base).count("runtimeSeconds") == 3  # import, default, attribute
    for module in (posixbase, epollreactor):
        assert "runtimeSeconds" not in inspect.getsource(module)
        assert "time.time" not in inspect.getsource(module)
    assert EPollReactor.seconds is time.monotonic
    reactor = EPollReactor()
    assert reactor.seconds is time.monotonic
    assert reactor.callLater(1, lambda: None).seconds is time.monotonic
    reactor.removeAll()
    for call in reactor.getDelayedCalls():
        call.cancel()
