"""A whole 512 x 512 x 300 chest CT through the lung bundle's shipped inference configuration, per network and
precision.

    python -m bench.ct_volume --max-minutes 5              # the six configurations, 5 minutes of windows each at most
    python -m bench.ct_volume --only "E-DU fp32" --shape 256 256 120 --max-minutes 1
    python -m bench.ct_volume --device cuda                # on a GPU (bench/gpu.sh runs it so)

The scan is a synthetic chest CT from :func:`pipelines.synth.luna16.write_luna16` at LUNA16's real size (the first
seed whose drawn geometry is 512 x 512 x 300 voxels at 0.68-0.72 mm in-plane and 1.25 mm slices: thorax, lungs,
vessels and nodules, int16 MetaImage); any other ``--shape`` gets :func:`bench.large_volume.write_ct`'s body phantom
at 0.7 x 0.7 x 1.25 mm. It is written once, then every configuration segments it with
:class:`pipelines.inference.BundleInferer`, exactly as ``python -m pipelines infer`` does (read, orient, resample to
the bundle's 0.703 x 0.703 x 1.25 mm, crop to the body, sliding window over 96 x 96 x 64 windows at overlap 0.5,
softmax, inverse
resampling to the input grid, argmax, atomic NIfTI write), on a copy of the bundle whose ``models/`` holds a
random-initialised state dict of the configuration's network (seed 0). Configurations:

* the shipped E-DU (widths 32-512), MONAI ``UNet`` (16-256, two residual units) and MONAI ``SegResNet`` (its
  defaults), the two MONAI networks swapped in by a ``network_def`` override, as a user would;
* each in fp32 and on the fast path (``--precision bf16``: bf16 autocast and channels-last 3D).

Each configuration runs in its own fresh process. Measured there: the wall time of the whole inference call, the time
inside the network (every forward pass timed, synchronised on CUDA, where the windows run include the sliding-window
planner's one probe window), the sliding window's windows, and the peak
resident memory of the process (``VmHWM`` of ``/proc/self/status``: a spawned child's ``ru_maxrss`` would start from
the parent's resident size, which Linux carries across ``exec``).

``--max-minutes`` bounds each configuration: once that much time has passed since its inference call began, the
remaining windows are not run (the network returns zeros for them), so reading, stitching, inverting and writing still
happen at full size and the peak memory is the real pipeline's. Such a configuration is marked **extrapolated**: its
time in the network is the measured time per window times every window, and its wall time the measured wall time plus
the windows it skipped at that rate.

Writes ``bench/results_ct_volume.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent / "bundles" / "lung_nodule_ct_edu_segmentation"
SPACING = (0.7, 0.7, 1.25)
#: the peak resident memory the issue sets as a target for the whole-CT pipeline
RSS_TARGET_GIB = 12.0

UNET_DEF = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
            "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
SEGRESNET_DEF = {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
#: configuration -> (network, its ``network_def`` override or None for the shipped E-DU, precision)
CONFIGURATIONS: dict[str, tuple[str, dict | None, str]] = {
    "E-DU fp32": ("E-DU", None, "fp32"),
    "E-DU fast path": ("E-DU", None, "bf16"),
    "MONAI UNet fp32": ("MONAI UNet", UNET_DEF, "fp32"),
    "MONAI UNet fast path": ("MONAI UNet", UNET_DEF, "bf16"),
    "MONAI SegResNet fp32": ("MONAI SegResNet", SEGRESNET_DEF, "fp32"),
    "MONAI SegResNet fast path": ("MONAI SegResNet", SEGRESNET_DEF, "bf16"),
}


def bundle_config_files(bundle: Path, workflow: str = "inference") -> list[str]:
    """The config files of a bundle's ``workflow`` (``"train"``, ``"inference"``...), in merge order.

    :func:`pipelines.bundle.workflow_configs` where the project has it (``train.json``, then the workflow's overlay,
    run as ``--config_file "['configs/train.json','configs/inference.json']"``); before it, ``inference.json`` alone
    when it is a whole config (it has its own ``network_def``), else under ``train.json``."""
    try:
        from pipelines.bundle import workflow_configs
    except ImportError:
        configs = Path(bundle) / "configs"
        if workflow == "train":
            return [str(configs / "train.json")]
        overlay = configs / f"{workflow}.json"
        if "network_def" in json.loads(overlay.read_text()):
            return [str(overlay)]
        return [str(configs / "train.json"), str(overlay)]
    return [str(p) for p in workflow_configs(bundle, workflow)]


def cpu_description() -> dict:
    """The CPU's model name and whether it has bf16 instructions (AVX512_BF16, AMX): without them oneDNN converts
    bf16 to fp32 around its fp32 kernels and bf16 autocast is slower than fp32, not faster."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    bf16 = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert"))
    return {"cpu": model, "cores": os.cpu_count(), "bf16_instructions": bf16 or None}


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (``VmHWM``; ``ru_maxrss`` where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sliding_windows(image_size, roi_size, overlap: float) -> int:
    """Windows MONAI's sliding window visits on a volume of ``image_size`` (padded to the window where smaller)."""
    from monai.data.utils import dense_patch_slices

    size = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(size, roi_size)]
    return len(dense_patch_slices(size, list(roi_size), interval))


def write_scan(folder: Path, shape: tuple[int, int, int], max_seeds: int = 200_000) -> dict:
    """Write the bench's CT under ``folder``; returns its path and how it was made (see the module docstring)."""
    import numpy as np
    import SimpleITK as sitk

    from pipelines.synth.luna16 import FULL, scan_geometry, write_luna16

    seed = None
    if shape[0] == shape[1] == FULL.matrix:
        for candidate in range(max_seeds):
            g = scan_geometry(np.random.default_rng(candidate), "full")
            if g.shape == tuple(shape) and abs(g.spacing[0] - SPACING[0]) <= 0.02 and g.spacing[2] == SPACING[2]:
                seed = candidate
                break
    if seed is not None:
        (scan,) = write_luna16(folder / "LUNA16", cases=1, seed=seed, subsets=1, flip_fraction=0.0, size="full")
        path, source = Path(scan.path), f"pipelines.synth.luna16 (size='full', seed {seed})"
    else:
        from bench.large_volume import write_ct

        path, source = write_ct(folder / "ct.mhd", tuple(shape), SPACING), "bench.large_volume.write_ct body phantom"
    image = sitk.ReadImage(str(path))
    if tuple(image.GetSize()) != tuple(shape):
        raise RuntimeError(f"{path}: written as {image.GetSize()}, asked for {tuple(shape)}")
    return {"path": str(path), "source": source, "size": list(image.GetSize()),
            "spacing": [round(s, 4) for s in image.GetSpacing()], "file_mib": path.stat().st_size / 2**20
            + sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*raw")) / 2**20}


class NetworkTimer:
    """Wraps the network the sliding window calls: times every forward pass and counts its windows; once
    ``deadline`` (``time.perf_counter``) has passed, returns zeros of the last output's shape instead of running it."""

    def __init__(self, network, device) -> None:
        self.network = network
        self.cuda = str(device).startswith("cuda")
        self.deadline = math.inf
        self.seconds = 0.0
        self.windows_run = 0
        self.windows_skipped = 0
        self._template: tuple | None = None

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __call__(self, x):
        import torch

        if self._template is not None and time.perf_counter() >= self.deadline:
            self.windows_skipped += x.shape[0]
            shape, dtype = self._template
            return torch.zeros((x.shape[0], *shape), dtype=dtype, device=x.device)
        self._sync()
        start = time.perf_counter()
        y = self.network(x)
        self._sync()
        self.seconds += time.perf_counter() - start
        self.windows_run += x.shape[0]
        self._template = (tuple(y.shape[1:]), y.dtype)
        return y


class InfererSpy:
    """Delegates to the sliding-window inferer and keeps the spatial size of the (pre-processed) volume it was given."""

    def __init__(self, inferer) -> None:
        self.inferer = inferer
        self.image_size: list[int] | None = None

    def __call__(self, inputs, network, *args, **kwargs):
        self.image_size = [int(s) for s in inputs.shape[2:]]
        return self.inferer(inputs, network, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inferer, name)


def measure(name: str, scan: str, bundle: Path, out: Path, max_seconds: float, threads: int, device: str,
            overrides: dict | None = None) -> dict:
    """Run one configuration of :data:`CONFIGURATIONS` in this process; see the module docstring."""
    import torch
    from monai.bundle import ConfigParser

    from pipelines.inference import BundleInferer

    network_name, network_def, precision = CONFIGURATIONS[name]
    torch.set_num_threads(threads)
    settings = {"device": device, **(overrides or {})}
    if network_def is not None:
        settings["network_def"] = network_def
    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, "inference"))
    parser.update({"bundle_root": str(bundle), **settings})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    weights = bundle / "models" / f"{name.replace(' ', '_')}.pt"
    torch.save(network.state_dict(), weights)
    params = sum(p.numel() for p in network.parameters())
    del network, parser
    engine = BundleInferer(bundle, out, weights=weights, overrides=settings, precision=precision, progress=False)
    try:
        timer = NetworkTimer(engine.network, engine.device)
        spy = InfererSpy(engine.inferer)
        engine.network, engine.inferer = timer, spy
        before = peak_rss_mib()
        start = time.perf_counter()
        timer.deadline = start + max_seconds
        result = engine(scan)
        wall = time.perf_counter() - start
        peak = peak_rss_mib()
        roi = [int(r) for r in engine.parser.get_parsed_content("patch_size")]
        overlap = float(spy.inferer.overlap)
        windows = sliding_windows(spy.image_size, roi, overlap) if spy.image_size else None
        output_size = None
        if result.ok:
            import SimpleITK as sitk

            output_size = list(sitk.ReadImage(result.output).GetSize())
        per_window = timer.seconds / timer.windows_run if timer.windows_run else None
        extrapolated = timer.windows_skipped > 0
        report = {
            "network": network_name, "precision": precision, "channels_last": engine.channels_last,
            "params": params, "ok": result.ok, "error": result.error, "extrapolated": extrapolated,
            "wall_s": wall, "inferer_s": result.inferer_seconds, "network_s": timer.seconds,
            "windows": windows, "windows_run": timer.windows_run, "windows_skipped": timer.windows_skipped,
            "network_s_per_window": per_window,
            "network_s_full": timer.seconds + (per_window or 0.0) * timer.windows_skipped,
            "wall_s_full": wall + (per_window or 0.0) * timer.windows_skipped,
            "peak_rss_mib": peak, "peak_rss_before_inference_mib": before,
            "sw_batch_size": getattr(spy.inferer, "sw_batch_size", None), "roi": roi, "overlap": overlap,
            "preprocessed_size": spy.image_size, "output_size": output_size, "threads": torch.get_num_threads(),
        }
        report["outside_network_s"] = report["wall_s"] - report["network_s"]
        return report
    finally:
        engine.close()


def _child(*args) -> None:
    *args, queue = args
    try:
        queue.put(measure(*args))
    except BaseException as e:  # report to the parent instead of leaving it waiting
        queue.put({"error": f"{type(e).__name__}: {e}", "ok": False, "peak_rss_mib": peak_rss_mib()})


def _write_scan_child(folder: Path, shape, queue) -> None:
    try:
        queue.put(write_scan(folder, shape))
    except BaseException as e:
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _isolated(target, args: tuple) -> dict:
    """``target(*args, queue)`` in a fresh spawned process; its result, or ``{"error": ...}`` when it died."""
    ctx = mp.get_context("spawn")  # fork after torch has started its thread pools can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty: still running, or killed (out of memory) without a word
            if not proc.is_alive():
                result = {"error": f"the process ended with exit code {proc.exitcode} before reporting", "ok": False}
                break
    proc.join()
    return result


def run(shape=(512, 512, 300), max_minutes: float = 5.0, threads: int = 1, device: str = "cpu",
        only: list[str] | None = None, overrides: dict | None = None, isolate: bool = True,
        work: Path | None = None, echo=print) -> dict:
    """Write the CT once and run every configuration (or ``only`` those) on it; the report of all of them."""
    names = [n for n in CONFIGURATIONS if not only or n in only]
    unknown = sorted(set(only or []) - set(CONFIGURATIONS))
    if unknown:
        raise ValueError(f"--only: unknown configuration(s) {unknown}; choose from {list(CONFIGURATIONS)}")
    tmp = Path(tempfile.mkdtemp(prefix="ct_volume_", dir=work))
    try:
        bundle = tmp / "bundle"
        shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "cache", "logs", "eval",
                                                                    "__pycache__"))
        (bundle / "models").mkdir()
        start = time.perf_counter()
        scan = (_isolated(_write_scan_child, (tmp, tuple(shape))) if isolate else write_scan(tmp, tuple(shape)))
        if "error" in scan:
            raise RuntimeError(f"writing the CT failed: {scan['error']}")
        echo(f"ct_volume: {scan['path']} {'x'.join(map(str, scan['size']))} at {scan['spacing']} mm "
             f"({scan['source']}, {time.perf_counter() - start:.0f} s)")
        report = {"scan": scan, "max_minutes": max_minutes, "device": device, "threads": threads,
                  "overrides": overrides or {},
                  "config_files": [Path(p).name for p in bundle_config_files(BUNDLE, "inference")],
                  "machine": {**cpu_description(),
                              "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
                  "configurations": {}}
        for name in names:
            args = (name, scan["path"], bundle, tmp / "out" / name.replace(" ", "_"), 60.0 * max_minutes, threads,
                    device, overrides)
            start = time.perf_counter()
            load = os.getloadavg()[0]  # the machine is shared: how busy it was when this configuration started
            if isolate:
                r = _isolated(_child, args)
            else:
                r = measure(*args)
            r["load_average_at_start"] = load
            report["configurations"][name] = r
            if r.get("ok"):
                full = f" (extrapolated: {r['wall_s_full']:.0f} s)" if r["extrapolated"] else ""
                echo(f"ct_volume: {name}: {r['windows_run']}/{r['windows']} windows, network {r['network_s']:.0f} s, "
                     f"wall {r['wall_s']:.0f} s{full}, "
                     f"peak RSS {r['peak_rss_mib'] / 1024:.2f} GiB ({time.perf_counter() - start:.0f} s)")
            else:
                echo(f"ct_volume: {name} failed: {r.get('error')}")
        report["ratios"] = ratios(report["configurations"])
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ratios(configurations: dict[str, dict]) -> dict[str, dict]:
    """E-DU's time per CT over UNet's and SegResNet's per precision, and each network's fast-path speed-up."""
    out: dict[str, dict] = {}

    def get(network: str, precision: str) -> dict | None:
        for r in configurations.values():
            if r.get("ok") and r["network"] == network and r["precision"] == precision:
                return r
        return None

    for precision in ("fp32", "bf16"):
        edu = get("E-DU", precision)
        for other in ("MONAI UNet", "MONAI SegResNet"):
            ref = get(other, precision)
            if edu and ref:
                out[f"E-DU / {other}, {precision}"] = {
                    "wall": edu["wall_s_full"] / ref["wall_s_full"],
                    "network": edu["network_s_full"] / ref["network_s_full"],
                    "extrapolated": edu["extrapolated"] or ref["extrapolated"]}
    for network in ("E-DU", "MONAI UNet", "MONAI SegResNet"):
        fp32, fast = get(network, "fp32"), get(network, "bf16")
        if fp32 and fast:
            out[f"{network} fast path speed-up"] = {
                "wall": fp32["wall_s_full"] / fast["wall_s_full"],
                "network": fp32["network_s_full"] / fast["network_s_full"],
                "extrapolated": fp32["extrapolated"] or fast["extrapolated"]}
    return out


def _seconds(value: float, extrapolated: bool) -> str:
    text = f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
    return f"**~{text} (extrapolated)**" if extrapolated else text


def markdown(report: dict) -> str:
    scan = report["scan"]
    first = next((r for r in report["configurations"].values() if r.get("ok")), {})
    lines = [
        "# A whole CT through the lung bundle's inference",
        "",
        f"{'x'.join(map(str, scan['size']))} voxels at {' x '.join(map(str, scan['spacing']))} mm ({scan['source']}), "
        f"through `BundleInferer` with the lung bundle's shipped inference configuration "
        f"({' + '.join(report['config_files'])}"
        + (f", overrides {json.dumps(report['overrides'])}" if report["overrides"] else "")
        + f"): resampled to {'x'.join(map(str, first.get('preprocessed_size') or []))}, "
        f"{'x'.join(map(str, first.get('roi') or []))} windows at overlap {first.get('overlap')}, "
        f"sw_batch_size {first.get('sw_batch_size')}, Gaussian stitching, inverse resampling, NIfTI write. "
        f"Device {report['device']}, {report['threads']} thread(s), {report['machine']['cpu']} "
        f"({report['machine'].get('cores', '?')} cores, bf16 instructions: "
        f"{', '.join(report['machine'].get('bf16_instructions') or ['none'])}), "
        f"{report['machine']['memory_gib']:.0f} GiB; random-initialised weights (seed 0); each configuration in its "
        f"own process, at most {report['max_minutes']:g} minute(s) of windows each.",
        "",
        "Time in the network: every forward pass timed. Wall time: the whole inference call (read, resample, sliding "
        "window, invert, write). **Extrapolated**: the configuration ran out of its budget; its remaining windows "
        "were not run (zeros stitched instead, so the rest of the pipeline and its memory are real) and are counted "
        "at the measured time per window. Load at start: the 1-minute load average of the machine (shared with other "
        "work) when the configuration began.",
        "",
        "| configuration | params | windows run / total | network s per window | time in network s | wall time s | "
        "outside the network s | peak RSS GiB | load at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peaks = []
    for name, r in report["configurations"].items():
        if not r.get("ok"):
            lines.append(f"| {name} | | | | | | | failed: {r.get('error')} | |")
            continue
        peaks.append(r["peak_rss_mib"] / 1024)
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['windows_run']} / {r['windows']} | "
            f"{r['network_s_per_window']:.3f} | {_seconds(r['network_s_full'], r['extrapolated'])} | "
            f"{_seconds(r['wall_s_full'], r['extrapolated'])} | {r['outside_network_s']:.0f} | "
            f"{r['peak_rss_mib'] / 1024:.2f} | {r.get('load_average_at_start', float('nan')):.1f} |")
    if report["ratios"]:
        lines += ["", "| ratio (time per CT) | wall time | time in network |", "|---|---:|---:|"]
        for name, r in report["ratios"].items():
            mark = " (extrapolated)" if r["extrapolated"] else ""
            lines.append(f"| {name}{mark} | {r['wall']:.2f} | {r['network']:.2f} |")
    if peaks:
        verdict = "met" if max(peaks) < RSS_TARGET_GIB else "**missed**"
        lines += ["", f"Peak RSS target < {RSS_TARGET_GIB:g} GiB: {verdict} (largest {max(peaks):.2f} GiB)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ct_volume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="voxels x, y, z")
    parser.add_argument("--max-minutes", type=float, default=5.0,
                        help="per configuration: after this long its remaining windows are extrapolated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each configuration")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1...)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"configurations among {list(CONFIGURATIONS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        type=lambda text: __import__("pipelines.bundle", fromlist=["x"]).parse_override(text),
                        help="a config override of every configuration (JSON values), e.g. overlap=0.25")
    parser.add_argument("--out", default=str(HERE), help="folder for results_ct_volume.json/.md (default bench/)")
    parser.add_argument("--work", help="folder for the temporary CT and bundle copy (default: the system's)")
    args = parser.parse_args(argv)
    from pipelines.io import write_json_atomic, write_text_atomic

    try:
        overrides = dict(args.overrides)
        report = run(tuple(args.shape), args.max_minutes, args.threads, args.device, args.only, overrides,
                     work=Path(args.work) if args.work else None)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}")
        return 1
    out = Path(args.out)
    write_json_atomic(out / "results_ct_volume.json", report)
    write_text_atomic(out / "results_ct_volume.md", markdown(report))
    print(markdown(report))
    return 0 if all(r.get("ok") for r in report["configurations"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
