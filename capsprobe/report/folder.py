"""A report folder on disk: writing a probe's outputs to it atomically, reading them back, and the compact table."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CapsprobeError, option
from ..metrics import METRICS
from ..probe.schema import (
    ARRAYS,
    IMAGE_COLUMNS,
    MANIFEST,
    METRIC_COLUMNS,
    RESULTS,
    SUMMARY,
)
from ..runtime import atomic_dir, folder_lock, is_capsprobe_folder, write_marker

__all__ = [
    "ReportData",
    "ReportError",
    "ReportExistsError",
    "check_report_target",
    "compact_table",
    "csv_float",
    "read_probe_outputs",
    "write_csv",
    "write_probe_outputs",
]

# significant digits of the floats in a report's derived CSV tables: 6 are far beyond the precision of any interval
# a report gives (a metric over at most tens of thousands of images; a relative error under 5e-6), and the full 17
# would double every committed table. summary.csv keeps every digit: `report --recompare` starts from it (and the
# per-image table) and must reproduce the tables exactly.
CSV_DIGITS = 6


def csv_float(x: float) -> str:
    """``x`` to :data:`CSV_DIGITS` significant digits, or to the fewest more whose last digit is not an inexact 5: a
    value rounded onto a tie would round the other way on a page that shows fewer digits (0.48550004 is written
    0.48550004, not 0.4855, which a page showing three decimals would read as 0.485 instead of 0.486)."""
    text = "%.*g" % (CSV_DIGITS, x)
    for digits in range(CSV_DIGITS + 1, 18):
        if not math.isfinite(x) or text.split("e")[0][-1] != "5" or float(text) == x:
            break
        text = "%.*g" % (digits, x)
    return text


def write_csv(frame: pd.DataFrame, path: Path, exact: bool = False) -> None:
    """One of a report's tables as CSV, floats by :func:`csv_float` (every digit with ``exact``); a column of floats
    and missing values held as objects is written as floats too."""
    if exact:
        frame.to_csv(path, index=False)
    else:
        frame.infer_objects().to_csv(path, index=False, float_format=csv_float)


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


def write_probe_outputs(result, out: str | Path, force: bool = False, lock: bool = True) -> Path:
    """Write everything a probe computed into the report folder ``out`` as one atomic step.

    With ``force`` an existing folder is replaced whole (figures made from an older probe would no longer
    match its numbers). ``lock=False``: the caller holds the folder's lock already (it took it before computing).
    """

    out = Path(out)
    with (folder_lock(out) if lock else nullcontext()), atomic_dir(check_report_target(out, force)) as tmp:
        write_marker(tmp, "report")
        images = result.images if len(result.images.columns) else pd.DataFrame(columns=IMAGE_COLUMNS)
        images.to_parquet(tmp / RESULTS, index=False, compression="zstd")
        write_csv(result.metrics, tmp / SUMMARY, exact=True)  # what a recomputation reads
        for name, table in result.tables.items():
            write_csv(table, tmp / f"{name}.csv")
        if result.arrays:
            (tmp / ARRAYS).mkdir()
            for name, arrays in result.arrays.items():
                stored = {k: _stored(k, v) for k, v in arrays.items()}
                np.savez_compressed(tmp / ARRAYS / f"{name}.npz", **stored)  # type: ignore[arg-type]
        manifest = {"task": "classify", **result.manifest, "timing": result.timing}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return out


def _stored(key: str, value: np.ndarray) -> np.ndarray:
    """An image grid's pixels in 8 bits (the depth of the PNG they are drawn into); labels and sizes as they are."""
    if key == "images" and value.dtype.kind == "f":
        return np.round(np.clip(value, 0.0, 1.0) * 255).astype(np.uint8)
    return value


def _loaded(key: str, value: np.ndarray) -> np.ndarray:
    if key == "images" and value.dtype == np.uint8:
        return value.astype(np.float32) / 255
    return value


@dataclass
class ReportData:
    """A report folder's files, read: what every section renders from."""

    folder: Path
    metrics: pd.DataFrame
    images: pd.DataFrame
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# the numeric columns of the tables perturb writes (a hand-edited word in one is refused, not met by a traceback
# deep in a figure), and those of them that are never NaN or infinite (a metric's value, a difference)
_NUMERIC: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "summary": (("seed", "magnitude_value", "value", "ci_low", "ci_high", "n_images", "penalty"), ("value",)),
    "comparison": (("magnitude_value", "value", "ci_low", "ci_high", "df", "seeds"), ("value",)),
    "differences": (("magnitude_value", "difference", "ci_low", "ci_high", "se", "se_seeds", "df", "p_value",
                     "df_adjusted", "p_holm", "ci_low_adjusted", "ci_high_adjusted", "family_size", "seeds_a",
                     "seeds_b"), ("difference",)),
}


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path} is malformed: {str(exc).splitlines()[0]}") from None
    numeric, finite = _NUMERIC.get(path.stem, ((), ()))
    for column in numeric:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ReportError(f"{path} is malformed: column {column} holds {str(frame[column].iloc[row])[:40]!r} "
                              f"(row {row + 2}), not a number")
        frame[column] = values
        if column in finite and not np.isfinite(values.to_numpy(dtype=float)).all():
            row = int((~np.isfinite(values.to_numpy(dtype=float))).nonzero()[0][0])
            raise ReportError(f"{path} is malformed: column {column} is not finite in row {row + 2}")
    return frame


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a (hand-edited) manifest's structure, or None: every section reads these keys."""
    runs = manifest.get("runs", [])
    if not isinstance(runs, list):
        return "runs must be a list"
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            return f"run {i + 1} must be an object, got {type(run).__name__}"
        for key in ("name", "model"):
            if not isinstance(run.get(key), str):
                return f"run {i + 1} has no {key}"
        if not isinstance(run.get("seed", 0), int) or isinstance(run.get("seed"), bool):
            return f"run {i + 1}'s seed must be an integer"
    for key in ("versions", "experiment", "timing", "transforms", "lie"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            return f"{key} must be an object, got {type(manifest[key]).__name__}"
    for key in ("task", "dataset", "split", "reference"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            return f"{key} must be a string, got {type(manifest[key]).__name__}"
    for key in ("images", "seed", "bootstrap", "attack_steps"):
        value = manifest.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return f"{key} must be a whole number, got {value!r}"
    return None


def _grid_problem(grid: dict[str, np.ndarray]) -> str | None:
    """What keeps a stored image grid from being drawn, or None: images ``(R, K, C, H, W)`` (C 1 or 3), ``R`` row
    labels, ``K`` column labels or none."""
    images, rows = grid.get("images"), grid.get("row_labels")
    if images is None or rows is None:
        return "no images or row_labels"
    if images.ndim != 5 or images.shape[2] not in (1, 3) or images.dtype.kind not in "fiu":
        return f"images must be numbers (R, K, C, H, W) with C 1 or 3, got {images.dtype} {images.shape}"
    if rows.shape != (images.shape[0],):
        return f"{rows.shape} row labels for {images.shape[0]} rows"
    cols = grid.get("col_labels")
    if cols is not None and cols.size and cols.shape != (images.shape[1],):
        return f"{cols.shape} column labels for {images.shape[1]} columns"
    cell = grid.get("cell")
    if cell is not None and (cell.size != 1 or cell.dtype.kind not in "fiu" or not 0 < float(cell) < 100):
        return "cell must be one positive number"
    return None


def read_probe_outputs(folder: str | Path) -> ReportData:
    """Read a report folder (metrics, per-image rows, manifest, tables, arrays); errors name the file at fault.

    The per-image table (``results.parquet``) is optional: rendering never reads it, only recomputing the comparisons
    does (:func:`capsprobe.report.recompare_report`), and the committed example reports leave it out (bulk a reader
    does not need). Without it, ``images`` is an empty frame with the columns of ``IMAGE_COLUMNS``.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist")
    for name in (SUMMARY, MANIFEST):
        if not (folder / name).is_file():
            raise ReportError(f"{folder / name} is missing: is {folder} a folder written by `capsprobe perturb`?")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{folder / MANIFEST} is malformed: {exc}") from None
    if not isinstance(manifest, dict):
        raise ReportError(f"{folder / MANIFEST} is malformed: expected a JSON object")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ReportError(f"{folder / MANIFEST} is malformed: {problem}")

    def check(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ReportError(f"{path} is malformed: missing columns {', '.join(missing)}")

    metrics = _read_csv(folder / SUMMARY, dtype={"magnitude": str})
    check(folder / SUMMARY, metrics, METRIC_COLUMNS)
    if (folder / RESULTS).is_file():
        try:
            images = pd.read_parquet(folder / RESULTS)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise ReportError(f"{folder / RESULTS} is malformed: {str(exc).splitlines()[0]}") from None
        check(folder / RESULTS, images, IMAGE_COLUMNS)
    else:
        images = pd.DataFrame(columns=IMAGE_COLUMNS)
    tables = {p.stem: _read_csv(p, dtype={"magnitude": str, "matched_magnitude": str}) for p in sorted(folder.glob("*.csv"))
              if p.name != SUMMARY}
    arrays = {}
    for path in sorted((folder / ARRAYS).glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                if not hasattr(data, "files"):  # a bare .npy under the .npz name
                    raise ValueError("not an .npz archive")
                arrays[path.stem] = {k: _loaded(k, data[k]) for k in data.files}
        except Exception as exc:  # noqa: BLE001 - zip and format errors
            raise ReportError(f"{path} is malformed: {str(exc).splitlines()[0]}") from None
        problem = _grid_problem(arrays[path.stem])
        if problem is not None:
            raise ReportError(f"{path} is malformed: {problem}")
    return ReportData(folder=folder, metrics=metrics, images=images, manifest=manifest, tables=tables, arrays=arrays)


def compact_table(metrics: pd.DataFrame, columns: tuple[str, ...] = ("accuracy", "consistency",
                                                                    "equivariance_error_pca16")) -> str:
    """A terminal-width text table: one line per (transformation, magnitude), a column per run and metric."""

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
