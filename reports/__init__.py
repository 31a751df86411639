"""Figures and the HTML/Markdown report; plotting and layout only, statistics come from ``analysis``.

``stabilitybench report [--results results/] [--out reports/out/]`` (or ``python -m reports``)
reads ``results/`` through :mod:`analysis.results` and writes ``index.html``, ``index.md`` and
``figures/f01..f11.{png,svg}``. Entry points: :func:`reports.report.build_report`, the figure
functions in :mod:`reports.figures` (``fig_*(..., ax=None) -> Axes``).
"""
