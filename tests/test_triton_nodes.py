"""Two real nodes, one real Triton: both nodes' inference served by the same server, batched together, and an
outage of Triton in the middle of the stream loses nothing.

Node A uses ``fallback: fail`` over gRPC (a job that meets the outage goes back to the queue and runs again once
Triton is back); node B uses ``fallback: onnxruntime`` over HTTP (jobs run on the local model meanwhile). Dynamic
batching is observed in Triton's own Prometheus metrics (executions fewer than requests). Throughput is measured
in bench/triton.py, not here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.jobqueue import JobQueue
from dicom_node.triton_export import export_repository
from tests.node_process import NodeProcess, storescu, wait_until
from tests.triton_server import TritonServer, metric_sum

pytestmark = [pytest.mark.slow, pytest.mark.peers]

PER_NODE_BATCHING = 10  # scouts per node in the batching phase
PER_NODE_OUTAGE = 16  # scouts per node in the outage phase


def node_yaml(node: NodeProcess, server: str, fallback: str) -> str:
    return f"""node:
  ae_title: {node.workdir.name.upper()}
  bind: 127.0.0.1
  port: {node.port}
  storage: {node.storage}
  workers: 2
  log_level: INFO
models:
  reference:
    card: builtin:reference
    backend: triton
    max_batch: 8
    options: {{threads: 1}}
    triton:
      servers: [{server}]
      model: regions
      timeout: 10s
      retry_for: 2s
      cooldown: 0.5s
      fallback: {fallback}
routes:
  - name: scouts
    match: {{attribute: Modality, equals: CT}}
    pipeline:
      name: reference
      detectors: [{{model: reference}}]
    outputs: [sr]
    destinations: []
default:
  action: drop
"""


def clones(sources: list[Path], out: Path, tag: str, n: int) -> list[Path]:
    from nodecore.uids import derived_uid

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ds = dcmread(sources[i % len(sources)])
        uid = derived_uid("test-triton-nodes", tag, str(i))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = out / f"{tag}{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TritonServer, NodeProcess, NodeProcess, list[Path]]]:
    from inference.simulator import simulate_case

    cfg = tmp_path / "export.yaml"
    cfg.write_text("node: {ae_title: X}\nroutes: []\nmodels:\n  reference:\n    card: builtin:reference\n"
                   "    backend: triton\n    max_batch: 8\n"
                   "    triton: {servers: grpc://127.0.0.1:1, model: regions}\n")  # fmt: skip
    export_repository(cfg, tmp_path / "repo", platform="python", threads=1, max_queue_delay_us=30000)
    triton = TritonServer(tmp_path / "repo", tmp_path / "triton.log")
    triton.start()
    sources = []
    for seed, kind in ((81, "ct_frontal"), (82, "ct_lateral")):
        path = tmp_path / f"{kind}.dcm"
        simulate_case(seed, kind=kind, size=256, measure=False).dataset.save_as(path, enforce_file_format=True)
        sources.append(path)
    a, b = NodeProcess(tmp_path / "nodea"), NodeProcess(tmp_path / "nodeb")
    a.write_config(node_yaml(a, triton.grpc_url, "fail"))
    b.write_config(node_yaml(b, triton.http_url, "onnxruntime"))
    try:
        a.start(wait_ready=False)
        b.start(wait_ready=False)
        a.wait_message("READY=1", 120)
        b.wait_message("READY=1", 120)
        yield triton, a, b, sources
    finally:
        for n in (a, b):
            n.close()
        triton.kill()


def send_both(a: NodeProcess, b: NodeProcess, files_a: list[Path], files_b: list[Path]) -> Callable[[], None]:
    """storescu to both nodes at once, in the background; the returned ``finish()`` waits and checks that every
    file was accepted."""
    failures: list[str] = []

    def send(node: NodeProcess, files: list[Path]) -> None:
        out = storescu(node.port, files, called=node.workdir.name.upper())
        if len(out.succeeded) != len(files):
            failures.append(out.output[-2000:])

    threads = [threading.Thread(target=send, args=(a, files_a)), threading.Thread(target=send, args=(b, files_b))]
    for t in threads:
        t.start()

    def finish() -> None:
        for t in threads:
            t.join(300)
        assert not failures, failures

    return finish


def done_jobs(node: NodeProcess) -> list:  # type: ignore[type-arg]
    q = JobQueue(node.storage / "queue.sqlite3")
    try:
        return q.recent_jobs(1000)
    finally:
        q.close()


def counts(node: NodeProcess) -> dict[str, int]:
    q = JobQueue(node.storage / "queue.sqlite3")
    try:
        return q.job_counts()
    finally:
        q.close()


def test_two_nodes_one_triton_batching_and_outage(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    triton, a, b, sources = setup
    model = "regions"
    before = triton.metrics()
    req0 = metric_sum(before, "nv_inference_request_success", model)
    exec0 = metric_sum(before, "nv_inference_exec_count", model)

    # 1. both nodes send at once: Triton merges their requests
    finish = send_both(a, b, clones(sources, tmp_path / "a1", "a1-", PER_NODE_BATCHING),
                       clones(sources, tmp_path / "b1", "b1-", PER_NODE_BATCHING))  # fmt: skip
    finish()
    for node in (a, b):
        wait_until(lambda n=node: counts(n)["done"] == PER_NODE_BATCHING, 120, f"{node.workdir.name} jobs done")
    # Triton counts a request after sending its response: wait until every scout's request is counted
    wait_until(lambda: metric_sum(triton.metrics(), "nv_inference_request_success", model) - req0
               >= 2 * PER_NODE_BATCHING, 10, "Triton's request counter")  # fmt: skip
    after = triton.metrics()
    requests = metric_sum(after, "nv_inference_request_success", model) - req0
    executions = metric_sum(after, "nv_inference_exec_count", model) - exec0
    assert requests == 2 * PER_NODE_BATCHING, (requests, "every scout of both nodes went to Triton")
    print(f"\nbatching phase: {requests:.0f} requests in {executions:.0f} Triton executions")
    assert executions < requests, f"no batching seen: {executions} executions for {requests} requests"

    # 2. Triton is killed in the middle of the stream and comes back 3 s later
    files_a = clones(sources, tmp_path / "a2", "a2-", PER_NODE_OUTAGE)
    files_b = clones(sources, tmp_path / "b2", "b2-", PER_NODE_OUTAGE)
    finish = send_both(a, b, files_a, files_b)
    wait_until(lambda: counts(a)["done"] >= PER_NODE_BATCHING + 2 and counts(b)["done"] >= PER_NODE_BATCHING + 2,
               120, "the second stream under way")  # fmt: skip
    triton.kill()
    killed_at = counts(a)["done"], counts(b)["done"]
    time.sleep(3.0)
    triton.start()
    finish()
    total = PER_NODE_BATCHING + PER_NODE_OUTAGE
    for node in (a, b):
        wait_until(lambda n=node: counts(n)["done"] == total, 180, f"{node.workdir.name}: all {total} jobs done")
    assert killed_at[0] < total and killed_at[1] < total, "the outage fell inside the stream"
    for node in (a, b):
        jobs = done_jobs(node)
        assert len(jobs) == total and all(j.status == "done" for j in jobs), [(j.status, j.error) for j in jobs]
        assert all(j.summary.get("results") == ["sr"] for j in jobs)
        assert all(j.summary["regions"] for j in jobs), "every scout has its regions"
    served = {n.workdir.name: [j.summary["models"][0]["backend"] for j in done_jobs(n)] for n in (a, b)}
    assert all(s.startswith("triton grpc://") for s in served["nodea"]), served["nodea"]
    assert any(s == "fallback onnxruntime-cpu" for s in served["nodeb"]), "node B ran jobs on its local fallback"
    assert sum(s.startswith("triton http://") for s in served["nodeb"]) >= PER_NODE_BATCHING
    log_a, log_b = a.log(), b.log()
    assert "queued again after a transient failure" in log_a, "node A (fallback fail) retried jobs"
    assert "local fallback" not in log_a
    assert "running on the local fallback" in log_b, "node B (fallback onnxruntime) fell back"
    assert "queued again" not in log_b
    wait_until(lambda: metric_sum(triton.metrics(), "nv_inference_request_success", model) >= 1, 10,
               "the restarted Triton's request counter")  # fmt: skip
    served_after = metric_sum(triton.metrics(), "nv_inference_request_success", model)
    print(f"outage: killed after {killed_at} done; restarted Triton served {served_after:.0f} requests; "
          f"A requeues {log_a.count('queued again')}, B fallback lines {log_b.count('local fallback')}")
    assert served_after >= 1, "the jobs node A kept went to the restarted Triton"
