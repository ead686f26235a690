"""The memory plan before the first training step: saved bytes of hand-worked networks, the linear extrapolation,
optimizer state, free memory, and the handler that stops a trainer before its first iteration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from pipelines.engines.memory_plan import (
    MemoryPlanError,
    MemoryPlanHandler,
    Probe,
    estimate_training_memory,
    extrapolate,
    free_memory,
    optimizer_state_bytes,
    probe_shapes,
    probe_step,
    saved_tensor_bytes,
)

F32, BF16 = 4, 2


def _conv_relu() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())


def test_saved_bytes_of_conv_relu_by_hand():
    # conv saves its input (the weight is a parameter, left out); ReLU saves its output; the conv output is not
    # saved (ReLU's backward needs only its own result)
    x = torch.randn(1, 1, 8, 8, 8)
    assert saved_tensor_bytes(_conv_relu(), x) == 512 * F32 * (1 + 4)
    # with BatchNorm and an in-place ReLU: conv saves x, BN its input and per-channel mean and 1/std, the in-place
    # ReLU its output (BN's output, overwritten)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(inplace=True))
    assert saved_tensor_bytes(net, x) == 512 * F32 * (1 + 4 + 4) + 2 * 4 * F32


def test_saved_bytes_count_a_storage_once_and_follow_autocast():
    class Overlapping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y[:, :3] * y[:, 1:]  # mul saves two overlapping views of one 4-channel storage

    assert saved_tensor_bytes(Overlapping(), torch.randn(1, 1, 8, 8, 8)) == 512 * F32 * (1 + 4)
    # bf16 autocast: addmm saves its bf16 input (not the weight: the input needs no gradient), ReLU its bf16 output
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    x = torch.randn(3, 8)
    assert saved_tensor_bytes(net, x, amp=True, amp_dtype=torch.bfloat16) == 3 * 8 * BF16 + 3 * 4 * BF16
    assert saved_tensor_bytes(net, x) == 3 * 8 * F32 + 3 * 4 * F32


def test_probe_peak_holds_the_backward_buffers_and_leaves_gradients_alone():
    net = _conv_relu()
    x = torch.randn(1, 1, 8, 8, 8)
    before = [p.grad for p in net.parameters()]
    saved, peak, output = probe_step(net, x)
    assert output == 4 * 512 * F32
    # at ReLU's backward: the input, ReLU's output, the seed gradient and the gradient of ReLU's input at once
    assert peak >= 512 * F32 * (1 + 4 + 4 + 4)
    assert [p.grad for p in net.parameters()] == before == [None, None]


def test_extrapolation_is_linear_in_batch_and_voxels():
    c, p, q = 1000, 70, 3  # bytes per step, per patch, per voxel of a patch
    v1, v2 = 4096, 32768

    def s(b, v):
        return c + b * (p + q * v)

    probes = [Probe(1, (16, 16, 16), s(1, v1), 0, 0), Probe(2, (16, 16, 16), s(2, v1), 0, 0),
              Probe(1, (32, 32, 32), s(1, v2), 0, 0)]
    assert extrapolate(probes, 8, 96 * 96 * 64) == (c + 8 * (p + q * 96 * 96 * 64), p + q * 96 * 96 * 64)
    # without the batch-2 probe every byte is per patch, without a second size they scale with the voxels
    assert extrapolate(probes[:1] + probes[2:], 1, v2)[0] == s(1, v2)
    assert extrapolate(probes[:2], 4, 2 * v1) == (c + 4 * 2 * (p + q * v1), 2 * (p + q * v1))


def test_estimate_extrapolates_saved_bytes_exactly_for_a_linear_network():
    net = _conv_relu().eval()
    voxels = 32 * 32 * 16
    est = estimate_training_memory(net, None, (32, 32, 16), 3, device="cpu", loss_factor=0.0)
    assert not net.training  # probed in train mode, given back in eval mode
    assert [p.shape for p in est.probes] == [(16, 16, 16), (16, 16, 16), (32, 32, 16)]
    assert est.activations == 3 * voxels * F32 * (1 + 4)  # what a batch of 3 saves, from smaller probes
    params = sum(p.numel() for p in net.parameters()) * F32
    assert (est.parameters, est.gradients, est.optimizer_state, est.context) == (params, params, 0, 0)
    assert est.raw == params * 2 + est.activations + est.transient
    assert est.total == math.ceil(est.raw * est.safety)
    # the loss allowance: loss_factor times the output of 3 patches (4 channels, fp32)
    with_loss = estimate_training_memory(net, None, (32, 32, 16), 3, device="cpu", loss_factor=4.0)
    assert with_loss.transient - est.transient == 4 * 3 * 4 * voxels * F32


def test_probe_shapes_divide_like_the_patch():
    assert probe_shapes([96, 96, 64]) == [(32, 32, 32), (64, 64, 32)]
    assert probe_shapes([128, 128, 128]) == [(32, 32, 32), (64, 64, 64)]
    assert probe_shapes([224, 224]) == [(64, 64), (128, 128)]  # 224 = 7 * 32
    assert probe_shapes([32, 32, 16]) == [(16, 16, 16), (32, 32, 16)]  # small: the patch itself is a probe


def test_optimizer_state_by_type_and_after_a_step():
    w = nn.Parameter(torch.zeros(10, 10))
    n = 100 * F32
    assert optimizer_state_bytes(torch.optim.AdamW([w])) == 2 * n
    assert optimizer_state_bytes(torch.optim.Adam([w], amsgrad=True)) == 3 * n
    assert optimizer_state_bytes(torch.optim.SGD([w], lr=0.1, momentum=0.9)) == n
    assert optimizer_state_bytes(torch.optim.SGD([w], lr=0.1)) == 0
    assert optimizer_state_bytes(None) == 0
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones_like(w)
    opt.step()  # a resumed optimizer: its tensors (exp_avg, exp_avg_sq; the scalar step does not count)
    assert optimizer_state_bytes(opt) == 2 * n


def test_free_memory_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemAvailable:"))
    free, source = free_memory("cpu", cgroup_root=tmp_path)
    assert source == "MemAvailable" and abs(free - meminfo) < 2**30
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert free_memory("cpu", cgroup_root=tmp_path) == (600000, "cgroup limit")
    (tmp_path / "memory.max").write_text("max\n")  # no limit
    assert free_memory("cpu", cgroup_root=tmp_path)[1] == "MemAvailable"


# --------------------------------------------------------------------------------------------------- the handler
def _tiny_trainer(handler: MemoryPlanHandler, calls: list):
    """A MONAI SupervisedTrainer of a conv + BatchNorm network on 2 batches of 2 patches of 16^3."""
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3)

    def loss(pred, label):
        calls.append(1)
        return (pred - label).pow(2).mean()

    data = [{"image": torch.randn(2, 1, 16, 16, 16), "label": torch.randn(2, 2, 16, 16, 16)} for _ in range(2)]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                                optimizer=opt, loss_function=loss, train_handlers=[handler])
    return trainer, net


def test_handler_stops_before_the_first_iteration_with_one_line():
    calls: list = []
    handler = MemoryPlanHandler(patch_size=[16, 16, 16], batch_size=1, num_samples=2, memory_budget_gb=0.001)
    trainer, _ = _tiny_trainer(handler, calls)
    with pytest.raises(MemoryPlanError) as e:
        trainer.run()
    assert trainer.state.iteration == 0 and calls == []
    assert handler.estimate.batch == 2  # batch_size x num_samples patches per step
    message = str(e.value)
    assert "\n" not in message
    assert "one training step of 1 x 2 patches of 16x16x16 on cpu" in message
    assert f"needs an estimated {handler.estimate.total / 2**20:.1f} MiB" in message
    assert "memory_budget_gb 0.001" in message
    assert all(name in message for name in ("batch_size", "num_samples", "patch_size"))
    assert "set amp" not in message  # MONAI's SupervisedTrainer autocasts CUDA only: no use on a CPU


def test_handler_finds_a_generator_and_suggests_amp_where_it_takes_effect():
    net = _conv_relu()
    engine = Engine(lambda e, b: None)  # as SuperResolutionTrainer: autocast on any device, a generator
    engine.generator, engine.g_optimizer = net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    handler = MemoryPlanHandler([16, 16, 16], 4, device="cpu", amp=False, memory_budget_gb=0.0001)
    handler.attach(engine)
    with pytest.raises(MemoryPlanError, match=r"lower batch_size, num_samples or patch_size, or set amp true$"):
        engine.run([0])
    assert handler.estimate.optimizer_state == sum(p.numel() for p in net.parameters()) * F32  # momentum


def test_handler_lets_training_run_and_leaves_the_network_as_it_was():
    calls: list = []
    handler = MemoryPlanHandler(patch_size=[16, 16, 16], batch_size=2, num_samples=1)  # the machine's free memory
    trainer, net = _tiny_trainer(handler, calls)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    after: dict = {}

    @trainer.on(Events.STARTED)  # after the handler's own STARTED event
    def snapshot(engine):
        after["state"] = {k: v.clone() for k, v in net.state_dict().items()}
        after["rng"] = torch.get_rng_state()
        after["grads"] = [p.grad for p in net.parameters()]
        after["training"] = net.training

    trainer.run()
    assert handler.estimate is not None and handler.estimate.batch == 2
    assert trainer.state.iteration == 2 and len(calls) == 2
    assert before.keys() == after["state"].keys()
    assert all(torch.equal(before[k], after["state"][k]) for k in before)  # weights and BN running stats
    assert torch.equal(rng, after["rng"]) and after["training"]
    assert after["grads"] == [None] * 6  # no gradients made (weight and bias of conv, BN, conv)


def test_a_plan_switched_off_probes_nothing_even_where_the_step_cannot_fit(caplog):
    """``memory_plan: false`` (``enabled=False``): no probe, training runs; a budget that refuses it when on."""
    calls: list = []
    handler = MemoryPlanHandler(patch_size=[16, 16, 16], batch_size=1, memory_budget_gb=0.001, enabled=False)
    with caplog.at_level("INFO", logger="pipelines.engines.memory_plan"):
        trainer, _ = _tiny_trainer(handler, calls)  # attached here
        trainer.run()
    assert handler.estimate is None and trainer.state.iteration == 2 and len(calls) == 2
    assert "memory plan: off (memory_plan false)" in caplog.text
    # the strings monai.bundle's command line passes (fire reads `--memory_plan false` as "false")
    assert MemoryPlanHandler([16, 16, 16], 1, enabled="false").enabled is False
    assert MemoryPlanHandler([16, 16, 16], 1, enabled="True").enabled is True
    with pytest.raises(ValueError, match=r"^memory plan: enabled \(the bundle's memory_plan\) must be true or "
                                         r"false, got 'nope'$"):
        MemoryPlanHandler([16, 16, 16], 1, enabled="nope")


def test_estimate_looks_through_data_parallel():
    from pipelines.engines.memory_plan import _unwrap

    net = _conv_relu()
    assert _unwrap(nn.DataParallel(net)) is net
    plain = estimate_training_memory(net, None, (16, 16, 16), 2, device="cpu")
    wrapped = estimate_training_memory(nn.DataParallel(net), None, (16, 16, 16), 2, device="cpu")
    assert (wrapped.activations, wrapped.parameters) == (plain.activations, plain.parameters)


def test_handler_refuses_bad_settings_in_one_line():
    with pytest.raises(ValueError, match=r"^memory plan: memory_budget_gb \(GiB, or null .*\) must be a positive "
                                         r"float, got 0$"):
        MemoryPlanHandler([16, 16, 16], 2, memory_budget_gb=0)
    with pytest.raises(ValueError, match=r"^memory plan: patch_size must be a positive int, got -16$"):
        MemoryPlanHandler([16, -16, 16], 2)
    with pytest.raises(ValueError, match=r"^memory plan: num_samples must be a positive int, got 1.5$"):
        MemoryPlanHandler([16, 16, 16], 2, num_samples=1.5)


def test_extrapolation_from_two_patch_probes_for_networks_that_refuse_one():
    """bytes(b, v) = c + b * (p + q * v) with c = 100, p = 10, q = 3, recovered from probes at 2 and 4 patches."""
    from pipelines.engines.memory_plan import Probe, extrapolate

    def saved(b, v):
        return 100 + b * (10 + 3 * v)

    probes = [Probe(2, (2, 4), saved(2, 8), 0, 0), Probe(4, (2, 4), saved(4, 8), 0, 0),
              Probe(2, (8, 8), saved(2, 64), 0, 0)]
    assert extrapolate(probes, batch=5, voxels=100) == (100 + 5 * 310, 310)


def test_a_network_with_batchnorm_after_global_pooling_is_probed_with_two_patches():
    import torch.nn as nn

    from pipelines.engines.memory_plan import estimate_training_memory

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.Flatten())
    estimate = estimate_training_memory(net, None, patch_size=(32, 32), batch=4, in_channels=1)
    assert min(p.batch for p in estimate.probes) == 2
    assert estimate.activations > 0
