"""DICOM objects for simulated images: CT Image Storage localizers and DX (for presentation).

Headers follow what real scanners write (modelled on the Philips localizers and Canon/Fuji radiographs in
../shared/realdata): ImageType ORIGINAL\\PRIMARY\\LOCALIZER, 12-bit unsigned MONOCHROME2 with a rescale,
Image Position/Orientation in the localizer plane through the isocenter, Pixel Spacing at the isocenter plane;
which of Table Height, Distance Source to Detector/Patient and Data Collection Center (Patient) are present
depends on the vendor profile. All identifiers are synthetic (``SIM^...``) and UIDs derive from the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from inference.simulator.profiles import CTProfile, DXProfile
from inference.simulator.truth import SimTruth
from nodecore.uids import derived_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
IMPLEMENTATION_UID = "2.25.302675183916306725870418049318151223317"
_DATE = "20240115"


def study_identity(seed: int, kind: str) -> dict[str, str]:
    """Synthetic patient and study identifiers (no PHI) and deterministic UIDs of one simulated study."""
    return {
        "PatientName": f"SIM^SUBJECT{seed:06d}",
        "PatientID": f"SIM{seed:06d}",
        "StudyInstanceUID": derived_uid("sim-study", kind, str(seed)),
        "SeriesInstanceUID": derived_uid("sim-series", kind, str(seed)),
        "FrameOfReferenceUID": derived_uid("sim-for", kind, str(seed)),
        "AccessionNumber": f"SIMA{seed:06d}",
        "StudyID": str(seed % 100000),
    }


def _ds(sop_class: str, sop_instance: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    meta.ImplementationVersionName = "DICOMNODE_SIM1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _common(ds: Dataset, study: dict[str, str], seed: int, sex: str) -> None:
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
    ds.AccessionNumber = study["AccessionNumber"]
    ds.ReferringPhysicianName = ""
    ds.PatientName = study["PatientName"]
    ds.PatientID = study["PatientID"]
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.SeriesInstanceUID = study["SeriesInstanceUID"]
    ds.StudyID = study["StudyID"]
    ds.SeriesNumber = 1
    ds.InstitutionName = "Simulated"
    ds.StationName = "SIMULATOR"
    ds.DeviceSerialNumber = f"SIM{seed % 1000:03d}"
    ds.SoftwareVersions = "dicom-node simulator 1"
    ds.BurnedInAnnotation = "NO"


def _pixels(ds: Dataset, stored: np.ndarray, bits: int, photometric: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()


def _ds_str(v: float) -> str:
    """Decimal String with as many significant digits as fit in 16 characters."""
    for digits in range(12, 3, -1):
        s = f"{float(v):.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot encode {v!r} as DS")


def ct_localizer(stored: np.ndarray, truth: SimTruth, prof: CTProfile, study: dict[str, str], view_index: int) -> Any:
    g = truth.geometry
    sop = derived_uid("sim-instance", "ct", str(truth.seed), str(view_index))
    ds = _ds(CT_IMAGE_STORAGE, sop)
    _common(ds, study, truth.seed, truth.params["subject"]["sex"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", *prof.image_type_extra]
    ds.Modality = "CT"
    ds.Manufacturer = prof.manufacturer
    ds.ManufacturerModelName = prof.model
    ds.StudyDescription = f"SIM {truth.params['protocol'].replace('_', ' ').upper()}"
    ds.SeriesDescription = "Localizer" if view_index == 0 else "Localizer lateral"
    ds.BodyPartExamined = {"head": "HEAD", "chest": "CHEST", "abdomen_pelvis": "ABDOMEN"}.get(
        truth.params["protocol"], "CHEST")
    ds.ScanOptions = prof.scan_options
    ds.SliceThickness = _ds_str(g["pixel_spacing_mm"][0])
    ds.KVP = _ds_str(prof.kvp)
    ds.DataCollectionDiameter = _ds_str(prof.fov)
    ds.ReconstructionDiameter = _ds_str(prof.fov)
    if prof.write_distances:
        ds.DistanceSourceToDetector = _ds_str(prof.sid)
        ds.DistanceSourceToPatient = _ds_str(prof.sod)
    ds.GantryDetectorTilt = "0"
    if prof.write_table_height:
        ds.TableHeight = _ds_str(g["table_height_mm"])
    ds.RotationDirection = "CW"
    ds.ExposureTime = str(int(prof.exposure_time_ms))
    ds.XRayTubeCurrent = str(int(prof.ma))
    ds.Exposure = str(max(1, int(round(prof.ma * prof.exposure_time_ms / 1000.0))))
    ds.FilterType = "FLAT"
    ds.ConvolutionKernel = "LOCALIZER"
    ds.PatientPosition = prof.patient_position
    ds.ProtocolName = ds.StudyDescription
    if prof.ctdivol is not None:
        ds.CTDIvol = prof.ctdivol
        phantom = Dataset()
        phantom.CodeValue, phantom.CodingSchemeDesignator = "113691", "DCM"
        phantom.CodeMeaning = "IEC Body Dosimetry Phantom"
        ds.CTDIPhantomTypeCodeSequence = Sequence([phantom])
    if prof.write_data_collection_center:
        iso = g["isocenter_lps_mm"]
        zc = g["image_position_mm"][2] - (g["rows"] / 2.0 - 0.5) * g["pixel_spacing_mm"][0]
        ds.DataCollectionCenterPatient = [float(iso[0]), float(iso[1]), float(zc)]
    ds.InstanceNumber = view_index + 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds_str(v) for v in g["image_position_mm"]]
    ds.ImageOrientationPatient = [str(v) for v in g["image_orientation"]]
    ds.PixelSpacing = [_ds_str(v) for v in g["pixel_spacing_mm"]]
    ds.SliceLocation = _ds_str(g["image_position_mm"][2])
    ds.PatientOrientation = ["L", "F"] if view_index == 0 else ["P", "F"]
    _pixels(ds, stored, 12, "MONOCHROME2")
    ds.RescaleIntercept = _ds_str(prof.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.WindowCenter = _ds_str(prof.window[0])
    ds.WindowWidth = _ds_str(prof.window[1])
    return ds


def dx_image(stored: np.ndarray, truth: SimTruth, prof: DXProfile, study: dict[str, str]) -> Any:
    g = truth.geometry
    sop = derived_uid("sim-instance", "dx", str(truth.seed))
    ds = _ds(DX_PRESENTATION_STORAGE, sop)
    _common(ds, study, truth.seed, truth.params["subject"]["sex"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = prof.manufacturer
    ds.ManufacturerModelName = prof.model
    exam = g["exam"]
    ds.StudyDescription = f"SIM XR {exam.upper()}"
    ds.SeriesDescription = f"{exam} {g['view']}"
    ds.BodyPartExamined = {"chest": "CHEST", "abdomen": "ABDOMEN", "pelvis": "PELVIS"}[exam]
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = {
        "chest": ("51185008", "SCT", "Thoracic structure"),
        "abdomen": ("818983003", "SCT", "Abdomen"),
        "pelvis": ("816092008", "SCT", "Pelvis"),
    }[exam]
    ds.AnatomicRegionSequence = Sequence([region])
    ds.ImageLaterality = "U"
    ds.ViewPosition = g["view"]
    view_code = Dataset()
    view_code.CodeValue, view_code.CodingSchemeDesignator, view_code.CodeMeaning = {
        "PA": ("272479007", "SCT", "postero-anterior"),
        "AP": ("399348003", "SCT", "antero-posterior"),
    }[g["view"]]
    view_code.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view_code])
    ds.AcquisitionContextSequence = Sequence([])
    ds.PatientOrientation = ["L", "F"]
    ds.InstanceNumber = 1
    ds.KVP = _ds_str(prof.kvp)
    ds.DistanceSourceToDetector = _ds_str(g["sid_mm"])
    if prof.write_sod:
        ds.DistanceSourceToPatient = _ds_str(g["sod_written_mm"])
        ds.EstimatedRadiographicMagnificationFactor = _ds_str(g["estimated_magnification_written"])
    ps = g["imager_pixel_spacing_mm"]
    ds.ImagerPixelSpacing = [_ds_str(ps), _ds_str(ps)]
    if prof.write_pixel_spacing:
        if prof.write_sod:
            cal = ps / g["estimated_magnification_written"]
            ds.PixelSpacing = [_ds_str(cal), _ds_str(cal)]
            ds.PixelSpacingCalibrationType = "GEOMETRY"
            ds.PixelSpacingCalibrationDescription = "magnification corrected at the estimated object plane"
        else:
            ds.PixelSpacing = [_ds_str(ps), _ds_str(ps)]
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = str(int(round(prof.mas / 0.01)))
    ds.Exposure = str(max(1, int(round(prof.mas))))
    ds.ExposureInuAs = int(round(prof.mas * 1000))
    ds.ImageAndFluoroscopyAreaDoseProduct = _ds_str(g["dap_dgy_cm2"])
    ds.Grid = "FOCUSED"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "SIMDET1"
    ds.PositionerType = "NONE"
    c = g["collimator_px"]
    ds.CollimatorShape = "RECTANGULAR"
    ds.CollimatorLeftVerticalEdge = str(c["left"])
    ds.CollimatorRightVerticalEdge = str(c["right"])
    ds.CollimatorUpperHorizontalEdge = str(c["upper"])
    ds.CollimatorLowerHorizontalEdge = str(c["lower"])
    mono1 = prof.photometric == "MONOCHROME1"
    _pixels(ds, stored, prof.bits_stored, prof.photometric)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if mono1 else 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.LossyImageCompression = "00"
    maxv = (1 << prof.bits_stored) - 1
    ds.WindowCenter = _ds_str(maxv / 2.0)
    ds.WindowWidth = _ds_str(float(maxv))
    return ds


def write_dataset(ds: pydicom.Dataset, path: str) -> None:
    ds.save_as(path, enforce_file_format=True)
