"""Declared claims: the primary endpoints of an experiment, their family and their verdicts.

An experiment file declares, before its runs, the few comparisons it is about (``[[claims]]``)::

    [[claims]]
    name = "rotation-pose"                 # unique in the file
    a = "capsnet_small"                    # the pair, a - b
    b = "baseline_cnn_pool"
    metric = "decodability"
    condition = "rotate=45"                # transform=magnitude, as --magnitudes writes it
    direction = "greater"                  # a > b ("greater"), a < b ("less"), or "alike"
    margin = 0.02                          # "alike" only: the equivalence margin, in the metric's units
    statement = "capsule poses keep the rotation angle"   # optional: the words of the claim

The file's SHA-256 goes into the report's manifest with the claims, so a reader can check that the claims were fixed
before the runs (a re-derivation on an older report says "declared after the runs").

:func:`claims_table` reads a report's ``differences.csv`` (its ``se`` and ``df_adjusted``: the seed level's own
degrees of freedom for the paired per-image rows, Welch's for the fitted ones, see :mod:`capsprobe.metrics.compare`)
and gives each claim one test:

- a direction ("greater", "less"): the two-sided t test of ``a - b = 0``; "supported" when it is significant after
  Holm over the experiment's claims and the difference has the declared sign, "contradicted" when significant with the
  other sign, else "inconclusive";
- "alike": two one-sided tests against the margin (TOST, Schuirmann 1987): ``p = max(P(T >= (d + m) / se),
  P(T <= (d - m) / se))``; "equivalent within m" when significant after Holm, "different" when the two-sided test of
  ``a - b = 0`` is significant at the family's Bonferroni level, else "inconclusive". "Not established" is never
  written as "alike".

The family is the experiment's claims (Holm 1979), and :func:`study_table` forms a study-wide family over every
report's claims. A claim is "not testable" (and leaves its family) when a model has fewer than 2 seeds, when a model's
clean accuracy is within 5 points of chance (1/K), or when its condition was not probed; a model with seeds that did
not reach their target is flagged: its comparison rests on the survivors.

Duplicated and near-duplicate endpoints are refused when the claims are read: accuracy and consistency (the decision
kept) are one measure per condition, so a pair and condition gets at most one of them; the true-class score and the
confidence drop compare capsule lengths with softmax probabilities (not one scale) and cannot be claimed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import InvalidInputError
from .compare import holm
from .functional import LEVEL
from .seeds import reached

__all__ = ["CLAIM_COLUMNS", "CHANCE_MARGIN", "Claim", "ClaimError", "DIRECTIONS", "STUDY_COLUMNS", "claims_table",
           "file_sha256", "parse_claims", "study_table", "tost_p"]

DIRECTIONS = ("greater", "less", "alike")
CHANCE_MARGIN = 0.05  # a model within 5 points of 1/K is at chance: nothing it is compared on is established
ALPHA = 1 - LEVEL
# one decision measure per condition: accuracy and the decision kept move together under a nuisance
_NEAR_DUPLICATE = {"accuracy": "decision", "consistency": "decision"}
# scores on each model's own scale (capsule lengths against softmax probabilities)
_OTHER_SCALES = {"true_class_score", "confidence_drop"}
_KEYS = {"name", "a", "b", "metric", "condition", "direction", "margin", "statement", "sizes"}
CLAIM_COLUMNS = [
    "claim", "statement", "a", "b", "metric", "transform", "magnitude", "direction", "margin", "declared",
    "difference", "ci_low", "ci_high", "se", "df", "test", "p_value", "p_holm", "family_size", "ci_low_adjusted",
    "ci_high_adjusted", "seeds_a", "seeds_b", "reached_a", "reached_b", "verdict", "note",
]
STUDY_COLUMNS = ["report", *CLAIM_COLUMNS, "p_study", "study_family_size", "verdict_study", "ci_low_study",
                 "ci_high_study"]


class ClaimError(InvalidInputError):
    """A malformed claim (the message names the claim and the key)."""


@dataclass(frozen=True)
class Claim:
    """One declared primary endpoint: ``a - b`` on ``metric`` at ``transform=magnitude``."""

    name: str
    a: str
    b: str
    metric: str
    transform: str
    magnitude: str
    direction: str
    margin: float | None = None
    statement: str = ""

    @property
    def condition(self) -> str:
        return f"{self.transform}={self.magnitude}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (the experiment file's, in the manifest)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_claims(raw: Any, models: Sequence[str] | None = None, size: str | None = None) -> list[Claim]:
    """Read ``[[claims]]`` entries (a list of tables, or of :meth:`Claim.as_dict` dicts from a manifest).

    ``models``: the names the pair must come from (None: not checked). ``size``: keep only the claims whose
    ``sizes`` list (optional; default every size) holds it (a protocol probed at one size of a file: its claims).

    Raises:
        ClaimError: a missing or unknown key, a wrong type, an unknown direction, "alike" without a positive margin
            (or a margin on a directional claim), a model that is not compared, a repeated name, a pair and condition
            claimed twice on the same measure (accuracy and consistency are one), a score on each model's own scale.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ClaimError("claims must be a list of tables ([[claims]])")
    out: list[Claim] = []
    for i, entry in enumerate(raw, 1):
        where = f"claim {i}"
        if not isinstance(entry, dict):
            raise ClaimError(f"{where} is not a table")
        if isinstance(entry.get("name"), str):
            where = f"claim {i} ({entry['name']!r})"
        if "condition" not in entry and {"transform", "magnitude"} <= set(entry):  # a manifest's dict
            entry = {**{k: v for k, v in entry.items() if k not in ("transform", "magnitude")},
                     "condition": f"{entry['transform']}={entry['magnitude']}"}
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ClaimError(f"{where}: unknown key {unknown[0]!r} (a claim has: {', '.join(sorted(_KEYS))})")
        sizes = entry.get("sizes")
        if sizes is not None and (not isinstance(sizes, list) or not all(isinstance(x, str) for x in sizes)):
            raise ClaimError(f"{where}: 'sizes' must be a list of size names")
        if size is not None and sizes is not None and size not in sizes:
            continue
        for key in ("name", "a", "b", "metric", "condition", "direction"):
            if key not in entry:
                raise ClaimError(f"{where}: missing key {key!r}")
            if not isinstance(entry[key], str) or not entry[key]:
                raise ClaimError(f"{where}: {key!r} must be a non-empty string")
        direction = entry["direction"]
        if direction not in DIRECTIONS:
            raise ClaimError(f"{where}: direction {direction!r} is none of {', '.join(DIRECTIONS)}")
        margin = entry.get("margin")
        if direction == "alike":
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
                    or margin <= 0:
                raise ClaimError(f"{where}: an 'alike' claim needs a positive equivalence margin (margin = 0.02)")
            margin = float(margin)
        elif margin is not None:
            raise ClaimError(f"{where}: a margin is for 'alike' claims; {direction!r} is tested against 0")
        transform, sep, magnitude = entry["condition"].partition("=")
        if not sep or not transform or not magnitude:
            raise ClaimError(f"{where}: condition {entry['condition']!r} is not transform=magnitude (rotate=45)")
        if entry["a"] == entry["b"]:
            raise ClaimError(f"{where}: a and b are the same model ({entry['a']!r})")
        if models is not None:
            for key in ("a", "b"):
                if entry[key] not in models:
                    raise ClaimError(f"{where}: {key} = {entry[key]!r} is none of the compared models "
                                     f"({', '.join(models)})")
        if entry["metric"] in _OTHER_SCALES:
            raise ClaimError(f"{where}: {entry['metric']} compares each model's own score scale (capsule lengths, "
                             "softmax probabilities); claim accuracy, consistency or a calibrated measure instead")
        statement = entry.get("statement", "")
        if not isinstance(statement, str):
            raise ClaimError(f"{where}: 'statement' must be a string")
        claim = Claim(entry["name"], entry["a"], entry["b"], entry["metric"], transform.strip(), magnitude.strip(),
                      direction, margin, statement)
        for other in out:
            if other.name == claim.name:
                raise ClaimError(f"{where}: the name {claim.name!r} is used twice")
            same_pair = {other.a, other.b} == {claim.a, claim.b} and other.condition == claim.condition
            measure = _NEAR_DUPLICATE.get(claim.metric, claim.metric)
            if same_pair and _NEAR_DUPLICATE.get(other.metric, other.metric) == measure:
                raise ClaimError(f"{where}: {other.name!r} already claims {other.metric} for this pair at "
                                 f"{claim.condition} (accuracy and consistency count once per claim)")
        out.append(claim)
    return out


def tost_p(difference: float, se: float, df: float, margin: float) -> float:
    """Two one-sided tests (Schuirmann 1987) of ``|difference| < margin``: the larger of the two one-sided p-values
    (small: the difference lies within the margin)."""
    if se == 0:
        return 0.0 if abs(difference) < margin else 1.0
    lower = stats.t.sf((difference + margin) / se, df)  # H0: difference <= -margin
    upper = stats.t.cdf((difference - margin) / se, df)  # H0: difference >= margin
    return float(max(lower, upper))


def _two_sided(difference: float, se: float, df: float) -> float:
    if se == 0:
        return 1.0 if difference == 0 else 0.0
    return float(2 * stats.t.sf(abs(difference) / se, df))


def _seed_outcomes(entries: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """Per model: seeds that reached the target (or had none), seeds trained, mean clean test accuracy of the
    survivors."""
    out: dict[str, list] = {}
    for e in entries:
        model = str(e.get("model_label") or e.get("label") or e.get("model"))
        kept = reached(dict(e))
        rec = out.setdefault(model, [0, 0, []])
        rec[0] += int(kept)
        rec[1] += 1
        if kept and e.get("test_accuracy") is not None:
            rec[2].append(float(e["test_accuracy"]))
    return {m: (k, n, float(np.mean(acc)) if acc else float("nan")) for m, (k, n, acc) in out.items()}


def _model_of(entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {str(e.get("name")): str(e.get("model")) for e in entries}


def _find(differences: pd.DataFrame, claim: Claim) -> tuple[pd.Series | None, int]:
    """The claim's row of ``differences.csv`` and its orientation (+1: a - b as stored, -1: stored b - a)."""
    if differences is None or differences.empty:
        return None, 1
    d = differences
    at = (d["metric"] == claim.metric) & (d["transform"].astype(str) == claim.transform) & \
         (d["magnitude"].astype(str) == claim.magnitude)
    for a, b, sign in ((claim.a, claim.b, 1), (claim.b, claim.a, -1)):
        rows = d[at & (d["model_a"] == a) & (d["model_b"] == b)]
        if len(rows):
            return rows.iloc[0], sign
    return None, 1


def claims_table(claims: Sequence[Claim], tables: Mapping[str, pd.DataFrame],
                 entries: Sequence[Mapping[str, Any]], n_classes: int | None = None,
                 declared: str = "before the runs") -> pd.DataFrame:
    """One row per claim: the difference ``a - b`` with its 95% interval, the claim's test, Holm over the claims, the
    Bonferroni-level interval of the family (a ``1 - 2 alpha / m`` interval for "alike": the one TOST reads), and
    the verdict (see the module docstring).

    Args:
        claims: the experiment's declared claims.
        tables: the report's comparison tables (``differences`` is read).
        entries: the manifest's run entries (for seeds that failed their target and clean accuracies).
        n_classes: K, for the at-chance check (None: not checked).
        declared: when the claims were fixed ("before the runs", or "after the runs" for a re-derivation).
    """
    differences = tables.get("differences", pd.DataFrame())
    seeds = _seed_outcomes(entries)
    rows: list[dict[str, Any]] = []
    for c in claims:
        row: dict[str, Any] = {"claim": c.name, "statement": c.statement, "a": c.a, "b": c.b, "metric": c.metric,
                               "transform": c.transform, "magnitude": c.magnitude, "direction": c.direction,
                               "margin": c.margin, "declared": declared, "note": ""}
        ka, na, acc_a = seeds.get(c.a, (0, 0, float("nan")))
        kb, nb, acc_b = seeds.get(c.b, (0, 0, float("nan")))
        row.update(reached_a=f"{ka}/{na}", reached_b=f"{kb}/{nb}")
        notes = [f"{m}: {k} of {n} seeds reached the target; the comparison rests on the survivors"
                 for m, k, n in ((c.a, ka, na), (c.b, kb, nb)) if k < n]
        found, sign = _find(differences, c)
        untestable = ""
        if found is None:
            untestable = "not probed (no such pair, metric and condition in the report)"
        else:
            diff = sign * float(found["difference"])
            se, df = float(found["se"]), float(found["df_adjusted"])
            lo, hi = float(found["ci_low"]), float(found["ci_high"])
            if sign < 0:
                lo, hi = -hi, -lo
            row.update(difference=diff, ci_low=lo, ci_high=hi, se=se, df=df, test=str(found["test"]),
                       seeds_a=int(found["seeds_a" if sign > 0 else "seeds_b"]),
                       seeds_b=int(found["seeds_b" if sign > 0 else "seeds_a"]))
            at_chance = [m for m, acc in ((c.a, acc_a), (c.b, acc_b))
                         if n_classes and math.isfinite(acc) and acc - 1.0 / n_classes < CHANCE_MARGIN]
            if min(row["seeds_a"], row["seeds_b"]) < 2:
                untestable = "not testable: a model has fewer than 2 seeds"
            elif not math.isfinite(se) or not math.isfinite(df):
                untestable = "not testable: no standard error"
            elif at_chance:
                untestable = (f"not testable: {', '.join(at_chance)} at chance (clean accuracy within "
                              f"{100 * CHANCE_MARGIN:.0f} points of 1/{n_classes})")
            else:
                row["p_value"] = tost_p(diff, se, df, c.margin) if c.margin is not None else \
                    _two_sided(diff, se, df)
                row["test"] = ("TOST (Schuirmann 1987) on " if c.direction == "alike" else "") + row["test"]
        if untestable:
            row["verdict"] = untestable
        row["note"] = "; ".join(notes)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    if frame.empty:
        return frame
    p = pd.to_numeric(frame["p_value"], errors="coerce").to_numpy(float)
    frame["p_value"] = p
    frame["p_holm"] = holm(p)
    m = int(np.isfinite(p).sum())
    frame["family_size"] = m
    lows, highs, verdicts = [], [], []
    steps = _holm_steps(p)
    for i, r in frame.iterrows():
        if np.isfinite(p[i]):
            lo, hi = _adjusted_interval(r, steps[i] if frame.loc[i, "p_holm"] < ALPHA else m)
            verdict = _verdict(r, float(frame.loc[i, "p_holm"]), m)
        else:
            lo = hi = float("nan")
            verdict = str(r["verdict"])
        lows.append(lo)
        highs.append(hi)
        verdicts.append(verdict)
    frame["ci_low_adjusted"], frame["ci_high_adjusted"], frame["verdict"] = lows, highs, verdicts
    return frame


def _holm_steps(p: np.ndarray) -> np.ndarray:
    """Per hypothesis, the number ``m - rank`` Holm divides alpha by at its step (rank 0: the smallest p)."""
    ok = np.flatnonzero(np.isfinite(p))
    steps = np.full(len(p), len(ok), dtype=int)
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        steps[i] = len(ok) - rank
    return steps


def _adjusted_interval(r: pd.Series, m: int) -> tuple[float, float]:
    """The interval at the level the family's test used: Holm's step for a rejected claim (``alpha / (m - rank)``),
    Bonferroni's ``alpha / m`` otherwise (which then covers 0, as a claim Holm keeps has ``m p >= alpha``); for
    "alike" the ``1 - 2 alpha / m`` interval TOST reads. So the interval excludes 0 (or lies within the margin)
    exactly when the verdict is established."""
    alpha = ALPHA / max(m, 1)
    level = 1 - 2 * alpha if r["direction"] == "alike" else 1 - alpha
    half = float(stats.t.ppf(0.5 + level / 2, float(r["df"]))) * float(r["se"])
    return float(r["difference"]) - half, float(r["difference"]) + half


def _verdict(r: pd.Series, p_holm: float, m: int) -> str:
    d = float(r["difference"])
    if r["direction"] == "alike":
        if p_holm < ALPHA:
            return f"equivalent within {float(r['margin']):g}"
        if min(1.0, m * _two_sided(d, float(r["se"]), float(r["df"]))) < ALPHA:
            return "different"
        return "inconclusive"
    if p_holm >= ALPHA:
        return "inconclusive"
    return "supported" if (d > 0) == (r["direction"] == "greater") else "contradicted"


def study_table(reports: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The study-wide family: every report's claims (``{report name: claims table}``) in one Holm family.

    ``p_study`` is the Holm-adjusted p over every testable claim of every report, ``verdict_study`` the claim's
    verdict at that level (a claim established in its experiment's family may not survive the study's), and
    ``ci_low_study``/``ci_high_study`` its interval at its Holm step in the study's family (Bonferroni's level for a
    claim the family keeps), which excludes 0 (or lies inside an "alike" margin) exactly when it is decided."""
    frames = [f.assign(report=name) for name, f in reports.items() if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    study = pd.concat(frames, ignore_index=True)
    p = pd.to_numeric(study["p_value"], errors="coerce").to_numpy(float)
    study["p_study"] = holm(p)
    m = int(np.isfinite(p).sum())
    study["study_family_size"] = m
    study["verdict_study"] = [_verdict(r, float(study.loc[i, "p_study"]), m) if np.isfinite(p[i]) else str(r["verdict"])
                              for i, r in study.iterrows()]
    steps = _holm_steps(p)
    bounds = [_adjusted_interval(r, steps[i] if study.loc[i, "p_study"] < ALPHA else m) if np.isfinite(p[i])
              else (float("nan"), float("nan")) for i, r in study.iterrows()]
    study["ci_low_study"] = [lo for lo, _ in bounds]
    study["ci_high_study"] = [hi for _, hi in bounds]
    return study[STUDY_COLUMNS]
