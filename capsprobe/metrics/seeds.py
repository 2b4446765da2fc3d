"""Failed seeds as an outcome: how many seeds reach the target, whether the seeds split in two, and what dropping the
failures does to a comparison.

An experiment trains every model with ``n`` seeds to a target accuracy; a run that stops without reaching it is a
*failed seed*. ``comparison.csv`` leaves failed runs out (the matched analysis: every model is compared on the runs
that trained). That answers "how do the models compare when they train", but hides how often a model trains at all,
and the survivors of a model whose low-accuracy seeds fail are a selected sample: they overstate the model's accuracy
(:func:`failing_seed_simulation`). Three things here:

- :func:`seed_outcomes`: per model, ``k`` of ``n`` seeds reaching the target, as a result with Clopper & Pearson's
  (1934) exact interval for the success rate, and a ``flag`` where any seed failed: that model's comparisons rest on
  its survivors;
- :func:`bimodality`: a gap test on per-seed outcomes (one seed far from the others: a training failure, not seed
  noise);
- :func:`failing_seed_simulation`: two models equal in population, one losing its low seeds with probability ``q``:
  the false-positive rate of the survivors-only analysis against the all-seeds one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .bounded import IMAGE_SD, REGIME_SEED_SDS, clopper_pearson, per_seed_text, simulate_correctness
from .stats import seed_image_difference

__all__ = ["SEED_OUTCOME_COLUMNS", "bimodality", "failing_seed_simulation", "reached", "seed_outcomes"]

SEED_OUTCOME_COLUMNS = [
    "model", "seeds", "reached", "target_accuracy", "rate", "ci_low", "ci_high", "failed_runs", "val_accuracies",
    "test_accuracies", "gap_p", "bimodal", "flag", "note",
]


def reached(entry: dict[str, Any]) -> bool:
    """Whether a run counts as reaching its target: no target (``target_accuracy`` None) counts as reached, and so does
    an unknown outcome; only ``reached_target`` False is a failure (the rule ``comparison_tables`` excludes by)."""
    return entry.get("target_accuracy") is None or entry.get("reached_target") is not False


@lru_cache(maxsize=32)
def _null_gaps(n: int, draws: int) -> np.ndarray:
    """Sorted null distribution of the largest gap over the range for ``n`` standard normal values (fixed seed)."""
    x = np.sort(np.random.default_rng([47, n]).standard_normal((draws, n)), axis=1)
    return np.sort(np.diff(x, axis=1).max(1) / (x[:, -1] - x[:, 0]))


def bimodality(values: Sequence[float | None], alpha: float = 0.05, min_gap: float = 0.0, draws: int = 100_000) -> dict:
    """A gap test: do the per-seed outcomes fall in two groups (a failure mode) rather than one spread?

    The statistic is the largest gap between sorted values over their range, ``Q = max(x_(i+1) - x_(i)) / (x_(n) -
    x_(1))``; its p-value is the share of ``draws`` samples of ``n`` normal values with a ``Q`` at least as large
    (Monte Carlo, fixed seed). For 3 values it is Dixon's (1950) Q test of an extreme value (Dean & Dixon 1951; its 95%
    critical value 0.970, Rorabacher 1991); from 4 values on it also finds two clusters of two or more. A split needs
    ``p < alpha`` and a gap of at least ``min_gap`` (on the values' scale: a practical size for a failure). Sarle's
    bimodality coefficient (SAS Institute 1990; Pfister et al. 2013) needs the sample kurtosis, which is not defined
    below 4 values, so it cannot serve the 3-seed experiments.

    What 3 seeds can and cannot show:

    - they can show one seed far from two that agree: at 5% the gap must be at least 97% of the range, i.e. the far
      seed at least 32 times as far from the pair as the pair's own spread ([0.99, 0.99, 0.11] is flagged;
      [0.98, 0.985, 0.99] is not);
    - they cannot show a failure mode that did not happen in them: a mode with rate ``q`` leaves all 3 seeds alone with
      probability ``(1 - q)^3`` (73% at ``q = 0.1``, 51% at ``q = 0.2``); 3 of 3 seeds reaching the target leaves a
      failure rate up to 71% (the Clopper-Pearson upper end);
    - they cannot tell which group is the failure (2 failed and 1 trained looks like 1 failed and 2 trained), nor a
      mode whose gap is comparable to the seed spread ([0.95, 0.96, 0.90] is not flagged), nor a model all of whose
      seeds fail alike (unimodal: that is what the k-of-n count reports).

    Args:
        values: per-seed outcomes ``(n,)`` (NaNs dropped).
        alpha: the level of the test.
        min_gap: the smallest gap that counts as a split.
        draws: Monte-Carlo draws of the null distribution.

    Returns:
        ``n``, ``statistic`` (Q), ``gap`` (the largest gap), ``split`` (the midpoint of that gap), ``low`` and ``high``
        (how many values fall below and above it), ``p_value`` and ``bimodal``; NaN statistic and p and ``bimodal``
        False for fewer than 3 values or values that are all equal.
    """
    x = np.sort(np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float))
    n = len(x)
    out: dict[str, Any] = {"n": n, "statistic": np.nan, "gap": np.nan, "split": np.nan, "low": 0, "high": 0,
                           "p_value": np.nan, "bimodal": False}
    if n < 3 or x[-1] == x[0]:
        return out
    gaps = np.diff(x)
    i = int(np.argmax(gaps))
    q = float(gaps[i] / (x[-1] - x[0]))
    null = _null_gaps(n, draws)
    p = (1 + (len(null) - np.searchsorted(null, q, side="left"))) / (len(null) + 1)
    out.update(statistic=q, gap=float(gaps[i]), split=float((x[i] + x[i + 1]) / 2), low=i + 1, high=n - i - 1,
               p_value=float(p), bimodal=bool(p < alpha and gaps[i] >= min_gap))
    return out


def seed_outcomes(entries: Sequence[dict[str, Any]], level: float = 0.95, min_gap: float = 0.05) -> pd.DataFrame:
    """Per model, ``k`` of ``n`` seeds reaching the target, with the exact interval of the success rate.

    Args:
        entries: the manifest's run entries (``name``, ``model``, ``seed``, ``target_accuracy``, ``reached_target``,
            ``val_accuracy``, ``test_accuracy``, ``epochs``); a run without a target counts as reaching it
            (:func:`reached`).
        level: the level of the Clopper-Pearson interval.
        min_gap: the smallest gap between per-seed test accuracies that :func:`bimodality` calls a split (5 points:
            the seeds of one recipe in the committed reports spread by at most 3).

    Returns:
        One row per model in order of appearance, :data:`SEED_OUTCOME_COLUMNS`: ``seeds`` (n), ``reached`` (k),
        ``rate`` (k / n) with ``ci_low``/``ci_high``, the failed runs' names, every seed's validation and test accuracy
        (:func:`capsprobe.metrics.bounded.per_seed_text`), the gap test on the test accuracies (``gap_p``,
        ``bimodal``), ``flag`` (a seed failed: the model's comparisons rest on its survivors) and a ``note`` saying so.
    """
    rows = []
    models = list(dict.fromkeys(e.get("model") for e in entries))
    for model in models:
        runs = [e for e in entries if e.get("model") == model]
        n = len(runs)
        ok = [reached(e) for e in runs]
        k = int(sum(ok))
        lo, hi = clopper_pearson(k, n, level)
        targets = list(dict.fromkeys(e.get("target_accuracy") for e in runs if e.get("target_accuracy") is not None))
        target = targets[0] if len(targets) == 1 else ("/".join(map(str, targets)) if targets else None)
        test = [e.get("test_accuracy") for e in runs]
        gap = bimodality([v for v in test if v is not None], min_gap=min_gap)
        if k == n:
            note = ""
        elif k == 0:
            note = f"0 of {n} seeds reached {target}: no comparison"
        else:
            note = f"{k} of {n} seeds reached {target}: its comparisons rest on the survivor{'s' if k > 1 else ''}"
        rows.append({"model": model, "seeds": n, "reached": k, "target_accuracy": target, "rate": k / n,
                     "ci_low": float(lo), "ci_high": float(hi),
                     "failed_runs": ",".join(str(e.get("name")) for e, r in zip(runs, ok) if not r),
                     "val_accuracies": per_seed_text([e.get("val_accuracy") for e in runs], ".4f"),
                     "test_accuracies": per_seed_text(test, ".4f"), "gap_p": gap["p_value"],
                     "bimodal": gap["bimodal"], "flag": k < n, "note": note})
    return pd.DataFrame(rows, columns=SEED_OUTCOME_COLUMNS)


def _alive(seed_effects: np.ndarray, q: float, seed_sd: float, selection: str, rng: np.random.Generator) -> np.ndarray:
    """Which seeds survive ``(reps, S)`` of ``seed_effects (reps, S, 1)``: ``"low"`` fails those below the ``q``
    quantile of N(0, seed_sd^2), ``"random"`` each with probability ``q``."""
    if selection == "low":
        return seed_effects[..., 0] >= seed_sd * stats.norm.ppf(q)
    if selection == "random":
        return rng.random(seed_effects.shape[:-1]) >= q
    raise ValueError(f"failing_seed_simulation: selection is 'low' or 'random', got {selection!r}")


def failing_seed_simulation(seeds: Sequence[int] = (3, 5), fail_probs: Sequence[float] = (0.1, 0.33, 0.5),
                            regimes: Sequence[str] = ("comparable", "seed_dominant"),
                            selections: Sequence[str] = ("low", "random"), reps: int = 20000, images: int = 300,
                            mu: float = 2.0, family: int = 51, alpha: float = 0.05, seed: int = 0,
                            chunk: int = 2000) -> pd.DataFrame:
    """False positives when one model's seeds sometimes fail: survivors only against all seeds.

    Two models with the same population accuracy (:func:`capsprobe.metrics.bounded.simulate_correctness`, both at
    ``mu`` on the logit scale, sharing the images' difficulty, seed sd of the regime) are trained with ``S`` seeds each.
    Model A's seeds fail with probability ``q``:

    - ``selection="low"``: a seed fails when its seed effect is below the ``q`` quantile of the seed distribution (the
      low-accuracy seeds miss the target, as a target accuracy selects them);
    - ``selection="random"``: a seed fails with probability ``q`` whatever its accuracy (the control).

    The *survivors* analysis compares A's surviving seeds with all of B's (what ``comparison_tables`` does after leaving
    the failed runs out; with one survivor A borrows B's seed variance; with none there is no test), the *all-seeds*
    analysis every seed of A with every seed of B. Both by :func:`capsprobe.metrics.stats.seed_image_difference`: the
    5% test on Satterthwaite df and the ``alpha / family`` test on the seed df (what Holm's correction uses).

    What it found (20,000 replicates, 300 images, ``mu`` 2, q 0.1-0.5, 3 and 5 seeds): the all-seeds test keeps its
    level (4.5-5.4% at 5%, 0.01-0.10% at 0.098%); with random failures the survivors-only test does too (3.6-5.8%);
    with the low seeds failing it rejects up to 10.0% at 5% and 0.18% at 0.098% (seed-dominant, 5 seeds, q = 0.5;
    3 seeds: up to 7.0% and 0.06%), growing with the seed variance, q and the number of seeds (at 3 seeds the
    one-survivor cases borrow B's seed variance on B's 2 df, a conservative far tail). The survivors of a selected set
    bias the comparison by about their truncated seed mean; its size in a real experiment depends on how much of the
    seed spread the target cuts.

    Returns:
        One row per regime x seeds x q x selection: ``testable`` (share of replicates with a survivor),
        ``one_survivor``, ``mean_survivors``, ``fpr_survivors`` and ``fpr_all`` at ``alpha``,
        ``fpr_tail_survivors`` and ``fpr_tail_all`` at ``alpha / family`` (untestable replicates count as not
        rejecting), and the Monte-Carlo standard errors at the nominal rates. Deterministic given ``seed``.
    """
    tail = alpha / family
    rows = []
    for r, name in enumerate(regimes):
        seed_sd = REGIME_SEED_SDS[name]
        if seed_sd == 0 and "low" in selections:
            raise ValueError(f"failing_seed_simulation: regime {name!r} has no seed variance to select on")
        for s in seeds:
            for qi, q in enumerate(fail_probs):
                for selection in selections:
                    rng = np.random.default_rng([seed, r, s, qi, selections.index(selection)])
                    counts = {"survivors": 0, "all": 0, "tail_survivors": 0, "tail_all": 0, "testable": 0, "one": 0}
                    survivors_total = 0
                    for start in range(0, reps, chunk):
                        m = min(chunk, reps - start)
                        c = rng.normal(0, IMAGE_SD, (m, 1, images))  # the difficulty both models share
                        a_eff = rng.normal(0, seed_sd, (m, s, 1))
                        a = simulate_correctness(mu, seed_sd, s, images, m, rng, difficulty=c, seed_effects=a_eff)
                        b = simulate_correctness(mu, seed_sd, s, images, m, rng, difficulty=c)
                        alive = _alive(a_eff, q, seed_sd, selection, rng)  # (m, S)
                        full = seed_image_difference(a, b)
                        counts["all"] += int((full.p_value() < alpha).sum())
                        counts["tail_all"] += int((full.tail_p_value() < tail).sum())
                        k = alive.sum(1)
                        order = np.argsort(~alive, axis=1, kind="stable")  # survivors first
                        a_sorted = np.take_along_axis(a, order[:, :, None], 1)
                        survivors_total += int(k.sum())
                        counts["testable"] += int((k > 0).sum())
                        counts["one"] += int((k == 1).sum())
                        for j in range(1, s + 1):
                            sel = k == j
                            if not sel.any():
                                continue
                            est = seed_image_difference(a_sorted[sel, :j], b[sel])
                            counts["survivors"] += int((est.p_value() < alpha).sum())
                            counts["tail_survivors"] += int((est.tail_p_value() < tail).sum())
                    rows.append({"regime": name, "seeds": s, "fail_prob": q, "selection": selection, "reps": reps,
                                 "testable": counts["testable"] / reps, "one_survivor": counts["one"] / reps,
                                 "mean_survivors": survivors_total / reps,
                                 "fpr_survivors": counts["survivors"] / reps, "fpr_all": counts["all"] / reps,
                                 "fpr_tail_survivors": counts["tail_survivors"] / reps,
                                 "fpr_tail_all": counts["tail_all"] / reps,
                                 "mc_se": float(np.sqrt(alpha * (1 - alpha) / reps)),
                                 "mc_se_tail": float(np.sqrt(tail * (1 - tail) / reps))})
    return pd.DataFrame(rows)
