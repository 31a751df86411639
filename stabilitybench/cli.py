"""``stabilitybench``: generate, status, analyze, report, query, export and subset.

Errors a user can cause (:class:`~stabilitybench.data_schema.errors.StabilityBenchError`) print as one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from stabilitybench.analysis.cli import analyze
from stabilitybench.data_schema import SCHEMA_VERSION
from stabilitybench.data_schema.errors import exit_on_user_error
from stabilitybench.generate.cli import generate, status
from stabilitybench.reports.cli import report

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
    limit: Annotated[int, typer.Option("--limit", help="Rows to print in table format (0: every row); csv and "
                                       "json print every row")] = 100,
) -> None:
    """Run read-only DuckDB SQL over the corpus (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN, PIVOT)."""
    import duckdb
    import polars as pl

    from stabilitybench.data_schema.query import QueryError, run_query

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")
    if limit < 0:
        raise QueryError(f"--limit {limit}: rows to print must be >= 0 (0 prints every row)")
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
        with pl.Config(tbl_rows=limit or -1, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=200):
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
    from stabilitybench.data_schema import MANIFEST_SCHEMA
    from stabilitybench.export import export_tensorboard
    from stabilitybench.generate.matrix import parse_only

    filters = parse_only(only, keys=MANIFEST_SCHEMA.names)
    written = export_tensorboard(corpus, tensorboard, filters)
    print(f"exported {len(written)} run(s) -> {tensorboard}/  (tensorboard --logdir {tensorboard})")


@app.command()
def subset(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The subset corpus folder (new, or a subset made "
                                          "earlier, which is replaced)")],
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="The source corpus (never written)")] = Path("corpus"),
    profile: Annotated[list[str] | None, typer.Option("--profile", "-p", help="Keep the runs of this profile "
                                                      "(repeat for several)")] = None,
    only: Annotated[str | None, typer.Option("--only", help="Keep the runs whose manifest columns match, e.g. "
                                             "'env=Swimmer-v5,perturbation=none|lr_spike'")] = None,
) -> None:
    """A corpus of some of the runs of another (hard links, no copy), e.g. one profile's, to analyse alone."""
    from stabilitybench.data_schema import MANIFEST_SCHEMA, read_manifest, require_corpus
    from stabilitybench.data_schema.subset import link_subset
    from stabilitybench.generate.matrix import load_profile, parse_only, value_matches

    if not profile and not only:
        raise typer.BadParameter("say which runs: --profile NAME and/or --only 'column=value'")
    filters = parse_only(only, keys=MANIFEST_SCHEMA.names)
    rows = read_manifest(require_corpus(corpus)).to_pylist()
    ids = {r["run_id"] for r in rows if all(value_matches(k, r[k], v) for k, v in filters.items())}
    missing = 0
    if profile:
        wanted = {spec.run_id for name in profile for spec in load_profile(name)}
        missing = len(wanted - {r["run_id"] for r in rows})
        ids &= wanted
    report = link_subset(corpus, out_dir, ids)
    note = f"; {missing} run(s) of the profile(s) are not in {corpus} yet" if missing else ""
    print(f"subset of {report.runs} run(s) -> {out_dir}/ ({report.linked} file(s) linked, {report.copied} copied, "
          f"{report.removed} removed from the earlier subset){note}")


@app.command()
def verify(
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    deep: Annotated[bool, typer.Option("--deep", help="Also read every page with its checksum and join manifest, "
                                       "steps and events")] = False,
) -> None:
    """Check every run's files against the manifest (sizes, hashes, schema); exit 1 naming each bad file."""
    from rich.console import Console
    from rich.markup import escape

    from stabilitybench.data_schema.verify import verify_corpus

    report = verify_corpus(corpus, deep=deep)
    out = Console(soft_wrap=True, highlight=False)
    for problem in report.problems:
        out.print(f"[red]bad[/] {escape(str(problem))}")
    kind = "deep (every page, joins)" if deep else "sizes, hashes, schema"
    bad_runs = len({p.run_id for p in report.problems})
    out.print(f"verified {report.runs} ok run(s), {report.files} data file(s) in {escape(str(corpus))}/ ({kind}): "
              + (f"[red]{len(report.problems)} problem(s) in {bad_runs} run(s)[/]; {escape(report.advice())}"
                 if report.problems else "all good"))
    if report.problems:
        raise typer.Exit(1)


@app.command("fit-monitor")
def fit_monitor(
    like: Annotated[Path, typer.Argument(help="A monitor file analyze wrote (results/monitors/<group>/"
                                         "<detector>_fold<i>.monitor.npz): the recipe to refit")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Monitor file to write")],
    corpus: Annotated[Path | None, typer.Option("--corpus", "-c", show_default=False, help="The corpus analyze "
                                                "read (default: ./corpus)")] = None,
    results: Annotated[Path, typer.Option("--results", "-r", help="analyze's results directory (its runs "
                                          "table says which controls collapsed)")] = Path("results"),
    fpr: Annotated[float | None, typer.Option("--fpr", min=1e-6, max=0.5, show_default=False,
                                              help="Target false-alarm rate (default: the template's)")] = None,
    n_calibration: Annotated[int | None, typer.Option("--calibration", min=1, show_default=False,
                                                      help="Calibration controls (default: the fewest that reach "
                                                      "--fpr, 19 for 5%, if the group has enough)")] = None,
) -> None:
    """Refit one of analyze's fold monitors on every control of its group, with a calibration set sized for
    the FPR claim, into a monitor file to attach to new runs."""
    from stabilitybench.analysis.deploy import refit_file
    from stabilitybench.data_schema.errors import CorpusNotFoundError

    if corpus is None:
        corpus = Path("corpus")
        if not corpus.is_dir():
            raise CorpusNotFoundError(
                f"fit-monitor refits on the corpus analyze read, and there is no ./corpus in {Path.cwd()}: "
                "pass it with --corpus DIR" + _corpus_hint(results))
    elif not corpus.is_dir():
        raise CorpusNotFoundError(f"--corpus {corpus}: no such corpus directory" + _corpus_hint(results))
    mf = refit_file(like, corpus, results, out_path, fpr, n_calibration)
    prov = mf.provenance
    print(f"wrote {out_path}: {mf.kind} on {len(mf.features)} columns, block {mf.block_updates} updates, warm-up "
          f"{mf.warmup_updates}; trained on {len(prov['train_run_ids'])} controls, calibrated on {mf.n_calibration} "
          f"(target FPR {mf.target_fpr:g}, conformal level {mf.alpha_used:.3g}), threshold {mf.threshold:.4g}")


def _corpus_hint(results: Path) -> str:
    """`` (results/summary.json says analyze read /abs/corpus)`` when it says so, else nothing."""
    import json

    try:
        recorded = json.loads((results / "summary.json").read_text(encoding="utf-8")).get("corpus")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({results}/summary.json says analyze read {recorded})" if isinstance(recorded, str) else ""


@app.command()
def calibrate(
    design: Annotated[Path, typer.Argument(help="Design file (TOML): \\[defaults], \\[design], \\[\\[target]] "
                                           "(stabilitybench/calibrate.py; example: calibration/ppo_swimmer.toml)")],
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory the runs go to (resumable)")]
        = Path("corpus_calibration"),
    doses: Annotated[Path | None, typer.Option("--doses", help="Dose table to write (TOML profiles include); "
                                               "default: <design>.doses.toml beside the design")] = None,
    budget: Annotated[int | None, typer.Option("--budget", min=0, help="Most runs this invocation may start "
                                               "(unset: until every target is done)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, show_default=False,
                                                help="Parallel runs (unset: every core)")] = None,
    fit_only: Annotated[bool, typer.Option("--fit-only", help="Run nothing: fit and write the table from the "
                                           "corpus as it is")] = False,
) -> None:
    """Find each target kind's ED20/ED50/ED80 by an adaptive dose-response design; write the dose table,
    a markdown table and a figure beside it."""
    from stabilitybench import calibrate as cal
    from stabilitybench.data_schema.io import atomic_path
    from stabilitybench.generate.cli import require_generators
    from stabilitybench.reports.dose_finding import fig_dose_finding
    from stabilitybench.reports.style import save

    require_generators()
    plan = cal.load_design(design)
    table_path = doses or design.with_name(design.stem + ".doses.toml")
    if not fit_only:
        from stabilitybench.data_schema.progress import ProgressReporter
        from stabilitybench.generate.errors import Interrupted

        try:
            cal.calibrate(plan, corpus, budget=budget, workers=workers, say=lambda m: print(m, flush=True),
                          progress=lambda n: ProgressReporter("calibrate stage", n))
        except Interrupted as stop:  # SIGINT/SIGTERM: every finished run is recorded; as generate, one line
            print(str(stop), file=sys.stderr)
            raise typer.Exit(130) from None
    states = cal.current_states(plan, corpus)
    rows = cal.fit_states(states)
    cal.write_dose_table(rows, table_path, plan, str(corpus))
    md = cal.table_markdown(rows)
    md_path = table_path.with_suffix(".md")
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"Dose table {table_path.name} (written by `stabilitybench calibrate`; "
                       f"code {cal.code_version()})\n\n{md}\n", encoding="utf-8")
    fig = fig_dose_finding(*cal.figure_frames(states))
    figs = save(fig, table_path.parent, table_path.stem.replace(".", "_"))
    print(md)
    print(f"wrote {table_path}, {md_path}, {figs[0]}")


def main() -> None:
    exit_on_user_error(app)


if __name__ == "__main__":
    main()
