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
from data_schema import SCHEMA_VERSION
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
