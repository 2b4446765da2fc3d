"""The ``upside-down`` task: the motivating article's upside-down kitten, on digits (issue 48, deliverable 4).

The article (``background/motivating-article.txt``) shows a ResNet that names a kitten but calls it a guinea pig
upside down, and asks for *equivariance*: a model that still recognises the turned image and whose internal
activations say how it was turned. This task measures both at once. Models are trained upright (``classify``'s
training: :mod:`capsprobe.training.objectives`); every test image is then shown at every 15 degrees of the full circle
(:data:`~capsprobe.metrics.upside.ANGLES`, through the suite's own ``rotate``: the same geometry as everywhere else;
the quarter turns are exact pixel permutations) and scored per image and angle: recognised (the prediction is the
label), pose recovered (the angle decoded from the model's representation within 15 degrees; per class, a ridge on the
16-D PCA cross-fitted over two halves of the class's images: :func:`capsprobe.metrics.upside.recover_angles`), and
joint (both). The
four outcomes (equivariant, invariant and blind to pose, pose without the class, failing) are their shares.

Data: classes that keep their identity under rotation. A 6 upside down is a 9, so ``mnist-no69`` (and
``mnist-sample-no69`` offline: :mod:`capsprobe.data.subsets`) leaves out 6 and 9 and relabels the other eight digits
0-7; MNIST rather than Fashion-MNIST, so the runs compare with every other experiment of the suite.

What ``capsprobe perturb`` writes for it:

- per-image rows (``results.parquet``) under transform ``upside-down`` at magnitudes ``0``, ``90``, ``180``,
  ``270``, with two columns beyond the schema: ``pose_error`` (degrees, wrapped) and ``joint`` (1.0 / 0.0; both NaN for
  a model whose poses no loss trains, as ``backbone_head_self``);
- metrics (``summary.csv``) ``accuracy``, ``pose_recovered`` and ``joint`` at ``0``, ``90``, ``180``, ``270`` and
  ``circle`` (every image's mean over the 24 angles), each with a 95% percentile bootstrap interval over images;
- the calibrated comparisons of :mod:`capsprobe.metrics.compare` (``comparison.csv``, ``differences.csv``): accuracy
  at the quarter turns paired over images (seeds x images t); ``joint``, ``pose_recovered`` and every ``circle`` row
  as fitted metrics, over seeds and each run's image interval (the paired per-image test for ``joint`` needs
  ``joint`` in :data:`capsprobe.metrics.compare.PER_IMAGE`, reading the ``joint`` column);
- ``upside_angles.csv``: per run and angle (and ``circle``) the accuracy, pose recovered and joint score with their
  intervals and the four outcome shares (the figure's curve); ``upside_classes.csv``: per run and class, the same at
  ``180`` and on the circle (0, 1 and 8 look alike after a half turn: their pose at 180 degrees is not in the image).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .. import metrics as M
from ..data import ImageSplit, iterate_batches
from ..data.subsets import NO69_DIGITS
from ..errors import InvalidInputError
from ..metrics.compare import comparison_tables
from ..metrics.upside import ANGLES, KEY_ANGLES, OUTCOME_LABELS, OUTCOMES, TOLERANCE, outcomes, recover_angles
from ..models import adapt
from ..probe import IMAGE_COLUMNS, METRIC_COLUMNS, ProbePlan, ProbeResult, as_subject, metric_row
from ..probe.engine import poses_trained
from ..report import Section, figure_png
from ..report.section import report_colours, two_axis_points
from ..runtime import autocast_context, autocast_dtype, device_record, resolve_device, tf32_off
from ..training.objectives import TrainingTask, UnknownTaskError, get_training_task
from ..transforms import get_transform
from .base import Task, register_task

__all__ = ["CONDITIONS", "EXTRA_COLUMNS", "METRIC_NAMES", "TRANSFORM", "upside_down_evaluate", "upside_down_section"]

TRANSFORM = "upside-down"
CONDITIONS = ("0", "90", "180", "270", "circle")  # the quarter turns, and the mean over the full circle
METRIC_NAMES = ("accuracy", "pose_recovered", "joint")
EXTRA_COLUMNS = ["pose_error", "joint"]  # per-image columns beyond the schema's IMAGE_COLUMNS
_LABELS = {"accuracy": "accuracy", "pose_recovered": "pose recovered", "joint": "joint"}


def _label(angle: float) -> str:
    return f"{angle:g}"


def _signed(angle: float) -> float:
    """The angle in the suite's range ``(-180, 180]`` (270 is -90: the same turn)."""
    return angle - 360.0 if angle > 180 else angle


@tf32_off()
def upside_down_evaluate(subjects: Sequence[Any], split: ImageSplit, plan: ProbePlan, surrogate: Any = None
                         ) -> ProbeResult:
    """Every subject on ``split`` rotated through the full circle: recognised, pose recovered, joint (see the module
    docstring). The plan's transformations are not used; its batch size, device, seed (the halves of the angle
    decoder) and bootstrap are.

    Raises:
        InvalidInputError: a class with fewer than 4 images (its angle decoder is fitted on one half and scores the
            other), or non-finite scores or representations.
    """
    n = len(split)
    classes, counts = np.unique(split.labels.cpu().numpy(), return_counts=True)
    if n == 0 or counts.min() < 4:
        few = ", ".join(f"{int(c)} ({int(k)})" for c, k in zip(classes, counts) if k < 4) or "none"
        raise InvalidInputError(f"the upside-down test needs at least 4 images of each class (each class's angle "
                                f"decoder is fitted on one half and scores the other); classes with fewer: {few}")
    dev = resolve_device(plan.device)
    dtype = autocast_dtype(dev, plan.amp)  # None by default: float32, TF32 off
    rotate = get_transform("rotate")
    labels = split.labels.cpu().numpy()
    key = [ANGLES.index(a) for a in KEY_ANGLES]
    frames, metric_rows, angle_rows, class_rows, entries = [], [], [], [], []
    untrained: list[str] = []  # runs whose class poses no loss trains: accuracy only (as the suite's probe)
    start = time.perf_counter()
    forward = fitting = 0.0
    for item in subjects:
        subject = as_subject(item)
        adapter = adapt(subject.model).to(dev).eval()
        entry = subject.manifest_entry(adapter)
        trained = poses_trained(adapter)
        if adapter.has_poses:
            entry["poses_trained"] = trained
        t0 = time.perf_counter()
        scores, reps, changes = _passes(adapter, split, plan, dev, dtype, rotate)  # (N, A, K), (N, A, F), (N, A)
        forward += time.perf_counter() - t0
        if not (np.isfinite(scores).all() and np.isfinite(reps).all()):
            raise InvalidInputError(f"{subject.name}: non-finite class scores or representation on the upside-down test")
        pred = scores.argmax(2)  # (N, A)
        recognised = pred == labels[:, None]
        t0 = time.perf_counter()
        if trained:
            rec = recover_angles(reps, ANGLES, seed=plan.seed, groups=labels, by_group=True)  # a decoder per class
            recovered, error = rec.recovered(TOLERANCE), rec.error
            entry.update(pose_penalties=list(rec.penalties), pose_at_edge=rec.at_edge)
        else:
            recovered, error, rec = None, np.full(recognised.shape, np.nan), None
            untrained.append(subject.name)
        fitting += time.perf_counter() - t0
        entries.append(entry)
        joint = recognised & recovered if recovered is not None else None
        ident = subject.ident()
        base = {**ident, "transform": TRANSFORM, "kind": TRANSFORM}
        for j, angle in zip(key, KEY_ANGLES):
            frames.append(pd.DataFrame({
                **base, "magnitude": _label(angle), "image_id": np.arange(n), "label": labels,
                "prediction": pred[:, j], "true_score": scores[np.arange(n), j, labels],
                "confidence": scores[:, j].max(1), "pixel_change": changes[:, j], "pose_error": error[:, j],
                "joint": joint[:, j].astype(float) if joint is not None else np.nan,
            })[IMAGE_COLUMNS + EXTRA_COLUMNS])
        per_metric = {"accuracy": recognised} if joint is None else \
            {"accuracy": recognised, "pose_recovered": recovered, "joint": joint}
        penalty = float(np.mean(rec.penalties)) if rec is not None else np.nan  # the two ridges' log10 penalties
        at_edge = bool(rec.at_edge) if rec is not None else False
        for cond in CONDITIONS:
            row = {**base, "magnitude": cond, "magnitude_value": float(cond) if cond != "circle" else np.nan}
            for name, hits in per_metric.items():
                values = hits.mean(1) if cond == "circle" else hits[:, ANGLES.index(float(cond))]
                fitted = name != "accuracy"  # the pose is read by the fitted ridges
                metric_rows.append(metric_row(row, name, float(values.mean()),
                                              M.bootstrap_mean_ci(values.astype(float), plan.bootstrap, plan.seed), n,
                                              penalty if fitted else np.nan, at_edge and fitted))
        angle_rows += _angle_rows(base, recognised, recovered, plan)
        class_rows += _class_rows(ident, labels, recognised, recovered)
    metrics = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    images = pd.concat(frames, ignore_index=True)
    # no identity condition: the upright digits are one condition of this test, not a baseline others are changes of
    tables = {name: frame for name, frame in comparison_tables(metrics, images, entries, {},
                                                                  n_boot=plan.bootstrap).items() if not frame.empty}
    tables["upside_angles"] = pd.DataFrame(angle_rows)
    tables["upside_classes"] = pd.DataFrame(class_rows)
    manifest = {"runs": entries, "images": n, "transforms": {TRANSFORM: list(CONDITIONS)},
                "angles": list(ANGLES), "tolerance_degrees": TOLERANCE, "device_record": device_record(dev, dtype)}
    if untrained:
        manifest["untrained_poses"] = {"runs": untrained, "left_out": ["pose_recovered", "joint"],
                                       "why": "no training loss reaches these models' class poses"}
    timing = {"forward": forward, "fitting": fitting, "metrics": time.perf_counter() - start - forward - fitting,
              "total": time.perf_counter() - start, "images": float(n * len(ANGLES))}
    return ProbeResult(metrics=metrics, images=images, timing=timing, tables=tables, manifest=manifest)


def _passes(adapter, split: ImageSplit, plan: ProbePlan, dev: torch.device, dtype, rotate
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores ``(N, A, K)``, representations ``(N, A, F)`` and pixel changes ``|Tx - x|^2`` ``(N, A)`` of every
    image at every angle of :data:`ANGLES`."""
    scores, reps, changes = [], [], []
    with torch.inference_mode():
        for images, _ in iterate_batches(split, plan.batch_size, device=dev):
            s, r, c = [], [], []
            for angle in ANGLES:
                moved = rotate(images, _signed(angle)).images
                with autocast_context(dev, dtype):
                    out = adapter.outputs(moved)
                s.append(out.scores.float().cpu())
                r.append(out.representation.float().cpu())
                c.append(((moved.float() - images.float()) ** 2).flatten(1).sum(1).cpu())
            scores.append(torch.stack(s, 1))
            reps.append(torch.stack(r, 1))
            changes.append(torch.stack(c, 1))
    return (torch.cat(scores).numpy(), torch.cat(reps).numpy(), torch.cat(changes).double().numpy())


def _angle_rows(base: dict[str, Any], recognised: np.ndarray, recovered: np.ndarray | None, plan: ProbePlan
                ) -> list[dict[str, Any]]:
    """Tidy rows per angle (and ``circle``): accuracy, pose recovered and joint with their bootstrap intervals over
    images, and the four outcome shares (no interval)."""
    rows = []
    parts = outcomes(recognised, recovered) if recovered is not None else {}
    shown = {"accuracy": recognised} if recovered is None else \
        {"accuracy": recognised, "pose_recovered": recovered, "joint": parts["equivariant"]}
    for j, angle in [*enumerate(ANGLES), (None, None)]:
        cond = {**base, "magnitude": "circle" if angle is None else _label(angle),
                "magnitude_value": np.nan if angle is None else angle}
        for name, hits in shown.items():
            values = (hits.mean(1) if j is None else hits[:, j]).astype(float)
            lo, hi = M.bootstrap_mean_ci(values, plan.bootstrap, plan.seed)
            rows.append({**cond, "metric": name, "value": float(values.mean()), "ci_low": lo, "ci_high": hi})
        for name in OUTCOMES if parts else ():
            values = parts[name] if j is None else parts[name][:, j]
            rows.append({**cond, "metric": name, "value": float(values.mean()), "ci_low": np.nan, "ci_high": np.nan})
    return rows


def _class_rows(ident: dict[str, Any], labels: np.ndarray, recognised: np.ndarray, recovered: np.ndarray | None
                ) -> list[dict[str, Any]]:
    """Per class, at 180 degrees and on the circle: accuracy, pose recovered, joint and the number of images."""
    rows = []
    half = ANGLES.index(180.0)
    for label in np.unique(labels):
        sel = labels == label
        for cond in ("180", "circle"):
            pick = (lambda a: a[sel].mean()) if cond == "circle" else (lambda a: a[sel, half].mean())
            row = {**ident, "label": int(label), "magnitude": cond, "n_images": int(sel.sum()),
                   "accuracy": float(pick(recognised))}
            if recovered is not None:
                row.update(pose_recovered=float(pick(recovered)), joint=float(pick(recognised & recovered)))
            rows.append(row)
    return rows


# --- the report section --------------------------------------------------------------------------------------------


def _cell(value: float, low: float, high: float) -> str:
    return f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _condition_name(cond: str) -> str:
    return "the full circle" if cond == "circle" else f"{cond} degrees"


def upside_down_section(data) -> Section:
    """Per model, accuracy, pose recovered and the joint score at the quarter turns and on the circle (intervals over
    seeds and images), the four outcomes, each pair's differences with their Holm-adjusted verdicts, the joint score
    per class, every run, and the accuracy and joint score against the angle."""
    comparison = data.tables.get("comparison")
    differences = data.tables.get("differences")
    angles = data.tables.get("upside_angles")
    classes = data.tables.get("upside_classes")
    rows, lines = [], []
    comp = pd.DataFrame() if comparison is None or not len(comparison) else \
        comparison[comparison["transform"] == TRANSFORM].assign(magnitude=lambda f: f["magnitude"].astype(str))
    for model, part in (comp.groupby("model", sort=False) if len(comp) else ()):
        seeds = int(part["seeds"].max())
        for name in METRIC_NAMES:
            r = part[part["metric"] == name].set_index("magnitude")
            if r.empty:
                continue
            row = {"model": model, "seeds": seeds, "metric": _LABELS[name]}
            for cond in CONDITIONS:
                if cond in r.index:
                    row[cond if cond == "circle" else f"{cond} deg"] = _cell(r.loc[cond, "value"], r.loc[cond, "ci_low"],
                                                                           r.loc[cond, "ci_high"])
            rows.append(row)
        acc = part[part["metric"] == "accuracy"].set_index("magnitude")
        joint = part[part["metric"] == "joint"].set_index("magnitude")
        if {"0", "180", "circle"} <= set(acc.index):
            text = (f"{model} ({seeds} seed{'s' * (seeds != 1)}): accuracy upright {100 * acc.loc['0', 'value']:.1f}%, "
                    f"upside down {_cell(*acc.loc['180', ['value', 'ci_low', 'ci_high']])}, on the circle "
                    f"{100 * acc.loc['circle', 'value']:.1f}%")
            if {"180", "circle"} <= set(joint.index):
                text += (f"; recognised with its rotation recovered within {TOLERANCE:g} degrees: upside down "
                         f"{_cell(*joint.loc['180', ['value', 'ci_low', 'ci_high']])}, on the circle "
                         f"{_cell(*joint.loc['circle', ['value', 'ci_low', 'ci_high']])}")
            lines.append(text + ".")
    diff_rows = []
    if differences is not None and len(differences):
        d = differences[(differences["transform"] == TRANSFORM) & differences["metric"].isin(["accuracy", "joint"])]
        for r in d.itertuples(index=False):
            testable = bool(np.isfinite(r.p_holm))
            verdict = ("established" if bool(r.established) else "not established") if testable else \
                "not testable (a model with 1 seed)"
            interval = f"[{100 * r.ci_low_adjusted:.2f}, {100 * r.ci_high_adjusted:.2f}]" if testable else "-"
            diff_rows.append({"pair": f"{r.model_a} - {r.model_b}", "metric": _LABELS[r.metric],
                              "rotation": _condition_name(str(r.magnitude)),
                              "difference (points)": round(100 * r.difference, 2), "Bonferroni-level CI": interval,
                              "p (Holm)": round(float(r.p_holm), 4) if testable else "-", "verdict": verdict})
            if r.metric == "joint" and str(r.magnitude) in ("180", "circle") and testable:
                lines.append(f"Joint score, {r.model_a} - {r.model_b}, {_condition_name(str(r.magnitude))}: "
                             f"{100 * r.difference:+.1f} points {interval} (Bonferroni level), Holm p = "
                             f"{float(r.p_holm):.3g}: {verdict}.")
    tables = []
    outcome_table = _outcome_table(angles)
    if len(outcome_table):
        tables.append(("The four outcomes, share of image x angle in % (mean over seeds)", outcome_table))
    if diff_rows:
        tables.append(("Paired differences (A - B), accuracy and joint score", pd.DataFrame(diff_rows)))
    class_table = _class_table(classes, str(data.manifest.get("dataset", "")))
    if len(class_table):
        tables.append(("The joint score per digit in % (mean over seeds), upside down and over the circle", class_table))
    if angles is not None and len(angles):
        tables.append(("Every run, in % (accuracy / joint score)", _run_table(angles)))
    notes = [f"Protocol (issue 48; the motivating article's upside-down kitten): trained upright; every test image "
             f"rotated by the suite's rotate through the full circle every 15 degrees (24 angles; the quarter turns "
             f"exact). Per image and angle: recognised (prediction = label); pose recovered (the angle decoded from "
             f"the representation of the rotated image alone, per class a ridge on its 16-D PCA predicting cos and "
             f"sin, fitted on one half of the class's images at every angle and scored on the other, both ways, "
             f"within {TOLERANCE:g} degrees; chance 1/12); joint: both. 'circle' is each image's mean over the 24 angles. Intervals: "
             f"accuracy at the quarter turns over seeds x images (Satterthwaite t, logit); the joint score, the pose "
             f"and every circle row over seeds and each run's bootstrap interval over images "
             f"(capsprobe.metrics.compare); differences Holm-adjusted over the conditions of each pair and metric.",
             "Outcomes: " + "; ".join(f"{k}: {v}" for k, v in OUTCOME_LABELS.items()) + "."]
    if str(data.manifest.get("dataset", "")).endswith("-no69"):
        notes.append("Digits 6 and 9 are left out (a 6 upside down is a 9); the others keep their identity under "
                     "rotation, but 0, 1 and 8 look much the same after a half turn, so their pose at 180 degrees is "
                     "not in the image: the per-digit table shows that ceiling, which every model shares.")
    if data.manifest.get("untrained_poses"):
        notes.append(f"{', '.join(data.manifest['untrained_poses']['runs'])}: class poses untrained (no loss reaches "
                     "them): accuracy only, no pose or joint score.")
    figures, captions = {}, {}
    if angles is not None and len(angles):
        from ..report import plots  # lazy: matplotlib and seaborn load when a figure is drawn

        # one panel per measure: the measures as the curves' "transformations", the share as their one metric
        curve = angles[(angles["magnitude"].astype(str) != "circle") & angles["metric"].isin(["accuracy", "joint"])]
        curve = curve.assign(transform=curve["metric"].map({"accuracy": "recognised",
                                                            "joint": f"joint (pose within {TOLERANCE:g} deg)"}),
                             metric="share")
        with report_colours(data):
            figures["upside_down.png"] = figure_png(plots.plot_accuracy_curves(curve, ("share",)))
        captions["upside_down.png"] = ("Accuracy and joint score (recognised and rotation recovered within "
                                       f"{TOLERANCE:g} degrees) against the rotation, per model (degrees, "
                                       "counter-clockwise).")
    points = two_axis_points(comp, "accuracy", "pose_recovered", [(TRANSFORM, c) for c in CONDITIONS if c != "0"],
                             label=lambda _, m: m if m == "circle" else f"{m} deg")
    if len(points):
        from ..report import plots  # lazy: matplotlib and seaborn load when a figure is drawn

        classes_n = len(NO69_DIGITS) if str(data.manifest.get("dataset", "")).endswith("-no69") else 10
        with report_colours(data):
            figures["recognised_vs_pose.png"] = figure_png(plots.plot_two_axes(
                points, "recognised (accuracy)", f"rotation recovered within {TOLERANCE:g} deg",
                chance={"x": 1 / classes_n, "y": 2 * TOLERANCE / 360}))
        captions["recognised_vs_pose.png"] = (
            "Each model on two axes at the quarter turns and over the circle: the decision (recognised, x) against "
            "the representation (its rotation recovered within "
            f"{TOLERANCE:g} degrees, y), the mean over training seeds with its 95% interval over seeds and images "
            "on each axis; dotted: chance (1/classes; 1/12 for the angle). Right and high: equivariant; right and "
            "low: recognising without the pose (invariant); left and high: the pose without the class.")
    return Section(headlines=lines, table_title="Accuracy, pose recovered and joint score, % [95% CI]",
                   table=pd.DataFrame(rows), figures=figures, captions=captions, notes=notes, tables=tables)


def _outcome_table(angles: pd.DataFrame | None) -> pd.DataFrame:
    """Per model and condition (the quarter turns and the circle), the four outcome shares in %, mean over seeds."""
    if angles is None or not len(angles) or not set(OUTCOMES) & set(angles["metric"]):
        return pd.DataFrame()
    a = angles.assign(magnitude=angles["magnitude"].astype(str))
    a = a[a["magnitude"].isin(CONDITIONS) & a["metric"].isin(OUTCOMES)]
    wide = a.groupby(["model", "magnitude", "metric"], sort=False)["value"].mean().unstack("metric").reset_index()
    wide = wide.assign(order=wide["magnitude"].map(CONDITIONS.index)).sort_values(["model", "order"], kind="stable")
    out = wide[["model", "magnitude"]].rename(columns={"magnitude": "rotation"}).reset_index(drop=True)
    for name in OUTCOMES:
        out[OUTCOME_LABELS[name]] = (100 * wide[name].to_numpy()).round(1)
    return out


def _class_table(classes: pd.DataFrame | None, dataset: str) -> pd.DataFrame:
    """Per model (rows: upside down, and the circle) and digit (columns), the joint score in %, mean over seeds."""
    if classes is None or not len(classes) or "joint" not in classes:
        return pd.DataFrame()
    c = classes.assign(magnitude=classes["magnitude"].astype(str))
    digit = (lambda k: NO69_DIGITS[k]) if dataset.endswith("-no69") else (lambda k: k)
    c = c.assign(digit=[str(digit(int(k))) for k in c["label"]])
    wide = (100 * c.pivot_table(index=["model", "magnitude"], columns="digit", values="joint", aggfunc="mean",
                                sort=False)).round(1)
    wide.columns.name = None
    out = wide.reset_index().rename(columns={"magnitude": "rotation"})
    out["rotation"] = out["rotation"].map(_condition_name)
    return out


def _run_table(angles: pd.DataFrame) -> pd.DataFrame:
    """One row per run: accuracy / joint score at each condition."""
    a = angles.assign(magnitude=angles["magnitude"].astype(str))
    a = a[a["magnitude"].isin(CONDITIONS) & a["metric"].isin(["accuracy", "joint"])]
    rows = []
    for run, part in a.groupby("run", sort=False):
        v = part.set_index(["metric", "magnitude"])["value"]
        row = {"run": run, "model": part["model"].iloc[0], "seed": part["seed"].iloc[0]}
        for cond in CONDITIONS:
            acc = f"{100 * v[('accuracy', cond)]:.1f}"
            row[cond if cond == "circle" else f"{cond} deg"] = \
                f"{acc} / {100 * v[('joint', cond)]:.1f}" if ("joint", cond) in v.index else acc
        rows.append(row)
    return pd.DataFrame(rows)


def _training_task() -> TrainingTask:
    """The training half: training's own ``upside-down`` where :mod:`capsprobe.training.objectives` registers one (the
    ``--jobs`` workers import training, not the tasks), else ``classify``'s under this task's name (trained upright,
    one label per image)."""
    try:
        return get_training_task(TRANSFORM)
    except UnknownTaskError:
        return replace(get_training_task("classify"), name=TRANSFORM,
                       description="trained upright, tested rotated through the full circle: recognised, and the "
                                   "rotation recovered from the representation (issue 48)")


register_task(Task.extending(_training_task(), evaluate=upside_down_evaluate, section=upside_down_section,
                             suite=False))
