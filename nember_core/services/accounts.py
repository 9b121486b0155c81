"""Accounts, dashboard sessions, and the limit on failed logins."""

from __future__ import annotations

import hashlib

import attrs

from nember_core import rules
from nember_core.errors import NemberError, NotFound, TooManyAttempts
from nember_core.records import Account
from nember_core.stores import Stores

LOGIN_WINDOW_SECONDS = 60.0
ADDRESS_FACTOR = 10  # an address may fail this many times an email's limit


@attrs.frozen
class PasswordChanged:
    account: Account
    sessions_ended: int | None  # None: the key store can't end them; they run out by themselves


def _subject(kind: str, value: str) -> str:
    # Hashed: a password typed into the email field must not sit in the store.
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


class Accounts:
    def __init__(self, stores: Stores, session_hours: float, login_attempts_per_minute: int):
        self._keys = stores.key_store
        self.session_hours = session_hours
        self._login_limit = login_attempts_per_minute

    async def create(self, email: str, password: str) -> Account:
        """AlreadyExists when the email is taken."""
        return await self._keys.create_account(rules.email(email), rules.password(password))

    async def by_email(self, email: str) -> Account:
        found = await self._keys.account_by_email(email)
        if found is None:
            raise NotFound(f"no account for {email}")
        return found

    async def list(self) -> list[Account]:
        """Every account, oldest first (a key store may not offer this: then an error)."""
        lister = getattr(self._keys, "list_accounts", None)
        if lister is None:
            raise NemberError("the configured key store can't list accounts")
        return await lister()

    async def change_password(self, email: str, password: str) -> PasswordChanged:
        """Set a new password and end the account's dashboard sessions, where the key store
        can (else they last until they expire: ``dashboard.session_hours``)."""
        account = await self.by_email(email)
        password = rules.password(password)
        setter = getattr(self._keys, "set_password", None)
        if setter is None:
            raise NemberError("the configured key store can't change passwords")
        await setter(account.id, password)
        ender = getattr(self._keys, "delete_sessions", None)
        return PasswordChanged(account, None if ender is None else await ender(account.id))

    async def log_in(self, email: str, password: str, address: str) -> Account | None:
        """The account when the password is right, else ``None``; TooManyAttempts after
        ``login_attempts_per_minute`` failures for the email in a minute, or ten times that
        from the address: enough to stop a guesser or a spray, without one user's typos
        locking out every account behind the same address.

        An attempt counts as failed from the moment it starts until it succeeds, and the key
        store counts it for every process and node: checking a password takes a while, and
        attempts made meanwhile, anywhere, must see it counted.
        """
        email = email.strip()
        attempt = await self._keys.count_login_attempt(
            {_subject("email", email.lower()): self._login_limit,
             _subject("address", address): self._login_limit * ADDRESS_FACTOR},
            LOGIN_WINDOW_SECONDS,
        )
        if attempt is None:
            raise TooManyAttempts("Too many failed logins; wait a minute and try again.")
        account = await self._keys.check_password(email, password)
        if account is not None:
            await self._keys.forget_login_attempt(attempt)
        return account

    async def start_session(self, account: Account) -> str:
        return await self._keys.create_session(account.id, self.session_hours * 3600)

    async def session(self, token: str) -> Account | None:
        return await self._keys.session_account(token)

    async def end_session(self, token: str) -> None:
        await self._keys.delete_session(token)
