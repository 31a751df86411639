"""Every reader opens the corpus folder in one line; shared column names mean one thing; 1.0 corpora still read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_corpus_readers import RUNS, build_corpus

from stabilitybench.data_schema import (
    SCHEMAS,
    connect,
    read_manifest,
    read_table,
    scan_steps,
    steps_path,
    write_manifest,
)
from stabilitybench.data_schema.compat import file_version
from stabilitybench.data_schema.io import RUN_METADATA_KEY
from stabilitybench.data_schema.migrate import upgrade_corpus
from stabilitybench.data_schema.schema import PARTITION_COLUMNS, RENAMED, SCHEMA_VERSION

README = Path(__file__).resolve().parent.parent / "docs/guides/read-corpus.md"  # its joins moved there
PARTITIONS = {r[0]: dict(zip(("domain", "algo", "env", "perturbation"), r[1:5], strict=True)) for r in RUNS}
N_STEPS = sum(r[7] for r in RUNS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "corpus"
    built = build_corpus(root)  # with half-written temp files lying around, as a killed writer leaves them
    rows = read_manifest(root).to_pylist()
    for r in rows:  # PPO's entropy-coefficient setting: the manifest's ent_coef
        r["ent_coef"] = 0.01 if r["algo"] == "ppo" else None
    write_manifest(root, rows)
    return built


def _partitions_of(frame: pd.DataFrame) -> dict[str, dict[str, str]]:
    return {rid: {c: str(g[c].iloc[0]) for c in PARTITION_COLUMNS} for rid, g in frame.groupby("run_id")}


def test_pandas_reads_the_steps_folder(corpus):
    df = pd.read_parquet(corpus.root / "steps")
    assert len(df) == N_STEPS
    assert _partitions_of(df) == PARTITIONS


def test_pyarrow_reads_the_steps_folder(corpus):
    table = pq.read_table(corpus.root / "steps")
    assert table.num_rows == N_STEPS
    for name in PARTITION_COLUMNS:  # one type, from the folder names and the files alike
        assert table.schema.field(name).type == pa.dictionary(pa.int32(), pa.string())
    assert _partitions_of(table.to_pandas()) == PARTITIONS


def test_polars_hive_scan(corpus):
    df = pl.scan_parquet(f"{corpus.root}/steps/**/*.parquet", hive_partitioning=True).collect()
    assert df.height == N_STEPS
    assert _partitions_of(df.to_pandas()) == PARTITIONS


def test_duckdb_hive_read(corpus):
    rel = duckdb.sql(f"select run_id, domain, algo, env, perturbation, count(*) as n from read_parquet("
                     f"'{corpus.root}/steps/**/*.parquet', hive_partitioning=true) group by all")
    got = {r[0]: dict(zip(PARTITION_COLUMNS, r[1:5], strict=True)) for r in rel.fetchall()}
    assert got == PARTITIONS
    assert sum(r[5] for r in rel.fetchall()) == N_STEPS


def test_hugging_face_datasets_reads_the_steps(corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=f"{corpus.root}/steps/**/*.parquet", split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == N_STEPS
    assert _partitions_of(ds.to_pandas()) == PARTITIONS
    man = datasets.load_dataset("parquet", data_files=str(corpus.root / "manifest.parquet"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert sorted(man["run_id"]) == sorted(PARTITIONS)


# ------------------------------------------------------------------ one meaning per column name
def _meta(field: pa.Field) -> tuple[str, str]:
    return field.metadata[b"unit"].decode(), field.metadata[b"description"].decode()


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


@pytest.mark.parametrize(("a", "b"), [("steps", "manifest"), ("steps", "runs"), ("steps", "events"),
                                      ("events", "manifest"), ("events", "runs"), ("manifest", "runs")])
def test_a_shared_column_name_means_one_thing(a, b):
    shared = set(SCHEMAS[a].names) & set(SCHEMAS[b].names)
    assert shared, (a, b)
    for name in shared:
        fa, fb = SCHEMAS[a].field(name), SCHEMAS[b].field(name)
        assert _meta(fa) == _meta(fb), f"{name} means different things in {a} and {b}"
        assert _value_type(fa.type) == _value_type(fb.type), name


def test_steps_and_runs_share_only_the_join_keys():
    """So ``steps natural join runs`` (and a pandas merge without ``on``) joins on exactly these."""
    assert set(SCHEMAS["steps"].names) & set(SCHEMAS["runs"].names) == {"run_id", *PARTITION_COLUMNS}
    assert set(SCHEMAS["events"].names) & set(SCHEMAS["runs"].names) == {"run_id"}


def test_renamed_columns_are_gone_from_the_schemas():
    for table, renames in RENAMED.items():
        for old, new in renames.items():
            assert old not in SCHEMAS[table].names, (table, old)
            assert new in SCHEMAS[table].names


# ---------------------------------------------------------------------- the README's joins
def _readme_examples(kind: str) -> list[str]:
    """The fenced blocks of the "Joining tables" section of docs/guides/read-corpus.md (``sql`` or ``python``)."""
    text = README.read_text()
    section = text.split("\n## Joining tables", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


def test_readme_join_examples_run(corpus, monkeypatch):
    sql, python = _readme_examples("sql"), _readme_examples("python")
    assert sql and python
    con = connect(corpus.root)
    for query in sql:
        assert "algo" in query and "ent_coef" in query
        frame = con.sql(query).df()
        by_algo = dict(zip(frame["algo"], frame["ent_coef"], strict=True))
        assert by_algo["ppo"] == pytest.approx(0.01) and pd.isna(by_algo["sac"])
        assert frame["updates"].sum() == N_STEPS
    monkeypatch.chdir(corpus.root.parent)  # the examples use the relative path corpus/
    for code in python:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        frame = scope["joined"]
        frame = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
        assert len(frame) == N_STEPS
        assert set(frame.loc[frame["algo"] == "ppo", "ent_coef"]) == {0.01}


# ---------------------------------------------------------------------- 1.0 and 1.1 corpora still read
#: Nullable columns each minor version added (a file of an older version lacks them).
ADDED_IN = {"1.2": {"steps": ["grad_coherence_fixed"]}, "1.3": {"steps": ["adam_update_ratio_rms", "logit_logz"]}}


def _drop_newer(table: pa.Table, name: str, version: str) -> pa.Table:
    for added, tables in ADDED_IN.items():
        if added > version:
            table = table.drop_columns([c for c in tables.get(name, []) if c in table.column_names])
    return table


def _downgrade(root: Path) -> None:
    """Rewrite a corpus the way schema 1.0 wrote it: old names, plain-string partition columns, version 1.0."""
    for path in [root / "manifest.parquet", *root.glob("steps/**/*.parquet"), *root.glob("events/*.parquet")]:
        if path.name.startswith("."):
            continue
        name = "manifest" if path.name == "manifest.parquet" else path.parts[len(root.parts)]
        table = _drop_newer(pq.read_table(path), name, "1.0")
        back = {new: old for old, new in RENAMED[name].items()}
        table = table.rename_columns([back.get(c, c) for c in table.column_names])
        for i, f in enumerate(table.schema):
            if pa.types.is_dictionary(f.type):
                table = table.set_column(i, f.with_type(pa.string()), table.column(i).cast(pa.string()))
        meta = {**(table.schema.metadata or {}), b"stabilitybench.schema_version": b"1.0"}
        if name == "steps":
            rid = table.column("run_id")[0].as_py()
            row = {k: v for k, v in read_manifest(root).to_pylist()[0].items()} | {"run_id": rid, "wall_time_s": 1.5}
            row.pop("run_wall_time_s", None)
            meta[RUN_METADATA_KEY] = json.dumps(row).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.fixture
def legacy(tmp_path):
    root = tmp_path / "corpus"
    build_corpus(root, litter=False)
    rows = read_manifest(root).to_pylist()
    for r in rows:
        r.update(run_wall_time_s=2.5, schema_version="1.0")
    write_manifest(root, rows)
    sac = next(r for r in RUNS if r[2] == "sac")[0]
    path = next(p for p in root.glob("steps/**/*.parquet") if p.stem == sac)
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index("alpha"), t.schema.field("alpha"),
                                pa.array([0.2] * t.num_rows)), path)
    _downgrade(root)
    assert "ent_coef" in pq.read_schema(path).names and "wall_time_s" in pq.read_schema(root / "manifest.parquet").names
    return root, sac


def test_a_1_0_corpus_reads_with_the_new_names(legacy):
    root, sac = legacy
    man = read_manifest(root)
    assert "run_wall_time_s" in man.column_names and set(man.column("run_wall_time_s").to_pylist()) == {2.5}
    steps = scan_steps(root).collect()
    assert steps.height == N_STEPS and "ent_coef" not in steps.columns
    assert steps.filter(pl.col("run_id") == sac)["alpha"].to_list() == [0.2] * steps.filter(
        pl.col("run_id") == sac).height
    assert steps.schema["algo"] == pl.String
    con = connect(root)
    assert con.execute(f"select max(alpha) from steps where run_id = '{sac}'").fetchall()[0][0] == 0.2
    assert con.execute("select max(run_wall_time_s) from manifest").fetchall()[0][0] == 2.5
    assert "wall_time_s" not in [c[0] for c in con.sql("describe runs").fetchall()]
    path = steps_path(root, {"run_id": sac, **PARTITIONS[sac]})
    assert read_table(path, "steps").column("alpha").to_pylist()[0] == 0.2


def test_a_1_0_run_is_still_done_for_resume(legacy):
    from stabilitybench.generate.runner import outputs_valid

    root, _ = legacy
    for row in read_manifest(root).to_pylist():
        if row["perturbation"] != "none":  # the control has no events file in this corpus
            assert outputs_valid(root, row), row["run_id"]


def test_a_mixed_corpus_reads(legacy):
    """A 1.0 corpus resumed by 1.1 code: both generations of files side by side."""
    root, sac = legacy
    ppo = next(r[0] for r in RUNS if r[0] != sac)
    path = next(p for p in root.glob("steps/**/*.parquet") if p.stem == ppo)
    write_path = path  # rewrite one run as 1.1
    from stabilitybench.data_schema import write_table
    from stabilitybench.data_schema.compat import upgrade

    write_table(upgrade(pq.read_table(path), "steps"), write_path, SCHEMAS["steps"])
    rows = read_manifest(root).to_pylist()
    for r in rows:
        if r["run_id"] == ppo:
            r["schema_version"] = SCHEMA_VERSION
    write_manifest(root, rows)
    steps = scan_steps(root).collect()
    assert steps.height == N_STEPS and steps.filter(pl.col("run_id") == sac)["alpha"][0] == 0.2
    assert connect(root).execute("select count(*) from steps").fetchall()[0][0] == N_STEPS


def test_upgrade_corpus_rewrites_legacy_files_once(legacy):
    root, sac = legacy
    done = upgrade_corpus(root)
    assert len(done) == 1 + len(list(root.glob("steps/**/*.parquet"))) + len(list(root.glob("events/*.parquet")))
    assert all(file_version(p) == SCHEMA_VERSION for p in done)
    assert upgrade_corpus(root) == []
    df = pd.read_parquet(root / "steps")  # the folder read a 1.0 corpus could not do
    assert len(df) == N_STEPS and df.loc[df["run_id"] == sac, "alpha"].tolist()[0] == 0.2
    path = next(p for p in root.glob("steps/**/*.parquet") if p.stem == sac)
    meta = json.loads(pq.read_schema(path).metadata[RUN_METADATA_KEY])
    assert "run_wall_time_s" in meta and "wall_time_s" not in meta
    assert os.listdir(path.parent) == [path.name]  # no temp files left


@pytest.fixture
def v1_1(tmp_path):
    """A corpus as schema 1.1 wrote it: no grad_coherence_fixed column, version 1.1 everywhere."""
    root = tmp_path / "corpus"
    build_corpus(root, litter=False)
    for path in root.glob("steps/**/*.parquet"):
        table = _drop_newer(pq.read_table(path), "steps", "1.1")
        meta = {**(table.schema.metadata or {}), b"stabilitybench.schema_version": b"1.1"}
        pq.write_table(table.replace_schema_metadata(meta), path)
    rows = read_manifest(root).to_pylist()
    for r in rows:
        r["schema_version"] = "1.1"
    write_manifest(root, rows)
    return root


def test_a_1_1_corpus_reads_with_the_new_column_as_null(v1_1):
    from stabilitybench.data_schema.verify import verify_corpus
    from stabilitybench.generate.runner import outputs_valid

    root = v1_1
    path = next(root.glob("steps/**/*.parquet"))
    assert "grad_coherence_fixed" not in pq.read_schema(path).names
    table = read_table(path, "steps")  # upgraded on read
    assert table.column("grad_coherence_fixed").null_count == table.num_rows
    steps = scan_steps(root).collect()
    assert steps.height == N_STEPS and steps["grad_coherence_fixed"].null_count() == N_STEPS
    con = connect(root)
    assert con.execute("select count(grad_coherence_fixed), count(*) from steps").fetchall()[0] == (0, N_STEPS)
    for row in read_manifest(root).to_pylist():
        if row["perturbation"] != "none":  # resume still sees 1.1 runs as done
            assert outputs_valid(root, row), row["run_id"]
    problems = verify_corpus(root, deep=True).problems  # (the control has no events file in this corpus)
    assert not [p for p in problems if "steps" in p.path.parts], problems
    assert len(upgrade_corpus(root)) == len(list(root.glob("steps/**/*.parquet")))
    assert "grad_coherence_fixed" in pq.read_schema(path).names


def test_a_file_from_a_newer_schema_stops_every_reader_and_is_left_alone(tmp_path):
    """Not "damaged": generate would rerun (overwrite) it and analyze drop it. One line, nothing changed."""
    from stabilitybench.data_schema.errors import NewerSchemaError
    from stabilitybench.data_schema.verify import verify_corpus
    from stabilitybench.generate.runner import outputs_valid

    root = tmp_path / "corpus"
    build_corpus(root, litter=False)
    path = next(root.glob("steps/**/*.parquet"))
    table = pq.read_table(path)
    newer = table.append_column("a_column_from_the_future", pa.array([1.0] * table.num_rows))
    major, minor = SCHEMA_VERSION.split(".")
    meta = {**(table.schema.metadata or {}), b"stabilitybench.schema_version": f"{major}.{int(minor) + 1}".encode()}
    pq.write_table(newer.replace_schema_metadata(meta), path)
    before = path.read_bytes()
    row = next(r for r in read_manifest(root).to_pylist() if r["run_id"] == path.stem)
    with pytest.raises(NewerSchemaError, match=r"newer than this code's .* upgrade stabilitybench"):
        outputs_valid(root, row)
    with pytest.raises(NewerSchemaError):
        verify_corpus(root)
    assert path.read_bytes() == before
