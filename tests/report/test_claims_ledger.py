"""The claims ledger and the README's answer: generated from the committed CSVs and manifests, never hand-copied."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from capsprobe.metrics.claims import ALPHA, STUDY_COLUMNS
from capsprobe.report import ledger as L
from capsprobe.report.verdicts import study_markdown

ROOT = Path(__file__).resolve().parents[2]


def _study() -> pd.DataFrame:
    return pd.read_csv(ROOT / "reports" / "claims.csv", keep_default_na=False, na_values=[""])


def test_the_readme_shows_the_ledgers_summary_of_the_committed_reports():
    text = (ROOT / "README.md").read_text()
    assert text.count(L.BEGIN) == 1 and text.count(L.END) == 1
    block = text.split(L.BEGIN)[1].split(L.END)[0].strip()
    table = L.ledger_table(ROOT / "experiments", ROOT / "reports")
    assert block == L.readme_summary(table).strip()
    assert len(text.encode()) <= 10 * 1024  # a newcomer reads it in two minutes


def test_the_committed_ledger_is_what_the_reports_give():
    table = L.ledger_table(ROOT / "experiments", ROOT / "reports")
    assert (ROOT / "reports" / "ledger.md").read_text() == L.ledger_markdown(table)
    committed = pd.read_csv(ROOT / "reports" / "ledger.csv", keep_default_na=False, na_values=[""])
    assert list(committed["claim"]) == list(table["claim"]) and list(committed["verdict"]) == list(table["verdict"])
    # every tested claim's estimate and interval are the study table's, at its Holm step in the study family
    study = _study().set_index(["report", "claim"])
    tested = table[table["report"].astype(bool) & table["estimate"].notna()]
    assert len(tested) == len(study)
    for r in tested.itertuples():
        s = study.loc[(r.report, r.claim)]
        assert (r.estimate, r.ci_low, r.ci_high, r.verdict) == (s["difference"], s["ci_low_study"],
                                                                s["ci_high_study"], s["verdict_study"])


def test_reports_claims_md_is_the_study_table():
    assert (ROOT / "reports" / "claims.md").read_text().strip() == study_markdown(_study()).strip()


def test_every_reports_claims_csv_is_in_the_study_family():
    study = _study()
    for report, rows in study.groupby("report"):
        own = pd.read_csv(ROOT / "reports" / str(report) / "claims.csv")
        assert list(own["claim"]) == list(rows["claim"])
        assert (own["verdict"].to_numpy() == rows["verdict"].to_numpy()).all()
    # the study family is at least as strict as each experiment's
    p = study["p_study"].dropna()
    assert (p >= study.loc[p.index, "p_holm"] - 1e-12).all()
    assert set(STUDY_COLUMNS) <= set(study.columns)


# --- synthetic folders: what is read from where ------------------------------------------------------------------

_TOML = """name = "{name}"
[sizes.tiny]
[sizes.quick]
[sizes.quick-elevation]
[sizes.paper]
[[claims]]
name = "{claim}"
statement = "capsules are better"
a = "caps"
b = "cnn"
metric = "accuracy"
condition = "rotate=45"
direction = "greater"
"""


def _folders(tmp_path: Path, claim: str = "novel-view-dynamic", difference: float = 0.04) -> tuple[Path, Path]:
    exp, rep = tmp_path / "experiments", tmp_path / "reports"
    exp.mkdir()
    (exp / "toy.toml").write_text(_TOML.format(name="toy", claim=claim))
    (exp / "null.toml").write_text(_TOML.format(name="null", claim="aa-nothing"))  # the A/A file: left out
    (rep / "toy").mkdir(parents=True)
    runs = [{"model": m, "seed": s, "epochs": 5, "test_accuracy": acc}
            for m, acc in (("caps", 0.98), ("cnn", 0.97)) for s in range(3)]
    (rep / "toy" / "manifest.json").write_text(json.dumps({
        "experiment": {"file": "experiments/toy.toml", "size": "quick"}, "dataset": "mnist", "split": "test",
        "images": 500, "runs": runs}))
    row = {c: "" for c in STUDY_COLUMNS}
    row.update({"report": "toy", "claim": claim, "difference": difference, "se": 0.01, "df": 4, "p_value": 0.01,
                "p_study": 0.02, "study_family_size": 2, "verdict_study": "supported", "ci_low_study": 0.011,
                "ci_high_study": 0.069, "seeds_a": 3, "seeds_b": 3, "verdict": "supported",
                "declared": "before the runs"})
    pd.DataFrame([row]).to_csv(rep / "claims.csv", index=False)
    return exp, rep


def test_a_ledger_row_reads_the_study_table_and_the_manifest(tmp_path):
    exp, rep = _folders(tmp_path)
    table = L.ledger_table(exp, rep).set_index("size")
    assert set(table.index) == {"quick", "quick-elevation"}  # tiny (tests) and paper (GPU) are not expected here
    q = table.loc["quick"]
    assert (q["estimate"], q["ci_low"], q["ci_high"], q["verdict"]) == (0.04, 0.011, 0.069, "supported")
    assert q["source"] == "hinton2018-viewpoint" and q["report"] == "toy"
    assert "caps: 3 seeds" in q["protocol"] and "98.00%" in q["protocol"] and "500 images" in q["protocol"]
    # a declared size with no report is listed, with the command that runs it, never dropped
    assert table.loc["quick-elevation", "verdict"] == "not yet run"
    page = L.ledger_markdown(table.reset_index())
    assert "capsprobe run experiments/toy.toml --size quick-elevation" in page
    assert "+4.0 pts [+1.1, +6.9]" in page and "aa-nothing" not in page
    summary = L.readme_summary(table.reset_index())
    assert "1 supported, 1 not yet run" in summary and "novel-view-dynamic (quick-elevation)" in summary
    assert "1 of the tested claims declared before their runs, 0 after" in summary
    assert "The claim was declared before the runs." in page


def test_a_claim_without_a_source_is_refused(tmp_path):
    exp, rep = _folders(tmp_path, claim="capsules-are-magic")
    with pytest.raises(L.LedgerError, match="capsules-are-magic.*no source"):
        L.ledger_table(exp, rep)


def test_every_source_is_cited_and_every_mapping_names_a_source():
    assert {key for key, _ in L.CLAIM_SOURCES.values()} <= set(L.SOURCES)
    for key, src in L.SOURCES.items():
        assert src.citation and src.says and src.protocol and src.short, key
    # the sources the issue names are all on the page, tested or listed as untested
    for needle in ("Sabour", "Hinton", "Hahn", "Gu & Tresp", "Gu, Wu & Tresp", "Engstrom", "Qin", "Mu & Gilmer",
                   "motivating article"):
        assert any(needle in s.citation for s in L.SOURCES.values()), needle


def test_seeds_to_settle_is_the_first_count_whose_interval_excludes_zero():
    d, se, n0, m = 0.02, 0.015, 3, 10
    n = L.seeds_to_settle(d, se, n0, m, "greater")
    assert n is not None and n > n0

    def decided(k: int) -> bool:
        t = stats.t.ppf(1 - ALPHA / m / 2, k - 1)
        return abs(d) - t * se * math.sqrt(n0 / k) > 0

    assert decided(n) and not decided(n - 1)
    # a larger family, or a smaller effect, needs more seeds; an estimate at 0 none
    assert L.seeds_to_settle(d, se, n0, 40, "greater") > n
    assert L.seeds_to_settle(d / 2, se, n0, m, "greater") > n
    assert L.seeds_to_settle(0.0, se, n0, m, "greater") is None
    # "alike": the TOST interval inside the margin; an estimate outside the margin is never settled as alike
    k = L.seeds_to_settle(0.002, 0.01, 3, 1, "alike", margin=0.02)
    assert k is not None and 0.002 + stats.t.ppf(1 - ALPHA, k - 1) * 0.01 * math.sqrt(3 / k) < 0.02
    assert L.seeds_to_settle(0.03, 0.01, 3, 1, "alike", margin=0.02) is None


def test_the_readme_block_needs_its_markers():
    with pytest.raises(L.LedgerError, match="markers"):
        L.replace_between_markers("no markers here", "x")
    text = f"head\n{L.BEGIN}\nold\n{L.END}\ntail"
    assert L.replace_between_markers(text, "new\n") == f"head\n{L.BEGIN}\nnew\n{L.END}\ntail"


def test_the_ledger_command_writes_checks_and_refuses_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from capsprobe.cli import app

    runner = CliRunner()
    exp, rep = _folders(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{L.BEGIN}\n{L.END}\n")
    args = ["ledger", "--experiments", str(exp), "--reports", str(rep), "--out", str(rep / "ledger.md"),
            "--readme", str(readme)]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1  # nothing written yet: out of date
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert (rep / "ledger.md").is_file() and (rep / "ledger.csv").is_file() and "not yet run" in readme.read_text()
    assert not list(rep.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    readme.write_text(readme.read_text().replace("supported", "established"))  # a hand edit is caught
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1
    readme.write_text("no markers\n")
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and bad.output.strip().startswith("error:") and "markers" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert readme.read_text() == "no markers\n" and (rep / "ledger.md").read_text().startswith("# The claims")


def test_the_committed_ledger_passes_its_own_check():
    from typer.testing import CliRunner

    from capsprobe.cli import app

    result = CliRunner().invoke(app, ["ledger", "--experiments", str(ROOT / "experiments"), "--reports",
                                      str(ROOT / "reports"), "--out", str(ROOT / "reports" / "ledger.md"),
                                      "--readme", str(ROOT / "README.md"), "--check"])
    assert result.exit_code == 0, result.output
