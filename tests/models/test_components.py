"""The ablation's components: routing, transformation, squash, loss and reconstruction weight behind registries, and
the CNN counterparts (9x9 kernels, average pooling). Each variant is checked against its definition written out."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import capsprobe  # noqa: F401  (registers the models)
from capsprobe.errors import InvalidInputError
from capsprobe.models import (
    CapsNet,
    capsule_lengths,
    create_model,
    get_routing,
    list_capsule_losses,
    list_routings,
    list_vote_maps,
    margin_loss,
    register_routing,
    squash,
)
from capsprobe.models.capsnet import DigitCaps, PrimaryCaps
from capsprobe.models.components import _ROUTINGS, length_cross_entropy, route_by_agreement


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registries_list_the_paper_and_the_ablation_entries():
    assert list_routings() == ["attention", "dynamic", "none"]
    assert list_vote_maps() == ["per-pair", "shared"]
    assert list_capsule_losses() == ["ce", "margin", "nll"]
    with pytest.raises(InvalidInputError, match="unknown routing 'em'; known: attention, dynamic, none"):
        CapsNet(routing="em")
    with pytest.raises(InvalidInputError, match="unknown transformation 'conv'; known: per-pair, shared"):
        CapsNet(transformation="conv")
    with pytest.raises(InvalidInputError, match="unknown capsule loss 'hinge'; known: ce, margin, nll"):
        CapsNet(loss="hinge")
    with pytest.raises(InvalidInputError, match="squash must be true or false"):
        CapsNet(squash="no")


def test_no_routing_is_uniform_couplings_over_parents_never_updated():
    """``none``: s_j = sum_i u_hat_j|i / N_out, i.e. one iteration of Procedure 1 (zero logits), whatever num_iters;
    not the mean over inputs (that would be N_in / N_out times smaller)."""
    torch.manual_seed(0)
    votes = torch.randn(2, 4, 7, 5, dtype=torch.float64)  # (B, N_out, N_in, D)
    v = get_routing("none")(votes, 3, False, squash)
    torch.testing.assert_close(v, squash(votes.sum(2) / 4), rtol=0, atol=1e-14)
    torch.testing.assert_close(v, route_by_agreement(votes, 1), rtol=0, atol=1e-14)
    assert not torch.allclose(v, route_by_agreement(votes, 3))  # dynamic routing moves away from uniform
    assert not torch.allclose(v, squash(votes.mean(2)))
    layer = DigitCaps(num_in=7, in_dim=3, num_out=4, out_dim=5, num_iters=5, routing="none").double()
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(u), squash(layer.votes(u).sum(2) / 4), rtol=0, atol=1e-14)


def test_shared_transformation_is_one_matrix_per_output_capsule():
    """``shared``: u_hat_j|i = W_j u_i with W (N_out, D_out, D_in): the einsum written out, and two input capsules
    with equal poses cast equal votes (a per-pair layer would not)."""
    torch.manual_seed(0)
    layer = DigitCaps(num_in=6, in_dim=3, num_out=4, out_dim=5, transformation="shared").double()
    assert tuple(layer.weight.shape) == (4, 5, 3)
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    u[:, 1] = u[:, 0]
    votes = layer.votes(u)  # (B, N_out, N_in, D_out)
    torch.testing.assert_close(votes, torch.einsum("jdk,bik->bjid", layer.weight, u), rtol=0, atol=1e-14)
    torch.testing.assert_close(votes[:, :, 0], votes[:, :, 1], rtol=0, atol=0)
    per_pair = DigitCaps(num_in=6, in_dim=3, num_out=4, out_dim=5).double()
    assert not torch.allclose(per_pair.votes(u)[:, :, 0], per_pair.votes(u)[:, :, 1])
    g, = torch.autograd.grad(layer(u).sum(), layer.weight)
    assert g.abs().max() > 0


def test_squash_off_leaves_primary_and_class_capsules_linear():
    torch.manual_seed(0)
    primary = PrimaryCaps(4, num_types=2, dim=3, kernel_size=3, stride=1, squash=False)
    x = torch.randn(2, 4, 5, 5)
    raw = primary.conv(x).view(2, 2, 3, 3, 3).permute(0, 1, 3, 4, 2).reshape(2, 18, 3)
    torch.testing.assert_close(primary(x), raw)
    assert capsule_lengths(primary(10 * x)).max() > 1  # unbounded: no squash
    layer = DigitCaps(num_in=18, in_dim=3, num_out=4, out_dim=5, routing="none", squash=False)
    u = torch.randn(2, 18, 3)
    torch.testing.assert_close(layer(u), layer.votes(u).sum(2) / 4)  # the weighted sum itself
    torch.testing.assert_close(layer(3 * u), 3 * layer(u))  # linear in its input


def test_capsule_losses_and_which_one_training_uses():
    lengths = torch.tensor([[0.2, 0.7, 0.1], [0.9, 0.3, 0.4]])
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(length_cross_entropy(lengths, labels), F.cross_entropy(lengths, labels))
    two_hot = torch.tensor([[0, 1, 1], [1, 0, 0]])
    expected = -(0.5 * F.log_softmax(lengths[0], 0)[1] + 0.5 * F.log_softmax(lengths[0], 0)[2]
                 + F.log_softmax(lengths[1], 0)[0]) / 2
    torch.testing.assert_close(length_cross_entropy(lengths, two_hot), expected)
    from capsprobe.models import adapt
    from capsprobe.tasks import classify_loss

    torch.manual_seed(0)
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    for loss, fn in (("margin", margin_loss), ("ce", F.cross_entropy)):
        model = create_model("capsnet_small", loss=loss, conv_channels=8, primary_types=2)
        got, scores = classify_loss(adapt(model), x, y, None, recon_weight=0.0)
        torch.testing.assert_close(got, fn(scores, y))
        with_recon, _ = classify_loss(adapt(model), x, y, None, recon_weight=0.5)
        assert with_recon > got  # the decoder's squared error is added on top


def test_a_new_routing_is_one_function_and_one_registration():
    @register_routing("max-vote")
    def max_vote(votes, num_iters, detach_inner, activation):
        return activation(votes.max(dim=2).values)

    try:
        model = create_model("capsnet_small", routing="max-vote", conv_channels=8, primary_types=2)
        x = torch.rand(2, 1, 28, 28)
        u = model.primary(F.relu(model.conv1(x)))
        torch.testing.assert_close(model.forward_features(x), squash(model.digits.votes(u).max(dim=2).values))
    finally:
        del _ROUTINGS["max-vote"]


# parameters of capsnet_small at 1x28x28 (288 primary capsules of 8-D, 10 classes of 16-D): the per-pair matrices hold
# 288 * 10 * 16 * 8 = 368,640; shared ones 10 * 16 * 8 = 1,280; no other component changes the count
@pytest.mark.parametrize("options, expected", [
    ({}, 2_117_072),
    ({"routing": "none"}, 2_117_072),
    ({"transformation": "shared"}, 2_117_072 - 368_640 + 1_280),
    ({"squash": False}, 2_117_072),
    ({"loss": "ce"}, 2_117_072),
    ({"decoder": False}, 705_728),
])
def test_parameter_count_of_each_capsnet_variant(options, expected):
    assert _params(create_model("capsnet_small", **options)) == expected


def test_every_variant_keeps_the_timm_interface_and_probe_outputs():
    x = torch.rand(2, 1, 28, 28)
    for options in ({"routing": "none"}, {"transformation": "shared"}, {"squash": False}, {"loss": "ce"}):
        model = create_model("capsnet_small", conv_channels=8, primary_types=2, **options).eval()
        poses = model.forward_features(x)
        assert poses.shape == (2, 10, 16) and model(x).shape == (2, 10)
        out = model.probe_outputs(x)
        assert out.poses.shape == (2, 10, 16) and out.representation.shape == (2, 160)
        assert model.decode(poses).shape == (2, 1, 28, 28)


def _conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


@pytest.mark.parametrize("kernel, pool", [(5, "max"), (9, "max"), (5, "avg"), (9, "avg")])
def test_cnn_counterparts_kernel_and_pooling(kernel, pool):
    """9x9 SAME convolutions keep the map size (so the classifier widths, and only the conv weights, change);
    average pooling swaps the layer type and nothing else."""
    model = create_model("baseline_cnn_pool", img_size=40, channels=[64, 64, 32], kernel_size=kernel, pool=pool)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(kernel, kernel)] * 3 and all(c.padding == (kernel // 2,) * 2 for c in convs)
    pools = [m for m in model.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert len(pools) == 2 and all(isinstance(p, nn.AvgPool2d if pool == "avg" else nn.MaxPool2d) for p in pools)
    convs_total = _conv_params(1, 64, kernel) + _conv_params(64, 64, kernel) + _conv_params(64, 32, kernel)
    fcs = (32 * 10 * 10 * 328 + 328) + (328 * 192 + 192) + (192 * 10 + 10)  # 40 -> 20 -> 10 after two poolings
    assert _params(model) == convs_total + fcs
    assert model.forward_features(torch.rand(2, 1, 40, 40)).shape == (2, 32, 10, 10)


def test_cnn_pool_options_and_bad_values():
    default = create_model("baseline_cnn_pool", img_size=40)
    assert default.pool == "max" and default.kernel_size == 5
    assert create_model("baseline_cnn", pool=True).pool == "max" and create_model("baseline_cnn").pool == "none"
    with pytest.raises(InvalidInputError, match="pool must be one of none, max, avg"):
        create_model("baseline_cnn", pool="median")
    with pytest.raises(InvalidInputError, match="kernel_size must be an odd positive integer"):
        create_model("baseline_cnn", kernel_size=4)


@pytest.mark.parametrize("shapes", [((3, 5, 1, 7), (3, 5, 7, 4)),   # the weighted sum: a row vector times votes
                                    ((3, 5, 7, 4), (3, 5, 4, 1)),   # the agreement: votes times a column
                                    ((2, 1, 1, 7), (4, 7, 1)),      # broadcast batch axes
                                    ((6, 1), (1, 3))])              # an outer product in the forward too
def test_thin_matmul_values_gradients_and_forward_mode_match_matmul(shapes):
    """The routing's products with a hand-written backward: every gradient and the jvp (the Lie derivatives run
    through it) agree with autograd's matmul, in float64, including broadcast batch axes summed back down."""
    from torch.func import jvp

    from capsprobe.models.layers import thin_matmul

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shapes[0], generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(*shapes[1], generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(thin_matmul, (x, y), check_forward_ad=True, check_backward_ad=True)
    out, ref = thin_matmul(x, y), torch.matmul(x, y)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    gx, gy = torch.autograd.grad((out * w).sum(), (x, y))
    rx, ry = torch.autograd.grad((ref * w).sum(), (x, y))
    assert gx.shape == x.shape and gy.shape == y.shape
    torch.testing.assert_close(gx, rx, rtol=0, atol=1e-12)
    torch.testing.assert_close(gy, ry, rtol=0, atol=1e-12)
    dx, dy = torch.randn_like(x), torch.randn_like(y)
    _, t = jvp(thin_matmul, (x.detach(), y.detach()), (dx, dy))
    _, r = jvp(torch.matmul, (x.detach(), y.detach()), (dx, dy))
    torch.testing.assert_close(t, r, rtol=0, atol=1e-12)


def test_cpu_allocator_tuning_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    """The CLI's mallopt call is accepted by glibc (both parameters in range, so mallopt returns 1), is harmless
    to repeat, and the environment switch leaves the allocator alone."""
    import sys

    from capsprobe.runtime import tune_cpu_allocator

    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert tune_cpu_allocator() is True
        assert tune_cpu_allocator() is True
    monkeypatch.setenv("CAPSPROBE_MALLOC_TUNE", "0")
    assert tune_cpu_allocator() is False


def test_tuned_allocator_stops_page_faulting_freed_blocks():
    """What the tuning is for: blocks of 16-26 MB made, written and freed one after the other, each a little larger
    than the last (as a layer's tensors vary with the batch). glibc's defaults serve every one with a fresh ``mmap``
    (the dynamic threshold rises only to the last freed size) and fault it in page by page; tuned, the heap keeps the
    freed block and only its growth is new. Each case in a fresh interpreter, since mallopt is process-wide."""
    import subprocess
    import sys

    if not (sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")):
        pytest.skip("glibc's allocator only")
    code = (
        "import resource, torch\n"
        "from capsprobe.runtime import tune_cpu_allocator\n"
        "tune_cpu_allocator()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for k in range(40):\n"
        "    t = torch.empty(4_000_000 + k * 65_536).fill_(1.0)\n"
        "    del t\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )

    def faults(tune: str) -> int:
        env = {**os.environ, "CAPSPROBE_MALLOC_TUNE": tune}
        for key in [k for k in env if k.startswith("MALLOC_")]:
            env.pop(key)  # glibc's own environment switches would override both cases
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, tuned = faults("0"), faults("1")
    assert default > 40 * 16e6 / 4096 / 2  # at least half of every block faulted in, 40 times
    assert tuned < default / 5  # measured: 206,240 faults against 10,300-16,600
