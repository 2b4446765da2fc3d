"""The only writer of report folders, and the renderer: it reads the folder's files and computes nothing.

``write_probe_outputs`` writes what ``capsprobe perturb`` computed (a :class:`~capsprobe.probe.ProbeResult`),
as one atomic step::

    results.parquet   one row per image and condition (capsprobe.probe.IMAGE_COLUMNS)
    summary.csv       tidy metrics with 95% bootstrap intervals (capsprobe.probe.METRIC_COLUMNS)
    overview.csv      one row per run x transformation (capsprobe.metrics.overview_table)
    roc.csv           ROC points of every scramble condition (capsprobe.metrics.roc_table)
    arrays/*.npz      image grids: reconstructions, the pose sweep, MultiMNIST segmentations (no pickles)
    manifest.json     task, runs, data, transformations, magnitudes, seed, timing, library versions

``write_report`` renders, from those files alone (no run, no data set, no device; a folder copied to another
machine renders the same)::

    figures/*.png     the task's figures (classify: accuracy curves, invariance vs equivariance, scramble AUROC
                      and ROC curves, polar rotation accuracy, reconstructions, the paper's Figure 4 pose sweep)
    report.md         headline sentences, the overview table, the figures
    report.html       the same, self-contained (figures embedded), readable offline

What the report shows is the task's *section* (:mod:`capsprobe.tasks`); a figure is a ``plot(df) -> Figure``
of :mod:`capsprobe.plots` plus one entry in :data:`SUITE_FIGURES`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import CapsprobeError, option
from .runtime import MARKER, atomic_dir, folder_lock, is_capsprobe_folder, write_marker

__all__ = [
    "ReportData",
    "ReportError",
    "ReportExistsError",
    "SUITE_FIGURES",
    "Section",
    "check_report_target",
    "compact_table",
    "grid_figures",
    "headlines",
    "read_probe_outputs",
    "suite_section",
    "write_probe_outputs",
    "write_report",
]

RESULTS = "results.parquet"
SUMMARY = "summary.csv"
MANIFEST = "manifest.json"
ARRAYS = "arrays"
FIGURES = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


class ReportError(CapsprobeError):
    """A report folder that is missing a file or holds a malformed one."""


class ReportExistsError(ReportError):
    """The report folder exists and ``force`` was not given."""


def check_report_target(out: str | Path, force: bool) -> Path:
    """Raise :class:`ReportExistsError` when ``out`` holds anything and ``force`` is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ReportExistsError(f"{out} already exists and is not empty; set {option('force')} to replace it")
        if not is_capsprobe_folder(out, "report"):
            raise ReportExistsError(f"{out} was not written by capsprobe; refusing to replace it, even with "
                                    f"{option('force')}")
    return out


def write_probe_outputs(result, out: str | Path, force: bool = False) -> Path:
    """Write everything a probe computed into the report folder ``out`` as one atomic step.

    With ``force`` an existing folder is replaced whole (figures made from an older probe would no longer
    match its numbers).
    """
    from .probe import IMAGE_COLUMNS

    out = Path(out)
    with folder_lock(out), atomic_dir(check_report_target(out, force)) as tmp:
        write_marker(tmp, "report")
        images = result.images if len(result.images.columns) else pd.DataFrame(columns=IMAGE_COLUMNS)
        images.to_parquet(tmp / RESULTS, index=False, compression="zstd")
        result.metrics.to_csv(tmp / SUMMARY, index=False)
        for name, table in result.tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        if result.arrays:
            (tmp / ARRAYS).mkdir()
            for name, arrays in result.arrays.items():
                np.savez_compressed(tmp / ARRAYS / f"{name}.npz", **arrays)
        manifest = {"task": "classify", **result.manifest, "timing": result.timing}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return out


@dataclass
class ReportData:
    """A report folder's files, read: what every section renders from."""

    folder: Path
    metrics: pd.DataFrame
    images: pd.DataFrame
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path} is malformed: {str(exc).splitlines()[0]}") from None


def read_probe_outputs(folder: str | Path) -> ReportData:
    """Read a report folder (metrics, per-image rows, manifest, tables, arrays); errors name the file at fault."""
    from .probe import IMAGE_COLUMNS, METRIC_COLUMNS

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    for name in (SUMMARY, RESULTS, MANIFEST):
        if not (folder / name).is_file():
            raise ReportError(f"{folder / name} is missing: is {folder} a folder written by `capsprobe perturb`?")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{folder / MANIFEST} is malformed: {exc}") from None
    if not isinstance(manifest, dict):
        raise ReportError(f"{folder / MANIFEST} is malformed: expected a JSON object")

    def check(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ReportError(f"{path} is malformed: missing columns {', '.join(missing)}")

    metrics = _read_csv(folder / SUMMARY, dtype={"magnitude": str})
    check(folder / SUMMARY, metrics, METRIC_COLUMNS)
    try:
        images = pd.read_parquet(folder / RESULTS)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise ReportError(f"{folder / RESULTS} is malformed: {str(exc).splitlines()[0]}") from None
    check(folder / RESULTS, images, IMAGE_COLUMNS)
    tables = {p.stem: _read_csv(p, dtype={"magnitude": str, "matched_magnitude": str}) for p in sorted(folder.glob("*.csv"))
              if p.name != SUMMARY}
    arrays = {}
    for path in sorted((folder / ARRAYS).glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays[path.stem] = {k: data[k] for k in data.files}
        except Exception as exc:  # noqa: BLE001 - zip and format errors
            raise ReportError(f"{path} is malformed: {str(exc).splitlines()[0]}") from None
    return ReportData(folder=folder, metrics=metrics, images=images, manifest=manifest, tables=tables, arrays=arrays)


def compact_table(metrics: pd.DataFrame, columns: tuple[str, ...] = ("accuracy", "consistency",
                                                                    "equivariance_error_pca16")) -> str:
    """A terminal-width text table: one line per (transformation, magnitude), a column per run and metric."""
    from .metrics import METRICS

    rows = metrics[metrics["metric"].isin(columns)].copy()
    if rows.empty:
        return metrics[["run", "metric", "value", "ci_low", "ci_high"]].to_string(index=False)
    order = {name: i for i, name in enumerate(dict.fromkeys(rows["transform"]))}
    rows["_t"] = rows["transform"].map(order)
    table = rows.pivot_table(index=["_t", "transform", "magnitude_value", "magnitude"], columns=["run", "metric"],
                             values="value", sort=True)
    table = table.reindex(columns=[(r, m) for r in dict.fromkeys(rows["run"]) for m in columns if (r, m) in table.columns])
    table.index = [f"{t} {m}" for _, t, _, m in table.index]
    table.columns = [f"{r}:{METRICS[m].short or m if m in METRICS else m}" for r, m in table.columns]
    return table.to_string(float_format=lambda v: f"{v:.3f}")


# --- sections: what a task's report shows ---------------------------------------------------------------------


@dataclass
class Section:
    """What a task puts in its report: headline sentences, one table, figures (PNG bytes by file name)."""

    headlines: list[str]
    table_title: str
    table: pd.DataFrame
    figures: dict[str, bytes] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # further (title, table), after the first


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


KEY_CONDITIONS = (("rotate", "45"), ("translate", "4"), ("affine", "1"), ("swap", "top-bottom"), ("swap", "left-right"),
                  ("jigsaw", "4"), ("affnist", "warp"))


METHODS_NOTE = (
    "Methods (capsprobe.seedstats, capsprobe.compare): per-image metrics (accuracy, consistency, confidence drop, "
    "true-class score) are compared paired over the same images and transformation draws, with the seeds x images "
    "variance decomposition of the crossed random-effects model (Searle, Casella & McCulloch 1992): the seed term "
    "from the per-seed means, pooled over the two models, plus the image-sampling term of the per-image differences. "
    "95% intervals and p-values use Student t on Satterthwaite's (1946) degrees of freedom; Holm's adjusted p-values "
    "and the Bonferroni-level intervals use t on the seed level's own S_a + S_b - 2 degrees of freedom, which holds "
    "in the far tail whatever the split between seed and image variance. Fitted metrics: Welch's t over the per-seed "
    "estimates. Calibration: simulated false-positive rates of 3.2-6.8% at nominal 5% (2-10 seeds, three seed-"
    "variance regimes), at most nominal at 0.1% (`capsprobe calibrate`), and an A/A experiment (experiments/null.toml) "
    "that establishes nothing. 'Established' = Holm p < 0.05 and the adjusted interval excludes 0, at >= 2 seeds per "
    "model."
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
                     "over the conditions of each metric, and 'established' only when the corrected interval excludes 0.")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_model.setdefault(e.get("model", "?"), []).append(e)
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
    """Accuracy differences at the key conditions, stated as established only when the corrected interval says so."""
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
        for transform, magnitude in (("rotate", "0"), *KEY_CONDITIONS):
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
    from .probe import identity_labels

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
    from .probe import identity_labels

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
    from . import plots

    figs, captions = {}, {}
    lie, layers, comp = (data.tables.get(k) for k in ("lie", "lie_layers", "composition"))
    if lie is not None and not lie.empty:
        figs["lie.png"] = _png(plots.plot_lie(lie))
        captions["lie.png"] = ("Lie derivatives at the identity (Gruver et al. 2022), 95% bootstrap intervals over "
                               "images: class-score LEE, whitened LEE of the representation, and the equivariant LEE "
                               "(held-out share of the derivative a fitted generator misses).")
    for run in dict.fromkeys(layers["run"]) if layers is not None and not layers.empty else ():
        key = f"lie_layers_{run}.png"
        figs[key] = _png(plots.plot_lie_layers(layers[layers["run"] == run]))
        dim = data.manifest.get("lie", {}).get("layer_dim", 32)
        captions[key] = (f"{run}: where equivariance is lost. Per layer (top {dim} principal axes), the whitened LEE "
                         "and the equivariant LEE per generator.")
    for run in dict.fromkeys(comp["run"]) if comp is not None and not comp.empty else ():
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
    comp = tables.get("comparison")
    multi = comp is not None and not comp.empty and comp["seeds"].max() >= 2
    from .probe import identity_labels

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
            if transform not in ("jigsaw", "swap"):
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
    return lines


def _fmt(overview: pd.DataFrame) -> pd.DataFrame:
    """Overview columns as ``value [low, high]`` strings, for the Markdown and HTML tables."""
    from .metrics import METRICS

    shown = overview[["run", "transform"]].copy()
    columns = [("clean_accuracy", "clean acc"), ("mean_accuracy", "mean acc"), ("worst_accuracy", "worst acc"),
               ("consistency", "consistency")]
    columns += [(m.name, f"mean {m.label}") for m in METRICS.values() if m.overview]  # labels from the metric table
    columns += [(name, METRICS[name].label) for name in ("decodability", "decodability_pose")]
    columns += [("scramble_auroc", "scramble AUROC (pooled)")]
    for name, label in columns:
        if name in overview:
            shown[label] = [
                "" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                for v, lo, hi in zip(overview[name], overview[f"{name}_low"], overview[f"{name}_high"])
            ]
    return shown


def _markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _has(metric: str, transform: str | None = None) -> Callable[[ReportData], bool]:
    def check(data: ReportData) -> bool:
        rows = data.metrics[data.metrics["metric"] == metric]
        return bool(len(rows if transform is None else rows[rows["transform"] == transform]))
    return check


def _plot(name: str, table: str | None = None) -> Callable[[ReportData], Any]:
    def draw(data: ReportData):
        from . import plots

        return getattr(plots, name)(data.metrics if table is None else data.tables[table])
    return draw


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the suite's report: file name, ``draw(data) -> Figure``, when it applies, its caption."""

    name: str
    draw: Callable[[ReportData], Any]
    applies: Callable[[ReportData], bool]
    caption: str


SUITE_FIGURES: list[FigureSpec] = [
    FigureSpec("accuracy_curves.png", _plot("plot_accuracy_curves"), _has("accuracy"),
               "Accuracy (top) and consistency with the clean decision (bottom) against magnitude, 95% bootstrap "
               "bands."),
    FigureSpec("invariance_equivariance.png", _plot("plot_invariance_vs_equivariance"), _has("invariance_error"),
               "Whitened invariance error (full-D) against the gain of the held-out linear map over the identity "
               "(full-D): how far the representation moves, and how much of the move one linear map explains; one "
               "point per non-identity condition."),
    FigureSpec("scramble_auroc.png", _plot("plot_scramble_auroc"), _has("scramble_auroc"),
               "Scramble-detection AUROC of clean against transformed confidence."),
    FigureSpec("roc_curves.png", _plot("plot_roc_curves", "roc"),
               lambda d: "roc" in d.tables and not d.tables["roc"].empty,
               "ROC curves: clean images positive, transformed negative, scored by confidence."),
    FigureSpec("rotation_polar.png", _plot("plot_polar_accuracy"), _has("accuracy", "rotate"),
               "Accuracy over the rotation angle."),
]


def grid_figures(arrays: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every stored image grid (``arrays/*.npz``) drawn with :func:`capsprobe.plots.plot_image_grid`."""
    from . import plots

    figs, captions = {}, {}
    for name, grid in arrays.items():
        key = f"{name}.png"
        cols = [str(c) for c in grid.get("col_labels", np.array([]))] or None
        figs[key] = _png(plots.plot_image_grid(grid["images"], row_labels=[str(r) for r in grid["row_labels"]],
                                               col_labels=cols, title=str(grid.get("title", "")),
                                               cell=float(grid.get("cell", 0.9))))
        captions[key] = str(grid.get("caption", name))
    return figs, captions


def suite_section(data: ReportData) -> Section:
    """The ``classify`` task's report: headlines, the overview table, the suite's figures and the image grids."""
    if "overview" not in data.tables:
        raise ReportError(f"{data.folder / 'overview.csv'} is missing: the folder was written by an older capsprobe; "
                          "probe again")
    overview = data.tables["overview"]
    figs, captions = {}, {}
    for spec in SUITE_FIGURES:
        if spec.applies(data):
            figs[spec.name] = _png(spec.draw(data))
            captions[spec.name] = spec.caption
    grids, grid_captions = grid_figures(data.arrays)
    figs.update(grids)
    captions.update(grid_captions)
    notes = []
    no_decoder = [r.get("name", "?") for r in data.manifest.get("runs", []) if r.get("poses") and not r.get("decoder")]
    if no_decoder:
        notes.append(f"no reconstruction pictures for {', '.join(no_decoder)}: the model has poses but no decoder")
    if "at_edge" in data.metrics:
        from .probe import identity_labels

        m = data.metrics
        edge = m[m["at_edge"].eq(True) & (m["magnitude"] != m["transform"].map(identity_labels()))]
        if not edge.empty:
            listed = ", ".join(f"{r.run} {r.transform} {r.magnitude} {r.metric}"
                               for r in edge.drop_duplicates(["run", "transform", "magnitude"]).head(8).itertuples())
            notes.append(f"the ridge penalty sat at an end of its grid in {len(edge)} non-identity fitted metric(s) "
                         f"(summary.csv, at_edge): {listed}{' ...' if len(edge) > 8 else ''}")
    if data.tables.get("differences") is not None and not data.tables["differences"].empty:
        notes.append(METHODS_NOTE)
    lie_figs, lie_captions = lie_figures(data)
    figs.update(lie_figs)
    captions.update(lie_captions)
    extra = []
    lie = lie_table(data.tables)
    if lie is not None:
        extra.append(("Lie derivative (each model: value [95% interval over images], or the mean of its seeds)", lie))
    ablation = ablation_table(data.tables)
    if ablation is not None:
        extra.append(("Ablation (each model minus the reference; accuracy in points, gain and decodability in their "
                      "units; 95% intervals widened for the family of each metric; * established)", ablation))
    return Section(headlines=headlines(data.metrics, overview, data.tables, data.manifest), table_title="Overview",
                   table=_fmt(overview), figures=figs, captions=captions, notes=notes, tables=extra)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.8em;margin:1em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left}th{background:#f4f4f4}figure{margin:1.2em 0}img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.meta{font-size:.85em;color:#555}li{margin:.3em 0}
"""


def _html(title: str, lines: list[str], tables: list[tuple[str, pd.DataFrame]], figs: dict[str, bytes],
          captions: dict[str, str], manifest: dict[str, Any], notes: list[str]) -> str:
    import base64
    import html

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append("<p class='meta'>" + html.escape(_meta_line(manifest)) + "</p>")
    parts.append("<h2>Headlines</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in lines) + "</ul>")
    for table_title, table in tables:
        parts.append(f"<h2>{html.escape(table_title)}</h2>" + table.to_html(index=False, border=0, escape=True))
    parts.append("<h2>Figures</h2>")
    for name, data in figs.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(captions.get(name, name))}</figcaption></figure>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _meta_line(manifest: dict[str, Any]) -> str:
    runs = ", ".join(f"{r['name']} ({r['model']}, seed {r['seed']})" for r in manifest.get("runs", []))
    v = manifest.get("versions", {})
    return (f"{manifest.get('images', '?')} {manifest.get('dataset', '?')} {manifest.get('split', 'test')} images; "
            f"runs: {runs}; transformation seed {manifest.get('seed', '?')}, {manifest.get('bootstrap', '?')} bootstrap "
            f"resamples; torch {v.get('torch', '?')}, kornia {v.get('kornia', '?')}, timm {v.get('timm', '?')}.")


def write_report(folder: str | Path) -> Path:
    """Render ``figures/``, ``report.md`` and ``report.html`` from the files of a perturb folder.

    Reads files only (no run, no data set, no device), so a report folder copied elsewhere renders the same.

    Raises:
        ReportError: a file perturb writes is missing or malformed (the message names it).
        BusyError: another capsprobe command is writing the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    with folder_lock(folder):
        return _write_report(folder)


def _write_report(folder: Path) -> Path:
    from .tasks import UnknownTaskError, get_task

    data = read_probe_outputs(folder)
    try:
        task = get_task(str(data.manifest.get("task", "classify")))
    except UnknownTaskError as exc:
        raise ReportError(f"{folder / MANIFEST}: {exc}") from None
    section = task.section(data)
    title = f"capsprobe report: {folder.name}"
    md = [f"# {title}", "", _meta_line(data.manifest), "", "## Headlines", ""] + [f"- {s}" for s in section.headlines]
    md += ["", f"## {section.table_title}", "", _markdown_table(section.table), ""]
    for title, table in section.tables:
        md += [f"## {title}", "", _markdown_table(table), ""]
    md += ["## Figures", ""]
    for name in section.figures:
        caption = section.captions.get(name, name)
        md += [f"![{caption}]({FIGURES}/{name})", "", f"*{caption}*", ""]
    if section.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in section.notes]
    page = _html(title, section.headlines, [(section.table_title, section.table), *section.tables], section.figures,
                 section.captions, data.manifest, section.notes)
    # the whole folder is rebuilt beside itself (the probe's files linked, not copied) and swapped in: a kill or a
    # full disk leaves the old report whole, never new figures beside an old report.html
    rendered = {FIGURES, REPORT_MD, REPORT_HTML}
    with atomic_dir(folder) as tmp:
        for path in folder.iterdir():
            if path.name not in rendered and not path.name.endswith(".tmp"):
                _link_tree(path, tmp / path.name)
        (tmp / FIGURES).mkdir()
        for name, png in section.figures.items():
            (tmp / FIGURES / name).write_bytes(png)
        (tmp / REPORT_MD).write_text("\n".join(md) + "\n")
        (tmp / REPORT_HTML).write_bytes(page.encode())
        if not (tmp / MARKER).exists():
            write_marker(tmp, "report")
    return folder / REPORT_HTML


COMPARISON_TABLES = ("comparison", "differences", "excluded", "ablation")


def recompare(folder: str | Path) -> Path:
    """Recompute a report folder's comparison tables (``comparison``, ``differences``, ``excluded``, ``ablation``)
    from its own files with the current method (:mod:`capsprobe.compare`), then render the report.

    Reads ``summary.csv``, ``results.parquet``, ``overview.csv`` (decodability per run) and ``manifest.json`` (the
    runs, the ablation's reference); nothing is retrained or re-probed. The folder is rebuilt beside itself and
    swapped in, so an interruption leaves the old tables whole.

    Raises:
        ReportError: a file is missing or malformed, or the folder's task has no comparison tables.
        BusyError: another capsprobe command is writing the folder.
    """
    from .compare import comparison_tables
    from .probe import decodability_rows, identity_labels

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    with folder_lock(folder):
        data = read_probe_outputs(folder)
        if str(data.manifest.get("task", "classify")) != "classify":
            raise ReportError(f"{folder}: task {data.manifest.get('task')!r} has no comparison tables to recompute")
        runs = data.manifest.get("runs")
        if not isinstance(runs, list):
            raise ReportError(f"{folder / MANIFEST} is malformed: no list of runs")
        overview = data.tables.get("overview")
        grid = pd.DataFrame()
        if overview is not None and "decodability" in overview:
            cols = [c for c in overview.columns if c.startswith("decodability") and c != "decodability_magnitudes"]
            grid = decodability_rows(overview[["run", "transform", *cols]], data.metrics,
                                     int(data.manifest.get("images", 0)))
        reference = data.manifest.get("reference") or (data.manifest.get("experiment") or {}).get("reference")
        metrics = pd.concat([data.metrics, grid], ignore_index=True) if len(grid) else data.metrics
        tables = comparison_tables(metrics, data.images, runs, identity_labels(), reference=reference)
        with atomic_dir(folder) as tmp:
            for path in folder.iterdir():
                if path.name.endswith(".tmp") or path.name in {f"{t}.csv" for t in COMPARISON_TABLES}:
                    continue
                _link_tree(path, tmp / path.name)
            for name, frame in tables.items():
                if not frame.empty:
                    frame.to_csv(tmp / f"{name}.csv", index=False)
        return _write_report(folder)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file, or a folder's files) at ``dst``; copy where links are not possible."""
    import shutil

    if src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
