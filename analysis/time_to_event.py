"""Question (c): does a score foresee a collapse that no perturbation announced? Time-to-event evaluation.

In the spontaneous regime every run is trained at one constant setting (no kick), so "alarm = perturbation on"
is no longer available to a detector; a collapse comes at a time nobody chose. The evaluation asks, at every
block of every run, whether the score predicts a collapse within the next ``h`` updates. Everything here is a
pure function of per-block rows, one per (run, block), with the columns

* ``run_id``; ``block_end_step``: the block's last update (when its score is known);
* ``score``: the detector's score of the block (NaN: the detector is still warming up: never an alarm);
* ``collapse_step``: the run's collapse date in updates, null if it did not collapse;
* ``is_control``: a run at the normal (stable) setting.

Definitions (``c`` a run's collapse step, ``s`` a block's end step, ``lead = c - s``):

* **labels** (:func:`label_blocks`): a block with ``s >= c`` (it holds the collapse or comes after it) is dropped;
  ``y = 1`` when ``0 < lead <= h`` ("collapse within the next h updates"), else 0; every block of a run without a
  collapse is negative. Runs fall in three classes: ``collapsed``, ``control`` and ``survivor`` (the aggressive
  setting, no collapse).
* **stable updates**: the blocks of controls and survivors, and the blocks of collapsed runs more than ``h``
  updates before the collapse (``lead > h``). A block stands for its own updates: the step difference to the
  previous block of its run (the first block: the run's median difference).
* **alarm**: ``score > threshold`` (strict; NaN never alarms, ``+inf`` always does). A **false alarm** is an
  alarming stable block, counted per block: a run of k alarming blocks is k alarms, which keeps the rate
  monotone in the threshold (so calibration is a quantile). Rates are per 10,000 stable updates.
* **calibration** (:func:`calibrate_threshold`): the lowest threshold at which the stable blocks of the
  calibration runs hold at most ``target * updates / 10,000`` alarms (target 1 per 10k). The calibration runs are
  the controls: each control is scored at a threshold calibrated on the *other* half of the controls (two folds,
  seeded), every other run at the threshold calibrated on all controls.
* **warned** (:func:`warned_fraction`): a collapse is warned with lead in ``[min_lead, h]`` when some block with
  ``min_lead <= lead <= h`` alarms. Alarms earlier than ``h`` are false alarms by the definition above, so "warned
  at least L ahead" is reported inside a window: lead in ``[L, h]`` for each smaller horizon ``L`` (and any
  ``min_leads`` given), plus ``[1, h]`` (any warning before the collapse within the horizon).
* **intervals**: AUROC with a run-clustered bootstrap (BCa, clusters = runs or ``cluster_col``); false alarms with
  the exact Poisson interval of the count over the exposure *and* the run-clustered bootstrap (alarms cluster
  within runs, which a Poisson interval ignores): ``ci_low``/``ci_high`` are the envelope of the two; warned
  fractions with Clopper-Pearson.
* **null twin** (:func:`ar1_twin`, :func:`twin_check`): per run, an AR(1) surrogate of its own pre-onset block
  telemetry (per column: mean, lag-1 autocorrelation ``phi`` and innovation SD ``sigma``, as Yule-Walker; the same
  length, starting at the run's first value; seeded); the pipeline fits it to the run's deviation from the
  controls' mean trajectory and adds that trajectory back
  (:func:`stabilitybench.analysis.early_warning.null_twin`). The caller scores the twins with the detector; a detector
  passes when it does not alarm on twins more often than on controls (rate ratio, exact conditional CI and
  one-sided p-value).
* **no-kick reference** (:func:`time_since_start`): the score "updates since the regime began" (``block_end_step``
  minus ``start_col``, default 0), which replaces ``perturbation_on`` (constant here); every detector is compared
  with it (AUROC difference on the same blocks, paired run-clustered bootstrap).

Horizons: :data:`HORIZONS` (RL: 100 and 500 updates of 8,000; LM: 50 and 200 updates of the ramp regime's 1,000, the
tiny GPT-2's scale: an LM collapse is dated on the validation loss, evaluated every 25 updates and smoothed over 20,
so its date is good to about 35 updates, and a horizon shorter than that (Adam's RMS precursor leads spikes by 1-8
iterations, arXiv 2304.13013) would label date noise; 200 is a fifth of the run).
Wired into the pipeline by :mod:`stabilitybench.analysis.time_to_event_stage`;
:func:`time_to_event_summary` returns question (c)'s summary entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps
from scipy.signal import lfilter

from stabilitybench.analysis.errors import AnalysisError, InsufficientDataError
from stabilitybench.analysis.stats import auroc, clopper_pearson, cluster_bootstrap_ci
from stabilitybench.analysis.summary import not_testable, number

#: The horizons h (updates) of question (c) per domain (see the module docstring).
HORIZONS: dict[str, tuple[int, ...]] = {"rl": (100, 500), "lm": (50, 200)}
#: False alarms are counted per this many stable updates.
PER_UPDATES = 10_000
REQUIRED_COLUMNS = ("run_id", "block_end_step", "score", "collapse_step", "is_control")


# --------------------------------------------------------------------------- labels and exposure
def _check(blocks: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in blocks.columns]
    if missing:
        raise AnalysisError(f"time-to-event blocks lack column(s) {', '.join(missing)} "
                            f"(need {', '.join(REQUIRED_COLUMNS)})")


def block_updates(steps: np.ndarray) -> np.ndarray:
    """Updates each block of one run stands for, shape ``(T,)`` from its sorted end steps ``(T,)``: the difference
    to the previous block; the first block gets the run's median difference (``steps[0] + 1`` with one block)."""
    steps = np.asarray(steps, dtype=float)
    if steps.size == 0:
        return steps.copy()
    d = np.diff(steps)
    first = float(np.median(d)) if d.size else float(steps[0]) + 1.0
    return np.concatenate([[max(first, 1.0)], d])


def label_blocks(blocks: pl.DataFrame, h: int) -> pl.DataFrame:
    """The rows of ``blocks`` that question (c) scores at horizon ``h``, with labels and exposure.

    Adds ``lead`` (``collapse_step - block_end_step``, null without a collapse), ``y`` (collapse within the next
    ``h`` updates), ``stable`` (a stable block, see the module docstring), ``updates`` (the updates the block stands
    for) and ``run_class`` (``collapsed`` | ``control`` | ``survivor``); drops blocks at or after a collapse.
    Sorted by run and step.
    """
    _check(blocks)
    b = blocks.sort(["run_id", "block_end_step"])
    upd = np.concatenate([block_updates(g["block_end_step"].to_numpy())
                          for _, g in b.group_by("run_id", maintain_order=True)]) if b.height else np.zeros(0)
    b = b.with_columns(pl.Series("updates", upd, dtype=pl.Float64))
    collapsed = pl.col("collapse_step").is_not_null()
    b = b.filter(~collapsed | (pl.col("block_end_step") < pl.col("collapse_step")))
    lead = pl.col("collapse_step") - pl.col("block_end_step")
    return b.with_columns(
        lead.alias("lead"),
        (collapsed & (lead <= h)).fill_null(False).alias("y"),
        (~collapsed | (lead > h)).fill_null(True).alias("stable"),
        pl.when(collapsed).then(pl.lit("collapsed")).when(pl.col("is_control")).then(pl.lit("control"))
        .otherwise(pl.lit("survivor")).alias("run_class"),
    )


def alarms(score: np.ndarray, threshold: float) -> np.ndarray:
    """``score > threshold`` per block, shape of ``score`` (NaN never alarms)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(score, float) > threshold


# --------------------------------------------------------------------------- calibration and false alarms
def calibrate_threshold(score: np.ndarray, updates: np.ndarray, target_per_10k: float = 1.0) -> float:
    """The lowest threshold at which stable blocks ``score`` ``(n,)``, standing for ``updates`` ``(n,)``, hold at
    most ``floor(target * sum(updates) / 10,000)`` alarms (``score > threshold``).

    It is the ``(k + 1)``-th largest score, ``k`` the allowed count (ties at it do not alarm); ``-inf`` when every
    block may alarm; NaN scores never alarm and are not counted.
    """
    s = np.asarray(score, float)
    s = s[~np.isnan(s)]
    allowed = int(np.floor(target_per_10k * float(np.sum(updates)) / PER_UPDATES + 1e-9))
    if allowed >= s.size:
        return float("-inf")
    return float(np.sort(s)[::-1][allowed])


def _rate_ci(counts: np.ndarray, exposure: np.ndarray, clusters: np.ndarray, n_boot: int, alpha: float,
             seed: int) -> dict[str, Any]:
    """False alarms per 10k updates from per-run ``counts`` and ``exposure`` (``(r,)``), with both intervals."""
    k, u = int(counts.sum()), float(exposure.sum())
    if u <= 0:
        return not_testable("no stable updates")
    lo_p, hi_p = sps.chi2.ppf(alpha / 2, 2 * k) / 2 if k else 0.0, sps.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    scale = PER_UPDATES / u
    poisson = (float(lo_p) * scale, float(hi_p) * scale)

    def stat(idx: np.ndarray) -> float | None:
        e = exposure[idx].sum()
        return float(counts[idx].sum() / e * PER_UPDATES) if e > 0 else None

    lo_b, hi_b, method = cluster_bootstrap_ci(stat, clusters, n_boot=n_boot, alpha=alpha, seed=seed)
    lo = min(poisson[0], lo_b) if lo_b is not None else poisson[0]
    hi = max(poisson[1], hi_b) if hi_b is not None else poisson[1]
    return number(k * scale, len(np.unique(clusters)), (lo, hi), count=k, stable_updates=u,
                  ci_poisson_exact=list(poisson), ci_cluster_bootstrap=[lo_b, hi_b],
                  bootstrap=method.replace("seeds", "runs"), n_runs=int(counts.size),
                  interval="envelope of the exact Poisson and the run-clustered bootstrap intervals")


def false_alarm_rate(labelled: pl.DataFrame, threshold: float | np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0, cluster_col: str = "run_id") -> dict[str, Any]:
    """False alarms per 10,000 stable updates of ``labelled`` (:func:`label_blocks` rows; only ``stable`` ones
    count) at ``threshold`` (a number, or one per row), with its CIs (see the module docstring); ``n`` = clusters."""
    thr = np.broadcast_to(np.asarray(threshold, float), (labelled.height,))
    st = labelled.with_columns(pl.Series("_alarm", alarms(labelled["score"].to_numpy(), thr)))
    st = st.filter(pl.col("stable"))
    if st.height == 0:
        return not_testable("no stable block")
    per = st.group_by("run_id", maintain_order=True).agg(
        pl.col("_alarm").sum().alias("k"), pl.col("updates").sum().alias("u"), pl.col(cluster_col).first().alias("c"))
    return _rate_ci(per["k"].to_numpy().astype(float), per["u"].to_numpy().astype(float), per["c"].to_numpy(),
                    n_boot, alpha, seed)


def _control_folds(runs: Sequence[str], seed: int) -> dict[str, int]:
    """Control run -> fold 0/1 (a seeded permutation of the sorted run ids, cut in halves)."""
    runs = sorted(set(runs))
    perm = np.random.default_rng(seed).permutation(len(runs))
    return {runs[i]: int(j >= len(runs) / 2) for j, i in enumerate(perm)}


def calibrated_thresholds(labelled: pl.DataFrame, target_per_10k: float = 1.0, seed: int = 0,
                          run_class: str = "control") -> tuple[dict[str, float], dict[str, Any]]:
    """The calibrated thresholds of question (c) and the calibration's record.

    Returns ``({calibration run_id: its threshold}, record)``: the calibration runs are the ``run_class`` runs
    (the controls; ``"survivor"`` for the within-regime reading); each one's threshold is calibrated on the other
    half of them (two folds, seeded); every other run takes ``record["threshold"]``, calibrated on all of them
    (:func:`thresholds_of`). Raises :class:`InsufficientDataError` with fewer than 2 calibration runs.
    """
    ctrl = labelled.filter(pl.col("run_class") == run_class)
    ids = ctrl["run_id"].unique().to_list()
    if len(ids) < 2:
        raise InsufficientDataError(f"fewer than 2 {run_class} runs to calibrate on")
    fold = _control_folds(ids, seed)
    all_thr = calibrate_threshold(ctrl["score"].to_numpy(), ctrl["updates"].to_numpy(), target_per_10k)
    fold_thr = []
    for f in (0, 1):
        other = ctrl.filter(pl.col("run_id").replace_strict(fold, default=None) != f)
        fold_thr.append(calibrate_threshold(other["score"].to_numpy(), other["updates"].to_numpy(), target_per_10k))
    record = {"target_fa_per_10k": target_per_10k, "threshold": all_thr, "fold_thresholds": fold_thr,
              "n_control_runs": len(ids), "control_updates": float(ctrl["updates"].sum()),
              "calibration_runs": run_class,
              "method": f"{run_class} runs only; each scored at the threshold of the other half of them (2 folds, "
                        f"seeded), other runs at the threshold of all {run_class} runs"}
    return {r: fold_thr[f] for r, f in fold.items()}, record


def thresholds_of(labelled: pl.DataFrame, per_control: dict[str, float], threshold: float) -> np.ndarray:
    """Per-row thresholds of ``labelled`` ``(n,)``: a calibration run's own (cross-fitted) one, else ``threshold``."""
    return np.array([per_control.get(r, threshold) for r in labelled["run_id"].to_list()], float)


# --------------------------------------------------------------------------- AUROC with run-clustered CIs
def _weighted_auroc(group: np.ndarray, y: np.ndarray, n_groups: int, w: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with unit weights ``w`` ``(n,)`` (bootstrap multiplicities); ``group`` ``(n,)`` is each
    unit's rank among the distinct scores (ties share a group). The same number as :func:`stats.auroc` at w = 1."""
    pos = np.bincount(group, weights=w * y, minlength=n_groups)
    neg = np.bincount(group, weights=w * (1 - y), minlength=n_groups)
    P, N = pos.sum(), neg.sum()
    if P <= 0 or N <= 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (P * N))


def _score_groups(score: np.ndarray) -> tuple[np.ndarray, int]:
    s = np.where(np.isnan(score), -np.inf, score)
    u, g = np.unique(s, return_inverse=True)
    return g.ravel(), u.size


def _auroc_entry(score: np.ndarray, y: np.ndarray, clusters: np.ndarray, n_boot: int, alpha: float, seed: int,
                 other: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC of ``score`` for ``y`` with its run-clustered CI; with ``other``, the paired difference
    ``AUROC(score) - AUROC(other)`` on the same blocks."""
    yf = y.astype(float)
    n_pos_runs = len(np.unique(clusters[y]))
    if y.sum() == 0 or (~y).sum() == 0:
        return not_testable("n too small: a class has no block", n_pos=int(y.sum()), n_neg=int((~y).sum()))
    g, ng = _score_groups(score)
    go, ngo = _score_groups(other) if other is not None else (None, 0)

    def one(idx_w: np.ndarray) -> float | None:
        a = _weighted_auroc(g, yf, ng, idx_w)
        if other is None or a is None:
            return a
        b = _weighted_auroc(go, yf, ngo, idx_w)
        return None if b is None else a - b

    def stat(idx: np.ndarray) -> float | None:
        return one(np.bincount(idx, minlength=y.size).astype(float))

    value = auroc(score[y], score[~y])
    if other is not None and value is not None:
        value -= auroc(other[y], other[~y])
    lo, hi, method = cluster_bootstrap_ci(stat, clusters, n_boot=n_boot, alpha=alpha, seed=seed)
    return number(value, n_pos_runs, (lo, hi), n_pos=int(y.sum()), n_neg=int((~y).sum()),
                  n_runs=len(np.unique(clusters)), interval=method.replace("seeds", "runs"))


# --------------------------------------------------------------------------- warnings before a collapse
def warned_fraction(labelled: pl.DataFrame, threshold: float | np.ndarray, h: int, min_lead: int = 1,
                    alpha: float = 0.05) -> dict[str, Any]:
    """Fraction of collapsed runs with an alarm at a block whose lead lies in ``[min_lead, h]`` updates, with its
    Clopper-Pearson CI; ``n`` = collapsed runs with a block before the collapse. Also the first warning's lead
    (median and IQR, in updates) over the warned runs."""
    thr = np.broadcast_to(np.asarray(threshold, float), (labelled.height,))
    b = labelled.with_columns(pl.Series("_alarm", alarms(labelled["score"].to_numpy(), thr)))
    col = b.filter(pl.col("run_class") == "collapsed")
    n = col["run_id"].n_unique()
    if n == 0:
        return not_testable("no collapsed run", min_lead=min_lead, horizon=h)
    hit = col.filter(pl.col("_alarm") & (pl.col("lead") >= min_lead) & (pl.col("lead") <= h))
    leads = hit.group_by("run_id").agg(pl.col("lead").max())["lead"].to_numpy().astype(float)
    k = int(leads.size)
    lo, hi = clopper_pearson(k, n, alpha)
    q = np.quantile(leads, [0.25, 0.5, 0.75]).tolist() if k else [None, None, None]
    return number(k / n, n, (lo, hi), k=k, min_lead=min_lead, horizon=h, first_warning_lead_median=q[1],
                  first_warning_lead_iqr=[q[0], q[2]], interval="Clopper-Pearson")


def warning_curve(blocks: pl.DataFrame, h: int, min_lead: int = 1, n_points: int = 50) -> pl.DataFrame:
    """Warned fraction (lead in ``[min_lead, h]``) against false alarms per 10k stable updates over a grid of
    thresholds (quantiles of the stable blocks' scores): the figure's curve for one detector. Columns
    ``threshold``, ``fa_per_10k``, ``warned_fraction``, ``n_collapsed``."""
    lab = label_blocks(blocks, h)
    score = lab["score"].to_numpy()
    stable = lab["stable"].to_numpy()
    s = score[stable & ~np.isnan(score)]
    qs = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_points))) if s.size else np.zeros(0)
    u = float(lab.filter(pl.col("stable"))["updates"].sum())
    col = lab["run_class"].to_numpy() == "collapsed"
    lead = lab["lead"].to_numpy().astype(float)
    runs = lab["run_id"].to_numpy()
    window = col & (lead >= min_lead) & (lead <= h)
    n = len(np.unique(runs[col]))
    rows = []
    for t in np.concatenate([[-np.inf], qs]):
        a = alarms(score, t)
        fa = float(np.sum(a & stable)) / u * PER_UPDATES if u > 0 else None
        warned = len(np.unique(runs[a & window])) / n if n else None
        rows.append({"threshold": float(t), "fa_per_10k": fa, "warned_fraction": warned, "n_collapsed": n})
    return pl.DataFrame(rows, schema={"threshold": pl.Float64, "fa_per_10k": pl.Float64,
                                      "warned_fraction": pl.Float64, "n_collapsed": pl.Int64})


# --------------------------------------------------------------------------- the null twin and the reference
def ar1_fit(x: np.ndarray) -> tuple[float, float, float]:
    """``(mean, phi, sigma)`` of one column ``x`` ``(T,)`` (finite values): the mean, the lag-1 autocorrelation
    (``statsmodels`` ``acf``, the biased estimator, so ``|phi| < 1``: Yule-Walker) and the innovation SD
    ``sd * sqrt(1 - phi^2)``. A constant column has ``phi = sigma = 0``; fewer than 3 values give NaN."""
    from statsmodels.tsa.stattools import acf

    v = np.asarray(x, float)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return float("nan"), float("nan"), float("nan")
    mu, sd = float(v.mean()), float(v.std())
    if sd <= 1e-12 * max(1.0, abs(mu)):
        return mu, 0.0, 0.0
    phi = float(acf(v, nlags=1, fft=True)[1])
    return mu, phi, sd * float(np.sqrt(max(0.0, 1.0 - phi * phi)))


def ar1_twin(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """A null twin of block telemetry ``X`` ``(T, p)``: per column an AR(1) with the column's own mean, ``phi`` and
    ``sigma`` (:func:`ar1_fit`), started at the column's first finite value, the same length ``T``; seeded. Shape
    ``(T, p)``; a column that cannot be fitted stays NaN."""
    X = np.asarray(X, float)
    T, p = X.shape
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((T, p))
    out = np.full((T, p), np.nan)
    for j in range(p):
        mu, phi, sigma = ar1_fit(X[:, j])
        fin = X[np.isfinite(X[:, j]), j]
        if not np.isfinite(mu) or T == 0:
            continue
        d0 = float(fin[0]) - mu
        d = np.empty(T)
        d[0] = d0
        if T > 1:
            d[1:] = lfilter([1.0], [1.0, -phi], sigma * e[1:, j], zi=[phi * d0])[0]
        out[:, j] = mu + d
    return out


def time_since_start(blocks: pl.DataFrame, start_col: str | None = None) -> pl.DataFrame:
    """``blocks`` with ``score`` replaced by the no-kick reference: updates since the regime began
    (``block_end_step - start_col``, the regime starting at update 0 without ``start_col``)."""
    start = pl.col(start_col) if start_col else pl.lit(0)
    return blocks.with_columns((pl.col("block_end_step") - start).cast(pl.Float64).alias("score"))


def twin_check(twins: pl.DataFrame, labelled: pl.DataFrame, control_thresholds: np.ndarray, threshold: float,
               alpha: float = 0.05) -> dict[str, Any]:
    """Alarm rate on null twins vs on held-out controls (per 10k updates) and their ratio (twins / controls).

    ``twins``: per-block rows ``run_id, block_end_step, score`` of the twins, scored at ``threshold`` (calibrated on
    all controls); the controls of ``labelled`` at their cross-fitted ``control_thresholds`` (one per row). The
    ratio's CI is exact conditional (given the total count the twins' count is binomial: Clopper-Pearson, mapped
    to the ratio) with the one-sided binomial p-value of "twins alarm more"; ``passes`` = that p >= alpha.
    """
    tw = twins.sort(["run_id", "block_end_step"])
    upd = np.concatenate([block_updates(g["block_end_step"].to_numpy())
                          for _, g in tw.group_by("run_id", maintain_order=True)]) if tw.height else np.zeros(0)
    k1, e1 = int(alarms(tw["score"].to_numpy(), threshold).sum()), float(upd.sum())
    ctrl = labelled["run_class"].to_numpy() == "control"
    k2 = int(alarms(labelled["score"].to_numpy()[ctrl], np.asarray(control_thresholds, float)[ctrl]).sum())
    e2 = float(labelled["updates"].to_numpy()[ctrl].sum())
    if e1 <= 0 or e2 <= 0:
        return not_testable("no twin or no control updates")
    r1, r2 = k1 / e1 * PER_UPDATES, k2 / e2 * PER_UPDATES
    base = {"twin_fa_per_10k": r1, "control_fa_per_10k": r2, "twin_alarms": k1, "control_alarms": k2,
            "twin_updates": e1, "control_updates": e2, "n_twin_runs": tw["run_id"].n_unique(),
            "n_control_runs": int(labelled.filter(pl.col("run_class") == "control")["run_id"].n_unique())}
    n = k1 + k2
    if n == 0:
        return {**number(None, n, None, **base, note="no alarm on twins or controls: ratio undefined"),
                "passes": True}
    lo, hi = clopper_pearson(k1, n, alpha)
    odds = e2 / e1

    def ratio(p: float | None) -> float | None:
        if p is None:
            return None
        return float("inf") if p >= 1 else p / (1 - p) * odds

    p_more = float(sps.binomtest(k1, n, e1 / (e1 + e2), alternative="greater").pvalue)
    value = (r1 / r2) if r2 > 0 else float("inf")
    return {**number(value, n, (ratio(lo), ratio(hi)), **base, p_twins_alarm_more=p_more,
                     interval="exact conditional (Clopper-Pearson on the twins' share of alarms)"),
            "passes": bool(p_more >= alpha)}


# --------------------------------------------------------------------------- question (c)
_FA_CLASS = {"control": "controls", "collapsed": "pre_collapse", "survivor": "survivors"}


def _leads(h: int, horizons: Sequence[int], min_leads: Sequence[int]) -> list[int]:
    """The smallest leads L of the warned windows ``[L, h]``: 1, each smaller horizon and each ``min_leads`` <= h."""
    return sorted({1, *(int(x) for x in horizons if x < h), *(int(x) for x in min_leads if x <= h)})


def _horizon_entry(lab: pl.DataFrame, rlab: pl.DataFrame, t: np.ndarray, h: int, classes: Sequence[str],
                   horizons: Sequence[int], min_leads: Sequence[int], n_boot: int, alpha: float, seed: int,
                   cluster_col: str) -> dict[str, Any]:
    """One horizon of a (c) reading: AUROC, the reference's and their difference on the labelled blocks ``lab``
    (``rlab``: the same blocks scored by the reference), false alarms per 10k stable updates per run class in
    ``classes`` and over all at the per-row thresholds ``t``, and the warned fractions."""
    y, clusters = lab["y"].to_numpy(), lab[cluster_col].to_numpy()
    score, rscore = lab["score"].to_numpy().astype(float), rlab["score"].to_numpy().astype(float)
    entry: dict[str, Any] = {
        "horizon": h, "n_pos_blocks": int(y.sum()), "n_neg_blocks": int((~y).sum()),
        "auroc": _auroc_entry(score, y, clusters, n_boot, alpha, seed),
        "reference_auroc": _auroc_entry(rscore, y, clusters, n_boot, alpha, seed),
        "auroc_minus_reference": _auroc_entry(score, y, clusters, n_boot, alpha, seed, other=rscore),
    }
    fa = {}
    for name, mask in [*((_FA_CLASS[c], pl.col("run_class") == c) for c in classes), ("all_stable", pl.lit(True))]:
        sub = lab.with_columns(pl.Series("_t", t)).filter(mask)
        fa[name] = false_alarm_rate(sub, sub["_t"].to_numpy(), n_boot, alpha, seed, cluster_col) if sub.height \
            else not_testable("no run of this class")
    entry["false_alarms_per_10k"] = fa
    entry["warned"] = {str(L): warned_fraction(lab, t, h, L, alpha) for L in _leads(h, horizons, min_leads)}
    return entry


def auroc_difference(blocks_a: pl.DataFrame, blocks_b: pl.DataFrame, h: int, *, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, cluster_col: str = "run_id") -> dict[str, Any]:
    """Paired ``AUROC(a) - AUROC(b)`` at horizon ``h`` on the (run, block) pairs both detectors scored.

    ``blocks_a`` and ``blocks_b`` have :data:`REQUIRED_COLUMNS` (the same runs and collapses, each detector's
    ``score``); labels as :func:`label_blocks`. The CI resamples whole runs (``cluster_col``) and recomputes both
    AUROCs on each replicate, so it carries the pairing: how question (c) compares a detector with the no-kick
    reference, here for any two detectors (e.g. a meta-state monitor against a loss-only spike rule).
    """
    la, lb = label_blocks(blocks_a, h), label_blocks(blocks_b, h)
    keys = ["run_id", "block_end_step"]
    j = la.join(lb.select(*keys, pl.col("score").alias("_other")), on=keys, how="inner").sort(keys)
    if j.height == 0:
        return not_testable("no block scored by both detectors", horizon=h)
    y = j["y"].to_numpy()
    entry = _auroc_entry(j["score"].to_numpy().astype(float), y, j[cluster_col].to_numpy(), n_boot, alpha, seed,
                         other=j["_other"].to_numpy().astype(float))
    return {**entry, "horizon": h, "n_blocks": j.height, "n_runs": j["run_id"].n_unique()}


def time_to_event_summary(blocks: pl.DataFrame, horizons: Sequence[int] = HORIZONS["rl"], *,
                          target_per_10k: float = 1.0, min_leads: Sequence[int] = (), twins: pl.DataFrame | None = None,
                          n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, cluster_col: str = "run_id",
                          start_col: str | None = None) -> dict[str, Any]:
    """Question (c) for one detector: the summary entry (JSON-ready) from its per-block rows ``blocks``.

    ``blocks`` has :data:`REQUIRED_COLUMNS` (plus ``cluster_col`` and ``start_col`` when given). Per horizon ``h``:
    ``auroc`` (and the no-kick reference's, and the paired difference detector - reference), false alarms per 10k
    stable updates on ``controls`` (cross-fitted), ``pre_collapse`` (lead > h), ``survivors`` and ``all_stable``,
    and the ``warned`` fractions (lead in ``[L, h]`` for L = 1, each smaller horizon and ``min_leads``), for the
    detector and the reference at their own calibrated thresholds. ``twins``: the null twins' per-block scores
    (``run_id, block_end_step, score``), checked against the controls. Every number carries its n and CI.
    """
    _check(blocks)
    runs = blocks.group_by("run_id").agg(pl.col("collapse_step").first(), pl.col("is_control").first())
    n_coll = int(runs["collapse_step"].is_not_null().sum())
    n_ctrl = int(runs.filter(pl.col("collapse_step").is_null())["is_control"].sum())
    out: dict[str, Any] = {
        "question": "c", "n": {"runs": runs.height, "collapsed_runs": n_coll, "control_runs": n_ctrl,
                               "survivor_runs": runs.height - n_coll - n_ctrl, "blocks": blocks.height,
                               "unscored_blocks": int(blocks["score"].is_nan().sum())},
        "definitions": {"label": "collapse within the next h updates; blocks at or after a collapse dropped",
                        "alarm": "score > threshold; NaN never alarms", "false_alarm": "an alarming stable block",
                        "stable": "controls, survivors, and blocks more than h before a collapse",
                        "reference": "updates since the regime began (no-kick reference)"},
    }
    if n_ctrl < 2:
        out["status"] = not_testable("fewer than 2 control runs to calibrate the threshold on")
        return out
    ref_blocks = time_since_start(blocks, start_col)
    lab0 = label_blocks(blocks, int(max(horizons)))
    per_ctrl, cal = calibrated_thresholds(lab0, target_per_10k, seed)
    rper_ctrl, rcal = calibrated_thresholds(label_blocks(ref_blocks, int(max(horizons))), target_per_10k, seed)
    out["calibration"] = cal
    out["reference_calibration"] = rcal
    per_h: dict[str, Any] = {}
    for h in horizons:
        lab = label_blocks(blocks, int(h))
        rlab = label_blocks(ref_blocks, int(h))
        t = thresholds_of(lab, per_ctrl, cal["threshold"])
        rt = thresholds_of(rlab, rper_ctrl, rcal["threshold"])
        entry = _horizon_entry(lab, rlab, t, int(h), ("control", "collapsed", "survivor"), horizons, min_leads,
                               n_boot, alpha, seed, cluster_col)
        leads = _leads(int(h), horizons, min_leads)
        entry["reference_warned"] = {str(L): warned_fraction(rlab, rt, int(h), L, alpha) for L in leads}
        per_h[str(int(h))] = entry
    out["horizons"] = per_h
    out["within_regime"] = within_regime(blocks, horizons, target_per_10k=target_per_10k, min_leads=min_leads,
                                         n_boot=n_boot, alpha=alpha, seed=seed, cluster_col=cluster_col,
                                         start_col=start_col)
    if twins is not None:
        out["null_twin"] = twin_check(twins, lab0, thresholds_of(lab0, per_ctrl, cal["threshold"]), cal["threshold"],
                                      alpha)
    return out


def within_regime(blocks: pl.DataFrame, horizons: Sequence[int] = HORIZONS["rl"], *, target_per_10k: float = 1.0,
                  min_leads: Sequence[int] = (), n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                  cluster_col: str = "run_id", start_col: str | None = None) -> dict[str, Any]:
    """Question (c) read among the regime runs only: *when*, at the aggressive setting, will a run collapse?

    The controls differ from the regime runs by their setting, so a score that only recognises the setting (it
    alarms on every regime run, all the time) scores well on the pooled AUROC and still cannot time a collapse.
    Here the negatives are the regime runs' own stable blocks (survivors, and collapsed runs more than ``h``
    before their collapse) and the threshold is calibrated to ``target_per_10k`` false alarms on the *survivors*
    (cross-fitted in two seeded halves, as the controls are in the pooled reading): the practitioner's question
    "I train at this setting; which of my runs will collapse, and when?". Per horizon: AUROC and its difference
    from the no-kick reference on the same blocks, false alarms per 10k stable updates (survivors, pre-collapse,
    all), and the warned fractions. Not testable (one line) with fewer than 2 survivors or no collapse.
    """
    rows = blocks.filter(~pl.col("is_control"))
    runs = rows.group_by("run_id").agg(pl.col("collapse_step").first())
    n_coll = int(runs["collapse_step"].is_not_null().sum())
    n_surv = runs.height - n_coll
    out: dict[str, Any] = {"n": {"collapsed_runs": n_coll, "survivor_runs": n_surv, "blocks": rows.height},
                           "text": "regime runs only: negatives are their stable blocks, the threshold is calibrated "
                                   "on the survivors (cross-fitted), so recognising the setting earns nothing"}
    if n_surv < 2 or n_coll == 0:
        return {**out, **not_testable(f"n too small: {n_coll} collapsed and {n_surv} surviving regime runs "
                                      "(need >= 1 and >= 2)")}
    ref_rows = time_since_start(rows, start_col)
    lab0 = label_blocks(rows, int(max(horizons)))
    per_surv, cal = calibrated_thresholds(lab0, target_per_10k, seed, run_class="survivor")
    out["calibration"] = cal
    per_h: dict[str, Any] = {}
    for h in horizons:
        lab, rlab = label_blocks(rows, int(h)), label_blocks(ref_rows, int(h))
        t = thresholds_of(lab, per_surv, cal["threshold"])
        per_h[str(int(h))] = _horizon_entry(lab, rlab, t, int(h), ("collapsed", "survivor"), horizons, min_leads,
                                            n_boot, alpha, seed, cluster_col)
    out["horizons"] = per_h
    return out

