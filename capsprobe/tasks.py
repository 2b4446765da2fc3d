"""The task registry: what a run learns, how it is scored, and what its report folder shows.

A task bundles, in one place, everything that differs between ``classify`` (one label per image: the
perturbation suite) and ``multimnist`` (two overlapping digits, :mod:`capsprobe.multimnist`):

- ``input_size``: the model's input side for the data set's image side;
- ``batches``: ``(images, labels, parts)`` for training (shuffled, augmented) and evaluation;
- ``loss``: the objective for a model (asked of its :class:`~capsprobe.models.Adapter`: a model with poses gets
  the margin loss plus the masked reconstruction, any other cross entropy);
- ``hits``: per sample, 1 when the prediction is right;
- ``evaluate``: what ``capsprobe perturb`` computes for its report folder (a :class:`~capsprobe.probe.ProbeResult`);
- ``section``: the report's headlines, table and figures, rendered from the folder's files alone.

A new task is one module defining these and one :func:`register_task` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .data import ImageSplit
    from .models import Adapter

__all__ = ["TASKS", "Task", "UnknownTaskError", "get_task", "register_task"]

Batches = Iterator[tuple[Tensor, Tensor, "Tensor | None"]]


class UnknownTaskError(InvalidInputError):
    """A task name that is not registered."""


@dataclass(frozen=True)
class Task:
    """One task: see the module docstring for what each field does."""

    name: str
    description: str
    input_size: Callable[[int], int]
    batches: Callable[..., Batches]
    loss: Callable[["Adapter", Tensor, Tensor, "Tensor | None", float], tuple[Tensor, Tensor]]
    hits: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[..., Any]
    section: Callable[[Any], Any]


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (a later registration under the same name replaces the earlier one)."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        UnknownTaskError: the name is not registered; the message lists the valid ones.
    """
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


# --- classify: one label per image --------------------------------------------------------------------------


def classify_batches(split: "ImageSplit", batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                     epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches:
    """Batches of one split, shuffled and shift-augmented when ``train`` (``parts`` is None)."""
    from .data import iterate_batches

    for images, labels in iterate_batches(split, batch_size, device=device, shuffle=train, seed=seed, epoch=epoch,
                                          max_shift=max_shift if train else 0, rank=rank, world_size=world_size):
        yield images, labels, None


def classify_loss(adapter: "Adapter", images: Tensor, labels: Tensor, parts: Tensor | None,
                  recon_weight: float) -> tuple[Tensor, Tensor]:
    """For a model with poses, its capsule loss on the lengths (the margin loss, Sabour et al. 2017 eq. 4, unless it
    was built with another) plus ``recon_weight`` x the decoder's squared error (masked by the true label; section
    4.1); cross entropy otherwise."""
    from .models import capsule_loss_of, reconstruction_loss

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


def _classify_evaluate(*args, **kwargs):
    from .probe import run_probe

    return run_probe(*args, **kwargs)


def _classify_section(data):
    from .report import suite_section

    return suite_section(data)


register_task(Task(
    name="classify",
    description="one label per image; probed with the transformation suite",
    input_size=lambda size: size,
    batches=classify_batches,
    loss=classify_loss,
    hits=top1_hits,
    evaluate=_classify_evaluate,
    section=_classify_section,
))

from . import multimnist as _multimnist  # noqa: E402,F401  registers the multimnist task
