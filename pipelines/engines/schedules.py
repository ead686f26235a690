"""Optimiser parameter groups and learning-rate schedules that bundle configs build by ``_target_``.

HEMF's recipe (and most vision-transformer recipes): AdamW without weight decay on biases and 1-D parameters (norm
scales and shifts, retention decay constants), and a per-iteration schedule of a linear warm-up followed by a cosine
decay. The super-resolution bundles' generator: one learning rate for the PSNR phase, another for the GAN phase
(:func:`two_phase`). MONAI and Ignite have none of these as a one-line object for a config, hence these functions.
"""

from __future__ import annotations

import math

import torch

__all__ = ["param_groups", "warmup_cosine", "two_phase"]


def param_groups(network: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: ``weight_decay`` on weights of rank >= 2, none on biases and 1-D parameters.

    Decaying a norm's scale or a bias pulls it towards 0 with no regularising benefit; the reference code (and timm's
    ``param_groups_weight_decay``) exempt them. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_iterations: int,
    total_iterations: int,
    warmup_start_factor: float = 1e-3,
    end_factor: float = 1e-2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_iterations``, then a cosine decay to
    ``end_factor * lr`` at ``total_iterations``; step it once per iteration (``LrScheduleHandler(epoch_level=False)``).

    The reference recipe is one epoch of warm-up from 1e-3 lr and a cosine down to 1e-2 lr. The factor function is a
    closure, so ``LambdaLR.state_dict()`` keeps only the step count: a resumed run with more epochs continues along
    the longer schedule its own config describes.
    """
    warmup = max(0, int(warmup_iterations))
    total = max(warmup + 1, int(total_iterations))

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def two_phase(
    optimizer: torch.optim.Optimizer, *, switch_epoch: int, learning_rate: float, second_learning_rate: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """``learning_rate`` (the optimiser's own) for the epochs before ``switch_epoch``, ``second_learning_rate`` from
    it on; step it once per epoch. The SR bundles: ``switch_epoch`` is ``pretrain_epochs``, the end of the PSNR phase.

    As in :func:`warmup_cosine` the factor is a closure, so ``LambdaLR.state_dict()`` keeps only the epoch count and
    a resumed run follows the phases of its own config.
    """
    switch = int(switch_epoch)
    second = float(second_learning_rate) / float(learning_rate)

    def factor(epoch: int) -> float:
        return 1.0 if epoch < switch else second

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
