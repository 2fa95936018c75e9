"""Configuration of issue 12 (proxyd.config_routes through parse_config): routes, health checks,
trusted_proxies, proxy_protocol and limits.shared, with the exact key paths of bad values; and
the shared per-IP budget (proxyd.ratelimit.SharedBudget) driven by an explicit clock."""

import ipaddress

import pytest

from proxyd.config import parse_config
from proxyd.config_routes import HealthCheck, PassiveHealth, RouteTimeouts
from proxyd.errors import ConfigError
from proxyd.ratelimit import SharedBudget


def config(**top):
    """A valid base with one cleartext listener; ``top`` replaces top-level keys."""
    data = {"listen": [{"endpoint": "tcp:8080:interface=127.0.0.1"}],
            "backends": [{"address": "127.0.0.1:8081"}]}
    data.update(top)
    return data


ROUTE = {"match": {"host": "Shop.Example.com", "path": "/api/"},
         "backends": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}],
         "balance": "least_outstanding",
         "health_check": {"path": "/healthz", "interval": "2s", "timeout": "500ms",
                          "expect_status": [200, 204]},
         "passive_health": {"max_fails": 2, "backoff": "2s"},
         "headers": {"location_rewrite": False},
         "timeouts": {"backend_read": "5s"}}


def test_a_full_route(tmp_path):
    """Every key of a route parses to its dataclass; headers are laid over the top level."""
    cfg = parse_config(config(routes=[ROUTE], headers={"via": False}), str(tmp_path))
    [route] = cfg.routes
    assert (route.host, route.path, route.balance) == ("shop.example.com", "/api/",
                                                      "least_outstanding")
    assert [b.address for b in route.backends] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert route.health_check == HealthCheck("/healthz", 2.0, 0.5, (200, 204))
    assert route.passive_health == PassiveHealth(max_fails=2, backoff=2.0)
    assert route.headers.location_rewrite is False and route.headers.via is False
    assert route.timeouts == RouteTimeouts(backend_read=5.0)
    assert route.name == "shop.example.com/api/"


def test_routes_without_top_level_backends(tmp_path):
    """With routes, top-level backends are optional (no default route: 404)."""
    data = config(routes=[{"backends": [{"address": "127.0.0.1:9001"}]}])
    del data["backends"]
    cfg = parse_config(data, str(tmp_path))
    assert cfg.backends == () and cfg.routes[0].host is None and cfg.routes[0].path == "/"


def test_health_check_statuses():
    """No expect_status: any 2xx or 3xx; else exactly the listed ones."""
    assert HealthCheck("/").accepts(301) and not HealthCheck("/").accepts(500)
    assert HealthCheck("/", expect_status=(204,)).accepts(204)
    assert not HealthCheck("/", expect_status=(204,)).accepts(200)


@pytest.mark.parametrize("route, path, message", [
    ({"match": {"path": "api"}}, "routes[0].match.path", 'must start with "/"'),
    ({"match": {"path": "/a?b"}}, "routes[0].match.path", "plain path prefix"),
    ({"match": {"path": "/a/../b"}}, "routes[0].match.path", "plain path prefix"),
    ({"match": {"host": "ex ample.com"}}, "routes[0].match.host", "host name"),
    ({"match": {"host": "a.*.com"}}, "routes[0].match.host", "host name"),
    ({"match": {"host": "a.com:80"}}, "routes[0].match.host", "without port"),
    ({"match": {"hots": "a.com"}}, "routes[0].match.hots", "did you mean 'host'"),
    ({"balance": "random"}, "routes[0].balance", "round_robin, least_outstanding"),
    ({"backends": []}, "routes[0].backends", "non-empty list"),
    ({"backends": [{"address": "nope"}]}, "routes[0].backends[0].address", "host:port"),
    ({"health_check": {"interval": "1s"}}, "routes[0].health_check.path", "required"),
    ({"health_check": {"path": "/h#x"}}, "routes[0].health_check.path", 'no "#"'),
    ({"health_check": {"path": "/h\u00e9"}}, "routes[0].health_check.path", "visible ASCII"),
    ({"health_check": {"path": "/h", "expect_status": 99}}, "routes[0].health_check"
     ".expect_status", "100..599"),
    ({"health_check": {"path": "/h", "timeout": "0s"}}, "routes[0].health_check.timeout",
     "greater than 0"),
    ({"passive_health": {"max_fails": 0}}, "routes[0].passive_health.max_fails", "at least 1"),
    ({"passive_health": {"backoff": "5s", "max_backoff": "1s"}},
     "routes[0].passive_health.max_backoff", "at least backoff"),
    ({"headers": {"x_forwarded_for": "maybe"}}, "routes[0].headers.x_forwarded_for",
     "append, replace, off"),
    ({"timeouts": {"backend_read": "x"}}, "routes[0].timeouts.backend_read", "duration"),
    ({"timeouts": {"frontend_idle": "1s"}}, "routes[0].timeouts.frontend_idle", "unknown key"),
    ({"proxy_protocol": True, "backends": [{"address": "127.0.0.1:1", "tls": True}]},
     "routes[0].backends[0]", "cleartext http/1.1"),
    ({"colour": 1}, "routes[0].colour", "unknown key"),
])
def test_route_errors_name_the_key(tmp_path, route, path, message):
    """Each bad route value is reported at its exact key path."""
    entry = {"backends": [{"address": "127.0.0.1:9001"}], **route}
    with pytest.raises(ConfigError) as info:
        parse_config(config(routes=[entry]), str(tmp_path))
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.path == path and message in e.message for e in errors), errors


def test_duplicate_route_and_error_index(tmp_path):
    """A second route with the same host and path is an error at its own index."""
    entry = {"match": {"host": "a.com"}, "backends": [{"address": "127.0.0.1:9001"}]}
    bad = {"match": {"path": "x"}, "backends": [{"address": "127.0.0.1:9001"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(config(routes=[entry, dict(entry), bad]), str(tmp_path))
    paths = [e.path for e in info.value.errors]
    assert paths == ["routes[1].match", "routes[2].match.path"]
    assert str(info.value.errors[1]) == 'routes[2].match.path: must start with "/"'


def test_trusted_proxies_proxy_protocol_and_shared(tmp_path):
    """CIDRs and addresses, a listener's proxy_protocol and the Redis URL parse."""
    data = config(trusted_proxies=["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"],
                  limits={"shared": {"redis": "redis://127.0.0.1:6390/2"}})
    data["listen"][0]["proxy_protocol"] = True
    cfg = parse_config(data, str(tmp_path))
    assert cfg.trusted_proxies[1] == ipaddress.ip_network("192.0.2.1/32")
    assert cfg.listen[0].proxy_protocol is True
    shared = cfg.limits.shared
    assert (shared.host, shared.port, shared.db) == ("127.0.0.1", 6390, 2)


@pytest.mark.parametrize("top, path", [
    ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies[0]"),
    ({"trusted_proxies": "10.0.0.0/8"}, "trusted_proxies"),
    ({"limits": {"shared": {"redis": "http://x:1"}}}, "limits.shared.redis"),
    ({"limits": {"shared": {"redis": "redis://x:70000/0"}}}, "limits.shared.redis"),
    ({"limits": {"shared": {"url": "redis://x:1"}}}, "limits.shared.url"),
    ({"listen": [{"endpoint": "tcp:1", "proxy_protocol": "yes"}]}, "listen[0].proxy_protocol"),
])
def test_other_errors(tmp_path, top, path):
    """Bad trusted_proxies, Redis URLs and proxy_protocol values name their key."""
    with pytest.raises(ConfigError) as info:
        parse_config(config(**top), str(tmp_path))
    errors = getattr(info.value, "errors", [info.value])
    assert path in [e.path for e in errors], errors


def test_shared_budget_follows_the_store():
    """Local decisions at once; the store's answers (minus our spends in flight) correct the
    local view, so another instance's spends are seen on the next answer."""
    budget = SharedBudget(rate=1, burst=3)
    assert budget.allow(b"ip", 0.0) == (True, 0.0)      # local: 2 left, 1 in flight
    assert budget.allow(b"ip", 0.0) == (True, 0.0)      # local: 1 left, 2 in flight
    budget.settled(b"ip", -1.0, 0.0)   # the fleet is at -1 after our first spend (others spent)
    assert budget.allow(b"ip", 0.0)[0] is False          # -1 - 1 in flight: refused
    budget.unsettled(b"ip")                               # an answer that never came
    budget.settled(b"ip", -2.0, 0.0)
    allowed, retry_after = budget.allow(b"ip", 1.0)
    assert not allowed and retry_after == 2.0            # -1 after a second of refill
    budget.settled(b"ip", -1.0, 1.0)
    assert budget.allow(b"ip", 3.0) == (True, 0.0)       # refilled to 1


def test_shared_budget_alone_is_a_keyed_limiter():
    """Without answers (store down) it enforces the whole budget locally."""
    budget = SharedBudget(rate=1, burst=2)
    decisions = [budget.allow(b"ip", 0.0)[0] for _ in range(4)]
    for _ in range(4):
        budget.unsettled(b"ip")
    assert decisions == [True, True, False, False]


def test_the_worked_example_parses(tmp_path):
    """conf/fleet.yaml (README's worked example) is a valid configuration as shipped."""
    import os

    from proxyd.config import load_config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(repo, "conf", "fleet.yaml"), encoding="utf-8").read()
    assert "/var/log/proxyd/access.log" in text
    (tmp_path / "fleet.yaml").write_text(text.replace("/var/log/proxyd/", ""))
    for name in ("demo-cert.pem", "demo-key.pem"):
        (tmp_path / name).write_text("dummy\n")
    cfg = load_config(str(tmp_path / "fleet.yaml"))
    assert [route.name for route in cfg.routes] == ["shop.example.com/", "*.example.com/api/"]
    assert cfg.routes[0].health_check.expect_status == (200,)
    assert all(listen.proxy_protocol for listen in cfg.listen)
    assert cfg.limits.shared.host == "10.0.3.5" and len(cfg.trusted_proxies) == 2


def test_route_headers_keep_the_other_top_level_fields(tmp_path):
    """A route's headers replace only the keys it gives (forwarded included); the rest, e.g.
    the client certificate header, stay the top level's."""
    top = {"forwarded": "off", "client_cert_header": "x-client-cert", "via": False}
    route = {"backends": [{"address": "127.0.0.1:9001"}], "headers": {"forwarded": "append"}}
    cfg = parse_config(config(headers=top, routes=[route]), str(tmp_path))
    headers = cfg.routes[0].headers
    assert headers.forwarded == "append" and headers.via is False
    assert headers.client_cert_header == cfg.headers.client_cert_header


@pytest.mark.parametrize("route_path", ["/\u20ac", "/caf\u00e9", "/a\x7f", "/%7Euser", "/%61pi/",
                                        "/a%zz", "/a/%2e%2E/b"])
def test_a_route_path_no_request_can_match_is_an_error(tmp_path, route_path):
    """Routing compares the normalised request path (visible ASCII only, unreserved escapes
    decoded, dot segments gone, a stray ``%`` refused by the gate) with the route's path as
    written: a path outside that form could never match (``/%7Euser``: the request's
    ``/%7Euser`` is routed as ``/~user``), or, not Latin-1, crashed building the route table
    with a UnicodeEncodeError instead of naming its key. Each is refused at its key path."""
    entry = {"match": {"path": route_path}, "backends": [{"address": "127.0.0.1:9001"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(config(routes=[entry]), str(tmp_path))
    errors = getattr(info.value, "errors", [info.value])
    assert [e.path for e in errors] == ["routes[0].match.path"], errors


def test_route_paths_with_reserved_escapes_stay_valid(tmp_path):
    """Reserved escapes are not decoded by routing, so a route may name them (``%2F``)."""
    entry = {"match": {"path": "/a%2Fb/"}, "backends": [{"address": "127.0.0.1:9001"}]}
    assert parse_config(config(routes=[entry]), str(tmp_path)).routes[0].path == "/a%2Fb/"


def test_a_route_path_with_lower_case_escapes_names_its_normal_form(tmp_path):
    """Routing writes escapes in upper case (RFC 3986 §6.2.2.1, as nghttpx does), so a route
    path written ``/a%2fb/`` could never match: it is refused at its key path, and the message
    gives the form to write."""
    entry = {"match": {"path": "/a%2fb/"}, "backends": [{"address": "127.0.0.1:9001"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(config(routes=[entry]), str(tmp_path))
    errors = getattr(info.value, "errors", [info.value])
    assert [e.path for e in errors] == ["routes[0].match.path"], errors
    assert '"/a%2Fb/"' in str(errors[0])


def test_a_route_path_with_repeated_slashes_names_its_normal_form(tmp_path):
    """Routing merges repeated slashes, so a route path written ``/a//b`` could never match:
    it is refused at its key path, and the message gives the form to write."""
    entry = {"match": {"path": "/a//b"}, "backends": [{"address": "127.0.0.1:9001"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(config(routes=[entry]), str(tmp_path))
    errors = getattr(info.value, "errors", [info.value])
    assert [e.path for e in errors] == ["routes[0].match.path"], errors
    assert '"/a/b"' in str(errors[0])
