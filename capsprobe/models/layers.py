"""Capsule primitives, a leaf module: lengths, the squash, routing by agreement (Procedure 1), and the losses of
Sabour, Frosst & Hinton (2017): the margin loss (eq. 4) and the reconstruction loss (section 4.1)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError

__all__ = [
    "route_by_agreement",
    "capsule_lengths",
    "dynamic_routing",
    "margin_loss",
    "reconstruction_loss",
    "squash",
]

_EPS = 1e-8


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
                       record: list[Tensor] | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Procedure 1 on votes laid out ``(B, N_out, N_in, D)``: every step is a batched matrix product.

    With the parent capsule before the input capsule, ``s_j = sum_i c_ij u_hat_j|i`` is ``(1, N_in) @ (N_in, D)``
    and the agreement ``<u_hat_j|i, v_j>`` is ``(N_in, D) @ (D, 1)`` for every (sample, parent): both read the
    votes in place, with no permute copy of the largest tensor in the network. Couplings are ``(B, N_out, N_in)``.
    """
    activation = squash if activation is None else activation
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
        v = activation(torch.matmul(c.unsqueeze(2), u).squeeze(2))  # (B, N_out, D)
        if record is not None:
            record.append(v)
        if not last:
            b = b + torch.matmul(u, v.unsqueeze(-1)).squeeze(-1)  # agreement (B, N_out, N_in)
    return (v, couplings) if return_couplings else v
