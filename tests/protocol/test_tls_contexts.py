"""The listener TLS contexts of proxyd.net.tls, driven in memory by Python's ssl module as client.

Strategy: a :class:`ServerContextFactory` built from a ListenerTLS (certificates written by
``tests.support.make_certificate``) makes the server side of each connection; the client is an
``ssl.SSLObject`` on memory BIOs, whose public ``session``/``session_reused`` show resumption.
The pump moves bytes between the two until both are idle, so nothing waits on a clock. The
clock of the factory is a variable, so ticket-key rotation is tested without waiting.
"""

import gc
import ssl
import weakref
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from proxyd.bridge import Policy
from proxyd.config import HeaderPolicy, ListenerCertificate, ListenerTLS
from proxyd.errors import ConfigError
from proxyd.net.tls import ServerContextFactory, subject_value
from tests.support import make_certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Server certificates (EC and RSA, exact and wildcard names), a client CA and clients."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_certificate(d, "ca", subject="proxyd test client CA", ca=True)
    other_ca = make_certificate(d, "other-ca", subject="unrelated CA", ca=True)
    return SimpleNamespace(
        default_ec=make_certificate(d, "default-ec", subject="default-ec", dns=["default.test"]),
        default_rsa=make_certificate(d, "default-rsa", subject="default-rsa",
                                     dns=["default.test"], key_type="rsa"),
        a=make_certificate(d, "a", subject="a", dns=["a.test", "www.a.test"]),
        wild=make_certificate(d, "wild", subject="wild", dns=["*.wild.test"], key_type="rsa"),
        cn_only=make_certificate(d, "cn", subject="cn.test", san=False),
        ca=ca,
        client=make_certificate(d, "client", subject=x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc.")]),
            issuer=(ca.cert, ca.key)),
        stranger=make_certificate(d, "stranger", subject="mallory",
                                  issuer=(other_ca.cert, other_ca.key)),
        dir=d,
    )


def listener_tls(*certs, **options):
    """A ListenerTLS of ``certs`` (make_certificate results) in the long form."""
    return ListenerTLS(certificates=tuple(
        ListenerCertificate(c.cert_path, c.key_path, f"tls.certificates[{i}]")
        for i, c in enumerate(certs)), **options)


class Clock:
    """A wall clock the test sets."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def client_context(alpn=("h2", "http/1.1"), max_version=None, ciphers=None, cert=None):
    """A client context that trusts anything (these tests look at what the server chose)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        ctx.load_cert_chain(cert.cert_path, cert.key_path)
    return ctx


def connect(factory, ctx, server_name=None, session=None, tls_protocol=None):
    """One handshake in memory; returns (client SSLObject, server Connection, error or None).

    After the handshake the client reads once, so TLS 1.3 tickets (sent after the handshake)
    are in ``client.session``.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name, session=session)
    server = factory.serverConnectionForTLS(tls_protocol)
    server.set_accept_state()
    error = None
    for _ in range(20):
        progressed = False
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            error = exc
        data = outgoing.read()
        if data:
            server.bio_write(data)
            progressed = True
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            error = error or exc
        try:
            data = server.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            incoming.write(data)
            progressed = True
        if not progressed:
            break
    if error is None:
        try:
            client.read(1)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:  # a TLS 1.3 server's refusal arrives after the handshake
            error = exc
    return client, server, error


def peer_cn(client):
    """The CN of the certificate the server presented."""
    der = client.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


# -- certificates by SNI -----------------------------------------------------------------------

@pytest.mark.parametrize("server_name, cn", [
    (None, "default-ec"),
    ("default.test", "default-ec"),
    ("unknown.test", "default-ec"),
    ("a.test", "a"),
    ("WWW.A.TEST", "a"),
    ("x.wild.test", "wild"),
    ("wild.test", "default-ec"),
    ("x.y.wild.test", "default-ec"),
    ("cn.test", "cn.test"),
])
def test_certificate_chosen_by_server_name(pki, server_name, cn):
    """Exact, wildcard (one label) and CN-only names; everything else gets the default."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, pki.a, pki.wild, pki.cn_only),
                                   ["h2", "http/1.1"])
    client, _server, error = connect(factory, client_context(), server_name)
    assert error is None
    assert peer_cn(client) == cn
    assert client.selected_alpn_protocol() == "h2"  # ALPN on every certificate context


@pytest.mark.parametrize("server_name, cipher, cn", [
    ("default.test", "ECDHE-ECDSA-AES128-GCM-SHA256", "default-ec"),
    ("default.test", "ECDHE-RSA-AES128-GCM-SHA256", "default-rsa"),
    (None, "ECDHE-RSA-AES128-GCM-SHA256", "default-rsa"),   # the RSA twin of the default
    ("x.wild.test", "ECDHE-RSA-AES128-GCM-SHA256", "wild"),
])
def test_rsa_or_ecdsa_by_what_the_client_accepts(pki, server_name, cipher, cn):
    """A name with an ECDSA and an RSA certificate: OpenSSL picks what the client can verify
    (here a TLS 1.2 client that offers only ECDSA or only RSA suites)."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, pki.default_rsa, pki.wild),
                                   ["http/1.1"])
    ctx = client_context(max_version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    client, _server, error = connect(factory, ctx, server_name)
    assert error is None
    assert (peer_cn(client), client.cipher()[0]) == (cn, cipher)


@pytest.mark.parametrize("offered, chosen", [
    (["http/1.1", "h2"], "h2"),        # server preference
    (["http/1.1"], None),              # no overlap: no protocol (the frontend then decides)
])
def test_alpn_on_the_chosen_context(pki, offered, chosen):
    """ALPN keeps its rules on a certificate context chosen by SNI."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, pki.a), ["h2"])
    client, _server, error = connect(factory, client_context(alpn=offered), "a.test")
    assert error is None
    assert (peer_cn(client), client.selected_alpn_protocol()) == ("a", chosen)


# -- resumption and rotation -------------------------------------------------------------------

@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-cache"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_sessions_resume_until_the_period_ends(pki, tickets, version):
    """A session resumes within its period; once the period changes (new keys or a new cache)
    it does not, and the new session resumes again."""
    clock = Clock(7200.0)  # the start of a one-hour period
    factory = ServerContextFactory(listener_tls(pki.default_ec, pki.a, session_tickets=tickets,
                                                session_timeout=3600), ["http/1.1"], clock=clock)
    ctx = client_context(alpn=["http/1.1"], max_version=version)
    first, _, error = connect(factory, ctx, "a.test")
    assert error is None and not first.session_reused and first.session is not None
    clock.now += 3599
    again, _, error = connect(factory, ctx, "a.test", session=first.session)
    assert error is None and again.session_reused
    assert peer_cn(again) == "a"
    clock.now += 1  # the next period: fresh ticket keys / an empty cache
    rotated, _, error = connect(factory, ctx, "a.test", session=again.session)
    assert error is None and not rotated.session_reused
    resumed, _, error = connect(factory, ctx, "a.test", session=rotated.session)
    assert error is None and resumed.session_reused


def test_rotation_is_aligned_to_the_clock(pki):
    """Two factories (two processes) started at different moments rotate at the same instant."""
    early, late = Clock(10_000.0), Clock(10_500.0)
    one = ServerContextFactory(listener_tls(pki.default_ec, session_timeout=1000), ["h2"],
                               clock=early)
    two = ServerContextFactory(listener_tls(pki.default_ec, session_timeout=1000), ["h2"],
                               clock=late)
    first = (one.session_context(), two.session_context())
    early.now = late.now = 10_999.0
    assert (one.session_context(), two.session_context()) == first
    early.now = late.now = 11_000.0
    assert one.session_context() is not first[0] and two.session_context() is not first[1]


def test_contexts_a_reload_replaced_are_freed_at_once(pki):
    """A reload builds every TLS listener's factory and contexts anew and drops the old ones.
    They must go by reference counting: the daemon raises the collector's threshold and
    freezes start-up objects (:mod:`proxyd.runtime`), and the contexts were a reference cycle
    with their factory through their callbacks (ALPN, SNI and client certificates were bound
    methods of it), so every reload left two OpenSSL contexts with their certificates and keys
    to a full collection (the daemon grew by ~44 KB per reload, 12 MB after 300). With the
    collector off, after a handshake through every callback, weak references to the dropped
    factory and its contexts are dead once the last connection lets go."""
    gc.collect()
    gc.disable()
    try:
        factory = ServerContextFactory(listener_tls(pki.default_ec, pki.a,
                                                    client_ca=pki.ca.cert_path,
                                                    verify_client="optional"), ["h2"])
        client, server, error = connect(factory, client_context(["h2"], cert=pki.client),
                                        "a.test", tls_protocol=frontend_stub())
        assert error is None and client.selected_alpn_protocol() == "h2"
        refs = [weakref.ref(factory), weakref.ref(factory.session_context()),
                weakref.ref(server.get_context())]
        del factory, client, server
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()


# -- client certificates -------------------------------------------------------------------------

def frontend_stub(headers=None):
    """What the info callback reaches: a TLS protocol whose wrapped protocol has a policy."""
    policy = Policy(headers=headers or HeaderPolicy(client_cert_header=b"x-client-subject"),
                    tls=True)
    return SimpleNamespace(wrappedProtocol=SimpleNamespace(policy=policy))


@pytest.mark.parametrize("verify, client, ok, subject", [
    ("require", "client", True, b"O=Example\\, Inc.,CN=alice"),
    ("require", None, False, None),
    ("require", "stranger", False, None),
    ("optional", "client", True, b"O=Example\\, Inc.,CN=alice"),
    ("optional", None, True, None),
    ("optional", "stranger", False, None),
])
def test_client_certificates(pki, verify, client, ok, subject):
    """require: no valid certificate, no handshake; optional: none is fine, a bad one is not.
    A verified subject lands in the connection's policy (RFC 4514)."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, pki.a, client_ca=pki.ca.cert_path,
                                                verify_client=verify), ["http/1.1"])
    stub = frontend_stub()
    cert = getattr(pki, client) if client else None
    _client, _server, error = connect(factory, client_context(["http/1.1"], cert=cert), "a.test",
                                      tls_protocol=stub)
    assert (error is None) is ok, error
    assert stub.wrappedProtocol.policy.client_subject == subject


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_client_certificate_subject_after_resumption(pki, version):
    """A resumed session keeps the verified subject of the certificate of its full handshake."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, client_ca=pki.ca.cert_path,
                                                verify_client="require"), ["http/1.1"])
    ctx = client_context(["http/1.1"], cert=pki.client, max_version=version)
    first, _, error = connect(factory, ctx, "default.test", tls_protocol=frontend_stub())
    assert error is None
    stub = frontend_stub()
    again, _, error = connect(factory, ctx, "default.test", session=first.session,
                              tls_protocol=stub)
    assert error is None and again.session_reused
    assert stub.wrappedProtocol.policy.client_subject == b"O=Example\\, Inc.,CN=alice"


def test_client_ca_alone_requires_a_certificate(pki):
    """A ListenerTLS with a client CA and no verify_client asks for (and requires) one."""
    factory = ServerContextFactory(listener_tls(pki.default_ec, client_ca=pki.ca.cert_path),
                                   ["http/1.1"])
    _client, _server, error = connect(factory, client_context(["http/1.1"]), "default.test",
                                      tls_protocol=frontend_stub())
    assert error is not None


@pytest.mark.parametrize("attributes, expected", [
    ([(NameOID.COMMON_NAME, "alice")], b"CN=alice"),
    ([(NameOID.COMMON_NAME, "a,b+c")], b"CN=a\\,b\\+c"),
    ([(NameOID.COMMON_NAME, "evil\r\nx-admin: 1")], b"CN=evil\\0d\\0ax-admin: 1"),
    ([(NameOID.COMMON_NAME, "nul\x00")], b"CN=nul\\00"),
    ([(NameOID.COMMON_NAME, "Zoë")], b"CN=Zo\\c3\\ab"),
    ([(NameOID.COMMON_NAME, "bob"), (NameOID.ORGANIZATION_NAME, "Ex")], b"O=Ex,CN=bob"),
])
def test_subject_value_is_printable_ascii(attributes, expected):
    """RFC 4514 text; controls and non-ASCII become \\hh escapes (no header injection)."""
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    assert subject_value(name) == expected


# -- configuration errors found when the files are loaded -----------------------------------------

def test_key_that_does_not_match_its_certificate(pki):
    """The error names the key path of the entry."""
    tls = ListenerTLS(certificates=(
        ListenerCertificate(pki.default_ec.cert_path, pki.default_ec.key_path,
                            "tls.certificates[0]"),
        ListenerCertificate(pki.a.cert_path, pki.wild.key_path, "tls.certificates[1]")))
    with pytest.raises(ConfigError) as info:
        ServerContextFactory(tls, ["h2"], path="listen[0]")
    assert info.value.path == "listen[0].tls.certificates[1].key"
    assert "does not match the certificate" in info.value.message


@pytest.mark.parametrize("content, where, message", [
    (b"not a certificate\n", "cert", "no PEM certificate in"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "key",
     "no usable PEM private key in"),
])
def test_unreadable_files(pki, tmp_path, content, where, message):
    """A file that is not what its key says is named by its key path (short form: tls.cert)."""
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    files = {"cert": pki.default_ec.cert_path, "key": pki.default_ec.key_path, where: str(bad)}
    tls = ListenerTLS(certificates=(ListenerCertificate(files["cert"], files["key"]),))
    with pytest.raises(ConfigError) as info:
        ServerContextFactory(tls, ["h2"], path="listen[2]")
    assert info.value.path == f"listen[2].tls.{where}"
    assert message in info.value.message


def test_encrypted_key(pki, tmp_path):
    """An encrypted key is refused at load time (OpenSSL would prompt for a passphrase)."""
    from cryptography.hazmat.primitives import serialization
    key = tmp_path / "enc.pem"
    key.write_bytes(pki.default_ec.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    tls = ListenerTLS(certificates=(ListenerCertificate(pki.default_ec.cert_path, str(key)),))
    with pytest.raises(ConfigError) as info:
        ServerContextFactory(tls, ["h2"], path="listen[0]")
    assert (info.value.path, "is encrypted" in info.value.message) == ("listen[0].tls.key", True)


def test_certificate_never_chosen(pki):
    """A certificate whose every name an earlier one of the same key type has is an error."""
    with pytest.raises(ConfigError) as info:
        ServerContextFactory(listener_tls(pki.default_ec, pki.a, pki.a), ["h2"], path="listen[1]")
    assert info.value.path == "listen[1].tls.certificates[2].cert"
    assert info.value.message.startswith("never chosen: certificates before it with the same "
                                         "key type (ec) cover all its names")


def test_client_ca_that_is_not_pem(pki, tmp_path):
    """A client_ca file OpenSSL cannot load is named by its key path."""
    bad = tmp_path / "ca.pem"
    bad.write_bytes(b"nothing\n")
    with pytest.raises(ConfigError) as info:
        ServerContextFactory(listener_tls(pki.default_ec, client_ca=str(bad),
                                          verify_client="require"), ["h2"], path="listen[0]")
    assert info.value.path == "listen[0].tls.client_ca"
