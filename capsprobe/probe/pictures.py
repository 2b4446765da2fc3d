"""Pictures of a capsule model: reconstructions of transformed digits and pose sweeps (Sabour et al. 2017, figure 4)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..data import ImageSplit
from ..errors import InvalidInputError
from ..models import adapt
from ..runtime import image_seeds, resolve_device
from ..transforms import (
    Transform,
    magnitude_label,
)
from ..transforms.gradient import PGD_STEPS
from .against import against
from .subject import as_subject

__all__ = [
    "SWEEP_DELTAS",
    "pose_sweep",
    "reconstruction_examples",
]

SWEEP_DELTAS = tuple(float(d) for d in np.round(np.arange(-0.25, 0.2501, 0.05), 2))


def reconstruction_examples(
    model: Any,
    split: ImageSplit,
    conditions: Sequence[tuple[Transform, Any]],
    n: int = 8,
    seed: int = 0,
    device: str | torch.device = "auto",
    surrogate: Any = None,
    attack_steps: int = PGD_STEPS,
) -> tuple[np.ndarray, list[str]]:
    """Images, transformed images and the model's reconstructions from the transformed images' poses.

    One example per class while there are classes (the first of each in ``split``), ``n`` in all. The
    decoder is masked by the true label, so the row shows what the true class's pose says about the
    transformed digit. ``attack_steps``: PGD's iterations where a condition is a gradient attack.

    Returns:
        ``(1 + 2 T, n, C, H, W)`` in [0, 1] (row 0 the clean images, then for each condition the transformed
        images and their reconstructions) and the ``1 + 2 T`` row labels.
    """
    adapter = adapt(as_subject(model).model)
    if not (adapter.can_decode and adapter.has_poses):
        raise InvalidInputError(f"{type(adapter.model).__name__} has no poses and decoder to reconstruct from")
    dev = resolve_device(device)
    labels = split.labels.numpy()
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:n]
    picks += [i for i in range(len(labels)) if i not in picks][: n - len(picks)]
    index = torch.tensor(picks)
    x = split.subset(index).float_images().to(dev)
    y = split.labels[index].to(dev)
    seeds = image_seeds(seed, index)
    adapter = adapter.to(dev).eval()
    other = adapt(as_subject(surrogate).model).to(dev).eval() if surrogate is not None else None
    rows, names = [x.cpu()], ["image"]
    with torch.inference_mode():
        for t, m in conditions:
            moved = t(x, m, seeds, against=against(adapter, y, other, steps=attack_steps)).images  # a worst case: against the model
            recon = adapter.decode(adapter.outputs(moved).poses, y)
            rows += [moved.cpu(), recon.float().cpu()]
            names += [f"{t.name} {magnitude_label(m)}", "reconstruction"]
    return torch.stack(rows).clamp(0, 1).numpy(), names


def pose_sweep(
    model: Any,
    split: ImageSplit,
    index: int = 0,
    deltas: Sequence[float] = SWEEP_DELTAS,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """The paper's Figure 4: each pose dimension of a digit's capsule moved by ``deltas`` and decoded.

    Returns:
        ``(D, len(deltas), C, H, W)`` in [0, 1]: row ``d`` adds each delta to dimension ``d`` of the true
        class's pose (16 x 11 with the defaults).
    """
    adapter = adapt(as_subject(model).model)
    if not (adapter.can_decode and adapter.has_poses):
        raise InvalidInputError(f"{type(adapter.model).__name__} has no poses and decoder to sweep")
    dev = resolve_device(device)
    adapter = adapter.to(dev).eval()
    x = split.subset(torch.tensor([index])).float_images().to(dev)
    label = int(split.labels[index])
    with torch.inference_mode():
        poses = adapter.outputs(x).poses  # (1, K, D)
        assert poses is not None  # asked of models with poses only
        dim = poses.shape[-1]
        steps = torch.tensor(list(deltas), device=dev, dtype=poses.dtype)
        batch = poses.repeat(dim * len(steps), 1, 1)  # (D * S, K, D)
        rows = torch.arange(dim, device=dev).repeat_interleave(len(steps))
        batch[torch.arange(len(batch), device=dev), label, rows] += steps.repeat(dim)
        images = adapter.decode(batch, torch.full((len(batch),), label, device=dev))
    return images.float().cpu().reshape(dim, len(steps), *images.shape[1:]).clamp(0, 1).numpy()
