"""Reading and writing images: header checks for every entry point, a SimpleITK reader for MONAI, and writers that
never leave half-written files."""

from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .checks import DicomSeries, dicom_series, ensure_writable, nifti_size_problem, read_image_information
from .readers import SELECTED_SERIES, SimpleITKReader
from .writers import AtomicNibabelWriter

__all__ = [
    "AtomicNibabelWriter",
    "DicomSeries",
    "SELECTED_SERIES",
    "dicom_series",
    "ensure_writable",
    "nifti_size_problem",
    "SimpleITKReader",
    "atomic_path",
    "read_image_information",
    "write_json_atomic",
    "write_text_atomic",
]
