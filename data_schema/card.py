"""The corpus dataset card (``corpus/README.md``), following the Hugging Face dataset-card layout.

``generate`` writes it after every matrix run (what the corpus is, how it was made, the
schema with units, the perturbations, licences, citation); ``analyze`` adds the collapse
rule and the outcome counts under its own heading. Both go through :func:`write_card`,
which rebuilds the file from the manifest and keeps the analysis section if present.
The schema tables are rendered from :mod:`stabilitybench.data_schema.schema`, never retyped.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.corpus import read_manifest
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS, describe

CARD = "README.md"
OUTCOME_NAMES = frozenset(SCHEMAS["runs"].names) - frozenset(SCHEMAS["manifest"].names)
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


#: HF ``license`` ids of the texts LM runs train on (a text not listed here: ``other``).
TEXT_LICENCE_IDS = {"pydoc-topics": "psf-2.0"}
#: The corpus's tables as Hugging Face ``configs``: name -> data_files pattern (relative to the corpus).
HF_CONFIGS = {"steps": "steps/**/*.parquet", "manifest": "manifest.parquet", "events": "events/*.parquet",
              "runs": "runs.parquet"}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n_rows: int) -> str:
    """The Hugging Face ``size_categories`` bucket of a row count."""
    return next((label for limit, label in _SIZES if n_rows < limit), "n>1B")


def table_rows(corpus: str | os.PathLike[str]) -> dict[str, int]:
    """Rows per table, from the Parquet footers (no data read); 0 for a table not written yet.

    A file whose footer cannot be read (damaged; ``stabilitybench verify`` names it) counts 0 rows.
    """
    root = Path(corpus)
    files = {name: [p for p in root.glob(pattern) if not p.name.startswith(".")]
             for name, pattern in HF_CONFIGS.items()}
    return {name: sum(_footer_rows(p) for p in paths) for name, paths in files.items()}


def _footer_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return 0


def hf_dtype(t: pa.DataType) -> str:
    """The ``datasets`` dtype of an Arrow type (dictionary-encoded strings read as ``string``)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return {"bool": "bool", "double": "float64"}.get(str(t), str(t))


def hf_configs_yaml(n_rows: dict[str, int]) -> list[str]:
    """YAML lines ``configs:`` (one per table) and ``dataset_info:`` (features from the schemas, rows)."""
    lines = ["configs:"]
    for name, pattern in HF_CONFIGS.items():
        lines += [f"- config_name: {name}", "  data_files:", "  - split: train", f"    path: {pattern}"]
        if name == "steps":
            lines.append("  default: true")
    lines.append("dataset_info:")
    for name in HF_CONFIGS:
        lines += [f"- config_name: {name}", "  features:"]
        for f in SCHEMAS[name]:
            lines += [f"  - name: {f.name}", f"    dtype: {hf_dtype(f.type)}"]
        lines += ["  splits:", "  - name: train", f"    num_examples: {n_rows[name]}"]
    return lines


def _licence_yaml(texts: set[str]) -> list[str]:
    """``license: mit``, or with LM runs ``other`` plus the corpus's and every text's licence."""
    if not texts:
        return ["license: mit"]
    ids = ["mit", *sorted({TEXT_LICENCE_IDS.get(t, "unknown") for t in texts})]
    return ["license: other", f"license_name: {'+'.join(ids)}",
            "license_details: the telemetry is MIT; the LM runs trained on text under the licences listed in the "
            "Licences section"]


def _table(name: str, only: frozenset[str] | None = None) -> str:
    rows = [r for r in describe(name) if only is None or r["name"] in only]
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
    n_rows = table_rows(corpus)
    texts = {r["env"] for r in rows if r["domain"] == "lm"}
    out = [
        "---",
        *_licence_yaml(texts),
        "pretty_name: StabilityBench telemetry corpus",
        f"size_categories: [{size_category(max(n_rows.values()))}]",
        "task_categories: [time-series-forecasting]",
        "tags: [training-dynamics, instability, reinforcement-learning, language-modeling, telemetry]",
        *hf_configs_yaml(n_rows),
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
        f"- rows: {', '.join(f'{t} {n:,}' for t, n in n_rows.items())}",
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
        "### runs", "The manifest's columns plus the outcomes that `stabilitybench analyze` adds "
        "(`runs.parquet` exists once analyze has run):", "", _table("runs", only=OUTCOME_NAMES), "",
        "Load one table with Hugging Face `datasets`: `load_dataset(\"<corpus folder>\", \"steps\")` "
        "(configs: steps, manifest, events, runs).", "",
        "## Licences",
        "The corpus: MIT, like the code. Text used by LM runs (its licence covers the text that the LM telemetry "
        "was trained on; the corpus holds no text, only telemetry, and the tokenizer's hash):",
        *[f"- `{k}`: {v}" for k, v in TEXT_LICENCES.items()
          if any(r["env"] == k for r in rows) or not domains or "lm" in domains],
        *[f"- `{k}`: licence not recorded: supplied by the user, check it before sharing the corpus"
          for k in sorted(texts - set(TEXT_LICENCES))],
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
