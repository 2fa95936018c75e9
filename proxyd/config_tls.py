"""The ``tls:`` section of a listener: certificates chosen by SNI, sessions, client certificates.

Strategy: like the other section parsers of :mod:`proxyd.config` (which re-exports what is
here), this turns the YAML mapping into frozen dataclasses and reports every problem with its
key path; files are only checked to exist and be readable. What needs OpenSSL (parsing the
certificates, matching keys to certificates, reading their names) is done by
:mod:`proxyd.net.tls` before anything listens, with the key paths recorded here
(:attr:`ListenerCertificate.where`), so ``--check``, startup and reload name the same key.

Two spellings of the certificates, both kept: ``tls: {cert, key}`` (one certificate, errors at
``listen[0].tls.cert``) and ``tls: {certificates: [{cert, key}, ...]}`` (the first is the
default, errors at ``listen[0].tls.certificates[1].key``); giving both is an error.
"""

from dataclasses import dataclass, field

from proxyd.config_schema import (
    boolean, join, non_empty_list, parse_duration, readable_file, require, section, string,
)
from proxyd.errors import ConfigError

__all__ = [
    "ListenerCertificate", "ListenerTLS", "VERIFY_CLIENT", "client_cert_header", "listener_tls",
]

#: ``verify_client`` values: ``optional`` asks for a certificate and verifies one if sent;
#: ``require`` ends the handshake of a client without a valid one.
VERIFY_CLIENT = ("optional", "require")
_KEYS = ("cert", "key", "certificates", "client_ca", "verify_client", "session_tickets",
         "session_timeout")
_DEFAULT_SESSION_TIMEOUT = 3600.0
_MAX_SESSION_TIMEOUT = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ListenerCertificate:
    """One certificate chain and its private key (absolute paths, checked readable).

    ``where`` is the key path of the entry below the listener (``tls`` for the short form,
    ``tls.certificates[1]`` otherwise), for the errors found when the files are loaded.
    """

    cert: str
    key: str
    where: str = field(default="tls", compare=False)


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    """TLS of a listener.

    ``certificates``: at least one; the first is the default (no SNI, or an unknown name).
    ``client_ca``: PEM file of the CAs client certificates must chain to, or None (no client
    certificates asked for); ``verify_client``: ``optional`` or ``require`` (only with a CA).
    ``session_tickets``: resume sessions with tickets (stateless) or, when false, from a
    per-process session cache; ``session_timeout`` (seconds): how long a session can be
    resumed, and the period at which the ticket keys (or the cache) are renewed.
    """

    certificates: tuple[ListenerCertificate, ...]
    client_ca: str | None = None
    verify_client: str | None = None
    session_tickets: bool = True
    session_timeout: float = _DEFAULT_SESSION_TIMEOUT

    @property
    def cert(self):
        """The default certificate's chain file."""
        return self.certificates[0].cert

    @property
    def key(self):
        """The default certificate's key file."""
        return self.certificates[0].key


def _off(value):
    return value is None or value is False


def _pair(data, path, where, base_dir, problems):
    """One ``{cert, key}`` mapping at ``path`` -> ListenerCertificate (None after problems)."""
    files = {}
    for key in ("cert", "key"):
        files[key] = problems.attempt(
            lambda k=key: readable_file(require(data, path, k), join(path, k), base_dir))
    if None in files.values():
        return None
    return ListenerCertificate(files["cert"], files["key"], where)


def listener_tls(tls_data, tls_path, base_dir, problems):
    """Parse ``listen[i].tls`` (``tls_path``): None when absent or false."""
    if _off(tls_data):
        return None
    if not isinstance(tls_data, dict):
        raise ConfigError("must be a mapping with certificates (or cert and key), or false",
                          tls_path)
    item = section(tls_data, tls_path, _KEYS, problems=problems)
    before = len(problems.errors)
    short = [k for k in ("cert", "key") if item.get(k) is not None]
    certificates = []
    if item.get("certificates") is not None:
        if short:
            problems.add(ConfigError("give either cert and key or certificates, not both",
                                     join(tls_path, short[0])))
        where = join(tls_path, "certificates")
        entries = problems.attempt(non_empty_list, item["certificates"], where, default=[])
        for i, entry in enumerate(entries):
            path = f"{where}[{i}]"
            entry = problems.attempt(section, entry, path, ("cert", "key"), problems=problems,
                                     default=None)
            if entry is not None:
                certificates.append(_pair(entry, path, f"tls.certificates[{i}]", base_dir,
                                          problems))
    elif short:
        certificates.append(_pair(item, tls_path, "tls", base_dir, problems))
    else:
        problems.add(ConfigError("required key missing (or cert and key)",
                                 join(tls_path, "certificates")))
    client_ca = item.get("client_ca")
    if client_ca is not None:
        client_ca = problems.attempt(readable_file, client_ca, join(tls_path, "client_ca"),
                                     base_dir)
    verify = item.get("verify_client")
    if verify is not None and verify not in VERIFY_CLIENT:
        problems.add(ConfigError(f"must be one of {', '.join(VERIFY_CLIENT)}",
                                 join(tls_path, "verify_client")))
    elif verify is not None and item.get("client_ca") is None:
        problems.add(ConfigError("needs client_ca (the CAs client certificates chain to)",
                                 join(tls_path, "verify_client")))
    elif verify is None and item.get("client_ca") is not None:
        verify = "require"
    tickets = problems.attempt(boolean, item.get("session_tickets"),
                               join(tls_path, "session_tickets"), True, default=True)
    timeout = _DEFAULT_SESSION_TIMEOUT
    if item.get("session_timeout") is not None:
        where = join(tls_path, "session_timeout")
        timeout = problems.attempt(parse_duration, item["session_timeout"], where,
                                   default=timeout)
        if not 1 <= timeout <= _MAX_SESSION_TIMEOUT:
            problems.add(ConfigError("must be between 1s and 168h (TLS 1.3's longest ticket "
                                     "lifetime)", where))
    if len(problems.errors) > before:
        return None
    return ListenerTLS(certificates=tuple(certificates), client_ca=client_ca,
                       verify_client=verify, session_tickets=tickets, session_timeout=timeout)


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
# Names proxyd sets or removes itself, or that frame a message: not for the client certificate.
_RESERVED_HEADERS = frozenset((
    "host", "cookie", "via", "x-forwarded-for", "x-forwarded-proto", "forwarded",
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "upgrade", "te", "trailer", "http2-settings", "expect"))


def client_cert_header(value, path):
    """``headers.client_cert_header``: a header name (a token), stored lower-case as bytes."""
    name = string(value, path).lower()
    if not name or not set(name) <= _TCHAR:
        raise ConfigError("must be a header name such as x-client-subject", path)
    if name.replace("_", "-") in _RESERVED_HEADERS:  # CGI-style backends read _ as -
        raise ConfigError(f"{name} is a header proxyd sets or removes itself; choose another "
                          "name such as x-client-subject", path)
    return name.encode("ascii")
