"""The intervention experiment: matched-pair table by hand, and one generated run with an action."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stabilitybench.analysis.intervention import (
    ARMS,
    NO_ACTION,
    arm_kind,
    intervention_table,
    matched_pairs,
    with_arms,
)
from stabilitybench.analysis.metastate import KalmanMonitor
from stabilitybench.analysis.monitor_file import MonitorFile

PROFILE = Path(__file__).resolve().parents[1] / "generate" / "profiles" / "intervention.toml"


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
    events = pl.DataFrame({"run_id": ["p0r", "p0r", "p1r", "c2r", "c3r"], "step": [100, 102, 120, 50, 60],
                           "event": ["alarm", "rollback", "alarm", "alarm", "rollback"],
                           "value": [3.0, 40.0, 2.0, 1.0, None]})  # c3r: no checkpoint old enough, no action
    odd = [{**rows[2], "config_json": None}, {**rows[3], "config_json": "not json"}]
    arms = with_arms(pl.DataFrame([*rows[:2], *odd]))
    assert arms.select("arm", "monitor_file", "monitor", "arm_kind").rows() == [
        ("none", None, None, "none"), ("rollback", "m.monitor.npz", "m", "monitor"), ("none", None, None, "none"),
        ("none", None, None, "none")]
    assert matched_pairs(pl.DataFrame(rows)).height == 8
    t = intervention_table(pl.DataFrame(rows), events)
    spike = t.filter(pl.col("perturbation") == "lr_spike").row(0, named=True)
    assert spike["n_pairs"] == 4 and spike["collapse_rate_without"] == 1.0 and spike["collapse_rate_with"] == 0.25
    assert (spike["prevented"], spike["caused"]) == (3, 0) and spike["collapse_diff"] == pytest.approx(-0.75)
    # exact: McNemar p = 2 / 2**3; CI = 3/4 * (2 * Clopper-Pearson(0 of 3) - 1) = [-0.75, +0.311]: 3 discordant
    # pairs cannot exclude 0 (the percentile bootstrap said [-1, -0.5] here)
    assert spike["collapse_p_mcnemar"] == pytest.approx(0.25)
    cp_high = 1 - 0.025 ** (1 / 3)
    assert spike["collapse_diff_ci_low"] == pytest.approx(-0.75)
    assert spike["collapse_diff_ci_high"] == pytest.approx(0.75 * (2 * cp_high - 1))
    # performance: median of the paired differences 10, 11, 12, 13; no 95% CI from 4 pairs; sign test 2 / 2**4
    assert spike["perf_diff"] == pytest.approx(11.5) and spike["perf_diff_ci_low"] is None
    assert spike["perf_p_sign"] == pytest.approx(0.125) and spike["perf_n_better"] == 4
    assert spike["runs_alarmed"] == 2 and spike["runs_acted"] == 1 and spike["n_actions"] == 1
    assert spike["updates_discarded"] == 102 - 40 and spike["median_first_action_step"] == 102
    assert spike["note"] == "n too small (4 < 15 pairs)" and spike["arm"] == "monitor: rollback, lag 0"
    ctrl = t.filter(pl.col("controls")).row(0, named=True)
    assert ctrl["perf_diff"] == pytest.approx(-1.0) and ctrl["runs_alarmed"] == 1 and ctrl["runs_acted"] == 0
    assert ctrl["collapse_diff"] == 0 and ctrl["collapse_diff_ci_low"] is None and ctrl["collapse_p_mcnemar"] == 1.0


def test_table_columns_are_the_declared_ones() -> None:
    """Every column the table writes is declared once (analysis/results.py declares results/intervention with
    TABLE_COLUMNS), with a unit and a description."""
    from stabilitybench.analysis.intervention import TABLE_COLUMNS

    rows = [_run(f"p{s}{a}", s, "lr_spike", a, collapsed=a is None, perf=1.0) for s in range(3) for a in (None, "rb")]
    t = intervention_table(pl.DataFrame(rows))
    names = [c.name for c in TABLE_COLUMNS]
    assert len(set(names)) == len(names) and set(t.columns) <= set(names)
    assert all(c.unit and c.description for c in TABLE_COLUMNS)


def test_the_profile_is_sized_and_paired() -> None:
    """Issue 25: >= 15 pairs per perturbed row on seeds held out from quick, >= 20 acted controls per monitor, the
    five arms, a rollback lag that is no perturbation's duration plus one other lag, every acting arm paired."""
    from stabilitybench.generate.intervention import check_hparams, parse_actions
    from stabilitybench.generate.matrix import load_profile

    specs = load_profile(PROFILE)
    hp = [dict(s.hparams) for s in specs]
    assert len(specs) == 185 and min(s.seed for s in specs) >= 100  # quick uses seeds < 100
    kinds = [arm_kind(h.get("intervention", "none"), h.get("intervention_schedule")) for h in hp]
    assert set(kinds) == set(ARMS) - {"skip_step"}  # skip-step is issue 26's regime arm, not this profile's
    durations = {s.duration_steps for s in specs if s.perturbation != "none"}
    lags = {int(h["intervention_rollback_lag"]) for h in hp if "rollback" in parse_actions(h.get("intervention"))}
    assert lags == {200, 480} and not lags & durations
    for s, h in zip(specs, hp, strict=True):
        check_hparams(h, perturbation=s.perturbation, duration_steps=s.duration_steps)
    no_action = {(s.perturbation, s.magnitude, s.seed) for s, k in zip(specs, kinds, strict=True) if k in NO_ACTION}
    assert all((s.perturbation, s.magnitude, s.seed) in no_action for s in specs)  # every arm has its twin
    count = Counter((s.perturbation, k, h.get("intervention_rollback_lag")) for s, k, h in zip(specs, kinds, hp,
                                                                                              strict=True))
    for pert in ("lr_spike", "reward_flip"):
        for k in ("log_only", "monitor", "oracle", "random_time"):
            assert count[(pert, k, None if k == "log_only" else 200)] >= 15, (pert, k)
    assert count[("none", "monitor", 200)] >= 20 and count[("none", "log_only", None)] >= 20
    assert {h["intervention_window"] for h in hp if h.get("intervention_schedule") == "random"} == {320, 3200}


def test_a_generated_run_acts_on_its_monitor_file(tmp_path: Path) -> None:
    """The runner's ``intervention`` hparam: a monitor file that alarms after warm-up backs off the LR."""
    from stabilitybench.generate.matrix import load_profile
    from stabilitybench.generate.rl.train import run
    from stabilitybench.generate.spec import RunSpec

    feats = ["grad_norm", "grad_coherence", "param_norm"]
    rng = np.random.default_rng(0)
    det = KalmanMonitor(n_latent=1, n_iter=5).fit([rng.normal(size=(40, 3)) for _ in range(2)])
    path = MonitorFile(det, feats, 2, warmup_updates=10, threshold=-1e9).save(tmp_path / "m.monitor.npz")
    spec = next(s for s in load_profile(PROFILE) if dict(s.hparams).get("intervention") == "rollback,lr_backoff"
                and "intervention_schedule" not in dict(s.hparams))
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
