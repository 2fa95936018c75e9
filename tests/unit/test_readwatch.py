"""ReadWatch: one call per connection checks the backend read deadlines of all its streams."""

from twisted.internet.task import Clock

from proxyd.net.readwatch import ReadWatch


class FakeRelay:
    """A stream whose read deadline is ``last + timeout`` while armed."""

    def __init__(self, streams, sid, clock, timeout):
        self.clock, self.timeout, self.armed, self.timed_out = clock, timeout, True, 0
        self.last = clock.seconds()
        streams[sid] = self

    def read_due(self):
        return self.last + self.timeout if self.armed else None

    def read_timed_out(self):
        self.armed = False
        self.timed_out += 1


def test_one_call_serves_every_stream_and_fires_at_the_earliest_deadline():
    """Two streams with 10 s: one scheduled call; a third with a 3 s route timeout pulls the
    call earlier; each stream times out exactly at its deadline, not before."""
    clock, streams = Clock(), {}
    watch = ReadWatch(clock, streams)
    a = FakeRelay(streams, 1, clock, 10)
    watch.watch(a.read_due())
    clock.advance(1)
    b = FakeRelay(streams, 3, clock, 10)
    watch.watch(b.read_due())
    assert len(clock.getDelayedCalls()) == 1
    c = FakeRelay(streams, 5, clock, 3)
    watch.watch(c.read_due())
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.9)
    assert (a.timed_out, b.timed_out, c.timed_out) == (0, 0, 0)
    clock.advance(0.2)  # 4.1 s: c's deadline (4.0) passed
    assert (a.timed_out, b.timed_out, c.timed_out) == (0, 0, 1)
    clock.advance(5.8)  # 9.9 s
    assert a.timed_out == 0
    clock.advance(0.2)  # 10.1 s
    assert (a.timed_out, b.timed_out) == (1, 0)
    clock.advance(1)
    assert b.timed_out == 1 and clock.getDelayedCalls() == []


def test_activity_moves_a_deadline_and_an_early_call_only_rearms():
    """Backend activity moves ``last``: the call fires at the old deadline, finds the stream
    not due and sleeps on until the new one; a disarmed stream is never told."""
    clock, streams = Clock(), {}
    watch = ReadWatch(clock, streams)
    a = FakeRelay(streams, 1, clock, 10)
    b = FakeRelay(streams, 3, clock, 10)
    watch.watch(a.read_due())
    clock.advance(6)
    a.last = clock.seconds()
    b.armed = False  # its response completed
    clock.advance(4.5)
    assert (a.timed_out, b.timed_out) == (0, 0) and len(clock.getDelayedCalls()) == 1
    clock.advance(5.6)
    assert (a.timed_out, b.timed_out) == (1, 0) and clock.getDelayedCalls() == []


def test_a_stream_leaving_or_the_connection_stopping_leaves_no_call():
    """Streams that finished are no longer in the dict (nothing to tell); ``stop`` (the
    connection is gone) cancels the pending call: the timer dies with its owner."""
    clock, streams = Clock(), {}
    watch = ReadWatch(clock, streams)
    a = FakeRelay(streams, 1, clock, 10)
    watch.watch(a.read_due())
    del streams[1]
    clock.advance(11)
    assert a.timed_out == 0 and clock.getDelayedCalls() == []
    b = FakeRelay(streams, 3, clock, 10)
    watch.watch(b.read_due())
    watch.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(20)
    assert b.timed_out == 0


def test_a_stream_timing_out_may_arm_again_during_the_check():
    """A stream told it timed out may start again at once (a retry arms its read timer): the
    watch keeps one call, due at the earliest of the new and the remaining deadlines."""
    clock, streams = Clock(), {}
    watch = ReadWatch(clock, streams)
    a = FakeRelay(streams, 1, clock, 10)
    b = FakeRelay(streams, 3, clock, 30)

    def retry():
        a.timed_out += 1
        a.last = clock.seconds()
        watch.watch(a.read_due())

    a.read_timed_out = retry
    watch.watch(a.read_due())
    clock.advance(10)
    assert a.timed_out == 1 and len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 20
    clock.advance(10)
    assert a.timed_out == 2 and b.timed_out == 0
