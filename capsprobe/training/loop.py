"""fit(): the training loop, with AMP on CUDA, atomic checkpoints, exact resume and DistributedDataParallel.

A model with ``set_epoch(epoch)`` is told the (0-based) epoch before each one (EMCapsNet raises its spread loss
margin by it), so a resumed run sets the schedule exactly as an uninterrupted one.

Objectives: CapsNet, the margin loss plus ``recon_weight`` x the decoder's sum of squared errors (decoder
masked by the true label); convnets, cross entropy. Optimiser: Adam with an exponential learning-rate decay
(``lr * lr_decay ** epoch``), as in the paper's official code.

Determinism: the initial weights come from ``seed``; every epoch reseeds the data order, the shift
augmentation and dropout from ``(seed, epoch, rank)``, and the ``augment`` option's rotation or affine warp of each
training batch (after the shift; :func:`augment_batch`) from ``(seed, epoch, rank, batch)`` (:func:`augment_seed`).
Resuming from the checkpoint of epoch ``e`` therefore replays epochs ``e+1, ...`` exactly as an uninterrupted run
would (on CPU; CUDA kernels may not be bitwise reproducible). Validation and test images are never augmented.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (gloo
on CPU, nccl on CUDA; :func:`data_parallel`), every rank trains on its shard of each epoch, statistics are
all-reduced, and only rank 0 writes files; the result is an ordinary run directory. Every decision is taken once
for all ranks, so that none stops while another waits for it: rank 0 loads (downloads) the data before the
others, validates (the target and ``val_every`` stops) and checks the weights, and the others follow its verdict;
a non-finite loss on any rank is all-reduced; a failure on rank 0 raises on every rank.

The module reads in the order :func:`fit` runs: :func:`fit`, its steps (:func:`_fit` calls them top to bottom), the
objective and the step (:class:`Objective`, :func:`train_step`, :func:`evaluate`), then the checks and the
distributed helpers. What a run folder holds and how it is read and written is :mod:`.runs`'s.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import ImageSplit, Splits, get_spec, load_dataset
from ..errors import CapsprobeError, InvalidInputError, option
from ..models import adapt, unwrap
from ..runtime import (
    autocast_context,
    autocast_dtype,
    device_record,
    epoch_seed,
    folder_lock,
    replace_dir,
    resolve_device,
)
from ..transforms import Transformed, affine, apply_matrix, rotation_matrix
from .objectives import Batches, TrainingTask, get_training_task
from .runs import (
    AUGMENTS,
    CHECKPOINT,
    HISTORY,
    WEIGHTS,
    RunConfig,
    RunError,
    RunExistsError,
    build_model,
    completion_problem,
    config_changes,
    device_change,
    is_finished,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
    save_weights,
    start_run_dir,
    write_completion,
    write_history,
    write_metrics,
)

__all__ = [
    "NonFiniteLossError",
    "Objective",
    "RunExistsError",
    "augment_batch",
    "augment_seed",
    "compile_objective",
    "data_parallel",
    "evaluate",
    "fit",
    "train_step",
    "config_changes",
    "is_finished",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class NonFiniteLossError(CapsprobeError):
    """Training produced a NaN or infinite loss."""


def fit(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    allow_device_change: bool = False,
) -> Path:
    """Train ``config`` into the run directory ``out`` and return its path.

    Args:
        config: what to train.
        out: run directory; must be absent or empty unless ``resume`` or ``force``.
        resume: continue from the last complete epoch saved in ``out/checkpoint`` (fresh start when there is
            none yet); the stored config must match except for ``epochs`` and the device.
        force: replace a finished or partial run in ``out``.
        progress: show a progress bar (rank 0).
        on_batch: called as ``on_batch(epoch, batch_index)`` after every optimiser step.
        allow_device_change: resume even where the checkpoint was trained on another kind of device or in another
            precision (:func:`~capsprobe.runtime.device_record`'s ``device_type`` and ``autocast``); refused otherwise.

    Returns:
        The run directory.

    Raises:
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``force`` is set.
        NonFiniteLossError: the loss became NaN or infinite; the last good checkpoint is kept.
        RunError, UnknownModelError, UnknownDatasetError, DatasetUnavailableError: bad input.
    """
    ctx = _init_distributed(config.device)
    try:
        with ExitStack() as stack:
            return _fit(config, Path(out), resume, force, progress, on_batch, ctx, stack, allow_device_change)
    finally:
        if ctx.owned and dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    config: RunConfig,
    out: Path,
    resume: bool,
    force: bool,
    progress: bool,
    on_batch: Callable[[int, int], None] | None,
    ctx: _Dist,
    stack: ExitStack,
    allow_device_change: bool = False,
) -> Path:
    """The steps of :func:`fit`: the model and the data, the run folder, the checkpoint to resume from, the epochs,
    then the test and the files that make the run whole."""

    device = resolve_device(config.device, ctx.local_rank)
    dtype = autocast_dtype(device, config.amp)
    record = device_record(device, dtype)  # where and in what precision this session trains
    spec = get_spec(config.dataset)
    task = get_training_task(config.task)
    size = task.input_size(spec.img_size)
    input_spec = {"in_chans": spec.in_chans, "img_size": size, "num_classes": spec.num_classes}
    torch.manual_seed(config.seed)
    model = build_model(config, input_spec).to(device)  # an unknown model fails here, before any data is read
    splits = _load_data(config, ctx)
    # only now, with model and data known to be fine, is the output folder locked and checked (rank 0 writes)
    work, has_checkpoint = _claim_run_dir(config, out, resume, force, ctx, stack)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    resumed = _resume(config, out, resume, has_checkpoint, model, optimizer, ctx,
                      None if allow_device_change else record)
    if resumed is None:
        return out  # already complete
    start_epoch, history = resumed
    if ctx.main:
        # from here until the completion record is written again, the run is (and says it is) incomplete
        start_run_dir(work, config, input_spec, ctx.world_size, record)

    plain = Objective(model, config.recon_weight, config.task, channels_last=config.channels_last)
    objective: nn.Module = compile_objective(plain, config.compile)
    if ctx.world_size > 1:
        objective = data_parallel(objective, _sample_batch(task, splits.train, device), device, plain)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    per_rank = math.ceil(len(splits.train) / ctx.world_size)
    num_batches = math.ceil(per_rank / config.batch_size)

    for epoch in range(start_epoch, config.epochs):
        if _reached(config, history):  # matched training: stop at the first epoch that reaches the target
            break
        torch.manual_seed(epoch_seed(config.seed, epoch, ctx.rank))
        lr = config.lr * config.lr_decay**epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_epoch = getattr(model, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)  # a model with an epoch schedule (EMCapsNet's spread loss margin)
        objective.train()
        stats = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, correct, images, non-finite
        bar = tqdm(total=num_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.main),
                   leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        batches = task.batches(splits.train, config.batch_size, device, train=True, seed=config.seed, epoch=epoch,
                               max_shift=config.max_shift, rank=ctx.rank, world_size=ctx.world_size)
        if config.augment != "none":  # training batches only: validation and test images are never augmented
            batches = _augmented(batches, config.augment, config.seed, epoch, ctx.rank)
        val: dict[str, float] | None = None
        steps = num_batches
        for i, (images, labels, parts) in enumerate(batches):
            loss, scores = train_step(objective, optimizer, scaler, images, labels, device, dtype, parts)
            batch = labels.shape[0]
            stats[0] += loss.detach().double() * batch
            stats[1] += task.hits(scores.detach(), labels).sum()
            stats[2] += batch
            stats[3] += (~torch.isfinite(loss.detach())).double()
            if on_batch is not None:
                on_batch(epoch, i)
            if i % 10 == 0 or i == num_batches - 1:
                bad = stats[3:].clone()
                if ctx.world_size > 1:
                    dist.all_reduce(bad)  # a non-finite loss on any rank stops every rank at this step
                s = stats.tolist()  # one host sync every 10 steps
                _check_finite(bad.item(), epoch, i, out)
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{s[0] / s[2]:.4f}", acc=f"{s[1] / s[2]:.3f}", img_s=f"{s[2] * ctx.world_size / elapsed:.0f}")
            bar.update(1)
            if config.val_every is not None and (i + 1) % config.val_every == 0 and i < num_batches - 1:
                # matched training within an epoch: a model that passes the target in its first epoch stops near
                # it, not a whole epoch beyond. Rank 0 validates and every rank follows its verdict (the ranks'
                # batch norm statistics differ); the global RNG is set aside, so the rest of the epoch draws what it
                # would have drawn.
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    mid = _on_main(ctx, lambda: evaluate(model, splits.val, max(config.batch_size, 256), device,
                                                         config.amp, config.recon_weight, config.task))
                if config.target_accuracy is not None and mid["accuracy"] >= config.target_accuracy:
                    val, steps = mid, i + 1
                    break
        bar.close()
        if ctx.world_size > 1:
            dist.all_reduce(stats)
        seconds = time.perf_counter() - start
        loss_sum, correct, seen, bad = stats.tolist()
        _check_finite(bad, epoch, steps - 1, out)
        if val is None:  # rank 0's, so that every rank's history (and its target decisions) is the same
            val = _on_main(ctx, lambda: evaluate(model, splits.val, max(config.batch_size, 256), device, config.amp,
                                                 config.recon_weight, config.task))
        row = {
            "epoch": epoch + 1,
            "steps": steps,  # of the epoch's num_batches: fewer when a mid-epoch validation reached the target
            "lr": lr,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }
        history.append(row)
        _log.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_acc %.4f  %.0f img/s",
            epoch + 1, config.epochs, row["train_loss"], row["train_accuracy"], row["val_accuracy"], row["images_per_s"],
        )
        _check_weights(model, epoch, work, ctx)  # a diverged step never reaches a checkpoint
        error: Exception | None = None
        if ctx.main:
            try:
                save_checkpoint(work, model, optimizer, epoch + 1, history, extra={"device_record": record})
                write_history(work / HISTORY, history)
            except Exception as exc:  # every rank stops with rank 0
                error = exc
        _broadcast_error(ctx, error)

    test = evaluate(model, splits.test, max(config.batch_size, 256), device, config.amp, config.recon_weight,
                    config.task)
    trained = len(history)
    reached = _reached(config, history)
    _check_weights(model, trained - 1, work, ctx)

    def write_run() -> None:  # rank 0's
        # weights, history (rebuilt from the checkpoint's when resuming a killed run), metrics, then the record
        save_weights(model, work / WEIGHTS)
        write_history(work / HISTORY, history)
        write_metrics(work, {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "val_accuracy": history[-1]["val_accuracy"] if history else None,
            "epochs": trained,
            "max_epochs": config.epochs,
            "steps": sum(int(r.get("steps", num_batches)) for r in history),
            "target_accuracy": config.target_accuracy,
            "reached_target": reached if config.target_accuracy is not None else None,
            "train_seconds": sum(r["seconds"] for r in history),
            "train_images_per_s": (sum(r["images_per_s"] * r["seconds"] for r in history) / max(sum(r["seconds"] for r in history), 1e-9)),
            "test_images": len(splits.test),
            "device": str(device),
            "device_record": record,
            "world_size": ctx.world_size,
        })
        write_completion(work, trained, reached if config.target_accuracy is not None else None)
        if work != out:
            replace_dir(work, out)  # --force: the old run goes only now that the new one is whole
        _log.info("test accuracy %.4f on %d images; run saved to %s", test["accuracy"], len(splits.test), out)

    _on_main(ctx, write_run)  # the other ranks wait until the run is whole, and stop with rank 0 when it fails
    return out


# --- the steps before the first epoch, in order -----------------------------------------------------------------


def _load_data(config: RunConfig, ctx: _Dist) -> Splits:
    """The data set: rank 0 loads it first (downloading what is missing), the other ranks once it has (from the files
    it left; ranks downloading into one folder at once would trample each other's files). A failure on rank 0 stops
    every rank."""

    def load() -> Splits:
        return load_dataset(config.dataset, config.data_root, config.download, config.val_fraction, split_seed=0,
                            limit=config.limit)

    splits = _first_on_main(ctx, load)  # the barrier: the others wait for rank 0's load
    return splits if splits is not None else load()


def _claim_run_dir(config: RunConfig, out: Path, resume: bool, force: bool, ctx: _Dist, stack: ExitStack
                   ) -> tuple[Path, bool]:
    """Rank 0 locks ``out`` for the rest of the run and checks it (:func:`~.runs.prepare_run_dir`); every rank gets
    its verdict. Returns the folder rank 0 writes into and whether a checkpoint is there (False on other ranks)."""
    has_checkpoint, work = False, out
    error: BaseException | None = None
    if ctx.main:
        try:
            stack.enter_context(folder_lock(out))
            work, has_checkpoint = prepare_run_dir(config, out, resume, force)
        except CapsprobeError as exc:
            error = exc
    _broadcast_error(ctx, error)
    return work, has_checkpoint


def _resume(config: RunConfig, out: Path, resume: bool, has_checkpoint: bool, model: nn.Module,
            optimizer: torch.optim.Optimizer, ctx: _Dist, record: dict[str, Any] | None = None
            ) -> tuple[int, list[dict]] | None:
    """The epoch to start from and the history so far: ``(0, [])`` without a checkpoint, else the checkpoint's, its
    weights and optimiser state loaded. None when the run is already complete (nothing is to be done or written).
    With ``record`` (this session's :func:`~capsprobe.runtime.device_record`), a run to be continued on another kind
    of device or in another precision than its checkpoint's is refused (:func:`~.runs.device_change`)."""
    start_epoch: int = 0
    history: list[dict] = []
    if resume and ctx.world_size > 1:
        has_checkpoint = bool(_broadcast_value(ctx, has_checkpoint))
    if has_checkpoint:
        ckpt = load_checkpoint(out)
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        start_epoch, history = ckpt.epoch, ckpt.history
        reached = _reached(config, history)
        if start_epoch > config.epochs and not reached:
            raise RunError(f"{out} has trained {start_epoch} epochs, more than the {config.epochs} asked for; set "
                           f"{option('epochs')} to at least {start_epoch}")
        # rank 0 judges completeness before anyone writes, and every rank follows its verdict
        done = ctx.main and (start_epoch == config.epochs or reached) and completion_problem(out, config) is None
        if ctx.world_size > 1:
            done = bool(_broadcast_value(ctx, done))
        if done:
            _log.info("%s is already complete (%d epochs)", out, start_epoch)
            return None
        change = device_change(ckpt.extra.get("device_record"), record, out) if record is not None else None
        if change is not None:
            raise RunError(change)
        _log.info("resuming %s after epoch %d", out, start_epoch)
    return start_epoch, history


def _sample_batch(task: TrainingTask, split: ImageSplit, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """Two of the split's images as one evaluation batch of ``task`` (of two classes where the split has two: a
    two-digit task pairs them), for :func:`data_parallel`'s search of the parameters no loss reaches."""
    others = (split.labels != split.labels[0]).nonzero().flatten()
    index = torch.tensor([0, int(others[0]) if len(others) else min(1, len(split) - 1)])
    return next(iter(task.batches(split.subset(index).centre_cropped(), 2, device, train=False)))


# --- the augmentation of training batches ---------------------------------------------------------------------

_AUGMENT_STREAM = 0xA06  # keeps the augmentation's seeds apart from any other stream mixed from the same numbers


def augment_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of one training batch's augmentation: the run's ``seed``, the epoch, the rank and the batch's index,
    mixed by numpy's :class:`~numpy.random.SeedSequence` (O'Neill 2015's seed_seq hashing), so neighbouring numbers
    give unrelated streams and a resumed epoch draws what an uninterrupted one did. Below ``2**63``."""
    state = numpy.random.SeedSequence((_AUGMENT_STREAM, int(seed), int(epoch), int(rank), int(batch)))
    return int(state.generate_state(1, numpy.uint64)[0]) >> 1


def augment_batch(images: Tensor, augment: str, seed: int) -> Transformed:
    """``images (B, C, H, W)`` augmented as ``augment`` (:data:`~.runs.AUGMENTS`) on their device, deterministic
    given ``seed``: the same seed gives the same batch.

    ``rotate``: each image turned about its centre by its own angle, uniform in [-180, 180) degrees, the full circle
    (an upside-down image is a training image), in the suite's convention (:func:`~capsprobe.transforms.rotation_matrix`,
    counter-clockwise on screen; bilinear, zero fill); ``params["angle"]`` holds the angles. ``affine``: the suite's
    affine transform at strength 1 (:func:`~capsprobe.transforms.affine`, its own sampler: rotation in [-20, 20]
    degrees, shear in [-0.2, 0.2], scale in [0.8, 1.2] per axis, shift in [-4, 4] px per axis). ``none``: the images.
    """
    if augment == "none":
        return Transformed(images)
    if augment == "affine":
        return affine(images, 1.0, seed=seed)
    if augment != "rotate":
        raise InvalidInputError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTS)}")
    n, (h, w) = images.shape[0], images.shape[-2:]
    angles = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 360 - 180
    linear = rotation_matrix(angles, snap=True)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    matrix = torch.zeros(n, 3, 3, dtype=torch.float64)
    matrix[:, :2, :2] = linear
    matrix[:, :2, 2] = centre - linear @ centre  # about the centre, as the suite's rotate
    matrix[:, 2, 2] = 1
    matrix = matrix.float().to(images.device)
    return Transformed(apply_matrix(images, matrix), matrix, {"angle": angles})


def _augmented(batches: Batches, augment: str, seed: int, epoch: int, rank: int) -> Batches:
    """The training ``batches`` (already shifted) augmented by :func:`augment_batch`, batch ``i`` from
    :func:`augment_seed` ``(seed, epoch, rank, i)``; a task's ``parts`` (MultiMNIST's single digits, the
    reconstruction targets) get their image's warp."""
    for i, (images, labels, parts) in enumerate(batches):
        out = augment_batch(images, augment, augment_seed(seed, epoch, rank, i))
        if parts is not None and out.matrix is not None:
            parts = apply_matrix(parts.flatten(1, 2), out.matrix).view_as(parts)
        yield out.images, labels, parts


# --- the objective and one step ---------------------------------------------------------------------------------


class Objective(nn.Module):
    """``forward(images, labels, parts=None) -> (loss, scores)`` for any model and task; the unit DDP wraps.

    The loss is the task's (:mod:`capsprobe.training.objectives`), which asks the model's adapter what it can do: a
    model with poses gets the margin loss plus the masked reconstruction, any other cross entropy.

    Args:
        model: the model.
        recon_weight: weight of the reconstruction loss for a model with a decoder (0 disables it).
        task: a registered task name.
        channels_last: put the model's 4-D weights and every batch in the NHWC memory format (the values are
            the same to rounding; convolutions on CUDA tensor cores run faster in it).
    """

    def __init__(self, model: nn.Module, recon_weight: float = 0.0005, task: str = "classify",
                 channels_last: bool = False):
        super().__init__()
        self.adapter = adapt(model)
        self.recon_weight = recon_weight
        self.task = get_training_task(task)
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor, labels: Tensor, parts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.task.loss(self.adapter, images, labels, parts, self.recon_weight)


def data_parallel(objective: nn.Module, sample: tuple[Tensor, Tensor, Tensor | None], device: torch.device,
                  plain: nn.Module | None = None) -> nn.Module:
    """``objective`` in DistributedDataParallel (the process group must be initialised), told to look for unused
    parameters only when it has some.

    A parameter that no loss reaches gets no gradient, and DDP's reducer then waits for it forever ("Expected to
    have finished reduction in the prior iteration"): a decoder when ``recon_weight`` is 0, ``backbone_head_self``'s
    vote matrices (they feed only the poses, which no loss reads). They stay in the model (its weights file and the
    probe's poses keep them), and DDP is told ``find_unused_parameters=True``, which costs a traversal of the
    autograd graph after every forward, only when one forward and backward on ``sample`` finds such a parameter;
    every rank follows the same answer (an all-reduce).

    Args:
        objective: what is trained (an :class:`Objective`, or its :func:`compile_objective` form).
        sample: one small training batch ``(images, labels, parts)`` on ``device``; the model's buffers (batch norm
            statistics) and the RNG are left as they were.
        device: the rank's device.
        plain: the uncompiled :class:`Objective` when ``objective`` is compiled (the search runs on it).
    """
    unused = _unused_parameters(plain if plain is not None else objective, sample)
    flag = torch.tensor([float(bool(unused))], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item():
        _log.info("no loss reaches %d parameter tensors (%s): DDP looks for unused parameters at every step",
                  len(unused), ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else ""))
    return nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=bool(flag.item()))


def _unused_parameters(objective: nn.Module, sample: tuple[Tensor, Tensor, Tensor | None]) -> list[str]:
    """The trainable parameters of ``objective`` that the loss on ``sample`` does not depend on (train mode; buffers,
    RNG and the mode restored, no gradient stored)."""
    params = [(name, p) for name, p in objective.named_parameters() if p.requires_grad]
    buffers = {name: b.clone() for name, b in objective.named_buffers()}
    was_training = objective.training
    cuda = sorted({p.device for _, p in params if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):
        objective.train()
        loss, _ = objective(*sample)
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    objective.train(was_training)
    with torch.no_grad():
        for name, b in objective.named_buffers():
            b.copy_(buffers[name])
    return [name for (name, _), g in zip(params, grads) if g is None]


def compile_objective(objective: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(objective)`` when ``enabled`` (the compiled module shares the objective's parameters)."""
    return torch.compile(objective) if enabled else objective  # type: ignore[return-value]


def train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    labels: Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    parts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimiser step (autocast forward, scaled backward, step); returns ``(loss, scores)``."""
    with autocast_context(device, dtype):
        loss, scores = objective(images, labels, parts)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, scores


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: ImageSplit,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = True,
    recon_weight: float = 0.0005,
    task: str = "classify",
) -> dict[str, float]:
    """Accuracy and mean training loss of ``model`` on ``split`` (eval mode, no augmentation; MultiMNIST: a
    fixed draw of pairs, accuracy as the task's ``hits``)."""
    device = torch.device(device)
    objective = Objective(unwrap(model), recon_weight, task)
    task_ = objective.task
    was_training = objective.training
    objective.eval()
    dtype = autocast_dtype(device, amp)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels, parts in task_.batches(split, batch_size, device, train=False):
        with autocast_context(device, dtype):
            loss, scores = objective(images, labels, parts)
        loss_sum += loss.double() * labels.shape[0]
        correct += task_.hits(scores, labels).sum()
        seen += labels.shape[0]
    objective.train(was_training)
    n = max(seen, 1)
    return {"accuracy": correct.item() / n, "loss": loss_sum.item() / n}


# --- checks -----------------------------------------------------------------------------------------------------


def _reached(config: RunConfig, history: list[dict]) -> bool:
    """The run has a target accuracy and its last validated epoch reached it."""
    return (config.target_accuracy is not None and bool(history)
            and float(history[-1]["val_accuracy"]) >= config.target_accuracy)


def _check_finite(bad: float, epoch: int, batch: int, out: Path) -> None:
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss in epoch {epoch + 1} (by batch {batch + 1}); training stopped and nothing was "
            f"saved after epoch {epoch}: the last good checkpoint stays in {out / CHECKPOINT.parent} (lower {option('lr')}?)"
        )


def _check_weights(model: nn.Module, epoch: int, out: Path, ctx: _Dist) -> None:
    """Rank 0 checks the weights it is about to save, and every rank follows its verdict (raises the same error)."""
    if not _on_main(ctx, lambda: all(bool(torch.isfinite(p).all()) for p in model.parameters())):
        raise NonFiniteLossError(
            f"weights are not finite after epoch {epoch + 1} (the last step diverged); nothing of it was saved: the "
            f"last good checkpoint stays in {out / CHECKPOINT.parent} (lower {option('lr')}?)"
        )


# --- distributed: one process per rank under torchrun -----------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # True when fit() created the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_spec: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owned = True
    return _Dist(rank=rank, world_size=world_size, local_rank=local_rank, owned=owned)


def _broadcast_error(ctx: _Dist, error: BaseException | None) -> None:
    """Raise on every rank when rank 0 failed a check (so no rank waits forever)."""
    if ctx.world_size == 1:
        if error is not None:
            raise error
        return
    message = [f"{type(error).__name__}: {error}" if error is not None else None]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RunError(f"rank 0 stopped: {message[0]}")


def _broadcast_value(ctx: _Dist, value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _on_main(ctx: _Dist, compute: Callable[[], _T]) -> _T:
    """``compute()`` on rank 0 alone, its result on every rank: a decision taken once for all (a rank deciding from
    its own copy, whose batch norm statistics differ, could stop while the others wait for it forever). A failure on
    rank 0 raises on every rank."""
    if ctx.world_size == 1:
        return compute()
    return _broadcast_value(ctx, _first_on_main(ctx, compute))


def _first_on_main(ctx: _Dist, compute: Callable[[], _T]) -> _T | None:
    """``compute()`` on rank 0 while the other ranks wait (None there); a failure on rank 0 raises on every rank."""
    if ctx.world_size == 1:
        return compute()
    result: _T | None = None
    error: Exception | None = None
    if ctx.main:
        try:
            result = compute()
        except Exception as exc:
            error = exc
    _broadcast_error(ctx, error)
    return result
