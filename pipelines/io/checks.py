"""Header checks of every image file and DICOM series, the same for training, evaluation and inference.

Every entry point that opens an image goes through here: :func:`read_image_information` (training preflight, the
datalist builders, ``pipelines infer``'s pre-check) and :class:`~pipelines.io.readers.SimpleITKReader` (the loader of
every bundle). A problem is a ``ValueError`` whose message starts with the file's path and says what is wrong in one
line. Headers are read, voxels are not; the one exception is a gzip-compressed file, whose decompressed length is
counted by streaming it (up to the size its header declares, never more), since a gzip file cut in half otherwise
decodes to a zero-filled image without an error.

==============================================  ======================================================================
check                                           why
==============================================  ======================================================================
file exists, header readable                    the reader's own error is a C++ traceback
declared size against the file                  SimpleITK zero-fills what is missing (``.nii``, ``.nii.gz``, ``.raw``,
                                                ``.mha``/``.mhd`` with ``LOCAL`` or compressed data, NRRD
                                                ``raw``/``gzip``)
voxel sizes positive and finite                 SimpleITK silently replaces a 0 or NaN voxel size by 1 mm
origin, direction finite; direction orthonormal  a prediction on a wrong grid overlays the wrong anatomy
MetaImage / NRRD data file inside the folder     ``ElementDataFile = /etc/passwd`` or ``../../x`` would be read as
  of its header (relative, no ``..``)            voxels
DICOM: one series per output                    a folder with two series gave the first and ignored the second
DICOM: every slice readable, pixel data whole   GDCM drops an unreadable slice and the volume no longer overlays
DICOM: slice positions evenly spaced            ITK assumes one spacing: a missing slice shifts everything after it
==============================================  ======================================================================

Not checked here: intensities (NaN/Inf are found by the callers that read the voxels), label values (preflight).
Upstream: MONAI's readers and SimpleITK do none of these checks; ITK warns about uneven DICOM spacing on stderr only.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike
from monai.data.utils import orientation_ras_lps

from pipelines.io.formats import is_dicom_file, is_metaimage, is_nifti, is_nrrd
from pipelines.io.geometry import grid_of_affine

__all__ = [
    "DicomSeries",
    "dicom_series",
    "ensure_writable",
    "read_image_information",
    "first_line",
    "nifti_size_problem",
    "is_nifti2",
    "ImageInformation",
    "NiftiHeaderInformation",
    "SLICE_SPACING_TOLERANCE",
]

#: relative tolerance on DICOM slice spacing: a gap larger than ``(1 + tol) * median`` (or smaller than ``1 - tol``)
#: is an error; scanners round positions to about 1e-3 mm, so 5 % leaves no room for a missing slice (100 %)
SLICE_SPACING_TOLERANCE = 0.05
_ORTHONORMAL_ATOL = 1e-3
_CHUNK = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF  # a DICOM element length of "undefined" (sequences, encapsulated pixel data)

_MET_SIZES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8}
_NRRD_SIZES = {"uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1, "signed char": 1, "int8": 1, "int8_t": 1,
               "char": 1, "short": 2, "short int": 2, "signed short": 2, "int16": 2, "int16_t": 2, "ushort": 2,
               "unsigned short": 2, "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4, "int32_t": 4,
               "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4, "float": 4, "double": 8, "longlong": 8,
               "long long": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "uint64": 8,
               "uint64_t": 8}


def first_line(error: Exception) -> str:
    """The useful sentence of a SimpleITK error (its message starts with the C++ source location)."""
    lines = [ln.strip().removeprefix("sitk::ERROR:").strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if ln and not ln.startswith(("/", "Exception thrown"))] or lines
    return useful[-1] if useful else type(error).__name__


# ---------------------------------------------------------------------------------------------------------------------
# sizes


def _gzip_short(path: Path, needed: int, offset: int = 0) -> str | None:
    """Stream the gzip data of ``path`` (from byte ``offset``) until ``needed`` bytes are out; say what is wrong."""
    got = 0
    try:
        with path.open("rb") as raw:
            raw.seek(offset)
            with gzip.GzipFile(fileobj=raw) as f:
                while got < needed:
                    block = f.read(min(_CHUNK, needed - got))
                    if not block:
                        break
                    got += len(block)
    except (EOFError, OSError, zlib.error) as e:
        return f"truncated or corrupt gzip data ({type(e).__name__}: {e}; {got} of the {needed} bytes the header " \
               "declares could be decompressed)"
    if got < needed:
        return f"truncated ({got} bytes of image data, the header declares {needed})"
    return None


def _zlib_short(path: Path, needed: int, offset: int = 0) -> str | None:
    """As :func:`_gzip_short` for a raw zlib stream (MetaImage ``CompressedData = True``)."""
    got = 0
    d = zlib.decompressobj()
    try:
        with path.open("rb") as f:
            f.seek(offset)
            while got < needed:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                got += len(d.decompress(chunk, needed - got + 1))
                while d.unconsumed_tail and got < needed:
                    got += len(d.decompress(d.unconsumed_tail, needed - got + 1))
    except zlib.error as e:
        return f"corrupt compressed data ({e}; {got} of the {needed} bytes the header declares)"
    if got < needed:
        return f"truncated ({got} bytes of image data, the header declares {needed})"
    return None


def nifti_size_problem(path: str | os.PathLike) -> str | None:
    """Say if a NIfTI file (1 or 2) holds fewer bytes than its header declares, or has a bad voxel size or affine.

    ``.nii``: the file size; ``.nii.gz``: the decompressed length, counted by streaming (a gzip trailer's length
    field is only modulo 4 GiB and not there at all when the file is cut).
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if not is_nifti(name):
        return None
    try:
        # a NIfTI-1 or NIfTI-2 image (Nifti2Image derives from Nifti1Image); nib.load is typed as any image
        image = cast("nib.Nifti1Image", nib.load(str(path)))
        header = image.header
        offset = int(getattr(image.dataobj, "offset", header["vox_offset"]))
        # a single file (.nii, .nii.gz): the data never starts inside the header (352 / 544 bytes)
        offset = max(offset, int(header["sizeof_hdr"]) + 4)
        shape = tuple(int(s) for s in header.get_data_shape())
        needed = offset + math.prod(shape) * header.get_data_dtype().itemsize
        # the header as stored: nibabel's loader "repairs" a zero pixdim to 1 (and SimpleITK then mixes sform and
        # pixdim), so the voxel sizes are read from the raw bytes
        size = int(header["sizeof_hdr"])
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            stored = type(header)(f.read(size), check=False)
        zooms = np.asarray(stored["pixdim"][1: 1 + min(3, len(shape))], dtype=np.float64)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - nibabel cannot parse it: a cut-off or damaged header
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"not a readable image (truncated or corrupt header: {type(e).__name__}: {text})"
    if zooms.size and (not np.isfinite(zooms).all() or (zooms <= 0).any()):
        return f"voxel size {zooms.tolist()} in the header (pixdim) is not positive and finite"
    if not np.isfinite(affine).all():
        return "the header's affine (qform/sform) holds NaN or Inf"
    if name.endswith(".nii"):
        actual = path.stat().st_size
        return f"truncated ({actual} bytes, the header needs {needed})" if actual < needed else None
    return _gzip_short(path, needed)


def is_nifti2(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a NIfTI-2 file (``sizeof_hdr`` 540, either byte order), which SimpleITK cannot read."""
    name = str(path).lower()
    if not is_nifti(name):
        return False
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))


#: numpy dtype -> SimpleITK pixel ID of a scalar image (what :class:`NiftiHeaderInformation` reports)
_SITK_PIXEL_IDS = {"uint8": sitk.sitkUInt8, "int8": sitk.sitkInt8, "uint16": sitk.sitkUInt16,
                   "int16": sitk.sitkInt16, "uint32": sitk.sitkUInt32, "int32": sitk.sitkInt32,
                   "uint64": sitk.sitkUInt64, "int64": sitk.sitkInt64, "float32": sitk.sitkFloat32,
                   "float64": sitk.sitkFloat64}


class ImageInformation(Protocol):
    """The header of one image file as :func:`read_image_information` returns it: the methods of
    ``sitk.ImageFileReader`` after ``ReadImageInformation`` that the callers use (SimpleITK or
    :class:`NiftiHeaderInformation`)."""

    def GetFileName(self) -> str: ...  # noqa: N802 - SimpleITK's names

    def GetDimension(self) -> int: ...  # noqa: N802

    def GetSize(self) -> tuple[int, ...]: ...  # noqa: N802

    def GetSpacing(self) -> tuple[float, ...]: ...  # noqa: N802

    def GetOrigin(self) -> tuple[float, ...]: ...  # noqa: N802

    def GetDirection(self) -> tuple[float, ...]: ...  # noqa: N802

    def GetNumberOfComponents(self) -> int: ...  # noqa: N802

    def GetPixelID(self) -> int: ...  # noqa: N802


class NiftiHeaderInformation:
    """What ``sitk.ImageFileReader.ReadImageInformation`` gives, read from a NIfTI-2 header with nibabel.

    SimpleITK 2.5 has no NIfTI-2 reader (``Unable to determine ImageIO reader``); nibabel, MONAI's ``NibabelReader``
    backend, reads it. The geometry follows ITK's conventions so that callers cannot tell the difference: LPS
    origin and direction (nibabel's affine is RAS), spacing from ``pixdim``, a 4th axis as time, a 5th as components.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import nibabel as nib

        self._path = str(path)
        image = cast("nib.Nifti1Image", nib.load(self._path))  # NIfTI-2: a Nifti2Image
        header = image.header
        shape = tuple(int(v) for v in header.get_data_shape())
        self._components = shape[4] if len(shape) >= 5 else 1
        shape = shape[:4]
        while len(shape) > 3 and shape[-1] == 1:  # a trailing time axis of one is a volume
            shape = shape[:-1]
        dims = max(len(shape), 2)
        self._size = tuple(shape) + (1,) * (dims - len(shape))
        zooms = [float(z) for z in header.get_zooms()[:dims]]
        self._spacing = tuple(zooms + [1.0] * (dims - len(zooms)))
        # ITK's reading: LPS, the direction the normalised columns of the affine, spacing from pixdim (above)
        _, columns, origin = grid_of_affine(orientation_ras_lps(np.asarray(image.affine, dtype=np.float64)))
        spatial = min(dims, 3)
        direction = np.eye(dims)
        direction[:spatial, :spatial] = columns[:spatial, :spatial]
        self._direction = tuple(direction.ravel().tolist())
        self._origin = tuple(origin[:spatial].tolist()) + (0.0,) * (dims - spatial)
        slope, inter = header.get_slope_inter()
        scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
        dtype = np.dtype(np.float64 if scaled else header.get_data_dtype()).name
        self._pixel_id = _SITK_PIXEL_IDS.get(dtype, sitk.sitkFloat64)

    def GetFileName(self) -> str:  # noqa: N802 - SimpleITK's names
        return self._path

    def GetDimension(self) -> int:  # noqa: N802
        return len(self._size)

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802
        return self._size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self._spacing

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self._origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self._direction

    def GetNumberOfComponents(self) -> int:  # noqa: N802
        return self._components

    def GetPixelID(self) -> int:  # noqa: N802
        return self._pixel_id


def _key_values(lines: Sequence[str], sep: str) -> dict[str, str]:
    out = {}
    for line in lines:
        if sep in line and not line.startswith("#"):
            key, value = line.split(sep, 1)
            out[key.strip().lower()] = value.strip()
    return out


def _confined(header: Path, name: str, what: str) -> Path:
    """``name`` resolved beside ``header``; ``ValueError`` if it is absolute or leaves the header's folder."""
    folder = header.parent.resolve()
    target = (header.parent / name).resolve()
    if Path(name).is_absolute() or (folder != target and folder not in target.parents):
        raise ValueError(f"{header}: its {what} {name!r} lies outside the header's folder; refusing to read it "
                         "(a data file must sit beside its header or below it)")
    return target


def _positive_finite(values: ArrayLike) -> bool:
    array = np.asarray(values, dtype=np.float64)
    return bool(array.size) and bool(np.isfinite(array).all()) and bool((array > 0).all())


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace("(", " ").replace(")", " ").replace(",", " ").split()]
    except ValueError:
        return [float("nan")]


def _metaimage_problem(path: Path) -> str | None:
    """MetaImage (``.mhd``/``.mha``): voxel size, data file(s) confined and complete."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    text = head.decode("latin-1")
    lines, end = [], 0
    for line in text.splitlines(keepends=True):  # the header ends with the ElementDataFile line
        lines.append(line.strip())
        end += len(line.encode("latin-1"))
        if line.split("=", 1)[0].strip() == "ElementDataFile":
            break
    fields = _key_values(lines, "=")
    spacing = fields.get("elementspacing") or fields.get("elementsize")
    if spacing is not None and not _positive_finite(_floats(spacing)):
        return f"voxel size (ElementSpacing) {spacing!r} is not positive and finite"
    for key in ("offset", "origin", "position", "transformmatrix", "rotation", "orientation"):
        if key in fields and not np.isfinite(_floats(fields[key])).all():
            return f"{key} {fields[key]!r} in the header is not finite"
    data_file = fields.get("elementdatafile", "")
    if not data_file:
        return "no ElementDataFile line in the header"
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        components = int(fields.get("elementnumberofchannels", "1"))
        needed = math.prod(dims) * components * _MET_SIZES[fields["elementtype"].upper()]
    except (KeyError, ValueError):
        return None  # SimpleITK's own header read reports a malformed header
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_file.upper() == "LOCAL":
        files, offset = [path], end
    elif data_file.upper().startswith("LIST"):
        names = [ln.strip() for ln in text[end:].splitlines() if ln.strip()]
        files = [_confined(path, n, "data file") for n in names]
        return None if files else "ElementDataFile = LIST names no file"
    elif "%" in data_file:
        _confined(path, data_file.split()[0], "data file pattern")
        return None
    else:
        files, offset = [_confined(path, data_file, "data file")], 0
    raw = files[0]
    if not raw.exists():
        return f"its data file {raw.name} is missing"
    if compressed:
        return _zlib_short(raw, needed, offset)
    actual = raw.stat().st_size - offset
    if actual < needed:
        return f"its data file {raw.name} is truncated ({actual} bytes, the header needs {needed})"
    return None


def _nrrd_problem(path: Path) -> str | None:
    """NRRD (``.nrrd``/``.nhdr``): voxel size, data file confined and complete (raw and gzip encodings)."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    text = head.decode("latin-1")
    if not text.startswith("NRRD"):
        return None
    header_text, sep, _ = text.partition("\n\n")
    fields = _key_values(header_text.splitlines()[1:], ":")
    if "spacings" in fields:
        values = [v for v in _floats(fields["spacings"]) if not math.isnan(v)] or [float("nan")]
        if not _positive_finite(values):
            return f"voxel size (spacings) {fields['spacings']!r} is not positive and finite"
    if "space directions" in fields:
        vectors = [v for v in fields["space directions"].split() if v != "none"]
        for vector in vectors:
            v = np.asarray(_floats(vector))
            if not np.isfinite(v).all() or np.linalg.norm(v) == 0:
                return f"space direction {vector} is not a finite, non-zero vector"
    if "space origin" in fields and not np.isfinite(_floats(fields["space origin"])).all():
        return f"space origin {fields['space origin']!r} is not finite"
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file and data_file.upper().startswith("LIST") or (data_file and "%" in data_file):
        return None
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        needed = math.prod(sizes) * _NRRD_SIZES[fields["type"].lower()]
    except (KeyError, ValueError):
        return None
    if data_file:
        target, offset = _confined(path, data_file, "data file"), 0
    elif sep:
        target, offset = path, len(header_text.encode("latin-1")) + 2
    else:
        return "no image data after the header"
    if not target.exists():
        return f"its data file {target.name} is missing"
    encoding = fields.get("encoding", "raw").lower()
    if encoding == "raw":
        actual = target.stat().st_size - offset
        return f"truncated ({actual} bytes of image data, the header needs {needed})" if actual < needed else None
    if encoding in ("gzip", "gz"):
        return _gzip_short(target, needed, offset)
    return None


def _geometry_problem(info: ImageInformation) -> str | None:
    spacing = np.asarray(info.GetSpacing(), dtype=np.float64)
    if not _positive_finite(spacing):
        return f"voxel size {spacing.tolist()} is not positive and finite"
    origin = np.asarray(info.GetOrigin(), dtype=np.float64)
    if not np.isfinite(origin).all():
        return f"origin {origin.tolist()} is not finite"
    dims = info.GetDimension()
    direction = np.asarray(info.GetDirection(), dtype=np.float64).reshape(dims, dims)
    if not np.isfinite(direction).all():
        return "the direction matrix holds NaN or Inf"
    if not np.allclose(direction.T @ direction, np.eye(dims), atol=_ORTHONORMAL_ATOL):
        return f"the direction matrix {direction.round(4).tolist()} is not orthonormal (sheared or scaled axes)"
    return None


def read_image_information(path: str | os.PathLike) -> ImageInformation:
    """Read the header of ``path`` and run every check of this module on it; no voxels are read.

    Returns the ``sitk.ImageFileReader`` with the information loaded (``GetSize()``, ``GetSpacing()``...), for a
    NIfTI-2 file a :class:`NiftiHeaderInformation` with the same methods.
    Raises ``ValueError("<path>: <problem>")``. A file that passed is not checked again while its size and
    modification time stay the same (inference checks an input, then its reader opens it).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not an image file (DICOM series folders are read as series)")
    stat = path.stat()
    return _checked_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _checked_file(resolved: str, size: int, mtime_ns: int) -> ImageInformation:
    """The checks of :func:`read_image_information`, cached by file identity (a failure is never cached)."""
    path = Path(resolved)
    name = path.name.lower()
    try:
        if is_metaimage(name):
            problem = _metaimage_problem(path)
        elif is_nrrd(name):
            problem = _nrrd_problem(path)
        elif is_nifti(name):
            problem = nifti_size_problem(path)
        else:
            problem = None
    except OSError as e:
        problem = f"cannot read the header ({e.strerror or type(e).__name__})"
    if problem:
        raise ValueError(f"{path}: {problem}")
    if is_nifti2(path):  # SimpleITK cannot read NIfTI-2; nibabel can (and read the header above)
        info = NiftiHeaderInformation(path)
        problem = _geometry_problem(info)
        if problem:
            raise ValueError(f"{path}: {problem}")
        return info
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable image ({first_line(e)})") from None
    problem = _geometry_problem(reader)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return reader


# ---------------------------------------------------------------------------------------------------------------------
# DICOM series


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder: its SeriesInstanceUID and its slice files, in GDCM's (position) order."""

    folder: Path
    uid: str
    files: tuple[str, ...]


def _read_slice(path: str) -> tuple[str | None, float | None]:
    """One read of a slice's header: ``(problem, position along the slice normal in mm)``. The problem says when the
    header is unreadable or the pixel data incomplete (uncompressed syntaxes); the position is ``None`` when the
    header lacks the geometry."""
    import pydicom
    from pydicom.dataelem import RawDataElement

    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a damaged file
        return f"unreadable DICOM slice ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", None
    if "PixelData" not in ds:
        return "DICOM slice without pixel data", None
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        try:
            needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) \
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8
            # the element as read, its value deferred: the declared length and where the value starts, as far as the
            # file holds it (pydicom 3's DataElement has no length; an undefined length is an encapsulated syntax)
            element = ds.get_item("PixelData", keep_deferred=True)
            if isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH:
                have = min(element.length, os.path.getsize(path) - element.value_tell)
            else:
                have = needed
        except (AttributeError, KeyError, TypeError, ValueError):
            have = needed = 0
        if have < needed:
            return f"DICOM slice with truncated pixel data ({have} of {needed} bytes)", None
    try:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    except AttributeError:
        return None, None
    return None, float(position @ np.cross(orientation[:3], orientation[3:]))


def _spacing_problem(files: Sequence[str], positions: Sequence[float | None], tolerance: float) -> str | None:
    if any(p is None for p in positions) or len(positions) < 3:
        return None
    values = np.asarray(positions, dtype=np.float64)
    order = np.argsort(values)
    gaps = np.diff(values[order])
    step = float(np.median(gaps))
    if step <= 1e-6:
        duplicated = [Path(files[order[i]]).name for i in np.flatnonzero(gaps <= 1e-6)[:3]]
        return f"slices at the same position ({', '.join(duplicated)}): two acquisitions in one series?"
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * step)
    if bad.size:
        i = int(bad[0])
        a, b = Path(files[order[i]]).name, Path(files[order[i + 1]]).name
        return (f"uneven slice spacing: a gap of {gaps[i]:.3f} mm between {a} and {b} where the other slices are "
                f"{step:.3f} mm apart ({bad.size} such gap(s); a missing or extra slice?)")
    if (gaps <= 1e-6).any():
        return "slices at the same position: two acquisitions in one series?"
    return None


def dicom_series(folder: str | os.PathLike, series_uid: str = "", *,
                 spacing_tolerance: float = SLICE_SPACING_TOLERANCE) -> list[DicomSeries]:
    """The checked series of a DICOM folder (see :func:`_dicom_series`); a folder that passed is not read again while
    its entries keep their names, sizes and modification times."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a DICOM series folder")
    state = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    return list(_checked_series(str(folder), series_uid, spacing_tolerance, state))


@functools.lru_cache(maxsize=64)
def _checked_series(folder: str, series_uid: str, spacing_tolerance: float, state: tuple) -> tuple[DicomSeries, ...]:
    return tuple(_dicom_series(Path(folder), series_uid, spacing_tolerance))


def _dicom_series(folder: Path, series_uid: str, spacing_tolerance: float) -> list[DicomSeries]:
    """The checked series of a DICOM folder: all of them, or the one ``series_uid`` names.

    Raises ``ValueError("<folder>: ...")`` when the folder holds no series, when ``series_uid`` is not among them,
    when a DICOM file of the folder belongs to no series or is unreadable (GDCM would drop it silently), when a slice's
    pixel data is short, or when a series' slice positions are not evenly spaced (within ``spacing_tolerance`` of
    the median gap).
    """
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise ValueError(f"{folder}: no DICOM series found in this folder")
    if series_uid and series_uid not in uids:
        raise ValueError(f"{folder}: DICOM series {series_uid!r} not found; the folder holds {uids}")
    all_series = [DicomSeries(folder, uid, tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))
                  for uid in uids]
    in_series = {str(Path(f).resolve()) for s in all_series for f in s.files}
    strays = sorted(p for p in folder.iterdir()
                    if p.is_file() and str(p.resolve()) not in in_series and is_dicom_file(p))
    if strays:
        raise ValueError(f"{strays[0]}: {_read_slice(str(strays[0]))[0] or 'DICOM file in no readable series'}; "
                         f"the series of {folder.name} would be read without it")
    chosen = [s for s in all_series if not series_uid or s.uid == series_uid]
    for series in chosen:
        positions = []
        for name in series.files:
            problem, position = _read_slice(name)
            if problem:
                raise ValueError(f"{name}: {problem}")
            positions.append(position)
        problem = _spacing_problem(series.files, positions, spacing_tolerance)
        if problem:
            raise ValueError(f"{folder}: series {series.uid}: {problem}")
    return chosen


# ---------------------------------------------------------------------------------------------------------------------
# output folders


def ensure_writable(*folders: str | os.PathLike, what: str = "training output") -> None:
    """Create each folder and write (then remove) a small file in it; ``ValueError`` naming the first that fails.

    Called at the start of training so that an unwritable ``bundle_root`` / ``ckpt_dir`` / ``log_dir`` /
    ``output_dir`` is reported before the first epoch, not when the first checkpoint is saved.
    """
    for folder in folders:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise ValueError(f"{path}: cannot write the {what} here ({reason}); choose a writable folder "
                             "(e.g. another --bundle_root or --output_dir)") from None
