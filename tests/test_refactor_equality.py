"""Every results table, summary number and figure is what it was before the "one owner per concept" refactor.

``tests/golden/synthetic_analysis.json`` was made by ``tests/golden_tools.py`` with the code *before* the refactor
(the synthetic corpus of ``test_analysis_pipeline``, 4 seeds: 13 runs; analyse + report). This test runs the same
with today's code and compares. Added tables, columns, summary fields and figures are allowed (they are listed
when the test runs with ``-s``); a changed or missing one fails, naming it. A deliberate change to an output
regenerates the golden file (``python tests/golden_tools.py tests/golden/synthetic_analysis.json``) in the commit
that explains why.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from golden_tools import CORETYPE

GOLDEN = Path(__file__).parent / "golden" / "synthetic_analysis.json"
#: summary.json entries that the refactor moved on purpose (issue 28: analysis may not import reports, so the figure
#: index left summary.json for the report's own ``figures.json``; summary.json now names the questions instead)
MOVED = ("figures/",)


def has_avx2() -> bool:
    """Whether this CPU runs OpenBLAS's AVX2 (:data:`golden_tools.CORETYPE`) kernels."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory, before: dict[str, Any]) -> dict[str, Any]:
    """Today's digests, made by ``golden_tools.py`` in a subprocess under the golden file's BLAS kernel."""
    if before.get("openblas_coretype") != CORETYPE:
        pytest.fail(f"the golden file was made under OPENBLAS_CORETYPE={before.get('openblas_coretype')!r}, "
                    f"not {CORETYPE!r}: remake it as golden_tools.py says")
    if not has_avx2():
        pytest.skip(f"numbers compared only under OpenBLAS's {CORETYPE} kernels (x86-64 with AVX2)")
    out = tmp_path_factory.mktemp("equality") / "now.json"
    env = {**os.environ, "OPENBLAS_CORETYPE": CORETYPE}
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("golden_tools.py")), str(out)], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


def test_every_results_table_is_equal(now: dict[str, Any], before: dict[str, Any]) -> None:
    changed = []
    for name, old in before["tables"].items():
        new = now["tables"].get(name)
        if new is None:
            changed.append(f"{name}: missing")
            continue
        if new["rows"] != old["rows"]:
            changed.append(f"{name}: {old['rows']} rows before, {new['rows']} now")
        changed += [f"{name}.{col}: {'missing' if col not in new['columns'] else 'values differ'}"
                    for col, digest in old["columns"].items() if new["columns"].get(col) != digest]
    added = sorted(set(now["tables"]) - set(before["tables"]))
    print(f"tables added: {added}")
    assert changed == []


def test_every_summary_number_is_equal(now: dict[str, Any], before: dict[str, Any]) -> None:
    old, new = before["summary"], now["summary"]
    changed = [f"{k}: {v!r} -> {new.get(k, '<missing>')!r}" for k, v in old.items()
               if new.get(k, "<missing>") != v and not k.startswith(MOVED)]
    print(f"summary fields added: {len(set(new) - set(old))}")
    assert changed == []


def test_every_figure_is_equal(now: dict[str, Any], before: dict[str, Any]) -> None:
    if before["matplotlib"] != matplotlib.__version__:
        pytest.skip(f"pixels compared only under matplotlib {before['matplotlib']} (installed: "
                    f"{matplotlib.__version__})")
    changed = [name for name, digest in before["figures"].items() if now["figures"].get(name) != digest]
    print(f"figures added: {sorted(set(now['figures']) - set(before['figures']))}")
    assert changed == []
