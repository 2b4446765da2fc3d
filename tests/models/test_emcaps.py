"""Matrix capsules with EM routing (Hinton, Sabour & Frosst 2018): the routing against a plain reference, coordinate
addition, parameter counts, stability on blank and saturated images, and the spread loss."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import capsprobe  # noqa: F401  # registers the models
from capsprobe.errors import InvalidInputError
from capsprobe.models import EMCapsNet, adapt, create_model, em_routing, spread_loss
from capsprobe.models.emcaps import receptive_field_centres
from capsprobe.models.layers import em_inverse_temperatures


def reference_em(votes, acts, beta_u, beta_a, iters, final_lambda=0.01, var_floor=1e-3, eps=1e-8, cost_scale=1.0):
    """Procedure 1 of the paper written plainly, loop by loop, with the Gaussian density itself (no log domain)."""
    n_in, n_out, dim = votes.shape
    R = [[1.0 / n_out] * n_out for _ in range(n_in)]
    mu = [[0.0] * dim for _ in range(n_out)]
    a_out = [0.0] * n_out
    history = []
    for t in range(iters):
        lam = final_lambda * (1 - 0.95 ** (t + 1))
        history.append([row[:] for row in R])
        sigma2 = [[0.0] * dim for _ in range(n_out)]
        for j in range(n_out):  # M-step
            r = [R[i][j] * float(acts[i]) for i in range(n_in)]
            mass = sum(r)
            for h in range(dim):
                mu[j][h] = sum(r[i] * float(votes[i, j, h]) for i in range(n_in)) / (mass + eps)
                sigma2[j][h] = sum(r[i] * (float(votes[i, j, h]) - mu[j][h]) ** 2 for i in range(n_in)) / (mass + eps) \
                    + var_floor
            cost = cost_scale * sum((float(beta_u[j]) + math.log(math.sqrt(sigma2[j][h]))) * mass for h in range(dim))
            a_out[j] = 1 / (1 + math.exp(-lam * (float(beta_a[j]) - cost)))
        if t == iters - 1:
            break
        for i in range(n_in):  # E-step
            p = []
            for j in range(n_out):
                dens = 1.0
                for h in range(dim):
                    dens *= math.exp(-(float(votes[i, j, h]) - mu[j][h]) ** 2 / (2 * sigma2[j][h])) / math.sqrt(
                        2 * math.pi * sigma2[j][h])
                p.append(a_out[j] * dens)
            total = sum(p)
            R[i] = [v / total for v in p]
    return torch.tensor(mu, dtype=torch.float64), torch.tensor(a_out, dtype=torch.float64), history


@pytest.mark.parametrize("iters,cost_scale", [(1, 1.0), (2, 1.0), (3, 1.0), (3, 0.3)])
def test_em_routing_matches_the_plain_reference(iters, cost_scale):
    g = torch.Generator().manual_seed(iters)
    batch, n_in, n_out, dim = 3, 7, 4, 5
    votes = torch.randn(batch, n_in, n_out, dim, generator=g, dtype=torch.float64)
    acts = torch.rand(batch, n_in, generator=g, dtype=torch.float64)
    beta_u = torch.randn(n_out, generator=g, dtype=torch.float64)
    beta_a = torch.randn(n_out, generator=g, dtype=torch.float64)
    record: list[torch.Tensor] = []
    # lambda 1 (not 0.01): the activations then move by tens of percent between parents, a sharp check
    mu, a = em_routing(votes, acts, beta_u, beta_a, iters, final_lambda=1.0, cost_scale=cost_scale, record=record)
    assert mu.shape == (batch, n_out, dim) and a.shape == (batch, n_out) and len(record) == iters
    worst = 0.0
    for b in range(batch):
        ref_mu, ref_a, ref_r = reference_em(votes[b], acts[b], beta_u, beta_a, iters, final_lambda=1.0,
                                            cost_scale=cost_scale)
        worst = max(worst, (mu[b] - ref_mu).abs().max().item(), (a[b] - ref_a).abs().max().item(),
                    max((record[t][b] - torch.tensor(ref_r[t], dtype=torch.float64)).abs().max().item()
                        for t in range(iters)))
    print(f"largest difference from the reference: {worst:.2e}")
    assert worst < 1e-9, worst


def test_em_routing_changes_the_assignments():
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(2, 12, 3, 16, generator=g, dtype=torch.float64)
    acts = torch.rand(2, 12, generator=g, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    record: list[torch.Tensor] = []
    mu3, a3 = em_routing(votes, acts, zeros, zeros, 3, final_lambda=1.0, record=record)
    assert torch.allclose(record[0], torch.full_like(record[0], 1 / 3))
    assert (record[1] - record[0]).abs().max() > 0.05  # the E-step moved the assignments
    assert (record[2] - record[1]).abs().max() > 1e-4
    mu1, a1 = em_routing(votes, acts, zeros, zeros, 1, final_lambda=1.0)
    assert (mu3 - mu1).abs().max() > 1e-3 and (a3 - a1).abs().max() > 1e-4


def test_inverse_temperature_schedule_grows():
    lams = em_inverse_temperatures(3, 0.01)
    assert lams == pytest.approx([0.01 * 0.05, 0.01 * (1 - 0.95**2), 0.01 * (1 - 0.95**3)])
    with pytest.raises(InvalidInputError):
        em_inverse_temperatures(0)


def test_em_routing_is_finite_when_nothing_is_routed():
    votes = torch.randn(2, 6, 3, 16, requires_grad=True)
    acts = torch.zeros(2, 6)
    beta_u = torch.zeros(3, requires_grad=True)
    beta_a = torch.ones(3, requires_grad=True)
    mu, a = em_routing(votes, acts, beta_u, beta_a, 3)
    assert torch.isfinite(mu).all() and torch.isfinite(a).all()
    assert torch.allclose(a, torch.sigmoid(torch.tensor(em_inverse_temperatures(3)[-1] * 1.0)).expand(2, 3))
    (mu.sum() + a.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (votes, beta_u, beta_a))


def test_parameter_counts_are_the_papers_architecture():
    # hand counts: conv1 25A + A; primary A*17B + 17B; ConvCaps 9*in*out*16 + 2*out; classes D*K*16 + 2K
    def count(A, B, C, D, K):
        return 26 * A + 17 * B * (A + 1) + 9 * B * C * 16 + 2 * C + 9 * C * D * 16 + 2 * D + D * K * 16 + 2 * K

    paper = create_model("capsnet_em", img_size=32, num_classes=5)
    small = create_model("capsnet_em_small", img_size=32, num_classes=5)
    n_paper = sum(p.numel() for p in paper.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_paper == count(32, 32, 32, 32, 5) == 316_394  # the paper: "310K"
    assert n_small == count(64, 8, 16, 16, 5) == 67_154  # the paper: "68K"
    assert abs(n_paper - 310_000) / 310_000 < 0.03 and abs(n_small - 68_000) / 68_000 < 0.02
    assert timm.is_model("capsnet_em") and timm.is_model("capsnet_em_small")


def test_receptive_field_centres_of_the_stack():
    # 32 -> conv 5/2 -> 14 -> 1x1 -> 14 -> 3/2 -> 6 -> 3/1 -> 4: centre of position p is 4p + 2*... computed by hand
    layers = ((5, 2), (1, 1), (3, 2), (3, 1))
    centres = receptive_field_centres(32, layers)
    # caps2 position p covers caps1 p..p+2 (centre p+1) -> primary 2(p+1)+1 -> pixels 2(2p+3)+2 = 4p + 8, + 0.5
    assert centres.tolist() == [8.5, 12.5, 16.5, 20.5]


def test_receptive_field_centre_is_where_the_gradient_is():
    """Lit-pixel style: the input pixels that reach one ConvCaps2 capsule form a box centred on its coordinate."""
    torch.manual_seed(0)
    model = EMCapsNet(num_classes=3, img_size=(32, 28), conv_channels=4, primary_types=2, caps1_types=2,
                      caps2_types=2).double()
    x = torch.rand(1, 1, 32, 28, dtype=torch.float64, requires_grad=True)
    maps = model.capsule_maps(x)
    poses, _ = maps["caps2"]  # (1, D, 16, 4, 3)
    rows = receptive_field_centres(32, model.layers)
    cols = receptive_field_centres(28, model.layers)
    for r, c in [(0, 0), (3, 2), (1, 2)]:
        (grad,) = torch.autograd.grad(poses[0, :, :, r, c].sum(), x, retain_graph=True)
        lit = grad[0, 0].abs() > 0
        ys, xs = torch.nonzero(lit, as_tuple=True)
        assert (ys.min() + ys.max() + 1) / 2 == pytest.approx(rows[r].item())
        assert (xs.min() + xs.max() + 1) / 2 == pytest.approx(cols[c].item())


def test_coordinate_addition_puts_row_and_column_in_the_right_hand_column():
    model = EMCapsNet(num_classes=2, img_size=(32, 28), conv_channels=4, primary_types=2, caps1_types=2, caps2_types=2)
    with torch.no_grad():
        model.classes.weight.zero_()  # votes = the coordinate offsets alone
    poses = torch.randn(1, 2, 16, 4, 3)
    votes = model.classes.votes(poses).view(1, 2, 4, 3, 2, 4, 4)  # (B, K, row, col, type, 4, 4)
    rows = receptive_field_centres(32, model.layers) / 32
    cols = receptive_field_centres(28, model.layers) / 28
    for r in range(4):
        for c in range(3):
            m = votes[0, 1, r, c, 1]
            assert m[0, 3].item() == pytest.approx(rows[r].item())  # the row: entry (0, 3)
            assert m[1, 3].item() == pytest.approx(cols[c].item())  # the column: entry (1, 3)
            m = m.clone()
            m[0, 3] = m[1, 3] = 0
            assert m.abs().max() == 0  # nothing else
    off = EMCapsNet(num_classes=2, img_size=32, conv_channels=4, primary_types=2, caps1_types=2, caps2_types=2,
                    coordinate_addition=False)
    with torch.no_grad():
        off.classes.weight.zero_()
    assert off.classes.votes(torch.randn(1, 2, 16, 4, 4)).abs().max() == 0


def _tiny(**kw):
    return EMCapsNet(num_classes=5, img_size=32, conv_channels=8, primary_types=4, caps1_types=4, caps2_types=4, **kw)


def test_batch_independence_and_shapes():
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        poses, acts = model.class_capsules(x)
        alone = torch.cat([model.class_capsules(x[i:i + 1])[1] for i in range(5)])
    assert poses.shape == (5, 5, 16) and acts.shape == (5, 5)
    assert torch.allclose(acts, alone, atol=1e-6)
    assert model.pose_matrices(x).shape == (5, 5, 4, 4)
    out = adapt(model).outputs(x)
    assert out.poses.shape == (5, 5, 16) and torch.allclose(out.scores, model(x))
    assert adapt(model).has_poses and not adapt(model).can_decode


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_finite_gradients_on_blank_and_saturated_images(fill):
    torch.manual_seed(0)
    model = _tiny()
    x = torch.full((4, 1, 32, 32), fill)
    acts = model(x)
    loss = model.capsule_loss(acts, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(acts).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_spread_loss_definition_and_margin_schedule():
    a = torch.tensor([[0.9, 0.5, 0.85], [0.1, 0.2, 0.3]])
    t = torch.tensor([0, 2])
    # sample 0: wrong classes 1 (gap 0.4) and 2 (gap 0.05); sample 1: classes 0 (gap 0.2), 1 (gap 0.1)
    m = 0.3
    expect = ((max(0, m - 0.4) ** 2 + max(0, m - 0.05) ** 2) + (max(0, m - 0.2) ** 2 + max(0, m - 0.1) ** 2)) / 2
    assert spread_loss(a, t, m).item() == pytest.approx(expect)
    model = _tiny()
    margins = []
    for epoch in range(10):
        model.set_epoch(epoch)
        margins.append(round(model.margin, 6))
    assert margins == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]


def test_input_checks():
    with pytest.raises(InvalidInputError, match="too small"):
        EMCapsNet(img_size=12)
    with pytest.raises(InvalidInputError, match="built for inputs"):
        _tiny()(torch.rand(1, 1, 28, 28))


def test_training_sets_the_margin_every_epoch_and_a_resumed_run_too(tmp_path, monkeypatch):
    from capsprobe.training import RunConfig, fit

    seen: list[int] = []
    original = EMCapsNet.set_epoch

    def record(self, epoch):
        seen.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(EMCapsNet, "set_epoch", record)
    options = dict(conv_channels=4, primary_types=2, caps1_types=2, caps2_types=2)
    cfg = RunConfig(model="capsnet_em_small", dataset="mnist-sample", epochs=2, batch_size=16, limit=32,
                    model_kwargs=options, max_shift=0)
    out = fit(cfg, tmp_path / "run", progress=False)
    assert seen == [0, 1]
    seen.clear()
    fit(RunConfig(**{**cfg.to_dict(), "epochs": 3}), out, resume=True, progress=False)
    assert seen == [2]  # the resumed epoch gets its own margin, 0.4, as in an uninterrupted run


def test_model_options_are_checked_against_the_em_constructor():
    from capsprobe.models import check_model_kwargs

    check_model_kwargs("capsnet_em_small", {"var_floor": 1e-3, "coordinate_addition": False})
    with pytest.raises(InvalidInputError, match="takes no option 'primary_dim'.*caps1_types"):
        check_model_kwargs("capsnet_em", {"primary_dim": 8})
    check_model_kwargs("capsnet_small", {"primary_dim": 8})  # the dynamic-routing family keeps its own


def test_the_transformation_suite_probes_an_em_model_and_its_poses():
    from capsprobe.data import load_dataset
    from capsprobe.probe import Subject, run_probe

    torch.manual_seed(0)
    model = EMCapsNet(num_classes=10, img_size=28, conv_channels=8, primary_types=4, caps1_types=4, caps2_types=4)
    split = load_dataset("mnist-sample", limit=24).test
    result = run_probe([Subject("em", model, "capsnet_em")], split, ["rotate", "flip"], {"rotate": [0, 90]},
                       n_boot=20, progress=False, device="cpu", lie=True)
    metrics = set(result.metrics["metric"])
    assert {"accuracy", "equivariance_error"} <= metrics  # the pose metrics: the probe read the 4x4 poses
    assert result.manifest["runs"][0]["poses"] and not result.manifest["runs"][0]["decoder"]
    layers = set(result.tables["lie_layers"]["layer"])
    assert {"conv1", "primary", "caps1", "caps2", "classes"} <= layers


@pytest.mark.parametrize("name", ["capsnet_em", "capsnet_em_small"])
@pytest.mark.parametrize("chw", [(1, 28, 28), (1, 32, 32), (2, 32, 32), (1, 40, 36)])
def test_shapes_and_config_through_timm(name, chw):
    c, h, w = chw
    model = timm.create_model(name, in_chans=c, num_classes=5, img_size=(h, w)).eval()
    assert model.pretrained_cfg["architecture"] == name and model.pretrained_cfg["input_size"] == (1, 32, 32)
    with torch.no_grad():
        x = torch.rand(2, c, h, w)
        assert model(x).shape == (2, 5) and model.forward_features(x).shape == (2, 5, 16)
    assert timm.list_models("capsnet_em*") == ["capsnet_em", "capsnet_em_small"]
