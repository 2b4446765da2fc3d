"""The only writer of report folders.

``write_probe_outputs`` writes what ``capsprobe perturb`` produces::

    results.parquet   one row per image and condition (capsprobe.probe.IMAGE_COLUMNS)
    summary.csv       tidy metrics with 95% bootstrap intervals (capsprobe.probe.METRIC_COLUMNS)
    manifest.json     runs, transformations, magnitudes, seed, timing, library versions

The folder is built under a temporary name beside its destination and renamed into place, so a failure
leaves no half-written report, and an existing report is only replaced with ``force``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from .probe import ProbeResult

__all__ = [
    "ReportError",
    "ReportExistsError",
    "check_report_target",
    "compact_table",
    "read_probe_outputs",
    "write_probe_outputs",
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
