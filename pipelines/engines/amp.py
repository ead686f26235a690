"""The mixed-precision dtype every bundle config wires as ``amp_dtype`` (``pipelines.engines.amp.amp_dtype``).

One function for every config and every engine: MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` (through
``amp_kwargs={"dtype": ...}``), the super-resolution trainer and evaluator, the memory plan and ``pipelines infer`` all
take the ``torch.dtype`` it returns. MONAI picks no autocast dtype for a config (its engines default to float16).
"""

from __future__ import annotations

import torch

__all__ = ["amp_dtype"]


def amp_dtype() -> torch.dtype:
    """``torch.bfloat16`` on a CUDA device that supports it (Ampere and later: no loss scaling needed), else
    ``torch.float16``. The configs switch AMP on only with CUDA (``amp``), so the CPU value is never used there."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
