"""Frontal + lateral localizers of one Frame of Reference, remembered on disk and combined into measured offsets."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import apply_modality_lut

from bench.geometry_accuracy import simulator_settings
from inference.measure import measure_image
from inference.types import CodedConcept, Detection, ModelIdentity
from inference.types import QuantityKind as K
from inference.views import ViewStore, combine_with_stored

MODEL = ModelIdentity("truth", "1")


@pytest.fixture(scope="module")
def measured_pair():
    from inference.simulator import simulate_pair

    frontal, lateral = simulate_pair(4242, (35.0, -25.0), profile="siemens", size=256,
                                     randomize={"protocol": "chest_abdomen_pelvis", "roll_deg": 0.0, "yaw_deg": 0.0})
    settings = simulator_settings()
    out = []
    for case in (frontal, lateral):
        ds = case.dataset
        px = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        dets = [Detection(r.label, CodedConcept("0", "99TEST", r.label), 1.0, r.box_px, MODEL)
                for r in case.truth.regions]
        out.append(measure_image(ds, dets, pixels=px, settings=settings))
    return frontal.truth, out[0], out[1]


def _chest(m):
    return next(r for r in m.regions if r.detection.label == "CHEST")


@pytest.mark.parametrize("order", ["frontal_first", "lateral_first"])
def test_second_view_gets_measured_3d_offsets(measured_pair, tmp_path: Path, order: str) -> None:
    truth, fm, lm = measured_pair
    first, second = (fm, lm) if order == "frontal_first" else (lm, fm)
    store = ViewStore(tmp_path)
    same, combined = combine_with_stored(first, store)
    assert combined is None and same is first  # nothing to combine with yet
    merged, combined = combine_with_stored(second, store)
    assert combined is not None
    tx, ty = truth.region("CHEST").iso_offset_mm
    chest = _chest(merged)
    lat, vert = chest.get(K.ISO_OFFSET_LATERAL), chest.get(K.ISO_OFFSET_VERTICAL)
    assert lat.value == pytest.approx(tx, abs=0.5) and vert.value == pytest.approx(ty, abs=0.5)
    assert not vert.estimated and "lateral" in vert.method  # measured from both views, not the frontal estimate
    assert chest.get(K.EFFECTIVE_DIAMETER) is not None
    assert K.ISO_OFFSET_VERTICAL not in dict(chest.unavailable)
    assert any("combined with the" in n and first.sop_instance_uid in n for n in merged.notes)
    # every region keeps its detection and its own other quantities (box size, area)
    assert [r.detection for r in merged.regions] == [r.detection for r in second.regions]
    assert chest.get(K.ELLIPSE_AREA) == _chest(second).get(K.ELLIPSE_AREA)


def test_frontal_alone_keeps_its_estimate(measured_pair, tmp_path: Path) -> None:
    _, fm, _ = measured_pair
    vert = _chest(fm).get(K.ISO_OFFSET_VERTICAL)
    assert vert is not None and vert.estimated  # single frontal view: flagged estimate


def test_old_or_foreign_views_are_not_combined(measured_pair, tmp_path: Path) -> None:
    _, fm, lm = measured_pair
    store = ViewStore(tmp_path, max_age_s=60)
    combine_with_stored(fm, store)
    stored = next(tmp_path.glob("*/frontal.pickle"))
    old = time.time() - 120
    os.utime(stored, (old, old))
    assert combine_with_stored(lm, store)[1] is None  # the frontal is too old
    assert store.prune() == 1 and not list(tmp_path.glob("*/frontal.pickle"))  # and is pruned
    other_for = replace(fm, frame_of_reference_uid="1.2.3.4")
    store2 = ViewStore(tmp_path / "b")
    combine_with_stored(other_for, store2)
    assert combine_with_stored(lm, store2)[1] is None  # another Frame of Reference


def test_unreadable_stored_view_is_ignored(measured_pair, tmp_path: Path) -> None:
    _, fm, lm = measured_pair
    store = ViewStore(tmp_path)
    combine_with_stored(fm, store)
    next(tmp_path.glob("*/frontal.pickle")).write_bytes(b"not a pickle")
    merged, combined = combine_with_stored(lm, store)
    assert combined is None and merged is lm
