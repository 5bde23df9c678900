"""`dicom-node demo`: the product's main job end to end, on embedded defaults.

1. starts an embedded receiving store (a pynetdicom Storage SCP in this process) standing in for the PACS, unless
   ``--pacs AE@HOST:PORT`` names a real one;
2. starts the node (`dicom-node serve`, a child process) with ``config/example.yaml``, its listening port and its
   ``pacs`` destination pointed at the store, and a temporary storage directory;
3. simulates a frontal CT localizer with a known off-centre shift, sends it by C-STORE and waits for the results;
4. prints a table (regions, boxes in mm, isocenter offset found vs true, areas, dose quantities) and writes the
   secondary capture as a PNG.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from dicom_node.netutil import free_port
from inference.types import QuantityKind

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "config" / "example.yaml"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=EXAMPLE_CONFIG, help="node configuration (default: example)")
    p.add_argument("--pacs", help="send results to this real PACS (AE@HOST:PORT) instead of the embedded store")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="where the PNG and results go")
    p.add_argument("--seed", type=int, default=7, help="simulator seed")
    p.add_argument("--shift", type=float, nargs=2, default=(35.0, -25.0), metavar=("X_MM", "Y_MM"),
                   help="patient off-centre shift (LPS mm) of the simulated localizer")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the results")


def _parse_ae(text: str) -> tuple[str, str, int]:
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return ae, host, int(port)
    except ValueError:
        raise SystemExit(f"--pacs must be AE@HOST:PORT, got {text!r}") from None


@dataclass
class EmbeddedStore:
    """A minimal PACS stand-in: accepts every storage SOP class and keeps what it receives (in memory and on disk)."""

    ae_title: str
    out_dir: Path
    received: list[tuple[float, Dataset]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> int:
        from pynetdicom import AllStoragePresentationContexts, StoragePresentationContexts

        ae = AE(ae_title=self.ae_title)
        contexts = list(AllStoragePresentationContexts or StoragePresentationContexts)
        for cx in contexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self.port = free_port()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self.port

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.out_dir / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        with self._cond:
            self.received.append((time.monotonic(), ds))
            self._cond.notify_all()
        return 0x0000

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


ALL_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
]


def _demo_config(base: Path, node_port: int, pacs: tuple[str, str, int], workdir: Path) -> Path:
    """The example config with the node's port and the ``pacs`` destination changed, and the ``measurement``
    section a site would write for its scanners, here the simulated ones (calibration and geometry: see
    ``inference.simulator.site``); nothing else."""
    from inference.simulator.site import simulated_site_config

    cfg = yaml.safe_load(base.read_text())
    cfg["measurement"] = simulated_site_config()
    cfg.setdefault("node", {})["port"] = node_port
    dest = cfg.setdefault("destinations", {}).setdefault("pacs", {})
    dest.update({"ae_title": pacs[0], "host": pacs[1], "port": pacs[2]})
    path = workdir / "demo-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class _ReadyWatch:
    """Our own sd_notify socket for the node (``NOTIFY_SOCKET``): the node says READY=1 only once its listener is up
    AND every worker has loaded and warmed its models (a C-ECHO is answered earlier, while models still load)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the node exited early with status {proc.returncode}")
            try:
                if "READY=1" in self.sock.recv(65536).decode(errors="replace").splitlines():
                    return
            except TimeoutError:
                continue
        raise SystemExit(f"the node was not ready (models loaded) within {timeout:.0f} s")

    def close(self) -> None:
        self.sock.close()


def _send(ds: Dataset, ae_title: str, port: int) -> float:
    scu = AE(ae_title="DEMOMODALITY")
    scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    t0 = time.monotonic()
    assoc = scu.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise SystemExit("the node refused the association")
    status = assoc.send_c_store(ds)
    assoc.release()
    if not status or status.Status != 0:
        raise SystemExit(f"C-STORE failed: {status}")
    return t0


def _expected_results(config: Path, storage: Path, ds: Dataset) -> int:
    """How many result objects the node sends for ``ds``: the outputs of the route it matches (at least SR + SC)."""
    from dicom_node.config import load_config
    from dicom_node.routing import select_route

    route = select_route(load_config(config, storage_override=storage), ds, "DEMOMODALITY").route
    if route is None or not {"sr", "sc"} <= set(route.outputs):
        raise SystemExit(f"{config}: the demo needs a route for CT localizers with outputs sr and sc")
    return len(route.outputs)


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def run(args: argparse.Namespace) -> int:
    from inference.simulator import simulate_case, write_case
    from sr_writer import read_image_notes, read_sr

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dicom-node-demo-") as tmp:
        work = Path(tmp)
        store: EmbeddedStore | None = None
        if args.pacs:
            pacs = _parse_ae(args.pacs)
        else:
            (work / "pacs").mkdir()
            store = EmbeddedStore("ORTHANC", work / "pacs")
            pacs = ("ORTHANC", "127.0.0.1", store.start())
            print(f"embedded PACS stand-in: AE ORTHANC at 127.0.0.1:{pacs[2]}")
        node_port = free_port()
        config = _demo_config(args.config, node_port, pacs, work)
        storage = work / "storage"
        log_path = out / "node.log"
        watch = _ReadyWatch(work / "notify.sock")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(watch.path)}
        env.pop("JOURNAL_STREAM", None)
        cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config), "--storage", str(storage)]
        print(f"starting the node: AE DICOMNODE at 127.0.0.1:{node_port} (log: {log_path})")
        with open(log_path, "wb") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            try:
                t_start = time.monotonic()
                watch.wait_ready(proc, timeout=args.timeout)
                print(f"node ready (models loaded and warm) in {time.monotonic() - t_start:.1f} s")

                case = simulate_case(args.seed, kind="ct_frontal", shift_mm=tuple(args.shift))
                dcm_path, truth_path = write_case(case, out)
                ds = case.dataset
                print(f"simulated frontal CT localizer {ds.Rows}x{ds.Columns}, true shift x={args.shift[0]:+.1f} mm "
                      f"y={args.shift[1]:+.1f} mm ({dcm_path.name}, truth {truth_path.name})")
                t_send = _send(ds, "DICOMNODE", node_port)
                if store is None:
                    print(f"sent; results go to {args.pacs}: look there (this demo cannot see them)")
                    return 0

                expected = _expected_results(config, storage, ds)

                def have_all(items: list[tuple[float, Dataset]]) -> bool:
                    kinds = {str(d.SOPClassUID) for _, d in items}
                    return len(items) >= expected and SR_3D in kinds and any(k in kinds for k in SC_CLASSES)

                if not store.wait_for(have_all, args.timeout):
                    print("results did not arrive in time; see", log_path, file=sys.stderr)
                    return 1
                first = min(t for t, _ in store.received)
                sr = next(d for _, d in store.received if str(d.SOPClassUID) == SR_3D)
                t_sr = next(t for t, d in store.received if str(d.SOPClassUID) == SR_3D)
                print(f"results in the PACS: {len(store.received)} objects; SR {1e3 * (t_sr - t_send):.0f} ms after "
                      f"the C-STORE started (first object after {1e3 * (first - t_send):.0f} ms)")
                _print_table(read_sr(sr), case.truth)
                for note in read_image_notes(sr):
                    print("  note:", note)
                sc = next(d for _, d in store.received if str(d.SOPClassUID) in SC_CLASSES)
                png = out / "demo_secondary_capture.png"
                _save_png(sc, png)
                print(f"secondary capture written to {png}; all results in {out}")
                for _, d in store.received:
                    d.save_as(out / f"result_{d.Modality}_{d.SOPClassUID.name.replace(' ', '_')}.dcm",
                              enforce_file_format=True)
                return 0
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                if store is not None:
                    store.stop()
                watch.close()


def _print_table(regions: list[Any], truth: Any) -> None:
    K = QuantityKind
    header = (f"{'region':8} {'score%':>6} {'width mm':>9} {'height mm':>9} {'area cm2':>9} {'lat off':>8} "
              f"{'true':>7} {'vert off':>9} {'true':>7} {'Dw cm':>6} {'SSDE f':>6}")
    print(header)
    print("-" * len(header))
    for r in regions:
        q = r.quantities

        def val(kind: QuantityKind, q: dict[Any, Any] = q) -> float | None:
            return q[kind].value if kind in q else None

        t = truth.region(r.label)
        tx, ty = (t.iso_offset_mm if t is not None and t.iso_offset_mm is not None else (None, None))
        vert = val(K.ISO_OFFSET_VERTICAL)
        est = "*" if K.ISO_OFFSET_VERTICAL in q and q[K.ISO_OFFSET_VERTICAL].estimated else " "
        print(f"{r.label:8} {_fmt(val(K.CONFIDENCE), 0):>6} {_fmt(val(K.BOX_WIDTH)):>9} {_fmt(val(K.BOX_HEIGHT)):>9} "
              f"{_fmt(val(K.ELLIPSE_AREA)):>9} {_fmt(val(K.ISO_OFFSET_LATERAL)):>8} {_fmt(tx):>7} "
              f"{_fmt(vert):>8}{est} {_fmt(ty):>7} {_fmt(val(K.WATER_EQUIVALENT_DIAMETER)):>6} "
              f"{_fmt(val(K.SSDE_FACTOR), 2):>6}")
    print("offsets: region centre minus isocenter, LPS mm (+x: patient's left, +y: posterior); * = estimated "
          "from a single frontal view")


def _save_png(sc: Dataset, path: Path) -> None:
    from PIL import Image

    arr = np.asarray(sc.pixel_array)
    Image.fromarray(arr.astype(np.uint8)).save(path)
