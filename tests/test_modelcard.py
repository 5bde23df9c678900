"""Model cards: a valid card loads; every malformed card and a swapped weights file are refused at load time
with file:line and the key; the example cards in docs/MODELS.md are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from inference.modelcard import ModelCardError, load_card, parse_card
from inference.types import CodedConcept, ModelIdentity
from tests import onnx_factory as factory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"not really onnx, but hashed all the same")
    return p


def _write(tmp_path: Path, data: dict) -> Path:
    return factory.write_card(tmp_path, data)


def test_valid_card_loads(tmp_path: Path, weights: Path) -> None:
    data = factory.card_dict(weights, "yolov8", metrics={"mAP50_95": 0.61, "AP50": {"CHEST": 0.97}})
    card = load_card(_write(tmp_path, data))
    assert card.name == "test-yolov8" and card.version == "0.0.1"
    assert card.weights == weights.resolve()
    assert card.class_names == ("HEAD", "CHEST", "PELVIS")
    assert card.classes[1].finding_site == CodedConcept("816094009", "SCT", "Chest")
    assert card.input.height == 320 and card.input.channels == 1 and card.input.layout == "NCHW"
    assert [s.op for s in card.preprocessing] == ["voi", "letterbox"]
    assert card.output_format == "yolov8" and card.output.label_offset == 0
    assert card.metrics["AP50"]["CHEST"] == 0.97
    assert card.intended.modalities == ("CT", "CR", "DX")
    assert card.identity() == ModelIdentity(
        "test-yolov8", "0.0.1", "Artificial Intelligence", factory.sha256(weights)
    )
    # a directory holding card.yaml is accepted too
    assert load_card(tmp_path).name == card.name


def test_torchvision_formats_default_to_background_offset(tmp_path: Path, weights: Path) -> None:
    for fmt, offset in (("faster_rcnn", 1), ("ssd", 1), ("retinanet", 1), ("yolov5", 0)):
        card = load_card(_write(tmp_path, factory.card_dict(weights, fmt)))
        assert card.output.label_offset == offset, fmt
    card = load_card(_write(tmp_path, factory.card_dict(weights, "yolov4")))
    assert card.output.normalized  # darknet boxes are normalised to [0, 1]


def test_weights_hash_mismatch_refused_at_load(tmp_path: Path, weights: Path) -> None:
    path = _write(tmp_path, factory.card_dict(weights, "yolov8"))
    weights.write_bytes(b"swapped weights")
    with pytest.raises(ModelCardError) as info:
        load_card(path)
    msg = str(info.value)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("weights_sha256"))
    assert msg.startswith(f"{path}:{line}: weights_sha256: SHA-256 mismatch for model.onnx")
    assert factory.sha256(weights) in msg


def test_missing_weights_file(tmp_path: Path, weights: Path) -> None:
    path = _write(tmp_path, factory.card_dict(weights, "yolov8"))
    weights.unlink()
    with pytest.raises(ModelCardError, match=r"weights: weights file not found"):
        load_card(path)


def _mutate(data: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

BAD_CARDS = [
    ("name", _DELETE, r"name: required key missing"),
    ("colour", "blue", r"colour: unknown key"),
    ("classes", [], r"classes: expected a non-empty list"),
    ("classes.1.finding_site.code", "chest", r"classes\.1\.finding_site\.code: SNOMED CT codes are digits"),
    ("classes.1.finding_site", _DELETE, r"classes\.1\.finding_site: required key missing"),
    ("classes.2.name", "HEAD", r"classes\.2\.name: duplicate class name 'HEAD'"),
    ("input.channels", 2, r"input\.channels: expected 1 or 3"),
    ("input.height", 4, r"input\.height: 4 out of range"),
    ("input.width", "wide", r"input\.width: expected an integer"),
    ("input.layout", "CHWN", r"input\.layout: expected NCHW or NHWC"),
    ("output_format", "yolov99", r"output_format: unknown output format 'yolov99'"),
    ("score_threshold", 1.5, r"score_threshold: 1\.5 out of range"),
    ("nms_iou", True, r"nms_iou: expected a number"),
    ("max_detections_per_class", 0, r"max_detections_per_class: 0 out of range"),
    ("weights_sha256", "abc", r"weights_sha256: expected 64 hexadecimal digits"),
    ("preprocessing.0", {"sharpen": {}}, r"preprocessing\.0: unknown preprocessing op 'sharpen'"),
    ("preprocessing.0", {"voi": {"mode": "magic"}}, r"preprocessing\.0\.voi\.mode: unknown VOI mode 'magic'"),
    (
        "preprocessing.0",
        {"voi": {"mode": "percentile", "low": 90, "high": 10}},
        r"low percentile 90 must be below",
    ),
    ("preprocessing.0", {"voi": {"window": 3}}, r"preprocessing\.0\.voi\.window: unknown key"),
    ("preprocessing.0", {"normalize": {"mean": [0.5]}}, r"normalize must be the last step"),
    ("preprocessing.0", {"resize": {}}, r"at most one of resize/letterbox"),
    ("preprocessing.1", {"letterbox": {"interpolation": "lanczos9"}}, r"unknown interpolation 'lanczos9'"),
    ("preprocessing.1", {"letterbox": {}, "resize": {}}, r"a step is a name or a one-key mapping"),
    ("gate", {"model": "gate", "threshold": 2}, r"gate\.threshold: 2 out of range"),
    ("intended.modalities", [1, 2], r"intended\.modalities: expected a list of non-empty strings"),
]


@pytest.mark.parametrize(
    ("key", "value", "pattern"), BAD_CARDS, ids=[b[0] + ":" + b[2][:24] for b in BAD_CARDS]
)
def test_malformed_card_refused_with_line(
    tmp_path: Path, weights: Path, key: str, value: object, pattern: str
) -> None:
    data = factory.card_dict(weights, "yolov8")
    _mutate(data, key, value)
    path = _write(tmp_path, data)
    with pytest.raises(ModelCardError) as info:
        load_card(path)
    msg = str(info.value)
    assert re.search(pattern, msg), msg
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", msg)
    assert m, f"no file:line prefix in {msg!r}"
    assert 1 <= int(m.group(1)) <= len(path.read_text().splitlines())


def test_line_number_points_at_the_key(tmp_path: Path, weights: Path) -> None:
    data = factory.card_dict(weights, "yolov8")
    data["input"]["channels"] = 4
    path = _write(tmp_path, data)
    line = next(
        i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip().startswith("channels:")
    )
    with pytest.raises(ModelCardError, match=rf":{line}: input\.channels: expected 1 or 3, got 4"):
        load_card(path)


def test_invalid_yaml_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "card.yaml"
    p.write_text("name: x\nclasses: [a, b\nversion: 1\n")
    with pytest.raises(ModelCardError, match=r"card\.yaml:\d+: invalid YAML"):
        load_card(p)
    p.write_text("")
    with pytest.raises(ModelCardError, match=r"card\.yaml:1: empty model card"):
        load_card(p)
    with pytest.raises(ModelCardError, match=r"model card not found"):
        load_card(tmp_path / "nope.yaml")


def test_builtin_unknown_lists_known() -> None:
    with pytest.raises(
        ModelCardError, match=r"builtin:no-such-model: no builtin model 'no-such-model' \(known: "
    ):
        load_card("builtin:no-such-model")
    with pytest.raises(ModelCardError, match=r"invalid builtin model name"):
        load_card("builtin:../etc")


def test_builtin_reference_card_is_shipped() -> None:
    card = load_card("builtin:reference")
    assert {"HEAD", "CHEST", "ABDOMEN", "PELVIS"} <= set(card.class_names)


def test_docs_example_cards_are_valid() -> None:
    """Every ```yaml block of docs/MODELS.md that is a card parses (weights not checked: examples)."""
    text = (ROOT / "docs" / "MODELS.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    cards = [yaml.safe_load(b) for b in blocks]
    cards = [c for c in cards if isinstance(c, dict) and "output_format" in c]
    assert len(cards) >= 4, "expected the example cards (YOLOv4, RetinaNet, fracture gate + heavy)"
    formats = set()
    for c in cards:
        card = parse_card(c, ROOT / "docs" / "examples" / "card.yaml", check_weights=False)
        formats.add(card.output_format)
    assert {"yolov4", "retinanet"} <= formats
    assert any(c.get("gate") for c in cards), "the fracture cascade example names its gate"
    assert any("equalize_histogram" in str(c.get("preprocessing")) for c in cards)
