"""What a training run owns beyond its weights: an exclusive lock on its folder, and every random state it draws from.

**The lock.** Two trainings started into one folder would share ``checkpoint.pt`` and ``model.pt``, and a late
starter would delete the first run's in-flight partial checkpoint. :class:`FolderLock` takes an exclusive
``fcntl.flock`` on ``<folder>/.training.lock`` and writes the holder (pid, host, start time) into it. A second
start is refused with a one-line error naming the holder. The kernel releases the lock when its process dies,
however it dies, so a lock file left by a dead run is taken over with a warning naming that run. (``flock`` is
advisory and local: on a network file system shared by several machines it may not exclude a run on another host.)

**The random state.** A run killed after epoch ``e`` and resumed must draw the same random numbers in epoch
``e + 1`` as a run that never stopped: dropout and shuffling (torch's generator), NumPy's and Python's global
generators, and MONAI's random transforms, each of which owns a ``numpy.random.RandomState`` (``Randomizable.R``)
that the global generators do not cover when the data loader runs in the main process (``num_workers=0``); with
workers, MONAI re-seeds them in each worker from torch's generator. :func:`capture_random_state` and
:func:`restore_random_state` keep all of them, plus MONAI's determinism seed and the cuDNN flags, as plain tensors,
numbers and lists, so that the checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import random
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FolderLock", "capture_random_state", "restore_random_state", "random_transforms"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"

#: locks this process holds, by path: a run started again in the same process (a notebook, a test) after an
#: earlier one failed takes the lock over from it instead of refusing itself
_HELD: dict[str, FolderLock] = {}


class FolderLock:
    """An exclusive, process-lifetime lock on ``folder`` (see the module docstring).

    Args:
        folder: the folder the run writes to (created if missing).
        what: how the holder is described in the error ("training").
    """

    def __init__(self, folder: str | os.PathLike, what: str = "training") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        key = str(self.path.resolve())
        earlier = _HELD.get(key)
        if earlier is not None and earlier is not self and earlier._fd is not None:
            self._fd, earlier._fd = earlier._fd, None
            _HELD[key] = self
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "another process"
            os.close(fd)
            raise RuntimeError(
                f"{self.path.parent}: another {self.what} run is using this folder ({holder}); wait for it to end, "
                f"stop it, or give this run another --bundle_root") from None
        previous = _read(fd)
        if previous:
            logger.warning("%s: taking over the lock left by a run that is no longer running (%s)", self.path,
                           previous)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # an empty file: no holder to report, nothing to "take over"
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        _HELD.pop(str(self.path.resolve()), None)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def random_transforms(dataset: Any) -> list[Any]:
    """The MONAI ``Randomizable`` transforms of ``dataset.transform``, nested ``Compose``/``OneOf``... walked in order.

    Not ``Compose.flatten()``: it builds a new ``Compose``, whose constructor re-seeds every transform it holds."""
    from monai.transforms import Randomizable

    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        # transforms hold others as attributes too (RandAffined -> RandAffine -> RandAffineGrid, each with its own R)
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        children = getattr(obj, "transforms", None) or ()
        if hasattr(obj, "__dict__"):
            children = [*children, *vars(obj).values()]
        for child in children:
            if isinstance(child, (list, tuple)):
                for item in child:
                    if isinstance(item, Randomizable) or hasattr(item, "transforms"):
                        walk(item)
            elif isinstance(child, Randomizable) or hasattr(child, "transforms"):
                walk(child)

    transform = getattr(dataset, "transform", None)
    if transform is not None:
        walk(transform)
    return found


def _numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, gauss = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_tuple(state: dict) -> tuple:
    return state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"]


def capture_random_state(dataset: Any = None) -> dict:
    """Every random state a training epoch draws from, as tensors, numbers and lists (``weights_only``-safe)."""
    from monai.utils import get_seed

    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(np.random.get_state()),
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "monai_seed": get_seed(),
        "cudnn": {"deterministic": bool(torch.backends.cudnn.deterministic),
                  "benchmark": bool(torch.backends.cudnn.benchmark)},
        "transforms": [_numpy_state(t.R.get_state()) for t in random_transforms(dataset)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict, dataset: Any = None) -> None:
    """Put back what :func:`capture_random_state` kept; the dataset's random transforms must be the same list."""
    import monai.utils.misc as monai_misc

    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_tuple(state["numpy"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    monai_misc._seed = state.get("monai_seed")  # MONAI keeps its determinism seed in this module global
    torch.backends.cudnn.deterministic = state["cudnn"]["deterministic"]
    torch.backends.cudnn.benchmark = state["cudnn"]["benchmark"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    transforms = random_transforms(dataset)
    saved = state.get("transforms", [])
    if len(saved) != len(transforms):
        logger.warning("the training transforms changed since the checkpoint (%d random transforms, %d saved): "
                       "their random streams start afresh", len(transforms), len(saved))
        return
    for transform, t_state in zip(transforms, saved):
        transform.R.set_state(_numpy_tuple(t_state))
