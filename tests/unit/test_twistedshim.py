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
