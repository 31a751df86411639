"""Issue 26: the intervention in the spontaneous regime (``lr_regime``: LR x m from update 0, onset 0, duration =
the planned updates): the skip-step arm, the count-matched random arm, wall time and the arm-against-arm tests.

Analysis side only, on synthetic truth: every number below is known by construction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from scipy import stats as sps

from stabilitybench.analysis.data import intervention_arm
from stabilitybench.analysis.intervention import (
    ARMS,
    COMPARISONS,
    arm_comparisons,
    arm_kind,
    intervention_section,
    intervention_table,
    main,
    monitor_action_counts,
    paired_ratio,
    run_table,
    with_arms,
)
from stabilitybench.generate.intervention import parse_counts, parse_discards

PLANNED = 8000
NONE: dict[str, Any] = {}
MON = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 200, "monitor": "m/kalman.monitor.npz"}
SKIP = {"intervention": "skip_step"}
RND = {"intervention": "rollback,lr_backoff", "intervention_rollback_lag": 200, "intervention_schedule": "random",
       "intervention_window": PLANNED, "intervention_counts": "counts.json"}


def regime_run(rid: str, seed: int, hp: dict, collapsed: bool = False, perf: float = 1.0,
               wall: float | None = None) -> dict[str, Any]:
    """A manifest + outcome row of a regime run: onset 0, duration = the planned updates."""
    return {"run_id": rid, "algo": "ppo", "env": "Swimmer-v5", "stochasticity": "default",
            "perturbation": "lr_regime", "magnitude": 10.0, "duration_steps": PLANNED, "onset_frac": 0.0,
            "seed": seed, "onset_step": 0, "planned_updates": PLANNED, "collapsed": collapsed,
            "final_performance": perf, "run_wall_time_s": wall,
            "config_json": json.dumps({"spec": {"hparams": hp}})}


def ev(rid: str, step: int, kind: str, value: float | None = None) -> dict[str, Any]:
    return {"run_id": rid, "step": step, "event": kind, "value": value}


def test_the_skip_step_arm_is_recognised_and_labelled() -> None:
    assert ARMS.index("skip_step") == ARMS.index("monitor") + 1
    assert arm_kind("skip_step", None) == "skip_step" and arm_kind("rollback,lr_backoff", "random") == "random_time"
    runs = pl.DataFrame([regime_run("s", 0, SKIP), regime_run("s2", 0, {**SKIP, "skip_step_window": 64,
                                                                        "skip_step_sigma": 4.5}),
                         regime_run("r", 0, RND), regime_run("r1", 0, {k: v for k, v in RND.items()
                                                                       if k != "intervention_counts"}),
                         regime_run("m", 0, MON), regime_run("n", 0, NONE)])
    arms = with_arms(runs)
    assert arms["arm_kind"].to_list() == ["skip_step", "skip_step", "random_time", "random_time", "monitor", "none"]
    assert arms["arm_label"].to_list() == [
        "skip_step: window 128, 6 SD", "skip_step: window 64, 4.5 SD",
        "random_time: rollback,lr_backoff, lag 200, count-matched", "random_time: rollback,lr_backoff, lag 200",
        "monitor: rollback,lr_backoff, lag 200", "none"]
    assert arms["monitor"].to_list() == [None, None, None, None, "kalman", None]


def test_skipped_updates_are_counted_per_run_and_in_the_row() -> None:
    """Seed s of the skip-step arm skips s % 4 updates (at 100, 110, ...): each skip is an alarm, an action and an
    update skipped (compute wasted, not discarded); the first action is measured from update 0 (onset 0)."""
    runs, events = [], []
    for s in range(20):
        runs += [regime_run(f"n{s}", s, NONE), regime_run(f"k{s}", s, SKIP)]
        events += [ev(f"k{s}", 100 + 10 * i, "skip_step", 6.5 + i) for i in range(s % 4)]
    runs, events = pl.DataFrame(runs), pl.DataFrame(events)
    per_run = run_table(runs, events).filter(pl.col("arm_kind") == "skip_step").sort("seed")
    want = [s % 4 for s in range(20)]
    for c in ("updates_skipped", "n_alarms", "n_acted_alarms", "n_actions", "compute_wasted"):
        assert per_run[c].to_list() == want, c
    assert per_run["updates_discarded"].to_list() == [0] * 20 and per_run["updates_unrun"].to_list() == [0] * 20
    assert per_run["first_action_from_onset"].to_list() == [None if w == 0 else 100 for w in want]
    row = intervention_table(runs, events).row(0, named=True)
    assert row["arm_kind"] == "skip_step" and row["arm"] == "skip_step: window 128, 6 SD" and row["n_pairs"] == 20
    assert row["without_arm"] == "none" and row["duration_steps"] == PLANNED
    assert row["updates_skipped"] == row["n_actions"] == row["n_acted_alarms"] == row["compute_wasted"] == sum(want)
    assert row["updates_discarded"] == 0 and row["runs_acted"] == row["runs_alarmed"] == 15
    assert row["compute_wasted_frac"] == pytest.approx(sum(want) / (20 * PLANNED))
    assert row["first_action_from_onset_median"] == 100.0


def test_several_alarms_of_a_run_are_counted_once_each() -> None:
    """The count-matched random arm's three alarms, each acted on (restore + back-off two updates later); a monitor
    run whose second alarm fell in the cooldown (no action), whose first rollback found no checkpoint (the back-off
    still acted) and whose last restore was deferred past its back-off (one acted alarm, two action updates)."""
    runs = pl.DataFrame([regime_run("n0", 0, NONE), regime_run("r0", 0, RND), regime_run("m0", 0, MON)])
    events = pl.DataFrame([
        *[e for a in (500, 1500, 2500) for e in (ev("r0", a, "alarm", float(a)), ev("r0", a + 2, "rollback", a - 300.0),
                                                 ev("r0", a + 2, "lr_backoff", 0.5))],
        ev("m0", 300, "alarm", 9.0), ev("m0", 302, "rollback"), ev("m0", 302, "lr_backoff", 0.5),
        ev("m0", 350, "alarm", 9.0),
        ev("m0", 900, "alarm", 9.0), ev("m0", 902, "rollback", 600.0), ev("m0", 902, "lr_backoff", 0.5),
        ev("m0", 1200, "alarm", 9.0), ev("m0", 1202, "lr_backoff", 0.5), ev("m0", 1205, "rollback", 900.0)])
    per = {r["run_id"]: r for r in run_table(runs, events).iter_rows(named=True)}
    r0, m0 = per["r0"], per["m0"]
    assert (r0["n_alarms"], r0["n_acted_alarms"], r0["n_actions"], r0["n_restores"]) == (3, 3, 3, 3)
    assert r0["updates_discarded"] == 3 * 302 and r0["first_action_from_onset"] == 502
    assert (m0["n_alarms"], m0["n_acted_alarms"], m0["n_actions"], m0["n_restores"]) == (4, 3, 4, 2)
    assert m0["updates_discarded"] == (902 - 600) + (1205 - 900) and m0["first_action_from_onset"] == 302
    t = {r["arm_kind"]: r for r in intervention_table(runs, events).iter_rows(named=True)}
    assert (t["random_time"]["n_alarms"], t["random_time"]["n_acted_alarms"]) == (3, 3)
    assert (t["monitor"]["n_alarms"], t["monitor"]["n_acted_alarms"], t["monitor"]["n_actions"]) == (4, 3, 4)


def test_wall_time_ratio_on_known_numbers() -> None:
    """Seven pairs with known times: the median *paired* ratio (1.3, not the ratio of the medians) and its sign-test
    CI from 7 pairs (the extremes: coverage 1 - 2/2^7); a pair without a time is left out of the ratio."""
    ratios = [1.3, 1.0, 2.0, 1.1, 1.5, 1.2, 1.4]
    without = [100.0 * (k + 1) for k in range(7)]
    runs = [r for k in range(7) for r in (regime_run(f"n{k}", k, NONE, wall=without[k]),
                                          regime_run(f"k{k}", k, SKIP, wall=without[k] * ratios[k]))]
    runs += [regime_run("n7", 7, NONE, wall=None), regime_run("k7", 7, SKIP, wall=5000.0)]
    row = intervention_table(pl.DataFrame(runs)).row(0, named=True)
    assert row["n_pairs"] == 8 and row["wall_time_ratio"] == pytest.approx(1.3)
    assert (row["wall_time_ratio_ci_low"], row["wall_time_ratio_ci_high"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert row["wall_time_s_without"] == pytest.approx(400.0)
    assert row["wall_time_s_with"] == pytest.approx(float(np.median([w * r for w, r in zip(without, ratios,
                                                                                           strict=True)] + [5000])))
    small = paired_ratio(np.array([2.0, 3.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    assert small == {"n": 2, "median": 2.5, "ci_low": None, "ci_high": None}  # the zero dropped; no CI below 6
    no_times = intervention_table(pl.DataFrame(runs).drop("run_wall_time_s")).row(0, named=True)
    assert no_times["wall_time_ratio"] is None and no_times["wall_time_s_with"] is None


def four_arms(only_skip: int, only_random: int, n: int = 20) -> pl.DataFrame:
    """``n`` seeds x (none, monitor, skip-step, count-matched random). The monitor arm never collapses; the
    skip-step arm collapses on seeds 0..only_skip-1, the random arm on the next ``only_random`` seeds; the monitor
    ends at 50, every other run at 40."""
    rows = []
    for s in range(n):
        rows += [regime_run(f"n{s}", s, NONE, True, 10.0), regime_run(f"m{s}", s, MON, False, 50.0),
                 regime_run(f"k{s}", s, SKIP, s < only_skip, 40.0),
                 regime_run(f"r{s}", s, RND, only_skip <= s < only_skip + only_random, 40.0)]
    return pl.DataFrame(rows)


@pytest.mark.parametrize(("only_random", "p_random", "foresight"), [(5, 0.0625, False), (6, 0.03125, True)])
def test_comparisons_give_the_exact_binomial_p(only_random: int, p_random: float, foresight: bool) -> None:
    """Monitor vs skip-step: 0 against 6 discordant pairs, exact McNemar p = 2 / 2^6 = 0.03125; monitor vs random:
    0 against 5 (p = 0.0625: foresight not shown) or 6 (shown); skip-step vs random: 6 against 5 (p = 1)."""
    runs = four_arms(6, only_random)
    comps = {(c["arm_kind"], c["versus"]): c for c in arm_comparisons(runs)}
    assert set(comps) == {("monitor", "random_time"), ("monitor", "skip_step"), ("skip_step", "random_time")}
    ms = comps[("monitor", "skip_step")]
    assert (ms["n_pairs"], ms["only_other_collapsed"], ms["only_monitor_collapsed"]) == (20, 6, 0)
    assert ms["p_mcnemar"] == pytest.approx(0.03125) and ms["foresight"] is None
    assert "the monitor arm collapses less than the skip-step arm" in ms["verdict"]
    assert ms["perf_diff"] == pytest.approx(10.0) and ms["perf_p_sign"] == pytest.approx(2 * 0.5 ** 20)
    mr = comps[("monitor", "random_time")]
    assert mr["p_mcnemar"] == pytest.approx(p_random) and mr["foresight"] is foresight
    assert mr["other_arm"] == "random_time: rollback,lr_backoff, lag 200, count-matched"
    assert ("foresight helps" if foresight else "foresight is not shown") in mr["verdict"]
    sr = comps[("skip_step", "random_time")]
    assert (sr["only_other_collapsed"], sr["only_monitor_collapsed"]) == (only_random, 6)
    assert sr["p_mcnemar"] == pytest.approx(sps.binomtest(only_random, only_random + 6).pvalue)
    assert sr["foresight"] is None and "no difference in collapse shown" in sr["verdict"]
    assert all(c["meaning"] == COMPARISONS[k] for k, c in comps.items())
    # the summary: only monitor vs random time speaks about foresight; it says what each comparison shows
    _, entry = intervention_section(runs.with_columns(intervention_arm(runs).alias("arm")), pl.DataFrame())
    assert entry["foresight_shown"] is foresight and len(entry["foresight"]) == 1
    assert entry["foresight"][0] == mr["verdict"] and set(entry["comparisons_read"]) == {
        "monitor vs random_time", "monitor vs oracle", "monitor vs skip_step", "skip_step vs random_time"}
    kinds = [r["arm_kind"] for r in entry["rows"]]
    assert kinds == ["monitor", "skip_step", "random_time"]  # display order


def test_skip_step_beating_the_monitor_is_said_so() -> None:
    rows = []
    for s in range(10):
        rows += [regime_run(f"n{s}", s, NONE, True), regime_run(f"m{s}", s, MON, s < 7),
                 regime_run(f"k{s}", s, SKIP, False)]
    c = arm_comparisons(pl.DataFrame(rows))[0]
    assert (c["arm_kind"], c["versus"], c["only_monitor_collapsed"]) == ("monitor", "skip_step", 7)
    assert c["p_mcnemar"] == pytest.approx(2 * 0.5 ** 7)
    assert "the skip-step arm collapses less than the monitor arm" in c["verdict"] and "n too small" not in c["verdict"]


# ---- the action-counts pilot ----------------------------------------------------------------------------------
def _write_run(corpus: Path, rid: str, seed: int, hp: dict, events: list[tuple[int, str, float | None]]) -> dict:
    from stabilitybench.data_schema import EVENTS_SCHEMA, STEPS_SCHEMA, events_path, steps_path, write_table

    n = 50
    row = {"run_id": rid, "domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "seed": seed,
           "perturbation": "lr_regime", "dimension": "optimization", "magnitude": 10.0, "onset_frac": 0.0,
           "onset_step": 0, "duration_steps": n, "stochasticity": "default", "total_steps": n * 10,
           "planned_updates": n, "n_updates": n, "stop_reason": "completed", "status": "ok",
           "run_wall_time_s": 1.0, "code_version": "test", "schema_version": "1.0",
           "config_json": json.dumps({"spec": {"hparams": hp}})}
    steps = np.arange(n)
    write_table(pa.table({"run_id": [rid] * n, "step": steps, "samples_seen": steps * 10, "wall_time_s": steps * 0.01,
                          "perturbation_active": [True] * n, "domain": ["rl"] * n, "algo": ["ppo"] * n,
                          "env": ["Swimmer-v5"] * n, "perturbation": ["lr_regime"] * n}),
                steps_path(corpus, row), STEPS_SCHEMA)
    table = pa.Table.from_pylist([{"run_id": rid, "step": s, "event": k, "value": v} for s, k, v in events],
                                 schema=EVENTS_SCHEMA)
    write_table(table, events_path(corpus, rid), EVENTS_SCHEMA)
    return row


def acted(*alarms: int) -> list[tuple[int, str, float | None]]:
    """Events of alarms each acted on: a restore and an LR back-off two updates later (one episode each)."""
    return [e for a in alarms for e in ((a, "alarm", 9.0), (a + 2, "rollback", 0.0), (a + 2, "lr_backoff", 0.5))]


def test_action_counts_pilot_on_a_synthetic_corpus(tmp_path: Path) -> None:
    """The monitor arm's acted alarms per run, in seed order, as a JSON list of ints: seed 2 acted on 3 alarms (the
    last one's restore deferred: 4 action updates), seed 0 on 1 (its second alarm in the cooldown), seed 1 never
    alarmed; runs of other arms, monitors and perturbations are left out."""
    from stabilitybench.data_schema import write_manifest

    corpus = tmp_path / "pilot"
    other = {**MON, "monitor": "m/gru.monitor.npz"}
    deferred = [(35, "alarm", 9.0), (37, "lr_backoff", 0.5), (40, "rollback", 10.0)]  # 2 action updates, 1 alarm
    rows = [_write_run(corpus, "a", 2, MON, [*acted(5, 20), *deferred]),
            _write_run(corpus, "b", 0, MON, [*acted(10), (11, "alarm", 9.0)]),
            _write_run(corpus, "c", 1, MON, []),
            _write_run(corpus, "d", 3, other, acted(5)),
            _write_run(corpus, "e", 4, RND, acted(5, 9)),
            _write_run(corpus, "f", 5, NONE, [])]
    write_manifest(corpus, rows)
    res = monitor_action_counts(corpus, "kalman", "lr_regime")
    assert res["counts"] == [1, 0, 3] and res["seeds"] == [0, 1, 2] and res["run_ids"] == ["b", "c", "a"]
    assert res["arm"] == "monitor: rollback,lr_backoff, lag 200"
    assert res["discards"] == [12, 7, 22, 30]  # per restore, update count at it minus the checkpoint's, run order
    out = tmp_path / "out" / "kalman.counts.json"
    assert main(["action-counts", "--corpus", str(corpus), "--monitor", "m/kalman.monitor.npz", "--perturbation",
                 "lr_regime", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["counts"] == [1, 0, 3] and written["discards"] == [12, 7, 22, 30]
    assert parse_counts(str(out)) == [1, 0, 3] and parse_discards(str(out)) == [12, 7, 22, 30]
    assert [p.name for p in out.parent.iterdir()] == ["kalman.counts.json"]  # no temporary file left
    assert main(["action-counts", "--corpus", str(corpus), "--monitor", "kalman", "--perturbation", "lr_spike",
                 "--out", str(out)]) == 2
    assert json.loads(out.read_text())["counts"] == [1, 0, 3]  # a refused pilot leaves the file as it was
    # two monitor arms of one monitor in the cell: refused until --arm names one
    write_manifest(corpus, [*rows, _write_run(corpus, "g", 6, {**MON, "intervention_rollback_lag": 480}, acted(5))])
    with pytest.raises(ValueError, match="several monitor arm"):
        monitor_action_counts(corpus, "kalman", "lr_regime")
    assert monitor_action_counts(corpus, "kalman", "lr_regime", arm="monitor: rollback,lr_backoff, lag 480"
                                 )["counts"] == [1]


def test_the_report_table_shows_skipped_updates_and_wall_time() -> None:
    """reports' intervention table: updates discarded / skipped / wasted and the wall-time ratio with its CI, from
    the section's rows (an older summary without those fields still renders)."""
    from stabilitybench.analysis.summary import Summary
    from stabilitybench.reports.tables import intervention_table as report_table
    from stabilitybench.reports.text import Source

    runs, events = [], []
    for s in range(8):
        runs += [regime_run(f"n{s}", s, NONE, wall=100.0), regime_run(f"k{s}", s, SKIP, wall=150.0)]
        events += [ev(f"k{s}", 100, "skip_step", 7.0), ev(f"k{s}", 200, "skip_step", 8.0)]
    runs = pl.DataFrame(runs)
    _, entry = intervention_section(runs.with_columns(intervention_arm(runs).alias("arm")), pl.DataFrame(events))
    entry = json.loads(json.dumps(entry))
    table = report_table(Source(Summary({"intervention": entry})))
    assert table is not None and table.header[-2:] == ["updates discarded / skipped / compute wasted",
                                                       "wall time ratio with / without [95% CI]"]
    md = table.md()
    assert "| 0 / 16 / 16 |" in md and "| 1.50 [1.50, 1.50] |" in md
    for key in ("updates_skipped", "wall_time_ratio"):
        del entry["rows"][0][key]
    old = report_table(Source(Summary({"intervention": entry}))).md()
    assert "| 0 / 16 |" in old and "| n/a |" in old


def test_the_f13_caption_describes_an_analysed_intervention() -> None:
    """F13's caption read 'Intervention: ok.' whenever the stage ran (its entry's status is ok)."""
    from stabilitybench.analysis.summary import Summary
    from stabilitybench.reports.figures.intervention import caption
    from stabilitybench.reports.text import Source

    runs = pl.DataFrame([regime_run(f"{a}{s}", s, arm, wall=100.0) for s in range(6)
                         for a, arm in (("n", NONE), ("k", SKIP))])
    _, entry = intervention_section(runs.with_columns(intervention_arm(runs).alias("arm")), pl.DataFrame(
        [ev(f"k{s}", 100, "skip_step", 7.0) for s in range(6)]))
    text = "".join(str(x) for x in caption(Source(Summary({"intervention": json.loads(json.dumps(entry))}))))
    assert text.startswith("Collapse rate of matched pairs") and "Intervention: ok" not in text


def test_the_discard_matched_random_arm_is_its_own_arm_and_its_own_comparison() -> None:
    """Count-matched and count- and discard-matched random arms on the same seeds are two arms, and the monitor is
    compared with each (the discard-matched one: same count and the same discarded updates, so timing alone)."""
    drnd = {**RND, "intervention_discards": "counts.json"}
    runs = pl.DataFrame([regime_run(f"{a}{s}", s, hp, collapsed=c)
                         for s in range(12) for a, hp, c in (("n", NONE, s < 8), ("m", MON, s < 2),
                                                            ("r", RND, s < 7), ("d", drnd, s < 3))])
    labels = set(with_arms(runs)["arm_label"].to_list())
    assert {"random_time: rollback,lr_backoff, lag 200, count-matched",
            "random_time: rollback,lr_backoff, lag 200, count- and discard-matched"} <= labels
    comps = [c for c in arm_comparisons(runs) if (c["arm_kind"], c["versus"]) == ("monitor", "random_time")]
    by = {c["other_arm"].split(", ")[-1]: c for c in comps}
    assert set(by) == {"count-matched", "count- and discard-matched"}
    assert (by["count-matched"]["only_other_collapsed"], by["count-matched"]["only_monitor_collapsed"]) == (5, 0)
    assert (by["count- and discard-matched"]["only_other_collapsed"],
            by["count- and discard-matched"]["only_monitor_collapsed"]) == (1, 0)
