"""run_probe(): trained models over transformed data -> one tidy metrics table and one per-image table.

For every run the clean pass is computed once; then, for every (transformation, magnitude), each batch is
transformed on the device (per-image seeds from the image id, so batching does not change the result),
evaluated under ``torch.inference_mode`` (and autocast on CUDA), and reduced to per-image values on the
host. The metrics of :mod:`capsprobe.metrics` are computed from those values, each with a 95% bootstrap
interval over images.

Tidy metrics (one row per run x transformation x magnitude x metric)::

    model run seed transform kind magnitude magnitude_value metric value ci_low ci_high n_images

Metrics: ``accuracy``, ``consistency``, ``confidence_drop``, ``true_class_score``, ``invariance_error``,
``equivariance_error`` (full representation), ``equivariance_error_pca16`` (every model at 16-D),
``scramble_auroc`` (semantic conditions); CapsNet only: ``invariance_error_pose`` and
``equivariance_error_pose`` (the true class's 16-D pose) and ``recon_equivariance_error``.

Per-image rows: ``model run seed transform kind magnitude image_id label prediction true_score confidence``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import metrics as M
from .data import ImageSplit, iterate_batches
from .models import CapsNet, capsule_lengths, is_capsnet, model_outputs, unwrap
from .runs import Run
from .train import autocast_context, autocast_dtype, resolve_device
from .transforms import Transform, magnitude_label, magnitude_value, resolve

__all__ = [
    "IMAGE_COLUMNS",
    "METRIC_COLUMNS",
    "ProbeResult",
    "evaluate_multimnist",
    "image_seeds",
    "perturb",
    "pose_sweep",
    "reconstruction_examples",
    "run_probe",
]

_log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "model", "run", "seed", "transform", "kind", "magnitude", "magnitude_value",
    "metric", "value", "ci_low", "ci_high", "n_images",
]
IMAGE_COLUMNS = [
    "model", "run", "seed", "transform", "kind", "magnitude", "image_id", "label", "prediction", "true_score",
    "confidence",
]


@dataclass
class ProbeResult:
    """Output of :func:`run_probe`.

    Attributes:
        metrics: tidy metrics with 95% bootstrap intervals (:data:`METRIC_COLUMNS`).
        images: one row per image and condition (:data:`IMAGE_COLUMNS`).
        timing: seconds spent transforming, in forward passes, in the clean pass, in metrics, in all.
    """

    metrics: pd.DataFrame
    images: pd.DataFrame
    timing: dict[str, float] = field(default_factory=dict)


def image_seeds(seed: int, image_ids: Tensor) -> Tensor:
    """Per-image transformation seeds ``(B,)`` from a base seed and image ids."""
    return image_ids.long() + int(seed) * 1_000_003


@dataclass
class _Pass:
    scores: np.ndarray  # (N, K)
    rep: np.ndarray  # (N, F)
    pose_true: np.ndarray | None  # (N, 16) CapsNet: the true class's pose
    recon_terms: tuple[np.ndarray, np.ndarray] | None  # CapsNet: per-image reconstruction equivariance terms


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def add(self, key: str, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[key] = self.seconds.get(key, 0.0) + now - start
        return now


def _run_pass(
    model: torch.nn.Module,
    split: ImageSplit,
    transform: Transform | None,
    magnitude: Any,
    seed: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    timer: _Timer,
    clean_recon: Tensor | None,
    timer_key: str,
) -> tuple[_Pass, Tensor | None]:
    capsnet: CapsNet | None = unwrap(model) if is_capsnet(model) else None
    scores, reps, poses_true, recon_num, recon_den, recons = [], [], [], [], [], []
    start_id = 0
    with torch.inference_mode():
        for images, labels in iterate_batches(split, batch_size, device=device):
            ids = torch.arange(start_id, start_id + labels.shape[0])
            seeds = image_seeds(seed, ids)
            start_id += labels.shape[0]
            t0 = time.perf_counter()
            if transform is not None:
                images = transform(images, magnitude, seeds).images
                t0 = timer.add("transform", t0)
            with autocast_context(device, dtype):
                out = model_outputs(model, images)
                if capsnet is not None and capsnet.decoder is not None:
                    recon = capsnet.decode(out.poses, labels).float()  # (B, C, H, W), masked by the true label
            scores.append(out.scores.float().cpu())
            reps.append(out.representation.float().cpu())
            if capsnet is not None:
                poses_true.append(out.poses[torch.arange(labels.shape[0], device=device), labels].float().cpu())
                if capsnet.decoder is not None:
                    if clean_recon is None:  # the clean pass keeps its reconstructions for the others
                        recons.append(recon.cpu())
                    else:
                        target = clean_recon[ids].to(device)
                        if transform is not None:
                            target = transform(target, magnitude, seeds).images
                        num, den = M.reconstruction_equivariance_terms(recon, target)
                        recon_num.append(num)
                        recon_den.append(den)
            timer.add(timer_key, t0)
    result = _Pass(
        scores=torch.cat(scores).numpy(),
        rep=torch.cat(reps).numpy(),
        pose_true=torch.cat(poses_true).numpy() if poses_true else None,
        recon_terms=(np.concatenate(recon_num), np.concatenate(recon_den)) if recon_num else None,
    )
    return result, (torch.cat(recons) if recons else None)


def _row(base: dict[str, Any], metric: str, value: float, ci: tuple[float, float], n: int) -> dict[str, Any]:
    return {**base, "metric": metric, "value": value, "ci_low": ci[0], "ci_high": ci[1], "n_images": n}


def _condition_metrics(
    base: dict[str, Any], clean: _Pass, moved: _Pass, labels: np.ndarray, semantic: bool, seed: int, n_boot: int
) -> list[dict[str, Any]]:
    n = len(labels)
    pred0, pred = clean.scores.argmax(1), moved.scores.argmax(1)
    conf0, conf = clean.scores.max(1), moved.scores.max(1)
    true_scores = moved.scores[np.arange(n), labels]
    rows = [
        _row(base, "accuracy", M.accuracy(pred, labels), M.bootstrap_mean_ci(pred == labels, n_boot, seed), n),
        _row(base, "consistency", M.consistency(pred, pred0), M.bootstrap_mean_ci(pred == pred0, n_boot, seed), n),
        _row(base, "confidence_drop", M.confidence_drop(conf0, conf), M.bootstrap_mean_ci(conf0 - conf, n_boot, seed), n),
        _row(base, "true_class_score", M.true_class_score(moved.scores, labels), M.bootstrap_mean_ci(true_scores, n_boot, seed), n),
    ]

    def invariance(name: str, a: np.ndarray, b: np.ndarray) -> None:
        num, den = M.invariance_terms(a, b)
        rows.append(_row(base, name, M.invariance_error(a, b), M.bootstrap_ratio_ci(num, den, n_boot, seed), n))

    def equivariance(name: str, a: np.ndarray, b: np.ndarray) -> None:
        residual, total = M.equivariance_terms(a, b, seed)
        value = M.equivariance_ratio(residual, total)
        rows.append(_row(base, name, value, M.bootstrap_ratio_ci(residual, total, n_boot, seed), len(residual)))

    invariance("invariance_error", clean.rep, moved.rep)
    equivariance("equivariance_error", clean.rep, moved.rep)
    equivariance("equivariance_error_pca16", *M.pca_project(clean.rep, moved.rep, 16))
    if clean.pose_true is not None:
        invariance("invariance_error_pose", clean.pose_true, moved.pose_true)
        equivariance("equivariance_error_pose", clean.pose_true, moved.pose_true)
    if moved.recon_terms is not None:
        num, den = moved.recon_terms
        rows.append(_row(base, "recon_equivariance_error", float(num.sum() / max(den.sum(), 1e-12)),
                         M.bootstrap_ratio_ci(num, den, n_boot, seed), n))
    if semantic:
        rows.append(_row(base, "scramble_auroc", M.scramble_auroc(conf0, conf),
                         M.bootstrap_auroc_ci(conf0, conf, n_boot, seed), n))
    return rows


def run_probe(
    runs: Sequence[Run],
    split: ImageSplit,
    transforms: Sequence[str | Transform] = ("all",),
    magnitudes: Mapping[str, Sequence[Any]] | None = None,
    *,
    batch_size: int = 256,
    device: str = "auto",
    amp: bool = True,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
) -> ProbeResult:
    """Evaluate every run on every transformed version of ``split``.

    Args:
        runs: loaded runs (:func:`capsprobe.runs.load_run`), all for ``split``'s input shape.
        split: the images to probe (uint8 ``(N, C, H, W)`` and labels), usually a test split.
        transforms: suite names (``all`` for the whole suite) or :class:`Transform` objects.
        magnitudes: per transformation name, the magnitudes to use instead of its default grid (the identity
            magnitude is always added).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``...
        amp: autocast on CUDA.
        seed: base seed of the random transformations (per image: ``seed * 1000003 + image id``), the
            equivariance fit/held-out split and the bootstrap.
        n_boot: bootstrap resamples for the 95% intervals.
        progress: show a progress bar.

    Returns:
        :class:`ProbeResult` with the tidy metrics and the per-image table.
    """
    from tqdm.auto import tqdm

    suite = [t if isinstance(t, Transform) else None for t in transforms]
    names = [t for t in transforms if not isinstance(t, Transform)]
    chosen = [t for t in suite if t is not None] + (resolve(names) if names else [])
    magnitudes = dict(magnitudes or {})
    unknown = sorted(set(magnitudes) - {t.name for t in chosen})
    if unknown:
        raise ValueError(f"magnitudes given for transformations not probed: {', '.join(unknown)}")
    grid = {}
    for t in chosen:
        values = [t.validate(m) for m in magnitudes.get(t.name, t.grid)]
        # the identity anchors every curve and the clean accuracy: always probed, first if it was not asked for
        grid[t.name] = values if t.identity in values else [t.identity, *values]
    if len(split) < 4:
        raise ValueError(f"the probe needs at least 4 images, got {len(split)}")
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, amp)
    timer = _Timer(dev)
    labels = split.labels.numpy()
    metric_rows: list[dict[str, Any]] = []
    image_frames: list[pd.DataFrame] = []
    total_start = time.perf_counter()
    conditions = sum(len(v) for v in grid.values())
    bar = tqdm(total=len(runs) * (conditions + 1), desc="probe", disable=not progress, dynamic_ncols=True)
    for run in runs:
        model = run.model.to(dev).eval()
        ident = {"model": run.config.model, "run": run.name, "seed": run.config.seed}
        clean, clean_recon = _run_pass(model, split, None, None, seed, batch_size, dev, dtype, timer, None, "clean")
        bar.update(1)
        for t in chosen:
            for m in grid[t.name]:
                bar.set_postfix_str(f"{run.name} {t.name} {magnitude_label(m)}")
                moved, _ = _run_pass(model, split, t, m, seed, batch_size, dev, dtype, timer, clean_recon, "forward")
                base = {**ident, "transform": t.name, "kind": t.kind_at(m), "magnitude": magnitude_label(m),
                        "magnitude_value": magnitude_value(t, m)}
                t0 = time.perf_counter()
                metric_rows += _condition_metrics(base, clean, moved, labels, t.kind_at(m) == "semantic" and m != t.identity,
                                                  seed, n_boot)
                timer.add("metrics", t0)
                image_frames.append(pd.DataFrame({
                    **{k: v for k, v in base.items() if k != "magnitude_value"},
                    "image_id": np.arange(len(labels)),
                    "label": labels,
                    "prediction": moved.scores.argmax(1),
                    "true_score": moved.scores[np.arange(len(labels)), labels],
                    "confidence": moved.scores.max(1),
                }))
                bar.update(1)
    bar.close()
    timing = dict(timer.seconds)
    timing["total"] = time.perf_counter() - total_start
    timing["images"] = float(len(split))
    metrics_df = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    images_df = pd.concat(image_frames, ignore_index=True)[IMAGE_COLUMNS] if image_frames else pd.DataFrame(columns=IMAGE_COLUMNS)
    return ProbeResult(metrics=metrics_df, images=images_df, timing=timing)


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
) -> tuple[ProbeResult, dict[str, Any]]:
    """Load runs and data, check that they fit together, and probe: what ``capsprobe perturb`` does.

    Every check (transformation names, magnitude ranges, run directories, input shapes, data set) happens
    before any computation.

    Returns:
        The probe result and a manifest (runs, data, transformations, magnitudes, seed, versions).

    Raises:
        UnknownTransformError, ValueError: bad transformation or magnitude.
        RunError: a run directory is missing or unreadable, or runs need different input shapes.
    """
    from .data import get_spec, load_dataset
    from .runs import RunError, library_versions, load_run
    from .transforms import parse_magnitude_specs

    chosen = resolve(list(transforms))
    mags = parse_magnitude_specs(list(magnitude_specs), chosen)
    if not run_dirs:
        raise RunError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    shapes = {r.name: (r.input["in_chans"], r.input["img_size"], r.input["num_classes"]) for r in runs}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} ({c}x{s}x{s}, {k} classes)" for n, (c, s, k) in shapes.items())
        raise RunError(f"runs were trained on incompatible input shapes: {listed}")
    if dataset is None:
        trained_on = sorted({r.config.dataset for r in runs})
        if len(trained_on) > 1:
            raise RunError(f"runs were trained on different data sets ({', '.join(trained_on)}); choose one with --dataset")
        dataset = trained_on[0]
        data_root = data_root or runs[0].config.data_root
    spec = get_spec(dataset)
    c, s, k = next(iter(shapes.values()))
    if (spec.in_chans, spec.img_size, spec.num_classes) != (c, s, k):
        raise RunError(f"dataset {dataset} is {spec.in_chans}x{spec.img_size}x{spec.img_size} with {spec.num_classes} "
                       f"classes, the runs expect {c}x{s}x{s} with {k}")
    if split not in ("test", "val"):
        raise ValueError(f"split must be test or val, got {split!r}")
    splits = load_dataset(dataset, data_root, download, limit=limit)
    images = splits.test if split == "test" else splits.val
    result = run_probe(runs, images, chosen, mags, batch_size=batch_size, device=device, seed=seed,
                       n_boot=n_boot, progress=progress)
    manifest = {
        "runs": [{"name": r.name, "path": str(r.path), "model": r.config.model, "seed": r.config.seed,
                  "dataset": r.config.dataset, "test_accuracy": r.metrics.get("test_accuracy")} for r in runs],
        "dataset": dataset,
        "data_root": data_root,
        "split": split,
        "images": len(images),
        "transforms": {name: list(dict.fromkeys(group["magnitude"]))
                       for name, group in result.metrics.groupby("transform", sort=False)},
        "seed": seed,
        "bootstrap": n_boot,
        "device": str(resolve_device(device)),
        "versions": library_versions(),
    }
    return result, manifest


def reconstruction_examples(
    run: Run,
    split: ImageSplit,
    conditions: Sequence[tuple[Transform, Any]],
    n: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> tuple[np.ndarray, list[str]]:
    """Images, transformed images and the CapsNet's reconstructions from the transformed images' poses.

    One example per class while there are classes (the first of each in ``split``), ``n`` in all. The
    decoder is masked by the true label, so the row shows what the true class's pose says about the
    transformed digit.

    Returns:
        ``(1 + 2 T, n, C, H, W)`` in [0, 1] (row 0 the clean images, then for each condition the transformed
        images and their reconstructions) and the ``1 + 2 T`` row labels.
    """
    capsnet = unwrap(run.model)
    if not isinstance(capsnet, CapsNet) or capsnet.decoder is None:
        raise ValueError(f"{run.name} is not a CapsNet with a decoder")
    dev = resolve_device(device)
    labels = split.labels.numpy()
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:n]
    picks += [i for i in range(len(labels)) if i not in picks][: n - len(picks)]
    index = torch.tensor(picks)
    x = split.subset(index).float_images().to(dev)
    y = split.labels[index].to(dev)
    seeds = image_seeds(seed, index)
    model = capsnet.to(dev).eval()
    rows, names = [x.cpu()], ["image"]
    with torch.inference_mode():
        for t, m in conditions:
            moved = t(x, m, seeds).images
            recon = model.decode(model.forward_features(moved), y)
            rows += [moved.cpu(), recon.float().cpu()]
            names += [f"{t.name} {magnitude_label(m)}", "reconstruction"]
    return torch.stack(rows).clamp(0, 1).numpy(), names


def pose_sweep(
    run: Run,
    split: ImageSplit,
    index: int = 0,
    deltas: Sequence[float] = tuple(np.round(np.arange(-0.25, 0.2501, 0.05), 2)),
    device: str = "auto",
) -> np.ndarray:
    """The paper's Figure 4: each pose dimension of a digit's capsule moved by ``deltas`` and decoded.

    Returns:
        ``(D, len(deltas), C, H, W)`` in [0, 1]: row ``d`` adds each delta to dimension ``d`` of the true
        class's pose (16 x 11 with the defaults).
    """
    capsnet = unwrap(run.model)
    if not isinstance(capsnet, CapsNet) or capsnet.decoder is None:
        raise ValueError(f"{run.name} is not a CapsNet with a decoder")
    dev = resolve_device(device)
    model = capsnet.to(dev).eval()
    x = split.subset(torch.tensor([index])).float_images().to(dev)
    label = int(split.labels[index])
    with torch.inference_mode():
        poses = model.forward_features(x)  # (1, K, D)
        dim = poses.shape[-1]
        steps = torch.tensor(list(deltas), device=dev, dtype=poses.dtype)
        batch = poses.repeat(dim * len(steps), 1, 1)  # (D * S, K, D)
        rows = torch.arange(dim, device=dev).repeat_interleave(len(steps))
        batch[torch.arange(len(batch), device=dev), label, rows] += steps.repeat(dim)
        images = model.decode(batch, torch.full((len(batch),), label, device=dev))
    return images.float().cpu().reshape(dim, len(steps), *images.shape[1:]).clamp(0, 1).numpy()


def evaluate_multimnist(
    run: Run,
    split: ImageSplit,
    n: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    show: int = 8,
    device: str = "auto",
    batch_size: int = 256,
) -> tuple[pd.DataFrame, np.ndarray]:
    """MultiMNIST evaluation of a two-label CapsNet run (paper section 6).

    Draws ``n`` pairs (default: one per image of ``split``) and reports, with 95% bootstrap intervals:
    ``accuracy`` (the two longest capsules are the two digits), and ``recon_error`` (per digit, the squared
    error of the reconstruction from that digit's own capsule, the other masked, against the digit alone,
    divided by the digit's squared norm).

    Returns:
        Tidy metric rows (:data:`METRIC_COLUMNS`, transform ``multimnist``) and ``(show, 2, 3, H, W)`` RGB
        images: the input, and the two reconstructions drawn in red and green over it (the paper's Figure 5).
    """
    from .data import multimnist
    from .train import hits

    capsnet = unwrap(run.model)
    if not isinstance(capsnet, CapsNet) or capsnet.decoder is None:
        raise ValueError(f"{run.name} is not a CapsNet with a decoder")
    dev = resolve_device(device)
    model = capsnet.to(dev).eval()
    pairs = multimnist(split, n or len(split), seed=seed)
    correct, errors, overlays = [], [], []
    with torch.inference_mode():
        for start in range(0, len(pairs.labels), batch_size):
            sl = slice(start, start + batch_size)
            x, y, parts = pairs.images[sl].to(dev), pairs.labels[sl].to(dev), pairs.parts[sl].to(dev)
            poses = model.forward_features(x)
            correct.append(hits(capsule_lengths(poses), y).cpu())
            recons = torch.stack([model.decode(poses, y[:, k]) for k in range(2)], 1).float()  # (B, 2, C, H, W)
            err = (recons - parts).pow(2).flatten(2).sum(2) / parts.pow(2).flatten(2).sum(2).clamp(min=1e-6)
            errors.append(err.cpu())
            if sum(len(o) for o in overlays) < show:
                grey = x.mean(1, keepdim=True)  # (B, 1, H, W)
                red, green = recons[:, 0].mean(1, keepdim=True), recons[:, 1].mean(1, keepdim=True)
                painted = torch.cat([torch.maximum(0.5 * grey, red), torch.maximum(0.5 * grey, green), 0.5 * grey], 1)
                overlays.append(torch.stack([grey.expand(-1, 3, -1, -1), painted], 1).cpu())
    hit = torch.cat(correct).numpy().astype(float)
    err = torch.cat(errors).numpy().ravel()
    base = {"model": run.config.model, "run": run.name, "seed": run.config.seed, "transform": "multimnist",
            "kind": "semantic", "magnitude": "pairs", "magnitude_value": 0.0}
    rows = [_row(base, "accuracy", float(hit.mean()), M.bootstrap_mean_ci(hit, n_boot, seed), len(hit)),
            _row(base, "recon_error", float(err.mean()), M.bootstrap_mean_ci(err, n_boot, seed), len(hit))]
    shown = torch.cat(overlays)[:show].clamp(0, 1).numpy()
    return pd.DataFrame(rows, columns=METRIC_COLUMNS), shown
