"""The ``nember`` command (PROTOCOL.md §3). Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs

from nember_core import __version__
from nember_core.config import ROLES
from nember_core.errors import NemberError, NotFound
from nember_core.records import ModelKey, ModelMeta
from nember_core.rules import SCOPES
from nember_core.services import ImportRequest, Services, TrainingRequest, class_labels

from . import evaluation_report
from .logs import configure
from .nember import Nember
from .progress import ProgressBar

CONFIG_HELP = ("the config file (default: $NEMBER_CONFIG; else config/nember.yaml, then "
               "nember.yaml, in the current folder; else ~/.config/nember/nember.yaml)")

ABOUT = """\
Where the config and the data are: --config FILE; else the file $NEMBER_CONFIG names; else
config/nember.yaml, then nember.yaml, in the current folder; else the per-user
$XDG_CONFIG_HOME/nember/nember.yaml (~/.config/nember/nember.yaml). Relative paths in a
config resolve against its folder; its data_dir defaults to var beside it (for the
per-user config, to the per-user data folder). With no config file at all, the defaults
serve, with the data in $XDG_DATA_HOME/nember (~/.local/share/nember). serve and demo say
on stderr which config and data they use, unless --config names it.

The commands that work on accounts, keys and models (all but accounts create, which makes
the first account) never create data: where there is none, they say so in one line and exit
1. Errors are one line on stderr and a non-zero exit status."""


class _HelpFormatter(argparse.HelpFormatter):
    """Prose lines are filled to the terminal's width; indented lines (examples) are kept."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                lines.append(textwrap.fill(" ".join(prose), width, initial_indent=indent,
                                           subsequent_indent=indent))
                prose.clear()

        for line in text.splitlines():
            if not line.strip():
                flush()
                lines.append("")
            elif line.startswith(" "):
                flush()
                lines.append(indent + line)
            else:
                prose.append(line.strip())
        flush()
        return "\n".join(lines)


class _InstalledFamilies:
    """The installed model families, looked up only when a help text shows them."""

    def __str__(self) -> str:
        from nember_core.plugins import installed_families

        try:
            return ", ".join(sorted(installed_families())) or "none"
        except NemberError as exc:
            return f"unknown ({exc})"


def _command(sub, name: str, common: argparse.ArgumentParser, summary: str, description: str,
             *examples: str) -> argparse.ArgumentParser:
    """A (sub)command with its one-line summary, a description and examples (its epilog)."""
    epilog = None
    if examples:
        epilog = ("examples:\n" if len(examples) > 1 else "example:\n") + "\n".join(
            f"  {example}" for example in examples)
    return sub.add_parser(name, parents=[common], help=summary, description=description,
                          epilog=epilog, formatter_class=_HelpFormatter)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    parser = argparse.ArgumentParser(
        prog="nember", description="Nember: predictions for trading bots over a websocket.",
        epilog=ABOUT + "\n\nexamples:\n  nember demo\n  nember serve --config /etc/nember.yaml"
                       "\n  nember train --help",
        parents=[common], formatter_class=_HelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"nember {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these; `nember COMMAND --help` says more")

    demo = _command(
        sub, "demo", common, "sample account, key and models; serve",
        "Make (once; later runs reuse them) a demo account and API key, a sample price series, "
        "and models of every installed family, class and reg, for the strategy "
        "example_strategy; print the key and a command to try; then serve as `nember serve` "
        "does, until Ctrl-C.",
        "nember demo", "nember demo --port 9000")
    serve = _command(
        sub, "serve", common, "serve /ws, the REST API and the dashboard until stopped",
        "Serve the websocket /ws, the REST API under /api/ and the dashboard, on one port, "
        "until SIGINT or SIGTERM (then drain the connections, closing them with 1001).",
        "nember serve", "nember serve --config /etc/nember/nember.yaml --host 0.0.0.0 "
        "--port 8765 --workers 4")
    for command in (demo, serve):
        command.add_argument("--host", metavar="HOST",
                             help="the address to listen on (overrides server.host)")
        command.add_argument("--port", type=int, metavar="PORT",
                             help="the port to listen on, 0 to 65535 (overrides server.port)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes sharing the port (overrides server.workers)")

    accounts = _command(
        sub, "accounts", common, "create and list accounts, change passwords",
        "Accounts own API keys and models, and log in to the dashboard.",
        "nember accounts create trader@example.com", "nember accounts list")
    accounts_sub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="create, list or password; `ACTION --help` says more")
    create = _command(
        accounts_sub, "create", common,
        "create an account (password: $NEMBER_PASSWORD, else prompted)",
        "Create an account. Its password comes from $NEMBER_PASSWORD, else it is asked for "
        "twice (in a terminal); 8 characters at least. This command makes the data folder "
        "when there is none yet.",
        "NEMBER_PASSWORD='a long secret' nember accounts create trader@example.com")
    create.add_argument("email", metavar="EMAIL", help="the account's email (its login)")
    _command(accounts_sub, "list", common, "list the accounts: id, email, created",
             "List every account, oldest first: id, email and creation time, tab-separated.",
             "nember accounts list")
    password = _command(
        accounts_sub, "password", common,
        "change an account's password (from $NEMBER_PASSWORD, else prompted)",
        "Give an account a new password, from $NEMBER_PASSWORD, else asked for twice (in a "
        "terminal), and end its dashboard sessions (when the key store can; else they end "
        "when they expire, and the command says so). Its API keys keep working.",
        "nember accounts password trader@example.com")
    password.add_argument("email", metavar="EMAIL", help="the account's email")

    keys = _command(sub, "keys", common, "create, list and revoke API keys",
                    "API keys: what bots send as the first frame of /ws, and what scripts "
                    "send to the REST API (Authorization: Bearer KEY).",
                    "nember keys create --account trader@example.com --name bot-1")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="create, list or revoke; `ACTION --help` says more")
    key_create = _command(
        keys_sub, "create", common, "create an API key (printed alone on the last line)",
        "Create an API key for an account. The key is printed this once, alone on the last "
        "line of stdout; only its hash is stored.",
        "KEY=$(nember keys create --account trader@example.com --name bot-1 | tail -n 1)",
        "nember keys create --account trader@example.com --name scripts --scope manage")
    key_create.add_argument("--account", required=True, metavar="EMAIL",
                            help="the email of the account that owns the key")
    key_create.add_argument("--name", default="default",
                            help="a name to recognise the key by (default: %(default)s)")
    key_create.add_argument(
        "--scope", choices=SCOPES, default="predict",
        help="predict: /ws only (a bot's); read: also the REST API's GET routes; manage: "
             "every route (default: %(default)s)",
    )
    key_list = _command(
        keys_sub, "list", common, "list an account's keys",
        "List an account's API keys, tab-separated: id, name, prefix (the key's first "
        "characters), created, revoked (- while active).",
        "nember keys list --account trader@example.com")
    key_list.add_argument("--account", required=True, metavar="EMAIL",
                          help="the email of the account whose keys to list")
    key_revoke = _command(
        keys_sub, "revoke", common, "revoke an API key",
        "Revoke an API key: it is refused from now on, and its live connections close with "
        "4401 within seconds, on every server. A key revoked already stays so (since the first "
        "time), and the command says so.",
        "nember keys revoke key_0123456789abcdef")
    key_revoke.add_argument("key", metavar="KEY",
                            help="the key's id, as `nember keys list` shows, or the key itself")

    train = _command(
        sub, "train", common, "train a model from a CSV file",
        "Train a model from a CSV file in time order, in this process, and store it as the "
        "newest version of (account, strategy, family, type); servers pick it up within "
        "seconds. Sample t is the features of rows t-W+1..t, labelled with the target of row "
        "t. The model is first evaluated walk-forward: K folds in time order, each tested on "
        "samples after the ones it was fitted on (a purge gap of horizon + window - 1 "
        "samples between them), then fitted on all samples. It prints the folds' scores (and "
        "with --returns a backtest against buy-and-hold), and warns of features that look "
        "computed from later rows (default features never include them). Progress goes to "
        "stderr: a bar in a terminal, else (after 5 s) a line per stage. A tree model is "
        "then compiled to native code (when "
        "server.compile_trees is on, and gcc and TL2cgen are installed), so that servers "
        "load it native.",
        "nember train --account trader@example.com --strat my_strategy \\\n"
        "      --model XGBoost --type class --data prices.csv --target direction \\\n"
        "      --window 2 --features point1,point2 --param max_depth=4 \\\n"
        "      --horizon 1 --returns next_return")
    train.add_argument("--account", required=True, metavar="EMAIL",
                       help="the email of the account that owns the model")
    train.add_argument("--strat", required=True, metavar="NAME",
                       help="the strategy name, as bots send it in strat_name")
    family = train.add_argument(
        "--model", required=True, metavar="FAMILY",
        help="the model family, one of those installed: %(families)s")
    family.families = _InstalledFamilies()  # type: ignore[attr-defined]
    train.add_argument("--type", required=True, choices=["class", "reg"], dest="model_type",
                       help="class: predict a label (classification); reg: a number "
                            "(regression)")
    train.add_argument("--data", required=True, type=Path, metavar="FILE.csv",
                       help="the CSV file: a header, then one row per time step, oldest first")
    train.add_argument("--target", required=True, metavar="COLUMN",
                       help="the column to predict (numeric for reg)")
    train.add_argument("--window", type=int, default=1, metavar="W",
                       help="data points per sample, 1 to 1000: bots send W points a request "
                            "(default: %(default)s)")
    train.add_argument("--features", metavar="a,b,...",
                       help="the feature columns, in order (default: every numeric column but "
                            "the target)")
    train.add_argument("--folds", type=int, default=5, metavar="K",
                       help="walk-forward folds to evaluate on, 1 to 20: each is one more fit "
                            "(default: %(default)s)")
    train.add_argument("--horizon", type=int, default=1, metavar="H",
                       help="rows the target looks ahead (1: the next bar); training stops "
                            "H + W - 1 samples before each tested fold (default: %(default)s)")
    train.add_argument("--returns", metavar="COLUMN",
                       help="each row's next-bar return, as a fraction (0.01 is 1%%): "
                            "backtest following the signal against buy-and-hold")
    train.add_argument("--bars-per-year", type=float, default=252.0, metavar="N",
                       help="for the backtest's Sharpe ratio: 252 for daily bars, 8760 hourly, "
                            "525600 by the minute (default: %(default)g)")
    train.add_argument("--skip-warmup", action="store_true",
                       help="drop the leading rows whose features or target are still empty "
                            "(warm-up rows of rolling indicators)")
    train.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a hyperparameter of the family (repeatable), e.g. max_depth=4",
    )

    models = _command(sub, "models", common, "list, delete and import an account's models",
                      "The models an account trained or imported: every version of each.",
                      "nember models list --account trader@example.com")
    models_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="list, delete or import; `ACTION --help` says more")
    model_list = _command(
        models_sub, "list", common, "list an account's models, every version",
        "List an account's models, tab-separated: strategy, family, type, version (* marks "
        "the newest, the one that serves), trained (UTC), and the walk-forward scores.",
        "nember models list --account trader@example.com")
    model_list.add_argument("--account", required=True, metavar="EMAIL",
                            help="the email of the account whose models to list")
    model_delete = _command(
        models_sub, "delete", common, "delete a model, or one version of it",
        "Delete a model: every version, or with --version only that one (then the newest "
        "remaining version serves). Servers stop serving a deleted model within seconds.",
        "nember models delete --account trader@example.com --strat my_strategy --model "
        "XGBoost --type class",
        "nember models delete --account trader@example.com --strat my_strategy --model "
        "XGBoost --type class --version 2")
    model_delete.add_argument("--account", required=True, metavar="EMAIL",
                              help="the email of the account that owns the model")
    model_delete.add_argument("--strat", required=True, metavar="NAME",
                              help="the model's strategy name")
    model_delete.add_argument("--model", required=True, metavar="FAMILY",
                              help="the model's family (see `nember models list`)")
    model_delete.add_argument("--type", required=True, choices=["class", "reg"],
                              dest="model_type", help="the model's type")
    model_delete.add_argument("--version", type=int, metavar="N",
                              help="only this version (default: every version)")

    model_import = _command(
        models_sub, "import", common, "store a model trained elsewhere (ONNX, XGBoost, "
        "LightGBM) and serve it",
        "Store a model trained elsewhere as the newest version of (account, strategy, family, "
        "type), served like a trained one: an ONNX file for the family ONNX, or the "
        "library's own model file for XGBoost (JSON or UBJSON, as Booster.save_model writes "
        "it) and LightGBM (its text model). The model's input is one row of W x F numbers: "
        "the W data points oldest first, each point's features in --features order. The "
        "file is loaded and asked a row of zeros first: one that doesn't load, whose input "
        "isn't W x F wide, or whose class output isn't a class index, is refused with one "
        "line, and nothing is stored. Pickles (and joblib files) are refused: loading them "
        "runs code.",
        "nember models import --account trader@example.com --strat my_strategy \\\n"
        "      --model ONNX --type class --file model.onnx --features point1,point2 \\\n"
        "      --window 2 --classes down,up")
    model_import.add_argument("--account", required=True, metavar="EMAIL",
                              help="the email of the account that owns the model")
    model_import.add_argument("--strat", required=True, metavar="NAME",
                              help="the strategy name, as bots send it in strat_name")
    imported = model_import.add_argument(
        "--model", required=True, metavar="FAMILY",
        help="the model family of the file: ONNX, XGBoost or LightGBM (installed: "
             "%(families)s)")
    imported.families = _InstalledFamilies()  # type: ignore[attr-defined]
    model_import.add_argument("--type", required=True, choices=["class", "reg"],
                              dest="model_type",
                              help="class: it outputs class probabilities or indices; reg: a "
                                   "number")
    model_import.add_argument("--file", required=True, type=Path, metavar="FILE",
                              help="the model file")
    model_import.add_argument("--features", required=True, metavar="a,b,...",
                              help="the feature names bots send, in the order of the model's "
                                   "input")
    model_import.add_argument("--window", type=int, default=1, metavar="W",
                              help="data points per request, 1 to 1000: the model's input is "
                                   "W x F values, oldest point first (default: %(default)s)")
    model_import.add_argument("--classes", metavar="a,b,...",
                              help="class models: the label answered for each class index, in "
                                   "order (default: the indices 0, 1, ...)")
    model_import.add_argument("--target", default="imported", metavar="NAME",
                              help="what the model predicts, for listings (default: "
                                   "%(default)s)")

    _command(sub, "families", common, "list the installed model families",
             "List the installed model families (plugins may add more), tab-separated: name "
             "and the version of its library.",
             "nember families")
    plugins = _command(
        sub, "plugins", common, "list every plugin: its package, hooks and what it provides",
        "List every plugin installed in the 'nember' entry-point group: its entry point, "
        "module and package (with its version), the hooks it implements and what they "
        "return (families, stores). A plugin that can't be used (it fails to import, "
        "implements a misspelt hook, or returns a family lacking part of the interface) is "
        "listed with its error, and the command then exits 1. No config is read.",
        "nember plugins", "nember plugins --json")
    plugins.add_argument("--json", action="store_true", help="the same, as JSON")

    db = _command(sub, "db", common, "the shared stores' database schema",
                  "The schema of stores that keep one in a shared database (postgres).",
                  "nember db upgrade --config /etc/nember/nember.yaml")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="upgrade; `ACTION --help` says more")
    _command(
        db_sub, "upgrade", common,
        "create or upgrade the schema of every configured store that keeps one (postgres)",
        "Create or upgrade the schema of every configured store that keeps one in a shared "
        "database (postgres), without opening the stores for service: run it once before "
        "starting new nodes. The embedded stores upgrade themselves when opened.",
        "nember db upgrade --config /etc/nember/nember.yaml")

    backup = _command(
        sub, "backup", common,
        "copy the stores that keep data on this machine into DIR (safe while serving)",
        "Copy every configured store that keeps its data on this machine (the embedded "
        "ones: SQLite files through SQLite's online backup API, the model files) into DIR, "
        "one folder per role, and a manifest.json of every file with its size and SHA-256. "
        "The copy is consistent while servers keep serving and charging. Stores elsewhere "
        "(PostgreSQL, Redis) are named with how to back them up instead.",
        "nember backup /srv/backups/nember-$(date +%F)")
    backup.add_argument("dir", metavar="DIR", type=Path, help="a new (or empty) folder")
    restore = _command(
        sub, "restore", common,
        "put a backup made by `nember backup` in place of the stores (servers stopped)",
        "Check a backup against its manifest (a missing, added or damaged file: refused), "
        "then restore it into the configured stores (data_dir), readable by this user only. "
        "Refused while a server uses the stores, as the connection registry shows (with the "
        "memory registry it can't tell: stop the servers first), and when the stores hold "
        "data, unless --force.",
        "nember restore /srv/backups/nember-2026-11-28",
        "nember restore --force --config /etc/nember/nember.yaml /srv/backups/nember-2026-11-28")
    restore.add_argument("dir", metavar="DIR", type=Path, help="the backup's folder")
    restore.add_argument("--force", action="store_true",
                         help="replace stores that hold data (says what it replaced)")
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


SERVING = ("serve", "demo")  # long-running: they log at the config's level


def _run(args: argparse.Namespace) -> int:
    if args.command == "plugins":  # before loading them all: one broken plugin stops that
        return _plugins(args.json)
    nember = Nember.load(getattr(args, "config", None))
    level = nember.config.log.level
    if args.command not in SERVING and level != "debug":
        level = "warning"  # a one-shot command prints its results; its info events are noise
    configure(level, nember.config.log.format)
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        raise NemberError("--port: expected a port number from 0 to 65535")
    if args.command == "serve":
        workers = nember.config.server.workers if args.workers is None else args.workers
        if workers < 1:
            raise NemberError("--workers: expected an integer >= 1")
        _say_where(nember, args)
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

        _say_where(nember, args)
        run_demo(nember, args.host, args.port)
        return 0
    if args.command == "families":
        for name, family in sorted(nember.families.items()):
            print(f"{name}\t{family.library_version}")
        return 0
    if args.command == "db":
        return asyncio.run(_db_upgrade(nember))
    if args.command in ("backup", "restore"):
        from . import backup

        if args.command == "backup":
            return asyncio.run(backup.backup(nember, args.dir))
        return asyncio.run(backup.restore(nember, args.dir, args.force))
    command = (args.command, getattr(args, "action", None))
    handler = COMMANDS[command]
    create = command in CREATING
    missing = nember.missing_data()

    async def run() -> int:
        # The other commands read, or need an account: with no data, NoData, nothing made.
        async with nember.services(create=create) as services:
            return await handler(services, args)

    code = asyncio.run(run())
    if create and missing is not None:
        _say_where(nember, args, "keeping the data")
    return code


def _say_where(nember: Nember, args: argparse.Namespace, what: str = "data") -> None:
    """One line on stderr saying which config and data folder a command uses, unless
    --config named it (then it is no surprise)."""
    if getattr(args, "config", None) is None:
        print(f"nember: {nember.source.describe()}; {what} in {nember.config.data_dir}",
              file=sys.stderr, flush=True)


async def _db_upgrade(nember: Nember) -> int:
    """Apply the migrations of every configured store whose provider has ``upgrade`` (the
    stores shared by several nodes); the embedded ones upgrade themselves when opened."""
    config = nember.config
    context = nember.plugin_context()
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


async def _accounts_list(services: Services, args) -> int:
    accounts = await services.accounts.list()
    print("id\temail\tcreated")
    for account in accounts:
        print(f"{account.id}\t{account.email}\t{account.created_at.isoformat()}")
    return 0


async def _accounts_password(services: Services, args) -> int:
    await services.accounts.by_email(args.email)  # no account: said before the prompt
    changed = await services.accounts.change_password(args.email, _password())
    account = changed.account
    if changed.sessions_ended is None:
        ended = ("the key store can't end its dashboard sessions: they last until they "
                 f"expire (at most dashboard.session_hours, "
                 f"{services.config.dashboard.session_hours:g} h)")
    else:
        ended = f"ended its dashboard sessions ({changed.sessions_ended} open)"
    print(f"Changed the password of {account.email} ({account.id}); {ended}; its API keys "
          "keep working")
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
    done = await services.keys.revoke_reporting(args.key)
    key = done.key
    if done.already and key.revoked_at is not None:
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
        params=parse_params(args.param), skip_warmup=args.skip_warmup,
        folds=args.folds, horizon=args.horizon, returns=args.returns,
        bars_per_year=args.bars_per_year,
    )
    owner = await services.accounts.by_email(args.account)
    # A bar on a terminal; elsewhere (a log, CI) a plain line per stage. Both on stderr.
    bar = ProgressBar(f"{args.model} {args.model_type}", lines=True)
    try:
        meta = await services.models.train(owner.id, request, bar)
    finally:
        bar.close()
    print(f"Trained {_describe(meta)}")
    for line in evaluation_report.lines(meta.evaluation, meta.key.model_type):
        print(line)
    sys.stdout.flush()  # before the warnings, on a terminal showing both
    for warning in (meta.evaluation or {}).get("warnings", []):
        print(f"nember: warning: {warning}", file=sys.stderr)
    try:
        await _compile_trees(services, meta)
    except Exception as exc:  # the model is stored and serves: compiling only makes it faster
        print(f"nember: {meta.key.family} {meta.key.model_type} version {meta.version} not "
              f"compiled to native code: {exc}", file=sys.stderr)
    return 0


async def _compile_trees(services: Services, meta: ModelMeta) -> None:
    """Compile a tree model to native code now, into the cache servers look in first
    (``data_dir/compiled``), so that their first load of it is native already. Says how it
    went in a line; a model that isn't made of trees says nothing."""
    from nember_core.serving.model_loader import load_model
    from nember_core.trees.compiler import TreeCompiler, unavailable_reason

    config = services.config
    if not config.server.compile_trees:
        return
    data = await services.stores.model_store.read(meta)
    loaded = await asyncio.to_thread(load_model, services.models.families[meta.key.family],
                                     meta, data, None)
    if loaded.ensemble is None:
        return
    what = f"{meta.key.family} {meta.key.model_type} version {meta.version}"
    reason = unavailable_reason()
    if reason is not None:
        print(f"nember: {what} not compiled to native code: {reason} (servers answer "
              "through its NumPy or library path)", file=sys.stderr)
        return
    compiler = TreeCompiler(config.data_dir / "compiled")
    print(f"{what}: compiling its trees to native code...", file=sys.stderr, flush=True)
    try:
        native = await compiler.compile(loaded.ensemble, len(meta.features) * meta.window)
    finally:
        await compiler.close()
    if native is None:
        print(f"nember: {what} not compiled to native code: the compiler failed (servers "
              "try again, and answer through its NumPy or library path meanwhile)",
              file=sys.stderr)
        return
    print(f"Compiled {what} to native code (in {config.data_dir / 'compiled'}): servers "
          "load it native")


def _metrics(meta: ModelMeta) -> str:
    metrics = {k: v for k, v in meta.metrics.items()
               if k not in ("holdout", "train", "note", "warmup_rows_skipped")}
    return ", ".join(f"{k} {v}" for k, v in metrics.items()) or meta.metrics.get("note", "")


def _describe(meta: ModelMeta) -> str:
    warmup = meta.metrics.get("warmup_rows_skipped")
    skipped = f" ({warmup} warm-up rows skipped)" if warmup else ""
    return (
        f"{meta.key.family} {meta.key.model_type} for strategy {meta.key.strat!r}: version "
        f"{meta.version}, {meta.samples} samples{skipped}, window {meta.window}, features "
        f"{','.join(meta.features)}"
    )


async def _models_list(services: Services, args) -> int:
    owner = await services.accounts.by_email(args.account)
    print("strategy\tfamily\ttype\tversion\ttrained\tmetrics")
    for entry in await services.models.versions(owner.id):
        meta = entry.meta
        version = f"{meta.version}*" if entry.latest else str(meta.version)
        print(f"{meta.key.strat}\t{meta.key.family}\t{meta.key.model_type}\t{version}\t"
              f"{meta.trained_at.isoformat()}\t{_metrics(meta) or '-'}")
    return 0


async def _models_delete(services: Services, args) -> int:
    owner = await services.accounts.by_email(args.account)
    key = ModelKey(owner.id, args.strat, args.model, args.model_type)
    what = f"{args.model} {args.model_type} for strategy {args.strat!r}"
    wanted = key.id if args.version is None else f"{key.id}-v{args.version}"
    try:
        deleted = await services.models.delete(owner.id, wanted)
    except NotFound:
        if args.version is None:
            raise NotFound(f"no model {what}") from None
        raise NotFound(f"no version {args.version} of the model {what}") from None
    versions = ", ".join(str(meta.version) for meta in sorted(deleted, key=lambda m: m.version))
    if args.version is None:
        print(f"Deleted the model {what}: every version ({versions})")
    else:
        newest = await services.models.latest(key)
        serving = f"version {newest.version} serves now" if newest else "no version is left"
        print(f"Deleted version {versions} of the model {what}; {serving}")
    return 0


async def _models_import(services: Services, args) -> int:
    features = [name.strip() for name in args.features.split(",") if name.strip()]
    if not features:
        raise NemberError("--features: name at least one feature")
    classes = None if args.classes is None else class_labels(args.classes)
    if classes is not None and not classes:
        raise NemberError("--classes: name the label of each class index")
    try:
        artifact = args.file.read_bytes()
    except OSError as exc:
        raise NemberError(f"--file: cannot read {args.file}: {exc.strerror or exc}") from None
    owner = await services.accounts.by_email(args.account)
    meta = await services.models.import_model(owner.id, ImportRequest(
        strat=args.strat, family=args.model, model_type=args.model_type, artifact=artifact,
        features=features, window=args.window, classes=classes, target=args.target,
        label=str(args.file)))
    count = len(meta.features)
    labels = "" if meta.classes is None else f", classes {','.join(map(str, meta.classes))}"
    print(f"Imported {meta.key.family} {meta.key.model_type} model for strategy "
          f"{meta.key.strat!r}, version {meta.version}: {count} feature{'s' * (count > 1)} x "
          f"window {meta.window}{labels}")
    return 0


COMMANDS = {
    ("accounts", "create"): _accounts_create,
    ("accounts", "list"): _accounts_list,
    ("accounts", "password"): _accounts_password,
    ("models", "list"): _models_list,
    ("models", "delete"): _models_delete,
    ("models", "import"): _models_import,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("train", None): _train,
}
CREATING = {("accounts", "create")}  # the first account makes the data; the rest need it

if __name__ == "__main__":
    sys.exit(main())


def _plugins(as_json: bool) -> int:
    from nember_core.plugins import plugin_reports

    reports = plugin_reports()
    if as_json:
        print(json.dumps([attrs.asdict(report) for report in reports], indent=2))
    for report in reports if not as_json else ():
        package = f" ({report.distribution} {report.version})" if report.distribution else ""
        print(f"{report.name}  {report.target}{package}")
        if report.error:
            print(f"  error: {report.error}")
            continue
        print(f"  hooks: {', '.join(report.hooks) or 'none'}")
        provides = ", ".join(report.provides) or "nothing (an optional library not installed?)"
        print(f"  provides: {provides}")
    broken = sum(report.error is not None for report in reports)
    if broken:
        print(f"{broken} of the plugins can't be used: see their errors above", file=sys.stderr)
    return 1 if broken else 0
