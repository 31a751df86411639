"""Question (c) in the pipeline: time to event on the regime runs, for every detector the early-warning stage scored.

:func:`time_to_event_question` -> :class:`TimeToEventResult`, from the per-block traces of the held-out folds
(``early_warning_scores``, :func:`stabilitybench.analysis.early_warning.evaluate_group`) and the runs with their
outcomes. What it asks and how each number is made is :mod:`stabilitybench.analysis.time_to_event`; this module picks
the rows and the settings:

* **Runs.** The regime runs (:data:`~stabilitybench.data_schema.keys.SUSTAINED_KINDS`: trained at one elevated setting
  from update 0, no kick) and the controls (:func:`~stabilitybench.data_schema.keys.control_mask`) of the matched groups
  that hold a regime run; kicked runs never enter (c), and regime runs enter only (c) (they have no per-run row in
  questions (a), (a') and (b)). A regime run's collapse date is the collapse rule's ``collapse_step``, judged without
  a perturbation window (:data:`stabilitybench.analysis.collapse.RULE`, item 3).
* **Score.** Each block's ``excess`` (the score minus the fold's conformal threshold, in SDs of the fold's calibration
  window maxima): it is monotone in the detector's score within a fold and on one scale across folds and groups, so
  the blocks of every fold are pooled; the threshold of (c) is then calibrated on the controls' blocks to 1 false
  alarm per 10,000 stable updates. Non-finite telemetry scores ``+inf``; a warming-up block (NaN) never alarms.
* **Horizons** per domain: :data:`~stabilitybench.analysis.time_to_event.HORIZONS` (RL: 100 and 500 updates; LM: 50 and
  200 of the ramp regime's 1,000 updates: an LM collapse date is good to about 35 updates, see that module). A
  domain without declared horizons is not testable.
* **Null twins.** Per regime run the fold's training controls' mean trajectory plus an AR(1) surrogate of the
  run's own deviation from it over its first :data:`~stabilitybench.analysis.early_warning.TWIN_FRAC` of updates
  (before any collapse; a regime has no pre-onset stretch), simulated for the run's whole length and scored by the
  same fitted detector and calibration in the run's fold (:func:`stabilitybench.analysis.early_warning.null_twin`);
  checked against the controls
  (:func:`~stabilitybench.analysis.time_to_event.twin_check`).
* **The no-kick reference**, "updates since the regime began" (block end step: every regime starts at update 0),
  scored on the same blocks; every detector's AUROC is compared with it (paired run-clustered bootstrap), and its own
  entry and curve sit beside the detectors'.

Outputs: summary.json ``early_warning.time_to_event`` (question id ``c``; per domain the reference and every
detector, each number with its n and CI) and ``results/time_to_event_curves`` (warned fraction against false alarms
per 10k stable updates over a grid of thresholds, per domain, detector and horizon, plus each one's calibrated
operating point), what the report's figure draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.early_warning import TWIN_FRAC, split_twins
from stabilitybench.analysis.errors import AnalysisError
from stabilitybench.analysis.summary import Status, StatusKind, not_testable
from stabilitybench.analysis.time_to_event import (
    HORIZONS,
    auroc_difference,
    time_since_start,
    time_to_event_summary,
    warning_curve,
)
from stabilitybench.data_schema.keys import GROUP_KEYS, SUSTAINED_KINDS, control_mask, sustained_mask

#: The question's id in summary.json (``early_warning.time_to_event.question``).
QUESTION_ID = "c"
#: The detector label of the no-kick reference in the curves table.
REFERENCE = "time_since_start"
#: The trace column that (c) ranks (see the module docstring).
SCORE_COLUMN = "excess"
#: Points of each warning curve (thresholds at quantiles of the stable blocks' scores).
CURVE_POINTS = 50
#: The columns of ``results/time_to_event_curves``.
CURVE_SCHEMA = {"domain": pl.String, "detector": pl.String, "horizon": pl.Int64, "min_lead": pl.Int64,
                "point": pl.String, "threshold": pl.Float64, "fa_per_10k": pl.Float64, "fa_ci_low": pl.Float64,
                "fa_ci_high": pl.Float64, "warned_fraction": pl.Float64, "warned_ci_low": pl.Float64,
                "warned_ci_high": pl.Float64, "n_collapsed": pl.Int64, "n_runs": pl.Int64}
QUESTION_TEXT = ("(c) time to event: at every block of every regime run (no kick) and control, does the score say "
                 "'collapse within the next h updates'? AUROC, false alarms per 10,000 stable updates, the share of "
                 "collapses warned at a threshold calibrated to 1 false alarm per 10,000 updates on the controls, "
                 "the null-twin check, each against the no-kick reference (updates since the regime began)")


@dataclass(frozen=True)
class TimeToEventResult:
    """Question (c): ``summary`` (summary.json ``early_warning.time_to_event``) and ``curves``
    (``results/time_to_event_curves``: :data:`CURVE_SCHEMA`; empty when (c) is not testable)."""

    summary: dict[str, Any]
    curves: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CURVE_SCHEMA))

    @property
    def n_runs(self) -> int:
        """Runs behind (c): regime runs and controls over every domain (0 when not testable)."""
        return sum(int(d.get("n_runs") or 0) for d in (self.summary.get("by_domain") or {}).values())


def regime_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``runs`` that (c) is asked of: regime runs and the controls of the matched groups holding one.

    ``runs``: natural runs with ``run_id``, :data:`~stabilitybench.data_schema.keys.GROUP_KEYS`, ``perturbation`` and
    the outcomes (``collapsed``, ``collapse_step``); ``unperturbed`` where present, else
    :func:`~stabilitybench.data_schema.keys.control_mask`. Adds ``is_control`` and ``is_regime``.
    """
    regime = sustained_mask(runs)
    ctrl = runs["unperturbed"].fill_null(False) if "unperturbed" in runs.columns else control_mask(runs)
    tagged = runs.with_columns(regime.alias("is_regime"), ctrl.alias("is_control"))
    keys = [k for k in GROUP_KEYS if k in runs.columns]
    held = tagged.filter(pl.col("is_regime"))
    if held.height == 0:
        return tagged.head(0)
    sel = tagged.filter(pl.col("is_regime") | pl.col("is_control"))
    return sel.join(held.select(keys).unique(), on=keys, how="semi") if keys else sel


def block_frame(traces: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """Per-block rows of (c) from the traces of ``runs`` (:func:`regime_runs`): ``detector, domain, run_id,
    block_end_step, score`` (:data:`SCORE_COLUMN`), ``collapse_step`` (null unless collapsed) and ``is_control``."""
    real, _ = split_twins(traces)
    meta = runs.select("run_id", pl.col("domain") if "domain" in runs.columns else pl.lit("all").alias("domain"),
                       pl.when(pl.col("collapsed").fill_null(False)).then(pl.col("collapse_step").cast(pl.Int64))
                       .otherwise(None).alias("collapse_step"), "is_control")
    return real.join(meta, on="run_id", how="inner").select(
        "detector", "domain", "run_id", pl.col("step").cast(pl.Int64).alias("block_end_step"),
        pl.col(SCORE_COLUMN).cast(pl.Float64).alias("score"), "collapse_step", "is_control")


def twin_frame(traces: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """The null twins' per-block rows ``detector, run_id, block_end_step, score`` for the regime runs of ``runs``."""
    _, twins = split_twins(traces)
    ids = runs.filter(pl.col("is_regime"))["run_id"].implode()
    return twins.filter(pl.col("run_id").is_in(ids)).select(
        "detector", "run_id", pl.col("step").cast(pl.Int64).alias("block_end_step"),
        pl.col(SCORE_COLUMN).cast(pl.Float64).alias("score"))


def _operating_point(entry: dict[str, Any], h: int) -> dict[str, Any]:
    """The calibrated operating point of one (c) entry at horizon ``h``: false alarms on every stable block (each run
    at its threshold) and the warned fraction (lead in ``[1, h]``), each with its CI."""
    e = entry.get("horizons", {}).get(str(h), {})
    fa = e.get("false_alarms_per_10k", {}).get("all_stable", {})
    w = e.get("warned", {}).get("1", {})
    return {"point": "calibrated", "threshold": entry.get("calibration", {}).get("threshold"),
            "fa_per_10k": fa.get("value"), "fa_ci_low": fa.get("ci_low"), "fa_ci_high": fa.get("ci_high"),
            "warned_fraction": w.get("value"), "warned_ci_low": w.get("ci_low"), "warned_ci_high": w.get("ci_high"),
            "n_collapsed": w.get("n")}


def _curves(domain: str, label: str, blocks: pl.DataFrame, entry: dict[str, Any], horizons: tuple[int, ...]
            ) -> list[pl.DataFrame]:
    """The curve rows (and the calibrated point) of one detector (or the reference) at every horizon."""
    n_runs = blocks["run_id"].n_unique()
    out = []
    for h in horizons:
        curve = warning_curve(blocks, int(h), 1, CURVE_POINTS).with_columns(pl.lit("curve").alias("point"))
        point = entry.get("status") is None and _operating_point(entry, int(h))
        frames = [curve] + ([pl.DataFrame([point])] if point else [])
        for f in frames:
            out.append(f.with_columns(pl.lit(domain).alias("domain"), pl.lit(label).alias("detector"),
                                      pl.lit(int(h)).alias("horizon"), pl.lit(1).alias("min_lead"),
                                      pl.lit(n_runs).alias("n_runs")))
    return out


def _domain_entry(domain: str, blocks: pl.DataFrame, twins: pl.DataFrame, cfg: AnalysisConfig
                  ) -> tuple[dict[str, Any], list[pl.DataFrame]]:
    """(c) for one domain: the reference and every detector, and their curve rows."""
    horizons = HORIZONS.get(domain)
    runs = blocks.group_by("run_id").agg(pl.col("collapse_step").first(), pl.col("is_control").first())
    n = {"n_runs": runs.height, "n_regime_runs": int((~runs["is_control"]).sum()),
         "n_collapsed": int(runs["collapse_step"].is_not_null().sum()), "n_controls": int(runs["is_control"].sum())}
    if horizons is None:
        return {**n, **not_testable(f"no horizons declared for domain {domain!r} "
                                    "(stabilitybench.analysis.time_to_event.HORIZONS)")}, []
    ecfg = cfg.early_warning
    kw = {"n_boot": ecfg.n_boot, "seed": ecfg.seed}
    # the reference on every (run, block) some detector scored: the same blocks for every detector where all ran
    ref_blocks = time_since_start(blocks.unique(["run_id", "block_end_step"], maintain_order=True).drop("detector"))
    reference = time_to_event_summary(ref_blocks, horizons, **kw)
    curves = _curves(domain, REFERENCE, ref_blocks, reference, horizons)
    detectors: dict[str, Any] = {}
    for (label,), b in blocks.partition_by("detector", as_dict=True, maintain_order=True).items():
        tw = twins.filter(pl.col("detector") == label).drop("detector")
        entry = time_to_event_summary(b.drop("detector"), horizons, twins=tw if tw.height else None, **kw)
        if tw.height == 0:
            entry["null_twin"] = not_testable("no null twin (no regime run with >= 3 blocks before "
                                              f"{TWIN_FRAC:.0%} of its updates and its collapse)")
        detectors[str(label)] = entry
        curves += _curves(domain, str(label), b.drop("detector"), entry, horizons)
    return {**n, "horizons": list(horizons), "reference": reference, "detectors": detectors}, curves


def compare_detectors(results: str | Path, a: str, b: str, domain: str, *, regime_only: bool = True,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Question (c)'s paired ``AUROC(a) - AUROC(b)`` for two detectors of an ``analyze`` results folder, per
    horizon of ``domain`` (:func:`~stabilitybench.analysis.time_to_event.auroc_difference`), from its
    ``early_warning_scores.parquet`` and ``runs.parquet``.

    ``regime_only`` (default): the regime runs alone, as (c)'s ``within_regime`` reading (recognising the setting
    earns nothing); else the regime runs with the controls, as the pooled reading. E.g. does the Kalman monitor
    beat llm-foundry's loss-only rule at the aggressive setting?::

        compare_detectors("results", "kalman", "foundry_kill_loss_spike", "lm")
    """
    results = Path(results)
    traces = pl.read_parquet(results / "early_warning_scores.parquet")
    blocks = block_frame(traces, regime_runs(pl.read_parquet(results / "runs.parquet")))
    blocks = blocks.filter(pl.col("domain") == domain)
    if regime_only:
        blocks = blocks.filter(~pl.col("is_control"))
    pick = {d: blocks.filter(pl.col("detector") == d).drop("detector", "domain") for d in (a, b)}
    missing = [d for d, rows in pick.items() if rows.height == 0]
    if missing:
        raise AnalysisError(f"no (c) scores of {', '.join(map(repr, missing))} in the {domain} domain of {results} "
                            f"(detectors there: {sorted(blocks['detector'].unique().to_list())})")
    return {"detectors": [a, b], "domain": domain, "regime_only": regime_only,
            "horizons": {str(h): auroc_difference(pick[a], pick[b], int(h), n_boot=n_boot, seed=seed)
                         for h in HORIZONS.get(domain, ())}}


def time_to_event_question(traces: pl.DataFrame, runs: pl.DataFrame, cfg: AnalysisConfig | None = None
                           ) -> TimeToEventResult:
    """Question (c) for every detector in ``traces`` (``early_warning_scores``, null twins included) on ``runs``
    (natural runs with outcomes; see :func:`regime_runs`). Not testable (one line) without a regime run or without
    their traces."""
    cfg = cfg or AnalysisConfig()
    head = {"question": QUESTION_ID, "text": QUESTION_TEXT, "horizons": {k: list(v) for k, v in HORIZONS.items()},
            "regime_kinds": sorted(SUSTAINED_KINDS), "score": f"{SCORE_COLUMN}: score minus the fold's conformal "
            "threshold in SDs of its calibration maxima (pooled across folds and groups)",
            "reference": "updates since the regime began (block end step; every regime starts at update 0)",
            "null_twin_rule": f"the fold's training controls' mean trajectory plus an AR(1) per column of the run's "
                              f"own deviation from it over its first {TWIN_FRAC:.0%} of updates (before any "
                              "collapse), the run's length, scored by the same fitted detector and calibration"}
    sel = regime_runs(runs) if runs.height else runs
    if sel.height == 0:
        return TimeToEventResult({**head, **not_testable(
            "no regime run (a perturbation kind in SUSTAINED_KINDS, e.g. lr_regime) in the corpus: every run "
            "follows a kick, so a collapse without one cannot be foreseen here")})
    blocks = block_frame(traces, sel) if traces.height else pl.DataFrame()
    if blocks.height == 0:
        return TimeToEventResult({**head, **not_testable(
            "no held-out scores of the regime runs (the early-warning folds need >= 3 seeds with controls)")})
    twins = twin_frame(traces, sel)
    by_domain: dict[str, Any] = {}
    curves: list[pl.DataFrame] = []
    for (dom,), b in blocks.partition_by("domain", as_dict=True, maintain_order=True).items():
        entry, c = _domain_entry(str(dom), b.drop("domain"), twins.filter(pl.col("run_id").is_in(
            b["run_id"].unique().implode())), cfg)
        by_domain[str(dom)] = entry
        curves += c
    frame = pl.concat([c.select([pl.col(k).cast(v) if k in c.columns else pl.lit(None, dtype=v).alias(k)
                                 for k, v in CURVE_SCHEMA.items()]) for c in curves], how="vertical") \
        if curves else pl.DataFrame(schema=CURVE_SCHEMA)
    return TimeToEventResult({**head, **Status(StatusKind.OK).to_json(), "by_domain": by_domain}, frame)


__all__ = ["CURVE_SCHEMA", "QUESTION_ID", "REFERENCE", "TimeToEventResult", "block_frame", "regime_runs",
           "time_to_event_question", "twin_frame"]
