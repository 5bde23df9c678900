"""Shared fixtures: real data location and real peer tools.

Peer tools (dcmtk, Orthanc, dicom3tools, pixelmed) are installed by `make test` (`make deps`). Where one is missing
a test is skipped with the reason, except under CI (CI=true), where a missing peer is a failure: CI must prove the
install steps.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALDATA = (ROOT.parent / "shared" / "realdata").resolve()


def require_tool(name: str) -> str:
    """Path of an external tool, or skip (fail under CI) with an explicit reason."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path:
        return path
    msg = f"peer tool {name!r} not installed (make deps installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    if not REALDATA.is_dir():
        msg = f"real data not found at {REALDATA} (expected ../shared/realdata beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return REALDATA


@pytest.fixture(scope="session")
def realdata_files(realdata_dir: Path) -> list[Path]:
    files = sorted(realdata_dir.glob("*.dcm"))
    assert files, f"no .dcm files in {realdata_dir}"
    return files
