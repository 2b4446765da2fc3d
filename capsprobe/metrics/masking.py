"""Gradient-masking checks of the white-box attacks (Athalye, Carlini & Wagner, ICML 2018, section 3.1; Carlini et
al. 2019, "On evaluating adversarial robustness"): a model whose attacks "fail" in one of these ways was measured
badly, not shown robust, and the report flags it instead of calling it robust.

Per run, on the probe's accuracies (the same images under every attack):

- ``falls to 0``: PGD at a radius of at least :data:`LARGE_EPS` leaves at most :data:`FALLS_TO` of the images
  correct (at 0.5 in [0, 1] pixels an attack that works can turn every image into the same grey);
- ``pgd >= fgsm``: at every radius both were run at, PGD's accuracy is at most FGSM's (an iterative attack from the
  same start is never weaker), also for the margin-loss pair;
- ``more steps``: ``pgd-long`` (5x the steps) is never weaker than ``pgd``;
- ``transfer <= white-box``: the black-box transfer attack (``pgd-transfer``, computed on a surrogate) never leaves
  fewer images correct than the white-box PGD.
- ``ensemble >= member``: the AutoAttack-style ensemble (``autoattack``, per image the worst of its members) is
  never weaker than any of its members (``apgd-ce``, ``apgd-t``, ``square``) probed at the same radius;
- ``square <= white-box``: Square, which uses no gradient, never leaves fewer images correct than the best white-box
  attack probed at the same radius (the one of lowest accuracy among :data:`WHITE_BOX`, named in ``versus``) by more
  than the tolerance: a gradient-free attack beating the gradient ones says their gradients mislead them;
- ``square falls to 0``: Square at :data:`SQUARE_EPS` (0.3, or the smallest radius above it that was probed) leaves
  at most :data:`FALLS_TO` of the images correct, as on undefended MNIST models (capsprobe trains no adversarial
  defence, so every run is held to it; at 0.3 a working attack breaks any undefended MNIST model).

Each comparison allows :data:`TOLERANCE` of accuracy (a few images of 2,000 that the stronger attack's own path
misses); a check that could not be made (the attacks it compares were not probed) gives no row.
"""

from __future__ import annotations

import pandas as pd

__all__ = [
    "FALLS_TO",
    "LARGE_EPS",
    "ENSEMBLE",
    "MASKING_COLUMNS",
    "SQUARE_EPS",
    "TOLERANCE",
    "WHITE_BOX",
    "masking_table",
]

LARGE_EPS = 0.5
FALLS_TO = 0.02
TOLERANCE = 0.005
SQUARE_EPS = 0.3
ENSEMBLE = ("apgd-ce", "apgd-t", "square")  # autoattack's members (capsprobe.transforms.gradient.ENSEMBLE)
WHITE_BOX = ("fgsm", "pgd", "pgd-long", "fgsm-margin", "pgd-margin", "apgd-ce", "apgd-dlr", "apgd-t")

MASKING_COLUMNS = ["model", "run", "check", "eps", "attack", "accuracy", "versus", "versus_accuracy", "passed"]

# (check, attack, versus, passes when attack's accuracy is <= versus's + TOLERANCE (True) or >= - TOLERANCE (False))
_PAIRS = (
    ("pgd >= fgsm", "pgd", "fgsm", True),
    ("pgd >= fgsm", "pgd-margin", "fgsm-margin", True),
    ("more steps", "pgd-long", "pgd", True),
    ("transfer <= white-box", "pgd-transfer", "pgd", False),
    *(("ensemble >= member", "autoattack", member, True) for member in ENSEMBLE),
)


def masking_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The checks' rows (:data:`MASKING_COLUMNS`) for every run with gradient attacks in ``metrics`` (tidy rows)."""
    acc = metrics[metrics["metric"] == "accuracy"]
    rows = []
    for run, sel in acc.groupby("run", sort=False):
        model = sel["model"].iloc[0]
        at = {(r.transform, float(r.magnitude_value)): float(r.value) for r in sel.itertuples(index=False)}
        big = sorted(e for t, e in at if t == "pgd" and e >= LARGE_EPS)
        if big:
            value = at[("pgd", big[-1])]
            rows.append({"model": model, "run": run, "check": "falls to 0", "eps": big[-1], "attack": "pgd",
                         "accuracy": value, "versus": "", "versus_accuracy": FALLS_TO, "passed": value <= FALLS_TO})
        for check, attack, versus, at_most in _PAIRS:
            for eps in sorted(e for t, e in at if t == attack and e > 0 and (versus, e) in at):
                a, b = at[(attack, eps)], at[(versus, eps)]
                passed = a <= b + TOLERANCE if at_most else a >= b - TOLERANCE
                rows.append({"model": model, "run": run, "check": check, "eps": eps, "attack": attack, "accuracy": a,
                             "versus": versus, "versus_accuracy": b, "passed": bool(passed)})
        for eps in sorted(e for t, e in at if t == "square" and e > 0):
            probed = [(at[(w, eps)], w) for w in WHITE_BOX if (w, eps) in at]
            if probed:
                best, name = min(probed, key=lambda p: p[0])  # ties: the first in WHITE_BOX
                a = at[("square", eps)]
                rows.append({"model": model, "run": run, "check": "square <= white-box", "eps": eps,
                             "attack": "square", "accuracy": a, "versus": name, "versus_accuracy": best,
                             "passed": a >= best - TOLERANCE})
        large = sorted(e for t, e in at if t == "square" and e >= SQUARE_EPS)
        if large:
            value = at[("square", large[0])]
            rows.append({"model": model, "run": run, "check": "square falls to 0", "eps": large[0], "attack": "square",
                         "accuracy": value, "versus": "", "versus_accuracy": FALLS_TO, "passed": value <= FALLS_TO})
    return pd.DataFrame(rows, columns=MASKING_COLUMNS)
