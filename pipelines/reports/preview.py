"""A PNG preview of one case: the input with the prediction's outline, in three planes through the finding.

``write_preview(path, image, prediction, labels)`` draws a montage of ``3 * tile`` x ``tile`` pixels (default
768 x 256): axial, coronal and sagittal planes through the centroid of the prediction's largest connected component
(26-connected, any foreground label), or through the volume's centre when the prediction is empty. A 2D case gives
one ``tile`` x ``tile`` panel. Each panel shows the image in grey (0.5-99.5 percentile window), the labels as a
translucent fill with a solid outline, one colour per label, in millimetres (the voxel spacing sets the aspect), in
the radiological convention: both image and prediction are first oriented to LPS (``SimpleITK.DICOMOrient``), so
the patient's right is on the left of the axial and coronal planes, anterior is up in the axial plane and on the left
in the sagittal one, and the head is up in both. Plane names, slice indices and the label names are written in it.

Drawn with matplotlib's object API (no pyplot state, safe in a thread). MONAI's ``matshow3d`` and
``plot_2d_or_3d_image`` show slices along one axis of the array without outlines or physical aspect, and its
``get_largest_connected_component_mask`` needs scikit-image, which is not a dependency here (``scipy.ndimage.label``
is used instead).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.io.atomic import atomic_path

__all__ = ["COLOURS", "focus_index", "preview_planes", "write_preview"]

#: label colours, cycled in ascending label value
COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#ff2dff", "#00e5ff")


def focus_index(mask: np.ndarray) -> tuple[int, ...]:
    """The voxel index (rounded centroid) of the largest 26-connected (8 in 2D) component of ``mask > 0``; the
    array's centre when it is empty."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    centre = np.argwhere(largest).mean(axis=0)
    return tuple(int(min(max(round(c), 0), s - 1)) for c, s in zip(centre, mask.shape))


def _grey(image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:  # RGB: the mean of the channels
        channels = [sitk.VectorIndexSelectionCast(image, i, sitk.sitkFloat32)
                    for i in range(image.GetNumberOfComponentsPerPixel())]
        grey = channels[0]
        for c in channels[1:]:
            grey = grey + c
        return grey / float(len(channels))
    return sitk.Cast(image, sitk.sitkFloat32)


def preview_planes(image: sitk.Image, prediction: sitk.Image) -> list[dict]:
    """The planes of the preview: ``{"name", "index", "image", "labels", "pixel_mm": (rows, columns)}``, each array
    ``(rows, columns)`` with row 0 at the top of the picture."""
    if image.GetSize() != prediction.GetSize():
        raise ValueError(f"the prediction's size {prediction.GetSize()} differs from the image's {image.GetSize()}")
    image = _grey(image)
    prediction = sitk.Cast(prediction, sitk.sitkInt32)
    if image.GetDimension() == 2:
        sx, sy = image.GetSpacing()
        return [{"name": "image", "index": None, "image": sitk.GetArrayFromImage(image),
                 "labels": sitk.GetArrayFromImage(prediction), "pixel_mm": (sy, sx)}]
    if image.GetDimension() != 3:
        raise ValueError(f"a preview needs a 2D or 3D image, not {image.GetDimension()}D")
    # prediction's geometry is the image's (it overlays it); copying it avoids float32 rounding of a NIfTI affine
    prediction.CopyInformation(image)
    image, prediction = sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(prediction, "LPS")
    grey, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(prediction)  # (S, P, L) index order
    sx, sy, sz = image.GetSpacing()  # towards the patient's left, posterior, head
    z, y, x = focus_index(labels)
    return [
        {"name": "axial", "index": z, "image": grey[z], "labels": labels[z], "pixel_mm": (sy, sx)},
        {"name": "coronal", "index": y, "image": grey[::-1, y, :], "labels": labels[::-1, y, :], "pixel_mm": (sz, sx)},
        {"name": "sagittal", "index": x, "image": grey[::-1, :, x], "labels": labels[::-1, :, x],
         "pixel_mm": (sz, sy)},
    ]


def write_preview(path: str | os.PathLike, image: sitk.Image, prediction: sitk.Image,
                  labels: Mapping[int, str] | None = None, *, tile: int = 256) -> Path:
    """Write the preview of ``prediction`` over ``image`` (same grid) to ``path`` (PNG, atomically); ``labels``
    names the label values in the legend (others as ``label <value>``). Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    planes = preview_planes(image, prediction)
    names = {int(k): str(v) for k, v in (labels or {}).items()}
    volume = np.concatenate([p["image"].ravel() for p in planes])
    low, high = np.percentile(volume, [0.5, 99.5]) if volume.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    present = sorted({int(v) for p in planes for v in np.unique(p["labels"]) if v != 0})
    colour = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(sorted(set(names) | set(present)))}
    dpi = 100
    figure = Figure(figsize=(tile * len(planes) / dpi, tile / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(figure)
    for i, plane in enumerate(planes):
        ax = figure.add_axes((i / len(planes), 0.0, 1.0 / len(planes), 1.0))
        ax.set_facecolor("black")
        ax.set_axis_off()
        rows, cols = plane["image"].shape
        dr, dc = plane["pixel_mm"]
        extent = (0.0, cols * dc, rows * dr, 0.0)  # millimetres, row 0 at the top
        ax.imshow(plane["image"], cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="bilinear")
        centres_c, centres_r = (np.arange(cols) + 0.5) * dc, (np.arange(rows) + 0.5) * dr
        for value in sorted(v for v in np.unique(plane["labels"]).tolist() if v != 0):
            mask = plane["labels"] == value
            fill = np.zeros((rows, cols, 4))
            fill[mask] = to_rgba(colour[value], 0.3)
            ax.imshow(fill, extent=extent, interpolation="nearest")
            if rows > 1 and cols > 1:
                ax.contour(centres_c, centres_r, mask.astype(float), levels=[0.5], colors=[colour[value]],
                           linewidths=1.2)
        ax.set_xlim(0.0, cols * dc)
        ax.set_ylim(rows * dr, 0.0)
        ax.set_aspect("equal")
        title = plane["name"] if plane["index"] is None else f"{plane['name']} {plane['index']}"
        ax.text(0.02, 0.98, title, transform=ax.transAxes, color="white", fontsize=8, va="top", ha="left")
        if i == 0:
            for j, value in enumerate(present or sorted(names)):
                text = names.get(value, f"label {value}") + ("" if value in present else " (none)")
                ax.text(0.02, 0.02 + 0.06 * j, text, transform=ax.transAxes, color=colour[value], fontsize=8,
                        va="bottom", ha="left")
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=dpi, facecolor="black")
    return Path(path)
