"""Fixtures of the end-to-end suite: free ports, a self-signed certificate, the demo backend and
the real daemon as subprocesses (see harness.py for the helpers themselves)."""

import pytest

from . import harness
from .harness import Backend, NginxBackend, Proxy, base_config


@pytest.fixture
def free_port():
    """A function returning a TCP port on 127.0.0.1 that is free right now."""
    return harness.free_port


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """(cert, key) paths of a self-signed certificate for 127.0.0.1 and localhost."""
    return harness.make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def backend():
    """A fresh demo backend (its own counters) for one test."""
    b = Backend()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def nginx_backend(tmp_path):
    """nginx serving tmp files (its .root directory) on a free port."""
    n = NginxBackend(tmp_path / "nginx")
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def shared_backend():
    """One demo backend for a whole module (tests that do not look at its counters)."""
    b = Backend()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def start_proxyd(tmp_path):
    """start_proxyd(config: dict, wait=True, **Proxy options) -> Proxy; every daemon started is
    stopped after."""
    started = []
    counter = [0]

    def start(config, wait=True, **options):
        counter[0] += 1
        p = Proxy(config, tmp_path / f"proxyd-{counter[0]}", wait=wait, **options)
        started.append(p)
        return p

    yield start
    for p in started:
        try:
            if p.alive():
                p.stop(timeout=15)
        finally:
            p.kill()


@pytest.fixture
def make_config(tls_cert):
    """make_config(backend, **sections) -> a default-mode config dict with fresh ports."""
    cert, key = tls_cert

    def make(backend, **kw):
        return base_config(backend, cert, key, **kw)

    return make


@pytest.fixture
def proxy(backend, start_proxyd, make_config):
    """proxyd (TLS and cleartext listeners) in front of the per-test backend."""
    return start_proxyd(make_config(backend))


@pytest.fixture(scope="module")
def shared_proxy(shared_backend, tls_cert, tmp_path_factory):
    """proxyd with default header settings in front of shared_backend, for a whole module."""
    cert, key = tls_cert
    with harness.running(base_config(shared_backend, cert, key),
                         tmp_path_factory.mktemp("proxyd")) as p:
        yield p
