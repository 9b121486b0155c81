"""The service layer directly: every rule of nember_core/rules.py and every error, as the CLI,
the REST API and the dashboard all get them (exact classes, exact messages)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import GATEWAY, create_app
from nember_core.errors import AlreadyExists, InvalidData, NotFound
from nember_core.plugins import installed_families
from nember_core.services import TrainingRequest
from nember_core.web import CONTEXT
from tests.harness import PASSWORD, expected_families, family_installed, write_config
from tests.helpers import request

from .conftest import EMAIL, OTHER_EMAIL, ask, authed


def job(prepared, **changes) -> TrainingRequest:
    """A small, valid training request over the prepared CSV, with ``changes``."""
    fields = {"strat": "rules", "family": "DecisionTree", "model_type": "class",
              "data": prepared.data, "target": "direction", "window": 2,
              "features": ["point1", "point2"], **changes}
    return TrainingRequest(**fields)


async def owner(services, email: str = EMAIL):
    return await services.accounts.by_email(email)


# --- accounts -------------------------------------------------------------------------------


@pytest.mark.parametrize("email,password,error,message", [
    ("not-an-email", PASSWORD, InvalidData, "'not-an-email' is not an email address"),
    ("a b@example.com", PASSWORD, InvalidData, "'a b@example.com' is not an email address"),
    ("@example.com", PASSWORD, InvalidData, "'@example.com' is not an email address"),
    ("user@localhost", PASSWORD, InvalidData, "'user@localhost' is not an email address"),
    ("", PASSWORD, InvalidData, "'' is not an email address"),
    ("new@example.com", "short", InvalidData, "the password must have at least 8 characters"),
    ("new@example.com", "", InvalidData, "the password must have at least 8 characters"),
    ("not-an-email", "short", InvalidData, "'not-an-email' is not an email address"),
    (EMAIL, PASSWORD, AlreadyExists, f"an account for {EMAIL} already exists"),
    (f"  {EMAIL}\n", PASSWORD, AlreadyExists, f"an account for {EMAIL} already exists"),
])
async def test_account_rules(services, email, password, error, message):
    with pytest.raises(error) as raised:
        await services.accounts.create(email, password)
    assert type(raised.value) is error and str(raised.value) == message


async def test_an_account_is_created_with_its_email_stripped_and_can_log_in(services):
    created = await services.accounts.create("  fresh@example.com ", "12345678")
    assert created.email == "fresh@example.com"
    assert (await services.accounts.by_email("fresh@example.com")).id == created.id
    logged_in = await services.accounts.log_in(" fresh@example.com", "12345678", "127.0.0.1")
    assert logged_in.id == created.id
    assert await services.accounts.log_in("fresh@example.com", "123456789", "127.0.0.1") is None


async def test_an_unknown_account_is_not_found(services):
    with pytest.raises(NotFound) as raised:
        await services.accounts.by_email("nobody@example.com")
    assert str(raised.value) == "no account for nobody@example.com"


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 201, None, 5],
                         ids=["empty", "blank", "white-space", "201 chars", "None", "number"])
async def test_key_names_must_have_1_to_200_characters(services, name):
    account = await owner(services)
    before = await services.keys.list(account.id)
    with pytest.raises(InvalidData) as raised:
        await services.keys.create(account.id, name)
    assert str(raised.value) == "a key name must have 1 to 200 characters"
    assert len(await services.keys.list(account.id)) == len(before)  # nothing was made


async def test_key_names_are_stripped_and_200_characters_are_enough(services):
    account = await owner(services)
    stripped = await services.keys.create(account.id, "  bot-7\n")
    longest = await services.keys.create(account.id, "k" * 200)
    assert (stripped.key.name, longest.key.name) == ("bot-7", "k" * 200)
    assert stripped.secret.startswith("nmb_") and stripped.secret.startswith(stripped.key.prefix)
    listed = {entry.key.id: entry for entry in await services.keys.list(account.id)}
    assert listed[stripped.key.id].key.name == "bot-7"
    assert listed[stripped.key.id].live_connections == 0


async def test_revoking_through_an_account_cannot_touch_another_accounts_key(services):
    mine, theirs = await owner(services), await owner(services, OTHER_EMAIL)
    their_key = await services.keys.create(theirs.id, "theirs")
    for wanted in (their_key.key.id, their_key.secret, "key_doesnotexist"):
        with pytest.raises(NotFound) as raised:
            await services.keys.revoke(wanted, account_id=mine.id)
        assert str(raised.value) == f"no API key {wanted}"
    # Still active: it authenticates, and its listing shows no revocation.
    assert (await services.keys.authenticate(their_key.secret)).id == their_key.key.id
    (listed,) = [e.key for e in await services.keys.list(theirs.id) if e.key.id == their_key.key.id]
    assert listed.revoked_at is None and listed.active


async def test_an_account_revokes_its_own_key_by_id_only(services):
    mine = await owner(services)
    doomed = await services.keys.create(mine.id, "doomed")
    with pytest.raises(NotFound):  # the REST API names a key by its id, never the secret
        await services.keys.revoke(doomed.secret, account_id=mine.id)
    assert await services.keys.authenticate(doomed.secret) is not None
    revoked = await services.keys.revoke(f" {doomed.key.id} ", account_id=mine.id)
    assert revoked.id == doomed.key.id and revoked.revoked_at is not None
    assert await services.keys.authenticate(doomed.secret) is None


async def test_the_cli_form_revokes_any_key_by_id_or_by_the_key_itself(services):
    theirs = await owner(services, OTHER_EMAIL)
    by_secret = await services.keys.create(theirs.id, "by-secret")
    by_id = await services.keys.create(theirs.id, "by-id")
    kept = await services.keys.create(theirs.id, "kept")
    first = await services.keys.revoke(by_secret.secret)
    second = await services.keys.revoke(by_id.key.id)
    assert (first.id, first.name) == (by_secret.key.id, "by-secret")
    assert (second.id, second.name) == (by_id.key.id, "by-id")
    listed = {e.key.id: e.key for e in await services.keys.list(theirs.id)}
    assert listed[by_secret.key.id].revoked_at is not None
    assert listed[by_id.key.id].revoked_at is not None
    assert listed[kept.key.id].revoked_at is None
    assert await services.keys.authenticate(kept.secret) is not None
    again = await services.keys.revoke(by_id.secret)  # a second time: the first time stays
    assert again.revoked_at == second.revoked_at
    with pytest.raises(NotFound) as raised:
        await services.keys.revoke("nmb_no_such_key")
    assert str(raised.value) == (
        "no such API key (give its id, as `nember keys list` shows, or the key)")


@pytest.mark.parametrize("secret", ["", "nmb_" + "x" * 5000, "nmb_unknown"])
async def test_keys_that_do_not_authenticate(services, secret):
    assert await services.keys.authenticate(secret) is None


# --- training rules -------------------------------------------------------------------------


def _families() -> str:
    return ", ".join(sorted(installed_families()))


TRAINING_RULES = [
    ({"strat": ""}, "a strategy name must have 1 to 200 characters"),
    ({"strat": "  "}, "a strategy name must have 1 to 200 characters"),
    ({"strat": "s" * 201}, "a strategy name must have 1 to 200 characters"),
    ({"window": 0}, "the window must be a whole number from 1 to 1000, not 0"),
    ({"window": 1001}, "the window must be a whole number from 1 to 1000, not 1001"),
    ({"window": -2}, "the window must be a whole number from 1 to 1000, not -2"),
    ({"window": 2.0}, "the window must be a whole number from 1 to 1000, not 2.0"),
    ({"window": "2"}, "the window must be a whole number from 1 to 1000, not '2'"),
    ({"window": True}, "the window must be a whole number from 1 to 1000, not True"),
    ({"window": None}, "the window must be a whole number from 1 to 1000, not None"),
    ({"model_type": "classification"},
     "the model type must be 'class' or 'reg', not 'classification'"),
    ({"model_type": "Class"}, "the model type must be 'class' or 'reg', not 'Class'"),
    ({"model_type": ""}, "the model type must be 'class' or 'reg', not ''"),
    ({"family": "Nope"}, None),  # the installed families, filled in below
    ({"family": "decisiontree"}, None),
    ({"features": []}, "name at least one feature column"),
    ({"params": [("max_depth", 3)]}, "the hyperparameters must be a mapping of names to values"),
]


@pytest.mark.parametrize("changes,message", TRAINING_RULES,
                         ids=[repr(changes) for changes, _ in TRAINING_RULES])
async def test_training_rules(services, prepared, changes, message):
    if message is None:
        message = f"no installed model family {changes['family']!r} (installed: {_families()})"
    account = await owner(services)
    before = await services.models.versions(account.id)
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, **changes))
    assert type(raised.value) is InvalidData and str(raised.value) == message
    assert await services.models.versions(account.id) == before  # nothing was stored


def test_the_installed_families_are_the_first_party_ones_at_least():
    assert expected_families() <= set(installed_families())


async def test_the_rules_are_checked_before_the_csv_is_read(services, prepared, tmp_path):
    account = await owner(services)
    missing = tmp_path / "missing.csv"
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, data=missing, window=1001))
    assert str(raised.value) == "the window must be a whole number from 1 to 1000, not 1001"
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, data=missing))
    assert str(raised.value) == f"{missing}: file not found"


COLUMNS = "(columns: point1, point2, direction, move)"


@pytest.mark.parametrize("changes,message", [
    ({"features": ["point1", "nope"]}, f"no column named 'nope' {COLUMNS}"),
    ({"target": "nope"}, f"no column named 'nope' {COLUMNS}"),
    ({"features": ["point1", "direction"]}, "the target 'direction' cannot also be a feature"),
    ({"features": ["point1", "point1"]}, "a feature is named twice"),
    ({"features": ["direction"], "target": "move"},
     "feature 'direction' is not numeric (line 2: "),
])
async def test_csv_errors_name_the_csv(services, prepared, changes, message):
    account = await owner(services)
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, **changes))
    assert str(raised.value).startswith(f"{prepared.data}: {message}")
    # An upload names the CSV by its label, never by the server's temporary path.
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, data_label="my prices.csv",
                                                    **changes))
    assert str(raised.value).startswith(f"my prices.csv: {message}")
    assert str(prepared.data) not in str(raised.value)


async def test_a_ragged_csv_is_named_by_its_label(services, tmp_path):
    account = await owner(services)
    ragged = tmp_path / "upload-1234.csv"
    ragged.write_text("point1,point2,direction,move\n1,2,up,0.1\n3,4\n")
    request_ = TrainingRequest(strat="s", family="DecisionTree", model_type="class", data=ragged,
                               target="direction", data_label="ragged.csv")
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, request_)
    assert str(raised.value) == "ragged.csv: line 3 has 2 values, the header has 4"


async def test_a_regression_needs_a_numeric_target(services, prepared):
    account = await owner(services)
    with pytest.raises(InvalidData) as raised:
        await services.models.train(account.id, job(prepared, model_type="reg"))
    assert "regression needs a numeric target, but 'direction' holds" in str(raised.value)


# --- models: versions and deleting ----------------------------------------------------------


async def test_versions_flag_the_latest_and_deleting_a_version_or_a_model(services, prepared):
    account = await owner(services)
    first = await services.models.train(account.id, job(prepared, strat="versions"))
    second = await services.models.train(account.id, job(prepared, strat="versions",
                                                         params={"max_depth": 2}))
    reg = await services.models.train(account.id, job(prepared, strat="versions",
                                                      model_type="reg", target="move"))
    assert (first.version, second.version, reg.version) == (1, 2, 1)
    assert first.key == second.key and first.key.id == second.key.id != reg.key.id
    assert (first.id, second.id) == (f"{first.key.id}-v1", f"{first.key.id}-v2")

    def mine(versions):
        return [(v.meta.key.model_type, v.meta.version, v.latest)
                for v in versions if v.meta.key.strat == "versions"]

    assert mine(await services.models.versions(account.id)) == [
        ("class", 2, True), ("class", 1, False), ("reg", 1, True)]
    assert (await services.models.latest(first.key)).version == 2

    # Deleting the newest version: the one before it is the latest again, and serves.
    assert [m.id for m in await services.models.delete(account.id, second.id)] == [second.id]
    assert mine(await services.models.versions(account.id)) == [
        ("class", 1, True), ("reg", 1, True)]
    assert (await services.models.latest(first.key)).version == 1
    with pytest.raises(NotFound) as raised:
        await services.models.delete(account.id, second.id)
    assert str(raised.value) == f"no model {second.id}"

    # Deleting a model: every version of it, and nothing else.
    third = await services.models.train(account.id, job(prepared, strat="versions"))
    deleted = await services.models.delete(account.id, first.key.id)
    assert sorted(m.id for m in deleted) == sorted([first.id, third.id])
    assert mine(await services.models.versions(account.id)) == [("reg", 1, True)]
    assert await services.models.latest(first.key) is None
    with pytest.raises(NotFound) as raised:
        await services.models.delete(account.id, first.key.id)
    assert str(raised.value) == f"no model {first.key.id}"
    # The prepared models are untouched.
    assert {(v.meta.key.strat, v.meta.key.model_type) for v in
            await services.models.versions(account.id) if v.latest} >= {
        ("example_strategy", "class"), ("example_strategy", "reg")}


async def test_another_account_cannot_delete_a_model(services, prepared):
    account, other = await owner(services), await owner(services, OTHER_EMAIL)
    (version, *_) = [v.meta for v in await services.models.versions(account.id)
                     if v.meta.key.strat == "example_strategy"]
    for wanted in (version.id, version.key.id):
        with pytest.raises(NotFound) as raised:
            await services.models.delete(other.id, wanted)
        assert str(raised.value) == f"no model {wanted}"
    assert await services.models.latest(version.key) is not None
    assert await services.models.versions(other.id) == []


async def test_a_training_job_needs_a_server(services, prepared):
    account = await owner(services)
    with pytest.raises(NotFound) as raised:
        await services.models.job(account.id, "job_nope")
    assert str(raised.value) == "no training job job_nope"


# --- connections and usage ------------------------------------------------------------------


async def test_closing_a_connection_that_is_not_live_is_not_found(services):
    account = await owner(services)
    with pytest.raises(NotFound) as raised:
        await services.connections.close(account.id, "conn_doesnotexist")
    assert str(raised.value) == "no live connection conn_doesnotexist"


async def test_closing_another_accounts_live_connection_is_not_found(client, prepared, services):
    ws = await authed(client, prepared.other_key)
    account, other = await owner(services), await owner(services, OTHER_EMAIL)
    (conn,) = await services.connections.list(other.id)
    assert await services.connections.list(account.id) == []
    with pytest.raises(NotFound) as raised:
        await services.connections.close(account.id, conn.id)
    assert str(raised.value) == f"no live connection {conn.id}"
    assert (await ask(ws, request()))["seq_num"] == 1  # still open
    # Its own account closes it (through the server's own services: at once, where the
    # services of another process would wait for the registry's heartbeat).
    server_side = client.server.app[CONTEXT].services
    await server_side.connections.close(other.id, conn.id)
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4000)
    await _until(lambda: services.connections.list(other.id), lambda live: live == [])
    with pytest.raises(NotFound):  # closed: not live any more
        await server_side.connections.close(other.id, conn.id)


async def _until(get, done, tries: int = 250):
    for _ in range(tries):
        value = await get()
        if done(value):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached: {value!r}")


async def test_usage_report_totals_are_the_sum_of_days_and_rows(client, prepared, services):
    account = await owner(services)
    before = await services.usage.report(account.id)
    one = await authed(client, prepared.key)
    assert (await ask(one, request()))["type"] == "success"
    assert (await ask(one, request()))["type"] == "success"
    assert (await ask(one, "junk"))["type"] == "error"
    await one.close()
    two = await authed(client, prepared.key)
    assert (await ask(two, request(model_type="reg")))["type"] == "success"
    await two.close()
    want = before.connections + 2

    def recorded(report):
        return (report.connections == want
                and sum(1 for row in report.rows if row.closed_at is not None) >= want
                and report.predictions == before.predictions + 3)

    report = await _until(lambda: services.usage.report(account.id), recorded)
    price = services.config.billing.price
    assert (report.connections, report.predictions, report.errors) == (
        want, before.predictions + 3, before.errors + 1)
    assert report.amount == before.amount + 2 * price
    assert report.currency == "USD" and isinstance(report.amount, Decimal)
    for total in ("connections", "predictions", "errors", "amount"):
        assert getattr(report, total) == sum((getattr(day, total) for day in report.days),
                                             Decimal(0) if total == "amount" else 0)
    assert report.connections == len(report.rows)
    assert report.predictions == sum(row.predictions for row in report.rows)
    assert report.errors == sum(row.errors for row in report.rows)
    assert report.amount == sum((row.amount for row in report.rows), Decimal(0))
    assert [day.day for day in report.days] == sorted({r.opened_at.date().isoformat()
                                                      for r in report.rows})
    new = [row for row in report.rows if row.connection_id not in
           {r.connection_id for r in before.rows}]
    assert sorted((row.predictions, row.errors, row.amount, row.live) for row in new) == [
        (1, 0, price, False), (2, 1, price, False)]
    assert all(row.close_reason == "closed by client" for row in new)


async def test_a_model_retrained_after_its_newest_version_was_deleted_reaches_the_server(
    aiohttp_client, prepared, services, tmp_path
):
    # A server of its own that looks for retrained models only when told to (below), as
    # its refresh loop does every model_refresh_interval.
    config = write_config(tmp_path, server={"model_refresh_interval": 3600},
                          data_dir=prepared.config.parent / "data")
    client = await aiohttp_client(create_app(Nember.load(str(config))))
    account = await owner(services)
    await services.models.train(account.id, job(prepared, strat="reuse"))
    doomed = await services.models.train(account.id, job(prepared, strat="reuse"))
    ws = await authed(client, prepared.key)
    first = await ask(ws, request(strat_name="reuse"))
    assert (first["type"], first["prediction"] in ("up", "down")) == ("success", True)

    relabelled = tmp_path / "relabelled.csv"  # the same rows, other labels
    relabelled.write_text(prepared.data.read_text().replace(",up,", ",hi,")
                          .replace(",down,", ",lo,"))
    await services.models.delete(account.id, doomed.id)
    retrained = await services.models.train(account.id, job(prepared, strat="reuse",
                                                           data=relabelled))
    await client.server.app[GATEWAY].cache.refresh()
    answer = await ask(ws, request(strat_name="reuse"))
    assert (answer["message"], answer["prediction"] in ("hi", "lo")) == (
        "New model configuration added, prediction made", True)
    assert retrained.version == 3  # a number never given to another model


@pytest.mark.parametrize("family,params,message", [
    ("LightGBM", {"forcedbins_filename": "/etc/shadow"},
     "LightGBM has no hyperparameter 'forcedbins_filename' (it takes: "),
    ("LightGBM", {"num_threads": 8}, "LightGBM has no hyperparameter 'num_threads'"),
    ("XGBoost", {"nthread": 8}, "XGBoost has no hyperparameter 'nthread'"),
    ("XGBoost", {"max_dept": 4}, "XGBoost has no hyperparameter 'max_dept'"),
    ("RandomForest", {"n_estimators": 30_000},
     "the hyperparameter 'n_estimators' must be from 1 to 1000, got 30000"),
    ("RandomForest", {"n_jobs": -1}, "RandomForest has no hyperparameter 'n_jobs'"),
    ("DecisionTree", {"max_depth": "deep"},
     "the hyperparameter 'max_depth' must be an integer, got 'deep'"),
    ("DecisionTree", {"max_depth": True},
     "the hyperparameter 'max_depth' must be an integer, got True"),
    ("DecisionTree", {"criterion": "best"}, "the hyperparameter 'criterion' must be one of "),
    ("GradientBoosting", {"learning_rate": float("nan")},
     "the hyperparameter 'learning_rate' must be a finite number, got nan"),
    ("XGBoost", {"max_depth": None}, "the hyperparameter 'max_depth' can't be empty"),
])
async def test_hyperparameters_outside_the_familys_list_are_refused_before_training(
    services, prepared, family, params, message
):
    if not family_installed(family):
        pytest.skip(f"{family}'s library is not installed")
    owner = await services.accounts.by_email("trader@example.com")
    request = TrainingRequest(strat="hp", family=family, model_type="class",
                              data=prepared.data, target="direction", params=params)
    with pytest.raises(InvalidData) as refused:
        await services.models.train(owner.id, request)
    assert str(refused.value).startswith(message)


async def test_hyperparameters_within_the_list_train(services, prepared):
    owner = await services.accounts.by_email("trader@example.com")
    meta = await services.models.train(owner.id, TrainingRequest(
        strat="hp-ok", family="RandomForest", model_type="class", data=prepared.data,
        target="direction", params={"n_estimators": 5, "max_features": "sqrt",
                                    "class_weight": None, "min_samples_split": 0.1}))
    assert meta.params == {"n_estimators": 5, "max_features": "sqrt", "class_weight": None,
                           "min_samples_split": 0.1}
