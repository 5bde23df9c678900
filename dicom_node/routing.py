"""Route selection: compiled match expressions over DICOM attributes and the calling AE title.

A match expression (YAML) is one of::

    {attribute: <keyword or tag>, <operator>: <value>}      operators: equals, one_of, contains, regex, range, exists
    {calling_ae: {equals | one_of | regex: <value>}}
    {all: [<expr>, ...]}   {any: [<expr>, ...]}   {not: <expr>}

Tags may be written as a keyword (``Modality``) or as ``(0008,0060)``, ``0008,0060`` or ``00080060``.
A missing (or empty) attribute makes every operator false except ``exists: false``. Every compiled node keeps its
``file:line`` and ``explain(ds, calling_ae)`` returns (matched, reasons) with one human line per condition. Values
of attributes that may identify the patient are never printed (``<redacted>``), see ``is_phi``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from dicom_node.config_yaml import (
    ConfigError,
    ConfigIssue,
    LocatedList,
    LocatedMap,
    check_ae_title,
    suggestion,
    type_name,
)
from nodecore.config_schema import DefaultAction, Matcher, NodeConfig, Route, SourceLocation

__all__ = [
    "AllOf",
    "AnyOf",
    "AttributeCondition",
    "CallingAECondition",
    "Not",
    "RouteDecision",
    "compile_match",
    "is_phi",
    "parse_tag",
    "select_route",
]

OPERATORS = ("equals", "one_of", "contains", "regex", "range", "exists")
CALLING_AE_OPERATORS = ("equals", "one_of", "regex")
_MAX_SHOWN = 96  # characters of an attribute value shown in a reason

# Group 0010 (patient) is PHI except these; plus every PN (person name) and DA/DT (date) attribute, private tags
# and the identifiers below.
_PATIENT_GROUP_SHOWN = {0x00100040, 0x00101020, 0x00101030}  # PatientSex, PatientSize (m), PatientWeight (kg)
_PHI_TAGS = {
    0x00080050,  # AccessionNumber
    0x00080080,  # InstitutionName
    0x00080081,  # InstitutionAddress
    0x00080092,  # ReferringPhysicianAddress
    0x00080094,  # ReferringPhysicianTelephoneNumbers
    0x00081040,  # InstitutionalDepartmentName
    0x00200010,  # StudyID
    0x00321032,  # RequestingPhysician
    0x00401001,  # RequestedProcedureID
    0x00400009,  # ScheduledProcedureStepID
    0x00400253,  # PerformedProcedureStepID
    0x00380010,  # AdmissionID
    0x00380300,  # CurrentPatientLocation
    0x00380400,  # PatientInstitutionResidence
}


def is_phi(tag: int) -> bool:
    """True when values of ``tag`` may identify a patient and must not appear in logs or explanations."""
    group = tag >> 16
    if group == 0x0010:
        return tag not in _PATIENT_GROUP_SHOWN
    if group % 2 == 1 or tag in _PHI_TAGS:
        return True
    try:
        return dictionary_VR(tag) in ("PN", "DA", "DT")
    except KeyError:
        return True  # unknown public tag: be safe


_TAG_FORMS = (
    re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$"),
    re.compile(r"^([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})$"),
    re.compile(r"^([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})$"),
)


def parse_tag(text: Any) -> tuple[int, str]:
    """(tag, display name) from a keyword or "(gggg,eeee)" / "gggg,eeee" / "ggggeeee". ValueError if invalid."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"expected a DICOM keyword or tag like (0008,0060), got {type(text).__name__} {text!r}"
            + (" (quote tags written as digits)" if isinstance(text, int) else "")
        )
    text = text.strip()
    for form in _TAG_FORMS:
        m = form.match(text)
        if m:
            tag = int(m.group(1) + m.group(2), 16)
            name = keyword_for_tag(tag) or f"({m.group(1).upper()},{m.group(2).upper()})"
            return tag, name
    found = tag_for_keyword(text)
    if found is None:
        close = difflib.get_close_matches(text, keyword_dict.keys(), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown DICOM keyword {text!r}{hint}; use a keyword or a tag like (0008,0060)")
    return int(found), text


# ------------------------------------------------------------------------------------------ values


def _attribute_values(ds: Dataset, tag: int) -> tuple[str, list[Any]]:
    """("absent" | "sequence" | "error: ..." | "ok", values). Strings are stripped; bytes decoded as latin-1."""
    try:
        elem = ds.get(Tag(tag))
    except Exception as exc:  # noqa: BLE001 - a malformed element must not crash routing
        return f"unreadable ({type(exc).__name__})", []
    if elem is None:
        return "absent", []
    if elem.VR == "SQ":
        return "sequence", list(elem.value or [])
    try:
        value = elem.value
    except Exception as exc:  # noqa: BLE001
        return f"unreadable ({type(exc).__name__})", []
    if value is None:
        return "ok", []
    raw = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out: list[Any] = []
    for item in raw:
        if isinstance(item, bytes):
            item = item.decode("latin-1").strip("\x00 ")
        elif isinstance(item, str):
            item = item.strip()
        elif not isinstance(item, (int, float)):
            item = str(item).strip()  # PersonName, UID, dates
        out.append(item)
    if out in ([""], []):
        return "ok", []
    return "ok", out


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _same(actual: Any, expected: Any) -> bool:
    """Equality of one value: numeric when ``expected`` is a number, exact string comparison otherwise."""
    if isinstance(expected, (int, float)):
        number = _as_number(actual)
        return number is not None and number == float(expected)
    return _text(actual) == expected


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and not hasattr(value, "original_string"):
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _show(values: list[Any]) -> str:
    text = "\\".join(_text(v) for v in values)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _split(expected: Any) -> list[Any]:
    """A whole expected value as a list of values (strings with backslashes are multi-valued)."""
    if isinstance(expected, list):
        return list(expected)
    if isinstance(expected, str):
        return [part.strip() for part in expected.split("\\")]
    return [expected]


def _lit(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else _text(value)


# ------------------------------------------------------------------------------------------ matchers


@dataclass(frozen=True)
class AttributeCondition:
    """``attribute <op> expected``. Multi-valued attributes: see the operator docs in docs/CONFIG.md."""

    tag: int
    name: str
    op: str
    expected: (
        Any  # equals/contains: tuple; one_of: tuple of tuples; regex: str; range: (min, max); exists: bool
    )
    source: SourceLocation
    pattern: re.Pattern[str] | None = None

    def describe(self) -> str:
        """The condition as text; the expected value of a PHI attribute is not shown (it may itself be PHI)."""
        if is_phi(self.tag) and self.op not in ("exists",):
            verb = {"one_of": "one of", "regex": "matches regex", "range": "in range"}.get(self.op, self.op)
            return f"{self.name} {verb} <redacted>"
        if self.op == "equals":
            shown = (
                _lit("\\".join(_text(v) for v in self.expected))
                if len(self.expected) > 1
                else _lit(self.expected[0])
            )
            return f"{self.name} equals {shown}"
        if self.op == "one_of":
            options = ["\\".join(_text(x) for x in v) for v in self.expected]
            return f"{self.name} one of {_lit(options)}"
        if self.op == "contains":
            return (
                f"{self.name} contains {_lit(self.expected[0] if len(self.expected) == 1 else self.expected)}"
            )
        if self.op == "regex":
            return f"{self.name} matches regex {self.expected!r}"
        if self.op == "range":
            lo, hi = self.expected
            return f"{self.name} in range [{'-inf' if lo is None else _text(lo)}, {'inf' if hi is None else _text(hi)}]"
        return f"{self.name} exists: {'true' if self.expected else 'false'}"

    def test(self, state: str, values: list[Any]) -> bool:
        if self.op == "exists":  # present with a non-empty value (a sequence: at least one item)
            return (state in ("ok", "sequence") and bool(values)) == self.expected
        present = state == "ok" and bool(values)
        if not present:
            return False
        if self.op == "equals":
            return len(values) == len(self.expected) and all(
                _same(a, e) for a, e in zip(values, self.expected, strict=True)
            )
        if self.op == "one_of":
            return any(
                len(values) == len(option) and all(_same(a, e) for a, e in zip(values, option, strict=True))
                for option in self.expected
            )
        if self.op == "contains":
            lowered = {_text(v).lower() for v in values}
            return all(
                any(_same(v, e) for v in values) if isinstance(e, (int, float)) else e.lower() in lowered
                for e in self.expected
            )
        if self.op == "regex":
            assert self.pattern is not None
            return any(self.pattern.fullmatch(_text(v)) for v in values)
        if self.op == "range":
            lo, hi = self.expected
            for v in values:
                number = _as_number(v)
                if number is not None and (lo is None or number >= lo) and (hi is None or number <= hi):
                    return True
            return False
        raise AssertionError(self.op)

    def matches(self, ds: Dataset, calling_ae: str) -> bool:
        return self.test(*_attribute_values(ds, self.tag))

    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]:
        state, values = _attribute_values(ds, self.tag)
        ok = self.test(state, values)
        if state == "sequence":
            shown = f"sequence of {len(values)} item{'s' * (len(values) != 1)}"
        elif state != "ok":
            shown = "attribute absent" if state == "absent" else state
        elif not values:
            shown = "empty"
        elif is_phi(self.tag):
            shown = "<redacted>"
        else:
            shown = _show(values)
        return ok, [f"{self.source}: {self.describe()}: {'yes' if ok else 'no'} ({shown})"]


@dataclass(frozen=True)
class CallingAECondition:
    """The calling AE title of the association (spaces stripped, case-sensitive) ``equals``/``one_of``/``regex``."""

    op: str
    expected: Any  # equals: str; one_of: tuple[str, ...]; regex: str
    source: SourceLocation
    pattern: re.Pattern[str] | None = None

    def matches(self, ds: Dataset, calling_ae: str) -> bool:
        ae = (calling_ae or "").strip()
        if self.op == "equals":
            return ae == self.expected
        if self.op == "one_of":
            return ae in self.expected
        assert self.pattern is not None
        return self.pattern.fullmatch(ae) is not None

    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]:
        ok = self.matches(ds, calling_ae)
        what = {"equals": "equals", "one_of": "one of", "regex": "matches regex"}[self.op]
        expected = _lit(list(self.expected)) if self.op == "one_of" else repr(self.expected)
        shown = (calling_ae or "").strip() or "not given"
        return ok, [f"{self.source}: calling AE {what} {expected}: {'yes' if ok else 'no'} ({shown})"]


class _Combination:
    """``all``/``any`` of the children; subclasses set ``word`` and ``combine`` (so they pickle)."""

    word: str = ""
    children: tuple[Matcher, ...]
    source: SourceLocation

    @staticmethod
    def combine(results: Iterable[bool]) -> bool:
        raise NotImplementedError

    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]:
        results = [child.explain(ds, calling_ae) for child in self.children]
        ok = self.combine(r[0] for r in results)
        head = f"{self.source}: {self.word} of {len(self.children)} condition{'s' * (len(self.children) != 1)}"
        return ok, [f"{head}: {'yes' if ok else 'no'}"] + ["  " + line for r in results for line in r[1]]


@dataclass(frozen=True)
class AllOf(_Combination):
    """True when every child is true (an empty ``all`` is true: match everything)."""

    word = "all"

    @staticmethod
    def combine(results: Iterable[bool]) -> bool:
        return all(results)
    children: tuple[Matcher, ...]
    source: SourceLocation


@dataclass(frozen=True)
class AnyOf(_Combination):
    """True when at least one child is true."""

    word = "any"

    @staticmethod
    def combine(results: Iterable[bool]) -> bool:
        return any(results)
    children: tuple[Matcher, ...]
    source: SourceLocation


@dataclass(frozen=True)
class Not:
    """Negation of its child."""

    child: Matcher
    source: SourceLocation

    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]:
        child_ok, lines = self.child.explain(ds, calling_ae)
        return not child_ok, [f"{self.source}: not: {'yes' if not child_ok else 'no'}"] + [
            "  " + x for x in lines
        ]


# ------------------------------------------------------------------------------------------ compilation


class _Compiler:
    def __init__(self, location: SourceLocation, issues: list[ConfigIssue]) -> None:
        self.file = location.file
        self.issues = issues

    def err(self, line: int, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, line, key, message))

    def loc(self, line: int) -> SourceLocation:
        return SourceLocation(self.file, line)

    def compile(self, expr: Any, line: int, key: str) -> Matcher | None:
        if not isinstance(expr, dict):
            self.err(
                line, key, f"expected a match mapping (attribute/calling_ae/all/any/not), got {_kind(expr)}"
            )
            return None
        line = getattr(expr, "line", line) or line
        kl = (lambda k: expr.key_line(k)) if isinstance(expr, LocatedMap) else (lambda k: line)
        vl = (lambda k: expr.value_line(k)) if isinstance(expr, LocatedMap) else (lambda k: line)
        keys = [k for k in expr if isinstance(k, str)]
        for k in expr:
            if not isinstance(k, str):
                self.err(kl(k), key, f"keys must be strings, got {_kind(k)} {k!r}")
        if "attribute" in expr:
            return self._attribute(expr, line, key, kl, vl)
        structural = [k for k in keys if k in ("all", "any", "not", "calling_ae")]
        if len(structural) == 1 and len(keys) == 1:
            which = structural[0]
            if which == "not":
                child = self.compile(expr["not"], vl("not"), f"{key}.not")
                return None if child is None else Not(child, self.loc(line))
            if which == "calling_ae":
                return self._calling_ae(expr["calling_ae"], vl(which), f"{key}.calling_ae")
            return self._group(which, expr[which], vl(which), f"{key}.{which}", line)
        if len(structural) > 1:
            self.err(line, key, f"use one of {', '.join(structural)} per mapping (nest them in all/any)")
            return None
        if structural:  # a combinator plus other keys
            extra = [k for k in keys if k not in structural]
            self.err(
                kl(extra[0]), f"{key}.{extra[0]}", f"unexpected key {extra[0]!r} beside {structural[0]!r}"
            )
            return None
        if not keys:
            self.err(line, key, "empty match expression (use all: [] to match everything)")
            return None
        first = keys[0]
        if first in OPERATORS:
            self.err(line, key, f"operator {first!r} needs 'attribute: <keyword or tag>' in the same mapping")
        elif first in keyword_dict:
            self.err(
                kl(first),
                f"{key}.{first}",
                f"write {{attribute: {first}, equals: ...}} (a condition names "
                f"its attribute with the 'attribute' key)",
            )
        else:
            hint = suggestion(first, ("attribute", "calling_ae", "all", "any", "not"))
            self.err(
                kl(first),
                f"{key}.{first}",
                f"unknown key {first!r}{hint}; a match expression is one of "
                f"attribute, calling_ae, all, any, not",
            )
        return None

    def _group(self, which: str, items: Any, line: int, key: str, map_line: int) -> Matcher | None:
        if not isinstance(items, list):
            self.err(line, key, f"expected a list of match expressions, got {_kind(items)}")
            return None
        if which == "any" and not items:
            self.err(line, key, "an empty 'any' never matches: list at least one condition")
            return None
        children = []
        ok = True
        for i, item in enumerate(items):
            item_line = items.item_line(i) if isinstance(items, LocatedList) else line
            child = self.compile(item, item_line, f"{key}[{i}]")
            ok = ok and child is not None
            if child is not None:
                children.append(child)
        if not ok:
            return None
        cls = AllOf if which == "all" else AnyOf
        return cls(tuple(children), self.loc(map_line))

    def _attribute(self, expr: dict, line: int, key: str, kl: Any, vl: Any) -> Matcher | None:
        try:
            tag, name = parse_tag(expr["attribute"])
        except ValueError as exc:
            self.err(vl("attribute"), f"{key}.attribute", str(exc))
            tag, name = -1, ""
        ops = [k for k in expr if k in OPERATORS]
        bad = False
        for k in expr:
            if k != "attribute" and k not in OPERATORS and isinstance(k, str):
                self.err(
                    kl(k),
                    f"{key}.{k}",
                    f"unknown operator {k!r}{suggestion(k, OPERATORS)} (one of {', '.join(OPERATORS)})",
                )
                bad = True
        if len(ops) != 1:
            if not bad:
                self.err(
                    line,
                    key,
                    "a condition needs exactly one operator: "
                    + (f"got {', '.join(ops)}" if ops else f"add one of {', '.join(OPERATORS)}"),
                )
            return None
        op = ops[0]
        value, vline, vkey = expr[op], vl(op), f"{key}.{op}"
        expected: Any
        pattern = None
        if op == "equals":
            expected = self._scalar_list(
                _split(value) if not isinstance(value, list) else value, vline, vkey, value
            )
        elif op == "one_of":
            if not isinstance(value, list) or not value:
                self.err(vline, vkey, f"expected a non-empty list of values, got {_kind(value)}")
                return None
            options = []
            for i, option in enumerate(value):
                o_line = value.item_line(i) if isinstance(value, LocatedList) else vline
                got = self._scalar_list(_split(option), o_line, f"{vkey}[{i}]", option)
                if got is None:
                    return None
                options.append(got)
            expected = tuple(options)
        elif op == "contains":
            expected = self._scalar_list(value if isinstance(value, list) else [value], vline, vkey, value)
            if expected is not None and isinstance(value, list) and not value:
                self.err(vline, vkey, "expected at least one value")
                return None
            if expected is not None:
                expected = [e.strip() if isinstance(e, str) else e for e in expected]
        elif op == "regex":
            pattern = self._regex(value, vline, vkey)
            expected = value if pattern is not None else None
        elif op == "range":
            expected = self._range(value, vline, vkey)
        else:  # exists
            if not isinstance(value, bool):
                self.err(vline, vkey, f"expected true or false, got {_kind(value)} {value!r}")
                return None
            expected = value
        if expected is None or tag < 0:
            return None
        if op == "one_of":
            expected = tuple(tuple(option) for option in expected)
        elif isinstance(expected, list):
            expected = tuple(expected)
        return AttributeCondition(tag, name, op, expected, self.loc(line), pattern)

    def _scalar_list(self, values: list[Any], line: int, key: str, original: Any) -> list[Any] | None:
        out = []
        for v in values:
            if isinstance(v, bool):
                self.err(line, key, f"YAML read {original!r} as a boolean: quote the value (e.g. 'YES')")
                return None
            if isinstance(v, str) or (isinstance(v, (int, float))):
                out.append(v)
                continue
            hint = " (a date: quote it in DICOM form, e.g. '20240131')" if hasattr(v, "year") else ""
            self.err(line, key, f"expected a string or a number, got {_kind(v)} {v!r}{hint}")
            return None
        if not out:
            self.err(line, key, "expected a value")
            return None
        return out

    def _regex(self, value: Any, line: int, key: str) -> re.Pattern[str] | None:
        if not isinstance(value, str):
            self.err(line, key, f"expected a regular expression string, got {_kind(value)} {value!r}")
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            self.err(line, key, f"invalid regular expression {value!r}: {exc}")
            return None

    def _range(self, value: Any, line: int, key: str) -> tuple[float | None, float | None] | None:
        if not isinstance(value, dict):
            self.err(line, key, f"expected a mapping with min and/or max, got {_kind(value)}")
            return None
        bounds: dict[str, float | None] = {"min": None, "max": None}
        ok = True
        for k, v in value.items():
            k_line = value.key_line(k) if isinstance(value, LocatedMap) else line
            if k not in bounds:
                self.err(k_line, f"{key}.{k}", f"unknown key {k!r}{suggestion(str(k), bounds)} (min, max)")
                ok = False
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                self.err(
                    value.value_line(k) if isinstance(value, LocatedMap) else line,
                    f"{key}.{k}",
                    f"expected a number, got {_kind(v)} {v!r}",
                )
                ok = False
            else:
                bounds[k] = float(v)
        if ok and bounds["min"] is None and bounds["max"] is None:
            self.err(line, key, "give min, max or both")
            ok = False
        if ok and bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
            self.err(line, key, f"min {bounds['min']:g} is greater than max {bounds['max']:g}")
            ok = False
        return (bounds["min"], bounds["max"]) if ok else None

    def _calling_ae(self, value: Any, line: int, key: str) -> Matcher | None:
        if not isinstance(value, dict) or len(value) != 1:
            self.err(
                line,
                key,
                f"expected a mapping with one of {', '.join(CALLING_AE_OPERATORS)}, got {_kind(value)}"
                + (f" with {len(value)} keys" if isinstance(value, dict) else ""),
            )
            return None
        ((op, arg),) = value.items()
        if op not in CALLING_AE_OPERATORS:
            k_line = value.key_line(op) if isinstance(value, LocatedMap) else line
            self.err(
                k_line,
                f"{key}.{op}",
                f"unknown operator {op!r}{suggestion(str(op), CALLING_AE_OPERATORS)} "
                f"(one of {', '.join(CALLING_AE_OPERATORS)})",
            )
            return None
        v_line = value.value_line(op) if isinstance(value, LocatedMap) else line
        loc = self.loc(getattr(value, "line", line) or line)
        if op == "regex":
            pattern = self._regex(arg, v_line, f"{key}.regex")
            return None if pattern is None else CallingAECondition("regex", arg, loc, pattern)
        items = arg if op == "one_of" else [arg]
        if op == "one_of" and (not isinstance(arg, list) or not arg):
            self.err(v_line, f"{key}.one_of", f"expected a non-empty list of AE titles, got {_kind(arg)}")
            return None
        titles = []
        for i, item in enumerate(items):
            try:
                titles.append(check_ae_title(item))
            except ValueError as exc:
                i_line = arg.item_line(i) if isinstance(arg, LocatedList) else v_line
                self.err(i_line, f"{key}.{op}" + (f"[{i}]" if op == "one_of" else ""), str(exc))
                return None
        return CallingAECondition(op, tuple(titles) if op == "one_of" else titles[0], loc)


def _kind(value: Any) -> str:
    return type_name(value)


def compile_match(
    expr: Any, location: SourceLocation, *, key: str = "match", issues: list[ConfigIssue] | None = None
) -> Matcher:
    """Compile a YAML match expression (ideally ``LocatedMap``s from the config loader, for per-line errors).

    With ``issues`` given, problems are appended there (and an always-false placeholder may be returned);
    otherwise a ``ConfigError`` listing every problem is raised.
    """
    collected: list[ConfigIssue] = [] if issues is None else issues
    before = len(collected)
    matcher = _Compiler(location, collected).compile(expr, location.line, key)
    if matcher is None or len(collected) > before:
        if issues is None:
            raise ConfigError(collected)
        return AnyOf((), location)  # never matches; the caller has the errors
    return matcher


# ------------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class RouteDecision:
    """The first matching route, or (route None) the default action; ``reasons`` explain it, with file:line."""

    route: Route | None
    default: DefaultAction | None
    reasons: list[str]


def select_route(config: NodeConfig, ds: Dataset, calling_ae: str) -> RouteDecision:
    """Evaluate routes in order; the first whose match is true wins. No PHI appears in the reasons."""
    reasons: list[str] = []
    for route in config.routes:
        ok, lines = route.match.explain(ds, calling_ae)
        where = f"{route.source}: " if route.source else ""
        reasons.append(f"{where}route {route.name!r}: {'matched' if ok else 'not matched'}")
        reasons.extend("  " + line for line in lines)
        if ok:
            return RouteDecision(route, None, reasons)
    default = config.default
    target = f" to {', '.join(default.destinations)}" if default.action == "forward" else ""
    reasons.append(f"no route matched: default action {default.action}{target}")
    return RouteDecision(None, default, reasons)
