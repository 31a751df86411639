"""Helpers shared by the backend tests: what a corpus *contains*, minus the clock."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from stabilitybench.data_schema import events_path, read_manifest, steps_path

#: Columns that measure time (they differ between any two executions of the same run).
CLOCK_COLUMNS = {"wall_time_s", "run_wall_time_s", "started_at", "tokens_per_s"}
#: Sizes and hashes of the files: the files hold the clock columns, so these differ between executions too.
DIGEST_COLUMNS = {"steps_bytes", "steps_blake2b", "events_bytes", "events_blake2b"}


def _config_without_clock(text: str) -> dict[str, Any]:
    config = json.loads(text)
    for key in ("probe_seconds", "fixed_coherence_seconds", "wall_time_s"):  # RL: seconds in the probes; LM: wall time
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
        clean = {k: v for k, v in row.items() if k not in CLOCK_COLUMNS | DIGEST_COLUMNS | {"config_json"}}
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


# ----------------------------------------------------------------------------- fault injection
def flip_byte_in_page(path: Path, column: str = "grad_norm") -> int:
    """Flip one bit in the page data of ``column`` so that its values change; returns the file offset.

    Walks back from the end of the column chunk until a flip changes what a plain read (no
    page-checksum verification) returns, or makes it fail: a byte that only sits in a page
    header's statistics would be a harmless flip. The footer is untouched, so a footer-only
    check passes.
    """
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(0)
    chunk = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == column)
    first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    original_bytes = path.read_bytes()
    original = pq.read_table(path).column(column)
    for offset in range(first + chunk.total_compressed_size - 1, first, -1):
        data = bytearray(original_bytes)
        data[offset] ^= 0x04
        path.write_bytes(bytes(data))
        try:
            if not pq.read_table(path).column(column).equals(original):
                return offset
        except (OSError, ValueError):
            return offset
    path.write_bytes(original_bytes)
    raise AssertionError(f"no byte of {column} in {path} changes its values")


def flip_byte(path: Path, rng: Any) -> int:
    """Flip one bit anywhere in the file (footer, page header or data); returns the offset."""
    data = bytearray(path.read_bytes())
    offset = int(rng.integers(0, len(data)))
    data[offset] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    return offset


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (needs root or CAP_SYS_ADMIN; the caller skips otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise PermissionError(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def can_mount_tmpfs(base: Path) -> bool:
    try:
        with tmpfs(base / "probe-mount", "16k"):
            return True
    except (PermissionError, FileNotFoundError):
        return False


def ar1_latent(rng: np.random.Generator, n: int, kick_at: int | None = None) -> np.ndarray:
    """An AR(1) latent ``z[t] = 0.9 z[t-1] + N(0, 0.3)`` of length ``n``, shifted by 4 from ``kick_at`` on:
    the synthetic telemetry's driver in the detector and online-monitor tests."""
    z = np.zeros(n)
    for t in range(1, n):
        z[t] = 0.9 * z[t - 1] + rng.normal(0, 0.3)
    if kick_at is not None:
        z[kick_at:] += 4.0
    return z
