"""The pipeline's top: what the CLI's commands do, composed of the layers below.

- :func:`perturb`: load runs, check everything, run the runs' task's probe (``capsprobe perturb``);
- :func:`write_report` and :func:`recompare`: render a report folder with its task's section (``capsprobe report``);
- :func:`run_experiment` and :func:`run_demo`: train, probe and report a whole experiment file (``capsprobe run``,
  ``capsprobe demo``).

This is the one module that knows both the tasks and the report renderer: the report layer renders whatever
section it is handed, and a task knows nothing of the folder it is written to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from .data import get_spec, load_dataset
from .errors import InvalidInputError, option
from .experiment import demo_file, load_experiment
from .probe import ProbeResult
from .probe.schema import MANIFEST
from .report import (
    ReportData,
    ReportError,
    Section,
    check_report_target,
    write_probe_outputs,
)
from .report import render as _render
from .runtime import resolve_device
from .tasks import ProbeOptions, UnknownTaskError, get_task
from .training import RunConfig
from .training.launch import SlurmOptions, train_many
from .training.runs import RunError, library_versions, load_run, run_name
from .transforms import parse_magnitude_specs, resolve

__all__ = ["perturb", "recompare", "run_demo", "run_experiment", "section_of", "write_report"]

_log = logging.getLogger(__name__)

def perturb(
    run_dirs: Sequence[str],
    transforms: Sequence[str] = ("all",),
    magnitude_specs: Sequence[str] = (),
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool = True,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    reference: str | None = None,
    lie: bool = False,
    surrogate: str | None = None,
) -> ProbeResult:
    """Load runs and data, check that they fit together, and evaluate them as their task says: what
    ``capsprobe perturb`` does (the transformation suite for ``classify`` runs, pairs for ``multimnist``).

    Every check (transformation names, magnitude ranges, run directories, input shapes, data set) happens
    before any computation.

    Returns:
        The result, its manifest completed with the runs, data, task and library versions.

    Raises:
        UnknownTransformError, InvalidInputError: bad transformation or magnitude.
        RunError: a run directory is missing or unreadable, or runs need different input shapes or tasks.
    """

    chosen = resolve(list(transforms))
    mags = parse_magnitude_specs(list(magnitude_specs), chosen)
    if not run_dirs:
        raise RunError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    other = load_run(surrogate) if surrogate is not None else None
    if other is None and any(t.name == "pgd-transfer" for t in chosen):
        raise InvalidInputError(f"pgd-transfer needs a surrogate run to compute the attack on ({option('surrogate')})")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise RunError(f"run directories must have different names, got {', '.join(names)}")
    tasks = sorted({r.config.task for r in runs})
    if len(tasks) > 1:
        raise RunError(f"runs were trained for different tasks ({', '.join(tasks)})")
    task = get_task(tasks[0])
    if lie and task.name != "classify":
        raise InvalidInputError(f"the Lie-derivative probe applies to classify runs, not {task.name}")
    shapes = {r.name: (r.input["in_chans"], r.input["img_size"], r.input["num_classes"]) for r in runs}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} ({c}x{s}x{s}, {k} classes)" for n, (c, s, k) in shapes.items())
        raise RunError(f"runs were trained on incompatible input shapes: {listed}")
    if other is not None and (other.input["in_chans"], other.input["img_size"], other.input["num_classes"]) \
            != next(iter(shapes.values())):
        raise RunError(f"the surrogate {other.name} was trained on other inputs than the runs it attacks")
    if dataset is None:
        trained_on = sorted({r.config.dataset for r in runs})
        if len(trained_on) > 1:
            raise RunError(f"runs were trained on different data sets ({', '.join(trained_on)}); choose one with "
                           f"{option('dataset')}")
        dataset = trained_on[0]
        data_root = data_root or runs[0].config.data_root
    spec = get_spec(dataset)
    c, s, k = next(iter(shapes.values()))
    size = task.input_size(spec.img_size)
    if (spec.in_chans, size, spec.num_classes) != (c, s, k):
        raise RunError(f"dataset {dataset} gives {spec.in_chans}x{size}x{size} inputs with {spec.num_classes} "
                       f"classes for task {task.name}, the runs expect {c}x{s}x{s} with {k}")
    if split not in ("test", "val"):
        raise InvalidInputError(f"split must be test or val, got {split!r}")
    splits = load_dataset(dataset, data_root, download, limit=limit)
    images = splits.test if split == "test" else splits.val
    options = ProbeOptions(batch_size=batch_size, device=device, seed=seed, n_boot=n_boot, progress=progress,
                           reference=reference, lie=lie, surrogate=other)
    result = task.evaluate(runs, images, chosen, mags, options)
    result.manifest = {**result.manifest, "task": task.name, "dataset": dataset, "data_root": data_root,
                       "split": split, "images": len(images), "seed": seed, "bootstrap": n_boot,
                       "device": str(resolve_device(device)), "versions": library_versions()}
    return result


def section_of(data: ReportData) -> Section:
    """The report section of the folder's task (``manifest.json``'s ``task``, ``classify`` when absent)."""
    try:
        task = get_task(str(data.manifest.get("task", "classify")))
    except UnknownTaskError as exc:
        raise ReportError(f"{data.folder / MANIFEST}: {exc}") from None
    return task.section(data)


def write_report(folder: str | Path, formats: str | Sequence[str] | None = None) -> Path:
    """Render ``figures/``, ``tables/``, ``report.md`` and ``report.html`` of a perturb folder with its task's
    section (:func:`capsprobe.report.render_report`; ``formats``: png, pdf, svg, tex); reads the folder's files only.

    Raises:
        ReportError: a file perturb writes is missing or malformed, or the folder's task is unknown.
        BusyError: another capsprobe command is writing the folder.
    """
    return _render.render_report(folder, section_of, formats)


def recompare(folder: str | Path, formats: str | Sequence[str] | None = None) -> Path:
    """Recompute a report folder's comparison tables with the current method, then render it
    (:func:`capsprobe.report.recompare_report`)."""
    return _render.recompare_report(folder, section_of, formats)


def run_experiment(
    path: str | Path,
    size: str = "quick",
    device: str = "auto",
    data_root: str | None = None,
    out: str | Path | None = None,
    runs_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
    launcher: str = "local",
    slurm: SlurmOptions | None = None,
) -> Path:
    """Train (or reuse) every model and seed of the experiment, evaluate them as their task says, write the report.

    The one orchestrator: ``capsprobe run FILE`` and ``capsprobe demo`` (``experiments/demo.toml``) both come here.
    Runs go to ``<runs_dir>/<model>-seed<N>`` (default ``runs/<name>-<size>``); finished ones are reused, an
    interrupted one resumes. Every check of the file, the transformations and the report folder comes first.
    ``jobs`` trains that many runs at once in worker processes, ``launcher="slurm"`` as a Slurm array job
    (:func:`capsprobe.training.launch.train_many`); the probe and the report run once every run is complete.

    Returns:
        The path of ``report.html``.
    """
    exp = load_experiment(path, size)
    chosen = resolve(exp.transforms)  # bad names fail before any training
    parse_magnitude_specs(exp.magnitudes, chosen)
    out = check_report_target(Path(out) if out is not None else Path("reports") / (exp.report or exp.name), force)
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs") / f"{exp.name}-{size}"
    root = data_root or exp.data_root
    surrogate = None
    planned = exp.jobs()
    items = []
    for i, (spec, seed) in enumerate(planned, 1):
        config = RunConfig(model=spec.model, dataset=exp.dataset, epochs=spec.epochs, seed=seed, limit=exp.limit,
                           device=device, data_root=root, model_kwargs=dict(spec.options), label=spec.label,
                           **{**exp.train, **spec.train})
        run_dir = runs_dir / run_name(spec.variant, seed)
        _log.info("%s [%d/%d]: %s, seed %d, %d epochs -> %s", exp.name, i, len(planned), spec.variant, seed,
                  spec.epochs, run_dir)
        items.append((config, run_dir))
        if spec.variant == exp.surrogate:
            surrogate = str(run_dir)  # its last seed's run
    paths = [str(p) for p in train_many(items, jobs=jobs, launcher=launcher, slurm=slurm, progress=progress)]
    _log.info("%s: evaluating %d runs", exp.name, len(paths))
    result = perturb(paths, exp.transforms, exp.magnitudes, dataset=exp.dataset, data_root=root, split=exp.split,
                     limit=exp.probe_limit, device=device, seed=exp.probe_seed, n_boot=exp.bootstrap, progress=progress,
                     reference=exp.reference, lie=exp.lie, surrogate=surrogate)
    result.manifest["experiment"] = {"file": str(exp.path), "name": exp.name, "size": size,
                                     "description": exp.description, "reference": exp.reference}
    write_probe_outputs(result, out, force=force)
    _log.info("%s: writing the report in %s", exp.name, out)
    return write_report(out)


def run_demo(size: str = "small", out: str | Path = "reports/demo", runs_dir: str | Path | None = None,
             device: str = "auto", force: bool = False, progress: bool = True) -> Path:
    """The main job: ``experiments/demo.toml`` at ``size`` (tiny, small, paper), report in ``out``."""
    return run_experiment(demo_file(), size, device=device, out=out, runs_dir=runs_dir, force=force,
                          progress=progress)
