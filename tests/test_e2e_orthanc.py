"""End to end with real peers: dcmtk storescu (the CT scanner) -> `dicom-node serve` with config/example.yaml (ports,
storage and the ``pacs`` destination rewritten to loopback; the shipped reference model) -> Orthanc (the PACS).

A simulated frontal localizer with a known off-centre shift and the real CT localizers are sent; the SR, SC, GSPS and
plain SR of each arrive in Orthanc under the source's patient and study (checked through Orthanc's REST API); the SR
read back from Orthanc has the regions with mm measurements, and the simulated localizer's isocenter lateral
offsets agree with the simulator's truth.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pydicom
import pytest
import yaml

from dicom_node.jobqueue import JobQueue
from inference.types import QuantityKind
from nodecore.uids import result_uids
from tests.conftest import ROOT
from tests.node_process import NodeProcess, node, storescu  # noqa: F401
from tests.orthanc import Orthanc, orthanc  # noqa: F401

pytestmark = [pytest.mark.peers, pytest.mark.slow]

REFERENCE_CARD = os.environ.get("DICOM_NODE_TEST_REFERENCE_CARD", "builtin:reference")
PRESENT_FRACTION = 0.4
KIND_CLASS = {
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR (TID 1500)
    "sc": "1.2.840.10008.5.1.4.1.1.7",
    "gsps": "1.2.840.10008.5.1.4.1.1.11.1",
    "plain_sr": "1.2.840.10008.5.1.4.1.1.88.33",
}
LOCALIZERS = ("loc_philips_MAROTECH_CT_JP2Lossy.dcm", "loc_philips_surview_fodicom_GH342.dcm")


def example_config_text(port: int, storage: Path, pacs_port: int) -> str:
    """config/example.yaml with loopback ports, the test's storage and Orthanc as ``pacs`` (nothing else changed
    but the retry delay, so a slow Orthanc start costs 0.5 s, not 2 s)."""
    cfg = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    cfg["node"].update({"bind": "127.0.0.1", "port": port, "storage": str(storage)})
    cfg["destinations"]["pacs"].update({"host": "127.0.0.1", "port": pacs_port})
    cfg["destinations"]["pacs"]["retry"]["initial_delay_s"] = 0.5
    cfg["models"]["reference"]["card"] = REFERENCE_CARD
    return yaml.safe_dump(cfg, sort_keys=False)


def test_results_arrive_in_orthanc_under_the_source_study(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path, realdata_dir: Path  # noqa: F811
) -> None:
    from inference.modelcard import load_card
    from inference.simulator import simulate_case, write_case
    from sr_writer import read_sr
    from tests.test_reference_pipeline import box_centre_tolerance_mm, exact_box_offsets

    version = load_card(REFERENCE_CARD).version
    case = simulate_case(4_200_001, kind="ct_frontal", shift_mm=(30.0, -20.0))
    sim_path, _ = write_case(case, tmp_path / "sim")
    sources = [sim_path] + [realdata_dir / name for name in LOCALIZERS]

    node.write_config(example_config_text(node.port, node.storage, orthanc.dicom_port))
    node.start(timeout_s=300)
    sent = storescu(node.port, sources, called="DICOMNODE", calling="CT1")
    assert sent.returncode == 0 and len(sent.succeeded) == len(sources), sent.output[-2000:]

    expected = 4 * len(sources)  # forward_original is false on the ct-localizer route: only results
    deadline = time.monotonic() + 180
    while orthanc.count() < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    queue = JobQueue(node.storage / "queue.sqlite3")
    jobs = queue.recent_jobs(10)
    assert orthanc.count() == expected, ([(j.status, j.error, j.summary.get("results")) for j in jobs],
                                         node.log()[-3000:])
    assert sorted(j.status for j in jobs) == ["done"] * len(sources)
    assert all(j.summary["route"] == "ct-localizer" for j in jobs)

    for path in sources:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        for kind, sop_class in KIND_CLASS.items():
            uid = result_uids(str(src.SOPInstanceUID), version, kind)["SOPInstanceUID"]
            ids = orthanc.find_instance(uid)
            assert len(ids) == 1, (path.name, kind, "not in Orthanc")
            tags = orthanc.tags(ids[0])
            assert tags["SOPClassUID"] == sop_class, (path.name, kind)
            assert tags["PatientID"] == str(src.get("PatientID", "")), (path.name, kind)
            assert tags["StudyInstanceUID"] == str(src.StudyInstanceUID), (path.name, kind)
            study = orthanc.study_of(ids[0])  # filed by Orthanc under the source's study
            assert study["MainDicomTags"]["StudyInstanceUID"] == str(src.StudyInstanceUID)
            assert study["PatientMainDicomTags"]["PatientID"] == str(src.get("PatientID", ""))
            assert tags["SeriesInstanceUID"] != str(src.SeriesInstanceUID)  # a new series per result kind

        sr_id = orthanc.find_instance(result_uids(str(src.SOPInstanceUID), version, "sr")["SOPInstanceUID"])[0]
        sr = pydicom.dcmread(io.BytesIO(_get_bytes(orthanc, f"/instances/{sr_id}/file")))
        regions = read_sr(sr)
        assert regions, f"{path.name}: no region in the SR"
        for r in regions:
            assert r.source_sop_instance_uid == str(src.SOPInstanceUID)
            for kind in (QuantityKind.BOX_WIDTH, QuantityKind.BOX_HEIGHT):
                assert kind in r.quantities and r.quantities[kind].unit == "mm", (path.name, r.label, r.quantities)
                assert 20.0 < r.quantities[kind].value < 1000.0, (path.name, r.label, r.quantities[kind])
        if path == sim_path:
            by_label = {r.label: r for r in regions}
            exact = exact_box_offsets(case)  # the geometry model's offsets for the exact boxes
            tolerance = box_centre_tolerance_mm(case.dataset, load_card(REFERENCE_CARD).input.width)
            for truth in case.truth.regions:
                if truth.visible_fraction < PRESENT_FRACTION:
                    continue
                assert truth.label in by_label, (truth.label, sorted(by_label))
                lateral = by_label[truth.label].quantities[QuantityKind.ISO_OFFSET_LATERAL]
                assert lateral.unit == "mm"
                assert truth.iso_offset_mm is not None
                # within the geometry model's own error plus the detector's allowance (test_reference_pipeline.py)
                allowed = abs(exact[truth.label] - truth.iso_offset_mm[0]) + tolerance
                assert abs(lateral.value - truth.iso_offset_mm[0]) <= allowed, (
                    truth.label, lateral.value, truth.iso_offset_mm, exact[truth.label])
    assert node.stop() == 0


def _get_bytes(server: Orthanc, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(server.url + path, timeout=30) as resp:
        return bytes(resp.read())
