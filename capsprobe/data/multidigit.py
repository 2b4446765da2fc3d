"""MultiMNIST pairs (Sabour et al. 2017, section 6): two digits of different classes overlaid on one canvas."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidInputError
from .datasets import ImageSplit
from .ops import place_on_canvas

__all__ = [
    "MultiDigits",
    "multimnist",
]

@dataclass(frozen=True)
class MultiDigits:
    """MultiMNIST samples: the overlay, both labels, each digit alone on its canvas, and the offsets."""

    images: Tensor  # (N, C, S, S) float in [0, 1]: the two digits overlaid (sum clipped at 1)
    labels: Tensor  # (N, 2) int64, different classes
    parts: Tensor  # (N, 2, C, S, S) float: each digit alone, where it lies in the overlay
    shifts: Tensor  # (N, 2, 2) int64: (dy, dx) of each digit


def multimnist(split: ImageSplit, n: int, seed: int = 0, canvas: int = 36, max_shift: int = 4) -> MultiDigits:
    """The paper's MultiMNIST (section 6): two digits of different classes from ``split``, each shifted by up
    to ``max_shift`` px per axis on a ``canvas`` image (36 = 28 + 2 x 4), overlaid by a clipped sum.

    Generated on the fly and seeded: the same ``(split, n, seed)`` gives the same samples.
    """
    if len(torch.unique(split.labels)) < 2:
        raise InvalidInputError("MultiMNIST needs digits of at least two classes")
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, len(split), (n,), generator=gen)
    second = torch.randint(0, len(split), (n,), generator=gen)
    same = split.labels[first] == split.labels[second]
    while same.any():  # redraw the partner until the classes differ
        second[same] = torch.randint(0, len(split), (int(same.sum()),), generator=gen)
        same = split.labels[first] == split.labels[second]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2, 2), generator=gen)
    digits = torch.stack([split.images[first], split.images[second]], 1).float().div_(255)  # (N, 2, C, 28, 28)
    c, h, w = digits.shape[2:]
    parts = place_on_canvas(digits.reshape(n * 2, c, h, w), canvas, shifts.reshape(n * 2, 2)).reshape(n, 2, c, canvas, canvas)
    return MultiDigits(images=parts.sum(1).clamp_(max=1.0), labels=torch.stack([split.labels[first], split.labels[second]], 1),
                       parts=parts, shifts=shifts)
