"""What the CLI's commands do, as async functions over the opened services."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from .dataset import read_csv
from .errors import NemberError, NotFound
from .records import Account, ApiKey, ModelKey, ModelMeta, NewApiKey
from .services import Nember, Services
from .training import Progress, train

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8
MAX_NAME = 200


async def create_account(services: Services, email: str, password: str) -> Account:
    if not EMAIL.match(email):
        raise NemberError(f"{email!r} is not an email address")
    if len(password) < MIN_PASSWORD:
        raise NemberError(f"the password must have at least {MIN_PASSWORD} characters")
    return await services.key_store.create_account(email, password)


async def account(services: Services, email: str) -> Account:
    found = await services.key_store.account_by_email(email)
    if found is None:
        raise NotFound(f"no account for {email}")
    return found


async def create_key(services: Services, email: str, name: str) -> NewApiKey:
    if not name.strip() or len(name) > MAX_NAME:
        raise NemberError(f"a key name must have 1 to {MAX_NAME} characters")
    owner = await account(services, email)
    return await services.key_store.create_key(owner.id, name.strip())


async def list_keys(services: Services, email: str) -> list[ApiKey]:
    return await services.key_store.list_keys((await account(services, email)).id)


async def revoke_key(services: Services, id_or_secret: str) -> ApiKey:
    key = await services.key_store.find_key(id_or_secret.strip())
    if key is None:
        raise NotFound("no such API key (give its id, as `nember keys list` shows, or the key)")
    return await services.key_store.revoke_key(key.id)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` hyperparameters; values read as YAML scalars (3, 0.1, true, gini)."""
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise NemberError(f"--param {pair!r}: expected NAME=VALUE")
        try:
            params[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise NemberError(f"--param {pair!r}: cannot read the value") from None
    return params


async def train_model(
    nember: Nember,
    services: Services,
    email: str,
    strat: str,
    family_name: str,
    model_type: str,
    data: Path,
    target: str,
    window: int = 1,
    features: list[str] | None = None,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ModelMeta:
    if not strat.strip() or len(strat) > MAX_NAME:
        raise NemberError(f"a strategy name must have 1 to {MAX_NAME} characters")
    family = nember.family(family_name)
    owner = await account(services, email)
    dataset = await asyncio.to_thread(read_csv, data, target, features)
    key = ModelKey(owner.id, strat, family.name, model_type)
    trained = await asyncio.to_thread(train, family, dataset, key, window, params, progress)
    return await services.model_store.save(trained.meta, trained.artifact)
