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

The magnitude is ``eps`` in pixel units of [0, 1] images (0: the identity). The cross-entropy attacks ascend a
convnet's logits and a CapsNet's capsule lengths taken as logits; what each model exposes comes in
:class:`~.worst.Against` (the probe builds it). Why ART: it is maintained (Linux Foundation AI & Data, releases in
2025), MIT-licensed, needs only numpy, scipy and scikit-learn beside torch, and its PyTorch estimator takes any
module and loss, so the margin loss needs no fork; torchattacks (last release 2023) pins requests 2.25, and
foolbox (last release 2024) pulls GitPython and eagerpy. The attacks are deterministic: no random start.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from .functional import Seed, Transformed, _check_images
from .worst import Against, needs

__all__ = [
    "LONG_FACTOR",
    "PGD_LONG_STEPS",
    "PGD_STEPS",
    "STEP_FACTOR",
    "fgsm",
    "fgsm_margin",
    "gradient_attack",
    "pgd",
    "pgd_long",
    "pgd_margin",
    "pgd_transfer",
]

PGD_STEPS = 20
LONG_FACTOR = 5  # pgd-long's steps over pgd's
PGD_LONG_STEPS = LONG_FACTOR * PGD_STEPS
STEP_FACTOR = 2.5  # step size = STEP_FACTOR * eps / steps (Madry et al. 2018)


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
