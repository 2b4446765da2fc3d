"""Training: what a run learns (:mod:`.objectives`), run folders (config, weights, metrics; :mod:`.runs`) and the loop
(:mod:`.loop`). Nothing here imports the probe, the report or the full tasks (:mod:`capsprobe.tasks`)."""

from __future__ import annotations

from .loop import (  # noqa: F401
    NonFiniteLossError,
    Objective,
    RunExistsError,
    compile_objective,
    evaluate,
    fit,
    train_step,
)
from .objectives import TrainingTask, get_training_task, register_training_task  # noqa: F401
from .runs import (  # noqa: F401
    COMPLETE,
    MARKER,
    Checkpoint,
    ConfigError,
    Run,
    RunConfig,
    RunError,
    check_plain_name,
    completion_problem,
    library_versions,
    load_checkpoint,
    load_run,
    read_config,
    read_metrics,
    run_name,
    save_checkpoint,
    save_weights,
    write_completion,
    write_history,
)

__all__ = [
    "COMPLETE",
    "Checkpoint",
    "ConfigError",
    "MARKER",
    "NonFiniteLossError",
    "Objective",
    "Run",
    "RunConfig",
    "RunError",
    "RunExistsError",
    "TrainingTask",
    "check_plain_name",
    "compile_objective",
    "completion_problem",
    "evaluate",
    "fit",
    "get_training_task",
    "library_versions",
    "load_checkpoint",
    "load_run",
    "read_config",
    "read_metrics",
    "register_training_task",
    "run_name",
    "save_checkpoint",
    "save_weights",
    "train_step",
    "write_completion",
    "write_history",
]
