"""Question (d), held-out generalisation: leave-one-env-out transfer and leave-one-kind-out.

Synthetic truth:

* Leave-one-env-out. A monitor fitted and calibrated on one synthetic env's controls is scored on a second env
  whose controls differ by a mean shift of 2 SD in one feature. Its false-alarm rate on the target's controls is
  then far above the 5% it was calibrated to; the evaluation must report the rate measured on the target (matching
  a direct simulation of fresh target controls under the same fitted monitor and threshold), not the source's 5%,
  and make no conformal claim for it. Recalibrated on the target's own controls the rate is back near 5%.
* Leave-one-kind-out. Nothing fitted may depend on the held-out kind's runs: with that kind's telemetry perturbed
  wildly, every saved monitor (standardisation, dynamics, threshold) and every other run's score is unchanged; the
  (b) kick_size reference, refitted without the kind, does not move when that kind's labels flip (the main
  evaluation's leave-one-cell-out model does).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stabilitybench.analysis import questions
from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.data import block_size
from stabilitybench.analysis.early_warning import (
    EarlyWarningConfig,
    _calibrated,
    evaluate_group,
    evaluate_transfer,
    make_detector,
    transfer_folds,
)
from stabilitybench.analysis.groups import FeatureSet, GroupTelemetry, leave_one_kind_out_check
from stabilitybench.analysis.results import conform
from stabilitybench.analysis.stages import (
    held_out_headline,
    held_out_references,
    held_out_rows,
    leave_one_env_out_entry,
    leave_one_kind_out_entry,
    measured_fpr,
)
from stabilitybench.analysis.summary import Status, StatusKind, to_json

T, B, ONSET, PHI = 80, 10, 300, 0.5
SD = 1 / np.sqrt(1 - PHI**2)  # stationary SD of the AR(1) features
FEATURES = ["a", "b", "c"]
CFG = AnalysisConfig(early_warning=EarlyWarningConfig(detectors=("kalman",), kalman_iter=10, max_folds=3, n_jobs=1,
                                                      with_echo=False, n_boot=100), n_boot=100)


def _arrays(rng: np.random.Generator, shift: float = 0.0, kick: float = 0.0) -> tuple[np.ndarray, ...]:
    """One run's blocks ``(steps (T,), X (T, 3), nonfinite (T,))``: AR(1) features, feature 0 shifted by ``shift``
    stationary SDs, every feature moved by ``kick`` SDs for 10 blocks from onset."""
    e = rng.normal(size=(T, 3))
    X = np.zeros((T, 3))
    for t in range(T):
        X[t] = (PHI * X[t - 1] if t else 0.0) + e[t]
    X[:, 0] += shift * SD
    steps = np.arange(1, T + 1) * B - 1
    X[(steps >= ONSET) & (steps < ONSET + 10 * B)] += kick * SD
    return steps, X, np.zeros(T, bool)


def _env(tag: str, n_controls: int, shift: float, seed: int, n_kicked: int = 0) -> tuple[pl.DataFrame, dict]:
    """A synthetic env: ``n_controls`` controls (seeds 0..), then ``n_kicked`` lr_spike runs (seeds 0..), half of
    them collapsing 200 updates after onset."""
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for i in range(n_controls + n_kicked):
        ctrl = i < n_controls
        rid = f"{tag}-{'none' if ctrl else 'lr'}-{i}"
        col = not ctrl and i % 2 == 0
        arrays[rid] = _arrays(rng, shift, 0.0 if ctrl else 3.0)
        rows.append({"run_id": rid, "seed": i if ctrl else i - n_controls, "perturbation": "none" if ctrl else
                     "lr_spike", "magnitude": 1.0 if ctrl else 5.0, "duration_steps": 1 if ctrl else 100,
                     "unperturbed": ctrl, "collapsed": col, "collapse_kind": "performance" if col else "none",
                     "collapse_step": ONSET + 200 if col else None, "onset_step": ONSET, "domain": "rl"})
    return pl.DataFrame(rows), arrays


def _tag(rows: pl.DataFrame, group: str) -> pl.DataFrame:
    return rows.with_columns(pl.lit(group).alias("group"),
                             pl.concat_str([pl.lit(group + "|seed="), pl.col("seed").cast(pl.String)]).alias("cluster"))


@pytest.fixture(scope="module")
def shifted() -> dict:
    """Source env S (60 controls), target env T: 60 controls shifted by 2 SD in feature 0, plus 12 kicked runs."""
    s_runs, s_arr = _env("S", 60, 0.0, 1)
    t_runs, t_arr = _env("T", 60, 2.0, 2, n_kicked=12)
    rows, traces, notes = evaluate_transfer(t_runs, t_arr, [("S", s_runs, s_arr)], FEATURES, CFG.early_warning,
                                            block=B)
    return {"s": (s_runs, s_arr), "t": (t_runs, t_arr), "rows": rows, "traces": traces, "notes": notes}


def _direct_fpr(shifted: dict, shift: float, n_per_fold: int = 200) -> float:
    """The transferred monitor's false-alarm rate on fresh target controls, simulated directly: per fold the
    detector fitted on the same source training controls and calibrated on the same source calibration controls."""
    s_runs, s_arr = shifted["s"]
    t_runs, _ = shifted["t"]
    ecfg = CFG.early_warning
    rng = np.random.default_rng(12345)
    hits = n = 0
    for f in transfer_folds(t_runs["seed"].to_list(), [("S", s_runs, s_arr)], ecfg):
        det = make_detector("kalman", FEATURES, ecfg)
        det.fit([s_arr[r][1] for r in f["source_train"]])
        conf = _calibrated(det, [0, 1, 2], [(s_arr[r], ONSET) for r in f["source_calibration"]], ecfg.fpr)
        for _ in range(n_per_fold):
            st, X, _ = _arrays(rng, shift)
            p = conf.p_value(det.score(X))
            hits += bool(((st >= ONSET) & (p <= conf.alpha_used_ + 1e-12)).any())
            n += 1
    return hits / n


def test_transfer_folds_fit_on_the_source_only_and_test_every_target_run_once(shifted: dict) -> None:
    rows, notes = shifted["rows"], shifted["notes"]
    t_runs, _ = shifted["t"]
    for cal in ("source", "target"):
        r = rows.filter(pl.col("calibrated_on") == cal)
        assert sorted(r["run_id"].to_list()) == sorted(t_runs["run_id"].to_list())  # every target run, once
    assert set(rows["source_envs"].unique().to_list()) == {"S"}
    for n in notes:  # 3 folds: the source's 20-seed chunks train (20) and calibrate (20); the target calibrates on 20
        assert n["n_train_runs"] == 20 and n["n_calibration_runs_source"] == 20
        assert n["n_calibration_runs_target"] == 20 and n["source_folds"] == {"S": n["fold"]}
        d = n["detectors"]["kalman"]
        assert d["n_calibration_source"] == 20 and d["threshold_source"] != d["threshold_target"]
    src = rows.filter(pl.col("calibrated_on") == "source")
    assert (src["n_calibration"] == 20).all()


def test_transfer_reports_the_shifted_targets_fpr_not_the_sources_5pct(shifted: dict) -> None:
    """Synthetic truth: a 2 SD shift of one feature in the target's controls."""
    rows = shifted["rows"]
    fpr = CFG.early_warning.fpr
    src = measured_fpr(rows.filter(pl.col("calibrated_on") == "source"), fpr, "source")
    tgt = measured_fpr(rows.filter(pl.col("calibrated_on") == "target"), fpr, "target")
    direct = _direct_fpr(shifted, 2.0)
    assert src["n"] == 60 and src["from"].startswith("folds with >= 19")
    # honest: the measured rate on the target's controls, far above the calibrated 5% ...
    assert src["ci_low"] > 3 * fpr and src["value"] > 0.4
    # ... and the rate a direct simulation of the same monitor on fresh target controls gives (n = 600)
    assert src["ci_low"] <= direct <= src["ci_high"]
    assert abs(src["value"] - direct) < 0.15
    # recalibrated on the target's own controls (exchangeable with its test controls) the 5% is back
    assert tgt["ci_low"] <= fpr <= tgt["ci_high"] and tgt["ci_high"] < src["ci_low"]


def test_smaller_shift_matches_the_direct_simulation() -> None:
    """At a 1 SD shift the rate is moderate (not saturated) and still the simulated one."""
    s_runs, s_arr = _env("S", 60, 0.0, 1)
    t_runs, t_arr = _env("T", 60, 1.0, 3)
    rows, _, _ = evaluate_transfer(t_runs, t_arr, [("S", s_runs, s_arr)], FEATURES, CFG.early_warning, block=B)
    src = measured_fpr(rows.filter(pl.col("calibrated_on") == "source"), 0.05, "source")
    direct = _direct_fpr({"s": (s_runs, s_arr), "t": (t_runs, t_arr)}, 1.0)
    assert 0.05 < direct < 0.5
    assert src["ci_low"] <= direct <= src["ci_high"]


def test_leave_one_env_out_entry_reports_the_target_rate_without_a_conformal_claim(shifted: dict) -> None:
    t_runs, t_arr = shifted["t"]
    group = "rl/ppo/T/default"
    ew, traces, _ = evaluate_group(t_runs, t_arr, FEATURES, CFG.early_warning, block=B)  # the in-env evaluation
    s_runs, s_arr = shifted["s"]
    ew_s, _, _ = evaluate_group(s_runs, s_arr, FEATURES, CFG.early_warning, block=B)
    ew_all = pl.concat([_tag(ew, group), _tag(ew_s, "rl/ppo/S/default")])
    entry = leave_one_env_out_entry(ew_all, traces, _tag(shifted["rows"], group), shifted["traces"],
                                    [{"group": group, "trained_on_envs": ["S"]}], {}, CFG)
    assert Status.from_json(entry).ok
    det = entry["by_target"][group]["detectors"]["kalman"]
    src, tgt, own = (det[k] for k in ("transfer_source_calibrated", "transfer_target_calibrated", "in_env"))
    direct = _direct_fpr(shifted, 2.0)
    f = src["fpr_target_controls"]
    assert f["n"] == 60 and f["ci_low"] > 0.15 and f["ci_low"] <= direct <= f["ci_high"]
    assert "not exchangeable" in f["calibrated_on"]
    claim = Status.from_json(src["a"]["fpr_held_out_controls"]["claim"])
    assert claim.kind is StatusKind.REFUSED and "no conformal bound" in claim.reason
    assert Status.from_json(tgt["a"]["fpr_held_out_controls"]["claim"]).ok  # 20 target calibration controls
    for e in (tgt, own):
        assert e["fpr_target_controls"]["ci_low"] <= 0.05 <= e["fpr_target_controls"]["ci_high"]
    # (a): the 6 collapsed kicked runs against the 60 controls, in every setting; paired delta vs in-env present
    assert src["a"]["n_collapsed"] == own["a"]["n_collapsed"] == 6 and src["a"]["n_controls"] == 60
    assert src["delta_vs_in_env"]["a"]["n"] == 66
    # the results table holds the same numbers, under its declared schema
    held = {"leave_one_env_out": entry, "leave_one_kind_out": Status(StatusKind.NOT_TESTABLE, "one kind").to_json()}
    head, caveats = held_out_headline(to_json(held))
    assert head["leave_one_env_out"][group]["kalman"]["transfer_source_calibrated"]["fpr_target_controls"]["value"] \
        == pytest.approx(f["value"])
    assert len(caveats) == 1 and "calibrated on S" in caveats[0] and "not the 0.05" in caveats[0]
    table = held_out_rows(to_json(held))
    conform(table, "early_warning_held_out")
    r = table.filter(pl.col("setting") == "transfer_source_calibrated")
    assert r.height == 1 and r["fpr_target_controls.value"][0] == pytest.approx(f["value"])
    assert r["a.fpr_held_out_controls.claim.status"][0] == "refused"


# ------------------------------------------------------------------------------------------- leave-one-kind-out
def _group(seed: int = 0, wild: bool = False) -> tuple[pl.DataFrame, dict]:
    """One matched group: 30 controls, 12 lr_spike and 12 mass_shift runs (seeds 0..29). ``wild``: the mass_shift
    runs' telemetry multiplied by 1000 and offset by 50, and their outcomes flipped."""
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for kind, n in (("none", 30), ("lr_spike", 12), ("mass_shift", 12)):
        for i in range(n):
            rid = f"{kind}-{i}"
            st, X, nf = _arrays(rng, 0.0, 0.0 if kind == "none" else 2.0)
            col = kind != "none" and i % 3 == 0
            if wild and kind == "mass_shift":
                X, col = 1000 * X + 50, not col
            arrays[rid] = (st, X, nf)
            rows.append({"run_id": rid, "seed": i, "perturbation": kind, "magnitude": 1.0 if kind == "none" else 4.0,
                         "duration_steps": 1 if kind == "none" else 100, "unperturbed": kind == "none",
                         "collapsed": col, "collapse_kind": "performance" if col else "none",
                         "collapse_step": ONSET + 300 if col else None, "onset_step": ONSET, "domain": "rl"})
    return pl.DataFrame(rows), arrays


def test_no_fitted_quantity_sees_the_held_out_kinds_telemetry(tmp_path: Path) -> None:
    """Synthetic truth: the held-out kind's telemetry perturbed wildly changes no saved monitor and no other score."""
    cfg = replace(CFG.early_warning, detectors=("kalman", "pca_recon"))
    out = {}
    for wild in (False, True):
        runs, arrays = _group(wild=wild)
        rows, _, notes = evaluate_group(runs, arrays, FEATURES, cfg, save_dir=tmp_path / str(wild), block=B)
        out[wild] = (rows, notes)
    for (n0, n1) in zip(out[False][1], out[True][1], strict=True):
        for det in ("kalman", "pca_recon"):
            assert n0["detectors"][det]["threshold"] == n1["detectors"][det]["threshold"]
    saved = sorted(p.name for p in (tmp_path / "False").iterdir())
    assert saved and saved == sorted(p.name for p in (tmp_path / "True").iterdir())
    for name in saved:  # standardisation, dynamics and threshold of every fold's Kalman monitor
        a, b = np.load(tmp_path / "False" / name), np.load(tmp_path / "True" / name)
        arrays0 = [k for k in a.files if a[k].dtype.kind == "f"]
        assert "mean_" in arrays0 or any("mean" in k for k in arrays0)
        for k in arrays0:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
    keep = pl.col("perturbation") != "mass_shift"
    cols = ["run_id", "detector", "detection_score", "prediction_excess", "first_alarm_step"]
    assert out[False][0].filter(keep).select(cols).sort(cols[:2]).equals(out[True][0].filter(keep).select(cols)
                                                                           .sort(cols[:2]))
    moved = out[False][0].filter(~keep)["detection_score"].to_numpy() != out[True][0].filter(~keep)[
        "detection_score"].to_numpy()
    assert moved.any()  # the wild runs' own scores do move: the test has teeth


def _pset(rng: np.random.Generator, flip: str | None = None) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """A prediction set: 3 kinds x 2 magnitudes x 30 runs, collapse more likely with a larger kick; ``flip``: that
    kind's labels inverted and its kicks scaled by 100."""
    rows, kick = [], {}
    for kind in ("lr_spike", "mass_shift", "weight_noise"):
        for mag in (2.0, 8.0):
            for i in range(30):
                k = rng.normal(size=3) + (1.0 if mag > 2 else 0.0)
                y = bool(k.sum() + rng.normal() > 1.5)
                if kind == flip:
                    y, k = not y, 100 * k
                rid = f"{kind}-{mag:g}-{i}"
                kick[rid] = k
                rows.append({"run_id": rid, "seed": i, "group": "rl/ppo/E/default", "perturbation": kind,
                             "magnitude": mag, "duration_steps": 100, "label": y})
    return pl.DataFrame(rows), kick


def test_kick_reference_is_refitted_without_the_held_out_kind() -> None:
    base, kick = _pset(np.random.default_rng(0))
    wild, kick_w = _pset(np.random.default_rng(0), flip="mass_shift")
    kinds = np.array(base["perturbation"].to_list())
    other = kinds != "mass_shift"
    held, held_w = held_out_references(base, kick, kinds), held_out_references(wild, kick_w, kinds)
    # the other kinds' runs are scored by models that never saw mass_shift... but mass_shift's own runs are scored by
    # the model of the other kinds, whatever mass_shift's labels and kicks are: refit it directly and compare
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    K = np.array([kick_w[r] for r in wild["run_id"].to_list()])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(K[other], np.array(wild["label"].to_list())[other])
    np.testing.assert_allclose(held_w[1]["kick_size"][~other], model.predict_proba(K[~other])[:, 1])
    # flipping mass_shift's labels (same kicks) leaves its held-out scores unchanged ...
    flipped = base.with_columns(pl.when(pl.col("perturbation") == "mass_shift").then(~pl.col("label"))
                                .otherwise(pl.col("label")).alias("label"))
    np.testing.assert_allclose(held_out_references(flipped, kick, kinds)[1]["kick_size"][~other],
                               held[1]["kick_size"][~other])
    # ... whereas the main evaluation's leave-one-cell-out model, which sees mass_shift's other cell, moves
    loco, loco_f = questions.references(base, kick)[1], questions.references(flipped, kick)[1]
    assert np.abs(loco["kick_size"][~other] - loco_f["kick_size"][~other]).max() > 0.05


def test_leave_one_kind_out_entry_uses_the_held_out_reference_and_shows_in_sample() -> None:
    runs, arrays = _group()
    cfg = CFG
    rows, traces, _ = evaluate_group(runs, arrays, FEATURES, cfg.early_warning, block=B)
    ew = _tag(rows, "rl/ppo/E/default")
    rng = np.random.default_rng(1)
    kick = {r: rng.normal(size=3) for r in runs["run_id"].to_list()}
    checks = [{"domain": "rl", "algo": "ppo", "kind": k, "monitors": "reused", "reason": "test"}
              for k in ("lr_spike", "mass_shift")]
    in_sample = {"detection": {"kalman": questions.detection(ew, 0.05, 50)}}
    entry = leave_one_kind_out_entry(ew, traces, kick, checks, cfg, in_sample)
    assert Status.from_json(entry).ok and set(entry["by_kind"]) == {"lr_spike", "mass_shift"}
    k = entry["by_kind"]["lr_spike"]["detectors"]["kalman"]
    assert k["a"]["n_collapsed"] == 4 and k["a"]["n_controls"] == 30  # 12 runs, every third collapses
    assert entry["in_sample"]["kalman"]["a"]["n_collapsed"] == 8
    assert "b_kick_size_leave_one_cell_out" in k and "kick_size" in k["b"]["delta_auroc"]
    table = held_out_rows(to_json({"leave_one_kind_out": entry,
                                   "leave_one_env_out": Status(StatusKind.NOT_TESTABLE, "one env").to_json()}))
    conform(table, "early_warning_held_out")
    assert set(table["setting"].drop_nulls().to_list()) >= {"in_sample", "held_out"}


def _fs(read: list[str], kept: list[str]) -> FeatureSet:
    return FeatureSet(read, kept, [], [c for c in kept if c != "lr"])


def test_feature_screen_check_reuses_refits_or_refuses() -> None:
    rng = np.random.default_rng(0)
    runs = pl.DataFrame({"run_id": [f"r{i}" for i in range(6)], "unperturbed": [True] * 4 + [False] * 2,
                         "perturbation": ["none"] * 4 + ["lr_spike"] * 2, "n_updates": [800] * 6,
                         "planned_updates": [800] * 6})
    X = rng.normal(size=(40, 3))
    blocks = {r: (np.arange(40), np.c_[X[:, 0], X[:, 1], X[:, 0] + 1e-6 * rng.normal(size=40)] + i, np.zeros(40, bool))
              for i, r in enumerate(runs["run_id"].to_list())}
    cfg = AnalysisConfig()
    read = [({"domain": "rl", "algo": "ppo", "env": "E", "stochasticity": "default"}, runs,
             GroupTelemetry(block_size(800, cfg.features), {}, {}, blocks))]
    fs = _fs(["a", "b", "c"], ["a", "b"])  # c is a copy of a (redundant)
    same = leave_one_kind_out_check("lr_spike", ["a", "b", "c"], fs, runs, read, cfg)
    assert same["monitors"] == "reused" and same["features_same"]
    no_c = leave_one_kind_out_check("lr_spike", ["a", "b"], fs, runs, read, cfg)
    assert no_c["monitors"] == "reused" and not no_c["features_same"]  # c was removed as redundant anyway
    no_b = leave_one_kind_out_check("lr_spike", ["a", "c"], fs, runs, read, cfg)
    assert no_b["monitors"] == "refit" and "b" not in no_b["kept"]
    new = leave_one_kind_out_check("lr_spike", ["a", "b", "c", "d"], fs, runs, read, cfg)
    assert new["monitors"] == "not_testable" and "d" in new["reason"]
    longest = runs.with_columns(pl.when(pl.col("perturbation") == "lr_spike").then(1600).otherwise(800)
                                .alias("n_updates"))
    read_l = [(read[0][0], longest, GroupTelemetry(block_size(1600, cfg.features), {}, {}, blocks))]
    blocks_change = leave_one_kind_out_check("lr_spike", ["a", "b", "c"], fs, longest, read_l, cfg)
    assert not blocks_change["blocks_same"] and blocks_change["monitors"] == "not_testable"


@pytest.mark.slow
def test_pipeline_writes_question_d(tmp_path: Path) -> None:
    """End to end on two synthetic envs (tests/test_analysis_pipeline's corpus): summary.json holds (d)."""
    import json

    from test_analysis_pipeline import FAST, make_corpus

    from stabilitybench.analysis.pipeline import run_analysis
    from stabilitybench.analysis.results import load_table
    from stabilitybench.reports.data import load
    from stabilitybench.reports.tables import held_out_table
    from stabilitybench.reports.text import Source

    corpus = make_corpus(tmp_path / "corpus", envs=("Toy-v0", "Other-v0"))
    cfg = replace(FAST, early_warning=replace(FAST.early_warning, detectors=("kalman", "pca_recon"), n_jobs=1))
    summary = run_analysis(corpus, tmp_path / "results", cfg, update_corpus=False)
    held = json.loads((tmp_path / "results" / "summary.json").read_text())["early_warning"]["held_out"]
    assert summary["questions"]["d"]["n_runs"] == 19
    loeo = held["leave_one_env_out"]
    assert Status.from_json(loeo).ok and set(loeo["by_target"]) == {"rl/ppo/Toy-v0/default", "rl/ppo/Other-v0/default"}
    for target, e in loeo["by_target"].items():
        assert e["sources"] == (["Other-v0"] if "Toy" in target else ["Toy-v0"])
        assert set(e["detectors"]["kalman"]) == {"in_env", "transfer_target_calibrated", "transfer_source_calibrated"}
        assert e["detectors"]["kalman"]["transfer_source_calibrated"]["a"]["n_collapsed"] == 3
    kind = held["leave_one_kind_out"]
    assert [c["monitors"] for c in kind["fit_checks"]] == ["reused"]  # lr_spike: nothing fitted reads it
    assert kind["by_kind"]["lr_spike"]["detectors"]["kalman"]["a"]["n_collapsed"] == 6
    assert summary["early_warning"]["leave_one_env_out"]["results"].startswith("early_warning.held_out")
    runs = load_table(tmp_path / "results", "early_warning_loeo_runs")
    assert runs is not None and set(runs["calibrated_on"].unique().to_list()) == {"source", "target"}
    assert set(runs["detector"].unique().to_list()) == {"kalman", "kalman+echo", "pca_recon"}  # no no_kick here
    assert runs.filter(pl.col("calibrated_on") == "source").height == 19 * 3  # every run once per detector
    conform(held_out_rows(held), "early_warning_held_out")
    table = held_out_table(Source(load(tmp_path / "results").summary))
    assert table is not None and any("calibrated on Toy-v0" in str(r[1]) for r in table.rows)


def test_a_kind_whose_absence_changes_the_columns_is_refitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The glue of stage 2: the feature screen without mass_shift drops column c, so mass_shift's folds are refitted
    on the columns kept without it (and lr_spike's are reused); the (d) entry then reads the refitted rows."""
    from stabilitybench.analysis import groups as groups_mod

    runs, arrays = _group()
    runs = runs.with_columns(pl.lit("none").alias("arm"), pl.lit("ppo").alias("algo"), pl.lit("E").alias("env"),
                             pl.lit("default").alias("stochasticity"), pl.lit(T * B).alias("n_updates"),
                             pl.lit(T * B).alias("planned_updates"))
    blocks = {r: (st, np.c_[X, np.full(T, -3.5)], nf) for r, (st, X, nf) in arrays.items()}  # + a constant lr
    cfg = replace(CFG, features=replace(CFG.features, block_updates=B))
    key = {"domain": "rl", "algo": "ppo", "env": "E", "stochasticity": "default"}
    read = [(key, runs, GroupTelemetry(B, {}, {}, blocks))]
    fs = groups_mod.select_features(runs, read, ["a", "b", "c", "lr"])
    assert fs.kept == ["a", "b", "c", "lr"]
    evaluated = [(key, runs, {r: (st, X[:, :4], nf) for r, (st, X, nf) in blocks.items()}, B)]
    monkeypatch.setattr(groups_mod, "feature_columns", lambda corpus, r, c: ["a", "b"] if "mass_shift" not in
                        r["perturbation"].to_list() else ["a", "b", "c"])
    acc = groups_mod._Collector()
    groups_mod._leave_one_kind_out(None, {"domain": "rl", "algo": "ppo"}, runs, read, fs, evaluated, cfg,
                                   lambda m: None, acc)
    by_kind = {c["kind"]: c for c in acc.loko_checks}
    assert by_kind["lr_spike"]["monitors"] == "reused" and by_kind["mass_shift"]["monitors"] == "refit"
    assert by_kind["mass_shift"]["kept"] == ["a", "b", "lr"]
    refit = pl.concat(acc.loko_runs)
    assert set(refit["held_out_kind"].unique().to_list()) == {"mass_shift"}
    assert set(refit["perturbation"].unique().to_list()) == {"none", "mass_shift"}
    main, traces, _ = evaluate_group(runs, evaluated[0][2], fs.kept, cfg.early_warning, block=B)
    ew = _tag(main, "rl/ppo/E/default")  # the group label as stage 2 writes it: domain/algo/env/stochasticity
    checks = [{**c, "domain": "rl", "algo": "ppo"} for c in acc.loko_checks]
    entry = leave_one_kind_out_entry(ew, traces, {}, checks, cfg, {}, refit, pl.concat(acc.loko_scores))
    got = entry["by_kind"]["mass_shift"]
    assert got["monitors"] == {"rl/ppo": "refit"}
    kal = refit.filter(pl.col("detector") == "kalman")
    expect = questions.detection(kal.with_columns(pl.col("cluster").alias("seed")), 0.05, CFG.early_warning.n_boot)
    assert got["detectors"]["kalman"]["a"]["auroc"]["value"] == pytest.approx(expect["auroc"]["value"])
    in_main = main.filter((pl.col("detector") == "kalman") & (pl.col("perturbation") != "lr_spike"))
    assert not np.allclose(kal.sort("run_id")["detection_score"].to_numpy(),  # the refit's scores, not the main's
                           in_main.sort("run_id")["detection_score"].to_numpy())
    assert entry["by_kind"]["lr_spike"]["monitors"] == {"rl/ppo": "reused"}
