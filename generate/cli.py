"""``generate`` and ``status`` (mounted by the ``stabilitybench`` CLI; also ``python -m stabilitybench.generate``)."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stabilitybench.data_schema import StabilityBenchError, read_manifest, require_corpus
from stabilitybench.data_schema.card import write_card
from stabilitybench.data_schema.errors import OutputPathError
from stabilitybench.data_schema.integrity import Problem, check_run
from stabilitybench.data_schema.progress import ProgressReporter
from stabilitybench.data_schema.verify import rerun_advice, run_origin
from stabilitybench.generate.backends import make_backend
from stabilitybench.generate.costs import PRE_REFERENCE_SECONDS, estimate
from stabilitybench.generate.errors import Interrupted, ProfileError
from stabilitybench.generate.matrix import available_profiles, load_profile, parse_only, select
from stabilitybench.generate.perturbations import definitions
from stabilitybench.generate.runner import LOG_DIR, Plan, plan, run_matrix
from stabilitybench.generate.spec import RunSpec

console = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True, highlight=False)

#: The shipped profiles (generate/profiles/*.toml), listed in --profile's help.
PROFILE_HELP = f"{' | '.join(available_profiles())}, or a path to your own .toml file"
CorpusOpt = Annotated[Path, typer.Option("--out", "--corpus", "-o", help="Corpus directory")]
OnlyOpt = Annotated[
    str | None, typer.Option("--only", help="Filter by axis values, e.g. 'algo=ppo,magnitude=10|100'")
]


#: The profile bare ``stabilitybench generate`` runs (after saying so: see :func:`announce_default_profile`).
DEFAULT_PROFILE = "quick"


def generate(
    profile: Annotated[str | None, typer.Option("--profile", "-p", show_default=False, help=f"{PROFILE_HELP} "
                                                f"(default: {DEFAULT_PROFILE}, announced before it starts)")] = None,
    out_dir: CorpusOpt = Path("corpus"),
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", min=1, show_default=False, help="Parallel runs on this machine: the local pool's "
        "processes, or a local Ray instance's CPUs. Unset: every core")] = None,
    only: OnlyOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run, run nothing")] = False,
    backend_name: Annotated[str, typer.Option("--backend", "-b", help="local (process pool) | ray")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster: auto | host:port | ray://host:10001 (default: a local Ray instance)")] = None,
    cpus_per_run: Annotated[int, typer.Option("--cpus-per-run", help="Ray: CPUs (= torch threads) per run")] = 1,
    max_retries: Annotated[int, typer.Option("--max-retries", help="Ray: reruns of a run whose worker died")] = 3,
) -> None:
    """Run every pending run of a profile into the corpus (resumable: done runs are skipped).

    Runs on a local process pool, or as Ray tasks with --backend ray.

    With --address, --out must be a path that every node mounts at the same place.
    """
    chosen = profile is not None
    profile = profile if profile is not None else DEFAULT_PROFILE
    # the profile loads without the training stack (env ids are checked only where gymnasium is installed)
    specs = select(load_profile(profile), parse_only(only))
    if not specs:
        raise ProfileError(f"--only {only!r} matches no run of profile {escape(repr(profile))}")
    # only what the selected runs' domains need (an LM-only profile runs without SB3), and a GPU where a run
    # asks for device='cuda' and trains here (not --dry-run; a Ray cluster's workers may have GPUs this machine lacks)
    require_generators(specs, local=backend_name == "local" and not dry_run)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"--out {out_dir}: is a file, not a corpus directory")
    missing = sorted({str(m) for s in specs if (m := dict(s.hparams).get("monitor")) and not Path(m).is_file()})
    if missing:
        raise ProfileError(f"monitor file(s) {', '.join(missing)} not found (relative to {Path.cwd()}): write them "
                           "with `stabilitybench fit-monitor` (see the profile's description) before generating")
    delays = sorted({str(d) for s in specs if str(d := dict(s.hparams).get("intervention_delays", "")).endswith(".json")
                     and not Path(d).is_file()})
    if delays:
        raise ProfileError(f"oracle delay file(s) {', '.join(delays)} not found (relative to {Path.cwd()}): write "
                           "them with `python -m stabilitybench.analysis.intervention oracle-delays` (see the "
                           "profile's description) before generating")
    if not chosen:
        announce_default_profile(specs, out_dir, workers)
    backend = make_backend(backend_name, workers=workers or 0, address=address, cpus_per_run=cpus_per_run,
                           max_retries=max_retries)
    if dry_run:
        p = plan(specs, out_dir)
        out.print(f"profile {escape(repr(profile))}: {len(specs)} runs, {len(p.done)} done, {len(p.todo)} to run "
                  f"({len(p.failed_before)} of them failed before) in {escape(str(out_dir))}/")
        for s in p.todo:
            out.print(f"  {s.run_id}  {s.algo} {s.env} {s.perturbation} x{s.magnitude:g} "
                      f"dur={s.duration_steps} seed={s.seed}")
        return

    # a live bar in a terminal; one line per finished run (done/total, failures, ETA) in a log
    progress: dict[str, ProgressReporter] = {}

    def on_start(p: Plan) -> None:
        for note in p.notes:
            console.print(escape(note))
        _print_damaged(p.damaged, console, "will be rerun")
        if p.recovered:
            console.print(f"recovered {len(p.recovered)} finished run(s) missing from the manifest")
        if not p.todo:
            console.print(f"All {len(specs)} runs of profile {escape(repr(profile))} are already done "
                          f"in {escape(str(out_dir))}/: nothing to train.")
            return
        console.print(f"profile {escape(repr(profile))}: {len(specs)} runs, {len(p.done)} already done, "
                      f"{len(p.todo)} to run on {escape(backend.describe())} -> {escape(str(out_dir))}/")
        progress["bar"] = ProgressReporter(f"generate {profile}", len(p.todo), console=console).start()

    def on_result(row: dict[str, Any]) -> None:
        bar = progress["bar"]
        if row["status"] == "failed":
            bar.print(f"[red]failed[/] {row['run_id']}: {escape(str(row['error']))}")
        bar.result(row)

    def stop_progress() -> None:
        if "bar" in progress:
            progress.pop("bar").stop()

    try:
        report = run_matrix(specs, out_dir, on_start=on_start, on_result=on_result, backend=backend)
    except Interrupted as stop:
        stop_progress()
        console.print(str(stop))
        raise typer.Exit(130) from None
    finally:
        stop_progress()
    write_card(out_dir, definitions(), profile)
    if report.ran:
        console.print(f"ran {report.ran} run(s): {report.ok} ok, {report.failed} failed; "
                      f"{report.skipped} skipped as done; {report.wall_time_s:.0f} s")
    if report.failed:
        console.print(f"[red]{report.failed} run(s) failed[/]; the error of each is in "
                      f"{escape(str(out_dir / LOG_DIR))}/<run_id>.log (and its output in <run_id>.out); "
                      "rerun the same command to retry them")
        raise typer.Exit(1)


def announce_default_profile(specs: list[Any], out_dir: Path, workers: int | None) -> None:
    """Say what bare ``generate`` (no --profile) is about to do, and how to choose, before anything starts.

    It keeps going rather than asking, in a terminal or not: a prompt would stop scripts that happen to
    have a terminal, and Ctrl-C is safe (finished runs are kept; rerunning resumes).
    """
    est = estimate(specs)  # reference throughputs: no corpus read before the runner plans
    slots = workers or os.cpu_count() or 1
    console.print(f"no --profile given: generating the default profile {DEFAULT_PROFILE!r}: {len(specs)} runs into "
                  f"{escape(str(out_dir))}/ (runs already there are skipped), estimated {est.pre:,.0f} "
                  f"plain-PPO-run equivalents, ~{est.cpu_hours:,.1f} CPU-hours, ~{est.makespan_hours(slots):,.1f} h "
                  f"on {slots} worker(s) at the reference speed")
    console.print(f"choose a profile with --profile {{{' | '.join(available_profiles())}}} or a .toml file; "
                  "`stabilitybench status --profile NAME` estimates its cost, `--dry-run` lists its runs; "
                  "Ctrl-C stops safely and a rerun resumes")


#: What training needs beyond the core install (the [generate] extra), for a profile of every domain.
GENERATOR_MODULES = ("torch", "stable_baselines3", "gymnasium", "mujoco", "transformers", "tokenizers")


def require_generators(specs: Sequence[RunSpec] | None = None, *, local: bool = True) -> None:
    """A one-line error when the extra the runs need is not installed (the core install reads and analyses only).

    ``specs``: the runs about to be generated; only their generators' modules are checked (an LM-only
    profile needs torch, transformers and tokenizers: the [lm] extra). None: every generator's (the [generate]
    extra). ``local``: the runs train on this machine, so a run whose config says ``device='cuda'`` needs
    torch to see a CUDA device here (one line instead of a failed run per spec).
    """
    from stabilitybench.generate.registry import generator_for

    if specs is None:
        modules, extra = GENERATOR_MODULES, "generate"
    else:
        gens = {(s.domain, s.algo): generator_for(s.domain, s.algo) for s in specs}.values()
        modules = tuple(dict.fromkeys(m for g in gens for m in g.requires))
        extras = {g.extra for g in gens}
        extra = extras.pop() if len(extras) == 1 else "generate"  # [generate] covers every domain
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise StabilityBenchError(f"generate needs {', '.join(missing)}: pip install 'stabilitybench[{extra}]' "
                                  "(after torch==2.13.0, see the README)")
    if specs is None or not local:
        return
    cuda = [s for s in specs if getattr(generator_for(s.domain, s.algo).config(s), "device", None) == "cuda"]
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise StabilityBenchError(f"{len(cuda)} run(s) set hparams.device='cuda' but torch {torch.__version__} "
                                      "sees no CUDA device: generate this profile on a GPU machine")


def status(
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    profile: Annotated[str | None, typer.Option("--profile", "-p", help=f"Compare against this profile: "
                                                f"{PROFILE_HELP}")] = None,
    only: OnlyOpt = None,
    cpus: Annotated[int | None, typer.Option("--cpus", show_default=False, help="With --profile: also estimate "
                                             "the wall time on a cluster of this many CPUs (>= 1; one run per CPU, "
                                             "longest first)")] = None,
) -> None:
    """What is done, missing and failed (against a profile if given, else from the manifest)."""
    if cpus is not None and cpus < 1:
        raise StabilityBenchError(f"--cpus {cpus}: the cluster needs at least 1 CPU (e.g. --cpus 64)")
    if cpus is not None and profile is None:
        raise StabilityBenchError("--cpus estimates a profile's wall time: pass --profile too "
                                  "(e.g. status --profile quick --cpus 64)")
    if profile is None:
        require_corpus(corpus)
        rows = read_manifest(corpus).to_pylist()
        damaged = [p for r in rows if r["status"] == "ok" for p in check_run(corpus, r)[0]]
        counts = Counter(r["status"] for r in rows)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if rows else "empty manifest"
        if damaged:
            summary += f"; [red]{len({p.run_id for p in damaged})} ok run(s) with damaged files[/]"
        out.print(f"{escape(str(corpus))}/: {len(rows)} runs in the manifest: {summary}")
        by_id = {r["run_id"]: r for r in rows}
        _print_damaged(damaged, out, rerun_advice({run_origin(by_id.get(d.run_id)) for d in damaged}))
        _print_failed([r for r in rows if r["status"] == "failed"])
        if damaged:
            raise typer.Exit(1)
        return
    specs = select(load_profile(profile), parse_only(only))
    if not corpus.is_dir():
        out.print(f"note: {escape(str(corpus))}/ does not exist yet, so every run is missing")
    p = plan(specs, corpus)
    failed_ids = {s.run_id for s in p.failed_before}
    table = Table(title=f"profile {escape(repr(profile))} in {escape(str(corpus))}/")
    for col in ("algo", "env", "perturbation", "runs", "done", "failed", "missing"):
        table.add_column(col, justify="right" if col in ("runs", "done", "failed", "missing") else "left")
    groups: dict[tuple[str, str, str], Counter[str]] = {}
    done_ids = {s.run_id for s in p.done}
    for s in specs:
        c = groups.setdefault((s.algo, s.env, s.perturbation), Counter())
        c["runs"] += 1
        c["done" if s.run_id in done_ids else "failed" if s.run_id in failed_ids else "missing"] += 1
    for (algo, env, pert), c in groups.items():
        table.add_row(algo, env, pert, *(str(c[k]) for k in ("runs", "done", "failed", "missing")))
    out.print(table)
    n_failed = len(failed_ids)
    out.print(f"total: {len(specs)} runs, {len(p.done)} done, {n_failed} failed, {len(p.todo) - n_failed} missing")
    whole, left = estimate(specs, p.rows), estimate(p.todo, p.rows)
    out.print(f"estimated cost: {whole.cpu_hours:,.1f} CPU-hours for all {whole.runs} runs, "
              f"{left.cpu_hours:,.1f} for the {left.runs} not done (one core per run; "
              f"~{left.cpu_hours / max(os.cpu_count() or 1, 1):,.1f} h of wall time on this machine's "
              f"{os.cpu_count()} cores)")
    ref = estimate(specs)  # reference throughputs only: a cost in PRE that does not depend on today's machine
    out.print(f"cost in plain-PPO-run equivalents: {ref.pre:,.0f} PRE (one PRE = {PRE_REFERENCE_SECONDS:.0f} CPU-s at "
              f"the reference speed; {ref.cpu_hours * 60 / 2:,.0f} min on 2 cores, "
              f"{ref.makespan_hours(2) * 60:,.0f} min longest-first)")
    for algo, source in sorted(whole.sources.items()):
        out.print(f"  {algo}: throughput from {source}")
    if cpus:
        out.print(f"on {cpus:,} CPUs: ~{left.makespan_hours(cpus):,.1f} h of wall time for the {left.runs} runs not "
                  f"done (longest run {left.longest_run_hours:.1f} h; runs start longest first; "
                  "divide by the parallel efficiency in BENCHMARKS.md)")
    by_id = {r["run_id"]: r for r in p.rows}
    _print_damaged(p.damaged, out, "counted as missing; `generate` reruns them")
    _print_failed([by_id[i] for i in failed_ids])


def _print_damaged(problems: list[Problem], where: Console, what: str) -> None:
    if problems:
        where.print(f"[red]{len({p.run_id for p in problems})} run(s) with damaged files[/] ({what}):")
    for p in problems[:20]:
        where.print(f"  [red]damaged[/] {escape(str(p))}")
    if len(problems) > 20:
        where.print(f"  ... and {len(problems) - 20} more")


def _print_failed(rows: list[dict[str, Any]]) -> None:
    for r in rows[:20]:
        out.print(f"  [red]failed[/] {r['run_id']} {r['algo']} {r['env']} {r['perturbation']} "
                  f"x{r['magnitude']:g} seed={r['seed']}: {escape(str(r['error']))}")
    if len(rows) > 20:
        out.print(f"  ... and {len(rows) - 20} more")
