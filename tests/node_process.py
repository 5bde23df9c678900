"""Run `dicom-node serve` as a real subprocess for tests, with a bound sd_notify socket, plus dcmtk helpers.

``NodeProcess`` writes a YAML configuration, starts the node with ``NOTIFY_SOCKET`` pointing at a datagram socket
the test owns (so READY=1 / WATCHDOG=1 / STATUS= / STOPPING=1 are observed exactly as systemd would see them) and
never probes the DICOM port with bare TCP connects. ``storescu`` runs dcmtk's storescu and reports, per file,
whether the node answered Success.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from tests.conftest import ROOT, require_tool
from tests.orthanc import free_port

CR = "1.2.840.10008.5.1.4.1.1.1"


def node_config(
    port: int,
    storage: Path,
    pacs_port: int | None,
    *,
    ae: str = "NODE",
    pipeline: str = "none",
    forward_original: bool = True,
    workers: int = 2,
    pacs_ae: str = "ORTHANC",
    retry: str = "{initial_delay_s: 0.3, max_delay_s: 1, multiplier: 2, max_attempts: 50}",
    default: str = "drop",
    extra_routes: str = "",
    max_associations: int | None = None,
) -> str:
    """A small configuration: one route for CR/DX/CT to the destination ``pacs`` (when ``pacs_port``)."""
    dest = (
        f"""destinations:
  pacs:
    ae_title: {pacs_ae}
    host: 127.0.0.1
    port: {pacs_port}
    calling_ae: {ae}
    retry: {retry}
""" + (f"    max_associations: {max_associations}\n" if max_associations else "")
        if pacs_port
        else ""
    )
    return f"""node:
  ae_title: {ae}
  bind: 127.0.0.1
  port: {port}
  storage: {storage}
  workers: {workers}
  log_level: INFO
  timeouts: {{acse: 5, dimse: 15, network: 15, connection: 3}}
{dest}routes:
{extra_routes}  - name: images
    match: {{attribute: Modality, one_of: [CR, DX, CT]}}
    pipeline: {pipeline}
    destinations: [{"pacs" if pacs_port else ""}]
    forward_original: {str(forward_original).lower()}
default:
  action: {default}
"""


@dataclass
class NodeProcess:
    """One `dicom-node serve` subprocess (restartable) with its config, storage, log and notify socket."""

    workdir: Path
    config_text: str = ""
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage = self.workdir / "storage"
        self.config_path = self.workdir / "node.yaml"
        self.log_path = self.workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_path = self.workdir / "notify.sock"
        self.notify_sock: socket.socket | None = None
        self.messages: list[str] = []
        self._reader: threading.Thread | None = None

    def write_config(self, text: str) -> None:
        self.config_text = text
        self.config_path.write_text(text)

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0, extra_args: tuple[str, ...] = ()) -> None:
        if self.config_text and not self.config_path.exists():
            self.config_path.write_text(self.config_text)
        if self.notify_sock is None:
            self.notify_path.unlink(missing_ok=True)
            self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify_sock.bind(str(self.notify_path))
            self.notify_sock.settimeout(0.1)
            self._reader = threading.Thread(target=self._read_forever, daemon=True)
            self._reader.start()  # like systemd: always reading, so the node never finds the queue full
        self.messages.clear()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("JOURNAL_STREAM", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config_path), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
        log.close()
        if wait_ready:
            self.wait_message("READY=1", timeout_s)

    def _read_forever(self) -> None:
        sock = self.notify_sock
        while sock is not None and self.notify_sock is sock:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.extend(data.decode().splitlines())

    def read_messages(self, wait_s: float = 0.0) -> list[str]:
        """The sd_notify assignments received so far (after waiting ``wait_s``)."""
        time.sleep(wait_s)
        return list(self.messages)

    def wait_message(self, prefix: str, timeout_s: float = 30.0) -> str:
        """Wait for an sd_notify assignment starting with ``prefix`` (already received ones count)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for m in self.messages:
                if m.startswith(prefix):
                    return m
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node exited ({self.proc.returncode}) before {prefix}: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {prefix} within {timeout_s} s; got {self.messages}; log: {self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout_s: float = 30.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            time.sleep(0.1)
        raise AssertionError(f"log never matched {pattern!r} x{count} within {timeout_s} s:\n{self.log()[-4000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def workers(self) -> list[int]:
        """PIDs of the worker processes (children started by multiprocessing's spawn, not its resource tracker)."""
        out = []
        for pid in self.children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                out.append(pid)
        return out

    def kill9(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"node did not stop within {timeout_s} s: {self.log()[-3000:]}") from None
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.notify_sock is not None:
            sock, self.notify_sock = self.notify_sock, None
            if self._reader is not None:
                self._reader.join(2)
            sock.close()


@dataclass(frozen=True)
class StoreOutcome:
    returncode: int
    succeeded: list[Path]  # files the SCP answered with Success
    failed: list[Path]
    output: str


def storescu_args(files: list[Path], workdir: Path) -> list[str]:
    """storescu options that propose each (SOP class, transfer syntax) of ``files`` in its own presentation
    context (an association profile), so every file goes in its own syntax, never converted by storescu."""
    from pydicom.filereader import read_file_meta_info

    pairs = sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                    for m in (read_file_meta_info(f) for f in files)})
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Files]"]
    lines += [f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts)}" for n, (sop, ts) in enumerate(pairs, 1)]
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Files"]
    workdir.mkdir(parents=True, exist_ok=True)
    profile = workdir / f"storescu-{os.getpid()}-{time.monotonic_ns()}.cfg"
    profile.write_text("\n".join(lines) + "\n")
    return ["-xf", str(profile), "Files"]


def storescu(port: int, files: list[Path], called: str = "NODE", calling: str = "MODALITY",
             timeout_s: float = 120.0, extra: tuple[str, ...] = ()) -> StoreOutcome:
    """Send ``files`` over one association with dcmtk storescu, each in its own syntax; parse per-file status."""
    exe = require_tool("storescu")
    profile = storescu_args(files, Path(os.environ.get("TMPDIR", "/tmp")))
    proc = subprocess.run(
        [exe, "-v", *profile, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=timeout_s,
    )
    Path(profile[1]).unlink(missing_ok=True)
    return parse_storescu(proc.returncode, proc.stdout + proc.stderr)


def parse_storescu(returncode: int, output: str) -> StoreOutcome:
    succeeded: list[Path] = []
    failed: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif "Received Store Response" in line and current is not None:
            (succeeded if "(Success" in line or "(Warning" in line else failed).append(current)
            current = None
        elif line.startswith(("E: Store Failed", "E: Store SCU Failed")) and current is not None:
            failed.append(current)
            current = None
    return StoreOutcome(returncode, succeeded, failed, output)


def make_small_images(directory: Path, n: int, rows: int = 32, cols: int = 32) -> list[Path]:
    """``n`` tiny uncompressed CR images with unique UIDs (one study), for stream/crash tests."""
    directory.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    series = generate_uid()
    paths = []
    rng = np.random.default_rng(7)
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(CR)
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CR
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.Modality = "CR"
        ds.PatientName = "Test^Synthetic"
        ds.PatientID = "SYN0001"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (rows, cols), dtype=np.uint16).tobytes()
        path = directory / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A `dicom-node serve` child process in the test's temp dir (import this fixture into a test module)."""
    proc = NodeProcess(tmp_path / "node")
    try:
        yield proc
    finally:
        proc.close()


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 0.1 s; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
