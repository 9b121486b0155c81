"""Training slots shared fairly: an account's tenth job waits for the others' next ones."""

from __future__ import annotations

import asyncio

from nember_core.training.fair_slots import FairSlots


async def test_waiting_accounts_take_turns():
    slots = FairSlots(1)
    granted: list[str] = []

    async def job(name: str, account: str) -> None:
        await slots.acquire(account)
        granted.append(name)

    await job("a1", "a")  # holds the one slot
    waiting = [asyncio.create_task(job(name, account))
               for name, account in [("a2", "a"), ("a3", "a"), ("a4", "a"), ("b1", "b"),
                                     ("c1", "c"), ("b2", "b")]]
    await asyncio.sleep(0)
    for _ in range(6):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert granted == ["a1", "a2", "b1", "c1", "a3", "b2", "a4"]


async def test_a_cancelled_waiter_gives_up_its_place_and_a_granted_one_its_slot():
    slots = FairSlots(1)
    await slots.acquire("a")
    gone = asyncio.create_task(slots.acquire("b"))
    kept = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    slots.release()
    await asyncio.wait_for(kept, 1)  # c got the slot b gave up its place for
    slots.release()
    await asyncio.wait_for(slots.acquire("d"), 1)  # and the slot is free again after


async def test_free_slots_are_taken_at_once():
    slots = FairSlots(2)
    await asyncio.wait_for(slots.acquire("a"), 1)
    await asyncio.wait_for(slots.acquire("a"), 1)
    third = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0.01)
    assert not third.done()
    slots.release()
    await asyncio.wait_for(third, 1)
