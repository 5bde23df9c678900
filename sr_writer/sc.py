"""Secondary Capture (RGB) of the source image with the results burned in, for viewers that draw neither SR nor
GSPS. Same patient and study as the source, new series; Burned In Annotation YES; references the source image."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from inference.types import Detection, ImageMeasurements, QuantityKind, RegionMeasurement
from nodecore.uids import result_uids
from sr_writer.context import ResultContext
from sr_writer.regions import region_pairs
from sr_writer.render import DrawRegion, render_annotated, to_display
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import contributing_equipment, finish


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
) -> np.ndarray:
    """The RGB image of the secondary capture."""
    grey, _ = to_display(pixels, header.dataset)
    regions = region_pairs(detections, measurements)
    draw = [DrawRegion(r.detection.label, r.detection.box, f"{r.detection.label} {r.detection.score * 100:.0f}%")
            for r in regions]
    legend = [f"dicom-node {ctx.model.name} {ctx.model.version} - not for diagnosis"]
    legend += [legend_line(r) for r in regions] or ["no region detected"]
    iso_px = iso_axis = None
    if measurements is not None and measurements.isocenter_lps_mm is not None:
        iso_px = lps_to_pixel(measurements.isocenter_lps_mm, header.dataset)
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
    """Secondary Capture Image (RGB, 8 bit) of the annotated source; ``pixels``: the decoded stored values."""
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
    rgb = render_results(pixels, header, detections, measurements, ctx)
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
    return finish(sc, ctx, f"AI regions image ({ctx.model.name} {ctx.model.version})", False)
