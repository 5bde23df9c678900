"""`/metrics` and `/healthz` (dicom_node.metrics): text format, counting from the SQLite queue, and a scrape of a
running node while dcmtk's storescu sends objects and a real Orthanc receives (or refuses) the results.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue
from dicom_node.metrics import (
    Counters,
    Exposition,
    Histogram,
    JobStatsScanner,
    NodeState,
    health,
    render,
)
from nodecore.received import ReceivedObject
from tests.conftest import require_tool
from tests.node_process import NodeProcess, make_small_images, node, node_config, storescu  # noqa: F401
from tests.orthanc import Orthanc, free_port, orthanc  # noqa: F401

# ---- a strict parser of the Prometheus text format (what a scraper does) -----------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> tuple[dict[Sample, float], dict[str, str]]:
    """(samples, family types). Raises AssertionError on anything a Prometheus scraper would refuse."""
    assert text.endswith("\n")
    samples: dict[Sample, float] = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP twice for {name}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, _, body, value = m.groups()
        labels = frozenset(_LABEL.findall(body or ""))
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} before its TYPE"
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    for (name, labels), _ in samples.items():  # histogram invariants
        if name.endswith("_bucket"):
            base = name[: -len("_bucket")]
            rest = frozenset(kv for kv in labels if kv[0] != "le")
            assert samples[(f"{base}_count", rest)] == samples[(name, rest | {("le", "+Inf")})]
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series: dict[frozenset[tuple[str, str]], list[tuple[float, float]]] = {}
        for (name, labels), v in samples.items():
            if name == f"{family}_bucket":
                le = dict(labels)["le"]
                series.setdefault(frozenset(kv for kv in labels if kv[0] != "le"), []).append((float(le), v))
        for points in series.values():
            counts = [v for _, v in sorted(points)]
            assert counts == sorted(counts), f"{family} buckets are not cumulative: {points}"
    return samples, types


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# ---- units ---------------------------------------------------------------------------------------------------------


def test_exposition_escapes_labels_and_formats_values() -> None:
    out = Exposition()
    out.metric("x_total", "counter", "help", 3, (("destination", 'a"b\\c\nd'),))
    out.histogram("h_seconds", "a histogram", {(): _hist([0.5, 2.0, 100.0])})
    text = out.text()
    assert 'x_total{destination="a\\"b\\\\c\\nd"} 3\n' in text
    samples, types = parse(text)
    assert types == {"x_total": "counter", "h_seconds": "histogram"}
    assert value(samples, "h_seconds_bucket", le="1") == 1
    assert value(samples, "h_seconds_bucket", le="5") == 2
    assert value(samples, "h_seconds_bucket", le="+Inf") == 3
    assert value(samples, "h_seconds_sum") == pytest.approx(102.5)
    with pytest.raises(ValueError, match="declared twice"):
        out.family("x_total", "counter", "again")


def _hist(values: list[float]) -> Histogram:
    h = Histogram((1.0, 5.0))
    for v in values:
        h.observe(v)
    h.observe(float("nan"))  # ignored
    h.observe(-1.0)  # ignored (clock step)
    return h


def test_counters_reject_decrease() -> None:
    c = Counters()
    c.inc("a_total", 2, reason="x")
    c.inc("a_total", reason="x")
    assert c.get("a_total", reason="x") == 3
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc("a_total", -1)


def _job(q: JobQueue, tmp: Path, n: int) -> int:
    return q.add_job(ReceivedObject(path=tmp / f"{n}.dcm", sop_instance_uid=f"1.2.3.{n}",
                                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                    transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MOD"))


def test_scanner_counts_each_finished_job_once_whatever_the_order(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    old = _job(q, tmp_path, 0)
    q.claim_job("worker-0-1")
    q.finish_job(old, status="done", summary={"decode_ms": 5})  # ended before the node started: not counted
    running_at_start = _job(q, tmp_path, 1)
    q.claim_job("worker-0-1")
    scanner = JobStatsScanner(q)
    a, b, c = (_job(q, tmp_path, n) for n in (2, 3, 4))
    for _ in range(3):
        q.claim_job("worker-1-2")
    q.finish_job(c, status="done", summary={"decode_ms": 20.0, "detect_ms": 300.0, "write_ms": 2.0})
    scanner.scan()
    assert scanner.finished == {"done": 1, "error": 0, "dropped": 0}
    scanner.scan()  # nothing new: nothing counted twice
    assert scanner.job_seconds.count == 1
    q.finish_job(a, status="error", error="pipeline failed")
    q.finish_job(running_at_start, status="dropped")
    scanner.scan()
    assert scanner.finished == {"done": 1, "error": 1, "dropped": 1}
    q.requeue_worker("worker-1-2", max_deaths=5)  # b back to pending: still open
    scanner.scan()
    q.claim_job("worker-1-3")
    q.finish_job(b, status="done", summary={"decode_ms": 1.0})
    scanner.scan()
    assert scanner.finished == {"done": 2, "error": 1, "dropped": 1}
    assert scanner.job_seconds.count == 4
    assert scanner.stage_seconds["decode"].count == 2
    assert scanner.stage_seconds["decode"].total == pytest.approx(0.021)
    assert scanner.stage_seconds["detect"].count == 1 and scanner.stage_seconds["measure"].count == 0
    # rows pruned by retention are forgotten, new jobs are still seen
    q.prune_jobs(0, time.time() + 1)
    d = _job(q, tmp_path, 5)
    q.claim_job("worker-1-3")
    q.finish_job(d, status="done")
    scanner.scan()
    assert scanner.finished["done"] == 3


def _state(**changes: object) -> NodeState:
    base = dict(listening=True, draining=False, active_associations=0, workers_configured=2, workers_alive=2,
                workers_ready=2, worker_restarts=0, jobs_requeued=0, jobs_failed_by_worker_deaths=0,
                config_generation=0, last_reload_ok=None, last_reload_at=None, sends={}, disk_free_bytes=1,
                disk_watermark_bytes=1, started_at=1.0, port=104)
    base.update(changes)
    return NodeState(**base)  # type: ignore[arg-type]


def test_health_reasons() -> None:
    assert health(_state()) == (True, "ok: listening on port 104, 2/2 workers alive and ready")
    assert health(_state(workers_alive=1)) == (False, "1/2 workers alive")
    assert health(_state(workers_ready=0))[1].startswith("0/2 workers ready")
    assert health(_state(listening=False)) == (False, "the DICOM listener is not up")
    assert health(_state(draining=True)) == (False, "draining: the node is stopping")


def test_render_declares_every_family_with_zeros(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    text = render(_state(sends={"pacs": {"ok": 2}}), Counters(), JobStatsScanner(q), q)
    samples, types = parse(text)
    assert value(samples, "dicomnode_cstore_total", status="0x0000") == 0
    assert value(samples, "dicomnode_associations_rejected_total", reason="called_ae") == 0
    assert value(samples, "dicomnode_sends_total", destination="pacs", result="ok") == 2
    assert value(samples, "dicomnode_sends_total", destination="pacs", result="dead") == 0
    assert value(samples, "dicomnode_config_last_reload_success") == -1
    assert value(samples, "dicomnode_up") == 1
    assert types["dicomnode_stage_seconds"] == "histogram"


# ---- a running node --------------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_metric(url: str, predicate, timeout_s: float, what: str) -> dict[Sample, float]:
    deadline = time.monotonic() + timeout_s
    samples: dict[Sample, float] = {}
    while time.monotonic() < deadline:
        code, text = get(url)
        assert code == 200, text
        samples, _ = parse(text)
        if predicate(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last scrape: {samples}")


@pytest.mark.slow
@pytest.mark.peers
def test_metrics_of_a_running_node_follow_the_traffic(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path  # noqa: F811
) -> None:
    import os

    metrics_port = free_port()
    text = node_config(node.port, node.storage, orthanc.dicom_port, pipeline="decode", workers=2)
    good = text.replace("  workers: 2\n", f"  workers: 2\n  metrics_port: {metrics_port}\n")
    node.write_config(good)
    node.start()
    base = f"http://127.0.0.1:{metrics_port}"
    code, body = get(f"{base}/healthz")
    assert (code, body) == (200, f"ok: listening on port {node.port}, 2/2 workers alive and ready\n")
    assert get(f"{base}/nope")[0] == 404
    code, page = get(f"{base}/metrics")
    assert code == 200
    s0, _ = parse(page)
    assert value(s0, "dicomnode_cstore_total", status="0x0000") == 0
    assert value(s0, "dicomnode_workers_alive") == 2 and value(s0, "dicomnode_workers_ready") == 2
    assert value(s0, "dicomnode_listener_up") == 1
    assert value(s0, "dicomnode_disk_watermark_bytes") == 512 * 1024 * 1024
    assert value(s0, "dicomnode_disk_free_bytes") > 0

    # three objects: received, decoded by a worker process, originals forwarded to Orthanc
    files = make_small_images(tmp_path / "in", 3)
    assert len(storescu(node.port, files).succeeded) == 3
    s1 = _wait_metric(f"{base}/metrics",
                      lambda s: value(s, "dicomnode_sends_total", destination="pacs", result="ok") == 3, 60,
                      "three sends")
    spooled = sum(p.stat().st_size for p in (node.storage / "objects").rglob("*.dcm"))
    assert value(s1, "dicomnode_cstore_total", status="0x0000") == 3
    assert value(s1, "dicomnode_received_bytes_total") == spooled
    assert value(s1, "dicomnode_associations_accepted_total") == 1
    assert value(s1, "dicomnode_jobs", status="done") == 3
    assert value(s1, "dicomnode_jobs_finished_total", status="done") == 3
    assert value(s1, "dicomnode_job_processing_seconds_count") == 3
    assert value(s1, "dicomnode_stage_seconds_count", stage="decode") == 3  # from the decode pipeline's summaries
    assert value(s1, "dicomnode_stage_seconds_count", stage="detect") == 0
    assert value(s1, "dicomnode_outbound_items", destination="pacs", status="sent") == 3
    assert "Synthetic" not in page + str(s1) and "SYN0001" not in get(f"{base}/metrics")[1]
    uids = {str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in files}
    assert not any(u in get(f"{base}/metrics")[1] for u in uids)  # no UIDs either

    # a rejected association, counted by reason
    echo = subprocess.run([require_tool("echoscu"), "-aet", "MODALITY", "-aec", "WRONG", "127.0.0.1",
                           str(node.port)], capture_output=True, text=True, timeout=30)
    assert echo.returncode != 0
    s2, _ = parse(get(f"{base}/metrics")[1])
    assert value(s2, "dicomnode_associations_rejected_total", reason="called_ae") == 1

    # the PACS down: retries; then refusing us: a dead letter
    orthanc.stop()
    more = make_small_images(tmp_path / "more", 1)
    assert len(storescu(node.port, more).succeeded) == 1
    _wait_metric(f"{base}/metrics",
                 lambda s: value(s, "dicomnode_sends_total", destination="pacs", result="retry") >= 1, 30, "a retry")
    orthanc.start(reject=True)
    s3 = _wait_metric(f"{base}/metrics",
                      lambda s: value(s, "dicomnode_sends_total", destination="pacs", result="dead") == 1, 30,
                      "a dead letter")
    assert value(s3, "dicomnode_outbound_items", destination="pacs", status="dead") == 1
    assert value(s3, "dicomnode_cstore_total", status="0x0000") == 4

    # reloads: a broken file is refused, a good one applied
    node.write_config(good.replace("workers: 2", "workers: two"))
    node.signal(signal.SIGHUP)
    s4 = _wait_metric(f"{base}/metrics", lambda s: value(s, "dicomnode_config_reloads_total", result="refused") == 1,
                      15, "a refused reload")
    assert value(s4, "dicomnode_config_last_reload_success") == 0 and value(s4, "dicomnode_config_generation") == 0
    node.write_config(good)
    node.signal(signal.SIGHUP)
    s5 = _wait_metric(f"{base}/metrics", lambda s: value(s, "dicomnode_config_generation") == 1, 15, "a reload")
    assert value(s5, "dicomnode_config_last_reload_success") == 1
    assert value(s5, "dicomnode_config_last_reload_timestamp_seconds") > value(s5, "dicomnode_start_time_seconds")
    node.wait_log(r"configuration generation 1 loaded", 30, count=2)
    _wait_metric(f"{base}/metrics", lambda s: value(s, "dicomnode_workers_ready") == 2, 30, "workers ready again")
    assert get(f"{base}/healthz")[0] == 200

    # a worker killed: /healthz says so until its replacement is ready, then 200 again
    victim = sorted(node.workers())[0]
    os.kill(victim, signal.SIGKILL)
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, body = get(f"{base}/healthz")
        if code == 503:
            seen.append(body)
        elif seen:
            break
        time.sleep(0.05)
    assert seen and all(re.fullmatch(r"1/2 workers alive\n|[01]/2 workers ready \(.*\)\n", b) for b in seen), seen
    assert get(f"{base}/healthz")[0] == 200
    s6, _ = parse(get(f"{base}/metrics")[1])
    assert value(s6, "dicomnode_worker_restarts_total") == 1 and value(s6, "dicomnode_workers_alive") == 2

    assert node.stop() == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)
