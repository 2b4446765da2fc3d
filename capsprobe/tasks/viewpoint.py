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

Pose against the object's true pose (issue 49, item 2), when the split's poses are smallNORB's columns (instance,
elevation, azimuth, lighting: smallNORB and synthNORB): in the same forward pass as the scores, the whole
representation and, for a capsule model whose poses a loss trains, the true-class capsule's pose are kept, and
:mod:`capsprobe.metrics.posetruth` reads the object's azimuth and elevation from each (split by instance, the
representation projected on 16 principal axes of the fitting instances). ``viewpoint_posetruth.csv`` holds, per run
and representation (``pose`` | ``full``):

- ``measure = probe``: per probe (``linear``; ``mlp`` when :data:`POSETRUTH_MLP`), factor (``azimuth``,
  ``elevation``) and part, the held-out ``R^2`` with its interval, the control task's ``R^2`` and the selectivity
  (Hewitt & Liang 2019), the azimuth's error in degrees, and the counts. ``familiar``: held-out instances at familiar
  viewpoints; ``novel``: the same probe (fitted on the fitting instances' familiar viewpoints) scoring the held-out
  instances' novel viewpoints (:func:`~capsprobe.metrics.posetruth.pose_r2_novel`);
- ``measure = dci``: DCI (Eastwood & Williams 2018) over every test image: ``factor = all`` the overall
  disentanglement, completeness and informativeness, ``azimuth`` and ``elevation`` each factor's completeness and
  informativeness (the azimuth's the mean of its cosine's and sine's);
- ``measure = step_map``: the fitted map from an image to the same instance, elevation and lamp at azimuth
  + 20 degrees, its held-out gain over the identity and error (``map_error``, ``1 - R^2``) and its composition
  error across two steps (+ 40 degrees)
  (:func:`~capsprobe.metrics.posetruth.step_map`), where the test split holds such pairs.

A model whose poses no loss trains (``poses_trained`` False) gets no rows: its representation is its poses, as the
probe engine leaves them out. The in-plane analogue's poses (angle, scale) get no table.
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
from ..metrics import posetruth as PT
from ..metrics.compare import comparison_tables
from ..metrics.functional import TooFewImagesError
from ..metrics.stats import t_interval
from ..models import adapt
from ..probe import IMAGE_COLUMNS, METRIC_COLUMNS, ProbePlan, ProbeResult, as_subject, metric_row
from ..probe.engine import poses_trained
from ..report import Section, figure_png
from ..report.published import NOVEL_VIEWPOINT, published_for_runs
from ..runtime import autocast_context, autocast_dtype, device_record, resolve_device, tf32_off
from ..training.objectives import get_training_task
from .base import Task, register_task

__all__ = ["CONDITIONS", "POSETRUTH_COLUMNS", "POSETRUTH_MLP", "STEP_DEGREES", "viewpoint_evaluate",
           "viewpoint_section"]

TRANSFORM = "viewpoint"
CONDITIONS = ("familiar", "novel")
# the MLP probe beside the linear one. Its cost, measured on synthNORB's test split's size (24,300 images, 2 shared
# cores, OMP_NUM_THREADS=1): a capsule run's whole pose-truth read-out (true-class pose and an 80-D representation;
# probes, DCI, step map) takes 12.9 s with the MLP, 2.1 s without (the MLP: 8 fits per representation, 2 factors x
# real and control x familiar and novel); a convnet run has one representation. Small beside training: on.
POSETRUTH_MLP = True
STEP_DEGREES = 20  # the step map's azimuth step (smallNORB's azimuth spacing); the composition's double step is 40
PCA_DIM = 16  # the whole representation is read on its top 16 principal axes (of the fitting instances)
POSETRUTH_COLUMNS = [
    "run", "model", "seed", "representation", "measure", "probe", "factor", "part",
    "r2", "r2_low", "r2_high", "control_r2", "selectivity", "selectivity_low", "selectivity_high", "angle_error",
    "disentanglement", "completeness", "informativeness",
    "gain", "gain_low", "gain_high", "composition", "composition_low", "composition_high", "composition_moved",
    "map_error", "n", "n_fit", "instances", "at_edge",
]


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
    norb = split.poses is not None and split.poses.shape[1] == 4  # smallNORB's columns: the pose-truth table
    frames, metric_rows, entries, truth_rows = [], [], [], []
    untrained: list[str] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    forward = fitting = 0.0
    for item in subjects:
        subject = as_subject(item)
        adapter = adapt(subject.model).to(dev).eval()
        entry = subject.manifest_entry(adapter)
        trained = poses_trained(adapter)
        if adapter.has_poses:
            entry["poses_trained"] = trained
        if norb and not trained:
            untrained.append(subject.name)
        entries.append(entry)
        keep = norb and trained
        scores, reps, true_poses = [], [], []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for images, batch_labels in iterate_batches(split, plan.batch_size, device=dev):
                with autocast_context(dev, dtype):
                    out = adapter.outputs(images)
                scores.append(out.scores.float().cpu())
                if keep:
                    reps.append(out.representation.float().cpu())
                    if out.poses is not None:  # the true class's capsule
                        rows = torch.arange(len(images), device=out.poses.device)
                        true_poses.append(out.poses.float()[rows, batch_labels.to(out.poses.device)].cpu())
        s = torch.cat(scores)
        forward += time.perf_counter() - t0
        if not torch.isfinite(s).all():
            raise InvalidInputError(f"{subject.name}: non-finite class scores on the viewpoint test")
        labels = split.labels.cpu()
        if keep:
            representations = {"pose": torch.cat(true_poses).numpy()} if true_poses else {}
            representations["full"] = torch.cat(reps).numpy()
            if not all(np.isfinite(r).all() for r in representations.values()):
                raise InvalidInputError(f"{subject.name}: non-finite representation on the viewpoint test")
            t0 = time.perf_counter()
            try:
                truth_rows += _pose_truth(subject.ident(), representations, labels.numpy(),
                                          split.poses.cpu().numpy(), familiar, plan)  # type: ignore[union-attr]
            except TooFewImagesError as exc:
                skipped[subject.name] = str(exc)
            fitting += time.perf_counter() - t0
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
    if truth_rows:
        tables["viewpoint_posetruth"] = pd.DataFrame(truth_rows).reindex(columns=POSETRUTH_COLUMNS)
    manifest: dict[str, Any] = {"runs": entries, "images": len(split), "familiar_images": int(familiar.sum()),
                                "novel_images": int((~familiar).sum()), "transforms": {TRANSFORM: list(CONDITIONS)},
                                "device_record": device_record(dev, dtype)}
    if norb:
        manifest["posetruth"] = {"probes": list(_probes()), "pca": PCA_DIM, "step_degrees": STEP_DEGREES,
                                 "split": "by instance", "seed": plan.seed, "bootstrap": plan.bootstrap,
                                 **({"skipped": skipped} if skipped else {})}
    if untrained:
        manifest["untrained_poses"] = {"runs": untrained, "left_out": ["viewpoint_posetruth"],
                                       "why": "no training loss reaches these models' class poses"}
    timing = {"forward": forward, "posetruth": fitting, "metrics": time.perf_counter() - start - forward - fitting,
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


def _probes() -> tuple[str, ...]:
    return PT.PROBES if POSETRUTH_MLP else ("linear",)


def _azimuth_steps(poses: np.ndarray, labels: np.ndarray, degrees: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` rows: ``dst`` is ``src``'s class, instance, elevation and lamp at azimuth ``+ degrees`` (mod 360);
    each row a source at most once (a repeated viewpoint: its first image)."""
    key = pd.DataFrame({"label": labels, "instance": poses[:, 0], "elevation": poses[:, 1],
                        "lighting": poses[:, 3], "azimuth": np.round(10 * poses[:, 2]).astype(int) % 360,
                        "row": np.arange(len(labels))}).drop_duplicates(
        ["label", "instance", "elevation", "lighting", "azimuth"])
    moved = key.assign(azimuth=(key["azimuth"] - degrees) % 360)  # the row seen from its source's azimuth
    pairs = key.merge(moved, on=["label", "instance", "elevation", "lighting", "azimuth"], suffixes=("", "_dst"))
    return pairs["row"].to_numpy(), pairs["row_dst"].to_numpy()


def _principal(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``x`` on the top :data:`PCA_DIM` principal axes of the rows ``fit`` (as it is when no wider)."""
    if x.shape[1] <= PCA_DIM:
        return x
    from sklearn.decomposition import PCA

    return PCA(n_components=min(PCA_DIM, len(fit)), random_state=0).fit(x[fit]).transform(x)


def _pose_truth(ident: dict[str, Any], representations: dict[str, np.ndarray], labels: np.ndarray,
                poses: np.ndarray, familiar: np.ndarray, plan: ProbePlan) -> list[dict[str, Any]]:
    """The ``viewpoint_posetruth`` rows of one run (module docstring): every representation read by every probe
    on familiar and novel viewpoints, its DCI, and its azimuth step map where the split holds step pairs. Classes are
    the groups (splits stratified by class, the control shuffled within class, one step map per class) and
    smallNORB's instance (numbered within class) the unit of every split."""
    axes = _pose_axes(poses)
    factors = {"azimuth": axes["azimuth"], "elevation": axes["elevation"]}
    instance = poses[:, 0]
    step = _azimuth_steps(poses, labels, STEP_DEGREES)
    double = _azimuth_steps(poses, labels, 2 * STEP_DEGREES)
    fit, _ = PT.pose_split(len(labels), plan.seed, groups=labels, instance=instance)
    in_fit = np.zeros(len(labels), dtype=bool)
    in_fit[fit] = True
    triples = np.intersect1d(step[0], double[0])
    has_steps = bool(len(triples) and in_fit[triples].any() and (~in_fit[triples]).any())
    rows = []
    for name, x in representations.items():
        base = {**ident, "representation": name}
        for probe in _probes():
            res = PT.pose_r2_novel(x, factors, familiar, labels, instance, probe, PCA_DIM, plan.seed,
                                    n_boot=plan.bootstrap)
            for part, read in (("familiar", res.familiar), ("novel", res.novel)):
                for factor in factors:
                    real, control = read.real[factor], read.control[factor]
                    lo, hi = read.selectivity_ci[factor]
                    rows.append({**base, "measure": "probe", "probe": probe, "factor": factor, "part": part,
                                 "r2": real.r2, "r2_low": real.ci_low, "r2_high": real.ci_high,
                                 "control_r2": control.r2, "selectivity": read.selectivity[factor],
                                 "selectivity_low": lo, "selectivity_high": hi, "angle_error": real.angle_error,
                                 "n": read.n_held, "n_fit": read.n_fit, "instances": read.n_instances[1],
                                 "at_edge": real.at_edge})
        d = PT.dci(x, factors, labels, instance, PCA_DIM, plan.seed)
        dci_base = {**base, "measure": "dci", "probe": "linear", "part": "all", "n": d.n_held, "n_fit": d.n_fit,
                    "at_edge": d.at_edge}
        rows.append({**dci_base, "factor": "all", "disentanglement": d.disentanglement,
                     "completeness": d.overall_completeness, "informativeness": d.overall_informativeness})
        for factor in factors:
            cols = [f for f in d.factors if f == factor or f.startswith(f"{factor}_")]  # an angle: cos and sin
            rows.append({**dci_base, "factor": factor,
                         "completeness": float(np.mean([d.completeness[f] for f in cols])),
                         "informativeness": float(np.mean([d.informativeness[f] for f in cols]))})
        if has_steps:
            sm = PT.step_map(_principal(x, fit), step, double, labels, instance, plan.seed, n_boot=plan.bootstrap)
            rows.append({**base, "measure": "step_map", "probe": "linear", "factor": "azimuth",
                         "part": f"+{STEP_DEGREES} deg", "gain": sm.gain, "gain_low": sm.ci["gain"][0],
                         "gain_high": sm.ci["gain"][1], "composition": sm.composition,
                         "composition_low": sm.ci["composition"][0], "composition_high": sm.ci["composition"][1],
                         "composition_moved": sm.composition_moved, "map_error": sm.error, "n": sm.n_pairs[1], "n_fit": sm.n_pairs[0],
                         "at_edge": sm.at_edge})
    return rows


def _err(value: float, low: float, high: float) -> str:
    """An accuracy and its interval as an error in %, the interval clipped to [0, 100]."""
    lo, hi = max(0.0, 1 - high), min(1.0, 1 - low)
    return f"{100 * (1 - value):.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def _over_seeds(frame: pd.DataFrame, column: str) -> str:
    """One value per run: their mean with a 95% t interval over the runs (seeds), or, for one run, the value with its
    own interval (``<column>_low``/``_high`` where the table has them)."""
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        row = frame.loc[values.index[0]]
        lo, hi = row.get(f"{column}_low"), row.get(f"{column}_high")
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
            return f"{values.iloc[0]:.2f}"
        return f"{values.iloc[0]:.2f} [{float(lo):.2f}, {float(hi):.2f}]"
    mean = float(values.mean())
    lo, hi = t_interval(mean, float(values.std(ddof=1)) / np.sqrt(len(values)), len(values) - 1)
    return f"{mean:.2f} [{float(lo):.2f}, {float(hi):.2f}]"


def _pose_truth_table(truth: pd.DataFrame, left_out: set) -> pd.DataFrame:
    """Per model, representation and probe: azimuth and elevation ``R^2`` on familiar and novel viewpoints, their
    selectivity on familiar ones, the DCI completeness and the step map's composition error (linear rows only: both
    are linear read-outs), each over the model's runs (:func:`_over_seeds`)."""
    truth = truth[~truth["run"].isin(left_out)]
    probe = truth[truth["measure"] == "probe"]
    rows = []
    for (model, rep, name), part in probe.groupby(["model", "representation", "probe"], sort=False):
        row: dict[str, Any] = {"model": model, "representation": rep, "probe": name, "seeds": part["run"].nunique()}
        for factor in ("azimuth", "elevation"):
            for where in CONDITIONS:
                row[f"{factor} R^2 {where}"] = _over_seeds(
                    part[(part["factor"] == factor) & (part["part"] == where)], "r2")
            row[f"{factor} selectivity"] = _over_seeds(
                part[(part["factor"] == factor) & (part["part"] == "familiar")], "selectivity")
        same = (truth["model"] == model) & (truth["representation"] == rep)
        linear = name == "linear"
        row["DCI completeness"] = _over_seeds(truth[same & (truth["measure"] == "dci") & (truth["factor"] == "all")],
                                              "completeness") if linear else ""
        steps = truth[same & (truth["measure"] == "step_map")]
        row[f"composition error (+{STEP_DEGREES} deg, twice)"] = _over_seeds(steps, "composition") if linear else ""
        rows.append(row)
    return pd.DataFrame(rows)


POSE_TRUTH_NOTE = (
    "Pose against the object's true pose: the object's azimuth (as its cosine and sine; R^2 their mean) and elevation "
    "decoded from the true-class capsule's pose (pose) or the whole representation on its top 16 principal axes "
    "(full), by a ridge (linear) and a one-hidden-layer MLP (mlp) probe. The split is by instance: the probe is "
    "fitted on half of each category's test instances and scored on the other half (familiar: their familiar "
    "viewpoints; novel: their novel ones, the probe fitted on familiar viewpoints only). Selectivity is R^2 minus that "
    "of the same probe on a control task, the factor shuffled within class and instance (Hewitt & Liang 2019, "
    "\"Designing and Interpreting Probes with Control Tasks\"), on familiar viewpoints. DCI completeness (Eastwood & "
    "Williams 2018, \"A framework for the quantitative evaluation of disentangled representations\"): 1 when one "
    "dimension carries each factor, from the ridge's absolute weights over every test image. Composition error: "
    "|M_40 - M_20 M_20| / |M_40| on held-out instances for the fitted maps between an image and the same instance at "
    "azimuth + 20 and + 40 degrees (0: the maps compose like the rotation). Per model the mean over its runs with a "
    "95% t interval over seeds; one run: its own percentile bootstrap interval over held-out instances "
    "(viewpoint_posetruth.csv holds every run).")


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
    truth = data.tables.get("viewpoint_posetruth")
    if truth is not None and len(truth):
        left_out = set() if excluded is None or not len(excluded) else set(excluded["run"])
        tables.append(("Pose against the object's true pose", _pose_truth_table(truth, left_out)))
        notes.append(POSE_TRUTH_NOTE + (" Runs that missed the familiar validation target are left out, as above."
                                        if left_out else ""))
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
