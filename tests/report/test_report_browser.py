"""Every committed report, and a freshly built tiny one, opened in headless Chromium as a reader would open it: the
title is the report's name, nothing scrolls sideways at 1280 px or 390 px (with every folded section open too),
every image loads, and the console stays silent.

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
#: every committed page's figures are checked against its report.md by tests/test_architecture.py.
PAGE_KINDS = ("ablation", "attacks", "demo", "viewpoint")
WIDTHS = (1280, 390)


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
        problems += [f"{width}px: console {m}" for m in console]
        page.close()
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


def test_the_check_catches_a_page_that_scrolls_sideways_and_a_broken_image(browser, tmp_path):
    """The checks can fail: a wide table outside a scroll box, a missing image and a console error are all seen."""
    (tmp_path / "manifest.json").write_text(json.dumps({"experiment": {"name": "bad"}}))
    html = tmp_path / "report.html"
    html.write_text("<!DOCTYPE html><html><head><title>capsprobe report: wrong</title></head><body><h1>x</h1>"
                    "<table><tr><td style='white-space:nowrap'>" + "wide " * 400 + "</td></tr></table>"
                    "<img alt='gone' src='missing.png'><script>console.error('boom')</script></body></html>")
    problems = "\n".join(_check(browser, html))
    assert "title 'capsprobe report: wrong'" in problems and "H1" in problems
    assert "scrolls sideways" in problems and "did not load: ['gone']" in problems and "boom" in problems
