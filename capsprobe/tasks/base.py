"""The task registry: what a run learns, how it is scored, and what its report folder shows.

A task is its training half (:class:`~capsprobe.training.objectives.TrainingTask`: ``input_size``, ``batches``,
``loss``, ``hits``; all that training asks of it) plus:

- ``evaluate``: what ``capsprobe perturb`` computes for its report folder (a :class:`~capsprobe.probe.ProbeResult`)
  from the subjects, the images and the :class:`~capsprobe.probe.ProbePlan`;
- ``suite``: whether ``evaluate`` probes the plan's transformations (then the plan is checked against the data set's
  images before anything is trained or loaded);
- ``section``: the report's headlines, table and figures, rendered from the folder's files alone.

So ``classify`` (one label per image: the perturbation suite) and ``multimnist`` (two overlapping digits,
:mod:`capsprobe.tasks.multimnist`) differ in one place each. A new task is one module defining these and one
:func:`register_task` call, which registers its training half with training too
(:func:`~capsprobe.training.objectives.register_training_task`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol, Sequence

from ..data import ImageSplit
from ..probe import ProbePlan, ProbeResult
from ..report import ReportData, Section
from ..training.objectives import (
    Batches,
    BatchesFn,
    LossFn,
    TrainingTask,
    UnknownTaskError,
    lookup_task,
    register_training_task,
)

__all__ = ["TASKS", "Batches", "BatchesFn", "EvaluateFn", "LossFn", "Task", "UnknownTaskError", "get_task",
           "register_task"]


class EvaluateFn(Protocol):
    """What ``capsprobe perturb`` computes for the report folder, as ``plan`` says (a task that is its own test, such
    as MultiMNIST, reads its seed, bootstrap, batch size and device and ignores its transformations).
    ``surrogate``: the loaded run pgd-transfer attacks through (classify), or None."""

    def __call__(self, subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                 ) -> ProbeResult: ...


@dataclass(frozen=True)
class Task(TrainingTask):
    """One task: its training half's fields (name, description, input_size, batches, loss, hits), then evaluate,
    section and suite; see the module docstring."""

    evaluate: EvaluateFn
    section: Callable[[ReportData], Section]
    suite: bool = True  # evaluate probes the plan's transformations (checked against the data set's images)

    @property
    def training(self) -> TrainingTask:
        """The training half alone: what :func:`~capsprobe.training.fit` sees of this task."""
        return TrainingTask(**{f.name: getattr(self, f.name) for f in fields(TrainingTask)})

    @classmethod
    def extending(cls, training: TrainingTask, evaluate: EvaluateFn, section: Callable[[ReportData], Section],
                  suite: bool = True) -> "Task":
        """The full task of the training task ``training``: the same name, description and training functions."""
        return cls(**{f.name: getattr(training, f.name) for f in fields(TrainingTask)}, evaluate=evaluate,
                   section=section, suite=suite)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry, and its training half to training's (a later registration under the same name
    replaces the earlier one)."""
    register_training_task(task.training)
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        UnknownTaskError: the name is not registered; the message lists the valid ones.
    """
    task: Task = lookup_task(TASKS, name)
    return task
