"""The AutoAttack-style ensemble from ART's parts (capsprobe.transforms.gradient): APGD-CE, APGD-DLR (untargeted and
targeted), Square, and ``autoattack``, the per-image worst of APGD-CE, targeted APGD-DLR and Square; and its
gradient-masking checks (capsprobe.metrics.masking)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from capsprobe.errors import InvalidInputError
from capsprobe.metrics import masking_table
from capsprobe.models import ModelAdapter
from capsprobe.probe.against import against
from capsprobe.transforms import TRANSFORMS, get_transform, gradient
from capsprobe.transforms.gradient import DLRLoss

D, K = 8, 5  # 8x8 single-channel images, 5 classes (targeted DLR reads the 4th-ranked score)


def _linear(seed: int = 0, gain: float = 3.0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D * D, K))
    with torch.no_grad():
        net[1].weight.mul_(gain)
    return net.eval()


class _Lengths(nn.Module):
    """Capsule-length-like outputs: an increasing affine map of a linear model's logits into [0, 1]."""

    def __init__(self, net: nn.Module, scale: float = 2**-6, shift: float = 0.5):
        super().__init__()
        self.net, self.scale, self.shift = net, scale, shift

    def forward(self, x):
        return self.scale * self.net(x) + self.shift


def _logits_adapter(net: nn.Module) -> ModelAdapter:
    return ModelAdapter(net, representation=lambda m, x: x.flatten(1))  # scores: softmax; attacks: the logits


def _lengths_adapter(net: nn.Module) -> ModelAdapter:
    return ModelAdapter(net, representation=lambda m, x: x.flatten(1), scores=lambda m, x: m(x))  # attacks: lengths


def _images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return 0.3 + 0.4 * torch.rand(n, 1, D, D, generator=torch.Generator().manual_seed(seed))


def _closed_form_dlr(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None):
    """DLR of z = W x + b and its gradient in x, written out (Croce & Hein 2020, eqs. 5 and 7): untargeted
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), targeted -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    xf = x.flatten(1).double()
    w, b = w.double(), b.double()
    z = xf @ w.T + b
    order = z.argsort(1, descending=True)
    values, grads = [], []
    for i in range(len(z)):
        zi, o, yi = z[i], order[i], int(y[i])
        if t is None:
            other = int(o[0]) if int(o[0]) != yi else int(o[1])
            num, dnum = zi[yi] - zi[other], w[yi] - w[other]
            den, dden = zi[o[0]] - zi[o[2]], w[o[0]] - w[o[2]]
        else:
            ti = int(t[i])
            num, dnum = zi[yi] - zi[ti], w[yi] - w[ti]
            den = zi[o[0]] - (zi[o[2]] + zi[o[3]]) / 2
            dden = w[o[0]] - (w[o[2]] + w[o[3]]) / 2
        values.append(-num / den)
        grads.append(-(dnum * den - num * dden) / den**2)
    return torch.stack(values), torch.stack(grads).view_as(x)


@pytest.mark.parametrize("outputs", ["logits", "lengths"])
def test_dlr_loss_and_its_gradient_match_the_closed_form_on_a_linear_model(outputs):
    """The loss the APGD-DLR attacks ascend, on a convnet's logits and on capsule lengths in [0, 1] (an affine map
    of the same linear model with slope 1/64): value and input gradient equal the closed form, untargeted and
    targeted (targets marked 0.5 in the one-hot rows ART hands the loss); in float64, which the loss keeps."""
    net = _linear().double()
    module = net if outputs == "logits" else _Lengths(net)
    scale = 1.0 if outputs == "logits" else 2**-6
    x = _images().double()
    with torch.no_grad():
        z = module(x)
    if outputs == "lengths":
        assert z.min() > 0 and z.max() < 1
    y = z.argmax(1)
    t = z.scatter(1, y[:, None], float("-inf")).argmax(1)  # the runner-up as the target
    w, b = scale * net[1].weight.detach(), scale * net[1].bias.detach() + (0.0 if outputs == "logits" else 0.5)
    for targeted in (False, True):
        onehot = nn.functional.one_hot(y, K).float()
        labels = onehot + 0.5 * nn.functional.one_hot(t, K).float() if targeted else onehot
        loss = DLRLoss(targeted=targeted)
        loss.reduction = "none"  # what ART sets for the per-image losses
        xr = x.clone().requires_grad_(True)
        value = loss(module(xr), labels)
        (grad,) = torch.autograd.grad(value.sum(), xr)
        expected, expected_grad = _closed_form_dlr(w, b, x, y, t if targeted else None)
        assert value.dtype == torch.float64
        # the loss's 1e-12 in the denominator is all that separates them
        assert torch.allclose(value, expected, rtol=1e-7, atol=1e-9), (outputs, targeted)
        assert torch.allclose(grad, expected_grad, rtol=1e-6, atol=1e-7), (outputs, targeted)
        loss.reduction = "mean"
        assert torch.isclose(loss(module(x), labels), value.mean())


def test_dlr_attacks_are_the_same_on_logits_and_on_lengths_and_leave_the_ball_never():
    """DLR is a ratio of score differences, so APGD-DLR ascends the same loss on the logits and on any increasing
    affine map of them (capsule-length scale, slope 1/64 so that float rounding does not decide ART's comparisons
    of near-equal losses): the adversarial images are the same. Within the ball, in [0, 1], deterministic for a
    seed."""
    net = _linear()
    x = _images()
    with torch.no_grad():
        y = net(x).argmax(1)
    logits, lengths = against(_logits_adapter(net), y, steps=2), against(_lengths_adapter(_Lengths(net)), y, steps=2)
    for name in ("apgd-dlr", "apgd-t"):
        t = get_transform(name)
        a, b = t(x, 0.1, 3, against=logits).images, t(x, 0.1, 3, against=lengths).images
        assert torch.allclose(a, b, atol=1e-5), name
        assert (a - x).abs().max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, t(x, 0.1, 3, against=logits).images)  # the seed fixes ART's random start
        assert torch.equal(t(x, 0, 3, against=logits).images, x)
        with torch.no_grad():
            assert (net(a).argmax(1) == y).float().mean() < 1.0, name  # eps 0.1 moves a 3x-gain linear model


def test_the_ensemble_is_per_image_the_worst_of_its_members(monkeypatch):
    """An image is robust to ``autoattack`` only if APGD-CE, targeted APGD-DLR and Square all fail on it; the
    ensemble's images are the members' own (the one of smallest margin), so it is never weaker than any member."""
    monkeypatch.setattr(gradient, "SQUARE_QUERIES_PER_STEP", 20)
    net = _linear(gain=1.0)
    x = _images(16)
    with torch.no_grad():
        y = net(x).argmax(1)
    a = against(_logits_adapter(net), y, steps=2)
    correct = {}
    for name in ("apgd-ce", "apgd-t", "square", "autoattack"):
        adv = get_transform(name)(x, 0.005, 7, against=a).images
        assert (adv - x).abs().max() <= 0.005 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            correct[name] = net(adv).argmax(1) == y
    members = correct["apgd-ce"] & correct["apgd-t"] & correct["square"]
    assert torch.equal(correct["autoattack"], members)
    assert 0 < members.sum() < len(y)  # the radius leaves some images standing and breaks others


def test_an_image_broken_by_any_one_member_is_broken_by_the_ensemble(monkeypatch):
    """Members that each break a different image (stand-ins: image i is pushed to class 1 by member i): the
    ensemble breaks all three, keeps the member's own image, and leaves the fourth, which none breaks."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(D * D, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([torch.full((D * D,), 1.0), torch.zeros(D * D)]))
    x = torch.full((4, 1, D, D), 0.5)
    y = torch.zeros(4, dtype=torch.long)  # class 0 while the mean pixel is above 0, class 1 at a black image

    def breaking(i):
        def member(images, *args, **kwargs):
            out = images.clone()
            out[i] = 0.0
            out[i, 0, 0, 0] = -1.0  # class 0's score -1, class 1's 0: misclassified
            return out
        return member

    monkeypatch.setattr(gradient, "_apgd", breaking(0))
    monkeypatch.setattr(gradient, "_apgd_targets", breaking(1))
    monkeypatch.setattr(gradient, "_square", breaking(2))
    adv = get_transform("autoattack")(x, 0.5, against=against(_logits_adapter(net), y)).images
    with torch.no_grad():
        assert (net(adv).argmax(1) == y).tolist() == [False, False, False, True]
    assert torch.equal(adv[3], x[3]) and adv[0, 0, 0, 0] == -1.0


def test_the_ensemble_takes_every_target_of_the_top_classes(monkeypatch):
    """Targeted APGD-DLR runs once per target, the top ``APGD_TARGETS`` other classes by clean score (at most K - 1),
    and ART is handed the true class one-hot with the target marked 0.5; Square gets its query budget."""
    calls = []

    def record(images, module, loss, build, y, seed):
        calls.append((type(loss).__name__, getattr(loss, "targeted", None), y.copy(), build.keywords))
        return images.detach().float().cpu().numpy()

    monkeypatch.setattr(gradient, "_art_generate", record)
    net = _linear()
    x = _images(3)
    with torch.no_grad():
        y = net(x).argmax(1)
        ranked = net(x).scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
    a = against(_logits_adapter(net), y, steps=2)
    monkeypatch.setattr(gradient, "APGD_TARGETS", 2)
    get_transform("apgd-t")(x, 0.1, against=a)
    assert [c[1] for c in calls] == [True, True]
    for j, (_, _, labels, kw) in enumerate(calls):
        assert (labels.argmax(1) == y.numpy()).all()
        assert ((labels == 0.5).argmax(1) == ranked[:, j].numpy()).all()
        assert kw["max_iter"] == gradient.APGD_FACTOR * 2 and kw["targeted"] is False
    calls.clear()
    monkeypatch.setattr(gradient, "APGD_TARGETS", 9)
    get_transform("apgd-t")(x, 0.1, against=a)
    assert len(calls) == K - 1  # capped at the other classes
    calls.clear()
    get_transform("square")(x, 0.1, against=a)
    assert calls[0][3]["max_iter"] == gradient.SQUARE_QUERIES_PER_STEP * 2 == 500
    calls.clear()
    get_transform("autoattack")(x, 0.1, against=a)
    assert [c[0] for c in calls] == ["CrossEntropyLoss"] + ["DLRLoss"] * (K - 1) + ["CrossEntropyLoss"]
    assert gradient.APGD_FACTOR * gradient.PGD_STEPS == 100 and gradient.SQUARE_QUERIES_PER_STEP * 20 == 5000


def test_square_breaks_an_undefended_linear_model_at_eps_0_3():
    """The runtime check's premise, cheaply: Square at 0.3 (gradient-free) leaves at most 2% of the images correct
    on an undefended (3x-gain linear) model, with 1 step's budget (250 queries)."""
    net = _linear()
    x = _images(16)
    with torch.no_grad():
        y = net(x).argmax(1)
    adv = get_transform("square")(x, 0.3, against=against(_logits_adapter(net), y, steps=1)).images
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        assert (net(adv).argmax(1) == y).float().mean() <= 0.02


def test_the_new_attacks_are_registered_and_refuse_without_a_model():
    for name in ("apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack"):
        t = TRANSFORMS[name]
        assert t.worst_case and not t.geometric and 0.3 in t.grid, name
        with pytest.raises(InvalidInputError, match="worst case against a model"):
            t(_images(2), 0.1)
    with pytest.raises(InvalidInputError, match="image side"):
        net = nn.Sequential(nn.Flatten(), nn.Linear(1, K))
        get_transform("square")(torch.full((2, 1, 1, 1), 0.5),
                                0.1, against=against(_logits_adapter(net), torch.zeros(2, dtype=torch.long)))


def _metrics(rows):
    return pd.DataFrame([{"model": "m", "run": "m-seed0", "transform": t, "magnitude_value": e, "metric": "accuracy",
                          "value": v} for t, e, v in rows])


def test_masking_flags_a_weaker_ensemble_a_too_strong_square_and_square_left_standing_at_0_3():
    table = masking_table(_metrics([
        ("pgd", 0.1, 0.40), ("apgd-ce", 0.1, 0.30), ("apgd-t", 0.1, 0.35), ("square", 0.1, 0.20),
        ("autoattack", 0.1, 0.25),  # weaker than square: flagged; square beats the best white-box by 10 points
        ("pgd", 0.3, 0.0), ("apgd-ce", 0.3, 0.0), ("square", 0.3, 0.10), ("autoattack", 0.3, 0.0),
    ])).set_index(["check", "eps", "attack"])
    ens = table.xs("ensemble >= member")
    assert not ens.loc[(0.1, "autoattack")].query("versus == 'square'")["passed"].iloc[0]
    assert ens.loc[(0.1, "autoattack")].query("versus == 'apgd-ce'")["passed"].iloc[0]
    sq = table.loc[("square <= white-box", 0.1, "square")]
    assert sq["versus"] == "apgd-ce" and sq["versus_accuracy"] == 0.30 and not sq["passed"]
    assert table.loc[("square <= white-box", 0.3, "square"), "passed"]
    falls = table.loc[("square falls to 0", 0.3, "square")]
    assert not falls["passed"] and falls["versus_accuracy"] == 0.02
    honest = masking_table(_metrics([("pgd", 0.3, 0.01), ("square", 0.3, 0.015), ("apgd-ce", 0.3, 0.0),
                                     ("apgd-t", 0.3, 0.0), ("autoattack", 0.3, 0.0)]))
    assert honest["passed"].all() and {"ensemble >= member", "square <= white-box", "square falls to 0"} <= set(
        honest["check"])
    assert masking_table(_metrics([("square", 0.1, 0.5)])).empty  # nothing to compare with, no 0.3 radius


def test_the_probe_runs_the_ensemble_and_writes_its_masking_checks():
    """Through the probe (per-image seeds, 1 step: APGD 5 iterations, Square 250 queries), on an undefended linear
    model: the three new checks are made and pass, and per image the ensemble is correct only where every member
    is."""
    from capsprobe.data import ImageSplit
    from capsprobe.metrics import masking
    from capsprobe.probe import run_probe

    assert masking.ENSEMBLE == gradient.ENSEMBLE
    net = _linear()
    q = (_images(16, seed=4) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = net(q.float() / 255).argmax(1)
    names = ["pgd", "apgd-ce", "apgd-t", "square", "autoattack"]
    result = run_probe([_logits_adapter(net)], ImageSplit(q, labels), names, {n: [0.02, 0.3] for n in names},
                       n_boot=10, progress=False, attack_steps=1)
    table = result.tables["masking"]
    assert {"ensemble >= member", "square <= white-box", "square falls to 0"} <= set(table["check"])
    assert table["passed"].all(), table
    img = result.images[result.images["magnitude"] == "0.02"]
    correct = {n: (lambda r: r["prediction"] == r["label"])(img[img["transform"] == n].set_index("image_id"))
               for n in names}
    members = correct["apgd-ce"] & correct["apgd-t"] & correct["square"]
    assert (correct["autoattack"] == members).all()
    assert 0 < members.sum() < len(members)


def test_the_new_attacks_import_art_with_its_home_in_capsprobes_cache(fake_art):
    """The first use of ART may be APGD or Square: ART's ``art.config`` (imported by the package) must see capsprobe's
    cache folder as its home, not ``~`` (where it writes ``~/.art``). A stand-in ``art`` package records where its
    import looked and stops at the classifier (the fixture puts the real one back)."""
    import os
    import sys

    home, cache = fake_art({
        "art/__init__.py": "from art import config\n",
        "art/config.py": ("import os\nHOME = os.path.expanduser('~')\n"
                          "def set_data_path(path):\n    pass\n"),
        "art/attacks/__init__.py": "",
        "art/attacks/evasion.py": ("FastGradientMethod = ProjectedGradientDescent = object\n"
                                   "AutoProjectedGradientDescent = SquareAttack = object\n"),
        "art/estimators/__init__.py": "",
        "art/estimators/classification.py": ("def PyTorchClassifier(**kwargs):\n"
                                             "    raise RuntimeError('stand-in classifier')\n"),
    })
    net = _linear()
    x = _images(2)
    a = against(_logits_adapter(net), torch.zeros(2, dtype=torch.long))
    for name in ("square", "apgd-ce"):
        for k in [k for k in sys.modules if k == "art" or k.startswith("art.")]:
            del sys.modules[k]
        with pytest.raises(RuntimeError, match="stand-in"):
            get_transform(name)(x, 0.1, against=a)
        assert sys.modules["art.config"].HOME == str(cache / "capsprobe" / "art"), name
    assert os.environ["HOME"] == str(home) and list(home.iterdir()) == []
