"""A real Orthanc PACS for tests: ``orthanc`` fixture plus a tiny urllib REST client.

Use it from a test module with ``from tests.orthanc import orthanc  # noqa: F401`` (or ``pytest_plugins``).
Orthanc listens on free loopback ports with a temporary configuration (AET ``ORTHANC``, no remote access, no
authentication, storage and index under the test's tmp dir). ``stop()``/``start()`` keep the same ports and the
same storage ("PACS down for a while"); ``start(reject=True)`` restarts it so that it rejects every association
from an AE it does not know (permanent rejection, "calling AE title not recognised").

Every instance Orthanc *stores* (first store or overwrite) is appended to a log by a Lua ``OnStoredInstance``
callback, so ``store_events()`` counts deliveries, not only distinct instances.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node.netutil import free_port
from tests.conftest import require_tool

ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian package orthanc-dicomweb

_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local f = io.open("{log}", "a")
  f:write(tags["SOPInstanceUID"] .. "\\n")
  f:close()
end
"""


class OrthancError(RuntimeError):
    pass


class Orthanc:
    """One Orthanc process (restartable on the same ports) and its REST API."""

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 dicomweb: bool = False) -> None:
        self.binary = require_tool("Orthanc")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.aet = ORTHANC_AET
        self.host = "127.0.0.1"
        self.modalities: dict[str, tuple[str, str, int]] = dict(modalities or {})
        self.store_log = workdir / "stored.log"
        self.log_file = workdir / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rejecting = False
        self.dicomweb = dicomweb  # load Debian's orthanc-dicomweb plugin (DICOMweb root /dicom-web/)

    # ---- process control -------------------------------------------------------------------------------------
    def _config(self, reject: bool) -> dict[str, Any]:
        lua = self.workdir / "count.lua"
        lua.write_text(_LUA.replace("{log}", str(self.store_log)))
        cfg: dict[str, Any] = {
            "Name": "test-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": not reject,
            "DicomAlwaysAllowStore": not reject,
            "DicomModalities": {} if reject else {k: list(v) for k, v in self.modalities.items()},
            "OverwriteInstances": True,  # a re-delivery is stored again (and counted by the Lua log)
            "LuaScripts": [str(lua)],
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "SaveJobs": False,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "UnknownSopClassAccepted": True,
        }
        if self.dicomweb:
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                               "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        if os.environ.get("DICOM_NODE_TEST_ORTHANC_BIND"):  # pragma: no cover - debugging aid
            cfg["RemoteAccessAllowed"] = True
        return cfg

    def start(self, reject: bool = False, timeout_s: float = 30.0) -> None:
        """Start (or restart) Orthanc on the same ports and storage; ``reject``: refuse unknown calling AEs."""
        if self.proc is not None:
            self.stop(kill=True)
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self._config(reject), indent=1))
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [self.binary, "--no-jobs", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        self.rejecting = reject
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                self.get("/system")
                if self._dicom_port_open() and (not reject or self._rejects_unknown_callers()):
                    return
            except (OSError, OrthancError):
                pass
            time.sleep(0.1)
        raise OrthancError(f"Orthanc did not answer /system within {timeout_s} s: {self._log_tail()}")

    def _rejects_unknown_callers(self) -> bool:
        """True once an association from an unknown calling AE gets A-ASSOCIATE-RJ (Orthanc answers DICOM a little
        after its port opens; tests of the permanent-rejection path need the rejection, not a half-started peer)."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title="READY-PROBE")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        ae.connection_timeout = 2
        assoc = ae.associate(self.host, self.dicom_port, ae_title=self.aet)
        if assoc.is_established:
            assoc.release()
        return bool(assoc.is_rejected)

    def stop(self, kill: bool = False) -> None:
        """Stop Orthanc (SIGTERM, or SIGKILL with ``kill``: faster); ports and storage stay for ``start()``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    # ---- REST ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def upload(self, data: bytes) -> str:
        """Store one DICOM file through the REST API; Orthanc's instance identifier."""
        req = urllib.request.Request(self.url + "/instances", data=data, method="POST",
                                     headers={"Content-Type": "application/dicom"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return str(json.loads(resp.read())["ID"])
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"POST /instances: HTTP {exc.code} {exc.read()[:300]!r}") from exc

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.get("/instances"))

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def tags(self, instance_id: str) -> dict[str, Any]:
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def study_of(self, instance_id: str) -> dict[str, Any]:
        return dict(self.get(f"/instances/{instance_id}/study"))

    def sop_instance_uids(self) -> Counter[str]:
        """SOP Instance UID -> number of Orthanc instances carrying it (1 each when nothing is duplicated)."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return Counter(str(item["MainDicomTags"].get("SOPInstanceUID", "")) for item in found)

    def find_instance(self, sop_instance_uid: str) -> list[str]:
        return list(self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}))

    def store_events(self) -> Counter[str]:
        """SOP Instance UID -> how many times Orthanc stored it (re-deliveries included)."""
        if not self.store_log.exists():
            return Counter()
        return Counter(line for line in self.store_log.read_text().splitlines() if line)

    def delete_all(self) -> None:
        for study in self.get("/studies"):
            self._request("DELETE", f"/studies/{study}")
        self.store_log.unlink(missing_ok=True)

    def wait_for_count(self, n: int, timeout_s: float = 30.0) -> int:
        """Wait until at least ``n`` instances are stored; returns the count seen last."""
        deadline = time.monotonic() + timeout_s
        count = self.count()
        while count < n and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.count()
        return count


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A running Orthanc (AET ORTHANC) on free loopback ports; stopped at teardown.

    Add a modality with ``orthanc.modalities["NODE"] = ("NODE", "127.0.0.1", port)`` then ``orthanc.start()``.
    """
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
