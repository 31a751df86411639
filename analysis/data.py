"""Reading the corpus for analysis: runs, events, per-step telemetry features and time blocks.

Everything goes through :mod:`data_schema` (``read_manifest``, ``scan_steps``): polars
lazy scans with the Hive partition filters pushed down (``domain``/``algo``/``env``
prune directories) and a projection of only the columns an analysis needs.

Telemetry features
------------------
The *telemetry vector* of an update is every numeric steps column that the run's
algorithm produces, except

* bookkeeping: ``step``, ``samples_seen``, ``wall_time_s``, ``tokens_per_s``;
* the perturbation's own knob: ``lr`` and ``perturbation_active`` (a monitor that
  reads the learning rate would "detect" an LR spike by reading the intervention);
* the outcome: ``performance``, ``episode_return``, ``eval_return``, ``val_loss``
  (collapse is defined on performance, so a monitor that sees it would be circular).

Sparse columns (SB3 PPO reports its losses once per ``train()`` call, i.e. on every
320th row; LM validation metrics every N steps) are **forward-filled within each run**
(the value holds until the next report). A column is kept for a group only if, after
the fill, at least ``min_coverage`` of the group's rows are non-null and it is not
constant; rows that are still null (before the first report) are dropped by the
consumers. Heavy-tailed positive-scale columns (:data:`LOG_COLUMNS`) enter as
``sign(x) log1p(|x|)``.

Time blocks
-----------
A run has one row per optimizer update (15,680 for the quick PPO runs). The PCA uses
every row; the meta-state monitor and the early-warning detectors work on *blocks*
of ``B`` consecutive updates (feature means per block; ``B = n_updates // target_blocks``
unless fixed), and every alarm is reported at the **last update of its block**, so
lead times stay in optimizer updates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.collapse import RunCurves
from stabilitybench.analysis.errors import NoRunsError
from stabilitybench.data_schema import (
    STEPS_SCHEMA,
    read_manifest,
    require_corpus,
    scan_steps,
    steps_path,
)
from stabilitybench.data_schema.compat import upgrade_frame
from stabilitybench.data_schema.corpus import events_path
from stabilitybench.data_schema.keys import GROUP_KEYS, control_mask
from stabilitybench.data_schema.keys import intervention_arm as intervention_arm  # re-exported: analysis callers
from stabilitybench.data_schema.verify import readable_runs

#: Columns never used as telemetry features (see the module docstring).
EXCLUDED = frozenset(
    {
        "step", "samples_seen", "wall_time_s", "tokens_per_s",
        "lr", "perturbation_active",
        "performance", "episode_return", "eval_return", "val_loss",
    }
)
#: Heavy-tailed columns that enter as sign(x) log1p(|x|).
LOG_COLUMNS = frozenset(
    {"grad_norm", "update_norm", "param_norm", "loss", "value_loss", "train_loss", "approx_kl", "q_mean",
     "attn_logit_max", "output_logit_max", "actor_grad_norm", "actor_update_norm", "alpha"}
)
#: Steps columns the collapse rule reads: it decides on ``performance`` and dates on ``episode_return`` /
#: ``eval_return`` where a run records them (:mod:`stabilitybench.analysis.collapse`, rule item 5).
COLLAPSE_COLUMNS = ("performance", "episode_return", "eval_return")
#: Columns whose non-finite value marks a diverged run.
NONFINITE_COLUMNS = ("loss", "grad_norm", "update_norm", "param_norm", "train_loss", "val_loss", "performance")

NUMERIC_STEP_COLUMNS = tuple(
    f.name for f in STEPS_SCHEMA if f.type in (STEPS_SCHEMA.field("lr").type, STEPS_SCHEMA.field("step").type)
)
CANDIDATE_FEATURES = tuple(c for c in NUMERIC_STEP_COLUMNS if c not in EXCLUDED)


@dataclass(frozen=True)
class FeatureConfig:
    """How telemetry becomes a feature matrix.

    ``min_coverage``: a column is kept if at least this fraction of the group's rows is
    non-null after the within-run forward fill. ``block_updates``: fixed block length
    in updates, or None for ``max(1, n_updates // target_blocks)`` per group.
    """

    min_coverage: float = 0.8
    block_updates: int | None = None
    target_blocks: int = 500


def load_runs(corpus: str | os.PathLike[str], notes: list[str] | None = None,
              excluded: list[dict[str, str]] | None = None) -> pl.DataFrame:
    """The manifest's finished runs (status ``ok``) whose files check out, one row each.

    A manifest written before nullable columns were added to the schema is read with those
    columns as null (``data_schema.conform``) and a note is appended to ``notes``; any other
    mismatch still raises :class:`~data_schema.SchemaError`. A run whose steps or events file
    is missing or damaged (:func:`stabilitybench.data_schema.integrity.check_run`) is left out, never turned
    into an outcome: it is appended to ``excluded`` (run_id, file, reason) and to ``notes``.
    Raises :class:`NoRunsError` when no finished run is left.
    """
    require_corpus(corpus)
    manifest = pl.from_arrow(read_manifest(corpus, notes))
    runs = manifest.filter(pl.col("status") == "ok")
    readable = readable_runs(corpus, list(runs.iter_rows(named=True)))  # verify's cheap check, one owner
    bad = [{"run_id": p.run_id, "file": str(p.path), "reason": p.reason} for p in readable.skipped]
    if bad:
        runs = runs.filter(~pl.col("run_id").is_in([b["run_id"] for b in bad]))
        n_bad = len({b["run_id"] for b in bad})
        if notes is not None:
            notes.append(f"{n_bad} run(s) excluded: the manifest says ok but a file is missing or damaged "
                         f"(`stabilitybench verify` lists them; `generate` reruns them): "
                         + "; ".join(f"{b['file']}: {b['reason']}" for b in bad[:5])
                         + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""))
        if excluded is not None:
            excluded += bad
    if runs.height == 0:
        raise NoRunsError(f"{corpus}: no finished runs in manifest.parquet (run `stabilitybench generate`)")
    return runs


MONITOR_PATH = "$.spec.hparams.monitor"


def intervention_monitor(runs: pl.DataFrame) -> pl.Series:
    """Per run, the monitor file whose alarms it acted on (``hparams.monitor``), else null (as
    :func:`intervention_arm`)."""
    if "config_json" not in runs.columns:
        return pl.Series("monitor_file", [None] * runs.height, dtype=pl.String)
    return runs.select(pl.col("config_json").str.json_path_match(MONITOR_PATH).alias("monitor_file")).to_series()


#: The project's one definition of a control run lives in :mod:`stabilitybench.data_schema.keys`
#: (:func:`~stabilitybench.data_schema.keys.control_mask`); this is its historical name.
is_unperturbed = control_mask


def load_events(corpus: str | os.PathLike[str], runs: pl.DataFrame | None = None,
                notes: list[str] | None = None) -> pl.DataFrame:
    """The events rows of ``runs`` (empty frame with the right columns if there are none).

    ``runs``: runs whose files were already checked (:func:`load_runs`); default: every run that
    ``verify`` accepts (:func:`stabilitybench.data_schema.verify.readable_runs`), the others named in ``notes`` or
    in a :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`. No other file of ``events/`` is read.
    """
    root = require_corpus(corpus)
    if runs is None:
        readable = readable_runs(root)
        readable.report(notes)
        files = readable.events_files()
    else:
        files = sorted(events_path(root, rid) for rid in runs["run_id"].to_list())
    # value: e.g. a rollback's restored update (the intervention table's updates discarded)
    cols = {"run_id": pl.String, "step": pl.Int64, "event": pl.String, "detail": pl.String, "value": pl.Float64}
    if not files:
        return pl.DataFrame(schema=cols)
    return pl.scan_parquet([str(f) for f in files]).select(list(cols)).collect()


def group_runs(runs: pl.DataFrame, keys: tuple[str, ...] = GROUP_KEYS) -> list[tuple[dict[str, str], pl.DataFrame]]:
    """Split ``runs`` into groups by ``keys``; returns ``[(key_dict, runs_of_group), ...]`` sorted by key."""
    out = []
    for key, frame in sorted(runs.group_by(list(keys)), key=lambda kv: tuple(str(k) for k in kv[0])):
        out.append((dict(zip(keys, (str(k) for k in key), strict=True)), frame.sort("run_id")))
    return out


def load_steps(
    corpus: str | os.PathLike[str], runs: pl.DataFrame, columns: list[str] | tuple[str, ...]
) -> pl.DataFrame:
    """Per-step rows of ``runs`` with ``run_id``, ``step`` and ``columns``, sorted by run and step.

    One lazy scan of exactly the runs' own steps files (``runs`` come from :func:`load_runs`, so
    their files were checked); the ``run_id`` predicate and the column projection are pushed down.
    """
    cols = ["run_id", "step", *[c for c in dict.fromkeys(columns) if c not in ("run_id", "step")]]
    lf = scan_steps(corpus, runs=runs)  # exactly these runs' files, never a partition folder's others
    have = set(lf.collect_schema().names())
    lf = lf.filter(pl.col("run_id").is_in(runs["run_id"].to_list())).select(
        [pl.col(c) if c in have else pl.lit(None, dtype=pl.Float64).alias(c) for c in cols])
    return lf.collect().sort(["run_id", "step"])


def present_features(steps: pl.DataFrame, cfg: FeatureConfig) -> list[str]:
    """Candidate feature columns of ``steps`` that pass the coverage and non-constant checks."""
    keep = []
    filled = steps.select(
        [pl.col(c).forward_fill().over("run_id") for c in CANDIDATE_FEATURES if c in steps.columns]
    )
    n = max(filled.height, 1)
    for c in filled.columns:
        col = filled[c]
        finite = col.filter(col.is_not_null() & col.is_finite())
        if col.null_count() / n > 1 - cfg.min_coverage or finite.len() < 2:
            continue
        if float(finite.std() or 0.0) <= 1e-12 * max(1.0, abs(float(finite.mean() or 0.0))):
            continue
        keep.append(c)
    return keep


def feature_columns(corpus: str | os.PathLike[str], runs: pl.DataFrame, cfg: FeatureConfig) -> list[str]:
    """:func:`present_features` computed lazily: one aggregation query, nothing but stats in memory.

    Per run and candidate column it aggregates (with projection and predicate pushdown)
    the first update that reports the column (coverage after forward fill = rows from
    there on), and the count, mean and variance of the finite values, which are combined
    across runs exactly (Chan et al.) for the non-constant check.
    """
    lf = scan_steps(corpus, runs=runs)  # exactly these runs' files: a damaged file elsewhere is never opened
    lf = lf.filter(pl.col("run_id").is_in(runs["run_id"].to_list()))
    present = set(lf.collect_schema().names())
    candidates = [c for c in CANDIDATE_FEATURES if c in present]  # files from an older schema lack new columns
    aggs: list[pl.Expr] = [pl.len().alias("_n"), pl.col("step").min().alias("_s0")]
    for c in candidates:
        fin = pl.col(c).filter(pl.col(c).is_finite())
        aggs += [pl.col("step").filter(pl.col(c).is_not_null()).min().alias(f"{c}__first"),
                 fin.count().alias(f"{c}__n"), fin.mean().alias(f"{c}__mean"), fin.var(ddof=0).alias(f"{c}__var")]
    per = lf.group_by("run_id").agg(aggs).collect()
    total = int(per["_n"].sum()) if per.height else 0
    keep = []
    for c in candidates:
        first = per[f"{c}__first"]
        covered = (per["_n"] - (first - per["_s0"])).filter(first.is_not_null()).sum() if per.height else 0
        if total == 0 or covered / total < cfg.min_coverage:
            continue
        n = per[f"{c}__n"].to_numpy().astype(float)
        mu = per[f"{c}__mean"].fill_null(0.0).to_numpy()
        var = per[f"{c}__var"].fill_null(0.0).to_numpy()
        N = n.sum()
        if N < 2:
            continue
        gm = (n * mu).sum() / N
        gvar = ((n * (var + (mu - gm) ** 2)).sum()) / N
        if np.sqrt(max(gvar, 0.0)) <= 1e-12 * max(1.0, abs(gm)):
            continue
        keep.append(c)
    return keep


def iter_run_steps(
    corpus: str | os.PathLike[str], runs: pl.DataFrame, columns: list[str] | tuple[str, ...]
) -> Iterator[tuple[dict[str, Any], pl.DataFrame]]:
    """Yield ``(manifest row, steps of that run)`` one run at a time, sorted by step.

    Reads the run's own file (``data_schema.steps_path``) with a projection of ``run_id``,
    ``step`` and ``columns``; falls back to a filtered scan of the whole corpus when the
    file is not at its canonical path. Memory is one run at a time.
    """
    cols = ["run_id", "step", *[c for c in dict.fromkeys(columns) if c not in ("run_id", "step")]]
    for row in runs.iter_rows(named=True):
        path = steps_path(corpus, row)
        if path.exists():
            lf = upgrade_frame(pl.scan_parquet(path, hive_partitioning=False), "steps")  # a 1.0 file too
        else:
            lf = scan_steps(corpus, run_id=row["run_id"])
        have = set(lf.collect_schema().names())
        frame = lf.select([c for c in cols if c in have]).collect().sort("step")
        missing = [c for c in cols if c not in have]  # a column newer than the file: null
        if missing:
            frame = frame.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in missing])
        yield row, frame


def collapse_curves(steps: pl.DataFrame) -> RunCurves:
    """The collapse rule's input for one run from its steps rows (``step`` and :data:`COLLAPSE_COLUMNS`).

    ``steps``: one run's rows sorted by step (:func:`iter_run_steps`). Each column becomes a
    float array of shape ``(n,)`` with NaN for null; ``episode_return`` / ``eval_return`` are None
    when the frame lacks them or they are all null (LM runs, corpora written before they existed),
    and the collapse is then dated on ``performance``.
    """
    def column(name: str) -> np.ndarray | None:
        if name not in steps.columns or steps[name].null_count() == steps.height:
            return None
        return steps[name].cast(pl.Float64).fill_null(np.nan).to_numpy()

    perf = column("performance")
    return RunCurves(steps["step"].to_numpy(), np.full(steps.height, np.nan) if perf is None else perf,
                     column("episode_return"), column("eval_return"))


def feature_frame(steps: pl.DataFrame, features: list[str]) -> pl.DataFrame:
    """``run_id``, ``step``, ``nonfinite`` and the transformed, forward-filled ``features``.

    ``nonfinite`` flags rows where a raw telemetry value was NaN/Inf; those values are
    set to null before the fill (so they never reach a fit) and the flag carries the news.
    """
    raw_nf = [c for c in NONFINITE_COLUMNS if c in steps.columns]
    nonfinite = pl.any_horizontal([(pl.col(c).is_not_null() & ~pl.col(c).is_finite()) for c in raw_nf]) if raw_nf \
        else pl.lit(False)
    exprs = [pl.col("run_id"), pl.col("step"), nonfinite.fill_null(False).alias("nonfinite")]
    for c in features:
        x = pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None)
        if c in LOG_COLUMNS:
            x = x.sign() * x.abs().log1p()
        elif c == "lr":  # the learning rate (echo column) on its natural, multiplicative scale
            x = pl.when(x > 0).then(x.log10()).otherwise(None)
        exprs.append(x.forward_fill().over("run_id").alias(c))
    return steps.select(exprs)


def block_size(n_updates: int, cfg: FeatureConfig) -> int:
    """Block length in updates for a group whose runs have ``n_updates`` updates."""
    if cfg.block_updates is not None:
        return max(1, int(cfg.block_updates))
    return max(1, int(n_updates) // max(1, cfg.target_blocks))


def to_blocks(frame: pl.DataFrame, features: list[str], block: int) -> pl.DataFrame:
    """Aggregate a :func:`feature_frame` into blocks of ``block`` updates.

    Returns one row per (run, block): ``run_id``, ``block``, ``step`` (the block's last
    update: when its value is known), ``nonfinite`` (any in the block) and the block mean
    of each feature (null if all null).
    """
    return (
        frame.with_columns((pl.col("step") // block).alias("block"))
        .group_by(["run_id", "block"], maintain_order=True)
        .agg(pl.col("step").max(), pl.col("nonfinite").any(), *[pl.col(c).mean() for c in features])
        .sort(["run_id", "block"])
    )


def run_arrays(blocks: pl.DataFrame, features: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{run_id: (steps (T,), X (T, p), nonfinite (T,))}`` from a block (or step) frame."""
    out = {}
    for (rid,), g in blocks.group_by(["run_id"], maintain_order=True):
        X = g.select(features).to_numpy().astype(float) if features else np.zeros((g.height, 0))
        out[str(rid)] = (g["step"].to_numpy(), X, g["nonfinite"].to_numpy().astype(bool))
    return out


def redundant_columns(X: np.ndarray, names: list[str], max_r2: float = 0.99,
                      protect: tuple[str, ...] = ()) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy removal of collinear or algebraically redundant columns before any fit.

    Columns are visited in order; one whose R^2 on the columns kept so far (least squares on the
    standardised, complete rows of ``X``, shape ``(n, p)``) is at least ``max_r2`` is removed and
    listed with its R^2 and the columns that explain it. Constant columns are removed too.
    ``protect`` names columns that are kept regardless (and not used to remove others).
    Returns ``(kept names, removed [{column, r2, explained_by | reason}])``.
    """
    ok = np.isfinite(X).all(axis=1)
    Z = X[ok]
    kept: list[int] = []
    removed: list[dict[str, Any]] = []
    if Z.shape[0] < 3:
        return list(names), []
    sd = Z.std(axis=0)
    Z = (Z - Z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    for j, name in enumerate(names):
        if name in protect:
            continue
        if sd[j] <= 1e-12:
            removed.append({"column": name, "reason": "constant"})
            continue
        if kept:
            A = Z[:, kept]
            coef, *_ = np.linalg.lstsq(A, Z[:, j], rcond=None)
            resid = Z[:, j] - A @ coef
            r2 = 1.0 - float(resid @ resid) / float(Z[:, j] @ Z[:, j])
            if r2 >= max_r2:
                top = [names[kept[i]] for i in np.argsort(-np.abs(coef))[:3]]
                removed.append({"column": name, "r2": round(r2, 5), "explained_by": top})
                continue
        kept.append(j)
    keep_names = {names[j] for j in kept} | {n for n in names if n in protect}
    return [n for n in names if n in keep_names], removed
