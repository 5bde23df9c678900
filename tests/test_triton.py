"""The ``triton`` backend against a REAL tritonserver on loopback (nvidia-pytriton's bundled Triton 2.51).

The repository the server loads is written by ``dicom-node export-triton`` (python platform: ONNX Runtime inside
Triton's python backend, the only backend the PyPI package ships). Servers are started by the fixtures
(tests/triton_server.py), with the inference API restricted to requests carrying an auth header, so the header
configuration is exercised for real. Unreachable servers are ports nothing listens on.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dicom_node.config import ConfigError, load_config
from dicom_node.netutil import free_port
from dicom_node.triton_export import ExportError, export_model, export_repository
from inference.backends import BackendError, BackendTransientError
from inference.engine import Detector
from inference.modelcard import load_card
from inference.triton import TritonBackend, TritonUnavailable, server_statistics
from nodecore.config_schema import ModelSpec, TritonSpec
from tests.node_process import wait_until
from tests.triton_server import TritonServer, metric_sum

pytestmark = pytest.mark.slow

KEY, SECRET = "x-dicom-node-key", "s3cret-for-tests"
# Triton's own API restriction: HTTP wants the header as named, gRPC the same with a "triton-grpc-protocol-" prefix
HEADERS = {KEY: SECRET, f"triton-grpc-protocol-{KEY}": SECRET}
RESTRICT = (f"--http-restricted-api=inference,model-config,metadata:{KEY}={SECRET}",
            f"--grpc-restricted-protocol=inference,model-config,metadata:{KEY}={SECRET}")  # fmt: skip


def node_yaml(tmp: Path, servers: str, fallback: str = "fail", extra: str = "") -> Path:
    path = tmp / "node.yaml"
    path.write_text(f"""node:
  ae_title: NODE
routes: []
models:
  reference:
    card: builtin:reference
    backend: triton
    max_batch: 8
    triton:
      servers: {servers}
      model: regions
      fallback: {fallback}
{extra}""")
    return path


@pytest.fixture(scope="module")
def card():  # type: ignore[no-untyped-def]
    return load_card("builtin:reference")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, card) -> Path:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("triton-repo")
    cfg = node_yaml(tmp, "[grpc://127.0.0.1:8001]")
    out = tmp / "repo"
    (m,) = export_repository(cfg, out, platform="python", threads=1, max_queue_delay_us=20000)
    assert m.name == "regions" and m.max_batch_size == 8
    # the same model exported with another card's hash: the node must refuse to use it
    other = export_model(card, "regions_other", "1", out, platform="python", threads=1)
    text = (other.directory / "config.pbtxt").read_text().replace(card.weights_sha256, "0" * 64)
    (other.directory / "config.pbtxt").write_text(text)
    # a slow copy (each execution sleeps 3 s), to kill the server with requests in flight
    slow = export_model(card, "regions_slow", "1", out, platform="python", threads=1, max_queue_delay_us=0)
    code = (slow.directory / "1" / "model.py").read_text()
    (slow.directory / "1" / "model.py").write_text(code.replace("    def execute(self, requests):\n",
                                                                "    def execute(self, requests):\n"
                                                                "        import time\n        time.sleep(3)\n"))
    return out


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(repository, tmp_path_factory.mktemp("triton-log") / "triton.log", extra_args=RESTRICT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scouts() -> list:  # type: ignore[type-arg]
    from inference.simulator import simulate_case

    return [simulate_case(seed, kind=kind, size=256, measure=False).dataset
            for seed, kind in ((71, "ct_frontal"), (72, "ct_lateral"))]  # fmt: skip


@pytest.fixture(scope="module")
def local(card) -> Iterator[Detector]:  # type: ignore[no-untyped-def]
    det = Detector.from_card(card, "onnxruntime")
    yield det
    det.close()


def triton_detector(card, servers: tuple[str, ...], **kw) -> Detector:  # type: ignore[no-untyped-def]
    kw.setdefault("headers", HEADERS)
    kw.setdefault("model", "regions")
    spec = ModelSpec("reference", str(card.path), "triton", 8, 5.0, {"threads": 1}, None, TritonSpec(servers, **kw))
    return Detector.from_spec(spec, card)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_same_boxes_as_local_onnxruntime(triton: TritonServer, card, scouts, local, protocol: str) -> None:  # type: ignore[no-untyped-def]
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    det = triton_detector(card, (url,))
    try:
        got = det.detect_batch(scouts)
        want = local.detect_batch(scouts)
        assert [len(d) for d in want] == [len(d) for d in got] and all(want), "regions expected on both scouts"
        for g, w in zip(got, want, strict=True):
            for a, b in zip(g, w, strict=True):
                assert a.label == b.label
                assert np.allclose([a.box.x_min, a.box.y_min, a.box.x_max, a.box.y_max],
                                   [b.box.x_min, b.box.y_min, b.box.x_max, b.box.y_max], atol=1e-3)  # fmt: skip
                assert a.score == pytest.approx(b.score, abs=1e-5)
        assert det.backend.stats.requests >= 2 and det.backend.stats.fallback_images == 0
    finally:
        det.close()


def test_restricted_api_refused_without_the_auth_header(triton: TritonServer, card, scouts) -> None:  # type: ignore[no-untyped-def]
    for url in (triton.grpc_url, triton.http_url):
        backend = TritonBackend(card, TritonSpec((url,), "regions", retry_for_s=0))
        with pytest.raises(BackendError) as err:
            backend.run(np.zeros((1, 1, 160, 160), np.float32))
        assert not isinstance(err.value, BackendTransientError), "a refused key is a configuration error"
        backend.close()


def test_auth_header_from_the_environment(triton: TritonServer, card, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRITON_TEST_KEY", SECRET)
    env = {f"triton-grpc-protocol-{KEY}": "TRITON_TEST_KEY"}
    backend = TritonBackend(card, TritonSpec((triton.grpc_url,), "regions", header_env=env))
    out = backend.run(np.zeros((2, 1, 160, 160), np.float32))
    assert out["det_boxes"].shape[0] == 2
    backend.close()


def test_retry_across_servers_then_skip_the_dead_one(triton: TritonServer, card, scouts, local) -> None:  # type: ignore[no-untyped-def]
    dead = f"grpc://127.0.0.1:{free_port()}"
    det = triton_detector(card, (dead, triton.http_url), cooldown_s=60.0)
    try:  # warm-up already met the dead server once
        failures = det.backend.stats.server_failures
        assert failures == 1
        got = det.detect_batch(scouts)
        assert det.backend.stats.server_failures == failures, "the dead server is skipped during its cooldown"
        assert det.backend.stats.by_server.get(triton.http_url, 0) >= 2
        assert [d.label for d in got[0]] == [d.label for d in local.detect_batch(scouts[:1])[0]]
    finally:
        det.close()


def test_unreachable_falls_back_to_the_local_backend(card, scouts, local) -> None:  # type: ignore[no-untyped-def]
    dead = (f"grpc://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    det = triton_detector(card, dead, fallback="onnxruntime")
    try:
        got = det.detect_batch(scouts)
        want = local.detect_batch(scouts)
        assert [[(d.label, d.box) for d in x] for x in got] == [[(d.label, d.box) for d in x] for x in want]
        assert det.backend.stats.requests == 0 and det.backend.stats.fallback_images >= 2
    finally:
        det.close()


def test_unreachable_without_fallback_is_transient_after_retry_for(card) -> None:  # type: ignore[no-untyped-def]
    dead = (f"grpc://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    det = triton_detector(card, dead, retry_for_s=1.0, cooldown_s=0.2)  # warm-up does not wait nor raise
    assert not det.warm
    t0 = time.monotonic()
    with pytest.raises(TritonUnavailable) as err:
        det.run_tensors([np.zeros((1, 160, 160), np.float32)])
    assert 0.9 <= time.monotonic() - t0 < 10
    assert isinstance(err.value, BackendTransientError)
    assert det.backend.stats.server_failures >= 4, "both servers were tried again during retry_for"
    det.close()


def test_infer_cli_through_triton(triton: TritonServer, tmp_path: Path, scouts, local, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from dicom_node.cli import main

    scout = tmp_path / "scout.dcm"
    scouts[0].save_as(scout, enforce_file_format=True)
    headers = ", ".join(f"{k}: {v}" for k, v in HEADERS.items())
    cfg = node_yaml(tmp_path, f"[{triton.grpc_url}]", extra=f"      headers: {{{headers}}}\n")
    assert main(["infer", str(scout), "--config", str(cfg), "--json", "--no-measure"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"].startswith(f"triton model regions on {triton.grpc_url}")
    want = local.detect(scouts[0])
    assert [d["label"] for d in result["detections"]] == [d.label for d in want]
    assert result["detections"][0]["box_px"] == pytest.approx(list(want[0].box.as_tuple()), abs=1e-3)


def test_server_exporting_other_weights_is_refused(triton: TritonServer, card) -> None:  # type: ignore[no-untyped-def]
    backend = TritonBackend(card, TritonSpec((triton.http_url,), "regions_other", headers=HEADERS))
    with pytest.raises(BackendError, match="serves weights 0000"):
        backend.run(np.zeros((1, 1, 160, 160), np.float32))


def test_dynamic_batching_merges_concurrent_requests(triton: TritonServer, card) -> None:  # type: ignore[no-untyped-def]
    before = server_statistics(triton.http_url, "regions", HEADERS)
    backend = TritonBackend(card, TritonSpec((triton.grpc_url,), "regions", headers=HEADERS))
    x = np.zeros((1, 1, 160, 160), np.float32)

    def client() -> None:
        for _ in range(6):
            backend.run(x)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Triton records a request's statistics after sending its response: poll until all 24 are counted
    deadline = time.monotonic() + 10
    while True:
        after = server_statistics(triton.http_url, "regions", HEADERS)
        requests = after["inference_count"] - before["inference_count"]
        if requests >= 24 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    executions = after["execution_count"] - before["execution_count"]
    assert requests == 24
    assert executions < requests, f"Triton ran {executions} executions for {requests} requests: nothing merged"
    assert max(after["batch_sizes"]) > 1
    wait_until(lambda: metric_sum(triton.metrics(), "nv_inference_count", "regions") == after["inference_count"],
               10, "Triton's Prometheus counter to match its statistics")  # fmt: skip
    backend.close()


def test_server_killed_with_requests_in_flight(repository: Path, tmp_path: Path, card, local) -> None:  # type: ignore[no-untyped-def]
    """The three failure kinds of a dying server: HTTP and gRPC requests in flight when it is SIGKILLed (HTTP:
    connection closed, gRPC: UNAVAILABLE), then connections refused; every one falls back to the local model."""
    server = TritonServer(repository, tmp_path / "kill.log")
    server.start()
    x = np.zeros((1, 1, 160, 160), np.float32)
    want = local.backend.run(x)
    backends = {url: TritonBackend(card, TritonSpec((url,), "regions_slow", cooldown_s=0.0),
                                   fallback_factory=lambda: local.backend)  # fmt: skip
                for url in (server.http_url, server.grpc_url)}
    results: dict[str, dict[str, np.ndarray]] = {}
    threads = [threading.Thread(target=lambda u=u, b=b: results.__setitem__(u, b.run(x))) for u, b in backends.items()]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)  # both requests are inside the model's 3 s execute
        server.kill()
        for t in threads:
            t.join(30)
        for url, backend in backends.items():
            assert backend.stats.server_failures == 1 and backend.stats.fallback_images == 1, url
            assert np.array_equal(results[url]["det_boxes"], want["det_boxes"]), url
            assert backend.stats.requests == 0
        http, grpc = (backends[u].servers[0].last_error for u in (server.http_url, server.grpc_url))
        assert "HTTPConnectionClosed" in http or "ConnectionResetError" in http, http
        assert "UNAVAILABLE" in grpc, grpc
        for url, backend in backends.items():  # now nothing listens: connection refused / UNAVAILABLE
            backend.run(x)
            assert backend.stats.server_failures == 2 and backend.stats.fallback_images == 2, url
        assert "ConnectionRefusedError" in backends[server.http_url].servers[0].last_error
    finally:
        server.kill()


_SHM_MODEL = '''import sys
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        from multiprocessing import shared_memory  # starts multiprocessing's resource tracker
        m = shared_memory.SharedMemory(create=True, size=16)
        m.close()
        m.unlink()
        pb_utils.Logger.log_info("stub python %s" % sys.version.split()[0])
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_python_stub_runs_the_interpreter_it_was_built_for(tmp_path: Path) -> None:
    """The '_thread.RLock' object has no attribute '_recursion_count' failure: a model that starts multiprocessing's
    resource tracker fails when the stub loads another build's libpython; with the interpreter's LIBDIR first on
    LD_LIBRARY_PATH (tests/triton_server.py) it loads, and the stub runs the server venv's Python version."""
    import platform

    (tmp_path / "repo" / "shm" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "shm" / "config.pbtxt").write_text(
        'name: "shm"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n'
    )
    (tmp_path / "repo" / "shm" / "1" / "model.py").write_text(_SHM_MODEL)
    server = TritonServer(tmp_path / "repo", tmp_path / "shm.log")
    server.start()
    server.stop()
    assert f"stub python {platform.python_version()}" in server.log(), server.log()[-2000:]


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    ca_key, ca, key, csr, crt = (tmp / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    run = [openssl]
    subprocess.run([*run, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
                    "-subj", "/CN=dicom-node test CA"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    ext = tmp / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run([*run, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
                    "-days", "2", "-extfile", ext], check=True, capture_output=True)  # fmt: skip
    return ca, crt, key


def test_grpc_over_tls(repository: Path, tmp_path: Path, card) -> None:  # type: ignore[no-untyped-def]
    ca, crt, key = _tls_files(tmp_path)
    server = TritonServer(repository, tmp_path / "tls.log",
                          extra_args=("--grpc-use-ssl=true", f"--grpc-server-cert={crt}", f"--grpc-server-key={key}",
                                      f"--grpc-root-cert={ca}"))  # fmt: skip
    server.start()
    try:
        url = f"grpcs://127.0.0.1:{server.grpc_port}"
        backend = TritonBackend(card, TritonSpec((url,), "regions", ca_file=str(ca)))
        assert backend.run(np.zeros((1, 1, 160, 160), np.float32))["num_dets"].shape == (1, 1)
        backend.close()
        untrusted = TritonBackend(card, TritonSpec((url,), "regions", retry_for_s=0))  # system CAs only
        with pytest.raises(TritonUnavailable):
            untrusted.run(np.zeros((1, 1, 160, 160), np.float32))
        plain = TritonBackend(card, TritonSpec((f"grpc://127.0.0.1:{server.grpc_port}",), "regions", retry_for_s=0))
        with pytest.raises(TritonUnavailable):
            plain.run(np.zeros((1, 1, 160, 160), np.float32))
    finally:
        server.stop()


class TlsProxy:
    """A TLS-terminating TCP proxy in front of Triton's HTTP port (Triton's HTTP endpoint has no TLS itself; sites
    put one in front), so the https:// client path runs against a real TLS handshake."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        import socket
        import ssl

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.target = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except OSError:  # a client that does not trust us
                raw.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_https_through_a_tls_proxy(triton: TritonServer, tmp_path: Path, card) -> None:  # type: ignore[no-untyped-def]
    ca, crt, key = _tls_files(tmp_path)
    proxy = TlsProxy(triton.http_port, crt, key)
    try:
        url = f"https://127.0.0.1:{proxy.port}"
        backend = TritonBackend(card, TritonSpec((url,), "regions", ca_file=str(ca), headers=HEADERS))
        assert backend.run(np.zeros((2, 1, 160, 160), np.float32))["det_scores"].shape[0] == 2
        untrusted = TritonBackend(card, TritonSpec((url,), "regions", headers=HEADERS, retry_for_s=0))
        with pytest.raises(TritonUnavailable):  # the default context verifies the server against system CAs
            untrusted.run(np.zeros((1, 1, 160, 160), np.float32))
    finally:
        proxy.close()


# ---- export-triton (no server needed) -------------------------------------------------------------------------


def test_export_onnxruntime_and_tensorrt_configs(tmp_path: Path, card) -> None:  # type: ignore[no-untyped-def]
    cfg = node_yaml(tmp_path, "[grpc://127.0.0.1:8001]")
    (ort,) = export_repository(cfg, tmp_path / "ort", platform="onnxruntime", instances=2, max_batch=16)
    text = (ort.directory / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 16" in text
    assert '{ name: "images" data_type: TYPE_FP32 dims: [ 1, 160, 160 ] }' in text
    assert '{ name: "det_boxes" data_type: TYPE_FP32 dims: [ -1, 4 ] }' in text
    assert '{ name: "num_dets" data_type: TYPE_INT32 dims: [ -1 ] }' in text
    assert "dynamic_batching { max_queue_delay_microseconds: 2000 }" in text
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in text
    assert f'string_value: "{card.weights_sha256}"' in text
    assert (ort.directory / "1" / "model.onnx").read_bytes() == card.weights.read_bytes()
    (trt,) = export_repository(cfg, tmp_path / "trt", platform="tensorrt")
    text = (trt.directory / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 8" in text
    script = (trt.directory / "build_engine.sh").read_text()
    assert "--saveEngine=1/model.plan" in script and "--maxShapes=images:8x1x160x160" in script
    assert card.weights_sha256 in script
    with pytest.raises(ExportError, match="GPU instances only"):
        export_repository(cfg, tmp_path / "trt2", platform="tensorrt", kind="cpu")


def test_export_checks_the_card(tmp_path: Path, card) -> None:  # type: ignore[no-untyped-def]
    # the card's input name must be the graph's
    bad = tmp_path / "card"
    shutil.copytree(card.path.parent, bad)
    (bad / "card.yaml").write_text((bad / "card.yaml").read_text().replace("name: images", "name: pixels"))
    with pytest.raises(ExportError, match="input.name is 'pixels'"):
        export_model(load_card(bad), "x", "1", tmp_path / "out")
    # swapped weights: the card's SHA-256 refuses them before anything is written
    (bad / "card.yaml").write_text((card.path).read_text())
    (bad / "model.onnx").write_bytes(card.weights.read_bytes() + b"\0")
    cfg = tmp_path / "n.yaml"
    cfg.write_text(node_yaml(tmp_path, "grpc://127.0.0.1:8001").read_text().replace("builtin:reference", str(bad)))
    with pytest.raises(ExportError, match="SHA-256 mismatch"):
        export_repository(cfg, tmp_path / "out2")
    assert not (tmp_path / "out2" / "regions").exists()
    # nothing to export
    plain = tmp_path / "p.yaml"
    plain.write_text("node: {ae_title: N}\nroutes: []\nmodels:\n  reference: {card: builtin:reference}\n")
    with pytest.raises(ExportError, match="no model has backend: triton"):
        export_repository(plain, tmp_path / "out3")
    (m,) = export_repository(plain, tmp_path / "out3", every_model=True)
    assert m.name == "reference" and m.version == "1"


def test_export_cli(tmp_path: Path) -> None:
    from dicom_node.cli import main

    cfg = node_yaml(tmp_path, "grpc://127.0.0.1:8001")
    assert main(["export-triton", "--config", str(cfg), "--out", str(tmp_path / "r"), "--platform", "python"]) == 0
    assert (tmp_path / "r" / "regions" / "1" / "model.py").is_file()
    assert main(["export-triton", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 1


# ---- configuration ---------------------------------------------------------------------------------------------


def test_config_triton_section(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRITON_TOKEN", "t")
    (tmp_path / "ca.pem").write_text("x")
    cfg = node_yaml(tmp_path, "[grpcs://10.1.2.3:8001, 'http://triton-b:8000']", "onnxruntime", extra="""\
      version: 2
      timeout: 500ms
      retry_for: 1m
      tls: {ca_file: ca.pem}
      headers: {Authorization: Bearer abc}
      header_env: {x-key: TRITON_TOKEN}
""")
    spec = load_config(cfg).models["reference"].triton
    assert spec is not None
    assert spec.servers == ("grpcs://10.1.2.3:8001", "http://triton-b:8000") and spec.model == "regions"
    assert (spec.version, spec.timeout_s, spec.retry_for_s, spec.fallback) == ("2", 0.5, 60.0, "onnxruntime")
    assert spec.ca_file == str(tmp_path / "ca.pem")
    assert spec.headers == {"authorization": "Bearer abc"} and spec.header_env == {"x-key": "TRITON_TOKEN"}


def test_config_triton_errors_name_file_line_and_key(tmp_path: Path) -> None:
    cfg = node_yaml(tmp_path, "[grpc://127.0.0.1:8001, 'ftp://x:1']", "onnxrntime", extra="""\
      version: zero
      header_env: {x-key: DICOM_NODE_UNSET_VARIABLE}
      tls: {cert_file: missing.pem}
""")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    for needle in ("node.yaml:10: models.reference.triton.servers[1]: 'ftp://x:1' is not a Triton server URL",
                   "node.yaml:12: models.reference.triton.fallback: 'onnxrntime' is not one of",
                   "did you mean 'onnxruntime'",
                   "node.yaml:13: models.reference.triton.version: expected a model version number",
                   "node.yaml:14: models.reference.triton.header_env.x-key: environment variable",
                   "node.yaml:15: models.reference.triton.tls.cert_file: file"):  # fmt: skip
        assert needle in text, text
    other = tmp_path / "o.yaml"
    other.write_text("node: {ae_title: N}\nroutes: []\nmodels:\n  m:\n    card: builtin:reference\n"
                     "    triton: {servers: grpc://a:1}\n  n:\n    card: builtin:reference\n    backend: triton\n")
    with pytest.raises(ConfigError) as err:
        load_config(other)
    assert "o.yaml:6: models.m.triton: only used with backend: triton" in str(err.value)
    assert "o.yaml:8: models.n.triton: backend triton needs a triton section" in str(err.value)
