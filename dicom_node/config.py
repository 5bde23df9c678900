"""Load and validate the node's YAML configuration into a frozen ``NodeConfig`` (see ``config_schema``).

Every problem is reported with ``file:line`` and the offending key path, e.g.
``example.yaml:23: routes[1].match.all[0].regex: invalid regular expression ...``; ALL problems of a file are
collected and raised together as one ``ConfigError``. Line numbers come from a PyYAML ``SafeLoader`` subclass that
records where each mapping, key, list item and value starts.

Units: durations are seconds (``timeouts``, ``retry``) or milliseconds (``max_wait_ms``); a plain number is in the
field's unit, a string may name its unit (``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``). Disk space is MB.
``ConfigHolder`` keeps the current configuration for the service and swaps it atomically on reload (SIGHUP).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from pydicom._uid_dict import UID_dictionary

from dicom_node.config_schema import (
    OUTPUT_KINDS,
    Caller,
    DefaultAction,
    Destination,
    DetectorSpec,
    MeasurementSettings,
    ModelSpec,
    NodeConfig,
    NodeSettings,
    PipelineSpec,
    RetentionPolicy,
    RetryPolicy,
    Route,
    ScannerCalibration,
    SourceLocation,
    Timeouts,
)

__all__ = [
    "ConfigError",
    "ConfigHolder",
    "ConfigIssue",
    "LocatedList",
    "LocatedMap",
    "SOP_CLASS_ALIASES",
    "TRANSFER_SYNTAX_ALIASES",
    "DEFAULT_SOP_CLASSES",
    "load_config",
    "parse_config_text",
    "resolve_uid",
    "suggestion",
    "summarize",
]


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


def suggestion(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or ``""``."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close and word.lower() in lowered:  # differs only in case
        close = [lowered[word.lower()]]
    if not close and len(word) >= 3:  # an abbreviation: "slope" for "slope_mm_per_unit"
        close = sorted((o for o in options if o.lower().startswith(word.lower())), key=len)[:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------ located YAML


class LocatedMap(dict):
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


class LocatedList(list):
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


def _plain(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Located containers -> plain dict/list (picklable, no line bookkeeping); YAML aliases stay shared."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, dict):
        memo[id(value)] = out = {}
        out.update({k: _plain(v, memo) for k, v in value.items()})
        return out
    if isinstance(value, list):
        memo[id(value)] = out_list = []
        out_list.extend(_plain(v, memo) for v in value)
        return out_list
    return value


# ------------------------------------------------------------------------------------------ UID aliases

SOP_CLASS_ALIASES: dict[str, str] = {
    "ct": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "cr": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "dx": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "dx_processing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "mg": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    "mg_processing": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "io": "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage - For Presentation
    "io_processing": "1.2.840.10008.5.1.4.1.1.1.3.1",
    "sc": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}

DEFAULT_SOP_CLASSES: tuple[str, ...] = tuple(
    SOP_CLASS_ALIASES[a]
    for a in ("ct", "cr", "dx", "dx_processing", "mg", "mg_processing", "io", "io_processing", "sc")
)

TRANSFER_SYNTAX_ALIASES: dict[str, str] = {  # the same short names as dicom_node.sopclasses, plus a few
    "implicit_le": "1.2.840.10008.1.2",
    "explicit_le": "1.2.840.10008.1.2.1",
    "deflated_le": "1.2.840.10008.1.2.1.99",
    "explicit_be": "1.2.840.10008.1.2.2",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_extended": "1.2.840.10008.1.2.4.51",
    "jpeg_lossless": "1.2.840.10008.1.2.4.57",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpegls_lossless": "1.2.840.10008.1.2.4.80",
    "jpegls_near_lossless": "1.2.840.10008.1.2.4.81",
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
    "jpeg2000": "1.2.840.10008.1.2.4.91",
    "htj2k_lossless": "1.2.840.10008.1.2.4.201",
    "htj2k": "1.2.840.10008.1.2.4.203",
    "rle": "1.2.840.10008.1.2.5",
}

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_KEYWORD_TO_UID: dict[str, tuple[str, str]] = {v[4]: (uid, v[1]) for uid, v in UID_dictionary.items() if v[4]}


def resolve_uid(text: str, kind: str) -> str:
    """A UID from an alias, a pydicom keyword or a UID; ``kind`` is "SOP Class" or "Transfer Syntax".

    Raises ValueError with a precise message (and a suggestion) when ``text`` is none of these.
    """
    aliases = SOP_CLASS_ALIASES if kind == "SOP Class" else TRANSFER_SYNTAX_ALIASES
    if text.lower() in aliases:
        return aliases[text.lower()]
    if text in _KEYWORD_TO_UID:
        uid, uid_type = _KEYWORD_TO_UID[text]
        if uid_type != kind:
            raise ValueError(f"{text!r} is a {uid_type}, not a {kind}")
        return uid
    if _UID_RE.match(text):
        if len(text) > 64:
            raise ValueError(f"UID {text!r} is longer than 64 characters")
        known = UID_dictionary.get(text)
        if known and known[1] != kind:
            raise ValueError(f"{text} is a {known[1]} ({known[0]}), not a {kind}")
        return text  # unknown but well-formed: e.g. a private SOP class
    keywords = [k for k, (_, t) in _KEYWORD_TO_UID.items() if t == kind]
    lowered = {k.lower(): k for k in keywords}
    if text.lower() in lowered:
        return _KEYWORD_TO_UID[lowered[text.lower()]][0]
    hint = suggestion(text, [*aliases, *keywords])
    raise ValueError(
        f"unknown {kind} {text!r}{hint}: use an alias ({', '.join(aliases)}), a keyword or a UID"
    )


# ------------------------------------------------------------------------------------------ validation

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM default repertoire without backslash and controls
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
# Keep in step with inference.backends.BACKENDS (tests/test_config.py checks it).
_BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "torch", "torch-cpu", "torch-cuda")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_BAD = object()  # marker: the value was invalid (already reported)
MAX_ASSOCIATIONS = 16  # cap of destinations.NAME.max_associations (a slow PACS must not be flooded)


def _type_name(value: Any) -> str:
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
        raise ValueError(f"expected an AE title string, got {_type_name(value)}")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("AE title must not be empty or all spaces")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is {len(value)} characters long (at most 16)")
    if not _AE_CHARS.match(value):
        raise ValueError(f"AE title {value!r} contains a backslash or a control character")
    return stripped


class _Validator:
    """Collects issues while one file is turned into typed objects."""

    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def err(self, line: int, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, line, key, message))

    def loc(self, line: int) -> SourceLocation:
        return SourceLocation(self.file, line)

    # ---- mapping sections

    def section(self, parent: LocatedMap, key: str, path: str, allowed: Iterable[str]) -> LocatedMap | None:
        """The mapping under ``key`` (None when absent or invalid), with unknown keys reported."""
        if key not in parent or parent[key] is None:
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.err(parent.value_line(key), path, f"expected a mapping, got {_type_name(value)}")
            return None
        self.known_keys(value, path, allowed)
        return value

    def known_keys(
        self, m: LocatedMap, path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> None:
        allowed = list(allowed)
        for key in m:
            if not isinstance(key, str):
                self.err(m.key_line(key), path, f"keys must be strings, got {_type_name(key)} {key!r}")
            elif key not in allowed:
                where = f"{path}.{key}" if path else key
                self.err(m.key_line(key), where, f"unknown key {key!r}{suggestion(key, allowed)}")
        for key in required:
            if key not in m:
                self.err(m.line, path, f"missing required key {key!r}")

    # ---- scalar accessors: return the value, the default when absent, or _BAD after reporting

    def value(self, m: LocatedMap, key: str, path: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        if key not in m:
            return default
        try:
            return convert(m[key])
        except ValueError as exc:
            self.err(m.value_line(key), f"{path}.{key}" if path else key, str(exc))
            return _BAD


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)} {value!r} (quote it)")
    if not value.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{value!r} contains a control character")
    return value


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _to_int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)} {value!r}")
        if value < lo or (hi is not None and value > hi):
            raise ValueError(
                f"{value} is out of range ({lo}-{hi})" if hi is not None else f"{value} is below {lo}"
            )
        return value

    return convert


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_type_name(value)} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return float(value)


def _to_float(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        number = _number(value)
        if lo is not None and (number < lo or (lo_open and number == lo)):
            raise ValueError(f"{value} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and number > hi:
            raise ValueError(f"{value} must be <= {hi:g}")
        return number

    return convert


def _to_duration(unit: str, *, allow_zero: bool = False) -> Callable[[Any], float]:
    """Plain number: in ``unit``; string: number + ms|s|m|min|h. Returns the value in ``unit``."""

    def convert(value: Any) -> float:
        if isinstance(value, str):
            match = _DURATION_RE.match(value)
            if not match:
                raise ValueError(f"invalid duration {value!r} (examples: 30, '500ms', '30s', '5m', '1h')")
            amount = float(match.group(1)) * _DURATION_UNITS[match.group(2) or unit] / _DURATION_UNITS[unit]
        else:
            try:
                amount = _number(value)
            except ValueError:
                raise ValueError(
                    f"expected a duration (a number of {'seconds' if unit == 's' else 'milliseconds'}, "
                    f"or a string like '30s'), got {_type_name(value)} {value!r}"
                ) from None
        if amount < 0 or (amount == 0 and not allow_zero):
            raise ValueError(f"duration {value!r} must be {'>= 0' if allow_zero else '> 0'}")
        return amount

    return convert


def _to_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a TCP port number, got {_type_name(value)} {value!r}")
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (1-65535)")
    return value


def _to_choice(choices: Iterable[str], *, upper: bool = False) -> Callable[[Any], str]:
    options = tuple(choices)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected one of {', '.join(options)}, got {_type_name(value)} {value!r}")
        text = value.upper() if upper else value
        if text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}{suggestion(text, options)}")
        return text

    return convert


def _to_host(value: Any) -> str:
    text = _to_str(value).strip()
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not re.match(
        r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$",
        text,
    ):
        raise ValueError(f"{text!r} is neither an IP address nor a host name")
    return text


def _resolve_host(name: str) -> str:
    """An IP address for ``name`` (IPv4 preferred); ValueError when it does not resolve."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValueError(f"host name {name!r} does not resolve ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    v4 = [a for a in addresses if ":" not in a]
    return (v4 or addresses)[0]


# ------------------------------------------------------------------------------------------ sections

_NODE_KEYS = [f.name for f in fields(NodeSettings)]
_TIMEOUT_KEYS = [f.name for f in fields(Timeouts)]
_RETRY_KEYS = [f.name for f in fields(RetryPolicy)]
_RETENTION_KEYS = [f.name for f in fields(RetentionPolicy)]
_DEST_KEYS = ["ae_title", "host", "port", "calling_ae", "retry", "max_pdu", "max_associations"]
_MODEL_KEYS = ["card", "backend", "max_batch", "max_wait_ms", "options"]
_ROUTE_KEYS = ["name", "match", "pipeline", "outputs", "destinations", "forward_original", "sc_compression",
               "sc_max_size"]
_SC_COMPRESSIONS = ("jpeg", "jpeg-ls", "jpeg2000", "none")  # sr_writer.sc.SC_COMPRESSIONS
_PIPELINE_KEYS = ["name", "detectors", "options"]
_DETECTOR_KEYS = [f.name for f in fields(DetectorSpec)]
_TOP_KEYS = ["node", "destinations", "models", "routes", "default", "measurement"]


def _str_list(v: _Validator, parent: LocatedMap, key: str, path: str) -> list[tuple[str, int, str]] | None:
    """[(value, line, item path)] of a list of strings (a single string is accepted as a one-item list)."""
    if key not in parent or parent[key] is None:
        return None
    raw = parent[key]
    where = f"{path}.{key}" if path else key
    if isinstance(raw, str):
        return [(raw, parent.value_line(key), where)]
    if not isinstance(raw, list):
        v.err(parent.value_line(key), where, f"expected a list, got {_type_name(raw)}")
        return None
    out = []
    for i, item in enumerate(raw):
        line = raw.item_line(i) if isinstance(raw, LocatedList) else parent.value_line(key)
        if not isinstance(item, str) or not item.strip():
            v.err(line, f"{where}[{i}]", f"expected a non-empty string, got {_type_name(item)} {item!r}")
            continue
        out.append((item, line, f"{where}[{i}]"))
    return out


def _uid_list(v: _Validator, parent: LocatedMap, key: str, path: str, kind: str) -> tuple[str, ...] | None:
    items = _str_list(v, parent, key, path)
    if items is None:
        return None
    uids: list[str] = []
    for text, line, where in items:
        try:
            uid = resolve_uid(text.strip(), kind)
        except ValueError as exc:
            v.err(line, where, str(exc))
            continue
        if uid not in uids:
            uids.append(uid)
    return tuple(uids)


def _build_timeouts(v: _Validator, node: LocatedMap) -> Timeouts:
    section = v.section(node, "timeouts", "node.timeouts", _TIMEOUT_KEYS)
    if section is None:
        return Timeouts()
    values = {}
    for key in _TIMEOUT_KEYS:
        got = v.value(section, key, "node.timeouts", _BAD, _to_duration("s"))
        if got is not _BAD:
            values[key] = got
    return Timeouts(**values)


def _build_retention(v: _Validator, node: LocatedMap) -> RetentionPolicy:
    """``node.retention``: days as plain numbers (0 = keep forever), ``interval_s`` as a duration (> 0)."""
    section = v.section(node, "retention", "node.retention", _RETENTION_KEYS)
    if section is None:
        return RetentionPolicy()
    d = RetentionPolicy()
    values = {
        key: v.value(section, key, "node.retention", getattr(d, key), _to_float(0.0))
        for key in ("keep_objects_days", "keep_results_days", "keep_failed_days")
    }
    values["interval_s"] = v.value(section, "interval_s", "node.retention", d.interval_s, _to_duration("s"))
    return RetentionPolicy(**{k: (getattr(d, k) if val is _BAD else val) for k, val in values.items()})


def _build_callers(v: _Validator, node: LocatedMap) -> tuple[Caller, ...]:
    if "allowed_callers" not in node or node["allowed_callers"] is None:
        return ()
    raw = node["allowed_callers"]
    if not isinstance(raw, list):
        v.err(
            node.value_line("allowed_callers"),
            "node.allowed_callers",
            f"expected a list, got {_type_name(raw)}",
        )
        return ()
    callers = []
    for i, item in enumerate(raw):
        line, path = raw.item_line(i), f"node.allowed_callers[{i}]"
        if isinstance(item, dict):
            v.known_keys(item, path, ["ae_title", "host"], required=["ae_title"])
            ae = v.value(item, "ae_title", path, _BAD, check_ae_title)
            host = v.value(item, "host", path, None, lambda x: _resolve_host(_to_host(x)))
            if ae is not _BAD and host is not _BAD:
                callers.append(Caller(ae, host))
        else:
            try:
                callers.append(Caller(check_ae_title(item)))
            except ValueError as exc:
                v.err(line, path, f"{exc} (an entry is an AE title or a mapping with ae_title and host)")
    return tuple(callers)


def _build_node(v: _Validator, top: LocatedMap, storage_override: Path | None) -> NodeSettings:
    node = v.section(top, "node", "node", _NODE_KEYS)
    if node is None:
        node = LocatedMap(top.key_line("node") if "node" in top else 1)
    d = NodeSettings()
    values: dict[str, Any] = {
        "ae_title": v.value(node, "ae_title", "node", d.ae_title, check_ae_title),
        "bind": v.value(node, "bind", "node", d.bind, _to_host),
        "port": v.value(node, "port", "node", d.port, _to_port),
        "storage": v.value(node, "storage", "node", d.storage, lambda x: _path(v, x)),
        "max_associations": v.value(node, "max_associations", "node", d.max_associations, _to_int(1, 1000)),
        "timeouts": _build_timeouts(v, node),
        "require_called_ae": v.value(node, "require_called_ae", "node", d.require_called_ae, _to_bool),
        "allowed_callers": _build_callers(v, node),
        "sop_classes": _uid_list(v, node, "sop_classes", "node", "SOP Class"),
        "transfer_syntaxes": _uid_list(v, node, "transfer_syntaxes", "node", "Transfer Syntax"),
        "min_free_disk_mb": v.value(node, "min_free_disk_mb", "node", d.min_free_disk_mb, _to_float(0.0)),
        "duplicate_policy": v.value(
            node, "duplicate_policy", "node", d.duplicate_policy, _to_choice(("replace", "keep", "reject"))
        ),
        "workers": v.value(node, "workers", "node", d.workers, _to_int(1, 256)),
        "log_level": v.value(node, "log_level", "node", d.log_level, _to_choice(_LOG_LEVELS, upper=True)),
        "debug_phi": v.value(node, "debug_phi", "node", d.debug_phi, _to_bool),
        "metrics_port": v.value(
            node, "metrics_port", "node", None, lambda x: None if x is None else _to_port(x)
        ),
        "metrics_bind": v.value(node, "metrics_bind", "node", d.metrics_bind, _to_host),
        "retention": _build_retention(v, node),
        "max_worker_deaths_per_job": v.value(
            node, "max_worker_deaths_per_job", "node", d.max_worker_deaths_per_job, _to_int(1, 100)
        ),
    }
    if values["sop_classes"] is None:
        values["sop_classes"] = DEFAULT_SOP_CLASSES
    elif node.get("sop_classes") == []:
        v.err(
            node.value_line("sop_classes"),
            "node.sop_classes",
            "must list at least one SOP class (omit it for the default)",
        )
    if values["transfer_syntaxes"] is None:
        values["transfer_syntaxes"] = ()
    if (
        values["metrics_port"] not in (None, _BAD)
        and values["port"] is not _BAD
        and values["metrics_port"] == values["port"]
    ):
        v.err(
            node.value_line("metrics_port"),
            "node.metrics_port",
            f"must differ from node.port ({values['port']})",
        )
    if storage_override is not None:
        values["storage"] = Path(storage_override)
    return NodeSettings(**{k: (getattr(d, k) if val is _BAD else val) for k, val in values.items()})


def _path(v: _Validator, value: Any) -> Path:
    """A filesystem path; relative paths are relative to the configuration file's directory."""
    path = Path(_to_str(value)).expanduser()
    return path if path.is_absolute() else (v.base_dir / path)


def _named_mapping(v: _Validator, top: LocatedMap, key: str) -> list[tuple[str, LocatedMap, str]]:
    """[(name, body, path)] of a mapping of name -> mapping (destinations, models)."""
    if key not in top or top[key] is None:
        return []
    raw = top[key]
    if not isinstance(raw, dict):
        v.err(top.value_line(key), key, f"expected a mapping of name -> settings, got {_type_name(raw)}")
        return []
    out = []
    for name, body in raw.items():
        path = f"{key}.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            v.err(raw.key_line(name), path, f"invalid name {name!r} (letters, digits, '_', '.', '-')")
            continue
        if not isinstance(body, dict):
            v.err(raw.value_line(name), path, f"expected a mapping, got {_type_name(body)}")
            continue
        out.append((name, body, path))
    return out


def _build_destinations(v: _Validator, top: LocatedMap, node: NodeSettings) -> dict[str, Destination]:
    out: dict[str, Destination] = {}
    for name, body, path in _named_mapping(v, top, "destinations"):
        v.known_keys(body, path, _DEST_KEYS, required=["ae_title", "host", "port"])
        ae = v.value(body, "ae_title", path, _BAD, check_ae_title)
        host = v.value(body, "host", path, _BAD, _to_host)
        port = v.value(body, "port", path, _BAD, _to_port)
        calling = v.value(body, "calling_ae", path, node.ae_title, check_ae_title)
        max_pdu = v.value(body, "max_pdu", path, 0, _to_max_pdu)
        retry = _build_retry(v, body, path)
        assocs = v.value(body, "max_associations", path, Destination.max_associations, _to_int(1, MAX_ASSOCIATIONS))
        if _BAD in (ae, host, port, calling, max_pdu, assocs) or retry is None:
            continue
        out[name] = Destination(name, ae, host, port, calling, retry, max_pdu, v.loc(body.line), assocs)
    return out


def _to_max_pdu(value: Any) -> int:
    number = _to_int(0, 2**32 - 1)(value)
    if 0 < number < 1024:
        raise ValueError(f"max_pdu {number} is too small (0 = unlimited, or at least 1024 bytes)")
    return number


def _build_retry(v: _Validator, body: LocatedMap, path: str) -> RetryPolicy | None:
    section = v.section(body, "retry", f"{path}.retry", _RETRY_KEYS)
    if section is None:
        return None if "retry" in body and body["retry"] is not None else RetryPolicy()
    d, rp = RetryPolicy(), f"{path}.retry"
    initial = v.value(section, "initial_delay_s", rp, d.initial_delay_s, _to_duration("s"))
    maximum = v.value(section, "max_delay_s", rp, d.max_delay_s, _to_duration("s"))
    multiplier = v.value(section, "multiplier", rp, d.multiplier, _to_float(1.0))
    attempts = v.value(section, "max_attempts", rp, d.max_attempts, _to_int(1))
    if _BAD in (initial, maximum, multiplier, attempts):
        return None
    if maximum < initial:
        v.err(
            section.value_line("max_delay_s"),
            f"{rp}.max_delay_s",
            f"{maximum:g} s is below initial_delay_s ({initial:g} s)",
        )
        return None
    return RetryPolicy(initial, maximum, multiplier, attempts)


def _to_card(v: _Validator) -> Callable[[Any], str]:
    """``builtin:NAME`` (checked when the model is loaded: a builtin may be installed later), or the absolute path
    of a card file or of a directory holding ``card.yaml`` (must exist now)."""

    def convert(value: Any) -> str:
        text = _to_str(value).strip()
        if text.startswith("builtin:"):
            name = text[len("builtin:") :]
            if not _NAME_RE.match(name) or name.startswith("."):
                raise ValueError(f"invalid builtin model name in {text!r}")
            return text
        path = _path(v, text)
        if path.is_dir() and not (path / "card.yaml").is_file():
            raise ValueError(f"directory {str(path)!r} holds no card.yaml")
        if not path.exists():
            raise ValueError(
                f"model card {str(path)!r} not found (a YAML card, a directory with card.yaml, or builtin:NAME)"
            )
        return str(path)

    return convert


def _options(v: _Validator, body: LocatedMap, path: str) -> dict[str, Any]:
    if "options" not in body or body["options"] is None:
        return {}
    raw = body["options"]
    if not isinstance(raw, dict):
        v.err(body.value_line("options"), f"{path}.options", f"expected a mapping, got {_type_name(raw)}")
        return {}
    return _plain(raw)


def _build_models(v: _Validator, top: LocatedMap) -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for name, body, path in _named_mapping(v, top, "models"):
        v.known_keys(body, path, _MODEL_KEYS, required=["card"])
        d = ModelSpec(name, "")
        card = v.value(body, "card", path, _BAD, _to_card(v))
        backend = v.value(body, "backend", path, d.backend, _to_choice(_BACKENDS))
        max_batch = v.value(body, "max_batch", path, d.max_batch, _to_int(1, 1024))
        max_wait = v.value(body, "max_wait_ms", path, d.max_wait_ms, _to_duration("ms", allow_zero=True))
        options = _options(v, body, path)
        if _BAD in (card, backend, max_batch, max_wait):
            continue
        out[name] = ModelSpec(name, card, backend, max_batch, max_wait, options, v.loc(body.line))
    # a model that is declared but invalid is still a known name (avoid cascades of "unknown model" errors)
    return out


def _declared(top: LocatedMap, key: str) -> set[str]:
    raw = top.get(key)
    return {k for k in raw if isinstance(k, str)} if isinstance(raw, dict) else set()


def _check_refs(
    v: _Validator, names: list[tuple[str, int, str]], known: set[str], declared: set[str], what: str
) -> tuple[str, ...]:
    out = []
    for name, line, where in names:
        name = name.strip()
        if name not in declared:
            listed = ", ".join(sorted(declared)) or f"none: add a {what}s section"
            v.err(line, where, f"unknown {what} {name!r}{suggestion(name, declared)} (declared: {listed})")
        elif name in known and name not in out:
            out.append(name)
    return tuple(out)


def _build_detectors(
    v: _Validator, raw: Any, line: int, path: str, models: set[str]
) -> tuple[DetectorSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        v.err(line, path, f"expected a list of detectors, got {_type_name(raw)}")
        return ()
    out = []
    for i, item in enumerate(raw):
        ipath, iline = f"{path}[{i}]", raw.item_line(i)
        if isinstance(item, str):
            item_map = LocatedMap(iline)
            item_map["model"] = item
            item = item_map
        if not isinstance(item, dict):
            v.err(
                iline,
                ipath,
                f"expected a mapping (model, score_threshold, ...) or a model name, got {_type_name(item)}",
            )
            continue
        v.known_keys(item, ipath, _DETECTOR_KEYS, required=["model"])
        ref = _to_model_ref(v, item, "model", ipath, models)
        gate = _to_model_ref(v, item, "gate", ipath, models) if item.get("gate") is not None else None
        threshold = v.value(item, "score_threshold", ipath, None, _to_float(0.0, 1.0))
        nms = v.value(item, "nms_iou", ipath, None, _to_float(0.0, 1.0, lo_open=True))
        gate_threshold = v.value(item, "gate_threshold", ipath, None, _to_float(0.0, 1.0))
        classes = _str_list(v, item, "classes", ipath)
        gate_classes = _str_list(v, item, "gate_classes", ipath)
        if gate is None:
            for key in ("gate_classes", "gate_threshold"):
                if item.get(key) is not None:
                    v.err(
                        item.key_line(key),
                        f"{ipath}.{key}",
                        "only meaningful with 'gate' (a gate model name)",
                    )
        if gate is not None and gate is not _BAD and gate == ref:
            v.err(
                item.value_line("gate"), f"{ipath}.gate", f"gate model {gate!r} is the detector's own model"
            )
        if _BAD in (ref, gate, threshold, nms, gate_threshold):
            continue
        out.append(
            DetectorSpec(
                model=ref,
                score_threshold=threshold,
                nms_iou=nms,
                classes=None if classes is None else tuple(c.strip() for c, _, _ in classes),
                gate=gate,
                gate_classes=None if gate_classes is None else tuple(c.strip() for c, _, _ in gate_classes),
                gate_threshold=gate_threshold,
            )
        )
    return tuple(out)


def _to_model_ref(v: _Validator, item: LocatedMap, key: str, path: str, models: set[str]) -> Any:
    name = v.value(item, key, path, _BAD, _to_str)
    if name is _BAD:
        return _BAD
    name = name.strip()
    if name not in models:
        listed = ", ".join(sorted(models)) or "none: add a models section"
        v.err(
            item.value_line(key),
            f"{path}.{key}",
            f"unknown model {name!r}{suggestion(name, models)} (declared: {listed})",
        )
        return _BAD
    return name


def _build_pipeline(v: _Validator, route: LocatedMap, path: str, models: set[str]) -> Any:
    if "pipeline" not in route:
        v.err(
            route.line, path, "missing required key 'pipeline' (a pipeline mapping, or none for forward-only)"
        )
        return _BAD
    raw, line, ppath = route["pipeline"], route.value_line("pipeline"), f"{path}.pipeline"
    from dicom_node.pipeline import PIPELINES  # the registry of pipeline names

    if raw is None or (isinstance(raw, str) and raw.strip().lower() == "none"):
        return None
    if isinstance(raw, str):
        body = LocatedMap(line)
        body["name"] = raw
        raw = body
    if not isinstance(raw, dict):
        v.err(
            line,
            ppath,
            f"expected a pipeline mapping (name, detectors, options) or none, got {_type_name(raw)}",
        )
        return _BAD
    v.known_keys(raw, ppath, _PIPELINE_KEYS)
    name = v.value(raw, "name", ppath, PipelineSpec().name, _to_str)
    if name is not _BAD and name.strip() not in PIPELINES:
        v.err(
            raw.value_line("name"),
            f"{ppath}.name",
            f"unknown pipeline {name!r}{suggestion(name, PIPELINES)} (known: {', '.join(sorted(PIPELINES))})",
        )
        name = _BAD
    detectors = _build_detectors(
        v, raw.get("detectors"), raw.value_line("detectors"), f"{ppath}.detectors", models
    )
    options = _options(v, raw, ppath)
    if name is _BAD:
        return _BAD
    return PipelineSpec(name.strip(), detectors, options)


def _build_routes(
    v: _Validator, top: LocatedMap, destinations: dict[str, Destination], models: dict[str, ModelSpec]
) -> tuple[Route, ...]:
    from dicom_node.routing import compile_match  # routing imports this module: import here, not at the top

    if "routes" not in top or top["routes"] is None:
        return ()
    raw = top["routes"]
    if not isinstance(raw, list):
        v.err(top.value_line("routes"), "routes", f"expected a list of routes, got {_type_name(raw)}")
        return ()
    declared_dest, declared_models = _declared(top, "destinations"), _declared(top, "models")
    seen: dict[str, int] = {}
    routes = []
    for i, body in enumerate(raw):
        path, line = f"routes[{i}]", raw.item_line(i)
        if not isinstance(body, dict):
            v.err(
                line, path, f"expected a route mapping (name, match, pipeline, ...), got {_type_name(body)}"
            )
            continue
        v.known_keys(body, path, _ROUTE_KEYS, required=["name", "match"])
        name = v.value(body, "name", path, _BAD, _to_str)
        if name is not _BAD:
            name = name.strip()
            if name in seen:
                v.err(
                    body.value_line("name"),
                    f"{path}.name",
                    f"duplicate route name {name!r} (first at line {seen[name]})",
                )
            else:
                seen[name] = body.value_line("name")
        matcher = _BAD
        if "match" in body:
            before = len(v.issues)
            matcher = compile_match(
                body["match"], v.loc(body.value_line("match")), key=f"{path}.match", issues=v.issues
            )
            if len(v.issues) > before:
                matcher = _BAD
        pipeline = _build_pipeline(v, body, path, declared_models)
        outputs = _build_outputs(v, body, path, pipeline)
        dest_names = _str_list(v, body, "destinations", path)
        dest_bad = dest_names is None and body.get("destinations") is not None
        dests = _check_refs(v, dest_names or [], set(destinations), declared_dest, "destination")
        forward = v.value(body, "forward_original", path, False, _to_bool)
        if forward is True and not dest_names and not dest_bad:
            where = (
                body.value_line("destinations")
                if "destinations" in body
                else body.key_line("forward_original")
            )
            v.err(where, f"{path}.destinations", "forward_original needs at least one destination")
        sc_comp = v.value(body, "sc_compression", path, "jpeg", _to_choice(_SC_COMPRESSIONS))
        sc_size = v.value(body, "sc_max_size", path, 0, _to_sc_size)
        if _BAD in (name, matcher, pipeline, outputs, forward, sc_comp, sc_size) or dest_bad:
            continue
        if pipeline is not None and any(
            d.model not in models or (d.gate and d.gate not in models) for d in pipeline.detectors
        ):
            continue  # a referenced model had its own errors (already reported)
        routes.append(Route(name, matcher, pipeline, outputs, dests, forward, v.loc(body.line), sc_comp, sc_size))
    return tuple(routes)


def _to_sc_size(value: Any) -> int:
    number = _to_int(0, 16384)(value)
    if 0 < number < 256:
        raise ValueError(f"{number} is too small (0 = the compression's default, or at least 256 pixels)")
    return number


def _build_outputs(v: _Validator, body: LocatedMap, path: str, pipeline: Any) -> Any:
    items = _str_list(v, body, "outputs", path)
    if items is None:
        if "outputs" in body and body["outputs"] is not None:
            return _BAD
        return frozenset() if pipeline is None else frozenset({"sr"})
    kinds = set()
    bad = False
    for text, line, where in items:
        kind = text.strip().lower()
        if kind not in OUTPUT_KINDS:
            v.err(
                line,
                where,
                f"unknown output {text!r}{suggestion(kind, OUTPUT_KINDS)} (one of {', '.join(OUTPUT_KINDS)})",
            )
            bad = True
        kinds.add(kind)
    if pipeline is None and kinds:
        v.err(body.value_line("outputs"), f"{path}.outputs", "outputs need a pipeline (pipeline is none)")
        bad = True
    return _BAD if bad else frozenset(kinds)


def _build_default(v: _Validator, top: LocatedMap, destinations: dict[str, Destination]) -> DefaultAction:
    if "default" not in top or top["default"] is None:
        return DefaultAction()
    raw = top["default"]
    if isinstance(raw, str):
        body = LocatedMap(top.value_line("default"))
        body["action"] = raw
        raw = body
    if not isinstance(raw, dict):
        v.err(
            top.value_line("default"),
            "default",
            f"expected a mapping (action, destinations), got {_type_name(raw)}",
        )
        return DefaultAction()
    v.known_keys(raw, "default", ["action", "destinations"])
    action = v.value(raw, "action", "default", "drop", _to_choice(("drop", "forward")))
    names = _str_list(v, raw, "destinations", "default") or []
    dests = _check_refs(v, names, set(destinations), _declared(top, "destinations"), "destination")
    if action == "forward" and not names:
        v.err(raw.line, "default.destinations", "action forward needs at least one destination")
    if action == "drop" and names:
        v.err(raw.value_line("destinations"), "default.destinations", "action drop takes no destinations")
    if action is _BAD:
        return DefaultAction()
    return DefaultAction(action, dests if action == "forward" else ())


def _build_measurement(v: _Validator, top: LocatedMap) -> MeasurementSettings:
    from pydicom.datadict import keyword_dict

    section = v.section(top, "measurement", "measurement", ["scanner_calibrations", "options"])
    if section is None:
        return MeasurementSettings()
    calibrations = []
    raw = section.get("scanner_calibrations")
    if raw is not None and not isinstance(raw, list):
        v.err(
            section.value_line("scanner_calibrations"),
            "measurement.scanner_calibrations",
            f"expected a list, got {_type_name(raw)}",
        )
        raw = None
    for i, item in enumerate(raw or []):
        path, line = f"measurement.scanner_calibrations[{i}]", raw.item_line(i)
        if not isinstance(item, dict):
            v.err(
                line, path, f"expected a mapping (match, slope_mm_per_unit, offset), got {_type_name(item)}"
            )
            continue
        v.known_keys(
            item, path, ["match", "slope_mm_per_unit", "offset"], required=["match", "slope_mm_per_unit"]
        )
        match: dict[str, str] = {}
        cond = item.get("match")
        if "match" in item and not (isinstance(cond, dict) and cond):
            v.err(
                item.value_line("match"),
                f"{path}.match",
                "expected a non-empty mapping of attribute keyword -> value",
            )
        elif isinstance(cond, dict):
            for key, value in cond.items():
                kpath = f"{path}.match.{key}"
                if not isinstance(key, str) or key not in keyword_dict:
                    v.err(
                        cond.key_line(key),
                        kpath,
                        f"unknown DICOM keyword {key!r}{suggestion(str(key), keyword_dict)}",
                    )
                elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    v.err(
                        cond.value_line(key),
                        kpath,
                        f"expected a string value, got {_type_name(value)} (quote it)",
                    )
                else:
                    match[key] = str(value)
        slope = v.value(item, "slope_mm_per_unit", path, _BAD, _to_float(0.0, lo_open=True))
        offset = v.value(item, "offset", path, 0.0, _to_float())
        if _BAD in (slope, offset) or len(match) != len(cond or {}):
            continue
        calibrations.append(ScannerCalibration(match, slope, offset, v.loc(item.line)))
    return MeasurementSettings(tuple(calibrations), _options(v, section, "measurement"))


def _build(v: _Validator, data: Any, path: Path | None, storage_override: Path | None) -> NodeConfig:
    if data is None:
        v.err(
            1, "", "the configuration is empty (expected a mapping with node, destinations, models, routes)"
        )
        raise ConfigError(v.issues)
    if not isinstance(data, dict):
        v.err(getattr(data, "line", 1) or 1, "", f"the top level must be a mapping, got {_type_name(data)}")
        raise ConfigError(v.issues)
    v.known_keys(data, "", [*_TOP_KEYS, *(k for k in data if isinstance(k, str) and k.startswith("x-"))])
    node = _build_node(v, data, storage_override)
    destinations = _build_destinations(v, data, node)
    models = _build_models(v, data)
    routes = _build_routes(v, data, destinations, models)
    default = _build_default(v, data, destinations)
    measurement = _build_measurement(v, data)
    if v.issues:
        raise ConfigError(v.issues)
    return NodeConfig(
        path=path,
        node=node,
        destinations=destinations,
        models=models,
        routes=routes,
        default=default,
        measurement=measurement,
    )


def _parse_yaml(v: _Validator, text: str) -> Any:
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            started = f" started at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            detail += f" ({exc.context}{started})"
        v.err(mark.line + 1 if mark else 0, "", f"YAML syntax error: {detail}")
        raise ConfigError(v.issues) from None
    except yaml.YAMLError as exc:
        v.err(0, "", f"YAML error: {exc}")
        raise ConfigError(v.issues) from None
    finally:
        loader.dispose()
    _report_duplicates(v, data, "")
    return data


def _report_duplicates(v: _Validator, value: Any, path: str, seen: set[int] | None = None) -> None:
    """Report duplicate mapping keys anywhere in the document (YAML would silently keep the last one).

    Each container is visited once, so YAML aliases cannot blow the walk up ("billion laughs").
    """
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    if isinstance(value, LocatedMap):
        seen.add(id(value))
        for key, line, first in value.duplicates:
            v.err(
                line, f"{path}.{key}" if path else str(key), f"duplicate key {key!r} (first at line {first})"
            )
        for key, item in value.items():
            _report_duplicates(v, item, f"{path}.{key}" if path else str(key), seen)
    elif isinstance(value, list):
        seen.add(id(value))
        for i, item in enumerate(value):
            _report_duplicates(v, item, f"{path}[{i}]", seen)


def parse_config_text(
    text: str, filename: str = "<string>", *, storage_override: Path | None = None
) -> NodeConfig:
    """Validate YAML ``text``; relative paths are relative to the current directory. Raises ConfigError."""
    v = _Validator(filename, Path.cwd())
    data = _parse_yaml(v, text)
    return _build(v, data, None, storage_override)


def load_config(path: str | Path, *, storage_override: Path | None = None) -> NodeConfig:
    """Load and validate a YAML file; relative paths in it are relative to its directory. Raises ConfigError."""
    name = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigIssue(name, 0, "", f"cannot read configuration file: {reason}")]) from None
    v = _Validator(name, file.resolve().parent)
    data = _parse_yaml(v, text)
    return _build(v, data, file.resolve(), storage_override)


def summarize(config: NodeConfig) -> str:
    """One line: counts of routes, destinations and models, and the default action."""

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    default = config.default.action
    if default == "forward":
        default += " to " + ", ".join(config.default.destinations)
    return (
        f"{n(len(config.routes), 'route')}, {n(len(config.destinations), 'destination')}, "
        f"{n(len(config.models), 'model')}, default {default}; listening as {config.node.ae_title} "
        f"on {config.node.bind}:{config.node.port}"
    )


def changed_node_settings(old: NodeConfig, new: NodeConfig) -> list[str]:
    """Names of ``node`` fields that differ between two configurations."""
    return [f.name for f in fields(NodeSettings) if getattr(old.node, f.name) != getattr(new.node, f.name)]


class ConfigHolder:
    """Thread-safe holder of the running configuration; ``reload`` swaps it atomically (SIGHUP).

    A new file that fails validation is refused: the old configuration stays current.
    """

    def __init__(self, path: str | Path, storage_override: Path | None = None) -> None:
        self._path = Path(path)
        self._storage_override = storage_override
        self._lock = threading.Lock()
        self._current = load_config(self._path, storage_override=storage_override)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current(self) -> NodeConfig:
        return self._current  # one reference read: always a whole configuration

    def reload(self) -> tuple[bool, str]:
        """Re-read the file. Returns (True, summary) after the swap, or (False, every error) keeping the old one."""
        with self._lock:
            try:
                new = load_config(self._path, storage_override=self._storage_override)
            except ConfigError as exc:
                return False, f"configuration not reloaded, the previous one stays active:\n{exc}"
            old, self._current = self._current, new
        changed = changed_node_settings(old, new)
        note = f"; node settings changed: {', '.join(changed)}" if changed else ""
        return True, f"reloaded {self._path}: {summarize(new)}{note}"
