"""Every object written for every real file and for simulated localizers/radiographs passes the real validators:
dciodvfy (no "Error" line), dsrdump (parses the SRs), pixelmed DicomSRValidator (template checks on, no "Error"
line except the documented CID 100 quirk, see tests/validators.py) and dcmpschk (GSPS).

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


# pixelmed takes ~5 s per SR: every Comprehensive 3D SR is validated, the plain SR (same builder, 2D groups only)
# for one localizer and one radiograph with a single region.
PLAIN_SR_CHECKED = ("loc_philips_MAROTECH_CT_JP2Lossy.dcm", "cr_fuji_chest_CR-MONO1-10-chest.dcm")


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


def simulated_objects(out: Path) -> list[Path]:
    try:
        from inference.measure import measure_image
        from inference.simulator.simulate import simulate_case
    except ImportError as exc:
        pytest.skip(f"simulator or measure_image not available in this checkout: {exc}")
    paths = []
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
        paths += written
    return paths


@pytest.mark.peers
@pytest.mark.slow
def test_all_objects_pass_validators(realdata_files: list[Path], realdata_dir: Path, tmp_path: Path) -> None:
    for tool in ("dciodvfy", "dsrdump", "dcmpschk", "java"):
        require_tool(tool)
    paths: list[Path] = []
    validated_sr_sources: set[str] = set()
    sr_paths: list[Path] = []
    for f in realdata_files:
        ds = pydicom.dcmread(f)
        dets = labelled_detections(realdata_dir, f.name)
        written = write_all(ds, dets, hand_measurements(ds, dets), decode(f, tmp_path), tmp_path, f.stem)
        paths += written
        if ds.SOPInstanceUID not in validated_sr_sources:  # the RG2 copies share one SOP Instance UID
            validated_sr_sources.add(ds.SOPInstanceUID)
            sr_paths += [p for p in written if is_sr(p, plain=f.name in PLAIN_SR_CHECKED)]
    sim = simulated_objects(tmp_path)
    paths += sim
    sr_paths += [p for p in sim if is_sr(p, plain=False)]

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        # pixelmed is slow (~5 s per SR): two JVMs in parallel, while dciodvfy & co. run on the main thread
        halves = [sr_paths[0::2], sr_paths[1::2]]
        futures = [pool.submit(dicom_sr_validator, h) for h in halves if h]
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
    assert len(sr_paths) >= 8 + 2
    assert not failures, "\n\n".join(failures)
