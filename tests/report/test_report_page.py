"""The report page: its name as title and H1, the verdict table first and its cells, the key figure next, details
folded, figures as PDF/SVG and tables as LaTeX, one colour per model in every figure."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.errors import InvalidInputError
from capsprobe.pipeline import write_report
from capsprobe.report import Section, read_probe_outputs, render_report, write_probe_outputs
from capsprobe.report.render import latex_table, parse_formats
from capsprobe.report.verdicts import verdict_cells, verdict_claims, verdict_table
from tests.report.test_report import _synthetic

runner = CliRunner()


class _Page(HTMLParser):
    """The page's title, H1s and H2s, and the order of the tags that matter."""

    def __init__(self):
        super().__init__()
        self.order, self.text, self._in = [], {"title": [], "h1": [], "h2": []}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("title", "h1", "h2"):
            self._in = tag
            self.text[tag].append("")
        if tag in ("details", "figure", "img") or (tag == "table" and attrs.get("class") == "verdicts"):
            self.order.append((tag, attrs.get("class", "")))

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.text[self._in][-1] += data


def _page(path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture
def folder(tmp_path):
    result = _synthetic()
    result.manifest = {**result.manifest, "experiment": {"name": "mine", "size": "quick", "description": "d"}}
    return write_probe_outputs(result, tmp_path / "rep")


def test_title_and_h1_are_the_reports_name_not_its_last_section(folder):
    """The bug: a section with further tables gave the page the last table's title."""

    def section(data):
        return Section(headlines=["a claim"], table_title="Overview", table=pd.DataFrame({"x": [1]}),
                       tables=[("Lie derivative (each model: value)", pd.DataFrame({"y": [2]})),
                               ("Ablation (each model minus the reference)", pd.DataFrame({"z": [3]}))])

    page = _page(render_report(folder, section))
    assert page.text["title"] == page.text["h1"] == ["capsprobe report: mine (quick)"]
    assert "Ablation (each model minus the reference)" in page.text["h2"]
    md = (folder / "report.md").read_text()
    assert md.startswith("# capsprobe report: mine (quick)\n") and md.count("\n# ") == 0


def test_declared_claims_come_first_and_the_questions_are_exploratory(folder):
    from capsprobe.metrics.claims import claims_table, parse_claims
    from capsprobe.report.folder import write_csv

    data = read_probe_outputs(folder)
    d = data.tables["differences"]
    r = d[(d["metric"] == "accuracy") & (d["magnitude"] != "0")].iloc[0]
    claims = parse_claims([{"name": "first", "a": r["model_a"], "b": r["model_b"], "metric": "accuracy",
                            "condition": f"{r['transform']}={r['magnitude']}", "direction": "greater",
                            "statement": "a keeps more"}])
    write_csv(claims_table(claims, data.tables, data.manifest["runs"]), folder / "claims.csv")
    page = _page(write_report(folder))
    assert page.text["h2"][:2] == ["Declared claims", "Exploratory verdicts (not declared claims)"]
    html = (folder / "report.html").read_text()
    first = html.split("<h2>Declared claims</h2>")[1].split("</table>")[0]
    assert "first" in first and f"accuracy at {r['transform']} {r['magnitude']}" in first
    md = (folder / "report.md").read_text()
    assert md.index("## Declared claims") < md.index("## Exploratory verdicts")


def test_answer_first_verdicts_then_key_figure_then_folded_details(folder):
    page = _page(write_report(folder))
    assert page.text["h2"][0] == "Exploratory verdicts (not declared claims)"
    tags = [t for t, _ in page.order]
    assert page.order[0] == ("details", "meta")  # the run list, folded under its one-line summary
    assert page.order[1] == ("table", "verdicts")
    assert tags[2:4] == ["details", "figure"]  # how to read a cell (folded), then the key figure
    first_img = re.search(r"<figure><img alt='([^']*)'", (folder / "report.html").read_text()).group(1)
    assert first_img.startswith("Accuracy against magnitude, per model")
    html = (folder / "report.html").read_text()
    overview = html.split("<h2>Overview</h2>")[1]
    assert overview.startswith("<details>")  # the long table folded
    assert "Every read-out" in html.split("<h2>Overview</h2>")[0]  # every sentence still there, folded
    claims = html.split("<h2>Headlines</h2>")[1].split("</ul>")[0]
    assert claims.count("<li>") <= 4


def _diffs(rows):
    base = dict(kind="nuisance", seeds_a=3, seeds_b=3, p_holm=0.01, family_size=4)
    return pd.DataFrame([{**base, **r} for r in rows])


def test_a_verdict_names_the_better_model_with_its_interval_and_the_seeds():
    diffs = _diffs([
        dict(model_a="caps", model_b="cnn", metric="accuracy", transform="rotate", magnitude="45", difference=0.12,
             ci_low_adjusted=0.05, ci_high_adjusted=0.19, established=True),
        dict(model_a="caps", model_b="cnn", metric="accuracy", transform="rotate", magnitude="90", difference=0.30,
             ci_low_adjusted=-0.05, ci_high_adjusted=0.65, established=False),
        # an error metric: lower is better, so a negative a - b favours a... and the gain: higher is better
        dict(model_a="caps", model_b="cnn", metric="equivariance_gain", transform="rotate", magnitude="45",
             difference=-0.2, ci_low_adjusted=-0.3, ci_high_adjusted=-0.1, established=True),
        dict(model_a="caps", model_b="cnn", metric="accuracy", transform="jigsaw", magnitude="4", difference=0.25,
             ci_low_adjusted=0.1, ci_high_adjusted=0.4, established=True, kind="semantic"),
    ])
    questions, pairs, cells = verdict_cells({"differences": diffs})
    assert pairs == [("caps", "cnn")]
    nuisance = cells[(questions[0], "caps", "cnn")]
    # the key condition (rotate 45), not the larger difference at 90 degrees; points, the adjusted interval, seeds
    assert nuisance.text.startswith("caps: +12.0 pts [+5.0, +19.0] at rotate 45; established (3 seeds)")
    assert "established for caps in 1, for cnn in 0 of 2 conditions" in nuisance.text
    assert nuisance.established and nuisance.winner == "caps"
    gain = next(v for (q, _, _), v in cells.items() if q.startswith("Pose moves linearly"))
    assert gain.winner == "cnn" and gain.text.startswith("cnn: -0.200 [-0.300, -0.100]")
    scramble = next(v for (q, _, _), v in cells.items() if "scrambles" in q)
    assert scramble.winner == "higher for caps"  # keeping a decision on a scrambled digit is not "better"
    table = verdict_table({"differences": diffs})
    assert list(table.columns) == ["question", "caps - cnn"] and len(table) == len(questions)
    claims = verdict_claims({"differences": diffs})
    assert claims[0].startswith("Established at 3 seeds: accuracy under nuisances, caps: +12.0 pts")
    assert len(claims) == 3 and all(c.startswith("Established at 3 seeds") for c in claims)  # all 3 established
    one_less = diffs.assign(established=[True, False, False, False])
    assert verdict_claims({"differences": one_less})[-1] == ("The other 2 of the 3 comparisons in the verdict table "
                                                             "are not established at 3 seeds.")


def test_models_at_chance_establish_nothing_and_no_key_condition_means_counts_only():
    diffs = _diffs([dict(model_a="caps", model_b="cnn", metric="accuracy", transform="rotate", magnitude="45",
                         difference=0.12, ci_low_adjusted=0.05, ci_high_adjusted=0.19, established=True),
                    # scale has no key condition: the larger difference is never the verdict; rotate's grid is
                    dict(model_a="caps", model_b="cnn", metric="decodability", transform="scale", magnitude="grid",
                         difference=0.4, ci_low_adjusted=0.1, ci_high_adjusted=0.7, established=True),
                    dict(model_a="caps", model_b="cnn", metric="decodability", transform="rotate", magnitude="grid",
                         difference=0.1, ci_low_adjusted=0.01, ci_high_adjusted=0.2, established=True),
                    dict(model_a="caps", model_b="cnn", metric="equivariance_gain", transform="shear",
                         magnitude="0.5", difference=0.4, ci_low_adjusted=0.1, ci_high_adjusted=0.7,
                         established=True)])
    runs = [{"model": m, "test_accuracy": acc} for m, acc in (("caps", 0.99), ("cnn", 0.13), ("cnn", 0.15))]
    manifest = {"dataset": "mnist", "runs": runs}
    questions, _, cells = verdict_cells({"differences": diffs}, manifest)
    nuisance = cells[(questions[0], "caps", "cnn")]
    assert "not testable: cnn at chance" in nuisance.text and not nuisance.established
    assert all(not c.established for c in cells.values())
    pose = next(v for (q, _, _), v in cells.items() if q.startswith("Pose decodable"))
    assert "+0.100" in pose.text and "rotate grid" in pose.text and "+0.400" not in pose.text
    linear = next(v for (q, _, _), v in cells.items() if q.startswith("Pose moves linearly"))
    assert linear.text.startswith("no key condition declared") and "+0.400" not in linear.text
    # 5.1 points above chance is not at chance
    runs[1]["test_accuracy"] = runs[2]["test_accuracy"] = 0.151
    _, _, cells = verdict_cells({"differences": diffs}, manifest)
    assert cells[(questions[0], "caps", "cnn")].established


def test_one_seed_establishes_nothing_and_an_ablation_reads_reference_minus_variant():
    one = _diffs([dict(model_a="caps", model_b="cnn", metric="accuracy", transform="rotate", magnitude="45",
                       difference=0.1, ci_low_adjusted=0.05, ci_high_adjusted=0.15, established=False, seeds_a=1,
                       seeds_b=1)])
    (_, _, cells) = verdict_cells({"differences": one})
    (cell,) = cells.values()
    assert "not testable (1 seed)" in cell.text and "(images only)" in cell.text and not cell.established
    assert verdict_claims({"differences": one})[0].startswith("One training seed per model")
    ablation = pd.DataFrame([dict(variant="no-routing", reference="caps", metric="accuracy", transform="rotate",
                                  kind="nuisance", magnitude="45", difference=-0.08, ci_low_adjusted=-0.12,
                                  ci_high_adjusted=-0.04, established=True, seeds_variant=2, seeds_reference=3,
                                  family_size=2, p_holm=0.01)])
    _, pairs, cells = verdict_cells({"ablation": ablation, "differences": pd.DataFrame()})
    assert pairs == [("caps", "no-routing")]
    (cell,) = cells.values()
    assert cell.text.startswith("caps: +8.0 pts [+4.0, +12.0] at rotate 45; established (2 seeds)")


def test_the_lie_verdict_is_welchs_t_over_seeds():
    lie = pd.DataFrame([dict(model=m, run=f"{m}-{i}", generator="rotate", metric="elee_representation_pca16", value=v)
                        for m, vals in (("caps", [0.10, 0.12, 0.11]), ("cnn", [0.30, 0.33, 0.31]))
                        for i, v in enumerate(vals)])
    diffs = _diffs([dict(model_a="caps", model_b="cnn", metric="accuracy", transform="rotate", magnitude="45",
                         difference=0.0, ci_low_adjusted=-0.1, ci_high_adjusted=0.1, established=False)])
    questions, _, cells = verdict_cells({"differences": diffs, "lie": lie})
    cell = next(v for (q, _, _), v in cells.items() if "Lie" in q)
    a, b = np.array([0.10, 0.12, 0.11]), np.array([0.30, 0.33, 0.31])
    assert cell.winner == "caps" and cell.established  # lower is better
    assert cell.text.startswith(f"caps: {a.mean() - b.mean():+.3f} [")


def test_formats_write_vector_figures_with_fonts_and_booktabs_tables(folder):
    result = runner.invoke(app, ["report", str(folder), "--formats", "pdf,svg,tex"])
    assert result.exit_code == 0, result.output
    figures = folder / "figures"
    for png in figures.glob("*.png"):
        pdf, svg = png.with_suffix(".pdf").read_bytes(), png.with_suffix(".svg").read_text()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # TrueType fonts embedded, not referenced
        assert svg.lstrip().startswith("<?xml") and "<text" not in svg  # text drawn as paths: no font needed
    first = {p.name: p.read_bytes() for p in figures.iterdir()}
    assert runner.invoke(app, ["report", str(folder), "--formats", "pdf,svg,tex"]).exit_code == 0
    assert {p.name: p.read_bytes() for p in figures.iterdir()} == first  # no dates inside: a render is reproducible
    tex = (folder / "tables" / "verdicts.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert (folder / "tables" / "verdicts.csv").is_file() and (folder / "tables" / "overview.tex").is_file()
    # the default writes no vector files, and a second render replaces the first whole
    assert runner.invoke(app, ["report", str(folder)]).exit_code == 0
    assert not list(figures.glob("*.pdf")) and (folder / "tables" / "overview.tex").is_file()


def test_an_unknown_format_is_refused_naming_the_choices(folder):
    """The CLI's parser refuses it (--formats is a choice since the CLI follows click's conventions: a usage error,
    exit 2, whose one error line names the value and the choices); the renderer's own check stays for Python."""
    result = runner.invoke(app, ["report", str(folder), "--formats", "png,jpeg"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1
    assert "'jpeg'" in errors[0] and all(f"'{f}'" in errors[0] for f in ("png", "pdf", "svg", "tex"))
    with pytest.raises(InvalidInputError):
        parse_formats("gif")
    assert parse_formats("svg") == ("png", "svg")  # the page needs the PNGs


def test_latex_escapes_and_wraps_long_text():
    tex = latex_table(pd.DataFrame({"question": ["Accuracy & 50% under_x " * 3], "n": [1]}))
    assert "\\&" in tex and "\\%" in tex and "\\_" in tex and "p{" in tex


def test_a_model_keeps_its_colour_in_every_figure():
    from capsprobe.report import plots

    with plots.colour_order(["caps", "cnn", "res"], {"cnn-seed0": "cnn", "cnn-seed1": "cnn"}):
        one = plots.model_colours(["res", "caps"])
        two = plots._palette(["cnn-seed1", "caps", "cnn-seed0"])
    assert one["caps"] == two["caps"]
    assert two["cnn-seed0"] == two["cnn-seed1"] != one["res"]
    colourblind = plots.sns.color_palette("colorblind")
    assert one["caps"] == colourblind[0] and one["res"] == colourblind[2]


def test_the_key_figure_draws_the_seed_interval_of_the_comparison(folder):
    """With several seeds, the key figure's band is comparison.csv's interval over seeds and images."""
    from capsprobe.report.suite import _key_rows

    data = read_probe_outputs(folder)
    comp = data.tables["comparison"].copy()
    comp["seeds"] = 3
    data.tables["comparison"] = comp
    rows = _key_rows(data)
    acc = comp[comp["metric"] == "accuracy"]
    assert len(rows) == len(acc) and set(rows["run"]) == set(acc["model"])
    np.testing.assert_allclose(rows["ci_low"], acc["ci_low"])


def test_the_page_draws_one_seed_of_image_grids_per_model():
    """A model's seeds draw the same digits: the page keeps the first seed's grids of each kind, a run the manifest
    does not list keeps its own, and the note says so only when a model has several seeds."""
    from capsprobe.report.section import first_seed_grids

    grid = {"images": np.zeros((1, 1, 1, 2, 2))}
    arrays = {f"{kind}-{run}": grid for kind in ("pose_sweep", "reconstructions")
              for run in ("caps-seed0", "caps-seed1", "no-routing-seed2", "no-routing-seed3", "other")}
    runs = [{"name": "caps-seed0", "model": "caps"}, {"name": "caps-seed1", "model": "caps"},
            {"name": "no-routing-seed2", "model": "no-routing"}, {"name": "no-routing-seed3", "model": "no-routing"},
            {"name": "cnn-seed0", "model": "cnn"}]
    kept, one_seed = first_seed_grids(arrays, runs)
    assert sorted(kept) == sorted(f"{k}-{r}" for k in ("pose_sweep", "reconstructions")
                                  for r in ("caps-seed0", "no-routing-seed2", "other"))
    assert one_seed
    single, one_seed = first_seed_grids({"pose_sweep-caps-seed0": grid}, runs[:1])
    assert list(single) == ["pose_sweep-caps-seed0"] and not one_seed
    assert first_seed_grids({}, runs) == ({}, False)


def test_the_viewpoint_question_reads_the_novel_viewpoints():
    diffs = _diffs([dict(model_a="caps", model_b="cnn", metric="accuracy", transform="viewpoint", kind="viewpoint",
                         magnitude="familiar", difference=-0.2, ci_low_adjusted=-0.3, ci_high_adjusted=-0.1,
                         established=True),
                    dict(model_a="caps", model_b="cnn", metric="accuracy", transform="viewpoint", kind="viewpoint",
                         magnitude="novel", difference=0.05, ci_low_adjusted=0.01, ci_high_adjusted=0.09,
                         established=True)])
    _, _, cells = verdict_cells({"differences": diffs})
    cell = next(v for (q, _, _), v in cells.items() if q.startswith("Accuracy at novel viewpoints"))
    assert cell.text.startswith("caps: +5.0 pts") and "at viewpoint novel" in cell.text


NINE = [f"m{i}" for i in range(9)]


def _all_pairs(models=NINE):
    """Every pair's accuracy difference at the key condition (rotate 45), a - b = 0.01 x (index a - index b)."""
    return _diffs([dict(model_a=a, model_b=b, metric="accuracy", transform="rotate", magnitude="45",
                        difference=0.01 * (i - j), ci_low_adjusted=0.01 * (i - j) - 0.02,
                        ci_high_adjusted=0.01 * (i - j) + 0.02, established=abs(i - j) > 2)
                   for i, a in enumerate(models) for j, b in enumerate(models) if i < j])


def _bare(data):
    return Section(headlines=["h"], table_title="Overview", table=pd.DataFrame({"x": [1]}))


def test_many_models_get_a_row_each_against_the_reference_and_the_full_matrix_folded(folder):
    """9 models, 36 pairs: the unfolded verdict table has 8 rows (each model minus the first), and the 36-pair matrix
    sits inside <details>, on the page and in report.md."""
    from capsprobe.report.folder import write_csv

    write_csv(_all_pairs(), folder / "differences.csv")
    html = render_report(folder, _bare).read_text()
    verdicts = html.split("<h2>Exploratory verdicts (not declared claims)</h2>")[1].split("<h2>")[0]
    unfolded = verdicts.split("<details>")[0]
    assert unfolded.count("<table") == 1 and unfolded.split("<tbody>")[1].count("<tr>") == 8  # 8 models
    assert "Each model against m0" in unfolded and "m0" not in unfolded.split("<tbody>")[1]
    folded = verdicts.split("<details>")[1].split("</details>")[0]
    assert "Every pair in full (36 pairs x 1 question)" in folded and folded.count("m7 - m8") == 1
    md = (folder / "report.md").read_text()
    section = md.split("## Exploratory verdicts (not declared claims)")[1].split("\n## ")[0]
    before, inside = section.split("<details><summary>Every pair in full (36 pairs x 1 question)</summary>")
    assert sum(bool(re.match(r"\| m\d \|", line)) for line in before.splitlines()) == 8
    assert "m7 - m8" in inside.split("</details>")[0] and "m7 - m8" not in before


def test_the_compact_form_reads_model_minus_reference_whichever_way_the_pair_was_written():
    from capsprobe.report.verdicts import compact_verdict_table

    manifest = {"reference": "m4", "runs": [{"name": f"{m}-seed0", "model": m} for m in NINE]}
    reference, table = compact_verdict_table({"differences": _all_pairs()}, manifest)
    assert reference == "m4" and list(table.iloc[:, 0]) == [m for m in NINE if m != "m4"]
    assert list(table.columns) == ["model (minus m4)", "Accuracy under nuisances [rotate 45]"]
    cells = dict(zip(table.iloc[:, 0], table.iloc[:, 1]))
    assert cells["m0"] == "-4.0 [-6.0, -2.0], established"  # written m0 - m4 = -0.04
    assert cells["m5"] == "+1.0 [-1.0, +3.0]"  # written m4 - m5 = -0.01: flipped
    assert cells["m8"] == "+4.0 [+2.0, +6.0], established"
    one_seed = _all_pairs().assign(seeds_b=1)  # every pair's b trained once: nothing testable, and it says why
    _, table = compact_verdict_table({"differences": one_seed}, manifest)
    assert dict(zip(table.iloc[:, 0], table.iloc[:, 1]))["m5"] == "+1.0, not testable (1 seed)"
    # the experiment's reference where the manifest's top level has none; two models: no compact form
    assert compact_verdict_table({"differences": _all_pairs()}, {"experiment": {"reference": "m2"}})[0] == "m2"
    assert compact_verdict_table({"differences": _all_pairs(NINE[:2])}, manifest) is None


def test_the_run_list_is_folded_under_a_one_line_summary(folder):
    from capsprobe.report.render import runs_summary

    runs = [{"name": f"{m}-seed{s}", "model": m, "seed": s, "reached_target": True} for m in NINE for s in range(3)]
    assert runs_summary({"runs": runs}) == "27 runs: 9 models x 3 seeds (0, 1, 2), all reached their target accuracy"
    runs[4]["reached_target"] = False
    assert runs_summary({"runs": runs}).endswith("; 1 missed the target accuracy (left out of the comparisons)")
    assert runs_summary({"runs": runs[:5]}) == ("5 runs: 2 models x 2-3 seeds; 1 missed the target accuracy (left out "
                                                "of the comparisons)")
    html = render_report(folder, _bare).read_text()
    head = html.split("<h2>")[0]
    assert "<details class='meta'><summary>2 runs: 2 models x 1 seed</summary><p>caps (capsnet_small, seed 0), conv " \
           "(resnet18, seed 0)</p></details>" in head
    assert "runs: caps" not in head  # the provenance line no longer lists them
    md = (folder / "report.md").read_text()
    assert "<details><summary>2 runs: 2 models x 1 seed</summary>\n\ncaps (capsnet_small, seed 0)" in md
