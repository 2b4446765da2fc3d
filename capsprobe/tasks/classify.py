"""The ``classify`` task: one label per image, trained with the capsule or cross-entropy loss, probed with the
transformation suite (:func:`capsprobe.probe.run_probe`) and reported by :func:`capsprobe.report.suite_section`."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import ImageSplit, iterate_batches
from ..errors import InvalidInputError
from ..models import Adapter, capsule_loss_of, reconstruction_loss
from ..probe import ProbePlan, ProbeResult, run_probe
from ..report import suite_section
from .base import Batches, Task, register_task

__all__ = ["classify_batches", "classify_evaluate", "classify_loss", "top1_hits"]


def classify_batches(split: "ImageSplit", batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                     epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches:
    """Batches of one split, shuffled and shift-augmented when ``train`` (``parts`` is None)."""
    for images, labels in iterate_batches(split, batch_size, device=device, shuffle=train, seed=seed, epoch=epoch,
                                          max_shift=max_shift if train else 0, rank=rank, world_size=world_size):
        yield images, labels, None


def classify_loss(adapter: "Adapter", images: Tensor, labels: Tensor, parts: Tensor | None,
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


def classify_evaluate(subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                      ) -> ProbeResult:
    """The plan's transformations over the subjects (:func:`capsprobe.probe.run_probe`)."""
    return run_probe(subjects, split, plan=plan, surrogate=surrogate)


register_task(Task(
    name="classify",
    description="one label per image; probed with the transformation suite",
    input_size=lambda size: size,
    batches=classify_batches,
    loss=classify_loss,
    hits=top1_hits,
    evaluate=classify_evaluate,
    section=suite_section,
))

