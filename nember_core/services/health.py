"""Is this node ready to serve? Every configured store is asked, at once, with a time limit."""

from __future__ import annotations

import asyncio
from typing import Protocol

from nember_core.stores import Stores

PING_TIMEOUT = 2.0  # seconds; a store slower than this is as good as down for a bot's connect


class Pingable(Protocol):
    """What every role's store has (``plugin_api``): a ``ping`` that raises when it is down."""

    async def ping(self) -> None: ...


async def failing_stores(stores: Stores, timeout: float = PING_TIMEOUT) -> list[str]:
    """The config roles whose store did not answer in time (none: ready)."""
    roles: dict[str, Pingable] = {
        "key_store": stores.key_store, "billing": stores.billing,
        "model_store": stores.model_store, "connection_registry": stores.registry,
        "jobs": stores.jobs,
    }
    answers = await asyncio.gather(
        *(asyncio.wait_for(store.ping(), timeout) for store in roles.values()),
        return_exceptions=True,
    )
    return [role for role, answer in zip(roles, answers, strict=True)
            if isinstance(answer, BaseException)]
