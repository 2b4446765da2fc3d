"""The MultiMNIST task (Sabour et al. 2017, section 6): two overlapping digits of different classes per image.

Training (:mod:`capsprobe.training.objectives`) draws fresh pairs every epoch (:func:`capsprobe.data.multimnist`), the
model must have class-capsule poses (two-label margin loss) and, for the reconstruction term, a decoder: each digit is
reconstructed from its own capsule, the other masked, against that digit alone. Evaluation (here): top-2 accuracy (the two longest capsules
are the two digits) and the per-digit reconstruction error, with the paper's red/green segmentation figure.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from torch import Tensor

from .. import metrics as M
from ..data import ImageSplit, multimnist
from ..errors import InvalidInputError
from ..models import adapt
from ..probe import METRIC_COLUMNS, ProbePlan, ProbeResult, as_subject, grid_array, metric_row
from ..report import Section, grid_figures, pct
from ..runtime import autocast_context, autocast_dtype, device_record, resolve_device, tf32_off
from ..training.objectives import MULTIMNIST_SHIFT, get_training_task, multimnist_batches, multimnist_loss, top_k_hits
from .base import Task, register_task

__all__ = ["multimnist_batches", "multimnist_evaluate", "multimnist_loss", "top_k_hits"]

@tf32_off()
def multimnist_evaluate(
    subjects: Sequence[Any],
    split: "ImageSplit",
    *,
    batch_size: int = 256,
    device: str = "auto",
    amp: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    show: int = 8,
):
    """Top-2 accuracy and per-digit reconstruction error of each subject on one pair per image of ``split``.

    ``accuracy``: the two longest capsules are the two digits. ``recon_error``: per digit, the squared error of
    the reconstruction from that digit's own capsule (the other masked) against the digit alone, divided by the
    digit's squared norm. Both with 95% bootstrap intervals over pairs. MultiMNIST is its own test: the task's
    ``evaluate`` (:func:`_evaluate`) drops the suite's transformations.

    Returns:
        A :class:`~capsprobe.probe.ProbeResult`: tidy metric rows (transform ``multimnist``) and, per subject, the
        paper's Figure 5 as an image grid (``segmentation-<name>``: the input, and the two reconstructions drawn in
        red and green over it).
    """

    dev = resolve_device(device)
    dtype = autocast_dtype(dev, amp)  # None by default: float32, TF32 off
    pairs = multimnist(split, len(split), seed=seed, max_shift=MULTIMNIST_SHIFT)
    frames, arrays, entries = [], {}, []
    for item in subjects:
        subject = as_subject(item)
        adapter = adapt(subject.model).to(dev).eval()
        entries.append(subject.manifest_entry(adapter))
        if not (adapter.has_poses and adapter.can_decode):
            raise InvalidInputError(f"{subject.name}: MultiMNIST evaluation needs class-capsule poses and a decoder")
        correct: list[Tensor] = []
        errors: list[Tensor] = []
        overlays: list[Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(pairs.labels), batch_size):
                sl = slice(start, start + batch_size)
                x, y, parts = pairs.images[sl].to(dev), pairs.labels[sl].to(dev), pairs.parts[sl].to(dev)
                with autocast_context(dev, dtype):
                    out = adapter.outputs(x)
                    recons = torch.stack([adapter.decode(out.poses, y[:, k]) for k in range(2)], 1).float()
                correct.append(top_k_hits(out.scores, y).cpu())
                err = (recons - parts).pow(2).flatten(2).sum(2) / parts.pow(2).flatten(2).sum(2).clamp(min=1e-6)
                errors.append(err.cpu())
                if sum(len(o) for o in overlays) < show:
                    grey = x.mean(1, keepdim=True)  # (B, 1, H, W)
                    red, green = recons[:, 0].mean(1, keepdim=True), recons[:, 1].mean(1, keepdim=True)
                    painted = torch.cat([torch.maximum(0.5 * grey, red), torch.maximum(0.5 * grey, green), 0.5 * grey], 1)
                    overlays.append(torch.stack([grey.expand(-1, 3, -1, -1), painted], 1).cpu())
        hit = torch.cat(correct).numpy().astype(float)
        per_digit = torch.cat(errors).numpy().ravel()
        base = {**subject.ident(), "transform": "multimnist", "kind": "semantic", "magnitude": "pairs",
                "magnitude_value": 0.0}
        frames.append(pd.DataFrame([
            metric_row(base, "accuracy", float(hit.mean()), M.bootstrap_mean_ci(hit, n_boot, seed), len(hit)),
            metric_row(base, "recon_error", float(per_digit.mean()), M.bootstrap_mean_ci(per_digit, n_boot, seed), len(hit)),
        ], columns=METRIC_COLUMNS))
        shown = torch.cat(overlays)[:show].clamp(0, 1).numpy().transpose(1, 0, 2, 3, 4)  # (2, show, 3, H, W)
        arrays[f"segmentation-{subject.name}"] = grid_array(
            shown, ["input", "digit 1 red, digit 2 green"], title=f"{subject.name}: each digit reconstructed from "
            "its own capsule", caption="Top: the overlaid pair. Bottom: the reconstruction from the first digit's "
            "capsule in red, from the second's in green, over the input.")
    return ProbeResult(metrics=pd.concat(frames, ignore_index=True), images=pd.DataFrame(), arrays=arrays,
                       manifest={"runs": entries, "pairs": len(pairs.labels),
                                 "device_record": device_record(dev, dtype)})


def multimnist_section(data) -> Any:
    """Headlines (top-2 accuracy and reconstruction error with intervals), the metric table, the figures."""

    lines = []
    for run, rows in data.metrics.groupby("run", sort=False):
        r = rows.set_index("metric")
        lines.append(f"{run}: both digits named in {pct(r.loc['accuracy', 'value'])} of pairs "
                     f"[{pct(r.loc['accuracy', 'ci_low'])}, {pct(r.loc['accuracy', 'ci_high'])}]; reconstruction "
                     f"error per digit {r.loc['recon_error', 'value']:.3f} [{r.loc['recon_error', 'ci_low']:.3f}, "
                     f"{r.loc['recon_error', 'ci_high']:.3f}] of the digit's own energy.")
    table = data.metrics[["run", "metric", "value", "ci_low", "ci_high", "n_images"]].round(4)
    figs, captions = grid_figures(data.arrays)
    return Section(headlines=lines, table_title="Metrics", table=table, figures=figs, captions=captions)


def _evaluate(subjects: Sequence[Any], split: "ImageSplit", plan: ProbePlan, surrogate: Any = None) -> ProbeResult:
    return multimnist_evaluate(subjects, split, batch_size=plan.batch_size, device=plan.device, amp=plan.amp,
                               seed=plan.seed, n_boot=plan.bootstrap, progress=plan.progress)


register_task(Task.extending(get_training_task("multimnist"), evaluate=_evaluate, section=multimnist_section,
                             suite=False))
