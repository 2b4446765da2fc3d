"""Aggregates the report shows: the overview, selectivity and ROC tables over runs and conditions."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from .functional import (
    PENALTIES,
    bootstrap_ratio_ci,
    decodability_terms,
    percentile_interval,
    ratio,
    resample_index,
    resampled_auroc,
    scramble_auroc,
)
from .registry import METRICS, Estimate

__all__ = [
    "ROC_COLUMNS",
    "ROC_POINTS",
    "SELECTIVITY_COLUMNS",
    "decodability_estimate",
    "overview_table",
    "roc_table",
    "selectivity_table",
]

# --- aggregates the report shows ----------------------------------------------------------------------------


def overview_table(metrics: pd.DataFrame, images: pd.DataFrame, identity: dict[str, str], n_boot: int = 1000,
                   seed: int = 0, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run x transformation, each figure with a 95% bootstrap interval over images.

    Columns (each ``X`` with ``X_low`` and ``X_high``): ``clean_accuracy``; ``mean_accuracy``, the area under
    the accuracy-magnitude curve divided by the magnitude range (trapezoid; the plain mean for categorical
    grids); ``worst_accuracy`` over the grid; ``consistency`` over the non-identity magnitudes; the mean over
    non-identity magnitudes of every metric registered with ``overview=True``, whose interval is the mean of the
    per-condition bounds (conservative); ``scramble_auroc`` pools every non-identity semantic condition against
    the clean images.

    Args:
        metrics: tidy metrics (``summary.csv``).
        images: per-image rows (``results.parquet``).
        identity: per transformation, the label of its identity magnitude.
        extra: per-transformation figures to add (``run transform X X_low X_high``, e.g. decodability).
    """
    out = []
    for (run, transform), img in images.groupby(["run", "transform"], sort=False):
        ident = identity.get(transform)
        met = metrics[(metrics["run"] == run) & (metrics["transform"] == transform)]
        order = met.drop_duplicates("magnitude").sort_values("magnitude_value")
        mags = order["magnitude"].tolist()
        xs = order["magnitude_value"].to_numpy(float)
        pred = img.pivot(index="image_id", columns="magnitude", values="prediction")[mags]
        conf = img.pivot(index="image_id", columns="magnitude", values="confidence")[mags]
        label = img.drop_duplicates("image_id").set_index("image_id")["label"].reindex(pred.index).to_numpy()
        correct = (pred.to_numpy() == label[:, None]).astype(float)  # (N, M)
        n = len(correct)
        idx = resample_index(n, n_boot, seed)  # the same resamples for every group: equal data, equal intervals
        boot_acc = correct[idx].mean(1)  # (n_boot, M)
        categorical = pd.to_numeric(order["magnitude"], errors="coerce").isna().any() or len(xs) < 2

        def area(acc: np.ndarray) -> np.ndarray:
            if categorical:
                return acc.mean(-1)
            return np.trapezoid(acc, xs, axis=-1) / (xs[-1] - xs[0])

        row = {"model": met["model"].iloc[0], "run": run, "seed": met["seed"].iloc[0], "transform": transform,
               "kind": "/".join(dict.fromkeys(met["kind"])), "magnitudes": len(mags), "images": n}

        def put(name: str, value: float, ci: tuple[float, float]) -> None:
            row[name], row[f"{name}_low"], row[f"{name}_high"] = value, ci[0], ci[1]

        others = [m for m in mags if m != ident]
        if ident in mags:
            k = mags.index(ident)
            put("clean_accuracy", correct[:, k].mean(), percentile_interval(boot_acc[:, k]))
            if others:
                agree = (pred[others].to_numpy() == pred[[ident]].to_numpy()).astype(float)
                put("consistency", agree.mean(), percentile_interval(agree[idx].mean((1, 2))))
        put("mean_accuracy", float(area(correct.mean(0))), percentile_interval(area(boot_acc)))
        put("worst_accuracy", float(correct.mean(0).min()), percentile_interval(boot_acc.min(1)))
        for name in (m.name for m in METRICS.values() if m.overview):
            rows = met[(met["metric"] == name) & (met["magnitude"] != ident)]
            if not rows.empty:
                put(name, rows["value"].mean(), (rows["ci_low"].mean(), rows["ci_high"].mean()))
        sem = met[(met["metric"] == "scramble_auroc")]["magnitude"].unique().tolist()
        if ident in mags and sem:
            pos = conf[ident].to_numpy()
            neg = conf[sem].to_numpy()  # (N, S)
            put("scramble_auroc", scramble_auroc(pos, neg.ravel()),
                percentile_interval(resampled_auroc(pos, neg, idx)))
        out.append(row)
    table = pd.DataFrame(out)
    if extra is not None and not extra.empty and not table.empty:
        table = table.merge(extra, on=["run", "transform"], how="left")
    return table


def decodability_estimate(phi_clean, phi_moved: Sequence, values: Sequence[float], seed: int = 0,
                          n_boot: int = 1000) -> Estimate:
    """:func:`decodability` with its 95% bootstrap interval over held-out images (all magnitudes of an image
    resampled together) and the chosen penalty."""
    residual, total, penalty = decodability_terms(phi_clean, phi_moved, values, seed)
    lo, hi = bootstrap_ratio_ci(residual, total, n_boot, seed)
    edge = bool(np.isclose(10**penalty, PENALTIES[0]) or np.isclose(10**penalty, PENALTIES[-1]))
    return Estimate(float(1 - ratio(residual, total)), (1 - hi, 1 - lo), len(residual), penalty=penalty, at_edge=edge)


SELECTIVITY_COLUMNS = [
    "model", "run", "seed", "transform", "magnitude", "matched_transform", "matched_magnitude", "pixel_change",
    "matched_pixel_change", "auroc", "matched_auroc", "selectivity", "selectivity_low", "selectivity_high", "n_images",
]


def selectivity_table(images: pd.DataFrame, identity: dict[str, str], n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Scramble selectivity: for every non-identity semantic condition of a run, its AUROC (clean against
    transformed confidence) minus the AUROC of the run's non-identity *nuisance* condition whose mean pixel change
    ``|Tx - x|^2`` is closest, with a paired 95% bootstrap interval (the same image resamples for both AUROCs).

    A model that is merely less sure of any changed image scores about 0; one that reacts to broken part relations
    more than to a nuisance that changes as many pixels scores above 0. Empty when no nuisance condition was probed.

    Args:
        images: per-image rows (``results.parquet``) with ``pixel_change``.
        identity: per transformation, the label of its identity magnitude.
    """
    out = []
    if "pixel_change" not in images:
        return pd.DataFrame(columns=SELECTIVITY_COLUMNS)
    for run, rows in images.groupby("run", sort=False):
        conds = rows.groupby(["transform", "magnitude"], sort=False).agg(
            kind=("kind", "first"), pixel_change=("pixel_change", "mean")).reset_index()
        conds = conds[conds["magnitude"] != conds["transform"].map(identity)]
        nuisance = conds[conds["kind"] == "nuisance"]
        semantic = conds[conds["kind"] == "semantic"]
        ident = rows[rows["magnitude"] == rows["transform"].map(identity)]
        if nuisance.empty or semantic.empty or ident.empty:
            continue
        first = ident["transform"].iloc[0]
        clean = ident[ident["transform"] == first].sort_values("image_id")["confidence"].to_numpy()
        idx = resample_index(len(clean), n_boot, seed)

        def conf(transform: str, magnitude: str) -> np.ndarray:
            sel = rows[(rows["transform"] == transform) & (rows["magnitude"] == magnitude)]
            return sel.sort_values("image_id")["confidence"].to_numpy()

        for s in semantic.itertuples(index=False):
            near = nuisance.iloc[int(np.argmin(np.abs(nuisance["pixel_change"].to_numpy() - s.pixel_change)))]
            neg_s, neg_n = conf(s.transform, s.magnitude), conf(near["transform"], near["magnitude"])
            a_s, a_n = scramble_auroc(clean, neg_s), scramble_auroc(clean, neg_n)
            boot = resampled_auroc(clean, neg_s, idx) - resampled_auroc(clean, neg_n, idx)
            est = Estimate(a_s - a_n, percentile_interval(boot), len(clean))
            first_row = rows.iloc[0]
            out.append({"model": first_row["model"], "run": run, "seed": first_row["seed"], "transform": s.transform,
                        "magnitude": s.magnitude, "matched_transform": near["transform"],
                        "matched_magnitude": near["magnitude"], "pixel_change": s.pixel_change,
                        "matched_pixel_change": near["pixel_change"], "auroc": a_s, "matched_auroc": a_n,
                        "selectivity": est.value, "selectivity_low": est.ci[0], "selectivity_high": est.ci[1],
                        "n_images": est.n})
    return pd.DataFrame(out, columns=SELECTIVITY_COLUMNS)


ROC_COLUMNS = ["run", "condition", "fpr", "tpr"]


ROC_POINTS = 51  # false-positive rates stored per curve (every 0.02): enough to draw it, a fixed size whatever the
# image count and the number of runs (the AUROCs come from the per-image scores, not from these points)


def roc_table(images: pd.DataFrame, metrics: pd.DataFrame, identity: dict[str, str]) -> pd.DataFrame:
    """ROC curve points (``run condition fpr tpr``) of clean against transformed confidence for every
    condition that has a ``scramble_auroc`` (scikit-learn ``roc_curve``), on a grid of :data:`ROC_POINTS` false-positive
    rates: the curve's exact staircase read at each (the highest true-positive rate reached at or below that rate),
    so the file for the figure does not grow with the number of images."""

    semantic = metrics[metrics["metric"] == "scramble_auroc"][["run", "transform", "magnitude"]].drop_duplicates()
    frames = []
    for run, transform, magnitude in semantic.itertuples(index=False):
        rows = images[(images["run"] == run) & (images["transform"] == transform)]
        clean = rows[rows["magnitude"] == identity.get(transform)].sort_values("image_id")["confidence"].to_numpy()
        moved = rows[rows["magnitude"] == magnitude].sort_values("image_id")["confidence"].to_numpy()
        if not len(clean) or not len(moved):
            continue
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(clean)), np.zeros(len(moved))], np.r_[clean, moved])
        grid = np.linspace(0.0, 1.0, ROC_POINTS)
        on_grid = tpr[np.searchsorted(fpr, grid, side="right") - 1]  # fpr starts at 0: every index is valid
        frames.append(pd.DataFrame({"run": run, "condition": f"{transform} {magnitude}", "fpr": grid, "tpr": on_grid}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROC_COLUMNS)
