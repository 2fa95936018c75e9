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
* ``limits.max_pending_requests`` must be >= 1 (a queue always has a bound);
  ``limits.max_header_list_size`` >= 1024.
"""

import os
from dataclasses import dataclass

import yaml

from proxyd.config_schema import (
    StrictLoader, backend_address, boolean, count, endpoint, integer, join, non_empty_list,
    parse_duration, parse_size, readable_file, require, section, string,
)
from proxyd.errors import ConfigError

__all__ = [
    "Backend", "BackendTLS", "Bucket", "Config", "HeaderPolicy", "Limits", "Listener",
    "ListenerTLS", "RateLimits", "Timeouts", "load_config", "parse_config", "parse_duration",
    "parse_size",
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
DEFAULT_PROTOCOLS = ("h2", "http/1.1")

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    """Certificate chain and private key of a TLS listener (absolute paths, checked readable)."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening endpoint (a Twisted server endpoint string) and its ALPN offer, in order."""

    endpoint: str
    tls: ListenerTLS | None = None
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS


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
    """Header rewriting switches; ``x_forwarded_for`` is ``append``, ``replace`` or ``off``."""

    x_forwarded_for: str = "append"
    x_forwarded_proto: bool = True
    via: bool = True
    location_rewrite: bool = True


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate`` bytes (or requests) per second, ``burst`` capacity; rate 0 = off."""

    rate: int = 0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-connection, per-process and per-client-IP rate limits."""

    read: Bucket = Bucket(1 * MiB, 4 * MiB)
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


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds (floats)."""

    frontend_idle: float = 60.0
    frontend_header: float = 15.0
    backend_connect: float = 5.0
    backend_read: float = 60.0
    graceful_shutdown: float = 30.0


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
    access_log: str | None = None  # absolute path, or "-" for stdout
    metrics: str | None = None  # server endpoint string


# --------------------------------------------------------------------------- loading


def load_config(path):
    """Read, parse and validate the YAML file at ``path``; raise ConfigError naming the file.

    A missing or unreadable file and a YAML syntax error (with its line and column) are reported in
    the message, with an empty key path.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8: {exc.reason}") from None
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
    """
    base_dir = os.path.abspath(base_dir)
    top = section(data, "", _TOP_KEYS, elsewhere=_SECTION_KEYS)
    mode = top.get("mode")
    mode = "default" if mode is None else mode
    if mode not in MODES:
        raise ConfigError(f"must be one of {', '.join(MODES)}", "mode")
    listen = non_empty_list(top.get("listen"), "listen")
    listeners = tuple(_listener(item, f"listen[{i}]", mode, base_dir)
                      for i, item in enumerate(listen))
    for i, listener in enumerate(listeners):
        for j in range(i):
            if listeners[j].endpoint == listener.endpoint:
                raise ConfigError(f"duplicate of listen[{j}].endpoint", f"listen[{i}].endpoint")
    backends = non_empty_list(top.get("backends"), "backends")
    metrics = top.get("metrics")
    return Config(
        mode=mode,
        listen=listeners,
        backends=tuple(_backend(item, f"backends[{i}]", mode, base_dir)
                       for i, item in enumerate(backends)),
        headers=_headers(top.get("headers"), "headers"),
        rate_limits=_rate_limits(top.get("rate_limits"), "rate_limits"),
        limits=_limits(top.get("limits"), "limits"),
        timeouts=_timeouts(top.get("timeouts"), "timeouts"),
        access_log=_access_log(top.get("access_log"), "access_log", base_dir),
        metrics=None if _off(metrics) else endpoint(metrics, "metrics", tls_hint=False),
    )


# --------------------------------------------------------------------------- section parsers

_SECTION_KEYS = {
    "headers": ("x_forwarded_for", "x_forwarded_proto", "via", "location_rewrite"),
    "rate_limits": ("read", "write", "worker_read", "worker_write", "requests_per_ip"),
    "limits": ("max_concurrent_streams", "max_header_list_size", "max_request_body",
               "max_connections", "max_connections_per_ip", "max_pending_requests"),
    "timeouts": ("frontend_idle", "frontend_header", "backend_connect", "backend_read",
                 "graceful_shutdown"),
}
_TOP_KEYS = ("mode", "listen", "backends", *_SECTION_KEYS, "access_log", "metrics")


def _off(value):
    """True for an absent (null) or ``false`` optional feature."""
    return value is None or value is False


def _listener(data, path, mode, base_dir):
    item = section(data, path, ("endpoint", "tls", "protocols"))
    where = join(path, "endpoint")
    listen_on = endpoint(require(item, path, "endpoint"), where)
    tls = None
    tls_data, tls_path = item.get("tls"), join(path, "tls")
    if not _off(tls_data):
        if not isinstance(tls_data, dict):
            raise ConfigError("must be a mapping with cert and key, or false", tls_path)
        tls_data = section(tls_data, tls_path, ("cert", "key"))
        cert, key = require(tls_data, tls_path, "cert"), require(tls_data, tls_path, "key")
        tls = ListenerTLS(cert=readable_file(cert, join(tls_path, "cert"), base_dir),
                          key=readable_file(key, join(tls_path, "key"), base_dir))
    protocols = DEFAULT_PROTOCOLS
    if item.get("protocols") is not None:
        proto_path = join(path, "protocols")
        raw = non_empty_list(item["protocols"], proto_path)
        for i, proto in enumerate(raw):
            where = f"{proto_path}[{i}]"
            if proto not in FRONTEND_PROTOCOLS:
                raise ConfigError(f"must be one of {', '.join(FRONTEND_PROTOCOLS)}", where)
            if proto not in MODE_FRONTENDS[mode]:
                raise ConfigError(f"{proto} is not available in {mode} mode (allowed: "
                                  f"{', '.join(MODE_FRONTENDS[mode])})", where)
            if proto in raw[:i]:
                raise ConfigError(f"duplicate protocol {proto}", where)
        protocols = tuple(raw)
    return Listener(endpoint=listen_on, tls=tls, protocols=protocols)


def _backend_tls(data, path, base_dir):
    if _off(data):
        return None
    if data is True:
        return BackendTLS()
    if not isinstance(data, dict):
        raise ConfigError("must be true, false or a mapping", path)
    item = section(data, path, ("ca", "server_name", "verify", "cert", "key"))
    if (item.get("cert") is None) != (item.get("key") is None):
        missing = "key" if item.get("key") is None else "cert"
        raise ConfigError("cert and key must be given together", join(path, missing))

    def optional_file(key):
        value = item.get(key)
        return None if value is None else readable_file(value, join(path, key), base_dir)

    server_name = item.get("server_name")
    return BackendTLS(
        ca=optional_file("ca"),
        server_name=None if server_name is None else string(server_name, join(path, "server_name")),
        verify=boolean(item.get("verify"), join(path, "verify"), True),
        cert=optional_file("cert"),
        key=optional_file("key"),
    )


def _backend(data, path, mode, base_dir):
    item = section(data, path, ("address", "protocol", "tls", "max_connections"))
    address = string(require(item, path, "address"), join(path, "address"))
    host, port, unix_path = backend_address(address, join(path, "address"))
    protocol = item.get("protocol")
    if protocol is None:
        protocol = MODE_BACKEND[mode]
    elif protocol not in BACKEND_PROTOCOLS:
        raise ConfigError(f"must be one of {', '.join(BACKEND_PROTOCOLS)}", join(path, "protocol"))
    elif protocol != MODE_BACKEND[mode]:
        raise ConfigError(f"must be {MODE_BACKEND[mode]} in {mode} mode", join(path, "protocol"))
    return Backend(
        address=address, host=host, port=port, unix_path=unix_path, protocol=protocol,
        tls=_backend_tls(item.get("tls"), join(path, "tls"), base_dir),
        max_connections=integer(item.get("max_connections"), join(path, "max_connections"), 100, 1),
    )


def _headers(data, path):
    item = section(data, path, _SECTION_KEYS["headers"])
    xff = item.get("x_forwarded_for")
    xff = "append" if xff is None else "off" if xff is False else xff
    if xff not in X_FORWARDED_FOR:
        raise ConfigError(f"must be one of {', '.join(X_FORWARDED_FOR)}",
                          join(path, "x_forwarded_for"))
    flags = {key: boolean(item.get(key), join(path, key), True)
             for key in ("x_forwarded_proto", "via", "location_rewrite")}
    return HeaderPolicy(x_forwarded_for=xff, **flags)


def _bucket(data, path, default, parse):
    if data is None:
        return default
    item = section(data, path, ("rate", "burst"))
    rate = 0 if item.get("rate") is None else parse(item["rate"], join(path, "rate"))
    burst = 0 if item.get("burst") is None else parse(item["burst"], join(path, "burst"))
    if rate == 0 and burst != 0:
        raise ConfigError("must be 0 when rate is 0 (unlimited)", join(path, "burst"))
    return Bucket(rate=rate, burst=burst or rate)


def _rate_limits(data, path):
    item = section(data, path, _SECTION_KEYS["rate_limits"])
    defaults = RateLimits()
    return RateLimits(**{
        key: _bucket(item.get(key), join(path, key), getattr(defaults, key),
                     count if key == "requests_per_ip" else parse_size)
        for key in _SECTION_KEYS["rate_limits"]})


def _limits(data, path):
    item = section(data, path, _SECTION_KEYS["limits"])
    defaults = Limits()

    def size(key, minimum):
        if item.get(key) is None:
            return getattr(defaults, key)
        value = parse_size(item[key], join(path, key))
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}", join(path, key))
        return value

    def number(key, minimum):
        return integer(item.get(key), join(path, key), getattr(defaults, key), minimum)

    return Limits(
        max_concurrent_streams=number("max_concurrent_streams", 1),
        max_header_list_size=size("max_header_list_size", 1024),
        max_request_body=size("max_request_body", 0),
        max_connections=number("max_connections", 0),
        max_connections_per_ip=number("max_connections_per_ip", 0),
        max_pending_requests=number("max_pending_requests", 1),
    )


def _timeouts(data, path):
    item = section(data, path, _SECTION_KEYS["timeouts"])
    values = {}
    for key in _SECTION_KEYS["timeouts"]:
        if item.get(key) is None:
            continue
        value = parse_duration(item[key], join(path, key))
        if value <= 0 and key != "graceful_shutdown":
            raise ConfigError("must be greater than 0", join(path, key))
        values[key] = value
    return Timeouts(**values)


def _access_log(value, path, base_dir):
    if _off(value):
        return None
    text = string(value, path)
    if text == "-":
        return "-"
    full = os.path.normpath(os.path.join(base_dir, text))
    if os.path.isdir(full):
        raise ConfigError(f"is a directory '{full}'", path)
    if not os.path.isdir(os.path.dirname(full)):
        raise ConfigError(f"no such directory '{os.path.dirname(full)}'", path)
    return full
