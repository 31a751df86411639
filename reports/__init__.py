"""Figures and the HTML/Markdown report; plotting and layout only, statistics come from ``analysis``.

``stabilitybench report [--results results/] [--out reports/out/]`` (or ``python -m stabilitybench.reports``)
reads ``results/`` through :mod:`stabilitybench.analysis.results` and writes ``index.html``, ``index.md`` and
``figures/f01..f11.{png,svg}``. Entry points: :func:`stabilitybench.reports.report.build_report`, the figure
functions in :mod:`stabilitybench.reports.figures` (``fig_*(..., ax=None) -> Axes``).
"""
