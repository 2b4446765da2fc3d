"""The batch iterator: one split as shuffled, sharded, shift-augmented float32 batches on the device."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from ..runtime import epoch_seed
from .datasets import ImageSplit
from .ops import crop_images, random_crops, random_shifts, shift_images

__all__ = [
    "iterate_batches",
]

def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    max_shift: int = 0,
    rank: int = 0,
    world_size: int = 1,
    resident: bool | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images float32 (B, C, H, W) in [0, 1], labels (B,))`` on ``device``.

    The order comes from :class:`torch.utils.data.DistributedSampler` (a shard per rank, reshuffled by
    ``(seed, epoch)``), so one process and several see the same scheme. ``max_shift > 0`` applies the random
    shift augmentation, seeded by ``(seed, epoch, rank)``; leave it 0 for evaluation data.

    ``resident`` (default: on CUDA) keeps the whole split on the device as uint8 (:meth:`ImageSplit.to`, one copy)
    and moves the epoch's order and shifts there once, so a batch is gathered, converted and shifted on the
    device with no host work; otherwise each batch is copied from host memory (pinned for CUDA). Both give the
    same batches: the shifts of an epoch are drawn in one call, which yields the numbers per-batch draws did.

    A split with ``crop`` (smallNORB's 32 of 48) gives, when ``shuffle``, a random ``crop x crop`` window of every
    image (seeded by ``(seed, epoch, rank)``), otherwise the centre window.
    """
    device = torch.device(device)
    if split.crop is not None and not shuffle:
        split = split.centre_cropped()  # evaluation of a split trained on random crops
    if resident is None:
        resident = device.type == "cuda"
    order = None
    if world_size > 1 or shuffle:
        sampler: DistributedSampler = DistributedSampler(range(len(split)),  # type: ignore[arg-type]  # any sized
                                                        num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
    n = len(order) if order is not None else len(split)
    shifts = None
    if max_shift > 0:
        shifts = random_shifts(n, max_shift, torch.Generator().manual_seed(epoch_seed(seed, epoch, rank)))
    corners = None
    if split.crop is not None:  # training on random crops (smallNORB), one corner per image, seeded like the shifts
        corners = random_crops(n, split.images.shape[2:], split.crop,
                               torch.Generator().manual_seed(epoch_seed(seed, epoch, rank) + 1))
    pin = device.type == "cuda" and not resident
    if resident:
        split = split.to(device)
        order = order.to(device) if order is not None else None
        shifts = shifts.to(device) if shifts is not None else None
        corners = corners.to(device) if corners is not None else None
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
        images, labels = split.images[idx], split.labels[idx]
        if corners is not None:
            images = crop_images(images, corners[start : start + batch_size], split.crop)  # type: ignore[arg-type]
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        images = images.to(device, non_blocking=pin).float().div_(255)
        labels = labels.to(device, non_blocking=pin)
        if shifts is not None:
            images = shift_images(images, shifts[start : start + batch_size])
        yield images, labels
