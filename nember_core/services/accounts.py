"""Accounts and dashboard sessions."""

from __future__ import annotations

from nember_core import rules
from nember_core.errors import NotFound
from nember_core.records import Account
from nember_core.stores import Stores


class Accounts:
    def __init__(self, stores: Stores, session_hours: float):
        self._keys = stores.key_store
        self.session_hours = session_hours

    async def create(self, email: str, password: str) -> Account:
        """AlreadyExists when the email is taken."""
        return await self._keys.create_account(rules.email(email), rules.password(password))

    async def by_email(self, email: str) -> Account:
        found = await self._keys.account_by_email(email)
        if found is None:
            raise NotFound(f"no account for {email}")
        return found

    async def log_in(self, email: str, password: str) -> Account | None:
        """The account when the password is right, else ``None``."""
        return await self._keys.check_password(email.strip(), password)

    async def start_session(self, account: Account) -> str:
        return await self._keys.create_session(account.id, self.session_hours * 3600)

    async def session(self, token: str) -> Account | None:
        return await self._keys.session_account(token)

    async def end_session(self, token: str) -> None:
        await self._keys.delete_session(token)
