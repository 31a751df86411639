"""The Ray backend on an in-process Ray instance (``ray.init(num_cpus=2)``): same runs, same corpus as the local pool.

Real training runs throughout (the smoke profile: tiny PPO, SAC and TD3); nothing is mocked.
The cluster form (``ray start --head`` + ``--address``) is in ``test_ray_cluster.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from corpus_tools import corpus_contents, data_files, pids_writing_to

from stabilitybench.data_schema import read_manifest, steps_path
from stabilitybench.generate.backends import LocalPool, RayCluster, make_backend
from stabilitybench.generate.errors import BackendError
from stabilitybench.generate.matrix import load_profile, parse_only, select
from stabilitybench.generate.runner import MatrixReport, run_matrix
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import LOG_DIR, base_row

SMOKE = load_profile("smoke")


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One in-process Ray instance for the module; RayCluster() uses it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MatrixReport, list[dict[str, Any]]]:
    corpus = tmp_path_factory.mktemp("ray") / "corpus"
    seen: list[dict[str, Any]] = []
    report = run_matrix(SMOKE, corpus, backend=RayCluster(), on_result=seen.append)
    return corpus, report, seen


# ---------------------------------------------------------------------- same corpus
@pytest.mark.slow
def test_smoke_on_ray_equals_smoke_on_the_local_pool(
        local_smoke: Path, ray_smoke: tuple[Path, MatrixReport, list[dict[str, Any]]]) -> None:
    corpus, report, seen = ray_smoke
    assert (report.ran, report.ok, report.failed, report.skipped) == (len(SMOKE), len(SMOKE), 0, 0)
    assert sorted(r["run_id"] for r in seen) == sorted(s.run_id for s in SMOKE)  # every row reached on_result
    ray_runs, local_runs = corpus_contents(corpus), corpus_contents(local_smoke)
    assert sorted(ray_runs) == sorted(s.run_id for s in SMOKE)
    assert all(r["row"]["status"] == "ok" and r["row"]["n_updates"] > 0 for r in ray_runs.values())
    for run_id in local_runs:  # same runs, same telemetry value for value (only the clock differs)
        assert ray_runs[run_id] == local_runs[run_id], run_id
    assert data_files(corpus) == data_files(local_smoke)  # no temp files, no extra files


@pytest.mark.slow
def test_second_ray_generate_trains_nothing(ray_smoke: tuple[Path, MatrixReport, list[dict[str, Any]]]) -> None:
    corpus = ray_smoke[0]
    before = {p: os.stat(corpus / p).st_mtime_ns for p in data_files(corpus)}
    report = run_matrix(SMOKE, corpus, backend=RayCluster())
    assert (report.ran, report.skipped) == (0, len(SMOKE))
    assert {p: os.stat(corpus / p).st_mtime_ns for p in data_files(corpus)} == before


# --------------------------------------------------------------- resume across backends
@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("local", "ray"), ("ray", "local")])
def test_half_on_one_backend_then_finished_on_the_other(first: str, second: str, tmp_path: Path,
                                                        local_smoke: Path) -> None:
    corpus = tmp_path / "corpus"
    half = select(SMOKE, parse_only("algo=ppo"))
    assert 0 < len(half) < len(SMOKE)
    one = run_matrix(half, corpus, backend=make_backend(first, workers=2))
    assert (one.ran, one.ok) == (len(half), len(half))
    stamps = {p: os.stat(corpus / p).st_mtime_ns for p in data_files(corpus)}

    two = run_matrix(SMOKE, corpus, backend=make_backend(second, workers=2))
    assert (two.ran, two.ok, two.skipped) == (len(SMOKE) - len(half), len(SMOKE) - len(half), len(half))
    for path, mtime in stamps.items():  # the first half was not touched again
        assert os.stat(corpus / path).st_mtime_ns == mtime, path
    assert corpus_contents(corpus) == corpus_contents(local_smoke)  # same corpus as one local run
    assert data_files(corpus) == data_files(local_smoke)


@pytest.mark.slow
def test_gpt2_runs_on_ray_equal_the_local_pool(tmp_path: Path) -> None:
    """The LM generator through Ray: two micro GPT-2 runs (both workers building the tokenizer cache at once)."""
    micro = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "batch_size": 8, "grad_accum": 4,
             "eval_sequences": 8, "vocab_size": 512, "eval_every": 2, "tokenizer_dir": str(tmp_path / "tok")}
    specs = [RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=seed, total_steps=6 * 8 * 32,
                     perturbation="lr_spike", magnitude=10.0, duration_steps=2, hparams=micro) for seed in (0, 1)]
    on_ray = run_matrix(specs, tmp_path / "ray", backend=RayCluster())
    local = run_matrix(specs, tmp_path / "local", backend=LocalPool(2))
    assert (on_ray.ok, local.ok) == (2, 2), on_ray.failures + local.failures
    ray_runs, local_runs = corpus_contents(tmp_path / "ray"), corpus_contents(tmp_path / "local")
    assert ray_runs == local_runs
    assert len({r["row"]["tokenizer_hash"] for r in ray_runs.values()}) == 1


# --------------------------------------------------------------------- a killed worker
def victim_and_other() -> tuple[RunSpec, RunSpec]:
    hparams = {"n_steps": 256, "batch_size": 64, "n_epochs": 1}
    victim = RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=11, total_steps=4096, hparams=hparams)
    other = RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=12, total_steps=512, hparams=hparams)
    return victim, other


class WorkerKiller(threading.Thread):
    """SIGKILLs the process running ``run_id`` (found by its stdout, ``logs/<run_id>.out``) once, mid-run."""

    def __init__(self, corpus: Path, run_id: str, after_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.log = corpus / LOG_DIR / f"{run_id}.out"
        self.after_s = after_s
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            pids = pids_writing_to(self.log) if self.log.exists() else []
            if pids:
                time.sleep(self.after_s)  # into the run: imports done, training under way
                for pid in pids_writing_to(self.log):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                return
            time.sleep(0.02)


def run_killing_the_victim(corpus: Path, max_retries: int) -> tuple[RunSpec, RunSpec, MatrixReport]:
    """Run (victim, other) on Ray, SIGKILLing the victim's worker once mid-run."""
    victim, other = victim_and_other()
    killer = WorkerKiller(corpus, victim.run_id)
    killer.start()
    try:
        report = run_matrix([victim, other], corpus, backend=RayCluster(max_retries=max_retries))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "the victim's worker was never seen running"
    return victim, other, report


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd/1").exists(), reason="needs /proc")
def test_killed_ray_worker_is_retried_and_nothing_is_duplicated(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    victim, other, report = run_killing_the_victim(corpus, max_retries=2)
    assert (report.ran, report.ok, report.failed) == (2, 2, 0)  # the retry finished the victim
    runs = corpus_contents(corpus)  # asserts one manifest row per run_id
    assert sorted(runs) == sorted([victim.run_id, other.run_id])
    assert runs[victim.run_id]["row"]["n_updates"] == runs[victim.run_id]["row"]["planned_updates"]
    assert runs[victim.run_id]["steps"]["step"] == list(range(runs[victim.run_id]["row"]["n_updates"]))
    assert [f for f in data_files(corpus) if f.rsplit("/", 1)[-1].startswith(".")] == []  # no temp files
    assert len([f for f in data_files(corpus) if victim.run_id in f]) == 2  # one steps + one events file


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd/1").exists(), reason="needs /proc")
def test_worker_killed_with_no_retries_left_is_a_failed_row(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    victim, other, report = run_killing_the_victim(corpus, max_retries=0)
    assert (report.ran, report.ok, report.failed) == (2, 1, 1)
    rows = {r["run_id"]: r for r in read_manifest(corpus).to_pylist()}
    assert rows[victim.run_id]["status"] == "failed"
    assert "Ray worker died" in rows[victim.run_id]["error"] and "\n" not in rows[victim.run_id]["error"]
    assert not steps_path(corpus, base_row(victim)).exists()
    assert rows[other.run_id]["status"] == "ok"
    # rerunning (any backend) finishes it
    again = run_matrix([victim, other], corpus, backend=RayCluster())
    assert (again.ran, again.ok, again.skipped) == (1, 1, 1)
    assert corpus_contents(corpus)[victim.run_id]["row"]["status"] == "ok"


# ------------------------------------------------------------------ placement, errors
def lm_spec(model: str, device: str = "auto") -> RunSpec:
    return RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=0, total_steps=1, hparams={"model": model,
                                                                                         "device": device})


def test_resources_per_run() -> None:
    backend = RayCluster(cpus_per_run=4)
    assert backend.resources(SMOKE[0]) == {"num_cpus": 4, "num_gpus": 0}  # RL: CPU only
    assert backend.resources(lm_spec("tiny")) == {"num_cpus": 4, "num_gpus": 0}
    assert backend.resources(lm_spec("tiny", device="cuda")) == {"num_cpus": 4, "num_gpus": 1}
    assert backend.resources(lm_spec("small")) == {"num_cpus": 4, "num_gpus": 1}  # GPT-2 124M: a GPU
    assert backend.resources(lm_spec("small", device="cpu")) == {"num_cpus": 4, "num_gpus": 0}


@pytest.mark.slow
def test_cpus_per_run_sets_the_task_request_and_torch_threads(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    report = run_matrix([SMOKE[0]], corpus, backend=RayCluster(cpus_per_run=2))
    assert (report.ran, report.ok) == (1, 1), report.failures
    row = read_manifest(corpus).to_pylist()[0]
    assert json.loads(row["config_json"])["torch_threads"] == 2


def test_a_run_no_node_can_host_fails_before_anything_runs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    with pytest.raises(BackendError, match=r"needs 1 CPU\(s\) and 1 GPU on one node.*0 GPU"):
        run_matrix([SMOKE[0], lm_spec("small")], corpus, backend=RayCluster())
    assert read_manifest(corpus).num_rows == 0  # nothing was submitted
    with pytest.raises(BackendError, match=r"needs 3 CPU\(s\)"):
        run_matrix([SMOKE[0]], corpus, backend=RayCluster(cpus_per_run=3))


def test_a_task_that_raises_is_a_failed_row(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / LOG_DIR).write_text("a file where the log folder should be")  # the worker cannot open its log
    report = run_matrix([SMOKE[0]], corpus, backend=RayCluster())
    assert (report.ran, report.failed) == (1, 1)
    error = report.failures[0]["error"]
    assert "in the Ray task" in error and "\n" not in error


def test_backend_options_are_checked() -> None:
    with pytest.raises(BackendError, match="unknown backend 'dask'"):
        make_backend("dask")
    with pytest.raises(BackendError, match="--address is for --backend ray"):
        make_backend("local", address="auto")
    with pytest.raises(BackendError, match="--workers sizes a local Ray instance"):
        make_backend("ray", address="auto", workers=2)
    with pytest.raises(BackendError, match="--cpus-per-run must be at least 1"):
        make_backend("ray", cpus_per_run=0)
    assert isinstance(make_backend("local", workers=3), LocalPool)
    assert make_backend("local", workers=3).workers == 3


def test_a_server_side_traceback_is_reported_by_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Client's refusal is a header line and a server traceback; the one-line error keeps the cause."""
    from stabilitybench.generate.backends import ray_cluster

    refusal = ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                     '  File "proxier.py", line 770\nRuntimeError: Starting Ray client server failed.')
    monkeypatch.setattr(ray_cluster, "_check_reachable", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_cluster, "CLIENT_RETRY_DELAY_S", 0.0)
    calls: list[dict[str, Any]] = []

    def refuse(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise refusal

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(BackendError) as info, RayCluster(address="ray://127.0.0.1:1"):
        pass
    message = str(info.value)
    assert "\n" not in message
    assert "Initialization failure from server: RuntimeError: Starting Ray client server failed." in message
    assert len(calls) == ray_cluster.CLIENT_CONNECT_TRIES  # Ray Client is tried again before giving up


def test_a_ray_client_refusal_that_passes_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's client proxy failing to start a server once: the next connection is used; a GCS address
    (host:port) is tried once."""
    from stabilitybench.generate.backends import ray_cluster

    monkeypatch.setattr(ray_cluster, "_check_reachable", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray_cluster, "CLIENT_RETRY_DELAY_S", 0.0)
    calls: list[str] = []

    def refuse_once(**kwargs: Any) -> None:
        calls.append(kwargs["address"])
        if len(calls) == 1:
            raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client "
                                         "server failed.")

    monkeypatch.setattr(ray, "init", refuse_once)
    with RayCluster(address="ray://127.0.0.1:1") as backend:
        assert backend._owns_session
    assert calls == ["ray://127.0.0.1:1"] * 2
    calls.clear()
    with pytest.raises(BackendError, match=re.escape("cannot start or reach the Ray cluster at '127.0.0.1:1'")), \
            RayCluster(address="127.0.0.1:1"):
        pass
    assert calls == ["127.0.0.1:1"]
