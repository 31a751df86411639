"""Canonical digests of an analysis + report run, for the refactor-equality test (tests/test_refactor_equality.py).

``python tests/golden_tools.py OUT.json`` analyses the synthetic corpus of ``test_analysis_pipeline`` with the
code on ``sys.path`` and writes the digests; run it on the code *before* a refactor to make the golden file.

What is compared:
* every results table (``results/*.parquet``): its row count and each column's values (a sorted multiset,
  floats rounded to 9 significant digits);
* every number and string of ``summary.json`` (as a flat ``path -> value`` map), minus run-dependent fields
  (timings, absolute paths, code versions);
* every figure's pixels (``reports/out/*.png`` decoded by matplotlib), when the matplotlib version matches the
  one that made the golden file (another version may anti-alias differently).

The BLAS kernel is pinned: numpy's OpenBLAS picks its kernels by CPU (``DYNAMIC_ARCH``), and the synthetic corpus
has exactly low-rank features, so round-off-sized numbers (a PCA reconstruction error of 1e-31) differ between an
AVX-512 Intel and an AMD EPYC, and decide ties downstream. The golden file records ``OPENBLAS_CORETYPE``
(:data:`CORETYPE`, AVX2: every x86-64 server since 2013) and the test runs this script under it, in a subprocess
(the variable is read when numpy loads). Make the golden file the same way::

    OPENBLAS_CORETYPE=Haswell python tests/golden_tools.py tests/golden/synthetic_analysis.json
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

#: The OpenBLAS kernel the golden file is made and compared under (see the module docstring).
CORETYPE = "Haswell"

#: summary.json fields whose values depend on the machine, the time or the checkout, not on the analysis
VOLATILE = ("timings", "timings_s", "corpus", "code_version", "analysis_code_version", "generated_at", "wall_time_s",
            "elapsed_s", "results", "out")


def _round(x: Any) -> Any:
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return repr(x)
        return float(f"{x:.9g}")
    if isinstance(x, list):
        return [_round(v) for v in x]
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def table_digest(path: Path) -> dict[str, Any]:
    """``{"rows": n, "columns": {name: digest}}``: each column's values as a sorted multiset (floats rounded to
    9 significant digits), so that a column added by a refactor does not change the others' digests."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        values = sorted(json.dumps(_round(v), default=str) for v in table.column(name).to_pylist())
        columns[name] = hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]
    return {"rows": table.num_rows, "columns": columns}


def flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a/b/0": value}`` for every leaf of a JSON document, with volatile keys left out."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in VOLATILE:
                continue
            out.update(flat(v, f"{prefix}{k}/"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(flat(v, f"{prefix}{i}/"))
    else:
        out[prefix.rstrip("/")] = _round(doc)
    return out


def figure_digest(path: Path) -> str:
    import matplotlib.image as mpimg
    import numpy as np

    pixels = np.ascontiguousarray(mpimg.imread(path))
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def run(work: Path) -> dict[str, Any]:
    """Analyse and report the synthetic corpus in ``work``; return the digests."""
    import matplotlib

    from stabilitybench.analysis.pipeline import run_analysis
    from stabilitybench.reports.report import build_report

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_analysis_pipeline import FAST, make_corpus

    corpus = make_corpus(work / "corpus", seeds=(0, 1, 2, 3))
    results, report = work / "results", work / "report"
    run_analysis(corpus, results, FAST)
    build_report(results, report)
    return {
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "matplotlib": matplotlib.__version__,
        "tables": {p.name: table_digest(p) for p in sorted(results.glob("*.parquet"))},
        "summary": flat(json.loads((results / "summary.json").read_text())),
        "figures": {p.name: figure_digest(p) for p in sorted(report.rglob("*.png"))},
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digests = run(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests['tables'])} tables, {len(digests['summary'])} summary values, "
          f"{len(digests['figures'])} figures -> {sys.argv[1]}")
