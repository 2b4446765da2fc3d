"""Experiment files: every file parses, malformed files are named by line and key, a tiny run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.experiment import ExperimentError, load_experiment

runner = CliRunner()
EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))


def test_there_are_experiment_files():
    assert {p.stem for p in EXPERIMENTS} >= {"ablation", "affnist", "demo", "multimnist", "robustness",
                                             "viewpoint"}


def _sizes(path: Path) -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    return list(tomllib.loads(path.read_text())["sizes"])


@pytest.mark.parametrize("path, size", [(p, s) for p in EXPERIMENTS for s in _sizes(p)],
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_every_experiment_file_parses(path, size):
    exp = load_experiment(path, size)
    assert exp.name == path.stem and exp.models and all(m.epochs >= 1 for m in exp.models)


def test_a_size_sets_the_attack_steps_and_the_file_the_default():
    attacks = EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("attacks")]
    assert load_experiment(attacks, "tiny").probe_plan().attack_steps == 3
    assert load_experiment(attacks, "quick").probe_plan().attack_steps == 20


def test_a_size_can_leave_out_the_lie_probe_the_file_asks_for():
    demo = EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("demo")]
    assert load_experiment(demo, "quick").probe_plan().lie is True
    assert load_experiment(demo, "tiny").probe_plan().lie is False


def test_demo_sizes_set_bootstrap_magnitudes_and_training():
    tiny = load_experiment(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("demo")], "tiny")
    assert tiny.bootstrap == 50 and "jigsaw=1,4" in tiny.magnitudes and tiny.train["batch_size"] == 16
    small = load_experiment(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("demo")], "quick")
    assert small.bootstrap == 1000 and small.magnitudes == [] and "batch_size" not in small.train


# files whose tiny size would run a code path another file's already runs end to end (the suite's budget: one
# end-to-end run per kind of experiment): corruptions.toml is robustness.toml's classify suite on other transforms,
# robustness.toml's tiny size a subset of demo.toml's (tests/report/test_report.py runs the demo end to end),
# routing.toml's the same suite on the backbone heads (each head trained and probed in tests/models/test_routings.py);
# viewpoint3d.toml's the viewpoint task on synthNORB (whose loading through the smallNORB reader is
# tests/data/test_synthnorb.py's);
# its own parts (the MNIST-C transforms, the mean corruption condition and table) have their unit tests, and every
# size of every file is loaded and checked by test_every_experiment_file_parses
SAME_PATH = {"corruptions": "robustness", "robustness": "demo", "routing": "demo", "viewpoint3d": "viewpoint"}


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem not in SAME_PATH], ids=lambda p: p.stem)
def test_tiny_variant_runs_end_to_end(path, tiny_experiment, monkeypatch):
    folder, _ = tiny_experiment(path.stem)
    monkeypatch.chdir(folder)
    report = folder / "reports" / path.stem
    exp = load_experiment(path, "tiny")
    assert (report / "report.html").is_file() and (report / "summary.csv").is_file()
    runs = {f"{m.variant}-seed{s}" for m, s in exp.jobs()}
    surrogate = {f"{job[0].variant}-seed{job[1]}" for job in [exp.surrogate_job()] if job is not None}  # not compared
    assert {p.name for p in (folder / "runs" / f"{path.stem}-tiny").iterdir()} == runs | surrogate  # named one way
    if exp.train.get("task") == "multimnist":
        summary = pd.read_csv(report / "summary.csv")
        assert set(summary["metric"]) == {"accuracy", "recon_error"}
        assert (report / "figures" / "segmentation-capsnet_small-seed0.png").is_file()
    elif exp.train.get("task") == "viewpoint":
        per_seed = pd.read_csv(report / "viewpoint.csv")
        assert set(per_seed["run"]) == runs and per_seed["novel_error"].between(0, 1).all()
        assert (per_seed["params"] > 0).all() and (per_seed["mflops"] > 0).all()  # every run's cost beside it
        summary = pd.read_csv(report / "summary.csv")
        assert set(summary["magnitude"]) == {"familiar", "novel"} and set(summary["metric"]) == {"accuracy"}
        assert "Familiar and novel test error" in (report / "report.md").read_text()
        if any(m.model.startswith("capsnet_em") for m in exp.models):  # Hinton et al.'s numbers beside the EM model
            assert "Published novel-viewpoint errors" in (report / "report.md").read_text()
        assert (report / "figures" / "viewpoint_error.png").is_file()
    elif exp.train.get("task") == "upside-down":
        summary = pd.read_csv(report / "summary.csv", dtype={"magnitude": str})
        assert set(summary["run"]) == runs and set(summary["magnitude"]) == {"0", "90", "180", "270", "circle"}
        assert (report / "upside_angles.csv").is_file() and (report / "figures" / "upside_down.png").is_file()
    else:
        assert set(pd.read_csv(report / "overview.csv")["run"]) == runs


@pytest.mark.parametrize("name", ["multimnist", "affnist"])
def test_finished_runs_are_reused(name, tiny_experiment, monkeypatch):
    folder, _ = tiny_experiment(name)
    monkeypatch.chdir(folder)
    path = EXPERIMENTS[[p.stem for p in EXPERIMENTS].index(name)]
    # a second call only re-evaluates (and needs --force for the report)
    refused = runner.invoke(app, ["run", str(path), "--size", "tiny", "--device", "cpu", "--no-progress"])
    assert refused.exit_code == 1 and "--force" in refused.output
    again = runner.invoke(app, ["run", str(path), "--size", "tiny", "--device", "cpu", "--no-progress", "--force"])
    assert again.exit_code == 0, again.output
    assert "is already complete" in again.output and "epoch 1/1" not in again.output


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('name = "x"\n[data]\ndataset = "mnist"\n[train]\nlearning_rate = 1\n[sizes.quick]\nmodels = []\n',
         ":5: unknown key 'learning_rate' in [train]"),
        ('name = "x"\n[data]\ndataset = "mnist"\n[train]\nmax_shift = "six"\n[sizes.quick]\nmodels = [{ model = "capsnet", epochs = 1 }]\n',
         ":5: 'max_shift' must be int"),
        ('name = "x"\n[data]\ndataset = "mnist"\n[sizes.quick]\nmodels = [{ model = "capsnet" }]\n',
         "every model needs 'model' and 'epochs'"),
        ('name = "x"\n[data]\ndataset = "mnist"\n[sizes.quick]\n\nlimt = 3\nmodels = [{ model = "capsnet", epochs = 1 }]\n',
         ":6: unknown key 'limt' in [sizes.quick]"),
        ('name = "x"\n[data\n', "line 2"),
        ('name = "x"\n[data]\ndataset = "mnist"\n[sizes.quick]\nattack_steps = 0\n'
         'models = [{ model = "capsnet", epochs = 1 }]\n',
         "attack_steps must be an integer >= 1"),
        ('name = "x"\n[data]\ndataset = "mnist"\n[probe]\nattack_steps = "many"\n[sizes.quick]\n'
         'models = [{ model = "capsnet", epochs = 1 }]\n',
         ":5: 'attack_steps' must be int"),
    ],
)
def test_malformed_file_names_the_line_and_key(tmp_path, body, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path, "quick")
    assert fragment in str(err.value) and str(path) in str(err.value)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1


def test_unknown_size_lists_the_sizes():
    with pytest.raises(ExperimentError, match="no size 'huge'; it has: tiny, quick, paper"):
        load_experiment(EXPERIMENTS[0], "huge")


def test_a_size_can_ask_for_matched_training(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[data]\ndataset = "mnist-sample"\n[sizes.tiny]\nmodels = [{ model = "resnet18", '
                    'epochs = 3 }]\n[sizes.tiny.train]\ntarget_accuracy = 0.9\n')
    assert load_experiment(path, "tiny").train == {"target_accuracy": 0.9}
    path.write_text(path.read_text().replace("0.9", '"high"'))
    with pytest.raises(ExperimentError, match="target_accuracy"):
        load_experiment(path, "tiny")
    path.write_text(path.read_text().replace('"high"', "1.5"))
    with pytest.raises(ExperimentError, match="target_accuracy"):
        load_experiment(path, "tiny")


def test_a_model_entry_can_carry_its_own_training_options(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[data]\ndataset = "mnist-sample"\n[sizes.tiny]\n[sizes.tiny.train]\nlr = 0.002\n'
                    '[[sizes.tiny.models]]\nmodel = "resnet18"\nepochs = 3\ntrain = { target_accuracy = 0.9 }\n'
                    '[[sizes.tiny.models]]\nmodel = "capsnet_small"\nepochs = 3\n')
    exp = load_experiment(path, "tiny")
    assert exp.models[0].train == {"target_accuracy": 0.9} and exp.models[1].train == {} and exp.train == {"lr": 0.002}
    path.write_text(path.read_text().replace("target_accuracy = 0.9", "target_acuracy = 0.9"))
    with pytest.raises(ExperimentError, match="target_acuracy"):
        load_experiment(path, "tiny")
    path.write_text(path.read_text().replace("target_acuracy = 0.9", "recon_weight = -1.0"))
    with pytest.raises(ExperimentError, match="recon_weight"):
        load_experiment(path, "tiny")


def test_every_ablation_variant_gets_its_options_in_its_run_config():
    """Every one-component change of the full ablation is its own labelled run with its options (checked on the
    quick size's configurations, without training)."""
    exp = load_experiment(EXPERIMENTS[[p.stem for p in EXPERIMENTS].index("ablation")], "quick")
    configs = {f"{m.variant}-seed{s}": exp.run_config(m, s) for m, s in exp.jobs() if s == 0}
    assert len(configs) == 9
    assert configs["no-routing-seed0"].model_kwargs["routing"] == "none"
    assert configs["shared-transformation-seed0"].model_kwargs["transformation"] == "shared"
    assert configs["no-squash-seed0"].model_kwargs["squash"] is False
    assert configs["cross-entropy-seed0"].model_kwargs["loss"] == "ce"
    assert configs["no-reconstruction-seed0"].recon_weight == 0 and configs["capsnet_small-seed0"].recon_weight > 0
    assert configs["cnn-9x9-seed0"].model_kwargs["kernel_size"] == 9
    assert configs["cnn-avgpool-seed0"].model_kwargs["pool"] == "avg"
    assert configs["cnn-seed0"].target_accuracy == 0.95 and configs["cnn-seed0"].val_fraction == 0.02
    assert configs["no-routing-seed0"].label == "no-routing" and configs["capsnet_small-seed0"].label is None


def test_ablation_tiny_trains_labelled_variants_and_writes_the_ablation_table(tiny_experiment):
    """Each variant is its own labelled run with its options (its config.json), and the report sets each against the
    full CapsNet (variant - reference) in ablation.csv and in an Ablation section."""
    import json

    folder, _ = tiny_experiment("ablation")
    runs = folder / "runs" / "ablation-tiny"
    configs = {p.name: json.loads((p / "config.json").read_text())["config"] for p in runs.iterdir()}
    assert configs["no-routing-seed0"]["model_kwargs"]["routing"] == "none"
    assert configs["no-reconstruction-seed0"]["recon_weight"] == 0 and configs["capsnet_small-seed0"]["recon_weight"] > 0
    assert configs["cnn-seed0"]["model"] == "baseline_cnn_pool"
    assert configs["no-routing-seed0"]["label"] == "no-routing" and configs["capsnet_small-seed0"]["label"] is None
    report = folder / "reports" / "ablation"
    ablation = pd.read_csv(report / "ablation.csv", dtype={"magnitude": str})
    assert set(ablation["reference"]) == {"capsnet_small"}
    assert set(ablation["variant"]) == {c for c in (p.rsplit("-seed", 1)[0] for p in configs) if c != "capsnet_small"}
    assert {"accuracy", "equivariance_gain", "decodability"} <= set(ablation["metric"])
    text = (report / "report.md").read_text()
    assert "## Ablation" in text and "no-routing" in text


def test_labels_must_be_distinct_and_the_reference_must_be_a_model(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('name = "a"\n[data]\ndataset = "mnist-sample"\n[sizes.tiny]\nmodels = [{ model = "capsnet_small", '
                    'epochs = 1 }, { model = "capsnet_small", epochs = 1, options = { routing = "none" } }]\n')
    with pytest.raises(ExperimentError, match="both called 'capsnet_small'.*distinct 'label'"):
        load_experiment(path, "tiny")
    path.write_text('name = "a"\n[data]\ndataset = "mnist-sample"\n[probe]\nreference = "full"\n[sizes.tiny]\n'
                    'models = [{ model = "capsnet_small", epochs = 1 }, { model = "capsnet_small", label = "no-routing", '
                    'epochs = 1, options = { routing = "none" } }]\n')
    with pytest.raises(ExperimentError, match="a.toml:5: .*reference 'full' is none of"):
        load_experiment(path, "tiny")
    path.write_text(path.read_text().replace('reference = "full"', 'reference = "no-routing"'))
    exp = load_experiment(path, "tiny")
    assert exp.reference == "no-routing" and [m.variant for m in exp.models] == ["capsnet_small", "no-routing"]
    path.write_text(path.read_text().replace('label = "no-routing"', 'label = "no routing!"'))
    with pytest.raises(ExperimentError, match="label"):
        load_experiment(path, "tiny")


def test_null_experiment_establishes_nothing(tiny_experiment):
    """The A/A test at its tiny size: one recipe under labels A and B with disjoint seeds (0-1 against 2-3); the
    calibrated paired test runs on every per-image metric and establishes no difference."""
    folder, _ = tiny_experiment("null")
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "null.toml", "tiny")
    assert [(m.variant, s) for m, s in exp.jobs()] == [("A", 0), ("A", 1), ("B", 2), ("B", 3)]
    diffs = pd.read_csv(folder / "reports" / "null" / "differences.csv", dtype={"magnitude": str})
    paired = diffs[diffs["metric"].isin(["accuracy", "consistency", "confidence_drop", "true_class_score"])]
    assert len(paired) and set(paired["test"]) == {"paired seeds x images t (Satterthwaite)"}
    assert (paired["df"] > 0).all() and (paired["seeds_a"] == 2).all() and (paired["seeds_b"] == 2).all()
    assert not diffs["established"].any()


def test_model_seeds_must_be_distinct_integers(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[data]\ndataset = "mnist-sample"\n[sizes.quick]\n'
                    'models = [{ model = "baseline_cnn_pool", epochs = 1, seeds = [1, 1] }]\n')
    with pytest.raises(ExperimentError, match=r"bad.toml:5: 'seeds' must be a non-empty list of distinct integers"):
        load_experiment(path, "quick")


def test_recompare_rebuilds_the_comparison_tables_from_the_folder(tiny_experiment, tmp_path):
    """`capsprobe report --recompare`: the comparison tables come back from the folder's own per-image rows (the same
    numbers the probe wrote, decodability rows included), an old table is replaced, the rest of the folder is kept."""
    import shutil

    folder, _ = tiny_experiment("null")
    report = tmp_path / "null"
    shutil.copytree(folder / "reports" / "null", report)
    before = pd.read_csv(report / "differences.csv", dtype={"magnitude": str})
    assert "decodability" in set(before["metric"])
    pd.DataFrame({"stale": [1]}).to_csv(report / "differences.csv", index=False)
    (report / "comparison.csv").unlink()
    result = runner.invoke(app, ["report", "--recompare", str(report)])
    assert result.exit_code == 0, result.output
    after = pd.read_csv(report / "differences.csv", dtype={"magnitude": str})
    # the same tables: every digit of the paired tests, the fitted probes' (ridge decoders solved in float32 by BLAS,
    # whose sums depend on the thread count) to float32 rounding
    pd.testing.assert_frame_equal(after, before, check_exact=False, rtol=1e-4, atol=1e-9)
    assert (report / "comparison.csv").is_file() and (report / "results.parquet").is_file()
    assert "Satterthwaite" in (report / "report.md").read_text()
    # the declared claims (null.toml's [[claims]], hashed into the manifest before the runs) come back with them
    claims = pd.read_csv(report / "claims.csv")
    assert set(claims["declared"]) == {"before the runs"} and len(claims) == 4
    manifest = json.loads((report / "manifest.json").read_text())
    assert len(manifest["experiment"]["sha256"]) == 64 and len(manifest["claims"]) == 4
    assert "## Declared claims" in (report / "report.md").read_text()
    # a committed example report keeps no per-image rows: the paired tests as written, everything else anew, the
    # same numbers
    comparison = pd.read_csv(report / "comparison.csv", dtype={"magnitude": str})
    (report / "results.parquet").unlink()
    result = runner.invoke(app, ["report", "--recompare", str(report)])
    assert result.exit_code == 0, result.output
    again = pd.read_csv(report / "differences.csv", dtype={"magnitude": str})
    pd.testing.assert_frame_equal(again, before, rtol=1e-4)
    pd.testing.assert_frame_equal(pd.read_csv(report / "comparison.csv", dtype={"magnitude": str}), comparison,
                                  rtol=1e-5)
    # `capsprobe claims`: the study-wide family over the reports given, as CSV and Markdown
    study = tmp_path / "study.csv"
    result = runner.invoke(app, ["claims", str(report), "--study", str(study)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(study, keep_default_na=False, na_values=[""])
    assert list(table["claim"]) == list(claims["claim"]) and set(table["report"]) == {"null"}
    assert "4 declared claims in 1 reports" in study.with_suffix(".md").read_text()


def test_recompare_refuses_a_folder_without_comparisons(tiny_experiment):
    folder, _ = tiny_experiment("multimnist")
    result = runner.invoke(app, ["report", "--recompare", str(folder / "reports" / "multimnist")])
    assert result.exit_code == 1 and "has no comparison tables" in result.output


def test_a_size_can_set_its_own_protocol_and_report_folder(tmp_path):
    routing = Path(__file__).resolve().parents[1] / "experiments" / "routing.toml"
    viewpoint = load_experiment(routing, "quick-viewpoint")
    assert viewpoint.report == "routing-viewpoint" and viewpoint.dataset == "mnist-viewpoint"
    assert viewpoint.train["task"] == "viewpoint"
    affnist = load_experiment(routing, "quick-affnist")
    assert affnist.transforms == ["affnist", "rotate"] and affnist.report == "routing-affnist"
    assert load_experiment(routing, "quick").report is None and load_experiment(routing, "quick").transforms == ["all"]
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n[data]\ndataset = "mnist-sample"\n[sizes.tiny]\nreport = "../elsewhere"\n'
                    'models = [{ model = "capsnet_small", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match=r"r.toml:5: .*report"):
        load_experiment(path, "tiny")
    path.write_text('name = "r"\n[data]\ndataset = "mnist-sample"\n[sizes.tiny]\ntransforms = ["twirl"]\n'
                    'models = [{ model = "capsnet_small", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match="twirl"):
        load_experiment(path, "tiny")


@pytest.mark.trains
def test_the_report_goes_to_the_sizes_report_folder(tmp_path, monkeypatch):
    from capsprobe.pipeline import run_experiment

    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n[data]\ndataset = "mnist-sample"\n[probe]\ntransforms = ["flip"]\nbootstrap = 10\n'
                    '[sizes.tiny]\nreport = "r-flip"\nlimit = 16\nprobe_limit = 16\n'
                    'models = [{ model = "baseline_cnn_pool", epochs = 1, options = { channels = [4, 4, 4] } }]\n')
    monkeypatch.chdir(tmp_path)
    report = run_experiment(path, "tiny", device="cpu", progress=False)
    assert report == Path("reports") / "r-flip" / "report.html" and report.is_file()
    assert not (tmp_path / "reports" / "r").exists()


def test_attacks_tiny_writes_the_masking_checks_detection_and_the_attack_figure(tiny_experiment):
    folder, _ = tiny_experiment("attacks")
    report = folder / "reports" / "attacks"
    masking = pd.read_csv(report / "masking.csv")
    runs = {"capsnet_small-seed0", "baseline_cnn_pool-seed0"}
    assert set(masking["run"]) == runs
    assert {"falls to 0", "pgd >= fgsm", "more steps", "transfer <= white-box"} <= set(masking["check"])
    manifest = json.loads((report / "manifest.json").read_text())
    # the transfer attack's surrogate is a third model's run: trained beside the others, never probed or compared
    assert manifest["surrogate"] == "surrogate-test_resnet-seed0"
    assert (folder / "runs" / "attacks-tiny" / "surrogate-test_resnet-seed0" / "model.safetensors").is_file()
    assert {r["name"] for r in manifest["runs"]} == runs
    summary = pd.read_csv(report / "summary.csv", dtype={"magnitude": str})
    assert set(summary["model"]) == {"capsnet_small", "baseline_cnn_pool"}
    assert not pd.read_csv(report / "comparison.csv")["model"].str.startswith("surrogate").any()
    det = summary[summary["metric"] == "detection_auroc"]
    assert set(det["model"]) == {"capsnet_small"} and det["value"].between(0, 1).all()
    text = (report / "report.md").read_text()
    assert "Gradient-masking checks" in text and "attack_accuracy.png" in text
    assert (report / "figures" / "attack_accuracy.png").is_file()


_SURROGATE_FILE = ('name = "s"\n[data]\ndataset = "mnist-sample"\n[probe]\ntransforms = ["pgd-transfer"]\n'
                   '[sizes.tiny]\nseeds = [2, 3]\n{surrogate}\n'
                   'models = [{{ model = "capsnet_small", epochs = 2 }}, '
                   '{{ model = "baseline_cnn_pool", label = "cnn", epochs = 3 }}]\n'
                   '[sizes.tiny.train]\nbatch_size = 8\n')


def test_the_surrogate_is_a_third_model_trained_with_the_sizes_options_and_never_compared(tmp_path):
    """pgd-transfer's surrogate: a table (or a model name alone) that becomes its own run, surrogate-<model>-seed<N>,
    with the size's training options; it is none of the compared jobs, and the dry run names it as such."""
    from capsprobe.pipeline import dry_run

    path = tmp_path / "s.toml"
    path.write_text(_SURROGATE_FILE.format(
        surrogate='surrogate = { model = "resnet18", epochs = 1, seed = 7, options = { stem = "imagenet" }, '
                  'train = { lr = 0.01 } }'))
    exp = load_experiment(path, "tiny")
    spec, seed = exp.surrogate_job()
    assert (spec.model, spec.epochs, spec.options, spec.variant, seed) == (
        "resnet18", 1, {"stem": "imagenet"}, "surrogate-resnet18", 7)
    config = exp.run_config(spec, seed)
    assert config.batch_size == 8 and config.lr == 0.01 and config.variant == "surrogate-resnet18"
    assert [(m.variant, s) for m, s in exp.jobs()] == [("capsnet_small", 2), ("capsnet_small", 3), ("cnn", 2),
                                                       ("cnn", 3)]
    lines = dry_run(path, "tiny", device="cpu", measure=False)
    assert any(line.startswith("  surrogate-resnet18 x seed 7: 1 epoch") and "not probed" in line for line in lines)
    assert lines[0].startswith("s --size tiny: 4 runs")
    # a model name alone: the size's first seed and its models' most epochs
    path.write_text(_SURROGATE_FILE.format(surrogate='surrogate = "resnet18"'))
    spec, seed = load_experiment(path, "tiny").surrogate_job()
    assert (spec.model, spec.epochs, spec.options, seed) == ("resnet18", 3, {}, 2)
    # a size that does not probe pgd-transfer trains no surrogate
    path.write_text(_SURROGATE_FILE.format(surrogate='surrogate = "resnet18"\ntransforms = ["flip"]'))
    assert load_experiment(path, "tiny").surrogate_job() is None


@pytest.mark.parametrize("surrogate, named", [
    ('surrogate = "cnn"', "cnn"),  # the old form: a compared model's label
    ('surrogate = "baseline_cnn_pool"', "baseline_cnn_pool"),  # ... or its model
    ('surrogate = { model = "capsnet_small", epochs = 1 }', "capsnet_small"),
])
def test_a_surrogate_that_is_a_compared_model_is_refused(tmp_path, surrogate, named):
    """pgd-transfer computed on one of the compared runs is white-box for that run, not a transfer: one line, at
    the file's line of the surrogate."""
    path = tmp_path / "s.toml"
    path.write_text(_SURROGATE_FILE.format(surrogate=surrogate))
    with pytest.raises(ExperimentError, match=rf"s.toml:8: surrogate '{named}' is one of the compared models "
                                              r"\(baseline_cnn_pool, capsnet_small, cnn\): .*white-box"):
        load_experiment(path, "tiny")
    result = runner.invoke(app, ["run", str(path), "--size", "tiny"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("surrogate, fragment", [
    ("", ":5: pgd-transfer needs a surrogate model"),  # refused before any training, not after it
    ('surrogate = { epochs = 1 }', ":8: the surrogate needs 'model'"),
    ('surrogate = { model = "resnet18", label = "r" }', "unknown key 'label' in [sizes.tiny.surrogate]"),
    ('surrogate = 3', ":8: 'surrogate' must be str or dict"),
])
def test_a_malformed_or_missing_surrogate_is_named(tmp_path, surrogate, fragment):
    path = tmp_path / "s.toml"
    path.write_text(_SURROGATE_FILE.format(surrogate=surrogate))
    with pytest.raises(ExperimentError) as err:
        load_experiment(path, "tiny")
    assert fragment in str(err.value)


# --- the experiment files capsprobe ships (package data in a wheel, the checkout's experiments/ in an editable install)


def test_a_bare_name_is_the_packaged_experiment_from_any_folder(tmp_path, monkeypatch):
    from capsprobe.experiment import experiment_file, packaged_experiments

    monkeypatch.chdir(tmp_path)  # not the checkout: no experiments/ here
    shipped = packaged_experiments()
    assert {p.stem for p in EXPERIMENTS} <= set(shipped)
    for name in ("demo", "demo.toml", "experiments/demo.toml"):
        assert experiment_file(name).read_bytes() == (EXPERIMENTS[0].parent / "demo.toml").read_bytes(), name
    assert load_experiment("affnist", "quick").name == "affnist"


def test_a_file_that_exists_comes_before_the_packaged_one(tmp_path, monkeypatch):
    from capsprobe.experiment import demo_file, experiment_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.toml").write_text("name = 'mine'\n")
    assert experiment_file("demo.toml") == Path("demo.toml")
    assert experiment_file("demo") != Path("demo.toml")  # a bare name without the suffix is no file here
    (tmp_path / "demo").mkdir()
    assert demo_file() == EXPERIMENTS[0].parent / "demo.toml"  # the demo's file is never one of the current folder


def test_an_unknown_name_lists_what_capsprobe_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExperimentError, match=r"does not exist.*it ships: .*affnist.*demo"):
        load_experiment("nope")
    with pytest.raises(ExperimentError, match=r"^experiment file sub/demo.toml does not exist$"):
        load_experiment("sub/demo.toml")  # a path elsewhere is never replaced by a packaged file


def test_the_installed_package_data_comes_before_the_checkout(tmp_path, monkeypatch):
    """An installed wheel's ``capsprobe/experiments/demo.toml`` (importlib.resources) is the demo's file."""
    from capsprobe import experiment

    (tmp_path / "demo.toml").write_text((EXPERIMENTS[0].parent / "demo.toml").read_text())
    monkeypatch.setattr(experiment.resources, "files",
                        lambda package: tmp_path if package == experiment.PACKAGED else None)
    assert experiment.demo_file() == tmp_path / "demo.toml"
    assert experiment.packaged_experiments()["affnist"] == EXPERIMENTS[0].parent / "affnist.toml"  # the rest: checkout


def test_without_package_data_or_checkout_the_demo_says_so(tmp_path, monkeypatch):
    from capsprobe import experiment

    def missing(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(experiment.resources, "files", missing)
    monkeypatch.setattr(experiment, "__file__", str(tmp_path / "capsprobe" / "experiment.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExperimentError, match="demo.toml not found.*reinstall capsprobe"):
        experiment.demo_file()
