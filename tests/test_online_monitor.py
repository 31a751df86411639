"""Self-contained monitor files and the online monitor: offline == online, warm-up, column checks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from corpus_tools import ar1_latent

from stabilitybench.analysis.conformal import ConformalCalibrator
from stabilitybench.analysis.data import feature_frame, run_arrays, to_blocks
from stabilitybench.analysis.detectors import DETECTORS, saveable_names
from stabilitybench.analysis.errors import MonitorFileError
from stabilitybench.analysis.metastate import KalmanMonitor
from stabilitybench.analysis.monitor_file import MonitorFile
from stabilitybench.analysis.online import OnlineMonitor

FEATURES = ["loss", "grad_norm", "grad_coherence", "entropy", "adam_update_ratio_rms"]
B = 4


def synthetic_run(seed: int, n: int = 203, kick_at: int | None = None, nonfinite_at: int | None = None,
                  run_id: str | None = None) -> pl.DataFrame:
    """One run's steps: an AR(1) latent drives the columns; ``loss`` is sparse (every 8th row)."""
    rng = np.random.default_rng(seed)
    z = ar1_latent(rng, n, kick_at)
    loss = np.exp(0.5 * z + rng.normal(0, 0.1, n))
    loss_col: list[float | None] = [float(v) if t % 8 == 7 else None for t, v in enumerate(loss)]
    if nonfinite_at is not None:
        loss_col[nonfinite_at] = float("inf")
    return pl.DataFrame({
        "run_id": run_id or f"r{seed}", "step": np.arange(n, dtype=np.int64),
        "loss": loss_col, "grad_norm": np.exp(z + rng.normal(0, 0.2, n)),
        "grad_coherence": np.tanh(0.3 * z) + rng.normal(0, 0.05, n), "entropy": -0.2 * z + rng.normal(0, 0.1, n),
        "adam_update_ratio_rms": np.exp(0.3 * z + rng.normal(0, 0.1, n)), "performance": -z,
    }, schema_overrides={"loss": pl.Float64})


def pipeline_blocks(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The analysis pipeline's own path: feature_frame -> to_blocks -> run_arrays."""
    arrays = run_arrays(to_blocks(feature_frame(frame, FEATURES), FEATURES, B), FEATURES)
    return next(iter(arrays.values()))


@pytest.fixture(scope="module")
def monitor_file() -> MonitorFile:
    train = [pipeline_blocks(synthetic_run(s))[1] for s in range(4)]
    det = KalmanMonitor(n_latent=2, n_iter=20, smooth=3).fit(train)
    cal = [float(np.nanmax(det.score(pipeline_blocks(synthetic_run(s))[1])[5:])) for s in range(10, 15)]
    conf = ConformalCalibrator(0.05).fit(cal)
    return MonitorFile(det, FEATURES, B, warmup_updates=20, threshold=conf.threshold_, target_fpr=0.05,
                       alpha_used=conf.alpha_used_, n_calibration=conf.n_, provenance={"group": "synthetic"})


def test_block_features_match_the_pipeline(monitor_file: MonitorFile) -> None:
    run = synthetic_run(30, kick_at=120, nonfinite_at=150)
    st, X, nf = pipeline_blocks(run)
    st2, X2, nf2 = monitor_file.block_features(run)
    np.testing.assert_array_equal(st, st2)
    np.testing.assert_allclose(X, X2, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(nf, nf2)
    assert nf.any() and st[-1] == 202  # a non-finite block and a trailing partial block are covered


@pytest.mark.parametrize("kind", saveable_names())
def test_online_scores_equal_offline(kind: str, monitor_file: MonitorFile, tmp_path) -> None:
    mf = monitor_file
    baseline = DETECTORS[kind].family == "baseline"
    if baseline:  # causal baselines: fitted standardisation only, window in blocks
        train = [pipeline_blocks(synthetic_run(s))[1] for s in range(4)]
        det = DETECTORS[kind].cls(FEATURES, window=6, smooth=3).fit(train)
        mf = MonitorFile(det, FEATURES, B, warmup_updates=20, threshold=2.0)
    if kind == "gru":
        pytest.importorskip("torch")
        from stabilitybench.analysis.metastate.gru import GRUMonitor

        train = [pipeline_blocks(synthetic_run(s))[1] for s in range(4)]
        det = GRUMonitor(hidden=8, epochs=15, window=16, smooth=3).fit(train)
        mf = MonitorFile(det, FEATURES, B, warmup_updates=20, threshold=0.5)
    mf = MonitorFile.load(mf.save(tmp_path / f"{kind}.monitor.npz"))  # through the file, as a user would
    run = synthetic_run(31, kick_at=120, nonfinite_at=150)
    st, X, nf = pipeline_blocks(run)
    offline = mf.score_blocks(X, nf)
    online = mf.online()
    got = []
    for row in run.iter_rows(named=True):
        msd, alarm = online.update(row)
        if msd is not None:
            got.append((online.last_step_, msd, alarm))
    tail = online.finish()
    assert tail[0] is not None  # the partial last block
    got.append((online.last_step_, *tail))
    steps, msd, alarm = (np.array(v) for v in zip(*got, strict=True))
    np.testing.assert_array_equal(steps, st)
    assert np.isinf(msd).sum() == np.isinf(offline).sum() > 0
    rtol = 1e-5 if kind == "gru" else 1e-8  # the GRU computes in float32: step by step vs one sequence call
    np.testing.assert_allclose(msd, offline, rtol=rtol, atol=1e-10, equal_nan=True)
    np.testing.assert_array_equal(alarm, mf.alarms(st, offline))
    assert not alarm[st < 20].any()
    if baseline:
        assert mf.kind == kind and np.isfinite(offline).sum() > 20 and alarm.any()  # the kick at 120 is seen


def test_no_alarm_during_warmup_even_when_scores_exceed(monitor_file: MonitorFile) -> None:
    mf = MonitorFile(monitor_file.detector, FEATURES, B, warmup_updates=100, threshold=-1e9)  # every score exceeds
    trace = mf.score_run(synthetic_run(32))
    assert not trace.filter(pl.col("step") < 100)["alarm"].any()
    assert trace.filter(pl.col("step") >= 100)["alarm"].all()
    online = OnlineMonitor(mf)
    alarms = [online.update(r) for r in synthetic_run(32).iter_rows(named=True)]
    emitted = [(s, a) for (m, a), s in zip(alarms, range(203), strict=True) if m is not None]
    assert [a for s, a in emitted if s < 100] == [False] * 25  # blocks ending at 3, 7, ..., 99
    assert all(a for s, a in emitted if s >= 100)


def test_kick_alarms_after_warmup(monitor_file: MonitorFile) -> None:
    trace = monitor_file.score_run(synthetic_run(33, kick_at=120))
    first = trace.filter(pl.col("alarm"))["step"].min()
    assert first is not None and 120 <= first < 140


def test_file_round_trip_and_contents(monitor_file: MonitorFile, tmp_path) -> None:
    path = monitor_file.save(tmp_path / "m.monitor.npz")
    back = MonitorFile.load(path)
    meta = back.meta()
    assert meta["features"] == FEATURES and meta["block_updates"] == B and meta["warmup_updates"] == 20
    assert meta["transforms"]["loss"] == "log1p" and meta["transforms"]["entropy"] == "identity"
    assert meta["threshold"] == pytest.approx(monitor_file.threshold) and meta["n_calibration"] == 5
    assert meta["provenance"]["group"] == "synthetic" and meta["provenance"]["fitted_with_code"]
    run = synthetic_run(34)
    assert back.score_run(run).equals(monitor_file.score_run(run))


def test_refuses_a_run_with_other_columns(monitor_file: MonitorFile, tmp_path) -> None:
    path = monitor_file.save(tmp_path / "m.monitor.npz")
    run = synthetic_run(35).drop("entropy")
    with pytest.raises(MonitorFileError, match=r"no column.*entropy") as err:
        MonitorFile.load(path).score_run(run)
    assert "\n" not in str(err.value)
    with pytest.raises(MonitorFileError, match="entropy"):
        MonitorFile.load(path, columns=run.columns)
    with pytest.raises(MonitorFileError, match=r"MonitorFile.load\(path\).online\(\)"):  # a path is not loaded here
        OnlineMonitor(path)
    online = MonitorFile.load(path).online()
    rows = list(run.iter_rows(named=True))
    for row in rows[:20]:  # the warm-up (20 updates): no check yet
        online.update(row)
    with pytest.raises(MonitorFileError, match="entropy"):
        online.check_columns()
    with pytest.raises(MonitorFileError, match="entropy"):  # the first block after the warm-up refuses the run
        for row in rows[20:24]:
            online.update(row)
    with pytest.raises(MonitorFileError, match="not a readable"):
        MonitorFile.load(tmp_path / "missing.monitor.npz")


def test_evaluate_group_writes_self_contained_monitors(tmp_path) -> None:
    """The files ``analyze`` writes score a raw run exactly as the evaluation scored its blocks."""
    from stabilitybench.analysis.early_warning import EarlyWarningConfig, evaluate_group

    rows, frames = [], {}
    for seed in range(6):
        for pert in ("none", "lr_spike"):
            rid = f"{pert}-{seed}"
            frames[rid] = synthetic_run(100 + seed * 2 + (pert != "none"), kick_at=None if pert == "none" else 120,
                                        run_id=rid)
            ctrl = pert == "none"
            rows.append({"run_id": rid, "seed": seed, "perturbation": pert, "magnitude": 1.0 if ctrl else 10.0,
                         "duration_steps": None if ctrl else 10, "onset_step": 60, "unperturbed": ctrl,
                         "collapsed": False, "collapse_kind": None, "collapse_step": None,
                         "domain": "rl", "algo": "ppo", "env": "Synthetic", "stochasticity": "default",
                         "code_version": "git:test", "schema_version": "1.1", "steps_blake2b": f"h{rid}"})
    runs = pl.DataFrame(rows)
    arrays = {rid: pipeline_blocks(f) for rid, f in frames.items()}
    cfg = EarlyWarningConfig(detectors=("kalman",), kalman_iter=10, smooth=3, max_folds=3, with_echo=False)
    table, traces, _ = evaluate_group(runs, arrays, FEATURES, cfg, save_dir=tmp_path, block=B)
    files = sorted(tmp_path.glob("*.monitor.npz"))
    assert [f.name for f in files] == [f"kalman_fold{i}.monitor.npz" for i in range(3)]
    mf = MonitorFile.load(files[0])
    assert mf.warmup_updates == 60 and mf.block_updates == B and mf.features == FEATURES
    prov = mf.provenance
    assert prov["group"] == "rl/ppo/Synthetic/default" and prov["corpus_code_versions"] == ["git:test"]
    assert set(prov["train_run_ids"]).isdisjoint(prov["calibration_run_ids"]) and prov["fit_data_digest"]
    test_ids = table.filter(pl.col("fold") == 0)["run_id"].to_list()
    assert test_ids
    for rid in test_ids:
        want = traces.filter((pl.col("run_id") == rid) & (pl.col("fold") == 0))["score"].to_numpy()
        np.testing.assert_allclose(mf.score_run(frames[rid])["msd"].to_numpy(), want, rtol=1e-12, equal_nan=True)


def test_folds_in_parallel_processes_give_the_sequential_results(tmp_path) -> None:
    from dataclasses import replace

    from stabilitybench.analysis.early_warning import EarlyWarningConfig, evaluate_group, start_workers

    rows, arrays = [], {}
    for seed in range(6):
        for pert in ("none", "lr_spike"):
            rid = f"{pert}-{seed}"
            arrays[rid] = pipeline_blocks(synthetic_run(200 + 2 * seed + (pert != "none"),
                                                        kick_at=None if pert == "none" else 120, run_id=rid))
            rows.append({"run_id": rid, "seed": seed, "perturbation": pert, "magnitude": 10.0,
                         "duration_steps": 10, "onset_step": 60, "unperturbed": pert == "none", "collapsed": False,
                         "collapse_kind": None, "collapse_step": None})
    runs = pl.DataFrame(rows)
    cfg = EarlyWarningConfig(detectors=("kalman", "loss_spike"), kalman_iter=10, smooth=3, max_folds=3,
                             with_echo=False, n_jobs=1)
    start_workers(cfg)()  # one process: nothing to start
    one = evaluate_group(runs, arrays, FEATURES, cfg, block=B)
    start_workers(replace(cfg, n_jobs=2))()  # warmed workers serve the jobs below (dispatched longest first)
    two = evaluate_group(runs, arrays, FEATURES, replace(cfg, n_jobs=2), block=B)
    assert one[0].height == 2 * 12 and one[0].equals(two[0]) and one[1].equals(two[1])
    assert [n["fold"] for n in two[2]] == [0, 1, 2]
    assert two[2] == one[2]  # each fold's note reassembled from its per-detector parts


def test_a_deployed_monitor_never_trains_on_a_run_that_acted() -> None:
    import json

    from stabilitybench.analysis.deploy import control_runs

    acted = json.dumps({"spec": {"hparams": {"intervention": "rollback,lr_backoff", "monitor": "m.monitor.npz"}}})
    runs = pl.DataFrame({"run_id": ["a", "b", "c", "d"], "seed": [0, 1, 2, 3],
                         "perturbation": ["none", "none", "lr_spike", "none"], "collapsed": [False, False, False, True],
                         "domain": "rl", "algo": "ppo", "env": "E", "stochasticity": "default",
                         "config_json": ["{}", acted, "{}", "{}"]})
    assert control_runs(runs, "rl/ppo/E/default")["run_id"].to_list() == ["a"]


def late_loss_run(seed: int, first: int = 63, n: int = 203) -> pl.DataFrame:
    """A run whose ``loss`` is first reported at update ``first`` (as SB3's PPO reports its losses once per rollout,
    at its last update), then every 8th row."""
    run = synthetic_run(seed, n)
    return run.with_columns(pl.when(pl.col("step") >= first).then(pl.col("loss")).otherwise(None).alias("loss"))


def test_a_monitor_without_warm_up_waits_for_columns_its_training_runs_reported_late(tmp_path) -> None:
    from stabilitybench.analysis.monitor_file import fit_monitor

    mf = fit_monitor([late_loss_run(s) for s in range(4)], [late_loss_run(s) for s in range(10, 15)], FEATURES, B,
                     detector=KalmanMonitor(n_latent=2, n_iter=10, smooth=3), warmup_updates=0)
    assert mf.warmup_updates == 0 and mf.columns_by_update == 63  # loss first at update 63 (63 % 8 == 7), a block end
    loaded = MonitorFile.load(mf.save(tmp_path / "late.monitor.npz"))
    assert loaded.columns_by_update == 63
    online = loaded.online()
    assert online.check_at == 63
    for row in late_loss_run(20).iter_rows(named=True):  # the same late column: no refusal at update 3
        online.update(row)
    assert online.n_blocks_ == 203 // B
    refused = loaded.online()
    with pytest.raises(MonitorFileError, match="loss"):  # a run that never reports it is refused at update 63
        for row in synthetic_run(21).drop("loss").iter_rows(named=True):
            refused.update(row)
    assert refused.last_step_ == 63 - B


def test_a_monitor_file_without_columns_by_update_checks_at_its_warm_up(monitor_file: MonitorFile, tmp_path) -> None:
    assert monitor_file.columns_by_update is None
    assert MonitorFile.load(monitor_file.save(tmp_path / "m.monitor.npz")).online().check_at == 20
