"""``build_report``: results/ in, ``<out>/index.html`` + ``index.md`` + ``figures/*.png|svg`` + ``figures.json`` out.

Layout only: every number in a caption or table is a :class:`~stabilitybench.reports.text.Num` read from
summary.json; the figures (:mod:`stabilitybench.reports.figures`, one ``FigureSpec`` each, which owns its caption)
draw the results tables; the tables are :mod:`stabilitybench.reports.tables`. The figure index
(``figures.json``: per figure its files, title, analysis question and runs behind it) is the report's own output.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stabilitybench.analysis.collapse import RULE
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.reports.data import load
from stabilitybench.reports.errors import OutputPathError
from stabilitybench.reports.figures import FIGURES, figure_index
from stabilitybench.reports.style import save
from stabilitybench.reports.tables import (
    claims_table,
    collapse_table,
    held_out_table,
    intervention_table,
    monitor_table,
    prediction_table,
    regularities_table,
    same_dose_table,
    survival_tables,
    time_to_event_table,
    time_to_event_within_table,
)
from stabilitybench.reports.text import Num, Source, render_html, render_md

FIG_DIR = "figures"
#: The figure index the report writes beside its pages.
FIGURE_INDEX = "figures.json"


# =========================================================================== page
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin:.2em 0}h2{margin-top:2em;border-bottom:2px solid #e5e5e5;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.4em 0 .4em}
.meta{color:#555;font-size:.92em}
.caveats{background:#fff4e5;border-left:5px solid #e69f00;padding:10px 18px;margin:18px 0}
.caveats h2{margin:.2em 0;border:none;font-size:1.15em}
.caveats li{margin:.25em 0}
table{border-collapse:collapse;font-size:.86em;width:100%;margin:.3em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600}
tbody tr:nth-child(even){background:#fbfbfc}
.note{font-size:.82em;color:#555;margin:.3em 0 1em}
figure{margin:22px 0 34px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#333;margin-top:6px;line-height:1.45}
.toolittle{background:#fff4e5;border:1px solid #e69f00;border-radius:6px;padding:8px 12px;margin:8px 0;
font-size:.9em}
.num{font-variant-numeric:tabular-nums;font-weight:600}
nav{font-size:.9em;columns:3;margin:10px 0}nav a{display:block;color:#0060a8;text-decoration:none}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
"""


def _reason(r: str) -> str:
    """A "too little data" reason without the redundant prefixes."""
    for prefix in ("too little data: ", "not testable: "):
        r = r.removeprefix(prefix)
    return r.replace(": not testable: ", ": ")


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def build_report(results: str | os.PathLike[str], out: str | os.PathLike[str] = "reports/out",
                 corpus: str | os.PathLike[str] | None = None,
                 progress: Callable[[str], None] | None = None, embed: bool = False) -> Path:
    """Draw every figure of :data:`~stabilitybench.reports.figures.FIGURES` from ``results`` and write
    ``out/index.html``, ``out/index.md``, ``out/figures/`` and the figure index ``out/figures.json``.

    Only ``results`` is read (``corpus`` is the path the page names as their source). ``embed=True``
    inlines the PNGs into index.html (base64) so the page travels as one file;
    the SVG links still point to ``figures/``. Returns the path of index.html. Raises
    :class:`~stabilitybench.reports.errors.ResultsMissingError` when ``results`` has no summary.json and
    :class:`~stabilitybench.reports.errors.OutputPathError` when ``out`` cannot be a folder.
    """
    say = progress or (lambda _m: None)
    data = load(results, corpus)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out}: exists and is not a folder")
    try:
        (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    src = Source(data.summary)
    caps = {spec.id: spec.caption(src) for spec in FIGURES}
    figs = []
    for spec in FIGURES:
        say(f"{spec.id} {spec.title}")
        fig, reasons = spec.build(data)
        save(fig, out / FIG_DIR, spec.stem)
        figs.append((spec, reasons))
    tables = [t for t in (monitor_table(src), same_dose_table(src), prediction_table(src), collapse_table(src),
                          *survival_tables(src), regularities_table(src), intervention_table(src),
                          time_to_event_table(src), time_to_event_within_table(src), held_out_table(src))
              if t is not None]
    claims = claims_table(data)
    caveats = data.summary.caveats
    notes = data.summary.data_notes
    excluded_line = f"{data.summary.n_excluded} run(s) excluded for missing or damaged files"
    ew_status = data.summary.early_warning_status

    # ------------------------------------------------------------------ HTML
    h = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>StabilityBench report</title><style>{CSS}</style></head><body><main>",
         "<h1>StabilityBench report</h1>",
         f'<p class="meta">Results: <code>{html.escape(str(data.results.resolve()))}</code> · corpus: '
         f'<code>{html.escape(str(data.corpus))}</code> · {render_html([src.num("n_runs", digits=0)])} runs · '
         f"{excluded_line} · "
         "every number below is read from <code>summary.json</code> (hover a bold number for its source).</p>"]
    h.append('<section class="caveats"><h2>Read this first: caveats</h2><ul>')
    h += [f"<li>{html.escape(str(c))}</li>" for c in caveats] or ["<li>none raised by the analysis</li>"]
    if ew_status:
        h.append(f"<li>early warning: {html.escape(str(ew_status))}</li>")
    h += [f"<li>data: {html.escape(str(n))}</li>" for n in notes]
    h.append("</ul></section>")
    h.append("<nav>" + "".join(f'<a href="#{s.id}">{s.id} · {html.escape(s.title)}</a>' for s, _ in figs)
             + '<a href="#tables">Headline tables</a></nav>')
    h.append(f"<h2>Claims</h2>{claims.html()}")
    h.append('<h2 id="rule">Collapse rule</h2><p class="note">Quoted from <code>stabilitybench.analysis.collapse.'
             f'RULE</code>; this analysis ran it with {render_html(rule_params(src))}</p>'
             f"<pre>{html.escape(RULE.strip())}</pre>")
    h.append('<h2 id="tables">Headline tables</h2>' + "".join(t.html() for t in tables))
    h.append("<h2>Figures</h2>")
    for spec, reasons in figs:
        png, svg = f"{FIG_DIR}/{spec.stem}.png", f"{FIG_DIR}/{spec.stem}.svg"
        src_png = ("data:image/png;base64," + base64.b64encode((out / png).read_bytes()).decode()) if embed else png
        box = "".join(f'<div class="toolittle">too little data: {html.escape(_reason(r))}</div>' for r in reasons)
        h.append(f'<figure id="{spec.id}"><h3>{spec.id} · {html.escape(spec.title)}</h3>{box}'
                 f'<a href="{svg}"><img src="{src_png}" alt="{spec.id}: {html.escape(spec.title)}" loading="lazy"></a>'
                 f"<figcaption><b>{spec.id}.</b> {render_html(caps[spec.id])} "
                 f'<a href="{svg}">SVG</a></figcaption></figure>')
    h.append("</main></body></html>")
    _write_atomic(out / "index.html", "\n".join(h) + "\n")

    # ------------------------------------------------------------------ Markdown
    m = ["# StabilityBench report", "",
         f"Results: `{data.results.resolve()}` · corpus: `{data.corpus}` · {render_md([src.num('n_runs', digits=0)])}"
         f" runs · {excluded_line}. Every number is read from `summary.json`.", "", "## Read this first: caveats", ""]
    m += [f"- {c}" for c in caveats] or ["- none raised by the analysis"]
    if ew_status:
        m.append(f"- early warning: {ew_status}")
    m += [f"- data: {n}" for n in notes]
    m += ["", "## Claims", "", claims.md(), "## Collapse rule", "",
          "Quoted from `stabilitybench.analysis.collapse.RULE`; this analysis ran it with "
          + render_md(rule_params(src)),
          "", RULE.strip(), ""]
    m += ["## Headline tables", ""] + [t.md() for t in tables] + ["## Figures", ""]
    for spec, reasons in figs:
        m += [f"### {spec.id} · {spec.title}", ""]
        m += [f"> **too little data:** {_reason(r)}" for r in reasons]
        if reasons:
            m.append("")
        m += [f"![{spec.id}]({FIG_DIR}/{spec.stem}.png)", "", f"**{spec.id}.** {render_md(caps[spec.id])} "
              f"([SVG]({FIG_DIR}/{spec.stem}.svg))", ""]
    _write_atomic(out / "index.md", "\n".join(m))
    _write_atomic(out / FIGURE_INDEX, json.dumps(figure_index(data.summary), indent=1) + "\n")
    return out / "index.html"


def rule_params(src: Source) -> list[Any]:
    """The collapse rule's parameters as this analysis ran them (summary.json ``config.collapse``), in words."""
    out: list[Any] = []
    for i, name in enumerate(src.get("config", "collapse")):
        out += [", " if i else "", f"{name} = ", src.num("config", "collapse", name, digits=3, kind="g")]
    return [*out, "."]


__all__ = ["FIGURE_INDEX", "Num", "build_report", "claims_table", "render_md", "rule_params"]
