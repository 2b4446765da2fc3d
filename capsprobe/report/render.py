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
of :mod:`capsprobe.report.plots` plus one entry in :data:`SUITE_FIGURES`.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..metrics.compare import comparison_tables
from ..probe import decodability_rows
from ..probe.schema import FIGURES, MANIFEST, REPORT_HTML, REPORT_MD, RESULTS, identity_labels
from ..runtime import MARKER, atomic_dir, folder_lock, write_marker
from .folder import ReportData, ReportError, read_probe_outputs, write_csv
from .section import Section, _markdown_table

__all__ = [
    "COMPARISON_TABLES",
    "SectionFor",
    "recompare_report",
    "render_report",
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.8em;margin:1em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left}th{background:#f4f4f4}figure{margin:1.2em 0}img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.meta{font-size:.85em;color:#555}li{margin:.3em 0}
"""


def _html(title: str, lines: list[str], tables: list[tuple[str, pd.DataFrame]], figs: dict[str, bytes],
          captions: dict[str, str], manifest: dict[str, Any], notes: list[str]) -> str:
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


SectionFor = Callable[[ReportData], Section]


def render_report(folder: str | Path, section_for: SectionFor) -> Path:
    """Render ``figures/``, ``report.md`` and ``report.html`` from the files of a perturb folder, with the section
    ``section_for(data)`` gives (:func:`capsprobe.pipeline.write_report` passes the folder's task's section).

    Reads files only (no run, no data set, no device), so a report folder copied elsewhere renders the same.

    Raises:
        ReportError: a file perturb writes is missing or malformed (the message names it).
        BusyError: another capsprobe command is writing the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    with folder_lock(folder):
        return _write_report(folder, section_for)


def _write_report(folder: Path, section_for: SectionFor) -> Path:

    data = read_probe_outputs(folder)
    section = section_for(data)
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


def recompare_report(folder: str | Path, section_for: SectionFor) -> Path:
    """Recompute a report folder's comparison tables (``comparison``, ``differences``, ``excluded``, ``ablation``)
    from its own files with the current method (:mod:`capsprobe.metrics.compare`), then render the report.

    Reads ``summary.csv``, ``results.parquet``, ``overview.csv`` (decodability per run) and ``manifest.json`` (the
    runs, the ablation's reference); nothing is retrained or re-probed. The folder is rebuilt beside itself and
    swapped in, so an interruption leaves the old tables whole.

    Raises:
        ReportError: a file is missing or malformed, or the folder's task has no comparison tables.
        BusyError: another capsprobe command is writing the folder.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    with folder_lock(folder):
        if not (folder / RESULTS).is_file():
            raise ReportError(f"{folder / RESULTS} is missing: the comparisons are recomputed from the per-image table, "
                              "which this folder does not keep")
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
                    write_csv(frame, tmp / f"{name}.csv")
        return _write_report(folder, section_for)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file, or a folder's files) at ``dst``; copy where links are not possible."""
    if src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
