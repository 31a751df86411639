"""Sentences and cells that the report's tables and the figures' captions share, every number from summary.json.

Each function returns caption fragments (strings and :class:`~stabilitybench.reports.text.Num`) for
:func:`~stabilitybench.reports.text.render_html` / :func:`~stabilitybench.reports.text.render_md`. The collapse
rule is quoted, never paraphrased: :func:`rule_formula` is the collapse line of
:data:`stabilitybench.analysis.collapse.RULE`, and :func:`collapse_rule` states it with the parameters the
analysis ran with (``summary.json`` ``config.collapse``).
"""

from __future__ import annotations

from typing import Any

from stabilitybench.analysis.collapse import RULE
from stabilitybench.analysis.summary import Status
from stabilitybench.reports.data import finite
from stabilitybench.reports.errors import ReportError
from stabilitybench.reports.text import Source, ci

#: Where the analysis's collapse parameters are in summary.json.
RULE_CONFIG = ("config", "collapse")


def rule_formula(rule: str = RULE) -> str:
    """The collapse line of the rule, as :data:`~stabilitybench.analysis.collapse.RULE` writes it (the first
    line after the one that ends in ``::``), e.g. ``line(t) = mu(t) - max(drop * G, spread_k * sd(t))``."""
    lines = rule.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip().endswith("::")), None)
    formula = next((line.strip() for line in lines[start + 1:] if line.strip()), None) if start is not None else None
    if formula is None:
        raise ReportError("stabilitybench.analysis.collapse.RULE has no '::' block with the collapse line to quote")
    return formula


def collapse_rule(src: Source) -> list[Any]:
    """The collapse rule in one sentence: its formula quoted from RULE, and the parameters of this analysis."""
    c = RULE_CONFIG
    return ["Collapse rule (stabilitybench.analysis.collapse.RULE, quoted under 'Collapse rule'): the causal "
            "rolling mean of performance over ", src.num(*c, "smooth_frac", digits=0, kind="pct"),
            " of the run falls below ", f"{rule_formula()}", " with drop = ", src.num(*c, "drop", digits=2),
            " and spread_k = ", src.num(*c, "spread_k", digits=1), " (mu, sd: the matched controls' mean and "
            "across-seed SD; G: their learning gain), and stays below it for a confirmation window W = ",
            src.num(*c, "recovery_frac", digits=0, kind="pct"), " of the run past both the crossing and the end of "
            "the perturbation; non-finite telemetry is an immediate collapse. It is "
            "cross-fitted over k = min(control seeds, max_folds = ", src.num(*c, "max_folds", digits=0),
            ") folds of control seeds: every run is judged against the controls of the other folds."]


def rule_false_collapse(src: Source) -> list[Any]:
    """The rule's false-collapse rate on held-out controls, with how they were held out (cross-fitted folds)."""
    fc = ("collapse", "rule_false_collapse_rate_unperturbed")
    return ["The rule's false-collapse rate on unperturbed runs, each judged against the controls of the other "
            "folds (k = min(control seeds, ", src.num(*RULE_CONFIG, "max_folds", digits=0), ")): ", *ci(src, *fc),
            " (n=", src.num(*fc, "n", digits=0), ")."]


def status_or(src: Source, *path: str | int) -> list[Any]:
    """``ci`` of a summary number, or its status in words when it has one (e.g. not testable)."""
    st = src.status(*path)
    return [st.text] if st is not None else ci(src, *path)



def coherence_rows(src: Source) -> list[tuple[tuple[str | int, ...], str]]:
    """Path and label of each (domain, estimator) coherence-before-collapse estimate (empty when not testable)."""
    if src.status("coherence_before_collapse") is not None:
        return []
    return [(("coherence_before_collapse", "by_estimator", i, "pre_collapse_excess_coherence"),
             f"{e['domain']}, {e['estimator']}")
            for i, e in enumerate(src.get("coherence_before_collapse", "by_estimator"))]


def pca_testable(src: Source, group: str) -> bool:
    """The PCA entry of ``group`` has an all-runs estimate."""
    return src.status("pca", group) is None and src.status("pca", group, "all_runs") is None



def direction(src: Source, *path: str, neg: str, pos: str) -> list[Any]:
    lo, hi = src.get(*path, "ci_low"), src.get(*path, "ci_high")
    if finite(lo) and finite(hi):
        if hi < 0:
            return [f"CI below 0: {neg}"]
        if lo > 0:
            return [f"CI above 0: {pos}"]
        return ["CI includes 0: no clear change"]
    return ["no CI"]



def logrank_all(src: Source) -> list[Any]:
    """The caption sentence on the k-sample log-rank test across all groups."""
    lr = src.get("survival", "logrank")
    k = next((i for i, r in enumerate(lr) if r["comparison"] == "all groups"), None)
    if k is None:
        return ["Log-rank tests per (domain, algo) are in the log-rank table."]
    st = Status.from_json(lr[k])
    if not st.ok:
        return [f"Log-rank test across all groups: {st.text}."]
    p = ("survival", "logrank", k)
    return ["Log-rank test across all groups: χ² = ", src.num(*p, "chi2"), " (df ", src.num(*p, "df", digits=0),
            "), p = ", src.num(*p, "p_value", kind="g"), "; ", src.num(*p, "n_events", digits=0), " collapses in ",
            src.num(*p, "n", digits=0), " runs."]




def alarm_path(src: Source, p: tuple[str | int, ...], key: str = "frac_collapses_preceded"
               ) -> tuple[tuple[str | int, ...], str]:
    """Where a detection entry's alarm-based numbers are, and the mark that says so: its pooled folds (those with
    >= 19 calibration controls), or, when no fold had that many, ``small_folds`` (marked †: reported apart, no FPR
    claim). ``key``: the alarm-based number whose ``n`` decides (same-dose entries have only the leads)."""
    n = src.get(*p, key).get("n") if src.has(*p, key) else None
    if n or not src.has(*p, "small_folds", key):
        return p, ""
    return (*p, "small_folds"), " †"


def lead_sentence(src: Source, p: tuple[str | int, ...], name: str) -> list[Any]:
    """How far ahead the detector at ``p`` (its by_detector record) warned, and how often (from the folds with
    >= 19 calibration controls, else from the small folds, and then it says so)."""
    p, mark = alarm_path(src, p)
    lead = src.num(*p, "median_lead_updates", "value", digits=0)
    out: list[Any] = ["In folds with fewer than 19 calibration controls (†), "] if mark else []
    if finite(lead.value):
        out += [f"{name} warned a median of ", lead, " updates before collapse (IQR ",
                src.num(*p, "median_lead_updates", "iqr_low", digits=0), "–",
                src.num(*p, "median_lead_updates", "iqr_high", digits=0), ", n=",
                src.num(*p, "median_lead_updates", "n", digits=0), "); "]
    else:
        out += [f"{name} raised no alarm before any collapse; "]
    out += ["it preceded ", src.num(*p, "frac_collapses_preceded", "value", digits=0, kind="pct"), " of ",
            src.num(*p, "frac_collapses_preceded", "n", digits=0), " collapses."]
    return out



def not_evaluated(src: Source) -> list[Any]:
    """The caption of an early-warning figure when there is no early-warning evaluation."""
    return [f"Not evaluated: {src.summary.early_warning_status}."]
