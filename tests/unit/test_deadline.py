"""LazyDeadline (proxyd.net.deadline) on Twisted's test Clock: when ``expired`` runs, and how
many calls a moving deadline schedules."""

from twisted.internet.task import Clock

from proxyd.net.deadline import LazyDeadline


def _deadline():
    clock = Clock()
    fired = []
    return clock, LazyDeadline(clock, lambda: fired.append(clock.seconds())), fired


def test_expires_once_at_the_deadline():
    """``expired`` runs once, when the deadline passes, and not before."""
    clock, deadline, fired = _deadline()
    deadline.set(5)
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5]
    clock.advance(100)
    assert fired == [5] and clock.getDelayedCalls() == []


def test_moving_later_only_stores_the_deadline_and_the_call_sleeps_on():
    """A deadline moved later leaves the one pending call as it is (no reschedule per move);
    when it fires early it sleeps on until the real deadline."""
    clock, deadline, fired = _deadline()
    deadline.set(5)
    [call] = clock.getDelayedCalls()
    for _ in range(3):
        clock.advance(1)
        deadline.set(5)
        assert clock.getDelayedCalls() == [call] and call.getTime() == 5
    clock.advance(2)  # the call fires at 5; the deadline is 8
    assert fired == []
    clock.advance(3)
    assert fired == [8]


def test_moving_earlier_moves_the_call():
    """A deadline earlier than the pending call moves the call."""
    clock, deadline, fired = _deadline()
    deadline.set(60)
    deadline.set(15)
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 15
    clock.advance(15)
    assert fired == [15]


def test_cleared_deadline_never_expires_and_set_again_counts_from_then():
    """Cleared, the pending call finds no deadline and ends; set again later, it expires that
    many seconds after the new set."""
    clock, deadline, fired = _deadline()
    deadline.set(5)
    deadline.deadline = None  # cleared
    clock.advance(10)
    assert fired == [] and clock.getDelayedCalls() == []
    deadline.set(5)
    clock.advance(5)
    assert fired == [15]


def test_stop_cancels_the_pending_call():
    """``stop`` (the owner is gone) leaves no call behind and nothing runs."""
    clock, deadline, fired = _deadline()
    deadline.set(5)
    deadline.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert fired == []
    deadline.stop()  # twice is harmless


def test_stopped_deadline_forgets_its_owner_and_ignores_set():
    """Stopped, it holds no reference to ``expired`` (an owner's bound method would be a
    reference cycle) and a later ``set`` schedules nothing."""
    clock, deadline, fired = _deadline()
    deadline.stop()
    assert deadline.expired is None
    deadline.set(5)
    clock.advance(10)
    assert fired == [] and clock.getDelayedCalls() == []
