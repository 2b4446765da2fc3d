"""The documentation site (mkdocs.yml, docs/): every page is in the navigation, every link and image resolves, and
every generated part names what it documents (each command, transformation, metric, experiment file and report).

The full build (``mkdocs build --strict``, which also renders the API reference from the docstrings) takes longer than
a test may, so it runs in CI as ``make docs``; these tests check the sources and the generators without MkDocs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _gen_pages():
    spec = importlib.util.spec_from_file_location("capsprobe_docs_gen_pages", DOCS / "gen_pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen_pages()


def _nav() -> list[str]:
    """The pages mkdocs.yml's ``nav`` lists (docs-relative), read without YAML (the docs extra may be missing)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text.split("\nnav:\n", 1)[1]
    return re.findall(r"^\s+-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", nav, flags=re.M)


def _broken(pages: dict[str, str]) -> list[str]:
    """``page -> target`` for every relative link or image of ``pages`` (repository path -> markdown) that does not
    resolve to a file of the repository."""
    out = []
    for page, text in pages.items():
        for target in GEN.links(text):
            path = GEN.resolve(page, target)
            if path.startswith("..") or not (ROOT / path).is_file():
                out.append(f"{page} -> {target}")
    return out


def test_every_page_is_in_the_navigation_and_every_nav_entry_is_a_page():
    nav = _nav()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert len(nav) == len(set(nav)), "a page twice in the nav"
    assert sorted(nav) == pages, (sorted(set(pages) - set(nav)), sorted(set(nav) - set(pages)))
    for must in ("index.md", "getting-started.md", "cli.md", "concepts.md", "statistics.md", "extending.md",
                 "results.md", "performance.md", "changelog.md", "api.md", "protocols/index.md"):
        assert must in nav, must


def test_one_protocol_page_per_experiment_file():
    names = GEN.protocol_names()
    assert names and "robustness" in names
    for name in names:
        page = DOCS / "protocols" / f"{name}.md"
        assert page.is_file(), (f"experiments/{name}.toml has no page: write docs/protocols/{name}.md (a title, what "
                                f"the file does not say, the line <!-- generated: protocol {name} -->) and list it in "
                                "mkdocs.yml's nav")
        assert f"<!-- generated: protocol {name} -->" in page.read_text(), page


def test_every_marker_names_a_generator():
    for page in DOCS.rglob("*.md"):
        for name, _ in GEN.MARKER.findall(page.read_text()):
            assert name in GEN.GENERATORS, f"{page}: unknown generated part {name!r}"


def test_every_link_and_image_of_the_sources_resolves():
    """The hand-written pages, mkdocs.yml's theme files aside: a link is written as it resolves in the repository."""
    pages = {f"docs/{p.relative_to(DOCS).as_posix()}": p.read_text() for p in DOCS.rglob("*.md")}
    for readme in ("README.md", "experiments/README.md"):  # they point into the site's sources
        pages[readme] = (ROOT / readme).read_text()
    assert _broken(pages) == []


def test_a_broken_link_or_image_is_caught():
    page = {"docs/example.md": "[ok](index.md) [gone](no-such-page.md#x) ![img](../reports/none.png) "
                               '<img src="figures/missing.png"> [web](https://example.org) [here](#top) `[code](x.md)`'}
    assert _broken(page) == ["docs/example.md -> no-such-page.md", "docs/example.md -> ../reports/none.png",
                             "docs/example.md -> figures/missing.png"]


def test_links_are_rewritten_to_their_place_in_the_site():
    assert GEN.rewrite("[r](../reports/demo/report.md#a)", "docs/results.md") == "[r](repo/reports/demo/report.md#a)"
    assert GEN.rewrite("[p](../index.md)", "docs/protocols/demo.md") == "[p](../index.md)"
    assert GEN.rewrite("![f](figures/a.png)", "reports/demo/report.md") == "![f](figures/a.png)"
    assert GEN.rewrite("[d](docs/cli.md) [w](https://x.org/a.md)", "README.md") == "[d](../cli.md) [w](https://x.org/a.md)"


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return GEN.render_all()


def test_the_generated_pages_name_every_command_transform_metric_and_report(rendered):
    from capsprobe.metrics.registry import METRICS
    from capsprobe.transforms.suite import TRANSFORMS

    cli = rendered["docs/cli.md"]
    commands = GEN.command_names()
    assert {"train", "perturb", "report", "run", "demo", "list"} <= set(commands)
    for name in commands:
        assert re.search(rf"^#+ `capsprobe {name}`$", cli, flags=re.M), name
    concepts = rendered["docs/concepts.md"]
    for name in TRANSFORMS:
        assert f"| `{name}` |" in concepts, name
    for name in METRICS:
        assert f"| `{name}` |" in concepts, name
    results = rendered["docs/results.md"]
    for name in GEN.report_names():
        assert f"### {name}" in results, name
    index = rendered["docs/protocols/index.md"]
    for name in GEN.protocol_names():
        assert f"[`{name}.toml`]({name}.md)" in index, name
        assert "## Declared claims" in rendered[f"docs/protocols/{name}.md"], name
    assert not any(GEN.MARKER.search(text) for text in rendered.values()), "a marker left unfilled"
    assert "<data root>" not in rendered["docs/protocols/routing.md"]  # a file's comment is text, not HTML
    assert _broken(rendered) == [], "a generated link does not resolve"


def test_every_number_on_the_results_page_comes_from_the_csv(rendered):
    """The study-wide table's estimates and intervals are those of reports/claims.csv, formatted."""
    rows = GEN._read_csv(ROOT / "reports" / "claims.csv")
    results = rendered["docs/results.md"]
    assert rows
    for row in rows:
        assert f"`{row['claim']}`" in results
        assert GEN._estimate(row) in results
    first = rows[0]
    d = float(first["difference"])
    shown = f"{100 * d:+.1f} pts" if first["metric"] in ("accuracy", "consistency") else f"{d:+.3f}"
    assert shown in results


def test_sphinx_roles_of_the_docstrings_are_dropped_from_the_rendered_page():
    html = "see :func:<code>load_run</code> and :class:<code>~capsprobe.probe.Subject</code>; a:b:<code>x</code>"
    assert GEN.on_page_content(html, None, None, None) == (
        "see <code>load_run</code> and <code>Subject</code>; a:b:<code>x</code>")


def test_every_registered_metric_has_a_written_definition():
    """The registry holds a metric's label and source; its definition is the concepts page's table (one row may
    define several metrics: the first cell names them)."""
    from capsprobe.metrics.registry import METRICS

    page = (DOCS / "concepts.md").read_text()
    section = page.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    named = {name for line in section.splitlines() if line.startswith("| `")
             for name in re.findall(r"`(\w+)`", line.split(" | ", 1)[0])}
    assert set(METRICS) <= named, sorted(set(METRICS) - named)


def test_the_demo_table_reads_every_row_from_the_committed_report(rendered):
    """Each headline row finds its numbers in reports/demo (a renamed metric or column would leave a "-")."""
    page = rendered["docs/getting-started.md"]
    lines = {line.split(" | ", 1)[0].strip("| "): line for line in page.splitlines() if line.startswith("| ")}
    for label, *_ in GEN.DEMO_ROWS:
        cells = lines[label].strip("|").split(" | ")[1:]
        assert cells and cells[0].strip() != "-", label  # the CapsNet has every row
    assert sum(label.startswith("decodability") for label in lines) == 4
