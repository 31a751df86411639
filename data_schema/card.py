"""The corpus dataset card (``corpus/README.md``), following the Hugging Face dataset-card layout.

``generate`` writes it after every matrix run (what the corpus is, how it was made, the
schema with units, the perturbations, licences, citation); ``analyze`` adds the collapse
rule and the outcome counts under its own heading. Both go through :func:`write_card`,
which rebuilds the file from the manifest and keeps the analysis section if present.
The schema tables are rendered from :mod:`data_schema.schema`, never retyped.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from data_schema.corpus import read_manifest
from data_schema.io import atomic_path
from data_schema.schema import SCHEMA_VERSION, describe

CARD = "README.md"
ANALYSIS_MARK = "<!-- analysis section: written by `stabilitybench analyze` -->"

CITATION = """@article{zhang2026training,
  title   = {Training instability in deep learning follows low-dimensional dynamical principles},
  author  = {Zhang, Zhipeng and Yao, Zhenjie and Li, Kai and Yang, Lei},
  journal = {arXiv preprint arXiv:2601.13160},
  year    = {2026}
}"""

TEXT_LICENCES = {
    "pydoc-topics": "CPython's `pydoc_data.topics` (Python documentation): Python Software Foundation License v2; "
                    "code examples also Zero-Clause BSD.",
}


def _table(name: str) -> str:
    rows = describe(name)
    lines = ["| column | type | unit | description |", "|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['type']} | {r['unit']} | {r['description']} |" for r in rows]
    return "\n".join(lines)


def render_card(corpus: str | os.PathLike[str], perturbations: dict[str, tuple[str, str]] | None = None,
                profile: str | None = None) -> str:
    """The card's text. ``perturbations`` maps kind -> (dimension, one-line definition)."""
    rows = read_manifest(corpus).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    domains = sorted({r["domain"] for r in rows})
    versions = sorted({r["code_version"] for r in rows})
    tokenizers = sorted({r["tokenizer_hash"] for r in rows if r.get("tokenizer_hash")})
    counts = Counter((r["domain"], r["algo"], r["env"], r["perturbation"]) for r in ok)
    size = "n<1K" if len(rows) < 1000 else "1K<n<10K"
    out = [
        "---",
        "license: mit",
        "pretty_name: StabilityBench telemetry corpus",
        f"size_categories: [{size}]",
        "task_categories: [time-series-forecasting]",
        "tags: [training-dynamics, instability, reinforcement-learning, language-modeling, telemetry]",
        "---",
        "",
        "# StabilityBench telemetry corpus",
        "",
        "## Dataset description",
        "Per-optimizer-update telemetry of deep-learning training runs under controlled perturbations along four "
        "stability dimensions (optimization, environmental/data, parametric, learning signal), following "
        "arXiv 2601.13160. One Parquet file of steps per run, a manifest, and an events table.",
        "",
        f"- runs: {len(rows)} ({len(ok)} ok, {len(rows) - len(ok)} failed); domains: {', '.join(domains) or '-'}",
        f"- schema version: {SCHEMA_VERSION}",
        f"- code version(s): {', '.join(versions) or '-'}",
        f"- generated with profile: {profile or 'see config_json in the manifest'}",
        f"- tokenizer hash(es): {', '.join(tokenizers) or 'none (no LM runs)'}",
        "",
        "## How it was generated",
        "Every run is a real training run (stable-baselines3 PPO/SAC/TD3 on MuJoCo -v5 tasks; GPT-2 built from "
        "`GPT2Config`). Telemetry comes from optimizer hooks and callbacks; each run's full resolved configuration "
        "is the manifest's `config_json`; `run_id` is a stable hash of the run spec and the schema version. "
        "Regenerate with `stabilitybench generate --profile <profile>`.",
        "",
        "| domain | algo | env | perturbation | runs (ok) |",
        "|---|---|---|---|---|",
        *[f"| {d} | {a} | {e} | {p} | {n} |" for (d, a, e, p), n in sorted(counts.items())],
        "",
        "## Perturbations",
    ]
    if perturbations:
        out += ["| kind | dimension | definition |", "|---|---|---|"]
        out += [f"| `{k}` | {dim} | {text} |" for k, (dim, text) in sorted(perturbations.items())]
    out += [
        "",
        "## Layout and schema",
        "`manifest.parquet`, `steps/domain=*/algo=*/env=*/perturbation=*/<run_id>.parquet`, "
        "`events/<run_id>.parquet`, and `runs.parquet` (manifest + outcomes, from analysis). Files are zstd "
        "Parquet with units and descriptions in the field metadata; partition values are also columns.",
        "",
        "### steps", _table("steps"), "", "### manifest", _table("manifest"), "", "### events", _table("events"), "",
        "## Licences",
        "The corpus: MIT, like the code. Text used by LM runs:",
        *[f"- `{k}`: {v}" for k, v in TEXT_LICENCES.items()
          if any(r["env"] == k for r in rows) or not domains or "lm" in domains],
        "",
        "## Citation",
        "```bibtex", CITATION, "```",
        "",
    ]
    return "\n".join(out)


def write_card(corpus: str | os.PathLike[str], perturbations: dict[str, tuple[str, str]] | None = None,
               profile: str | None = None, analysis_section: str | None = None) -> Path:
    """(Re)write ``corpus/README.md`` atomically.

    ``generate`` passes ``perturbations`` (and the profile): the main part is rebuilt and an
    existing analysis section kept. ``analyze`` passes only ``analysis_section``: the main
    part already written by generate is kept as it is and the analysis section replaced.
    """
    path = Path(corpus, CARD)
    old = path.read_text() if path.exists() else ""
    old_main, _, old_analysis = old.partition(ANALYSIS_MARK)
    if perturbations is None and old_main.strip():
        text = old_main.rstrip() + "\n"
    else:
        text = render_card(corpus, perturbations, profile)
    if analysis_section is None and old_analysis.strip():
        analysis_section = old_analysis.strip()
    if analysis_section:
        text = f"{text}\n{ANALYSIS_MARK}\n{analysis_section.strip()}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def summary_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    """Markdown lines counting collapsed runs per (algo, perturbation, magnitude) for the analysis section."""
    groups: dict[tuple[Any, ...], list[bool]] = {}
    for r in outcomes:
        groups.setdefault((r["algo"], r["perturbation"], r["magnitude"], r["duration_steps"]), []).append(
            bool(r.get("collapsed")))
    lines = ["| algo | perturbation | magnitude | duration (updates) | collapsed / runs |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {p} | {m:g} | {d} | {sum(v)}/{len(v)} |" for (a, p, m, d), v in sorted(groups.items())]
    return lines
