"""run_probe(): models over transformed data -> tidy metrics, per-image rows, and everything the report draws.

For every model the clean pass is computed once; then, for every (transformation, magnitude), each batch is
transformed on the device (per-image seeds from the image id, so batching does not change the result),
evaluated under ``torch.inference_mode`` in float32 with TF32 off (autocast only when the plan's ``amp`` asks for
it: bf16 moves an invariance error by about half its interval), and reduced to per-image values on the host. Every
metric of the table in :mod:`capsprobe.metrics` that the model can feed is computed, each with a 95% bootstrap
interval over images. The probe also computes what the report's figures need (the overview
aggregates, ROC points, reconstructions and the pose sweep), so the report only reads files.

Tidy metrics (one row per model x transformation x magnitude x metric)::

    model run seed transform kind magnitude magnitude_value metric value ci_low ci_high n_images

Per-image rows: ``model run seed transform kind magnitude image_id label prediction true_score confidence
pixel_change`` (``|Tx - x|^2``). Fitted metrics record their ridge penalty (``penalty``, log10 relative to the fitting
rows) and whether it sat at an end of the grid (``at_edge``).

Models: anything :func:`capsprobe.models.adapt` accepts (a run's model, a timm model, a
:class:`~capsprobe.models.ModelAdapter` around your own module), given as a run, a :class:`Subject` or a module.

A model whose ``poses_trained`` is False (``backbone_head_self``: no training loss reaches its class poses, see
:mod:`capsprobe.models.heads`) has its pose metrics left out, and those of its representation (the flattened
poses): every metric that needs the representation or the poses, decodability, the Lie derivatives of the
representation and pose, and the composition grid. Its scores' metrics stay, and so does the Lie profile of its
backbone. Its manifest entry says ``poses_trained: false`` and the manifest's ``untrained_poses`` names it and what
was left out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import metrics as M
from ..data import ImageSplit, iterate_batches
from ..errors import InvalidInputError
from ..metrics.compare import comparison_tables
from ..metrics.confidence import fit_temperature, score_logits, scores_in_unit_interval
from ..models import Adapter, adapt
from ..models.adapter import check_outputs, unwrap
from ..runtime import (
    autocast_context,
    autocast_dtype,
    device_record,
    image_seeds,
    library_versions,
    resolve_device,
    tf32_off,
)
from ..transforms import (
    Transform,
    apply_matrix,
    magnitude_label,
    magnitude_value,
)
from ..transforms.gradient import PGD_STEPS
from .against import against
from .lie import COMPOSITION_ANGLES, LieResult, lie_manifest, lie_tables
from .pictures import SWEEP_DELTAS, pose_sweep, reconstruction_examples
from .plan import ProbePlan
from .schema import (
    IMAGE_COLUMNS,
    METRIC_COLUMNS,
    WORST_CASE_COLUMNS,
    WORST_CASE_PARAMS,
    ProbeResult,
    estimate_row,
    grid_array,
    identity_labels,
    metric_row,
)
from .subject import Subject, as_subject

__all__ = [
    "decodability_rows",
    "library_versions",
    "poses_trained",
    "run_probe",
    "transform_like",
    "untrained_poses_left_out",
    "validation_temperature",
]

_log = logging.getLogger(__name__)



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


_UNTRAINED_NEEDS = frozenset({"representation", "poses"})


def untrained_poses_left_out() -> list[str]:
    """What the probe leaves out for a model whose poses no training loss reaches (the manifest's
    ``untrained_poses``): the registered metrics that read the representation or the poses, and the rest by name."""
    return ([name for name, m in M.METRICS.items() if m.needs & _UNTRAINED_NEEDS] + ["decodability",
            "decodability_pose", "kept_variance_pca16", "lie: lee/elee of the representation and pose",
            "lie_layers: the representation", "composition"])


def poses_trained(model: Any) -> bool:
    """Whether the training loss reaches ``model``'s class poses and so its representation (a model's own
    ``poses_trained``; True when it says nothing, and for a model without poses)."""
    inner = unwrap(model)
    return not bool(getattr(inner, "has_poses", False)) or bool(getattr(inner, "poses_trained", True))


@dataclass(frozen=True)
class _Context:
    """What every pass of one probe shares: the plan, the device and autocast dtype it resolved to, the timer, and
    the surrogate model pgd-transfer attacks through (an adapter on the device, or None)."""

    plan: ProbePlan
    device: torch.device
    dtype: torch.dtype | None
    timer: _Timer
    surrogate: Adapter | None = None


@dataclass
class _Pass:
    scores: np.ndarray  # (N, K)
    rep: np.ndarray  # (N, F)
    pose_true: np.ndarray | None  # (N, D) models with poses: the true class's pose
    pixel_change: np.ndarray  # (N,) |Tx - x|^2
    recon_terms: tuple[np.ndarray, np.ndarray] | None  # models with a decoder: reconstruction equivariance terms
    fidelity_terms: tuple[np.ndarray, np.ndarray] | None  # models with a decoder: |decode(phi(Tx)) - Tx|^2, |Tx|^2
    worst: dict[str, np.ndarray] | None = None  # worst cases: the winning warp per image (WORST_CASE_COLUMNS)
    distance: np.ndarray | None = None  # models with a decoder: |x - decode(poses, predicted class)|_2 (DARCCC)


def _run_pass(
    adapter: Adapter,
    split: ImageSplit,
    transform: Transform | None,
    magnitude: Any,
    ctx: _Context,
    clean_recon: Tensor | None,
    timer_key: str,
) -> tuple[_Pass, Tensor | None]:
    seed, batch_size, device, dtype, timer = ctx.plan.seed, ctx.plan.batch_size, ctx.device, ctx.dtype, ctx.timer
    scores, reps, poses_true, changes, recons = [], [], [], [], []
    recon_terms, fidelity_terms, distances = [], [], []
    decodes = adapter.has_poses and adapter.can_decode
    # the reconstruction distance of the predicted class feeds detection_auroc: the clean pass and the worst cases only
    detects = decodes and (transform is None or transform.worst_case)
    worst: list[dict[str, Tensor]] = []
    start_id = 0
    with torch.inference_mode():
        for images, labels in iterate_batches(split, batch_size, device=device):
            ids = torch.arange(start_id, start_id + labels.shape[0])
            seeds = image_seeds(seed, ids)
            start_id += labels.shape[0]
            t0 = time.perf_counter()
            if transform is None:
                moved = None
            elif transform.worst_case:
                moved = transform(images, magnitude, seeds, against=against(
                    adapter, labels, ctx.surrogate, autocast=lambda: autocast_context(device, dtype),
                    steps=ctx.plan.attack_steps))
                if moved.params is not None:  # a spatial worst case names its winner
                    worst.append({k: v.cpu() for k, v in moved.params.items()})
            else:
                moved = transform(images, magnitude, seeds)
            if moved is not None:
                changes.append(((moved.images.float() - images.float()) ** 2).flatten(1).sum(1).cpu())
                images = moved.images
                t0 = timer.add("transform", t0)
            else:
                changes.append(torch.zeros(labels.shape[0]))
            with autocast_context(device, dtype):
                out = adapter.outputs(images)
                check_outputs(out, images.shape[0], labels)  # shapes the metrics index by, before they do
                if decodes:
                    recon = adapter.decode(out.poses, labels).float()  # (B, C, H, W), masked by the true label
                if detects:
                    guessed = adapter.decode(out.poses, out.scores.argmax(1)).float()  # what a detector can see
                    distances.append((guessed - images.float()).flatten(1).norm(dim=1).cpu())
            scores.append(out.scores.float().cpu())
            reps.append(out.representation.float().cpu())
            if out.poses is not None:
                poses_true.append(out.poses[torch.arange(labels.shape[0], device=device), labels].float().cpu())
            if decodes:
                fidelity_terms.append(M.reconstruction_terms(recon, images.float()))
                if clean_recon is None:  # the clean pass keeps its reconstructions for the others
                    recons.append(recon.cpu())
                elif transform is None or moved is None or not transform.worst_case or moved.matrix is not None:
                    # a pixel attack has no warp to move the clean reconstruction by: no equivariance target
                    target = clean_recon[ids].to(device)
                    if transform is not None:
                        target = transform_like(target, moved, transform, magnitude, seeds)
                    recon_terms.append(M.reconstruction_terms(recon, target))
            timer.add(timer_key, t0)
    def joined(terms: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray] | None:
        return (np.concatenate([t[0] for t in terms]), np.concatenate([t[1] for t in terms])) if terms else None

    result = _Pass(
        scores=torch.cat(scores).numpy(),
        rep=torch.cat(reps).numpy(),
        pose_true=torch.cat(poses_true).numpy() if poses_true else None,
        pixel_change=torch.cat(changes).double().numpy(),
        recon_terms=joined(recon_terms),
        fidelity_terms=joined(fidelity_terms),
        worst={column: torch.cat([w[key] for w in worst]).double().numpy()
               for key, column in WORST_CASE_PARAMS.items()} if worst else None,
        distance=torch.cat(distances).double().numpy() if distances else None,
    )
    return result, (torch.cat(recons) if recons else None)


def transform_like(images: Tensor, done: Any, transform: Transform, magnitude: Any, seeds: Tensor) -> Tensor:
    """Apply to ``images`` the transformation that produced ``done`` (a :class:`~capsprobe.transforms.Transformed`):
    its matrix when it has one (the input's own warp, never a new draw: affnist's shift depends on the ink box),
    else the same seeded transformation (jigsaw, swap: the permutation depends only on the seeds)."""
    if done.matrix is not None:
        return apply_matrix(images, done.matrix)
    return transform(images, magnitude, seeds).images


def _check_pass(subject: str, where: str, result: _Pass) -> None:
    """Every array the metrics read must be finite: a NaN would pass silently through ridge fits and ranks."""
    for what, values in (("class scores", result.scores), ("representations", result.rep),
                         ("poses", result.pose_true)):
        if values is not None and not np.isfinite(values).all():
            raise InvalidInputError(f"{subject}: the model's {what} on {where} are not finite (NaN or infinite); its "
                                    "weights may have diverged")


def decodability_rows(decode: pd.DataFrame, metrics: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """Per-transformation figures (decodability) as tidy rows with magnitude ``grid``, so seeds and models compare
    on them like on any condition. ``decode``: ``run transform decodability[_pose][_low|_high]`` (the probe's rows, or
    the same columns of ``overview.csv``)."""
    if decode.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    ident = metrics.drop_duplicates("run").set_index("run")[["model", "seed"]]
    rows = []
    for r in decode.to_dict("records"):
        for name in ("decodability", "decodability_pose"):
            if name in r and pd.notna(r[name]):
                base = {"model": ident.loc[r["run"], "model"], "run": r["run"], "seed": ident.loc[r["run"], "seed"],
                        "transform": r["transform"], "kind": "nuisance", "magnitude": "grid",
                        "magnitude_value": float("nan")}
                rows.append(metric_row(base, name, r[name], (r[f"{name}_low"], r[f"{name}_high"]), n_images))
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _decodable(t: Transform, magnitudes: Sequence[Any]) -> list[Any]:
    """The magnitudes decodability uses: the numeric nuisance ones (identity included), when there are at least 2."""
    if t.choices is not None:
        return []
    picked = [m for m in magnitudes if t.kind_at(m) == "nuisance"]
    return picked if len(set(picked)) >= 2 else []


def _probe_transform(adapter: Adapter, subject: Subject, split: ImageSplit, clean: _Pass, clean_recon: Any,
                     t: Transform, ctx: _Context, bar: Any, trained: bool = True,
                     ) -> tuple[list[dict[str, Any]], list[pd.DataFrame], dict[str, Any] | None]:
    """One transformation of one subject over the plan's magnitudes: the metric rows of every condition, the
    per-image rows, and the decodability row (None when fewer than two magnitudes can be decoded). Not
    ``trained`` (:func:`poses_trained`): the metrics of the representation and poses, decodability included, are
    left out."""
    seed, n_boot, timer = ctx.plan.seed, ctx.plan.bootstrap, ctx.timer
    magnitudes = ctx.plan.magnitudes[t.name]
    ident = subject.ident()
    labels = split.labels.numpy()
    metric_rows: list[dict[str, Any]] = []
    image_frames: list[pd.DataFrame] = []
    decoded: dict[str, Any] | None = None
    decodable = _decodable(t, magnitudes) if trained else []
    reps, poses = [], []
    for m in magnitudes:
        bar.set_postfix_str(f"{subject.name} {t.name} {magnitude_label(m)}")
        moved, _ = _run_pass(adapter, split, t, m, ctx, clean_recon, "forward")
        _check_pass(subject.name, f"{t.name} {magnitude_label(m)}", moved)
        base = {**ident, "transform": t.name, "kind": t.kind_at(m), "magnitude": magnitude_label(m),
                "magnitude_value": magnitude_value(t, m)}
        t0 = time.perf_counter()
        condition = M.Condition(
            labels=labels, clean_scores=clean.scores, scores=moved.scores, clean_rep=clean.rep, rep=moved.rep,
            clean_pose=clean.pose_true if trained else None, pose=moved.pose_true if trained else None,
            recon_terms=moved.recon_terms,
            fidelity_terms=moved.fidelity_terms, identity=m == t.identity,
            semantic=t.kind_at(m) == "semantic" and m != t.identity, clean_distance=clean.distance,
            distance=moved.distance, worst_case=t.worst_case, temperature=subject.temperature)
        for name, est in M.condition_metrics(condition, seed, n_boot).items():
            if trained or not M.METRICS[name].needs & _UNTRAINED_NEEDS:
                metric_rows.append(estimate_row(base, name, est))
        timer.add("metrics", t0)
        if m in decodable:
            reps.append(moved.rep)
            poses.append(moved.pose_true)
        image_frames.append(pd.DataFrame({
            **{k: v for k, v in base.items() if k != "magnitude_value"},
            "image_id": np.arange(len(labels)),
            "label": labels,
            "prediction": moved.scores.argmax(1),
            "true_score": moved.scores[np.arange(len(labels)), labels],
            "confidence": moved.scores.max(1),
            "pixel_change": moved.pixel_change,
            **(moved.worst or {}),
        }))
        bar.update(1)
    if decodable:
        t0 = time.perf_counter()
        values = [magnitude_value(t, m) for m in decodable]
        row = {"run": subject.name, "transform": t.name, "decodability_magnitudes": len(values)}
        ests = {"decodability": M.decodability_estimate(clean.rep, reps, values, seed, n_boot)}
        if clean.pose_true is not None:
            ests["decodability_pose"] = M.decodability_estimate(clean.pose_true, poses, values, seed, n_boot)
        for name, est in ests.items():
            row.update({name: est.value, f"{name}_low": est.ci[0], f"{name}_high": est.ci[1]})
        decoded = row
        timer.add("metrics", t0)
    return metric_rows, image_frames, decoded


@tf32_off()
def validation_temperature(model: Any, split: ImageSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                           amp: bool = False) -> float | None:
    """The temperature of ``model``'s class scores (:func:`capsprobe.metrics.fit_temperature` on their logs, the
    rule ``ece_scaled`` applies) fitted on ``split``: its validation split, images it was neither trained on nor is
    probed with (Guo et al. 2017). At the probe's precision (TF32 off; autocast where ``amp``), eval mode, no
    augmentation. None when its scores are not in [0, 1] (then no calibration metric is computed).

    Args:
        model: a run, :class:`Subject` or module.
        split: the images to fit on (at least 2).
    """
    if len(split) < 2:
        raise InvalidInputError(f"a temperature needs at least 2 validation images, got {len(split)}")
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, amp)
    adapter = adapt(as_subject(model).model).to(dev).eval()
    scores = []
    with torch.inference_mode():
        for images, labels in iterate_batches(split, batch_size, device=dev):
            with autocast_context(dev, dtype):
                out = adapter.outputs(images)
            check_outputs(out, images.shape[0], labels)
            scores.append(out.scores.float().cpu())
    s = torch.cat(scores).numpy()
    if not scores_in_unit_interval(s):
        return None
    return fit_temperature(score_logits(s), split.labels.numpy())


def _selectivity_rows(metrics_df: pd.DataFrame, selectivity: pd.DataFrame) -> pd.DataFrame:
    """``scramble_selectivity`` metric rows from the selectivity table, with each condition's identity columns."""
    keys = ["run", "transform", "magnitude"]
    bases = metrics_df.drop_duplicates(keys).set_index(keys)
    extra = []
    for r in selectivity.itertuples(index=False):
        b = bases.loc[(r.run, r.transform, r.magnitude)]
        base = {"model": b["model"], "run": r.run, "seed": b["seed"], "transform": r.transform, "kind": b["kind"],
                "magnitude": r.magnitude, "magnitude_value": b["magnitude_value"]}
        extra.append(metric_row(base, "scramble_selectivity", r.selectivity, (r.selectivity_low,
                                                                               r.selectivity_high), r.n_images))
    return pd.DataFrame(extra, columns=METRIC_COLUMNS)


@tf32_off()
def run_probe(
    subjects: Sequence[Any],
    split: ImageSplit,
    transforms: Sequence[str | Transform] = ("all",),
    magnitudes: Mapping[str, Sequence[Any]] | None = None,
    *,
    plan: ProbePlan | None = None,
    surrogate: Any = None,
    dataset: str | None = None,
    **options: Any,
) -> ProbeResult:
    """Evaluate every model on every transformed version of ``split``.

    Args:
        subjects: loaded runs (:func:`capsprobe.training.runs.load_run`), :class:`Subject` objects or bare modules, all
            for ``split``'s input shape (names must be unique).
        split: the images to probe (uint8 ``(N, C, H, W)`` and labels), usually a test split.
        transforms: suite names (``all`` for the whole suite) or :class:`Transform` objects (without ``plan``).
        magnitudes: per transformation name, the magnitudes to use instead of its default grid (the identity
            magnitude is always added; without ``plan``).
        plan: the whole probe as one :class:`~capsprobe.probe.plan.ProbePlan` (transformations, magnitudes, seed,
            bootstrap, reference, Lie probe, batch size, device); when given, ``transforms``, ``magnitudes`` and
            ``options`` must be left out. Its ``limit``, ``split`` and ``surrogate`` (a run directory) are for the
            caller that loads the data and runs: this function probes ``split`` and the ``surrogate`` model it is given.
        surrogate: the model ``pgd-transfer`` computes its attack on (a run, :class:`Subject` or module; usually a
            convnet trained like the others), or None.
        dataset: the name of the data set ``split`` comes from, for the manifest and the report's first lines
            (e.g. ``"mnist-sample"``); default: the one data set the loaded runs among ``subjects`` were trained on,
            else ``"unnamed"``.
        options: without ``plan``, its other fields, e.g. ``seed`` (base seed of the random transformations, per
            image ``seed * 1000003 + image id``, the equivariance split and the bootstrap), ``n_boot`` (or
            ``bootstrap``: resamples of the 95% intervals), ``batch_size``, ``device``, ``amp`` (autocast; off by
            default: float32 with TF32 off), ``progress``,
            ``reference`` (a ``model`` name the ablation table sets every other against), ``lie`` (also the
            Lie-derivative probe, :mod:`capsprobe.probe.lie`: the ``lie``, ``lie_layers`` and ``composition`` tables).

    Returns:
        :class:`ProbeResult`: tidy metrics, per-image rows, the ``overview`` and ``roc`` tables, and for models
        with a decoder the reconstruction and pose-sweep grids. Its manifest records the runs (names, models, seeds),
        the images, the transformations, the seed and resamples, the device and the library versions
        (:func:`library_versions`), so that a report made from Python states what one made by the CLI does.

    Raises:
        InvalidInputError: a bad plan, names that repeat, a reference that is not probed, a plan that does not fit the
            split's images (:meth:`ProbePlan.validate`), fewer than 4 images, pgd-transfer without a surrogate.
    """

    if plan is None:
        plan = ProbePlan.from_options(transforms, magnitudes, **options)
    elif options or magnitudes is not None or list(transforms) != ["all"]:
        raise InvalidInputError("give run_probe either a plan or its options (transforms, magnitudes, seed...), "
                                "not both")
    items = [as_subject(s) for s in subjects]
    subject_names = [s.name for s in items]
    if len(set(subject_names)) != len(subject_names):
        raise InvalidInputError(f"subject names must be unique, got {', '.join(subject_names)}")
    models_probed = list(dict.fromkeys(s.ident()["model"] for s in items))
    reference = plan.reference
    if reference is not None and reference not in models_probed:
        raise InvalidInputError(f"reference {reference!r} is none of the models probed ({', '.join(models_probed)})")
    chosen = plan.transforms
    if len(split) < 4:
        raise InvalidInputError(f"the probe needs at least 4 images, got {len(split)}")
    plan.validate(int(split.images.shape[1]), int(split.images.shape[-2]), int(split.images.shape[-1]))
    dev = resolve_device(plan.device)
    dtype = autocast_dtype(dev, plan.amp)
    if any(t.name == "pgd-transfer" for t in chosen) and surrogate is None:
        raise InvalidInputError("pgd-transfer needs a surrogate model to compute the attack on (--surrogate RUN)")
    other = adapt(as_subject(surrogate).model).to(dev).eval() if surrogate is not None else None
    timer = _Timer(dev)
    ctx = _Context(plan, dev, dtype, timer, other)
    seed, n_boot, grid = plan.seed, plan.bootstrap, plan.magnitudes
    metric_rows: list[dict[str, Any]] = []
    image_frames: list[pd.DataFrame] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    total_start = time.perf_counter()
    conditions = plan.conditions
    bar = tqdm(total=len(items) * (conditions + 1), desc="probe", disable=not plan.progress, dynamic_ncols=True)
    entries = []
    decode_rows: list[dict[str, Any]] = []
    lie_parts = []
    untrained: list[str] = []
    for subject in items:
        adapter = adapt(subject.model).to(dev).eval()
        entry = subject.manifest_entry(adapter)
        trained = poses_trained(adapter)
        if adapter.has_poses:
            entry["poses_trained"] = trained
        if not trained:
            untrained.append(subject.name)
        clean, clean_recon = _run_pass(adapter, split, None, None, ctx, None, "clean")
        _check_pass(subject.name, "clean images", clean)
        entry["temperature"] = subject.temperature  # of ece_scaled
        entry["temperature_fit"] = ("none (scores outside [0, 1]: no calibration metric)"
                                    if not scores_in_unit_interval(clean.scores) else "validation split"
                                    if subject.temperature is not None else "cross-fitted on the clean images' halves")
        if trained:
            entry["kept_variance_pca16"] = M.kept_variance(clean.rep, 16, seed)
        entry["representation_dim"] = int(clean.rep.shape[1])
        if clean.fidelity_terms is not None:
            entry["clean_reconstruction_error"] = float(M.ratio(*clean.fidelity_terms))
        entries.append(entry)
        bar.update(1)
        for t in chosen:
            rows, frames, decoded = _probe_transform(adapter, subject, split, clean, clean_recon, t, ctx, bar,
                                                     trained)
            metric_rows += rows
            image_frames += frames
            if decoded is not None:
                decode_rows.append(decoded)
        if adapter.can_decode and adapter.has_poses:
            t0 = time.perf_counter()
            arrays.update(_capsule_grids(subject.name, adapter, split, chosen, grid, seed, dev, other,
                                         plan.attack_steps))
            timer.add("pictures", t0)
        if plan.lie:
            t0 = time.perf_counter()
            part = lie_tables([(subject.ident(), adapter)], split, batch_size=min(plan.batch_size, 128), device=dev,
                              seed=seed, n_boot=n_boot, progress=bar.set_postfix_str,
                              angles=COMPOSITION_ANGLES if trained else ())  # untrained poses: no composition grid
            lie_parts.append(part if trained else _scores_and_layers(part))
            timer.add("lie", t0)
    bar.close()
    metrics_df = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    images_df = (_image_table(image_frames) if image_frames else pd.DataFrame(columns=IMAGE_COLUMNS))
    identity = identity_labels()
    selectivity = M.selectivity_table(images_df, identity, n_boot=n_boot, seed=seed)
    if not selectivity.empty:
        metrics_df = pd.concat([metrics_df, _selectivity_rows(metrics_df, selectivity)], ignore_index=True)
    decode_df = pd.DataFrame(decode_rows)
    tables = {"overview": M.overview_table(metrics_df, images_df, identity, n_boot=n_boot, seed=seed,
                                           extra=decode_df),
              "roc": M.roc_table(images_df, metrics_df, identity)}
    if not selectivity.empty:
        tables["selectivity"] = selectivity
    masking = M.masking_table(metrics_df)
    if not masking.empty:
        tables["masking"] = masking
    for name in ("lie", "lie_layers", "composition"):
        if lie_parts:
            tables[name] = pd.concat([part.tables()[name] for part in lie_parts], ignore_index=True)
    t0 = time.perf_counter()
    compared = comparison_tables(pd.concat([metrics_df, decodability_rows(decode_df, metrics_df, len(split))], ignore_index=True),
                                 images_df, entries, identity, reference=reference, n_boot=n_boot)
    tables.update({name: frame for name, frame in compared.items() if not frame.empty})
    timer.add("comparison", t0)
    timing = dict(timer.seconds)
    timing["total"] = time.perf_counter() - total_start
    timing["images"] = float(len(split))
    manifest = {
        "runs": entries,
        "images": len(split),
        "transforms": {t.name: [magnitude_label(m) for m in grid[t.name]] for t in chosen},
        "seed": seed,
        "bootstrap": n_boot,
        "reference": reference,
        "device": str(dev),
        "device_record": device_record(dev, dtype),  # TF32 off here: the probe's own precision
        "versions": library_versions(),
    }
    if dataset is None:
        trained_on = {str(s.info["dataset"]) for s in items if s.info.get("dataset")}
        dataset = trained_on.pop() if len(trained_on) == 1 else "unnamed"
    manifest["dataset"] = str(dataset)
    if other is not None:
        manifest["surrogate"] = as_subject(surrogate).name
    if any(t.name.startswith("pgd") for t in chosen):
        manifest["attack_steps"] = plan.attack_steps  # pgd-long: 5x
    if plan.lie:
        manifest["lie"] = lie_manifest(len(split))
    if untrained:
        manifest["untrained_poses"] = {
            "runs": untrained, "left_out": untrained_poses_left_out(),
            "why": "no training loss reaches these models' class poses (their scores never read the votes and they "
                   "have no decoder): the poses, and the representation that flattens them, are projections by "
                   "untrained matrices"}
    return ProbeResult(metrics=metrics_df, images=images_df, timing=timing, tables=tables, arrays=arrays,
                       manifest=manifest)


def _scores_and_layers(part: LieResult) -> LieResult:
    """A Lie result without what reads untrained poses: the scores' LEE and the per-layer profile up to (not
    including) the representation."""
    lie, layers = part.lie, part.layers
    return replace(part, lie=lie[lie["metric"] == "lee_scores"].reset_index(drop=True),
                   layers=layers[layers["layer"] != "representation"].reset_index(drop=True))


def _image_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The per-image rows: :data:`IMAGE_COLUMNS`, and the winning warps' columns when a worst case was probed."""
    joined = pd.concat(frames, ignore_index=True)
    return joined[IMAGE_COLUMNS + [c for c in WORST_CASE_COLUMNS if c in joined.columns]]


def _capsule_grids(name: str, adapter: Adapter, split: ImageSplit, chosen: Sequence[Transform],
                   grid: Mapping[str, Sequence[Any]], seed: int, device: torch.device,
                   surrogate: Adapter | None = None, attack_steps: int = PGD_STEPS) -> dict[str, dict]:
    """The reconstruction rows (one showcase magnitude per transformation) and the paper's Figure 4 sweep."""
    out = {}
    conditions = []
    for t in chosen:
        labels = {magnitude_label(m): m for m in grid[t.name] if m != t.identity}
        wanted = magnitude_label(t.showcase) if t.showcase is not None else None
        pick = labels.get(wanted) if wanted in labels else (list(labels.values())[-1] if labels else None)
        if pick is not None:
            conditions.append((t, pick))
    if conditions:
        images, rows = reconstruction_examples(adapter, split, conditions, n=8, seed=seed, device=device,
                                               surrogate=surrogate, attack_steps=attack_steps)
        out[f"reconstructions-{name}"] = grid_array(
            images, rows, title=f"{name}: reconstructions from the transformed images' poses (true-class capsule)",
            caption="Each transformation: the transformed digits, then the decoder's reconstruction from the true "
                    "class's pose of the transformed digit.")
    sweep = pose_sweep(adapter, split, 0, device=device)
    out[f"pose_sweep-{name}"] = grid_array(
        sweep, [f"dim {d}" for d in range(sweep.shape[0])], [f"{d + 0.0:+.2f}" for d in SWEEP_DELTAS],
        title=f"{name}: pose dimensions perturbed (paper Figure 4)", cell=0.45,
        caption="The paper's Figure 4: each of the 16 dimensions of one digit's capsule moved over [-0.25, 0.25] in "
                "steps of 0.05 and decoded.")
    return out
