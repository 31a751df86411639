"""Helpers shared by the backend tests: what a corpus *contains*, minus the clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_schema import events_path, read_manifest, steps_path

#: Columns that measure time (they differ between any two executions of the same run).
CLOCK_COLUMNS = {"wall_time_s", "run_wall_time_s", "started_at", "tokens_per_s"}


def _config_without_clock(text: str) -> dict[str, Any]:
    config = json.loads(text)
    for key in ("probe_seconds", "wall_time_s"):  # RL: seconds in the probes; LM: the run's wall time
        config.get("algo_config", {}).pop(key, None)
    return config


def corpus_contents(corpus: Path) -> dict[str, dict[str, Any]]:
    """run_id -> manifest row, steps and events (as Python lists), with the clock columns removed.

    Two corpora with equal contents hold the same runs with the same telemetry, value for value.
    """
    out: dict[str, dict[str, Any]] = {}
    rows = read_manifest(corpus).to_pylist()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate manifest rows in {corpus}: {ids}"
    for row in rows:
        clean = {k: v for k, v in row.items() if k not in CLOCK_COLUMNS | {"config_json"}}
        clean["config"] = _config_without_clock(row["config_json"])
        steps = pq.read_table(steps_path(corpus, row))
        events = pq.read_table(events_path(corpus, row["run_id"]))
        out[row["run_id"]] = {
            "row": clean,
            "steps": steps.drop_columns([c for c in steps.column_names if c in CLOCK_COLUMNS]).to_pydict(),
            "events": events.drop_columns([c for c in events.column_names if c in CLOCK_COLUMNS]).to_pydict(),
        }
    return out


def data_files(corpus: Path) -> list[str]:
    """Every file under the corpus's data folders, temporary files included (relative paths, sorted)."""
    return sorted(str(p.relative_to(corpus)) for sub in ("steps", "events") for p in (corpus / sub).rglob("*")
                  if p.is_file())


def pids_writing_to(path: Path) -> list[int]:
    """Processes whose stdout (fd 1) is ``path``: the worker running a run (its log is ``logs/<run_id>.out``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry, "fd", "1").readlink() == path:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
