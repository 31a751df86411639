"""Figures and the HTML/Markdown report; plotting only, statistics come from ``analysis``.

Not built yet: see the reports issue.
"""
