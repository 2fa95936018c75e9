"""Fixtures of the protocol tests: in-memory proxies built by :mod:`memproxy` on a MemoryReactorClock."""

import pytest

from memproxy import Proxy, ServiceProxy, base_config


@pytest.fixture
def make_proxy(tmp_path):
    """A function building a Proxy from ``base_config(**sections)``."""

    def make(**sections):
        return Proxy(tmp_path, base_config(**sections))

    return make


@pytest.fixture
def proxy(make_proxy):
    """A Proxy with the default test config."""
    return make_proxy()


@pytest.fixture
def make_service(tmp_path):
    """A function building a started ServiceProxy from ``base_config(**sections)``."""

    def make(**sections):
        return ServiceProxy(tmp_path, base_config(**sections))

    return make
