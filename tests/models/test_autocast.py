"""Mixed precision in the capsule primitives: every public routing function (and the custom autograd functions under
them) runs forward and backward under autocast, bf16 and fp16, with gradients equal to float32's to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from capsprobe.models import layers as L


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors this small gain nothing from a second thread, and lose much to it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


B, N_OUT, N_IN, D = 2, 3, 5, 4


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "votes": torch.randn(B, N_OUT, N_IN, D, generator=g),
        "activations": torch.rand(B, N_IN, generator=g),
        "logits": torch.randn(B, N_OUT, N_IN, generator=g),
        "beta_u": 0.1 * torch.randn(N_OUT, generator=g),
        "beta_a": 0.1 * torch.randn(N_OUT, generator=g),
        "prior": 0.1 * torch.randn(N_OUT, N_IN, generator=g),
    }


_NORM = nn.LayerNorm(D)


# every public function that routes (or multiplies votes through the custom autograd functions): the output whose
# sum is differentiated
ROUTINGS = {
    "thin_matmul": lambda t: L.thin_matmul(t["logits"].unsqueeze(2), t["votes"]),
    "route_by_agreement": lambda t: L.route_by_agreement(t["votes"], 3),
    "route_by_agreement_fused": lambda t: L.route_by_agreement(t["votes"], 3, fused=True),
    "fused_route_by_agreement": lambda t: L.fused_route_by_agreement(t["votes"], 3),
    "dynamic_routing": lambda t: L.dynamic_routing(t["votes"].transpose(1, 2), 3),
    "em_routing": lambda t: L.em_routing(t["votes"].transpose(1, 2), t["activations"], t["beta_u"], t["beta_a"])[0],
    "em_route_parent_major": lambda t: L.em_route_parent_major(t["votes"], t["activations"], t["beta_u"],
                                                               t["beta_a"])[1],
    "self_routing": lambda t: L.self_routing(t["votes"], t["logits"], t["activations"])[0],
    "attention_routing": lambda t: L.attention_routing(t["votes"], t["prior"]),
    "inverted_dot_product_routing": lambda t: L.inverted_dot_product_routing(t["votes"], 3, _NORM),
}


def _grads(fn, dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The output and the gradients of its weighted sum (so no gradient is zero by symmetry) with respect to every
    float32 input, the function run under CPU autocast to ``dtype`` (None: autocast off)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in _inputs().items()}
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = fn(leaves)
    weights = torch.linspace(0.5, 1.5, out.numel()).view_as(out)
    (out.float() * weights).sum().backward()
    return out.detach().float(), {k: v.grad for k, v in leaves.items() if v.grad is not None}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_routing_runs_forward_and_backward_under_autocast(name, dtype):
    """Before the custom autograd functions handled autocast, every backward here failed with "expected scalar type
    BFloat16 (Half) but found Float": the forward's products ran in the autocast dtype, the saved inputs were float32.
    Now the routing products run in float32 (as torch.amp.custom_fwd(cast_inputs=torch.float32) would run them), so
    the result and the gradients are float32's to rounding."""
    fn = ROUTINGS[name]
    ref_out, ref = _grads(fn, None)
    out, grads = _grads(fn, dtype)
    assert set(grads) == set(ref) and ref
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for key, g in grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), key
        torch.testing.assert_close(g, ref[key], rtol=1e-4, atol=1e-5 * float(ref[key].abs().max()),
                                   msg=f"gradient of {key}")


def test_inputs_made_in_low_precision_get_their_gradient_in_their_own_dtype():
    votes = _inputs()["votes"].to(torch.bfloat16).requires_grad_(True)
    logits = _inputs()["logits"].requires_grad_(True)  # float32 beside bfloat16 votes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.thin_matmul(logits.softmax(1).unsqueeze(2), votes).squeeze(2)
        v = L.fused_route_by_agreement(votes, 3)
    assert out.dtype == v.dtype == torch.float32
    (out.sum() + v.sum()).backward()
    assert votes.grad.dtype == torch.bfloat16 and logits.grad.dtype == torch.float32
    assert torch.isfinite(votes.grad.float()).all() and torch.isfinite(logits.grad).all()
