"""CapsNet: parameter counts, routing, grouping, squash, losses, decoder masking, timm registry."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import capsprobe  # noqa: F401  (registers the models)
from capsprobe.models import CapsNet, capsule_lengths, dynamic_routing, margin_loss, reconstruction_loss, squash
from capsprobe.models.capsnet import PrimaryCaps

CAPSNETS = timm.list_models(module="capsnet")  # dynamic routing; the EM family: tests/models/test_emcaps.py


def _count(model, skip_prefix=None):
    return sum(p.numel() for n, p in model.named_parameters() if skip_prefix is None or not n.startswith(skip_prefix))


def test_registry_lists_variants():
    assert {"capsnet", "capsnet_small"} <= set(CAPSNETS)


def test_paper_parameter_counts():
    model = timm.create_model("capsnet", in_chans=1, num_classes=10)
    assert isinstance(model, CapsNet)
    assert _count(model) == 8_215_568
    assert _count(model, skip_prefix="decoder") == 6_804_224
    assert _count(CapsNet(decoder=False)) == 6_804_224
    assert model.num_primary == 1152


def test_small_parameter_count_documented():
    model = timm.create_model("capsnet_small", in_chans=1, num_classes=10)
    assert _count(model) == 2_117_072
    assert _count(model, skip_prefix="decoder") == 705_728


def _reference_routing(u_hat, num_iters):
    """Procedure 1 written with explicit loops over input and output capsules."""
    B, n_in, n_out, D = u_hat.shape
    b = torch.zeros(B, n_in, n_out, dtype=u_hat.dtype)
    for _ in range(num_iters):
        c = torch.exp(b) / torch.exp(b).sum(dim=2, keepdim=True)
        v = torch.zeros(B, n_out, D, dtype=u_hat.dtype)
        for j in range(n_out):
            s = sum(c[:, i, j, None] * u_hat[:, i, j] for i in range(n_in))
            n2 = (s * s).sum(-1, keepdim=True)
            v[:, j] = n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)
        for i in range(n_in):
            for j in range(n_out):
                b[:, i, j] += (u_hat[:, i, j] * v[:, j]).sum(-1)
    return v


@pytest.mark.parametrize("num_iters", [1, 2, 3, 5])
def test_routing_matches_procedure_1_and_iteration_count_is_exact(num_iters):
    u_hat = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    v, couplings = dynamic_routing(u_hat, num_iters, return_couplings=True)
    assert len(couplings) == num_iters
    torch.testing.assert_close(v, _reference_routing(u_hat, num_iters))
    # one more or one fewer iteration gives another answer
    assert not torch.allclose(v, _reference_routing(u_hat, num_iters + 1))


def test_coupling_sums_to_one_over_parents():
    u_hat = torch.randn(3, 20, 7, 16)
    _, couplings = dynamic_routing(u_hat, 3, return_couplings=True)
    for c in couplings:
        assert c.shape == (3, 20, 7)
        torch.testing.assert_close(c.sum(dim=2), torch.ones(3, 20))


def test_routing_logits_are_per_sample_and_fresh():
    u_hat = torch.randn(4, 10, 3, 8)
    v1 = dynamic_routing(u_hat, 3)
    v2 = dynamic_routing(u_hat, 3)  # no state carried between calls
    torch.testing.assert_close(v1, v2)
    _, couplings = dynamic_routing(u_hat, 3, return_couplings=True)
    assert not torch.allclose(couplings[-1][0], couplings[-1][1])  # each sample routes its own way


def test_one_iteration_gives_uniform_coupling():
    u_hat = torch.randn(2, 12, 5, 16)
    v, (c,) = dynamic_routing(u_hat, 1, return_couplings=True)
    torch.testing.assert_close(c, torch.full_like(c, 1 / 5))
    torch.testing.assert_close(v, squash(u_hat.sum(dim=1) / 5))


def test_detach_inner_only_changes_gradients():
    u_hat = torch.randn(2, 6, 3, 4, requires_grad=True)
    v_full = dynamic_routing(u_hat, 3)
    v_det = dynamic_routing(u_hat, 3, detach_inner=True)
    torch.testing.assert_close(v_full, v_det)
    g_full = torch.autograd.grad(v_full.sum(), u_hat)[0]
    g_det = torch.autograd.grad(v_det.sum(), u_hat)[0]
    assert not torch.allclose(g_full, g_det)


def test_primary_caps_grouping():
    prim = PrimaryCaps(in_channels=3, num_types=4, dim=8, kernel_size=3, stride=2)
    x = torch.randn(2, 3, 9, 9)
    maps = prim.conv(x)  # (2, 32, 4, 4)
    caps = prim(x)
    h, w = maps.shape[-2:]
    assert caps.shape == (2, 4 * h * w, 8) and prim.num_capsules(9, 9) == 4 * h * w
    for t in range(4):
        for i in range(h):
            for j in range(w):
                expected = squash(maps[:, t * 8 : (t + 1) * 8, i, j])  # the 8 channels of type t at (i, j)
                torch.testing.assert_close(caps[:, t * h * w + i * w + j], expected)


def test_squash_length_and_direction():
    s = torch.randn(100, 16) * torch.logspace(-3, 3, 100)[:, None]
    v = squash(s)
    lengths = v.norm(dim=-1)
    assert (lengths < 1).all()
    assert lengths[-1] > 0.99 and lengths[0] < 1e-4
    torch.testing.assert_close(F.cosine_similarity(v, s, dim=-1), torch.ones(100))


def test_squash_and_lengths_have_finite_gradients_at_zero():
    zero = torch.zeros(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(squash, (zero,))
    assert torch.autograd.gradcheck(capsule_lengths, (zero,))
    grad = torch.autograd.grad(capsule_lengths(squash(zero)).sum(), zero)[0]
    assert torch.isfinite(grad).all()


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.8]])
    labels = torch.tensor([0, 2])
    # sample 0: 0 + 0.5 * 0.2^2 + 0 = 0.02; sample 1: 0.5 * 0.4^2 + 0.5 * 0.1^2 + 0.1^2 = 0.095
    torch.testing.assert_close(margin_loss(lengths, labels), torch.tensor((0.02 + 0.095) / 2))
    # a one-hot target is the same; a two-hot target charges the second present class too
    torch.testing.assert_close(margin_loss(lengths, F.one_hot(labels, 3)), torch.tensor(0.0575))
    two_hot = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # sample 0: 0 + 0.6^2 + 0 = 0.36
    torch.testing.assert_close(margin_loss(lengths, two_hot), torch.tensor((0.36 + 0.095) / 2))


def test_reconstruction_loss_hand_computed():
    recon = torch.zeros(2, 1, 2, 2)
    images = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    torch.testing.assert_close(reconstruction_loss(recon, images), torch.tensor(0.0005 * 4 / 2))
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(recon, images[:, :, :1])


def test_decoder_masks_by_label_and_by_prediction():
    model = CapsNet(conv_channels=16, primary_types=4).eval()
    poses = torch.randn(3, 10, 16)
    labels = torch.tensor([1, 4, 7])
    masked = model.mask(poses, labels)
    keep = F.one_hot(labels, 10).bool()
    assert (masked[~keep] == 0).all() and torch.equal(masked[keep], poses[keep])
    # other capsules do not reach the decoder
    noisy = poses.clone()
    noisy[~keep] = torch.randn_like(noisy[~keep])
    torch.testing.assert_close(model.decode(poses, labels), model.decode(noisy, labels))
    # without labels the longest capsule is kept
    pred = capsule_lengths(poses).argmax(1)
    torch.testing.assert_close(model.decode(poses), model.decode(poses, pred))
    other = (pred + 1) % 10
    assert not torch.allclose(model.decode(poses), model.decode(poses, other))
    images = model.decode(poses)
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("name", CAPSNETS)
def test_batch_independence(name):
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        batch = model.forward_features(x)
        alone = model.forward_features(x[5:6])
    torch.testing.assert_close(alone[0], batch[5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CAPSNETS)
@pytest.mark.parametrize("chw", [(1, 28, 28), (1, 36, 36), (1, 40, 40), (3, 32, 32)])
def test_shapes_through_timm(name, chw):
    c, h, w = chw
    model = timm.create_model(name, in_chans=c, num_classes=10, img_size=h)
    x = torch.rand(2, c, h, w)
    poses = model.forward_features(x)
    assert poses.shape == (2, 10, 16)
    lengths = model.forward_head(poses)
    assert lengths.shape == (2, 10) and (lengths < 1).all()
    torch.testing.assert_close(model(x), lengths)
    assert model.decode(poses).shape == (2, c, h, w)
    conv_side = (h - 9 + 1 - 9) // 2 + 1
    assert model.num_primary == model.primary.num_types * conv_side**2


def test_num_iters_and_detach_options_reach_the_model():
    model = timm.create_model("capsnet_small", num_iters=1, detach_inner=True)
    assert model.num_iters == 1 and model.digits.detach_inner


def test_wrong_input_size_is_a_clear_error():
    model = timm.create_model("capsnet_small")
    with pytest.raises(ValueError, match=r"built for inputs \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32))


def test_gradients_reach_every_parameter():
    model = timm.create_model("capsnet_small")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    poses = model.forward_features(x)
    loss = margin_loss(model.forward_head(poses), y) + reconstruction_loss(model.decode(poses, y), x)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_pretrained_is_refused():
    with pytest.raises(RuntimeError, match="no pretrained weights"):
        timm.create_model("capsnet", pretrained=True)


@pytest.mark.parametrize("name", CAPSNETS + ["baseline_cnn"])
def test_timm_pretrained_cfg_is_attached(name):
    model = timm.create_model(name)
    assert model.pretrained_cfg["architecture"] == name and model.pretrained_cfg["input_size"] == (1, 28, 28)


@pytest.mark.parametrize("num_iters", [1, 3])
def test_digit_caps_votes_and_routing_match_procedure_1_with_gradients(num_iters):
    """The parent-major votes and in-place routing of DigitCaps give Procedure 1's values and gradients
    (float64, against explicit loops fed the paper's u_hat_j|i = W_ij u_i)."""
    from capsprobe.models.capsnet import DigitCaps

    torch.manual_seed(0)
    layer = DigitCaps(num_in=7, in_dim=3, num_out=4, out_dim=5, num_iters=num_iters).double()
    u = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    v = layer(u)
    weight = layer.weight.detach().clone().requires_grad_()
    u_ref = u.detach().clone().requires_grad_()
    u_hat = torch.einsum("ijdk,bik->bijd", weight, u_ref)
    torch.testing.assert_close(layer.predictions(u), u_hat, rtol=0, atol=1e-12)
    v_ref = _reference_routing(u_hat, num_iters)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-12)
    probe = torch.randn_like(v)  # a loss that weighs every output component differently
    g_w, g_u = torch.autograd.grad((v * probe).sum(), (layer.weight, u))
    g_w_ref, g_u_ref = torch.autograd.grad((v_ref * probe).sum(), (weight, u_ref))
    torch.testing.assert_close(g_w, g_w_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_u, g_u_ref, rtol=0, atol=1e-10)
    assert g_w.abs().max() > 1e-3 and g_u.abs().max() > 1e-3


def test_convolution_stack_is_the_models_own_convolutions():
    """bench's roofline times exactly the model's convolutions: same weights, same output as inside forward."""
    from capsprobe.bench import bench_model

    model = timm.create_model("capsnet_small", in_chans=1, num_classes=10)
    stack = model.convolution_stack()
    assert {id(p) for p in stack.parameters()} == {id(model.conv1.weight), id(model.conv1.bias),
                                                   id(model.primary.conv.weight), id(model.primary.conv.bias)}
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(stack(x), model.primary.conv(F.relu(model.conv1(x))))
    caps = bench_model("capsnet_small", batch_size=4, steps=1, warmup=1, device="cpu")
    cnn = bench_model("baseline_cnn", batch_size=4, steps=1, warmup=1, device="cpu")
    assert caps.conv_share is not None and caps.conv_share > 0
    assert cnn.conv_share is None
