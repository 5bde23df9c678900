"""The reference pipeline (decode -> detect -> measure -> write) with the shipped reference model, as the node runs
it (``config/example.yaml`` routes), without the network:

* simulated CT localizers (truth from the simulator): every visible region found with IoU > 0.5, and the
  isocenter offsets (lateral on frontal views, vertical on lateral views) within the tolerance derived below;
* EVERY real file of ../shared/realdata: no crash; the ``hard_`` file is decoded through dcmtk's dcmdjpeg (or, where
  dcmtk is missing, ends with a clear decode error); images without an anatomy class give a valid SR with few or no
  regions;
* outputs exactly per ``route.outputs``, with deterministic UIDs (processing twice gives the same SOP Instance UIDs,
  those of ``nodecore.uids.result_uids``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from dicom_node.config import load_config
from dicom_node.pipeline import ReceivedObject
from dicom_node.routing import select_route
from dicom_node.workers import result_kind
from inference.types import QuantityKind
from nodecore.config_schema import NodeConfig, Route
from nodecore.uids import result_uids
from tests.conftest import ROOT

# A candidate model can be tried with the same tests: DICOM_NODE_TEST_REFERENCE_CARD=/path/card.yaml
REFERENCE_CARD = os.environ.get("DICOM_NODE_TEST_REFERENCE_CARD", "builtin:reference")
PRESENT_FRACTION = 0.4  # a region counts as visible when this share of its z-extent is in the image (as in training)
# Isocenter offsets. The node's offset is the detected box mapped to mm by the geometry model, so its error has two
# parts: the geometry model's own error, measured here on the EXACT truth box of the same image (0-20 mm on these
# cases: a truncated or asymmetric silhouette's centre is not the 3-D centre; that model is tested in
# tests/test_geometry.py and bench/geometry_accuracy.py), and the detector's box-centre error. The reference model
# sees the scout letterboxed to its input (160 px), so one MODEL pixel is max(rows, columns) / 160 image pixels
# (3-6 mm on these scouts); its box edges land within a few model pixels (frontal views: box-centre error at most
# 3.2 model px, median 0.9, over 34 regions of 9 simulated scouts). We allow 4 model px per region (~13-20 mm) and
# 2 model px for the median: far tighter than IoU > 0.5 (which admits ~40 image px), and enough to catch any error
# of sign, axis, scale or pixel convention (offsets here are 10-60 mm). Only the LATERAL offset of frontal views is
# held to this: on lateral views the model's SPINE box (the narrow column) is up to 10 model px off (vertical
# offsets are printed, not asserted; see the report of the e2e work).
BOX_CENTRE_TOL_MODEL_PX = 4.0
BOX_CENTRE_MEDIAN_TOL_MODEL_PX = 2.0
NO_ANATOMY = ("cr_wg04_RG3_leg_RLE.dcm", "cr_kodak_hand_PA_Kakadu44.dcm")


def example_config(tmp: Path, **route_outputs: list[str]) -> NodeConfig:
    """``config/example.yaml`` with the reference model card (and optionally other outputs per route name)."""
    cfg = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    cfg["models"]["reference"]["card"] = REFERENCE_CARD
    cfg["models"]["reference"]["backend"] = "onnxruntime"
    for route in cfg["routes"]:
        if route["name"] in route_outputs:
            route["outputs"] = route_outputs[route["name"]]
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_config(path, storage_override=tmp / "storage")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> NodeConfig:
    return example_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def pipeline(config: NodeConfig) -> Any:
    from dicom_node.reference_pipeline import ReferencePipeline

    p = ReferencePipeline(config)
    yield p
    p.close()


def received(path: Path) -> ReceivedObject:
    meta = pydicom.filereader.read_file_meta_info(path)
    return ReceivedObject(path, str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID),
                          str(meta.TransferSyntaxUID), "MODALITY")  # fmt: skip


def route_for(config: NodeConfig, path: Path) -> Route:
    """The example config's route for ``path``; limb radiographs (dropped there as out of the model's intended use)
    get the `radiograph` route, so the pipeline is still proven on them."""
    decision = select_route(config, pydicom.dcmread(path, stop_before_pixels=True), "MODALITY")
    assert decision.route is not None, f"{path.name}: no route of the example config matches"
    if decision.route.name == "radiograph-out-of-scope":
        assert path.name in NO_ANATOMY, path.name
        return next(r for r in config.routes if r.name == "radiograph")
    return decision.route


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``inference.types.Box``."""
    ix = max(0.0, min(a.x_max, b.x_max) - max(a.x_min, b.x_min))
    iy = max(0.0, min(a.y_max, b.y_max) - max(a.y_min, b.y_min))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


# ---- simulated localizers: regions and offsets against the simulator's truth ---------------------------------------

SIM_CASES = [  # (seed, kind, shift_mm): off-centre in both directions, several vendor profiles
    (4_100_001, "ct_frontal", (35.0, -25.0)),
    (4_100_002, "ct_frontal", (-40.0, 20.0)),
    (4_100_003, "ct_frontal", (10.0, 40.0)),
    (4_100_004, "ct_frontal", (-15.0, -35.0)),
    (4_100_005, "ct_lateral", (30.0, -30.0)),
    (4_100_006, "ct_lateral", (-20.0, 35.0)),
]


def offset_axis(kind: str) -> tuple[int, QuantityKind]:
    """Which offset a view measures: frontal: x (lateral) runs across the image; lateral: y (vertical, AP) does."""
    return (0, QuantityKind.ISO_OFFSET_LATERAL) if kind == "ct_frontal" else (1, QuantityKind.ISO_OFFSET_VERTICAL)


def exact_box_offsets(case: Any, settings: Any = None) -> dict[str, float]:
    """Label -> the isocenter offset (mm) the geometry model gives for the simulator's EXACT box of each region."""
    from inference.measure import measure_image
    from inference.preprocessing import modality_pixels, stored_pixels
    from inference.types import CodedConcept, Detection, ModelIdentity

    ds = case.dataset
    dets = [Detection(r.label, CodedConcept("0", "99TEST", r.label), 1.0, r.box_px, ModelIdentity("truth", "0"))
            for r in case.truth.regions]  # fmt: skip
    extra = {} if settings is None else {"settings": settings}
    m = measure_image(ds, dets, pixels=modality_pixels(ds, stored_pixels(ds)), **extra)
    _, qkind = offset_axis(case.truth.kind)
    out = {}
    for rm in m.regions:
        q = rm.get(qkind)
        if q is not None and np.isfinite(q.value):
            out[rm.detection.label] = float(q.value)
    return out


def box_centre_tolerance_mm(ds: Any, model_input: int, model_px: float = BOX_CENTRE_TOL_MODEL_PX) -> float:
    """``model_px`` model-input pixels in mm along the image columns (x) of ``ds`` (letterboxed to ``model_input``)."""
    return model_px * max(int(ds.Rows), int(ds.Columns)) / model_input * float(ds.PixelSpacing[1])


@pytest.mark.slow
def test_simulated_localizers_regions_and_isocenter_offsets(config: NodeConfig, pipeline: Any, tmp_path: Path) -> None:
    from inference.simulator import simulate_case, write_case

    model_input = pipeline.pool.card("reference").input.width
    found, missed, centre_model_px, report = [], [], [], []
    for seed, kind, shift in SIM_CASES:
        case = simulate_case(seed, kind=kind, shift_mm=shift)
        path, _ = write_case(case, tmp_path)
        route = route_for(config, path)
        assert route.name == "ct-localizer"
        outcome = pipeline.process(received(path), route)
        assert not outcome.errors, outcome.errors
        assert outcome.measurements is not None
        assert outcome.summary["regions"] and outcome.summary["detect_ms"] > 0
        by_label = {rm.detection.label: rm for rm in outcome.measurements.regions}
        exact = exact_box_offsets(case, config.measurement)
        axis, qkind = offset_axis(kind)
        one_model_px_mm = box_centre_tolerance_mm(case.dataset, model_input, 1.0)
        for truth in case.truth.regions:
            if truth.visible_fraction < PRESENT_FRACTION:
                continue
            rm = by_label.get(truth.label)
            overlap = iou(rm.detection.box, truth.box_px) if rm is not None else 0.0
            where = (seed, kind, truth.label, round(overlap, 2))
            if overlap <= 0.5:
                missed.append(where)
                continue
            found.append(where)
            assert rm is not None and truth.iso_offset_mm is not None
            q = rm.get(qkind)
            assert q is not None and np.isfinite(q.value), (where, "no isocenter offset measured", rm.unavailable)
            assert q.unit == "mm"
            true_mm = truth.iso_offset_mm[axis]
            geometry_error = exact[truth.label] - true_mm
            box_part = q.value - exact[truth.label]  # how far the detected box moves the offset from the exact box's
            report.append(f"{seed} {kind} {truth.label} {qkind.value}: found {q.value:+.1f} true {true_mm:+.1f} mm "
                          f"(error {q.value - true_mm:+.1f} = geometry {geometry_error:+.1f} + box {box_part:+.1f} "
                          f"= {box_part / one_model_px_mm:+.1f} model px)")
            if kind == "ct_frontal":
                centre_model_px.append(abs(box_part) / one_model_px_mm)
                assert abs(q.value - true_mm) <= abs(geometry_error) + BOX_CENTRE_TOL_MODEL_PX * one_model_px_mm, \
                    report[-1]  # fmt: skip
    print("\n".join(report))
    assert len(found) + len(missed) >= 15, "too few visible regions to judge"
    assert not missed, f"visible regions not found with IoU > 0.5: {missed}; found: {found}"
    assert len(centre_model_px) >= 10
    median = float(np.median(centre_model_px))
    assert median <= BOX_CENTRE_MEDIAN_TOL_MODEL_PX, (median, report)


# ---- every real file ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_real_file(config: NodeConfig, pipeline: Any, realdata_files: list[Path], tmp_path: Path) -> None:
    from sr_writer import read_sr
    from tests.validators import dciodvfy, dsrdump

    has_dcmdjpeg = shutil.which("dcmdjpeg") is not None
    checked = 0
    for path in realdata_files:
        route = route_for(config, path)
        outcome = pipeline.process(received(path), route)
        summary = outcome.summary
        if path.name.startswith("hard_") and not has_dcmdjpeg:
            assert outcome.errors and not outcome.datasets, path.name
            assert "could not be decoded" in outcome.errors[0], outcome.errors
            continue
        assert not outcome.errors, (path.name, outcome.errors)
        kinds = [result_kind(ds) for ds in outcome.datasets]
        assert kinds == ["sr", "sc", "gsps", "plain_sr"], (path.name, kinds)
        for key in ("decode_ms", "detect_ms", "measure_ms", "write_ms"):
            assert summary[key] >= 0.0, (path.name, summary)
        sr = outcome.datasets[0]
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.get("PatientID", "")
        regions = read_sr(sr)
        assert sorted(r.label for r in regions) == sorted(d.label for d in outcome.detections), path.name
        if path.name in NO_ANATOMY or path.name.startswith("hard_"):  # validate these SRs with dcmtk/dicom3tools
            out = tmp_path / f"sr_{path.stem}.dcm"
            sr.save_as(out, enforce_file_format=True)
            for report in (dciodvfy(out), dsrdump(out)):
                assert report.ok, (path.name, str(report))
            checked += 1
    assert checked == len(NO_ANATOMY) + (1 if has_dcmdjpeg else 0)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known limit of reference model 1.0.0 (docs/MODEL_CARD.md): trained on simulated trunk and head images only, it "
    "reports 4 regions (score 0.68-1.0) on the lower-leg and on the hand radiograph; a model that passes this "
    "(e.g. trained with extremity negatives) makes this test XPASS, which fails: then remove this mark."))
def test_images_without_an_anatomy_class_give_few_regions(
    config: NodeConfig, pipeline: Any, realdata_dir: Path
) -> None:
    """A lower leg and a hand contain none of HEAD/SPINE/CHEST/ABDOMEN/PELVIS: at most 2 (false) regions each."""
    found = {}
    for name in NO_ANATOMY:
        path = realdata_dir / name
        outcome = pipeline.process(received(path), route_for(config, path))
        assert not outcome.errors and outcome.datasets, (name, outcome.errors)
        found[name] = [(d.label, round(d.score, 2)) for d in outcome.detections]
    assert all(len(v) <= 2 for v in found.values()), found


# ---- outputs per route and deterministic UIDs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "outputs", [("sr",), ("sc", "gsps"), ("plain_sr",), ("sr", "sc", "gsps", "plain_sr")], ids="+".join
)
def test_outputs_follow_the_route_and_uids_are_deterministic(
    config: NodeConfig, pipeline: Any, realdata_dir: Path, outputs: tuple[str, ...]
) -> None:
    path = realdata_dir / "loc_philips_surview_fodicom_GH342.dcm"
    route = dataclasses.replace(route_for(config, path), outputs=frozenset(outputs))
    first = pipeline.process(received(path), route)
    second = pipeline.process(received(path), route)
    assert not first.errors and not second.errors
    order = [k for k in ("sr", "sc", "gsps", "plain_sr") if k in outputs]
    assert [result_kind(ds) for ds in first.datasets] == order
    uids = [str(ds.SOPInstanceUID) for ds in first.datasets]
    assert uids == [str(ds.SOPInstanceUID) for ds in second.datasets]
    assert [str(ds.SeriesInstanceUID) for ds in first.datasets] == [str(ds.SeriesInstanceUID) for ds in second.datasets]
    source_uid = received(path).sop_instance_uid
    version = pipeline.pool.card("reference").version
    assert uids == [result_uids(source_uid, version, k)["SOPInstanceUID"] for k in order]
    assert len(set(uids)) == len(uids) and source_uid not in uids
