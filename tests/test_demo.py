"""`dicom-node demo` as a user runs it: a real node process, the embedded PACS stand-in, a simulated localizer with
a known off-centre shift; the printed table (regions, found vs true isocenter offsets) and the PNG are checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

REFERENCE_CARD = os.environ.get("DICOM_NODE_TEST_REFERENCE_CARD", "builtin:reference")
CLASSES = ("HEAD", "SPINE", "CHEST", "ABDOMEN", "PELVIS")
PRESENT_FRACTION = 0.4
# Found vs true lateral offset: within the geometry model's own error on the exact box plus the detector's box-centre
# allowance (justified in tests/test_reference_pipeline.py).


def run_demo(out: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dicom_node.cli", "demo", "--out", str(out), *extra]
    if REFERENCE_CARD != "builtin:reference":  # trying a candidate model: the example config with its card
        cfg = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
        cfg["models"]["reference"]["card"] = REFERENCE_CARD
        (tmp / "demo.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd += ["--config", str(tmp / "demo.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def parse_table(stdout: str) -> dict[str, list[str]]:
    """Rows of the printed table: label -> the other columns as printed."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("region ") and "lat off" in line)
    assert set(lines[start + 1]) == {"-"}, lines[start + 1]
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if line.startswith("offsets:"):
            break
        label, *cols = line.split()
        rows[label] = cols
    return rows


def test_demo_prints_regions_offsets_and_writes_the_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_demo(out, tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    text = proc.stdout
    assert "node ready (models loaded and warm)" in text
    assert re.search(r"results in the PACS: 4 objects; SR \d+ ms after the C-STORE started", text), text

    from inference.simulator import SimCase, SimTruth
    from tests.test_reference_pipeline import box_centre_tolerance_mm, exact_box_offsets

    truth = json.loads(next(out.glob("sim_*_ct_frontal.json")).read_text())
    case = SimCase(pydicom.dcmread(next(out.glob("sim_*_ct_frontal.dcm"))), SimTruth.from_json_dict(truth))
    exact = exact_box_offsets(case)
    from inference.modelcard import load_card

    tolerance = box_centre_tolerance_mm(case.dataset, load_card(REFERENCE_CARD).input.width)
    visible = {r["label"]: r for r in truth["regions"] if r["visible_fraction"] >= PRESENT_FRACTION}
    rows = parse_table(text)
    assert set(rows) <= set(CLASSES), rows
    assert set(visible) <= set(rows), f"visible regions {sorted(visible)} but the table has {sorted(rows)}"
    # columns: score%, width mm, height mm, area cm2, lat off, true, vert off(*), true, Dw cm, SSDE f
    for label, r in visible.items():
        cols = rows[label]
        score, width, height = float(cols[0]), float(cols[1]), float(cols[2])
        assert 0 < score <= 100 and width > 50 and height > 50, (label, cols)
        found_lat, true_lat = float(cols[4]), float(cols[5])
        assert true_lat == pytest.approx(r["iso_offset_mm"][0], abs=0.05), (label, cols)  # the truth as printed
        geometry_error = abs(exact[label] - r["iso_offset_mm"][0])
        assert abs(found_lat - true_lat) <= geometry_error + tolerance, (label, found_lat, true_lat, exact)
    assert "offsets: region centre minus isocenter" in text

    png = out / "demo_secondary_capture.png"
    sc = pydicom.dcmread(out / "result_OT_Secondary_Capture_Image_Storage.dcm")
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (sc.Columns, sc.Rows)
        arr = np.asarray(im).astype(np.int16)
    assert arr.std() > 20, "blank image"
    assert np.array_equal(arr, np.asarray(sc.pixel_array, dtype=np.int16)), "PNG differs from the SC sent"
    coloured = np.abs(arr[..., 0] - arr[..., 1]) + np.abs(arr[..., 1] - arr[..., 2]) > 60
    assert coloured.sum() > 500, "no coloured annotation (boxes, labels) drawn"
    assert (out / "node.log").is_file()
