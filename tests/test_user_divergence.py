"""The public API in a user's own torch loop (issue 30): divergence is data, and run_ids cannot collide.

1. A loop whose LR is spiked x1e6 goes non-finite. Before: ``Probe`` raised ``NonFiniteTraining`` out of
   ``optimizer.step()``, the manifest said ``status=failed`` with ``stop_reason`` null and no
   ``nonfinite`` event, and ``verify`` exited 1. Now the run is data: status ok,
   ``stop_reason=nonfinite``, one ``nonfinite`` event, the rows so far kept, ``verify --deep`` clean,
   under each ``nonfinite`` policy (``stop``: the files are written *before* the typed exception).
2. The same script once with a spike and once without, same name and config, gave both runs one
   run_id (two steps files, 40 rows for a 20-step run). Now the perturbation is part of the run_id,
   an existing run_id is refused before training in one line, and ``overwrite=True`` replaces the old
   run's files and manifest row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from stabilitybench.data_schema import read_manifest
from stabilitybench.data_schema.schema import RECORDER_RUN_ID_VERSION
from stabilitybench.data_schema.verify import verify_corpus
from stabilitybench.generate.errors import NonFiniteTraining, RunExistsError, TrainingDiverged
from stabilitybench.generate.perturbations import LRSpike
from stabilitybench.generate.probe import Probe
from stabilitybench.generate.recorder import Recorder

CODE = Path(sys.modules[Recorder.__module__].__file__).resolve().parents[1]  # the code under test (subprocesses too)
LR = 0.05
ONSET = 12


def loop(rec: Recorder, steps: int, *, spike: float | None = None, nonfinite: str | None = None,
         on_step=None) -> Probe:
    """The README's plain torch loop on a small MLP: SGD, clipping, one row per update."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    pert = None if spike is None else LRSpike(spike, ONSET, 10)
    probe = Probe(opt, rec, perturbation=pert, **({} if nonfinite is None else {"nonfinite": nonfinite}))
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x[:, :1] * 3)
        opt.zero_grad()
        loss.backward()
        rec.samples_seen = (step + 1) * 16
        opt.step()
        rec.update_last(loss=loss.item())
        if on_step is not None:
            on_step(step, opt)
    probe.detach()
    return probe


def verify_cli(corpus: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stabilitybench", "verify", "--corpus", str(corpus), "--deep"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(CODE)}, timeout=300)


def events_of(corpus: Path, run_id: str) -> list[dict]:
    return pq.read_table(corpus / "events" / f"{run_id}.parquet").to_pylist()


def steps_files(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / "steps").rglob("*.parquet") if not p.name.startswith("."))


# ------------------------------------------------------------------------ 1. divergence is data
def test_a_diverging_user_run_is_recorded_as_data_before_the_typed_exception(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    seen: dict = {}
    with pytest.raises(NonFiniteTraining) as info:
        with Recorder(corpus, "mlp-diverge", algo="mlp", env="toy", config={"lr": LR}) as rec:
            try:
                loop(rec, 60, spike=1e6)
            except NonFiniteTraining:
                # raised only after the row, the event and the files are safe: they are on disk here
                seen["manifest"] = read_manifest(corpus).to_pylist()
                seen["files"] = steps_files(corpus)
                raise
    exc = info.value
    assert isinstance(exc, TrainingDiverged) and exc.what in ("gradient", "parameters")
    assert ONSET <= exc.step < ONSET + 10 and str(corpus) in str(exc) and "nonfinite" in str(exc)
    assert len(seen["manifest"]) == 1 and len(seen["files"]) == 1
    row = read_manifest(corpus).to_pylist()[0]
    assert row == seen["manifest"][0]
    assert (row["status"], row["stop_reason"], row["error"]) == ("ok", "nonfinite", None)
    assert row["n_updates"] == exc.step + 1 and row["run_id"] == rec.run_id == exc.run_id
    steps = pq.read_table(seen["files"][0]).to_pylist()
    assert [r["step"] for r in steps] == list(range(exc.step + 1))  # the rows so far, the non-finite one included
    last = steps[-1]
    assert exc.what != "gradient" or not math.isfinite(last["grad_norm"])
    nonfinite = [e for e in events_of(corpus, rec.run_id) if e["event"] == "nonfinite"]
    assert [(e["step"], e["detail"]) for e in nonfinite] == [(exc.step, exc.what)]
    assert verify_corpus(corpus, deep=True).problems == []
    out = verify_cli(corpus)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_lr_is_the_users_after_a_divergence_caught_before_the_step(tmp_path: Path) -> None:
    """On CPU a non-finite gradient stops the run before it is applied, inside a spike: the LR the
    probe had multiplied for that update must not stay multiplied (it did before)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    rec = Recorder(None, "nan", algo="lin", env="toy")
    Probe(opt, rec, perturbation=LRSpike(1e3, 1, 5))
    for scale in (1.0, float("nan")):
        opt.zero_grad()
        (scale * net(torch.randn(4, 4)).pow(2).mean()).backward()
        if math.isnan(scale):
            with pytest.raises(TrainingDiverged):
                opt.step()
        else:
            opt.step()
    assert opt.param_groups[0]["lr"] == LR
    assert rec.closed and rec.nonfinite_step == 1 and len(rec) == 2
    assert [e["event"] for e in rec.events if e["event"] == "nonfinite"] == ["nonfinite"]


def test_record_policy_keeps_training_and_the_run_still_ends_as_nonfinite(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    with Recorder(corpus, "mlp-record", algo="mlp", env="toy") as rec:
        probe = loop(rec, 40, spike=1e6, nonfinite="record")
    assert len(rec) == 40 and probe.nonfinite_step is not None
    row = read_manifest(corpus).to_pylist()[0]
    assert (row["status"], row["stop_reason"], row["n_updates"]) == ("ok", "nonfinite", 40)
    nonfinite = [e for e in events_of(corpus, rec.run_id) if e["event"] == "nonfinite"]
    assert [e["step"] for e in nonfinite] == [probe.nonfinite_step]  # one event: the first non-finite update
    assert verify_corpus(corpus, deep=True).problems == []


def test_raise_policy_in_a_with_block_is_still_data(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    with pytest.raises(NonFiniteTraining) as info:
        with Recorder(corpus, "mlp-raise", algo="mlp", env="toy") as rec:
            loop(rec, 60, spike=1e6, nonfinite="raise")
    assert not isinstance(info.value, TrainingDiverged)
    row = read_manifest(corpus).to_pylist()[0]
    assert (row["status"], row["stop_reason"], row["n_updates"]) == ("ok", "nonfinite", info.value.step + 1)
    assert [e["step"] for e in events_of(corpus, rec.run_id) if e["event"] == "nonfinite"] == [info.value.step]
    assert verify_corpus(corpus, deep=True).problems == []


def test_a_run_that_diverged_then_crashed_is_still_a_diverged_run(tmp_path: Path) -> None:
    """``record`` keeps going; if the user's code then fails on the NaNs, the run is still collapse data."""
    corpus = tmp_path / "c"

    def fail_on_nan(step: int, opt: torch.optim.Optimizer) -> None:
        if any(not torch.isfinite(p).all() for g in opt.param_groups for p in g["params"]):
            raise ValueError("found invalid values")

    with pytest.raises(ValueError), Recorder(corpus, "mlp-crash", algo="mlp", env="toy") as rec:
        loop(rec, 60, spike=1e6, nonfinite="record", on_step=fail_on_nan)
    row = read_manifest(corpus).to_pylist()[0]
    assert (row["status"], row["stop_reason"]) == ("ok", "nonfinite")
    assert verify_corpus(corpus, deep=True).problems == []


def test_generator_style_recorder_gets_one_nonfinite_event() -> None:
    """The generators catch ``NonFiniteTraining`` and record the event themselves: still one event."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    rec = Recorder(None, run_id="gen-run")
    probe = Probe(opt, rec)
    net(torch.randn(4, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
    (float("inf") * net(torch.randn(4, 4)).sum()).backward()
    try:
        opt.step()
    except NonFiniteTraining as exc:  # what generate/rl/train.py and generate/lm/train.py do
        rec.event(exc.step, "nonfinite", detail=exc.what)
    probe.detach()
    assert [(e["step"], e["detail"]) for e in rec.events] == [(1, "gradient")]
    assert rec.steps_table().num_rows == 2


# ------------------------------------------------------------------------ 2. run_ids cannot collide
def test_spiked_and_unspiked_runs_of_one_script_get_distinct_run_ids(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    ids = []
    for spike in (10.0, None):
        with Recorder(corpus, "same-name", algo="mlp", env="toy", config={"lr": LR}) as rec:
            loop(rec, 20, spike=spike)
        ids.append(rec.run_id)
    assert ids[0] != ids[1]
    rows = {r["run_id"]: r for r in read_manifest(corpus).to_pylist()}
    assert set(rows) == set(ids) and rows[ids[0]]["perturbation"] == "lr_spike"
    assert rows[ids[1]]["perturbation"] == "none"
    files = steps_files(corpus)
    assert sorted(f.stem for f in files) == sorted(ids)
    assert [pq.read_metadata(f).num_rows for f in files] == [20, 20]
    assert verify_corpus(corpus, deep=True).problems == []


def test_every_identity_field_changes_the_run_id() -> None:
    base = {"run_name": "r", "domain": "rl", "algo": "a", "env": "e", "seed": 0, "config": {"lr": 1}}
    ids = {Recorder(None, **base).run_id}
    for key, value in [("run_name", "r2"), ("domain", "lm"), ("algo", "b"), ("env", "f"), ("seed", 1),
                       ("config", {"lr": 2})]:
        ids.add(Recorder(None, **{**base, key: value}).run_id)
    for pert in [LRSpike(10, 5, 3), LRSpike(11, 5, 3), LRSpike(10, 6, 3), LRSpike(10, 5, 4), LRSpike(10, 5, 3, seed=1)]:
        ids.add(Recorder(None, **base, perturbation=pert).run_id)
    assert len(ids) == 12
    # an unperturbed run keeps the run_id earlier versions gave it (existing corpora keep their ids)
    payload = json.dumps({**base, "schema_version": RECORDER_RUN_ID_VERSION}, sort_keys=True, default=str)
    assert Recorder(None, **base).run_id == hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_an_existing_run_id_is_refused_before_training_and_the_corpus_is_untouched(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    with Recorder(corpus, "again", algo="mlp", env="toy") as rec:
        loop(rec, 20, spike=10.0)
    before = {p: p.read_bytes() for p in sorted(corpus.rglob("*.parquet"))}
    # the identity is complete at construction: refused there
    with pytest.raises(RunExistsError) as info:
        Recorder(corpus, "again", algo="mlp", env="toy", perturbation=LRSpike(10.0, ONSET, 10))
    message = str(info.value)
    assert "\n" not in message and rec.run_id in message and "overwrite=True" in message
    # the perturbation comes with the Probe: refused when it attaches, before any update, and nothing is written
    updates = []
    with pytest.raises(RunExistsError), Recorder(corpus, "again", algo="mlp", env="toy") as rec2:
        loop(rec2, 20, spike=10.0, on_step=lambda step, opt: updates.append(step))
    assert updates == [] and rec2.refused and rec2.manifest_row is None
    assert {p: p.read_bytes() for p in sorted(corpus.rglob("*.parquet"))} == before
    # a steps file without a manifest row (a lost manifest) counts as existing too
    (corpus / "manifest.parquet").unlink()
    with pytest.raises(RunExistsError, match="no manifest row"):
        Recorder(corpus, "again", algo="mlp", env="toy", perturbation=LRSpike(10.0, ONSET, 10))


def test_stabilitybench_cli_prints_the_refusal_in_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    code = ("import sys\nfrom stabilitybench.data_schema.errors import exit_on_user_error\n"
            "from stabilitybench import Recorder\n"
            "def main():\n    with Recorder(sys.argv[1], 'x', algo='a', env='e', run_id='fixed') as rec:\n"
            "        rec.append(lr=0.1, perturbation_active=False)\n"
            "exit_on_user_error(main)\n")
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    first = subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True, text=True, env=env)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "overwrite=True" in second.stderr


def test_overwrite_replaces_the_old_run_in_one_step(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    with Recorder(corpus, "redo", algo="mlp", env="toy") as rec:
        loop(rec, 20, spike=10.0)
    old_events = (corpus / "events" / f"{rec.run_id}.parquet").read_bytes()
    with Recorder(corpus, "redo", algo="mlp", env="toy", overwrite=True) as rec2:
        loop(rec2, 15, spike=10.0)
    assert rec2.run_id == rec.run_id
    rows = read_manifest(corpus).to_pylist()
    assert len(rows) == 1 and rows[0]["n_updates"] == 15
    files = steps_files(corpus)
    assert len(files) == 1 and pq.read_metadata(files[0]).num_rows == 15
    assert (corpus / "events" / f"{rec.run_id}.parquet").read_bytes() != old_events
    assert not [p for p in corpus.rglob("*.tmp")]
    assert verify_corpus(corpus, deep=True).problems == []


def test_overwrite_with_a_fixed_run_id_removes_the_old_partitions_file(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    with Recorder(corpus, "fixed", algo="mlp", env="toy", run_id="my-run") as rec:
        loop(rec, 10, spike=10.0)
    with Recorder(corpus, "fixed", algo="mlp", env="toy", run_id="my-run", overwrite=True) as rec:
        loop(rec, 10)  # no perturbation now: the steps file moves to perturbation=none
    files = steps_files(corpus)
    assert [f.parent.name for f in files] == ["perturbation=none"]
    assert verify_corpus(corpus, deep=True).problems == []
