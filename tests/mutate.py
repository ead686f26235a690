"""Mutation check: does the suite fail when one line of a computation is wrong?

``make mutate`` (or ``.venv/bin/python -m tests.mutate``) copies the working tree (the files git tracks plus the
untracked ones it does not ignore) to a temporary folder, and for each entry of :data:`MUTATIONS` replaces one exact
snippet of one source file, runs the tests that guard that code (``pytest -x``, in the copy, with ``PYTHONPATH``
pointing at it so that subprocesses import the mutant too), restores the file and moves on. A mutation is *killed*
when the tests fail and *survives* when they pass. The real tree is never edited.

Each snippet must occur exactly once in its file; a snippet that no longer matches is reported as ``stale`` (the
source moved on: update the entry), so the list cannot rot silently. The run exits 0 only when every mutation is
killed and none is stale.

    python -m tests.mutate                 # every mutation
    python -m tests.mutate --list          # the list, nothing run
    python -m tests.mutate --only edu-     # the mutations whose id starts with "edu-"

The list is written by hand to cover forward passes, losses, the GAN engine, metrics and presets. It is a floor,
not a specification: the tests are meant to catch *behaviour* changes, including ones not listed here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the fast value tests first: pytest -x stops at the first failure, and they are where a mutant is caught
EDU_TESTS = ("tests/networks/test_edu_blocks.py", "tests/networks/test_frozen_outputs.py", "tests/networks/test_edu.py")
FILTER_TESTS = ("tests/networks/test_filters.py", "tests/networks/test_frcunet_blocks.py",
                "tests/networks/test_edu_blocks.py", "tests/networks/test_frozen_outputs.py")
FRCUNET_TESTS = ("tests/networks/test_frcunet_blocks.py", "tests/networks/test_frozen_outputs.py",
                 "tests/networks/test_frcunet.py")
ESRGAN_TESTS = ("tests/networks/test_esrgan_blocks.py", "tests/networks/test_frozen_outputs.py",
                "tests/networks/test_esrgan.py")
HEMF_TESTS = ("tests/networks/test_hemf_blocks.py", "tests/networks/test_frozen_outputs.py",
              "tests/networks/test_hemf.py")
UNET_TESTS = ("tests/networks/test_unet_family_blocks.py", "tests/networks/test_frozen_outputs.py",
              "tests/networks/test_unet_family.py")
LOSS_TESTS = ("tests/pipelines/test_losses.py", "tests/pipelines/test_losses_values.py")
GAN_TESTS = LOSS_TESTS + ("tests/pipelines/test_gan_engine.py", "tests/pipelines/test_gan_engine_values.py")
METRIC_TESTS = ("tests/pipelines/test_metrics.py", "tests/pipelines/test_classification_report.py")
PRESET_TESTS = (
    "tests/pipelines/test_presets_values.py",
    "tests/pipelines/test_train_transforms_alignment.py",
    "tests/pipelines/test_brats.py",
    "tests/pipelines/test_luna16.py",
    "tests/pipelines/test_sr_data.py",
    "tests/pipelines/test_isic_seg.py",
)


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str  # relative to the repository root
    original: str  # exact text, must occur once in the file
    mutant: str
    tests: tuple[str, ...]


M = Mutation
MUTATIONS: tuple[Mutation, ...] = (
    # ---- E-DU ----------------------------------------------------------------------------------------------------
    M("edu-mde-no-enhancement", "networks/edu.py",
      "maps.append(g + self.alpha * (g - blurred[str(k + 2)]))", "maps.append(g)", EDU_TESTS),
    M("edu-mde-dog-partner", "networks/edu.py",
      "maps.append(g + self.alpha * (g - blurred[str(k + 2)]))",
      "maps.append(g + self.alpha * (g - blurred[str(k)]))", EDU_TESTS),
    M("edu-mde-laplacian-sign", "networks/edu.py",
      "maps.append(g + self.alpha * self.laplacian(g))", "maps.append(g - self.alpha * self.laplacian(g))",
      EDU_TESTS),
    M("edu-mde-sum-not-mean", "networks/edu.py",
      "return torch.stack(maps, dim=0).mean(dim=0)", "return torch.stack(maps, dim=0).sum(dim=0)", EDU_TESTS),
    M("edu-mde-skip-raw-dropped", "networks/edu.py", "maps = [x]\n", "maps = [x * 0]\n", EDU_TESTS),
    M("edu-dense-concat-order", "networks/edu.py",
      "return torch.cat([x, self.dropout(self.layers(x))], dim=1)",
      "return torch.cat([self.dropout(self.layers(x)), x], dim=1)", EDU_TESTS),
    M("edu-dense-buffer-offset", "networks/edu.py",
      "buffer[:, filled : filled + layer.growth].copy_(new)",
      "buffer[:, filled - 1 : filled - 1 + layer.growth].copy_(new)", EDU_TESTS),
    M("filter-separable-backward-untransposed", "networks/blocks/filters.py",
      "for target, m in ((ops, a), (ops_t, a.t().contiguous())):", "for target, m in ((ops, a), (ops_t, a)):",
      ("tests/networks/test_separable_filters.py",) + FILTER_TESTS),
    M("edu-decoder-skip-bypasses-mde", "networks/edu.py",
      "x = decoder(torch.cat([up(x), skip(skips.pop())], dim=1))",
      "x = decoder(torch.cat([up(x), skips.pop()], dim=1))", EDU_TESTS),
    # ---- fixed filters ---------------------------------------------------------------------------------------------
    M("filters-backward-no-flip", "networks/blocks/filters.py",
      "flipped = weight.flip(dims=tuple(range(2, weight.ndim)))", "flipped = weight", FILTER_TESTS),
    M("filters-gaussian-sigma", "networks/blocks/filters.py",
      "g1 = torch.exp(-(x**2) / (2 * sigma**2))", "g1 = torch.exp(-(x**2) / (sigma**2))", FILTER_TESTS),
    M("filters-opencv-sigma", "networks/blocks/filters.py",
      "return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8", "return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.5",
      FILTER_TESTS),
    # ---- FRCU-Net --------------------------------------------------------------------------------------------------
    M("frcunet-se-collapsed-to-level0", "networks/frcunet.py",
      "return [lv * weights[:, i].reshape(view) for i, lv in enumerate(levels)]",
      "return [lv * weights[:, 0].reshape(view) for i, lv in enumerate(levels)]", FRCUNET_TESTS),
    M("frcunet-dog-levels", "networks/frcunet.py",
      "return [x] + [blurred[i] - blurred[i + 1] for i in range(len(self.blurs))]",
      "return [x] + [blurred[i + 1] for i in range(len(self.blurs))]", FRCUNET_TESTS),
    M("frcunet-sigma-schedule", "networks/frcunet.py",
      "self.sigmas = tuple(sigma0 * sigma_step**i for i in range(1, len(kernel_sizes) + 1))",
      "self.sigmas = tuple(sigma0 * sigma_step**i for i in range(0, len(kernel_sizes)))", FRCUNET_TESTS),
    M("frcunet-upcat-order", "networks/frcunet.py",
      "return self.convs(torch.cat([x_e, self.upsample(x)], dim=1))",
      "return self.convs(torch.cat([self.upsample(x), x_e], dim=1))", FRCUNET_TESTS),
    # ---- SE-ESRGAN -------------------------------------------------------------------------------------------------
    M("esrgan-rdb-residual-scale", "networks/esrgan.py",
      "return x + self.residual_scale * x5", "return x + 1.0 * x5", ESRGAN_TESTS),
    M("esrgan-rrdb-residual-scale", "networks/esrgan.py",
      "return x + self.residual_scale * self.rdb3(self.rdb2(self.rdb1(x)))",
      "return x + 1.0 * self.rdb3(self.rdb2(self.rdb1(x)))", ESRGAN_TESTS),
    M("esrgan-rdb-dense-input", "networks/esrgan.py",
      "x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))", "x5 = self.conv5(torch.cat((x, x1, x2, x3, x3), 1))",
      ESRGAN_TESTS),
    M("esrgan-se-before-upsampling", "networks/esrgan.py",
      "feat = self.se(self.upsample(feat))", "feat = self.upsample(self.se(feat))", ESRGAN_TESTS),
    M("esrgan-se-no-sigmoid-scale", "networks/blocks/squeeze_excitation.py",
      "        return x * w\n", "        return x + w\n", ESRGAN_TESTS),
    M("esrgan-trunk-long-skip", "networks/esrgan.py",
      "feat = feat + self.conv_body(self.body(feat))", "feat = self.conv_body(self.body(feat))", ESRGAN_TESTS),
    M("esrgan-interpolation-skip-dropped", "networks/esrgan.py",
      "out = out + base.to(out.dtype)", "out = out", ESRGAN_TESTS),
    # ---- HEMF ------------------------------------------------------------------------------------------------------
    M("hemf-decay-mask-removed", "networks/hemf.py",
      "attn = torch.softmax(qa @ ka.transpose(-1, -2) + mask, dim=-1)",
      "attn = torch.softmax(qa @ ka.transpose(-1, -2), dim=-1)", HEMF_TESTS),
    M("hemf-rotation-removed", "networks/hemf.py",
      "return x * cos + _rotate_every_two(x) * sin", "return x", HEMF_TESTS),
    M("hemf-rotation-sign", "networks/hemf.py",
      "return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)",
      "return torch.stack([x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)", HEMF_TESTS),
    M("hemf-mhea-product-to-sum", "networks/hemf.py", "x = norm(x * mhea(x))", "x = norm(x + mhea(x))",
      HEMF_TESTS),
    M("hemf-fusion-previous-dropped", "networks/hemf.py",
      "return shortcut + self.drop_path(fused)", "return self.drop_path(fused)", HEMF_TESTS),
    M("hemf-head-max-pool", "networks/hemf.py",
      "return self.head(self.norm(fused.flatten(2).mean(-1)))",
      "return self.head(self.norm(fused.flatten(2).amax(-1)))", HEMF_TESTS),
    M("hemf-elf-residual", "networks/hemf.py",
      "return x + self.drop_path(self.act(y))", "return self.drop_path(self.act(y))", HEMF_TESTS),
    M("attention-spatial-max-to-mean", "networks/blocks/attention.py",
      "pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)",
      "pooled = torch.cat([x.mean(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)", HEMF_TESTS),
    M("attention-external-l1-norm", "networks/blocks/attention.py",
      "attn = attn / attn.sum(dim=3, keepdim=True)  # L1 over memory slots", "attn = attn", HEMF_TESTS),
    # ---- U-Net family ----------------------------------------------------------------------------------------------
    M("unetpp-nested-skips-dropped", "networks/unet_family.py",
      "x04 = self.conv_0_4(x13, [x00, x01, x02, x03])", "x04 = self.conv_0_4(x13, [x00, x00, x00, x03])",
      UNET_TESTS),
    M("unet-upcat-order", "networks/unet_family.py",
      "parts = [up] + skips if self.up_first else skips + [up]",
      "parts = skips + [up] if self.up_first else [up] + skips", UNET_TESTS),
    M("resunet-shortcut-dropped", "networks/unet_family.py",
      "        return self.se(y + self.shortcut(x))\n\n\nclass PreActDoubleConv",
      "        return self.se(y)\n\n\nclass PreActDoubleConv", UNET_TESTS),
    M("resunetpp-aspp-branch-dropped", "networks/unet_family.py",
      "            if i > 0:\n                y = y + branch(x)",
      "            if i > 1:\n                y = y + branch(x)", UNET_TESTS),
    M("resunetpp-attention-not-multiplied", "networks/unet_family.py",
      "return self.gate(self.gc_path(self.g_path(g) + self.x_path(x))) * x",
      "return self.gate(self.gc_path(self.g_path(g) + self.x_path(x))) + x", UNET_TESTS),
    # ---- losses and the GAN engine ---------------------------------------------------------------------------------
    M("ragan-d-swapped", "pipelines/losses.py",
      "return 0.5 * (_bce(real_vs_fake, 1.0) + _bce(fake_vs_real, 0.0))",
      "return 0.5 * (_bce(real_vs_fake, 0.0) + _bce(fake_vs_real, 1.0))", GAN_TESTS),
    M("ragan-g-swapped", "pipelines/losses.py",
      "return 0.5 * (_bce(real_vs_fake, 0.0) + _bce(fake_vs_real, 1.0))",
      "return 0.5 * (_bce(real_vs_fake, 1.0) + _bce(fake_vs_real, 0.0))", GAN_TESTS),
    M("ragan-d-no-average", "pipelines/losses.py",
      "    real_vs_fake = real_logits - fake_logits.mean()\n    fake_vs_real = fake_logits - real_logits.mean()\n"
      "    return 0.5 *",
      "    real_vs_fake = real_logits - fake_logits\n    fake_vs_real = fake_logits - real_logits.mean()\n"
      "    return 0.5 *", GAN_TESTS),
    M("gan-engine-d-args-swapped", "pipelines/engines/gan.py",
      "d_total = engine.d_loss(real_logits, fake_logits)", "d_total = engine.d_loss(fake_logits, real_logits)",
      GAN_TESTS),
    M("gan-engine-g-args-swapped", "pipelines/engines/gan.py",
      "g_args = (sr.float(), hr, fake_logits.float(), real_logits.detach().float())",
      "g_args = (sr.float(), hr, real_logits.float(), fake_logits.detach().float())", GAN_TESTS),
    M("l1-to-l2", "pipelines/losses.py", "return F.l1_loss(prediction, target)",
      "return F.mse_loss(prediction, target)", GAN_TESTS),
    # ---- metrics ---------------------------------------------------------------------------------------------------
    M("boundary-f1-recall-is-precision", "pipelines/metrics.py",
      "recall = float(np.mean(dist_to_pred[bl] <= tolerance_mm))",
      "recall = float(np.mean(dist_to_label[bp] <= tolerance_mm))", METRIC_TESTS),
    M("boundary-f1-spacing-ignored", "pipelines/metrics.py",
      "dist_to_label = ndimage.distance_transform_edt(~bl, sampling=spacing)",
      "dist_to_label = ndimage.distance_transform_edt(~bl)", METRIC_TESTS),
    M("mean-pixel-accuracy-nan-as-zero", "pipelines/metrics.py",
      "return torch.nanmean(_per_class_recall(y_pred, y), dim=1)",
      "return torch.nan_to_num(_per_class_recall(y_pred, y)).mean(dim=1)", METRIC_TESTS),
    M("classification-macro-f1-weighted", "pipelines/reports/classification.py",
      '"macro_f1": mean(f1),', '"macro_f1": _safe_div((f1 * t).sum(), s),', METRIC_TESTS),
    # ---- presets ---------------------------------------------------------------------------------------------------
    M("ct-window-inverted", "pipelines/transforms/ct.py",
      "ScaleIntensityRanged(image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True)",
      "ScaleIntensityRanged(image_key, a_min=hu_window[1], a_max=hu_window[0], b_min=0.0, b_max=1.0, clip=True)",
      PRESET_TESTS),
    M("ct-window-not-clipped", "pipelines/transforms/ct.py",
      "ScaleIntensityRanged(image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True)",
      "ScaleIntensityRanged(image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=False)",
      PRESET_TESTS),
    M("ct-orientation-lps", "pipelines/transforms/ct.py", 'Orientationd(keys, axcodes="RAS"),',
      'Orientationd(keys, axcodes="LPS"),', PRESET_TESTS),
    M("ct-label-resampled-bilinear", "pipelines/transforms/ct.py",
      'modes = ["bilinear" if k == image_key else "nearest" for k in keys]', 'modes = ["bilinear" for k in keys]',
      PRESET_TESTS),
    M("brats-tc-without-et", "pipelines/transforms/brats.py", "tc = (x == conv.ncr) | et", "tc = x == conv.ncr",
      PRESET_TESTS),
    M("brats-wt-without-edema", "pipelines/transforms/brats.py", "wt = tc | (x == conv.ed)", "wt = tc",
      PRESET_TESTS),
    M("ct-flip-image-only", "pipelines/transforms/ct.py", "RandFlipd(keys, prob=0.5, spatial_axis=1),",
      'RandFlipd("image", prob=0.5, spatial_axis=1),', PRESET_TESTS),
    M("ct-rotate-image-only", "pipelines/transforms/ct.py",
      "RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),",
      'RandRotate90d("image", prob=0.5, max_k=3, spatial_axes=(0, 1)),', PRESET_TESTS),
    M("isic-rotate-image-only", "pipelines/transforms/isic.py", "RandRotate90d(keys, prob=0.5, max_k=3),",
      'RandRotate90d("image", prob=0.5, max_k=3),', PRESET_TESTS),
    M("brats-flip-image-only", "pipelines/transforms/brats.py", "RandFlipd(keys, prob=0.5, spatial_axis=2),",
      'RandFlipd("image", prob=0.5, spatial_axis=2),', PRESET_TESTS),
    M("degrade-area-to-max", "pipelines/transforms/degradation.py",
      "pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d",
      "pool = F.max_pool2d if spatial_dims == 2 else F.max_pool3d", PRESET_TESTS),
    # ---- the disk cache, sharding and the memory plan -------------------------------------------------------------
    M("cache-key-ignores-files", "pipelines/data/disk_cache.py", "        digest.update(_file_fingerprint(path))\n",
      "        pass\n", ("tests/pipelines/test_disk_cache.py",)),
    M("cache-key-ignores-settings", "pipelines/data/disk_cache.py",
      "    digest = hashlib.sha256(settings.encode())\n", "    digest = hashlib.sha256()\n",
      ("tests/pipelines/test_disk_cache.py",)),
    M("cache-trusts-partial", "pipelines/data/disk_cache.py",
      "if not (root / key / ITEM_FILE).is_file()]", "if not (root / key).is_dir()]",
      ("tests/pipelines/test_disk_cache.py",)),
    M("cache-ram-budget-ignored", "pipelines/data/disk_cache.py",
      "            if used + record[\"nbytes\"] > budget:\n                continue\n", "",
      ("tests/pipelines/test_disk_cache.py",)),
    M("cache-mmap-loses-numpy-kind", "pipelines/data/disk_cache.py",
      "                    record[\"numpy\"].append(name)", "                    pass",
      ("tests/pipelines/test_disk_cache.py",)),
    M("partition-not-interleaved", "pipelines/distributed.py",
      "even_divisible=False)[rank()]", "even_divisible=False)[0]", ("tests/pipelines/test_disk_cache.py",)),
    M("indices-bg-all-voxels", "pipelines/transforms/indices.py",
      "fg, bg = map_binary_to_indices(label, image, self.image_threshold)",
      "fg, bg = map_binary_to_indices(label, None, self.image_threshold)", ("tests/pipelines/test_disk_cache.py",)),
    M("memory-plan-batch-not-scaled", "pipelines/engines/memory_plan.py",
      "    b = min(p.batch for p in probes)", "    b = 1",
      ("tests/pipelines/test_memory_plan.py",)),
    M("memory-plan-off-still-probes", "pipelines/engines/memory_plan.py",
      "        if self.enabled:\n            engine.add_event_handler(Events.STARTED, self)",
      "        if True:\n            engine.add_event_handler(Events.STARTED, self)",
      ("tests/pipelines/test_memory_plan.py",)),
    # ---- fidelity: E-DU's nested pathway, FRCU-Net's Xception path, network interpolation --------------------------
    M("edu-nested-cat-order", "networks/edu.py",
      "torch.cat([self.up(deeper)] + same_level, dim=1)", "torch.cat(same_level + [self.up(deeper)], dim=1)",
      ("tests/networks/test_edu_variants.py", "tests/networks/test_frozen_outputs.py")),
    M("edu-nested-wrong-deeper-node", "networks/edu.py",
      "node(grid[node.row + 1][node.col - 1], grid[node.row][: node.col])",
      "node(grid[node.row + 1][0], grid[node.row][: node.col])",
      ("tests/networks/test_edu_variants.py", "tests/networks/test_frozen_outputs.py")),
    M("xception-skip-x1-for-x0", "networks/blocks/xception.py",
      "        return x0, x1, x2, x\n", "        return x1, x1, x2, x\n",
      ("tests/networks/test_frcunet_xception.py",)),
    M("frcu-decoder-cat-order", "networks/frcunet.py",
      "torch.cat([x_e, self.up_act(self.up_conv(self.upsample(x)))], dim=1)",
      "torch.cat([self.up_act(self.up_conv(self.upsample(x))), x_e], dim=1)",
      ("tests/networks/test_frcunet_xception.py", "tests/networks/test_frozen_outputs.py")),
    M("interpolate-weights-swapped", "pipelines/interpolate.py",
      "    return ((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)",
      "    return (alpha * a.double() + (1.0 - alpha) * b.double()).to(a.dtype)",
      ("tests/pipelines/test_interpolate.py",)),
)


def _copy_tree(dst: Path) -> None:
    """Copy what git tracks plus the untracked files it does not ignore (new tests included)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def run_mutation(mutation: Mutation, tree: Path, timeout: float) -> tuple[str, float, str]:
    """Apply ``mutation`` in ``tree``, run its tests, restore. Returns (status, seconds, last output line)."""
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return "stale", 0.0, f"snippet found {count} times in {mutation.path}"
    tests = [t for t in mutation.tests if (tree / t).exists()]
    if not tests:
        return "stale", 0.0, f"none of the tests {mutation.tests} exists"
    path.write_text(text.replace(mutation.original, mutation.mutant))
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.time() - start
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        status = {0: "survived", 1: "killed"}.get(proc.returncode, f"error (pytest exit {proc.returncode})")
    except subprocess.TimeoutExpired:
        seconds, last, status = time.time() - start, f"no result within {timeout:.0f} s", "killed (timeout)"
    finally:
        path.write_text(text)
    return status, seconds, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run the mutations whose id starts with one of these")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation (default 600)")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or any(m.id.startswith(p) for p in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.id:40s} {m.path}")
        return 0
    if not chosen:
        print("mutate: no mutation matches --only", file=sys.stderr)
        return 2
    survivors, stale, errors = [], [], []
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for i, mutation in enumerate(chosen, 1):
            status, seconds, last = run_mutation(mutation, tree, args.timeout)
            print(f"[{i:2d}/{len(chosen)}] {status:10s} {seconds:6.1f}s  {mutation.id}  ({last[:90]})", flush=True)
            if status == "survived":
                survivors.append(mutation)
            elif status == "stale":
                stale.append(mutation)
            elif status.startswith("error"):
                errors.append(mutation)
    killed = len(chosen) - len(survivors) - len(stale) - len(errors)
    print(f"mutate: {killed} killed, {len(survivors)} survived, {len(stale)} stale, {len(errors)} errors "
          f"of {len(chosen)} mutations")
    for m in survivors:
        print(f"  SURVIVED {m.id}: {m.path}: {m.original!r} -> {m.mutant!r}")
    for m in stale + errors:
        print(f"  CHECK {m.id}: {m.path}")
    return 0 if not (survivors or stale or errors) else 1


if __name__ == "__main__":
    sys.exit(main())
