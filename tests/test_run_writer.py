"""The one run writer (:func:`stabilitybench.data_schema.run_writer.write_run`) and the one run_id hash.

Both writers of a run, the runner's worker and the Recorder, go through ``write_run``; run_ids of
both kinds are hashed by ``hash_run_id`` and stay what the code before it computed (pinned below),
so existing corpora keep their ids and resume.
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from stabilitybench import perturbation
from stabilitybench.data_schema import (
    SCHEMA_VERSION,
    SchemaError,
    events_path,
    read_manifest,
    read_table,
    run_metadata,
    steps_path,
)
from stabilitybench.data_schema.integrity import check_run, file_digest
from stabilitybench.data_schema.lock import CorpusLock
from stabilitybench.data_schema.run_writer import hash_run_id, run_steps_files, write_run
from stabilitybench.data_schema.schema import RUN_ID_VERSION
from stabilitybench.generate.recorder import Recorder, _run_id
from stabilitybench.generate.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ run_id
# Golden values computed by the code before the hash had one owner (RunSpec.run_id and
# recorder._run_id each hashed on their own). If one changes, every corpus holding such runs is
# orphaned: change them only with a deliberate version bump.
@pytest.mark.parametrize(("spec", "expected"), [
    (RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=0), "519bba8a7b9c0aea"),
    (RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=2, perturbation="weight_noise", magnitude=0.5,
             hparams=(("lr", 1e-3),)), "27b0e293f7c684bb"),
])
def test_spec_run_ids_are_unchanged(spec: RunSpec, expected: str) -> None:
    assert spec.run_id == expected
    assert hash_run_id(spec.to_dict(), RUN_ID_VERSION) == expected


@pytest.mark.parametrize(("args", "expected"), [
    (("run", "rl", "custom", "custom", 0, {}, None), "4950f8456b5ce1a0"),
    (("cartpole", "rl", "reinforce", "CartPole-v1", 3, {"lr": 0.01, "hidden": [64, 64]}, None), "f245df68c23e9a46"),
    (("cartpole", "rl", "reinforce", "CartPole-v1", 3, {"lr": 0.01},
      perturbation("lr_spike", magnitude=10.0, onset_step=30, duration_steps=5)), "94279db9aa444e31"),
    (("gpt", "lm", "nanogpt", "tiny", 1, {"n_layer": 2}, perturbation("none", magnitude=1.0)), "259d84c18393a5f1"),
])
def test_recorder_run_ids_are_unchanged(args: tuple[Any, ...], expected: str) -> None:
    assert _run_id(*args) == expected
    name, domain, algo, env, seed, config, p = args
    rec = Recorder(None, name, domain=domain, algo=algo, env=env, seed=seed, config=config, perturbation=p)
    assert rec.run_id == expected


def test_hash_run_id_depends_on_every_field_and_the_version_not_on_key_order() -> None:
    ident = {"a": 1, "b": [1, 2], "c": {"x": "y"}}
    base = hash_run_id(ident, "1.0")
    assert len(base) == 16 and int(base, 16) >= 0
    assert hash_run_id(dict(reversed(list(ident.items()))), "1.0") == base
    assert hash_run_id(ident, "1.1") != base
    for key, value in (("a", 2), ("b", [2, 1]), ("c", {"x": "z"}), ("d", None)):
        assert hash_run_id({**ident, key: value}, "1.0") != base


# ----------------------------------------------------------------------------- write_run
def _run(run_id: str = "r0", perturbation_kind: str = "none", n: int = 3) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    part = {"domain": "rl", "algo": "custom", "env": "custom", "perturbation": perturbation_kind}
    row = {**part, "run_id": run_id, "seed": 0, "dimension": "none", "stochasticity": "default", "total_steps": n,
           "n_updates": n, "status": "ok", "code_version": "test", "schema_version": SCHEMA_VERSION,
           "config_json": "{}"}
    steps = pa.Table.from_pylist([{**part, "run_id": run_id, "step": i, "samples_seen": i, "wall_time_s": 0.1 * i,
                                   "perturbation_active": False, "loss": 1.0 / (i + 1)} for i in range(n)])
    events = pa.Table.from_pylist([{"run_id": run_id, "step": 0, "event": "eval", "value": 1.0}])
    return row, steps, events


def test_write_run_writes_files_digests_and_the_manifest_row(tmp_path: Path) -> None:
    row, steps, events = _run()
    out = write_run(tmp_path, row, steps, events)
    assert out is row
    spath, epath = steps_path(tmp_path, row), events_path(tmp_path, "r0")
    assert (row["steps_bytes"], row["steps_blake2b"]) == file_digest(spath)
    assert (row["events_bytes"], row["events_blake2b"]) == file_digest(epath)
    assert read_table(spath, "steps").num_rows == 3 and read_table(epath, "events").num_rows == 1
    meta = run_metadata(spath)  # the row as it stood before the steps file was hashed: events digest included
    assert meta["events_blake2b"] == row["events_blake2b"] and "steps_blake2b" not in meta
    manifest = read_manifest(tmp_path).to_pylist()
    assert [r["run_id"] for r in manifest] == ["r0"] and manifest[0]["steps_blake2b"] == row["steps_blake2b"]
    assert check_run(tmp_path, manifest[0]) == ([], {})
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporaries left


def test_write_run_replaces_the_row_and_an_old_partitions_steps_file(tmp_path: Path) -> None:
    write_run(tmp_path, *_run("r0", "none"))
    write_run(tmp_path, *_run("r1", "none"))
    old = steps_path(tmp_path, _run("r0", "none")[0])
    row, steps, events = _run("r0", "lr_spike", n=5)
    write_run(tmp_path, row, steps, events)
    assert not old.exists()
    assert run_steps_files(tmp_path, "r0") == [steps_path(tmp_path, row)]
    manifest = {r["run_id"]: r for r in read_manifest(tmp_path).to_pylist()}
    assert sorted(manifest) == ["r0", "r1"] and manifest["r0"]["n_updates"] == 5


def test_a_bad_column_or_a_refusing_check_writes_nothing(tmp_path: Path) -> None:
    row, steps, events = _run()
    with pytest.raises(SchemaError, match="no_such_column"):
        write_run(tmp_path, row, steps.append_column("no_such_column", pa.array([1, 2, 3])), events)

    def refuse() -> None:
        raise RuntimeError("taken")

    with pytest.raises(RuntimeError, match="taken"):
        write_run(tmp_path, row, steps, events, check=refuse)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert "steps_blake2b" not in row


def test_manifest_false_writes_only_the_files_without_the_lock(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    with CorpusLock(tmp_path, "a driver"):  # the runner's driver holds the lock for the whole matrix
        row, steps, events = _run()
        write_run(tmp_path, row, steps, events, manifest=False, check=lambda: pytest.fail("check runs only "
                                                                                          "with the manifest"))
    assert steps_path(tmp_path, row).exists() and events_path(tmp_path, "r0").exists()
    assert read_manifest(tmp_path).num_rows == 0
    assert run_metadata(steps_path(tmp_path, row))["run_id"] == "r0"  # what plan() recovers a lost row from


def test_a_held_lock_writes_the_files_and_warns_that_the_manifest_was_not_updated(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    row, steps, events = _run()
    with CorpusLock(tmp_path, "stabilitybench generate"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_run(tmp_path, row, steps, events, wait_s=0, check=lambda: pytest.fail("not checked while busy"))
    assert any("not added to the manifest" in str(w.message) and "stabilitybench generate" in str(w.message)
               for w in caught)
    assert steps_path(tmp_path, row).exists() and read_manifest(tmp_path).num_rows == 0


def test_recorder_close_goes_through_write_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stabilitybench.generate.recorder as recorder_mod

    calls = []

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return write_run(*args, **kwargs)

    monkeypatch.setattr(recorder_mod, "write_run", spy)
    with Recorder(tmp_path, "spy") as rec:
        rec.append(loss=1.0, perturbation_active=False)
    assert len(calls) == 1 and calls[0].get("manifest", True)
    row = read_manifest(tmp_path).to_pylist()[0]
    assert row["run_id"] == rec.run_id and json.loads(row["config_json"])["run_name"] == "spy"
    assert check_run(tmp_path, row) == ([], {})


@pytest.mark.parametrize("module", ["generate/recorder.py", "generate/worker.py"])
def test_no_writer_of_a_run_writes_files_itself(module: str) -> None:
    """The runner's worker and the Recorder call write_run and none of the lower-level writers."""
    called = {node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
              for node in ast.walk(ast.parse((ROOT / module).read_text())) if isinstance(node, ast.Call)}
    assert "write_run" in called
    assert not called & {"write_table", "file_digest", "write_manifest", "atomic_path", "CorpusLock"}
