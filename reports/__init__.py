"""Figures and the HTML/Markdown report; plotting and layout only, statistics come from ``analysis``.

``stabilitybench report [--results results/] [--out reports/out/]`` (or ``python -m stabilitybench.reports``)
reads ``results/`` (only) through :mod:`stabilitybench.analysis.results` and writes ``index.html``, ``index.md``,
``figures/f01..f13.{png,svg}`` and the figure index ``figures.json``. Entry points:
:func:`stabilitybench.reports.report.build_report`, and the figures of :mod:`stabilitybench.reports.figures` (one
``FigureSpec`` each; panel functions ``fig_*(..., ax=None) -> Axes``).
"""
