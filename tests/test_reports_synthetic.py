"""The report on a synthetic corpus rich enough for every analysis: all eleven figures are real plots.

The corpus (written through data_schema, analysed by run_analysis) has two perturbation kinds in
two dimensions, two magnitudes, two stochasticity levels and three seeds; strong perturbations
collapse performance and move the telemetry, most often at the 'default' level.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pytest
from test_reports import Spans, check_numbers

from stabilitybench.analysis.early_warning import EarlyWarningConfig
from stabilitybench.analysis.pipeline import AnalysisConfig, run_analysis
from stabilitybench.analysis.summary import SummaryFieldError
from stabilitybench.data_schema import EVENTS_SCHEMA, STEPS_SCHEMA, events_path, steps_path, write_manifest, write_table
from stabilitybench.reports.data import load
from stabilitybench.reports.figures import FIGURES, fig_dose_response, fig_km
from stabilitybench.reports.report import build_report

T, ONSET, DUR = 400, 120, 20
DIMENSION = {"none": "none", "lr_spike": "optimization", "reward_noise": "learning_signal"}


ACTED = {"spec": {"hparams": {"intervention": "rollback,lr_backoff", "monitor": "monitors/kalman.monitor.npz"}}}


def _run(corpus: Path, seed: int, kind: str, magnitude: float, sto: str, acted: bool = False) -> dict:
    """One synthetic run; ``acted``: its twin that acted on a live monitor's alarm (seed 0's collapse averted)."""
    rng = np.random.default_rng([seed, int(magnitude), len(kind), len(sto)])
    rid = f"{kind}-{magnitude:g}-{sto}-{seed}" + ("-acted" if acted else "")
    steps = np.arange(T)
    perf = np.linspace(-300, -100, T) + rng.normal(0, 5, T)
    grad = np.exp(0.3 * rng.normal(size=T)) * (1 + 0.5 * np.sin(steps / 40))
    upd = 0.01 * grad * np.exp(0.1 * rng.normal(size=T))
    coh = 0.2 + 0.05 * rng.normal(size=T)
    active = (steps >= ONSET) & (steps < ONSET + DUR) & (kind != "none")
    strong = kind != "none" and ((magnitude >= 100 and not (sto == "buffered" and seed >= 1))
                                 or (magnitude == 3 and seed == 0 and sto == "default"))
    if strong:
        grad[active] *= 20
        upd[active] *= 50
        coh[steps >= ONSET] -= 0.15
        perf[steps >= ONSET + 30 + 5 * seed] -= 0 if acted and seed == 0 else 300
    loss = np.full(T, np.nan)
    loss[9::10] = (np.log(grad) + rng.normal(0, 0.1, T))[9::10]
    row = {
        "run_id": rid, "domain": "rl", "algo": "ppo", "env": "Toy-v0", "seed": seed, "perturbation": kind,
        "dimension": DIMENSION[kind], "magnitude": magnitude, "onset_frac": 0.3, "onset_step": ONSET,
        "duration_steps": DUR if kind != "none" else 1, "stochasticity": sto, "total_steps": T * 10,
        "planned_updates": T, "n_updates": T, "stop_reason": "completed", "status": "ok",
        "code_version": "test", "schema_version": "1.0", "config_json": json.dumps(ACTED) if acted else "{}",
    }
    table = pa.table({
        "run_id": [rid] * T, "step": steps, "samples_seen": steps * 10, "wall_time_s": steps * 0.01,
        "lr": np.where(active & (kind == "lr_spike"), 3e-4 * magnitude, 3e-4),
        "loss": pa.array(loss, from_pandas=True), "grad_norm": grad, "grad_coherence": coh, "update_norm": upd,
        "param_norm": 10 + np.cumsum(upd), "perturbation_active": active, "performance": perf,
        "domain": ["rl"] * T, "algo": ["ppo"] * T, "env": ["Toy-v0"] * T, "perturbation": [kind] * T,
    })
    write_table(table, steps_path(corpus, row), STEPS_SCHEMA)
    write_table(pa.Table.from_pylist([], schema=EVENTS_SCHEMA), events_path(corpus, rid), EVENTS_SCHEMA)
    return row


def make_corpus(root: Path) -> Path:
    rows = []
    for sto in ("default", "buffered"):
        for s in (0, 1, 2):
            rows.append(_run(root, s, "none", 1.0, sto))
            rows += [_run(root, s, kind, mag, sto) for kind in ("lr_spike", "reward_noise") for mag in (3.0, 100.0)]
    rows += [_run(root, s, kind, mag, "default", acted=True) for s in (0, 1, 2)
             for kind, mag in (("none", 1.0), ("lr_spike", 100.0))]
    write_manifest(root, rows)
    return root


FAST = AnalysisConfig(early_warning=EarlyWarningConfig(gru_epochs=20, kalman_iter=10, n_boot=100), n_null=5,
                      n_boot=100)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("synth_report")
    corpus = make_corpus(root / "corpus")
    summary = run_analysis(corpus, root / "results", FAST, update_corpus=False)
    index = build_report(root / "results", root / "out", embed=True)  # one self-contained page
    return index, root / "results", summary


def test_every_figure_is_a_real_plot(report) -> None:
    index, _, summary = report
    page = index.read_text()
    assert summary["regularities"]["stochasticity_buffer"]["status"] == "ok"
    for spec in FIGURES:
        block = page.split(f'<figure id="{spec.id}">')[1].split("</figure>")[0]
        assert "too little data" not in block, (spec.id, block[:300])
        assert (index.parent / "figures" / f"{spec.stem}.png").stat().st_size > 10_000
    p = Spans()
    p.feed(page)
    assert sum(r.startswith("data:image/png;base64,") for r in p.refs) == len(FIGURES)  # embedded PNGs
    assert {f"figures/{s.stem}.svg" for s in FIGURES} <= p.refs


def test_numbers_equal_summary_and_the_monitor_sentence(report) -> None:
    index, _, summary = report
    assert check_numbers(index, summary) >= 150
    text = re.sub(r"<[^>]+>", "", html.unescape(index.read_text()))
    m = re.search(r"The Kalman monitor warned a median of (\d+) updates before collapse \(IQR (\d+)–(\d+), n=(\d+)\)",
                  text)
    assert m, "the monitor's lead-time sentence is missing"
    kalman = next(r for r in summary["early_warning"]["by_detector"]
                  if (r["detector"], r["subset"]) == ("kalman", "all"))
    lead = kalman["median_lead_updates"]
    assert [float(x) for x in m.groups()] == pytest.approx(
        [round(lead["value"]), round(lead["iqr_low"]), round(lead["iqr_high"]), lead["n"]], abs=0.51)
    for c in summary["headline"]["caveats"]:
        assert html.escape(c) in index.read_text()


@pytest.mark.parametrize(("path", "renamed"), [
    (("early_warning", "detection", "kalman", "auroc"), "auroc_value"),
    (("pca", "rl/ppo", "all_runs", "n_components_90"), "n_components90"),
    (("regularities", "stochasticity_buffer", "collapse_probability"), "p_collapse"),
    (("collapse", "rule_false_collapse_rate_unperturbed"), "false_collapse_rate"),
])
def test_a_renamed_summary_field_fails_the_report_loudly(report, tmp_path: Path, path: tuple[str, ...],
                                                          renamed: str) -> None:
    """The report reads summary.json only through analysis.summary: a renamed key is an error, never "n/a"."""
    _, results, _ = report
    edited = tmp_path / "results"
    shutil.copytree(results, edited)
    doc = json.loads((edited / "summary.json").read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[renamed] = node.pop(path[-1])
    (edited / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(SummaryFieldError, match=re.escape("/".join(path))) as err:
        build_report(edited, tmp_path / "out")
    assert "rerun `stabilitybench analyze`" in str(err.value)


def test_a_renamed_top_level_field_fails_on_read(report, tmp_path: Path) -> None:
    _, results, _ = report
    edited = tmp_path / "results"
    shutil.copytree(results, edited)
    doc = json.loads((edited / "summary.json").read_text())
    doc["early_warnings"] = doc.pop("early_warning")
    (edited / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(SummaryFieldError, match=r"missing top-level field\(s\) early_warning"):
        load(edited)


def test_panel_functions_draw_into_a_given_axes(report) -> None:
    _, results, _ = report
    data = load(results)
    fig, (a, b) = plt.subplots(1, 2)
    assert fig_dose_response(data.table("dose_response"), "lr_spike", ax=a) is a
    dose = data.table("dose_response")
    assert fig_km(data.table("km"), dose.select("config", "perturbation", "magnitude"), "lr_spike", ax=b) is b
    assert a.get_xscale() == "log" and len(b.lines) >= 3  # x3, x100 and the unperturbed curve
    plt.close(fig)
