"""Corpus layout and loaders: scan_steps, connect, and reads with no project code."""

from __future__ import annotations

import glob
import math
import os
from collections import defaultdict
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from stabilitybench.data_schema import (
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
    CorpusNotFoundError,
    connect,
    events_path,
    read_manifest,
    require_corpus,
    scan_steps,
    steps_path,
    write_manifest,
    write_table,
)

# (run_id, domain, algo, env, perturbation, dimension, magnitude, n_steps, performance offset)
RUNS = [
    ("run-ppo-none", "rl", "ppo", "HalfCheetah-v5", "none", "none", 1.0, 5, 0.0),
    ("run-sac-spike", "rl", "sac", "Hopper-v5", "lr_spike", "optimization", 10.0, 4, 100.0),
    ("run-ppo-spike", "rl", "ppo", "HalfCheetah-v5", "lr_spike", "optimization", 10.0, 3, -50.0),
]
LITTER = ".run-ppo-none.parquet.0123456789abcdef.tmp"  # what a crashed write_table leaves


def _run_meta(spec) -> dict:
    run_id, domain, algo, env, pert, dim, mag, n, off = spec
    return {
        "run_id": run_id,
        "domain": domain,
        "algo": algo,
        "env": env,
        "perturbation": pert,
        "dimension": dim,
        "magnitude": mag,
        "n": n,
        "off": off,
    }


def _steps_rows(meta: dict) -> list[dict]:
    rows = []
    for i in range(meta["n"]):
        rows.append(
            {
                "run_id": meta["run_id"],
                "step": i,
                "samples_seen": 1000 * (i + 1),
                "wall_time_s": 0.25 * (i + 1),
                "lr": 3e-4 * (meta["magnitude"] if i >= 1 and meta["perturbation"] != "none" else 1.0),
                "grad_norm": 0.5 + i if i % 2 == 0 else None,
                "perturbation_active": meta["perturbation"] != "none" and i >= 1,
                "performance": meta["off"] + 1.5 * i,
                "domain": meta["domain"],
                "algo": meta["algo"],
                "env": meta["env"],
                "perturbation": meta["perturbation"],
            }
        )
    return rows


def _manifest_row(meta: dict, seed: int) -> dict:
    return {
        "run_id": meta["run_id"],
        "domain": meta["domain"],
        "algo": meta["algo"],
        "env": meta["env"],
        "seed": seed,
        "perturbation": meta["perturbation"],
        "dimension": meta["dimension"],
        "magnitude": meta["magnitude"],
        "stochasticity": "default",
        "total_steps": 1000 * meta["n"],
        "n_updates": meta["n"],
        "status": "ok",
        "code_version": "test",
        "schema_version": SCHEMA_VERSION,
        "config_json": "{}",
    }


class Corpus:
    def __init__(self, root: Path, steps: list[dict], manifest: list[dict], events: list[dict]):
        self.root = root
        self.steps = steps  # full rows (every schema column), in write order
        self.manifest = manifest
        self.events = events

    def steps_where(self, **eq) -> list[dict]:
        return [r for r in self.steps if all(r[k] == v for k, v in eq.items())]


def build_corpus(root: Path, with_events: bool = True, litter: bool = True) -> Corpus:
    all_steps, manifest, events = [], [], []
    for seed, spec in enumerate(RUNS):
        meta = _run_meta(spec)
        rows = _steps_rows(meta)
        table = pa.Table.from_pylist(rows, schema=STEPS_SCHEMA)
        path = write_table(table, steps_path(root, meta), STEPS_SCHEMA)
        assert path.is_file()
        all_steps.extend(table.to_pylist())
        manifest.append(_manifest_row(meta, seed))
        if with_events:  # every run has an events file (a control's is empty), as generate writes them
            ev = [
                {"run_id": meta["run_id"], "step": 1, "event": "perturbation_on", "value": meta["magnitude"]},
                {"run_id": meta["run_id"], "step": 2, "event": "perturbation_off"},
            ] if meta["perturbation"] != "none" else []
            ev_table = pa.Table.from_pylist(ev, schema=EVENTS_SCHEMA)
            write_table(ev_table, events_path(root, meta["run_id"]), EVENTS_SCHEMA)
            events.extend(ev_table.to_pylist())
        if litter:  # half-written temp files, as a killed writer leaves them
            (path.parent / LITTER).write_bytes(b"PAR1 truncated garbage")
    write_manifest(root, manifest)
    if litter:
        (root / "steps" / LITTER).write_bytes(b"garbage")
        if with_events:
            (root / "events" / LITTER).write_bytes(b"garbage")
    return Corpus(root, all_steps, manifest, events)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def scalar(con, query: str):
    """First value of a query (DuckDB relations have no fetchone)."""
    return con.sql(query).fetchall()[0][0]


def _key(r: dict) -> tuple:
    return (r["run_id"], r["step"])


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_rows_equal(got: list[dict], want: list[dict], columns: list[str] | None = None) -> None:
    got, want = sorted(got, key=_key), sorted(want, key=_key)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for c in columns or list(w):
            assert _same(g[c], w[c]), (c, g[c], w[c], w["run_id"], w["step"])


# ------------------------------------------------------------------ layout


def test_layout_is_hive_partitioned(corpus):
    files = sorted(p.relative_to(corpus.root).as_posix() for p in corpus.root.rglob("*.parquet"))
    assert files == sorted(
        [
            "manifest.parquet",
            "steps/domain=rl/algo=ppo/env=HalfCheetah-v5/perturbation=none/run-ppo-none.parquet",
            "steps/domain=rl/algo=sac/env=Hopper-v5/perturbation=lr_spike/run-sac-spike.parquet",
            "steps/domain=rl/algo=ppo/env=HalfCheetah-v5/perturbation=lr_spike/run-ppo-spike.parquet",
            "events/run-ppo-none.parquet",
            "events/run-sac-spike.parquet",
            "events/run-ppo-spike.parquet",
        ]
    )
    # the litter is really there (so the reader tests below prove it is ignored)
    assert len(list(corpus.root.rglob(LITTER))) == len(RUNS) + 2


def test_require_corpus(tmp_path):
    assert require_corpus(tmp_path) == tmp_path
    with pytest.raises(CorpusNotFoundError, match="nope"):
        require_corpus(tmp_path / "nope")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(CorpusNotFoundError):
        require_corpus(afile)


# ------------------------------------------------------------------ scan_steps


def test_scan_steps_all(corpus):
    df = scan_steps(corpus.root).collect()
    assert df.height == len(corpus.steps)
    assert set(df.columns) == set(STEPS_SCHEMA.names)
    assert_rows_equal(df.to_dicts(), corpus.steps)


def test_scan_steps_filter_partition(corpus):
    df = scan_steps(corpus.root, algo="sac").collect()
    want = corpus.steps_where(algo="sac")
    assert df.height == len(want) > 0
    assert set(df["run_id"].to_list()) == {"run-sac-spike"}
    assert_rows_equal(df.to_dicts(), want)


def test_scan_steps_filter_two_partitions(corpus):
    df = scan_steps(corpus.root, algo="ppo", perturbation="lr_spike").collect()
    assert set(df["run_id"].to_list()) == {"run-ppo-spike"}
    assert df.height == len(corpus.steps_where(run_id="run-ppo-spike"))


def test_scan_steps_list_filter(corpus):
    df = scan_steps(corpus.root, run_id=["run-ppo-none", "run-sac-spike"]).collect()
    assert set(df["run_id"].to_list()) == {"run-ppo-none", "run-sac-spike"}
    assert df.height == len(corpus.steps_where(run_id="run-ppo-none")) + len(corpus.steps_where(run_id="run-sac-spike"))
    df2 = scan_steps(corpus.root, perturbation=("none",), algo=["ppo", "sac"]).collect()
    assert set(df2["run_id"].to_list()) == {"run-ppo-none"}


def test_scan_steps_filter_non_partition_column(corpus):
    df = scan_steps(corpus.root, perturbation_active=True).collect()
    assert df.height == len(corpus.steps_where(perturbation_active=True)) > 0
    assert df["perturbation_active"].all()


def test_scan_steps_no_match(corpus):
    assert scan_steps(corpus.root, algo="td3").collect().height == 0


def test_scan_steps_select(corpus):
    df = scan_steps(corpus.root, algo="ppo").select(["step"]).collect()
    assert df.columns == ["step"]
    assert df["step"].dtype == pl.Int64
    want = sorted(r["step"] for r in corpus.steps_where(algo="ppo"))
    assert sorted(df["step"].to_list()) == want


def test_scan_steps_types(corpus):
    schema = scan_steps(corpus.root).collect_schema()
    assert schema["step"] == pl.Int64
    assert schema["performance"] == pl.Float64
    assert schema["perturbation_active"] == pl.Boolean
    assert schema["algo"] == pl.String


def test_scan_steps_empty_corpus(tmp_path):
    lf = scan_steps(tmp_path, algo="ppo")
    df = lf.collect()
    assert df.height == 0
    assert df.columns == STEPS_SCHEMA.names


def test_scan_steps_missing_dir(tmp_path):
    with pytest.raises(CorpusNotFoundError):
        scan_steps(tmp_path / "does-not-exist")


# ------------------------------------------------------------------ connect (DuckDB)


def test_connect_views(corpus):
    con = connect(corpus.root)
    try:
        counts = {v: scalar(con, f"select count(*) from {v}") for v in ("runs", "steps", "events", "manifest")}
        assert counts == {
            "runs": len(RUNS),
            "steps": len(corpus.steps),
            "events": len(corpus.events),
            "manifest": len(RUNS),
        }
        assert con.sql("select * from manifest").columns == MANIFEST_SCHEMA.names
        assert con.sql("select * from runs").columns == MANIFEST_SCHEMA.names  # no runs.parquet yet
        assert set(con.sql("select * from steps").columns) == set(STEPS_SCHEMA.names)
        assert con.sql("select * from events").columns == EVENTS_SCHEMA.names
    finally:
        con.close()


def test_connect_join_group_by_magnitude(corpus):
    mag = {m["run_id"]: m["magnitude"] for m in corpus.manifest}
    perf = defaultdict(list)
    for r in corpus.steps:
        perf[mag[r["run_id"]]].append(r["performance"])
    expected = {m: sum(v) / len(v) for m, v in perf.items()}
    assert len(expected) == 2  # two magnitudes, one of them shared by two runs

    con = connect(corpus.root)
    try:
        got = con.sql(
            "select magnitude, avg(performance) from steps join runs using (run_id) group by magnitude"
        ).fetchall()
    finally:
        con.close()
    assert len(got) == len(expected)
    for m, avg in got:
        assert avg == pytest.approx(expected[m], rel=1e-12)


def test_connect_steps_rows(corpus):
    con = connect(corpus.root)
    try:
        rel = con.sql("select * from steps where algo = 'ppo'")
        cols = rel.columns
        got = [dict(zip(cols, row, strict=True)) for row in rel.fetchall()]
    finally:
        con.close()
    assert_rows_equal(got, corpus.steps_where(algo="ppo"))


def test_connect_events(corpus):
    con = connect(corpus.root)
    try:
        got = con.sql("select run_id, step, event, value from events order by run_id, step").fetchall()
    finally:
        con.close()
    want = sorted((e["run_id"], e["step"], e["event"], e["value"]) for e in corpus.events)
    assert got == want


def test_connect_runs_parquet_preferred(tmp_path):
    c = build_corpus(tmp_path, litter=False)
    collapsed = "run-sac-spike"
    runs = [{**m, "collapsed": m["run_id"] == collapsed, "censored": m["run_id"] != collapsed} for m in c.manifest]
    write_table(pa.Table.from_pylist(runs, schema=RUNS_SCHEMA), tmp_path / "runs.parquet", RUNS_SCHEMA)
    con = connect(tmp_path)
    try:
        assert con.sql("select run_id from runs where collapsed").fetchall() == [("run-sac-spike",)]
        assert scalar(con, "select count(*) from manifest") == len(RUNS)
    finally:
        con.close()


def test_connect_without_events(tmp_path):
    """Runs whose events file is missing are runs verify rejects: their steps are left out too, and named."""
    build_corpus(tmp_path, with_events=False)
    assert not (tmp_path / "events").exists()
    notes: list[str] = []
    con = connect(tmp_path, notes=notes)
    try:
        assert scalar(con, "select count(*) from events") == 0
        assert con.sql("select * from events").columns == EVENTS_SCHEMA.names
        assert scalar(con, "select count(*) from steps") == 0
        # joins against the empty views still work
        n = scalar(con, "select count(*) from runs left join events using (run_id)")
        assert n == len(RUNS)
    finally:
        con.close()
    assert len(notes) == 1 and "skipped 3 run(s)" in notes[0] and all(r[0] in notes[0] for r in RUNS)


def test_connect_empty_dir(tmp_path):
    con = connect(tmp_path)
    try:
        for view, schema in (("runs", MANIFEST_SCHEMA), ("manifest", MANIFEST_SCHEMA), ("events", EVENTS_SCHEMA)):
            assert scalar(con, f"select count(*) from {view}") == 0
            assert con.sql(f"select * from {view}").columns == schema.names
        assert scalar(con, "select count(*) from steps") == 0
    finally:
        con.close()


def test_connect_missing_dir(tmp_path):
    with pytest.raises(CorpusNotFoundError):
        connect(tmp_path / "does-not-exist")


def test_connect_path_with_quote(tmp_path):
    root = tmp_path / "it's here"
    c = build_corpus(root, litter=False)
    con = connect(root)
    try:
        assert scalar(con, "select count(*) from steps") == len(c.steps)
        assert scalar(con, "select count(*) from events") == len(c.events)
    finally:
        con.close()


# ------------------------------------------------------------------ no project code


def test_polars_glob_without_project_code(corpus):
    df = pl.scan_parquet(f"{corpus.root}/steps/**/*.parquet", hive_partitioning=True).collect()
    assert df.height == len(corpus.steps)
    assert set(df.columns) == set(STEPS_SCHEMA.names)
    assert_rows_equal(df.to_dicts(), corpus.steps)
    sac = pl.scan_parquet(f"{corpus.root}/steps/**/*.parquet", hive_partitioning=True).filter(pl.col("algo") == "sac")
    assert sac.select(pl.len()).collect().item() == len(corpus.steps_where(algo="sac"))


def test_duckdb_glob_without_project_code(corpus):
    glob_sql = f"{corpus.root}/steps/**/*.parquet".replace("'", "''")
    rel = duckdb.sql(
        "select run_id, step, samples_seen, performance, grad_norm, perturbation_active, algo, perturbation "
        f"from read_parquet('{glob_sql}', hive_partitioning=true) order by run_id, step"
    )
    cols = rel.columns
    got = [dict(zip(cols, row, strict=True)) for row in rel.fetchall()]
    assert_rows_equal(got, corpus.steps, columns=cols)
    ev_sql = f"{corpus.root}/events/*.parquet".replace("'", "''")
    n_events = scalar(duckdb, f"select count(*) from read_parquet('{ev_sql}')")
    assert n_events == len(corpus.events)


def test_pandas_without_project_code(corpus):
    man = pd.read_parquet(corpus.root / "manifest.parquet")
    assert list(man.columns) == MANIFEST_SCHEMA.names
    assert sorted(man["run_id"]) == sorted(m["run_id"] for m in corpus.manifest)
    by_id = man.set_index("run_id")
    for m in corpus.manifest:
        assert by_id.loc[m["run_id"], "magnitude"] == m["magnitude"]
        assert by_id.loc[m["run_id"], "algo"] == m["algo"]

    for run_id in ("run-ppo-none", "run-sac-spike"):
        (file,) = glob.glob(f"{corpus.root}/steps/**/{run_id}.parquet", recursive=True)
        df = pd.read_parquet(file)
        want = corpus.steps_where(run_id=run_id)
        assert len(df) == len(want)
        # a flat read of one file still has the partition values as columns
        for col in ("domain", "algo", "env", "perturbation"):
            assert set(df[col]) == {want[0][col]}
        assert df["performance"].tolist() == [r["performance"] for r in want]
        assert df["grad_norm"].isna().tolist() == [r["grad_norm"] is None for r in want]


def test_globs_ignore_writer_temp_names(corpus):
    pattern = f"{corpus.root}/steps/**/*.parquet"
    matched = glob.glob(pattern, recursive=True)
    assert matched and not any(os.path.basename(p).startswith(".") for p in matched)
    # and the full-glob readers above would have raised on the garbage if they had opened it
    assert pl.scan_parquet(pattern, hive_partitioning=True).select(pl.len()).collect().item() == len(corpus.steps)


def test_read_manifest_matches_written(corpus):
    table = read_manifest(corpus.root)
    assert table.column("run_id").to_pylist() == sorted(m["run_id"] for m in corpus.manifest)


# ------------------------------------------------------------------ awkward partition values

# Gymnasium registers namespaced ids such as "phys2d/CartPole-v1"; a raw "/" in a Hive
# directory name would split the partition and readers would see env="phys2d".
AWKWARD = ["phys2d/CartPole-v1", "a=b c", "50%", "HalfCheetah-v5"]


def test_steps_path_encodes_partition_values(tmp_path):
    run = {"run_id": "r", "domain": "rl", "algo": "ppo", "env": "phys2d/CartPole-v1", "perturbation": "none"}
    path = steps_path(tmp_path, run)
    assert path.parent.parent.name == "env=phys2d%2FCartPole-v1"
    assert path.relative_to(tmp_path).parts[:5] == (
        "steps",
        "domain=rl",
        "algo=ppo",
        "env=phys2d%2FCartPole-v1",
        "perturbation=none",
    )
    plain = steps_path(tmp_path, {**run, "env": "HalfCheetah-v5", "perturbation": "lr_spike"})
    assert plain.relative_to(tmp_path).as_posix() == (
        "steps/domain=rl/algo=ppo/env=HalfCheetah-v5/perturbation=lr_spike/r.parquet"
    )


def test_awkward_partition_values_read_back(tmp_path):
    want, manifest = {}, []
    for k, env in enumerate(AWKWARD):
        run_id = f"r{k}"
        row = {
            "run_id": run_id,
            "step": 0,
            "samples_seen": 1,
            "wall_time_s": 0.1,
            "perturbation_active": False,
            "performance": float(k),
            "domain": "rl",
            "algo": "ppo",
            "env": env,
            "perturbation": "none",
        }
        write_table(pa.Table.from_pylist([row], schema=STEPS_SCHEMA), steps_path(tmp_path, row), STEPS_SCHEMA)
        write_table(EVENTS_SCHEMA.empty_table(), events_path(tmp_path, run_id), EVENTS_SCHEMA)
        manifest.append({**_manifest_row(_run_meta((run_id, "rl", "ppo", env, "none", "none", 1.0, 1, 0.0)), k)})
        want[run_id] = env
    write_manifest(tmp_path, manifest)  # readers read the files of the manifest's ok runs
    pattern = f"{tmp_path}/steps/**/*.parquet"
    assert dict(scan_steps(tmp_path).select("run_id", "env").collect().iter_rows()) == want
    assert dict(pl.scan_parquet(pattern, hive_partitioning=True).select("run_id", "env").collect().iter_rows()) == want
    assert scan_steps(tmp_path, env="phys2d/CartPole-v1").collect()["run_id"].to_list() == ["r0"]
    con = connect(tmp_path)
    try:
        assert dict(con.sql("select run_id, env from steps").fetchall()) == want
        assert con.sql("select run_id from steps where env = 'phys2d/CartPole-v1'").fetchall() == [("r0",)]
    finally:
        con.close()
    duck = duckdb.sql(f"select run_id, env from read_parquet('{pattern}', hive_partitioning=true)").fetchall()
    assert dict(duck) == want


def test_analysis_events_carry_the_value_column(local_smoke: Path) -> None:
    """The intervention table reads a rollback's restored update from the events' ``value``: analyze's event
    loader must keep it (it dropped it, and every real rollback counted 0 updates discarded)."""
    from stabilitybench.analysis.data import load_events

    events = load_events(local_smoke)
    raw = pl.concat([pl.read_parquet(f) for f in sorted((local_smoke / "events").glob("*.parquet"))],
                    how="diagonal_relaxed")
    assert events.schema["value"] == pl.Float64
    assert events["value"].null_count() == raw["value"].null_count() and events.height == raw.height
