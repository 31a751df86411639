"""Rewriting a corpus written with a legacy schema version in the current one, in place.

``python -m stabilitybench.data_schema upgrade CORPUS`` runs :func:`upgrade_corpus`. The mapping of
one table (renames, casts, newer columns as nulls) is :mod:`stabilitybench.data_schema.compat`'s,
which every reader uses on the fly; this module writes the upgraded files back, so readers without
project code (pandas or pyarrow folder reads) see one schema too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.compat import file_version, upgrade, upgrade_row
from stabilitybench.data_schema.errors import CorruptFileError
from stabilitybench.data_schema.io import RUN_METADATA_KEY, write_table
from stabilitybench.data_schema.layout import MANIFEST, RUNS
from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS
from stabilitybench.data_schema.verify import readable_runs


def upgrade_corpus(corpus: str | os.PathLike[str]) -> list[Path]:
    """Rewrite every legacy file of ``corpus`` in the current schema (atomically); returns what it rewrote.

    The manifest row kept in a steps file's metadata is renamed too. Current files are untouched,
    so running it twice rewrites nothing the second time. Only the files of runs that ``verify``
    accepts are rewritten (:func:`stabilitybench.data_schema.verify.readable_runs`); the others are left as they
    are and named in one :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`. A damaged ``runs.parquet``
    is a one-line :class:`~stabilitybench.data_schema.errors.CorruptFileError`.
    """
    root = Path(corpus)
    readable = readable_runs(root)
    readable.report()
    jobs = [(root / MANIFEST, "manifest"), (root / RUNS, "runs")]
    jobs += [(p, "steps") for p in readable.steps_files()]
    jobs += [(p, "events") for p in readable.events_files()]
    done = []
    for path, name in jobs:
        if path.name.startswith(".") or not path.exists():
            continue
        try:
            if file_version(path) == SCHEMA_VERSION:
                continue
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(f"{path}: not a readable Parquet file ({str(exc).strip().splitlines()[0]}); "
                                   "nothing was rewritten after it") from None
        meta = dict(table.schema.metadata or {})
        extra = {}
        if RUN_METADATA_KEY in meta:
            extra[RUN_METADATA_KEY] = json.dumps(upgrade_row(json.loads(meta[RUN_METADATA_KEY]))).encode()
        write_table(upgrade(table, name), path, SCHEMAS[name], extra_metadata=extra or None)
        done.append(path)
    return done
