"""Contract tests: every pynetdicom behaviour dicom_node/pynetdicom_compat.py relies on, on the installed release.

These run real associations over loopback (pynetdicom on both sides: the point is pynetdicom's own behaviour). If
one fails after a pynetdicom upgrade, the internals the node hooks into changed: fix the compatibility module (and
see docs/PYNETDICOM.md) before widening ``TESTED_VERSIONS``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node import pynetdicom_compat as compat
from tests.conftest import ROOT
from tests.node_process import wait_until


class RecordingSocket(compat.BulkRecvSocket):
    """The node's socket, recording the size of every read the DUL asks for."""

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        self.sizes: list[int] = [*getattr(self, "sizes", []), nr_bytes]
        return data


@pytest.fixture
def server_factory() -> Iterator[Callable[..., tuple[Any, list[Association]]]]:
    servers: list[Any] = []

    def make(handlers: list[tuple[Any, Callable[..., Any]]] = (), record: bool = False,  # type: ignore[assignment]
             acse_timeout: float = 30.0) -> tuple[Any, list[Association]]:
        ae = AE(ae_title="COMPAT")
        ae.acse_timeout = acse_timeout
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage)
        created: list[Association] = []

        def on_created(assoc: Association) -> None:
            created.append(assoc)
            if record:
                assoc.dul.socket.__class__ = RecordingSocket

        server = compat.start_server(ae, ("127.0.0.1", 0), "COMPAT", list(handlers), on_created)
        servers.append(server)
        return server, created

    yield make
    for server in servers:
        if server in server.ae._servers:  # not shut down by the test
            server.shutdown()


def _scu(port: int, *contexts: str) -> Association:
    ae = AE(ae_title="SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for cx in contexts or (Verification,):
        ae.add_requested_context(cx)
    return ae.associate("127.0.0.1", port, ae_title="COMPAT")


def test_version_guard() -> None:
    compat.check_version(pynetdicom.__version__)  # the installed one is tested
    low, high = compat.TESTED_VERSIONS
    compat.check_version(".".join(map(str, low)))
    for bad in (".".join(map(str, high)), "2.1.1", "4.0.0"):
        with pytest.raises(compat.UnsupportedPynetdicom, match=f"pynetdicom {bad} is installed.*tested"):
            compat.check_version(bad)
    # at import: the node refuses to start on an untested release (the override is checked in the same process)
    code = ("import os, pynetdicom; pynetdicom.__version__ = '3.1.0'\n"
            "try:\n    import dicom_node.pynetdicom_compat\nexcept ImportError as exc:\n    print(type(exc).__name__, exc)\n"
            f"os.environ[{compat.OVERRIDE_ENV!r}] = '1'\nimport dicom_node.pynetdicom_compat\nprint('override ok')\n")
    env = {k: v for k, v in os.environ.items() if k != compat.OVERRIDE_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("UnsupportedPynetdicom pynetdicom 3.1.0 is installed"), proc.stdout
    assert proc.stdout.rstrip().endswith("override ok"), proc.stdout


def test_pdus_are_read_through_our_socket_as_header_then_body(server_factory: Any) -> None:
    """BulkRecvSocket replaces pynetdicom's socket on every accepted association, and the DUL reads each PDU as
    recv(6) then recv(length): where PDU-level limits (issue 10) hook in."""
    server, created = server_factory(record=True)
    assoc = _scu(server.server_address[1])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    wait_until(lambda: not server.active_associations, 10, "the association to end")
    (acceptor,) = created
    sock = acceptor.dul.socket
    assert isinstance(sock, RecordingSocket) and isinstance(sock, compat.BulkRecvSocket)
    sizes = sock.sizes
    assert len(sizes) >= 6 and len(sizes) % 2 == 0, sizes  # A-ASSOCIATE-RQ, P-DATA (echo), A-RELEASE-RQ
    assert sizes[0::2] == [6] * (len(sizes) // 2), sizes
    assert sizes[1] > 68 and sizes[-1] == 4, sizes  # A-ASSOCIATE-RQ body; A-RELEASE-RQ body is 4 bytes


def test_on_created_runs_before_the_request_is_read_and_the_server_registers_with_the_ae(
    server_factory: Any,
) -> None:
    seen: list[tuple[Any, str]] = []
    server, created = server_factory()
    created_hook = server.dicom_node_on_created

    def on_created(assoc: Association) -> None:
        seen.append((assoc.requestor.primitive, assoc.dul.state_machine.current_state))
        created_hook(assoc)

    server.dicom_node_on_created = on_created
    assert server in server.ae._servers
    assoc = _scu(server.server_address[1])
    assert assoc.is_established
    assoc.release()
    assert seen == [(None, "Sta1")]
    server.shutdown()
    assert server not in server.ae._servers


def test_reject_from_requested_sends_the_chosen_reason_and_fires_rejected(server_factory: Any) -> None:
    rejected: list[Association] = []

    def on_requested(event: Any) -> None:
        compat.reject(event.assoc, 0x01, 0x01, 0x07)

    server, _ = server_factory([(evt.EVT_REQUESTED, on_requested),
                                (evt.EVT_REJECTED, lambda event: rejected.append(event.assoc))])
    assoc = _scu(server.server_address[1])
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    wait_until(lambda: not server.active_associations, 10, "the rejected association to end")
    assert len(rejected) == 1


def test_contexts_set_in_requested_decide_the_negotiation(server_factory: Any) -> None:
    def on_requested(event: Any) -> None:
        verification = build_context(Verification)
        verification.scp_role, verification.scu_role = True, False
        compat.set_acceptor_contexts(event.assoc, [verification])

    server, _ = server_factory([(evt.EVT_REQUESTED, on_requested)])
    assoc = _scu(server.server_address[1], Verification, CTImageStorage)
    assert assoc.is_established
    assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [Verification]
    assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [CTImageStorage]
    assoc.release()


def test_transport_socket_of_a_requestor_is_the_tcp_socket(server_factory: Any) -> None:
    server, _ = server_factory()
    seen: list[Any] = []
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="COMPAT",
                         evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: seen.append(compat.transport_socket(event.assoc)))])
    assert assoc.is_established
    (sock,) = seen
    assert isinstance(sock, socket.socket) and sock.getpeername()[1] == server.server_address[1]
    assoc.release()


def test_a_silent_connection_is_seen_and_closed_before_the_acse_timeout(server_factory: Any) -> None:
    server, created = server_factory(acse_timeout=30.0)
    with socket.create_connection(server.server_address, timeout=10) as bare:
        wait_until(lambda: len(server.active_associations) == 1, 10, "the connection's association")
        (assoc,) = server.active_associations
        wait_until(lambda: compat.awaiting_request(assoc), 10, "DUL state Sta2")
        started = time.monotonic()
        compat.close_unnegotiated(assoc)
        assert bare.recv(1) == b""  # the node closed its side
        wait_until(lambda: not server.active_associations, 10, "the acceptor thread to end")
        assert time.monotonic() - started < 5.0  # not the 30 s ACSE timeout
    assert not compat.awaiting_request(created[0])
