"""The ``triton`` backend: a model served by NVIDIA Triton Inference Server (KServe v2, gRPC or HTTP).

The node keeps everything around the model: decoding, preprocessing (with the recorded inverse transforms, so boxes
map back to original pixels exactly), decoding of the raw outputs, NMS, geometry and results. Only the tensor call
goes to Triton: ``TritonBackend.run(batch)`` sends the preprocessed batch to the first server that answers and
returns the raw outputs by name, like every other ``inference.backends.Backend``.

Servers are tried in the configured order (``TritonSpec.servers``); one that is unreachable is skipped for
``cooldown_s``. The failures that mean "this server cannot serve now" (measured against a real tritonserver, see
docs/SCALING.md) are: a refused connection (HTTP: ``ConnectionRefusedError``; gRPC: ``UNAVAILABLE``), a server
killed with the request in flight (HTTP: ``HTTPConnectionClosed``; gRPC: ``UNAVAILABLE``), timeouts, and a model
that is not loaded there (404 / ``NOT_FOUND``). When no server answers, the configured ``fallback`` decides: a
local backend runs the same card (same weights, checked by SHA-256), or (``fail``) the servers are tried again for
``retry_for_s`` and then ``TritonUnavailable`` is raised, which the worker treats as transient: the job goes back
to the queue and is run again later (dicom_node.workers). Any other server error (a malformed request, a model
whose inputs do not match the card) is a ``BackendError``: it is a configuration problem, not an outage.

On the first contact with each server the model's metadata and configuration are checked against the card: input
name, data type and shape, output names, and the ``dicom_node_weights_sha256`` parameter that
``dicom-node export-triton`` writes (a repository built from other weights is refused).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.backend_base import Backend, BackendError, BackendTransientError
from inference.modelcard import ModelCard
from nodecore.config_schema import TritonSpec

log = logging.getLogger(__name__)

SHA_PARAMETER = "dicom_node_weights_sha256"
_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}
_UNAVAILABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.NOT_FOUND",
                     "StatusCode.CANCELLED", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.ABORTED"}  # fmt: skip
_UNAVAILABLE_HTTP = {"404", "408", "429", "500", "502", "503", "504"}


class TritonUnavailable(BackendTransientError):
    """No configured Triton server could run the request (and no local fallback is configured)."""


@dataclass
class _Server:
    url: str  # as configured, e.g. grpc://10.0.0.5:8001
    protocol: str  # grpc | http
    tls: bool
    address: str  # host:port
    down_until: float = 0.0
    checked: bool = False
    max_batch: int = 0  # the model's max_batch_size on this server (0: not batched)
    last_error: str = ""


@dataclass
class TritonStats:
    """Counters of one backend (for logs, tests and benchmarks)."""

    requests: int = 0  # successful Triton calls
    images: int = 0
    fallback_batches: int = 0
    fallback_images: int = 0
    server_failures: int = 0  # attempts that failed with an "unavailable" error
    by_server: dict[str, int] = field(default_factory=dict)


def is_unavailable(exc: BaseException) -> bool:
    """True for the errors that mean "this server cannot serve now" (see the module docstring)."""
    if isinstance(exc, OSError | TimeoutError | socket.timeout | ConnectionError):
        return True
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith(("geventhttpclient", "gevent")) or name in ("Timeout", "HTTPConnectionClosed"):
        return True
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # pragma: no cover - tritonclient is a dependency of this module
        return False
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        if "restricted" in str(exc.message() or ""):  # Triton's restricted API answers UNAVAILABLE: a missing key
            return False
        return status in _UNAVAILABLE_GRPC or status in _UNAVAILABLE_HTTP
    return False


def _parse_url(url: str) -> _Server:
    scheme, _, address = url.partition("://")
    return _Server(url, "grpc" if scheme.startswith("grpc") else "http", scheme in ("grpcs", "https"),
                   address.rstrip("/"))  # fmt: skip


class TritonBackend(Backend):
    """A card's model on one or more Triton servers (see the module docstring).

    ``fallback_factory`` opens the local fallback backend (called once, on the first outage); None: ``fail``.
    """

    def __init__(
        self, card: ModelCard, spec: TritonSpec, *, max_batch: int = 8,
        fallback_factory: Callable[[], Backend] | None = None,
    ) -> None:  # fmt: skip
        try:
            import tritonclient  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"triton: tritonclient is not installed ({exc}); pip install 'dicom-node[triton]'") from None
        if card.input.dtype not in _DTYPES:
            raise BackendError(f"triton: unsupported input dtype {card.input.dtype}")
        self.card = card
        self.spec = spec
        self.servers = [_parse_url(u) for u in spec.servers]
        if not self.servers:
            raise BackendError("triton: no servers configured")
        self.headers = dict(spec.headers)
        for header, var in spec.header_env.items():
            if var not in os.environ:
                raise BackendError(f"triton: environment variable {var} (header {header}) is not set")
            self.headers[header] = os.environ[var]
        self.name = "triton"
        self.device = ",".join(s.url for s in self.servers)
        self.max_batch = card.input.batch or max(1, int(max_batch))
        self.output_names = tuple(card.output.names or ())
        self.input_name = card.input.name or ""
        self.datatype = _DTYPES[card.input.dtype]
        self.stats = TritonStats()
        self._fallback_factory = fallback_factory
        self._fallback: Backend | None = None
        self._lock = threading.Lock()
        self._local = threading.local()  # HTTP clients are gevent based: one per thread
        self._grpc: dict[str, Any] = {}
        self._quick = False
        self._outage_logged = False
        self._served_by = ""

    # ---- clients

    def _client(self, server: _Server) -> Any:
        spec = self.spec
        if server.protocol == "grpc":
            with self._lock:
                client = self._grpc.get(server.url)
                if client is None:
                    import tritonclient.grpc as grpcclient

                    client = grpcclient.InferenceServerClient(  # it reads the PEM files itself
                        server.address, ssl=server.tls, root_certificates=spec.ca_file,
                        private_key=spec.key_file, certificate_chain=spec.cert_file,
                    )  # fmt: skip
                    self._grpc[server.url] = client
                return client
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(server.url)
        if client is None:
            import tritonclient.http as httpclient

            kwargs: dict[str, Any] = {}
            if server.tls:
                import gevent.ssl

                options = {k: v for k, v in (("ca_certs", spec.ca_file), ("certfile", spec.cert_file),
                                             ("keyfile", spec.key_file)) if v}  # fmt: skip
                kwargs = {"ssl": True, "ssl_options": options,
                          "ssl_context_factory": gevent.ssl.create_default_context}  # verify, unlike the default
            client = httpclient.InferenceServerClient(
                server.address, connection_timeout=spec.connect_timeout_s, network_timeout=spec.timeout_s, **kwargs
            )
            clients[server.url] = client
        return client

    def _drop_client(self, server: _Server) -> None:
        """Forget a client after a failure: a killed server leaves HTTP keep-alive sockets dead, and a gRPC channel
        that failed backs off its reconnects (up to minutes); the next attempt opens a fresh one."""
        if server.protocol == "http":
            client = (getattr(self._local, "clients", {}) or {}).pop(server.url, None)
        else:
            with self._lock:
                client = self._grpc.pop(server.url, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken client
                pass

    # ---- model checks (first contact with each server)

    def _check(self, server: _Server, client: Any) -> None:
        spec, card = self.spec, self.card
        grpc = server.protocol == "grpc"
        kwargs: dict[str, Any] = {"model_version": spec.version, "headers": self.headers}
        if grpc:
            meta = client.get_model_metadata(spec.model, as_json=True, client_timeout=spec.timeout_s, **kwargs)
            config = client.get_model_config(spec.model, as_json=True, client_timeout=spec.timeout_s,
                                             **kwargs)["config"]  # fmt: skip
        else:
            meta = client.get_model_metadata(spec.model, **kwargs)
            config = client.get_model_config(spec.model, **kwargs)
        where = f"triton model {spec.model!r} on {server.url}"
        inputs = {i["name"]: i for i in meta.get("inputs", [])}
        if not inputs:
            raise BackendError(f"{where}: has no inputs")
        name = self.input_name or next(iter(inputs))
        if name not in inputs:
            raise BackendError(f"{where}: no input {name!r} (has {', '.join(inputs)}; card input.name)")
        if inputs[name].get("datatype") != self.datatype:
            raise BackendError(f"{where}: input {name} is {inputs[name].get('datatype')}, the card says "
                               f"{card.input.dtype} ({self.datatype})")  # fmt: skip
        c, h, w = card.input.channels, card.input.height, card.input.width
        want = [c, h, w] if card.input.layout == "NCHW" else [h, w, c]
        shape = [int(d) for d in inputs[name].get("shape", [])]
        max_batch = int(config.get("max_batch_size", 0) or 0)
        dims = shape[1:] if max_batch > 0 or len(shape) == 4 else shape
        if any(d not in (-1, e) for d, e in zip(dims, want, strict=False)) or len(dims) != 3:
            raise BackendError(f"{where}: input {name} has shape {shape}, the card needs {want} per image")
        outputs = [o["name"] for o in meta.get("outputs", [])]
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise BackendError(f"{where}: outputs {missing} of the card are missing (server has {outputs})")
        params = config.get("parameters", {}) or {}
        sha = ((params.get(SHA_PARAMETER) or {}).get("string_value") or "").strip().lower()
        if sha and sha != card.weights_sha256:
            raise BackendError(f"{where}: serves weights {sha[:16]}..., the card {card.name} {card.version} has "
                               f"{card.weights_sha256[:16]}... (re-export with dicom-node export-triton)")  # fmt: skip
        if not sha:
            log.warning("%s: no %s parameter; weights not verified against the card", where, SHA_PARAMETER)
        with self._lock:
            self.input_name = self.input_name or name
            if not self.output_names:
                self.output_names = tuple(outputs)
            server.max_batch = max_batch
            server.checked = True

    # ---- inference

    def _infer(self, server: _Server, batch: np.ndarray) -> dict[str, np.ndarray]:
        client = self._client(server)
        if not server.checked:
            self._check(server, client)
        spec = self.spec
        if server.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        limit = server.max_batch or len(batch)
        if server.max_batch == 0 and self.card.input.batch is None:
            raise BackendError(f"triton model {spec.model!r} on {server.url} has max_batch_size 0, the card a "
                               "dynamic batch (export it with dicom-node export-triton)")  # fmt: skip
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(batch), limit):
            chunk = np.ascontiguousarray(batch[start : start + limit])
            inp = mod.InferInput(self.input_name, list(chunk.shape), self.datatype)
            if server.protocol == "http":
                inp.set_data_from_numpy(chunk, binary_data=True)
                outs = [mod.InferRequestedOutput(n, binary_data=True) for n in self.output_names]
                result = client.infer(spec.model, [inp], model_version=spec.version, outputs=outs,
                                      headers=self.headers)  # fmt: skip
            else:
                inp.set_data_from_numpy(chunk)
                outs = [mod.InferRequestedOutput(n) for n in self.output_names]
                result = client.infer(spec.model, [inp], model_version=spec.version, outputs=outs,
                                      headers=self.headers, client_timeout=spec.timeout_s)  # fmt: skip
            parts.append({n: np.asarray(result.as_numpy(n)) for n in self.output_names})
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}

    @contextmanager
    def quick(self) -> Iterator[None]:
        """While active, an unreachable Triton is not waited for (used by the warm-up at start)."""
        self._quick = True
        try:
            yield
        finally:
            self._quick = False

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.spec
        deadline = time.monotonic() + (0.0 if self._quick or self._fallback_factory else spec.retry_for_s)
        errors: list[str] = []
        while True:
            now = time.monotonic()
            for server in [s for s in self.servers if s.down_until <= now]:  # in the configured order
                try:
                    out = self._infer(server, batch)
                except BackendError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified below
                    if not is_unavailable(exc):
                        raise BackendError(f"triton model {spec.model!r} on {server.url}: "
                                           f"{type(exc).__name__}: {exc}") from None  # fmt: skip
                    self._drop_client(server)
                    server.down_until = time.monotonic() + spec.cooldown_s
                    server.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    errors.append(f"{server.url}: {server.last_error}")
                    with self._lock:
                        self.stats.server_failures += 1
                    log.warning("triton server %s unavailable for model %s (%s); skipped for %.1f s",
                                server.url, spec.model, server.last_error, spec.cooldown_s)  # fmt: skip
                    continue
                with self._lock:
                    self.stats.requests += 1
                    self.stats.images += len(batch)
                    self.stats.by_server[server.url] = self.stats.by_server.get(server.url, 0) + 1
                self._served_by = f"triton {server.url}"
                if self._outage_logged:
                    self._outage_logged = False
                    log.warning("triton model %s: served by %s again", spec.model, server.url)
                return out
            if self._fallback_factory is not None:
                return self._run_fallback(batch, errors)
            now = time.monotonic()
            if now >= deadline:
                break
            wake = min(s.down_until for s in self.servers)
            time.sleep(min(max(0.05, wake - now), max(0.0, deadline - now)))
            for server in self.servers:  # the wait is over: try every server again
                server.down_until = min(server.down_until, time.monotonic())
        detail = "; ".join(errors[-len(self.servers):]) or "every server is in its cooldown"
        raise TritonUnavailable(f"triton: no server could run model {spec.model!r} ({detail})")

    def _run_fallback(self, batch: np.ndarray, errors: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._fallback is None:
                assert self._fallback_factory is not None
                self._fallback = self._fallback_factory()
                log.warning("triton model %s: local fallback %s opened", self.spec.model, self._fallback.describe())
            fallback = self._fallback
            self.stats.fallback_batches += 1
            self.stats.fallback_images += len(batch)
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("triton model %s: no server answers (%s); running on the local fallback %s",
                        self.spec.model, "; ".join(errors) or "servers in cooldown", fallback.name)  # fmt: skip
        out = fallback.run(batch)
        self._served_by = f"fallback {fallback.name}"
        if self.output_names:
            return {n: out[n] for n in self.output_names if n in out} or out
        return out

    def served_by(self) -> str:
        """``triton <url>`` or ``fallback <backend>`` for the last run (a worker runs one job at a time)."""
        return self._served_by or "triton"

    def describe(self) -> str:
        fb = self.spec.fallback
        return f"triton model {self.spec.model} on {self.device} (fallback: {fb})"

    def close(self) -> None:
        for client in list(self._grpc.values()):
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        self._grpc.clear()
        if self._fallback is not None:
            self._fallback.close()


def server_statistics(url: str, model: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Triton's own inference statistics of ``model`` (``/v2/models/M/stats``): counts and batch sizes.

    Returns ``{"inference_count", "execution_count", "batch_sizes": {size: executions}}``.
    """
    server = _parse_url(url)
    if server.protocol == "grpc":
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.address, ssl=server.tls)
        stats = client.get_inference_statistics(model, headers=headers, as_json=True)
    else:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.address, ssl=server.tls)
        stats = client.get_inference_statistics(model, headers=headers)
    client.close()
    inferences = executions = 0
    batch_sizes: dict[int, int] = {}
    for m in stats.get("model_stats", []):
        inferences += int(m.get("inference_count", 0) or 0)
        executions += int(m.get("execution_count", 0) or 0)
        for b in m.get("batch_stats", []):
            size = int(b.get("batch_size", 0))
            count = int((b.get("compute_infer") or {}).get("count", 0) or 0)
            batch_sizes[size] = batch_sizes.get(size, 0) + count
    return {"inference_count": inferences, "execution_count": executions, "batch_sizes": batch_sizes}
