"""Configuration loading: example.yaml, defaults, every error with its exact file:line and key, reload, CLI."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dicom_node import cli
from dicom_node.config import (
    ConfigError,
    ConfigHolder,
    ConfigIssue,
    load_config,
    parse_config_text,
)
from dicom_node.routing import AllOf
from nodecore.config_schema import OUTPUT_KINDS, Caller, NodeSettings, RegionShape, Timeouts
from nodecore.sopclasses import (
    DEFAULT_SOP_CLASSES,
    SOP_CLASS_ALIASES,
    TRANSFER_SYNTAX_ALIASES,
    resolve_uid,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"

MINIMAL = """\
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
models:
  reference: {card: "builtin:reference"}
routes:
  - name: all
    match: {all: []}
    pipeline: {name: reference, detectors: [reference]}
    destinations: [pacs]
"""


def errors_of(text: str, name: str = "t.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(textwrap.dedent(text), name)
    return [str(issue) for issue in info.value.errors]


# ------------------------------------------------------------------------------------------ example.yaml


def test_example_yaml_loads_clean() -> None:
    config = load_config(EXAMPLE)
    node = config.node
    assert (node.ae_title, node.port, node.bind) == ("DICOMNODE", 11112, "0.0.0.0")
    assert node.storage == Path("/var/lib/dicom-node")
    assert node.sop_classes == DEFAULT_SOP_CLASSES and node.transfer_syntaxes == ()
    assert node.timeouts == Timeouts(acse=30, dimse=60, network=60, connection=10)
    pacs = config.destinations["pacs"]
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae) == (
        "ORTHANC",
        "127.0.0.1",
        4242,
        "DICOMNODE",
    )
    assert pacs.retry.max_delay_s == 300.0  # "5m"
    assert config.models["reference"].card == "builtin:reference"
    assert [r.name for r in config.routes] == ["ct-localizer", "radiograph-out-of-scope", "radiograph"]
    out_of_scope = config.routes[1]
    assert out_of_scope.pipeline is None and out_of_scope.destinations == () and not out_of_scope.forward_original
    for route in (config.routes[0], config.routes[2]):
        assert route.outputs == frozenset(OUTPUT_KINDS)
        assert route.destinations == ("pacs",)
        assert route.pipeline is not None and route.pipeline.name == "reference"
        assert [d.model for d in route.pipeline.detectors] == ["reference"]
    assert config.default.action == "drop"
    assert config.path == EXAMPLE.resolve()
    assert isinstance(config.routes[0].match, AllOf)


def test_example_commented_cascade_and_calibration_are_valid(tmp_path: Path) -> None:
    """Uncommenting the example's commented settings (cascade, gate model, calibration, overrides) stays valid."""
    text = EXAMPLE.read_text()
    assert "# - name: chest-cascade" in text and "slope_mm_per_unit" in text
    text = re.sub(r"(?m)^( +)# ( *(?:- )?[a-z_]+:(?: |$).*)$", r"\1\2", text).replace(
        "scanner_calibrations: []", "scanner_calibrations:"
    )
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "chest_gate.yaml").write_text("name: chest_gate\n")
    path = tmp_path / "example.yaml"
    path.write_text(text)
    config = load_config(path)
    assert [r.name for r in config.routes] == ["ct-localizer", "radiograph-out-of-scope", "radiograph", "chest-cascade"]
    assert config.models["chest_gate"].card == str(tmp_path / "models" / "chest_gate.yaml")
    loc = config.routes[0].pipeline.detectors[0]
    assert (loc.score_threshold, loc.nms_iou) == (0.3, 0.5)
    cascade = config.routes[3].pipeline.detectors[0]
    assert (cascade.model, cascade.gate, cascade.gate_classes, cascade.gate_threshold) == (
        "reference",
        "chest_gate",
        ("CHEST",),
        0.5,
    )
    [cal] = config.measurement.scanner_calibrations
    assert dict(cal.match) == {"Manufacturer": "Philips", "ManufacturerModelName": "Brilliance 64"}
    assert (cal.slope_mm_per_unit, cal.offset) == (0.1, -1000.0)


def test_config_pickles_for_worker_processes() -> None:
    config = load_config(EXAMPLE)
    again = pickle.loads(pickle.dumps(config))
    assert again.node == config.node and [r.name for r in again.routes] == ["ct-localizer", "radiograph-out-of-scope", "radiograph"]


def test_defaults_of_a_minimal_config() -> None:
    config = parse_config_text(MINIMAL)
    assert config.node == NodeSettings(sop_classes=DEFAULT_SOP_CLASSES)
    assert config.routes[0].outputs == frozenset({"sr"})
    assert config.default.action == "drop" and config.default.destinations == ()
    assert config.measurement.scanner_calibrations == ()
    assert config.path is None


def test_every_node_setting(tmp_path: Path) -> None:
    card = tmp_path / "cards" / "gate.yaml"
    card.parent.mkdir()
    card.write_text("name: gate\n")
    text = textwrap.dedent(
        """\
        node:
          ae_title: " NODE1 "
          bind: 127.0.0.1
          port: 104
          storage: spool
          max_associations: 4
          timeouts: {acse: 500ms, dimse: 2m, network: 1h, connection: 1.5}
          require_called_ae: false
          allowed_callers: [CT1, {ae_title: XR1, host: localhost}, {ae_title: XR2, host: "::1"}]
          sop_classes: [ct, CTImageStorage, DigitalXRayImageStorageForPresentation, 1.2.3.4.5]
          transfer_syntaxes: [explicit_le, JPEG2000Lossless, 1.2.840.10008.1.2, jpeg2000]
          min_free_disk_mb: 0
          duplicate_policy: reject
          workers: 3
          log_level: debug
          debug_phi: true
          metrics_port: 9102
        destinations:
          pacs:
            ae_title: ORTHANC
            host: pacs.example.org
            port: 4242
            calling_ae: OUT
            retry: {initial_delay_s: 1, max_delay_s: 10s, multiplier: 1.5, max_attempts: 3}
            max_pdu: 16384
        models:
          reference: {card: "builtin:reference", backend: onnxruntime, max_batch: 2, max_wait_ms: 0.01s,
                      options: {fp16: true}}
          gate: {card: cards/gate.yaml}
        routes:
          - name: cascade
            match: {attribute: Modality, one_of: [DX, CR]}
            pipeline:
              name: reference
              detectors:
                - {model: reference, score_threshold: 0.4, nms_iou: 0.5, classes: [CHEST], gate: gate,
                   gate_classes: [CHEST], gate_threshold: 0.2}
              options: {tile: 2}
            outputs: [SR, gsps]
            destinations: [pacs, pacs]
            forward_original: true
          - name: forward-only
            match: {calling_ae: {equals: CT1}}
            pipeline: none
            forward_original: true
            destinations: pacs
        default: {action: forward, destinations: [pacs]}
        measurement:
          scanner_calibrations:
            - match: {Manufacturer: Philips, ManufacturerModelName: Brilliance 64}
              slope_mm_per_unit: 0.1
              offset: -1000
          options:
            table_pad_mm: 30
            scanner_geometry:
              - {match: {Manufacturer: Philips}, sod_mm: 570, sid_mm: 1040, frontal_view_position: pa}
            region_model: {chest: {density: 1.1, posterior_mm: 20}}
        """
    )
    path = tmp_path / "full.yaml"
    path.write_text(text)
    config = load_config(path)
    node = config.node
    assert node.ae_title == "NODE1" and node.bind == "127.0.0.1" and node.port == 104
    assert node.storage == tmp_path / "spool"  # relative to the file's directory
    assert node.timeouts == Timeouts(acse=0.5, dimse=120, network=3600, connection=1.5)
    assert node.allowed_callers == (Caller("CT1"), Caller("XR1", "127.0.0.1"), Caller("XR2", "::1"))
    assert node.sop_classes == (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.3.4.5",
    )
    assert node.transfer_syntaxes == (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.4.91",
    )
    assert (node.min_free_disk_mb, node.duplicate_policy, node.workers) == (0.0, "reject", 3)
    assert (node.log_level, node.debug_phi, node.metrics_port, node.require_called_ae) == (
        "DEBUG",
        True,
        9102,
        False,
    )
    pacs = config.destinations["pacs"]
    assert (pacs.host, pacs.calling_ae, pacs.max_pdu) == ("pacs.example.org", "OUT", 16384)
    assert (
        pacs.retry.initial_delay_s,
        pacs.retry.max_delay_s,
        pacs.retry.multiplier,
        pacs.retry.max_attempts,
    ) == (
        1.0,
        10.0,
        1.5,
        3,
    )
    assert pacs.source is not None and pacs.source.line == 20
    ref, gate = config.models["reference"], config.models["gate"]
    assert (ref.backend, ref.max_batch, ref.max_wait_ms, dict(ref.options)) == (
        "onnxruntime",
        2,
        10.0,
        {"fp16": True},
    )
    assert gate.card == str(card)
    cascade, forward = config.routes
    assert cascade.pipeline is not None and dict(cascade.pipeline.options) == {"tile": 2}
    det = cascade.pipeline.detectors[0]
    assert (det.model, det.score_threshold, det.nms_iou, det.classes) == ("reference", 0.4, 0.5, ("CHEST",))
    assert (det.gate, det.gate_classes, det.gate_threshold) == ("gate", ("CHEST",), 0.2)
    assert cascade.outputs == frozenset({"sr", "gsps"}) and cascade.destinations == ("pacs",)
    assert cascade.forward_original and cascade.source is not None and cascade.source.line == 31
    assert forward.pipeline is None and forward.outputs == frozenset() and forward.destinations == ("pacs",)
    assert config.default.action == "forward" and config.default.destinations == ("pacs",)
    cal = config.measurement.scanner_calibrations[0]
    assert dict(cal.match) == {"Manufacturer": "Philips", "ManufacturerModelName": "Brilliance 64"}
    assert (cal.slope_mm_per_unit, cal.offset) == (0.1, -1000.0)
    assert dict(config.measurement.options) == {"table_pad_mm": 30.0}
    (geo,) = config.measurement.scanner_geometry
    assert (dict(geo.match), geo.sod_mm, geo.sid_mm, geo.frontal_view_position) == (
        {"Manufacturer": "Philips"}, 570.0, 1040.0, "PA")
    assert geo.lateral_view_position == "" and geo.source is not None and geo.source.line == 56
    assert dict(config.measurement.region_model) == {"CHEST": RegionShape(density=1.1, posterior_mm=20.0)}
    # the storage override (serve --storage) replaces node.storage
    assert load_config(path, storage_override=tmp_path / "other").node.storage == tmp_path / "other"


# ------------------------------------------------------------------------------------------ errors


def test_wrong_type() -> None:
    assert errors_of("node:\n  port: '11112'\n  debug_phi: 1\n") == [
        "t.yaml:2: node.port: expected a TCP port number, got string '11112'",
        "t.yaml:3: node.debug_phi: expected true or false, got integer 1",
    ]
    assert errors_of("node: [1, 2]\n") == ["t.yaml:1: node: expected a mapping, got list"]
    assert errors_of("- a\n- b\n") == ["t.yaml:1: the top level must be a mapping, got list"]


def test_unknown_key_with_suggestion() -> None:
    assert errors_of(MINIMAL + "node:\n  ae_titel: X\n  prot: 1\n") == [
        "t.yaml:11: node.ae_titel: unknown key 'ae_titel' (did you mean 'ae_title'?)",
        "t.yaml:12: node.prot: unknown key 'prot' (did you mean 'port'?)",
    ]
    assert errors_of(MINIMAL + "rotes: []\n") == [
        "t.yaml:10: rotes: unknown key 'rotes' (did you mean 'routes'?)"
    ]


def test_bad_regex_with_key_path() -> None:
    text = MINIMAL + (
        "  - name: second\n"
        "    match:\n"
        "      all:\n"
        "        - attribute: Modality\n"
        "          equals: CT\n"
        "        - attribute: ImageType\n"
        '          regex: "LOCALIZER(("\n'
        "    pipeline: none\n"
        "    forward_original: true\n"
        "    destinations: [pacs]\n"
    )
    [error] = errors_of(text, "example.yaml")
    assert error.startswith(
        "example.yaml:16: routes[1].match.all[1].regex: invalid regular expression 'LOCALIZER((': missing )"
    )


def test_unknown_destination_and_model() -> None:
    text = MINIMAL.replace("destinations: [pacs]", "destinations: [pacs, pcas]").replace(
        "detectors: [reference]", "detectors: [{model: referenc, gate: light}]"
    )
    assert errors_of(text) == [
        "t.yaml:8: routes[0].pipeline.detectors[0].model: unknown model 'referenc' (did you mean 'reference'?) "
        "(declared: reference)",
        "t.yaml:8: routes[0].pipeline.detectors[0].gate: unknown model 'light' (declared: reference)",
        "t.yaml:9: routes[0].destinations[1]: unknown destination 'pcas' (did you mean 'pacs'?) (declared: pacs)",
    ]
    assert errors_of(MINIMAL + "default: {action: forward, destinations: [nowhere]}\n") == [
        "t.yaml:10: default.destinations[0]: unknown destination 'nowhere' (declared: pacs)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "port 0 is out of range (1-65535)"),
        ("65536", "port 65536 is out of range (1-65535)"),
        ("-1", "port -1 is out of range (1-65535)"),
        ("104.5", "expected a TCP port number, got number 104.5"),
        ("true", "expected a TCP port number, got boolean True"),
    ],
)
def test_bad_port(value: str, message: str) -> None:
    assert errors_of(f"node:\n  ae_title: A\n  port: {value}\n") == [f"t.yaml:3: node.port: {message}"]
    dest = MINIMAL.replace("port: 4242", f"port: {value}")
    assert errors_of(dest) == [f"t.yaml:2: destinations.pacs.port: {message}"]


def test_yaml_syntax_errors() -> None:
    assert errors_of("node:\n  port: 11112\n  ae_title: [unclosed\nroutes: []\n") == [
        "t.yaml:4: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence started at "
        "line 3)"
    ]
    assert errors_of("node:\n\tport: 1\n") == [
        "t.yaml:2: YAML syntax error: found character '\\t' that cannot start any token (while scanning for the "
        "next token)"
    ]
    assert errors_of("a: 1\n---\nb: 2\n")[0].startswith(
        "t.yaml:2: YAML syntax error: but found another document"
    )
    assert errors_of("") == [
        "t.yaml:1: the configuration is empty (expected a mapping with node, destinations, models, routes)"
    ]


def test_duplicate_keys_and_route_names() -> None:
    text = (
        MINIMAL + "  - name: all\n    match: {all: []}\n    pipeline: none\n    forward_original: true\n"
        "    destinations: [pacs]\nnode: {port: 1, port: 2}\n"
    )
    assert errors_of(text) == [
        "t.yaml:10: routes[1].name: duplicate route name 'all' (first at line 6)",
        "t.yaml:15: node.port: duplicate key 'port' (first at line 15)",
    ]


@pytest.mark.parametrize(
    ("ae", "message"),
    [
        ("ABCDEFGHIJKLMNOPQ", "AE title 'ABCDEFGHIJKLMNOPQ' is 17 characters long (at most 16)"),
        ("'A\\B'", "AE title 'A\\\\B' contains a backslash or a control character"),
        ("'   '", "AE title must not be empty or all spaces"),
        ('"A\\tB"', "AE title 'A\\tB' contains a backslash or a control character"),
        ("1234", "expected an AE title string, got integer"),
    ],
)
def test_bad_ae_titles(ae: str, message: str) -> None:
    assert errors_of(f"node:\n  ae_title: {ae}\n") == [f"t.yaml:2: node.ae_title: {message}"]


def test_ranges_durations_and_choices() -> None:
    text = """\
    node:
      max_associations: 0
      workers: 1000
      min_free_disk_mb: -1
      duplicate_policy: overwrite
      timeouts: {acse: 0, dimse: 10 parsecs, network: -5s}
      metrics_port: 11112
    models:
      m: {card: "builtin:reference", backend: cuda, max_batch: 0, max_wait_ms: -1}
    """
    assert errors_of(text) == [
        "t.yaml:2: node.max_associations: 0 is out of range (1-1000)",
        "t.yaml:3: node.workers: 1000 is out of range (1-256)",
        "t.yaml:4: node.min_free_disk_mb: -1 must be >= 0",
        "t.yaml:5: node.duplicate_policy: 'overwrite' is not one of replace, keep, reject",
        "t.yaml:6: node.timeouts.acse: duration 0 must be > 0",
        "t.yaml:6: node.timeouts.dimse: invalid duration '10 parsecs' (examples: 30, '500ms', '30s', '5m', '1h')",
        "t.yaml:6: node.timeouts.network: invalid duration '-5s' (examples: 30, '500ms', '30s', '5m', '1h')",
        "t.yaml:7: node.metrics_port: must differ from node.port (11112)",
        "t.yaml:9: models.m.backend: 'cuda' is not one of auto, tensorrt, onnxruntime, onnxruntime-cpu, onnxruntime-cuda, torch, torch-cpu, torch-cuda, triton",
        "t.yaml:9: models.m.max_batch: 0 is out of range (1-1024)",
        "t.yaml:9: models.m.max_wait_ms: duration -1 must be >= 0",
    ]


def test_sop_classes_and_transfer_syntaxes_errors() -> None:
    text = (
        "node:\n  sop_classes: [ct, CTImageStorag, 1.2.840.10008.1.2.1]\n  transfer_syntaxes:\n"
        "    - CTImageStorage\n    - jpeg2001\n  allowed_callers: [{ae_title: X, hots: h}]\n"
    )
    errors = errors_of(text)
    assert errors[0].startswith(
        "t.yaml:2: node.sop_classes[1]: unknown SOP Class 'CTImageStorag' (did you mean 'CTImageStorage'?)"
    )
    assert errors[1:] == [
        "t.yaml:2: node.sop_classes[2]: 1.2.840.10008.1.2.1 is a Transfer Syntax (Explicit VR Little Endian), "
        "not a SOP Class",
        "t.yaml:4: node.transfer_syntaxes[0]: 'CTImageStorage' is a SOP Class, not a Transfer Syntax",
        errors[3],
        "t.yaml:6: node.allowed_callers[0].hots: unknown key 'hots' (did you mean 'host'?)",
    ]
    assert errors[3].startswith(
        "t.yaml:5: node.transfer_syntaxes[1]: unknown Transfer Syntax 'jpeg2001' (did you"
    )
    assert errors_of("node:\n  sop_classes: []\n") == [
        "t.yaml:2: node.sop_classes: must list at least one SOP class (omit it for the default)"
    ]


def test_max_associations_default_and_cap() -> None:
    base = "destinations:\n  pacs:\n    ae_title: P\n    host: h\n    port: 104\n"
    assert parse_config_text(base, "t.yaml").destinations["pacs"].max_associations == 4
    assert parse_config_text(base + "    max_associations: 2\n", "t.yaml").destinations["pacs"].max_associations == 2
    assert errors_of(base + "    max_associations: 17\n") == [
        "t.yaml:6: destinations.pacs.max_associations: 17 is out of range (1-16)"]
    assert errors_of(base + "    max_associations: 0\n") == [
        "t.yaml:6: destinations.pacs.max_associations: 0 is out of range (1-16)"]


def test_route_sc_compression() -> None:
    base = "routes:\n  - name: r\n    match: {all: []}\n    pipeline: {name: decode}\n"
    route = parse_config_text(base, "t.yaml").routes[0]
    assert (route.sc_compression, route.sc_max_size) == ("jpeg", 0)
    route = parse_config_text(base + "    sc_compression: jpeg-ls\n    sc_max_size: 2048\n", "t.yaml").routes[0]
    assert (route.sc_compression, route.sc_max_size) == ("jpeg-ls", 2048)
    errors = errors_of(base + "    sc_compression: png\n    sc_max_size: 100\n")
    assert errors[0].startswith("t.yaml:5: routes[0].sc_compression: 'png' is not one of jpeg, jpeg-ls, jpeg2000, none")
    assert errors[1] == ("t.yaml:6: routes[0].sc_max_size: 100 is too small (0 = the compression's default, or at "
                         "least 256 pixels)")


def test_route_errors() -> None:
    text = """\
    destinations:
      pacs: {ae_title: P, host: 127.0.0.1, port: 1}
    routes:
      - name: a
        match: {attribute: Modality, equals: CT}
        pipeline: {name: referense, detectors: [{model: x, score_threshold: 2, gate_threshold: 0.5}]}
        outputs: [sr, pdf]
        destinations: []
      - match: {Modality: CT}
        pipeline: none
        outputs: [sr]
        destinations: [pacs]
      - just a string
    default: {action: drop, destinations: [pacs]}
    """
    assert errors_of(text) == [
        "t.yaml:6: routes[0].pipeline.name: unknown pipeline 'referense' (did you mean 'reference'?) "
        "(known: decode, reference)",
        "t.yaml:6: routes[0].pipeline.detectors[0].model: unknown model 'x' (declared: none: add a models section)",
        "t.yaml:6: routes[0].pipeline.detectors[0].score_threshold: 2 must be <= 1",
        "t.yaml:6: routes[0].pipeline.detectors[0].gate_threshold: only meaningful with 'gate' (a gate model name)",
        "t.yaml:7: routes[0].outputs[1]: unknown output 'pdf' (one of sr, sc, gsps, plain_sr)",
        "t.yaml:9: routes[1]: missing required key 'name'",
        "t.yaml:9: routes[1].match.Modality: write {attribute: Modality, equals: ...} (a condition names its "
        "attribute with the 'attribute' key)",
        "t.yaml:11: routes[1].outputs: outputs need a pipeline (pipeline is none)",
        "t.yaml:13: routes[2]: expected a route mapping (name, match, pipeline, ...), got string",
        "t.yaml:14: default.destinations: action drop takes no destinations",
    ]


def test_model_card_path_must_exist(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "card.yaml").write_text("name: good\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  m: {card: cards/missing.yaml}\n  n: {card: 'builtin:no such'}\n  o: {card: empty}\n"
        "  p: {card: good}\n  q: {card: 'builtin:.hidden'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(e) for e in info.value.errors] == [
        f"{path}:2: models.m.card: model card '{tmp_path / 'cards' / 'missing.yaml'}' not found "
        "(a YAML card, a directory with card.yaml, or builtin:NAME)",
        f"{path}:3: models.n.card: invalid builtin model name in 'builtin:no such'",
        f"{path}:4: models.o.card: directory '{tmp_path / 'empty'}' holds no card.yaml",
        f"{path}:6: models.q.card: invalid builtin model name in 'builtin:.hidden'",
    ]
    path.write_text("models:\n  p: {card: good}\n")
    assert load_config(path).models["p"].card == str(tmp_path / "good")


def test_routes_without_destinations() -> None:
    base = MINIMAL.replace("    destinations: [pacs]\n", "")
    shadow = parse_config_text(base)  # processing with results sent nowhere (shadow mode)
    assert shadow.routes[0].destinations == () and shadow.routes[0].outputs == frozenset({"sr"})
    drop = parse_config_text(
        base.replace("pipeline: {name: reference, detectors: [reference]}", "pipeline: none")
    )
    assert drop.routes[0].pipeline is None and not drop.routes[0].forward_original  # an explicit drop route
    assert errors_of(base + "    forward_original: true\n") == [
        "t.yaml:9: routes[0].destinations: forward_original needs at least one destination"
    ]
    assert errors_of(MINIMAL.replace("[pacs]", "{pacs: 1}")) == [
        "t.yaml:9: routes[0].destinations: expected a list, got mapping"
    ]


def test_calibration_errors() -> None:
    text = """\
    measurement:
      scanner_calibrations:
        - match: {Manufactuer: Philips}
          slope_mm_per_unit: 0
        - {match: {}, slope: 1}
    """
    assert errors_of(text) == [
        "t.yaml:3: measurement.scanner_calibrations[0].match.Manufactuer: unknown DICOM keyword 'Manufactuer' "
        "(did you mean 'Manufacturer'?)",
        "t.yaml:4: measurement.scanner_calibrations[0].slope_mm_per_unit: 0 must be > 0",
        "t.yaml:5: measurement.scanner_calibrations[1].slope: unknown key 'slope' (did you mean "
        "'slope_mm_per_unit'?)",
        "t.yaml:5: measurement.scanner_calibrations[1]: missing required key 'slope_mm_per_unit'",
        "t.yaml:5: measurement.scanner_calibrations[1].match: expected a non-empty mapping of attribute keyword "
        "-> value",
    ]


def test_check_config_rejects_bad_scanner_geometry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11: the source distances behind every reported millimetre are checked like every other key."""
    path = tmp_path / "geometry.yaml"
    path.write_text(textwrap.dedent("""\
        measurement:
          options:
            scanner_geometry:
              - match: {Manufactuer: Philips}
                sod_mm: "six hundred"
                sid_m: 1040
              - match: {Manufacturer: GE, StationName: ""}
                sod_mm: 1100
                sid_mm: 1000
                lateral_view_position: AP
              - {match: {Manufacturer: Siemens}}
            table_pad: 30
            central_fraction: 2
            region_model: {CHEST: {densty: 1}}
        """))
    assert cli.main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    p = "measurement.options"
    for line in (
        f"{path}:4: {p}.scanner_geometry[0].match.Manufactuer: unknown DICOM keyword 'Manufactuer' (did you mean "
        "'Manufacturer'?)",
        f"{path}:5: {p}.scanner_geometry[0].sod_mm: expected a number, got string 'six hundred'",
        f"{path}:6: {p}.scanner_geometry[0].sid_m: unknown key 'sid_m' (did you mean 'sid_mm'?)",
        f"{path}:7: {p}.scanner_geometry[1].match.StationName: must not be empty (an image without the attribute "
        "never matches)",
        f"{path}:10: {p}.scanner_geometry[1].lateral_view_position: 'AP' is not one of LL, RL",
        f"{path}:11: {p}.scanner_geometry[2]: names a scanner but sets nothing (sod_mm, sid_mm, "
        "frontal_view_position, lateral_view_position)",
        f"{path}:12: {p}.table_pad: unknown key 'table_pad' (did you mean 'table_pad_mm'?)",
        f"{path}:13: {p}.central_fraction: 2 must be <= 0.5",
        f"{path}:14: {p}.region_model.CHEST.densty: unknown key 'densty' (did you mean 'density'?)",
    ):
        assert line in err, (line, err)
    path.write_text("measurement:\n  options:\n    scanner_geometry:\n      - {match: {Manufacturer: GE}, "
                    "sod_mm: 1100, sid_mm: 1000}\n")
    assert cli.main(["check-config", str(path)]) == 1
    assert f"{path}:4: {p}.scanner_geometry[0].sod_mm: 1100 mm is not below sid_mm (1000 mm)" in capsys.readouterr().err


def test_model_options_are_checked() -> None:
    text = """\
    models:
      m:
        card: "builtin:reference"
        options: {thread: 2, precision: int8, workspace_mb: -1, device: gpu0, fp16: "yes"}
    """
    assert errors_of(text) == [
        "t.yaml:4: models.m.options.thread: unknown key 'thread' (did you mean 'threads'?)",
        "t.yaml:4: models.m.options.workspace_mb: -1 is out of range (16-1048576)",
        "t.yaml:4: models.m.options.device: 'gpu0' is not a torch device (cpu, cuda, cuda:N)",
        "t.yaml:4: models.m.options.fp16: expected true or false, got string 'yes'",
    ]
    config = parse_config_text('models:\n  m: {card: "builtin:reference", options: {threads: 2, precision: fp32}}\n')
    assert dict(config.models["m"].options) == {"threads": 2, "precision": "fp32"}
    assert errors_of('models:\n  m:\n    card: "builtin:reference"\n    options: {precision: int8}\n') == [
        "t.yaml:4: models.m.options.precision: int8 needs options.calibration (a folder of representative DICOM "
        "files)"
    ]


def test_all_errors_collected_and_formatted(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("node:\n  port: 0\n  workers: x\nmodels:\n  m: {}\nroutes: 5\nextra: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert all(isinstance(e, ConfigIssue) and e.file == str(path) for e in errors)
    assert [(e.line, e.key) for e in errors] == [
        (2, "node.port"),
        (3, "node.workers"),
        (5, "models.m"),
        (6, "routes"),
        (7, "extra"),
    ]
    assert str(info.value).splitlines() == [f"{path}:{e.line}: {e.key}: {e.message}" for e in errors]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read configuration file: No such file or directory"
    with pytest.raises(ConfigError, match="Is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(binary)


def test_one_uid_table_built_on_pydicom() -> None:
    """The node's only SOP class / transfer syntax table: every alias is of its kind by pydicom's public UID API,
    the keyword of every default class resolves to it, and the receive defaults are all decodable syntaxes."""
    from pydicom.uid import UID

    from nodecore import sopclasses

    for alias, uid in SOP_CLASS_ALIASES.items():
        assert UID(uid).type == "SOP Class", alias
        assert resolve_uid(UID(uid).keyword, "SOP Class") == uid == resolve_uid(alias.upper(), "SOP Class")
    for alias, uid in TRANSFER_SYNTAX_ALIASES.items():
        assert UID(uid).is_transfer_syntax, alias
        assert resolve_uid(UID(uid).keyword, "Transfer Syntax") == uid
    assert DEFAULT_SOP_CLASSES == tuple(SOP_CLASS_ALIASES.values())
    assert set(sopclasses.DEFAULT_TRANSFER_SYNTAXES) < set(TRANSFER_SYNTAX_ALIASES.values())
    assert sopclasses.EXPLICIT_VR_BE not in sopclasses.DEFAULT_TRANSFER_SYNTAXES
    with pytest.raises(ValueError, match="is a Transfer Syntax, not a SOP Class"):
        resolve_uid("ExplicitVRLittleEndian", "SOP Class")
    with pytest.raises(ValueError, match="did you mean 'CTImageStorage'"):
        resolve_uid("CTImageStorag", "SOP Class")
    source = (ROOT / "nodecore" / "sopclasses.py").read_text() + (ROOT / "dicom_node" / "config.py").read_text()
    assert "_uid_dict" not in source


# ------------------------------------------------------------------------------------------ reload


def test_holder_reload_keeps_old_on_error_and_swaps_on_good(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(MINIMAL)
    holder = ConfigHolder(path, storage_override=tmp_path / "store")
    first = holder.current
    assert first.node.storage == tmp_path / "store"

    path.write_text(MINIMAL + "node:\n  port: 99999\n")
    ok, message = holder.reload()
    assert not ok
    assert holder.current is first
    assert f"{path}:11: node.port: port 99999 is out of range (1-65535)" in message
    assert "previous one stays active" in message

    path.write_text(MINIMAL.replace("name: all", "name: everything") + "node:\n  port: 11113\n")
    ok, message = holder.reload()
    assert ok, message
    assert holder.current is not first
    assert holder.current.routes[0].name == "everything" and holder.current.node.port == 11113
    assert holder.current.node.storage == tmp_path / "store"  # the override survives reloads
    assert (
        message.startswith(f"reloaded {path}: 1 route, 1 destination, 1 model") and "changed: port" in message
    )

    path.unlink()
    ok, message = holder.reload()
    assert not ok and "cannot read configuration file" in message and holder.current.node.port == 11113


def test_holder_constructor_raises_on_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {port: x}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1: node.port"):
        ConfigHolder(path)


def test_holder_readers_always_see_a_whole_config(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    good_a = MINIMAL + "node: {port: 2001}\n"
    good_b = MINIMAL.replace("name: all", "name: b") + "node: {port: 2002}\n"
    path.write_text(good_a)
    holder = ConfigHolder(path)
    seen: set[tuple[int, str]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            config = holder.current
            seen.add((config.node.port, config.routes[0].name))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            path.write_text(good_b if i % 2 == 0 else good_a)
            assert holder.reload()[0]
            path.write_text("node: [")
            assert not holder.reload()[0]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen <= {(2001, "all"), (2002, "b")}


# ------------------------------------------------------------------------------------------ CLI


def test_check_config_cli_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == "OK: 3 routes, 1 destination, 1 model, default drop; listening as DICOMNODE on 0.0.0.0:11112"
    )
    line = next(i for i, text in enumerate(EXAMPLE.read_text().splitlines(), 1) if "name: ct-localizer" in text)
    assert (
        f"route 'ct-localizer' ({EXAMPLE}:{line}): pipeline reference [reference], outputs sr, sc, gsps, plain_sr, "
        "to pacs" in out
    )


def test_check_config_cli_errors_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "dicom-node"
    if not exe.exists():
        pytest.skip(f"{exe} missing: run .venv/bin/pip install -e . --no-deps")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        MINIMAL.replace("port: 4242", "port: 0").replace("[pacs]", "[pacs, nowhere]") + "nod: {}\n"
    )
    result = subprocess.run(
        [str(exe), "check-config", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:2: destinations.pacs.port: port 0 is out of range (1-65535)",
        f"{bad}:9: routes[0].destinations[1]: unknown destination 'nowhere' (declared: pacs)",
        f"{bad}:10: nod: unknown key 'nod' (did you mean 'node'?)",
        f"3 errors in {bad}",
    ]


def test_anchors_merge_keys_and_extension_keys() -> None:
    text = """\
    x-peer: &peer {host: 127.0.0.1, port: 4242}
    destinations:
      a: {<<: *peer, ae_title: A}
      b:
        <<: *peer
        ae_title: B
        port: 4243
        port: 4244
    """
    # overriding a merged key is fine; writing the same key twice is not; x- keys hold anchors
    assert errors_of(text) == ["t.yaml:8: destinations.b.port: duplicate key 'port' (first at line 7)"]
    config = parse_config_text(textwrap.dedent(text).replace("    port: 4244\n", ""))
    assert (config.destinations["a"].port, config.destinations["b"].port) == (4242, 4243)


def test_alias_bomb_is_linear() -> None:
    lines = ["x-0: &a0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines.append("routes:\n  - {name: r, match: {attribute: Modality, equals: CT}, pipeline: {name: decode, "
                 "options: {big: *a8}}}")
    config = parse_config_text("\n".join(lines) + "\n")  # 10**9 leaves if expanded: must not be
    pipeline = config.routes[0].pipeline
    assert pipeline is not None and len(pipeline.options["big"]) == 10


@pytest.mark.slow
def test_check_config_warns_about_cards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.onnx_factory import make_format_card

    (tmp_path / "model").mkdir()
    card = make_format_card("yolov8", tmp_path / "model", height=64, width=64)  # classes HEAD, CHEST, PELVIS
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.yaml").write_text("name: [unclosed\n")
    config = tmp_path / "node.yaml"
    config.write_text(
        MINIMAL.replace(
            '{card: "builtin:reference"}', f"{{card: {card}}}\n  broken: {{card: broken}}"
        ).replace(
            "detectors: [reference]", "detectors: [{model: reference, classes: [CHEST, SPINE], gate: broken}]"
        )
    )
    assert cli.main(["check-config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: 1 route, 1 destination, 2 models")
    warnings = captured.err.splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: {config}:5: models.broken.card: the card cannot be loaded: ")
    assert "invalid YAML" in warnings[0]
    assert warnings[1] == (
        f"warning: {config}:7: routes[0].pipeline.detectors[0].classes: SPINE not among model 'reference''s "
        "classes (CHEST, HEAD, PELVIS)"
    )


def test_config_backends_match_the_engine() -> None:
    """Every backend the engine can open is accepted in models.<name>.backend, and no other."""
    from inference.backends import BACKENDS
    from nodecore.config_schema import MODEL_BACKENDS

    assert BACKENDS is MODEL_BACKENDS  # one table
    for name in BACKENDS:
        triton = ', triton: {servers: "grpc://127.0.0.1:8001"}' if name == "triton" else ""
        assert parse_config_text(f'models:\n  m: {{card: "builtin:reference", backend: {name}{triton}}}\n').models["m"]
    assert "did you mean 'tensorrt'" in errors_of('models:\n  m: {card: "builtin:reference", backend: tensorrtt}\n')[0]
