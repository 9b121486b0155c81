"""config/nember.yaml and the README's config table, rendered from the declarations.

Every key's default and doc is declared once, where the key is: ``setting(...)`` in
``nember_core.config``, ``attrs.field(metadata={"doc": ...})`` in a plugin's options class.
A role's section shows its default plugin's keys.

``python -m nember_core.app.config_docs --write`` rewrites both; without ``--write`` it prints
them. ``tests/units/test_config_docs.py`` fails when either is out of date.
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

from nember_core.config import TOP_LEVEL, Config, PluginSection
from nember_core.plugins import collect_providers, plugin_manager

ROOT = Path(__file__).resolve().parents[2]
YAML_FILE = Path("config") / "nember.yaml"
README = Path("README.md")
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
FILE_VALUES = {("data_dir",): "../var"}
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
    if isinstance(field.default, attrs.Factory):
        return field.default.factory()
    return field.default


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


def render_table(providers: dict[str, dict[str, Any]]) -> str:
    """The README's config reference: a row per key that takes a value."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in config_keys(providers):
        if key.section:
            continue
        unset = key.unset or key.default is None or key.default is attrs.NOTHING
        default = "none" if unset else f"`{_yaml_value(key.default)}`"
        meaning = (key.context or key.doc).replace("|", r"\|")  # a pipe would end the cell
        rows.append(f"| `{'.'.join(key.path)}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def render_plugin_table(providers: dict[str, dict[str, Any]]) -> str:
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
                        f"| {key.doc.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def replace_table(readme: str, table: str, start_marker: str = TABLE_START,
                  end_marker: str = TABLE_END) -> str:
    """The README with ``table`` between the markers, the rest untouched."""
    start, end = readme.find(start_marker), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README.md: no {start_marker} ... {end_marker} markers")
    return f"{readme[:start + len(start_marker)]}\n{table}{readme[end:]}"


def write(root: Path, providers: dict[str, dict[str, Any]]) -> None:
    """Rewrite ``root``'s config/nember.yaml and README tables (none, if a marker is gone)."""
    readme = replace_table((root / README).read_text(encoding="utf-8"), render_table(providers))
    readme = replace_table(readme, render_plugin_table(providers), PLUGINS_START, PLUGINS_END)
    (root / YAML_FILE).write_text(render_yaml(providers), encoding="utf-8")
    (root / README).write_text(readme, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nember_core.app.config_docs",
        description="Render config/nember.yaml and the README's config table.",
    )
    parser.add_argument("--write", action="store_true",
                        help="rewrite config/nember.yaml and the table in README.md")
    args = parser.parse_args(argv)
    providers = collect_providers(plugin_manager())
    if args.write:
        write(ROOT, providers)
        print(f"wrote {ROOT / YAML_FILE} and the config table of {ROOT / README}")
    else:
        print(render_yaml(providers))
        print(render_table(providers))
        print(render_plugin_table(providers), end="")


if __name__ == "__main__":
    main()
