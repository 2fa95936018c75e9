"""TLS for listeners: certificates chosen by SNI, resumable sessions, optional client certificates.

Strategy: everything that can fail is done when the configuration is loaded (start, ``--check``,
reload), so a bad file is reported with its key path before anything listens. A listener's
:class:`ServerContextFactory` holds two kinds of pyOpenSSL contexts:

* *certificate contexts*, one per group of certificates that some server name gets (the pure
  :class:`proxyd.sni.SniTable` decides which, from the subjectAltName DNS names read here). A
  group may hold one certificate per key type (an ECDSA and an RSA one for the same names):
  OpenSSL then picks, per handshake, the one the client's signature algorithms allow.
* the *session context*, which every connection starts on. Its servername callback moves the
  connection to the certificate context of the name the client asked for (OpenSSL calls it
  without SNI too: then the default group). The session context itself holds no certificate;
  it owns what OpenSSL keeps per ``SSL_CTX`` for resumption: the session-ticket keys (OpenSSL
  draws them at random when the context is made) or, with ``session_tickets: false``, the
  session cache.

Every context has the same settings: TLS 1.2 at least, TLS 1.2 suites limited to ECDHE with
AEAD ciphers, no compression nor renegotiation, ALPN picking the first protocol of the
listener's ``protocols:`` list that the client offers (server preference, as nghttpx does),
the same session id context, and the client-certificate verification.

Rotation: pyOpenSSL (26.4) has no call that sets or reads ticket keys (no
``SSL_CTX_set_tlsext_ticket_key_cb`` nor ``SSL_CTX_set_tlsext_ticket_keys``, not even in its
private cffi bindings), so keys cannot be chosen, shared between processes or kept for
decryption after a rotation. What it allows is a new session context: every
``session_timeout`` (aligned to the wall clock, so every process of a host rotates at the same
instants) the next handshake makes one, with fresh random keys (or an empty cache). Sessions of
the previous period are no longer resumed (the client makes a full handshake), and OpenSSL
refuses tickets older than ``session_timeout`` in any case. No timer is needed: keys are only
used in handshakes, and the check is one comparison per connection. Should a binding ever
offer ``SSL_CTX_set_tlsext_ticket_keys``, :meth:`ServerContextFactory.session_context` is the
one place to set keys derived from a secret the supervisor hands every worker and the period
number (the same keys in every process without further messages), keeping the previous
period's keys for decryption. With ``session_tickets: false`` the cache is OpenSSL's internal
one (at most 20480 sessions, OpenSSL's default: pyOpenSSL cannot change the size).

Client certificates: with ``client_ca`` the handshake asks for a certificate (``require`` fails
without a valid one); when it completes, the verified subject (RFC 4514, non-printable bytes
escaped) goes into the connection's translation policy, from which :mod:`proxyd.headers` sets
``headers.client_cert_header`` toward the backend.
"""

import hashlib
import time

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from proxyd.errors import ConfigError
from proxyd.net.twistedshim import MODE_ENABLE_PARTIAL_WRITE
from proxyd.sni import SniTable

log = Logger(namespace="proxyd.tls")

_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_OPTIONS = (SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
            | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
_VERIFY = {
    "optional": SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE,
    "require": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
}
_KEY_TYPES = ((rsa.RSAPublicKey, "rsa"), (ec.EllipticCurvePublicKey, "ec"),
              (ed25519.Ed25519PublicKey, "ed25519"), (ed448.Ed448PublicKey, "ed448"),
              (dsa.DSAPublicKey, "dsa"))


class Certificate:
    """A certificate of a listener as read from its files: DNS names, key type, paths."""

    __slots__ = ("cert", "key", "where", "names", "key_type")

    def __init__(self, entry, path):
        self.cert, self.key = entry.cert, entry.key
        self.where = f"{path}.{entry.where}"
        leaf = _read_leaf(entry.cert, f"{self.where}.cert")
        try:
            public_key = leaf.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"unsupported key in '{entry.cert}': {exc}",
                              f"{self.where}.cert") from None
        self.names = dns_names(leaf)
        self.key_type = next((name for cls, name in _KEY_TYPES if isinstance(public_key, cls)),
                             "other")
        _check_key(entry.key, leaf, entry.cert, f"{self.where}.key")


def _read_leaf(path, where):
    try:
        with open(path, "rb") as stream:
            data = stream.read()
        return x509.load_pem_x509_certificates(data)[0]
    except OSError as exc:
        raise ConfigError(f"cannot read '{path}': {exc.strerror or exc}", where) from None
    except ValueError as exc:
        raise ConfigError(f"no PEM certificate in '{path}': {exc}", where) from None


def _check_key(path, leaf, cert_path, where):
    try:
        with open(path, "rb") as stream:
            key = serialization.load_pem_private_key(stream.read(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read '{path}': {exc.strerror or exc}", where) from None
    except TypeError:
        raise ConfigError(f"'{path}' is encrypted; proxyd needs an unencrypted key "
                          "(readable by the proxyd user only)", where) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"no usable PEM private key in '{path}': {exc}", where) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise ConfigError(f"'{path}' does not match the certificate '{cert_path}'", where)


def dns_names(leaf):
    """The DNS names a certificate answers for: its subjectAltName DNS entries, or, only when
    it has no subjectAltName at all, its subject common names."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [attr.value for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                if isinstance(attr.value, str)]
    return san.get_values_for_type(x509.DNSName)


def subject_value(name):
    """A certificate subject (``x509.Name``) as a header value: RFC 4514 text, printable ASCII.

    Bytes outside printable ASCII (controls, and the UTF-8 of non-ASCII characters) become
    RFC 4514 ``\\hh`` escapes, so no subject can put CR, LF or NUL into a header.
    """
    text = name.rfc4514_string()
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    out = bytearray()
    for char in text:
        if " " <= char <= "~":
            out += char.encode("ascii")
        else:
            out += b"".join(b"\\%02x" % byte for byte in char.encode("utf-8"))
    return bytes(out)


# The contexts' callbacks hold what they need, never the factory: a factory that held its
# contexts and was held by their callbacks was a reference cycle, left (with the OpenSSL
# contexts, certificates and keys) to a full collection after every reload.

def _alpn_chooser(protocols):
    """The ALPN callback: the first of ``protocols`` (our order) that the client offers."""
    def select(connection, offered):
        for name in protocols:
            if name in offered:
                return name
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _sni_switch(contexts, table):
    """The SNI callback of a session context: move the connection to the certificate context
    ``table`` chooses for the name it asked for."""
    def switch(connection):
        connection.set_context(contexts[table.choose(connection.get_servername())])

    return switch


def _on_info(connection, where, _ret):
    """Handshake done on a listener with client certificates: hand the subject on."""
    if not where & SSL.SSL_CB_HANDSHAKE_DONE:
        return
    try:
        cert = connection.get_peer_certificate(as_cryptography=True)
        tls_protocol = connection.get_app_data()
        if cert is None or tls_protocol is None:
            return
        frontend = tls_protocol.wrappedProtocol
        frontend.policy = frontend.policy.with_client_subject(subject_value(cert.subject))
    except Exception:  # a callback of OpenSSL: log, never raise into it
        log.failure("reading the client certificate's subject")


@implementer(IOpenSSLServerConnectionCreator)
class ServerContextFactory:
    """Twisted server connection creator for a TLS listener (``tls``: a ListenerTLS).

    ``path`` prefixes the key paths of errors (``listen[0]``); ``clock`` gives the wall-clock
    time the session contexts rotate by.
    """

    def __init__(self, tls, protocols, path="listen", clock=time.time):
        self._protocols = [p.encode() for p in protocols]
        verify = tls.verify_client or ("require" if tls.client_ca is not None else None)
        self._verify = _VERIFY.get(verify, SSL.VERIFY_NONE)
        self._client_ca = tls.client_ca
        self._tickets = tls.session_tickets
        self._timeout = tls.session_timeout
        self._clock = clock
        self._path = path
        self._session_id = self._session_id_context(tls, path)
        certificates = [Certificate(entry, path) for entry in tls.certificates]
        self.table = SniTable([(c.names, c.key_type) for c in certificates])
        for index in self.table.unused():
            cert = certificates[index]
            reason = ("it has no DNS name" if not cert.names else
                      f"certificates before it with the same key type ({cert.key_type}) "
                      f"cover all its names")
            raise ConfigError(f"never chosen: {reason}", f"{cert.where}.cert")
        self._contexts = {group: self._certificate_context([certificates[i] for i in group])
                          for group in self.table.groups}
        self._epoch = None
        self._session_context = None
        self.session_context()  # fails now rather than at the first handshake

    def _session_id_context(self, tls, path):
        """The session id context: sessions only resume under the same client-certificate rules."""
        digest = hashlib.sha256(b"proxyd\0" + str(tls.verify_client).encode())
        if tls.client_ca is not None:
            try:
                with open(tls.client_ca, "rb") as stream:
                    digest.update(stream.read())
            except OSError as exc:
                raise ConfigError(f"cannot read '{tls.client_ca}': {exc.strerror or exc}",
                                  f"{path}.tls.client_ca") from None
        return digest.digest()

    def _base_context(self):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.clear_mode(MODE_ENABLE_PARTIAL_WRITE)  # whole writes: see twistedshim
        ctx.set_options(_OPTIONS | (0 if self._tickets else SSL.OP_NO_TICKET))
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_session_id(self._session_id)
        ctx.set_timeout(int(self._timeout))
        # Tickets: nothing to cache (stateless); no tickets: OpenSSL's bounded server cache.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF if self._tickets else SSL.SESS_CACHE_SERVER)
        ctx.set_alpn_select_callback(_alpn_chooser(self._protocols))
        ctx.set_verify(self._verify)
        return ctx

    def _certificate_context(self, certificates):
        ctx = self._base_context()
        for cert in certificates:
            try:
                ctx.use_certificate_chain_file(cert.cert)
            except SSL.Error as exc:
                raise ConfigError(f"cannot load certificate '{cert.cert}': {exc}",
                                  f"{cert.where}.cert") from None
            try:
                ctx.use_privatekey_file(cert.key)
                ctx.check_privatekey()
            except SSL.Error as exc:
                raise ConfigError(f"cannot load key '{cert.key}' for the certificate: {exc}",
                                  f"{cert.where}.key") from None
        if self._client_ca is not None:
            try:
                ctx.load_verify_locations(self._client_ca)
                ctx.load_client_ca(self._client_ca.encode())
            except SSL.Error as exc:
                raise ConfigError(f"cannot load CA certificates from '{self._client_ca}': {exc}",
                                  f"{self._path}.tls.client_ca") from None
            ctx.set_info_callback(_on_info)
        return ctx

    def session_context(self):
        """The session context of the current period (made anew when a period begins)."""
        epoch = int(self._clock() // self._timeout)
        if epoch != self._epoch:
            ctx = self._base_context()
            ctx.set_tlsext_servername_callback(_sni_switch(self._contexts, self.table))
            self._session_context, self._epoch = ctx, epoch
        return self._session_context

    def serverConnectionForTLS(self, tls_protocol):
        """A new server-side TLS connection on the current session context."""
        connection = SSL.Connection(self.session_context(), None)
        if self._client_ca is not None:
            connection.set_app_data(tls_protocol)
        return connection
