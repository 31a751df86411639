"""One installed import name, ``stabilitybench``: the subsystems' folders are mapped into it (pyproject's
``package-dir``), so a user's own ``analysis.py`` or ``reports/`` folder cannot shadow the toolkit."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import stabilitybench

ROOT = Path(__file__).resolve().parent.parent
SUBSYSTEMS = ("data_schema", "generate", "analysis", "reports")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_mapped() -> None:
    """A new sub-package that is not in pyproject's ``packages`` would be missing from the wheel."""
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    assert mapping == {"stabilitybench": "stabilitybench", **{f"stabilitybench.{s}": s for s in SUBSYSTEMS}}
    want = {"stabilitybench"}
    for sub in SUBSYSTEMS:
        for init in (ROOT / sub).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            want.add(f"stabilitybench.{rel}")
    assert set(setuptools["packages"]) == want


def test_no_module_imports_a_bare_top_level_subsystem() -> None:
    """``import analysis`` works only from the repository root: every import goes through ``stabilitybench.``."""
    bad = []
    for folder in (*SUBSYSTEMS, "stabilitybench", "tests", "benchmarks", "notebooks", "docs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in SUBSYSTEMS]
    assert bad == []


def test_public_names_are_visible_to_type_checkers() -> None:
    """``__all__`` is a literal that lists every lazy name, ``dir()`` shows them, and ``py.typed`` ships."""
    lazy = stabilitybench._LAZY
    assert set(stabilitybench.__all__) == {*lazy, "perturbation"}
    assert set(stabilitybench.__all__) <= set(dir(stabilitybench))
    source = (ROOT / "stabilitybench" / "__init__.py").read_text()
    tree = ast.parse(source)
    checked = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {a.asname or a.name for n in checked.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert typed == set(lazy)
    assert (ROOT / "stabilitybench" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["stabilitybench"]


@pytest.mark.slow
def test_wheel_installs_one_name_and_ignores_a_shadowing_folder(tmp_path: Path) -> None:
    """Build the wheel, install it (no deps: the test venv's site-packages provide them) into a fresh venv,
    and import the API from a folder holding an ``analysis.py`` and a ``reports/`` package that would break it."""
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # a copy: setuptools builds inside the source folder
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "corpus", "results", "site", "build", "*.egg-info",
                                                             "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("stabilitybench-*.whl"))

    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"stabilitybench"}  # exactly one top-level import name
    names = zipfile.ZipFile(wheel).namelist()
    assert "stabilitybench/py.typed" in names and "stabilitybench/generate/profiles/quick.toml" in names

    # a fresh venv; the wheel goes into its own site-packages, and the test venv's site-packages serve the
    # dependencies through a .pth line (a path entry only: the editable install's finder there stays inactive)
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "numpy").is_dir())
    (site / "zz_test_deps.pth").write_text(f"{deps}\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    user = tmp_path / "notebooks"
    (user / "reports").mkdir(parents=True)
    (user / "analysis.py").write_text("raise ImportError('the user analysis.py was imported')\n")
    (user / "reports" / "__init__.py").write_text("raise ImportError('the user reports/ was imported')\n")
    (user / "generate.py").write_text("raise ImportError('the user generate.py was imported')\n")
    code = ("import stabilitybench as sb; "
            "from stabilitybench import perturbation, Probe, Recorder, MonitorFile; "
            "import stabilitybench.analysis.pipeline, stabilitybench.reports.report, stabilitybench.data_schema; "
            "from stabilitybench.generate.matrix import load_profile; "
            "assert len(load_profile('smoke')) > 0; "
            "print(sb.__file__); print(stabilitybench.reports.report.__file__)")
    done = subprocess.run([str(py), "-c", code], cwd=user, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = done.stdout.split()
    assert all(f.startswith(str(site)) for f in files), files
