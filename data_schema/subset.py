"""A corpus of some of another corpus's runs, without copying them: ``stabilitybench subset``.

One corpus often holds several profiles (``quick`` is part of ``standard``; the stochasticity, intervention and
spontaneous runs sit beside them), while a table is quoted from one profile. :func:`link_subset` makes a corpus
folder that holds only the chosen runs: their manifest rows, and *hard links* to their steps and events files (a
copy where the filesystem cannot link), so ``analyze --corpus <subset>`` reads exactly those runs at no cost in
disk space. The source is never written. The subset is marked by ``.subset.json`` (source, run count); making a
subset again into the same folder replaces it (files of runs no longer chosen are removed, ``runs.parquet`` and
the dataset card of an earlier analysis too). A non-empty folder that is not a subset is refused, as is the source.

Order of writes: the data files first, each linked to a temporary name and renamed into place, then the manifest
(atomically) and the marker last, so an interrupted subset is never a corpus that claims runs it lacks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stabilitybench.data_schema.errors import StabilityBenchError
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.data_schema.layout import (
    EVENTS_DIR,
    MANIFEST,
    RUNS,
    STEPS_DIR,
    events_path,
    read_manifest,
    require_corpus,
    steps_path,
    write_manifest,
)

MARKER = ".subset.json"


class SubsetError(StabilityBenchError):
    """A subset that cannot be made (the folder is the source, or a non-empty folder that is not a subset)."""


@dataclass(frozen=True)
class SubsetReport:
    """What :func:`link_subset` did: runs kept, files linked or copied, and files removed from an earlier subset."""

    runs: int
    linked: int
    copied: int
    removed: int


def _place(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (atomically: link to a temporary name, then rename); copy where the filesystem
    cannot link. True if linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return True
    tmp = dst.with_name(f".{dst.name}.link-{os.getpid()}")
    try:
        os.link(src, tmp)
        linked = True
    except OSError:  # another filesystem, or links not allowed: a copy
        shutil.copy2(src, tmp)
        linked = False
    os.replace(tmp, dst)
    return linked


def link_subset(source: str | os.PathLike[str], dest: str | os.PathLike[str], run_ids: Iterable[str]) -> SubsetReport:
    """Make ``dest`` a corpus of the runs of ``source`` whose run_id is in ``run_ids`` (module docstring)."""
    src, dst = require_corpus(source), Path(dest)
    if dst.exists() and dst.resolve() == src.resolve():
        raise SubsetError(f"--out {dst}: that is the source corpus; a subset goes into a folder of its own")
    if dst.exists() and any(dst.iterdir()) and not (dst / MARKER).exists():
        raise SubsetError(f"--out {dst}: a non-empty folder that is not a subset made by `stabilitybench subset`; "
                          "pick a new folder (nothing was written)")
    wanted = set(run_ids)
    rows = [r for r in read_manifest(src).to_pylist() if r["run_id"] in wanted]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MARKER).unlink(missing_ok=True)  # not a complete subset again until the manifest is written
    keep: set[Path] = set()
    linked = copied = 0
    for row in rows:
        for a, b in ((steps_path(src, row), steps_path(dst, row)),
                     (events_path(src, row["run_id"]), events_path(dst, row["run_id"]))):
            if not a.exists():
                continue  # a failed run has no steps file; its manifest row says so
            if _place(a, b):
                linked += 1
            else:
                copied += 1
            keep.add(b.resolve())
    removed = 0
    for sub in (STEPS_DIR, EVENTS_DIR):
        for f in sorted((dst / sub).rglob("*.parquet")) if (dst / sub).exists() else []:
            if f.resolve() not in keep:
                f.unlink()
                removed += 1
    for stale in (RUNS, "README.md"):  # an earlier analysis of another selection
        (dst / stale).unlink(missing_ok=True)
    write_manifest(dst, rows)
    with atomic_path(dst / MARKER) as tmp:
        tmp.write_text(json.dumps({"source": str(src.resolve()), "runs": len(rows), "manifest": MANIFEST}, indent=1))
    return SubsetReport(len(rows), linked, copied, removed)
