"""The one place where proxyd touches a private attribute of Twisted, and why.

Strategy: twistd remembers the signal that stopped the reactor (``reactor._exitSignal``, see
``twisted.internet.interfaces._ISupportsExitSignalCapturing``) and, once the reactor has stopped,
kills its own process with that signal again, so a clean shutdown on SIGTERM would exit with
status -15 and systemd would call it a failure. A graceful stop that drained every connection is a
clean exit (status 0), so the service forgets the signal. ``tests/unit/test_twistedshim.py`` pins
the behaviour this relies on against the installed Twisted.
"""


def forget_exit_signal(reactor):
    """Make twistd exit 0 after a graceful stop that a signal started."""
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
