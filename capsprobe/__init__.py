"""capsprobe: do capsule networks keep the pose information that convnets discard?

Importing the package registers capsprobe's models (``capsnet*``, ``baseline_cnn``) in timm and its tasks.
The Python API in one place: :class:`ModelAdapter` (probe your own ``nn.Module``), :class:`Subject`,
:func:`run_probe`, :func:`write_probe_outputs`, :func:`write_report`, :func:`load_run`, :func:`load_dataset`.
"""

from . import models, tasks  # noqa: F401  (registers models and tasks)
from .data import load_dataset
from .errors import CapsprobeError
from .models import ModelAdapter
from .probe import Subject, run_probe
from .report import write_probe_outputs, write_report
from .runs import load_run

__all__ = [
    "CapsprobeError",
    "ModelAdapter",
    "Subject",
    "__version__",
    "load_dataset",
    "load_run",
    "models",
    "run_probe",
    "write_probe_outputs",
    "write_report",
]

__version__ = "0.1.0"
