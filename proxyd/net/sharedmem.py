"""The shared memory region of the per-IP limits (:mod:`proxyd.sharedlimits`) and its locks.

Strategy: the supervisor creates an anonymous file (``memfd_create``, sized with ``ftruncate``:
its pages are zero and only allocated when touched), writes the two table headers, and passes
the descriptor to every worker, which maps it ``MAP_SHARED``. Each table has its own lock: a
POSIX record lock (``fcntl`` ``F_SETLKW``) on one byte of the file. Record locks belong to a
process, so the kernel releases them when their holder dies: a worker killed inside a critical
section cannot wedge the others. (``flock`` locks would not do: they belong to the open file
description, which every worker shares.) An uncontended lock costs two system calls, and only
connections (open, close) and, with ``requests_per_ip``, requests take one.
"""

import fcntl
import mmap
import os

from proxyd.sharedlimits import (SharedBuckets, SharedConnectionCounter, SharedConnections,
                                 SharedRequestLimiter, table_bytes)

# Distinct (client address, worker) pairs with open connections, and client addresses with a
# request bucket, that the tables are sized for (3/4 of the slots).
CONNECTION_SLOTS = 1 << 17
BUCKET_SLOTS = 1 << 16


class RecordLock:
    """An exclusive POSIX record lock on byte ``index`` of the file ``fd``."""

    __slots__ = ("fd", "index")

    def __init__(self, fd, index):
        self.fd = fd
        self.index = index

    def acquire(self):
        """Wait for the lock."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, self.index)

    def release(self):
        """Let the next process in."""
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.index)


class SharedLimits:
    """The mapped region: ``connections`` and ``buckets`` tables, and factories of the
    limiters a worker's listeners use."""

    def __init__(self, fd, connection_slots=CONNECTION_SLOTS, bucket_slots=BUCKET_SLOTS,
                 create=False):
        self.fd = fd
        size = table_bytes(connection_slots) + table_bytes(bucket_slots, bucket=True)
        if create:
            os.ftruncate(fd, size)
        elif os.fstat(fd).st_size != size:
            raise ValueError("the shared limits region has another size than this version of "
                             "proxyd expects")
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.connections = SharedConnections(self.map, 0, connection_slots, RecordLock(fd, 0))
        self.buckets = SharedBuckets(self.map, table_bytes(connection_slots), bucket_slots,
                                     RecordLock(fd, 1))
        if create:
            self.connections.format()
            self.buckets.format()
        self.connections.check()
        self.buckets.check()
        self.slots = (connection_slots, bucket_slots)

    @classmethod
    def create(cls, connection_slots=CONNECTION_SLOTS, bucket_slots=BUCKET_SLOTS):
        """A new region (the supervisor); its descriptor is inheritable by workers."""
        fd = os.memfd_create("proxyd-limits", 0)
        try:
            return cls(fd, connection_slots, bucket_slots, create=True)
        except BaseException:
            os.close(fd)
            raise

    def connection_counter(self, seat, max_total, max_per_key):
        """The ConnectionCounter of the worker in ``seat``."""
        return SharedConnectionCounter(self.connections, seat, max_total, max_per_key)

    def request_limiter(self, rate, burst):
        """The requests_per_ip limiter (None when ``rate`` is 0, like a single process)."""
        return SharedRequestLimiter(self.buckets, rate, burst) if rate else None

    def close(self):
        """Unmap and close the descriptor."""
        self.map.close()
        os.close(self.fd)
