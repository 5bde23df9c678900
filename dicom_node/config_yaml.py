"""The parts of configuration checking shared by the loader (``config.py``) and the match compiler (``routing.py``).

* ``ConfigIssue`` / ``ConfigError``: every problem as ``file:line: key: message``, all of a file raised together;
* ``LocatedMap`` / ``LocatedList`` and ``parse_yaml``: YAML read with a ``SafeLoader`` subclass that records the
  1-based line of each mapping, key, list item and value, and reports duplicate keys;
* ``type_name``, ``check_ae_title`` and ``suggestion`` (the "did you mean" hint).

It imports neither ``config`` nor ``routing``: ``config`` builds routes with ``routing.compile_match``, and both use
this module, so the dependency runs one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from nodecore.hints import suggestion

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "LocatedList",
    "LocatedMap",
    "check_ae_title",
    "duplicate_keys",
    "parse_yaml",
    "plain",
    "suggestion",
    "type_name",
]

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM default repertoire without backslash and controls


# --------------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file. ``line`` is 1-based (0: the whole file, e.g. it cannot be read)."""

    file: str
    line: int
    key: str  # key path, e.g. "routes[1].match.all[0].regex" ("" when not about one key)
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """An invalid configuration. ``errors`` holds every issue found, sorted by line; ``str()`` lists them."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = sorted(errors, key=lambda i: (i.file, i.line))
        super().__init__("\n".join(str(e) for e in self.errors) or "invalid configuration")


# ------------------------------------------------------------------------------------------ located YAML


class LocatedMap(dict[Any, Any]):
    """A YAML mapping that remembers the 1-based lines of itself, of each key and of each value."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int, int]] = []  # (key, line, line of the first occurrence)

    def key_line(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)

    def value_line(self, key: Any) -> int:
        return self.value_lines.get(key, self.line)


class LocatedList(list[Any]):
    """A YAML sequence that remembers the 1-based lines of itself and of each item."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def item_line(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that builds ``LocatedMap``/``LocatedList`` (which record duplicate keys)."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> LocatedMap:
    explicit = {id(k) for k, _ in node.value}  # keys written in this mapping (not merged in with <<)
    loader.flatten_mapping(node)  # YAML merge keys (<<): merged pairs first, so explicit keys override them
    result = LocatedMap(node.start_mark.line + 1)
    from_merge: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            key = str(key)
        line = key_node.start_mark.line + 1
        if id(key_node) not in explicit:
            from_merge.add(key)
        elif key in result and key not in from_merge:
            result.duplicates.append((key, line, result.key_lines[key]))
        else:
            from_merge.discard(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
        result.value_lines[key] = value_node.start_mark.line + 1
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_lines.append(item.start_mark.line + 1)
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def plain(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Located containers -> plain dict/list (picklable, no line bookkeeping); YAML aliases stay shared."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        memo[id(value)] = out
        out.update({k: plain(v, memo) for k, v in value.items()})
        return out
    if isinstance(value, list):
        out_list: list[Any] = []
        memo[id(value)] = out_list
        out_list.extend(plain(v, memo) for v in value)
        return out_list
    return value


# ------------------------------------------------------------------------------------------ checks


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def check_ae_title(value: Any) -> str:
    """A valid AE title (1-16 characters of the DICOM default repertoire, no backslash or controls), stripped."""
    if not isinstance(value, str):
        raise ValueError(f"expected an AE title string, got {type_name(value)}")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("AE title must not be empty or all spaces")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is {len(value)} characters long (at most 16)")
    if not _AE_CHARS.match(value):
        raise ValueError(f"AE title {value!r} contains a backslash or a control character")
    return stripped


# ------------------------------------------------------------------------------------------ parsing


def parse_yaml(text: str, file: str) -> Any:
    """``text`` as located YAML (``LocatedMap`` / ``LocatedList``). Raises ConfigError for a syntax error; duplicate
    keys are found by ``duplicate_keys`` (reported together with the other issues of the file)."""
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            started = f" started at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            detail += f" ({exc.context}{started})"
        raise ConfigError([ConfigIssue(file, mark.line + 1 if mark else 0, "", f"YAML syntax error: {detail}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 0, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return data


def duplicate_keys(data: Any, file: str) -> list[ConfigIssue]:
    """Duplicate mapping keys anywhere in the document (YAML would silently keep the last one)."""
    issues: list[ConfigIssue] = []
    _report_duplicates(file, issues, data, "")
    return issues


def _report_duplicates(file: str, issues: list[ConfigIssue], value: Any, path: str, seen: set[int] | None = None) -> None:
    """Each container is visited once, so YAML aliases cannot blow the walk up ("billion laughs")."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    if isinstance(value, LocatedMap):
        seen.add(id(value))
        for key, line, first in value.duplicates:
            where = f"{path}.{key}" if path else str(key)
            issues.append(ConfigIssue(file, line, where, f"duplicate key {key!r} (first at line {first})"))
        for key, item in value.items():
            _report_duplicates(file, issues, item, f"{path}.{key}" if path else str(key), seen)
    elif isinstance(value, list):
        seen.add(id(value))
        for i, item in enumerate(value):
            _report_duplicates(file, issues, item, f"{path}[{i}]", seen)
