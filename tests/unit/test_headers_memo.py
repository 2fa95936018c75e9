"""The response-translation memo of proxyd.headers stays within the memo's bound:
``proxyd.memo`` promises at most ``max_entries`` inputs of at most ``max_bytes`` each, whatever
peers send."""

from types import SimpleNamespace

from proxyd import headers as hdrs
from proxyd.headers import client_response_headers
from proxyd.memo import fields_size

REWRITE = SimpleNamespace(via=True, location_rewrite=True)


def _bytes_of(value):
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(_bytes_of(v) for v in value)
    return 0


def test_a_long_client_authority_is_not_kept_beyond_the_memo_bound():
    """With Location rewriting (the default) the client's authority (up to the header list
    limit, 64 KiB) is part of the key and is copied into each rewritten Location of the value.
    A small backend head answered for clients with a 60 KB :authority must not leave entries of
    60+ KB each in the memo (256 of them would be 30 MB per process, kept after the responses
    went; the Location names the backend that answered, as nginx-style rewriting expects):
    an entry's key and value are each within ``max_bytes``."""
    memo = hdrs._translated
    memo.clear()
    head = [(b"server", b"s")] + [(b"location", b"http://127.0.0.1:8081/x")] * 3
    for n in range(4):
        authority = b"a%d." % n + b"x" * 60000
        out = client_response_headers(head, via_version=b"2", policy=REWRITE,
                                      backend_host=authority, scheme=b"https",
                                      authority=authority, backend_address=b"127.0.0.1:8081")
        assert out[1] == (b"location", b"https://" + authority + b"/x")
    for key, value in memo.items():
        assert _bytes_of(key) <= memo.max_bytes, "key over the memo's bound kept"
        assert fields_size(value) <= memo.max_bytes, "value over the memo's bound kept"
    memo.clear()


def test_a_field_that_is_not_bytes_is_translated_and_not_remembered():
    """A hashable field that is not a pair of bytes (no frontend or backend codec makes one;
    the gate refuses it first) is translated as before, not remembered, and raises nothing."""
    pol = SimpleNamespace(via=False, location_rewrite=False)
    fields = [(b"x-a", None)]
    out = client_response_headers(fields, via_version=b"1.1", policy=pol, backend_host=b"b",
                                  scheme=b"https", authority=b"a")
    assert out == fields
    assert not any(key[0] == tuple(fields) for key in hdrs._translated)
