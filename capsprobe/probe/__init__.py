"""The probe: subjects, the engine that runs the suite over them, pictures, the Lie probe, and the output schema."""

from __future__ import annotations

from .engine import (  # noqa: F401
    decodability_rows,
    run_probe,
    transform_like,
    validation_temperature,
)
from .pictures import (  # noqa: F401
    SWEEP_DELTAS,
    pose_sweep,
    reconstruction_examples,
)
from .plan import ProbePlan  # noqa: F401
from .schema import (  # noqa: F401
    ARRAYS,
    FIGURES,
    IMAGE_COLUMNS,
    MANIFEST,
    METRIC_COLUMNS,
    REPORT_HTML,
    REPORT_MD,
    RESULTS,
    SUMMARY,
    ProbeResult,
    estimate_row,
    grid_array,
    identity_labels,
    metric_row,
)
from .subject import (  # noqa: F401
    Subject,
    as_subject,
)

__all__ = [
    "ARRAYS",
    "FIGURES",
    "IMAGE_COLUMNS",
    "MANIFEST",
    "METRIC_COLUMNS",
    "ProbePlan",
    "ProbeResult",
    "REPORT_HTML",
    "REPORT_MD",
    "RESULTS",
    "SUMMARY",
    "SWEEP_DELTAS",
    "Subject",
    "as_subject",
    "decodability_rows",
    "estimate_row",
    "grid_array",
    "identity_labels",
    "metric_row",
    "pose_sweep",
    "reconstruction_examples",
    "run_probe",
    "transform_like",
    "validation_temperature",
]
