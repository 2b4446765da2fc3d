"""The only writer of report folders.

``write_probe_outputs`` writes what ``capsprobe perturb`` produces::

    results.parquet   one row per image and condition (capsprobe.probe.IMAGE_COLUMNS)
    summary.csv       tidy metrics with 95% bootstrap intervals (capsprobe.probe.METRIC_COLUMNS)
    manifest.json     runs, transformations, magnitudes, seed, timing, library versions

``write_report`` adds, from those files alone (plus the run directories the manifest names, for the capsule
pictures, when they are still there)::

    overview.csv      one row per run x transformation: clean accuracy, mean and worst accuracy over the
                      grid, consistency, invariance and equivariance errors, scramble AUROC, with intervals
                      (``summary.csv`` stays the tidy table it is built from, so ``report`` can be re-run)
    figures/*.png     accuracy curves, invariance vs equivariance, scramble AUROC and ROC curves, polar
                      rotation accuracy, CapsNet reconstructions and the paper's Figure 4 pose sweep
    report.md         headline sentences, the overview table, the figures
    report.html       the same, self-contained (figures embedded), readable offline

The folder is built under a temporary name beside its destination and renamed into place, so a failure
leaves no half-written report, and an existing report is only replaced with ``force``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .probe import ProbeResult

__all__ = [
    "ReportError",
    "ReportExistsError",
    "check_report_target",
    "compact_table",
    "headlines",
    "overview_table",
    "read_probe_outputs",
    "roc_table",
    "write_multimnist_report",
    "write_probe_outputs",
    "write_report",
]

RESULTS = "results.parquet"
SUMMARY = "summary.csv"
MANIFEST = "manifest.json"


class ReportError(RuntimeError):
    """A report folder that is missing a file or holds a malformed one."""


class ReportExistsError(ReportError):
    """The report folder exists and ``force`` was not given."""


def check_report_target(out: str | Path, force: bool) -> Path:
    """Raise :class:`ReportExistsError` when ``out`` holds anything and ``force`` is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReportExistsError(f"{out} already exists and is not empty; use --force to replace it")
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an old one only after the new one is complete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_probe_outputs(result: ProbeResult, out: str | Path, manifest: dict[str, Any], force: bool = False) -> Path:
    """Write ``results.parquet``, ``summary.csv`` and ``manifest.json`` into ``out`` as one atomic step.

    With ``force`` an existing folder is replaced whole (figures made from an older probe would no longer
    match its numbers).
    """
    out = check_report_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700; the report is meant to be read
        result.images.to_parquet(tmp / RESULTS, index=False)
        result.metrics.to_csv(tmp / SUMMARY, index=False)
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "timing": result.timing}, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_probe_outputs(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read a report folder's metrics, per-image results and manifest; errors name the file at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    paths = {name: folder / name for name in (SUMMARY, RESULTS, MANIFEST)}
    for name, path in paths.items():
        if not path.is_file():
            raise ReportError(f"{path} is missing: run `capsprobe perturb ... --out {folder}` first")
    try:
        metrics = pd.read_csv(paths[SUMMARY], dtype={"magnitude": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{paths[SUMMARY]} is malformed: {str(exc).splitlines()[0]}") from None
    try:
        images = pd.read_parquet(paths[RESULTS])
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise ReportError(f"{paths[RESULTS]} is malformed: {str(exc).splitlines()[0]}") from None
    try:
        manifest = json.loads(paths[MANIFEST].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{paths[MANIFEST]} is malformed: {exc}") from None
    from .probe import IMAGE_COLUMNS, METRIC_COLUMNS

    for path, frame, columns in ((paths[SUMMARY], metrics, METRIC_COLUMNS), (paths[RESULTS], images, IMAGE_COLUMNS)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ReportError(f"{path} is malformed: missing columns {', '.join(missing)}")
    return metrics, images, manifest


COMPACT_METRICS = ("accuracy", "consistency", "equivariance_error_pca16")


def compact_table(metrics: pd.DataFrame, columns: tuple[str, ...] = COMPACT_METRICS) -> str:
    """A terminal-width text table: one line per (transformation, magnitude), a column per run and metric."""
    short = {"accuracy": "acc", "consistency": "cons", "equivariance_error_pca16": "eq16"}
    rows = metrics[metrics["metric"].isin(columns)].copy()
    order = {name: i for i, name in enumerate(dict.fromkeys(rows["transform"]))}
    rows["_t"] = rows["transform"].map(order)
    table = rows.pivot_table(index=["_t", "transform", "magnitude_value", "magnitude"], columns=["run", "metric"],
                             values="value", sort=True)
    table = table.reindex(columns=[(r, m) for r in dict.fromkeys(rows["run"]) for m in columns if (r, m) in table.columns])
    table.index = [f"{t} {m}" for _, t, _, m in table.index]
    table.columns = [f"{r}:{short.get(m, m)}" for r, m in table.columns]
    return table.to_string(float_format=lambda v: f"{v:.3f}")


# --- the report -------------------------------------------------------------------------------------------------

OVERVIEW = "overview.csv"
FIGURES = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

_SHOWCASE = {"rotate": "45", "flip": "horizontal", "translate": "4", "scale": "0.75", "shear": "0.4",
             "affine": "1", "jigsaw": "4", "swap": "top-bottom"}


def _identity_labels() -> dict[str, str]:
    from .transforms import TRANSFORMS, magnitude_label

    return {name: magnitude_label(t.identity) for name, t in TRANSFORMS.items()}


def _percentiles(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def overview_table(metrics: pd.DataFrame, images: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per run x transformation, each figure with a 95% bootstrap interval over images.

    Columns (each ``X`` with ``X_low`` and ``X_high``): ``clean_accuracy``; ``mean_accuracy``, the area under
    the accuracy-magnitude curve divided by the magnitude range (trapezoid; the plain mean for categorical
    grids); ``worst_accuracy`` over the grid; ``consistency`` over the non-identity magnitudes; and the mean
    over non-identity magnitudes of ``invariance_error``, ``equivariance_error_pca16`` and (CapsNet)
    ``equivariance_error_pose``, whose interval is the mean of the per-condition bounds (conservative);
    ``scramble_auroc`` pools every non-identity semantic condition against the clean images.
    """
    identity = _identity_labels()
    out = []
    for (run, transform), img in images.groupby(["run", "transform"], sort=False):
        rng = np.random.default_rng(seed)  # the same resamples for every group: equal data, equal intervals
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
        idx = rng.integers(0, n, (n_boot, n))
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
            put("clean_accuracy", correct[:, k].mean(), _percentiles(boot_acc[:, k]))
            agree = (pred[others].to_numpy() == pred[[ident]].to_numpy()).astype(float) if others else np.empty((n, 0))
            if others:
                put("consistency", agree.mean(), _percentiles(agree[idx].mean((1, 2))))
        put("mean_accuracy", float(area(correct.mean(0))), _percentiles(area(boot_acc)))
        put("worst_accuracy", float(correct.mean(0).min()), _percentiles(boot_acc.min(1)))
        for metric in ("invariance_error", "equivariance_error_pca16", "equivariance_error_pose"):
            rows = met[(met["metric"] == metric) & (met["magnitude"] != ident)]
            if not rows.empty:
                put(metric, rows["value"].mean(), (rows["ci_low"].mean(), rows["ci_high"].mean()))
        sem = met[(met["metric"] == "scramble_auroc")]["magnitude"].unique().tolist()
        if ident in mags and sem:
            from .metrics import auroc_rows, scramble_auroc

            pos = conf[ident].to_numpy()
            neg = conf[sem].to_numpy()  # (N, S)
            put("scramble_auroc", scramble_auroc(pos, neg.ravel()),
                _percentiles(auroc_rows(pos[idx], neg[idx].reshape(n_boot, -1))))
        out.append(row)
    return pd.DataFrame(out)


def roc_table(images: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """ROC curve points (``run condition fpr tpr``) of clean against transformed confidence for every
    semantic, non-identity condition (scikit-learn ``roc_curve``)."""
    from sklearn.metrics import roc_curve

    identity = _identity_labels()
    semantic = metrics[metrics["metric"] == "scramble_auroc"][["run", "transform", "magnitude"]].drop_duplicates()
    frames = []
    for run, transform, magnitude in semantic.itertuples(index=False):
        rows = images[(images["run"] == run) & (images["transform"] == transform)]
        clean = rows[rows["magnitude"] == identity.get(transform)].sort_values("image_id")["confidence"].to_numpy()
        moved = rows[rows["magnitude"] == magnitude].sort_values("image_id")["confidence"].to_numpy()
        if not len(clean) or not len(moved):
            continue
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(clean)), np.zeros(len(moved))], np.r_[clean, moved])
        frames.append(pd.DataFrame({"run": run, "condition": f"{transform} {magnitude}", "fpr": fpr, "tpr": tpr}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "condition", "fpr", "tpr"])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _overlap(a: pd.Series, b: pd.Series, name: str) -> bool:
    return not (a[f"{name}_low"] > b[f"{name}_high"] or b[f"{name}_low"] > a[f"{name}_high"])


def headlines(metrics: pd.DataFrame, overview: pd.DataFrame) -> list[str]:
    """Sentences written from the numbers: who keeps more accuracy at 45 degrees and by how much, whether the
    intervals overlap, flip consistency, scramble detection, and which representation moves more predictably."""
    lines: list[str] = []
    runs = list(dict.fromkeys(metrics["run"]))

    def at(transform: str, magnitude: str, metric: str) -> pd.DataFrame:
        return metrics[(metrics["transform"] == transform) & (metrics["magnitude"] == magnitude)
                       & (metrics["metric"] == metric)].set_index("run")

    clean = overview.dropna(subset=["clean_accuracy"]).drop_duplicates("run").set_index("run") \
        if "clean_accuracy" in overview else pd.DataFrame()
    if not clean.empty:
        lines.append("Clean accuracy: " + "; ".join(
            f"{r} {_pct(clean.loc[r, 'clean_accuracy'])} [{_pct(clean.loc[r, 'clean_accuracy_low'])}, "
            f"{_pct(clean.loc[r, 'clean_accuracy_high'])}]" for r in clean.index) + ".")
    rot = at("rotate", "45", "accuracy")
    if len(rot) >= 2:
        ranked = rot.sort_values("value", ascending=False)
        best, second = ranked.iloc[0], ranked.iloc[1]
        overlap = not (best["ci_low"] > second["ci_high"] or second["ci_low"] > best["ci_high"])
        lines.append(
            f"Rotated by 45 degrees, {ranked.index[0]} keeps {_pct(best['value'])} accuracy against "
            f"{_pct(second['value'])} for {ranked.index[1]}, {100 * (best['value'] - second['value']):.1f} points more; "
            + ("the 95% intervals overlap, so the difference is not resolved at this sample size."
               if overlap else "the 95% intervals do not overlap.")
        )
    elif len(rot) == 1:
        lines.append(f"Rotated by 45 degrees, {rot.index[0]} keeps {_pct(rot['value'].iloc[0])} accuracy.")
    for flip in ("horizontal", "vertical"):
        cons = at("flip", flip, "consistency")
        if not cons.empty:
            lines.append(f"A {flip} flip leaves the decision unchanged for " + ", ".join(
                f"{_pct(v)} of digits ({r})" for r, v in cons["value"].items()) + ".")
    if "scramble_auroc" in overview:
        jig = overview[(overview["transform"] == "jigsaw")].dropna(subset=["scramble_auroc"]).set_index("run")
        if len(jig) >= 1:
            ranked = jig.sort_values("scramble_auroc", ascending=False)
            text = ", ".join(f"{r} {ranked.loc[r, 'scramble_auroc']:.3f} [{ranked.loc[r, 'scramble_auroc_low']:.3f}, "
                             f"{ranked.loc[r, 'scramble_auroc_high']:.3f}]" for r in ranked.index)
            tail = ""
            if len(ranked) >= 2:
                tail = (" (intervals overlap)" if _overlap(ranked.iloc[0], ranked.iloc[1], "scramble_auroc")
                        else f" ({ranked.index[0]} is the more surprised by scrambled parts; intervals do not overlap)")
            lines.append(f"Jigsaw-scramble detection AUROC (0.5 = blind): {text}{tail}.")
    eq = metrics[(metrics["metric"] == "equivariance_error_pca16") & (metrics["kind"] == "nuisance")
                 & (metrics["value"] > 0)]
    inv = metrics[(metrics["metric"] == "invariance_error") & (metrics["kind"] == "nuisance") & (metrics["value"] > 0)]
    if not eq.empty:
        e, i = eq.groupby("run")["value"].mean(), inv.groupby("run")["value"].mean()
        lines.append("Across nuisance transformations, mean equivariance error of the 16-D representation "
                     "(0 = moves predictably) / invariance error (0 = does not move): " + "; ".join(
                         f"{r} {e[r]:.3f} / {i.get(r, float('nan')):.3f}" for r in runs if r in e) + ".")
    return lines


def _fmt(overview: pd.DataFrame) -> pd.DataFrame:
    """Overview columns as ``value [low, high]`` strings, for the Markdown and HTML tables."""
    shown = overview[["run", "transform"]].copy()
    for name, label in (("clean_accuracy", "clean acc"), ("mean_accuracy", "mean acc"),
                        ("worst_accuracy", "worst acc"), ("consistency", "consistency"),
                        ("invariance_error", "invariance err"), ("equivariance_error_pca16", "equivar. err (16-D)"),
                        ("equivariance_error_pose", "equivar. err (pose)"), ("scramble_auroc", "scramble AUROC")):
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


def _figures(folder: Path, metrics: pd.DataFrame, images: pd.DataFrame, manifest: dict[str, Any],
             device: str) -> tuple[dict[str, bytes], dict[str, str], list[str]]:
    """Render every figure the data allows: PNG bytes by file name, captions, and notes on what was skipped."""
    from . import plots

    figs: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    notes: list[str] = []
    figs["accuracy_curves.png"] = _png(plots.plot_accuracy_curves(metrics))
    captions["accuracy_curves.png"] = ("Accuracy (top) and consistency with the clean decision (bottom) against "
                                       "magnitude, 95% bootstrap bands.")
    figs["invariance_equivariance.png"] = _png(plots.plot_invariance_vs_equivariance(metrics))
    captions["invariance_equivariance.png"] = ("Invariance error against the held-out linear equivariance error of "
                                               "the 16-D (PCA) representation; one point per condition.")
    if (metrics["metric"] == "scramble_auroc").any():
        figs["scramble_auroc.png"] = _png(plots.plot_scramble_auroc(metrics))
        captions["scramble_auroc.png"] = "Scramble-detection AUROC of clean against transformed confidence."
        roc = roc_table(images, metrics)
        if not roc.empty:
            figs["roc_curves.png"] = _png(plots.plot_roc_curves(roc))
            captions["roc_curves.png"] = "ROC curves: clean images positive, transformed negative, scored by confidence."
    if ((metrics["transform"] == "rotate") & (metrics["metric"] == "accuracy")).any():
        figs["rotation_polar.png"] = _png(plots.plot_polar_accuracy(metrics))
        captions["rotation_polar.png"] = "Accuracy over the rotation angle."
    figs_caps, caps_captions, caps_notes = _capsule_figures(metrics, manifest, device)
    figs.update(figs_caps)
    captions.update(caps_captions)
    notes += caps_notes
    return figs, captions, notes


def _capsule_figures(metrics: pd.DataFrame, manifest: dict[str, Any], device: str):
    from . import plots
    from .data import DatasetUnavailableError, load_dataset
    from .models import is_capsnet
    from .probe import pose_sweep, reconstruction_examples
    from .runs import RunError, load_run
    from .transforms import TRANSFORMS

    figs, captions, notes = {}, {}, []
    split = None
    for entry in manifest.get("runs", []):
        if not entry.get("model", "").startswith("capsnet"):
            continue
        try:
            run = load_run(entry["path"], device="cpu")
        except RunError as exc:
            notes.append(f"capsule pictures for {entry['name']} skipped: {exc}")
            continue
        if not is_capsnet(run.model) or run.model.decoder is None:
            continue
        if split is None:
            try:
                splits = load_dataset(manifest["dataset"], manifest.get("data_root") or run.config.data_root,
                                      download=False, limit=manifest.get("images"))
            except DatasetUnavailableError as exc:
                notes.append(f"capsule pictures skipped: {exc}")
                return figs, captions, notes
            split = splits.test if manifest.get("split", "test") == "test" else splits.val
        conditions = []
        for name, mags in manifest.get("transforms", {}).items():
            t = TRANSFORMS[name]
            wanted = _SHOWCASE.get(name)
            label = wanted if wanted in mags else next((m for m in reversed(mags) if m != _identity_labels()[name]), None)
            if label is not None:
                conditions.append((t, t.validate(label if t.choices is not None else float(label))))
        if conditions:
            grid, rows = reconstruction_examples(run, split, conditions, n=8, seed=manifest.get("seed", 0), device=device)
            key = f"reconstructions_{entry['name']}.png"
            figs[key] = _png(plots.plot_image_grid(grid, row_labels=rows, title=f"{entry['name']}: reconstructions "
                                                   "from the transformed images' poses (true-class capsule)"))
            captions[key] = ("Each transformation: the transformed digits, then the decoder's reconstruction from "
                             "the true class's pose of the transformed digit.")
        sweep = pose_sweep(run, split, 0, device=device)
        deltas = [f"{d + 0.0:+.2f}" for d in np.round(np.arange(-0.25, 0.2501, 0.05), 2)]
        key = f"pose_sweep_{entry['name']}.png"
        figs[key] = _png(plots.plot_image_grid(sweep, row_labels=[f"dim {d}" for d in range(sweep.shape[0])],
                                               col_labels=deltas, title=f"{entry['name']}: pose dimensions "
                                               "perturbed (paper Figure 4)", cell=0.45))
        captions[key] = ("The paper's Figure 4: each of the 16 dimensions of one digit's capsule moved over "
                         "[-0.25, 0.25] in steps of 0.05 and decoded.")
    return figs, captions, notes


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.8em;margin:1em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left}th{background:#f4f4f4}figure{margin:1.2em 0}img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.meta{font-size:.85em;color:#555}li{margin:.3em 0}
"""


def _html(title: str, lines: list[str], table: pd.DataFrame, figs: dict[str, bytes], captions: dict[str, str],
          manifest: dict[str, Any], notes: list[str]) -> str:
    import base64
    import html

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append("<p class='meta'>" + html.escape(_meta_line(manifest)) + "</p>")
    parts.append("<h2>Headlines</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in lines) + "</ul>")
    parts.append("<h2>Overview</h2>" + table.to_html(index=False, border=0, escape=True))
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


def write_report(folder: str | Path, device: str = "cpu", n_boot: int = 1000) -> Path:
    """Write ``overview.csv``, ``figures/``, ``report.md`` and ``report.html`` into a perturb folder.

    Raises:
        ReportError: a file perturb writes is missing or malformed (the message names it).
    """
    from .runs import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    metrics, images, manifest = read_probe_outputs(folder)
    overview = overview_table(metrics, images, n_boot=n_boot, seed=int(manifest.get("seed", 0)))
    lines = headlines(metrics, overview)
    figs, captions, notes = _figures(folder, metrics, images, manifest, device)
    table = _fmt(overview)
    title = f"capsprobe report: {folder.name}"

    # figures go to a fresh folder that replaces the old one whole; then the text files, each atomically
    tmp = Path(tempfile.mkdtemp(prefix=".figures.tmp-", dir=folder))
    try:
        tmp.chmod(0o755)
        for name, data in figs.items():
            (tmp / name).write_bytes(data)
        _replace_dir(tmp, folder / FIGURES)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / OVERVIEW, overview.to_csv(index=False))
    md = [f"# {title}", "", _meta_line(manifest), "", "## Headlines", ""] + [f"- {s}" for s in lines]
    md += ["", "## Overview", "", _markdown_table(table), "", "## Figures", ""]
    for name in figs:
        md += [f"![{captions.get(name, name)}]({FIGURES}/{name})", "", f"*{captions.get(name, name)}*", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes]
    atomic_write_text(folder / REPORT_MD, "\n".join(md) + "\n")
    atomic_write_bytes(folder / REPORT_HTML, _html(title, lines, table, figs, captions, manifest, notes).encode())
    return folder / REPORT_HTML


def write_multimnist_report(out: str | Path, metrics: pd.DataFrame, overlays: dict[str, np.ndarray],
                            manifest: dict[str, Any], force: bool = False) -> Path:
    """A MultiMNIST report folder: ``summary.csv`` (top-2 accuracy and per-digit reconstruction error with
    intervals), ``figures/segmentation_<run>.png`` (the paper's red/green figure), ``manifest.json``,
    ``report.md`` and a self-contained ``report.html``; written under a temporary name and renamed."""
    from . import plots

    out = check_report_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    figs = {f"segmentation_{run}.png": _png(plots.plot_image_grid(
        grid.transpose(1, 0, 2, 3, 4), row_labels=["input", "digit 1 red, digit 2 green"],
        title=f"{run}: each digit reconstructed from its own capsule")) for run, grid in overlays.items()}
    captions = {name: "Top: the overlaid pair. Bottom: the reconstruction from the first digit's capsule in red, "
                      "from the second's in green, over the input." for name in figs}
    lines = []
    for run, rows in metrics.groupby("run", sort=False):
        r = rows.set_index("metric")
        lines.append(f"{run}: both digits named in {_pct(r.loc['accuracy', 'value'])} of pairs "
                     f"[{_pct(r.loc['accuracy', 'ci_low'])}, {_pct(r.loc['accuracy', 'ci_high'])}]; reconstruction "
                     f"error per digit {r.loc['recon_error', 'value']:.3f} [{r.loc['recon_error', 'ci_low']:.3f}, "
                     f"{r.loc['recon_error', 'ci_high']:.3f}] of the digit's own energy.")
    table = metrics[["run", "metric", "value", "ci_low", "ci_high", "n_images"]].round(4)
    title = f"capsprobe report: {out.name}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        (tmp / FIGURES).mkdir()
        for name, data in figs.items():
            (tmp / FIGURES / name).write_bytes(data)
        metrics.to_csv(tmp / SUMMARY, index=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        md = [f"# {title}", "", _meta_line(manifest), "", "## Headlines", ""] + [f"- {s}" for s in lines]
        md += ["", "## Metrics", "", _markdown_table(table), "", "## Figures", ""]
        md += [f"![{captions[n]}]({FIGURES}/{n})\n\n*{captions[n]}*\n" for n in figs]
        (tmp / REPORT_MD).write_text("\n".join(md) + "\n")
        (tmp / REPORT_HTML).write_text(_html(title, lines, table, figs, captions, manifest, []))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / REPORT_HTML
