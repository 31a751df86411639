"""End to end: a synthetic corpus written through data_schema, analysed by run_analysis and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stabilitybench.analysis.early_warning import EarlyWarningConfig, seed_folds
from stabilitybench.analysis.pipeline import AnalysisConfig, run_analysis
from stabilitybench.analysis.summary import QUESTIONS, DetectorKey, from_document
from stabilitybench.data_schema import (
    EVENTS_SCHEMA,
    STEPS_SCHEMA,
    events_path,
    read_table,
    steps_path,
    write_manifest,
    write_table,
)

T, ONSET, DUR = 600, 180, 30


def _run(corpus: Path, seed: int, kind: str, magnitude: float, nonfinite_at: int | None = None,
         env: str = "Toy-v0") -> dict:
    rng = np.random.default_rng(1000 * seed + int(magnitude) + (7 if kind == "none" else 0) + 31 * len(env))
    rid = f"{kind}-{magnitude:g}-{seed}" + ("" if env == "Toy-v0" else f"-{env}")
    steps = np.arange(T if nonfinite_at is None else nonfinite_at + 1)
    n = steps.size
    perf = np.linspace(-300, -100, T)[:n] + rng.normal(0, 5, n)
    grad = np.exp(0.3 * rng.normal(size=n)) * (1 + 0.5 * np.sin(steps / 40))
    upd = 0.01 * grad * np.exp(0.1 * rng.normal(size=n))
    coh = 0.2 + 0.05 * rng.normal(size=n)
    pnorm = 10 + np.cumsum(upd)
    active = (steps >= ONSET) & (steps < ONSET + DUR) & (kind != "none")
    if kind != "none" and magnitude >= 100:  # a destructive spike: telemetry jumps, performance collapses
        grad[active] *= 20
        upd[active] *= magnitude
        coh[steps >= ONSET] -= 0.15
        perf[steps >= ONSET + 40] -= 300
    loss = np.full(n, np.nan)
    loss[19::20] = (np.log(grad) + rng.normal(0, 0.1, n))[19::20]
    if nonfinite_at is not None:
        grad[-1] = np.nan
    row = {
        "run_id": rid, "domain": "rl", "algo": "ppo", "env": env, "seed": seed, "perturbation": kind,
        "dimension": "none" if kind == "none" else "optimization", "magnitude": magnitude, "onset_frac": 0.3,
        "onset_step": ONSET, "duration_steps": DUR if kind != "none" else 1, "stochasticity": "default",
        "total_steps": T * 10, "planned_updates": T, "n_updates": n,
        "stop_reason": "nonfinite" if nonfinite_at is not None else "completed", "status": "ok",
        "code_version": "test", "schema_version": "1.0", "config_json": "{}",
    }
    table = pa.table({
        "run_id": [rid] * n, "step": steps, "samples_seen": steps * 10, "wall_time_s": steps * 0.01,
        "lr": np.where(active, 3e-4 * magnitude, 3e-4), "loss": pa.array(loss, from_pandas=True),
        "grad_norm": pa.array(grad, from_pandas=False), "grad_coherence": coh, "update_norm": upd,
        "param_norm": pnorm, "perturbation_active": active, "performance": perf, "domain": ["rl"] * n,
        "algo": ["ppo"] * n, "env": [env] * n, "perturbation": [kind] * n,
    })
    write_table(table, steps_path(corpus, row), STEPS_SCHEMA)
    ev = [] if nonfinite_at is None else [{"run_id": rid, "step": nonfinite_at, "event": "nonfinite"}]
    write_table(pa.Table.from_pylist(ev, schema=EVENTS_SCHEMA), events_path(corpus, rid), EVENTS_SCHEMA)
    return row


def make_corpus(root: Path, seeds: tuple[int, ...] = (0, 1, 2), envs: tuple[str, ...] = ("Toy-v0",)) -> Path:
    rows = []
    for env in envs:
        for s in seeds:
            rows += [_run(root, s, "none", 1.0, env=env), _run(root, s, "lr_spike", 1.0, env=env),
                     _run(root, s, "lr_spike", 100.0, env=env)]
    rows.append(_run(root, seeds[0], "lr_spike", 1000.0, nonfinite_at=205))
    write_manifest(root, rows)
    return root


FAST = AnalysisConfig(early_warning=EarlyWarningConfig(gru_epochs=40, kalman_iter=15, n_boot=200), n_null=5,
                      n_boot=200)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    corpus = make_corpus(root / "corpus")
    out = root / "results"
    summary = run_analysis(corpus, out, FAST)
    return corpus, out, summary


def test_runs_table_conforms_and_outcomes_are_right(analysed) -> None:
    corpus, out, _ = analysed
    runs = pl.from_arrow(read_table(out / "runs.parquet", "runs"))
    assert runs.height == 10
    assert (corpus / "runs.parquet").exists()  # DESIGN: analysis writes <corpus>/runs.parquet
    got = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    for s in (0, 1, 2):
        assert got[f"lr_spike-100-{s}"]["collapsed"]
        # offline date (centred smoothing over 2% = 12 updates): within half a window of the drop at ONSET + 40
        r = got[f"lr_spike-100-{s}"]
        assert ONSET + 34 <= r["collapse_step"] <= ONSET + 46 and r["collapse_kind"] == "performance"
        assert r["collapse_confirmed_step"] >= ONSET + DUR + 60  # stays below W = 60 updates past the window
        assert not got[f"none-1-{s}"]["collapsed"] and got[f"none-1-{s}"]["censored"]
        assert not got[f"lr_spike-1-{s}"]["collapsed"]
    nf = got["lr_spike-1000-0"]
    assert nf["collapsed"] and nf["collapse_step"] == 205 and nf["collapse_time"] == 205 - ONSET
    assert nf["collapse_kind"] == "nonfinite" and nf["survival_time"] == 205 - ONSET
    ctrl = got["none-1-0"]
    assert ctrl["collapse_time"] is None and ctrl["survival_time"] == T - 1 - ONSET  # null when censored


def test_summary_has_every_headline_number_with_n(analysed) -> None:
    _, out, summary = analysed
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["n_runs"] == 10
    pca = summary["pca"]["rl/ppo"]["all_runs"]
    assert pca["n_components_90"]["n"] == 10 and pca["null_n_components_90"]["value"] >= pca["n_components_90"]["value"]
    det = summary["early_warning"]["detection"]
    for name in ("kalman", "kalman+echo", "gru", "gru+echo", "grad_norm_z", "loss_spike", "ews_var_ac1", "pca_recon"):
        m = det[name]
        # 3 performance collapses (x100) vs 3 held-out controls; the non-finite collapse on its own line
        # one calibration control per fold (< 19): every alarm-based number is reported apart, under small_folds
        small = m["small_folds"]
        assert m["auroc"]["n"] == 6 and small["frac_collapses_preceded"]["n"] == 3 and small["nonfinite"]["n"] == 1
        assert m["frac_collapses_preceded"].get("n", 0) == 0 and small["n_folds"] == small["n_folds_total"]
        fpr = small["fpr_held_out_controls"]
        assert fpr["n_test"] == 3 and fpr["n_calibration"] == 1 and fpr["claim"]["status"] == "refused"
        assert fpr["guaranteed_fpr_bound"] == 0.5  # one calibration run: the attainable level is 1/2
        assert small["median_lead_updates"]["measured_from"].startswith("collapse_step")
        pred = summary["early_warning"]["prediction"][name]
        # 7 perturbed test runs: the non-finite one (update 205) collapsed before the landmark (180 + 30 + 1 block)
        assert pred["n_pos"] + pred["n_neg"] + pred["n_collapsed_before_landmark"] == 7
        assert pred["n_collapsed_before_landmark"] == 1 and "runs_needed" in pred
        assert pred["auroc_stratified"]["status"] == "not_testable"
        assert pred["auroc_stratified"]["reason"].startswith("n too small")
    # the destructive spike is obvious to the monitor: every collapse is preceded by an alarm
    assert det["kalman"]["small_folds"]["frac_collapses_preceded"]["value"] == 1.0
    assert det["perturbation_on"]["auroc"]["value"] == 1.0  # detection vs controls is trivial for the kick itself
    refs = summary["early_warning"]["prediction_references"]
    assert set(refs) == {"config_only", "kick_size", "perturbation_on"}
    assert refs["perturbation_on"]["auroc"]["value"] == 0.5
    assert set(summary["questions"]) == set(QUESTIONS) and "figures" not in summary  # the report owns figures
    for k, q in summary["questions"].items():
        assert q["question"] == QUESTIONS[k] and q["n_runs"] >= 0, k
    assert summary["questions"]["intervention"]["n_runs"] == 0  # no run acted on an alarm
    assert summary["features"]["rl/ppo"]["echo_columns"] == ["lr", "update_norm", "param_norm"]
    assert summary["collapse"]["rule_false_collapse_rate_unperturbed"]["n_test"] == 3
    assert summary["survival"]["cox"]["population"] == "perturbed runs only, event-free after the landmark"
    assert summary["regularities"]["stochasticity_buffer"]["status"] == "not_testable"
    assert on_disk["summary_version"] == 2
    by_detector = from_document(on_disk).by_detector()  # keyed by (detector, subset), one record each
    assert set(by_detector) == {DetectorKey(d, "all") for d in det if d != "perturbation_on"}
    assert {r["config"] for r in summary["collapse"]["dose_response"]} >= {"none", "lr_spike x100 (30 upd)"}
    for name in ("km.parquet", "logrank.parquet", "early_warning_scores.parquet", "pca_trajectories.parquet",
                 "dose_response.parquet", "dissociation.parquet"):
        assert (out / name).exists(), name


def test_seed_folds_rotate_and_never_overlap() -> None:
    folds = seed_folds([2, 0, 1, 1])
    assert len(folds) == 3
    assert sorted(s for f in folds for s in f["test"]) == [0, 1, 2]
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and not set(f["calibration"]) & set(f["test"])
        assert not set(f["train"]) & set(f["calibration"]) and f["train"]
    assert seed_folds([0, 1]) == []
    big = seed_folds(list(range(10)), max_folds=5)
    assert len(big) == 5 and all(len(f["train"]) == 6 for f in big)


def test_one_seed_degrades_with_a_message(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", seeds=(0,))
    cfg = replace(FAST, early_warning=replace(FAST.early_warning, detectors=("kalman",)))
    summary = run_analysis(corpus, tmp_path / "results", cfg, update_corpus=False)
    assert summary["early_warning"]["status"] == "not_testable" and "3 seeds" in summary["early_warning"]["reason"]
    assert not (corpus / "runs.parquet").exists()
    assert (tmp_path / "results" / "summary.json").exists()


def _cli(*args: str, cwd: Path, module: str = "stabilitybench.analysis") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_analyze_end_to_end_and_user_error(tmp_path: Path) -> None:
    """``python -m stabilitybench.analysis`` (the same ``analyze`` function ``stabilitybench analyze`` mounts)."""
    corpus = make_corpus(tmp_path / "corpus")
    res = _cli("--corpus", str(corpus), "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "analysed 10 runs" in res.stdout
    assert json.loads((tmp_path / "res" / "summary.json").read_text())["n_runs"] == 10
    bad = _cli("--corpus", str(tmp_path / "nope"), cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no corpus" in lines[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _cli("--corpus", str(empty), cwd=tmp_path)
    assert bad.returncode == 2 and "no manifest.parquet, so not a corpus" in bad.stderr
    assert list(empty.iterdir()) == [] and not (tmp_path / "results").exists()  # refused before writing anything


def test_stabilitybench_mounts_analyze(tmp_path: Path) -> None:
    """The console entry point dispatches ``analyze`` (one-line user errors, exit 2)."""
    bad = _cli("analyze", "--corpus", str(tmp_path / "nope"), cwd=tmp_path, module="stabilitybench")
    assert bad.returncode == 2, bad.stderr
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no corpus" in lines[0]


def test_lazy_feature_selection_matches_the_in_memory_one(analysed) -> None:
    from stabilitybench.analysis.data import (
        CANDIDATE_FEATURES,
        FeatureConfig,
        feature_columns,
        load_runs,
        load_steps,
        present_features,
    )

    corpus, _, _ = analysed
    runs = load_runs(corpus)
    cfg = FeatureConfig()
    lazy = feature_columns(corpus, runs, cfg)
    eager = present_features(load_steps(corpus, runs, list(CANDIDATE_FEATURES)), cfg)
    assert lazy == eager == ["loss", "grad_norm", "grad_coherence", "update_norm", "param_norm"]


def test_manifest_from_an_older_schema_reads_with_a_note(tmp_path: Path) -> None:
    """Nullable columns added to the schema after a corpus was written come back as null, with a note."""
    import pyarrow.parquet as pq

    from stabilitybench.analysis.data import load_runs

    corpus = make_corpus(tmp_path / "corpus", seeds=(0,))
    path = corpus / "manifest.parquet"
    old = pq.read_table(path)
    pq.write_table(old.drop_columns(["ent_coef", "coherence_window"]), path)
    notes: list[str] = []
    runs = load_runs(corpus, notes)
    assert runs.height == 4 and runs["ent_coef"].null_count() == 4
    assert len(notes) == 1 and "ent_coef" in notes[0] and "coherence_window" in notes[0]
    pq.write_table(old.drop_columns(["seed"]), path)  # a required column is still an error
    from stabilitybench.data_schema import SchemaError

    with pytest.raises(SchemaError, match="seed"):
        load_runs(corpus)


def test_results_contract_lists_every_table(analysed, tmp_path: Path) -> None:
    from stabilitybench.analysis.results import SCHEMAS, TABLES, load_table
    from stabilitybench.analysis.summary import ResultsNotFoundError, read_summary

    _, out, summary = analysed
    written = {p.stem for p in out.glob("*.parquet")}
    assert written <= set(TABLES), written - set(TABLES)
    for name in written:  # every table is written under its declared schema, units and descriptions included
        schema = pq.read_schema(out / f"{name}.parquet")
        assert schema.names == SCHEMAS[name].names, name
        for field in schema:
            meta = field.metadata or {}
            assert meta.get(b"unit") and meta.get(b"description"), (name, field.name)
    assert read_summary(out).n_runs == summary["n_runs"]
    assert load_table(out, "runs").height == 10
    with pytest.raises(ResultsNotFoundError):
        read_summary(tmp_path / "nothing")


def test_leave_one_env_out_with_two_envs(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", envs=("Toy-v0", "Other-v0"))
    cfg = replace(FAST, early_warning=replace(FAST.early_warning, detectors=("kalman", "pca_recon")))
    summary = run_analysis(corpus, tmp_path / "results", cfg, update_corpus=False)
    loeo = summary["early_warning"]["leave_one_env_out"]
    assert loeo["status"] == "ok"
    assert {f["group"] for f in loeo["folds"]} == {"rl/ppo/Toy-v0/default", "rl/ppo/Other-v0/default"}
    assert all(f["trained_on_envs"] == ["Toy-v0"] or f["trained_on_envs"] == ["Other-v0"] for f in loeo["folds"])
    held = summary["early_warning"]["held_out"]["leave_one_env_out"]["by_target"]
    for target in ("rl/ppo/Toy-v0/default", "rl/ppo/Other-v0/default"):
        # each env's runs tested once, fitted on the other env: 3 performance collapses vs 3 held-out controls
        m = held[target]["detectors"]["kalman"]["transfer_target_calibrated"]["a"]
        assert m["auroc"]["n"] == 6 and m["small_folds"]["fpr_held_out_controls"]["n_test"] == 3
    assert summary["pca"]["rl/ppo"]["all_runs"]["n_runs"] == 19
    assert summary["survival"]["cox"]["strata"] == ["rl/ppo/Other-v0", "rl/ppo/Toy-v0"]
    assert (tmp_path / "results" / "early_warning_loeo_runs.parquet").exists()
    assert summary["early_warning"]["detection"]["kalman"]["auroc"]["n"] == 12


def test_dose_finder_outcomes_equal_the_full_analysis(analysed) -> None:
    """stabilitybench.analysis.outcomes (what `stabilitybench calibrate` judges by) applies the analysis' own rule."""
    from stabilitybench.analysis.outcomes import collapse_outcomes

    corpus, out, _ = analysed
    cols = ["run_id", "collapsed", "collapse_kind", "collapse_step", "collapse_confirmed_step", "collapse_time",
            "survival_time", "censored", "transient"]
    fast = collapse_outcomes(corpus)
    assert {"perturbation", "magnitude", "seed", "unperturbed"} <= set(fast.columns)
    assert set(fast.filter(pl.col("collapsed"))["run_id"]) == {"lr_spike-100-0", "lr_spike-100-1",
                                                                 "lr_spike-100-2", "lr_spike-1000-0"}
    full = pl.from_arrow(read_table(out / "runs.parquet", "runs")).select(cols).sort("run_id")
    assert fast.select(cols).sort("run_id").equals(full)


def test_fit_monitor_refits_a_fold_monitor_on_every_control(analysed, tmp_path: Path) -> None:
    """The deployable monitor: every non-collapsed control used once, train and calibration disjoint by seed."""
    from stabilitybench.analysis.deploy import refit_file, split_seeds
    from stabilitybench.analysis.errors import MonitorFileError
    from stabilitybench.analysis.monitor_file import MonitorFile

    corpus, out, _ = analysed
    like = next((out / "monitors").glob("*/kalman_fold0.monitor.npz"))
    template = MonitorFile.load(like)
    mf = refit_file(like, corpus, out, tmp_path / "k.monitor.npz", fpr=0.2)
    again = MonitorFile.load(tmp_path / "k.monitor.npz")
    runs = pl.read_parquet(out / "runs.parquet")
    ctrl = set(runs.filter((pl.col("perturbation") == "none") & ~pl.col("collapsed"))["run_id"].to_list())
    prov = again.provenance
    assert set(prov["train_run_ids"]) | set(prov["calibration_run_ids"]) == ctrl
    assert not set(prov["train_run_ids"]) & set(prov["calibration_run_ids"])
    assert (again.kind, again.features, again.block_updates, again.warmup_updates) == \
        (template.kind, template.features, template.block_updates, template.warmup_updates)
    assert again.n_calibration == 1 and again.target_fpr == 0.2 and prov["refit_of"] == str(like)
    assert mf.threshold == again.threshold and np.isfinite(again.threshold)
    # the threshold is the conformal one over the calibration run's window maximum from the warm-up on
    cal = runs.filter(pl.col("run_id") == prov["calibration_run_ids"][0]).row(0, named=True)
    trace = again.score_run(pl.read_parquet(steps_path(corpus, cal)))
    assert again.threshold == pytest.approx(trace.filter(pl.col("step") >= again.warmup_updates)["msd"].max())
    assert split_seeds(list(range(30)), None, 0.05).calibration == list(range(11, 30))  # 19 for a 5% claim
    with pytest.raises(MonitorFileError, match="need >= 2 to train"):
        refit_file(like, corpus, out, tmp_path / "x.monitor.npz", n_calibration=2)


def test_runs_that_acted_on_an_alarm_are_paired_not_analysed(tmp_path: Path) -> None:
    """Intervention arms get an outcome against the *natural* controls and the paired table, nothing else."""
    from stabilitybench.analysis.data import is_unperturbed

    corpus = make_corpus(tmp_path / "corpus")
    rows = pl.from_arrow(pq.read_table(corpus / "manifest.parquet"))
    hp = {"intervention": "rollback,lr_backoff", "monitor": "monitors/kalman.monitor.npz"}
    acted = []
    for s in (0, 1, 2):
        for kind, mag in (("none", 1.0), ("lr_spike", 100.0)):
            r = _run(corpus, s, kind, mag)
            rid = r["run_id"] + "-acted"
            src = pq.read_table(steps_path(corpus, r)).to_pylist()
            r = {**r, "run_id": rid, "config_json": json.dumps({"spec": {"hparams": hp}})}
            if kind == "lr_spike" and s < 2:  # the action saved two of the three spikes: performance recovers
                for x in src:
                    x["performance"] = x["performance"] + (300.0 if x["step"] >= ONSET + 40 else 0.0)
            write_table(pa.Table.from_pylist([{**x, "run_id": rid} for x in src], schema=STEPS_SCHEMA),
                        steps_path(corpus, r), STEPS_SCHEMA)
            write_table(pa.Table.from_pylist([], schema=EVENTS_SCHEMA), events_path(corpus, rid), EVENTS_SCHEMA)
            acted.append(r)
    write_manifest(corpus, [*rows.to_dicts(), *acted])
    manifest = pl.from_arrow(pq.read_table(corpus / "manifest.parquet"))
    assert is_unperturbed(manifest).sum() == 3  # the acted controls are not controls
    cfg = replace(FAST, early_warning=replace(FAST.early_warning, detectors=("kalman",), with_echo=False))
    summary = run_analysis(corpus, tmp_path / "results", cfg, update_corpus=False)
    out = tmp_path / "results"
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs.height == manifest.height  # every run has its outcome, the acted ones included
    ids = {r["run_id"] for r in acted}
    assert not set(pl.read_parquet(out / "early_warning_runs.parquet")["run_id"].to_list()) & ids
    assert summary["groups"][0]["n_unperturbed"] == 3 and summary["n_runs"] == manifest.height
    entry = summary["intervention"]
    assert entry["status"] == "ok" and entry["n_runs_acted"] == 6
    table = {(r["perturbation"], r["magnitude"]): r for r in entry["rows"]}
    spike = table[("lr_spike", 100.0)]
    assert spike["monitor"] == "kalman" and spike["n_pairs"] == 3
    assert spike["collapse_rate_without"] == 1.0 and spike["collapse_rate_with"] == pytest.approx(1 / 3)
    assert table[("none", 1.0)]["collapse_rate_with"] == 0.0
    assert pl.read_parquet(out / "intervention.parquet").height == len(entry["rows"])
