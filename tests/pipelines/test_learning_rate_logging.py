"""Issue 18 item 3: TensorBoard's learning rate at the step that used it.

A one-layer Ignite trainer records the optimiser's learning rate inside every iteration (the rate the step used);
:class:`~pipelines.engines.LearningRateLogger` must log exactly that rate at that epoch / iteration, with MONAI's
``LrScheduleHandler`` attached before it as in every bundle's ``train.json``. Expected rates are also worked out from
the schedulers' closed forms with NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import LrScheduleHandler

from pipelines.engines import LearningRateLogger


class _Writer:
    """Records ``add_scalar`` calls as ``{tag: {step: value}}``."""

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, {})[int(step)] = float(value)


def _trainer(optimizer: torch.optim.Optimizer, network: torch.nn.Module):
    used: dict[tuple[int, int], float] = {}  # (epoch, iteration) -> the rate the optimiser step used

    def step(engine: Engine, batch: torch.Tensor) -> float:
        used[(engine.state.epoch, engine.state.iteration)] = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad()
        loss = network(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step), used


def test_epoch_lr_is_the_rate_the_epoch_trained_with():
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-4)
    epochs = 3
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-6)
    trainer, used = _trainer(optimizer, network)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)  # first, as in train.json
    writer = _Writer()
    LearningRateLogger(writer, optimizer).attach(trainer)
    trainer.run([torch.ones(4, 2)] * 2, max_epochs=epochs)

    logged = writer.scalars["train/lr"]
    assert sorted(logged) == [1, 2, 3]
    for (epoch, _), lr in used.items():
        assert logged[epoch] == lr  # the rate of every step of that epoch
    cosine = 1e-6 + (1e-4 - 1e-6) * (1 + np.cos(np.pi * np.arange(epochs) / epochs)) / 2
    np.testing.assert_allclose([logged[e] for e in (1, 2, 3)], cosine, rtol=1e-12)


def test_one_epoch_run_logs_the_rate_it_trained_at_not_the_next_one():
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1, eta_min=1e-6)
    trainer, _ = _trainer(optimizer, network)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    writer = _Writer()
    LearningRateLogger(writer, optimizer).attach(trainer)
    trainer.run([torch.ones(4, 2)], max_epochs=1)
    assert writer.scalars["train/lr"] == {1: 1e-4}  # the issue: 1e-6 was logged
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)  # what the scheduler set for a next epoch


def test_iteration_lr_and_every_parameter_group():
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD([{"params": network[0].parameters(), "lr": 0.1},
                                 {"params": network[1].parameters(), "lr": 0.01}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    trainer, used = _trainer(optimizer, network)
    LrScheduleHandler(scheduler, epoch_level=False, print_lr=False).attach(trainer)
    writer = _Writer()
    LearningRateLogger(writer, optimizer, tag="train/lr_g", every="iteration").attach(trainer)
    trainer.run([torch.ones(4, 2)] * 3, max_epochs=2)  # 6 iterations

    first, second = writer.scalars["train/lr_g"], writer.scalars["train/lr_g_1"]
    assert sorted(first) == sorted(second) == [1, 2, 3, 4, 5, 6]
    for (_, iteration), lr in used.items():
        assert first[iteration] == lr
    halvings = [math.floor((k - 1) / 2) for k in range(1, 7)]  # StepLR(2, 0.5) before iteration k
    np.testing.assert_allclose([first[k] for k in range(1, 7)], [0.1 * 0.5 ** h for h in halvings], rtol=1e-12)
    np.testing.assert_allclose([second[k] for k in range(1, 7)], [0.01 * 0.5 ** h for h in halvings], rtol=1e-12)


def test_resumed_run_logs_the_resumed_epochs_rate():
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.1 ** epoch)
    trainer, used = _trainer(optimizer, network)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    writer = _Writer()
    LearningRateLogger(writer, optimizer).attach(trainer)
    data = [torch.ones(4, 2)]
    trainer.run(data, max_epochs=2)
    trainer.run(data, max_epochs=3)  # Ignite resumes at epoch 3
    assert writer.scalars["train/lr"] == pytest.approx({1: 1.0, 2: 0.1, 3: 0.01})
    assert {e: lr for (e, _), lr in used.items()} == pytest.approx(writer.scalars["train/lr"])


def test_unknown_interval_is_refused():
    with pytest.raises(ValueError, match=r"every must be 'epoch' or 'iteration', got 'step'"):
        LearningRateLogger(_Writer(), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), every="step")
