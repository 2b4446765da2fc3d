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
        model_name: the ``model`` column, the name comparisons and verdicts use (default: ``name``; give the same
            ``model_name`` to the seeds of one model so that they are compared as one).
        seed: the training seed, for the ``seed`` column and the report's list of runs (default 0, one replicate, as
            ``capsprobe train`` numbers a first run).
        info: extra manifest entries (path, data set, test accuracy).
        temperature: the temperature of its class scores fitted on images it was neither trained on nor is probed
            with (its validation split: :func:`capsprobe.probe.validation_temperature`), which ``ece_scaled``
            applies; None: the probe cross-fits one on the clean images' halves.

    Raises:
        InvalidInputError: an empty name or a seed that is not a whole number (the report reads it as one).
    """

    name: str
    model: nn.Module
    model_name: str = ""
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"a Subject needs a name (its run column), got {self.name!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidInputError(f"Subject {self.name}: seed must be a whole number (the training seed), got "
                                    f"{self.seed!r}")

    def ident(self) -> dict[str, Any]:
        """The identifying columns of every row about this subject: the model by the name it was given."""
        return {"model": self.model_name or self.name, "run": self.name, "seed": self.seed}

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
