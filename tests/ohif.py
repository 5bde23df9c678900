"""OHIF Viewer v3 for real-viewer tests: the prebuilt ``@ohif/app`` from npm, served on loopback beside Orthanc.

``make viewer-deps`` puts the app under ``build/viewer/ohif`` (the npm package's ``dist``, its integrity checked)
and playwright-core / @cornerstonejs/adapters under ``build/viewer/node_modules`` (tests/viewer/package-lock.json).
``OhifServer`` serves the app's files with a configuration pointing at Orthanc's DICOMweb plugin and forwards
``/dicom-web/`` to that Orthanc, so the viewer and its data share one origin (Orthanc sends no CORS headers).
This is test equipment, not part of the product: the product's pages are issue 13's console.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dicom_node.netutil import free_port
from tests.conftest import ROOT

VIEWER_DIR = ROOT / "build" / "viewer"
OHIF_DIR = VIEWER_DIR / "ohif"
NODE_MODULES = VIEWER_DIR / "node_modules"
CHROMIUM = "/usr/bin/chromium"

APP_CONFIG = """window.config = {
  name: 'dicom-node tests',
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 1,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (test)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def require_viewer() -> None:
    """Skip (fail under CI) when the viewer, its Node packages or chromium are missing."""
    missing = [str(p) for p in (OHIF_DIR / "index.html", NODE_MODULES / "playwright-core", Path(CHROMIUM))
               if not p.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        msg = f"real-viewer test needs {', '.join(missing)} (run `make viewer-deps` and `make deps`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class OhifServer:
    """OHIF's static files plus a forward of /dicom-web/ and /wado to Orthanc, on one loopback port."""

    def __init__(self, orthanc_url: str) -> None:
        self.orthanc_url = orthanc_url.rstrip("/")
        self.port = free_port()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test server
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path.startswith(("/dicom-web/", "/wado")):
                    server._forward(self)
                elif path == "/app-config.js":
                    self._send(200, APP_CONFIG.encode(), "application/javascript")
                else:
                    server._static(self, path)

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _static(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        root = OHIF_DIR.resolve()
        target = (root / path.lstrip("/")).resolve()
        if root not in target.parents and target != root or not target.is_file():
            target = root / "index.html"  # single-page app: every route is index.html
        body = target.read_bytes()
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            ctype = "application/wasm"
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        req = urllib.request.Request(self.orthanc_url + handler.path,
                                     headers={k: v for k, v in handler.headers.items() if k.lower() == "accept"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, body, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, headers = exc.code, exc.read(), exc.headers
        handler.send_response(status)
        for name in ("Content-Type",):
            if headers.get(name):
                handler.send_header(name, headers[name])
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def run_node(script: Path, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run a Node script of tests/viewer with ``payload`` as JSON on stdin; its last stdout line is JSON."""
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    runnable = VIEWER_DIR / script.name  # ES modules resolve packages from the script's own folder
    shutil.copyfile(script, runnable)
    proc = subprocess.run(["node", str(runnable)], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=VIEWER_DIR)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{script.name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


@pytest.fixture(scope="session")
def ohif_server_factory() -> Iterator[list[OhifServer]]:
    servers: list[OhifServer] = []
    yield servers
    for s in servers:
        s.stop()
