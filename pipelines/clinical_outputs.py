"""What ``pipelines infer --format/--statistics/--preview`` writes beside (or instead of) a bundle's prediction file.

:class:`ClinicalOutputs` takes the prediction a bundle's saver wrote (a file in its input's geometry) and its input,
and writes, next to it and under the same stem:

    <stem>_seg.dcm | .nii.gz | .nrrd | .mha    ``--format``: the prediction as a DICOM Segmentation that references
                                               the input series (:mod:`pipelines.io.dicom_seg`), or converted to
                                               that image format (SimpleITK); without it, the saver's file as it is
    <stem>_statistics.json                     ``--statistics``: per label voxel count, volume in ml, mean input
                                               intensity (:mod:`pipelines.reports.case_statistics`)
    <stem>_preview.png                         ``--preview``: axial, coronal and sagittal planes through the largest
                                               finding, outlined (:mod:`pipelines.reports.preview`)

Label names come from the bundle: an inference config key ``label_names`` (``{"1": "nodule"}``, also
``--set label_names=...``) when it has one, else ``configs/metadata.json``
``network_data_format.outputs.pred.channel_def``: with channel 0 ``background`` (an argmax output) label ``k`` is
channel ``k``'s name; with one channel (a thresholded sigmoid) every foreground value is that channel's label. Label
values no name covers are called ``label <value>``. The algorithm identification of a DICOM SEG is the metadata's
``name`` and ``version``.

``--format dicom-seg`` needs a DICOM series folder as the input: any other input fails with one line
(:meth:`ClinicalOutputs.check_input`, before the network runs), and the other inputs still run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.io.atomic import atomic_path
from pipelines.io.checks import dicom_series
from pipelines.io.dicom_seg import Algorithm, write_dicom_seg
from pipelines.io.formats import IMAGE_SUFFIXES, OUTPUT_FORMATS, suffix_of

__all__ = ["ClinicalOutputs", "bundle_labels", "read_input_images"]


def bundle_labels(metadata: Mapping[str, Any], label_names: Mapping | None = None) -> tuple[dict[int, str], str | None]:
    """``(label value -> name, single)`` of a bundle's prediction; ``single`` is the name of every foreground value
    of a one-channel output (then the mapping is empty). See the module docstring for the rules."""
    if label_names:
        try:
            return {int(k): str(v) for k, v in dict(label_names).items() if int(k) != 0}, None
        except (TypeError, ValueError):
            raise ValueError(f"label_names must map label values to names, e.g. {{\"1\": \"nodule\"}}, "
                             f"got {label_names!r}") from None
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    try:
        channels = {int(k): str(v) for k, v in pred.get("channel_def", {}).items()}
    except (TypeError, ValueError, AttributeError):
        return {}, None
    if pred.get("format") != "segmentation" or not channels:
        return {}, None
    if len(channels) == 1:
        return {}, next(iter(channels.values()))
    if channels.get(0, "").strip().lower() == "background":
        return {k: v for k, v in sorted(channels.items()) if k != 0}, None
    return {}, None


def _files(item: Mapping) -> list[str]:
    images = item["image"]
    return [str(p) for p in images] if isinstance(images, (list, tuple)) else [str(images)]


def read_input_images(item: Mapping) -> list[sitk.Image]:
    """The input images of a data item as stored (intensities as in the file: DICOM rescaled to HU), one per file;
    a folder is the DICOM series ``item["series_uid"]`` (or its only one)."""
    images = []
    for name in _files(item):
        path = Path(name)
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(dicom_series(path, str(item.get("series_uid", "")))[0].files))
            images.append(reader.Execute())
        else:
            images.append(sitk.ReadImage(str(path)))
    return images


def _channels(image: sitk.Image) -> list[np.ndarray]:
    """The channels of ``image`` as arrays in (x, y[, z]) index order (NIfTI's, nibabel's)."""
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        return [array.T]
    return [array[..., c].T for c in range(array.shape[-1])]


def _base(name: str) -> str:
    """``name`` without its image suffix (any other suffix: the last one)."""
    suffix = suffix_of(name, IMAGE_SUFFIXES)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


@dataclass
class ClinicalOutputs:
    """The ``--format``, ``--statistics`` and ``--preview`` choices of a run and the bundle's labels."""

    output_format: str | None = None
    statistics: bool = False
    preview: bool = False
    labels: dict[int, str] = field(default_factory=dict)
    single_label: str | None = None
    algorithm: Algorithm = Algorithm("bundle", "unknown")

    def __post_init__(self) -> None:
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, *, label_names: Mapping | None = None,
                    **options: Any) -> ClinicalOutputs:
        """The outputs of ``bundle_dir``'s predictions (labels and algorithm from its ``configs/metadata.json``)."""
        bundle_dir = Path(bundle_dir)
        meta_file = bundle_dir / "configs" / "metadata.json"
        metadata: dict = {}
        if meta_file.is_file():
            try:
                metadata = json.loads(meta_file.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{meta_file}: cannot read the bundle's metadata ({e})") from None
        labels, single = bundle_labels(metadata, label_names)
        algorithm = Algorithm(str(metadata.get("name") or bundle_dir.name), str(metadata.get("version") or "unknown"))
        return cls(labels=labels, single_label=single, algorithm=algorithm, **options)

    @property
    def active(self) -> bool:
        return bool(self.output_format or self.statistics or self.preview)

    def case_labels(self, values: np.ndarray) -> dict[int, str]:
        """Label value -> name for a prediction holding ``values`` (every value but 0 gets one)."""
        present = sorted(int(v) for v in np.unique(values) if v != 0)
        if self.single_label is not None:
            if not present:
                return {1: self.single_label}
            return {v: self.single_label if len(present) == 1 else f"{self.single_label} {v}" for v in present}
        labels = dict(self.labels)
        for v in present:
            labels.setdefault(v, f"label {v}")
        return dict(sorted(labels.items()))

    def check_input(self, item: Mapping, source: str) -> None:
        """``ValueError`` naming ``source`` when ``--format dicom-seg`` is asked of an input that is not one DICOM
        series folder (nothing has run yet)."""
        if self.output_format != "dicom-seg":
            return
        files = _files(item)
        if len(files) != 1 or not Path(files[0]).is_dir():
            what = "several images" if len(files) != 1 else f"a {''.join(Path(files[0]).suffixes) or 'file'} file"
            raise ValueError(f"{source}: --format dicom-seg needs a DICOM series folder as input, this is {what} "
                             "(use --format nifti, nrrd or mha for it)")

    def write(self, prediction: str | os.PathLike, item: Mapping, stem: str, source: str) -> Path:
        """Write the clinical outputs of one case beside ``prediction`` (the saver's file), named ``<stem>_...``;
        returns the prediction's path afterwards (a converted one replaces the saver's file)."""
        prediction = Path(prediction)
        labels_image = sitk.ReadImage(str(prediction))
        values = sitk.GetArrayViewFromImage(labels_image)
        labels = self.case_labels(values)
        folder = prediction.parent
        if self.statistics or self.preview:
            inputs = read_input_images(item)
            if inputs[0].GetSize() != labels_image.GetSize():
                raise ValueError(f"{source}: the prediction {prediction.name} has "
                                 f"{'x'.join(map(str, labels_image.GetSize()))} voxels, the input "
                                 f"{'x'.join(map(str, inputs[0].GetSize()))}: it does not overlay its input")
            if self.statistics:
                self._write_statistics(folder / f"{stem}_statistics.json", labels_image, inputs, labels, source)
            if self.preview:
                from pipelines.reports.preview import write_preview

                write_preview(folder / f"{stem}_preview.png", inputs[0], labels_image, labels)
        if self.output_format is None:
            return prediction
        target = folder / f"{_base(prediction.name)}{OUTPUT_FORMATS[self.output_format]}"
        if self.output_format == "dicom-seg":
            files = dicom_series(Path(_files(item)[0]), str(item.get("series_uid", "")))[0].files
            write_dicom_seg(target, labels_image, files, {k: v for k, v in labels.items() if k != 0},
                            self.algorithm, name=f"{source}: prediction")
        elif target.name != prediction.name:
            with atomic_path(target) as tmp:
                sitk.WriteImage(labels_image, str(tmp), useCompression=True)
        else:
            return prediction
        prediction.unlink()
        return target

    def _write_statistics(self, path: Path, labels_image: sitk.Image, inputs: list[sitk.Image],
                          labels: dict[int, str], source: str) -> None:
        from pipelines.reports.case_statistics import case_statistics, write_case_statistics

        channels = [c for image in inputs for c in _channels(image)]
        stats = case_statistics(_channels(labels_image)[0], channels, inputs[0].GetSpacing(), labels)
        write_case_statistics(path, {"input": source, "bundle": self.algorithm.name,
                                     "bundle_version": self.algorithm.version, **stats})
