"""Reading a configuration file: YAML that remembers the line of every mapping, so that each problem can say where
it is, and the small checks every section shares."""

from collections.abc import Hashable
from typing import Any

import yaml

from connections.errors import ConfigError

LINE = "__line__"  # the key under which each mapping keeps its line


class _LineLoader(yaml.SafeLoader):
    """Remembers the line of every mapping, so a problem can say where it is."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # YAML's keys may be any hashable value (1: x, null: y), not only text.
        mapping = super().construct_mapping(node, deep=deep)
        mapping[LINE] = node.start_mark.line + 1
        return mapping


def config_parse(text: str) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"The file is not valid YAML: {exc}"]) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(["The file must be a mapping with users, roles and connections."])
    unknown = sorted(set(document) - {"users", "roles", "connections", LINE})
    if unknown:
        raise ConfigError([f"Unknown top-level key(s): {', '.join(unknown)} (expected users, roles, connections)."])
    return document


def where(section: str, index: int, item: dict[str, Any], label: str) -> str:
    """'line 12, connections[1] (Okta service)': where an entry is, as its problems say it."""
    return f"line {item.get(LINE, '?')}, {section}[{index}] ({label or 'unnamed'})"


def entries(document: dict[str, Any], section: str, problems: list[str]) -> list[dict[str, Any]]:
    items = document.get(section) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        problems.append(f"{section}: must be a list of mappings.")
        return []
    return items


def unknown_keys(item: dict[str, Any], allowed: set[str], place: str, problems: list[str]) -> None:
    unknown = sorted(set(item) - allowed - {LINE})
    if unknown:
        problems.append(f"{place}: unknown key(s) {', '.join(unknown)}.")


def plain(mapping: Any) -> Any:
    """A nested mapping without the line marker the loader added."""
    return {key: value for key, value in mapping.items() if key != LINE} if isinstance(mapping, dict) else mapping
