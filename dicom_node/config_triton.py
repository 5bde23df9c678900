"""Validation of a model's ``triton`` section (``models.NAME.triton``, docs/CONFIG.md) into a ``TritonSpec``.

Kept beside dicom_node/config.py, in its validation style (every problem reported as file:line and key path, all
at once), so the model section there only calls ``build_triton``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from dicom_node.config import (
    _BACKENDS,
    _BAD,
    LocatedMap,
    _path,
    _to_choice,
    _to_duration,
    _to_port,
    _to_str,
    _type_name,
    _Validator,
)
from dicom_node.config_schema import TritonSpec

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
    fallback = v.value(section, "fallback", tp, d.fallback, _to_choice(("fail", *(b for b in _BACKENDS if b != "triton"))))
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
        raise ValueError(f"expected a model version number (1, 2, ...), got {_type_name(value)} {value!r}")
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
    if not isinstance(raw, dict):
        v.err(section.value_line(key), f"{path}.{key}", f"expected a mapping, got {_type_name(raw)}")
        return _BAD
    out: dict[str, str] = {}
    for header, value in raw.items():
        where = f"{path}.{key}.{header}"
        if not isinstance(header, str) or not re.match(r"^[A-Za-z0-9-]+$", header):
            v.err(raw.key_line(header), where, "a header name is letters, digits and '-'")
            return _BAD
        if not isinstance(value, str) or not value or any(ord(c) < 0x20 for c in value):
            v.err(raw.value_line(header), where, f"expected a non-empty string, got {_type_name(value)}")
            return _BAD
        if env and value not in os.environ:
            v.err(raw.value_line(header), where, f"environment variable {value!r} is not set")
            return _BAD
        out[header.lower()] = value
    return out
