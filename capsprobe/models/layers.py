"""Capsule primitives, a leaf module: lengths, the squash, routing by agreement (Procedure 1), and the losses of
Sabour, Frosst & Hinton (2017): the margin loss (eq. 4) and the reconstruction loss (section 4.1); EM routing
(Procedure 1) and the spread loss of Hinton, Sabour & Frosst (2018), "Matrix capsules with EM routing", ICLR 2018;
self-routing (Hahn, Pyeon & Kim 2019), Efficient-CapsNet's self-attention routing and squash (Mazzia, Salvetti &
Chiaberge 2021) and inverted dot-product attention routing (Tsai et al. 2020); and the training-speed kernels:
Procedure 1 as one autograd node (:func:`fused_route_by_agreement`) and a first convolution with a faster CPU weight
gradient (:class:`StemConv2d`).

Mixed precision: under autocast the custom autograd functions (the routing's products, the fused routing, the stem's
weight gradient) compute in float32, forward and backward, whatever dtype their inputs come in (as
``torch.amp.custom_fwd(cast_inputs=torch.float32)`` would have them), so every routing function trains under bf16 or
fp16 autocast; the shipped models also route with autocast off."""

from __future__ import annotations

import contextlib
import math
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError

__all__ = [
    "route_by_agreement",
    "attention_routing",
    "capsule_lengths",
    "dynamic_routing",
    "em_inverse_temperatures",
    "em_route_parent_major",
    "em_routing",
    "efficient_squash",
    "fast_kernels_apply",
    "full_precision",
    "fused_route_by_agreement",
    "inverted_dot_product_routing",
    "margin_loss",
    "spread_loss",
    "reconstruction_loss",
    "self_routing",
    "set_fast_kernels",
    "squash",
    "StemConv2d",
    "thin_matmul",
]

_EPS = 1e-8


def full_precision(device: torch.device):
    """``torch.autocast(device.type, enabled=False)``: routing runs in float32 under mixed precision. On the meta
    device (shapes without values: the tests' dry runs) a no-op, as autocast knows no such device type."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _contract(x: Tensor, y: Tensor) -> Tensor:
    """``x @ y``, as a broadcast product when the contracted axis has length 1 (an outer product): CPU ``bmm``
    is about 6x slower on that shape than the elementwise product."""
    if x.shape[-1] == 1:
        return x * y
    return torch.matmul(x, y)


def _apply_in_float32(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)`` under autocast as :func:`torch.amp.custom_fwd` with ``cast_inputs=torch.float32`` runs a
    custom function: on the inputs' device with autocast on, the floating-point tensors are cast to float32 and the
    forward runs with autocast off, so the function sees one dtype (the cast is an ordinary autograd node: an input
    made in bf16 or fp16 gets its gradient in its own dtype). The backwards run with autocast off
    (:func:`_autocast_off`), as :func:`torch.amp.custom_bwd` would after such a forward.

    ``custom_fwd`` itself does not fit these functions: it names one device type when the class is defined, and it
    expects the forward's first argument to be ``ctx`` (these forwards take none: ``setup_context``).
    """
    device_type = next(a.device.type for a in args if isinstance(a, Tensor))
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):  # meta: autocast knows no such device
        return fn.apply(*args)
    cast = [a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
    with torch.autocast(device_type, enabled=False):
        return fn.apply(*cast)


def _autocast_off(grad: Tensor | None):
    """Autocast off on ``grad``'s device: a backward computes in the dtypes its forward saved (what
    :func:`torch.amp.custom_bwd` does after a forward that cast its inputs)."""
    return full_precision(grad.device) if grad is not None else nullcontext()


class _ThinMatmul(torch.autograd.Function):
    """``torch.matmul`` for the routing's matrix-vector products (one side has a length-1 axis), with a backward
    that forms the outer products elementwise (see :func:`_contract`) and a forward-mode rule, so
    :func:`torch.func.jvp` (the Lie derivatives) goes through it."""

    @staticmethod
    def forward(x: Tensor, y: Tensor) -> Tensor:
        return torch.matmul(x, y)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y = inputs
        ctx.save_for_backward(x, y)
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, y = ctx.saved_tensors
        gx = gy = None
        with _autocast_off(grad):
            if ctx.needs_input_grad[0]:
                gx = _sum_to(_contract(grad, y.transpose(-1, -2)), x.shape)
            if ctx.needs_input_grad[1]:
                gy = _sum_to(_contract(x.transpose(-1, -2), grad), y.shape)
        return gx, gy

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dy: Tensor | None) -> Tensor:
        x, y = ctx.saved_tensors
        out = torch.matmul(dx, y) if dx is not None else None
        if dy is not None:
            term = torch.matmul(x, dy)
            out = term if out is None else out + term
        assert out is not None
        return out


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum the broadcast batch axes of ``t`` back down to ``shape``."""
    return t if t.shape == shape else t.sum_to_size(shape)


def thin_matmul(x: Tensor, y: Tensor) -> Tensor:
    """``x @ y`` for the routing's matrix-vector products: same values as :func:`torch.matmul`, a faster
    backward on CPU (a training step of a routed capsule layer spends most of its time in those outer products).
    While ``torch.compile`` traces it, the plain product (dynamo cannot trace a Function with a custom ``jvp``: a
    graph break at every call; the compiler writes its own backward)."""
    if torch.compiler.is_compiling():
        if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):  # float32, as _apply_in_float32
            with torch.autocast(x.device.type, enabled=False):
                return torch.matmul(x.float(), y.float())
        return torch.matmul(x, y)
    return _apply_in_float32(_ThinMatmul, x, y)


class _StemConv2d(torch.autograd.Function):
    """``F.conv2d`` whose weight gradient is one batched product over the unfolded input (see :class:`StemConv2d`)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        with _autocast_off(grad):
            if ctx.needs_input_grad[0]:
                gx = torch.ops.aten.convolution_backward(grad, x, weight, None, ctx.stride, ctx.padding, (1, 1),
                                                         False, (0, 0), 1, (True, False, False))[0]
            if ctx.needs_input_grad[1]:
                cols = F.unfold(x, weight.shape[-2:], padding=ctx.padding, stride=ctx.stride)  # (B, C kh kw, L)
                gw = torch.matmul(grad.flatten(2), cols.transpose(1, 2)).sum(0).view_as(weight)  # (C_out, C kh kw)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


class StemConv2d(nn.Conv2d):
    """A network's first convolution (few input channels, a large kernel): :class:`torch.nn.Conv2d` with the same
    parameters and state dict, and on CPU a faster weight gradient.

    With one input channel, oneDNN's weight gradient of CapsNet's Conv1 (9x9) is the slowest kernel of a CPU training
    step: on 2 cores at batch 128, 41 ms for 64 channels and 253 ms for the paper's 256, against 15 and 32 ms as
    one batched matrix product ``grad (B, C_out, L) @ unfold(x) (B, L, C kh kw)`` summed over the batch (the unfolded
    input is ``C kh kw / C`` times the input: 81x for a 9x9 kernel, 33 MB at batch 128 on 28x28 digits). The forward
    and the input gradient are oneDNN's. Only up to :attr:`max_fast_in_channels` (2) input channels: with three,
    oneDNN has a kernel of its own and wins. oneDNN against the unfolded product, 32x32 inputs, batch 128, 2 cores:
    three channels 25 against 95 ms (64 output channels) and 114 against 159 ms (256); two channels 75 against 72 and
    242 against 110 ms. Elsewhere (CUDA, autocast, no gradient, groups or dilation, more input channels) it is
    :class:`torch.nn.Conv2d` itself.
    """

    fast_kernels: bool = True  # False: nn.Conv2d's own backward (the reference; see set_fast_kernels)
    max_fast_in_channels: int = 2

    def forward(self, x: Tensor) -> Tensor:
        if (not self.fast_kernels or x.device.type != "cpu" or not torch.is_grad_enabled()
                or torch.compiler.is_compiling() or not self.weight.requires_grad
                or self.in_channels > self.max_fast_in_channels
                or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        return _apply_in_float32(_StemConv2d, x, self.weight, self.bias, self.stride, self.padding)


def fast_kernels_apply(module: nn.Module) -> bool:
    """Whether ``module`` (one with a ``fast_kernels`` switch) takes its fast path now: switched on, in training mode,
    with gradients, and not while ``torch.compile`` traces it (the compiler fuses the eager graph itself, and it
    stays the one graph it sees)."""
    return (bool(getattr(module, "fast_kernels", False)) and module.training and torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def set_fast_kernels(model: nn.Module, enabled: bool) -> int:
    """Switch every module of ``model`` with a ``fast_kernels`` switch (:class:`StemConv2d`, the routed capsule layers'
    :func:`fused_route_by_agreement`) to its fast path (True, the default) or its eager reference (False): the same
    function, so the benchmark can time both in one process.

    Returns:
        How many modules were switched.
    """
    switched = 0
    for module in model.modules():
        if hasattr(type(module), "fast_kernels"):
            setattr(module, "fast_kernels", bool(enabled))  # noqa: B010  (typed: nn.Module's attributes are tensors)
            switched += 1
    return switched


def capsule_lengths(v: Tensor, dim: int = -1, eps: float = _EPS) -> Tensor:
    """Length of capsule vectors, ``sqrt(sum v^2 + eps)``, finite gradient at 0.

    Args:
        v: capsule vectors, e.g. ``(B, K, D)``.
        dim: the capsule (vector) axis.
        eps: added under the square root.

    Returns:
        ``v`` with ``dim`` reduced, e.g. ``(B, K)``.
    """
    return torch.sqrt(v.pow(2).sum(dim) + eps)


def squash(s: Tensor, dim: int = -1, eps: float = _EPS) -> Tensor:
    """The capsule non-linearity (eq. 1 of the paper), ``s |s|^2 / (1 + |s|^2) / sqrt(|s|^2 + eps)``.

    Short vectors shrink to almost zero length, long ones to just below 1; the direction is kept.
    The ``eps`` under the square root keeps the value and the gradient finite at the zero vector.

    Args:
        s: vectors to squash, any shape ``(..., D, ...)``.
        dim: the vector axis.
        eps: added under the square root.

    Returns:
        Tensor of the shape of ``s`` whose vectors have length in [0, 1).
    """
    sq = s.pow(2).sum(dim, keepdim=True)
    return s * (sq / (1.0 + sq)) / torch.sqrt(sq + eps)


def dynamic_routing(
    u_hat: Tensor,
    num_iters: int = 3,
    detach_inner: bool = False,
    return_couplings: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Routing by agreement (Procedure 1 of the paper).

    The routing logits ``b`` start at zero for every sample at every call. Each iteration computes the
    coupling ``c = softmax(b)`` over the *parent* (output) capsules, ``s_j = sum_i c_ij u_hat_j|i``,
    ``v_j = squash(s_j)`` and, except after the last iteration, ``b_ij += <u_hat_j|i, v_j>``.

    :class:`DigitCaps` produces its votes parent-major and routes them without this function's one
    transposing copy; the result is the same to rounding (tested against an explicit-loop Procedure 1).

    Args:
        u_hat: predictions of every input capsule for every output capsule, ``(B, N_in, N_out, D)``.
        num_iters: number of routing iterations, at least 1; exactly this many are run.
        detach_inner: if True, the iterations before the last see ``u_hat`` detached, so gradients flow
            only through the last one (a common speed-up; off in the paper and its official code).
        return_couplings: also return the coupling coefficients of every iteration.

    Returns:
        ``v`` of shape ``(B, N_out, D)``; with ``return_couplings`` also a list of ``num_iters``
        tensors ``c`` of shape ``(B, N_in, N_out)``, one per iteration.
    """
    if u_hat.dim() != 4:
        raise InvalidInputError(f"u_hat must be (B, N_in, N_out, D), got shape {tuple(u_hat.shape)}")
    if num_iters < 1:
        raise InvalidInputError(f"num_iters must be >= 1, got {num_iters}")
    out = route_by_agreement(u_hat.transpose(1, 2).contiguous(), num_iters, detach_inner, squash, return_couplings)
    if not return_couplings:
        return out
    v, couplings = out
    return v, [c.transpose(1, 2) for c in couplings]


def margin_loss(
    lengths: Tensor,
    targets: Tensor,
    m_pos: float = 0.9,
    m_neg: float = 0.1,
    lambda_neg: float = 0.5,
) -> Tensor:
    """Margin loss (eq. 4 of the paper), summed over classes and averaged over the batch.

    ``L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2``; no softmax before it.

    Args:
        lengths: capsule lengths ``(B, K)``.
        targets: class indices ``(B,)`` or a (multi-)hot target matrix ``(B, K)`` (e.g. two labels
            for MultiMNIST).
        m_pos: the upper margin ``m+``.
        m_neg: the lower margin ``m-``.
        lambda_neg: down-weighting of absent classes.

    Returns:
        Scalar loss.
    """
    if lengths.dim() != 2:
        raise InvalidInputError(f"lengths must be (B, K), got shape {tuple(lengths.shape)}")
    if targets.dim() == 1:
        t = F.one_hot(targets.long(), lengths.shape[1]).to(lengths.dtype)
    elif targets.shape == lengths.shape:
        t = targets.to(lengths.dtype)
    else:
        raise InvalidInputError(f"targets must be (B,) or (B, K) = {tuple(lengths.shape)}, got {tuple(targets.shape)}")
    present = t * F.relu(m_pos - lengths).pow(2)
    absent = lambda_neg * (1.0 - t) * F.relu(lengths - m_neg).pow(2)
    return (present + absent).sum(dim=1).mean()


def reconstruction_loss(reconstructions: Tensor, images: Tensor, weight: float = 0.0005) -> Tensor:
    """Weighted sum of squared errors per image, averaged over the batch (the paper's 0.0005 x SSE).

    Args:
        reconstructions: decoder outputs ``(B, C, H, W)`` in [0, 1].
        images: targets ``(B, C, H, W)`` in [0, 1].
        weight: the scale; 0.0005 in the paper.

    Returns:
        Scalar loss.
    """
    if reconstructions.shape != images.shape:
        raise InvalidInputError(
            f"reconstructions {tuple(reconstructions.shape)} and images {tuple(images.shape)} differ in shape"
        )
    sse = (reconstructions - images).pow(2).flatten(1).sum(dim=1)  # (B,)
    return weight * sse.mean()


def route_by_agreement(votes: Tensor, num_iters: int, detach_inner: bool = False,
                       activation: Callable[[Tensor], Tensor] | None = None,
                       return_couplings: bool = False,
                       record: list[Tensor] | None = None,
                       fused: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Procedure 1 on votes laid out ``(B, N_out, N_in, D)``: every step is a batched matrix product.

    With the parent capsule before the input capsule, ``s_j = sum_i c_ij u_hat_j|i`` is ``(1, N_in) @ (N_in, D)``
    and the agreement ``<u_hat_j|i, v_j>`` is ``(N_in, D) @ (D, 1)`` for every (sample, parent): both read the
    votes in place, with no permute copy of the largest tensor in the network. Couplings are ``(B, N_out, N_in)``.

    ``fused=True`` runs the same iterations as one autograd node with an analytic backward
    (:func:`fused_route_by_agreement`): same values, gradients equal to rounding, faster training. It needs
    neither ``record`` nor ``return_couplings`` and has no forward-mode rule, so it is for training steps; the
    other calls (the probe, the Lie derivatives' ``jvp``, the attacks' input gradients) take the eager path.
    """
    activation = squash if activation is None else activation
    if fused and not return_couplings and record is None:
        return fused_route_by_agreement(votes, num_iters, detach_inner, activation)
    batch, n_out, n_in, _ = votes.shape
    inner = votes.detach() if detach_inner else votes
    b = votes.new_zeros(batch, n_out, n_in)  # routing logits
    couplings: list[Tensor] = []
    v = votes.new_empty(0)
    for it in range(num_iters):
        last = it == num_iters - 1
        u = votes if last else inner
        c = b.softmax(dim=1)  # over the parents
        couplings.append(c)
        v = activation(thin_matmul(c.unsqueeze(2), u).squeeze(2))  # (B, N_out, D)
        if record is not None:
            record.append(v)
        if not last:
            b = b + thin_matmul(u, v.unsqueeze(-1)).squeeze(-1)  # agreement (B, N_out, N_in)
    return (v, couplings) if return_couplings else v


def _agreement(votes: Tensor, v: Tensor) -> Tensor:
    """``<u_hat_j|i, v_j>`` for votes ``(B, N_out, N_in, D)`` and ``v (B, N_out, D)`` -> ``(B, N_out, N_in)``, as
    ``(1, D) @ (D, N_in)`` on the transposed view of the votes (no copy): on 2 CPU cores 2.9x faster than the
    ``(N_in, D) @ (D, 1)`` form (1.4 against 4.0 ms at B=128, N_in=288, D=16)."""
    return torch.matmul(v.unsqueeze(2), votes.transpose(-1, -2)).squeeze(2)


class _FusedRouting(torch.autograd.Function):
    """Procedure 1 as one autograd node (see :func:`fused_route_by_agreement`)."""

    @staticmethod
    def forward(votes: Tensor, num_iters: int, detach_inner: bool,
                activation: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch, n_out, n_in, _ = votes.shape
        b = votes.new_zeros(batch, n_out, n_in)  # routing logits
        cs, ss, vs = [], [], []
        for it in range(num_iters):
            c = b.softmax(dim=1)  # over the parents (B, N_out, N_in)
            s = torch.matmul(c.unsqueeze(2), votes).squeeze(2)  # (B, N_out, D)
            v = activation(s)
            cs.append(c)
            ss.append(s)
            vs.append(v)
            if it < num_iters - 1:
                b = b + _agreement(votes, v)
        # the output and the per-iteration couplings (T, B, N_out, N_in), inputs (T, B, N_out, D) and outputs of the
        # activation: what the backward needs besides the votes, about 1/D + 2/N_in of their size per iteration
        return v, torch.stack(cs), torch.stack(ss), torch.stack(vs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        votes, num_iters, detach_inner, activation = inputs
        _, cs, ss, vs = output
        ctx.save_for_backward(votes, cs, ss, vs)
        ctx.detach_inner, ctx.activation = detach_inner, activation
        ctx.mark_non_differentiable(cs, ss, vs)
        ctx.set_materialize_grads(False)  # no zero gradients for the saved iterates

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, *_unused: Tensor | None) -> tuple[Tensor | None, None, None, None]:
        votes, cs, ss, vs = ctx.saved_tensors
        if grad_v is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        with _autocast_off(grad_v):  # the iterates are in the dtype the forward ran in
            # Iteration t: c_t = softmax(b_t), s_t = c_t u, v_t = f(s_t), b_{t+1} = b_t + a_t with a_t = <u, v_t>.
            # d/du = sum_t c_t (x) ds_t + sum_t da_t (x) v_t: every outer product is gathered and formed in one product
            # at the end, so the votes are read once per matrix-vector product and the (B, N_out, N_in, D) gradient is
            # written once.
            coefs: list[Tensor] = []  # (B, N_out, N_in) each
            vecs: list[Tensor] = []  # (B, N_out, D) each
            grad_b: Tensor | None = None  # dL/da_{t-1} = sum over later iterations of dL/db
            g_v = grad_v
            for t in range(len(cs) - 1, -1, -1):
                with torch.enable_grad():
                    s = ss[t].detach().requires_grad_(True)
                    (g_s,) = torch.autograd.grad(ctx.activation(s), s, g_v)  # through the activation, (B, N_out, D)
                coefs.append(cs[t])
                vecs.append(g_s)
                if t == 0 or ctx.detach_inner:
                    break  # c_0 is constant; with detach_inner no earlier iteration sees the votes
                c = cs[t]
                g_c = _agreement(votes, g_s)  # (B, N_out, N_in)
                g_logits = c * (g_c - (c * g_c).sum(dim=1, keepdim=True))  # softmax over the parents, backward
                grad_b = g_logits if grad_b is None else grad_b + g_logits
                coefs.append(grad_b)
                vecs.append(vs[t - 1])
                g_v = torch.matmul(grad_b.unsqueeze(2), votes).squeeze(2)  # through a_{t-1} = <u, v_{t-1}>
            # (B, N_out, N_in, 2T-1) @ (B, N_out, 2T-1, D): the coefficients stacked row-wise, read transposed
            grad_votes = torch.matmul(torch.stack(coefs, dim=-2).transpose(-1, -2), torch.stack(vecs, dim=-2))
            return grad_votes, None, None, None


def fused_route_by_agreement(votes: Tensor, num_iters: int, detach_inner: bool = False,
                             activation: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Procedure 1 on parent-major votes ``(B, N_out, N_in, D)`` as one autograd node with an analytic backward.

    The forward runs the iterations of :func:`route_by_agreement` (the same products, so the same values) and keeps
    the couplings ``c_t``, the activation's inputs ``s_t`` and outputs ``v_t`` of every iteration, never a copy of the
    votes. The backward walks the iterations in reverse: through the activation (autograd on the small ``s_t``, so
    any activation works), the agreement's and the couplings' matrix-vector products and the softmax over the
    parents; the ``2 T - 1`` outer products that make the votes' gradient, ``c_t (x) ds_t`` and ``da_{t-1} (x)
    v_{t-1}``, are formed together as one ``(N_in, 2T-1) @ (2T-1, D)`` product per (sample, parent). Eager autograd
    forms each one as its own tensor of the votes' size and adds them up (``2 T - 1`` writes and ``2 T - 2``
    read-add-writes of the largest tensor in the network).

    No forward-mode rule: :func:`torch.func.jvp` goes through the eager path.

    Args:
        votes: ``u_hat (B, N_out, N_in, D)``.
        num_iters: iterations, at least 1.
        detach_inner: as :func:`route_by_agreement`: only the last iteration's ``s = c u`` carries the votes'
            gradient.
        activation: the capsule non-linearity; :func:`squash` when None.

    Returns:
        ``v (B, N_out, D)``.
    """
    if num_iters < 1:
        raise InvalidInputError(f"num_iters must be >= 1, got {num_iters}")
    v, _, _, _ = _apply_in_float32(_FusedRouting, votes, num_iters, detach_inner,
                                   squash if activation is None else activation)
    return v


def em_inverse_temperatures(num_iters: int, final: float = 0.01) -> list[float]:
    """The inverse temperature ``lambda`` of each EM iteration: ``final * (1 - 0.95 ** t)``, ``t = 1 .. num_iters``.

    The paper says only that ``lambda`` grows over the iterations; this schedule is Gritzman's (2019, "Avoiding
    implementation pitfalls of matrix capsule networks with EM routing", the IBM implementation that reaches 95.4%
    on smallNORB), the one most public reimplementations use.
    """
    if num_iters < 1:
        raise InvalidInputError(f"num_iters must be >= 1, got {num_iters}")
    return [final * (1.0 - 0.95 ** (t + 1)) for t in range(num_iters)]


def em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    num_iters: int = 3,
    final_lambda: float = 0.01,
    var_floor: float = 1e-3,
    eps: float = 1e-8,
    cost_scale: float = 1.0,
    record: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """EM routing (Procedure 1 of Hinton, Sabour & Frosst 2018) between ``N_in`` child and ``N_out`` parent capsules.

    ``R`` starts uniform, ``1 / N_out``. Each iteration ``t`` (inverse temperature ``lambda_t``,
    :func:`em_inverse_temperatures`) runs

    - the M-step, for every parent ``j``: ``R'_ij = R_ij a_i``; ``mu_j = sum_i R'_ij V_ij / sum_i R'_ij``;
      ``sigma_j^2 = sum_i R'_ij (V_ij - mu_j)^2 / sum_i R'_ij + var_floor``;
      ``cost_j^h = (beta_u + log sigma_j^h) sum_i R'_ij``; ``a_j = logistic(lambda_t (beta_a - sum_h cost_j^h))``;
    - then, except after the last iteration, the E-step, for every child ``i``:
      ``R_ij = a_j p_ij / sum_k a_k p_ik`` with ``p_ij`` the diagonal Gaussian density of ``V_ij`` under parent ``j``.

    Numerical stability (the reimplementations' NaN threads are about these three places):

    - the E-step runs in the log domain, ``log a_j + log p_ij`` normalised with a log-sum-exp (a softmax), so a
      vote far from every parent gives no 0/0;
    - ``var_floor`` is added to every variance, so a parent that receives one vote (or identical votes) has a finite
      ``log sigma`` and density;
    - ``eps`` is added to the mass ``sum_i R'_ij`` it divides by: a parent that receives nothing (a blank image, where
      every child activation is 0) gets ``mu = 0``, ``sigma^2 = var_floor``, cost 0 and ``a_j = logistic(lambda
      beta_a)``, with finite gradients.

    Speed: every sum over the children is a batched matrix product over the votes laid out parent-major (the
    variance as ``sum_i c_ij V_ij^2 - mu_j^2``, clamped at 0; the E-step's squared distance expanded the same way), so
    no iteration makes a temporary of the votes' size and autograd keeps only the votes and their squares: a training
    step of ``capsnet_em_small`` ran 3.7x faster on 2 CPU cores than with the plain elementwise form (30 against 8
    images/s at batch 128), and the result equals a plain loop-by-loop reference of the procedure to 1.4e-15 in
    float64 (``tests/models/test_emcaps.py``).

    Args:
        votes: ``V (B, N_in, N_out, P)``, e.g. ``P = 16`` flattened 4x4 pose matrices.
        activations: child activations ``a (B, N_in)`` in [0, 1].
        beta_u, beta_a: learned cost offsets, one per parent ``(N_out,)``.
        num_iters: EM iterations (3 in the paper).
        final_lambda: the inverse temperature the schedule approaches.
        var_floor: added to every variance.
        eps: added to the routed mass before dividing by it.
        cost_scale: multiplies every cost (1: the paper). Gritzman (2019) scales it by ``100 N_out / N_in``, the
            information a parent receives (a class capsule hears from every position); the capsule layers do when
            built with ``normalise_cost=True`` (:class:`capsprobe.models.emcaps.EMCapsNet`).
        record: when a list, receives the routing assignments ``R (B, N_in, N_out)`` in use at each iteration's
            M-step (the first is the uniform start).

    Returns:
        Parent poses ``mu (B, N_out, P)`` and activations ``a (B, N_out)``.
    """
    if votes.dim() != 4:
        raise InvalidInputError(f"votes must be (B, N_in, N_out, P), got shape {tuple(votes.shape)}")
    batch, n_in, n_out, dim = votes.shape
    if activations.shape != (batch, n_in):
        raise InvalidInputError(f"activations must be ({batch}, {n_in}), got {tuple(activations.shape)}")
    inner: list[Tensor] | None = [] if record is not None else None
    mu, a = em_route_parent_major(votes.transpose(1, 2).contiguous(), activations, beta_u, beta_a, num_iters,
                                  final_lambda, var_floor, eps, cost_scale, inner)
    if record is not None and inner is not None:
        record.extend(r.transpose(1, 2) for r in inner)
    return mu, a


def em_route_parent_major(votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor, num_iters: int = 3,
                          final_lambda: float = 0.01, var_floor: float = 1e-3, eps: float = 1e-8,
                          cost_scale: float = 1.0, record: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """:func:`em_routing` on votes laid out ``(B, N_out, N_in, P)`` (what the capsule layers make); assignments
    ``R`` are ``(B, N_out, N_in)``."""
    batch, n_out, n_in, dim = votes.shape
    lambdas = em_inverse_temperatures(num_iters, final_lambda)
    beta_u = beta_u.reshape(1, n_out)
    beta_a = beta_a.reshape(1, n_out)
    squares = votes.pow(2)
    a_in = activations.unsqueeze(1)  # (B, 1, N_in)
    r = votes.new_full((batch, n_out, n_in), 1.0 / n_out)
    mu = votes.new_zeros(batch, n_out, dim)
    a_out = votes.new_zeros(batch, n_out)
    for t, lam in enumerate(lambdas):
        if record is not None:
            record.append(r)
        # M-step
        weighted = r * a_in  # R'_ij (B, N_out, N_in)
        mass = weighted.sum(2)  # (B, N_out)
        coeff = (weighted / (mass.unsqueeze(2) + eps)).unsqueeze(2)  # (B, N_out, 1, N_in)
        mu = thin_matmul(coeff, votes).squeeze(2)  # (B, N_out, P)
        second = thin_matmul(coeff, squares).squeeze(2)
        var = (second - mu.pow(2) * (2 - coeff.sum(-1))).clamp(min=0) + var_floor  # sum_i c (V - mu)^2
        log_sigma = 0.5 * var.log()
        cost = cost_scale * ((beta_u.unsqueeze(-1) + log_sigma) * mass.unsqueeze(-1)).sum(-1)  # (B, N_out)
        logit = lam * (beta_a - cost)
        a_out = torch.sigmoid(logit)
        if t == len(lambdas) - 1:
            break
        # E-step, in the log domain: sum_h (V - mu)^2 / (2 var) = V^2 . 1 / (2 var) - V . mu / var + const
        inv = 0.5 / var  # (B, N_out, P)
        dist = (thin_matmul(squares, inv.unsqueeze(-1)) - thin_matmul(votes, (2 * mu * inv).unsqueeze(-1))
                ).squeeze(-1) + (mu.pow(2) * inv).sum(-1, keepdim=True)  # (B, N_out, N_in)
        log_p = -dist - log_sigma.sum(-1, keepdim=True) - 0.5 * dim * math.log(2 * math.pi)
        r = torch.softmax(F.logsigmoid(logit).unsqueeze(-1) + log_p, dim=1)  # over the parents
    return mu, a_out


def spread_loss(activations: Tensor, targets: Tensor, margin: float | Tensor = 0.2) -> Tensor:
    """Spread loss (Hinton, Sabour & Frosst 2018, section 3.1), summed over the wrong classes, averaged over the batch.

    ``L = sum_{i != t} max(0, m - (a_t - a_i))^2`` for the target class ``t``; the paper raises ``m`` from 0.2 by
    0.1 per epoch up to 0.9 (:class:`capsprobe.models.emcaps.EMCapsNet` does, from the training loop's
    ``set_epoch``).

    Args:
        activations: class activations ``(B, K)``.
        targets: class indices ``(B,)``.
        margin: ``m`` (a 0-d tensor too: a compiled step reads it without recompiling when it changes).

    Returns:
        Scalar loss.
    """
    if activations.dim() != 2:
        raise InvalidInputError(f"activations must be (B, K), got shape {tuple(activations.shape)}")
    if targets.dim() != 1 or targets.shape[0] != activations.shape[0]:
        raise InvalidInputError(f"spread loss takes class indices ({activations.shape[0]},), got {tuple(targets.shape)}")
    a_t = activations.gather(1, targets.long().unsqueeze(1))  # (B, 1)
    gaps = F.relu(margin - (a_t - activations)).pow(2)
    wrong = 1.0 - F.one_hot(targets.long(), activations.shape[1]).to(activations.dtype)
    return (gaps * wrong).sum(1).mean()


# --- the routings SR-CapsNet and its successors compare (votes parent-major, (B, N_out, N_in, D)) -------------------


def efficient_squash(s: Tensor, dim: int = -1, eps: float = 1e-20) -> Tensor:
    """Efficient-CapsNet's squash (Mazzia, Salvetti & Chiaberge 2021, eq. 3), ``(1 - exp(-|s|)) s / |s|``.

    Unlike :func:`squash` it is not flat near zero (its slope there is 1, not 0). ``eps`` keeps the zero vector's
    value and gradient finite.

    Args:
        s: vectors, any shape ``(..., D, ...)``.
        dim: the vector axis.
        eps: added to the norm before dividing by it.

    Returns:
        Vectors of the shape of ``s`` with length in [0, 1).
    """
    norm = torch.sqrt(s.pow(2).sum(dim, keepdim=True) + eps)
    return -torch.expm1(-norm) * s / norm


def _check_votes(votes: Tensor) -> tuple[int, int, int, int]:
    if votes.dim() != 4:
        raise InvalidInputError(f"votes must be parent-major (B, N_out, N_in, D), got shape {tuple(votes.shape)}")
    b, n_out, n_in, d = votes.shape
    return b, n_out, n_in, d


def self_routing(votes: Tensor | None, logits: Tensor, activations: Tensor, eps: float = 1e-12
                 ) -> tuple[Tensor | None, Tensor]:
    """Self-routing (Hahn, Pyeon & Kim, NeurIPS 2019, eqs. 1-4): no iterations and no agreement; every input
    capsule's own routing network gives its couplings.

    For input capsule ``i`` (pose ``u_i``, activation ``a_i``) and parent ``j``: ``c_ij = softmax_j(W^route_i u_i +
    b_i)`` (``logits``, computed by the caller's routing network), ``a_j = sum_i c_ij a_i / sum_i a_i`` (so the
    parents' activations sum to 1 over ``j``) and ``u_j = sum_i c_ij a_i u_hat_j|i / sum_i c_ij a_i``.

    Args:
        votes: ``u_hat (B, N_out, N_in, D)``; None when only the activations are wanted (Hahn et al.'s class layer).
        logits: routing logits ``(B, N_out, N_in)``.
        activations: input activations ``a (B, N_in)``, in [0, 1].
        eps: added to the two masses divided by (a blank image, where every ``a_i`` is 0, stays finite).

    Returns:
        Parent poses ``(B, N_out, D)`` (None without votes) and activations ``(B, N_out)``.
    """
    if logits.dim() != 3 or activations.shape != (logits.shape[0], logits.shape[2]):
        raise InvalidInputError(f"logits must be (B, N_out, N_in) and activations (B, N_in), got "
                                f"{tuple(logits.shape)} and {tuple(activations.shape)}")
    weighted = logits.softmax(dim=1) * activations.unsqueeze(1)  # c_ij a_i (B, N_out, N_in)
    mass = weighted.sum(2)  # (B, N_out)
    a_out = mass / (activations.sum(1, keepdim=True) + eps)
    if votes is None:
        return None, a_out
    if votes.shape[:3] != logits.shape:
        raise InvalidInputError(f"votes {tuple(votes.shape)} and logits {tuple(logits.shape)} disagree")
    coeff = weighted / (mass.unsqueeze(2) + eps)
    return thin_matmul(coeff.unsqueeze(2), votes).squeeze(2), a_out


def attention_routing(votes: Tensor, prior: Tensor | None = None) -> Tensor:
    """The self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021, eqs. 5-7), before the
    squash.

    For each parent ``j``, the votes attend to each other: ``A_j = U_j U_j^T / sqrt(D)`` with ``U_j`` the ``(N_in, D)``
    votes for ``j``; the couplings are the row sums of ``A_j``, normalised over the parents, ``c_ij =
    softmax_j(sum_k A_j[i, k])``, plus a learned prior ``B_ij`` (zeros at initialisation); ``s_j = sum_i c_ij
    u_hat_j|i``. The row sum is ``<u_hat_j|i, sum_k u_hat_j|k> / sqrt(D)``, so ``A_j`` is never formed (``O(N_in D)``
    per parent, not ``O(N_in^2)``). No iterations.

    Args:
        votes: ``u_hat (B, N_out, N_in, D)``.
        prior: ``B (N_out, N_in)``, added after the softmax; None for zeros.

    Returns:
        ``s (B, N_out, D)`` (Efficient-CapsNet squashes it with :func:`efficient_squash`).
    """
    _, n_out, n_in, d = _check_votes(votes)
    agreement = thin_matmul(votes, votes.sum(2, keepdim=True).transpose(-1, -2)).squeeze(-1) / math.sqrt(d)
    c = agreement.softmax(dim=1)  # over the parents (B, N_out, N_in)
    if prior is not None:
        if prior.shape != (n_out, n_in):
            raise InvalidInputError(f"prior must be ({n_out}, {n_in}), got {tuple(prior.shape)}")
        c = c + prior.to(c.dtype)
    return thin_matmul(c.unsqueeze(2), votes).squeeze(2)


def inverted_dot_product_routing(votes: Tensor, num_iters: int, norm: Callable[[Tensor], Tensor],
                                 record: list[Tensor] | None = None) -> Tensor:
    """Inverted dot-product attention routing (Tsai, Srivastava, Goh & Salakhutdinov, ICLR 2020, Procedure 1).

    The parents' poses start at zero, so the first iteration's couplings are uniform; then each iteration computes
    the agreement of every vote with its parent's current pose, ``a_ij = <p_j, u_hat_j|i> / sqrt(D)`` (the scale of
    the authors' code), the couplings ``r_ij = softmax_j(a_ij)`` (over the *parents*: the parents compete for each
    child, the inversion of a transformer's attention), and the poses ``p_j = norm(sum_i r_ij u_hat_j|i)``,
    with ``norm`` the layer normalisation of the paper. "Concurrent" routing (every layer of a stack updated in one
    iteration from the previous iteration's values) is this procedure when there is one routed layer, as in
    capsprobe's heads.

    Args:
        votes: ``u_hat (B, N_out, N_in, D)``.
        num_iters: iterations, at least 1 (the paper uses 2 or 3).
        norm: the normalisation applied to the parents' poses at every iteration, ``(B, N_out, D) -> (B, N_out, D)``.
        record: when a list, receives the poses after every iteration.

    Returns:
        Parent poses ``p (B, N_out, D)``.
    """
    _, n_out, _, d = _check_votes(votes)
    if num_iters < 1:
        raise InvalidInputError(f"num_iters must be >= 1, got {num_iters}")
    p = norm(votes.sum(2) / n_out)  # the first iteration: p = 0 gives uniform couplings 1 / N_out
    if record is not None:
        record.append(p)
    for _ in range(num_iters - 1):
        agreement = thin_matmul(votes, p.unsqueeze(-1)).squeeze(-1) / math.sqrt(d)  # (B, N_out, N_in)
        r = agreement.softmax(dim=1)  # over the parents
        p = norm(thin_matmul(r.unsqueeze(2), votes).squeeze(2))
        if record is not None:
            record.append(p)
    return p
