"""The twistd entry point: command-line options and ``makeService``.

Strategy: everything that can be wrong with a configuration is found here, before twistd
listens or daemonizes: the YAML is parsed and validated (:mod:`proxyd.config`), TLS files are
loaded and endpoint strings parsed. Errors become ``usage.UsageError`` naming the key path, so
twistd exits non-zero. ``--check`` stops after validation with exit status 0 or 1, like
``nginx -t``.
"""

import sys

from twisted.internet import endpoints
from twisted.python import usage

from proxyd.config import load_config
from proxyd.errors import ConfigError


def validate_runtime(config):
    """Checks that need Twisted or OpenSSL: endpoint strings and TLS files."""
    from twisted.internet import reactor

    from proxyd.net.tls import ServerContextFactory

    for index, listen in enumerate(config.listen):
        try:
            endpoints.serverFromString(reactor, listen.endpoint)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"invalid endpoint {listen.endpoint!r}: {exc}",
                              f"listen[{index}].endpoint")
        if listen.tls is not None:
            ServerContextFactory(listen.tls.cert, listen.tls.key, listen.protocols,
                                 path=f"listen[{index}]")
    from proxyd.net.backend_tls import client_tls_options

    for index, backend in enumerate(config.backends):
        if backend.tls is not None:
            try:
                client_tls_options(backend, warn=False)
            except Exception as exc:  # pyOpenSSL, PEM parsing and file errors alike
                raise ConfigError(f"cannot load TLS files: {exc}", f"backends[{index}].tls")
    if config.metrics:
        try:
            endpoints.serverFromString(reactor, config.metrics)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"invalid endpoint {config.metrics!r}: {exc}", "metrics")


class Options(usage.Options):
    """``twistd proxyd`` options."""

    synopsis = "[-c FILE] [--check]"
    optParameters = [
        ["config", "c", "/etc/proxyd/proxy.yaml", "The YAML configuration file."],
    ]
    optFlags = [
        ["check", "t", "Validate the configuration and exit (0: valid, 1: invalid)."],
    ]

    def postOptions(self):
        try:
            self.proxy_config = load_config(self["config"])
            validate_runtime(self.proxy_config)
        except ConfigError as exc:
            if self["check"]:
                sys.stderr.write(f"proxyd: {exc}\n")
                sys.exit(1)
            raise usage.UsageError(str(exc))
        if self["check"]:
            sys.stdout.write(f"proxyd: configuration {self['config']} is valid\n")
            sys.exit(0)


def makeService(options):
    """Build the proxy service from validated options."""
    from proxyd.service import ProxyService

    return ProxyService(options.proxy_config, config_path=options["config"])
