"""Secondary Capture (RGB) of the source image with the results burned in, for viewers that draw neither SR nor
GSPS. Same patient and study as the source, new series; Burned In Annotation YES; references the source image.

Size (``ResultContext.sc_compression`` / ``sc_max_size``, per route in the YAML), from measurements on the real
2128 x 2000 Canon DX chest (table in docs/RESULTS.md; tests/test_sc.py): uncompressed RGB was 12.8 MB, more than
the radiograph. The default, ``jpeg``, is JPEG Baseline (1.2.840.10008.1.2.4.50, the one compressed syntax every
PACS and viewer accepts) at quality 90 with 4:2:2 chroma (YBR_FULL_422), encoded by Pillow (libjpeg-turbo,
BSD-style): 0.59 MB at 2048 x 1925. ``jpeg-ls`` (CharLS via pyjpegls) and ``jpeg2000`` (OpenJPEG via
pylibjpeg-openjpeg) are lossless for sites that ask for it: 5.6 / 5.7 MB at full size, so lossless captures are
drawn at most 1024 pixels on the longest side (1.2 MB) unless ``sc_max_size`` says otherwise; JPEG-LS encodes
3.5 x faster than JPEG 2000, and Orthanc's core decodes JPEG-LS but not JPEG 2000.
JPEG captures are drawn at most 2048 pixels on the longest side. The capture is rendered at its final size (text and
lines stay crisp) and carries no Pixel Spacing, so a smaller capture does not mislead a measuring viewer. A PACS that
refuses the compressed syntax gets it decompressed by the sender (dicom_node.outbound), same SOP Instance UID.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from inference.types import Box, Detection, ImageMeasurements, QuantityKind, RegionMeasurement
from nodecore.uids import result_uids
from sr_writer.context import ResultContext
from sr_writer.regions import region_pairs
from sr_writer.render import DrawRegion, render_annotated, to_display
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import contributing_equipment, finish

SC_COMPRESSIONS = ("jpeg", "jpeg-ls", "jpeg2000", "none")
DEFAULT_MAX_SIZE = {"jpeg": 2048, "jpeg-ls": 1024, "jpeg2000": 1024, "none": 1024}
JPEG_QUALITY = 90


def sc_scale(rows: int, cols: int, compression: str, max_size: int = 0) -> float:
    """Factor (<= 1) from the source's size to the capture's: the longest side at most ``max_size`` pixels (0: the
    default of ``compression``)."""
    if compression not in SC_COMPRESSIONS:
        raise ValueError(f"unknown secondary capture compression {compression!r}; known: {', '.join(SC_COMPRESSIONS)}")
    limit = max_size or DEFAULT_MAX_SIZE[compression]
    return min(1.0, limit / max(rows, cols))


def _scaled_box(box: Box, s: float) -> Box:
    return Box(box.x_min * s, box.y_min * s, box.x_max * s, box.y_max * s)


def _plane(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float] | None:
    """(IPP, row direction, column direction, column spacing, row spacing) when the header has a patient frame."""
    ipp, iop, ps = header.get("ImagePositionPatient"), header.get("ImageOrientationPatient"), header.get(
        "PixelSpacing")
    if ipp is None or iop is None or ps is None or len(ipp) != 3 or len(iop) != 6 or len(ps) != 2:
        return None
    return (np.asarray(ipp, float), np.asarray(iop[:3], float), np.asarray(iop[3:], float), float(ps[1]),
            float(ps[0]))


def lps_to_pixel(point: Sequence[float], header: Dataset) -> tuple[float, float] | None:
    """Orthogonal projection of an LPS point (mm) onto the image plane, in SCOORD pixel coordinates."""
    plane = _plane(header)
    if plane is None:
        return None
    ipp, row, col, dc, dr = plane
    d = np.asarray(point, float) - ipp
    return float(d @ row / dc + 0.5), float(d @ col / dr + 0.5)


def z_axis_in_pixels(header: Dataset) -> tuple[float, float] | None:
    """Unit direction, in pixel space, of the patient's z axis (the table axis) as seen in the image plane."""
    plane = _plane(header)
    if plane is None:
        return None
    _, row, col, dc, dr = plane
    v = np.array([row[2] / dc, col[2] / dr])
    n = float(np.hypot(*v))
    return None if n < 1e-6 else (float(v[0] / n), float(v[1] / n))


def legend_line(region: RegionMeasurement) -> str:
    det = region.detection
    parts = [f"{det.label} {det.score * 100:.0f}%"]
    w, h = region.get(QuantityKind.BOX_WIDTH), region.get(QuantityKind.BOX_HEIGHT)
    if w is not None and h is not None:
        parts.append(f"{w.value:.0f} x {h.value:.0f} mm")
    else:
        parts.append(f"{det.box.width:.0f} x {det.box.height:.0f} px (no mm)")
    area = region.get(QuantityKind.ELLIPSE_AREA)
    if area is not None:
        parts.append(f"{area.value:.0f} cm2")
    lat, ver = region.get(QuantityKind.ISO_OFFSET_LATERAL), region.get(QuantityKind.ISO_OFFSET_VERTICAL)
    if lat is not None:
        parts.append(f"iso lat {lat.value:+.1f} mm")
    if ver is not None:
        parts.append(f"vert {ver.value:+.1f} mm{' (est.)' if ver.estimated else ''}")
    wed = region.get(QuantityKind.WATER_EQUIVALENT_DIAMETER)
    if wed is not None:
        parts.append(f"WED {wed.value:.1f} cm")
    return "  ".join(parts)


def render_results(
    pixels: np.ndarray,
    header: SourceHeader,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    scale: float = 1.0,
) -> np.ndarray:
    """The RGB image of the secondary capture, ``scale`` times the source's size (boxes and marker scaled too)."""
    grey, _ = to_display(pixels, header.dataset)
    if scale < 1.0:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    regions = region_pairs(detections, measurements)
    draw = [DrawRegion(r.detection.label, _scaled_box(r.detection.box, scale),
                       f"{r.detection.label} {r.detection.score * 100:.0f}%") for r in regions]
    legend = [f"dicom-node {ctx.model.name} {ctx.model.version} - not for diagnosis"]
    legend += [legend_line(r) for r in regions] or ["no region detected"]
    iso_px = iso_axis = None
    if measurements is not None and measurements.isocenter_lps_mm is not None:
        iso_px = lps_to_pixel(measurements.isocenter_lps_mm, header.dataset)
        if iso_px is not None:
            iso_px = (iso_px[0] * scale, iso_px[1] * scale)
        iso_axis = z_axis_in_pixels(header.dataset)
        if iso_px is not None:
            legend.append(f"isocenter: {measurements.isocenter_source or 'source not stated'}")
    if measurements is not None and measurements.geometry_level.value == "pixels":
        legend.append("no pixel spacing: sizes in pixels only")
    return render_annotated(grey, draw, legend, iso_px, iso_axis)


def write_sc(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    pixels: np.ndarray | None = None,
    header: SourceHeader | None = None,
) -> hd.sc.SCImage:
    """Secondary Capture Image (RGB, 8 bit) of the annotated source; ``pixels``: the decoded stored values.

    Compressed and sized by ``ctx.sc_compression`` / ``ctx.sc_max_size`` (module docstring)."""
    header = header or read_source_header(source)
    if pixels is None:
        try:
            pixels = source.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
            raise ValueError(f"cannot render the secondary capture: source pixel data not decodable ({exc})") from exc
    pixels = np.asarray(pixels)
    if pixels.shape != (int(header.dataset.Rows), int(header.dataset.Columns)):
        raise ValueError(f"pixels of shape {pixels.shape} do not match the source's Rows x Columns "
                         f"{int(header.dataset.Rows)} x {int(header.dataset.Columns)}")
    scale = sc_scale(pixels.shape[0], pixels.shape[1], ctx.sc_compression, ctx.sc_max_size)
    rgb = render_results(pixels, header, detections, measurements, ctx, scale)
    uids = result_uids(str(header.dataset.SOPInstanceUID), ctx.model.version, "sc")
    orientation = header.patient_orientation
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header.dataset,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids["SeriesInstanceUID"],
        series_number=ctx.series_number("sc"),
        sop_instance_uid=uids["SOPInstanceUID"],
        instance_number=1,
        manufacturer=ctx.manufacturer,
        patient_orientation=orientation if orientation is not None else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(ctx)],
    )
    if orientation is None:
        sc.PatientOrientation = ""  # type: ignore[assignment]  # unknown: Type 2C, left empty rather than made up
    sc.Laterality = header.dataset.get("Laterality", "")  # Type 2C: the source's value, or empty (unknown)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.DerivationDescription = f"source image windowed, regions by {ctx.model.name} {ctx.model.version} burned in"[
        :1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.dataset.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.dataset.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    if ctx.institution_name:
        sc.InstitutionName = ctx.institution_name
    if scale < 1.0:
        sc.DerivationDescription = (f"{sc.DerivationDescription}; reduced to {rgb.shape[1]} x {rgb.shape[0]} "
                                    f"pixels")[:1024]
    compress_sc(sc, rgb, ctx.sc_compression)
    return finish(sc, ctx, f"AI regions image ({ctx.model.name} {ctx.model.version})", False)


def compress_sc(sc: Dataset, rgb: np.ndarray, compression: str) -> None:
    """Re-encode the capture's pixel data (``rgb``: its RGB pixels) with ``compression`` in place."""
    if compression == "none":
        return
    raw = rgb.nbytes
    if compression == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2",
                                              optimize=True)
        data = buf.getvalue()
        sc.PixelData = encapsulate([data])
        sc["PixelData"].VR = "OB"
        sc.PhotometricInterpretation = "YBR_FULL_422"  # what a JPEG Baseline bit stream of a colour image holds
        sc.PlanarConfiguration = 0
        sc.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionRatio = f"{raw / len(data):.2f}"[:16]
        sc.LossyImageCompressionMethod = "ISO_10918_1"
        return
    syntax = {"jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}.get(compression)
    if syntax is None:
        raise ValueError(f"unknown secondary capture compression {compression!r}; known: {', '.join(SC_COMPRESSIONS)}")
    sc.compress(syntax, rgb, generate_instance_uid=False)
