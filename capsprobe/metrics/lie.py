"""The Lie-derivative metrics (Gruver et al., ICLR 2023): score and representation terms, composition, subspaces."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV

from .functional import PENALTIES, _grouped_split, _np, _pair, _pca, _scale, linear_fit

__all__ = [
    "composition_terms",
    "generator_terms",
    "lie_score_values",
    "subspace_project",
]

# --- Lie derivative (Gruver et al. 2022) ------------------------------------------------------------------------


def lie_score_values(dscores) -> np.ndarray:
    """Per image, the mean over classes of ``|d/dt s_k(g_t x)|`` at ``t = 0``: the end-to-end Local Equivariance
    Error of Gruver, Finzi, Goldblum & Wilson, "The Lie derivative for measuring learned equivariance" (ICLR 2023,
    their ``lee/e2e_lee.py``: the absolute derivative of the class probabilities, averaged over classes, then over
    images). 0 for a decision that does not move at all under the infinitesimal transformation."""
    d = _np(dscores)
    if d.ndim != 2:
        raise ValueError(f"score derivatives must be (N, K), got {d.shape}")
    return np.abs(d).mean(1)


def generator_terms(phi_clean, dphi, seed: int = 0, fit_fraction: float = 0.5, groups=None,
                    split: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The equivariant Lie derivative: fit the generator ``d/dt phi(g_t x) ~ A phi(x) + b`` (the standardised ridge
    fit of :func:`linear_fit`, on the fitting half, per group) and score it on held-out images.

    Returns:
        ``(held, residual, energy)``: held-out indices, ``|dphi - A phi - b|^2`` and ``|dphi|^2`` per held-out
        image, both divided by the representation's mean per-dimension variance. ``sum(residual) / sum(energy)``
        is 0 when one linear action explains the representation's infinitesimal change (an equivariant
        representation, Lenc & Vedaldi's criterion in Lie-algebra form) and about 1 when the fit does no better
        than predicting no change. Gruver et al. score non-image outputs for
        invariance only; this is the part their method cannot measure for pose vectors.
    """
    x, d = _pair(phi_clean, dphi, same_width=True)
    fit = linear_fit(x, d, seed, fit_fraction, groups, split=split)
    s2 = _scale(x) ** 2  # in units of the representation's own spread, so the ratio's floor is scale-free
    return fit.held, fit.residual / s2, (d[fit.held] ** 2).sum(1) / s2


def composition_terms(phi_clean, moved: dict, a: float, b: float, seed: int = 0, fit_fraction: float = 0.5,
                      groups=None, split: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Do the fitted maps compose like the group? ``M_a``, ``M_b`` and ``M_{a+b}`` are affine ridge fits
    ``phi(T_a x) ~ M_a phi(x) + c_a`` (:data:`PENALTIES`, chosen by leave-one-out on the fitting half), all in one
    frame: every representation is centred and divided by the root mean variance of the *clean* fitting half (per
    group), so ``M_b`` can be applied to what ``M_a`` predicts. ``T_{a+b} = T_b T_a`` for rotations about one
    centre, so a representation that carries the group's action has ``M_{a+b} = M_b M_a``; a lookup table of
    unrelated maps does not.

    Args:
        phi_clean: ``(N, D)`` clean representations.
        moved: ``{magnitude: (N, D)}`` representations of the transformed images; must hold ``a``, ``b``, ``a+b``.
        split: ``(fit, held)`` indices to use instead of :func:`split_halves` (e.g. split by object instance).

    Returns:
        Per held-out image: ``|M_{a+b} z - M_b M_a z|^2``, ``|M_{a+b} z|^2`` (the issue's normaliser: the ratio
        of sums is ``|M_{a+b} - M_b M_a| / |M_{a+b}|`` on held-out images, squared) and ``|M_{a+b} z - z|^2``
        (the movement the composed map should reproduce; the ratio to it is 0 for a group action and has no
        meaning for a representation that does not move).
    """
    x = _np(phi_clean)
    for m in (a, b, a + b):
        if m not in moved:
            raise ValueError(f"composition needs the representation at magnitude {m}")
    n = len(x)
    if n < 4:
        raise ValueError(f"composition needs at least 4 images, got {n}")
    g, fit, held = _grouped_split(n, seed, fit_fraction, groups, split)
    diff, norm, move = np.empty(len(held)), np.empty(len(held)), np.empty(len(held))
    pos = {i: k for k, i in enumerate(held)}
    for group in np.unique(g):
        f, h = fit[g[fit] == group], held[g[held] == group]
        if len(h) == 0:
            continue
        mu, sc = x[f].mean(0), _scale(x[f])
        frame = {m: (_np(moved[m]) - mu) / sc for m in (a, b, a + b)}
        z = (x - mu) / sc
        maps = {m: RidgeCV(alphas=PENALTIES * len(f)).fit(z[f], frame[m][f]) for m in (a, b, a + b)}
        direct = maps[a + b].predict(z[h]).reshape(len(h), -1)
        composed = maps[b].predict(maps[a].predict(z[h]).reshape(len(h), -1)).reshape(len(h), -1)
        idx = [pos[i] for i in h]
        diff[idx] = ((direct - composed) ** 2).sum(1)
        norm[idx] = (direct ** 2).sum(1)
        move[idx] = ((direct - z[h]) ** 2).sum(1)
    return diff, norm, move


def subspace_project(act_clean, dact, dim: int = 32, fit: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's activations and their Lie derivatives on the top ``dim`` principal axes of the clean activations
    of the fitting images ``fit`` (scikit-learn PCA), so that layers of 100,000 dimensions are measured on the same
    footing as 16-D poses. The derivative is projected without the mean (it is a tangent vector).

    Returns:
        ``(scores, dscores, kept)``: ``(N, dim)`` projections and, per image, ``|P dact|^2 / |dact|^2`` summed as
        the share of the derivative's energy the subspace holds (``kept`` is ``(|P dact|^2, |dact|^2)`` stacked,
        ``(2, N)``). A layer of ``dim`` or fewer dimensions is returned as it is.
    """
    x, d = _pair(act_clean, dact, same_width=True)
    pca = _pca(x, dim, fit)
    if pca is None:
        energy = (d ** 2).sum(1)
        return x, d, np.stack([energy, energy])
    xs, ds = pca.transform(x), d @ pca.components_.T
    return xs, ds, np.stack([(ds ** 2).sum(1), (d ** 2).sum(1)])
