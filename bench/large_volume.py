"""Peak memory of inference on a whole 512 x 512 x 300 CT volume, through the lung bundle's real pipeline.

A chest CT of 512 x 512 x 300 voxels (0.7 x 0.7 x 1.0 mm, int16 MetaImage) is written, then segmented with
:class:`pipelines.inference.BundleInferer` exactly as ``python -m pipelines infer`` does: load, resample to the bundle's
voxel size, sliding window, softmax, inverse resampling to the input grid, argmax, atomic NIfTI write. The run happens
in a fresh process so that its peak resident memory (``ru_maxrss``) is its own.

The volume-sized buffers (image, resampled image, stitched probabilities and count map, inverted probabilities, label
map) do not depend on the network; one window's activations do, and ``bench/results.md`` gives those per network
(peak MiB for a 64^3 window). To finish in minutes on two CPU cores this run uses a narrow E-DU (widths 4-64,
random weights) and overlap 0.25; the default E-DU adds its window memory on top and runs far longer.

    python -m bench.large_volume [--shape 512 512 300] [--features 4 8 16 32 64] [--precision fp32|bf16]

Writes ``bench/results_large_volume.json`` and ``bench/results_large_volume.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent / "bundles" / "lung_nodule_ct_edu_segmentation"


def write_ct(path: Path, shape: tuple[int, int, int], spacing=(0.7, 0.7, 1.0)) -> Path:
    """A body-shaped int16 CT (air outside, soft tissue, lungs) of ``shape`` (x, y, z) voxels as MetaImage."""
    import numpy as np
    import SimpleITK as sitk

    nx, ny, nz = shape
    y, x = np.mgrid[:ny, :nx].astype(np.float32)
    cx, cy = nx / 2, ny / 2
    body = ((x - cx) / (0.45 * nx)) ** 2 + ((y - cy) / (0.35 * ny)) ** 2 <= 1
    lungs = (((np.abs(x - cx) - 0.2 * nx) / (0.14 * nx)) ** 2 + ((y - cy) / (0.25 * ny)) ** 2) <= 1
    plane = np.full((ny, nx), -1000, np.int16)
    plane[body] = 40
    plane[lungs & body] = -850
    volume = np.broadcast_to(plane, (nz, ny, nx)).copy()
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin((-nx * spacing[0] / 2, -ny * spacing[1] / 2, -300.0))
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def _measure(shape, features, precision, overlap, threads, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from networks import EDU
    from pipelines.inference import BundleInferer

    work = Path(tempfile.mkdtemp(prefix="large_volume_"))
    try:
        scan = write_ct(work / "ct.mhd", shape)
        torch.manual_seed(0)
        weights = work / "model.pt"
        torch.save(EDU(3, 1, 2, features=features).state_dict(), weights)
        after_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        inferer = BundleInferer(BUNDLE, work / "out", weights=weights, precision=precision,
                                overrides={"features": list(features), "overlap": overlap, "device": "cpu"})
        start = time.perf_counter()
        result = inferer(scan)
        seconds = time.perf_counter() - start
        import SimpleITK as sitk

        out = sitk.ReadImage(result.output) if result.ok else None
        queue.put({
            "ok": result.ok, "error": result.error, "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_before_inference_mib": after_write,
            "output_size": list(out.GetSize()) if out is not None else None,
            "sw_batch_size": inferer.inferer.sw_batch_size,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="voxels x, y, z")
    parser.add_argument("--features", type=int, nargs=5, default=[4, 8, 16, 32, 64], help="E-DU widths")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(tuple(args.shape), tuple(args.features), args.precision, args.overlap,
                                              args.threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    import os
    import platform

    report = {"shape": args.shape, "features": args.features, "precision": args.precision, "overlap": args.overlap,
              "threads": args.threads,
              "machine_memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
              "cpu": platform.processor() or platform.machine(), **result}
    md = (
        "# Whole-volume inference memory\n\n"
        f"A {'x'.join(map(str, args.shape))} CT (0.7 x 0.7 x 1.0 mm) through the lung bundle's inference pipeline "
        f"(resample to 0.703 x 0.703 x 1.25 mm, sliding window, inverse resampling, NIfTI write) on the CPU, "
        f"{args.threads} threads, {args.precision}, overlap {args.overlap}, E-DU widths {args.features}.\n\n"
        "| finished | seconds | peak RSS (MiB) | machine memory (GiB) | output size |\n|---|---:|---:|---:|---|\n"
        f"| {result['ok']} | {result['seconds']:.0f} | {result['peak_rss_mib']:.0f} | "
        f"{report['machine_memory_gib']:.1f} | {result['output_size']} |\n\n"
        "Volume-sized buffers do not depend on the network; add one window's activations for the bundle's E-DU "
        "(`bench/results.md`, peak MiB column).\n"
    )
    from pipelines.io import write_json_atomic, write_text_atomic

    write_json_atomic(HERE / "results_large_volume.json", report)
    write_text_atomic(HERE / "results_large_volume.md", md)
    print(md)


if __name__ == "__main__":
    main()
