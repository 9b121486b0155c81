"""A fixed number of slots shared fairly between accounts.

Waiting jobs are queued per account and served round-robin: an account that queues ten jobs
has the next slot after each other account's next job, not before all of them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairSlots:
    def __init__(self, slots: int):
        self._free = slots
        self._waiting: OrderedDict[str, deque[asyncio.Future]] = OrderedDict()

    async def acquire(self, account_id: str) -> None:
        """Until one of the slots is this caller's (then ``release`` it)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(account_id, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: pass it on
            else:
                self._forget(account_id, waiter)
            raise

    def release(self) -> None:
        self._free += 1
        while self._free > 0 and self._waiting:
            account_id, queue = next(iter(self._waiting.items()))
            waiter = queue.popleft()
            if queue:
                self._waiting.move_to_end(account_id)  # its next job waits for the others'
            else:
                del self._waiting[account_id]
            if not waiter.done():
                self._free -= 1
                waiter.set_result(None)

    def _forget(self, account_id: str, waiter: asyncio.Future) -> None:
        queue = self._waiting.get(account_id)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[account_id]
