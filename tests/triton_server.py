"""A real Triton Inference Server on loopback for tests and benchmarks, from the PyPI package nvidia-pytriton.

``prepare()`` builds, once, under ``build/triton/`` (ignored by git):

- ``venv/``: a small virtual environment for the SERVER side only, made from the same base interpreter as the
  project's venv, holding ``numpy<2`` and ``onnxruntime`` (what the python-backend models import) and
  ``nvidia-pytriton`` installed with ``--no-deps`` (only its bundled ``tritonserver`` 2.51 tree is used: bin,
  backends/python, caches and the python backend stubs). The project's own venv keeps its numpy 2: the python
  backend stub of that Triton release exchanges tensors with numpy's 1.x C API (measured: with numpy 2 every
  tensor arrives as zeros and outputs come back empty), hence the separate environment.
- the python backend stub matching the interpreter copied into ``backends/python`` (the binary does not pick one).

``TritonServer`` starts ``tritonserver`` directly with the environment it needs:

- ``LD_LIBRARY_PATH`` = the interpreter's own LIBDIR first, then the wheel's ``nvidia_pytriton.libs``. The stub
  links ``libpython3.X.so.1.0`` without an RPATH to it: without LIBDIR first the loader may take another build
  of libpython (e.g. Debian's 3.11.2 beside pyenv's 3.11.7) and models fail with
  ``'_thread.RLock' object has no attribute '_recursion_count'`` (a C library and a stdlib of two versions).
- ``PATH`` = the server venv's ``bin`` first: the embedded interpreter of the stub ignores PYTHONPATH but finds
  ``pyvenv.cfg`` through ``python3`` on PATH, so the venv's site-packages (numpy<2, onnxruntime) are importable.

Run ``python -m tests.triton_server prepare`` (``make triton-server``; ``make test`` does it) to build it ahead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "triton"
PYTRITON = "nvidia-pytriton==0.7.0"  # Apache-2.0; bundles tritonserver 2.51 (BSD-3) with its python backend
SERVER_PACKAGES = ("numpy>=1.26,<2", "onnxruntime>=1.17")  # what the exported python-backend models import


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # build/triton
    python: Path  # the server venv's interpreter
    tree: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs
    libdir: Path  # LIBDIR of the interpreter (holds libpython3.X.so.1.0)

    @property
    def binary(self) -> Path:
        return self.tree / "bin" / "tritonserver"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(self.libdir), str(self.libs), *filter(None, [os.environ.get("LD_LIBRARY_PATH", "")])]
        )
        env["PATH"] = os.pathsep.join([str(self.python.parent), os.environ.get("PATH", "")])
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        return env


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")


def prepare(build: Path = BUILD) -> TritonInstall:
    """Build (once, cached, safe against a parallel call) and return the local Triton install."""
    build.mkdir(parents=True, exist_ok=True)
    venv = build / "venv"
    python = venv / "bin" / "python"
    stamp = build / ".stamp"
    wanted = {"pytriton": PYTRITON, "packages": list(SERVER_PACKAGES),
              "base": str(getattr(sys, "_base_executable", sys.executable)), "version": sys.version.split()[0]}
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted and python.exists()):
            shutil.rmtree(venv, ignore_errors=True)
            _run([wanted["base"], "-m", "venv", str(venv)])
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            _run([*pip, *SERVER_PACKAGES])
            _run([*pip, "--no-deps", PYTRITON])  # its numpy<2 pin is met by this venv anyway
            install = _locate(python)
            stub = install.tree / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
            stub = stub / "triton_python_backend_stub"
            if not stub.is_file():
                raise RuntimeError(f"{PYTRITON} has no python backend stub for Python {sys.version_info[:2]}")
            shutil.copy2(stub, install.tree / "backends" / "python" / "triton_python_backend_stub")
            stamp.write_text(json.dumps(wanted))
        return _locate(python)


def _locate(python: Path) -> TritonInstall:
    out = subprocess.run(
        [str(python), "-c", "import json, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], "
         "sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('LDLIBRARY')]))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    purelib, libdir, ldlibrary = json.loads(out)
    if not ldlibrary or not ldlibrary.endswith(".so") and ".so." not in ldlibrary:
        raise RuntimeError(f"{python} has no shared libpython ({ldlibrary}): the Triton python backend stub needs "
                           "one (use a Python built with --enable-shared, e.g. Debian's or pyenv's)")  # fmt: skip
    site = Path(purelib)
    return TritonInstall(python.parent.parent.parent, python, site / "pytriton" / "tritonserver",
                         site / "nvidia_pytriton.libs", Path(libdir))  # fmt: skip


def _free_port() -> int:
    from dicom_node.netutil import free_port

    return free_port()


@dataclass
class TritonServer:
    """One ``tritonserver`` process on 127.0.0.1 serving ``repository`` (restartable on the same ports)."""

    repository: Path
    log_path: Path
    install: TritonInstall = field(default_factory=prepare)
    http_port: int = field(default_factory=_free_port)
    grpc_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        cmd = [
            str(self.install.binary), f"--model-repository={self.repository}",
            f"--backend-directory={self.install.tree / 'backends'}", f"--cache-directory={self.install.tree / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=3", "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0", "--disable-auto-complete-config", "--metrics-interval-ms=500",
            *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.install.env(),
                                     start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            if self.ready():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"tritonserver not ready within {timeout_s} s:\n{self.log()[-4000:]}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        """Triton's own Prometheus text (``/metrics`` on the metrics port)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server and its python backend stubs (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def metric_sum(text: str, name: str, model: str | None = None) -> float:
    """Sum of a Prometheus counter/gauge in Triton's metrics text (optionally for one model)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if model is not None and f'model="{model}"' not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        print("usage: python -m tests.triton_server prepare", file=sys.stderr)
        raise SystemExit(2)
    t0 = time.monotonic()
    inst = prepare()
    print(f"tritonserver ready to run: {inst.binary} (server venv {inst.python.parent.parent}, "
          f"libpython from {inst.libdir}; {time.monotonic() - t0:.1f} s)")
