"""SIGHUP reload of the real daemon: new connections follow the new file, a bad file is ignored.

Strategy: two demo backends tell requests apart by their own request counters; the daemon's
config file is rewritten in place and SIGHUP sent; every wait polls with a deadline.
"""

import os
import signal

import yaml

from .harness import Backend, curl, wait_until


def _rewrite(proxy, config):
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.kill(proxy.pid, signal.SIGHUP)


def test_sighup_switches_backends_and_header_rules(start_proxyd, make_config, tmp_path):
    """After SIGHUP, new connections go to the new backend with the new header rules."""
    first, second = Backend(), Backend()
    try:
        config = make_config(first)
        proxy = start_proxyd(config)
        before = curl(proxy.url("/echo"), mode="h2c", tmpdir=tmp_path / "a")
        assert before.status == 200 and first.count()["requests"] == 1

        config["backends"][0]["address"] = second.address
        config["headers"] = {"via": False}
        _rewrite(proxy, config)
        wait_until(lambda: "reloaded" in proxy.log_text(), 10, what="reload logged")

        after = curl(proxy.url("/echo"), mode="h2c", tmpdir=tmp_path / "b")
        assert after.status == 200
        assert second.count()["requests"] == 1
        names = [name.lower() for name, _ in after.json()["headers"]]
        assert "via" not in names
        assert first.count()["requests"] == 1
    finally:
        first.stop()
        second.stop()


def test_sighup_with_a_broken_file_keeps_running(start_proxyd, make_config, backend, tmp_path):
    """An invalid file on SIGHUP is logged with its key path; the old configuration serves on."""
    config = make_config(backend)
    proxy = start_proxyd(config)
    broken = dict(config, mode="sideways")
    _rewrite(proxy, broken)
    wait_until(lambda: "reload failed" in proxy.log_text(), 10, what="reload failure logged")
    assert "mode: must be one of" in proxy.log_text()
    assert proxy.alive()
    result = curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path / "c")
    assert result.status == 200
