"""The intervention experiment: matched-pair table by hand, and one generated run with an action."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stabilitybench.analysis.intervention import intervention_table, matched_pairs, with_arms
from stabilitybench.analysis.metastate import KalmanMonitor
from stabilitybench.analysis.monitor_file import MonitorFile


def _run(rid: str, seed: int, pert: str, arm: str | None, collapsed: bool, perf: float) -> dict:
    hp = {"n_steps": 64} | ({"intervention": arm, "monitor": "m.monitor.npz"} if arm else {})
    return {"run_id": rid, "algo": "ppo", "env": "E", "stochasticity": "default", "perturbation": pert,
            "magnitude": 1.0 if pert == "none" else 10.0, "duration_steps": 1 if pert == "none" else 320,
            "onset_frac": 0.3, "seed": seed, "collapsed": collapsed, "final_performance": perf,
            "config_json": json.dumps({"spec": {"hparams": hp}})}


def test_intervention_table_by_hand() -> None:
    rows = []
    for s in range(4):
        rows.append(_run(f"p{s}", s, "lr_spike", None, True, 0.0))
        rows.append(_run(f"p{s}r", s, "lr_spike", "rollback", s == 0, 10.0 + s))
        rows.append(_run(f"c{s}", s, "none", None, False, 20.0))
        rows.append(_run(f"c{s}r", s, "none", "rollback", False, 19.0))
    rows.append(_run("p9r", 9, "lr_spike", "rollback", False, 5.0))  # no partner: not a pair
    events = pl.DataFrame({"run_id": ["p0r", "p0r", "p1r", "c2r"], "step": [100, 101, 120, 50],
                           "event": ["alarm", "rollback", "alarm", "alarm"]})
    odd = [{**rows[2], "config_json": None}, {**rows[3], "config_json": "not json"}]
    arms = with_arms(pl.DataFrame([*rows[:2], *odd]))
    assert arms.select("arm", "monitor_file", "monitor").rows() == [
        ("none", None, None), ("rollback", "m.monitor.npz", "m"), ("none", None, None), ("none", None, None)]
    assert matched_pairs(pl.DataFrame(rows)).height == 8
    t = intervention_table(pl.DataFrame(rows), events, n_boot=200)
    spike = t.filter(pl.col("perturbation") == "lr_spike").row(0, named=True)
    assert spike["n_pairs"] == 4 and spike["collapse_rate_without"] == 1.0 and spike["collapse_rate_with"] == 0.25
    assert spike["collapse_diff"] == pytest.approx(-0.75)
    assert spike["collapse_diff_ci_low"] <= -0.75 <= spike["collapse_diff_ci_high"] <= 0
    assert spike["perf_diff"] == pytest.approx(11.5) and spike["runs_alarmed"] == 2 and spike["runs_acted"] == 1
    assert spike["median_first_action_step"] == 101
    ctrl = t.filter(pl.col("controls")).row(0, named=True)
    assert ctrl["perf_diff"] == pytest.approx(-1.0) and ctrl["runs_alarmed"] == 1 and ctrl["runs_acted"] == 0


def test_a_generated_run_acts_on_its_monitor_file(tmp_path: Path) -> None:
    """The runner's ``intervention`` hparam: a monitor file that alarms after warm-up backs off the LR."""
    from stabilitybench.generate.matrix import load_profile
    from stabilitybench.generate.rl.train import run
    from stabilitybench.generate.spec import RunSpec

    feats = ["grad_norm", "grad_coherence", "param_norm"]
    rng = np.random.default_rng(0)
    det = KalmanMonitor(n_latent=1, n_iter=5).fit([rng.normal(size=(40, 3)) for _ in range(2)])
    path = MonitorFile(det, feats, 2, warmup_updates=10, threshold=-1e9).save(tmp_path / "m.monitor.npz")
    profile = Path(__file__).resolve().parents[1] / "generate" / "profiles" / "intervention.toml"
    specs = load_profile(profile)  # the experiment's profile parses and pairs its arms
    arms = {(dict(s.hparams).get("intervention", "none"), dict(s.hparams).get("monitor")) for s in specs}
    assert {a for a, _ in arms} == {"none", "rollback,lr_backoff"} and len(specs) == 56
    assert {m for _, m in arms} == {None, *(f"monitors/ppo_swimmer/{m}.monitor.npz" for m in ("kalman", "gru",
                                                                                             "loss_spike"))}
    twins = {(s.perturbation, s.magnitude, s.seed) for s in specs if not dict(s.hparams).get("intervention")}
    assert all((s.perturbation, s.magnitude, s.seed) in twins for s in specs)  # every action arm has its pair
    spec = next(s for s in specs if dict(s.hparams).get("intervention"))
    hp = {**dict(spec.hparams), "intervention": "lr_backoff", "monitor": str(path), "n_steps": 256,
          "batch_size": 64, "n_epochs": 2,
          "hidden": 32, "eval_episodes": 0, "intervention_duration": 4}
    spec = RunSpec.from_dict({**spec.to_dict(), "hparams": hp, "total_steps": 1024, "perturbation": "none",
                              "magnitude": 1.0, "duration_steps": 1})
    result = run(spec)
    events = pl.from_arrow(result.events)
    assert {"alarm", "lr_backoff", "lr_backoff_end"} <= set(events["event"].to_list())
    lr = pl.from_arrow(result.steps)["lr"].to_numpy()
    first = int(events.filter(pl.col("event") == "lr_backoff")["step"].min())
    factor = dict(spec.hparams)["intervention_factor"]
    assert np.allclose(lr[first:first + 4], lr[0] * factor) and np.allclose(lr[:11], lr[0])


def test_intervention_figure_draws_the_table() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from stabilitybench.reports.figures.intervention import fig_intervention

    rows = [_run(f"p{s}{a}", s, k, a, collapsed=(a is None and k != "none"), perf=1.0)
            for s in range(3) for k in ("none", "lr_spike") for a in (None, "rollback", "lr_backoff")]
    table = intervention_table(pl.DataFrame(rows), n_boot=50)
    ax = fig_intervention(table)
    heights = [round(p.get_height(), 3) for p in ax.patches]
    assert len(heights) == 2 * 3 and heights.count(1.0) == 1  # lr_spike without an action: all collapsed
    assert [t.get_text() for t in ax.get_xticklabels()] == ["control", "lr_spike"]


def test_reference_scores_with_no_run_standing_at_its_landmark() -> None:
    """A tiny intervention corpus whose every perturbed run collapsed before its landmark used to crash analyze."""
    from stabilitybench.analysis.questions import reference_scores

    empty = pl.DataFrame(schema={"run_id": pl.String, "label": pl.Boolean, "seed": pl.Int64,
                                 "perturbation": pl.String, "magnitude": pl.Float64, "duration_steps": pl.Int64})
    out = reference_scores(empty, {})
    assert {k: v.size for k, v in out.items()} == {"config_only": 0, "kick_size": 0, "perturbation_on": 0}
