"""Schema v1 declarations: metadata on every field, versioning, layout columns, describe()."""

from __future__ import annotations

import re
import runpy
import sys

import pyarrow as pa
import pytest

from stabilitybench.data_schema import (
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    PARTITION_COLUMNS,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
    STEPS_SCHEMA,
    describe,
    validate,
)
from stabilitybench.data_schema.errors import NewerSchemaError, SchemaError
from stabilitybench.data_schema.integrity import require_known_version

ALL_FIELDS = [(name, field.name) for name, schema in SCHEMAS.items() for field in schema]


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_validate_enforces_the_registered_schema(table):
    """``validate(t, name)`` checks against ``SCHEMAS[name]``: its own empty table passes, any other table fails."""
    validate(SCHEMAS[table].empty_table(), table)
    for other in sorted(set(SCHEMAS) - {table}):
        with pytest.raises(SchemaError):
            validate(SCHEMAS[other].empty_table(), table)
    first = SCHEMAS[table].names[0]
    with pytest.raises(SchemaError, match=f"missing column {first!r}"):
        validate(SCHEMAS[table].empty_table().drop_columns([first]), table)


@pytest.mark.parametrize(("table", "column"), ALL_FIELDS, ids=[f"{t}.{c}" for t, c in ALL_FIELDS])
def test_every_field_has_unit_and_description(table, column):
    field = SCHEMAS[table].field(column)
    assert field.metadata is not None, f"{table}.{column} has no metadata"
    unit = field.metadata.get(b"unit", b"").decode()
    description = field.metadata.get(b"description", b"").decode()
    assert unit.strip(), f"{table}.{column} has an empty unit"
    assert description.strip(), f"{table}.{column} has an empty description"


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_schema_version_and_table_name_in_metadata(table):
    meta = SCHEMAS[table].metadata
    assert meta is not None
    assert meta[b"stabilitybench.schema_version"] == SCHEMA_VERSION.encode()
    assert meta[b"stabilitybench.table"] == table.encode()


def test_a_newer_schema_version_is_refused_by_number_not_by_string(tmp_path):
    """Versions compare as (major, minor) integers: v1.10 is newer than v1.2, although "1.10" < "1.2" as text."""
    major, minor = (int(x) for x in SCHEMA_VERSION.split("."))
    path = tmp_path / "steps.parquet"
    for older_or_same in (SCHEMA_VERSION, f"{major}.0", f"{major - 1}.{minor + 10}"):
        require_known_version(path, older_or_same.encode())  # readable: no error
    require_known_version(path, None)  # a file with no version (not written by this code) is judged by its columns
    for newer in (f"{major}.{minor + 1}", f"{major}.{minor + 10}", f"{major + 1}.0"):
        with pytest.raises(NewerSchemaError, match=f"schema v{re.escape(newer)}, newer than this code's"):
            require_known_version(path, newer.encode())


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_no_duplicate_column_names(table):
    names = SCHEMAS[table].names
    assert len(names) == len(set(names))


def test_partition_columns_in_steps_schema():
    assert PARTITION_COLUMNS == ("domain", "algo", "env", "perturbation")
    for name in PARTITION_COLUMNS:
        field = STEPS_SCHEMA.field(name)  # KeyError if absent
        # dictionary-encoded: the type Hive discovery gives the folder names (pyarrow/pandas folder reads)
        assert field.type == pa.dictionary(pa.int32(), pa.string())
        assert not field.nullable, f"partition column {name} must be non-nullable"
        # the manifest carries the same keys, so a steps file can be placed from a manifest row
        assert MANIFEST_SCHEMA.field(name).type == pa.string()


# Core columns required by DESIGN.md "Corpus layout and schema v1".
STEPS_CORE = {
    "run_id": pa.string(),
    "step": pa.int64(),
    "samples_seen": pa.int64(),
    "wall_time_s": pa.float64(),
    "lr": pa.float64(),
    "loss": pa.float64(),
    "grad_norm": pa.float64(),
    "grad_coherence": pa.float64(),
    "update_norm": pa.float64(),
    "param_norm": pa.float64(),
    "perturbation_active": pa.bool_(),
    "performance": pa.float64(),
}
STEPS_RL = [
    "episode_return",
    "eval_return",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "q_mean",
    "dormant_fraction",
    "effective_rank",
]
STEPS_LM = ["train_loss", "val_loss", "attn_logit_max", "output_logit_max", "tokens_per_s"]
MANIFEST_REQUIRED = [
    "run_id",
    "domain",
    "algo",
    "env",
    "seed",
    "perturbation",
    "dimension",
    "magnitude",
    "onset_frac",
    "duration_steps",
    "stochasticity",
    "total_steps",
    "status",
    "error",
    "run_wall_time_s",
    "code_version",
    "schema_version",
    "config_json",
]
OUTCOMES = ["collapsed", "collapse_kind", "collapse_step", "collapse_step_smoothed", "collapse_date_source",
            "collapse_confirmed_step", "collapse_time", "survival_time", "censored", "transient", "final_performance"]


def test_steps_core_columns_and_types():
    for name, typ in STEPS_CORE.items():
        assert STEPS_SCHEMA.field(name).type == typ, name


def test_steps_identity_columns_are_required():
    for name in ("run_id", "step"):
        assert not STEPS_SCHEMA.field(name).nullable


@pytest.mark.parametrize("name", STEPS_RL + STEPS_LM)
def test_steps_domain_columns_are_nullable_floats(name):
    field = STEPS_SCHEMA.field(name)
    assert field.type == pa.float64()
    assert field.nullable, f"{name} must be nullable: other domains leave it null"


def test_manifest_and_runs_columns():
    for name in MANIFEST_REQUIRED:
        assert MANIFEST_SCHEMA.get_field_index(name) >= 0, name
    # runs = manifest + outcomes, same order and types for the manifest part
    assert RUNS_SCHEMA.names[: len(MANIFEST_SCHEMA)] == MANIFEST_SCHEMA.names
    for field in MANIFEST_SCHEMA:
        assert RUNS_SCHEMA.field(field.name).type == field.type
    assert RUNS_SCHEMA.names[len(MANIFEST_SCHEMA) :] == OUTCOMES
    for name in OUTCOMES:
        assert MANIFEST_SCHEMA.get_field_index(name) < 0
        assert RUNS_SCHEMA.field(name).nullable


def test_events_columns():
    for name in ("run_id", "step", "event"):
        assert not EVENTS_SCHEMA.field(name).nullable
    assert EVENTS_SCHEMA.field("step").type == pa.int64()


def _schema_listing(monkeypatch, *args: str) -> None:
    """Run ``python -m stabilitybench.data_schema ARGS`` in-process (its output goes to capsys)."""
    monkeypatch.setattr(sys, "argv", ["stabilitybench.data_schema", *args])
    runpy.run_module("stabilitybench.data_schema", run_name="__main__", alter_sys=True)


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_schema_listing_prints_every_column_with_type_unit_and_description(table, monkeypatch, capsys):
    """``python -m stabilitybench.data_schema TABLE``, the reference a user reads: one line per column, in order."""
    _schema_listing(monkeypatch, table)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines[0] == f"# {table} (schema v{SCHEMA_VERSION})"
    assert len(lines) == 1 + len(SCHEMAS[table])
    for line, field in zip(lines[1:], SCHEMAS[table], strict=True):
        assert line.split()[0] == field.name
        for part in (str(field.type), field.metadata[b"unit"].decode(), field.metadata[b"description"].decode()):
            assert part in line, (field.name, part, line)


def test_schema_listing_of_an_unknown_table_is_one_line(monkeypatch):
    with pytest.raises(SystemExit, match=r"^error: unknown table 'no_such_table' \(one of steps, "):
        _schema_listing(monkeypatch, "no_such_table")
    with pytest.raises(KeyError):
        describe("no_such_table")
