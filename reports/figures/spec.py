"""``FigureSpec``: one report figure, everything about it in one value (id, file, title, question, builder, caption)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from stabilitybench.analysis.summary import QUESTIONS
from stabilitybench.reports.data import ReportData
from stabilitybench.reports.text import Source

Builder = Callable[[ReportData], tuple[Figure, list[str]]]
Caption = Callable[[Source], list[Any]]


@dataclass(frozen=True)
class FigureSpec:
    """One report figure.

    ``id`` (``F1``...), ``stem`` (its files ``figures/<stem>.png|svg``), ``title`` (the heading), ``question``
    (the id of the analysis question it draws, a key of :data:`stabilitybench.analysis.summary.QUESTIONS`),
    ``build`` (draws it from the results: ``(figure, reasons)``, where ``reasons`` are the "too little data"
    messages shown in place of panels) and ``caption`` (its caption fragments, every number a
    :class:`~stabilitybench.reports.text.Num` read from summary.json).
    """

    id: str
    stem: str
    title: str
    question: str
    build: Builder
    caption: Caption

    def __post_init__(self) -> None:
        if self.question not in QUESTIONS:
            raise ValueError(f"figure {self.id}: question {self.question!r} is not one of "
                             f"stabilitybench.analysis.summary.QUESTIONS ({', '.join(QUESTIONS)})")
