"""The config is documented once, where each key is declared: config/nember.yaml, the
README's tables and the site's config page are rendered from those declarations and say the
same as the code."""

from __future__ import annotations

import re
import typing
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import yaml

from nember_core.app import config_docs
from nember_core.config import (
    DEFAULT_CONFIG,
    ROLES,
    BillingConfig,
    Config,
    DashboardConfig,
    LogConfig,
    PluginSection,
    RateLimitConfig,
    ServerConfig,
    TlsConfig,
    load_config,
    parse_config,
)
from nember_core.plugins import collect_providers, plugin_manager

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run: python -m nember_core.app.config_docs --write"
# Fields that are no key of their own: the file read; a plugin's options (its keys sit beside
# ``plugin:``); billing's plugin section (its keys sit in billing's own section).
NOT_KEYS = {(Config, "path"), (PluginSection, "options"), (BillingConfig, "section")}


@pytest.fixture(scope="module")
def providers():
    return collect_providers(plugin_manager())


def config_classes() -> list[type]:
    """Config and every attrs class its fields hold, found through the type hints."""
    found, todo = [], [Config]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            for hint in typing.get_type_hints(cls).values():
                todo += [tp for tp in (hint, *typing.get_args(hint)) if attrs.has(tp)]
    return found


def default_options(providers) -> list[type]:
    """The options classes of each role's default plugin: the ones the docs show."""
    return [p.options for by_name in providers.values() for p in by_name.values()
            if p.default and p.options is not None]


def readme_table() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(config_docs.TABLE_START) == 1 and readme.count(config_docs.TABLE_END) == 1
    return readme.split(config_docs.TABLE_START)[1].split(config_docs.TABLE_END)[0]


def test_config_yaml_is_rendered_from_the_declarations(providers):
    text = (ROOT / "config" / "nember.yaml").read_text(encoding="utf-8")
    assert text == config_docs.render_yaml(providers), REGENERATE


def test_readme_table_is_rendered_from_the_declarations(providers):
    assert readme_table() == "\n" + config_docs.render_table(providers), REGENERATE


def test_the_site_page_is_rendered_from_the_declarations(providers):
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == config_docs.render_page(providers), REGENERATE


def test_the_site_page_holds_the_tables_and_the_whole_yaml(providers):
    page = config_docs.render_page(providers)
    assert page.startswith("# Config reference\n")
    assert config_docs.render_table(providers, site=True) in page
    assert config_docs.render_plugin_table(providers, site=True) in page
    # The README's tables, but for brackets the site's Markdown would read as a link.
    assert "redis://\\[:PASSWORD@]HOST\\[:PORT]\\[/DB]" in page
    assert "redis://[:PASSWORD@]HOST[:PORT][/DB]" in config_docs.render_plugin_table(providers)
    assert f"```yaml\n{config_docs.render_yaml(providers)}```\n" in page
    for role in ROLES:  # each role with its installed plugins, the default first
        default = next(name for name, p in providers[role].items() if p.default)
        assert re.search(rf"^\| `{role}` \| `{default}` \(default\)", page, re.M), role


def test_every_setting_has_a_doc(providers):
    classes = config_classes()
    expected = {Config, ServerConfig, TlsConfig, RateLimitConfig, PluginSection, BillingConfig,
                DashboardConfig, LogConfig}
    assert expected <= set(classes)  # the walk finds them all, so none is skipped unseen
    options = {p.options for by_name in providers.values() for p in by_name.values()
               if p.options is not None}
    assert {cls.__name__ for cls in options} >= {"SqliteOptions", "RegistryOptions",
                                                 "LocalDiskOptions"}
    undocumented = [
        f"{cls.__name__}.{field.name}"
        for cls in [*classes, *options]
        for field in attrs.fields(cls)
        if not (isinstance(field.metadata.get("doc"), str) and field.metadata["doc"].strip())
    ]
    assert undocumented == []


def test_the_yaml_shows_every_key_with_its_doc(providers):
    text = (ROOT / "config" / "nember.yaml").read_text(encoding="utf-8")
    for cls in [*config_classes(), *default_options(providers)]:
        for field in attrs.fields(cls):
            if (cls, field.name) in NOT_KEYS:
                continue
            line = rf"^ *(# )?{field.name}:.* # {re.escape(field.metadata['doc'])}$"
            assert re.search(line, text, re.M), f"{cls.__name__}.{field.name}"
    # The keys the hand-written file lacked, and a role whose keys are unset by default.
    assert re.search(r"^  workers: 1 +# ", text, re.M)
    assert re.search(r'^  node: "" +# ', text, re.M)
    assert re.search(r"^jobs: +# .*\n  plugin: sqlite +# .*\n  # path: +# ", text, re.M)
    assert re.search(r"^key_store: +# .*\n  plugin: sqlite +# .*\n  # path: +# ", text, re.M)


def test_the_readme_table_shows_every_value_with_its_doc(providers):
    table = readme_table()
    for cls in [*config_classes(), *default_options(providers)]:
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            if (cls, field.name) in NOT_KEYS | {(PluginSection, "plugin")}:
                continue  # a role's plugin row says what the role keeps: below
            if any(attrs.has(tp) for tp in (hints[field.name], *typing.get_args(
                    hints[field.name]))):
                continue  # a section: the table has rows for its keys only
            row = rf"^\| `([\w.]+\.)?{field.name}` \| .+ \| {re.escape(field.metadata['doc'])} \|$"
            assert re.search(row, table, re.M), f"{cls.__name__}.{field.name}"
    for role in ROLES:  # a role's plugin row: its default plugin, and what the role keeps
        default = next(name for name, p in providers[role].items() if p.default)
        doc = attrs.fields_dict(Config)[role].metadata["doc"]
        assert f"| `{role}.plugin` | `{default}` | {doc} |" in table
    assert "| `data_dir` | `var` | " in table
    assert "| `server.tls.cert` | none | " in table
    assert "| `server.workers` | `1` | " in table


def test_the_rendered_yaml_loads_as_the_defaults(providers, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("NEMBER_CONFIG", raising=False)
    rendered = parse_config(yaml.safe_load(config_docs.render_yaml(providers)),
                            ROOT / DEFAULT_CONFIG, providers)
    served = load_config(None, providers)  # what `nember serve` reads here: config/nember.yaml
    # The defaults, but for data_dir: the file's ../var is the project's var/ (the quick
    # start's); without a config file the data is the user's (tests/inprocess/
    # test_config_and_cli.py).
    defaults = parse_config({}, None, providers, default_data_dir=ROOT / "var")
    assert served.path == DEFAULT_CONFIG

    def comparable(config: Config) -> Config:
        return attrs.evolve(config, path=None, data_dir=config.data_dir.resolve())

    assert comparable(rendered) == comparable(served) == comparable(defaults)
    assert rendered.data_dir.resolve() == ROOT / "var"
    assert rendered.server == ServerConfig() and rendered.server.tls is None
    assert rendered.dashboard == DashboardConfig() and rendered.log == LogConfig()
    assert (rendered.billing.price, rendered.billing.currency) == (Decimal("0.01"), "USD")
    for role in ROLES:
        section = rendered.section(role)
        provider = providers[role][section.plugin]
        assert provider.default
        assert section.options == (provider.options() if provider.options else None)


def test_write_replaces_the_yaml_the_page_and_only_the_readme_tables(providers, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "nember.yaml").write_text("stale: true\n")
    before, between, after = "# Title\n\ntext before\n\n", "\ntext between\n", "\ntext after\n"
    stale = f"{config_docs.TABLE_START}\n| old | table |\n{config_docs.TABLE_END}"
    stale_plugins = f"{config_docs.PLUGINS_START}\n| old |\n{config_docs.PLUGINS_END}"
    (tmp_path / "README.md").write_text(before + stale + between + stale_plugins + after)
    config_docs.write(tmp_path, providers)
    assert (tmp_path / "config" / "nember.yaml").read_text() == config_docs.render_yaml(providers)
    assert (tmp_path / "docs" / "config.md").read_text() == config_docs.render_page(providers)
    table = config_docs.render_table(providers)
    plugins = config_docs.render_plugin_table(providers)
    assert (tmp_path / "README.md").read_text() == (
        f"{before}{config_docs.TABLE_START}\n{table}{config_docs.TABLE_END}{between}"
        f"{config_docs.PLUGINS_START}\n{plugins}{config_docs.PLUGINS_END}{after}"
    )
    (tmp_path / "README.md").write_text("no markers\n")
    (tmp_path / "docs" / "config.md").write_text("stale\n")
    with pytest.raises(ValueError, match="config-table:start"):
        config_docs.write(tmp_path, providers)
    assert (tmp_path / "README.md").read_text() == "no markers\n"
    assert (tmp_path / "docs" / "config.md").read_text() == "stale\n"  # nothing half-written


def test_the_shared_stores_keys_are_documented_once_for_all_their_roles(providers):
    table = config_docs.render_plugin_table(providers)
    assert "| `postgres` | key_store, billing, model_store, jobs | `dsn` | required |" in table
    assert "| `redis` | connection_registry | `url` | required |" in table
    assert "`sqlite`" not in table  # the defaults are in the main table
