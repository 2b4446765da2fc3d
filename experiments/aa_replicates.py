"""The A/A replicate study at the level of verdicts (issue 47, item 7): how often a replicate of the A/A test declares
any primary verdict, when nothing separates "A" from "B" but the luck of the seed.

    .venv/bin/python experiments/aa_replicates.py --replicates 20 [--device cpu] [--out reports/null-replicates]

``experiments/null.toml`` trains one recipe (``baseline_cnn_pool``) under two labels with disjoint seeds and declares
four directional claims A vs B (``[[claims]]``); every "supported" or "contradicted" verdict there is a false positive.
Replicate ``r`` (0, 1, ...) runs the file's cheap size (``aa``) through the real pipeline
(:func:`capsprobe.pipeline.run_experiment`) with seeds ``6r, 6r+1, 6r+2`` labelled A and ``6r+3 .. 6r+5`` labelled B:
the seeds go into a copy of the file in a temporary folder (the committed file is never edited), the runs into
``runs/aa-replicates/rNNN`` (reused when finished, resumed when interrupted), the report into the temporary folder;
only the replicate's claims are kept.

After each replicate its claims (``replicate, claim, difference, p_value, p_holm, verdict``) are appended to
``<out>/claims.csv`` and its seeds, clean accuracies and wall time to ``<out>/runs.csv``, each written to a temporary
name and renamed, so a kill never leaves half a file; a rerun skips the replicates already there. Then
:func:`aggregate` gives ``<out>/summary.csv`` (the family-wise rate: the share of replicates with any claim
"supported" or "contradicted", at most 5% for a calibrated family; each claim's share of raw p < 0.05, at its nominal
5% for a calibrated test; each with its Clopper-Pearson 95% interval) and ``<out>/README.md`` is written from the two
files, with ``capsprobe bench --model capsnet_small`` measured on the machine at the start of each invocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "null.toml"
SIZE = "aa"
LABELS = ("A", "B")
SEEDS_PER_LABEL = 3
OUT = ROOT / "reports" / "null-replicates"
RUNS = ROOT / "runs" / "aa-replicates"
LEVEL = 0.95
ALPHA = 0.05
FALSE_VERDICTS = ("supported", "contradicted")  # under A/A, every one of these is a false positive
CLAIM_COLUMNS = ["replicate", "claim", "difference", "p_value", "p_holm", "verdict"]
RUN_COLUMNS = ["replicate", "seeds_a", "seeds_b", "accuracy_a", "accuracy_b", "seconds", "load_1min",
               "bench_train_img_s", "bench_eval_img_s", "finished_utc"]
SUMMARY_COLUMNS = ["measure", "claim", "replicates", "count", "rate", "ci_low", "ci_high"]

_log = logging.getLogger("aa_replicates")


# -- the replicate's experiment file ------------------------------------------------------------------------------------


def replicate_seeds(replicate: int) -> dict[str, list[int]]:
    """Replicate ``r``'s seeds per label: ``6r .. 6r+2`` for A, ``6r+3 .. 6r+5`` for B (disjoint across replicates
    and labels)."""
    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate}")
    first = replicate * len(LABELS) * SEEDS_PER_LABEL
    return {label: list(range(first + i * SEEDS_PER_LABEL, first + (i + 1) * SEEDS_PER_LABEL))
            for i, label in enumerate(LABELS)}


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _value(value: Any) -> str:
    """One TOML value (inline tables and arrays for nested ones)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def toml_dumps(data: dict[str, Any]) -> str:
    """An experiment file's dict as TOML: scalars at the top, one ``[table]`` per table (its tables inline), one
    ``[[name]]`` per entry of a list of tables; ``sizes`` as ``[sizes.NAME]``. ``tomllib.loads`` gives ``data`` back."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not (v and all(isinstance(x, dict) for x in v)))]
    for key, value in data.items():
        if isinstance(value, dict):
            tables = value.items() if key == "sizes" else [(None, value)]
            for sub, table in tables:
                lines += ["", f"[{_key(key)}]" if sub is None else f"[{_key(key)}.{_key(sub)}]"]
                lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for entry in value:
                lines += ["", f"[[{_key(key)}]]"] + [f"{_key(k)} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def replicate_file(text: str, replicate: int, size: str = SIZE) -> str:
    """The experiment file ``text`` reduced to ``size`` with replicate ``r``'s seeds (:func:`replicate_seeds`) on
    its models A and B; everything else (data, probe, claims) as the file says.

    Raises:
        ValueError: the size is missing, or its models are not exactly the labels A and B.
    """
    data = tomllib.loads(text)
    sizes = data.get("sizes", {})
    if size not in sizes:
        raise ValueError(f"the experiment file has no size {size!r}")
    spec = dict(sizes[size])
    labels = [m.get("label") for m in spec.get("models", [])]
    if sorted(labels) != sorted(LABELS):
        raise ValueError(f"size {size!r} must hold one model per label {LABELS}, has {labels}")
    seeds = replicate_seeds(replicate)
    spec["models"] = [{**m, "seeds": seeds[m["label"]]} for m in spec["models"]]
    spec.pop("seeds", None)
    out = {**data, "sizes": {size: spec}}
    written = toml_dumps(out)
    if tomllib.loads(written) != out:  # pragma: no cover - the writer's own check
        raise ValueError("the replicate's TOML does not read back as written")
    return written


# -- the aggregate ------------------------------------------------------------------------------------------------------


def clopper_pearson(count: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval for ``count`` successes of ``n`` (Clopper & Pearson 1934): beta quantiles,
    ``[B(a/2; k, n-k+1), B(1-a/2; k+1, n-k)]``, 0 and 1 at the ends."""
    if n <= 0 or not 0 <= count <= n:
        return float("nan"), float("nan")
    a = 1 - level
    low = 0.0 if count == 0 else float(stats.beta.ppf(a / 2, count, n - count + 1))
    high = 1.0 if count == n else float(stats.beta.ppf(1 - a / 2, count + 1, n - count))
    return low, high


def _row(measure: str, claim: str, count: int, n: int) -> dict[str, Any]:
    low, high = clopper_pearson(count, n)
    return {"measure": measure, "claim": claim, "replicates": n, "count": count,
            "rate": count / n if n else float("nan"), "ci_low": low, "ci_high": high}


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """The A/A study's rates from its per-claim rows (``replicate, claim, p_value, verdict``, one row per replicate
    and claim).

    - ``family-wise``: the share of replicates with any claim "supported" or "contradicted" (``claim`` = "any");
      a calibrated family keeps it at most 5% (Holm 1979);
    - ``raw p < 0.05``, per claim: the share of the replicates where the claim was tested (a finite p) whose raw p is
      below 0.05; a calibrated test keeps it near 5%;
    - ``false verdict``, per claim: the share of replicates where that claim was "supported" or "contradicted".

    Each with its Clopper-Pearson 95% interval (:func:`clopper_pearson`) and ``replicates``, the denominator.
    """
    missing = {"replicate", "claim", "p_value", "verdict"} - set(rows.columns)
    if missing:
        raise ValueError(f"the rows lack column(s) {sorted(missing)}")
    false = rows["verdict"].isin(FALSE_VERDICTS)
    by_replicate = false.groupby(rows["replicate"]).any()
    out = [_row("family-wise", "any", int(by_replicate.sum()), int(by_replicate.size))]
    p = pd.to_numeric(rows["p_value"], errors="coerce")
    for claim in dict.fromkeys(rows["claim"]):
        mine = rows["claim"] == claim
        tested = mine & np.isfinite(p)
        out.append(_row("raw p < 0.05", str(claim), int((tested & (p < ALPHA)).sum()), int(tested.sum())))
    for claim in dict.fromkeys(rows["claim"]):
        mine = rows["claim"] == claim
        out.append(_row("false verdict", str(claim), int((mine & false).sum()),
                        int(rows.loc[mine, "replicate"].nunique())))
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


# -- files --------------------------------------------------------------------------------------------------------------


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` to ``path`` through a temporary name in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(columns))


def append_rows(path: Path, new: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``path``'s rows with ``new`` after them (a replicate already there is replaced), written atomically."""
    old = read_csv(path, columns)
    old = old[~old["replicate"].isin(new["replicate"].unique())]
    frames = [f for f in (old, new[list(columns)]) if not f.empty]
    both = pd.concat(frames, ignore_index=True) if frames else new[list(columns)]
    both = both.sort_values("replicate", kind="stable").reset_index(drop=True)
    write_csv_atomic(both, path)
    return both


def done_replicates(out: Path) -> set[int]:
    """Replicates with rows in both ``claims.csv`` and ``runs.csv`` (finished: a rerun skips them)."""
    claims, runs = read_csv(out / "claims.csv", CLAIM_COLUMNS), read_csv(out / "runs.csv", RUN_COLUMNS)
    return set(claims["replicate"].astype(int)) & set(runs["replicate"].astype(int))


# -- one replicate ------------------------------------------------------------------------------------------------------


def bench_figure(device: str) -> tuple[float, float]:
    """``capsprobe bench --model capsnet_small`` on this machine now (its defaults: batch 128, 5 timed steps):
    training and inference images/s."""
    from capsprobe.bench import run_benchmarks

    (result,) = run_benchmarks(("capsnet_small",), device=device)
    return float(result.train_images_per_s), float(result.eval_images_per_s)


def run_replicate(replicate: int, experiment: Path, runs: Path, device: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train and probe replicate ``r`` (:func:`replicate_file`), return its claim rows and its run row."""
    from capsprobe.pipeline import run_experiment

    seeds = replicate_seeds(replicate)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"aa-replicate-{replicate:03d}-") as tmp:
        path = Path(tmp) / experiment.name
        path.write_text(replicate_file(experiment.read_text(encoding="utf-8"), replicate), encoding="utf-8")
        report = Path(tmp) / "report"
        run_experiment(path, SIZE, device=device, out=report, runs_dir=runs / f"r{replicate:03d}", progress=False)
        claims = pd.read_csv(report / "claims.csv")
        manifest = json.loads((report / "manifest.json").read_text(encoding="utf-8"))
    seconds = time.perf_counter() - start
    claims.insert(0, "replicate", replicate)
    accuracy = {label: [r["test_accuracy"] for r in manifest["runs"] if r["model"] == label] for label in LABELS}
    info = {"replicate": replicate, "seeds_a": " ".join(map(str, seeds["A"])), "seeds_b": " ".join(map(str, seeds["B"])),
            "accuracy_a": float(np.mean(accuracy["A"])), "accuracy_b": float(np.mean(accuracy["B"])),
            "seconds": round(seconds, 1), "load_1min": round(load, 2),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return claims[CLAIM_COLUMNS], info


# -- the README ---------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def readme(summary: pd.DataFrame, runs: pd.DataFrame, recipe: str) -> str:
    """The folder's README, from ``summary.csv`` and ``runs.csv`` (nothing else is read)."""
    fw = summary[summary["measure"] == "family-wise"].iloc[0]
    n = int(fw["replicates"])
    lines = [
        "# The A/A replicate study (issue 47, item 7)",
        "",
        "Generated by `experiments/aa_replicates.py` from `summary.csv` and `runs.csv`; the per-claim rows of every",
        "replicate are in `claims.csv`. Do not edit by hand.",
        "",
        f"**Recipe**: {recipe}",
        "",
        "**Family-wise rate** (replicates with any primary verdict \"supported\" or \"contradicted\", each one a false",
        f"positive under A/A): **{int(fw['count'])} of {n} = {_pct(fw['rate'])}**, Clopper-Pearson 95% interval",
        f"[{_pct(fw['ci_low'])}, {_pct(fw['ci_high'])}] (target: at most 5%).",
        "",
        "| measure | claim | replicates | count | rate | 95% interval (Clopper-Pearson) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in summary.to_dict("records"):
        lines.append(f"| {r['measure']} | {r['claim']} | {int(r['replicates'])} | {int(r['count'])} | "
                     f"{_pct(r['rate'])} | [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] |")
    total = float(runs["seconds"].sum())
    seconds, load = runs["seconds"].astype(float), runs["load_1min"].astype(float)
    lines += [
        "",
        f"With {n} replicates, even none with a false verdict gives an interval up to "
        f"{_pct(clopper_pearson(0, n)[1])}; an upper end below 5% needs at least {replicates_for(ALPHA)} replicates",
        "without one. So the study bounds the family-wise rate; it cannot show that it is at most 5%.",
        "",
        f"**Cost**: {len(runs)} replicates, {total / 60:.1f} minutes of wall time in all; per replicate (6 runs "
        f"trained, probed and compared, the report rendered) median {seconds.median():.0f} s, range "
        f"{seconds.min():.0f}-{seconds.max():.0f} s, with one torch/BLAS thread, on 2 CPU cores shared with other "
        f"jobs (1-minute load {load.min():.1f}-{load.max():.1f} at the replicates' starts).",
        f"Mean clean test accuracy per label and replicate: A {_pct(float(runs['accuracy_a'].min()))}-"
        f"{_pct(float(runs['accuracy_a'].max()))}, B {_pct(float(runs['accuracy_b'].min()))}-"
        f"{_pct(float(runs['accuracy_b'].max()))} (chance 10%).",
    ]
    bench = runs.dropna(subset=["bench_train_img_s"]).drop_duplicates(["bench_train_img_s", "bench_eval_img_s"])
    if not bench.empty:
        train, infer = bench["bench_train_img_s"].astype(float), bench["bench_eval_img_s"].astype(float)
        lines.append(f"`capsprobe bench --model capsnet_small` (batch 128, default threads), measured at the start of "
                     f"each of the {len(bench)} invocation(s): {train.median():,.0f} train / {infer.median():,.0f} "
                     f"eval images/s (median; train {train.min():,.0f}-{train.max():,.0f}, eval "
                     f"{infer.min():,.0f}-{infer.max():,.0f}: the shared cores' load moves it).")
    lines += ["", "Rerun (resumes; finished replicates are skipped): "
              f"`.venv/bin/python experiments/aa_replicates.py --replicates {n}`", ""]
    return "\n".join(lines)


def replicates_for(rate: float, level: float = LEVEL) -> int:
    """The fewest replicates whose Clopper-Pearson interval for 0 events ends below ``rate``:
    ``1 - ((1 - level) / 2) ** (1 / n) < rate``."""
    return math.floor(math.log((1 - level) / 2) / math.log(1 - rate)) + 1


def recipe_of(experiment: Path) -> str:
    """One sentence on the size's recipe, read from the file (:func:`capsprobe.experiment.load_experiment`)."""
    from capsprobe.experiment import load_experiment

    exp = load_experiment(experiment, SIZE)
    m = exp.models[0]
    claims = "; ".join(f"{c.name}: {c.metric} at {c.condition}, {c.direction}" for c in exp.claims)
    return (f"`{experiment.relative_to(ROOT) if experiment.is_relative_to(ROOT) else experiment}` size `{SIZE}`: "
            f"`{m.model}` (channels {m.options.get('channels')}), {m.epochs} epoch(s), batch {exp.train.get('batch_size', 128)}, "
            f"{exp.limit} training images on `{exp.dataset}`, probed on {exp.probe_limit} test images "
            f"({', '.join(exp.magnitudes)}), bootstrap {exp.bootstrap}; labels A and B with {SEEDS_PER_LABEL} seeds "
            f"each, replicate r using seeds 6r..6r+2 (A) and 6r+3..6r+5 (B). Claims (Holm over the 4): {claims}.")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=20, help="replicates 0..R-1 (finished ones are skipped)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--runs", type=Path, default=RUNS)
    ap.add_argument("--experiment", type=Path, default=EXPERIMENT)
    ap.add_argument("--no-bench", action="store_true", help="skip the capsnet_small bench measurement")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads for the replicates (1: on 2 shared cores, more threads than free "
                         "cores make the probe's small SVDs and ridge fits several times slower)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out: Path = args.out
    todo = [r for r in range(args.replicates) if r not in done_replicates(out)]
    bench = (float("nan"), float("nan"))
    if todo and not args.no_bench:
        bench = bench_figure(args.device)
        _log.info("capsnet_small bench: %.0f train / %.0f eval img/s", *bench)
    if todo:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)  # after the bench: it measures in a child process with the defaults
        with threadpool_limits(limits=args.threads):
            for r in todo:
                _log.info("replicate %d (seeds %s)", r, replicate_seeds(r))
                claims, info = run_replicate(r, args.experiment, args.runs, args.device)
                info["bench_train_img_s"], info["bench_eval_img_s"] = bench
                append_rows(out / "claims.csv", claims, CLAIM_COLUMNS)  # claims first: done once runs.csv has it
                append_rows(out / "runs.csv", pd.DataFrame([info]), RUN_COLUMNS)
                _log.info("replicate %d: %.0f s, verdicts %s", r, info["seconds"],
                          {str(k): int(v) for k, v in claims["verdict"].value_counts().items()})
    rows = read_csv(out / "claims.csv", CLAIM_COLUMNS)
    runs = read_csv(out / "runs.csv", RUN_COLUMNS)
    done = sorted(done_replicates(out))
    rows, runs = rows[rows["replicate"].isin(done)], runs[runs["replicate"].isin(done)]
    if rows.empty:
        _log.info("no finished replicate yet")
        return 0
    summary = aggregate(rows)
    write_csv_atomic(summary, out / "summary.csv")
    text = readme(summary, runs, recipe_of(args.experiment))
    tmp = out / f".README.md.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "README.md")
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
