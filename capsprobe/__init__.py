"""capsprobe: do capsule networks keep the pose information that convnets discard?

Importing the package registers capsprobe's models (``capsnet*``, ``baseline_cnn``) in timm; everything else is
imported on first use. The Python API in one place: :class:`ModelAdapter` (probe your own ``nn.Module``),
:class:`Subject`, :class:`ProbePlan`, :func:`run_probe`, :func:`write_probe_outputs`, :func:`write_report`, :func:`load_run`,
:func:`load_dataset`, :class:`CapsprobeError`.
"""

from importlib import import_module
from typing import Any

from . import models  # noqa: F401  (registers the models in timm: see the module docstring)
from ._version import __version__

__all__ = [
    "CapsprobeError",
    "ModelAdapter",
    "ProbePlan",
    "Subject",
    "__version__",
    "load_dataset",
    "load_run",
    "models",
    "perturb",
    "run_experiment",
    "run_probe",
    "write_probe_outputs",
    "write_report",
]


_LAZY = {
    "CapsprobeError": "errors",
    "ModelAdapter": "models",
    "ProbePlan": "probe",
    "Subject": "probe",
    "load_dataset": "data",
    "load_run": "training",
    "perturb": "pipeline",
    "run_experiment": "pipeline",
    "run_probe": "probe",
    "write_probe_outputs": "report",
    "write_report": "pipeline",
}


def __getattr__(name: str) -> Any:
    """The API names, imported on first use (so ``import capsprobe`` and the CLI start fast)."""
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'capsprobe' has no attribute {name!r}")
