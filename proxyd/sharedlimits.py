"""Per-client-IP limits shared by worker processes: connection counts and request buckets kept
in one shared memory region, so that ``limits.max_connections``, ``max_connections_per_ip`` and
``rate_limits.requests_per_ip`` hold for the whole daemon, whichever worker a connection lands on.

Strategy: nginx's ``limit_conn``/``limit_req`` zones, in Python. The supervisor creates the
region (:mod:`proxyd.net.sharedmem`: a memfd, mapped by every process, and a lock per table
that the kernel releases when its holder dies) and every worker maps it. This module is the pure
part: two open-addressing hash tables (linear probing, deletion by backward shift, so no
tombstones pile up) over any writable buffer, each guarded by a lock object with
``acquire()``/``release()``. Keys are the client addresses as the frontends see them (text, at
most 48 bytes; longer ones are replaced by a digest); the probe hash is CRC-32, the same in every
process (Python's ``hash`` is salted per process).

* The connection table counts open connections per (client address, seat): a seat is a worker
  process's number, given by the supervisor. A client's count is the sum over its seats, and
  the total over all clients is kept in the header with a total per seat, so when a worker dies
  the supervisor removes exactly what that worker held (:meth:`SharedConnections.clear_seat`).
  The drop-in for :class:`proxyd.ratelimit.ConnectionCounter` is
  :class:`SharedConnectionCounter`. A table that is full (more distinct addresses with open
  connections than ``capacity * 3 / 4``) refuses further connections from new addresses.
* The bucket table keeps one token bucket (tokens, time of last refill) per client address;
  the arithmetic is :class:`proxyd.ratelimit.TokenBucket`'s. The drop-in for
  :class:`proxyd.ratelimit.KeyedLimiter` is :class:`SharedRequestLimiter`. When the table is
  three quarters full, a new address first evicts full buckets from its probe run (they are
  indistinguishable from new ones), else the bucket at its home slot.

Every process passes the same ``now`` source (the reactor's clock: the monotonic clock, one for
the whole machine), so buckets refilled by one worker and spent by another agree. A ``now``
before a bucket's last refill (the workers of a reload that upgrades proxyd beside older ones
on the wall clock) refills from that ``now`` on (:class:`proxyd.ratelimit.TokenBucket`): a
client is not refused until the clocks agree again.
"""

import hashlib
import struct
import zlib

from proxyd.ratelimit import ALLOWED, TokenBucket, retry_after

MAGIC = 0x70726F7879644C31  # "proxydL1"
MAX_SEATS = 256
KEY_MAX = 48
_HEADER = struct.Struct("<QQQq")  # magic, capacity, used slots, total (connections)
_SEATS = struct.Struct(f"<{MAX_SEATS}q")
_CONN = struct.Struct("<BBxxI48s8x")  # key length, seat, connections, key: 64 bytes
_BUCKET = struct.Struct("<B7x48sdd")  # key length, key, tokens, last refill: 72 bytes
CONN_HEADER = _HEADER.size + _SEATS.size
BUCKET_HEADER = _HEADER.size


def table_bytes(capacity, bucket=False):
    """Size of a table of ``capacity`` slots (a power of two)."""
    if capacity < 8 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two >= 8, got {capacity}")
    if bucket:
        return BUCKET_HEADER + capacity * _BUCKET.size
    return CONN_HEADER + capacity * _CONN.size


def _key(key):
    return key if len(key) <= KEY_MAX else b"#" + hashlib.blake2b(key, digest_size=32).digest()


class _Table:
    """Linear probing over ``capacity`` fixed-size slots at ``offset`` of ``buf``."""

    def __init__(self, buf, offset, capacity, entry, header_size, lock):
        self.buf = buf
        self.offset = offset
        self.capacity = capacity
        self.mask = capacity - 1
        self.entry = entry
        self.slot_size = entry.size
        self.slots = offset + header_size
        self.lock = lock

    # -- header ----------------------------------------------------------------------------
    def format(self):
        """Write the header of an empty table into a zeroed buffer (a new memfd is zeroed; its
        pages are only allocated when used). The creator does this once."""
        _HEADER.pack_into(self.buf, self.offset, MAGIC, self.capacity, 0, 0)

    def check(self):
        """Raise ValueError unless the header says this is such a table of this capacity."""
        magic, capacity, _, _ = _HEADER.unpack_from(self.buf, self.offset)
        if (magic, capacity) != (MAGIC, self.capacity):
            raise ValueError("the shared region does not hold proxyd's limit tables of this "
                             "size")

    def _header(self):
        return _HEADER.unpack_from(self.buf, self.offset)

    def _set_used_total(self, used, total):
        struct.pack_into("<Qq", self.buf, self.offset + 16, used, total)

    # -- slots -----------------------------------------------------------------------------
    def home(self, key):
        return zlib.crc32(key) & self.mask

    def read(self, index):
        return self.entry.unpack_from(self.buf, self.slots + index * self.slot_size)

    def write(self, index, *fields):
        self.entry.pack_into(self.buf, self.slots + index * self.slot_size, *fields)

    def used_at(self, index):
        return self.buf[self.slots + index * self.slot_size] != 0

    def run(self, key):
        """Indexes of the occupied slots from ``key``'s home to the first empty one, and that
        empty slot's index."""
        index = self.home(key)
        found = []
        for _ in range(self.capacity):
            if not self.used_at(index):
                return found, index
            found.append(index)
            index = (index + 1) & self.mask
        return found, None

    def delete(self, index):
        """Empty slot ``index``, shifting later entries of the run back (no tombstones)."""
        mask = self.mask
        hole = index
        probe = index
        for _ in range(self.capacity):
            probe = (probe + 1) & mask
            if not self.used_at(probe):
                break
            fields = self.read(probe)
            home = self.home(fields[self.key_field][:fields[0]])
            # The entry at ``probe`` may move into the hole unless its home lies cyclically
            # in (hole, probe].
            if hole <= probe:
                stays = hole < home <= probe
            else:
                stays = home > hole or home <= probe
            if not stays:
                self.write(hole, *fields)
                hole = probe
        start = self.slots + hole * self.slot_size
        self.buf[start:start + self.slot_size] = bytes(self.slot_size)


class SharedConnections(_Table):
    """Open connections per (client address, seat) for every worker of a daemon."""

    key_field = 3

    def __init__(self, buf, offset, capacity, lock):
        super().__init__(buf, offset, capacity, _CONN, CONN_HEADER, lock)

    def _seat_add(self, seat, delta):
        where = self.offset + _HEADER.size + 8 * seat
        (value,) = struct.unpack_from("<q", self.buf, where)
        struct.pack_into("<q", self.buf, where, value + delta)

    def open(self, key, seat, max_total, max_per_key, elsewhere=None):
        """Count a connection of ``key`` held by ``seat`` unless a limit says no.

        ``elsewhere`` (with ``limits.shared``): what other instances of a fleet and this seat's
        siblings hold as the fleet's store last said, with this seat's own count in it: the
        per-key limit then applies to the larger of the table's count and this seat's count
        plus ``elsewhere`` (the table is exact for this daemon, the store lags)."""
        key = _key(key)
        self.lock.acquire()
        try:
            _, _, used, total = self._header()
            if max_total and total >= max_total:
                return False
            run, empty = self.run(key)
            mine, held = None, 0
            for index in run:
                length, owner, count, stored = self.read(index)
                if stored[:length] == key:
                    held += count
                    if owner == seat:
                        mine = (index, count)
            if elsewhere is not None:
                held = max(held, (mine[1] if mine else 0) + elsewhere)
            if max_per_key and held >= max_per_key:
                return False
            if mine is not None:
                self.write(mine[0], len(key), seat, mine[1] + 1, key)
            elif empty is None or (used + 1) * 4 > self.capacity * 3:
                return False  # full: more distinct addresses than the table was made for
            else:
                self.write(empty, len(key), seat, 1, key)
                used += 1
            self._set_used_total(used, total + 1)
            self._seat_add(seat, 1)
            return True
        finally:
            self.lock.release()

    def close(self, key, seat):
        """Forget one connection of ``key`` held by ``seat`` (unknown ones are ignored)."""
        key = _key(key)
        self.lock.acquire()
        try:
            for index in self.run(key)[0]:
                length, owner, count, stored = self.read(index)
                if owner == seat and stored[:length] == key:
                    _, _, used, total = self._header()
                    if count <= 1:
                        self.delete(index)
                        used -= 1
                    else:
                        self.write(index, length, seat, count - 1, key)
                    self._set_used_total(used, total - 1)
                    self._seat_add(seat, -1)
                    return
        finally:
            self.lock.release()

    def count(self, key):
        """Open connections of ``key`` over all seats."""
        key = _key(key)
        self.lock.acquire()
        try:
            return sum(count for length, _, count, stored in map(self.read, self.run(key)[0])
                       if stored[:length] == key)
        finally:
            self.lock.release()

    def total(self):
        """Open connections of every client and seat."""
        return self._header()[3]

    def seat_total(self, seat):
        """Open connections held by ``seat``."""
        return struct.unpack_from("<q", self.buf, self.offset + _HEADER.size + 8 * seat)[0]

    def clear_seat(self, seat):
        """Remove everything ``seat`` held (its process ended); returns how many connections."""
        self.lock.acquire()
        try:
            end = self.slots + self.capacity * self.slot_size
            flags = bytes(memoryview(self.buf)[self.slots:end:self.slot_size])
            keep, removed, occupied = [], 0, []
            for index, length in enumerate(flags):
                if length:
                    occupied.append(index)
                    fields = self.read(index)
                    if fields[1] == seat:
                        removed += fields[2]
                    else:
                        keep.append(fields)
            if removed:
                empty = bytes(self.slot_size)
                for index in occupied:
                    start = self.slots + index * self.slot_size
                    self.buf[start:start + self.slot_size] = empty
                total = 0
                for fields in keep:
                    self.write(self.run(fields[3][:fields[0]])[1], *fields)
                    total += fields[2]
                self._set_used_total(len(keep), total)
            self._seat_reset(seat)
            return removed
        finally:
            self.lock.release()

    def _seat_reset(self, seat):
        struct.pack_into("<q", self.buf, self.offset + _HEADER.size + 8 * seat, 0)


class SharedBuckets(_Table):
    """One request token bucket per client address for every worker of a daemon."""

    key_field = 1

    def __init__(self, buf, offset, capacity, lock):
        super().__init__(buf, offset, capacity, _BUCKET, BUCKET_HEADER, lock)

    def allow(self, key, now, rate, burst):
        """Take one token of ``key``'s bucket: ``(True, 0.0)`` or ``(False, retry_after)``."""
        key = _key(key)
        self.lock.acquire()
        try:
            run, empty = self.run(key)
            bucket = TokenBucket(rate, burst, now)
            slot = None
            for index in run:
                length, stored, tokens, last = self.read(index)
                if stored[:length] == key:
                    slot = index
                    bucket.tokens = min(tokens, bucket.burst)
                    bucket.last = last
                    break
            if slot is None:
                slot = self._make_room(key, run, empty, now, rate, burst)
            allowed = bucket.try_take(1, now)
            if slot is not None:
                self.write(slot, len(key), key, bucket.tokens, bucket.last)
            return ALLOWED if allowed else (False, retry_after(bucket))
        finally:
            self.lock.release()

    def _make_room(self, key, run, empty, now, rate, burst):
        """A slot for a new ``key``, or None when every bucket is in use (then the request is
        let through untracked). Past three quarters full: full buckets of the key's run are
        evicted, else the bucket at its home slot, else full buckets anywhere."""
        used = self._header()[2]
        if (used + 1) * 4 > self.capacity * 3:
            used -= self._evict_full(reversed(run), now, rate, burst)
            run, empty = self.run(key)
        if (used + 1) * 4 > self.capacity * 3 and run:
            self._set_used_total(used, 0)
            return run[0]  # its bucket is forgotten, as an LRU would forget its oldest
        if (used + 1) * 4 > self.capacity * 3:
            used -= self._evict_full(reversed(range(self.capacity)), now, rate, burst)
            run, empty = self.run(key)
            if (used + 1) * 4 > self.capacity * 3:
                self._set_used_total(used, 0)
                return None
        self._set_used_total(used + 1, 0)
        return empty

    def _evict_full(self, indexes, now, rate, burst):
        """Delete the full buckets among ``indexes`` (visited last to first); how many."""
        probe = TokenBucket(rate, burst, now)
        evicted = 0
        for index in indexes:
            if not self.used_at(index):
                continue
            _, _, tokens, last = self.read(index)
            probe.tokens, probe.last = min(tokens, probe.burst), last
            if probe.is_full(now):
                self.delete(index)
                evicted += 1
        return evicted

    def __len__(self):
        """Client addresses with a bucket."""
        return self._header()[2]


class SharedConnectionCounter:
    """:class:`proxyd.ratelimit.ConnectionCounter`'s interface over :class:`SharedConnections`
    for the worker in ``seat``; the limits are this process's (a reload changes them).
    ``fleet`` (``limits.shared``, see ConnectionCounter) hears this worker's own counts, which
    :meth:`keys` lists, and tells what the rest of the fleet holds."""

    __slots__ = ("table", "seat", "max_total", "max_per_key", "fleet", "_own")

    def __init__(self, table, seat, max_total, max_per_key, fleet=None):
        self.table = table
        self.seat = seat
        self.max_total = max_total or 0
        self.max_per_key = max_per_key or 0
        self.fleet = fleet
        self._own = {}  # key -> connections this worker holds

    def try_open(self, key):
        """Count a new connection of ``key``; False when over a limit of the whole daemon."""
        fleet = self.fleet
        elsewhere = fleet.others(key) if fleet is not None else None
        if not self.table.open(key, self.seat, self.max_total, self.max_per_key, elsewhere):
            return False
        count = self._own[key] = self._own.get(key, 0) + 1
        if fleet is not None:
            fleet.changed(key, count)
        return True

    def close(self, key):
        """A connection of ``key`` opened here closed."""
        count = self._own.get(key)
        if count is None:
            return
        self.table.close(key, self.seat)
        if count <= 1:
            del self._own[key]
        else:
            self._own[key] = count - 1
        if self.fleet is not None:
            self.fleet.changed(key, count - 1)

    def count(self, key):
        """Open connections of ``key`` in every worker."""
        return self.table.count(key)

    def keys(self):
        """The keys this worker holds connections of, and how many."""
        return self._own.items()

    @property
    def total(self):
        """Open connections in every worker."""
        return self.table.total()


class SharedRequestLimiter:
    """:class:`proxyd.ratelimit.KeyedLimiter`'s interface over :class:`SharedBuckets`."""

    __slots__ = ("table", "rate", "burst")

    def __init__(self, table, rate, burst):
        self.table = table
        self.rate = float(rate)
        if rate > 0 and burst < 1:
            burst = rate if (burst <= 0 and rate > 1.0) else 1.0
        self.burst = float(burst)

    def allow(self, key, now):
        """Count one request of ``key`` at ``now`` against the daemon-wide bucket."""
        if not self.rate:
            return ALLOWED
        return self.table.allow(key, now, self.rate, self.burst)
