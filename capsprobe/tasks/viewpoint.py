"""The ``viewpoint`` task: the novel-viewpoint protocol of Hinton, Sabour & Frosst (2018, section 5.1).

Train on images at familiar viewpoints only, stop every model at the same accuracy on a *familiar* validation split
(``target_accuracy``; the validation split is carved from the training images, so it never sees a novel viewpoint
or a test image), then score the test images at familiar and at novel viewpoints (``ImageSplit.familiar``, from the
data set's pose labels: :mod:`capsprobe.data.viewpoints`). Training and the loss are ``classify``'s
(:mod:`capsprobe.training.objectives`).

What ``capsprobe perturb`` writes for it: per-image rows under the conditions ``viewpoint / familiar`` and
``viewpoint / novel``, so the calibrated comparisons of :mod:`capsprobe.metrics.compare` give every model's
accuracy with an interval over seeds and images and every pair's paired difference with its Holm-adjusted test;
``viewpoint.csv`` lists the familiar and novel test error of every run (seed). The report states errors,
``1 - accuracy``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .. import metrics as M
from ..data import ImageSplit, iterate_batches
from ..errors import InvalidInputError
from ..metrics.compare import comparison_tables
from ..models import adapt
from ..probe import IMAGE_COLUMNS, METRIC_COLUMNS, ProbePlan, ProbeResult, as_subject, metric_row
from ..report import Section, figure_png
from ..report.published import NOVEL_VIEWPOINT, published_for_runs
from ..runtime import autocast_context, autocast_dtype, device_record, resolve_device, tf32_off
from ..training.objectives import get_training_task
from .base import Task, register_task

__all__ = ["CONDITIONS", "viewpoint_evaluate", "viewpoint_section"]

TRANSFORM = "viewpoint"
CONDITIONS = ("familiar", "novel")


@tf32_off()
def viewpoint_evaluate(subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                       ) -> ProbeResult:
    """Familiar and novel test accuracy of every subject on ``split`` (which must carry ``familiar`` flags).

    The plan's transformations are not used (the viewpoints are the test): its batch size, device, seed and
    bootstrap are.

    Raises:
        InvalidInputError: the split has no familiar/novel flags, or one of the two parts is empty.
    """
    if split.familiar is None:
        raise InvalidInputError("this data set has no familiar and novel viewpoints: the viewpoint task needs one of "
                                "smallnorb-azimuth, smallnorb-elevation or a *-viewpoint data set")
    familiar = split.familiar.cpu().numpy()
    if familiar.all() or not familiar.any():
        raise InvalidInputError(f"the split has {int(familiar.sum())} familiar and {int((~familiar).sum())} novel "
                                "images: the viewpoint test needs both")
    dev = resolve_device(plan.device)
    dtype = autocast_dtype(dev, plan.amp)  # None by default: float32, TF32 off
    frames, metric_rows, entries = [], [], []
    start = time.perf_counter()
    forward = 0.0
    for item in subjects:
        subject = as_subject(item)
        adapter = adapt(subject.model).to(dev).eval()
        entries.append(subject.manifest_entry(adapter))
        scores = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for images, _ in iterate_batches(split, plan.batch_size, device=dev):
                with autocast_context(dev, dtype):
                    scores.append(adapter.outputs(images).scores.float().cpu())
        s = torch.cat(scores)
        forward += time.perf_counter() - t0
        if not torch.isfinite(s).all():
            raise InvalidInputError(f"{subject.name}: non-finite class scores on the viewpoint test")
        labels = split.labels.cpu()
        pred = s.argmax(1)
        ident = subject.ident()
        frame = pd.DataFrame({
            **ident, "transform": TRANSFORM, "kind": TRANSFORM,
            "magnitude": np.where(familiar, "familiar", "novel"), "image_id": np.arange(len(split)),
            "label": labels.numpy(), "prediction": pred.numpy(),
            "true_score": s.gather(1, labels.view(-1, 1)).squeeze(1).numpy(),
            "confidence": s.max(1).values.numpy(), "pixel_change": 0.0,
        })
        frames.append(frame[IMAGE_COLUMNS])
        hits = (pred == labels).numpy().astype(float)
        for value, name in enumerate(CONDITIONS):
            part = hits[familiar] if name == "familiar" else hits[~familiar]
            base = {**ident, "transform": TRANSFORM, "kind": TRANSFORM, "magnitude": name,
                    "magnitude_value": float(value)}
            metric_rows.append(metric_row(base, "accuracy", float(part.mean()),
                                          M.bootstrap_mean_ci(part, plan.bootstrap, plan.seed), len(part)))
    metrics = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    images = pd.concat(frames, ignore_index=True)
    tables = {name: frame for name, frame in comparison_tables(metrics, images, entries, {TRANSFORM: "familiar"},
                                                                  n_boot=plan.bootstrap).items()
              if not frame.empty}
    tables["viewpoint"] = _per_seed(metrics, entries)
    if split.poses is not None:
        tables["viewpoint_poses"] = _by_pose(images, split.poses.cpu().numpy(), familiar)
    manifest = {"runs": entries, "images": len(split), "familiar_images": int(familiar.sum()),
                "novel_images": int((~familiar).sum()), "transforms": {TRANSFORM: list(CONDITIONS)},
                "device_record": device_record(dev, dtype)}
    timing = {"forward": forward, "metrics": time.perf_counter() - start - forward,
              "total": time.perf_counter() - start, "images": float(len(split))}
    return ProbeResult(metrics=metrics, images=images, timing=timing, tables=tables, manifest=manifest)


def _per_seed(metrics: pd.DataFrame, entries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: familiar and novel test error, the familiar validation accuracy it stopped at, its epochs."""
    rows = []
    by = {e.get("name"): e for e in entries}
    for run, part in metrics[metrics["metric"] == "accuracy"].groupby("run", sort=False):
        acc = part.set_index("magnitude")["value"]
        e = by.get(run, {})
        rows.append({"run": run, "model": part["model"].iloc[0], "seed": part["seed"].iloc[0],
                     "familiar_error": 1 - float(acc["familiar"]), "novel_error": 1 - float(acc["novel"]),
                     "val_accuracy": e.get("val_accuracy"), "epochs": e.get("epochs"),
                     "target_accuracy": e.get("target_accuracy"), "reached_target": e.get("reached_target"),
                     "params": e.get("params"), "mflops": None if e.get("flops") is None else e["flops"] / 1e6})
    return pd.DataFrame(rows)


def _pose_axes(poses: np.ndarray) -> dict[str, np.ndarray]:
    """The pose axes an error curve is drawn over, in degrees: smallNORB's (instance, elevation, azimuth, lighting)
    gives elevation (30 + 5 e) and azimuth (10 a); the in-plane analogue's (angle, scale) the angle's size in 15-degree
    bins (their centres)."""
    if poses.shape[1] == 4:
        return {"elevation": 30 + 5 * poses[:, 1], "azimuth": 10 * poses[:, 2]}
    if poses.shape[1] == 2:
        return {"rotation": np.minimum(np.abs(poses[:, 0]) // 15, 11) * 15 + 7.5}
    return {}


def _by_pose(images: pd.DataFrame, poses: np.ndarray, familiar: np.ndarray) -> pd.DataFrame:
    """Per run, pose axis and pose value: the test error and how many images it is over."""
    frames = []
    hit = (images["prediction"] == images["label"]).to_numpy()
    ids = images["image_id"].to_numpy()
    for axis, values in _pose_axes(poses).items():
        frame = pd.DataFrame({"run": images["run"], "model": images["model"], "seed": images["seed"], "axis": axis,
                              "value": values[ids], "familiar": familiar[ids], "error": 1.0 - hit})
        grouped = frame.groupby(["run", "model", "seed", "axis", "value"], sort=False, dropna=False)
        frames.append(grouped.agg(familiar=("familiar", "mean"), error=("error", "mean"), n_images=("error", "size"))
                      .reset_index())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _err(value: float, low: float, high: float) -> str:
    """An accuracy and its interval as an error in %, the interval clipped to [0, 100]."""
    lo, hi = max(0.0, 1 - high), min(1.0, 1 - low)
    return f"{100 * (1 - value):.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def viewpoint_section(data) -> Section:
    """Familiar and novel error per model (intervals over seeds and images), each pair's paired difference of novel
    and of familiar error with its Holm-adjusted verdict, and every run's errors."""
    comparison = data.tables.get("comparison")
    differences = data.tables.get("differences")
    per_seed = data.tables.get("viewpoint")
    if comparison is None:
        comparison = pd.DataFrame(columns=["model", "magnitude", "value", "ci_low", "ci_high", "seeds", "interval"])
    acc = comparison[(comparison["transform"] == TRANSFORM) & (comparison["metric"] == "accuracy")] \
        if len(comparison) else comparison
    rows, lines = [], []
    for model, part in acc.groupby("model", sort=False):
        r = part.set_index("magnitude")
        row = {"model": model, "seeds": int(r["seeds"].iloc[0])}
        for cond in CONDITIONS:
            if cond in r.index:
                row[f"{cond} error % [95% CI]"] = _err(r.loc[cond, "value"], r.loc[cond, "ci_low"], r.loc[cond, "ci_high"])
        rows.append(row)
        if "novel" in r.index and "familiar" in r.index:
            seeds = f"{row['seeds']} seed{'s' if row['seeds'] != 1 else ''}"
            lines.append(f"{model} ({seeds}): familiar test error {row['familiar error % [95% CI]']}, "
                         f"novel {row['novel error % [95% CI]']}.")
    diff_rows = []
    if differences is not None and len(differences):
        d = differences[(differences["transform"] == TRANSFORM) & (differences["metric"] == "accuracy")]
        for r in d.itertuples(index=False):
            # accuracy a - b is error b - a: state error a - b
            lo, hi = -r.ci_high_adjusted, -r.ci_low_adjusted
            verdict = "established" if bool(r.established) else "not established"
            diff_rows.append({"pair": f"{r.model_a} - {r.model_b}", "viewpoints": r.magnitude,
                              "error difference (points)": round(-100 * r.difference, 2),
                              "Bonferroni-level CI": f"[{100 * lo:.2f}, {100 * hi:.2f}]",
                              "p (Holm)": round(float(r.p_holm), 4), "verdict": verdict})
            if r.magnitude == "novel":
                lines.append(f"Novel-viewpoint error, {r.model_a} - {r.model_b}: {-100 * r.difference:+.2f} points "
                             f"[{100 * lo:.2f}, {100 * hi:.2f}], Holm p = {float(r.p_holm):.3g}: {verdict}.")
    notes = ["Protocol (Hinton, Sabour & Frosst 2018, section 5.1): trained on familiar viewpoints only, each run stopped "
             "at the first epoch whose accuracy on a familiar validation split (held out from the training images) "
             "reaches the target; errors are 1 - accuracy on the test images at familiar and at novel viewpoints. "
             "Intervals: seeds x images (Satterthwaite t); differences paired over images, Holm-adjusted over the two "
             "conditions, with Bonferroni-level intervals (capsprobe.metrics.compare)."]
    excluded = data.tables.get("excluded")
    if excluded is not None and len(excluded):
        per = per_seed.set_index("run") if per_seed is not None else pd.DataFrame()
        for r in excluded.itertuples(index=False):
            val = per["val_accuracy"].get(r.run) if "val_accuracy" in per else None
            notes.append(f"{r.run} did not reach the {100 * float(r.target_accuracy):.1f}% familiar validation target "
                         f"in {r.epochs} epochs (it stopped at {100 * float(val if val is not None else np.nan):.2f}%): "
                         "left out of the intervals and comparisons above; its errors are in the table of every run.")
    if data.manifest.get("familiar_images") is not None:
        notes.append(f"Test images: {data.manifest['familiar_images']} at familiar, {data.manifest['novel_images']} at "
                     f"novel viewpoints ({data.manifest.get('dataset', '')}).")
    tables = []
    if diff_rows:
        tables.append(("Paired differences of error (A - B)", pd.DataFrame(diff_rows)))
    published = published_for_runs(data.manifest, NOVEL_VIEWPOINT)
    if len(published):
        tables.append(("Published novel-viewpoint errors beside these models (smallNORB: another data set, and the "
                       "sources' own protocols; set beside, not reproduced)", published))
    if per_seed is not None:
        shown = per_seed.copy()
        for col in ("familiar_error", "novel_error"):
            shown[col] = (100 * shown[col]).round(2)
        shown["val_accuracy"] = pd.to_numeric(shown["val_accuracy"], errors="coerce").round(4)
        if "mflops" in shown:
            shown["mflops"] = pd.to_numeric(shown["mflops"], errors="coerce").round(1)
        tables.append(("Every run (errors in %)", shown))
    figures, captions = {}, {}
    poses = data.tables.get("viewpoint_poses")
    if poses is not None and len(poses):
        from ..report import plots  # lazy: matplotlib and seaborn load when a figure is drawn

        shown = poses.assign(familiar=poses["familiar"] >= 0.5)
        figures["viewpoint_error.png"] = figure_png(plots.plot_viewpoint_error(shown))
        captions["viewpoint_error.png"] = ("Test error against the viewpoint, per model: the mean over its runs, the "
                                           "band the range of its runs; grey: familiar (training) viewpoints.")
    return Section(headlines=lines, table_title="Familiar and novel test error", table=pd.DataFrame(rows),
                   figures=figures, captions=captions, notes=notes, tables=tables)


register_task(Task.extending(get_training_task("viewpoint"), evaluate=viewpoint_evaluate, section=viewpoint_section,
                             suite=False))
