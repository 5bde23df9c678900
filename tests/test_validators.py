"""Every object written for every real file and for simulated localizers/radiographs passes the real validators:
dciodvfy (no "Error" line; every object), dsrdump (parses every SR), dcmpschk (every GSPS) and pixelmed
DicomSRValidator (template checks on, no "Error" line except the documented CID 100 quirk, see tests/validators.py)
on one SR per kind of source (``PIXELMED_REAL``, ``PIXELMED_SIMULATED``: it takes 5-10 s per SR).

Real files: labels.json boxes as detections with hand-made measurements (tests/test_sr.py); files without labels
get no detection (a "nothing found" report). The undecodable ``hard_`` file is decoded by dcmtk's dcmdjpeg for the
secondary capture (SR and GSPS need no pixels). Simulated cases use inference.simulator and inference.measure.
"""

from __future__ import annotations

import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.types import Detection
from sr_writer import read_sr, write_results
from tests.conftest import require_tool
from tests.test_sr import CONCEPTS, MODEL, ctx, hand_measurements, labelled_detections
from tests.validators import dciodvfy, dcmpschk, dicom_sr_validator, dsrdump

warnings.filterwarnings("ignore", category=UserWarning)
KINDS = ("sr", "sc", "gsps", "plain_sr")
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")


# pixelmed takes ~5-10 s per SR, so it validates one Comprehensive 3D SR per kind of source, each a different
# shape of TID 1500 tree; dciodvfy and dsrdump still check every SR, and dciodvfy every object. The plain SR (same
# builder, 2D groups only) is validated for one localizer and one radiograph.
PIXELMED_REAL = {
    "loc_philips_MAROTECH_CT_JP2Lossy.dcm": "real CT localizer: 2D + 3D group per region, image group",
    "hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm": "CR with spacing; the undecodable file (its JPLL/JLSL "
                                                       "copies share its SOP Instance UID, hence its SR)",
    "dx_canon_chest_PA_pydicom966_fixed.dcm": "DX: imager spacing, orientation, invalid header values dropped",
    "cr_fuji_chest_CR-MONO1-10-chest.dcm": "CR without geometry: sizes in pixels, one region, no image group",
    "cr_kodak_hand_PA_Kakadu44.dcm": "nothing detected: image group only",
}
PIXELMED_SIMULATED = ("ct_frontal",)  # simulated CT localizer, measurements from inference.measure
PLAIN_SR_CHECKED = ("loc_philips_MAROTECH_CT_JP2Lossy.dcm", "cr_fuji_chest_CR-MONO1-10-chest.dcm")


def balanced(paths: list[Path], n: int) -> list[list[Path]]:
    """``paths`` in ``n`` lists of similar total file size (largest first, each to the lightest list)."""
    bins: list[list[Path]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(paths, key=lambda p: p.stat().st_size, reverse=True):
        i = load.index(min(load))
        bins[i].append(p)
        load[i] += p.stat().st_size
    return bins


def is_sr(path: Path, *, plain: bool) -> bool:
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
    return sop == SR_CLASSES[1] or (plain and sop == SR_CLASSES[0])


def decode(path: Path, tmp_path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    try:
        return ds.pixel_array
    except Exception:  # noqa: BLE001 - fall back to dcmtk's tolerant JPEG decoder, as the node does
        require_tool("dcmdjpeg")
        out = tmp_path / f"decoded_{path.name}"
        subprocess.run(["dcmdjpeg", str(path), str(out)], check=True, capture_output=True)
        return pydicom.dcmread(out).pixel_array


def write_all(ds: Dataset, dets: list[Detection], meas, pixels: np.ndarray, out: Path, stem: str) -> list[Path]:
    paths = []
    for obj in write_results(ds, dets, meas, KINDS, ctx(), pixels=pixels):
        p = out / f"{stem}_{obj.Modality}_{obj.SOPClassUID.rsplit('.', 1)[-1]}.dcm"
        obj.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def simulated_objects(out: Path) -> dict[str, list[Path]]:
    from inference.measure import measure_image
    from inference.simulator.simulate import simulate_case

    paths: dict[str, list[Path]] = {}
    for kind in ("ct_frontal", "ct_lateral", "dx"):
        case = simulate_case(11, kind=kind)
        ds = case.dataset
        dets = [Detection(r.label, CONCEPTS[r.label], 0.9, r.box_px, MODEL) for r in case.truth.regions]
        px = ds.pixel_array
        values = px * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        meas = measure_image(ds, dets, pixels=values)
        written = write_all(ds, dets, meas, px, out, f"sim_{kind}")
        sr = pydicom.dcmread(written[0])
        assert len(read_sr(sr)) == len(dets)  # round trip with the real measurement module too
        paths[kind] = written
    return paths


@pytest.mark.peers
@pytest.mark.slow
def test_all_objects_pass_validators(realdata_files: list[Path], realdata_dir: Path, tmp_path: Path) -> None:
    for tool in ("dciodvfy", "dsrdump", "dcmpschk", "java"):
        require_tool(tool)
    paths: list[Path] = []
    sr_paths: list[Path] = []  # for pixelmed
    assert set(PIXELMED_REAL) <= {f.name for f in realdata_files}
    for f in realdata_files:
        ds = pydicom.dcmread(f)
        dets = labelled_detections(realdata_dir, f.name)
        written = write_all(ds, dets, hand_measurements(ds, dets), decode(f, tmp_path), tmp_path, f.stem)
        paths += written
        if f.name in PIXELMED_REAL:
            sr_paths += [p for p in written if is_sr(p, plain=f.name in PLAIN_SR_CHECKED)]
    sim = simulated_objects(tmp_path)
    for kind, written in sim.items():
        paths += written
        if kind in PIXELMED_SIMULATED:
            sr_paths += [p for p in written if is_sr(p, plain=False)]

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        # pixelmed is slow (~10 s to start, then ~1-15 s per SR growing with its size): two JVMs in parallel, the
        # largest SRs spread between them, while dciodvfy & co. run on the main thread
        futures = [pool.submit(dicom_sr_validator, h) for h in balanced(sr_paths, 2) if h]
        for p in paths:
            sop = pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID
            reports = [dciodvfy(p)]
            if sop in SR_CLASSES:
                reports.append(dsrdump(p))
            if sop == "1.2.840.10008.5.1.4.1.1.11.1":
                reports.append(dcmpschk(p))
            failures += [str(r) for r in reports if not r.ok]
        for fut in futures:
            failures += [str(r) for r in fut.result().values() if not r.ok]
    assert len(sr_paths) == len(PIXELMED_REAL) + len(PIXELMED_SIMULATED) + len(PLAIN_SR_CHECKED)
    assert not failures, "\n\n".join(failures)
