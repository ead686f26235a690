"""Synthetic class-per-folder data sets in the layouts of Kvasir v1 and COVID19-CT.

Writes ``out/<class>/<n>.jpg`` (Kvasir: 8 balanced classes of endoscopy-like RGB JPEGs) or ``out/<class>/<n>.png``
(COVID19-CT: ``CT_COVID`` and ``CT_NonCOVID`` grayscale PNGs in the real 349 : 397 ratio). Each class has its own
colour, shape and texture (see :func:`pipelines.synth.isic_cls.paint_lesion`), jittered so the classes overlap a
little. The class imbalance of the real set is kept: Kvasir is balanced, COVID19-CT nearly so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.io import atomic_path
from pipelines.synth.isic_cls import LesionStyle, class_sizes, paint_lesion

__all__ = ["PRESETS", "write_image_folder"]

_MUCOSA = (200, 110, 95)
PRESETS: dict[str, dict] = {
    "kvasir": {
        "ext": ".jpg",
        "grayscale": False,
        "classes": {
            "dyed-lifted-polyps": (0.125, LesionStyle((60, 90, 190), 0.32, 0.10, "none", _MUCOSA)),
            "dyed-resection-margins": (0.125, LesionStyle((70, 110, 200), 0.36, 0.25, "ring", _MUCOSA)),
            "esophagitis": (0.125, LesionStyle((190, 40, 40), 0.30, 0.30, "vessels", (215, 170, 160))),
            "normal-cecum": (0.125, LesionStyle((230, 170, 150), 0.30, 0.05, "lobules", _MUCOSA)),
            "normal-pylorus": (0.125, LesionStyle((60, 30, 30), 0.18, 0.05, "none", _MUCOSA)),
            "normal-z-line": (0.125, LesionStyle((235, 215, 200), 0.40, 0.15, "none", (170, 60, 60))),
            "polyps": (0.125, LesionStyle((215, 120, 110), 0.24, 0.08, "dots", _MUCOSA)),
            "ulcerative-colitis": (0.125, LesionStyle((230, 230, 210), 0.34, 0.30, "scale", _MUCOSA)),
        },
    },
    "covid-ct": {
        "ext": ".png",
        "grayscale": True,
        "classes": {
            "CT_COVID": (349 / 746, LesionStyle((70, 70, 70), 0.38, 0.15, "scale", (150, 150, 150))),
            "CT_NonCOVID": (397 / 746, LesionStyle((25, 25, 25), 0.38, 0.10, "none", (150, 150, 150))),
        },
    },
}


def write_image_folder(
    out: str | os.PathLike,
    *,
    preset: str = "kvasir",
    images: int = 160,
    seed: int = 0,
    size: tuple[int, int] = (48, 48),
    min_per_class: int = 6,
) -> list[dict]:
    """Write a synthetic class-per-folder data set; return ``[{"id", "label", "class", "path"}]``.

    Args:
        out: the data set root (created); one sub-folder per class.
        preset: ``"kvasir"`` (8 balanced RGB classes, JPEG) or ``"covid-ct"`` (2 grayscale classes, PNG).
        images: total number of images.
        seed: random seed: the same seed writes the same data.
        size: image ``(width, height)``.
        min_per_class: floor on the images of each class.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = sorted(spec["classes"])
    sizes = class_sizes(images, {n: spec["classes"][n][0] for n in names}, min_per_class)
    written = []
    for label, name in enumerate(names):
        style = spec["classes"][name][1]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(sizes[name]):
            pixels = paint_lesion(rng, size, style, grayscale=spec["grayscale"])
            path = folder / f"{n:04d}{spec['ext']}"
            with atomic_path(path) as tmp:
                if spec["grayscale"]:
                    Image.fromarray(pixels[..., 0], "L").save(tmp, format="PNG")
                else:
                    Image.fromarray(pixels, "RGB").save(tmp, format="JPEG", quality=92)
            written.append({"id": f"{name}/{path.name}", "label": label, "class": name, "path": path})
    return written
