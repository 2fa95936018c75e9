"""Helpers shared by the unit and protocol tests (one place, not copied per file).

``make_certificate`` writes test certificates (a CA, servers with given DNS names and key
types, clients signed by the CA) with the cryptography library, for in-memory TLS tests.

``RawPeer`` plays a SPDY peer that builds any frame by hand (its own zlib stream), so a test can
send what no well-behaved codec would. ``gated(event)`` runs a raw :class:`proxyd.events.RequestReceived` from any server codec through
the gate, with the rule set its ``http_version`` implies, so codec tests can assert what a
request means after the gate as well as what the codec handed over.

``h2_frame`` builds any HTTP/2 frame by hand and ``parse_h2_frames`` splits raw HTTP/2 bytes into
``(type, flags, stream id, payload)`` tuples, for tests that send or check what no library would.

The oracles of what proxyd writes to HTTP/1.1 backends live in :mod:`tests.oracles`.
"""

from proxyd import gate
from proxyd.codec.spdy import frames as fr


def family_of_version(http_version):
    """The gate family of a RequestReceived.http_version (b"2", b"SPDY/3", b"1.1" ...)."""
    if http_version == b"2":
        return gate.H2
    if http_version.startswith(b"SPDY"):
        return gate.SPDY
    return gate.HTTP1


def gated(event, scheme=b"http", extended_connect=False):
    """The :class:`proxyd.gate.Request` of a raw request event (raises Refused like the gate);
    ``extended_connect``: as on an HTTP/2 connection that advertised RFC 8441."""
    return gate.check_request(event, family_of_version(event.http_version), scheme,
                              extended_connect)


def fields(request):
    """``(method, scheme, authority, path, headers)`` of a gated request, for compact asserts."""
    return request.method, request.scheme, request.authority, request.path, request.headers


class H11ResponseOracle:
    """An h11 client connection that reads backend responses into :mod:`proxyd.events` the way
    :class:`proxyd.codec.h1client.H1FastClientCodec` should (the oracle of its tests)."""

    def __init__(self, method=b"GET"):
        import h11

        self._h11 = h11
        self._conn = h11.Connection(h11.CLIENT)
        self._conn.send(h11.Request(method=method, target=b"/x", headers=[(b"host", b"app")]))
        self._conn.send(h11.EndOfMessage())

    def receive_data(self, data):
        """Feed response bytes (``b""``: the backend closed); return neutral events."""
        from proxyd import events as ev

        h11 = self._h11
        self._conn.receive_data(data)
        out = []
        while True:
            event = self._conn.next_event()
            kind = type(event)
            if kind is h11.Data:
                out.append(ev.DataReceived(stream_id=1, data=bytes(event.data)))
            elif kind is h11.Response:
                out.append(ev.ResponseReceived(stream_id=1, status=event.status_code,
                                               headers=list(event.headers)))
            elif kind is h11.EndOfMessage:
                if event.headers:
                    out.append(ev.TrailersReceived(stream_id=1, headers=list(event.headers)))
                out.append(ev.StreamEnded(stream_id=1))
            elif kind is h11.InformationalResponse:
                out.append(ev.InformationalResponse(stream_id=1, status=event.status_code,
                                                    headers=list(event.headers)))
            elif event is h11.NEED_DATA or event is h11.PAUSED or kind is h11.ConnectionClosed:
                return out


def parse_h11_requests(data):
    """Every h11 event of the requests in ``data`` (a server's view; stops at NEED_DATA)."""
    import h11

    server = h11.Connection(h11.SERVER)
    if data:
        server.receive_data(data)
    events = []
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
            return events
        events.append(event)
        if type(event) is h11.EndOfMessage:
            leftover = bytes(server.trailing_data[0])
            server = h11.Connection(h11.SERVER)  # the next request, as a fresh server sees it
            if leftover:
                server.receive_data(leftover)


class RawPeer:
    """Hand-builds frames with its own zlib stream, and decodes what the codec sends back."""

    def __init__(self, wire_version):
        self.v = wire_version
        self.comp = fr.HeaderCompressor(self.v)
        self.decomp = fr.HeaderDecompressor(self.v, 1 << 20)

    def request_pairs(self, path=b"/", extra=()):
        """A valid request header list for this version."""
        if self.v == 2:
            base = [(b"method", b"GET"), (b"url", path), (b"version", b"HTTP/1.1"),
                    (b"host", b"example.com"), (b"scheme", b"https")]
        else:
            base = [(b":method", b"GET"), (b":path", path), (b":version", b"HTTP/1.1"),
                    (b":host", b"example.com"), (b":scheme", b"https")]
        return base + list(extra)

    def syn_stream(self, sid, pairs=None, fin=True, flags_unidirectional=False):
        """SYN_STREAM frame bytes."""
        block = self.comp.compress(self.request_pairs() if pairs is None else pairs)
        return fr.encode_syn_stream(self.v, sid, block, fin=fin,
                                    unidirectional=flags_unidirectional)

    def syn_reply(self, sid, status=b"200 OK", fin=False):
        """SYN_REPLY frame bytes (server role)."""
        name, ver = (b"status", b"version") if self.v == 2 else (b":status", b":version")
        block = self.comp.compress([(name, status), (ver, b"HTTP/1.1")])
        return fr.encode_syn_reply(self.v, sid, block, fin)

    def headers(self, sid, pairs, fin=True):
        """HEADERS frame bytes."""
        return fr.encode_headers(self.v, sid, self.comp.compress(pairs), fin)

    def read(self, data):
        """Frames the codec sent, as (type or "DATA", stream_id, flags, detail) tuples."""
        out = []
        for f in fr.split_frames(data):
            if not f.control:
                out.append(("DATA", f.stream_id, f.flags, f.payload))
            elif f.type in (fr.SYN_REPLY, fr.HEADERS):
                sid, block = fr.decode_stream_block(self.v, f.payload)
                pairs = fr.unpack_header_block(self.v, self.decomp.decompress(block))
                out.append((f.type, sid, f.flags, pairs))
            elif f.type == fr.SYN_STREAM:
                sid, _a, _p, _s, block = fr.decode_syn_stream(self.v, f.payload)
                pairs = fr.unpack_header_block(self.v, self.decomp.decompress(block))
                out.append((f.type, sid, f.flags, pairs))
            elif f.type == fr.RST_STREAM:
                out.append((f.type,) + fr.decode_rst_stream(f.payload) + (None,))
            elif f.type == fr.GOAWAY:
                out.append((f.type, 0, f.flags, fr.decode_goaway(self.v, f.payload)))
            elif f.type == fr.WINDOW_UPDATE:
                out.append((f.type,) + fr.decode_window_update(f.payload) + (None,))
            elif f.type == fr.PING:
                out.append((f.type, 0, f.flags, fr.decode_ping(f.payload)))
            elif f.type == fr.SETTINGS:
                out.append((f.type, 0, f.flags, fr.decode_settings(self.v, f.payload)))
            else:
                out.append((f.type, 0, f.flags, f.payload))
        return out


def make_certificate(directory, stem, *, subject="test", dns=(), key_type="ec", issuer=None,
                     ca=False, san=True):
    """Write ``<stem>.pem`` and ``<stem>-key.pem`` in ``directory``; return (cert, key, paths).

    ``subject`` is the CN (or an ``x509.Name``); ``dns`` the subjectAltName DNS names (no
    subjectAltName at all when ``san`` is false); ``key_type`` ``ec`` or ``rsa``; ``issuer`` a
    (cert, key) pair that signs it (self-signed when None); ``ca`` makes a CA certificate.
    """
    import datetime
    import ipaddress
    from types import SimpleNamespace

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = (ec.generate_private_key(ec.SECP256R1()) if key_type == "ec"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    name = subject if isinstance(subject, x509.Name) else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san and dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    elif san and not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return SimpleNamespace(cert=cert, key=key, cert_path=str(cert_path), key_path=str(key_path))


def tls_server_creator(directory, stem="server", partial_writes=True):
    """A Twisted ``IOpenSSLServerConnectionCreator`` serving a fresh self-signed certificate
    (``make_certificate`` in ``directory``); ``partial_writes=False`` clears OpenSSL's partial
    write mode, as proxyd's own listener contexts do."""
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from zope.interface import implementer

    from proxyd.net.twistedshim import MODE_ENABLE_PARTIAL_WRITE

    pair = make_certificate(directory, stem)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    if not partial_writes:
        ctx.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    ctx.use_certificate_file(pair.cert_path)
    ctx.use_privatekey_file(pair.key_path)

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, protocol):  # noqa: N802 - Twisted's name
            return SSL.Connection(ctx, None)

    return Creator()


def h2_frame(ftype, flags, stream_id, payload=b""):
    """One raw HTTP/2 frame (any type, flags, stream id, payload: nothing is checked)."""
    size = len(payload)
    return bytes((size >> 16 & 0xFF, size >> 8 & 0xFF, size & 0xFF, ftype, flags)) + \
        stream_id.to_bytes(4, "big") + payload


def parse_h2_frames(data):
    """``[(type, flags, stream id, payload)]`` of raw HTTP/2 bytes (a client preface skipped)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    if data.startswith(preface):
        data = data[len(preface):]
    frames, pos = [], 0
    while pos + 9 <= len(data):
        size = int.from_bytes(data[pos:pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 4],
                       int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF,
                       bytes(data[pos + 9:pos + 9 + size])))
        pos += 9 + size
    assert pos == len(data), "trailing partial frame"
    return frames
