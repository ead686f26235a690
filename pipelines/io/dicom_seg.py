"""A label map on a DICOM series' grid -> a DICOM Segmentation object (BINARY) that references that series.

``write_dicom_seg(path, labels, files, segments, algorithm)`` writes one Segmentation Storage instance with
``highdicom``: one segment per foreground label (``segments``: label value -> name, e.g. ``{1: "nodule"}``), each
described as AUTOMATIC with the algorithm identification naming the bundle and its version; one frame per source slice
that holds any label (all frames when none does, since a SEG needs at least one), each frame referencing its slice's
SOPInstanceUID and carrying its ImagePositionPatient; the Frame of Reference, the study and the patient copied from
the source. The viewers (OHIF, 3D Slicer, PACS) then show it over the series it was computed from.

``labels`` is ``(slices, rows, columns)`` in the order of ``files`` (:func:`pipelines.io.dicom_series`' order, which
is the order SimpleITK reads the series in). :func:`check_on_source_grid` refuses a prediction whose geometry is not
the series' own (one ``ValueError`` line naming the prediction), so a frame never lands on the wrong slice.

What highdicom does not do and is done here: DICOM allows a series to leave the type 2 patient/study attributes out
(PatientBirthDate, StudyID, ...); highdicom reads them unconditionally, so absent ones are given empty values (what
type 2 allows) on the in-memory copies of the source headers. Property codes: the project's label names map to
SNOMED CT concepts (``nodule``, ``lesion``, ``tumor``...); other names get category Tissue and a code of a local
scheme (``99MONAIRN``) whose meaning is the name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path

__all__ = ["Algorithm", "check_on_source_grid", "dicom_segmentation", "read_source_headers", "segment_codes",
           "write_dicom_seg"]

#: type 2 attributes (present, possibly empty) that highdicom copies from the first source image
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")

#: the local coding scheme of label names that have no SNOMED CT concept here
LOCAL_SCHEME = "99MONAIRN"


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: the bundle's name and version (metadata.json ``name`` and ``version``)."""

    name: str
    version: str


def segment_codes(name: str):
    """``(category, property type)`` codes of a label name (pydicom ``Code``\\ s)."""
    from pydicom.sr.coding import Code
    from pydicom.sr.codedict import codes

    abnormal = {"nodule": codes.SCT.Nodule, "lesion": codes.SCT.Lesion, "tumor": codes.SCT.Neoplasm,
                "tumour": codes.SCT.Neoplasm, "neoplasm": codes.SCT.Neoplasm, "edema": codes.SCT.Edema,
                "oedema": codes.SCT.Edema, "necrosis": codes.SCT.Necrosis}
    found = abnormal.get(name.strip().lower())
    if found is not None:
        return codes.SCT.MorphologicallyAbnormalStructure, found
    # code values are SH (16 characters at most); the meaning (LO, 64) keeps the whole name
    value = "".join(c for c in name.upper() if c.isalnum())[:16] or "LABEL"
    return codes.SCT.Tissue, Code(value=value, scheme_designator=LOCAL_SCHEME, meaning=name[:64])


def read_source_headers(files: Sequence[str | os.PathLike]) -> list:
    """The headers of a series' slices (no pixel data), in the given order, with absent type 2 attributes empty."""
    import pydicom

    datasets = []
    for name in files:
        ds = pydicom.dcmread(str(name), stop_before_pixels=True)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        datasets.append(ds)
    return datasets


def check_on_source_grid(prediction: sitk.Image, datasets: Sequence, name: str | os.PathLike = "prediction") -> None:
    """``ValueError`` naming ``name`` unless slice ``k`` of ``prediction`` lies where ``datasets[k]`` does: the same
    rows and columns, row and column directions (ImageOrientationPatient) and, for every slice, its first voxel at the
    slice's ImagePositionPatient (within 1 % of the smallest voxel size; NIfTI stores the affine in float32)."""
    size = prediction.GetSize()
    if prediction.GetDimension() != 3 or size[2] != len(datasets):
        raise ValueError(f"{name}: {'x'.join(map(str, size))} voxels, not one slice per file of the DICOM series "
                         f"({len(datasets)} slices)")
    first = datasets[0]
    if (int(first.Rows), int(first.Columns)) != (size[1], size[0]):
        raise ValueError(f"{name}: slices of {size[1]} rows x {size[0]} columns, the DICOM series has "
                         f"{first.Rows} x {first.Columns}")
    tolerance = 0.01 * min(prediction.GetSpacing())
    direction = np.asarray(prediction.GetDirection()).reshape(3, 3)
    for k, ds in enumerate(datasets):
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if not (np.allclose(direction[:, 0], orientation[:3], atol=1e-3)
                and np.allclose(direction[:, 1], orientation[3:], atol=1e-3)):
            raise ValueError(f"{name}: row/column directions {np.round(direction[:, :2].T.ravel(), 4).tolist()} "
                             f"differ from the ImageOrientationPatient {orientation.tolist()} of {ds.filename}")
        corner = np.asarray(prediction.TransformIndexToPhysicalPoint((0, 0, k)))
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        if np.abs(corner - position).max() > tolerance:
            raise ValueError(f"{name}: slice {k} starts at {np.round(corner, 3).tolist()} mm, its DICOM slice "
                             f"{Path(str(ds.filename)).name} at {position.tolist()} mm: not on the series' grid")


def dicom_segmentation(labels: np.ndarray, datasets: Sequence, segments: Mapping[int, str], algorithm: Algorithm,
                       *, series_number: int | None = None):
    """A ``highdicom.seg.Segmentation`` (BINARY) of ``labels`` (``(slices, rows, columns)``, slice ``k`` on
    ``datasets[k]``); segment ``i`` (1-based, in ascending label value) is label ``sorted(segments)[i - 1]``.

    ``ValueError`` when ``labels`` holds a value that ``segments`` does not name (other than 0)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = sorted(int(v) for v in segments if int(v) != 0)
    unnamed = sorted(set(np.unique(labels).tolist()) - {0, *values})
    if unnamed:
        raise ValueError(f"label value(s) {unnamed} of the prediction have no segment")
    if not values:
        raise ValueError("no foreground label to write as a segment")
    # highdicom takes a label map whose values are the segment numbers 1..n
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    lookup[values] = np.arange(1, len(values) + 1)
    segment_numbers = lookup[np.asarray(labels, dtype=np.int64)]
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version[:64])
    descriptions, local = [], False
    for number, value in enumerate(values, start=1):
        category, kind = segment_codes(segments[value])
        local = local or kind.scheme_designator == LOCAL_SCHEME
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segments[value][:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification))
    source = datasets[0]
    if series_number is None:
        series_number = int(source.get("SeriesNumber") or 0) + 1000
    return hd.seg.Segmentation(
        source_images=list(datasets),
        pixel_array=segment_numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI research networks",
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number="none",
        series_description=f"{algorithm.name} {algorithm.version}"[:64],
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        # frames without any label are left out, unless there is no label at all (a SEG needs a frame)
        omit_empty_frames=bool(segment_numbers.any()),
        # a private coding scheme is declared in the object (CodingSchemeIdentificationSequence)
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME, name="label names of MONAI research networks bundles")] if local else None,
    )


def write_dicom_seg(path: str | os.PathLike, prediction: sitk.Image, files: Sequence[str | os.PathLike],
                    segments: Mapping[int, str], algorithm: Algorithm, name: str | os.PathLike | None = None) -> Path:
    """Write ``prediction`` (a label map on the grid of the series ``files``) to ``path`` as a DICOM SEG, atomically.

    ``name`` is how the prediction is named in errors (:func:`check_on_source_grid`). Returns ``path``."""
    datasets = read_source_headers(files)
    check_on_source_grid(prediction, datasets, name if name is not None else path)
    labels = sitk.GetArrayFromImage(prediction)  # (slices, rows, columns): slice k is files[k]
    segmentation = dicom_segmentation(labels, datasets, segments, algorithm)
    with atomic_path(path) as tmp:
        segmentation.save_as(str(tmp))
    return Path(path)
