"""Interpreter settings for a long-running proxy process (garbage collector).

Strategy: after start-up the heap holds tens of thousands of long-lived objects (modules,
configuration, the reactor) that every young-generation collection would scan again for nothing;
``gc.freeze()`` moves them out of the collector's sight. Requests create no reference cycles on
the hot path (a relay and its state machine are freed by reference counting when the stream ends),
so collections are rare work: a larger first-generation threshold makes them rarer still, while
the cycles that do occur (errors, closed connections) are still collected. A reload, which leaves
cycles of its own, ends with a full collection (:func:`collect_garbage`).
"""

import gc

#: Allocations (minus deallocations) between two young collections (CPython's default: 700).
GEN0_THRESHOLD = 20_000


def tune_gc():
    """Freeze what start-up allocated and raise the first-generation threshold."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def collect_garbage():
    """A full collection now: after a reload, which leaves reference cycles that no request
    would make the collector look at soon (pyOpenSSL makes each replaced TLS context's
    callbacks a cycle with a libffi closure). Objects frozen at start-up are not scanned."""
    gc.collect()
