"""config/nember.yaml, the README's config tables and the site's config page (docs/config.md),
rendered from the declarations.

Every key's default and doc is declared once, where the key is: ``setting(...)`` in
``nember_core.config``, ``attrs.field(metadata={"doc": ...})`` in a plugin's options class.
A role's section shows its default plugin's keys.

``python -m nember_core.app.config_docs --write`` rewrites all three; without ``--write`` it
prints them. ``tests/units/test_config_docs.py`` fails when any is out of date.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import yaml

from nember_core.config import ROLES, TOP_LEVEL, Config, PluginSection
from nember_core.plugins import collect_providers, plugin_manager

ROOT = Path(__file__).resolve().parents[2]
YAML_FILE = Path("config") / "nember.yaml"
README = Path("README.md")
DOCS_PAGE = Path("docs") / "config.md"
TABLE_START, TABLE_END = "<!-- config-table:start -->", "<!-- config-table:end -->"
PLUGINS_START, PLUGINS_END = "<!-- plugin-options:start -->", "<!-- plugin-options:end -->"

HEADER = """\
# Nember's config: the embedded default (SQLite files and models on the local disk).
# Relative paths resolve against this file's folder. Every key is optional; a commented key
# is unset by default. Generated from the declarations (nember_core/config.py, the plugins'
# options) by `python -m nember_core.app.config_docs --write`: edit those, not this file.
"""
# This file sits in config/, and relative paths resolve against it: ../var is the project's
# var/, where `nember demo` run from the project's folder (which finds this file) keeps it.
FILE_VALUES: dict[tuple[str, ...], str] = {("data_dir",): "../var"}
COMMENT_COLUMN = 40


@attrs.frozen
class Key:
    """One key of the config, as the docs show it."""

    path: tuple[str, ...]
    doc: str
    default: Any = None  # None or attrs.NOTHING (a key the config must give): no value
    section: bool = False  # a mapping: its keys follow
    unset: bool = False  # absent by default: shown commented out, default "none"
    context: str = ""  # for a ``plugin`` key: what its role keeps, the table's meaning


def config_keys(providers: dict[str, dict[str, Any]]) -> list[Key]:
    """Every key of the config in the order of the declarations (Config.path is no key)."""
    keys = _class_keys(Config, None, (), False, providers)
    return [key for key in keys if key.path[0] in TOP_LEVEL]


def _class_keys(cls: type, instance: Any, prefix: tuple[str, ...], unset: bool,
                providers: dict[str, dict[str, Any]]) -> list[Key]:
    hints = typing.get_type_hints(cls)
    keys = []
    for field in attrs.fields(cls):
        doc, path = field.metadata.get("doc", ""), (*prefix, field.name)
        tp = _strip_none(hints[field.name])
        default = getattr(instance, field.name) if instance is not None else _default(field)
        if tp is PluginSection:
            if cls is Config:
                keys.append(Key(path, doc, section=True))
            else:  # billing's: its plugin keys sit in billing's own section, beside price
                path = prefix
            keys += _plugin_keys(path, providers.get(path[0], {}))
        elif attrs.has(tp):
            inner_unset = unset or default is None
            keys.append(Key(path, doc, section=True, unset=inner_unset))
            nested = default if attrs.has(type(default)) else None  # else: the class's defaults
            keys += _class_keys(tp, nested, path, inner_unset, providers)
        else:
            keys.append(Key(path, doc, default, unset=unset or default is None))
    return keys


def _plugin_keys(path: tuple[str, ...], installed: dict[str, Any]) -> list[Key]:
    """A role's ``plugin`` key and its default plugin's own keys."""
    doc = attrs.fields(PluginSection).plugin.metadata["doc"]
    role_doc = attrs.fields_dict(Config)[path[0]].metadata["doc"]
    provider = next((p for p in installed.values() if p.default), None)
    if provider is None:  # nothing to show but the key
        return [Key((*path, "plugin"), doc, unset=True, context=role_doc)]
    keys = [Key((*path, "plugin"), doc, provider.name, context=role_doc)]
    if provider.options is not None:
        keys += _class_keys(provider.options, None, path, False, {})
    return keys


def _strip_none(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    return tp


def _default(field: attrs.Attribute) -> Any:
    default: Any = field.default
    # attrs' stubs declare Factory a function (so that ``x: list[int] = Factory(list)``
    # type-checks); it is the class of a factory default.
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # a list of strings, in YAML's flow style
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    text = str(value)  # numbers, Decimal, Path, str
    if isinstance(value, (str, Path)) and yaml.safe_load(text) != text:
        return json.dumps(text)  # quoted: "", or a string YAML would read as something else
    return text


def render_yaml(providers: dict[str, dict[str, Any]]) -> str:
    """config/nember.yaml: every key with its default, its doc as a comment."""
    lines = [HEADER.rstrip("\n")]
    for key in config_keys(providers):
        depth = len(key.path) - 1
        if depth == 0:
            lines.append("")
        line = f"{key.path[-1]}:"
        value = FILE_VALUES.get(key.path, key.default)
        if value is not None and value is not attrs.NOTHING and not key.section:
            line += f" {_yaml_value(value)}"
        line = "  " * depth + ("# " if key.unset else "") + line
        lines.append(f"{line:<{COMMENT_COLUMN}} # {key.doc}")
    return "\n".join(lines) + "\n"


def _cell(text: str, site: bool) -> str:
    """Prose for a table cell: a pipe would end the cell; on the site, ``[A][B]`` (a URL's
    optional parts) would be taken for a cross-reference, so its brackets are escaped."""
    text = text.replace("|", r"\|")
    return text.replace("[", r"\[") if site else text


def render_table(providers: dict[str, dict[str, Any]], site: bool = False) -> str:
    """The README's config reference: a row per key that takes a value (``site``: for the
    site's page, see :func:`_cell`)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in config_keys(providers):
        if key.section:
            continue
        unset = key.unset or key.default is None or key.default is attrs.NOTHING
        default = "none" if unset else f"`{_yaml_value(key.default)}`"
        meaning = _cell(key.context or key.doc, site)
        rows.append(f"| `{'.'.join(key.path)}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def render_plugin_table(providers: dict[str, dict[str, Any]], site: bool = False) -> str:
    """The keys of the installed plugins that are no role's default (PostgreSQL, Redis...),
    a row per key; a plugin that serves several roles with the same keys is listed once."""
    serves: dict[tuple[str, type], list[str]] = {}
    for role in (field.name for field in attrs.fields(Config)):  # in the docs' order
        for provider in providers.get(role, {}).values():
            if not provider.default and provider.options is not None:
                serves.setdefault((provider.name, provider.options), []).append(role)
    rows = ["| plugin | roles | key | default | meaning |", "|---|---|---|---|---|"]
    for (name, options), roles in sorted(serves.items(), key=lambda item: item[0][0]):
        for key in _class_keys(options, None, (), False, {}):
            default = ("required" if key.default is attrs.NOTHING
                       else "none" if key.default is None else f"`{_yaml_value(key.default)}`")
            rows.append(f"| `{name}` | {', '.join(roles)} | `{'.'.join(key.path)}` | {default} "
                        f"| {_cell(key.doc, site)} |")
    return "\n".join(rows) + "\n"


PAGE_INTRO = """\
# Config reference

Nember reads one YAML file: the one `--config FILE` names (every command takes it), else the
file `$NEMBER_CONFIG` names, else `config/nember.yaml` or `nember.yaml` in the current folder,
else the per-user `~/.config/nember/nember.yaml`. `config/nember.yaml` is the embedded default
(SQLite files and models on the local disk), shown in full at the end of this page. Every key
is optional. Relative paths resolve against the config file's folder. Unknown keys, wrong
types and plugins that are not installed stop start-up with one line naming the file and the
key.

Each storage role (`key_store`, `billing`, `model_store`, `connection_registry`, `jobs`) has a
section whose `plugin` key picks the plugin that serves it; the section's other keys are that
plugin's own. Generated from the keys' declarations (`nember_core/config.py`, the plugins'
options classes) by `python -m nember_core.app.config_docs --write`: edit those, not this page.
"""


def render_roles_table(providers: dict[str, dict[str, Any]]) -> str:
    """The installed plugins of each role, its default first."""
    rows = ["| role | plugins |", "|---|---|"]
    for role in ROLES:
        by_default = sorted(providers.get(role, {}).values(), key=lambda p: (not p.default, p.name))
        names = [f"`{p.name}`" + (" (default)" if p.default else "") for p in by_default]
        rows.append(f"| `{role}` | {', '.join(names) or 'none installed'} |")
    return "\n".join(rows) + "\n"


def render_page(providers: dict[str, dict[str, Any]]) -> str:
    """docs/config.md: the intro, the README's tables, and config/nember.yaml in full."""
    return "\n".join([
        PAGE_INTRO,
        "## Every key\n",
        "A role's `plugin` row says what the role keeps; the keys below it are those of its "
        "default plugin.\n",
        render_table(providers, site=True),
        "## The plugins of each role\n",
        "The plugins installed where this page was generated; a third-party package may add "
        "more (see the [plugin author's guide](plugins.md)).\n",
        render_roles_table(providers),
        "## The other plugins' keys\n",
        "The keys of the plugins that are no role's default, beside `plugin:` in the role's "
        "section. A plugin that serves several roles takes the same keys in each; one not "
        "listed here takes none.\n",
        render_plugin_table(providers, site=True),
        "## config/nember.yaml\n",
        "The embedded default: every key with its default, its meaning as a comment; a "
        "commented-out key is unset.\n",
        f"```yaml\n{render_yaml(providers)}```",
    ]) + "\n"


def replace_table(readme: str, table: str, start_marker: str = TABLE_START,
                  end_marker: str = TABLE_END) -> str:
    """The README with ``table`` between the markers, the rest untouched."""
    start, end = readme.find(start_marker), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README.md: no {start_marker} ... {end_marker} markers")
    return f"{readme[:start + len(start_marker)]}\n{table}{readme[end:]}"


def write(root: Path, providers: dict[str, dict[str, Any]]) -> None:
    """Rewrite ``root``'s config/nember.yaml, README tables and docs/config.md (none of them,
    if a README marker is gone)."""
    readme = replace_table((root / README).read_text(encoding="utf-8"), render_table(providers))
    readme = replace_table(readme, render_plugin_table(providers), PLUGINS_START, PLUGINS_END)
    (root / YAML_FILE).write_text(render_yaml(providers), encoding="utf-8")
    (root / README).write_text(readme, encoding="utf-8")
    (root / DOCS_PAGE).parent.mkdir(exist_ok=True)
    (root / DOCS_PAGE).write_text(render_page(providers), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nember_core.app.config_docs",
        description="Render config/nember.yaml, the README's config tables and docs/config.md.",
    )
    parser.add_argument("--write", action="store_true",
                        help="rewrite config/nember.yaml, the tables in README.md and "
                             "docs/config.md")
    args = parser.parse_args(argv)
    providers = collect_providers(plugin_manager())
    if args.write:
        write(ROOT, providers)
        print(f"wrote {ROOT / YAML_FILE}, the config tables of {ROOT / README} and "
              f"{ROOT / DOCS_PAGE}")
    else:
        print(render_yaml(providers))
        print(render_table(providers))
        print(render_plugin_table(providers))
        print(render_page(providers), end="")


if __name__ == "__main__":
    main()
