"""Any volume on disk -> the bundle's preprocessing -> sliding window -> inverse transforms -> a file in its geometry.

This runs the pieces of a bundle's inference workflow (``configs/train.json`` with the ``configs/inference.json``
overlay: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``) one input at a time, so that one
unreadable scan is reported and skipped instead of stopping the rest. The output overlays its input exactly: same
shape, spacing, origin and direction, because ``postprocessing`` inverts every preprocessing step (``Invertd``) before
writing. Files are written to a temporary name and renamed, so an interrupted run never leaves a partial result.

Bad inputs, each one failed result naming its file while the other inputs still run (``python -m pipelines infer``
exits 1): unreadable or truncated files, a 4D file (or 2D) where the network is 3D (or 3D where it is 2D), a wrong
channel count (RGB for a grey network, grey for an RGB one, from the header), and NaN or Inf intensities (an error,
not a warning: they propagate through the network and silently give an empty or meaningless mask). An output
folder that cannot be written is one error before any input is read (``ValueError``; the CLI exits 2).

``output_format``/``statistics``/``preview`` (``--format dicom-seg|nifti|nrrd|mha``, ``--statistics``, ``--preview``)
turn the saver's file into a DICOM SEG or another format and add a statistics JSON and a PNG preview beside it, in the
staging folder before the case is published (:mod:`pipelines.clinical_outputs`).

``backend`` (``--backend onnxruntime``, or the bundle's ``"backend"`` key) runs the loaded network in ONNX Runtime on
the CPU, exported once and cached beside the weights, inside the same inferer (:mod:`pipelines.inferers`).

Under ``torchrun`` every rank lists the inputs, removes repeats and names the outputs identically, then runs its own
share of that final list (:func:`shard`: volume ``i`` on rank ``i % world_size``), so an output's name never depends
on the rank; :func:`merge_results` puts the ranks' results back in the list's order and :func:`write_summary` writes
``<output>/inference_summary.json`` (one record per input, and totals) for sharded and single-process runs alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipelines.bundle import build_network, bundle_parser, workflow_configs
from pipelines.clinical_outputs import ClinicalOutputs
from pipelines.data.volumes import list_volumes, volume_name
from pipelines.inferers import ChannelsLast, MirrorTTA  # the network wrappers; importable from here too
from pipelines.inferers import onnxruntime_network
from pipelines.io import SELECTED_SERIES, dicom_series, ensure_writable, read_image_information, write_json_atomic
from pipelines.io.formats import READER_SUFFIXES, has_suffix
from pipelines.io.readers import count_nonfinite, is_floating, read_voxels
from pipelines.io.weights import load_weights

__all__ = [
    "InferenceResult", "BundleInferer", "ChannelsLast", "MirrorTTA", "SUMMARY_NAME", "TorchrunEnv", "error_message",
    "infer_volumes", "inference_summary", "merge_results", "shard", "torchrun_device", "torchrun_env",
    "write_summary",
]

#: the runtimes of a bundle's network (``--backend``, the config's ``backend`` key)
BACKENDS = ("torch", "onnxruntime")

#: the run's record in its output folder: one entry per input, and totals (:func:`write_summary`)
SUMMARY_NAME = "inference_summary.json"

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    """What happened to one input."""

    input: str
    output: str | None
    seconds: float
    error: str | None = None
    #: of ``seconds``, the time spent in the sliding-window inferer (network and stitching)
    inferer_seconds: float | None = None
    #: the ``torchrun`` rank that ran it (0 in a single process)
    rank: int = 0
    #: its position in the run's final list of volumes; ``None`` for an input that failed before it became one
    #: (it could not be listed, or held no such DICOM series)
    index: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def error_message(error: BaseException, source: str | Path) -> str:
    """One line for the user: the innermost cause (MONAI wraps transform errors in "applying transform ..."),
    prefixed by the input's path unless the message names it already."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    message = lines[0] if lines else type(error).__name__
    # MONAI's SaveImage/LoadImage append the tracebacks of every writer or reader they tried: keep the final cause
    causes = [ln for ln in lines[1:] if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", ln)]
    if causes:
        message = f"{message.rstrip('.')} ({causes[-1]})"
    if type(error).__name__ not in ("ValueError", "RuntimeError"):
        message = f"{type(error).__name__}: {message}"
    return message if str(source) in message else f"{source}: {message}"


class BundleInferer:
    """Build a bundle's inference pieces once and apply them to volumes one by one.

    Args:
        bundle_dir: the bundle folder (``configs/train.json`` and the inference overlay ``configs/inference.json``,
            merged as :func:`pipelines.bundle.workflow_configs` lists them).
        output_dir: where the predictions go.
        weights: weights file; defaults to the config's ``ckpt_path`` (``<bundle>/models/model.pt``).
        overrides: config values to override (``{"overlap": 0.25, "device": "cpu"}``...).
        config_file: another inference overlay inside the bundle (read after ``train.json``).
        precision: ``"auto"`` (the config's ``amp`` on CUDA, fp32 on a CPU), ``"fp32"``, ``"bf16"`` (autocast on the CPU
            too, fast where the CPU has AMX/AVX-512 BF16) or ``"fp16"`` (CUDA only).
        tta: average the outputs over mirrored inputs (:class:`MirrorTTA` on every spatial axis).
        channels_last: run the network in the channels-last memory format (:class:`ChannelsLast`); ``None`` turns it
            on with reduced precision (``"bf16"``, ``"fp16"``, or ``"auto"`` when that means AMP on CUDA), the fast
            path, and leaves plain fp32 as it is.
        output_format, statistics, preview: the clinical outputs of every prediction
            (:class:`~pipelines.clinical_outputs.ClinicalOutputs`: ``"dicom-seg"``, ``"nifti"``, ``"nrrd"``,
            ``"mha"`` or ``None`` for the saver's own file; a statistics JSON; a PNG preview).
        progress: a tqdm bar over the sliding window's windows of each volume (MONAI's ``progress`` flag, set on
            any inferer that has one); ``None``: :func:`pipelines.engines.progress.show_progress` (stderr is a
            terminal, rank 0, no ``PIPELINES_QUIET``); the config's ``show_progress`` is set to the same.
        backend: ``"torch"`` or ``"onnxruntime"``: the network, built and loaded as for torch, exported once to ONNX
            (cached beside the weights) and run by ONNX Runtime on the CPU inside the same inferer
            (:func:`pipelines.inferers.onnxruntime_network`); fp32 only, no channels-last, a CPU device. ``None``:
            the config's ``backend`` key, ``"torch"`` when it has none.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        output_dir: str | Path,
        *,
        weights: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        config_file: str = "configs/inference.json",
        precision: str = "auto",
        tta: bool = False,
        channels_last: bool | None = None,
        output_format: str | None = None,
        statistics: bool = False,
        preview: bool = False,
        progress: bool | None = None,
        backend: str | None = None,
    ) -> None:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        self.bundle_dir = Path(bundle_dir).resolve()
        config = self.bundle_dir / config_file
        if not config.is_file():
            raise FileNotFoundError(f"{config}: bundle inference config not found")
        # the inference workflow's configs (pipelines.bundle.WORKFLOWS): train.json, then the inference overlay
        config_files = [*workflow_configs(self.bundle_dir, "inference")[:-1], config]
        self.output_dir = Path(output_dir)
        ensure_writable(self.output_dir, what="predictions")
        _remove_dead_staging(self.output_dir)
        # every saver writes into this private folder; a finished prediction is moved out under its unique name, so a
        # killed run leaves no file that looks like a result, and two inputs of one name cannot overwrite each other
        self.staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-{_host()}-",
                                             dir=self.output_dir))
        try:
            self._setup(config_files, overrides, weights, precision, tta, channels_last, progress, backend)
            self._setup_clinical(output_format, statistics, preview)
        except BaseException:
            self.close()  # a bundle that does not build leaves nothing behind
            raise

    def _setup(self, config_files: list[Path], overrides, weights, precision: str, tta: bool,
               channels_last: bool | None, progress: bool | None = None, backend: str | None = None) -> None:
        self.parser = bundle_parser(self.bundle_dir, files=config_files,
                                    overrides={"output_dir": str(self.staging), "dataset_dir": "", "datalist": []})
        self.parser.update(dict(overrides or {}))
        if progress is None and "show_progress" in dict(overrides or {}):  # --set show_progress=false
            progress = bool(self._build("show_progress"))
        elif progress is None:
            from pipelines.engines.progress import show_progress

            progress = show_progress()
        self.progress = bool(progress)
        self.parser["show_progress"] = self.progress
        self.device = torch.device(self._build("device"))
        self.backend = self._backend(backend, precision, channels_last)  # before the network goes to the device
        for key in ("network_def", "network"):  # network_def is resolved once; network reuses it
            if key in self.parser:
                self.network = build_network(self.bundle_dir, parser=self.parser, files=config_files, key=key)
        self._spatial_dims = self._config_int("network_def#spatial_dims")
        self._in_channels = self._config_int("network_def#in_channels")
        weights = weights or self._build("ckpt_path")
        load_weights(self.network, weights, missing_hint="train the bundle first, or pass --weights")
        self.network.eval()
        self.precision = precision
        self.amp = bool(self._build("amp")) if "amp" in self.parser else False
        self.amp_dtype = self._build("amp_dtype") if "amp_dtype" in self.parser else torch.float16
        dims = self._spatial_dims if self._spatial_dims is not None else 3
        if channels_last is None:
            channels_last = self.reduced_precision
        self.channels_last = bool(channels_last)
        if self.backend == "onnxruntime":
            self.network = self._onnxruntime(weights, dims)
        if self.channels_last:
            self.network = ChannelsLast(self.network, dims).eval()
        if tta:
            self.network = MirrorTTA(self.network, tuple(range(dims))).eval()
        self.preprocessing = self._build("preprocessing")
        self.inferer = self._build("inferer")
        if hasattr(self.inferer, "progress"):  # MONAI's sliding window: a tqdm bar over each volume's windows
            self.inferer.progress = self.progress
        self.postprocessing = self._build("postprocessing")
        self.postfix = self._save_postfix()
        self._list_inputs = self._build("list_inputs") if "list_inputs" in self.parser else list_volumes

    def _backend(self, backend: str | None, precision: str, channels_last: bool | None) -> str:
        """The network's runtime: ``backend``, else the config's ``backend`` key, else ``"torch"``; one-line
        ``ValueError`` for an unknown one and for what ONNX Runtime does not run here (CUDA, reduced precision,
        channels-last)."""
        where = "--backend"
        if backend is None:
            backend = str(self._build("backend")) if "backend" in self.parser else "torch"
            where = f"{self.bundle_dir / 'configs'}: 'backend'"
        if backend not in BACKENDS:
            raise ValueError(f"{where} must be {' or '.join(BACKENDS)}, got {backend!r}")
        if backend == "onnxruntime":
            import importlib.util

            if importlib.util.find_spec("onnxruntime") is None:
                raise ValueError("backend onnxruntime needs the onnxruntime package (requirements.txt pins it: "
                                 "pip install onnxruntime)")
            if self.device.type != "cpu":
                raise ValueError(f"backend onnxruntime runs on the CPU (CPUExecutionProvider), not on {self.device}: "
                                 "use --device cpu, or --backend torch on a GPU")
            if precision in ("bf16", "fp16"):
                raise ValueError(f"backend onnxruntime runs the network in fp32, not {precision}: use "
                                 f"--precision fp32, or --backend torch for {precision}")
            if channels_last:
                raise ValueError("backend onnxruntime chooses its own memory layout: --channels-last applies to "
                                 "--backend torch")
        return backend

    def _onnxruntime(self, weights: str | Path, dims: int) -> torch.nn.Module:
        """The loaded network exported to ONNX (once per weights file) in an ONNX Runtime session, traced at the
        inferer's window (``roi_size``) or else the metadata's input shape, batch 2."""
        inferer = self._build("inferer")  # built here already to read its window; the parser keeps this instance
        roi = getattr(inferer, "roi_size", None)
        roi = [int(roi)] * dims if isinstance(roi, int) else list(roi) if roi is not None else None
        if roi is None or len(roi) != dims or min(roi) <= 0:
            roi = self._metadata_spatial_shape(dims)
        channels = self._in_channels or 1
        try:
            return onnxruntime_network(self.network, weights, (2, channels, *roi), fallback_dir=self.staging)
        except ValueError as e:
            raise ValueError(f"{self.bundle_dir}: its network does not export to ONNX for the onnxruntime backend "
                             f"({e})") from None

    def _metadata_spatial_shape(self, dims: int) -> list[int]:
        """``metadata.json``'s input ``spatial_shape``; a ``"32*n"`` entry (any multiple of 32) counts as 64."""
        import json

        meta = json.loads((self.bundle_dir / "configs" / "metadata.json").read_text())
        spec = next(iter(meta["network_data_format"]["inputs"].values()))["spatial_shape"]
        shape = []
        for s in spec:
            text = str(s).replace(" ", "")
            shape.append(int(text.split("*")[0]) * 2 if text.endswith("*n") else int(text))
        if len(shape) != dims:
            raise ValueError(f"{self.bundle_dir / 'configs' / 'metadata.json'}: input spatial_shape {spec} is not "
                             f"{dims}D")
        return shape

    def _setup_clinical(self, output_format: str | None, statistics: bool, preview: bool) -> None:
        """``--format/--statistics/--preview``: labels from the config's ``label_names`` or the bundle's metadata."""
        label_names = self._build("label_names") if "label_names" in self.parser else None
        self.clinical = ClinicalOutputs.from_bundle(self.bundle_dir, label_names=label_names,
                                                    output_format=output_format, statistics=statistics,
                                                    preview=preview)

    def _clinical_outputs(self, item: dict, default_stem: str, source: str) -> Path | None:
        """Write the clinical outputs of the prediction the saver left in the staging folder; the prediction's
        staged path afterwards (``None`` without clinical outputs, or when no saver wrote a file)."""
        staged = sorted(p for p in self.staging.rglob("*") if p.is_file())
        if not self.clinical.active or not staged:
            return None
        expected = self.staging / f"{default_stem}{self.postfix}"
        prediction = expected if expected in staged else staged[0]
        return self.clinical.write(prediction, item, default_stem, source)

    def _build(self, key: str) -> Any:
        """``parser.get_parsed_content(key)`` with a one-line error naming the config and the key."""
        try:
            return self.parser.get_parsed_content(key)
        except Exception as e:  # noqa: BLE001 - MONAI wraps every instantiation error; the user needs one line
            raise ValueError(f"{self.bundle_dir / 'configs'}: cannot build {key!r} ({_one_line(e)})") from None

    def close(self) -> None:
        """Remove the staging folder (what is left there is only what a failed input began to write)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def _config_int(self, key: str) -> int | None:
        try:
            return int(self.parser.get_parsed_content(key)) if key in self.parser else None
        except (TypeError, ValueError):
            return None

    def _check_input(self, item: dict) -> None:
        """Header checks (no voxels read): spatial dimensions and channels against the network's.

        ``ValueError`` naming the file. DICOM folders and files SimpleITK cannot read are left to the reader."""
        files = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
        channels = 0
        for name in files:
            path = Path(str(name))
            if path.is_dir():
                series = dicom_series(path, item.get("series_uid", ""))
                if len(series) > 1:
                    raise ValueError(f"{path}: holds {len(series)} DICOM series ({', '.join(s.uid for s in series)});"
                                     " choose one with --series UID")
                return
            try:
                info = read_image_information(path)
            except ValueError:
                if has_suffix(path, READER_SUFFIXES) or not path.exists():
                    raise
                return  # a PNG or JPEG SimpleITK cannot read: the bundle's own reader decides, and says why
            if self._spatial_dims is not None and info.GetDimension() != self._spatial_dims:
                hint = " (a time series or several volumes in one file? pass one volume)" \
                    if info.GetDimension() > self._spatial_dims else ""
                raise ValueError(f"{path}: {info.GetDimension()}D image, this bundle's network takes "
                                 f"{self._spatial_dims}D input{hint}")
            channels += info.GetNumberOfComponents()
            # integer files cannot hold NaN / Inf: read floating-point ones only
            nan, inf = count_nonfinite(read_voxels(path)) if is_floating(info) else (0, 0)
            if nan or inf:
                raise ValueError(f"{path}: the image holds {nan} NaN and {inf} Inf value(s); they would make the "
                                 "prediction meaningless, so fix or replace them (e.g. with the background value)")
        if self._in_channels is not None and channels != self._in_channels:
            kinds = {1: "grey", 3: "RGB", 4: "RGBA"}
            what = f"{channels} channel(s)" + (f" ({kinds[channels]})" if channels in kinds else "")
            raise ValueError(f"{_source(item)}: {what}, this bundle's network takes {self._in_channels}"
                             + (f" ({kinds[self._in_channels]})" if self._in_channels in kinds else ""))

    def _save_postfix(self) -> str:
        for t in getattr(self.postprocessing, "transforms", []):
            layout = getattr(getattr(t, "saver", None), "folder_layout", None)
            if layout is not None:
                return f"_{layout.postfix}{layout.ext}" if layout.postfix else layout.ext
        return "_seg.nii.gz"

    def output_path(self, image: str | Path, stem: str | None = None) -> Path:
        """Where the prediction of ``image`` is written: ``<stem><postfix>``, the stem by default its volume name."""
        return self.output_dir / f"{stem or volume_name(image)}{self.postfix}"

    def _publish(self, default_stem: str, stem: str) -> list[Path]:
        """Move what the savers wrote into the staging folder to the output folder, ``default_stem`` renamed."""
        moved = []
        for path in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            rel = path.relative_to(self.staging)
            name = rel.name
            if stem != default_stem:
                name = stem + name[len(default_stem):] if name.startswith(default_stem) else f"{stem}_{name}"
            target = self.output_dir / rel.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(target)
        return moved

    @property
    def reduced_precision(self) -> bool:
        """Whether the network runs under bf16/fp16 autocast."""
        return self.precision in ("bf16", "fp16") or (
            self.precision == "auto" and self.amp and self.device.type == "cuda")

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            if self.device.type != "cuda":
                raise ValueError("fp16 inference needs a CUDA device; use bf16 on a CPU")
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "auto" and self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def list_inputs(self, path: str | Path) -> list[dict]:
        """Expand one user input into data items: the config's ``list_inputs`` callable when it has one (BraTS case
        folders, 2D images...), else :func:`~pipelines.data.volumes.list_volumes`."""
        return list(self._list_inputs(path))

    def __call__(self, image: str | Path | dict, stem: str | None = None) -> InferenceResult:
        """Run on one input: a path (``{"image": path}``) or a data item from :meth:`list_inputs`.

        ``stem`` names the output (``<stem><postfix>``); :func:`infer_volumes` gives each input a unique one."""
        start = time.time()
        item = dict(image) if isinstance(image, dict) else {"image": str(image)}
        source = _source(item)
        default_stem = volume_name(item["image"] if isinstance(item["image"], (str, Path)) else source)
        stem = stem or default_stem
        out = self.output_path(source, stem)
        token = SELECTED_SERIES.set(str(item.get("series_uid", "")))
        try:
            self._check_input(item)
            self.clinical.check_input(item, source)
            data = self.preprocessing(item)
            image = data["image"]
            if torch.is_tensor(image) and image.is_floating_point() and not torch.isfinite(image).all():
                nan, inf = int(torch.isnan(image).sum()), int(torch.isinf(image).sum())
                raise ValueError(f"{source}: the image holds {nan} NaN and {inf} Inf value(s); they would make the "
                                 "prediction meaningless, so fix or replace them (e.g. with the background value)")
            with torch.inference_mode(), self._autocast():
                batch = data["image"].unsqueeze(0).to(self.device)
                inferer_start = time.time()
                data["pred"] = self.inferer(batch, self.network)[0].float()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                inferer_seconds = time.time() - inferer_start
            self.postprocessing(data)
            prediction = self._clinical_outputs(item, default_stem, source)
            staged = sorted(p for p in self.staging.rglob("*") if p.is_file())  # _publish's order
            moved = self._publish(default_stem, stem)
            if prediction is not None:  # the prediction among the clinical outputs
                out = moved[staged.index(prediction)]
        except Exception as e:  # one bad input must not stop the others; the caller reports it
            for partial in (p for p in self.staging.rglob("*") if p.is_file()):
                partial.unlink()
            return InferenceResult(source, None, time.time() - start, error_message(e, source))
        finally:
            SELECTED_SERIES.reset(token)
        if out not in moved and moved:  # a saver with its own naming (PNG masks, BraTS label maps...)
            out = next((p for p in moved if p.name.startswith(stem)), moved[0])
        return InferenceResult(source, str(out), time.time() - start, inferer_seconds=inferer_seconds)


def _source(item: dict) -> str:
    """How an input is named in messages: its case/name folder or file, else its image path."""
    image = item["image"]
    if isinstance(image, (list, tuple)):
        return str(Path(str(image[0])).parent) if image else str(item.get("case", ""))
    return str(image)


def infer_volumes(
    bundle_dir: str | Path,
    inputs: list[str | Path],
    output_dir: str | Path,
    *,
    weights: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    echo=print,
    precision: str = "auto",
    tta: bool = False,
    channels_last: bool | None = None,
    series: str = "",
    rank: int = 0,
    world_size: int = 1,
    output_format: str | None = None,
    statistics: bool = False,
    preview: bool = False,
    progress: bool | None = None,
    backend: str | None = None,
) -> list[InferenceResult]:
    """Run a bundle on every volume in ``inputs`` (files, DICOM folders, or folders of volumes).

    Inputs that name the same file (and series) twice are run once, with a warning; outputs are named by
    :func:`output_stems`, so no two inputs share one. ``series`` keeps only that SeriesInstanceUID of DICOM folders
    that hold several (each other series is otherwise its own output).

    Each input is expanded with the bundle's ``list_inputs`` (an optional ``inference.json`` id: a callable mapping
    a path to data items, e.g. :func:`pipelines.data.brats.brats_cases` for case folders) or else
    :func:`~pipelines.data.volumes.list_volumes`; an input that cannot be expanded or
    read becomes a failed result with its error, and the others still run. ``echo`` receives one progress line per
    volume.

    ``rank`` and ``world_size`` (a ``torchrun`` run) keep this process's share of the final list of volumes,
    :func:`shard`; the inputs that fail while being listed, and their messages and the repeat warnings, are rank 0's,
    so that the ranks' results together hold every input once (:func:`merge_results`). A summary of an earlier run
    in ``output_dir`` (:data:`SUMMARY_NAME`) is removed by rank 0 before the first volume runs, so that a run killed
    midway leaves none that describes other files; :func:`write_summary` writes the new one.

    ``output_format``, ``statistics`` and ``preview``: the clinical outputs of :class:`BundleInferer`; ``progress``:
    its sliding-window bar (``None``: shown when stderr is a terminal, see :mod:`pipelines.engines.progress`);
    ``backend``: its network's runtime (``None``: the bundle's ``backend`` key, else torch).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world size")
    main_rank = rank == 0
    engine = BundleInferer(bundle_dir, output_dir, weights=weights, overrides=overrides, precision=precision, tta=tta,
                           channels_last=channels_last, output_format=output_format, statistics=statistics,
                           preview=preview, progress=progress, backend=backend)
    try:
        volumes: list[dict] = []
        results: list[InferenceResult] = []
        for item in inputs:
            try:
                found = engine.list_inputs(item)
            except ValueError as e:
                if main_rank:
                    results.append(InferenceResult(str(item), None, 0.0, str(e)))
                    echo(f"error: {e}")
                continue
            if series:
                found = [v for v in found if v.get("series_uid", series) == series]
                if not found and main_rank:
                    results.append(InferenceResult(str(item), None, 0.0, f"{item}: no DICOM series {series}"))
                    echo(f"error: {item}: no DICOM series {series}")
            volumes.extend(found)
        volumes, duplicates = unique_inputs(volumes)
        if main_rank:
            for dup in duplicates:
                echo(f"warning: {dup} is given more than once; it is run once")
        stems = output_stems(volumes)  # ValueError before anything is written when names cannot be made unique
        if main_rank:
            (engine.output_dir / SUMMARY_NAME).unlink(missing_ok=True)
        for i, (volume, stem) in shard(list(zip(volumes, stems)), rank, world_size):
            result = engine(volume, stem)
            result.rank, result.index = rank, i
            results.append(result)
            if result.ok:
                echo(f"[{i + 1}/{len(volumes)}] {result.input} -> {result.output} ({result.seconds:.1f} s)")
            else:
                echo(f"[{i + 1}/{len(volumes)}] error: {result.error}")
        return results
    finally:
        engine.close()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[tuple[int, T]]:
    """This rank's share of ``items`` with their indices: item ``i`` goes to rank ``i % world_size`` (round robin,
    so shares differ by one item at most and neighbouring inputs, often of similar size, land on different ranks).

    Not torch's ``DistributedSampler``: it pads the list to a multiple of the world size by repeating items, which
    here would run (and write) an input twice. MONAI's ``partition_dataset(num_partitions=..., even_divisible=False)``
    gives these shares but refuses fewer items than ranks, which is a valid run here (the extra ranks idle)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world size")
    return [(i, item) for i, item in enumerate(items) if i % world_size == rank]


def merge_results(per_rank: Iterable[Iterable[InferenceResult]]) -> list[InferenceResult]:
    """The results of every rank in one list, in the order of a single-process run: first the inputs that failed
    before they became volumes (as listed), then the volumes by their :attr:`InferenceResult.index`."""
    merged = [r for results in per_rank for r in results]
    early = [r for r in merged if r.index is None]
    return early + sorted((r for r in merged if r.index is not None), key=lambda r: r.index)


def inference_summary(results: Sequence[InferenceResult], *, world_size: int = 1,
                      wall_seconds: float | None = None) -> dict[str, Any]:
    """The content of :data:`SUMMARY_NAME`: ``totals`` and one record per input (``input``, ``output``, ``seconds``,
    ``inferer_seconds``, ``error``: ``null`` when it was written, ``rank``).

    ``totals.seconds`` and ``totals.inferer_seconds`` add up the inputs' times (over every rank: the work done);
    ``totals.wall_seconds`` is the run's elapsed time, from the start until every rank was done."""
    records = [{"input": r.input, "output": r.output, "seconds": round(r.seconds, 3),
                "inferer_seconds": None if r.inferer_seconds is None else round(r.inferer_seconds, 3),
                "error": r.error, "rank": r.rank} for r in results]
    failed = sum(1 for r in results if not r.ok)
    totals = {"inputs": len(results), "written": len(results) - failed, "failed": failed, "ranks": world_size,
              "seconds": round(sum(r.seconds for r in results), 3),
              "inferer_seconds": round(sum(r.inferer_seconds or 0.0 for r in results), 3),
              "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3)}
    return {"totals": totals, "inputs": records}


def write_summary(output_dir: str | Path, results: Sequence[InferenceResult], *, world_size: int = 1,
                  wall_seconds: float | None = None) -> Path:
    """Write :func:`inference_summary` to ``output_dir/inference_summary.json`` atomically (a temporary name, then
    ``os.replace``: an earlier run's summary is replaced whole, never half-written). Returns its path."""
    return write_json_atomic(Path(output_dir) / SUMMARY_NAME,
                             inference_summary(results, world_size=world_size, wall_seconds=wall_seconds))


@dataclass(frozen=True)
class TorchrunEnv:
    """Where this process stands in a ``torchrun`` launch (its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_env(environ: dict[str, str] | None = None) -> TorchrunEnv | None:
    """The ``torchrun`` variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) when this process
    was started by it, else ``None``. ``ValueError`` naming the variable when one is not a number or out of range."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    values = {}
    for name, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "RANK"),
                          ("LOCAL_WORLD_SIZE", "WORLD_SIZE")):
        text = env.get(name, env[default] if default else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r}: not an integer (is this a torchrun launch?)") \
                from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(f"environment variables RANK={values['RANK']} WORLD_SIZE={values['WORLD_SIZE']}: "
                         "need 0 <= RANK < WORLD_SIZE")
    return TorchrunEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])


def torchrun_device(env: TorchrunEnv, requested: bool, cuda_devices: int) -> tuple[str | None, str]:
    """The device of one ``torchrun`` rank and the process group's backend: ``(device or None, backend)``.

    ``requested``: the user chose the device (``--device``, ``--set device=...``); every rank then uses it, with
    gloo, since ranks may share one GPU that way and NCCL refuses two ranks on one device (the ranks only exchange
    their results at the end, so the backend is no matter of speed). Otherwise, with CUDA, rank ``LOCAL_RANK`` takes
    ``cuda:LOCAL_RANK`` and the group uses NCCL (``ValueError`` when the node has fewer GPUs than ranks); without
    CUDA, the bundle's own device (``None``: the CPU) and gloo."""
    if requested:
        return None, "gloo"
    if cuda_devices <= 0:
        return None, "gloo"
    if env.local_world_size > cuda_devices:
        raise ValueError(f"torchrun starts {env.local_world_size} processes on this machine but it has "
                         f"{cuda_devices} CUDA device(s): use --nproc_per_node {cuda_devices}, or --device cuda:0 "
                         "to share one GPU between the processes")
    return f"cuda:{env.local_rank}", "nccl"


def _input_key(item: dict) -> tuple:
    images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    return tuple(str(Path(str(p)).resolve()) for p in images), str(item.get("series_uid", ""))


def unique_inputs(items: list[dict]) -> tuple[list[dict], list[str]]:
    """``items`` without repeats of the same file(s) and series, and the names of the repeated ones."""
    seen: set[tuple] = set()
    kept, repeated = [], []
    for item in items:
        key = _input_key(item)
        if key in seen:
            repeated.append(_source(item))
            continue
        seen.add(key)
        kept.append(item)
    return kept, repeated


def output_stems(items: list[dict]) -> list[str]:
    """One output name per input, unique: the volume name (``_<SeriesInstanceUID>`` for one series of a folder that
    holds several), prefixed by as many parent folder names as it takes to tell inputs of one name apart
    (``siteA/case.nii.gz`` and ``siteB/case.nii.gz`` give ``siteA_case`` and ``siteB_case``).

    Raises ``ValueError`` naming the inputs when no prefix separates them (nothing has been written then)."""
    bases, parents = [], []
    for item in items:
        source = _source(item)
        base = volume_name(item["image"] if isinstance(item["image"], (str, Path)) else source)
        if item.get("series_uid"):
            base = f"{base}_{item['series_uid']}"
        bases.append(base)
        parents.append(Path(source).resolve().parent.parts[::-1])
    stems = list(bases)
    for depth in range(1, max((len(p) for p in parents), default=0) + 1):
        counts: dict[str, int] = {}
        for stem in stems:
            counts[stem] = counts.get(stem, 0) + 1
        clashing = [i for i, stem in enumerate(stems) if counts[stem] > 1]
        if not clashing:
            break
        for i in clashing:
            prefix = [p for p in parents[i][:depth] if p not in ("/", "")][::-1]
            stems[i] = "_".join([*prefix, bases[i]])
    seen: dict[str, int] = {}
    for i, stem in enumerate(stems):
        if stem in seen:
            raise ValueError(f"{_source(items[seen[stem]])} and {_source(items[i])} would both be written as "
                             f"{stem}: rename one, or run them into different --output folders")
        seen[stem] = i
    return stems


def _one_line(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


_STAGING_PREFIX = ".infer-partial-"


def _host() -> str:
    """This machine's name as it goes into a staging folder's name (letters, digits, dots and hyphens)."""
    return re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname()) or "host"


def _remove_dead_staging(output_dir: Path) -> None:
    """Remove staging folders that runs which no longer exist left behind (killed in the middle of an input).

    A folder is named ``<prefix><pid>-<host>-<random>``: only this host's are checked, since a pid says nothing
    about a process on another machine (the ranks of a multi-node ``torchrun`` may share one output folder). A
    folder of the older ``<prefix><pid>-<random>`` form counts as this host's."""
    for folder in output_dir.glob(f"{_STAGING_PREFIX}*"):
        parts = folder.name[len(_STAGING_PREFIX):].split("-")
        if len(parts) > 2 and "-".join(parts[1:-1]) != _host():
            continue
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue
