"""What a task's report section is built from: :class:`Section`, figure specifications, PNG and markdown helpers."""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..metrics import METRICS
from .folder import ReportData

__all__ = [
    "FigureBytes",
    "FigureSpec",
    "Section",
    "figure_formats",
    "figure_png",
    "grid_figures",
    "pct",
    "report_colours",
    "two_axis_points",
]

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
    verdicts: pd.DataFrame | None = None  # one row per question, a column per model pair: the report opens with it
    claims: pd.DataFrame | None = None  # the declared claims' verdicts (primary endpoints): first on the page
    key_figure: str | None = None  # the figure shown right below the verdicts (a key of ``figures``)
    details: list[str] = field(default_factory=list)  # every read-out sentence, folded below the claims


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt(overview: pd.DataFrame) -> pd.DataFrame:
    """Overview columns as ``value [low, high]`` strings, for the Markdown and HTML tables."""

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


class FigureBytes(bytes):
    """A figure's PNG bytes, with the same figure as vector files (``vectors``: format -> bytes) when the report
    asked for them (:func:`figure_formats`)."""

    vectors: dict[str, bytes]


_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("figure_formats", default=("png",))


@contextlib.contextmanager
def figure_formats(formats: Sequence[str]) -> Iterator[None]:
    """Within the block, every figure a section draws is also kept as each vector format of ``formats`` (pdf,
    svg): fonts embedded (PDF: TrueType, type 42) or drawn as paths (SVG), so the files look the same anywhere."""
    token = _FORMATS.set(tuple(formats))
    try:
        yield
    finally:
        _FORMATS.reset(token)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only when a figure is drawn

    vectors = {}
    for fmt in _FORMATS.get():
        if fmt not in _VECTOR_METADATA:
            continue
        logging.getLogger("fontTools").setLevel(logging.WARNING)  # its font subsetting logs every glyph at INFO
        buf = io.BytesIO()
        with plt.rc_context({"pdf.fonttype": 42, "svg.fonttype": "path", "svg.hashsalt": "capsprobe"}):
            fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=_VECTOR_METADATA[fmt])
        vectors[fmt] = buf.getvalue()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    out = FigureBytes(_palette_png(buf.getvalue()))
    out.vectors = vectors
    return out


# no creation date in the vector files: the same report renders to the same bytes
_VECTOR_METADATA: dict[str, dict[str, Any]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _palette_png(data: bytes) -> bytes:
    """The PNG as 256 indexed colours by median cut, losslessly compressed: exact for a figure of at most 256
    colours (flat plots; matplotlib's colormaps have 256 entries), antialiased edges rounded otherwise, and a
    third of the RGBA file, which keeps the committed reports small."""
    from PIL import Image  # matplotlib's own dependency

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def figure_png(fig) -> bytes:
    """A matplotlib figure as the PNG bytes a :class:`Section` carries (the figure is closed); with the vector
    files :func:`figure_formats` asks for in ``.vectors``."""
    return _png(fig)


def report_colours(data: ReportData) -> contextlib.AbstractContextManager:
    """The colour order of a report's figures: its models in the manifest's order, each run coloured as its model."""
    from . import plots  # lazy: plots imports matplotlib and seaborn

    runs = [r for r in data.manifest.get("runs", []) if isinstance(r, dict)]
    models = [str(r.get("model", r.get("name", ""))) for r in runs]
    return plots.colour_order(models, {str(r.get("name", "")): str(r.get("model", r.get("name", ""))) for r in runs})


def _has(metric: str, transform: str | None = None) -> Callable[[ReportData], bool]:
    def check(data: ReportData) -> bool:
        rows = data.metrics[data.metrics["metric"] == metric]
        return bool(len(rows if transform is None else rows[rows["transform"] == transform]))
    return check


def _plot(name: str, table: str | None = None) -> Callable[[ReportData], Any]:
    def draw(data: ReportData):
        from . import plots  # lazy: plots imports matplotlib and seaborn

        return getattr(plots, name)(data.metrics if table is None else data.tables[table])
    return draw


def two_axis_points(comparison: pd.DataFrame | None, x_metric: str, y_metric: str,
                    conditions: Sequence[tuple[str, str]], label: Callable[[str, str], str] | None = None
                    ) -> pd.DataFrame:
    """The rows of :func:`capsprobe.report.plots.plot_two_axes` from a comparison table (one row per model x
    condition x metric: the mean over seeds and its 95% interval, :func:`capsprobe.metrics.compare.comparison_tables`):
    per model and each of ``conditions`` (``(transform, magnitude label)``, in that order) where the model has both
    metrics, ``x`` = ``x_metric`` and ``y`` = ``y_metric`` with their intervals; ``condition`` = ``label(transform,
    magnitude)`` (default ``"transform magnitude"``). Empty when no condition has both."""
    from .plots import TWO_AXIS_COLUMNS

    if comparison is None or not len(comparison):
        return pd.DataFrame(columns=list(TWO_AXIS_COLUMNS))
    name = label or (lambda t, m: f"{t} {m}")
    comp = comparison.assign(magnitude=comparison["magnitude"].astype(str))
    comp = comp[comp["metric"].isin([x_metric, y_metric])]
    rows = []
    for transform, magnitude in conditions:
        part = comp[(comp["transform"] == transform) & (comp["magnitude"] == str(magnitude))]
        for model, cell in part.groupby("model", sort=False):
            by = cell.drop_duplicates("metric").set_index("metric")
            if x_metric not in by.index or y_metric not in by.index:
                continue
            x, y = by.loc[x_metric], by.loc[y_metric]
            rows.append({"model": model, "condition": name(transform, str(magnitude)),
                         "x": float(x["value"]), "x_low": float(x["ci_low"]), "x_high": float(x["ci_high"]),
                         "y": float(y["value"]), "y_low": float(y["ci_low"]), "y_high": float(y["ci_high"])})
    return pd.DataFrame(rows, columns=list(TWO_AXIS_COLUMNS))


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the suite's report: file name, ``draw(data) -> Figure``, when it applies, its caption."""

    name: str
    draw: Callable[[ReportData], Any]
    applies: Callable[[ReportData], bool]
    caption: str


def first_seed_grids(arrays: dict[str, dict[str, np.ndarray]],
                     runs: list[Any]) -> tuple[dict[str, dict[str, np.ndarray]], bool]:
    """The image grids (``<kind>-<run>``) of each model's first run in the manifest's order, and whether a model
    with several runs (seeds) has one of them shown.

    A model's seeds draw the same pictures of the same digits; the page shows one seed's, which keeps a report of
    many seeds small (and the other seeds' grids need not be kept). Grids of a run the manifest does not list are
    all kept.
    """
    model_of = {str(r.get("name", "")): str(r.get("model", r.get("name", ""))) for r in runs if isinstance(r, dict)}
    first = {}
    for run, model in reversed(model_of.items()):
        first[model] = run
    kept = {}
    for name, grid in arrays.items():
        of = name.partition("-")[2]
        if of not in model_of or first[model_of[of]] == of:
            kept[name] = grid
    several = {m for m in model_of.values() if list(model_of.values()).count(m) > 1}
    shown = {model_of[name.partition("-")[2]] for name in kept if name.partition("-")[2] in model_of}
    return kept, bool(shown & several)


def grid_figures(arrays: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every stored image grid (``arrays/*.npz``) drawn with :func:`capsprobe.report.plots.plot_image_grid`."""
    from . import plots  # lazy: plots imports matplotlib and seaborn

    figs, captions = {}, {}
    for name, grid in arrays.items():
        key = f"{name}.png"
        cols = [str(c) for c in grid.get("col_labels", np.array([]))]
        figs[key] = _png(plots.plot_image_grid(grid["images"], row_labels=[str(r) for r in grid["row_labels"]],
                                               col_labels=cols, title=str(grid.get("title", "")),
                                               cell=float(grid.get("cell", 0.9))))
        captions[key] = str(grid.get("caption", name))
    return figs, captions
