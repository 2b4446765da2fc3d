"""Figures: ``plot_*(frame) -> matplotlib Figure``, drawn with seaborn; no computation, no file IO.

Each function takes a tidy frame (or an image array for the capsule pictures), checks the columns it
needs (a missing one is a ``ValueError`` naming it), and returns the figure; :mod:`capsprobe.report`
saves it.

Layout rules, kept at any number of runs and conditions (issue 51, item 6; tests/report/test_plots.py checks each
on synthetic tables with many models and conditions): panels wrap into rows of at most :data:`MAX_COLUMNS` (seaborn's
``col_wrap``) instead of one long row, so a figure shown in the page's :data:`PAGE_WIDTH_PX` column is at least
:data:`MIN_HEIGHT_PX` high (width / height under :data:`MAX_ASPECT`); a legend sits outside every axes (above the
panels, or beside them, with matplotlib's constrained layout reserving its room); and no panel holds more than
:data:`MAX_COLOURS` colours: past that the models are split over panels (:func:`colour_groups`), since a
colour-blind palette has ten distinguishable colours (seaborn's ``colorblind``, Wong 2011).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files or HTML here, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "COLUMN_WIDTH",
    "MAX_ASPECT",
    "MAX_COLOURS",
    "MAX_COLUMNS",
    "MIN_HEIGHT_PX",
    "PAGE_WIDTH_PX",
    "TEXT_WIDTH",
    "colour_groups",
    "colour_order",
    "model_colours",
    "plot_accuracy_curves",
    "plot_composition",
    "plot_lie",
    "plot_lie_layers",
    "plot_image_grid",
    "plot_invariance_vs_equivariance",
    "plot_polar_accuracy",
    "plot_reliability",
    "plot_roc_curves",
    "plot_scramble_auroc",
    "plot_two_axes",
    "plot_viewpoint_error",
]

_THEME = {"style": "whitegrid", "context": "notebook", "font_scale": 0.85}


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} needs columns {', '.join(columns)}; missing: {', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"{where} got an empty frame")


_ORDER: contextvars.ContextVar[tuple[tuple[str, ...], dict[str, str]]] = contextvars.ContextVar(
    "model_colour_order", default=((), {}))


@contextlib.contextmanager
def colour_order(models: Sequence[str], run_model: dict[str, str] | None = None) -> Iterator[None]:
    """Within the block, every figure colours a model (and each of its runs, ``run_model``: run -> model) by its
    place in ``models``: the same colour for a model in every figure of a report."""
    token = _ORDER.set((tuple(dict.fromkeys(models)), dict(run_model or {})))
    try:
        yield
    finally:
        _ORDER.reset(token)


def _palette(names: Sequence[str]) -> dict[str, tuple]:
    """Colour-blind colours (seaborn's ``colorblind``) for ``names``: by the report's model order
    (:func:`colour_order`) where one is set, else in the order given."""
    order, run_model = _ORDER.get()
    keys = [run_model.get(n, n) for n in names]
    known = list(order) + [k for k in dict.fromkeys(keys) if k not in order]
    colours = sns.color_palette("colorblind", max(len(known), 1))
    if len(known) > len(colours):  # more models than the palette has colours: cycle, as seaborn does
        colours = [colours[i % len(colours)] for i in range(len(known))]
    return {n: colours[known.index(k)] for n, k in zip(names, keys)}


COLUMN_WIDTH = 3.35  # inches: one column of a two-column venue (NeurIPS, ICML, CVPR: 3.25-3.4 in)
TEXT_WIDTH = 6.9  # inches: the full text width of the same venues


def model_colours(models: Sequence[str]) -> dict[str, tuple]:
    """The colour-blind palette (seaborn's ``colorblind``, Wong 2011) over models in report order: a model has
    the same colour in every figure of a report."""
    return _palette(models)


PAGE_WIDTH_PX = 1068  # the report page's column (report.html: 1,100 px less its padding)
MIN_HEIGHT_PX = 200  # no figure shown lower than this in that column
MAX_ASPECT = PAGE_WIDTH_PX / MIN_HEIGHT_PX  # the widest a saved figure may be, width over height
MAX_COLUMNS = 4  # panels a row: more wrap into the next row (seaborn's col_wrap)
MAX_COLOURS = 10  # colours a panel: seaborn's colorblind palette has ten


def colour_groups(names: Sequence[str]) -> list[list[str]]:
    """``names`` (models, or runs coloured as their model) split into groups of at most :data:`MAX_COLOURS`
    colours each, in the report's colour order (:func:`colour_order`): a model's runs stay together, and the colours
    inside a group are all different (the palette repeats only every ten models). One group for ten models or fewer.
    """
    order, run_model = _ORDER.get()
    keys = [run_model.get(n, n) for n in names]
    known = list(order) + [k for k in dict.fromkeys(keys) if k not in order]
    groups: dict[int, list[str]] = {}
    for n, k in zip(names, keys):
        groups.setdefault(known.index(k) // MAX_COLOURS, []).append(n)
    return [groups[g] for g in sorted(groups)]


def _model_of(frame: pd.DataFrame) -> dict[str, str]:
    """Run -> model: the frame's ``model`` column, else the report's colour order, else the run itself."""
    runs = list(dict.fromkeys(frame["run"]))
    if "model" in frame:
        pairs = frame.drop_duplicates("run").set_index("run")["model"].astype(str)
        return {r: str(pairs.get(r, r)) for r in runs}
    _, run_model = _ORDER.get()
    return {r: run_model.get(r, r) for r in runs}


def _panels(count: int, panel: tuple[float, float], columns: int = MAX_COLUMNS, **kwargs) -> tuple[Figure, list]:
    """A constrained-layout figure of ``count`` panels of ``panel`` inches (width, height), wrapped into rows of at
    most ``columns``; the unused cells of the last row hidden. Returns the figure and the panels in reading order."""
    cols = max(1, min(columns, count))
    rows = -(-max(count, 1) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False,
                             layout="constrained", **kwargs)
    axes = list(grid.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _legend_above(fig: Figure, handles: Sequence, labels: Sequence[str], fontsize: float = 8) -> None:
    """One legend for the figure, above its panels (outside every axes: the constrained layout makes room), as many
    columns as the labels fit in the figure's width."""
    if not handles:
        return
    per = _legend_width(labels, fontsize)  # inches an entry takes: its handle and its text
    ncol = max(1, min(len(labels), int(fig.get_figwidth() // per)))
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol, frameon=False, fontsize=fontsize)


def _legend_width(labels: Sequence[str], fontsize: float = 8) -> float:
    """Inches a legend column of ``labels`` takes beside the panels: its handle and its longest text."""
    return 0.5 + 0.075 * max((len(str(label)) for label in labels), default=0) * fontsize / 8


def _model_handles(models: Sequence[str], colours: dict[str, tuple], marker: str = "o") -> list:
    return [plt.Line2D([], [], marker=marker, ms=5, lw=1.5, color=colours[m]) for m in models]


def plot_accuracy_curves(metrics: pd.DataFrame, metric_names: Sequence[str] = ("accuracy", "consistency"),
                         width: float | None = None) -> Figure:
    """Accuracy and consistency against magnitude: a panel per transformation (rows of at most
    :data:`MAX_COLUMNS`), a block of rows per metric (and per group of ten models past ten), a colour per model. A
    model with one run gets its 95% interval over images as a band; a model with several training seeds gets one thin
    line per seed and its mean over seeds in bold, so the seed spread is visible.

    Args:
        metrics: tidy metrics with ``run transform magnitude magnitude_value metric value ci_low ci_high`` (and
            ``model``; without it every run is its own model).
        metric_names: the metrics to draw, one block of rows each.
        width: the figure's width in inches (e.g. :data:`TEXT_WIDTH`, with print sizes); default 2.6 in a panel.
    """
    _require(metrics, ["run", "transform", "magnitude", "magnitude_value", "metric", "value", "ci_low", "ci_high"],
             "plot_accuracy_curves")
    data = metrics[metrics["metric"].isin(metric_names)]
    if data.empty:
        raise ValueError(f"plot_accuracy_curves: no rows for metrics {', '.join(metric_names)}")
    if "model" not in data:
        data = data.assign(model=data["run"])
    transforms = list(dict.fromkeys(data["transform"]))
    models = list(dict.fromkeys(data["model"]))
    runs_of = {m: list(dict.fromkeys(data.loc[data["model"] == m, "run"])) for m in models}
    colours = _palette(models)
    groups = colour_groups(models)
    shown_metrics = [m for m in metric_names if (data["metric"] == m).any()]
    cols = min(len(transforms), MAX_COLUMNS)
    rows_each = -(-len(transforms) // cols)
    blocks = [(metric, g) for metric in shown_metrics for g in range(len(groups))]
    panel = (width / cols, 1.75) if width else (2.6, 2.3)
    context = ("paper", 1.0) if width else (_THEME["context"], _THEME["font_scale"])  # print sizes at print width
    labels: dict[str, str] = {}
    with sns.axes_style(_THEME["style"]), sns.plotting_context(context[0], font_scale=context[1]):
        fig, grid = plt.subplots(rows_each * len(blocks), cols, figsize=(panel[0] * cols, panel[1] * rows_each
                                                                          * len(blocks)),
                                 squeeze=False, sharey=True, layout="constrained")
        for b, (metric, g) in enumerate(blocks):
            for j in range(rows_each * cols):
                ax = grid[b * rows_each + j // cols, j % cols]
                if j >= len(transforms):
                    ax.set_visible(False)
                    continue
                name = transforms[j]
                panel_rows = data[(data["metric"] == metric) & (data["transform"] == name)].sort_values(
                    "magnitude_value")
                for model in groups[g]:
                    rows = panel_rows[panel_rows["model"] == model]
                    if rows.empty:
                        continue
                    runs = runs_of[model]
                    labels[model] = model if len(runs) == 1 else f"{model} ({len(runs)} seeds, mean bold)"
                    if len(groups) > 1:
                        labels[model] += f" [{g + 1}]"
                    if len(runs) == 1:
                        x = rows["magnitude_value"].to_numpy()
                        ax.plot(x, rows["value"], marker="o", ms=3, lw=1.5, color=colours[model])
                        ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colours[model], alpha=0.2, lw=0)
                        continue
                    for run in runs:
                        one = rows[rows["run"] == run]
                        ax.plot(one["magnitude_value"], one["value"], lw=0.8, alpha=0.55, color=colours[model])
                    mean = rows.groupby("magnitude_value", sort=True)["value"].mean()
                    ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, lw=2, color=colours[model])
                ticks = panel_rows.drop_duplicates("magnitude_value")
                if pd.to_numeric(ticks["magnitude"], errors="coerce").isna().any():  # categorical: name the ticks
                    ax.set_xticks(ticks["magnitude_value"], ticks["magnitude"], rotation=30, ha="right")
                ax.set_ylim(-0.02, 1.02)
                ax.set_title(name + (f" [{g + 1}]" if len(groups) > 1 else ""))
                last = j // cols == rows_each - 1 or j + cols >= len(transforms)
                ax.set_xlabel("magnitude" if last else "")
                ax.set_ylabel(metric if j % cols == 0 else "")
        shown = [m for m in models if m in labels]
        _legend_above(fig, _model_handles(shown, colours), [labels[m] for m in shown],
                      fontsize=8 if width else 9)
    return fig


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def plot_invariance_vs_equivariance(metrics: pd.DataFrame, equivariance: str = "equivariance_gain") -> Figure:
    """Whitened invariance error against the gain of the fitted linear map over the identity, one point per run x
    transformation x non-identity magnitude: the colour is the model (a panel per group of ten models past ten), the
    marker the transformation; the legend beside the panel.

    Left: the representation barely moves (invariant); right and high: it moves, and one linear map explains the
    move (equivariant); right and low: it moves in a way no linear map predicts. Identity conditions (no move at all)
    are left out.
    """
    _require(metrics, ["run", "transform", "magnitude", "metric", "value"], "plot_invariance_vs_equivariance")
    model_of = _model_of(metrics)
    wide = metrics[metrics["metric"].isin(["invariance_error", equivariance])].pivot_table(
        index=["run", "transform", "magnitude"], columns="metric", values="value").reset_index()
    if "invariance_error" not in wide or equivariance not in wide:
        raise ValueError(f"plot_invariance_vs_equivariance needs metrics invariance_error and {equivariance}")
    wide = wide[wide["invariance_error"] > 1e-9]
    wide = wide.assign(model=wide["run"].map(model_of))
    models = list(dict.fromkeys(wide["model"]))
    transforms = list(dict.fromkeys(t for t in metrics["transform"] if t in set(wide["transform"])))
    marker = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(transforms)}
    colours = _palette(models)
    groups = colour_groups(models)
    y_min = -0.5
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(groups), (4.6, 3.9), columns=2, sharey=True)
        fig.set_figwidth(fig.get_figwidth() + _legend_width([*models, *transforms], 7))
        for g, (ax, group) in enumerate(zip(axes, groups)):
            part = wide[wide["model"].isin(group)]
            for (model, transform), rows in part.groupby(["model", "transform"], sort=False):
                ax.scatter(rows["invariance_error"], rows[equivariance], s=28, color=colours[model],
                           marker=marker[transform], edgecolors="white", linewidths=0.4)
            # whitened moves span decades (2 = as far as an unrelated clean image): a log axis; a badly fitted
            # held-out half can give a very negative gain: keep the informative range in view
            ax.set_xscale("log")
            ax.set_ylim(max(y_min, min(wide[equivariance].min() - 0.05, 0.0)), 1.02)
            outside = int((part[equivariance] < y_min).sum())
            title = f"models {g * MAX_COLOURS + 1}-{g * MAX_COLOURS + len(group)}" if len(groups) > 1 else ""
            if outside:
                title = (title + "; " if title else "") + f"{outside} point(s) below the axes (gain < {y_min:g})"
            ax.set_title(title, fontsize=8)
        fig.supxlabel("whitened invariance error, full-D (log; 2 = as far as an unrelated clean image)", fontsize=9)
        fig.supylabel(f"{equivariance.replace('_', ' ')} (1 = the map explains the change)", fontsize=9)
        handles = _model_handles(models, colours) + [plt.Line2D([], [], ls="", marker=marker[t], color="0.35")
                                                     for t in transforms]
        fig.legend(handles, models + transforms, loc="outside right upper", fontsize=7, frameon=False,
                   ncol=1 if len(handles) <= 24 else 2)
    return fig


def plot_scramble_auroc(metrics: pd.DataFrame) -> Figure:
    """Scramble-detection AUROC with 95% intervals: a panel per semantic condition (rows of at most
    :data:`MAX_COLUMNS`), a row per model, one point per run (its seeds side by side); 0.5 (blind) marked."""
    _require(metrics, ["run", "transform", "magnitude", "metric", "value", "ci_low", "ci_high"], "plot_scramble_auroc")
    data = metrics[metrics["metric"] == "scramble_auroc"].copy()
    if data.empty:
        raise ValueError("plot_scramble_auroc: no scramble_auroc rows (probe a semantic transformation)")
    model_of = _model_of(metrics)
    data["condition"] = data["transform"] + " " + data["magnitude"].astype(str)
    data["model"] = data["run"].map(model_of)
    models = list(dict.fromkeys(data["model"]))
    runs_of = {m: list(dict.fromkeys(data.loc[data["model"] == m, "run"])) for m in models}
    conditions = list(dict.fromkeys(data["condition"]))
    colours = _palette(models)
    groups = colour_groups(models)
    cells = [(c, g) for g in range(len(groups)) for c in conditions]
    height = 0.9 + 0.26 * max(len(g) for g in groups)
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(cells), (2.5, height), sharex=True)
        for ax, (condition, g) in zip(axes, cells):
            group = groups[g]
            for i, model in enumerate(group):
                runs = runs_of[model]
                for k, run in enumerate(runs):
                    row = data[(data["condition"] == condition) & (data["run"] == run)]
                    if row.empty:
                        continue
                    r = row.iloc[0]
                    y = i + (k - (len(runs) - 1) / 2) * min(0.6 / max(len(runs), 1), 0.2)
                    err = [[max(r["value"] - r["ci_low"], 0.0)], [max(r["ci_high"] - r["value"], 0.0)]]
                    ax.errorbar([r["value"]], [y], xerr=err, fmt="o", ms=3.5, lw=1, capsize=1.5,
                                color=colours[model])
            ax.axvline(0.5, color="0.3", ls="--", lw=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(len(group) - 0.5, -0.5)
            first = axes.index(ax) % min(MAX_COLUMNS, len(cells)) == 0
            ax.set_yticks(range(len(group)), group if first else [""] * len(group), fontsize=8)
            ax.set_title(condition + (f" [{g + 1}]" if len(groups) > 1 else ""), fontsize=9)
        fig.supxlabel("AUROC  (0.5 = blind to the scramble)", fontsize=9)
    return fig


def plot_roc_curves(roc: pd.DataFrame) -> Figure:
    """ROC curves of clean against scrambled confidence: a panel per condition (rows of at most
    :data:`MAX_COLUMNS`; per group of ten models past ten), a colour per model, a line per run.

    Args:
        roc: ``run condition fpr tpr`` rows (one curve per run and condition, points in order).
    """
    _require(roc, ["run", "condition", "fpr", "tpr"], "plot_roc_curves")
    conditions = list(dict.fromkeys(roc["condition"]))
    model_of = _model_of(roc)
    runs = list(dict.fromkeys(roc["run"]))
    models = list(dict.fromkeys(model_of[r] for r in runs))
    colours = _palette(models)
    groups = colour_groups(models)
    cells = [(c, g) for g in range(len(groups)) for c in conditions]
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(cells), (2.5, 2.4), sharex=True, sharey=True)
        for ax, (cond, g) in zip(axes, cells):
            for run in runs:
                if model_of[run] not in groups[g]:
                    continue
                curve = roc[(roc["condition"] == cond) & (roc["run"] == run)]
                if not curve.empty:
                    ax.plot(curve["fpr"], curve["tpr"], color=colours[model_of[run]], lw=1.2)
            ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
            ax.set_title(cond + (f" [{g + 1}]" if len(groups) > 1 else ""), fontsize=9)
        fig.supxlabel("false positive rate", fontsize=9)
        fig.supylabel("true positive rate", fontsize=9)
        labels = [m + (f" [{g + 1}]" if len(groups) > 1 else "") for g, group in enumerate(groups) for m in group]
        _legend_above(fig, _model_handles([m for group in groups for m in group], colours, marker=""), labels)
    return fig


def plot_polar_accuracy(metrics: pd.DataFrame, transform: str = "rotate") -> Figure:
    """Accuracy over the rotation angle on polar axes, a closed curve per run coloured by its model (a polar panel
    per group of ten models past ten); the legend, one name per model, beside the panels."""
    _require(metrics, ["run", "transform", "magnitude_value", "metric", "value"], "plot_polar_accuracy")
    data = metrics[(metrics["metric"] == "accuracy") & (metrics["transform"] == transform)]
    if data.empty:
        raise ValueError(f"plot_polar_accuracy: no accuracy rows for {transform}")
    model_of = _model_of(metrics)
    runs = list(dict.fromkeys(data["run"]))
    models = list(dict.fromkeys(model_of[r] for r in runs))
    colours = _palette(models)
    groups = colour_groups(models)
    with sns.axes_style("white"), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(groups), (4.0, 4.0), columns=2, subplot_kw={"projection": "polar"})
        fig.set_figwidth(fig.get_figwidth() + _legend_width(models) * (1 if len(models) <= 12 else 2))
        for g, (ax, group) in enumerate(zip(axes, groups)):
            for run in runs:
                if model_of[run] not in group:
                    continue
                rows = data[data["run"] == run].sort_values("magnitude_value")
                theta = np.deg2rad(rows["magnitude_value"].to_numpy())
                r = rows["value"].to_numpy()
                if len(theta) and np.isclose(theta[0] % (2 * np.pi), theta[-1] % (2 * np.pi)):
                    theta, r = theta[:-1], r[:-1]  # -180 and 180 are one angle
                ax.plot(np.r_[theta, theta[:1]], np.r_[r, r[:1]], marker="o", ms=2.5, lw=1.1,
                        color=colours[model_of[run]])
            ax.set_ylim(0, 1)
            ax.set_theta_zero_location("N")  # a polar Axes
            models_of = f"models {g * MAX_COLOURS + 1}-{g * MAX_COLOURS + len(group)}: " if len(groups) > 1 else ""
            ax.set_title(f"{models_of}accuracy against rotation\n(degrees, counter-clockwise)", fontsize=9, pad=14)
        fig.legend(_model_handles(models, colours), models, loc="outside right center", frameon=False,
                   fontsize="small", ncol=1 if len(models) <= 12 else 2)
    return fig


def plot_image_grid(
    images: np.ndarray,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str = "",
    cell: float = 0.55,
) -> Figure:
    """A grid of images with row and column labels.

    Args:
        images: ``(R, K, C, H, W)`` in [0, 1] (C = 1 grey, 3 colour).
        row_labels: ``R`` labels (left).
        col_labels: ``K`` labels (top).
        title: figure title.
        cell: inches per image.
    """
    arr = np.asarray(images)
    if arr.ndim != 5 or arr.shape[2] not in (1, 3):
        raise ValueError(f"plot_image_grid needs images (R, K, C, H, W) with C 1 or 3, got shape {arr.shape}")
    rows, cols = arr.shape[:2]
    if row_labels and len(row_labels) != rows or col_labels and len(col_labels) != cols:
        raise ValueError(f"plot_image_grid: {len(row_labels)} row / {len(col_labels)} column labels for a {rows}x{cols} grid")
    c, h, w = arr.shape[2:]
    pad = max(1, h // 14)
    # one mosaic with thin white gutters: square cells, aligned rows, one imshow
    mosaic = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, 3))
    for i in range(rows):
        for j in range(cols):
            img = np.clip(arr[i, j], 0, 1)
            mosaic[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = (
                np.repeat(img, 3, axis=0) if c == 1 else img).transpose(1, 2, 0)
    left = 1.3 if row_labels else 0.1
    top = (0.3 if col_labels else 0.05) + (0.35 if title else 0)
    width, height = cell * cols, cell * rows
    fig = plt.figure(figsize=(width + left + 0.1, height + top + 0.1))
    ax = fig.add_axes((left / (width + left + 0.1), 0.1 / (height + top + 0.1),
                       width / (width + left + 0.1), height / (height + top + 0.1)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(rows)], list(row_labels) if row_labels else [""] * rows,
                  fontsize=7)
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(cols)], list(col_labels) if col_labels else [""] * cols,
                  fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / (height + top + 0.1), va="top")
    return fig


_LIE_METRICS = {"lee_scores": "class-score LEE (mean |ds/dt|)", "lee_representation": "whitened LEE, representation",
                "elee_representation": "equivariant LEE, representation",
                "elee_representation_pca16": "equivariant LEE, representation (16-D PCA)",
                "lee_pose": "whitened LEE, true-class pose",
                "elee_pose": "equivariant LEE, true-class pose"}


def plot_lie(lie: pd.DataFrame) -> Figure:
    """The end-to-end Lie derivatives (``lie.csv``): one panel per measure (rows of at most three), a point per
    generator and run with its 95% bootstrap interval, coloured by model (a row of panels per group of ten models past
    ten); log scale for the LEEs (they span decades; the equivariant LEE is a ratio, 0 = the fitted generator explains
    the derivative, 1 = no better than none)."""
    _require(lie, ["run", "generator", "metric", "value", "ci_low", "ci_high"], "plot_lie")
    shown = [m for m in _LIE_METRICS if m in set(lie["metric"])]
    model_of = _model_of(lie)
    runs = list(dict.fromkeys(lie["run"]))
    models = list(dict.fromkeys(model_of[r] for r in runs))
    gens = list(dict.fromkeys(lie["generator"]))
    colours = _palette(models)
    groups = colour_groups(models)
    cells = [(m, g) for g in range(len(groups)) for m in shown]
    step = min(0.18, 0.8 / max(len(runs), 1))
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(cells), (3.3, 3.1), columns=3)
        for ax, (metric, g) in zip(axes, cells):
            rows = lie[lie["metric"] == metric]
            mine = [r for r in runs if model_of[r] in groups[g]]
            for k, run in enumerate(mine):
                r = rows[rows["run"] == run].set_index("generator").reindex(gens)
                x = np.arange(len(gens)) + (k - (len(mine) - 1) / 2) * step
                err = np.vstack([r["value"] - r["ci_low"], r["ci_high"] - r["value"]]).clip(min=0)
                ax.errorbar(x, r["value"], yerr=err, fmt="o", ms=4, capsize=2, color=colours[model_of[run]])
            ax.set_xticks(np.arange(len(gens)), gens, rotation=40, ha="right")
            ax.set_title(_LIE_METRICS[metric] + (f" [{g + 1}]" if len(groups) > 1 else ""), fontsize=8)
            if metric.startswith("lee") and (rows["value"] > 0).all():
                ax.set_yscale("log")
        _legend_above(fig, _model_handles(models, colours), models)
    return fig


def plot_lie_layers(layers: pd.DataFrame) -> Figure:
    """Where equivariance is lost (``lie_layers.csv``, one run): per generator (columns), the whitened LEE (top: how
    far the layer moves, log) and the equivariant LEE (bottom: how much of the move a fitted generator misses) of
    each layer in depth order, on the layer's top principal axes, with 95% bootstrap intervals."""
    _require(layers, ["run", "generator", "layer", "depth", "lee", "lee_low", "lee_high", "elee", "elee_low",
                      "elee_high"], "plot_lie_layers")
    gens = list(dict.fromkeys(layers["generator"]))
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = plt.subplots(2, len(gens), figsize=(2.7 * len(gens) + 0.6, 5.2), squeeze=False, sharex=True)
        for j, gen in enumerate(gens):
            rows = layers[layers["generator"] == gen].sort_values("depth")
            x = np.arange(len(rows))
            for i, (col, label) in enumerate((("lee", "whitened LEE"), ("elee", "equivariant LEE"))):
                ax = axes[i][j]
                err = np.vstack([rows[col] - rows[f"{col}_low"], rows[f"{col}_high"] - rows[col]]).clip(min=0)
                ax.errorbar(x, rows[col], yerr=err, fmt="o-", ms=4, capsize=2)
                if col == "lee" and (rows[col] > 0).all():
                    ax.set_yscale("log")
                if col == "elee":
                    ax.set_ylim(0, max(1.05, float(np.nanmax(rows[f"{col}_high"].to_numpy(dtype=float),
                                                              initial=1.0)) + 0.05))
                if j == 0:
                    ax.set_ylabel(label)
                if i == 0:
                    ax.set_title(gen, fontsize=9)
                ax.set_xticks(x, rows["layer"], rotation=55, ha="right", fontsize=7)
        fig.suptitle(str(layers["run"].iloc[0]), fontsize=9)
        fig.tight_layout()
    return fig


def plot_composition(composition: pd.DataFrame) -> Figure:
    """Do the fitted maps compose like rotations? (``composition.csv``, one run): the composition error
    ``|M_(a+b) - M_b M_a| / |M_(a+b)|`` on held-out images over the grid of (a, b), one heat map per representation
    (flattened, and the true-class pose where the model has poses); 0 = a group action."""
    _require(composition, ["run", "which", "a", "b", "composition_error"], "plot_composition")
    whiches = list(dict.fromkeys(composition["which"]))
    vmax = max(float(composition["composition_error"].max()), 1e-6)
    with sns.axes_style("white"), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = plt.subplots(1, len(whiches), figsize=(3.8 * len(whiches), 3.4), squeeze=False)
        for ax, which in zip(axes[0], whiches):
            grid = composition[composition["which"] == which].pivot_table(index="a", columns="b",
                                                                          values="composition_error")
            sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=vmax, cmap="mako_r", ax=ax, cbar=False,
                        annot_kws={"fontsize": 7})
            ax.set_xlabel("b (degrees, applied second)")
            ax.set_ylabel("a (degrees, applied first)")
            ax.set_title(which, fontsize=9)
        fig.suptitle(f"{composition['run'].iloc[0]}: composition error of rotation maps", fontsize=9)
        fig.tight_layout()
    return fig


def plot_reliability(reliability: pd.DataFrame) -> Figure:
    """Reliability diagrams (DeGroot & Fienberg 1983; Guo et al. 2017): accuracy against mean confidence per bin of
    the raw top score, a panel per model, its clean images (solid) and its worst condition (dashed); a point's area
    follows its bin's images; on the diagonal a model is calibrated, below it overconfident. The legend gives each
    condition's ECE, raw and temperature-scaled.

    Args:
        reliability: :func:`capsprobe.metrics.confidence.reliability_table` rows (``model condition role ece
            ece_scaled confidence accuracy count``).
    """
    _require(reliability, ["model", "condition", "role", "ece", "ece_scaled", "confidence", "accuracy", "count"],
             "plot_reliability")
    models = list(dict.fromkeys(reliability["model"]))
    colours = _palette(models)
    cols = min(4, len(models))
    rows_n = -(-len(models) // cols)
    largest = max(float(reliability["count"].max()), 1.0)
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.6 * rows_n), squeeze=False,
                                 layout="constrained")
        for ax, model in zip(axes.flat, models):
            ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8)
            part = reliability[reliability["model"] == model]
            for role, style, marker in (("clean", "-", "o"), ("worst", "--", "^")):
                curve = part[part["role"] == role].sort_values("confidence")
                if curve.empty:
                    continue
                first = curve.iloc[0]
                label = f"{first['condition']} ({role}): ECE {first['ece']:.3f}, scaled {first['ece_scaled']:.3f}"
                ax.plot(curve["confidence"], curve["accuracy"], ls=style, color=colours[model], lw=1.2, label=label)
                ax.scatter(curve["confidence"], curve["accuracy"], s=8 + 60 * curve["count"] / largest,
                           marker=marker, color=colours[model], zorder=3)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_title(model)
            ax.set_xlabel("confidence (top score, 15 bins)")
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=6, frameon=False)
        for ax in list(axes.flat)[len(models):]:
            ax.set_visible(False)
    return fig


def plot_viewpoint_error(poses: pd.DataFrame) -> Figure:
    """Test error against the viewpoint (one panel per pose axis, two a row; per group of ten models past ten), per
    model: the mean over its runs, the band their range; familiar viewpoints shaded; the legend above the panels.
    ``poses``: the viewpoint task's ``viewpoint_poses`` table."""
    _require(poses, ["model", "run", "axis", "value", "familiar", "error"], "plot_viewpoint_error")
    axes_names = list(dict.fromkeys(poses["axis"]))
    models = list(dict.fromkeys(poses["model"]))
    palette = _palette(models)
    groups = colour_groups(models)
    cells = [(a, g) for g in range(len(groups)) for a in axes_names]
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = _panels(len(cells), (5.0, 3.2), columns=2)
        for ax, (name, g) in zip(axes, cells):
            part = poses[(poses["axis"] == name) & poses["model"].isin(groups[g])]
            for value, fam in part.drop_duplicates("value")[["value", "familiar"]].itertuples(index=False):
                if fam:
                    ax.axvspan(value - 0.5 * _step(part), value + 0.5 * _step(part), color="0.9", lw=0)
            sns.lineplot(data=part, x="value", y="error", hue="model", palette=palette, marker="o",
                         errorbar=("pi", 100), ax=ax, legend=False)
            ax.set_xlabel(f"{name} (degrees)")
            ax.set_ylabel("test error")
            ax.set_ylim(0, min(1.0, float(part["error"].max()) * 1.1 + 0.02))
            if len(groups) > 1:
                ax.set_title(f"models {g * MAX_COLOURS + 1}-{g * MAX_COLOURS + len(groups[g])}", fontsize=9)
        _legend_above(fig, _model_handles(models, palette), models)
    return fig


def _step(part: pd.DataFrame) -> float:
    values = np.sort(part["value"].unique())
    return float(np.min(np.diff(values))) if len(values) > 1 else 1.0


TWO_AXIS_COLUMNS = ("model", "condition", "x", "x_low", "x_high", "y", "y_low", "y_high")
QUADRANTS = {(True, False): "invariant, blind to pose", (True, True): "equivariant",
             (False, True): "pose kept, decision lost", (False, False): "neither"}


def plot_two_axes(points: pd.DataFrame, x_label: str, y_label: str, chance: dict[str, float] | None = None) -> Figure:
    """Each model placed on two axes, one panel per condition: how well its *decision* survives the transformation
    (x) against how well its *representation* follows it (y), each the mean over training seeds with its 95% interval
    (a cross of error bars). The corners name the four outcomes of the motivating article (:data:`QUADRANTS`):
    right and low, invariant and blind to pose; right and high, equivariant; left and high, the pose kept and the
    decision lost; left and low, neither. ``chance`` (``{"x": ..., "y": ...}``) draws each axis's chance level.

    Args:
        points: rows ``model condition x x_low x_high y y_low y_high`` (:data:`TWO_AXIS_COLUMNS`).
    """
    _require(points, TWO_AXIS_COLUMNS, "plot_two_axes")
    conditions = list(dict.fromkeys(points["condition"]))
    models = list(dict.fromkeys(points["model"]))
    colours = _palette(models)
    groups = colour_groups(models)
    cells = [(c, g) for g in range(len(groups)) for c in conditions]  # past ten models, a row of panels per ten
    cols = min(MAX_COLUMNS, len(cells))
    rows_n = -(-len(cells) // cols)
    lo_x = min(0.0, float(np.nanmin(points["x_low"].fillna(points["x"]))))
    lo_y = min(0.0, float(np.nanmin(points["y_low"].fillna(points["y"]))))
    hi_y = max(1.0, float(np.nanmax(points["y_high"].fillna(points["y"]))))
    with sns.axes_style(_THEME["style"]), sns.plotting_context(_THEME["context"], font_scale=_THEME["font_scale"]):
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.0 * cols, 3.0 * rows_n + 0.5), squeeze=False,
                                 sharex=True, sharey=True, layout="constrained")
        for ax, (condition, g) in zip(axes.flat, cells):
            part = points[(points["condition"] == condition) & points["model"].isin(groups[g])]
            for r in part.itertuples(index=False):
                xerr = [[max(r.x - r.x_low, 0.0)], [max(r.x_high - r.x, 0.0)]] if np.isfinite(r.x_low) else None
                yerr = [[max(r.y - r.y_low, 0.0)], [max(r.y_high - r.y, 0.0)]] if np.isfinite(r.y_low) else None
                ax.errorbar([r.x], [r.y], xerr=xerr, yerr=yerr, fmt="o", ms=5, color=colours[r.model], lw=1.1,
                            capsize=2, label=r.model)
            for axis, value in (chance or {}).items():
                (ax.axvline if axis == "x" else ax.axhline)(value, color="0.5", ls=":", lw=0.8)
            ax.set_xlim(lo_x - 0.03, 1.03)
            ax.set_ylim(lo_y - 0.03, hi_y + 0.03)
            ax.set_title(str(condition) + (f" [{g + 1}]" if len(groups) > 1 else ""), fontsize=9)
            for (right, top), text in QUADRANTS.items():
                ax.text(0.98 if right else 0.02, 0.98 if top else 0.02, text, transform=ax.transAxes, fontsize=6,
                        color="0.45", ha="right" if right else "left", va="top" if top else "bottom")
        fig.supxlabel(x_label, fontsize=9)
        fig.supylabel(y_label, fontsize=9)
        for ax in list(axes.flat)[len(cells):]:
            ax.set_visible(False)
        _legend_above(fig, _model_handles(models, colours), models)
    return fig
