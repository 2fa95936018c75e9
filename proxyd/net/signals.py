"""The daemon's signal handlers, installed before its ports open.

Strategy: a process that serves (the single daemon, or the supervisor of workers) installs its
handlers at the start of ``privilegedStartService``: ports accept connections (and the kernel
queues them) before twistd runs the reactor, and a supervisor such as systemd may signal as soon
as they do. SIGHUP (reload) and SIGUSR1 (reopen the access log) go to the service's handler;
SIGTERM and SIGINT stop the reactor once it runs (twistd's reactor then installs its own
handlers, which begin the graceful stop), so a stop asked for in between is a clean stop too,
not death by the signal. A worker installs none: its supervisor signals it.
"""

import signal


def install(reactor, on_signal):
    """Send SIGHUP and SIGUSR1 to ``on_signal(signum, frame)``; SIGTERM/SIGINT stop ``reactor``
    once it runs."""
    def stop_once_running(signum, frame):
        reactor.callWhenRunning(reactor.stop)

    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, stop_once_running)
    signal.signal(signal.SIGINT, stop_once_running)
