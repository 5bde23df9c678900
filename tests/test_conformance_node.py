"""End to end through a running node (issue 19): the three faulty localizers of the issue, derived from the real
Philips surview of ../shared/realdata, sent with dcmtk's storescu to `dicom-node serve` (config/example.yaml, the
shipped model) and on to Orthanc: each job ends in results, not an error.

* an AP topogram whose anonymiser removed FrameOfReferenceUID: SR with the 2-D regions, no SCOORD3D, and the note;
* a scanogram whose Specific Character Set is present but empty: results, the note in the SR;
* a lateral scanogram stored rotated (rows [0, 0, -1], columns [0, 1, 0]: head on the image's left): the CHEST box
  lies towards the head (smaller column) of the PELVIS box in the stored pixels, not over it.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.jobqueue import JobQueue
from inference.orientation import Orientation
from inference.preprocessing import stored_pixels
from nodecore.uids import result_uids
from tests.conformance import _write, restore
from tests.node_process import NodeProcess, node, storescu  # noqa: F401
from tests.orthanc import Orthanc, orthanc  # noqa: F401
from tests.test_e2e_orthanc import REFERENCE_CARD, _get_bytes, example_config_text

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _faulty_localizers(realdata_dir: Path, out: Path) -> dict[str, Path]:
    src = pydicom.dcmread(realdata_dir / "loc_philips_surview_fodicom_GH342.dcm")
    pixels = stored_pixels(src)
    base = restore(src, Orientation(), pixels)
    files: dict[str, Path] = {}

    no_frame = restore(base, Orientation(), pixels)
    no_frame.Manufacturer = "SIEMENS"
    del no_frame.FrameOfReferenceUID
    files["no_frame"] = out / "no_frame.dcm"
    _write(no_frame, files["no_frame"], str(src.SOPInstanceUID), "node:no_frame")

    empty_charset = restore(base, Orientation(), pixels)
    empty_charset.Manufacturer = "TOSHIBA"
    empty_charset.SpecificCharacterSet = ""
    files["empty_charset"] = out / "empty_charset.dcm"
    _write(empty_charset, files["empty_charset"], str(src.SOPInstanceUID), "node:empty_charset")

    lateral = restore(base, Orientation(), pixels)  # relabelled as a lateral (P\F), then stored transposed
    n, step = int(src.Columns), float(src.PixelSpacing[1])
    lateral.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    lateral.ImagePositionPatient = [0, -(n // 2) * step, float(src.ImagePositionPatient[2])]
    lateral.Manufacturer = "TOSHIBA"
    rotated = restore(lateral, Orientation(True, False, False), pixels)
    assert [float(v) for v in rotated.ImageOrientationPatient] == [0, 0, -1, 0, 1, 0]
    files["rotated_lateral"] = out / "rotated_lateral.dcm"
    _write(rotated, files["rotated_lateral"], str(src.SOPInstanceUID), "node:rotated_lateral")
    return files


def test_faulty_localizers_end_in_results_through_a_running_node(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path, realdata_dir: Path  # noqa: F811
) -> None:
    from inference.modelcard import load_card
    from sr_writer import read_image_notes, read_sr

    (tmp_path / "in").mkdir()
    files = _faulty_localizers(realdata_dir, tmp_path / "in")
    node.write_config(example_config_text(node.port, node.storage, orthanc.dicom_port))
    node.start(timeout_s=300)
    sent = storescu(node.port, list(files.values()), called="DICOMNODE", calling="CT1")
    assert sent.returncode == 0 and len(sent.succeeded) == len(files), sent.output[-2000:]

    expected = 4 * len(files)  # sr, sc, gsps, plain_sr each
    deadline = time.monotonic() + 180
    while orthanc.count() < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    jobs = JobQueue(node.storage / "queue.sqlite3").recent_jobs(10)
    assert sorted(j.status for j in jobs) == ["done"] * len(files), [(j.status, j.error) for j in jobs]
    assert orthanc.count() == expected, node.log()[-3000:]

    version = load_card(REFERENCE_CARD).version
    srs = {}
    for name, path in files.items():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        ids = orthanc.find_instance(result_uids(uid, version, "sr")["SOPInstanceUID"])
        assert len(ids) == 1, name
        srs[name] = pydicom.dcmread(io.BytesIO(_get_bytes(orthanc, f"/instances/{ids[0]}/file")))

    regions = read_sr(srs["no_frame"])
    assert regions and all(r.box is not None and r.polygon_lps_mm is None for r in regions)
    assert any("Frame of Reference UID (0020,0052) absent" in n for n in read_image_notes(srs["no_frame"]))

    assert read_sr(srs["empty_charset"])
    assert any("present but empty" in n for n in read_image_notes(srs["empty_charset"]))

    by_label = {r.label: r for r in read_sr(srs["rotated_lateral"])}
    assert {"CHEST", "PELVIS"} <= set(by_label), sorted(by_label)
    chest, pelvis = by_label["CHEST"].box, by_label["PELVIS"].box
    assert chest is not None and pelvis is not None
    # stored rotated: the head is at column 0, so the chest lies at smaller columns than the pelvis
    assert chest.center[0] < pelvis.center[0], (chest, pelvis)
    assert by_label["CHEST"].polygon_lps_mm is not None and by_label["PELVIS"].polygon_lps_mm is not None
    chest_z = max(p[2] for p in by_label["CHEST"].polygon_lps_mm)
    pelvis_z = max(p[2] for p in by_label["PELVIS"].polygon_lps_mm)
    assert chest_z > pelvis_z  # and superior in the patient frame
    assert node.stop() == 0
