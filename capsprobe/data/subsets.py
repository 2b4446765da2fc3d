"""Data sets restricted to some of their classes: MNIST without the digits that a half turn makes into each other.

The upside-down protocol (:mod:`capsprobe.tasks.upside_down`, issue 48) shows every test image rotated through the
full circle and asks whether a model still names it and can say by how much it was turned. That is a fair question
only for classes that keep their identity under rotation: a 6 upside down *is* a 9 (and a 9 a 6), so a model that
calls a rotated 6 a "9" is right, not wrong. The variants here leave those two digits out and remap the other
labels to ``0..7`` in order (:data:`NO69_DIGITS`: digits 0-5 keep their labels, 7 becomes 6, 8 becomes 7):

- ``mnist-no69``: torchvision MNIST without 6 and 9 (48,133 training and 8,033 test digits);
- ``mnist-sample-no69``: the embedded 5,000-digit sample without them (offline; 3,200 + 800 digits).

Nothing is copied to disk: the loader reads the base data set and keeps the rows of the kept classes.

Why MNIST and not Fashion-MNIST: every other experiment of the suite (robustness, viewpoint, affNIST, ablations)
trains on MNIST digits, so the upside-down runs are comparable with them. The digits left are not all free of
symmetry: 0, 1 and 8 look much the same after a half turn, so their rotation by 180 degrees cannot be told from the
image itself; the task reports the joint score per class so that ceiling is visible, and costs every model alike
(the comparisons are paired over the same images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .datasets import _REGISTRY, DatasetSpec, ImageSplit, Loader, register_dataset

__all__ = ["NO69_DIGITS", "without_classes"]

#: the digits ``mnist-no69`` keeps, in the order of their new labels (label ``i`` is digit ``NO69_DIGITS[i]``)
NO69_DIGITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 8)


def without_classes(base: str, keep: Sequence[int]) -> Loader:
    """The loader of registered data set ``base`` restricted to the classes ``keep``, relabelled ``0..len(keep)-1``
    in the order given (the splits keep no pose or viewpoint flags of the base)."""
    keep_t = torch.as_tensor(list(keep), dtype=torch.long)

    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        def restrict(split: ImageSplit) -> ImageSplit:
            new = torch.full((max(int(split.labels.max()), int(keep_t.max())) + 1,), -1, dtype=torch.long)
            new[keep_t] = torch.arange(len(keep_t))  # old label -> new label (-1: left out)
            index = torch.nonzero(new[split.labels] >= 0).flatten()
            return ImageSplit(split.images[index], new[split.labels[index]])

        train, test = _REGISTRY[base][1](root, download)
        return restrict(train), restrict(test)

    return load


for _base, _what in (("mnist", "MNIST"), ("mnist-sample", "the embedded sample (offline)")):
    register_dataset(DatasetSpec(f"{_base}-no69", 1, 28, len(NO69_DIGITS),
                                 f"{_what} without 6 and 9 (a 6 upside down is a 9): digits 0-5, 7, 8 as labels 0-7"),
                     without_classes(_base, NO69_DIGITS))
del _base, _what
