"""A CT series as a scanner writes it: one uncompressed DICOM file per slice, with the geometry in every header.

Layout::

    <folder>/
        IM000001.dcm ... IM0000NN.dcm     one CT Image Storage file per slice, little-endian explicit VR, 16-bit signed
                                          pixels with RescaleSlope 1 / RescaleIntercept 0 (the values are HU)

Each file carries ImagePositionPatient (the slice's first voxel, LPS mm), ImageOrientationPatient (row and column
direction cosines), PixelSpacing (row spacing, column spacing), SliceThickness, and the Study/Series/Frame of
Reference UIDs shared by the series. ``positions`` lets a test write an uneven series (a missing slice) on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_dicom_series"]


def write_dicom_series(
    folder: str | Path,
    volume: np.ndarray,
    spacing: Sequence[float] = (0.8, 0.8, 1.5),
    origin: Sequence[float] = (-100.0, -100.0, -50.0),
    *,
    positions: Sequence[float] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` (``(z, y, x)`` int16 HU, rows = y, columns = x) as one DICOM file per slice in ``folder``.

    Args:
        folder: created if missing; files ``<prefix>000001.dcm``...
        volume: the slices, axial, z increasing towards the head (LPS +z).
        spacing: (x, y, z) voxel size in mm: column spacing, row spacing, slice distance.
        origin: LPS position of the first voxel of the first slice.
        positions: z positions (mm) of the slices instead of ``origin[2] + k * spacing[2]``.
        series_uid, study_uid, frame_of_reference_uid: UIDs (generated when not given).
        series_number: SeriesNumber of every file.
        prefix: file name prefix (several series can share one folder).

    Returns the written paths, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (z, y, x), got shape {volume.shape}")
    z_positions = list(positions) if positions is not None else [origin[2] + k * spacing[2]
                                                                 for k in range(volume.shape[0])]
    if len(z_positions) != volume.shape[0]:
        raise ValueError(f"{len(z_positions)} positions for {volume.shape[0]} slices")
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    paths = []
    for k, (plane, z) in enumerate(zip(volume.astype(np.int16), z_positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{k + 1:06d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "SYNTH0001", "Synthetic^Phantom"
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
