"""Client endpoints toward backends: TCP or unix sockets, optionally wrapped in verified TLS.

Strategy: verification is Twisted's ``optionsForClientTLS`` (pyOpenSSL for the chain,
service-identity for the host name) against ``tls.ca`` or the system trust store, with
``server_name`` (default: the host of ``address``) as SNI and as the name checked, ALPN offering
only h2, and an optional client certificate for mTLS. ``verify: false`` keeps SNI and ALPN but
checks nothing, and is logged loudly once at start.
"""

import ipaddress
import re

from OpenSSL import SSL
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="proxyd.backend.tls")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def plain_endpoint(reactor, config, timeout):
    """A TCP or unix client endpoint for a backend's address."""
    if config.unix_path:
        return endpoints.UNIXClientEndpoint(reactor, config.unix_path, timeout=timeout)
    try:
        address = ipaddress.ip_address(config.host.strip("[]"))
    except ValueError:
        # A name: resolved per connection (in Twisted's resolver thread pool).
        return endpoints.HostnameEndpoint(reactor, config.host, config.port, timeout=timeout)
    # An IP literal needs no resolver round trip.
    if address.version == 4:
        return endpoints.TCP4ClientEndpoint(reactor, str(address), config.port, timeout=timeout)
    return endpoints.TCP6ClientEndpoint(reactor, str(address), config.port, timeout=timeout)


def client_endpoint(reactor, config, timeout, protocols=(b"h2",)):
    """The endpoint for a backend: plain, or wrapped in TLS as its ``tls:`` asks."""
    base = plain_endpoint(reactor, config, timeout)
    if config.tls is None:
        return base
    return endpoints.wrapClientTLS(client_tls_options(config, protocols), base)


def _trust_root(ca_path):
    with open(ca_path, "rb") as handle:
        blocks = _PEM_CERT.findall(handle.read())
    if not blocks:
        raise ValueError(f"no certificate in '{ca_path}'")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def client_tls_options(config, protocols=(b"h2",), warn=True):
    """The TLS connection creator for one backend's ``tls:`` settings."""
    tls = config.tls
    server_name = tls.server_name or config.host.strip("[]")
    client_cert = None
    if tls.cert:
        with open(tls.cert, "rb") as cert, open(tls.key, "rb") as key:
            client_cert = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
    if not tls.verify:
        if warn:
            log.warn("backend {addr}: TLS certificate verification is OFF (tls.verify: false); "
                     "anyone on the path can impersonate this backend", addr=config.address)
        return _UnverifiedClientTLS(server_name, list(protocols), client_cert)
    trust = _trust_root(tls.ca) if tls.ca else ssl.platformTrust()
    return ssl.optionsForClientTLS(server_name, trustRoot=trust, clientCertificate=client_cert,
                                   acceptableProtocols=list(protocols))


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """TLS with SNI and ALPN but no certificate checks (``verify: false``)."""

    def __init__(self, server_name, protocols, client_cert):
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        ctx.set_alpn_protos(protocols)
        if client_cert is not None:
            ctx.use_certificate(client_cert.original)
            ctx.use_privatekey(client_cert.privateKey.original)
        self._context = ctx
        self._server_name = server_name.encode("idna")

    def clientConnectionForTLS(self, tls_protocol):
        """A client TLS connection with SNI set."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        try:
            ipaddress.ip_address(self._server_name.decode())
        except ValueError:
            connection.set_tlsext_host_name(self._server_name)
        return connection
