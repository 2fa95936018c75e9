"""systemd integration: readiness notifications, the watchdog, and sockets passed by systemd.

Strategy: no library; the two protocols are small and stable.

* sd_notify: one datagram of ``KEY=value`` lines to the unix socket named by ``NOTIFY_SOCKET``
  (a leading ``@`` means the abstract namespace). :class:`Notifier` sends READY=1 once every
  listener is bound, RELOADING=1 with MONOTONIC_USEC (systemd 253+ wants it) and READY=1 around
  a reload, STOPPING=1, STATUS= lines, and WATCHDOG=1 every half ``WATCHDOG_USEC`` when the unit
  sets ``WatchdogSec=`` (the pings come from the reactor, so a stuck reactor gets restarted).
  Without ``NOTIFY_SOCKET`` every call is a no-op.
* Socket activation: ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` are read once, the first
  time they are asked for (before twistd could fork), and removed from the environment so that no
  child inherits them. ``systemd:domain=INET:index=N`` and ``systemd:domain=INET:name=NAME``
  listener endpoints adopt those descriptors. Twisted's own ``systemd:`` parser is not used: it
  reads the environment when ``twisted.internet.endpoints`` is imported (twistd imports it while
  it looks for plugins, before proxyd runs), deletes the variables, and keeps nothing when
  ``LISTEN_FDNAMES`` is absent (``systemd-socket-activate`` without ``--fdname``): proxyd then
  died of an IndexError. So the variables are read from the process's environment as it was at
  exec time (``/proc/self/environ``) when ``os.environ`` no longer has them. Names are optional
  here, as in ``sd_listen_fds(3)``; a descriptor must be an open socket of the ``domain=`` family.
  The passed descriptors stay open for the life of the process: listeners adopt duplicates.
"""

import os
import socket
import stat
import time

from twisted.internet import endpoints, task
from twisted.logger import Logger

from proxyd.config_schema import split_endpoint

log = Logger(namespace="proxyd.systemd")
SD_LISTEN_FDS_START = 3
_inherited = None


def _exec_environment():
    """The environment this process was started with (Linux), or {}."""
    try:
        with open("/proc/self/environ", "rb") as stream:
            raw = stream.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
            for key, value in pairs}


def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def inherited_sockets(environ=None):
    """The (descriptor, name) pairs passed by systemd to this process; read once, then cached."""
    global _inherited
    if _inherited is not None:
        return _inherited
    environ = os.environ if environ is None else environ
    source = environ if "LISTEN_FDS" in environ else _exec_environment()
    found = []
    if source.get("LISTEN_PID") == str(os.getpid()):
        try:
            count = int(source.get("LISTEN_FDS", "0"))
        except ValueError:
            count = 0
        names = source.get("LISTEN_FDNAMES", "").split(":")
        for i in range(count):
            name = names[i] if i < len(names) and names[i] else "unknown"
            found.append((SD_LISTEN_FDS_START + i, name))
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    _inherited = found
    return found


def _family_of(fd):
    sock = socket.socket(fileno=fd)
    try:
        return sock.family
    finally:
        sock.detach()


def inherited_socket(spec):
    """(descriptor, address family) of the socket systemd passed for ``spec``
    (``systemd:domain=...``).

    Raises ValueError naming what is missing: no such index or name, or a socket of another
    address family than ``domain=`` says.
    """
    _, kwargs = split_endpoint(spec)
    family = getattr(socket, "AF_" + kwargs.get("domain", ""), None)
    if family is None:
        raise ValueError("domain= must be INET, INET6 or UNIX")
    sockets = inherited_sockets()
    if "index" in kwargs:
        try:
            fd = sockets[int(kwargs["index"])][0]
        except (ValueError, IndexError):
            raise ValueError(f"systemd passed no socket at index {kwargs['index']} (it passed "
                             f"{len(sockets)}; is the socket unit active?)") from None
    elif "name" in kwargs:
        fds = [fd for fd, name in sockets if name == kwargs["name"]]
        if len(fds) != 1:
            raise ValueError(f"systemd passed {len(fds)} sockets named {kwargs['name']!r} "
                             "(FileDescriptorName=); use index= when a unit has several")
        fd = fds[0]
    else:
        raise ValueError("needs index=N or name=NAME")
    if not _is_socket(fd):
        raise ValueError(f"descriptor {fd} passed by systemd is not an open socket")
    actual = _family_of(fd)
    if actual != family:
        raise ValueError(f"the socket at this position is {actual.name}, not "
                         f"AF_{kwargs['domain']}")
    return fd, family


def systemd_endpoint(reactor, spec):
    """An endpoint adopting the socket systemd passed for ``spec`` (see
    :func:`inherited_socket`), for listening at once.

    It adopts a duplicate: Twisted's endpoint closes the descriptor it adopted, and the one
    systemd passed must stay open for the life of the process, since a reload looks up every
    ``systemd:`` endpoint again (and adopts it anew when its listener's options changed).
    """
    fd, family = inherited_socket(spec)
    return endpoints.AdoptedStreamServerEndpoint(reactor, os.dup(fd), family)


def server_endpoint(reactor, spec):
    """The Twisted server endpoint for a listener string (TCP listeners get a 1024 backlog)."""
    if spec.startswith("systemd:"):
        return systemd_endpoint(reactor, spec)
    if spec.split(":", 1)[0] in ("tcp", "tcp6") and "backlog=" not in spec:
        spec += ":backlog=1024"
    return endpoints.serverFromString(reactor, spec)


class Notifier:
    """sd_notify over ``NOTIFY_SOCKET``; every method is a no-op when it is not set."""

    def __init__(self, reactor, environ=None):
        environ = os.environ if environ is None else environ
        self.reactor = reactor
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self._watchdog = None
        interval = None
        if environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            try:
                interval = int(environ.get("WATCHDOG_USEC", "")) / 2e6
            except ValueError:
                interval = None
        self.watchdog_interval = interval if interval and interval > 0 else None

    @property
    def enabled(self):
        """True when running under a service manager that listens."""
        return self.address is not None

    def send(self, *lines):
        """Send one notification datagram made of ``lines``; errors are logged, never raised."""
        if self.address is None:
            return False
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            log.warn("sd_notify to {address!r} failed: {err}", address=self.address, err=exc)
            return False
        return True

    def ready(self, status):
        """Every listener is bound (also the end of a reload)."""
        self.send("READY=1", f"STATUS={status}")
        self._start_watchdog()

    def reloading(self):
        """A reload starts; systemd 253+ wants the monotonic time with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status):
        """Graceful shutdown begins (watchdog pings go on while connections drain)."""
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status):
        """A free-form status line (``systemctl status`` shows it)."""
        self.send(f"STATUS={status}")

    def _start_watchdog(self):
        if self.watchdog_interval is None or self.address is None or self._watchdog is not None:
            return
        self._watchdog = task.LoopingCall(self.send, "WATCHDOG=1")
        self._watchdog.clock = self.reactor
        self._watchdog.start(self.watchdog_interval, now=True)

    def close(self):
        """The service stopped: no more watchdog pings."""
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
