"""The probe plan: every option of a probe, resolved and checked once, then handed down as one object.

``capsprobe perturb``'s options and an experiment file's ``[probe]`` table (with its size's overrides) both become a
:class:`ProbePlan` (:meth:`ProbePlan.from_options`, :meth:`capsprobe.experiment.Experiment.probe_plan`); the pipeline,
the task and :func:`capsprobe.probe.run_probe` read their options from it instead of a dozen keywords each.

:meth:`ProbePlan.validate` sets the plan against the images it will see (channels and side, known from the data set
registry without loading anything) before any run is trained or any image loaded: a jigsaw grid that does not divide
the side, a shift past the canvas, a transformation that does not take that many channels are refused in one line.
Pixel magnitudes stay in pixels (they are tuned to 28-pixel digits: ``translate`` up to 8 px); they are checked per
data set, not rescaled, so one magnitude means the same shift on every data set.

Convention: the plan's ``magnitudes`` hold every probed transformation's full grid, validated, with the identity
first when it was not asked for (it anchors every curve and the clean accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ..data import DatasetSpec
from ..errors import InvalidInputError
from ..runtime import check_device
from ..transforms import Transform, magnitude_label, parse_magnitude_specs, resolve
from ..transforms.gradient import PGD_STEPS

__all__ = ["SPLITS", "ProbePlan"]

SPLITS = ("test", "val")  # the splits a probe may read (never the training split)


MAX_BOOTSTRAP = 100_000  # upper bounds of a probe's sizes
MAX_ATTACK_STEPS = 10_000
MAX_BATCH = 65_536


@dataclass(frozen=True)
class ProbePlan:
    """What a probe runs and how: the conditions, the seeds and intervals, the comparisons, the device.

    Build it with :meth:`from_options` (names, magnitude specs) rather than by hand: that resolves and checks.
    """

    transforms: tuple[Transform, ...]  # the transformations, resolved ("all" expanded), in probe order
    # per transformation name: its magnitudes, validated, identity first; compared, but left out of the hash (a
    # read-only mapping is unhashable): plans that differ only in their grids hash alike and compare unequal
    magnitudes: Mapping[str, tuple[Any, ...]] = field(hash=False)
    seed: int = 0  # the random transformations (per image: seed * 1000003 + image id), the fit/held-out split, bootstrap
    limit: int | None = None  # probe at most this many images (stratified); None: the whole split
    split: str = "test"  # test or val
    bootstrap: int = 1000  # resamples of the 95% intervals
    attack_steps: int = PGD_STEPS  # PGD's iterations (pgd-long: 5x); fewer only to see the pipeline work
    reference: str | None = None  # the model every other is set against in ablation.csv
    surrogate: str | None = None  # the run (directory) pgd-transfer computes its attack on
    lie: bool = False  # also the Lie-derivative probe (lie.csv, lie_layers.csv, composition.csv)
    batch_size: int = 256  # images per forward pass
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = False  # autocast (bf16 on CUDA where native); off: float32 with TF32 off, what the metrics assume
    progress: bool = True  # a progress bar

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", tuple(self.transforms))
        object.__setattr__(self, "magnitudes", MappingProxyType({k: tuple(v) for k, v in self.magnitudes.items()}))
        missing = [t.name for t in self.transforms if t.name not in self.magnitudes]
        extra = sorted(set(self.magnitudes) - {t.name for t in self.transforms})
        if missing or extra:
            raise InvalidInputError(f"a probe plan needs magnitudes for exactly its transformations (missing: "
                                    f"{', '.join(missing) or 'none'}; not probed: {', '.join(extra) or 'none'})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**31:
            raise InvalidInputError(f"the probe seed must be an integer in [0, 2**31), got {self.seed!r}")
        if self.split not in SPLITS:
            raise InvalidInputError(f"split must be test or val, got {self.split!r}")
        # upper bounds far past any real probe: a typo (10**9 resamples) is refused at once instead of hanging
        for name, low, high in (("bootstrap", 1, MAX_BOOTSTRAP), ("attack_steps", 1, MAX_ATTACK_STEPS),
                                ("batch_size", 1, MAX_BATCH)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidInputError(f"{name} must be an integer >= {low} (at most {high:,}), got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 4):
            raise InvalidInputError(f"the probe needs at least 4 images, got limit {self.limit!r}")
        check_device(self.device)

    @classmethod
    def from_options(
        cls,
        transforms: Sequence[str | Transform] = ("all",),
        magnitudes: Sequence[str] | Mapping[str, Sequence[Any]] | None = None,
        **options: Any,
    ) -> ProbePlan:
        """The plan of ``capsprobe perturb``'s options (or an experiment file's).

        Args:
            transforms: suite names (``all``: the suite) or :class:`~capsprobe.transforms.Transform` objects.
            magnitudes: ``--magnitudes`` specs (``rotate=0,45,90``; a bare ``0,45,90`` with one transformation), or
                per transformation name the magnitudes to use instead of its default grid; the identity is added.
            options: the other fields (``seed``, ``limit``, ``split``, ``bootstrap``, ``reference``, ``surrogate``,
                ``attack_steps``, ``lie``, ``batch_size``, ``device``, ``amp``, ``progress``); ``n_boot`` is read as ``bootstrap``.

        Raises:
            UnknownTransformError, InvalidInputError: an unknown name, a magnitude out of range or for a
                transformation not probed, a bad split or count.
        """
        if "n_boot" in options:  # run_probe's older name
            options["bootstrap"] = options.pop("n_boot")
        names = [t for t in transforms if not isinstance(t, Transform)]
        chosen = [t for t in transforms if isinstance(t, Transform)] + (resolve(names) if names else [])
        if magnitudes is None or isinstance(magnitudes, Mapping):
            asked: Mapping[str, Sequence[Any]] = dict(magnitudes or {})
            unknown = sorted(set(asked) - {t.name for t in chosen})
            if unknown:
                raise InvalidInputError(f"magnitudes given for transformations not probed: {', '.join(unknown)}")
        else:
            asked = parse_magnitude_specs(list(magnitudes), chosen)
        grid = {}
        for t in chosen:
            values = [t.validate(m) for m in asked.get(t.name, t.grid)]
            labels = [magnitude_label(v) for v in values]
            twice = sorted({label for label in labels if labels.count(label) > 1})
            if twice:
                raise InvalidInputError(f"{t.name} magnitude {', '.join(twice)} is given twice; each condition is "
                                        "probed once")
            grid[t.name] = tuple(values if t.identity in values else [t.identity, *values])
        return cls(transforms=tuple(chosen), magnitudes=grid, **options)

    @property
    def conditions(self) -> int:
        """Conditions per model: every (transformation, magnitude), identities included."""
        return sum(len(v) for v in self.magnitudes.values())

    def validate(self, channels: int, height: int, width: int | None = None, where: str = "") -> ProbePlan:
        """Refuse, in one line, what cannot be applied to ``channels x height x width`` images (square when ``width``
        is None): each transformation's :attr:`~capsprobe.transforms.Transform.fits` over its magnitudes (jigsaw
        grids dividing the side, shifts inside the canvas, the channels an operation takes).

        Rotations need no check: decodability uses only the nuisance magnitudes of a grid (below 90 degrees) by
        construction, and every angle in [-180, 180] applies to any image.

        Returns:
            The plan itself, so a caller can write ``plan = ProbePlan.from_options(...).validate(c, s)``.

        Raises:
            InvalidInputError: the first problems, with the data set (``where``) and image shape named.
        """
        width = height if width is None else width
        problems = []
        for t in self.transforms:
            if t.fits is None:
                continue
            for m in self.magnitudes[t.name]:
                reason = t.fits(m, channels, height, width)
                if reason is not None:
                    problems.append(reason)
        if problems:
            named = f"{where}'s " if where else ""
            raise InvalidInputError(f"the probe plan does not fit {named}{channels}x{height}x{width} images: "
                                    + "; ".join(problems))
        return self

    def validate_for(self, spec: DatasetSpec, size: int | None = None) -> ProbePlan:
        """:meth:`validate` for a registered data set (its channels and side; ``size``: the side a task makes of
        it, e.g. MultiMNIST's canvas)."""
        return self.validate(spec.in_chans, size if size is not None else spec.img_size, where=spec.name)

    def describe(self) -> list[str]:
        """One line per transformation: its magnitudes (what a dry run prints)."""
        return [f"{t.name}: {', '.join(magnitude_label(m) for m in self.magnitudes[t.name])}"
                + (f" ({t.unit})" if t.unit else "") for t in self.transforms]
