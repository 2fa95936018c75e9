"""TLS of listeners through the real daemon: certificates by SNI, ECDSA and RSA, resumption,
client certificates, and configuration errors of the ``tls:`` section.

Strategy: a test PKI made with the openssl command (harness.make_ca / make_signed_cert):
server certificates for exact and wildcard names, with EC and RSA keys, and client
certificates from a client CA (and from a CA proxyd does not trust). ``openssl s_client``
shows what a handshake chose (subject, peer signature type, "New" or "Reused"); curl with and
without a client certificate reaches the demo backend's /echo, which shows the headers the
backend received. Daemons that several tests only read from are shared per module.
"""

import contextlib

import pytest

from .harness import (
    base_config, curl, make_ca, make_signed_cert, running, s_client, s_client_facts,
)
from .test_e2e_config import run_to_exit
from .test_e2e_reload import reload

SUBJECT = "x-client-subject"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Server certificates, a client CA with a client, and a stranger from another CA."""
    d = tmp_path_factory.mktemp("tls-pki")
    server_ca = make_ca(d, "server-ca")
    client_ca = make_ca(d, "client-ca")
    other_ca = make_ca(d, "other-ca")

    def server(stem, names, key_type="ec"):
        return make_signed_cert(d, stem, server_ca, subject=f"/CN={stem}",
                                san=",".join(f"DNS:{n}" for n in names), key_type=key_type)

    return {
        "default-ec": server("default-ec", ["default.test", "localhost"]),
        "default-rsa": server("default-rsa", ["default.test", "localhost"], "rsa"),
        "a-cert": server("a-cert", ["a.test"], "rsa"),
        "wild-cert": server("wild-cert", ["*.wild.test"]),
        "client_ca": client_ca,
        "client": make_signed_cert(d, "client", client_ca, subject="/CN=alice/O=Example",
                                   purpose="clientAuth"),
        "stranger": make_signed_cert(d, "stranger", other_ca, subject="/CN=mallory",
                                     purpose="clientAuth"),
    }


def certificates(pki, *names):
    """The ``certificates:`` list of the named server certificates, in order."""
    return [{"cert": str(pki[n][0]), "key": str(pki[n][1])} for n in names]


def tls_config(backend, pki, names, **tls):
    """A default-mode config whose TLS listener has the named certificates and ``tls`` options."""
    cert, key = pki[names[0]]
    config = base_config(backend, cert, key, headers={"client_cert_header": SUBJECT})
    config["listen"][0]["tls"] = {"certificates": certificates(pki, *names), **tls}
    return config


def request(host="default.test"):
    """An HTTP/1.1 request that ends the connection once answered (for s_client)."""
    return f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def sni_proxy(shared_backend, pki, tmp_path_factory):
    """proxyd whose TLS listener has an EC and an RSA default, an exact and a wildcard name."""
    config = tls_config(shared_backend, pki,
                        ["default-ec", "default-rsa", "a-cert", "wild-cert"])
    with running(config, tmp_path_factory.mktemp("proxyd-sni")) as proxy:
        yield proxy


# -- certificates by SNI ---------------------------------------------------------------------

@pytest.mark.parametrize("args, cn", [
    (["-servername", "default.test"], "default-ec"),
    (["-servername", "a.test"], "a-cert"),
    (["-servername", "A.Test"], "a-cert"),
    (["-servername", "x.wild.test"], "wild-cert"),
    (["-servername", "wild.test"], "default-ec"),        # a wildcard stands for one label
    (["-servername", "a.b.wild.test"], "default-ec"),    # ... not two
    (["-servername", "unknown.test"], "default-ec"),     # unknown names get the default
    (["-noservername"], "default-ec"),                   # so do clients without SNI
])
def test_certificate_chosen_by_sni(sni_proxy, args, cn):
    """``openssl s_client -servername`` gets the certificate of the name it asks for."""
    facts = s_client_facts(s_client(sni_proxy.port(tls=True), *args, "-alpn", "http/1.1",
                                    request=request()))
    assert facts["cn"] == cn, facts


@pytest.mark.parametrize("sigalgs, cn, signature", [
    ("ECDSA+SHA256", "default-ec", "ECDSA"),
    ("RSA-PSS+SHA256:RSA+SHA256", "default-rsa", "RSA-PSS"),
])
def test_ecdsa_or_rsa_by_the_clients_signature_algorithms(sni_proxy, sigalgs, cn, signature):
    """Two certificates for one name: the client's signature algorithms pick ECDSA or RSA."""
    out = s_client(sni_proxy.port(tls=True), "-servername", "default.test", "-sigalgs", sigalgs,
                   "-alpn", "http/1.1", request=request())
    facts = s_client_facts(out)
    assert (facts["cn"], facts["signature"]) == (cn, signature), out


def test_alpn_and_requests_on_a_chosen_certificate(sni_proxy, tmp_path):
    """A name chosen by SNI keeps ALPN: curl gets h2 and a response from the backend."""
    port = sni_proxy.port(tls=True)
    result = curl(f"https://a.test:{port}/echo", "--resolve", f"a.test:{port}:127.0.0.1",
                  mode="h2", tmpdir=tmp_path)
    assert (result.status, result.version) == (200, "2"), result


# -- session resumption ----------------------------------------------------------------------

@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-cache"])
def test_session_resumption(shared_backend, pki, tmp_path, tickets):
    """``s_client -sess_out`` then ``-sess_in``: the second handshake says "Reused", over
    TLS 1.3 and TLS 1.2, with tickets and with the session cache."""
    config = tls_config(shared_backend, pki, ["default-ec", "a-cert"], session_tickets=tickets)
    with running(config, tmp_path / "proxyd") as proxy:
        port = proxy.port(tls=True)
        for version in ("-tls1_3", "-tls1_2"):
            session = tmp_path / f"session{version}.pem"
            common = ["-servername", "a.test", version, "-alpn", "http/1.1"]
            first = s_client_facts(s_client(port, *common, "-sess_out", str(session),
                                            request=request("a.test")))
            assert first["session"] == "New" and first["cn"] == "a-cert", first
            out = s_client(port, *common, "-sess_in", str(session), request=request("a.test"))
            again = s_client_facts(out)
            assert again["session"] == "Reused", out
            assert again["version"] == ("TLSv1.3" if version == "-tls1_3" else "TLSv1.2")


# -- client certificates ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def mtls_proxies(shared_backend, pki, tmp_path_factory):
    """{verify_client: proxyd} for require and optional, client CA from the test PKI."""
    with contextlib.ExitStack() as stack:
        proxies = {}
        for verify in ("require", "optional"):
            config = tls_config(shared_backend, pki, ["default-ec"],
                                client_ca=str(pki["client_ca"][0]), verify_client=verify)
            proxies[verify] = stack.enter_context(
                running(config, tmp_path_factory.mktemp(f"proxyd-{verify}")))
        yield proxies


def subjects(result):
    """The client-certificate header values the backend received."""
    return [v for k, v in result.json()["headers"] if k.lower() == SUBJECT]


def cert_args(pki, who):
    """curl options presenting ``who``'s certificate (none for None)."""
    if who is None:
        return []
    cert, key = pki[who]
    return ["--cert", str(cert), "--key", str(key)]


@pytest.mark.parametrize("mode", ["h2", "h1"])
@pytest.mark.parametrize("verify, who, expected", [
    ("require", "client", ["O=Example,CN=alice"]),
    ("optional", "client", ["O=Example,CN=alice"]),
    ("optional", None, []),
])
def test_verified_subject_reaches_the_backend_and_forgeries_do_not(
        mtls_proxies, pki, tmp_path, mode, verify, who, expected):
    """The backend sees the verified subject, never what the client sent in that header."""
    proxy = mtls_proxies[verify]
    result = curl(proxy.url("/echo", tls=True), *cert_args(pki, who),
                  "-H", "X-Client-Subject: CN=admin", "-H", "x-client-subject: O=Root",
                  mode=mode, tmpdir=tmp_path)
    assert result.status == 200, result
    assert subjects(result) == expected


@pytest.mark.parametrize("verify, who", [
    ("require", None),           # no certificate
    ("require", "stranger"),     # a certificate from a CA proxyd does not trust
    ("optional", "stranger"),
])
def test_handshake_refused(mtls_proxies, pki, tmp_path, verify, who):
    """A missing (require) or untrusted certificate fails the handshake: nothing is served."""
    result = curl(mtls_proxies[verify].url("/echo", tls=True), *cert_args(pki, who),
                  mode="h1", tmpdir=tmp_path)
    assert result.rc != 0 and result.status == 0, result


def test_cleartext_listener_strips_the_forged_header(mtls_proxies, tmp_path):
    """A listener without TLS never lets a client set the client-certificate header either."""
    result = curl(mtls_proxies["require"].url("/echo"), "-H", "X-Client-Subject: CN=admin",
                  mode="h2c", tmpdir=tmp_path)
    assert result.status == 200 and subjects(result) == [], result


# -- reload and configuration errors ---------------------------------------------------------

def test_reload_adds_a_certificate(backend, pki, start_proxyd):
    """A reload that adds a certificate serves its name to new handshakes."""
    config = tls_config(backend, pki, ["default-ec"])
    proxy = start_proxyd(config)
    port = proxy.port(tls=True)
    assert s_client_facts(s_client(port, "-servername", "a.test"))["cn"] == "default-ec"
    config["listen"][0]["tls"]["certificates"] = certificates(pki, "default-ec", "a-cert")
    reload(proxy, config)
    assert s_client_facts(s_client(port, "-servername", "a.test"))["cn"] == "a-cert"
    assert s_client_facts(s_client(port, "-servername", "b.test"))["cn"] == "default-ec"


@pytest.mark.parametrize("names, keys, expected", [
    (["default-ec", "a-cert"], ["default-ec", "wild-cert"],
     "listen[0].tls.certificates[1].key: "),
    (["default-ec", "a-cert", "a-cert"], None,
     "listen[0].tls.certificates[2].cert: never chosen"),
])
def test_bad_certificates_exit_before_listening(backend, pki, tmp_path, names, keys, expected):
    """A key that does not match its certificate, or a certificate no name can reach: the
    daemon exits non-zero without listening and names the key path."""
    config = tls_config(backend, pki, names)
    for entry, name in zip(config["listen"][0]["tls"]["certificates"], keys or names):
        entry["key"] = str(pki[name][1])
    rc, output, listened = run_to_exit(config, tmp_path)
    assert rc != 0 and not listened, output
    assert expected in output, output
    if keys:
        assert "does not match the certificate" in output, output
