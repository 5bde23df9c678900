"""C-ECHO / C-STORE SCP (pynetdicom): association policy, then spool + job queue, then the status.

The C-STORE handler does no pixel decoding and no dataset decoding: it takes the dataset bytes exactly as received,
walks their element structure (``spool.scan_dataset``), writes them durably with a file meta header carrying the
negotiated transfer syntax, commits a job, and only then answers Success. Everything else happens in workers.

Association policy, read from the LIVE configuration (``config_getter()``) at every connection and association
request, so a reload applies to the next association (bind address and port need a restart); the ACSE, DIMSE and
network timeouts (s) are set on each association as it is created:

* called AE title must equal ``node.ae_title`` when ``require_called_ae``; else A-ASSOCIATE-RJ
  (1 rejected-permanent, 1 service-user, 7 called-AE-title-not-recognised);
* calling AE title (and host, when pinned) must be in ``allowed_callers`` when the list is not empty; else
  (1, 1, 3 calling-AE-title-not-recognised);
* at most ``max_associations`` at once; else (2 rejected-transient, 3 service-provider presentation, 2
  local-limit-exceeded); while draining for a shutdown: (2, 3, 1 temporary-congestion);
* presentation contexts only for ``node.sop_classes`` (+ Verification) in ``node.transfer_syntaxes``: anything else
  is refused at negotiation (abstract / transfer syntax not supported).

C-STORE statuses: 0x0000 success (also for a duplicate kept under policy ``keep``); 0xA700 free disk below the
watermark (nothing written); 0xA701 job queue unavailable; 0xA702 I/O error; 0xA900 dataset SOP Class UID differs
from the request; 0xC000 malformed dataset (truncated, garbage, missing SOP Instance UID); 0xC001 dataset SOP
Instance UID differs from the request; 0x0111 duplicate SOP instance under policy ``reject``; 0xC0FF internal error.
Failure responses carry a PHI-free Error Comment (0000,0902).
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.jobqueue import JobQueue
from dicom_node.metrics import Counters
from dicom_node.pynetdicom_compat import (
    awaiting_request,
    close_unnegotiated,
    reject,
    set_acceptor_contexts,
    start_server,
)
from dicom_node.spool import (
    DatasetMismatch,
    DuplicateRejected,
    MalformedDataset,
    OutOfSpace,
    Spool,
    StoredObject,
)
from nodecore.config_schema import NodeConfig, NodeSettings
from nodecore.received import ReceivedObject
from nodecore.sopclasses import (
    VERIFICATION,
    sop_class_name,
    sop_classes_or_default,
    transfer_syntax_name,
    transfer_syntaxes_or_default,
)
from nodecore.uids import derived_uid

log = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = UID(derived_uid("dicom-node", "implementation-class", "1"))
IMPLEMENTATION_VERSION_NAME = "DICOMNODE_01"
# Largest P-DATA PDU we accept. Large PDUs cut per-PDU work in pynetdicom's reader (the peer may send smaller).
MAX_PDU_BYTES = 4 * 1024 * 1024

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_SPACE = 0xA700
STATUS_QUEUE_UNAVAILABLE = 0xA701
STATUS_IO_ERROR = 0xA702
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_MALFORMED = 0xC000
STATUS_INSTANCE_MISMATCH = 0xC001
STATUS_INTERNAL_ERROR = 0xC0FF
STATUS_DUPLICATE_REJECTED = 0x0111

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_LIMIT = (0x02, 0x03, 0x02)
REJECT_CONGESTION = (0x02, 0x03, 0x01)
# While draining, a connection that has sent no A-ASSOCIATE-RQ for this long (s) is closed instead of awaited.
UNNEGOTIATED_GRACE_S = 0.5


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


@functools.lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    """IP addresses a configured caller host stands for (an IP literal, or a name resolved once)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        log.warning("allowed caller host %r does not resolve; no address will match it", host)
        return frozenset()


class StorageSCP:
    """The node's C-ECHO/C-STORE SCP. ``start()`` serves in background threads; ``stop()`` drains then closes.

    ``on_stored(obj)`` (optional) is called after each object is spooled and its job committed, with the
    ReceivedObject (``job_id`` set); it must be quick (e.g. wake the workers).
    """

    def __init__(
        self,
        config_getter: Callable[[], NodeConfig],
        spool: Spool,
        queue: JobQueue,
        on_stored: Callable[[ReceivedObject], None] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._config_getter = config_getter
        self.spool = spool
        self.queue = queue
        self.on_stored = on_stored
        self._ae: AE | None = None
        self._server: Any = None
        self._draining = False
        self._lock = threading.Lock()
        self._contexts_key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._contexts: list[PresentationContext] = []
        self._stats = {"stored": 0, "failed": 0, "rejected_associations": 0, "bytes": 0}
        # the node's metrics counters (outlive this listener when a reload moves it); private ones when not given
        self.counters = counters if counters is not None else Counters()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind ``node.bind:node.port`` (port 0: an ephemeral port, see ``port``) and serve in the background."""
        if self._server is not None:
            raise RuntimeError("StorageSCP already started")
        node = self._config_getter().node
        ae = AE(ae_title=node.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.require_called_aet = False  # checked in _on_requested against the live config
        ae.require_calling_aet = []
        self._apply_node_settings(ae, node)
        for cx in self._supported_contexts(node):
            ae.add_supported_context(str(cx.abstract_syntax), cx.transfer_syntax)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._draining = False
        self._server = start_server(ae, (node.bind, node.port), node.ae_title, handlers, self._on_created)
        self._ae = ae
        log.info("SCP %s listening on %s:%d (%d SOP classes, %d transfer syntaxes)", node.ae_title, node.bind,
                 self.port, len(sop_classes_or_default(node.sop_classes)),
                 len(transfer_syntaxes_or_default(node.transfer_syntaxes)))

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start: stored, failed (C-STORE failures), rejected_associations, bytes (spooled)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    @property
    def port(self) -> int:
        """The bound TCP port (the ephemeral one when the configured port is 0)."""
        if self._server is None:
            raise RuntimeError("StorageSCP not started")
        return int(self._server.server_address[1])

    def active_associations(self) -> int:
        return 0 if self._server is None else len(self._server.active_associations)

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuse new associations (transient reject), wait up to ``drain_timeout`` s for open ones to finish, abort
        the rest, close the socket.

        A connection that has not sent its A-ASSOCIATE-RQ within ``UNNEGOTIATED_GRACE_S`` (a bare TCP connect, a
        port scanner, a stuck peer) is closed at once instead of holding the drain until the ACSE timeout;
        established associations keep the full drain time.
        """
        if self._server is None:
            return
        self._draining = True
        deadline = time.monotonic() + max(0.0, drain_timeout)
        closed: set[int] = set()
        while time.monotonic() < deadline:
            waiting = []
            for assoc in self._server.active_associations:
                if id(assoc) in closed:
                    continue  # its thread is ending
                if not awaiting_request(assoc):
                    waiting.append(assoc)
                elif id(assoc) not in closed:
                    silent = time.monotonic() - getattr(assoc, "dicom_node_connected_at", 0.0)
                    if silent >= UNNEGOTIATED_GRACE_S:
                        close_unnegotiated(assoc)
                        closed.add(id(assoc))
                    else:  # just connected: give it the chance to send its request and get a proper reject
                        waiting.append(assoc)
            if not waiting:
                break
            time.sleep(0.05)
        if closed:
            log.info("SCP stop: closed %d connection(s) that had not sent an association request", len(closed))
        remaining = [a for a in self._server.active_associations if id(a) not in closed and not awaiting_request(a)]
        if remaining:
            log.warning("SCP stop: aborting %d association(s) still open after %.1f s", len(remaining), drain_timeout)
            for assoc in remaining:
                assoc.abort()
        self._server.shutdown()
        self._server = None
        self._ae = None
        log.info("SCP stopped")

    # -- association policy --------------------------------------------------------------------------------------

    @staticmethod
    def _apply_node_settings(ae: AE, node: NodeSettings) -> None:
        ae.maximum_associations = max(1, int(node.max_associations))
        ae.acse_timeout = node.timeouts.acse
        ae.dimse_timeout = node.timeouts.dimse
        ae.network_timeout = node.timeouts.network

    def _on_created(self, assoc: Any) -> None:
        """A connection was accepted: the live timeouts apply before the A-ASSOCIATE-RQ is awaited."""
        assoc.dicom_node_connected_at = time.monotonic()  # for the drain: how long it has been silent
        self._apply_timeouts(assoc)

    def _apply_timeouts(self, assoc: Any) -> None:
        timeouts = self._config_getter().node.timeouts
        assoc.acse_timeout = timeouts.acse
        assoc.dimse_timeout = timeouts.dimse
        assoc.network_timeout = timeouts.network

    def _supported_contexts(self, node: NodeSettings) -> list[PresentationContext]:
        key = (sop_classes_or_default(node.sop_classes), transfer_syntaxes_or_default(node.transfer_syntaxes))
        with self._lock:
            if key != self._contexts_key:
                contexts = [build_context(VERIFICATION, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])]
                contexts += [build_context(uid, list(key[1])) for uid in key[0]]
                for cx in contexts:
                    cx.scp_role, cx.scu_role = True, False
                self._contexts_key, self._contexts = key, contexts
            return self._contexts

    def _reject(
        self, assoc: Any, rsd: tuple[int, int, int], why: str, calling: str, called: str, reason: str
    ) -> None:
        """``reason``: the metrics label (one of ``metrics.REJECT_REASONS``)."""
        address = assoc.requestor.address
        self._count("rejected_associations")
        self.counters.inc("dicomnode_associations_rejected_total", reason=reason)
        log.warning("rejected association from AE %r at %s to %r: %s (A-ASSOCIATE-RJ result=%d source=%d reason=%d)",
                    calling, address, called, why, *rsd)
        reject(assoc, *rsd)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        address = str(assoc.requestor.address)
        config = self._config_getter()
        node = config.node
        # apply the live settings to this association and the AE
        if self._ae is not None:
            self._apply_node_settings(self._ae, node)
        self.spool.min_free_disk_mb = node.min_free_disk_mb
        self.spool.duplicate_policy = node.duplicate_policy
        if self._draining:
            self._reject(assoc, REJECT_CONGESTION, "node is shutting down", calling, called, "shutting_down")
            return
        if node.require_called_ae and called != node.ae_title.strip():
            self._reject(assoc, REJECT_CALLED_AE, f"called AE title is not {node.ae_title!r}", calling, called,
                         "called_ae")
            return
        if node.allowed_callers:
            names = [c for c in node.allowed_callers if c.ae_title.strip() == calling]
            if not names:
                self._reject(assoc, REJECT_CALLING_AE, "calling AE title not in allowed_callers", calling, called,
                             "calling_ae")
                return
            if all(c.host is not None and address not in _addresses(c.host) for c in names):
                self._reject(assoc, REJECT_CALLING_AE, "calling AE title not allowed from this host", calling,
                             called, "calling_host")
                return
        active = len(self._server.active_associations) if self._server is not None else 0
        if active > max(1, node.max_associations):
            self._reject(assoc, REJECT_LIMIT, f"{active - 1} associations already open (max {node.max_associations})",
                         calling, called, "limit")
            return
        set_acceptor_contexts(assoc, copy.deepcopy(self._supported_contexts(node)))

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        self.counters.inc("dicomnode_associations_accepted_total")
        refused = sorted({sop_class_name(str(cx.abstract_syntax)) for cx in assoc.rejected_contexts})
        shown = ", ".join(refused[:8]) + (f" and {len(refused) - 8} more" if len(refused) > 8 else "")
        log.info("association from AE %r at %s accepted: %d presentation contexts accepted, %d refused%s",
                 assoc.requestor.ae_title, assoc.requestor.address, len(assoc.accepted_contexts),
                 len(assoc.rejected_contexts), f" (not configured or syntax not accepted: {shown})" if refused else "")

    def _on_aborted(self, event: Any) -> None:
        log.warning("association from AE %r at %s aborted", event.assoc.requestor.ae_title,
                    event.assoc.requestor.address)

    # -- services ------------------------------------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        log.info("C-ECHO from AE %r", event.assoc.requestor.ae_title)
        self.counters.inc("dicomnode_cecho_total")
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        t0 = time.perf_counter()
        req = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_class = UID(str(req.AffectedSOPClassUID))
        sop_instance = UID(str(req.AffectedSOPInstanceUID))
        ts = UID(str(event.context.transfer_syntax))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_instance
        meta.TransferSyntaxUID = ts
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if calling:
            meta.SourceApplicationEntityTitle = calling
        what = f"{sop_class_name(sop_class)} sop={sop_instance} ts={transfer_syntax_name(ts)} from AE {calling!r}"
        data = req.DataSet.getbuffer()  # the bytes as received, no copy
        try:
            stored = self.spool.store(meta, data, calling_ae=calling)
        except OutOfSpace as exc:
            return self._fail(STATUS_OUT_OF_SPACE, "Out of resources: disk below watermark", what, exc)
        except DuplicateRejected as exc:
            return self._fail(STATUS_DUPLICATE_REJECTED, "Duplicate SOP instance rejected", what, exc)
        except DatasetMismatch as exc:
            if exc.attribute == "SOPClassUID":
                return self._fail(STATUS_SOP_CLASS_MISMATCH, "Dataset SOP Class UID differs from request", what,
                                  exc)
            return self._fail(STATUS_INSTANCE_MISMATCH, "Dataset SOP Instance UID differs from request", what, exc)
        except MalformedDataset as exc:
            return self._fail(STATUS_MALFORMED, f"Cannot understand: {exc}", what, exc)
        except OSError as exc:
            log.exception("C-STORE %s: I/O error while spooling", what)
            return self._fail(STATUS_IO_ERROR, f"Out of resources: I/O error {exc.errno}", what, exc)
        except Exception as exc:  # noqa: BLE001 - keep serving whatever happens
            log.exception("C-STORE %s: internal error while spooling", what)
            return self._fail(STATUS_INTERNAL_ERROR, "Internal error", what, exc)
        finally:
            data.release()
        if stored.duplicate == "kept":
            self._count("stored")
            self.counters.inc("dicomnode_cstore_total", status=f"0x{STATUS_SUCCESS:04X}")
            return STATUS_SUCCESS
        try:
            job_id = self.queue.add_job(stored.received_object())
        except Exception as exc:  # noqa: BLE001
            log.exception("C-STORE %s: could not commit the job", what)
            if not stored.duplicate:
                self.spool.remove(stored.path)  # no job, no file: the sender will retry
            return self._fail(STATUS_QUEUE_UNAVAILABLE, "Out of resources: job queue unavailable", what, exc)
        self._stored(stored, job_id, what, t0)
        return STATUS_SUCCESS

    def _stored(self, stored: StoredObject, job_id: int, what: str, t0: float) -> None:
        self._count("stored")
        self._count("bytes", stored.size_bytes)
        self.counters.inc("dicomnode_cstore_total", status=f"0x{STATUS_SUCCESS:04X}")
        self.counters.inc("dicomnode_received_bytes_total", stored.size_bytes)
        log.info("stored %s: %d bytes, job %d%s in %.1f ms", what, stored.size_bytes, job_id,
                 f" ({stored.duplicate} duplicate)" if stored.duplicate else "", (time.perf_counter() - t0) * 1e3)
        if self.on_stored is not None:
            try:
                self.on_stored(stored.received_object(job_id))
            except Exception:  # noqa: BLE001 - the object is safe; a failing hook must not fail the store
                log.exception("on_stored hook failed for job %d", job_id)

    def _fail(self, code: int, comment: str, what: str, exc: BaseException) -> Dataset:
        self._count("failed")
        self.counters.inc("dicomnode_cstore_total", status=f"0x{code:04X}")
        log.error("C-STORE %s failed with status 0x%04X: %s", what, code, exc)
        return _status(code, comment)
