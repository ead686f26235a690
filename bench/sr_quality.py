"""Does the SE-ESRGAN generator beat interpolation? Train CPU-sized copies of the two super-resolution bundles on
synthetic data and evaluate them on held-out synthetic data written with another seed.

For each task (2D ultrasound x4 against bicubic; 3D CT slice axis x2 against trilinear):

1. write a training set (seed 0) and a held-out set (seed 1) with :mod:`pipelines.synth`;
2. derive a CPU-sized bundle (:func:`pipelines.bundle.derive_bundle`: small ``nf``/``nb``, small patches);
3. ``python -m monai.bundle run training`` in a fresh process, PSNR-oriented phase only, stopped at the first epoch
   end after ``--psnr-minutes`` (an extra config file adds that time limit); the best-PSNR ``model.pt`` is kept as
   ``model_psnr.pt``;
4. the same command again with ``pretrain_epochs`` = the epochs done: it resumes from ``checkpoint.pt`` straight
   into the GAN phase, for ``--gan-minutes`` (``model_final.pt`` is the generator at the end of the GAN phase);
5. ``evaluate.json`` (``eval_all=true``) on the held-out set for both generators: PSNR, SSIM and MSE of the network
   and of the interpolation baseline, per image/volume and averaged.

Writes ``bench/results_sr.json`` and ``bench/results_sr.md``. Every step runs with ``OMP_NUM_THREADS`` threads
(``--threads``); wall times are those of this machine and depend on what else runs on it.

``--interpolation`` runs steps 1-4 afresh and then, instead of step 5, ESRGAN's network interpolation
(:mod:`pipelines.interpolate`): the generator at the end of the PSNR phase (``model_psnr_last.pt``, where the GAN phase
starts, as ESRGAN interpolates its PSNR-oriented pre-trained model) and the one at the end of the GAN phase
(``model_final.pt``) are blended at ``--alphas`` (0, 0.5, 0.8, 1) with ``python -m pipelines interpolate``, and each
blend is evaluated on the held-out set. Writes ``bench/results_sr_interpolation.json`` / ``.md``.

    python -m bench.sr_quality                         # both tasks, about 12 minutes of training each
    python -m bench.sr_quality --tasks us --psnr-minutes 2 --gan-minutes 1
    python -m bench.sr_quality --tasks ct --continue-gan-minutes 8   # resume the GAN phase of the last ct run
    python -m bench.sr_quality --interpolation --tasks us --threads 1 --psnr-minutes 4 --gan-minutes 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.bundle_runs import evaluate_bundle, time_limit_config, train_bundle, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

US_BUNDLE = REPO / "bundles" / "ultrasound_se_esrgan_superresolution"
CT_BUNDLE = REPO / "bundles" / "ct_se_esrgan_superresolution"

#: CPU-sized configurations (the shipped defaults are GPU-sized: 2D nf 64 / gc 64 / nb 24, 3D nf 32 / gc 16 / nb 8)
TASKS = {
    "us": {
        "bundle": US_BUNDLE,
        "title": "2D ultrasound x4 (SE-ESRGAN nf 32, gc 32, nb 4) vs bicubic",
        "baseline": "bicubic",
        "overrides": {"nf": 32, "gc": 32, "nb": 4, "roi_size": [32, 32], "sw_batch_size": 4, "num_workers": 0},
        "train_overrides": {"hr_patch_size": [64, 64], "batch_size": 8, "num_samples": 2, "learning_rate": 0.001,
                            "gan_learning_rate": 0.0001, "d_learning_rate": 0.0001, "disc_features": 32,
                            "val_fraction": 0.15, "val_interval": 5},
        "train_data": {"n_images": 40, "size": [128, 160], "seed": 0},
        "heldout_data": {"n_images": 12, "size": [128, 160], "seed": 1},
    },
    "ct": {
        "bundle": CT_BUNDLE,
        "title": "3D CT slice axis x2 (SE-ESRGAN nf 16, gc 8, nb 2) vs trilinear",
        "baseline": "trilinear",
        "overrides": {"nf": 16, "gc": 8, "nb": 2, "roi_size": [64, 64, 16], "sw_batch_size": 2, "num_workers": 0},
        "train_overrides": {"hr_patch_size": [32, 32, 16], "batch_size": 4, "num_samples": 2,
                            "learning_rate": 0.001, "gan_learning_rate": 0.0001, "d_learning_rate": 0.0001,
                            "disc_features": 16, "disc_channel_mults": [1, 2, 4], "val_crop_size": [96, 96, 32],
                            "val_fraction": 0.2, "val_interval": 5},
        "train_data": {"cases": 10, "seed": 0, "fov_mm": 100.0, "length_mm": 64.0},
        "heldout_data": {"cases": 3, "seed": 1, "fov_mm": 80.0, "length_mm": 48.0},
    },
}


def _write_data(task: str, spec: dict, folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        return
    if task == "us":
        from pipelines.synth.ultrasound import write_ultrasound

        write_ultrasound(folder, n_images=spec["n_images"], size=tuple(spec["size"]), seed=spec["seed"])
    else:
        from pipelines.synth.luna16 import write_luna16

        write_luna16(folder, cases=spec["cases"], seed=spec["seed"], fov_mm=spec["fov_mm"],
                     length_mm=spec["length_mm"], flip_fraction=0.3)


#: bundle settings recorded with each result (the shipped values unless the task overrides them)
SETTINGS = ("interpolation_skip", "pixel_weight", "content", "content_weight", "gan_weight")


def _train_phases(task: str, root: Path, psnr_minutes: float, gan_minutes: float, threads: int) -> dict:
    """Steps 1-4 of the module docstring in ``root``: data, CPU-sized bundle, PSNR phase, GAN phase."""
    from pipelines.bundle import derive_bundle

    spec = TASKS[task]
    root.mkdir(parents=True, exist_ok=True)
    train_data, heldout = root / "train_data", root / "heldout_data"
    _write_data(task, spec["train_data"], train_data)
    _write_data(task, spec["heldout_data"], heldout)
    bundle = derive_bundle(spec["bundle"], root / "bundle", spec["overrides"],
                           {**spec["train_overrides"], "pretrain_epochs": 100000, "max_epochs": 100000})
    log = root / "log.txt"
    log.write_text("")

    # PSNR-oriented phase
    limit = time_limit_config(root / "limit_psnr.json", psnr_minutes * 60, bundle)
    psnr_s = train_bundle(bundle, train_data, limit, {}, log, threads, root)
    checkpoint = __import__("torch").load(bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    psnr_iterations = int(checkpoint["trainer"]["iteration"])
    psnr_epochs = psnr_iterations // int(checkpoint["trainer"]["epoch_length"])
    if (bundle / "models" / "model.pt").exists():  # the best validation so far (none before the first validation)
        shutil.copyfile(bundle / "models" / "model.pt", bundle / "models" / "model_psnr.pt")
    shutil.copyfile(bundle / "models" / "model_final.pt", bundle / "models" / "model_psnr_last.pt")

    # GAN phase: resume with pretrain_epochs = the epochs done, so the next epoch is a GAN epoch
    gan_s, gan_iterations = 0.0, 0
    if gan_minutes > 0:
        limit = time_limit_config(root / "limit_gan.json", gan_minutes * 60, bundle)
        gan_s = train_bundle(bundle, train_data, limit, {"pretrain_epochs": psnr_epochs}, log, threads, root)
        checkpoint = __import__("torch").load(bundle / "models" / "checkpoint.pt", map_location="cpu",
                                              weights_only=True)
        assert checkpoint["trainer"]["phase"] == "gan", checkpoint["trainer"]
        gan_iterations = int(checkpoint["trainer"]["iteration"]) - psnr_iterations
    return {"bundle": bundle, "heldout": heldout, "train_data": train_data, "log": log, "psnr_s": psnr_s,
            "psnr_epochs": psnr_epochs, "psnr_iterations": psnr_iterations, "gan_s": gan_s,
            "gan_iterations": gan_iterations}


def _settings(task: str, bundle: Path) -> dict:
    """The parts of a task's report that describe its configuration."""
    spec = TASKS[task]
    config = json.loads((bundle / "configs" / "train.json").read_text())
    return {
        "title": spec["title"],
        "bundle_settings": {k: config.get(k) for k in SETTINGS},
        "baseline": spec["baseline"],
        "overrides": {**spec["overrides"], **spec["train_overrides"]},
        "train_data": spec["train_data"],
        "heldout_data": spec["heldout_data"],
    }


def run_task(task: str, work: Path, psnr_minutes: float, gan_minutes: float, threads: int) -> dict:
    root = work / task
    phases = _train_phases(task, root, psnr_minutes, gan_minutes, threads)
    bundle, heldout, log = phases["bundle"], phases["heldout"], phases["log"]
    psnr_s, psnr_epochs, psnr_iterations = phases["psnr_s"], phases["psnr_epochs"], phases["psnr_iterations"]
    gan_s, gan_iterations = phases["gan_s"], phases["gan_iterations"]

    results = {
        "psnr_phase_best": evaluate_bundle(bundle, heldout, bundle / "models" / "model_psnr.pt", root / "eval_psnr",
                                           log, threads, root),
    }
    if gan_minutes > 0:
        results["gan_final"] = evaluate_bundle(bundle, heldout, bundle / "models" / "model_final.pt",
                                               root / "eval_gan", log, threads, root)
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    return {
        **_settings(task, bundle),
        "psnr_phase": {"epochs": psnr_epochs, "iterations": psnr_iterations, "seconds": round(psnr_s, 1)},
        "gan_phase": {"iterations": gan_iterations, "seconds": round(gan_s, 1)},
        "best_val_psnr_during_training": summary.get("best_metric"),
        "best_val_epoch": summary.get("best_metric_epoch"),
        "heldout": {name: {"cases": r["cases"], "metrics": {k: v["mean"] for k, v in r["metrics"].items()},
                           "gain": r["gain"], "network_beats_interpolation": r["network_beats_interpolation"]}
                    for name, r in results.items()},
        "threads": threads,
    }


def continue_task(task: str, work: Path, minutes: float, threads: int, previous: dict) -> dict:
    """Resume the GAN phase of an earlier run of ``task`` (same bundle, same data) for ``minutes`` more, then
    evaluate the generator at the end (``model_final.pt``) and the best-PSNR one (``model.pt``) on the held-out set."""
    root = work / task
    bundle, log = root / "bundle", root / "log.txt"
    torch = __import__("torch")
    before = int(torch.load(bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)["trainer"]
                 ["iteration"])
    limit = time_limit_config(root / "limit_more.json", minutes * 60, bundle)
    seconds = train_bundle(bundle, root / "train_data", limit, {"pretrain_epochs": previous["psnr_phase"]["epochs"]},
                           log, threads, root)
    state = torch.load(bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)["trainer"]
    assert state["phase"] == "gan", state
    heldout = root / "heldout_data"
    extra = {"gan_final_continued": evaluate_bundle(bundle, heldout, bundle / "models" / "model_final.pt",
                                                    root / "eval_gan_more", log, threads, root),
             "best_val_psnr_continued": evaluate_bundle(bundle, heldout, bundle / "models" / "model.pt",
                                                        root / "eval_best_more", log, threads, root)}
    report = dict(previous)
    report["gan_phase_continued"] = {"iterations": int(state["iteration"]) - before, "seconds": round(seconds, 1)}
    report["heldout"] = {**previous["heldout"],
                         **{name: {"cases": r["cases"], "metrics": {k: v["mean"] for k, v in r["metrics"].items()},
                                   "gain": r["gain"], "network_beats_interpolation": r["network_beats_interpolation"]}
                            for name, r in extra.items()}}
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    report["best_val_psnr_during_training"] = summary.get("best_metric")
    report["best_val_epoch"] = summary.get("best_metric_epoch")
    return report


def markdown(report: dict) -> str:
    lines = ["# Super-resolution quality: SE-ESRGAN generator vs interpolation on held-out synthetic data", "",
             "Generated by `python -m bench.sr_quality` (CPU-sized bundles trained on this machine's CPU; held-out "
             "data written with another seed; metrics on [0, 1] intensities, PSNR peak 1).", ""]
    for r in report["tasks"].values():
        lines += [f"## {r['title']}", "",
                  f"Training: PSNR phase {r['psnr_phase']['epochs']} epochs / {r['psnr_phase']['iterations']} "
                  f"iterations in {r['psnr_phase']['seconds']:.0f} s; GAN phase {r['gan_phase']['iterations']} "
                  f"iterations in {r['gan_phase']['seconds']:.0f} s"
                  + (f", then {r['gan_phase_continued']['iterations']} more GAN iterations in "
                     f"{r['gan_phase_continued']['seconds']:.0f} s (`--continue-gan-minutes`)"
                     if "gan_phase_continued" in r else "")
                  + f". Config: `{json.dumps(r['overrides'])}`"
                  + (f"; bundle settings `{json.dumps(r['bundle_settings'])}`" if "bundle_settings" in r else "")
                  + ".", "",
                  f"| generator | held-out cases | PSNR network | PSNR {r['baseline']} | gain dB | SSIM network | "
                  f"SSIM {r['baseline']} | gain | MSE network | MSE {r['baseline']} | "
                  "cases where the network wins (PSNR) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, h in r["heldout"].items():
            m, g = h["metrics"], h["gain"]
            label = {"psnr_phase_best": "PSNR phase, best val (model.pt)",
                     "gan_final": "after GAN phase (model_final.pt)",
                     "gan_final_continued": "after the continued GAN phase (model_final.pt)",
                     "best_val_psnr_continued": "best val PSNR over the whole run (model.pt)"}[name]
            lines.append(f"| {label} | {h['cases']} | {m['val_psnr']:.2f} | {m['val_psnr_interp']:.2f} | "
                         f"{g['psnr']:+.2f} | {m['val_ssim']:.4f} | {m['val_ssim_interp']:.4f} | {g['ssim']:+.4f} | "
                         f"{m['val_mse']:.5f} | {m['val_mse_interp']:.5f} | "
                         f"{100 * h['network_beats_interpolation']['psnr']:.0f} % |")
        lines.append("")
    return "\n".join(lines)


INTERPOLATION_ALPHAS = (0.0, 0.5, 0.8, 1.0)


def _relative_distance(a_path: Path, b_path: Path) -> float:
    """``||b - a|| / ||a||`` over every floating-point tensor of two state dicts: how far the GAN phase moved."""
    from pipelines.interpolate import read_state_dict

    a, b = read_state_dict(a_path), read_state_dict(b_path)
    diff = sum(float((b[k].double() - v.double()).square().sum()) for k, v in a.items() if v.is_floating_point())
    norm = sum(float(v.double().square().sum()) for v in a.values() if v.is_floating_point())
    return (diff / norm) ** 0.5 if norm else float("nan")


def interpolation_task(task: str, work: Path, psnr_minutes: float, gan_minutes: float, threads: int,
                       alphas: tuple[float, ...] = INTERPOLATION_ALPHAS) -> dict:
    """Train both phases of ``task`` afresh in ``work/<task>_interpolation``, blend the two generators at each alpha
    with ``python -m pipelines interpolate`` and evaluate every blend on the held-out set."""
    from bench.bundle_runs import bench_env

    if gan_minutes <= 0:
        raise ValueError("--interpolation needs a GAN phase: --gan-minutes > 0")
    root = work / f"{task}_interpolation"
    phases = _train_phases(task, root, psnr_minutes, gan_minutes, threads)
    bundle, heldout, log = phases["bundle"], phases["heldout"], phases["log"]
    models = bundle / "models"
    psnr_weights, gan_weights = models / "model_psnr_last.pt", models / "model_final.pt"
    blends = {}
    for alpha in alphas:
        out = models / f"model_alpha_{alpha:.2f}.pt"
        command = [sys.executable, "-m", "pipelines", "interpolate", str(psnr_weights), str(gan_weights),
                   "--alpha", repr(float(alpha)), "--out", str(out)]
        with log.open("a") as f:
            f.write(f"\n$ {' '.join(command)}\n")
            f.flush()
            subprocess.run(command, cwd=root, env=bench_env(threads), stdout=f, stderr=subprocess.STDOUT, check=True)
        r = evaluate_bundle(bundle, heldout, out, root / f"eval_alpha_{alpha:.2f}", log, threads, root)
        blends[f"{alpha:g}"] = {"alpha": float(alpha), "cases": r["cases"],
                                "metrics": {k: v["mean"] for k, v in r["metrics"].items()}, "gain": r["gain"],
                                "network_beats_interpolation": r["network_beats_interpolation"],
                                "eval_seconds": r["seconds"]}
    return {
        **_settings(task, bundle),
        "psnr_phase": {"epochs": phases["psnr_epochs"], "iterations": phases["psnr_iterations"],
                       "seconds": round(phases["psnr_s"], 1)},
        "gan_phase": {"iterations": phases["gan_iterations"], "seconds": round(phases["gan_s"], 1)},
        "generators": {"psnr": psnr_weights.name, "gan": gan_weights.name,
                       "relative_distance": _relative_distance(psnr_weights, gan_weights)},
        "blends": blends,
        "threads": threads,
    }


def interpolation_markdown(report: dict) -> str:
    lines = ["# Network interpolation (ESRGAN): PSNR-phase and GAN-phase SE-ESRGAN generators blended", "",
             "Generated by `python -m bench.sr_quality --interpolation`: a CPU-sized copy of the bundle trained on "
             "this machine's CPU, PSNR phase (pixel L1 only) then GAN phase resumed from it, as ESRGAN does; "
             "`theta = (1 - alpha) * theta_PSNR + alpha * theta_GAN` written by `python -m pipelines interpolate` and "
             "evaluated with the bundle's `evaluate.json` on held-out synthetic data (another seed); metrics on "
             "[0, 1] intensities, PSNR peak 1.", ""]
    for r in report["tasks"].values():
        g = r["generators"]
        lines += [f"## {r['title']}", "",
                  f"Training at {r['threads']} thread(s): PSNR phase {r['psnr_phase']['epochs']} epochs / "
                  f"{r['psnr_phase']['iterations']} iterations in {r['psnr_phase']['seconds']:.0f} s; GAN phase "
                  f"{r['gan_phase']['iterations']} iterations in {r['gan_phase']['seconds']:.0f} s. alpha 0 is "
                  f"`{g['psnr']}` (the generator at the end of the PSNR phase, where the GAN phase starts), alpha 1 "
                  f"`{g['gan']}` (the end of the GAN phase); the GAN phase moved the weights by "
                  f"{100 * g['relative_distance']:.2f} % (relative L2). Config: `{json.dumps(r['overrides'])}`; "
                  f"bundle settings `{json.dumps(r['bundle_settings'])}`.", "",
                  f"| alpha | held-out cases | PSNR | SSIM | MSE | PSNR gain over {r['baseline']} dB | "
                  f"SSIM gain over {r['baseline']} | cases where the network wins (PSNR) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in r["blends"].values():
            m, gain = b["metrics"], b["gain"]
            lines.append(f"| {b['alpha']:g} | {b['cases']} | {m['val_psnr']:.3f} | {m['val_ssim']:.4f} | "
                         f"{m['val_mse']:.5f} | {gain['psnr']:+.3f} | {gain['ssim']:+.4f} | "
                         f"{100 * b['network_beats_interpolation']['psnr']:.0f} % |")
        blends = list(r["blends"].values())
        first = blends[0]["metrics"]
        best_psnr = max(blends, key=lambda b: b["metrics"]["val_psnr"])
        best_ssim = max(blends, key=lambda b: b["metrics"]["val_ssim"])
        lines += ["", f"{r['baseline']} on the same cases: PSNR {first['val_psnr_interp']:.3f}, SSIM "
                  f"{first['val_ssim_interp']:.4f}. Highest PSNR at alpha {best_psnr['alpha']:g}, highest SSIM at "
                  f"alpha {best_ssim['alpha']:g}. One training run, no repeat with another seed: differences of a few "
                  "hundredths of a dB are not shown to exceed run-to-run noise.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["us", "ct"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sr_quality"), help="data, bundles and logs")
    parser.add_argument("--psnr-minutes", type=float, default=8.0, help="PSNR-phase training time per task")
    parser.add_argument("--gan-minutes", type=float, default=3.0, help="GAN-phase training time per task (0: none)")
    parser.add_argument("--continue-gan-minutes", type=float, default=0.0,
                        help="instead of a new run: resume the GAN phase of the tasks' earlier run for this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interpolation", action="store_true",
                        help="train afresh, blend the PSNR- and GAN-phase generators at --alphas and evaluate each "
                        "(results_sr_interpolation.json / .md)")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(INTERPOLATION_ALPHAS),
                        help="--interpolation: the weights of the GAN generator (default 0 0.5 0.8 1)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of results_sr.json / results_sr.md")
    args = parser.parse_args()
    if args.interpolation:
        path = args.out / "results_sr_interpolation.json"
        report = json.loads(path.read_text()) if path.exists() else {}
        report.setdefault("tasks", {})
        for task in args.tasks:
            print(f"[sr_quality] {task}: network interpolation in {args.work / (task + '_interpolation')}", flush=True)
            report["tasks"][task] = interpolation_task(task, args.work, args.psnr_minutes, args.gan_minutes,
                                                       args.threads, tuple(args.alphas))
            write_report(args.out, "results_sr_interpolation", report, interpolation_markdown)
        return
    path = args.out / "results_sr.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("tasks", {})
    for task in args.tasks:
        print(f"[sr_quality] {task}: training and evaluating in {args.work / task}", flush=True)
        if args.continue_gan_minutes > 0:
            report["tasks"][task] = continue_task(task, args.work, args.continue_gan_minutes, args.threads,
                                                  report["tasks"][task])
        else:
            report["tasks"][task] = run_task(task, args.work, args.psnr_minutes, args.gan_minutes, args.threads)
        write_report(args.out, "results_sr", report, markdown)


if __name__ == "__main__":
    main()
