"""The report: every file, figures inline in the HTML (parsed), overview figures, the demo end to end."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.metrics import overview_table, roc_table, selectivity_table
from capsprobe.metrics.compare import comparison_tables
from capsprobe.pipeline import recompare, write_report
from capsprobe.probe import IMAGE_COLUMNS, METRIC_COLUMNS, ProbeResult, identity_labels
from capsprobe.report import ReportError, headlines, read_probe_outputs, write_probe_outputs
from capsprobe.report.folder import csv_float

runner = CliRunner()
GRIDS = {"rotate": [("0", 0.0), ("45", 45.0), ("90", 90.0)], "flip": [("none", 0.0), ("horizontal", 1.0)],
         "jigsaw": [("1", 1.0), ("2", 2.0)]}


def _synthetic(n: int = 30) -> ProbeResult:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    images, metrics = [], []
    for run, skill in (("caps", 0.9), ("conv", 0.7)):
        for transform, grid in GRIDS.items():
            for k, (label, value) in enumerate(grid):
                keep = rng.random(n) < skill / (1 + k)
                pred = np.where(keep, labels, (labels + 1) % 10)
                conf = np.clip(rng.normal(0.9 - 0.2 * k, 0.05, n), 0, 1)
                kind = "semantic" if transform != "rotate" or value >= 90 else "nuisance"
                images.append(pd.DataFrame({"model": run, "run": run, "seed": 0, "transform": transform, "kind": kind,
                                            "magnitude": label, "image_id": np.arange(n), "label": labels,
                                            "prediction": pred, "true_score": conf, "confidence": conf,
                                            "pixel_change": np.full(n, 10.0 * k)}))
                names = ["accuracy", "consistency", "invariance_error", "equivariance_error_pca16", "equivariance_gain"]
                if kind == "semantic" and k > 0:
                    names.append("scramble_auroc")
                for metric in names:
                    v = 0.0 if k == 0 and ("error" in metric or "gain" in metric) else float(rng.random())
                    metrics.append(dict(model=run, run=run, seed=0, transform=transform, kind=kind, magnitude=label,
                                        magnitude_value=value, metric=metric, value=v, ci_low=v - 0.1, ci_high=v + 0.1,
                                        n_images=n))
    metrics = pd.DataFrame(metrics, columns=METRIC_COLUMNS)
    images = pd.concat(images, ignore_index=True)[IMAGE_COLUMNS]
    tables = {"overview": overview_table(metrics, images, identity_labels(), n_boot=100),
              "roc": roc_table(images, metrics, identity_labels()),
              "selectivity": selectivity_table(images, identity_labels(), n_boot=100),
              **comparison_tables(metrics, images, MANIFEST["runs"], identity_labels())}
    return ProbeResult(metrics, images, {"total": 1.0, "images": float(n)}, tables=tables, manifest=MANIFEST)


MANIFEST = {"runs": [{"name": "caps", "path": "/nonexistent/caps", "model": "capsnet_small", "seed": 0, "poses": True,
                      "decoder": False},
                     {"name": "conv", "path": "/nonexistent/conv", "model": "resnet18", "seed": 0}],
            "dataset": "mnist-sample", "split": "test", "images": 30, "seed": 0, "bootstrap": 100,
            "transforms": {t: [g[0] for g in grid] for t, grid in GRIDS.items()}, "versions": {}}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs)


@pytest.fixture
def folder(tmp_path):
    return write_probe_outputs(_synthetic(), tmp_path / "rep")


def test_report_writes_every_file_with_figures_inline(folder):
    html_path = write_report(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"results.parquet", "summary.csv", "manifest.json", "overview.csv", "report.md", "report.html",
            "figures"} <= names
    figures = sorted((folder / "figures").glob("*.png"))
    assert {p.name for p in figures} == {"key_accuracy.png", "accuracy_curves.png", "invariance_equivariance.png",
                                         "scramble_auroc.png", "roc_curves.png", "rotation_polar.png",
                                         "decision_vs_pose.png"}
    parser = _Images()
    parser.feed(html_path.read_text())
    assert not parser.links  # self-contained: nothing fetched
    inline = [base64.b64decode(src.split(",", 1)[1]) for src in parser.sources if src.startswith("data:image/png;base64,")]
    assert len(inline) == len(parser.sources) == len(figures)
    assert sorted(inline) == sorted(p.read_bytes() for p in figures)
    md = (folder / "report.md").read_text()
    assert all(f"figures/{p.name}" in md for p in figures)
    assert "no reconstruction pictures for caps" in md  # poses without a decoder: said, not hidden
    claims = md.split("## Headlines\n\n")[1].split("\n\n")[0]
    assert "One training seed per model" in claims and "no difference between models is established" in claims
    read_outs = md.split("Every read-out")[1].split("</details>")[0]
    assert read_outs.split("\n- ", 1)[1].startswith("Single training seed for caps, conv")
    assert "Accuracy of caps minus conv, paired" in md and "rotate 45 " in md
    assert "not established at 1 seed(s)" in md


def test_overview_figures_match_the_per_image_rows(folder):
    result = _synthetic()
    overview = result.tables["overview"].set_index(["run", "transform"])
    img = result.images
    for (run, transform), row in overview.iterrows():
        rows = img[(img["run"] == run) & (img["transform"] == transform)]
        acc = rows.assign(ok=rows["prediction"] == rows["label"]).groupby("magnitude")["ok"].mean()
        ident = GRIDS[transform][0][0]
        assert row["clean_accuracy"] == pytest.approx(acc[ident])
        assert row["worst_accuracy"] == pytest.approx(acc.min())
        assert row["clean_accuracy_low"] <= row["clean_accuracy"] <= row["clean_accuracy_high"]
        assert row["mean_accuracy_low"] <= row["mean_accuracy"] <= row["mean_accuracy_high"]
    rot = overview.loc[("caps", "rotate")]
    acc = img[(img["run"] == "caps") & (img["transform"] == "rotate")].assign(
        ok=lambda d: d["prediction"] == d["label"]).groupby("magnitude")["ok"].mean()
    area = ((acc["0"] + acc["45"]) / 2 * 45 + (acc["45"] + acc["90"]) / 2 * 45) / 90
    assert rot["mean_accuracy"] == pytest.approx(area)
    from sklearn.metrics import roc_auc_score

    flip = img[(img["run"] == "conv") & (img["transform"] == "flip")]
    clean = flip[flip["magnitude"] == "none"]["confidence"].to_numpy()
    moved = flip[flip["magnitude"] == "horizontal"]["confidence"].to_numpy()
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(30)], np.r_[clean, moved])
    row = overview.loc[("conv", "flip")]
    assert row["scramble_auroc"] == pytest.approx(expected)
    assert row["scramble_auroc_low"] <= row["scramble_auroc"] <= row["scramble_auroc_high"]


def test_report_errors_name_the_file(tmp_path, folder):
    (folder / "summary.csv").write_text("not,a\ntidy,table\n")
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "summary.csv is malformed" in lines[0]
    (folder / "results.parquet").unlink()  # optional for rendering and for recomputing the comparisons
    with pytest.raises(ReportError, match="summary.csv is malformed"):
        recompare(folder)
    json.loads((folder / "manifest.json").read_text())


def test_demo_tiny_end_to_end(tiny_experiment, monkeypatch):
    folder, output = tiny_experiment("demo")
    monkeypatch.chdir(folder)
    out = Path("reports/demo")
    assert output.strip().endswith("report: reports/demo/report.html")
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"reconstructions-capsnet_small-seed0.png", "pose_sweep-capsnet_small-seed0.png",
            "accuracy_curves.png", "reliability.png"} <= names
    overview = pd.read_csv(out / "overview.csv")
    assert set(overview["run"]) == {"capsnet_small-seed0", "resnet18-seed0"}
    assert set(overview["transform"]) == {"rotate", "flip", "translate", "scale", "shear", "affine", "jigsaw", "swap"}
    # Figure 4: 16 pose dimensions x 11 deltas, computed by the probe and stored without pickles
    with np.load(out / "arrays" / "pose_sweep-capsnet_small-seed0.npz", allow_pickle=False) as grid:
        sweep = grid["images"]
    assert sweep.shape == (16, 11, 1, 28, 28)
    assert np.allclose(sweep[:, 5], sweep[0, 5])  # the zero delta is the unperturbed reconstruction in every row
    assert not np.allclose(sweep[0, 0], sweep[0, 10])
    # `capsprobe demo` is the experiment runner on experiments/demo.toml: same runs, refuses to overwrite
    again = runner.invoke(app, ["demo", "--size", "tiny", "--no-progress", "--device", "cpu",
                                "--runs-dir", "runs/demo-tiny", "--out", "reports/demo"])
    assert again.exit_code == 1 and "--force" in again.output and "epoch" not in again.output


def test_report_rebuilds_a_copied_folder_without_runs_or_data(tiny_experiment, tmp_path, monkeypatch):
    import shutil

    import capsprobe.data
    import capsprobe.pipeline

    folder, _ = tiny_experiment("demo")
    copy = tmp_path / "elsewhere" / "demo"
    shutil.copytree(folder / "reports" / "demo", copy)
    for name in ("report.md", "report.html"):
        (copy / name).unlink()
    shutil.rmtree(copy / "figures")

    def refuse(*args, **kwargs):
        raise AssertionError("the report must not load runs or data")

    monkeypatch.setattr(capsprobe.pipeline, "load_run", refuse)
    monkeypatch.setattr(capsprobe.pipeline, "load_dataset", refuse)
    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    original = (folder / "reports" / "demo" / "report.md").read_text()
    assert (copy / "report.md").read_text() == original
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(
        p.name for p in (folder / "reports" / "demo" / "figures").iterdir())


def test_report_cli_success_and_rerun(folder):
    first = runner.invoke(app, ["report", str(folder)])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"report: {folder / 'report.html'}"
    again = runner.invoke(app, ["report", str(folder)])  # summary.csv is its input, untouched
    assert again.exit_code == 0 and pd.read_csv(folder / "summary.csv").columns.tolist() == list(METRIC_COLUMNS)


def test_demo_unknown_size_is_one_line(tmp_path):
    result = runner.invoke(app, ["demo", "--size", "huge", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2  # a choice the parser checks (tests/test_cli_conventions.py)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "'huge' is not one of 'tiny', 'quick', 'paper'" in lines[0]
    assert not (tmp_path / "d").exists()


def test_headline_averages_leave_out_identity_conditions_by_magnitude(tmp_path):
    """Catches identity conditions dropped by value > 0 (an equivariance error of 3e-10 at the identity survives)."""
    result = _synthetic()
    m = result.metrics.copy()
    ident = (m["transform"] == "rotate") & (m["magnitude"] == "0") & (m["metric"] == "equivariance_gain")
    m.loc[ident, "value"] = 3e-10  # what a fit gives at the identity: not 0, and still the identity
    lines = headlines(m, result.tables["overview"], result.tables, MANIFEST)
    line = next(s for s in lines if s.startswith("Across non-identity nuisance conditions"))
    rot = m[(m["transform"] == "rotate") & (m["magnitude"] == "45")].set_index(["run", "metric"])["value"]
    assert f"caps {rot[('caps', 'equivariance_gain')]:.3f} / {rot[('caps', 'invariance_error')]:.3f}" in line
    sel = next(s for s in lines if s.startswith("Scramble selectivity"))
    assert "jigsaw 2 (vs rotate 45): caps" in sel  # matched to the only nuisance probed
    data = read_probe_outputs(write_probe_outputs(result, tmp_path / "r"))  # magnitudes stay labels, not floats
    assert "(vs rotate 45)" in next(s for s in headlines(data.metrics, data.tables["overview"], data.tables,
                                                           data.manifest) if s.startswith("Scramble"))


def test_a_penalty_at_the_grid_edge_is_named_in_the_report(tmp_path):
    result = _synthetic()
    m = result.metrics
    m["at_edge"] = False
    m.loc[(m["transform"] == "rotate") & (m["magnitude"] == "45") & (m["metric"] == "equivariance_error_pca16")
          & (m["run"] == "caps"), "at_edge"] = True
    m.loc[(m["transform"] == "rotate") & (m["magnitude"] == "0"), "at_edge"] = True  # identity: exact maps, not named
    folder = write_probe_outputs(result, tmp_path / "r")
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "grid in 1 non-identity fitted metric(s)" in text and "caps rotate 45 equivariance_error_pca16" in text


def test_roc_points_are_the_exact_staircase_on_a_fixed_grid():
    from sklearn.metrics import roc_curve

    result = _synthetic(n=300)
    from capsprobe.metrics import ROC_POINTS

    roc = result.tables["roc"]
    assert ROC_POINTS == 51
    assert roc.groupby(["run", "condition"]).size().eq(ROC_POINTS).all()  # fixed size, whatever the image count
    assert np.allclose(roc.groupby(["run", "condition"])["fpr"].diff().dropna(), 0.02)
    img = result.images
    rows = img[(img["run"] == "caps") & (img["transform"] == "flip")]
    clean = rows[rows["magnitude"] == "none"].sort_values("image_id")["confidence"].to_numpy()
    moved = rows[rows["magnitude"] == "horizontal"].sort_values("image_id")["confidence"].to_numpy()
    fpr, tpr, _ = roc_curve(np.r_[np.ones(300), np.zeros(300)], np.r_[clean, moved])
    curve = roc[(roc["run"] == "caps") & (roc["condition"] == "flip horizontal")]
    for f, t in zip(curve["fpr"], curve["tpr"]):
        assert t == tpr[fpr <= f + 1e-12].max()  # the highest true-positive rate reached at that false-positive rate
    assert curve["tpr"].iloc[-1] == 1.0 and curve["fpr"].iloc[0] == 0.0


def test_ablation_line_gives_the_range_of_matched_seeds():
    from capsprobe.report.suite import _ablation_lines

    row = {"variant": "v", "reference": "r", "transform": "rotate", "magnitude": "45", "metric": "accuracy",
           "difference": 0.01, "ci_low_adjusted": -0.02, "ci_high_adjusted": 0.04, "family_size": 2,
           "seeds_reference": 3, "established": False}
    ab = pd.DataFrame([{**row, "seeds_variant": 3}, {**row, "variant": "w", "seeds_variant": 1}])
    assert "no difference is established at 1-3 matched seed(s)" in _ablation_lines({"ablation": ab})[0]
    assert "at 3 seed(s)" in _ablation_lines({"ablation": ab.iloc[:1]})[0]


def test_a_cifar10_report_sets_sr_capsnets_numbers_beside_its_heads(tmp_path):
    import copy

    result = _synthetic()
    manifest = copy.deepcopy(MANIFEST)
    manifest["dataset"] = "cifar10"
    manifest["runs"][0].update(model="caps", architecture="backbone_head_self")
    manifest["runs"][1].update(model="conv", architecture="backbone_head_avg")
    result = ProbeResult(result.metrics, result.images, result.timing, tables=result.tables, manifest=manifest)
    folder = write_probe_outputs(result, tmp_path / "c")
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "Published CIFAR-10 numbers" in text and "8.17" in text and "7.94" in text and "41.20" in text
    plain = write_probe_outputs(_synthetic(), tmp_path / "m")  # MNIST: nothing published to set beside
    write_report(plain)
    assert "Published CIFAR-10" not in (plain / "report.md").read_text()


def test_figures_are_stored_as_palette_pngs_that_keep_their_colours():
    """Figures go out as 256-colour indexed PNGs: smaller than matplotlib's RGBA, and every flat colour (a line, a
    cell of a colormap) survives exactly when there are at most 256."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from capsprobe.report.section import figure_png

    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.linspace(0, 1, 64).reshape(8, 8), cmap="viridis", interpolation="nearest")
    ax.set_axis_off()
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=90, bbox_inches="tight")
    data = figure_png(fig)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P" and len(data) < len(rgba.getvalue())
    ref = np.asarray(Image.open(io.BytesIO(rgba.getvalue())).convert("RGB")).astype(int)
    got = np.asarray(image.convert("RGB")).astype(int)
    assert ref.shape == got.shape
    centre = ref[ref.shape[0] // 2, ref.shape[1] // 2]  # inside one colormap cell
    assert (got[ref.shape[0] // 2, ref.shape[1] // 2] == centre).all()
    assert (got == ref).all()  # 65 colours: the palette holds every one


def test_derived_tables_keep_six_significant_digits_and_the_summary_every_digit(tmp_path):
    result = _synthetic()
    result.metrics.loc[result.metrics.index[0], "value"] = 0.123456789012
    held = pd.Series([0.123456789012] + [None] * (len(result.tables["overview"]) - 1), dtype=object)
    result.tables["overview"] = result.tables["overview"].assign(probe_value=0.123456789012, held=held.to_numpy())
    folder = write_probe_outputs(result, tmp_path / "r")
    assert ",0.123456789012," in (folder / "summary.csv").read_text().splitlines()[1]  # what --recompare reads
    overview = (folder / "overview.csv").read_text()
    assert "0.123457" in overview and "0.1234568" not in overview and "0.123456789012" not in overview
    back = pd.read_csv(folder / "overview.csv")
    assert np.allclose(back["probe_value"].to_numpy(float), 0.123456789012, rtol=5e-6, atol=0)
    assert back["held"].iloc[0] == 0.123457 and back["held"].iloc[1:].isna().all()  # floats held as objects too
    # a sixth digit 5 that is not exact would be a tie for a page showing fewer digits: more digits are written
    assert [csv_float(x) for x in (0.48550004, 0.4855, 0.12345, 2.5e-07, 1.0)] == [
        "0.48550004", "0.4855", "0.12345", "2.5e-07", "1"]
    assert f"{float(csv_float(0.48550004)):.3f}" == f"{0.48550004:.3f}" == "0.486"


def test_report_refuses_a_folder_perturb_did_not_write_and_destroys_nothing(folder, tmp_path):
    """The data-loss case: a report's tables and manifest copied into the reader's own folder (their report.md,
    figures/mine.png, draft.tmp) are refused by `report` and `report --recompare`, which write nothing there (no
    marker planted that would later let `perturb --force` replace the folder)."""
    import shutil

    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    for p in folder.iterdir():
        if p.is_file() and p.name != ".capsprobe":
            shutil.copy2(p, mine / p.name)
    own = {"report.md": b"my notes\n", "figures/mine.png": b"\x89PNG mine", "draft.tmp": b"draft"}
    for name, data in own.items():
        (mine / name).write_bytes(data)
    before = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    for args in (["report", str(mine)], ["report", "--recompare", str(mine)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "was not written by `capsprobe perturb`" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(ReportError, match="no .capsprobe report marker"):
        write_report(mine)
    assert {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    # a run folder's marker is not a report's
    (mine / ".capsprobe").write_text('{"kind": "run"}\n')
    assert CliRunner().invoke(app, ["report", str(mine)]).exit_code == 1
    assert (mine / "report.md").read_bytes() == b"my notes\n"


def test_the_page_says_where_and_in_what_precision_the_probe_computed(tiny_experiment):
    """The manifest's device record on the page: the tiny demo's (CPU, float32, TF32 off), a GPU's in bf16 autocast
    with TF32 on, and nothing for an older report without a record."""
    from capsprobe.report.render import _computed_on

    folder, _ = tiny_experiment("demo")
    page = (folder / "reports" / "demo" / "report.md").read_text()
    assert " Computed on cpu (" in page and ") in float32, TF32 off." in page
    gpu = {"device_record": {"device": "cuda:1", "device_name": "NVIDIA H100 80GB HBM3", "cuda": "12.8",
                             "cudnn": 91002, "autocast": "bfloat16", "tf32_matmul": True, "tf32_cudnn": False}}
    assert _computed_on(gpu) == (" Computed on cuda:1 (NVIDIA H100 80GB HBM3) in bfloat16 autocast, TF32 on, "
                                 "CUDA 12.8, cuDNN 91002.")
    assert _computed_on({}) == "" and _computed_on({"device_record": "cpu"}) == ""
