"""Declarative experiments: ``capsprobe run experiments/NAME.toml [--size quick|paper]``.

An experiment file names a data set, the training options shared by its models, the transformations to
probe, and one or more sizes, each listing the models (with epochs and options) and the image budgets::

    name = "affnist"
    description = "..."

    [data]
    dataset = "mnist-canvas40"

    [train]                      # any RunConfig field but model, dataset, epochs, seed, limit
    max_shift = 6

    [probe]
    transforms = ["affnist"]     # names as for `capsprobe perturb -t`, or "all"
    magnitudes = []              # specs as for `--magnitudes`
    bootstrap = 1000
    reference = "capsnet_small"  # optional: the ablation table sets every other model against this one
    lie = true                   # optional: also the Lie-derivative probe (capsprobe.probe.lie)
    surrogate = { model = "resnet18", epochs = 3 }  # optional: the model pgd-transfer computes its attack on

    [sizes.quick]
    limit = 10000                # images per split for training (None: all)
    probe_limit = 2000           # images probed
    seeds = [0]
    models = [{ model = "capsnet_small", epochs = 3 }, { model = "baseline_cnn_pool", epochs = 3, options = { channels = [128, 128, 64] } }]

The ``surrogate`` of the transfer attack (``pgd-transfer``) is a model of a third family, trained as its own run
(``runs/<name>-<size>/surrogate-<model>-seed<N>``, with the size's training options) and never probed or compared:
a table with ``model`` and optionally ``epochs`` (default: the most of the size's models), ``options``, ``train``
and ``seed`` (default: the size's first), or a model name alone (``surrogate = "resnet18"``). A surrogate that is
one of the compared models is refused: the "transfer" attack would be white-box for its run. It is trained only
when the size probes ``pgd-transfer``, which needs one.

    [[claims]]                   # optional, any number: the declared primary endpoints (capsprobe.metrics.claims)
    name = "affnist-accuracy"
    a = "capsnet_small"          # the pair, a - b
    b = "baseline_cnn_pool"
    metric = "accuracy"
    condition = "affnist=warp"   # transform=magnitude
    direction = "greater"        # "greater", "less", or "alike" with an equivalence margin (margin = 0.02)
    sizes = ["quick"]            # optional: the sizes it applies to (default: every size)

The claims are fixed with the file: its SHA-256 and the claims go into the report's manifest, ``claims.csv`` tests
them as one Holm family, and the report opens with them; everything else in the report is exploratory.

A model entry may carry a ``label`` (its name in run folders and tables, so one model can appear with different
options: ``{ model = "capsnet_small", label = "no-routing", options = { routing = "none" } }``) and its own ``train``
table (e.g. ``train = { target_accuracy = 0.98 }``) over the size's.
A size may also set ``dataset``, ``bootstrap``, ``attack_steps`` (PGD's iterations, pgd-long 5x), ``lie``, ``transforms``,
``magnitudes``, ``reference``, ``surrogate`` and a ``train`` table that overrides ``[train]`` for it (so one file
can hold one set of models under several protocols), and ``report``, the report folder's name under ``reports/`` (a
protocol's size beside the experiment's own report).

Runs go to ``runs/<name>-<size>/<model>-seed<N>`` and are reused when finished (an interrupted one resumes);
the report goes to ``reports/<name>`` (or the size's ``report``). A malformed file is a one-line :class:`ExperimentError` naming the
file, the line and the key.
Each size's probe is one :class:`~capsprobe.probe.ProbePlan` (:meth:`Experiment.probe_plan`), checked on loading
against the data set's channels and image side (from the registry, nothing loaded) when the task probes
transformations.

The files of the repository's ``experiments/`` folder ship with the package (``capsprobe/experiments/*.toml`` in a
wheel), so a name alone finds them from any folder: ``capsprobe run affnist`` (:func:`experiment_file`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .data import UnknownDatasetError, get_spec
from .errors import InvalidInputError
from .metrics.claims import Claim, ClaimError, parse_claims
from .probe import ProbePlan
from .tasks import get_task
from .training.runs import ConfigError, RunConfig, check_plain_name
from .transforms.gradient import PGD_STEPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["PACKAGED", "Experiment", "ExperimentError", "ModelSpec", "demo_file", "experiment_file", "load_experiment",
           "packaged_experiments"]


_log = logging.getLogger(__name__)

_TOP = {"name", "description", "data", "train", "probe", "sizes", "claims"}
_DATA = {"dataset", "data_root"}
_PROBE = {"transforms", "magnitudes", "bootstrap", "seed", "split", "reference", "lie", "surrogate", "attack_steps"}
_SIZE = {"limit", "probe_limit", "seeds", "models", "dataset", "bootstrap", "transforms", "magnitudes", "train",
         "reference", "report", "surrogate", "attack_steps", "lie"}
_MODEL = {"model", "epochs", "options", "train", "label", "seeds"}
_SURROGATE = {"model", "epochs", "options", "train", "seed"}
SURROGATE_PREFIX = "surrogate-"  # a surrogate's run folder: surrogate-<model>-seed<N>, beside the compared runs
_TRAIN = {f.name for f in fields(RunConfig)} - {"model", "dataset", "epochs", "seed", "limit", "model_kwargs", "device",
                                                "data_root", "label"}


class ExperimentError(InvalidInputError):
    """A malformed experiment file (the message names the file, line and key)."""


@dataclass(frozen=True)
class ModelSpec:
    model: str
    epochs: int
    options: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)  # this model's RunConfig fields over the size's [train]
    label: str | None = None  # the variant's name (run folders, tables); None: the model name
    seeds: tuple[int, ...] | None = None  # this model's seeds over the size's (an A/A test: disjoint seeds per label)

    @property
    def variant(self) -> str:
        return self.label or self.model


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment at one size."""

    path: Path
    name: str
    description: str
    size: str
    dataset: str
    data_root: str | None
    train: dict[str, Any]
    transforms: list[str]
    magnitudes: list[str]
    bootstrap: int
    probe_seed: int
    reference: str | None  # the model (variant) every other is compared against in the ablation table
    lie: bool  # also the Lie-derivative probe
    split: str
    limit: int | None
    probe_limit: int | None
    seeds: list[int]
    models: list[ModelSpec]
    report: str | None = None  # the report folder's name under reports/ (None: the experiment's name)
    surrogate: ModelSpec | None = None  # the model pgd-transfer computes its attack on: trained, never compared
    attack_steps: int = PGD_STEPS  # PGD's iterations (pgd-long: 5x)
    claims: tuple[Claim, ...] = ()  # the declared primary endpoints ([[claims]]: capsprobe.metrics.claims)
    sha256: str = ""  # the file's bytes, as read: the manifest records it beside the claims

    def probe_plan(self, **options: Any) -> ProbePlan:
        """The probe of this size as one :class:`~capsprobe.probe.ProbePlan` (transformations, magnitudes, probe
        seed and limit, split, bootstrap, reference, Lie probe); ``options``: what the file does not say (``device``,
        ``progress``, ``batch_size``, the surrogate's run directory once it is trained)."""
        return ProbePlan.from_options(self.transforms, self.magnitudes, seed=self.probe_seed, limit=self.probe_limit,
                                      split=self.split, bootstrap=self.bootstrap, reference=self.reference,
                                      lie=self.lie, attack_steps=self.attack_steps, **options)

    def run_config(self, spec: ModelSpec, seed: int, **options: Any) -> RunConfig:
        """The training configuration of one (model, seed) run: the size's ``[train]`` under the model's own;
        ``options``: what the file does not say (``device``, ``data_root``)."""
        return RunConfig(model=spec.model, dataset=self.dataset, epochs=spec.epochs, seed=seed, limit=self.limit,
                         model_kwargs=dict(spec.options), label=spec.label, **{**self.train, **spec.train}, **options)

    def jobs(self) -> list[tuple[ModelSpec, int]]:
        """Every (model, seed) run of this size that is probed and compared: a model's own ``seeds`` where it has
        them, else the size's (the surrogate is not one of them: :meth:`surrogate_job`)."""
        return [(m, s) for m in self.models for s in (m.seeds if m.seeds is not None else self.seeds)]

    def surrogate_job(self) -> tuple[ModelSpec, int] | None:
        """The surrogate's (model, seed) run when this size probes ``pgd-transfer`` (its variant is
        ``surrogate-<model>``), else None: trained like the others, never probed or compared."""
        if self.surrogate is None or "pgd-transfer" not in {t.name for t in self.probe_plan().transforms}:
            return None
        assert self.surrogate.seeds is not None  # parsed with its one seed
        return self.surrogate, self.surrogate.seeds[0]


def _line_of(text: str, key: str, section: str | None = None, header: bool = True) -> int:
    """1-based line of ``key =`` (inside ``[section]`` when given), else of the section header, else 1 (0 for both
    when not ``header``)."""
    current, header_line = None, None
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[\s*([^\]]+?)\s*\]$", stripped)
        if m:
            current = m.group(1)
            if section is not None and current == section:
                header_line = i
            continue
        if (section is None or current == section) and re.search(rf"(^|[{{,\s]){re.escape(key)}\s*=", line):
            return i
    return (header_line or 1) if header else 0


def _fail(path: Path, text: str, key: str, section: str | None, message: str) -> ExperimentError:
    return ExperimentError(f"{path}:{_line_of(text, key, section)}: {message}")


def _check_keys(path, text, table: dict, allowed: set[str], section: str | None) -> None:
    for key in table:
        if key not in allowed:
            where = f"[{section}]" if section else "the top level"
            raise _fail(path, text, key, section, f"unknown key '{key}' in {where}; allowed: {', '.join(sorted(allowed))}")


def _typed(path, text, value, kind, key: str, section: str | None):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, text, key, section, f"'{key}' must be {names}, got {value!r}")
    return value


def load_experiment(path: str | Path, size: str = "quick") -> Experiment:
    """Parse and check an experiment file at ``size``: ``path`` is a file, or the name of one capsprobe ships
    (``demo``, ``experiments/affnist.toml`` where no such file is: :func:`experiment_file`).

    Raises:
        ExperimentError: syntax error, unknown key, wrong type, missing key or size (file, line and key named).
    """
    path = experiment_file(path)
    if path.is_dir():
        raise ExperimentError(f"experiment file {path} is a folder")
    if not path.is_file():
        raise ExperimentError(f"experiment file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ExperimentError(f"{path} is not UTF-8 text (byte {exc.start}): an experiment file is TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: {exc}") from None
    _check_keys(path, text, data, _TOP, None)
    for key in ("name", "data", "sizes"):
        if key not in data:
            raise ExperimentError(f"{path}:1: missing key '{key}'")
    name = _typed(path, text, data["name"], str, "name", None)
    dat = _typed(path, text, data["data"], dict, "data", None)
    _check_keys(path, text, dat, _DATA, "data")
    if "dataset" not in dat:
        raise _fail(path, text, "data", None, "missing key 'dataset' in [data]")
    train = _typed(path, text, data.get("train", {}), dict, "train", None)
    _check_keys(path, text, train, _TRAIN, "train")
    defaults = RunConfig()
    for key, value in train.items():
        _check_train_type(path, text, defaults, key, value, "train")
    probe = _typed(path, text, data.get("probe", {}), dict, "probe", None)
    _check_keys(path, text, probe, _PROBE, "probe")
    transforms = _typed(path, text, probe.get("transforms", ["all"]), list, "transforms", "probe")
    magnitudes = _typed(path, text, probe.get("magnitudes", []), list, "magnitudes", "probe")
    sizes = _typed(path, text, data["sizes"], dict, "sizes", None)
    if size not in sizes:
        raise ExperimentError(f"{path}: no size '{size}'; it has: {', '.join(sizes)}")
    section = f"sizes.{size}"
    spec = _typed(path, text, sizes[size], dict, size, "sizes")
    _check_keys(path, text, spec, _SIZE, section)
    if "models" not in spec or not spec["models"]:
        raise _fail(path, text, size, None, f"[{section}] lists no models")
    models = []
    for entry in _typed(path, text, spec["models"], list, "models", section):
        _typed(path, text, entry, dict, "models", section)
        _check_keys(path, text, entry, _MODEL, section)
        if "model" not in entry or "epochs" not in entry:
            raise _fail(path, text, "models", section, "every model needs 'model' and 'epochs'")
        own = dict(_typed(path, text, entry.get("train", {}), dict, "train", section))
        _check_keys(path, text, own, _TRAIN, f"{section}.models.train")
        for key, value in own.items():
            _check_train_type(path, text, defaults, key, value, f"{section}.models.train")
        models.append(ModelSpec(_typed(path, text, entry["model"], str, "model", section),
                                _typed(path, text, entry["epochs"], int, "epochs", section),
                                dict(_typed(path, text, entry.get("options", {}), dict, "options", section)), own,
                                _typed(path, text, entry["label"], str, "label", section) if "label" in entry else None,
                                _seed_list(path, text, entry["seeds"], section) if "seeds" in entry else None))
    size_train = _typed(path, text, spec.get("train", {}), dict, "train", section)
    _check_keys(path, text, size_train, _TRAIN, f"{section}.train")
    for key, value in size_train.items():
        _check_train_type(path, text, defaults, key, value, f"{section}.train")
    train = {**train, **size_train}
    transforms = _typed(path, text, spec.get("transforms", transforms), list, "transforms", section)
    magnitudes = _typed(path, text, spec.get("magnitudes", magnitudes), list, "magnitudes", section)
    bootstrap = _typed(path, text, spec.get("bootstrap", probe.get("bootstrap", 1000)), int, "bootstrap", section)
    attack_steps = _typed(path, text, spec.get("attack_steps", probe.get("attack_steps", PGD_STEPS)), int,
                          "attack_steps", section if "attack_steps" in spec else "probe")
    limit = spec.get("limit")
    probe_limit = spec.get("probe_limit")
    for key, value in (("limit", limit), ("probe_limit", probe_limit)):
        if value is not None:
            _typed(path, text, value, int, key, section)
    exp = Experiment(
        path=path, name=name, description=str(data.get("description", "")), size=size,
        dataset=_typed(path, text, spec.get("dataset", dat["dataset"]), str, "dataset", section),
        data_root=dat.get("data_root"), train=dict(train), transforms=[str(t) for t in transforms],
        magnitudes=[str(m) for m in magnitudes], bootstrap=int(bootstrap), attack_steps=int(attack_steps),
        probe_seed=_typed(path, text, probe.get("seed", 0), int, "seed", "probe"),
        reference=_typed(path, text, spec["reference"], str, "reference", section) if "reference" in spec else
        _typed(path, text, probe["reference"], str, "reference", "probe") if "reference" in probe else None,
        lie=_typed(path, text, spec.get("lie", probe.get("lie", False)), bool, "lie", section if "lie" in spec else "probe"),
        split=str(probe.get("split", "test")), limit=limit,
        probe_limit=probe_limit, seeds=list(_seed_list(path, text, spec.get("seeds", [0]), section)),
        models=models,
        report=_typed(path, text, spec["report"], str, "report", section) if "report" in spec else None,
        surrogate=_surrogate(path, text, spec["surrogate"] if "surrogate" in spec else probe.get("surrogate"),
                             section if "surrogate" in spec else "probe", models, spec),
    )
    _validate(exp, text, section)
    try:
        claims = parse_claims(data.get("claims", []), models=[m.variant for m in models], size=size)
    except ClaimError as exc:
        raise _fail(path, text, "claims", None, str(exc)) from None
    return replace(exp, claims=tuple(claims), sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _surrogate(path: Path, text: str, value: Any, section: str, models: list[ModelSpec], size: dict
               ) -> ModelSpec | None:
    """The ``surrogate`` entry as a :class:`ModelSpec` labelled ``surrogate-<model>`` with its one seed, or None.

    A model name alone or a table (``model``; ``epochs``, default the most of the size's models; ``options``;
    ``train``; ``seed``, default the size's first). Refused when it is one of the compared models (by model or
    label): pgd-transfer would then be a white-box attack on that model's run, not a transfer."""
    if value is None:
        return None
    entry = {"model": value} if isinstance(value, str) else _typed(path, text, value, (str, dict), "surrogate", section)
    _check_keys(path, text, entry, _SURROGATE, f"{section}.surrogate")
    if "model" not in entry:
        raise _fail(path, text, "surrogate", section, "the surrogate needs 'model'")
    model = _typed(path, text, entry["model"], str, "surrogate", section)
    compared = {m.model for m in models} | {m.variant for m in models}
    if model in compared:
        raise _fail(path, text, "surrogate", section, f"surrogate {model!r} is one of the compared models "
                    f"({', '.join(sorted(compared))}): pgd-transfer would be white-box for its run; declare a model of "
                    "a third family, e.g. surrogate = { model = \"resnet18\", epochs = 1 }")
    own = dict(_typed(path, text, entry.get("train", {}), dict, "train", section))
    _check_keys(path, text, own, _TRAIN, f"{section}.surrogate.train")
    defaults = RunConfig()
    for key, val in own.items():
        _check_train_type(path, text, defaults, key, val, f"{section}.surrogate.train")
    epochs = _typed(path, text, entry["epochs"], int, "epochs", section) if "epochs" in entry else \
        max(m.epochs for m in models)
    seed = _typed(path, text, entry["seed"], int, "seed", section) if "seed" in entry else \
        _seed_list(path, text, size.get("seeds", [0]), section)[0]
    return ModelSpec(model, epochs, dict(_typed(path, text, entry.get("options", {}), dict, "options", section)), own,
                     label=f"{SURROGATE_PREFIX}{model}", seeds=(seed,))


def _seed_list(path: Path, text: str, value: Any, section: str) -> tuple[int, ...]:
    """A non-empty list of distinct integer seeds."""
    seeds = _typed(path, text, value, list, "seeds", section)
    for seed in seeds:
        _typed(path, text, seed, int, "seeds", section)
    if not seeds or len(set(seeds)) != len(seeds):
        raise _fail(path, text, "seeds", section, f"'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    return tuple(seeds)


def _check_train_type(path: Path, text: str, defaults: RunConfig, key: str, value: Any, section: str) -> None:
    """A ``[train]`` value has its field's type (an optional field, None by default, takes a number)."""
    default = getattr(defaults, key)
    expected = (int, float) if isinstance(default, float) or default is None else type(default)
    _typed(path, text, value, expected, key, section)


def _validate(exp: Experiment, text: str, section: str) -> None:
    """Everything that can be checked before training: names, the data set, the probe's split, transformations
    and magnitudes, and every run's configuration (types, ranges, the model's options)."""

    path = exp.path
    try:
        check_plain_name(exp.name, "name")
    except ConfigError as exc:
        raise _fail(path, text, "name", None, str(exc)) from None
    if exp.report is not None:
        try:
            check_plain_name(exp.report, "report")
        except ConfigError as exc:
            raise _fail(path, text, "report", section, str(exc)) from None
    try:
        get_spec(exp.dataset)
    except UnknownDatasetError as exc:
        raise _fail(path, text, "dataset", None, str(exc)) from None
    if exp.split not in ("test", "val"):
        raise _fail(path, text, "split", "probe", f"'split' must be test or val, got {exp.split!r}")
    for key, value in (("bootstrap", exp.bootstrap), ("limit", exp.limit), ("probe_limit", exp.probe_limit)):
        if value is not None and value < (10 if key == "bootstrap" else 4 if key == "probe_limit" else 1):
            raise _fail(path, text, key, section, f"'{key}' is too small: {value}")
    probed = "magnitudes" if exp.magnitudes else "transforms"
    try:
        plan = exp.probe_plan()
    except InvalidInputError as exc:
        raise _fail(path, text, probed, "probe", str(exc)) from None
    variants = [spec.variant for spec in exp.models]
    for name in dict.fromkeys(variants):
        if variants.count(name) > 1:
            raise _fail(path, text, "models", section, f"two entries of [{section}] are both called {name!r} (their runs "
                        "would share folders): give each a distinct 'label'")
    if exp.reference is not None and exp.reference not in variants:
        raise _fail(path, text, "reference", "probe", f"reference {exp.reference!r} is none of [{section}]'s models "
                    f"({', '.join(variants)})")
    if exp.surrogate is None and any(t.name == "pgd-transfer" for t in plan.transforms):
        raise _fail(path, text, probed, "probe", "pgd-transfer needs a surrogate model to compute the attack on: "
                    "surrogate = { model = ..., epochs = ... } (a third family, trained for it and not compared)")
    surrogate = exp.surrogate_job()
    for spec, seed in exp.jobs() + ([surrogate] if surrogate is not None else []):
        try:
            exp.run_config(spec, seed)
        except ConfigError as exc:
            key = exc.field if exc.field != "model_kwargs" else "options"
            raise _fail(path, text, key, None, str(exc)) from None
        except InvalidInputError as exc:
            raise _fail(path, text, "options", section, str(exc)) from None
    try:
        task = get_task(exp.train.get("task", "classify"))
    except InvalidInputError as exc:
        raise _fail(path, text, "task", "train", str(exc)) from None
    if task.suite:  # the plan against the data set's images (channels, side): known without loading it
        images = get_spec(exp.dataset)
        try:
            plan.validate_for(images, task.input_size(images.img_size))
        except InvalidInputError as exc:
            where = section if _line_of(text, probed, section, header=False) else "probe"
            raise _fail(path, text, probed, where, f"size '{exp.size}': {exc}") from None


#: the package that holds the experiment files in an installed wheel: pyproject.toml maps it onto the checkout's
#: ``experiments/`` folder (``[tool.setuptools.package-dir]``) and ships its ``*.toml`` as package data
PACKAGED = "capsprobe.experiments"


def _experiment_folders() -> list[Path]:
    """Where the experiment files capsprobe ships are, in order: the package data of an installed wheel
    (``importlib.resources.files("capsprobe.experiments")``), then the ``experiments/`` folder beside the
    ``capsprobe/`` of a checkout (an editable install: setuptools' editable finder maps no package without an
    ``__init__.py``, so the mapping of pyproject.toml does not reach it there). Folders that do not exist are left
    out."""
    folders: list[Path] = []
    try:
        root = resources.files(PACKAGED)
    except ModuleNotFoundError:
        root = None
    if root is not None:  # a namespace package (no __init__.py): a MultiplexedPath; on a file system a child is a Path
        child = root.joinpath("demo.toml")
        if isinstance(child, Path):
            folders.append(child.parent)
    folders.append(Path(__file__).resolve().parent.parent / "experiments")
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def packaged_experiments() -> dict[str, Path]:
    """The experiment files capsprobe ships (``demo``, ``affnist``...), by name: the first folder of
    :func:`_experiment_folders` that holds a file of that name gives it."""
    found: dict[str, Path] = {}
    for folder in _experiment_folders():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def experiment_file(path: str | Path) -> Path:
    """The experiment file ``path`` names: the path itself when it exists; else, for a bare name (``demo``,
    ``demo.toml``) or the repository's relative form (``experiments/demo.toml``), the packaged file of that name
    (:func:`packaged_experiments`), so ``capsprobe run demo`` works from any folder and from an installed wheel.

    Raises:
        ExperimentError: nothing of that name (the packaged experiments listed).
    """
    path = Path(path)
    if path.exists():
        return path
    if not path.is_absolute() and path.parent in (Path("."), Path("experiments")) and path.suffix in ("", ".toml"):
        packaged = packaged_experiments()
        stem = path.name[:-len(".toml")] if path.name.endswith(".toml") else path.name
        if stem in packaged:
            return packaged[stem]
        shipped = ", ".join(packaged) or "none found"
        raise ExperimentError(f"experiment file {path} does not exist, and capsprobe ships no experiment of that name "
                              f"(it ships: {shipped})")
    raise ExperimentError(f"experiment file {path} does not exist")


def demo_file() -> Path:
    """``demo.toml``, the main job's experiment file: the installed package's copy (a wheel ships it as package
    data) or the checkout's ``experiments/demo.toml`` (:func:`packaged_experiments`; never a ``demo`` of the current
    folder).

    Raises:
        ExperimentError: neither is there (a broken install).
    """
    path = packaged_experiments().get("demo")
    if path is None:
        raise ExperimentError("demo.toml not found: neither the installed package (capsprobe/experiments) nor a "
                              "checkout's experiments/ folder holds it; reinstall capsprobe")
    return path
