"""DICOM slice checks of :mod:`pipelines.io.checks`: a slice's pixel data is as long as its header says, counted in
the bytes the file holds (hand-worked sizes: 32 x 32 int16 slices, 2048 bytes of pixel data each)."""

from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest

from pipelines.io.checks import dicom_series
from pipelines.synth.dicom import write_dicom_series


def _series(folder, slices: int = 8):
    volume = np.full((slices, 32, 32), -1000, dtype=np.int16)
    volume[:, 8:24, 8:24] = 40
    return write_dicom_series(folder, volume)


def test_an_intact_series_passes_the_pixel_data_check(tmp_path):
    paths = _series(tmp_path / "ok")
    (series,) = dicom_series(tmp_path / "ok")
    assert [str(p) for p in paths] == list(series.files)


def test_a_slice_cut_inside_its_pixel_data_names_the_bytes_the_file_holds(tmp_path):
    paths = _series(tmp_path / "cut")
    paths[3].write_bytes(paths[3].read_bytes()[:-300])  # the pixel data is the file's last element
    with pytest.raises(ValueError, match=rf"^{re.escape(str(paths[3]))}: DICOM slice with truncated pixel data "
                                         r"\(1748 of 2048 bytes\)"):
        dicom_series(tmp_path / "cut")


def test_pixel_data_shorter_than_rows_times_columns_is_refused_even_with_bytes_after_it(tmp_path):
    # 33 rows of 32 int16 need 2112 bytes; the element still declares 2048, and 256 bytes of trailing padding follow
    # it, so the file holds more than 2112 bytes after the pixel data's start: the declared length is what counts
    paths = _series(tmp_path / "rows")
    ds = pydicom.dcmread(paths[2])
    ds.Rows = 33
    ds.DataSetTrailingPadding = b"\0" * 256
    ds.save_as(paths[2])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(paths[2]))}: DICOM slice with truncated pixel data "
                                         r"\(2048 of 2112 bytes\)"):
        dicom_series(tmp_path / "rows")
