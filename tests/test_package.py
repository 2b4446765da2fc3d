"""capsprobe as a package: the wheel holds every module and the experiment files, and installed in a fresh venv it runs
``capsprobe demo --size tiny`` from a folder that is not the checkout; ``CITATION.cff`` names this version.

The wheel test (``@pytest.mark.package``: tens of seconds) is left out of ``make test`` and run by ``make
test-package`` (and so by .ci/run). It is offline: the wheel is built with this venv's setuptools (``pip wheel
--no-build-isolation --no-index``), the fresh venv has no pip of its own and reaches this venv's packages through a
``.pth`` file, and the wheel is installed with ``--no-deps --no-index``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import yaml

import capsprobe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILD_READS = ("pyproject.toml", "README.md", "LICENSE", "capsprobe", "experiments")  # what the wheel is built from


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_wheel_lists_every_subpackage_and_the_experiments():
    """pyproject.toml lists the packages (one of them, the experiments, lies outside capsprobe/): a subpackage added
    under capsprobe/ and not listed would be missing from the wheel."""
    setuptools = _pyproject()["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "capsprobe").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"capsprobe.experiments"}
    assert setuptools["package-dir"] == {"capsprobe.experiments": "experiments"}
    assert setuptools["package-data"]["capsprobe.experiments"] == ["*.toml"]


def test_citation_names_this_version_and_the_license():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == capsprobe.__version__
    assert citation["title"].startswith("capsprobe")
    assert citation["authors"] == [{"name": "capsprobe developers"}]
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert citation["license"] == "MIT" and license_text.startswith("MIT License")
    assert citation["message"] and citation["type"] == "software"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done


@pytest.mark.package
def test_the_wheel_runs_the_tiny_demo_from_a_fresh_venv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    start = time.perf_counter()
    # the wheel, from a copy of what the build reads (setuptools writes build/ and *.egg-info beside its sources: not
    # in the checkout), with this venv's setuptools: nothing is downloaded
    source, built = tmp_path / "source", tmp_path / "dist"
    source.mkdir()
    for name in BUILD_READS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
          str(built), str(source)], tmp_path, env, 300)
    (wheel,) = built.glob("capsprobe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "capsprobe").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    tomls = {f"capsprobe/experiments/{p.name}" for p in (ROOT / "experiments").glob("*.toml")}
    assert "capsprobe/experiments/demo.toml" in tomls and tomls <= names, sorted(tomls - names)

    # a fresh venv without pip; this venv's site-packages (the dependencies) after its own through a .pth file
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, 120)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                        env, 60).stdout.strip())
    (purelib / "capsprobe_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], tmp_path, env, 300)

    work = tmp_path / "elsewhere"  # not the checkout: no experiments/ folder, no capsprobe/ source
    work.mkdir()
    where = _run([str(python), "-c", "import capsprobe, capsprobe.experiment as e; print(capsprobe.__file__); "
                  "print(e.demo_file())"], work, env, 120).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in where), where  # the installed copy, not the checkout's
    report = tmp_path / "report"
    out = _run([str(venv / "bin" / "capsprobe"), "demo", "--size", "tiny", "--out", str(report), "--no-progress"],
               work, env, 540)
    assert (report / "report.html").is_file() and (report / "report.md").is_file(), out.stdout[-2000:]
    assert re.search(r"torch \d", (report / "report.md").read_text(encoding="utf-8"))
    assert (work / "runs").is_dir()  # the runs went to the folder it ran in
    print(f"wheel {wheel.name}: {wheel.stat().st_size} bytes, {len(names)} files; "
          f"build, install and tiny demo {time.perf_counter() - start:.1f} s")
