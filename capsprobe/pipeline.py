"""The pipeline's top: what the CLI's commands do, composed of the layers below.

- :func:`perturb`: load runs, check everything, run the runs' task's probe (``capsprobe perturb``);
- :func:`write_report` and :func:`recompare`: render a report folder with its task's section (``capsprobe report``);
- :func:`run_experiment` and :func:`run_demo`: train, probe and report a whole experiment file (``capsprobe run``,
  ``capsprobe demo``); :func:`dry_run`: what ``run`` would do and about how long it would take (``--dry-run``).

This is the one module that knows both the tasks and the report renderer: the report layer renders whatever
section it is handed, and a task knows nothing of the folder it is written to.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .data import DatasetSpec, ImageSplit, get_spec, load_dataset
from .errors import InvalidInputError, option
from .experiment import Experiment, ModelSpec, demo_file, load_experiment
from .metrics.claims import Claim, ClaimError, claims_table, parse_claims, study_table
from .probe import ProbePlan, ProbeResult, Subject, as_subject, validation_temperature
from .probe.schema import MANIFEST
from .report import (
    ReportData,
    ReportError,
    ReportExistsError,
    Section,
    check_report_target,
    read_probe_outputs,
    write_probe_outputs,
)
from .report import render as _render
from .report.folder import write_csv
from .runtime import folder_lock, resolve_device
from .tasks import UnknownTaskError, get_task
from .training import RunConfig
from .training.launch import SlurmOptions, check_launcher, train_many
from .training.runs import RunError, library_versions, load_run, run_name

__all__ = ["claims_of", "dry_run", "perturb", "perturb_to", "plan_of", "recompare", "rederive_claims", "run_demo",
           "run_experiment", "section_of", "write_report"]

_log = logging.getLogger(__name__)

def plan_of(plan: ProbePlan | Sequence[str] | None, options: dict[str, Any]) -> ProbePlan:
    """:func:`perturb`'s plan from what it was given: a :class:`~capsprobe.probe.ProbePlan` alone, or the plan's
    options (:meth:`ProbePlan.from_options`). The calls of 0.2.0's development versions are read too: a list of
    transformation names in the plan's place (``perturb(dirs, ["rotate"])``) and ``magnitude_specs=`` for
    ``magnitudes=``.

    Raises:
        InvalidInputError: a plan and options both, or the same option twice.
    """
    options = dict(options)
    if "magnitude_specs" in options:
        if "magnitudes" in options:
            raise InvalidInputError("give magnitudes or magnitude_specs (its older name), not both")
        options["magnitudes"] = options.pop("magnitude_specs")
    if isinstance(plan, (list, tuple)) and all(isinstance(t, str) for t in plan):
        if "transforms" in options:
            raise InvalidInputError("transformation names given twice: in the plan's place and as transforms=")
        options["transforms"] = list(plan)
        plan = None
    if plan is None:
        return ProbePlan.from_options(**options)
    if not isinstance(plan, ProbePlan) or options:
        raise InvalidInputError("perturb takes a ProbePlan or the plan's options (ProbePlan.from_options), not both")
    return plan


def perturb(
    run_dirs: Sequence[str],
    plan: ProbePlan | Sequence[str] | None = None,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool | None = None,
    **options: Any,
) -> ProbeResult:
    """Load runs and data, check that they fit together, and evaluate them as their task says: what
    ``capsprobe perturb`` does (the plan's transformations for ``classify`` runs, pairs for ``multimnist``).

    Every check (transformation names, magnitude ranges, run directories, input shapes, the plan against the data
    set's images) happens before any computation and before the data set is loaded.

    Args:
        run_dirs: the runs to probe.
        plan: the probe (:class:`~capsprobe.probe.ProbePlan`: transformations, magnitudes, seed, limit, split,
            bootstrap, reference, surrogate run, Lie probe, batch size, device).
        dataset: the data set to probe (default: the one the runs were trained on).
        data_root, download: where torchvision data sets are (default: the runs' own), and whether to fetch a
            missing one (default: the runs' own setting, off when any run has it off).
        options: without ``plan``, what :meth:`ProbePlan.from_options` takes (``transforms``, ``magnitudes``,
            ``seed``, ``n_boot``...). The older calls still work (:func:`plan_of`): transformation names in
            ``plan``'s place, ``magnitude_specs`` for ``magnitudes``.

    Returns:
        The result, its manifest completed with the runs, data, task and library versions.

    Raises:
        UnknownTransformError, InvalidInputError: bad transformation or magnitude, or a plan that does not fit the
            data set's images.
        RunError: a run directory is missing or unreadable, or runs need different input shapes or tasks.
    """

    plan = plan_of(plan, options)
    chosen = plan.transforms
    if not run_dirs:
        raise RunError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    other = load_run(plan.surrogate) if plan.surrogate is not None else None
    if other is None and any(t.name == "pgd-transfer" for t in chosen):
        raise InvalidInputError(f"pgd-transfer needs a surrogate run to compute the attack on ({option('surrogate')})")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise RunError(f"run directories must have different names, got {', '.join(names)}")
    tasks = sorted({r.config.task for r in runs})
    if len(tasks) > 1:
        raise RunError(f"runs were trained for different tasks ({', '.join(tasks)})")
    task = get_task(tasks[0])
    if plan.lie and task.name != "classify":
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
    if task.suite:
        plan.validate_for(spec, size)
    if download is None:
        download = all(r.config.download for r in runs)
    fractions = {r.config.val_fraction for r in runs}
    fraction = next(iter(fractions)) if len(fractions) == 1 else RunConfig().val_fraction
    splits = load_dataset(dataset, data_root, download, val_fraction=fraction, limit=plan.limit)
    images = splits.test if plan.split == "test" else splits.val
    subjects: list[Any] = list(runs)
    if task.suite and plan.split == "test" and len(fractions) == 1 and all(r.config.dataset == dataset for r in runs):
        # each run's temperature for ece_scaled, fitted on its own validation images (never trained on, not probed)
        subjects = [_with_temperature(as_subject(r), splits.val, plan) for r in runs]
    result = task.evaluate(subjects, images, plan, other)
    result.manifest = {**result.manifest, "task": task.name, "dataset": dataset, "data_root": data_root,
                       "split": plan.split, "images": len(images), "seed": plan.seed, "bootstrap": plan.bootstrap,
                       "device": str(resolve_device(plan.device)), "versions": library_versions()}
    return result


def _with_temperature(subject: Subject, val: ImageSplit, plan: ProbePlan) -> Subject:
    """``subject`` with the temperature of its scores fitted on its run's validation images (``val``), at the probe's
    precision; unchanged where its scores are not in [0, 1] (no calibration metric is computed for it)."""
    t = validation_temperature(subject, val, plan.batch_size, plan.device, plan.amp)
    if t is None:
        return subject
    return replace(subject, temperature=t, info={**subject.info, "temperature_images": len(val)})


def perturb_to(
    run_dirs: Sequence[str],
    plan: ProbePlan,
    out: str | Path,
    *,
    force: bool = False,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool | None = None,
) -> tuple[ProbeResult, Path]:
    """:func:`perturb` into the report folder ``out`` (``capsprobe perturb``): the folder's lock is taken and the
    folder checked first, so a second writer is refused at once instead of after the whole probe.

    Raises:
        BusyError: another capsprobe command is writing ``out``.
        ReportExistsError: ``out`` holds something and ``force`` is off, or it is not capsprobe's.
        What :func:`perturb` raises.
    """
    out = Path(out)
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        with folder_lock(out):
            check_report_target(out, force)
            result = perturb(run_dirs, plan, dataset=dataset, data_root=data_root, download=download)
            return result, write_probe_outputs(result, out, force=force, lock=False)
    except BaseException:
        for folder in created:  # the folders the lock made for a report never written
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def claims_of(data: ReportData) -> tuple[list[Claim], str]:
    """A report's declared claims and when they were fixed.

    The manifest's own (written by ``capsprobe run`` with the file's SHA-256, before the runs): "before the runs".
    Else the ``[[claims]]`` of the experiment file the manifest names, at its size, read now: "after the runs"
    (a re-derivation of an older report: the claims were not fixed before its data were seen). No experiment file:
    no claims."""
    manifest = data.manifest
    exp: dict[str, Any] = manifest["experiment"] if isinstance(manifest.get("experiment"), dict) else {}
    models = list(dict.fromkeys(str(r.get("model")) for r in manifest.get("runs", []) if isinstance(r, dict)))
    if manifest.get("claims"):
        try:
            return parse_claims(manifest["claims"], models=models), "before the runs"
        except ClaimError as exc:
            raise ReportError(f"{data.folder / MANIFEST}: {exc}") from None
    path = exp.get("file")
    if not path or not Path(path).is_file():
        return [], ""
    exp_file = load_experiment(path, str(exp.get("size", "quick")))
    return [c for c in exp_file.claims if c.a in models and c.b in models], "after the runs"


def rederive_claims(folders: Sequence[str | Path], study: str | Path | None = None, locked: bool = False
                    ) -> pd.DataFrame:
    """Each report's claims table (``claims.csv`` in its folder) from its committed tables, and the study-wide
    family over all of them (:func:`capsprobe.metrics.claims.study_table`), written to ``study`` when given.

    Reads only the folders' CSV files and manifests (no per-image rows, no runs); every file is written to a
    temporary name and renamed. ``locked``: the caller holds the folders' locks."""
    tables = {}
    for folder in folders:
        folder = Path(folder)
        with nullcontext() if locked else folder_lock(folder):
            data = read_probe_outputs(folder)
            claims, declared = claims_of(data)
            if not claims:
                continue
            dataset = str(data.manifest.get("dataset", ""))
            try:
                n_classes: int | None = get_spec(dataset).num_classes
            except Exception:  # noqa: BLE001 - an unregistered data set: no at-chance check
                n_classes = None
            table = claims_table(claims, data.tables, data.manifest.get("runs", []), n_classes=n_classes,
                                 declared=declared)
            _write_table(table, folder / "claims.csv")
            tables[folder.name] = table
    out = study_table(tables)
    if study is not None:
        _write_table(out, Path(study))
    return out


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_csv(frame, tmp)
    tmp.replace(path)


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
    """Recompute a report folder's comparison tables with the current method and its declared claims
    (:func:`rederive_claims`), then render it (:func:`capsprobe.report.recompare_report`)."""
    return _render.recompare_report(folder, section_of, formats,
                                    after=lambda path: rederive_claims([path], locked=True))


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
    download: bool | None = None,
    allow_device_change: bool = False,
) -> Path:
    """Train (or reuse) every model and seed of the experiment, evaluate them as their task says, write the report.

    The one orchestrator: ``capsprobe run FILE`` and ``capsprobe demo`` (``experiments/demo.toml``) both come here.
    Runs go to ``<runs_dir>/<model>-seed<N>`` (default ``runs/<name>-<size>``); finished ones are reused, an
    interrupted one resumes. Every check of the file, the transformations and the report folder comes first.
    ``jobs`` trains that many runs at once in worker processes, ``launcher="slurm"`` as a Slurm array job
    (:func:`capsprobe.training.launch.train_many`); the probe and the report run once every run is complete.
    ``download`` (None: the file's ``[train] download``, on by default) lets a missing data set be fetched into
    ``data_root``; off, nothing is created there. ``allow_device_change`` resumes a killed run even where its
    epochs so far ran on another kind of device or in another precision (refused otherwise).

    Returns:
        The path of ``report.html``.
    """
    exp = load_experiment(path, size)  # checks the probe plan against the data set's images: before any training
    check_launcher(launcher, slurm, jobs)
    plan = exp.probe_plan(device=device, progress=progress)
    out = check_report_target(Path(out) if out is not None else Path("reports") / (exp.report or exp.name), force)
    with folder_lock(out):  # a second command writing the same report is refused now, not after the training
        return _run_experiment(exp, plan, out, size, device, data_root, runs_dir, force, progress, jobs, launcher,
                               slurm, download, allow_device_change)


def _run_experiment(exp: Experiment, plan: ProbePlan, out: Path, size: str, device: str, data_root: str | None,
                    runs_dir: str | Path | None, force: bool, progress: bool, jobs: int, launcher: str,
                    slurm: SlurmOptions | None, download: bool | None, allow_device_change: bool = False) -> Path:
    check_report_target(out, force)  # again, under the lock
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs") / f"{exp.name}-{size}"
    root = data_root or exp.data_root
    planned = exp.jobs()
    job = exp.surrogate_job()  # pgd-transfer's surrogate: a third model, trained with the others, never probed
    items = []
    for i, (spec, seed) in enumerate(planned + ([job] if job is not None else []), 1):
        config = exp.run_config(spec, seed, device=device, data_root=root)
        if download is not None:
            config = replace(config, download=download)
        run_dir = runs_dir / run_name(spec.variant, seed)
        _log.info("%s [%d/%d]: %s, seed %d, %d epochs -> %s%s", exp.name, i, len(planned) + (job is not None),
                  spec.variant, seed, spec.epochs, run_dir, " (pgd-transfer's surrogate: not probed)" if i >
                  len(planned) else "")
        items.append((config, run_dir))
    trained = [str(p) for p in train_many(items, jobs=jobs, launcher=launcher, slurm=slurm, progress=progress,
                                          allow_device_change=allow_device_change)]
    paths, surrogate = trained[:len(planned)], (trained[-1] if job is not None else None)
    _log.info("%s: evaluating %d runs", exp.name, len(paths))
    result = perturb(paths, replace(plan, surrogate=surrogate), dataset=exp.dataset, data_root=root, download=download)
    result.manifest["experiment"] = {"file": str(exp.path), "name": exp.name, "size": size,
                                     "description": exp.description, "reference": exp.reference,
                                     "sha256": exp.sha256}
    if exp.claims:  # the declared primary endpoints, fixed with the file's hash before the runs
        result.manifest["claims"] = [c.as_dict() for c in exp.claims]
        result.tables["claims"] = claims_table(exp.claims, result.tables, result.manifest.get("runs", []),
                                               n_classes=get_spec(exp.dataset).num_classes)
    write_probe_outputs(result, out, force=force, lock=False)
    _log.info("%s: writing the report in %s", exp.name, out)
    return _render.render_report(out, section_of, None, lock=False)


def run_demo(size: str = "quick", out: str | Path = "reports/demo", runs_dir: str | Path | None = None,
             device: str = "auto", force: bool = False, progress: bool = True) -> Path:
    """The main job: ``experiments/demo.toml`` at ``size`` (tiny, quick, paper), report in ``out``."""
    return run_experiment(demo_file(), size, device=device, out=out, runs_dir=runs_dir, force=force,
                          progress=progress)


# (training pool, test split) of the registered data sets, for the dry run's estimate only (the registry knows shapes,
# not counts; the longest matching prefix counts: mnist-canvas40 is MNIST's). An epoch trains on the pool less the
# validation fraction (mnist-sample: 4,000 - 10% = 3,600 digits), and the probe reads the test split (1,000 digits).
# A novel-viewpoint set trains on its familiar views only: a third of (small|synth)NORB's training images (6 of 18
# azimuths, or 3 of 9 elevations), every test image probed; an in-plane one (-viewpoint) tests each digit twice, at a
# familiar and at a novel pose.
_IMAGES = {"mnist": (60_000, 10_000), "fashion-mnist": (60_000, 10_000), "mnist-sample": (4_000, 1_000),
           "mnist-no69": (48_133, 8_033), "mnist-sample-no69": (3_200, 800), "cifar10": (50_000, 10_000),
           "svhn": (73_257, 26_032),
           **{f"{base}-viewpoint": (pool, 2 * test) for base, (pool, test) in (
               ("mnist", (60_000, 10_000)), ("fashion-mnist", (60_000, 10_000)), ("mnist-sample", (4_000, 1_000)),
               ("mnist-no69", (48_133, 8_033)), ("mnist-sample-no69", (3_200, 800)))},
           **{f"{norb}{views}": (24_300 // (3 if views else 1), 24_300)
              for norb in ("smallnorb", "synthnorb") for views in ("", "-azimuth", "-elevation")}}


def _known_counts(dataset: str) -> tuple[str | None, int, int]:
    """The registered name whose counts ``dataset`` takes (None: unknown, MNIST's assumed), its pool and test size."""
    known = max((k for k in _IMAGES if dataset.startswith(k)), key=len, default=None)
    pool, test = _IMAGES.get(known or "", (60_000, 10_000))
    return known, pool, test


def dry_run(path: str | Path, size: str = "quick", device: str = "auto", measure: bool = True,
            out: str | Path | None = None) -> list[str]:
    """What ``capsprobe run PATH --size SIZE`` would do, as lines to print: the runs (model x seed, epochs), the probe
    plan (transformations x magnitudes), and an estimated wall time from a throughput measured now (one training
    step and one inference batch of each model, after one warm-up, at its batch size on ``device``; ``measure=False``
    skips it).
    Every check :func:`run_experiment` makes before training is made (the plan against the data set's images
    included); nothing is trained, loaded or written. A report folder (``out``, default ``reports/<name>``) that the
    run would refuse without ``--force`` is named in a line; the dry run does not fail on it.

    Raises:
        ExperimentError: the file, the size or its plan is invalid.
    """
    exp = load_experiment(path, size)
    plan = exp.probe_plan(device=device)
    task = get_task(exp.train.get("task", "classify"))
    spec = get_spec(exp.dataset)
    side = task.input_size(spec.img_size)
    jobs = exp.jobs()
    lines = [f"{exp.name} --size {size}: {len(jobs)} runs on {exp.dataset} ({spec.in_chans}x{side}x{side}, "
             f"{spec.num_classes} classes), task {task.name}"]
    defaults = RunConfig()
    batch = {}
    surrogate = exp.surrogate_job()
    for model, seed in jobs + ([surrogate] if surrogate is not None else []):
        train = {**exp.train, **model.train}
        batch[model.variant] = int(train.get("batch_size", defaults.batch_size))
        options = f", options {dict(model.options)}" if model.options else ""
        role = " (pgd-transfer's surrogate: trained, not probed or compared)" if model is exp.surrogate else ""
        lines.append(f"  {model.variant} x seed {seed}: {model.epochs} epoch{'s' * (model.epochs != 1)}, batch "
                     f"{batch[model.variant]}{options}{role}")
    probed = plan.limit if plan.limit is not None else _known_counts(exp.dataset)[2]
    if task.suite:
        lines.append(f"probe: {plan.conditions} conditions per run ({len(plan.transforms)} transformations x their "
                     f"magnitudes), {plan.limit or 'all'} {plan.split} images, bootstrap {plan.bootstrap}, seed "
                     f"{plan.seed}" + (", Lie derivatives" if plan.lie else "")
                     + (f", reference {plan.reference}" if plan.reference else ""))
        lines += [f"  {line}" for line in plan.describe()]
        passes = plan.conditions + 1
    else:
        lines.append(f"probe: the {task.name} task's own test on {plan.limit or 'all'} {plan.split} images "
                     "(the transformations are not used)")
        passes = 1
    if measure:
        lines.append(_estimate(exp, jobs, batch, spec, side, device, probed * passes, surrogate))
    report = Path(out) if out is not None else Path("reports") / (exp.report or exp.name)
    try:
        check_report_target(report, force=False)
    except ReportExistsError:
        try:
            check_report_target(report, force=True)
            lines.append(f"report folder {report} exists: the run needs --force")
        except ReportExistsError:
            lines.append(f"report folder {report} exists and was not written by capsprobe: the run refuses it, "
                         "even with --force")
    lines.append("dry run: nothing trained, loaded or written")
    return lines


def _estimate(exp: Experiment, jobs: list[tuple[ModelSpec, int]], batch: dict[str, int], spec: DatasetSpec, side: int,
              device: str, probe_images: int, surrogate: tuple[ModelSpec, int] | None = None) -> str:
    """The wall-time line of :func:`dry_run`: each variant's training and inference rate measured now (the
    ``surrogate`` run's training counted, its forward passes not: they are part of the attack it computes)."""
    from .bench import bench_model  # lazy: the measurement loads the models

    known, pool, _ = _known_counts(exp.dataset)
    val_fraction = float(exp.train.get("val_fraction", RunConfig().val_fraction))
    per_epoch = exp.limit if exp.limit is not None else round(pool * (1 - val_fraction))
    rates: dict[str, tuple[float, float]] = {}
    train_s = probe_s = 0.0
    for model, _ in jobs + ([surrogate] if surrogate is not None else []):
        if model.variant not in rates:
            r = bench_model(model.model, batch_size=batch[model.variant], steps=1, warmup=1, device=device,
                            in_chans=spec.in_chans, img_size=side, num_classes=spec.num_classes,
                            model_kwargs=dict(model.options))
            rates[model.variant] = (r.train_images_per_s, r.eval_images_per_s)
            dev = r.device
        train_rate, eval_rate = rates[model.variant]
        train_s += model.epochs * per_epoch / train_rate
        if surrogate is None or model is not surrogate[0]:
            probe_s += probe_images / eval_rate
    measured = ", ".join(f"{train:,.0f} train / {infer:,.0f} eval img/s for {name}"
                         for name, (train, infer) in rates.items())
    source = ("the size's limit" if exp.limit is not None else
              f"the training split of {known} (less {val_fraction:.0%} for validation)" if known else
              f"a training split of {pool:,} (less {val_fraction:.0%} for validation), assumed")
    return (f"estimated wall time: {_duration(train_s + probe_s)} ({_duration(train_s)} training, one run at a time, "
            f"{per_epoch:,} images per epoch from {source}; {_duration(probe_s)} of probe forward passes; metrics, "
            f"bootstrap, data loading and the report not counted), estimated from {measured} measured now on {dev}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
