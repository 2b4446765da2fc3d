"""Every committed verdict before and after the rules of issue 47, as one table (reports/rederivation.csv).

Before: the verdict table each committed report.md showed at commit BEFORE (cells "established" or not, under the
old rules: one Holm family per pair and metric over every condition, duplicates and null-by-definition conditions
included, fitted metrics by Welch over seeds, the largest difference when a question had no key condition).
After: the same cells recomputed by ``capsprobe report --recompare`` (the exploratory table) and, below them, the
declared claims with their experiment's family and the study-wide family (``capsprobe claims``).

Usage (from the repository root, after ``capsprobe report --recompare`` on each report and ``capsprobe claims``)::

    python experiments/rederive_verdicts.py [--before b59cdea]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
TITLES = ("## Verdicts", "## Exploratory verdicts (not declared claims)")


def verdict_table(markdown: str) -> pd.DataFrame:
    """The verdict table of a report.md (old or new heading), as a frame: question x pair."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in TITLES), None)
    if start is None:
        return pd.DataFrame()
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not set(line.replace("|", "").strip()) <= {"-", " "}:
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    if len(rows) < 2:
        return pd.DataFrame()
    return pd.DataFrame(rows[1:], columns=rows[0])


def short(cell: str) -> str:
    """A cell as its verdict: "established: <winner> <difference>", "not established", "not testable", "-"."""
    if not cell or cell == "-":
        return "-"
    head = cell.split(";")
    if "not testable" in cell:
        return "not testable"
    if cell.startswith("no key condition"):
        m = re.search(r"established(?: higher)? for (\S+) in (\d+), for (\S+) in (\d+) of (\d+)", cell)
        return f"no key condition ({m.group(2)} and {m.group(4)} of {m.group(5)} established)" if m else cell
    where = re.search(r" at ([^;]+)$", head[0])
    winner = head[0].split(":")[0]
    number = re.search(r": ([+-][\d.]+)", head[0])
    if len(head) > 1 and head[1].strip().startswith("established"):
        return f"established: {winner} {number.group(1) if number else ''}" + (f" at {where.group(1)}" if where else "")
    if len(head) > 1 and head[1].strip().startswith("not established"):
        return "not established" + (f" at {where.group(1)}" if where else "")
    return head[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="b59cdea", help="the commit whose report.md files are 'before'")
    parser.add_argument("--out", default=str(REPORTS / "rederivation.csv"))
    args = parser.parse_args(argv)
    rows = []
    for folder in sorted(p.parent for p in REPORTS.glob("*/report.md")):
        try:
            old_md = subprocess.run(["git", "show", f"{args.before}:reports/{folder.name}/report.md"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout
        except subprocess.CalledProcessError:
            continue
        old, new = verdict_table(old_md), verdict_table((folder / "report.md").read_text())
        if old.empty:
            continue
        for _, r in old.iterrows():
            for pair in old.columns[1:]:
                after = new.loc[new["question"] == r["question"], pair] if pair in new.columns and len(new) else []
                rows.append({"report": folder.name, "kind": "exploratory", "question": r["question"], "pair": pair,
                             "before": short(r[pair]), "after": short(after.iloc[0]) if len(after) else "-"})
    study = pd.read_csv(REPORTS / "claims.csv", keep_default_na=False) if (REPORTS / "claims.csv").is_file() else None
    if study is not None:
        for r in study.itertuples(index=False):
            rows.append({"report": r.report, "kind": "declared claim", "question": f"{r.claim}: {r.metric} at "
                         f"{r.transform} {r.magnitude} ({r.direction})", "pair": f"{r.a} - {r.b}",
                         "before": "not declared", "after": f"{r.verdict} (experiment family); {r.verdict_study} "
                         "(study family)"})
    table = pd.DataFrame(rows)
    tmp = Path(args.out + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(args.out)
    changed = table[(table["kind"] == "exploratory") & (table["before"] != table["after"])]
    print(f"{len(table)} rows ({(table['kind'] == 'exploratory').sum()} exploratory cells, {len(changed)} changed; "
          f"{(table['kind'] == 'declared claim').sum()} declared claims) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
