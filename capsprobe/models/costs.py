"""What a model costs: parameters and forward FLOPs per image, the two budgets a comparison is matched on."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["model_costs"]


def model_costs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters and forward FLOPs for one image of ``input_shape`` ``(C, H, W)``.

    FLOPs are what :class:`torch.utils.flop_counter.FlopCounterMode` counts: convolutions and matrix products (a
    multiply-add is 2), the capsule routings' ``matmul`` included; elementwise work (squashes, softmaxes, norms) is
    not. The model runs once in eval mode without gradients and is put back in the mode it was in.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=first.device if first is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": int(params), "flops": int(counter.get_total_flops())}
