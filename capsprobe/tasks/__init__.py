"""Tasks: what a run learns, how it is scored, and what its report folder shows (see :mod:`.base`).

Importing the package registers the built-in tasks, ``classify``, ``multimnist``, ``viewpoint`` and ``upside-down``,
in that order (the order :func:`get_task` lists them in). Their training halves live in
:mod:`capsprobe.training.objectives`, which training uses alone; ``upside-down`` trains as ``classify`` does, under its
own name, and registers that training half with the task (:mod:`.upside_down`).
"""
# isort: skip_file

from .base import (TASKS, Batches, BatchesFn, EvaluateFn, LossFn, Task, UnknownTaskError, get_task,
                   register_task)
from .classify import classify_batches, classify_evaluate, classify_loss, top1_hits
from . import multimnist  # registers the multimnist task
from . import viewpoint  # registers the viewpoint task
from . import upside_down  # registers the upside-down task

__all__ = ["TASKS", "Batches", "BatchesFn", "EvaluateFn", "LossFn", "Task", "UnknownTaskError",
           "classify_batches", "classify_evaluate", "classify_loss", "get_task", "multimnist", "register_task",
           "top1_hits", "upside_down", "viewpoint"]
