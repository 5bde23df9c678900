"""Routing: every operator and combinator (true and false), tag forms, PHI redaction, real files, `route` CLI."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node import cli
from dicom_node.config import ConfigError, LocatedMap, load_config, parse_config_text
from dicom_node.routing import compile_match, is_phi, parse_tag, select_route
from nodecore.config_schema import SourceLocation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
LOC = SourceLocation("t.yaml", 1)


def make_ds(**attrs: object) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


CT_LOC = make_ds(
    Modality="CT",
    ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    SeriesNumber="3",
    KVP="120.0",
    Rows=512,
    PatientName="Doe^Jane",
    PatientID="SECRET-ID-42",
    StationName="CTROOM1",
    BodyPartExamined="",
)


def check(expr: dict, ds: Dataset = CT_LOC, calling_ae: str = "CT1") -> bool:
    matcher = compile_match(expr, LOC)
    ok, reasons = matcher.explain(ds, calling_ae)
    assert reasons and all(r.lstrip().startswith("t.yaml:") for r in reasons), reasons
    return ok


# ------------------------------------------------------------------------------------------ tags


@pytest.mark.parametrize(
    "text", ["Modality", "(0008,0060)", "0008,0060", "00080060", "( 0008 , 0060 )", "(0008,0060)"]
)
def test_tag_forms(text: str) -> None:
    assert parse_tag(text) == (0x00080060, "Modality")


def test_tag_forms_all_match_the_same_attribute() -> None:
    for form in ("Modality", "(0008,0060)", "0008,0060", "00080060"):
        assert check({"attribute": form, "equals": "CT"})
        assert not check({"attribute": form, "equals": "CR"})


def test_private_tag_and_unknown_keyword() -> None:
    assert parse_tag("(0029,1010)") == (0x00291010, "(0029,1010)")
    with pytest.raises(ValueError, match=r"unknown DICOM keyword 'Modalty' \(did you mean 'Modality'\?\)"):
        parse_tag("Modalty")
    with pytest.raises(ValueError, match="quote tags written as digits"):
        parse_tag(80060)


# ------------------------------------------------------------------------------------------ operators


def test_equals() -> None:
    assert check({"attribute": "Modality", "equals": "CT"})
    assert not check({"attribute": "Modality", "equals": "ct"})  # equals is case-sensitive
    assert check({"attribute": "SeriesNumber", "equals": 3})  # IS compared numerically
    assert not check({"attribute": "SeriesNumber", "equals": 4})
    assert check({"attribute": "KVP", "equals": 120})  # DS "120.0" == 120
    assert check({"attribute": "Rows", "equals": 512})  # US
    assert check({"attribute": "ImageType", "equals": "ORIGINAL\\PRIMARY\\LOCALIZER"})  # whole value
    assert check({"attribute": "ImageType", "equals": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    assert not check({"attribute": "ImageType", "equals": "ORIGINAL\\PRIMARY"})  # not a prefix match
    assert not check({"attribute": "ImageType", "equals": "LOCALIZER"})


def test_one_of() -> None:
    assert check({"attribute": "Modality", "one_of": ["CR", "DX", "CT"]})
    assert not check({"attribute": "Modality", "one_of": ["CR", "DX"]})
    assert check({"attribute": "SeriesNumber", "one_of": [1, 2, 3]})
    assert check(
        {"attribute": "ImageType", "one_of": ["ORIGINAL\\PRIMARY\\AXIAL", "ORIGINAL\\PRIMARY\\LOCALIZER"]}
    )


def test_contains_is_case_insensitive_membership() -> None:
    assert check({"attribute": "ImageType", "contains": "LOCALIZER"})
    assert check({"attribute": "ImageType", "contains": "localizer"})
    assert check({"attribute": "ImageType", "contains": ["ORIGINAL", "localizer"]})  # all listed present
    assert not check({"attribute": "ImageType", "contains": ["ORIGINAL", "AXIAL"]})
    assert not check({"attribute": "ImageType", "contains": "LOCAL"})  # membership, not substring
    assert check({"attribute": "Modality", "contains": "ct"})  # single-valued: one-item list
    assert check({"attribute": "KVP", "contains": 120})


def test_regex_full_match_on_each_value() -> None:
    assert check({"attribute": "StationName", "regex": "CTROOM[0-9]"})
    assert not check({"attribute": "StationName", "regex": "CTROOM"})  # full match, not search
    assert check({"attribute": "StationName", "regex": ".*ROOM.*"})
    assert check({"attribute": "ImageType", "regex": "LOCAL.*"})  # any value of a multi-valued attribute
    assert not check({"attribute": "ImageType", "regex": "ORIGINAL.PRIMARY"})  # values tested one by one
    assert check({"attribute": "StationName", "regex": "(?i)ctroom1"})


def test_range_inclusive_bounds() -> None:
    assert check({"attribute": "KVP", "range": {"min": 120, "max": 140}})
    assert check({"attribute": "KVP", "range": {"min": 80, "max": 120}})
    assert not check({"attribute": "KVP", "range": {"min": 120.5}})
    assert check({"attribute": "KVP", "range": {"max": 120}})
    assert not check({"attribute": "KVP", "range": {"max": 119.99}})
    assert check({"attribute": "SeriesNumber", "range": {"min": 1, "max": 3}})
    assert not check({"attribute": "Modality", "range": {"min": 0}})  # not numeric: false


def test_exists() -> None:
    assert check({"attribute": "Modality", "exists": True})
    assert not check({"attribute": "Modality", "exists": False})
    assert not check({"attribute": "Manufacturer", "exists": True})
    assert check({"attribute": "Manufacturer", "exists": False})
    assert not check({"attribute": "BodyPartExamined", "exists": True})  # present but empty counts as absent
    assert check({"attribute": "BodyPartExamined", "exists": False})


@pytest.mark.parametrize(
    "expr",
    [
        {"attribute": "Manufacturer", "equals": "X"},
        {"attribute": "Manufacturer", "one_of": ["X", "Y"]},
        {"attribute": "Manufacturer", "contains": "X"},
        {"attribute": "Manufacturer", "regex": ".*"},
        {"attribute": "Manufacturer", "range": {"min": -1e9}},
        {"attribute": "Manufacturer", "exists": True},
        {"attribute": "BodyPartExamined", "regex": ".*"},  # empty value
    ],
)
def test_missing_attribute_is_false(expr: dict) -> None:
    assert not check(expr)
    assert check({"not": expr})


def test_sequence_attribute() -> None:
    ds = make_ds(Modality="CT")
    ds.ReferencedImageSequence = [make_ds(ReferencedSOPInstanceUID="1.2.3")]
    assert check({"attribute": "ReferencedImageSequence", "exists": True}, ds)  # a sequence with an item
    assert not check({"attribute": "ReferencedImageSequence", "equals": "x"}, ds)  # values only: false
    assert not check({"attribute": "ReferencedImageSequence", "regex": ".*"}, ds)
    ok, reasons = compile_match({"attribute": "ReferencedImageSequence", "exists": True}, LOC).explain(ds, "")
    assert reasons == ["t.yaml:1: ReferencedImageSequence exists: true: yes (sequence of 1 item)"]
    ds.ReferencedImageSequence = []
    assert check({"attribute": "ReferencedImageSequence", "exists": False}, ds)  # empty sequence


def test_calling_ae() -> None:
    assert check({"calling_ae": {"equals": "CT1"}})
    assert not check({"calling_ae": {"equals": "CT2"}})
    assert check({"calling_ae": {"equals": "CT1"}}, calling_ae="CT1  ")  # padding stripped
    assert check({"calling_ae": {"one_of": ["XR1", "CT1"]}})
    assert not check({"calling_ae": {"one_of": ["XR1", "XR2"]}})
    assert check({"calling_ae": {"regex": "CT[0-9]+"}})
    assert not check({"calling_ae": {"regex": "CT"}})
    assert not check({"calling_ae": {"equals": "CT1"}}, calling_ae="")


# ------------------------------------------------------------------------------------------ combinators

T = {"attribute": "Modality", "equals": "CT"}
F = {"attribute": "Modality", "equals": "MR"}


def test_all_any_not() -> None:
    assert check({"all": [T, T]})
    assert not check({"all": [T, F]})
    assert check({"all": []})  # empty all: match everything
    assert check({"any": [F, T]})
    assert not check({"any": [F, F]})
    assert check({"not": F})
    assert not check({"not": T})


def test_nested_arbitrarily() -> None:
    expr = {"any": [{"all": [F, T]}, {"not": {"any": [F, {"not": T}]}}]}
    assert check(expr)
    expr = {"all": [{"any": [F, {"calling_ae": {"equals": "CT1"}}]}, {"not": {"all": [T, {"not": F}]}}]}
    assert not check(expr)
    deep: dict = T
    for _ in range(20):
        deep = {"not": {"not": deep}}
    assert check(deep)


# ------------------------------------------------------------------------------------------ explanations


def test_explain_reasons_have_file_line_and_values() -> None:
    config = parse_config_text(
        textwrap.dedent(
            """\
            destinations:
              pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
            models:
              reference: {card: "builtin:reference"}
            routes:
              - name: ct
                match:
                  all:
                    - attribute: Modality
                      equals: CT
                    - attribute: ImageType
                      contains: LOCALIZER
                    - calling_ae: {regex: "CT.*"}
                pipeline: {name: reference, detectors: [reference]}
                destinations: [pacs]
            """
        ),
        "example.yaml",
    )
    decision = select_route(config, CT_LOC, "CT1")
    assert decision.route is config.routes[0] and decision.default is None
    assert decision.reasons == [
        "example.yaml:6: route 'ct': matched",
        "  example.yaml:8: all of 3 conditions: yes",
        "    example.yaml:9: Modality equals 'CT': yes (CT)",
        "    example.yaml:11: ImageType contains 'LOCALIZER': yes (ORIGINAL\\PRIMARY\\LOCALIZER)",
        "    example.yaml:13: calling AE matches regex 'CT.*': yes (CT1)",
    ]
    decision = select_route(config, make_ds(Modality="MR"), "X")
    assert decision.route is None and decision.default is not None and decision.default.action == "drop"
    assert "    example.yaml:11: ImageType contains 'LOCALIZER': no (attribute absent)" in decision.reasons
    assert decision.reasons[-1] == "no route matched: default action drop"


def test_no_phi_in_reasons() -> None:
    exprs = [
        {"attribute": "PatientName", "regex": "Doe.*"},
        {"attribute": "PatientID", "equals": "SECRET-ID-42"},
        {"attribute": "(0010,0020)", "exists": True},
    ]
    ds = make_ds(**{k: getattr(CT_LOC, k) for k in ("Modality", "PatientName", "PatientID")})
    ds.PatientBirthDate = "19700101"
    reasons: list[str] = []
    for expr in exprs:
        ok, lines = compile_match(expr, LOC).explain(ds, "CT1")
        assert ok
        reasons.extend(lines)
    ok, lines = compile_match({"attribute": "PatientBirthDate", "range": {"min": 0}}, LOC).explain(ds, "")
    reasons.extend(lines)
    text = "\n".join(reasons)
    assert "<redacted>" in text and "Jane" not in text and "19700101" not in text
    assert all(line.endswith("(<redacted>)") for line in reasons), reasons
    assert "SECRET" not in text and "Doe" not in text  # the rule's own PHI values are not echoed either
    assert reasons[0] == "t.yaml:1: PatientName matches regex <redacted>: yes (<redacted>)"
    assert reasons[2] == "t.yaml:1: PatientID exists: true: yes (<redacted>)"
    # only referenced attributes are shown: StationName is not in the rule, so never printed
    assert "CTROOM1" not in "\n".join(compile_match(T, LOC).explain(CT_LOC, "")[1])


def test_phi_rule_covers_logsafe_keywords() -> None:
    from pydicom.datadict import tag_for_keyword

    from dicom_node.logsafe import PHI_KEYWORDS

    for keyword in PHI_KEYWORDS:
        assert is_phi(int(tag_for_keyword(keyword))), keyword
    for keyword in ("Modality", "ImageType", "Manufacturer", "StationName", "PatientSex", "KVP"):
        assert not is_phi(int(tag_for_keyword(keyword))), keyword


# ------------------------------------------------------------------------------------------ compile errors


def _errors(expr: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_match(expr, LOC, key="routes[0].match")
    return [str(e) for e in info.value.errors]


def test_compile_errors_collected() -> None:
    errors = _errors(
        {
            "all": [
                {"attribute": "Modalty", "equals": "CT"},
                {"attribute": "ImageType", "regex": "LOCAL(IZER"},
                {"attribute": "KVP", "range": {"min": 140, "max": 80}},
                {"attribute": "Modality", "equals": True},
                {"attribute": "Modality", "equal": "CT"},
                {"attribute": "Modality"},
                {"calling_ae": {"equals": "A\\B"}},
                {"any": []},
                {"Modality": "CT"},
                {"attribute": "Modality", "exists": "yes"},
            ]
        }
    )
    joined = "\n".join(errors)
    assert len(errors) == 10, joined
    assert (
        "routes[0].match.all[0].attribute: unknown DICOM keyword 'Modalty' (did you mean 'Modality'?)"
        in joined
    )
    assert "routes[0].match.all[1].regex: invalid regular expression 'LOCAL(IZER'" in joined
    assert "routes[0].match.all[2].range: min 140 is greater than max 80" in joined
    assert "routes[0].match.all[3].equals: YAML read True as a boolean" in joined
    assert "routes[0].match.all[4].equal: unknown operator 'equal' (did you mean 'equals'?)" in joined
    assert "routes[0].match.all[5]: a condition needs exactly one operator" in joined
    assert "routes[0].match.all[6].calling_ae.equals: AE title 'A\\\\B' contains a backslash" in joined
    assert "routes[0].match.all[7].any: an empty 'any' never matches" in joined
    assert "routes[0].match.all[8].Modality: write {attribute: Modality, equals: ...}" in joined
    assert "routes[0].match.all[9].exists: expected true or false" in joined


def test_compile_error_lines_from_yaml() -> None:
    import yaml

    from dicom_node.config_yaml import parse_yaml

    text = "all:\n  - attribute: Modality\n    equals: CT\n  - attribute: ImageType\n    regex: '(['\n"
    expr = parse_yaml(text, "t.yaml")
    assert isinstance(expr, LocatedMap) and not isinstance(expr, yaml.Node)
    errors = _errors(expr)
    assert errors[0].startswith("t.yaml:5: routes[0].match.all[1].regex: invalid regular expression '(['")


# ------------------------------------------------------------------------------------------ hypothesis

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    value=finite, lo=st.one_of(st.none(), finite), hi=st.one_of(st.none(), finite), as_string=st.booleans()
)
def test_range_matches_inclusive_interval(
    value: float, lo: float | None, hi: float | None, as_string: bool
) -> None:
    if lo is None and hi is None:
        hi = 0.0
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    bounds = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    matcher = compile_match({"attribute": "SliceThickness", "range": bounds}, LOC)
    ds = Dataset()
    ds.add_new(0x00180050, "DS" if as_string else "FD", f"{value:.9g}" if as_string else value)
    stored = float(ds.SliceThickness)
    expected = (lo is None or stored >= lo) and (hi is None or stored <= hi)
    ok, reasons = matcher.explain(ds, "")
    assert ok == expected, (value, bounds, reasons)
    assert (": yes (" if expected else ": no (") in reasons[0]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=5), probe=st.integers(-5, 5))
def test_multivalued_numeric_contains_and_range(values: list[int], probe: int) -> None:
    ds = Dataset()
    ds.add_new(0x00281050, "DS", [str(v) for v in values])  # WindowCenter, multi-valued DS
    contains = compile_match({"attribute": "WindowCenter", "contains": probe}, LOC).explain(ds, "")[0]
    assert contains == (probe in values)
    in_range = compile_match({"attribute": "WindowCenter", "range": {"min": probe, "max": probe}}, LOC)
    assert in_range.explain(ds, "")[0] == any(math.isclose(v, probe) for v in values)


# ------------------------------------------------------------------------------------------ real data


def test_realdata_localizers_and_radiographs_take_their_routes(realdata_files: list[Path]) -> None:
    config = load_config(EXAMPLE)
    seen = {"ct-localizer": 0, "radiograph": 0, "radiograph-out-of-scope": 0}
    for path in realdata_files:
        ds = dcmread(path, stop_before_pixels=True)
        decision = select_route(config, ds, "ANY")
        if path.name.startswith("loc_"):
            expected = "ct-localizer"
        elif path.name.startswith(("cr_kodak_hand", "cr_wg04_RG3_leg")):
            expected = "radiograph-out-of-scope"  # limbs: outside the reference detector's intended use
        elif path.name.startswith(("cr_", "dx_", "hard_cr_")):
            expected = "radiograph"
        else:
            continue
        assert decision.route is not None and decision.route.name == expected, (path.name, decision.reasons)
        seen[expected] += 1
    assert seen == {"ct-localizer": 2, "radiograph": 6, "radiograph-out-of-scope": 2}


def test_realdata_sop_classes_are_accepted_by_default(realdata_files: list[Path]) -> None:
    config = load_config(EXAMPLE)
    for path in realdata_files:
        ds = dcmread(path, stop_before_pixels=True)
        assert str(ds.SOPClassUID) in config.node.sop_classes, path.name


def example_line(fragment: str, after: str | None = None) -> int:
    """1-based line of the first line of config/example.yaml containing ``fragment`` (after the line with ``after``)."""
    lines = EXAMPLE.read_text().splitlines()
    start = 0 if after is None else next(i for i, t in enumerate(lines) if t.rstrip().endswith(after))
    return next(i for i, t in enumerate(lines) if i >= start and t.rstrip().endswith(fragment)) + 1


def test_route_cli_localizer(realdata_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(
        ["route", str(realdata_dir / "loc_philips_MAROTECH_CT_JP2Lossy.dcm"), "--config", str(EXAMPLE)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert "  SOP class: CT Image Storage (1.2.840.10008.5.1.4.1.1.2)" in lines
    ct, mod = example_line("name: ct-localizer"), example_line("attribute: Modality", "name: ct-localizer")
    itype = example_line("attribute: ImageType", "name: ct-localizer")
    assert f"{EXAMPLE}:{ct}: route 'ct-localizer': matched" in lines
    assert f"    {EXAMPLE}:{mod}: Modality equals 'CT': yes (CT)" in lines
    assert f"    {EXAMPLE}:{itype}: ImageType contains 'LOCALIZER': yes (ORIGINAL\\PRIMARY\\LOCALIZER)" in lines
    assert (
        lines[-1]
        == "=> route 'ct-localizer': pipeline reference, outputs sr, sc, gsps, plain_sr, destinations pacs"
    )


def test_route_cli_radiograph_subprocess(realdata_dir: Path) -> None:
    exe = Path(sys.executable).parent / "dicom-node"
    if not exe.exists():
        pytest.skip(f"{exe} missing: run .venv/bin/pip install -e . --no-deps")
    result = subprocess.run(
        [
            str(exe),
            "route",
            str(realdata_dir / "dx_canon_chest_PA_pydicom966_fixed.dcm"),
            "--config",
            str(EXAMPLE),
            "--calling-ae",
            "XR1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  calling AE: XR1" in lines
    ct, mod = example_line("name: ct-localizer"), example_line("attribute: Modality", "name: ct-localizer")
    rg, rmod = example_line("name: radiograph"), example_line("attribute: Modality", "name: radiograph")
    assert f"{EXAMPLE}:{ct}: route 'ct-localizer': not matched" in lines
    assert f"    {EXAMPLE}:{mod}: Modality equals 'CT': no (DX)" in lines
    assert f"{EXAMPLE}:{rg}: route 'radiograph': matched" in lines
    assert f"  {EXAMPLE}:{rmod}: Modality one of ['CR', 'DX']: yes (DX)" in lines
    assert lines[-1].startswith("=> route 'radiograph'")
    assert "Canon" not in result.stdout  # attributes the rules do not reference are never printed


def test_route_cli_default_action_and_phi(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            destinations:
              archive: {ae_title: ARCHIVE, host: 127.0.0.1, port: 4243}
            routes:
              - name: by-patient
                match: {attribute: PatientName, regex: "Nobody.*"}
                pipeline: none
                forward_original: true
                destinations: [archive]
            default: {action: forward, destinations: [archive]}
            """
        )
    )
    ds = make_ds(
        Modality="CT",
        PatientName="Doe^Jane",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        SOPInstanceUID="1.2.3.4",
    )
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dcm = tmp_path / "x.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    assert cli.main(["route", str(dcm), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Jane" not in out and "(<redacted>)" in out
    assert out.splitlines()[-1] == "=> no route: default action forward to archive"


def test_route_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_dicom = tmp_path / "x.dcm"
    not_dicom.write_bytes(b"hello")
    assert cli.main(["route", str(not_dicom), "--config", str(EXAMPLE)]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  port: 0\n")
    assert cli.main(["route", str(not_dicom), "--config", str(bad)]) == 1
    assert f"{bad}:2: node.port: port 0 is out of range (1-65535)" in capsys.readouterr().err
