"""The task registry: what a run learns, how it is scored, and what its report folder shows.

A task bundles, in one place, everything that differs between ``classify`` (one label per image: the
perturbation suite) and ``multimnist`` (two overlapping digits, :mod:`capsprobe.tasks.multimnist`):

- ``input_size``: the model's input side for the data set's image side;
- ``batches``: ``(images, labels, parts)`` for training (shuffled, augmented) and evaluation;
- ``loss``: the objective for a model (asked of its :class:`~capsprobe.models.Adapter`: a model with poses gets
  the margin loss plus the masked reconstruction, any other cross entropy);
- ``hits``: per sample, 1 when the prediction is right;
- ``evaluate``: what ``capsprobe perturb`` computes for its report folder (a :class:`~capsprobe.probe.ProbeResult`)
  from the subjects, the images and the :class:`~capsprobe.probe.ProbePlan`;
- ``suite``: whether ``evaluate`` probes the plan's transformations (then the plan is checked against the data set's
  images before anything is trained or loaded);
- ``section``: the report's headlines, table and figures, rendered from the folder's files alone.

A new task is one module defining these and one :func:`register_task` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import Tensor

from ..data import ImageSplit
from ..errors import InvalidInputError
from ..models import Adapter
from ..probe import ProbePlan, ProbeResult
from ..report import ReportData, Section

__all__ = ["TASKS", "BatchesFn", "EvaluateFn", "LossFn", "Task", "UnknownTaskError", "get_task", "register_task"]

Batches = Iterator[tuple[Tensor, Tensor, "Tensor | None"]]


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


class EvaluateFn(Protocol):
    """What ``capsprobe perturb`` computes for the report folder, as ``plan`` says (a task that is its own test, such
    as MultiMNIST, reads its seed, bootstrap, batch size and device and ignores its transformations).
    ``surrogate``: the loaded run pgd-transfer attacks through (classify), or None."""

    def __call__(self, subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                 ) -> ProbeResult: ...


@dataclass(frozen=True)
class Task:
    """One task: see the module docstring for what each field does."""

    name: str
    description: str
    input_size: Callable[[int], int]
    batches: BatchesFn
    loss: LossFn
    hits: Callable[[Tensor, Tensor], Tensor]
    evaluate: EvaluateFn
    section: Callable[[ReportData], Section]
    suite: bool = True  # evaluate probes the plan's transformations (checked against the data set's images)


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
