"""``stabilitybench``: generate, status, analyze, report and query.

Errors a user can cause (:class:`~data_schema.errors.StabilityBenchError`) print as one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from analysis.cli import analyze
from data_schema.errors import exit_on_user_error
from generate.cli import generate, status
from reports.cli import report

app = typer.Typer(
    name="stabilitybench",
    help="StabilityBench: a telemetry corpus of controlled training collapses (arXiv 2601.13160).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(generate)
app.command()(status)
app.command()(analyze)
app.command()(report)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views runs, manifest, steps, events")],
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    limit: Annotated[int, typer.Option("--limit", help="Rows to print in table format")] = 100,
) -> None:
    """Run read-only DuckDB SQL over the corpus (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN, PIVOT)."""
    import duckdb
    import polars as pl

    from data_schema.query import QueryError, run_query

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")
    relation = run_query(corpus, sql)
    try:
        frame = relation.pl() if relation is not None else pl.DataFrame()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        with pl.Config(tbl_rows=limit, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=200):
            print(frame)


@app.command()
def verify(
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    deep: Annotated[bool, typer.Option("--deep", help="Also read every page with its checksum and join manifest, "
                                       "steps and events")] = False,
) -> None:
    """Check every run's files against the manifest (sizes, hashes, schema); exit 1 naming each bad file."""
    from rich.console import Console
    from rich.markup import escape

    from data_schema.verify import verify_corpus

    report = verify_corpus(corpus, deep=deep)
    out = Console(soft_wrap=True, highlight=False)
    for problem in report.problems:
        out.print(f"[red]bad[/] {escape(str(problem))}")
    kind = "deep (every page, joins)" if deep else "sizes, hashes, schema"
    bad_runs = len({p.run_id for p in report.problems})
    out.print(f"verified {report.runs} ok run(s), {report.files} data file(s) in {escape(str(corpus))}/ ({kind}): "
              + (f"[red]{len(report.problems)} problem(s) in {bad_runs} run(s)[/]; `stabilitybench generate` with "
                 "the corpus's profile reruns them" if report.problems else "all good"))
    if report.problems:
        raise typer.Exit(1)


def main() -> None:
    exit_on_user_error(app)


if __name__ == "__main__":
    main()
