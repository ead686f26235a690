"""Each data set layout's checked training datalist as one config component (``pipelines.data.datalists.<layout>``).

Each training config's ``datalist`` is one call of a function below with named arguments (no Python in the config):
the layout module lists the cases without opening them (``validate=False``), then
:func:`pipelines.data.preflight.preflight_datalist` reads every header at once with the layout's expectations
(dimensions, channels, label values) and applies the bundle's ``preflight_policy``.

- :func:`luna16`: LUNA16 ``subset*/`` and ``annotations.csv`` (:mod:`.luna16`); 3D, one channel, image and mask on
  one grid;
- :func:`brats`: BraTS 2018-2021 and 2023 case folders (:mod:`.brats`); 3D, one channel per file, the convention's
  label values;
- :func:`isic_seg`: ISIC 2018 Task 1 images and masks (:mod:`.isic`); 2D, RGB image, grey 0/255 mask of its size;
- :func:`isic2018`: ISIC 2018 Task 3 images and ground-truth CSV (:mod:`.isic_cls`); 2D RGB, three splits;
- :func:`image_folder`: one folder per class (:mod:`.image_folder`); 2D, three splits;
- :func:`image_folder_sr` (any images) and :func:`ct_sr` (LUNA16 scans) for super-resolution (:mod:`.sr`); 2D / 3D.

Also here, for the configs that derive something from a datalist: :func:`evaluation_items` (the cases
``evaluate.json`` scores, ``eval_all`` or the validation split) and :func:`class_weight_tensor` (HEMF's
cross-entropy weights from the training split's class frequencies).

MONAI's ``ConfigComponent`` passes named arguments only and has no "call this, then that" form, so each pairing of a
layout with its checks is a small function here rather than an expression in the config. The switches
(``check_labels``, ``check_images``, ``check_finite``) also take the strings a command line gives (``false``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipelines.bundle import config_bool
from pipelines.data.preflight import preflight_datalist

__all__ = ["luna16", "brats", "isic_seg", "isic2018", "image_folder", "image_folder_sr", "ct_sr", "evaluation_items",
           "class_weight_tensor"]

PathLike = str | os.PathLike


def _checked(datalist: Mapping[str, Any], *, check_finite: bool | str = True, **kwargs: Any) -> dict:
    """:func:`preflight_datalist` with ``check_finite`` read as a config switch."""
    return preflight_datalist(datalist, check_finite=config_bool(check_finite, "preflight_check_finite"), **kwargs)


def luna16(dataset_dir: PathLike, cache_dir: PathLike, *, val_fraction: float = 0.2, seed: int = 0,
           policy: str = "fail", output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """LUNA16 (:func:`pipelines.data.luna16.luna16_datalist`, nodule masks written under ``cache_dir``), every scan
    and mask checked as a 3D single-channel image on one grid."""
    from pipelines.data.luna16 import luna16_datalist

    datalist = luna16_datalist(dataset_dir, cache_dir, val_fraction=val_fraction, seed=seed, validate=False)
    return _checked(datalist, policy=policy, output_dir=output_dir, expect_dims=3, expect_channels=1,
                    check_finite=check_finite)


def brats(dataset_dir: PathLike, *, val_fraction: float = 0.2, seed: int = 0, check_labels: bool = True,
          policy: str = "fail", output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """BraTS (:func:`pipelines.data.brats.brats_datalist`): every modality and label 3D, one channel, one grid;
    with ``check_labels`` each label map holds only its convention's values (2021: 0, 1, 2, 4; 2023: 0-3)."""
    from pipelines.data.brats import brats_datalist, label_values

    datalist = brats_datalist(dataset_dir, val_fraction=val_fraction, seed=seed, validate=False)
    return _checked(datalist, policy=policy, output_dir=output_dir, expect_dims=3, expect_channels=1,
                    label_values=label_values if config_bool(check_labels, "check_labels") else None,
                    check_finite=check_finite)


def isic_seg(dataset_dir: PathLike, *, val_fraction: float = 0.2, seed: int = 0, check_images: bool = True,
             policy: str = "fail", output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """ISIC 2018 Task 1 (:func:`pipelines.data.isic.isic_seg_datalist`): RGB photographs with grey masks of the
    same size (their spacing is dpi metadata, not compared); with ``check_images`` every mask holds only 0 and 255."""
    from pipelines.data.isic import isic_seg_datalist

    datalist = isic_seg_datalist(dataset_dir, val_fraction=val_fraction, seed=seed, validate=False)
    return _checked(datalist, policy=policy, output_dir=output_dir, expect_dims=2,
                    expect_channels={"image": 3, "label": 1}, check_grids="size",
                    label_values=[0, 255] if config_bool(check_images, "check_images") else None,
                    check_finite=check_finite)


_CLASSIFICATION_SPLITS = ("training", "validation", "test")


def isic2018(dataset_dir: PathLike, *, fractions: Sequence[float] = (0.6, 0.1, 0.3), seed: int = 123,
             policy: str = "fail", output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """ISIC 2018 Task 3 (:func:`pipelines.data.isic_cls.isic2018_datalist`): training, validation and test splits,
    every image 2D RGB."""
    from pipelines.data.isic_cls import isic2018_datalist

    datalist = isic2018_datalist(dataset_dir, fractions=tuple(fractions), seed=seed, validate=False)
    return _checked(datalist, splits=_CLASSIFICATION_SPLITS, policy=policy, output_dir=output_dir,
                    keys=("image",), expect_dims=2, expect_channels=3, check_finite=check_finite)


def image_folder(dataset_dir: PathLike, *, fractions: Sequence[float] = (0.6, 0.15, 0.25), seed: int = 123,
                 classes: Sequence[str] | None = None, policy: str = "fail", output_dir: PathLike | None = None,
                 check_finite: bool = True) -> dict:
    """A class-per-folder data set (:func:`pipelines.data.image_folder.image_folder_datalist`: Kvasir, COVID19-CT):
    training, validation and test splits, every image 2D (grey or colour)."""
    from pipelines.data.image_folder import image_folder_datalist

    datalist = image_folder_datalist(dataset_dir, classes=classes, fractions=tuple(fractions), seed=seed)
    return _checked(datalist, splits=_CLASSIFICATION_SPLITS, policy=policy, output_dir=output_dir,
                    keys=("image",), expect_dims=2, check_finite=check_finite)


def image_folder_sr(dataset_dir: PathLike, *, val_fraction: float = 0.2, seed: int = 0, policy: str = "fail",
                    output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """Every image under ``dataset_dir`` as a super-resolution target (:func:`pipelines.data.sr.
    image_folder_sr_datalist`, masks left out), each 2D."""
    from pipelines.data.sr import image_folder_sr_datalist

    datalist = image_folder_sr_datalist(dataset_dir, val_fraction=val_fraction, seed=seed)
    return _checked(datalist, keys=("hr",), policy=policy, output_dir=output_dir, expect_dims=2,
                    check_finite=check_finite)


def ct_sr(dataset_dir: PathLike, *, val_fraction: float = 0.2, seed: int = 0, policy: str = "fail",
          output_dir: PathLike | None = None, check_finite: bool = True) -> dict:
    """The scans of a LUNA16 folder as super-resolution targets (:func:`pipelines.data.sr.ct_sr_datalist`), each
    3D."""
    from pipelines.data.sr import ct_sr_datalist

    datalist = ct_sr_datalist(dataset_dir, val_fraction=val_fraction, seed=seed)
    return _checked(datalist, keys=("hr",), policy=policy, output_dir=output_dir, expect_dims=3,
                    check_finite=check_finite)


def evaluation_items(datalist: Mapping[str, Any], eval_all: bool | str = False) -> list:
    """The cases ``evaluate.json`` scores: the validation split, or with ``eval_all`` (``true`` on a command line)
    the training and validation splits together (every case of ``dataset_dir``)."""
    items = list(datalist.get("validation") or [])
    if config_bool(eval_all, "eval_all"):
        items = list(datalist.get("training") or []) + items
    return items


def class_weight_tensor(items: Sequence[Mapping], num_classes: int, *, power: float = 1.0,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`pipelines.data.classification.class_weights` of ``items`` (the training split) as the float32 tensor
    ``torch.nn.CrossEntropyLoss(weight=...)`` takes, on ``device``."""
    from pipelines.data.classification import class_weights

    weights = class_weights(items, int(num_classes), power=float(power))
    return torch.tensor(weights, dtype=torch.float32, device=device)
