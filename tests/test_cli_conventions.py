"""The command line by its ecosystem's conventions (issue 51, item 4): ``--version``, ``-h``, choices listed in the
help and checked by the parser, one list syntax, the same size names for ``demo`` and ``run``, help and ``capsprobe
list`` generated from the registries, a ``--help`` that loads no torch, shell completion; and the tiny demo's own
report folder (item 5).

Options are parsed without running their command (``make_context``: click's parse, callbacks included), so these
tests train nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from capsprobe import cli
from capsprobe._version import __version__
from capsprobe.cli import app

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
WIDE = {"terminal_width": 10_000}  # help on one line per option: no name broken at a hyphen


def _group():
    return typer.main.get_command(app)


def _commands() -> list[str]:
    group = _group()
    return group.list_commands(group.context_class(group, info_name="capsprobe"))


def _params(*args: str) -> dict:
    """The parsed (and converted, call-backed) options of ``capsprobe ARGS`` without running the command (the tests
    spell a command line as a tuple or as arguments: a list starting with a training command's name marks a test
    as one that trains, tests/conftest.py)."""
    group = _group()
    parent = group.context_class(group, info_name="capsprobe")
    cmd = group.get_command(parent, args[0])
    return cmd.make_context(args[0], list(args[1:]), parent=parent).params


# --- --version, -h, completion ---------------------------------------------------------------------------------------

def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"capsprobe {__version__}\n"


def test_dash_h_is_help_on_the_app_and_every_command():
    top = runner.invoke(app, ["-h"])
    assert top.exit_code == 0 and top.output == runner.invoke(app, ["--help"]).output
    assert "-h, --help" in top.output
    assert {"train", "perturb", "report", "run", "demo", "list", "bench"} <= set(_commands())
    for name in _commands():
        short = runner.invoke(app, [name, "-h"])
        assert short.exit_code == 0, (name, short.output)
        assert short.output.startswith(f"Usage: capsprobe {name}") and "-h, --help" in short.output, name


def test_shell_completion_is_offered():
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


# --- choices ---------------------------------------------------------------------------------------------------------

def test_each_choice_is_the_librarys_set():
    """The CLI's enums are the library's constants and registries, name for name and in order."""
    from capsprobe.bench import KERNELS
    from capsprobe.probe.plan import SPLITS
    from capsprobe.report.render import REPORT_FORMATS
    from capsprobe.training.launch import LAUNCHERS
    from capsprobe.training.objectives import TRAINING_TASKS
    from capsprobe.training.runs import AUGMENTS

    assert tuple(m.value for m in cli.Kernels) == KERNELS
    assert tuple(m.value for m in cli.Split) == SPLITS
    assert tuple(m.value for m in cli.Launcher) == LAUNCHERS
    assert {m.value for m in cli.Augment} == set(AUGMENTS)
    assert tuple(m.value for m in cli.Task) == tuple(TRAINING_TASKS)
    assert cli.REPORT_FORMATS == REPORT_FORMATS
    demo = tomllib.loads((ROOT / "experiments" / "demo.toml").read_text())
    assert tuple(m.value for m in cli.DemoSize) == tuple(demo["sizes"])


@pytest.mark.parametrize("command, option, choices", [
    ("bench", "--kernels", "<fast|eager|both>"),
    ("perturb", "--split", "<test|val>"),
    ("demo", "--size", "<tiny|quick|paper>"),
    ("run", "--size", "<tiny|quick|paper|...>"),
    ("run", "--launcher", "<local|slurm>"),
    ("train", "--augment", "<none|rotate|affine>"),
    ("train", "--task", "<classify|multimnist|viewpoint|upside-down>"),
    ("report", "--formats", "<png|pdf|svg|tex>"),
])
def test_choices_are_listed_in_the_help(command, option, choices):
    result = runner.invoke(app, [command, "-h"], **WIDE)
    assert result.exit_code == 0, result.output
    assert f"{option} {choices}" in result.output


@pytest.mark.parametrize("args, bad", [
    (("bench", "--kernels", "fused"), "fused"),
    (["perturb", "--split", "train", "x"], "train"),
    (("demo", "--size", "huge"), "huge"),
    (("run", "x.toml", "--launcher", "pbs"), "pbs"),
    (("train", "--task", "segment"), "segment"),
    (("train", "--augment", "flip"), "flip"),
    (["report", "x", "--formats", "png,gif"], "gif"),
])
def test_a_bad_choice_is_a_usage_error_naming_it(tmp_path, monkeypatch, args, bad):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and repr(bad) in error[0] and " is not one of " in error[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_an_enum_option_reaches_the_library_as_its_name():
    assert cli._value(_params("bench", "--kernels", "both")["kernels"]) == "both"
    assert cli._value(_params("train", "--task", "upside-down")["task"]) == "upside-down"
    assert _params("train")["task"] is None and _params("train")["augment"] is None


# --- help from the registries ------------------------------------------------------------------------------------------

def test_the_model_and_data_set_help_list_every_registered_name():
    from capsprobe.data import list_datasets
    from capsprobe.models import native_models

    train = runner.invoke(app, ("train", "-h"), **WIDE).output
    model = next(line for line in train.splitlines() if line.lstrip().startswith("--model"))
    assert all(name in model.split(", ") or f" {name}," in model for name in native_models())
    dataset = next(line for line in train.splitlines() if line.lstrip().startswith("--dataset"))
    for spec in list_datasets():
        assert spec.name in dataset
    assert not any(key in train for key in cli._FILL)  # no placeholder left


def test_the_transform_and_attack_help_list_the_registry():
    from capsprobe.transforms.suite import TRANSFORMS

    text = runner.invoke(app, ["perturb", "-h"], **WIDE).output
    transform = next(line for line in text.splitlines() if "--transform" in line)
    attack = next(line for line in text.splitlines() if line.lstrip().startswith("--attack "))
    for name, t in TRANSFORMS.items():
        assert f"{name} (" in transform, name
        assert (name in attack) == (t.worst_case and not t.geometric), name
    assert not any(key in text for key in cli._FILL)


def test_list_shows_every_registry_in_sections():
    from capsprobe.data import list_datasets
    from capsprobe.metrics.registry import METRICS
    from capsprobe.models import native_models
    from capsprobe.transforms.suite import TRANSFORMS

    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    sections: dict[str, list[str]] = {}
    for line in result.output.splitlines():
        if not line.startswith(" "):
            sections[line.rstrip(":")] = []
        elif line.startswith("  ") and not line.startswith("  +"):
            title = list(sections)[-1]
            sections[title].append(line.split()[0])
    assert list(sections) == ["models (capsprobe)", "data sets", "transforms (-t)", "metrics", "attacks (--attack)"]
    assert sections["models (capsprobe)"] == native_models()
    assert sections["data sets"] == [s.name for s in list_datasets()]
    assert sections["metrics"] == list(METRICS)
    attacks = [n for n, t in TRANSFORMS.items() if t.worst_case and not t.geometric]
    assert sections["attacks (--attack)"] == attacks
    assert set(sections["transforms (-t)"]) == (set(TRANSFORMS) - set(attacks)) | {"all", "mnist-c"}
    capsnet = next(line for line in result.output.splitlines() if line.split()[:1] == ["capsnet"])
    assert "8,215,568 parameters" in capsnet  # its entry point's description


def test_a_first_sentence_drops_the_markup():
    assert cli._first_sentence("Rotate by ``angle`` degrees.  More.\n\nNext") == "Rotate by angle degrees."
    assert cli._first_sentence("The warp (:func:`~capsprobe.x.affnist_warp`): a, b.") == "The warp (capsprobe.x.affnist_warp): a, b."
    assert cli._first_sentence("Routing (Sabour et al. 2017), e.g. dynamic. Then.") == (
        "Routing (Sabour et al. 2017), e.g. dynamic.")
    assert cli._first_sentence("No full stop") == "No full stop"
    assert cli._first_sentence(None) == ""


# --- one list syntax -----------------------------------------------------------------------------------------------

def test_the_app_help_states_the_list_syntax():
    assert "comma-separated" in " ".join(runner.invoke(app, ["-h"]).output.split())


@pytest.mark.parametrize("values, keyed, expected", [
    (["rotate", "flip"], False, ["rotate", "flip"]),
    (["rotate,flip", "shear"], False, ["rotate", "flip", "shear"]),
    (["rotate, flip,"], False, ["rotate", "flip"]),
    (["rotate=0,45,90"], True, ["rotate=0,45,90"]),
    (["rotate=0,45,jigsaw=2,4"], True, ["rotate=0,45", "jigsaw=2,4"]),
    (["0,45,90"], True, ["0,45,90"]),
    (["channels=[64,64,32],routing=none"], True, ["channels=[64,64,32]", "routing=none"]),
    (['name="a,b",squash=false'], True, ['name="a,b"', "squash=false"]),
    (None, False, None),
])
def test_split_list(values, keyed, expected):
    assert cli.split_list(values, keyed=keyed) == expected


@pytest.mark.parametrize("command, repeated, commas, name", [
    (["perturb", "x"], ["-t", "rotate", "-t", "flip"], ["-t", "rotate,flip"], "transform"),
    (["perturb", "x"], ["-m", "rotate=0,45", "-m", "jigsaw=2,4"], ["-m", "rotate=0,45,jigsaw=2,4"], "magnitudes"),
    (["perturb", "x"], ["--attack", "fgsm", "--attack", "pgd"], ["--attack", "fgsm,pgd"], "attack"),
    (["perturb", "x"], ["--eps", "0", "--eps", "0.1"], ["--eps", "0,0.1"], "eps"),
    (("bench",), ["--model", "capsnet_small", "--model", "resnet18"], ["--model", "capsnet_small,resnet18"], "model"),
    (["report", "x"], ["--formats", "png", "--formats", "pdf"], ["--formats", "png,pdf"], "formats"),
    (["claims"], ["--exclude", "null", "--exclude", "demo"], ["--exclude", "null,demo"], "exclude"),
    (("train",), ["-o", "routing=none", "-o", "channels=[4,4,2]"], ["-o", "routing=none,channels=[4,4,2]"], "option"),
])
def test_every_list_option_takes_both_spellings(command, repeated, commas, name):
    a, b = _params(*command, *repeated)[name], _params(*command, *commas)[name]
    assert list(a) == list(b) and len(a) == 2, (a, b)


def test_attacks_and_radii_in_either_spelling_make_the_same_conditions():
    assert cli._with_attacks(None, [], ["fgsm", "pgd"], ["0", "0.1"]) == (
        ["fgsm", "pgd"], ["fgsm=0,0.1", "pgd=0,0.1"])
    assert cli._with_attacks(["rotate"], [], ["fgsm"], None) == (["rotate", "fgsm"], [])
    with pytest.raises(typer.BadParameter, match="--attack takes fgsm, pgd"):
        cli._with_attacks(None, [], ["rotate"], None)


# --- the demo's sizes and folders ----------------------------------------------------------------------------------

def test_demo_and_run_name_the_sizes_alike():
    from capsprobe.experiment import ExperimentError, load_experiment

    demo = ROOT / "experiments" / "demo.toml"
    assert load_experiment(demo, "quick").name == "demo"
    with pytest.raises(ExperimentError, match="no size 'small'"):
        load_experiment(demo, "small")
    assert cli._value(_params("demo")["size"]) == "quick" == cli._value(_params("run", "x.toml")["size"])


def test_small_is_a_deprecated_name_of_quick(capsys):
    assert cli._value(_params("demo", "--size", "small")["size"]) == "quick"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --size small is deprecated; it is now called quick"]
    assert cli._value(_params("demo", "--size", "tiny")["size"]) == "tiny"
    assert capsys.readouterr().err == ""


@pytest.fixture
def fake_demo(monkeypatch):
    """``capsprobe.pipeline`` replaced by a module whose run_demo records its arguments (nothing trains)."""
    calls: list[dict] = []

    def record(**kwargs):
        calls.append(kwargs)
        return Path(kwargs["out"]) / "report.html"

    monkeypatch.setitem(sys.modules, "capsprobe.pipeline", types.SimpleNamespace(run_demo=record))
    return calls


@pytest.mark.parametrize("args, out", [
    (["--size", "tiny"], "reports/demo-tiny"),
    (["--size", "paper"], "reports/demo-paper"),
    ([], "reports/demo"),
    (["--size", "quick"], "reports/demo"),
    (["--size", "tiny", "--out", "elsewhere"], "elsewhere"),
])
def test_each_demo_size_writes_its_own_folder(fake_demo, tmp_path, monkeypatch, args, out):
    """Only the quick size writes the committed example's folder; the tiny demo never meets it."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ("demo", *args, "--no-progress"))
    assert result.exit_code == 0, result.output
    assert [(c["size"], Path(c["out"])) for c in fake_demo] == [
        ((args[1] if args else "quick"), Path(out))]
    assert result.output.strip() == f"report: {Path(out) / 'report.html'}"


def test_the_claims_study_leaves_out_every_demo_folder():
    assert cli._excluded("demo-tiny", ["null", "demo"]) and cli._excluded("demo", ["null", "demo"])
    assert not cli._excluded("routing", ["null", "demo"]) and not cli._excluded("demo-tiny", ["null"])


def test_run_size_completion_reads_the_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[sizes.tiny]\n[sizes.aa]\n')
    ctx = types.SimpleNamespace(params={"experiment": path})
    assert cli._file_sizes(ctx, "") == ["tiny", "aa"]  # type: ignore[arg-type]
    assert cli._file_sizes(ctx, "a") == ["aa"]  # type: ignore[arg-type]
    nothing = types.SimpleNamespace(params={"experiment": tmp_path / "missing.toml"})
    assert cli._file_sizes(nothing, "") == ["tiny", "quick", "paper"]  # type: ignore[arg-type]


# --- a light start ---------------------------------------------------------------------------------------------------

def test_the_help_loads_no_torch():
    """``import capsprobe.cli`` and ``capsprobe --help`` import neither torch nor the other heavy libraries (the
    registries load with the command that needs them)."""
    code = textwrap.dedent("""
        import sys
        import capsprobe.cli
        heavy = ("torch", "timm", "kornia", "pandas", "matplotlib", "seaborn", "numpy", "scipy")
        print(sorted(m for m in heavy if m in sys.modules))
        sys.argv = ["capsprobe", "--help"]
        try:
            capsprobe.cli.main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "[]" and lines[-1] == "[]", done.stdout
