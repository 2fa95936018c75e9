"""Property test of the configuration loader: any file gives a Config or key-path error lines.

Strategy: start from ``conf/proxy.yaml`` enlarged with the README's optional sections (routes,
trusted_proxies, limits.shared, metrics, access_log as a mapping, backend TLS, SNI
certificates), then let hypothesis apply one to three structural mutations: a key path set to a
value of the wrong type or an odd form (sizes, durations, endpoints, unicode, huge numbers,
NaN), deleted, given an unknown sibling, or replaced by a raw YAML fragment (tags, timestamps,
aliases, merge keys, duplicate keys, deep nesting). The file is then loaded the way ``twistd
proxyd`` does (:func:`proxyd.config.load_config` with the text read, then
:func:`proxyd.net.preflight.preflight` with ``check_only``). The only allowed outcomes are a
Config or a ConfigError whose every line is ``<key path>: <problem>`` (or a file-level message);
any other exception is a bug.
"""

import os
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.config import Config, ConfigErrors, load_config
from proxyd.errors import ConfigError
from tests.support import make_certificate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Messages that concern the whole file rather than one key.
FILE_LEVEL = ("YAML ", "cannot read config file", "config file ",
              "the configuration must be a mapping")
RAW = "zzrawfragment"


def rich_document():
    """conf/proxy.yaml plus every optional section the README documents."""
    with open(os.path.join(REPO, "conf", "proxy.yaml"), encoding="utf-8") as stream:
        doc = yaml.safe_load(stream)
    doc["listen"].append({"endpoint": "tcp:8444", "tls": {
        "certificates": [{"cert": "demo-cert.pem", "key": "demo-key.pem"}],
        "client_ca": "demo-cert.pem", "verify_client": "optional",
        "session_tickets": False, "session_timeout": "30m"}, "proxy_protocol": True})
    doc["backends"].append({"address": "[::1]:8082", "tls": {
        "ca": "demo-cert.pem", "server_name": "app.internal", "verify": True,
        "cert": "demo-cert.pem", "key": "demo-key.pem"}, "max_connections": 10})
    doc["routes"] = [
        {"match": {"host": "shop.example.com", "path": "/"},
         "backends": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}],
         "balance": "round_robin",
         "health_check": {"path": "/healthz", "interval": "5s", "timeout": "2s",
                          "expect_status": 200},
         "passive_health": {"max_fails": 3, "backoff": "1s", "max_backoff": "30s"},
         "proxy_protocol": False,
         "headers": {"x_forwarded_for": "append", "forwarded": "off",
                     "x_forwarded_proto": True, "via": True, "location_rewrite": True},
         "timeouts": {"backend_connect": "5s", "backend_read": "60s"},
         "rate_limits": {"read": {"rate": "1MiB", "burst": "1MiB"},
                         "write": {"rate": "10MiB", "burst": "10MiB"}}},
        {"match": {"host": "*.example.com", "path": "/api/"},
         "backends": [{"address": "unix:/run/app.sock"}], "health_check": {
             "path": "/ok", "expect_status": [200, 204]}},
    ]
    doc["trusted_proxies"] = ["10.0.0.0/8", "192.0.2.10"]
    doc["limits"]["shared"] = {"redis": "redis://127.0.0.1:6379/0"}
    doc["metrics"] = {"endpoint": "tcp:9100:interface=127.0.0.1", "health_path": "/healthz"}
    doc["access_log"] = {"path": "access.log", "format": "json"}
    doc["headers"]["client_cert_header"] = "x-client-subject"
    return doc


def key_paths(node, prefix=()):
    """Every path (tuple of keys and indexes) inside ``node``, containers included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from key_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from key_paths(value, prefix + (i,))


DOC = rich_document()
PATHS = [p for p in key_paths(DOC) if p]

digits = st.text("0123456789", min_size=1, max_size=6)
odd_numbers = st.sampled_from([
    "1KiB", "1.5s", "-1s", "1e309", "0x10", "0o17", "1_000", "1K", "1.0001KB", "64 KiB",
    "1m30s", "1h1h", "500ms", "0", "-0", ".5", "5.", "1TiB", "10 s", "1 m 30 s", "ms", "s",
    "99999999999999999999999999h", "9" * 400 + "s", "9" * 5000, "1" + "0" * 400 + "TiB",
    "\u0661\u0662", "\u00b2", "\uff11\uff10s", "1\u00a0s", "inf", "nan", "1e3s", "+5s",
])
endpoint_text = st.builds(
    lambda kind, fields: ":".join([kind] + fields),
    st.sampled_from(["tcp", "tcp6", "ssl", "unix", "systemd", "udp", "TCP", ""]),
    st.lists(st.one_of(
        digits, st.sampled_from([
            "8080", "0", "65536", "99999999", "\u00b2", "\u0668\u0660", "", "interface=",
            "interface=127.0.0.1", "interface=\\:\\:1", "interface=::1", "backlog=x",
            "backlog=-1", "port=80", "port=", "port=x", "domain=INET", "domain=UNIX",
            "domain=inet", "index=0", "index=x", "index=-1", "name=web", "mode=777",
            "mode=zz", "lockfile=1", "address=/tmp/s", "/run/p.sock", "\\", "=", "==",
            "a=b=c", "foo=bar", "1" * 5000]),
        st.text(max_size=12)), max_size=4))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=2**31 - 2, max_value=2**70), st.integers(-10, 0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "-", "auto", "off", "true", "null", "~", "\x00", "\n", "é",
                     "\u202e", "a\nb", "x" * 10000, "/", "/healthz", "*", "*.", "..",
                     "unix:", "h:0", "h:70000", "[::1]:1", "redis://h:99999/0",
                     "10.0.0.0/33", "/metrics", "/a/../b", "/a?x", "x-client-subject",
                     "host", "h2", "spdy/3.1", "require", "json", "no-such-file.pem",
                     "demo-cert.pem", ".", "..", "/etc", "/dev/null", "/proc/self/mem"]),
    odd_numbers, endpoint_text, st.text(max_size=20),
)
values = st.one_of(odd_numbers, endpoint_text, scalars, st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                            inner, max_size=3)),
    max_leaves=6))
raw_fragments = st.sampled_from([
    "!!python/object:os.system {}", "!!python/name:os.system", "!!int foo", "!!int 0x",
    "!!bool maybe", "!!float x", "!!null x", "2001-13-45", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "!!timestamp garbage", "!!binary aGVsbG8=",
    "!!binary '@@@'", "*undefined_alias", "!!set {a, b}", "!!omap [1]", "!!pairs [1]",
    ".nan", ".inf", "-.inf", "0x10", "0o17", "0b101", "1_000", "1e309", "1.0e+309",
    "190:20:30", "~", "[[[[[]]]]]", "{<<: {rate: 1}}", "{<<: [1, 2]}", "{<<: 1}",
    "{rate: 1, rate: 2}", "{a: 1, a: 2}", "&x [*x]", "&y {k: *y}", "!!str 12",
    "!!int " + "9" * 5000, "9" * 5000, "[" * 3000 + "]" * 3000, "{a: " * 2000 + "1" + "}" * 2000,
    "!custom x", "!<tag:example.com,2000:x> 1", "? [a, b]\n", "{[a]: 1}", "\"\\x00\"",
    "\"\\ud800\"", "|\n  text", "'''", "@bad", "`bad",
])


def set_path(doc, path, value):
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def delete_path(doc, path):
    node = doc
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]


@st.composite
def mutated_documents(draw):
    """(YAML text) of the rich document after 1-3 structural mutations."""
    doc = yaml.safe_load(yaml.safe_dump(DOC))
    raws = []
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in key_paths(doc) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["value", "value", "delete", "unknown", "raw", "raw"]))
        try:
            if action == "value":
                set_path(doc, path, draw(values))
            elif action == "delete":
                delete_path(doc, path)
            elif action == "unknown":
                parent = path[:-1]
                node = doc
                for step in parent:
                    node = node[step]
                if isinstance(node, dict):
                    node[draw(st.sampled_from(["max_concurent_streams", "tsl", "<<", "x",
                                               "certificate", "listen", "1", "a\nb",
                                               "\u202e"]))] = 1
            else:
                set_path(doc, path, f"{RAW}{len(raws)}z")
                raws.append(draw(raw_fragments))
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier mutation
    text = yaml.safe_dump(doc, allow_unicode=True, width=10**6)
    for i, fragment in enumerate(raws):
        text = text.replace(f"{RAW}{i}z", fragment.replace("\n", " "), 1)
    return text


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    """A directory holding a real certificate and key named as conf/proxy.yaml expects."""
    path = tmp_path_factory.mktemp("fuzzconf")
    make_certificate(path, "demo-cert", subject="localhost", dns=("localhost",))
    (path / "demo-cert-key.pem").rename(path / "demo-key.pem")
    return path


def check_outcome(text, conf_dir):
    """Load ``text`` as twistd proxyd --check does; assert the contract of the result."""
    from twisted.internet import reactor

    from proxyd.net.preflight import preflight

    path = str(conf_dir / "proxy.yaml")
    try:
        result = load_config(path, text)
        assert isinstance(result, Config)
        preflight(result, reactor, check_only=True)
    except ConfigError as error:
        errors = error.errors if isinstance(error, ConfigErrors) else [error]
        assert errors
        for item in errors:
            line = str(item)
            assert "\n" not in line and "\r" not in line, f"multi-line problem: {line!r}"
            if item.path:
                if item.path.isprintable():  # else escaped, as the test above checks
                    assert line.startswith(f"{item.path}: "), line
                assert re.match(r"\S", item.path), line
            else:
                assert line.startswith(FILE_LEVEL), f"no key path: {line!r}"


def test_the_rich_document_is_valid(conf_dir):
    """The starting point of the property test passes, so mutations are what it tests."""
    config = load_config(str(conf_dir / "proxy.yaml"), yaml.safe_dump(DOC))
    assert len(config.routes) == 2 and config.limits.shared is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(text=mutated_documents())
def test_mutated_configs_give_a_config_or_key_path_errors(text, conf_dir):
    """Any mutation of a valid file loads, or fails with ConfigError lines naming key paths;
    never another exception (which twistd would print as a traceback)."""
    check_outcome(text, conf_dir)
