"""Issue 25: the intervention's timing controls.

Generator side: the rollback rule (newest checkpoint at least ``lag`` updates before the alarm), scheduled alarms
(oracle, random time) that act exactly when scheduled, log-only that never changes training, the refusal of a lag
equal to the perturbation's duration. Analysis side, with synthetic truth: a monitor whose alarm times carry no
information does not beat the random-time arm (no foresight claimed), an informative one does; exact intervals keep
their level where the percentile bootstrap over 5 pairs did not.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats as sps

from stabilitybench import Probe, Recorder
from stabilitybench.analysis.data import intervention_arm
from stabilitybench.analysis.intervention import (
    arm_comparisons,
    identity_checks,
    intervention_section,
    intervention_table,
    oracle_check,
    paired_collapse,
)
from stabilitybench.generate.intervention import (
    RANDOM_SALT,
    Intervention,
    ScheduledAlarms,
    check_hparams,
    from_hparams,
    kept_updates,
    parse_delays,
    parse_discards,
    schedule_for,
)


# ---- a training loop without torch: the Intervention's decisions only ----------------------------------------
class FakeOptimizer:
    def __init__(self) -> None:
        self.hooks: list[Any] = []

    def register_step_post_hook(self, hook: Any) -> Any:
        self.hooks.append(hook)
        return self

    def remove(self) -> None:
        self.hooks.clear()


class FakeRecorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def event(self, step: int, kind: str, *, detail: str | None = None, value: float | None = None) -> None:
        self.events.append({"step": step, "event": kind, "detail": detail, "value": value})


class Lineage:
    """A 'model' whose state is the list of updates applied to it: the ground truth a rollback must restore."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied = list(state["applied"])


class FakeProbe:
    lr_scale = 1.0


def fake_run(alarms: list[int], n: int, **kw: Any) -> tuple[Intervention, FakeRecorder, Lineage, np.ndarray]:
    """``n`` updates with scheduled alarms; returns the guard, recorder, model and each update's LR scale."""
    opt, rec, model, probe = FakeOptimizer(), FakeRecorder(), Lineage(), FakeProbe()
    guard = Intervention(ScheduledAlarms(alarms), rec, actions=kw.pop("actions", ("rollback", "lr_backoff")),
                         **kw).attach(opt, [probe], {"model": model})
    scale = np.empty(n)
    for t in range(n):
        scale[t] = probe.lr_scale  # the LR this update runs with
        model.applied.append(t)
        rec.rows.append({"step": t})
        for h in list(opt.hooks):
            h()
    return guard, rec, model, scale


@pytest.mark.parametrize(("lag", "every", "alarm"), [(200, 100, 1250), (200, 100, 1299), (480, 100, 1250),
                                                     (320, 320, 1100), (0, 50, 777)])
def test_rollback_target_is_the_newest_checkpoint_older_than_the_alarm_by_the_lag(lag: int, every: int,
                                                                                   alarm: int) -> None:
    guard, rec, model, _ = fake_run([alarm], 1600, rollback_lag=lag, checkpoint_every=every, lr_duration=300)
    want = (alarm - lag) // every * every  # checkpoints after every, 2 every, ... updates
    restores = [e for e in rec.events if e["event"] == "rollback"]
    assert len(restores) == 1 and restores[0]["value"] == want and guard.restores_ == [(alarm + 2, want)]
    # the model's state is the checkpoint's: the updates before it, then those after the restore
    assert model.applied == [*range(want), *range(alarm + 2, 1600)]
    assert np.array_equal(np.flatnonzero(guard.kept_updates()), model.applied)


def test_kept_updates_follows_several_rollbacks() -> None:
    guard, _, model, _ = fake_run([300, 700, 1500], 2000, rollback_lag=150, checkpoint_every=100, lr_duration=200)
    assert len(guard.restores_) == 3
    mask = kept_updates(2000, guard.checkpoint_log_, guard.restores_)
    assert np.array_equal(np.flatnonzero(mask), model.applied)


def _full_dose_kept(lag: int, every: int, backoff: int, a: int, onset: int = 1000, spike: int = 320) -> int:
    """Updates of the spike at full dose (not backed off) still in the final weights after an alarm at onset + a."""
    _, _, model, scale = fake_run([onset + a], onset + 1500, rollback_lag=lag, checkpoint_every=every,
                                      lr_duration=backoff)
    kept = np.zeros(onset + 1500, bool)
    kept[model.applied] = True
    t = np.arange(onset + 1500)
    return int((kept & (t >= onset) & (t < onset + spike) & (scale == 1.0)).sum())


def test_an_early_alarm_no_longer_discards_every_perturbed_update() -> None:
    """The review's finding, reproduced with the old settings (lag 320 = the spike, checkpoints every 320, back-off
    640): any alarm 16-400 updates after onset leaves none of the spike's full-dose updates in the final weights.
    With a lag that is not the spike's length (200, checkpoints every 100, back-off 500) an alarm from 300 updates
    on keeps the spike's updates up to its checkpoint."""
    offsets = range(16, 401, 16)
    old = [_full_dose_kept(320, 320, 640, a) for a in offsets]
    new = {a: _full_dose_kept(200, 100, 500, a) for a in offsets}
    assert old == [0] * len(old)
    assert all(new[a] == (a - 200) // 100 * 100 for a in offsets if a >= 300) and new[400] == 200
    assert all(new[a] == 0 for a in offsets if a < 300)  # before: rolled back to a pre-onset state


def test_keep_reaches_back_the_lag() -> None:
    """With 3 checkpoints kept (the old default) a 480-update lag at one per 100 found none old enough."""
    _, rec_old, _, _ = fake_run([1300], 1500, rollback_lag=480, checkpoint_every=100, keep=3)
    assert [e["value"] for e in rec_old.events if e["event"] == "rollback"] == [None]
    _, rec, _, _ = fake_run([1300], 1500, rollback_lag=480, checkpoint_every=100)
    assert [e["value"] for e in rec.events if e["event"] == "rollback"] == [800.0]


def test_check_hparams_refuses_a_lag_tuned_to_the_perturbation() -> None:
    hp = {"intervention": "rollback,lr_backoff", "monitor": "m.monitor.npz", "intervention_rollback_lag": 320}
    with pytest.raises(ValueError, match="equals the perturbation's duration_steps"):
        check_hparams(hp, perturbation="lr_spike", duration_steps=320)
    with pytest.raises(ValueError, match="equals the perturbation's duration_steps"):
        from_hparams(hp, FakeRecorder(), onset_step=10, perturbation="lr_spike", duration_steps=320)
    check_hparams(hp, perturbation="lr_spike", duration_steps=3200)
    check_hparams(hp, perturbation="none", duration_steps=320)  # a control has no perturbation to tune to
    check_hparams({**hp, "intervention": "lr_backoff"}, perturbation="lr_spike", duration_steps=320)  # no rollback
    for bad, msg in (({"intervention_schedule": "sometimes"}, "not one of"),
                     ({"intervention_schedule": "oracle"}, "needs intervention_delays"),
                     ({"intervention_schedule": "random"}, "needs intervention_window")):
        with pytest.raises(ValueError, match=msg):
            check_hparams({**hp, "intervention_rollback_lag": 200, **bad})
    assert from_hparams({}, FakeRecorder()) is None and from_hparams({"intervention": "none"}, FakeRecorder()) is None


def test_scheduled_draws() -> None:
    """Oracle: d drawn uniformly from the pinned list ('never' included, then no alarm); random: uniform on the
    window; both a function of the run's seed only."""
    hp = {"intervention": "rollback", "intervention_schedule": "oracle", "intervention_delays": "10, 20, none"}
    assert parse_delays("10, 20, none") == [10, 20, None]
    draws = [list(schedule_for(hp, 100, s).schedule) for s in range(3000)]
    counts = np.array([sum(d == [110] for d in draws), sum(d == [120] for d in draws), sum(d == [] for d in draws)])
    assert counts.sum() == 3000 and sps.chisquare(counts).pvalue > 1e-3
    assert [list(schedule_for(hp, 100, 7).schedule)] * 2 == [list(schedule_for(hp, 100, 7).schedule) for _ in "ab"]
    hr = {"intervention": "rollback", "intervention_schedule": "random", "intervention_window": 320}
    u = np.array([next(iter(schedule_for(hr, 1000, s).schedule)) - 1000 for s in range(3000)])
    assert u.min() >= 0 and u.max() <= 320 and sps.kstest(u / 321, "uniform").pvalue > 1e-3
    assert u[5] == np.random.default_rng([5, RANDOM_SALT]).integers(0, 321)


# ---- a tiny torch model ---------------------------------------------------------------------------------------
def torch_run(guard_hparams: dict | None = None, monitor: Any = None, n: int = 120, seed: int = 0,
              onset: int = 40) -> tuple[Recorder, torch.nn.Module, Intervention | None]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = None
    with Recorder(None, "arm", domain="lm", algo="mlp", env="synthetic", seed=seed) as rec:
        probe = Probe(opt, rec)
        if guard_hparams is not None:
            guard = from_hparams(guard_hparams, rec, onset_step=onset, seed=seed, perturbation="lr_spike",
                                 duration_steps=32)
        elif monitor is not None:
            guard = Intervention(monitor, rec, actions=["log"])
        if guard is not None:
            guard.attach(opt, probe, {"model": model, "optimizer": opt})
        for _ in range(n):
            x = torch.randn(16, 6)
            loss = torch.nn.functional.mse_loss(model(x), x[:, :1] * x[:, 1:2])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.update_last(loss=loss.item(), performance=-loss.item())
        if guard is not None:
            guard.finish()
    return rec, model, guard


ACT = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 20, "intervention_checkpoint_every": 10,
       "intervention_duration": 15, "intervention_factor": 0.5}


def test_oracle_and_random_time_act_exactly_when_scheduled() -> None:
    rec, _, guard = torch_run({**ACT, "intervention_schedule": "oracle", "intervention_delays": "7"})
    ev = [(e["event"], e["step"], e["value"]) for e in rec.events if e["event"] != "checkpoint"]
    # alarm on row 47 (onset 40 + 7), acted on after update 49: restore the newest checkpoint <= 47 - 20
    assert ev[:3] == [("alarm", 47, 7.0), ("rollback", 49, 20.0), ("lr_backoff", 49, 0.5)]
    assert guard is not None and guard.alarms_ == [47]
    lr = np.array([r["lr"] for r in rec.rows])
    assert np.allclose(lr[49:64], 5e-3) and np.allclose(lr[:49], 1e-2) and np.allclose(lr[64:], 1e-2)
    u = int(np.random.default_rng([3, RANDOM_SALT]).integers(0, 51))
    rec, _, _ = torch_run({**ACT, "intervention_schedule": "random", "intervention_window": 50}, seed=3)
    alarms = [(e["step"], e["value"]) for e in rec.events if e["event"] == "alarm"]
    assert alarms == [(40 + u, float(u))]
    assert [e["step"] for e in rec.events if e["event"] == "lr_backoff"] == [40 + u + 2]
    assert "random in [onset, onset + 50]" in next(e["detail"] for e in rec.events if e["event"] == "alarm")


def test_log_only_never_changes_training() -> None:
    """Parameters bitwise equal to the run without an intervention, although every 5th row alarmed."""
    _, plain, _ = torch_run()
    rec, logged, guard = torch_run(monitor=ScheduledAlarms(range(0, 120, 5)))
    assert guard is not None and guard.alarms_ == list(range(0, 120, 5))
    assert [e["event"] for e in rec.events] == ["alarm"] * 24
    for a, b in zip(plain.parameters(), logged.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_log_only_sb3_run_equals_the_run_without(tmp_path) -> None:
    """At the generator's scale: a PPO run with intervention = "log" (a monitor that alarms on every block) records
    exactly the telemetry of the run without hparams."""
    from stabilitybench.analysis.metastate import KalmanMonitor
    from stabilitybench.analysis.monitor_file import MonitorFile
    from stabilitybench.generate.rl.train import run
    from stabilitybench.generate.spec import RunSpec

    rng = np.random.default_rng(0)
    det = KalmanMonitor(n_latent=1, n_iter=5).fit([rng.normal(size=(40, 3)) for _ in range(2)])
    path = MonitorFile(det, ["grad_norm", "grad_coherence", "param_norm"], 2, warmup_updates=10, threshold=-1e9).save(
        tmp_path / "m.monitor.npz")
    base = {"domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "seed": 3, "total_steps": 1024,
            "perturbation": "lr_spike", "magnitude": 50.0, "duration_steps": 8, "onset_frac": 0.3}
    small = {"n_steps": 256, "batch_size": 64, "n_epochs": 2, "hidden": 32, "eval_episodes": 0}
    plain = run(RunSpec.from_dict({**base, "hparams": small}))
    logged = run(RunSpec.from_dict({**base, "hparams": {**small, "intervention": "log", "monitor": str(path)}}))
    a, b = pl.from_arrow(plain.steps), pl.from_arrow(logged.steps)
    cols = ["loss", "grad_norm", "param_norm", "update_norm", "performance"]
    assert a.select(cols).equals(b.select(cols))
    assert pl.from_arrow(logged.events).filter(pl.col("event") == "alarm").height > 0


# ---- analysis: synthetic truth --------------------------------------------------------------------------------
def _run(rid: str, seed: int, hp: dict | None, collapsed: bool, perf: float, pert: str = "lr_spike") -> dict:
    return {"run_id": rid, "algo": "ppo", "env": "E", "stochasticity": "default", "perturbation": pert,
            "magnitude": 128.0 if pert != "none" else 1.0, "duration_steps": 320 if pert != "none" else 1,
            "onset_frac": 0.3, "seed": seed, "onset_step": 1000, "planned_updates": 5000, "collapsed": collapsed,
            "final_performance": perf, "config_json": json.dumps({"spec": {"hparams": hp or {}}})}


MON = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 200, "monitor": "m/kalman.monitor.npz"}
RND = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 200, "intervention_schedule": "random",
       "intervention_window": 600}
ORC = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 200, "intervention_schedule": "oracle",
       "intervention_delays": "x.json"}
LOG = {"intervention": "log", "monitor": "m/kalman.monitor.npz"}


def simulate(n: int, informative: bool, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` seeds x (log-only, monitor, random-time, oracle). Without an action a seed collapses with probability
    0.7, at T ~ U(50, 600) updates after onset; an action at delay A prevents the collapse iff A < T. The
    uninformative monitor alarms at A ~ U(0, 600) whatever the outcome (as the random-time arm); the informative one
    alarms at T - 30 on the seeds that will collapse and never on the others. The oracle draws its delay from the
    monitor's delays on other seeds."""
    rng = np.random.default_rng(seed)
    rows, events = [], []
    will = rng.random(n) < 0.7
    brk = rng.uniform(50, 600, n)
    a_mon = np.where(will, brk - 30, np.nan) if informative else rng.uniform(0, 600, n)
    a_rnd = rng.uniform(0, 600, n)
    a_orc = rng.permutation(a_mon)
    for s in range(n):
        perf0 = 10.0 if will[s] else 40.0
        rows.append(_run(f"log{s}", s, LOG, bool(will[s]), perf0))
        for name, hp, a in (("mon", MON, a_mon[s]), ("rnd", RND, a_rnd[s]), ("orc", ORC, a_orc[s])):
            acted = np.isfinite(a)
            collapsed = bool(will[s] and not (acted and a < brk[s]))
            rows.append(_run(f"{name}{s}", s, hp, collapsed, 10.0 if collapsed else 38.0 + rng.normal()))
            if acted:
                events += [{"run_id": f"{name}{s}", "step": 1000 + int(a), "event": "alarm", "value": 1.0},
                           {"run_id": f"{name}{s}", "step": 1002 + int(a), "event": "rollback",
                            "value": float((1000 + int(a) - 200) // 100 * 100)},
                           {"run_id": f"{name}{s}", "step": 1002 + int(a), "event": "lr_backoff", "value": 0.1}]
        if np.isfinite(a_mon[s]):
            events.append({"run_id": f"log{s}", "step": 1000 + int(a_mon[s]), "event": "alarm", "value": 1.0})
    return pl.DataFrame(rows), pl.DataFrame(events)


def test_an_uninformative_monitor_does_not_beat_random_time() -> None:
    runs, events = simulate(300, informative=False)
    vs = {c["versus"]: c for c in arm_comparisons(runs)}
    rnd = vs["random_time"]
    assert rnd["n_pairs"] == 300 and rnd["p_mcnemar"] > 0.05 and rnd["foresight"] is False
    assert "foresight is not shown" in rnd["verdict"]
    t = intervention_table(runs, events)
    mon = t.filter(pl.col("arm_kind") == "monitor").row(0, named=True)
    assert mon["collapse_p_mcnemar"] < 1e-6 and mon["collapse_diff_ci_high"] < 0  # acting helps...
    _, entry = intervention_section(runs.with_columns(intervention_arm(runs).alias("arm")), events)
    assert entry["foresight_shown"] is False  # ...but not the monitor's timing
    assert all("not shown" in v for v in entry["foresight"])


def test_an_informative_monitor_is_detected() -> None:
    runs, events = simulate(40, informative=True, seed=1)
    vs = {c["versus"]: c for c in arm_comparisons(runs)}
    rnd = vs["random_time"]
    assert rnd["n_collapsed_monitor"] == 0 < rnd["n_collapsed_other"]
    assert rnd["p_mcnemar"] < 0.05 and rnd["foresight"] is True and "foresight helps" in rnd["verdict"]
    assert vs["oracle"]["p_mcnemar"] < 0.05  # the same delays on the wrong seeds do not help as much
    _, entry = intervention_section(runs.with_columns(intervention_arm(runs).alias("arm")), events)
    assert entry["foresight_shown"] is True
    row = {r["arm_kind"]: r for r in entry["rows"]}
    assert row["monitor"]["first_action_from_onset_median"] is not None and row["monitor"]["runs_acted"] < 40
    assert row["random_time"]["runs_acted"] == 40 and row["random_time"]["updates_discarded"] > 0


def test_oracle_check_and_identity_checks() -> None:
    runs, events = simulate(40, informative=False, seed=2)
    oc = oracle_check(runs, events)[0]  # the oracle's delays are the monitor's, permuted: consistent
    assert oc["consistent"] and oc["oracle_acted"] == oc["monitor_acted"] == 40
    late = events.with_columns(pl.when(pl.col("run_id").str.starts_with("orc")).then(pl.col("step") + 2000)
                               .otherwise(pl.col("step")).alias("step"))
    assert not oracle_check(runs, late)[0]["consistent"]
    ic = identity_checks(runs, events)
    assert ic["first_alarm"] == {"n": 40, "n_equal": 40}
    natural = runs.filter(pl.col("run_id").str.starts_with("log")).with_columns(
        pl.col("run_id").str.replace("log", "nat"), pl.lit("{}").alias("config_json"))
    both = pl.concat([runs, natural])
    assert identity_checks(both, events)["log_only_vs_none"] == {"n": 40, "n_equal": 40}
    t = intervention_table(both, events)
    assert set(t.filter(pl.col("arm_kind") == "monitor")["without_arm"]) == {"none"}  # natural twin preferred
    assert t.filter(pl.col("arm_kind") == "log_only")["collapse_diff"].to_list() == [0.0]


def test_exact_interval_keeps_its_level_with_five_pairs() -> None:
    """Under the null (the action changes nothing: with and without independent draws at 0.6), the exact
    conditional CI of the paired collapse difference excludes 0 in at most 5% of 5-pair experiments; the percentile
    bootstrap it replaces did in about 13%."""
    rng = np.random.default_rng(0)
    excl = 0
    for _ in range(2000):
        res = paired_collapse(rng.random(5) < 0.6, rng.random(5) < 0.6)
        excl += res["ci_low"] is not None and (res["ci_low"] > 0 or res["ci_high"] < 0)
    assert excl / 2000 <= 0.05


def test_oracle_delays_from_a_pilot_corpus(tmp_path) -> None:
    """Stage 2 of the profile: the monitor's first-alarm delay from onset on each natural run of one cell, written as
    the oracle's ``intervention_delays`` file (runs of other cells, and runs with intervention hparams, left out)."""
    from stabilitybench import perturbation
    from stabilitybench.analysis.intervention import main
    from stabilitybench.analysis.metastate import KalmanMonitor
    from stabilitybench.analysis.monitor_file import MonitorFile

    corpus = tmp_path / "corpus"
    for seed, mag in ((0, 30.0), (1, 30.0), (2, 5.0)):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        with Recorder(corpus, f"r{seed}", domain="lm", algo="mlp", env="synthetic", seed=seed) as rec:
            Probe(opt, rec, perturbation=perturbation("lr_spike", mag, onset_step=20, duration_steps=5))
            for _ in range(40):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.update_last(loss=loss.item(), performance=-loss.item())
    rng = np.random.default_rng(0)
    det = KalmanMonitor(n_latent=1, n_iter=5).fit([rng.normal(size=(30, 2)) for _ in range(2)])
    always = MonitorFile(det, ["loss", "grad_norm"], 4, warmup_updates=24, threshold=-1e9).save(tmp_path / "a.npz")
    never = MonitorFile(det, ["loss", "grad_norm"], 4, threshold=float("inf")).save(tmp_path / "n.npz")
    out = tmp_path / "d" / "kalman.lr_spike.delays.json"
    assert main(["oracle-delays", "--corpus", str(corpus), "--monitor", str(always), "--perturbation", "lr_spike",
                 "--magnitude", "30", "--duration", "5", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    # blocks of 4 updates end at steps 3, 7, ..., the first at or after the warm-up (24) is 27: delay 27 - 20
    assert data["delays"] == [7, 7] and data["seeds"] == [0, 1]
    assert parse_delays(str(out)) == [7, 7]
    assert main(["oracle-delays", "--corpus", str(corpus), "--monitor", str(never), "--perturbation", "lr_spike",
                 "-o", str(out)]) == 0
    assert parse_delays(str(out)) == [None, None, None]
    assert main(["oracle-delays", "--corpus", str(corpus), "--monitor", str(never), "--perturbation", "reward_flip",
                 "-o", str(out)]) == 2


def test_the_discard_matched_random_arm_keeps_the_count_matched_times_and_rolls_back_as_far_as_drawn() -> None:
    """Same alarm times and count as the count-matched arm on a seed (the discards are drawn after them from the same
    stream); each alarm's rollback lag is a drawn discard less half the checkpoint interval, so each rollback throws
    away between the lag and the lag + one checkpoint interval, and on average the drawn discard."""
    base = {**ACT, "intervention_schedule": "random", "intervention_window": 120, "intervention_counts": "3"}
    matched = {**base, "intervention_discards": "30, 60"}
    for seed in range(20):
        a, b = schedule_for(base, 40, seed), schedule_for(matched, 40, seed)
        assert list(a.schedule) == list(b.schedule) and a.lags is None
        assert b.lags is not None and set(b.lags.values()) <= {25, 55}  # 30 - 10 // 2, 60 - 5
        assert all(b.lag_at(s) == b.lags[s] for s in b.schedule) and b.lag_at(-1) is None
    _, _, guard = torch_run(matched, n=220, seed=4)
    assert guard is not None and len(guard.restores_) == 3
    lags = schedule_for(matched, 40, 4).lags
    assert lags is not None
    for (alarm, lag), (now, restored) in zip(sorted(lags.items()), guard.restores_, strict=True):
        assert now == alarm + 2 and alarm - lag - ACT["intervention_checkpoint_every"] < restored <= alarm - lag
    with pytest.raises(ValueError, match="intervention_discards"):
        check_hparams({**matched, "intervention_counts": None})
    with pytest.raises(ValueError, match="each >= 0"):
        parse_discards("10, -1")
    _, _, guard0 = torch_run(base, n=220, seed=4)  # the count-matched arm: the Intervention's own lag (20)
    assert guard0 is not None and [n for n, _ in guard0.restores_] == [n for n, _ in guard.restores_]
