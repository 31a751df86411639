"""The report's figures: one :class:`~stabilitybench.reports.figures.spec.FigureSpec` each, in :data:`FIGURES`.

One module per figure or family: :mod:`.onset` (F1), :mod:`.dose` (F2), :mod:`.survival` (F3, F4),
:mod:`.pca` (F5, F6), :mod:`.early_warning` (F7, F8), :mod:`.dissociation` (F9), :mod:`.stochasticity`
(F10), :mod:`.coherence` (F11), :mod:`.final_performance` (F12), :mod:`.intervention` (F13) and
:mod:`.time_to_event` (F14). Each draws
the results that ``analysis`` wrote and computes no statistic: panel functions ``fig_*(table(s)...,
ax=None) -> Axes``, a ``build_*`` that composes a figure from a
:class:`~stabilitybench.reports.data.ReportData` and returns ``(figure, reasons)``, and the caption, every
number a :class:`~stabilitybench.reports.text.Num` read from summary.json.

The figure index: each spec names the analysis question it draws (an id of
:data:`stabilitybench.analysis.summary.QUESTIONS`; summary.json ``questions`` gives its n_runs), and
:func:`figure_index` joins the two into what the report writes as ``figures.json``. Adding a figure is one
module here plus its entry in :data:`FIGURES` (and, for a new question, an id in ``QUESTIONS``).
"""

from __future__ import annotations

from typing import Any

from stabilitybench.analysis.summary import Summary
from stabilitybench.reports.figures import (
    coherence,
    dissociation,
    dose,
    early_warning,
    final_performance,
    intervention,
    onset,
    pca,
    stochasticity,
    survival,
    time_to_event,
)
from stabilitybench.reports.figures.dose import fig_dose_response
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.figures.survival import fig_km

#: Every figure of the report, in report order.
FIGURES: tuple[FigureSpec, ...] = (onset.SPEC, dose.SPEC, *survival.SPECS, *pca.SPECS, *early_warning.SPECS,
                                   dissociation.SPEC, stochasticity.SPEC, coherence.SPEC, final_performance.SPEC,
                                   intervention.SPEC, time_to_event.SPEC)


def figure_index(summary: Summary) -> dict[str, Any]:
    """The figure index: per figure id its files, title, the question it draws and the runs behind it.

    ``question`` and ``n_runs`` come from summary.json ``questions`` (written by the analysis); a summary
    without that entry (written before it existed) gives ``n_runs`` null.
    """
    questions = summary.optional("questions") or {}
    out: dict[str, Any] = {}
    for spec in FIGURES:
        q = questions.get(spec.question, {})
        out[spec.id] = {"file": spec.stem, "title": spec.title, "question_id": spec.question,
                        "question": q.get("question"), "n_runs": q.get("n_runs")}
    return out


__all__ = ["FIGURES", "FigureSpec", "fig_dose_response", "fig_km", "figure_index"]
