"""The YAML config, validated at start-up into typed, frozen objects.

Any unknown key, wrong type or missing plugin stops start-up with one line that names the
file and the key. Each plugin validates its own keys through its ``Provider.options`` class.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import types
import typing
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs
import yaml

from nember_core.errors import ConfigError

DEFAULT_CONFIG = Path("config") / "nember.yaml"  # in the current folder (PROTOCOL.md §3)
# Where a config is looked for when neither --config nor $NEMBER_CONFIG names one, in order:
# the current folder's (a project's checkout, as the quick start runs it), then the user's.
LOCAL_CONFIGS = (DEFAULT_CONFIG, Path("nember.yaml"))
APP_FOLDER = "nember"  # under $XDG_CONFIG_HOME and $XDG_DATA_HOME


REQUIRED = attrs.NOTHING  # a setting without a default: the config must give it
DATA_DIR = Path("var")  # data_dir's default, beside the config file


def setting(default: Any, doc: str) -> Any:
    """A config field with its default and its documentation, the one line that
    config/nember.yaml and the README's table show for it (``nember_core.app.config_docs``)."""
    if isinstance(default, (list, dict, set)):  # mutable: every instance gets its own copy
        return attrs.field(factory=lambda: copy.copy(default), metadata={"doc": doc})
    return attrs.field(default=default, metadata={"doc": doc})


@attrs.frozen
class TlsConfig:
    cert: Path = setting(REQUIRED, "PEM file of the certificate (chain): serve wss://")
    key: Path = setting(REQUIRED, "PEM file of the certificate's private key")


@attrs.frozen
class RateLimitConfig:
    per_second: float = setting(1000.0, "request frames per second per connection, sustained")
    burst: int = setting(2000, "request frames per connection in a burst")


@attrs.frozen
class ServerConfig:
    host: str = setting("127.0.0.1", "the address /ws listens on")
    port: int = setting(8765, "the port /ws listens on")
    tls: TlsConfig | None = setting(None, "serve wss:// instead of ws://")
    auth_timeout: float = setting(10.0, "seconds to send the API key, else close 1008")
    max_message_size: int = setting(65536, "bytes per frame; a larger one closes with 1009")
    heartbeat: float = setting(20.0, "seconds between pings; a silent peer is dropped")
    max_connections_per_account: int = setting(1000, "live connections per account")
    rate_limit: RateLimitConfig = setting(RateLimitConfig(), "request frames per connection")
    shutdown_timeout: float = setting(5.0, "seconds to drain connections on SIGTERM/SIGINT")
    model_refresh_interval: float = setting(0.5, "seconds between looks for retrained models")
    revocation_check_interval: float = setting(1.0, "seconds between looks for revoked keys")
    node: str = setting("", "name in the connection registry; empty: the host name")
    event_loop: str = setting(
        "auto", "auto (uvloop when installed: the all or uvloop extra), asyncio or uvloop")
    micro_batching: bool = setting(True, "predict a costly model's concurrent requests at once")
    batch_above_us: float = setting(20.0, "batch a model whose one prediction costs more µs")
    max_batch: int = setting(256, "rows per batch, at most")
    compile_trees: bool = setting(True, "tree models: native code (TL2cgen, gcc) once loaded")
    max_upload_size: int = setting(64 * 1024 * 1024, "bytes of CSV per training upload "
                                                     "(REST API)")
    training_workers: int = setting(
        1, "training jobs of the REST API run at once, shared fairly between accounts")
    training_timeout: float = setting(3600.0, "seconds a training job may run, then it fails")
    training_memory_mb: int = setting(
        4096, "MB of address space a training job's process may map, then the job fails; "
              "0: no cap (nember train is never capped)")
    workers: int = setting(1, "processes sharing the port (SO_REUSEPORT); see --workers")
    metrics: bool = setting(True, "serve GET /metrics (Prometheus; /healthz, /readyz always)")
    trusted_proxies: tuple[str, ...] = setting(
        (), "addresses or networks (CIDR) of proxies whose X-Forwarded-For names the client")


@attrs.frozen
class PluginSection:
    """A role's section: which plugin serves it, and that plugin's validated options."""

    plugin: str = setting(REQUIRED, "the installed plugin that keeps them")
    # Not a key: the plugin's own keys sit beside ``plugin:``, documented by its options class.
    options: Any = setting(None, "the plugin's options, an instance of its options class")


@attrs.frozen
class BillingConfig:
    section: PluginSection = setting(REQUIRED, "the ledger's plugin and its options")
    price: Decimal = setting(Decimal("0.01"), "charged once per accepted connection")
    currency: str = setting("USD", "the price's currency")


@attrs.frozen
class DashboardConfig:
    enabled: bool = setting(True, "serve the web dashboard at / (the REST API is always on)")
    allow_signup: bool = setting(False, "may visitors create their own accounts?")
    session_hours: float = setting(24.0, "how long a login lasts")
    login_attempts_per_minute: int = setting(
        10, "failed logins a minute per email (10 times that per address), then 429")


@attrs.frozen
class LogConfig:
    level: str = setting("info", "log level: debug, info, warning or error")
    format: str = setting("json", "structlog events on stderr: json or console")


# The top-level keys, in the order the docs show them (kw_only: data_dir has a default).
@attrs.frozen(kw_only=True)
class Config:
    path: Path | None = setting(REQUIRED, "the file read; None: the defaults alone")
    data_dir: Path = setting(DATA_DIR, "where the embedded plugins keep their files "
                                       "(without a config file, or in the per-user one: "
                                       "~/.local/share/nember)")
    server: ServerConfig = setting(REQUIRED, "the server: /ws, the REST API, the dashboard")
    key_store: PluginSection = setting(REQUIRED, "accounts, hashed API keys and sessions")
    billing: BillingConfig = setting(REQUIRED, "durable charges, and usage")
    model_store: PluginSection = setting(REQUIRED, "trained models, their versions and "
                                                   "metadata")
    connection_registry: PluginSection = setting(
        REQUIRED, "live connections of all server processes (memory: this one's only)")
    jobs: PluginSection = setting(REQUIRED, "the REST API's training jobs")
    dashboard: DashboardConfig = setting(DashboardConfig(), "the web dashboard and its logins")
    log: LogConfig = setting(REQUIRED, "what is logged, and how")

    def section(self, role: str) -> PluginSection:
        """The plugin section of a role (billing's sits inside its own section)."""
        return self.billing.section if role == "billing" else getattr(self, role)


# config section of each pluggable role -> the hook whose providers may fill it; with no
# ``plugin:`` key, the provider that calls itself the default is used
ROLES = {
    "key_store": "nember_key_stores",
    "billing": "nember_billing_ledgers",
    "model_store": "nember_model_stores",
    "connection_registry": "nember_connection_registries",
    "jobs": "nember_job_boards",
}
TOP_LEVEL = {"data_dir", "server", "log", "dashboard", *ROLES}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
# A training process maps about 0.4 GB (Python, numpy, scikit-learn...) before any data.
MIN_TRAINING_MEMORY_MB = 512


def _xdg_folder(variable: str, fallback: str) -> Path:
    """An XDG base folder: the variable when it holds an absolute path, else ~/fallback."""
    value = os.environ.get(variable, "")
    if value and Path(value).is_absolute():
        return Path(value)
    try:
        home = Path.home()
    except RuntimeError:  # no HOME, and no password-file entry to find it in
        raise ConfigError("cannot find your home folder: set HOME, or pass --config FILE "
                          "(with data_dir)") from None
    return home / fallback


def user_config_file() -> Path:
    """The per-user config: ``$XDG_CONFIG_HOME/nember/nember.yaml`` (~/.config/...)."""
    return _xdg_folder("XDG_CONFIG_HOME", ".config") / APP_FOLDER / "nember.yaml"


def user_data_dir() -> Path:
    """The per-user data folder, the ``data_dir`` without a config file and the per-user
    config's default: ``$XDG_DATA_HOME/nember`` (~/.local/share/nember)."""
    return _xdg_folder("XDG_DATA_HOME", ".local/share") / APP_FOLDER


# How a config was found (ConfigSource.found_by), and how a line on stderr says it.
FOUND_BY = {
    "--config": "from --config",
    "$NEMBER_CONFIG": "from $NEMBER_CONFIG",
    "current folder": "found in the current folder",
    "user": "your per-user config",
}


@attrs.frozen
class ConfigSource:
    """The config file a command reads, and how it was found."""

    path: Path | None  # None: no config file, the defaults alone
    found_by: str  # a key of FOUND_BY; "" with no file
    named: bool = False  # named by the user: it must exist

    def describe(self) -> str:
        """For a line on stderr: ``config FILE (how it was found)``, or that there is none."""
        if self.path is None:
            return "no config file found"
        return f"config {self.path} ({FOUND_BY[self.found_by]})"


def find_config(explicit: str | None) -> ConfigSource:
    """The config to read, in this order: ``--config FILE``; ``$NEMBER_CONFIG``;
    ``config/nember.yaml``, then ``nember.yaml``, in the current folder; the per-user
    ``$XDG_CONFIG_HOME/nember/nember.yaml``; else none (the defaults, with the data in
    :func:`user_data_dir`)."""
    if explicit:
        return ConfigSource(Path(explicit), "--config", named=True)
    if os.environ.get("NEMBER_CONFIG"):
        return ConfigSource(Path(os.environ["NEMBER_CONFIG"]), "$NEMBER_CONFIG", named=True)
    for candidate in LOCAL_CONFIGS:
        if candidate.is_file():
            return ConfigSource(candidate, "current folder")
    user = user_config_file()
    if user.is_file():
        return ConfigSource(user, "user")
    return ConfigSource(None, "")


def load_config(explicit: str | None, providers: dict[str, dict[str, Any]]) -> Config:
    """Find (:func:`find_config`), read and validate the config. ``providers``: role ->
    {plugin name -> Provider}."""
    return read_config(find_config(explicit), providers)


def read_config(source: ConfigSource, providers: dict[str, dict[str, Any]]) -> Config:
    """Read and validate the config ``source`` names (the defaults when it names none)."""
    path = source.path
    # The per-user config keeps settings, not data: its default data_dir is the user's.
    default_data_dir = user_data_dir() if source.found_by == "user" else None
    if path is not None and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        return parse_config(raw if raw is not None else {}, path, providers, default_data_dir)
    if source.named:
        raise ConfigError(f"{path}: config file not found")
    return parse_config({}, None, providers)


def parse_config(raw: Any, path: Path | None, providers: dict[str, dict[str, Any]],
                 default_data_dir: Path | None = None) -> Config:
    """Validate ``raw``, read from ``path`` (``None``: no file). Relative paths resolve
    against the file's folder (the current folder without one). Without a ``data_dir`` key,
    the data goes in ``default_data_dir``, else ``var`` beside the file, else (no file) in
    :func:`user_data_dir`."""
    where = str(path) if path else "<defaults>"
    base = path.parent.resolve() if path else Path.cwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the config must be a mapping of keys to values")
    _reject_unknown(raw, TOP_LEVEL, "", where)

    if "data_dir" in raw:
        data_dir = _structure(Path, raw["data_dir"], "data_dir", where, base)
    elif default_data_dir is not None:
        data_dir = default_data_dir
    elif path is not None:
        data_dir = base / DATA_DIR
    else:
        data_dir = user_data_dir()
    server = _structure(ServerConfig, raw.get("server", {}), "server", where, base)
    log = _structure(LogConfig, raw.get("log", {}), "log", where, base)
    dashboard = _structure(DashboardConfig, raw.get("dashboard", {}), "dashboard", where, base)
    if dashboard.session_hours <= 0 or dashboard.login_attempts_per_minute < 1:
        raise ConfigError(f"{where}: dashboard: session_hours and login_attempts_per_minute "
                          "must be positive")
    if log.level not in LOG_LEVELS:
        raise ConfigError(f"{where}: log.level: expected one of {', '.join(LOG_LEVELS)}")
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"{where}: log.format: expected one of {', '.join(LOG_FORMATS)}")
    _check_server(server, where)

    sections: dict[str, Any] = {}
    for role in ROLES:
        section = raw.get(role, {})
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: {role}: expected a mapping, got {_kind(section)}")
        section = dict(section)
        core: dict[str, Any] = {}
        if role == "billing":
            core = {k: section.pop(k) for k in ("price", "currency") if k in section}
        installed = providers.get(role, {})
        known = ", ".join(sorted(installed)) or "none"
        name = section.pop("plugin", None)
        if name is None:
            name = next((n for n, p in installed.items() if p.default), None)
            if name is None:
                raise ConfigError(f"{where}: {role}.plugin: name one (installed: {known})")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: {role}.plugin: expected a string, got {_kind(name)}")
        provider = installed.get(name)
        if provider is None:
            raise ConfigError(
                f"{where}: {role}.plugin: no installed plugin provides {name!r} "
                f"(installed: {known})"
            )
        if provider.options is None:
            _reject_unknown(section, set(), role, where)
            options = None
        else:
            options = _structure(provider.options, section, role, where, base)
        plugin_section = PluginSection(plugin=name, options=options)
        if role == "billing":
            sections[role] = _billing(core, plugin_section, where)
        else:
            sections[role] = plugin_section

    return Config(
        path=path, data_dir=data_dir, server=server, log=log, dashboard=dashboard, **sections
    )


def _billing(core: dict[str, Any], section: PluginSection, where: str) -> BillingConfig:
    defaults = attrs.fields(BillingConfig)
    price = core.get("price", str(defaults.price.default))
    if isinstance(price, bool) or not isinstance(price, (int, float, str)):
        raise ConfigError(f"{where}: billing.price: expected a number, got {_kind(price)}")
    try:
        amount = Decimal(str(price))
    except InvalidOperation:
        raise ConfigError(f"{where}: billing.price: expected a number, got {price!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: billing.price: expected a number >= 0, got {price!r}")
    currency = core.get("currency", defaults.currency.default)
    if not isinstance(currency, str) or not currency.strip():
        raise ConfigError(f"{where}: billing.currency: expected a currency code such as USD")
    return BillingConfig(section=section, price=amount, currency=currency.strip())


def _check_server(server: ServerConfig, where: str) -> None:
    checks = [
        ("port", 0 <= server.port <= 65535, "a port number from 0 to 65535"),
        ("auth_timeout", server.auth_timeout > 0, "a number of seconds > 0"),
        ("max_message_size", server.max_message_size >= 1024, "a size in bytes >= 1024"),
        ("heartbeat", server.heartbeat > 0, "a number of seconds > 0"),
        ("max_connections_per_account", server.max_connections_per_account >= 1, "an integer >= 1"),
        ("rate_limit.per_second", server.rate_limit.per_second > 0, "a number > 0"),
        ("rate_limit.burst", server.rate_limit.burst >= 1, "an integer >= 1"),
        ("shutdown_timeout", server.shutdown_timeout >= 0, "a number of seconds >= 0"),
        ("model_refresh_interval", server.model_refresh_interval > 0, "a number of seconds > 0"),
        ("revocation_check_interval", server.revocation_check_interval > 0, "a number > 0"),
        ("max_upload_size", server.max_upload_size >= 1024, "a size in bytes >= 1024"),
        ("batch_above_us", server.batch_above_us >= 0, "a number of µs >= 0"),
        ("event_loop", server.event_loop in ("auto", "asyncio", "uvloop"),
         "'auto', 'asyncio' or 'uvloop'"),
        ("max_batch", server.max_batch >= 1, "an integer >= 1"),
        ("training_workers", server.training_workers >= 1, "an integer >= 1"),
        ("training_timeout", server.training_timeout > 0, "a number of seconds > 0"),
        ("training_memory_mb", server.training_memory_mb == 0
         or server.training_memory_mb >= MIN_TRAINING_MEMORY_MB,
         f"0 (no cap) or a size in MB >= {MIN_TRAINING_MEMORY_MB}"),
        ("workers", server.workers >= 1, "an integer >= 1"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{where}: server.{key}: expected {expected}")
    for proxy in server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: server.trusted_proxies: expected IP addresses or "
                              f"networks such as 10.0.0.0/8, got {proxy!r}") from None


def _reject_unknown(raw: dict, known: set[str], prefix: str, where: str) -> None:
    for key in raw:
        if key not in known:
            name = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: {name}: unknown key")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _structure(tp: Any, value: Any, key: str, where: str, base: Path) -> Any:
    """Check ``value`` against the type ``tp`` and build it; errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _structure(inner, value, key, where, base)
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {_kind(value)}")
        fields = {f.name: f for f in attrs.fields(tp)}
        _reject_unknown(value, set(fields), key, where)
        hints = typing.get_type_hints(tp)
        built = {
            name: _structure(hints[name], item, f"{key}.{name}", where, base)
            for name, item in value.items()
        }
        missing = [
            name for name, f in fields.items() if f.default is attrs.NOTHING and name not in built
        ]
        if missing:
            raise ConfigError(f"{where}: {key}.{missing[0]}: required key is missing")
        try:
            return tp(**built)
        except ValueError as exc:  # the class's own validators (a plugin's options)
            raise ConfigError(f"{where}: {key}: {exc}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {_kind(value)}")
        return value
    if origin is tuple and typing.get_args(tp) == (str, Ellipsis):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: {key}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key}: expected a path, got {_kind(value)}")
        path = Path(value).expanduser()
        # ``base`` is resolved already: config/../var is var, said so in messages too.
        return path if path.is_absolute() else Path(os.path.normpath(base / path))
    raise ConfigError(f"{where}: {key}: unsupported option type {tp!r}")  # a plugin's bug
