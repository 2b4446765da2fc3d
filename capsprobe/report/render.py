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
import json
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..errors import InvalidInputError
from ..metrics.compare import comparison_tables, readjust_tables
from ..probe import decodability_rows
from ..probe.schema import FIGURES, MANIFEST, REPORT_HTML, REPORT_MD, RESULTS, identity_labels
from ..runtime import MARKER, atomic_dir, folder_lock
from .folder import ReportData, ReportError, read_probe_outputs, write_csv
from .section import Section, _markdown_table, figure_formats
from .verdicts import CLAIMS_NOTE, COMPACT_NOTE, claims_shown, compact_verdict_table, verdict_table

__all__ = [
    "COMPARISON_TABLES",
    "DEFAULT_FORMATS",
    "REPORT_FORMATS",
    "SectionFor",
    "latex_table",
    "parse_formats",
    "report_title",
    "recompare_report",
    "render_report",
    "runs_summary",
]

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:anywhere}h1{font-size:1.6em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.scroll{max-width:100%;overflow-x:auto}table{border-collapse:collapse;font-size:.8em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top;overflow-wrap:normal}
th{background:#f4f4f4}table.verdicts td{min-width:14em}table.verdicts td:first-child{min-width:11em;font-weight:600}
table.compact td{min-width:0}table.compact td:first-child{min-width:0}
figure{margin:1.2em 0}img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
.meta{font-size:.85em;color:#555}li{margin:.3em 0}details{margin:.5em 0}summary{cursor:pointer;color:#036}
"""


def _table_html(table: pd.DataFrame, css: str = "") -> str:
    cls = f" class='{css}'" if css else ""
    body = table.to_html(index=False, border=0, escape=True)
    if cls:
        body = body.replace("<table class=\"dataframe\">", f"<table{cls}>", 1)
    return f"<div class='scroll'>{body}</div>"


def _figure_html(name: str, data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


VERDICTS_TITLE = "Exploratory verdicts (not declared claims)"
VERDICT_NOTE = ("Exploratory: no claim rests on these cells (the declared claims, where the experiment has them, are "
                "above). Each cell: the model that does better, then the column's difference a - b (accuracy and "
                "consistency in percentage points) with its 95% interval over training seeds and images, widened for "
                "every condition of the metric (Bonferroni level), at the question's key condition (fixed in the "
                "transformation registry, never picked from the data), and whether it is established (Holm p < 0.05 "
                "over the conditions of the pair's metric) at the seeds both models have; then how many of the "
                "question's conditions are established each way. Intervals at 1 seed cover the test images only: "
                "nothing is established.")


def report_title(folder: Path, manifest: dict[str, Any]) -> str:
    """The report's name, the page's title and its one H1: the experiment (and size) that made it, else the
    folder's name."""
    exp = manifest.get("experiment") or {}
    if isinstance(exp, dict) and exp.get("name"):
        return f"capsprobe report: {exp['name']}" + (f" ({exp['size']})" if exp.get("size") else "")
    return f"capsprobe report: {folder.name}"


def _full_summary(verdicts: pd.DataFrame) -> str:
    pairs = len(verdicts.columns) - 1
    return (f"Every pair in full ({pairs} pair{'s' if pairs != 1 else ''} x {len(verdicts)} "
            f"question{'s' if len(verdicts) != 1 else ''})")


def _html(title: str, section: Section, manifest: dict[str, Any],
          compact: tuple[str, pd.DataFrame] | None = None) -> str:
    exp = manifest.get("experiment") or {}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if isinstance(exp, dict) and exp.get("description"):
        parts.append(f"<p>{html.escape(str(exp['description']))}</p>")
    parts.append("<p class='meta'>" + html.escape(_provenance(manifest)) + "</p>")
    if manifest.get("runs"):
        parts.append(f"<details class='meta'><summary>{html.escape(runs_summary(manifest))}</summary>"
                     f"<p>{html.escape(_runs_listed(manifest))}</p></details>")
    if section.claims is not None and len(section.claims):
        parts.append("<h2>Declared claims</h2>" + _table_html(section.claims, "verdicts")
                     + f"<details class='meta'><summary>How to read a claim</summary>{html.escape(CLAIMS_NOTE)}"
                     "</details>")
    if section.verdicts is not None and len(section.verdicts):
        parts.append(f"<h2>{VERDICTS_TITLE}</h2>")
        if compact is not None:
            reference, table = compact
            parts.append(f"<p>Each model against {html.escape(reference)}:</p>" + _table_html(table, "verdicts compact")
                         + f"<details><summary>{html.escape(_full_summary(section.verdicts))}</summary>"
                         + _table_html(section.verdicts, "verdicts") + "</details>"
                         + f"<details class='meta'><summary>How to read a row</summary>{html.escape(COMPACT_NOTE)} "
                         f"{html.escape(VERDICT_NOTE)}</details>")
        else:
            parts.append(_table_html(section.verdicts, "verdicts")
                         + f"<details class='meta'><summary>How to read a cell</summary>{html.escape(VERDICT_NOTE)}"
                         "</details>")
    figures = dict(section.figures)
    if section.key_figure in figures:
        parts.append(_figure_html(section.key_figure, figures.pop(section.key_figure),
                                  section.captions.get(section.key_figure, section.key_figure)))
    parts.append("<h2>Headlines</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in section.headlines) + "</ul>")
    if section.details:
        parts.append(f"<details><summary>Every read-out ({len(section.details)} sentences)</summary><ul>"
                     + "".join(f"<li>{html.escape(s)}</li>" for s in section.details) + "</ul></details>")
    for table_title, table in [(section.table_title, section.table), *section.tables]:
        parts.append(f"<h2>{html.escape(table_title)}</h2><details><summary>The table ({len(table)} rows)</summary>"
                     + _table_html(table) + "</details>")
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure_html(name, data, section.captions.get(name, name)) for name, data in figures.items())
    if section.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in section.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _steps(manifest: dict[str, Any]) -> str:
    steps = manifest.get("attack_steps")
    return "" if steps is None else f"; PGD {steps} steps (pgd-long {5 * int(steps)})"


def _computed_on(manifest: dict[str, Any]) -> str:
    """Where and in what precision the probe computed (its ``device_record``), or "" for a report without one."""
    record = manifest.get("device_record")
    if not isinstance(record, dict):
        return ""
    name = record.get("device_name")
    where = f"{record.get('device', '?')}" + (f" ({name})" if name else "")
    cuda = f", CUDA {record['cuda']}, cuDNN {record.get('cudnn', '?')}" if record.get("cuda") else ""
    autocast = record.get("autocast")
    precision = f"{autocast} autocast" if autocast else "float32"
    tf32 = "on" if record.get("tf32_matmul") or record.get("tf32_cudnn") else "off"
    return f" Computed on {where} in {precision}, TF32 {tf32}{cuda}."


def _runs_listed(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{r['name']} ({r['model']}, seed {r['seed']})" for r in manifest.get("runs", []))


def _provenance(manifest: dict[str, Any]) -> str:
    """The report's provenance without its runs: images, transformation seed, bootstrap, versions, device."""
    v = manifest.get("versions", {})
    return (f"{manifest.get('images', '?')} {manifest.get('dataset', '?')} {manifest.get('split', 'test')} images; "
            f"transformation seed {manifest.get('seed', '?')}, {manifest.get('bootstrap', '?')} bootstrap "
            f"resamples{_steps(manifest)}; torch {v.get('torch', '?')}, kornia {v.get('kornia', '?')}, timm {v.get('timm', '?')}."
            + _computed_on(manifest))


def _meta_line(manifest: dict[str, Any]) -> str:
    """The whole provenance in one line, runs included (the page folds the runs under :func:`runs_summary`)."""
    return _provenance(manifest).replace(" images; ", f" images; runs: {_runs_listed(manifest)}; ", 1)


def runs_summary(manifest: dict[str, Any]) -> str:
    """The run list in one line: how many runs of how many models and seeds, and how their training ended, e.g.
    "27 runs: 9 models x 3 seeds (0, 1, 2), all reached their target accuracy"."""
    runs = [r for r in manifest.get("runs", []) if isinstance(r, dict)]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_model.setdefault(str(r.get("model", r.get("name"))), []).append(r)
    counts = sorted({len(rs) for rs in by_model.values()})
    seeds_of = {m: sorted(int(r["seed"]) for r in rs if isinstance(r.get("seed"), int)) for m, rs in by_model.items()}
    seeds = sorted({s for ss in seeds_of.values() for s in ss})
    per = (f"{counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1 else
           f"{counts[0]}-{counts[-1]} seeds")
    same = len(counts) == 1 and all(ss == seeds for ss in seeds_of.values())
    text = (f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {len(by_model)} model{'s' if len(by_model) != 1 else ''}"
            f" x {per}" + (f" ({', '.join(str(s) for s in seeds)})" if same and seeds and counts[0] > 1 else ""))
    reached = [r.get("reached_target") for r in runs]
    missed = [str(r.get("name")) for r in runs if r.get("reached_target") is False]
    if missed:
        text += f"; {len(missed)} missed the target accuracy (left out of the comparisons)"
    elif runs and all(v is True for v in reached):
        text += ", all reached their target accuracy"
    elif runs and all(v is None for v in reached):
        epochs = sorted({int(r["epochs"]) for r in runs if isinstance(r.get("epochs"), int)})
        if epochs:
            text += f", {'/'.join(str(e) for e in epochs)} epoch{'s' if epochs != [1] else ''} each (no target)"
    return text


SectionFor = Callable[[ReportData], Section]

REPORT_FORMATS = ("png", "pdf", "svg", "tex")  # `capsprobe report --formats`; png is always written (the page shows it)
DEFAULT_FORMATS = ("png", "tex")
TABLES = "tables"  # the report's tables as shown: <name>.csv beside <name>.tex (booktabs)


def parse_formats(formats: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"png,pdf,svg,tex"`` (or a sequence) as a tuple that always holds png.

    Raises:
        InvalidInputError: a format that is not one of :data:`REPORT_FORMATS`.
    """
    if formats is None:
        return DEFAULT_FORMATS
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    bad = [f for f in names if f not in REPORT_FORMATS]
    if bad:
        raise InvalidInputError(f"unknown report format(s) {', '.join(bad)}: choose from {', '.join(REPORT_FORMATS)}")
    return tuple(dict.fromkeys(["png", *names]))


def render_report(folder: str | Path, section_for: SectionFor, formats: str | Sequence[str] | None = None,
                  lock: bool = True) -> Path:
    """Render ``figures/``, ``tables/``, ``report.md`` and ``report.html`` from the files of a perturb folder, with
    the section ``section_for(data)`` gives (:func:`capsprobe.pipeline.write_report` passes the folder's task's
    section).

    Reads files only (no run, no data set, no device), so a report folder copied elsewhere renders the same.

    Args:
        formats: what to write besides the page (:data:`REPORT_FORMATS`): every figure as PNG (always), PDF and SVG
            (vector, fonts embedded); the shown tables as CSV and LaTeX (booktabs) under ``tables/`` with ``tex``.
        lock: take the folder's lock (False: the caller holds it, e.g. since before it computed the folder).

    Raises:
        ReportError: a file perturb writes is missing or malformed (the message names it).
        InvalidInputError: an unknown format.
        BusyError: another capsprobe command is writing the folder.
    """
    given, folder = Path(folder), _report_folder(folder)
    chosen = parse_formats(formats)
    _check_owned(folder)
    with folder_lock(folder) if lock else nullcontext():
        _write_report(folder, section_for, chosen)
    return given / REPORT_HTML  # the path as the caller named it


def _report_folder(folder: str | Path) -> Path:
    """The folder to render, as an absolute path with symbolic links resolved (``.`` is rendered from beside itself,
    never into itself; a linked report folder is rendered where it is and the link kept); a folder a killed writer
    left under its backup name (between the two renames of a replacement) is put back first."""
    folder = Path(os.path.realpath(folder))
    if not folder.exists() and any(folder.parent.glob(f".{folder.name}.old-*")):
        with folder_lock(folder):  # the lock's entry restores it (no live writer holds it)
            pass
    return folder


def _check_owned(folder: Path) -> None:
    """Refuse a folder that ``capsprobe perturb`` did not write: rendering replaces ``report.md``, ``report.html``,
    ``figures/`` and ``tables/`` whole, so it touches only a folder holding capsprobe's report marker (a folder with
    a copied ``manifest.json`` and the reader's own files beside it is not one)."""
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"report folder {folder} is not a folder")
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    marker = folder / MARKER
    try:
        kind = json.loads(marker.read_text()).get("kind") if marker.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        kind = None
    if kind != "report":
        raise ReportError(f"{folder} was not written by `capsprobe perturb` (no {MARKER} report marker): rendering "
                          f"replaces report.md, figures/ and tables/, so only such a folder is rendered")
    linked = next((p for p in _walk(folder) if p.is_symlink()), None)
    if linked is not None:
        raise ReportError(f"{linked} is a symbolic link: a report folder holds its own files (rendering rebuilds the "
                          "folder and would replace the link by a copy); put the file itself there")


def _walk(folder: Path):
    """Every path under ``folder``, without following symbolic links."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            yield Path(root) / name


def _slug(title: str) -> str:
    word = re.split(r"[^a-z0-9]+", title.lower().split("(")[0].strip())
    return "_".join(w for w in word if w)[:40] or "table"


def latex_table(frame: pd.DataFrame, caption: str = "") -> str:
    """A table as LaTeX with booktabs rules (``\\usepackage{booktabs}``): text columns as wrapped paragraphs."""
    text_cols = [c for c in frame.columns if frame[c].astype(str).str.len().max() > 24]
    width = f"{max(2.0, 12.0 / max(len(frame.columns), 1)):.1f}cm"
    spec = "".join(f"p{{{width}}}" if c in text_cols else "l" for c in frame.columns)
    body = frame.astype(str).to_latex(index=False, escape=True, column_format=spec)
    if caption:
        body = f"% {caption}\n" + body
    return body


def _write_report(folder: Path, section_for: SectionFor, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Path:

    data = read_probe_outputs(folder)
    with figure_formats(formats):
        section = section_for(data)
    if section.verdicts is None:
        section.verdicts = verdict_table(data.tables, data.manifest)
    if section.claims is None:
        section.claims = claims_shown(data.tables)
    report = report_title(folder, data.manifest)
    exp = data.manifest.get("experiment") or {}
    md = [f"# {report}", ""]
    if isinstance(exp, dict) and exp.get("description"):
        md += [str(exp["description"]), ""]
    md += [_provenance(data.manifest), ""]
    if data.manifest.get("runs"):
        md += [f"<details><summary>{html.escape(runs_summary(data.manifest))}</summary>", "",
               _runs_listed(data.manifest), "", "</details>", ""]
    if section.claims is not None and len(section.claims):
        md += ["## Declared claims", "", _markdown_table(section.claims), "", f"*{CLAIMS_NOTE}*", ""]
    compact = compact_verdict_table(data.tables, data.manifest) if section.verdicts is not None else None
    if section.verdicts is not None and len(section.verdicts):
        md += [f"## {VERDICTS_TITLE}", ""]
        if compact is not None:
            md += [f"Each model against {compact[0]}:", "", _markdown_table(compact[1]), "", f"*{COMPACT_NOTE}*", "",
                   f"<details><summary>{_full_summary(section.verdicts)}</summary>", "",
                   _markdown_table(section.verdicts), "", "</details>", ""]
        md += [f"*{VERDICT_NOTE}*", ""]
    if section.key_figure in section.figures:
        caption = section.captions.get(section.key_figure, section.key_figure)
        md += [f"![{caption}]({FIGURES}/{section.key_figure})", "", f"*{caption}*", ""]
    md += ["## Headlines", ""] + [f"- {s}" for s in section.headlines]
    if section.details:
        md += ["", f"<details><summary>Every read-out ({len(section.details)} sentences)</summary>", ""]
        md += [f"- {s}" for s in section.details] + ["", "</details>"]
    shown = [(section.table_title, section.table), *section.tables]
    for table_title, table in shown:
        md += ["", f"## {table_title}", "", f"<details><summary>The table ({len(table)} rows)</summary>", "",
               _markdown_table(table), "", "</details>"]
    md += ["", "## Figures", ""]
    for name in section.figures:
        if name == section.key_figure:
            continue
        caption = section.captions.get(name, name)
        md += [f"![{caption}]({FIGURES}/{name})", "", f"*{caption}*", ""]
    if section.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in section.notes]
    page = _html(report, section, data.manifest, compact)
    tables: dict[str, tuple[str, pd.DataFrame]] = {}
    if section.claims is not None and len(section.claims):
        tables["claims"] = ("Declared claims. " + CLAIMS_NOTE, section.claims)
    if compact is not None:
        tables["verdicts_compact"] = (f"{VERDICTS_TITLE}, each model against {compact[0]}. " + COMPACT_NOTE,
                                      compact[1])
    if section.verdicts is not None and len(section.verdicts):
        tables["verdicts"] = (f"{VERDICTS_TITLE}. " + VERDICT_NOTE, section.verdicts)
    for table_title, table in shown:
        name = _slug(table_title)
        while name in tables:
            name += "_"
        tables[name] = (table_title, table)
    # the whole folder is rebuilt beside itself (the probe's files linked, not copied) and swapped in: a kill or a
    # full disk leaves the old report whole, never new figures beside an old report.html
    rendered = {FIGURES, TABLES, REPORT_MD, REPORT_HTML}
    with atomic_dir(folder) as tmp:
        for path in folder.iterdir():
            if path.name not in rendered and not path.name.endswith(".tmp"):
                _link_tree(path, tmp / path.name)
        (tmp / FIGURES).mkdir()
        for name, png in section.figures.items():
            (tmp / FIGURES / name).write_bytes(png)
            for fmt, vector in getattr(png, "vectors", {}).items():
                (tmp / FIGURES / f"{Path(name).stem}.{fmt}").write_bytes(vector)
        if "tex" in formats and tables:
            (tmp / TABLES).mkdir()
            for name, (table_title, table) in tables.items():
                write_csv(table, tmp / TABLES / f"{name}.csv")
                (tmp / TABLES / f"{name}.tex").write_text(latex_table(table, table_title))
        (tmp / REPORT_MD).write_text("\n".join(md) + "\n")
        (tmp / REPORT_HTML).write_bytes(page.encode())
    return folder / REPORT_HTML


COMPARISON_TABLES = ("comparison", "differences", "excluded", "ablation", "seeds", "differences_all_seeds",
                     "corruption")


def recompare_report(folder: str | Path, section_for: SectionFor, formats: str | Sequence[str] | None = None,
                     after: Callable[[Path], Any] | None = None) -> Path:
    """Recompute a report folder's comparison tables (``comparison``, ``differences``, ``excluded``, ``ablation``,
    ``seeds``, ``differences_all_seeds``) from its own files with the current method (:mod:`capsprobe.metrics.compare`),
    then render the report (``after(folder)`` first, under the folder's lock: the declared claims).

    Reads ``summary.csv``, ``results.parquet``, ``overview.csv`` (decodability per run) and ``manifest.json`` (the
    runs, the ablation's reference); nothing is retrained or re-probed. Without ``results.parquet`` (the committed
    example reports leave it out) the per-image rows keep their paired tests as written and everything else is
    recomputed (:func:`capsprobe.metrics.compare.readjust_tables`). The folder is rebuilt beside itself and swapped
    in, so an interruption leaves the old tables whole.

    Raises:
        ReportError: a file is missing or malformed, or the folder's task has no comparison tables.
        BusyError: another capsprobe command is writing the folder.
    """

    given, folder = Path(folder), _report_folder(folder)
    chosen = parse_formats(formats)
    _check_owned(folder)
    with folder_lock(folder):
        data = read_probe_outputs(folder)
        per_image = (folder / RESULTS).is_file()
        if per_image and str(data.manifest.get("task", "classify")) != "classify":
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
        boot = data.manifest.get("bootstrap")
        n_boot = int(boot) if isinstance(boot, (int, float)) else None
        if per_image:
            tables = comparison_tables(metrics, data.images, runs, identity_labels(), reference=reference,
                                       n_boot=n_boot)
        else:  # a committed example report keeps no per-image rows: its paired tests as written, the rest anew
            tables = readjust_tables(metrics, data.tables, runs, identity_labels(), reference=reference,
                                     n_boot=n_boot)
        tables = {name: frame for name, frame in tables.items() if name in COMPARISON_TABLES}
        with atomic_dir(folder) as tmp:
            for path in folder.iterdir():
                if path.name.endswith(".tmp") or path.name in {f"{t}.csv" for t in COMPARISON_TABLES}:
                    continue
                _link_tree(path, tmp / path.name)
            for name, frame in tables.items():
                if not frame.empty:
                    write_csv(frame, tmp / f"{name}.csv")
        if after is not None:
            after(folder)
        _write_report(folder, section_for, chosen)
    return given / REPORT_HTML  # the path as the caller named it


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
