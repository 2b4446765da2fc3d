"""What capsprobe asks of a model: class scores and a representation, optionally poses and a decoder.

The probe and the trainer never check a model's type or name: they call :func:`adapt` and ask the adapter.

- A model that defines ``probe_outputs(x) -> ModelOutputs`` (capsprobe's CapsNet does) answers for itself;
  it can decode when it has ``decode(poses, labels)`` and ``can_decode`` is not False.
- A timm-style model (``forward_features`` / ``forward_head(..., pre_logits=True)``) gets the default: scores
  are the softmax of the logits, the representation is the pre-logit feature vector.
- Any other ``nn.Module``: wrap it in :class:`ModelAdapter` and say, in one callable that runs the model once per
  batch, what its scores, representation (and poses) are::

      def outputs(m, x):
          features = m.encoder(x)
          return {"scores": m.head(features).softmax(-1), "representation": features.flatten(1)}

      adapter = ModelAdapter(my_model, outputs=outputs)

  With ``poses`` in the dict (``(B, K, D)``, one vector per class; say ``has_poses=True``) the probe adds the pose
  metrics; with ``decode`` the reconstruction metrics and pictures. The separate callables
  (``representation=``, ``scores=``, ``poses=``) are still accepted; each runs the model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError

__all__ = ["Adapter", "ModelAdapter", "ModelOutputs", "adapt", "check_outputs", "unwrap"]


@dataclass(frozen=True)
class ModelOutputs:
    """What the probe sees of any model for a batch of images.

    Attributes:
        scores: class scores ``(B, K)`` (capsule lengths, or softmax probabilities).
        representation: ``(B, F)``: flattened poses ``(B, K*D)`` for a capsule model, pre-logit features else.
        poses: class-capsule poses ``(B, K, D)``; None for a model without poses.
        logits: pre-softmax class scores ``(B, K)`` where the model has them (cross-entropy training).
    """

    scores: Tensor
    representation: Tensor
    poses: Tensor | None = None
    logits: Tensor | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel / compiled wrapper or an adapter."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]  # a compiled module's original
        elif isinstance(model, Adapter):
            model = model.model
        else:
            return model


class Adapter(nn.Module):
    """The probe's view of a model (an ``nn.Module``, so ``.to()``, ``.eval()`` and DDP work on it).

    Attributes:
        model: the wrapped model.
        has_poses: :meth:`outputs` gives class-capsule poses.
        can_decode: :meth:`decode` reconstructs images from poses.
    """

    has_poses: bool = False
    can_decode: bool = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def outputs(self, x: Tensor) -> ModelOutputs:  # pragma: no cover - every adapter overrides it
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``(B, K)``."""
        return self.outputs(x).scores

    def logits(self, x: Tensor) -> Tensor | None:
        """Pre-softmax class scores ``(B, K)`` alone (cross-entropy training), None where the model has none."""
        return self.outputs(x).logits

    def decode(self, poses: Tensor | None, labels: Tensor | None = None) -> Tensor:
        """Images ``(B, C, H, W)`` from poses ``(B, K, D)``, all capsules but ``labels`` masked."""
        raise InvalidInputError(f"{type(unwrap(self)).__name__} has no decoder")


class _NativeAdapter(Adapter):
    """A model that answers ``probe_outputs`` itself (capsprobe's CapsNet)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.has_poses = bool(getattr(model, "has_poses", False))
        self.can_decode = callable(getattr(model, "decode", None)) and bool(getattr(model, "can_decode", True))

    def outputs(self, x: Tensor) -> ModelOutputs:
        return self.model.probe_outputs(x)  # type: ignore[operator]

    def decode(self, poses: Tensor | None, labels: Tensor | None = None) -> Tensor:
        if not self.can_decode or poses is None:
            return super().decode(poses, labels)
        return self.model.decode(poses, labels)  # type: ignore[operator]


class _TimmAdapter(Adapter):
    """A timm-style classifier: softmax scores, pre-logit features as the representation."""

    def outputs(self, x: Tensor) -> ModelOutputs:
        features = self.model.forward_features(x)  # type: ignore[operator]
        pre = self.model.forward_head(features, pre_logits=True)  # type: ignore[operator]  # B, F
        logits = self.model.forward_head(features).float()  # type: ignore[operator]  # (B, K); the head is cheap beside the features
        return ModelOutputs(scores=torch.softmax(logits, dim=-1), representation=pre.flatten(1).float(), logits=logits)

    def logits(self, x: Tensor) -> Tensor:
        return self.model(x).float()  # one head pass: the training step needs no representation


OutputFn = Callable[[nn.Module, Tensor], Tensor]
OutputsFn = Callable[[nn.Module, Tensor], Mapping[str, Tensor]]
OUTPUT_KEYS = ("scores", "representation", "poses", "logits")


class ModelAdapter(Adapter):
    """Probe any ``nn.Module``: say how to get its scores and representation (and optionally poses, decoder).

    Args:
        model: the model (in eval mode when probed; the probe calls ``.eval()``).
        outputs: ``fn(model, x) -> {"scores": (B, K), "representation": (B, F), "poses": (B, K, D), "logits":
            (B, K)}``, one forward pass for everything the probe reads; ``representation`` and one of ``scores``
            or ``logits`` (scores = their softmax) are required, ``poses`` only with ``has_poses``.
        representation: (without ``outputs``) ``fn(model, x) -> (B, F)``, the vector whose (in/equi)variance is
            measured.
        scores: (without ``outputs``) ``fn(model, x) -> (B, K)`` class scores; default: softmax of ``model(x)``.
        poses: (without ``outputs``) ``fn(model, x) -> (B, K, D)`` class-capsule poses, when the model has them.
        decode: ``fn(model, poses, labels) -> (B, C, H, W)`` images in [0, 1] from poses masked by ``labels``.
        has_poses: with ``outputs``: its dict holds ``poses`` (checked on every call).

    Raises:
        InvalidInputError: neither ``outputs`` nor ``representation``, or both ways at once.
    """

    def __init__(self, model: nn.Module, representation: OutputFn | None = None, scores: OutputFn | None = None,
                 poses: OutputFn | None = None,
                 decode: Callable[[nn.Module, Tensor, Tensor | None], Tensor] | None = None, *,
                 outputs: OutputsFn | None = None, has_poses: bool = False):
        super().__init__(model)
        if outputs is not None and any(f is not None for f in (representation, scores, poses)):
            raise InvalidInputError("ModelAdapter takes either outputs= (one forward per batch) or the separate "
                                    "representation=/scores=/poses= callables, not both")
        if outputs is None and representation is None:
            raise InvalidInputError("ModelAdapter needs outputs=fn(model, x) -> dict(scores=..., representation=...) "
                                    "or representation=fn(model, x)")
        if outputs is None and has_poses and poses is None:
            raise InvalidInputError("ModelAdapter(has_poses=True) without outputs= needs poses=fn(model, x)")
        self._outputs = outputs
        self._representation, self._scores, self._poses, self._decode = representation, scores, poses, decode
        self.has_poses = poses is not None or (outputs is not None and has_poses)
        self.can_decode = decode is not None

    def outputs(self, x: Tensor) -> ModelOutputs:
        if self._outputs is not None:
            return self._checked(self._from_dict(self._outputs(self.model, x)), x)
        logits = None
        if self._scores is not None:
            scores = _tensor("scores", self._scores(self.model, x)).float()
        else:
            logits = _tensor("model(x)", self.model(x)).float()
            scores = torch.softmax(logits, dim=-1)
        poses = _tensor("poses", self._poses(self.model, x)).float() if self._poses is not None else None
        assert self._representation is not None  # __init__: outputs= or representation=
        rep = _flat(_tensor("representation", self._representation(self.model, x)))
        return self._checked(ModelOutputs(scores=scores, representation=rep, poses=poses, logits=logits), x)

    def _checked(self, out: ModelOutputs, x: Tensor) -> ModelOutputs:
        check_outputs(out, x.shape[0])
        return out

    def _from_dict(self, out: Mapping[str, Tensor]) -> ModelOutputs:
        if not isinstance(out, Mapping):
            raise InvalidInputError(f"ModelAdapter outputs= must return a dict, got {type(out).__name__}")
        unknown = sorted(set(out) - set(OUTPUT_KEYS))
        if unknown:
            raise InvalidInputError(f"ModelAdapter outputs= returned unknown key(s) {', '.join(unknown)}; "
                                    f"expected {', '.join(OUTPUT_KEYS)}")
        if "representation" not in out or ("scores" not in out and "logits" not in out):
            raise InvalidInputError("ModelAdapter outputs= must return 'representation' and 'scores' (or 'logits')")
        if ("poses" in out) != self.has_poses:
            raise InvalidInputError("ModelAdapter outputs= returned poses: pass has_poses=True" if "poses" in out else
                                    "ModelAdapter(has_poses=True): outputs= returned no 'poses'")
        logits = _tensor("logits", out["logits"]).float() if out.get("logits") is not None else None
        scores = (_tensor("scores", out["scores"]).float() if "scores" in out
                  else torch.softmax(logits, dim=-1))  # type: ignore[arg-type]
        poses = _tensor("poses", out["poses"]).float() if "poses" in out else None
        return ModelOutputs(scores=scores, representation=_flat(_tensor("representation", out["representation"])),
                            poses=poses, logits=logits)

    def logits(self, x: Tensor) -> Tensor | None:
        if self._outputs is not None:
            return self.outputs(x).logits
        return self.model(x).float() if self._scores is None else None

    def decode(self, poses: Tensor | None, labels: Tensor | None = None) -> Tensor:
        if self._decode is None or poses is None:
            return super().decode(poses, labels)
        images = _tensor("decode", self._decode(self.model, poses, labels))
        if images.dim() != 4 or images.shape[0] != poses.shape[0]:
            raise InvalidInputError(f"ModelAdapter decode= must return images ({poses.shape[0]}, C, H, W), got "
                                    f"{tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("ModelAdapter decode= returned images that are not finite (NaN or infinite)")
        return images


def _tensor(name: str, value: object) -> Tensor:
    """``value`` when it is a real-valued tensor; else the one-line error naming the output."""
    if not isinstance(value, Tensor):
        raise InvalidInputError(f"ModelAdapter: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise InvalidInputError(f"ModelAdapter: {name} must be real numbers, got {value.dtype}")
    return value


def _flat(rep: Tensor) -> Tensor:
    if rep.dim() < 1:
        raise InvalidInputError("ModelAdapter: representation must be (B, F), got a scalar")
    return rep.flatten(1).float() if rep.dim() > 1 else rep[:, None].float()


def check_outputs(out: ModelOutputs, batch: int, labels: Tensor | None = None) -> None:
    """Every output of a batch of ``batch`` images has the shape the probe reads: scores ``(B, K)``, representation
    ``(B, F)``, poses ``(B, K, D)``, logits ``(B, K)``; with ``labels``, ``K`` covers every label.

    Raises:
        InvalidInputError: what was expected and what came.
    """
    scores = out.scores
    if scores.dim() != 2 or scores.shape[0] != batch:
        raise InvalidInputError(f"model outputs: scores must be ({batch}, K) for {batch} images, got "
                                f"{tuple(scores.shape)}")
    k = scores.shape[1]
    if out.representation.dim() != 2 or out.representation.shape[0] != batch:
        raise InvalidInputError(f"model outputs: representation must be ({batch}, F), got "
                                f"{tuple(out.representation.shape)}")
    if out.poses is not None and (out.poses.dim() != 3 or out.poses.shape[:2] != (batch, k)):
        raise InvalidInputError(f"model outputs: poses must be ({batch}, {k}, D) (one per class score), got "
                                f"{tuple(out.poses.shape)}")
    if out.logits is not None and out.logits.shape != scores.shape:
        raise InvalidInputError(f"model outputs: logits must be {tuple(scores.shape)} like the scores, got "
                                f"{tuple(out.logits.shape)}")
    if labels is not None and len(labels) and int(labels.max()) >= k:
        raise InvalidInputError(f"model outputs: {k} class scores, but the images have labels up to "
                                f"{int(labels.max())}")


def adapt(model: nn.Module) -> Adapter:
    """The :class:`Adapter` for ``model`` (returned as it is when it already is one; wrappers are looked through).

    Raises:
        InvalidInputError: the model neither answers ``probe_outputs`` nor has timm's face; wrap it in
            :class:`ModelAdapter`.
    """
    if isinstance(model, Adapter):
        return model
    inner = unwrap(model)
    if callable(getattr(inner, "probe_outputs", None)):
        return _NativeAdapter(inner)
    if callable(getattr(inner, "forward_features", None)) and callable(getattr(inner, "forward_head", None)):
        return _TimmAdapter(inner)
    raise InvalidInputError(f"{type(inner).__name__} has neither probe_outputs() nor timm's forward_features/"
                            "forward_head: wrap it in capsprobe.ModelAdapter(model, representation=..., scores=...)")
