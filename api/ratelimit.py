"""Per-owner rate limit of write requests (POST, DELETE), in this API process.

A token bucket per owner: it holds up to a minute's allowance and refills continuously, so an
owner may burst that many writes and then keeps the per-minute rate. It lives in the process's
memory: with N API processes an owner may make up to N times the limit.
"""

import math
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from api.auth import get_principal
from schemas.domain.records import Principal
from use_cases.errors import RateLimited

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
IDLE_S = 600.0  # buckets untouched this long are full again: forgotten, to bound memory


class TokenBuckets:
    """`per_minute` tokens per key, refilled at per_minute / 60 a second."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def take(self, key: str) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is one."""
        now = self._clock()
        with self._lock:
            if now - self._last_sweep > IDLE_S:
                self._forget_idle(now)
            tokens, at = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate

    def _forget_idle(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < IDLE_S}
        self._last_sweep = now


async def limit_writes(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> None:
    """429 (with Retry-After) for an owner's write past their per-minute allowance."""
    buckets: TokenBuckets | None = request.app.state.write_buckets
    if buckets is None or request.method not in WRITE_METHODS:
        return
    wait = buckets.take(principal.owner_id)
    if wait > 0:
        retry_after = max(1, math.ceil(wait))
        raise RateLimited(
            f"too many write requests: owner {principal.owner_id!r} may make "
            f"{buckets.per_minute} a minute; retry in {retry_after} s",
            {"limit_per_minute": buckets.per_minute, "retry_after_s": retry_after},
        )
