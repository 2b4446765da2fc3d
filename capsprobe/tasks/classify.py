"""The ``classify`` task: one label per image, trained with the capsule or cross-entropy loss
(:mod:`capsprobe.training.objectives`), probed with the transformation suite (:func:`capsprobe.probe.run_probe`) and
reported by :func:`capsprobe.report.suite_section`."""

from __future__ import annotations

from typing import Any, Sequence

from ..data import ImageSplit
from ..probe import ProbePlan, ProbeResult, run_probe
from ..report import suite_section
from ..training.objectives import classify_batches, classify_loss, get_training_task, top1_hits
from .base import Task, register_task

__all__ = ["classify_batches", "classify_evaluate", "classify_loss", "top1_hits"]


def classify_evaluate(subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                      ) -> ProbeResult:
    """The plan's transformations over the subjects (:func:`capsprobe.probe.run_probe`)."""
    return run_probe(subjects, split, plan=plan, surrogate=surrogate)


register_task(Task.extending(get_training_task("classify"), evaluate=classify_evaluate, section=suite_section))
