"""The KeyStore contract: accounts, hashed keys, sessions and the login-attempt count."""

from __future__ import annotations

import asyncio

import pytest

from nember_core.errors import AlreadyExists, NotFound

from ..stores import StoreContract, shared

PASSWORD = "correct horse battery"


class KeyStoreContract(StoreContract):
    """The key_store contract; subclass it with ``plugin_name`` and ``options``."""

    role = "key_store"
    pytestmark = pytest.mark.asyncio

    async def test_an_account_is_found_by_its_email_whatever_its_case(self, store):
        account = await store.create_account("Trader@Example.com", PASSWORD)
        assert account.id and account.email == "Trader@Example.com"
        assert (await store.account_by_email("trader@example.com")).id == account.id
        with pytest.raises(AlreadyExists):
            await store.create_account("TRADER@example.com", "another password")
        assert await store.account_by_email("nobody@example.com") is None

    async def test_only_the_right_password_logs_in(self, store):
        account = await store.create_account("a@example.com", PASSWORD)
        assert (await store.check_password("a@example.com", PASSWORD)).id == account.id
        assert await store.check_password("a@example.com", PASSWORD + "!") is None
        assert await store.check_password("b@example.com", PASSWORD) is None

    async def test_keys_authenticate_until_revoked_and_are_listed_in_order(self, store):
        account = await store.create_account("a@example.com", PASSWORD)
        first = await store.create_key(account.id, "bot", "predict")
        second = await store.create_key(account.id, "admin", "manage")
        assert first.secret != second.secret and first.key.prefix == first.secret[:len(
            first.key.prefix)]
        assert [k.id for k in await store.list_keys(account.id)] == [first.key.id, second.key.id]
        assert [k.scope for k in await store.list_keys(account.id)] == ["predict", "manage"]
        assert (await store.authenticate(first.secret)).id == first.key.id
        assert (await store.find_key(first.key.id)).id == first.key.id
        assert (await store.find_key(first.secret)).id == first.key.id
        assert await store.authenticate("nmb_not-a-key") is None

        revoked = await store.revoke_key(first.key.id)
        assert revoked.id == first.key.id and revoked.revoked_at is not None
        again = await store.revoke_key(first.key.id)  # idempotent: the first revocation stays
        assert again.revoked_at == revoked.revoked_at
        assert await store.authenticate(first.secret) is None
        assert (await store.find_key(first.secret)).revoked_at is not None  # found, revoked
        assert await store.revoked_among([first.key.id, second.key.id, "key_nope"]) == {
            first.key.id}
        with pytest.raises(NotFound):
            await store.revoke_key("key_nope")

    async def test_a_storm_of_bots_each_gets_its_own_key(self, store):
        """Bots of several keys (one revoked) and strangers reconnecting at once: each
        secret authenticates as its own key, or not at all."""
        account = await store.create_account("a@example.com", PASSWORD)
        keys = [await store.create_key(account.id, f"bot{i}", "trade") for i in range(3)]
        await store.revoke_key(keys[2].key.id)
        secrets = [keys[i % 3].secret for i in range(60)] + ["nmb_not-a-key"] * 20
        found = await asyncio.gather(*(store.authenticate(s) for s in secrets))
        expected = [keys[i % 3].key.id if i % 3 < 2 else None for i in range(60)] + [None] * 20
        assert [key.id if key else None for key in found] == expected

    async def test_sessions_last_their_lifetime_and_end_on_logout(self, store):
        account = await store.create_account("a@example.com", PASSWORD)
        token = await store.create_session(account.id, 3600)
        assert (await store.session_account(token)).id == account.id
        assert await store.session_account(token + "x") is None
        await store.delete_session(token)
        assert await store.session_account(token) is None
        short = await store.create_session(account.id, 0.2)
        await asyncio.sleep(0.4)
        assert await store.session_account(short) is None

    async def test_login_attempts_are_refused_at_the_limit_of_any_subject(self, store):
        limits = {"email-a": 2, "address-1": 3}
        assert await store.count_login_attempt(limits, 60) is not None
        assert await store.count_login_attempt(limits, 60) is not None
        assert await store.count_login_attempt(limits, 60) is None  # email-a is at 2
        # address-1 has 2 of its 3: one more for another email, then none.
        assert await store.count_login_attempt({"email-b": 2, "address-1": 3}, 60) is not None
        assert await store.count_login_attempt({"email-c": 2, "address-1": 3}, 60) is None
        assert await store.count_login_attempt({"email-c": 2, "address-2": 3}, 60) is not None

    async def test_a_forgotten_attempt_no_longer_counts_and_old_ones_expire(self, store):
        first = await store.count_login_attempt({"s": 1}, 60)
        assert await store.count_login_attempt({"s": 1}, 60) is None
        await store.forget_login_attempt(first)
        assert await store.count_login_attempt({"s": 1}, 60) is not None
        assert await store.count_login_attempt({"t": 1}, 0.3) is not None
        await asyncio.sleep(0.5)
        assert await store.count_login_attempt({"t": 1}, 0.3) is not None  # the window passed

    async def test_attempts_at_once_from_two_processes_never_pass_the_limit(self, open_store,
                                                                            provider):
        shared(provider)
        one, two = await open_store("node-1"), await open_store("node-2")
        results = await asyncio.gather(*(
            store.count_login_attempt({"rushed": 5}, 60) for _ in range(20) for store in (one, two)
        ))
        assert sum(result is not None for result in results) == 5

    async def test_what_one_process_writes_the_others_see(self, open_store, provider):
        shared(provider)
        one, two = await open_store("node-1"), await open_store("node-2")
        account = await one.create_account("a@example.com", PASSWORD)
        key = await one.create_key(account.id, "bot", "read")
        token = await one.create_session(account.id, 3600)
        assert (await two.authenticate(key.secret)).scope == "read"
        assert (await two.session_account(token)).id == account.id
        await two.revoke_key(key.key.id)
        assert await one.authenticate(key.secret) is None
        assert await one.revoked_among([key.key.id]) == {key.key.id}

    async def test_an_open_store_answers_a_ping(self, store):
        await store.ping()  # what GET /readyz asks of every configured store

    async def test_accounts_are_listed_and_a_new_password_replaces_the_old(self, store):
        """The optional methods behind `nember accounts list` and `nember accounts password`."""
        first = await store.create_account("a@example.com", PASSWORD)
        second = await store.create_account("b@example.com", PASSWORD)
        assert [(a.id, a.email) for a in await store.list_accounts()] == [
            (first.id, "a@example.com"), (second.id, "b@example.com")]  # oldest first
        await store.set_password(first.id, "a brand new password")
        assert await store.check_password("a@example.com", PASSWORD) is None
        assert (await store.check_password("a@example.com", "a brand new password")).id == first.id
        assert (await store.check_password("b@example.com", PASSWORD)).id == second.id
        with pytest.raises(NotFound):
            await store.set_password("acct_nope", PASSWORD)

    async def test_an_accounts_sessions_end_together(self, store):
        mine = await store.create_account("a@example.com", PASSWORD)
        other = await store.create_account("b@example.com", PASSWORD)
        tokens = [await store.create_session(mine.id, 3600) for _ in range(2)]
        await store.create_session(mine.id, -1)  # expired already: not counted
        kept = await store.create_session(other.id, 3600)
        assert await store.delete_sessions(mine.id) == 2
        assert [await store.session_account(token) for token in tokens] == [None, None]
        assert (await store.session_account(kept)).id == other.id
        assert await store.delete_sessions(mine.id) == 0
