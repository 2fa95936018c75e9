"""Building blocks of the configuration parser: scalar parsers and checkers that know their key
path.

Strategy: every function takes the raw YAML value and the key path it came from (``limits.x``,
``listen[0].tls.cert``) and either returns a clean Python value or raises
:class:`~proxyd.errors.ConfigError` with that path, so :mod:`proxyd.config` is a flat list of
section parsers. Pure: no twisted, no socket; endpoint strings are only checked for their shape.

Unit choices (also documented in ``conf/proxy.yaml``):

* sizes: plain integers are bytes; ``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024,
  ``KB``/``MB``/``GB``/``TB`` powers of 1000, ``B`` is bytes (units are case-insensitive). The bare
  ``K``/``M``/``G``/``T`` are rejected as ambiguous (nginx and nghttpx read them as powers of 1024,
  other tools as powers of 1000). Fractions must come out as a whole number of bytes: ``1.5KiB`` is
  1536, ``1.0001KB`` is an error.
* durations: plain numbers are seconds; ``ms``, ``s``, ``m``, ``h`` suffixes, combinable
  (``1m30s``).
"""

import difflib
import math
import os
import re
from fractions import Fraction

import yaml

from proxyd.errors import ConfigError

ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "systemd")

_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_SIZE_RE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_HELP = "must be a size such as 100, 64KiB, 1MiB or 1.5MB"
#: The largest size: a signed 64-bit count of bytes (the token buckets keep floats of them).
MAX_SIZE = 2**63 - 1
_SIZE_TOO_LARGE = "too large (at most 8EiB, 2**63-1 bytes)"
_DURATION_RE = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)\s*")
_DURATION_UNITS = {"ms": Fraction(1, 1000), "s": 1, "m": 60, "h": 3600}
_DURATION_HELP = "must be a duration such as 500ms, 5s, 2m or 1h"
_DURATION_TOO_LARGE = "too large for a duration"


def parse_size(value, path=""):
    """Return ``value`` (an int, or a string like ``"64KiB"`` or ``"1.5MB"``) as bytes >= 0."""
    if isinstance(value, bool):
        raise ConfigError(_SIZE_HELP, path)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        number = Fraction(value)
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if not match:
            raise ConfigError(_SIZE_HELP, path)
        unit = match.group(2).lower()
        if unit in ("k", "m", "g", "t"):
            big = unit.upper()
            raise ConfigError(f"ambiguous unit {match.group(2)!r}: write {big}iB (powers of 1024)"
                              f" or {big}B (powers of 1000)", path)
        if unit not in _SIZE_UNITS:
            raise ConfigError(f"unknown size unit {match.group(2)!r} (use B, KiB, MiB, GiB, KB, MB"
                              " or GB)", path)
        try:
            number = Fraction(match.group(1)) * _SIZE_UNITS[unit]
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ConfigError(_SIZE_TOO_LARGE, path) from None
    else:
        raise ConfigError(_SIZE_HELP, path)
    if number < 0:
        raise ConfigError("must not be negative", path)
    if number > MAX_SIZE:
        raise ConfigError(_SIZE_TOO_LARGE, path)
    if number.denominator != 1:
        raise ConfigError(f"{value!r} is not a whole number of bytes", path)
    return int(number)


def parse_duration(value, path=""):
    """Return ``value`` as float seconds >= 0.

    Accepts numbers (seconds) and strings: ``"30"``, ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``,
    ``"1m30s"``.
    """
    if isinstance(value, bool):
        raise ConfigError(_DURATION_HELP, path)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(_DURATION_HELP, path)
        seconds = Fraction(value)
    elif isinstance(value, str):
        try:
            seconds = _duration_text(value.strip(), path)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ConfigError(_DURATION_TOO_LARGE, path) from None
    else:
        raise ConfigError(_DURATION_HELP, path)
    if seconds < 0:
        raise ConfigError("must not be negative", path)
    try:
        return float(seconds)
    except OverflowError:
        raise ConfigError(_DURATION_TOO_LARGE, path) from None


def _duration_text(text, path):
    """The seconds (a Fraction) of a duration string such as ``1m30s``."""
    if re.fullmatch(_NUMBER, text):
        return Fraction(text)
    pos, seconds = 0, Fraction(0)
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        seconds += Fraction(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ConfigError(_DURATION_HELP, path)
    return seconds


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys instead of keeping the last one.

    A scalar its tag cannot build (``!!bool maybe``, the date ``2001-13-45``, an integer beyond
    Python's digit limit) is a YAML error with its line, not the constructor's ValueError.
    """

    def construct_object(self, node, deep=False):
        """Build ``node``; a constructor's own exception becomes a ConstructorError."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            shown = node.value if isinstance(node.value, str) else ""
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown!r} as {node.tag.rsplit(':', 1)[-1]}"
                f" ({type(exc).__name__}: {str(exc)[:80]})", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        """Build a mapping, raising a YAML error (with the line) on a repeated key."""
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor``: merged keys may be overridden, as in safe_load
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it with its line
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def join(path, key):
    """Key path of ``key`` inside ``path``: ``join("limits", "x") == "limits.x"``."""
    return f"{path}.{key}" if path else str(key)


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass; ``errors`` lists them in file order."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.message, self.path = "\n".join(str(error) for error in self.errors), ""
        Exception.__init__(self, self.message)  # lines each escaped by their ConfigError


class Problems:
    """Collects the problems of one file so that a single pass reports all of them.

    ``attempt(fn, ...)`` runs one checker: its value, or ``default`` after recording the
    ConfigError it raised. ``raise_if_any()`` raises the one error as it is, several as
    :class:`ConfigErrors`.
    """

    def __init__(self):
        self.errors = []

    def add(self, error):
        """Record ``error`` (a ConfigError, or ConfigErrors whose errors are unpacked)."""
        self.errors.extend(error.errors if isinstance(error, ConfigErrors) else [error])

    def attempt(self, fn, *args, default=None, **kwargs):
        """``fn(*args, **kwargs)``, or ``default`` once its ConfigError is recorded."""
        try:
            return fn(*args, **kwargs)
        except ConfigError as error:
            self.add(error)
            return default

    def raise_if_any(self):
        """Raise what was recorded, if anything."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def section(data, path, known, elsewhere=None, problems=None):
    """Return mapping ``data`` (None -> {}) after rejecting keys not in ``known``.

    An unknown key gets a did-you-mean from ``known``; failing that, ``elsewhere`` (a dict of
    section name -> keys) suggests the section it belongs to. With ``problems`` every unknown
    key is recorded there and the known keys are returned, so checking goes on.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        if path:
            raise ConfigError("must be a mapping", path)
        raise ConfigError("the configuration must be a mapping of keys to values")
    unknown = []
    for key in data:
        if key in known:
            continue
        hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        if not hint and elsewhere:
            hint = [join(name, key) for name, keys in elsewhere.items() if key in keys]
        suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
        unknown.append(ConfigError(f"unknown key{suffix}", join(path, key)))
    if unknown and problems is None:
        raise unknown[0]
    for error in unknown:
        problems.add(error)
    return {key: value for key, value in data.items() if key in known}


def require(item, path, key):
    """Return ``item[key]``, or raise "required key missing" when it is absent or null."""
    if item.get(key) is None:
        raise ConfigError("required key missing", join(path, key))
    return item[key]


def non_empty_list(value, path):
    """Return ``value`` if it is a non-empty list."""
    if not isinstance(value, list) or not value:
        raise ConfigError("must be a non-empty list", path)
    return value


def integer(value, path, default, minimum=0):
    """An int >= ``minimum`` (``default`` when None); bools are rejected."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("must be an integer", path)
    if value < minimum:
        raise ConfigError(f"must be at least {minimum}", path)
    return value


def count(value, path=""):
    """A plain non-negative int (requests, not bytes: no units)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("must be a non-negative integer", path)
    return value


MAX_WORKERS = 64


def workers(value, path="workers"):
    """``workers``: ``auto`` (one process per core, the default) or a number 1..64."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"must be auto or a number of processes 1..{MAX_WORKERS}", path)
    return value


def boolean(value, path, default):
    """A YAML boolean (``default`` when None)."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", path)
    return value


def string(value, path):
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a non-empty string", path)
    return value


def readable_file(value, path, base_dir):
    """Resolve a file path against ``base_dir``; check it is a readable regular file."""
    full = os.path.normpath(os.path.join(base_dir, string(value, path)))
    if not os.path.exists(full):
        raise ConfigError(f"no such file '{full}'", path)
    if not os.path.isfile(full):
        raise ConfigError(f"not a regular file '{full}'", path)
    if not os.access(full, os.R_OK):
        raise ConfigError(f"file not readable '{full}'", path)
    return full


def log_path(value, path, base_dir):
    """A log file path resolved against ``base_dir`` (its directory must exist), or "-"."""
    text = string(value, path)
    if text == "-":
        return "-"
    full = os.path.normpath(os.path.join(base_dir, text))
    if os.path.isdir(full):
        raise ConfigError(f"is a directory '{full}'", path)
    if not os.path.isdir(os.path.dirname(full)):
        raise ConfigError(f"no such directory '{os.path.dirname(full)}'", path)
    return full


def port_number(text):
    """``text`` as a port number if it is ASCII digits (at most 5 after leading zeros), else
    None. ``str.isdigit`` is not enough: it accepts '²' (which int() refuses) and other
    scripts' digits, and int() refuses strings past Python's digit limit."""
    if not re.fullmatch(r"0*[0-9]{1,5}", text, re.ASCII):
        return None
    return int(text.lstrip("0") or "0")


def split_endpoint(text):
    """Split a Twisted endpoint string on unescaped colons into (args, kwargs) after the type."""
    parts, chars, equals, escaped = [], [], None, False
    for char in text:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(("".join(chars), equals))
            chars, equals = [], None
        else:
            if char == "=" and equals is None:
                equals = len(chars)
            chars.append(char)
    parts.append(("".join(chars), equals))
    args, kwargs = [], {}
    for part, equals in parts[1:]:
        if equals is None:
            args.append(part)
        else:
            kwargs[part[:equals]] = part[equals + 1:]
    return args, kwargs


def endpoint(value, path, tls_hint=True):
    """Check the shape of a Twisted server endpoint string (type, tcp port, unix path, systemd)."""
    text = string(value, path)
    kind = text.split(":", 1)[0] if ":" in text else ""
    if kind == "ssl":
        hint = "; use tls: instead" if tls_hint else ""
        raise ConfigError(f"ssl: endpoints are not supported{hint}", path)
    if kind not in ENDPOINT_TYPES:
        raise ConfigError(f"must start with one of {', '.join(t + ':' for t in ENDPOINT_TYPES)}",
                          path)
    args, kwargs = split_endpoint(text)
    if "" in args[1:] or "" in kwargs:
        raise ConfigError("empty field between colons (write ':' inside a value, e.g. an IPv6"
                          " address, as '\\:')", path)
    first = args[0] if args else ""
    if kind in ("tcp", "tcp6"):
        port = port_number(kwargs.get("port", first))
        if port is None or port > 65535:
            raise ConfigError(f"{kind}: needs a port 0..65535, e.g. '{kind}:8080'", path)
    elif kind == "unix" and not kwargs.get("address", first):
        raise ConfigError("unix: needs a socket path, e.g. 'unix:/run/proxyd.sock'", path)
    elif kind == "systemd" and kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
        raise ConfigError("systemd: needs domain=INET, INET6 or UNIX, e.g. "
                          "'systemd:domain=INET:index=0'", path)
    return text


def backend_address(value, path):
    """Split ``host:port``, ``[ipv6]:port`` or ``unix:/path`` into (host, port, unix_path)."""
    text = string(value, path)
    if text.startswith("unix:"):
        if not text[5:]:
            raise ConfigError("unix: needs a socket path, e.g. 'unix:/run/app.sock'", path)
        return "", 0, text[5:]
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%\w+)?)\]:([0-9]+)|([^:\[\]\s/]+):([0-9]+)", text)
    if not match:
        raise ConfigError("must be host:port, [ipv6]:port or unix:/path", path)
    host = match.group(1) or match.group(3)
    port = port_number(match.group(2) or match.group(4))
    if port is None or not 1 <= port <= 65535:
        raise ConfigError("port must be 1..65535", path)
    return host, port, None


_WILDCARDS = ("", "0.0.0.0", "::", "0:0:0:0:0:0:0:0")


def _endpoint_identity(text):
    """What an endpoint binds: ("tcp", port, interface), ("unix", path) or ("systemd", key)."""
    kind = text.split(":", 1)[0]
    args, kwargs = split_endpoint(text)
    first = args[0] if args else ""
    if kind in ("tcp", "tcp6"):
        return "tcp", port_number(kwargs.get("port", first)), kwargs.get("interface", "")
    if kind == "unix":
        return "unix", kwargs.get("address", first)
    return "systemd", kwargs.get("index", ""), kwargs.get("name", "")


def _clash(a, b):
    """Why endpoints ``a`` and ``b`` (identities) cannot both listen, or None."""
    if a[0] != b[0]:
        return None
    if a[0] == "tcp":
        if a[1] == 0 or a[1] != b[1]:
            return None
        if a[2] == b[2] or a[2] in _WILDCARDS or b[2] in _WILDCARDS:
            return f"same port {a[1]}"
        return None
    if a[0] == "unix":
        return f"same socket path {a[1]}" if a[1] == b[1] else None
    if (a[1] and a[1] == b[1]) or (a[2] and a[2] == b[2]):
        return "same inherited socket"
    return None


def endpoint_clashes(named):
    """ConfigErrors for endpoints that would fight over one socket.

    ``named`` is a list of (key path, endpoint string) in file order; each later endpoint that
    clashes with an earlier one is reported at its own path: two TCP endpoints on the same port
    whose interfaces are equal or one of them a wildcard, the same unix path, the same systemd
    socket.
    """
    errors = []
    seen = []
    for path, text in named:
        identity = _endpoint_identity(text)
        for other_path, other in seen:
            reason = _clash(identity, other)
            if reason:
                errors.append(ConfigError(f"clashes with {other_path} ({reason})", path))
                break
        seen.append((path, identity))
    return errors
