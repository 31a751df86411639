"""The public API end to end: README examples, corpus written by the Recorder, interrupts, adapters."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import torch

from stabilitybench.data_schema import STEPS_SCHEMA, read_manifest, read_table

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[str]:
    """The torch, SB3 and HF Trainer examples of the "Instrument your own training" guide (moved from the README)."""
    text = (ROOT / "docs/guides/instrument.md").read_text()
    section = text.split("\n## A plain torch loop", 1)[1].split("\n## PyTorch Lightning", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def readme_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("readme")
    examples = readme_examples()
    assert len(examples) == 3
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for code in examples:
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(old)
    return cwd / "corpus"


def test_readme_examples_write_a_corpus_that_plain_duckdb_reads(readme_corpus: Path) -> None:
    manifest = read_manifest(readme_corpus).to_pylist()
    by_algo = {r["algo"]: r for r in manifest}
    assert set(by_algo) == {"mlp", "ppo", "gpt2"}
    assert {r["status"] for r in manifest} == {"ok"} and {r["stop_reason"] for r in manifest} == {"completed"}
    assert by_algo["mlp"]["n_updates"] == 200 and by_algo["mlp"]["perturbation"] == "lr_spike"
    assert by_algo["ppo"]["n_updates"] == 4 * 10 * 4  # 4 rollouts x 10 epochs x 4 minibatches
    assert by_algo["gpt2"]["n_updates"] == 12
    glob = str(readme_corpus / "steps/**/*.parquet")
    rows = duckdb.sql(f"select algo, count(*), count(grad_norm), count(grad_coherence), max(step) "
                      f"from read_parquet('{glob}', hive_partitioning=true) group by algo order by algo").fetchall()
    assert rows == [("gpt2", 12, 12, 12 - 7, 11), ("mlp", 200, 200, 200 - 7, 199), ("ppo", 160, 160, 160 - 7, 159)]
    ppo = duckdb.sql(f"select count(episode_return), max(samples_seen) from read_parquet('{glob}') "
                     f"where algo = 'ppo'").fetchall()[0]
    assert ppo[0] > 100 and ppo[1] == 1024
    gpt = duckdb.sql(f"select count(loss) from read_parquet('{glob}') where algo = 'gpt2'").fetchall()[0]
    assert gpt[0] == 3  # logging_steps = 4 over 12 steps
    # the spike: x10 on updates 100..109 on top of the cosine schedule, per group (group 0 recorded)
    lrs = duckdb.sql(f"select step, lr from read_parquet('{glob}') where algo = 'mlp' order by step").fetchall()
    import math
    for step, lr in lrs:
        cosine = 1e-3 * (1 + math.cos(math.pi * step / 200)) / 2
        assert lr == pytest.approx(cosine * (10 if 100 <= step < 110 else 1), rel=1e-9)
    events = duckdb.sql(f"select step, event from read_parquet('{readme_corpus}/events/*.parquet') "
                        f"where event like 'perturbation%' order by step").fetchall()
    assert events == [(100, "perturbation_on"), (110, "perturbation_off")]


def test_api_runs_go_through_query_and_analyze(readme_corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    query = subprocess.run([sys.executable, "-m", "stabilitybench", "query", "select count(*) from runs",
                            "--corpus", str(readme_corpus)], capture_output=True, text=True, env=env)
    assert query.returncode == 0, query.stderr
    assert "3" in query.stdout
    out = tmp_path / "results"
    analyze = subprocess.run([sys.executable, "-m", "stabilitybench", "analyze", "--corpus", str(readme_corpus),
                              "--out", str(out)], capture_output=True, text=True, env=env)
    assert analyze.returncode == 0, analyze.stdout + analyze.stderr
    runs = pq.read_table(out / "runs.parquet") if (out / "runs.parquet").exists() else None
    runs = runs if runs is not None else pq.read_table(readme_corpus / "runs.parquet")
    assert runs.num_rows == 3


def test_keyboard_interrupt_leaves_a_valid_shorter_steps_file(tmp_path: Path) -> None:
    from stabilitybench import Probe, Recorder

    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        with Recorder(tmp_path / "c", "interrupted", algo="lin", env="toy") as rec:
            Probe(opt, rec)
            for step in range(100):
                opt.zero_grad()
                net(torch.randn(4, 3)).pow(2).mean().backward()
                opt.step()
                if step == 36:
                    raise KeyboardInterrupt
    row = read_manifest(tmp_path / "c").to_pylist()[0]
    assert row["stop_reason"] == "interrupted" and row["n_updates"] == 37 and row["status"] == "ok"
    steps = list((tmp_path / "c" / "steps").rglob("*.parquet"))
    assert len(steps) == 1
    table = read_table(steps[0], "steps")  # schema-valid
    assert table.schema.remove_metadata().equals(STEPS_SCHEMA.remove_metadata())
    assert table.column("step").to_pylist() == list(range(37))
    meta = json.loads(pq.read_schema(steps[0]).metadata[b"stabilitybench.run"])
    assert meta["run_id"] == row["run_id"]


def test_recorder_rejects_an_unknown_domain_and_column(tmp_path: Path) -> None:
    from stabilitybench import Recorder

    with pytest.raises(ValueError, match="domain"):
        Recorder(tmp_path, "x", domain="vision")
    rec = Recorder(tmp_path, "x")
    rec.append(no_such_column=1.0)
    with pytest.raises(ValueError, match="no_such_column"):
        rec.steps_table()


def test_import_stabilitybench_does_not_import_torch() -> None:
    code = ("import sys, stabilitybench; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(stabilitybench.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "Probe" in out.stdout and "HFTrainerCallback" in out.stdout and "Stability" not in out.stdout


@pytest.mark.parametrize("algo", ["a2c", "dqn", "sac", "td3"])
def test_sb3_callback_records_any_algorithm(algo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import stable_baselines3 as sb3

    from stabilitybench import Recorder, SB3Callback
    from stabilitybench.generate.probe import Probe

    captures: list[int] = []
    original = Probe._flat_grad
    monkeypatch.setattr(Probe, "_flat_grad", lambda self: (captures.append(1), original(self))[1])

    env = "Pendulum-v1" if algo in ("sac", "td3") else "CartPole-v1"
    kwargs = {"a2c": {"n_steps": 8}, "dqn": {"learning_starts": 100, "train_freq": 4},
              "sac": {"learning_starts": 100}, "td3": {"learning_starts": 100, "policy_delay": 2}}[algo]
    model = getattr(sb3, algo.upper())("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    rec = Recorder(None, algo=algo, env=env)
    model.learn(300, callback=SB3Callback(rec))
    table = rec.steps_table().to_pylist()
    assert len(table) > 10
    assert all(r["grad_norm"] is not None and r["grad_norm"] >= 0 for r in table)
    assert all(r["update_norm"] is not None for r in table)
    if algo in ("sac", "td3"):
        actor = [r["actor_grad_norm"] for r in table if r["actor_grad_norm"] is not None]
        assert len(actor) == (len(table) if algo == "sac" else len(table) // 2)
        assert any(r["value_loss"] is not None for r in table)
        # one gradient capture per critic and per actor update: none wasted on the actor's backward
        # through the critic (the first update of each reads its snapshots instead of a capture)
        assert len(captures) == len(table) - 1 + len(actor) - 1
    assert 0 < table[-1]["samples_seen"] <= model.num_timesteps


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_sb3_callback_records_the_loss_that_was_backpropagated(algo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A2C logs no ``train/loss`` (only its parts): its ``loss`` column was null on every row. Each row that
    carries a loss must hold the loss of the last ``backward()`` of that ``train()`` call (PPO: unchanged)."""
    import stable_baselines3 as sb3

    from stabilitybench import Recorder, SB3Callback

    backpropagated: list[float] = []
    original = torch.Tensor.backward

    def backward(self: torch.Tensor, *args: object, **kwargs: object) -> None:
        backpropagated.append(float(self.detach()))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    kwargs = {"a2c": {"n_steps": 8, "ent_coef": 0.01}, "ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 2}}[algo]
    model = getattr(sb3, algo.upper())("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **kwargs)
    rec = Recorder(None, algo=algo, env="CartPole-v1")
    model.learn({"a2c": 80, "ppo": 192}[algo], callback=SB3Callback(rec))
    rows = rec.steps_table().to_pylist()
    per_train = {"a2c": 1, "ppo": 2 * 64 // 32}[algo]  # optimizer updates per train() call
    assert len(rows) == len(backpropagated) == {"a2c": 10, "ppo": 3 * per_train}[algo]
    losses = [r["loss"] for r in rows]
    expected = [backpropagated[i] if (i + 1) % per_train == 0 else None for i in range(len(rows))]
    assert [loss is None for loss in losses] == [e is None for e in expected]
    for loss, want in zip(losses, expected, strict=True):
        if want is not None:
            assert math.isfinite(loss) and loss == pytest.approx(want, rel=1e-5, abs=1e-6)
    if algo == "a2c":  # the parts are there too, and the entropy term matters (ent_coef > 0)
        assert all(r["policy_loss"] is not None and r["value_loss"] is not None for r in rows)
        assert any(abs(r["loss"] - r["policy_loss"] - 0.5 * r["value_loss"]) > 1e-6 for r in rows)


# --------------------------------------------------------------- the public surface (issue 28, item 6)
def test_probe_has_at_most_seven_public_parameters_and_no_generator_plumbing() -> None:
    """``Probe(optimizer, recorder=None, *, ...)``: what a practitioner reads; the generators' wiring is internal."""
    import inspect

    from stabilitybench import Probe

    params = list(inspect.signature(Probe).parameters.values())
    assert len(params) <= 7
    assert [p.name for p in params[:2]] == ["optimizer", "recorder"] and params[1].default is None
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    for plumbing in ("main", "leads", "clock", "update_context", "skip_stepped_grads", "record", "manual_grads",
                     "coherence", "exact_max_params"):
        with pytest.raises(TypeError, match=plumbing):
            Probe(opt, **{plumbing: None})
    assert Probe.attached(opt) is None  # a refused construction leaves nothing attached


def test_probe_with_only_public_arguments_records_as_before() -> None:
    from stabilitybench import Probe, perturbation

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rows: list[dict] = []
    with Probe(opt, perturbation=perturbation("lr_spike", 10.0, 1, 1), on_row=lambda s, st: rows.append(st),
               coherence_window=2, sketch_dim=64, nonfinite="record") as probe:
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(4, 3)).pow(2).mean().backward()
            opt.step()
        assert probe.sketch is None and probe.coherence.window == 2
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 1.0, 0.1])
    assert rows[-1]["grad_coherence"] is not None and Probe.attached(opt) is None


def test_perturbation_needs_a_magnitude() -> None:
    """1.0 is the identity for lr_spike but a full reset for adam_reset: no default that means either."""
    from stabilitybench import perturbation

    with pytest.raises(TypeError, match="magnitude"):
        perturbation("adam_reset")  # type: ignore[call-arg]
    assert perturbation("lr_spike", 10.0, 5, 2).lr_factor(5) == 10.0


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)


def _sb3_attached(callback: object) -> torch.optim.Optimizer:
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, device="cpu")
    callback.init_callback(model)  # type: ignore[attr-defined]
    callback.on_training_start({}, {})  # type: ignore[attr-defined]
    return model.policy.optimizer


def _hf_attached(callback: object) -> torch.optim.Optimizer:
    from types import SimpleNamespace

    opt = _optimizer()
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1)
    callback.on_train_begin(args, None, None, optimizer=opt)  # type: ignore[attr-defined]
    return opt


def _lightning_attached(callback: object) -> torch.optim.Optimizer:
    from types import SimpleNamespace

    opt = _optimizer()
    trainer = SimpleNamespace(optimizers=[opt], strategy=SimpleNamespace(precision_plugin=SimpleNamespace()))
    callback.on_train_start(trainer, SimpleNamespace(automatic_optimization=True))  # type: ignore[attr-defined]
    return opt


ADAPTERS = {  # new name, old name, how to attach it without a framework run
    "sb3": ("SB3Callback", "StabilityCallback", _sb3_attached),
    "hf": ("HFTrainerCallback", "StabilityTrainerCallback", _hf_attached),
    "lightning": ("LightningCallback", "StabilityLightningCallback", _lightning_attached),
}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_every_adapter_detaches_with_detach_and_the_old_verb_warns(adapter: str) -> None:
    import stabilitybench
    from stabilitybench import Probe, Recorder

    new, _old, attach = ADAPTERS[adapter]
    cls = getattr(stabilitybench, new)
    callback = cls(Recorder(None, "x"))
    opt = attach(callback)
    assert Probe.attached(opt) is not None
    callback.detach()
    assert Probe.attached(opt) is None and not dict(opt._optimizer_step_pre_hooks)
    callback.detach()  # idempotent
    if adapter != "hf":  # the old verb (the HF callback never had one): still works, warns
        callback = cls(Recorder(None, "y"))
        opt = attach(callback)
        with pytest.warns(DeprecationWarning, match=r"remove\(\) is deprecated.*detach\(\)"):
            callback.remove()
        assert Probe.attached(opt) is None


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_the_adapters_old_names_warn_and_still_work(adapter: str) -> None:
    import stabilitybench
    from stabilitybench import Probe, Recorder

    new, old, attach = ADAPTERS[adapter]
    assert old not in stabilitybench.__all__ and new in stabilitybench.__all__
    old_cls = getattr(stabilitybench, old)
    assert issubclass(old_cls, getattr(stabilitybench, new))
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated .* 0\.2; use {new}"):
        callback = old_cls(Recorder(None, "old"))
    opt = attach(callback)
    assert Probe.attached(opt) is not None
    callback.detach()
    assert Probe.attached(opt) is None


def test_probe_and_intervention_detach_and_probe_remove_warns() -> None:
    from stabilitybench import Intervention, Probe, Recorder

    opt = _optimizer()
    probe = Probe(opt, Recorder(None, "p"))
    with pytest.warns(DeprecationWarning, match=r"Probe\.remove\(\) is deprecated.*Probe\.detach\(\)"):
        probe.remove()
    assert Probe.attached(opt) is None and not dict(opt._optimizer_step_post_hooks)

    class Quiet:
        def update(self, row: dict) -> tuple[None, bool]:
            return None, False

    rec = Recorder(None, "i")
    probe = Probe(opt, rec)
    guard = Intervention(Quiet(), rec).attach(opt, probe)
    assert len(opt._optimizer_step_post_hooks) == 2
    guard.detach()
    probe.detach()
    assert not dict(opt._optimizer_step_post_hooks) and not dict(opt._optimizer_step_pre_hooks)
