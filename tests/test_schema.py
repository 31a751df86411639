"""Schema v1 declarations: metadata on every field, versioning, layout columns, describe()."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stabilitybench.data_schema import (
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

ALL_FIELDS = [(name, field.name) for name, schema in SCHEMAS.items() for field in schema]


def test_schemas_registry_is_complete():
    assert set(SCHEMAS) == {"steps", "manifest", "runs", "events"}
    assert SCHEMAS["steps"] is STEPS_SCHEMA
    assert SCHEMAS["manifest"] is MANIFEST_SCHEMA
    assert SCHEMAS["runs"] is RUNS_SCHEMA
    assert SCHEMAS["events"] is EVENTS_SCHEMA


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


def test_schema_version_is_dotted_string():
    assert isinstance(SCHEMA_VERSION, str)
    major, _, minor = SCHEMA_VERSION.partition(".")
    assert major.isdigit() and minor.isdigit()


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
OUTCOMES = ["collapsed", "collapse_kind", "collapse_step", "collapse_confirmed_step", "collapse_time", "survival_time",
            "censored", "transient", "final_performance"]


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


def test_dimensions_match_design():
    assert DIMENSIONS == ("none", "optimization", "environmental", "parametric", "learning_signal")


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_describe_one_row_per_field(table):
    schema = SCHEMAS[table]
    rows = describe(table)
    assert len(rows) == len(schema)
    assert [r["name"] for r in rows] == schema.names
    for row, field in zip(rows, schema, strict=True):
        assert set(row) == {"name", "type", "unit", "description", "nullable"}
        assert row["type"] == str(field.type)
        assert row["unit"] == field.metadata[b"unit"].decode()
        assert row["description"] == field.metadata[b"description"].decode()
        assert row["nullable"] == ("true" if field.nullable else "false")


def test_describe_unknown_table():
    with pytest.raises(KeyError):
        describe("no_such_table")
