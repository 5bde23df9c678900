"""Pixel decoding with pydicom 3 plugins and a tolerant dcmtk fallback.

``decode_pixels(path_or_ds)`` returns the stored values of one frame (default the first) as a numpy array in the
decoder's native dtype (no rescale, no VOI LUT, no MONOCHROME1 inversion: callers apply those), with what decoded it.

Order: pydicom's native reader for uncompressed syntaxes; for compressed ones each installed Apache-compatible
pydicom plugin in turn (GDCM, pylibjpeg-openjpeg/-rle, pyjpegls, Pillow; fastest first per syntax); then, when on
PATH, dcmtk's command-line decoder (BSD licence) run as a subprocess: ``dcmdjpeg`` for JPEG (it decodes 12-bit
lossy JPEG and streams with invalid SOS parameters that the plugins refuse, with a warning that is recorded),
``dcmdjpls`` for JPEG-LS and ``dcmdrle`` for RLE. When every decoder fails, ``UndecodableImage`` lists what each said.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from nodecore.sopclasses import transfer_syntax_name

_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_RLE = ("1.2.840.10008.1.2.5",)
# transfer syntax -> dcmtk decoder command
EXTERNAL_DECODERS: dict[str, str] = {
    **dict.fromkeys(_JPEG, "dcmdjpeg"),
    **dict.fromkeys(_JPEG_LS, "dcmdjpls"),
    **dict.fromkeys(_RLE, "dcmdrle"),
}
# pydicom plugin preference per family (measured on the real data: fastest that decodes first)
_PLUGIN_ORDER: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_RLE, ("pylibjpeg", "pydicom", "gdcm")),
    **dict.fromkeys(_JPEG_LS, ("pyjpegls", "gdcm")),
}
_DEFAULT_ORDER = ("gdcm", "pylibjpeg", "pyjpegls", "pillow", "pydicom")
EXTERNAL_TIMEOUT_S = 120.0


class UndecodableImage(Exception):
    """No decoder could read the pixel data; ``attempts`` maps each decoder tried to what it said."""

    def __init__(self, message: str, attempts: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.attempts = dict(attempts or {})


@dataclass(frozen=True)
class DecodedImage:
    """One decoded frame. ``pixels``: (rows, cols) or (rows, cols, samples), stored values in native dtype.

    ``photometric`` is that of ``pixels`` (YBR data is converted to RGB). ``bits``: Bits Stored.
    """

    pixels: np.ndarray
    photometric: str
    rows: int
    cols: int
    bits: int
    bits_allocated: int
    pixel_representation: int
    samples_per_pixel: int
    number_of_frames: int
    frame: int
    transfer_syntax_uid: str
    decoder_used: str  # "pydicom:native", "pydicom:<plugin>" or "dcmtk:<command>"
    warnings: tuple[str, ...] = ()


def _plugin_order(ts: str, available: tuple[str, ...]) -> list[str]:
    preferred = _PLUGIN_ORDER.get(ts, _DEFAULT_ORDER)
    return [p for p in preferred if p in available] + [p for p in available if p not in preferred]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # pydicom wraps plugin errors: "Unable to decode as exceptions were raised by all available plugins: x: msg"
    marker = "plugins:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
        if ":" in text:
            text = text.split(":", 1)[1].strip()
    return text[:300] or type(exc).__name__


def _result(ds: Dataset, arr: np.ndarray, meta: dict, ts: str, frame: int, used: str,
            notes: list[str]) -> DecodedImage:
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:  # a frame axis slipped through
        arr = arr[0]
    return DecodedImage(
        pixels=arr,
        photometric=str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "")),
        rows=int(arr.shape[0]),
        cols=int(arr.shape[1]),
        bits=int(meta.get("bits_stored") or ds.get("BitsStored", 0) or 0),
        bits_allocated=int(meta.get("bits_allocated") or ds.get("BitsAllocated", 0) or 0),
        pixel_representation=int(meta.get("pixel_representation", ds.get("PixelRepresentation", 0)) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
        frame=frame,
        transfer_syntax_uid=ts,
        decoder_used=used,
        warnings=tuple(dict.fromkeys(notes)),
    )


def _pydicom(ds: Dataset, ts: str, frame: int, attempts: dict[str, str]) -> DecodedImage | None:
    try:
        decoder = get_decoder(UID(ts))
    except NotImplementedError as exc:
        attempts["pydicom"] = _short(exc)
        return None
    if not decoder.is_encapsulated:
        plugins: list[str] = [""]
    else:
        plugins = _plugin_order(ts, tuple(decoder.available_plugins))
        if not plugins:
            attempts["pydicom"] = f"no decoder plugin installed for {transfer_syntax_name(ts)}"
            return None
    for plugin in plugins:
        name = f"pydicom:{plugin or 'native'}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                arr, meta = decoder.as_array(ds, index=frame, decoding_plugin=plugin)
            except Exception as exc:  # noqa: BLE001 - every plugin failure is recorded, then the next is tried
                attempts[name] = _short(exc)
                continue
        notes = [f"{name}: {w.message}" for w in caught]
        return _result(ds, arr, meta, ts, frame, name, notes)
    return None


def _external(ds: Dataset, source: Path | None, ts: str, frame: int, attempts: dict[str, str]) -> DecodedImage | None:
    command = EXTERNAL_DECODERS.get(ts)
    if command is None:
        return None
    name = f"dcmtk:{command}"
    exe = shutil.which(command)
    if exe is None:
        attempts[name] = "not installed (not on PATH)"
        return None
    with tempfile.TemporaryDirectory(prefix="dicom-node-decode-") as tmp:
        if source is None:
            source = Path(tmp) / "in.dcm"
            ds.save_as(source, enforce_file_format=True)
        out = Path(tmp) / "out.dcm"
        try:
            proc = subprocess.run([exe, str(source), str(out)], capture_output=True, text=True,
                                  timeout=EXTERNAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            attempts[name] = f"timed out after {EXTERNAL_TIMEOUT_S:.0f} s"
            return None
        messages = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        if proc.returncode != 0 or not out.exists():
            attempts[name] = f"exit status {proc.returncode}: " + (" | ".join(messages)[:300] or "no message")
            return None
        try:
            decoded = pydicom.dcmread(out)
            out_ts = str(decoded.file_meta.TransferSyntaxUID)
            arr, meta = get_decoder(UID(out_ts)).as_array(decoded, index=frame)
        except Exception as exc:  # noqa: BLE001
            attempts[name] = f"decoded file unreadable: {_short(exc)}"
            return None
    notes = [f"{name}: {m}" for m in messages]
    return _result(decoded, arr, meta, ts, frame, name, notes)


def decode_pixels(source: Path | str | Dataset, *, frame: int = 0, external: bool = True) -> DecodedImage:
    """Decode frame ``frame`` (0-based) of a DICOM file or dataset.

    Raises UndecodableImage (with ``attempts``) when nothing decodes it or it has no pixel data, and ValueError when
    ``frame`` is outside Number of Frames. ``external=False`` skips the dcmtk fallback.
    """
    path: Path | None = None
    if isinstance(source, Dataset):
        ds = source
        filename = getattr(ds, "filename", None)
        path = Path(filename) if isinstance(filename, str | os.PathLike) and Path(filename).is_file() else None
        label = path.name if path else f"dataset {ds.get('SOPInstanceUID', '?')}"
    else:
        path = Path(source)
        label = path.name
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise UndecodableImage(f"cannot read {label} as DICOM: {_short(exc)}") from None
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise UndecodableImage(f"cannot decode {label}: no Transfer Syntax UID (0002,0010) in its file meta")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UndecodableImage(f"cannot decode {label}: it has no Pixel Data (7FE0,0010)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} out of range: {label} has {frames} frame(s)")
    attempts: dict[str, str] = {}
    result = _pydicom(ds, ts, frame, attempts)
    if result is None and external:
        result = _external(ds, path, ts, frame, attempts)
    if result is None:
        detail = "; ".join(f"{k}: {v}" for k, v in attempts.items()) or "no decoder for this transfer syntax"
        raise UndecodableImage(
            f"cannot decode pixel data of {label} ({transfer_syntax_name(ts)}, {ts}): {detail}", attempts
        )
    if attempts:  # earlier decoders failed before one succeeded: say so
        failed = [f"{k} failed: {v}" for k, v in attempts.items()]
        result = DecodedImage(**{**result.__dict__, "warnings": tuple(failed) + result.warnings})
    return result
