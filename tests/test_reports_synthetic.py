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
    no_regime = summary["early_warning"]["time_to_event"]["status"] == "not_testable"
    for spec in FIGURES:
        block = page.split(f'<figure id="{spec.id}">')[1].split("</figure>")[0]
        if spec.id == "F14" and no_regime:  # (c) needs regime runs; this corpus has none, and F14 says so
            assert "not testable" in block, block[:300]
            continue
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
    # the synthetic corpus's folds have < 19 calibration controls: the sentence quotes the small folds and says so
    assert "fewer than 19 calibration controls" in text
    lead = kalman["small_folds"]["median_lead_updates"]
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


# --------------------------------------------------------------------------- the report only draws (issue 28)
def _pixels(path: Path) -> bytes:
    return plt.imread(path).tobytes()


def test_figure_registry_is_complete() -> None:
    from stabilitybench.analysis.summary import QUESTIONS
    from stabilitybench.reports.figures.spec import FigureSpec

    assert [s.id for s in FIGURES] == [f"F{i}" for i in range(1, 15)]
    assert len({s.stem for s in FIGURES}) == len(FIGURES)
    for spec in FIGURES:
        assert spec.question in QUESTIONS and spec.title and callable(spec.caption) and callable(spec.build)
    with pytest.raises(ValueError, match="not one of"):
        FigureSpec("F99", "f99", "x", "no_such_question", FIGURES[0].build, FIGURES[0].caption)


def test_report_reads_results_only(report, tmp_path: Path) -> None:
    """With the corpus gone after `analyze`, the report is the same: F1 draws results/onset_telemetry."""
    index, results, _ = report
    corpus = index.parent.parent / "corpus"
    moved = index.parent.parent / "corpus_moved"
    corpus.rename(moved)
    try:
        again = build_report(results, tmp_path / "out")
    finally:
        moved.rename(corpus)
    page = again.read_text()
    for spec in FIGURES:
        block = page.split(f'<figure id="{spec.id}">')[1].split("</figure>")[0]
        assert "too little data" not in block or spec.id == "F14", spec.id  # F14: no regime run here
        assert _pixels(again.parent / "figures" / f"{spec.stem}.png") == _pixels(
            index.parent / "figures" / f"{spec.stem}.png"), spec.id


def test_f8_curve_area_is_the_summary_auroc(report) -> None:
    """The ROC that F8 draws and the AUROC printed beside it come from the same runs."""
    from stabilitybench.reports.figures.early_warning import fig_roc

    _, results, summary = report
    data = load(results)
    roc, ew = data.table("early_warning_roc"), data.table("early_warning_runs")
    dets = list(dict.fromkeys(ew["detector"].to_list()))
    byd = {k: data.summary.get(*p) for k, p in data.summary.by_detector().items()}
    fig, ax = plt.subplots()
    fig_roc(roc, dets, byd, ax=ax)
    lines = [ln for ln in ax.lines if not str(ln.get_label()).startswith("_")]
    assert len(lines) == roc["detector"].n_unique() >= 8
    for ln in lines:
        det = next(d for d in dets if str(ln.get_label()).split("  AUROC")[0] == _label(d))
        x, y = (np.asarray(v, float) for v in ln.get_data())
        area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # trapezoids between the drawn points
        assert area == pytest.approx(summary["early_warning"]["detection"][det]["auroc"]["value"], abs=1e-12), det
        assert f"AUROC {summary['early_warning']['detection'][det]['auroc']['value']:.2f}" in ln.get_label()
    plt.close(fig)


def _label(det: str) -> str:
    from stabilitybench.analysis.detectors import detector_label

    return detector_label(det)


def test_captions_quote_the_collapse_rule_and_its_parameters(report) -> None:
    from stabilitybench.analysis.collapse import RULE
    from stabilitybench.reports.phrases import rule_formula

    index, _, summary = report
    page = html.unescape(re.sub(r"<[^>]+>", "", index.read_text()))
    md = (index.parent / "index.md").read_text()
    assert RULE.strip() in md and "line(t) = mu(t) - max(drop * G, spread_k * sd(t))" == rule_formula()
    assert " ".join(RULE.split()) in " ".join(page.split())  # the page quotes the rule verbatim
    f2 = page.split("F2.")[-1].split("SVG")[0]
    cfg = summary["config"]["collapse"]
    assert rule_formula() in f2
    for name in ("drop", "spread_k", "max_folds"):
        assert f"{name} = {cfg[name]:g}" in f2, name
    assert "leave-one-out" not in page and f"min(control seeds, max_folds = {cfg['max_folds']})" in f2


def test_f9_draws_the_runs_its_statistic_ranks(report) -> None:
    """Runs that acted on a live monitor's alarm are out of the decoupling statistic, so out of F9 too."""
    _, results, summary = report
    data = load(results)
    drawn = data.table("dissociation_runs")
    runs = data.table("runs")
    acted = {r for r in runs["run_id"].to_list() if r.endswith("-acted")}
    assert acted and not acted & set(drawn["run_id"].to_list())
    assert drawn.height == runs.height - len(acted)
    run_level = [d for d in summary["regularities"]["dissociation"]
                 if d["measure"] == "survival_time" and d["level"] == "run" and d.get("status", "ok") == "ok"]
    assert run_level
    for d in run_level:  # one (domain, algo): the statistic's n is every run drawn
        assert d["n"] == drawn.height


def test_figure_index_is_written_by_the_report(report) -> None:
    index, _, summary = report
    figs = json.loads((index.parent / "figures.json").read_text())
    assert list(figs) == [s.id for s in FIGURES]
    for spec in FIGURES:
        entry = figs[spec.id]
        assert entry["file"] == spec.stem and entry["question_id"] == spec.question
        assert entry["question"] == summary["questions"][spec.question]["question"]
        assert entry["n_runs"] == summary["questions"][spec.question]["n_runs"]
    assert "figures" not in summary  # analysis writes questions, never figures
