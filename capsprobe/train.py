"""fit(): the training loop, with AMP on CUDA, atomic checkpoints, exact resume and DistributedDataParallel.

Objectives: CapsNet, the margin loss plus ``recon_weight`` x the decoder's sum of squared errors (decoder
masked by the true label); convnets, cross entropy. Optimiser: Adam with an exponential learning-rate decay
(``lr * lr_decay ** epoch``), as in the paper's official code.

Determinism: the initial weights come from ``seed``; every epoch reseeds the data order, the shift
augmentation and dropout from ``(seed, epoch, rank)``. Resuming from the checkpoint of epoch ``e`` therefore
replays epochs ``e+1, ...`` exactly as an uninterrupted run would (on CPU; CUDA kernels may not be
bitwise reproducible).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (gloo
on CPU, nccl on CUDA), every rank trains on its shard of each epoch, statistics are all-reduced, and only
rank 0 writes files; the result is an ordinary run directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSplit, get_spec, iterate_batches, load_dataset, multimnist
from .models import capsule_lengths, is_capsnet, margin_loss, reconstruction_loss, unwrap
from .runs import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    WEIGHTS,
    RunConfig,
    RunError,
    atomic_write_text,
    build_model,
    library_versions,
    load_checkpoint,
    read_config,
    save_checkpoint,
    save_weights,
    write_history,
)

__all__ = [
    "NonFiniteLossError",
    "Objective",
    "RunExistsError",
    "autocast_context",
    "autocast_dtype",
    "evaluate",
    "fit",
    "hits",
    "resolve_device",
    "task_batches",
    "train_step",
]

_log = logging.getLogger(__name__)

TASKS = ("classify", "multimnist")

# keys that may change when a run is resumed: they do not change what is computed
_RESUMABLE_CHANGES = {"epochs", "device", "data_root", "download"}


class RunExistsError(RunError):
    """The output folder already holds a run, and neither resume nor force was asked for."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else ``cpu``; otherwise ``torch.device(spec)``."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on CUDA where supported, else fp16; None (off) on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


class Objective(nn.Module):
    """``forward(images, labels) -> (loss, scores)`` for any model; the unit DDP wraps.

    Args:
        model: a CapsNet or a convnet.
        recon_weight: CapsNet only: weight of the reconstruction loss (0 disables the decoder's loss).
    """

    def __init__(self, model: nn.Module, recon_weight: float = 0.0005):
        super().__init__()
        self.model = model
        self.recon_weight = recon_weight
        self.capsnet = is_capsnet(model)

    def forward(self, images: Tensor, labels: Tensor, parts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``labels`` ``(B,)``, or ``(B, 2)`` with ``parts (B, 2, C, H, W)`` for MultiMNIST pairs: the two-label
        margin loss, and each digit reconstructed from its own capsule against that digit alone."""
        if self.capsnet:
            poses = self.model.forward_features(images)  # (B, K, 16)
            lengths = capsule_lengths(poses.float())  # (B, K)
            pairs = labels.dim() == 2
            targets = F.one_hot(labels, lengths.shape[1]).sum(1).clamp(max=1) if pairs else labels
            loss = margin_loss(lengths, targets)
            if self.recon_weight > 0 and self.model.decoder is not None:
                if pairs:
                    for k in range(labels.shape[1]):
                        recon = self.model.decode(poses, labels[:, k]).float()  # the other capsules masked
                        loss = loss + reconstruction_loss(recon, parts[:, k].float(), self.recon_weight)
                else:
                    recon = self.model.decode(poses, labels).float()  # masked by the true label
                    loss = loss + reconstruction_loss(recon, images.float(), self.recon_weight)
            return loss, lengths
        if labels.dim() == 2:
            raise ValueError("two-label (MultiMNIST) training needs a CapsNet")
        logits = self.model(images).float()
        return F.cross_entropy(logits, labels), logits


def hits(scores: Tensor, labels: Tensor) -> Tensor:
    """Per sample, 1 when the prediction is right: ``argmax`` for ``(B,)`` labels; for ``(B, 2)`` label pairs,
    the two highest scores are exactly the two labels (the paper's MultiMNIST accuracy)."""
    if labels.dim() == 1:
        return (scores.argmax(1) == labels).long()
    top = scores.topk(labels.shape[1], dim=1).indices.sort(1).values
    return (top == labels.sort(1).values).all(1).long()


def task_batches(
    task: str, split: ImageSplit, batch_size: int, device: torch.device, *, train: bool, seed: int = 0,
    epoch: int = 0, max_shift: int = 0, rank: int = 0, world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(images, labels, parts)`` batches for a task: ``classify`` (``parts`` None; shift augmentation and
    shuffling when ``train``) or ``multimnist`` (pairs drawn anew every epoch when ``train``, a fixed draw
    from the split otherwise; as many pairs as the split has images)."""
    if task == "classify":
        for images, labels in iterate_batches(split, batch_size, device=device, shuffle=train, seed=seed, epoch=epoch,
                                              max_shift=max_shift if train else 0, rank=rank, world_size=world_size):
            yield images, labels, None
        return
    n = -(-len(split) // world_size)
    draw = _epoch_seed(seed, epoch, rank) if train else 12_345 + rank
    pairs = multimnist(split, n, seed=draw)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        yield (pairs.images[sl].to(device), pairs.labels[sl].to(device), pairs.parts[sl].to(device))


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
    fixed draw of pairs, accuracy as in :func:`hits`)."""
    device = torch.device(device)
    objective = Objective(unwrap(model), recon_weight)
    was_training = objective.training
    objective.eval()
    dtype = autocast_dtype(device, amp)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels, parts in task_batches(task, split, batch_size, device, train=False):
        with autocast_context(device, dtype):
            loss, scores = objective(images, labels, parts)
        loss_sum += loss.double() * labels.shape[0]
        correct += hits(scores, labels).sum()
        seen += labels.shape[0]
    objective.train(was_training)
    n = max(seen, 1)
    return {"accuracy": correct.item() / n, "loss": loss_sum.item() / n}


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


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def _prepare_run_dir(config: RunConfig, out: Path, resume: bool, force: bool) -> bool:
    """Check / clear the output folder. Returns True when a checkpoint is there to resume from."""
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and resume:
        if (out / CONFIG).is_file():
            stored, _ = read_config(out)
            diff = {
                k
                for k, v in config.to_dict().items()
                if k not in _RESUMABLE_CHANGES and stored.to_dict().get(k) != v
            }
            if diff:
                raise RunError(f"cannot resume {out}: its config differs in {sorted(diff)}; use --force to start over")
        return (out / CHECKPOINT).is_file()
    if occupied and not force:
        raise RunExistsError(f"{out} already exists and is not empty; use --resume to continue it or --force to replace it")
    if occupied and force:
        if not (out / CONFIG).is_file():
            raise RunExistsError(f"{out} is not a capsprobe run directory; refusing to clear it even with --force")
        for name in (CONFIG, WEIGHTS, HISTORY, METRICS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return False


def fit(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
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

    Returns:
        The run directory.

    Raises:
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``force`` is set.
        NonFiniteLossError: the loss became NaN or infinite; the last good checkpoint is kept.
        RunError, UnknownModelError, UnknownDatasetError, DatasetUnavailableError: bad input.
    """
    ctx = _init_distributed(config.device)
    try:
        return _fit(config, Path(out), resume, force, progress, on_batch, ctx)
    finally:
        if ctx.owned and dist.is_initialized():
            dist.destroy_process_group()


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


def _fit(
    config: RunConfig,
    out: Path,
    resume: bool,
    force: bool,
    progress: bool,
    on_batch: Callable[[int, int], None] | None,
    ctx: _Dist,
) -> Path:
    from tqdm.auto import tqdm

    device = resolve_device(config.device, ctx.local_rank)
    dtype = autocast_dtype(device, config.amp)
    spec = get_spec(config.dataset)
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of: {', '.join(TASKS)}")
    size = spec.img_size + 8 if config.task == "multimnist" else spec.img_size  # MultiMNIST: 4 px shifts each way
    input_spec = {"in_chans": spec.in_chans, "img_size": size, "num_classes": spec.num_classes}
    torch.manual_seed(config.seed)
    model = build_model(config, input_spec).to(device)  # an unknown model fails here, before any data is read
    splits = load_dataset(
        config.dataset, config.data_root, config.download, config.val_fraction, split_seed=0, limit=config.limit
    )
    # only now, with model and data known to be fine, is the output folder checked (and cleared on --force)
    has_checkpoint = False
    error: BaseException | None = None
    if ctx.main:
        try:
            has_checkpoint = _prepare_run_dir(config, out, resume, force)
        except RunError as exc:
            error = exc
    _broadcast_error(ctx, error)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, history = 0, []
    if resume and ctx.world_size > 1:
        has_checkpoint = bool(_broadcast_value(ctx, has_checkpoint))
    if has_checkpoint:
        ckpt = load_checkpoint(out)
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        start_epoch, history = ckpt.epoch, ckpt.history
        _log.info("resuming %s after epoch %d", out, start_epoch)
    if ctx.main:
        atomic_write_text(
            out / CONFIG,
            _json({"config": config.to_dict(), "input": input_spec, "seed": config.seed, "versions": library_versions(),
                   "world_size": ctx.world_size}),
        )
    if start_epoch >= config.epochs and (out / WEIGHTS).is_file():
        _log.info("%s is already complete (%d epochs)", out, start_epoch)
        return out

    objective: nn.Module = Objective(model, config.recon_weight)
    if ctx.world_size > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    per_rank = math.ceil(len(splits.train) / ctx.world_size)
    num_batches = math.ceil(per_rank / config.batch_size)

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(_epoch_seed(config.seed, epoch, ctx.rank))
        lr = config.lr * config.lr_decay**epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        objective.train()
        stats = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, correct, images, non-finite
        bar = tqdm(total=num_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.main),
                   leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        batches = task_batches(
            config.task, splits.train, config.batch_size, device, train=True, seed=config.seed, epoch=epoch,
            max_shift=config.max_shift, rank=ctx.rank, world_size=ctx.world_size,
        )
        for i, (images, labels, parts) in enumerate(batches):
            loss, scores = train_step(objective, optimizer, scaler, images, labels, device, dtype, parts)
            batch = labels.shape[0]
            stats[0] += loss.detach().double() * batch
            stats[1] += hits(scores.detach(), labels).sum()
            stats[2] += batch
            stats[3] += (~torch.isfinite(loss.detach())).double()
            if on_batch is not None:
                on_batch(epoch, i)
            if i % 10 == 0 or i == num_batches - 1:
                s = stats.tolist()  # one host sync every 10 steps
                _check_finite(s[3], epoch, i, out)
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{s[0] / s[2]:.4f}", acc=f"{s[1] / s[2]:.3f}", img_s=f"{s[2] * ctx.world_size / elapsed:.0f}")
            bar.update(1)
        bar.close()
        if ctx.world_size > 1:
            dist.all_reduce(stats)
        seconds = time.perf_counter() - start
        loss_sum, correct, seen, bad = stats.tolist()
        _check_finite(bad, epoch, num_batches - 1, out)
        val = evaluate(model, splits.val, max(config.batch_size, 256), device, config.amp, config.recon_weight,
                       config.task)
        row = {
            "epoch": epoch + 1,
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
        if ctx.main:
            save_checkpoint(out, model, optimizer, epoch + 1, history)
            write_history(out / HISTORY, history)

    test = evaluate(model, splits.test, max(config.batch_size, 256), device, config.amp, config.recon_weight,
                    config.task)
    if ctx.main:
        save_weights(model, out / WEIGHTS)
        metrics = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "val_accuracy": history[-1]["val_accuracy"] if history else None,
            "epochs": config.epochs,
            "train_seconds": sum(r["seconds"] for r in history),
            "train_images_per_s": (sum(r["images_per_s"] * r["seconds"] for r in history) / max(sum(r["seconds"] for r in history), 1e-9)),
            "test_images": len(splits.test),
            "device": str(device),
            "world_size": ctx.world_size,
        }
        atomic_write_text(out / METRICS, _json(metrics))
        _log.info("test accuracy %.4f on %d images; run saved to %s", test["accuracy"], len(splits.test), out)
    if ctx.world_size > 1:
        dist.barrier()
    return out


def _check_finite(bad: float, epoch: int, batch: int, out: Path) -> None:
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss in epoch {epoch + 1} (by batch {batch + 1}); training stopped and nothing was "
            f"saved after epoch {epoch}: the last good checkpoint stays in {out / CHECKPOINT.parent} (lower --lr?)"
        )


def _broadcast_value(ctx: _Dist, value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    """``config`` with the non-None ``changes`` applied."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
