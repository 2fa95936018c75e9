"""Configuration of routes, backend groups, PROXY protocol trust and fleet-wide limits.

Strategy: the same shape as :mod:`proxyd.config` (one small parser per section, every problem
recorded with its exact key path, frozen dataclasses out), for the keys of issue 12:
``routes:`` (match, backends, balance, health checks, per-route header policy and timeouts),
``trusted_proxies:`` (CIDR list) and ``limits.shared`` (a Redis URL). Pure: no twisted, no socket
(CIDRs are checked with :mod:`ipaddress`).

Decisions (also documented in ``conf/proxy.yaml``):

* ``match.host`` is an exact name (``app.example.com``, compared case-insensitively, port
  ignored) or ``*.suffix`` (``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``,
  not ``example.com``); absent means any host. ``match.path`` must start with ``/`` and is a
  prefix on segment boundaries (default ``/``), written as routing sees requests (visible ASCII,
  no dot segments, no escape of an unreserved character: ``/~user``, not ``/%7Euser``), or no
  request could ever match it.
* Two routes with the same host and path are an error (the second one could never match).
* ``expect_status``: a status, a list of statuses, or absent (any 2xx or 3xx).
* ``rate_limits: {read, write}`` on a route pace each stream of the route (bytes per second,
  sizes as in the top-level ``rate_limits``, which pace whole connections).
* ``proxy_protocol: true`` on a route sends a PROXY v2 header on each backend connection, so the
  group's backends must be cleartext HTTP/1.1 (the header must precede any TLS, and an HTTP/2
  connection carries many clients).
"""

import ipaddress
import re
from dataclasses import dataclass

from proxyd.config_schema import (
    Problems, boolean, integer, join, non_empty_list, parse_duration, parse_size, port_number,
    section, string,
)
from proxyd.errors import ConfigError
from proxyd.route import normalize_path

BALANCE = ("round_robin", "least_outstanding")
_HOST_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REDIS_RE = re.compile(r"redis://(?:[^@/]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]+)"
                       r"(?:/(0*[0-9]{1,9}))?")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health check of a group: ``GET path`` every ``interval``, answered within
    ``timeout`` with a status in ``expect_status`` (empty: any 2xx or 3xx)."""

    path: str
    interval: float = 5.0
    timeout: float = 2.0
    expect_status: tuple[int, ...] = ()

    def accepts(self, status):
        """True when ``status`` counts as healthy."""
        if self.expect_status:
            return status in self.expect_status
        return 200 <= status < 400


@dataclass(frozen=True, slots=True)
class PassiveHealth:
    """``max_fails`` failed connects in a row mark a backend down; it is probed again after
    ``backoff``, doubled after each failed probe up to ``max_backoff``."""

    max_fails: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0


@dataclass(frozen=True, slots=True)
class RouteTimeouts:
    """Per-route backend timeouts (None: the top-level ``timeouts`` value)."""

    backend_connect: float | None = None
    backend_read: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One ``routes:`` entry: what it matches and the backend group it sends to."""

    host: str | None
    path: str
    backends: tuple
    balance: str = "round_robin"
    health_check: HealthCheck | None = None
    passive_health: PassiveHealth = PassiveHealth()
    proxy_protocol: bool = False
    headers: object = None   # proxyd.config.HeaderPolicy, or None: the top-level one
    timeouts: RouteTimeouts = RouteTimeouts()
    rate_limits: tuple | None = None  # (read, write) proxyd.config.Bucket of each stream

    @property
    def name(self):
        """``host + path`` as written (``*`` for any host), for logs and metrics."""
        return f"{self.host or '*'}{self.path}"


@dataclass(frozen=True, slots=True)
class SharedLimits:
    """Where per-IP limits are shared by a fleet: a Redis server."""

    redis: str
    host: str
    port: int
    db: int = 0


ROUTE_KEYS = ("match", "backends", "balance", "health_check", "passive_health",
              "proxy_protocol", "headers", "timeouts", "rate_limits")


def parse_routes(value, path, *, backend, headers, base_dir, mode, problems):
    """``routes:``: a list of routes. ``backend`` parses one backend entry
    (``backend(data, path, mode, base_dir, problems)``), ``headers`` is the top-level
    HeaderPolicy the per-route ``headers`` are laid over."""
    if value is None:
        return ()
    items = non_empty_list(value, path)
    routes, seen = [], {}
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        route = problems.attempt(_route, item, where, backend, headers, base_dir, mode, problems)
        if route is None:
            continue
        key = (route.host, route.path)
        if key in seen:
            problems.add(ConfigError(f"same host and path as {seen[key]}", join(where, "match")))
            continue
        seen[key] = where
        routes.append(route)
    return tuple(routes)


def _route(data, path, backend, headers, base_dir, mode, problems):
    item = section(data, path, ROUTE_KEYS, problems=problems)
    before = len(problems.errors)
    host, route_path = problems.attempt(_match, item.get("match"), join(path, "match"), problems,
                                        default=(None, "/"))
    where = join(path, "backends")
    raw = problems.attempt(non_empty_list, item.get("backends"), where, default=[])
    backends = [problems.attempt(backend, b, f"{where}[{i}]", mode, base_dir, problems)
                for i, b in enumerate(raw)]
    balance = item.get("balance", "round_robin") or "round_robin"
    if balance not in BALANCE:
        problems.add(ConfigError(f"must be one of {', '.join(BALANCE)}", join(path, "balance")))
    check = problems.attempt(_health_check, item.get("health_check"),
                             join(path, "health_check"), problems)
    passive = problems.attempt(_passive, item.get("passive_health"),
                               join(path, "passive_health"), problems, default=PassiveHealth())
    proxied = problems.attempt(boolean, item.get("proxy_protocol"), join(path, "proxy_protocol"),
                               False, default=False)
    if proxied:
        for i, b in enumerate(backends):
            if b is not None and (b.tls is not None or b.protocol != "http/1.1"):
                problems.add(ConfigError("proxy_protocol needs cleartext http/1.1 backends",
                                         f"{where}[{i}]"))
    policy = None
    if item.get("headers") is not None:
        policy = problems.attempt(_headers, item["headers"], join(path, "headers"), headers,
                                  problems)
    timeouts = problems.attempt(_timeouts, item.get("timeouts"), join(path, "timeouts"),
                                problems, default=RouteTimeouts())
    limits = problems.attempt(_stream_limits, item.get("rate_limits"),
                              join(path, "rate_limits"), problems)
    if len(problems.errors) > before:
        return None
    return Route(host=host, path=route_path, backends=tuple(backends), balance=balance,
                 health_check=check, passive_health=passive, proxy_protocol=proxied,
                 headers=policy, timeouts=timeouts, rate_limits=limits)


def _match(data, path, problems):
    item = section(data, path, ("host", "path"), problems=problems)
    host = item.get("host")
    if host is not None:
        where = join(path, "host")
        host = string(host, where).strip().lower().rstrip(".")
        if host in ("*", ""):
            host = None
        elif not _HOST_RE.fullmatch(host) or ".." in host:
            raise ConfigError("must be a host name (app.example.com) or *.suffix "
                              "(*.example.com), without port", where)
    route_path = item.get("path")
    if route_path is None:
        route_path = "/"
    else:
        where = join(path, "path")
        route_path = string(route_path, where)
        if not route_path.startswith("/"):
            raise ConfigError('must start with "/"', where)
        if any(c.isspace() or c in "?#" for c in route_path) or "/./" in route_path + "/" \
                or "/../" in route_path + "/":
            raise ConfigError("must be a plain path prefix (no query, fragment, spaces or dot "
                              "segments)", where)
        if any(not "!" <= c <= "~" for c in route_path) or _STRAY_PERCENT.search(route_path):
            raise ConfigError("must be visible ASCII, every % starting a %XX escape (requests "
                              "carry other bytes %-encoded)", where)
        normal = normalize_path(route_path.encode("ascii")).decode("ascii")
        if normal != route_path:
            # Requests are matched normalised (unreserved escapes decoded, dot segments
            # removed): this path as written could never match one.
            raise ConfigError(f'must be written as routing sees requests: "{normal}"', where)
    return host, route_path


def _health_check(data, path, problems):
    if data is None or data is False:
        return None
    item = section(data, path, ("path", "interval", "timeout", "expect_status"),
                   problems=problems)
    check_path = item.get("path")
    where = join(path, "path")
    if check_path is None:
        raise ConfigError("required key missing", where)
    check_path = string(check_path, where)
    if not check_path.startswith("/") or any(not "!" <= c <= "~" or c == "#" for c in check_path):
        raise ConfigError('must be a path starting with "/" (visible ASCII, no "#")', where)
    values = _durations(item, path, ("interval", "timeout"), problems)
    expect = item.get("expect_status")
    if expect is not None:
        where = join(path, "expect_status")
        statuses = expect if isinstance(expect, list) else [expect]
        if not statuses or not all(isinstance(s, int) and not isinstance(s, bool)
                                   and 100 <= s <= 599 for s in statuses):
            raise ConfigError("must be a status (100..599) or a list of them", where)
        values["expect_status"] = tuple(statuses)
    return HealthCheck(path=check_path, **values)


def _passive(data, path, problems):
    item = section(data, path, ("max_fails", "backoff", "max_backoff"), problems=problems)
    defaults = PassiveHealth()
    max_fails = problems.attempt(integer, item.get("max_fails"), join(path, "max_fails"),
                                 defaults.max_fails, 1, default=defaults.max_fails)
    delays = _durations(item, path, ("backoff", "max_backoff"), problems)
    result = PassiveHealth(max_fails=max_fails, **delays)
    if result.max_backoff < result.backoff:
        raise ConfigError("must be at least backoff", join(path, "max_backoff"))
    return result


def _headers(data, path, base, problems):
    """Per-route header policy: the keys given replace the top-level ones."""
    from dataclasses import replace

    from proxyd.config import X_FORWARDED_FOR, HeaderPolicy

    item = section(data, path, ("x_forwarded_for", "forwarded", "x_forwarded_proto", "via",
                                "location_rewrite"), problems=problems)
    base = base or HeaderPolicy()
    changes = {}
    for key in ("x_forwarded_for", "forwarded"):
        mode = item.get(key, getattr(base, key))
        mode = "off" if mode is False else mode
        if mode not in X_FORWARDED_FOR:
            problems.add(ConfigError(f"must be one of {', '.join(X_FORWARDED_FOR)}",
                                     join(path, key)))
            mode = getattr(base, key)
        changes[key] = mode
    for key in ("x_forwarded_proto", "via", "location_rewrite"):
        changes[key] = problems.attempt(boolean, item.get(key), join(path, key),
                                        getattr(base, key), default=getattr(base, key))
    return replace(base, **changes)


def _stream_limits(data, path, problems):
    """Per-route ``rate_limits: {read, write}``: bytes per second of each stream (sizes)."""
    from proxyd.config import Bucket, _bucket

    if data is None:
        return None
    item = section(data, path, ("read", "write"), problems=problems)
    read, write = (problems.attempt(_bucket, item.get(key), join(path, key), Bucket(),
                                    parse_size, problems, default=Bucket())
                   for key in ("read", "write"))
    return (read, write) if read.rate or write.rate else None


def _timeouts(data, path, problems):
    keys = ("backend_connect", "backend_read")
    item = section(data, path, keys, problems=problems)
    return RouteTimeouts(**_durations(item, path, keys, problems))


def _durations(item, path, keys, problems):
    """The positive durations of ``keys`` that ``item`` gives (bad ones recorded)."""
    values = {}
    for key in keys:
        if item.get(key) is None:
            continue
        value = problems.attempt(parse_duration, item[key], join(path, key))
        if value is not None and value <= 0:
            problems.add(ConfigError("must be greater than 0", join(path, key)))
        elif value is not None:
            values[key] = value
    return values


def parse_trusted_proxies(value, path):
    """``trusted_proxies``: a list of CIDRs (or plain addresses) -> tuple of ip_network."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("must be a list of CIDR networks such as 10.0.0.0/8", path)
    problems = Problems()
    networks = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        try:
            networks.append(ipaddress.ip_network(string(item, where).strip(), strict=False))
        except ValueError:
            problems.add(ConfigError("must be a CIDR network such as 10.0.0.0/8 or an address",
                                     where))
        except ConfigError as error:
            problems.add(error)
    problems.raise_if_any()
    return tuple(networks)


def parse_shared(value, path, problems):
    """``limits.shared``: ``{redis: "redis://host:port/db"}`` or absent."""
    if value is None or value is False:
        return None
    item = section(value, path, ("redis",), problems=problems)
    where = join(path, "redis")
    if item.get("redis") is None:
        raise ConfigError("required key missing", where)
    url = string(item["redis"], where)
    match = _REDIS_RE.fullmatch(url)
    if not match:
        raise ConfigError('must be a URL such as "redis://127.0.0.1:6379/0"', where)
    port = port_number(match.group(2))
    if port is None or not 1 <= port <= 65535:
        raise ConfigError("port must be 1..65535", where)
    return SharedLimits(redis=url, host=match.group(1).strip("[]"), port=port,
                        db=int((match.group(3) or "0").lstrip("0") or "0"))
