"""E-DU against MONAI's UNet of a similar parameter count: training step and sliding-window inference, same run.

Each network is measured in its own fresh process (so that peak resident memory is its own), one after the other,
on the same machine and the same inputs. Reported as absolute figures and as ratios to MONAI ``UNet``.

    python -m bench.edu_vs_unet            # full: batch 2 x 96^3 steps, 192x192x160 volume, 96^3 windows
    python -m bench.edu_vs_unet --quick    # batch 2 x 64^3 steps, 128x128x96 volume, 64^3 windows

Writes ``bench/results_edu.json`` and ``bench/results_edu.md``.
"""

from __future__ import annotations

from bench import pairwise

NETWORKS = {
    "EDU": ("networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}),
    "EDU (mde=False)": ("networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "mde": False}),
    "MONAI UNet": ("monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                "channels": (32, 64, 128, 256, 512), "strides": (2, 2, 2, 2),
                                                "num_res_units": 2}),
}
SETTINGS = {
    "full": {"train_patch": (96, 96, 96), "batch": 2, "volume": (192, 192, 160), "roi": (96, 96, 96), "steps": 3},
    "quick": {"train_patch": (64, 64, 64), "batch": 2, "volume": (128, 128, 96), "roi": (64, 64, 64), "steps": 2},
}


TITLE = "E-DU vs MONAI UNet"


def main() -> None:
    pairwise.main(__doc__, NETWORKS, SETTINGS, "MONAI UNet", TITLE, "results_edu")


if __name__ == "__main__":
    main()
