"""The probe on tiny trained runs, and `capsprobe perturb` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.data import load_dataset
from capsprobe.probe import IMAGE_COLUMNS, METRIC_COLUMNS, run_probe
from capsprobe.report import read_probe_outputs
from capsprobe.report.render import _meta_line
from capsprobe.training.runs import load_run
from capsprobe.transforms import SUITE, TRANSFORMS, magnitude_label

runner = CliRunner()
COMMON = {"accuracy", "consistency", "confidence_drop", "true_class_score", "ece", "ece_scaled", "invariance_error",
          "equivariance_error", "equivariance_error_pca16", "equivariance_gain", "label_r2"}
CAPSULE_ONLY = {"invariance_error_pose", "equivariance_error_pose", "equivariance_gain_pose", "recon_equivariance_error",
                "recon_fidelity_error"}


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


@pytest.fixture(scope="module")
def split():
    return load_dataset("mnist-sample", limit=40).test


#: every transformation of the suite at its identity, a nuisance and (rotate) a semantic magnitude: each kind of
#: condition, without the default grid's every angle (the default grids are the plan's, tests/probe/test_plan.py)
FEW = {"rotate": [0, 45, 180], "translate": [0, 4], "scale": [1, 0.75], "shear": [0, 0.4], "affine": [0, 1],
       "jigsaw": [1, 4]}


def test_probe_gives_every_metric_for_every_condition(runs, split):
    loaded = [load_run(runs["caps"]), load_run(runs["conv"])]
    result = run_probe(loaded, split, ["all"], magnitudes=FEW, n_boot=50, progress=False)
    m = result.metrics
    assert list(m.columns) == METRIC_COLUMNS and list(result.images.columns) == IMAGE_COLUMNS
    conditions = {(n, magnitude_label(g)): (TRANSFORMS[n], g) for n in SUITE for g in FEW.get(n, TRANSFORMS[n].grid)}
    assert set(SUITE) == {n for n, _ in conditions}
    for run in ("caps", "conv"):
        got = m[m["run"] == run]
        assert set(zip(got["transform"], got["magnitude"])) == set(conditions)
        for key, group in got.groupby(["transform", "magnitude"]):
            transform, raw = conditions[key]
            expected = COMMON | (CAPSULE_ONLY if run == "caps" else set())
            if transform.kind_at(raw) == "semantic" and raw != transform.identity:
                expected = expected | {"scramble_auroc", "scramble_selectivity"}
            assert set(group["metric"]) == expected, (run, key)
    assert m[["value", "ci_low", "ci_high"]].notna().all().all()
    assert ((m["ci_low"] <= m["value"] + 1e-9) & (m["value"] <= m["ci_high"] + 1e-9)).all()
    # the identity conditions are exact
    ident = m[(m["transform"] == "rotate") & (m["magnitude"] == "0")].set_index(["run", "metric"])["value"]
    assert ident[("caps", "consistency")] == 1 and ident[("caps", "invariance_error")] == 0
    assert ident[("conv", "invariance_error")] == 0
    fitted = m[m["metric"].str.startswith("equivariance_error")]
    assert fitted["penalty"].notna().all() and m[m["metric"] == "accuracy"]["penalty"].isna().all()
    # per run x transformation: decodability of the numeric nuisance grids, the 16-D PCA's kept variance
    over = result.tables["overview"].set_index(["run", "transform"])
    assert over.loc[("caps", "rotate"), "decodability"] == pytest.approx(over.loc[("caps", "rotate"), "decodability"])
    assert over.loc[("caps", "rotate"), "decodability_pose"] <= 1
    assert pd.isna(over.loc[("conv", "flip"), "decodability"]) and "decodability_pose" not in over.loc[("conv", "rotate")].dropna()
    kept = {e["name"]: e for e in result.manifest["runs"]}
    assert 0 < kept["conv"]["kept_variance_pca16"] <= 1 and kept["caps"]["clean_reconstruction_error"] > 0
    comp = result.tables["comparison"]  # one seed each: intervals over images, differences not testable
    dec = comp[(comp["metric"] == "decodability") & (comp["transform"] == "rotate")]
    assert len(dec) == 2 and set(dec["interval"]) == {"images only (1 seed)"} and set(dec["magnitude"]) == {"grid"}
    acc = comp[comp["metric"] == "accuracy"]
    assert set(acc["interval"]) == {"images only (1 seed; logit t)"} and set(acc["seeds"]) == {1}
    diffs = result.tables["differences"]
    assert len(diffs) and not diffs["established"].any()  # one seed each: nothing is established
    sel = result.tables["selectivity"]
    assert set(sel["transform"]) == {"rotate", "flip", "jigsaw", "swap"}
    assert set(sel["matched_transform"]) <= {"rotate", "translate", "scale", "shear", "affine"}
    # per-image rows: one per image, run and condition
    assert len(result.images) == 2 * len(conditions) * len(split)
    assert result.timing["transform"] > 0 and result.timing["forward"] > 0


def test_probe_does_not_depend_on_the_batch_size(runs, split):
    run = [load_run(runs["caps"])]
    args = dict(transforms=["affine", "jigsaw"], magnitudes={"affine": [0.5], "jigsaw": [4]}, n_boot=20, progress=False)
    a = run_probe(run, split, batch_size=7, **args).metrics
    b = run_probe(run, split, batch_size=64, **args).metrics
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)


def test_perturb_cli_writes_the_three_files(runs, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["perturb", "--transform", "flip", str(runs["caps"]), str(runs["conv"]),
                                 "--limit", "40", "--bootstrap", "50", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # caps is a CapsNet with a decoder: its reconstruction and pose-sweep grids are computed by the probe
    assert {p.name for p in out.iterdir()} == {"results.parquet", "summary.csv", "manifest.json", "overview.csv",
                                                "roc.csv", "comparison.csv", "differences.csv", "seeds.csv", "arrays",
                                                ".capsprobe"}
    assert {p.name for p in (out / "arrays").iterdir()} == {"reconstructions-caps.npz", "pose_sweep-caps.npz"}
    data = read_probe_outputs(out)
    metrics, images, manifest = data.metrics, data.images, data.manifest
    assert data.arrays["pose_sweep-caps"]["images"].shape == (16, 11, 1, 28, 28)
    recon = data.arrays["reconstructions-caps"]
    assert recon["images"].shape == (3, 8, 1, 28, 28) and list(recon["row_labels"]) == [
        "image", "flip horizontal", "reconstruction"]
    assert manifest["task"] == "classify"
    assert set(metrics["magnitude"]) == {"none", "horizontal", "vertical"}
    assert set(metrics["run"]) == {"caps", "conv"} and len(images) == 2 * 3 * 40
    assert manifest["transforms"] == {"flip": ["none", "horizontal", "vertical"]} and manifest["images"] == 40
    assert manifest["versions"]["kornia"] and manifest["seed"] == 0
    assert "flip horizontal" in result.output and f"report: {out}" in result.output


def test_perturb_default_out_and_magnitudes(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["perturb", "-t", "rotate", "-m", "0,90", str(runs["caps"]), "--limit", "20",
                                 "--bootstrap", "20", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = read_probe_outputs(tmp_path / "reports" / "caps").metrics
    assert set(metrics["magnitude"]) == {"0", "90"}


def _one_line_error(result, *fragments):
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["-t", "spin"], ["unknown transformation 'spin'", "rotate", "jigsaw"]),
        (["-t", "rotate", "-m", "0,270"], ["rotate magnitude 270", "[-180, 180]"]),
        (["-t", "flip", "-m", "sideways"], ["flip magnitude 'sideways'"]),
    ],
)
def test_perturb_bad_transform_input(runs, tmp_path, extra, fragments):
    out = tmp_path / "r"
    _one_line_error(runner.invoke(app, ["perturb", *extra, str(runs["caps"]), "--out", str(out)]), *fragments)
    assert not out.exists()


def test_perturb_attacks_a_capsnet_and_a_convnet_from_the_cli(runs, tmp_path):
    """--attack/--eps are conditions of the probe: the paired tables, the masking checks and, for the CapsNet, the
    detection AUROC come with them; the spatial worst case records its winning warp per image."""
    out = tmp_path / "attacked"
    result = runner.invoke(app, ["perturb", str(runs["caps"]), str(runs["conv"]), "--attack", "fgsm,pgd,pgd-transfer",
                                 "--eps", "0.1,0.5", "--surrogate", str(runs["conv"]), "-t", "worst-of-k", "-m",
                                 "worst-of-k=3", "--attack-steps", "4", "--limit", "12", "--bootstrap", "20", "--no-progress", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    data = read_probe_outputs(out)
    m = data.metrics
    assert set(m["transform"]) == {"fgsm", "pgd", "pgd-transfer", "worst-of-k"}
    assert set(m.loc[m["transform"] == "pgd", "magnitude"]) == {"0", "0.1", "0.5"}
    det = m[m["metric"] == "detection_auroc"]
    assert set(det["run"]) == {"caps"} and set(det["magnitude"]) >= {"0.1", "0.5"}  # the CapsNet has a decoder
    masking = pd.read_csv(out / "masking.csv")
    assert set(masking["run"]) == {"caps", "conv"} and "falls to 0" in set(masking["check"])
    assert data.manifest["surrogate"] == "conv" and data.manifest["attack_steps"] == 4
    worst = data.images[data.images["transform"] == "worst-of-k"]
    assert worst.loc[worst["magnitude"] == "3", "worst_angle"].abs().le(30).all()
    acc = m[(m["metric"] == "accuracy") & (m["run"] == "conv")].set_index(["transform", "magnitude"])["value"]
    assert acc[("pgd", "0.5")] <= acc[("pgd", "0")]


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--attack", "pgd-transfer"], ["pgd-transfer needs a surrogate"]),
        (["--attack", "pgd", "--eps", "2"], ["pgd magnitude 2", "[0, 1]"]),
    ],
)
def test_perturb_bad_attack_input(runs, tmp_path, extra, fragments):
    out = tmp_path / "r"
    _one_line_error(runner.invoke(app, ["perturb", *extra, str(runs["caps"]), "--out", str(out)]), *fragments)
    assert not out.exists()
    usage = runner.invoke(app, ["perturb", "--eps", "0.1", str(runs["caps"]), "--out", str(out)])
    assert usage.exit_code == 2 and "--eps needs --attack" in usage.output
    usage = runner.invoke(app, ["perturb", "--attack", "rotate", str(runs["caps"]), "--out", str(out)])
    assert usage.exit_code == 2 and "--attack takes" in usage.output


def test_perturb_missing_or_unreadable_run(runs, tmp_path):
    out = tmp_path / "r"
    _one_line_error(runner.invoke(app, ["perturb", "-t", "flip", str(tmp_path / "nope"), "--out", str(out)]),
                    "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    _one_line_error(runner.invoke(app, ["perturb", "-t", "flip", str(broken), "--out", str(out)]), "config.json")
    assert not out.exists()


def test_perturb_incompatible_runs(runs, tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["perturb", "-t", "flip", str(runs["caps"]), str(runs["rgb"]), "--out", str(out)])
    _one_line_error(result, "incompatible input shapes", "1x28x28", "3x32x32")
    assert not out.exists()


def test_perturb_does_not_overwrite_without_force(runs, tmp_path):
    out = tmp_path / "r"
    args = ["perturb", "-t", "swap", str(runs["caps"]), "--limit", "20", "--bootstrap", "20", "--no-progress",
            "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "summary.csv").read_bytes()
    (out / "note.txt").write_text("mine")
    _one_line_error(runner.invoke(app, [*args[:-2], "--seed", "3", "--out", str(out)]), "--force")
    assert (out / "summary.csv").read_bytes() == before and (out / "note.txt").exists()
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert not (out / "note.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_report_reader_names_the_bad_file(tmp_path):
    from capsprobe.report import ReportError

    (tmp_path / "summary.csv").write_text("a,b\n1,2\n")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "results.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(ReportError, match="summary.csv is malformed: missing columns"):
        read_probe_outputs(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ReportError, match="manifest.json is missing"):
        read_probe_outputs(tmp_path)


def test_a_reference_that_is_not_probed_is_refused_before_any_work():
    import capsprobe
    from capsprobe.errors import InvalidInputError
    from capsprobe.models import create_model
    from capsprobe.probe import run_probe

    split = capsprobe.load_dataset("mnist-sample", limit=8).test
    model = create_model("capsnet_small", conv_channels=8, primary_types=2)
    with pytest.raises(InvalidInputError, match="reference 'nope' is none of the models probed"):
        run_probe([model], split, ["rotate"], reference="nope", progress=False, n_boot=10)


def test_a_run_subject_records_its_architecture_parameters_and_flops(tmp_path):
    from types import SimpleNamespace

    from capsprobe.models import create_model, model_costs
    from capsprobe.probe import as_subject
    from capsprobe.training.runs import RunConfig

    model = create_model("capsnet_small", conv_channels=8, primary_types=2, decoder=False, img_size=(28, 32))
    run = SimpleNamespace(name="pool-seed0", path=tmp_path, model=model, metrics={},
                          input={"in_chans": 1, "img_size": [28, 32], "num_classes": 10},
                          config=RunConfig(model="capsnet_small", label="pool", seed=0))
    info = as_subject(run).info
    assert as_subject(run).ident()["model"] == "pool"  # the label names it in tables ...
    assert info["architecture"] == "capsnet_small"  # ... and the architecture says what it was built from
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] == model_costs(model, (1, 28, 32))["flops"] > 0  # at the run's own (H, W): a CapsNet refuses (W, H)
    run.input = {}
    assert as_subject(run).info["flops"] is None  # no recorded input: no FLOP count, and the probe goes on



def test_the_probe_leaves_out_the_pose_metrics_of_poses_no_loss_reaches(split, monkeypatch):
    """backbone_head_self's poses (and its representation, their flattening) are untrained projections: the probe
    keeps its scores' metrics and the Lie profile of its backbone, leaves out every representation and pose metric,
    decodability, the representation's Lie derivatives and the composition grid, and its manifest says so; the
    dynamic head beside it, whose scores read the votes, keeps them all. (The Lie probe is a stand-in that returns a
    row of each kind: what is left out is the probe's choice; tests/probe/test_lie.py measures.)"""
    from capsprobe.data import ImageSplit
    from capsprobe.models import create_model
    from capsprobe.probe import Subject, engine
    from capsprobe.probe.lie import COMPOSITION_COLUMNS, LAYER_COLUMNS, LIE_COLUMNS, LieResult

    def rows(columns, ident, **values):
        return {**dict.fromkeys(columns, 0.5), **ident, **values}

    def lie_tables(subjects, images, angles=(15.0,), **options):
        ((ident, _),) = subjects
        return LieResult(
            lie=pd.DataFrame([rows(LIE_COLUMNS, ident, generator="rotate", metric=m)
                              for m in ("lee_scores", "lee_representation", "elee_pose")], columns=LIE_COLUMNS),
            layers=pd.DataFrame([rows(LAYER_COLUMNS, ident, generator="rotate", layer=name)
                                 for name in ("backbone", "representation")], columns=LAYER_COLUMNS),
            composition=pd.DataFrame([rows(COMPOSITION_COLUMNS, ident, which="representation", a=a, b=a)
                                      for a in angles], columns=COMPOSITION_COLUMNS))

    monkeypatch.setattr(engine, "lie_tables", lie_tables)
    tiny = dict(planes=4, blocks=(1, 1, 1), caps_types=2, pose_dim=4, out_dim=4)
    subjects = [Subject(name, create_model(f"backbone_head_{name}", **tiny).eval(), model_name=name)
                for name in ("self", "dynamic")]
    result = run_probe(subjects, ImageSplit(split.images[:16], split.labels[:16]), ["rotate"],
                       magnitudes={"rotate": [0, 30]}, n_boot=10, progress=False, lie=True)
    metrics = result.metrics.groupby("run")["metric"].agg(set)
    assert metrics["self"] == {"accuracy", "consistency", "confidence_drop", "true_class_score", "ece", "ece_scaled"}
    assert {"equivariance_gain", "equivariance_error", "invariance_error", "equivariance_gain_pose"} <= metrics["dynamic"]
    over = result.tables["overview"].set_index("run")
    assert pd.isna(over.loc["self", "decodability"]) and pd.notna(over.loc["dynamic", "decodability_pose"])
    assert result.tables["lie"].groupby("run")["metric"].agg(set).to_dict() == {
        "self": {"lee_scores"}, "dynamic": {"lee_scores", "lee_representation", "elee_pose"}}
    assert result.tables["lie_layers"].groupby("run")["layer"].agg(set).to_dict() == {
        "self": {"backbone"}, "dynamic": {"backbone", "representation"}}
    assert set(result.tables["composition"]["run"]) == {"dynamic"}
    entries = {e["name"]: e for e in result.manifest["runs"]}
    assert entries["self"]["poses_trained"] is False and entries["dynamic"]["poses_trained"] is True
    assert "kept_variance_pca16" not in entries["self"] and "kept_variance_pca16" in entries["dynamic"]
    left = result.manifest["untrained_poses"]
    assert left["runs"] == ["self"] and {"decodability", "equivariance_gain", "composition"} <= set(left["left_out"])
    compared = result.tables["comparison"]
    assert set(compared[compared["model"] == "self"]["metric"]) <= metrics["self"]


class _ClassNameNobodyGave(torch.nn.Module):
    """A model whose class name must not stand in for the name it was given."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 8))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.enc(x))


def test_a_report_made_through_the_python_api_records_versions_seeds_and_the_names_given(tmp_path):
    """The API's report says what the CLI's says: library versions, each run's seed, the data set, and the models by
    the names they were given (not their class)."""
    import capsprobe
    from capsprobe import ModelAdapter, Subject

    digits = load_dataset("mnist-sample", limit=8).test
    subjects = [Subject(name, ModelAdapter(_ClassNameNobodyGave(i), representation=lambda m, x: m.enc(x)))
                for i, name in enumerate(["mine", "theirs"])]
    result = capsprobe.run_probe(subjects, digits, ["flip"], n_boot=10, progress=False, dataset="mnist-sample")
    versions = result.manifest["versions"]
    assert {"torch", "kornia", "timm", "capsprobe"} <= set(versions) and versions["capsprobe"] == capsprobe.__version__
    assert [(r["name"], r["model"], r["seed"]) for r in result.manifest["runs"]] == [("mine", "mine", 0),
                                                                                      ("theirs", "theirs", 0)]
    assert set(result.metrics["model"]) == {"mine", "theirs"}
    folder = capsprobe.write_probe_outputs(result, tmp_path / "api")
    manifest = read_probe_outputs(folder).manifest  # what the report renders from: a seed None was refused here
    line = _meta_line(manifest)  # the report's provenance line (rendering the figures takes seconds: not here)
    assert "?" not in line and "None" not in line, line
    assert f"torch {versions['torch']}, kornia {versions['kornia']}, timm {versions['timm']}" in line
    assert "mnist-sample" in line and "mine (mine, seed 0)" in line and "theirs (theirs, seed 0)" in line
    written = [p for p in folder.rglob("*") if p.suffix in (".csv", ".json", ".md")]
    assert written and not [p.name for p in written if "_ClassNameNobodyGave" in p.read_text(encoding="utf-8")]
    assert {"mine", "theirs"} <= set(pd.read_csv(folder / "summary.csv")["model"])


def test_the_api_manifest_names_the_data_set_the_runs_were_trained_on_else_unnamed():
    from capsprobe import ModelAdapter, Subject

    digits = load_dataset("mnist-sample", limit=4).test
    net = ModelAdapter(_ClassNameNobodyGave(0), representation=lambda m, x: m.enc(x))
    for info, named in (({"dataset": "mnist-sample"}, "mnist-sample"), ({}, "unnamed")):
        result = run_probe([Subject("mine", net, info=info)], digits, ["flip"], {"flip": []}, n_boot=2,
                           progress=False)
        assert result.manifest["dataset"] == named


def test_a_subject_seed_must_be_a_whole_number():
    from capsprobe import Subject
    from capsprobe.errors import InvalidInputError

    for seed in (None, 1.5, True, "0"):
        with pytest.raises(InvalidInputError, match="seed"):
            Subject("mine", torch.nn.Identity(), seed=seed)
    with pytest.raises(InvalidInputError, match="name"):
        Subject("", torch.nn.Identity())


def test_perturb_scales_each_run_by_the_temperature_of_its_own_validation_images(runs, tmp_path):
    """Issue 50's calibration: ``ece_scaled`` applies each run's temperature fitted on the validation images its
    training held out (the same stratified split: never trained on, never probed), recorded in the manifest; the
    value is the ECE of the test scores tempered by it, not the cross-fit on the test halves. The temperature is
    computed here from the model's own scores on those images (eval mode, the log of the scores)."""
    from capsprobe.metrics import confidence as C

    out = tmp_path / "report"
    result = runner.invoke(app, ["perturb", "--transform", "flip", str(runs["caps"]), str(runs["conv"]),
                                 "--limit", "40", "--bootstrap", "20", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = read_probe_outputs(out)
    splits = load_dataset("mnist-sample", limit=40)
    for name in ("caps", "conv"):
        run = load_run(runs[name])
        entry = next(e for e in data.manifest["runs"] if e["name"] == name)
        t = C.fit_temperature(C.score_logits(_scores(run, splits.val, flip=False)), splits.val.labels.numpy())
        assert entry["temperature_fit"] == "validation split" and entry["temperature_images"] == len(splits.val) == 40
        assert entry["temperature"] == pytest.approx(t, rel=1e-5)
        im = data.images[(data.images["run"] == name) & (data.images["magnitude"] == "horizontal")]
        row = data.metrics[(data.metrics["run"] == name) & (data.metrics["magnitude"] == "horizontal")
                           & (data.metrics["metric"] == "ece_scaled")]
        probs = C.tempered(C.score_logits(_scores(run, splits.test, flip=True)), t)
        labels = im.sort_values("image_id")["label"].to_numpy()
        assert row["value"].iloc[0] == pytest.approx(
            C.expected_calibration_error(probs.max(1), probs.argmax(1) == labels), abs=1e-5)


def test_the_temperature_split_is_the_runs_own_held_out_images_else_cross_fitted(tmp_path):
    """A run trained holding out 20% (not the default 10%) is fitted on *its* validation images, which share none
    with its training images or the probed test images (10% would share 320 of 400 with its training); probing the
    validation split itself (``--split val``) falls back to the cross-fit, and says so."""
    from capsprobe.metrics import confidence as C
    from capsprobe.training.loop import fit
    from capsprobe.training.runs import RunConfig

    run_dir = fit(RunConfig(model="capsnet_small", model_kwargs={"conv_channels": 8, "primary_types": 2}, epochs=1,
                            batch_size=16, limit=32, val_fraction=0.2), tmp_path / "wide", progress=False)
    held_out = load_dataset("mnist-sample", val_fraction=0.2, limit=24)
    trained_on = load_dataset("mnist-sample", val_fraction=0.2).train
    ids = {bytes(x) for x in held_out.val.images.numpy()}
    assert not ids & {bytes(x) for x in trained_on.images.numpy()}
    assert not ids & {bytes(x) for x in held_out.test.images.numpy()}
    for split, fitted in (("test", "validation split"), ("val", "cross-fitted on the clean images' halves")):
        out = tmp_path / split
        result = runner.invoke(app, ["perturb", "-t", "flip", str(run_dir), "--limit", "24", "--split", split,
                                     "--bootstrap", "10", "--no-progress", "--out", str(out)])
        assert result.exit_code == 0, result.output
        entry = read_probe_outputs(out).manifest["runs"][0]
        assert entry["temperature_fit"] == fitted
    entry = read_probe_outputs(tmp_path / "test").manifest["runs"][0]
    t = C.fit_temperature(C.score_logits(_scores(load_run(run_dir), held_out.val, flip=False)),
                          held_out.val.labels.numpy())
    assert entry["temperature_images"] == len(held_out.val) and entry["temperature"] == pytest.approx(t, rel=1e-5)
    assert read_probe_outputs(tmp_path / "val").manifest["runs"][0]["temperature"] is None


def _scores(run, split, flip: bool) -> np.ndarray:
    from capsprobe.models import adapt

    adapter = adapt(run.model).eval()
    x = split.images.float() / 255
    with torch.inference_mode():
        return adapter.outputs(x.flip(-1) if flip else x).scores.float().numpy()


def test_a_subject_without_a_validation_temperature_is_cross_fitted_and_says_so():
    """A model probed from Python without a validation temperature: ``ece_scaled`` is the cross-fit on the clean
    halves (the value :func:`cross_fitted_probabilities` gives), and the manifest says which fit it was."""
    from capsprobe import ModelAdapter, Subject
    from capsprobe.metrics import confidence as C

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    digits = load_dataset("mnist-sample", limit=40).test
    subject = Subject("lin", ModelAdapter(net, representation=lambda m, x: x.flatten(1)))
    result = run_probe([subject], digits, ["flip"], n_boot=10, progress=False)
    entry = result.manifest["runs"][0]
    assert entry["temperature"] is None and entry["temperature_fit"] == "cross-fitted on the clean images' halves"
    with torch.inference_mode():
        x = digits.images.float() / 255
        clean, moved = (torch.softmax(net(v), 1).numpy() for v in (x, x.flip(-1)))
    probs, _ = C.cross_fitted_probabilities(clean, moved, digits.labels.numpy(), seed=0)
    row = result.metrics[(result.metrics["magnitude"] == "horizontal") & (result.metrics["metric"] == "ece_scaled")]
    assert row["value"].iloc[0] == pytest.approx(
        C.expected_calibration_error(probs.max(1), probs.argmax(1) == digits.labels.numpy()), abs=1e-6)
