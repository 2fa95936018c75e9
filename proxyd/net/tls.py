"""TLS for listeners: a pyOpenSSL context with modern settings and ALPN in the configured order.

Strategy: one context per listener, built once at start (bad files fail before listening).
TLS 1.2 is the floor, TLS 1.2 suites are limited to ECDHE with AEAD ciphers, compression and
renegotiation are off, and ALPN picks the first protocol of the listener's ``protocols:`` list
that the client offers (server preference, as nghttpx does).
"""

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from proxyd.errors import ConfigError

_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@implementer(IOpenSSLServerConnectionCreator)
class ServerContextFactory:
    """Twisted server connection creator for a TLS listener."""

    def __init__(self, cert_path, key_path, protocols, path="listen"):
        self._protocols = [p.encode() for p in protocols]
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        ctx.set_cipher_list(_CIPHERS)
        try:
            ctx.use_certificate_chain_file(cert_path)
        except SSL.Error as exc:
            raise ConfigError(f"cannot load certificate '{cert_path}': {exc}", f"{path}.tls.cert")
        try:
            ctx.use_privatekey_file(key_path)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise ConfigError(f"cannot load key '{key_path}' for the certificate: {exc}",
                              f"{path}.tls.key")
        ctx.set_alpn_select_callback(self._select)
        self._context = ctx

    def _select(self, connection, offered):
        for name in self._protocols:
            if name in offered:
                return name
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tls_protocol):
        """A new server-side TLS connection on the shared context."""
        return SSL.Connection(self._context, None)
