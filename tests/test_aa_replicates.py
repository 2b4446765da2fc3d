"""experiments/aa_replicates.py: the A/A replicate study's aggregate, seeds, replicate files and resumable rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from capsprobe.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ["aa-rotation-accuracy", "aa-rotation-decodable", "aa-rotation-linear", "aa-translate-decision"]


def _module():
    spec = importlib.util.spec_from_file_location("aa_replicates", ROOT / "experiments" / "aa_replicates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["aa_replicates"] = module
    spec.loader.exec_module(module)
    return module


aa = _module()


def _rows(n: int = 20, p: float = 0.5, verdict: str = "inconclusive") -> pd.DataFrame:
    return pd.DataFrame([{"replicate": r, "claim": c, "difference": 0.0, "p_value": p, "p_holm": 1.0,
                          "verdict": verdict} for r in range(n) for c in CLAIMS])


def _at(summary: pd.DataFrame, measure: str, claim: str) -> pd.Series:
    hit = summary[(summary["measure"] == measure) & (summary["claim"] == claim)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_one_supported_replicate_of_20_is_5_percent_with_the_exact_interval():
    rows = _rows()
    rows.loc[(rows["replicate"] == 7) & (rows["claim"] == CLAIMS[1]), "verdict"] = "supported"
    fw = _at(aa.aggregate(rows), "family-wise", "any")
    exact = stats.binomtest(1, 20).proportion_ci(0.95, method="exact")
    assert (fw["count"], fw["replicates"], fw["rate"]) == (1, 20, 0.05)
    assert fw["ci_low"] == pytest.approx(exact.low, abs=1e-12)
    assert fw["ci_high"] == pytest.approx(exact.high, abs=1e-12)


def test_family_wise_counts_replicates_not_claims_and_contradicted_counts():
    rows = _rows()
    # replicate 3: two false verdicts (one replicate); replicate 5: "contradicted" (a false positive too)
    rows.loc[(rows["replicate"] == 3) & rows["claim"].isin(CLAIMS[:2]), "verdict"] = "supported"
    rows.loc[(rows["replicate"] == 5) & (rows["claim"] == CLAIMS[3]), "verdict"] = "contradicted"
    rows.loc[(rows["replicate"] == 6) & (rows["claim"] == CLAIMS[0]), "verdict"] = "not testable"
    summary = aa.aggregate(rows)
    fw = _at(summary, "family-wise", "any")
    assert (fw["count"], fw["replicates"]) == (2, 20)
    assert _at(summary, "false verdict", CLAIMS[0])["count"] == 1
    assert _at(summary, "false verdict", CLAIMS[3])["count"] == 1
    assert _at(summary, "false verdict", CLAIMS[2])["count"] == 0


def test_raw_p_rate_is_per_claim_strict_and_over_tested_replicates():
    rows = _rows()
    claim = rows["claim"] == CLAIMS[2]
    rows.loc[claim & rows["replicate"].isin([0, 1]), "p_value"] = 0.01
    rows.loc[claim & (rows["replicate"] == 2), "p_value"] = 0.05  # not below 0.05
    rows.loc[claim & (rows["replicate"] == 3), "p_value"] = np.nan  # not testable: leaves the denominator
    rows.loc[(rows["claim"] == CLAIMS[0]) & (rows["replicate"] == 0), "p_value"] = 0.049
    summary = aa.aggregate(rows)
    mine = _at(summary, "raw p < 0.05", CLAIMS[2])
    assert (mine["count"], mine["replicates"]) == (2, 19)
    assert mine["rate"] == pytest.approx(2 / 19)
    exact = stats.binomtest(2, 19).proportion_ci(0.95, method="exact")
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx((exact.low, exact.high), abs=1e-12)
    assert _at(summary, "raw p < 0.05", CLAIMS[0])["count"] == 1
    assert _at(summary, "raw p < 0.05", CLAIMS[1])["count"] == 0
    # raw p does not make a verdict: the family-wise rate is still 0, with the interval's ends at 0 and 1 - (a/2)^(1/n)
    fw = _at(summary, "family-wise", "any")
    assert (fw["count"], fw["ci_low"]) == (0, 0.0)
    assert fw["ci_high"] == pytest.approx(1 - 0.025 ** (1 / 20))


def test_seeds_are_disjoint_across_replicates_and_labels():
    assert aa.replicate_seeds(0) == {"A": [0, 1, 2], "B": [3, 4, 5]}
    assert aa.replicate_seeds(3) == {"A": [18, 19, 20], "B": [21, 22, 23]}
    seen = [s for r in range(25) for label in ("A", "B") for s in aa.replicate_seeds(r)[label]]
    assert len(seen) == len(set(seen)) == 150


def test_replicate_file_sets_the_seeds_and_keeps_the_claims_and_plan(tmp_path):
    source = ROOT / "experiments" / "null.toml"
    path = tmp_path / "null.toml"
    path.write_text(aa.replicate_file(source.read_text(encoding="utf-8"), 4), encoding="utf-8")
    exp, original = load_experiment(path, aa.SIZE), load_experiment(source, aa.SIZE)
    assert [(m.variant, s) for m, s in exp.jobs()] == [("A", 24), ("A", 25), ("A", 26), ("B", 27), ("B", 28), ("B", 29)]
    assert exp.claims == original.claims and len(exp.claims) == 4
    assert (exp.models[0].options, exp.train, exp.magnitudes, exp.limit, exp.probe_limit, exp.bootstrap) == \
        (original.models[0].options, original.train, original.magnitudes, original.limit, original.probe_limit,
         original.bootstrap)


def test_append_rows_replaces_a_replicate_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "claims.csv"
    aa.append_rows(path, _rows(2), aa.CLAIM_COLUMNS)
    again = _rows(1, verdict="supported")
    both = aa.append_rows(path, again, aa.CLAIM_COLUMNS)
    back = pd.read_csv(path)
    assert len(back) == len(both) == 8
    assert list(back.loc[back["replicate"] == 0, "verdict"]) == ["supported"] * 4
    assert list(back.loc[back["replicate"] == 1, "verdict"]) == ["inconclusive"] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["claims.csv"]


def test_replicates_for_is_the_fewest_whose_empty_interval_ends_below_the_rate():
    n = aa.replicates_for(0.05)
    assert n == 72
    assert aa.clopper_pearson(0, n)[1] < 0.05 < aa.clopper_pearson(0, n - 1)[1]


def test_readme_states_the_family_wise_count_and_interval_from_the_summary():
    rows = _rows()
    rows.loc[(rows["replicate"] == 2) & (rows["claim"] == CLAIMS[0]), "verdict"] = "contradicted"
    runs = pd.DataFrame([{"replicate": r, "seeds_a": "0 1 2", "seeds_b": "3 4 5", "accuracy_a": 0.8, "accuracy_b": 0.7,
                          "seconds": 30.0, "load_1min": 2.0, "bench_train_img_s": 100.0, "bench_eval_img_s": 300.0,
                          "finished_utc": ""} for r in range(20)])
    text = aa.readme(aa.aggregate(rows), runs, "a recipe")
    assert "**1 of 20 = 5.0%**" in text and "[0.1%, 24.9%]" in text
    assert "10.0 minutes of wall time" in text and "100 train / 300 eval" in text


def test_a_replicate_is_done_once_both_files_hold_it(tmp_path):
    aa.append_rows(tmp_path / "claims.csv", _rows(2), aa.CLAIM_COLUMNS)
    assert aa.done_replicates(tmp_path) == set()
    run = {c: 0 for c in aa.RUN_COLUMNS}
    aa.append_rows(tmp_path / "runs.csv", pd.DataFrame([run]), aa.RUN_COLUMNS)
    assert aa.done_replicates(tmp_path) == {0}  # replicate 1's claims without its run row: run again
