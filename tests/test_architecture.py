"""The package's shape: no import cycle, the layer contracts of pyproject.toml kept, a light package face, the old
import paths of 0.1 gone, one version, and a repository that does not grow by megabytes per report."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

import capsprobe

ROOT = Path(capsprobe.__file__).resolve().parent.parent


def _graph():
    return grimp.build_graph("capsprobe", include_external_packages=False, cache_dir=None)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import, local ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = _graph()
    assert _cycles(graph) == []
    # the finder finds one when there is one
    graph.add_import(importer="capsprobe.errors", imported="capsprobe.cli")
    assert any("capsprobe.errors" in c and "capsprobe.cli" in c for c in _cycles(graph))


def test_the_layer_contracts_are_kept():
    """import-linter reads the contracts of pyproject.toml; an arrow back up the pipeline breaks one."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_importing_the_package_face_stays_light():
    """``import capsprobe`` registers the timm models (torch and timm load) but not matplotlib, seaborn, sklearn,
    kornia or pandas; ``capsprobe.errors`` loads no torch when imported from a fresh interpreter."""
    # one interpreter: the CLI (which imports the package face first) is checked after the face alone
    code = ("import sys, capsprobe, timm; timm.create_model('capsnet_small', conv_channels=8, primary_types=2); "
            "print(sorted(m for m in ('matplotlib', 'seaborn', 'sklearn', 'kornia', 'pandas') if m in sys.modules)); "
            "import capsprobe.cli; print(sorted(m for m in ('matplotlib', 'seaborn', 'sklearn', 'pandas', "
            "'scipy', 'mlxtend') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the CLI adds the suite's registry (kornia, for the --transform help) and nothing heavier: every command's
    # start-up pays for it
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


#: what training, the benchmark and `capsprobe train` never load: the probe and report layers, the full tasks, plotting
APART = ("capsprobe.probe", "capsprobe.report", "capsprobe.tasks", "matplotlib", "seaborn")
_LOADED = f"print(sorted(m for m in {APART!r} if m in sys.modules))"


def test_training_stands_apart_from_probing_and_reporting():
    """``capsprobe.training`` (the loop, the launchers of ``--jobs`` workers), ``capsprobe.bench`` and the train
    command's own imports (``--resume --force`` is refused after them) load neither the probe, the report nor the
    full tasks (pyproject.toml's forbidden contract says the same of the import graph)."""
    code = textwrap.dedent(f"""
        import sys
        import capsprobe.training, capsprobe.bench, capsprobe.training.launch
        from capsprobe.cli import main
        for args in (["--help"], ["--resume", "--force"]):
            sys.argv = ["capsprobe", "train", *args]
            try:
                main()
            except SystemExit as exc:
                assert exc.code == (0 if args == ["--help"] else 2), exc.code
        {_LOADED}
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_training_run_loads_no_probe_or_report(tmp_path):
    """A whole (tiny) run, from the data set to its completion record, without the probe and report layers."""
    code = textwrap.dedent(f"""
        import sys
        from capsprobe.training import RunConfig, fit
        fit(RunConfig(model="capsnet_small", epochs=1, batch_size=16, limit=16, device="cpu",
                      model_kwargs={{"conv_channels": 8, "primary_types": 2}}), {str(tmp_path / "run")!r}, progress=False)
        {_LOADED}
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


#: the module paths of 0.1 that 0.2 moved into subpackages (CHANGELOG.md): they do not import any more
OLD_MODULES = ["capsprobe.calibration", "capsprobe.compare", "capsprobe.lie", "capsprobe.multimnist",
               "capsprobe.plots", "capsprobe.runs", "capsprobe.seedstats", "capsprobe.train", "capsprobe._compat"]


@pytest.mark.parametrize("old", OLD_MODULES)
def test_the_old_import_paths_are_gone(old):
    sys.modules.pop(old, None)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


@pytest.mark.parametrize("module, name", [("capsprobe.probe", "perturb"), ("capsprobe.report", "write_report"),
                                          ("capsprobe.report", "recompare"), ("capsprobe.experiment", "run_demo"),
                                          ("capsprobe.experiment", "run_experiment")])
def test_names_that_moved_to_the_pipeline_live_only_there(module, name):
    import capsprobe.pipeline

    assert not hasattr(importlib.import_module(module), name)
    assert callable(getattr(capsprobe.pipeline, name))


def test_the_version_is_pyprojects():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert capsprobe.__version__ == "0.2.0" == project["version"]


def test_the_public_api_resolves():
    import capsprobe.pipeline

    for name in capsprobe.__all__:
        assert getattr(capsprobe, name) is not None, name
    assert capsprobe.write_report is capsprobe.pipeline.write_report


# --- repository weight ------------------------------------------------------------------------------------------

MAX_REPORTS = 20 * 2**20  # every report together: today's 11 hold under 12 MiB, room for 6+ more
MAX_REPORT = 4 * 2**20  # one report folder (the largest, reports/routing, nine models x 3 seeds: 3.5 MiB, CSV tables)
MAX_PICTURES = 3 * 2**19  # one report's figures/ and arrays/ (1.5 MiB): one seed's image grids per model
MAX_FILE = 2 * 2**20
#: the reports of 0.2.0 and their budget together: they may not grow back (reports/README.md)
TODAY = {"ablation", "ablation-lie", "affnist", "attacks", "demo", "null", "robustness", "routing", "routing-affnist",
         "routing-viewpoint", "viewpoint"}
MAX_TODAY = 12 * 2**20  # 11.7 MiB: their tables' floats to 6 significant digits, every seed's value beside each interval


def _tracked() -> list[Path]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in done.stdout.split("\0") if p and (ROOT / p).is_file()]


def test_the_repository_stays_small():
    """What a reader needs is committed (report.md, the figures it shows, CSV tables, image grids, manifest);
    report.html is rebuilt by ``capsprobe report`` and is not tracked."""
    files = _tracked()
    big = [(str(p.relative_to(ROOT)), p.stat().st_size) for p in files if p.stat().st_size > MAX_FILE]
    assert big == []
    reports = sum(p.stat().st_size for p in files if p.relative_to(ROOT).parts[0] == "reports")
    assert reports <= MAX_REPORTS, f"reports/ holds {reports / 2**20:.1f} MB of tracked files"
    assert not [p for p in files if p.name == "report.html"]


def _report_files() -> dict[str, list[Path]]:
    """The tracked files of each report folder (``reports/<name>/...``)."""
    out: dict[str, list[Path]] = {}
    for p in _tracked():
        parts = p.relative_to(ROOT).parts
        if parts[0] == "reports" and len(parts) > 2:
            out.setdefault(parts[1], []).append(p)
    return out


def test_each_report_keeps_to_its_budget():
    """A report folder stays under 4 MiB, its pictures (figures/, arrays/) under 1.5 MiB, and today's reports
    under 12 MiB together; rebuilt outputs (report.html, tables/) and the per-image table are not tracked."""
    reports = _report_files()
    if not reports:
        pytest.skip("no report is tracked here")
    size = {name: sum(p.stat().st_size for p in files) for name, files in reports.items()}
    assert {n: s for n, s in size.items() if s > MAX_REPORT} == {}
    pictures = {name: sum(p.stat().st_size for p in files if p.parent.name in ("figures", "arrays"))
                for name, files in reports.items()}
    assert {n: s for n, s in pictures.items() if s > MAX_PICTURES} == {}
    today = sum(s for n, s in size.items() if n in TODAY)
    assert today <= MAX_TODAY, f"today's reports hold {today / 2**20:.2f} MiB"
    rebuilt = [p for files in reports.values() for p in files
               if p.name in ("report.html", "results.parquet") or p.parent.name == "tables"]
    assert rebuilt == []


def test_committed_figures_and_image_grids_are_on_their_page():
    """Every figure committed under reports/ is shown by its report.md, and every image grid (arrays/*.npz) is one
    the page draws: figures no page shows are not committed."""
    reports = _report_files()
    if not reports:
        pytest.skip("no report is tracked here")
    unshown = []
    for name, files in reports.items():
        page = ROOT / "reports" / name / "report.md"
        text = page.read_text() if page.is_file() else ""
        for p in files:
            if p.parent.name == "figures" and f"figures/{p.name}" not in text:
                unshown.append(str(p.relative_to(ROOT)))
            if p.parent.name == "arrays" and f"figures/{p.stem}.png" not in text:
                unshown.append(str(p.relative_to(ROOT)))
    assert unshown == []


def test_image_grids_are_stored_in_8_bits_and_read_back(tmp_path):
    import numpy as np
    import pandas as pd

    from capsprobe.probe import METRIC_COLUMNS, ProbeResult, grid_array
    from capsprobe.report import read_probe_outputs, write_probe_outputs

    rng = np.random.default_rng(0)
    pixels = rng.random((2, 3, 1, 4, 4)).astype(np.float32)
    pixels[0, 0, 0, 0, 0], pixels[0, 0, 0, 0, 1] = 1.0, 0.0  # a lit pixel and a dark one survive exactly
    result = ProbeResult(metrics=pd.DataFrame(columns=METRIC_COLUMNS), images=pd.DataFrame(),
                         arrays={"grid": grid_array(pixels, ["a", "b"])})
    out = write_probe_outputs(result, tmp_path / "rep")
    with np.load(out / "arrays" / "grid.npz", allow_pickle=False) as stored:
        assert stored["images"].dtype == np.uint8
    back = read_probe_outputs(out).arrays["grid"]["images"]
    assert back.dtype == np.float32 and np.abs(back - pixels).max() <= 0.5 / 255 + 1e-7
    assert back[0, 0, 0, 0, 0] == 1.0 and back[0, 0, 0, 0, 1] == 0.0


@pytest.mark.slow
def test_a_committed_report_rebuilds_from_its_tracked_files(committed_report):
    """The tracked files of reports/demo (no report.html, no results.parquet, figures removed) render the committed
    report.md and every figure again (recomputing the comparisons without the per-image table is
    tests/test_experiment.py's recompare test)."""
    src = ROOT / "reports" / "demo"
    dst, done = committed_report("demo")
    assert done.exit_code == 0, done.output
    assert (dst / "report.md").read_text() == (src / "report.md").read_text()
    assert sorted(p.name for p in (dst / "figures").iterdir()) == sorted(p.name for p in (src / "figures").iterdir())


def test_the_tests_mirror_the_package():
    """Each test folder is a subpackage of capsprobe (``tests/models`` tests ``capsprobe/models``); test modules at the
    top cover the package as a whole; no test module sits deeper."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    subpackages = {p.parent.name for p in (ROOT / "capsprobe").glob("*/__init__.py")}
    assert folders and folders <= subpackages, sorted(folders - subpackages)
    assert not list(tests.glob("*/*/test_*.py"))
    assert all((tests / f / "__init__.py").is_file() for f in folders)


def test_the_reports_readme_lists_every_report_at_its_size():
    """reports/README.md's table has a row for every committed report folder (one with a report.md), and each row's
    size, and the total under it, are the tracked files' (to 0.01 MiB): a new or rebuilt report updates them."""
    reports = _report_files()
    if not reports:
        pytest.skip("no report is tracked here")
    text = (ROOT / "reports" / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| \[`([\w-]+)`\]\([\w-]+/report\.md\) \|[^|]*\| ([\d.]+) MiB \|", text, re.M))
    folders = {n for n, files in reports.items() if any(p.name == "report.md" for p in files)}
    assert set(rows) == folders
    size = {n: sum(p.stat().st_size for p in files) / 2**20 for n, files in reports.items()}
    assert {n: float(v) for n, v in rows.items()} == pytest.approx({n: size[n] for n in rows}, abs=0.006)
    total = sum(p.stat().st_size for p in _tracked() if p.relative_to(ROOT).parts[0] == "reports") / 2**20
    stated = re.search(r"^Together: ([\d.]+) MiB of tracked files in `reports/`", text, re.M)
    assert stated is not None and float(stated.group(1)) == pytest.approx(total, abs=0.06)
