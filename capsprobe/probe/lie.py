"""Lie derivatives of a model along one-parameter transformations, and where in the network equivariance is lost.

Gruver, Finzi, Goldblum & Wilson, "The Lie derivative for measuring learned equivariance" (ICLR 2023; code
ngruver/lie-deriv): for a one-parameter group ``g_t`` acting on images, the Lie derivative of an output ``f`` is
``L f(x) = d/dt f(g_t x)`` at ``t = 0``, and its average over images, the Local Equivariance Error (LEE), measures
how far ``f`` is from invariant to ``g``. This module adds what their method cannot measure for outputs that are not
images (pose vectors): a fitted generator ``A`` with ``L phi(x) ~ A phi(x) + b`` (the equivariant LEE), whether the
finite maps of :func:`capsprobe.metrics.linear_fit` compose like the group, and both measures per layer.

How the derivative is computed: ``d/dt f(g_t x) = J_f(x) . w'(0)``, where ``w(t) = warp(x, g_t)`` is the suite's own
warp (:func:`capsprobe.transforms.apply_matrix`: kornia ``warp_affine``, bilinear, zero fill, ``align_corners``). The
warp's tangent ``w'(0)`` is its symmetric derivative (:func:`warp_tangent` says why not autograd's one-sided one;
PyTorch has no forward-mode rule for ``grid_sampler_2d`` either); the model's Jacobian-vector product is forward mode
(:func:`torch.func.jvp`), one pass that also carries every tapped layer. Gruver et al. use the double-backward trick
through the sampler instead, and name the pixel grid's discretisation a source of measured equivariance error.
Everything runs in float32 without autocast, TF32 off.

Generators and units (the suite's conventions, :mod:`capsprobe.transforms`): ``rotate`` per degree
(counter-clockwise on screen, about the centre), ``translate-x`` / ``translate-y`` per pixel (right / down),
``scale`` per unit of log factor (``e^t`` about the centre), ``shear`` per unit of ``k`` (``x' = x + k (y - cy)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import metrics as M
from ..data import ImageSplit, iterate_batches
from ..errors import InvalidInputError
from ..models.adapter import Adapter, unwrap
from ..runtime import tf32_off
from ..transforms import get_transform, rotation_matrix, shear_matrix

__all__ = [
    "lie_manifest",
    "COMPOSITION_ANGLES",
    "GENERATORS",
    "Generator",
    "LieResult",
    "generator_matrix",
    "get_generator",
    "layer_taps",
    "lie_pass",
    "lie_tables",
    "velocity",
    "warp_tangent",
]

COMPOSITION_ANGLES = (-30.0, -15.0, 15.0, 30.0)  # a, b of the composition grid (degrees): a + b spans -60..60
LAYER_DIM = 32  # principal axes per layer for the profile
LAYER_IMAGES = 256  # images of the per-layer profile (activations of 10^5 dimensions are kept in memory)


@dataclass(frozen=True)
class Generator:
    """A one-parameter subgroup of the plane's affine maps, about the image centre.

    Attributes:
        name: the table's ``generator`` column.
        unit: what ``t = 1`` is.
        linear: ``t (scalar tensor) -> (2, 2)`` linear part (about the centre).
        shift: ``t -> (2,)`` translation, or None.
    """

    name: str
    unit: str
    linear: Callable[[Tensor], Tensor]
    shift: Callable[[Tensor], Tensor] | None = None


def _eye2(t: Tensor) -> Tensor:
    return torch.eye(2, dtype=t.dtype, device=t.device)


GENERATORS: dict[str, Generator] = {g.name: g for g in (
    Generator("rotate", "degree", rotation_matrix),
    Generator("translate-x", "pixel", _eye2, lambda t: torch.stack([t, torch.zeros_like(t)])),
    Generator("translate-y", "pixel", _eye2, lambda t: torch.stack([torch.zeros_like(t), t])),
    Generator("scale", "log factor", lambda t: torch.exp(t) * _eye2(t)),
    Generator("shear", "shear k", shear_matrix),
)}


def get_generator(name: str) -> Generator:
    try:
        return GENERATORS[name]
    except KeyError:
        raise InvalidInputError(f"unknown Lie generator {name!r}; known: {', '.join(GENERATORS)}") from None


def generator_matrix(generator: Generator | str, t: Tensor, height: int, width: int) -> Tensor:
    """``(3, 3)`` pixel-coordinate matrix of ``g_t`` (input to output coordinates, as
    :func:`capsprobe.transforms.apply_matrix` takes), built out of place so that it is differentiable in ``t``."""
    g = get_generator(generator) if isinstance(generator, str) else generator
    t = torch.as_tensor(t, dtype=torch.float32)
    lin = g.linear(t)
    c = t.new_tensor([(width - 1) / 2, (height - 1) / 2])
    offset = c - lin @ c
    if g.shift is not None:
        offset = offset + g.shift(t)
    top = torch.cat([lin, offset.unsqueeze(1)], 1)
    return torch.cat([top, t.new_tensor([[0.0, 0.0, 1.0]])], 0)


def velocity(generator: Generator | str, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """The generator's vector field ``v(p) = d/dt g_t(p)`` at ``t = 0`` on the pixel grid, ``(2, H, W)`` (x, y
    components in pixels per unit of ``t``), from the derivative of :func:`generator_matrix` (autograd)."""
    mdot = torch.autograd.functional.jacobian(lambda t: generator_matrix(generator, t, height, width),
                                              torch.zeros(()))
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    vx = mdot[0, 0] * xs + mdot[0, 1] * ys + mdot[0, 2]
    vy = mdot[1, 0] * xs + mdot[1, 1] * ys + mdot[1, 2]
    return torch.stack([vx, vy]).to(device)


def warp_tangent(images: Tensor, generator: Generator | str) -> Tensor:
    """``d/dt warp(images, g_t)`` at ``t = 0``, ``(B, C, H, W)``: the images' infinitesimal motion under ``g``.

    The warp is the suite's (:func:`capsprobe.transforms.apply_matrix`, kornia ``warp_affine``, bilinear, zero fill)
    and ``warp(x, g_t)(p) = x(g_t^-1 p)``, so the tangent is ``-grad x(p) . v(p)``. At ``t = 0`` bilinear sampling
    sits on the pixel grid, where it has a kink: the left and right derivatives in ``t`` are backward and forward
    pixel differences. Autograd through the sampler returns one of the two per pixel as float rounding of the
    sampling grid decides (on a random 28x28 image: the forward difference at 88% of pixels, the backward at 12%),
    which would make the measure depend on rounding. This is the *symmetric* derivative, ``lim (warp(x, g_h) -
    warp(x, g_-h)) / 2h``: central pixel differences, zero outside the frame, the tests check it against the kornia
    warp by central differences in ``t``. A blob right of the centre gets a positive tangent above it under
    ``rotate`` (counter-clockwise on screen) and on its right under ``translate-x``."""
    x = images.float()
    h, w = x.shape[-2:]
    v = velocity(generator, h, w, x.device)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return -(gx * v[0] + gy * v[1])


# --- layers -------------------------------------------------------------------------------------------------------

Tap = Callable[[Tensor, tuple, Any], dict[str, Tensor]]  # (module output, module inputs, module) -> named tensors


def _output_tap(name: str) -> Tap:
    """A tap that reads a module's output as it is, under ``name``."""
    def tap(out: Tensor, inputs: tuple, module: Any) -> dict[str, Tensor]:
        return {name: out.clone()}
    return tap


def layer_taps(model: nn.Module) -> list[tuple[str, nn.Module, Tap]]:
    """The layers a per-layer profile reads, in depth order, as ``(name, module, tap)`` for a forward hook.

    A model that publishes ``probe_taps()`` (CapsNet: ``conv1`` after its ReLU, the primary capsules, the votes and
    the class capsules after each routing iteration) is read through it. Otherwise the modules of timm's
    ``feature_info`` (stem and each stage; the paper CNN's convolution stages), each output as it is. Others: none
    (the probe's representation alone)."""
    m = unwrap(model)
    own = getattr(m, "probe_taps", None)
    if callable(own):
        return list(own())
    info = getattr(m, "feature_info", None)
    entries = info if isinstance(info, list) else getattr(info, "info", None)
    taps: list[tuple[str, nn.Module, Tap]] = []
    modules = dict(m.named_modules())
    for entry in entries or []:
        name = entry.get("module") if isinstance(entry, dict) else None
        if isinstance(name, str) and name in modules:
            taps.append((name, modules[name], _output_tap(name)))
    return taps


# --- passes -------------------------------------------------------------------------------------------------------


@dataclass
class LiePass:
    """One model's outputs and their Lie derivatives along one generator, over a split."""

    scores: np.ndarray  # (N, K)
    dscores: np.ndarray
    rep: np.ndarray  # (N, F)
    drep: np.ndarray
    pose: np.ndarray | None  # (N, D) the true class's pose (capsule models)
    dpose: np.ndarray | None
    layers: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (activations, derivatives) of the first images


def lie_pass(adapter: Adapter, split: ImageSplit, generator: Generator | str, batch_size: int = 128,
             device: torch.device | str = "cpu", layers: bool = False, layer_images: int = LAYER_IMAGES) -> LiePass:
    """The Lie derivatives of class scores, representation, true-class pose and (with ``layers``) every tapped
    layer of the first ``layer_images`` images, along ``generator``."""
    from torch.func import jvp

    g = get_generator(generator) if isinstance(generator, str) else generator
    device = torch.device(device)
    taps = layer_taps(adapter.model) if layers else []
    out: dict[str, list] = {k: [] for k in ("scores", "dscores", "rep", "drep", "pose", "dpose")}
    layer_out: dict[str, list] = {}
    seen = 0
    captured: dict[str, Tensor] = {}
    handles = []

    def hook_for(tap: Tap):
        def hook(module, inputs, output):
            if capture[0]:
                captured.update(tap(output, inputs, module))
        return hook

    capture = [False]
    for _, module, tap in taps:
        handles.append(module.register_forward_hook(hook_for(tap)))
    try:
        with torch.no_grad():
            for images, labels in iterate_batches(split, batch_size, device=device):
                x = images.float()
                tangent = warp_tangent(x, g)
                rows = torch.arange(labels.shape[0], device=device)
                capture[0] = bool(taps) and seen < layer_images
                keep = min(labels.shape[0], max(layer_images - seen, 0))
                names: list[str] = []

                def f(inp: Tensor):
                    captured.clear()
                    o = adapter.outputs(inp)
                    extra = (o.poses[rows, labels].float(),) if o.poses is not None else ()
                    names[:] = list(captured)
                    return (o.scores.float(), o.representation.float(), *extra,
                            *(captured[n].flatten(1)[:keep].float() for n in names))

                primal, dual = jvp(f, (x,), (tangent,))  # type: ignore[misc]  # f returns a tuple
                captured.clear()
                out["scores"].append(primal[0].cpu())
                out["dscores"].append(dual[0].cpu())
                out["rep"].append(primal[1].cpu())
                out["drep"].append(dual[1].cpu())
                k = len(primal) - len(names)  # scores, representation and, for a model with poses, the pose
                if k == 3:
                    out["pose"].append(primal[2].cpu())
                    out["dpose"].append(dual[2].cpu())
                for i, name in enumerate(names):
                    layer_out.setdefault(name, []).append((primal[k + i].cpu().numpy(), dual[k + i].cpu().numpy()))
                seen += labels.shape[0]
    finally:
        for h in handles:
            h.remove()

    def cat(key):
        return torch.cat(out[key]).double().numpy() if out[key] else None

    layer_arrays = {n: (np.concatenate([a for a, _ in v]), np.concatenate([d for _, d in v]))
                    for n, v in layer_out.items()}
    return LiePass(scores=cat("scores"), dscores=cat("dscores"), rep=cat("rep"), drep=cat("drep"), pose=cat("pose"),
                   dpose=cat("dpose"), layers=layer_arrays)


def _representations(adapter: Adapter, split: ImageSplit, angle: float, batch_size: int,
                     device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """Representation and true-class pose of every image rotated by ``angle`` (the suite's ``rotate``)."""
    rotate = get_transform("rotate")
    reps, poses = [], []
    with torch.inference_mode():
        for images, labels in iterate_batches(split, batch_size, device=device):
            moved = rotate(images.float(), angle).images if angle != 0 else images.float()
            o = adapter.outputs(moved)
            reps.append(o.representation.float().cpu())
            if o.poses is not None:
                poses.append(o.poses[torch.arange(labels.shape[0], device=device), labels].float().cpu())
    return torch.cat(reps).double().numpy(), (torch.cat(poses).double().numpy() if poses else None)


# --- tables -------------------------------------------------------------------------------------------------------

LIE_COLUMNS = ["model", "run", "seed", "generator", "unit", "metric", "value", "ci_low", "ci_high", "n_images"]
LAYER_COLUMNS = ["model", "run", "seed", "generator", "layer", "depth", "dim", "lee", "lee_low", "lee_high", "elee",
                 "elee_low", "elee_high", "kept", "n_images"]
COMPOSITION_COLUMNS = ["model", "run", "seed", "transform", "which", "a", "b", "composition_error",
                       "composition_error_low", "composition_error_high", "composition_error_moved",
                       "composition_error_moved_low", "composition_error_moved_high", "n_images"]


@dataclass
class LieResult:
    """The three tables of the Lie probe: ``lie`` (end to end), ``lie_layers`` (profile) and ``composition``."""

    lie: pd.DataFrame
    layers: pd.DataFrame
    composition: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"lie": self.lie, "lie_layers": self.layers, "composition": self.composition}


def _ratio_row(num: np.ndarray, den: np.ndarray, seed: int, n_boot: int) -> tuple[float, float, float]:
    if den.sum() <= M.FLOOR:  # nothing moves: an equivariance ratio has no meaning
        return float("nan"), float("nan"), float("nan")
    lo, hi = M.bootstrap_ratio_ci(num, den, n_boot, seed)
    return float(M.ratio(num, den)), lo, hi


def end_to_end_rows(ident: dict, generator: Generator, p: LiePass, labels: np.ndarray, seed: int,
                    n_boot: int) -> list[dict]:
    """The ``lie`` table's rows of one model and generator."""
    base = {**ident, "generator": generator.name, "unit": generator.unit}
    rows = []
    per_image = M.lie_score_values(p.dscores)
    lo, hi = M.bootstrap_mean_ci(per_image, n_boot, seed)
    rows.append({**base, "metric": "lee_scores", "value": float(per_image.mean()), "ci_low": lo, "ci_high": hi,
                 "n_images": len(per_image)})
    sets: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]] = [("representation", p.rep, p.drep, None)]
    if p.pose is not None:
        sets.append(("pose", p.pose, p.dpose, labels))
    for which, phi, dphi, groups in sets:
        num, den = M.whitened_terms(phi, dphi, seed, groups=groups)
        value, lo, hi = _ratio_row(num, den, seed, n_boot)
        rows.append({**base, "metric": f"lee_{which}", "value": value, "ci_low": lo, "ci_high": hi,
                     "n_images": len(num)})
        held, residual, energy = M.generator_terms(phi, dphi, seed, groups=groups)
        value, lo, hi = _ratio_row(residual, energy, seed, n_boot)
        rows.append({**base, "metric": f"elee_{which}", "value": value, "ci_low": lo, "ci_high": hi,
                     "n_images": len(held)})
    # models compared at one size: the 16-D PCA of the clean representation (fitting half), as issue 8's *_pca16
    fit, _ = M.split_halves(len(p.rep), seed)
    xs, ds, _ = M.subspace_project(p.rep, p.drep, 16, fit)
    held, residual, energy = M.generator_terms(xs, ds, seed)
    value, lo, hi = _ratio_row(residual, energy, seed, n_boot)
    rows.append({**base, "metric": "elee_representation_pca16", "value": value, "ci_low": lo, "ci_high": hi,
                 "n_images": len(held)})
    return rows


def layer_rows(ident: dict, generator: Generator, p: LiePass, seed: int, n_boot: int,
               dim: int = LAYER_DIM) -> list[dict]:
    """The ``lie_layers`` rows: per tapped layer (then the representation), the whitened LEE and the equivariant
    LEE on the layer's top ``dim`` principal axes, and the share of the derivative's energy those axes hold."""
    rows = []
    layers = list(p.layers.items())
    n = len(layers[0][1][0]) if layers else min(len(p.rep), LAYER_IMAGES)
    layers.append(("representation", (p.rep[:n], p.drep[:n])))
    for depth, (name, (act, dact)) in enumerate(layers):
        fit, _ = M.split_halves(len(act), seed)
        xs, ds, kept = M.subspace_project(act, dact, dim, fit)
        num, den = M.whitened_terms(xs, ds, seed)
        lee, lee_lo, lee_hi = _ratio_row(num, den, seed, n_boot)
        held, residual, energy = M.generator_terms(xs, ds, seed)
        elee, elee_lo, elee_hi = _ratio_row(residual, energy, seed, n_boot)
        rows.append({**ident, "generator": generator.name, "layer": name, "depth": depth, "dim": int(act.shape[1]),
                     "lee": lee, "lee_low": lee_lo, "lee_high": lee_hi, "elee": elee, "elee_low": elee_lo,
                     "elee_high": elee_hi, "kept": float(M.ratio(kept[0], kept[1])), "n_images": len(held)})
    return rows


def composition_rows(ident: dict, clean: tuple, moved: dict, angles: Sequence[float], labels: np.ndarray, seed: int,
                     n_boot: int) -> list[dict]:
    """The ``composition`` rows: every (a, b) of ``angles`` for the representation (and the true-class pose)."""
    rows = []
    sets = [("representation", 0, None)] + ([("pose", 1, labels)] if clean[1] is not None else [])
    for which, k, groups in sets:
        phis = {m: v[k] for m, v in moved.items()}
        for a in angles:
            for b in angles:
                diff, norm, move = M.composition_terms(clean[k], phis, a, b, seed, groups=groups)
                err, lo, hi = _ratio_row(diff, norm, seed, n_boot)
                # a + b = 0: M_0 is the identity and there is no movement to normalise by
                moved_err, mlo, mhi = _ratio_row(diff, move, seed, n_boot) if a + b != 0 else (math.nan,) * 3
                rows.append({**ident, "transform": "rotate", "which": which, "a": a, "b": b,
                             "composition_error": math.sqrt(err), "composition_error_low": math.sqrt(lo),
                             "composition_error_high": math.sqrt(hi), "composition_error_moved": math.sqrt(moved_err),
                             "composition_error_moved_low": math.sqrt(mlo),
                             "composition_error_moved_high": math.sqrt(mhi), "n_images": len(diff)})
    return rows


@tf32_off()
def lie_tables(subjects: Sequence[tuple[dict, Adapter]], split: ImageSplit,
               generators: Sequence[str] = tuple(GENERATORS), *, angles: Sequence[float] = COMPOSITION_ANGLES,
               layers: bool = True, layer_images: int = LAYER_IMAGES, batch_size: int = 128,
               device: torch.device | str = "cpu", seed: int = 0, n_boot: int = 1000,
               progress: Callable[[str], None] | None = None) -> LieResult:
    """The Lie probe of every subject ``(ident, adapter)``: end-to-end LEE (scores, representation, pose) per
    generator, the per-layer profile and the composition grid of rotations.

    Args:
        subjects: the identifying columns (``model``, ``run``, ``seed``) and an adapter on ``device``, in eval mode.
        split: the images; at least 8 (two halves of 4).
        generators: names of :data:`GENERATORS`.
        angles: the composition grid's ``a`` and ``b`` (degrees); every ``a + b`` is probed too.
        layers: measure the per-layer profile (on the first ``layer_images`` images).
    """
    chosen = [get_generator(g) for g in generators]
    if len(split) < 8:
        raise InvalidInputError(f"the Lie probe needs at least 8 images, got {len(split)}")
    labels = split.labels.numpy()
    device = torch.device(device)
    lie_rows, layer_out, comp_rows = [], [], []
    needed = sorted({0.0, *angles, *(a + b for a in angles for b in angles)})
    for ident, adapter in subjects:
        for g in chosen:
            if progress:
                progress(f"{ident['run']} lie {g.name}")
            p = lie_pass(adapter, split, g, batch_size, device, layers=layers, layer_images=layer_images)
            lie_rows += end_to_end_rows(ident, g, p, labels, seed, n_boot)
            if layers:
                layer_out += layer_rows(ident, g, p, seed, n_boot)
        if angles:
            if progress:
                progress(f"{ident['run']} composition")
            reps = {m: _representations(adapter, split, m, batch_size, device) for m in needed}
            comp_rows += composition_rows(ident, reps[0.0], reps, angles, labels, seed, n_boot)
    return LieResult(lie=pd.DataFrame(lie_rows, columns=LIE_COLUMNS),
                     layers=pd.DataFrame(layer_out, columns=LAYER_COLUMNS),
                     composition=pd.DataFrame(comp_rows, columns=COMPOSITION_COLUMNS))


def lie_manifest(n_images: int) -> dict[str, Any]:
    """What a report folder's manifest records of the Lie probe: generators and units, composition angles, the
    images and principal axes of the per-layer profile."""
    return {"generators": {g.name: g.unit for g in GENERATORS.values()}, "composition_angles": list(COMPOSITION_ANGLES),
            "layer_images": min(LAYER_IMAGES, n_images), "layer_dim": LAYER_DIM}
