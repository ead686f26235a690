"""Reading and writing images: a SimpleITK reader for MONAI and writers that never leave half-written files."""

from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .readers import SimpleITKReader, read_image_information
from .writers import AtomicNibabelWriter

__all__ = [
    "AtomicNibabelWriter",
    "SimpleITKReader",
    "atomic_path",
    "read_image_information",
    "write_json_atomic",
    "write_text_atomic",
]
