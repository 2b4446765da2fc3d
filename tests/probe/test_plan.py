"""The probe plan: built once from options or an experiment file, checked against the data set's images before any
training, and a dry run that prints it and writes nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import capsprobe.data.datasets as datasets
from capsprobe.cli import app
from capsprobe.data import ImageSplit, get_spec
from capsprobe.errors import InvalidInputError
from capsprobe.experiment import ExperimentError, load_experiment
from capsprobe.probe import ProbePlan, Subject, run_probe
from capsprobe.tasks import get_task
from capsprobe.transforms import Transform, Transformed

runner = CliRunner()
EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.toml"))


def _sizes(path: Path) -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    return list(tomllib.loads(path.read_text())["sizes"])


@pytest.fixture
def no_data(monkeypatch):
    """Loading any data set fails: what is checked must be known from the registry alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("a data set was loaded")

    # the pipeline first: patching it by name imports it, and an import after capsprobe.data's patch would bind the
    # refusal as the pipeline's own load_dataset, which the teardown would then "restore" for every later test
    monkeypatch.setattr("capsprobe.pipeline.load_dataset", refuse)  # bound when the pipeline was imported
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr("capsprobe.data.load_dataset", refuse)


@pytest.mark.parametrize("path, size", [(p, s) for p in EXPERIMENTS for s in _sizes(p)],
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_every_size_of_every_experiment_file_has_a_plan_that_fits_its_data(path, size, no_data):
    exp = load_experiment(path, size)  # validates the plan when the task probes transformations
    task = get_task(exp.train.get("task", "classify"))
    plan = exp.probe_plan()
    assert plan.conditions >= len(plan.transforms) >= 1
    assert (plan.seed, plan.limit, plan.split, plan.bootstrap, plan.reference, plan.lie) == (
        exp.probe_seed, exp.probe_limit, exp.split, exp.bootstrap, exp.reference, exp.lie)
    if task.suite:
        spec = get_spec(exp.dataset)
        assert plan.validate_for(spec, task.input_size(spec.img_size)) is plan


def test_the_plan_resolves_names_and_adds_the_identity():
    plan = ProbePlan.from_options(["rotate", "jigsaw"], ["rotate=45,90"], seed=3, n_boot=20)
    assert [t.name for t in plan.transforms] == ["rotate", "jigsaw"]
    assert plan.magnitudes["rotate"] == (0, 45.0, 90.0) and plan.magnitudes["jigsaw"] == (1, 2, 4, 7)
    assert plan.conditions == 7 and plan.seed == 3 and plan.bootstrap == 20
    same = ProbePlan.from_options(["rotate", "jigsaw"], ["rotate=45,90"], seed=3, n_boot=20)
    assert hash(plan) == hash(same) and plan == same and len({plan, same}) == 1  # a frozen plan is hashable
    assert plan != ProbePlan.from_options(["rotate", "jigsaw"], ["rotate=45"], seed=3, n_boot=20)
    assert ProbePlan.from_options(["rotate"], {"rotate": [0, 30]}).magnitudes["rotate"] == (0.0, 30.0)
    with pytest.raises(InvalidInputError, match="not probed"):
        ProbePlan.from_options(["rotate"], {"flip": ["horizontal"]})
    with pytest.raises(InvalidInputError, match="split must be test or val"):
        ProbePlan.from_options(["rotate"], split="train")
    with pytest.raises(TypeError):
        ProbePlan.from_options(["rotate"], bogus=1)


def test_a_jigsaw_grid_that_does_not_divide_the_image_is_refused():
    plan = ProbePlan.from_options(["jigsaw"])
    plan.validate(1, 28)
    with pytest.raises(InvalidInputError, match=r"cifar10's 3x32x32 images: jigsaw grid 7 does not divide"):
        plan.validate_for(get_spec("cifar10"))
    ProbePlan.from_options(["jigsaw"], ["jigsaw=1,2,4,8"]).validate_for(get_spec("cifar10"))


def test_a_translation_past_the_canvas_is_refused():
    plan = ProbePlan.from_options(["translate"], ["translate=0,4,8"])
    plan.validate(1, 28)
    plan.validate(1, 9)
    with pytest.raises(InvalidInputError, match="translate by 8 px moves a 8x8 image off its canvas"):
        plan.validate(1, 8)
    with pytest.raises(InvalidInputError, match="translate by -8 px"):
        ProbePlan.from_options(["translate"], ["translate=-8"]).validate(1, 6, 40)


def test_a_transformation_for_other_channels_is_refused():
    def gray(images, level, seed=0):
        return Transformed(images.mean(1, keepdim=True).expand_as(images) * 0 + images)

    rgb_only = Transform("desaturate", gray, (0, 1), 0, "strength", "nuisance", 0, 1, geometric=False,
                         fits=lambda m, c, h, w: None if c == 3 else f"desaturate needs 3-channel images, got {c}")
    plan = ProbePlan.from_options([rgb_only])
    plan.validate(3, 32)
    with pytest.raises(InvalidInputError, match="mnist's 1x28x28 images: desaturate needs 3-channel images, got 1"):
        plan.validate_for(get_spec("mnist"))


def test_rotations_fit_every_image():
    # no rotation grid option beyond 90 degrees to refuse: decodability keeps the nuisance angles (below 90) itself
    ProbePlan.from_options(["rotate"]).validate(1, 5)


def test_an_experiment_whose_plan_does_not_fit_its_data_is_refused_before_training(tmp_path, no_data):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[data]\ndataset = "cifar10"\n[probe]\ntransforms = ["jigsaw", "rotate"]\n'
                    '[sizes.tiny]\nmodels = [{ model = "capsnet_small", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match=r"bad.toml:5: size 'tiny': the probe plan does not fit cifar10's "
                                              r"3x32x32 images: jigsaw grid 7 does not divide"):
        load_experiment(path, "tiny")
    result = runner.invoke(app, ("run", str(path), "--size", "tiny", "--dry-run"))
    assert result.exit_code == 1 and "jigsaw grid 7 does not divide the image size 32x32" in result.output
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


def test_run_probe_takes_a_plan_or_its_options_and_checks_it_against_the_split():
    split = ImageSplit(torch.zeros(8, 1, 30, 30, dtype=torch.uint8), torch.arange(8) % 2)
    subject = Subject("flat", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(900, 2)))
    with pytest.raises(InvalidInputError, match="jigsaw grid 4 does not divide the image size 30x30"):
        run_probe([subject], split, ["jigsaw"], {"jigsaw": [4]}, progress=False)
    plan = ProbePlan.from_options(["rotate"], progress=False)
    with pytest.raises(InvalidInputError, match="either a plan or its options"):
        run_probe([subject], split, plan=plan, seed=1)


def test_perturb_refuses_a_plan_that_does_not_fit_the_runs_data(tiny_runs, tmp_path):
    result = runner.invoke(app, ["perturb", str(tiny_runs["rgb"]), "-t", "jigsaw", "--out", str(tmp_path / "r"),
                                 "--no-progress", "--device", "cpu"])
    assert result.exit_code == 1
    assert "test-rgb32's 3x32x32 images: jigsaw grid 7 does not divide" in result.output
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, no_data):
    monkeypatch.chdir(tmp_path)
    demo = Path(__file__).resolve().parents[2] / "experiments" / "demo.toml"
    result = runner.invoke(app, ("run", str(demo), "--size", "tiny", "--dry-run", "--device", "cpu"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "capsnet_small x seed 0: 1 epoch" in out and "resnet18 x seed 0: 1 epoch" in out
    # tiny: rotate 3, flip 3, translate 2, scale 2, shear 2, affine 2, jigsaw 2, swap 3 magnitudes
    assert "19 conditions per run (8 transformations x their magnitudes)" in out and "jigsaw: 1, 4" in out
    assert "estimated wall time" in out and "img/s for capsnet_small" in out and "measured now on cpu" in out
    assert "report folder" not in out
    assert list(tmp_path.iterdir()) == []
    # a report folder the run would refuse without --force is named, and the dry run still succeeds (no
    # throughput measured this time: the lines are the command's)
    from capsprobe.pipeline import dry_run
    from capsprobe.runtime import write_marker

    older = tmp_path / "reports" / "demo"
    older.mkdir(parents=True)
    (older / "report.md").write_text("an older report\n")
    named = f"report folder {Path('reports') / 'demo'} exists"
    lines = dry_run(demo, "tiny", device="cpu", measure=False)
    assert f"{named} and was not written by capsprobe: the run refuses it, even with --force" in lines
    write_marker(older, "report")
    lines = dry_run(demo, "tiny", device="cpu", measure=False)
    assert f"{named}: the run needs --force" in lines and lines[-1].startswith("dry run: nothing")
    assert not any("report folder" in line for line in dry_run(demo, "tiny", measure=False, out=tmp_path / "new"))
    assert list(tmp_path.iterdir()) == [tmp_path / "reports"]
    assert sorted(os.listdir(older)) == [".capsprobe", "report.md"]


def test_perturb_reads_the_older_calls_into_one_plan():
    """``perturb(dirs, ["rotate"], magnitude_specs=[...])``, as before the plan: the same plan as the new call."""
    from capsprobe.pipeline import plan_of

    plan = ProbePlan.from_options(["rotate"], ["rotate=0,45"], seed=2)
    assert plan_of(["rotate"], {"magnitude_specs": ["rotate=0,45"], "seed": 2}) == plan
    assert plan_of(("rotate",), {"magnitudes": {"rotate": [45]}, "seed": 2}) == plan
    assert plan_of(None, {"transforms": ["rotate"], "magnitude_specs": ["rotate=45"], "seed": 2}) == plan
    assert plan_of(plan, {}) is plan
    with pytest.raises(InvalidInputError, match="not both"):
        plan_of(plan, {"seed": 1})
    with pytest.raises(InvalidInputError, match="magnitudes or magnitude_specs"):
        plan_of(None, {"magnitudes": {}, "magnitude_specs": []})
    with pytest.raises(InvalidInputError, match="given twice"):
        plan_of(["rotate"], {"transforms": ["flip"]})


def test_a_condition_given_twice_is_refused_before_anything_runs():
    """Duplicate magnitudes crashed after the whole probe; ``-m`` given twice for one transformation kept the last."""
    with pytest.raises(InvalidInputError, match="rotate magnitude 45 is given twice"):
        ProbePlan.from_options(["rotate"], ["rotate=0,45,45"])
    with pytest.raises(InvalidInputError, match="rotate magnitude 45 is given twice"):
        ProbePlan.from_options(["rotate"], {"rotate": [45, 45.0]})
    with pytest.raises(InvalidInputError, match="magnitudes for rotate are given twice"):
        ProbePlan.from_options(["rotate", "flip"], ["rotate=0,45", "rotate=90"])
    with pytest.raises(InvalidInputError, match="fgsm magnitude 0.1 is given twice"):
        ProbePlan.from_options(["fgsm"], ["fgsm=0.1,0.1"])
    assert ProbePlan.from_options(["rotate"], ["rotate=0,45,90"]).magnitudes["rotate"] == (0.0, 45.0, 90.0)


@pytest.mark.parametrize("seed", [-5, 2**31, 1.7, True])
def test_the_probe_seed_is_a_nonnegative_32_bit_integer(seed):
    with pytest.raises(InvalidInputError, match="probe seed"):
        ProbePlan.from_options(["rotate"], seed=seed)


def test_bad_seeds_are_refused_at_the_edge(tmp_path):
    result = runner.invoke(app, ["perturb", "--seed", "-5", str(tmp_path)])
    assert result.exit_code == 2 and "--seed" in result.output  # a usage error, before any run is read
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[data]\ndataset = "mnist-sample"\n[probe]\nseed = "abc"\n[sizes.tiny]\n'
                    'models = [{ model = "capsnet_small", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match=r"s.toml:5: 'seed' must be int, got 'abc'"):
        load_experiment(path, "tiny")
    path.write_text(path.read_text().replace('seed = "abc"', "seed = 1.7"))
    with pytest.raises(ExperimentError, match="'seed' must be int, got 1.7"):
        load_experiment(path, "tiny")


def test_the_dry_runs_estimate_counts_the_images_a_run_reads(monkeypatch, no_data):
    """demo --size quick trains on mnist-sample's 3,600 training digits (4,000 less 10% validation) and probes its
    1,000 test digits under 51 conditions and the clean pass: with every model measured at 3,600 train and 52,000
    eval img/s, training is (30 + 8 epochs) x 1 s and the probe 2 models x 52,000 / 52,000 = 2 s."""
    import types

    import capsprobe.bench as bench
    from capsprobe.pipeline import dry_run

    monkeypatch.setattr(bench, "bench_model", lambda *a, **kw: types.SimpleNamespace(
        train_images_per_s=3600.0, eval_images_per_s=52_000.0, device="cpu"))
    demo = Path(__file__).resolve().parents[2] / "experiments" / "demo.toml"
    line = next(x for x in dry_run(demo, "quick", device="cpu") if x.startswith("estimated wall time"))
    assert line.startswith("estimated wall time: 40 s (38 s training"), line
    assert "3,600 images per epoch from the training split of mnist-sample (less 10% for validation)" in line
    assert "; 2 s of probe forward passes" in line


def test_the_dry_runs_estimate_trains_on_the_familiar_views_only(monkeypatch, no_data):
    """viewpoint3d --size quick trains on synthNORB's familiar azimuths (6 of 18: 8,100 of the 24,300 training
    images, less 10% validation = 7,290 an epoch), not on MNIST's 60,000 (the estimate read 27 h before); its
    probe reads the 24,300 test images once. Every model at 7,290 train and 24,300 eval img/s: training is
    (4 x 5 x 10 + 5 x 20 epochs) x 1 s = 300 s, the probe 25 runs x 1 s."""
    import types

    import capsprobe.bench as bench
    from capsprobe.pipeline import dry_run

    monkeypatch.setattr(bench, "bench_model", lambda *a, **kw: types.SimpleNamespace(
        train_images_per_s=7290.0, eval_images_per_s=24_300.0, device="cpu"))
    path = Path(__file__).resolve().parents[2] / "experiments" / "viewpoint3d.toml"
    for size in ("quick", "quick-elevation"):
        line = next(x for x in dry_run(path, size, device="cpu") if x.startswith("estimated wall time"))
        assert line.startswith("estimated wall time: 5 min (5 min training"), line
        assert "7,290 images per epoch from the training split of synthnorb-" in line
        assert "; 25 s of probe forward passes" in line


def test_the_dry_runs_probe_counts_each_inplane_viewpoint_digit_twice(monkeypatch, no_data):
    """An in-plane novel-viewpoint set tests every digit at a familiar and at a novel pose: viewpoint.toml's
    quick-no69 probes 2 x 8,033 = 16,066 images of MNIST without 6 and 9 (its size's probe_limit, 10,000, caps the
    count it reads: the estimate takes the limit), and mnist-sample-no69 holds 3,200 training and 800 test digits."""
    from capsprobe.pipeline import _known_counts

    assert _known_counts("mnist-no69-viewpoint") == ("mnist-no69-viewpoint", 48_133, 16_066)
    assert _known_counts("mnist-sample-no69") == ("mnist-sample-no69", 3_200, 800)
    assert _known_counts("mnist-sample-no69-viewpoint")[1:] == (3_200, 1_600)
    assert _known_counts("synthnorb-elevation")[1:] == (8_100, 24_300)
    assert _known_counts("mnist-canvas40")[0] == "mnist"
