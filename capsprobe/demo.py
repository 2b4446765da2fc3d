"""``capsprobe demo``: train a CapsNet and a convnet, probe them with the whole suite, write the report.

Sizes (``DEMO_SIZES``):

- ``tiny``: seconds; a few dozen images and a reduced grid, for tests and a first look.
- ``small`` (default): the embedded 5,000-digit sample, ``capsnet_small`` (10 epochs) beside ``resnet18``
  (small-input stem, 5 epochs), the full suite on the 1,000 held-out digits: about 6 minutes on 2 CPU cores.
- ``paper``: the paper CapsNet, resnet18 and the paper's baseline CNN, 30 epochs each; meant for a GPU.

Finished runs are reused (an interrupted one resumes), so a second call only re-probes and re-reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .probe import perturb
from .report import check_report_target, write_probe_outputs, write_report
from .runs import RunConfig
from .train import fit

__all__ = ["DEMO_SIZES", "DemoSize", "run_demo"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    """What one demo size trains and probes."""

    models: tuple[tuple[str, int, dict[str, Any]], ...]  # (model, epochs, model options)
    limit: int | None = None  # images per split (None: the whole data set)
    magnitudes: tuple[str, ...] = ()  # --magnitudes specs replacing default grids
    n_boot: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    extra: dict[str, Any] = field(default_factory=dict)


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        models=(("capsnet_small", 1, {"conv_channels": 16, "primary_types": 4}), ("resnet18", 1, {"stem": "imagenet"})),
        limit=48,
        magnitudes=("rotate=0,45,90,180", "translate=0,4", "scale=1,0.75", "shear=0,0.4", "affine=0,1", "jigsaw=1,4"),
        n_boot=50,
        batch_size=16,
    ),
    "small": DemoSize(models=(("capsnet_small", 10, {}), ("resnet18", 5, {}))),
    "paper": DemoSize(models=(("capsnet", 30, {}), ("resnet18", 30, {}), ("baseline_cnn", 30, {}))),
}


def run_demo(
    size: str = "small",
    out: str | Path = "reports/demo",
    runs_dir: str | Path | None = None,
    device: str = "auto",
    dataset: str = "mnist-sample",
    data_root: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train (or reuse) the size's models, probe them with the whole suite and write the report.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: unknown size.
        ReportExistsError: ``out`` exists and ``force`` is off (checked before any training).
    """
    if size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of: {', '.join(DEMO_SIZES)}")
    spec = DEMO_SIZES[size]
    out = check_report_target(out, force)
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs") / f"demo-{size}"
    run_paths = []
    for i, (model, epochs, options) in enumerate(spec.models, 1):
        config = RunConfig(model=model, dataset=dataset, epochs=epochs, batch_size=spec.batch_size, lr=spec.lr,
                           device=device, limit=spec.limit, data_root=data_root, model_kwargs=dict(options))
        path = runs_dir / model
        _log.info("demo [%d/%d]: training %s for %d epochs -> %s", i, len(spec.models), model, epochs, path)
        run_paths.append(str(fit(config, path, resume=True, progress=progress)))
    _log.info("demo: probing %d runs with the whole suite", len(run_paths))
    result, manifest = perturb(run_paths, ["all"], spec.magnitudes, device=device, limit=spec.limit,
                               n_boot=spec.n_boot, progress=progress)
    manifest["demo_size"] = size
    write_probe_outputs(result, out, manifest, force=force)
    _log.info("demo: writing the report in %s", out)
    return write_report(out, device=device, n_boot=spec.n_boot)
