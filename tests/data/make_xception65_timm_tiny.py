"""Write ``xception65_timm_tiny.npz`` (run by hand; needs timm, which is not a test dependency).

    pip install timm==1.0.31 torchvision && python tests/data/make_xception65_timm_tiny.py

It holds the ``state_dict()`` of timm's own ``XceptionAligned`` (``timm/models/xception_aligned.py``, the class
of ``xception65``: non-pre-activation blocks, ``output_stride=16``, BatchNorm eps 1e-3) at reduced widths: the block
configuration of ``xception65`` with widths 4-14 and one middle block, and the stem's two ``ConvNormAct`` layers
(hard-coded at 32 and 64 in timm) rebuilt with the same timm class at widths 2 and 4; a 2-class ``head``. Every
parameter and BatchNorm statistic is drawn from a seeded generator. To stay a few KB the tensors are stored as one
flat float32 array (``timm_values``) with a JSON list of ``[key, shape, dtype]`` in state-dict order
(``timm_index``); the test rebuilds the state dict, saves it with ``torch.save`` as timm would and converts it. The
file also holds a 17 x 17 RGB input and, in float64 in eval mode, timm's outputs of the stem (x0), ``blocks.0`` (x1),
``blocks.1`` (x2) and ``forward_features`` (out). An odd input size makes TensorFlow's "same" padding of the first
convolution symmetric, as timm's padding. ``tests/networks/test_frcunet_xception.py`` converts the rebuilt state dict
and checks this project's Xception65 against these outputs.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.layers import ConvNormAct
from timm.models.xception_aligned import XceptionAligned

HERE = Path(__file__).resolve().parent
WIDTHS = (2, 4, 4, 6, 8, 10, 12, 14)  # this project's Xception65(widths=...) equivalent
MIDDLE = 1


def build() -> nn.Module:
    w = WIDTHS
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)  # as timm's xception65
    block_cfg = [
        dict(in_chs=w[1], out_chs=w[2], stride=2),
        dict(in_chs=w[2], out_chs=w[3], stride=2),
        dict(in_chs=w[3], out_chs=w[4], stride=2),
        *([dict(in_chs=w[4], out_chs=w[4], stride=1)] * MIDDLE),
        dict(in_chs=w[4], out_chs=(w[4], w[5], w[5]), stride=2),
        dict(in_chs=w[5], out_chs=(w[6], w[6], w[7]), stride=1, no_skip=True, start_with_relu=False),
    ]
    model = XceptionAligned(block_cfg=block_cfg, num_classes=2, in_chans=3, output_stride=16, norm_layer=norm)
    model.stem = nn.Sequential(
        ConvNormAct(3, w[0], kernel_size=3, stride=2, act_layer=nn.ReLU, norm_layer=norm),
        ConvNormAct(w[0], w[1], kernel_size=3, stride=1, act_layer=nn.ReLU, norm_layer=norm),
    )
    return model


def randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * math.sqrt(2.0 / math.prod(p.shape[1:])))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)


def main() -> None:
    torch.manual_seed(0)
    model = build()
    randomise(model)
    state = model.state_dict()
    index = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()]
    values = np.concatenate([v.detach().float().reshape(-1).numpy() for v in state.values()])
    x = torch.randn(1, 3, 17, 17, generator=torch.Generator().manual_seed(1))
    net = model.double().eval()
    seen = {}
    net.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("x0", o))
    net.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("x1", o))
    net.blocks[1].register_forward_hook(lambda m, i, o: seen.__setitem__("x2", o))
    with torch.no_grad():
        out = net.forward_features(x.double())
    arrays = {"input": x.numpy(), "out": out.numpy(), **{k: v.numpy() for k, v in seen.items()}}
    arrays.update(widths=np.array(WIDTHS), middle_blocks=np.array(MIDDLE), timm_values=values,
                  timm_index=np.array(json.dumps(index)))
    np.savez_compressed(HERE / "xception65_timm_tiny.npz", **arrays)
    print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
