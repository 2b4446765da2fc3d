"""Comparisons that separate models from noise: seeds, paired differences, multiplicity control.

A *model* here is a ``model`` name of the tidy tables; its *runs* are its training seeds. Two tables:

``comparison.csv`` — per model x condition x metric, the mean over seeds with a 95% interval that includes
training variation:

- metrics defined per image (``accuracy``, ``consistency``, ``confidence_drop``, ``true_class_score``): the
  seeds x images variance decomposition of :func:`capsprobe.metrics.stats.seed_image_mean` (the seed term and the
  image-sampling term, Searle, Casella & McCulloch 1992), with a Student t reference on Satterthwaite's (1946)
  degrees of freedom;
- every other metric (fitted, ratio and AUROC metrics): the mean of the per-seed estimates with an interval over
  seeds *and* images (:func:`capsprobe.metrics.fitted.fitted_mean`: every seed is scored on the same test images, so
  the image sampling each run's own bootstrap interval measures is added once to the seed spread; Satterthwaite df;
  never narrower than the t interval over seeds); at least 2 seeds; with one seed, the run's own interval over
  images, flagged.

Columns also list every seed's clean test accuracy, stopping epoch and whether it reached its target accuracy.

``differences.csv`` — for every pair of models and every condition x metric, the difference A - B:

- the true-class score and the confidence drop are each model's own score scale (capsule lengths, softmax
  probabilities): a capsule model and a convnet are not compared on them;
- per-image metrics: *paired* over images (both models see the same digits and the same transformation draws),
  seeds independent between the models (seed k of two architectures shares nothing) and sharing one seed variance,
  by :func:`capsprobe.metrics.stats.seed_image_difference`: t on Satterthwaite degrees of freedom;
- other metrics: the seeds x images t of :func:`capsprobe.metrics.fitted.fitted_difference` (Welch's seed terms
  plus both models' image terms, treated as independent: conservative when the models err on the same images), on
  Satterthwaite df, the far tail on its ``tail_df``; Welch's t over the per-seed estimates where a run has no image
  interval (at least 2 seeds per model).

Each difference has a standard error (``se``; ``se_seeds``: the part of it that the seeds bring), a 95% t interval
and a two-sided p-value on ``df`` degrees of freedom, the Holm (1979) adjusted p-value over the conditions of its
(pair, metric) family, and the Bonferroni-level interval that goes with it (level ``1 - 0.05 / m``), both on
``df_adjusted`` degrees of freedom. For the paired per-image rows ``df`` is Satterthwaite's (calibrated at the 5%
level) and ``df_adjusted`` the seed level's own ``S_a + S_b - 2``: at the far-tail levels of a corrected family the
Satterthwaite df is liberal (it grows exactly when the seed variance is underestimated: about 2x the nominal rate at
0.1% in the simulation), the seed df is valid for any split between seed and image variance; for Welch rows both are
Welch's. Both tests were checked by simulation at 2-10 seeds
(:mod:`capsprobe.metrics.calibration`) and by an A/A experiment (``experiments/null.toml``). A difference is ``established``
exactly when both models have at least 2 seeds and its Holm p-value is below 0.05 (the Bonferroni-level interval is
the more conservative of the two and may touch 0 where Holm rejects). A family holds no duplicate and no difference
that is 0 by definition: every transformation's identity shows the same clean digits, so the clean accuracy (and
true-class score) joins once, and the changes from the clean condition (consistency, confidence drop, the fitted
metrics of (phi(x), phi(Tx))) join no family at the identity; such rows keep their own test and no adjusted p.
These families are exploratory: the claims an experiment declares (:mod:`capsprobe.metrics.claims`) are its
primary endpoints and form their own family.
Runs trained to a target accuracy that they did not reach are left out of both tables and listed in
``excluded``.

``ablation.csv`` — with a ``reference`` model (an experiment's ``reference``, e.g. the full CapsNet of an
ablation), every other model against it, *variant minus reference*, for accuracy (the untransformed condition once,
and every transformed one), the gain of the fitted map over the identity and the decodability of the magnitude (every
non-identity condition). The same paired tests as ``differences.csv``, but Holm's correction and the
Bonferroni-level intervals run over one family per metric that holds every variant and condition together: a table of
many one-component changes does not get a fresh 5% for each.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .bounded import bounded_interval, per_seed_text
from .fitted import bootstrap_se_df, fitted_difference, fitted_mean, image_se_from_interval
from .functional import LEVEL
from .seeds import seed_outcomes
from .stats import seed_image_difference, seed_image_mean, t_interval

__all__ = ["ABLATION_COLUMNS", "ABLATION_METRICS", "COMPARISON_COLUMNS", "DIFFERENCE_COLUMNS", "FITTED_TEST", "PAIRED_TEST",
           "PER_IMAGE", "WELCH_TEST", "comparison_tables", "holm", "welch_t_test"]

PAIRED_TEST = "paired seeds x images t (Satterthwaite)"
WELCH_TEST = "Welch t over seeds"
FITTED_TEST = "fitted seeds x images t"  # per-run image se, Satterthwaite df (capsprobe.metrics.fitted)
PER_IMAGE = ("accuracy", "consistency", "confidence_drop", "true_class_score", "joint")
COMPARISON_COLUMNS = [
    "model", "transform", "kind", "magnitude", "magnitude_value", "metric", "value", "ci_low", "ci_high", "df",
    "interval", "seeds", "per_seed", "clean_accuracies", "stop_epochs", "reached_target",
]
SHARES = ("accuracy", "consistency", "joint")  # per-image shares: their intervals stay inside [0, 1]
# a model's own score scale: capsule lengths (or activations) against softmax probabilities are not compared
OWN_SCALE = ("true_class_score", "confidence_drop")


MNISTC_MEAN = ("mnist-c", "mean")  # the mean over the 15 MNIST-C corruptions, one condition (Mu & Gilmer 2019)
MNISTC_COUNT = 15
CORRUPTION_COLUMNS = ["model", "reference", "seeds", "error", "ci_low", "ci_high", "ratio", "ratio_low", "ratio_high",
                      "df"]


def _with_corruption_mean(metrics: pd.DataFrame, acc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The condition ``mnist-c / mean``: per run and image the accuracy averaged over the 15 MNIST-C corruptions (a
    per-image value in [0, 1], so its seeds x images interval and paired differences are those of any per-image
    share), added where a run was probed on all 15 (``mnistc-<name>`` at ``mnist-c``): one mean corruption error
    per model (Mu & Gilmer 2019 report the mean over corruptions of the test error)."""
    sel = acc[acc["transform"].astype(str).str.startswith("mnistc-") & (acc["magnitude"].astype(str) == "mnist-c")]
    if sel.empty:
        return metrics, acc
    counts = sel.groupby("run")["transform"].nunique()
    full = counts[counts == MNISTC_COUNT].index
    sel = sel[sel["run"].isin(full)]
    if sel.empty:
        return metrics, acc
    mean = sel.groupby(["model", "run", "image_id"], sort=False)["_v"].mean().reset_index()
    mean = mean.assign(transform=MNISTC_MEAN[0], magnitude=MNISTC_MEAN[1])
    first = metrics[metrics["run"].isin(full)].drop_duplicates("run").set_index("run")
    per_run = mean.groupby(["model", "run"], sort=False)["_v"].agg(["mean", "size"]).reset_index()
    rows = pd.DataFrame({"model": per_run["model"], "run": per_run["run"],
                         "seed": per_run["run"].map(first["seed"]) if "seed" in first else np.nan,
                         "transform": MNISTC_MEAN[0], "kind": "nuisance", "magnitude": MNISTC_MEAN[1],
                         "magnitude_value": np.nan, "metric": "accuracy", "value": per_run["mean"],
                         "ci_low": np.nan, "ci_high": np.nan, "n_images": per_run["size"]})
    metrics = pd.concat([metrics, rows.reindex(columns=metrics.columns)], ignore_index=True)
    return metrics, pd.concat([acc, mean], ignore_index=True)


def _corruption_table(mats: dict[str, np.ndarray], reference: str | None,
                      entries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per model the mean corruption error (1 - the MNIST-C mean accuracy) with its seeds x images interval, and its
    ratio to the reference model's (the experiment's reference, else the first model without poses: the suite's
    CNN, as Mu & Gilmer set models against a CNN) on the log scale by the delta method, the covariance of the two
    errors read from the paired difference's variance (they share the images)."""
    if reference not in mats:
        poses = {str(e.get("model")): e.get("poses") for e in entries}
        reference = next((m for m in mats if poses.get(m) is False), None)
    rows = []
    for model, mat in mats.items():
        est = seed_image_mean(1 - mat)
        err, se, df = float(est.value), float(est.se), float(est.df)
        lo, hi = (float(v) for v in bounded_interval((1 - mat).mean(axis=1), se, df, LEVEL, images=mat.shape[1]))
        ratio = r_lo = r_hi = r_df = np.nan
        if reference is not None and model != reference and mat.shape[0] >= 2 and mats[reference].shape[0] >= 2:
            ref = seed_image_mean(1 - mats[reference])
            e_ref, se_ref = float(ref.value), float(ref.se)
            diff = seed_image_difference(1 - mat, 1 - mats[reference])
            cov = (se**2 + se_ref**2 - float(diff.se) ** 2) / 2
            if err > 0 and e_ref > 0:
                ratio = err / e_ref
                var = se**2 / err**2 + se_ref**2 / e_ref**2 - 2 * cov / (err * e_ref)
                r_df = float(diff.df)
                half = float(stats.t.ppf(0.5 + LEVEL / 2, r_df)) * float(np.sqrt(max(var, 0.0)))
                r_lo, r_hi = ratio * float(np.exp(-half)), ratio * float(np.exp(half))
        elif model == reference:
            ratio = r_lo = r_hi = 1.0
        rows.append({"model": model, "reference": reference, "seeds": mat.shape[0], "error": err, "ci_low": lo,
                     "ci_high": hi, "ratio": ratio, "ratio_low": r_lo, "ratio_high": r_hi, "df": df})
    return pd.DataFrame(rows, columns=CORRUPTION_COLUMNS)


def _one_scale(entries: Sequence[dict[str, Any]]) -> Any:
    """``same(a, b)``: whether two models' class scores share a scale (both capsule models, with poses, or both
    convnets, with softmax scores), from the manifest's entries (unknown: assumed the same)."""
    kind = {str(e.get("model")): e.get("poses") for e in entries}
    return lambda a, b: kind.get(a) is None or kind.get(b) is None or bool(kind[a]) == bool(kind[b])
DIFFERENCE_COLUMNS = [
    "model_a", "model_b", "transform", "kind", "magnitude", "magnitude_value", "metric", "difference", "ci_low",
    "ci_high", "se", "se_seeds", "df", "p_value", "df_adjusted", "p_holm", "ci_low_adjusted", "ci_high_adjusted",
    "family_size", "seeds_a", "seeds_b", "test", "established",
]
ABLATION_METRICS = ("accuracy", "equivariance_gain", "decodability")
ABLATION_COLUMNS = [
    "variant", "reference", "transform", "kind", "magnitude", "magnitude_value", "metric", "difference", "ci_low",
    "ci_high", "se", "se_seeds", "df", "p_value", "df_adjusted", "p_holm", "ci_low_adjusted", "ci_high_adjusted",
    "family_size", "seeds_variant", "seeds_reference", "test", "established",
]


def holm(values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs left out of the family and kept as NaN)."""
    p = np.asarray(values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _per_image(images: pd.DataFrame, metric: str, identity: dict[str, str]) -> pd.DataFrame:
    """Per-image values ``(run, transform, magnitude) x image_id`` of a per-image metric."""
    rows = images
    if metric == "accuracy":
        value = (rows["prediction"] == rows["label"]).astype(float)
    elif metric == "true_class_score":
        value = rows["true_score"].astype(float)
    elif metric == "joint":  # the upside-down task's: recognised and its rotation recovered within 15 degrees
        value = rows["joint"].astype(float)
    else:
        ident = rows[rows["magnitude"] == rows["transform"].map(identity)]
        key = ["run", "transform", "image_id"]
        base = rows[key].merge(ident[key + ["prediction", "confidence"]], on=key, how="left")
        if metric == "consistency":
            value = (rows["prediction"].to_numpy() == base["prediction"].to_numpy()).astype(float)
        else:  # confidence_drop
            value = base["confidence"].to_numpy() - rows["confidence"].to_numpy()
        value = pd.Series(value, index=rows.index)
    return rows.assign(_v=value)


def _t_interval(x: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    m, s, n = float(np.mean(x)), float(np.std(x, ddof=1)), len(x)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * s / np.sqrt(n)
    return m - half, m + half


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Welch's (1947) difference of means, its standard error and Satterthwaite degrees of freedom."""
    diff = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0:
        return diff, 0.0, float(len(a) + len(b) - 2)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, se, float(df)


def _t_test(diff: float, se: float, df: float, level: float = LEVEL) -> tuple[tuple[float, float], float]:
    """The ``level`` t interval and the two-sided p-value of a difference (a zero ``se``: the point, p 1 or 0)."""
    if se == 0:
        return (diff, diff), (1.0 if diff == 0 else 0.0)
    lo, hi = t_interval(diff, se, df, level)
    return (float(lo), float(hi)), float(2 * stats.t.sf(abs(diff) / se, df))


def welch_t_test(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, tuple[float, float], float]:
    """``mean(a) - mean(b)`` over per-seed estimates, its ``level`` Welch t interval and two-sided p-value."""
    diff, se, df = _welch(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    interval, p = _t_test(diff, se, df, level)
    return diff, interval, p


def _seed_info(entries: Sequence[dict[str, Any]], runs: Sequence[str]) -> dict[str, str]:
    by = {e.get("name"): e for e in entries}

    def fmt(key: str, spec: str) -> str:
        vals = [by.get(r, {}).get(key) for r in runs]
        return "/".join("-" if v is None else format(v, spec) if not isinstance(v, bool) else str(v).lower()
                        for v in vals)

    return {"clean_accuracies": fmt("test_accuracy", ".4f"), "stop_epochs": fmt("epochs", "d"),
            "reached_target": fmt("reached_target", "")}


def comparison_tables(
    metrics: pd.DataFrame,
    images: pd.DataFrame,
    entries: Sequence[dict[str, Any]],
    identity: dict[str, str],
    reference: str | None = None,
    n_boot: int | None = None,
    all_seeds: bool = False,
) -> dict[str, pd.DataFrame]:
    """``comparison``, ``differences`` and ``excluded`` tables, and ``ablation`` with a ``reference`` (see the module
    docstring).

    Args:
        metrics: tidy metrics of every run (``summary.csv``).
        images: per-image rows (``results.parquet``).
        entries: the manifest's run entries (name, model, seed, test accuracy, epochs, target reached).
        identity: per transformation, the label of its identity magnitude.
        reference: the model every other is set against in the ablation table (None: no ablation table).
        n_boot: the resamples of each run's percentile interval over images (the probe's ``bootstrap``), for the
            image se of the fitted metrics (:func:`capsprobe.metrics.fitted.image_se_from_interval`; None: 1,000).
        all_seeds: keep the runs that missed their target (the all-seeds analysis); by default they are left out
            (the matched analysis), and where any is, ``differences_all_seeds`` gives the all-seeds analysis beside
            it. ``seeds`` is :func:`capsprobe.metrics.seeds.seed_outcomes` (k of n seeds reaching the target).
    """
    excluded = [] if all_seeds else [e for e in entries
                                     if e.get("target_accuracy") is not None and e.get("reached_target") is False]
    out_runs = {e["name"] for e in excluded}
    metrics_all, images_all = metrics, images
    metrics = metrics[~metrics["run"].isin(out_runs)]
    images = images[~images["run"].isin(out_runs)]
    models = list(dict.fromkeys(metrics["model"]))
    runs_of = {m: list(dict.fromkeys(metrics.loc[metrics["model"] == m, "run"])) for m in models}
    keys = ["transform", "magnitude"]
    per_image = {name: _per_image(images, name, identity) for name in PER_IMAGE if name in set(metrics["metric"])}
    if "accuracy" in per_image:
        metrics, per_image["accuracy"] = _with_corruption_mean(metrics, per_image["accuracy"])
    conditions = metrics.drop_duplicates(keys)[keys + ["kind", "magnitude_value"]]
    # grouped once: each condition's rows are looked up, not masked out of the whole table (same rows, same order)
    cells = {name: {key: frame for key, frame in table.groupby(["model", "transform", "magnitude"], sort=False,
                                                               dropna=False)}
             for name, table in per_image.items()}
    by_condition = {key: frame for key, frame in metrics.groupby(keys, sort=False, dropna=False)}

    def matrix(name: str, model: str, transform: str, magnitude: str) -> np.ndarray | None:
        sel = cells[name].get((model, transform, magnitude))
        if sel is None or sel.empty:
            return None
        # (S, N): seeds x the same images, image ids in ascending order, a repeated (run, image) averaged; None
        # where a run lacks an image (or a value)
        position = {r: i for i, r in enumerate(runs_of[model])}
        row = sel["run"].map(position).to_numpy(float)
        if np.isnan(row).any():
            return None
        ids, col = np.unique(sel["image_id"].to_numpy(), return_inverse=True)
        total = np.zeros((len(position), len(ids)))
        count = np.zeros((len(position), len(ids)))
        np.add.at(total, (row.astype(int), col), sel["_v"].to_numpy(float))
        np.add.at(count, (row.astype(int), col), 1.0)
        with np.errstate(invalid="ignore"):
            wide = total / count
        return None if np.isnan(wide).any() else wide

    comp, diffs = [], []
    mats_of_mean: dict[str, np.ndarray] = {}  # per model, the seeds x images matrix of the MNIST-C mean accuracy
    same_scale = _one_scale(entries)
    for cond in conditions.itertuples(index=False):
        rows = by_condition[(cond.transform, cond.magnitude)]
        base = {"transform": cond.transform, "kind": cond.kind, "magnitude": cond.magnitude,
                "magnitude_value": cond.magnitude_value}
        parts = {key: frame for key, frame in rows.groupby(["metric", "model"], sort=False)}
        for name in dict.fromkeys(rows["metric"]):
            mats, seeds_of, point = {}, {}, {}
            image_se_of: dict[str, np.ndarray] = {}
            image_df_of: dict[str, float] = {}
            for model in models:
                part = parts.get((name, model))
                if part is None:
                    continue
                sel = part.set_index("run").reindex(runs_of[model]).dropna(subset=["value"])
                if sel.empty:
                    continue
                values = sel["value"].to_numpy(float)
                seeds_of[model] = values
                mat = matrix(name, model, cond.transform, cond.magnitude) if name in per_image else None
                if mat is not None:
                    mats[model] = mat
                    if (cond.transform, cond.magnitude) == MNISTC_MEAN and name == "accuracy":
                        mats_of_mean[model] = mat
                    est = seed_image_mean(mat)
                    value, df = float(est.value), float(est.df)
                    ci = tuple(float(v) for v in est.interval(LEVEL))
                    if name in SHARES:  # a share: the logit interval, inside [0, 1]
                        ci = tuple(float(v) for v in bounded_interval(mat.mean(axis=1), float(est.se), df, LEVEL,
                                                                      images=mat.shape[1]))
                    how = (f"seeds+images (t, {len(values)} seeds, Satterthwaite df)" if len(values) >= 2 else
                           "images only (1 seed)")
                    if name in SHARES:
                        how = how.replace("(t,", "(logit t,") if len(values) >= 2 else "images only (1 seed; logit t)"
                elif len(values) >= 2:
                    ise = image_se_from_interval(sel["ci_low"].to_numpy(float), sel["ci_high"].to_numpy(float),
                                                 n_boot=n_boot)
                    if np.isfinite(ise).all():  # every seed shares the test images: their sampling counts once
                        image_df_of[model] = float(bootstrap_se_df(float(sel["n_images"].iloc[0]), n_boot or 1000))
                        image_se_of[model] = ise
                        fit = fitted_mean(values, ise, image_df=image_df_of[model])
                        value, df = float(fit.value), float(fit.df)
                        ci = tuple(float(v) for v in fit.interval)
                        how = f"seeds+images (fitted t, {len(values)} seeds)"
                    else:
                        value, ci, how = float(values.mean()), _t_interval(values), f"seeds (t, {len(values)} seeds)"
                        df = float(len(values) - 1)
                else:
                    value, ci, how = float(values[0]), (float(sel["ci_low"].iloc[0]), float(sel["ci_high"].iloc[0])), \
                        "images only (1 seed)"
                    df = np.nan
                point[model] = value
                comp.append({"model": model, **base, "metric": name, "value": value, "ci_low": min(ci[0], value),
                             "ci_high": max(ci[1], value), "df": df, "interval": how, "seeds": len(values),
                             "per_seed": per_seed_text(list(values), ".4g"),
                             **_seed_info(entries, list(sel.index))})
            for i, a in enumerate(models):
                for b in models[i + 1:]:
                    if a not in seeds_of or b not in seeds_of or (name in OWN_SCALE and not same_scale(a, b)):
                        continue
                    row = {"model_a": a, "model_b": b, **base, "metric": name, "seeds_a": len(seeds_of[a]),
                           "seeds_b": len(seeds_of[b])}
                    fitted_est = None
                    if a in mats and b in mats:  # paired over the same images
                        est = seed_image_difference(mats[a], mats[b])
                        diff, se, df = float(est.value), float(est.se), float(est.df)
                        se_seeds, df_adjusted = float(np.sqrt(est.seed_var)), float(est.seed_df)
                        test = PAIRED_TEST if min(len(seeds_of[a]), len(seeds_of[b])) >= 2 else \
                            "paired t (a model with 1 seed: seed variance borrowed or none)"
                    elif min(len(seeds_of[a]), len(seeds_of[b])) >= 2 and a in image_se_of and b in image_se_of:
                        fitted_est = fitted_difference(seeds_of[a], image_se_of[a], seeds_of[b], image_se_of[b],
                                                       image_df=min(image_df_of[a], image_df_of[b]))
                        diff, se, df = float(fitted_est.value), float(fitted_est.se), float(fitted_est.df)
                        se_seeds, df_adjusted, test = float(fitted_est.se_seeds), float(fitted_est.tail_df), FITTED_TEST
                    elif len(seeds_of[a]) >= 2 and len(seeds_of[b]) >= 2:
                        (diff, se, df), test = _welch(seeds_of[a], seeds_of[b]), WELCH_TEST
                        se_seeds, df_adjusted = se, df
                    else:
                        diff, se, df, test = float(seeds_of[a].mean() - seeds_of[b].mean()), np.nan, np.nan, \
                            "not testable with 1 seed"
                        se_seeds = df_adjusted = np.nan
                    if fitted_est is not None:  # its interval never narrower than the seeds' alone (the floor)
                        (lo, hi), p = tuple(float(v) for v in fitted_est.interval), float(fitted_est.p)
                    elif np.isfinite(se):
                        (lo, hi), p = _t_test(diff, se, df)
                    else:
                        lo = hi = p = np.nan
                    row.update(difference=diff, ci_low=lo, ci_high=hi, se=se, se_seeds=se_seeds, df=df, p_value=p,
                               df_adjusted=df_adjusted, test=test)
                    diffs.append(row)
    corruption = _corruption_table(mats_of_mean, reference, entries) if mats_of_mean else None
    ablation = _ablation(diffs, reference, identity) if reference is not None else None
    differences = _adjust(pd.DataFrame(diffs), members=_family_members(diffs, identity))
    comparison = pd.DataFrame(comp, columns=COMPARISON_COLUMNS)
    excluded_df = pd.DataFrame([{"run": e.get("name"), "model": e.get("model"), "seed": e.get("seed"),
                                 "target_accuracy": e.get("target_accuracy"), "val_accuracy": e.get("val_accuracy"),
                                 "epochs": e.get("epochs")} for e in excluded],
                               columns=["run", "model", "seed", "target_accuracy", "val_accuracy", "epochs"])
    out = {"comparison": comparison, "differences": differences, "excluded": excluded_df}
    if corruption is not None:
        out["corruption"] = corruption
    if not all_seeds:
        out["seeds"] = seed_outcomes(list(entries))
        if excluded:  # the all-seeds analysis beside the matched one: survivors are a selected sample
            every = comparison_tables(metrics_all, images_all, entries, identity, n_boot=n_boot, all_seeds=True)
            out["differences_all_seeds"] = every["differences"]
    return out if ablation is None else {**out, "ablation": ablation}


def _ablation(diffs: list[dict[str, Any]], reference: str, identity: dict[str, str]) -> pd.DataFrame:
    """Every model against ``reference``, oriented variant - reference, one Holm family per metric."""
    rows, clean_transform = [], None
    for r in diffs:
        if r["metric"] not in ABLATION_METRICS or reference not in (r["model_a"], r["model_b"]):
            continue
        if r["magnitude"] == identity.get(r["transform"]):
            if r["metric"] != "accuracy":
                continue  # no change to explain or decode
            clean_transform = clean_transform or r["transform"]
            if r["transform"] != clean_transform:
                continue  # the untransformed digits once, not once per transformation
        row = dict(r)
        if r["model_a"] == reference:  # flip: variant - reference
            row.update(model_a=r["model_b"], model_b=reference, difference=-r["difference"], ci_low=-r["ci_high"],
                       ci_high=-r["ci_low"], seeds_a=r["seeds_b"], seeds_b=r["seeds_a"])
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    frame = _adjust(pd.DataFrame(rows), by=["metric"])
    frame = frame.rename(columns={"model_a": "variant", "model_b": "reference", "seeds_a": "seeds_variant",
                                  "seeds_b": "seeds_reference"})
    return frame[ABLATION_COLUMNS]


def _family_members(diffs: list[dict[str, Any]], identity: dict[str, str]) -> list[bool]:
    """Which differences join their family: not the duplicates and not the differences that are 0 by definition.

    Every transformation's identity magnitude shows the same clean digits, so the clean condition joins once (the
    first transformation's, for the metrics of the clean images themselves: accuracy, true-class score); a change
    from the clean condition (consistency, confidence drop, every fitted metric of (phi(x), phi(Tx))) is 0 there by
    definition and joins no family."""
    first: dict[tuple[str, str, str], str] = {}
    out = []
    for r in diffs:
        if r["magnitude"] != identity.get(r["transform"]):
            out.append(True)
            continue
        if r["metric"] not in ("accuracy", "true_class_score"):
            out.append(False)
            continue
        key = (r["model_a"], r["model_b"], r["metric"])
        out.append(first.setdefault(key, r["transform"]) == r["transform"])
    return out


def _adjust(frame: pd.DataFrame, by: Sequence[str] = ("model_a", "model_b", "metric"),
            members: Sequence[bool] | None = None) -> pd.DataFrame:
    """Holm over the conditions of each (pair, metric) family (or the families ``by`` names), and the
    Bonferroni-level interval beside it; ``members`` (default: every row) says which rows join their family (the
    others keep their own test, and no adjusted p, interval or "established")."""
    if frame.empty:
        return pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    frame = frame.copy()
    frame["p_holm"] = np.nan
    member = pd.Series(True if members is None else list(members), index=frame.index, dtype=bool)
    # the family's p-values on the degrees of freedom of the corrected levels (the seed level's own, for paired
    # per-image rows: the Satterthwaite df that is calibrated at 5% is liberal at the levels Holm asks for)
    tail_p = frame.apply(lambda r: _t_test(float(r["difference"]), float(r["se"]), float(r["df_adjusted"]))[1]
                         if np.isfinite(r["se"]) else np.nan, axis=1)
    tail_p[~member] = np.nan
    frame["ci_low_adjusted"], frame["ci_high_adjusted"] = np.nan, np.nan
    frame["family_size"] = 0
    family = frame[list(by)].astype(str).agg("\x1f".join, axis=1)  # one key per family, whatever len(by)
    for idx in family.groupby(family, sort=False).groups.values():
        m = int(tail_p.loc[idx].notna().sum())
        frame.loc[idx, "p_holm"] = holm(tail_p.loc[idx].to_numpy())
        frame.loc[idx, "family_size"] = m
        level = 1 - (1 - LEVEL) / max(m, 1)
        for i in idx:
            r = frame.loc[i]
            lo = hi = np.nan
            if np.isfinite(r["se"]) and member[i]:
                (lo, hi), _ = _t_test(float(r["difference"]), float(r["se"]), float(r["df_adjusted"]), level)
            frame.loc[i, "ci_low_adjusted"], frame.loc[i, "ci_high_adjusted"] = lo, hi
    # one training seed cannot separate the architectures from the luck of one training run, however small the
    # paired interval over images: never established. Otherwise "established" is exactly the printed Holm p < 0.05
    # (the Bonferroni-level interval beside it is the more conservative of the two and may touch 0)
    enough = (frame["seeds_a"] >= 2) & (frame["seeds_b"] >= 2)
    frame["established"] = (frame["p_holm"] < 1 - LEVEL) & enough
    return frame[DIFFERENCE_COLUMNS]


def readjust_tables(
    metrics: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    entries: Sequence[dict[str, Any]],
    identity: dict[str, str],
    reference: str | None = None,
    n_boot: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The comparison tables of a folder that no longer holds its per-image rows (the committed example reports),
    brought to the current rules from what it does hold.

    The per-image rows of ``differences`` keep their paired test as written (it needs the images); the fitted rows
    are recomputed from ``summary.csv``'s per-run values and image intervals (:func:`capsprobe.metrics.fitted.
    fitted_difference`); the families are formed again (no duplicates, no differences null by definition); in
    ``comparison`` the shares get their interval inside [0, 1] (the written seeds x images standard error, read back
    from the symmetric interval on its df, carried to the logit scale) and the fitted rows their interval over seeds
    and images; every row lists its per-seed values. ``seeds`` (k of n seeds reaching the target) is added."""
    excluded = {e.get("name") for e in entries if e.get("target_accuracy") is not None
                and e.get("reached_target") is False}
    kept = metrics[~metrics["run"].isin(excluded)]
    cells = {key: frame for key, frame in kept.groupby(["model", "transform", "magnitude", "metric"], sort=False)}
    order = {str(e.get("name")): i for i, e in enumerate(entries)}

    def per_run(model: str, r: Any) -> tuple[np.ndarray, np.ndarray, float]:
        sel = cells.get((model, r["transform"], str(r["magnitude"]), r["metric"]))
        if sel is None or sel.empty:
            return np.array([]), np.array([]), np.nan
        sel = sel.dropna(subset=["value"]).sort_values("run", key=lambda s: s.map(order))
        ise = image_se_from_interval(sel["ci_low"].to_numpy(float), sel["ci_high"].to_numpy(float), n_boot=n_boot)
        return sel["value"].to_numpy(float), ise, float(sel["n_images"].iloc[0])

    out = dict(tables)
    diffs = tables.get("differences")
    same_scale = _one_scale(entries)
    if diffs is not None and not diffs.empty:
        rows = []
        for _, r in diffs.iterrows():
            if r["metric"] in OWN_SCALE and not same_scale(r["model_a"], r["model_b"]):
                continue  # capsule lengths against softmax probabilities: not one scale
            row = r.to_dict()
            if r["metric"] not in PER_IMAGE:
                va, sa, n = per_run(r["model_a"], r)
                vb, sb, _ = per_run(r["model_b"], r)
                if min(len(va), len(vb)) >= 2 and np.isfinite(sa).all() and np.isfinite(sb).all():
                    est = fitted_difference(va, sa, vb, sb, image_df=float(bootstrap_se_df(n, n_boot or 1000)))
                    lo, hi = (float(v) for v in est.interval)
                    row.update(difference=float(est.value), ci_low=lo, ci_high=hi, se=float(est.se),
                               se_seeds=float(est.se_seeds), df=float(est.df), p_value=float(est.p),
                               df_adjusted=float(est.tail_df), test=FITTED_TEST)
            rows.append(row)
        members = _family_members(rows, identity)
        out["differences"] = _adjust(pd.DataFrame(rows), members=members)
        if reference is not None:
            out["ablation"] = _ablation(rows, reference, identity)
    comp = tables.get("comparison")
    if comp is not None and not comp.empty:
        comp = comp.copy()
        lows, highs, seeds_text, hows = [], [], [], []
        for _, r in comp.iterrows():
            values, ise, n = per_run(r["model"], r)
            lo, hi, how = float(r["ci_low"]), float(r["ci_high"]), str(r["interval"])
            if r["metric"] in SHARES and "logit" not in how and len(values) and np.isfinite(r["df"]) \
                    and (values >= 0).all() and (values <= 1).all():
                half = (hi - lo) / 2
                se = half / float(stats.t.ppf(0.5 + LEVEL / 2, float(r["df"]))) if half > 0 else 0.0
                lo, hi = (float(v) for v in bounded_interval(values, se, float(r["df"]), LEVEL, images=int(n)))
                how = how.replace("(t,", "(logit t,") if len(values) >= 2 else "images only (1 seed; logit t)"
            elif r["metric"] not in PER_IMAGE and len(values) >= 2 and np.isfinite(ise).all():
                fit = fitted_mean(values, ise, image_df=float(bootstrap_se_df(n, n_boot or 1000)))
                lo, hi = (float(v) for v in fit.interval)
                how = f"seeds+images (fitted t, {len(values)} seeds)"
            lows.append(min(lo, float(r["value"])))
            highs.append(max(hi, float(r["value"])))
            seeds_text.append(per_seed_text(list(values), ".4g") if len(values) else "-")
            hows.append(how)
        comp["ci_low"], comp["ci_high"], comp["per_seed"], comp["interval"] = lows, highs, seeds_text, hows
        out["comparison"] = comp[[c for c in COMPARISON_COLUMNS if c in comp.columns]]
    out["seeds"] = seed_outcomes(list(entries))
    return out
