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
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torch import Tensor

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..models import Adapter

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
