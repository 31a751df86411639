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
from data_schema import StabilityBenchError
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
    """Run DuckDB SQL over the corpus."""
    import duckdb

    from data_schema import connect

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")
    con = connect(corpus)
    try:
        frame = con.sql(sql).pl()
    except duckdb.Error as exc:
        raise StabilityBenchError(f"query failed: {str(exc).splitlines()[0]}") from None
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        import polars as pl

        with pl.Config(tbl_rows=limit, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=200):
            print(frame)


def main() -> None:
    exit_on_user_error(app)


if __name__ == "__main__":
    main()
