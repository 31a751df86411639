"""The core install (no torch, SB3, MuJoCo or transformers) reads, queries, analyses and reports a corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from test_analysis_pipeline import make_corpus

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "stable_baselines3", "gymnasium", "mujoco", "transformers", "tokenizers")

#: Runs stabilitybench's CLI in-process, then prints which heavy modules that imported.
_PROBE = """
import json, sys
from stabilitybench.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("HEAVY=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_imported(args: list[str], cwd: Path) -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY="))
    return json.loads(line.removeprefix("HEAVY=")), out.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("light") / "corpus")


@pytest.mark.parametrize("args", [["--version"], ["query", "select count(*) as n from steps natural join runs"],
                                  ["status"], ["export", "--tensorboard", "tb", "--only", "magnitude=100"]])
def test_reading_commands_import_no_training_stack(corpus: Path, args: list[str]) -> None:
    heavy, stdout = _heavy_imported([*args, *(["--corpus", str(corpus)] if args[0] != "--version" else [])],
                                    corpus.parent)
    assert heavy == [], f"{args[0]} imported {heavy}"
    assert stdout.strip()


def test_generate_without_the_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import stabilitybench.generate.cli as gcli
    from stabilitybench.data_schema import StabilityBenchError

    monkeypatch.setattr(gcli, "GENERATOR_MODULES", ("torch", "no_such_module_xyz"))
    with pytest.raises(StabilityBenchError, match=r"generate needs no_such_module_xyz: pip install "
                                                  r"'stabilitybench\[generate\]'"):
        gcli.require_generators()


@pytest.mark.slow
def test_core_install_in_a_fresh_venv(corpus: Path, tmp_path: Path) -> None:
    """`pip install .` into a venv without system site-packages, from the registry; then the whole read side."""
    t0 = time.perf_counter()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = tmp_path / "src"  # a copy: pip builds in the source folder, which must not be the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "corpus", "results", "tests", "notebooks",
                                                             "benchmarks", "build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
                          str(src)], env=env, capture_output=True, text=True, timeout=1500)
    assert pip.returncode == 0, pip.stderr[-3000:]
    t_install = time.perf_counter() - t0
    check = subprocess.run([str(py), "-c", f"import importlib.util as u; print([m for m in {HEAVY!r} "
                            "if u.find_spec(m)])"], env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "[]", check.stdout  # the training stack is not installed

    sb = str(env_dir / "bin" / "stabilitybench")

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sb, *args], cwd=corpus.parent, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
        return done

    assert "stabilitybench" in run("--version").stdout
    assert "10" in run("query", "select count(*) from runs", "--corpus", "corpus").stdout
    run("status", "--corpus", "corpus")
    assert "missing" in run("status", "--corpus", "corpus", "--profile", "smoke").stdout  # plans without gymnasium
    run("analyze", "--corpus", "corpus", "--out", "results")
    summary = json.loads((corpus.parent / "results" / "summary.json").read_text())
    assert summary["n_runs"] == 10
    assert "gru" not in summary["config"]["early_warning"]["detectors"]  # the GRU monitor needs torch
    run("report", "--results", "results", "--out", "report")
    assert (corpus.parent / "report" / "index.html").stat().st_size > 1000
    folder = subprocess.run([str(py), "-c", "import pandas as pd; print(len(pd.read_parquet('corpus/steps')))"],
                            cwd=corpus.parent, env=env, capture_output=True, text=True, timeout=120)
    assert folder.returncode == 0 and int(folder.stdout) > 0, folder.stderr[-2000:]
    gen = subprocess.run([sb, "generate", "--profile", "smoke", "--out", "corpus2"], cwd=corpus.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert gen.returncode == 2 and "pip install 'stabilitybench[generate]'" in gen.stderr
    print(f"light install: pip {t_install:.0f} s, whole test {time.perf_counter() - t0:.0f} s")
