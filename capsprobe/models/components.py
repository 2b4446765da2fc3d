"""The parts of a capsule network that the ablation swaps, each behind a small registry.

Three registries, each a name -> function table with a ``register_*`` decorator and a ``get_*`` lookup that fails
with the known names (in the manner of timm's ``get_attn``), so a new routing is one function and one registration:

==================  ==============================================================================================
registry            entries
==================  ==============================================================================================
routing             ``dynamic``: Procedure 1 of Sabour et al. (2017), routing by agreement.
                    ``none``: no routing, uniform couplings ``c_ij = 1 / N_out`` never updated (Gu & Tresp 2020;
                    Gu, Tresp & Hu 2021, "w/o DR").
                    ``attention``: Efficient-CapsNet's self-attention routing (Mazzia et al. 2021), one pass, with
                    a zero prior (the routing here holds no parameters; the family's own layer learns it).
                    Self-routing and inverted dot-product attention hold parameters of their own (a routing
                    network; a layer norm and a classifier): they are capsule heads
                    (:mod:`capsprobe.models.heads`), where every routing is.
transformation      ``per-pair``: one ``W_ij`` per (input capsule, output capsule) pair, the paper's.
                    ``shared``: one ``W_j`` per output capsule shared by every input capsule, ``u_hat_j|i = W_j
                    u_i`` (Aff-CapsNet, Gu & Tresp 2020, "Improving the robustness of capsule networks to image
                    affine transformations", CVPR 2020).
capsule loss        ``margin``: eq. 4 of the paper. ``ce``: cross entropy with the capsule lengths as logits
                    (Gu, Tresp & Hu 2021's replacement of the margin loss).
==================  ==============================================================================================

A routing is ``fn(votes, num_iters, detach_inner, activation, record=None) -> v`` with votes ``(B, N_out, N_in, D)``
(parent-major, as :class:`capsprobe.models.capsnet.DigitCaps` lays them out) and ``v (B, N_out, D)``; ``activation`` is
the squash or the identity (the squash ablation); a ``record`` list, when given, receives the output capsules after
every iteration (the Lie-derivative profile reads them). A transformation is a pair (weight shape, votes function).
A capsule loss is ``fn(lengths (B, K), targets (B,) or (B, K)) -> scalar``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError
from .layers import attention_routing, margin_loss, route_by_agreement

__all__ = [
    "Transformation",
    "VoteMap",
    "get_capsule_loss",
    "get_routing",
    "get_vote_map",
    "length_cross_entropy",
    "list_capsule_losses",
    "list_routings",
    "list_vote_maps",
    "register_capsule_loss",
    "register_routing",
    "register_vote_map",
]

Routing = Callable[[Tensor, int, bool, Callable[[Tensor], Tensor]], Tensor]

_ROUTINGS: dict[str, Routing] = {}
_VOTE_MAPS: dict[str, "VoteMap"] = {}
_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


# --- routing ----------------------------------------------------------------------------------------------------


def register_routing(name: str) -> Callable[[Routing], Routing]:
    """Decorator: register ``fn(votes (B, N_out, N_in, D), num_iters, detach_inner, activation) -> v (B, N_out, D)``."""

    def deco(fn: Routing) -> Routing:
        _ROUTINGS[name] = fn
        return fn

    return deco


def get_routing(name: str) -> Routing:
    """The routing registered as ``name`` (``dynamic``, ``none``, ...)."""
    return _lookup(_ROUTINGS, "routing", name)


def list_routings() -> list[str]:
    return sorted(_ROUTINGS)


@register_routing("dynamic")
def _dynamic(votes: Tensor, num_iters: int, detach_inner: bool, activation: Callable[[Tensor], Tensor],
             record: list[Tensor] | None = None, fused: bool = False) -> Tensor:
    out = route_by_agreement(votes, num_iters, detach_inner, activation, record=record, fused=fused)
    assert isinstance(out, Tensor)  # couplings are asked for only by dynamic_routing
    return out


@register_routing("none")
def _no_routing(votes: Tensor, num_iters: int, detach_inner: bool, activation: Callable[[Tensor], Tensor],
                record: list[Tensor] | None = None) -> Tensor:
    """Uniform couplings ``c_ij = 1 / N_out``, never updated: Procedure 1's first iteration alone (the softmax of zero
    logits), ``s_j = sum_i u_hat_j|i / N_out``, then the activation (``num_iters`` unused).

    Not the plain mean over inputs (``c_ij = 1 / N_in``): at the paper's N(0, 0.01^2) initialisation that puts
    ``|s_j|`` near 1e-3, where the squash's gradient (about ``2 |s|``) vanishes, and capsnet_small never left chance
    (9.8% canvas accuracy after 5 epochs, 3 of 3 seeds)."""
    v = activation(votes.sum(dim=2) / votes.shape[1])
    if record is not None:
        record.append(v)
    return v


@register_routing("attention")
def _attention(votes: Tensor, num_iters: int, detach_inner: bool, activation: Callable[[Tensor], Tensor],
               record: list[Tensor] | None = None) -> Tensor:
    """Efficient-CapsNet's self-attention routing (:func:`capsprobe.models.layers.attention_routing`), zero prior,
    then the activation (``num_iters`` and ``detach_inner`` unused: it has no iterations)."""
    v = activation(attention_routing(votes))
    if record is not None:
        record.append(v)
    return v


# --- vote maps (the ablation's "transformation": how an input capsule votes for a class capsule) -----------------


@dataclass(frozen=True)
class VoteMap:
    """How input capsules vote for output capsules.

    Attributes:
        name: the registry name.
        shape: ``(num_in, in_dim, num_out, out_dim) -> weight shape``.
        votes: ``(u (B, N_in, D_in), weight) -> votes (B, N_out, N_in, D_out)``, parent-major.
    """

    name: str
    shape: Callable[[int, int, int, int], tuple[int, ...]]
    votes: Callable[[Tensor, Tensor], Tensor]


def register_vote_map(transformation: VoteMap) -> VoteMap:
    _VOTE_MAPS[transformation.name] = transformation
    return transformation


def get_vote_map(name: str) -> VoteMap:
    """The transformation registered as ``name`` (``per-pair``, ``shared``, ...)."""
    return _lookup(_VOTE_MAPS, "transformation", name)


def list_vote_maps() -> list[str]:
    return sorted(_VOTE_MAPS)


def _per_pair_votes(u: Tensor, weight: Tensor) -> Tensor:
    """``u_hat_j|i = W_ij u_i`` with ``weight (N_in, N_out, D_out, D_in)``: one batched product over the input
    capsules, ``(N_in, B, D_in) @ (N_in, D_in, N_out D_out)``, then one copy into the parent-major layout."""
    n_in, n_out, d_out, d_in = weight.shape
    w = weight.permute(0, 3, 1, 2).reshape(n_in, d_in, n_out * d_out)
    u_hat = torch.bmm(u.transpose(0, 1), w.to(u.dtype))  # (N_in, B, N_out * D_out)
    return u_hat.view(n_in, -1, n_out, d_out).permute(1, 2, 0, 3).contiguous()


def _shared_votes(u: Tensor, weight: Tensor) -> Tensor:
    """``u_hat_j|i = W_j u_i`` with ``weight (N_out, D_out, D_in)``: one product ``(B N_in, D_in) @ (D_in, N_out
    D_out)``, then the parent-major copy."""
    n_out, d_out, d_in = weight.shape
    batch, n_in, _ = u.shape
    u_hat = u.reshape(batch * n_in, d_in) @ weight.reshape(n_out * d_out, d_in).t().to(u.dtype)
    return u_hat.view(batch, n_in, n_out, d_out).permute(0, 2, 1, 3).contiguous()


register_vote_map(VoteMap("per-pair", lambda n_in, d_in, n_out, d_out: (n_in, n_out, d_out, d_in),
                                       _per_pair_votes))
register_vote_map(VoteMap("shared", lambda n_in, d_in, n_out, d_out: (n_out, d_out, d_in),
                                       _shared_votes))


# --- capsule losses ---------------------------------------------------------------------------------------------


def register_capsule_loss(name: str):
    """Decorator: register ``fn(lengths (B, K), targets (B,) or (B, K)) -> scalar``."""

    def deco(fn):
        _LOSSES[name] = fn
        return fn

    return deco


def get_capsule_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The capsule loss registered as ``name`` (``margin``, ``ce``, ...)."""
    return _lookup(_LOSSES, "capsule loss", name)


def list_capsule_losses() -> list[str]:
    return sorted(_LOSSES)


@register_capsule_loss("margin")
def _margin(lengths: Tensor, targets: Tensor) -> Tensor:
    return margin_loss(lengths, targets)


@register_capsule_loss("ce")
def length_cross_entropy(lengths: Tensor, targets: Tensor) -> Tensor:
    """Cross entropy with the capsule lengths as logits, mean over the batch. A (multi-)hot ``(B, K)`` target is
    spread evenly over its labels (MultiMNIST's two digits get half the target mass each)."""
    if lengths.dim() != 2:
        raise InvalidInputError(f"lengths must be (B, K), got shape {tuple(lengths.shape)}")
    if targets.dim() == 1:
        return F.cross_entropy(lengths, targets.long())
    if targets.shape != lengths.shape:
        raise InvalidInputError(f"targets must be (B,) or (B, K) = {tuple(lengths.shape)}, got {tuple(targets.shape)}")
    t = targets.to(lengths.dtype)
    return F.cross_entropy(lengths, t / t.sum(dim=1, keepdim=True).clamp_min(1e-12))


@register_capsule_loss("nll")
def normalised_nll(scores: Tensor, targets: Tensor, eps: float = 1e-12) -> Tensor:
    """The negative log of the true class's share of non-negative scores, ``-log(s_t / sum_k s_k)``, mean over the
    batch: SR-CapsNet's loss for every head (Hahn et al. 2019; cross entropy when the scores are a softmax). A
    (multi-)hot ``(B, K)`` target spreads its mass evenly over its labels."""
    if scores.dim() != 2:
        raise InvalidInputError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    log_share = (scores.clamp_min(0) + eps).log() - (scores.clamp_min(0).sum(1, keepdim=True) + eps).log()
    if targets.dim() == 1:
        return F.nll_loss(log_share, targets.long())
    if targets.shape != scores.shape:
        raise InvalidInputError(f"targets must be (B,) or (B, K) = {tuple(scores.shape)}, got {tuple(targets.shape)}")
    t = targets.to(scores.dtype)
    return -(t / t.sum(dim=1, keepdim=True).clamp_min(1e-12) * log_share).sum(1).mean()


# the 0.1 names of the vote-map registry (a "Transformation" there meant the capsule vote map, not an image
# perturbation): kept for one release
Transformation = VoteMap
register_transformation = register_vote_map
get_transformation = get_vote_map
list_transformations = list_vote_maps
