"""Published numbers a report sets beside its own (never compared as a reproduction where the protocol differs).

Each entry: the registered architecture it stands beside (a run's ``architecture``, the model a label was built
from), the source, the measure and the value (mean and, where the source gives one, the standard deviation, in %).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import pandas as pd

__all__ = ["CIFAR10", "NOVEL_VIEWPOINT", "Published", "published_beside", "published_for_runs"]


@dataclass(frozen=True)
class Published:
    architecture: str  # a registered name or a pattern (``capsnet_em*``)
    source: str
    measure: str
    value: float
    std: float | None = None


_HINTON = "Hinton, Sabour & Frosst 2018, section 5.1 (single runs, familiar errors matched)"
_SR = ("Hahn, Pyeon & Kim 2019 (SR-CapsNet): mean +- std over runs; familiar errors not matched, the checkpoint "
       "chosen on the novel test split")

NOVEL_VIEWPOINT: tuple[Published, ...] = (
    Published("baseline_cnn*", _HINTON, "smallNORB novel azimuths, error %", 20.0),
    Published("capsnet_em*", _HINTON, "smallNORB novel azimuths, error %", 13.5),
    Published("baseline_cnn*", _HINTON, "smallNORB novel elevations, error %", 17.8),
    Published("capsnet_em*", _HINTON, "smallNORB novel elevations, error %", 12.3),
    Published("backbone_head_avg", _SR, "smallNORB novel azimuths, error %", 21.76, 1.18),
    Published("backbone_head_conv", _SR, "smallNORB novel azimuths, error %", 22.07, 1.02),
    Published("backbone_head_dynamic", _SR, "smallNORB novel azimuths, error %", 20.33, 1.32),
    Published("backbone_head_em", _SR, "smallNORB novel azimuths, error %", 20.16, 0.96),
    Published("backbone_head_self", _SR, "smallNORB novel azimuths, error %", 19.86, 1.03),
)


_SR_CIFAR = "Hahn, Pyeon & Kim 2019 (SR-CapsNet): ResNet-20 backbone, one capsule layer, a fixed training budget"

CIFAR10: tuple[Published, ...] = (
    Published("backbone_head_avg", _SR_CIFAR, "CIFAR-10 test error %", 7.94),
    Published("backbone_head_dynamic", _SR_CIFAR, "CIFAR-10 test error %", 8.46),
    Published("backbone_head_em", _SR_CIFAR, "CIFAR-10 test error %", 10.25),
    Published("backbone_head_self", _SR_CIFAR, "CIFAR-10 test error %", 8.17),
    Published("backbone_head_avg", _SR_CIFAR, "CIFAR-10 untargeted FGSM success %", 62.65),
    Published("backbone_head_dynamic", _SR_CIFAR, "CIFAR-10 untargeted FGSM success %", 47.70),
    Published("backbone_head_em", _SR_CIFAR, "CIFAR-10 untargeted FGSM success %", 54.55),
    Published("backbone_head_self", _SR_CIFAR, "CIFAR-10 untargeted FGSM success %", 41.20),
)


def published_beside(architectures: dict[str, str], entries: tuple[Published, ...]) -> pd.DataFrame:
    """The published rows for the models of a report: ``architectures`` maps each model (its label) to the registered
    architecture it was built from; an entry matches by name or pattern. Columns ``model architecture source measure
    published``; empty when nothing matches."""
    rows = []
    for model, arch in architectures.items():
        for e in entries:
            if fnmatch(arch, e.architecture):
                value = f"{e.value:.2f}" + (f" +- {e.std:.2f}" if e.std is not None else "")
                rows.append({"model": model, "architecture": arch, "measure": e.measure, "published": value,
                             "source": e.source})
    return pd.DataFrame(rows, columns=["model", "architecture", "measure", "published", "source"])


def published_for_runs(manifest: dict, entries: tuple[Published, ...]) -> pd.DataFrame:
    """:func:`published_beside` for the runs of a probe's manifest: each model (label) stands for the architecture
    its runs record (``architecture``; the model's own name in a manifest written before runs recorded it)."""
    architectures = {str(r.get("model")): str(r.get("architecture") or r.get("model"))
                     for r in manifest.get("runs", [])}
    return published_beside(architectures, entries)
