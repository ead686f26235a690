"""FRCU-Net in the BraTS bundle's configuration against MONAI's SegResNet of the reference BraTS bundle, same run.

Both take the four MR modalities and give the three region channels (TC, WT, ET, sigmoid), as
``bundles/brats_mri_frcunet_segmentation`` and MONAI Model Zoo's ``brats_mri_segmentation`` do. The FRCU-Net row
uses the bundle's shipped network arguments (read from its ``train.json``); SegResNet uses the Model Zoo bundle's.

    python -m bench.frcunet_vs_segresnet            # batch 1 x 96^3 steps, 160x192x144 brain crop, 96^3 windows
    python -m bench.frcunet_vs_segresnet --quick    # batch 1 x 64^3 steps, 128x128x96 volume, 64^3 windows

Writes ``bench/results_frcunet.json`` and ``bench/results_frcunet.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import pairwise

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_frcunet_segmentation"


def _bundle_network() -> dict:
    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    kwargs = {k: v for k, v in config["network_def"].items() if k != "_target_"}
    for key, value in kwargs.items():  # "@features" -> the config's value
        if isinstance(value, str) and value.startswith("@"):
            kwargs[key] = config[value[1:]]
    return kwargs


NETWORKS = {
    "MONAI SegResNet": ("monai.networks.nets.SegResNet", {
        "spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 16,
        "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}),
    "FRCUNet (bundle)": ("networks.FRCUNet", _bundle_network()),
}
COMMON = {"in_channels": 4, "out_channels": 3, "multilabel": True, "batch": 1}
SETTINGS = {
    "full": {**COMMON, "train_patch": (96, 96, 96), "volume": (160, 192, 144), "roi": (96, 96, 96), "steps": 3},
    "quick": {**COMMON, "train_patch": (64, 64, 64), "volume": (128, 128, 96), "roi": (64, 64, 64), "steps": 2},
}
TITLE = "FRCU-Net vs MONAI SegResNet on BraTS inputs"


def main() -> None:
    pairwise.main(__doc__, NETWORKS, SETTINGS, "MONAI SegResNet", TITLE, "results_frcunet")


if __name__ == "__main__":
    main()
