"""Every committed report, and a freshly built tiny one, opened in headless Chromium as a reader would open it: the
title is the report's name, nothing scrolls sideways at 1280 px or 390 px (with every folded section open too),
every image loads, every figure fits the column at 1280 px and is shown at least 200 px high (or at its natural
height where that is less: no unreadable strip), and the console stays silent.

Needs Chromium (Debian's ``chromium``; ``.ci/run`` installs it where missing, or set ``CAPSPROBE_CHROMIUM``) and
the ``playwright`` package (the dev extra) to drive it; without either the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from capsprobe.report.render import report_title

REPO = Path(__file__).resolve().parents[2]
COMMITTED = sorted(p.parent for p in (REPO / "reports").glob("*/manifest.json"))
#: one committed report per kind of page (rebuilding a page draws its figures: seconds each, so not all eleven):
#: the suite with the Lie probe (demo), several seeds per model with the ablation table (ablation), the worst cases
#: and attacks (attacks), the viewpoint task's own section (viewpoint). The fresh tiny report below is opened too;
#: every committed page's figures are checked against its report.md by tests/test_architecture.py. And the largest
#: committed report (routing: nine models x 3 seeds, the most figures' content and the widest tables).
PAGE_KINDS = ("ablation", "attacks", "demo", "viewpoint", "routing")
LARGEST = "routing"
WIDTHS = (1280, 390)
MIN_FIGURE_HEIGHT = 200  # px a figure is shown at least (its natural height where that is less), at 1280 px


def _chromium() -> str | None:
    return os.environ.get("CAPSPROBE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set CAPSPROBE_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _check(browser, html: Path) -> list[str]:
    """What a reader would notice, as a list of problems (empty: none)."""
    manifest = json.loads((html.parent / "manifest.json").read_text())
    problems = []
    for width in WIDTHS:
        page = browser.new_page(viewport={"width": width, "height": 900})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"error: {e}"))
        page.goto(html.as_uri(), wait_until="load")
        if page.title() != report_title(html.parent, manifest):
            problems.append(f"{width}px: title {page.title()!r}")
        h1 = page.eval_on_selector_all("h1", "hs => hs.map(h => h.textContent)")
        if h1 != [page.title()]:
            problems.append(f"{width}px: H1 {h1!r}")
        for state in ("folded", "unfolded"):
            if state == "unfolded":
                page.eval_on_selector_all("details", "ds => ds.forEach(d => d.open = true)")
            scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            if scroll > inner:
                problems.append(f"{width}px, {state}: the page is {scroll}px wide (scrolls sideways)")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.alt)")
        if broken:
            problems.append(f"{width}px: {len(broken)} image(s) did not load: {broken[:3]}")
        if width == WIDTHS[0]:
            problems += _figure_sizes(page)
        problems += [f"{width}px: console {m}" for m in console]
        page.close()
    return problems


def _figure_sizes(page) -> list[str]:
    """Each figure as shown: no wider than the page's column, and at least :data:`MIN_FIGURE_HEIGHT` px high unless
    its natural height is less (the page never shrinks a figure into a strip)."""
    shown = page.evaluate("""() => Array.from(document.images).map(i => {
        const r = i.getBoundingClientRect();
        return [i.alt.slice(0, 50), r.width, r.height, i.naturalWidth, i.naturalHeight,
                document.body.clientWidth - parseFloat(getComputedStyle(document.body).paddingLeft)
                - parseFloat(getComputedStyle(document.body).paddingRight)];
    })""")
    problems = []
    for alt, w, h, natural_w, natural_h, column in shown:
        if w > column + 0.5:
            problems.append(f"figure {alt!r} shown {w:.0f}px wide in a {column:.0f}px column")
        if h + 0.5 < min(MIN_FIGURE_HEIGHT, natural_h):
            problems.append(f"figure {alt!r} shown {w:.0f} x {h:.0f}px ({natural_w} x {natural_h} natural): a strip")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("name", PAGE_KINDS)
def test_a_committed_report_reads_well_in_a_browser(browser, name, committed_report):
    folder, done = committed_report(name)  # rebuilt from its tracked files: report.html is never committed
    assert done.exit_code == 0, done.output
    problems = _check(browser, folder / "report.html")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_a_fresh_tiny_report_reads_well_in_a_browser(browser, tiny_experiment):
    folder, _ = tiny_experiment("demo")
    html = folder / "reports" / "demo" / "report.html"
    problems = _check(browser, html)
    assert not problems, "\n".join(problems)


def test_the_page_kinds_are_committed_reports():
    assert set(PAGE_KINDS) <= {p.name for p in COMMITTED}


def test_the_largest_committed_report_is_opened():
    """The largest report (its files' bytes, the rebuilt page left out) is one of the pages the browser opens."""
    def size(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "report.html"
                   and "tables" not in p.relative_to(folder).parts)

    assert max(COMMITTED, key=size).name == LARGEST and LARGEST in PAGE_KINDS


def test_the_check_catches_a_page_that_scrolls_sideways_and_a_broken_image(browser, tmp_path):
    """The checks can fail: a wide table outside a scroll box, a missing image and a console error are all seen."""
    from PIL import Image

    (tmp_path / "manifest.json").write_text(json.dumps({"experiment": {"name": "bad"}}))
    Image.new("RGB", (8000, 300), "white").save(tmp_path / "strip.png")  # shown 1,068 x 40 px in the column
    Image.new("RGB", (600, 120), "white").save(tmp_path / "low.png")  # a low figure at its natural size is fine
    html = tmp_path / "report.html"
    html.write_text("<!DOCTYPE html><html><head><title>capsprobe report: wrong</title></head><body><h1>x</h1>"
                    "<table><tr><td style='white-space:nowrap'>" + "wide " * 400 + "</td></tr></table>"
                    "<img alt='gone' src='missing.png'><img alt='strip' src='strip.png' style='max-width:100%'>"
                    "<img alt='low' src='low.png'><script>console.error('boom')</script></body></html>")
    problems = "\n".join(_check(browser, html))
    assert "title 'capsprobe report: wrong'" in problems and "H1" in problems
    assert "scrolls sideways" in problems and "did not load: ['gone']" in problems and "boom" in problems
    assert "figure 'strip' shown" in problems and "a strip" in problems and "'low'" not in problems
