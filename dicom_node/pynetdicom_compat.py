"""The one place where dicom-node relies on pynetdicom internals (everything else uses its public API).

pynetdicom has no public hooks for what the SCP needs: its own socket class for faster (and, later, guarded) PDU
reads, a handler that runs when an association object is created (before the A-ASSOCIATE-RQ is awaited), a server
started without blocking but with our request handler, rejecting from ``EVT_REQUESTED`` with a chosen
(result, source, reason), and closing a connection that never sent its request. Each of these is wrapped here, and
``tests/test_pynetdicom_compat.py`` checks every behaviour we rely on against the installed pynetdicom, so an upgrade
that changes one of them fails loudly in the test suite instead of quietly in production. What pynetdicom could
expose upstream instead is written up in docs/PYNETDICOM.md.

Version guard: importing this module with a pynetdicom outside ``TESTED_VERSIONS`` raises ``UnsupportedPynetdicom``
(the node refuses to start) unless ``DICOM_NODE_UNTESTED_PYNETDICOM=1`` is set, which exists to run the contract
tests against a new release before widening the range.

Internals used (pynetdicom 3.0):

* ``RequestHandler._create_association()``: overridden to swap the socket class and call ``on_created``;
* ``AssociationSocket.recv(nr_bytes)`` / ``.socket``: the DUL reads each PDU as ``recv(6)`` (type, reserved,
  length) then ``recv(length)``; ``BulkRecvSocket`` replaces that method. This is the hook for PDU-level limits
  (read deadlines, a PDU length cap checked before the buffer is allocated): add them to ``BulkRecvSocket.recv``;
* ``AE._servers``: ``start_server(block=False)`` registers its server there and ``server.shutdown()`` removes it;
* ``Association.acse.send_reject`` + ``evt.trigger(EVT_REJECTED)`` + ``Association.kill()``: the sequence
  pynetdicom itself runs for a reject decided by its own checks;
* ``Association.dul.socket.socket``: the TCP socket (``transport_socket``, e.g. TCP_NODELAY on outbound sends);
* ``Association.dul.state_machine.current_state`` (``"Sta2"``: transport open, no A-ASSOCIATE-RQ yet),
  ``Association.requestor.primitive``, ``Association.dul.to_user_queue``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import pynetdicom
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

__all__ = [
    "TESTED_VERSIONS",
    "BulkRecvSocket",
    "UnsupportedPynetdicom",
    "awaiting_request",
    "check_version",
    "close_unnegotiated",
    "reject",
    "set_acceptor_contexts",
    "start_server",
    "transport_socket",
]

# [lowest, highest) release whose internals the contract tests were run against
TESTED_VERSIONS: tuple[tuple[int, int, int], tuple[int, int, int]] = ((3, 0, 0), (3, 1, 0))
OVERRIDE_ENV = "DICOM_NODE_UNTESTED_PYNETDICOM"


class UnsupportedPynetdicom(ImportError):
    """The installed pynetdicom is outside ``TESTED_VERSIONS``."""


def _parse(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    return cast(tuple[int, int, int], tuple(parts + [0] * (3 - len(parts))))


def check_version(version: str) -> None:
    """Raise ``UnsupportedPynetdicom`` unless ``version`` lies in ``TESTED_VERSIONS``."""
    low, high = TESTED_VERSIONS
    if not low <= _parse(version) < high:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed, but dicom-node relies on pynetdicom internals checked only for "
            f"versions >= {'.'.join(map(str, low))} and < {'.'.join(map(str, high))} (dicom_node/pynetdicom_compat.py). "
            f"Install a tested version (pip install 'pynetdicom>={'.'.join(map(str, low))},"
            f"<{'.'.join(map(str, high))}'), or run the contract tests with {OVERRIDE_ENV}=1 "
            "(pytest tests/test_pynetdicom_compat.py) and widen TESTED_VERSIONS when they pass."
        )


if os.environ.get(OVERRIDE_ENV) != "1":
    check_version(pynetdicom.__version__)


# ---- socket: the hook for PDU reads --------------------------------------------------------------------------


class BulkRecvSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU with ``recv_into`` in large steps instead of 4 KiB ``recv`` + extend.

    Same contract as ``AssociationSocket.recv``: returns ``nr_bytes`` bytes, fewer if the peer closed, and lets
    OSError / TimeoutError propagate (the DUL turns both into Evt17, transport closed). Measured: about 3x less CPU
    per 128 KiB P-DATA PDU (bench/receive.py).
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if n == 0:
                    break
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf


def _use_bulk_socket(assoc: Association) -> None:
    if type(assoc.dul.socket) is AssociationSocket:
        assoc.dul.socket.__class__ = BulkRecvSocket


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler; the new association gets ``BulkRecvSocket`` and the server's ``on_created``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        _use_bulk_socket(assoc)
        on_created = getattr(self.server, "dicom_node_on_created", None)
        if on_created is not None:
            on_created(assoc)
        return assoc


# ---- server ------------------------------------------------------------------------------------------------------


def start_server(
    ae: AE,
    address: tuple[str, int],
    ae_title: str,
    evt_handlers: Sequence[tuple[Any, Callable[..., Any]]],
    on_created: Callable[[Association], None] | None = None,
) -> ThreadedAssociationServer:
    """What ``ae.start_server(address, block=False)`` does, with our request handler: every accepted connection's
    association reads PDUs through ``BulkRecvSocket``, and ``on_created(assoc)`` runs as soon as the association
    object exists (before the A-ASSOCIATE-RQ is awaited: e.g. to set its timeouts). ``server.shutdown()`` stops it
    and removes it from the AE."""
    server = ae.make_server(address, ae_title=ae_title, evt_handlers=list(evt_handlers),
                            server_class=ThreadedAssociationServer, request_handler=_RequestHandler)
    server.dicom_node_on_created = on_created  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="dicom-node-scp", daemon=True)
    thread.start()
    ae._servers.append(server)  # as start_server does: server.shutdown() removes it again
    return server


# ---- association control from event handlers ---------------------------------------------------------------------


def reject(assoc: Association, result: int, source: int, reason: str | int) -> None:
    """From an ``EVT_REQUESTED`` handler: answer A-ASSOCIATE-RJ (result, source, reason) (PS3.8 9.3.4) and end the
    association, exactly as pynetdicom does for a reject decided by its own checks (``EVT_REJECTED`` fires)."""
    assoc.acse.send_reject(result, source, reason)  # type: ignore[arg-type]
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def set_acceptor_contexts(assoc: Association, contexts: list[PresentationContext]) -> None:
    """From an ``EVT_REQUESTED`` handler: the presentation contexts this association may accept (negotiation runs
    after the handler returns)."""
    assoc.acceptor.supported_contexts = contexts


def awaiting_request(assoc: Association) -> bool:
    """True for a connection whose peer has not sent its A-ASSOCIATE-RQ yet (transport open, DUL state Sta2)."""
    return (assoc.requestor.primitive is None and not assoc.is_established
            and assoc.dul.state_machine.current_state == "Sta2")


def transport_socket(assoc: Association) -> socket.socket | None:
    """The TCP socket under an association (from ``EVT_CONN_OPEN`` on; None once closed), e.g. to set options."""
    sock = getattr(assoc.dul.socket, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def close_unnegotiated(assoc: Association) -> None:
    """Close a connection that never sent an A-ASSOCIATE-RQ, now rather than at the ACSE timeout.

    Shutting the TCP socket down makes pynetdicom's DUL see the transport close (Sta2 + Evt17 -> AA-5 -> Sta1, valid
    in every state); the acceptor thread, which waits up to the ACSE timeout for the request, is then woken with
    an empty primitive and ends as on that timeout.
    """
    sock = transport_socket(assoc)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the peer
    assoc.dul.to_user_queue.put(None)
