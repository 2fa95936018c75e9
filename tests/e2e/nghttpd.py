"""nghttpd (Debian ``nghttp2-server``) as an HTTP/2 backend of the e2e tests, and a test PKI.

:func:`make_pki` makes, with the openssl command, a test CA, a server certificate signed by it for
``app.internal`` and 127.0.0.1, and a second unrelated CA (to configure a wrong trust root).
:class:`Nghttpd` runs ``nghttpd -a 127.0.0.1 -d DOCROOT [--echo-upload] [--no-tls] PORT [KEY
CERT]`` on a free 127.0.0.1 port; every wait has a deadline and :meth:`Nghttpd.stop` is meant for
a fixture finalizer. A missing nghttpd or openssl FAILS (harness.require_tool), never skips.
"""

import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

from .harness import (
    HOST, free_port, make_ca, make_signed_cert, port_accepts, require_tool, stop_process,
    wait_until,
)


def make_pki(directory, hostname="app.internal"):
    """A CA, a server cert/key for ``hostname`` + 127.0.0.1 signed by it, and an unrelated CA.

    Returns a namespace with ``ca``, ``server_cert``, ``server_key``, ``other_ca`` (paths) and
    ``hostname``.
    """
    directory = Path(directory)
    ca = make_ca(directory, "ca")
    other_ca, _other_key = make_ca(directory, "other-ca")
    cert, key = make_signed_cert(directory, "server", ca, subject=f"/CN={hostname}",
                                 san=f"DNS:{hostname},IP:127.0.0.1")
    return SimpleNamespace(ca=ca[0], server_cert=cert, server_key=key, other_ca=other_ca,
                           hostname=hostname)


class Nghttpd:
    """nghttpd serving ``docroot`` on 127.0.0.1: TLS with ``key``/``cert``, or h2c (``tls=False``)."""

    def __init__(self, docroot, workdir, key=None, cert=None, tls=True, port=None,
                 echo_upload=True, extra=()):
        self.docroot = Path(docroot)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key, self.cert, self.tls = key, cert, tls
        self.port = port or free_port()
        self.host = HOST
        self.address = f"{HOST}:{self.port}"
        self.echo_upload = echo_upload
        self.extra = list(extra)
        self.proc = None
        self._log = None
        self.starts = 0
        self.start()

    def command(self):
        cmd = [require_tool("nghttpd"), "-a", HOST, "-d", str(self.docroot), *self.extra]
        if self.echo_upload:
            cmd.append("--echo-upload")
        if not self.tls:
            cmd.append("--no-tls")
        cmd.append(str(self.port))
        if self.tls:
            cmd += [str(self.key), str(self.cert)]
        return cmd

    def start(self, timeout=15):
        """Start (or restart, on the same port) and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        if self._log is not None:
            self._log.close()
        self.log_path = self.workdir / f"nghttpd-{self.starts}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), timeout,
                       what=f"nghttpd to listen on {self.port}")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"nghttpd exited with {self.proc.returncode}: {self.output()}")

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill(self):
        """SIGKILL (a crash: no GOAWAY, connections reset) and wait."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL, timeout=10)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
