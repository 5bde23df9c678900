"""Receive throughput: dcmtk `storescu` sends N x 8 MiB DX images to the node's SCP, to dcmtk `storescp` and to Orthanc.

One run measures all three receivers on the same machine with the same sender and the same files:

* node: ``StorageSCP`` + ``Spool`` + ``JobQueue`` only (no workers) in its own process, so its RSS is its own; every
  object fsynced, renamed, and its job committed (synchronous=FULL) before the success status;
* storescp: ``storescp -od DIR`` (writes files, no fsync);
* Orthanc: started on loopback ports with a temporary configuration, storage and index.

Reports MB/s (10^6 bytes of DICOM files sent per second of wall time of the storescu run), images/s, the ratios of the
node against storescp and Orthanc, each receiver's peak RSS (VmHWM) and its CPU time per image (user + system, all
threads: steadier than wall time on a shared machine). Writes ``bench/results/receive.json``.

    python -m bench.receive [--count 40] [--repeats 3] [--size 2048] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dicom_node.netutil import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process (MiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def generate(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` DX images ``size`` x ``size`` uint16, explicit VR LE, noisy content, distinct UIDs."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1234)
    base = (np.add.outer(np.arange(size), np.arange(size)) % 4096).astype(np.uint16)
    study = generate_uid()
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = UID(DX)
        ds.SOPClassUID = DX
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "DX"
        ds.PatientName = "Bench^Receive"
        ds.PatientID = "BENCH"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        pixels = base + rng.integers(0, 64, size=(size, size), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
        path = directory / f"dx_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, called: str, files: list[Path]) -> float:
    """Send ``files`` in one association; returns wall seconds. Raises on any failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["storescu", "-R", "-xe", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed (rc={proc.returncode}): {proc.stderr[-800:]}")
    return seconds


# -- receivers --------------------------------------------------------------------------------------------------


class Receiver:
    name = ""
    called = ""

    def start(self, work: Path) -> None: ...

    def stop(self) -> float:
        """Stop; returns peak RSS (MiB). ``self.cpu_s``: CPU seconds the receiver used while it ran."""
        assert self.proc is not None
        rss = peak_rss_mb(self.proc.pid)
        self.cpu_s = cpu_seconds(self.proc.pid) - self.cpu_at_start
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss

    proc: subprocess.Popen | None = None
    port = 0
    cpu_at_start = 0.0
    cpu_s = float("nan")

    def check(self, files: list[Path]) -> str:
        return ""


class NodeReceiver(Receiver):
    name, called = "node", "BENCHNODE"

    def start(self, work: Path) -> None:
        self.storage = work / "node"
        port_file = work / "node.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.receive", "--serve-node", str(self.storage),
                                      str(port_file)], cwd=ROOT)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the node SCP did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def check(self, files: list[Path]) -> str:
        from dicom_node.jobqueue import JobQueue

        counts = JobQueue(self.storage / "queue.sqlite3").job_counts()
        spooled = [p for p in (self.storage / "objects").rglob("*.dcm")]
        if counts["pending"] != len(files) or len(spooled) != len(files):
            return f"node: {counts['pending']} jobs and {len(spooled)} files for {len(files)} images"
        return ""


class StorescpReceiver(Receiver):
    name, called = "storescp", "STORESCP"

    def start(self, work: Path) -> None:
        out = work / "storescp"
        out.mkdir()
        self.port = free_port()
        self.proc = subprocess.Popen(["storescp", "-aet", self.called, "-od", str(out), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.out = out
        wait_port(self.port)

    def check(self, files: list[Path]) -> str:
        n = len(list(self.out.iterdir()))
        return "" if n == len(files) else f"storescp wrote {n} files for {len(files)} images"


class OrthancReceiver(Receiver):
    name, called = "orthanc", "ORTHANC"

    def start(self, work: Path) -> None:
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.port = free_port()
        http = free_port()
        cfg = {
            "Name": "bench", "StorageDirectory": str(work / "orthanc-storage"),
            "IndexDirectory": str(work / "orthanc-index"), "DicomAet": self.called, "DicomPort": self.port,
            "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "StorageCompression": False, "Plugins": [], "DicomServerEnabled": True,
            "HttpServerEnabled": True, "DicomAlwaysAllowStore": True, "SaveJobs": False,
        }
        config = work / "orthanc.json"
        config.write_text(json.dumps(cfg))
        self.log = open(work / "orthanc.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60)
        self.storage = work / "orthanc-storage"

    def stop(self) -> float:
        rss = super().stop()
        self.log.close()
        return rss

    def check(self, files: list[Path]) -> str:
        n = sum(1 for p in self.storage.rglob("*") if p.is_file() and len(p.name) > 30)
        return "" if n >= len(files) else f"orthanc stored {n} files for {len(files)} images"


def serve_node(storage: Path, port_file: Path) -> int:
    """Run only the receive path (SCP + spool + queue) until SIGTERM; write the bound port to ``port_file``."""
    import logging
    import threading

    from dicom_node.jobqueue import JobQueue
    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool
    from nodecore.config_schema import NodeConfig, NodeSettings

    logging.basicConfig(level=logging.WARNING)
    node = NodeSettings(ae_title="BENCHNODE", bind="127.0.0.1", port=0, storage=storage, min_free_disk_mb=256)
    config = NodeConfig(path=None, node=node, destinations={}, models={}, routes=())
    spool = Spool(storage, node.min_free_disk_mb, node.duplicate_policy)
    queue = JobQueue(storage / "queue.sqlite3")
    scp = StorageSCP(lambda: config, spool, queue)
    scp.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    port_file.write_text(str(scp.port))
    stop.wait()
    scp.stop(drain_timeout=5)
    return 0


def versions() -> dict[str, str]:
    import pydicom
    import pynetdicom

    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unavailable"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": first_line(["storescu", "--version"]),
        "orthanc": first_line([shutil.which("Orthanc") or "/usr/sbin/Orthanc", "--version"]),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.receive", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="images per run (default 40)")
    parser.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048: 8 MiB)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per receiver; the median is reported")
    parser.add_argument("--receivers", default="node,storescp,orthanc")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put images and receiver storage")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--serve-node", nargs=2, metavar=("STORAGE", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_node:
        return serve_node(Path(args.serve_node[0]), Path(args.serve_node[1]))
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"bench.receive: {tool} not installed (make deps)", file=sys.stderr)
            return 2
    classes = {"node": NodeReceiver, "storescp": StorescpReceiver, "orthanc": OrthancReceiver}
    wanted = [r for r in args.receivers.split(",") if r]
    tmp = Path(tempfile.mkdtemp(prefix="bench-receive-", dir=args.workdir))
    try:
        images = tmp / "images"
        images.mkdir()
        t0 = time.perf_counter()
        files = generate(images, args.count, args.size)
        total = sum(p.stat().st_size for p in files)
        print(f"generated {len(files)} images, {total / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in wanted}
        errors: list[str] = []
        for rep in range(args.repeats):
            for name in wanted:  # interleaved, so slow drifts of the machine hit every receiver alike
                work = tmp / f"{name}-{rep}"
                work.mkdir()
                receiver = classes[name]()
                receiver.start(work)
                assert receiver.proc is not None
                receiver.cpu_at_start = cpu_seconds(receiver.proc.pid)
                try:
                    seconds = storescu(receiver.port, receiver.called, files)
                finally:
                    rss = receiver.stop()
                problem = receiver.check(files)
                if problem:
                    errors.append(problem)
                mbps = total / 1e6 / seconds
                cpu_ms = receiver.cpu_s * 1e3 / len(files)
                runs[name].append({"seconds": seconds, "mb_per_s": mbps, "images_per_s": len(files) / seconds,
                                   "peak_rss_mib": rss, "cpu_ms_per_image": cpu_ms})
                print(f"  {name:9s} run {rep + 1}: {seconds:6.2f} s  {mbps:7.1f} MB/s  "
                      f"{len(files) / seconds:6.2f} img/s  peak RSS {rss:6.1f} MiB  CPU {cpu_ms:5.1f} ms/img",
                      flush=True)
                shutil.rmtree(work, ignore_errors=True)
        summary: dict[str, dict[str, Any]] = {}
        for name, rs in runs.items():
            summary[name] = {
                "mb_per_s": statistics.median(r["mb_per_s"] for r in rs),
                "images_per_s": statistics.median(r["images_per_s"] for r in rs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in rs),
                "runs": rs,
            }
        ratios = {}
        if "node" in summary:
            for peer in ("storescp", "orthanc"):
                if peer in summary:
                    ratios[f"node_vs_{peer}"] = summary["node"]["mb_per_s"] / summary[peer]["mb_per_s"]
        result = {
            "benchmark": "receive",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "images": len(files), "image_bytes": total // len(files), "total_bytes": total,
            "repeats": args.repeats, "machine": versions(), "receivers": summary, "ratios": ratios,
            "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
            "errors": errors,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "receive.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"median of {args.repeats} runs (1-min load average {load_before[0]:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores):")
        for name, s in summary.items():
            print(f"  {name:9s} {s['mb_per_s']:7.1f} MB/s  {s['images_per_s']:6.2f} img/s  "
                  f"peak RSS {s['peak_rss_mib']:6.1f} MiB  CPU {s['cpu_ms_per_image']:5.1f} ms/img")
        for key, value in ratios.items():
            print(f"  {key}: {value:.2f}x")
        print(f"results: {out}")
        if errors:
            print("ERRORS:", *errors, sep="\n  ")
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
