"""The ``nember`` command (PROTOCOL.md §3). Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
from pathlib import Path
from typing import Any

from nember_core import __version__
from nember_core.config import ROLES
from nember_core.errors import NemberError
from nember_core.plugin_api import PluginContext
from nember_core.rules import SCOPES
from nember_core.services import Services, TrainingRequest

from .logs import configure
from .nember import Nember
from .progress import ProgressBar


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="config file (default: $NEMBER_CONFIG, then config/nember.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="nember", description="Nember: predictions for trading bots over a websocket.",
        parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"nember {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="sample account, key and models; serve")
    serve = sub.add_parser("serve", parents=[common], help="serve /ws until stopped")
    for command in (demo, serve):
        command.add_argument("--host", help="listen address (overrides server.host)")
        command.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes sharing the port (overrides server.workers)")

    accounts = sub.add_parser("accounts", parents=[common], help="manage accounts")
    accounts_sub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = accounts_sub.add_parser(
        "create", parents=[common], help="create an account (password: $NEMBER_PASSWORD or prompt)"
    )
    create.add_argument("email")

    keys = sub.add_parser("keys", parents=[common], help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_create = keys_sub.add_parser("create", parents=[common], help="create an API key")
    key_create.add_argument("--account", required=True, metavar="EMAIL")
    key_create.add_argument("--name", default="default", help="a name to recognise the key by")
    key_create.add_argument(
        "--scope", choices=SCOPES, default="predict",
        help="predict: /ws only (a bot's); read: also the REST API's GET routes; manage: all",
    )
    key_list = keys_sub.add_parser("list", parents=[common], help="list an account's keys")
    key_list.add_argument("--account", required=True, metavar="EMAIL")
    key_revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke an API key")
    key_revoke.add_argument("key", metavar="KEY", help="the key's id, or the key itself")

    train = sub.add_parser("train", parents=[common], help="train a model from a CSV file")
    train.add_argument("--account", required=True, metavar="EMAIL")
    train.add_argument("--strat", required=True, metavar="NAME", help="strategy name")
    train.add_argument("--model", required=True, metavar="FAMILY", help="model family")
    train.add_argument("--type", required=True, choices=["class", "reg"], dest="model_type")
    train.add_argument("--data", required=True, type=Path, metavar="FILE.csv")
    train.add_argument("--target", required=True, metavar="COLUMN")
    train.add_argument("--window", type=int, default=1, metavar="W", help="data points per sample")
    train.add_argument("--features", metavar="a,b,...", help="default: every numeric column")
    train.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a hyperparameter of the family (repeatable), e.g. max_depth=4",
    )

    sub.add_parser("families", parents=[common], help="list the installed model families")

    db = sub.add_parser("db", parents=[common], help="the shared stores' database schema")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    db_sub.add_parser(
        "upgrade", parents=[common],
        help="create or upgrade the schema of every configured store that keeps one (postgres)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except NemberError as exc:
        print(f"nember: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    nember = Nember.load(getattr(args, "config", None))
    configure(nember.config.log.level, nember.config.log.format)
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        raise NemberError("--port: expected a port number from 0 to 65535")
    if args.command == "serve":
        workers = nember.config.server.workers if args.workers is None else args.workers
        if workers < 1:
            raise NemberError("--workers: expected an integer >= 1")
        if workers == 1:
            from .server import serve

            serve(nember, args.host, args.port)
        else:
            from .supervisor import supervise

            server = nember.config.server
            supervise(nember, args.host or server.host,
                      server.port if args.port is None else args.port, workers)
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(nember, args.host, args.port)
        return 0
    if args.command == "families":
        for name, family in sorted(nember.families.items()):
            print(f"{name}\t{family.library_version}")
        return 0
    if args.command == "db":
        return asyncio.run(_db_upgrade(nember))
    handler = COMMANDS[(args.command, getattr(args, "action", None))]

    async def run() -> int:
        async with nember.services() as services:
            return await handler(services, args)

    return asyncio.run(run())


async def _db_upgrade(nember: Nember) -> int:
    """Apply the migrations of every configured store whose provider has ``upgrade`` (the
    stores shared by several nodes); the embedded ones upgrade themselves when opened."""
    config = nember.config
    context = PluginContext(data_dir=config.data_dir,
                            node=config.server.node or socket.gethostname())
    upgraded = 0
    for role in ROLES:
        provider = nember.provider(role)
        if provider.upgrade is None:
            continue
        for line in await provider.upgrade(config.section(role).options, context):
            print(f"{role} ({provider.name}): {line}")
        upgraded += 1
    if not upgraded:
        print("no configured store keeps a schema to upgrade: the embedded ones upgrade "
              "themselves when opened")
    return 0


def _password() -> str:
    password = os.environ.get("NEMBER_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise NemberError("set NEMBER_PASSWORD, or run in a terminal to be asked for a password")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise NemberError("the passwords do not match")
    return first


async def _accounts_create(services: Services, args) -> int:
    account = await services.accounts.create(args.email, _password())
    print(f"Created account {account.email} ({account.id})")
    return 0


async def _keys_create(services: Services, args) -> int:
    owner = await services.accounts.by_email(args.account)
    new = await services.keys.create(owner.id, args.name, args.scope)
    print(f"Created API key {new.key.id} ({new.key.name!r}, scope {new.key.scope}); it is "
          "shown only this once:")
    print(new.secret)
    return 0


async def _keys_list(services: Services, args) -> int:
    owner = await services.accounts.by_email(args.account)
    print("id\tname\tprefix\tcreated\trevoked")
    for entry in await services.keys.list(owner.id):
        key = entry.key
        revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
        print(f"{key.id}\t{key.name}\t{key.prefix}\t{key.created_at.isoformat()}\t{revoked}")
    return 0


async def _keys_revoke(services: Services, args) -> int:
    before = await services.keys.find(args.key)
    key = await services.keys.revoke(args.key)
    if before is not None and not before.active:
        print(f"API key {key.id} ({key.name!r}) was already revoked, at "
              f"{key.revoked_at.isoformat()}")
        return 0
    print(f"Revoked API key {key.id} ({key.name!r}); its live connections close within seconds")
    return 0


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


async def _train(services: Services, args) -> int:
    features = None
    if args.features is not None:
        features = [name.strip() for name in args.features.split(",") if name.strip()]
        if not features:
            raise NemberError("--features: name at least one column")
    request = TrainingRequest(
        strat=args.strat, family=args.model, model_type=args.model_type, data=args.data,
        target=args.target, window=args.window, features=features,
        params=parse_params(args.param),
    )
    owner = await services.accounts.by_email(args.account)
    bar = ProgressBar(f"{args.model} {args.model_type}")
    try:
        meta = await services.models.train(owner.id, request, bar)
    finally:
        bar.close()
    print(f"Trained {_describe(meta)}")
    return 0


def _describe(meta: Any) -> str:
    metrics = {k: v for k, v in meta.metrics.items() if k not in ("holdout", "train", "note")}
    scores = ", ".join(f"{k} {v}" for k, v in metrics.items()) or meta.metrics.get("note", "")
    return (
        f"{meta.key.family} {meta.key.model_type} for strategy {meta.key.strat!r}: version "
        f"{meta.version}, {meta.samples} samples, window {meta.window}, features "
        f"{','.join(meta.features)}; hold-out: {scores}"
    )


COMMANDS = {
    ("accounts", "create"): _accounts_create,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("train", None): _train,
}

if __name__ == "__main__":
    sys.exit(main())
