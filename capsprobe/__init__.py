"""capsprobe: do capsule networks keep the pose information that convnets discard?

Importing the package loads nothing heavy (no torch: ``capsprobe --help`` starts at once); every name below is
imported on first use (PEP 562 ``__getattr__``). capsprobe's models (``capsnet*``, ``baseline_cnn``...) are registered
in timm when timm is imported, before or after ``import capsprobe``, so ``import capsprobe, timm;
timm.create_model("capsnet", in_chans=1, num_classes=10)`` works as before. The Python API in one place:
:class:`ModelAdapter` (probe your own ``nn.Module``), :class:`Subject`, :class:`ProbePlan`, :func:`run_probe`,
:func:`write_probe_outputs`, :func:`write_report`, :func:`load_run`, :func:`load_dataset`, :class:`CapsprobeError`.
"""

import importlib.util
import sys
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Optional, Sequence

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


#: the subpackages and modules ``capsprobe.<name>`` reaches without an import statement of its own
_SUBMODULES = frozenset({"bench", "cli", "data", "errors", "experiment", "metrics", "models", "pipeline", "probe",
                         "report", "runtime", "tasks", "training", "transforms"})


def __getattr__(name: str) -> Any:
    """The API names and the subpackages, imported on first use (so ``import capsprobe`` and the CLI start fast)."""
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'capsprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


class _RegisterWhenTimmLoads(MetaPathFinder):
    """Registers capsprobe's models in timm as soon as timm is imported (the import hook of PEP 302/451: it finds
    timm's own spec through the other finders and runs ``capsprobe.models`` right after timm's module), then leaves
    ``sys.meta_path``. What ``import capsprobe`` used to do eagerly, without loading torch for those who never
    import timm (the command line's ``--help``)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
                  ) -> Optional[ModuleSpec]:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_timm = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            exec_timm(module)
            import_module(".models", __name__)  # registers the models (a partial import when it imported timm)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:  # timm came first: register now (torch is loaded already)
    import_module(".models", __name__)
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
