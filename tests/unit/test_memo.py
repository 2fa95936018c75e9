"""The bounded memo shared by the gate, the backend parser and the writer (proxyd.memo)."""

from proxyd.memo import Memo, fields_size


def test_remember_keeps_small_entries_and_empties_when_full():
    """An entry over ``max_bytes`` is never kept; a full memo is emptied before the next entry,
    so it never holds more than ``max_entries``."""
    memo = Memo(max_entries=3, max_bytes=10)
    memo.remember(b"big", 1, 11)
    assert b"big" not in memo
    for i in range(3):
        memo.remember(i, i * 10, 10)
    assert memo == {0: 0, 1: 10, 2: 20}
    memo.remember(3, 30, 1)
    assert memo == {3: 30} and memo.get(0) is None


def test_fields_size_counts_names_and_values():
    """The size of fields is the bytes of their names and values."""
    assert fields_size(((b"ab", b"cde"), (b"f", b""))) == 6 and fields_size(()) == 0
