"""Lie derivatives (capsprobe.probe.lie and the Lie metrics): the tangent's conventions and its agreement with the kornia
warp, forward-mode derivatives against finite differences, exactly invariant and exactly equivariant models, the
generator fit, the composition of maps (and its order), the per-layer taps, and the probe/report wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from capsprobe import metrics as M
from capsprobe.data import ImageSplit
from capsprobe.models import ModelAdapter, adapt, create_model
from capsprobe.probe.lie import (
    GENERATORS,
    generator_matrix,
    layer_taps,
    lie_pass,
    lie_tables,
    warp_tangent,
)
from capsprobe.transforms import apply_matrix, rotate, scale, shear, translate

H = W = 28
EXPERIMENTS_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "experiments"
STEPS = {"rotate": 0.01, "translate-x": 1e-2, "translate-y": 1e-2, "scale": 1e-4, "shear": 1e-3}


def blob(cx: float, cy: float, sigma: float = 1.5, size: int = H) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))[None, None]


def smooth_images(n: int = 24, seed: int = 0) -> torch.Tensor:
    """Sums of Gaussian blobs well inside the frame (zero border): digit-like, and smooth."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 1, H, W)
    for i in range(n):
        for _ in range(3):
            cx, cy = (7 + 14 * torch.rand(2, generator=g)).tolist()
            out[i] += blob(cx, cy, 1.5 + 1.5 * float(torch.rand(1, generator=g)))[0]
    return out / out.amax(dim=(1, 2, 3), keepdim=True)


def as_split(images: torch.Tensor, labels: torch.Tensor | None = None) -> ImageSplit:
    labels = labels if labels is not None else torch.arange(len(images)) % 4
    return ImageSplit((images * 255).round().clamp(0, 255).to(torch.uint8), labels.long())


def warp_at(images: torch.Tensor, name: str, t: float) -> torch.Tensor:
    m = generator_matrix(name, torch.tensor(t), H, W)
    return apply_matrix(images, m.expand(len(images), 3, 3))


# --- the tangent -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GENERATORS))
def test_tangent_is_the_symmetric_derivative_of_the_kornia_warp(name):
    x = torch.rand(3, 1, H, W, generator=torch.Generator().manual_seed(1)).double()
    h = STEPS[name]
    fd = (warp_at(x, name, h) - warp_at(x, name, -h)) / (2 * h)
    t = warp_tangent(x, name)
    assert float((t - fd).abs().max()) < 5e-3 * float(t.abs().max())


def test_generator_matrices_follow_the_suite_conventions():
    x = smooth_images(4)
    assert torch.allclose(warp_at(x, "rotate", 10.0), rotate(x, 10.0).images, atol=1e-5)
    assert torch.allclose(warp_at(x, "scale", math.log(1.2)), scale(x, 1.2).images, atol=1e-5)
    assert torch.allclose(warp_at(x, "shear", 0.3), shear(x, 0.3).images, atol=1e-5)
    both = apply_matrix(warp_at(x, "translate-x", 2.0), generator_matrix("translate-y", torch.tensor(2.0), H, W)
                        .expand(4, 3, 3))
    assert torch.allclose(both, translate(x, 2.0).images, atol=1e-5)


def test_tangent_moves_a_blob_the_suite_s_way():
    c = (W - 1) / 2
    right = blob(c + 6, c)  # a blob right of the centre
    t = warp_tangent(right, "translate-x")[0, 0]
    assert t[int(c), int(c + 8)] > 0 > t[int(c), int(c + 4)]  # moves right: brighter on its right side
    t = warp_tangent(right, "rotate")[0, 0]  # counter-clockwise on screen: a pixel right of the centre goes up
    assert t[int(c) - 2, int(c + 6)] > 0 > t[int(c) + 3, int(c + 6)]
    t = warp_tangent(blob(c, c + 6), "translate-y")[0, 0]  # down
    assert t[int(c + 8), int(c)] > 0 > t[int(c + 4), int(c)]
    t = warp_tangent(right, "scale")[0, 0]  # away from the centre
    assert t[int(c), int(c + 8)] > 0 > t[int(c), int(c + 4)]
    t = warp_tangent(blob(c, c + 6), "shear")[0, 0]  # rows below the centre move right
    assert t[int(c + 6), int(c + 2)] > 0 > t[int(c + 6), int(c - 2)]


# --- derivatives through a model ---------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 5, padding=2)
        self.fc = nn.Linear(4 * H * W, 6)
        self.head = nn.Linear(6, 3)

    def features(self, x):
        return torch.tanh(self.fc(torch.tanh(self.conv(x)).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def small_adapter():
    return ModelAdapter(SmallNet().eval(), representation=lambda m, x: m.features(x))


@pytest.mark.parametrize("name", ["rotate", "translate-x", "scale"])
def test_lie_derivatives_match_finite_differences(name):
    x = smooth_images(16)
    adapter = small_adapter()
    p = lie_pass(adapter, as_split(x), name, batch_size=8)
    q = as_split(x).images.float() / 255  # what the split gives back
    h = STEPS[name] * 10
    with torch.no_grad():
        plus, minus = adapter.outputs(warp_at(q, name, h)), adapter.outputs(warp_at(q, name, -h))
    fd_rep = ((plus.representation - minus.representation) / (2 * h)).double().numpy()
    fd_scores = ((plus.scores - minus.scores) / (2 * h)).double().numpy()
    assert np.abs(p.drep - fd_rep).max() < 2e-2 * np.abs(fd_rep).max()
    assert np.abs(p.dscores - fd_scores).max() < 2e-2 * np.abs(fd_scores).max()
    assert np.abs(p.drep).max() > 1e-3  # the test is not about a model that never moves


def mass_adapter():
    """Total ink, exactly invariant to rotation, translation and shear of the pixel grid (divergence-free motion)
    and not to scale."""
    def rep(model, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, s**2 / 100], 1)

    return ModelAdapter(nn.Identity(), representation=rep,
                        scores=lambda m, x: torch.softmax(torch.cat([x.flatten(1).sum(1, keepdim=True) / 50,
                                                                     torch.zeros(len(x), 1)], 1), 1))


def test_an_exactly_invariant_model_has_zero_lie_derivative():
    x = smooth_images(24)
    res = lie_tables([({"model": "mass", "run": "mass", "seed": 0}, mass_adapter())], as_split(x),
                     angles=(), layers=False, n_boot=20)
    lie = res.lie.set_index(["generator", "metric"])["value"]
    # scaling adds ink: the same measures are not blind (float32 rounding is all that is left of the others)
    assert lie[("scale", "lee_scores")] > 0.1 and lie[("scale", "lee_representation")] > 10
    for gen in ("rotate", "translate-x", "translate-y", "shear"):
        assert lie[(gen, "lee_scores")] < 1e-3 * lie[("scale", "lee_scores")], gen
        assert lie[(gen, "lee_representation")] < 1e-5 * lie[("scale", "lee_representation")], gen


def moments_adapter(scramble: bool = False):
    """Raw image moments (ink, x and y centroid times ink): they move under every generator, and their derivative
    is an exact linear function of them (central differences are exact on polynomials up to degree 2).
    ``scramble``: the same sums over randomly permuted pixel positions, which the motion does not act on linearly."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    basis = torch.stack([torch.ones(H, W), xs, ys]).flatten(1)  # (3, HW)
    if scramble:
        basis = basis[:, torch.randperm(H * W, generator=torch.Generator().manual_seed(0))]
        basis = torch.cat([basis, torch.randn(5, H * W, generator=torch.Generator().manual_seed(1))])

    def rep(model, x):
        return x.flatten(1) @ basis.t()

    return ModelAdapter(nn.Identity(), representation=rep, scores=lambda m, x: torch.softmax(rep(m, x)[:, :2] / 100, 1))


def test_an_exactly_equivariant_representation_has_zero_equivariant_lee():
    x = smooth_images(60)
    for gen in ("rotate", "translate-x", "scale", "shear"):
        p = lie_pass(moments_adapter(), as_split(x), gen)
        _, residual, energy = M.generator_terms(p.rep, p.drep)
        num, den = M.whitened_terms(p.rep, p.drep)
        assert M.ratio(residual, energy) < 1e-2, gen
        assert M.ratio(num, den) > 1e-4, gen  # it moves: equivariant, not invariant
        if gen == "scale":  # scaling mostly changes the ink, which any pixel sum follows linearly
            continue
        q = lie_pass(moments_adapter(scramble=True), as_split(x), gen)
        _, residual, energy = M.generator_terms(q.rep, q.drep)
        assert M.ratio(residual, energy) > 0.2, gen


# --- pure metric functions -----------------------------------------------------------------------------------------


def test_generator_fit_recovers_a_linear_action_and_not_noise():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(200, 6))
    a = rng.normal(size=(6, 6))
    _, residual, energy = M.generator_terms(phi, phi @ a.T)
    assert M.ratio(residual, energy) < 1e-3
    _, residual, energy = M.generator_terms(phi, rng.normal(size=(200, 6)))
    assert M.ratio(residual, energy) > 0.9
    # scale-free: rescaling the representation and its derivative changes nothing
    d = phi @ a.T + 0.3 * rng.normal(size=(200, 6))
    r1 = M.ratio(*M.generator_terms(phi, d)[1:])
    r2 = M.ratio(*M.generator_terms(7.0 * phi, 7.0 * d)[1:])
    assert r1 == pytest.approx(r2, rel=1e-6)


def test_whitened_lee_is_basis_free_and_measures_the_derivative():
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(300, 4)) @ np.diag([1, 2, 3, 4])
    d = 0.1 * rng.normal(size=(300, 4))
    a = rng.normal(size=(4, 4)) + 4 * np.eye(4)
    base = M.ratio(*M.whitened_terms(phi, d, shrinkage=0))
    assert M.ratio(*M.whitened_terms(phi @ a.T, d @ a.T, shrinkage=0)) == pytest.approx(base, rel=1e-9)
    assert M.ratio(*M.whitened_terms(phi, 2 * d, shrinkage=0)) == pytest.approx(4 * base, rel=1e-9)
    # and the invariance error is the same function of phi(Tx) - phi(x)
    assert M.invariance_error(phi, phi + d) == pytest.approx(M.ratio(*M.whitened_terms(phi, d)), rel=1e-9)


def _plane_rotation(angle_deg: float, dim: int = 4) -> np.ndarray:
    r = np.eye(dim)
    for k, speed in ((0, 1.0), (2, 2.0)):
        a = math.radians(angle_deg * speed)
        r[k:k + 2, k:k + 2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return r


def test_composition_is_zero_for_a_group_action_and_large_for_a_lookup_table():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(400, 4))
    angles = (-30.0, 15.0, 30.0)
    needed = {a + b for a in angles for b in angles} | set(angles)
    group = {m: phi @ _plane_rotation(m).T for m in needed}
    table = {m: phi @ np.linalg.qr(rng.normal(size=(4, 4)))[0].T for m in needed}
    for a in angles:
        for b in angles:
            diff, norm, move = M.composition_terms(phi, group, a, b)
            assert math.sqrt(M.ratio(diff, norm)) < 1e-2
            diff, norm, move = M.composition_terms(phi, table, a, b)
            if a + b != 0:
                assert math.sqrt(M.ratio(diff, norm)) > 0.3


def test_composition_applies_a_first_then_b():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(400, 3))
    A, B = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    moved = {1.0: phi @ A.T, 2.0: phi @ B.T, 3.0: phi @ (B @ A).T}  # T_3 = T_2 after T_1
    diff, norm, _ = M.composition_terms(phi, moved, 1.0, 2.0)
    assert M.ratio(diff, norm) < 1e-4
    swapped = {1.0: phi @ A.T, 2.0: phi @ B.T, 3.0: phi @ (A @ B).T}
    diff, norm, _ = M.composition_terms(phi, swapped, 1.0, 2.0)
    assert M.ratio(diff, norm) > 1e-2


def test_subspace_projection_keeps_the_derivative_share():
    rng = np.random.default_rng(3)
    act = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 40))  # rank 5 in 40 dimensions
    inside = rng.normal(size=(100, 5)) @ np.linalg.qr(act.T)[0][:, :5].T
    xs, ds, kept = M.subspace_project(act, inside, dim=5)
    assert xs.shape == (100, 5) and M.ratio(kept[0], kept[1]) == pytest.approx(1.0, abs=1e-9)
    outside = rng.normal(size=(100, 40))
    outside -= outside @ np.linalg.qr(act.T)[0][:, :5] @ np.linalg.qr(act.T)[0][:, :5].T
    assert M.ratio(*M.subspace_project(act, outside, dim=5)[2]) < 1e-9


def test_score_lee_is_the_mean_absolute_class_derivative():
    d = np.array([[0.1, -0.3], [0.0, 0.2]])
    assert M.lie_score_values(d) == pytest.approx([0.2, 0.1])


# --- layers and the probe ----------------------------------------------------------------------------------------


def tiny_capsnet():
    torch.manual_seed(0)
    return create_model("capsnet_small", in_chans=1, num_classes=10, img_size=28, conv_channels=8,
                        primary_types=2).eval()


def test_capsnet_layers_are_tapped_in_depth_order_and_end_at_the_poses():
    model = tiny_capsnet()
    x = smooth_images(8)
    p = lie_pass(adapt(model), as_split(x, torch.arange(8) % 10), "rotate", layers=True, layer_images=5)
    assert list(p.layers) == ["conv1", "primary", "votes", "routing 1", "routing 2", "routing 3"]
    act, dact = p.layers["routing 3"]
    assert act.shape == (5, 160)
    np.testing.assert_allclose(act, p.rep[:5], rtol=1e-5, atol=1e-6)  # the last iterate is the poses
    np.testing.assert_allclose(dact, p.drep[:5], rtol=1e-4, atol=1e-6)
    assert p.layers["votes"][0].shape[1] == 10 * model.num_primary * 16
    assert not any(h for h in (model.conv1._forward_hooks, model.primary._forward_hooks, model.digits._forward_hooks))


def test_digitcaps_iterates_end_at_its_output_and_tolerate_old_routings():
    from capsprobe.models.components import _ROUTINGS, register_routing

    model = tiny_capsnet()
    u = torch.randn(3, model.num_primary, 8)
    votes, its = model.digits.iterates(u)
    assert len(its) == 3 and torch.allclose(its[-1], model.digits(u))
    assert torch.allclose(votes, model.digits.votes(u))

    @register_routing("test-four-args")
    def four(votes, num_iters, detach_inner, activation):
        return activation(votes.mean(dim=2))

    try:
        from capsprobe.models.capsnet import DigitCaps

        dc = DigitCaps(model.num_primary, routing="test-four-args")
        _, its = dc.iterates(u)
        assert len(its) == 1 and torch.allclose(its[0], dc(u))
    finally:
        _ROUTINGS.pop("test-four-args", None)


def test_convnet_layers_come_from_feature_info():
    torch.manual_seed(0)
    cnn = create_model("baseline_cnn_pool", in_chans=1, num_classes=10, img_size=28, channels=[4, 4, 2]).eval()
    assert [name for name, _, _ in layer_taps(cnn)] == ["features.1", "features.4", "features.7"]
    resnet = create_model("resnet18", in_chans=1, num_classes=10, img_size=28)
    assert [name for name, _, _ in layer_taps(resnet)] == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_lie_tables_have_every_measure_for_a_capsnet():
    x = smooth_images(40)
    res = lie_tables([({"model": "capsnet_small", "run": "c", "seed": 0}, adapt(tiny_capsnet()))],
                     as_split(x, torch.arange(40) % 10), generators=("rotate", "translate-x"), angles=(-15.0, 15.0),
                     layer_images=40, n_boot=20)
    assert set(res.lie["metric"]) == {"lee_scores", "lee_representation", "elee_representation", "lee_pose",
                                      "elee_pose", "elee_representation_pca16"}
    assert res.lie["value"].notna().all() and (res.lie["ci_low"] <= res.lie["ci_high"]).all()
    assert set(res.layers["layer"]) == {"conv1", "primary", "votes", "routing 1", "routing 2", "routing 3",
                                        "representation"}
    comp = res.composition
    assert len(comp) == 2 * 4 and set(comp["which"]) == {"representation", "pose"}
    assert comp.loc[comp["a"] + comp["b"] == 0, "composition_error_moved"].isna().all()
    assert comp["composition_error"].notna().all()


def test_unknown_generator_and_too_few_images_are_refused():
    from capsprobe.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown Lie generator"):
        lie_tables([], as_split(smooth_images(8)), generators=("spin",))
    with pytest.raises(InvalidInputError, match="at least 8 images"):
        lie_tables([], as_split(smooth_images(4)))


def test_equivariant_lee_is_normalised_by_the_derivative_not_its_spread():
    rng = np.random.default_rng(4)
    phi = rng.normal(size=(200, 4))
    d = np.ones((200, 4)) + 1e-3 * rng.normal(size=(200, 4))  # a constant drift the intercept explains
    assert M.ratio(*M.generator_terms(phi, d)[1:]) < 1e-3


def test_perturb_lie_writes_the_tables_and_the_report_shows_them(tiny_runs, tmp_path):
    from typer.testing import CliRunner

    from capsprobe.cli import app
    from capsprobe.pipeline import write_report
    from capsprobe.report import read_probe_outputs

    out = tmp_path / "lie"
    result = CliRunner().invoke(app, ["perturb", "-t", "rotate", "-m", "rotate=0,45", str(tiny_runs["caps"]),
                                      str(tiny_runs["conv"]), "--limit", "40", "--bootstrap", "20", "--lie",
                                      "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Lie " in result.output
    data = read_probe_outputs(out)
    lie, layers, comp = data.tables["lie"], data.tables["lie_layers"], data.tables["composition"]
    assert set(lie["run"]) == {"caps", "conv"} and set(lie["generator"]) == set(GENERATORS)
    assert set(lie.loc[lie["run"] == "conv", "metric"]).isdisjoint({"lee_pose", "elee_pose"})
    assert set(layers.loc[layers["run"] == "conv", "layer"]) == {"act1", "layer1", "layer2", "layer3", "layer4",
                                                                  "representation"}
    assert len(comp[comp["run"] == "caps"]) == 2 * 16 and len(comp[comp["run"] == "conv"]) == 16
    assert data.manifest["lie"]["generators"]["rotate"] == "degree"
    write_report(out)
    md = (out / "report.md").read_text()
    assert "## Lie derivative" in md and "Lie derivative, rotate: whitened LEE" in md
    assert "Layers of caps (rotation)" in md and "Composition of the fitted rotation maps" in md
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"lie.png", "lie_layers_caps.png", "lie_layers_conv.png", "composition_caps.png"} <= figures


def test_the_experiment_file_s_lie_switch_is_typed(tmp_path):
    from capsprobe.experiment import ExperimentError, load_experiment

    path = tmp_path / "e.toml"
    path.write_text('name = "e"\n[data]\ndataset = "mnist-sample"\n[probe]\nlie = "yes"\n'
                    '[sizes.quick]\nmodels = [{ model = "capsnet_small", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match="'lie' must be bool"):
        load_experiment(path)
    path.write_text(path.read_text().replace('lie = "yes"', "lie = true"))
    assert load_experiment(path).lie is True
    assert load_experiment(EXPERIMENTS_DIR / "demo.toml", "quick").lie is True
    # a size's own switch wins over the file's, and is typed too (the demo's tiny size leaves the probe out)
    assert load_experiment(EXPERIMENTS_DIR / "demo.toml", "tiny").lie is False
    path.write_text(path.read_text().replace("[sizes.quick]\n", "[sizes.quick]\nlie = 1\n"))
    with pytest.raises(ExperimentError, match=r"e.toml:7: 'lie' must be bool"):
        load_experiment(path)
