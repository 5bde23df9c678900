"""systemd notification protocol (sd_notify) without libsystemd.

Messages are newline-separated ``KEY=VALUE`` assignments sent as one datagram to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract socket written with a leading ``@``). Without ``$NOTIFY_SOCKET`` (not
started by systemd with ``Type=notify``) every call is a no-op. Sends never block (a full receiver queue drops the
message) and errors are swallowed after one log line: a notification must never stall or stop the node.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


class SdNotifier:
    """Sends sd_notify messages; cheap to create, safe to share between threads."""

    def __init__(self, address: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self._address: str | bytes | None = None
        if raw:
            # '@name' is an abstract socket: the kernel name starts with a NUL byte.
            self._address = b"\0" + raw[1:].encode() if raw.startswith("@") else raw
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when sent (False when disabled or failed)."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.setblocking(False)  # never stall the caller (the main loop) on a slow reader
                self._sock.sendto(payload, self._address)
                return True
            except BlockingIOError:
                log.debug("sd_notify queue full: dropped %r", payload)
                return False
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self._address, exc)
                    self._warned = True
                return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of the watchdog timeout systemd asked for (``$WATCHDOG_USEC``), in seconds; None when not requested.

    ``$WATCHDOG_PID``, when set, must be this process (otherwise the watchdog is meant for another one).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    if value <= 0:
        return None
    return value / 2_000_000.0
