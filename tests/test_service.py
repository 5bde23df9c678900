"""`dicom-node serve` as a real subprocess: dcmtk storescu/echoscu as the modality, Orthanc as the PACS.

Covers: end to end with the decode pipeline and forward_original, sd_notify (READY/WATCHDOG/STATUS/STOPPING on a
socket the test binds), SIGTERM drain with exit 0, and SIGHUP reload (a broken file is refused, a good one swaps).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue
from tests.conftest import require_tool
from tests.node_process import NodeProcess, make_small_images, node, node_config, storescu, wait_until  # noqa: F401
from tests.orthanc import Orthanc, orthanc  # noqa: F401

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def uid_of(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def echoscu(port: int, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("echoscu"), "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def test_end_to_end_decode_pipeline_forwards_originals(
    node: NodeProcess, orthanc: Orthanc, realdata_files: list[Path]  # noqa: F811
) -> None:
    # external: false -> no dcmtk fallback, so the hard_ file (12-bit JPEG with invalid SOS) cannot be decoded
    node.write_config(node_config(node.port, node.storage, orthanc.dicom_port,
                                  pipeline="{name: decode, options: {external: false}}"))
    node.start()
    queue = JobQueue(node.storage / "queue.sqlite3")
    # The hard_ file first and alone: the RG2 copies share its SOP Instance UID, and a newer item for the same UID
    # replaces a pending one in the outbound queue; alone, its own forwarded original can be checked.
    hard = [p for p in realdata_files if p.name.startswith("hard_")]
    assert len(storescu(node.port, hard).succeeded) == 1
    wait_until(lambda: [r.status for r in queue.outbound_for_job(1)] == ["sent"], 30, "hard_ processed and forwarded")
    rest = [p for p in realdata_files if p not in hard]
    out = storescu(node.port, rest)  # each file in its own transfer syntax
    assert out.returncode == 0 and len(out.succeeded) == len(rest), out.output[-2000:]
    n = len(realdata_files)
    wait_until(lambda: sum(queue.job_counts()[s] for s in ("done", "error")) >= n, 90, "every job to finish")
    expected = {uid_of(p) for p in realdata_files}  # three RG2 files share one SOP Instance UID
    wait_until(lambda: set(orthanc.sop_instance_uids()) >= expected, 30, "the originals in Orthanc")
    assert set(orthanc.sop_instance_uids()) == expected
    jobs = queue.recent_jobs(100)
    assert len(jobs) == n
    hard_uid = uid_of(next(p for p in realdata_files if p.name.startswith("hard_")))
    errors = [j for j in jobs if j.status == "error"]
    assert len(errors) == 1, [(j.status, j.error) for j in jobs]  # only the undecodable file fails ...
    assert errors[0].sop_instance_uid == hard_uid and "decod" in errors[0].error.lower(), errors[0].error
    assert errors[0].summary.get("decoded") is False
    assert all(j.status == "done" and j.summary.get("decoded") for j in jobs if j is not errors[0])
    # ... and its original was forwarded all the same
    assert errors[0].id == 1 and [r.kind for r in queue.outbound_for_job(1)] == ["original"]
    assert all(j.summary.get("route") == "images" for j in jobs)
    assert node.stop() == 0
    log = node.log()
    from pydicom import dcmread

    for p in realdata_files:  # no patient names or IDs in the log
        ds = dcmread(p, stop_before_pixels=True)
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            if len(value) >= 3:
                assert value not in log, (p.name, "PHI in the log")


def test_sd_notify_and_sigterm_drain(node: NodeProcess, orthanc: Orthanc, tmp_path: Path) -> None:  # noqa: F811
    node.extra_env["WATCHDOG_USEC"] = "600000"  # systemd would set this from WatchdogSec=0.6: pings every 0.3 s
    node.write_config(node_config(node.port, node.storage, orthanc.dicom_port))
    t0 = time.monotonic()
    node.start()
    ready = next(m for m in node.messages if m.startswith("READY=1"))
    assert ready == "READY=1"
    assert any(m.startswith("STATUS=") and "port" in m for m in node.messages), node.messages
    assert "ready: listening as NODE" in node.log()
    node.read_messages(1.0)
    pings = [m for m in node.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 2, node.messages
    startup_s = time.monotonic() - t0

    # SIGTERM while a modality is in the middle of an association: it is finished, then the node exits 0.
    files = make_small_images(tmp_path / "in", 60)
    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "-R", "-aet", "MODALITY", "-aec", "NODE", "127.0.0.1", str(node.port),
         *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    node.wait_log(r"stored Computed Radiography", 30)
    node.signal(signal.SIGTERM)
    output, _ = sender.communicate(timeout=60)
    assert node.proc is not None
    assert node.proc.wait(60) == 0, node.log()[-3000:]
    node.read_messages(0.2)
    assert "STOPPING=1" in node.messages
    from tests.node_process import parse_storescu

    result = parse_storescu(sender.returncode, output)
    assert len(result.succeeded) == 60 and sender.returncode == 0, output[-2000:]  # the open association finished
    log = node.log()
    assert "stopping: draining open associations" in log and "stopped in" in log
    queue = JobQueue(node.storage / "queue.sqlite3")
    assert queue.job_counts()["running"] == 0  # workers finished their current job: nothing half-done

    # Nothing acknowledged is lost: the next start processes what was left and delivers everything.
    node.start()
    wait_until(lambda: queue.job_counts()["pending"] == 0 and queue.job_counts()["running"] == 0, 60, "jobs")
    wait_until(lambda: queue.outbound_summary().get("pacs", {}).get("sent", 0) == 60, 60, "all 60 sent")
    assert set(orthanc.sop_instance_uids()) == {uid_of(f) for f in files}
    assert node.stop() == 0
    print(f"startup to READY=1: {startup_s:.2f} s")


def test_sighup_bad_config_is_refused_good_one_swaps(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path  # noqa: F811
) -> None:
    good = node_config(node.port, node.storage, orthanc.dicom_port)
    node.write_config(good)
    node.start()
    files = make_small_images(tmp_path / "in", 4)
    queue = JobQueue(node.storage / "queue.sqlite3")

    # 1. a broken file: refused with its error, the old configuration keeps accepting and routing
    node.config_path.write_text(good.replace("one_of: [CR, DX, CT]", "one_off: [CR]"))
    node.signal(signal.SIGHUP)
    node.wait_log(r"configuration not reloaded, the previous one stays active", 15)
    assert "one_off" in node.log()
    out = storescu(node.port, files[:1])
    assert len(out.succeeded) == 1, out.output
    wait_until(lambda: uid_of(files[0]) in orthanc.sop_instance_uids(), 30, "routed with the old config")
    assert echoscu(node.port, "NODE").returncode == 0

    # 2. a good file: new AE title (next association), a new port (new listener, the old one drains) and a route
    #    that no longer matches CR (dropped)
    from tests.orthanc import free_port

    old_port, new_port = node.port, free_port()
    new = (good.replace("ae_title: NODE\n", "ae_title: NODE2\n").replace("one_of: [CR, DX, CT]", "one_of: [CT]")
           .replace(f"port: {old_port}\n", f"port: {new_port}\n"))
    assert new.count(f"port: {new_port}") == 1
    node.config_path.write_text(new)
    node.messages.clear()
    node.signal(signal.SIGHUP)
    node.wait_log(r"SIGHUP: reloaded", 15)
    node.wait_message("RELOADING=1", 10)
    node.wait_message("READY=1", 10)
    node.wait_log(r"configuration generation 1 loaded", 30, count=2)  # both workers rebuilt their pipelines
    node.wait_log(rf"listener moved to 127.0.0.1:{new_port}", 10)
    node.port = new_port
    node.wait_log(r"SCP stopped", 30)  # the old listener drained and closed
    assert "Connection refused" in echoscu(old_port, "NODE2").stderr
    assert echoscu(node.port, "NODE").returncode != 0  # old called AE title rejected now
    assert echoscu(node.port, "NODE2").returncode == 0
    out = storescu(node.port, files[1:2], called="NODE2")
    assert len(out.succeeded) == 1, out.output
    wait_until(lambda: any(j.sop_instance_uid == uid_of(files[1]) and j.status == "dropped"
                           for j in queue.recent_jobs(10)), 30, "the CR job dropped by the new routes")
    assert uid_of(files[1]) not in orthanc.sop_instance_uids()
    assert node.stop() == 0


def _running_job_worker_pids(storage: Path) -> list[tuple[int, int]]:
    """(job id, worker pid) of running jobs, from the worker name the queue records (worker-<index>-<pid>)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{storage / 'queue.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, worker FROM jobs WHERE status='running'").fetchall()
    finally:
        conn.close()
    return [(int(i), int(w.rsplit("-", 1)[1])) for i, w in rows if w.count("-") >= 2]


def test_a_dead_worker_is_replaced_and_its_job_runs_again(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path, realdata_files: list[Path]  # noqa: F811
) -> None:
    import os

    node.write_config(node_config(node.port, node.storage, orthanc.dicom_port, workers=2))
    node.start()
    before = set(node.workers())
    assert len(before) == 2
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)  # e.g. the OOM killer
    node.wait_log(rf"worker \d \(pid {victim}\) died with exit code -9; starting a replacement", 15)
    node.wait_log(r"worker \d ready \(pid", 30, count=3)
    after = set(node.workers())
    assert victim not in after and len(after) == 2
    files = make_small_images(tmp_path / "in", 3)
    assert len(storescu(node.port, files).succeeded) == 3
    wait_until(lambda: {uid_of(f) for f in files} <= set(orthanc.sop_instance_uids()), 30, "processing goes on")

    # A worker killed in the middle of a job: the job goes back to the queue and another worker finishes it (a job
    # whose worker dies node.max_worker_deaths_per_job times ends in error: tests/test_node_robustness.py).
    node.write_config(node_config(node.port, node.storage, orthanc.dicom_port, workers=2, pipeline="decode"))
    node.signal(signal.SIGHUP)
    node.wait_log(r"configuration generation 1 loaded", 30, count=2)
    big = [p for p in realdata_files if p.name.startswith(("dx_canon", "cr_wg04_RG3", "dx_rentgenprom"))]
    queue = JobQueue(node.storage / "queue.sqlite3")
    killed: tuple[int, int] | None = None
    for _ in range(5):
        assert storescu(node.port, big).succeeded
        deadline = time.monotonic() + 20
        while killed is None and time.monotonic() < deadline:
            running = _running_job_worker_pids(node.storage)
            if running:
                killed = running[0]
                os.kill(killed[1], signal.SIGKILL)
            time.sleep(0.005)
        if killed is not None:
            break
    assert killed is not None, "never caught a worker mid-job"
    job_id, pid = killed
    wait_until(lambda: (j := queue.get_job(job_id)) is not None and j.status in ("error", "done"), 30, "the job end")
    job = queue.get_job(job_id)
    assert job is not None and job.status == "done", job
    node.wait_log(rf"\(pid {pid}\) died with exit code -9; starting a replacement", 15)
    assert node.stop() == 0


def test_workers_never_read_the_file_on_disk_a_respawned_worker_runs_the_loaded_configuration(
    node: NodeProcess, tmp_path: Path  # noqa: F811
) -> None:
    """Issue 11: a configuration saved without SIGHUP (invalid, or valid but different) must neither stop the node
    when a worker dies nor change what the replacement runs: workers get the main process's validated config."""
    import os

    loaded = node_config(node.port, node.storage, None, workers=1, pipeline="decode", forward_original=False)
    node.write_config(loaded)
    node.start()
    queue = JobQueue(node.storage / "queue.sqlite3")
    files = make_small_images(tmp_path / "in", 4)

    def kill_the_worker(count: int) -> None:
        (victim,) = node.workers()
        os.kill(victim, signal.SIGKILL)
        node.wait_log(rf"worker 0 \(pid {victim}\) died with exit code -9; starting a replacement", 15)
        node.wait_log(r"worker 0 ready \(pid", 60, count=count)

    def processed(path: Path) -> str:
        uid = uid_of(path)
        wait_until(lambda: any(j.sop_instance_uid == uid and j.status != "pending" and j.status != "running"
                               for j in queue.recent_jobs(20)), 60, f"the job of {path.name}")
        return next(j for j in queue.recent_jobs(20) if j.sop_instance_uid == uid).status

    # 1. an invalid file on disk, no SIGHUP: before issue 11 every replacement died with ConfigError and the node
    #    stopped after five start-up deaths
    node.config_path.write_text(loaded.replace("one_of: [CR, DX, CT]", "one_off: [CR]") + "bogus: [\n")
    kill_the_worker(2)
    out = storescu(node.port, files[:2])
    assert len(out.succeeded) == 2, out.output
    assert [processed(f) for f in files[:2]] == ["done", "done"]  # decoded by the loaded route
    assert node.proc is not None and node.proc.poll() is None, node.log()[-3000:]

    # 2. a valid but different file on disk, no SIGHUP: the replacement still runs the loaded routes (CR is
    #    processed, not dropped as the file on disk would have it)
    node.config_path.write_text(loaded.replace("one_of: [CR, DX, CT]", "one_of: [CT]"))
    kill_the_worker(3)
    out = storescu(node.port, files[2:3])
    assert len(out.succeeded) == 1, out.output
    assert processed(files[2]) == "done"
    assert "ConfigError" not in node.log() and "stopping:" not in node.log()

    # 3. SIGHUP now applies the valid file: the worker takes generation 1 over from the main process
    node.signal(signal.SIGHUP)
    node.wait_log(r"configuration generation 1 loaded", 30)
    out = storescu(node.port, files[3:4])
    assert len(out.succeeded) == 1, out.output
    assert processed(files[3]) == "dropped"
    assert node.stop() == 0


class LabelsPipeline:
    """A real pipeline whose detector is the ground truth: labels.json boxes of the file, then the real measurement
    code and the real result writers. It exercises the worker's result path without needing a trained model."""

    CONCEPTS = {"HEAD": ("69536005", "Head"), "SPINE": ("421060004", "Spine"), "CHEST": ("816094009", "Chest"),
                "ABDOMEN": ("818981001", "Abdomen"), "PELVIS": ("816092008", "Pelvis")}

    def __init__(self, realdata: Path) -> None:
        import json

        self.labels = {i["file"]: i for i in json.loads((realdata / "labels.json").read_text())["images"]}

    def process(self, obj, route):
        import pydicom

        from dicom_node.pipeline import PipelineOutcome
        from inference.measure import measure_image
        from inference.types import Box, CodedConcept, Detection, ModelIdentity
        from sr_writer import write_results
        from sr_writer.context import ResultContext

        ds = pydicom.dcmread(obj.path)
        model = ModelIdentity("labels", "1")
        boxes = self.labels[Path(obj.path).name]["boxes"]
        dets = [Detection(b["label"], CodedConcept(*self.CONCEPTS[b["label"]][:1], "SCT",
                                                   self.CONCEPTS[b["label"]][1]),
                          0.9, Box.from_inclusive_centres(*b["box"]), model) for b in boxes]
        kinds = tuple(k for k in ("sr", "sc", "gsps", "plain_sr") if k in route.outputs)
        meas = measure_image(ds, dets)
        return PipelineOutcome(datasets=write_results(ds, dets, meas, kinds, ResultContext(model=model, kinds=kinds)),
                               detections=dets, measurements=meas, summary={"regions": len(dets)})


def test_worker_writes_results_atomically_and_queues_each_for_each_destination(
    tmp_path: Path, orthanc: Orthanc, realdata_dir: Path  # noqa: F811
) -> None:
    """process_job with real writers: 4 result kinds + the original, written under the spool's result path, one
    outbound item per (result, destination); then a real sender delivers them all to Orthanc, in the source study."""
    from dicom_node.config import parse_config_text
    from dicom_node.outbound import DestinationSender
    from dicom_node.pipeline import ReceivedObject
    from dicom_node.spool import Spool
    from dicom_node.workers import PipelineCache, process_job

    text = node_config(11112, tmp_path / "storage", orthanc.dicom_port, pipeline="decode").replace(
        "    forward_original: true\n", "    forward_original: true\n    outputs: [sr, sc, gsps, plain_sr]\n")
    config = parse_config_text(text)
    spool = Spool(tmp_path / "storage", 0, "replace")
    queue = JobQueue(tmp_path / "storage" / "queue.sqlite3")
    src = realdata_dir / "loc_philips_MAROTECH_CT_JP2Lossy.dcm"
    meta = read_file_meta_info(src)
    queue.add_job(ReceivedObject(src, str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID),
                                 str(meta.TransferSyntaxUID), "CT1"))
    obj = queue.claim_job("test")
    assert obj is not None
    built: list[str] = []
    def builder(name: str, cfg: object) -> LabelsPipeline:
        built.append(name)
        return LabelsPipeline(realdata_dir)

    pipelines = PipelineCache(config, builder=builder)
    pipelines.build_all()
    result = process_job(obj, config, pipelines, spool)
    assert built == ["decode"]  # built once per configuration, not per job
    assert result.status == "done", result.error
    assert result.summary["results"] == ["sr", "sc", "gsps", "plain_sr"] and result.summary["route"] == "images"
    kinds = sorted(i.kind for i in result.outbound)
    assert kinds == ["gsps", "original", "plain_sr", "sc", "sr"]
    for item in result.outbound:
        assert item.destination == "pacs"
        if item.kind == "original":
            assert item.path == src
            continue
        assert item.path == spool.result_path(obj.job_id, item.kind, item.sop_instance_uid)
        assert str(read_file_meta_info(item.path).MediaStorageSOPInstanceUID) == item.sop_instance_uid
    assert not list(spool.results_dir.rglob("*.tmp"))
    queue.finish_job(obj.job_id, status=result.status, summary=result.summary, outbound=result.outbound)

    sender = DestinationSender("pacs", lambda: config, lambda: queue, poll_s=0.1)
    sender.start()
    try:
        wait_until(lambda: queue.outbound_summary()["pacs"]["sent"] == 5, 30, "5 items sent")
    finally:
        sender.stop(2)
        sender.join(10)
    uids = orthanc.sop_instance_uids()
    assert set(uids) == {i.sop_instance_uid for i in result.outbound}
    source_study = orthanc.study_of(orthanc.find_instance(str(meta.MediaStorageSOPInstanceUID))[0])["ID"]
    modalities = set()
    for iid in orthanc.instances():
        assert orthanc.study_of(iid)["ID"] == source_study  # results land in the source's study
        modalities.add(orthanc.tags(iid)["Modality"])
    assert {"CT", "SR", "PR"} <= modalities, modalities  # source, the two SRs, the GSPS (+ the SC's modality)


def test_pipeline_that_cannot_be_built_fails_its_jobs_not_the_worker(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path  # noqa: F811
) -> None:
    """A model card that does not load: the reference pipeline cannot be built; every job of that route ends in error
    with the reason, the workers stay up, and the original is still forwarded."""
    (node.workdir / "broken.yaml").write_text("name: broken\n")  # a card without weights, classes or input size
    text = node_config(node.port, node.storage, orthanc.dicom_port,
                       pipeline="{name: reference, detectors: [{model: broken}]}")
    node.write_config(text.replace("routes:\n", "models:\n  broken:\n    card: broken.yaml\nroutes:\n"))
    node.start()
    files = make_small_images(tmp_path / "in", 2)
    assert len(storescu(node.port, files).succeeded) == 2
    queue = JobQueue(node.storage / "queue.sqlite3")
    wait_until(lambda: queue.job_counts()["error"] == 2, 60, "both jobs in error")
    for job in queue.recent_jobs(2):
        assert "pipeline 'reference' could not be built" in job.error, job.error
    wait_until(lambda: {uid_of(f) for f in files} <= set(orthanc.sop_instance_uids()), 30, "originals forwarded")
    assert len(node.workers()) == 2 and "died" not in node.log()
    assert node.stop() == 0
