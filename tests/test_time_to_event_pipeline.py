"""Question (c) in the pipeline, on synthetic truth: regime runs (``lr_regime``: trained throughout at one elevated
setting, no kick) that collapse at seed-dependent times, with a precursor planted in ``grad_norm`` 200 updates before
each collapse; the collapse rule for regime runs; regime runs entering (c) only; the null twins; the figure; and a
corpus without regime runs, where (c) is not testable and nothing else changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from scipy.stats import mannwhitneyu

from stabilitybench.analysis.collapse import CollapseConfig, collapse_group
from stabilitybench.analysis.early_warning import (
    TWIN_FRAC,
    TWIN_SUFFIX,
    EarlyWarningConfig,
    control_trajectory,
    null_twin,
    regime_folds,
    seed_folds,
    split_twins,
)
from stabilitybench.analysis.errors import AnalysisError
from stabilitybench.analysis.pipeline import AnalysisConfig, run_analysis
from stabilitybench.analysis.results import load_table, write_result
from stabilitybench.analysis.time_to_event_stage import REFERENCE, compare_detectors, time_to_event_question
from stabilitybench.data_schema import EVENTS_SCHEMA, STEPS_SCHEMA, events_path, steps_path, write_manifest, write_table

T, LEAD, N_SEEDS, N_SURVIVORS, N_REGIME_ONLY = 2000, 200, 10, 2, 2
KICK_ONSET, KICK_DUR = 600, 30
DETECTORS = ("grad_norm_z", "pca_recon")
CFG = AnalysisConfig(early_warning=EarlyWarningConfig(n_boot=200, detectors=DETECTORS, with_echo=False, n_jobs=1),
                     n_null=5, n_boot=200)


def _run(corpus: Path, seed: int, kind: str, collapse_at: int | None = None) -> dict:
    """One run: ``none`` (control), ``lr_regime`` (onset 0, the whole run; the precursor: ``grad_norm`` x 8 from
    ``LEAD`` updates before ``collapse_at``, performance -300 from it) or ``lr_spike`` (a kick at ``KICK_ONSET``)."""
    rng = np.random.default_rng(7919 * seed + {"none": 1, "lr_regime": 2, "lr_spike": 3}[kind])
    steps = np.arange(T)
    perf = np.linspace(-300, -100, T) + rng.normal(0, 5, T)
    g = 0.3 * rng.normal(size=T)
    grad, loss = np.exp(g), np.exp(0.8 * g + 0.05 * rng.normal(size=T))  # correlated: PCA sees grad_norm alone
    upd = 0.01 * grad * np.exp(0.1 * rng.normal(size=T))
    lr = np.full(T, 3e-4)
    if kind == "lr_regime":
        lr *= 3.0
        if collapse_at is not None:
            grad[steps >= collapse_at - LEAD] *= 8.0
            perf[steps >= collapse_at] -= 300
    if kind == "lr_spike":
        active = (steps >= KICK_ONSET) & (steps < KICK_ONSET + KICK_DUR)
        lr[active] *= 100
        grad[active] *= 20
        perf[steps >= KICK_ONSET + 100] -= 300
    regime = kind == "lr_regime"
    row = {"run_id": f"{kind}-{seed}", "domain": "rl", "algo": "ppo", "env": "Toy-v0", "seed": seed,
           "perturbation": kind, "dimension": "none" if kind == "none" else "optimization",
           "magnitude": {"none": 1.0, "lr_regime": 3.0, "lr_spike": 100.0}[kind],
           "onset_frac": 0.0 if regime else KICK_ONSET / T, "onset_step": 0 if regime else KICK_ONSET,
           "duration_steps": T if regime else (KICK_DUR if kind == "lr_spike" else 1), "stochasticity": "default",
           "total_steps": T * 10, "planned_updates": T, "n_updates": T, "stop_reason": "completed", "status": "ok",
           "code_version": "test", "schema_version": "1.0", "config_json": "{}"}
    rid = row["run_id"]
    table = pa.table({"run_id": [rid] * T, "step": steps, "samples_seen": steps * 10, "wall_time_s": steps * 0.01,
                      "lr": lr, "loss": loss, "grad_norm": grad, "grad_coherence": 0.2 + 0.05 * rng.normal(size=T),
                      "update_norm": upd, "param_norm": 10 + np.cumsum(upd),
                      "perturbation_active": np.zeros(T, bool), "performance": perf, "domain": ["rl"] * T,
                      "algo": ["ppo"] * T, "env": ["Toy-v0"] * T, "perturbation": [kind] * T})
    write_table(table, steps_path(corpus, row), STEPS_SCHEMA)
    write_table(pa.Table.from_pylist([], schema=EVENTS_SCHEMA), events_path(corpus, rid), EVENTS_SCHEMA)
    return row


def make_corpus(root: Path, regime: bool = True, kicked: bool = True) -> tuple[Path, dict[str, int | None]]:
    """Controls on seeds 0..9; with ``regime`` an ``lr_regime`` run on seeds 0..11 (10 and 11 have no control, as the
    spontaneous profile has more regime seeds than control seeds), collapsing at a seeded time in [800, 1700) except
    on seeds 8 and 9 (survivors); with ``kicked`` an ``lr_spike`` x100 run on seeds 0..2. Returns the corpus and the
    planted collapse update per regime run."""
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for s in range(N_SEEDS + N_REGIME_ONLY):
        if s < N_SEEDS:
            rows.append(_run(root, s, "none"))
        if regime:
            c = None if N_SEEDS - N_SURVIVORS <= s < N_SEEDS else int(rng.integers(800, 1700))
            rows.append(_run(root, s, "lr_regime", c))
            truth[f"lr_regime-{s}"] = c
        if kicked and s < 3:
            rows.append(_run(root, s, "lr_spike"))
    write_manifest(root, rows)
    return root, truth


@pytest.fixture(scope="module")
def regime(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("regime")
    corpus, truth = make_corpus(root / "corpus")
    summary = run_analysis(corpus, root / "results", CFG, update_corpus=False)
    return root / "results", summary, truth


def _tte(summary: dict) -> dict:
    return summary["early_warning"]["time_to_event"]


# --------------------------------------------------------------------------- the collapse rule
def test_a_regime_run_is_judged_without_a_window_and_a_kicked_run_is_not() -> None:
    """A regime run (onset 0, duration = the run) that breaks at update 600 of 2000 collapses there; the same curve
    as a kick whose window covers the run cannot outlast it (the kicked rule, unchanged)."""
    rng = np.random.default_rng(3)
    steps = np.arange(T)
    curves, rows = {}, []
    for i, kind in enumerate(["none"] * 4 + ["lr_regime", "lr_spike"]):
        perf = np.linspace(-300, -100, T) + rng.normal(0, 5, T)
        if kind != "none":
            perf[steps >= 600] -= 300
        rid = f"{kind}-{i}"
        curves[rid] = (steps, perf)
        rows.append({"run_id": rid, "seed": i, "perturbation": kind, "onset_step": 0,
                     "duration_steps": T if kind != "none" else 1})
    runs = pl.DataFrame(rows)
    out = collapse_group(runs, curves, {}, (runs["perturbation"] == "none").to_numpy(), CollapseConfig())
    got = {r["run_id"]: r for r in out.iter_rows(named=True)}
    reg, kick = got["lr_regime-4"], got["lr_spike-5"]
    assert reg["collapsed"] and abs(reg["collapse_step"] - 600) <= 20 and reg["collapse_time"] == reg["collapse_step"]
    assert reg["collapse_confirmed_step"] <= 600 + round(0.1 * T) + 20  # confirmed one window W after the break
    assert not kick["collapsed"] and kick["transient"]  # below the line to the end, but the window never ended
    assert not any(got[f"none-{i}"]["collapsed"] for i in range(4))


def test_regime_collapses_are_dated_at_the_planted_break(regime) -> None:
    results, _, truth = regime
    runs = load_table(results, "runs")
    assert runs is not None
    for rid, c in truth.items():
        r = runs.filter(pl.col("run_id") == rid).row(0, named=True)
        assert r["collapsed"] == (c is not None), rid
        if c is not None:
            assert abs(r["collapse_step"] - c) <= 20, (rid, r["collapse_step"], c)
    assert runs.filter(pl.col("perturbation") == "lr_spike")["collapsed"].all()  # kicked runs: as before


# --------------------------------------------------------------------------- regime runs enter (c) only
def test_regime_runs_have_traces_and_twins_but_no_row_in_a_or_b(regime) -> None:
    results, summary, truth = regime
    rows, traces = load_table(results, "early_warning_runs"), load_table(results, "early_warning_scores")
    assert rows is not None and traces is not None
    assert not rows["run_id"].str.starts_with("lr_regime").any()  # (a), (a'), (b) read the rows: kicks only
    assert set(rows["run_id"]) == {f"none-{s}" for s in range(N_SEEDS)} | {f"lr_spike-{s}" for s in range(3)}
    assert summary["early_warning"]["detection"]["grad_norm_z"]["n_collapsed"] == 3  # the kicked collapses
    real, twins = split_twins(traces)
    assert not real["run_id"].str.ends_with(TWIN_SUFFIX).any()
    for det in DETECTORS:
        assert set(real.filter(pl.col("detector") == det)["run_id"]) >= set(truth)
        tw = twins.filter(pl.col("detector") == det)
        assert set(tw["run_id"]) == set(truth)  # one twin per regime run, none for controls or kicked runs
        for rid in truth:  # a twin has its run's blocks, and it is scored like the run (same fold and threshold)
            a, b = real.filter((pl.col("run_id") == rid) & (pl.col("detector") == det)), tw.filter(
                pl.col("run_id") == rid)
            assert a["step"].to_list() == b["step"].to_list()
            assert a["fold"].unique().to_list() == b["fold"].unique().to_list()
            assert a["threshold"].unique().to_list() == b["threshold"].unique().to_list()


def test_seeds_with_regime_runs_only_are_tested_and_never_cut_a_calibration_chunk() -> None:
    """The spontaneous profile's design (40 regime seeds, 30 of them with a control): every seed is tested once and
    every fold keeps calibration controls; without regime-only seeds the folds are seed_folds' (kicked corpora)."""
    ctrl = [{"seed": s, "perturbation": "none"} for s in range(200, 230)]
    reg = [{"seed": s, "perturbation": "lr_regime"} for s in range(200, 240)]
    folds = regime_folds(pl.DataFrame(ctrl + reg))
    tested = sorted(s for f in folds for s in f["test"])
    assert tested == list(range(200, 240))
    assert all(f["calibration"] and set(f["calibration"]) <= set(range(200, 230)) for f in folds)
    old = seed_folds(list(range(200, 240)))  # one chunk of regime-only seeds: a fold calibrates on no control
    assert any(not set(f["calibration"]) & set(range(200, 230)) for f in old)
    kicked = pl.DataFrame(ctrl + [{"seed": s, "perturbation": "lr_spike"} for s in range(200, 235)])
    assert regime_folds(kicked) == seed_folds(kicked["seed"].to_list())


def test_the_null_twin_copies_the_early_stretch_only() -> None:
    """The twin is an AR(1) of the first TWIN_FRAC of updates (before any collapse): a level that the run reaches
    later, or after its collapse, never shows in it; seeded; None with fewer than 3 early blocks."""
    rng = np.random.default_rng(0)
    steps = np.arange(500) * 4 + 3  # 500 blocks of 4 updates: 2000 updates
    X = np.column_stack([rng.normal(0, 1, 500), 5 + 0.1 * rng.normal(size=500)])
    X[steps >= TWIN_FRAC * 2000, 0] += 100.0  # the run's later level
    tw = null_twin(steps, X, None, 7)
    assert tw is not None and tw.shape == X.shape
    assert abs(tw[:, 0].mean()) < 1.0 and abs(tw[:, 1].mean() - 5) < 0.1 and 0.5 < tw[:, 0].std() < 1.6
    np.testing.assert_array_equal(tw, null_twin(steps, X, None, 7))
    assert not np.array_equal(tw, null_twin(steps, X, None, 8))
    X2 = X.copy()
    X2[steps >= 100, 0] += 50.0  # a collapse at update 100 cuts the stretch at 100
    assert abs(null_twin(steps, X2, 100, 7)[:, 0].mean()) < 1.5
    assert null_twin(steps, X, 8, 7) is None  # blocks ending at 3 and 7 only: nothing to fit


def test_the_null_twin_follows_the_controls_trajectory() -> None:
    """With the controls' trajectory the twin is that trajectory plus an AR(1) of the run's own early deviation
    from it: a training curve that falls all run long is followed (a stationary twin stays at the early level),
    and the run's early offset and noise carry over."""
    rng = np.random.default_rng(1)
    steps = np.arange(500) * 4 + 3
    trend = np.linspace(10.0, 2.0, 500)  # a loss that keeps falling
    controls = [(steps, np.column_stack([trend + rng.normal(0, 0.1, 500)])) for _ in range(4)]
    controls.append((steps[:300], np.column_stack([trend[:300] + rng.normal(0, 0.1, 300)])))  # a shorter control
    trajectory = control_trajectory(controls)
    assert trajectory is not None
    np.testing.assert_array_equal(trajectory[0], steps)
    np.testing.assert_allclose(trajectory[1][:, 0], trend, atol=0.2)
    X = np.column_stack([trend + 0.5 + rng.normal(0, 0.3, 500)])  # the run: 0.5 above the controls, noisier
    late = steps >= 1000
    stationary = null_twin(steps, X, None, 7)
    assert np.mean(stationary[late, 0]) > 7.0  # stuck at the early stretch's level (about 9.7)
    tw = null_twin(steps, X, None, 7, trajectory)
    dev = tw[:, 0] - trend
    assert abs(dev[late].mean() - 0.5) < 0.3 and 0.15 < dev[late].std() < 0.5
    assert null_twin(steps, X, 8, 7, trajectory) is None
    # steps the controls lack (the run is longer) carry their last value forward; no controls: the stationary twin
    longer = np.arange(600) * 4 + 3
    tw2 = null_twin(longer, np.vstack([X, X[-100:]]), None, 7, trajectory)
    assert np.all(np.isfinite(tw2)) and abs((tw2[500:, 0] - trend[-1]).mean() - 0.5) < 0.4
    assert control_trajectory([]) is None


def test_compare_detectors_reads_a_results_folder(regime) -> None:
    """compare_detectors on the analysed synthetic regime: within the regime runs, the detector reading the planted
    column (grad_norm_z) against one that does not see it as well; the same pair with the controls; an unknown
    detector is a one-line error."""
    results, summary, _ = regime
    within = compare_detectors(results, "grad_norm_z", "pca_recon", "rl", n_boot=200)
    assert within["regime_only"] and set(within["horizons"]) == {"100", "500"}
    e = within["horizons"]["500"]
    assert e["n_runs"] == N_SEEDS + N_REGIME_ONLY and e["value"] is not None
    # its two AUROCs are (c)'s own within-regime AUROCs of the same detectors
    w = {d: _tte(summary)["by_domain"]["rl"]["detectors"][d]["within_regime"]["horizons"]["500"]["auroc"]["value"]
         for d in ("grad_norm_z", "pca_recon")}
    assert e["value"] == pytest.approx(w["grad_norm_z"] - w["pca_recon"])
    pooled = compare_detectors(results, "grad_norm_z", "pca_recon", "rl", regime_only=False, n_boot=200)
    assert pooled["horizons"]["500"]["n_runs"] == N_SEEDS + N_REGIME_ONLY + N_SEEDS
    with pytest.raises(AnalysisError, match="no \\(c\\) scores of 'kalman'"):
        compare_detectors(results, "kalman", "pca_recon", "rl")


# --------------------------------------------------------------------------- question (c) on synthetic truth
def test_a_detector_reading_the_planted_column_beats_the_no_kick_reference(regime) -> None:
    _, summary, truth = regime
    tte = _tte(summary)
    assert tte["status"] == "ok" and tte["question"] == "c"
    rl = tte["by_domain"]["rl"]
    n_coll = sum(c is not None for c in truth.values())
    assert rl["horizons"] == [100, 500]
    n_reg = N_SEEDS + N_REGIME_ONLY  # every regime run is scored, those on seeds without a control included
    assert (rl["n_runs"], rl["n_regime_runs"], rl["n_collapsed"], rl["n_controls"]) == (n_reg + N_SEEDS, n_reg, n_coll,
                                                                                        N_SEEDS)
    pca = rl["detectors"]["pca_recon"]["horizons"]
    h500, h100 = pca["500"], pca["100"]
    d = h500["auroc_minus_reference"]
    assert d["value"] > 0.1 and d["ci_low"] > 0, d  # beats "updates since the regime began" at h = 500
    assert h500["auroc"]["n"] == n_coll and h500["auroc"]["n_runs"] == n_reg + N_SEEDS
    assert h100["auroc"]["value"] > 0.95  # every block within 100 updates of a collapse carries the precursor
    for det in DETECTORS:  # every collapse warned at least 100 updates ahead, at the planted lead
        w = rl["detectors"][det]["horizons"]["500"]["warned"]["100"]
        assert w["value"] == 1.0 and w["n"] == n_coll and w["ci_low"] > 0.6, (det, w)
        assert 180 <= w["first_warning_lead_median"] <= LEAD, (det, w)
    ref = rl["reference"]["horizons"]["500"]["warned"]["1"]
    assert ref["value"] < 0.5  # the clock alone cannot warn at 1 false alarm / 10k control updates
    assert summary["questions"]["time_to_event"]["n_runs"] == n_reg + N_SEEDS
    head = summary["headline"]["time_to_event"]["rl"]
    assert head["detectors"]["pca_recon"]["horizons"]["500"]["auroc_minus_reference"]["value"] == d["value"]


def test_the_reference_scores_what_time_since_start_scores(regime) -> None:
    """The no-kick reference's AUROC equals a hand Mann-Whitney AUROC of the block end step on hand labels."""
    results, summary, truth = regime
    real, _ = split_twins(load_table(results, "early_warning_scores"))  # type: ignore[arg-type]
    b = real.filter((pl.col("detector") == DETECTORS[0])
                    & pl.col("run_id").is_in([*truth, *[f"none-{s}" for s in range(N_SEEDS)]]))  # no kicked run
    runs = load_table(results, "runs")
    coll = dict(runs.select("run_id", "collapse_step").iter_rows())  # type: ignore[union-attr]
    rl = _tte(summary)["by_domain"]["rl"]
    for h in (100, 500):
        pos, neg = [], []
        for rid, step in b.select("run_id", "step").iter_rows():
            c = coll[rid]
            if c is not None and step >= c:
                continue  # at or after the collapse: dropped
            (pos if c is not None and c - step <= h else neg).append(step)
        u = mannwhitneyu(pos, neg).statistic
        expect = u / (len(pos) * len(neg))
        assert rl["reference"]["horizons"][str(h)]["auroc"]["value"] == pytest.approx(expect, abs=1e-12)
        for det in DETECTORS:  # every detector is compared with the same reference on the same blocks
            assert rl["detectors"][det]["horizons"][str(h)]["reference_auroc"]["value"] == pytest.approx(expect,
                                                                                                         abs=1e-12)


def test_curves_table_and_figure(regime, tmp_path: Path) -> None:
    """The curves conform to their declared table; each calibrated point is summary.json's; F14 draws them."""
    from stabilitybench.reports.data import load
    from stabilitybench.reports.figures import FIGURES
    from stabilitybench.reports.figures.time_to_event import build, caption
    from stabilitybench.reports.tables import time_to_event_table
    from stabilitybench.reports.text import Source, render_md

    results = regime[0]
    runs = load_table(results, "runs").with_columns(  # type: ignore[union-attr]
        (pl.col("perturbation") == "none").alias("unperturbed"))
    tte = time_to_event_question(load_table(results, "early_warning_scores"), runs,  # type: ignore[arg-type]
                                 replace(CFG, early_warning=replace(CFG.early_warning, n_boot=50)))
    curves = tte.curves
    assert set(curves["detector"]) == {*DETECTORS, REFERENCE} and set(curves["horizon"]) == {100, 500}
    cal = curves.filter((pl.col("point") == "calibrated") & (pl.col("detector") == "pca_recon")
                        & (pl.col("horizon") == 500)).row(0, named=True)
    w = tte.summary["by_domain"]["rl"]["detectors"]["pca_recon"]["horizons"]["500"]["warned"]["1"]
    assert (cal["warned_fraction"], cal["warned_ci_low"], cal["n_collapsed"]) == (w["value"], w["ci_low"], w["n"])
    every = curves.filter((pl.col("point") == "curve") & (pl.col("threshold") == float("-inf")))
    assert (every["warned_fraction"] == 1.0).all()  # every collapse is "warned" when every block alarms
    write_result(tte.curves, results, "time_to_event_curves")
    data = load(results)
    fig, why = build(data)
    assert why == [] and len(fig.axes) == 2
    text = render_md(caption(Source(data.summary)))
    assert f"collapsed of {N_SEEDS + N_REGIME_ONLY} regime runs" in text
    assert "PCA reconstruction" in text and "[" in text
    assert any(s.question == "time_to_event" and s.id == "F14" for s in FIGURES)
    table = time_to_event_table(Source(data.summary))
    assert table is not None and len(table.rows) == 1 + len(DETECTORS)  # the reference, then each detector
    md = table.md()
    assert "updates since the regime began (reference)" in md and "PCA reconstruction" in md and "passes" in md


# --------------------------------------------------------------------------- no regime run: (c) not testable
def test_without_regime_runs_c_is_not_testable_and_nothing_else_changes(tmp_path: Path) -> None:
    from stabilitybench.reports.data import load
    from stabilitybench.reports.figures.time_to_event import build, caption
    from stabilitybench.reports.tables import time_to_event_table
    from stabilitybench.reports.text import Source, render_md

    corpus, _ = make_corpus(tmp_path / "corpus", regime=False)
    summary = run_analysis(corpus, tmp_path / "results", CFG, update_corpus=False)
    tte = _tte(summary)
    assert tte["status"] == "not_testable" and "no regime run" in tte["reason"] and "\n" not in tte["reason"]
    assert summary["questions"]["time_to_event"]["n_runs"] == 0
    assert summary["headline"]["time_to_event"]["status"] == "not_testable"
    rows = load_table(tmp_path / "results", "early_warning_runs")
    traces = load_table(tmp_path / "results", "early_warning_scores")
    assert rows is not None and traces is not None
    assert rows.height == len(DETECTORS) * (N_SEEDS + 3)  # every test run has its row, as before
    assert not traces["run_id"].str.ends_with(TWIN_SUFFIX).any()  # no twin without a regime run
    assert load_table(tmp_path / "results", "time_to_event_curves") is None
    data = load(tmp_path / "results")
    _, why = build(data)
    assert why and "no regime run" in why[0]
    assert "not testable" in render_md(caption(Source(data.summary)))
    assert time_to_event_table(Source(data.summary)) is None


def test_a_corpus_of_regime_runs_and_controls_only(tmp_path: Path) -> None:
    corpus, truth = make_corpus(tmp_path / "corpus", kicked=False)
    summary = run_analysis(corpus, tmp_path / "results", CFG, update_corpus=False)
    assert _tte(summary)["by_domain"]["rl"]["n_collapsed"] == sum(c is not None for c in truth.values())
    # the whole report builds from such a corpus (no kicked run: question (b) has one outcome only), and shows (c)
    # pooled and within the regime
    from stabilitybench.reports.report import build_report

    build_report(tmp_path / "results", tmp_path / "report")
    md = (tmp_path / "report" / "index.md").read_text()
    assert "(c) Time to event" in md and "(c) within the regime" in md


def test_f14_gives_every_detector_its_own_colour_and_dash() -> None:
    """More detectors than palette colours (analyze --spike-rules scores 20): no two curves share colour and dash."""
    import matplotlib

    matplotlib.use("Agg")
    from stabilitybench.reports.figures.time_to_event import fig_warning_curves

    dets = [f"det{i}" for i in range(23)] + [REFERENCE]
    curves = pl.DataFrame([{"detector": d, "point": "curve", "fa_per_10k": fa, "warned_fraction": w,
                            "fa_ci_low": None, "fa_ci_high": None, "warned_ci_low": None, "warned_ci_high": None}
                           for d in dets for fa, w in ((0.0, 0.0), (10.0, 0.5))])
    ax = fig_warning_curves(curves)
    styles = [(matplotlib.colors.to_hex(ln.get_color()), ln.get_linestyle()) for ln in ax.get_lines()
              if ln.get_label() != "_nolegend_" and not ln.get_label().startswith("1 false alarm")]
    assert len(styles) == len(dets) and len(set(styles)) == len(dets)
