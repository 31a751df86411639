"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from stabilitybench.generate.backends import LocalPool
from stabilitybench.generate.matrix import load_profile
from stabilitybench.generate.runner import run_matrix


@pytest.fixture(scope="session")
def local_smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile run once on the local pool: the reference corpus the Ray backend must reproduce."""
    smoke = load_profile("smoke")
    corpus = tmp_path_factory.mktemp("local_smoke") / "corpus"
    report = run_matrix(smoke, corpus, backend=LocalPool(2))
    assert (report.ran, report.ok) == (len(smoke), len(smoke))
    return corpus
