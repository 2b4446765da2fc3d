"""White-box gradient attacks (capsprobe.transforms.gradient, through ART) and the gradient-masking checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from capsprobe.data import ImageSplit
from capsprobe.errors import InvalidInputError
from capsprobe.metrics import masking_table
from capsprobe.models import ModelAdapter
from capsprobe.probe import run_probe
from capsprobe.probe.against import against
from capsprobe.transforms import get_transform

D = 4  # 4x4 single-channel images


def _linear(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D * D, 3))
    with torch.no_grad():
        net[1].weight.mul_(3.0)
    return net.eval()


class _Rounded(nn.Module):
    """A hard threshold in front of a linear model: its gradient is 0 everywhere (masked), its decision is not."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x))


def _adapter(net: nn.Module) -> ModelAdapter:
    return ModelAdapter(net, representation=lambda m, x: x.flatten(1))


def _split(net: nn.Module, n: int = 64, seed: int = 0) -> ImageSplit:
    """Interior images (0.3-0.7, so small attacks are never clipped), labelled by the model itself."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(77, 179, (n, 1, D, D), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        labels = net(q.float() / 255).argmax(1)
    return ImageSplit(q, labels)


def test_fgsm_and_pgd_reach_the_closed_form_optimum_of_a_linear_model():
    """For logits Wx + b and the cross-entropy, the L-inf ball's worst point for the true class's margin against the
    runner-up is x - eps sign(w_true - w_other) when one rival dominates; FGSM takes the sign of the loss gradient,
    sum_j (p_j - y_j) w_j, exactly."""
    net = _linear()
    x = 0.3 + 0.4 * torch.rand(6, 1, D, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
        p = torch.softmax(net(x), 1)
    grad = (p - nn.functional.one_hot(y, 3).float()) @ net[1].weight  # dCE/dx, (B, 16)
    expected = (x.flatten(1) + 0.1 * grad.sign()).view_as(x)
    with torch.inference_mode():
        out = get_transform("fgsm")(x, 0.1, against=against(_adapter(net), y)).images
    assert torch.allclose(out, expected, atol=1e-6)
    # PGD never leaves the ball, and on a linear model does at least as well as FGSM on the true-class margin
    with torch.inference_mode():
        stepped = get_transform("pgd")(x, 0.1, against=against(_adapter(net), y)).images
    assert (stepped - x).abs().max() <= 0.1 + 1e-6 and stepped.min() >= 0 and stepped.max() <= 1

    def margin(images):
        with torch.no_grad():
            z = net(images)
        return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -1e9).amax(1)

    assert (margin(stepped) <= margin(out) + 1e-5).all()
    assert (margin(out) < margin(x)).all()


def test_attacks_are_deterministic_and_the_identity_is_exact():
    net = _linear()
    x = torch.rand(5, 1, D, D, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(5, dtype=torch.long)
    a = against(_adapter(net), y)
    for name in ("fgsm", "pgd", "fgsm-margin", "pgd-margin"):
        t = get_transform(name)
        first, second = t(x, 0.2, against=a).images, t(x, 0.2, against=a).images
        assert torch.equal(first, second), name
        assert torch.equal(t(x, 0, against=a).images, x)
    with pytest.raises(InvalidInputError, match="surrogate"):
        get_transform("pgd-transfer")(x, 0.1, against=a)
    with pytest.raises(InvalidInputError, match="worst case against a model"):
        get_transform("fgsm")(x, 0.1)


def test_the_margin_objective_attacks_the_class_scores():
    """pgd-margin ascends the margin loss of the scores (softmax here): the loss rises and accuracy does not."""
    from capsprobe.models.layers import margin_loss

    net = _linear()
    split = _split(net)
    x, y = split.float_images(), split.labels
    with torch.inference_mode():
        adv = get_transform("pgd-margin")(x, 0.2, against=against(_adapter(net), y)).images
    with torch.no_grad():
        before, after = margin_loss(torch.softmax(net(x), 1), y), margin_loss(torch.softmax(net(adv), 1), y)
        assert after > before
        assert (net(adv).argmax(1) == y).float().mean() <= (net(x).argmax(1) == y).float().mean()


def _probe(net: nn.Module, split: ImageSplit, surrogate: nn.Module) -> pd.DataFrame:
    result = run_probe([_adapter(net)], split, ["fgsm", "pgd", "pgd-long", "pgd-transfer"],
                       {"fgsm": [0.1, 0.5], "pgd": [0.1, 0.5], "pgd-long": [0.1], "pgd-transfer": [0.1, 0.5]},
                       n_boot=20, progress=False, surrogate=_adapter(surrogate))
    assert "masking" in result.tables and result.manifest["surrogate"]
    img = result.images
    assert (img["pixel_change"] <= img["magnitude"].astype(float) ** 2 * D * D + 1e-6).all()  # inside the L-inf ball
    return result.tables["masking"]


def test_an_honest_model_passes_every_masking_check():
    net = _linear()
    table = _probe(net, _split(net), _linear(seed=5))
    assert set(table["check"]) == {"falls to 0", "pgd >= fgsm", "more steps", "transfer <= white-box"}
    assert table["passed"].all(), table


def test_a_masked_model_is_flagged():
    """round() in front: the white-box gradient is 0, so FGSM and PGD move nothing, while PGD on the unmasked
    surrogate (the same weights on raw pixels) transfers: 'falls to 0' and 'transfer <= white-box' fail."""
    net = _linear()
    masked = _Rounded(net).eval()
    split = _split(masked)
    table = _probe(masked, split, net)
    failed = set(table.loc[~table["passed"], "check"])
    assert {"falls to 0", "transfer <= white-box"} <= failed
    assert table.loc[table["check"] == "falls to 0", "accuracy"].iloc[0] == 1.0  # nothing moved at eps 0.5


def test_masking_table_compares_at_shared_radii_only():
    rows = []
    for t, e, v in (("fgsm", 0.1, 0.50), ("pgd", 0.1, 0.52), ("pgd", 0.3, 0.10), ("pgd-long", 0.3, 0.20),
                    ("pgd-transfer", 0.3, 0.05), ("pgd", 0.5, 0.0)):
        rows.append({"model": "m", "run": "m-seed0", "transform": t, "magnitude_value": e, "metric": "accuracy",
                     "value": v})
    table = masking_table(pd.DataFrame(rows)).set_index(["check", "eps"])
    assert not table.loc[("pgd >= fgsm", 0.1), "passed"]  # 0.52 > 0.50 + 0.005
    assert not table.loc[("more steps", 0.3), "passed"]
    assert not table.loc[("transfer <= white-box", 0.3), "passed"]
    assert table.loc[("falls to 0", 0.5), "passed"]
    assert len(table) == 4
    assert np.isclose(table.loc[("pgd >= fgsm", 0.1), "versus_accuracy"], 0.5)


def test_detection_auroc_scores_attacked_images_by_their_reconstruction_distance():
    """The metric's direction: attacked images that reconstruct worse are detected (AUROC 1), and it is given only
    for conditions chosen against the model."""
    from capsprobe.metrics import Condition, condition_metrics

    rng = np.random.default_rng(0)
    n = 50
    base = dict(labels=np.zeros(n, int), clean_scores=rng.random((n, 3)), scores=rng.random((n, 3)),
                clean_rep=rng.random((n, 4)), rep=rng.random((n, 4)))
    clean = rng.random(n)
    worse = condition_metrics(Condition(**base, clean_distance=clean, distance=clean + 1, worst_case=True), n_boot=20)
    assert worse["detection_auroc"].value == 1.0
    better = condition_metrics(Condition(**base, clean_distance=clean, distance=clean - 1, worst_case=True), n_boot=20)
    assert better["detection_auroc"].value == 0.0
    assert "detection_auroc" not in condition_metrics(Condition(**base, clean_distance=clean, distance=clean + 1))


def test_the_probe_detects_attacks_by_the_predicted_capsule_reconstruction():
    """A toy capsule model: class poses are the image itself (scaled by the class score), decoded by its class's
    template; attacked images move away from every template, so their distance grows and AUROC is above 0.5."""
    net = _linear()
    split = _split(net, n=80)
    templates = torch.rand(3, 1, D, D, generator=torch.Generator().manual_seed(3))

    def poses(m, x):
        return torch.softmax(m(x), 1)[:, :, None].expand(-1, -1, 2)

    def decode(m, p, labels):
        return templates[labels] * p[torch.arange(len(labels)), labels, :1, None, None]

    subject = ModelAdapter(net, representation=lambda m, x: x.flatten(1), poses=poses, decode=decode)
    result = run_probe([subject], split, ["pgd"], {"pgd": [0.3]}, n_boot=20, progress=False)
    det = result.metrics[result.metrics["metric"] == "detection_auroc"]
    assert list(det["magnitude"]) == ["0.3"]
    assert det["ci_low"].iloc[0] <= det["value"].iloc[0] <= det["ci_high"].iloc[0]
    # the same number computed here: L2 distance to the reconstruction from the *predicted* class, attacked positive
    from sklearn.metrics import roc_auc_score

    x, y = split.float_images(), split.labels
    with torch.inference_mode():
        adv = get_transform("pgd")(x, 0.3, against=against(subject, y)).images

    def distance(images):
        with torch.no_grad():
            p = poses(net, images)
            return (decode(net, p, net(images).argmax(1)) - images).flatten(1).norm(dim=1).numpy()

    expected = roc_auc_score(np.r_[np.ones(len(y)), np.zeros(len(y))], np.r_[distance(adv), distance(x)])
    assert det["value"].iloc[0] == pytest.approx(expected, abs=1e-9)
    assert expected != pytest.approx(0.5, abs=0.05)  # the toy separates them, so a wrong class or sign would show


def test_the_plans_attack_steps_reach_pgd_and_pgd_long_takes_five_times_them(monkeypatch):
    """``attack_steps`` travels plan -> Against -> the attack: pgd runs that many iterations, pgd-long 5x, FGSM one
    step; the default is the module's 20 (100 for pgd-long)."""
    from capsprobe.probe import ProbePlan
    from capsprobe.transforms import gradient
    from capsprobe.transforms.worst import Against

    seen = []

    def record(images, labels, module, loss, method, eps, steps=gradient.PGD_STEPS):
        seen.append((method, steps))
        return images

    monkeypatch.setattr(gradient, "gradient_attack", record)
    net = _linear()
    x = torch.rand(2, 1, D, D)
    a = against(_adapter(net), torch.tensor([0, 1]), steps=3)
    for name in ("pgd", "pgd-long", "pgd-margin", "fgsm"):
        get_transform(name)(x, 0.1, 0, against=a)
    assert seen == [("pgd", 3), ("pgd", 15), ("pgd", 3), ("fgsm", 3)]
    assert Against(labels=torch.zeros(1), scores=net).steps == gradient.PGD_STEPS == 20
    assert gradient.PGD_LONG_STEPS == 100
    assert ProbePlan.from_options(["pgd"]).attack_steps == 20
    assert ProbePlan.from_options(["pgd"], attack_steps=4).attack_steps == 4
    with pytest.raises(InvalidInputError, match="attack_steps"):
        ProbePlan.from_options(["pgd"], attack_steps=0)
    with pytest.raises(InvalidInputError, match="attack steps"):
        Against(labels=torch.zeros(1), scores=net, steps=0)


def test_art_runs_the_attack_on_the_models_own_gpu_not_the_current_one(monkeypatch):
    """ART's PyTorchClassifier(device_type="gpu") takes ``cuda:{torch.cuda.current_device()}``, not the model's
    device, so a model on ``cuda:2`` (``--device cuda:2``, a worker's or a rank's GPU) was moved to cuda:0. Without a
    GPU: CUDA is faked (is_available, the current device), every move to a CUDA device is recorded and kept on the
    CPU, ART's own classifier is built, and the attack is a stand-in that records the device it was handed."""
    import contextlib
    from types import SimpleNamespace

    import art.attacks.evasion

    from capsprobe.transforms.gradient import gradient_attack

    gpu = torch.device("cuda", 2)
    state = {"current": 0}
    moved: list[torch.device] = []

    @contextlib.contextmanager
    def cuda_device(device):  # torch.cuda.device(device): the current device inside
        before, state["current"] = state["current"], torch.device(device).index
        try:
            yield
        finally:
            state["current"] = before

    module_to, tensor_to = nn.Module.to, torch.Tensor.to

    def to(original):
        def move(obj, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
                moved.append(torch.device(target))
                return obj  # recorded, kept on the CPU
            return original(obj, *args, **kwargs)
        return move

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: state.update(current=torch.device(d).index))
    monkeypatch.setattr(torch.cuda, "device", cuda_device)
    monkeypatch.setattr(nn.Module, "to", to(module_to))
    monkeypatch.setattr(torch.Tensor, "to", to(tensor_to))
    handed: list[tuple[torch.device, int]] = []

    class Attack:  # FGSM's stand-in: the classifier's device and the current device while it runs
        def __init__(self, classifier, **kwargs):
            self.classifier = classifier

        def generate(self, x, y):
            handed.append((self.classifier.device, state["current"]))
            return x

    monkeypatch.setattr(art.attacks.evasion, "FastGradientMethod", Attack)

    class OnGpu2(nn.Module):
        """A linear model whose parameters say they are on cuda:2 (the attack asks them where the model is)."""

        def __init__(self):
            super().__init__()
            self.net = _linear()

        def parameters(self, recurse=True):
            yield SimpleNamespace(device=gpu)

        def forward(self, x):
            return self.net(x)

    x = 0.3 + 0.4 * torch.rand(3, 1, D, D, generator=torch.Generator().manual_seed(1))
    adv = gradient_attack(x, torch.tensor([0, 1, 2]), OnGpu2(), nn.CrossEntropyLoss(), "fgsm", 0.05)
    assert handed == [(gpu, 2)], f"ART's classifier was on {handed[0][0]}, the model on {gpu}"
    assert moved and set(moved) == {gpu}  # ART moved the model (and the probe batch went) to cuda:2 only
    assert state["current"] == 0  # the current device is the caller's again afterwards
    assert torch.equal(adv, x)
