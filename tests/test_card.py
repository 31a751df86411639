"""The dataset card: written by generate, completed by analyze, schema rendered from data_schema."""

from __future__ import annotations

from pathlib import Path

from data_schema import describe, write_manifest
from data_schema.card import ANALYSIS_MARK, summary_lines, write_card
from generate.perturbations import REGISTRY, definitions
from generate.runner import base_row
from generate.spec import RunSpec


def _corpus(tmp_path: Path) -> Path:
    rows = []
    for kind, mag in (("none", 1.0), ("lr_spike", 100.0)):
        row = base_row(RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=0, perturbation=kind,
                               magnitude=mag, duration_steps=8))
        row.update(status="ok", n_updates=32, stop_reason="completed")
        rows.append(row)
    write_manifest(tmp_path, rows)
    return tmp_path


def test_card_lists_runs_schema_perturbations_licence_and_citation(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    text = write_card(corpus, definitions(), profile="smoke").read_text()
    assert text.startswith("---\nlicense: mit")
    assert "runs: 2 (2 ok, 0 failed)" in text and "profile: smoke" in text
    for row in describe("steps"):  # every column with its unit, straight from the schema
        assert f"| `{row['name']}` | {row['type']} | {row['unit']} |" in text
    for kind in REGISTRY:
        assert f"| `{kind}` |" in text
    assert "arXiv 2601.13160" in text and "@article" in text
    assert not list(corpus.glob(".README.md.*"))  # atomic write left no temp file


def test_analysis_section_is_added_and_kept(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    write_card(corpus, definitions(), profile="smoke")
    outcomes = [{"algo": "ppo", "perturbation": "lr_spike", "magnitude": 100.0, "duration_steps": 8, "collapsed": True},
                {"algo": "ppo", "perturbation": "none", "magnitude": 1.0, "duration_steps": 1, "collapsed": False}]
    write_card(corpus, analysis_section="## Collapse rule\n" + "\n".join(summary_lines(outcomes)))
    text = (corpus / "README.md").read_text()
    assert "| `lr_spike` |" in text  # generate's part kept as written
    assert text.index(ANALYSIS_MARK) < text.index("| ppo | lr_spike | 100 | 8 | 1/1 |")
    write_card(corpus, definitions(), profile="quick")  # a later generate keeps the analysis section
    text = (corpus / "README.md").read_text()
    assert "profile: quick" in text and "| ppo | none | 1 | 1 | 0/1 |" in text
