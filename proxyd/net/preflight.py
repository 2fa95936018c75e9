"""Checks of a parsed configuration that need Twisted or OpenSSL, run before anything changes.

Strategy: :func:`preflight` does everything that can fail short of binding a socket: it parses
every endpoint string, finds the socket systemd passed for each ``systemd:`` endpoint, and loads
every TLS certificate and key (listeners and backends). All problems are collected and raised
together as :class:`proxyd.config.ConfigErrors` (key path each), so ``--check``, startup and a
SIGHUP reload report the same thing. The listeners' TLS contexts are returned, so that a reload
applies exactly what it checked.

``check_only`` (``--check``, e.g. from ``ExecReload=`` or ``ExecStartPre=``) skips the lookup of
sockets passed by systemd: those belong to the running service, not to the checking process.
"""

from twisted.internet import endpoints

from proxyd.config_schema import Problems
from proxyd.errors import ConfigError
from proxyd.net.backend_tls import client_tls_options
from proxyd.net.factory import tls_context
from proxyd.net.systemd import inherited_socket


def _endpoint(reactor, spec, path, check_only):
    try:
        if spec.startswith("systemd:"):
            if not check_only:
                inherited_socket(spec)
        else:
            endpoints.serverFromString(reactor, spec)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(f"invalid endpoint {spec!r}: {exc}", path) from None


def _backend_tls(backend, path):
    try:
        client_tls_options(backend, warn=False)
    except Exception as exc:  # pyOpenSSL, PEM parsing and file errors alike
        raise ConfigError(f"cannot load TLS files: {exc}", path) from None


def preflight(config, reactor=None, check_only=False):
    """Check ``config`` against the runtime; return {listener index: TLS context}.

    Raises ConfigError (one problem) or ConfigErrors (several).
    """
    if reactor is None:
        from twisted.internet import reactor
    problems = Problems()
    contexts = {}
    for index, listen in enumerate(config.listen):
        problems.attempt(_endpoint, reactor, listen.endpoint, f"listen[{index}].endpoint",
                         check_only)
        if listen.tls is not None:
            context = problems.attempt(tls_context, listen, index)
            if context is not None:
                contexts[index] = context
    for index, backend in enumerate(config.backends):
        if backend.tls is not None:
            problems.attempt(_backend_tls, backend, f"backends[{index}].tls")
    if config.metrics is not None:
        problems.attempt(_endpoint, reactor, config.metrics.endpoint, "metrics.endpoint",
                         check_only)
    problems.raise_if_any()
    return contexts
