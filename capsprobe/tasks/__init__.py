"""Tasks: what a run learns, how it is scored, and what its report folder shows (see :mod:`.base`).

Importing the package registers the built-in tasks, ``classify`` and ``multimnist``."""

from . import multimnist  # noqa: E402  registers the multimnist task
from .base import TASKS, Batches, Task, UnknownTaskError, get_task, register_task
from .classify import classify_batches, classify_loss, top1_hits

__all__ = ["TASKS", "Batches", "Task", "UnknownTaskError", "classify_batches", "classify_loss", "get_task",
           "multimnist", "register_task", "top1_hits"]
