"""Training many runs at once: in worker processes on this machine (one GPU each, or a share of the CPU threads),
or as a Slurm array job through submitit (https://github.com/facebookincubator/submitit).

Every run goes through :func:`~capsprobe.training.fit` with ``resume=True``, so a finished run is reused, a killed
one resumes from its last complete epoch, and the runs themselves are the same bytes whichever way they were
launched (the run folder is written atomically by ``fit``; no two jobs share one).
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInputError, option
from ..runtime import tune_cpu_allocator
from .loop import fit
from .runs import RunConfig, RunError, is_finished

__all__ = ["LAUNCHERS", "SlurmOptions", "check_launcher", "train_many"]

_log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    """What a Slurm array job asks for, one run per task (submitit's parameters).

    Attributes:
        partition: the Slurm partition (None: the cluster's default).
        time_min: each task's time limit, minutes.
        gpus: GPUs per task.
        cpus: CPU cores per task.
        mem_gb: memory per task (None: the partition's default).
        parallelism: at most this many tasks of the array at once.
        log_dir: where submitit keeps each task's logs and pickled result (None: ``.slurm`` beside the runs, in the
            folder that holds them, never the working directory).
        cluster: submitit's cluster (None: Slurm, which needs ``sbatch`` on ``PATH``; ``"local"`` runs the tasks as
            local processes, for tests and for trying a configuration out).

    Raises:
        InvalidInputError: a time limit under a minute, or a count below its least (0 GPUs, 1 CPU, 1 GB, 1 task).
    """

    partition: str | None = None
    time_min: int = 240
    gpus: int = 1
    cpus: int = 8
    mem_gb: int | None = None
    parallelism: int = 64
    log_dir: str | None = None
    cluster: str | None = None

    def __post_init__(self) -> None:
        for name, low in (("time_min", 1), ("gpus", 0), ("cpus", 1), ("mem_gb", 1), ("parallelism", 1)):
            value = getattr(self, name)
            if value is None and name == "mem_gb":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInputError(f"Slurm {name} must be an integer >= {low}, got {value!r}")
        if self.cluster not in (None, "slurm", "local", "debug"):
            raise InvalidInputError(f"unknown submitit cluster {self.cluster!r}: choose slurm, local or debug")


def _visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` where it is set, else every one there is."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _worker_gpus(configs: Sequence[RunConfig], visible: Sequence[str]) -> list[str]:
    """The GPUs the workers share out: the ones the runs name (``cuda:N`` is this process's N-th visible GPU), or
    every visible one when no run names an index (``auto``, ``cuda``).

    Raises:
        InvalidInputError: a run names a GPU this process cannot see.
    """
    named: set[int] = set()
    for config in configs:
        if config.device.startswith("cuda:"):
            index = _cuda_index(config.device)
            if not 0 <= index < len(visible):
                raise InvalidInputError(f"device {config.device!r} asked for, but {len(visible)} GPUs are visible "
                                        f"here ({', '.join(visible) or 'none'})")
            named.add(index)
    return [visible[i] for i in sorted(named)] if named else list(visible)


def _cuda_index(spec: str) -> int:
    """The index of a ``cuda:N`` device spec."""
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise InvalidInputError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None


_OWN_GPU = False  # in a worker process: whether it was given a GPU of its own (CUDA_VISIBLE_DEVICES, one entry)


def _worker_init(slots: Any, gpus: Sequence[str], threads: int) -> None:
    """A worker's share: its own GPU (round-robin over ``gpus``, set before CUDA starts), else ``threads`` threads."""
    global _OWN_GPU
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        _OWN_GPU = True
    import torch

    torch.set_num_threads(threads)


def _fit_one(config: RunConfig, out: str, allow_device_change: bool = False) -> str:
    """One run in a worker process (a local worker or a Slurm task): a fresh interpreter that did not come through the
    command line, so it keeps freed memory as the command line does (without, each CPU training step page-faults its
    large blocks anew: 67-95 MB a capsnet_small step)."""
    tune_cpu_allocator()
    if _OWN_GPU and config.device.startswith("cuda:"):
        config = replace(config, device="cuda:0")  # the worker's one visible GPU is the run's (see train_many)
    return str(fit(config, out, resume=True, progress=False, allow_device_change=allow_device_change))


def train_many(items: Sequence[tuple[RunConfig, Path]], jobs: int = 1, launcher: str = "local",
               slurm: SlurmOptions | None = None, progress: bool = True, allow_device_change: bool = False
               ) -> list[Path]:
    """Train every ``(config, run_dir)``, reusing finished runs and resuming killed ones; the run folders in order.

    Args:
        jobs: worker processes on this machine (``launcher="local"``). With GPUs each worker gets one, handed out
            round-robin through ``CUDA_VISIBLE_DEVICES`` (over the GPUs the runs name as ``cuda:N``, else over every
            visible one), and trains on it (a run's ``cuda:N`` is the worker's own GPU, cuda:0 inside it); on CPU the
            threads are split between the workers. 1 trains in this process, one run after the other, with progress
            bars.
        launcher: ``local`` or ``slurm`` (one Slurm array job, a run per task, through submitit; this call returns
            once every task has finished).
        slurm: the array job's resources (``launcher="slurm"``).
        allow_device_change: resume a killed run even where its epochs so far ran on another kind of device or in
            another precision (:func:`~capsprobe.training.loop.fit`).

    Raises:
        InvalidInputError: ``jobs`` below 1, an unknown launcher, or submitit missing for Slurm.
        The first error of a run (the runs not yet started are cancelled; finished ones stay and are reused).
    """
    check_launcher(launcher, slurm, jobs)
    if launcher == "slurm":
        return _slurm(items, slurm or SlurmOptions(), allow_device_change)
    # finished runs are reused here, without a worker: starting an interpreter (and loading the data) for each cost
    # 24 s of 92 when 9 finished tiny-ablation runs were "resumed" by 2 workers
    finished = [is_finished(config, out) for config, out in items]
    for (_, out), whole in zip(items, finished):
        if whole:
            _log.info("%s is already complete: reused", out)
    todo = [item for item, whole in zip(items, finished) if not whole]
    if jobs == 1 or len(todo) <= 1:
        return [Path(out) if whole else fit(config, out, resume=True, progress=progress,
                                            allow_device_change=allow_device_change)
                for (config, out), whole in zip(items, finished)]
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no forked CUDA or thread pools
    workers = min(jobs, len(todo))
    gpus = _worker_gpus([c for c, _ in todo], _visible_gpus()) if any(c.device != "cpu" for c, _ in todo) else []
    threads = max(1, (os.cpu_count() or 1) // workers)
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    _log.info("training %d runs in %d worker processes (%s)%s", len(todo), workers,
              f"GPUs {', '.join(gpus)} round-robin" if gpus else f"{threads} CPU threads each",
              f"; {len(items) - len(todo)} finished runs reused" if len(todo) < len(items) else "")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(slots, gpus, threads)) as pool:
        futures = [pool.submit(_fit_one, config, str(out), allow_device_change) for config, out in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        trained = {id(item): Path(f.result()) for item, f in zip(todo, futures)}
    return [trained.get(id(item), Path(item[1])) for item in items]


def check_launcher(launcher: str, slurm: SlurmOptions | None = None, jobs: int = 1) -> None:
    """Refuse, before anything runs, a launch that cannot work here.

    Raises:
        InvalidInputError: ``jobs`` below 1, an unknown launcher, or Slurm asked for where ``sbatch`` is not on
            ``PATH`` (submitit would run the tasks on this machine instead) or submitit is missing.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise InvalidInputError(f"jobs must be at least 1, got {jobs}")
    if launcher not in LAUNCHERS:
        raise InvalidInputError(f"unknown launcher {launcher!r}: choose from {', '.join(LAUNCHERS)}")
    if launcher != "slurm":
        return
    if (slurm or SlurmOptions()).cluster in (None, "slurm") and shutil.which("sbatch") is None:
        raise InvalidInputError(f"{option('launcher')} slurm needs Slurm, and sbatch is not on PATH here: run where "
                                f"Slurm is, or train here with {option('launcher')} local ({option('jobs')} N)")
    try:
        import submitit  # noqa: F401 - only whether it is there
    except ImportError:
        raise InvalidInputError(f"{option('launcher')} slurm needs submitit: pip install -e '.[slurm]'") from None


def _slurm(items: Sequence[tuple[RunConfig, Path]], options: SlurmOptions, allow_device_change: bool = False
           ) -> list[Path]:
    import submitit  # lazy: check_launcher saw it is there
    if not items:
        return []
    folder = Path(options.log_dir) if options.log_dir is not None else Path(items[0][1]).parent / ".slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster or "slurm")
    params: dict[str, Any] = {"timeout_min": options.time_min, "gpus_per_node": options.gpus,
                              "cpus_per_task": options.cpus, "tasks_per_node": 1, "nodes": 1,
                              "name": "capsprobe-train"}
    if options.mem_gb is not None:
        params["mem_gb"] = options.mem_gb
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = options.parallelism
        if options.partition:
            params["slurm_partition"] = options.partition
    executor.update_parameters(**params)
    with executor.batch():  # one array job
        submitted = [executor.submit(_fit_one, config, str(Path(out).resolve()), allow_device_change) for config, out in items]
    _log.info("submitted %d runs to %s (job %s); waiting for them", len(submitted), executor.cluster,
              submitted[0].job_id if submitted else "-")
    failures = []
    for job, (config, out) in zip(submitted, items):
        try:
            job.result()  # waits; the returned path is not trusted: the run folder itself is checked below
        except Exception as exc:  # noqa: BLE001 - submitit's FailedJobError, UncompletedJobError, a task's own error
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            failures.append(f"{out} (task {job.job_id}): {lines[-1] if lines else type(exc).__name__}")
            continue
        if not is_finished(config, out):
            failures.append(f"{out} (task {job.job_id}): the task ended without a complete run")
    if failures:
        raise RunError(f"{len(failures)} of {len(items)} Slurm tasks failed; the first: {failures[0]} (logs in "
                       f"{folder}; rerun to resume)")
    return [Path(out) for _, out in items]
