"""Grayscale Softcopy Presentation State over the source image: one graphic layer per region holding the box
(closed POLYLINE, PIXEL units, with the region's tracking identifier and UID) and its label; a legend layer with
the per-region figures (DISPLAY units); an isocenter marker where the image has a patient frame."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from functools import lru_cache
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from inference.types import Detection, ImageMeasurements
from nodecore.uids import result_uids
from sr_writer.context import ResultContext
from sr_writer.regions import closed_polyline, region_pairs, tracking
from sr_writer.render import choose_window, colour_for, modality_values
from sr_writer.sc import legend_line, lps_to_pixel
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import contributing_equipment, finish


@lru_cache(maxsize=64)
def _cielab(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    """sRGB (0-255) -> CIELab (D65), for the layer's recommended display colour."""
    c = np.asarray(rgb, float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L, a, b = 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])
    return hd.color.CIELabColor(float(np.clip(L, 0, 100)), float(np.clip(a, -128, 127)),
                                float(np.clip(b, -128, 127)))


def _annotation_item(source: Dataset, built: hd.pr.GraphicAnnotation, layer: hd.pr.GraphicLayer,
                     graphics: list[hd.pr.GraphicObject], texts: list[hd.pr.TextObject]) -> Dataset:
    """Graphic Annotation Sequence item for ``layer``, as ``hd.pr.GraphicAnnotation`` would build it for the same
    single source image (its Referenced Image Sequence copied from ``built``), with highdicom's coordinate check
    (PIXEL units: inside the image, else ValueError)."""
    for g in graphics:
        hd.pr.GraphicAnnotation._check_coords(g.graphic_data, source, g.units)
    for t in texts:
        if t.bounding_box is not None:
            hd.pr.GraphicAnnotation._check_coords(np.array(t.bounding_box).reshape((2, 2)), source, t.units)
        if t.anchor_point is not None:
            hd.pr.GraphicAnnotation._check_coords(np.array(t.anchor_point).reshape((1, 2)), source, t.units)
    item = Dataset()
    item.GraphicLayer = layer.GraphicLayer
    item.ReferencedImageSequence = deepcopy(built.ReferencedImageSequence)
    item.GraphicObjectSequence = graphics
    item.TextObjectSequence = texts
    return item


def _layer_name(index: int, label: str) -> str:
    return f"REGION_{index}_{label}".upper()[:16]


def write_gsps(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    pixels: np.ndarray | None = None,
    header: SourceHeader | None = None,
    reference: bool = False,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """GSPS referencing ``source``. With ``pixels`` the VOI window is the one the secondary capture uses (the
    header's when it fits the data, else the 1-99 percentiles); without, the source's own window applies.

    ``reference=True`` builds every graphic annotation with highdicom; by default only the legend's is, and the
    region annotations (same referenced image) are assembled from it with the same coordinate checks: the same
    dataset, ~10 ms faster (tests/test_gsps.py compares the two)."""
    header = header or read_source_header(source)
    ds = header.dataset
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("GSPS needs a grayscale source (Samples per Pixel 1)")
    uids = result_uids(str(ds.SOPInstanceUID), ctx.model.version, "gsps")
    regions = region_pairs(detections, measurements)
    rows, cols = float(ds.Rows), float(ds.Columns)
    layers: list[hd.pr.GraphicLayer] = []
    annotations: list[tuple[hd.pr.GraphicLayer, list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = []
    for index, region in enumerate(regions, start=1):
        det = region.detection
        ident, uid = tracking(str(ds.SOPInstanceUID), ctx, index, det.label)
        colour = colour_for(det.label)
        layer = hd.pr.GraphicLayer(_layer_name(index, det.label), order=index,
                                   description=f"{ident} ({det.concept.meaning})"[:64],
                                   display_color=_cielab(colour))
        layers.append(layer)
        box = hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=closed_polyline(det.box),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=ident,
            tracking_uid=uid,
        )
        x0, y0, _, _ = det.box.as_tuple()
        text = hd.pr.TextObject(
            text_value=f"{det.label} {det.score * 100:.0f}%",
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=(min(float(x0) + 2.0, cols), min(float(y0) + 2.0, rows)),  # inside the image
            anchor_point_visible=False,
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
        annotations.append((layer, [box], [text]))

    legend = [f"dicom-node {ctx.model.name} {ctx.model.version} - not for diagnosis"]
    legend += [legend_line(r) for r in regions] or ["no region detected"]
    legend_layer = hd.pr.GraphicLayer("LEGEND", order=len(regions) + 1, description="figures per region")
    iso = None
    if measurements is not None and measurements.isocenter_lps_mm is not None:
        iso = lps_to_pixel(measurements.isocenter_lps_mm, ds)
        if iso is not None and not (0.0 <= iso[0] <= cols and 0.0 <= iso[1] <= rows):
            legend.append("isocenter outside the image")  # PIXEL graphics must lie inside the image
            iso = None
    legend_texts = [
        hd.pr.TextObject(text_value=line[:1024], units=hd.pr.AnnotationUnitsValues.DISPLAY,
                         bounding_box=(0.01, 0.02 + 0.035 * i, 0.99, 0.05 + 0.035 * i),
                         text_justification=hd.pr.TextJustificationValues.LEFT)
        for i, line in enumerate(legend)
    ]
    graphics = []
    if iso is not None:  # a cross, clipped to the image, labelled "isocenter"
        cx, cy = iso
        arm = max(rows, cols) / 60.0
        for pts in ([[max(cx - arm, 0.0), cy], [min(cx + arm, cols), cy]],
                    [[cx, max(cy - arm, 0.0)], [cx, min(cy + arm, rows)]]):
            graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, np.asarray(pts, float),
                                                hd.pr.AnnotationUnitsValues.PIXEL))
        legend_texts.append(hd.pr.TextObject(
            text_value="isocenter", units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=(min(cx + arm, cols), min(cy + 2.0, rows)), anchor_point_visible=False,
            text_justification=hd.pr.TextJustificationValues.LEFT))
    layers.append(legend_layer)
    legend_annotation = hd.pr.GraphicAnnotation([ds], legend_layer, graphic_objects=graphics or None,
                                                text_objects=legend_texts)
    region_annotations: list[Any]
    if reference:  # every region annotation built and checked by highdicom (~2 ms each)
        region_annotations = [hd.pr.GraphicAnnotation([ds], layer, graphic_objects=g, text_objects=t)
                              for layer, g, t in annotations]
    else:
        region_annotations = [_annotation_item(ds, legend_annotation, layer, g, t) for layer, g, t in annotations]

    voi = None
    if pixels is not None:
        win = choose_window(modality_values(np.asarray(pixels), ds), ds)
        voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=[win.center], window_width=[max(win.width, 1.0)],
                                                  window_explanation=[win.source[:64]])]  # lists: highdicom splits a str
    elif "WindowCenter" not in ds or "WindowWidth" not in ds:
        raise ValueError("GSPS: the source has no valid window and no pixels were given to compute one")
    shape = "INVERSE" if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else "IDENTITY"
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[ds],
        series_instance_uid=uids["SeriesInstanceUID"],
        series_number=ctx.series_number("gsps"),
        sop_instance_uid=uids["SOPInstanceUID"],
        instance_number=1,
        manufacturer=ctx.manufacturer,
        manufacturer_model_name=ctx.manufacturer_model_name,
        software_versions=ctx.software_version,
        device_serial_number=ctx.device_serial_number,
        content_label="AI_REGIONS",
        content_description=f"regions by {ctx.model.name} {ctx.model.version}"[:64],
        graphic_annotations=[*region_annotations, legend_annotation] if reference else [legend_annotation],
        graphic_layers=layers,
        institution_name=ctx.institution_name,
        institutional_department_name=ctx.institutional_department_name,
        voi_lut_transformations=voi,
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
        contributing_equipment=[contributing_equipment(ctx)],
    )
    if not reference:
        pr.GraphicAnnotationSequence = [*region_annotations, legend_annotation]
    pr.Laterality = ds.get("Laterality", "")  # Type 2C: the source's value, or empty (unknown)
    return finish(pr, ctx, f"AI regions overlay ({ctx.model.name} {ctx.model.version})", False)
