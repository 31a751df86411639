"""Actions on alarm through the probe API, and a monitor file applied in a fresh process to a public-API run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from stabilitybench import Probe, Recorder, SB3Callback, load_monitor, perturbation
from stabilitybench.analysis.conformal import ConformalCalibrator
from stabilitybench.analysis.metastate import KalmanMonitor
from stabilitybench.analysis.monitor_file import MonitorFile
from stabilitybench.generate.intervention import Intervention

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["loss", "grad_norm", "grad_coherence"]
B = 4


class ScriptedMonitor:
    """Alarms at the listed steps; one 'block' per update."""

    def __init__(self, alarm_at: set[int]) -> None:
        self.alarm_at = alarm_at
        self.rows: list[int] = []

    def update(self, row: dict) -> tuple[float, bool]:
        self.rows.append(int(row["step"]))
        return 1.0, int(row["step"]) in self.alarm_at


def torch_run(corpus: Path | None, name: str, seed: int, n: int = 160, spike: bool = False,
              guard_kwargs: dict | None = None, monitor=None) -> tuple[Recorder, Intervention | None, torch.nn.Module]:
    """The README's plain torch loop, optionally with an intervention (``guard_kwargs``)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pert = perturbation("lr_spike", 30.0, onset_step=80, duration_steps=10) if spike else None
    guard = None
    with Recorder(corpus, name, domain="lm", algo="mlp", env="synthetic", seed=seed) as rec:
        probe = Probe(opt, rec, perturbation=pert)
        if guard_kwargs is not None:
            guard = Intervention(monitor, rec, **guard_kwargs).attach(opt, probe, {"model": model, "optimizer": opt})
        for _ in range(n):
            x = torch.randn(32, 8)
            loss = torch.nn.functional.mse_loss(model(x), x[:, :1] - x[:, 1:2])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.update_last(loss=loss.item(), performance=-loss.item())
            if guard is not None and guard.stopped:
                break
        if guard is not None:
            guard.finish()
    return rec, guard, model


def test_lr_backoff_scales_the_lr_for_its_duration() -> None:
    mon = ScriptedMonitor({30})
    rec, guard, _ = torch_run(None, "backoff", 0, n=80, monitor=mon,
                              guard_kwargs={"actions": ["log", "lr_backoff"], "lr_factor": 0.1, "lr_duration": 20})
    lr = np.array([r["lr"] for r in rec.rows])
    # row 30 is fed to the monitor after update 31; the back-off applies from update 32 for 20 updates
    assert np.allclose(lr[:32], 1e-2) and np.allclose(lr[32:52], 1e-3) and np.allclose(lr[52:], 1e-2)
    kinds = [e["event"] for e in rec.events]
    assert kinds == ["alarm", "lr_backoff", "lr_backoff_end"]
    assert guard is not None and guard.alarms_ == [30] and mon.rows == list(range(80))


def test_rollback_restores_parameters_and_optimizer_state() -> None:
    mon = ScriptedMonitor({50})
    rec, guard, _ = torch_run(None, "rollback", 1, n=60, monitor=mon,
                                  guard_kwargs={"actions": ["rollback"], "checkpoint_every": 10, "keep": 3,
                                                "rollback_lag": 15})
    assert guard is not None
    ev = [e for e in rec.events if e["event"] == "rollback"]
    assert len(ev) == 1 and ev[0]["value"] == 30.0  # newest checkpoint <= 50 - 15 among the kept (30, 40, 50)
    assert [s for s, _ in guard.checkpoints_][:1] == [30]  # the newer ones (40, 50) are dropped
    assert mon.rows == list(range(60))
    kinds = {e["event"] for e in rec.events}
    assert {"checkpoint", "alarm", "rollback"} <= kinds


def test_rollback_state_is_the_checkpoint() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    rec = Recorder(None, "direct")
    probe = Probe(opt, rec)
    Intervention(ScriptedMonitor({7}), rec, actions=["rollback"], checkpoint_every=3, keep=5
                         ).attach(opt, probe, {"model": model, "optimizer": opt})
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for t in range(9):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        saved[t + 1] = (model.weight.detach().clone(), opt.state[model.weight]["exp_avg"].clone())
        if any(e["event"] == "rollback" for e in rec.events):
            break
    # row 7 is fed after update 8; checkpoints after 3 and 6 updates; rollback restores the 6-update state
    assert [e["value"] for e in rec.events if e["event"] == "rollback"] == [6.0]
    w, m = saved[6]
    assert torch.equal(model.weight.detach(), w) and torch.equal(opt.state[model.weight]["exp_avg"], m)


def test_stop_ends_a_torch_loop() -> None:
    rec, guard, _ = torch_run(None, "stop", 2, n=100, monitor=ScriptedMonitor({20}), guard_kwargs={"actions": ["stop"]})
    assert guard is not None and guard.stopped and len(rec.rows) == 22
    assert [e["event"] for e in rec.events] == ["alarm", "stop"]


def test_sb3_callback_acts_and_stops() -> None:
    from stable_baselines3 import PPO

    mon = ScriptedMonitor({9})
    with Recorder(None, "ppo-guard", algo="ppo", env="InvertedPendulum-v5", seed=0) as rec:
        model = PPO("MlpPolicy", "InvertedPendulum-v5", seed=0, n_steps=64, batch_size=32, n_epochs=2, device="cpu")
        guard = Intervention(mon, rec, actions=["log", "rollback", "lr_backoff", "stop"], checkpoint_every=4,
                             lr_factor=0.5, lr_duration=4)
        model.learn(2_048, callback=SB3Callback(rec, intervention=guard))
    kinds = [e["event"] for e in rec.events]
    assert {"checkpoint", "alarm", "rollback", "lr_backoff", "stop"} <= set(kinds)
    assert model.num_timesteps < 2_048  # stopped early
    assert len(rec.rows) < 2_048 // 64 * 4


def test_sac_rollback_restores_the_entropy_temperature() -> None:
    """SAC: the rollback waits for a safe point (its train() step spans several optimizer steps) and restores
    the bare log_ent_coef tensor with the networks."""
    from stable_baselines3 import SAC

    mon = ScriptedMonitor({40})
    seen: list[tuple[float, float]] = []
    with Recorder(None, "sac-guard", algo="sac", env="Pendulum-v1", seed=0) as rec:
        model = SAC("MlpPolicy", "Pendulum-v1", seed=0, learning_starts=16, batch_size=16, buffer_size=500,
                    policy_kwargs={"net_arch": [16]}, device="cpu")
        guard = Intervention(mon, rec, actions=["log", "rollback"], checkpoint_every=8, rollback_lag=8,
                             lr_duration=1000)
        restore = guard.at_safe_point

        def watched() -> None:
            pending = guard._pending
            restore()
            if pending is not None:
                seen.append((float(pending[1]["log_ent_coef"]["value"]), float(model.log_ent_coef.detach())))

        guard.at_safe_point = watched
        model.learn(80, callback=SB3Callback(rec, intervention=guard))
    assert guard.defer_restore and "log_ent_coef" in guard.state
    assert [e["event"] for e in rec.events].count("rollback") == 1 and len(seen) == 1
    want, got = seen[0]
    assert got == want != 0.0  # the temperature is the checkpoint's (it is trained every update, so it had moved)


# ---- a monitor file from public-API runs, applied online and in a fresh process ---------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    corpus = tmp_path_factory.mktemp("corpus")
    mf_path = tmp_path_factory.mktemp("monitors") / "kalman.monitor.npz"
    blocks = []
    for seed in range(7):
        rec, _, _ = torch_run(None, "control", seed)  # fitted from the recorder's table, as analyze would
        frame = pl.from_arrow(rec.steps_table())
        blocks.append(MonitorFile(KalmanMonitor(n_latent=1), FEATURES, B).block_features(frame)[1])
    det = KalmanMonitor(n_latent=2, n_iter=20, smooth=3).fit(blocks[:4])
    conf = ConformalCalibrator(0.05).fit([float(np.nanmax(det.score(X)[10:])) for X in blocks[4:]])
    MonitorFile(det, FEATURES, B, warmup_updates=40, threshold=conf.threshold_, target_fpr=0.05,
                alpha_used=conf.alpha_used_, n_calibration=conf.n_).save(mf_path)
    return corpus, mf_path


def test_monitor_file_scores_a_public_api_run_in_a_fresh_process(fitted: tuple[Path, Path]) -> None:
    corpus, mf_path = fitted
    online = load_monitor(mf_path).online()
    rec, guard, _ = torch_run(corpus, "spiked", 11, spike=True, monitor=online, guard_kwargs={"actions": ["log"]})
    assert guard is not None
    code = (
        "import json, sys, polars as pl\n"
        "from data_schema import scan_steps\n"
        "from stabilitybench import load_monitor\n"
        "corpus, path, run_id = sys.argv[1:]\n"
        "steps = scan_steps(corpus, run_id=run_id).collect()\n"
        "trace = load_monitor(path, columns=steps.columns).score_run(steps)\n"
        "print(json.dumps({'step': trace['step'].to_list(), 'msd': [str(v) for v in trace['msd'].to_list()],"
        " 'alarm': trace['alarm'].to_list()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(corpus), str(mf_path), rec.run_id], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr
    offline = json.loads(out.stdout)
    steps, msd, alarm = (list(v) for v in zip(*online.history_, strict=True))
    assert offline["step"] == steps
    np.testing.assert_allclose(np.array(offline["msd"], dtype=float), msd, rtol=1e-8, equal_nan=True)
    assert offline["alarm"] == alarm
    assert not any(a for s, a in zip(steps, alarm, strict=True) if s < 40)  # warm-up
    assert any(a for s, a in zip(steps, alarm, strict=True) if 80 <= s < 100)  # the x30 LR spike at 80 alarms
    assert [e["step"] for e in rec.events if e["event"] == "alarm"] == [s for s, a in zip(steps, alarm, strict=True)
                                                                       if a]


def test_fresh_process_refuses_a_run_without_the_columns(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    _, mf_path = fitted
    code = ("import sys\nfrom stabilitybench.data_schema.errors import exit_on_user_error\n"
            "from stabilitybench import load_monitor\n"
            "exit_on_user_error(lambda: load_monitor(sys.argv[1], columns=['step', 'loss']))\n")
    out = subprocess.run([sys.executable, "-c", code, str(mf_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "grad_norm" in out.stderr


def test_every_action_event_is_a_declared_event_kind() -> None:
    from stabilitybench.data_schema.schema import EVENT_KINDS
    from stabilitybench.generate.intervention import EVENTS

    assert set(EVENTS) <= set(EVENT_KINDS)
