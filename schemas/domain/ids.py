"""Time-ordered UUIDs (version 7), so that ids double as pagination cursors."""

import os
import threading
import time
from uuid import UUID

_lock = threading.Lock()
_last = 0


def new_id() -> UUID:
    """A UUIDv7: 48-bit millisecond timestamp, then random bits; increasing within a process."""
    global _last
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    with _lock:
        # Same millisecond as the previous id: step past it so order follows creation order.
        if value <= _last:
            value = _last + 1
        _last = value
    return UUID(int=value)
