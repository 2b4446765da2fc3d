"""The task registry: what a run learns, how it is scored, and what its report folder shows.

A task bundles, in one place, everything that differs between ``classify`` (one label per image: the
perturbation suite) and ``multimnist`` (two overlapping digits, :mod:`capsprobe.tasks.multimnist`):

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
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from ..data import ImageSplit
from ..errors import InvalidInputError
from ..models import Adapter
from ..probe import ProbeResult
from ..report import ReportData, Section
from ..transforms import Transform

__all__ = ["TASKS", "BatchesFn", "EvaluateFn", "LossFn", "ProbeOptions", "Task", "UnknownTaskError", "get_task",
           "register_task"]

Batches = Iterator[tuple[Tensor, Tensor, "Tensor | None"]]


class UnknownTaskError(InvalidInputError):
    """A task name that is not registered."""


@dataclass(frozen=True)
class ProbeOptions:
    """How ``capsprobe perturb`` evaluates, whatever the task: what a task's ``evaluate`` receives."""

    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    n_boot: int = 1000
    progress: bool = True
    reference: str | None = None  # the model the comparisons are taken against (classify)
    lie: bool = False  # also the Lie-derivative probe (classify)
    surrogate: Any = None  # the model pgd-transfer computes its attack on (classify): a loaded run, or None


class BatchesFn(Protocol):
    """``(images, labels, parts)`` batches of one split, shuffled and augmented when ``train``."""

    def __call__(self, split: ImageSplit, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
                 epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1) -> Batches: ...


class LossFn(Protocol):
    """``(loss, scores)`` of a model on one batch."""

    def __call__(self, adapter: Adapter, images: Tensor, labels: Tensor, parts: Tensor | None,
                 recon_weight: float) -> tuple[Tensor, Tensor]: ...


class EvaluateFn(Protocol):
    """What ``capsprobe perturb`` computes for the report folder. ``transforms`` and ``magnitudes`` are the suite's
    (a task that is its own test, such as MultiMNIST, receives and ignores them)."""

    def __call__(self, subjects: Sequence[Any], split: ImageSplit, transforms: Sequence[Transform],
                 magnitudes: Mapping[str, Sequence[Any]], options: ProbeOptions) -> ProbeResult: ...


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
