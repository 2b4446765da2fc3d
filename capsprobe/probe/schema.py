"""The probe's output contract: the columns of its per-condition and per-image tables, the report folder's file
names, and :class:`ProbeResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import metrics as M
from ..transforms import (
    TRANSFORMS,
    magnitude_label,
)

__all__ = [
    "ARRAYS",
    "FIGURES",
    "MANIFEST",
    "REPORT_HTML",
    "REPORT_MD",
    "RESULTS",
    "SUMMARY",
    "IMAGE_COLUMNS",
    "METRIC_COLUMNS",
    "WORST_CASE_COLUMNS",
    "WORST_CASE_PARAMS",
    "ProbeResult",
    "estimate_row",
    "grid_array",
    "identity_labels",
    "metric_row",
]

# the report folder's files
RESULTS = "results.parquet"
SUMMARY = "summary.csv"
MANIFEST = "manifest.json"
ARRAYS = "arrays"
FIGURES = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

METRIC_COLUMNS = [
    "model", "run", "seed", "transform", "kind", "magnitude", "magnitude_value",
    "metric", "value", "ci_low", "ci_high", "n_images", "penalty", "at_edge",
]
IMAGE_COLUMNS = [
    "model", "run", "seed", "transform", "kind", "magnitude", "image_id", "label", "prediction", "true_score",
    "confidence", "pixel_change",
]
# per image, the warp a worst case (spatial-grid, worst-of-k) chose, and its margin: present when one was probed
# (NaN on the other conditions' rows)
WORST_CASE_PARAMS = {"angle": "worst_angle", "shift_x": "worst_shift_x", "shift_y": "worst_shift_y",
                     "margin": "worst_margin"}
WORST_CASE_COLUMNS = list(WORST_CASE_PARAMS.values())


@dataclass
class ProbeResult:
    """What a probe (or a task's evaluation) computed: everything a report folder holds.

    Attributes:
        metrics: tidy metrics with 95% bootstrap intervals (:data:`METRIC_COLUMNS`) -> ``summary.csv``.
        images: one row per image and condition (:data:`IMAGE_COLUMNS`) -> ``results.parquet``.
        timing: seconds spent transforming, in forward passes, in the clean pass, in metrics, in all.
        tables: further tables by name (``overview``, ``roc``) -> ``<name>.csv``.
        arrays: image grids by name (reconstructions, pose sweeps...) -> ``arrays/<name>.npz`` (see
            :func:`grid_array`).
        manifest: what was probed and how (models, data, transformations, seed, versions) -> ``manifest.json``.
    """

    metrics: pd.DataFrame
    images: pd.DataFrame
    timing: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def metric_row(base: dict[str, Any], metric: str, value: float, ci: tuple[float, float], n: int,
               penalty: float = float("nan"), at_edge: bool = False) -> dict[str, Any]:
    """One tidy metrics row."""
    return {**base, "metric": metric, "value": value, "ci_low": ci[0], "ci_high": ci[1], "n_images": n,
            "penalty": penalty, "at_edge": bool(at_edge)}


def estimate_row(base: dict[str, Any], metric: str, est: M.Estimate) -> dict[str, Any]:
    """One tidy metrics row from an :class:`~capsprobe.metrics.Estimate`."""
    return metric_row(base, metric, est.value, est.ci, est.n, est.penalty, est.at_edge)


def grid_array(images: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str] = (), *, title: str = "",
               caption: str = "", cell: float = 0.9) -> dict[str, np.ndarray]:
    """An image grid as the report stores it (``arrays/<name>.npz``, no pickles): ``images (R, N, C, H, W)`` in
    [0, 1], row and column labels, title, caption and cell size."""
    return {"images": np.asarray(images, dtype=np.float32), "row_labels": np.array(list(row_labels), dtype=str),
            "col_labels": np.array(list(col_labels), dtype=str), "title": np.array(title), "caption": np.array(caption),
            "cell": np.array(float(cell))}


def identity_labels() -> dict[str, str]:
    """Per registered transformation, the label of its identity magnitude."""
    return {name: magnitude_label(t.identity) for name, t in TRANSFORMS.items()}
