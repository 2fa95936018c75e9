"""The twistd entry point: command-line options and ``makeService``.

Strategy: everything that can be wrong with a configuration is found here, before twistd
listens or daemonizes: the YAML is parsed and validated (:mod:`proxyd.config`, every problem at
once), then endpoints, inherited sockets and TLS files are checked
(:mod:`proxyd.net.preflight`). A bad file prints one line per problem, each naming its key path,
to standard error and exits 1, without twistd's usage text (which would bury the error).
``--check`` stops after validation with exit status 0 or 1, like ``nginx -t``; it does not ask
for sockets passed by systemd, so ``ExecReload=`` and ``ExecStartPre=`` can run it.
``--version`` prints proxyd's version (and Twisted's and Python's).

``workers:`` decides what ``makeService`` returns: with one worker the proxy itself
(:class:`proxyd.service.ProxyService`), with more the supervisor of that many worker processes
(:class:`proxyd.net.workers.Supervisor`), to which the file's text is passed as it was read and
validated here, so that its workers parse exactly what was checked.
"""

import platform
import sys

import twisted
from twisted.python import usage

import proxyd
from proxyd.config import ConfigErrors, load_config
from proxyd.errors import ConfigError
from proxyd.net.twistedshim import install_reactor
from proxyd.workerpolicy import plan_of


def report(error, stream=None):
    """Write a ConfigError (or each of ConfigErrors) as ``proxyd: <path>: <problem>`` lines."""
    stream = stream or sys.stderr
    errors = error.errors if isinstance(error, ConfigErrors) else [error]
    for item in errors:
        stream.write(f"proxyd: {item}\n")
    stream.flush()


class Options(usage.Options):
    """``twistd proxyd`` options."""

    synopsis = "[-c FILE] [--check] [--version]"
    optParameters = [
        ["config", "c", "/etc/proxyd/proxy.yaml", "The YAML configuration file."],
    ]
    optFlags = [
        ["check", "t", "Validate the configuration and exit (0: valid, 1: invalid)."],
    ]

    def opt_version(self):
        """Print proxyd's version and exit."""
        sys.stdout.write(f"proxyd {proxyd.__version__} (Twisted {twisted.__version__}, "
                         f"Python {platform.python_version()})\n")
        sys.exit(0)

    def postOptions(self):
        install_reactor()  # before anything imports Twisted's default one
        from proxyd.net.preflight import preflight

        try:
            self.config_text = _read(self["config"])
            self.proxy_config = load_config(self["config"], self.config_text)
            self.tls_contexts = preflight(self.proxy_config, check_only=self["check"])
        except ConfigError as exc:
            report(exc)
            sys.exit(1)
        if self["check"]:
            sys.stdout.write(f"proxyd: configuration {self['config']} is valid\n")
            sys.exit(0)


def _read(path):
    """The file's text, or None to let load_config report why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError):
        return None


def makeService(options):
    """Build the proxy service (one worker) or the supervisor (several) from validated
    options."""
    from proxyd.net.worker import usable_cpus

    plan = plan_of(options.proxy_config, usable_cpus())
    if plan["workers"] > 1:
        from proxyd.net.workers import Supervisor

        return Supervisor(options.proxy_config, plan, options.config_text, options["config"])
    from proxyd.service import ProxyService

    return ProxyService(options.proxy_config, config_path=options["config"],
                        tls_contexts=options.tls_contexts)
