"""h2client._split_status (C scans) equals the plain loop it replaced (the oracle here)."""

from hypothesis import given, settings, strategies as st

from proxyd.codec.h2client import _split_status


def _old_split_status(block):
    status = 0
    headers = []
    seen = False
    for name, value in block:
        if name == b":status" and not seen and not headers:
            seen = True
            if len(value) == 3 and value.isdigit():
                status = int(value)
        elif name == b":status":
            status = 0
            headers.append((name, value))
        else:
            headers.append((name, value))
    return status, headers


_names = st.sampled_from([b":status", b":STATUS", b":path", b"x-a", b"status", b""])
_values = st.sampled_from([b"200", b"20", b"2000", b"", b" 200", b"2a0", b"\xd9\xa0\xd9\xa0\xd9\xa0",
                           b"099", b"999", b"+20", b"1_0"]) | st.binary(max_size=4)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_names, _values), max_size=5))
def test_split_status_equals_the_old_loop(block):
    """Same status and same fields (a new list, the decoder's cached list untouched), for any
    block: one leading ``:status`` of three ASCII digits is the status, anything else is 0 with
    every other ``:status`` left in the fields."""
    original = list(block)
    status, fields = _split_status(block)
    assert (status, list(fields)) == _old_split_status(block)
    assert isinstance(fields, list) and fields is not block and block == original
