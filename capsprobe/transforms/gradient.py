"""White-box gradient attacks in L-inf, untargeted, through the Adversarial Robustness Toolbox (ART).

- ``fgsm``: the fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015), one step of size ``eps``;
- ``pgd``: projected gradient descent (Madry et al., ICLR 2018) from the clean image (no random start: the basic
  iterative method of Kurakin, Goodfellow & Bengio 2017), ``Against.steps`` steps (:data:`PGD_STEPS` = 20 unless the
  probe plan's ``attack_steps`` says otherwise) of ``2.5 eps / steps`` (Madry et al.'s rule), each projected on the
  ``eps`` ball and on [0, 1];
- ``pgd-long``: the same with :data:`LONG_FACTOR` (5) times the steps (100 by default), to check that more steps
  never help the model;
- ``fgsm-margin``, ``pgd-margin``: the same attacks ascending the margin loss of the class scores (Sabour et al.
  2017, eq. 4) instead of the cross-entropy;
- ``pgd-transfer``: PGD computed on a surrogate model (a convnet) and applied to the model probed: the black-box
  transfer attack, which must never be stronger than the white-box one (Athalye, Carlini & Wagner, ICML 2018).

The AutoAttack-style ensemble (Croce & Hein, ICML 2020), composed from ART's parts (ART's own ``AutoAttack`` class
imports ``multiprocess``, which capsprobe does not install), each member also asked for by name:

- ``apgd-ce``: ART's ``AutoProjectedGradientDescent`` (APGD) on the cross-entropy, :data:`APGD_FACTOR` (5) times
  ``Against.steps`` iterations (100 by default, AutoAttack's), initial step ``2 eps``, one random start;
- ``apgd-dlr``: the same on the difference-of-logits ratio (:class:`DLRLoss`, untargeted);
- ``apgd-t``: targeted APGD-DLR, once per target: the top :data:`APGD_TARGETS` (9, AutoAttack's, at most ``K - 1``)
  other classes by clean score, per image the worst of the targets;
- ``square``: ART's ``SquareAttack`` (Andriushchenko et al., ECCV 2020), gradient-free, :data:`SQUARE_RESTARTS` (1)
  restart of :data:`SQUARE_QUERIES_PER_STEP` (250) times ``Against.steps`` iterations: 5,000 queries by default,
  AutoAttack's budget (one candidate per image and iteration; ART also re-scores the current point, so about three
  forward passes an iteration), ``p_init`` 0.8 (less on images under 5 pixels a side, where ART's first square
  would fill the image);
- ``autoattack``: per image the worst of ``apgd-ce``, ``apgd-t`` and ``square``, each run on the whole batch exactly
  as by name (same seed), the one whose image leaves the smallest margin of the probe's class scores (ties: the
  earlier member): an image stays correct only if every member fails on it, so the ensemble is never weaker than a
  member.

The DLR attacks and Square are fed what the cross-entropy attacks are: a convnet's logits, a CapsNet's capsule
lengths. DLR is a ratio of score differences, so it is the same loss on lengths in [0, 1] as on logits (invariant to
any increasing affine map of the scores), while the cross-entropy and the margin loss depend on the scores' scale;
Square's loss is ART's margin of the same scores (true class minus the best other). APGD's random start and Square's
squares are drawn from numpy's generator seeded from the transform's seed (restored afterwards): deterministic.

The magnitude is ``eps`` in pixel units of [0, 1] images (0: the identity). The cross-entropy attacks ascend a
convnet's logits and a CapsNet's capsule lengths taken as logits; what each model exposes comes in
:class:`~.worst.Against` (the probe builds it). Why ART: it is maintained (Linux Foundation AI & Data, releases in
2025), MIT-licensed, needs only numpy, scipy and scikit-learn beside torch, and its PyTorch estimator takes any
module and loss, so the margin loss needs no fork; torchattacks (last release 2023) pins requests 2.25, and
foolbox (last release 2024) pulls GitPython and eagerpy. The attacks are deterministic: no random start.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from .functional import Seed, Transformed, _check_images
from .worst import Against, margins, needs

__all__ = [
    "APGD_FACTOR",
    "APGD_TARGETS",
    "DLRLoss",
    "ENSEMBLE",
    "LONG_FACTOR",
    "PGD_LONG_STEPS",
    "PGD_STEPS",
    "SQUARE_QUERIES_PER_STEP",
    "SQUARE_RESTARTS",
    "STEP_FACTOR",
    "apgd_ce",
    "apgd_dlr",
    "apgd_t",
    "autoattack",
    "fgsm",
    "fgsm_margin",
    "gradient_attack",
    "pgd",
    "pgd_long",
    "pgd_margin",
    "pgd_transfer",
    "square",
]

PGD_STEPS = 20
LONG_FACTOR = 5  # pgd-long's steps over pgd's
PGD_LONG_STEPS = LONG_FACTOR * PGD_STEPS
STEP_FACTOR = 2.5  # step size = STEP_FACTOR * eps / steps (Madry et al. 2018)
APGD_FACTOR = 5  # APGD's iterations over Against.steps: 100 by default (Croce & Hein 2020)
APGD_TARGETS = 9  # targeted APGD-DLR's targets: the top other classes by clean score (at most K - 1)
SQUARE_QUERIES_PER_STEP = 250  # Square's iterations over Against.steps: 5,000 by default (AutoAttack's budget)
SQUARE_RESTARTS = 1
SQUARE_P_INIT = 0.8  # the first square's share of the image (Andriushchenko et al. 2020, AutoAttack's L-inf value)
ENSEMBLE = ("apgd-ce", "apgd-t", "square")  # autoattack's members, in the order ties are broken


def _art_folder() -> str:
    """Where ART keeps its config and data: capsprobe's cache (``$XDG_CACHE_HOME/capsprobe/art``), never ``~/.art``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "capsprobe", "art")


def _art():
    """ART's attack and estimator classes, imported on first use with its home in capsprobe's cache folder (ART's
    ``art.config`` writes ``~/.art/config.json`` on import, whatever ``ART_DATA_PATH`` says) and its logger quiet
    (its INFO lines would reach the command line's stderr)."""
    import logging

    logging.getLogger("art").setLevel(logging.WARNING)
    if "art.config" not in sys.modules:
        folder = _art_folder()
        os.makedirs(folder, exist_ok=True)
        home = os.environ.get("HOME")
        os.environ["HOME"] = folder  # art.config places its folder under expanduser("~") at import
        try:
            import art.config  # lazy: ART loads on first use

            art.config.set_data_path(os.path.join(folder, "data"))
        finally:
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent  # lazy: ART loads on first use
    from art.estimators.classification import PyTorchClassifier

    return FastGradientMethod, ProjectedGradientDescent, PyTorchClassifier


def gradient_attack(images: Tensor, labels: Tensor, module: nn.Module, loss: nn.Module, method: str, eps: float,
                    steps: int = PGD_STEPS) -> Tensor:
    """Untargeted L-inf adversarial images for ``module`` under ``loss``, through ART.

    Args:
        images: ``(B, C, H, W)`` in [0, 1] (on any device; the attack runs on the module's).
        labels: true classes ``(B,)``.
        module: differentiable ``images -> (B, K)`` outputs.
        loss: ``loss(outputs, targets)``; ``nn.CrossEntropyLoss`` gets class indices, any other loss one-hot targets.
        method: ``fgsm`` or ``pgd``.
        eps: the L-inf radius.
        steps: PGD's iterations.

    Returns:
        The adversarial images, ``(B, C, H, W)`` float32 on ``images``' device, within ``eps`` of ``images`` and in
        [0, 1].
    """
    FastGradientMethod, ProjectedGradientDescent, PyTorchClassifier = _art()

    if method not in ("fgsm", "pgd"):
        raise InvalidInputError(f"unknown gradient attack {method!r}; choose fgsm or pgd")
    if not (math.isfinite(eps) and eps >= 0):
        raise InvalidInputError(f"eps must be a finite number >= 0, got {eps}")
    device = next(iter(module.parameters()), torch.empty(0)).device
    # ART's PyTorchClassifier(device_type="gpu") moves the model to cuda:{torch.cuda.current_device()}, whatever
    # device it is on: the model's own GPU (--device cuda:N, a worker's, a rank's) is made the current one meanwhile
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_gpu, torch.inference_mode(False), torch.enable_grad():
        x = images.detach().float().cpu().numpy().copy()
        k = int(module(torch.from_numpy(x[:1]).to(device)).shape[1])
        classifier = PyTorchClassifier(
            model=module, loss=loss, input_shape=tuple(x.shape[1:]), nb_classes=k, clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu")
        y = np.eye(k, dtype=np.float32)[labels.detach().cpu().numpy()]
        if method == "fgsm":
            attack = FastGradientMethod(classifier, norm=np.inf, eps=eps, targeted=False, batch_size=len(x))
        else:
            attack = ProjectedGradientDescent(
                classifier, norm=np.inf, eps=eps, eps_step=STEP_FACTOR * eps / steps, max_iter=steps,
                targeted=False, num_random_init=0, batch_size=len(x), verbose=False)
        adv = attack.generate(x=x, y=y)
    module.eval()  # ART sets the mode it computes in; the probe's modules stay in eval mode
    adv = np.clip(adv, np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0))  # exactly within the ball, in [0, 1]
    return torch.from_numpy(adv.astype(np.float32)).to(images.device)


def _attack(name: str, images: Tensor, eps: float, against: Against | None, method: str, objective: str,
            factor: int = 1, transfer: bool = False) -> Transformed:
    _check_images(images)
    if eps == 0:
        return Transformed(images.clone())
    a = needs(name, against)
    if transfer:
        if a.surrogate is None:
            raise InvalidInputError(f"{name} needs a surrogate model to compute the attack on (--surrogate)")
        module, loss = a.surrogate
    else:
        if objective not in a.objectives:
            raise InvalidInputError(f"{name}: the model exposes no {objective!r} objective to attack")
        module, loss = a.objectives[objective]
    adv = gradient_attack(images, a.labels, module, loss, method, float(eps), factor * a.steps)
    return Transformed(adv.to(images.dtype))


def fgsm(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """FGSM on the cross-entropy (a convnet's logits, a CapsNet's lengths), radius ``eps``."""
    return _attack("fgsm", images, eps, against, "fgsm", "ce")


def pgd(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """PGD (BIM) on the cross-entropy, ``against.steps`` steps (:data:`PGD_STEPS` by default), radius ``eps``."""
    return _attack("pgd", images, eps, against, "pgd", "ce")


def pgd_long(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """PGD (BIM) on the cross-entropy with :data:`LONG_FACTOR` times ``against.steps`` (:data:`PGD_LONG_STEPS` by
    default)."""
    return _attack("pgd-long", images, eps, against, "pgd", "ce", LONG_FACTOR)


def fgsm_margin(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """FGSM on the margin loss of the class scores."""
    return _attack("fgsm-margin", images, eps, against, "fgsm", "margin")


def pgd_margin(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """PGD (BIM) on the margin loss of the class scores."""
    return _attack("pgd-margin", images, eps, against, "pgd", "margin")


def pgd_transfer(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """PGD computed on the surrogate's cross-entropy, applied to the model probed (black-box transfer)."""
    return _attack("pgd-transfer", images, eps, against, "pgd", "ce", transfer=True)


class DLRLoss(nn.Module):
    """The difference-of-logits ratio (Croce & Hein 2020, eqs. 5 and 7) of class scores ``z`` ``(B, K)``, the loss
    APGD-DLR ascends, ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``, or targeted at ``t``
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, where ``z_pi1 >= z_pi2 >= ...`` are the sorted scores
    (with fewer than 3 or 4 classes the ranks past ``K`` read the last one).

    Targets come one-hot ``(B, K)`` (ART's form) or as indices ``(B,)``; targeted, each row is the true class's one-hot
    with the target class marked 0.5 (``y + 0.5 t``: ART reads the true class as the row's argmax). ``reduction``:
    ``mean`` (default), ``sum`` or ``none``, which ART sets for its per-image losses.
    """

    def __init__(self, targeted: bool = False, reduction: str = "mean"):
        super().__init__()
        self.targeted = targeted
        self.reduction = reduction

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        z = scores if scores.dtype == torch.float64 else scores.float()
        k = z.shape[1]
        if targets.dim() == 1:
            if self.targeted:
                raise InvalidInputError("targeted DLR needs (B, K) rows marking the target class 0.5")
            true = targets.long()
        else:
            true = targets.argmax(1)
        ranked = z.sort(1, descending=True).values
        z_y = z.gather(1, true[:, None]).squeeze(1)
        if self.targeted:
            target = (targets == 0.5).float().argmax(1)
            num = z_y - z.gather(1, target[:, None]).squeeze(1)
            den = ranked[:, 0] - (ranked[:, min(2, k - 1)] + ranked[:, min(3, k - 1)]) / 2
        else:
            num = z_y - z.scatter(1, true[:, None], float("-inf")).amax(1)
            den = ranked[:, 0] - ranked[:, min(2, k - 1)]
        loss = -num / (den + 1e-12)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


def _seed_state(seed: Seed, salt: int) -> int:
    """A numpy seed from the transform's seed (an int or per-image ``(B,)``) and a salt (the target's rank)."""
    words = [int(s) for s in seed.flatten().tolist()] if isinstance(seed, Tensor) else [int(seed)]
    return int(np.random.SeedSequence([w % 2**32 for w in words] + [salt]).generate_state(1)[0])


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global generator (ART's random starts and squares draw from it) seeded, restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _art_generate(images: Tensor, module: nn.Module, loss: nn.Module, build: Callable[..., Any], y: np.ndarray,
                  seed: int) -> np.ndarray:
    """``build(classifier).generate(x, y)`` on ART's classifier of ``module`` under ``loss``, on the module's device
    (made the current CUDA device meanwhile, as in :func:`gradient_attack`), numpy seeded with ``seed``; the
    images as a numpy array, exactly within ``build``'s ``eps`` of ``images`` and in [0, 1]."""
    _, _, PyTorchClassifier = _art()
    device = next(iter(module.parameters()), torch.empty(0)).device
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    eps = float(build.keywords["eps"])  # type: ignore[attr-defined]  # a functools.partial
    with on_gpu, torch.inference_mode(False), torch.enable_grad(), _numpy_seeded(seed):
        x = images.detach().float().cpu().numpy().copy()
        k = int(module(torch.from_numpy(x[:1]).to(device)).shape[1])
        classifier = PyTorchClassifier(
            model=module, loss=loss, input_shape=tuple(x.shape[1:]), nb_classes=k, clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu")
        try:
            attack = build(classifier)
        except ValueError as err:  # APGD refuses outputs that look like probabilities (rows summing to 1)
            raise InvalidInputError(f"ART refused the attack: {err}") from None
        adv = attack.generate(x=x, y=y)
    module.eval()  # ART sets the mode it computes in; the probe's modules stay in eval mode
    return np.clip(adv, np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)).astype(np.float32)


def _onehot(labels: Tensor, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels.detach().cpu().numpy()]


def _classes(module: nn.Module, images: Tensor) -> int:
    device = next(iter(module.parameters()), torch.empty(0)).device
    with torch.no_grad():
        return int(module(images[:1].detach().float().to(device)).shape[1])


def _apgd(images: Tensor, a: Against, loss_name: str, eps: float, seed: Seed, target: Tensor | None = None,
          salt: int = 0) -> Tensor:
    """APGD (ART) on the ``ce`` objective's module: its cross-entropy, or DLR (targeted at ``target`` when given)."""
    module, ce = a.objectives["ce"]
    k = _classes(module, images)
    y = _onehot(a.labels, k)
    if loss_name == "ce":
        loss: nn.Module = ce
    else:
        loss = DLRLoss(targeted=target is not None)
        if target is not None:
            y = y + 0.5 * _onehot(target, k)
    _art()  # first: ART's home in capsprobe's cache folder before anything of ART is imported
    from art.attacks.evasion import AutoProjectedGradientDescent  # lazy: ART loads on first use
    build = functools.partial(
        AutoProjectedGradientDescent, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=APGD_FACTOR * a.steps,
        targeted=False, nb_random_init=1, batch_size=len(images), loss_type=None, verbose=False)
    adv = _art_generate(images, module, loss, build, y, _seed_state(seed, salt))
    return torch.from_numpy(adv).to(images.device)


def _square(images: Tensor, a: Against, eps: float, seed: Seed) -> Tensor:
    """Square (ART) on the ``ce`` objective's module's scores, its margin loss, the budget of the module's doc."""
    module, ce = a.objectives["ce"]
    h, w = images.shape[-2:]
    side = min(h, w)
    if side < 2:
        raise InvalidInputError(f"square needs an image side of at least 2 pixels, got {h}x{w}")
    # ART's first square is round(sqrt(p h w)) pixels a side and must be smaller than the image's
    p_init = min(SQUARE_P_INIT, 0.99 * (side - 0.5) ** 2 / (h * w))
    _art()  # first: ART's home in capsprobe's cache folder before anything of ART is imported
    from art.attacks.evasion import SquareAttack  # lazy: ART loads on first use
    build = functools.partial(
        SquareAttack, norm=np.inf, eps=eps, max_iter=SQUARE_QUERIES_PER_STEP * a.steps, p_init=p_init,
        nb_restarts=SQUARE_RESTARTS, batch_size=len(images), verbose=False)
    adv = _art_generate(images, module, ce, build, _onehot(a.labels, _classes(module, images)), _seed_state(seed, 0))
    return torch.from_numpy(adv).to(images.device)


def _worst(candidates: list[Tensor], a: Against) -> Tensor:
    """Per image the candidate with the smallest margin of the probe's scores (ties: the earlier candidate)."""
    best = candidates[0]
    with torch.no_grad():
        low = margins(a.scores(best).float(), a.labels)
        for c in candidates[1:]:
            m = margins(a.scores(c).float(), a.labels)
            better = m < low
            best = torch.where(better[:, None, None, None], c, best)
            low = torch.where(better, m, low)
    return best


def _apgd_targets(images: Tensor, a: Against, eps: float, seed: Seed) -> Tensor:
    """Targeted APGD-DLR once per target (the top :data:`APGD_TARGETS` other classes by clean score), the worst."""
    with torch.no_grad():
        clean = a.scores(images).float()
    others = clean.scatter(1, a.labels[:, None].to(clean.device), float("-inf")).argsort(1, descending=True)
    count = min(APGD_TARGETS, clean.shape[1] - 1)
    return _worst([_apgd(images, a, "dlr", eps, seed, others[:, j].to(a.labels.device), salt=j + 1)
                   for j in range(count)], a)


def _ensemble_member(name: str, images: Tensor, eps: float, seed: Seed, against: Against | None) -> Transformed:
    _check_images(images)
    if eps == 0:
        return Transformed(images.clone())
    a = needs(name, against)
    if "ce" not in a.objectives:
        raise InvalidInputError(f"{name}: the model exposes no 'ce' objective (its logits or lengths) to attack")
    if not (math.isfinite(eps) and eps > 0):
        raise InvalidInputError(f"eps must be a finite number >= 0, got {eps}")
    x = images.float()
    members: dict[str, Callable[[], Tensor]] = {
        "apgd-ce": lambda: _apgd(x, a, "ce", eps, seed),
        "apgd-dlr": lambda: _apgd(x, a, "dlr", eps, seed),
        "apgd-t": lambda: _apgd_targets(x, a, eps, seed),
        "square": lambda: _square(x, a, eps, seed),
    }
    if name == "autoattack":
        adv = _worst([members[m]() for m in ENSEMBLE], a)
    else:
        adv = members[name]()
    return Transformed(adv.to(images.dtype))


def apgd_ce(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """APGD on the cross-entropy (a convnet's logits, a CapsNet's lengths), radius ``eps``."""
    return _ensemble_member("apgd-ce", images, float(eps), seed, against)


def apgd_dlr(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """APGD on the difference-of-logits ratio (untargeted), radius ``eps``."""
    return _ensemble_member("apgd-dlr", images, float(eps), seed, against)


def apgd_t(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """Targeted APGD-DLR, the worst over the top :data:`APGD_TARGETS` other classes, radius ``eps``."""
    return _ensemble_member("apgd-t", images, float(eps), seed, against)


def square(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """Square (gradient-free), :data:`SQUARE_QUERIES_PER_STEP` times ``against.steps`` queries, radius ``eps``."""
    return _ensemble_member("square", images, float(eps), seed, against)


def autoattack(images: Tensor, eps: float, seed: Seed = 0, *, against: Against | None = None) -> Transformed:
    """Per image the worst of APGD-CE, targeted APGD-DLR and Square (:data:`ENSEMBLE`), radius ``eps``."""
    return _ensemble_member("autoattack", images, float(eps), seed, against)
