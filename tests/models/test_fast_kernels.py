"""The training-speed kernels: Procedure 1 as one autograd node (fused_route_by_agreement) and StemConv2d.

Each is checked against an independent reference (explicit loops in float64, or torch's own convolution), against
the eager path in float32 within 1e-6, and for where it is used: training steps only, never the probe's eager calls.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import capsprobe  # noqa: F401  (registers the models)
from capsprobe.errors import InvalidInputError
from capsprobe.models.layers import (
    StemConv2d,
    _StemConv2d,
    fused_route_by_agreement,
    route_by_agreement,
    set_fast_kernels,
    squash,
)


def _identity(s):
    return s


def _procedure_1(votes, num_iters, detach_inner, activation):
    """Procedure 1 with explicit loops over parents and children; votes parent-major ``(B, N_out, N_in, D)``.
    With ``detach_inner`` every iteration but the last sees the votes detached."""
    batch, n_out, n_in, _ = votes.shape
    b = torch.zeros(batch, n_out, n_in, dtype=votes.dtype)
    for it in range(num_iters):
        u = votes if (it == num_iters - 1 or not detach_inner) else votes.detach()
        c = torch.exp(b) / torch.exp(b).sum(dim=1, keepdim=True)  # over the parents
        v = []
        for j in range(n_out):
            s = sum(c[:, j, i, None] * u[:, j, i] for i in range(n_in))
            v.append(activation(s))
        v = torch.stack(v, dim=1)
        if it < num_iters - 1:
            b = b + torch.stack([torch.stack([(u[:, j, i] * v[:, j]).sum(-1) for i in range(n_in)], dim=1)
                                 for j in range(n_out)], dim=1)
    return v


@pytest.mark.parametrize("activation", [squash, _identity], ids=["squash", "identity"])
@pytest.mark.parametrize("detach_inner", [False, True])
@pytest.mark.parametrize("num_iters", [1, 2, 3])
def test_fused_routing_is_procedure_1_with_gradients(num_iters, detach_inner, activation):
    """float64 against explicit loops, values and the votes' gradient under a loss that weighs every output
    component differently (a wrong softmax axis, a missing iteration's outer product or a wrong sign all fail)."""
    torch.manual_seed(num_iters)
    votes = (0.7 * torch.randn(3, 4, 6, 5, dtype=torch.float64)).requires_grad_()
    ref_votes = votes.detach().clone().requires_grad_()
    v = fused_route_by_agreement(votes, num_iters, detach_inner, activation)
    v_ref = _procedure_1(ref_votes, num_iters, detach_inner, activation)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(v)
    (g,) = torch.autograd.grad((v * weights).sum(), votes)
    (g_ref,) = torch.autograd.grad((v_ref * weights).sum(), ref_votes)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert g.abs().max() > 1e-2


def test_fused_routing_passes_gradcheck():
    """Finite differences (detach_inner is left out: by design its gradient is not the function's derivative)."""
    votes = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fused_route_by_agreement(x, 3), (votes,))


@pytest.mark.parametrize("num_iters", [1, 3])
def test_fused_routing_equals_the_eager_path_in_float32(num_iters):
    """The eager path (autograd through every product) and the fused node: the same forward, gradients within 1e-6
    at the paper's sizes (1152 children, 10 parents, 16-D)."""
    torch.manual_seed(1)
    votes = 0.05 * torch.randn(4, 10, 1152, 16)
    a, b = votes.clone().requires_grad_(), votes.clone().requires_grad_()
    v_eager = route_by_agreement(a, num_iters)
    v_fused = route_by_agreement(b, num_iters, fused=True)
    assert v_fused.grad_fn is not None and "Fused" in type(v_fused.grad_fn).__name__
    assert v_eager.grad_fn is not None and "Fused" not in type(v_eager.grad_fn).__name__
    torch.testing.assert_close(v_fused, v_eager, rtol=0, atol=1e-6)
    weights = torch.randn_like(v_eager)
    (v_eager * weights).sum().backward()
    (v_fused * weights).sum().backward()
    assert a.grad is not None and b.grad is not None
    scale = a.grad.abs().max()
    assert scale > 1e-3
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6 * max(1.0, float(scale)))


def test_fused_routing_keeps_fewer_tensors_for_backward_than_eager():
    """Peak memory: the fused node keeps the votes once and the small per-iteration iterates; the eager graph keeps
    no less (the saved bytes are counted by storage, so a view of the votes is not counted twice)."""

    def saved_bytes(fn):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        votes = torch.randn(8, 10, 288, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(votes)
        return sum(storages.values())

    fused = saved_bytes(lambda x: route_by_agreement(x, 3, fused=True))
    eager = saved_bytes(lambda x: route_by_agreement(x, 3))
    votes_bytes = 8 * 10 * 288 * 16 * 4
    assert fused <= eager
    assert fused < 1.5 * votes_bytes  # the votes and 3 x (couplings, s, v): (1 + 3 / 16 + small) of the votes


def test_fused_routing_rejects_no_iterations():
    with pytest.raises(InvalidInputError, match="num_iters"):
        fused_route_by_agreement(torch.randn(1, 2, 3, 4), 0)


def _has_fused_node(out) -> bool:
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "Fused" in type(node).__name__:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


@pytest.mark.parametrize("name", ["capsnet_small", "backbone_head_dynamic"])
def test_training_steps_use_the_fused_node_and_everything_else_the_eager_path(name):
    """Training mode with gradients: the fused node. Eval mode (the probe, the attacks' input gradients, the Lie
    derivatives' jvp) and set_fast_kernels(False): the eager path, with the same outputs."""
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10)
    x = torch.rand(2, 1, 28, 28)
    model.train()
    assert _has_fused_node(model(x))
    model.eval()
    assert not _has_fused_node(model(x.clone().requires_grad_()))
    model.train()
    assert set_fast_kernels(model, False) >= 1
    out_eager = model(x)
    assert not _has_fused_node(out_eager)
    set_fast_kernels(model, True)
    torch.testing.assert_close(model(x), out_eager, rtol=0, atol=1e-6)


def test_a_capsnet_training_step_gives_the_eager_gradients():
    """One training objective's parameter gradients, fast kernels against the eager reference (float32)."""
    from capsprobe.training.loop import Objective

    torch.manual_seed(0)
    model = timm.create_model("capsnet_small", in_chans=1, num_classes=10)
    objective = Objective(model).train()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))

    def grads():
        model.zero_grad()
        out = objective(x, y)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()
    set_fast_kernels(model, False)
    eager = grads()
    assert fast.keys() == eager.keys() and "conv1.weight" in fast and "digits.weight" in fast
    for n in fast:
        scale = max(1.0, float(eager[n].abs().max()))
        torch.testing.assert_close(fast[n], eager[n], rtol=0, atol=2e-5 * scale, msg=n)


@pytest.mark.parametrize("in_chans, stride, padding, bias", [(1, 1, 0, True), (3, 2, 1, False), (2, 1, 2, True)])
def test_stem_conv_weight_gradient_is_the_convolutions(in_chans, stride, padding, bias):
    """float64: values, weight, bias and input gradients equal torch's convolution (a gradient not summed over the
    batch, a transposed unfold or a wrong stride/padding all fail)."""
    torch.manual_seed(0)
    stem = StemConv2d(in_chans, 5, 3, stride=stride, padding=padding, bias=bias).double()
    ref = nn.Conv2d(in_chans, 5, 3, stride=stride, padding=padding, bias=bias).double()
    ref.load_state_dict(stem.state_dict())
    x = torch.randn(4, in_chans, 9, 8, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = _StemConv2d.apply(x, stem.weight, stem.bias, stem.stride, stem.padding), ref(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(stem.weight.grad, ref.weight.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)
    if bias:
        torch.testing.assert_close(stem.bias.grad, ref.bias.grad, rtol=0, atol=1e-10)
    w, b = stem.weight.detach().clone().requires_grad_(), None
    if bias:
        b = stem.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w_, b_: _StemConv2d.apply(a, w_, b_, stem.stride, stem.padding),
                                    (x.detach()[:2].clone().requires_grad_(), w, b))


@pytest.mark.parametrize("in_chans, fast", [(1, True), (2, True), (3, False)])
def test_stem_conv_takes_its_own_weight_gradient_only_for_one_or_two_channels(in_chans, fast):
    """Three input channels (RGB) keep oneDNN's weight gradient, which beats the unfolded product there (25 against
    95 ms for 32x32, 64 channels, batch 128); one or two take the unfolded product."""
    stem = StemConv2d(in_chans, 4, 9)
    y = stem(torch.rand(2, in_chans, 12, 12))
    assert ("StemConv2d" in type(y.grad_fn).__name__) is fast


def test_stem_conv_is_a_plain_conv_for_state_dicts_and_outside_training():
    """Runs saved with nn.Conv2d load unchanged; no gradient, or the switch off, is nn.Conv2d's own path."""
    plain = nn.Conv2d(1, 4, 9)
    stem = StemConv2d(1, 4, 9)
    stem.load_state_dict(plain.state_dict())
    assert isinstance(stem, nn.Conv2d)
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        y = stem(x)
    assert y.grad_fn is None
    torch.testing.assert_close(y, plain(x).detach())
    stem.fast_kernels = False
    assert "StemConv2d" not in type(stem(x).grad_fn).__name__


def test_bench_times_the_eager_and_the_fast_path_in_one_process():
    from capsprobe.bench import bench_model

    caps = bench_model("capsnet_small", batch_size=4, steps=2, warmup=1, device="cpu", kernels="both")
    assert caps.kernels == "both" and caps.eager_train_images_per_s is not None and caps.eager_train_images_per_s > 0
    eager = bench_model("capsnet_small", batch_size=4, steps=1, warmup=1, device="cpu", kernels="eager")
    assert eager.kernels == "eager" and eager.eager_train_images_per_s is None
    cnn = bench_model("baseline_cnn", batch_size=2, steps=1, warmup=1, device="cpu", kernels="both")
    assert cnn.kernels == "-" and cnn.eager_train_images_per_s is None  # nothing to switch
    with pytest.raises(InvalidInputError, match="kernels"):
        bench_model("capsnet_small", batch_size=2, steps=1, warmup=1, device="cpu", kernels="fused")


def test_while_torch_compile_traces_the_model_it_sees_the_eager_graph(monkeypatch):
    """Under torch.compile the compiler fuses the eager graph itself: neither fast path is taken while it traces."""
    torch.manual_seed(0)
    model = timm.create_model("capsnet_small", in_chans=1, num_classes=10).train()
    x = torch.rand(2, 1, 28, 28)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    out = model(x)
    assert not _has_fused_node(out)
    assert "StemConv2d" not in type(model.conv1(x).grad_fn).__name__
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert _has_fused_node(model(x))
