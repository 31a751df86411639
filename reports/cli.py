"""``report`` command (mounted by the ``stabilitybench`` CLI; also ``python -m stabilitybench.reports``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()


def report(
    results: Annotated[Path, typer.Option("--results", "-r", help="Results directory from `analyze`")] = Path(
        "results"),
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report directory")] = Path("reports/out"),
    corpus: Annotated[Path | None, typer.Option("--corpus", "-c", help="Corpus path the page names as the "
                                                 "results' source (default: the one recorded in summary.json; "
                                                 "nothing is read from it)")] = None,
    embed: Annotated[bool, typer.Option("--embed/--no-embed", help="Inline the PNGs into index.html")] = False,
) -> None:
    """Draw figures F1-F13 and write index.html, index.md and figures.json from the analysis results."""
    from stabilitybench.reports.report import build_report

    t0 = time.perf_counter()
    with console.status("drawing", spinner="dots") as status:
        index = build_report(results, out_dir, corpus, progress=lambda m: status.update(f"[bold]drawing:[/] {m}"),
                             embed=embed)
    out.print(f"report written in {time.perf_counter() - t0:.1f} s -> {index}")
