"""Shared fixtures: small, seeded, CPU-only, no network. Tiny experiment reports are built once per test session and
shared (read-only) by every test that needs them; the tiny trained runs the probe tests share are in
``tests/probe/conftest.py``. The folders mirror the package (``tests/models`` tests ``capsprobe/models``...); the
tests at this level cover the package as a whole (its shape, the CLI, experiment files, the extension points)."""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

import pytest
import torch

# one process: two torch threads; under pytest-xdist (`make test` runs one worker per core) each worker takes one, so
# the workers never wait on each other's threads (tiny models on an oversubscribed core run 5-20 times slower)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _rgb_loader(root, download):
    from capsprobe.data import ImageSplit

    g = torch.Generator().manual_seed(0)

    def make(n):
        return ImageSplit(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 10)

    return make(200), make(40)


@pytest.fixture(scope="session", autouse=True)
def _test_datasets():
    from capsprobe.data import DatasetSpec, register_dataset

    register_dataset(DatasetSpec("test-rgb32", 3, 32, 10, "random 3x32x32 images (tests)"), _rgb_loader)


@pytest.fixture(scope="session")
def done(tmp_path_factory):
    """A finished tiny run (capsnet_small, 1 epoch, 32 images), trained once per session and never modified by the
    tests: they copy it (``tests/test_bad_inputs.py``, ``tests/training/test_reliability.py``)."""
    from capsprobe.training.loop import fit
    from capsprobe.training.runs import RunConfig

    return fit(RunConfig(model="capsnet_small", epochs=1, batch_size=16, limit=32),
               tmp_path_factory.mktemp("done") / "run", progress=False)


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """``tiny_experiment(name)``: run ``experiments/<name>.toml --size tiny`` once per session (in its own folder)
    and return ``(folder, output)``; the report is ``folder / "reports" / name``."""
    from typer.testing import CliRunner

    from capsprobe.cli import app

    done: dict[str, tuple[Path, str]] = {}

    def run(name: str) -> tuple[Path, str]:
        if name not in done:
            folder = tmp_path_factory.mktemp(f"exp-{name}")
            cwd = os.getcwd()
            os.chdir(folder)
            try:
                result = CliRunner().invoke(app, ["run", str(EXPERIMENTS / f"{name}.toml"), "--size", "tiny",
                                                  "--device", "cpu", "--no-progress"])
            finally:
                os.chdir(cwd)
            assert result.exit_code == 0, result.output
            done[name] = (folder, result.output)
        return done[name]

    return run


@pytest.fixture(scope="session")
def committed_report(tmp_path_factory):
    """``committed_report(name)``: the tracked files of ``reports/<name>`` (git's list: no report.html, no
    results.parquet) copied once per session, figures removed, and rendered by ``capsprobe report``; returns
    ``(folder, result)`` with the CLI's result. Tests only read the folder."""
    import shutil
    import subprocess

    from typer.testing import CliRunner

    from capsprobe.cli import app

    root = EXPERIMENTS.parent
    done: dict[str, tuple[Path, object]] = {}

    def build(name: str):
        if name not in done:
            listed = subprocess.run(["git", "ls-files", "-z", f"reports/{name}"], cwd=root, capture_output=True,
                                    text=True)
            files = [root / f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else []
            if not files:
                pytest.skip(f"reports/{name} is not tracked here")
            dst = tmp_path_factory.mktemp("committed") / name
            for p in files:
                target = dst / p.relative_to(root / "reports" / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)
            shutil.rmtree(dst / "figures", ignore_errors=True)
            done[name] = (dst, CliRunner().invoke(app, ["report", str(dst)]))
        return done[name]

    return build


# --- tiers: `make test-fast` leaves out every test that trains a model -------------------------------------------

_TRAINING_FIXTURES = {"tiny_runs", "tiny_experiment", "done"}
_TRAINS = re.compile(r"\bfit\(|\[\"(train|run|demo|bench)\"|run_experiment\(|run_demo\(|_killed\(|_run_script\(")


def pytest_collection_modifyitems(config, items):
    """Mark ``trains`` the tests that train: those using a training fixture (directly or through another fixture)
    and those whose own code calls the trainer, the experiment runner or the train/run/demo commands."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError):
            source = ""
        defs = getattr(item, "_fixtureinfo", None)
        closure_sources = []
        if defs is not None:
            for name in fixtures:
                for fixdef in defs.name2fixturedefs.get(name, ()):
                    try:
                        closure_sources.append(inspect.getsource(fixdef.func))
                    except (OSError, TypeError):
                        pass
        if fixtures & _TRAINING_FIXTURES or _TRAINS.search(source) or any(_TRAINS.search(s) for s in closure_sources):
            item.add_marker(pytest.mark.trains)


def _art_modules() -> list[str]:
    return [k for k in sys.modules if k == "art" or k.startswith("art.")]


@pytest.fixture
def fake_art(tmp_path, monkeypatch):
    """A stand-in ``art`` package: ``fake_art(files)`` writes ``{relative path: source}`` under ``tmp_path/fake``, puts
    it first on ``sys.path``, points ``HOME`` and ``XDG_CACHE_HOME`` into ``tmp_path`` and unloads ART, so the next
    import of ``art`` is the stand-in's; returns ``(home, cache)``. The real ART modules are put back afterwards."""
    saved = {k: sys.modules[k] for k in _art_modules()}

    def install(files: dict[str, str]) -> tuple[Path, Path]:
        for name, text in files.items():
            (tmp_path / "fake" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "fake" / name).write_text(text)
        home, cache = tmp_path / "home", tmp_path / "cache"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
        monkeypatch.syspath_prepend(str(tmp_path / "fake"))
        for k in _art_modules():
            del sys.modules[k]
        return home, cache

    yield install
    for k in _art_modules():
        del sys.modules[k]
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: a second thread only waits for the first (5 to 20 times slower
    on a shared core). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
