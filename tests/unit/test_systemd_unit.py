"""Tests of systemd/proxyd.service and proxyd.socket: ``systemd-analyze verify`` accepts them;
the notify protocol, the checked reload and the hardening are there.

Strategy: ``systemd-analyze verify`` works without a running systemd (``--man=no`` skips the man
page lookups for Documentation=), but it insists that ExecStart= binaries exist, so the unit is
verified from a temp copy in which ``/opt/proxyd/bin/twistd`` (the documented install layout) is
replaced by a twistd that exists here.
Unknown keys and bad values are only warnings for systemd (exit status 0), so any output line
naming the unit fails the test too. The keys themselves are checked from a small parse of the unit
file. A missing systemd-analyze fails the run (CI installs it) rather than skipping.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from proxyd.config import Timeouts, parse_duration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(REPO, "systemd", "proxyd.service")
SOCKET = os.path.join(REPO, "systemd", "proxyd.socket")
TWISTD = "/opt/proxyd/bin/twistd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def unit_text():
    """The unit file's text."""
    with open(UNIT, encoding="utf-8") as stream:
        return stream.read()


def parse_unit(text):
    """Return {section: {key: [values...]}} of a unit file (comments and blank lines dropped)."""
    sections, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def local_twistd():
    """A twistd executable that exists on this machine (to stand in for /usr/bin/twistd)."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "twistd")
    for candidate in (beside_python, shutil.which("twistd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return sys.executable  # still an existing executable: verify then checks the unit's syntax


def verify(text, tmp_path, name="proxyd.service"):
    """Run ``systemd-analyze verify`` on ``text``; return (exit status, problems about the unit)."""
    assert os.access(SYSTEMD_ANALYZE, os.X_OK), "systemd-analyze is required (apt install systemd)"
    path = tmp_path / name
    path.write_text(text)
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", SYSTEMD_LOG_LEVEL="notice")
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if name in line or str(path) in line]
    return result.returncode, problems


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The unit (with twistd pointed at one that exists) verifies without any complaint."""
    text = unit_text()
    assert TWISTD in text
    status, problems = verify(text.replace(TWISTD, local_twistd()), tmp_path)
    assert (status, problems) == (0, [])


@pytest.mark.parametrize("old, new, expected", [
    ("NoNewPrivileges=yes", "NoNewPriviledges=yes", "Unknown key"),
    ("RestartSec=2s", "RestartSec=soon", "Failed to parse sec value"),
    ("ExecStart={twistd}", "ExecStart=/nonexistent/twistd", "/nonexistent/twistd"),
])
def test_verify_catches_broken_units(tmp_path, old, new, expected):
    """The verify helper really detects typos, bad values and a missing binary."""
    twistd = local_twistd()
    runnable = unit_text().replace(TWISTD, twistd)
    broken = runnable.replace(old.format(twistd=twistd), new, 1)
    assert broken != runnable
    status, problems = verify(broken, tmp_path)
    assert status != 0 or problems
    assert any(expected in line for line in problems), problems


CHECK = f"{TWISTD} --nodaemon --pidfile= --logfile=- proxyd --check -c /etc/proxyd/proxy.yaml"


def test_commands():
    """Type=notify; ExecStart runs twistd in the foreground with the journal log observer;
    ExecStartPre checks the same config; reload checks the file first, then sends SIGHUP."""
    service = parse_unit(unit_text())["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [
        f"{TWISTD} --nodaemon --pidfile= --logger=proxyd.net.journal.observer proxyd "
        "-c /etc/proxyd/proxy.yaml"]
    assert service["ExecStartPre"] == [CHECK]
    assert service["ExecReload"] == [CHECK, "/bin/kill -HUP $MAINPID"]
    assert service["WatchdogSec"] == ["30s"]


def test_the_journal_logger_named_by_the_unit_exists():
    """--logger names a real observer factory (twistd would fail to start otherwise)."""
    from proxyd.net.journal import observer
    assert callable(observer)


def test_socket_unit_verifies_and_matches_the_documented_endpoints(tmp_path):
    """proxyd.socket verifies cleanly and passes IPv4 sockets, matching domain=INET endpoints
    in its own comment, in the documented order (443 then 80)."""
    with open(SOCKET, encoding="utf-8") as stream:
        text = stream.read()
    shutil.copy(UNIT, tmp_path / "proxyd.service")
    (tmp_path / "proxyd.service").write_text(unit_text().replace(TWISTD, local_twistd()))
    status, problems = verify(text, tmp_path, name="proxyd.socket")
    assert (status, problems) == (0, [])
    socket_section = parse_unit(text)["Socket"]
    assert socket_section["ListenStream"] == ["0.0.0.0:443", "0.0.0.0:80"]
    assert '"systemd:domain=INET:index=0"' in text and '"systemd:domain=INET:index=1"' in text


HARDENING = {
    "User": "proxyd", "Group": "proxyd", "Restart": "on-failure", "KillSignal": "SIGTERM",
    "KillMode": "mixed",  # the supervisor stops its workers itself
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "LogsDirectory": "proxyd", "ConfigurationDirectory": "proxyd", "LimitNOFILE": "65536",
}


@pytest.mark.parametrize("key, value", sorted(HARDENING.items()))
def test_hardening_key(key, value):
    """Each required [Service] setting is present exactly once with the expected value."""
    assert parse_unit(unit_text())["Service"].get(key) == [value]


def test_memory_deny_write_execute_is_off():
    """MemoryDenyWriteExecute stays off: pyOpenSSL's cffi callbacks (ALPN) need W+X memory."""
    assert "MemoryDenyWriteExecute" not in parse_unit(unit_text())["Service"]


def test_restart_and_unit_ordering():
    """RestartSec is set; the unit starts after the network is online and is enabled for boot."""
    unit = parse_unit(unit_text())
    assert unit["Service"]["RestartSec"][0]
    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_stop_timeout_exceeds_graceful_shutdown():
    """TimeoutStopSec leaves room for the default and the example's graceful_shutdown."""
    value = parse_unit(unit_text())["Service"]["TimeoutStopSec"][0]
    stop = int(re.fullmatch(r"(\d+)s?", value)[1])
    assert stop == 40
    with open(os.path.join(REPO, "conf", "proxy.yaml"), encoding="utf-8") as stream:
        example = yaml.safe_load(stream)
    assert stop > Timeouts().graceful_shutdown
    assert stop > parse_duration(example["timeouts"]["graceful_shutdown"])
