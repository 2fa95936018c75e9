"""The supervisor's pure decisions (proxyd.workerpolicy): worker counts, restart delays, the
plan of a configuration, and the line protocol between supervisor and workers."""

import json

import pytest

import proxyd
from proxyd.config import parse_config
from proxyd.workerpolicy import (LineSplitter, ProtocolError, RestartBackoff, decode, encode,
                                 plan_of, worker_count)


@pytest.mark.parametrize("setting, cpus, expected", [
    ("auto", 2, 2), ("auto", 16, 16), ("auto", 0, 1), ("auto", None, 1), (1, 8, 1), (3, 1, 3),
])
def test_worker_count(setting, cpus, expected):
    """auto is one worker per usable core (at least one); a number is taken as it is."""
    assert worker_count(setting, cpus) == expected


def test_restart_delays_double_and_reset_after_a_stable_run():
    """Crashes in a row wait 0.5, 1, 2 ... up to 30 s; a worker that ran 30 s resets its slot;
    slots are independent."""
    backoff = RestartBackoff()
    delays = [backoff.delay(0, started=t, ended=t + 1) for t in range(0, 80, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(1, 0, 1) == 0.5
    assert backoff.delay(0, started=100, ended=131) == 0.5
    assert backoff.delay(0, started=200, ended=201) == 1.0
    backoff.forget(0)
    assert backoff.delay(0, started=300, ended=301) == 0.5


def test_plan_holds_what_the_supervisor_acts_on(tmp_path):
    """The plan: worker count (auto resolved), listen endpoints in order, metrics endpoint and
    health path, graceful_shutdown, the package version; plain JSON."""
    config = parse_config({
        "workers": "auto",
        "listen": [{"endpoint": "tcp:8080"}, {"endpoint": "unix:/run/p.sock"}],
        "backends": [{"address": "127.0.0.1:8081"}],
        "metrics": {"endpoint": "tcp:9100", "health_path": "/ready"},
        "timeouts": {"graceful_shutdown": "7s"},
    }, str(tmp_path))
    plan = plan_of(config, cpus=4)
    assert plan == {"plan": 1, "version": proxyd.__version__, "workers": 4,
                    "listen": ["tcp:8080", "unix:/run/p.sock"],
                    "metrics": {"endpoint": "tcp:9100", "health_path": "/ready"},
                    "graceful_shutdown": 7.0}
    assert json.loads(json.dumps(plan)) == plan
    single = parse_config({"workers": 1, "listen": [{"endpoint": "tcp:8080"}],
                           "backends": [{"address": "127.0.0.1:8081"}]}, str(tmp_path))
    assert plan_of(single, cpus=4)["workers"] == 1 and plan_of(single, 4)["metrics"] is None


def test_lines_survive_any_chunking():
    """Messages split anywhere by the pipe come out whole and in order."""
    messages = [{"op": "log", "event": "x" * 300}, {"op": "ready", "pid": 7}, {"op": "go"}]
    data = b"".join(encode(m) for m in messages)
    for size in (1, 2, 7, 64, len(data)):
        splitter = LineSplitter()
        lines = []
        for i in range(0, len(data), size):
            lines += splitter.feed(data[i:i + size])
        assert [decode(line) for line in lines] == messages
        assert splitter.pending == b""


def test_protocol_errors():
    """A line past the bound, non-JSON, or JSON without an op is a ProtocolError."""
    splitter = LineSplitter(max_line=10)
    with pytest.raises(ProtocolError):
        splitter.feed(b"x" * 11)
    assert splitter.feed(b'{"op":"go"}\n') == [b'{"op":"go"}']
    for line in (b"not json", b"[1, 2]", b'{"no": "op"}', b'{"op": 3}'):
        with pytest.raises(ProtocolError):
            decode(line)


def test_accept_share_pauses_a_worker_ahead_of_its_least_loaded_peer():
    """A worker holding more than one connection more than its least loaded peer pauses; it
    resumes as soon as that is no longer so; without peers it never pauses."""
    from proxyd.workerpolicy import PAUSE, RESUME, AcceptShare

    share = AcceptShare()
    assert share.decide(5, [], 0.0) is None  # alone: accept whatever comes
    assert share.decide(1, [0], 0.0) is None
    assert share.decide(2, [0, 7], 0.0) is PAUSE and share.paused_since == 0.0
    assert share.decide(2, [0, 7], 0.01) is None  # still ahead: stays paused
    assert share.decide(2, [1, 7], 0.02) is RESUME and share.paused_since is None
    assert share.decide(3, [1], 0.03) is PAUSE
    assert share.decide(2, [1], 0.04) is RESUME  # its own connection closed


def test_accept_share_resumes_when_connections_wait_and_no_peer_takes_them():
    """Paused while connections wait in the backlog for ``give_up`` seconds (a peer does not
    accept: stuck), the worker accepts again and does not pause for ``holdoff`` seconds; a
    backlog that empties in between restarts the wait."""
    from proxyd.workerpolicy import PAUSE, RESUME, AcceptShare

    share = AcceptShare(slack=1, give_up=0.1, holdoff=1.0)
    assert share.decide(4, [0], 10.0) is PAUSE
    assert share.decide(4, [0], 10.05, pending=True) is None
    assert share.decide(4, [0], 10.1, pending=False) is None  # the peer took them
    assert share.decide(4, [0], 10.12, pending=True) is None
    assert share.decide(4, [0], 10.2, pending=True) is None  # 0.08 s of waiting
    assert share.decide(4, [0], 10.22, pending=True) is RESUME  # 0.1 s: given up
    assert share.decide(5, [0], 10.5) is None  # holding off
    assert share.decide(6, [0], 11.2) is None
    assert share.decide(7, [0], 11.23) is PAUSE  # the hold-off is over


def test_accept_share_a_decision_without_a_look_at_the_backlog_keeps_the_wait():
    """A decision that did not look at the backlog (``pending`` None: a connection of this
    worker opened or closed) neither starts nor restarts the wait for ``give_up``."""
    from proxyd.workerpolicy import PAUSE, RESUME, AcceptShare

    share = AcceptShare(slack=1, give_up=0.1, holdoff=1.0)
    assert share.decide(40, [0], 10.0) is PAUSE
    assert share.decide(40, [0], 10.0, pending=True) is None
    assert share.decide(39, [0], 10.06) is None  # a close: the wait goes on
    assert share.decide(39, [0], 10.15, pending=True) is RESUME
