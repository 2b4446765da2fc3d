"""Two gloo ranks, each running :func:`capsprobe.training.fit` as under torchrun, with rank-local trouble injected
(run by ``tests/training/test_ddp.py``; ``python tests/training/ddp_ranks.py OUT``).

The ranks are forked from this process (the imports are paid once) and find each other through ``MASTER_ADDR`` /
``MASTER_PORT``, as torchrun's workers do; ``fit`` creates and destroys the process group itself. Three runs, one
after the other, each on its own port:

1. ``agree``: a batch-norm model trains with a target accuracy and ``val_every=1``; after every step rank 1's
   batch-norm statistics are made NaN (the ranks' statistics differ a little after every step; here enough that
   rank 1's own evaluation scores 0: a NaN model predicts class 0, which the data set lacks), so a rank that
   decided from its own evaluation would never stop while rank 0 stops at once. Rank 0 loads the data slowly and
   rank 1 notes whether rank 0 had finished loading before it began.
2. ``nan``: rank 1's loss is NaN from the first step; both ranks must raise :class:`NonFiniteLossError`.
3. ``weights``: after the epoch's last step one of rank 0's weights is made infinite; both ranks must raise.
4. ``write``: rank 0 cannot write the run's metrics; rank 1 must stop with it, not wait.

Each rank prints ``rank R PART: WHAT`` lines; a run that hangs is killed after ``--timeout`` seconds (exit 124).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

import capsprobe.training.loop as loop
from capsprobe.data import DatasetSpec, ImageSplit, load_dataset, register_dataset
from capsprobe.training.loop import NonFiniteLossError, fit
from capsprobe.training.runs import RunConfig, RunError

DATASET = "ddp-test-digits"
# batch norm, and parameters no loss reaches (the vote matrices feed only the poses): DDP looks for unused ones
MODEL = {"model": "backbone_head_self", "model_kwargs": {"planes": 4, "blocks": [1, 1, 1], "caps_types": 2}}
BASE = dict(MODEL, dataset=DATASET, batch_size=8, lr=1e-2, device="cpu", amp=False)
ONE_BATCH = {**BASE, "batch_size": 16, "limit": 32}  # one batch per rank: the epoch's first step is its last


def _say(line: str) -> None:
    """One line to stdout in one write (the ranks share the pipe; a line is never split by the other's)."""
    os.write(1, (line + "\n").encode())


def _digits(out: Path):
    """The embedded sample without the digit 0 (still ten classes), loaded slowly by rank 0, which leaves a marker
    for the run (its port) once done; rank 1 records whether the marker was there when it began."""

    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        rank, marker = int(os.environ["RANK"]), out / f"loaded-{os.environ['MASTER_PORT']}"
        if rank == 0:
            time.sleep(0.2)
        else:
            _say(f"rank {rank} load: after rank 0: {marker.exists()}")
        splits = load_dataset("mnist-sample", limit=80)
        train, test = (s.subset(torch.nonzero(s.labels != 0).flatten()) for s in (splits.train, splits.test))
        if rank == 0:
            marker.touch()
        return train, test

    return load


def _agree(rank: int, out: Path, model: Callable[[], torch.nn.Module]) -> str:
    """Trains to a target that rank 0's evaluation reaches at the first step and rank 1's never does."""
    last: list[tuple[int, int]] = []

    def skew(epoch: int, i: int) -> None:
        last.append((epoch, i))
        if rank == 1:
            for m in model().modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_var.fill_(float("nan"))

    fit(RunConfig(**BASE, epochs=2, limit=64, target_accuracy=1e-6, val_every=1), out / "agree", progress=False,
        on_batch=skew)
    return f"stopped after {last[-1]}"


def _nan(rank: int, out: Path, model: Callable[[], torch.nn.Module]) -> str:
    """A loss that is NaN on rank 1 alone, from the first step."""
    forward = loop.Objective.forward

    def poisoned(self, *args, **kwargs):
        loss, scores = forward(self, *args, **kwargs)
        return (loss * float("nan") if rank == 1 and torch.is_grad_enabled() else loss), scores

    loop.Objective.forward = poisoned  # type: ignore[method-assign]
    try:
        fit(RunConfig(**ONE_BATCH, epochs=1), out / "nan", progress=False)
    finally:
        loop.Objective.forward = forward  # type: ignore[method-assign]
    return "no error"


def _weights(rank: int, out: Path, model: Callable[[], torch.nn.Module]) -> str:
    """Rank 0's weights turn infinite after the epoch's one step (its loss stays finite)."""

    def diverge(epoch: int, i: int) -> None:
        if rank == 0:
            next(model().parameters()).data.fill_(float("inf"))

    fit(RunConfig(**ONE_BATCH, epochs=1), out / "weights", progress=False, on_batch=diverge)
    return "no error"


def _write(rank: int, out: Path, model: Callable[[], torch.nn.Module]) -> str:
    """Rank 0 fails to write the run's metrics (a full disk, say); rank 1 must not wait for it."""
    write_metrics = loop.write_metrics

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    loop.write_metrics = full  # type: ignore[assignment]
    try:
        fit(RunConfig(**ONE_BATCH, epochs=1), out / "write", progress=False)
    except (OSError, RunError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        loop.write_metrics = write_metrics
    return "no error"


PARTS = {"agree": _agree, "nan": _nan, "weights": _weights, "write": _write}


def _worker(rank: int, ports: list[int], out: Path, parts: list[str]) -> bool:
    """Runs ``parts`` as rank ``rank``; True when one of them raised."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    register_dataset(DatasetSpec(DATASET, 1, 28, 10, "the sample without zeros (tests)"), _digits(out))
    models: list[torch.nn.Module] = []  # the model each fit builds
    build = loop.build_model
    loop.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]  # type: ignore[assignment]
    raised = False
    for port, part in zip(ports, PARTS):
        if part in parts:
            os.environ["MASTER_PORT"] = str(port)
            try:
                what = PARTS[part](rank, out, lambda: models[-1])
            except NonFiniteLossError as exc:
                what, raised = f"NonFiniteLossError: {exc}", True
            _say(f"rank {rank} {part}: {what}")
    return raised


def _run(rank: int, ports: list[int], out: Path, parts: list[str]) -> None:
    try:
        raised = _worker(rank, ports, out, parts)
    except BaseException:
        _say(f"rank {rank} failed:\n{traceback.format_exc()}")
        os._exit(1)
    os._exit(3 if raised else 0)  # as a rank whose fit raised would


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path, timeout: float, parts: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # no thread pool to fork
    load_dataset("mnist-sample", limit=80)  # the sample read and sklearn imported once, for both ranks
    ports = [_free_port() for _ in PARTS]
    ctx = multiprocessing.get_context("fork")
    ranks = [ctx.Process(target=_run, args=(rank, ports, out, parts)) for rank in range(2)]
    for p in ranks:
        p.start()
    deadline = time.monotonic() + timeout
    for p in ranks:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(ranks) if p.is_alive()]
    for rank in hung:
        ranks[rank].kill()
        ranks[rank].join()
    _say(json.dumps({"exitcodes": [p.exitcode for p in ranks], "hung": hung}))
    return 124 if hung else max(abs(p.exitcode or 0) for p in ranks)


if __name__ == "__main__":
    timeout = float(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 40.0
    parts = sys.argv[sys.argv.index("--parts") + 1].split(",") if "--parts" in sys.argv else list(PARTS)
    sys.exit(main(Path(sys.argv[1]), timeout, parts))
