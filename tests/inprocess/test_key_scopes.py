"""Key scopes (PROTOCOL.md §3): predict opens /ws only; read adds the REST API's GET routes;
manage adds every route; no key is ever given more than its maker has."""

from __future__ import annotations

import sqlite3

import pytest
from nember_sqlite.key_store import MIGRATIONS, SqliteKeyStore

from nember_core.errors import Forbidden, InvalidData
from tests.helpers import request

from .conftest import ask, authed

READS = ["/api/keys", "/api/models", "/api/families", "/api/connections", "/api/usage"]


@pytest.fixture
async def keys(services):
    owner = await services.accounts.by_email("trader@example.com")
    made = {scope: await services.keys.create(owner.id, f"scoped-{scope}", scope)
            for scope in ("predict", "read", "manage")}
    return {scope: new.secret for scope, new in made.items()}


async def _status(client, method: str, path: str, key: str, **kwargs) -> tuple[int, dict]:
    async with client.request(method, path, headers={"Authorization": f"Bearer {key}"},
                              **kwargs) as response:
        return response.status, await response.json()


async def test_every_scope_opens_the_websocket(client, keys):
    for secret in keys.values():
        ws = await authed(client, secret)
        assert (await ask(ws, request()))["type"] == "success"
        await ws.close()


async def test_a_predict_key_can_do_nothing_on_the_rest_api(client, keys):
    for path in READS:
        assert await _status(client, "GET", path, keys["predict"]) == (403, {
            "error": "This API key's scope is 'predict'; this route needs 'read'."})
    assert await _status(client, "POST", "/api/keys", keys["predict"], json={}) == (403, {
        "error": "This API key's scope is 'predict'; this route needs 'manage'."})


async def test_a_read_key_reads_and_changes_nothing(client, keys):
    for path in READS:
        assert (await _status(client, "GET", path, keys["read"]))[0] == 200
    listed = (await _status(client, "GET", "/api/keys", keys["read"]))[1]["items"]
    victim = next(k for k in listed if k["name"] == "scoped-manage")
    for method, path, kwargs in [("POST", "/api/keys", {"json": {"scope": "manage"}}),
                                 ("DELETE", f"/api/keys/{victim['id']}", {}),
                                 ("DELETE", "/api/models/mdl_x", {}),
                                 ("DELETE", "/api/connections/conn_x", {})]:
        status, body = await _status(client, method, path, keys["read"], **kwargs)
        assert (status, body) == (403, {
            "error": "This API key's scope is 'read'; this route needs 'manage'."})
    after = (await _status(client, "GET", "/api/keys", keys["read"]))[1]["items"]
    assert len(after) == len(listed)
    assert next(k for k in after if k["id"] == victim["id"])["revoked_at"] is None


async def test_a_manage_key_makes_keys_of_any_scope_predict_by_default(client, keys):
    made = {}
    for scope in (None, "predict", "read", "manage"):
        body = {"name": f"made-{scope}"} | ({"scope": scope} if scope else {})
        status, new = await _status(client, "POST", "/api/keys", keys["manage"], json=body)
        assert status == 201
        made[scope] = new
    assert [made[s]["scope"] for s in (None, "predict", "read", "manage")] == [
        "predict", "predict", "read", "manage"]
    assert (await _status(client, "GET", "/api/keys", made["read"]["key"]))[0] == 200
    assert (await _status(client, "GET", "/api/keys", made[None]["key"]))[0] == 403
    status, body = await _status(client, "POST", "/api/keys", keys["manage"],
                                 json={"scope": "root"})
    assert (status, body) == (422, {
        "error": "The scope must be one of predict, read, manage, not 'root'."})


async def test_no_key_is_given_more_than_its_makers_scope(services):
    owner = await services.accounts.by_email("trader@example.com")
    with pytest.raises(Forbidden, match="a key of scope 'read' can't create a key of scope "
                                        "'manage'"):
        await services.keys.create(owner.id, "escalated", "manage", granted="read")
    with pytest.raises(InvalidData, match="the scope must be one of"):
        await services.keys.create(owner.id, "odd", "admin")


async def test_keys_made_before_scopes_keep_every_right(tmp_path):
    path = tmp_path / "keys.sqlite3"
    old = sqlite3.connect(path)  # the first schema, with one key, as an older version left it
    old.executescript("""
        CREATE TABLE accounts (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE api_keys (id TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT NOT NULL,
            prefix TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
            revoked_at TEXT);
        INSERT INTO accounts VALUES ('acct_1', 'a@example.com', 'x', '2026-01-01T00:00:00+00:00');
        INSERT INTO api_keys VALUES ('key_old', 'acct_1', 'old', 'nmb_old', 'hash',
            '2026-01-01T00:00:00+00:00', NULL);
    """)
    old.close()
    store = await SqliteKeyStore.open(path)
    try:
        (old_key,) = await store.list_keys("acct_1")
        assert (old_key.id, old_key.scope) == ("key_old", "manage")
        new = await store.create_key("acct_1", "new", "predict")
        assert (await store.authenticate(new.secret)).scope == "predict"
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    reopened = await SqliteKeyStore.open(path)  # upgrading is done once
    await reopened.close()
