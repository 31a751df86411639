"""Fixtures shared across test modules.

The smoke profile is trained once per test session (:func:`local_smoke`), through the CLI as a user runs it,
and every module that needs a corpus reads that one. A test that changes a corpus (a rerun that might write,
``analyze`` updating ``runs.parquet``, a damaged file) works on a copy: :func:`smoke_copy`, or
``shutil.copytree(local_smoke, tmp_path / ...)``. Training it once instead of once per module is most of
what keeps ``make test`` within its time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stabilitybench.generate.matrix import load_profile


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stabilitybench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="session")
def local_smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's corpus, generated once per session on the local pool: treat it as read-only.

    ``generate --profile smoke --workers 2`` in a subprocess, so the session's one training run also covers
    the user's path through the CLI; it is the reference corpus the Ray backend must reproduce.
    """
    n = len(load_profile("smoke"))
    work = tmp_path_factory.mktemp("local_smoke")
    res = _cli("generate", "--profile", "smoke", "--workers", "2", "--out", str(work / "corpus"), cwd=work)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"ran {n} run(s): {n} ok, 0 failed" in res.stderr, res.stderr
    return work / "corpus"


@pytest.fixture
def smoke_copy(local_smoke: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`local_smoke` in the test's ``tmp_path`` (``tmp_path / "corpus"``), free to change."""
    return Path(shutil.copytree(local_smoke, tmp_path / "corpus"))


@pytest.fixture(scope="session")
def smoke_analyzed(local_smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(corpus, results)``: ``analyze`` (CLI) of a copy of :func:`local_smoke`, once per session; read-only.

    The copy is needed because ``analyze`` writes the outcome columns into the corpus (``runs.parquet``).
    """
    root = tmp_path_factory.mktemp("smoke_analyzed")
    corpus, results = root / "corpus", root / "results"
    shutil.copytree(local_smoke, corpus)
    res = _cli("analyze", "--corpus", str(corpus), "--out", str(results), cwd=root)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return corpus, results
