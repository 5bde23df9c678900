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

import ipaddress
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_dict

from dicom_node.config_yaml import (
    ConfigError,
    ConfigIssue,
    LocatedList,
    LocatedMap,
    check_ae_title,
    duplicate_keys,
    parse_yaml,
    plain,
    suggestion,
    type_name,
)
from dicom_node.pipeline import PIPELINES
from dicom_node.routing import compile_match
from nodecore.config_schema import (
    MEASUREMENT_OPTION_DEFAULTS,
    MODEL_BACKENDS,
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
    RegionShape,
    RetentionPolicy,
    RetryPolicy,
    Route,
    ScannerCalibration,
    ScannerGeometry,
    SourceLocation,
    Timeouts,
    TritonSpec,
)
from nodecore.sopclasses import (
    DEFAULT_SOP_CLASSES,
    SOP_CLASS_ALIASES,
    TRANSFER_SYNTAX_ALIASES,
    resolve_uid,
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


# ------------------------------------------------------------------------------------------ validation

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_BAD = object()  # marker: the value was invalid (already reported)
MAX_ASSOCIATIONS = 16  # cap of destinations.NAME.max_associations (a slow PACS must not be flooded)


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
        if not isinstance(value, LocatedMap):
            self.err(parent.value_line(key), path, f"expected a mapping, got {type_name(value)}")
            return None
        self.known_keys(value, path, allowed)
        return value

    def known_keys(
        self, m: LocatedMap, path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> None:
        allowed = list(allowed)
        for key in m:
            if not isinstance(key, str):
                self.err(m.key_line(key), path, f"keys must be strings, got {type_name(key)} {key!r}")
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
        raise ValueError(f"expected a string, got {type_name(value)} {value!r} (quote it)")
    if not value.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{value!r} contains a control character")
    return value


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type_name(value)} {value!r}")
    return value


def _to_int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type_name(value)} {value!r}")
        if value < lo or (hi is not None and value > hi):
            raise ValueError(
                f"{value} is out of range ({lo}-{hi})" if hi is not None else f"{value} is below {lo}"
            )
        return value

    return convert


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type_name(value)} {value!r}")
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
                    f"or a string like '30s'), got {type_name(value)} {value!r}"
                ) from None
        if amount < 0 or (amount == 0 and not allow_zero):
            raise ValueError(f"duration {value!r} must be {'>= 0' if allow_zero else '> 0'}")
        return amount

    return convert


def _to_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a TCP port number, got {type_name(value)} {value!r}")
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (1-65535)")
    return value


def _to_choice(choices: Iterable[str], *, upper: bool = False) -> Callable[[Any], str]:
    options = tuple(choices)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected one of {', '.join(options)}, got {type_name(value)} {value!r}")
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


# ------------------------------------------------------------------------------------------ typed keys


@dataclass(frozen=True)
class Key:
    """One key of a checked mapping: ``convert`` turns the YAML value into the typed one or raises ValueError with
    the message (reported as ``file:line: path.key: message``); ``required`` keys must be present.

    To add a key to a section checked this way, add one ``Key`` to its table (``model_option_keys()``,
    ``SCANNER_GEOMETRY_KEYS``, ``MEASUREMENT_OPTIONS``, ...): unknown keys, "did you mean", types and ranges follow.
    """

    convert: Callable[[Any], Any]
    required: bool = False
    help: str = ""
    # for values that report their own errors with their own lines: called as
    # ``located(validator, parent, key, path)`` instead of ``convert``, returns the value or _BAD
    located: Callable[[_Validator, LocatedMap, str, str], Any] | None = None


def _checked_mapping(v: _Validator, raw: Any, line: int, path: str, keys: Mapping[str, Key]) -> Any:
    """``{key: typed value}`` of the keys present in ``raw`` (every unknown, missing or invalid key reported), or
    ``_BAD`` when anything was wrong."""
    if not isinstance(raw, LocatedMap):
        v.err(line, path, f"expected a mapping ({', '.join(keys)}), got {type_name(raw)}")
        return _BAD
    before = len(v.issues)
    v.known_keys(raw, path, keys, required=[k for k, spec in keys.items() if spec.required])
    out: dict[str, Any] = {}
    for name, spec in keys.items():
        if name not in raw:
            continue
        if spec.located is not None:
            value = spec.located(v, raw, name, path)
        else:
            value = v.value(raw, name, path, _BAD, spec.convert)
        if value is not _BAD:
            out[name] = value
    return _BAD if len(v.issues) > before else out


def _to_positive_mm(value: Any) -> float:
    return _to_float(0.0, lo_open=True)(value)


def _dicom_match(v: _Validator, parent: LocatedMap, key: str, path: str) -> Any:
    """``{DICOM keyword: value}`` naming a scanner (``nodecore.scanners``): keywords checked, values non-empty."""
    cond, where = parent[key], f"{path}.{key}"
    if not isinstance(cond, LocatedMap) or not cond:
        v.err(parent.value_line(key), where, "expected a non-empty mapping of attribute keyword -> value")
        return _BAD
    out: dict[str, str] = {}
    for name, wanted in cond.items():
        kpath = f"{where}.{name}"
        if not isinstance(name, str) or name not in keyword_dict:
            v.err(cond.key_line(name), kpath, f"unknown DICOM keyword {name!r}{suggestion(str(name), keyword_dict)}")
        elif isinstance(wanted, bool) or not isinstance(wanted, str | int | float):
            v.err(cond.value_line(name), kpath, f"expected a string value, got {type_name(wanted)} (quote it)")
        elif not str(wanted).strip():
            v.err(cond.value_line(name), kpath, "must not be empty (an image without the attribute never matches)")
        else:
            out[name] = str(wanted)
    return out if len(out) == len(cond) else _BAD


def _to_device(value: Any) -> str:
    text = _to_str(value).strip()
    if not re.match(r"^(cpu|cuda(:[0-9]+)?)$", text):
        raise ValueError(f"{text!r} is not a torch device (cpu, cuda, cuda:N)")
    return text


def _to_path_text(v: _Validator) -> Callable[[Any], str]:
    return lambda value: str(_path(v, value))


def model_option_keys(v: _Validator) -> dict[str, Key]:
    """Backend options of ``models.<name>.options`` (inference.backends.open_backend, inference.engine)."""
    return {
        "threads": Key(_to_int(1, 1024), help="CPU threads of the ONNX Runtime / torch session"),
        "precision": Key(_to_choice(("fp16", "fp32", "int8")), help="TensorRT engine precision"),
        "opt_batch": Key(_to_int(1, 1024), help="TensorRT optimisation profile batch size"),
        "engine_cache": Key(_to_path_text(v), help="TensorRT engine cache directory"),
        "calibration": Key(_to_path_text(v), help="folder of DICOM files for int8 calibration"),
        "workspace_mb": Key(_to_int(16, 1 << 20), help="TensorRT builder workspace"),
        "device": Key(_to_device, help="torch device"),
        "fp16": Key(_to_bool, help="torch half precision"),
        "micro_batching": Key(_to_bool, help="batch concurrent requests (inference.engine.MicroBatcher)"),
    }


SCANNER_GEOMETRY_KEYS: dict[str, Key] = {
    "match": Key(str, required=True, located=_dicom_match),
    "sod_mm": Key(_to_positive_mm, help="source to isocenter distance"),
    "sid_mm": Key(_to_positive_mm, help="source to detector distance"),
    "frontal_view_position": Key(_to_choice(("AP", "PA"), upper=True)),
    "lateral_view_position": Key(_to_choice(("LL", "RL"), upper=True)),
}
REGION_SHAPE_KEYS: dict[str, Key] = {
    "density": Key(_to_float(0.0, lo_open=True)),
    "centre_fraction": Key(_to_float(0.0, 1.0)),
    "aspect": Key(_to_float(0.0, lo_open=True)),
    "posterior_mm": Key(lambda x: None if x is None else _to_float(0.0)(x)),
    "bone_wepl_mm": Key(_to_float(0.0)),
}
_NON_NEGATIVE = _to_float(0.0)
MEASUREMENT_OPTIONS: dict[str, Key] = {
    **{name: Key(_NON_NEGATIVE) for name in MEASUREMENT_OPTION_DEFAULTS},
    "central_fraction": Key(_to_float(0.0, 0.5, lo_open=True)),
    # typed sections of their own (MeasurementSettings.scanner_geometry / region_model), checked separately
    "scanner_geometry": Key(lambda x: x),
    "region_model": Key(lambda x: x),
}


# ------------------------------------------------------------------------------------------ sections

_NODE_KEYS = [f.name for f in fields(NodeSettings)]
_TIMEOUT_KEYS = [f.name for f in fields(Timeouts)]
_RETRY_KEYS = [f.name for f in fields(RetryPolicy)]
_RETENTION_KEYS = [f.name for f in fields(RetentionPolicy)]
_DEST_KEYS = ["ae_title", "host", "port", "calling_ae", "retry", "max_pdu", "max_associations"]
_MODEL_KEYS = ["card", "backend", "max_batch", "max_wait_ms", "options", "triton"]
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
    if not isinstance(raw, LocatedList):
        v.err(parent.value_line(key), where, f"expected a list, got {type_name(raw)}")
        return None
    out = []
    for i, item in enumerate(raw):
        line = raw.item_line(i) if isinstance(raw, LocatedList) else parent.value_line(key)
        if not isinstance(item, str) or not item.strip():
            v.err(line, f"{where}[{i}]", f"expected a non-empty string, got {type_name(item)} {item!r}")
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
    if not isinstance(raw, LocatedList):
        v.err(
            node.value_line("allowed_callers"),
            "node.allowed_callers",
            f"expected a list, got {type_name(raw)}",
        )
        return ()
    callers = []
    for i, item in enumerate(raw):
        line, path = raw.item_line(i), f"node.allowed_callers[{i}]"
        if isinstance(item, LocatedMap):
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
    if not isinstance(raw, LocatedMap):
        v.err(top.value_line(key), key, f"expected a mapping of name -> settings, got {type_name(raw)}")
        return []
    out = []
    for name, body in raw.items():
        path = f"{key}.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            v.err(raw.key_line(name), path, f"invalid name {name!r} (letters, digits, '_', '.', '-')")
            continue
        if not isinstance(body, LocatedMap):
            v.err(raw.value_line(name), path, f"expected a mapping, got {type_name(body)}")
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
    if not isinstance(raw, LocatedMap):
        v.err(body.value_line("options"), f"{path}.options", f"expected a mapping, got {type_name(raw)}")
        return {}
    return plain(raw)


def _build_models(v: _Validator, top: LocatedMap) -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for name, body, path in _named_mapping(v, top, "models"):
        v.known_keys(body, path, _MODEL_KEYS, required=["card"])
        d = ModelSpec(name, "")
        card = v.value(body, "card", path, _BAD, _to_card(v))
        backend = v.value(body, "backend", path, d.backend, _to_choice(MODEL_BACKENDS))
        max_batch = v.value(body, "max_batch", path, d.max_batch, _to_int(1, 1024))
        max_wait = v.value(body, "max_wait_ms", path, d.max_wait_ms, _to_duration("ms", allow_zero=True))
        options = _build_model_options(v, body, path)
        triton = build_triton(v, body, path, name, backend)  # the triton section, in its own module
        if _BAD in (card, backend, max_batch, max_wait, options, triton):
            continue
        out[name] = ModelSpec(name, card, backend, max_batch, max_wait, options, v.loc(body.line), triton)
    # a model that is declared but invalid is still a known name (avoid cascades of "unknown model" errors)
    return out


def _build_model_options(v: _Validator, body: LocatedMap, path: str) -> Any:
    if body.get("options") is None:
        return {}
    options = _checked_mapping(v, body["options"], body.value_line("options"), f"{path}.options", model_option_keys(v))
    if options is not _BAD and options.get("precision") == "int8" and "calibration" not in options:
        v.err(body["options"].value_line("precision"), f"{path}.options.precision",
              "int8 needs options.calibration (a folder of representative DICOM files)")
        return _BAD
    return options


def _declared(top: LocatedMap, key: str) -> set[str]:
    raw = top.get(key)
    return {k for k in raw if isinstance(k, str)} if isinstance(raw, LocatedMap) else set()


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
    if not isinstance(raw, LocatedList):
        v.err(line, path, f"expected a list of detectors, got {type_name(raw)}")
        return ()
    out = []
    for i, item in enumerate(raw):
        ipath, iline = f"{path}[{i}]", raw.item_line(i)
        if isinstance(item, str):
            item_map = LocatedMap(iline)
            item_map["model"] = item
            item = item_map
        if not isinstance(item, LocatedMap):
            v.err(
                iline,
                ipath,
                f"expected a mapping (model, score_threshold, ...) or a model name, got {type_name(item)}",
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
    if raw is None or (isinstance(raw, str) and raw.strip().lower() == "none"):
        return None
    if isinstance(raw, str):
        body = LocatedMap(line)
        body["name"] = raw
        raw = body
    if not isinstance(raw, LocatedMap):
        v.err(
            line,
            ppath,
            f"expected a pipeline mapping (name, detectors, options) or none, got {type_name(raw)}",
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
    _check_radiograph_orientation(v, raw, options, ppath)
    if name is _BAD:
        return _BAD
    return PipelineSpec(name.strip(), detectors, options)


def _check_radiograph_orientation(v: _Validator, raw: LocatedMap, options: dict[str, Any], ppath: str) -> None:
    """``options.radiograph_orientation``: the Patient Orientation assumed for images whose header gives none
    (inference.orientation), e.g. 'L\\F'; checked here so a typo fails at load time, not on the first image."""
    if "radiograph_orientation" not in options or options["radiograph_orientation"] is None:
        return
    from inference.orientation import parse_patient_orientation

    value = options["radiograph_orientation"]
    body = raw.get("options")
    line = body.value_line("radiograph_orientation") if isinstance(body, LocatedMap) else raw.value_line("options")
    if not isinstance(value, str) or parse_patient_orientation(value) is None:
        v.err(line, f"{ppath}.options.radiograph_orientation",
              f"expected a Patient Orientation: row and column directions from A P L R H F, e.g. 'L\\F' or"
              f" 'L,F', got {type_name(value)} {value!r}")


def _build_routes(
    v: _Validator, top: LocatedMap, destinations: dict[str, Destination], models: dict[str, ModelSpec]
) -> tuple[Route, ...]:
    if "routes" not in top or top["routes"] is None:
        return ()
    raw = top["routes"]
    if not isinstance(raw, LocatedList):
        v.err(top.value_line("routes"), "routes", f"expected a list of routes, got {type_name(raw)}")
        return ()
    declared_dest, declared_models = _declared(top, "destinations"), _declared(top, "models")
    seen: dict[str, int] = {}
    routes = []
    for i, body in enumerate(raw):
        path, line = f"routes[{i}]", raw.item_line(i)
        if not isinstance(body, LocatedMap):
            v.err(
                line, path, f"expected a route mapping (name, match, pipeline, ...), got {type_name(body)}"
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
        matcher: Any = _BAD
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
    if not isinstance(raw, LocatedMap):
        v.err(
            top.value_line("default"),
            "default",
            f"expected a mapping (action, destinations), got {type_name(raw)}",
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
    """``measurement``: scanner calibrations, and ``options`` (numeric knobs, ``scanner_geometry``,
    ``region_model``), every key typed and checked: these settings change reported millimetres and doses."""
    section = v.section(top, "measurement", "measurement", ["scanner_calibrations", "options"])
    if section is None:
        return MeasurementSettings()
    calibrations = []
    for item, line, path in _checked_list(v, section, "scanner_calibrations", "measurement"):
        values = _checked_mapping(v, item, line, path, {
            "match": Key(str, required=True, located=_dicom_match),
            "slope_mm_per_unit": Key(_to_float(0.0, lo_open=True), required=True),
            "offset": Key(_to_float()),
        })
        if values is not _BAD:
            calibrations.append(ScannerCalibration(source=v.loc(item.line), **values))
    options = section.get("options")
    if options is None:
        return MeasurementSettings(tuple(calibrations))
    checked = _checked_mapping(v, options, section.value_line("options"), "measurement.options", MEASUREMENT_OPTIONS)
    if not isinstance(options, LocatedMap):
        return MeasurementSettings(tuple(calibrations))
    geometry = []
    for item, line, path in _checked_list(v, options, "scanner_geometry", "measurement.options"):
        values = _checked_mapping(v, item, line, path, SCANNER_GEOMETRY_KEYS)
        if values is _BAD:
            continue
        sod, sid = values.get("sod_mm"), values.get("sid_mm")
        if sod is not None and sid is not None and sod >= sid:
            v.err(item.value_line("sod_mm"), f"{path}.sod_mm",
                  f"{sod:g} mm is not below sid_mm ({sid:g} mm): the source is closer to the isocenter than to the "
                  "detector")
            continue
        if len(values) == 1:
            v.err(item.line, path, "names a scanner but sets nothing (sod_mm, sid_mm, frontal_view_position, "
                  "lateral_view_position)")
            continue
        geometry.append(ScannerGeometry(source=v.loc(item.line), **values))
    region_model: dict[str, RegionShape] = {}
    raw_model = options.get("region_model")
    if raw_model is not None:
        if not isinstance(raw_model, LocatedMap):
            v.err(options.value_line("region_model"), "measurement.options.region_model",
                  f"expected a mapping of region label -> shape, got {type_name(raw_model)}")
        else:
            for label, shape in raw_model.items():
                path = f"measurement.options.region_model.{label}"
                values = _checked_mapping(v, shape, raw_model.value_line(label), path, REGION_SHAPE_KEYS)
                if values is not _BAD:
                    region_model[str(label).upper()] = RegionShape(**values)
    numbers = {} if checked is _BAD else {k: val for k, val in checked.items() if k in MEASUREMENT_OPTION_DEFAULTS}
    return MeasurementSettings(tuple(calibrations), tuple(geometry), region_model, numbers)


def _checked_list(v: _Validator, parent: LocatedMap, key: str, path: str) -> list[tuple[Any, int, str]]:
    """[(item, line, item path)] of the list under ``key`` (absent or null: none; not a list: reported)."""
    raw = parent.get(key)
    if raw is None:
        return []
    where = f"{path}.{key}"
    if not isinstance(raw, LocatedList):
        v.err(parent.value_line(key), where, f"expected a list, got {type_name(raw)}")
        return []
    return [(item, raw.item_line(i), f"{where}[{i}]") for i, item in enumerate(raw)]


def _build(v: _Validator, data: Any, path: Path | None, storage_override: Path | None) -> NodeConfig:
    if data is None:
        v.err(
            1, "", "the configuration is empty (expected a mapping with node, destinations, models, routes)"
        )
        raise ConfigError(v.issues)
    if not isinstance(data, LocatedMap):
        v.err(getattr(data, "line", 1) or 1, "", f"the top level must be a mapping, got {type_name(data)}")
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


def parse_config_text(
    text: str, filename: str = "<string>", *, storage_override: Path | None = None
) -> NodeConfig:
    """Validate YAML ``text``; relative paths are relative to the current directory. Raises ConfigError."""
    v = _Validator(filename, Path.cwd())
    data = parse_yaml(text, v.file)
    v.issues.extend(duplicate_keys(data, v.file))
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
    data = parse_yaml(text, v.file)
    v.issues.extend(duplicate_keys(data, v.file))
    return _build(v, data, file.resolve(), storage_override)


def summarize(config: NodeConfig) -> str:
    """One line: counts of routes, destinations and models, and the default action."""

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    default: str = config.default.action
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


# ---- models.NAME.triton (docs/CONFIG.md): a TritonSpec ----------------------------------------------------------

_TRITON_KEYS = ["servers", "model", "version", "timeout", "connect_timeout", "retry_for", "cooldown", "fallback", "tls",
                "headers", "header_env"]
_TRITON_URL_RE = re.compile(r"^(grpc|grpcs|http|https)://([^/:\s]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})/?$")


def _to_triton_url(value: Any) -> str:
    text = _to_str(value).strip()
    match = _TRITON_URL_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Triton server URL (grpc://host:8001, grpcs://, http://host:8000, https://)")
    _to_port(int(match.group(3)))
    return text.rstrip("/")


def build_triton(v: _Validator, body: LocatedMap, path: str, name: str, backend: Any) -> Any:
    """The ``triton`` section of a model (None for local backends, _BAD after reporting a problem)."""
    tp = f"{path}.triton"
    if backend != "triton":
        if body.get("triton") is not None and backend is not _BAD:
            v.err(body.key_line("triton"), tp, f"only used with backend: triton (backend is {backend})")
            return _BAD
        return None
    if body.get("triton") is None:
        v.err(body.line, tp, "backend triton needs a triton section (servers, model, fallback)")
        return _BAD
    section = v.section(body, "triton", tp, _TRITON_KEYS)
    if section is None:
        return _BAD
    if "servers" not in section:
        v.err(section.line, tp, "missing required key 'servers' (a list of grpc:// or http:// URLs)")
        return _BAD
    raw = section["servers"]
    urls: list[Any] = []
    if not isinstance(raw, list | str) or not raw:
        v.err(section.value_line("servers"), f"{tp}.servers", "expected a URL or a non-empty list of URLs")
        urls.append(_BAD)
    for i, item in enumerate([raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []):
        try:
            urls.append(_to_triton_url(item))
        except ValueError as exc:
            line = raw.item_line(i) if hasattr(raw, "item_line") else section.value_line("servers")
            v.err(line, f"{tp}.servers[{i}]" if isinstance(raw, list) else f"{tp}.servers", str(exc))
            urls.append(_BAD)
    d = TritonSpec((), "")
    model = v.value(section, "model", tp, name, _to_str)
    version = v.value(section, "version", tp, "", _to_triton_version)
    timeout = v.value(section, "timeout", tp, d.timeout_s, _to_duration("s"))
    connect = v.value(section, "connect_timeout", tp, d.connect_timeout_s, _to_duration("s"))
    retry_for = v.value(section, "retry_for", tp, d.retry_for_s, _to_duration("s", allow_zero=True))
    cooldown = v.value(section, "cooldown", tp, d.cooldown_s, _to_duration("s", allow_zero=True))
    fallback = v.value(section, "fallback", tp, d.fallback, _to_choice(("fail", *(b for b in MODEL_BACKENDS if b != "triton"))))
    tls: dict[str, str | None] = {"ca_file": None, "cert_file": None, "key_file": None}
    tls_section = v.section(section, "tls", f"{tp}.tls", list(tls))
    if tls_section is not None:
        for key in tls:
            value = v.value(tls_section, key, f"{tp}.tls", None, _to_existing_file(v))
            tls[key] = None if value is _BAD else value
        if (tls["cert_file"] is None) != (tls["key_file"] is None):
            v.err(tls_section.line, f"{tp}.tls", "cert_file and key_file go together (client certificate)")
    headers = _str_map(v, section, "headers", tp, env=False)
    header_env = _str_map(v, section, "header_env", tp, env=True)
    if _BAD in (model, version, timeout, connect, retry_for, cooldown, fallback, headers, header_env, *urls):
        return _BAD
    return TritonSpec(tuple(urls), model.strip(), version, timeout, connect, retry_for, cooldown, fallback,
                      tls["ca_file"], tls["cert_file"], tls["key_file"], headers, header_env)  # fmt: skip


def _to_triton_version(value: Any) -> str:
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a model version number (1, 2, ...), got {type_name(value)} {value!r}")
    return text


def _to_existing_file(v: _Validator) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        path = _path(v, value)
        if not path.is_file():
            raise ValueError(f"file {str(path)!r} not found")
        return str(path)

    return convert


def _str_map(v: _Validator, section: LocatedMap, key: str, path: str, *, env: bool) -> Any:
    """A mapping of header name -> text (``env``: -> the name of a set environment variable holding the text)."""
    if section.get(key) is None:
        return {}
    raw = section[key]
    if not isinstance(raw, LocatedMap):
        v.err(section.value_line(key), f"{path}.{key}", f"expected a mapping, got {type_name(raw)}")
        return _BAD
    out: dict[str, str] = {}
    for header, value in raw.items():
        where = f"{path}.{key}.{header}"
        if not isinstance(header, str) or not re.match(r"^[A-Za-z0-9-]+$", header):
            v.err(raw.key_line(header), where, "a header name is letters, digits and '-'")
            return _BAD
        if not isinstance(value, str) or not value or any(ord(c) < 0x20 for c in value):
            v.err(raw.value_line(header), where, f"expected a non-empty string, got {type_name(value)}")
            return _BAD
        if env and value not in os.environ:
            v.err(raw.value_line(header), where, f"environment variable {value!r} is not set")
            return _BAD
        out[header.lower()] = value
    return out
