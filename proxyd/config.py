"""Configuration: YAML file -> validated, frozen dataclasses.

Strategy: ``yaml.safe_load`` (a SafeLoader that also rejects duplicate keys) gives plain dicts and
lists; one small parser per section checks types, ranges and unknown keys (with a difflib
did-you-mean) and builds a frozen, slotted dataclass. Every error is a
:class:`~proxyd.errors.ConfigError` whose ``path`` is the exact key path (``listen[0].tls.cert``),
so a bad file is rejected before anything listens. Relative file paths (TLS files, ``access_log``)
are resolved against the directory of the config file. The scalar parsers and generic checkers
live in :mod:`proxyd.config_schema`. This module is pure: it never imports twisted or socket.

Decisions beyond DESIGN.md §3 (also documented in ``conf/proxy.yaml``):

* sizes: ``KiB``/``MiB``/``GiB`` powers of 1024, ``KB``/``MB``/``GB`` powers of 1000; bare
  ``K``/``M``/``G`` are rejected as ambiguous (see :func:`parse_size`).
* rate-limit buckets: a missing ``rate``/``burst`` is 0; ``rate > 0`` with ``burst == 0`` gets
  ``burst = rate`` (one second's worth); ``rate == 0`` means unlimited and then ``burst`` must be 0.
  ``requests_per_ip`` takes plain integers (requests), the others sizes (bytes).
* a key whose value is null is treated as absent (its default applies).
* every problem of a file is reported in one pass (:class:`ConfigErrors`, one line each), so a
  user fixes a file once; a single problem is raised as the plain ConfigError.
* endpoints that would fight over one socket (the metrics listener on a listener's port, two
  listeners on one port through different spellings) are errors.
* ``limits.max_pending_requests`` must be >= 1 (a queue always has a bound);
  ``limits.max_header_list_size`` >= 1024.
"""

import os
from dataclasses import dataclass

import yaml

from proxyd.config_schema import (
    ConfigErrors, Problems, StrictLoader, backend_address, boolean, count, endpoint,
    endpoint_clashes, integer, join, log_path, non_empty_list, parse_duration, parse_size,
    readable_file, require, section, string, workers,
)
from proxyd.config_routes import parse_routes, parse_shared, parse_trusted_proxies
from proxyd.config_tls import ListenerCertificate, ListenerTLS, client_cert_header, listener_tls
from proxyd.errors import ConfigError

__all__ = [
    "AccessLog", "Backend", "BackendTLS", "Bucket", "Config", "ConfigErrors", "HeaderPolicy",
    "Limits", "Listener", "ListenerCertificate", "ListenerTLS", "Metrics", "RateLimits",
    "Timeouts", "load_config", "parse_config", "parse_duration", "parse_size",
]

MODES = ("default", "client", "bridge")
FRONTEND_PROTOCOLS = ("h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1")
# Frontend protocols each mode may offer (DESIGN.md §1), and the one backend protocol it speaks.
MODE_FRONTENDS = {
    "default": ("h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1"),
    "client": ("http/1.1", "h2"),
    "bridge": ("h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1"),
}
MODE_BACKEND = {"default": "http/1.1", "client": "h2", "bridge": "h2"}
BACKEND_PROTOCOLS = ("http/1.1", "h2")
X_FORWARDED_FOR = ("append", "replace", "off")
ACCESS_LOG_FORMATS = ("proxyd", "combined", "json")
DEFAULT_PROTOCOLS = ("h2", "http/1.1")

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening endpoint (a Twisted server endpoint string) and its ALPN offer, in order."""

    endpoint: str
    tls: ListenerTLS | None = None
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    proxy_protocol: bool = False  # every connection starts with a PROXY v1 or v2 header
    # RFC 8441: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL on HTTP/2 (WebSocket over HTTP/2).
    enable_connect_protocol: bool = True
    # RFC 7540 §3.2: answer ``Upgrade: h2c`` on cleartext listeners that offer h2.
    h2c_upgrade: bool = True


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """TLS toward a backend.

    ``ca`` None means the system trust store; ``cert``/``key`` (both or neither) a client
    certificate; ``server_name`` None means the backend's host (SNI and the identity verified).
    """

    ca: str | None = None
    server_name: str | None = None
    verify: bool = True
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend; for ``unix:/path`` addresses ``host`` is ``""`` and ``port`` is 0."""

    address: str
    host: str
    port: int
    unix_path: str | None = None
    protocol: str = "http/1.1"
    tls: BackendTLS | None = None
    max_connections: int = 100


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Header rewriting switches.

    ``x_forwarded_for`` and ``forwarded`` (RFC 7239) are ``append``, ``replace`` or ``off``;
    ``client_cert_header`` is the lower-case name (bytes) of the header that carries a verified
    client certificate's subject to the backends, always removed from what clients send, or
    None (off).
    """

    x_forwarded_for: str = "append"
    x_forwarded_proto: bool = True
    via: bool = True
    location_rewrite: bool = True
    forwarded: str = "off"
    client_cert_header: bytes | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate`` bytes (or requests) per second, ``burst`` capacity; rate 0 = off."""

    rate: int = 0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-connection, per-process and per-client-IP rate limits."""

    read: Bucket = Bucket()
    write: Bucket = Bucket()
    worker_read: Bucket = Bucket()
    worker_write: Bucket = Bucket()
    requests_per_ip: Bucket = Bucket()


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource bounds; 0 means unlimited except where noted in ``conf/proxy.yaml``."""

    max_concurrent_streams: int = 100
    max_header_list_size: int = 64 * KiB
    max_request_body: int = 0
    max_connections: int = 0
    max_connections_per_ip: int = 0
    max_pending_requests: int = 16384
    shared: object = None  # proxyd.config_routes.SharedLimits: per-IP limits kept in Redis


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds (floats)."""

    frontend_idle: float = 60.0
    frontend_header: float = 15.0
    backend_connect: float = 5.0
    backend_read: float = 60.0
    graceful_shutdown: float = 30.0
    tunnel_idle: float = 600.0  # a WebSocket tunnel with no byte either way for this long ends


@dataclass(frozen=True, slots=True)
class AccessLog:
    """Where access lines go (an absolute path, or "-" for stdout) and in which format."""

    path: str
    format: str = "proxyd"


@dataclass(frozen=True, slots=True)
class Metrics:
    """The metrics listener (a server endpoint string) and its health-check path."""

    endpoint: str
    health_path: str = "/healthz"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    mode: str
    listen: tuple[Listener, ...]
    backends: tuple[Backend, ...]
    headers: HeaderPolicy = HeaderPolicy()
    rate_limits: RateLimits = RateLimits()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    access_log: AccessLog | None = None
    metrics: Metrics | None = None
    routes: tuple = ()            # proxyd.config_routes.Route, in file order
    trusted_proxies: tuple = ()   # ipaddress networks
    workers: int | str = "auto"   # processes: a number >= 1, or "auto" (one per core)


# --------------------------------------------------------------------------- loading


def load_config(path, text=None):
    """Read, parse and validate the YAML file at ``path``; raise ConfigError naming the file.

    A missing or unreadable file and a YAML syntax error (with its line and column) are reported in
    the message, with an empty key path. ``text``, when given, is the file's content as read
    earlier (worker processes parse the copy their supervisor read); ``path`` still names it.
    """
    try:
        if text is None:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8: {exc.reason}") from None
    except RecursionError:  # PyYAML's composer recurses once per nested collection
        raise ConfigError(f"YAML in '{path}' is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"YAML syntax error in '{path}'{where}: {detail}") from None
    return parse_config(data, os.path.dirname(os.path.abspath(path)))


def parse_config(data, base_dir):
    """Validate ``data`` (what ``yaml.safe_load`` returned) into a :class:`Config`.

    ``base_dir`` is the directory relative file paths are resolved against (made absolute).
    Every problem found is reported: one as its ConfigError, several as :class:`ConfigErrors`.
    """
    base_dir = os.path.abspath(base_dir)
    problems = Problems()
    top = section(data, "", _TOP_KEYS, elsewhere=_SECTION_KEYS, problems=problems)
    mode = top.get("mode")
    mode = "default" if mode is None else mode
    if mode not in MODES:
        problems.add(ConfigError(f"must be one of {', '.join(MODES)}", "mode"))
        mode = None  # unknown: check what does not depend on it
    listen = problems.attempt(non_empty_list, top.get("listen"), "listen", default=[])
    listeners = [problems.attempt(_listener, item, f"listen[{i}]", mode, base_dir, problems)
                 for i, item in enumerate(listen)]
    backends = [] if top.get("backends") is None and top.get("routes") else problems.attempt(
        non_empty_list, top.get("backends"), "backends", default=[])
    backends = [problems.attempt(_backend, item, f"backends[{i}]", mode, base_dir, problems)
                for i, item in enumerate(backends)]
    metrics_data = top.get("metrics")
    metrics = problems.attempt(_metrics, metrics_data, "metrics", problems)
    named = [(f"listen[{i}].endpoint", lst.endpoint) for i, lst in enumerate(listeners) if lst]
    for i, (where, text) in enumerate(named):
        for other_where, other in named[:i]:
            if other == text:
                problems.add(ConfigError(f"duplicate of {other_where}", where))
                break
    if metrics is not None:
        named.append(("metrics" if isinstance(metrics_data, str) else "metrics.endpoint",
                      metrics.endpoint))
    for error in endpoint_clashes([(w, t) for w, t in named if
                                   not any(e.path == w for e in problems.errors)]):
        problems.add(error)
    headers = problems.attempt(_headers, top.get("headers"), "headers", problems)
    routes = problems.attempt(parse_routes, top.get("routes"), "routes", backend=_backend,
                              headers=headers, base_dir=base_dir, mode=mode, problems=problems,
                              default=())
    config = Config(
        mode=mode,
        listen=tuple(listeners),
        backends=tuple(backends),
        headers=headers,
        rate_limits=problems.attempt(_rate_limits, top.get("rate_limits"), "rate_limits",
                                     problems),
        limits=problems.attempt(_limits, top.get("limits"), "limits", problems),
        timeouts=problems.attempt(_timeouts, top.get("timeouts"), "timeouts", problems),
        access_log=problems.attempt(_access_log, top.get("access_log"), "access_log", base_dir,
                                    problems),
        metrics=metrics,
        routes=routes,
        trusted_proxies=problems.attempt(parse_trusted_proxies, top.get("trusted_proxies"),
                                         "trusted_proxies", default=()),
        workers=problems.attempt(workers, top.get("workers"), "workers", default="auto"),
    )
    problems.raise_if_any()
    return config


# --------------------------------------------------------------------------- section parsers

_SECTION_KEYS = {
    "headers": ("x_forwarded_for", "x_forwarded_proto", "via", "location_rewrite", "forwarded",
                "client_cert_header"),
    "rate_limits": ("read", "write", "worker_read", "worker_write", "requests_per_ip"),
    "limits": ("max_concurrent_streams", "max_header_list_size", "max_request_body",
               "max_connections", "max_connections_per_ip", "max_pending_requests", "shared"),
    "timeouts": ("frontend_idle", "frontend_header", "backend_connect", "backend_read",
                 "graceful_shutdown", "tunnel_idle"),
    "access_log": ("path", "format"),
    "metrics": ("endpoint", "health_path"),
}
_TOP_KEYS = ("mode", "listen", "backends", "headers", "rate_limits", "limits", "timeouts",
             "access_log", "metrics", "routes", "trusted_proxies", "workers")


def _off(value):
    """True for an absent (null) or ``false`` optional feature."""
    return value is None or value is False


def _listener(data, path, mode, base_dir, problems):
    item = section(data, path, ("endpoint", "tls", "protocols", "proxy_protocol",
                                "enable_connect_protocol", "h2c_upgrade"), problems=problems)
    before = len(problems.errors)
    where = join(path, "endpoint")
    listen_on = problems.attempt(
        lambda: endpoint(require(item, path, "endpoint"), where))
    tls = problems.attempt(listener_tls, item.get("tls"), join(path, "tls"), base_dir, problems)
    protocols = DEFAULT_PROTOCOLS
    if item.get("protocols") is not None:
        protocols = problems.attempt(_protocols, item["protocols"], join(path, "protocols"),
                                     mode, problems, default=DEFAULT_PROTOCOLS)
    proxied = problems.attempt(boolean, item.get("proxy_protocol"), join(path, "proxy_protocol"),
                               False, default=False)
    connect = problems.attempt(boolean, item.get("enable_connect_protocol"),
                               join(path, "enable_connect_protocol"), True, default=True)
    h2c = problems.attempt(boolean, item.get("h2c_upgrade"), join(path, "h2c_upgrade"), True,
                           default=True)
    if len(problems.errors) > before:
        return None
    return Listener(endpoint=listen_on, tls=tls, protocols=protocols, proxy_protocol=proxied,
                    enable_connect_protocol=connect, h2c_upgrade=h2c)


def _protocols(value, proto_path, mode, problems):
    raw = non_empty_list(value, proto_path)
    allowed = MODE_FRONTENDS.get(mode, FRONTEND_PROTOCOLS)
    for i, proto in enumerate(raw):
        where = f"{proto_path}[{i}]"
        if proto not in FRONTEND_PROTOCOLS:
            problems.add(ConfigError(f"must be one of {', '.join(FRONTEND_PROTOCOLS)}", where))
        elif proto not in allowed:
            problems.add(ConfigError(f"{proto} is not available in {mode} mode (allowed: "
                                     f"{', '.join(allowed)})", where))
        elif proto in raw[:i]:
            problems.add(ConfigError(f"duplicate protocol {proto}", where))
    return tuple(raw)


def _backend_tls(data, path, base_dir, problems):
    if _off(data):
        return None
    if data is True:
        return BackendTLS()
    if not isinstance(data, dict):
        raise ConfigError("must be true, false or a mapping", path)
    item = section(data, path, ("ca", "server_name", "verify", "cert", "key"), problems=problems)
    if (item.get("cert") is None) != (item.get("key") is None):
        missing = "key" if item.get("key") is None else "cert"
        problems.add(ConfigError("cert and key must be given together", join(path, missing)))

    def optional_file(key):
        value = item.get(key)
        if value is None:
            return None
        return problems.attempt(readable_file, value, join(path, key), base_dir)

    server_name = item.get("server_name")
    if server_name is not None:
        server_name = problems.attempt(string, server_name, join(path, "server_name"))
    return BackendTLS(
        ca=optional_file("ca"),
        server_name=server_name,
        verify=problems.attempt(boolean, item.get("verify"), join(path, "verify"), True,
                                default=True),
        cert=optional_file("cert"),
        key=optional_file("key"),
    )


def _backend(data, path, mode, base_dir, problems):
    item = section(data, path, ("address", "protocol", "tls", "max_connections"),
                   problems=problems)
    before = len(problems.errors)
    where = join(path, "address")
    address = problems.attempt(lambda: string(require(item, path, "address"), where))
    host, port, unix_path = problems.attempt(backend_address, address, where,
                                             default=("", 0, None)) if address else ("", 0, None)
    protocol = item.get("protocol")
    if protocol is None:
        protocol = MODE_BACKEND.get(mode, "http/1.1")
    elif protocol not in BACKEND_PROTOCOLS:
        problems.add(ConfigError(f"must be one of {', '.join(BACKEND_PROTOCOLS)}",
                                 join(path, "protocol")))
    elif mode is not None and protocol != MODE_BACKEND[mode]:
        problems.add(ConfigError(f"must be {MODE_BACKEND[mode]} in {mode} mode",
                                 join(path, "protocol")))
    tls = problems.attempt(_backend_tls, item.get("tls"), join(path, "tls"), base_dir, problems)
    max_connections = problems.attempt(integer, item.get("max_connections"),
                                       join(path, "max_connections"), 100, 1)
    if len(problems.errors) > before:
        return None
    return Backend(address=address, host=host, port=port, unix_path=unix_path,
                   protocol=protocol, tls=tls, max_connections=max_connections)


def _headers(data, path, problems):
    item = section(data, path, _SECTION_KEYS["headers"], problems=problems)
    modes = {}
    for key, default in (("x_forwarded_for", "append"), ("forwarded", "off")):
        mode = item.get(key)
        mode = default if mode is None else "off" if mode is False else mode
        if mode not in X_FORWARDED_FOR:
            problems.add(ConfigError(f"must be one of {', '.join(X_FORWARDED_FOR)}",
                                     join(path, key)))
        modes[key] = mode
    flags = {key: problems.attempt(boolean, item.get(key), join(path, key), True, default=True)
             for key in ("x_forwarded_proto", "via", "location_rewrite")}
    cert_header = item.get("client_cert_header")
    if not _off(cert_header):
        cert_header = problems.attempt(client_cert_header, cert_header,
                                       join(path, "client_cert_header"))
    return HeaderPolicy(**modes, **flags, client_cert_header=cert_header or None)


def _bucket(data, path, default, parse, problems):
    if data is None:
        return default
    item = section(data, path, ("rate", "burst"), problems=problems)
    rate = 0 if item.get("rate") is None else problems.attempt(
        parse, item["rate"], join(path, "rate"), default=0)
    burst = 0 if item.get("burst") is None else problems.attempt(
        parse, item["burst"], join(path, "burst"), default=0)
    if rate == 0 and burst != 0:
        raise ConfigError("must be 0 when rate is 0 (unlimited)", join(path, "burst"))
    return Bucket(rate=rate, burst=burst or rate)


def _rate_limits(data, path, problems):
    item = section(data, path, _SECTION_KEYS["rate_limits"], problems=problems)
    defaults = RateLimits()
    return RateLimits(**{
        key: problems.attempt(_bucket, item.get(key), join(path, key), getattr(defaults, key),
                              count if key == "requests_per_ip" else parse_size, problems,
                              default=getattr(defaults, key))
        for key in _SECTION_KEYS["rate_limits"]})


_SETTINGS_KEYS = ("max_concurrent_streams", "max_header_list_size")
_SETTINGS_MAX = 2**32 - 1


def _limits(data, path, problems):
    item = section(data, path, _SECTION_KEYS["limits"], problems=problems)
    defaults = Limits()

    def size(key, minimum):
        if item.get(key) is None:
            return getattr(defaults, key)
        value = parse_size(item[key], join(path, key))
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}", join(path, key))
        return _settings_value(key, value)

    def number(key, minimum):
        value = integer(item.get(key), join(path, key), getattr(defaults, key), minimum)
        return _settings_value(key, value)

    def _settings_value(key, value):
        # Sent in HTTP/2 and SPDY SETTINGS, whose values are 32 bits.
        if key in _SETTINGS_KEYS and value > _SETTINGS_MAX:
            raise ConfigError(f"must be at most {_SETTINGS_MAX}", join(path, key))
        return value

    checks = {"max_concurrent_streams": (number, 1), "max_header_list_size": (size, 1024),
              "max_request_body": (size, 0), "max_connections": (number, 0),
              "max_connections_per_ip": (number, 0), "max_pending_requests": (number, 1)}
    return Limits(shared=problems.attempt(parse_shared, item.get("shared"), join(path, "shared"),
                                          problems),
                  **{key: problems.attempt(check, key, minimum, default=getattr(defaults, key))
                     for key, (check, minimum) in checks.items()})


def _timeouts(data, path, problems):
    item = section(data, path, _SECTION_KEYS["timeouts"], problems=problems)
    values = {}
    for key in _SECTION_KEYS["timeouts"]:
        if item.get(key) is None:
            continue
        value = problems.attempt(parse_duration, item[key], join(path, key))
        if value is None:
            continue
        if value <= 0 and key != "graceful_shutdown":
            problems.add(ConfigError("must be greater than 0", join(path, key)))
            continue
        values[key] = value
    return Timeouts(**values)


def _access_log(value, path, base_dir, problems):
    """``access_log``: a path (or "-"), or ``{path, format}``."""
    if _off(value):
        return None
    if not isinstance(value, dict):
        return AccessLog(path=log_path(value, path, base_dir))
    item = section(value, path, _SECTION_KEYS["access_log"], problems=problems)
    file_path = problems.attempt(
        lambda: log_path(require(item, path, "path"), join(path, "path"), base_dir))
    log_format = item.get("format")
    if log_format is None:
        log_format = "proxyd"
    elif log_format not in ACCESS_LOG_FORMATS:
        raise ConfigError(f"must be one of {', '.join(ACCESS_LOG_FORMATS)}", join(path, "format"))
    return AccessLog(path=file_path, format=log_format) if file_path else None


def _metrics(value, path, problems):
    """``metrics``: an endpoint string, or ``{endpoint, health_path}``."""
    if _off(value):
        return None
    if not isinstance(value, dict):
        return Metrics(endpoint=endpoint(value, path, tls_hint=False))
    item = section(value, path, _SECTION_KEYS["metrics"], problems=problems)
    where = join(path, "endpoint")
    listen_on = endpoint(require(item, path, "endpoint"), where, tls_hint=False)
    health = item.get("health_path")
    if health is None:
        return Metrics(endpoint=listen_on)
    health_where = join(path, "health_path")
    health = string(health, health_where)
    if not health.startswith("/") or health == "/metrics" or any(
            c.isspace() or c in "?#" for c in health):
        raise ConfigError("must be a path such as /healthz (not /metrics, no query)",
                          health_where)
    return Metrics(endpoint=listen_on, health_path=health)
