"""The low-dimensionality question for summary.json: PCA per (domain, algo) and pooled, against surrogates.

:func:`pca_summary` turns the streaming accumulators that :func:`stabilitybench.analysis.pipeline.run_analysis` fills
(one :class:`PCAInput` per (domain, algo)) into a :class:`PCASummary`: the summary entries (components
for 90% variance and participation ratio with run-bootstrap CIs, each against the circular-shift
null), the ``pca_explained`` rows and the ``pca_trajectories`` table.

Each entry states what its null rejects (``null_hypothesis``): with :meth:`PCAInput.add_group` (the pipeline's
path) every run has its matched group's control mean trajectory removed before the PCA and the surrogates
(:func:`stabilitybench.analysis.pca.detrend_group`), so a rejection means cross-column co-movement of the runs'
deviations from their controls beyond that of independent series with the same autocorrelation; runs added with
:meth:`PCAAccumulator.add_run <stabilitybench.analysis.pca.PCAAccumulator.add_run>` alone are not detrended,
and the entry says so (then shared training-time trends alone can reject).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis import pca as pca_mod
from stabilitybench.analysis.pca import PCAAccumulator
from stabilitybench.analysis.summary import Status, StatusKind, not_testable, number

SUBSETS = ("all_runs", "unperturbed_runs")
#: The smallest number of surrogates for which a p-value can reach 0.01.
MIN_SURROGATES = 99
DETRENDED = ("each matched group's control mean trajectory (mean over its unperturbed runs at each block step; "
             "a control has the mean of the other controls removed) is removed from every run before the PCA and "
             "before the surrogates")
NOT_DETRENDED = "none: the runs were added without their matched group's controls, so nothing was removed"


def null_statement(n_null: int, detrended: bool) -> str:
    """One sentence: what the circular-shift null of an entry rejects."""
    if detrended:
        return (f"The circular-shift null ({n_null} surrogates), after removing each matched group's control mean "
                "trajectory, rejects when the runs' deviations from their controls co-move across columns beyond "
                "what independent series with the same autocorrelation give (fewer components for 90% of the "
                "variance, or a smaller participation ratio, than the surrogates); trends shared with the controls "
                "cannot make it reject.")
    return (f"The circular-shift null ({n_null} surrogates), with no detrending, rejects for cross-column "
            "correlation beyond that of independent autocorrelated series, which includes columns that merely all "
            "trend with training time: a rejection does not show low-dimensional dynamics.")


@dataclass
class PCAInput:
    """Streaming PCA inputs of one (domain, algo): all runs, unperturbed runs, and each run's blocks.

    ``blocks``: run -> ``(block steps (n,), block features (n, F), non-finite flags (n,))`` on ``features``, as the
    PCA saw them (after :meth:`add_group`: each run's deviation from its matched group's control mean trajectory).
    ``detrended``: every run came through :meth:`add_group`; ``left_out``: runs it could not detrend (a group with
    no control, or a group's only control).
    """

    features: list[str]
    all_runs: PCAAccumulator
    unperturbed_runs: PCAAccumulator
    blocks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_groups_detrended: int = 0
    n_runs_added_raw: int = 0
    left_out: list[str] = field(default_factory=list)

    def add_group(self, blocks: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                  controls: Collection[str]) -> None:
        """Add one matched group's runs after removing its control mean trajectory.

        ``blocks``: run -> ``(block steps (T,), block features (T, F) on features, non-finite flags (T,))``, the
        runs of one matched group (same domain, algo, env, stochasticity) that enter the PCA; ``controls``: ids of
        unperturbed runs (any superset; only those in ``blocks`` count). Complete detrended rows go to
        ``all_runs``, and a control's to ``unperturbed_runs`` too, each through
        :meth:`~stabilitybench.analysis.pca.PCAAccumulator.add_group` (surrogate offsets shared within the group).
        """
        ids = set(controls)
        detrended, left = pca_mod.detrend_group({r: (st, X) for r, (st, X, _) in blocks.items()}, ids)
        self.left_out += left
        self.n_groups_detrended += 1
        rows = {rid: Xd[np.isfinite(Xd).all(axis=1)] for rid, Xd in detrended.items()}
        self.all_runs.add_group(list(rows.values()))  # the group's runs share each column's circular offset
        self.unperturbed_runs.add_group([x for rid, x in rows.items() if rid in ids])
        for rid, Xd in detrended.items():
            st, _, nf = blocks[rid]
            self.blocks[rid] = (st, Xd, nf)

    def add_run_raw(self, rid: str, block: tuple[np.ndarray, np.ndarray, np.ndarray], control: bool) -> None:
        """Add one run *without* detrending (then the entry says its null can reject for shared trends)."""
        st, X, nf = block
        rows = X[np.isfinite(X).all(axis=1)]
        self.all_runs.add_run(rows)
        if control:
            self.unperturbed_runs.add_run(rows)
        self.blocks[rid] = (st, X, nf)
        self.n_runs_added_raw += 1

    @property
    def detrended(self) -> bool:
        return self.n_groups_detrended > 0 and self.n_runs_added_raw == 0

    def subset(self, name: str) -> PCAAccumulator:
        return {"all_runs": self.all_runs, "unperturbed_runs": self.unperturbed_runs}[name]

    @property
    def testable(self) -> bool:
        return len(self.features) >= 2 and self.all_runs.n >= 3


@dataclass(frozen=True)
class PCASummary:
    """``summary``: summary.json ``pca`` (per ``"domain/algo"`` and ``"pooled"``); ``explained``: one row per
    (group, subset, component); ``trajectories``: one row per (group, run, block), PCs 1-3."""

    summary: dict[str, Any]
    explained: pl.DataFrame
    trajectories: pl.DataFrame


def pca_summary(inputs: dict[tuple[str, str], PCAInput], n_null: int, n_boot: int, seed: int) -> PCASummary:
    """PCA summaries per (domain, algo) and pooled, explained-variance rows and block trajectories."""
    summary: dict[str, Any] = {}
    evr_rows: list[dict[str, Any]] = []
    traj_parts = []
    for (dom, algo), a in sorted(inputs.items()):
        name = f"{dom}/{algo}"
        if not a.testable:
            summary[name] = not_testable("fewer than 2 features or 3 complete rows", features=a.features)
            continue
        entry: dict[str, Any] = {"features": a.features, "n_features": len(a.features), **_null_info(a, n_null)}
        for subset in SUBSETS:
            entry[subset] = _entry(a.subset(subset), subset, name, n_null, n_boot, seed, evr_rows)
        summary[name] = entry
        # projected trajectories: the blocks the PCA saw (deviations from the controls' mean trajectory once
        # detrended), standardised with the all-runs moments, onto the first 3 PCs
        _, vec, _, _ = a.all_runs.result()
        mu, sd = a.all_runs.standardiser()
        for rid, (steps, X, _) in a.blocks.items():
            Z = ((X - mu) / sd) @ vec[:, : min(3, vec.shape[1])]
            keep = np.isfinite(Z).all(axis=1)
            traj_parts.append(pl.DataFrame({"group": name, "run_id": rid, "step": steps[keep],
                                            **{f"pc{j + 1}": Z[keep, j] for j in range(Z.shape[1])}}))
    keys = [k for k in sorted(inputs) if inputs[k].testable]
    if len(keys) == 1:
        summary["pooled"] = Status(StatusKind.SAME_AS, f"{keys[0][0]}/{keys[0][1]}: the corpus has one (domain, algo) "
                                   "group").to_json()
    elif len(keys) >= 2:
        common = sorted(set.intersection(*[set(inputs[k].features) for k in keys]))
        if len(common) < 2:
            summary["pooled"] = not_testable("fewer than 2 features shared by every (domain, algo) group")
        else:
            summary["pooled"] = _pooled_entry([inputs[k] for k in keys], common, n_null, evr_rows)
            summary["pooled"].update(_null_info_pooled([inputs[k] for k in keys], n_null))
    else:
        summary["pooled"] = not_testable("no (domain, algo) group with enough data")
    evr = pl.DataFrame(evr_rows) if evr_rows else pl.DataFrame()
    traj = pl.concat(traj_parts, how="diagonal_relaxed") if traj_parts else pl.DataFrame()
    return PCASummary(summary, evr, traj)


def _null_info(a: PCAInput, n_null: int) -> dict[str, Any]:
    """What an entry's null is: surrogates, detrending, the runs left out, and the sentence saying what it rejects."""
    out: dict[str, Any] = {"n_surrogates": n_null, "min_attainable_p_value": 1.0 / (n_null + 1),
                           "detrending": DETRENDED if a.detrended else NOT_DETRENDED,
                           "n_runs_left_out_no_control_reference": len(a.left_out),
                           "null_hypothesis": null_statement(n_null, a.detrended)}
    if n_null < MIN_SURROGATES:
        out["surrogates_note"] = (f"only {n_null} surrogates (< {MIN_SURROGATES}): the smallest p-value is "
                                  f"{1 / (n_null + 1):.3g}")
    return out


def _null_info_pooled(inputs: list[PCAInput], n_null: int) -> dict[str, Any]:
    info = _null_info(inputs[0], n_null)
    detrended = all(a.detrended for a in inputs)
    info.update(detrending=DETRENDED if detrended else NOT_DETRENDED,
                n_runs_left_out_no_control_reference=sum(len(a.left_out) for a in inputs),
                null_hypothesis=null_statement(n_null, detrended))
    return info


def _block(real: pca_mod.PCAResult, null: list[pca_mod.PCAResult], n_runs: int, n_rows: int, method: str,
           n_null: int, evr_rows: list[dict[str, Any]], name: str, subset: str,
           boot: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    n90_null = np.array([r.n90 for r in null], float)
    pr_null = np.array([r.pr for r in null], float)
    for j, v in enumerate(real.evr):
        evr_rows.append({"group": name, "subset": subset, "component": j + 1, "explained_variance_ratio": float(v),
                         "null_explained_variance_ratio": float(np.mean([r.evr[j] for r in null]))})
    return {
        "n_rows": n_rows, "n_runs": n_runs, "method": method,
        "n_components_90": number(real.n90, n_runs, _q(boot[0]) if boot is not None else None,
                                  interval="bootstrap over runs" if boot is not None else None),
        "participation_ratio": number(real.pr, n_runs, _q(boot[1]) if boot is not None else None,
                                      interval="bootstrap over runs" if boot is not None else None),
        "null_n_components_90": number(float(n90_null.mean()), n_null,
                                       (float(np.quantile(n90_null, 0.025)), float(np.quantile(n90_null, 0.975)))),
        "null_participation_ratio": number(float(pr_null.mean()), n_null,
                                           (float(np.quantile(pr_null, 0.025)), float(np.quantile(pr_null, 0.975)))),
        "explained_variance_ratio": real.evr.tolist(),
        "p_value_n90_le_null": float((1 + (n90_null <= real.n90).sum()) / (1 + n90_null.size)),
        "p_value_pr_le_null": float((1 + (pr_null <= real.pr).sum()) / (1 + pr_null.size)),
    }


def _entry(a: PCAAccumulator, subset: str, name: str, n_null: int, n_boot: int, seed: int,
           evr_rows: list[dict[str, Any]]) -> dict[str, Any]:
    if a.n < 3 or a.runs == 0:
        return not_testable("fewer than 3 complete rows")
    real, _, null, method = a.result()
    boot = a.bootstrap(n_boot, seed) if a.runs >= 2 else None
    return _block(real, null, a.runs, a.n, method, n_null, evr_rows, name, subset, boot)


def _q(x: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975))


def _pooled_entry(inputs: list[PCAInput], common: list[str], n_null: int, evr_rows: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """Pooled PCA: each group standardised on its own and weighted *equally*: the pooled covariance is the
    plain mean of the groups' correlation matrices on the shared features (and likewise per null replicate),
    so the group with the most rows (PPO) does not dominate."""
    entry: dict[str, Any] = {"features": common, "n_features": len(common), "n_groups": len(inputs)}
    for subset in SUBSETS:
        parts = [a.subset(subset) for a in inputs if a.subset(subset).n >= 3]
        if not parts:
            entry[subset] = not_testable("fewer than 3 complete rows")
            continue
        idx = [[a.features.index(c) for c in common] for a in inputs if a.subset(subset).n >= 3]
        w = np.ones(len(parts))  # every (domain, algo) group weighs the same

        def pooled(mats: list[np.ndarray], idx: list[list[int]] = idx, w: np.ndarray = w) -> np.ndarray:
            return sum(wi * m[np.ix_(ix, ix)] for wi, m, ix in zip(w, mats, idx, strict=True)) / w.sum()

        real = pca_mod.summarise(np.linalg.eigvalsh(pooled([p.correlation() for p in parts])))
        null = [pca_mod.summarise(np.linalg.eigvalsh(pooled([p.correlation(p.null[r]) for p in parts])))
                for r in range(n_null)]
        entry[subset] = _block(real, null, sum(p.runs for p in parts), sum(p.n for p in parts),
                               "mean of the groups' correlation matrices, equal weights", n_null, evr_rows,
                               "pooled", subset)
    return entry
