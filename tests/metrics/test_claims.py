"""Declared claims: parsing, the test each claim gets, Holm over the claims, TOST for "alike", the study family."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from capsprobe.metrics.claims import Claim, ClaimError, claims_table, parse_claims, study_table, tost_p
from capsprobe.metrics.compare import holm


def _claim(**kw):
    base = {"name": "c", "a": "caps", "b": "cnn", "metric": "accuracy", "condition": "rotate=45",
            "direction": "greater"}
    return {**base, **kw}


def _diff_row(a="caps", b="cnn", metric="accuracy", transform="rotate", magnitude="45", d=0.05, se=0.01, df=8.0,
              seeds=3):
    lo, hi = d - 2 * se, d + 2 * se
    return {"model_a": a, "model_b": b, "transform": transform, "magnitude": magnitude, "metric": metric,
            "difference": d, "ci_low": lo, "ci_high": hi, "se": se, "df": 50.0, "df_adjusted": df,
            "test": "paired", "seeds_a": seeds, "seeds_b": seeds}


def _entries(acc_caps=0.99, acc_cnn=0.99, n=3, failed=0):
    out = []
    for m, acc in (("caps", acc_caps), ("cnn", acc_cnn)):
        for s in range(n):
            reached = not (m == "caps" and s < failed)
            out.append({"name": f"{m}-seed{s}", "model": m, "seed": s, "test_accuracy": acc,
                        "target_accuracy": 0.99, "reached_target": reached})
    return out


def test_parse_reads_a_claim_and_its_condition():
    (c,) = parse_claims([_claim(statement="capsules keep more")], models=["caps", "cnn"])
    assert (c.transform, c.magnitude, c.direction, c.margin) == ("rotate", "45", "greater", None)
    assert c.condition == "rotate=45" and c.statement == "capsules keep more"
    # a manifest's dict reads back to the same claim
    assert parse_claims([c.as_dict()]) == [c]


@pytest.mark.parametrize("entry, words", [
    (_claim(direction="bigger"), "direction"),
    (_claim(direction="alike"), "margin"),
    (_claim(direction="alike", margin=0), "margin"),
    (_claim(margin=0.1), "margin"),
    (_claim(condition="rotate"), "transform=magnitude"),
    (_claim(b="caps"), "same model"),
    (_claim(a="resnet"), "none of the compared models"),
    (_claim(metric="true_class_score"), "scale"),
    (_claim(colour="red"), "unknown key"),
    ({"name": "c", "a": "caps"}, "missing key"),
])
def test_parse_refuses_malformed_claims(entry, words):
    with pytest.raises(ClaimError, match=words):
        parse_claims([entry], models=["caps", "cnn"])


def test_parse_refuses_a_second_decision_measure_for_the_same_pair_and_condition():
    with pytest.raises(ClaimError, match="count once"):
        parse_claims([_claim(name="x"), _claim(name="y", a="cnn", b="caps", metric="consistency")])
    with pytest.raises(ClaimError, match="twice"):
        parse_claims([_claim(name="x"), _claim(name="x", condition="rotate=90")])
    # another condition, or a pose measure beside the decision, is a separate claim
    assert len(parse_claims([_claim(name="x"), _claim(name="y", condition="rotate=90"),
                             _claim(name="z", metric="decodability")])) == 3


def test_tost_reads_the_margin_on_both_sides():
    # a difference of 0 with a small se lies within a margin of 0.05: equivalence
    assert tost_p(0.0, 0.01, 10, 0.05) < 0.001
    # exactly at the margin: p 0.5, from either side
    assert tost_p(0.05, 0.01, 10, 0.05) == pytest.approx(0.5)
    assert tost_p(-0.05, 0.01, 10, 0.05) == pytest.approx(0.5)
    # the larger of the one-sided p-values, on the given df
    d, se, df, m = 0.02, 0.01, 6.0, 0.05
    assert tost_p(d, se, df, m) == pytest.approx(stats.t.cdf((d - m) / se, df))


def test_directional_claims_get_holm_over_the_family_and_the_sign():
    claims = parse_claims([_claim(name="up"), _claim(name="down", condition="rotate=90"),
                           _claim(name="weak", condition="rotate=180")])
    diffs = pd.DataFrame([_diff_row(d=0.05), _diff_row(magnitude="90", d=-0.05),
                          _diff_row(magnitude="180", d=0.015, se=0.01)])
    t = claims_table(claims, {"differences": diffs}, _entries()).set_index("claim")
    raw = np.array([2 * stats.t.sf(5.0, 8), 2 * stats.t.sf(5.0, 8), 2 * stats.t.sf(1.5, 8)])
    np.testing.assert_allclose(t["p_value"].to_numpy(float), raw)
    np.testing.assert_allclose(t["p_holm"].to_numpy(float), holm(raw))
    assert (t["family_size"] == 3).all()
    assert t.loc["up", "verdict"] == "supported"
    assert t.loc["down", "verdict"] == "contradicted"  # a < b where a > b was declared
    assert t.loc["weak", "verdict"] == "inconclusive"
    # the Bonferroni-level interval of a family of 3
    half = stats.t.ppf(1 - 0.05 / 6, 8) * 0.01
    assert t.loc["up", "ci_low_adjusted"] == pytest.approx(0.05 - half)


def test_a_claim_stored_the_other_way_round_is_flipped():
    claims = parse_claims([_claim(direction="less")])
    diffs = pd.DataFrame([_diff_row(a="cnn", b="caps", d=0.05)])  # cnn - caps = +0.05: caps is lower
    t = claims_table(claims, {"differences": diffs}, _entries())
    assert t.loc[0, "difference"] == pytest.approx(-0.05)
    assert (t.loc[0, "ci_low"], t.loc[0, "ci_high"]) == pytest.approx((-0.07, -0.03))
    assert t.loc[0, "verdict"] == "supported"


def test_alike_claims_read_equivalent_different_or_inconclusive():
    claims = parse_claims([_claim(name="same", direction="alike", margin=0.02),
                           _claim(name="apart", direction="alike", margin=0.02, condition="rotate=90"),
                           _claim(name="unsure", direction="alike", margin=0.02, condition="rotate=180")])
    diffs = pd.DataFrame([_diff_row(d=0.001, se=0.002), _diff_row(magnitude="90", d=0.08, se=0.01),
                          _diff_row(magnitude="180", d=0.01, se=0.02)])
    t = claims_table(claims, {"differences": diffs}, _entries()).set_index("claim")
    assert t.loc["same", "verdict"] == "equivalent within 0.02"
    assert t.loc["apart", "verdict"] == "different"
    assert t.loc["unsure", "verdict"] == "inconclusive"
    assert "TOST" in t.loc["same", "test"]


def test_untestable_claims_leave_the_family():
    claims = parse_claims([_claim(name="one-seed"), _claim(name="absent", condition="rotate=30"),
                           _claim(name="ok", condition="rotate=90")])
    diffs = pd.DataFrame([_diff_row(seeds=1), _diff_row(magnitude="90", d=0.05)])
    t = claims_table(claims, {"differences": diffs}, _entries()).set_index("claim")
    assert t.loc["one-seed", "verdict"].startswith("not testable")
    assert t.loc["absent", "verdict"].startswith("not probed")
    assert t.loc["ok", "family_size"] == 1 and t.loc["ok", "p_holm"] == pytest.approx(t.loc["ok", "p_value"])


def test_models_at_chance_establish_nothing():
    claims = parse_claims([_claim()])
    diffs = pd.DataFrame([_diff_row(d=0.05, se=0.001)])
    t = claims_table(claims, {"differences": diffs}, _entries(acc_caps=0.14), n_classes=10)
    assert "at chance" in t.loc[0, "verdict"] and np.isnan(t.loc[0, "p_value"])
    # 5.1 points above chance is not at chance
    t = claims_table(claims, {"differences": diffs}, _entries(acc_caps=0.151), n_classes=10)
    assert t.loc[0, "verdict"] == "supported"


def test_failed_seeds_are_reported_with_the_claim():
    claims = parse_claims([_claim()])
    t = claims_table(claims, {"differences": pd.DataFrame([_diff_row()])}, _entries(failed=2))
    assert t.loc[0, "reached_a"] == "1/3" and t.loc[0, "reached_b"] == "3/3"
    assert "survivors" in t.loc[0, "note"]


def test_the_study_family_is_holm_over_every_report():
    claims = parse_claims([_claim()])
    one = claims_table(claims, {"differences": pd.DataFrame([_diff_row(d=0.03, se=0.01)])}, _entries())
    two = claims_table(claims, {"differences": pd.DataFrame([_diff_row(d=0.02, se=0.01)])}, _entries())
    study = study_table({"r1": one, "r2": two})
    p = np.array([one.loc[0, "p_value"], two.loc[0, "p_value"]], dtype=float)
    np.testing.assert_allclose(study["p_study"].to_numpy(float), holm(p))
    assert list(study["report"]) == ["r1", "r2"] and (study["study_family_size"] == 2).all()
    # each report alone supports its claim; the study family is stricter
    assert one.loc[0, "verdict"] == "supported"
    assert (study["p_study"].to_numpy(float) >= p).all()


def test_claim_is_frozen_and_hashable():
    c = Claim("c", "a", "b", "accuracy", "rotate", "45", "greater")
    assert len({c, c}) == 1


def test_the_shown_interval_excludes_zero_exactly_when_the_claim_is_established():
    """Holm rejects the k-th smallest p at alpha / (m - k): the interval at Bonferroni's alpha / m would cover 0 for a
    claim Holm establishes at a later step. Each claim's interval is at its own step's level."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = int(rng.integers(2, 6))
        z = rng.normal(0, 2.5, m)
        claims = parse_claims([_claim(name=f"c{i}", condition=f"rotate={i}") for i in range(m)])
        diffs = pd.DataFrame([_diff_row(magnitude=str(i), d=float(z[i]) * 0.01, se=0.01) for i in range(m)])
        t = claims_table(claims, {"differences": diffs}, _entries())
        decided = t["verdict"].isin(["supported", "contradicted"]).to_numpy()
        excludes = ((t["ci_low_adjusted"] > 0) | (t["ci_high_adjusted"] < 0)).to_numpy()
        assert (decided == excludes).all(), t[["p_value", "p_holm", "ci_low_adjusted", "ci_high_adjusted", "verdict"]]


def test_the_study_interval_excludes_zero_exactly_when_the_study_decides():
    """The study-wide family is larger than each report's: the interval beside ``verdict_study`` is at the claim's
    Holm step in the study's family, so a claim a report supports but the study does not has a study interval that
    covers 0 (the report's own interval does not)."""
    rng = np.random.default_rng(1)
    seen_split = False
    for _ in range(30):
        tables = {}
        for k in range(int(rng.integers(2, 4))):
            m = int(rng.integers(1, 4))
            claims = parse_claims([_claim(name=f"c{i}", condition=f"rotate={i}") for i in range(m)])
            z = rng.normal(0, 2.8, m)
            diffs = pd.DataFrame([_diff_row(magnitude=str(i), d=float(z[i]) * 0.01, se=0.01) for i in range(m)])
            tables[f"r{k}"] = claims_table(claims, {"differences": diffs}, _entries())
        study = study_table(tables)
        decided = study["verdict_study"].isin(["supported", "contradicted"]).to_numpy()
        excludes = ((study["ci_low_study"] > 0) | (study["ci_high_study"] < 0)).to_numpy()
        assert (decided == excludes).all(), study[["p_value", "p_study", "ci_low_study", "ci_high_study"]]
        seen_split |= bool((study["verdict"].isin(["supported", "contradicted"]) & ~decided).any())
        # the study's interval is never narrower than the report's (a larger family)
        assert ((study["ci_high_study"] - study["ci_low_study"])
                >= (study["ci_high_adjusted"] - study["ci_low_adjusted"]) - 1e-12).all()
    assert seen_split  # some claim decided in its report is undecided in the study
