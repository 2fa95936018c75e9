"""A wall clock that a test can step, for the daemon under test only (never imported by proxyd).

Strategy: NTP or an administrator stepping the clock changes ``time.time()`` (CLOCK_REALTIME)
and nothing else; ``time.monotonic()`` goes on. This module is put first on ``PYTHONPATH`` by
:class:`tests.e2e.harness.WallClock`, so Python imports it at start-up (``sitecustomize``),
before Twisted takes its reference to ``time.time``. When ``PROXYD_TEST_WALLCLOCK`` names a
file, ``time.time`` returns the real wall clock plus an offset, and SIGUSR2 (which proxyd does
not use) reads the new offset (seconds, a float) from that file and acknowledges it by writing
it to ``FILE.ack``. Without the variable nothing changes. The machine's clock is never touched.
"""

import os
import signal
import time

_PATH = os.environ.get("PROXYD_TEST_WALLCLOCK")

if _PATH:
    _real_time = time.time
    _offset = 0.0

    def _stepped_time():
        """The real wall clock plus the offset of the last step."""
        return _real_time() + _offset

    def _step(signum, frame):
        """SIGUSR2: take the offset the test wrote, and say so."""
        global _offset
        with open(_PATH) as stream:
            _offset = float(stream.read())
        with open(_PATH + ".tmp", "w") as stream:
            stream.write(repr(_offset))
        os.replace(_PATH + ".tmp", _PATH + ".ack")

    time.time = _stepped_time
    signal.signal(signal.SIGUSR2, _step)
