"""Old import paths, kept for one release with a DeprecationWarning (0.1 -> 0.2 moved modules into subpackages).

:func:`alias` makes an old module name the new module itself (so attributes, monkeypatching and ``isinstance``
behave as before); :func:`moved` forwards one name that left a module. Both use :func:`importlib.import_module`,
which the import-linter contracts do not follow: an alias is a pointer for users, not an arrow of the pipeline.
"""

from __future__ import annotations

import sys
import warnings
from importlib import import_module
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "alias", "moved"]

#: old module -> new module: the public paths of capsprobe 0.1 that 0.2 moved
MOVED_MODULES = {
    "capsprobe.calibration": "capsprobe.metrics.calibration",
    "capsprobe.compare": "capsprobe.metrics.compare",
    "capsprobe.lie": "capsprobe.probe.lie",
    "capsprobe.multimnist": "capsprobe.tasks.multimnist",
    "capsprobe.plots": "capsprobe.report.plots",
    "capsprobe.runs": "capsprobe.training.runs",
    "capsprobe.seedstats": "capsprobe.metrics.stats",
    "capsprobe.train": "capsprobe.training.loop",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path is removed in capsprobe 0.3", DeprecationWarning,
                  stacklevel=3)


def alias(old: str) -> ModuleType:
    """Replace the module ``old`` (being imported) by its new home in ``sys.modules``, with a warning."""
    new = MOVED_MODULES[old]
    _warn(old, new)
    module = import_module(new)
    sys.modules[old] = module
    return module


def moved(old_module: str, name: str, new_module: str) -> Any:
    """``name``, which moved from ``old_module`` to ``new_module``, with a warning."""
    _warn(f"{old_module}.{name}", f"{new_module}.{name}")
    return getattr(import_module(new_module), name)
