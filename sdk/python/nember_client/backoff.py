"""How long to wait before the next reconnection attempt."""

from __future__ import annotations

import random

BASE_SECONDS = 0.5


def full_jitter(attempt: int, cap: float, base: float = BASE_SECONDS,
                rand=random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    The jitter spreads many bots that lost the same server over the whole window, so a
    restarted server is not hit by all of them in the same instant.
    """
    return rand() * min(cap, base * 2.0 ** min(attempt, 60))
