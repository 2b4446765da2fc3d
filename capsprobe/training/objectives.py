"""What a run learns: the training half of a task, and its registry.

A :class:`TrainingTask` is everything :func:`~capsprobe.training.fit`, ``capsprobe bench`` and the ``--jobs`` workers
ask of a task:

- ``input_size``: the model's input side for the data set's image side;
- ``batches``: ``(images, labels, parts)`` for training (shuffled, augmented) and evaluation;
- ``loss``: the objective for a model (asked of its :class:`~capsprobe.models.Adapter`: a model with poses gets
  the margin loss plus the masked reconstruction, any other cross entropy);
- ``hits``: per sample, 1 when the prediction is right.

The full task (:class:`capsprobe.tasks.Task`) is a training task plus what ``capsprobe perturb`` evaluates and what
the report shows; registering it (:func:`capsprobe.tasks.register_task`) registers its training half here too, so a
new task is still one registration, and training never imports the probe or the report.

Built in, in this order: ``classify`` (one label per image), ``multimnist`` (two overlapping digits per image, Sabour
et al. 2017, section 6) and ``viewpoint`` (classify's training, on familiar viewpoints only: the data set holds the
novel ones back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import ImageSplit, iterate_batches, multimnist
from ..errors import InvalidInputError
from ..models import Adapter, capsule_loss_of, reconstruction_loss
from ..runtime import epoch_seed

__all__ = ["MULTIMNIST_SHIFT", "TRAINING_TASKS", "Batches", "BatchesFn", "LossFn", "TrainingTask", "UnknownTaskError",
           "classify_batches", "classify_loss", "get_training_task", "multimnist_batches", "multimnist_loss",
           "register_training_task", "top1_hits", "top_k_hits"]

Batches = Iterator[tuple[Tensor, Tensor, "Tensor | None"]]

MULTIMNIST_SHIFT = 4  # px each way: the canvas is the digit's side + 2 * MULTIMNIST_SHIFT (36 for MNIST)


class UnknownTaskError(InvalidInputError):
    """A task name that is not registered."""


class BatchesFn(Protocol):
    """``(images, labels, parts)`` batches of one split, shuffled and augmented when ``train``."""

    def __call__(self, split: ImageSplit, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                 epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches: ...


class LossFn(Protocol):
    """``(loss, scores)`` of a model on one batch."""

    def __call__(self, adapter: Adapter, images: Tensor, labels: Tensor, parts: Tensor | None,
                 recon_weight: float) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class TrainingTask:
    """The training half of one task: see the module docstring for what each field does."""

    name: str
    description: str
    input_size: Callable[[int], int]
    batches: BatchesFn
    loss: LossFn
    hits: Callable[[Tensor, Tensor], Tensor]


TRAINING_TASKS: dict[str, TrainingTask] = {}


def register_training_task(task: TrainingTask) -> TrainingTask:
    """Add ``task`` to the registry (a later registration under the same name replaces the earlier one)."""
    TRAINING_TASKS[task.name] = task
    return task


def get_training_task(name: str) -> TrainingTask:
    """The registered training task ``name``.

    Raises:
        UnknownTaskError: the name is not registered; the message lists the valid ones.
    """
    return lookup_task(TRAINING_TASKS, name)


def lookup_task(registry: dict[str, Any], name: str) -> Any:
    """``registry[name]``, or :class:`UnknownTaskError` listing the registered names (the training tasks' registry and
    the full tasks' share it)."""
    if name not in registry:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


# --- classify: one label per image ------------------------------------------------------------------------------


def classify_batches(split: ImageSplit, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                     epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches:
    """Batches of one split, shuffled and shift-augmented when ``train`` (``parts`` is None)."""
    for images, labels in iterate_batches(split, batch_size, device=device, shuffle=train, seed=seed, epoch=epoch,
                                          max_shift=max_shift if train else 0, rank=rank, world_size=world_size):
        yield images, labels, None


def classify_loss(adapter: Adapter, images: Tensor, labels: Tensor, parts: Tensor | None,
                  recon_weight: float) -> tuple[Tensor, Tensor]:
    """For a model with poses, its capsule loss on the lengths (the margin loss, Sabour et al. 2017 eq. 4, unless it
    was built with another) plus ``recon_weight`` x the decoder's squared error (masked by the true label; section
    4.1); cross entropy otherwise."""
    if adapter.has_poses:
        out = adapter.outputs(images)
        loss = capsule_loss_of(adapter.model)(out.scores, labels)
        if recon_weight > 0 and adapter.can_decode:
            loss = loss + reconstruction_loss(adapter.decode(out.poses, labels).float(), images.float(), recon_weight)
        return loss, out.scores
    logits = adapter.logits(images)
    if logits is None:
        raise InvalidInputError(f"{type(adapter.model).__name__} gives no logits to train with cross entropy")
    return F.cross_entropy(logits, labels), logits


def top1_hits(scores: Tensor, labels: Tensor) -> Tensor:
    """Per sample, 1 when ``argmax scores`` is the label."""
    return (scores.argmax(1) == labels).long()


# --- multimnist: two overlapping digits of different classes per image ------------------------------------------


def multimnist_batches(split: ImageSplit, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                       epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches:
    """As many pairs (:func:`capsprobe.data.multimnist`) as the split has images (per rank): drawn anew every epoch
    when ``train``, a fixed draw otherwise. ``max_shift`` is unused (the pairs carry their own shifts)."""

    n = -(-len(split) // world_size)
    draw = epoch_seed(seed, epoch, rank) if train else 12_345 + rank
    pairs = multimnist(split, n, seed=draw, max_shift=MULTIMNIST_SHIFT)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        yield pairs.images[sl].to(device), pairs.labels[sl].to(device), pairs.parts[sl].to(device)


def multimnist_loss(adapter: Adapter, images: Tensor, labels: Tensor, parts: Tensor | None,
                    recon_weight: float) -> tuple[Tensor, Tensor]:
    """The two-label margin loss (or the model's own capsule loss), plus each digit reconstructed from its own
    capsule against that digit alone."""

    if not adapter.has_poses:
        raise InvalidInputError("two-label (MultiMNIST) training needs a model with class-capsule poses (a CapsNet)")
    out = adapter.outputs(images)
    targets = F.one_hot(labels, out.scores.shape[1]).sum(1).clamp(max=1)  # (B, K) two-hot
    loss = capsule_loss_of(adapter.model)(out.scores, targets)
    if recon_weight > 0 and adapter.can_decode and parts is not None:
        for k in range(labels.shape[1]):
            recon = adapter.decode(out.poses, labels[:, k]).float()  # the other capsules masked
            loss = loss + reconstruction_loss(recon, parts[:, k].float(), recon_weight)
    return loss, out.scores


def top_k_hits(scores: Tensor, labels: Tensor) -> Tensor:
    """Per sample, 1 when the ``k`` highest scores are exactly the ``k`` labels ``(B, k)`` (the paper's accuracy)."""
    if labels.dim() == 1:
        return (scores.argmax(1) == labels).long()
    top = scores.topk(labels.shape[1], dim=1).indices.sort(1).values
    return (top == labels.sort(1).values).all(1).long()


register_training_task(TrainingTask(
    name="classify",
    description="one label per image; probed with the transformation suite",
    input_size=lambda size: size,
    batches=classify_batches,
    loss=classify_loss,
    hits=top1_hits,
))

register_training_task(TrainingTask(
    name="multimnist",
    description="two overlapping digits per 36x36 image (paper section 6): top-2 accuracy, segmentation",
    input_size=lambda size: size + 2 * MULTIMNIST_SHIFT,
    batches=multimnist_batches,
    loss=multimnist_loss,
    hits=top_k_hits,
))

register_training_task(TrainingTask(
    name="viewpoint",
    description="novel viewpoints (Hinton et al. 2018): trained on familiar poses, tested on familiar and novel",
    input_size=lambda size: size,
    batches=classify_batches,
    loss=classify_loss,
    hits=top1_hits,
))

register_training_task(TrainingTask(
    name="upside-down",
    description="the upside-down test (capsprobe.tasks.upside_down): classify's training, probed at every quarter turn",
    input_size=lambda size: size,
    batches=classify_batches,
    loss=classify_loss,
    hits=top1_hits,
))
