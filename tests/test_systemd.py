"""The systemd unit (systemd-analyze verify / security) and the sd_notify implementation (real AF_UNIX sockets)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.sdnotify import SdNotifier, watchdog_interval_s
from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "dicom-node.service"
INSTALLED_BIN = "/opt/dicom-node/venv/bin/dicom-node"


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        msg = "systemd-analyze not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with the install path of the binary replaced by this checkout's (verify checks it exists)."""
    here = Path(sys.executable).with_name("dicom-node")
    if not here.exists():
        pytest.skip(f"{here} missing: install the package into the venv (make venv)")
    unit = tmp_path / "dicom-node.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(here)))
    return unit


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_declares_the_required_behaviour() -> None:
    s = _settings()
    expect = {
        "Type": "notify", "NotifyAccess": "main", "User": "dicom-node", "StateDirectory": "dicom-node",
        "Restart": "on-failure", "KillSignal": "SIGTERM", "KillMode": "mixed", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "no",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "no", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expect.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert int(s["WatchdogSec"][0]) > 0 and int(s["TimeoutStopSec"][0]) > 3 * 20  # > the three 20 s drain stages
    assert s["ExecStart"][0].endswith("serve --config /etc/dicom-node/config.yaml --storage /var/lib/dicom-node")
    assert "build-engines --config /etc/dicom-node/config.yaml" in s["ExecStartPre"][0]
    assert "/var/lib/dicom-node" in s["ReadWritePaths"][0]
    assert any("nvidia" in d for d in s["DeviceAllow"])


@pytest.mark.peers
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    unit = _unit_for_here(tmp_path)
    verify = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "dicom-node.service" not in verify.stderr, verify.stderr  # no warnings about our unit
    sec = subprocess.run([exe, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for dicom-node.service: ([\d.]+)", sec.stdout)
    assert m, sec.stdout[-2000:] + sec.stderr
    assert float(m.group(1)) <= 3.0, sec.stdout  # 0 (locked down) .. 10 (exposed); "OK" is below 4
    print(f"systemd-analyze security exposure: {m.group(1)}")


def test_build_engines_tolerates_missing_tensorrt() -> None:
    """ExecStartPre must not fail the start on a host without TensorRT/GPU."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - GPU hosts
        pytest.skip("TensorRT is installed here: the command really builds engines")
    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "build-engines", "--config",
                          str(ROOT / "config" / "example.yaml")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to do" in res.stdout


# ---- sd_notify ---------------------------------------------------------------------------------------------------


def test_notify_on_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        n = SdNotifier(str(path))
        assert n.enabled
        assert n.ready("listening on 11112")
        assert server.recv(4096).decode() == "READY=1\nSTATUS=listening on 11112"
        assert n.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert server.recv(4096) == b"STOPPING=1"
        n.close()


def test_notify_on_an_abstract_socket() -> None:
    name = f"dicom-node-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        n = SdNotifier("@" + name)
        assert n.status("hello")
        assert server.recv(4096) == b"STATUS=hello"


def test_notify_is_a_noop_without_socket_and_survives_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier()
    assert not n.enabled and n.ready() is False
    gone = SdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.enabled and gone.ready() is False  # logged once, never raised


def test_notify_never_blocks_on_a_reader_that_does_not_read(tmp_path: Path) -> None:
    """systemd reads at once; a stuck reader must not stall the node's main loop: messages are dropped instead."""
    import time

    path = tmp_path / "slow.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = SdNotifier(str(path))
        t0 = time.monotonic()
        sent = [n.watchdog() for _ in range(2000)]
        assert time.monotonic() - t0 < 5
        assert sent[0] and not all(sent)  # the first went through, the overflow was dropped


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert watchdog_interval_s() is None
