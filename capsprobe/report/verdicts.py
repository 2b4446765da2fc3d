"""The verdict table a report opens with: one row per question, one column per model pair, from the folder's
comparison tables alone (``differences.csv``, or ``ablation.csv`` where the report has a reference; ``lie.csv``;
``masking.csv``).

Each cell says which model does better, by how much, with the interval that covers training seeds and images, and
whether the difference is established at the seeds it has (Holm-corrected over the conditions of its metric, as
:mod:`capsprobe.metrics.compare` decides). A question asked over several conditions reports the key condition of
the suite where it was probed (:func:`capsprobe.transforms.headline_conditions`), else the condition with the
largest difference, and counts the conditions established in each direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..data import get_spec
from ..metrics.claims import CHANCE_MARGIN
from ..metrics.compare import FITTED_TEST, WELCH_TEST, welch_t_test
from ..metrics.fitted import bootstrap_se_df, fitted_difference, image_se_from_interval
from ..probe.schema import identity_labels
from ..transforms import TRANSFORMS, headline_conditions

__all__ = ["CLAIMS_NOTE", "COMPACT_NOTE", "QUESTIONS", "Question", "Verdict", "at_chance", "claim_sentences",
           "claims_shown", "compact_verdict_table", "study_markdown", "verdict_cells", "verdict_claims",
           "verdict_reference", "verdict_table"]


@dataclass(frozen=True)
class Question:
    """One row of the verdict table: a metric over a set of conditions, and which direction is better."""

    label: str
    metric: str
    conditions: Callable[[pd.DataFrame], pd.Series]  # rows of the differences table -> mask
    higher_is_better: bool = True
    points: bool = True  # a share, shown in percentage points
    judged: bool = True  # False: higher is neither better nor worse (a cell says which model is higher, not better)


@dataclass(frozen=True)
class Verdict:
    """One cell: its text, and whether its difference is established (``winner``: the better model, or "higher for
    ..." where the question judges no direction)."""

    text: str
    established: bool = False
    winner: str = ""
    seeds: int = 0
    # the numbers behind the text, for the compact form (a - b; nan where the cell has none)
    difference: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    condition: str = ""
    points: bool = False
    testable: bool = False
    counts: tuple[int, int, int] | None = None  # established for a, for b, of n conditions (no key condition)


def _is(transform_test: Callable[[Any], bool]) -> Callable[[pd.DataFrame], pd.Series]:
    def mask(rows: pd.DataFrame) -> pd.Series:
        ident = identity_labels()
        moved = rows["magnitude"].astype(str) != rows["transform"].map(ident).astype(str)
        spec = rows["transform"].map(lambda t: TRANSFORMS.get(t))
        return moved & spec.map(lambda s: s is not None and bool(transform_test(s)))
    return mask


def _viewpoint(rows: pd.DataFrame) -> pd.Series:
    return rows["kind"].astype(str) == "viewpoint" if "kind" in rows else pd.Series(False, index=rows.index)


_NUISANCE = _is(lambda s: s.kind == "nuisance" and not s.worst_case)
QUESTIONS: tuple[Question, ...] = (
    Question("Accuracy under nuisances (rotations, shifts, affine warps)", "accuracy", _NUISANCE),
    Question("Decision kept under nuisances (consistency with the clean decision)", "consistency", _NUISANCE),
    # a model that keeps its decision on a scrambled digit may be blind to the arrangement of parts: not "better"
    Question("Accuracy under part scrambles (Picasso: jigsaw, swapped halves)", "accuracy", _is(lambda s: s.scramble),
             judged=False),
    Question("Accuracy at novel viewpoints", "accuracy", _viewpoint),
    Question("Pose decodable (held-out R^2 of the magnitude from phi(x), phi(Tx))", "decodability",
             _is(lambda s: s.kind == "nuisance"), points=False),
    Question("Pose moves linearly (gain of the fitted map over the identity)", "equivariance_gain", _NUISANCE,
             points=False),
    Question("Worst case (spatial grid, worst-of-k, gradient attacks)", "accuracy", _is(lambda s: s.worst_case)),
)
LIE_QUESTION = "Pose moves like a rotation (equivariant Lie derivative, rotation; lower is better)"


def _pairs_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The paired differences the verdicts read, in the schema of ``differences.csv`` (``model_a - model_b``).

    With an ablation's reference, its own table (a stricter family: every variant and condition of a metric) for
    the metrics it holds, and only the pairs with the reference elsewhere."""
    diffs = tables.get("differences", pd.DataFrame())
    ablation = tables.get("ablation")
    if ablation is None or ablation.empty:
        return diffs
    ref = str(ablation["reference"].iloc[0])
    ab = ablation.rename(columns={"variant": "model_a", "reference": "model_b", "seeds_variant": "seeds_a",
                                  "seeds_reference": "seeds_b"})
    ab = ab.assign(model_a=ref, model_b=ab["model_a"], difference=-ab["difference"],
                   ci_low_adjusted=-ab["ci_high_adjusted"], ci_high_adjusted=-ab["ci_low_adjusted"],
                   seeds_a=ab["seeds_b"], seeds_b=ab["seeds_a"])
    if diffs.empty:
        return ab
    rest = diffs[~diffs["metric"].isin(set(ab["metric"])) & ((diffs["model_a"] == ref) | (diffs["model_b"] == ref))]
    # the reference first in every pair
    flip = rest["model_b"] == ref
    rest = rest.copy()
    rest.loc[flip, ["model_a", "model_b"]] = rest.loc[flip, ["model_b", "model_a"]].to_numpy()
    rest.loc[flip, "difference"] = -rest.loc[flip, "difference"]
    lo, hi = rest.loc[flip, "ci_low_adjusted"].copy(), rest.loc[flip, "ci_high_adjusted"].copy()
    rest.loc[flip, "ci_low_adjusted"], rest.loc[flip, "ci_high_adjusted"] = -hi, -lo
    rest.loc[flip, ["seeds_a", "seeds_b"]] = rest.loc[flip, ["seeds_b", "seeds_a"]].to_numpy()
    return pd.concat([ab, rest], ignore_index=True)


def _number(value: float, points: bool, signed: bool = True) -> str:
    if points:
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cell(rows: pd.DataFrame, a: str, b: str, q: Question, flagged: set[str]) -> Verdict:
    if rows.empty:
        return Verdict("-")
    key = [(t, m) for t, m in headline_conditions()]
    # a fitted-over-the-grid metric (decodability: one value per transformation, magnitude "grid") reads the grid of
    # the key transformations, in the same order
    key += [(t, "grid") for t in dict.fromkeys(t for t, _ in key)]
    key.append(("viewpoint", "novel"))  # the viewpoint task's question is its novel viewpoints (familiar: the match)
    at_key = rows[[(t, str(m)) in key for t, m in zip(rows["transform"], rows["magnitude"].astype(str))]]
    testable = rows.dropna(subset=["ci_low_adjusted"])
    if at_key.empty:
        # no key condition fixed for this question: counts only (a condition picked from the data, the largest
        # difference, would be a verdict chosen after seeing it)
        est = testable[testable["established"].astype(bool)]
        up = int(((est["difference"] > 0) == q.higher_is_better).sum())
        way = "" if q.judged else " higher"
        return Verdict(f"no key condition declared; established{way} for {a} in {up}, for {b} in {len(est) - up} of "
                       f"{len(rows)} conditions (exploratory)", seeds=int(rows[["seeds_a", "seeds_b"]].min().min()),
                       counts=(up, len(est) - up, len(rows)))
    # the first key condition in the registry's order (never the one with the largest difference)
    rank = {k: i for i, k in enumerate(key)}
    r = at_key.loc[min(at_key.index, key=lambda i: rank[(at_key.at[i, "transform"], str(at_key.at[i, "magnitude"]))])]
    seeds = int(min(r["seeds_a"], r["seeds_b"]))
    condition = f"{r['transform']} {r['magnitude']}"
    d = float(r["difference"])
    better = (d > 0) == q.higher_is_better
    winner = (a if better else b) if q.judged else f"higher for {a if d > 0 else b}"
    unit = " pts" if q.points else ""
    n = f"{seeds} seed{'s' if seeds != 1 else ''}"
    if pd.isna(r["ci_low_adjusted"]) or seeds < 2:
        interval = "" if pd.isna(r["ci_low_adjusted"]) else \
            f" [{_number(r['ci_low_adjusted'], q.points)}, {_number(r['ci_high_adjusted'], q.points)}] (images only)"
        return Verdict(f"{winner}: {_number(d, q.points)}{unit}{interval} at {condition}; not testable ({n})",
                       seeds=seeds, difference=d, condition=condition, points=q.points)
    lo, hi = float(r["ci_low_adjusted"]), float(r["ci_high_adjusted"])
    verdict = "established" if bool(r["established"]) else "not established"
    text = (f"{winner}: {_number(d, q.points)}{unit} [{_number(lo, q.points)}, {_number(hi, q.points)}] at "
            f"{condition}; {verdict} ({n})")
    if len(rows) > 1:
        est = testable[testable["established"].astype(bool)]
        up = int(((est["difference"] > 0) == q.higher_is_better).sum())
        way = "" if q.judged else " higher"
        text += f"; established{way} for {a} in {up}, for {b} in {len(est) - up} of {len(rows)} conditions"
    suspect = sorted(m for m in (a, b) if m in flagged)
    if suspect and q.label.startswith("Worst case"):
        text += f"; gradient masking suspected for {', '.join(suspect)}: not a robustness result"
        return Verdict(text, seeds=seeds, difference=d, low=lo, high=hi, condition=condition, points=q.points)
    return Verdict(text, established=bool(r["established"]), winner=winner, seeds=seeds, difference=d, low=lo,
                   high=hi, condition=condition, points=q.points, testable=True)


def _lie_cell(lie: pd.DataFrame, a: str, b: str, n_boot: int | None = None) -> Verdict:
    """Equivariant LEE of the rotation: a fitted metric, so the seeds x images test of
    :func:`capsprobe.metrics.fitted.fitted_difference` from each run's interval over images (Welch over seeds where a
    run has none); one test per pair, exploratory."""
    rows = lie[(lie["generator"] == "rotate") & (lie["metric"] == "elee_representation_pca16")]
    ra, rb = rows[rows["model"] == a], rows[rows["model"] == b]
    va, vb = ra["value"].to_numpy(dtype=float), rb["value"].to_numpy(dtype=float)
    if not len(va) or not len(vb):
        return Verdict("-")
    d = float(va.mean() - vb.mean())
    winner = a if d < 0 else b
    if min(len(va), len(vb)) < 2:
        return Verdict(f"{winner}: {d:+.3f}; not testable (1 seed)", seeds=1, difference=d, condition="rotate")
    seeds = min(len(va), len(vb))
    ok = {"ci_low", "ci_high", "n_images"} <= set(rows.columns)
    sa = image_se_from_interval(ra["ci_low"].to_numpy(float), ra["ci_high"].to_numpy(float), n_boot=n_boot) \
        if ok else np.array([np.nan])
    sb = image_se_from_interval(rb["ci_low"].to_numpy(float), rb["ci_high"].to_numpy(float), n_boot=n_boot) \
        if ok else np.array([np.nan])
    if np.isfinite(sa).all() and np.isfinite(sb).all():
        est = fitted_difference(va, sa, vb, sb, image_df=float(bootstrap_se_df(float(ra["n_images"].iloc[0]),
                                                                                n_boot or 1000)))
        d, (lo, hi), p, test = float(est.value), tuple(float(v) for v in est.interval), float(est.p), FITTED_TEST
    else:
        d, (lo, hi), p = welch_t_test(va, vb)
        test = WELCH_TEST
    established = p < 0.05 and (lo > 0 or hi < 0)
    verdict = f"established ({seeds} seeds)" if established else f"not established ({seeds} seeds)"
    return Verdict(f"{winner}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({test}, p = {p:.2g}); {verdict}",
                   established=established, winner=winner, seeds=seeds, difference=d, low=lo, high=hi,
                   condition="rotate", testable=True)


def at_chance(manifest: dict[str, Any] | None) -> list[str]:
    """The models whose mean clean test accuracy is within 5 points of chance (1/K of the manifest's data set): a
    comparison with one of them establishes nothing."""
    if not manifest:
        return []
    try:
        k = get_spec(str(manifest.get("dataset", ""))).num_classes
    except Exception:  # noqa: BLE001 - an unregistered data set: no check
        return []
    accs: dict[str, list[float]] = {}
    for r in manifest.get("runs", []) or []:
        if isinstance(r, dict) and isinstance(r.get("test_accuracy"), (int, float)):
            accs.setdefault(str(r.get("model")), []).append(float(r["test_accuracy"]))
    return [m for m, v in accs.items() if sum(v) / len(v) - 1.0 / k < CHANCE_MARGIN]


def verdict_cells(tables: dict[str, pd.DataFrame], manifest: dict[str, Any] | None = None
                  ) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str, str], Verdict]]:
    """The questions asked, the model pairs compared, and the cell text of each (question, a, b); with the
    ``manifest``, a pair with a model at chance (:func:`at_chance`) establishes nothing and says so."""
    diffs = _pairs_table(tables)
    if diffs is None or diffs.empty:
        return [], [], {}
    chance = set(at_chance(manifest))
    pairs = list(dict.fromkeys(zip(diffs["model_a"], diffs["model_b"])))
    masking = tables.get("masking")
    flagged: set[str] = set()
    if masking is not None and not masking.empty and "passed" in masking:
        failed = masking[~masking["passed"].astype(bool)]
        flagged = set(failed["model"].astype(str)) if "model" in failed else set()
    cells: dict[tuple[str, str, str], Verdict] = {}
    questions: list[str] = []
    for q in QUESTIONS:
        rows = diffs[diffs["metric"] == q.metric]
        rows = rows[q.conditions(rows)] if len(rows) else rows
        if rows.empty:
            continue
        questions.append(q.label)
        for a, b in pairs:
            cell = _cell(rows[(rows["model_a"] == a) & (rows["model_b"] == b)], a, b, q, flagged)
            down = sorted(chance & {a, b})
            if down and cell.text != "-":
                cell = Verdict(f"{cell.text.split(';')[0]}; not testable: {', '.join(down)} at chance (clean "
                               f"accuracy within {100 * CHANCE_MARGIN:.0f} points of 1/K)", seeds=cell.seeds,
                               difference=cell.difference, condition=cell.condition, points=cell.points)
            cells[(q.label, a, b)] = cell
    lie = tables.get("lie")
    if lie is not None and not lie.empty and ((lie["generator"] == "rotate")
                                             & (lie["metric"] == "elee_representation_pca16")).any():
        questions.insert(min(len(questions), _after(questions)), LIE_QUESTION)
        for a, b in pairs:
            boot = (manifest or {}).get("bootstrap")
            cell = _lie_cell(lie, a, b, int(boot) if isinstance(boot, (int, float)) else None)
            if chance & {a, b} and cell.text != "-":
                cell = Verdict(f"{cell.text.split(';')[0]}; not testable: a model at chance", seeds=cell.seeds,
                               difference=cell.difference, condition=cell.condition)
            cells[(LIE_QUESTION, a, b)] = cell
    return questions, pairs, cells


def _after(questions: list[str]) -> int:
    """Where the Lie row goes: after the linearity question, else at the end."""
    for i, q in enumerate(questions):
        if q.startswith("Pose moves linearly"):
            return i + 1
    return len(questions)


def verdict_table(tables: dict[str, pd.DataFrame], manifest: dict[str, Any] | None = None) -> pd.DataFrame | None:
    """One row per question, one column per model pair ``a - b``; None when the report compares no models.

    A cell: the better model, then ``a - b`` (accuracy in points) with its 95% interval widened for the metric's
    family, the condition, whether it is established and at how many seeds, and how many of the question's
    conditions are established each way."""
    questions, pairs, cells = verdict_cells(tables, manifest)
    if not questions:
        return None
    rows = []
    for q in questions:
        row = {"question": q}
        for a, b in pairs:
            row[f"{a} - {b}"] = cells[(q, a, b)].text if (q, a, b) in cells else "-"
        rows.append(row)
    return pd.DataFrame(rows)


COMPACT_NOTE = ("Each row: the model minus the reference at the question's key condition (in the column's head, "
                "else in the cell), accuracy and consistency in percentage points, with its 95% interval over training "
                "seeds and images widened for every condition of the metric, and 'established' where Holm's p < 0.05 "
                "(the full matrix below says which model does better, and how many conditions are established each "
                "way).")


def verdict_reference(tables: dict[str, pd.DataFrame], manifest: dict[str, Any] | None, models: list[str]) -> str:
    """The model every other is set against in the compact verdicts: the ablation's reference, else the experiment's
    declared ``reference``, else the manifest's first model (of ``models``, the models the verdicts compare)."""
    ablation = tables.get("ablation")
    declared = [str(ablation["reference"].iloc[0])] if ablation is not None and not ablation.empty else []
    exp = (manifest or {}).get("experiment")
    declared += [str(v) for v in ((manifest or {}).get("reference"),
                                  exp.get("reference") if isinstance(exp, dict) else None) if v]
    declared += [str(r.get("model", r.get("name"))) for r in (manifest or {}).get("runs", []) or []
                 if isinstance(r, dict)]
    return next((m for m in declared if m in models), models[0])


def _short(v: Verdict, flip: bool, reference: str, condition_shown: bool) -> str:
    """A compact cell: model - reference (``flip``: the pair was reference - model) with its interval."""
    if v.text == "-":
        return "-"
    if v.counts is not None:
        mine, theirs, n = (v.counts[1], v.counts[0], v.counts[2]) if flip else v.counts
        return f"no key condition; established for it in {mine}, for {reference} in {theirs} of {n}"
    sign = -1.0 if flip else 1.0
    d, lo, hi = sign * v.difference, sign * (v.high if flip else v.low), sign * (v.low if flip else v.high)
    text = _number(d, v.points)
    if v.testable and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{_number(lo, v.points)}, {_number(hi, v.points)}]"
    if v.condition and not condition_shown:
        text += f" at {v.condition}"
    if "gradient masking suspected" in v.text:
        return text + ", gradient masking suspected"
    if not v.testable:
        why = "a model at chance" if "at chance" in v.text else f"{v.seeds} seed" if v.seeds < 2 else ""
        return text + ", not testable" + (f" ({why})" if why else "")
    return text + (", established" if v.established else "")


def compact_verdict_table(tables: dict[str, pd.DataFrame], manifest: dict[str, Any] | None = None
                          ) -> tuple[str, pd.DataFrame] | None:
    """The verdicts of many models in one screen: each model against the reference (:func:`verdict_reference`), a
    row per model and a column per question (its key condition in the head where every row has the same), the cell
    ``model - reference [interval]`` and whether it is established (:data:`COMPACT_NOTE`). None where the verdicts
    compare fewer than three models (one pair: the full cell says more)."""
    questions, pairs, cells = verdict_cells(tables, manifest)
    models = list(dict.fromkeys(m for pair in pairs for m in pair))
    if not questions or len(models) < 3:
        return None
    order = [str(r.get("model", r.get("name"))) for r in (manifest or {}).get("runs", []) or [] if isinstance(r, dict)]
    models = sorted(models, key=lambda m: order.index(m) if m in order else len(order))
    reference = verdict_reference(tables, manifest, models)
    found: dict[tuple[str, str], tuple[Verdict, bool]] = {}
    for q in questions:
        for m in models:
            if (q, m, reference) in cells:
                found[(q, m)] = (cells[(q, m, reference)], False)
            elif (q, reference, m) in cells:
                found[(q, m)] = (cells[(q, reference, m)], True)
    heads = {}
    for q in questions:
        shown = {found[(q, m)][0].condition for m in models if (q, m) in found and found[(q, m)][0].text != "-"}
        heads[q] = next(iter(shown)) if len(shown) == 1 and "" not in shown else ""
    rows = []
    for m in models:
        if m == reference:
            continue
        row = {f"model (minus {reference})": m}
        for q in questions:
            head = (q.split(" (")[0] + (" (lower is better)" if "lower is better" in q else "")
                    + (f" [{heads[q]}]" if heads[q] else ""))
            cell, flip = found.get((q, m), (Verdict("-"), False))
            row[head] = _short(cell, flip, reference, bool(heads[q]))
        rows.append(row)
    return reference, pd.DataFrame(rows)


def verdict_claims(tables: dict[str, pd.DataFrame], manifest: dict[str, Any] | None = None) -> list[str]:
    """The few sentences that carry a claim: each established verdict, and how many comparisons are not."""
    questions, pairs, cells = verdict_cells(tables, manifest)
    if not questions:
        return []
    asked = [v for v in cells.values() if v.text != "-"]
    seeds = sorted({v.seeds for v in asked})
    if seeds and seeds[-1] < 2:
        return ["One training seed per model: the verdicts below are read-outs of one run each, and no difference "
                "between models is established by this report."]
    claims = [f"Established at {v.seeds} seeds: {q.split(' (')[0].lower()}, {v.text.split(';')[0]} "
              f"({a} - {b})." for (q, a, b), v in cells.items() if v.established]
    rest = len(asked) - len(claims)
    at = "/".join(str(n) for n in seeds)
    if claims and rest:
        claims.append(f"The other {rest} of the {len(asked)} comparisons in the verdict table are not established at "
                      f"{at} seeds.")
    elif not claims:
        claims.append(f"None of the {len(asked)} comparisons in the verdict table is established at {at} seeds (which "
                      "is not evidence that the models are alike).")
    return claims


CLAIMS_NOTE = ("The experiment's declared primary endpoints ([[claims]] in its file, hashed into the manifest): each "
               "claim's difference a - b with its interval at the level the family's test used (Holm's step for a "
               "decided claim, Bonferroni's 1 - 0.05 / m otherwise, 1 - 2 alpha / m for 'alike', the one two "
               "one-sided tests read: it excludes 0 exactly when the claim is decided), the claim's p "
               "adjusted by Holm over the claims, and the verdict: supported, contradicted, equivalent within the "
               "margin, different, or inconclusive (not established, which is not 'alike'). A claim is not "
               "testable with fewer than 2 seeds or a model at chance. Everything else in this report is "
               "exploratory.")


def _fmt_value(value: Any, metric: str) -> str:
    if pd.isna(value):
        return "-"
    points = metric in ("accuracy", "consistency")
    return f"{100 * float(value):+.1f}" if points else f"{float(value):+.3f}"


def _estimate(r: Any) -> str:
    """A claim's ``a - b`` with its family's interval (accuracy and consistency in points)."""
    metric = str(r.metric)
    if pd.isna(r.difference):
        return "-"
    unit = " pts" if metric in ("accuracy", "consistency") else ""
    est = f"{_fmt_value(r.difference, metric)}{unit}"
    if not pd.isna(r.ci_low_adjusted):
        est += f" [{_fmt_value(r.ci_low_adjusted, metric)}, {_fmt_value(r.ci_high_adjusted, metric)}]"
    return est


def claims_shown(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The declared claims as the report shows them (None: the report declares none)."""
    claims = tables.get("claims")
    if claims is None or claims.empty:
        return None
    rows = []
    for r in claims.itertuples(index=False):
        metric = str(r.metric)
        unit = " pts" if metric in ("accuracy", "consistency") else ""
        declared = (f"alike within {_fmt_value(r.margin, metric).lstrip('+')}{unit}" if r.direction == "alike" else
                    f"{r.a} {'>' if r.direction == 'greater' else '<'} {r.b}")
        estimate = _estimate(r)
        rows.append({"claim": r.claim, "measure": f"{metric} at {r.transform} {r.magnitude}", "declared": declared,
                     "a - b": estimate, "p (Holm)": "-" if pd.isna(r.p_holm) else f"{float(r.p_holm):.2g}",
                     "verdict": r.verdict, "seeds reaching target": f"{r.a} {r.reached_a}, {r.b} {r.reached_b}",
                     "fixed": r.declared})
    return pd.DataFrame(rows)


def claim_sentences(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per declared claim, with its verdict (the report's first headlines)."""
    claims = tables.get("claims")
    if claims is None or claims.empty:
        return []
    out = []
    for r in claims.itertuples(index=False):
        words = f" ({r.statement})" if isinstance(r.statement, str) and r.statement else ""
        est = "" if pd.isna(r.difference) else f": {r.a} - {r.b} = {_fmt_value(r.difference, str(r.metric))}"
        out.append(f"Claim {r.claim}{words}, {r.metric} at {r.transform} {r.magnitude}{est}; {r.verdict} "
                   f"(declared {r.declared}).")
    return out


def study_markdown(study: pd.DataFrame) -> str:
    """The study-wide family (``reports/claims.csv``) as a Markdown table: per claim its report, words, measure,
    estimate with the family's interval, and its verdict in its experiment's family and in the study's."""
    if study is None or study.empty:
        return "No claims declared.\n"
    m = int(study["study_family_size"].iloc[0])
    fixed = sorted(set(study["declared"].astype(str)))
    lines = [f"{len(study)} declared claims in {study['report'].nunique()} reports, one study-wide Holm family of {m} "
             f"testable claims (declared {' / '.join(fixed)}).", "",
             "| report | claim | measure (a - b) | a - b [family interval] | experiment | study |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in study.itertuples(index=False):
        metric = str(r.metric)
        est = _estimate(r)
        words = f"{r.claim}: {r.statement}" if isinstance(r.statement, str) and r.statement else str(r.claim)
        lines.append(f"| {r.report} | {words} | {metric} at {r.transform} {r.magnitude} ({r.a} - {r.b}) | {est} | "
                     f"{r.verdict} | {r.verdict_study} |")
    return "\n".join(lines) + "\n"
