"""The ``capsprobe`` command line: parse, build a config, call one library function, print paths.

capsprobe's own errors become one line on stderr and exit status 1 (usage errors: click's status 2); any other
exception is a bug and keeps its traceback. Nothing here computes results.

The conventions of the ecosystem (click, typer; the GNU and POSIX utility conventions they follow): ``--version``,
``-h`` beside ``--help``, choices listed in the help and checked by the parser (a bad one is a usage error, status
2), one list syntax (a list option is repeated, and each value may itself be comma-separated), shell completion
(``--install-completion``). Importing this module loads no torch: ``capsprobe --help`` starts in a fraction of a
second, and each command imports its own layer when it runs. The help texts that list a registry (models, data
sets, transformations, attacks) are filled from it when the command's help is shown (:class:`_Command`).
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from typer.core import TyperCommand

from ._version import __version__
from .errors import CapsprobeError, render

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# the options' upper bounds (the library's: a config or an experiment file is held to the same)
MAX_EPOCHS, MAX_BATCH, MAX_SHIFT = 100_000, 65_536, 256
MAX_BOOTSTRAP, MAX_ATTACK_STEPS = 100_000, 10_000


def _setting(r) -> str:
    """A bench row's settings: AMP dtype, channels_last, compiled."""
    return ", ".join([r.amp] + ["channels_last"] * r.channels_last + ["compiled"] * r.compiled)

__all__ = ["app", "main"]


# --- choices: the fixed sets the parser checks (tests/test_cli_conventions.py holds each to the library's constant)

class Kernels(str, enum.Enum):
    """``capsprobe bench --kernels`` (:data:`capsprobe.bench.KERNELS`)."""

    fast = "fast"
    eager = "eager"
    both = "both"


class Split(str, enum.Enum):
    """``capsprobe perturb --split`` (:data:`capsprobe.probe.plan.SPLITS`: never the training split)."""

    test = "test"
    val = "val"


class Augment(str, enum.Enum):
    """``capsprobe train --augment`` (:data:`capsprobe.training.runs.AUGMENTS`)."""

    none = "none"
    rotate = "rotate"
    affine = "affine"


class Task(str, enum.Enum):
    """``capsprobe train --task`` (the task registry, :data:`capsprobe.tasks.TASKS`)."""

    classify = "classify"
    multimnist = "multimnist"
    viewpoint = "viewpoint"
    upside_down = "upside-down"


class Launcher(str, enum.Enum):
    """``capsprobe run --launcher`` (:data:`capsprobe.training.launch.LAUNCHERS`)."""

    local = "local"
    slurm = "slurm"


class DemoSize(str, enum.Enum):
    """``capsprobe demo --size``: the sizes of experiments/demo.toml, named as every experiment file names them."""

    tiny = "tiny"
    quick = "quick"
    paper = "paper"


#: ``capsprobe report --formats`` (:data:`capsprobe.report.render.REPORT_FORMATS`): a list, so checked after the
#: values are split at commas (a list of enums would refuse ``png,pdf`` before it is split)
REPORT_FORMATS = ("png", "pdf", "svg", "tex")
#: the demo's former name of its quick size: still taken, with a one-line notice on stderr
DEPRECATED_SIZES = {"small": DemoSize.quick}
#: where a demo writes without --out: the quick size is the committed example, every other size its own folder
DEMO_OUT = "reports/demo"


def demo_out(size: str) -> Path:
    """The report folder ``capsprobe demo --size SIZE`` writes without ``--out``: ``reports/demo`` for the quick
    size (the committed example, which ``make demo`` rebuilds), ``reports/demo-<size>`` for the others, so the tiny
    demo never meets (or, with ``--force``, replaces) the committed one."""
    return Path(DEMO_OUT if size == DemoSize.quick.value else f"{DEMO_OUT}-{size}")


def _value(choice: Any) -> Any:
    """An enum member's value (options arrive as members), anything else as it is."""
    return choice.value if isinstance(choice, enum.Enum) else choice


# --- one list syntax: a repeatable option whose values may each be comma-separated ---------------------------------

LIST_HELP = ("Lists: an option marked (list) is repeated or takes comma-separated values, or both: "
             "-t rotate -t flip, -t rotate,flip and -t rotate,flip -t shear are the same.")

_KEY = re.compile(r"\s*[A-Za-z_][\w.-]*\s*=")


def split_list(values: Optional[List[str]], keyed: bool = False) -> Optional[List[str]]:
    """A list option's values with each split at its commas (``["a,b", "c"]`` -> ``["a", "b", "c"]``); None stays
    None (the option was not given).

    Commas inside brackets or quotes never split (``channels=[64,64,32]``, ``name="a,b"``). ``keyed``: the items
    are ``KEY=VALUE`` whose values are themselves comma lists (``rotate=0,45,90``), so a comma splits only where a
    new ``KEY=`` follows it: ``rotate=0,45,jigsaw=2,4`` is ``rotate=0,45`` and ``jigsaw=2,4``.
    """
    if values is None:
        return None
    out: List[str] = []
    for value in values:
        start, depth, quote = 0, 0, ""
        for i, ch in enumerate(value):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch in "[{(":
                depth += 1
            elif ch in "]})":
                depth = max(depth - 1, 0)
            elif ch == "," and depth == 0 and (not keyed or _KEY.match(value, i + 1)):
                out.append(value[start:i])
                start = i + 1
        out.append(value[start:])
    return [v.strip() for v in out if v.strip()]


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    return split_list(values)


def _split_keyed(values: Optional[List[str]]) -> Optional[List[str]]:
    return split_list(values, keyed=True)


def _formats(values: Optional[List[str]]) -> Optional[List[str]]:
    items = split_list(values)
    bad = [v for v in items or [] if v not in REPORT_FORMATS]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not one of {', '.join(map(repr, REPORT_FORMATS))}.")
    return items


def _complete(names: Callable[[], List[str]]) -> Callable[[str], List[str]]:
    """Shell completion from a registry, read when a completion is asked for."""
    return lambda incomplete: [n for n in names() if n.startswith(incomplete)]


# --- the registries, read when a help text or a completion needs them (each loads its layer: torch) -----------------

def model_names() -> List[str]:
    """capsprobe's registered models (:func:`capsprobe.models.native_models`)."""
    from .models import native_models  # lazy: the registry loads torch and timm

    return native_models()


def dataset_names() -> List[str]:
    """The registered data sets (:func:`capsprobe.data.list_datasets`)."""
    from .data import list_datasets  # lazy: the registry loads torch

    return [spec.name for spec in list_datasets()]


def transform_names() -> List[str]:
    """The transformation suite's registry (:data:`capsprobe.transforms.TRANSFORMS`) and its group names."""
    from .transforms.suite import GROUPS, TRANSFORMS  # lazy: the registry loads kornia

    return [*TRANSFORMS, "all", *GROUPS]


def attack_names() -> List[str]:
    """The gradient attacks: the registry's worst cases that are not geometric."""
    from .transforms.suite import TRANSFORMS  # lazy: the registry loads kornia

    return [n for n, t in TRANSFORMS.items() if t.worst_case and not t.geometric]


def _transform_help() -> str:
    from .transforms.suite import TRANSFORMS  # lazy: the registry loads kornia

    return ", ".join(f"{n} ({t.unit})" if t.unit else n for n, t in TRANSFORMS.items())


#: placeholders of the help texts and what fills them, when a command's help is shown
_FILL: dict[str, Callable[[], str]] = {
    "{models}": lambda: ", ".join(model_names()),
    "{datasets}": lambda: ", ".join(dataset_names()),
    "{transforms}": _transform_help,
    "{attacks}": lambda: ", ".join(attack_names()),
}


class _Context(typer.Context):
    """A command's context: creating one (to parse, to show help, to complete, or for the docs' generator) first
    fills the command's help texts from the registries."""

    def __init__(self, command: Any, *args: Any, **kwargs: Any) -> None:
        fill = getattr(command, "fill_help", None)
        if fill is not None:
            fill()
        super().__init__(command, *args, **kwargs)


class _Command(TyperCommand):
    """A command whose option help texts may name a registry (``{models}``, ``{datasets}``, ``{transforms}``,
    ``{attacks}``): filled once, when a context for the command is first made, so the registries (and torch) load
    only for the command that runs or shows its help, never for ``capsprobe --help``."""

    context_class = _Context
    _filled = False

    def fill_help(self) -> None:
        if self._filled:
            return
        self._filled = True
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                for key, fill in _FILL.items():
                    if key in text:
                        text = text.replace(key, fill())
                param.help = text  # type: ignore[attr-defined]  # an Option (click's, typer's) keeps its help here


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`capsprobe.runtime.atomic_write_text` (a temporary name, then a rename), imported on use: the runtime
    loads torch."""
    from .runtime import atomic_write_text as write  # lazy: see the module docstring

    write(path, text)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"capsprobe {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="capsprobe",
    help="Do capsule networks keep the pose information that convnets discard? Train, perturb, measure.\n\n"
         + LIST_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show defaults as [value]: print brackets, do not parse them
    context_settings={"help_option_names": ["-h", "--help"]},
)
command = functools.partial(app.command, cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})


# options several commands share
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")]
ReplaceReport = Annotated[bool, typer.Option("--force", help="Replace an existing report folder.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
RunsDir = Annotated[Optional[Path], typer.Option(help="Where the runs go [runs/<name>-<size>].")]


_VERBOSE = {"on": False}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _clean_errors(fn: Callable) -> Callable:
    """Turn capsprobe's own errors and the system's (``OSError``: disk full, permission denied) into
    ``error: <one line>`` and exit status 1 (``-v`` adds the traceback). Anything else is a bug and keeps its
    traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CapsprobeError, OSError) as exc:  # OSError: a full disk, a read-only folder, a vanished file
            if _VERBOSE["on"]:
                traceback.print_exc()
            text = render(getattr(exc, "template", str(exc)), _flag).strip()
            message = text.splitlines()[0] if text else type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages; show the traceback of an error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print capsprobe's version and exit."),
) -> None:
    from .runtime import tune_cpu_allocator  # lazy: the runtime loads torch, which a command's own layer needs anyway

    _VERBOSE["on"] = verbose
    tune_cpu_allocator()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)


def _model_options(items: List[str]) -> dict:
    """``KEY=VALUE`` strings -> options; a value is read as TOML (``false``, ``9``, ``[64, 64, 32]``), else kept as
    the bare string (``routing=none``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--option takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


@command()
@_clean_errors
def train(
    model: Optional[str] = typer.Option(None, help="{models}, or any timm convnet by name (resnet18; `capsprobe "
                                        "list --timm`) [capsnet].", autocompletion=_complete(model_names)),
    dataset: Optional[str] = typer.Option(None, help="{datasets} [mnist-sample].",
                                          autocompletion=_complete(dataset_names)),
    epochs: Optional[int] = typer.Option(None, min=1, max=MAX_EPOCHS, help="Epochs (with --target-accuracy: the most) [10]."),
    target_accuracy: Optional[float] = typer.Option(
        None, help="Stop after the first epoch whose validation accuracy reaches this fraction (matched training)."),
    val_every: Optional[int] = typer.Option(
        None, min=1, max=10**9, help="With --target-accuracy: also validate every N steps and stop at the first that reaches it."),
    batch_size: Optional[int] = typer.Option(None, min=1, max=MAX_BATCH, help="Images per step (per process) [128]."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Adam learning rate [1e-3]."),
    lr_decay: Optional[float] = typer.Option(None, min=0.0, help="Learning-rate decay per epoch [0.96]."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**31 - 1, help="Seed for weights, data order, "
                                       "augmentation, dropout [0]."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda, cuda:N [auto]."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA [on]."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC weights and inputs [off]."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the training objective [off]."),
    max_shift: Optional[int] = typer.Option(None, min=0, max=MAX_SHIFT, help="Random shift augmentation in px, 0 = off [2]."),
    augment: Optional[Augment] = typer.Option(None, help="Training images only, after the shift: rotate (uniform "
                                              "angle in [-180, 180), the full circle), affine (the suite's affine "
                                              "warp) or none [none]."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most this many images per split (quick runs)."),
    num_iters: Optional[int] = typer.Option(None, min=1, max=100, help="CapsNet routing iterations [3]."),
    option: Optional[List[str]] = typer.Option(
        None, "--option", "-o", callback=_split_keyed, help="Model options KEY=VALUE (list; TOML values): "
        "routing=none, transformation=shared, squash=false, loss=ce, kernel_size=9, pool=avg, channels=[64,64,32]."),
    recon_weight: Optional[float] = typer.Option(None, min=0.0, help="CapsNet reconstruction loss weight, 0 = off "
                                                 "[0.0005]."),
    label: Optional[str] = typer.Option(None, help="The variant's name in run folders and tables [the model name]."),
    task: Optional[Task] = typer.Option(None, help="What the run learns: classify, multimnist, viewpoint (novel "
                                        "viewpoints; a smallnorb-* or *-viewpoint data set) or upside-down "
                                        "[classify]."),
    data_root: Optional[Path] = typer.Option(None, help="Folder holding torchvision data sets."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Download missing data [on]."),
    out: Optional[Path] = typer.Option(None, help="Run directory [runs/<model>-<dataset>]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last complete epoch."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out."),
    allow_device_change: bool = typer.Option(
        False, "--allow-device-change", help="With --resume: go on even on another kind of device or in another "
        "precision than the run's checkpoint was trained in (refused otherwise)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model and write a run directory (config, weights, history, metrics, checkpoint)."""
    from .training.loop import fit  # lazy: the command's own layer loads on use
    from .training.runs import (  # lazy: the command's own layer loads on use
        CONFIG,
        RunConfig,
        read_config,
        read_metrics,
        run_name,
        with_overrides,
    )

    if resume and force:
        raise typer.BadParameter("--resume and --force exclude each other")
    base = RunConfig()
    if out is None:
        name, data, s = label or model or base.model, dataset or base.dataset, seed if seed is not None else base.seed
        out = Path("runs") / run_name(name, s, dataset=data)
    if resume and (out / CONFIG).is_file():
        base = read_config(out)[0]  # options left out keep the stored values
    kwargs = dict(base.model_kwargs)
    if num_iters is not None:
        kwargs["num_iters"] = num_iters
    kwargs.update(_model_options(option or []))
    config = with_overrides(
        base, model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay,
        seed=seed, device=device, amp=amp, max_shift=max_shift, augment=_value(augment), limit=limit,
        data_root=str(data_root) if data_root is not None else None, download=download,
        target_accuracy=target_accuracy, val_every=val_every, channels_last=channels_last, compile=compile, recon_weight=recon_weight,
        label=label, task=_value(task),
    )
    config = with_overrides(config, model_kwargs=kwargs)
    path = fit(config, out, resume=resume, force=force, progress=progress, allow_device_change=allow_device_change)
    metrics = read_metrics(path)
    typer.echo(f"test accuracy {metrics.get('test_accuracy', float('nan')):.4f}  run: {path}")


def _first_sentence(doc: Optional[str]) -> str:
    """A docstring's first sentence on one line, reST markup removed (a registry entry's short description)."""
    text = " ".join((doc or "").strip().split("\n\n", 1)[0].split()).replace("``", "")
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    for match in re.finditer(r"[.!?](?=\s|$)", text):
        head = text[:match.end()]
        # not inside parentheses, not an abbreviation: "(Mazzia et al. 2021)", "e.g."
        if head.count("(") <= head.count(")") and not re.search(r"\b(al|e\.g|i\.e|vs|cf)\.$", head):
            return head
    return text


@command("list")
def list_(
    timm_models: bool = typer.Option(False, "--timm", help="Also list every timm model name."),
) -> None:
    """List what capsprobe knows, from its registries: models, data sets, transformations, metrics and attacks."""
    import timm  # lazy: the command's own layer loads on use

    from .data import list_datasets  # lazy: the command's own layer loads on use
    from .metrics.registry import METRICS  # lazy: the command's own layer loads on use
    from .transforms.suite import GROUPS, TRANSFORMS  # lazy: the command's own layer loads on use

    def section(title: str, rows: list[tuple[str, str]]) -> None:
        typer.echo(f"{title}:")
        width = max((len(name) for name, _ in rows), default=0)
        for name, text in rows:
            typer.echo(f"  {name:<{width}}  {text}".rstrip())

    attacks = attack_names()
    section("models (capsprobe)", [(n, _first_sentence(timm.models.model_entrypoint(n).__doc__))
                                   for n in model_names()])
    if timm_models:
        section("models (timm)", [(n, "") for n in timm.list_models()])
    else:
        typer.echo("  + any timm convnet by name, e.g. resnet18, mobilenetv3_small_100 (--timm lists them)")
    section("data sets", [(s.name, f"{s.in_chans}x{s.img_size}x{s.img_size}, {s.num_classes} classes: {s.description}")
                          for s in list_datasets()])
    section("transforms (-t)", [(n, f"{t.kind}, {t.unit}: {_first_sentence(t.fn.__doc__)}")
                                for n, t in TRANSFORMS.items() if n not in attacks]
            + [("all", "the suite")] + [(g, f"the group: {', '.join(m)}") for g, m in GROUPS.items()])
    section("metrics", [(n, f"{m.label} ({m.better} is better)" if m.better in ("higher", "lower") else m.label)
                        for n, m in METRICS.items()])
    section("attacks (--attack)", [(n, _first_sentence(TRANSFORMS[n].fn.__doc__)) for n in attacks])


@command()
@_clean_errors
def bench(
    model: Optional[List[str]] = typer.Option(None, callback=_split, autocompletion=_complete(model_names), help=(
        "Models to measure (list): {models}, or a timm convnet [capsnet, capsnet_small, baseline_cnn, resnet18].")),
    batch_size: int = typer.Option(128, min=1, max=MAX_BATCH, help="Images per step."),
    steps: int = typer.Option(5, min=1, max=10_000, help="Timed steps per measurement (after 2 warm-up steps)."),
    device: Device = "auto",
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC weights and inputs."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the training objective (slow to start)."),
    kernels: Kernels = typer.Option(Kernels.fast, help="fast (fused routing, the stem convolution's CPU weight "
                                    "gradient), eager (their references), or both: eager and fast steps alternated "
                                    "in one process, with the speed-up."),
    profile: int = typer.Option(0, min=0, max=1000, help="Also list the N operators with the most self time in a training "
                                "step (both paths with --kernels both)."),
) -> None:
    """Print training and inference images/s and peak memory per model on this machine."""
    from .bench import DEFAULT_MODELS, KERNELS, run_benchmarks  # lazy: the command's own layer loads on use

    kernels = _value(kernels)
    if kernels not in KERNELS:  # pragma: no cover - the parser checks the choice (Kernels holds KERNELS' names)
        raise typer.BadParameter(f"--kernels takes {', '.join(KERNELS)}, got {kernels!r}")
    results = run_benchmarks(tuple(model) if model else DEFAULT_MODELS, batch_size=batch_size, steps=steps,
                             device=device, amp=amp, channels_last=channels_last, compile=compile, kernels=kernels,
                             profile_ops=profile)
    both = kernels == "both"
    extra = " | eager train img/s | speed-up" if both else ""
    typer.echo(
        f"| model | params | device | amp | kernels | train img/s | eval img/s | peak MiB ({results[0].memory_kind}) "
        f"| non-conv share of a training step{extra} |"
    )
    typer.echo("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---:" + (" | ---: | ---: |" if both else " |"))
    for r in results:
        share = "-" if r.conv_share is None else f"{max(0.0, 1.0 - r.conv_share):.0%}"
        row = (f"| {r.model} | {r.params:,} | {r.device} | {_setting(r)} | {r.kernels} | {r.train_images_per_s:,.0f} | "
               f"{r.eval_images_per_s:,.0f} | {r.peak_memory_mib:,.0f} | {share} |")
        if both:
            eager = r.eager_train_images_per_s
            row += (" - | - |" if eager is None else
                    f" {eager:,.0f} | {r.train_images_per_s / eager:.2f}x |")
        typer.echo(row)
    for r in results:
        for label, ops in ((r.kernels if r.kernels != "both" else "fast", r.top_ops), ("eager", r.eager_top_ops)):
            if ops:
                typer.echo(f"\n{r.model} ({label}), operators by self time per training step:")
                typer.echo("| operator | ms per step | share |")
                typer.echo("| --- | ---: | ---: |")
                for op, ms, fraction in ops:
                    typer.echo(f"| {op} | {ms:,.1f} | {fraction:.0%} |")


@command()
@_clean_errors
def calibrate(
    reps: int = typer.Option(2000, min=100, max=1_000_000, help="Simulated replicates per cell."),
    images: int = typer.Option(300, min=10, max=1_000_000, help="Test images per replicate."),
    old: bool = typer.Option(False, "--old/--no-old", help="Also the old two-stage bootstrap z test (slow)."),
    power_images: int = typer.Option(1000, min=10, max=1_000_000, help="Test images per replicate of the power table."),
    family: int = typer.Option(1, min=1, max=100_000, help="Conditions in the family: the power table's level is 5% / family."),
) -> None:
    """Print the paired test's false-positive rate and coverage by simulation (2-10 seeds, three seed-variance
    regimes and unequal seed variances), then its power for accuracy differences of 1, 2 and 5 points."""
    from .metrics.calibration import (  # lazy: the command's own layer loads on use
        calibration_table,
        power_table,
        tail_table,
    )

    table = calibration_table(reps=reps, images=images, methods=("calibrated", "old two-stage") if old else
                              ("calibrated",))
    typer.echo(f"False positives at nominal 5% and coverage of 95% intervals (3-point effect), {reps} replicates "
               f"of {images} images (Monte-Carlo se of a 5% rate: {100 * table['fpr_mc_se'].iloc[0]:.2f} points):")
    typer.echo("| method | regime | seeds | false positives | coverage | mean width (points) |")
    typer.echo("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in table.itertuples(index=False):
        typer.echo(f"| {r.method} | {r.regime} | {r.seeds} | {100 * r.fpr:.2f}% | {100 * r.coverage:.2f}% | "
                   f"{r.width_points:.1f} |")
    tail = tail_table(reps=5 * reps)
    typer.echo(f"\nFalse positives at 0.1% (the corrected levels), {5 * reps} replicates of 200 images: on the seed "
               "level's df (what Holm and the adjusted intervals use) and on the Satterthwaite df:")
    typer.echo("| regime | seeds | seed df | Satterthwaite df |")
    typer.echo("| --- | ---: | ---: | ---: |")
    for r in tail.itertuples(index=False):
        typer.echo(f"| {r.regime} | {r.seeds} | {100 * r.tail_fpr:.2f}% | {100 * r.plugin_fpr:.2f}% |")
    power = power_table(images=power_images, family=family, reps=max(reps // 2, 100))
    typer.echo(f"\nPower at level 5% / {family}, {power_images} images:")
    typer.echo("| regime | effect (points) | seeds | power |")
    typer.echo("| --- | ---: | ---: | ---: |")
    for r in power.itertuples(index=False):
        typer.echo(f"| {r.regime} | {r.effect_points:g} | {r.seeds} | {100 * r.power:.1f}% |")


@command()
@_clean_errors
def perturb(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories written by `capsprobe train`."),
    transform: Optional[List[str]] = typer.Option(
        None, "--transform", "-t", callback=_split, autocompletion=_complete(transform_names), help=(
            "Transformations (list): {transforms}; or all (the suite), mnist-c (its 15 corruptions) [all, or none "
            "when --attack is given].")),
    magnitudes: Optional[List[str]] = typer.Option(None, "--magnitudes", "-m", callback=_split_keyed, help=(
        "Magnitudes instead of the default grid (list): rotate=0,45,90 (or 0,45,90 with one --transform); "
        "rotate=0,45,jigsaw=2,4 is -m rotate=0,45 -m jigsaw=2,4.")),
    attack: Optional[List[str]] = typer.Option(None, "--attack", callback=_split, autocompletion=_complete(attack_names),
                                               help=(
        "White-box gradient attacks (list): {attacks}. autoattack is the AutoAttack-style ensemble (per image the "
        "worst of apgd-ce, apgd-t: targeted APGD-DLR, square: 250 x --attack-steps queries); L-inf, the same as -t "
        "with --eps as their magnitudes.")),
    eps: Optional[List[str]] = typer.Option(None, "--eps", callback=_split, help="The attacks' L-inf radii in [0, 1] "
                                            "pixels (list) [0,0.05,0.1,0.2,0.3,0.5]."),
    surrogate: Optional[Path] = typer.Option(None, help="A run (usually a convnet) that pgd-transfer computes its "
                                             "attack on."),
    attack_steps: int = typer.Option(20, min=1, max=MAX_ATTACK_STEPS, help="PGD's iterations (pgd-long and APGD "
                                     "take 5x, Square 250x queries)."),
    dataset: Optional[str] = typer.Option(None, autocompletion=_complete(dataset_names), help=(
        "Data set to probe: {datasets} [the one the runs were trained on].")),
    data_root: Optional[Path] = typer.Option(None, help="Folder holding torchvision data sets [the runs' own]."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Download a missing data set "
                                            "[the runs' own setting]."),
    split: Split = typer.Option(Split.test, help="The split probed (never the training split)."),
    limit: Optional[int] = typer.Option(None, min=4, help="Probe at most this many images (stratified)."),
    batch_size: int = typer.Option(256, min=1, max=MAX_BATCH, help="Images per forward pass."),
    device: Device = "auto",
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Probe under autocast (bf16 on CUDA) instead of float32 "
                             "with TF32 off; the manifest records which."),
    seed: int = typer.Option(0, min=0, max=2**31 - 1, help="Seed of random transformations, equivariance split and "
                             "bootstrap."),
    bootstrap: int = typer.Option(1000, min=10, max=MAX_BOOTSTRAP, help="Bootstrap resamples for the 95% intervals."),
    out: Optional[Path] = typer.Option(None, help="Report folder [reports/<runs>]."),
    reference: Optional[str] = typer.Option(None, help="A model (or run label) to set every other model against "
                                            "in ablation.csv (e.g. the full CapsNet of an ablation)."),
    lie: bool = typer.Option(False, "--lie/--no-lie", help="Also measure Lie derivatives (rotation, translation, "
                             "scale, shear): LEE, fitted generators, the composition of rotations, per-layer "
                             "profiles (lie.csv, lie_layers.csv, composition.csv)."),
    force: ReplaceReport = False,
    progress: Progress = True,
) -> None:
    """Probe trained runs with the transformation suite; write results.parquet, summary.csv, manifest.json."""
    from .pipeline import perturb_to  # lazy: the command's own layer loads on use
    from .probe import ProbePlan  # lazy: the command's own layer loads on use
    from .report import compact_table  # lazy: the command's own layer loads on use

    transform, magnitudes = _with_attacks(transform, magnitudes or [], attack, eps)
    # the plan, built once: unknown names and magnitudes fail before anything is loaded; perturb checks it against
    # the data set's images before probing
    plan = ProbePlan.from_options(
        transform, magnitudes or [], seed=seed, limit=limit, split=_value(split), bootstrap=bootstrap, reference=reference,
        surrogate=str(surrogate) if surrogate is not None else None, lie=lie, batch_size=batch_size, device=device,
        amp=amp, progress=progress, attack_steps=attack_steps)
    if out is None:
        out = Path("reports") / "+".join(p.resolve().name for p in run_dirs)
    result, path = perturb_to([str(p) for p in run_dirs], plan, out, force=force, dataset=dataset,
                              data_root=str(data_root) if data_root else None, download=download)
    typer.echo(compact_table(result.metrics))
    t = result.timing
    if "images" in t and "total" in t:  # a task's own evaluation (MultiMNIST) may time nothing
        typer.echo(f"{int(t['images'])} images, {t['total']:.1f} s (transforms {t.get('transform', 0):.1f} s, "
                   f"forward {t.get('forward', 0) + t.get('clean', 0):.1f} s, metrics {t.get('metrics', 0):.1f} s"
                   + (f", Lie {t['lie']:.1f} s" if "lie" in t else "") + ")")
    typer.echo(f"report: {path}")


def _with_attacks(transform: list[str] | None, magnitudes: list[str], attack: list[str] | None,
                  eps: list[str] | None) -> tuple[list[str], list[str]]:
    """``--attack a,b --eps e1,e2`` as transformations with magnitudes (the probe's conditions, so the paired
    comparisons see attacks like any transformation); the suite runs beside them only when ``-t`` asks for it."""
    if attack is None:
        if eps is not None:
            raise typer.BadParameter("--eps needs --attack")
        return transform or ["all"], magnitudes
    names = list(dict.fromkeys(attack))
    gradient = attack_names()
    bad = [n for n in names if n not in gradient]
    if not names or bad:
        raise typer.BadParameter(f"--attack takes {', '.join(gradient)}, got {','.join(attack)!r}")
    extra = [f"{n}={','.join(eps)}" for n in names] if eps else []
    return list(transform or []) + [n for n in names if n not in (transform or [])], magnitudes + extra


@command()
@_clean_errors
def report(
    report_dir: Path = typer.Argument(..., help="A folder written by `capsprobe perturb` (or `run`, `demo`)."),
    recompare: bool = typer.Option(False, "--recompare", help="First recompute comparison.csv, differences.csv and "
                                   "ablation.csv from the folder's per-image rows with the current test."),
    formats: List[str] = typer.Option(["png", "tex"], "--formats", callback=_formats,
                                      metavar="<" + "|".join(REPORT_FORMATS) + ">",
                                      autocompletion=_complete(lambda: list(REPORT_FORMATS)), help=(
        "What to write beside report.html (list): png (figures, always), pdf and svg (the figures as vector files, "
        "fonts embedded), tex (the shown tables as LaTeX booktabs beside their CSV, in tables/).")),
) -> None:
    """Render figures, tables, report.md and a self-contained report.html from a perturb folder's files alone."""
    from .pipeline import recompare as recompute  # lazy: the command's own layer loads on use
    from .pipeline import write_report  # lazy: the command's own layer loads on use

    chosen = ",".join(formats)
    path = recompute(report_dir, chosen) if recompare else write_report(report_dir, chosen)
    typer.echo(f"report: {path}")


@command()
@_clean_errors
def claims(
    reports: Optional[List[Path]] = typer.Argument(None, help="Report folders [every folder under reports/ with a "
                                                   "manifest.json]."),
    study: Path = typer.Option(Path("reports/claims.csv"), help="Where the study-wide family is written."),
    exclude: List[str] = typer.Option(["null", "demo"], "--exclude", callback=_split, help=(
        "Report folders left out when none are given (list): the A/A calibration (null) and the one-seed examples "
        "(demo, and demo-<size> of the other sizes) are not claims about models.")),
) -> None:
    """Test each report's declared claims (its experiment's [[claims]]) and the study-wide family over all of them:
    claims.csv in each folder, the study table at --study."""
    from .pipeline import rederive_claims  # lazy: the command's own layer loads on use
    from .report.verdicts import study_markdown  # lazy: the command's own layer loads on use

    folders = list(reports) if reports else sorted(p.parent for p in Path("reports").glob("*/manifest.json")
                                                   if not _excluded(p.parent.name, exclude))
    if not folders:
        raise typer.BadParameter("no report folders given and none under reports/")
    table = rederive_claims(folders, study)
    atomic_write_text(study.with_suffix(".md"), study_markdown(table))
    for r in table.itertuples(index=False):
        p = f"{float(r.p_study):.2g}" if float(r.p_study) == float(r.p_study) else "-"  # NaN: not testable
        typer.echo(f"{r.report}: {r.claim}: {r.verdict_study} (study p {p})")
    typer.echo(f"study: {study} and {study.with_suffix('.md')} ({len(table)} claims in {table['report'].nunique()} "
               "reports)")


def _file_sizes(ctx: typer.Context, incomplete: str) -> List[str]:
    """``run --size`` completion: the sizes the experiment file on the command line defines (read as TOML, nothing
    imported), else the names every file uses."""
    path = ctx.params.get("experiment")
    try:
        sizes = list(tomllib.loads(Path(path).read_text())["sizes"]) if path else []
    except (OSError, ValueError, KeyError, TypeError):
        sizes = []
    return [s for s in sizes or [m.value for m in DemoSize] if s.startswith(incomplete)]


def _excluded(name: str, exclude: List[str]) -> bool:
    """A report folder ``capsprobe claims`` leaves out: named in ``exclude``, or a demo's own size folder
    (``demo-tiny``) when ``demo`` is."""
    return name in exclude or ("demo" in exclude and name.startswith("demo-"))


def _deprecated_size(token: str) -> str:
    """The demo command's token normalisation: its former size name becomes the current one, with a notice (the
    parser compares choices through it, so ``--size small`` is read as ``--size quick``)."""
    if token in DEPRECATED_SIZES:
        new = DEPRECATED_SIZES[token].value
        typer.echo(f"warning: --size {token} is deprecated; it is now called {new}", err=True)
        return new
    return token


@command(context_settings={"help_option_names": ["-h", "--help"], "token_normalize_func": _deprecated_size})
@_clean_errors
def demo(
    size: DemoSize = typer.Option(DemoSize.quick, help=(
        "A size of experiments/demo.toml: tiny (seconds), quick (about 8 min on 2 CPU cores), paper (GPU); small is "
        "quick's former name.")),
    device: Device = "auto",
    out: Optional[Path] = typer.Option(None, help=f"Report folder [{DEMO_OUT} for the quick size (the committed "
                                       f"example), {DEMO_OUT}-<size> for the others]."),
    runs_dir: RunsDir = None,
    force: ReplaceReport = False,
    progress: Progress = True,
) -> None:
    """The main job in one command: train a CapsNet and a convnet, perturb with the whole suite, report."""
    from .pipeline import run_demo  # lazy: the command's own layer loads on use

    chosen = _value(size)
    path = run_demo(size=chosen, out=demo_out(chosen) if out is None else out, runs_dir=runs_dir, device=device,
                    force=force, progress=progress)
    typer.echo(f"report: {path}")


@command()
@_clean_errors
def run(
    experiment: Path = typer.Argument(..., help="An experiment file, e.g. experiments/affnist.toml."),
    size: str = typer.Option("quick", metavar="<tiny|quick|paper|...>", autocompletion=_file_sizes, help=(
        "A size the file defines: tiny (seconds), quick (2 CPU cores), paper (GPU), or another of its own "
        "(null.toml's aa; completion lists the file's).")),
    device: Device = "auto",
    data_root: Optional[Path] = typer.Option(None, help="Folder holding torchvision data sets (e.g. ../shared/data)."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Download a missing data set into "
                                            "the data root [the file's [train] download, on]."),
    out: Optional[Path] = typer.Option(None, help="Report folder [reports/<experiment name>]."),
    runs_dir: RunsDir = None,
    force: ReplaceReport = False,
    progress: Progress = True,
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=1024, help=(
        "Train this many runs at once in worker processes: one GPU each (round-robin over CUDA_VISIBLE_DEVICES), "
        "or the CPU threads split between them. Finished runs are reused, a killed one resumes.")),
    launcher: Launcher = typer.Option(Launcher.local, help="local (this machine, --jobs workers) or slurm (one array "
                                      "job through submitit, a run per task; the probe and report run here once all "
                                      "finish)."),
    partition: Optional[str] = typer.Option(None, help="Slurm partition [the cluster's default]."),
    time_min: int = typer.Option(240, min=1, max=60 * 24 * 365, help="Slurm: each run's time limit, minutes."),
    gpus_per_run: int = typer.Option(1, min=0, max=64, help="Slurm: GPUs per run."),
    cpus_per_run: int = typer.Option(8, min=1, max=1024, help="Slurm: CPU cores per run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the file and print the plan (runs, conditions, an "
                                 "estimated wall time from a training step per model measured now); train, load "
                                 "and write nothing."),
    allow_device_change: bool = typer.Option(
        False, "--allow-device-change", help="Resume a killed run even on another kind of device or in another "
        "precision than its checkpoint was trained in (refused otherwise)."),
) -> None:
    """Run an experiment file: train (reusing finished runs), perturb, report."""
    from .pipeline import dry_run as plan_only  # lazy: the command's own layer loads on use
    from .pipeline import run_experiment  # lazy: the command's own layer loads on use
    from .training.launch import SlurmOptions  # lazy: the command's own layer loads on use

    if dry_run:
        for line in plan_only(experiment, size=size, device=device, out=out):
            typer.echo(line)
        return

    slurm = SlurmOptions(partition=partition, time_min=time_min, gpus=gpus_per_run, cpus=cpus_per_run)
    path = run_experiment(experiment, size=size, device=device, data_root=str(data_root) if data_root else None,
                          out=out, runs_dir=runs_dir, force=force, progress=progress, jobs=jobs,
                          launcher=_value(launcher),
                          slurm=slurm, download=download, allow_device_change=allow_device_change)
    typer.echo(f"report: {path}")


@app.command()
@_clean_errors
def ledger(
    experiments: Path = typer.Option(Path("experiments"), help="Folder of experiment files (their [[claims]])."),
    reports: Path = typer.Option(Path("reports"), help="Folder of committed reports (manifests, claims.csv)."),
    out: Path = typer.Option(Path("reports/ledger.md"), help="The ledger page (its table beside it as .csv)."),
    readme: Path = typer.Option(Path("README.md"), help="README whose block between the ledger markers is "
                                "replaced by the summary table."),
    no_readme: bool = typer.Option(False, "--no-readme", help="Leave the README as it is."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when the page, its table or the "
                               "README's block differ from what would be written."),
) -> None:
    """The claims ledger: claim by claim, the source's words and numbers, the protocol run, our estimate with its
    study-wide interval and verdict (from reports/claims.csv: run `capsprobe claims` first)."""
    from .report.ledger import ledger_outputs, ledger_table  # lazy: the command's own layer loads on use
    from .runtime import atomic_write_text  # lazy

    table = ledger_table(experiments, reports)
    outputs = ledger_outputs(table, out, None if no_readme else readme)
    if check:
        stale = [str(p) for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        if stale:
            typer.echo(f"out of date: {', '.join(stale)} (run `capsprobe ledger`)", err=True)
            raise typer.Exit(1)
        typer.echo(f"ledger up to date ({len(table)} claims)")
        return
    for path, text in outputs.items():
        atomic_write_text(path, text)
    typer.echo(f"ledger: {', '.join(str(p) for p in outputs)} ({len(table)} claims)")


def main() -> None:
    """Console-script entry point."""
    app()
