"""The accept balance of a worker (:mod:`proxyd.net.acceptbalance`) over fake ports, a fake
shared table and a test clock: what it tells the listening ports, when, and when it stops."""

from twisted.internet.task import Clock

from proxyd.net.acceptbalance import MAX_POLL, POLL, AcceptBalance


class Table:
    """Per-seat connection totals, as the shared connection table's header keeps them."""

    def __init__(self):
        self.totals = {}

    def seat_total(self, seat):
        """Open connections of ``seat``."""
        return self.totals.get(seat, 0)


class Port:
    """A listening port that records whether it reads; never readable (no backlog)."""

    def __init__(self):
        self.reading = True
        self.numberAccepts = 100

    def stopReading(self):  # noqa: N802 - Twisted's name
        self.reading = False

    def startReading(self):  # noqa: N802 - Twisted's name
        self.reading = True

    def doRead(self):  # noqa: N802 - Twisted's name
        return self.numberAccepts

    def fileno(self):
        """No socket: ``select`` cannot look at it (the balance then treats it as waiting)."""
        return -1


def _balance():
    clock, table = Clock(), Table()
    balance = AcceptBalance(clock, table, seat=0)
    ports = [Port(), Port()]
    for port in ports:
        balance.add_port(port)
    return clock, table, balance, ports


def test_ports_accept_one_connection_per_event():
    """Every balanced port accepts one connection per readable event."""
    _clock, _table, _balance_, ports = _balance()
    assert [port.doRead() for port in ports] == [1, 1]


def test_a_worker_ahead_stops_reading_until_its_peer_catches_up():
    """Ahead of its peer by two, the worker stops reading on every port; the polls see the peer
    catch up and reading starts again; then the polling stops."""
    clock, table, balance, ports = _balance()
    balance.set_peers([0, 3])  # its own seat is not a peer
    assert balance.peers == (3,)
    table.totals = {0: 2, 3: 0}
    balance.changed()
    assert balance.paused and not any(port.reading for port in ports)
    table.totals[3] = 1
    clock.advance(POLL)
    assert not balance.paused and all(port.reading for port in ports)
    assert not clock.getDelayedCalls()


def test_without_peers_nothing_pauses_and_a_stopped_balance_does_nothing():
    """No peers named: any count keeps accepting. After ``stop`` (retire, stop) the balance
    neither pauses nor resumes and leaves no timer behind."""
    clock, table, balance, ports = _balance()
    table.totals = {0: 50}
    balance.changed()
    assert not balance.paused
    balance.set_peers([1])
    assert balance.paused and clock.getDelayedCalls()
    balance.stop()
    assert not clock.getDelayedCalls()
    table.totals = {0: 0, 1: 0}
    balance.changed()
    clock.advance(1)
    assert not any(port.reading for port in ports)  # the service owns the ports now


def test_a_paused_worker_takes_connections_no_peer_takes():
    """While paused, connections that keep waiting (here: a port ``select`` cannot look at
    counts as waiting) for ``give_up`` make the worker read again."""
    clock, table, balance, ports = _balance()
    balance.set_peers([1])
    table.totals = {0: 5, 1: 0}
    balance.changed()
    assert balance.paused
    clock.pump([POLL] * round(balance.share.give_up / POLL + 2))
    assert not balance.paused and all(port.reading for port in ports)


def test_a_port_added_while_paused_does_not_read():
    """A port the service adds while the worker is paused starts paused too."""
    _clock, table, balance, _ports = _balance()
    balance.set_peers([1])
    table.totals = {0: 5}
    balance.changed()
    port = Port()
    balance.add_port(port)
    assert not port.reading


def test_closing_connections_do_not_hold_off_giving_up_on_a_stuck_peer():
    """A paused worker whose own connections keep closing (each a decision, still ahead of the
    stuck peer) still gives up after ``give_up`` of connections waiting: a close says nothing
    about the backlog, so it must not restart the wait."""
    clock, table, balance, ports = _balance()
    balance.set_peers([1])
    table.totals = {0: 50, 1: 0}
    balance.changed()
    assert balance.paused
    for _ in range(round(balance.share.give_up / POLL + 2)):
        table.totals[0] -= 1  # one of its own connections closed: a decision between polls
        balance.changed()
        clock.advance(POLL)
    assert not balance.paused and all(port.reading for port in ports)


def test_a_paused_worker_looks_less_often_while_nothing_waits():
    """Paused with an empty backlog (a real socket ``select`` finds unreadable), the looks back
    off from ``POLL`` to ``MAX_POLL``; as soon as a connection waits (the socket readable), they
    come every ``POLL`` again."""
    import socket

    clock, table, balance, _ports = _balance()
    listening, peer = socket.socketpair()
    try:
        port = Port()
        port.fileno = listening.fileno
        balance.ports = [port]
        balance.set_peers([1])
        table.totals = {0: 5, 1: 0}
        balance.changed()
        intervals = []
        for _ in range(8):
            (call,) = clock.getDelayedCalls()
            intervals.append(round(call.getTime() - clock.seconds(), 6))
            clock.advance(intervals[-1])
        assert intervals[0] == POLL and intervals[-1] == MAX_POLL
        assert intervals == sorted(intervals)
        peer.send(b"x")  # "a connection waits"
        clock.advance(MAX_POLL)
        (call,) = clock.getDelayedCalls()
        assert round(call.getTime() - clock.seconds(), 6) == POLL
    finally:
        listening.close()
        peer.close()
