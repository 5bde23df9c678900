"""End-to-end latency: C-STORE of a CT localizer to the node -> TID 1500 SR stored in the PACS.

One run, two passes with the same images: the node (``dicom-node serve`` with ``config/example.yaml``; ports,
storage and the ``pacs`` destination rewritten to loopback and a temp dir; the ``reference`` model on ONNX Runtime
CPU) sends its results to **Orthanc** (pass 1) and then to a dcmtk **storescp** (pass 2). In each pass:

* **one at a time**: every simulated scout (``inference.simulator.simulate_case``, frontal and lateral CT
  localizers, 512 columns) is sent by its own ``storescu`` process; the next one leaves only when all four results
  (SR, SC, GSPS, plain SR) of the previous one have arrived;
* **bursts**: the same scouts under new SOP Instance UIDs, ``--burst`` files per ``storescu`` association;
* **parallel** (``--parallel 4``, the morning rush): the same scouts under new UIDs, ``--parallel`` modalities
  (``storescu`` processes started together) each sending ``--count`` scouts in one association; t0 = just before
  the first ``storescu`` starts; reported: the last SR and the last result after t0 (goals 15 s / 25 s for 4 x 50);
* **radiographs** (``--dx-count``, every pass): 8 MiB DX images (2048 x 2048 uint16, simulated) in one association;
  sustained images/s = images / (last SR arrival - storescu launch), and the bytes of all results of one radiograph.

Clock: ``time.time()`` (CLOCK_REALTIME) everywhere. **t0** = just before ``storescu`` is launched for that file
(one at a time) or for the burst (every file of a burst shares the burst's t0: a conservative figure); so latencies
include starting storescu (a few ms), the association and the transfer. **Arrival** = Orthanc: the moment a poller
(``GET /changes?since=`` on a keep-alive connection every 5 ms) first sees the instance, i.e. after Orthanc has
stored and indexed it; storescp: ``--exec-on-reception`` runs ``date +%s.%N`` after storescp has written the file.
Stage breakdown from the node's job queue (``JobRow.summary``: decode_ms, detect_ms, measure_ms, write_ms written
by the reference pipeline; ``received_at``/``finished_at``) per job. Writes ``bench/results/e2e.json``.

    python -m bench.e2e [--count 50] [--burst 10] [--parallel 4] [--dx-count 20] [--card builtin:reference]
    make bench-rush   # the morning rush: 4 x 50 parallel scouts, bursts of 10, 50 DX, Orthanc and storescp
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.netutil import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EXAMPLE = ROOT / "config" / "example.yaml"
KINDS = ("sr", "sc", "gsps", "plain_sr")
ORTHANC_POLL_S = 0.005
STORESCP_POLL_S = 0.002


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# ---- inputs ------------------------------------------------------------------------------------------------------


def _simulate_one(job: tuple[int, str, int, str]) -> str:
    from inference.simulator import simulate_case

    seed, kind, size, out = job
    case = simulate_case(seed, kind=kind, size=size, measure=False)
    path = Path(out) / f"{kind}_{seed:06d}.dcm"
    case.dataset.save_as(path, enforce_file_format=True)
    return str(path)


def simulate(out: Path, jobs: list[tuple[int, str, int]]) -> list[Path]:
    """Simulated images (seed, kind, size) written to ``out``, two processes at a time."""
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=2) as pool:
        return [Path(p) for p in pool.map(_simulate_one, [(s, k, n, str(out)) for s, k, n in jobs])]


def clone_with_new_uids(files: list[Path], out: Path, tag: str, copies: int = 1) -> list[Path]:
    """Copies of ``files`` under new SOP Instance UIDs (derived from the old UID and ``tag``): same pixels, new
    objects for the node (no duplicate handling involved)."""
    from pydicom import dcmread
    from pydicom.uid import UID

    from nodecore.uids import derived_uid

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(copies):
        for f in files:
            ds = dcmread(f)
            uid = UID(derived_uid("bench-e2e", tag, str(c), str(ds.SOPInstanceUID)))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            path = out / f"{tag}{c}_{f.name}"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def sop_uid(path: Path) -> str:
    from pydicom.filereader import read_file_meta_info

    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


# ---- receivers (the PACS side) -----------------------------------------------------------------------------------


class Receiver:
    """A result receiver; ``arrivals``: SOP Instance UID -> POSIX time it was first seen stored."""

    name = ""
    ae_title = ""

    def start(self) -> None:
        raise NotImplementedError

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.arrivals: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _seen(self, uid: str, t: float) -> None:
        with self._cond:
            if uid not in self.arrivals:
                self.arrivals[uid] = t
                self._cond.notify_all()

    def wait_for(self, uids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(u in self.arrivals for u in uids):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def _poll_forever(self) -> None: ...

    def start_polling(self) -> None:
        self._thread = threading.Thread(target=self._poll_forever, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OrthancReceiver(Receiver):
    name, ae_title = "orthanc", "ORTHANC"

    def start(self) -> None:
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.http_port = free_port()
        cfg = {
            "Name": "bench-e2e", "StorageDirectory": str(self.work / "orthanc-storage"),
            "IndexDirectory": str(self.work / "orthanc-index"), "DicomAet": self.ae_title, "DicomPort": self.port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "StorageCompression": False, "Plugins": [], "DicomServerEnabled": True,
            "HttpServerEnabled": True, "DicomAlwaysAllowStore": True, "SaveJobs": False,
            "UnknownSopClassAccepted": True,
        }
        config = self.work / "orthanc.json"
        config.write_text(json.dumps(cfg))
        with open(self.work / "orthanc.log", "wb") as log:
            self.proc = subprocess.Popen([binary, "--no-jobs", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_port(self.http_port)
        self.start_polling()

    def _poll_forever(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        since = 0

        def get(path: str) -> Any:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())

        while not self._stop.is_set():
            try:
                doc = get(f"/changes?since={since}&limit=1000")
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                time.sleep(0.05)
                continue
            now = time.time()
            for change in doc.get("Changes", []):
                if change.get("ChangeType") == "NewInstance":
                    try:
                        tags = get(f"/instances/{change['ID']}")["MainDicomTags"]
                    except (OSError, http.client.HTTPException, ValueError, KeyError):
                        conn.close()
                        continue
                    self._seen(str(tags.get("SOPInstanceUID", "")), now)
            since = int(doc.get("Last", since))
            if doc.get("Done", True):
                time.sleep(ORTHANC_POLL_S)


class StorescpReceiver(Receiver):
    name, ae_title = "storescp", "STORESCP"

    def start(self) -> None:
        self.out = self.work / "storescp"
        self.out.mkdir(parents=True)
        self.log_path = self.work / "arrivals.log"
        self.log_path.touch()
        # storescp runs the command (sh -c, forked, not waited for) after it has written each received file.
        stamp = f"echo \"$(date +%s.%N) #f\" >> {self.log_path}"
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "-od", str(self.out), "-xcr", stamp, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        self.start_polling()

    def _poll_forever(self) -> None:
        offset = 0
        while not self._stop.is_set():
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1
            offset += end
            for line in data[:end].decode().splitlines():
                stamp, _, filename = line.partition(" ")
                # default storescp file names: <modality prefix>.<SOP Instance UID>
                self._seen(filename.split(".", 1)[1] if "." in filename else filename, float(stamp))
            time.sleep(STORESCP_POLL_S)


# ---- the node ----------------------------------------------------------------------------------------------------


def node_config(work: Path, port: int, receiver: Receiver, card: str, workers: int | None,
                overrides: argparse.Namespace | None = None) -> Path:
    """``config/example.yaml`` with loopback ports, a temp storage, the ``pacs`` destination -> ``receiver`` and the
    ``reference`` model on ONNX Runtime CPU (``card`` may name another card for a dry run of the harness).
    ``overrides``: ``max_associations``, ``sc_compression``, ``sc_max_size`` when set (``--before`` sets the values
    that reproduce the node before issue 12: one association, uncompressed full-size secondary capture)."""
    import yaml

    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["node"].update({"bind": "127.0.0.1", "port": port, "storage": str(work / "storage")})
    if workers:
        cfg["node"]["workers"] = workers
    o = overrides
    if o is not None and o.max_associations:
        cfg["destinations"]["pacs"]["max_associations"] = o.max_associations
    for route in cfg["routes"]:
        if o is not None and o.sc_compression and "sc" in route.get("outputs", []):
            route["sc_compression"] = o.sc_compression
        if o is not None and o.sc_max_size and "sc" in route.get("outputs", []):
            route["sc_max_size"] = o.sc_max_size
    cfg["destinations"]["pacs"].update({"ae_title": receiver.ae_title, "host": "127.0.0.1", "port": receiver.port})
    cfg["models"]["reference"].update({"card": card, "backend": "onnxruntime"})
    path = work / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Node:
    """`dicom-node serve` as a child process; READY=1 read from our own sd_notify socket."""

    work: Path
    config: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    messages: list[str] = field(default_factory=list)

    def start(self, timeout: float = 300.0) -> float:
        sock_path = self.work / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        self._sock = sock
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1")
        env.pop("JOURNAL_STREAM", None)
        t0 = time.monotonic()
        with open(self.work / "node.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        while "READY=1" not in self.messages:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the node was not ready within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def _read(self) -> None:
        while self.proc is not None:
            try:
                self.messages.extend(self._sock.recv(65536).decode().splitlines())
            except TimeoutError:
                continue
            except OSError:
                return

    def log_tail(self, n: int = 3000) -> str:
        return (self.work / "node.log").read_text(errors="replace")[-n:]

    def jobs(self) -> list[Any]:
        from dicom_node.jobqueue import JobQueue

        queue = JobQueue(self.work / "storage" / "queue.sqlite3")
        try:
            return queue.recent_jobs(100_000)
        finally:
            queue.close()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the node and its (live) workers."""
        assert self.proc is not None
        pids = [self.proc.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            pass
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._sock.close()


# ---- sending and measuring ---------------------------------------------------------------------------------------


def storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["storescu", "-aet", "BENCHCT", "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@dataclass
class Sample:
    """One source image: times in POSIX seconds."""

    source_uid: str
    mode: str
    t0: float
    storescu_done: float = 0.0
    arrivals: dict[str, float] = field(default_factory=dict)  # kind -> time

    @property
    def sr_ms(self) -> float:
        return (self.arrivals["sr"] - self.t0) * 1e3

    @property
    def all_ms(self) -> float:
        return (max(self.arrivals.values()) - self.t0) * 1e3


class Measurer:
    def __init__(self, receiver: Receiver, node_port: int, model_version: str, timeout: float) -> None:
        from nodecore.uids import result_uids

        self.receiver = receiver
        self.node_port = node_port
        self.timeout = timeout
        self._uids: Callable[[str], dict[str, str]] = lambda src: {
            k: result_uids(src, model_version, k)["SOPInstanceUID"] for k in KINDS
        }

    def send(self, files: list[Path], mode: str, senders: int = 1) -> list[Sample]:
        """Send ``files`` in ``senders`` storescu associations started together (files dealt round-robin); wait for
        every result of every file. t0: just before the first storescu starts."""
        expected = {f: self._uids(sop_uid(f)) for f in files}
        t0 = time.time()
        procs = [storescu(self.node_port, files[i::senders]) for i in range(senders)]
        outputs = [proc.communicate(timeout=self.timeout)[0] for proc in procs]
        done = time.time()
        for proc, output in zip(procs, outputs, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"storescu failed (rc={proc.returncode}): {output[-1500:]}")
        every = [u for uids in expected.values() for u in uids.values()]
        if not self.receiver.wait_for(every, self.timeout):
            missing = [u for u in every if u not in self.receiver.arrivals]
            raise RuntimeError(f"{len(missing)} of {len(every)} results did not reach {self.receiver.name} within "
                               f"{self.timeout:.0f} s")
        samples = []
        for f, uids in expected.items():
            s = Sample(sop_uid(f), mode, t0, done)
            s.arrivals = {k: self.receiver.arrivals[u] for k, u in uids.items()}
            samples.append(s)
        return samples


def latency_stats(samples: list[Sample]) -> dict[str, float]:
    sr = [s.sr_ms for s in samples]
    every = [s.all_ms for s in samples]
    return {
        "n": len(samples),
        "sr_p50_ms": round(percentile(sr, 50), 1), "sr_p95_ms": round(percentile(sr, 95), 1),
        "sr_max_ms": round(max(sr), 1),
        "all_p50_ms": round(percentile(every, 50), 1), "all_p95_ms": round(percentile(every, 95), 1),
        "all_max_ms": round(max(every), 1),
    }


def stage_stats(jobs: list[Any], samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Median / p95 per stage over the jobs of ``samples`` (ms)."""
    by_uid = {j.sop_instance_uid: j for j in jobs}
    rows: dict[str, list[float]] = {}
    for s in samples:
        j = by_uid.get(s.source_uid)
        if j is None or j.status != "done" or j.finished_at is None:
            continue
        pipeline_ms = float(j.summary.get("seconds", 0.0)) * 1e3
        parts = {
            "receive_ms": (j.received_at - s.t0) * 1e3,  # storescu start + association + transfer + spool
            "queue_and_io_ms": (j.finished_at - j.received_at) * 1e3 - pipeline_ms,  # wait, route, write files
            **{k: float(j.summary[k]) for k in ("decode_ms", "detect_ms", "measure_ms", "write_ms") if k in j.summary},
            "pipeline_ms": pipeline_ms,
            "send_sr_ms": (s.arrivals["sr"] - j.finished_at) * 1e3,  # sender wake, association, C-STORE, PACS
        }
        for k, v in parts.items():
            rows.setdefault(k, []).append(v)
    return {k: {"p50": round(percentile(v, 50), 1), "p95": round(percentile(v, 95), 1)} for k, v in rows.items()}


# ---- one pass ----------------------------------------------------------------------------------------------------


def run_pass(receiver: Receiver, args: argparse.Namespace, work: Path, scouts: list[Path], bursts: list[Path],
             warm: list[Path], dx: list[Path], model_version: str, rush: list[Path] | None = None) -> dict[str, Any]:
    print(f"-- pass: results to {receiver.name}", flush=True)
    receiver.start()
    node_port = free_port()
    node = Node(work, node_config(work, node_port, receiver, args.card, args.workers, args), node_port)
    try:
        ready_s = node.start()
        print(f"   node ready (workers built, model warm) in {ready_s:.1f} s", flush=True)
        m = Measurer(receiver, node_port, model_version, args.timeout)
        m.send(warm, "warm-up")  # one association: each worker takes one (first jobs pay lazy imports); not counted
        load = [os.getloadavg()[0]]
        cpu0, t_cpu0 = node.cpu_seconds(), time.time()
        single: list[Sample] = []
        for f in scouts:
            single += m.send([f], "one at a time")
        cpu_single = (node.cpu_seconds() - cpu0) * 1e3 / len(scouts)
        load.append(os.getloadavg()[0])
        print(f"   one at a time: {latency_stats(single)}", flush=True)
        burst: list[Sample] = []
        for i in range(0, len(bursts), args.burst):
            burst += m.send(bursts[i : i + args.burst], f"bursts of {args.burst}")
        load.append(os.getloadavg()[0])
        print(f"   bursts of {args.burst}: {latency_stats(burst)}", flush=True)
        out: dict[str, Any] = {"node_ready_s": round(ready_s, 1)}
        rush_samples: list[Sample] = []
        if rush:
            time.sleep(2.0)  # let the sender lanes of the bursts wind down
            rush_samples = m.send(rush, f"{args.parallel} x {len(rush) // args.parallel} in parallel", args.parallel)
            load.append(os.getloadavg()[0])
            accepted = max(s.storescu_done for s in rush_samples) - rush_samples[0].t0
            out["parallel"] = {**latency_stats(rush_samples), "senders": args.parallel,
                               "all_accepted_s": round(accepted, 2)}
            print(f"   parallel: {out['parallel']}", flush=True)
        dx_samples: list[Sample] = []
        if dx:
            dx_samples = m.send(dx, "radiographs")
            span = max(s.arrivals["sr"] for s in dx_samples) - dx_samples[0].t0
            span_all = max(s.all_ms for s in dx_samples) / 1e3
            load.append(os.getloadavg()[0])
            out["radiographs"] = {
                "n": len(dx), "bytes_each": dx[0].stat().st_size, "seconds_to_last_sr": round(span, 2),
                "result_bytes_of_one": result_bytes(receiver, m, dx[0]),
                "images_per_s": round(len(dx) / span, 2), "images_per_s_all_results": round(len(dx) / span_all, 2),
                "mb_per_s": round(sum(f.stat().st_size for f in dx) / 1e6 / span, 1),
            }
            print(f"   radiographs: {out['radiographs']}", flush=True)
        jobs = node.jobs()
        errors = [(j.id, j.error) for j in jobs if j.status != "done"]
        out.update({
            "one_at_a_time": latency_stats(single), "bursts": latency_stats(burst), "burst_size": args.burst,
            "stages_one_at_a_time": stage_stats(jobs, single), "stages_bursts": stage_stats(jobs, burst),
            "node_cpu_ms_per_scout_one_at_a_time": round(cpu_single, 1),
            "load_average_1m": [round(x, 1) for x in load], "job_errors": errors,
            "wall_s": round(time.time() - t_cpu0, 1),
            "samples": [{"mode": s.mode, "sr_ms": round(s.sr_ms, 1), "all_ms": round(s.all_ms, 1),
                         "storescu_ms": round((s.storescu_done - s.t0) * 1e3, 1)}
                        for s in single + burst + rush_samples + dx_samples],
        })
        if dx_samples:
            out["stages_radiographs"] = stage_stats(jobs, dx_samples)
        if rush_samples:
            out["stages_parallel"] = stage_stats(jobs, rush_samples)
        return out
    finally:
        node.stop()
        receiver.stop()


def result_bytes(receiver: Receiver, m: Measurer, source: Path) -> dict[str, int]:
    """Size of each result of ``source`` as the PACS stored it (Orthanc: the stored file; storescp: the file)."""
    out: dict[str, int] = {}
    for kind, uid in m._uids(sop_uid(source)).items():
        if isinstance(receiver, OrthancReceiver):
            conn = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=30)
            conn.request("POST", "/tools/lookup", body=uid)
            found = json.loads(conn.getresponse().read())
            conn.request("GET", f"/instances/{found[0]['ID']}/file")
            out[kind] = len(conn.getresponse().read())
            conn.close()
        elif isinstance(receiver, StorescpReceiver):
            out[kind] = sum(f.stat().st_size for f in receiver.out.glob(f"*.{uid}"))
    out["total"] = sum(out.values())
    return out


def machine() -> dict[str, str]:
    import onnxruntime
    import pydicom
    import pynetdicom

    from bench.receive import versions

    info = versions()
    info.update({"onnxruntime": onnxruntime.__version__, "pydicom": pydicom.__version__,
                 "pynetdicom": pynetdicom.__version__})
    return info


def print_table(result: dict[str, Any]) -> None:
    print("\n| receiver | mode | n | SR p50 ms | SR p95 ms | all 4 results p50 / p95 ms |")
    print("|---|---|---|---|---|---|")
    for name, p in result["passes"].items():
        for mode, key in (("one at a time", "one_at_a_time"), (f"bursts of {p['burst_size']}", "bursts")):
            s = p[key]
            print(f"| {name} | {mode} | {s['n']} | {s['sr_p50_ms']} | {s['sr_p95_ms']} | "
                  f"{s['all_p50_ms']} / {s['all_p95_ms']} |")
        if "parallel" in p:
            s = p["parallel"]
            print(f"| {name} | {s['senders']} senders in parallel | {s['n']} | {s['sr_p50_ms']} | {s['sr_p95_ms']} "
                  f"(last {s['sr_max_ms']}) | {s['all_p50_ms']} / {s['all_p95_ms']} (last {s['all_max_ms']}) |")
    for name, p in result["passes"].items():
        print(f"\nstages ({name}, one at a time), ms p50 / p95:")
        for k, v in p["stages_one_at_a_time"].items():
            print(f"   {k:16s} {v['p50']:8.1f} / {v['p95']:8.1f}")
        if "radiographs" in p:
            r = p["radiographs"]
            print(f"radiographs ({name}): {r['n']} x {r['bytes_each'] / 2**20:.1f} MiB: {r['images_per_s']} images/s "
                  f"to the last SR ({r['images_per_s_all_results']} with all results); results of one: "
                  f"{r['result_bytes_of_one']}")
            for k, v in p["stages_radiographs"].items():
                print(f"   {k:16s} {v['p50']:8.1f} / {v['p95']:8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="scouts per mode and pass (default 50)")
    parser.add_argument("--burst", type=int, default=10, help="scouts per association in burst mode (default 10)")
    parser.add_argument("--size", type=int, default=512, help="scout columns (default 512)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="modalities sending --count scouts each at the same time (0: no parallel scenario)")
    parser.add_argument("--dx-count", type=int, default=20, help="8 MiB radiographs for the throughput (0: none)")
    parser.add_argument("--dx-distinct", type=int, default=4,
                        help="distinct simulated radiographs (2048x2048 takes ~10-25 s each); the rest are copies "
                             "under new UIDs")
    parser.add_argument("--receivers", default="orthanc,storescp", help="passes, in order (default orthanc,storescp)")
    parser.add_argument("--card", default="builtin:reference", help="model card of the `reference` model")
    parser.add_argument("--workers", type=int, default=None, help="override node.workers (example: 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one send's results")
    parser.add_argument("--max-associations", type=int, default=0, help="override destinations.pacs.max_associations")
    parser.add_argument("--sc-compression", default="", help="override the routes' sc_compression")
    parser.add_argument("--sc-max-size", type=int, default=0, help="override the routes' sc_max_size")
    parser.add_argument("--before", action="store_true",
                        help="the node as before issue 12 (1 association, uncompressed full-size SC), as a baseline "
                             "in the same session; results in bench/results/e2e_before.json")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.before:
        args.max_associations, args.sc_compression, args.sc_max_size = 1, "none", 16384

    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"bench.e2e: {tool} not installed (make deps)", file=sys.stderr)
            return 2
    if shutil.which("Orthanc") is None and not os.access("/usr/sbin/Orthanc", os.X_OK):
        print("bench.e2e: Orthanc not installed (make deps)", file=sys.stderr)
        return 2
    from inference.modelcard import ModelCardError, load_card

    try:
        card = load_card(args.card)
    except (ModelCardError, FileNotFoundError, OSError) as exc:
        print(f"bench.e2e: model card {args.card} cannot be loaded: {exc}", file=sys.stderr)
        return 2
    classes = {"orthanc": OrthancReceiver, "storescp": StorescpReceiver}
    wanted = [r for r in args.receivers.split(",") if r]
    unknown = [r for r in wanted if r not in classes]
    if unknown:
        print(f"bench.e2e: unknown receivers {unknown}; known: {', '.join(classes)}", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        plan = [(3_000_000 + i, "ct_frontal" if i % 2 == 0 else "ct_lateral", args.size) for i in range(args.count + 2)]
        if args.dx_count:
            plan += [(3_100_000 + i, "dx", 2048) for i in range(min(args.dx_distinct, args.dx_count))]
        images = simulate(tmp / "images", plan)
        warm, scouts = images[:2], images[2 : args.count + 2]
        dx_base = images[args.count + 2 :]
        bursts = clone_with_new_uids(scouts, tmp / "bursts", "burst")
        rush = clone_with_new_uids(scouts, tmp / "rush", "rush", args.parallel) if args.parallel else []
        dx: list[Path] = []
        if dx_base:
            copies = -(-args.dx_count // len(dx_base))
            dx = clone_with_new_uids(dx_base, tmp / "dx", "dx", copies)[: args.dx_count]
        print(f"simulated {len(scouts)} scouts (+2 warm-up), {len(dx_base)} distinct radiographs "
              f"({len(dx)} sent) in {time.perf_counter() - t0:.0f} s", flush=True)
        passes: dict[str, Any] = {}
        for name in wanted:
            work = tmp / name
            work.mkdir()
            passes[name] = run_pass(classes[name](work), args, work, scouts, bursts, warm, dx, card.version, rush)
        result = {
            "benchmark": "e2e", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": card.name,
            "model_version": card.version, "card": args.card, "backend": "onnxruntime (CPU)",
            "scout_columns": args.size, "machine": machine(), "passes": passes,
            "overrides": {"max_associations": args.max_associations, "sc_compression": args.sc_compression,
                          "sc_max_size": args.sc_max_size},
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / ("e2e_before.json" if args.before else "e2e.json")
        out.write_text(json.dumps(result, indent=2))
        print_table(result)
        print(f"results: {out}")
        errors = [e for p in passes.values() for e in p["job_errors"]]
        if errors:
            print("JOB ERRORS:", *errors, sep="\n  ")
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
