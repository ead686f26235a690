"""``python -m pipelines preprocess BUNDLE --dataset_dir D``: fill a bundle's disk cache before training.

Training fills the cache itself on its first run (:class:`pipelines.data.disk_cache.DiskCacheDataset`); running
this first, with several processes, takes that time out of the training job (on LUNA16 it is the better part of
an hour on one core) and can run where the GPU is not needed. The cases and settings are the bundle's own: its
``train.json`` (with the same overrides training will get) gives the data list, ``cache_dir`` and the
``train#preprocessing`` / ``validate#preprocessing`` chains, so training finds every entry and writes none.
A killed run resumes without redoing finished cases.
"""

from __future__ import annotations

from pipelines.bundle import parse_override

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["preprocess_bundle", "add_arguments", "run_from_args"]

SPLITS = (("train", "training"), ("validate", "validation"))


def preprocess_bundle(
    bundle: str | Path,
    dataset_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    num_workers: int = 0,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
) -> dict[str, int]:
    """Write the missing disk-cache entries of ``bundle``'s training and validation cases; returns the number of
    cases of each split. ``progress``: a bar over the cases with an ETA instead of one line per case (``None``: when
    stderr is a terminal, :func:`pipelines.engines.progress.show_progress`)."""
    from monai.bundle import ConfigParser

    from pipelines.data.disk_cache import preprocess_cases

    bundle = Path(bundle)
    config = bundle / "configs" / "train.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such file (is {bundle} a bundle folder?)")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(dataset_dir), **(overrides or {})})
    datalist = parser.get_parsed_content("datalist")
    cache_dir = parser.get_parsed_content("cache_dir")
    counts = {}
    for section, split in SPLITS:
        cases = datalist.get(split) or []
        counts[split] = len(cases)
        if not cases:
            continue
        start = time.perf_counter()
        preprocess_cases(cases, parser.get_parsed_content(f"{section}#preprocessing"), cache_dir,
                         num_workers=num_workers, progress=echo, bar=progress)
        echo(f"preprocess: {split}: {len(cases)} cases ready in {cache_dir} ({time.perf_counter() - start:.0f} s)")
    return counts



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder (configs/train.json)")
    parser.add_argument("--dataset_dir", "--dataset-dir", dest="dataset_dir", required=True,
                        help="the data set, as training's --dataset_dir")
    parser.add_argument("--workers", type=int, default=0, help="cases preprocessed at a time (default 0: this process)")
    parser.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                        help="a train.json override that training will also get, e.g. --set pixdim=[1,1,1]")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, one line per case (the bar shows only when stderr is a terminal; "
                        "PIPELINES_QUIET=1 too)")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        counts = preprocess_bundle(args.bundle, args.dataset_dir, overrides=dict(args.set or []),
                                   num_workers=args.workers, progress=False if args.quiet else None)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"preprocess: done ({counts.get('training', 0)} training, {counts.get('validation', 0)} validation cases)")
    return 0
