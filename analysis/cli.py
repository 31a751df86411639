"""``analyze`` command (mounted by the ``stabilitybench`` CLI; also ``python -m stabilitybench.analysis``)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()


def analyze(
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Corpus directory")] = Path("corpus"),
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Results directory")] = Path("results"),
    update_corpus: Annotated[
        bool, typer.Option("--update-corpus/--no-update-corpus", help="Also write <corpus>/runs.parquet")
    ] = True,
    spike_rules: Annotated[
        bool, typer.Option("--spike-rules/--no-spike-rules", help="Also score the practitioners' spike rules "
                           "(OLMo-core skip-step, llm.c z-score, Megatron 10x, llm-foundry, Lightning)")
    ] = False,
    looks: Annotated[
        int, typer.Option("--looks", min=1, help="How many times regularity 2's ED50 ratio was looked at while "
                          "seeds were added (a sequential design; the stochasticity profile took 2): its CI and "
                          "verdict are widened to 1 - 0.05/looks")
    ] = 1,
) -> None:
    """Analyse the corpus: collapse, PCA, meta-state monitor vs baselines, survival, regularities -> results/."""
    from dataclasses import replace

    from stabilitybench.analysis.config import AnalysisConfig
    from stabilitybench.analysis.detectors import rule_names
    from stabilitybench.analysis.pipeline import run_analysis
    from stabilitybench.analysis.summary import Status
    from stabilitybench.data_schema.io import writable_dir
    from stabilitybench.data_schema.lock import CorpusLock
    from stabilitybench.data_schema.progress import ProgressReporter

    t0 = time.perf_counter()
    require_runs(corpus)  # before anything is created: no lock file, no empty --out folder
    writable_dir(out_dir, "--out")
    # it writes runs.parquet and the dataset card into the corpus: one writer at a time
    lock = CorpusLock(corpus, "stabilitybench analyze") if update_corpus else contextlib.nullcontext()
    # the stages' total is known once the runs are loaded (run_analysis calls stage(i, total, name))
    bar = ProgressReporter("analyze", 0, "stages", console=console, tally=False)

    def stage(done: int, total: int, name: str) -> None:  # a stage begins: the one before it is done
        bar.set_total(total)
        bar.advance(note=name)

    with lock, bar:
        cfg = AnalysisConfig(ratio_looks=looks)
        if spike_rules:
            ew = cfg.early_warning
            cfg = replace(cfg, early_warning=replace(ew, detectors=(*ew.detectors, *rule_names())))
        summary = run_analysis(corpus, out_dir, cfg, update_corpus=update_corpus, progress=bar.note, stage=stage)
        bar.advance(note="summary written")
    out.print(f"analysed {summary['n_runs']} runs in {time.perf_counter() - t0:.1f} s -> {out_dir}/summary.json")
    n_excluded = summary.get("excluded_runs", {}).get("n", 0)
    if n_excluded:
        out.print(f"[yellow]excluded {n_excluded} run(s)[/] whose steps or events file is missing or damaged "
                  "(listed in summary.json; `stabilitybench verify` names them and says how to redo each)")
    for row in summary["collapse"]["dose_response"]:
        out.print(f"  {row['env']:<16} {row['config']:<28} collapsed {row['n_collapsed']}/{row['n_runs']}")
    ew_status = Status.of(summary["early_warning"])
    if ew_status is not None:
        out.print(f"early warning: {ew_status}")
    pred = summary["headline"].get("prediction", {})
    for det, v in summary["headline"].get("detection", {}).items():
        # alarm numbers from folds with >= 19 calibration controls, else from the small folds (marked +)
        pooled = (v.get("frac_collapses_preceded") or {}).get("n")
        src, mark = (v, "") if pooled or not v.get("small_folds") else (v["small_folds"], "+")
        a, fpr = (v.get("auroc") or {}).get("value"), (src.get("fpr_held_out_controls") or {}).get("value")
        lead = (src.get("median_lead_updates") or {}).get("value")
        b = ((pred.get(det) or {}).get("auroc_stratified") or {}).get("value")
        out.print(f"  {det:<20} (a) AUROC {_fmt(a)}  FPR{mark} {_fmt(fpr)}  median lead{mark} {_fmt(lead, 0)} "
                  f"updates  (b) stratified AUROC {_fmt(b)}")
    if any(not (v.get("frac_collapses_preceded") or {}).get("n") and v.get("small_folds")
           for v in summary["headline"].get("detection", {}).values()):
        out.print("  + from folds with fewer than 19 calibration controls: no FPR claim (summary.json small_folds)")
    for caveat in summary["headline"]["caveats"]:
        out.print(f"[yellow]caveat:[/] {caveat}", highlight=False)


def require_runs(corpus: Path) -> None:
    """Refuse, in one line and before anything is written, a folder that is not a corpus or has no finished run."""
    from stabilitybench.analysis.errors import NoRunsError
    from stabilitybench.data_schema import MANIFEST, read_manifest, require_corpus

    require_corpus(corpus)
    if not (corpus / MANIFEST).is_file():
        raise NoRunsError(f"{corpus}: no {MANIFEST}, so not a corpus: pass --corpus with the folder `stabilitybench "
                          "generate` wrote (e.g. generate --profile smoke --out corpus)")
    statuses = read_manifest(corpus).column("status").to_pylist()
    if "ok" not in statuses:
        raise NoRunsError(f"{corpus}: no finished runs in {MANIFEST} ({len(statuses)} row(s), none with status ok): "
                          "run `stabilitybench generate` first (`stabilitybench status` shows what failed)")


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
