"""The classify task's report section: headlines, tables and figures of the transformation suite, from the
folder's files alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..probe.schema import identity_labels
from ..transforms import TRANSFORMS, headline_conditions
from .folder import ReportData, ReportError
from .published import CIFAR10, published_for_runs
from .section import (
    FigureSpec,
    Section,
    _fmt,
    _has,
    _plot,
    _png,
    first_seed_grids,
    grid_figures,
    pct,
    report_colours,
    two_axis_points,
)
from .verdicts import at_chance, claim_sentences, verdict_claims, verdict_table

__all__ = [
    "KEY_CONDITIONS",
    "METHODS_NOTE",
    "SUITE_FIGURES",
    "ablation_table",
    "headlines",
    "lie_figures",
    "lie_table",
    "suite_section",
]

KEY_CONDITIONS = headline_conditions()  # the built-in suite's; the headlines ask the registry at render time


METHODS_NOTE = (
    "Methods (capsprobe.metrics.stats, capsprobe.metrics.compare): per-image metrics (accuracy, consistency, confidence drop, "
    "true-class score) are compared paired over the same images and transformation draws, with the seeds x images "
    "variance decomposition of the crossed random-effects model (Searle, Casella & McCulloch 1992): the seed term "
    "from the per-seed means, pooled over the two models, plus the image-sampling term of the per-image differences. "
    "95% intervals and p-values use Student t on Satterthwaite's (1946) degrees of freedom; Holm's adjusted p-values "
    "and the Bonferroni-level intervals use t on the seed level's own S_a + S_b - 2 degrees of freedom, which holds "
    "in the far tail whatever the split between seed and image variance. Fitted metrics: Welch's t over the per-seed "
    "estimates. Calibration: simulated false-positive rates of 3.2-6.8% at nominal 5% (2-10 seeds, three seed-"
    "variance regimes), at most nominal at 0.1% (`capsprobe calibrate`), and an A/A experiment (experiments/null.toml) "
    "that establishes nothing. 'Established' = Holm p < 0.05, at >= 2 seeds per model (the Bonferroni-level interval "
    "printed beside it is the more conservative of the two and may touch 0 where Holm rejects)."
)


def _seed_lines(metrics: pd.DataFrame, entries: list[dict[str, Any]], tables: dict[str, pd.DataFrame]) -> list[str]:
    """The first lines: how many training seeds stand behind each model, how each run stopped, what was left out."""
    seeds = metrics.drop_duplicates("run").groupby("model", sort=False)["run"].count()
    lines = []
    if len(seeds) and seeds.min() < 2:
        lines.append(f"Single training seed for {', '.join(m for m, n in seeds.items() if n < 2)}: intervals cover test "
                     "images only, and no difference between models is established by this report.")
    elif len(seeds):
        lines.append(f"{'/'.join(str(n) for n in seeds)} training seeds per model ({', '.join(seeds.index)}): intervals "
                     "include training variation (per-image metrics: the seeds x images variance decomposition with a t "
                     "reference on Satterthwaite degrees of freedom, calibrated by simulation at 2-10 seeds and by an A/A "
                     "experiment; fitted metrics: t over seeds); differences are paired over images and Holm-corrected "
                     "over the conditions of each metric, and 'established' when the Holm p < 0.05 at >= 2 seeds per model.")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_model.setdefault(e.get("model", "?"), []).append(e)
    costs = [f"{model} {es[0]['params']:,} parameters"
             + (f", {es[0]['flops'] / 1e6:.1f} MFLOPs" if es[0].get("flops") is not None else "")
             for model, es in by_model.items() if es and es[0].get("params") is not None]
    if costs:
        lines.append("Cost per image (forward FLOPs: convolutions and matrix products, routings included): "
                     + "; ".join(costs) + ".")
    for model, es in by_model.items():
        if any(e.get("target_accuracy") is not None for e in es):
            target = es[0]["target_accuracy"]
            missed = [e["name"] for e in es if e.get("reached_target") is False]
            lines.append(
                f"{model}: trained to {pct(target)} validation accuracy (at most {es[0].get('max_epochs')} epochs), "
                f"stopped after {'/'.join(str(e.get('epochs')) for e in es)} epochs; clean test accuracy "
                f"{'/'.join(pct(e['test_accuracy']) if e.get('test_accuracy') is not None else '-' for e in es)}"
                + (f"; never reached the target, left out of every comparison: {', '.join(missed)}" if missed else "")
                + ".")
    return lines


def _difference_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Accuracy differences at the key conditions, stated as established only when Holm's test says so."""
    diffs = tables.get("differences")
    if diffs is None or diffs.empty:
        return []
    acc = diffs[diffs["metric"] == "accuracy"]
    ablation = tables.get("ablation")
    if ablation is not None and not ablation.empty:
        return []  # an ablation states its differences against the reference, with the stricter family (below)
    lines = []
    for (a, b), rows in acc.groupby(["model_a", "model_b"], sort=False):
        parts = []
        for transform, magnitude in (("rotate", "0"), *headline_conditions()):
            sel = rows[(rows["transform"] == transform) & (rows["magnitude"] == magnitude)]
            if sel.empty:
                continue
            r = sel.iloc[0]
            if pd.isna(r["ci_low_adjusted"]):
                verdict = "not testable"
            elif r["established"]:
                verdict = f"established (Holm p = {r['p_holm']:.3g})"
            else:
                verdict = f"not established at {min(r['seeds_a'], r['seeds_b'])} seed(s) (Holm p = {r['p_holm']:.3g})"
            name = "clean" if (transform, magnitude) == ("rotate", "0") else f"{transform} {magnitude}"
            parts.append(f"{name} {100 * r['difference']:+.1f} points [{100 * r['ci_low_adjusted']:+.1f}, "
                         f"{100 * r['ci_high_adjusted']:+.1f}], {verdict}")
        if parts:
            lines.append(f"Accuracy of {a} minus {b}, paired over the same digits and transformation draws (95% "
                         f"intervals widened for the {int(rows['family_size'].max())} conditions compared): "
                         + "; ".join(parts) + ".")
    return lines


_ABLATION_LABELS = {"accuracy": "accuracy", "equivariance_gain": "gain over identity", "decodability": "decodability"}


def _condition(transform: str, magnitude: str, identity: dict[str, str]) -> str:
    return "untransformed" if magnitude == identity.get(transform) else f"{transform} {magnitude}"


def ablation_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """One row per variant: its seeds, stopping epochs and clean test accuracies, then every (metric, condition) of
    ``ablation.csv`` as ``difference [adjusted interval]`` (variant - reference; accuracy in points), ``*`` where
    established. Variants left out for missing their target accuracy get a row saying so."""

    ab = tables.get("ablation")
    if ab is None or ab.empty:
        return None
    ident = identity_labels()
    comp = tables.get("comparison", pd.DataFrame())
    ref = str(ab["reference"].iloc[0])
    order = {m: i for i, m in enumerate(_ABLATION_LABELS)}
    ab = ab.assign(_o=ab["metric"].map(order).fillna(len(order))).sort_values("_o", kind="stable")
    info = comp.drop_duplicates("model").set_index("model") if not comp.empty else pd.DataFrame()
    rows = []
    for variant in [ref, *dict.fromkeys(ab["variant"])]:
        row: dict[str, Any] = {"model": variant + (" (reference)" if variant == ref else "")}
        if variant in info.index:
            row["seeds"] = int(info.loc[variant, "seeds"])
            row["stop epochs"] = info.loc[variant, "stop_epochs"]
            row["clean test acc"] = "/".join(pct(float(v)) if v not in ("-", "") else "-"
                                              for v in str(info.loc[variant, "clean_accuracies"]).split("/"))
        for r in ab[ab["variant"] == variant].itertuples(index=False):
            scale, unit = (100, "") if r.metric == "accuracy" else (1, "")
            col = f"{_ABLATION_LABELS.get(r.metric, r.metric)}: {_condition(r.transform, r.magnitude, ident)}"
            if pd.isna(r.ci_low_adjusted):
                row[col] = f"{scale * r.difference:+.{1 if scale == 100 else 3}f} (not testable)"
            else:
                d = 1 if scale == 100 else 3
                row[col] = (f"{scale * r.difference:+.{d}f} [{scale * r.ci_low_adjusted:+.{d}f}, "
                            f"{scale * r.ci_high_adjusted:+.{d}f}]" + ("*" if r.established else ""))
        if variant == ref and not comp.empty:  # the reference's own values, the baseline of every difference
            for r in ab.drop_duplicates(["metric", "transform", "magnitude"]).itertuples(index=False):
                sel = comp[(comp["model"] == ref) & (comp["metric"] == r.metric) & (comp["transform"] == r.transform)
                           & (comp["magnitude"].astype(str) == str(r.magnitude))]
                if len(sel):
                    c = sel.iloc[0]
                    fmt = pct if r.metric == "accuracy" else (lambda v: f"{v:.3f}")
                    col = f"{_ABLATION_LABELS.get(r.metric, r.metric)}: {_condition(r.transform, r.magnitude, ident)}"
                    row[col] = f"{fmt(c['value'])} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"
        rows.append(row)
    excluded = tables.get("excluded")
    if excluded is not None and not excluded.empty:
        for model, sel in excluded.groupby("model", sort=False):
            if model in ab["variant"].values or model == ref:
                continue
            rows.append({"model": model, "seeds": 0, "stop epochs": "/".join(str(e) for e in sel["epochs"]),
                         "clean test acc": f"never reached {pct(float(sel['target_accuracy'].iloc[0]))} validation "
                                           f"accuracy ({len(sel)} seeds): not compared"})
    return pd.DataFrame(rows).fillna("")


def _ablation_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The ablation's verdicts: established differences against the reference, and what is not established."""

    ab = tables.get("ablation")
    if ab is None or ab.empty:
        return []
    ident = identity_labels()
    ref = ab["reference"].iloc[0]
    est = ab[ab["established"].astype(bool)]
    parts = []
    for r in est.itertuples(index=False):
        scale, d, unit = (100, 1, " points") if r.metric == "accuracy" else (1, 3, "")
        parts.append(f"{r.variant} {_ABLATION_LABELS.get(r.metric, r.metric)} {_condition(r.transform, r.magnitude, ident)} "
                     f"{scale * r.difference:+.{d}f}{unit} [{scale * r.ci_low_adjusted:+.{d}f}, "
                     f"{scale * r.ci_high_adjusted:+.{d}f}]")
    lo = int(min(ab["seeds_variant"].min(), ab["seeds_reference"].min()))
    hi = int(max(ab["seeds_variant"].max(), ab["seeds_reference"].max()))
    seeds = str(lo) if lo == hi else f"{lo}-{hi} matched"  # a variant's runs that missed the target are left out
    families = ", ".join(f"{_ABLATION_LABELS.get(m, m)} {int(n)}" for m, n in
                         ab.groupby("metric", sort=False)["family_size"].max().items())
    line = (f"Ablation, each model minus {ref}, paired over the same digits and transformation draws, seeds resampled; "
            f"Holm and Bonferroni-level intervals over every model and condition of a metric together (family sizes: "
            f"{families}): ")
    line += ("established: " + "; ".join(parts) + f". Every other difference is not established at {seeds} seed(s)."
             if parts else f"no difference is established at {seeds} seed(s).")
    return [line]


_LIE_ROWS = {"lee_scores": "class-score LEE", "lee_representation": "whitened LEE (representation)",
             "elee_representation": "equivariant LEE (representation)",
             "elee_representation_pca16": "equivariant LEE (representation, 16-D PCA)",
             "lee_pose": "whitened LEE (true-class pose)",
             "elee_pose": "equivariant LEE (true-class pose)"}


def _g(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def lie_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """``lie.csv`` as one row per (generator, measure) and a column per model: ``value [95% interval over images]``
    for a single run, and with several seeds their mean followed by every seed's value."""
    lie = tables.get("lie")
    if lie is None or lie.empty:
        return None
    models = list(dict.fromkeys(lie["model"]))
    rows = []
    for (gen, unit, metric), group in lie.groupby(["generator", "unit", "metric"], sort=False):
        row = {"generator": f"{gen} (per {unit})", "measure": _LIE_ROWS.get(metric, metric)}
        for model in models:
            runs = group[group["model"] == model]
            if runs.empty:
                row[model] = ""
            elif len(runs) == 1:
                r = runs.iloc[0]
                row[model] = f"{_g(r.value)} [{_g(r.ci_low)}, {_g(r.ci_high)}]"
            else:
                row[model] = (f"{_g(runs['value'].mean())} (seeds: " + ", ".join(_g(v) for v in runs["value"]) + ")")
        rows.append(row)
    return pd.DataFrame(rows)


def _lie_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The Lie derivative read out: rotation and translation LEE per model, the composition error over the rotation
    grid, and one sentence per model on where its equivariant LEE rises most through the layers."""
    lie, layers, comp = tables.get("lie"), tables.get("lie_layers"), tables.get("composition")
    lines = []
    if lie is not None and not lie.empty:
        for gen in ("rotate", "translate-x"):
            for metric in ("lee_representation", "elee_representation_pca16", "elee_pose"):
                rows = lie[(lie["generator"] == gen) & (lie["metric"] == metric)]
                if rows.empty:
                    continue
                per = rows.groupby("model", sort=False).agg(v=("value", "mean"), lo=("ci_low", "mean"),
                                                            hi=("ci_high", "mean"), n=("run", "count"))
                unit = rows["unit"].iloc[0]
                listed = "; ".join(f"{m} {_g(r.v)} [{_g(r.lo)}, {_g(r.hi)}]" + (f" (mean of {r.n} seeds)" if r.n > 1
                                                                               else "") for m, r in per.iterrows())
                what = ("how far the representation moves per " + unit if metric.startswith("lee") else
                        "share of the motion a fitted generator misses, 0 = equivariant")
                lines.append(f"Lie derivative, {gen}: {_LIE_ROWS[metric]} ({what}): {listed}.")
    if comp is not None and not comp.empty:
        per = comp[comp["which"] == "representation"].groupby("model", sort=False)["composition_error"].mean()
        lines.append("Composition of the fitted rotation maps, |M_(a+b) - M_b M_a| / |M_(a+b)| averaged over the "
                     "(a, b) grid (0 = a group action): " + "; ".join(f"{m} {_g(v)}" for m, v in per.items()) + ".")
    if layers is not None and not layers.empty:
        for run, rows in layers[layers["generator"] == "rotate"].groupby("run", sort=False):
            rows = rows.sort_values("depth")
            e = rows["elee"].to_numpy(dtype=float)
            if len(e) < 2 or not np.isfinite(e).all():
                continue
            step = np.diff(e)
            k = int(np.argmax(step))
            lines.append(f"Layers of {run} (rotation): the equivariant LEE goes from {_g(e[0])} at "
                         f"{rows['layer'].iloc[0]} to {_g(e[-1])} at the representation; it rises most "
                         f"({'+' if step[k] >= 0 else ''}{_g(step[k])}) from {rows['layer'].iloc[k]} to "
                         f"{rows['layer'].iloc[k + 1]}.")
    return lines


def lie_figures(data: "ReportData") -> tuple[dict[str, bytes], dict[str, str]]:
    """The Lie probe's figures: end-to-end LEE, and per run its layer profile and composition grid."""
    from . import plots  # lazy: plots imports matplotlib and seaborn

    figs, captions = {}, {}
    none = pd.DataFrame()
    lie, layers, comp = (data.tables.get(k) for k in ("lie", "lie_layers", "composition"))
    layers = none if layers is None else layers
    comp = none if comp is None else comp
    if lie is not None and not lie.empty:
        figs["lie.png"] = _png(plots.plot_lie(lie))
        captions["lie.png"] = ("Lie derivatives at the identity (Gruver et al. 2022), 95% bootstrap intervals over "
                               "images: class-score LEE, whitened LEE of the representation, and the equivariant LEE "
                               "(held-out share of the derivative a fitted generator misses).")
    for run in dict.fromkeys(layers["run"]) if not layers.empty else ():
        key = f"lie_layers_{run}.png"
        figs[key] = _png(plots.plot_lie_layers(layers[layers["run"] == run]))
        dim = data.manifest.get("lie", {}).get("layer_dim", 32)
        captions[key] = (f"{run}: where equivariance is lost. Per layer (top {dim} principal axes), the whitened LEE "
                         "and the equivariant LEE per generator.")
    for run in dict.fromkeys(comp["run"]) if not comp.empty else ():
        key = f"composition_{run}.png"
        figs[key] = _png(plots.plot_composition(comp[comp["run"] == run]))
        captions[key] = (f"{run}: composition error of the fitted rotation maps over (a, b), held-out images; 0 = the "
                         "maps compose like rotations.")
    return figs, captions


def headlines(metrics: pd.DataFrame, overview: pd.DataFrame, tables: dict[str, pd.DataFrame] | None = None,
              manifest: dict[str, Any] | None = None) -> list[str]:
    """Sentences written from the numbers: who keeps more accuracy at 45 degrees and by how much, whether the
    intervals overlap, flip consistency, scramble detection, and which representation moves more predictably."""
    lines: list[str] = _seed_lines(metrics, (manifest or {}).get("runs", []), tables or {})
    tables = tables or {}
    comp = tables.get("comparison", pd.DataFrame())
    multi = not comp.empty and comp["seeds"].max() >= 2

    ident = identity_labels()

    def per_model(metric: str, transform: str, magnitude: str, fmt) -> str:
        """``model value [low, high]`` over seeds from comparison.csv, or per run from summary.csv."""
        if multi:
            rows = comp[(comp["metric"] == metric) & (comp["transform"] == transform) & (comp["magnitude"] == magnitude)]
            return ", ".join(f"{r.model} {fmt(r.value)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
                             for r in rows.itertuples(index=False))
        rows = metrics[(metrics["metric"] == metric) & (metrics["transform"] == transform)
                       & (metrics["magnitude"] == magnitude)]
        return ", ".join(f"{r.run} {fmt(r.value)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]" for r in rows.itertuples(index=False))

    clean_at = next(((t, ident[t]) for t in dict.fromkeys(metrics["transform"]) if t in ident), None)
    if clean_at is not None:
        text = per_model("accuracy", *clean_at, pct)
        if text:
            lines.append(f"Clean accuracy{' (mean over seeds)' if multi else ''}: {text}.")
    lines.extend(_difference_lines(tables))
    lines.extend(_ablation_lines(tables))
    for flip in ("horizontal", "vertical"):
        text = per_model("consistency", "flip", flip, pct)
        if text:
            lines.append(f"A {flip} flip leaves the decision unchanged for this share of digits: {text}.")
    sel = tables.get("selectivity")
    if sel is not None and not sel.empty:
        parts = []
        for (transform, magnitude), rows in sel.groupby(["transform", "magnitude"], sort=False):
            if transform not in TRANSFORMS or not TRANSFORMS[transform].scramble:
                continue
            matched = ", ".join(dict.fromkeys(f"{r.matched_transform} {r.matched_magnitude}"
                                              for r in rows.itertuples(index=False)))
            text = per_model("scramble_selectivity", transform, magnitude, lambda v: f"{v:+.3f}") if multi else \
                ", ".join(f"{r.run} {r.selectivity:+.3f} [{r.selectivity_low:+.3f}, {r.selectivity_high:+.3f}]"
                          for r in rows.itertuples(index=False))
            parts.append(f"{transform} {magnitude} (vs {matched}): {text}")
        if parts:
            lines.append("Scramble selectivity, the AUROC of a scramble minus that of the nuisance with the closest "
                         f"pixel change (0 = no more surprised by broken parts than by a nuisance; "
                         f"{'t intervals over seeds' if multi else '95% paired intervals over images'}): "
                         + "; ".join(parts) + ".")
    elif "scramble_auroc" in overview:
        jig = overview[(overview["transform"] == "jigsaw")].dropna(subset=["scramble_auroc"]).set_index("run")
        if len(jig) >= 1:
            text = ", ".join(f"{r} {jig.loc[r, 'scramble_auroc']:.3f} [{jig.loc[r, 'scramble_auroc_low']:.3f}, "
                             f"{jig.loc[r, 'scramble_auroc_high']:.3f}]" for r in jig.index)
            lines.append(f"Jigsaw-scramble detection AUROC (0.5 = blind; not specific to scrambles: no nuisance "
                         f"condition was probed to match it against): {text}.")
    moved = metrics[(metrics["kind"] == "nuisance") & (metrics["magnitude"] != metrics["transform"].map(ident))]
    group = "model" if multi else "run"
    means = {name: moved[moved["metric"] == name].groupby(group, sort=False)["value"].mean()
             for name in ("equivariance_gain", "invariance_error", "equivariance_error_pca16", "label_r2")}
    if not means["equivariance_gain"].empty:
        lines.append("Across non-identity nuisance conditions, mean gain of the fitted map over the identity (full-D; "
                     "0 = explains none of the change, 1 = all of it) / whitened invariance error (full-D; 0 = does "
                     "not move) / 16-D equivariance error / class-label baseline R^2"
                     f"{' (means over seeds and conditions)' if multi else ''}: " + "; ".join(
                         f"{r} {means['equivariance_gain'][r]:.3f} / {means['invariance_error'].get(r, np.nan):.3f} / "
                         f"{means['equivariance_error_pca16'].get(r, np.nan):.3f} / "
                         f"{means['label_r2'].get(r, np.nan):.3f}" for r in means["equivariance_gain"].index) + ".")
    if multi and (comp["metric"] == "decodability").any():
        dec = comp[comp["metric"] == "decodability"]
        parts = [f"{t}: " + ", ".join(f"{r.model} {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                                      for r in rows.itertuples(index=False))
                 for t, rows in dec.groupby("transform", sort=False)]
        lines.append("Decodability of the magnitude from (phi(x), phi(Tx)), held-out R^2 (16-D PCA; 0 = the "
                     "representation discards it), mean over seeds with a t interval: " + "; ".join(parts) + ".")
    elif "decodability" in overview:
        dec = overview.dropna(subset=["decodability"])
        parts = [f"{t}: " + ", ".join(f"{r.run} {r.decodability:.3f} [{r.decodability_low:.3f}, "
                                      f"{r.decodability_high:.3f}]" for r in rows.itertuples(index=False))
                 for t, rows in dec.groupby("transform", sort=False)]
        if parts:
            lines.append("Decodability of the magnitude from (phi(x), phi(Tx)), held-out R^2 (16-D PCA; 0 = the "
                         "representation discards it): " + "; ".join(parts) + ".")
    diffs = tables.get("differences")
    if diffs is not None and not diffs.empty:
        # scores are capsule lengths for a CapsNet and softmax probabilities for a convnet: not one scale, left out
        comparable = diffs[~diffs["metric"].isin(("confidence_drop", "true_class_score", "accuracy"))
                           & (diffs["magnitude"] != diffs["transform"].map(ident))]
        ablation = tables.get("ablation")
        if ablation is not None and not ablation.empty:  # only the pairs with the ablation's reference
            ref = ablation["reference"].iloc[0]
            comparable = comparable[(comparable["model_a"] == ref) | (comparable["model_b"] == ref)]
        parts = []
        for (a, b, metric), rows in comparable.groupby(["model_a", "model_b", "metric"], sort=False):
            est = rows[rows["established"].astype(bool)]
            if len(est):
                parts.append(f"{metric} ({a} minus {b}): higher in {int((est['difference'] > 0).sum())}, lower in "
                             f"{int((est['difference'] < 0).sum())} of {len(rows)} conditions")
        if parts:
            lines.append("Established differences by metric (Holm-corrected over conditions; differences.csv lists "
                         "each with its interval; confidence drop and true-class score are left out, their scales "
                         "differ between capsule lengths and softmax probabilities): " + "; ".join(parts) + ".")
    entries = (manifest or {}).get("runs", [])
    kept = [f"{e['name']} {e['kept_variance_pca16']:.3f}" for e in entries if "kept_variance_pca16" in e]
    if kept:
        lines.append("Share of the clean representation's variance the 16-D PCA keeps (fitting half): "
                     + ", ".join(kept) + ".")
    recon = [f"{e['name']} {e['clean_reconstruction_error']:.3f}" for e in entries if "clean_reconstruction_error" in e]
    if recon:
        lines.append("Clean reconstruction error |decode - x|^2 / |x|^2 of the true-class capsule: " + ", ".join(recon)
                     + ".")
    lines.extend(_lie_lines(tables))
    lines.extend(_masking_lines(tables))
    return lines


def _worst_cases(metrics: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows of the conditions chosen against the model (attacks, spatial worst cases)."""
    worst = [n for n, t in TRANSFORMS.items() if t.worst_case]
    return metrics[metrics["transform"].isin(worst) & (metrics["metric"] == "accuracy")]


def _draw_attacks(data: ReportData) -> Any:
    from . import plots  # lazy: plots imports matplotlib and seaborn

    return plots.plot_accuracy_curves(_worst_cases(data.metrics), metric_names=("accuracy",))


MASKING_CHECKS = ("falls to 0 (PGD at eps >= 0.5 leaves at most 2% correct), PGD >= FGSM, more steps never help, "
                  "transfer <= white-box")


def _masking_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The gradient-masking verdict: every check passed, or the runs flagged (not reported as robust)."""
    table = tables.get("masking")
    if table is None or table.empty:
        return []
    failed = table[~table["passed"].astype(bool)]
    if failed.empty:
        return [f"Gradient-masking checks ({MASKING_CHECKS}): all {len(table)} passed; masking.csv lists them."]
    parts = [f"{r.run} {r.check} at eps {r.eps:g} ({r.attack} {pct(r.accuracy)}"
             + (f" vs {r.versus} {pct(r.versus_accuracy)})" if r.versus else ")") for r in failed.itertuples(index=False)]
    flagged = ", ".join(dict.fromkeys(failed["run"]))
    return [f"Gradient masking suspected, so the white-box attacks measure nothing about robustness for {flagged} "
            f"(flagged, not robust): {'; '.join(parts)}. Checks: {MASKING_CHECKS}."]


def masking_table_shown(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The masking checks as the report shows them."""
    table = tables.get("masking")
    if table is None or table.empty:
        return None
    shown = table[["run", "check", "eps", "attack", "accuracy", "versus", "versus_accuracy", "passed"]].copy()
    for col in ("accuracy", "versus_accuracy"):
        shown[col] = shown[col].map(pct)
    shown["passed"] = shown["passed"].map(lambda v: "yes" if bool(v) else "**FLAGGED**")
    return shown.fillna("")


def _key_rows(data: ReportData) -> pd.DataFrame:
    """Accuracy per model and condition for the key figure: over seeds with their t interval (comparison.csv)
    where the models have several seeds, else per run with its bootstrap interval; worst cases left out (their
    own figure shows them)."""
    comp = data.tables.get("comparison")
    worst = {n for n, t in TRANSFORMS.items() if t.worst_case}
    if comp is not None and not comp.empty and comp["seeds"].max() >= 2:
        rows = comp[(comp["metric"] == "accuracy") & ~comp["transform"].isin(worst)]
        return rows.assign(run=rows["model"])
    m = data.metrics
    return m[(m["metric"] == "accuracy") & ~m["transform"].isin(worst)]


def _draw_key(data: ReportData) -> Any:
    from . import plots  # lazy: plots imports matplotlib and seaborn

    return plots.plot_accuracy_curves(_key_rows(data), metric_names=("accuracy",), width=plots.TEXT_WIDTH)


def _reliability_rows(data: ReportData) -> pd.DataFrame:
    """Per model, the reliability bins of the clean images and of its worst-calibrated condition (``ece``)."""
    from ..metrics.confidence import reliability_table

    if data.images.empty or not (data.metrics["metric"] == "ece").any():
        return pd.DataFrame()
    return reliability_table(data.images, data.metrics, identity_labels())


def _draw_reliability(data: ReportData) -> Any:
    from . import plots  # lazy: plots imports matplotlib and seaborn

    return plots.plot_reliability(_reliability_rows(data))


def _two_axis_rows(data: ReportData) -> pd.DataFrame:
    """Consistency of the decision against the gain of the fitted map of the whole representation, at the registry's
    key conditions (never one picked from the data)."""
    return two_axis_points(data.tables.get("comparison"), "consistency", "equivariance_gain", KEY_CONDITIONS)


def _draw_two_axes(data: ReportData) -> Any:
    from . import plots  # lazy: plots imports matplotlib and seaborn

    return plots.plot_two_axes(_two_axis_rows(data), "decision kept (consistency)",
                               "representation follows (gain of the fitted map)")


KEY_FIGURE = "key_accuracy.png"

SUITE_FIGURES: list[FigureSpec] = [
    FigureSpec(KEY_FIGURE, _draw_key, lambda d: not _key_rows(d).empty,
               "Accuracy against magnitude, per model: the mean over training seeds with its 95% t interval over seeds "
               "and images (one run: its bootstrap interval over images)."),
    FigureSpec("accuracy_curves.png", _plot("plot_accuracy_curves"), _has("accuracy"),
               "Accuracy (top) and consistency with the clean decision (bottom) against magnitude, 95% bootstrap "
               "bands."),
    FigureSpec("invariance_equivariance.png", _plot("plot_invariance_vs_equivariance"), _has("invariance_error"),
               "Whitened invariance error (full-D) against the gain of the held-out linear map over the identity "
               "(full-D): how far the representation moves, and how much of the move one linear map explains; one "
               "point per non-identity condition."),
    FigureSpec("decision_vs_pose.png", _draw_two_axes, lambda d: not _two_axis_rows(d).empty,
               "Each model on two axes at the key conditions: invariance of the decision (consistency with the clean "
               "decision, x) against equivariance of the representation (the held-out gain of the fitted linear map "
               "over the identity, full-D, y); the mean over training seeds with its 95% interval over seeds and "
               "images on each axis. Right and low: invariant and blind to pose; right and high: equivariant."),
    FigureSpec("scramble_auroc.png", _plot("plot_scramble_auroc"), _has("scramble_auroc"),
               "Scramble-detection AUROC of clean against transformed confidence."),
    FigureSpec("roc_curves.png", _plot("plot_roc_curves", "roc"),
               lambda d: "roc" in d.tables and not d.tables["roc"].empty,
               "ROC curves: clean images positive, transformed negative, scored by confidence."),
    FigureSpec("rotation_polar.png", _plot("plot_polar_accuracy"), _has("accuracy", "rotate"),
               "Accuracy over the rotation angle."),
    FigureSpec("reliability.png", _draw_reliability, lambda d: not _reliability_rows(d).empty,
               "Reliability diagrams of the raw top score (softmax probability; capsule length), 15 equal-width bins, "
               "a model's seeds pooled: its clean images and its condition of highest ECE; the legend gives the ECE "
               "(mean over seeds) raw and after temperature scaling fitted on each run's validation images, else "
               "cross-fitted on clean test halves (the manifest's temperature_fit; summary.csv: ece, ece_scaled)."),
    FigureSpec("attack_accuracy.png", _draw_attacks, lambda d: not _worst_cases(d.metrics).empty,
               "Accuracy under the worst cases chosen against each model (spatial-grid, worst-of-k: the strength or "
               "the number of draws; gradient attacks: the L-inf radius eps); with several seeds one thin line per "
               "seed and the mean in bold."),
]


def _corruption_shown(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in table.itertuples(index=False):
        ratio = "-" if pd.isna(r.ratio) else (f"{r.ratio:.2f}" if pd.isna(r.ratio_low) or r.ratio_low == r.ratio_high
                                             else f"{r.ratio:.2f} [{r.ratio_low:.2f}, {r.ratio_high:.2f}]")
        rows.append({"model": r.model, "seeds": r.seeds,
                     "mean corruption error": f"{100 * r.error:.2f}% [{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}]",
                     f"ratio to {r.reference}": ratio})
    return pd.DataFrame(rows)


def suite_section(data: ReportData) -> Section:
    """The ``classify`` task's report: headlines, the overview table, the suite's figures and the image grids."""
    if "overview" not in data.tables:
        raise ReportError(f"{data.folder / 'overview.csv'} is missing: the folder was written by an older capsprobe; "
                          "probe again")
    overview = data.tables["overview"]
    figs, captions = {}, {}
    with report_colours(data):
        for spec in SUITE_FIGURES:
            if spec.applies(data):
                figs[spec.name] = _png(spec.draw(data))
                captions[spec.name] = spec.caption
        lie_figs, lie_captions = lie_figures(data)
    shown, one_seed = first_seed_grids(data.arrays, data.manifest.get("runs", []))
    grids, grid_captions = grid_figures(shown)
    figs.update(grids)
    captions.update(grid_captions)
    notes = []
    if one_seed:
        notes.append("image grids (pose sweeps, reconstructions): each model's first seed only; its other seeds draw "
                     "the same digits")
    no_decoder = [r.get("name", "?") for r in data.manifest.get("runs", []) if r.get("poses") and not r.get("decoder")]
    if no_decoder:
        notes.append(f"no reconstruction pictures for {', '.join(no_decoder)}: the model has poses but no decoder")
    untrained = (data.manifest.get("untrained_poses") or {}).get("runs", [])
    if untrained:
        notes.append(f"no pose or representation metrics for {', '.join(untrained)}: no training loss reaches its "
                     "class poses (scores from the routed activations, no decoder), so equivariance, decodability, the "
                     "representation's Lie derivatives and the composition grid are left out; its scores' metrics stay")
    if "at_edge" in data.metrics:

        m = data.metrics
        edge = m[m["at_edge"].eq(True) & (m["magnitude"] != m["transform"].map(identity_labels()))]
        if not edge.empty:
            listed = ", ".join(f"{r.run} {r.transform} {r.magnitude} {r.metric}"
                               for r in edge.drop_duplicates(["run", "transform", "magnitude"]).head(8).itertuples())
            notes.append(f"the ridge penalty sat at an end of its grid in {len(edge)} non-identity fitted metric(s) "
                         f"(summary.csv, at_edge): {listed}{' ...' if len(edge) > 8 else ''}")
    if data.tables.get("differences") is not None and not data.tables["differences"].empty:
        notes.append(METHODS_NOTE)
    figs.update(lie_figs)
    captions.update(lie_captions)
    extra = []
    lie = lie_table(data.tables)
    if lie is not None:
        extra.append(("Lie derivative (each model: value [95% interval over images], or the mean of its seeds)", lie))
    masking = masking_table_shown(data.tables)
    if masking is not None:
        extra.append(("Gradient-masking checks (Athalye, Carlini & Wagner 2018): accuracy under each attack against "
                      "the one it must not beat (tolerance 0.5 points)", masking))
    corruption = data.tables.get("corruption")
    if corruption is not None and not corruption.empty:
        extra.append(("Mean corruption error over the 15 MNIST-C corruptions (Mu & Gilmer 2019: the mean over "
                      "corruptions of the test error), each model's with its 95% interval over seeds and images, and "
                      "its ratio to the reference convnet's (log scale, delta method, paired images)",
                      _corruption_shown(corruption)))
    ablation = ablation_table(data.tables)
    if ablation is not None:
        extra.append(("Ablation (each model minus the reference; accuracy in points, gain and decodability in their "
                      "units; 95% intervals widened for the family of each metric; * established)", ablation))
    if data.manifest.get("dataset") == "cifar10":
        published = published_for_runs(data.manifest, CIFAR10)
        if len(published):
            extra.append(("Published CIFAR-10 numbers beside these models (the source's protocol; set beside, not "
                          "reproduced)", published))
    details = headlines(data.metrics, overview, data.tables, data.manifest)
    chance = at_chance(data.manifest)
    claims = claim_sentences(data.tables) + [line for line in details if line.startswith("Clean accuracy")][:1]
    if chance:
        claims.append(f"{', '.join(chance)} at chance (clean accuracy within 5 points of 1/K): this report establishes "
                      "nothing about them.")
    claims += verdict_claims(data.tables, data.manifest)
    claims += _masking_lines(data.tables)
    return Section(headlines=claims, table_title="Overview", table=_fmt(overview), figures=figs, captions=captions,
                   notes=notes, tables=extra, verdicts=verdict_table(data.tables, data.manifest),
                   key_figure=KEY_FIGURE if KEY_FIGURE in figs else None, details=details)
