"""The paper's three regularities, each as a small table with effect size, CI, test and verdict.

1. **Dissociation** (final performance is decoupled from stability): Spearman's rho between
   final performance and stability across *configurations* (perturbation x magnitude x
   duration; seed means) and across runs, **per domain and algorithm** (final performance is a
   return in RL and minus a validation loss in LM: quantities in different units are never
   correlated together), for three stability measures: the survival time (from onset; a censored
   run counts with its censoring time, a lower bound), the max MSD of the Kalman monitor before
   any collapse (``max_msd``: the out-of-sample ``window_score``, ``-log10`` of its smallest
   conformal p-value over ``[onset, collapse)``, test folds only) and the **drawdown depth**
   (:func:`drawdown_depth`: the largest fall of the run's smoothed performance from its running
   maximum after onset, in performance units). CI: bootstrap over configurations; the run-level
   rho (cluster bootstrap over seeds) is reported too, with ``decoupled`` = "the 95% CI contains
   0" (kept for old readers: that is absence of evidence, not evidence of decoupling).

   **Decoupling by equivalence** (``equivalence`` of each run-level row, :class:`SpearmanTOST`):
   only for the measures defined independently of the collapse rule (:data:`INDEPENDENT_MEASURES`;
   the survival time is the collapse rule's own clock, so it is tied to final performance by
   construction and gets no verdict). rho is Spearman's, computed on ranks *within matched
   groups* (domain/algo/env/stochasticity: returns of different envs share no scale; with one
   group it is plain Spearman), with a BCa bootstrap over seeds. Two one-sided tests at alpha =
   0.05 against the margin ``|rho| < 0.2`` (:data:`EQUIVALENCE_MARGIN`) are the 90% CI lying inside
   ``(-0.2, 0.2)``: "decoupled". Otherwise, a 95% CI that excludes 0 is "coupled"; anything else is
   "undetermined". Caveat: a drawdown that lasts to the end of a run lowers its final performance
   too, so a "coupled" drawdown verdict partly restates that collapses do not recover; "decoupled"
   has no such mechanical help.
2. **Stochasticity buffer** (``stochasticity_buffer``): buffering is a shift of the dose-response.

   * ``ed50_by_level``: per kind (domain, algo, env, perturbation, duration) and stochasticity level,
     the ED50 of the logistic fit of :class:`~stabilitybench.analysis.dose_response.DoseResponseModel`
     with its Fieller CI; a fit whose status is not ``ok`` gives no ED50 at that level (status and
     reason say why; one dose at a level is "not testable").
   * ``ed50_ratio``: ED50(high) / ED50(low) per kind (:class:`ED50Ratio`), CI by a percentile
     bootstrap over seeds (seeds resampled within level, both levels refitted; a replicate counts when
     both refits have an MLE with a positive slope (``ok``, or ``extrapolated`` beyond the doses the
     resample kept); others are dropped, and the CI is withheld when more than 10% are). Verdict per kind:
     "buffers" (CI above 1), "no buffering shown" (CI below 1: more stochasticity collapses at *lower*
     doses), "undetermined" (CI contains 1, or too few seeds or doses).
   * ``verdict``: the claim's verdict across kinds, each kind's CI widened to the Bonferroni level
     ``1 - 0.05 / k`` (``k`` kinds with a ratio): "buffers" if some kind buffers and none shows the
     opposite, "no buffering shown" in the mirror case, else "undetermined" (``verdict_reason``).
   * ``fixed_dose``: per kind, the collapse rate at one magnitude tried at every level (the default
     level's ED50 dose in the ``stochasticity`` profile; :func:`fixed_dose_rates` says which), with
     Clopper-Pearson CIs and an exact test of equal rates across levels (:func:`exact_rate_test`:
     Fisher's exact test for two levels, the Fisher-Freeman-Halton exact test for more).
   * ``controls``: the unperturbed runs' final performance per level (mean, t CI) and the Welch CI
     of high minus low, so that buffering is not confused with slower learning.
   * kept from before: ``collapse_probability`` per level (Clopper-Pearson), over the perturbed runs of the
     (kind, magnitude, seed) cells run at every level (:func:`shared_cells`), and the Cox hazard ratio of the level
     (``cox_hazard_ratios``, every perturbed run: weighed by each level's doses). Not testable when the corpus has
     one level.
3. **Precedence** (meta-state deviations precede collapse): the monitors' lead-time
   distribution and the share of collapses whose MSD alarm came first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from stabilitybench.analysis.collapse import n_updates, smooth
from stabilitybench.analysis.detectors import monitor_names
from stabilitybench.analysis.dose_response import DoseResponseModel
from stabilitybench.analysis.errors import InsufficientDataError, NotFittedError
from stabilitybench.analysis.stats import bootstrap_ci, clopper_pearson, cluster_bootstrap_ci, iqr
from stabilitybench.analysis.summary import Status, StatusKind, not_testable, number
from stabilitybench.analysis.survival import with_config_label
from stabilitybench.data_schema.keys import GROUP_KEYS, control_mask

#: Equivalence margin of the decoupling test: "decoupled" needs the 90% CI of rho inside (-margin, margin).
EQUIVALENCE_MARGIN = 0.2
#: Stability measures defined independently of the collapse rule (they get an equivalence verdict).
INDEPENDENT_MEASURES: dict[str, str] = {
    "drawdown_depth": "largest fall of the causally smoothed performance (smoothing of the collapse rule) from "
                      "its running maximum after onset, performance units (regularities.drawdown_depth)",
    "max_msd": "Kalman monitor's largest deviation before any collapse: -log10 of the smallest conformal p-value "
               "over [onset, collapse), held-out folds (early_warning window_score)",
}
#: Stability measures of the dissociation rows, in order.
MEASURES = ("survival_time", "max_msd", "drawdown_depth")
#: Known stochasticity levels, least to most stochastic; other names sort after them alphabetically.
LEVEL_ORDER = ("low", "default", "high")
#: A level needs this many seeds (of one kind) for the ED50 ratio's seed bootstrap.
MIN_SEEDS_PER_LEVEL = 5
#: Fewest finite (final performance, measure) pairs and seeds for an equivalence verdict.
MIN_EQUIVALENCE_RUNS, MIN_EQUIVALENCE_SEEDS = 10, 3
#: Largest number of tables :func:`exact_rate_test` enumerates before it falls back to Monte Carlo.
MAX_ENUMERATED_TABLES = 2_000_000
KIND_KEYS = ("domain", "algo", "env", "perturbation", "duration_steps")


# ---------------------------------------------------------------------------------------- correlation
def _usable(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The finite pairs' mask, or None when fewer than 3 remain or either side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    return None if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0 else ok


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    ok = _usable(x, y)
    if ok is None:
        return None, None
    r = sps.spearmanr(x[ok], y[ok])
    return float(r.statistic), float(r.pvalue)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho of the finite pairs (None as in :func:`_spearman`), without the p-value.

    The Pearson correlation of the mid-ranks, which is what ``scipy.stats.spearmanr`` computes, at a
    fraction of its cost: it runs once per bootstrap replicate.
    """
    ok = _usable(x, y)
    if ok is None:
        return None
    rx, ry = sps.rankdata(x[ok]), sps.rankdata(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))


def stratified_spearman(x: np.ndarray, y: np.ndarray, strata: np.ndarray | None = None) -> float | None:
    """Spearman's rho on ranks taken *within* each stratum, pooled over strata; None when undefined.

    Shapes: all ``(n,)``; non-finite pairs are dropped. In each stratum the mid-ranks are scaled to
    ``(rank - 0.5) / n_s`` and centred; rho is the Pearson correlation of the pooled centred values
    (every run weighs the same). With one stratum it is exactly Spearman's rho. Strata with fewer than
    2 runs add nothing.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if strata is None:
        return spearman_rho(x, y)
    s = np.asarray(strata)[ok]
    x, y = x[ok], y[ok]
    u, v = np.zeros(x.size), np.zeros(y.size)
    for lab in np.unique(s):
        m = s == lab
        k = int(m.sum())
        if k < 2:
            continue
        ru, rv = (sps.rankdata(x[m]) - 0.5) / k, (sps.rankdata(y[m]) - 0.5) / k
        u[m], v[m] = ru - ru.mean(), rv - rv.mean()
    den = math.sqrt(float(u @ u) * float(v @ v))
    return float(u @ v / den) if den > 0 and x.size >= 3 else None


def equivalence_verdict(ci90: tuple[float | None, float | None], ci95: tuple[float | None, float | None],
                        margin: float = EQUIVALENCE_MARGIN) -> str:
    """"decoupled" (90% CI inside ``(-margin, margin)``: both one-sided tests at 0.05 reject ``|rho| >= margin``),
    else "coupled" (95% CI excludes 0), else "undetermined" (also when a CI is missing)."""
    lo90, hi90 = ci90
    lo95, hi95 = ci95
    if lo90 is not None and hi90 is not None and -margin < lo90 and hi90 < margin:
        return "decoupled"
    if lo95 is not None and hi95 is not None and (lo95 > 0 or hi95 < 0):
        return "coupled"
    return "undetermined"


class SpearmanTOST:
    """Equivalence test of "no association": Spearman's rho within strata, bootstrap over clusters (seeds).

    Parameters
    ----------
    margin: equivalence margin on ``|rho|``.
    alpha: size of each one-sided test (the equivalence CI is ``1 - 2 alpha``; the "coupled" CI ``1 - alpha``).
    n_boot, seed: the cluster bootstrap (:func:`~stabilitybench.analysis.stats.cluster_bootstrap_ci`, BCa).

    Fitted attributes
    -----------------
    rho_, ci90_, ci95_ (``(low, high)``, ``None`` ends where not computable), interval_, n_runs_, n_seeds_,
    n_strata_, verdict_ ("decoupled" | "coupled" | "undetermined"), status_ (:class:`Status`; not testable
    with too few runs or seeds).
    """

    def __init__(self, margin: float = EQUIVALENCE_MARGIN, alpha: float = 0.05, n_boot: int = 1000,
                 seed: int = 0) -> None:
        self.margin, self.alpha, self.n_boot, self.seed = margin, alpha, n_boot, seed

    def fit(self, x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
            clusters: Sequence[Any] | np.ndarray, strata: Sequence[Any] | np.ndarray | None = None) -> SpearmanTOST:
        """Shapes: ``x``, ``y``, ``clusters`` and ``strata`` ``(n,)``; non-finite pairs are dropped."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y, c = x[ok], y[ok], np.asarray(clusters)[ok]
        s = None if strata is None else np.asarray(strata)[ok]
        self.n_runs_, self.n_seeds_ = int(x.size), int(np.unique(c).size)
        self.n_strata_ = 1 if s is None else int(np.unique(s).size)
        self.rho_, self.ci90_, self.ci95_, self.interval_ = None, (None, None), (None, None), ""
        self.verdict_ = "undetermined"
        if self.n_runs_ < MIN_EQUIVALENCE_RUNS or self.n_seeds_ < MIN_EQUIVALENCE_SEEDS:
            self.status_ = Status(StatusKind.NOT_TESTABLE, f"n too small: {self.n_runs_} runs, {self.n_seeds_} seeds "
                                  f"(need >= {MIN_EQUIVALENCE_RUNS} and >= {MIN_EQUIVALENCE_SEEDS})")
            return self
        self.rho_ = stratified_spearman(x, y, s)
        if self.rho_ is None:
            self.status_ = Status(StatusKind.NOT_TESTABLE, "rho undefined: a variable is constant within every stratum")
            return self

        def stat(idx: np.ndarray) -> float | None:
            return stratified_spearman(x[idx], y[idx], None if s is None else s[idx])

        lo90, hi90, how = cluster_bootstrap_ci(stat, c, self.n_boot, 2 * self.alpha, self.seed)
        lo95, hi95, _ = cluster_bootstrap_ci(stat, c, self.n_boot, self.alpha, self.seed)
        self.ci90_, self.ci95_, self.interval_ = (lo90, hi90), (lo95, hi95), how
        self.verdict_ = equivalence_verdict(self.ci90_, self.ci95_, self.margin)
        self.status_ = Status(StatusKind.OK)
        return self

    def summary(self) -> dict[str, Any]:
        """The ``equivalence`` entry: status, margin, rho, both CIs, n runs / seeds / strata, verdict."""
        if not hasattr(self, "status_"):
            raise NotFittedError("SpearmanTOST: call fit() first")
        return {**self.status_.to_json(), "margin": self.margin, "rho": self.rho_,
                "ci90_low": self.ci90_[0], "ci90_high": self.ci90_[1],
                "ci95_low": self.ci95_[0], "ci95_high": self.ci95_[1],
                "n_runs": self.n_runs_, "n_seeds": self.n_seeds_, "n_strata": self.n_strata_,
                "interval": self.interval_, "verdict": self.verdict_}


def drawdown_depth(steps: np.ndarray, performance: np.ndarray, onset: int, smooth_frac: float = 0.02) -> float | None:
    """Largest fall of a run's smoothed performance from its running maximum after onset (performance units).

    ``steps`` (shape ``(T,)``, update indices) and ``performance`` (``(T,)``, NaN where not reported) are the
    run's curve as the collapse rule reads it; it is forward-filled and smoothed with the rule's causal rolling
    mean over ``smooth_frac`` of the run's updates (:func:`stabilitybench.analysis.collapse.smooth`). With
    ``s(t)`` that curve and ``M(t) = max s(u)`` over ``onset <= u <= t``, the depth is ``max (M(t) - s(t))``
    over ``t >= onset``: 0 for a curve that never falls after onset. It uses no control run and no threshold,
    so it is defined independently of the collapse rule. None when no finite value follows the onset.
    """
    st = np.asarray(steps, dtype=np.int64)
    T = n_updates(st)
    if T == 0:
        return None
    p = np.full(T, np.nan)
    p[st] = np.asarray(performance, dtype=float)
    s = smooth(p, max(1, round(smooth_frac * T)))[max(0, int(onset)):]
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    return float(np.max(np.maximum.accumulate(s) - s))


def dissociation(runs: pl.DataFrame, n_boot: int = 1000, seed: int = 0, margin: float = EQUIVALENCE_MARGIN
                 ) -> list[dict[str, Any]]:
    """Spearman(final performance, stability) per (domain, algo) and stability measure, config- and run-level.

    ``runs`` needs ``domain, algo, final_performance``, ``survival_time`` (or ``collapse_time``) and
    optionally ``max_msd`` and ``drawdown_depth``. Every row carries ``equivalence``: a
    :class:`SpearmanTOST` summary on run-level rows of :data:`INDEPENDENT_MEASURES` (strata: the matched
    groups, clusters: seeds), a not-applicable status elsewhere.
    """
    r = with_config_label(runs)
    if "survival_time" not in r.columns and "collapse_time" in r.columns:
        r = r.with_columns(pl.col("collapse_time").alias("survival_time"))
    keys = [k for k in ("domain", "algo") if k in r.columns]
    groups = sorted(r.group_by(keys), key=lambda kv: str(kv[0])) if keys else [((), r)]
    out = []
    for key, rg in groups:
        where = dict(zip(keys, (str(k) for k in key), strict=True))
        for measure in MEASURES:
            if measure not in rg.columns:
                continue
            cfg = rg.group_by("config").agg(pl.col("final_performance").mean(), pl.col(measure).mean()).sort("config")
            for level, frame in (("configuration", cfg), ("run", rg)):
                x = frame["final_performance"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                y = frame[measure].cast(pl.Float64).fill_null(np.nan).to_numpy()
                eq = _equivalence(frame, x, y, measure, level, n_boot, seed, margin)
                rho, p = _spearman(x, y)
                if rho is None:
                    out.append({**where, "measure": measure, "level": level,
                                **not_testable("fewer than 3 finite, varying pairs"), "n": int(frame.height),
                                "equivalence": eq})
                    continue
                def stat(idx: np.ndarray, x: np.ndarray = x, y: np.ndarray = y) -> float | None:
                    return spearman_rho(x[idx], y[idx])

                if level == "run" and "seed" in frame.columns:  # runs that share a seed are not independent
                    lo, hi, how = cluster_bootstrap_ci(stat, frame["seed"].to_numpy(), n_boot, seed=seed)
                else:  # configurations are the units
                    (lo, hi), how = bootstrap_ci(stat, x.size, n_boot, seed=seed), "percentile, over configurations"
                out.append({**where, "measure": measure, "level": level,
                            **number(rho, int(x.size), (lo, hi), p_value=p, interval=how),
                            "decoupled": bool(lo is not None and lo <= 0 <= hi), "equivalence": eq})
    return out


def _equivalence(frame: pl.DataFrame, x: np.ndarray, y: np.ndarray, measure: str, level: str, n_boot: int,
                 seed: int, margin: float) -> dict[str, Any]:
    """The ``equivalence`` entry of one dissociation row (see :func:`dissociation`)."""
    if level != "run":
        return {**Status(StatusKind.NOT_APPLICABLE, "the equivalence test is run on runs, clustered by seed"
                         ).to_json(), "margin": margin}
    if measure not in INDEPENDENT_MEASURES:
        return {**Status(StatusKind.NOT_APPLICABLE, f"{measure} is the collapse rule's own clock, tied to final "
                         "performance by construction; decoupling is judged on measures defined without the rule"
                         ).to_json(), "margin": margin}
    if "seed" not in frame.columns:
        return {**not_testable("no seed column to cluster by"), "margin": margin}
    present = [k for k in GROUP_KEYS if k in frame.columns]
    strata = (frame.select(pl.concat_str([pl.col(k).cast(pl.String) for k in present], separator="/"))
              .to_series().to_numpy() if present else None)
    tost = SpearmanTOST(margin, 0.05, n_boot, seed).fit(x, y, frame["seed"].to_numpy(), strata)
    return {**tost.summary(), "measure_definition": INDEPENDENT_MEASURES[measure]}


# ---------------------------------------------------------------------------------------- stochasticity buffer
def level_order(levels: Sequence[str]) -> list[str]:
    """``levels`` least to most stochastic: :data:`LEVEL_ORDER` first, unknown names after, alphabetically."""
    known = {lv: i for i, lv in enumerate(LEVEL_ORDER)}
    return sorted(set(levels), key=lambda lv: (known.get(lv, len(known)), lv))


def _ok(fit: DoseResponseModel) -> bool:
    return getattr(fit.status_, "value", fit.status_) == "ok"


def fit_level(magnitude: np.ndarray, collapsed: np.ndarray) -> tuple[DoseResponseModel | None, Status]:
    """The dose-response of one kind at one level, and why it gives no ED50 (OK status when it does).

    Shapes ``(n,)``. Fewer than 2 distinct magnitudes: not testable (no slope to fit). A fit whose status
    is not ``ok`` (:class:`~stabilitybench.analysis.dose_response.DoseStatus`, e.g. ``separated``) is
    returned with a not-testable status naming it.
    """
    m = np.asarray(magnitude, float)
    if m.size == 0:
        return None, Status(StatusKind.NOT_TESTABLE, "no perturbed run at this level")
    if np.unique(m).size < 2:
        return None, Status(StatusKind.NOT_TESTABLE, f"one dose tried at this level ({m[0]:.4g}); an ED50 needs >= 2 "
                            "(run the doses `stabilitybench calibrate` proposes)")
    try:
        fit = DoseResponseModel().fit(m, np.asarray(collapsed, bool))
    except InsufficientDataError as exc:
        return None, Status(StatusKind.NOT_TESTABLE, str(exc))
    if not _ok(fit):
        status = getattr(fit.status_, "value", str(fit.status_))
        return fit, Status(StatusKind.NOT_TESTABLE, f"no ED50 at this level: dose-response status {status}")
    return fit, Status(StatusKind.OK)


def _ed50(fit: DoseResponseModel, extrapolated: bool = False) -> float:
    """exp(-a / b): the fitted ED50 (logit(0.5) = 0) of an ``ok`` fit, else NaN.

    ``extrapolated``: also of a fit whose MLE exists with an ED50 outside the doses it saw (status
    ``extrapolated``): what a bootstrap replicate needs, so that resamples are not truncated to the doses tried.
    """
    status = getattr(fit.status_, "value", fit.status_)
    if status != "ok" and not (extrapolated and status == "extrapolated"):
        return math.nan
    a, b = fit.params_
    return math.exp(-a / b) if np.isfinite(a) and np.isfinite(b) and b > 0 else math.nan


def buffer_verdict(low: float | None, high: float | None) -> str:
    """Verdict of one CI of ED50(high) / ED50(low): "buffers" (above 1), "no buffering shown" (below 1), else
    "undetermined"."""
    if low is None or high is None:
        return "undetermined"
    if low > 1:
        return "buffers"
    if high < 1:
        return "no buffering shown"
    return "undetermined"


class ED50Ratio:
    """ED50(numerator level) / ED50(denominator level) of one kind, with a bootstrap over seeds.

    Parameters
    ----------
    alpha: the CI is ``1 - alpha / looks``. n_boot, seed: the bootstrap. min_valid: the share of replicates whose
    two refits must be ``ok`` for a CI. looks: how many times the ratio was looked at while seeds were added
    (a sequential design: look, add seeds if undetermined, look again); the CI and the verdict are widened to
    ``1 - alpha / looks`` (Bonferroni over looks: conservative, valid for any stopping rule).

    Fitted attributes
    -----------------
    status_ (:class:`Status`), level_status_ (level -> :class:`Status` of its own fit), fits_ (level ->
    :class:`DoseResponseModel` or None), ratio_, ci_ (``(low, high)`` or Nones), log_ratio_boot_ (``(n_boot,)``,
    NaN where a refit had no MLE with a positive slope), n_valid_, n_seeds_ (level -> seeds), verdict_
    (:func:`buffer_verdict`).
    """

    def __init__(self, alpha: float = 0.05, n_boot: int = 1000, seed: int = 0, min_valid: float = 0.9,
                 looks: int = 1) -> None:
        if looks < 1:
            raise ValueError(f"looks={looks!r} must be >= 1")
        self.alpha, self.n_boot, self.seed, self.min_valid, self.looks = alpha, n_boot, seed, min_valid, looks

    def fit(self, magnitude: Sequence[float] | np.ndarray, collapsed: Sequence[bool] | np.ndarray,
            seeds: Sequence[Any] | np.ndarray, level: Sequence[str] | np.ndarray, numerator: str = "high",
            denominator: str = "low") -> ED50Ratio:
        """Shapes: all ``(n,)``, one row per perturbed run of the kind; rows of other levels are ignored."""
        m, y = np.asarray(magnitude, float), np.asarray(collapsed, bool)
        sd, lv = np.asarray(seeds), np.asarray(level).astype(str)
        self.levels_ = (denominator, numerator)
        self.fits_, self.level_status_, self.n_seeds_ = {}, {}, {}
        members: dict[str, list[np.ndarray]] = {}
        for name in self.levels_:
            idx = np.flatnonzero(lv == name)
            self.fits_[name], self.level_status_[name] = fit_level(m[idx], y[idx])
            labels = np.unique(sd[idx])
            members[name] = [idx[sd[idx] == s] for s in labels]
            self.n_seeds_[name] = int(labels.size)
        self.ratio_, self.ci_, self.n_valid_ = None, (None, None), 0
        self.log_ratio_boot_ = np.full(0, np.nan)
        self.verdict_ = "undetermined"
        bad = [f"{n}: {s.reason}" for n, s in self.level_status_.items() if not s.ok]
        if bad:
            self.status_ = Status(StatusKind.NOT_TESTABLE, "; ".join(bad))
            return self
        fd, fn = self.fits_[denominator], self.fits_[numerator]
        assert fd is not None and fn is not None
        self.ratio_ = _ed50(fn) / _ed50(fd)
        few = [f"{n}: {k} seeds" for n, k in self.n_seeds_.items() if k < MIN_SEEDS_PER_LEVEL]
        if few:
            self.status_ = Status(StatusKind.NOT_TESTABLE, f"n too small for the seed bootstrap ({', '.join(few)}; "
                                  f"need >= {MIN_SEEDS_PER_LEVEL})")
            return self
        rng = np.random.default_rng(self.seed)
        out = np.full(self.n_boot, np.nan)
        for b in range(self.n_boot):
            ed = []
            for name in self.levels_:
                groups = members[name]
                idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
                refit, _ = fit_level(m[idx], y[idx])
                ed.append(_ed50(refit, extrapolated=True) if refit is not None else math.nan)
            out[b] = math.log(ed[1] / ed[0]) if all(np.isfinite(ed)) else math.nan
        self.log_ratio_boot_ = out
        self.n_valid_ = int(np.isfinite(out).sum())
        if self.n_valid_ < self.min_valid * self.n_boot:
            self.status_ = Status(StatusKind.NOT_TESTABLE, f"the refit gave no ED50 in {self.n_boot - self.n_valid_} "
                                  f"of {self.n_boot} seed resamples (CI withheld above "
                                  f"{1 - self.min_valid:.0%})")
            return self
        self.ci_ = self.interval(self.alpha / self.looks)
        self.verdict_ = buffer_verdict(*self.ci_)
        self.status_ = Status(StatusKind.OK)
        return self

    def interval(self, alpha: float) -> tuple[float | None, float | None]:
        """Percentile ``1 - alpha`` CI of the ratio from the fitted replicates (Nones without enough)."""
        if not hasattr(self, "log_ratio_boot_"):
            raise NotFittedError("ED50Ratio: call fit() first")
        v = self.log_ratio_boot_[np.isfinite(self.log_ratio_boot_)]
        if v.size == 0 or v.size < self.min_valid * self.n_boot:
            return None, None
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        return float(np.exp(lo)), float(np.exp(hi))

    def summary(self) -> dict[str, Any]:
        """The ``ed50_ratio`` entry: status, ``value`` / ``ci_low`` / ``ci_high`` (n = seeds), replicates, verdict."""
        if not hasattr(self, "status_"):
            raise NotFittedError("ED50Ratio: call fit() first")
        d, n = self.levels_
        widened = f", {100 * (1 - self.alpha / self.looks):.1f}% for {self.looks} looks" if self.looks > 1 else ""
        return {**self.status_.to_json(), "numerator": n, "denominator": d,
                **number(self.ratio_, sum(self.n_seeds_.values()), self.ci_,
                         interval=f"percentile bootstrap over seeds within level, {self.n_boot} resamples{widened}"),
                "looks": self.looks,
                "n_seeds_numerator": self.n_seeds_[n], "n_seeds_denominator": self.n_seeds_[d],
                "n_valid_replicates": self.n_valid_, "n_boot": self.n_boot, "verdict": self.verdict_}


def exact_rate_test(collapsed: Sequence[int] | np.ndarray, n: Sequence[int] | np.ndarray, seed: int = 0
                    ) -> tuple[float | None, str]:
    """Exact test that ``k_j / n_j`` are equal across ``C`` groups (levels); returns ``(p, method)``.

    ``collapsed``, ``n``: shape ``(C,)``. Two groups: ``scipy.stats.fisher_exact`` (two-sided) on the 2x2
    table. More: the Fisher-Freeman-Halton exact test, by complete enumeration of the 2xC tables with the
    observed margins, weighted by ``scipy.stats.multivariate_hypergeom`` (the null distribution given the
    margins); p = the mass of tables no more probable than the observed one (relative tolerance 1e-7, as
    scipy's 2x2 test). Above :data:`MAX_ENUMERATED_TABLES` tables, scipy's Monte Carlo ``fisher_exact``
    (seeded). ``(None, reason)`` with fewer than 2 non-empty groups.
    """
    k, nn = np.asarray(collapsed, dtype=np.int64), np.asarray(n, dtype=np.int64)
    keep = nn > 0
    k, nn = k[keep], nn[keep]
    if k.size < 2:
        return None, "not testable: fewer than 2 levels with runs"
    if k.size == 2:
        table = [[int(k[0]), int(nn[0] - k[0])], [int(k[1]), int(nn[1] - k[1])]]
        return float(sps.fisher_exact(table).pvalue), "Fisher exact, two-sided"
    K = int(k.sum())
    ranges = [range(0, min(int(c), K) + 1) for c in nn[:-1]]
    if math.prod(len(r) for r in ranges) > MAX_ENUMERATED_TABLES:
        res = sps.fisher_exact(np.vstack([k, nn - k]),
                               method=sps.MonteCarloMethod(n_resamples=100_000, rng=np.random.default_rng(seed)))
        return float(res.pvalue), "Fisher-Freeman-Halton, Monte Carlo (100000 tables)"
    head = np.array(list(itertools.product(*ranges)), dtype=np.int64).reshape(-1, k.size - 1)
    last = K - head.sum(axis=1)
    ok = (last >= 0) & (last <= nn[-1])
    tables = np.column_stack([head[ok], last[ok]])
    pmf = sps.multivariate_hypergeom.pmf(tables, m=nn, n=K)
    p_obs = float(sps.multivariate_hypergeom.pmf(k, m=nn, n=K))
    p = float(pmf[pmf <= p_obs * (1 + 1e-7)].sum())
    return min(1.0, p), "Fisher-Freeman-Halton exact (all tables with the observed margins)"


def fixed_dose_rates(kind: pl.DataFrame, levels: list[str], default_ed50: float | None, seed: int = 0
                     ) -> dict[str, Any]:
    """Collapse rate per level at one magnitude tried at every level of one kind, and the exact test.

    ``kind``: the kind's perturbed runs (``magnitude, collapsed, stochasticity``). The magnitude is the one
    tried at every level; among several, the one nearest (on log scale) to ``default_ed50`` (the default
    level's fitted ED50) when known, else the one with the most runs at the level with fewest.
    """
    if len(levels) < 2:
        return not_testable(f"the kind was run at one level ({', '.join(levels)})")
    shared = None
    for lv in levels:
        mags = set(kind.filter(pl.col("stochasticity") == lv)["magnitude"].drop_nulls().to_list())
        shared = mags if shared is None else shared & mags
    if not shared:
        return not_testable("no magnitude was tried at every level")
    cands = sorted(shared)
    if len(cands) > 1 and default_ed50 is not None and default_ed50 > 0 and all(c > 0 for c in cands):
        dose, rule = min(cands, key=lambda c: abs(math.log(c / default_ed50))), "nearest to the default level's ED50"
    elif len(cands) > 1:
        def least(c: float) -> int:
            return min(kind.filter((pl.col("stochasticity") == lv) & (pl.col("magnitude") == c)).height
                       for lv in levels)
        dose, rule = max(cands, key=lambda c: (least(c), -c)), "most runs at every level"
    else:
        dose, rule = cands[0], "the one magnitude tried at every level"
    per, ks, ns = [], [], []
    for lv in levels:
        g = kind.filter((pl.col("stochasticity") == lv) & (pl.col("magnitude") == dose))
        k_ = int(g["collapsed"].sum())
        ks.append(k_)
        ns.append(g.height)
        per.append({"level": lv, **number(k_ / g.height, g.height, clopper_pearson(k_, g.height)), "n_collapsed": k_})
    p, method = exact_rate_test(ks, ns, seed)
    return {"status": "ok", "magnitude": dose, "dose_rule": rule, "per_level": per, "test": method, "p_value": p,
            "reading": "collapse rate differs across levels (p < 0.05)" if p is not None and p < 0.05
            else "no difference in collapse rate shown"}


def control_performance(ctrl: pl.DataFrame, levels: list[str]) -> dict[str, Any]:
    """Final performance of the unperturbed runs per level (mean, t CI) and the Welch CI of most minus least
    stochastic level: if the controls learn differently, a shift of the dose-response may be slower learning."""
    per, vals = [], {}
    for lv in levels:
        x = ctrl.filter(pl.col("stochasticity") == lv)["final_performance"].cast(pl.Float64).drop_nulls().to_numpy()
        x = x[np.isfinite(x)]
        vals[lv] = x
        ci = tuple(sps.ttest_1samp(x, 0.0).confidence_interval(0.95)) if x.size >= 2 else None
        per.append({"level": lv, **number(float(x.mean()) if x.size else None, int(x.size), ci,
                                          interval="t interval of the mean")})
    lo_lv, hi_lv = levels[0], levels[-1]
    a, b = vals[hi_lv], vals[lo_lv]
    if a.size < 2 or b.size < 2:
        diff = not_testable(f"n too small: {a.size} controls at {hi_lv}, {b.size} at {lo_lv} (need >= 2 each)")
        differs = None
    else:
        t = sps.ttest_ind(a, b, equal_var=False)
        ci = t.confidence_interval(0.95)
        diff = {"status": "ok", "levels": f"{hi_lv} - {lo_lv}",
                **number(float(a.mean() - b.mean()), int(a.size + b.size), (float(ci.low), float(ci.high)),
                         p_value=float(t.pvalue), interval="Welch t")}
        differs = bool(ci.low > 0 or ci.high < 0)
    return {"per_level": per, "difference": diff, "learning_differs": differs}


def shared_cells(pert: pl.DataFrame, levels: list[str]) -> pl.DataFrame:
    """The perturbed runs of the (kind, magnitude, seed) cells that were run at every level in ``levels``.

    A level's collapse probability over them compares like with like: doses or seeds run at one level only (the
    extra doses a level's own dose-response asked for) would otherwise weigh its rate by its design.
    """
    keys = [k for k in (*KIND_KEYS, "magnitude", "seed") if k in pert.columns]
    every = (pert.group_by(keys).agg(pl.col("stochasticity").n_unique().alias("_levels"))
             .filter(pl.col("_levels") == len(levels)).drop("_levels"))
    return pert.join(every, on=keys, how="semi", nulls_equal=True)


def _kind_key(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in KIND_KEYS}


def stochasticity_buffer(runs: pl.DataFrame, cox_summary: dict[str, Any], n_boot: int = 1000, seed: int = 0,
                         looks: int = 1) -> dict[str, Any]:
    """Regularity 2 as a shift of the dose-response (module docstring), plus the collapse probability per level
    (perturbed runs) and the Cox HR of the level.

    ``runs``: natural runs with outcomes (``collapsed``, ``final_performance``) and the key columns. ``looks``:
    how many times the ED50 ratio was looked at while seeds were added (:class:`ED50Ratio`); every ratio's CI and
    the verdict are widened for them.
    """
    levels = level_order(runs["stochasticity"].to_list())
    if len(levels) < 2:
        return not_testable(f"one stochasticity level in the corpus ({', '.join(levels)})", levels=levels,
                            verdict="undetermined")
    per = []
    ctrl_mask = control_mask(runs)
    pert = runs.filter(~ctrl_mask)
    shared = shared_cells(pert, levels)
    for lv in levels:
        g = shared.filter(pl.col("stochasticity") == lv)
        k = int(g["collapsed"].sum())
        per.append({"level": lv, **number(k / g.height if g.height else None, g.height, clopper_pearson(k, g.height)),
                    "runs": "the (kind, magnitude, seed) cells run at every level",
                    "n_left_out": int(pert.filter(pl.col("stochasticity") == lv).height - g.height)})
    hrs = [c for c in cox_summary.get("coefficients", []) if str(c["covariate"]).startswith("stochasticity=")]
    ed50_rows, ratios, fixed, ratio_fits = [], [], [], []
    lo_lv, hi_lv = levels[0], levels[-1]
    keys = [k for k in KIND_KEYS if k in pert.columns]
    kinds = sorted(pert.filter(pl.col("magnitude").is_not_null()).group_by(keys), key=lambda kv: str(kv[0]))
    for _, kind in kinds:
        where = _kind_key(kind.row(0, named=True))
        kind_levels = level_order(kind["stochasticity"].to_list())
        fits: dict[str, DoseResponseModel | None] = {}
        for lv in kind_levels:
            g = kind.filter(pl.col("stochasticity") == lv)
            fit, st = fit_level(g["magnitude"].to_numpy(), g["collapsed"].to_numpy())
            fits[lv] = fit if st.ok else None
            ed = fit.effective_dose(0.5) if fit is not None and st.ok else None
            ed_ci = (ed.ci_low, ed.ci_high) if ed else None
            ed50_rows.append({**where, "level": lv, **st.to_json(),
                              "ed50": number(ed.value if ed else None, g.height, ed_ci,
                                             interval="Fieller (dose_response.DoseResponseModel)"),
                              "fit_status": getattr(fit.status_, "value", None) if fit is not None else None,
                              "n_doses": int(g["magnitude"].n_unique()), "n_seeds": int(g["seed"].n_unique()),
                              "m_min": g["magnitude"].min(), "m_max": g["magnitude"].max(),
                              "n_collapsed": int(g["collapsed"].sum())})
        if lo_lv in kind_levels and hi_lv in kind_levels:
            rf = ED50Ratio(0.05, n_boot, seed, looks=looks).fit(
                kind["magnitude"].to_numpy(), kind["collapsed"].to_numpy(), kind["seed"].to_numpy(),
                kind["stochasticity"].to_numpy(), hi_lv, lo_lv)
            ratios.append({**where, **rf.summary()})
            ratio_fits.append((where, rf))
        else:
            ratios.append({**where, **not_testable(f"the kind was not run at both {lo_lv} and {hi_lv}"),
                           "verdict": "undetermined"})
        default = fits.get("default")
        fixed.append({**where, **fixed_dose_rates(kind, kind_levels, _ed50(default) if default is not None else None,
                                                  seed)})
    ctrl = runs.filter(ctrl_mask)
    gkeys = [k for k in ("domain", "algo", "env") if k in ctrl.columns]
    controls = [{**dict(zip(gkeys, key, strict=True)),
                 **control_performance(g, level_order(g["stochasticity"].to_list()))}
                for key, g in sorted(ctrl.group_by(gkeys), key=lambda kv: str(kv[0]))
                if g["stochasticity"].n_unique() >= 2]
    verdict, reason = overall_verdict(ratio_fits, controls)
    return {"status": "ok", "levels": levels, "collapse_probability": per, "cox_hazard_ratios": hrs,
            "cox_status": Status.from_json(cox_summary).to_json(), "ed50_by_level": ed50_rows, "ed50_ratio": ratios,
            "fixed_dose": fixed, "controls": controls, "verdict": verdict, "verdict_reason": reason}


def overall_verdict(ratio_fits: list[tuple[dict[str, Any], ED50Ratio]], controls: list[dict[str, Any]],
                    alpha: float = 0.05) -> tuple[str, str]:
    """The claim's verdict over kinds, each kind's ratio CI at the Bonferroni level ``1 - alpha / (k looks)``
    (``looks``: the fits' own, :class:`ED50Ratio`)."""
    usable = [(w, rf) for w, rf in ratio_fits if rf.status_.ok]
    if not usable:
        why = "; ".join(f"{w['perturbation']}: {rf.status_.reason}" for w, rf in ratio_fits) or \
            "no kind was run at both the lowest and the highest level"
        return "undetermined", f"no ED50 ratio with a CI ({why})"
    k = len(usable)
    words = []
    votes = set()
    for w, rf in usable:
        level = alpha / (k * rf.looks)
        lo, hi = rf.interval(level)
        v = buffer_verdict(lo, hi)
        votes.add(v)
        looked = f" ({rf.looks} looks)" if rf.looks > 1 else ""
        words.append(f"{w['perturbation']}: ratio {rf.ratio_:.3g}, {100 * (1 - level):.1f}% CI{looked} "
                     f"[{'n/a' if lo is None else f'{lo:.3g}'}, {'n/a' if hi is None else f'{hi:.3g}'}] -> {v}")
    if "buffers" in votes and "no buffering shown" in votes:
        verdict = "undetermined"
        words.insert(0, "kinds disagree")
    elif "buffers" in votes:
        verdict = "buffers"
    elif "no buffering shown" in votes:
        verdict = "no buffering shown"
    else:
        verdict = "undetermined"
    slow = [c for c in controls if c.get("learning_differs")]
    if slow and verdict != "undetermined":
        words.append("caveat: the controls' final performance differs between the extreme levels in "
                     + ", ".join(str(c.get("env")) for c in slow) + " (see controls)")
    return verdict, f"Bonferroni over {k} kind(s): " + "; ".join(words)


# ---------------------------------------------------------------------------------------- precedence
def precedence(ew_rows: pl.DataFrame | None, detectors: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Lead-time distribution and the share of collapses whose alarm came first, per monitor.

    ``detectors``: default the meta-state monitors (:func:`stabilitybench.analysis.detectors.monitor_names`).
    ``ew_rows`` None (no early-warning evaluation) gives a not-testable entry per monitor.
    """
    detectors = monitor_names() if detectors is None else detectors
    if ew_rows is None:
        return [{"detector": det, **not_testable("no early-warning evaluation")} for det in detectors]
    out = []
    for det in detectors:
        d = ew_rows.filter((pl.col("detector") == det) & pl.col("collapsed"))
        if d.height == 0:
            out.append({"detector": det, **not_testable("no collapsed test runs")})
            continue
        leads = np.array([x for x in d["lead_updates"].to_list() if x is not None], dtype=float)
        k = int(d["alarm_before_collapse"].sum())
        q1, q3 = iqr(leads)
        ci = bootstrap_ci(lambda idx, leads=leads: float(np.median(leads[idx])), leads.size) if leads.size else None
        out.append({
            "detector": det,
            "share_alarm_first": number(k / d.height, d.height, clopper_pearson(k, d.height)),
            "median_lead_updates": number(float(np.median(leads)) if leads.size else None, int(leads.size),
                                          ci, iqr_low=q1, iqr_high=q3),
            "min_lead_updates": float(leads.min()) if leads.size else None,
            "max_lead_updates": float(leads.max()) if leads.size else None,
            "leads": leads.tolist(),
        })
    return out
