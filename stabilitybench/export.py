"""``stabilitybench export --tensorboard DIR``: the corpus's telemetry as TensorBoard scalars.

One TensorBoard run (sub-folder of ``DIR``) per corpus run, named
``<algo>/<env>/<perturbation>-x<magnitude>-seed<seed>-<run_id>``; one scalar tag per
numeric steps column (``perturbation_active`` as 0/1), indexed by ``step`` (the
optimizer update), wall time = the run's start plus ``wall_time_s``. Null values are
skipped; non-finite ones are written as they are (a divergence is data).

Each run is written into a dot-prefixed temporary folder and renamed into place, so
exporting again replaces a run instead of appending a second copy of its scalars.
Needs the ``tensorboard`` package (the ``[data]`` extra), not torch.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema import StabilityBenchError, read_manifest, require_corpus, steps_path
from stabilitybench.data_schema.compat import upgrade
from stabilitybench.data_schema.schema import PARTITION_COLUMNS
from stabilitybench.data_schema.verify import readable_runs
from stabilitybench.generate.matrix import value_matches

#: Steps columns that index a row rather than measure training: not exported as scalars.
NOT_SCALARS = frozenset({"run_id", "step", "samples_seen", "wall_time_s", *PARTITION_COLUMNS})


def run_name(row: dict[str, Any]) -> str:
    """The TensorBoard run (relative folder) of a manifest row; groups by algo and env in the UI."""
    parts = (row["algo"], row["env"], f"{row['perturbation']}-x{row['magnitude']:g}-seed{row['seed']}-{row['run_id']}")
    return "/".join(quote(str(p), safe="-_.+") for p in parts)


def select_runs(rows: list[dict[str, Any]], filters: dict[str, set[str]]) -> list[dict[str, Any]]:
    """Manifest rows (status ok) matching every ``--only`` filter."""
    return [r for r in rows if r["status"] == "ok" and all(value_matches(k, r[k], v) for k, v in filters.items())]


def export_tensorboard(corpus: str | os.PathLike[str], out: str | os.PathLike[str],
                       filters: dict[str, set[str]] | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       notes: list[str] | None = None) -> list[Path]:
    """Write the selected runs of ``corpus`` under ``out``; returns the run folders written.

    Only runs whose files ``verify`` accepts are exported (:func:`stabilitybench.data_schema.verify.readable_runs`);
    the others are named in one line (appended to ``notes``, else a
    :class:`~data_schema.errors.SkippedRunsWarning`). When no selected run is readable it refuses in one line.
    """
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise StabilityBenchError("export --tensorboard needs the tensorboard package: "
                                  "pip install 'stabilitybench[data]'") from None

    require_corpus(corpus)
    selected = select_runs(read_manifest(corpus).to_pylist(), filters or {})
    if not selected:
        raise StabilityBenchError(f"{corpus}: no finished run matches the --only filter")
    readable = readable_runs(corpus, selected)
    runs = readable.rows
    if not runs:
        raise StabilityBenchError(f"{corpus}: nothing exported: {readable.warning()}")
    readable.report(notes)
    out = Path(out)
    written = []
    for i, row in enumerate(runs):
        table = upgrade(pq.read_table(steps_path(corpus, row)), "steps")
        start = _start_time(row)
        final = out / run_name(row)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
        writer = EventFileWriter(str(tmp))
        try:
            for step, wall, values in _scalar_rows(table):
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values])
                writer.add_event(Event(step=step, wall_time=start + wall, summary=summary))
            writer.close()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            writer.close()
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(final)
        if progress:
            progress(i + 1, len(runs))
    return written


def _scalar_rows(table: pa.Table) -> list[tuple[int, float, list[tuple[str, float]]]]:
    """``(step, wall_time_s, [(tag, value), ...])`` per steps row, nulls left out."""
    tags = [f.name for f in table.schema if f.name not in NOT_SCALARS
            and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type))]
    cols = {t: table.column(t).to_pylist() for t in tags}
    steps, walls = table.column("step").to_pylist(), table.column("wall_time_s").to_pylist()
    rows = []
    for i, step in enumerate(steps):
        values = [(t, float(cols[t][i])) for t in tags if cols[t][i] is not None]
        rows.append((int(step), float(walls[i] or 0.0), values))
    return rows


def _start_time(row: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(row["started_at"]).timestamp() if row.get("started_at") else 0.0
    except ValueError:
        return 0.0


__all__ = ["export_tensorboard", "run_name", "select_runs"]
