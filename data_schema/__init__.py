"""The StabilityBench corpus contract: schema v1, atomic writer, validation, loaders.

Everything that reads or writes the corpus goes through here; nothing here imports
``generate``, ``analysis`` or ``reports``.
"""

from stabilitybench.data_schema.corpus import (
    MANIFEST,
    RUNS,
    connect,
    events_path,
    read_manifest,
    require_corpus,
    scan_steps,
    steps_path,
    write_manifest,
)
from stabilitybench.data_schema.errors import CorpusNotFoundError, CorruptFileError, SchemaError, StabilityBenchError
from stabilitybench.data_schema.io import (
    RUN_METADATA_KEY,
    atomic_path,
    conform,
    read_table,
    remove_stale_temps,
    run_metadata,
    validate,
    write_table,
)
from stabilitybench.data_schema.schema import (
    DIMENSIONS,
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    PARTITION_COLUMNS,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
    STEPS_SCHEMA,
    describe,
)

__all__ = [
    "DIMENSIONS",
    "EVENTS_SCHEMA",
    "MANIFEST",
    "MANIFEST_SCHEMA",
    "PARTITION_COLUMNS",
    "RUNS",
    "RUNS_SCHEMA",
    "RUN_METADATA_KEY",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "STEPS_SCHEMA",
    "CorpusNotFoundError",
    "CorruptFileError",
    "SchemaError",
    "StabilityBenchError",
    "atomic_path",
    "conform",
    "connect",
    "describe",
    "events_path",
    "read_manifest",
    "read_table",
    "remove_stale_temps",
    "require_corpus",
    "run_metadata",
    "scan_steps",
    "steps_path",
    "validate",
    "write_manifest",
    "write_table",
]
