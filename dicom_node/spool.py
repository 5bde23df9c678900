"""Durable spool: received objects on disk exactly as received, and result files written atomically.

Layout under ``root``::

    objects/<2 hex>/<SOP Instance UID>.dcm     received objects (preamble + file meta + dataset bytes as received)
    results/<job id>/<kind>_<SOP Instance UID>.dcm   result files written by workers
    (temporary files are ``.<name>.<random>.tmp`` beside their target and never seen by readers)

Every write is: temp file in the target directory, ``fsync`` the file, atomic ``rename``, ``fsync`` the directory.
So after ``store`` returns, the object survives a power cut; before, nothing partial is visible.

Before writing, ``store`` walks the dataset's element structure (no value decoding, no pixel decoding) to reject
truncated or garbage bytes and to read the few attributes the node needs (SOP Class/Instance UID, Study Instance
UID, Modality).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from nodecore.received import ReceivedObject
from nodecore.sopclasses import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["replace", "keep", "reject"]
DUPLICATE_POLICIES = ("replace", "keep", "reject")
MIB = 1024 * 1024
PREAMBLE = b"\x00" * 128 + b"DICM"


class SpoolError(Exception):
    """Base class of spool failures; messages are PHI-free."""


class OutOfSpace(SpoolError):
    """Free disk space is below the watermark (or the disk filled during the write); nothing was left behind."""


class DuplicateRejected(SpoolError):
    """An object with this SOP Instance UID is already spooled and the policy is ``reject``."""


class MalformedDataset(SpoolError):
    """The dataset bytes are not a well-formed DICOM dataset (truncated, garbage, missing required UIDs)."""


class DatasetMismatch(MalformedDataset):
    """The dataset's SOP Class/Instance UID differs from the one the C-STORE request (file meta) announced."""

    def __init__(self, message: str, attribute: str) -> None:
        super().__init__(message)
        self.attribute = attribute  # "SOPClassUID" or "SOPInstanceUID"


@dataclass(frozen=True)
class DatasetFacts:
    """Top-level attributes read by ``scan_dataset`` ('' when absent)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    modality: str


@dataclass(frozen=True)
class StoredObject:
    """An object in the spool. ``duplicate``: '' (new), 'replaced' (an older copy was overwritten) or 'kept'
    (policy keep: the older copy stays, nothing was written). ``size_bytes``: whole file; ``received_at``: POSIX s.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    study_instance_uid: str
    modality: str
    size_bytes: int
    received_at: float
    duplicate: Literal["", "replaced", "kept"] = ""

    def received_object(self, job_id: int | None = None) -> ReceivedObject:
        return ReceivedObject(
            path=self.path,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            calling_ae=self.calling_ae,
            study_instance_uid=self.study_instance_uid,
            received_at=self.received_at,
            job_id=job_id,
        )


# -- dataset structure walk -------------------------------------------------------------------------------------

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_WANTED = {0x00080016: "sop_class_uid", 0x00080018: "sop_instance_uid", 0x0020000D: "study_instance_uid",
           0x00080060: "modality"}
_MAX_DEPTH = 64


class _Walker:
    """Walks elements by their headers only; checks every length stays inside the data."""

    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.buf = memoryview(buf)
        self.end = len(self.buf)
        self.implicit = implicit
        self.tag_fmt = struct.Struct("<HH" if little else ">HH")
        self.u32 = struct.Struct("<I" if little else ">I")
        self.u16 = struct.Struct("<H" if little else ">H")
        self.found: dict[str, str] = {}

    def _fail(self, pos: int, what: str) -> MalformedDataset:
        return MalformedDataset(f"malformed dataset at byte {pos} of {self.end}: {what}")

    def dataset(self, pos: int, depth: int, in_item: bool) -> int:
        buf, end = self.buf, self.end
        while pos < end:
            if end - pos < 8:
                raise self._fail(pos, "truncated element header")
            group, elem = self.tag_fmt.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag == _ITEM_END:
                if in_item:
                    return pos + 8
                raise self._fail(pos, "item delimiter outside an item")
            if group == 0xFFFE:
                raise self._fail(pos, f"unexpected delimiter tag ({group:04X},{elem:04X})")
            if self.implicit:
                vr = b""
                length = self.u32.unpack_from(buf, pos + 4)[0]
                pos += 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    raise self._fail(pos, f"invalid VR {vr!r} for tag ({group:04X},{elem:04X})")
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise self._fail(pos, "truncated element header")
                    length = self.u32.unpack_from(buf, pos + 8)[0]
                    pos += 12
                else:
                    length = self.u16.unpack_from(buf, pos + 6)[0]
                    pos += 8
            if length == _UNDEFINED:
                if depth >= _MAX_DEPTH:
                    raise self._fail(pos, "sequences nested too deeply")
                if tag == 0x7FE00010 and vr in (b"OB", b"OW"):
                    pos = self.fragments(pos)
                elif vr in (b"SQ", b"UN", b""):
                    pos = self.items(pos, depth + 1)
                else:
                    raise self._fail(pos, f"undefined length for VR {vr.decode()} in ({group:04X},{elem:04X})")
                continue
            if length > end - pos:
                raise self._fail(
                    pos, f"element ({group:04X},{elem:04X}) of {length} bytes runs past the end ({end - pos} left)"
                )
            if depth == 0 and tag in _WANTED:
                self.found[_WANTED[tag]] = bytes(buf[pos : pos + length]).decode("ascii", "replace").strip("\x00 ")
            pos += length
        if in_item:
            raise self._fail(pos, "item without its delimiter")
        return pos

    def items(self, pos: int, depth: int) -> int:
        buf, end = self.buf, self.end
        while True:
            if end - pos < 8:
                raise self._fail(pos, "sequence without its delimiter")
            group, elem = self.tag_fmt.unpack_from(buf, pos)
            tag = group << 16 | elem
            length = self.u32.unpack_from(buf, pos + 4)[0]
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise self._fail(pos - 8, f"expected an item tag in a sequence, found ({group:04X},{elem:04X})")
            if length == _UNDEFINED:
                pos = self.dataset(pos, depth, in_item=True)
            elif length > end - pos:
                raise self._fail(pos, f"item of {length} bytes runs past the end ({end - pos} left)")
            else:
                pos += length

    def fragments(self, pos: int) -> int:
        buf, end = self.buf, self.end
        while True:
            if end - pos < 8:
                raise self._fail(pos, "encapsulated pixel data without its sequence delimiter")
            group, elem = self.tag_fmt.unpack_from(buf, pos)
            tag = group << 16 | elem
            length = self.u32.unpack_from(buf, pos + 4)[0]
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM or length == _UNDEFINED:
                raise self._fail(pos - 8, f"bad pixel data fragment header ({group:04X},{elem:04X})")
            if length > end - pos:
                raise self._fail(pos, f"pixel data fragment of {length} bytes runs past the end ({end - pos} left)")
            pos += length


def scan_dataset(data: bytes | memoryview, transfer_syntax_uid: str) -> DatasetFacts:
    """Check the element structure of raw dataset bytes (no file meta) and read a few top-level attributes.

    Raises MalformedDataset with the byte offset and what is wrong. Deflated data is inflated first.
    """
    if len(data) == 0:
        raise MalformedDataset("empty dataset (0 bytes)")
    implicit = transfer_syntax_uid == IMPLICIT_VR_LE
    little = transfer_syntax_uid != EXPLICIT_VR_BE
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
        try:
            data = zlib.decompress(bytes(data), -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise MalformedDataset(f"deflated dataset does not inflate: {exc}") from None
    walker = _Walker(data, implicit, little)
    walker.dataset(0, 0, in_item=False)
    return DatasetFacts(**{name: walker.found.get(name, "") for name in _WANTED.values()})


# -- atomic writes ----------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: tuple[bytes | memoryview, ...]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


# Large objects are written with O_DIRECT from a page-aligned buffer: on the VMs measured (bench/receive.py) buffered
# writes of 8 MiB files spent most of their time allocating page cache and in dirty-page throttling, while direct
# I/O + fsync is 3-5x faster and steadier. Durability is the same: fsync still commits the metadata and flushes
# the device cache. Filesystems without O_DIRECT (tmpfs) fall back to buffered writes.
DIRECT_IO_MIN_BYTES = 1 * MIB
_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_direct = threading.local()


def _aligned_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of at least ``size`` bytes, reused by this thread (grown in 4 MiB steps)."""
    buf: mmap.mmap | None = getattr(_direct, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = mmap.mmap(-1, -(-size // (4 * MIB)) * 4 * MIB)
        _direct.buf = buf
    return buf


def _write_direct(tmp: Path, chunks: tuple[bytes | memoryview, ...], total: int) -> int | None:
    """Open ``tmp`` with O_DIRECT and write ``chunks``; returns the open fd, or None when O_DIRECT is unsupported."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, 0o640)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # filesystem without direct I/O
            return None
        raise
    try:
        buf = _aligned_buffer(total)
        pos = 0
        for chunk in chunks:
            n = len(chunk)
            buf[pos : pos + n] = chunk
            pos += n
        aligned = total - total % _ALIGN
        view = memoryview(buf)
        try:
            done = 0
            while done < aligned:
                done += os.write(fd, view[done:aligned])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            done = 0  # alignment refused by this device: rewrite everything buffered
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
        _write_all(fd, (view[done:total],))
        view.release()
        return fd
    except BaseException:
        os.close(fd)
        raise


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")


def atomic_write_bytes(target: Path, *chunks: bytes | memoryview, replace: bool = True) -> bool:
    """Write ``chunks`` to ``target`` durably (temp + fsync + rename + dir fsync).

    With ``replace=False`` an existing target is left alone and False is returned. ENOSPC/EDQUOT raise OutOfSpace
    after removing the temp file.
    """
    tmp = _temp_name(target)
    total = sum(len(c) for c in chunks)
    try:
        fd = _write_direct(tmp, chunks, total) if _O_DIRECT and total >= DIRECT_IO_MIN_BYTES else None
        if fd is None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                _write_all(fd, chunks)
            except BaseException:
                os.close(fd)
                raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target exists: no overwrite race
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"disk full while writing {target.name}: {exc.strerror}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return True


def encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    """Group 0002 encoded as in a DICOM file (explicit VR LE, group length and version filled in)."""
    buf = io.BytesIO()
    write_file_meta_info(buf, file_meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


# -- the spool --------------------------------------------------------------------------------------------------


class Spool:
    """Received objects and result files under ``root``.

    ``min_free_disk_mb`` (MiB) and ``duplicate_policy`` are plain attributes: the SCP updates them on a config reload.
    """

    def __init__(self, root: Path, min_free_disk_mb: float, duplicate_policy: str) -> None:
        if duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate_policy must be one of {', '.join(DUPLICATE_POLICIES)}, not {duplicate_policy!r}")
        if min_free_disk_mb < 0:
            raise ValueError(f"min_free_disk_mb must be >= 0, not {min_free_disk_mb}")
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.results_dir = self.root / "results"
        self.min_free_disk_mb = float(min_free_disk_mb)
        self.duplicate_policy: str = duplicate_policy
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # paths

    def object_path(self, sop_instance_uid: str) -> Path:
        """Where the object with this SOP Instance UID is spooled (sharded by a hash of the UID)."""
        _check_uid(sop_instance_uid, "SOP Instance UID")
        shard = hashlib.sha1(sop_instance_uid.encode("ascii")).hexdigest()[:2]
        return self.objects_dir / shard / f"{sop_instance_uid}.dcm"

    def result_path(self, job_id: int, kind: str, sop_instance_uid: str) -> Path:
        """Where a worker writes the ``kind`` result (sr, sc, gsps, plain_sr) of job ``job_id``; parent created."""
        _check_uid(sop_instance_uid, "SOP Instance UID")
        if not kind.isidentifier():
            raise ValueError(f"invalid result kind {kind!r}")
        path = self.results_dir / f"{int(job_id):08d}" / f"{kind}_{sop_instance_uid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # space

    def free_mb(self) -> float:
        """Free space (MiB) available to this process on the spool's filesystem."""
        return shutil.disk_usage(self.root).free / MIB

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise OutOfSpace when free space minus ``incoming_bytes`` is below the watermark."""
        free = self.free_mb()
        if free - incoming_bytes / MIB < self.min_free_disk_mb:
            raise OutOfSpace(
                f"free disk {free:.0f} MiB minus {incoming_bytes / MIB:.1f} MiB incoming is below the "
                f"{self.min_free_disk_mb:.0f} MiB watermark on {self.root}"
            )

    # storing

    def store(
        self, file_meta: FileMetaDataset, dataset_bytes: bytes | memoryview, *, calling_ae: str
    ) -> StoredObject:
        """Spool one received object: preamble + ``file_meta`` + ``dataset_bytes`` unchanged.

        ``file_meta`` must carry MediaStorageSOPClassUID, MediaStorageSOPInstanceUID and TransferSyntaxUID (the
        C-STORE request's UIDs and the negotiated syntax). Raises MalformedDataset (DatasetMismatch), OutOfSpace
        (before writing anything) or DuplicateRejected. Durable on return.
        """
        try:
            sop_class = str(file_meta.MediaStorageSOPClassUID)
            sop_instance = str(file_meta.MediaStorageSOPInstanceUID)
            ts = str(file_meta.TransferSyntaxUID)
        except AttributeError as exc:
            raise ValueError(f"file meta lacks a required element: {exc}") from None
        facts = scan_dataset(dataset_bytes, ts)
        if not facts.sop_instance_uid:
            raise MalformedDataset("dataset has no SOP Instance UID (0008,0018)")
        if facts.sop_instance_uid != sop_instance:
            raise DatasetMismatch(
                f"dataset SOP Instance UID {facts.sop_instance_uid} differs from the request's {sop_instance}",
                "SOPInstanceUID",
            )
        if facts.sop_class_uid and facts.sop_class_uid != sop_class:
            raise DatasetMismatch(
                f"dataset SOP Class UID {facts.sop_class_uid} differs from the request's {sop_class}", "SOPClassUID"
            )
        meta_bytes = encode_file_meta(file_meta)
        size = len(PREAMBLE) + len(meta_bytes) + len(dataset_bytes)
        target = self.object_path(sop_instance)
        policy = self.duplicate_policy
        existed = target.exists()
        if existed and policy == "reject":
            raise DuplicateRejected(f"SOP Instance UID {sop_instance} is already spooled (duplicate policy: reject)")
        received_at = time.time()
        stored = StoredObject(
            path=target,
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
            transfer_syntax_uid=ts,
            calling_ae=calling_ae,
            study_instance_uid=facts.study_instance_uid,
            modality=facts.modality,
            size_bytes=size,
            received_at=received_at,
        )
        if existed and policy == "keep":
            log.info("duplicate SOP Instance UID %s from %s: kept the spooled copy (policy keep)", sop_instance,
                     calling_ae)
            return _with(stored, duplicate="kept", size_bytes=target.stat().st_size)
        self.check_space(size)
        _mkdir(target.parent)
        written = atomic_write_bytes(target, PREAMBLE, meta_bytes, dataset_bytes, replace=policy == "replace")
        if not written:  # another association stored the same UID meanwhile
            if policy == "reject":
                raise DuplicateRejected(
                    f"SOP Instance UID {sop_instance} is already spooled (duplicate policy: reject)"
                )
            log.info("duplicate SOP Instance UID %s from %s: kept the spooled copy (policy keep)", sop_instance,
                     calling_ae)
            return _with(stored, duplicate="kept", size_bytes=target.stat().st_size)
        if existed:
            log.info("duplicate SOP Instance UID %s from %s: replaced the spooled copy (policy replace)",
                     sop_instance, calling_ae)
            return _with(stored, duplicate="replaced")
        return stored

    def write_dataset_atomic(self, ds: Dataset, path: Path) -> None:
        """Write a result dataset as a DICOM file at ``path`` durably (temp + fsync + rename + dir fsync)."""
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        _mkdir(path.parent)
        self.check_space(buf.tell())
        atomic_write_bytes(path, buf.getbuffer())

    def remove(self, path: Path) -> None:
        """Delete a spooled file (missing is fine) and make the removal durable."""
        path.unlink(missing_ok=True)
        if path.parent.exists():
            _fsync_dir(path.parent)

    def cleanup_temp_files(self) -> int:
        """Delete temp files left by a crash mid-write (call at startup). Returns how many."""
        count = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count


def _with(obj: StoredObject, **changes: object) -> StoredObject:
    return replace(obj, **changes)  # type: ignore[arg-type]


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"disk full while creating {path.name}: {exc.strerror}") from None
        raise


def _check_uid(uid: str, what: str) -> None:
    if not uid or len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
        raise MalformedDataset(f"invalid {what} {uid[:80]!r}: expected digits and dots, at most 64 characters")
