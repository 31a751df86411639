"""``stabilitybench``: generate, status, analyze, report, query and export.

Errors a user can cause (:class:`~data_schema.errors.StabilityBenchError`) print as one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from analysis.cli import analyze
from data_schema import SCHEMA_VERSION, StabilityBenchError
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
def _version(value: bool) -> None:
    if value:
        print(f"stabilitybench {package_version()} (corpus schema {SCHEMA_VERSION})")
        raise typer.Exit()


def package_version() -> str:
    """The installed package's version (pyproject), or the source tree's when it is not installed."""
    try:
        return metadata.version("stabilitybench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """StabilityBench: a telemetry corpus of controlled training collapses (arXiv 2601.13160)."""


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


@app.command()
def export(
    tensorboard: Annotated[Path, typer.Option("--tensorboard", help="Write TensorBoard scalars (one run per "
                                              "corpus run, by step) into this folder")],
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    only: Annotated[str | None, typer.Option("--only", help="Filter by manifest columns, e.g. "
                                             "'algo=ppo,perturbation=lr_spike,magnitude=10|100'")] = None,
) -> None:
    """Export runs' telemetry (every numeric steps column) for TensorBoard."""
    from data_schema import MANIFEST_SCHEMA
    from generate.matrix import parse_only
    from stabilitybench.export import export_tensorboard

    filters = parse_only(only, keys=MANIFEST_SCHEMA.names)
    written = export_tensorboard(corpus, tensorboard, filters)
    print(f"exported {len(written)} run(s) -> {tensorboard}/  (tensorboard --logdir {tensorboard})")


def main() -> None:
    exit_on_user_error(app)


if __name__ == "__main__":
    main()
