"""What the probe measures: a :class:`Subject` is one model (through its adapter) with the labels of its run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import InvalidInputError
from ..models import Adapter, model_costs, unwrap

__all__ = [
    "Subject",
    "as_subject",
]

@dataclass
class Subject:
    """A model to probe, with the names that go into the tables.

    Attributes:
        name: the ``run`` column (unique per probe).
        model: any model :func:`capsprobe.models.adapt` accepts.
        model_name: the ``model`` column (default: the class name).
        seed: the training seed, for the ``seed`` column (None when unknown).
        info: extra manifest entries (path, data set, test accuracy).
    """

    name: str
    model: nn.Module
    model_name: str = ""
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def ident(self) -> dict[str, Any]:
        """The identifying columns of every row about this subject."""
        return {"model": self.model_name or type(unwrap(self.model)).__name__, "run": self.name, "seed": self.seed}

    def manifest_entry(self, adapter: Adapter) -> dict[str, Any]:
        """What the manifest records of this subject: names, what the model can do, where it came from."""
        ident = self.ident()
        return {"name": self.name, "model": ident["model"], "seed": self.seed, "poses": adapter.has_poses,
                "decoder": adapter.can_decode, **self.info}


def as_subject(item: Any) -> Subject:
    """A :class:`Subject` from a loaded run (:class:`capsprobe.training.runs.Run`), a subject, or a bare module."""
    if isinstance(item, Subject):
        return item
    if isinstance(item, nn.Module):
        return Subject(name=type(unwrap(item)).__name__, model=item)
    config = getattr(item, "config", None)
    if config is not None and isinstance(getattr(item, "model", None), nn.Module):
        costs = _costs(item.model, getattr(item, "input", None))
        return Subject(name=item.name, model=item.model, model_name=config.variant, seed=config.seed,
                       info={"path": str(item.path), "architecture": config.model, "params": costs["params"],
                             "flops": costs["flops"], "dataset": config.dataset,
                             "test_accuracy": item.metrics.get("test_accuracy"),
                             "val_accuracy": item.metrics.get("val_accuracy"),
                             "epochs": item.metrics.get("epochs"), "max_epochs": config.epochs,
                             "target_accuracy": config.target_accuracy,
                             "reached_target": item.metrics.get("reached_target")})
    raise InvalidInputError(f"cannot probe {type(item).__name__}: give a run, a Subject or an nn.Module")


def _costs(model: nn.Module, spec: Any) -> dict[str, int | None]:
    """A run's parameters and forward FLOPs per image at its input size (None where the input is not recorded or
    the FLOP count fails: the probe does not depend on it)."""
    params = sum(p.numel() for p in model.parameters())
    if not isinstance(spec, dict) or "in_chans" not in spec or "img_size" not in spec:
        return {"params": params, "flops": None}
    size = spec["img_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    try:
        return dict(model_costs(model, (int(spec["in_chans"]), int(h), int(w))))
    except (RuntimeError, ValueError, TypeError, InvalidInputError):
        return {"params": params, "flops": None}
