"""``python -m pipelines <command>``: synthetic data, inference, the demo.

Commands:
    synth luna16|brats|isic-seg|isic-cls|image-folder|ultrasound   write a synthetic data set in that real layout
    preprocess     fill a bundle's disk cache (the deterministic preprocessing of every case), in parallel
    infer          run a bundle on NIfTI / MetaImage / NRRD files, DICOM series folders, images
    export         write a trained bundle as one self-contained zip
    verify         check a bundle folder or zip offline (exit 1 and one line per problem)
    interpolate    blend a PSNR-oriented and a GAN-trained generator (ESRGAN network interpolation)
    bench          every network against MONAI's UNet, BasicUNet, SegResNet, DenseNet121 (bench/results.md)
    demo           synthetic data -> train the lung bundle -> evaluate -> infer, in a few minutes on a CPU
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _synth(args: argparse.Namespace) -> int:
    if args.size == "full" and args.layout not in ("luna16", "brats"):
        print(f"error: synth {args.layout}: --size full applies to luna16 and brats only", file=sys.stderr)
        return 2
    if args.layout == "luna16":
        from pipelines.synth.luna16 import write_luna16

        if args.size == "full" and (args.fov_mm is not None or args.length_mm is not None):
            print("error: synth luna16: --fov-mm and --length-mm apply to --size small only; --size full draws "
                  "them per scan from LUNA16's ranges (512 x 512, 120-400 slices)", file=sys.stderr)
            return 2
        scans = write_luna16(
            args.out, cases=args.cases, seed=args.seed, fov_mm=args.fov_mm, length_mm=args.length_mm,
            subsets=args.subsets, size=args.size,
        )
        nodules = sum(len(s.nodules) for s in scans)
        print(f"synth luna16: wrote {len(scans)} scans with {nodules} nodules to {args.out}")
        return 0
    if args.layout == "brats":
        from pipelines.synth.brats import write_brats

        cases = write_brats(args.out, cases=args.cases, naming=args.naming, seed=args.seed, size=args.size)
        print(f"synth brats: wrote {len(cases)} cases ({args.naming} naming) to {args.out}")
        return 0
    if args.layout == "isic-seg":
        from pipelines.synth.isic import write_isic_seg

        images = write_isic_seg(args.out, cases=args.cases, seed=args.seed, hairs=not args.no_hairs)
        print(f"synth isic-seg: wrote {len(images)} images with masks to {args.out}")
        return 0
    if args.layout == "ultrasound":
        from pipelines.synth.ultrasound import write_ultrasound

        images = write_ultrasound(args.out, n_images=args.images or 24, seed=args.seed,
                                  size=(args.height or 256, args.width or 256))
        print(f"synth ultrasound: wrote {len(images)} B-mode images (BUSI layout) to {args.out}")
        return 0
    if args.layout == "isic-cls":
        from pipelines.synth.isic_cls import write_isic_cls

        items = write_isic_cls(args.out, images=args.images or 200, seed=args.seed,
                               size=(args.width or 64, args.height or 48))
        print(f"synth isic-cls: wrote {len(items)} images to {args.out}")
        return 0
    if args.layout == "image-folder":
        from pipelines.synth.image_folder import write_image_folder

        items = write_image_folder(args.out, preset=args.preset, images=args.images or 200, seed=args.seed,
                                   size=(args.width or 64, args.height or 48))
        print(f"synth image-folder: wrote {len(items)} images ({args.preset}) to {args.out}")
        return 0
    raise AssertionError(args.layout)  # argparse restricts the choices



def _infer(args: argparse.Namespace) -> int:
    import time

    from pipelines.inference import infer_volumes, torchrun_env, write_summary

    start = time.time()
    overrides = dict(args.set or [])
    if args.device:
        overrides["device"] = f"$torch.device({args.device!r})"
        if args.device == "cpu":
            overrides["amp"] = False
    if args.overlap is not None:
        overrides["overlap"] = args.overlap
    if args.sw_batch_size is not None:
        overrides["sw_batch_size"] = args.sw_batch_size
    options = {"weights": args.weights, "precision": args.precision, "tta": args.tta, "series": args.series or "",
               "channels_last": {"auto": None, "on": True, "off": False}[args.channels_last]}
    options.update(output_format=args.format, statistics=args.statistics, preview=args.preview)
    if args.backend is not None:  # else the bundle's "backend" key, torch when it has none
        options["backend"] = args.backend
    if args.quiet:  # else each volume's sliding-window bar shows when stderr is a terminal
        options["progress"] = False
    try:
        env = torchrun_env()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if env is not None:
        return _infer_torchrun(args, overrides, options, env, start)
    try:
        results = infer_volumes(args.bundle, args.inputs, args.output, overrides=overrides, **options)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_summary(args.output, results, wall_seconds=time.time() - start)
    failed = [r for r in results if not r.ok]
    ok = len(results) - len(failed)
    print(f"infer: {ok} written, {len(failed)} failed, output in {args.output}")
    return 1 if failed else 0


def _infer_torchrun(args: argparse.Namespace, overrides: dict, options: dict, env, start: float) -> int:
    """``torchrun ... -m pipelines infer``: this rank's share of the inputs, then every rank's results gathered on
    every rank (one exit code everywhere: 1 when an input failed on any rank, 2 when a rank could not run), the
    merged summary written and the totals printed by rank 0."""
    import datetime

    import torch
    import torch.distributed as dist

    from pipelines.inference import infer_volumes, torchrun_device

    try:
        device, backend = torchrun_device(env, bool(args.device) or "device" in overrides, torch.cuda.device_count())
    except ValueError as e:  # the same on every rank of this machine: they all stop, one says why
        if env.local_rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if device is not None:
        overrides["device"] = f"$torch.device({device!r})"
    if backend == "nccl":
        torch.cuda.set_device(device)  # all_gather_object stages its bytes on the current CUDA device
    try:
        # a rank done with its share waits in the final gather for the slowest one; torchrun stops every rank when
        # one dies, so a long timeout does not keep a failed run alive
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
    except (RuntimeError, ValueError) as e:
        print(f"error: rank {env.rank}: cannot join the torchrun process group ({str(e).strip()[:300]})",
              file=sys.stderr)
        return 2
    try:
        fatal = None
        try:
            results = infer_volumes(args.bundle, args.inputs, args.output, overrides=overrides, rank=env.rank,
                                    world_size=env.world_size,
                                    echo=lambda line: print(f"[rank {env.rank}] {line}", flush=True), **options)
        except (FileNotFoundError, ValueError) as e:  # a bad bundle or output folder: every rank meets it
            results, fatal = [], str(e)
        gathered: list = [None] * env.world_size
        dist.all_gather_object(gathered, (results, fatal))
        code = _report_torchrun(gathered, args.output, env, start)
        # torchrun stops every other rank as soon as one exits non-zero: none exits before rank 0 wrote the summary
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return code


def _report_torchrun(gathered: list, output: str, env, start: float) -> int:
    """The exit code of every rank from every rank's ``(results, fatal error)``; rank 0 prints the errors that
    stopped ranks, or writes the merged summary and prints the totals."""
    import time

    from pipelines.distributed import is_main_process
    from pipelines.inference import merge_results, write_summary

    fatal_ranks: dict[str, list[int]] = {}
    for rank, (_, message) in enumerate(gathered):
        if message:
            fatal_ranks.setdefault(message, []).append(rank)
    if fatal_ranks:
        if is_main_process():
            for message, ranks in fatal_ranks.items():
                where = "" if len(ranks) == env.world_size else f" (rank {', '.join(map(str, ranks))})"
                print(f"error: {message}{where}", file=sys.stderr, flush=True)
        return 2
    merged = merge_results(part for part, _ in gathered)
    failed = [r for r in merged if not r.ok]
    if is_main_process():
        write_summary(output, merged, world_size=env.world_size, wall_seconds=time.time() - start)
        print(f"infer: {len(merged) - len(failed)} written, {len(failed)} failed, output in {output} "
              f"({env.world_size} ranks)", flush=True)
    return 1 if failed else 0


def _interpolate(args: argparse.Namespace) -> int:
    from pipelines.interpolate import interpolate_files

    try:
        out = interpolate_files(args.psnr, args.gan, args.alpha, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: interpolate: {e}", file=sys.stderr)
        return 2
    print(f"interpolate: wrote {out} = {1 - args.alpha:g} x {args.psnr} + {args.alpha:g} x {args.gan}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(workdir=args.workdir, epochs=args.epochs, cases=args.cases, fresh=args.fresh)


def _bench(bench_args: list[str]) -> int:
    # bench/ is part of the repository, not of the product: imported here only, never by the parser, so that an
    # exported bundle (networks/ and pipelines/ alone) runs every other command
    try:
        from bench.networks import main as bench_main
    except ModuleNotFoundError:
        print("error: python -m pipelines bench needs the repository's bench/ package, which an exported bundle "
              "does not carry; run it from a clone of the repository", file=sys.stderr)
        return 2
    return bench_main(bench_args)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.bundle import parse_override
    from pipelines.io.formats import OUTPUT_FORMATS

    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic data set in a real data set's layout (small, or luna16 "
                           "and brats at full size)")
    synth.add_argument("layout", choices=["luna16", "brats", "isic-seg", "isic-cls", "image-folder", "ultrasound"],
                       help="which data set layout to write")
    synth.add_argument("--out", required=True, help="folder to write the data set into")
    synth.add_argument("--cases", type=int, default=6, help="number of scans (default 6)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same data")
    synth.add_argument("--size", choices=["small", "full"], default="small",
                       help="luna16, brats: small scans (default, seconds on a CPU) or the real data set's size: "
                       "luna16 512 x 512 x 120-400 voxels, brats 240 x 240 x 155 (a few seconds a case)")
    synth.add_argument("--fov-mm", type=float, default=None,
                       help="luna16 --size small: in-plane field of view in mm (default 100)")
    synth.add_argument("--length-mm", type=float, default=None,
                       help="luna16 --size small: scan length along z in mm (default 80)")
    synth.add_argument("--subsets", type=int, default=2, help="luna16: number of subset* folders (default 2)")
    synth.add_argument("--naming", choices=["2021", "2023"], default="2021",
                       help="brats: 2018-2021 (<case>_t1ce.nii.gz, ET=4) or 2023 (<case>-t1c.nii.gz, ET=3) naming")
    synth.add_argument("--no-hairs", action="store_true", help="isic-seg: draw no hairs")
    synth.add_argument("--images", type=int, default=None,
                       help="isic-cls, image-folder, ultrasound: number of images (default 200; ultrasound 24)")
    synth.add_argument("--width", type=int, default=None,
                       help="isic-cls, image-folder, ultrasound: image width (default 64; ultrasound 256)")
    synth.add_argument("--height", type=int, default=None,
                       help="isic-cls, image-folder, ultrasound: image height (default 48; ultrasound 256)")
    synth.add_argument("--preset", choices=["kvasir", "covid-ct"], default="kvasir",
                       help="image-folder: which class-per-folder data set to imitate")
    synth.set_defaults(func=_synth)

    infer = sub.add_parser(
        "infer", help="segment volumes with a trained bundle",
        description="Run a bundle's inference on volumes; each output overlays its input (same shape, spacing, "
                    "origin, direction), and OUTPUT/inference_summary.json records every input. Under torchrun each "
                    "rank runs a share of the inputs. Exit code 0 when all inputs succeeded, 1 when any failed, 2 on "
                    "a bad bundle.",
    )
    infer.add_argument("bundle", help="bundle folder (with configs/inference.json and models/model.pt)")
    infer.add_argument("inputs", nargs="+",
                       help="NIfTI, MetaImage or NRRD files, DICOM series folders, or folders of them "
                       "(BraTS case folders for the brats bundle, images for the isic bundle)")
    infer.add_argument("--output", required=True, help="folder for the predictions")
    infer.add_argument("--weights", help="weights file instead of <bundle>/models/model.pt")
    infer.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: CUDA when available)")
    infer.add_argument("--overlap", type=float, help="sliding-window overlap (default: the bundle's)")
    infer.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the bundle's)")
    infer.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="auto: AMP on CUDA as the bundle says, fp32 on a CPU; "
                            "bf16 also on CPUs with AMX/AVX-512 BF16")
    infer.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                       help="channels-last memory format for the network (auto: on with bf16/fp16, the fast path)")
    infer.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                       help="the network's runtime (default: the bundle's \"backend\" key, else torch); onnxruntime: "
                       "exported once to ONNX (cached beside the weights) and run by ONNX Runtime on the CPU in fp32 "
                       "inside the same sliding window")
    infer.add_argument("--series", metavar="UID", help="DICOM folders holding several series: run this "
                       "SeriesInstanceUID only (default: each series is its own output, named by its UID)")
    infer.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8 passes per window in 3D)")
    infer.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="override any inference.json value, e.g. --set stitch_device=cpu (repeatable)")
    infer.add_argument("--format", choices=list(OUTPUT_FORMATS), default=None,
                       help="prediction file format (default: the bundle's own, NIfTI for the volume bundles); "
                       "dicom-seg: a DICOM Segmentation referencing the input series (DICOM folders only)")
    infer.add_argument("--statistics", action="store_true",
                       help="write <name>_statistics.json per case: voxel count, volume (ml) and mean input "
                       "intensity of each label")
    infer.add_argument("--preview", action="store_true",
                       help="write <name>_preview.png per case: axial, coronal and sagittal planes through the "
                       "largest finding, with the prediction outlined")
    infer.add_argument("--quiet", action="store_true",
                       help="no progress bars (they show only when stderr is a terminal; PIPELINES_QUIET=1 too)")
    infer.set_defaults(func=_infer)

    export = sub.add_parser("export", help="write a trained bundle as one self-contained zip (runs without this repo)",
                            description="Exit code 0 when the zip was written, 2 on an error.")
    from pipelines.export import add_arguments as add_export_arguments
    from pipelines.export import run_from_args as run_export

    add_export_arguments(export)
    export.set_defaults(func=run_export)

    verify = sub.add_parser("verify", help="check a bundle folder or zip offline; one line per problem",
                            description="Exit code 0 when no problem was found, 1 otherwise.")
    from pipelines.verify import add_arguments as add_verify_arguments
    from pipelines.verify import run_from_args as run_verify

    add_verify_arguments(verify)
    verify.set_defaults(func=run_verify)

    preprocess = sub.add_parser("preprocess", help="preprocess every case of a bundle's data set into its disk cache",
                                description="Exit code 0 when every case is cached, 2 on an error.")
    from pipelines.preprocess import add_arguments as add_preprocess_arguments
    from pipelines.preprocess import run_from_args as run_preprocess

    add_preprocess_arguments(preprocess)
    preprocess.set_defaults(func=run_preprocess)

    bench = sub.add_parser("bench", help="speed and memory of every network against MONAI's, in the same run "
                           "(from the repository; 'bench --help' lists its options)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m bench.networks")
    bench.set_defaults(func=lambda args: _bench(args.bench_args))

    interpolate = sub.add_parser(
        "interpolate", help="blend a PSNR-oriented and a GAN-trained generator (ESRGAN network interpolation)",
        description="Write (1 - alpha) * PSNR + alpha * GAN for every floating-point tensor (integer buffers from the "
                    "model alpha weights more) as a plain state dict, loadable as a bundle's model.pt. Inputs: "
                    "model.pt / model_final.pt or a checkpoint.pt holding 'generator'. Exit code 0, or 2 on an error.")
    interpolate.add_argument("psnr", help="weights of the PSNR-oriented generator (alpha 0)")
    interpolate.add_argument("gan", help="weights of the GAN-trained generator (alpha 1)")
    interpolate.add_argument("--alpha", type=float, required=True, help="weight of the GAN generator, in [0, 1]")
    interpolate.add_argument("--out", required=True, help="file to write (written to a temporary name, then renamed)")
    interpolate.set_defaults(func=_interpolate)

    demo = sub.add_parser("demo", help="synthetic LUNA16 -> train E-DU -> evaluate -> infer (CPU, minutes)")
    demo.add_argument("--workdir", default="demo_run", help="folder for data, the trained bundle and outputs")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    demo.add_argument("--cases", type=int, default=None, help="synthetic training scans (default: the demo's)")
    demo.add_argument("--fresh", action="store_true", help="delete the work folder first")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # a GPU decoder we do not use
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are bench.networks' own, parsed there
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
