"""Atomic writer, validation and readers of single corpus files (stabilitybench.data_schema.io)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stabilitybench.data_schema.io as ds_io
from stabilitybench.data_schema import (
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    RUN_METADATA_KEY,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
    CorruptFileError,
    SchemaError,
    conform,
    read_manifest,
    read_table,
    run_metadata,
    write_manifest,
    write_table,
)

FLOAT_COLUMNS = [f.name for f in STEPS_SCHEMA if f.type == pa.float64() and f.nullable]


def step_rows(run_id: str = "run-a", n: int = 4, **part: str) -> list[dict]:
    part = {"domain": "rl", "algo": "ppo", "env": "HalfCheetah-v5", "perturbation": "none", **part}
    rows = []
    for i in range(n):
        rows.append(
            {
                "run_id": run_id,
                "step": i,
                "samples_seen": 2048 * (i + 1),
                "wall_time_s": 0.5 * (i + 1),
                "lr": 3e-4,
                "loss": None if i % 2 else 0.1 * i,  # null on some rows
                "grad_norm": 1.0 + i,
                "perturbation_active": i >= 2,
                "performance": -10.0 + i,
                "episode_return": None,
                "approx_kl": 0.01 if i == n - 1 else None,
                **part,
            }
        )
    return rows


def steps_table(rows: list[dict] | None = None) -> pa.Table:
    return pa.Table.from_pylist(rows if rows is not None else step_rows(), schema=STEPS_SCHEMA)


def manifest_row(run_id: str, **over) -> dict:
    row = {
        "run_id": run_id,
        "domain": "rl",
        "algo": "ppo",
        "env": "HalfCheetah-v5",
        "seed": 0,
        "perturbation": "none",
        "dimension": "none",
        "stochasticity": "default",
        "total_steps": 10_000,
        "status": "ok",
        "code_version": "test",
        "schema_version": SCHEMA_VERSION,
        "config_json": "{}",
    }
    row.update(over)
    return row


def visible_and_hidden(folder: Path) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(folder))
    return [n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".")]


# ------------------------------------------------------------------ round trip


def test_round_trip_values(tmp_path):
    rows = step_rows()
    path = tmp_path / "steps" / "run-a.parquet"
    out = write_table(steps_table(rows), path, STEPS_SCHEMA)
    assert out == path and path.is_file()
    back = read_table(path, "steps")
    assert back.schema.names == STEPS_SCHEMA.names
    assert back.num_rows == len(rows)
    got = back.to_pylist()
    for want, have in zip(rows, got, strict=True):
        for key, value in want.items():
            assert have[key] == value, key
        # undeclared-in-row nullable columns come back null, never zero
        assert have["val_loss"] is None and have["tokens_per_s"] is None
    assert back.column("loss").null_count == len(rows) // 2
    assert back.equals(steps_table(rows))


def test_file_is_zstd_compressed(tmp_path):
    path = write_table(steps_table(), tmp_path / "a.parquet", STEPS_SCHEMA)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups >= 1
    rg = meta.row_group(0)
    assert rg.column(0).compression == "ZSTD"
    assert {rg.column(i).compression for i in range(rg.num_columns)} == {"ZSTD"}


def test_field_and_schema_metadata_survive_in_file(tmp_path):
    path = write_table(steps_table(), tmp_path / "a.parquet", STEPS_SCHEMA)
    file_schema = pq.read_schema(path)
    for field in STEPS_SCHEMA:
        stored = file_schema.field(field.name).metadata
        assert stored is not None, field.name
        assert stored[b"unit"] == field.metadata[b"unit"]
        assert stored[b"description"] == field.metadata[b"description"]
    assert file_schema.field("wall_time_s").metadata[b"unit"] == b"s"
    assert file_schema.metadata[b"stabilitybench.schema_version"] == SCHEMA_VERSION.encode()
    assert file_schema.metadata[b"stabilitybench.table"] == b"steps"
    # read_table keeps it too
    assert read_table(path, "steps").schema.field("grad_norm").metadata[b"unit"] == b"L2"


def test_extra_metadata_and_run_metadata(tmp_path):
    row = manifest_row("run-a", magnitude=2.5)
    path = write_table(
        steps_table(), tmp_path / "a.parquet", STEPS_SCHEMA, extra_metadata={RUN_METADATA_KEY: json.dumps(row).encode()}
    )
    assert run_metadata(path) == row
    # the schema metadata is merged, not replaced
    assert pq.read_schema(path).metadata[b"stabilitybench.schema_version"] == SCHEMA_VERSION.encode()
    plain = write_table(steps_table(), tmp_path / "b.parquet", STEPS_SCHEMA)
    assert run_metadata(plain) is None
    garbage = tmp_path / "c.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert run_metadata(garbage) is None


def test_conform_fills_missing_nullable_and_widens_ints():
    table = pa.table(
        {
            "perturbation": ["none"],
            "run_id": ["r"],
            "step": pa.array([3], pa.int32()),
            "samples_seen": [10],
            "wall_time_s": pa.array([1], pa.int64()),  # int -> float is accepted
            "perturbation_active": [False],
            "domain": ["rl"],
            "algo": ["ppo"],
            "env": ["E"],
        }
    )
    out = conform(table, STEPS_SCHEMA)
    assert out.schema.equals(STEPS_SCHEMA, check_metadata=True)
    assert out.column("step").to_pylist() == [3]
    assert out.column("wall_time_s").to_pylist() == [1.0]
    assert out.column("performance").to_pylist() == [None]
    assert out.column("val_loss").null_count == 1


def test_conform_accepts_dictionary_strings():
    table = steps_table()
    idx = table.schema.get_field_index("run_id")
    table = table.set_column(idx, "run_id", table.column("run_id").dictionary_encode())
    out = conform(table, STEPS_SCHEMA)
    assert out.column("run_id").type == pa.string()
    # and plain strings into the dictionary-encoded partition columns
    assert out.column("algo").type == pa.dictionary(pa.int32(), pa.string())
    assert out.column("algo").to_pylist() == ["ppo"] * table.num_rows


# ------------------------------------------------------------------ validation errors


def _drop(table: pa.Table, name: str) -> pa.Table:
    return table.drop_columns([name])


def _replace(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def _bad_tables() -> dict[str, tuple[pa.Table, str]]:
    good = steps_table()
    n = good.num_rows
    plain = pa.Table.from_pylist(good.to_pylist())  # inferred, nullable types
    return {
        "unknown_column": (good.append_column("mystery", pa.array([1.0] * n)), "mystery"),
        "missing_required": (_drop(good, "samples_seen"), "samples_seen"),
        "missing_partition": (_drop(good, "perturbation"), "perturbation"),
        "string_in_float": (_replace(good, "wall_time_s", pa.array(["1.5"] * n)), "wall_time_s"),
        "float_in_int": (_replace(good, "step", pa.array([0.5] * n)), "step"),
        "bool_in_float": (_replace(good, "performance", pa.array([True] * n)), "performance"),
        "null_in_required": (_replace(plain, "step", pa.array([None, 1, 2, 3], pa.int64())), "step"),
        "null_in_required_str": (_replace(plain, "run_id", pa.array(["a", None, "a", "a"])), "run_id"),
    }


BAD = _bad_tables()


@pytest.mark.parametrize("case", sorted(BAD))
def test_conform_rejects(case):
    table, column = BAD[case]
    where = "/some/corpus/steps/x.parquet"
    with pytest.raises(SchemaError) as info:
        conform(table, STEPS_SCHEMA, where=where)
    assert where in str(info.value)
    assert column in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_write_table_rejects_and_writes_nothing(tmp_path, case):
    table, column = BAD[case]
    path = tmp_path / "sub" / "x.parquet"
    with pytest.raises(SchemaError) as info:
        write_table(table, path, STEPS_SCHEMA)
    assert str(path) in str(info.value)
    assert column in str(info.value)
    assert not path.exists()
    if path.parent.exists():
        assert os.listdir(path.parent) == []


def test_schema_error_is_stabilitybench_error():
    from stabilitybench.data_schema import StabilityBenchError

    assert issubclass(SchemaError, StabilityBenchError)
    assert issubclass(CorruptFileError, StabilityBenchError)


def _valid_bytes(tmp_path: Path) -> bytes:
    return write_table(steps_table(), tmp_path / "valid.parquet", STEPS_SCHEMA).read_bytes()


def _flip(data: bytes, start: int, stop: int) -> bytes:
    out = bytearray(data)
    for i in range(start, stop):
        out[i] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize("kind", ["garbage", "empty", "half", "no_footer", "header_only", "bad_footer", "bad_pages"])
def test_read_corrupt_file(tmp_path, kind):
    data = _valid_bytes(tmp_path)
    footer_len = struct.unpack("<i", data[-8:-4])[0]
    footer_start = len(data) - 8 - footer_len
    content = {
        "garbage": b"this is not a parquet file\x00\x01\x02" * 20,
        "empty": b"",
        "half": data[: len(data) // 2],
        "no_footer": data[:-8],
        "header_only": data[:4],
        # intact magic bytes and length, scrambled content: pyarrow raises OSError, not ArrowInvalid
        "bad_footer": _flip(data, footer_start, len(data) - 8),
        "bad_pages": _flip(data, 4, footer_start),
    }[kind]
    path = tmp_path / f"{kind}.parquet"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        read_table(path, "steps")
    assert str(path) in str(info.value)


def test_read_missing_file_is_not_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "absent.parquet", "steps")


def test_read_file_with_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(steps_table().drop_columns(["performance"]), path)  # bypass the writer on purpose
    with pytest.raises(SchemaError) as info:
        read_table(path, "steps")
    assert str(path) in str(info.value)
    assert "performance" in str(info.value)


def test_read_file_with_wrong_type(tmp_path):
    path = tmp_path / "t.parquet"
    table = steps_table()
    pq.write_table(_replace(table, "grad_norm", pa.array(["x"] * table.num_rows)), path)
    with pytest.raises(SchemaError) as info:
        read_table(path, "steps")
    assert str(path) in str(info.value) and "grad_norm" in str(info.value)


def test_read_file_with_extra_column(tmp_path):
    path = tmp_path / "e.parquet"
    table = steps_table()
    pq.write_table(table.append_column("surprise", pa.array([1] * table.num_rows)), path)
    with pytest.raises(SchemaError) as info:
        read_table(path, "steps")
    assert str(path) in str(info.value) and "surprise" in str(info.value)


def test_read_against_the_wrong_table(tmp_path):
    path = write_table(steps_table(), tmp_path / "s.parquet", STEPS_SCHEMA)
    with pytest.raises(SchemaError) as info:
        read_table(path, "events")
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ atomic write

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stabilitybench.data_schema import STEPS_SCHEMA, write_table

    dest, mode = sys.argv[1], sys.argv[2]
    real_write = pq.write_table

    def dying_write(table, where, **kwargs):
        real_write(table, where, **kwargs)  # a complete file under the temporary name ...
        size = os.path.getsize(where)
        with open(where, "r+b") as fh:  # ... cut short, as if the process died mid-write
            fh.truncate(size // 2)
            fh.flush()
            os.fsync(fh.fileno())
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)

    pq.write_table = dying_write
    rows = [
        dict(run_id="new", step=i, samples_seen=i, wall_time_s=float(i), perturbation_active=False,
             performance=float(i), domain="rl", algo="ppo", env="E", perturbation="none")
        for i in range(50)
    ]
    write_table(pa.Table.from_pylist(rows, schema=STEPS_SCHEMA), dest, STEPS_SCHEMA)
    print("write_table returned", flush=True)  # must never be reached
    """
)


def _run_killed_writer(dest: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(dest), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_only_hidden_leftovers(folder: Path, visible: list[str]) -> list[str]:
    shown, hidden = visible_and_hidden(folder)
    assert shown == visible
    for name in hidden:
        assert name.startswith(".")
        assert not name.endswith(".parquet"), f"leftover {name} would match *.parquet globs"
    return hidden


@pytest.mark.parametrize("mode", ["exit", "sigkill"])
def test_killed_writer_leaves_no_visible_file(tmp_path, mode):
    dest = tmp_path / "steps" / "domain=rl" / "algo=ppo" / "env=E" / "perturbation=none" / "new.parquet"
    proc = _run_killed_writer(dest, mode)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "write_table returned" not in proc.stdout
    if mode == "sigkill":
        assert proc.returncode == -9, proc.stderr
    assert not dest.exists()
    hidden = _assert_only_hidden_leftovers(dest.parent, visible=[])
    assert hidden, "the simulated crash should have left its partial temp file behind"
    # and a *.parquet glob over the tree sees nothing
    assert list((tmp_path / "steps").rglob("*.parquet")) == []


def test_killed_overwrite_keeps_old_file(tmp_path):
    dest = tmp_path / "new.parquet"
    old = steps_table(step_rows("new", n=3))
    write_table(old, dest, STEPS_SCHEMA)
    before = dest.read_bytes()
    proc = _run_killed_writer(dest, "sigkill")
    assert proc.returncode == -9, proc.stderr
    assert dest.read_bytes() == before
    assert read_table(dest, "steps").equals(old)
    _assert_only_hidden_leftovers(tmp_path, visible=["new.parquet"])


def test_failed_validation_keeps_old_file(tmp_path):
    dest = tmp_path / "x.parquet"
    old = steps_table(step_rows(n=2))
    write_table(old, dest, STEPS_SCHEMA)
    bad, _ = BAD["string_in_float"]
    with pytest.raises(SchemaError):
        write_table(bad, dest, STEPS_SCHEMA)
    assert read_table(dest, "steps").equals(old)
    assert visible_and_hidden(tmp_path) == (["x.parquet"], [])


def test_exception_during_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    dest = tmp_path / "x.parquet"
    old = steps_table(step_rows(n=2))
    write_table(old, dest, STEPS_SCHEMA)
    seen = []

    def failing_write(table, where, **kwargs):
        seen.append(Path(where))
        Path(where).write_bytes(b"PAR1 partial")  # some bytes reached the disk
        raise OSError("disk full (injected)")

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="injected"):
        write_table(steps_table(step_rows(n=5)), dest, STEPS_SCHEMA)
    monkeypatch.undo()
    # the write went to a hidden temp name in the same folder, never to dest
    assert len(seen) == 1
    assert seen[0].parent == dest.parent and seen[0].name.startswith(".") and seen[0] != dest
    assert not seen[0].name.endswith(".parquet")
    assert read_table(dest, "steps").equals(old)
    assert visible_and_hidden(tmp_path) == (["x.parquet"], [])


def test_exception_at_rename_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    dest = tmp_path / "x.parquet"
    old = steps_table(step_rows(n=2))
    write_table(old, dest, STEPS_SCHEMA)

    def failing_replace(src, dst):
        raise PermissionError("rename refused (injected)")

    monkeypatch.setattr(ds_io.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        write_table(steps_table(step_rows(n=5)), dest, STEPS_SCHEMA)
    monkeypatch.undo()
    assert read_table(dest, "steps").equals(old)
    assert visible_and_hidden(tmp_path) == (["x.parquet"], [])


def test_successful_writes_leave_no_temp_files(tmp_path):
    dest = tmp_path / "deep" / "er" / "x.parquet"
    for n in (1, 3, 2):  # create, then overwrite twice
        write_table(steps_table(step_rows(n=n)), dest, STEPS_SCHEMA)
    assert visible_and_hidden(dest.parent) == (["x.parquet"], [])
    assert read_table(dest, "steps").num_rows == 2
    ev = pa.Table.from_pylist([{"run_id": "r", "step": 0, "event": "eval"}], schema=EVENTS_SCHEMA)
    write_table(ev, tmp_path / "events" / "r.parquet", EVENTS_SCHEMA)
    assert visible_and_hidden(tmp_path / "events") == (["r.parquet"], [])


def test_write_table_accepts_str_path(tmp_path):
    dest = str(tmp_path / "s.parquet")
    out = write_table(steps_table(), dest, STEPS_SCHEMA)
    assert isinstance(out, Path) and out.is_file()


# ------------------------------------------------------------------ manifest


def test_write_manifest_dedups_later_row_wins(tmp_path):
    rows = [
        manifest_row("b", status="running"),
        manifest_row("a", seed=1),
        manifest_row("b", status="ok", run_wall_time_s=12.5),
        manifest_row("c", status="failed", error="boom"),
        manifest_row("a", seed=2),
    ]
    path = write_manifest(tmp_path, rows)
    assert path == tmp_path / "manifest.parquet"
    table = read_manifest(tmp_path)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.column("run_id").to_pylist() == ["a", "b", "c"]
    by_id = {r["run_id"]: r for r in table.to_pylist()}
    assert by_id["a"]["seed"] == 2
    assert by_id["b"]["status"] == "ok" and by_id["b"]["run_wall_time_s"] == 12.5
    assert by_id["c"]["error"] == "boom"
    assert by_id["c"]["magnitude"] is None
    assert visible_and_hidden(tmp_path) == (["manifest.parquet"], [])


def test_write_manifest_rewrites(tmp_path):
    write_manifest(tmp_path, [manifest_row("a"), manifest_row("b")])
    write_manifest(tmp_path, [manifest_row("c")])
    assert read_manifest(tmp_path).column("run_id").to_pylist() == ["c"]


def test_write_manifest_rejects_missing_required(tmp_path):
    row = manifest_row("a")
    del row["config_json"]
    with pytest.raises(SchemaError, match="config_json"):
        write_manifest(tmp_path, [row])
    assert not (tmp_path / "manifest.parquet").exists()


def test_write_manifest_empty(tmp_path):
    write_manifest(tmp_path, [])
    table = read_manifest(tmp_path)
    assert table.num_rows == 0 and table.schema.equals(MANIFEST_SCHEMA)


def test_read_manifest_empty_dir(tmp_path):
    table = read_manifest(tmp_path)
    assert table.num_rows == 0
    assert table.schema.equals(MANIFEST_SCHEMA)


def test_read_manifest_corrupt(tmp_path):
    (tmp_path / "manifest.parquet").write_bytes(b"junk" * 10)
    with pytest.raises(CorruptFileError, match=r"manifest\.parquet"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------ property test

FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.just(float("nan")))


@st.composite
def float_frames(draw):
    n = draw(st.integers(min_value=1, max_value=6))
    cols = draw(st.lists(st.sampled_from(FLOAT_COLUMNS), min_size=1, max_size=5, unique=True))
    values = {c: draw(st.lists(FLOATS, min_size=n, max_size=n)) for c in cols}
    return n, values


def _same_float(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a):
        return math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=float_frames())
def test_round_trip_floats_nan_inf_null(tmp_path_factory, frame):
    n, values = frame
    rows = step_rows(n=n)
    for c, col in values.items():
        for row, v in zip(rows, col, strict=True):
            row[c] = v
    path = tmp_path_factory.getbasetemp() / "prop" / "p.parquet"
    write_table(steps_table(rows), path, STEPS_SCHEMA)
    back = read_table(path, "steps")
    for c, col in values.items():
        got = back.column(c).to_pylist()
        assert all(_same_float(a, b) for a, b in zip(col, got, strict=True)), (c, col, got)
        # NaN is a value, null is missing: they must stay distinct
        assert back.column(c).null_count == sum(v is None for v in col)
