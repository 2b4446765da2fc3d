"""Plots: a figure for a small synthetic frame, a clear error for a missing column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from capsprobe.report import plots


@pytest.fixture(scope="module")
def metrics():
    rng = np.random.default_rng(0)
    rows = []
    grids = {"rotate": [(-90, "-90"), (0, "0"), (45, "45"), (90, "90"), (180, "180")],
             "flip": [(0, "none"), (1, "horizontal"), (2, "vertical")],
             "jigsaw": [(1, "1"), (2, "2"), (4, "4")]}
    for run in ("caps", "conv"):
        for transform, grid in grids.items():
            for value, label in grid:
                kind = "semantic" if transform != "rotate" or abs(value) >= 90 else "nuisance"
                for metric in ("accuracy", "consistency", "invariance_error", "equivariance_error_pca16", "equivariance_gain"):
                    v = rng.random()
                    rows.append(dict(model=run, run=run, seed=0, transform=transform, kind=kind, magnitude=label,
                                     magnitude_value=float(value), metric=metric, value=v, ci_low=v - 0.05,
                                     ci_high=v + 0.05, n_images=100))
                if kind == "semantic" and label not in ("none", "1"):
                    rows.append(dict(model=run, run=run, seed=0, transform=transform, kind=kind, magnitude=label,
                                     magnitude_value=float(value), metric="scramble_auroc", value=0.7, ci_low=0.6,
                                     ci_high=0.8, n_images=100))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def roc():
    return pd.DataFrame({"run": ["caps"] * 3 + ["conv"] * 3, "condition": ["flip horizontal"] * 6,
                         "fpr": [0, 0.5, 1] * 2, "tpr": [0, 0.8, 1, 0, 0.5, 1]})


@pytest.fixture(scope="module")
def points():
    return pd.DataFrame({"model": ["caps", "conv", "caps"], "condition": ["rotate 45", "rotate 45", "affine 1"],
                         "x": [0.5, 0.9, 0.7], "x_low": [0.4, 0.85, 0.6], "x_high": [0.6, 0.95, 0.8],
                         "y": [0.9, 0.2, 0.5], "y_low": [0.85, 0.1, np.nan], "y_high": [0.95, 0.3, np.nan]})


CASES = [
    ("plot_two_axes", "points", "y_high"),
    ("plot_accuracy_curves", "metrics", "ci_low"),
    ("plot_invariance_vs_equivariance", "metrics", "metric"),
    ("plot_scramble_auroc", "metrics", "ci_high"),
    ("plot_polar_accuracy", "metrics", "magnitude_value"),
    ("plot_roc_curves", "roc", "tpr"),
]


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_returns_a_figure(name, frame, column, request):
    fig = getattr(plots, name)(request.getfixturevalue(frame), *(("x", "y") if name == "plot_two_axes" else ()))
    assert isinstance(fig, Figure) and fig.axes
    for ax in fig.axes:
        assert ax.has_data() or not ax.get_visible() or ax.name == "polar"


@pytest.mark.parametrize("name, frame, column", CASES)
def test_plot_names_the_missing_column(name, frame, column, request):
    data = request.getfixturevalue(frame).drop(columns=[column])
    with pytest.raises(ValueError, match=f"missing: {column}"):
        getattr(plots, name)(data, *(("x", "y") if name == "plot_two_axes" else ()))


def test_accuracy_curves_layout(metrics):
    fig = plots.plot_accuracy_curves(metrics)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["rotate", "flip", "jigsaw"] and len(fig.axes) == 6  # 2 metrics x 3 transforms
    flip_ticks = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert flip_ticks == ["none", "horizontal", "vertical"]


def test_image_grid_shape_and_errors():
    fig = plots.plot_image_grid(np.random.rand(16, 11, 1, 28, 28), [f"d{i}" for i in range(16)], [str(i) for i in range(11)])
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == 16 and len(ax.get_xticks()) == 11
    with pytest.raises(ValueError, match="labels"):
        plots.plot_image_grid(np.random.rand(2, 3, 1, 8, 8), ["a"], [])
    with pytest.raises(ValueError, match=r"\(R, K, C, H, W\)"):
        plots.plot_image_grid(np.random.rand(2, 3, 8, 8))


def test_accuracy_curves_show_every_seed_and_the_mean(metrics):
    from capsprobe.report.plots import plot_accuracy_curves

    seeds = pd.concat([metrics.assign(run=metrics["run"] + f"-seed{s}", value=metrics["value"] * (0.9 + 0.05 * s))
                       for s in range(3)], ignore_index=True)  # each model now has three runs
    fig = plot_accuracy_curves(seeds)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * (3 + 1)  # per model: a thin line per seed and the bold mean
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["caps (3 seeds, mean bold)", "conv (3 seeds, mean bold)"]
    single = plot_accuracy_curves(metrics)
    assert len(single.axes[0].lines) == 2 and len(single.axes[0].collections) == 2  # one run: line and band


def test_two_axes_puts_the_decision_on_x_and_the_representation_on_y(points):
    """A point sits at (x, y) with its error bars spanning exactly [low, high] on each axis; a missing interval
    draws no bar; a panel per condition in order; chance lines where asked."""
    fig = plots.plot_two_axes(points, "decision", "representation", chance={"x": 0.1, "y": 1 / 12})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["rotate 45", "affine 1"]
    first = shown[0]
    marks = [line.get_xydata()[0].tolist() for line in first.lines if line.get_marker() == "o"]
    assert marks == [[0.5, 0.9], [0.9, 0.2]]
    segments = [seg for coll in first.collections for seg in coll.get_segments()]
    horizontal = sorted(tuple(np.round(seg[:, 0], 6)) for seg in segments if seg[0, 1] == seg[1, 1])
    vertical = sorted(tuple(np.round(seg[:, 1], 6)) for seg in segments if seg[0, 0] == seg[1, 0])
    assert horizontal == [(0.4, 0.6), (0.85, 0.95)] and vertical == [(0.1, 0.3), (0.85, 0.95)]
    lone = shown[1]
    assert not [seg for coll in lone.collections for seg in coll.get_segments() if seg[0, 0] == seg[1, 0]]
    dotted = [line for line in first.lines if line.get_linestyle() == ":"]
    assert sorted(tuple(np.round(line.get_xdata(), 6))[0] for line in dotted if line.get_xdata()[0] == line.get_xdata()[1]) == [0.1]
    assert fig._supxlabel.get_text() == "decision" and fig._supylabel.get_text() == "representation"


def test_two_axis_points_read_each_metric_on_its_axis():
    from capsprobe.report.section import two_axis_points

    rows = []
    for model, (c, g) in {"caps": (0.6, 0.9), "conv": (0.8, 0.3)}.items():
        for metric, v in (("consistency", c), ("equivariance_gain", g), ("accuracy", 0.5)):
            rows.append({"model": model, "transform": "rotate", "magnitude": 45, "metric": metric, "value": v,
                         "ci_low": v - 0.1, "ci_high": v + 0.05})
    rows.append({"model": "lone", "transform": "rotate", "magnitude": 45, "metric": "consistency", "value": 0.1,
                 "ci_low": 0.0, "ci_high": 0.2})  # no gain: left out
    comparison = pd.DataFrame(rows)
    got = two_axis_points(comparison, "consistency", "equivariance_gain", [("affine", "1"), ("rotate", "45")])
    assert got["model"].tolist() == ["caps", "conv"] and set(got["condition"]) == {"rotate 45"}
    caps = got.iloc[0]
    assert (caps.x, caps.x_low, caps.x_high, caps.y, caps.y_low, caps.y_high) == pytest.approx(
        (0.6, 0.5, 0.65, 0.9, 0.8, 0.95))
    assert two_axis_points(None, "consistency", "equivariance_gain", [("rotate", "45")]).empty


# --- layout at any number of runs and conditions (issue 51, item 6) ----------------------------------------------

MODELS = [f"model{i:02d}" for i in range(11)]  # past the palette's ten colours
SEEDS = 2
RUN_MODEL = {f"{m}-seed{s}": m for m in MODELS for s in range(SEEDS)}
TRANSFORMS = ["rotate", *(f"t{i:02d}" for i in range(1, 5))]  # past four panels a row
SCRAMBLES = ["t01", "t02"]  # x 2 magnitudes: 4 conditions (8 panels with two groups of models)


@pytest.fixture(scope="module")
def many():
    return many_tables()


def many_tables() -> dict[str, pd.DataFrame]:
    """Synthetic tables of 11 models x 2 seeds (22 runs), 5 transformations, 4 scramble conditions."""
    rng = np.random.default_rng(1)
    rows = []
    for run, model in RUN_MODEL.items():
        for t in TRANSFORMS:
            grid = [-90, 0, 90, 180] if t == "rotate" else [0, 1, 2]
            for value in grid:
                for metric in ("accuracy", "consistency", "invariance_error", "equivariance_gain"):
                    v = float(rng.random())
                    rows.append(dict(model=model, run=run, transform=t, magnitude=str(value),
                                     magnitude_value=float(value), metric=metric, value=v, ci_low=v - 0.05,
                                     ci_high=v + 0.05))
                if t in SCRAMBLES and value:
                    v = float(rng.random())
                    rows.append(dict(model=model, run=run, transform=t, magnitude=str(value),
                                     magnitude_value=float(value), metric="scramble_auroc", value=v, ci_low=v - 0.1,
                                     ci_high=v + 0.1))
    metrics = pd.DataFrame(rows)
    conditions = [f"{t} {m}" for t in SCRAMBLES for m in (1, 2)]
    roc = pd.DataFrame([{"run": run, "condition": c, "fpr": f, "tpr": min(1.0, f * 1.3)}
                        for run in RUN_MODEL for c in conditions for f in (0.0, 0.5, 1.0)])
    lie = pd.DataFrame([{"model": m, "run": run, "generator": g, "metric": metric, "value": 0.5, "ci_low": 0.4,
                         "ci_high": 0.6} for run, m in RUN_MODEL.items() for g in ("rotate", "translate-x", "scale")
                        for metric in ("lee_scores", "lee_representation", "elee_representation_pca16", "lee_pose")])
    poses = pd.DataFrame([{"model": m, "run": run, "axis": axis, "value": float(v), "familiar": v < 40,
                           "error": float(rng.random())} for run, m in RUN_MODEL.items()
                          for axis in ("azimuth", "elevation") for v in range(0, 80, 10)])
    points = pd.DataFrame([{"model": m, "condition": c, "x": 0.5, "x_low": 0.4, "x_high": 0.6, "y": 0.5,
                            "y_low": 0.4, "y_high": 0.6} for m in MODELS for c in conditions[:3]])
    return {"metrics": metrics, "roc": roc, "lie": lie, "poses": poses, "points": points}


LAYOUT_CASES = {
    "accuracy_curves": lambda t: plots.plot_accuracy_curves(t["metrics"]),
    "key_accuracy": lambda t: plots.plot_accuracy_curves(t["metrics"], ("accuracy",), width=plots.TEXT_WIDTH),
    "attack_accuracy": lambda t: plots.plot_accuracy_curves(t["metrics"], ("accuracy",)),
    "invariance_equivariance": lambda t: plots.plot_invariance_vs_equivariance(t["metrics"]),
    "scramble_auroc": lambda t: plots.plot_scramble_auroc(t["metrics"]),
    "roc_curves": lambda t: plots.plot_roc_curves(t["roc"]),
    "rotation_polar": lambda t: plots.plot_polar_accuracy(t["metrics"]),
    "lie": lambda t: plots.plot_lie(t["lie"]),
    "viewpoint_error": lambda t: plots.plot_viewpoint_error(t["poses"]),
    "two_axes": lambda t: plots.plot_two_axes(t["points"], "decision", "representation"),
}


def _grey(rgb) -> bool:
    return max(rgb) - min(rgb) < 1e-3


def _colours(ax) -> set[tuple[float, ...]]:
    """The distinct non-grey colours an axes draws with: lines, collections (scatter, error bars, bands), patches."""
    from matplotlib.colors import to_rgb

    found = [to_rgb(line.get_color()) for line in ax.lines]
    for coll in ax.collections:
        found += [tuple(c[:3]) for c in coll.get_facecolors()] + [tuple(c[:3]) for c in coll.get_edgecolors()]
    found += [to_rgb(p.get_facecolor()) for p in ax.patches]
    return {tuple(round(float(v), 3) for v in c) for c in found if not _grey(c)}


#: figures that mark each model once a panel (its line's or its point's marker): there, two marks of one colour are two
#: models the reader cannot tell apart (the palette repeats past ten)
ONE_MARK_A_MODEL = {"accuracy_curves", "key_accuracy", "attack_accuracy", "two_axes"}


def _shared_colours(ax) -> int:
    """How many of the axes' marked lines (one per model) share a colour with another."""
    marked = [line.get_color() for line in ax.lines  # error-bar caps (| and _) are not marks
              if line.get_marker() not in (None, "None", "", " ", "|", "_")]
    return len(marked) - len({str(c) for c in marked})


def _layout_problems(fig, one_mark_a_model: bool = False) -> list[str]:
    """The rules' breaches: a legend over any axes' data area, an axes of more than ten colours (or, where each model
    has one mark a panel, two models of one colour), and (the saved PNG, as the report saves it) a figure that the
    page's 1,068 px column would show lower than 200 px."""
    import io

    from PIL import Image

    from capsprobe.report.section import figure_png

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    problems = []
    for k, legend in enumerate(legends):
        box = legend.get_window_extent(renderer).padded(-1)
        over = [ax.get_title() or str(i) for i, ax in enumerate(axes) if box.overlaps(ax.get_window_extent(renderer))]
        if over:
            problems.append(f"legend {k} over the axes {over[:3]}")
    problems += [f"axes {ax.get_title()!r}: {len(_colours(ax))} colours" for ax in axes if len(_colours(ax)) > 10]
    if one_mark_a_model:
        problems += [f"axes {ax.get_title()!r}: {_shared_colours(ax)} models share a colour" for ax in axes
                     if _shared_colours(ax)]
    width, height = Image.open(io.BytesIO(figure_png(fig))).size
    if width / height > plots.MAX_ASPECT:
        problems.append(f"{width} x {height} px: {plots.PAGE_WIDTH_PX * height / width:.0f} px high in the column")
    return problems


@pytest.mark.parametrize("name", LAYOUT_CASES)
def test_figures_stay_readable_with_many_models_and_conditions(name, many):
    """11 models x 2 seeds over 5 transformations: no strip (wrapped rows), no legend over data, at most ten colours
    a panel (a panel per group of ten models past ten), in the report's colour order."""
    with plots.colour_order(MODELS, RUN_MODEL):
        problems = _layout_problems(LAYOUT_CASES[name](many), name in ONE_MARK_A_MODEL)
    assert problems == []


def test_the_layout_check_sees_a_strip_a_legend_over_data_and_too_many_colours():
    import matplotlib.pyplot as plt

    def strip(marked: int):
        fig, ax = plt.subplots(figsize=(30, 2))
        for i in range(12):
            ax.plot([0, 1], [i, i], color=plt.cm.tab20(i), label=str(i))
        for k in range(marked):  # models marked in the first one's colour
            ax.plot([0, 1], [k, 1 - k], marker="os"[k], color=plt.cm.tab20(0))
        ax.legend(loc="center")
        return fig

    problems = "\n".join(_layout_problems(strip(1), one_mark_a_model=True))
    assert "legend 0 over the axes" in problems and "12 colours" in problems and "px high in the column" in problems
    assert "share a colour" not in problems  # only marked lines count: one here
    assert "1 models share a colour" in "\n".join(_layout_problems(strip(2), one_mark_a_model=True))


def test_colour_groups_keep_a_models_runs_together_and_ten_colours_a_group():
    with plots.colour_order(MODELS, RUN_MODEL):
        groups = plots.colour_groups(list(RUN_MODEL))
        assert [len(g) for g in groups] == [20, 2]
        assert {RUN_MODEL[r] for r in groups[1]} == {"model10"}
        colours = plots._palette(groups[0])
        assert len({colours[r] for r in groups[0]}) == 10
    assert plots.colour_groups(["a", "b"]) == [["a", "b"]]


def test_many_transformations_wrap_into_rows_instead_of_a_strip():
    """12 transformations of one metric (the worst cases' figure): rows of four, not a 12-panel strip."""
    rows = [dict(model=m, run=m, transform=f"t{t:02d}", magnitude=str(v), magnitude_value=float(v),
                 metric="accuracy", value=0.5, ci_low=0.4, ci_high=0.6) for m in ("a", "b") for t in range(12)
            for v in (0, 1, 2)]
    fig = plots.plot_accuracy_curves(pd.DataFrame(rows), ("accuracy",))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 12 and len({round(ax.get_position().y0, 3) for ax in shown}) == 3  # three rows of four
    assert _layout_problems(fig) == []
